#pragma once

/// \file
/// How a child process comes to life: the three start methods of Python's
/// multiprocessing. See docs/processes.md for the trade-offs.
/// Thread-safe: everything here may be called from any thread. Only
/// parse_start_method() fails (a value, invalid_argument); nothing throws.

#include <string>
#include <vector>

#include <caf/expected.hpp>

namespace multiproc {

/// How start_process() creates a child.
enum class start_method {
  /// posix_spawn of /proc/self/exe in worker mode: a fresh process image.
  /// Always available, works from any number of threads, ~0.5 ms.
  spawn,
  /// Ask the fork server (a single-threaded process forked by bootstrap()
  /// before any thread existed) to fork a worker. Fast (well under 1 ms) and
  /// safe from multithreaded parents; available once bootstrap() started it.
  forkserver,
  /// Plain fork() of the calling process. Refused with errc::fork_unsafe
  /// unless the process has exactly one thread.
  fork,
};

/// Returns "spawn", "forkserver" or "fork".
const char* to_string(start_method x) noexcept;

/// Parses "spawn", "forkserver" or "fork". Fails with errc::invalid_argument
/// naming the bad value and the valid ones.
caf::expected<start_method> parse_start_method(const std::string& str);

/// The method start_process() uses when process_options::method is empty:
/// forkserver while the fork server is running (it is as fast as fork and
/// stays safe after the parent starts threads), else spawn (it works from
/// any thread and any process, children included). Never fork: fork becomes
/// unsafe as soon as the parent starts its first thread.
start_method default_start_method() noexcept;

/// The methods that can work in this process right now: spawn, forkserver
/// (only while the fork server is running) and fork (it still fails with
/// errc::fork_unsafe if the process has more than one thread at that call).
std::vector<start_method> available_start_methods();

} // namespace multiproc
