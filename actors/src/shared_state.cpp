// The client side of the shared-state actor (shared_state.hpp): blocking
// connections (one per thread and owner), the flusher that writes posts
// within a millisecond, the client actor for actors, and starting owners.

#include "multiproc/shared_state.hpp"

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <endian.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <caf/actor_cast.hpp>
#include <caf/response_promise.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>

#include "multiproc/bootstrap.hpp"
#include "multiproc/function.hpp"
#include "multiproc/log.hpp"
#include "multiproc/pipe.hpp"
#include "shared_state_owner.hpp"
#include "state_tunnel.hpp"

namespace multiproc::detail {

namespace {

using clock = std::chrono::steady_clock;

constexpr size_t post_flush_bytes = 64 * 1024;

/// This process's pid without a system call per operation (glibc does not
/// cache getpid()): refreshed in a forked child.
std::atomic<pid_t> cached_pid{0};

pid_t self_pid() noexcept {
  auto pid = cached_pid.load(std::memory_order_relaxed);
  if (pid != 0)
    return pid;
  static const bool installed = [] {
    ::pthread_atfork(nullptr, nullptr,
                     [] { cached_pid.store(::getpid()); });
    return true;
  }();
  (void) installed;
  pid = ::getpid();
  cached_pid.store(pid);
  return pid;
}

void put_prefix(std::string& body, shared_frame kind, uint64_t id) {
  body[0] = static_cast<char>(kind);
  uint64_t le = htole64(id);
  std::memcpy(&body[1], &le, sizeof(le));
}

void frame(std::string& out, std::string_view body) {
  char hdr[frame_header_size];
  write_frame_header(body.size(), hdr);
  out.append(hdr, sizeof(hdr));
  out.append(body.data(), body.size());
}

caf::error owner_gone(const std::string& address, const char* what) {
  return make_error(errc::owner_died, std::string{"the shared-state owner at '"}
                                        + address + "' " + what);
}

/// A decoded reply or change frame.
struct reply_frame {
  shared_frame kind;
  uint64_t id;
  bool ok;
  std::string_view payload;
};

caf::error parse_reply(std::string_view body, reply_frame& out) {
  if (body.size() < 10)
    return make_error(errc::protocol_error,
                      "a reply of " + std::to_string(body.size())
                        + " bytes from the shared-state owner is too short");
  out.kind = static_cast<shared_frame>(body[0]);
  uint64_t id;
  std::memcpy(&id, body.data() + 1, sizeof(id));
  out.id = le64toh(id);
  out.ok = body[9] == 0;
  out.payload = body.substr(10);
  return caf::none;
}

caf::error decode_error(std::string_view payload) {
  try {
    wire_input_archive in{payload};
    auto code = decode_from<uint32_t>(in);
    auto text = decode_from<std::string>(in);
    if (code == 0) // would be no error at all: a failure must stay one
      return make_error(errc::protocol_error,
                        "an error reply without an error code: " + text);
    return make_error(static_cast<errc>(code), std::move(text));
  } catch (const std::exception& e) {
    return make_error(errc::protocol_error,
                      std::string{"an error reply that does not decode: "}
                        + e.what());
  }
}

} // namespace

caf::expected<unique_fd> connect_to(const std::string& address) {
  sockaddr_un sa;
  auto len = abstract_address(address, &sa);
  if (len == 0)
    return make_error(errc::invalid_argument,
                      "'" + address + "' is not a shared-state address");
  unique_fd fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  if (!fd)
    return make_system_error("socket(AF_UNIX)", errno);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa),
                static_cast<socklen_t>(len))
      != 0) {
    if (errno == ECONNREFUSED || errno == ENOENT)
      return owner_gone(address, "does not listen (it ended, or never "
                                 "started)");
    return make_system_error("connect('" + address + "')", errno);
  }
  return fd;
}

namespace {

// -- blocking connections -----------------------------------------------------

class flusher;

/// One thread's connection to one owner. Only its thread reads; the flusher
/// may write its queued posts (under `mtx`).
struct client_conn {
  std::string address;
  pid_t pid = 0;
  unique_fd fd;
  std::mutex mtx; // guards out and writes
  std::string out;
  std::string in;
  size_t in_pos = 0;
  uint64_t next_id = 1;
  caf::error post_error; // the first failed post since the last sync
  caf::error broken;     // set once the connection is unusable

  ~client_conn();

  /// Writes `out` (lock held); false if the owner went away or the deadline
  /// passed.
  caf::error write_locked(clock::time_point deadline) {
    size_t pos = 0;
    while (pos < out.size()) {
      auto n = ::send(fd.get(), out.data() + pos, out.size() - pos,
                      MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        pos += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - clock::now());
        if (left.count() <= 0) {
          out.erase(0, pos);
          return make_error(errc::timeout,
                            "the shared-state owner at '" + address
                              + "' did not take our frames in time");
        }
        pollfd p{fd.get(), POLLOUT, 0};
        ::poll(&p, 1, static_cast<int>(left.count()) + 1);
        continue;
      }
      out.clear();
      return owner_gone(address, "closed the connection (it ended or was "
                                 "stopped)");
    }
    out.clear();
    return caf::none;
  }

  /// Reads until the reply `id` arrives; collects post errors on the way.
  caf::expected<std::string> read_reply(uint64_t id,
                                        clock::time_point deadline) {
    for (;;) {
      std::string_view rest{in};
      rest.remove_prefix(in_pos);
      std::string_view body;
      caf::error err;
      auto used = split_frame(rest, default_max_frame_size, body, err);
      if (err)
        return err;
      if (used > 0) {
        reply_frame r;
        if (auto perr = parse_reply(body, r))
          return perr;
        in_pos += used;
        if (r.kind == shared_frame::post_error) {
          if (!post_error)
            post_error = decode_error(r.payload);
          continue;
        }
        if (r.kind != shared_frame::reply || r.id != id)
          return make_error(errc::protocol_error,
                            "expected the reply to request "
                              + std::to_string(id) + ", got frame kind "
                              + std::to_string(static_cast<int>(r.kind))
                              + " for " + std::to_string(r.id));
        std::string payload{r.payload};
        bool ok = r.ok;
        if (in_pos == in.size()) {
          in.clear();
          in_pos = 0;
        }
        if (!ok)
          return decode_error(payload);
        return payload;
      }
      if (in_pos > 0) {
        in.erase(0, in_pos);
        in_pos = 0;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - clock::now());
      if (left.count() < 0)
        return make_error(errc::timeout, "");
      pollfd p{fd.get(), POLLIN, 0};
      int rc = ::poll(&p, 1, static_cast<int>(left.count()) + 1);
      if (rc < 0 && errno != EINTR)
        return make_system_error("poll", errno);
      if (rc <= 0)
        continue;
      char buf[65536];
      auto n = ::recv(fd.get(), buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0)
        in.append(buf, static_cast<size_t>(n));
      else if (n == 0 || (errno != EAGAIN && errno != EINTR))
        return owner_gone(address, "closed the connection (it ended or was "
                                   "stopped)");
    }
  }
};

/// Writes queued posts of every thread within about a millisecond, so a
/// post is never stranded in a thread that stopped calling.
class flusher {
public:
  static flusher& instance() {
    static flusher f;
    return f;
  }

  void mark(client_conn* c) {
    std::lock_guard<std::mutex> guard{mtx_};
    if (!running_ || pid_ != self_pid()) {
      // First post of this process (or of a forked child): start the thread.
      if (thread_.joinable() && pid_ == self_pid())
        return;
      if (thread_.joinable())
        thread_.detach(); // a forked child's copy: that thread is not here
      pid_ = self_pid();
      running_ = true;
      stopping_ = false;
      dirty_.clear();
      thread_ = std::thread([this] { loop(); });
    }
    if (dirty_.insert(c).second && dirty_.size() == 1)
      cv_.notify_one();
  }

  /// Writes every thread's queued posts now (a child about to _exit()).
  void drain() {
    std::lock_guard<std::mutex> guard{mtx_};
    if (pid_ != self_pid())
      return;
    for (auto* c : dirty_) {
      std::lock_guard<std::mutex> cguard{c->mtx};
      if (!c->out.empty() && !c->broken)
        if (auto err = c->write_locked(clock::now()
                                       + std::chrono::seconds{10}))
          c->broken = err;
    }
    dirty_.clear();
  }

  void forget(client_conn* c) {
    std::lock_guard<std::mutex> guard{mtx_};
    dirty_.erase(c);
  }

  ~flusher() {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      if (!running_ || pid_ != self_pid()) {
        if (thread_.joinable())
          thread_.detach();
        return;
      }
      stopping_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable())
      thread_.join();
  }

private:
  void loop() {
    std::unique_lock<std::mutex> lk{mtx_};
    for (;;) {
      cv_.wait(lk, [this] { return stopping_ || !dirty_.empty(); });
      if (stopping_ && dirty_.empty())
        return;
      cv_.wait_for(lk, std::chrono::milliseconds{1},
                   [this] { return stopping_; });
      // The lock keeps every connection in dirty_ alive (see forget()).
      for (auto* c : dirty_) {
        std::lock_guard<std::mutex> guard{c->mtx};
        if (!c->out.empty() && !c->broken)
          if (auto err = c->write_locked(clock::now()
                                         + std::chrono::seconds{10}))
            c->broken = err;
      }
      dirty_.clear();
      if (stopping_)
        return;
    }
  }

  std::mutex mtx_;
  std::condition_variable cv_;
  std::set<client_conn*> dirty_;
  std::thread thread_;
  pid_t pid_ = 0;
  bool running_ = false;
  bool stopping_ = false;
};

client_conn::~client_conn() {
  if (pid != self_pid()) {
    // Inherited through fork: the posts queued here are the parent's.
    (void) fd.release();
    return;
  }
  flusher::instance().forget(this);
  std::lock_guard<std::mutex> guard{mtx};
  if (!out.empty() && !broken)
    (void) write_locked(clock::now() + std::chrono::seconds{10});
}

const bool drain_at_child_exit = [] {
  at_child_exit([] { flusher::instance().drain(); });
  return true;
}();

struct thread_conns {
  std::unordered_map<std::string, std::unique_ptr<client_conn>> map;
  client_conn* last = nullptr;
};

thread_local thread_conns tls_conns;

caf::expected<client_conn*> conn_for(const std::string& address) {
  // The last connection this thread used, without hashing the address.
  auto& last = tls_conns.last;
  if (last != nullptr && last->address == address && last->pid == self_pid()
      && !last->broken)
    return last;
  last = nullptr;
  auto& map = tls_conns.map;
  auto i = map.find(address);
  if (i != map.end()) {
    auto* c = i->second.get();
    if (c->pid == self_pid() && !c->broken)
      return last = c;
    if (c->pid != self_pid()) {
      c->out.clear();
      (void) c->fd.release(); // not ours to close in a forked child
    }
    map.erase(i);
  }
  // Make sure the flusher outlives every thread's connections.
  (void) flusher::instance();
  auto fd = connect_to(address);
  if (!fd)
    return std::move(fd.error());
  auto c = std::make_unique<client_conn>();
  c->address = address;
  c->pid = self_pid();
  c->fd = std::move(*fd);
  auto* raw = c.get();
  map.emplace(address, std::move(c));
  return last = raw;
}

/// "fetch_add on cell 'c'" for the operation in `body` (error texts only).
std::string describe_op(const std::string& body) {
  try {
    wire_input_archive in{std::string_view{body}.substr(shared_frame_prefix)};
    std::string cell;
    std::vector<std::string> path;
    std::string type;
    uint8_t code = 0;
    in(cell, path, type, code);
    return std::string{to_string(static_cast<shared_op>(code))} + " on cell '"
           + cell + "'";
  } catch (const std::exception&) {
    return "an operation";
  }
}

/// Sends `body` as frame `kind` and waits for its reply. `what` names the
/// call in a timeout's text; empty: the operation in `body`, decoded only
/// then.
caf::expected<std::string> round_trip(const std::string& address,
                                      std::chrono::milliseconds timeout,
                                      shared_frame kind, std::string body,
                                      const std::string& what = {}) {
  auto c = conn_for(address);
  if (!c)
    return std::move(c.error());
  auto& conn = **c;
  auto deadline = clock::now() + timeout;
  auto id = conn.next_id++;
  put_prefix(body, kind, id);
  {
    std::lock_guard<std::mutex> guard{conn.mtx};
    frame(conn.out, body);
    if (auto err = conn.write_locked(deadline)) {
      conn.broken = err;
      return err;
    }
  }
  auto reply = conn.read_reply(id, deadline);
  if (!reply) {
    auto code = code_of(reply.error());
    if (code == errc::timeout || code == errc::owner_died
        || code == errc::protocol_error || code == errc::frame_too_large
        || code == errc::system_error)
      conn.broken = reply.error(); // a late reply would be misread: reconnect
    if (code == errc::timeout)
      return make_error(errc::timeout, "no reply from the shared-state owner "
                                       "at '"
                                         + address + "' within "
                                         + std::to_string(timeout.count())
                                         + " ms ("
                                         + (what.empty() ? describe_op(body)
                                                         : what)
                                         + ")");
  }
  return reply;
}

} // namespace

caf::expected<std::string> blocking_call(const cell_ref& ref,
                                         std::string body) {
  return round_trip(ref.address, ref.timeout, shared_frame::request,
                    std::move(body));
}

caf::error blocking_post(const cell_ref& ref, std::string body) {
  auto c = conn_for(ref.address);
  if (!c)
    return std::move(c.error());
  auto& conn = **c;
  put_prefix(body, shared_frame::post, 0);
  bool first;
  {
    std::lock_guard<std::mutex> guard{conn.mtx};
    if (conn.broken)
      return conn.broken;
    first = conn.out.empty();
    frame(conn.out, body);
    if (conn.out.size() >= post_flush_bytes) {
      if (auto err = conn.write_locked(clock::now() + ref.timeout)) {
        conn.broken = err;
        return err;
      }
      first = false;
    }
  }
  if (first)
    flusher::instance().mark(&conn);
  return caf::none;
}

caf::error blocking_sync(const std::string& address,
                         std::chrono::milliseconds timeout) {
  std::string body(shared_frame_prefix, '\0');
  auto reply = round_trip(address, timeout, shared_frame::sync,
                          std::move(body), "sync");
  if (!reply)
    return std::move(reply.error());
  auto c = conn_for(address);
  if (c)
    return std::exchange((*c)->post_error, caf::error{});
  return caf::none;
}

// -- the client actor -----------------------------------------------------------

namespace {

/// A frame from the owner, for the client actor.
struct owner_frame_msg {
  std::string body;
};

/// The connection ended.
struct owner_closed_msg {
  caf::error reason;
};

} // namespace
} // namespace multiproc::detail

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(multiproc::detail::owner_frame_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(multiproc::detail::owner_closed_msg)

namespace multiproc::detail {

namespace {

/// Hands the owner's frames to the client actor (I/O thread).
class client_handler : public frame_handler {
public:
  explicit client_handler(caf::actor_addr self) : self_(std::move(self)) {
  }

  void on_frame(std::string_view body) override {
    if (auto dest = caf::actor_cast<caf::actor>(self_))
      caf::anon_send(dest, owner_frame_msg{std::string{body}});
  }

  void on_closed(const caf::error& reason) override {
    if (auto dest = caf::actor_cast<caf::actor>(self_))
      caf::anon_send(dest, owner_closed_msg{reason});
  }

private:
  caf::actor_addr self_;
};

struct subscription {
  std::string cell;
  caf::actor subscriber;
  caf::message (*decode)(const std::string&, std::string_view);
};

struct client_state {
  std::string address;
  std::unique_ptr<client_handler> handler;
  std::unique_ptr<frame_channel> channel;
  uint64_t next_id = 1;
  std::unordered_map<uint64_t, caf::response_promise> pending;
  std::unordered_set<uint64_t> syncs; // ids of pending syncs
  std::unordered_map<uint64_t, subscription> subs;
  caf::error post_error;
  caf::actor self_ref; // keeps the actor alive while it has subscribers

  ~client_state() {
    if (channel) {
      if (channel->on_io_thread()) {
        // The last reference went away on the channel's own thread.
        std::thread([ch = std::move(channel), h = std::move(handler)] {
          ch->stop();
        }).detach();
      } else {
        channel->stop();
      }
    }
  }
};

using client_actor_t = caf::stateful_actor<client_state>;

caf::error ensure_channel(client_actor_t* self) {
  auto& st = self->state;
  if (st.channel)
    return caf::none;
  auto fd = connect_to(st.address);
  if (!fd)
    return std::move(fd.error());
  st.handler = std::make_unique<client_handler>(self->address());
  st.channel = std::make_unique<frame_channel>(std::move(*fd));
  st.channel->start(st.handler.get());
  return caf::none;
}

void fail_all(client_actor_t* self, const caf::error& reason) {
  auto& st = self->state;
  for (auto& kv : st.pending)
    kv.second.deliver(reason);
  st.pending.clear();
  st.syncs.clear();
  st.subs.clear();
  st.self_ref = nullptr;
  if (st.channel) {
    st.channel->stop();
    st.channel.reset();
  }
}

caf::behavior client_behavior(client_actor_t* self, std::string address) {
  self->state.address = std::move(address);
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& st = self->state;
    for (auto i = st.subs.begin(); i != st.subs.end();) {
      if (i->second.subscriber.address() == dm.source) {
        std::string body(shared_frame_prefix, '\0');
        put_prefix(body, shared_frame::unsubscribe, 0);
        wire_output_archive ar{body};
        ar(i->second.cell, i->first);
        if (st.channel)
          (void) st.channel->send(body);
        i = st.subs.erase(i);
      } else {
        ++i;
      }
    }
    if (st.subs.empty())
      st.self_ref = nullptr;
  });
  return {
    [self](shared_request_msg& req) -> caf::result<shared_reply_msg> {
      auto& st = self->state;
      if (auto err = ensure_channel(self))
        return err;
      auto kind = static_cast<shared_frame>(req.body[0]);
      auto id = st.next_id++;
      put_prefix(req.body, kind, id);
      if (kind == shared_frame::sync)
        st.syncs.insert(id);
      if (auto err = st.channel->send(req.body))
        return err;
      auto rp = self->make_response_promise();
      st.pending.emplace(id, rp);
      return rp;
    },
    [self](shared_post_msg& msg) {
      // A post has no reply; its failure is the next sync's.
      auto& st = self->state;
      auto err = ensure_channel(self);
      if (!err)
        err = st.channel->send(msg.body, send_mode::deferred);
      if (err && !st.post_error)
        st.post_error = std::move(err);
    },
    [self](shared_subscribe_msg& msg) {
      auto& st = self->state;
      if (auto err = ensure_channel(self))
        return;
      uint64_t sub = 0;
      if (msg.subscribe) {
        sub = st.next_id++;
        self->monitor(msg.subscriber);
        st.subs.emplace(sub, subscription{msg.cell, msg.subscriber,
                                          msg.decode});
        st.self_ref = caf::actor_cast<caf::actor>(self);
      } else {
        for (auto& kv : st.subs)
          if (kv.second.cell == msg.cell
              && kv.second.subscriber == msg.subscriber)
            sub = kv.first;
        st.subs.erase(sub);
        if (st.subs.empty())
          st.self_ref = nullptr;
      }
      std::string body(shared_frame_prefix, '\0');
      put_prefix(body,
                 msg.subscribe ? shared_frame::subscribe
                               : shared_frame::unsubscribe,
                 0);
      wire_output_archive ar{body};
      ar(msg.cell, sub);
      (void) st.channel->send(body);
    },
    [self](owner_frame_msg& msg) {
      auto& st = self->state;
      reply_frame r;
      if (parse_reply(msg.body, r))
        return;
      switch (r.kind) {
        case shared_frame::reply: {
          if (r.id == 0)
            return; // a (un)subscription's confirmation
          auto i = st.pending.find(r.id);
          if (i == st.pending.end())
            return;
          if (!r.ok)
            i->second.deliver(decode_error(r.payload));
          else if (st.syncs.erase(r.id) != 0 && st.post_error)
            i->second.deliver(std::exchange(st.post_error, caf::error{}));
          else
            i->second.deliver(shared_reply_msg{std::string{r.payload}});
          st.syncs.erase(r.id);
          st.pending.erase(i);
          return;
        }
        case shared_frame::post_error:
          if (!st.post_error)
            st.post_error = decode_error(r.payload);
          return;
        case shared_frame::change: {
          auto i = st.subs.find(r.id);
          if (i == st.subs.end())
            return;
          try {
            self->send(i->second.subscriber,
                       i->second.decode(i->second.cell, r.payload));
          } catch (const std::exception&) {
            // a value that does not decode: nothing to deliver
          }
          return;
        }
        default:
          return;
      }
    },
    [self](owner_closed_msg& msg) {
      (void) msg;
      fail_all(self, owner_gone(self->state.address,
                                "closed the connection (it ended or was "
                                "stopped)"));
    },
  };
}

struct client_registry {
  std::mutex mtx;
  std::map<std::pair<caf::actor_system*, std::string>, caf::weak_actor_ptr>
    actors;
};

client_registry& clients() {
  static client_registry r;
  return r;
}

} // namespace

caf::actor client_actor(caf::actor_system& sys, const std::string& address) {
  auto& r = clients();
  std::lock_guard<std::mutex> guard{r.mtx};
  auto key = std::make_pair(&sys, address);
  auto i = r.actors.find(key);
  if (i != r.actors.end())
    if (auto strong = i->second.lock())
      return caf::actor_cast<caf::actor>(strong);
  auto a = sys.spawn(client_behavior, address);
  r.actors[key] = caf::actor_cast<caf::weak_actor_ptr>(a);
  return a;
}

} // namespace multiproc::detail

// -- clients, namespaces, transactions ----------------------------------------

namespace multiproc {

caf::error shared_client::create(const std::string& name, const char* type,
                                 bool fixed_length,
                                 const std::string& initial) const {
  detail::cell_ref ref{address_, name, {}, timeout_};
  auto body = detail::make_op(ref, type, detail::shared_op::create,
                              fixed_length);
  body += initial;
  auto reply = detail::blocking_call(ref, std::move(body));
  if (!reply)
    return std::move(reply.error());
  return caf::none;
}

caf::expected<std::vector<std::string>> shared_client::cells() const {
  detail::cell_ref ref{address_, "", {}, timeout_};
  return detail::blocking_exec{}.call<std::vector<std::string>>(
    ref, detail::make_op(ref, "", detail::shared_op::list_cells));
}

caf::error shared_client::drop(const std::string& name) const {
  detail::cell_ref ref{address_, name, {}, timeout_};
  return detail::blocking_exec{}.call<void>(
    ref, detail::make_op(ref, "", detail::shared_op::drop));
}

caf::expected<std::vector<std::string>> shared_namespace::fields() const {
  auto all = client_.cells();
  if (!all)
    return all;
  std::vector<std::string> result;
  auto prefix = name_ + ".";
  for (auto& name : *all)
    if (name.compare(0, prefix.size(), prefix) == 0)
      result.push_back(name.substr(prefix.size()));
  return result;
}

caf::expected<transaction_results> transaction::commit() {
  auto& st = *state_;
  if (st.error)
    return st.error;
  if (st.ops.empty())
    return transaction_results{{}};
  std::string body(detail::shared_frame_prefix, '\0');
  {
    detail::wire_output_archive ar{body};
    ar(st.ops);
  }
  auto reply = detail::round_trip(st.address, st.timeout,
                                  detail::shared_frame::transaction,
                                  std::move(body),
                                  "a transaction of "
                                    + std::to_string(st.ops.size())
                                    + " operations");
  if (!reply)
    return std::move(reply.error());
  auto results = detail::decode_result<std::vector<std::string>>(*reply);
  if (!results)
    return std::move(results.error());
  st.ops.clear();
  return transaction_results{std::move(*results)};
}

// -- owners -------------------------------------------------------------------

namespace {

std::string unique_address() {
  static std::atomic<uint64_t> counter{0};
  return "multiproc-state-" + std::to_string(::getpid()) + "-"
         + std::to_string(counter++) + "-"
         + std::to_string(std::chrono::steady_clock::now()
                            .time_since_epoch()
                            .count()
                          % 1000000007);
}

/// The owner process: serves until the parent's end of the pipe closes.
void shared_state_owner_main(pipe_end& parent, std::string address) {
  auto owner = detail::shared_owner::listen(address);
  if (!owner) {
    logger()->error("shared-state owner: {}", describe(owner.error()));
    std::exit(3);
  }
  auto* raw = owner->get();
  std::thread watch([&parent, raw] {
    for (;;) {
      auto msg = parent.recv_message(std::chrono::milliseconds{1000});
      if (!msg && code_of(msg.error()) != errc::timeout)
        break;
    }
    raw->stop();
  });
  (*owner)->run();
  watch.join();
}

} // namespace
} // namespace multiproc

MULTIPROC_FUNCTION("multiproc.shared_state_owner",
                   multiproc::shared_state_owner_main)

namespace multiproc {

struct shared_state::impl {
  std::unique_ptr<detail::shared_owner> owner;
  std::thread thread;
  std::optional<process> proc;
  std::optional<pipe_end> parent_end;
  std::mutex publish_mu;
  std::unique_ptr<detail::state_publisher> publisher;

  ~impl() {
    publisher.reset(); // its connections to the owner end first
    if (owner) {
      owner->stop();
      if (thread.joinable())
        thread.join();
    }
    if (proc) {
      parent_end.reset(); // the owner process sees EOF and ends
      if (!proc->join(std::chrono::milliseconds{2000}))
        (void) proc->kill();
    }
  }
};

shared_state::shared_state(shared_state&&) noexcept = default;
shared_state& shared_state::operator=(shared_state&&) noexcept = default;
shared_state::~shared_state() = default;

caf::expected<shared_state> shared_state::start(shared_state_options opts) {
  shared_state result;
  result.address_ = opts.address.empty() ? unique_address() : opts.address;
  result.timeout_ = opts.timeout;
  result.impl_ = std::make_unique<impl>();
  auto& im = *result.impl_;
  if (!opts.own_process) {
    auto owner = detail::shared_owner::listen(result.address_);
    if (!owner)
      return std::move(owner.error());
    im.owner = std::move(*owner);
    auto* raw = im.owner.get();
    im.thread = std::thread([raw] { raw->run(); });
    return result;
  }
  if (opts.process.name.empty())
    opts.process.name = "shared-state";
  auto proc = start_function("multiproc.shared_state_owner", opts.process,
                             result.address_);
  if (!proc)
    return std::move(proc.error());
  im.parent_end.emplace(proc->take_channel());
  im.proc.emplace(std::move(*proc));
  // Ready once it accepts a connection.
  auto deadline = std::chrono::steady_clock::now() + opts.start_timeout;
  for (;;) {
    auto fd = detail::connect_to(result.address_);
    if (fd)
      return result;
    if (!im.proc->is_alive()) {
      auto status = im.proc->join(std::chrono::milliseconds{1000});
      return make_error(errc::spawn_failed,
                        "the shared-state owner process ended before it "
                        "listened"
                          + (status ? " (" + status->to_string() + ")"
                                    : std::string{}));
    }
    if (std::chrono::steady_clock::now() > deadline)
      return make_error(errc::timeout,
                        "the shared-state owner process did not listen within "
                          + std::to_string(opts.start_timeout.count())
                          + " ms");
    std::this_thread::sleep_for(std::chrono::microseconds{200});
  }
}

caf::error shared_state::serve(const std::string& address) {
  auto owner = detail::shared_owner::listen(address);
  if (!owner)
    return std::move(owner.error());
  (*owner)->run();
  return caf::none;
}

caf::expected<uint16_t> shared_state::publish(network_options opts) {
  if (!impl_)
    return make_error(errc::invalid_argument,
                      "the shared-state owner at '" + address_
                        + "' is stopped: it cannot publish");
  std::lock_guard<std::mutex> guard{impl_->publish_mu};
  if (impl_->publisher)
    return make_error(errc::invalid_argument,
                      "the shared-state owner at '" + address_
                        + "' is published already, on port "
                        + std::to_string(impl_->publisher->port()));
  auto p = detail::state_publisher::start(std::move(opts), address_);
  if (!p)
    return std::move(p.error());
  impl_->publisher = std::move(*p);
  return impl_->publisher->port();
}

pid_t shared_state::owner_pid() const noexcept {
  if (impl_ && impl_->proc)
    return impl_->proc->pid();
  return ::getpid();
}

caf::error shared_state::kill_owner() {
  if (!impl_ || !impl_->proc)
    return make_error(errc::invalid_argument,
                      "the shared-state owner runs in this process");
  if (auto err = impl_->proc->kill())
    return err;
  return caf::none;
}

void shared_state::stop() {
  impl_.reset();
}

} // namespace multiproc
