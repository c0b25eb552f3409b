// The `multiproc` command: `demo` runs a small pipeline over worker processes,
// `info` prints what this build and machine offer, `bench` runs benchmarks,
// `chaos` puts a pool and a queue pipeline under random SIGKILL and SIGSTOP,
// `worker` joins a published pool as a remote worker (network.hpp).
// The executable is also its own child process: bootstrap() comes first.

#include <cstddef>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench.hpp"
#include "bench_targets.hpp"
#include "chaos.hpp"
#include "demo.hpp"
#include "info.hpp"
#include "multiproc/bootstrap.hpp"
#include "multiproc/network.hpp"

int main(int argc, char** argv) {
  // In a child process this runs the worker and never returns.
  multiproc::bootstrap(argc, argv);
  // The worker command parses its own options (the same in any program).
  if (argc > 1 && std::string{argv[1]} == "worker") {
    std::vector<const char*> args{"multiproc worker"};
    args.insert(args.end(), argv + 2, argv + argc);
    return multiproc::worker_command(static_cast<int>(args.size()),
                                     args.data());
  }
  CLI::App app{"multiproc: Python's multiprocessing for C++, on CAF actors"};
  app.require_subcommand(1);
  int rc = 0;

  demo_options demo;
  std::string method;
  auto* demo_cmd = app.add_subcommand(
    "demo", "Hash generated blocks on worker processes, crash one of them, "
            "verify the results; then the main job: a pool with a progress "
            "display whose tasks crash, hang and lose a worker to SIGKILL, "
            "a supervised pipeline and shared state, each losing a process; "
            "a summary ends it");
  demo_cmd->add_option("--workers", demo.workers, "Worker processes (>= 2)")
    ->check(CLI::Range(size_t{2}, size_t{64}))
    ->capture_default_str();
  demo_cmd->add_option("--tasks", demo.tasks, "Blocks to hash")
    ->check(CLI::Range(size_t{1}, size_t{100000}))
    ->capture_default_str();
  demo_cmd
    ->add_option("--size", demo.size,
                 "Tasks for the pool stage, the main job (0: skip it)")
    ->check(CLI::Range(size_t{0}, size_t{1000000}))
    ->capture_default_str();
  demo_cmd
    ->add_option("--crashes", demo.crashes,
                 "Pool tasks that crash their worker on every attempt")
    ->check(CLI::Range(size_t{0}, size_t{100}))
    ->capture_default_str();
  demo_cmd
    ->add_option("--hangs", demo.hangs,
                 "Pool tasks that hang their worker until the deadline")
    ->check(CLI::Range(size_t{0}, size_t{100}))
    ->capture_default_str();
  size_t deadline_ms = static_cast<size_t>(demo.task_timeout.count());
  demo_cmd
    ->add_option("--deadline-ms", deadline_ms,
                 "The pool's task deadline in milliseconds")
    ->check(CLI::Range(size_t{100}, size_t{600000}))
    ->capture_default_str();
  demo_cmd->add_flag("--json", demo.json,
                     "Print one JSON object on stdout at the end (the "
                     "narration goes to stderr)");
  demo_cmd->add_option("--metrics", demo.metrics_path,
                       "Write the metrics to this file at the end (- for "
                       "stdout; *.json: JSON, else Prometheus text)");
  demo_cmd
    ->add_option("--pipeline-blocks", demo.pipeline_blocks,
                 "Blocks for the supervised pipeline stage (0: skip it)")
    ->check(CLI::Range(size_t{0}, size_t{100000}))
    ->capture_default_str();
  demo_cmd
    ->add_option("--shared-increments", demo.shared_increments,
                 "Increments per process for the shared-state stage (0: skip "
                 "it)")
    ->check(CLI::Range(size_t{0}, size_t{10000000}))
    ->capture_default_str();
  demo_cmd
    ->add_option("--method", method,
                 "Start method (default: the library's default)")
    ->check(CLI::IsMember({"fork", "forkserver", "spawn"}));
  demo_cmd->callback([&] {
    if (!method.empty())
      demo.method = *multiproc::parse_start_method(method);
    demo.task_timeout = std::chrono::milliseconds{deadline_ms};
    rc = run_demo(demo);
  });

  auto* info_cmd = app.add_subcommand(
    "info", "Start methods, limits, library and protocol versions");
  info_cmd->callback([&] { rc = run_info(); });

  std::vector<std::string> what;
  bool json = false;
  auto* bench_cmd = app.add_subcommand(
    "bench", "Run benchmarks and, in the same run, the peers they are "
             "compared with (the OS limits; Python's multiprocessing when "
             "python3 is on PATH); print one table with ratios and targets");
  bench_cmd
    ->add_option("what", what,
                 "Benchmark groups (pipe, pool, queue, shared, remote, all) or "
                 "parts of a group (pipe.rtt, ...)")
    ->check(CLI::IsMember(bench_targets::benchmark_names()));
  std::string peer_lines;
  bench_cmd->add_flag("--json", json,
                      "Print one JSON object instead of the table: our "
                      "figures, the peers', the targets with ratios and "
                      "verdicts");
  bench_cmd->add_option("--peer-lines", peer_lines,
                        "A file of peer lines ('<metric> <median> <unit> "
                        "min= max= n=') for peers the tool does not measure "
                        "itself (ZeroMQ, CAF: bench/*_vs_peers.sh)");
  bench_cmd->callback([&] {
    if (what.empty())
      what.emplace_back("all");
    rc = run_bench(what, json, peer_lines);
  });

  chaos_options chaos;
  std::string chaos_method;
  uint64_t chaos_seed = 0;
  bool chaos_json = false;
  auto* chaos_cmd = app.add_subcommand(
    "chaos", "Run a pool and a supervised queue pipeline in rounds while "
             "their workers get random SIGKILL and SIGSTOP; check that "
             "nothing is lost or duplicated and nothing leaks");
  chaos_cmd
    ->add_option("--seconds", chaos.seconds,
                 "Start rounds until this many seconds have passed")
    ->check(CLI::Range(0.0, 86400.0))
    ->capture_default_str();
  chaos_cmd
    ->add_option("--workers", chaos.workers,
                 "Pool workers (the pipeline has max(2, workers / 2) "
                 "consumers)")
    ->check(CLI::Range(size_t{1}, size_t{64}))
    ->capture_default_str();
  auto* seed_opt = chaos_cmd->add_option(
    "--seed", chaos_seed,
    "Seed of the monkeys' choices (default: a random one, printed)");
  chaos_cmd
    ->add_option("--method", chaos_method,
                 "Start method (default: the library's default; fork is "
                 "refused: the run has threads)")
    ->check(CLI::IsMember({"fork", "forkserver", "spawn"}));
  chaos_cmd
    ->add_option("--pool-tasks", chaos.pool_tasks, "Pool tasks per round")
    ->check(CLI::Range(size_t{1}, size_t{10000000}))
    ->capture_default_str();
  chaos_cmd
    ->add_option("--queue-items", chaos.queue_items,
                 "Pipeline items per round")
    ->check(CLI::Range(size_t{1}, size_t{10000000}))
    ->capture_default_str();
  chaos_cmd->add_flag("--json", chaos_json, "Print one JSON object");
  chaos_cmd->callback([&] {
    if (!chaos_method.empty())
      chaos.method = *multiproc::parse_start_method(chaos_method);
    if (seed_opt->count() > 0)
      chaos.seed = chaos_seed;
    chaos.json = chaos_json;
    rc = run_chaos(chaos);
  });

  // Listed in --help; `multiproc worker ...` is run above.
  app.add_subcommand("worker",
                     "Join a published pool as a remote worker: --connect "
                     "HOST:PORT --entry NAME (see multiproc worker --help)")
    ->allow_extras();

  CLI11_PARSE(app, argc, argv);
  return rc;
}
