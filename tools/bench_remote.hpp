#pragma once

// `multiproc bench remote`: a pool's remote worker over loopback TCP
// (network.hpp).

#include <string>

#include "bench_report.hpp"

/// Runs the remote-worker benchmarks: all of them, or one part ("rtt",
/// "tput").
void bench_remote(bench_report::reporter& out, const std::string& part);
