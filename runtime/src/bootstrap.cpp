// bootstrap(), the entry registry, start-method names and the runtime state.

#include "multiproc/bootstrap.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "multiproc/detail/bootstrap_seam.hpp"
#include "multiproc/error.hpp"
#include "multiproc/faults.hpp"
#include "multiproc/log.hpp"
#include "process_internal.hpp"

namespace multiproc {

// -- start methods ---------------------------------------------------------------

const char* to_string(start_method x) noexcept {
  switch (x) {
    case start_method::spawn: return "spawn";
    case start_method::forkserver: return "forkserver";
    case start_method::fork: return "fork";
  }
  return "invalid start_method";
}

caf::expected<start_method> parse_start_method(const std::string& str) {
  for (auto x : {start_method::spawn, start_method::forkserver,
                 start_method::fork})
    if (str == to_string(x))
      return x;
  return make_error(errc::invalid_argument,
                    "unknown start method '" + str
                      + "' (valid: spawn, forkserver, fork)");
}

start_method default_start_method() noexcept {
  return detail::forkserver_running() ? start_method::forkserver
                                      : start_method::spawn;
}

std::vector<start_method> available_start_methods() {
  std::vector<start_method> result{start_method::spawn};
  if (detail::forkserver_running())
    result.push_back(start_method::forkserver);
  result.push_back(start_method::fork);
  return result;
}

// -- entry registry ----------------------------------------------------------------

namespace {

struct entry_registry {
  std::mutex mtx;
  std::map<std::string, entry_function> entries;
};

entry_registry& registry() {
  static entry_registry instance;
  return instance;
}

} // namespace

bool register_entry(const char* name, entry_function fn) {
  auto& reg = registry();
  std::lock_guard<std::mutex> guard{reg.mtx};
  if (!reg.entries.emplace(name, fn).second) {
    logger()->critical("the entry '{}' is registered twice; entry names must "
                       "be unique in a program",
                       name);
    std::abort();
  }
  return true;
}

bool has_entry(const std::string& name) {
  auto& reg = registry();
  std::lock_guard<std::mutex> guard{reg.mtx};
  return reg.entries.count(name) > 0;
}

namespace detail {

entry_function find_entry(const std::string& name) {
  auto& reg = registry();
  std::lock_guard<std::mutex> guard{reg.mtx};
  auto i = reg.entries.find(name);
  return i == reg.entries.end() ? nullptr : i->second;
}

// -- runtime state -----------------------------------------------------------------

runtime_state& state() noexcept {
  // Never destroyed: children and the forwarder may use it during exit.
  static auto* instance = new runtime_state;
  return *instance;
}

caf::expected<int> lifeline_read_fd() {
  auto& st = state();
  std::lock_guard<std::mutex> guard{st.lifeline_mtx};
  if (st.lifeline_read < 0) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0)
      return make_system_error("cannot create the lifeline pipe", errno);
    st.lifeline_read = fds[0];
    st.lifeline_write = fds[1];
  }
  return st.lifeline_read;
}

void forget_parent_state_in_child() noexcept {
  auto& st = state();
  st.lifeline_read = -1;
  st.lifeline_write = -1;
  st.forkserver_fd = -1;
  st.forkserver_pid = 0;
}

int thread_count() noexcept {
  int fd = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  char buf[4096];
  size_t len = 0;
  for (;;) {
    auto n = ::read(fd, buf + len, sizeof(buf) - 1 - len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    len += static_cast<size_t>(n);
    if (len == sizeof(buf) - 1)
      break;
  }
  ::close(fd);
  buf[len] = '\0';
  auto pos = std::strstr(buf, "\nThreads:");
  if (pos == nullptr)
    return -1;
  return std::atoi(pos + 9);
}

int pidfd_open(pid_t pid) noexcept {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

int pidfd_send_signal(int pidfd, int sig) noexcept {
  return static_cast<int>(
    ::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

int poll_until(int fd, short events,
               std::optional<clock::time_point> deadline) noexcept {
  for (;;) {
    int timeout_ms = -1;
    if (deadline) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        *deadline - clock::now());
      // Round up so that we never return before the deadline.
      timeout_ms = left.count() < 0 ? 0 : static_cast<int>(left.count()) + 1;
    }
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, timeout_ms);
    if (rc > 0)
      return p.revents;
    if (rc == 0) {
      if (!deadline || clock::now() >= *deadline)
        return 0;
      continue;
    }
    if (errno != EINTR)
      return -1;
  }
}

void simulate_not_bootstrapped(bool on) noexcept {
  state().simulate_not_bootstrapped = on;
}

} // namespace detail

// -- bootstrap -----------------------------------------------------------------------

void bootstrap(int, char**, const bootstrap_options& opts) {
  auto& st = detail::state();
  if (st.bootstrapped)
    return;
  faults::detail::init_from_environment();
  // Worker mode: never returns.
  detail::run_child_if_spawned();
  auto lifeline = detail::lifeline_read_fd();
  if (!lifeline) {
    logger()->critical("bootstrap: {}", describe(lifeline.error()));
    std::abort();
  }
  if (opts.start_forkserver && detail::thread_count() == 1
      && detail::start_forkserver(*lifeline))
    std::atexit([] { detail::stop_forkserver(); });
  st.bootstrapped = true;
}

bool bootstrapped() noexcept {
  auto& st = detail::state();
  return st.bootstrapped && !st.simulate_not_bootstrapped;
}

bool is_child_process() noexcept {
  return detail::state().child;
}

} // namespace multiproc
