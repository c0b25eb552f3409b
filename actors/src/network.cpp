// Workers on other hosts: frames inside CAF messages over BASP (actor_link),
// the published gateway that authenticates joining workers, and the remote
// worker process. docs/distribution.md explains the design.

#include "multiproc/network.hpp"

#include "network_impl.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <deque>
#include <map>
#include <thread>

#include <sys/random.h>
#include <unistd.h>

#include <caf/actor_cast.hpp>
#include <caf/actor_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/mailbox_element.hpp>
#include <caf/make_actor.hpp>
#include <caf/monitorable_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "multiproc/error.hpp"
#include "multiproc/envelope.hpp"
#include "multiproc/log.hpp"
#include "remote.hpp"

namespace multiproc::detail {

namespace {

using frames_atom = caf::atom_constant<caf::atom("mp_frames")>;
using bye_atom = caf::atom_constant<caf::atom("mp_bye")>;
using bye_ack_atom = caf::atom_constant<caf::atom("mp_byeack")>;
using signal_atom = caf::atom_constant<caf::atom("mp_signal")>;
using flush_atom = caf::atom_constant<caf::atom("mp_flush")>;
using hello_atom = caf::atom_constant<caf::atom("mp_hello")>;
using join_atom = caf::atom_constant<caf::atom("mp_join")>;

constexpr size_t nonce_size = 32;

/// The link whose frames this thread is delivering (on_io_thread()).
thread_local const link_state* delivering = nullptr;

} // namespace

// -- secrets ------------------------------------------------------------------

std::string make_nonce() {
  std::string out(nonce_size, '\0');
  size_t got = 0;
  while (got < out.size()) {
    auto n = ::getrandom(out.data() + got, out.size() - got, 0);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      std::abort(); // no randomness: nothing here could be trusted
    }
    got += static_cast<size_t>(n);
  }
  return out;
}

std::string answer(const std::string& secret, std::string_view role,
                   std::string_view first, std::string_view second) {
  std::string msg;
  msg.reserve(role.size() + 1 + first.size() + second.size());
  msg.append(role).append(1, '\0').append(first).append(second);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac,
       &len);
  return std::string(reinterpret_cast<const char*>(mac), len);
}

bool same_answer(const std::string& x, const std::string& y) {
  return x.size() == y.size() && !x.empty()
         && CRYPTO_memcmp(x.data(), y.data(), x.size()) == 0;
}

// -- the network node ---------------------------------------------------------

net_node::net_node(const net_timing& t) {
  cfg_.load<caf::io::middleman>();
  // A remote round trip crosses two multiplexer threads and a waiting
  // caller: the sharing scheduler wakes a sleeping thread in ~13 µs where
  // work stealing takes ~90 µs, and without BASP workers a message is
  // delivered on the multiplexer thread that read it (one wake-up less).
  cfg_.set("scheduler.policy", caf::atom("sharing"));
  cfg_.set("scheduler.max-threads", size_t{2});
  cfg_.set("middleman.workers", size_t{0});
  cfg_.set("middleman.heartbeat-interval",
           caf::timespan{std::chrono::duration_cast<caf::timespan>(
             t.heartbeat_interval)});
  cfg_.set("middleman.connection-timeout",
           caf::timespan{std::chrono::duration_cast<caf::timespan>(
             t.connection_timeout)});
  // BASP refuses a peer with other identifiers before any message.
  cfg_.set("middleman.app-identifiers",
           std::vector<std::string>{"multiproc-" + std::to_string(
                                      wire::protocol_version)});
  sys_.emplace(cfg_);
}

net_node::~net_node() = default;

caf::expected<caf::actor> net_node::connect(const std::string& host,
                                            uint16_t port,
                                            std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto gw = sys_->middleman().remote_actor(host, port);
    if (gw || gw.error() != caf::sec::connection_timeout
        || std::chrono::steady_clock::now() >= deadline)
      return gw;
    std::this_thread::sleep_for(std::chrono::milliseconds{5});
  }
}

// -- the link's receiving actor -----------------------------------------------

namespace {

/// Receives the peer's messages on whatever thread delivers them (the
/// multiplexer's) and hands them to the link at once.
class link_rx : public caf::monitorable_actor {
public:
  link_rx(caf::actor_config& cfg, std::weak_ptr<link_state> state)
    : caf::monitorable_actor(cfg), state_(std::move(state)) {
  }

  const char* name() const override {
    return "multiproc_link";
  }

  void enqueue(caf::mailbox_element_ptr what, caf::execution_unit*) override {
    if (auto s = state_.lock())
      s->on_message(*what);
  }

private:
  std::weak_ptr<link_state> state_;
};

} // namespace

// -- link_state ---------------------------------------------------------------

link_state::link_state(caf::actor_system& sys, channel_options opts,
                       bool own_thread, caf::node_id expected,
                       std::string peer_name)
  : sys_(sys),
    opts_(opts),
    own_thread_(own_thread),
    expected_(std::move(expected)),
    peer_name_(std::move(peer_name)) {
}

std::shared_ptr<link_state>
link_state::make(caf::actor_system& sys, channel_options opts, bool own_thread,
                 caf::node_id expected, std::string peer_name) {
  auto s = std::shared_ptr<link_state>(new link_state(
    sys, opts, own_thread, std::move(expected), std::move(peer_name)));
  caf::actor_config cfg;
  s->rx_ = caf::make_actor<link_rx, caf::actor>(sys.next_actor_id(),
                                                sys.node(), &sys, cfg,
                                                std::weak_ptr<link_state>{s});
  std::weak_ptr<link_state> weak = s;
  s->writer_ = sys.spawn<caf::hidden>([weak](caf::event_based_actor*) {
    return caf::behavior{[weak](flush_atom) {
      if (auto st = weak.lock())
        st->flush();
    }};
  });
  return s;
}

link_state::~link_state() {
  if (io_.joinable()) {
    if (io_.get_id() == std::this_thread::get_id())
      io_.detach();
    else
      io_.join();
  }
  caf::anon_send_exit(writer_, caf::exit_reason::user_shutdown);
  if (auto* rx = caf::actor_cast<caf::abstract_actor*>(rx_))
    static_cast<caf::monitorable_actor*>(rx)->cleanup(
      caf::exit_reason::normal, nullptr);
}

void link_state::connect(caf::actor peer) {
  {
    std::lock_guard<std::mutex> guard{mu_};
    peer_ = peer;
  }
  std::weak_ptr<link_state> weak = shared_from_this();
  caf::actor_cast<caf::abstract_actor*>(peer)->attach_functor(
    [weak](const caf::error& reason) {
      if (auto s = weak.lock())
        s->peer_gone(reason);
    });
}

void link_state::on_message(caf::mailbox_element& m) {
  // Only the authenticated peer's node may talk to a link.
  if (!m.sender || m.sender->node() != expected_)
    return;
  auto content = m.move_content_to_message();
  if (content.match_elements<frames_atom, std::string>()) {
    std::unique_lock<std::mutex> lk{mu_};
    if (closing_)
      return;
    inbox_.emplace_back(std::move(content.get_mutable_as<std::string>(1)));
    kick(lk);
    return;
  }
  if (content.match_elements<bye_atom, int32_t, int32_t>()) {
    exit_status st;
    st.code = content.get_as<int32_t>(1);
    st.signal = content.get_as<int32_t>(2);
    st.signaled = st.signal != 0;
    // The ack tells the peer that all it sent before has arrived: it may
    // end its process now without losing a frame in its node's buffers.
    caf::send_as(rx_, caf::actor_cast<caf::actor>(m.sender),
                 bye_ack_atom::value);
    std::unique_lock<std::mutex> lk{mu_};
    peer_status_ = st;
    close_locked(lk, make_error(errc::peer_closed,
                                peer_name_ + " closed the connection"));
    return;
  }
  if (content.match_elements<bye_ack_atom>()) {
    {
      std::lock_guard<std::mutex> guard{mu_};
      bye_acked_ = true;
    }
    cv_.notify_all();
    return;
  }
  if (content.match_elements<signal_atom, int32_t>()) {
    if (on_signal)
      on_signal(content.get_as<int32_t>(1));
    return;
  }
}

void link_state::peer_gone(const caf::error& reason) {
  std::unique_lock<std::mutex> lk{mu_};
  peer_gone_ = true;
  close_locked(lk, make_error(errc::connection_lost,
                              "the connection to " + peer_name_ + " ended ("
                                + sys_.render(reason) + ")"));
}

void link_state::drop(caf::error reason) {
  std::unique_lock<std::mutex> lk{mu_};
  close_locked(lk, std::move(reason));
}

void link_state::close_locked(std::unique_lock<std::mutex>& lk,
                              caf::error reason) {
  if (closing_)
    return;
  closing_ = true;
  close_reason_ = std::move(reason);
  if (!started_)
    done_cv_.notify_all();
  kick(lk);
}

void link_state::kick(std::unique_lock<std::mutex>& lk) {
  if (!started_ || own_thread_) {
    lk.unlock();
    cv_.notify_all();
    return;
  }
  lk.unlock();
  drain();
}

void link_state::drain() {
  std::lock_guard<std::recursive_mutex> deliver_guard{deliver_mu_};
  if (delivering == this)
    return; // the outer call goes on with what came in meanwhile
  for (;;) {
    std::deque<std::string> batch;
    bool closing = false;
    {
      std::lock_guard<std::mutex> guard{mu_};
      batch.swap(inbox_);
      closing = closing_;
    }
    if (batch.empty() && !closing)
      return;
    if (finished_)
      return;
    deliver(batch);
    if (batch.empty() && closing) {
      finish();
      return;
    }
  }
}

void link_state::deliver(std::deque<std::string>& batch) {
  delivering = this;
  for (auto& bytes : batch) {
    std::string_view rest{bytes};
    while (!rest.empty() && !fail_reason_) {
      std::string_view body;
      caf::error err;
      auto used = split_frame(rest, opts_.max_frame_size, body, err);
      if (used == 0) {
        fail_reason_ = err ? err
                           : make_error(errc::truncated_frame,
                                        peer_name_ + " sent a message that "
                                                     "ends inside a frame");
        break;
      }
      rest.remove_prefix(used);
      handler_->on_frame(body);
    }
    if (fail_reason_)
      break;
  }
  batch.clear();
  handler_->on_batch_end();
  delivering = nullptr;
  flush();
  if (fail_reason_) {
    std::unique_lock<std::mutex> lk{mu_};
    if (!closing_) {
      closing_ = true;
      close_reason_ = fail_reason_;
    }
    inbox_.clear();
  }
}

void link_state::finish() {
  if (finished_)
    return;
  finished_ = true;
  caf::error reason;
  {
    std::lock_guard<std::mutex> guard{mu_};
    reason = close_reason_;
    closed_ = true;
  }
  {
    std::lock_guard<std::mutex> guard{out_mu_};
    out_.clear();
  }
  done_cv_.notify_all();
  delivering = this;
  auto keep = shared_from_this(); // on_closed may destroy the link's owner
  handler_->on_closed(reason);
  delivering = nullptr;
}

void link_state::io_loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lk{mu_};
      cv_.wait(lk, [this] { return !inbox_.empty() || closing_; });
    }
    drain();
    if (finished_)
      return;
  }
}

caf::error link_state::closed_error() {
  std::lock_guard<std::mutex> guard{mu_};
  if (close_reason_)
    return close_reason_;
  return make_error(errc::closed, "the link to " + peer_name_ + " is closed");
}

caf::error link_state::send(const std::string_view* parts, size_t num_parts,
                            send_mode mode) {
  size_t total = 0;
  for (size_t i = 0; i < num_parts; ++i)
    total += parts[i].size();
  if (total > opts_.max_frame_size)
    return frame_too_large_error(total, opts_.max_frame_size, "cannot send");
  {
    std::lock_guard<std::mutex> guard{mu_};
    if (closing_)
      return close_reason_ ? close_reason_
                           : make_error(errc::closed, "the link to "
                                                        + peer_name_
                                                        + " is closed");
  }
  bool schedule = false;
  {
    std::lock_guard<std::mutex> guard{out_mu_};
    auto at = out_.size();
    out_.resize(at + frame_header_size);
    write_frame_header(total, out_.data() + at);
    for (size_t i = 0; i < num_parts; ++i)
      out_.append(parts[i].data(), parts[i].size());
    if (mode == send_mode::deferred && delivering != this && !flush_due_) {
      flush_due_ = true;
      schedule = true;
    }
  }
  if (mode == send_mode::immediate)
    flush();
  else if (schedule)
    caf::anon_send(writer_, flush_atom::value);
  return caf::none;
}

caf::error link_state::send_framed(std::string_view frames, send_mode mode) {
  {
    std::lock_guard<std::mutex> guard{out_mu_};
    out_.append(frames.data(), frames.size());
  }
  if (mode == send_mode::immediate || delivering != this)
    flush();
  return caf::none;
}

void link_state::flush() {
  caf::actor peer;
  {
    std::lock_guard<std::mutex> guard{mu_};
    peer = peer_;
  }
  std::lock_guard<std::mutex> guard{out_mu_};
  flush_due_ = false;
  if (out_.empty() || !peer)
    return;
  // Under out_mu_, so that buffers reach the peer in the order they filled.
  peer->enqueue(caf::make_mailbox_element(
                  caf::actor_cast<caf::strong_actor_ptr>(rx_),
                  caf::make_message_id(), {}, frames_atom::value,
                  std::move(out_)),
                nullptr);
  out_.clear();
}

caf::expected<std::string_view>
link_state::receive(std::optional<std::chrono::milliseconds> timeout) {
  std::unique_lock<std::mutex> lk{mu_};
  auto deadline = std::chrono::steady_clock::now()
                  + timeout.value_or(std::chrono::hours{24 * 365});
  for (;;) {
    if (rx_off_ < rx_buf_.size()) {
      std::string_view body;
      caf::error err;
      auto rest = std::string_view{rx_buf_}.substr(rx_off_);
      auto used = split_frame(rest, opts_.max_frame_size, body, err);
      if (used == 0)
        return err ? err
                   : make_error(errc::truncated_frame,
                                peer_name_
                                  + " sent a message that ends inside a frame");
      rx_off_ += used;
      return body;
    }
    if (!inbox_.empty()) {
      rx_buf_ = std::move(inbox_.front());
      inbox_.pop_front();
      rx_off_ = 0;
      continue;
    }
    if (closing_)
      return close_reason_;
    if (cv_.wait_until(lk, deadline) == std::cv_status::timeout
        && inbox_.empty() && !closing_)
      return make_error(errc::timeout, "no frame from " + peer_name_
                                         + " within "
                                         + std::to_string(
                                           timeout ? timeout->count() : 0)
                                         + " ms");
  }
}

void link_state::start(frame_handler* handler) {
  {
    std::lock_guard<std::mutex> guard{mu_};
    handler_ = handler;
    // What receive() took off the inbox but did not return comes first.
    if (rx_off_ < rx_buf_.size())
      inbox_.emplace_front(rx_buf_.substr(rx_off_));
    rx_buf_.clear();
    rx_off_ = 0;
    started_ = true;
  }
  if (own_thread_)
    io_ = std::thread{[this] { io_loop(); }};
  else
    drain();
}

void link_state::stop(std::chrono::milliseconds linger, exit_status st) {
  flush();
  caf::actor peer;
  {
    std::lock_guard<std::mutex> guard{mu_};
    peer = peer_;
  }
  if (peer && !bye_sent_.exchange(true)) {
    caf::send_as(rx_, peer, bye_atom::value, int32_t{st.code},
                 int32_t{st.signaled ? st.signal : 0});
    // CAF drops what its broker has not written yet when the node shuts
    // down: up to `linger`, wait for the peer's ack of the goodbye (and so
    // of every frame before it). Not on the multiplexer, which delivers it.
    auto on_mpx = std::this_thread::get_id()
                  == sys_.middleman().backend().thread_id();
    if (linger.count() > 0 && !on_mpx && delivering == nullptr) {
      std::unique_lock<std::mutex> lk{mu_};
      cv_.wait_for(lk, linger, [this] {
        return bye_acked_ || peer_gone_ || peer_status_.has_value();
      });
    }
  }
  drop(make_error(errc::closed, "the link to " + peer_name_ + " was closed"));
  if (!started_)
    return;
  if (own_thread_) {
    if (io_.joinable() && io_.get_id() != std::this_thread::get_id())
      io_.join();
  } else {
    drain();
  }
}

void link_state::fail(caf::error reason) {
  if (delivering == this) {
    if (!fail_reason_)
      fail_reason_ = std::move(reason);
    return;
  }
  drop(std::move(reason));
}

bool link_state::on_io_thread() const noexcept {
  return delivering == this;
}

void link_state::send_signal(int sig) {
  caf::actor peer;
  {
    std::lock_guard<std::mutex> guard{mu_};
    peer = peer_;
  }
  if (peer)
    caf::send_as(rx_, peer, signal_atom::value, int32_t{sig});
}

std::optional<exit_status> link_state::peer_status() {
  std::lock_guard<std::mutex> guard{mu_};
  return peer_status_;
}

bool link_state::wait_closed(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk{mu_};
  // Before start() no handler is told: the end of input is the end.
  return done_cv_.wait_for(lk, timeout,
                           [this] { return closed_ || (!started_ && closing_); });
}

// -- actor_link ---------------------------------------------------------------

actor_link::actor_link(std::shared_ptr<link_state> state)
  : state_(std::move(state)) {
}

actor_link::~actor_link() {
  if (state_->on_io_thread())
    return;
  stop();
}

const channel_options& actor_link::options() const noexcept {
  return state_->options();
}

caf::error actor_link::send(const std::string_view* parts, size_t num_parts,
                            send_mode mode) {
  return state_->send(parts, num_parts, mode);
}

caf::error actor_link::send_framed(std::string_view frames, send_mode mode) {
  return state_->send_framed(frames, mode);
}

void actor_link::flush() {
  state_->flush();
}

caf::expected<std::string_view>
actor_link::receive(std::optional<std::chrono::milliseconds> timeout) {
  return state_->receive(timeout);
}

void actor_link::start(frame_handler* handler, int) {
  state_->start(handler);
}

void actor_link::stop(std::chrono::milliseconds linger) {
  state_->stop(linger, exit_status{});
}

void actor_link::fail(caf::error reason) {
  state_->fail(std::move(reason));
}

bool actor_link::on_io_thread() const noexcept {
  return state_->on_io_thread();
}

// -- remote_peer --------------------------------------------------------------

remote_peer::remote_peer(std::shared_ptr<link_state> link)
  : link_(std::move(link)) {
}

caf::error remote_peer::signal(int sig) {
  link_->send_signal(sig);
  if (sig == SIGKILL)
    return kill();
  return caf::none;
}

caf::error remote_peer::kill() {
  link_->send_signal(SIGKILL);
  link_->drop(make_error(errc::connection_lost,
                         link_->peer_name() + " was dropped by the pool"));
  return caf::none;
}

caf::expected<exit_status> remote_peer::join(std::chrono::milliseconds grace) {
  link_->wait_closed(grace);
  if (auto st = link_->peer_status())
    return *st;
  auto err = link_->closed_error();
  if (err == errc::closed || !err)
    return make_error(errc::connection_lost,
                      "the connection to " + link_->peer_name()
                        + " ended without a goodbye");
  if (err != errc::connection_lost)
    return make_error(errc::connection_lost, describe(err));
  return err;
}

// -- gateway ------------------------------------------------------------------

struct gateway::state {
  network_options opts;
  std::string entry;
  std::string what; // "pool <name>", in logs and errors
  channel_options channel;
  admit_fn admit;
  caf::actor_system* sys = nullptr;
  std::function<void(const std::string&)> log;
  // The challenge each peer actor got (at most one open per actor).
  std::mutex mu;
  std::map<caf::actor_addr, std::pair<std::string, std::string>> open;
  std::vector<std::thread> admitting;
  bool stopping = false;
  bool own_thread = false; // the links' delivery (gateway::start)
};

namespace {

std::string describe_sender(caf::actor_system& sys,
                            const caf::strong_actor_ptr& sender) {
  if (!sender)
    return "an anonymous sender";
  (void) sys;
  return "node " + caf::to_string(sender->node()) + " (actor "
         + std::to_string(sender->id()) + ")";
}

/// Challenges that a peer may leave open; more are refused (a peer that
/// asks again and again without answering).
constexpr size_t max_open_challenges = 1024;

caf::behavior gateway_actor(caf::event_based_actor* self,
                            std::shared_ptr<gateway::state> st) {
  self->set_default_handler(
    [st](caf::scheduled_actor* s, caf::message_view& x) -> caf::result<caf::message> {
      st->log("dropped a message from " + describe_sender(*st->sys, s->current_sender())
              + " that did not authenticate: " + caf::to_string(x.content()));
      return caf::sec::unexpected_message;
    });
  return {
    [self, st](hello_atom, const std::string& client_nonce,
               const std::string& entry)
      -> caf::result<std::string, std::string> {
      auto who = describe_sender(*st->sys, self->current_sender());
      if (client_nonce.size() != nonce_size) {
        st->log("rejected " + who + ": its challenge is "
                + std::to_string(client_nonce.size()) + " bytes, not "
                + std::to_string(nonce_size));
        return make_error(errc::auth_failed, "malformed challenge");
      }
      if (entry != st->entry) {
        st->log("rejected " + who + ": it runs worker entry '" + entry
                + "', " + st->what + " runs '" + st->entry + "'");
        return make_error(errc::unknown_entry,
                          st->what + " runs worker entry '"
                            + st->entry + "', not '" + entry + "'");
      }
      auto server_nonce = make_nonce();
      {
        std::lock_guard<std::mutex> guard{st->mu};
        if (st->open.size() >= max_open_challenges) {
          st->log("rejected " + who + ": too many open challenges");
          return make_error(errc::auth_failed, "too many open challenges");
        }
        st->open[caf::actor_cast<caf::actor_addr>(self->current_sender())]
          = {client_nonce, server_nonce};
      }
      return {server_nonce,
              answer(st->opts.secret, "pool", client_nonce, server_nonce)};
    },
    [self, st](join_atom, const std::string& mac, const caf::actor& rx,
               const std::string& name, int32_t pid,
               const std::string& host) -> caf::result<caf::actor> {
      auto sender = self->current_sender();
      auto who = describe_sender(*st->sys, sender);
      std::pair<std::string, std::string> nonces;
      {
        std::lock_guard<std::mutex> guard{st->mu};
        auto i = st->open.find(caf::actor_cast<caf::actor_addr>(sender));
        if (i == st->open.end()) {
          st->log("rejected " + who + ": it asked to join without a "
                  "challenge");
          return make_error(errc::auth_failed, "no challenge was issued");
        }
        nonces = i->second;
        st->open.erase(i);
      }
      auto worker = name + "[" + std::to_string(pid) + "] on " + host;
      if (!same_answer(mac, answer(st->opts.secret, "worker", nonces.second,
                                   nonces.first))) {
        st->log("rejected worker " + worker + " from " + who
                + ": wrong secret (its answer to the challenge does not "
                  "match)");
        return make_error(errc::auth_failed,
                          st->what
                            + " rejected the worker: wrong secret");
      }
      if (!rx || !sender || rx.node() != sender->node()) {
        st->log("rejected worker " + worker + " from " + who
                + ": its link actor is not on its own node");
        return make_error(errc::auth_failed, "bad link actor");
      }
      auto link = link_state::make(*st->sys, st->channel, st->own_thread,
                                   rx.node(),
                                   "worker " + worker);
      link->connect(rx);
      joined_worker j;
      j.link = link;
      j.info.name = name;
      j.info.pid = static_cast<pid_t>(pid);
      j.info.node = host;
      j.entry = st->entry;
      {
        std::lock_guard<std::mutex> guard{st->mu};
        if (st->stopping)
          return make_error(errc::closed, st->what
                                            + " is closing");
        st->admitting.emplace_back(
          [st, j]() mutable { st->admit(std::move(j)); });
      }
      return link->rx();
    },
  };
}

} // namespace

caf::expected<std::unique_ptr<gateway>>
gateway::start(network_options opts, std::string entry, std::string what,
               channel_options channel, admit_fn admit, bool own_thread) {
  if (opts.secret.empty())
    return make_error(errc::invalid_argument,
                      "publishing " + what
                        + " needs a secret (network_options::secret): no "
                          "peer may join without proving it holds one");
  std::unique_ptr<gateway> g{new gateway};
  g->opts_ = opts;
  g->node_ = std::make_unique<net_node>(
    net_timing{opts.heartbeat_interval, opts.connection_timeout});
  auto st = std::make_shared<state>();
  st->opts = opts;
  st->entry = std::move(entry);
  st->what = what;
  st->channel = channel;
  st->admit = std::move(admit);
  st->own_thread = own_thread;
  st->sys = &g->node_->sys();
  auto sink = opts.log;
  st->log = [sink, what](const std::string& line) {
    auto text = what + ": " + line;
    if (sink)
      sink(text);
    else
      logger()->warn("{}", text);
  };
  g->state_ = st;
  g->actor_ = g->node_->sys().spawn(gateway_actor, st);
  auto port = g->node_->sys().middleman().publish(
    g->actor_, opts.port, opts.host.c_str(), true);
  if (!port) {
    caf::anon_send_exit(g->actor_, caf::exit_reason::user_shutdown);
    return make_error(errc::system_error,
                      what + " cannot listen on " + opts.host
                        + ":" + std::to_string(opts.port) + ": "
                        + g->node_->sys().render(port.error()));
  }
  g->port_ = *port;
  st->log("listening for remote workers on " + opts.host + ":"
          + std::to_string(*port));
  return g;
}

void gateway::log(const std::string& line) const {
  state_->log(line);
}

void gateway::stop_listening() {
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> guard{state_->mu};
    if (state_->stopping)
      return;
    state_->stopping = true;
    threads.swap(state_->admitting);
    state_->open.clear();
  }
  [[maybe_unused]] auto r = node_->sys().middleman().unpublish(actor_, port_);
  caf::anon_send_exit(actor_, caf::exit_reason::user_shutdown);
  for (auto& t : threads)
    t.join();
  actor_ = nullptr;
}

gateway::~gateway() {
  stop_listening();
}

caf::expected<std::shared_ptr<link_state>>
join_gateway(caf::actor_system& sys, const caf::actor& gw,
             const join_request& req) {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0)
    std::snprintf(host, sizeof(host), "unknown-host");
  caf::error failure;
  std::string server_nonce;
  std::shared_ptr<link_state> link;
  auto client_nonce = make_nonce();
  caf::actor parent;
  {
    // One actor asks for the challenge and answers it: the gateway keys
    // the challenge by its sender.
    caf::scoped_actor self{sys};
    self
      ->request(gw, req.handshake_timeout, hello_atom::value, client_nonce,
                req.entry)
      .receive(
        [&](std::string& nonce, std::string& proof) {
          if (!same_answer(proof, answer(req.secret, "pool", client_nonce,
                                         nonce)))
            failure = make_error(errc::auth_failed,
                                 req.peer + " did not prove that it holds the "
                                     "secret (wrong secret on one side)");
          server_nonce = std::move(nonce);
        },
        [&](caf::error& err) { failure = std::move(err); });
    if (failure)
      return failure;
    link = link_state::make(sys, channel_options{}, true, gw.node(),
                            req.peer);
    link->on_signal = req.on_signal;
    self
      ->request(gw, req.handshake_timeout, join_atom::value,
                answer(req.secret, "worker", server_nonce, client_nonce),
                link->rx(), req.name, static_cast<int32_t>(::getpid()),
                std::string{host})
      .receive([&](caf::actor& x) { parent = std::move(x); },
               [&](caf::error& err) { failure = std::move(err); });
  }
  if (failure)
    return failure;
  link->connect(parent);
  return link;
}

} // namespace multiproc::detail

namespace multiproc {

caf::expected<int> run_remote_worker(const remote_worker_options& opts) {
  using namespace detail;
  if (!has_worker(opts.entry))
    return make_error(errc::unknown_entry,
                      "no worker is registered as '" + opts.entry + "'");
  if (opts.secret.empty())
    return make_error(errc::invalid_argument,
                      "a remote worker needs the cluster's secret");
  if (opts.port == 0)
    return make_error(errc::invalid_argument,
                      "a remote worker needs the pool's port");
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0)
    std::snprintf(host, sizeof(host), "unknown-host");
  auto name = opts.name.empty() ? opts.entry + "@" + host : opts.name;
  auto where = opts.host + ":" + std::to_string(opts.port);
  net_node node{net_timing{opts.heartbeat_interval, opts.connection_timeout}};
  auto& sys = node.sys();
  auto gw = node.connect(opts.host, opts.port, opts.handshake_timeout);
  if (!gw)
    return make_error(errc::connection_lost,
                      "cannot reach the pool at " + where + ": "
                        + sys.render(gw.error()));
  join_request req;
  req.peer = "the pool at " + where;
  req.secret = opts.secret;
  req.entry = opts.entry;
  req.name = name;
  req.handshake_timeout = opts.handshake_timeout;
  req.on_signal = [](int sig) { ::kill(::getpid(), sig); };
  auto joined = join_gateway(sys, *gw, req);
  if (!joined)
    return std::move(joined.error());
  auto link = std::move(*joined);
  int code;
  {
    actor_link ch{link};
    code = serve_worker(ch, sys, opts.entry, name, opts.handshake_timeout);
    exit_status st;
    st.code = code;
    link->stop(std::chrono::milliseconds{1000}, st);
  }
  return code;
}

} // namespace multiproc
