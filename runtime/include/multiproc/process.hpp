#pragma once

/// \file
/// Child processes: start_process() and the `process` handle.
///
/// A child runs a registered entry (see bootstrap.hpp) with stdin on
/// /dev/null and stdout/stderr on pipes that the parent forwards line by line
/// to an output_sink. Children never outlive the parent: each watches a
/// lifeline pipe and dies when the parent dies, even by SIGKILL.
/// See docs/processes.md.
///
/// Thread safety: start_process() and join_all() may be called from any
/// thread (start_method::fork still needs a single-threaded process); the
/// `process` handle says what it allows. Lifetimes: a handle owns its child
/// (its destructor kills a child that still runs, unless detached).
/// Errors are values (caf::error, caf::expected); each call names its codes.

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <sys/types.h>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "multiproc/error.hpp"
#include "multiproc/fd.hpp"
#include "multiproc/output.hpp"
#include "multiproc/start_method.hpp"

namespace multiproc {

namespace detail {
struct process_state;
} // namespace detail

/// How a child process ended.
struct exit_status {
  /// True if a signal killed the child; `signal` then names it.
  bool signaled = false;
  /// The exit code when !signaled; -1 when the status could not be learned
  /// (the child was reaped by someone else, or the fork server died).
  int code = 0;
  /// The killing signal when signaled.
  int signal = 0;

  /// True if the child exited normally with code 0.
  bool success() const noexcept {
    return !signaled && code == 0;
  }

  /// "exited with code 3", "killed by SIGSEGV" or "exit status unknown".
  std::string to_string() const;
};

/// Returns "SIGSEGV", "SIGKILL", ...; for a number without a name "signal 42"
/// (in a thread_local buffer, valid until the next call on this thread).
const char* signal_name(int sig) noexcept;

/// Options of start_process().
struct process_options {
  /// How to start the child; empty: default_start_method().
  std::optional<start_method> method;
  /// The name in output lines and errors; empty: the entry name.
  std::string name;
  /// Receives the child's output lines; empty: default_output_sink().
  output_sink sink;
  /// The program to execute (spawn only); empty: /proc/self/exe. It must be
  /// a multiproc program that calls bootstrap() first in main().
  std::string executable;
  /// Descriptors the child receives, in this order, in child_context::fds;
  /// the caller keeps its own (they are duplicated); at most 64.
  std::vector<int> fds;
};

/// Handle to a child process started by start_process(). Move-only.
///
/// Thread-safe: is_alive, status, join, terminate, kill, signal and
/// take_channel may be called concurrently from several threads. Destroying
/// or moving onto a handle while another thread uses it is not allowed.
/// The destructor kills a child that is still running (unless detached), so
/// children never leak. A moved-from handle has pid() == -1 and no child.
class process {
public:
  /// An empty handle: pid() == -1, no child.
  process() noexcept = default;
  /// Internal: wraps the state start_process() made.
  explicit process(std::shared_ptr<detail::process_state> st) noexcept;
  /// Takes over `other`'s child; `other` becomes empty.
  process(process&&) noexcept = default;
  /// Releases the current child as the destructor does, then takes `other`.
  process& operator=(process&& other) noexcept;
  process(const process&) = delete;
  process& operator=(const process&) = delete;

  /// If the child still runs and detach() was not called: SIGKILL, reap
  /// (bounded at 5 s), and deliver its remaining output (bounded at 1 s);
  /// the sink is not called after the destructor returns. A detached child is
  /// left running and reaped by the runtime when it exits.
  ~process();

  /// The child's pid, or -1 for an empty handle.
  pid_t pid() const noexcept;

  /// The name used in output lines and errors.
  const std::string& name() const noexcept;

  /// How the child was started.
  start_method method() const noexcept;

  /// True while the child has not exited. Reaps it if it has.
  bool is_alive();

  /// The exit status if the child has exited (reaping it), else nullopt.
  /// Never blocks for long: once exit_fd() polls readable it returns a value.
  std::optional<exit_status> status();

  /// Waits until the child exits (nullopt: forever) and until its stdout and
  /// stderr are fully forwarded (at most ~1 s after the exit, in case a
  /// grandchild still holds the pipes). Fails with errc::timeout if the child
  /// still runs when `timeout` expires; the child is left untouched then.
  caf::expected<exit_status> join(
    std::optional<std::chrono::milliseconds> timeout = std::nullopt);

  /// Sends SIGTERM. A no-op for a child that already exited.
  caf::error terminate();

  /// Sends SIGKILL. A no-op for a child that already exited.
  caf::error kill();

  /// Sends `sig` through the pidfd (no pid-reuse race). A no-op for a child
  /// that already exited.
  caf::error signal(int sig);

  /// A descriptor (a pidfd) that polls readable once the child has exited.
  /// Owned by the handle; -1 for an empty handle.
  int exit_fd() const noexcept;

  /// The parent's end of the parent<->child socketpair (AF_UNIX, SOCK_STREAM,
  /// blocking, close-on-exec). The first call moves it out; later calls
  /// return an empty unique_fd.
  unique_fd take_channel();

  /// The destructor will leave the child running; the runtime reaps it when
  /// it exits. It still dies with the parent (lifeline).
  void detach();

private:
  void release() noexcept;

  std::shared_ptr<detail::process_state> state_;
};

/// Starts a child process that runs the entry registered as `entry` with
/// `args` as child_context::args. Returns once the child exists; it may not
/// have reached the entry yet.
///
/// Errors: not_bootstrapped (bootstrap() was not called), unknown_entry (no
/// such entry), invalid_argument (more than 64 opts.fds, or one that is not
/// an open descriptor), fork_unsafe (fork with more than one thread),
/// spawn_failed (the executable could not be executed, the fork server is
/// gone, ...), system_error (descriptors or processes exhausted).
caf::expected<process> start_process(const std::string& entry,
                                     std::string args,
                                     process_options opts = {});

/// Waits for every child within one shared `timeout` (Python's
/// `for p in procs: p.join()`, bounded); a child still running when it
/// expires is killed and reaped. Returns none if every child exited with
/// code 0, else errc::child_failed (or timeout, if a child had to be
/// killed) naming each child that did not, e.g. "worker[123] exited with
/// code 2".
caf::error join_all(std::vector<process>& children,
                    std::chrono::milliseconds timeout);

} // namespace multiproc
