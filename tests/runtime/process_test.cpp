// Tests for runtime/process*, bootstrap and the fork server. The test binary
// is its own child: the entries below run in child processes.

#include "multiproc/process.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "multiproc/bootstrap.hpp"
#include "multiproc/detail/bootstrap_seam.hpp"
#include "multiproc/error.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
using namespace multiproc;
using multiproc::test::read_until_eof;

namespace {

// -- helpers shared by parent and child ------------------------------------------

bool write_all(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    auto n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

/// Sleeps up to 60 s; the parent kills it earlier.
void sleep_a_while() {
  for (int i = 0; i < 600; ++i)
    ::usleep(100 * 1000);
}

// -- entries (run in children) -------------------------------------------------------

int exit_with_code(child_context& ctx) {
  return std::stoi(ctx.args);
}

int crash_with_segv(child_context&) {
  // Bypass sanitizer handlers: the default action is the point here.
  std::signal(SIGSEGV, SIG_DFL);
  std::raise(SIGSEGV);
  return 0;
}

int sleeper(child_context&) {
  sleep_a_while();
  return 0;
}

int echo_args(child_context& ctx) {
  return write_all(ctx.channel.get(), ctx.args) ? 0 : 1;
}

int describe_self(child_context& ctx) {
  std::string text = ctx.entry + "|" + ctx.name + "|" + to_string(ctx.method)
                     + "|" + (is_child_process() ? "child" : "parent");
  return write_all(ctx.channel.get(), text) ? 0 : 1;
}

int list_fds(child_context& ctx) {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr)
    return 1;
  std::string fds;
  while (auto* ent = ::readdir(dir)) {
    if (ent->d_name[0] == '.')
      continue;
    if (std::atoi(ent->d_name) == ::dirfd(dir))
      continue;
    if (!fds.empty())
      fds += ',';
    fds += ent->d_name;
  }
  ::closedir(dir);
  return write_all(ctx.channel.get(), fds) ? 0 : 1;
}

int print_then_crash(child_context&) {
  std::printf("first line\n");
  std::fprintf(stderr, "second line\n");
  std::printf("third line\n");
  std::signal(SIGSEGV, SIG_DFL);
  std::raise(SIGSEGV);
  return 0;
}

int print_partial_line(child_context&) {
  std::printf("complete\nno newline at the end");
  return 0;
}

int start_grandchild(child_context& ctx) {
  auto grandchild = start_process("test.sleeper", "");
  if (!grandchild)
    return 2;
  grandchild->detach();
  if (!write_all(ctx.channel.get(), std::to_string(grandchild->pid()) + "\n"))
    return 3;
  sleep_a_while();
  return 0;
}

/// Expects two descriptors: copies the content of the first (a memfd) into
/// the second (a pipe's write end), then reports on the channel how many
/// descriptors arrived and whether each is close-on-exec.
int use_passed_fds(child_context& ctx) {
  std::string report = std::to_string(ctx.fds.size());
  for (auto& fd : ctx.fds) {
    int flags = ::fcntl(fd.get(), F_GETFD);
    if (flags < 0)
      report += " closed";
    else
      report += (flags & FD_CLOEXEC) != 0 ? " cloexec" : " inheritable";
  }
  if (!write_all(ctx.channel.get(), report))
    return 1;
  if (ctx.fds.size() != 2)
    return 2;
  char buf[256];
  auto n = ::pread(ctx.fds[0].get(), buf, sizeof(buf), 0);
  if (n < 0)
    return 3;
  std::string text = "child read: " + std::string{buf, static_cast<size_t>(n)};
  if (::write(ctx.fds[1].get(), text.data(), text.size())
      != static_cast<ssize_t>(text.size()))
    return 4;
  return 0;
}

int count_fds(child_context& ctx) {
  return write_all(ctx.channel.get(), std::to_string(ctx.fds.size())) ? 0 : 1;
}

} // namespace

MULTIPROC_REGISTER_ENTRY("test.exit_with_code", exit_with_code);
MULTIPROC_REGISTER_ENTRY("test.crash_with_segv", crash_with_segv);
MULTIPROC_REGISTER_ENTRY("test.sleeper", sleeper);
MULTIPROC_REGISTER_ENTRY("test.echo_args", echo_args);
MULTIPROC_REGISTER_ENTRY("test.describe_self", describe_self);
MULTIPROC_REGISTER_ENTRY("test.list_fds", list_fds);
MULTIPROC_REGISTER_ENTRY("test.print_then_crash", print_then_crash);
MULTIPROC_REGISTER_ENTRY("test.print_partial_line", print_partial_line);
MULTIPROC_REGISTER_ENTRY("test.start_grandchild", start_grandchild);
MULTIPROC_REGISTER_ENTRY("test.use_passed_fds", use_passed_fds);
MULTIPROC_REGISTER_ENTRY("test.count_fds", count_fds);

namespace {

using test::line_collector;

/// True if `pid` is gone or a zombie.
bool dead_or_zombie(pid_t pid) {
  auto path = "/proc/" + std::to_string(pid) + "/stat";
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr)
    return true;
  char buf[512] = {};
  auto n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  std::string stat{buf, n};
  auto pos = stat.rfind(')');
  return pos == std::string::npos || pos + 2 >= stat.size()
         || stat[pos + 2] == 'Z' || stat[pos + 2] == 'X';
}

/// A memfd holding `content`, or an empty unique_fd.
unique_fd make_memfd(const std::string& content) {
  unique_fd fd{::memfd_create("process_test", MFD_CLOEXEC)};
  if (fd
      && ::write(fd.get(), content.data(), content.size())
           != static_cast<ssize_t>(content.size()))
    fd.reset();
  return fd;
}

bool wait_dead_or_zombie(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (dead_or_zombie(pid))
      return true;
    std::this_thread::sleep_for(10ms);
  }
  return dead_or_zombie(pid);
}

class ProcessStart : public testing::TestWithParam<start_method> {
protected:
  caf::expected<process> start(const std::string& entry, std::string args = {},
                               process_options opts = {}) {
    opts.method = GetParam();
    return start_process(entry, std::move(args), std::move(opts));
  }
};

std::string method_name(const testing::TestParamInfo<start_method>& info) {
  return to_string(info.param);
}

} // namespace

// -- start methods -----------------------------------------------------------------

TEST(StartMethod, RoundTripsThroughItsName) {
  for (auto x : {start_method::spawn, start_method::forkserver,
                 start_method::fork}) {
    auto parsed = parse_start_method(to_string(x));
    ASSERT_TRUE(parsed) << describe(parsed.error());
    EXPECT_EQ(*parsed, x);
  }
}

TEST(StartMethod, RejectsUnknownNameAndListsTheValidOnes) {
  auto parsed = parse_start_method("vfork");
  ASSERT_FALSE(parsed);
  EXPECT_EQ(parsed.error(), errc::invalid_argument);
  auto text = text_of(parsed.error());
  EXPECT_NE(text.find("vfork"), std::string::npos) << text;
  EXPECT_NE(text.find("spawn, forkserver, fork"), std::string::npos) << text;
}

TEST(StartMethod, DefaultsToForkserverWhenTheServerRuns) {
  ASSERT_TRUE(bootstrapped());
  EXPECT_FALSE(is_child_process());
  EXPECT_EQ(default_start_method(), start_method::forkserver);
  auto all = available_start_methods();
  EXPECT_EQ(all.size(), 3u);
}

// -- exit status -------------------------------------------------------------------

TEST(ExitStatus, RendersCodesAndSignalNames) {
  exit_status code{false, 3, 0};
  EXPECT_EQ(code.to_string(), "exited with code 3");
  EXPECT_FALSE(code.success());
  exit_status segv{true, 0, SIGSEGV};
  EXPECT_EQ(segv.to_string(), "killed by SIGSEGV");
  EXPECT_TRUE(exit_status{}.success());
  EXPECT_STREQ(signal_name(SIGKILL), "SIGKILL");
  EXPECT_STREQ(signal_name(SIGRTMIN + 3), ("signal " + std::to_string(SIGRTMIN + 3)).c_str());
}

// -- errors before a child exists ----------------------------------------------------

TEST(StartProcess, ReportsUnknownEntryByName) {
  auto proc = start_process("test.no_such_entry", "");
  ASSERT_FALSE(proc);
  EXPECT_EQ(proc.error(), errc::unknown_entry);
  EXPECT_NE(text_of(proc.error()).find("test.no_such_entry"),
            std::string::npos);
}

TEST(StartProcess, ReportsMissingBootstrapWithTheFix) {
  detail::simulate_not_bootstrapped(true);
  auto proc = start_process("test.exit_with_code", "0");
  detail::simulate_not_bootstrapped(false);
  ASSERT_FALSE(proc);
  EXPECT_EQ(proc.error(), errc::not_bootstrapped);
  auto text = text_of(proc.error());
  EXPECT_NE(text.find("before the current process has finished its "
                      "bootstrapping phase"),
            std::string::npos)
    << text;
  EXPECT_NE(text.find("multiproc::bootstrap(argc, argv)"), std::string::npos)
    << text;
  EXPECT_TRUE(bootstrapped());
}

TEST(StartProcess, ReportsExecFailureNamingThePath) {
  process_options opts;
  opts.method = start_method::spawn;
  opts.executable = "/nonexistent/multiproc-worker";
  auto proc = start_process("test.exit_with_code", "0", opts);
  ASSERT_FALSE(proc);
  EXPECT_EQ(proc.error(), errc::spawn_failed);
  auto text = text_of(proc.error());
  EXPECT_NE(text.find("/nonexistent/multiproc-worker"), std::string::npos)
    << text;
  EXPECT_NE(text.find(std::strerror(ENOENT)), std::string::npos) << text;
}

TEST(StartProcess, RefusesForkWhenMultithreadedAndNamesTheAlternatives) {
  std::mutex mtx;
  std::condition_variable cv;
  bool done = false;
  std::thread other{[&] {
    std::unique_lock<std::mutex> guard{mtx};
    cv.wait(guard, [&] { return done; });
  }};
  process_options opts;
  opts.method = start_method::fork;
  auto proc = start_process("test.exit_with_code", "0", opts);
  {
    std::lock_guard<std::mutex> guard{mtx};
    done = true;
  }
  cv.notify_all();
  other.join();
  ASSERT_FALSE(proc);
  EXPECT_EQ(proc.error(), errc::fork_unsafe);
  auto text = text_of(proc.error());
  EXPECT_NE(text.find("forkserver"), std::string::npos) << text;
  EXPECT_NE(text.find("spawn"), std::string::npos) << text;
}


// -- one body per start method ---------------------------------------------------------

TEST_P(ProcessStart, ReportsTheExitCode) {
  auto proc = start("test.exit_with_code", "3");
  ASSERT_TRUE(proc) << describe(proc.error());
  EXPECT_EQ(proc->method(), GetParam());
  EXPECT_EQ(proc->name(), "test.exit_with_code");
  EXPECT_GT(proc->pid(), 0);
  auto st = proc->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_FALSE(st->signaled);
  EXPECT_EQ(st->code, 3);
  EXPECT_EQ(st->to_string(), "exited with code 3");
  EXPECT_FALSE(proc->is_alive());
  auto again = proc->status();
  ASSERT_TRUE(again);
  EXPECT_EQ(again->code, 3);
}

TEST_P(ProcessStart, ReportsSignalNameWhenChildCrashes) {
  auto proc = start("test.crash_with_segv");
  ASSERT_TRUE(proc) << describe(proc.error());
  auto st = proc->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_TRUE(st->signaled);
  EXPECT_EQ(st->signal, SIGSEGV);
  EXPECT_EQ(st->to_string(), "killed by SIGSEGV");
}

TEST_P(ProcessStart, JoinTimesOutThenTerminateEndsTheChild) {
  auto proc = start("test.sleeper");
  ASSERT_TRUE(proc) << describe(proc.error());
  auto st = proc->join(50ms);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error(), errc::timeout);
  EXPECT_TRUE(proc->is_alive());
  EXPECT_FALSE(proc->status());
  EXPECT_FALSE(proc->terminate());
  st = proc->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_EQ(st->to_string(), "killed by SIGTERM");
  EXPECT_FALSE(proc->kill()) << "signalling an exited child is a no-op";
}

TEST_P(ProcessStart, KillEndsTheChildWithSigkill) {
  auto proc = start("test.sleeper");
  ASSERT_TRUE(proc) << describe(proc.error());
  EXPECT_FALSE(proc->kill());
  auto st = proc->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_TRUE(st->signaled);
  EXPECT_EQ(st->signal, SIGKILL);
}

TEST_P(ProcessStart, ExitFdPollsReadableOnExit) {
  auto proc = start("test.exit_with_code", "0");
  ASSERT_TRUE(proc) << describe(proc.error());
  pollfd p{proc->exit_fd(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1);
  auto st = proc->status();
  ASSERT_TRUE(st);
  EXPECT_TRUE(st->success());
}

TEST_P(ProcessStart, ConcurrentJoinsAgreeOnTheStatus) {
  auto proc = start("test.sleeper");
  ASSERT_TRUE(proc) << describe(proc.error());
  std::vector<std::thread> threads;
  std::atomic<int> killed{0};
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&] {
      auto st = proc->join(10s);
      if (st && st->signal == SIGKILL)
        ++killed;
      proc->is_alive();
    });
  std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(proc->kill());
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(killed, 4);
}

TEST_P(ProcessStart, PassesArgsBytesToTheChild) {
  std::string args = "abc";
  args += '\0';
  args += "\xff\x01 bytes\n";
  args += std::string(100000, 'x');
  auto proc = start("test.echo_args", args);
  ASSERT_TRUE(proc) << describe(proc.error());
  auto channel = proc->take_channel();
  ASSERT_TRUE(channel);
  EXPECT_FALSE(proc->take_channel()) << "the channel is taken only once";
  auto echoed = read_until_eof(channel.get(), 10s);
  EXPECT_EQ(echoed.size(), args.size());
  EXPECT_TRUE(echoed == args);
  auto st = proc->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_TRUE(st->success());
}

TEST_P(ProcessStart, GivesTheChildItsEntryNameAndMethod) {
  process_options opts;
  opts.name = "my-child";
  auto proc = start("test.describe_self", "", opts);
  ASSERT_TRUE(proc) << describe(proc.error());
  EXPECT_EQ(proc->name(), "my-child");
  auto channel = proc->take_channel();
  auto text = read_until_eof(channel.get(), 10s);
  EXPECT_EQ(text, std::string{"test.describe_self|my-child|"}
                    + to_string(GetParam()) + "|child");
  auto st = proc->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
}

TEST_P(ProcessStart, ChildHoldsOnlyItsOwnDescriptors) {
  // A descriptor without close-on-exec in the parent must not leak either.
  int leaky = ::open("/dev/null", O_RDONLY);
  ASSERT_GE(leaky, 0);
  auto proc = start("test.list_fds");
  ::close(leaky);
  ASSERT_TRUE(proc) << describe(proc.error());
  auto channel = proc->take_channel();
  auto fds = read_until_eof(channel.get(), 10s);
  EXPECT_EQ(fds, "0,1,2,3,4");
  auto st = proc->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_TRUE(st->success());
}

TEST_P(ProcessStart, PassesDescriptorsInOrderAndTheCallerKeepsItsOwn) {
  std::string content = "shared memory says hi";
  auto mem = make_memfd(content);
  ASSERT_TRUE(mem);
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  unique_fd pipe_read{p[0]};
  unique_fd pipe_write{p[1]};
  process_options opts;
  opts.fds = {mem.get(), pipe_write.get()};
  auto proc = start("test.use_passed_fds", "", opts);
  ASSERT_TRUE(proc) << describe(proc.error());
  EXPECT_GE(::fcntl(mem.get(), F_GETFD), 0);
  EXPECT_GE(::fcntl(pipe_write.get(), F_GETFD), 0);
  pipe_write.reset(); // the pipe hits EOF once the child's copy is closed
  auto channel = proc->take_channel();
  EXPECT_EQ(read_until_eof(channel.get(), 10s), "2 cloexec cloexec");
  EXPECT_EQ(read_until_eof(pipe_read.get(), 10s), "child read: " + content);
  auto st = proc->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_TRUE(st->success()) << st->to_string();
}

TEST_P(ProcessStart, ChildHoldsOnlyItsOwnAndThePassedDescriptors) {
  int leaky = ::open("/dev/null", O_RDONLY);
  ASSERT_GE(leaky, 0);
  auto mem = make_memfd("x");
  ASSERT_TRUE(mem);
  process_options opts;
  opts.fds = {mem.get(), mem.get()}; // two descriptors in the child
  auto proc = start("test.list_fds", "", opts);
  ::close(leaky);
  ASSERT_TRUE(proc) << describe(proc.error());
  auto channel = proc->take_channel();
  EXPECT_EQ(read_until_eof(channel.get(), 10s), "0,1,2,3,4,5,6");
  auto st = proc->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_TRUE(st->success()) << st->to_string();
}

TEST_P(ProcessStart, ChildStartedWithoutDescriptorsGetsNone) {
  auto proc = start("test.count_fds");
  ASSERT_TRUE(proc) << describe(proc.error());
  auto channel = proc->take_channel();
  EXPECT_EQ(read_until_eof(channel.get(), 10s), "0");
  auto st = proc->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_TRUE(st->success()) << st->to_string();
}

TEST_P(ProcessStart, PassesUpTo64Descriptors) {
  auto mem = make_memfd("x");
  ASSERT_TRUE(mem);
  process_options opts;
  opts.fds.assign(64, mem.get());
  auto proc = start("test.count_fds", "", opts);
  ASSERT_TRUE(proc) << describe(proc.error());
  auto channel = proc->take_channel();
  EXPECT_EQ(read_until_eof(channel.get(), 10s), "64");
  auto st = proc->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_TRUE(st->success()) << st->to_string();
  opts.fds.push_back(mem.get());
  auto refused = start("test.count_fds", "", opts);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error(), errc::invalid_argument);
  auto text = text_of(refused.error());
  EXPECT_NE(text.find("65"), std::string::npos) << text;
}

TEST_P(ProcessStart, RejectsADescriptorThatIsNotOpenNamingIt) {
  auto mem = make_memfd("x");
  ASSERT_TRUE(mem);
  process_options opts;
  opts.fds = {mem.get(), 987654};
  auto proc = start("test.count_fds", "", opts);
  ASSERT_FALSE(proc);
  EXPECT_EQ(proc.error(), errc::invalid_argument);
  auto text = text_of(proc.error());
  EXPECT_NE(text.find("fds[1] = 987654"), std::string::npos) << text;
  EXPECT_GE(::fcntl(mem.get(), F_GETFD), 0);
}

TEST_P(ProcessStart, ForwardsLinesPrintedBeforeACrash) {
  line_collector out;
  process_options opts;
  opts.name = "crasher";
  opts.sink = out.sink();
  auto proc = start("test.print_then_crash", "", opts);
  ASSERT_TRUE(proc) << describe(proc.error());
  auto st = proc->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_EQ(st->to_string(), "killed by SIGSEGV");
  auto lines = out.snapshot();
  ASSERT_EQ(lines.size(), 3u);
  std::vector<std::string> stdout_lines;
  for (auto& line : lines) {
    EXPECT_EQ(line.process_name, "crasher");
    EXPECT_EQ(line.pid, proc->pid());
    if (line.is_stderr)
      EXPECT_EQ(line.text, "second line");
    else
      stdout_lines.push_back(line.text);
  }
  EXPECT_EQ(stdout_lines,
            (std::vector<std::string>{"first line", "third line"}));
}

TEST_P(ProcessStart, DeliversAFinalPartialLineAtEof) {
  line_collector out;
  process_options opts;
  opts.sink = out.sink();
  auto proc = start("test.print_partial_line", "", opts);
  ASSERT_TRUE(proc) << describe(proc.error());
  auto st = proc->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
  auto lines = out.snapshot();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].text, "complete");
  EXPECT_EQ(lines[1].text, "no newline at the end");
  EXPECT_FALSE(lines[1].is_stderr);
}

TEST_P(ProcessStart, GrandchildDiesWithAKilledChild) {
  auto proc = start("test.start_grandchild");
  ASSERT_TRUE(proc) << describe(proc.error());
  auto channel = proc->take_channel();
  // The child writes the grandchild's pid and a newline, then sleeps.
  std::string text;
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (text.find('\n') == std::string::npos
         && std::chrono::steady_clock::now() < deadline) {
    pollfd p{channel.get(), POLLIN, 0};
    if (::poll(&p, 1, 100) == 1) {
      char buf[64];
      auto n = ::read(channel.get(), buf, sizeof(buf));
      if (n <= 0)
        break;
      text.append(buf, static_cast<size_t>(n));
    }
  }
  ASSERT_NE(text.find('\n'), std::string::npos) << "no pid from the child";
  pid_t grandchild = std::stoi(text);
  ASSERT_GT(grandchild, 0);
  EXPECT_FALSE(dead_or_zombie(grandchild));
  // Become the orphaned grandchild's new parent, so that this test can reap
  // it instead of leaving a zombie to an init that may never reap.
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  EXPECT_FALSE(proc->kill());
  auto st = proc->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_EQ(st->signal, SIGKILL);
  EXPECT_TRUE(wait_dead_or_zombie(grandchild, 1000ms))
    << "grandchild " << grandchild << " outlived its parent";
  for (int i = 0; i < 500 && ::waitpid(grandchild, nullptr, WNOHANG) == 0; ++i)
    std::this_thread::sleep_for(10ms);
  ::prctl(PR_SET_CHILD_SUBREAPER, 0);
}

TEST_P(ProcessStart, DestructorKillsARunningChild) {
  pid_t pid = -1;
  {
    auto proc = start("test.sleeper");
    ASSERT_TRUE(proc) << describe(proc.error());
    pid = proc->pid();
  }
  EXPECT_TRUE(dead_or_zombie(pid));
}

TEST_P(ProcessStart, DetachedChildKeepsRunningAndIsReaped) {
  pid_t pid = -1;
  {
    auto proc = start("test.sleeper");
    ASSERT_TRUE(proc) << describe(proc.error());
    pid = proc->pid();
    proc->detach();
  }
  EXPECT_FALSE(dead_or_zombie(pid)) << "a detached child survives its handle";
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  // The runtime (or the fork server) reaps it: /proc/<pid> disappears.
  auto deadline = std::chrono::steady_clock::now() + 5s;
  auto path = "/proc/" + std::to_string(pid);
  while (::access(path.c_str(), F_OK) == 0
         && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  EXPECT_NE(::access(path.c_str(), F_OK), 0) << "detached child not reaped";
}

INSTANTIATE_TEST_SUITE_P(AllMethods, ProcessStart,
                         testing::Values(start_method::spawn,
                                         start_method::forkserver,
                                         start_method::fork),
                         method_name);
