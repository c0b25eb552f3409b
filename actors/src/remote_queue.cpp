// Queues across hosts (remote_queue.hpp). On the queue's host, each remote
// handle that joins gets a server process of its own, which calls the
// queue for it; a relay carries frames between the handle's link and the
// server's channel. When the link ends, the server is killed and the queue
// repairs what it held (recover(pid)), as after any consumer's death.
//
// Frames (client -> server; integers little-endian, timeouts in ms, -1 for
// none): 'H' hello; 'P' i64 timeout, bytes; 'G' i64 timeout; 'A' ack;
// 'D' task_done; 'C' close; 'J' i64 timeout; 'S' size; 'X' release (the
// handle ends cleanly). Answers: 'h' u64 tag, u32 capacity, u32 max
// message, u8 joinable; 'k' done; 'm' u32 deliveries, bytes; 's' u64 size;
// 'e' an error (encode_error).

#include "multiproc/remote_queue.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include <endian.h>
#include <poll.h>

#include "multiproc/bootstrap.hpp"
#include "multiproc/envelope.hpp"
#include "multiproc/error.hpp"
#include "multiproc/frame_channel.hpp"
#include "multiproc/log.hpp"
#include "multiproc/process.hpp"
#include "network_impl.hpp"
#include "relay.hpp"

namespace multiproc {

namespace {

/// The gateway entry of a published queue.
constexpr const char* queue_entry = "multiproc.queue";
/// The child entry that serves one remote handle.
constexpr const char* queue_server_entry = "multiproc.queue_server";

void put_u32(std::string& out, uint32_t x) {
  x = htole32(x);
  out.append(reinterpret_cast<const char*>(&x), sizeof(x));
}

void put_u64(std::string& out, uint64_t x) {
  x = htole64(x);
  out.append(reinterpret_cast<const char*>(&x), sizeof(x));
}

template <class T>
bool take(std::string_view& in, T& x) {
  if (in.size() < sizeof(T))
    return false;
  std::memcpy(&x, in.data(), sizeof(T));
  in.remove_prefix(sizeof(T));
  if constexpr (sizeof(T) == 8)
    x = static_cast<T>(le64toh(static_cast<uint64_t>(x)));
  else if constexpr (sizeof(T) == 4)
    x = static_cast<T>(le32toh(static_cast<uint32_t>(x)));
  return true;
}

void put_timeout(std::string& out, shm_queue::timeout_type t) {
  put_u64(out, static_cast<uint64_t>(t ? static_cast<int64_t>(t->count())
                                       : int64_t{-1}));
}

bool take_timeout(std::string_view& in, shm_queue::timeout_type& t) {
  int64_t ms = 0;
  if (!take(in, ms))
    return false;
  if (ms < 0)
    t = std::nullopt;
  else
    t = std::chrono::milliseconds{ms};
  return true;
}

std::string error_answer(const caf::error& err) {
  return "e" + encode_error(err);
}

/// Serves one remote handle: fds[0] is the queue, the channel carries the
/// handle's frames. Ends with code 0 after a release; when the channel ends
/// without one (the link was lost) it leaves at once, without running the
/// queue handle's destructor, so that what it holds is repaired as a dead
/// consumer's: delivered again.
int queue_server(child_context& ctx) {
  if (ctx.fds.size() != 1) {
    logger()->error("queue server: expected 1 descriptor, got {}",
                    ctx.fds.size());
    return 64;
  }
  auto q = shm_queue::attach(std::move(ctx.fds[0]));
  if (!q) {
    logger()->error("queue server: {}", describe(q.error()));
    return 64;
  }
  frame_channel ch{std::move(ctx.channel)};
  std::string out;
  for (;;) {
    auto frame = ch.receive();
    if (!frame)
      std::_Exit(0); // the link is gone: leave the leases to the repair
    std::string_view in = *frame;
    if (in.empty()) {
      [[maybe_unused]] auto e = ch.send(error_answer(
        make_error(errc::protocol_error, "an empty queue request")));
      std::_Exit(65);
    }
    char op = in.front();
    in.remove_prefix(1);
    out.clear();
    shm_queue::timeout_type t;
    bool ok = true;
    switch (op) {
      case 'H':
        out = "h";
        put_u64(out, q->tag());
        put_u32(out, q->capacity());
        put_u32(out, q->max_message_size());
        out.push_back(q->joinable() ? 1 : 0);
        break;
      case 'P':
        if (!(ok = take_timeout(in, t)))
          break;
        if (auto err = q->put(in, t))
          out = error_answer(err);
        else
          out = "k";
        break;
      case 'G': {
        if (!(ok = take_timeout(in, t)))
          break;
        auto msg = q->get(t);
        if (!msg) {
          out = error_answer(msg.error());
          break;
        }
        out = "m";
        put_u32(out, msg->deliveries);
        out.append(msg->bytes.data(), msg->bytes.size());
        break;
      }
      case 'A':
        q->ack();
        out = "k";
        break;
      case 'D':
        if (auto err = q->task_done())
          out = error_answer(err);
        else
          out = "k";
        break;
      case 'C':
        q->close();
        out = "k";
        break;
      case 'J':
        if (!(ok = take_timeout(in, t)))
          break;
        if (auto err = q->join(t))
          out = error_answer(err);
        else
          out = "k";
        break;
      case 'S':
        out = "s";
        put_u64(out, q->size());
        break;
      case 'X': {
        *q = shm_queue{}; // acknowledges and hands back, as a destructor
        [[maybe_unused]] auto e = ch.send("k");
        return 0;
      }
      default:
        ok = false;
    }
    if (!ok) {
      [[maybe_unused]] auto e = ch.send(error_answer(make_error(
        errc::protocol_error, "a malformed queue request (operation '"
                                + std::string(1, op) + "')")));
      std::_Exit(65);
    }
    if (ch.send(out))
      std::_Exit(0); // the link is gone
  }
}

const bool queue_server_registered = register_entry(queue_server_entry,
                                                    &queue_server);

} // namespace

// -- the queue's host -----------------------------------------------------------

struct queue_publisher::impl {
  /// One remote handle: its server process and the relay to its link.
  struct session {
    process server;
    std::unique_ptr<detail::relay> relay;
    std::thread watcher;
    std::atomic<bool> done{false};
  };

  shm_queue queue; // ours: repairs what a server left
  std::unique_ptr<detail::gateway> gw;
  std::atomic<detail::gateway*> log_to{nullptr};
  std::mutex mu;
  bool closing = false;
  std::vector<std::unique_ptr<session>> sessions;

  void log(const std::string& line) {
    if (auto* g = log_to.load())
      g->log(line);
    else
      logger()->warn("{}", line);
  }

  void admit(detail::joined_worker j) {
    process_options po;
    po.name = "queue server for " + j.info.name;
    po.fds = {queue.fd()};
    auto proc = start_process(queue_server_entry, {}, po);
    if (!proc) {
      log("cannot serve " + j.info.name + ": " + describe(proc.error()));
      exit_status st;
      st.code = 1;
      j.link->stop(std::chrono::milliseconds{0}, st);
      return;
    }
    auto s = std::make_unique<session>();
    s->relay = std::make_unique<detail::relay>(proc->take_channel(),
                                               std::move(j.link));
    s->server = std::move(*proc);
    auto* raw = s.get();
    std::lock_guard<std::mutex> guard{mu};
    if (closing) {
      [[maybe_unused]] auto e = s->server.kill();
      return; // the session's destructors end the relay and reap
    }
    prune();
    s->relay->start();
    s->watcher = std::thread{[this, raw] { watch(*raw); }};
    sessions.push_back(std::move(s));
  }

  /// Waits for the session's relay to end (the link or the server ended),
  /// kills the server, and repairs what it held before reaping it.
  void watch(session& s) {
    while (!s.relay->done())
      std::this_thread::sleep_for(std::chrono::milliseconds{5});
    auto pid = s.server.pid();
    [[maybe_unused]] auto e = s.server.kill();
    pollfd p{s.server.exit_fd(), POLLIN, 0};
    while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
    queue.recover(pid); // exited, not yet reaped: the pid is not reused
    [[maybe_unused]] auto st = s.server.join(std::chrono::milliseconds{5000});
    s.done = true;
  }

  /// Drops finished sessions (under mu).
  void prune() {
    std::vector<std::unique_ptr<session>> keep;
    for (auto& s : sessions) {
      if (s->done.load()) {
        if (s->watcher.joinable())
          s->watcher.join();
      } else {
        keep.push_back(std::move(s));
      }
    }
    sessions.swap(keep);
  }

  ~impl() {
    if (gw)
      gw->stop_listening(); // joins the admissions under way
    std::vector<std::unique_ptr<session>> all;
    {
      std::lock_guard<std::mutex> guard{mu};
      closing = true;
      all.swap(sessions);
    }
    for (auto& s : all)
      s->relay->end(1);
    for (auto& s : all)
      if (s->watcher.joinable())
        s->watcher.join();
    all.clear();
    gw.reset();
  }
};

queue_publisher::queue_publisher(std::unique_ptr<impl> p)
  : impl_(std::move(p)) {
}

queue_publisher::~queue_publisher() = default;

caf::expected<std::unique_ptr<queue_publisher>>
queue_publisher::start(const shm_queue& q, network_options opts) {
  if (!q.valid())
    return make_error(errc::invalid_argument,
                      "publishing a queue needs a valid queue handle");
  auto mine = q.clone();
  if (!mine)
    return std::move(mine.error());
  auto im = std::make_unique<impl>();
  im->queue = std::move(*mine);
  auto* raw = im.get();
  auto g = detail::gateway::start(
    std::move(opts), queue_entry, "queue", channel_options{},
    [raw](detail::joined_worker j) { raw->admit(std::move(j)); }, true);
  if (!g)
    return std::move(g.error());
  im->gw = std::move(*g);
  im->log_to = im->gw.get();
  return std::unique_ptr<queue_publisher>{new queue_publisher(std::move(im))};
}

uint16_t queue_publisher::port() const noexcept {
  return impl_->gw->port();
}

// -- a remote handle --------------------------------------------------------------

struct remote_shm_queue::impl {
  remote_queue_options opts;
  std::string where; // "host:port"
  std::unique_ptr<detail::net_node> node;
  caf::actor gw;
  std::shared_ptr<detail::link_state> link;
  uint64_t tag = 0;
  uint32_t capacity = 0;
  uint32_t max_message = 0;
  bool joinable = false;
  caf::error broken; // set once the connection is unusable
  std::string answer;

  /// Sends `parts` and waits for the answer: up to `wait` plus the
  /// connection timeout, or for as long as the link lives.
  caf::error call(std::initializer_list<std::string_view> parts,
                  shm_queue::timeout_type wait) {
    if (broken)
      return broken;
    if (auto err = link->send(parts.begin(), parts.size(),
                              send_mode::immediate))
      return fail(err);
    std::optional<std::chrono::milliseconds> limit;
    if (wait)
      limit = *wait + opts.connection_timeout;
    auto frame = link->receive(limit);
    if (!frame)
      return fail(frame.error());
    answer.assign(frame->data(), frame->size());
    if (answer.empty())
      return fail(make_error(errc::protocol_error, "an empty answer"));
    if (answer.front() == 'e') {
      caf::error err;
      if (!decode_error(std::string_view{answer}.substr(1), err))
        return fail(err);
      return err;
    }
    return caf::none;
  }

  caf::error fail(const caf::error& why) {
    broken = make_error(errc::connection_lost,
                        "the queue at " + where + " cannot be reached: "
                          + describe(why));
    link->drop(broken);
    return broken;
  }

  /// The answer's body after its kind, which must be `kind`.
  caf::expected<std::string_view> body(char kind) {
    if (answer.front() != kind)
      return fail(make_error(errc::protocol_error,
                             std::string("an answer of kind '")
                               + answer.front() + "', expected '" + kind
                               + "'"));
    return std::string_view{answer}.substr(1);
  }

  ~impl() {
    if (link && !broken) {
      // Acknowledges (plain queues) and hands back what it holds.
      [[maybe_unused]] auto e = call({"X"}, std::chrono::milliseconds{0});
      exit_status st;
      link->stop(std::chrono::milliseconds{1000}, st);
    }
    link.reset();
    gw = nullptr;
    node.reset();
  }
};

remote_shm_queue::remote_shm_queue() noexcept = default;
remote_shm_queue::remote_shm_queue(remote_shm_queue&&) noexcept = default;
remote_shm_queue&
remote_shm_queue::operator=(remote_shm_queue&&) noexcept = default;
remote_shm_queue::~remote_shm_queue() = default;

caf::expected<remote_shm_queue>
remote_shm_queue::connect(const remote_queue_options& o) {
  if (o.secret.empty())
    return make_error(errc::invalid_argument,
                      "connecting to a queue needs the cluster's secret");
  if (o.port == 0)
    return make_error(errc::invalid_argument,
                      "connecting to a queue needs its port");
  auto im = std::make_unique<impl>();
  im->opts = o;
  im->where = o.host + ":" + std::to_string(o.port);
  im->node = std::make_unique<detail::net_node>(
    detail::net_timing{o.heartbeat_interval, o.connection_timeout});
  auto gw = im->node->connect(o.host, o.port, o.handshake_timeout);
  if (!gw)
    return make_error(errc::connection_lost,
                      "cannot reach the queue at " + im->where + ": "
                        + im->node->sys().render(gw.error()));
  im->gw = std::move(*gw);
  detail::join_request req;
  req.peer = "the queue at " + im->where;
  req.secret = o.secret;
  req.entry = queue_entry;
  req.name = "queue client@" + detail::this_host() + "["
             + std::to_string(::getpid()) + "]";
  req.handshake_timeout = o.handshake_timeout;
  auto joined = detail::join_gateway(im->node->sys(), im->gw, req);
  if (!joined)
    return std::move(joined.error());
  im->link = std::move(*joined);
  if (auto err = im->call({"H"}, o.handshake_timeout))
    return err;
  auto b = im->body('h');
  if (!b)
    return std::move(b.error());
  uint8_t joinable = 0;
  if (!take(*b, im->tag) || !take(*b, im->capacity)
      || !take(*b, im->max_message) || !take(*b, joinable))
    return im->fail(make_error(errc::protocol_error, "a short hello"));
  im->joinable = joinable != 0;
  remote_shm_queue result;
  result.impl_ = std::move(im);
  return result;
}

caf::error remote_shm_queue::put(std::string_view bytes, timeout_type timeout) {
  if (!impl_)
    return make_error(errc::invalid_argument, "put on an empty remote queue");
  if (bytes.size() > impl_->max_message)
    return make_error(errc::frame_too_large,
                      "a message of " + std::to_string(bytes.size())
                        + " bytes; the queue at " + impl_->where
                        + " takes at most "
                        + std::to_string(impl_->max_message));
  std::string head = "P";
  put_timeout(head, timeout);
  if (auto err = impl_->call({head, bytes}, timeout))
    return err;
  auto b = impl_->body('k');
  return b ? caf::none : b.error();
}

caf::expected<remote_shm_queue::message>
remote_shm_queue::get(timeout_type timeout) {
  if (!impl_)
    return make_error(errc::invalid_argument, "get on an empty remote queue");
  std::string head = "G";
  put_timeout(head, timeout);
  if (auto err = impl_->call({head}, timeout))
    return err;
  auto b = impl_->body('m');
  if (!b)
    return std::move(b.error());
  message m;
  if (!take(*b, m.deliveries))
    return impl_->fail(make_error(errc::protocol_error, "a short message"));
  m.bytes.assign(b->data(), b->size());
  return m;
}

namespace {

caf::error simple_call(remote_shm_queue::impl* im, std::string_view what,
                       std::string head, shm_queue::timeout_type wait) {
  if (im == nullptr)
    return make_error(errc::invalid_argument,
                      std::string{what} + " on an empty remote queue");
  if (auto err = im->call({head}, wait))
    return err;
  auto b = im->body('k');
  return b ? caf::none : b.error();
}

} // namespace

caf::error remote_shm_queue::ack() {
  return simple_call(impl_.get(), "ack", "A", std::chrono::milliseconds{0});
}

caf::error remote_shm_queue::task_done() {
  return simple_call(impl_.get(), "task_done", "D",
                     std::chrono::milliseconds{0});
}

caf::error remote_shm_queue::join(timeout_type timeout) {
  std::string head = "J";
  put_timeout(head, timeout);
  return simple_call(impl_.get(), "join", head, timeout);
}

caf::error remote_shm_queue::close() {
  return simple_call(impl_.get(), "close", "C", std::chrono::milliseconds{0});
}

caf::expected<size_t> remote_shm_queue::size() {
  if (!impl_)
    return make_error(errc::invalid_argument, "size on an empty remote queue");
  if (auto err = impl_->call({"S"}, std::chrono::milliseconds{0}))
    return err;
  auto b = impl_->body('s');
  if (!b)
    return std::move(b.error());
  uint64_t n = 0;
  if (!take(*b, n))
    return impl_->fail(make_error(errc::protocol_error, "a short size"));
  return static_cast<size_t>(n);
}

uint64_t remote_shm_queue::tag() const noexcept {
  return impl_ ? impl_->tag : 0;
}

uint32_t remote_shm_queue::capacity() const noexcept {
  return impl_ ? impl_->capacity : 0;
}

uint32_t remote_shm_queue::max_message_size() const noexcept {
  return impl_ ? impl_->max_message : 0;
}

bool remote_shm_queue::joinable() const noexcept {
  return impl_ ? impl_->joinable : false;
}

} // namespace multiproc
