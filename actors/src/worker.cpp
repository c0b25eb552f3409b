// Worker actors in child processes: the parent-side proxy and bridge, the
// child-side entry, and the blocking request path. docs/actors.md explains
// the design; docs/wire_format.md the frames.

#include "multiproc/worker.hpp"

#include "multiproc/shm_channel.hpp"

#include "multiproc/detail/result_slot.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <typeinfo>
#include <unordered_map>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>

#include <cxxabi.h>
#endif
#include <unistd.h>

#include <caf/actor_cast.hpp>
#include <caf/actor_config.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/atom.hpp>
#include <caf/exit_reason.hpp>
#include <caf/mailbox_element.hpp>
#include <caf/make_actor.hpp>
#include <caf/monitorable_actor.hpp>
#include <caf/send.hpp>
#include <caf/system_messages.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include "direct_delivery.hpp"
#include "remote.hpp"
#include "inline_unit.hpp"
#include "multiproc/envelope.hpp"
#include "multiproc/faults.hpp"
#include "multiproc/log.hpp"

namespace multiproc {

// -- registry -----------------------------------------------------------------

namespace {

/// A registered worker: how to create its actor and, for a task worker,
/// how to run its chunk items without the actor.
struct worker_registration {
  worker_factory factory;
  std::optional<detail::task_function> fast;
};

std::map<std::string, worker_registration>& worker_registry() {
  static std::map<std::string, worker_registration> instance;
  return instance;
}

std::string& this_worker_name_storage() {
  static std::string name;
  return name;
}

constexpr const char* worker_entry_name = "multiproc.worker";

/// What the parent tells the child at start (the entry's args bytes).
struct worker_spec {
  std::string entry;
  std::string name;
  std::vector<std::string> extra_types;
  // The child's end of the channel (worker_options::channel, busy_poll).
  uint64_t max_frame_size = 0;
  uint64_t send_high_watermark = 0;
  int64_t busy_poll_us = 0;
  // worker_transport::shared_memory: fds[0] carries the parent's frames,
  // fds[1] the child's.
  uint8_t shared_memory = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(entry, name, extra_types, max_frame_size, send_high_watermark,
       busy_poll_us, shared_memory);
  }
};

std::string registered_workers() {
  std::string result;
  for (auto& kvp : worker_registry()) {
    if (!result.empty())
      result += ", ";
    result += kvp.first;
  }
  return "[" + result + "]";
}

} // namespace

bool register_worker(const char* name, worker_factory factory) {
  auto& reg = worker_registry();
  if (!reg.emplace(name, worker_registration{std::move(factory), std::nullopt})
         .second) {
    logger()->critical("worker '{}' is registered twice", name);
    std::abort();
  }
  return true;
}

bool register_worker(const char* name, worker_factory factory,
                     detail::task_function fast) {
  auto& reg = worker_registry();
  if (!reg.emplace(name, worker_registration{std::move(factory), fast})
         .second) {
    logger()->critical("worker '{}' is registered twice", name);
    std::abort();
  }
  return true;
}

bool has_worker(const std::string& name) {
  return worker_registry().count(name) != 0;
}

std::vector<std::string> worker_names() {
  std::vector<std::string> names;
  for (auto& kvp : worker_registry())
    names.push_back(kvp.first);
  std::sort(names.begin(), names.end());
  return names;
}

const std::string& this_worker_name() {
  return this_worker_name_storage();
}

namespace detail {

type_id registered_id(const std::type_info& type) {
  auto* entry = message_registry::instance().find(type);
  return entry ? entry->id : 0;
}

} // namespace detail

namespace {

// -- helpers ------------------------------------------------------------------

caf::error unregistered(const char* what) {
  return make_error(errc::unknown_type,
                    std::string{"type "} + what
                      + " is not registered; add MULTIPROC_MESSAGE(T, "
                        "\"name\")");
}

/// Encodes an envelope and a payload into the thread's reusable buffer.
std::string& frame_buffer() {
  thread_local std::string buf;
  buf.clear();
  buf.resize(wire::envelope_size);
  return buf;
}

void finish_envelope(std::string& buf, wire::kind what, type_id type,
                     uint64_t rid) {
  wire::envelope env;
  env.what = what;
  env.type = type;
  env.request_id = rid;
  wire::write_envelope(env, buf.data());
}

/// Encodes a CAF message as a frame of kind `what`; on failure, `buf` is
/// left unusable and the error returned.
caf::error encode_frame(std::string& buf, wire::kind what, uint64_t rid,
                        const caf::message& content) {
  type_id type = 0;
  if (auto err = encode_message(content, type, buf))
    return err;
  finish_envelope(buf, what, type, rid);
  return caf::none;
}

std::string encode_error_frame(uint64_t rid, const caf::error& err) {
  std::string buf(wire::envelope_size, '\0');
  buf += encode_error(err);
  finish_envelope(buf, wire::kind::error, 0, rid);
  return buf;
}

// -- handshake ----------------------------------------------------------------

/// Sends this process's hello (its registered message types) on `ch`.
caf::error send_hello(frame_link& ch, const std::string& name) {
  std::string frame(wire::envelope_size, '\0');
  if (auto err = encode(wire::make_hello(name), frame))
    return err;
  finish_envelope(frame, wire::kind::hello, 0, 0);
  return ch.send(frame);
}

/// Receives the peer's hello, which must be its first frame, and compares
/// it with ours: fingerprint_mismatch names the types only one side has.
caf::error receive_hello(frame_link& ch, std::chrono::milliseconds timeout,
                         const std::string& my_name,
                         const std::string& peer_name) {
  auto frame = ch.receive(timeout);
  if (!frame)
    return std::move(frame.error());
  std::string_view payload;
  auto env = wire::read_envelope(*frame, payload);
  if (!env)
    return std::move(env.error());
  if (env->what != wire::kind::hello)
    return make_error(errc::protocol_error,
                      peer_name + " sent a " + wire::to_string(env->what)
                        + " frame before its hello");
  auto theirs = decode<wire::hello>(payload);
  if (!theirs)
    return std::move(theirs.error());
  theirs->name = peer_name;
  return wire::check_hello(wire::make_hello(my_name), *theirs);
}

/// A cheap clock for "a while has passed" checks: TSC cycles on x86,
/// nanoseconds elsewhere.
uint64_t ticks() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  return __rdtsc();
#else
  return static_cast<uint64_t>(
    std::chrono::steady_clock::now().time_since_epoch().count());
#endif
}

// -- parent side --------------------------------------------------------------

struct pending_request {
  caf::strong_actor_ptr target; // receives the response (actor requests)
  caf::message_id mid;
  std::shared_ptr<detail::result_slot> slot; // or: a blocked caller
  detail::reply_sink* sink = nullptr; // or: a sink (the pool), with its tag
  uint64_t tag = 0;
  uint32_t item = 0; // the position in its chunk
};

/// Requests sent together (send_encoded_requests): one entry for all of
/// them. Their request ids are batch_flag | seq << batch_shift | index.
/// A chunk's items take one id each, in order.
struct pending_batch {
  detail::reply_sink* sink = nullptr;
  std::vector<uint64_t> tags;
  std::vector<uint32_t> items; // position in its chunk
  std::vector<char> open;      // 1 until the request's outcome came
  size_t left = 0;
};

constexpr uint64_t batch_flag = uint64_t{1} << 58;
constexpr unsigned batch_shift = 16;
constexpr size_t batch_capacity = size_t{1} << batch_shift;

/// Chunk items (wire::kind::chunk_request) per frame the child accepts.
constexpr size_t chunk_capacity = size_t{1} << 24;
static_assert(detail::max_chunk_items < batch_capacity);

class worker_proxy;

/// The child process a worker runs in.
class child_peer : public detail::worker_peer {
public:
  explicit child_peer(process proc) : proc_(std::move(proc)) {
  }
  int exit_fd() const noexcept override {
    return proc_.exit_fd();
  }
  caf::error signal(int sig) override {
    return proc_.signal(sig);
  }
  caf::error kill() override {
    return proc_.kill();
  }
  caf::expected<exit_status> join(std::chrono::milliseconds grace) override {
    return proc_.join(grace);
  }

private:
  process proc_;
};

/// Owns the child process and its channel; the I/O thread delivers replies.
class worker_bridge : public frame_handler,
                      public std::enable_shared_from_this<worker_bridge> {
public:
  worker_bridge(caf::actor_system& sys,
                std::unique_ptr<detail::worker_peer> peer,
                std::unique_ptr<frame_link> ch, worker_options opts,
                worker_info info)
    : sys_(sys),
      peer_(std::move(peer)),
      ch_(std::move(ch)),
      opts_(std::move(opts)),
      info_(std::move(info)),
      unit_(&sys) {
  }

  const worker_info& info() const noexcept {
    return info_;
  }

  std::string who() const {
    return "worker " + info_.name + "[" + std::to_string(info_.pid) + "]"
           + (info_.node.empty() ? "" : " on " + info_.node);
  }

  void start(caf::weak_actor_ptr proxy) {
    proxy_ = std::move(proxy);
    keep_alive_ = shared_from_this();
    ch_->start(this, peer_->exit_fd());
  }

  // -- sending ----------------------------------------------------------------

  /// Forwards a request from an actor; the reply goes to `target`.
  void forward_request(caf::strong_actor_ptr target, caf::message_id mid,
                       const caf::message& content,
                       caf::execution_unit* eu) {
    auto rid = next_id();
    caf::error dead;
    {
      std::lock_guard<std::mutex> guard{mu_};
      if (death_error_)
        dead = death_error_;
      else
        pending_.emplace(rid, pending_request{target, mid, nullptr});
    }
    if (dead) {
      reply_error(target, mid, dead, eu);
      return;
    }
    auto& buf = frame_buffer();
    auto err = encode_frame(buf, wire::kind::request, rid, content);
    if (!err)
      err = ch_->send(buf, send_mode::immediate);
    if (err && take(rid))
      reply_error(target, mid, err, eu);
  }

  caf::error forward_async(const caf::message& content) {
    if (auto err = death_error())
      return err;
    auto& buf = frame_buffer();
    if (auto err = encode_frame(buf, wire::kind::async, 0, content))
      return err;
    return ch_->send(buf, send_mode::deferred);
  }

  caf::expected<caf::message> sync_request(std::chrono::milliseconds timeout,
                                           type_id type,
                                           detail::encode_fn encode,
                                           const void* value) {
    if (ch_->on_io_thread())
      return make_error(errc::invalid_argument,
                        "a blocking request to " + who()
                          + " from its own I/O thread would deadlock; use "
                            "self->request(...).then(...) in handlers");
    if (auto err = faults::check(faults::point::parent_encode_task))
      return err;
    auto& buf = frame_buffer();
    detail::gather_list gather;
    try {
      encode(value, buf, &gather);
    } catch (const std::exception& e) {
      auto* entry = message_registry::instance().find(type);
      return make_error(errc::encode_failed,
                        "cannot encode a value of type '"
                          + (entry ? entry->name : std::string{"?"})
                          + "': " + e.what());
    }
    auto rid = next_id();
    finish_envelope(buf, wire::kind::request, type, rid);
    auto slot = std::make_shared<detail::result_slot>();
    {
      std::lock_guard<std::mutex> guard{mu_};
      if (death_error_)
        return death_error_;
      pending_.emplace(rid, pending_request{nullptr, {}, slot});
    }
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string_view parts[2 * detail::gather_list::max_refs + 1];
    auto num_parts = gather.parts(buf, parts);
    // A peer that does not read must not hold the caller past its timeout.
    if (auto err = ch_->send_until(parts, num_parts, send_mode::immediate,
                                   deadline)) {
      if (take(rid)) {
        if (err == errc::timeout)
          return make_error(errc::timeout,
                            "request to " + who() + " timed out after "
                              + std::to_string(timeout.count()) + " ms ("
                              + describe(err) + ")");
        return err;
      }
    }
    if (!slot->wait_until(deadline)) {
      if (take(rid))
        return make_error(errc::timeout, "request to " + who()
                                           + " timed out after "
                                           + std::to_string(timeout.count())
                                           + " ms");
      slot->wait_until(std::chrono::steady_clock::time_point::max());
    }
    if (slot->err)
      return std::move(slot->err);
    return std::move(slot->reply);
  }

  caf::error send_encoded_request(type_id type, std::string_view payload,
                                  detail::reply_sink* sink, uint64_t tag,
                                  bool immediate) {
    auto rid = next_id();
    {
      std::lock_guard<std::mutex> guard{mu_};
      if (death_error_)
        return death_error_;
      pending_request entry;
      entry.sink = sink;
      entry.tag = tag;
      pending_.emplace(rid, std::move(entry));
    }
    char env[wire::envelope_size];
    wire::envelope e;
    e.what = wire::kind::request;
    e.type = type;
    e.request_id = rid;
    wire::write_envelope(e, env);
    std::string_view parts[2] = {{env, sizeof(env)}, payload};
    auto err = ch_->send(parts, 2, immediate ? send_mode::immediate
                                             : send_mode::deferred);
    if (err && !take(rid))
      return caf::none; // the death path has answered the sink already
    return err;
  }

  void send_encoded_requests(
    const detail::encoded_request* reqs, size_t n, detail::reply_sink* sink,
    bool immediate, const std::function<void(size_t, caf::error)>& failed) {
    auto mode = immediate ? send_mode::immediate : send_mode::deferred;
    thread_local std::string buf;
    std::vector<size_t> large;
    size_t max_body = ch_->options().max_frame_size;
    // Requests go in batches of up to batch_capacity ids (a chunk takes one
    // per item): one pending entry and one write per batch.
    size_t i = 0;
    while (i < n) {
      auto key = batch_flag
                 | ((next_batch_.fetch_add(1, std::memory_order_relaxed)
                     << batch_shift)
                    & caf::message_id::request_id_mask & ~batch_flag);
      pending_batch batch;
      batch.sink = sink;
      std::vector<size_t> sent; // request of each id
      buf.clear();
      for (; i < n; ++i) {
        auto& r = reqs[i];
        size_t ids = std::max<size_t>(1, r.chunk_items);
        if (sent.size() + ids > batch_capacity)
          break;
        if (r.chunk_items == 0
            && r.payload.size() >= detail::max_batched_payload) {
          large.push_back(i);
          continue;
        }
        size_t body = wire::envelope_size + r.payload.size();
        if (body > max_body) {
          failed(i, make_error(errc::frame_too_large,
                               std::string{r.chunk_items != 0 ? "a chunk"
                                                              : "a request"}
                                 + " of " + std::to_string(body)
                                 + " bytes exceeds the frame limit"));
          continue;
        }
        size_t j = sent.size();
        char head[frame_header_size + wire::envelope_size];
        write_frame_header(body, head);
        wire::envelope e;
        e.what = r.chunk_items != 0 ? wire::kind::chunk_request
                                    : wire::kind::request;
        e.type = r.chunk_items != 0 ? 0 : r.type;
        e.request_id = key | j;
        wire::write_envelope(e, head + frame_header_size);
        buf.append(head, sizeof(head));
        buf.append(r.payload.data(), r.payload.size());
        for (uint32_t k = 0; k < ids; ++k) {
          sent.push_back(i);
          batch.tags.push_back(r.tag);
          batch.items.push_back(k);
          batch.open.push_back(1);
        }
        batch.left += ids;
      }
      if (batch.left == 0)
        continue;
      caf::error dead;
      {
        std::lock_guard<std::mutex> guard{mu_};
        if (death_error_)
          dead = death_error_;
        else
          batches_.emplace(key, std::move(batch));
      }
      auto err = dead ? dead : ch_->send_framed(buf, mode);
      if (!err)
        continue;
      // Not sent: fail what the death path has not answered already, once
      // per request.
      std::vector<char> open;
      {
        std::lock_guard<std::mutex> guard{mu_};
        if (dead) {
          open = std::move(batch.open);
        } else if (auto b = batches_.find(key); b != batches_.end()) {
          open = std::move(b->second.open);
          batches_.erase(b);
        }
      }
      size_t last = n;
      for (size_t j = 0; j < open.size(); ++j)
        if (open[j] && sent[j] != last)
          failed(last = sent[j], err);
    }
    for (auto k : large)
      if (auto err = send_encoded_request(reqs[k].type, reqs[k].payload, sink,
                                          reqs[k].tag, immediate))
        failed(k, std::move(err));
  }

  caf::error signal(int sig) {
    return peer_->signal(sig);
  }

  caf::error async_send(type_id type, detail::encode_fn encode,
                        const void* value) {
    if (auto err = death_error())
      return err;
    if (auto err = faults::check(faults::point::parent_encode_task))
      return err;
    auto& buf = frame_buffer();
    detail::gather_list gather;
    try {
      encode(value, buf, &gather);
    } catch (const std::exception& e) {
      return make_error(errc::encode_failed,
                        std::string{"cannot encode a message: "} + e.what());
    }
    finish_envelope(buf, wire::kind::async, type, 0);
    std::string_view parts[2 * detail::gather_list::max_refs + 1];
    auto num_parts = gather.parts(buf, parts);
    return ch_->send(parts, num_parts, send_mode::deferred);
  }

  // -- stopping ---------------------------------------------------------------

  /// Asks the child to finish; returns at once.
  void begin_shutdown() {
    bool expected = false;
    if (!shutdown_requested_.compare_exchange_strong(expected, true))
      return;
    std::string buf(wire::envelope_size, '\0');
    finish_envelope(buf, wire::kind::shutdown, 0, 0);
    // A child that does not read gets no longer than a graceful stop takes.
    if (ch_->send_until(buf, send_mode::deferred,
                        std::chrono::steady_clock::now()
                          + opts_.shutdown_timeout))
      kill_child();
  }

  void kill_child() {
    [[maybe_unused]] auto err = peer_->kill();
  }

  /// Waits until the I/O thread has seen the end of the child.
  caf::expected<exit_status> wait_done(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lk{mu_};
    if (!done_cv_.wait_for(lk, timeout, [this] { return done_; }))
      return make_error(errc::timeout,
                        who() + " did not end within "
                          + std::to_string(timeout.count()) + " ms");
    if (status_)
      return *status_;
    return death_error_;
  }

  caf::expected<exit_status> stop() {
    begin_shutdown();
    auto result = wait_done(opts_.shutdown_timeout);
    if (result)
      return result;
    kill_child();
    return wait_done(std::chrono::milliseconds{5000});
  }

  caf::expected<exit_status> kill() {
    kill_child();
    return wait_done(std::chrono::milliseconds{5000});
  }

  // -- frame_handler ----------------------------------------------------------

  void on_frame(std::string_view body) override {
    std::string_view payload;
    auto env = wire::read_envelope(body, payload);
    if (!env) {
      ch_->fail(env.error());
      return;
    }
    switch (env->what) {
      case wire::kind::response:
      case wire::kind::error: {
        auto entry = take(env->request_id);
        if (!entry)
          return; // the caller gave up (timeout); drop the late reply
        if (env->what == wire::kind::response) {
          deliver_encoded(*entry, env->type, payload);
          return;
        }
        caf::error err;
        if (!decode_error(payload, err)) {
          deliver(*entry, {}, err);
          ch_->fail(std::move(err));
          return;
        }
        deliver(*entry, {}, std::move(err));
        return;
      }
      case wire::kind::chunk_response: {
        chunk_items_.clear();
        if (auto err = wire::read_chunk(env->what, payload, chunk_items_)) {
          ch_->fail(std::move(err));
          return;
        }
        on_chunk_response(env->request_id);
        return;
      }
      case wire::kind::async: {
        // A worker's own messages to its parent have no addressee yet.
        auto msg = decode_message(env->type, payload);
        if (!msg)
          ch_->fail(std::move(msg.error()));
        return;
      }
      default:
        ch_->fail(make_error(errc::protocol_error,
                             who() + " sent an unexpected "
                               + wire::to_string(env->what) + " frame"));
    }
  }

  void on_batch_end() override {
    if (batch_sink_ != nullptr) {
      auto* sink = batch_sink_;
      batch_sink_ = nullptr;
      sink->on_batch_end();
    }
    unit_.run_jobs();
  }

  void on_closed(const caf::error& reason) override {
    // Find out how the child ended.
    bool clean_eof = reason == errc::peer_closed || reason == errc::closed;
    auto grace = clean_eof ? opts_.shutdown_timeout
                           : std::chrono::milliseconds{0};
    auto st = peer_->join(grace);
    if (!st && st.error() != errc::connection_lost) {
      kill_child();
      st = peer_->join(std::chrono::milliseconds{5000});
    }
    if (batch_sink_ != nullptr) {
      batch_sink_->on_batch_end();
      batch_sink_ = nullptr;
    }
    if (opts_.on_exit)
      opts_.on_exit(st);
    caf::error death;
    std::string how = st ? st->to_string() : describe(st.error());
    if (clean_eof)
      death = make_error(errc::worker_died, who() + " " + how);
    else if (reason == errc::connection_lost)
      death = make_error(errc::worker_died, who() + " is gone: "
                                              + describe(reason));
    else
      death = make_error(errc::worker_died, who() + " broke the channel ("
                                              + describe(reason)
                                              + ") and was stopped; it "
                                              + how);
    std::unordered_map<uint64_t, pending_request> orphans;
    std::unordered_map<uint64_t, pending_batch> orphan_batches;
    {
      std::lock_guard<std::mutex> guard{mu_};
      death_error_ = death;
      dead_.store(true, std::memory_order_release);
      orphans.swap(pending_);
      orphan_batches.swap(batches_);
    }
    for (auto& kvp : orphans)
      deliver(kvp.second, {}, death);
    for (auto& kvp : orphan_batches) {
      auto& b = kvp.second;
      for (size_t j = 0; j < b.open.size(); ++j) {
        if (!b.open[j])
          continue;
        pending_request entry;
        entry.sink = b.sink;
        entry.tag = b.tags[j];
        entry.item = b.items[j];
        deliver(entry, {}, death);
      }
    }
    if (batch_sink_ != nullptr) {
      batch_sink_->on_batch_end();
      batch_sink_ = nullptr;
    }
    unit_.run_jobs();
    auto proxy = caf::actor_cast<caf::strong_actor_ptr>(proxy_);
    if (proxy) {
      bool normal = shutdown_requested_ && st && st->success();
      static_cast<caf::monitorable_actor*>(proxy->get())->cleanup(normal ? caf::error{caf::exit_reason::normal}
                                   : death,
                            nullptr);
    }
    {
      std::lock_guard<std::mutex> guard{mu_};
      if (st)
        status_ = *st;
      done_ = true;
    }
    done_cv_.notify_all();
    auto self = std::move(keep_alive_); // may destroy *this on return
  }

private:
  uint64_t next_id() noexcept {
    return next_id_.fetch_add(1, std::memory_order_relaxed)
           & caf::message_id::request_id_mask;
  }

  caf::error death_error() {
    if (!dead_.load(std::memory_order_acquire))
      return caf::none;
    std::lock_guard<std::mutex> guard{mu_};
    return death_error_;
  }

  std::optional<pending_request> take(uint64_t rid) {
    std::lock_guard<std::mutex> guard{mu_};
    return take_locked(rid);
  }

  std::optional<pending_request> take_locked(uint64_t rid) {
    if (rid & batch_flag) {
      auto b = batches_.find(rid & ~(batch_capacity - 1));
      size_t j = rid & (batch_capacity - 1);
      if (b == batches_.end() || j >= b->second.open.size()
          || !b->second.open[j])
        return std::nullopt;
      pending_request result;
      result.sink = b->second.sink;
      result.tag = b->second.tags[j];
      result.item = b->second.items[j];
      b->second.open[j] = 0;
      if (--b->second.left == 0)
        batches_.erase(b);
      return result;
    }
    auto i = pending_.find(rid);
    if (i == pending_.end())
      return std::nullopt;
    auto result = std::move(i->second);
    pending_.erase(i);
    return result;
  }

  void reply_error(const caf::strong_actor_ptr& target, caf::message_id mid,
                   const caf::error& err, caf::execution_unit* eu) {
    if (target && mid.is_request())
      target->enqueue(caf::make_mailbox_element(
                        caf::actor_cast<caf::strong_actor_ptr>(proxy_),
                        mid.response_id(), {}, caf::make_message(err)),
                      eu);
  }

  /// Delivers a reply payload: as bytes to a sink that takes them, else
  /// decoded. A reply that fails to decode fails its request only: the
  /// frame boundary is intact, so the channel goes on.
  /// The outcomes in chunk_items_, of a chunk sent with request id `rid`.
  void on_chunk_response(uint64_t rid) {
    // The frame answers items of one chunk, in one batch: one lock and one
    // lookup for all of them.
    uint64_t first = rid & (batch_capacity - 1);
    uint64_t key = rid - first;
    detail::reply_sink* sink = nullptr;
    uint64_t tag = 0;
    chunk_replies_.clear();
    chunk_failed_.clear();
    {
      std::lock_guard<std::mutex> guard{mu_};
      auto b = (rid & batch_flag) != 0 ? batches_.find(key) : batches_.end();
      if (b == batches_.end())
        return; // answered already (the death path, a caller that gave up)
      auto& batch = b->second;
      sink = batch.sink;
      for (size_t k = 0; k < chunk_items_.size(); ++k) {
        auto& item = chunk_items_[k];
        size_t j = first + item.index;
        // An index past its chunk would name another request: the ids of a
        // chunk's items are consecutive, and the item at id j must be
        // item.index.
        if (j >= batch.open.size() || !batch.open[j]
            || batch.items[j] != item.index)
          continue;
        batch.open[j] = 0;
        --batch.left;
        tag = batch.tags[j];
        if (item.failed)
          chunk_failed_.push_back(k);
        else
          chunk_replies_.push_back({item.index, item.type, item.payload});
      }
      if (batch.left == 0)
        batches_.erase(b);
    }
    if (chunk_replies_.empty() && chunk_failed_.empty())
      return;
    switch_batch_sink(sink);
    pending_request entry;
    entry.sink = sink;
    entry.tag = tag;
    if (!chunk_replies_.empty()
        && !sink->on_chunk_reply(tag, chunk_replies_.data(),
                                 chunk_replies_.size())) {
      for (auto& r : chunk_replies_) {
        entry.item = r.item;
        deliver_encoded(entry, r.type, r.bytes);
      }
    }
    for (auto k : chunk_failed_) {
      auto& item = chunk_items_[k];
      entry.item = item.index;
      caf::error err;
      bool ok = decode_error(item.payload, err);
      deliver(entry, {}, err);
      if (!ok)
        ch_->fail(std::move(err));
    }
  }

  void deliver_encoded(pending_request& entry, type_id type,
                       std::string_view payload) {
    if (entry.sink) {
      switch_batch_sink(entry.sink);
      if (entry.sink->on_reply_bytes(entry.tag, entry.item, type, payload))
        return;
    }
    if (auto err = faults::check(faults::point::parent_decode_result)) {
      deliver(entry, {}, std::move(err));
      return;
    }
    auto msg = decode_message(type, payload);
    if (!msg)
      deliver(entry, {}, std::move(msg.error()));
    else
      deliver(entry, std::move(*msg), {});
  }

  /// Batch ends go to one sink (a pool uses one per worker); another sink
  /// in the same batch gets its batch end now.
  void switch_batch_sink(detail::reply_sink* sink) {
    if (batch_sink_ != nullptr && batch_sink_ != sink)
      batch_sink_->on_batch_end();
    batch_sink_ = sink;
  }

  void deliver(pending_request& entry, caf::message reply, caf::error err) {
    if (entry.sink) {
      switch_batch_sink(entry.sink);
      entry.sink->on_reply(entry.tag, entry.item, std::move(reply),
                           std::move(err));
      return;
    }
    if (entry.slot) {
      entry.slot->fulfill(std::move(reply), std::move(err));
      return;
    }
    if (!entry.target)
      return;
    if (err)
      reply = caf::make_message(std::move(err));
    entry.target->enqueue(caf::make_mailbox_element(
                            caf::actor_cast<caf::strong_actor_ptr>(proxy_),
                            entry.mid.response_id(), {}, std::move(reply)),
                          &unit_);
  }

  caf::actor_system& sys_;
  std::unique_ptr<detail::worker_peer> peer_;
  std::unique_ptr<frame_link> ch_;
  worker_options opts_;
  worker_info info_;
  detail::inline_unit unit_;
  caf::weak_actor_ptr proxy_;
  std::shared_ptr<worker_bridge> keep_alive_;
  detail::reply_sink* batch_sink_ = nullptr; // I/O thread only
  std::vector<wire::chunk_item> chunk_items_;  // I/O thread only
  std::vector<detail::chunk_reply_item> chunk_replies_; // I/O thread only
  std::vector<size_t> chunk_failed_;                     // I/O thread only
  std::atomic<uint64_t> next_id_{1};
  std::atomic<bool> shutdown_requested_{false};
  std::atomic<bool> dead_{false}; // death_error_ is set
  std::mutex mu_;
  std::condition_variable done_cv_;
  std::unordered_map<uint64_t, pending_request> pending_;
  std::unordered_map<uint64_t, pending_batch> batches_;
  std::atomic<uint64_t> next_batch_{1};
  caf::error death_error_;
  std::optional<exit_status> status_;
  bool done_ = false;
};

/// The parent's handle to a worker: an actor whose mailbox is the channel.
class worker_proxy : public caf::monitorable_actor {
public:
  worker_proxy(caf::actor_config& cfg, std::shared_ptr<worker_bridge> bridge)
    : caf::monitorable_actor(cfg), bridge_(std::move(bridge)) {
  }

  const char* name() const override {
    return "multiproc_worker";
  }

  void enqueue(caf::mailbox_element_ptr what,
               caf::execution_unit* eu) override {
    auto content = what->move_content_to_message();
    if (content.match_elements<caf::exit_msg>()) {
      auto& reason = content.get_as<caf::exit_msg>(0).reason;
      if (reason == caf::exit_reason::kill)
        bridge_->kill_child();
      else
        bridge_->begin_shutdown();
      return;
    }
    if (what->mid.is_response())
      return; // the worker makes no requests to parent actors
    if (what->mid.is_request()) {
      auto target = what->stages.empty() ? what->sender : what->stages.back();
      bridge_->forward_request(std::move(target), what->mid, content, eu);
      return;
    }
    [[maybe_unused]] auto err = bridge_->forward_async(content);
  }

  void on_destroy() override {
    bridge_->begin_shutdown();
    caf::monitorable_actor::on_destroy();
  }

  const std::shared_ptr<worker_bridge>& bridge() const noexcept {
    return bridge_;
  }

private:
  std::shared_ptr<worker_bridge> bridge_;
};

worker_bridge* bridge_of(const caf::actor& worker) {
  auto* ptr = caf::actor_cast<caf::abstract_actor*>(worker);
  auto* proxy = dynamic_cast<worker_proxy*>(ptr);
  return proxy ? proxy->bridge().get() : nullptr;
}

caf::error not_a_worker() {
  return make_error(errc::invalid_argument,
                    "the actor is not a multiproc worker handle");
}

} // namespace

caf::expected<caf::actor> spawn_worker(caf::actor_system& sys,
                                       const std::string& entry,
                                       worker_options opts) {
  if (!has_worker(entry))
    return make_error(errc::unknown_entry,
                      "no worker is registered as '" + entry
                        + "'; registered workers: " + registered_workers());
  if (opts.name.empty())
    opts.name = entry;
  worker_spec spec{entry,
                   opts.name,
                   opts.extra_child_types,
                   opts.channel.max_frame_size,
                   opts.channel.send_high_watermark,
                   opts.busy_poll.count(),
                   uint8_t{opts.transport == worker_transport::shared_memory}};
  std::string args;
  if (auto err = encode(spec, args))
    return err;
  process_options popts;
  popts.method = opts.method;
  popts.name = opts.name;
  popts.sink = opts.sink;
  std::optional<std::pair<shm_queue, shm_queue>> queues;
  if (spec.shared_memory) {
    auto qs = shm_channel::make_queues();
    if (!qs)
      return std::move(qs.error());
    queues = std::move(*qs);
    popts.fds = {queues->first.fd(), queues->second.fd()};
  }
  auto proc = start_process(worker_entry_name, std::move(args), popts);
  if (!proc)
    return std::move(proc.error());
  worker_info info;
  info.name = opts.name;
  info.pid = proc->pid();
  info.method = proc->method();
  std::unique_ptr<frame_link> ch;
  if (queues)
    ch = std::make_unique<shm_channel>(std::move(queues->second),
                                       std::move(queues->first), opts.channel);
  else
    ch = std::make_unique<frame_channel>(proc->take_channel(), opts.channel);
  return detail::adopt_worker(
    sys, std::make_unique<child_peer>(std::move(*proc)), std::move(ch),
    std::move(opts), std::move(info));
}

namespace detail {

caf::expected<caf::actor> adopt_worker(caf::actor_system& sys,
                                       std::unique_ptr<worker_peer> peer,
                                       std::unique_ptr<frame_link> ch,
                                       worker_options opts, worker_info info) {
  auto who = "worker " + info.name + "[" + std::to_string(info.pid) + "]"
             + (info.node.empty() ? "" : " on " + info.node);
  // Handshake: both ends send their hello first, then check the other's.
  auto fail = [&](caf::error err) -> caf::expected<caf::actor> {
    // After a mismatch the worker sees it too and exits (code 65) by
    // itself: a remote one can tell its own operator why.
    if (err == errc::fingerprint_mismatch
        && peer->join(std::chrono::milliseconds{2000}))
      return err;
    [[maybe_unused]] auto kerr = peer->kill();
    [[maybe_unused]] auto st = peer->join(std::chrono::milliseconds{5000});
    return err;
  };
  if (auto err = send_hello(*ch, "parent"))
    return fail(make_error(errc::spawn_failed,
                           who + " could not be greeted: " + describe(err)));
  if (auto err = receive_hello(*ch, opts.start_timeout, "the parent", who)) {
    if (err == errc::timeout)
      return fail(make_error(errc::spawn_failed,
                             who + " was not ready within "
                               + std::to_string(opts.start_timeout.count())
                               + " ms"));
    if (err == errc::peer_closed || err == errc::truncated_frame) {
      auto st = peer->join(std::chrono::milliseconds{5000});
      return make_error(errc::spawn_failed,
                        who + " ended before it was ready: "
                          + (st ? st->to_string() : describe(err)));
    }
    return fail(err);
  }
  auto bridge = std::make_shared<worker_bridge>(
    sys, std::move(peer), std::move(ch), std::move(opts), std::move(info));
  caf::actor_config cfg;
  auto handle = caf::make_actor<worker_proxy, caf::actor>(
    sys.next_actor_id(), sys.node(), &sys, cfg, bridge);
  bridge->start(caf::actor_cast<caf::weak_actor_ptr>(handle));
  return handle;
}

} // namespace detail

std::optional<worker_info> info_of(const caf::actor& worker) {
  if (auto* b = bridge_of(worker))
    return b->info();
  return std::nullopt;
}

caf::expected<exit_status> stop_worker(const caf::actor& worker) {
  if (auto* b = bridge_of(worker))
    return b->stop();
  return not_a_worker();
}

caf::expected<exit_status> kill_worker(const caf::actor& worker) {
  if (auto* b = bridge_of(worker))
    return b->kill();
  return not_a_worker();
}

namespace detail {

caf::expected<caf::message> sync_request(const caf::actor& worker,
                                         std::chrono::milliseconds timeout,
                                         type_id type, encode_fn encode,
                                         const void* value) {
  if (type == 0)
    return unregistered("of the request");
  if (auto* b = bridge_of(worker))
    return b->sync_request(timeout, type, encode, value);
  return not_a_worker();
}

caf::error send_encoded_request(const caf::actor& worker, type_id type,
                                std::string_view payload, reply_sink* sink,
                                uint64_t tag, bool immediate) {
  if (auto* b = bridge_of(worker))
    return b->send_encoded_request(type, payload, sink, tag, immediate);
  return not_a_worker();
}

void send_encoded_requests(
  const caf::actor& worker, const encoded_request* reqs, size_t n,
  reply_sink* sink, bool immediate,
  const std::function<void(size_t, caf::error)>& failed) {
  if (auto* b = bridge_of(worker)) {
    b->send_encoded_requests(reqs, n, sink, immediate, failed);
    return;
  }
  auto err = not_a_worker();
  for (size_t i = 0; i < n; ++i)
    failed(i, err);
}

caf::error signal_worker(const caf::actor& worker, int sig) {
  if (auto* b = bridge_of(worker))
    return b->signal(sig);
  return not_a_worker();
}

caf::error async_send(const caf::actor& worker, type_id type, encode_fn encode,
                      const void* value) {
  if (type == 0)
    return unregistered("of the message");
  if (auto* b = bridge_of(worker))
    return b->async_send(type, encode, value);
  return not_a_worker();
}

} // namespace detail

// -- child side ---------------------------------------------------------------

namespace {

class child_bridge;

/// The message ids of chunk items in the child: chunk_item_flag |
/// slot << chunk_index_bits | index (within CAF's 60-bit request ids).
constexpr uint64_t chunk_item_flag = uint64_t{1} << 59;
constexpr unsigned chunk_index_bits = 24;
constexpr uint64_t chunk_slot_mask = (uint64_t{1} << 35) - 1;
static_assert(chunk_capacity == size_t{1} << chunk_index_bits);

/// Gathers the outcomes of chunk items (implemented by child_bridge).
class chunk_outcomes {
public:
  virtual ~chunk_outcomes() = default;
  /// The outcome (a reply or a caf::error) of the item with this request id.
  virtual void add(uint64_t item_rid, const caf::message& content) = 0;
};

/// The worker's view of its parent: replies sent to it travel back over the
/// channel.
class parent_proxy : public caf::monitorable_actor {
public:
  parent_proxy(caf::actor_config& cfg, frame_link* ch,
               chunk_outcomes* chunks)
    : caf::monitorable_actor(cfg), ch_(ch), chunks_(chunks) {
  }

  const char* name() const override {
    return "multiproc_parent";
  }

  void enqueue(caf::mailbox_element_ptr what, caf::execution_unit*) override {
    auto mode = ch_->on_io_thread() ? send_mode::deferred
                                    : send_mode::immediate;
    auto content = what->move_content_to_message();
    if (what->mid.is_response()) {
      auto rid = what->mid.request_id().integer_value();
      if (rid & chunk_item_flag) {
        chunks_->add(rid, content);
        return;
      }
      if (content.match_elements<caf::error>()) {
        auto buf = encode_error_frame(rid, content.get_as<caf::error>(0));
        [[maybe_unused]] auto err = ch_->send(buf, mode);
        return;
      }
      auto& buf = frame_buffer();
      auto err = faults::check(faults::point::worker_encode_result);
      if (!err)
        err = encode_frame(buf, wire::kind::response, rid, content);
      if (!err)
        err = ch_->send(buf, mode);
      // A result that cannot be encoded or is too large for a frame fails
      // that request only (other errors: the channel is broken).
      if (err == errc::encode_failed || err == errc::unknown_type
          || err == errc::frame_too_large) {
        auto ebuf = encode_error_frame(rid, err);
        [[maybe_unused]] auto err2 = ch_->send(ebuf, mode);
      }
      return;
    }
    auto& buf = frame_buffer();
    if (!encode_frame(buf, wire::kind::async, 0, content))
      [[maybe_unused]] auto err = ch_->send(buf, mode);
  }

private:
  frame_link* ch_;
  chunk_outcomes* chunks_;
};

class child_bridge : public frame_handler, public chunk_outcomes {
public:
  /// `fast`: the worker's task function, if it is a task worker (it must
  /// outlive the bridge).
  child_bridge(caf::actor_system& sys, frame_link& ch, caf::actor worker,
               const detail::task_function* fast, std::string entry)
    : ch_(ch),
      unit_(&sys),
      worker_(std::move(worker)),
      fast_(fast),
      fast_type_(fast != nullptr ? detail::registered_id(*fast->task) : 0),
      entry_(std::move(entry)) {
    caf::actor_config cfg;
    parent_ = caf::make_actor<parent_proxy, caf::strong_actor_ptr>(
      sys.next_actor_id(), sys.node(), &sys, cfg, &ch,
      static_cast<chunk_outcomes*>(this));
    delivery_.emplace(worker_, parent_, unit_);
  }

  // -- chunks -------------------------------------------------------------------
  //
  // The items of a chunk_request go to the worker one by one, like requests
  // (direct delivery, same order), each with a request id naming its chunk
  // and index. Their outcomes gather in one chunk_response frame, written
  // when the chunk's items have all been handed over, when it reaches
  // chunk_flush_bytes, or ~1 ms after the last write (so a slow chunk's
  // finished results are not held back). An outcome that comes later (a
  // response promise, a message the behavior skipped) goes out at once in a
  // chunk_response of its own.

  void add(uint64_t item_rid, const caf::message& content) override {
    if (content.match_elements<caf::error>())
      add_outcome(item_rid, nullptr, &content.get_as<caf::error>(0));
    else
      add_outcome(item_rid, &content, nullptr);
  }

  /// Adds an item's reply or error to its chunk's response.
  void add_outcome(uint64_t item_rid, const caf::message* reply,
                   const caf::error* error) {
    auto slot = (item_rid >> chunk_index_bits) & chunk_slot_mask;
    auto index = static_cast<uint32_t>(item_rid & (chunk_capacity - 1));
    bool io = ch_.on_io_thread();
    if (io && looping_slot_ == slot) {
      add_local(index, [&](std::string& out, type_id& type) {
        return fill_outcome(out, type, reply, error);
      });
      return;
    }
    thread_local std::string item;
    item.clear();
    append_outcome(item, index, reply, error);
    std::string full; // a frame to write now, if any
    std::string last;
    {
      std::lock_guard<std::mutex> guard{chunk_mu_};
      auto i = chunks_.find(slot);
      if (i == chunks_.end())
        return; // cannot happen: each item is answered once
      auto& c = i->second;
      if (c.count != 0 && c.out.size() + item.size() > frame_limit())
        full = take_frame(c);
      if (c.count == 0)
        begin_frame(c);
      c.out += item;
      ++c.count;
      --c.left;
      last = take_frame(c);
      if (c.left == 0 && looping_slot_ != slot)
        chunks_.erase(i);
    }
    auto mode = io ? send_mode::deferred : send_mode::immediate;
    if (!full.empty())
      [[maybe_unused]] auto err = ch_.send_framed(full, mode);
    if (!last.empty())
      [[maybe_unused]] auto err = ch_.send_framed(last, mode);
  }

  /// The largest encoded outcome that fits a chunk_response frame.
  size_t frame_limit() const {
    return ch_.options().max_frame_size - wire::envelope_size
           - wire::chunk_count_size;
  }

  /// An outcome for append_item(): the encoded reply (setting `type`), or
  /// the error.
  static caf::error fill_outcome(std::string& out, type_id& type,
                                 const caf::message* reply,
                                 const caf::error* error) {
    if (error != nullptr)
      return *error;
    return encode_message(*reply, type, out);
  }

  /// Adds an item of the chunk run_chunk() is looping over: gathered
  /// without the lock (I/O thread), encoded in place (see append_item).
  template <class Fill>
  void add_local(uint32_t index, Fill&& fill) {
    if (local_.count == 0)
      begin_frame(local_);
    size_t mark = local_.out.size();
    append_item(local_.out, index, fill);
    if (local_.count != 0 && local_.out.size() > frame_limit_) {
      // It goes into the next frame.
      std::string item = local_.out.substr(mark);
      local_.out.resize(mark);
      send_local();
      begin_frame(local_);
      local_.out += item;
    }
    ++local_.count;
    ++local_answered_;
    if (local_.out.size() >= chunk_flush_bytes)
      send_local();
  }

  /// Appends an item of a chunk_response to `out`: its head, then the
  /// encoded reply or error.
  void append_outcome(std::string& out, uint32_t index,
                      const caf::message* reply, const caf::error* error) {
    append_item(out, index, [&](std::string& o, type_id& type) {
      return fill_outcome(o, type, reply, error);
    });
  }

  /// Appends an item of a chunk_response to `out`: its head, then what
  /// `fill(out, type)` appends, the encoded reply (setting its type), or,
  /// if it returns an error, that error encoded instead.
  template <class Fill>
  void append_item(std::string& out, uint32_t index, Fill&& fill) {
    size_t mark = out.size();
    out.resize(mark + wire::chunk_response_item_head);
    type_id type = 0;
    bool failed = false;
    auto fail_with = [&](const caf::error& err) {
      failed = true;
      type = 0;
      out.resize(mark + wire::chunk_response_item_head);
      out += encode_error(err);
    };
    // A result that cannot be encoded fails that item only.
    auto err = fill(out, type);
    if (!err)
      err = faults::check(faults::point::worker_encode_result);
    if (err)
      fail_with(err);
    if (out.size() - mark > frame_limit_)
      fail_with(make_error(errc::frame_too_large,
                           "the result of chunk item " + std::to_string(index)
                             + " (" + std::to_string(out.size() - mark)
                             + " bytes) exceeds the frame limit"));
    wire::write_chunk_response_item_head(
      out.data() + mark, index, failed, type,
      static_cast<uint32_t>(out.size() - mark
                            - wire::chunk_response_item_head));
  }

  /// Runs a task worker's function on one item (task_function::run); an
  /// exception becomes errc::worker_exception, as guard_behavior() makes it
  /// for a handler.
  caf::error run_task(std::string_view payload, std::string& out,
                      type_id& type) {
    try {
      faults::check_throw(faults::point::worker_run_task);
      return fast_->run(payload, out, type);
    } catch (const std::exception& e) {
      return make_error(errc::worker_exception,
                        where() + " threw " + demangle(typeid(e).name())
                          + ": " + e.what());
    } catch (...) {
      auto* t = abi::__cxa_current_exception_type();
      return make_error(errc::worker_exception,
                        where() + " threw "
                          + (t != nullptr
                               ? demangle(t->name())
                               : std::string{"an unknown exception"}));
    }
  }

  /// "worker <name>[<pid>]", as errors from handlers name the worker.
  std::string where() const {
    auto& name = this_worker_name();
    return "worker " + (name.empty() ? entry_ : name) + "["
           + std::to_string(::getpid()) + "]";
  }

  static std::string demangle(const char* name) {
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> out{
      abi::__cxa_demangle(name, nullptr, nullptr, &status), std::free};
    return status == 0 && out ? std::string{out.get()} : std::string{name};
  }

  /// Writes the outcomes run_chunk() gathered so far (I/O thread).
  void send_local() {
    auto frame = take_frame(local_);
    if (!frame.empty())
      [[maybe_unused]] auto err = ch_.send_framed(frame, send_mode::deferred);
    // The channel copied or wrote the bytes: the buffer serves the next
    // frame. (Freeing a 64 KiB buffer per frame made glibc give the memory
    // back with madvise each time, whose TLB flushes took 12-18 % of a
    // task worker's CPU.)
    if (frame.capacity() > spare_.capacity()) {
      frame.clear();
      spare_ = std::move(frame);
    }
  }

  void run_chunk(uint64_t rid, std::string_view payload) {
    items_.clear();
    if (auto err = wire::read_chunk(wire::kind::chunk_request, payload,
                                    items_)) {
      ch_.fail(std::move(err));
      return;
    }
    if (items_.size() >= chunk_capacity) {
      ch_.fail(make_error(errc::protocol_error,
                          "a chunk of " + std::to_string(items_.size())
                            + " items exceeds the limit of "
                            + std::to_string(chunk_capacity - 1)));
      return;
    }
    if (items_.empty())
      return;
    auto slot = next_slot_++ & chunk_slot_mask;
    {
      std::lock_guard<std::mutex> guard{chunk_mu_};
      auto& c = chunks_[slot];
      c.rid = rid;
      c.left = static_cast<uint32_t>(items_.size());
    }
    local_.rid = rid;
    looping_slot_ = slot;
    // Items run inline (direct_delivery::run_inline) while they can; their
    // outcomes come back through this sink.
    struct item_sink : detail::inline_sink {
      child_bridge* self;
      uint64_t rid = 0;
      void reply(caf::message& result) override {
        self->add_outcome(rid, &result, nullptr);
      }
      void fail(caf::error& err) override {
        self->add_outcome(rid, nullptr, &err);
      }
    } sink;
    sink.self = this;
    caf::error err; // an item that cannot be decoded
    for (auto& it : items_) {
      if (ticks() - last_flush_ > chunk_flush_after_cycles)
        flush_chunk(slot);
      if (auto fault = faults::check(faults::point::worker_decode_task)) {
        add_outcome(chunk_item_flag | slot << chunk_index_bits | it.index,
                    nullptr, &fault);
        continue;
      }
      // A task worker's items run its function right here, in order, while
      // its actor is held (idle, nothing queued before them).
      if (fast_type_ != 0 && it.type == fast_type_ && delivery_->hold()) {
        add_local(it.index, [&](std::string& out, type_id& type) {
          return run_task(it.payload, out, type);
        });
        continue;
      }
      auto item_rid = chunk_item_flag | slot << chunk_index_bits | it.index;
      auto mid = caf::make_message_id(item_rid);
      sink.rid = item_rid;
      if (delivery_->run_inline(it.type, it.payload, mid, sink, err)) {
        if (err) {
          add_outcome(item_rid, nullptr, &err);
          err = caf::none;
        }
        continue;
      }
      if (auto failed = delivery_->deliver(it.type, it.payload, mid))
        add_outcome(item_rid, nullptr, &failed);
    }
    looping_slot_ = no_slot;
    flush_chunk(slot);
  }

  void on_frame(std::string_view body) override {
    std::string_view payload;
    auto env = wire::read_envelope(body, payload);
    if (!env) {
      ch_.fail(env.error());
      return;
    }
    switch (env->what) {
      case wire::kind::chunk_request:
        run_chunk(env->request_id, payload);
        return;
      case wire::kind::request:
      case wire::kind::async: {
        auto mid = env->what == wire::kind::request
                     ? caf::make_message_id(env->request_id
                                            & caf::message_id::request_id_mask)
                     : caf::make_message_id();
        // Replies wait for the end of the batch, but not behind a handler
        // that took long: a finished task's result must not wait for the
        // next task (a few writes more per second, at most).
        auto now = ticks();
        if (now - last_flush_ > flush_after_cycles) {
          ch_.flush();
          last_flush_ = now;
        }
        auto err = faults::check(faults::point::worker_decode_task);
        if (err || (err = delivery_->deliver(env->type, payload, mid))) {
          // The frame boundary is intact: a request that cannot be decoded
          // fails alone; a message nobody waits for breaks the channel.
          if (env->what == wire::kind::request) {
            auto buf = encode_error_frame(env->request_id, err);
            [[maybe_unused]] auto e2 = ch_.send(buf, send_mode::deferred);
          } else {
            ch_.fail(std::move(err));
          }
        }
        return;
      }
      case wire::kind::shutdown:
        finish(0, {});
        return;
      default:
        ch_.fail(make_error(errc::protocol_error,
                            std::string{"the parent sent an unexpected "}
                              + wire::to_string(env->what) + " frame"));
    }
  }

  void on_batch_end() override {
    delivery_->release();
    unit_.run_jobs();
    ch_.flush();
    last_flush_ = ticks();
  }

  void on_closed(const caf::error& reason) override {
    if (reason == errc::peer_closed || reason == errc::closed)
      finish(0, {});
    else
      finish(65, reason);
  }

  /// Records how the child should end and wakes the main thread.
  void finish(int code, const caf::error& reason) {
    std::lock_guard<std::mutex> guard{mu_};
    if (done_)
      return;
    done_ = true;
    exit_code_ = code;
    reason_ = reason;
    cv_.notify_all();
  }

  int wait() {
    std::unique_lock<std::mutex> lk{mu_};
    cv_.wait(lk, [this] { return done_; });
    if (reason_)
      logger()->error("worker {}[{}] stops: {}", this_worker_name(),
                      static_cast<int>(::getpid()), describe(reason_));
    return exit_code_;
  }

private:
  /// A chunk_request whose items are not all answered.
  struct open_chunk {
    uint64_t rid = 0;  // the chunk_request's request id
    uint32_t left = 0; // items not answered yet
    uint32_t count = 0; // items in `out`
    std::string out;   // a chunk_response frame being filled
  };

  static constexpr size_t chunk_flush_bytes = 64 * 1024;
  static constexpr uint64_t no_slot = ~uint64_t{0};

  void begin_frame(open_chunk& c) {
    if (&c == &local_ && c.out.capacity() < spare_.capacity())
      c.out.swap(spare_); // I/O thread only, as local_ and spare_
    c.out.assign(frame_header_size + wire::envelope_size
                   + wire::chunk_count_size,
                 '\0');
  }

  /// The frame of `c`'s gathered outcomes, ready to write (lock held).
  std::string take_frame(open_chunk& c) {
    if (c.count == 0)
      return {};
    auto& out = c.out;
    write_frame_header(out.size() - frame_header_size, out.data());
    wire::envelope e;
    e.what = wire::kind::chunk_response;
    e.request_id = c.rid;
    wire::write_envelope(e, out.data() + frame_header_size);
    wire::write_chunk_count(out.data() + frame_header_size
                              + wire::envelope_size,
                            c.count);
    c.count = 0;
    return std::move(out);
  }

  /// Writes what chunk `slot` gathered so far (I/O thread).
  void flush_chunk(uint64_t slot) {
    send_local();
    std::string frame;
    {
      std::lock_guard<std::mutex> guard{chunk_mu_};
      auto i = chunks_.find(slot);
      if (i == chunks_.end())
        return;
      i->second.left -= local_answered_;
      local_answered_ = 0;
      frame = take_frame(i->second);
      if (i->second.left == 0 && looping_slot_ != slot)
        chunks_.erase(i);
    }
    if (!frame.empty())
      [[maybe_unused]] auto err = ch_.send_framed(frame, send_mode::deferred);
    ch_.flush();
    last_flush_ = ticks();
  }

  frame_link& ch_;
  detail::inline_unit unit_;
  caf::actor worker_;
  const detail::task_function* fast_; // a task worker's function, or null
  type_id fast_type_;                 // its task type (0: none)
  std::string entry_;                 // the worker's entry name
  // The largest encoded outcome that fits a chunk_response frame.
  size_t frame_limit_ = frame_limit();
  caf::strong_actor_ptr parent_;
  std::optional<detail::direct_delivery> delivery_;
  std::vector<wire::chunk_item> items_; // I/O thread only
  uint64_t next_slot_ = 0;               // I/O thread only
  uint64_t looping_slot_ = no_slot;      // read on the I/O thread only
  std::mutex chunk_mu_;
  std::unordered_map<uint64_t, open_chunk> chunks_;
  // The outcomes of the chunk run_chunk() is looping over, and how many
  // items they answered since its entry in chunks_ was last updated (I/O
  // thread only).
  open_chunk local_;
  uint32_t local_answered_ = 0;
  std::string spare_; // a written frame's buffer, for local_'s next one
  /// When replies were last written (TSC cycles); ~100 µs at 2 GHz.
  static constexpr uint64_t flush_after_cycles = 200000;
  /// The same for a chunk's gathered outcomes; ~1 ms. Each write wakes the
  /// parent, and a map waits for the whole chunk anyway.
  static constexpr uint64_t chunk_flush_after_cycles = 2000000;
  uint64_t last_flush_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  int exit_code_ = 0;
  caf::error reason_;
};

/// The lean configuration of a worker's actor system: one scheduler thread
/// (the channel's I/O thread runs the worker's handlers anyway).
void configure_child_system(caf::actor_system_config& cfg) {
  cfg.set("scheduler.max-threads", size_t{1});
  cfg.set("scheduler.policy", caf::atom("sharing"));
}

/// Runs the worker of `reg` on `ch`, greeted already, until the parent
/// shuts it down or the channel ends; returns the exit code.
int serve(frame_link& ch, caf::actor_system& sys,
          const worker_registration& reg, const std::string& entry) {
  int code = 0;
  {
    auto worker = reg.factory(sys);
    child_bridge bridge{sys, ch, worker,
                        reg.fast ? &*reg.fast : nullptr,
                        entry};
    // The worker's end tells the bridge, unless the bridge is gone: CAF may
    // run this on a scheduler thread after await_all_actors_done() returned.
    struct bridge_link {
      std::mutex mu;
      child_bridge* bridge = nullptr;
    };
    auto link = std::make_shared<bridge_link>();
    link->bridge = &bridge;
    caf::actor_cast<caf::abstract_actor*>(worker)->attach_functor(
      [link](const caf::error& reason) {
        std::lock_guard<std::mutex> guard{link->mu};
        if (link->bridge != nullptr)
          link->bridge->finish(
            reason && reason != caf::exit_reason::normal ? 1 : 0, {});
      });
    ch.start(&bridge);
    code = bridge.wait();
    ch.stop(std::chrono::milliseconds{1000});
    caf::anon_send_exit(worker, caf::exit_reason::user_shutdown);
    worker = nullptr;
    sys.await_all_actors_done();
    std::lock_guard<std::mutex> guard{link->mu};
    link->bridge = nullptr;
  }
  return code;
}

int worker_entry(child_context& ctx) {
  auto spec = decode<worker_spec>(ctx.args);
  if (!spec) {
    logger()->error("bad worker spec: {}", describe(spec.error()));
    return 64;
  }
  this_worker_name_storage() = spec->name;
  auto i = worker_registry().find(spec->entry);
  if (i == worker_registry().end()) {
    logger()->error("no worker is registered as '{}'", spec->entry);
    return 64;
  }
  for (auto& name : spec->extra_types)
    message_registry::instance().add(message_type{
      name, type_id_of(name), std::type_index{typeid(void)}, 0,
      nullptr, nullptr, nullptr, nullptr});
  channel_options copts;
  copts.max_frame_size = spec->max_frame_size;
  copts.send_high_watermark = spec->send_high_watermark;
  copts.busy_poll = std::chrono::microseconds{spec->busy_poll_us};
  std::unique_ptr<frame_link> link;
  if (spec->shared_memory) {
    if (ctx.fds.size() < 2) {
      logger()->error("worker {}: no queue descriptors", spec->name);
      return 64;
    }
    auto in = shm_queue::attach(std::move(ctx.fds[0]));
    auto out = shm_queue::attach(std::move(ctx.fds[1]));
    if (!in || !out) {
      logger()->error("worker {}: {}", spec->name,
                      describe(in ? out.error() : in.error()));
      return 64;
    }
    link = std::make_unique<shm_channel>(std::move(*in), std::move(*out),
                                         copts);
  } else {
    link = std::make_unique<frame_channel>(std::move(ctx.channel), copts);
  }
  auto& ch = *link;
  if (send_hello(ch, spec->name))
    return 0; // the parent is gone already
  // Build the actor system while the parent checks our hello.
  caf::actor_system_config cfg;
  configure_child_system(cfg);
  caf::actor_system sys{cfg};
  if (auto err = receive_hello(ch, std::chrono::milliseconds{30000},
                               spec->name, "the parent")) {
    if (err == errc::peer_closed)
      return 0;
    // A mismatch is reported by the parent, which sees it too.
    if (err != errc::fingerprint_mismatch)
      logger()->error("worker {}: {}", spec->name, describe(err));
    return 65;
  }
  return serve(ch, sys, i->second, spec->entry);
}

const bool worker_entry_registered = register_entry(worker_entry_name,
                                                    &worker_entry);

} // namespace

namespace detail {

int serve_worker(frame_link& ch, caf::actor_system& sys,
                 const std::string& entry, const std::string& name,
                 std::chrono::milliseconds hello_timeout) {
  auto i = worker_registry().find(entry);
  if (i == worker_registry().end()) {
    logger()->error("no worker is registered as '{}'; registered workers: {}",
                    entry, registered_workers());
    return 64;
  }
  this_worker_name_storage() = name;
  if (send_hello(ch, name))
    return 0; // the parent is gone already
  if (auto err = receive_hello(ch, hello_timeout, name, "the parent")) {
    if (err == errc::peer_closed)
      return 0;
    // Unlike a child's, a remote worker's stderr is its own: say why.
    logger()->error("worker {}: {}", name, describe(err));
    return 65;
  }
  return serve(ch, sys, i->second, entry);
}

} // namespace detail

} // namespace multiproc
