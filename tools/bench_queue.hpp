#pragma once

// `multiproc bench queue`: the shared-memory queue between processes.

#include <string>

#include "bench_report.hpp"

/// Runs the queue benchmarks: all of them, or one part ("tput", "1p1c",
/// "2p2c", "rtt").
void bench_queue(bench_report::reporter& out, const std::string& part);
