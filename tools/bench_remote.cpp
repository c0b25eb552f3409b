// multiproc bench remote — metrics (compare with ../shared/peers in the same
// run: caf_bench remote):
//   cpp_remote_rtt_p50   us     one submit -> future.get at a time, to a pool
//                               whose only worker is remote: a second process
//                               (`multiproc worker --connect 127.0.0.1:PORT`)
//                               that authenticated over loopback TCP; the task
//                               is an int32 that comes back, p50
//   cpp_remote_tput_64B  msg/s  64-byte tasks, each answered with its 64
//                               bytes, through map() (automatic chunks) to
//                               that worker: tasks answered per second
// Every answer is checked: a wrong or missing one prints a note and no
// figure. Env: BENCH_REPS (default 5).
#include "bench_remote.hpp"

#include <array>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <cereal/types/array.hpp>

#include "bench_report.hpp"
#include "multiproc/network.hpp"
#include "multiproc/pool.hpp"

extern char** environ;

namespace remote_bench {

struct ping {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

struct payload64 {
  std::array<char, 64> data{};
  template <class Archive>
  void serialize(Archive& ar) {
    ar(cereal::binary_data(data.data(), data.size()));
  }
};

caf::behavior echo(caf::event_based_actor*) {
  return {
    [](const ping& x) { return x; },
    [](const payload64& x) { return x; },
  };
}

} // namespace remote_bench

MULTIPROC_MESSAGE(remote_bench::ping, "bench.remote.ping")
MULTIPROC_MESSAGE(remote_bench::payload64, "bench.remote.payload64")
MULTIPROC_WORKER("bench.remote_echo", remote_bench::echo)

namespace {

using namespace std::chrono_literals;
using namespace bench_report;
using remote_bench::payload64;
using remote_bench::ping;
using multiproc::describe;

/// The remote worker: this program's `worker` command in a process of its
/// own; killed and reaped when the benchmark ends.
class remote_process {
public:
  bool start(uint16_t port, const std::string& secret) {
    auto address = "127.0.0.1:" + std::to_string(port);
    std::string exe = "/proc/self/exe";
    std::vector<std::string> args{exe,       "worker", "--connect", address,
                                  "--entry", "bench.remote_echo"};
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_strings{"MULTIPROC_SECRET=" + secret};
    for (char** e = environ; *e != nullptr; ++e)
      if (std::string{*e}.rfind("MULTIPROC_SECRET=", 0) != 0)
        env_strings.emplace_back(*e);
    std::vector<char*> envp;
    for (auto& e : env_strings)
      envp.push_back(e.data());
    envp.push_back(nullptr);
    return ::posix_spawn(&pid_, exe.c_str(), nullptr, nullptr, argv.data(),
                         envp.data())
           == 0;
  }

  ~remote_process() {
    if (pid_ <= 0)
      return;
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
  }

private:
  pid_t pid_ = -1;
};

std::vector<double> remote_rtt(reporter& out, multiproc::pool& p, int n) {
  return p50_per_rep(n, [&](int32_t x, double* us) {
    auto t0 = clock_type::now();
    auto y = p.submit<ping>(ping{x}).get();
    if (us != nullptr)
      *us = micros(clock_type::now() - t0);
    if (!y || y->value != x) {
      out.note("cpp_remote_rtt_p50: task " + std::to_string(x) + ": "
               + (y ? "returned " + std::to_string(y->value)
                    : describe(y.error())));
      return false;
    }
    return true;
  });
}

std::vector<double> remote_tput(reporter& out, multiproc::pool& p, size_t n) {
  std::vector<payload64> tasks(n);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < 64; ++j)
      tasks[i].data[j] = static_cast<char>((i + j) & 0x7f);
  std::vector<double> result;
  for (int r = 0; r < reps(); ++r) {
    auto t0 = clock_type::now();
    auto answers = p.map<payload64>(tasks);
    auto secs = std::chrono::duration<double>(clock_type::now() - t0).count();
    if (answers.size() != n) {
      out.note("cpp_remote_tput_64B: " + std::to_string(answers.size())
               + " answers for " + std::to_string(n) + " tasks");
      return {};
    }
    for (size_t i = 0; i < n; ++i) {
      if (!answers[i] || answers[i]->data != tasks[i].data) {
        out.note("cpp_remote_tput_64B: task " + std::to_string(i) + ": "
                 + (answers[i] ? "wrong bytes" : describe(answers[i].error())));
        return {};
      }
    }
    result.push_back(static_cast<double>(n) / secs);
  }
  return result;
}

} // namespace

void bench_remote(reporter& out, const std::string& part) {
  auto want = [&](const char* x) { return part.empty() || part == x; };
  auto limit = std::chrono::seconds{60 + 60 * reps()};
  watchdog dog{"multiproc bench remote", limit};
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  multiproc::pool_options opts;
  opts.remote_only = true;
  auto p = multiproc::pool::start(sys, "bench.remote_echo", opts);
  if (!p) {
    out.note("cannot start the bench pool: " + describe(p.error()));
    return;
  }
  multiproc::network_options net;
  net.secret = "bench-" + std::to_string(::getpid()) + "-"
               + std::to_string(clock_type::now().time_since_epoch().count());
  net.log = [](const std::string&) {}; // joins and leaves: not bench output
  auto port = p->publish(net);
  if (!port) {
    out.note("cannot publish the bench pool: " + describe(port.error()));
    return;
  }
  remote_process worker;
  if (!worker.start(*port, net.secret)) {
    out.note("cannot start the remote worker process");
    return;
  }
  auto deadline = clock_type::now() + 30s;
  while (p->workers().empty() && clock_type::now() < deadline)
    std::this_thread::sleep_for(5ms);
  if (p->workers().empty()) {
    out.note("the remote worker did not join within 30 s");
    return;
  }
  out.note("remote worker " + p->workers().front().name + " joined on 127.0.0.1:"
           + std::to_string(*port));
  if (want("rtt"))
    out.add("cpp_remote_rtt_p50", "us", remote_rtt(out, *p, 2000));
  if (want("tput"))
    out.add("cpp_remote_tput_64B", "msg/s", remote_tput(out, *p, 200000));
  if (auto err = p->close(10s))
    out.note("bench pool: close: " + describe(err));
}
