#pragma once

// `multiproc bench`: multiproc's benchmarks and, in the same run, the peers
// their targets compare with (the OS limits, os_peers.hpp; Python's
// multiprocessing, python_peers.hpp), printed as one table with ratios and
// verdicts (bench_targets.hpp; docs/performance.md). While it runs, each
// figure goes to stderr in the line format of ../shared/peers:
// `<metric> <median> <unit> min=<min> max=<max> n=<reps>`.

#include <string>
#include <vector>

/// Runs the benchmark groups named in `what` ("pipe", "pool", "all", or one
/// part such as "pool.chaos") and the peers they need, then prints the table
/// on stdout (with `json`: one JSON object instead). `peer_lines`: a file of
/// peer lines the tool does not measure itself (ZeroMQ, CAF; "" for none).
/// Returns the process exit code: 2 for an unknown name or an unreadable
/// file; a target not met is not an error.
int run_bench(const std::vector<std::string>& what, bool json,
              const std::string& peer_lines = "");
