// The process pool: a ledger of tasks over a set of worker actors.
//
// Threads: callers submit (and may block for room); each worker's I/O thread
// delivers replies and, once, the worker's exit (on_exit, before requests in
// flight fail); the pool's supervisor thread starts replacements, stops
// workers (deadlines, max_tasks_per_child) and reaps the dead. All ledger
// state is guarded by one mutex; frames are written and results delivered
// outside it (a write may wait for a worker whose I/O thread needs the
// mutex).
#include "multiproc/pool.hpp"

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <tuple>
#include <unordered_map>

#include <sys/mman.h>

#include <caf/actor_cast.hpp>
#include <caf/actor_config.hpp>
#include <caf/make_actor.hpp>
#include <caf/mailbox_element.hpp>
#include <caf/monitorable_actor.hpp>

#include "multiproc/envelope.hpp"
#include "multiproc/faults.hpp"
#include "network_impl.hpp"

namespace multiproc::detail {

using clock_type = std::chrono::steady_clock;

void prefer_huge_pages(void* data, size_t size) noexcept {
  constexpr size_t huge = size_t{2} << 20;
  auto first = (reinterpret_cast<uintptr_t>(data) + huge - 1) & ~(huge - 1);
  auto last = (reinterpret_cast<uintptr_t>(data) + size) & ~(huge - 1);
  if (data == nullptr || last <= first)
    return;
  [[maybe_unused]] int rc = ::madvise(reinterpret_cast<void*>(first),
                                      last - first, MADV_HUGEPAGE);
}

void materialize(task_result& r) {
  if (r.type == 0)
    return;
  if (!r.err)
    r.err = faults::check(faults::point::parent_decode_result);
  if (!r.err) {
    auto msg = multiproc::decode_message(r.type, r.bytes);
    if (msg)
      r.reply = std::move(*msg);
    else
      r.err = std::move(msg.error());
  }
  r.type = 0;
  r.bytes = {};
}

// -- collect_group ------------------------------------------------------------

struct collect_group::impl {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<caf::message, caf::error>> results;
  std::vector<char> ready; // 0: pending, 1: there, 2: taken
  std::deque<size_t> arrivals; // for wait_any
  // What a waiter waits for (no wake-up per result otherwise).
  size_t want_index = SIZE_MAX;
  bool want_any = false;
};

collect_group::collect_group(size_t n) : impl_(std::make_shared<impl>()) {
  impl_->results.resize(n);
  impl_->ready.resize(n, 0);
}

void collect_group::complete(size_t index, caf::message reply,
                             caf::error err) {
  task_result r{index, std::move(reply), std::move(err), 0, {}};
  complete_many(&r, 1);
}

void collect_group::complete_many(task_result* results, size_t n) {
  for (size_t i = 0; i < n; ++i)
    materialize(results[i]);
  bool wanted = false;
  {
    std::lock_guard<std::mutex> guard{impl_->mu};
    for (size_t i = 0; i < n; ++i) {
      auto index = results[i].index;
      impl_->results[index] = {std::move(results[i].reply),
                               std::move(results[i].err)};
      impl_->ready[index] = 1;
      impl_->arrivals.push_back(index);
      wanted = wanted || impl_->want_index == index;
    }
    wanted = wanted || impl_->want_any;
  }
  if (wanted)
    impl_->cv.notify_all();
}

bool collect_group::wait_for(size_t index, clock_type::time_point deadline) {
  std::unique_lock<std::mutex> lk{impl_->mu};
  impl_->want_index = index;
  auto ok = impl_->cv.wait_until(lk, deadline,
                                 [&] { return impl_->ready[index] != 0; });
  impl_->want_index = SIZE_MAX;
  return ok;
}

std::optional<size_t> collect_group::wait_any(clock_type::time_point deadline) {
  std::unique_lock<std::mutex> lk{impl_->mu};
  for (;;) {
    while (!impl_->arrivals.empty()) {
      auto i = impl_->arrivals.front();
      impl_->arrivals.pop_front();
      if (impl_->ready[i] == 1) {
        impl_->want_any = false;
        return i;
      }
    }
    impl_->want_any = true;
    if (impl_->cv.wait_until(lk, deadline) == std::cv_status::timeout
        && impl_->arrivals.empty()) {
      impl_->want_any = false;
      return std::nullopt;
    }
  }
}

std::pair<caf::message, caf::error> collect_group::take(size_t index) {
  std::lock_guard<std::mutex> guard{impl_->mu};
  impl_->ready[index] = 2;
  return std::move(impl_->results[index]);
}

void collect_group::grow(size_t n) {
  std::lock_guard<std::mutex> guard{impl_->mu};
  impl_->results.resize(impl_->results.size() + n);
  impl_->ready.resize(impl_->ready.size() + n, 0);
}

// -- the ledger ---------------------------------------------------------------

namespace {

/// The last lines a worker wrote to stderr (filled on the output thread).
struct stderr_tail {
  std::mutex mu;
  std::deque<std::string> lines;
  size_t keep = 5;

  void add(const std::string& line) {
    std::lock_guard<std::mutex> guard{mu};
    lines.push_back(line);
    while (lines.size() > keep)
      lines.pop_front();
  }

  std::string text() {
    std::lock_guard<std::mutex> guard{mu};
    std::string out;
    for (auto& l : lines) {
      if (!out.empty())
        out += " | ";
      out += l;
    }
    return out;
  }
};

/// A task's encoded input: small ones inline (copied cheaply into a send),
/// larger ones shared.
struct payload_ref {
  std::string small;
  std::shared_ptr<const std::string> big;

  static payload_ref of(std::string bytes) {
    payload_ref p;
    if (bytes.size() <= 15) // fits std::string's inline buffer
      p.small = std::move(bytes);
    else
      p.big = std::make_shared<const std::string>(std::move(bytes));
    return p;
  }

  std::string_view view() const noexcept {
    return big ? std::string_view{*big} : std::string_view{small};
  }
};

struct task_rec {
  uint64_t id = 0; // submission number, names the task in errors; 0: free
  type_id type = 0;
  payload_ref payload;
  std::shared_ptr<task_group> group;
  size_t index = 0;
  std::chrono::milliseconds timeout{0};
  uint64_t worker = 0; // incarnation holding it; 0 while queued
  int attempts = 0;    // runs that ended in its worker's death
  size_t rerun_group = 1; // a suspect runs with up to this many others
  std::vector<std::string> deaths;
  // A chunk: `count` tasks (items index .. index + count - 1 of the group)
  // whose payload holds the encoded items; they travel in one frame and
  // their results come back together. A chunk whose worker dies is split
  // into single tasks for what it did not answer.
  uint32_t count = 1;
  uint32_t left = 1;      // items not finished
  std::vector<char> got;  // chunk: which items finished
  clock_type::time_point submitted_at{}; // for the latency histogram
};

/// The unfinished tasks by id. Ids are handed out in order and most tasks
/// finish roughly in order, so a deque indexed by id (a finished task leaves
/// a hole until the ones before it finish) does without a hash map's
/// allocation and hashing per task. Tasks left far behind by a long run of
/// finished ones move to a map, so holes stay bounded.
class task_table {
public:
  /// Adds task `id`, which must be the next id.
  task_rec& add(uint64_t id) {
    if (slots_.empty())
      base_ = id;
    slots_.emplace_back();
    ++live_;
    auto& t = slots_.back();
    t.id = id;
    return t;
  }

  task_rec* find(uint64_t id) {
    if (id >= base_ && id - base_ < slots_.size()) {
      auto& t = slots_[id - base_];
      return t.id == id ? &t : nullptr;
    }
    auto i = far_.find(id);
    return i == far_.end() ? nullptr : &i->second;
  }

  void erase(uint64_t id) {
    --live_;
    if (id >= base_ && id - base_ < slots_.size()) {
      slots_[id - base_] = task_rec{};
      while (!slots_.empty() && slots_.front().id == 0) {
        slots_.pop_front();
        ++base_;
      }
      compact();
    } else {
      far_.erase(id);
    }
  }

  size_t size() const noexcept {
    return live_;
  }

  bool empty() const noexcept {
    return live_ == 0;
  }

  /// The ids of all tasks, in order.
  std::vector<uint64_t> ids() const {
    std::vector<uint64_t> out;
    out.reserve(live_);
    for (auto& kvp : far_)
      out.push_back(kvp.first);
    for (auto& t : slots_)
      if (t.id != 0)
        out.push_back(t.id);
    std::sort(out.begin(), out.end());
    return out;
  }

private:
  void compact() {
    // Holes may make up at most half of the deque (plus some slack).
    size_t in_deque = live_ - far_.size();
    while (slots_.size() > 2 * in_deque + 4096) {
      auto& t = slots_.front();
      if (t.id != 0)
        far_.emplace(t.id, std::move(t));
      slots_.pop_front();
      ++base_;
    }
  }

  std::deque<task_rec> slots_;
  uint64_t base_ = 1;
  size_t live_ = 0;
  std::unordered_map<uint64_t, task_rec> far_;
};

struct reply_entry {
  uint64_t tag;
  uint32_t item;
  caf::message reply;
  caf::error err;
  type_id type; // not 0: the reply is still encoded, in the worker's arena
  size_t offset;
  size_t size;
};

struct completion {
  std::shared_ptr<task_group> group;
  task_result result;
};

} // namespace

class worker_rec;

/// The adaptive window (pool_options::window = 0): each worker's starts
/// small (slow tasks spread over the workers from the start), then holds
/// about window_target of work at the worker's measured pace, between
/// min_window and max_window tasks.
constexpr size_t initial_window = 4;
constexpr size_t min_window = 2;
constexpr size_t max_window = 1024;
constexpr auto window_target = std::chrono::milliseconds{2};
/// imap's default window is twice this per worker unless a window is set.
constexpr size_t imap_base_window = 64;
/// A pace is measured over at least this many tasks and this much busy time.
constexpr size_t pace_sample_tasks = 32;
constexpr auto pace_sample_time = std::chrono::microseconds{200};

/// The largest chunk size map() chooses by itself.
constexpr size_t max_auto_chunk = 4096;
/// A chunk ends once its items take this many bytes; a task of
/// max_batched_payload bytes or more travels alone.
constexpr size_t max_chunk_bytes = size_t{1} << 20;

class pool_core : public std::enable_shared_from_this<pool_core> {
public:
  pool_core(caf::actor_system& sys, std::string entry, pool_options opts);
  ~pool_core();

  caf::error start_all();
  /// Listens for remote workers (pool::publish).
  caf::expected<uint16_t> publish(network_options opts);
  void submit(encoded_task task, std::shared_ptr<task_group> group,
              size_t index, const task_options& topts);
  void submit_many(size_t n, const task_encoder& encode,
                   std::shared_ptr<task_group> group, size_t chunksize);
  caf::error close(std::chrono::milliseconds timeout);
  void terminate();
  std::vector<worker_info> workers() const;
  pool_stats stats() const;
  size_t size() const noexcept {
    return opts_.workers;
  }
  /// The window imap's default is based on.
  size_t window() const noexcept {
    return opts_.window != 0 ? opts_.window : imap_base_window;
  }
  caf::actor_system& system() {
    return sys_;
  }

  // Called by worker_rec (I/O threads).
  void on_replies(worker_rec& w, std::vector<reply_entry>& batch);
  bool on_chunk_reply(worker_rec& w, uint64_t tag,
                      const chunk_reply_item* items, size_t n);
  /// Sets an adaptive window from the worker's pace (pool_options::window).
  void adapt_window(worker_rec& w, clock_type::time_point now);
  void on_exit(worker_rec& w, const caf::expected<exit_status>& st);

private:
  struct send_item {
    uint64_t task;
    type_id type;
    payload_ref payload;
    uint32_t chunk_items; // 0: a single task
  };

  /// Tasks for one worker, sent together.
  struct send_op {
    caf::actor handle;
    std::shared_ptr<worker_rec> worker;
    std::vector<send_item> items;
    bool immediate = false;
  };

  using lock_type = std::unique_lock<std::mutex>;

  /// Adds a task to the ledger (lock held); completes it at once on error.
  void admit(lock_type& lk, encoded_task task,
             std::shared_ptr<task_group> group, size_t index,
             std::chrono::milliseconds timeout, when_full on_full,
             std::vector<completion>& done, uint32_t count = 1);
  /// Assigns queued tasks to workers with room (lock held).
  void dispatch(std::vector<send_op>& out);
  void perform(std::vector<send_op>& ops);
  static void deliver(std::vector<completion>& done);
  /// Fails every unfinished item of task `id`.
  void fail_task(uint64_t id, caf::error err, std::vector<completion>& done);
  /// Wakes who waits for room or for the end, after tasks finished (locked).
  void after_finish();
  /// Books `items` answered items of task `tag` against `w`, which no
  /// longer holds the task if `last` (locked).
  void answered(worker_rec& w, uint64_t tag, size_t items, bool last,
                clock_type::time_point now);
  /// After a worker's answers: its window, its retirement, more work
  /// (locked).
  void after_answers(worker_rec& w, clock_type::time_point now,
                     std::vector<send_op>& ops);
  /// Finishes item `item` of `t` (0 for a single task); erases `t` after
  /// its last item. `now` (default: read here) ends its latency.
  void finish_task(task_rec& t, uint32_t item, caf::message reply,
                   caf::error err, std::vector<completion>& done,
                   type_id type = 0, std::string_view bytes = {},
                   clock_type::time_point now = {});
  /// Replaces chunk `t`, in flight on `w`, by single tasks for its
  /// unfinished items (appended to `held` in order).
  void split_chunk(task_rec& t, worker_rec& w, std::vector<uint64_t>& held);
  void submit_chunks(size_t n, const task_encoder& encode,
                     const std::shared_ptr<task_group>& group,
                     size_t chunksize);
  void break_pool(caf::error why, std::vector<completion>& done);

  /// Starts one worker (no lock held); returns it ready, or the error.
  caf::expected<std::shared_ptr<worker_rec>> start_worker(size_t slot);
  void supervise();
  /// Adopts a remote worker that authenticated (a gateway thread).
  void add_remote(joined_worker j);
  /// The options of a worker's bridge, with its exit reported to on_exit().
  worker_options bridge_options(worker_rec& w, std::string name);
  /// Stops listening for remote workers (waits for adoptions under way).
  void stop_gateway();
  /// Calls on_progress if the counters changed (lock held; released around
  /// the call).
  void report_progress(lock_type& lk);
  /// The counters with the gauges filled in (lock held).
  pool_stats stats_locked() const;

  caf::actor_system& sys_;
  std::string entry_;
  pool_options opts_;
  size_t window_;

  mutable std::mutex mu_;
  std::condition_variable room_cv_; // submitters waiting for room
  std::condition_variable idle_cv_; // close() waiting for an empty ledger
  std::condition_variable sup_cv_;  // the supervisor's wake-up
  task_table tasks_;
  size_t pending_ = 0; // tasks (not chunks) queued or in flight
  std::deque<uint64_t> queue_;
  std::deque<uint64_t> suspects_; // run alone, before queue_
  std::vector<std::shared_ptr<worker_rec>> live_;
  std::vector<std::shared_ptr<worker_rec>> dead_; // to reap
  uint64_t next_task_ = 1;
  uint64_t dispatch_round_ = 0;
  size_t room_waiters_ = 0; // threads waiting on room_cv_
  uint64_t next_worker_ = 1;
  size_t next_slot_ = 0;
  size_t rr_ = 0;
  uint64_t idle_events_ = 0; // worker_rec::last_idle
  int start_failures_ = 0;
  bool closing_ = false;
  bool stopping_ = false; // supervisor: exit
  caf::error broken_;
  pool_stats stats_;
  pool_stats reported_; // what on_progress saw last
  clock_type::time_point last_progress_{}; // when it was called last
  std::thread supervisor_;
  std::mutex gateway_mu_; // publish() and stop_gateway()
  std::unique_ptr<gateway> gateway_;
};

/// Receives the initializer's outcome (lives as long as its worker_rec).
struct init_sink : reply_sink {
  std::promise<caf::error> done;
  void on_reply(uint64_t, uint32_t, caf::message, caf::error err) override {
    done.set_value(std::move(err));
  }
};

/// One worker incarnation. Replies are buffered per batch of frames and
/// entered into the ledger under one lock.
class worker_rec : public reply_sink {
public:
  worker_rec(pool_core* core, uint64_t id, size_t slot)
    : core_(core), id(id), slot(slot), tail(std::make_shared<stderr_tail>()) {
  }

  void on_reply(uint64_t tag, uint32_t item, caf::message reply,
                caf::error err) override {
    replies.push_back({tag, item, std::move(reply), std::move(err), 0, 0, 0});
  }

  bool on_reply_bytes(uint64_t tag, uint32_t item, type_id type,
                      std::string_view bytes) override {
    // Decoded by the group that gets it (map: straight into its result).
    replies.push_back({tag, item, {}, {}, type, arena.size(), bytes.size()});
    arena.append(bytes.data(), bytes.size());
    return true;
  }

  bool on_chunk_reply(uint64_t tag, const chunk_reply_item* items,
                      size_t n) override {
    return core_->on_chunk_reply(*this, tag, items, n);
  }

  void on_batch_end() override {
    if (!replies.empty())
      core_->on_replies(*this, replies);
    arena.clear();
  }

  std::vector<reply_entry> replies; // I/O thread only
  std::string arena;                // I/O thread only: encoded replies
  init_sink init;

  std::string who() const {
    return info.name + "[" + std::to_string(info.pid) + "]";
  }

  pool_core* core_;
  uint64_t id;
  size_t slot;
  caf::actor handle;
  worker_info info;
  std::shared_ptr<stderr_tail> tail;
  // Guarded by the pool's mutex:
  std::deque<uint64_t> in_flight; // dispatch order
  size_t in_flight_tasks = 0;     // their unfinished items
  clock_type::time_point front_since{};
  size_t dispatched = 0;
  size_t window = 0; // tasks it may hold (adaptive unless set)
  // Its pace, for the adaptive window: tasks finished and time spent with
  // tasks in flight since the sample began.
  size_t pace_tasks = 0;
  clock_type::duration pace_busy{};
  clock_type::time_point busy_since{};
  uint64_t last_idle = 0; // when its last task finished (pool's counter)
  bool retiring = false;  // max_tasks_per_child reached: no more tasks
  bool stopping = false;  // the pool stops it (retire, deadline, close)
  uint64_t overdue = 0;   // the task whose deadline stopped it
  clock_type::time_point kill_at = clock_type::time_point::max();
  bool dead = false;
  bool solo = false; // runs a group of suspects and nothing else
  bool remote = false; // joined over the network: not replaced when it dies
  // Which op of the current dispatch() call sends to this worker.
  uint64_t op_round = 0;
  size_t op_index = 0;
};

// -- pool_core ----------------------------------------------------------------

pool_core::pool_core(caf::actor_system& sys, std::string entry,
                     pool_options opts)
  : sys_(sys), entry_(std::move(entry)), opts_(std::move(opts)) {
  if (opts_.remote_only)
    opts_.workers = 0;
  else if (opts_.workers == 0)
    opts_.workers = std::max(1u, std::thread::hardware_concurrency());
  if (opts_.name.empty())
    opts_.name = entry_;
  window_ = opts_.window != 0 ? opts_.window : initial_window;
}

pool_core::~pool_core() {
  terminate();
  // The remote workers' links are gone with their worker_recs: the node's
  // actor system may end now.
  gateway_.reset();
}

caf::expected<std::shared_ptr<worker_rec>>
pool_core::start_worker(size_t slot) {
  uint64_t id;
  {
    std::lock_guard<std::mutex> guard{mu_};
    id = next_worker_++;
  }
  auto w = std::make_shared<worker_rec>(this, id, slot);
  auto wopts = bridge_options(*w, opts_.name + "-" + std::to_string(slot));
  auto handle = spawn_worker(sys_, entry_, std::move(wopts));
  if (!handle)
    return std::move(handle.error());
  w->handle = *handle;
  if (auto info = info_of(*handle))
    w->info = *info;
  if (opts_.initializer) {
    auto result = w->init.done.get_future();
    auto err = send_encoded_request(*handle, opts_.initializer->first,
                                    opts_.initializer->second, &w->init, 0,
                                    true);
    if (!err) {
      if (result.wait_for(opts_.start_timeout) == std::future_status::ready)
        err = result.get();
      else
        err = make_error(errc::timeout, "the initializer did not finish within "
                                          + std::to_string(
                                            opts_.start_timeout.count())
                                          + " ms");
    }
    if (err) {
      auto why = make_error(errc::pool_broken,
                            "the initializer failed on worker " + w->who()
                              + ": " + describe(err));
      [[maybe_unused]] auto st = kill_worker(*handle);
      return why;
    }
  }
  return w;
}

worker_options pool_core::bridge_options(worker_rec& w, std::string name) {
  w.window = window_;
  w.tail->keep = opts_.stderr_tail;
  worker_options wopts;
  wopts.method = opts_.method;
  wopts.name = std::move(name);
  wopts.start_timeout = opts_.start_timeout;
  wopts.shutdown_timeout = std::chrono::milliseconds{2000};
  wopts.busy_poll = opts_.busy_poll;
  wopts.transport = opts_.transport;
  auto user_sink = opts_.sink ? opts_.sink : default_output_sink();
  wopts.sink = [tail = w.tail, user_sink](const output_line& line) {
    if (line.is_stderr)
      tail->add(line.text);
    user_sink(line);
  };
  std::weak_ptr<pool_core> weak = shared_from_this();
  worker_rec* raw = &w;
  // The worker_rec outlives its bridge's callbacks: the pool keeps it until
  // the supervisor has reaped the worker (after its last callback).
  wopts.on_exit = [weak, raw](const caf::expected<exit_status>& st) {
    if (auto core = weak.lock())
      core->on_exit(*raw, st);
  };
  return wopts;
}

caf::expected<uint16_t> pool_core::publish(network_options opts) {
  std::lock_guard<std::mutex> guard{gateway_mu_};
  {
    std::lock_guard<std::mutex> lk{mu_};
    if (closing_)
      return make_error(errc::closed, "the pool " + opts_.name
                                        + " is closing: it cannot publish");
  }
  if (gateway_)
    return make_error(errc::invalid_argument,
                      "the pool " + opts_.name + " is published already, on "
                        "port " + std::to_string(gateway_->port()));
  std::weak_ptr<pool_core> weak = shared_from_this();
  auto g = gateway::start(std::move(opts), entry_, "pool " + opts_.name,
                          channel_options{}, [weak](joined_worker j) {
                            if (auto core = weak.lock())
                              core->add_remote(std::move(j));
                          });
  if (!g)
    return std::move(g.error());
  gateway_ = std::move(*g);
  return gateway_->port();
}

void pool_core::add_remote(joined_worker j) {
  uint64_t id;
  {
    std::lock_guard<std::mutex> guard{mu_};
    id = next_worker_++;
  }
  auto w = std::make_shared<worker_rec>(this, id, size_t{0});
  w->remote = true;
  auto wopts = bridge_options(*w, j.info.name);
  wopts.start_timeout = gateway_->handshake_timeout(); // its hello
  auto who = j.info.name + "[" + std::to_string(j.info.pid) + "] on "
             + j.info.node;
  auto link = j.link;
  auto handle = detail::adopt_worker(sys_, std::make_unique<remote_peer>(link),
                                     std::make_unique<actor_link>(link),
                                     std::move(wopts), j.info);
  if (!handle) {
    gateway_->log("rejected worker " + who + ": " + describe(handle.error()));
    return;
  }
  w->handle = *handle;
  w->info = j.info;
  std::vector<send_op> ops;
  {
    std::lock_guard<std::mutex> guard{mu_};
    ++stats_.workers_started;
    if (closing_ || stopping_ || w->dead) {
      w->stopping = true;
      dead_.push_back(std::move(w));
      sup_cv_.notify_all();
    } else {
      live_.push_back(std::move(w));
      dispatch(ops);
    }
  }
  gateway_->log("worker " + who + " joined");
  perform(ops);
}

void pool_core::stop_gateway() {
  std::lock_guard<std::mutex> guard{gateway_mu_};
  if (gateway_)
    gateway_->stop_listening();
}

caf::error pool_core::start_all() {
  caf::error last;
  while (true) {
    {
      std::lock_guard<std::mutex> guard{mu_};
      if (live_.size() >= opts_.workers) {
        // From now on the supervisor replaces workers.
        supervisor_ = std::thread{[this] { supervise(); }};
        return caf::none;
      }
      if (start_failures_ >= opts_.max_start_failures)
        return make_error(errc::pool_broken,
                          std::to_string(start_failures_)
                            + " workers in a row failed to start; the last: "
                            + describe(last));
    }
    auto w = start_worker(next_slot_);
    std::lock_guard<std::mutex> guard{mu_};
    if (!w) {
      ++start_failures_;
      ++stats_.start_failures;
      last = w.error();
      continue;
    }
    ++next_slot_;
    ++stats_.workers_started;
    if ((*w)->dead) { // died at once: count it as a failure
      ++start_failures_;
      ++stats_.start_failures;
      last = make_error(errc::worker_died, "worker " + (*w)->who()
                                             + " died right after it started");
      dead_.push_back(std::move(*w));
      continue;
    }
    start_failures_ = 0;
    live_.push_back(std::move(*w));
  }
}

void pool_core::deliver(std::vector<completion>& done) {
  // Runs of one group's results go to it at once.
  std::vector<task_result> run;
  for (size_t i = 0; i < done.size();) {
    auto& group = done[i].group;
    size_t j = i + 1;
    while (j < done.size() && done[j].group == group)
      ++j;
    if (j - i == 1) {
      group->complete_many(&done[i].result, 1);
    } else {
      run.clear();
      run.reserve(j - i);
      for (size_t k = i; k < j; ++k)
        run.push_back(std::move(done[k].result));
      group->complete_many(run.data(), run.size());
    }
    i = j;
  }
  done.clear();
}

void pool_core::finish_task(task_rec& t, uint32_t item, caf::message reply,
                            caf::error err, std::vector<completion>& done,
                            type_id type, std::string_view bytes,
                            clock_type::time_point now) {
  if (err) {
    ++stats_.failed;
    if (err == errc::task_quarantined)
      ++stats_.quarantined;
    else if (err == errc::timeout)
      ++stats_.timed_out;
  } else {
    ++stats_.succeeded;
  }
  if (now == clock_type::time_point{})
    now = clock_type::now();
  stats_.latency.record(now - t.submitted_at);
  --pending_;
  if (t.count > 1)
    t.got[item] = 1;
  bool last = --t.left == 0;
  done.push_back({last ? std::move(t.group) : t.group,
                  {t.index + item, std::move(reply), std::move(err), type,
                   bytes}});
  if (last)
    tasks_.erase(t.id);
  after_finish();
}

void pool_core::after_finish() {
  // A waiting submitter wakes once an eighth of max_pending is free (room
  // for a few chunks), not for each finished task.
  if (room_waiters_ != 0
      && pending_ + opts_.max_pending / 8 < opts_.max_pending)
    room_cv_.notify_one();
  if (tasks_.empty())
    idle_cv_.notify_all();
}

void pool_core::fail_task(uint64_t id, caf::error err,
                          std::vector<completion>& done) {
  auto* t = tasks_.find(id);
  if (t == nullptr)
    return;
  if (t->count == 1) {
    finish_task(*t, 0, {}, std::move(err), done);
    return;
  }
  // finish_task() may erase (and the table move) the record: look it up
  // again each time.
  for (uint32_t k = 0, n = t->count; k < n; ++k) {
    t = tasks_.find(id);
    if (t == nullptr)
      break;
    if (!t->got[k])
      finish_task(*t, k, {}, err, done);
  }
}

void pool_core::split_chunk(task_rec& t, worker_rec& w,
                            std::vector<uint64_t>& held) {
  std::vector<wire::chunk_item> items;
  // The payload was built by submit_chunks(): it parses.
  [[maybe_unused]] auto err = wire::read_chunk(wire::kind::chunk_request,
                                               t.payload.view(), items);
  bool first = true;
  for (uint32_t k = 0; k < t.count && k < items.size(); ++k) {
    if (t.got[k])
      continue;
    auto id = next_task_++;
    auto& s = tasks_.add(id); // a deque: `t` stays where it is
    s.type = items[k].type;
    s.payload = payload_ref::of(std::string{items[k].payload});
    s.group = t.group;
    s.index = t.index + k;
    s.timeout = t.timeout;
    s.submitted_at = t.submitted_at;
    s.worker = w.id;
    held.push_back(id);
    if (first && w.overdue == t.id)
      w.overdue = id; // the item that was running
    first = false;
  }
  tasks_.erase(t.id);
}

void pool_core::admit(lock_type& lk, encoded_task task,
                      std::shared_ptr<task_group> group, size_t index,
                      std::chrono::milliseconds timeout, when_full on_full,
                      std::vector<completion>& done, uint32_t count) {
  auto fail_all = [&](caf::error err) {
    for (uint32_t k = 0; k < count; ++k)
      done.push_back({group, {index + k, {}, err, 0, {}}});
  };
  if (task.error) {
    fail_all(std::move(task.error));
    return;
  }
  auto refuse = [&]() -> caf::error {
    if (broken_)
      return broken_;
    if (closing_)
      return make_error(errc::closed, "the pool " + opts_.name
                                        + " is closed; it takes no tasks");
    return caf::none;
  };
  if (auto err = refuse()) {
    fail_all(std::move(err));
    return;
  }
  if (pending_ >= opts_.max_pending) {
    if (on_full == when_full::fail) {
      fail_all(make_error(errc::full, "the pool " + opts_.name + " holds "
                                        + std::to_string(pending_)
                                        + " tasks (max_pending)"));
      return;
    }
    ++room_waiters_;
    room_cv_.wait(lk, [&] {
      return pending_ < opts_.max_pending || closing_ || broken_;
    });
    --room_waiters_;
    if (auto err = refuse()) {
      fail_all(std::move(err));
      return;
    }
  }
  auto id = next_task_++;
  auto& t = tasks_.add(id);
  t.type = task.type;
  t.payload = payload_ref::of(std::move(task.payload));
  t.group = std::move(group);
  t.index = index;
  t.timeout = timeout.count() != 0 ? timeout : opts_.task_timeout;
  t.count = count;
  t.left = count;
  if (count > 1)
    t.got.assign(count, 0);
  t.submitted_at = clock_type::now();
  queue_.push_back(id);
  pending_ += count;
  stats_.submitted += count;
}

void pool_core::dispatch(std::vector<send_op>& out) {
  if (live_.empty())
    return;
  ++dispatch_round_;
  auto usable = [&](const worker_rec& w) {
    return !w.dead && !w.retiring && !w.stopping && !w.solo;
  };
  auto send = [&](const std::shared_ptr<worker_rec>& w, uint64_t id,
                  bool immediate) {
    auto& t = *tasks_.find(id);
    t.worker = w->id;
    if (w->in_flight.empty())
      w->front_since = w->busy_since = clock_type::now();
    w->in_flight.push_back(id);
    w->in_flight_tasks += t.left;
    w->dispatched += t.count;
    // One send per worker and dispatch: find this worker's op.
    if (w->op_round != dispatch_round_ || w->op_index >= out.size()
        || out[w->op_index].worker != w) {
      w->op_round = dispatch_round_;
      w->op_index = out.size();
      out.push_back({w->handle, w, {}, false});
      out.back().items.reserve(std::min(queue_.size() + 1, window_ * 4));
    }
    auto& op = out[w->op_index];
    op.items.push_back({id, t.type, t.payload, t.count > 1 ? t.count : 0});
    op.immediate |= immediate;
    if (opts_.max_tasks_per_child != 0
        && w->dispatched >= opts_.max_tasks_per_child)
      w->retiring = true;
  };
  // Suspects first, each alone on an idle worker. While any wait, other
  // tasks wait too, so that workers drain and take them.
  while (!suspects_.empty()) {
    auto w = std::find_if(live_.begin(), live_.end(), [&](auto& x) {
      return usable(*x) && x->in_flight.empty();
    });
    if (w == live_.end())
      return;
    auto id = suspects_.front();
    suspects_.pop_front();
    auto* t = tasks_.find(id);
    if (t == nullptr)
      continue;
    (*w)->solo = true;
    size_t group = t->rerun_group;
    send(*w, id, group <= 1);
    // Suspects of the same size class go with it, up to the group's size.
    while (--group > 0 && !suspects_.empty()) {
      auto* next = tasks_.find(suspects_.front());
      if (next != nullptr && next->rerun_group <= 1)
        break;
      auto next_id = suspects_.front();
      suspects_.pop_front();
      if (next != nullptr)
        send(*w, next_id, false);
    }
  }
  // One task or chunk per worker in turn, up to a window of tasks each (two
  // chunks, for big ones).
  size_t n = live_.size();
  size_t idle_rounds = 0;
  bool look_idle = true;
  while (!queue_.empty() && idle_rounds < n) {
    auto id = queue_.front();
    auto* head = tasks_.find(id);
    if (head == nullptr) {
      queue_.pop_front();
      continue;
    }
    // An idle worker first, the one whose last task finished last: it is
    // still polling for work (busy_poll) and its caches are warm. Then each
    // in turn.
    const std::shared_ptr<worker_rec>* idle = nullptr;
    if (look_idle) {
      for (auto& x : live_)
        if (usable(*x) && x->in_flight.empty()
            && (idle == nullptr || x->last_idle > (*idle)->last_idle))
          idle = &x;
      look_idle = idle != nullptr;
    }
    auto& w = idle != nullptr ? *idle : live_[rr_++ % n];
    if (usable(*w) && opts_.max_tasks_per_child != 0 && head->count > 1
        && w->dispatched + head->count > opts_.max_tasks_per_child)
      w->retiring = true; // the chunk does not fit: replace the worker early
    size_t per_worker = head->count > 1
                          ? std::max<size_t>(w->window, 2 * head->count)
                          : w->window;
    if (!usable(*w) || w->in_flight_tasks >= per_worker) {
      ++idle_rounds;
      continue;
    }
    idle_rounds = 0;
    queue_.pop_front();
    send(w, id, w->in_flight.empty() && queue_.empty());
  }
}

void pool_core::perform(std::vector<send_op>& ops) {
  std::vector<encoded_request> reqs;
  for (auto& op : ops) {
    reqs.clear();
    reqs.reserve(op.items.size());
    for (auto& item : op.items)
      reqs.push_back({item.type, item.payload.view(), item.task,
                      item.chunk_items});
    std::vector<std::pair<uint64_t, caf::error>> refused;
    send_encoded_requests(
      op.handle, reqs.data(), reqs.size(), op.worker.get(), op.immediate,
      [&](size_t i, caf::error err) {
        // A broken channel means a dying worker: its on_exit() deals with
        // the task (it is in the worker's in_flight list), like with every
        // other. Not sent because of the task itself (a frame above the
        // limit): fail it.
        if (err == errc::frame_too_large || err == errc::encode_failed)
          refused.emplace_back(op.items[i].task, std::move(err));
      });
    if (refused.empty())
      continue;
    std::vector<completion> done;
    {
      std::lock_guard<std::mutex> guard{mu_};
      for (auto& [id, err] : refused) {
        // Unless the worker's death has taken care of it already.
        auto* t = tasks_.find(id);
        if (t == nullptr || t->worker != op.worker->id)
          continue;
        auto& q = op.worker->in_flight;
        q.erase(std::remove(q.begin(), q.end(), id), q.end());
        op.worker->in_flight_tasks -= t->left;
        fail_task(id, std::move(err), done);
      }
    }
    deliver(done);
  }
  ops.clear();
}

void pool_core::submit(encoded_task task, std::shared_ptr<task_group> group,
                       size_t index, const task_options& topts) {
  std::vector<completion> done;
  std::vector<send_op> ops;
  {
    lock_type lk{mu_};
    admit(lk, std::move(task), std::move(group), index, topts.timeout,
          topts.on_full.value_or(opts_.on_full), done);
    dispatch(ops);
  }
  perform(ops);
  deliver(done);
}

void pool_core::submit_many(size_t n, const task_encoder& encode,
                            std::shared_ptr<task_group> group,
                            size_t chunksize) {
  if (chunksize == 0) {
    // Python's rule (about four chunks per worker), capped: a chunk costs
    // little here, and smaller ones keep the workers busy while the caller
    // encodes the next ones (docs/pool.md).
    auto denom = 4 * std::max<size_t>(1, opts_.workers);
    chunksize = std::clamp<size_t>((n + denom - 1) / denom, 1, max_auto_chunk);
  }
  chunksize = std::min(chunksize, max_chunk_items);
  if (opts_.max_tasks_per_child != 0)
    chunksize = std::min(chunksize, opts_.max_tasks_per_child);
  if (chunksize > 1) {
    submit_chunks(n, encode, group, chunksize);
    return;
  }
  size_t i = 0;
  while (i < n) {
    std::vector<completion> done;
    std::vector<send_op> ops;
    {
      lock_type lk{mu_};
      // Admit a few tasks per lock, so that dispatch starts early and the
      // I/O threads get the lock in between.
      // Never wait for room while holding undispatched tasks of our own:
      // stop at the bound once something was admitted, dispatch it, and
      // only then wait (in admit) on the next round.
      size_t end = std::min(n, i + 256);
      bool admitted = false;
      for (; i < end; ++i) {
        if (admitted && pending_ >= opts_.max_pending)
          break;
        admit(lk, encode.one(i), group, i, {}, opts_.on_full, done);
        admitted = true;
      }
      dispatch(ops);
    }
    perform(ops);
    deliver(done);
  }
}

void pool_core::submit_chunks(size_t n, const task_encoder& encode,
                              const std::shared_ptr<task_group>& group,
                              size_t chunksize) {
  // Each chunk is encoded without the lock, its items in place, then
  // admitted and dispatched. A task that fails to encode fails alone and
  // ends its chunk (a chunk's items are consecutive); a big one (or a lone
  // one) goes as a single task.
  constexpr size_t head = wire::chunk_request_item_head;
  size_t i = 0;
  std::vector<completion> done;
  std::vector<send_op> ops;
  encoded_task unit;
  encoded_task big; // item i, too big for a chunk, encoded already
  bool have_big = false;
  size_t item_bytes = head + 8; // an item's size in the last chunk
  while (i < n) {
    size_t first = i;
    uint32_t count = 0;
    encoded_task single; // a big task, which goes alone
    bool alone = false;
    unit.type = 0; // a chunk's items carry their types
    // Room for the chunk at the last one's bytes per item: growing by
    // doubling would copy it several times.
    unit.payload.reserve(std::min(
      max_chunk_bytes + max_batched_payload,
      wire::chunk_count_size + std::min(chunksize, n - i) * item_bytes + 64));
    unit.payload.assign(wire::chunk_count_size, '\0');
    unit.error = caf::none;
    if (have_big) {
      single = std::move(big);
      have_big = false;
      alone = true;
      count = 1;
      ++i;
    }
    while (!alone && i < n && count < chunksize
           && unit.payload.size() < max_chunk_bytes) {
      size_t mark = unit.payload.size();
      unit.payload.append(head, '\0');
      // The flat encoding first (no caf::error per task), else Cereal's.
      if (encode.error || encode.append_flat == nullptr
          || !encode.append_flat(encode.tasks, i, unit.payload)) {
        unit.payload.resize(mark + head);
        auto err = encode.error ? encode.error
                                : encode.append(i, unit.payload);
        if (err) {
          unit.payload.resize(mark);
          done.push_back({group, {i, {}, std::move(err), 0, {}}});
          ++i;
          if (count != 0)
            break;
          first = i;
          continue;
        }
      }
      size_t size = unit.payload.size() - mark - head;
      if (size >= max_batched_payload) {
        big.type = encode.type;
        big.payload.assign(unit.payload, mark + head, size);
        unit.payload.resize(mark);
        if (count != 0) {
          have_big = true; // it goes alone, next
          break;
        }
        single = std::move(big);
        alone = true;
        count = 1;
        ++i;
        break;
      }
      wire::write_chunk_request_item_head(unit.payload.data() + mark,
                                          encode.type,
                                          static_cast<uint32_t>(size));
      ++count;
      ++i;
    }
    if (count > 1)
      item_bytes = (unit.payload.size() - wire::chunk_count_size) / count + 1;
    if (count != 0) {
      lock_type lk{mu_};
      if (count == 1) {
        if (!alone) { // the one item of the chunk goes as a task
          single.type = encode.type;
          single.payload.assign(unit.payload,
                                wire::chunk_count_size + head);
        }
        admit(lk, std::move(single), group, first, {}, opts_.on_full, done);
      } else {
        wire::write_chunk_count(unit.payload.data(), count);
        admit(lk, std::move(unit), group, first, {}, opts_.on_full, done,
              count);
      }
      dispatch(ops);
    }
    perform(ops);
    deliver(done);
  }
}

void pool_core::adapt_window(worker_rec& w, clock_type::time_point now) {
  auto busy = w.pace_busy;
  if (!w.in_flight.empty())
    busy += now - w.busy_since;
  if (w.pace_tasks < std::min(pace_sample_tasks, w.window)
      || busy < pace_sample_time)
    return;
  // Enough tasks for window_target at this pace. While the window is too
  // small to cover the round trip the pace looks slow, but the window still
  // grows: target / (round trip + window * task) > 1 per task.
  auto per_task = busy / w.pace_tasks;
  auto want = per_task.count() > 0
                ? static_cast<size_t>(
                  std::chrono::duration_cast<clock_type::duration>(
                    window_target)
                  / per_task)
                : max_window;
  // Shrinking is damped (halving at most): a long round trip makes tasks
  // look slow too.
  w.window = std::clamp(std::max(want, w.window / 2), min_window, max_window);
  w.pace_tasks = 0;
  w.pace_busy = clock_type::duration::zero();
  w.busy_since = now;
}

void pool_core::on_replies(worker_rec& w, std::vector<reply_entry>& batch) {
  std::vector<completion> done;
  std::vector<send_op> ops;
  done.reserve(batch.size());
  auto now = clock_type::now();
  {
    std::lock_guard<std::mutex> guard{mu_};
    for (auto& r : batch) {
      auto* t = tasks_.find(r.tag);
      if (t == nullptr || t->worker != w.id)
        continue; // a stale outcome: the task was dealt with at the death
      if (t->count > 1 && (r.item >= t->count || t->got[r.item]))
        continue;
      answered(w, r.tag, 1, t->left == 1, now);
      finish_task(*t, r.item, std::move(r.reply), std::move(r.err), done,
                  r.type, std::string_view{w.arena}.substr(r.offset, r.size),
                  now);
    }
    after_answers(w, now, ops);
  }
  batch.clear();
  perform(ops);
  deliver(done);
}

void pool_core::answered(worker_rec& w, uint64_t tag, size_t items,
                         bool last, clock_type::time_point now) {
  auto& q = w.in_flight;
  bool front = !q.empty() && q.front() == tag;
  if (front)
    w.front_since = now; // a chunk's deadline is per item
  if (last) {
    if (front)
      q.pop_front();
    else
      q.erase(std::remove(q.begin(), q.end(), tag), q.end());
  }
  w.in_flight_tasks -= items;
  w.pace_tasks += items;
  if (q.empty()) {
    w.solo = false;
    w.last_idle = ++idle_events_;
    w.pace_busy += now - w.busy_since;
  }
}

void pool_core::after_answers(worker_rec& w, clock_type::time_point now,
                              std::vector<send_op>& ops) {
  if (opts_.window == 0)
    adapt_window(w, now);
  if (w.retiring && w.in_flight.empty())
    sup_cv_.notify_all();
  if (!w.dead)
    dispatch(ops);
}

bool pool_core::on_chunk_reply(worker_rec& w, uint64_t tag,
                               const chunk_reply_item* items, size_t n) {
  // Results of one chunk: one ledger lookup, and the group decodes them
  // straight from the frame.
  thread_local std::vector<chunk_reply_item> results;
  results.clear();
  std::shared_ptr<task_group> group;
  size_t base = 0;
  std::vector<send_op> ops;
  auto now = clock_type::now();
  {
    std::lock_guard<std::mutex> guard{mu_};
    auto* t = tasks_.find(tag);
    if (t == nullptr || t->worker != w.id)
      return true; // stale outcomes: the task was dealt with at the death
    if (t->count == 1)
      return false; // not a chunk (cannot happen): one by one
    for (size_t k = 0; k < n; ++k) {
      auto item = items[k].item;
      if (item >= t->count || t->got[item])
        continue;
      t->got[item] = 1;
      results.push_back(items[k]);
    }
    auto m = results.size();
    if (m == 0)
      return true;
    stats_.succeeded += m;
    stats_.latency.record(now - t->submitted_at, m);
    pending_ -= m;
    t->left -= static_cast<uint32_t>(m);
    answered(w, tag, m, t->left == 0, now);
    base = t->index;
    if (t->left == 0) {
      group = std::move(t->group);
      tasks_.erase(tag);
    } else {
      group = t->group;
    }
    after_finish();
    after_answers(w, now, ops);
  }
  perform(ops);
  group->complete_encoded(base, results.data(), results.size());
  return true;
}

void pool_core::on_exit(worker_rec& w, const caf::expected<exit_status>& st) {
  std::vector<completion> done;
  std::vector<send_op> ops;
  {
    std::lock_guard<std::mutex> guard{mu_};
    w.dead = true;
    auto how = w.who() + " " + (st ? st->to_string() : describe(st.error()));
    bool planned = w.stopping && w.overdue == 0; // retired or closed
    if (!planned) {
      ++stats_.workers_died;
      if (w.overdue != 0)
        ++stats_.workers_overdue;
      else if (st && st->signaled)
        ++stats_.workers_killed;
      else
        ++stats_.workers_exited;
    } else if (w.retiring) {
      ++stats_.workers_recycled;
    }
    std::vector<uint64_t> held;
    for (auto id : w.in_flight) {
      auto* t = tasks_.find(id);
      if (t == nullptr || t->worker != w.id)
        continue;
      if (t->count > 1)
        split_chunk(*t, w, held);
      else
        held.push_back(id);
    }
    // Replies travel in batches, so with several tasks in flight the parent
    // cannot tell which one was running: the death is charged to a task only
    // if it was the only one in flight. Otherwise all of them become
    // suspects and run again, each alone on a worker.
    bool alone = held.size() == 1;
    auto tail = w.tail->text();
    std::vector<uint64_t> requeue;
    std::vector<uint64_t> suspects;
    for (auto id : held) {
      auto& t = *tasks_.find(id);
      t.worker = 0;
      if (planned) {
        requeue.push_back(id);
        continue;
      }
      // The worker ran its tasks in order: the death counts as an attempt
      // of the first task not answered, the one most likely running.
      if (id == held.front()) {
        t.attempts += 1;
        t.deaths.push_back(how);
      }
      bool overdue = w.overdue == id;
      if (overdue && alone
          && (!opts_.retry_timeouts || t.attempts >= opts_.max_attempts
              || opts_.guarantee == delivery::at_most_once)) {
        finish_task(t, 0, {},
                    make_error(errc::timeout,
                               "task " + std::to_string(id) + " (item "
                                 + std::to_string(t.index)
                                 + ") ran past its deadline of "
                                 + std::to_string(t.timeout.count())
                                 + " ms; its worker " + how),
                    done);
        continue;
      }
      if (opts_.guarantee == delivery::at_most_once) {
        finish_task(t, 0, {},
                    make_error(errc::worker_died,
                               "task " + std::to_string(id) + " (item "
                                 + std::to_string(t.index)
                                 + ") was in flight when worker " + how
                                 + (w.overdue != 0 ? " (stopped for a deadline)"
                                                   : "")
                                 + "; at_most_once: it does not run again"),
                    done);
        continue;
      }
      if (alone && !overdue && t.attempts >= opts_.max_attempts) {
        std::string seen;
        for (auto& d : t.deaths)
          seen += (seen.empty() ? "" : "; ") + d;
        finish_task(t, 0, {},
                    make_error(errc::task_quarantined,
                               "task " + std::to_string(id) + " (item "
                                 + std::to_string(t.index)
                                 + ") killed its worker on all "
                                 + std::to_string(t.attempts)
                                 + " attempts: " + seen
                                 + (tail.empty()
                                      ? std::string{}
                                      : "; last stderr lines of " + w.who()
                                          + ": " + tail)),
                    done);
        continue;
      }
      ++stats_.redispatched;
      // The first task not answered is the likely culprit: it runs alone.
      // The others (most had not started, or their replies were still in
      // the pipe) run in groups of half their number, so a rare culprit
      // among them is found by halving while a random death costs only a
      // few round trips (docs/pool.md).
      size_t others = held.size() - 1;
      t.rerun_group = id == held.front()
                        ? 1
                        : std::max<size_t>(1, (others + 1) / 2);
      suspects.push_back(id);
    }
    // Re-queued tasks go first, in their old order.
    queue_.insert(queue_.begin(), requeue.begin(), requeue.end());
    suspects_.insert(suspects_.end(), suspects.begin(), suspects.end());
    w.in_flight.clear();
    w.in_flight_tasks = 0;
    auto pos = std::find_if(live_.begin(), live_.end(),
                            [&](auto& x) { return x.get() == &w; });
    if (pos != live_.end()) {
      dead_.push_back(*pos);
      live_.erase(pos);
    }
    sup_cv_.notify_all();
    dispatch(ops);
  }
  perform(ops);
  deliver(done);
}

void pool_core::break_pool(caf::error why, std::vector<completion>& done) {
  broken_ = std::move(why);
  for (auto id : tasks_.ids())
    if (tasks_.find(id)->worker == 0)
      fail_task(id, broken_, done);
  queue_.clear();
  suspects_.clear();
  room_cv_.notify_all();
}

void pool_core::supervise() {
  lock_type lk{mu_};
  caf::error last_failure;
  while (!stopping_) {
    // Reap the dead (kill_worker waits until its bridge is done).
    while (!dead_.empty()) {
      auto w = std::move(dead_.back());
      dead_.pop_back();
      lk.unlock();
      [[maybe_unused]] auto st = kill_worker(w->handle);
      w->handle = nullptr;
      lk.lock();
    }
    if (stopping_)
      break;
    // Retire workers that finished their last task.
    for (auto& w : live_)
      if (w->retiring && !w->stopping && w->in_flight.empty()) {
        w->stopping = true;
        auto h = w->handle;
        lk.unlock();
        [[maybe_unused]] auto st = stop_worker(h);
        lk.lock();
        break; // live_ may have changed
      }
    // Deadlines: the oldest task of each worker is the one running.
    auto now = clock_type::now();
    auto next_wake = now + std::chrono::milliseconds{100};
    for (auto& w : live_) {
      if (w->overdue != 0) {
        if (now >= w->kill_at) {
          [[maybe_unused]] auto err = signal_worker(w->handle, SIGKILL);
          w->kill_at = clock_type::time_point::max();
        } else {
          next_wake = std::min(next_wake, w->kill_at);
        }
        continue;
      }
      if (w->in_flight.empty())
        continue;
      auto* t = tasks_.find(w->in_flight.front());
      if (t == nullptr || t->timeout.count() == 0)
        continue;
      auto due = w->front_since + t->timeout;
      if (now >= due) {
        w->overdue = t->id;
        w->stopping = true;
        w->kill_at = now + opts_.kill_grace;
        next_wake = std::min(next_wake, w->kill_at);
        [[maybe_unused]] auto err = signal_worker(w->handle, SIGTERM);
      } else {
        next_wake = std::min(next_wake, due);
      }
    }
    // Replace missing workers.
    size_t active = 0; // remote workers come and go on their own
    for (auto& w : live_)
      if (!w->stopping && !w->remote)
        ++active;
    if (!broken_ && active < opts_.workers
        && (!closing_ || !tasks_.empty())) {
      auto slot = next_slot_++;
      lk.unlock();
      auto w = start_worker(slot);
      lk.lock();
      std::vector<completion> done;
      std::vector<send_op> ops;
      if (!w) {
        last_failure = w.error();
        ++stats_.start_failures;
        if (++start_failures_ >= opts_.max_start_failures)
          break_pool(make_error(errc::pool_broken,
                                std::to_string(start_failures_)
                                  + " workers in a row failed to start; the "
                                    "last: "
                                  + describe(last_failure)),
                     done);
      } else {
        start_failures_ = 0;
        ++stats_.workers_started;
        if (closing_ || stopping_ || (*w)->dead) {
          (*w)->stopping = true;
          dead_.push_back(std::move(*w)); // reaped above, next round
        } else {
          live_.push_back(std::move(*w));
          dispatch(ops);
        }
      }
      lk.unlock();
      perform(ops);
      deliver(done);
      lk.lock();
      continue;
    }
    if (opts_.on_progress) {
      auto interval = std::max(opts_.progress_interval,
                               std::chrono::milliseconds{1});
      if (clock_type::now() >= last_progress_ + interval) {
        report_progress(lk);
        last_progress_ = clock_type::now();
      }
      next_wake = std::min(next_wake, last_progress_ + interval);
    }
    sup_cv_.wait_until(lk, next_wake);
  }
  if (opts_.on_progress)
    report_progress(lk);
}

void pool_core::report_progress(lock_type& lk) {
  auto key = [](const pool_stats& s) {
    return std::make_tuple(s.submitted, s.succeeded, s.failed, s.quarantined,
                           s.redispatched, s.workers_started, s.workers_died);
  };
  if (key(stats_) == key(reported_))
    return;
  reported_ = stats_;
  auto copy = stats_locked();
  lk.unlock();
  opts_.on_progress(copy);
  lk.lock();
}

caf::error pool_core::close(std::chrono::milliseconds timeout) {
  {
    lock_type lk{mu_};
    closing_ = true;
    room_cv_.notify_all();
    auto idle = [&] { return tasks_.empty() || broken_; };
    if (timeout == std::chrono::milliseconds::max())
      idle_cv_.wait(lk, idle);
    else if (!idle_cv_.wait_for(lk, timeout, idle))
      return make_error(errc::timeout,
                        "the pool " + opts_.name + " still had "
                          + std::to_string(pending_)
                          + " tasks after " + std::to_string(timeout.count())
                          + " ms");
    stopping_ = true;
    for (auto& w : live_)
      w->stopping = true;
    sup_cv_.notify_all();
  }
  stop_gateway();
  if (supervisor_.joinable())
    supervisor_.join();
  std::vector<std::shared_ptr<worker_rec>> all;
  {
    std::lock_guard<std::mutex> guard{mu_};
    all = live_;
    all.insert(all.end(), dead_.begin(), dead_.end());
  }
  for (auto& w : all)
    if (w->handle)
      [[maybe_unused]] auto st = stop_worker(w->handle);
  std::lock_guard<std::mutex> guard{mu_};
  live_.clear();
  dead_.clear();
  return caf::none;
}

void pool_core::terminate() {
  std::vector<completion> done;
  std::vector<std::shared_ptr<worker_rec>> all;
  {
    std::lock_guard<std::mutex> guard{mu_};
    closing_ = true;
    stopping_ = true;
    auto ids = tasks_.ids();
    auto why = make_error(errc::closed, "the pool " + opts_.name
                                          + " was terminated before the "
                                            "task finished");
    for (auto id : ids)
      fail_task(id, why, done);
    queue_.clear();
    suspects_.clear();
    for (auto& w : live_) {
      w->stopping = true;
      w->in_flight.clear();
      w->in_flight_tasks = 0;
    }
    room_cv_.notify_all();
    idle_cv_.notify_all();
    sup_cv_.notify_all();
  }
  deliver(done);
  stop_gateway();
  if (supervisor_.joinable() && supervisor_.get_id() != std::this_thread::get_id())
    supervisor_.join();
  {
    std::lock_guard<std::mutex> guard{mu_};
    all = live_;
    all.insert(all.end(), dead_.begin(), dead_.end());
  }
  for (auto& w : all)
    if (w->handle)
      [[maybe_unused]] auto st = kill_worker(w->handle);
  std::lock_guard<std::mutex> guard{mu_};
  live_.clear();
  dead_.clear();
}

std::vector<worker_info> pool_core::workers() const {
  std::lock_guard<std::mutex> guard{mu_};
  std::vector<worker_info> out;
  for (auto& w : live_)
    if (!w->dead)
      out.push_back(w->info);
  return out;
}

pool_stats pool_core::stats() const {
  std::lock_guard<std::mutex> guard{mu_};
  return stats_locked();
}

pool_stats pool_core::stats_locked() const {
  auto s = stats_;
  for (auto& w : live_) {
    if (w->dead)
      continue;
    ++s.workers;
    s.in_flight += w->in_flight_tasks;
  }
  return s;
}

void stream_submit(pool_core& core, encoded_task task,
                   std::shared_ptr<task_group> group, size_t index) {
  core.submit(std::move(task), std::move(group), index, {});
}

// -- the pool as an actor -----------------------------------------------------

namespace {

/// Replies to one actor request with the task's result.
class reply_group : public task_group {
public:
  reply_group(caf::strong_actor_ptr self, caf::strong_actor_ptr to,
              caf::message_id mid)
    : self_(std::move(self)), to_(std::move(to)), mid_(mid) {
  }

  void complete(size_t, caf::message reply, caf::error err) override {
    if (!to_ || !mid_.is_request())
      return;
    if (err)
      reply = caf::make_message(std::move(err));
    to_->enqueue(caf::make_mailbox_element(self_, mid_.response_id(), {},
                                           std::move(reply)),
                 nullptr);
  }

private:
  caf::strong_actor_ptr self_;
  caf::strong_actor_ptr to_;
  caf::message_id mid_;
};

class pool_proxy : public caf::monitorable_actor {
public:
  pool_proxy(caf::actor_config& cfg, std::weak_ptr<pool_core> core)
    : caf::monitorable_actor(cfg), core_(std::move(core)) {
  }

  const char* name() const override {
    return "multiproc_pool";
  }

  void enqueue(caf::mailbox_element_ptr what, caf::execution_unit*) override {
    if (what->mid.is_response())
      return;
    auto content = what->move_content_to_message();
    if (content.match_elements<caf::exit_msg>())
      return; // the pool's owner decides when it ends
    auto target = what->stages.empty() ? what->sender : what->stages.back();
    auto group = std::make_shared<reply_group>(
      caf::actor_cast<caf::strong_actor_ptr>(this), target, what->mid);
    encoded_task task;
    task.error = encode_message(content, task.type, task.payload);
    auto core = core_.lock();
    if (!core) {
      group->complete(0, {},
                      make_error(errc::closed, "the pool no longer exists"));
      return;
    }
    core->submit(std::move(task), group, 0, {});
  }

private:
  std::weak_ptr<pool_core> core_;
};

} // namespace

} // namespace multiproc::detail

namespace multiproc {

caf::expected<pool> pool::start(caf::actor_system& sys,
                                const std::string& entry, pool_options opts) {
  if (!has_worker(entry))
    return make_error(errc::unknown_entry,
                      "no worker is registered as '" + entry + "'");
  if (opts.max_attempts < 1)
    return make_error(errc::invalid_argument,
                      "pool_options::max_attempts must be at least 1");
  if (opts.max_pending == 0)
    return make_error(errc::invalid_argument,
                      "pool_options::max_pending must be at least 1");
  if (opts.max_start_failures < 1)
    opts.max_start_failures = 1;
  auto core = std::make_shared<detail::pool_core>(sys, entry, std::move(opts));
  if (auto err = core->start_all()) {
    core->terminate();
    return err;
  }
  return pool{std::move(core)};
}

pool::pool(std::shared_ptr<detail::pool_core> core) : core_(std::move(core)) {
}

pool::pool(pool&&) noexcept = default;

pool& pool::operator=(pool&& other) noexcept {
  if (this != &other) {
    if (core_)
      core_->terminate();
    core_ = std::move(other.core_);
  }
  return *this;
}

pool::~pool() {
  if (core_)
    core_->terminate();
}

void pool::submit_encoded(detail::encoded_task task,
                          std::shared_ptr<detail::task_group> group,
                          size_t index, const task_options& opts) {
  if (!core_) {
    group->complete(index, {}, make_error(errc::closed, "a moved-from pool"));
    return;
  }
  core_->submit(std::move(task), std::move(group), index, opts);
}

void pool::submit_many(size_t n, const detail::task_encoder& encode,
                       std::shared_ptr<detail::task_group> group,
                       size_t chunksize) {
  if (!core_) {
    for (size_t i = 0; i < n; ++i)
      group->complete(i, {}, make_error(errc::closed, "a moved-from pool"));
    return;
  }
  core_->submit_many(n, encode, std::move(group), chunksize);
}

size_t pool::default_window() const noexcept {
  return core_ ? 2 * core_->size() * core_->window() : 1;
}

caf::error pool::close(std::chrono::milliseconds timeout) {
  if (!core_)
    return caf::none;
  return core_->close(timeout);
}

void pool::terminate() {
  if (core_)
    core_->terminate();
}

caf::expected<uint16_t> pool::publish(network_options opts) {
  if (!core_)
    return make_error(errc::closed, "the pool was moved from");
  return core_->publish(std::move(opts));
}

caf::actor pool::handle() const {
  caf::actor_config cfg;
  auto& sys = core_->system();
  return caf::make_actor<detail::pool_proxy, caf::actor>(
    sys.next_actor_id(), sys.node(), &sys, cfg,
    std::weak_ptr<detail::pool_core>{core_});
}

std::vector<worker_info> pool::workers() const {
  return core_ ? core_->workers() : std::vector<worker_info>{};
}

size_t pool::size() const noexcept {
  return core_ ? core_->size() : 0;
}

pool_stats pool::stats() const {
  return core_ ? core_->stats() : pool_stats{};
}

void add_metrics(metrics_snapshot& out, const std::string& name,
                 const pool_stats& s) {
  metric_labels l{{"pool", name}};
  auto n = [](uint64_t x) { return static_cast<double>(x); };
  auto with = [&](const char* key, const char* value) {
    auto x = l;
    x.emplace(key, value);
    return x;
  };
  out.counter("multiproc_pool_tasks_submitted_total", "Tasks accepted.", l,
              n(s.submitted));
  out.counter("multiproc_pool_tasks_succeeded_total",
              "Tasks that got a reply.", l, n(s.succeeded));
  out.counter("multiproc_pool_tasks_failed_total",
              "Tasks that ended in an error (quarantined and timed out "
              "included).",
              l, n(s.failed));
  out.counter("multiproc_pool_tasks_quarantined_total",
              "Tasks that killed their worker on every attempt.", l,
              n(s.quarantined));
  out.counter("multiproc_pool_tasks_timed_out_total",
              "Tasks that ran past their deadline.", l, n(s.timed_out));
  out.counter("multiproc_pool_tasks_retried_total",
              "Dispatches of a task again after its worker died.", l,
              n(s.redispatched));
  out.gauge("multiproc_pool_tasks_in_flight",
            "Tasks sent to a worker and not answered yet.", l, n(s.in_flight));
  out.gauge("multiproc_pool_tasks_queued", "Tasks waiting for a worker.", l,
            n(s.queued()));
  out.gauge("multiproc_pool_workers", "Workers alive.", l, n(s.workers));
  out.counter("multiproc_pool_workers_started_total", "Workers started.", l,
              n(s.workers_started));
  const char* restarts = "multiproc_pool_worker_restarts_total";
  const char* restarts_help = "Workers replaced, by cause: signal (killed "
                              "or crashed), exit (exited on their own), "
                              "deadline (stopped for a task past its "
                              "deadline), recycled (max_tasks_per_child).";
  out.counter(restarts, restarts_help, with("cause", "signal"),
              n(s.workers_killed));
  out.counter(restarts, restarts_help, with("cause", "exit"),
              n(s.workers_exited));
  out.counter(restarts, restarts_help, with("cause", "deadline"),
              n(s.workers_overdue));
  out.counter(restarts, restarts_help, with("cause", "recycled"),
              n(s.workers_recycled));
  out.counter("multiproc_pool_worker_start_failures_total",
              "Workers that failed to start or initialize.", l,
              n(s.start_failures));
  out.histogram("multiproc_pool_task_latency_seconds",
                "From submit to result, of every task that ended.", l,
                s.latency);
}

void add_metrics(metrics_snapshot& out, const std::string& name,
                 const pool& p) {
  add_metrics(out, name, p.stats());
}

} // namespace multiproc
