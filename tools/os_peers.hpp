#pragma once

// The operating system's limits, measured by `multiproc bench` itself as the
// yardstick for its figures: the same metrics, names and method as
// ../shared/peers/os_limits.cpp, for the sections the targets compare with.
// Each section forks plain child processes (no exec): call it while this
// process has no other threads, i.e. before any actor_system exists.
// Not thread-safe. Env: BENCH_REPS (bench_report::reps()).

#include <string>
#include <vector>

#include "bench_report.hpp"

namespace bench_peers {

/// "rtt": 64-byte ping-pong with a child over a socketpair(AF_UNIX,
/// SOCK_STREAM), 20,000 round trips per repetition after 1,000 warm-up ones:
///   os_socketpair_rtt_p50, os_socketpair_rtt_mean   us
/// "bw": 512 one-way 1 MiB writes into a socketpair per repetition, timed to
/// the child's 1-byte ack after it read them all:
///   os_socketpair_bw_1MiB_msgs   GB/s
/// "shm": 64-byte ping-pong through shared memory, both sides spinning,
/// 200,000 round trips per repetition after 2,000 warm-up ones:
///   os_shm_pingpong_spin_rtt_p50, os_shm_pingpong_spin_rtt_mean   us
/// Returns the section's lines; an unknown section or a failed system call
/// gives no lines and a note in `notes` (what was attempted and strerror).
std::vector<bench_report::result_line>
measure_os(const std::string& section, std::vector<std::string>& notes);

} // namespace bench_peers
