#pragma once

// `multiproc bench`: multiproc's benchmarks, printed in the line format of
// ../shared/peers: `<metric> <median> <unit> min=<min> max=<max> n=<reps>`.

#include <string>
#include <vector>

/// Runs the benchmark groups named in `what` ("pipe", "pool", "all", or one
/// part such as "pool.chaos"); returns the process exit code. With `json`,
/// prints one JSON object instead of lines.
int run_bench(const std::vector<std::string>& what, bool json);
