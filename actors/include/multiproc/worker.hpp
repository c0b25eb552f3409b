#pragma once

/// \file
/// Worker actors in child processes.
///
/// A worker actor is an ordinary CAF event-based behavior, registered by name
/// with one line and spawned in a child process:
///
///     caf::behavior squarer(caf::event_based_actor*) {
///       return {[](const square& x) { return x.value * x.value; }};
///     }
///     MULTIPROC_WORKER("squarer", squarer);
///     ...
///     auto worker = multiproc::spawn_worker(sys, "squarer");  // caf::actor
///     self->request(*worker, 1s, square{7}).then([](int y) { ... });
///
/// The handle behaves like a local actor: requests (with .then/.await/
/// .receive), fire-and-forget sends, monitors and links work. Messages cross
/// the process boundary as Cereal bytes (types registered with
/// MULTIPROC_MESSAGE), one value per message. docs/actors.md has the details.
///
/// Failures: when the child dies, every request in flight to it fails at once
/// with errc::worker_died ("worker squarer[1234] killed by SIGSEGV") and the
/// handle's monitors get a down message with that error. An exception thrown
/// by a handler reaches the requester as errc::worker_exception naming the
/// exception's type, its what() and the worker; the worker keeps serving.
///
/// Thread safety: all functions may be called from any thread. Do not make
/// blocking calls (request<R>, stop_worker) from inside a handler that runs
/// on a worker's I/O thread (a response handler of a request to a worker).
///
/// Lifetimes: the handle is a caf::actor; when its last reference goes away
/// the worker is asked to finish (a shutdown frame; a child that does not
/// take it within shutdown_timeout is killed), without waiting for the exit.
/// stop_worker() waits. Registration (MULTIPROC_WORKER) happens during
/// static initialisation; a duplicate name aborts.

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/behavior.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/expected.hpp>
#include <caf/message.hpp>

#include "multiproc/bootstrap.hpp"
#include "multiproc/detail/flat_archive.hpp"
#include "multiproc/detail/guarded_behavior.hpp"
#include "multiproc/frame_channel.hpp"
#include "multiproc/message_registry.hpp"
#include "multiproc/output.hpp"
#include "multiproc/process.hpp"
#include "multiproc/start_method.hpp"

namespace multiproc {

/// What carries the frames between the parent and a worker.
enum class worker_transport {
  /// The parent<->child socketpair: one system call per write and read
  /// (a round trip near the kernel's socketpair round trip).
  socket,
  /// Two shared-memory queues (shm_channel.hpp): no system call while both
  /// ends are busy; a round trip costs about a tenth of the socket's when
  /// the two processes have a core each, at the price of brief spinning.
  shared_memory,
};

/// Options for spawn_worker(); one comment per field.
struct worker_options {
  /// How to start the child; empty: default_start_method().
  std::optional<start_method> method;
  /// The process name in logs and errors; empty: the worker's entry name.
  std::string name;
  /// Where the child's stdout/stderr lines go; empty: the parent's stderr.
  output_sink sink;
  /// How long spawn_worker() waits for the child to be ready.
  std::chrono::milliseconds start_timeout{10000};
  /// How long a graceful stop may take before the child is killed.
  std::chrono::milliseconds shutdown_timeout{2000};
  /// What carries requests and replies (socket or shared_memory).
  worker_transport transport = worker_transport::socket;
  /// Frame size limit and backpressure of the parent<->child channel (both
  /// ends use its max_frame_size and send_high_watermark); its busy_poll is
  /// the parent end's.
  channel_options channel;
  /// How long the child's I/O thread keeps polling for the next request
  /// after answering, while requests come back to back, before it sleeps
  /// (channel_options::busy_poll): a request then finds the child awake.
  /// 0 turns it off.
  std::chrono::microseconds busy_poll{50};
  /// Test hook: message type names the child registers in addition to this
  /// program's, to provoke a fingerprint mismatch.
  std::vector<std::string> extra_child_types;
  /// Called once when the child has ended (its exit status, or why it is
  /// unknown), before requests in flight to it fail. Runs on the worker's
  /// I/O thread: must not block or stop/kill workers.
  std::function<void(const caf::expected<exit_status>&)> on_exit;
};

/// Identity of a worker process, as seen from the parent.
struct worker_info {
  std::string name;                          ///< the worker's process name
  pid_t pid = 0;                             ///< its pid (on its own host)
  start_method method = start_method::spawn; ///< how it was started
  /// Empty for a child of this process; for a worker that joined over the
  /// network (pool::publish), its host and the address it connected from.
  std::string node;
};

/// Creates the worker actor inside the child.
using worker_factory = std::function<caf::actor(caf::actor_system&)>;

namespace detail {

/// The chunk fast path of a task worker (MULTIPROC_TASK_WORKER): how the
/// child runs a chunk item of the function's task type without CAF.
struct task_function {
  /// The task type T (the function's argument).
  const std::type_info* task = nullptr;
  /// Decodes a T from `payload`, calls the function with it and appends
  /// the encoded result to `out`, setting `result_type` to its type id.
  /// Returns decode_failed, unknown_type or encode_failed (with `out` to be
  /// truncated by the caller); the function's exceptions pass through.
  caf::error (*run)(std::string_view payload, std::string& out,
                    type_id& result_type) = nullptr;
};

} // namespace detail

/// Registers a worker entry by name (called by MULTIPROC_WORKER).
bool register_worker(const char* name, worker_factory factory);

/// Registers a worker entry whose chunk items of one task type may run
/// through `fast` (called by MULTIPROC_TASK_WORKER).
bool register_worker(const char* name, worker_factory factory,
                     detail::task_function fast);

/// True if a worker is registered under `name`.
bool has_worker(const std::string& name);

/// The names of the registered workers, sorted.
std::vector<std::string> worker_names();

/// Starts a child process running the worker registered as `entry` and
/// returns a handle to its actor once the child is ready (handshake done).
/// Errors: unknown_entry, not_bootstrapped, fork_unsafe, spawn_failed,
/// fingerprint_mismatch, timeout.
caf::expected<caf::actor> spawn_worker(caf::actor_system& sys,
                                       const std::string& entry,
                                       worker_options opts = {});

/// Returns the identity of a worker handle, or nullopt for other actors.
std::optional<worker_info> info_of(const caf::actor& worker);

/// Asks the worker to finish (its actor gets an exit message), waits up to
/// its shutdown_timeout, then kills it; returns how the process ended.
caf::expected<exit_status> stop_worker(const caf::actor& worker);

/// Kills the worker process with SIGKILL and returns its exit status.
caf::expected<exit_status> kill_worker(const caf::actor& worker);

namespace detail {

using encode_fn = void (*)(const void* value, std::string& out,
                           gather_list* gather);

/// Sends one value to a worker and waits for the reply (plain code).
caf::expected<caf::message> sync_request(const caf::actor& worker,
                                         std::chrono::milliseconds timeout,
                                         type_id type, encode_fn encode,
                                         const void* value);

/// Sends one value to a worker without waiting for anything.
caf::error async_send(const caf::actor& worker, type_id type, encode_fn encode,
                      const void* value);

type_id registered_id(const std::type_info& type);

/// An item of a chunk that succeeded, its reply still encoded (a value of
/// `type`); see reply_sink::on_chunk_reply().
struct chunk_reply_item {
  uint32_t item = 0; // the position in its chunk
  type_id type = 0;
  std::string_view bytes;
};

/// Receives the outcome of requests sent with send_encoded_request(): the
/// reply, or the error (the handler's, or worker_died when the child ended
/// first). Called on the worker's I/O thread, exactly once per request, or
/// once per item of a chunk (`item` is its position; 0 for a request).
class reply_sink {
public:
  virtual ~reply_sink() = default;
  virtual void on_reply(uint64_t tag, uint32_t item, caf::message reply,
                        caf::error err) = 0;
  /// A reply still encoded (a value of `type`; the bytes live until the
  /// call returns). A sink that returns true takes it as it is (and decodes
  /// it later, or never); false: it gets on_reply() with the decoded value.
  virtual bool on_reply_bytes(uint64_t tag, uint32_t item, type_id type,
                              std::string_view bytes) {
    (void) tag, (void) item, (void) type, (void) bytes;
    return false;
  }
  /// Items of the chunk `tag` that succeeded, answered together (the bytes
  /// live until the call returns). A sink that returns true takes them all;
  /// false: each goes to on_reply_bytes(), or to on_reply() decoded.
  virtual bool on_chunk_reply(uint64_t tag, const chunk_reply_item* items,
                              size_t n) {
    (void) tag, (void) items, (void) n;
    return false;
  }
  /// Called after a batch of frames that brought this sink replies (and
  /// before the worker's on_exit): a sink may buffer until then.
  virtual void on_batch_end() {
  }
};

/// Sends a request whose payload (a value of type `type`) is encoded
/// already; its outcome reaches `sink` with `tag`. `immediate` writes at
/// once (latency) instead of batching with other frames (throughput).
/// Returns an error, and calls nothing, if the request cannot be sent.
caf::error send_encoded_request(const caf::actor& worker, type_id type,
                                std::string_view payload, reply_sink* sink,
                                uint64_t tag, bool immediate);

/// One request of send_encoded_requests(): a value of `type`, or a chunk.
struct encoded_request {
  type_id type = 0;
  std::string_view payload;
  uint64_t tag = 0;
  /// 0: a single request. Else a chunk: `payload` is a chunk_request
  /// payload of this many items (wire::write_chunk_count(), then
  /// wire::append_chunk_request_item() per item; `type` unused), which
  /// travel in one frame and reach the worker as requests of their own;
  /// each item's outcome reaches the sink with its position.
  uint32_t chunk_items = 0;
};

/// Items of one chunk, at most.
constexpr size_t max_chunk_items = 16384;

/// Payloads from this size on are written from the caller's buffer, not
/// copied into a batch (so they are never chunk items either).
constexpr size_t max_batched_payload = 16 * 1024;

/// Sends `n` requests at once (one lock, one write), all answered to `sink`.
/// A request that cannot be sent calls `failed(i, error)` instead (nothing
/// reaches the sink for it): frame_too_large for that request alone, or
/// the channel's error once it broke (then for each request not sent). A
/// chunk has at most max_chunk_items items.
void send_encoded_requests(
  const caf::actor& worker, const encoded_request* reqs, size_t n,
  reply_sink* sink, bool immediate,
  const std::function<void(size_t, caf::error)>& failed);

/// Sends signal `sig` to the worker's process (does not wait).
caf::error signal_worker(const caf::actor& worker, int sig);

/// The argument and result types of a task function `R fn(T)` or
/// `R fn(const T&)`.
template <class F>
struct task_function_traits;

template <class R, class A>
struct task_function_traits<R (*)(A)> {
  using result = std::decay_t<R>;
  using task = std::decay_t<A>;
};

template <class R, class A>
struct task_function_traits<R (*)(A) noexcept>
  : task_function_traits<R (*)(A)> {};

/// A task function's result: a value, or caf::expected of one (whose error
/// fails the task, as a handler's returned error does).
template <class R>
struct task_result_value {
  using type = R;
  static const R* value(const R& x, caf::error&) {
    return &x;
  }
};

template <class R>
struct task_result_value<caf::expected<R>> {
  using type = R;
  static const R* value(const caf::expected<R>& x, caf::error& err) {
    if (x)
      return &*x;
    err = x.error();
    return nullptr;
  }
};

/// task_function::run for the function Fn (see there).
template <auto Fn>
caf::error run_task_function(std::string_view payload, std::string& out,
                             type_id& result_type) {
  using traits = task_function_traits<decltype(Fn)>;
  using T = typename traits::task;
  using result_value = task_result_value<typename traits::result>;
  using R = typename result_value::type;
  // The flat archive reads and writes Cereal's bytes without building an
  // archive (detail/flat_archive.hpp); other types take Cereal's way.
  T task{};
  if (!flat_decode(payload, task)) {
    auto decoded = multiproc::decode<T>(payload);
    if (!decoded)
      return std::move(decoded.error());
    task = std::move(*decoded);
  }
  static const type_id id = registered_id(typeid(R));
  if (id == 0)
    return make_error(errc::unknown_type,
                      "type " + type_name_of<R>()
                        + " is not registered; add MULTIPROC_MESSAGE(T, "
                          "\"name\")");
  const auto& returned = Fn(task);
  caf::error err;
  const R* result = result_value::value(returned, err);
  if (result == nullptr)
    return err;
  auto mark = out.size();
  if (!flat_encode(*result, out)) {
    out.resize(mark);
    try {
      encode_value<R>(result, out);
    } catch (const std::exception& e) {
      return make_error(errc::encode_failed, "cannot encode a value of type '"
                                               + type_name_of<R>()
                                               + "': " + e.what());
    }
  }
  result_type = id;
  return caf::none;
}

/// Registers the task worker `name` running Fn (MULTIPROC_TASK_WORKER).
template <auto Fn>
bool register_task_worker(const char* name) {
  using traits = task_function_traits<decltype(Fn)>;
  using T = typename traits::task;
  using R = typename traits::result;
  static_assert(!std::is_void<R>::value && !std::is_same<R, caf::error>::value
                  && !std::is_same<R, caf::message>::value,
                "a task function returns its result (a registered type) or "
                "caf::expected of one");
  task_function fast;
  fast.task = &typeid(T);
  fast.run = &run_task_function<Fn>;
  return register_worker(
    name,
    [name](caf::actor_system& sys) {
      return sys.spawn([name](caf::event_based_actor*) -> caf::behavior {
        return guard_behavior(
          caf::behavior{[](const T& task) -> R { return Fn(task); }}, name);
      });
    },
    fast);
}

template <class Self>
caf::actor spawn_guarded(caf::actor_system& sys, caf::behavior (*fn)(Self*),
                         const char* name) {
  return sys.spawn([fn, name](Self* self) -> caf::behavior {
    return guard_behavior(fn(self), name);
  });
}

} // namespace detail

/// Sends `msg` to a worker and waits at most `timeout` for its typed reply,
/// from plain (non-actor) code, without CAF's scheduler on the path.
/// Errors: the handler's error, worker_exception, worker_died, timeout,
/// type_mismatch (reply of another type), unknown_type, encode_failed.
template <class R, class T>
caf::expected<R> request(const caf::actor& worker,
                         std::chrono::milliseconds timeout, const T& msg) {
  static const auto id = detail::registered_id(typeid(T));
  auto reply = detail::sync_request(worker, timeout, id,
                                    &detail::encode_value_gather<T>, &msg);
  if (!reply)
    return std::move(reply.error());
  if constexpr (std::is_same<R, caf::message>::value) {
    return std::move(*reply);
  } else {
    if (reply->template match_elements<R>())
      return reply->template get_as<R>(0);
    return make_error(errc::type_mismatch,
                      "expected a reply of type " + type_name_of<R>()
                        + ", got " + caf::to_string(*reply));
  }
}

/// Sends `msg` to a worker without waiting (fire-and-forget, batched).
template <class T>
caf::error send(const caf::actor& worker, const T& msg) {
  static const auto id = detail::registered_id(typeid(T));
  return detail::async_send(worker, id, &detail::encode_value_gather<T>, &msg);
}

/// The name of the worker running in this process ("" in the parent).
const std::string& this_worker_name();

} // namespace multiproc

/// Registers a task worker: a worker whose one handler is the plain
/// function `R fn(const T&)` (or `R fn(T)`), T and R registered message
/// types (R may be caf::expected<X> of one: its error fails the task), the
/// counterpart of the function given to Python's Pool.map:
///
///     int64_t square(const task& t) { return t.x * t.x; }
///     MULTIPROC_TASK_WORKER("squarer", square)
///
/// It answers requests and pool tasks like a MULTIPROC_WORKER whose
/// behavior is `{[](const T& t) { return fn(t); }}` (an exception becomes
/// errc::worker_exception). A pool's chunk items of type T then run without
/// CAF: the child decodes each task, calls fn and encodes its result
/// straight into the chunk's response (no mailbox element, behavior
/// dispatch or caf::message per item), in order, while the worker's actor
/// is idle; otherwise they take the usual way. docs/pool.md, "Chunking".
#define MULTIPROC_TASK_WORKER(name, fn)                                        \
  static const bool MULTIPROC_PP_CAT(multiproc_worker_registered_,             \
                                     __COUNTER__)                              \
    = ::multiproc::detail::register_task_worker<&fn>(name);

/// Registers a worker entry: `name` is a string literal, `fn` a function
/// `caf::behavior fn(Self*)` for any event-based actor type Self (e.g.
/// caf::event_based_actor or caf::stateful_actor<State>).
#define MULTIPROC_WORKER(name, fn)                                             \
  static const bool MULTIPROC_PP_CAT(multiproc_worker_registered_,             \
                                     __COUNTER__)                              \
    = ::multiproc::register_worker(name, [](caf::actor_system& sys) {          \
        return ::multiproc::detail::spawn_guarded(sys, &fn, name);             \
      });
