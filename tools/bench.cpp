// multiproc bench pipe — metrics (compare with ../shared/peers in the same run):
//   cpp_pipe_rtt_p50             us     64-byte typed request from a parent actor
//                                       to a worker actor in a child, and reply
//   cpp_pipe_sync_rtt_p50        us     the same from plain blocking code
//   cpp_pipe_tput_64B            msg/s  one-way typed 64-byte messages into a
//                                       worker actor (counted by the worker)
//   cpp_pipe_bw_1MiB             GB/s   one-way typed 1 MiB messages
//   cpp_spawn_first_reply_<m>    ms     start a worker (method m) and get its
//                                       first reply
// Env: BENCH_REPS (default 5).
#include "bench.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>

#include <caf/all.hpp>
#include <cereal/types/vector.hpp>
#include <nlohmann/json.hpp>

#include "multiproc/function.hpp"
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

} // namespace bench

MULTIPROC_MESSAGE(bench::payload64, "bench.payload64")
MULTIPROC_MESSAGE(bench::blob, "bench.blob")
MULTIPROC_MESSAGE(bench::count_query, "bench.count_query")
MULTIPROC_MESSAGE(bench::counts, "bench.counts")

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

int first_reply_probe(multiproc::pipe_end& parent) {
  return parent.send(int32_t{1}) ? 1 : 0;
}

} // namespace bench

MULTIPROC_WORKER("bench.echo", bench::echo)
MULTIPROC_FUNCTION("bench.first_reply_probe", bench::first_reply_probe)

namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

int reps() {
  if (auto* env = std::getenv("BENCH_REPS"))
    return std::max(1, std::atoi(env));
  return 5;
}

double micros(clock_type::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

struct result_line {
  std::string metric;
  std::string unit;
  std::vector<double> values;
};

std::string fmt(double v) {
  char buf[32];
  if (v < 100)
    std::snprintf(buf, sizeof(buf), "%.3f", v);
  else if (v < 10000)
    std::snprintf(buf, sizeof(buf), "%.1f", v);
  else
    std::snprintf(buf, sizeof(buf), "%.0f", v);
  return buf;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

class reporter {
public:
  explicit reporter(bool json) : json_(json) {
  }

  void add(std::string metric, std::string unit, std::vector<double> values) {
    if (values.empty())
      return;
    if (!json_) {
      auto [lo, hi] = std::minmax_element(values.begin(), values.end());
      std::printf("%s %s %s min=%s max=%s n=%zu\n", metric.c_str(),
                  fmt(median(values)).c_str(), unit.c_str(), fmt(*lo).c_str(),
                  fmt(*hi).c_str(), values.size());
      std::fflush(stdout);
    }
    lines_.push_back({std::move(metric), std::move(unit), std::move(values)});
  }

  void note(const std::string& text) {
    if (!json_)
      std::printf("# %s\n", text.c_str());
    notes_.push_back(text);
  }

  void finish() {
    if (!json_)
      return;
    nlohmann::json out;
    for (auto& l : lines_) {
      auto [lo, hi] = std::minmax_element(l.values.begin(), l.values.end());
      out["metrics"][l.metric] = {{"median", median(l.values)},
                                  {"min", *lo},
                                  {"max", *hi},
                                  {"n", l.values.size()},
                                  {"unit", l.unit}};
    }
    out["notes"] = notes_;
    std::printf("%s\n", out.dump(2).c_str());
  }

private:
  bool json_;
  std::vector<result_line> lines_;
  std::vector<std::string> notes_;
};

double p50(std::vector<double>& samples) {
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

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
  if (want("spawn")) {
    out.add("cpp_spawn_first_reply_forkserver", "ms",
            spawn_first_reply(sys, multiproc::start_method::forkserver));
    out.add("cpp_spawn_first_reply_spawn", "ms",
            spawn_first_reply(sys, multiproc::start_method::spawn));
  }
}

} // namespace

int run_bench(const std::vector<std::string>& what, bool json) {
  reporter out{json};
  bool any = false;
  for (auto& w : what) {
    if (w == "pipe" || w == "all") {
      bench_pipe(out, "");
      any = true;
    } else if (w.rfind("pipe.", 0) == 0) {
      bench_pipe(out, w.substr(5));
      any = true;
    } else {
      std::fprintf(stderr,
                   "multiproc bench: unknown benchmark '%s' (known: pipe, "
                   "pipe.rtt, pipe.tput, pipe.bw, pipe.spawn, all)\n",
                   w.c_str());
      return 2;
    }
  }
  if (!any)
    bench_pipe(out, "");
  out.finish();
  return 0;
}
