#pragma once

/// \file
/// A pool of worker processes with a crash-safe task ledger.
///
/// The pool runs N child processes of one registered worker actor
/// (MULTIPROC_WORKER) and spreads tasks over them, several in flight per
/// worker. A task is a registered message; its result is the worker's typed
/// reply:
///
///     multiproc::pool_options opts;
///     opts.workers = 4;
///     auto p = multiproc::pool::start(sys, "squarer", opts);
///     auto f = p->submit<int32_t>(square{7});        // a task_future
///     auto ys = p->map<int32_t>(std::vector<square>{...});
///
/// The ledger knows which worker holds which task. When a worker dies, it is
/// replaced and its tasks are dispatched again (at_least_once; the likely
/// culprit alone if it is unclear which one killed the worker) or failed on
/// their own (at_most_once). A task that killed its worker on every attempt is
/// quarantined: its result is errc::task_quarantined naming the task, the
/// exit statuses and the dead worker's last stderr lines. Every result is
/// delivered exactly once; nothing waits forever unless the caller asked.
/// docs/pool.md has the guarantees and every option.
///
/// Thread safety: all member functions may be called from any thread, but
/// not from a handler running on a worker's I/O thread (the pool's own
/// callbacks). A pool is movable, not copyable.
///
/// Lifetimes: the actor system given to start() must outlive the pool. The
/// destructor terminates a pool that close() did not finish (pending tasks
/// fail with errc::closed, children are killed and reaped), so futures and
/// streams never wait on a destroyed pool. A moved-from pool is empty: its
/// tasks fail with errc::closed.
///
/// Errors are values: submit() and friends deliver them in the future or
/// stream, the rest return caf::error / caf::expected; each call names its
/// codes.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/message.hpp>

#include "multiproc/detail/flat_archive.hpp"
#include "multiproc/detail/result_slot.hpp"
#include "multiproc/error.hpp"
#include "multiproc/faults.hpp"
#include "multiproc/message_registry.hpp"
#include "multiproc/metrics.hpp"
#include "multiproc/output.hpp"
#include "multiproc/start_method.hpp"
#include "multiproc/worker.hpp"
#include "multiproc/network.hpp"

namespace multiproc {

/// What happens to the tasks of a worker that died.
enum class delivery {
  /// Run again on another worker. If the dead worker held several tasks, it
  /// is unknown which one was running: the first one not answered runs
  /// again alone, the others in halving groups; a death quarantines a task
  /// only once it happened while the task ran alone and the task has seen
  /// max_attempts deaths (docs/pool.md).
  at_least_once,
  /// Fail with errc::worker_died; a task never runs twice.
  at_most_once,
};

/// What submit() does when max_pending tasks are queued or in flight.
enum class when_full {
  block, ///< wait for room
  fail,  ///< return errc::full at once
};

/// Counters of a pool's life so far (pool::stats(), the progress callback),
/// and two gauges of the moment it was taken. add_metrics() exports them
/// (docs/metrics.md).
struct pool_stats {
  uint64_t submitted = 0;   ///< tasks accepted (the total, for a progress bar)
  uint64_t succeeded = 0;   ///< tasks that got a reply
  uint64_t failed = 0;      ///< tasks that ended in an error (any)
  uint64_t quarantined = 0; ///< of those: quarantined
  uint64_t timed_out = 0;   ///< of those: errc::timeout (task_timeout)
  uint64_t redispatched = 0; ///< dispatches after a worker's death (retries)
  uint64_t workers_started = 0; ///< workers started or joined, replacements included
  uint64_t workers_died = 0; ///< unexpectedly, or stopped for a deadline
  /// The replacements by cause: workers_died is the sum of the first three.
  uint64_t workers_killed = 0;  ///< killed by a signal (a crash, SIGKILL)
  uint64_t workers_exited = 0;  ///< exited on their own (any exit code)
  uint64_t workers_overdue = 0; ///< stopped for a task past its deadline
  uint64_t workers_recycled = 0; ///< replaced after max_tasks_per_child
  uint64_t start_failures = 0;  ///< workers that failed to start or initialize
  /// Tasks sent to a worker and not answered yet (a gauge).
  uint64_t in_flight = 0;
  /// Workers alive (a gauge).
  uint64_t workers = 0;
  /// From submit to result, of every task that ended (a chunk's items
  /// count each, with the chunk's time).
  latency_histogram latency;

  /// Tasks that ended, either way.
  uint64_t done() const noexcept {
    return succeeded + failed;
  }
  /// Tasks queued or in flight.
  uint64_t pending() const noexcept {
    return submitted - done();
  }
  /// Tasks waiting for a worker.
  uint64_t queued() const noexcept {
    return pending() - std::min(pending(), in_flight);
  }
};

/// Called with the pool's counters while they change (see pool_options).
using progress_fn = std::function<void(const pool_stats&)>;

/// Options of pool::start(); one comment per field.
struct pool_options {
  /// Number of worker processes; 0: the number of cores.
  size_t workers = 0;
  /// Serve remote workers only (a head node that dispatches): the pool
  /// starts no worker process of its own and `workers` is ignored; tasks
  /// wait for the first worker to join through publish().
  bool remote_only = false;
  /// How to start the children; empty: default_start_method().
  std::optional<start_method> method;
  /// The workers' names are "<name>-<i>"; empty: the worker entry name.
  std::string name;
  /// What happens to the tasks of a worker that died.
  delivery guarantee = delivery::at_least_once;
  /// Runs of one task that may end in its worker's death (at_least_once).
  int max_attempts = 3;
  /// Bound on tasks queued plus in flight (backpressure).
  size_t max_pending = 100000;
  /// What submit() does at the bound.
  when_full on_full = when_full::block;
  /// Tasks in flight per worker; more hides the round trip, fewer limits
  /// what a dying worker takes with it and spreads slow tasks better. 0:
  /// adaptive, about 2 ms of work at each worker's measured pace (from 4
  /// at start, between 2 and 1024 tasks).
  size_t window = 0;
  /// Deadline of each task, counted from when it becomes the oldest task in
  /// flight on its worker; 0: none. A worker past a deadline is stopped
  /// (SIGTERM, kill_grace, SIGKILL) and replaced; the task fails with
  /// errc::timeout if it ran alone, else it runs again alone first.
  std::chrono::milliseconds task_timeout{0};
  /// How long a worker stopped for a deadline may take to exit after SIGTERM.
  std::chrono::milliseconds kill_grace{200};
  /// Retry a task that ran past its deadline (counts as an attempt).
  bool retry_timeouts = false;
  /// A worker is replaced after this many tasks; 0: never.
  size_t max_tasks_per_child = 0;
  /// Sent to each new worker, as a request, before any task; a worker whose
  /// initializer fails (error reply, exception, death) is replaced. Set with
  /// set_initializer().
  std::optional<std::pair<type_id, std::string>> initializer;
  /// The pool gives up (errc::pool_broken for every pending and later task)
  /// after this many workers in a row failed to start or initialize.
  int max_start_failures = 3;
  /// Where the workers' output lines go; empty: the parent's stderr.
  output_sink sink;
  /// Lines of a dead worker's stderr quoted in a quarantine error.
  size_t stderr_tail = 5;
  /// How long starting one worker may take.
  std::chrono::milliseconds start_timeout{10000};
  /// What carries tasks and results between the pool and its workers
  /// (worker_options::transport).
  worker_transport transport = worker_transport::socket;
  /// How long a worker keeps polling for its next task after answering,
  /// while tasks come back to back (worker_options::busy_poll); 0: off.
  std::chrono::microseconds busy_poll{50};
  /// Called on the pool's supervisor thread with the counters, at most once
  /// per progress_interval and only when they changed, and once more when
  /// the pool stops. It must not call the pool's blocking functions.
  progress_fn on_progress;
  /// How often on_progress may be called.
  std::chrono::milliseconds progress_interval{100};

  /// Sets the initializer message (a registered type).
  template <class T>
  caf::error set_initializer(const T& msg) {
    std::string bytes;
    if (auto err = encode(msg, bytes))
      return err;
    initializer.emplace(detail::registered_id(typeid(T)), std::move(bytes));
    return caf::none;
  }
};

/// Per-call options of pool::submit().
struct task_options {
  /// Overrides pool_options::task_timeout for this task (0: the pool's).
  std::chrono::milliseconds timeout{0};
  /// Overrides pool_options::on_full for this call.
  std::optional<when_full> on_full;
};

namespace detail {

class pool_core;

/// Appends the encoding of a task or result: the flat archive's bytes when
/// it understands the type (the same bytes as Cereal's, without building an
/// archive: detail/flat_archive.hpp), else Cereal's. Errors as encode().
template <class T>
caf::error encode_fast(const T& value, std::string& out) {
  if (auto err = faults::check(faults::point::parent_encode_task))
    return err;
  auto mark = out.size();
  if (flat_encode(value, out))
    return caf::none;
  out.resize(mark);
  return multiproc::encode(value, out);
}

/// Decodes a T like decode<T>(), through the flat archive when it can.
template <class T>
caf::expected<T> decode_fast(std::string_view bytes) {
  if (auto err = faults::check(faults::point::parent_decode_result))
    return err;
  if constexpr (std::is_default_constructible<T>::value) {
    T value{};
    if (flat_decode(bytes, value))
      return value;
  }
  return decode<T>(bytes);
}

/// The outcome of one task of a group: the reply, or its error, or (`type`
/// not 0) the reply still encoded, in `bytes`.
struct task_result {
  size_t index = 0;
  caf::message reply;
  caf::error err;
  type_id type = 0;
  std::string_view bytes;
};

/// Decodes a result that is still encoded (into `reply`, or `err`).
void materialize(task_result& r);

/// Receives the results of a group of tasks (one submit, one map, ...).
/// Each task's result arrives exactly once, from any thread, through
/// complete_many() (whose default decodes and calls complete()).
class task_group {
public:
  virtual ~task_group() = default;
  virtual void complete(size_t index, caf::message reply, caf::error err) = 0;
  /// Completes several tasks at once (e.g. under one lock). Encoded
  /// results' bytes live until it returns.
  virtual void complete_many(task_result* results, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      materialize(results[i]);
      complete(results[i].index, std::move(results[i].reply),
               std::move(results[i].err));
    }
  }
  /// Completes tasks `base + items[k].item`, whose replies are still
  /// encoded (the bytes live until it returns).
  virtual void complete_encoded(size_t base, const chunk_reply_item* items,
                                size_t n) {
    std::vector<task_result> results(n);
    for (size_t k = 0; k < n; ++k) {
      results[k].index = base + items[k].item;
      results[k].type = items[k].type;
      results[k].bytes = items[k].bytes;
    }
    complete_many(results.data(), n);
  }
};

/// Converts a reply to R, or explains why it is not one.
template <class R>
caf::expected<R> reply_as(caf::message reply, caf::error err) {
  if (err)
    return err;
  if constexpr (std::is_same<R, caf::message>::value) {
    return reply;
  } else {
    if (reply.template match_elements<R>())
      return std::move(reply.template get_mutable_as<R>(0));
    return make_error(errc::type_mismatch,
                      "expected a result of type " + type_name_of<R>()
                        + ", got " + caf::to_string(reply));
  }
}

/// Asks the kernel to back `[data, data + size)` with huge pages where it
/// can (a hint; nothing happens for small ranges): a map's result vector
/// of 1,000,000 tasks otherwise takes ~4000 page faults.
void prefer_huge_pages(void* data, size_t size) noexcept;

/// A map()'s results, decoded straight into the vector map() returns (no
/// caf::message per result).
template <class R>
class typed_collect_group : public task_group {
public:
  explicit typed_collect_group(size_t n) : left_(n) {
    results_.reserve(n);
    prefer_huge_pages(results_.data(), n * sizeof(caf::expected<R>));
    results_.resize(n, placeholder());
  }

  void complete(size_t index, caf::message reply, caf::error err) override {
    task_result r;
    r.index = index;
    r.reply = std::move(reply);
    r.err = std::move(err);
    complete_many(&r, 1);
  }

  void complete_many(task_result* results, size_t n) override {
    // Each result has its own slot: no lock until the count.
    for (size_t i = 0; i < n; ++i)
      results_[results[i].index] = convert(results[i]);
    count(n);
  }

  void complete_encoded(size_t base, const chunk_reply_item* items,
                        size_t n) override {
    for (size_t k = 0; k < n; ++k) {
      auto& slot = results_[base + items[k].item];
      if (holds_r(items[k].type)) {
        slot = decode_fast<R>(items[k].bytes);
        continue;
      }
      task_result r;
      r.type = items[k].type;
      r.bytes = items[k].bytes;
      slot = convert(r);
    }
    count(n);
  }

  /// Counts `n` results in; the last one wakes take_all().
  void count(size_t n) {
    bool all;
    {
      std::lock_guard<std::mutex> guard{mu_};
      left_ -= n;
      all = left_ == 0;
    }
    if (all)
      cv_.notify_all();
  }

  /// Waits for every result, then hands them over.
  std::vector<caf::expected<R>> take_all() {
    std::unique_lock<std::mutex> lk{mu_};
    cv_.wait(lk, [this] { return left_ == 0; });
    return std::move(results_);
  }

private:
  // What a slot holds until its result comes (a value is cheaper to copy
  // than an error).
  static caf::expected<R> placeholder() {
    if constexpr (std::is_default_constructible<R>::value)
      return caf::expected<R>{R{}};
    else
      return caf::expected<R>{caf::no_error};
  }

  // Whether an encoded result of `type` decodes straight into an R.
  static bool holds_r(type_id type) {
    if constexpr (std::is_same<R, caf::message>::value) {
      return false;
    } else {
      static const auto id = registered_id(typeid(R));
      return type != 0 && type == id;
    }
  }

  static caf::expected<R> convert(task_result& r) {
    if (!r.err && holds_r(r.type))
      return decode_fast<R>(r.bytes);
    materialize(r);
    return reply_as<R>(std::move(r.reply), std::move(r.err));
  }

  std::vector<caf::expected<R>> results_;
  std::mutex mu_;
  std::condition_variable cv_;
  size_t left_;
};

/// A group with one task: fills a result slot (task_future waits on it).
class slot_group : public task_group {
public:
  void complete(size_t, caf::message reply, caf::error err) override {
    slot.fulfill(std::move(reply), std::move(err));
  }
  result_slot slot;
};

/// A group of n tasks whose results are kept by index until taken.
class collect_group : public task_group {
public:
  explicit collect_group(size_t n);
  void complete(size_t index, caf::message reply, caf::error err) override;
  void complete_many(task_result* results, size_t n) override;
  /// Waits until result `index` is there (false: `deadline` passed).
  bool wait_for(size_t index, std::chrono::steady_clock::time_point deadline);
  /// Waits until any untaken result is there; returns its index, or nullopt
  /// when `deadline` passed or every result was taken.
  std::optional<size_t> wait_any(std::chrono::steady_clock::time_point deadline);
  /// Takes result `index` (which must be there).
  std::pair<caf::message, caf::error> take(size_t index);
  /// Adds room for more tasks (imap grows as it reads its input).
  void grow(size_t n);

private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

/// Encoded input of one task.
struct encoded_task {
  type_id type = 0;
  std::string payload;
  caf::error error; // set if encoding failed: the task fails at once
};

/// The type id of task type T, or why T cannot be sent.
template <class T>
caf::expected<type_id> task_type() {
  static const auto id = registered_id(typeid(T));
  if (id == 0)
    return make_error(errc::unknown_type,
                      "task type " + type_name_of<T>()
                        + " is not registered; add MULTIPROC_MESSAGE");
  return id;
}

template <class T>
encoded_task encode_task(const T& msg) {
  encoded_task t;
  auto id = task_type<T>();
  if (!id) {
    t.error = std::move(id.error());
    return t;
  }
  t.type = *id;
  t.error = encode_fast(msg, t.payload);
  return t;
}

/// Encodes the tasks of a map: each appends its bytes to a string.
struct task_encoder {
  type_id type = 0;
  caf::error error; // the type cannot be sent: every task fails with this
  /// Appends the encoding of task `i` (what it appended is garbage if it
  /// fails).
  std::function<caf::error(size_t i, std::string& out)> append;
  /// Optional, the fast way first: appends the flat encoding of task `i`
  /// of `tasks` (detail/flat_archive.hpp) and returns true, or returns
  /// false (what it appended is garbage) when the type needs `append`.
  bool (*append_flat)(const void* tasks, size_t i, std::string& out) = nullptr;
  const void* tasks = nullptr;

  encoded_task one(size_t i) const {
    encoded_task t;
    t.type = type;
    t.error = error ? error : append(i, t.payload);
    return t;
  }
};

template <class T>
task_encoder encoder_of(const std::vector<T>& tasks) {
  task_encoder e;
  if (auto id = task_type<T>())
    e.type = *id;
  else
    e.error = std::move(id.error());
  e.append = [&tasks](size_t i, std::string& out) {
    return encode_fast(tasks[i], out);
  };
  e.append_flat = [](const void* all, size_t i, std::string& out) {
    return flat_encode((*static_cast<const std::vector<T>*>(all))[i], out);
  };
  if (faults::enabled())
    e.append_flat = nullptr; // every task through encode_fast's fault hook
  e.tasks = &tasks;
  return e;
}

} // namespace detail

/// The result of pool::submit(): like std::future<caf::expected<R>>, but a
/// waiter spins briefly before it sleeps, so a quick task's result is seen
/// without a wake-up's delay. Movable, not copyable; get() once.
template <class R>
class task_future {
public:
  task_future() = default;

  /// False when default-constructed, moved from, or after get().
  bool valid() const noexcept {
    return group_ != nullptr;
  }

  /// True when get() would not wait.
  bool ready() const noexcept {
    return group_ && group_->slot.ready();
  }

  /// Waits until the result is ready (valid() must be true).
  void wait() const {
    group_->slot.wait_until(std::chrono::steady_clock::time_point::max());
  }

  /// Waits at most `d`: ready, or timeout (valid() must be true).
  template <class Rep, class Period>
  std::future_status wait_for(const std::chrono::duration<Rep, Period>& d) const {
    auto now = std::chrono::steady_clock::now();
    auto left = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::min<std::chrono::duration<double>>(d, std::chrono::hours{24 * 365}));
    return group_->slot.wait_until(now + left) ? std::future_status::ready
                                               : std::future_status::timeout;
  }

  /// Waits until `t`: ready, or timeout (valid() must be true).
  template <class Clock, class Duration>
  std::future_status
  wait_until(const std::chrono::time_point<Clock, Duration>& t) const {
    return wait_for(t - Clock::now());
  }

  /// Waits for the result and takes it.
  caf::expected<R> get() {
    wait();
    auto group = std::move(group_);
    return detail::reply_as<R>(std::move(group->slot.reply),
                               std::move(group->slot.err));
  }

private:
  friend class pool;
  explicit task_future(std::shared_ptr<detail::slot_group> group)
    : group_(std::move(group)) {
  }
  std::shared_ptr<detail::slot_group> group_;
};

/// A lazily filled stream of results (pool::imap, pool::imap_unordered).
/// Reads its input only as the window frees up.
template <class R>
class result_stream {
public:
  /// The next result, or nullopt at the end of the input. Waits at most
  /// `timeout` for it (a result then holds errc::timeout; the stream goes on).
  std::optional<caf::expected<R>> next(
    std::chrono::milliseconds timeout = std::chrono::milliseconds::max());

  /// The input index of the result last returned by next().
  size_t last_index() const noexcept {
    return last_;
  }

private:
  friend class pool;
  std::function<std::optional<detail::encoded_task>()> input_;
  std::shared_ptr<detail::pool_core> core_;
  std::shared_ptr<detail::collect_group> group_;
  size_t window_ = 0;
  size_t fed_ = 0;
  size_t taken_ = 0;
  size_t last_ = 0;
  bool ordered_ = true;
  bool input_done_ = false;
  void top_up();
};

/// A pool of worker processes; the contract is at the top of this header.
class pool {
public:
  /// Starts the workers (all of them, before returning). Errors:
  /// invalid_argument, unknown_entry, spawn_failed, pool_broken, and those
  /// of spawn_worker().
  static caf::expected<pool> start(caf::actor_system& sys,
                                   const std::string& entry,
                                   pool_options opts = {});

  /// Takes over `other`'s workers and tasks; `other` becomes empty.
  pool(pool&&) noexcept;
  /// Terminates this pool's workers (as terminate()), then takes `other`'s.
  pool& operator=(pool&&) noexcept;
  pool(const pool&) = delete;
  pool& operator=(const pool&) = delete;

  /// terminate() unless close() finished: pending tasks fail, children are
  /// killed and reaped. Never blocks for long.
  ~pool();

  /// Queues one task; the future holds the typed result or the error.
  /// Fails at once (in the future) with errc::full, errc::closed,
  /// errc::unknown_type or errc::encode_failed.
  template <class R, class T>
  task_future<R> submit(const T& task, task_options opts = {}) {
    auto group = std::make_shared<detail::slot_group>();
    submit_encoded(detail::encode_task(task), group, 0, opts);
    return task_future<R>{std::move(group)};
  }

  /// Runs one task and waits for its result (at most `timeout`).
  template <class R, class T>
  caf::expected<R> apply(const T& task, std::chrono::milliseconds timeout
                                        = std::chrono::milliseconds::max()) {
    auto f = submit<R>(task);
    if (timeout != std::chrono::milliseconds::max()
        && f.wait_for(timeout) != std::future_status::ready)
      return make_error(errc::timeout, "the task did not finish within "
                                         + std::to_string(timeout.count())
                                         + " ms");
    return f.get();
  }

  /// Runs every task; results in input order. `chunksize` tasks go to a
  /// worker in one dispatch (0: about n / (4 × workers), as Python does).
  template <class R, class T>
  std::vector<caf::expected<R>> map(const std::vector<T>& tasks,
                                    size_t chunksize = 0) {
    auto group = std::make_shared<detail::typed_collect_group<R>>(
      tasks.size());
    // Encoded as they are admitted: no second copy of the whole input.
    submit_many(tasks.size(), detail::encoder_of(tasks), group, chunksize);
    return group->take_all();
  }

  /// map() for tasks built from argument tuples: task i is Msg{args_i...}.
  template <class R, class Msg, class... Args>
  std::vector<caf::expected<R>>
  starmap(const std::vector<std::tuple<Args...>>& args, size_t chunksize = 0) {
    std::vector<Msg> tasks;
    tasks.reserve(args.size());
    for (auto& a : args)
      tasks.push_back(std::apply(
        [](const auto&... xs) { return Msg{xs...}; }, a));
    return map<R>(tasks, chunksize);
  }

  /// Results in input order, lazily: at most `window` tasks (0: 2 × the
  /// pool's capacity in flight) are submitted ahead of the reader.
  /// `next()` yields the next input or nullopt at its end.
  template <class R, class T>
  result_stream<R> imap(std::function<std::optional<T>()> next,
                        size_t window = 0) {
    return make_stream<R, T>(std::move(next), window, true);
  }

  /// Like imap(), but results as they complete (last_index() tells which).
  template <class R, class T>
  result_stream<R> imap_unordered(std::function<std::optional<T>()> next,
                                  size_t window = 0) {
    return make_stream<R, T>(std::move(next), window, false);
  }

  /// Convenience: imap over a vector (copied; read lazily by index).
  template <class R, class T>
  result_stream<R> imap(const std::vector<T>& tasks, size_t window = 0) {
    return imap<R, T>(vector_reader(tasks), window);
  }

  /// Convenience: imap_unordered over a vector (copied; read lazily).
  template <class R, class T>
  result_stream<R> imap_unordered(const std::vector<T>& tasks,
                                  size_t window = 0) {
    return imap_unordered<R, T>(vector_reader(tasks), window);
  }

  /// Accepts no more tasks, finishes the queued ones, then stops the
  /// workers. Waits at most `timeout` (errc::timeout then; the pool keeps
  /// finishing in the background and the destructor terminates it).
  caf::error close(std::chrono::milliseconds timeout
                   = std::chrono::milliseconds::max());

  /// Stops at once: queued and in-flight tasks fail with errc::closed
  /// ("terminated"), workers are killed and reaped.
  void terminate();

  /// Listens on opts.host:opts.port (loopback unless told otherwise) for
  /// worker processes on other hosts (run_remote_worker(), `multiproc worker
  /// --connect`), which join after proving that they hold opts.secret and
  /// then get tasks like the pool's own workers. A lost or silent
  /// connection is a dead worker (its tasks run again or fail, as for a
  /// local one); remote workers are not replaced by the pool. Returns the
  /// port listened on. network.hpp and docs/distribution.md have the rest.
  caf::expected<uint16_t> publish(network_options opts);

  /// A CAF actor that runs each request it gets as a task and replies with
  /// its result: use it with self->request(pool.handle(), ...).
  caf::actor handle() const;

  /// The live workers.
  std::vector<worker_info> workers() const;

  /// Number of worker processes the pool keeps (0 with remote_only; remote
  /// workers come and go on their own: see workers()).
  size_t size() const noexcept;

  /// The counters now, with in_flight and workers as of this call.
  pool_stats stats() const;

private:
  explicit pool(std::shared_ptr<detail::pool_core> core);

  void submit_encoded(detail::encoded_task task,
                      std::shared_ptr<detail::task_group> group, size_t index,
                      const task_options& opts);
  void submit_many(size_t n, const detail::task_encoder& encode,
                   std::shared_ptr<detail::task_group> group,
                   size_t chunksize);
  size_t default_window() const noexcept;

  template <class T>
  static std::function<std::optional<T>()> vector_reader(
    const std::vector<T>& tasks) {
    auto data = std::make_shared<const std::vector<T>>(tasks);
    return [data, i = size_t{0}]() mutable -> std::optional<T> {
      if (i == data->size())
        return std::nullopt;
      return (*data)[i++];
    };
  }

  template <class R, class T>
  result_stream<R> make_stream(std::function<std::optional<T>()> next,
                               size_t window, bool ordered) {
    result_stream<R> s;
    s.input_ = [next = std::move(next)]()
      -> std::optional<detail::encoded_task> {
      auto x = next();
      if (!x)
        return std::nullopt;
      return detail::encode_task(*x);
    };
    s.core_ = core_;
    s.group_ = std::make_shared<detail::collect_group>(0);
    s.window_ = window != 0 ? window : default_window();
    s.ordered_ = ordered;
    return s;
  }

  template <class R>
  friend class result_stream;

  std::shared_ptr<detail::pool_core> core_;
};

/// Adds a pool's counters, gauges and latency histogram to `out` under the
/// label pool=`name`: multiproc_pool_tasks_*_total, multiproc_pool_tasks_
/// in_flight and _queued, multiproc_pool_workers, multiproc_pool_worker_
/// restarts_total{cause=signal|exit|deadline|recycled},
/// multiproc_pool_worker_start_failures_total and the
/// multiproc_pool_task_latency_seconds histogram (docs/metrics.md).
void add_metrics(metrics_snapshot& out, const std::string& name,
                 const pool_stats& s);
/// The same with p.stats() (metrics_registry::add(name, pool)).
void add_metrics(metrics_snapshot& out, const std::string& name,
                 const pool& p);

namespace detail {

/// Submits one task of a stream (used by result_stream).
void stream_submit(pool_core& core, encoded_task task,
                   std::shared_ptr<task_group> group, size_t index);

} // namespace detail

template <class R>
void result_stream<R>::top_up() {
  while (!input_done_ && fed_ - taken_ < window_) {
    auto task = input_();
    if (!task) {
      input_done_ = true;
      break;
    }
    group_->grow(1);
    detail::stream_submit(*core_, std::move(*task), group_, fed_);
    ++fed_;
  }
}

template <class R>
std::optional<caf::expected<R>>
result_stream<R>::next(std::chrono::milliseconds timeout) {
  top_up();
  if (taken_ == fed_)
    return std::nullopt;
  auto deadline = timeout == std::chrono::milliseconds::max()
                    ? std::chrono::steady_clock::time_point::max()
                    : std::chrono::steady_clock::now() + timeout;
  size_t index;
  if (ordered_) {
    index = taken_;
    if (!group_->wait_for(index, deadline))
      return caf::expected<R>{make_error(
        errc::timeout, "no result within " + std::to_string(timeout.count())
                         + " ms")};
  } else {
    auto any = group_->wait_any(deadline);
    if (!any)
      return caf::expected<R>{make_error(
        errc::timeout, "no result within " + std::to_string(timeout.count())
                         + " ms")};
    index = *any;
  }
  auto [reply, err] = group_->take(index);
  ++taken_;
  last_ = index;
  top_up();
  return detail::reply_as<R>(std::move(reply), std::move(err));
}

} // namespace multiproc
