// multiproc bench pipe — metrics (compare with ../shared/peers in the same run):
//   cpp_pipe_rtt_p50             us     64-byte typed request from a parent actor
//                                       to a worker actor in a child, and reply
//   cpp_pipe_sync_rtt_p50        us     the same from plain blocking code
//   cpp_pipe_tput_64B            msg/s  one-way typed 64-byte messages into a
//                                       worker actor (counted by the worker)
//   cpp_pipe_bw_1MiB             GB/s   one-way typed 1 MiB messages
//   cpp_spawn_first_reply_<m>    ms     start a worker (method m) and get its
//                                       first reply
//   cpp_worker_shm_rtt_p50       us     cpp_pipe_rtt_p50 with the worker on
//                                       worker_transport::shared_memory
//   cpp_worker_shm_sync_rtt_p50  us     cpp_pipe_sync_rtt_p50 likewise
//   cpp_worker_shm_tput_64B      msg/s  cpp_pipe_tput_64B likewise
// multiproc bench pool — a pool of (cores) workers, trivial x*x tasks:
//   cpp_pool_map_chunksize1      tasks/s  map over 200,000 tasks, chunksize 1
//   cpp_pool_map_auto            tasks/s  map over 1,000,000 tasks, chunksize 0
//                                         (automatic: n / (4 x workers)), on
//                                         a task worker (a plain function,
//                                         as Python's Pool.map is given)
//   cpp_pool_map_auto_behavior   tasks/s  the same on a worker whose handler
//                                         is a CAF behavior's (the pool of
//                                         the other lines)
//   cpp_pool_submit_latency_p50  us       one submit -> future.get at a time
//                                         from plain code
//   cpp_pool_chaos_tput          tasks/s  map over 2,000,000 tasks while a
//                                         thread SIGKILLs a random live worker
//                                         every 50 ms (at_least_once,
//                                         defaults; several kills per rep)
//   cpp_pool_chaos_lost          count    tasks without an ok result
//   cpp_pool_chaos_duplicated    count    results whose echoed index is not
//                                         their slot or appears more than once
// Env: BENCH_REPS (default 5).
#include "bench.hpp"
#include "bench_queue.hpp"
#include "bench_remote.hpp"
#include "bench_shared.hpp"
#include "bench_report.hpp"
#include "bench_targets.hpp"
#include "os_peers.hpp"
#include "python_peers.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include <signal.h>
#include <sys/types.h>

#include <caf/all.hpp>
#include <cereal/types/vector.hpp>
#include <nlohmann/json.hpp>

#include "multiproc/function.hpp"
#include "multiproc/pool.hpp"
#include "multiproc/worker.hpp"

namespace bench {

struct payload64 {
  std::array<char, 64> data{};
  template <class Archive>
  void serialize(Archive& ar) {
    ar(cereal::binary_data(data.data(), data.size()));
  }
};

struct blob {
  std::vector<char> bytes;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(bytes);
  }
};

struct count_query {
  template <class Archive>
  void serialize(Archive&) {
  }
};

struct counts {
  int64_t messages = 0;
  int64_t bytes = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(messages, bytes);
  }
};

struct echo_state {
  counts seen;
};

/// A pool task: square x (the reply is an int64_t).
struct square {
  int64_t x = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x);
  }
};

/// A pool task whose reply echoes its input index (chaos: lost/duplicated).
struct indexed_square {
  int64_t index = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(index);
  }
};

struct indexed_result {
  int64_t index = 0;
  int64_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(index, value);
  }
};

} // namespace bench

MULTIPROC_MESSAGE(bench::payload64, "bench.payload64")
MULTIPROC_MESSAGE(bench::blob, "bench.blob")
MULTIPROC_MESSAGE(bench::count_query, "bench.count_query")
MULTIPROC_MESSAGE(bench::counts, "bench.counts")
MULTIPROC_MESSAGE(bench::square, "bench.square")
MULTIPROC_MESSAGE(bench::indexed_square, "bench.indexed_square")
MULTIPROC_MESSAGE(bench::indexed_result, "bench.indexed_result")

namespace bench {

caf::behavior echo(caf::stateful_actor<echo_state>* self) {
  return {
    [self](payload64& x) -> caf::result<payload64> {
      ++self->state.seen.messages;
      if (self->current_message_id().is_request())
        return std::move(x);
      return caf::delegated<payload64>{};
    },
    [self](const blob& x) {
      ++self->state.seen.messages;
      self->state.seen.bytes += x.bytes.size();
    },
    [self](const count_query&) { return self->state.seen; },
  };
}

caf::behavior pool_squarer(caf::event_based_actor*) {
  return {
    [](const square& t) { return t.x * t.x; },
    [](const indexed_square& t) {
      return indexed_result{t.index, t.index * t.index};
    },
  };
}

/// The task function of bench.pool_square_fn.
int64_t square_task(const square& t) {
  return t.x * t.x;
}

int first_reply_probe(multiproc::pipe_end& parent) {
  return parent.send(int32_t{1}) ? 1 : 0;
}

} // namespace bench

MULTIPROC_WORKER("bench.echo", bench::echo)
MULTIPROC_WORKER("bench.pool_squarer", bench::pool_squarer)
MULTIPROC_TASK_WORKER("bench.pool_square_fn", bench::square_task)
MULTIPROC_FUNCTION("bench.first_reply_probe", bench::first_reply_probe)

namespace {

using namespace std::chrono_literals;
using namespace bench_report;

// Round trips from a parent event-based actor.
std::vector<double> actor_rtt(caf::actor_system& sys, const caf::actor& worker,
                              int n) {
  std::vector<double> result;
  for (int r = 0; r < reps(); ++r) {
    auto samples = std::make_shared<std::vector<double>>();
    samples->reserve(n);
    auto done = std::make_shared<std::promise<void>>();
    auto future = done->get_future();
    sys.spawn([=](caf::event_based_actor* self) {
      auto step = std::make_shared<std::function<void(int)>>();
      *step = [=](int left) {
        auto t0 = clock_type::now();
        self->request(worker, 10s, bench::payload64{})
          .then(
            [=](const bench::payload64&) {
              samples->push_back(micros(clock_type::now() - t0));
              if (left > 1)
                (*step)(left - 1);
              else {
                done->set_value();
                *step = nullptr;
              }
            },
            [=](caf::error& err) {
              std::fprintf(stderr, "bench: %s\n",
                           multiproc::describe(err).c_str());
              done->set_value();
              *step = nullptr;
            });
      };
      (*step)(n + n / 10); // the first tenth warms up
    });
    future.wait();
    if (samples->size() < static_cast<size_t>(n))
      return {};
    samples->erase(samples->begin(), samples->begin() + n / 10);
    result.push_back(p50(*samples));
  }
  return result;
}

std::vector<double> sync_rtt(const caf::actor& worker, int n) {
  std::vector<double> result;
  std::vector<double> samples(n);
  for (int i = 0; i < n / 10; ++i)
    [[maybe_unused]] auto r = multiproc::request<bench::payload64>(
      worker, 10s, bench::payload64{});
  for (int r = 0; r < reps(); ++r) {
    for (int i = 0; i < n; ++i) {
      auto t0 = clock_type::now();
      auto reply = multiproc::request<bench::payload64>(worker, 10s,
                                                        bench::payload64{});
      samples[i] = micros(clock_type::now() - t0);
      if (!reply) {
        std::fprintf(stderr, "bench: %s\n",
                     multiproc::describe(reply.error()).c_str());
        return {};
      }
    }
    result.push_back(p50(samples));
  }
  return result;
}

caf::expected<bench::counts> counts_of(const caf::actor& worker) {
  return multiproc::request<bench::counts>(worker, 60s, bench::count_query{});
}

// Sends `msg` n times one-way, then asks the worker what it counted; `rate`
// turns the counts' difference and the seconds into the metric's value.
// Every message must have been counted.
template <class T, class Rate>
std::vector<double> one_way(const caf::actor& worker, const T& msg, int n,
                            Rate rate) {
  std::vector<double> result;
  for (int r = 0; r < reps(); ++r) {
    auto before = counts_of(worker);
    if (!before)
      return {};
    auto t0 = clock_type::now();
    for (int i = 0; i < n; ++i)
      if (auto err = multiproc::send(worker, msg)) {
        std::fprintf(stderr, "bench: %s\n", multiproc::describe(err).c_str());
        return {};
      }
    auto after = counts_of(worker);
    auto secs = std::chrono::duration<double>(clock_type::now() - t0).count();
    if (!after || after->messages - before->messages != n)
      return {};
    result.push_back(rate(*before, *after, secs));
  }
  return result;
}

std::vector<double> throughput(const caf::actor& worker, int n) {
  return one_way(worker, bench::payload64{}, n,
                 [n](const bench::counts&, const bench::counts&, double secs) {
                   return n / secs;
                 });
}

std::vector<double> bandwidth(const caf::actor& worker, int n) {
  bench::blob msg;
  msg.bytes.assign(size_t{1} << 20, 'b');
  return one_way(worker, msg, n,
                 [](const bench::counts& before, const bench::counts& after,
                    double secs) {
                   return double(after.bytes - before.bytes) / secs / 1e9;
                 });
}

std::vector<double> spawn_first_reply(caf::actor_system& sys,
                                      multiproc::start_method method) {
  std::vector<double> result;
  for (int r = 0; r < reps() * 2; ++r) {
    multiproc::worker_options opts;
    opts.method = method;
    auto t0 = clock_type::now();
    auto worker = multiproc::spawn_worker(sys, "bench.echo", opts);
    if (!worker)
      return {};
    auto reply = multiproc::request<bench::payload64>(*worker, 10s,
                                                      bench::payload64{});
    auto ms = micros(clock_type::now() - t0) / 1000.0;
    [[maybe_unused]] auto st = multiproc::stop_worker(*worker);
    if (!reply)
      return {};
    result.push_back(ms);
  }
  return result;
}

// fork needs a single-threaded parent: measured with a plain function process
// before anything else in this run starts a thread.
std::vector<double> fork_first_reply(reporter& out) {
  std::vector<double> result;
  multiproc::process_options opts;
  opts.method = multiproc::start_method::fork;
  auto t0 = clock_type::now();
  auto proc = multiproc::start_function("bench.first_reply_probe", opts);
  if (!proc) {
    out.note("cpp_spawn_first_reply_fork: " + multiproc::describe(proc.error()));
    return {};
  }
  multiproc::pipe_end child{proc->take_channel()};
  auto one = child.recv<int32_t>(10s);
  auto ms = micros(clock_type::now() - t0) / 1000.0;
  [[maybe_unused]] auto st = proc->join(10s);
  if (one)
    result.push_back(ms);
  return result;
}

// `part`: "" for everything, or one of rtt, tput, bw, spawn.
void bench_pipe(reporter& out, const std::string& part) {
  auto want = [&](const char* x) { return part.empty() || part == x; };
  // First, while this process is still single-threaded.
  if (want("spawn"))
    out.add("cpp_spawn_first_reply_fork", "ms", fork_first_reply(out));
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  if (want("rtt") || want("tput") || want("bw")) {
    auto worker = multiproc::spawn_worker(sys, "bench.echo");
    if (!worker) {
      out.note("cannot start the bench worker: "
               + multiproc::describe(worker.error()));
      return;
    }
    if (want("rtt")) {
      out.add("cpp_pipe_rtt_p50", "us", actor_rtt(sys, *worker, 20000));
      out.add("cpp_pipe_sync_rtt_p50", "us", sync_rtt(*worker, 20000));
    }
    if (want("tput"))
      out.add("cpp_pipe_tput_64B", "msg/s", throughput(*worker, 1000000));
    if (want("bw"))
      out.add("cpp_pipe_bw_1MiB", "GB/s", bandwidth(*worker, 2000));
    [[maybe_unused]] auto st = multiproc::stop_worker(*worker);
  }
  if (want("rtt") || want("tput")) {
    // The same worker over worker_transport::shared_memory.
    multiproc::worker_options opts;
    opts.transport = multiproc::worker_transport::shared_memory;
    auto worker = multiproc::spawn_worker(sys, "bench.echo", opts);
    if (!worker) {
      out.note("cannot start the shared-memory bench worker: "
               + multiproc::describe(worker.error()));
      return;
    }
    if (want("rtt")) {
      out.add("cpp_worker_shm_rtt_p50", "us", actor_rtt(sys, *worker, 20000));
      out.add("cpp_worker_shm_sync_rtt_p50", "us", sync_rtt(*worker, 20000));
    }
    if (want("tput"))
      out.add("cpp_worker_shm_tput_64B", "msg/s",
              throughput(*worker, 1000000));
    [[maybe_unused]] auto st = multiproc::stop_worker(*worker);
  }
  if (want("spawn")) {
    out.add("cpp_spawn_first_reply_forkserver", "ms",
            spawn_first_reply(sys, multiproc::start_method::forkserver));
    out.add("cpp_spawn_first_reply_spawn", "ms",
            spawn_first_reply(sys, multiproc::start_method::spawn));
  }
}

// -- pool --------------------------------------------------------------------

using square_results = std::vector<caf::expected<int64_t>>;

// Checks every result of a map over square{0..n-1}; notes the first failure.
bool all_squares(reporter& out, const char* metric,
                 const square_results& results, size_t n) {
  if (results.size() != n) {
    out.note(std::string{metric} + ": " + std::to_string(results.size())
             + " results for " + std::to_string(n) + " tasks");
    return false;
  }
  for (size_t i = 0; i < n; ++i) {
    auto x = static_cast<int64_t>(i);
    if (!results[i]) {
      out.note(std::string{metric} + ": task " + std::to_string(i) + " failed: "
               + multiproc::describe(results[i].error()));
      return false;
    }
    if (*results[i] != x * x) {
      out.note(std::string{metric} + ": task " + std::to_string(i)
               + " returned " + std::to_string(*results[i]));
      return false;
    }
  }
  return true;
}

std::vector<bench::square> square_tasks(size_t n) {
  std::vector<bench::square> tasks(n);
  for (size_t i = 0; i < n; ++i)
    tasks[i].x = static_cast<int64_t>(i);
  return tasks;
}

// Tasks per second of map(n trivial tasks, chunksize); encoding is included.
std::vector<double> pool_map_tput(reporter& out, multiproc::pool& p,
                                  const char* metric, size_t n,
                                  size_t chunksize) {
  auto tasks = square_tasks(n);
  { // warm-up: a tenth of the tasks
    std::vector<bench::square> warm(tasks.begin(), tasks.begin() + n / 10);
    if (!all_squares(out, metric, p.map<int64_t>(warm, chunksize), warm.size()))
      return {};
  }
  std::vector<double> result;
  for (int r = 0; r < reps(); ++r) {
    auto t0 = clock_type::now();
    auto results = p.map<int64_t>(tasks, chunksize);
    auto secs = std::chrono::duration<double>(clock_type::now() - t0).count();
    if (!all_squares(out, metric, results, n))
      return {};
    result.push_back(n / secs);
  }
  return result;
}

// p50 of one submit -> future.get at a time, from plain code.
std::vector<double> pool_latency(reporter& out, multiproc::pool& p, int n) {
  return p50_per_rep(n, [&](int64_t x, double* us) {
    auto t0 = clock_type::now();
    auto y = p.submit<int64_t>(bench::square{x}).get();
    if (us != nullptr)
      *us = micros(clock_type::now() - t0);
    if (!y || *y != x * x) {
      out.note("cpp_pool_submit_latency_p50: task " + std::to_string(x) + ": "
               + (y ? "returned " + std::to_string(*y)
                    : multiproc::describe(y.error())));
      return false;
    }
    return true;
  });
}

// SIGKILLs a random live worker of `p` every `period` until stopped.
class chaos_monkey {
public:
  chaos_monkey(multiproc::pool& p, std::chrono::milliseconds period)
    : pool_(p), period_(period), thread_([this] { run(); }) {
  }

  ~chaos_monkey() {
    stop();
  }

  void stop() {
    {
      std::lock_guard<std::mutex> guard{mu_};
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable())
      thread_.join();
  }

  size_t kills() const {
    return kills_;
  }

private:
  void run() {
    std::mt19937 rng{std::random_device{}()};
    std::unique_lock<std::mutex> guard{mu_};
    while (!cv_.wait_for(guard, period_, [this] { return stop_; })) {
      auto live = pool_.workers();
      if (live.empty())
        continue;
      std::uniform_int_distribution<size_t> pick{0, live.size() - 1};
      auto pid = live[pick(rng)].pid;
      if (pid > 0 && ::kill(pid, SIGKILL) == 0)
        ++kills_;
    }
  }

  multiproc::pool& pool_;
  std::chrono::milliseconds period_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::atomic<size_t> kills_{0};
  std::thread thread_; // last: starts after the members it uses
};

// Throughput of map(n) under a chaos monkey, and the tasks it lost or
// duplicated, counted from the results: each reply echoes its input index.
void pool_chaos(reporter& out, caf::actor_system& sys, size_t n) {
  std::vector<double> tput;
  std::vector<double> lost;
  std::vector<double> duplicated;
  std::vector<bench::indexed_square> tasks(n);
  for (size_t i = 0; i < n; ++i)
    tasks[i].index = static_cast<int64_t>(i);
  for (int r = 0; r < reps(); ++r) {
    auto p = multiproc::pool::start(sys, "bench.pool_squarer");
    if (!p) {
      out.note("cpp_pool_chaos: cannot start the pool: "
               + multiproc::describe(p.error()));
      return;
    }
    size_t kills = 0;
    auto t0 = clock_type::now();
    std::vector<caf::expected<bench::indexed_result>> results;
    {
      chaos_monkey monkey{*p, 50ms};
      results = p->map<bench::indexed_result>(tasks);
      monkey.stop();
      kills = monkey.kills();
    }
    auto secs = std::chrono::duration<double>(clock_type::now() - t0).count();
    auto stats = p->stats();
    size_t n_lost = n > results.size() ? n - results.size() : 0;
    size_t n_dup = 0;
    std::vector<uint32_t> seen(n, 0);
    for (auto& x : results)
      if (x && x->index >= 0 && static_cast<size_t>(x->index) < n)
        ++seen[x->index];
    // Lost tasks by error code: how many, and the first one's error.
    std::map<std::string, std::pair<size_t, std::string>> why;
    for (size_t i = 0; i < results.size(); ++i) {
      auto& x = results[i];
      if (!x) {
        ++n_lost;
        auto& [count, first] = why[multiproc::to_string(
          multiproc::code_of(x.error()))];
        if (count++ == 0)
          first = "task " + std::to_string(i) + ": "
                  + multiproc::describe(x.error());
        continue;
      }
      bool in_range = x->index >= 0 && static_cast<size_t>(x->index) < n;
      if (static_cast<size_t>(x->index) != i || !in_range
          || seen[x->index] > 1 || x->value != x->index * x->index)
        ++n_dup;
    }
    std::string lost_by;
    for (auto& [code, what] : why)
      lost_by += " " + code + "=" + std::to_string(what.first) + " (first: "
                 + what.second + ")";
    out.note("chaos rep " + std::to_string(r + 1) + ": " + std::to_string(kills)
             + " kills, " + std::to_string(stats.workers_died)
             + " worker deaths, " + std::to_string(stats.redispatched)
             + " re-dispatches, " + std::to_string(stats.quarantined)
             + " quarantined" + (lost_by.empty() ? "" : ", lost:" + lost_by));
    tput.push_back(n / secs);
    lost.push_back(static_cast<double>(n_lost));
    duplicated.push_back(static_cast<double>(n_dup));
    if (auto err = p->close(10s))
      out.note("cpp_pool_chaos: close: " + multiproc::describe(err));
  }
  out.add("cpp_pool_chaos_tput", "tasks/s", tput);
  out.add("cpp_pool_chaos_lost", "count", lost, true);
  out.add("cpp_pool_chaos_duplicated", "count", duplicated, true);
}

// Ends the process if a measurement runs past its limit: a hang is reported,
// never waited out.

// `part`: "" for everything, or one of map1, auto, auto_behavior, latency,
// chaos.
void bench_pool(reporter& out, const std::string& part) {
  auto want = [&](const char* x) { return part.empty() || part == x; };
  auto limit = std::chrono::seconds{120 * reps()};
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  if (want("auto")) {
    auto p = multiproc::pool::start(sys, "bench.pool_square_fn");
    if (!p) {
      out.note("cannot start the bench pool: " + multiproc::describe(p.error()));
      return;
    }
    out.note("pool of " + std::to_string(p->size()) + " task workers");
    watchdog dog{"cpp_pool_map_auto", limit};
    out.add("cpp_pool_map_auto", "tasks/s",
            pool_map_tput(out, *p, "cpp_pool_map_auto", 1000000, 0));
    if (auto err = p->close(10s))
      out.note("bench pool: close: " + multiproc::describe(err));
  }
  if (want("map1") || want("auto_behavior") || want("latency")) {
    auto p = multiproc::pool::start(sys, "bench.pool_squarer");
    if (!p) {
      out.note("cannot start the bench pool: " + multiproc::describe(p.error()));
      return;
    }
    out.note("pool of " + std::to_string(p->size()) + " workers");
    if (want("map1")) {
      watchdog dog{"cpp_pool_map_chunksize1", limit};
      out.add("cpp_pool_map_chunksize1", "tasks/s",
              pool_map_tput(out, *p, "cpp_pool_map_chunksize1", 200000, 1));
    }
    if (want("auto_behavior")) {
      watchdog dog{"cpp_pool_map_auto_behavior", limit};
      out.add("cpp_pool_map_auto_behavior", "tasks/s",
              pool_map_tput(out, *p, "cpp_pool_map_auto_behavior", 1000000,
                            0));
    }
    if (want("latency")) {
      watchdog dog{"cpp_pool_submit_latency_p50", limit};
      out.add("cpp_pool_submit_latency_p50", "us", pool_latency(out, *p, 2000));
    }
    if (auto err = p->close(10s))
      out.note("bench pool: close: " + multiproc::describe(err));
  }
  if (want("chaos")) {
    watchdog dog{"cpp_pool_chaos", limit};
    pool_chaos(out, sys, 2000000);
  }
}

// -- peers and the table ---------------------------------------------------------

// Reads `path`'s lines in the peers' format (zmq_bench, caf_bench output).
bool read_peer_lines(const std::string& path,
                     std::vector<bench_targets::figure>& out) {
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr)
    return false;
  char buf[1024];
  while (std::fgets(buf, sizeof(buf), f) != nullptr) {
    std::string text{buf};
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r'))
      text.pop_back();
    bench_peers::peer_line line;
    if (bench_peers::parse_peer_line(text, line))
      out.push_back({line, "file"});
  }
  std::fclose(f);
  return true;
}

bench_targets::figure figure_of(const result_line& l, const char* source) {
  auto [lo, hi] = std::minmax_element(l.values.begin(), l.values.end());
  bench_peers::peer_line line{l.metric, l.unit,       median(l.values),
                              *lo,      *hi,          l.values.size()};
  return {line, source};
}

template <class T>
void add_unique(std::vector<T>& xs, const T& x) {
  if (std::find(xs.begin(), xs.end(), x) == xs.end())
    xs.push_back(x);
}

// The peers the selected targets compare with, measured in this run: the OS
// limits first (they fork: this process has no threads yet), then Python's
// multiprocessing, then the lines of --peer-lines.
void measure_peers(bench_targets::run_results& run) {
  using bench_targets::peer_kind;
  std::vector<std::string> os_sections;
  std::vector<std::string> py_sections;
  for (auto& t : bench_targets::all_targets()) {
    if (t.peer.empty()
        || std::find(run.parts.begin(), run.parts.end(), t.part)
             == run.parts.end())
      continue;
    auto src = bench_targets::source_of(t.peer);
    if (src.kind == peer_kind::os)
      add_unique(os_sections, src.section);
    else if (src.kind == peer_kind::python)
      add_unique(py_sections, src.section);
  }
  for (auto& section : os_sections) {
    std::fprintf(stderr, "# OS peers: %s\n", section.c_str());
    for (auto& l : bench_peers::measure_os(section, run.notes)) {
      run.peers.push_back(figure_of(l, "os"));
      auto& f = run.peers.back().line;
      std::fprintf(stderr, "%s %s %s min=%s max=%s n=%zu\n", f.metric.c_str(),
                   bench_report::fmt(f.median).c_str(), f.unit.c_str(),
                   bench_report::fmt(f.min).c_str(),
                   bench_report::fmt(f.max).c_str(), f.n);
    }
  }
  if (!py_sections.empty()) {
    run.python_needed = true;
    std::string list;
    for (auto& s : py_sections)
      list += " " + s;
    std::fprintf(stderr, "# Python peers:%s\n", list.c_str());
    watchdog dog{"the Python peers", std::chrono::seconds{120 + 120 * reps()}};
    run.python = bench_peers::run_python_peers(py_sections);
    for (auto& l : run.python.lines)
      run.peers.push_back({l, "python"});
    if (run.python.status != "measured")
      run.notes.push_back("Python peers: " + run.python.status);
  }
  if (!run.peer_lines_file.empty()) {
    std::vector<bench_targets::figure> lines;
    read_peer_lines(run.peer_lines_file, lines);
    for (auto& f : lines) {
      bool known = false;
      for (auto& p : run.peers)
        known = known || p.line.metric == f.line.metric;
      if (!known) // what the tool measured itself wins
        run.peers.push_back(f);
    }
  }
}

} // namespace

int run_bench(const std::vector<std::string>& what_in, bool json,
              const std::string& peer_lines) {
  auto what = what_in.empty() ? std::vector<std::string>{"pipe"} : what_in;
  bench_targets::run_results run;
  run.what = what;
  run.peer_lines_file = peer_lines;
  for (auto& w : what) {
    if (!bench_targets::expand_parts(w, run.parts)) {
      std::string known;
      for (auto& name : bench_targets::benchmark_names())
        known += (known.empty() ? "" : ", ") + name;
      std::fprintf(stderr,
                   "multiproc bench: unknown benchmark '%s' (known: %s)\n",
                   w.c_str(), known.c_str());
      return 2;
    }
  }
  if (!peer_lines.empty()) {
    std::vector<bench_targets::figure> probe;
    if (!read_peer_lines(peer_lines, probe)) {
      std::fprintf(stderr, "multiproc bench: cannot read --peer-lines %s: %s\n",
                   peer_lines.c_str(), std::strerror(errno));
      return 2;
    }
  }
  measure_peers(run);
  // Ours: lines and notes on stderr as they come, the table at the end.
  reporter out{false};
  out.echo_to(stderr);
  for (auto& w : what) {
    if (w == "pipe" || w == "all")
      bench_pipe(out, "");
    else if (w.rfind("pipe.", 0) == 0)
      bench_pipe(out, w.substr(5));
    if (w == "queue" || w == "all")
      bench_queue(out, "");
    else if (w.rfind("queue.", 0) == 0)
      bench_queue(out, w.substr(6));
    if (w == "pool" || w == "all")
      bench_pool(out, "");
    else if (w.rfind("pool.", 0) == 0)
      bench_pool(out, w.substr(5));
    if (w == "shared" || w == "all")
      bench_shared(out, "");
    else if (w.rfind("shared.", 0) == 0)
      bench_shared(out, w.substr(7));
    if (w == "remote" || w == "all")
      bench_remote(out, "");
    else if (w.rfind("remote.", 0) == 0)
      bench_remote(out, w.substr(7));
  }
  for (auto& l : out.lines())
    run.ours.push_back(figure_of(l, "multiproc"));
  run.notes.insert(run.notes.end(), out.notes().begin(), out.notes().end());
  if (json)
    std::printf("%s\n", bench_targets::to_json(run).dump(2).c_str());
  else
    bench_targets::print_table(run);
  std::fflush(stdout);
  return 0;
}
