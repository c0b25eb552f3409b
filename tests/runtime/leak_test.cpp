// Tests runtime/process for leaks (issue 6): many spawn/kill cycles per start
// method leave no zombie, descriptor or mapping behind, and children do not
// outlive a parent killed by SIGKILL.
#include "multiproc/process.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <dirent.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "multiproc/bootstrap.hpp"
#include "multiproc/error.hpp"

using namespace multiproc;
using namespace std::chrono_literals;

namespace leak_test {

// -- the children -------------------------------------------------------------

int sleep_forever(child_context&) {
  for (;;)
    ::pause();
}

constexpr int grandchildren = 3;

/// Starts `grandchildren` sleepers, writes their pids on the channel
/// ("pid pid pid\n"), then sleeps until it is killed.
int start_sleepers(child_context& ctx) {
  std::vector<process> children;
  std::string pids;
  for (int i = 0; i < grandchildren; ++i) {
    process_options opts;
    opts.method = start_method::spawn;
    auto p = start_process("leak.sleep_forever", {}, opts);
    if (!p)
      return 70;
    pids += std::to_string(p->pid()) + (i + 1 < grandchildren ? " " : "\n");
    children.push_back(std::move(*p));
  }
  if (::write(ctx.channel.get(), pids.data(), pids.size())
      != static_cast<ssize_t>(pids.size()))
    return 71;
  for (;;)
    ::pause();
}

MULTIPROC_REGISTER_ENTRY("leak.sleep_forever", sleep_forever);
MULTIPROC_REGISTER_ENTRY("leak.start_sleepers", start_sleepers);

// -- what a process holds -----------------------------------------------------

int count_entries(const char* dir_path) {
  DIR* dir = ::opendir(dir_path);
  if (dir == nullptr)
    return -1;
  int n = 0;
  while (auto* ent = ::readdir(dir))
    if (ent->d_name[0] != '.')
      ++n;
  ::closedir(dir);
  return n - 1; // the descriptor of the directory itself
}

int open_descriptors() {
  return count_entries("/proc/self/fd");
}

int mappings() {
  std::ifstream in{"/proc/self/maps"};
  int n = 0;
  for (std::string line; std::getline(in, line);)
    ++n;
  return n;
}

/// The state letter and parent pid of `pid` from /proc/<pid>/stat, or
/// {'\0', 0} if it is gone.
std::pair<char, pid_t> state_of(pid_t pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/stat"};
  std::string line;
  if (!std::getline(in, line))
    return {'\0', 0};
  auto close = line.rfind(')');
  if (close == std::string::npos || close + 4 >= line.size())
    return {'\0', 0};
  char state = line[close + 2];
  pid_t ppid = static_cast<pid_t>(std::stol(line.substr(close + 4)));
  return {state, ppid};
}

/// Zombies whose parent is this process.
std::vector<pid_t> our_zombies() {
  std::vector<pid_t> result;
  DIR* dir = ::opendir("/proc");
  if (dir == nullptr)
    return result;
  while (auto* ent = ::readdir(dir)) {
    char* end = nullptr;
    long pid = std::strtol(ent->d_name, &end, 10);
    if (pid <= 0 || *end != '\0')
      continue;
    auto [state, ppid] = state_of(static_cast<pid_t>(pid));
    if (state == 'Z' && ppid == ::getpid())
      result.push_back(static_cast<pid_t>(pid));
  }
  ::closedir(dir);
  return result;
}

bool dead_or_zombie(pid_t pid) {
  auto state = state_of(pid).first;
  return state == '\0' || state == 'Z' || state == 'X';
}

std::string method_name(const testing::TestParamInfo<start_method>& info) {
  return to_string(info.param);
}

// -- spawn/kill cycles --------------------------------------------------------

constexpr int cycles = 1000;
/// Lines of /proc/self/maps a few threads' arenas or stacks may add.
constexpr int mapping_slack = 16;

class SpawnKillCycles : public testing::TestWithParam<start_method> {
protected:
  /// Starts a sleeper, kills it and joins it.
  void cycle() {
    process_options opts;
    opts.method = GetParam();
    auto p = start_process("leak.sleep_forever", {}, opts);
    ASSERT_TRUE(p) << describe(p.error());
    ASSERT_FALSE(p->kill());
    auto st = p->join(10s);
    ASSERT_TRUE(st) << describe(st.error());
    EXPECT_EQ(st->signal, SIGKILL) << st->to_string();
  }
};

TEST_P(SpawnKillCycles, LeaveNoZombieDescriptorOrMapping) {
  // Warm up: the first children create what the runtime keeps (the fork
  // server's connection, the output forwarder).
  for (int i = 0; i < 10; ++i)
    ASSERT_NO_FATAL_FAILURE(cycle());
  auto fds_before = open_descriptors();
  auto maps_before = mappings();
  for (int i = 0; i < cycles; ++i)
    ASSERT_NO_FATAL_FAILURE(cycle()) << "cycle " << i;
  EXPECT_EQ(our_zombies(), std::vector<pid_t>{});
  // Descriptors of earlier tests in this process (a worker's channel, a
  // forwarder's pipes) may still be closing: give them a moment to settle.
  auto fds_after = open_descriptors();
  for (int i = 0; i < 200 && fds_after != fds_before; ++i) {
    std::this_thread::sleep_for(10ms);
    fds_after = open_descriptors();
  }
  EXPECT_LE(fds_after, fds_before);
  EXPECT_LE(mappings(), maps_before + mapping_slack)
    << "before: " << maps_before;
}

INSTANTIATE_TEST_SUITE_P(AllMethods, SpawnKillCycles,
                         testing::Values(start_method::spawn,
                                         start_method::forkserver,
                                         start_method::fork),
                         method_name);

// -- a parent killed by SIGKILL -----------------------------------------------

/// Reads a line from `fd` within `timeout`.
std::string read_line(int fd, std::chrono::milliseconds timeout) {
  std::string text;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (text.find('\n') == std::string::npos
         && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) == 1) {
      char buf[128];
      auto n = ::read(fd, buf, sizeof(buf));
      if (n <= 0)
        break;
      text.append(buf, static_cast<size_t>(n));
    }
  }
  return text;
}

class ParentKilled : public testing::TestWithParam<start_method> {};

TEST_P(ParentKilled, LeavesNoChildOneSecondLater) {
  // Become the orphaned grandchildren's new parent, so that this test reaps
  // them instead of leaving zombies to an init that may never reap.
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  process_options opts;
  opts.method = GetParam();
  auto parent = start_process("leak.start_sleepers", {}, opts);
  ASSERT_TRUE(parent) << describe(parent.error());
  auto channel = parent->take_channel();
  auto line = read_line(channel.get(), 10s);
  std::vector<pid_t> pids;
  {
    std::istringstream in{line};
    for (long pid; in >> pid;)
      pids.push_back(static_cast<pid_t>(pid));
  }
  ASSERT_EQ(pids.size(), size_t{grandchildren}) << "from the child: " << line;
  for (auto pid : pids)
    EXPECT_FALSE(dead_or_zombie(pid)) << pid;
  ASSERT_FALSE(parent->kill());
  auto killed = std::chrono::steady_clock::now();
  auto st = parent->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_EQ(st->signal, SIGKILL);
  // Each grandchild ends within 1 s of its parent's death.
  std::vector<pid_t> left = pids;
  while (!left.empty()
         && std::chrono::steady_clock::now() - killed < 1000ms) {
    std::vector<pid_t> still;
    for (auto pid : left)
      if (!dead_or_zombie(pid))
        still.push_back(pid);
    left.swap(still);
    if (!left.empty())
      std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(left, std::vector<pid_t>{}) << "alive 1 s after the parent died";
  // Leave nothing behind: kill what is left, then reap every grandchild.
  for (auto pid : left)
    ::kill(pid, SIGKILL);
  for (auto pid : pids) {
    for (int i = 0; i < 500 && state_of(pid).first != '\0'; ++i) {
      if (::waitpid(pid, nullptr, WNOHANG) == pid)
        break;
      std::this_thread::sleep_for(10ms);
    }
    EXPECT_EQ(state_of(pid).first, '\0') << "grandchild " << pid << " left";
  }
  ::prctl(PR_SET_CHILD_SUBREAPER, 0);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, ParentKilled,
                         testing::Values(start_method::spawn,
                                         start_method::forkserver,
                                         start_method::fork),
                         method_name);

} // namespace leak_test
