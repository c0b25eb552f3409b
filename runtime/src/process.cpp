// start_process() and the process handle.

#include "multiproc/process.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <algorithm>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "multiproc/bootstrap.hpp"
#include "multiproc/error.hpp"
#include "multiproc/faults.hpp"
#include "process_internal.hpp"

extern char** environ;

namespace multiproc {

// -- exit status --------------------------------------------------------------------

std::string exit_status::to_string() const {
  if (signaled)
    return std::string{"killed by "} + signal_name(signal);
  if (code < 0)
    return "exit status unknown";
  return "exited with code " + std::to_string(code);
}

const char* signal_name(int sig) noexcept {
  switch (sig) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGILL: return "SIGILL";
    case SIGTRAP: return "SIGTRAP";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGSEGV: return "SIGSEGV";
    case SIGUSR2: return "SIGUSR2";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
    case SIGSTKFLT: return "SIGSTKFLT";
    case SIGCHLD: return "SIGCHLD";
    case SIGCONT: return "SIGCONT";
    case SIGSTOP: return "SIGSTOP";
    case SIGTSTP: return "SIGTSTP";
    case SIGTTIN: return "SIGTTIN";
    case SIGTTOU: return "SIGTTOU";
    case SIGURG: return "SIGURG";
    case SIGXCPU: return "SIGXCPU";
    case SIGXFSZ: return "SIGXFSZ";
    case SIGVTALRM: return "SIGVTALRM";
    case SIGPROF: return "SIGPROF";
    case SIGWINCH: return "SIGWINCH";
    case SIGIO: return "SIGIO";
    case SIGPWR: return "SIGPWR";
    case SIGSYS: return "SIGSYS";
    default: break;
  }
  thread_local char buf[32];
  std::snprintf(buf, sizeof(buf), "signal %d", sig);
  return buf;
}

namespace detail {

exit_status from_wait_status(int status) noexcept {
  exit_status result;
  if (WIFSIGNALED(status)) {
    result.signaled = true;
    result.signal = WTERMSIG(status);
  } else if (WIFEXITED(status)) {
    result.code = WEXITSTATUS(status);
  } else {
    result.code = -1;
  }
  return result;
}

namespace {

exit_status from_siginfo(const siginfo_t& info) noexcept {
  exit_status result;
  if (info.si_code == CLD_EXITED) {
    result.code = info.si_status;
  } else {
    result.signaled = true;
    result.signal = info.si_status;
  }
  return result;
}

exit_status unknown_status() noexcept {
  exit_status result;
  result.code = -1;
  return result;
}

} // namespace

std::optional<exit_status> process_state::poll_status_locked() {
  if (status)
    return status;
  if (method != start_method::forkserver) {
    siginfo_t info{};
    int rc;
    do {
      rc = ::waitid(static_cast<idtype_t>(P_PIDFD),
                    static_cast<id_t>(pidfd.get()), &info, WEXITED | WNOHANG);
    } while (rc < 0 && errno == EINTR);
    if (rc == 0 && info.si_pid != 0)
      status = from_siginfo(info);
    else if (rc < 0) // ECHILD: someone else reaped our child
      status = unknown_status();
    return status;
  }
  // Fork server child: the server writes the wait status when it reaps it.
  auto read_status = [this]() -> bool {
    int value = 0;
    auto n = ::read(status_fd.get(), &value, sizeof(value));
    if (n == static_cast<ssize_t>(sizeof(value))) {
      status = from_wait_status(value);
      return true;
    }
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
      server_lost = true;
    return false;
  };
  if (!server_lost && read_status())
    return status;
  pollfd p{pidfd.get(), POLLIN, 0};
  if (::poll(&p, 1, 0) != 1)
    return std::nullopt; // still running
  // It exited: the server reports within microseconds unless it is gone.
  if (!server_lost) {
    poll_until(status_fd.get(), POLLIN,
               clock::now() + std::chrono::seconds{1});
    if (read_status())
      return status;
  }
  status = unknown_status();
  return status;
}

} // namespace detail

// -- process ------------------------------------------------------------------------

process::process(std::shared_ptr<detail::process_state> st) noexcept
  : state_(std::move(st)) {
  // nop
}

process& process::operator=(process&& other) noexcept {
  if (this != &other) {
    release();
    state_ = std::move(other.state_);
  }
  return *this;
}

process::~process() {
  release();
}

void process::release() noexcept {
  if (!state_)
    return;
  auto st = std::move(state_);
  std::unique_lock<std::mutex> guard{st->mtx};
  if (st->detached) {
    // The fork server reaps its own workers; ours go to the forwarder.
    if (!st->status && st->method != start_method::forkserver && st->pidfd)
      [[maybe_unused]] auto err
        = detail::output_forwarder::instance().add_reaper(std::move(st->pidfd));
    return;
  }
  if (!st->poll_status_locked()) {
    detail::pidfd_send_signal(st->pidfd.get(), SIGKILL);
    auto deadline = detail::clock::now() + std::chrono::seconds{5};
    int wait_fd = st->method == start_method::forkserver && !st->server_lost
                    ? st->status_fd.get()
                    : st->pidfd.get();
    while (!st->poll_status_locked()
           && detail::poll_until(wait_fd, POLLIN, deadline) > 0) {
      if (st->server_lost)
        wait_fd = st->pidfd.get();
    }
  }
  guard.unlock();
  if (st->output) {
    st->output->wait_closed(detail::clock::now() + std::chrono::seconds{1});
    st->output->mute();
  }
}

pid_t process::pid() const noexcept {
  return state_ ? state_->pid : -1;
}

const std::string& process::name() const noexcept {
  static const std::string empty;
  return state_ ? state_->name : empty;
}

start_method process::method() const noexcept {
  return state_ ? state_->method : start_method::spawn;
}

bool process::is_alive() {
  return state_ && !status();
}

std::optional<exit_status> process::status() {
  if (!state_)
    return std::nullopt;
  std::lock_guard<std::mutex> guard{state_->mtx};
  return state_->poll_status_locked();
}

caf::expected<exit_status> process::join(
  std::optional<std::chrono::milliseconds> timeout) {
  if (!state_)
    return make_error(errc::invalid_argument, "join on an empty process");
  std::optional<detail::clock::time_point> deadline;
  if (timeout)
    deadline = detail::clock::now() + *timeout;
  std::optional<exit_status> st;
  for (;;) {
    int wait_fd;
    {
      std::lock_guard<std::mutex> guard{state_->mtx};
      st = state_->poll_status_locked();
      if (st)
        break;
      wait_fd = state_->method == start_method::forkserver
                    && !state_->server_lost
                  ? state_->status_fd.get()
                  : state_->pidfd.get();
    }
    int rev = detail::poll_until(wait_fd, POLLIN, deadline);
    if (rev == 0)
      return make_error(errc::timeout,
                        "process " + state_->name + "["
                          + std::to_string(state_->pid)
                          + "] still running after "
                          + std::to_string(timeout->count()) + " ms");
    if (rev < 0)
      return make_system_error("poll on the child's exit descriptor", errno);
  }
  if (state_->output)
    state_->output->wait_closed(detail::clock::now()
                                + std::chrono::seconds{1});
  return *st;
}

caf::error process::terminate() {
  return signal(SIGTERM);
}

caf::error process::kill() {
  return signal(SIGKILL);
}

caf::error process::signal(int sig) {
  if (!state_)
    return make_error(errc::invalid_argument, "signal to an empty process");
  std::lock_guard<std::mutex> guard{state_->mtx};
  if (state_->status)
    return caf::none;
  if (detail::pidfd_send_signal(state_->pidfd.get(), sig) == 0
      || errno == ESRCH)
    return caf::none;
  return make_system_error("cannot send " + std::string{signal_name(sig)}
                             + " to " + state_->name + "["
                             + std::to_string(state_->pid) + "]",
                           errno);
}

int process::exit_fd() const noexcept {
  return state_ ? state_->pidfd.get() : -1;
}

unique_fd process::take_channel() {
  if (!state_)
    return {};
  std::lock_guard<std::mutex> guard{state_->mtx};
  return std::move(state_->channel);
}

void process::detach() {
  if (!state_)
    return;
  std::lock_guard<std::mutex> guard{state_->mtx};
  state_->detached = true;
}

// -- start_process ------------------------------------------------------------------

namespace {

struct child_fds {
  unique_fd channel_parent, channel_child;
  unique_fd out_read, out_write;
  unique_fd err_read, err_write;
};

caf::error make_pipe(unique_fd& r, unique_fd& w) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return make_system_error("cannot create an output pipe", errno);
  r.reset(fds[0]);
  w.reset(fds[1]);
  return caf::none;
}

/// Returns `fd` if it is outside 0..9, else a close-on-exec duplicate above 9
/// stored in `tmp`, so that dup2 onto 0..4 in the child cannot overwrite a
/// source that is still needed.
int above_targets(int fd, unique_fd& tmp) {
  if (fd >= 10)
    return fd;
  tmp.reset(::fcntl(fd, F_DUPFD_CLOEXEC, 10));
  return tmp.get();
}

caf::expected<pid_t> spawn_child(const std::string& executable,
                                 const child_fds& fds, int lifeline) {
  unique_fd tmp[4];
  int src[4] = {above_targets(fds.out_write.get(), tmp[0]),
                above_targets(fds.err_write.get(), tmp[1]),
                above_targets(fds.channel_child.get(), tmp[2]),
                above_targets(lifeline, tmp[3])};
  for (int fd : src)
    if (fd < 0)
      return make_system_error("cannot duplicate a descriptor", errno);
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&actions);
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, src[0], 1);
  posix_spawn_file_actions_adddup2(&actions, src[1], 2);
  posix_spawn_file_actions_adddup2(&actions, src[2], detail::child_channel_fd);
  posix_spawn_file_actions_adddup2(&actions, src[3],
                                   detail::child_lifeline_fd);
  posix_spawn_file_actions_addclosefrom_np(&actions, 5);
  sigset_t none;
  sigset_t all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK
                                    | POSIX_SPAWN_SETSIGDEF);
  // The environment, plus the worker-mode marker.
  std::string marker = std::string{detail::child_env_var} + "=1";
  std::vector<char*> env;
  auto prefix = std::string{detail::child_env_var} + "=";
  for (char** p = environ; p != nullptr && *p != nullptr; ++p)
    if (std::strncmp(*p, prefix.c_str(), prefix.size()) != 0)
      env.push_back(*p);
  env.push_back(&marker[0]);
  env.push_back(nullptr);
  std::string exe = executable.empty() ? "/proc/self/exe" : executable;
  char* argv[] = {&exe[0], nullptr};
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, exe.c_str(), &actions, &attr, argv, env.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0)
    return make_error(errc::spawn_failed, "cannot execute '" + exe
                                            + "': " + std::strerror(rc));
  return pid;
}

/// Close-on-exec duplicates of the descriptors in process_options::fds.
/// Fails with invalid_argument on too many or on one that is not open.
caf::expected<std::vector<unique_fd>>
duplicate_fds(const std::vector<int>& fds) {
  if (fds.size() > detail::max_passed_fds)
    return make_error(errc::invalid_argument,
                      "process_options::fds holds "
                        + std::to_string(fds.size())
                        + " descriptors; at most "
                        + std::to_string(detail::max_passed_fds)
                        + " can be passed to a child");
  std::vector<unique_fd> result;
  result.reserve(fds.size());
  for (size_t i = 0; i < fds.size(); ++i) {
    if (::fcntl(fds[i], F_GETFD) < 0)
      return make_error(errc::invalid_argument,
                        "process_options::fds[" + std::to_string(i) + "] = "
                          + std::to_string(fds[i])
                          + " is not an open descriptor");
    result.emplace_back(::fcntl(fds[i], F_DUPFD_CLOEXEC, 0));
    if (!result.back())
      return make_system_error("cannot duplicate descriptor "
                                 + std::to_string(fds[i]),
                               errno);
  }
  return result;
}

caf::error check_fork_safe() {
  bool running = false;
  bool joined = detail::output_forwarder::instance().stop_if_idle(running);
  int threads = detail::thread_count();
  // A thread that was just joined may still be counted for a moment.
  for (int i = 0; joined && threads > 1 && i < 50; ++i) {
    ::usleep(200);
    threads = detail::thread_count();
  }
  if (threads == 1)
    return caf::none;
  std::string why = threads < 0 ? std::string{"cannot count the threads"}
                                : "this process has " + std::to_string(threads)
                                    + " threads";
  if (running)
    why += " (one is multiproc's output forwarder, which runs while any "
           "child's output is open)";
  return make_error(errc::fork_unsafe,
                    "start_method::fork needs a single-threaded process, but "
                      + why
                      + "; forking a multithreaded process can deadlock the "
                        "child. Use start_method::forkserver or "
                        "start_method::spawn instead");
}

} // namespace

caf::expected<process> start_process(const std::string& entry,
                                     std::string args, process_options opts) {
  if (!bootstrapped())
    return make_error(
      errc::not_bootstrapped,
      "an attempt has been made to start a new process before the current "
      "process has finished its bootstrapping phase: call "
      "multiproc::bootstrap(argc, argv) as the first statement of main(), "
      "before starting any thread or process");
  if (!has_entry(entry))
    return make_error(errc::unknown_entry,
                      "no entry is registered as '" + entry
                        + "' (register it at namespace scope with "
                          "MULTIPROC_REGISTER_ENTRY)");
  std::string child_faults; // the fault rules the child takes over
  if (auto err = faults::detail::on_spawn(child_faults))
    return err;
  auto passed = duplicate_fds(opts.fds);
  if (!passed)
    return std::move(passed.error());
  auto method = opts.method ? *opts.method : default_start_method();
  if (method == start_method::forkserver && !detail::forkserver_running())
    return make_error(errc::spawn_failed,
                      "the fork server is not running (bootstrap() was told "
                      "not to start it, ran with several threads alive, runs "
                      "in a child, or the server died); use "
                      "start_method::spawn");
  if (method == start_method::fork)
    if (auto err = check_fork_safe())
      return err;
  auto lifeline = detail::lifeline_read_fd();
  if (!lifeline)
    return std::move(lifeline.error());
  child_fds fds;
  if (!make_socketpair(fds.channel_parent, fds.channel_child))
    return make_system_error("cannot create the channel socketpair", errno);
  if (auto err = make_pipe(fds.out_read, fds.out_write))
    return err;
  if (auto err = make_pipe(fds.err_read, fds.err_write))
    return err;
  auto st = std::make_shared<detail::process_state>();
  st->name = opts.name.empty() ? entry : std::move(opts.name);
  st->method = method;
  detail::boot_record rec{entry, st->name, std::move(args),
                          std::move(*passed), std::move(child_faults)};
  switch (method) {
    case start_method::spawn: {
      auto pid = spawn_child(opts.executable, fds, *lifeline);
      if (!pid)
        return std::move(pid.error());
      st->pid = *pid;
      st->pidfd.reset(detail::pidfd_open(*pid));
      break;
    }
    case start_method::forkserver: {
      int status_pipe[2];
      if (::pipe2(status_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        return make_system_error("cannot create a status pipe", errno);
      st->status_fd.reset(status_pipe[0]);
      unique_fd status_write{status_pipe[1]};
      auto child = detail::forkserver_fork(fds.channel_child.get(),
                                           fds.out_write.get(),
                                           fds.err_write.get(),
                                           status_write.get());
      if (!child)
        return std::move(child.error());
      st->pid = child->pid;
      st->pidfd = std::move(child->pidfd);
      break;
    }
    case start_method::fork: {
      pid_t pid = ::fork();
      if (pid < 0)
        return make_system_error("fork", errno);
      if (pid == 0) {
        if (!detail::setup_child_fds(fds.out_write.get(), fds.err_write.get(),
                                     fds.channel_child.get(), *lifeline,
                                     &rec.fds))
          ::_exit(detail::boot_failed_exit_code);
        detail::forget_parent_state_in_child();
        detail::run_child(std::move(rec), start_method::fork, false);
      }
      st->pid = pid;
      st->pidfd.reset(detail::pidfd_open(pid));
      break;
    }
  }
  if (!st->pidfd) {
    // Only on descriptor exhaustion: the child cannot be tracked, end it.
    auto err = make_system_error("pidfd_open", errno);
    ::kill(st->pid, SIGKILL);
    if (method != start_method::forkserver)
      ::waitpid(st->pid, nullptr, 0);
    return err;
  }
  fds.channel_child.reset();
  fds.out_write.reset();
  fds.err_write.reset();
  st->channel = std::move(fds.channel_parent);
  st->output = std::make_shared<detail::output_state>();
  st->output->name = st->name;
  st->output->pid = st->pid;
  st->output->sink = opts.sink ? std::move(opts.sink) : default_output_sink();
  process result{st};
  auto& fwd = detail::output_forwarder::instance();
  if (auto err = fwd.add_stream(std::move(fds.out_read), false, st->output))
    return err; // the handle's destructor kills and reaps the child
  if (auto err = fwd.add_stream(std::move(fds.err_read), true, st->output))
    return err;
  if (method != start_method::fork)
    if (auto err = detail::write_boot_record(st->channel.get(), rec,
                                             std::chrono::seconds{10}))
      return err;
  return result;
}

caf::error join_all(std::vector<process>& children,
                    std::chrono::milliseconds timeout) {
  auto deadline = detail::clock::now() + timeout;
  std::string failures;
  bool timed_out = false;
  for (auto& child : children) {
    if (child.pid() < 0)
      continue;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - detail::clock::now());
    auto status = child.join(std::max(left, std::chrono::milliseconds{0}));
    std::string who = child.name() + "[" + std::to_string(child.pid()) + "]";
    if (!status) {
      timed_out = true;
      (void) child.kill();
      (void) child.join(std::chrono::milliseconds{5000});
      failures += (failures.empty() ? "" : "; ") + who
                  + " still ran after "
                  + std::to_string(timeout.count()) + " ms: killed";
    } else if (!status->success()) {
      failures += (failures.empty() ? "" : "; ") + who + " "
                  + status->to_string();
    }
  }
  if (failures.empty())
    return caf::none;
  return make_error(timed_out ? errc::timeout : errc::child_failed, failures);
}

} // namespace multiproc
