// The `multiproc` command: `demo` runs a small pipeline over worker processes,
// `info` prints what this build and machine offer, `bench` runs benchmarks.
// The executable is also its own child process: bootstrap() comes first.

#include <cstddef>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench.hpp"
#include "demo.hpp"
#include "info.hpp"
#include "multiproc/bootstrap.hpp"

int main(int argc, char** argv) {
  // In a child process this runs the worker and never returns.
  multiproc::bootstrap(argc, argv);
  CLI::App app{"multiproc: Python's multiprocessing for C++, on CAF actors"};
  app.require_subcommand(1);
  int rc = 0;

  demo_options demo;
  std::string method;
  auto* demo_cmd = app.add_subcommand(
    "demo", "Hash generated blocks on worker processes, crash one of them, "
            "verify the results; then run a pool with a progress display "
            "and a supervised pipeline, killing a worker in each");
  demo_cmd->add_option("--workers", demo.workers, "Worker processes (>= 2)")
    ->check(CLI::Range(size_t{2}, size_t{64}))
    ->capture_default_str();
  demo_cmd->add_option("--tasks", demo.tasks, "Blocks to hash")
    ->check(CLI::Range(size_t{1}, size_t{100000}))
    ->capture_default_str();
  demo_cmd
    ->add_option("--pool-tasks", demo.pool_tasks,
                 "Tasks for the pool stage (0: skip it)")
    ->check(CLI::Range(size_t{0}, size_t{100000}))
    ->capture_default_str();
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
    rc = run_demo(demo);
  });

  auto* info_cmd = app.add_subcommand(
    "info", "Start methods, limits, library and protocol versions");
  info_cmd->callback([&] { rc = run_info(); });

  std::vector<std::string> what;
  bool json = false;
  auto* bench_cmd = app.add_subcommand("bench", "Run benchmarks");
  bench_cmd
    ->add_option("what", what,
                 "Benchmark groups: pipe, pool, queue, shared, all, or one "
                 "part of a group: pipe.rtt, pipe.tput, pipe.bw, pipe.spawn, "
                 "pool.map1, pool.auto, pool.auto_behavior, pool.latency, "
                 "pool.chaos, queue.1p1c, queue.2p2c, queue.rtt, "
                 "shared.incr, shared.dict, shared.rtt")
    ->check(CLI::IsMember({"pipe", "pool", "queue", "shared", "all",
                           "pipe.rtt", "pipe.tput", "pipe.bw", "pipe.spawn",
                           "pool.map1", "pool.auto", "pool.auto_behavior",
                           "pool.latency", "pool.chaos", "queue.1p1c",
                           "queue.2p2c", "queue.rtt", "shared.incr",
                           "shared.dict", "shared.rtt"}));
  bench_cmd->add_flag("--json", json, "Print one JSON object");
  bench_cmd->callback([&] {
    if (what.empty())
      what.emplace_back("all");
    rc = run_bench(what, json);
  });

  CLI11_PARSE(app, argc, argv);
  return rc;
}
