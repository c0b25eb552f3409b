#pragma once

// Internals shared by bootstrap.cpp, process.cpp, forkserver.cpp,
// child.cpp and output_forwarder.cpp. Not installed.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <sys/types.h>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "multiproc/bootstrap.hpp"
#include "multiproc/fd.hpp"
#include "multiproc/output.hpp"
#include "multiproc/process.hpp"
#include "multiproc/start_method.hpp"

namespace multiproc::detail {

// -- the child's descriptor layout ---------------------------------------------

/// The child's end of the channel, in every child.
constexpr int child_channel_fd = 3;

/// The read end of the parent's lifeline, in every child.
constexpr int child_lifeline_fd = 4;

/// Where a fork child finds the descriptors of process_options::fds: here
/// and above, in their order.
constexpr int child_passed_fd = 5;

/// Most descriptors process_options::fds may pass to a child.
constexpr size_t max_passed_fds = 64;

/// The environment variable that puts a spawned process in worker mode.
constexpr const char* child_env_var = "MULTIPROC_CHILD";

/// Exit code of a child whose boot failed (bad descriptors, no boot record).
constexpr int boot_failed_exit_code = 125;

/// Exit code of a child whose entry is not registered in its executable.
constexpr int unknown_entry_exit_code = 127;

using clock = std::chrono::steady_clock;

// -- runtime state ------------------------------------------------------------

/// Process-wide state of the runtime.
struct runtime_state {
  std::atomic<bool> bootstrapped{false};
  std::atomic<bool> simulate_not_bootstrapped{false};
  std::atomic<bool> child{false};
  std::atomic<int> forkserver_fd{-1};  // parent's control socket, or -1
  std::atomic<pid_t> forkserver_pid{0};
  std::mutex forkserver_mtx;           // one request at a time
  std::mutex lifeline_mtx;
  int lifeline_read = -1;  // handed to children as descriptor 4
  int lifeline_write = -1; // held only by this process
};

runtime_state& state() noexcept;

/// The entry registered as `name`, or nullptr.
entry_function find_entry(const std::string& name);

/// Returns the read end of this process's lifeline, creating the lifeline on
/// first use (children create theirs lazily).
caf::expected<int> lifeline_read_fd();

/// In a freshly forked child: forgets (without closing) every descriptor the
/// runtime state holds for the parent. Call after close_range.
void forget_parent_state_in_child() noexcept;

/// Number of threads of this process (from /proc/self/status), or -1.
int thread_count() noexcept;

// -- system call helpers ---------------------------------------------------------

int pidfd_open(pid_t pid) noexcept;
int pidfd_send_signal(int pidfd, int sig) noexcept;

/// poll() on one descriptor until `deadline` (none: forever), retrying on
/// EINTR. Returns revents, 0 on timeout, -1 on error.
int poll_until(int fd, short events,
               std::optional<clock::time_point> deadline) noexcept;

/// Turns a wait status (waitpid) into an exit_status.
exit_status from_wait_status(int status) noexcept;

// -- child side -----------------------------------------------------------------

/// Lays out a forked child's descriptors: 0 = /dev/null, 1 = `out`,
/// 2 = `err` (-1: /dev/null), 3 = `channel`, 4 = `lifeline`, then the
/// `passed` ones (at most max_passed_fds) at child_passed_fd, +1, ..., and
/// updates `passed` to own these. Closes every other descriptor and marks
/// 3 and up close-on-exec. Safe in a child forked from a single-threaded
/// process. Returns false on failure.
bool setup_child_fds(int out, int err, int channel, int lifeline,
                     std::vector<unique_fd>* passed = nullptr) noexcept;

/// What the parent tells a child before its entry runs.
struct boot_record {
  std::string entry;
  std::string name;
  std::string args;
  /// Becomes child_context::fds. In the parent: close-on-exec duplicates of
  /// process_options::fds; in the child: the received descriptors.
  std::vector<unique_fd> fds;
  /// The fault rules the child takes over (faults.hpp); empty: none.
  std::string faults;
};

/// Writes `rec` to `fd` (blocking socket) within `timeout`, its descriptors
/// attached (SCM_RIGHTS) to the first bytes. A peer that already closed is
/// not an error (the child died: join() reports it).
caf::error write_boot_record(int fd, const boot_record& rec,
                             std::chrono::milliseconds timeout);

/// Reads a boot record from `fd`, consuming exactly its bytes, and receives
/// its descriptors (close-on-exec). Fails with protocol_error if their
/// number differs from the one in the header (closing those that arrived).
caf::expected<boot_record> read_boot_record(int fd,
                                            std::chrono::milliseconds timeout);

/// Runs the entry in a child whose descriptors are laid out: starts the
/// lifeline watcher, calls the entry and exits with its code (exit() when
/// `exec_child`, else _exit() after flushing stdio).
[[noreturn]] void run_child(boot_record rec, start_method method,
                            bool exec_child);

/// Reads the boot record from the channel (fd 3) and runs the child; exits
/// with boot_failed_exit_code if no valid record arrives.
[[noreturn]] void boot_and_run_child(start_method method, bool exec_child);

/// Called by bootstrap(): if this process is a spawned child, runs it and
/// never returns; else returns.
void run_child_if_spawned();

// -- fork server -------------------------------------------------------------------

/// Forks the fork server (bootstrap() only, single-threaded). Returns false
/// if it could not be started.
bool start_forkserver(int lifeline_read) noexcept;

/// Closes the control socket and reaps the server (bounded at 1 s). Runs at
/// normal exit, so that the server does not linger as an orphan zombie.
void stop_forkserver() noexcept;

/// True while the fork server answers; reaps it once it died.
bool forkserver_running() noexcept;

/// A worker forked by the fork server.
struct forkserver_child {
  pid_t pid = -1;
  unique_fd pidfd;
};

/// Asks the fork server for a worker with the given descriptors. The server
/// writes the worker's wait status (an int) to `status_write` when it reaps
/// it, then closes it.
caf::expected<forkserver_child> forkserver_fork(int channel, int out, int err,
                                                int status_write);

// -- output forwarding ------------------------------------------------------------

/// Tracks one child's two output streams, shared by the process handle and
/// the forwarder.
struct output_state {
  std::string name;
  pid_t pid = 0;
  output_sink sink;

  std::mutex mtx;
  std::condition_variable cv;
  int open_streams = 2;

  std::mutex sink_mtx; // held while the sink runs
  bool muted = false;  // set when the handle is gone

  /// Waits until both streams closed or `deadline` passed.
  bool wait_closed(clock::time_point deadline);

  /// From now on, the sink is not called anymore.
  void mute();
};

/// The one thread that reads all children's output pipes and reaps detached
/// children. Starts on demand, stops when it has nothing to watch.
class output_forwarder {
public:
  static output_forwarder& instance();

  /// Watches `fd` (a pipe's read end) until EOF, forwarding its lines.
  caf::error add_stream(unique_fd fd, bool is_stderr,
                        std::shared_ptr<output_state> out);

  /// Reaps the child behind `pidfd` (our direct child) once it exits.
  caf::error add_reaper(unique_fd pidfd);

  /// If nothing is watched, joins the thread. Returns true if a thread was
  /// joined just now, false otherwise. `running` tells whether it still runs.
  bool stop_if_idle(bool& running);

  ~output_forwarder();

private:
  struct entry;

  output_forwarder() = default;
  caf::error add(std::shared_ptr<entry> e);
  void run();
  void handle(const std::shared_ptr<entry>& e);
  void remove(const std::shared_ptr<entry>& e);

  std::mutex mtx_;
  std::thread thread_;
  bool running_ = false;
  bool stopping_ = false;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::unordered_map<int, std::shared_ptr<entry>> entries_;
};

// -- process handle state -----------------------------------------------------------

struct process_state {
  pid_t pid = -1;
  std::string name;
  start_method method = start_method::spawn;
  unique_fd pidfd;
  unique_fd status_fd; // forkserver: the wait status arrives here
  std::shared_ptr<output_state> output;

  std::mutex mtx;
  std::optional<exit_status> status;
  bool server_lost = false; // forkserver: status pipe hit EOF without data
  bool detached = false;
  unique_fd channel;

  /// Non-blocking status check; reaps. Requires `mtx` held.
  std::optional<exit_status> poll_status_locked();
};

} // namespace multiproc::detail
