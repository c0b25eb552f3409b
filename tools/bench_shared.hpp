#pragma once

// `multiproc bench shared`: the shared-state actor (value, dict) used from
// other processes.

#include <string>

#include "bench_report.hpp"

/// Runs the shared-state benchmarks: all of them, or one part ("incr",
/// "dict", "rtt").
void bench_shared(bench_report::reporter& out, const std::string& part);
