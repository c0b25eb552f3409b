// multiproc bench queue — metrics (compare with ../shared/peers in the same run):
//   cpp_queue_tput_1p1c   msg/s  typed 64-byte messages (Cereal-encoded) from
//                                one producer process to one consumer process
//                                through a queue<T> (defaults: 1024 slots,
//                                batching on), first put to last get
//   cpp_queue_tput_2p2c   msg/s  the same with 2 producers and 2 consumers
//   cpp_queue_rtt_p50     us     a request and its reply over two queues
//                                between two processes (queue<int64_t>)
// Every consumed message is counted: a run that loses or duplicates one
// prints a note and no figure. Env: BENCH_REPS (default 5).
#include "bench_queue.hpp"

#include <array>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_report.hpp"
#include "multiproc/bootstrap.hpp"
#include "multiproc/process.hpp"
#include "multiproc/queue.hpp"

namespace bench {

/// The 64-byte message of the throughput runs.
struct queue_msg64 {
  std::array<char, 64> data{};
  template <class Archive>
  void serialize(Archive& ar) {
    ar(cereal::binary_data(data.data(), data.size()));
  }
};

/// What a benchmark child tells the parent.
struct queue_report {
  int32_t kind = 0; // ready, produced, consumed
  int64_t count = 0;
  int64_t end_ns = 0; // steady_clock of the last get (consumers)
  template <class Archive>
  void serialize(Archive& ar) {
    ar(kind, count, end_ns);
  }
};

} // namespace bench

MULTIPROC_MESSAGE(bench::queue_msg64, "bench.queue_msg64")
MULTIPROC_MESSAGE(bench::queue_report, "bench.queue_report")

namespace {

using namespace std::chrono_literals;
using namespace bench_report;
using multiproc::describe;
using multiproc::queue;

enum report_kind : int32_t { ready = 0, produced = 1, consumed = 2 };

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           clock_type::now().time_since_epoch())
    .count();
}

/// Children's descriptors: 0 the work queue, 1 the report queue, 2 the
/// start signal (producers only).
struct child_queues {
  queue<bench::queue_msg64> work;
  queue<bench::queue_report> reports;
  queue<int32_t> go;
};

bool attach(multiproc::child_context& ctx, child_queues& qs) {
  if (ctx.fds.size() < 2)
    return false;
  auto work = queue<bench::queue_msg64>::attach(std::move(ctx.fds[0]));
  auto reports = queue<bench::queue_report>::attach(std::move(ctx.fds[1]));
  if (!work || !reports)
    return false;
  qs.work = std::move(*work);
  qs.reports = std::move(*reports);
  if (ctx.fds.size() > 2) {
    auto go = queue<int32_t>::attach(std::move(ctx.fds[2]));
    if (!go)
      return false;
    qs.go = std::move(*go);
  }
  return true;
}

int producer_main(multiproc::child_context& ctx) {
  child_queues qs;
  if (!attach(ctx, qs))
    return 2;
  auto n = std::stoll(ctx.args);
  if (qs.reports.put({ready, 0, 0}, 10s) || !qs.go.get(30s))
    return 3;
  bench::queue_msg64 msg;
  for (int64_t i = 0; i < n; ++i) {
    msg.data[0] = static_cast<char>(i);
    if (auto err = qs.work.put(msg, 30s)) {
      std::fprintf(stderr, "producer: %s\n", describe(err).c_str());
      return 4;
    }
  }
  return qs.reports.put({produced, n, 0}, 10s) ? 5 : 0;
}

int consumer_main(multiproc::child_context& ctx) {
  child_queues qs;
  if (!attach(ctx, qs))
    return 2;
  if (qs.reports.put({ready, 0, 0}, 10s))
    return 3;
  int64_t n = 0;
  int64_t last = 0;
  for (;;) {
    auto msg = qs.work.get(30s);
    if (!msg) {
      if (msg.error() != multiproc::errc::end_of_stream) {
        std::fprintf(stderr, "consumer: %s\n", describe(msg.error()).c_str());
        return 4;
      }
      break;
    }
    ++n;
    last = now_ns();
  }
  return qs.reports.put({consumed, n, last}, 10s) ? 5 : 0;
}

int echo_main(multiproc::child_context& ctx) {
  if (ctx.fds.size() != 2)
    return 2;
  auto requests = queue<int64_t>::attach(std::move(ctx.fds[0]));
  auto replies = queue<int64_t>::attach(std::move(ctx.fds[1]));
  if (!requests || !replies)
    return 3;
  for (;;) {
    auto x = requests->get(30s);
    if (!x)
      return x.error() == multiproc::errc::end_of_stream ? 0 : 4;
    if (replies->put(*x + 1, 10s))
      return 5;
  }
}

MULTIPROC_REGISTER_ENTRY("bench.queue_producer", producer_main);
MULTIPROC_REGISTER_ENTRY("bench.queue_consumer", consumer_main);
MULTIPROC_REGISTER_ENTRY("bench.queue_echo", echo_main);

/// Joins every child (killing those still alive after a bound).
void reap(std::vector<multiproc::process>& children) {
  for (auto& c : children)
    if (!c.join(10s)) {
      c.kill();
      (void) c.join(5s);
    }
  children.clear();
}

/// One throughput run: messages/s, or a negative value after a failure
/// (with a note).
double tput_once(reporter& out, int producers, int consumers, int64_t n) {
  auto work = queue<bench::queue_msg64>::create();
  auto reports = queue<bench::queue_report>::create();
  auto go = queue<int32_t>::create();
  if (!work || !reports || !go) {
    out.note("cannot create the bench queues");
    return -1;
  }
  std::vector<multiproc::process> children;
  auto fail = [&](const std::string& why) {
    out.note("queue tput: " + why);
    work->close();
    go->close();
    for (auto& c : children)
      c.kill();
    reap(children);
    return -1.0;
  };
  for (int i = 0; i < producers + consumers; ++i) {
    bool producer = i >= consumers; // consumers first: they wait
    multiproc::process_options opts;
    opts.fds = {work->fd(), reports->fd()};
    if (producer)
      opts.fds.push_back(go->fd());
    auto c = multiproc::start_process(
      producer ? "bench.queue_producer" : "bench.queue_consumer",
      std::to_string(n / producers), opts);
    if (!c)
      return fail("cannot start a child: " + describe(c.error()));
    children.push_back(std::move(*c));
  }
  auto next_report = [&](int32_t kind) -> caf::expected<bench::queue_report> {
    auto r = reports->get(60s);
    if (r && r->kind != kind)
      return multiproc::make_error(multiproc::errc::protocol_error,
                                   "unexpected report");
    return r;
  };
  for (int i = 0; i < producers + consumers; ++i)
    if (auto r = next_report(ready); !r)
      return fail("a child did not get ready: " + describe(r.error()));
  auto start = now_ns();
  for (int i = 0; i < producers; ++i)
    if (auto err = go->put(1, 1s))
      return fail(describe(err));
  for (int i = 0; i < producers; ++i)
    if (auto r = next_report(produced); !r)
      return fail("a producer did not finish: " + describe(r.error()));
  work->close();
  int64_t got = 0;
  int64_t end = start;
  for (int i = 0; i < consumers; ++i) {
    auto r = next_report(consumed);
    if (!r)
      return fail("a consumer did not finish: " + describe(r.error()));
    got += r->count;
    end = std::max(end, r->end_ns);
  }
  reap(children);
  auto expected = n / producers * producers;
  if (got != expected) {
    out.note("queue tput: consumed " + std::to_string(got) + " of "
             + std::to_string(expected));
    return -1;
  }
  return static_cast<double>(expected) * 1e9 / static_cast<double>(end - start);
}

std::vector<double> tput(reporter& out, int producers, int consumers,
                         int64_t n) {
  std::vector<double> values;
  for (int r = 0; r < reps(); ++r) {
    auto v = tput_once(out, producers, consumers, n);
    if (v < 0)
      return {};
    values.push_back(v);
  }
  return values;
}

std::vector<double> rtt(reporter& out, int n) {
  std::vector<double> values;
  for (int rep = 0; rep < reps(); ++rep) {
    multiproc::queue_options opts;
    opts.capacity = 64;
    auto requests = queue<int64_t>::create(opts);
    auto replies = queue<int64_t>::create(opts);
    if (!requests || !replies) {
      out.note("cannot create the rtt queues");
      return {};
    }
    multiproc::process_options popts;
    popts.fds = {requests->fd(), replies->fd()};
    auto echo = multiproc::start_process("bench.queue_echo", {}, popts);
    if (!echo) {
      out.note("cannot start the echo child: " + describe(echo.error()));
      return {};
    }
    std::vector<double> samples;
    samples.reserve(static_cast<size_t>(n));
    bool ok = true;
    for (int i = -1000; i < n && ok; ++i) { // 1000 warm-up round trips
      auto t0 = clock_type::now();
      ok = !requests->put(i, 1s);
      auto reply = ok ? replies->get(1s) : caf::expected<int64_t>{0};
      ok = ok && reply && *reply == i + 1;
      if (i >= 0)
        samples.push_back(micros(clock_type::now() - t0));
    }
    requests->close();
    std::vector<multiproc::process> children;
    children.push_back(std::move(*echo));
    reap(children);
    if (!ok) {
      out.note("queue rtt: a round trip failed or returned a wrong reply");
      return {};
    }
    values.push_back(p50(samples));
  }
  return values;
}

} // namespace

void bench_queue(reporter& out, const std::string& part) {
  auto want = [&](const char* x) { return part.empty() || part == x; };
  auto limit = std::chrono::seconds{60 * reps()};
  if (want("tput") || want("1p1c")) {
    watchdog dog{"cpp_queue_tput_1p1c", limit};
    out.add("cpp_queue_tput_1p1c", "msg/s", tput(out, 1, 1, 4000000));
  }
  if (want("tput") || want("2p2c")) {
    watchdog dog{"cpp_queue_tput_2p2c", limit};
    out.add("cpp_queue_tput_2p2c", "msg/s", tput(out, 2, 2, 4000000));
  }
  if (want("rtt")) {
    watchdog dog{"cpp_queue_rtt_p50", limit};
    out.add("cpp_queue_rtt_p50", "us", rtt(out, 20000));
  }
}
