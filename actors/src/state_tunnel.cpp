// Shared state across hosts (state_tunnel.hpp): relays between local
// socket connections and authenticated links.

#include "state_tunnel.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <caf/io/middleman.hpp>

#include "multiproc/error.hpp"
#include "multiproc/fd.hpp"
#include "multiproc/frame_channel.hpp"
#include "multiproc/log.hpp"
#include "multiproc/shared_state.hpp"
#include "network_impl.hpp"
#include "relay.hpp"
#include "shared_state_owner.hpp"

namespace multiproc::detail {

namespace {

/// The exit code in the goodbye of a link that the owner's end closes for
/// good (the owner stopped, or cannot be reached): the client's end then
/// refuses new connections at once instead of trying to join again.
constexpr int owner_gone_code = 1;

std::string tunnel_address() {
  static std::atomic<uint64_t> counter{0};
  return "multiproc-tunnel-" + std::to_string(::getpid()) + "-"
         + std::to_string(counter++) + "-"
         + std::to_string(std::chrono::steady_clock::now()
                            .time_since_epoch()
                            .count()
                          % 1000000007);
}

} // namespace

// -- the owner's end ------------------------------------------------------------

struct state_publisher::impl {
  std::string owner;
  relay_set relays;
  std::unique_ptr<gateway> gw;
  std::atomic<gateway*> log_to{nullptr}; // gw, once start() has it

  void admit(joined_worker j) {
    auto fd = connect_to(owner);
    if (!fd) {
      auto line = "cannot serve " + j.info.name + ": " + describe(fd.error());
      if (auto* g = log_to.load())
        g->log(line);
      else
        logger()->warn("{}", line);
      exit_status st;
      st.code = owner_gone_code;
      j.link->stop(std::chrono::milliseconds{0}, st);
      return;
    }
    relays.add(std::make_unique<relay>(std::move(*fd), std::move(j.link)));
  }

  ~impl() {
    // Joins the admissions under way; the links live on the gateway's node,
    // so they end before it does.
    if (gw)
      gw->stop_listening();
    relays.close(owner_gone_code);
    gw.reset();
  }
};

state_publisher::state_publisher(std::unique_ptr<impl> p) : impl_(std::move(p)) {
}

state_publisher::~state_publisher() = default;

caf::expected<std::unique_ptr<state_publisher>>
state_publisher::start(network_options opts, std::string owner_address) {
  auto im = std::make_unique<impl>();
  im->owner = owner_address;
  auto* raw = im.get();
  auto g = gateway::start(
    std::move(opts), shared_state_entry,
    "shared state '" + owner_address + "'", channel_options{},
    [raw](joined_worker j) { raw->admit(std::move(j)); }, true);
  if (!g)
    return std::move(g.error());
  im->gw = std::move(*g);
  im->log_to = im->gw.get();
  return std::unique_ptr<state_publisher>{new state_publisher(std::move(im))};
}

uint16_t state_publisher::port() const noexcept {
  return impl_->gw->port();
}

// -- the client's end -------------------------------------------------------------

struct state_tunnel::impl {
  remote_state_options opts;
  join_request req;
  std::unique_ptr<net_node> node;
  caf::actor gw;
  std::string address;
  unique_fd listener;
  unique_fd wake;
  std::shared_ptr<link_state> spare; // the link connect() authenticated
  // Set when the connection to the owner's node ends: new connections are
  // closed at once rather than after a handshake's timeout.
  std::shared_ptr<std::atomic<bool>> lost
    = std::make_shared<std::atomic<bool>>(false);
  relay_set relays;
  std::thread acceptor;

  caf::error listen() {
    address = tunnel_address();
    sockaddr_un sa;
    auto len = abstract_address(address, &sa);
    listener.reset(
      ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    wake.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!listener || !wake)
      return make_system_error("socket/eventfd", errno);
    if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&sa),
               static_cast<socklen_t>(len))
          != 0
        || ::listen(listener.get(), 512) != 0)
      return make_system_error("bind/listen('" + address + "')", errno);
    return caf::none;
  }

  void accept_loop() {
    for (;;) {
      pollfd fds[2] = {{listener.get(), POLLIN, 0}, {wake.get(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0 && errno != EINTR)
        return;
      if (fds[1].revents != 0)
        return;
      int fd = ::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0)
        continue;
      unique_fd conn{fd};
      ucred cred{};
      socklen_t len = sizeof(cred);
      if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0
          || cred.uid != ::geteuid())
        continue; // only processes of this user, as the owner does
      if (lost->load())
        continue; // the client sees the connection close: owner_died
      auto link = std::exchange(spare, nullptr);
      if (!link) {
        auto joined = join_gateway(node->sys(), gw, req);
        if (!joined) {
          if (!lost->load())
            logger()->warn("cannot reach {}: {}", req.peer,
                           describe(joined.error()));
          continue;
        }
        link = std::move(*joined);
      }
      // Before the client sees the end: its next connection must find the
      // tunnel closed.
      relays.add(std::make_unique<relay>(
        std::move(conn), std::move(link), [lost = lost](int code) {
          if (code == owner_gone_code)
            lost->store(true);
        }));
    }
  }

  ~impl() {
    if (acceptor.joinable()) {
      uint64_t one = 1;
      [[maybe_unused]] auto n = ::write(wake.get(), &one, sizeof(one));
      acceptor.join();
    }
    relays.close(0);
    if (spare)
      spare->stop(std::chrono::milliseconds{0}, exit_status{});
    spare.reset();
    gw = nullptr;
    node.reset();
  }
};

state_tunnel::state_tunnel(std::unique_ptr<impl> p) : impl_(std::move(p)) {
}

state_tunnel::~state_tunnel() = default;

caf::expected<std::unique_ptr<state_tunnel>>
state_tunnel::connect(const remote_state_options& opts) {
  if (opts.secret.empty())
    return make_error(errc::invalid_argument,
                      "connecting to a shared-state owner needs the "
                      "cluster's secret");
  if (opts.port == 0)
    return make_error(errc::invalid_argument,
                      "connecting to a shared-state owner needs its port");
  auto im = std::make_unique<impl>();
  im->opts = opts;
  auto where = opts.host + ":" + std::to_string(opts.port);
  im->req.peer = "the shared-state owner at " + where;
  im->req.secret = opts.secret;
  im->req.entry = shared_state_entry;
  im->req.name = "shared-state client@" + this_host();
  im->req.handshake_timeout = opts.handshake_timeout;
  im->node = std::make_unique<net_node>(
    net_timing{opts.heartbeat_interval, opts.connection_timeout});
  auto gw = im->node->connect(opts.host, opts.port, opts.handshake_timeout);
  if (!gw)
    return make_error(errc::connection_lost,
                      "cannot reach the shared-state owner at " + where + ": "
                        + im->node->sys().render(gw.error()));
  im->gw = std::move(*gw);
  caf::actor_cast<caf::abstract_actor*>(im->gw)->attach_functor(
    [lost = im->lost](const caf::error&) { lost->store(true); });
  // Once now, so that a wrong secret shows here; the first connection gets
  // this link.
  auto joined = join_gateway(im->node->sys(), im->gw, im->req);
  if (!joined)
    return std::move(joined.error());
  im->spare = std::move(*joined);
  if (auto err = im->listen())
    return err;
  auto* raw = im.get();
  im->acceptor = std::thread{[raw] { raw->accept_loop(); }};
  return std::unique_ptr<state_tunnel>{new state_tunnel(std::move(im))};
}

const std::string& state_tunnel::address() const noexcept {
  return impl_->address;
}

} // namespace multiproc::detail

namespace multiproc {

struct remote_shared_state::impl {
  std::unique_ptr<detail::state_tunnel> tunnel;
};

remote_shared_state::remote_shared_state(remote_shared_state&&) noexcept
  = default;
remote_shared_state&
remote_shared_state::operator=(remote_shared_state&&) noexcept = default;
remote_shared_state::~remote_shared_state() = default;

caf::expected<remote_shared_state>
remote_shared_state::connect(const remote_state_options& opts) {
  auto tunnel = detail::state_tunnel::connect(opts);
  if (!tunnel)
    return std::move(tunnel.error());
  remote_shared_state result;
  result.address_ = (*tunnel)->address();
  result.timeout_ = opts.timeout;
  result.impl_ = std::make_unique<impl>();
  result.impl_->tunnel = std::move(*tunnel);
  return result;
}

} // namespace multiproc
