#pragma once

// Python's multiprocessing as the peer of `multiproc bench`: the script
// tools/peers/python_peers.py, embedded into the tool at build time, written
// to a temporary file and run with the python3 found on PATH (nothing else
// is looked up at run time). Not thread-safe; starts one child process
// (posix_spawn, through popen), so it may run beside other threads.

#include <string>
#include <vector>

namespace bench_peers {

/// One line in the peers' format:
/// `<metric> <median> <unit> min=<min> max=<max> n=<repetitions>`.
struct peer_line {
  std::string metric;
  std::string unit;
  double median = 0;
  double min = 0;
  double max = 0;
  size_t n = 0;
};

/// Reads one line in the peers' format; false for a note ('#') or anything
/// else that is not one.
bool parse_peer_line(const std::string& text, peer_line& out);

/// What running the Python peers gave.
struct python_run {
  /// False when no python3 is on PATH: `lines` is empty, `status` says so.
  bool available = false;
  /// "measured", "no python3 on PATH", or what failed (exit status, a
  /// temporary file that could not be written).
  std::string status;
  /// The interpreter's version line ("python 3.11.2, start method ..."), if
  /// it printed one.
  std::string version;
  std::vector<peer_line> lines;
};

/// The full path of python3 on PATH, or "" if there is none.
std::string find_python3();

/// Runs the embedded script's `sections` (start, pool, executor, queue,
/// value, manager) in one python3 process, BENCH_REPS passed on through the
/// environment; the script's stderr goes to this process's stderr. Returns
/// at once, with available = false, if python3 is not on PATH.
python_run run_python_peers(const std::vector<std::string>& sections);

} // namespace bench_peers
