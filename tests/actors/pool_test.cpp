// Tests actors/pool: the process pool and its crash-safe task ledger, with
// real worker processes (the test binary is its own child).
//
// Every wait is bounded: a result that should arrive well under a second is
// awaited at most kBound, and a watchdog aborts a test that runs past
// kWatchdog (ctest's limit is 60 s), so a hang is reported, never waited out.
#include "multiproc/pool.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <caf/all.hpp>
#include <cereal/types/string.hpp>

using namespace multiproc;
using namespace std::chrono_literals;

namespace pool_test {

// -- faults -------------------------------------------------------------------

/// What a fault hook does when it runs.
enum fault : int32_t {
  no_fault = 0,
  throw_exception = 1, ///< throws std::runtime_error(note)
  segfault = 2,        ///< writes note to stderr, then dies of SIGSEGV
  exit_3 = 3,          ///< writes note to stderr, then std::_Exit(3)
};

inline bool in_child() {
  return !multiproc::this_worker_name().empty();
}

inline void commit_fault(int32_t mode, const std::string& note) {
  if (mode == no_fault)
    return;
  std::fprintf(stderr, "%s\n", note.c_str());
  std::fflush(stderr);
  switch (mode) {
    case throw_exception:
      throw std::runtime_error(note);
    case segfault: {
      rlimit none{0, 0}; // no core file
      ::setrlimit(RLIMIT_CORE, &none);
      std::signal(SIGSEGV, SIG_DFL);
      std::raise(SIGSEGV);
      std::_Exit(99); // not reached
    }
    case exit_3:
      std::_Exit(3);
    default:
      break;
  }
}

/// Appends one line to `path` in a single write (O_APPEND).
inline void append_line(const std::string& path, const std::string& line) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
                  0644);
  if (fd < 0)
    return;
  auto text = line + "\n";
  [[maybe_unused]] auto n = ::write(fd, text.data(), text.size());
  ::close(fd);
}

// -- messages -----------------------------------------------------------------

struct square {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

struct add {
  int32_t a = 0;
  int32_t b = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(a, b);
  }
};

/// A result that names the process that computed it.
struct tagged {
  int32_t value = 0;
  int32_t pid = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value, pid);
  }
};

/// Replies tagged{value * value, pid}.
struct whoami {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

/// Logs "<pid> <value>" to `log` (if set) when it starts, sleeps `ms`, then
/// replies tagged{value, pid}. With ignore_term, the worker ignores SIGTERM.
struct nap {
  int32_t ms = 0;
  int32_t value = 0;
  std::string log;
  int32_t ignore_term = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(ms, value, log, ignore_term);
  }
};

/// Logs "<pid> <value>" to `log` when it starts, then waits until the file
/// `release` exists (at most 60 s) and replies tagged{value, pid}: a task
/// that ends when the test says so.
struct gate {
  int32_t value = 0;
  std::string log;
  std::string release;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value, log, release);
  }
};

/// Answered by a helper actor the handler delegates to (a response that
/// reaches the parent later, from another thread of the worker).
struct later {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

/// Replies a string of `bytes` bytes.
struct big_result {
  int64_t bytes = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(bytes);
  }
};

/// Fault while the handler runs; replies value * value otherwise.
struct run_fault {
  int32_t mode = no_fault;
  int32_t value = 0;
  std::string note;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(mode, value, note);
  }
};

/// Fault while the worker decodes the task (in the child only).
struct decode_fault {
  int32_t mode = no_fault;
  int32_t value = 0;
  std::string note;
  template <class Archive>
  void save(Archive& ar) const {
    ar(mode, value, note);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(mode, value, note);
    if (in_child())
      commit_fault(mode, note);
  }
};

/// A result whose encoding faults in the child (on_save) or whose decoding
/// faults in the parent (on_load; only throwing makes sense there).
struct fragile {
  int32_t value = 0;
  int32_t on_save = no_fault;
  int32_t on_load = no_fault;
  std::string note;
  template <class Archive>
  void save(Archive& ar) const {
    if (in_child())
      commit_fault(on_save, note);
    ar(value, on_save, on_load, note);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(value, on_save, on_load, note);
    if (!in_child() && on_load == throw_exception)
      throw std::runtime_error(note);
  }
};

/// Replies fragile{value, on_save, on_load, note}.
struct make_fragile {
  int32_t value = 0;
  int32_t on_save = no_fault;
  int32_t on_load = no_fault;
  std::string note;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value, on_save, on_load, note);
  }
};

/// A task that cannot be encoded (its save() throws, in the parent).
struct unencodable_task {
  int32_t value = 0;
  template <class Archive>
  void save(Archive&) const {
    throw std::runtime_error("pool_test: this task refuses to be encoded");
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(value);
  }
};

/// Not registered with MULTIPROC_MESSAGE.
/// A task of any encoded size that may refuse to be encoded (chunk
/// building: big and unencodable items among small ones).
struct sized_task {
  int32_t value = 0;
  std::string pad;
  bool refuse = false;
  template <class Archive>
  void save(Archive& ar) const {
    if (refuse)
      throw std::runtime_error("pool_test: this sized task refuses");
    ar(value, pad);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(value, pad);
  }
};

struct unregistered_task {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

/// The initializer of "pool_test.initialized": stores `value`; faults with
/// `mode`; refuses (throws) while the file `refuse_if_exists` exists.
struct init_msg {
  int32_t value = 0;
  int32_t mode = no_fault;
  std::string note;
  std::string refuse_if_exists;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value, mode, note, refuse_if_exists);
  }
};

struct probe {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

struct probe_reply {
  int32_t init_value = -1; // -1: no initializer ran before this task
  int32_t inits = 0;       // initializers this worker got
  int32_t pid = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(init_value, inits, pid);
  }
};

struct init_state {
  int32_t value = -1;
  int32_t inits = 0;
};

} // namespace pool_test

MULTIPROC_MESSAGE(pool_test::square, "pool_test.square")
MULTIPROC_MESSAGE(pool_test::add, "pool_test.add")
MULTIPROC_MESSAGE(pool_test::tagged, "pool_test.tagged")
MULTIPROC_MESSAGE(pool_test::whoami, "pool_test.whoami")
MULTIPROC_MESSAGE(pool_test::nap, "pool_test.nap")
MULTIPROC_MESSAGE(pool_test::gate, "pool_test.gate")
MULTIPROC_MESSAGE(pool_test::later, "pool_test.later")
MULTIPROC_MESSAGE(pool_test::big_result, "pool_test.big_result")
MULTIPROC_MESSAGE(pool_test::run_fault, "pool_test.run_fault")
MULTIPROC_MESSAGE(pool_test::decode_fault, "pool_test.decode_fault")
MULTIPROC_MESSAGE(pool_test::fragile, "pool_test.fragile")
MULTIPROC_MESSAGE(pool_test::make_fragile, "pool_test.make_fragile")
MULTIPROC_MESSAGE(pool_test::unencodable_task, "pool_test.unencodable_task")
MULTIPROC_MESSAGE(pool_test::sized_task, "pool_test.sized_task")
MULTIPROC_MESSAGE(pool_test::init_msg, "pool_test.init_msg")
MULTIPROC_MESSAGE(pool_test::probe, "pool_test.probe")
MULTIPROC_MESSAGE(pool_test::probe_reply, "pool_test.probe_reply")

namespace pool_test {

tagged do_nap(const nap& x) {
  if (x.ignore_term != 0)
    std::signal(SIGTERM, SIG_IGN);
  if (!x.log.empty())
    append_line(x.log, std::to_string(::getpid()) + " "
                         + std::to_string(x.value));
  std::this_thread::sleep_for(std::chrono::milliseconds{x.ms});
  return tagged{x.value, static_cast<int32_t>(::getpid())};
}

tagged do_gate(const gate& x) {
  append_line(x.log, std::to_string(::getpid()) + " "
                       + std::to_string(x.value));
  auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds{60};
  while (::access(x.release.c_str(), F_OK) != 0
         && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds{2});
  return tagged{x.value, static_cast<int32_t>(::getpid())};
}

caf::behavior tester(caf::event_based_actor* self) {
  return {
    [](const square& x) { return x.value * x.value; },
    [](const big_result& x) {
      return std::string(static_cast<size_t>(x.bytes), 'x');
    },
    [self](const later& x) {
      auto helper = self->spawn([](caf::event_based_actor* h) {
        return caf::behavior{[h](int32_t v) {
          h->quit();
          return v * v;
        }};
      });
      return self->delegate(helper, x.value);
    },
    [](const add& x) { return x.a + x.b; },
    [](const sized_task& x) {
      return x.value * x.value + static_cast<int32_t>(x.pad.size());
    },
    [](const whoami& x) {
      return tagged{x.value * x.value, static_cast<int32_t>(::getpid())};
    },
    [](const nap& x) { return do_nap(x); },
    [](const gate& x) { return do_gate(x); },
    [](const run_fault& x) {
      commit_fault(x.mode, x.note);
      return x.value * x.value;
    },
    [](const decode_fault& x) { return x.value * x.value; },
    [](const make_fragile& x) {
      return fragile{x.value, x.on_save, x.on_load, x.note};
    },
  };
}

caf::behavior initialized(caf::stateful_actor<init_state>* self) {
  return {
    [self](const init_msg& x) {
      if (!x.refuse_if_exists.empty()
          && ::access(x.refuse_if_exists.c_str(), F_OK) == 0)
        commit_fault(throw_exception,
                     "pool_test: initializer refused in "
                       + std::to_string(::getpid()));
      commit_fault(x.mode, x.note + " in " + std::to_string(::getpid()));
      self->state.value = x.value;
      ++self->state.inits;
      return x.value;
    },
    [self](const probe&) {
      return probe_reply{self->state.value, self->state.inits,
                         static_cast<int32_t>(::getpid())};
    },
    [](const nap& x) { return do_nap(x); },
  };
}

/// Squares until it has seen 5, then answers with negated squares (a
/// behavior change in the middle of a chunk).
caf::behavior shifter(caf::event_based_actor* self) {
  return {
    [self](const square& x) {
      if (x.value == 5)
        self->become(caf::keep_behavior,
                     [](const square& y) { return -y.value * y.value; });
      return x.value * x.value;
    },
  };
}

} // namespace pool_test

MULTIPROC_WORKER("pool_test.tester", pool_test::tester)
MULTIPROC_WORKER("pool_test.shifter", pool_test::shifter)
MULTIPROC_WORKER("pool_test.initialized", pool_test::initialized)

// Task workers: one plain function each (MULTIPROC_TASK_WORKER), whose chunk
// items the child runs without CAF.
namespace pool_test {

int32_t square_task(const square& x) {
  return x.value * x.value;
}

int32_t fault_task(const run_fault& x) {
  commit_fault(x.mode, x.note);
  return x.value * x.value;
}

tagged nap_task(const nap& x) {
  return do_nap(x);
}

/// Squares, but refuses negative values with an error.
caf::expected<int32_t> checked_square_task(const square& x) {
  if (x.value < 0)
    return make_error(errc::invalid_argument,
                      "pool_test: negative " + std::to_string(x.value));
  return x.value * x.value;
}

} // namespace pool_test

MULTIPROC_TASK_WORKER("pool_test.square_fn", pool_test::square_task)
MULTIPROC_TASK_WORKER("pool_test.fault_fn", pool_test::fault_task)
MULTIPROC_TASK_WORKER("pool_test.nap_fn", pool_test::nap_task)
MULTIPROC_TASK_WORKER("pool_test.checked_square_fn",
                      pool_test::checked_square_task)

using pool_test::add;
using pool_test::decode_fault;
using pool_test::fragile;
using pool_test::gate;
using pool_test::init_msg;
using pool_test::make_fragile;
using pool_test::nap;
using pool_test::probe;
using pool_test::probe_reply;
using pool_test::run_fault;
using pool_test::square;
using pool_test::tagged;
using pool_test::whoami;
using pool_test::later;
using pool_test::big_result;

namespace {

using clock_type = std::chrono::steady_clock;

/// How long a result that should come well under a second may take.
constexpr auto kBound = 10s;
/// A test still running after this is hung: the watchdog aborts it.
constexpr auto kWatchdog = 55s;

constexpr const char* kTester = "pool_test.tester";
constexpr const char* kInitialized = "pool_test.initialized";

long long ms_since(clock_type::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
           clock_type::now() - t0)
    .count();
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

template <class R>
bool is_ready(multiproc::task_future<R>& f, std::chrono::milliseconds d = 0ms) {
  return f.wait_for(d) == std::future_status::ready;
}

/// Waits for every future until `deadline`; returns how many are not ready.
template <class R>
size_t wait_all_until(std::vector<multiproc::task_future<R>>& fs,
                      clock_type::time_point deadline) {
  size_t missing = 0;
  for (auto& f : fs)
    if (f.wait_until(deadline) != std::future_status::ready)
      ++missing;
  return missing;
}

/// True once `pid` no longer exists (reaped; a zombie still exists).
bool process_gone(pid_t pid) {
  return ::kill(pid, 0) == -1 && errno == ESRCH;
}

/// The state letter of /proc/<pid>/stat ('Z' for a zombie), or "gone".
std::string proc_state(pid_t pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/stat"};
  std::string line;
  if (!std::getline(in, line))
    return "gone";
  auto pos = line.rfind(')');
  if (pos == std::string::npos || pos + 2 >= line.size())
    return "?";
  return std::string(1, line[pos + 2]);
}

bool wait_gone(pid_t pid, std::chrono::milliseconds bound) {
  auto deadline = clock_type::now() + bound;
  while (!process_gone(pid)) {
    if (clock_type::now() >= deadline)
      return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

std::vector<std::string> list_fds() {
  std::vector<std::string> out;
  if (auto* dir = ::opendir("/proc/self/fd")) {
    int self_fd = ::dirfd(dir);
    while (auto* e = ::readdir(dir)) {
      std::string name = e->d_name;
      if (name == "." || name == ".." || name == std::to_string(self_fd))
        continue;
      char target[512] = {0};
      auto n = ::readlink(("/proc/self/fd/" + name).c_str(), target,
                          sizeof(target) - 1);
      out.push_back(name + " -> "
                    + (n > 0 ? std::string(target, static_cast<size_t>(n))
                             : std::string{"?"}));
    }
    ::closedir(dir);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string join_lines(const std::vector<std::string>& xs) {
  std::string out;
  for (auto& x : xs)
    out += "  " + x + "\n";
  return out;
}

std::string describe_stats(const pool_stats& s) {
  std::ostringstream out;
  out << "stats: submitted " << s.submitted << ", succeeded " << s.succeeded
      << ", failed " << s.failed << ", quarantined " << s.quarantined
      << ", redispatched " << s.redispatched << ", workers_started "
      << s.workers_started << ", workers_died " << s.workers_died;
  return out.str();
}

std::string describe_workers(const std::vector<worker_info>& ws) {
  std::string out = "workers:";
  for (auto& w : ws)
    out += " " + w.name + "[" + std::to_string(w.pid) + "]";
  return out;
}

std::string describe_log(const std::vector<std::pair<pid_t, int32_t>>& log) {
  std::string out = "runs (pid value):";
  for (auto& [pid, v] : log)
    out += " (" + std::to_string(pid) + " " + std::to_string(v) + ")";
  return out;
}

std::set<pid_t> pids_of(const std::vector<worker_info>& ws) {
  std::set<pid_t> out;
  for (auto& w : ws)
    out.insert(w.pid);
  return out;
}

/// Lines "<pid> <value>" written by nap tasks.
std::vector<std::pair<pid_t, int32_t>> read_log(const std::string& path) {
  std::vector<std::pair<pid_t, int32_t>> out;
  std::ifstream in{path};
  long pid = 0;
  long value = 0;
  while (in >> pid >> value)
    out.emplace_back(static_cast<pid_t>(pid), static_cast<int32_t>(value));
  return out;
}

/// Waits until the nap task `value` logged its start; returns its pid (0 if
/// it did not start within `bound`).
pid_t wait_started(const std::string& path, int32_t value,
                   std::chrono::milliseconds bound = kBound) {
  auto deadline = clock_type::now() + bound;
  for (;;) {
    for (auto& [pid, v] : read_log(path))
      if (v == value)
        return pid;
    if (clock_type::now() >= deadline)
      return 0;
    std::this_thread::sleep_for(2ms);
  }
}

size_t count_value(const std::vector<std::pair<pid_t, int32_t>>& log,
                   int32_t value) {
  return static_cast<size_t>(
    std::count_if(log.begin(), log.end(),
                  [value](auto& x) { return x.second == value; }));
}

/// Aborts the test binary if a test runs for longer than `limit`.
class watchdog {
public:
  explicit watchdog(std::chrono::seconds limit) {
    thread_ = std::thread{[this, limit] {
      std::unique_lock<std::mutex> lk{mu_};
      if (cv_.wait_for(lk, limit, [this] { return done_; }))
        return;
      auto* info = testing::UnitTest::GetInstance()->current_test_info();
      std::fprintf(stderr,
                   "pool_test watchdog: %s.%s still running after %lld s: "
                   "a hang; aborting\n",
                   info ? info->test_suite_name() : "?",
                   info ? info->name() : "?",
                   static_cast<long long>(limit.count()));
      std::fflush(stderr);
      std::abort();
    }};
  }

  ~watchdog() {
    {
      std::lock_guard<std::mutex> guard{mu_};
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

/// Collects the workers' output lines (and the pids that wrote them).
struct output_log {
  std::mutex mu;
  std::vector<output_line> lines;
  std::set<pid_t> pids;

  std::set<pid_t> seen_pids() {
    std::lock_guard<std::mutex> guard{mu};
    return pids;
  }

  std::string text() {
    std::lock_guard<std::mutex> guard{mu};
    std::string out;
    for (auto& l : lines)
      out += "  [" + l.process_name + " " + std::to_string(l.pid) + "] "
             + l.text + "\n";
    return out;
  }
};

class PoolFixture : public testing::Test {
protected:
  PoolFixture() {
    static std::atomic<int> counter{0};
    dir_ = testing::TempDir() + "pool_test_" + std::to_string(::getpid())
           + "_" + std::to_string(counter++);
    ::mkdir(dir_.c_str(), 0700);
  }

  ~PoolFixture() override {
    std::string cmd = "rm -rf '" + dir_ + "'";
    [[maybe_unused]] auto rc = std::system(cmd.c_str());
  }

  /// Options for `n` workers whose output goes to log_.
  pool_options options(size_t n) {
    pool_options opts;
    opts.workers = n;
    auto log = log_;
    opts.sink = [log](const output_line& line) {
      std::lock_guard<std::mutex> guard{log->mu};
      log->lines.push_back(line);
      log->pids.insert(line.pid);
      if (std::getenv("POOL_TEST_VERBOSE") != nullptr)
        std::fprintf(stderr, "[%s %d] %s\n", line.process_name.c_str(),
                     static_cast<int>(line.pid), line.text.c_str());
    };
    return opts;
  }

  caf::expected<pool> start(pool_options opts, const char* entry = kTester) {
    auto p = pool::start(sys, entry, std::move(opts));
    if (p)
      remember(*p);
    return p;
  }

  /// Remembers the pool's current workers: TearDown checks they are gone.
  void remember(const pool& p) {
    for (auto& w : p.workers())
      pids_.insert(w.pid);
  }

  void remember(pid_t pid) {
    if (pid > 0)
      pids_.insert(pid);
  }

  /// Checks that every worker seen in this test is gone now (not a zombie).
  void expect_all_gone(const char* when) {
    auto all = pids_;
    for (auto pid : log_->seen_pids())
      all.insert(pid);
    for (auto pid : all)
      EXPECT_TRUE(process_gone(pid))
        << "worker " << pid << " still exists " << when << " (state "
        << proc_state(pid) << ")";
  }

  void TearDown() override {
    expect_all_gone("after the test's pools were destroyed");
    if (HasFailure())
      std::fprintf(stderr, "workers' output in this test:\n%s",
                   log_->text().c_str());
  }

  std::string path(const std::string& name) const {
    return dir_ + "/" + name;
  }

  watchdog dog_{std::chrono::duration_cast<std::chrono::seconds>(kWatchdog)};
  std::shared_ptr<output_log> log_ = std::make_shared<output_log>();
  std::set<pid_t> pids_;
  std::string dir_;
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
};

class PoolBasics : public PoolFixture {};
class PoolFailures : public PoolFixture {};
class PoolLedger : public PoolFixture {};
class PoolInitializer : public PoolFixture {};
class PoolBackpressure : public PoolFixture {};
class PoolSizes : public PoolFixture {};
class PoolShutdown : public PoolFixture {};

std::vector<multiproc::task_future<int32_t>>
submit_squares(pool& p, int32_t from, int32_t to) {
  std::vector<multiproc::task_future<int32_t>> out;
  for (int32_t i = from; i < to; ++i)
    out.push_back(p.submit<int32_t>(square{i}));
  return out;
}

/// Has each of the pool's `n` workers (window 1 if n > 1) run a first task,
/// with a deadline of its own that a slow start cannot reach. A worker child
/// says hello before its worker actor has initialized, and under ASan+UBSan
/// that takes about a second (a suppressed UBSan report in CAF's spawn
/// symbolizes the stack); the pool would count it against the deadline of
/// the first task the worker gets. Tests of deadlines warm their workers up
/// first, so that the deadline they check counts only the task's own run.
void warm_workers(pool& p, size_t n) {
  task_options warm;
  warm.timeout = 60s;
  std::vector<multiproc::task_future<tagged>> fs;
  for (size_t i = 0; i < n; ++i) // with window 1: one on each worker
    fs.push_back(p.submit<tagged>(nap{100, -1, "", 0}, warm));
  std::set<pid_t> served;
  for (auto& f : fs) {
    ASSERT_TRUE(is_ready(f, kBound)) << "a warm-up task did not finish";
    auto r = f.get();
    ASSERT_TRUE(r) << describe(r.error());
    served.insert(r->pid);
  }
  ASSERT_EQ(served.size(), n) << "the warm-up missed a worker";
}

/// Expects every future to hold value i*i (i = from, from+1, ...).
void expect_squares(std::vector<multiproc::task_future<int32_t>>& fs,
                    int32_t from) {
  ASSERT_EQ(wait_all_until(fs, clock_type::now() + kBound), 0u)
    << "tasks submitted alongside did not finish within 10 s";
  for (size_t i = 0; i < fs.size(); ++i) {
    auto r = fs[i].get();
    auto x = from + static_cast<int32_t>(i);
    ASSERT_TRUE(r) << "square{" << x << "}: " << describe(r.error());
    EXPECT_EQ(*r, x * x);
  }
}

/// Checks whoami results (i * i for task i) and counts them per worker.
std::map<pid_t, int>
tasks_per_worker(const std::vector<caf::expected<tagged>>& rs) {
  std::map<pid_t, int> per_pid;
  for (size_t i = 0; i < rs.size(); ++i) {
    if (!rs[i]) {
      ADD_FAILURE() << "task " << i << ": " << describe(rs[i].error());
      continue;
    }
    EXPECT_EQ(rs[i]->value, static_cast<int32_t>(i * i));
    ++per_pid[rs[i]->pid];
  }
  return per_pid;
}

/// Checks map results: i * i for every index but `bad`, whose error it
/// returns for further checks.
caf::error expect_squares_but(std::vector<caf::expected<int32_t>>& rs,
                              size_t n, size_t bad) {
  caf::error found;
  EXPECT_EQ(rs.size(), n);
  for (size_t i = 0; i < rs.size(); ++i) {
    auto x = static_cast<int32_t>(i);
    if (i == bad) {
      EXPECT_FALSE(rs[i]) << "task " << i << " gave " << *rs[i];
      if (!rs[i])
        found = rs[i].error();
      continue;
    }
    if (rs[i]) {
      EXPECT_EQ(*rs[i], x * x);
    } else {
      ADD_FAILURE() << "task " << i << ": " << describe(rs[i].error());
    }
  }
  return found;
}

} // namespace

// -- the failure matrix -------------------------------------------------------
//
// After CPython's test_concurrent_futures deadlock tests: an exception, a
// crash (SIGSEGV) or an exit (std::_Exit(3)) at each boundary a task crosses
// ends as an error on that task, quickly, never as a hang; the tasks around
// it still succeed.

namespace {

enum class boundary {
  decode_task,   ///< the worker decodes the task
  run_task,      ///< the handler runs
  encode_result, ///< the worker encodes the result
};

struct matrix_case {
  boundary where;
  int32_t mode;
};

std::string boundary_name(boundary b) {
  switch (b) {
    case boundary::decode_task:
      return "DecodingTheTask";
    case boundary::run_task:
      return "RunningTheTask";
    default:
      return "EncodingTheResult";
  }
}

std::string fault_name(int32_t mode) {
  switch (mode) {
    case pool_test::throw_exception:
      return "Throws";
    case pool_test::segfault:
      return "Segfaults";
    default:
      return "Exits";
  }
}

// Names the case in ctest's and gtest's output.
void PrintTo(const matrix_case& x, std::ostream* os) {
  *os << boundary_name(x.where) << "_" << fault_name(x.mode);
}

std::string matrix_name(const testing::TestParamInfo<matrix_case>& info) {
  return boundary_name(info.param.where) + "_" + fault_name(info.param.mode);
}

class PoolFailureMatrix : public PoolFixture,
                          public testing::WithParamInterface<matrix_case> {};

} // namespace

TEST_P(PoolFailureMatrix, EndsAsAnErrorOnThatTaskAlone) {
  auto [where, mode] = GetParam();
  auto p = start(options(2));
  ASSERT_TRUE(p) << describe(p.error());
  auto workers_before = pids_of(p->workers());
  EXPECT_EQ(workers_before.size(), 2u) << describe_workers(p->workers());
  auto note = "pool_test-note: " + boundary_name(where) + "_"
              + fault_name(mode) + " in the worker";
  auto before = submit_squares(*p, 0, 8);
  auto t0 = clock_type::now();
  multiproc::task_future<caf::message> bad;
  switch (where) {
    case boundary::decode_task:
      bad = p->submit<caf::message>(decode_fault{mode, 7, note});
      break;
    case boundary::run_task:
      bad = p->submit<caf::message>(run_fault{mode, 7, note});
      break;
    case boundary::encode_result:
      bad = p->submit<caf::message>(
        make_fragile{7, mode, pool_test::no_fault, note});
      break;
  }
  auto after = submit_squares(*p, 8, 16);
  ASSERT_TRUE(is_ready(bad, kBound)) << "the faulty task hangs";
  auto elapsed = ms_since(t0);
  std::printf("[   info   ] the faulty task failed after %lld ms\n", elapsed);
  auto r = bad.get();
  ASSERT_FALSE(r) << "the faulty task succeeded: " << caf::to_string(*r);
  auto text = text_of(r.error());
  auto stats = p->stats();
  if (mode == pool_test::throw_exception) {
    switch (where) {
      case boundary::decode_task:
        EXPECT_EQ(r.error(), errc::decode_failed) << describe(r.error());
        break;
      case boundary::run_task:
        EXPECT_EQ(r.error(), errc::worker_exception) << describe(r.error());
        break;
      case boundary::encode_result:
        EXPECT_EQ(r.error(), errc::encode_failed) << describe(r.error());
        break;
    }
    EXPECT_TRUE(contains(text, note)) << describe(r.error());
    // The worker keeps serving: nobody died, nobody was replaced.
    EXPECT_EQ(stats.workers_died, 0u);
    EXPECT_EQ(pids_of(p->workers()), workers_before);
  } else {
    // The task kills every worker it runs on: quarantined after 3 attempts.
    EXPECT_EQ(r.error(), errc::task_quarantined) << describe(r.error());
    EXPECT_TRUE(contains(text, "task")) << text;
    EXPECT_TRUE(contains(text, "3 attempts")) << text;
    auto status = mode == pool_test::segfault ? std::string{"killed by SIGSEGV"}
                                              : std::string{"exited with code 3"};
    EXPECT_TRUE(contains(text, status)) << text;
    // The dead worker's last stderr lines.
    EXPECT_TRUE(contains(text, note)) << text;
    EXPECT_EQ(stats.quarantined, 1u);
    EXPECT_GE(stats.workers_died, 3u);
  }
  expect_squares(before, 0);
  expect_squares(after, 8);
  remember(*p);
  auto workers_now = p->workers();
  ASSERT_FALSE(p->close(kBound)) << "close() did not finish";
  for (auto& w : workers_now)
    EXPECT_TRUE(process_gone(w.pid))
      << "worker " << w.pid << " survives close() (state "
      << proc_state(w.pid) << ")";
}

INSTANTIATE_TEST_SUITE_P(
  PoolFaults, PoolFailureMatrix,
  testing::Values(matrix_case{boundary::decode_task, pool_test::throw_exception},
                  matrix_case{boundary::decode_task, pool_test::segfault},
                  matrix_case{boundary::decode_task, pool_test::exit_3},
                  matrix_case{boundary::run_task, pool_test::throw_exception},
                  matrix_case{boundary::run_task, pool_test::segfault},
                  matrix_case{boundary::run_task, pool_test::exit_3},
                  matrix_case{boundary::encode_result,
                              pool_test::throw_exception},
                  matrix_case{boundary::encode_result, pool_test::segfault},
                  matrix_case{boundary::encode_result, pool_test::exit_3}),
  matrix_name);

// The two boundaries in the parent: only an exception makes sense there.

TEST_F(PoolFailures, ATaskThatCannotBeEncodedFailsAtOnce) {
  auto p = start(options(2));
  ASSERT_TRUE(p) << describe(p.error());
  auto before = submit_squares(*p, 0, 8);
  auto bad = p->submit<int32_t>(pool_test::unencodable_task{3});
  ASSERT_TRUE(is_ready(bad)) << "submit() did not fail the future at once";
  auto r = bad.get();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::encode_failed) << describe(r.error());
  EXPECT_TRUE(contains(text_of(r.error()), "refuses to be encoded"))
    << describe(r.error());
  auto after = submit_squares(*p, 8, 16);
  expect_squares(before, 0);
  expect_squares(after, 8);
  EXPECT_EQ(p->stats().workers_died, 0u);
}

TEST_F(PoolFailures, ATaskOfAnUnregisteredTypeFailsAtOnce) {
  auto p = start(options(1));
  ASSERT_TRUE(p) << describe(p.error());
  auto bad = p->submit<int32_t>(pool_test::unregistered_task{3});
  ASSERT_TRUE(is_ready(bad)) << "submit() did not fail the future at once";
  auto r = bad.get();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::unknown_type) << describe(r.error());
  auto y = p->apply<int32_t>(square{4}, kBound);
  ASSERT_TRUE(y) << describe(y.error());
  EXPECT_EQ(*y, 16);
}

TEST_F(PoolFailures, AResultThatCannotBeDecodedFailsItsTaskAlone) {
  auto p = start(options(2));
  ASSERT_TRUE(p) << describe(p.error());
  auto workers_before = pids_of(p->workers());
  std::string note = "pool_test-note: this result refuses to be decoded";
  auto before = submit_squares(*p, 0, 8);
  auto bad = p->submit<fragile>(
    make_fragile{5, pool_test::no_fault, pool_test::throw_exception, note});
  auto after = submit_squares(*p, 8, 16);
  ASSERT_TRUE(is_ready(bad, kBound)) << "the faulty task hangs";
  auto r = bad.get();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::decode_failed) << describe(r.error());
  EXPECT_TRUE(contains(text_of(r.error()), note)) << describe(r.error());
  expect_squares(before, 0);
  expect_squares(after, 8);
  // The channel goes on: the same workers serve the next fragile result.
  auto good = p->apply<fragile>(make_fragile{6, 0, 0, "fine"}, kBound);
  ASSERT_TRUE(good) << describe(good.error());
  EXPECT_EQ(good->value, 6);
  EXPECT_EQ(p->stats().workers_died, 0u);
  EXPECT_EQ(pids_of(p->workers()), workers_before);
}

TEST_F(PoolFailures, ACrashInAtMostOnceModeFailsWithWorkerDied) {
  auto opts = options(2);
  opts.guarantee = delivery::at_most_once;
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  auto t0 = clock_type::now();
  auto bad = p->submit<int32_t>(
    run_fault{pool_test::segfault, 1, "pool_test-note: crash once"});
  ASSERT_TRUE(is_ready(bad, kBound)) << "the crashing task hangs";
  std::printf("[   info   ] the crashing task failed after %lld ms\n",
              ms_since(t0));
  auto r = bad.get();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::worker_died) << describe(r.error());
  EXPECT_TRUE(contains(text_of(r.error()), "killed by SIGSEGV"))
    << describe(r.error());
  // Never run twice: exactly one worker died.
  EXPECT_EQ(p->stats().workers_died, 1u);
  // The pool goes on with a replacement.
  auto later = submit_squares(*p, 0, 10);
  expect_squares(later, 0);
  remember(*p);
}

TEST_F(PoolFailures, AResultAboveTheFrameLimitFailsItsTaskAlone) {
  // The worker cannot send a result above the frame limit (64 MiB): that
  // task fails with frame_too_large instead of waiting forever; the worker
  // goes on.
  auto p = start(options(1));
  ASSERT_TRUE(p) << describe(p.error());
  auto big = p->submit<std::string>(big_result{(int64_t{64} << 20) + 1});
  auto after = submit_squares(*p, 0, 5);
  ASSERT_TRUE(is_ready(big, kBound)) << "the task with a huge result hangs";
  auto r = big.get();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::frame_too_large) << describe(r.error());
  expect_squares(after, 0);
  EXPECT_EQ(p->stats().workers_died, 0u);
  remember(*p);
}

TEST_F(PoolFailures, ATaskAboveTheFrameLimitFailsAloneAmongOthers) {
  // Sent in one write with its neighbours, the task too large for a frame
  // (64 MiB) fails with frame_too_large; the others and the worker go on.
  auto p = start(options(1));
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<run_fault> tasks;
  for (int32_t i = 0; i < 20; ++i)
    tasks.push_back(run_fault{pool_test::no_fault, i, ""});
  tasks[7].note.assign((size_t{64} << 20) + 1, 'x');
  auto rs = p->map<int32_t>(tasks, 20);
  auto err = expect_squares_but(rs, tasks.size(), 7);
  EXPECT_EQ(err, errc::frame_too_large) << describe(err);
  EXPECT_EQ(p->stats().workers_died, 0u);
  EXPECT_EQ(p->stats().failed, 1u);
  remember(*p);
}

// -- the ledger: killed workers, deadlines, recycling -------------------------

TEST_F(PoolLedger, RedispatchesTheTasksOfAKilledWorker) {
  auto opts = options(1);
  opts.window = 16; // all six tasks in flight on the worker
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  auto log = path("runs");
  auto slow = p->submit<tagged>(nap{1000, 1, log, 0});
  // Queued behind it on the same (only) worker.
  auto behind = submit_squares(*p, 0, 5);
  auto victim = wait_started(log, 1);
  ASSERT_NE(victim, 0) << "the slow task did not start";
  remember(victim);
  auto t0 = clock_type::now();
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  ASSERT_TRUE(is_ready(slow, kBound)) << "the re-dispatched task hangs";
  auto r = slow.get();
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(r->value, 1);
  EXPECT_NE(r->pid, victim) << "the result came from the killed worker";
  remember(r->pid);
  std::printf("[   info   ] re-run finished %lld ms after the kill\n",
              ms_since(t0));
  expect_squares(behind, 0);
  // It ran twice: once on the victim, once on its replacement.
  auto runs = read_log(log);
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].first, victim);
  EXPECT_EQ(runs[1].first, r->pid);
  auto stats = p->stats();
  EXPECT_EQ(stats.workers_died, 1u);
  EXPECT_EQ(stats.redispatched, 6u); // the slow task and the 5 behind it
  EXPECT_EQ(stats.failed, 0u);
  EXPECT_TRUE(wait_gone(victim, kBound)) << "the killed worker was not reaped";
  auto now = p->workers();
  ASSERT_EQ(now.size(), 1u);
  EXPECT_NE(now[0].pid, victim);
  remember(*p);
}

TEST_F(PoolLedger, ChargesADeathOnlyToATaskThatRanAlone) {
  // Several tasks in flight: the first death is ambiguous, so every task of
  // the dead worker runs again, each alone. A death while the slow task runs
  // alone is charged to it; with two attempts allowed it is quarantined then,
  // while the tasks that shared its first worker succeed.
  auto opts = options(1);
  opts.max_attempts = 2;
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  auto log = path("runs");
  auto slow = p->submit<tagged>(nap{5000, 1, log, 0});
  auto behind = submit_squares(*p, 0, 5);
  auto victim = wait_started(log, 1);
  ASSERT_NE(victim, 0) << "the slow task did not start";
  remember(victim);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  // It runs again, alone, on the replacement.
  pid_t second = 0;
  auto deadline = clock_type::now() + kBound;
  while (second == 0 && clock_type::now() < deadline) {
    auto runs = read_log(log);
    if (count_value(runs, 1) == 2)
      second = runs.back().first;
    else
      std::this_thread::sleep_for(2ms);
  }
  ASSERT_NE(second, 0) << "the slow task did not run again; "
                       << describe_stats(p->stats());
  remember(second);
  EXPECT_NE(second, victim);
  ASSERT_EQ(::kill(second, SIGKILL), 0);
  ASSERT_TRUE(is_ready(slow, kBound)) << "the charged task hangs";
  auto r = slow.get();
  ASSERT_FALSE(r) << "a task charged max_attempts times gave a result from "
                  << r->pid << "; " << describe_log(read_log(log));
  EXPECT_EQ(r.error(), errc::task_quarantined) << describe(r.error());
  EXPECT_TRUE(contains(text_of(r.error()), "2 attempts")) << describe(r.error());
  EXPECT_TRUE(contains(text_of(r.error()), "killed by SIGKILL"))
    << describe(r.error());
  expect_squares(behind, 0);
  EXPECT_EQ(count_value(read_log(log), 1), 2u) << "it ran a third time";
  EXPECT_EQ(p->stats().quarantined, 1u);
  EXPECT_EQ(p->stats().workers_died, 2u);
  remember(*p);
}

TEST_F(PoolLedger, FindsACulpritAmongManyInFlightAndTheOthersSucceed) {
  // 300 tasks in flight on one worker; the one in the middle crashes it on
  // every run. The rerun rule (the first unanswered task alone, the others
  // in halving groups) quarantines it after max_attempts; every other task
  // gives its result exactly once.
  auto opts = options(1);
  opts.window = 300;
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<run_fault> tasks;
  for (int32_t i = 0; i < 300; ++i)
    tasks.push_back(run_fault{i == 150 ? pool_test::segfault
                                       : pool_test::no_fault,
                              i, "pool_test-note: the culprit"});
  auto rs = p->map<int32_t>(tasks, 300);
  auto err = expect_squares_but(rs, tasks.size(), 150);
  EXPECT_EQ(err, errc::task_quarantined) << describe(err);
  EXPECT_TRUE(contains(text_of(err), "3 attempts")) << describe(err);
  EXPECT_TRUE(contains(text_of(err), "killed by SIGSEGV")) << describe(err);
  auto st = p->stats();
  EXPECT_EQ(st.quarantined, 1u);
  EXPECT_EQ(st.succeeded, 299u);
  // Halving finds it in a few deaths, not one per task in flight.
  EXPECT_LE(st.workers_died, 20u) << describe_stats(st);
  remember(*p);
}

TEST_F(PoolLedger, FailsTheTasksOfAKilledWorkerAloneInAtMostOnceMode) {
  auto opts = options(1);
  opts.guarantee = delivery::at_most_once;
  opts.window = 16; // all six tasks in flight on the worker
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  auto log = path("runs");
  std::vector<multiproc::task_future<tagged>> fs;
  fs.push_back(p->submit<tagged>(nap{2000, 1, log, 0}));
  for (int32_t i = 2; i <= 6; ++i) // in flight behind it, on the same worker
    fs.push_back(p->submit<tagged>(nap{0, i, log, 0}));
  auto victim = wait_started(log, 1);
  ASSERT_NE(victim, 0) << "the slow task did not start";
  remember(victim);
  auto t0 = clock_type::now();
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  ASSERT_EQ(wait_all_until(fs, clock_type::now() + kBound), 0u)
    << "tasks of the killed worker hang";
  std::printf("[   info   ] the tasks failed %lld ms after the kill\n",
              ms_since(t0));
  for (size_t i = 0; i < fs.size(); ++i) {
    auto r = fs[i].get();
    ASSERT_FALSE(r) << "task " << i + 1 << " ran again: pid " << r->pid;
    EXPECT_EQ(r.error(), errc::worker_died) << describe(r.error());
    EXPECT_TRUE(contains(text_of(r.error()), "killed by SIGKILL"))
      << describe(r.error());
  }
  // The pool replaced the worker and goes on.
  auto next = p->submit<tagged>(nap{0, 7, log, 0});
  ASSERT_TRUE(is_ready(next, kBound));
  auto r = next.get();
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_NE(r->pid, victim);
  remember(r->pid);
  // Nothing ran twice.
  auto runs = read_log(log);
  for (int32_t v = 1; v <= 7; ++v)
    EXPECT_LE(count_value(runs, v), 1u) << "task " << v << " ran twice";
  EXPECT_EQ(count_value(runs, 1), 1u);
  EXPECT_EQ(count_value(runs, 7), 1u);
  EXPECT_EQ(p->stats().workers_died, 1u);
  EXPECT_EQ(p->stats().redispatched, 0u);
}

TEST_F(PoolLedger, AWindowOfOneLimitsWhatADeathTakesInAtMostOnceMode) {
  auto opts = options(1);
  opts.guarantee = delivery::at_most_once;
  opts.window = 1; // one task in flight per worker
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  auto log = path("runs");
  auto slow = p->submit<tagged>(nap{2000, 1, log, 0});
  std::vector<multiproc::task_future<tagged>> queued;
  for (int32_t i = 2; i <= 4; ++i)
    queued.push_back(p->submit<tagged>(nap{0, i, log, 0}));
  auto victim = wait_started(log, 1);
  ASSERT_NE(victim, 0) << "the slow task did not start";
  remember(victim);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  ASSERT_TRUE(is_ready(slow, kBound));
  auto r = slow.get();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::worker_died) << describe(r.error());
  // The others were still queued in the pool: the death did not take them.
  ASSERT_EQ(wait_all_until(queued, clock_type::now() + kBound), 0u);
  for (auto& f : queued) {
    auto x = f.get();
    ASSERT_TRUE(x) << describe(x.error()) << "; "
                   << describe_stats(p->stats());
    EXPECT_NE(x->pid, victim);
    remember(x->pid);
  }
  auto runs = read_log(log);
  for (int32_t v = 1; v <= 4; ++v)
    EXPECT_EQ(count_value(runs, v), 1u) << describe_log(runs);
}

TEST_F(PoolLedger, FailsATaskPastItsDeadlineAndReplacesItsWorker) {
  auto opts = options(2);
  opts.window = 1; // nothing waits behind the slow task on its worker
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  ASSERT_NO_FATAL_FAILURE(warm_workers(*p, 2));
  auto log = path("runs");
  // Long enough that a loaded machine cannot keep a warm worker from
  // starting the task before it: the check is that it fails once past it.
  // Only this task has it, so a square slowed by the load is not timed out.
  task_options deadline_2s;
  deadline_2s.timeout = 2000ms;
  auto t0 = clock_type::now();
  auto slow = p->submit<tagged>(nap{20000, 1, log, 0}, deadline_2s);
  auto victim = wait_started(log, 1);
  ASSERT_NE(victim, 0) << "the slow task did not start";
  remember(victim);
  auto quick = submit_squares(*p, 0, 20);
  ASSERT_TRUE(is_ready(slow, kBound)) << "the deadline did not fire";
  auto elapsed = ms_since(t0);
  std::printf("[   info   ] the deadline fired after %lld ms\n", elapsed);
  auto r = slow.get();
  ASSERT_FALSE(r) << "the task outlived its deadline";
  EXPECT_EQ(r.error(), errc::timeout) << describe(r.error());
  EXPECT_GE(elapsed, 1950); // not before its deadline
  expect_squares(quick, 0);
  // Its worker was stopped and replaced.
  EXPECT_TRUE(wait_gone(victim, kBound)) << "the overdue worker survives";
  auto deadline = clock_type::now() + kBound;
  std::set<pid_t> now;
  do {
    now = pids_of(p->workers());
    if (now.size() == 2 && now.count(victim) == 0)
      break;
    std::this_thread::sleep_for(10ms);
  } while (clock_type::now() < deadline);
  EXPECT_EQ(now.size(), 2u);
  EXPECT_EQ(now.count(victim), 0u);
  EXPECT_EQ(p->stats().workers_died, 1u)
    << describe_stats(p->stats()) << "; victim " << victim << "; "
    << describe_workers(p->workers());
  // Later tasks are served (by the replacement too, once it has started).
  ASSERT_NO_FATAL_FAILURE(warm_workers(*p, 2));
  auto later = submit_squares(*p, 20, 30);
  expect_squares(later, 20);
  remember(*p);
}

TEST_F(PoolLedger, KillsAWorkerThatIgnoresSigtermAfterTheGrace) {
  auto opts = options(1);
  opts.kill_grace = 300ms;
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  ASSERT_NO_FATAL_FAILURE(warm_workers(*p, 1));
  auto log = path("runs");
  task_options topts;
  topts.timeout = 1000ms; // this task only
  auto t0 = clock_type::now();
  auto slow = p->submit<tagged>(nap{20000, 1, log, 1}, topts);
  // Behind it on the same worker, without a deadline of their own.
  auto behind = submit_squares(*p, 0, 5);
  auto victim = wait_started(log, 1);
  ASSERT_NE(victim, 0) << "the slow task did not start";
  remember(victim);
  ASSERT_TRUE(is_ready(slow, kBound)) << "the worker ignoring SIGTERM was not killed";
  auto elapsed = ms_since(t0);
  std::printf("[   info   ] the deadline fired after %lld ms\n", elapsed);
  auto r = slow.get();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::timeout) << describe(r.error());
  EXPECT_GE(elapsed, 950);
  expect_squares(behind, 0);
  EXPECT_TRUE(wait_gone(victim, kBound)) << "the worker ignoring SIGTERM survives";
  remember(*p);
}

TEST_F(PoolLedger, RecyclesWorkersAfterMaxTasksPerChildWithABacklog) {
  auto opts = options(2);
  opts.max_tasks_per_child = 5;
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<whoami> tasks;
  for (int32_t i = 0; i < 100; ++i)
    tasks.push_back(whoami{i});
  auto t0 = clock_type::now();
  auto results = p->map<tagged>(tasks);
  std::printf("[   info   ] 100 tasks on recycled workers took %lld ms\n",
              ms_since(t0));
  ASSERT_EQ(results.size(), tasks.size());
  auto per_pid = tasks_per_worker(results);
  for (auto& [pid, n] : per_pid) {
    remember(pid);
    EXPECT_LE(n, 5) << "worker " << pid << " ran " << n << " tasks";
  }
  EXPECT_GE(per_pid.size(), 20u);
  EXPECT_GE(p->stats().workers_started, 20u);
  EXPECT_EQ(p->stats().failed, 0u);
  remember(*p);
  ASSERT_FALSE(p->close(kBound));
  for (auto& [pid, n] : per_pid)
    EXPECT_TRUE(process_gone(pid))
      << "recycled worker " << pid << " was not reaped (state "
      << proc_state(pid) << ")";
}

// -- the initializer ----------------------------------------------------------

TEST_F(PoolInitializer, RunsFirstOnEveryWorkerIncludingReplacements) {
  auto opts = options(2);
  ASSERT_FALSE(opts.set_initializer(init_msg{42, 0, "", ""}));
  auto p = start(opts, kInitialized);
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<probe> probes(20);
  for (auto& r : p->map<probe_reply>(probes)) {
    ASSERT_TRUE(r) << describe(r.error());
    EXPECT_EQ(r->init_value, 42) << "a task ran before the initializer";
    EXPECT_EQ(r->inits, 1);
  }
  auto first = pids_of(p->workers());
  ASSERT_EQ(first.size(), 2u);
  auto victim = *first.begin();
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  // Wait for the replacement.
  auto deadline = clock_type::now() + kBound;
  std::set<pid_t> now;
  do {
    now = pids_of(p->workers());
    if (now.size() == 2 && now.count(victim) == 0)
      break;
    std::this_thread::sleep_for(10ms);
  } while (clock_type::now() < deadline);
  ASSERT_EQ(now.size(), 2u);
  ASSERT_EQ(now.count(victim), 0u) << "the killed worker was not replaced";
  remember(*p);
  std::set<pid_t> served;
  for (auto& r : p->map<probe_reply>(std::vector<probe>(40), 1)) {
    ASSERT_TRUE(r) << describe(r.error());
    EXPECT_EQ(r->init_value, 42) << "worker " << r->pid << " not initialized";
    EXPECT_EQ(r->inits, 1) << "worker " << r->pid;
    served.insert(r->pid);
  }
  bool replacement_served = false;
  for (auto pid : served)
    if (first.count(pid) == 0)
      replacement_served = true;
  EXPECT_TRUE(replacement_served) << "no task reached the replacement";
}

TEST_F(PoolInitializer, StartFailsWithPoolBrokenWhenTheInitializerFails) {
  for (int32_t mode : {pool_test::throw_exception, pool_test::segfault,
                       pool_test::exit_3}) {
    SCOPED_TRACE("initializer fault: " + fault_name(mode));
    auto opts = options(2);
    opts.max_start_failures = 2;
    std::string note = "pool_test-note: initializer " + fault_name(mode);
    ASSERT_FALSE(opts.set_initializer(init_msg{42, mode, note, ""}));
    auto t0 = clock_type::now();
    auto p = start(opts, kInitialized);
    auto elapsed = ms_since(t0);
    std::printf("[   info   ] start() gave up after %lld ms\n", elapsed);
    ASSERT_FALSE(p) << "the pool started with a failing initializer";
    EXPECT_EQ(p.error(), errc::pool_broken) << describe(p.error());
    if (mode == pool_test::throw_exception) {
      EXPECT_TRUE(contains(text_of(p.error()), note)) << describe(p.error());
    }
    EXPECT_LT(elapsed, 10000);
    // Every worker that ran the initializer (it wrote a line) is gone.
    auto seen = log_->seen_pids();
    EXPECT_FALSE(seen.empty()) << "no initializer ran";
    for (auto pid : seen)
      EXPECT_TRUE(process_gone(pid))
        << "worker " << pid << " survives a failed start (state "
        << proc_state(pid) << ")";
  }
}

TEST_F(PoolInitializer, FailsPendingTasksWhenReplacementsCannotInitialize) {
  auto flag = path("refuse");
  auto opts = options(1);
  opts.max_start_failures = 2;
  ASSERT_FALSE(opts.set_initializer(init_msg{42, 0, "", flag}));
  auto p = start(opts, kInitialized);
  ASSERT_TRUE(p) << describe(p.error());
  auto log = path("runs");
  auto pending = p->submit<tagged>(nap{1000, 1, log, 0});
  auto victim = wait_started(log, 1);
  ASSERT_NE(victim, 0);
  remember(victim);
  // From now on no new worker can initialize.
  pool_test::append_line(flag, "refuse");
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  ASSERT_TRUE(is_ready(pending, kBound)) << "the pending task hangs";
  auto r = pending.get();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::pool_broken) << describe(r.error());
  auto later = p->submit<tagged>(nap{0, 2, log, 0});
  ASSERT_TRUE(is_ready(later, kBound)) << "a task on a broken pool hangs";
  auto r2 = later.get();
  ASSERT_FALSE(r2);
  EXPECT_EQ(r2.error(), errc::pool_broken) << describe(r2.error());
  EXPECT_EQ(count_value(read_log(log), 2), 0u);
}

// -- backpressure -------------------------------------------------------------

TEST_F(PoolBackpressure, FailModeRefusesTasksAtTheBound) {
  auto opts = options(1);
  opts.max_pending = 3;
  opts.on_full = when_full::fail;
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<multiproc::task_future<tagged>> held;
  for (int32_t i = 0; i < 3; ++i)
    held.push_back(p->submit<tagged>(nap{300, i, "", 0}));
  auto refused = p->submit<tagged>(nap{0, 3, "", 0});
  ASSERT_TRUE(is_ready(refused)) << "submit() at the bound did not fail at once";
  auto r = refused.get();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::full) << describe(r.error());
  ASSERT_EQ(wait_all_until(held, clock_type::now() + kBound), 0u);
  for (size_t i = 0; i < held.size(); ++i) {
    auto x = held[i].get();
    ASSERT_TRUE(x) << describe(x.error());
    EXPECT_EQ(x->value, static_cast<int32_t>(i));
  }
  // Room again.
  auto y = p->apply<int32_t>(square{9}, kBound);
  ASSERT_TRUE(y) << describe(y.error());
  EXPECT_EQ(*y, 81);
}

TEST_F(PoolBackpressure, BlockModeWaitsForRoomAndPerCallFailOverrides) {
  auto opts = options(1);
  opts.max_pending = 2;
  opts.on_full = when_full::block;
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  auto first = p->submit<tagged>(nap{400, 1, "", 0});
  auto second = p->submit<tagged>(nap{400, 2, "", 0});
  task_options no_wait;
  no_wait.on_full = when_full::fail;
  auto refused = p->submit<int32_t>(square{1}, no_wait);
  ASSERT_TRUE(is_ready(refused));
  auto rr = refused.get();
  ASSERT_FALSE(rr);
  EXPECT_EQ(rr.error(), errc::full) << describe(rr.error());
  // This one waits until a task is done (each takes 400 ms), no longer.
  auto t0 = clock_type::now();
  std::atomic<long long> first_done{-1};
  std::thread watcher{[&] {
    if (is_ready(first, kBound))
      first_done = ms_since(t0);
  }};
  auto third = p->submit<int32_t>(square{3});
  auto waited = ms_since(t0);
  watcher.join();
  std::printf("[   info   ] submit() blocked for %lld ms; the first task "
              "finished after %lld ms\n",
              waited, first_done.load());
  ASSERT_GE(first_done.load(), 0) << "the first task did not finish";
  EXPECT_GE(waited, 300) << "submit() returned while the pool was full";
  EXPECT_LT(waited, first_done.load() + 200)
    << "submit() went on waiting after the first task had made room";
  ASSERT_TRUE(is_ready(third, kBound));
  auto r3 = third.get();
  ASSERT_TRUE(r3) << describe(r3.error());
  EXPECT_EQ(*r3, 9);
  ASSERT_TRUE(is_ready(second, kBound));
  EXPECT_TRUE(second.get());
}

// -- the API on a healthy pool ------------------------------------------------

TEST_F(PoolBasics, StartsNamedWorkersAndSubmitsTasks) {
  auto opts = options(3);
  opts.name = "squarers";
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  EXPECT_EQ(p->size(), 3u);
  auto ws = p->workers();
  ASSERT_EQ(ws.size(), 3u);
  EXPECT_EQ(pids_of(ws).size(), 3u);
  for (auto& w : ws) {
    EXPECT_EQ(w.name.rfind("squarers-", 0), 0u) << w.name;
    EXPECT_EQ(w.method, start_method::forkserver);
  }
  auto fs = submit_squares(*p, 0, 50);
  expect_squares(fs, 0);
  auto stats = p->stats();
  EXPECT_EQ(stats.submitted, 50u);
  EXPECT_EQ(stats.succeeded, 50u);
  EXPECT_EQ(stats.workers_started, 3u);
}

TEST_F(PoolBasics, KeepsExactlyTheRequestedNumberOfWorkers) {
  for (size_t n : {size_t{1}, size_t{2}, size_t{4}}) {
    SCOPED_TRACE("workers = " + std::to_string(n));
    auto p = start(options(n));
    ASSERT_TRUE(p) << describe(p.error());
    EXPECT_EQ(p->size(), n);
    EXPECT_EQ(p->workers().size(), n) << describe_workers(p->workers());
    auto fs = submit_squares(*p, 0, 20);
    expect_squares(fs, 0);
    std::this_thread::sleep_for(200ms);
    remember(*p);
    auto ws = p->workers();
    EXPECT_EQ(ws.size(), n) << describe_workers(ws);
    std::set<std::string> names;
    for (auto& w : ws)
      names.insert(w.name);
    EXPECT_EQ(names.size(), ws.size()) << describe_workers(ws);
    EXPECT_EQ(p->stats().workers_started, n) << describe_stats(p->stats());
  }
}

TEST_F(PoolBasics, TasksBehindASlowOneGoToTheIdleWorker) {
  // One worker holds a task that does not end until the test releases it.
  // Dealt out in turn up to a large window, half of the tasks submitted
  // after it would queue behind it while the other worker idles; the
  // adaptive window (4 at start) lets the busy worker hold at most 3 more,
  // so the idle one runs the rest while the slow task still runs. Nothing
  // here depends on speed: the slow task ends only when released.
  auto p = start(options(2));
  ASSERT_TRUE(p) << describe(p.error());
  auto log = path("runs");
  auto release = path("release");
  auto slow = p->submit<tagged>(gate{-1, log, release});
  pid_t busy = wait_started(log, -1);
  ASSERT_NE(busy, 0) << "the slow task did not start";
  std::vector<multiproc::task_future<tagged>> fs;
  for (int32_t i = 0; i < 20; ++i)
    fs.push_back(p->submit<tagged>(nap{0, i, "", 0}));
  constexpr size_t most_held = 3; // initial window 4, less the slow task
  auto ready = [&] {
    return static_cast<size_t>(std::count_if(
      fs.begin(), fs.end(), [](auto& f) { return is_ready(f, 0ms); }));
  };
  auto deadline = clock_type::now() + kBound;
  while (ready() < fs.size() - most_held && clock_type::now() < deadline)
    std::this_thread::sleep_for(2ms);
  size_t done_while_held = ready();
  EXPECT_GE(done_while_held, fs.size() - most_held)
    << "tasks waited behind the slow one while the other worker idled";
  EXPECT_FALSE(is_ready(slow, 0ms)) << "the slow task ended unreleased";
  for (auto& f : fs)
    if (is_ready(f, 0ms)) {
      auto r = f.get();
      ASSERT_TRUE(r) << describe(r.error());
      EXPECT_NE(r->pid, busy) << "task " << r->value
                              << " ran on the busy worker";
    }
  pool_test::append_line(release, "go");
  ASSERT_TRUE(is_ready(slow, kBound));
  auto r = slow.get();
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(r->pid, busy);
  for (auto& f : fs)
    if (f.valid()) {
      ASSERT_TRUE(is_ready(f, kBound)) << "a held task did not finish";
      auto x = f.get();
      ASSERT_TRUE(x) << describe(x.error());
    }
  remember(*p);
}

TEST_F(PoolBasics, DeliversEachResultWhenItsTaskFinishes) {
  // One worker holds both tasks and runs them one after the other; the
  // second does not end until the test creates `release`. The first result
  // must arrive while the second task is still running.
  auto opts = options(1);
  opts.window = 2; // both tasks in flight on the worker
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  auto log = path("runs");
  auto release = path("release");
  auto f1 = p->submit<tagged>(nap{0, 1, log, 0});
  auto f2 = p->submit<tagged>(gate{2, log, release});
  ASSERT_NE(wait_started(log, 2), 0) << "the second task did not start";
  EXPECT_TRUE(is_ready(f1, kBound))
    << "the first result waited for the second task";
  EXPECT_FALSE(is_ready(f2, 0ms)) << "the second task ended unreleased";
  pool_test::append_line(release, "go");
  ASSERT_TRUE(is_ready(f2, kBound));
  auto r1 = f1.get();
  auto r2 = f2.get();
  ASSERT_TRUE(r1) << describe(r1.error());
  ASSERT_TRUE(r2) << describe(r2.error());
  EXPECT_EQ(r1->value, 1);
  EXPECT_EQ(r2->value, 2);
  EXPECT_EQ(r1->pid, r2->pid) << "the tasks ran on different workers";
  remember(*p);
}

TEST_F(PoolBasics, RejectsAnUnknownEntry) {
  auto p = pool::start(sys, "pool_test.no_such_worker", options(1));
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error(), errc::unknown_entry) << describe(p.error());
}

TEST_F(PoolBasics, MapReturnsResultsInInputOrderForAnyChunksize) {
  auto p = start(options(3));
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<whoami> tasks;
  for (int32_t i = 0; i < 500; ++i)
    tasks.push_back(whoami{i});
  for (size_t chunk : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}}) {
    SCOPED_TRACE("chunksize " + std::to_string(chunk));
    auto results = p->map<tagged>(tasks, chunk);
    ASSERT_EQ(results.size(), tasks.size());
    for (size_t i = 0; i < results.size(); ++i) {
      ASSERT_TRUE(results[i]) << describe(results[i].error());
      EXPECT_EQ(results[i]->value, static_cast<int32_t>(i * i));
    }
  }
}

TEST_F(PoolBasics, MapsOverSharedMemoryWorkersAndSurvivesAKill) {
  auto opts = options(2);
  opts.transport = worker_transport::shared_memory;
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<whoami> tasks;
  for (int32_t i = 0; i < 20000; ++i)
    tasks.push_back(whoami{i});
  for (size_t chunk : {size_t{0}, size_t{1}}) {
    SCOPED_TRACE("chunksize " + std::to_string(chunk));
    auto results = p->map<tagged>(tasks, chunk);
    ASSERT_EQ(results.size(), tasks.size());
    for (size_t i = 0; i < results.size(); ++i) {
      ASSERT_TRUE(results[i]) << describe(results[i].error());
      ASSERT_EQ(results[i]->value, static_cast<int32_t>(i * i));
    }
  }
  // A worker killed while it holds tasks: they run again elsewhere.
  auto log = path("runs");
  auto slow = p->submit<tagged>(nap{1000, 1, log, 0});
  auto victim = wait_started(log, 1);
  ASSERT_NE(victim, 0) << "the slow task did not start";
  remember(victim);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  ASSERT_TRUE(is_ready(slow, kBound)) << "the re-dispatched task hangs";
  auto r = slow.get();
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_NE(r->pid, victim);
  remember(r->pid);
  EXPECT_TRUE(wait_gone(victim, kBound)) << "the killed worker was not reaped";
  remember(*p);
}

TEST_F(PoolBasics, MapChunksAroundBigAndUnencodableTasks) {
  // Chunks are built in place: a task that fails to encode ends its chunk
  // and fails alone; a big one (16 KiB and more) goes alone, also right
  // after a chunk was started. Everything else keeps its place.
  auto p = start(options(2));
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<pool_test::sized_task> tasks(300);
  for (int32_t i = 0; i < 300; ++i)
    tasks[i].value = i;
  for (int i : {0, 60, 61, 62, 149})
    tasks[i].refuse = true;
  for (int i : {10, 11, 50, 150, 299})
    tasks[i].pad.assign(20000, 'p');
  for (size_t chunk : {size_t{0}, size_t{50}, size_t{7}}) {
    SCOPED_TRACE("chunksize " + std::to_string(chunk));
    auto results = p->map<int32_t>(tasks, chunk);
    ASSERT_EQ(results.size(), tasks.size());
    for (size_t i = 0; i < results.size(); ++i) {
      SCOPED_TRACE("task " + std::to_string(i));
      if (tasks[i].refuse) {
        ASSERT_FALSE(results[i]);
        EXPECT_EQ(results[i].error(), errc::encode_failed)
          << describe(results[i].error());
        continue;
      }
      ASSERT_TRUE(results[i]) << describe(results[i].error());
      auto want = static_cast<int32_t>(i * i + tasks[i].pad.size());
      EXPECT_EQ(*results[i], want);
    }
  }
  EXPECT_EQ(p->stats().workers_died, 0u);
}

TEST_F(PoolBasics, StarmapBuildsEachTaskFromATuple) {
  auto p = start(options(2));
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<std::tuple<int32_t, int32_t>> args;
  for (int32_t i = 0; i < 100; ++i)
    args.emplace_back(i, 1000 * i);
  auto results = p->starmap<int32_t, add>(args);
  ASSERT_EQ(results.size(), args.size());
  for (size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i]) << describe(results[i].error());
    EXPECT_EQ(*results[i], 1001 * static_cast<int32_t>(i));
  }
}

TEST_F(PoolBasics, ImapReadsItsInputLazilyAndKeepsOrder) {
  auto p = start(options(2));
  ASSERT_TRUE(p) << describe(p.error());
  constexpr size_t window = 4;
  constexpr int32_t n = 60;
  int32_t reads = 0;
  std::function<std::optional<square>()> input
    = [&reads]() -> std::optional<square> {
    if (reads == n)
      return std::nullopt;
    return square{reads++};
  };
  auto stream = p->imap<int32_t, square>(input, window);
  EXPECT_EQ(reads, 0) << "imap() read its input before next()";
  size_t taken = 0;
  while (auto r = stream.next(kBound)) {
    ASSERT_TRUE(*r) << describe(r->error());
    auto i = static_cast<int32_t>(taken);
    EXPECT_EQ(**r, i * i);
    EXPECT_EQ(stream.last_index(), taken);
    ++taken;
    EXPECT_LE(static_cast<size_t>(reads), taken + window)
      << "imap read more than `window` ahead of the reader";
  }
  EXPECT_EQ(taken, static_cast<size_t>(n));
  EXPECT_EQ(reads, n);
}

TEST_F(PoolBasics, ImapUnorderedYieldsEveryResultOnce) {
  auto p = start(options(4));
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<nap> tasks;
  for (int32_t i = 0; i < 40; ++i)
    tasks.push_back(nap{(40 - i) % 7 * 5, i, "", 0});
  auto stream = p->imap_unordered<tagged>(tasks);
  std::set<size_t> seen;
  while (auto r = stream.next(kBound)) {
    ASSERT_TRUE(*r) << describe(r->error());
    auto index = stream.last_index();
    ASSERT_LT(index, tasks.size());
    EXPECT_TRUE(seen.insert(index).second) << "index " << index << " twice";
    EXPECT_EQ((*r)->value, tasks[index].value);
  }
  EXPECT_EQ(seen.size(), tasks.size());
}

TEST_F(PoolBasics, ApplyWaitsAtMostItsTimeout) {
  auto p = start(options(2));
  ASSERT_TRUE(p) << describe(p.error());
  auto y = p->apply<int32_t>(square{12});
  ASSERT_TRUE(y) << describe(y.error());
  EXPECT_EQ(*y, 144);
  auto t0 = clock_type::now();
  auto late = p->apply<tagged>(nap{3000, 1, "", 0}, 100ms);
  auto elapsed = ms_since(t0);
  ASSERT_FALSE(late);
  EXPECT_EQ(late.error(), errc::timeout) << describe(late.error());
  EXPECT_LT(elapsed, 2000);
}

TEST_F(PoolBasics, AnExceptionFailsOnlyItsTaskAndTheWorkerKeepsServing) {
  auto p = start(options(1));
  ASSERT_TRUE(p) << describe(p.error());
  auto pid = p->workers().at(0).pid;
  for (int round = 0; round < 3; ++round) {
    auto bad = p->apply<int32_t>(
      run_fault{pool_test::throw_exception, 1, "pool_test-note: bad input"},
      kBound);
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.error(), errc::worker_exception) << describe(bad.error());
    EXPECT_TRUE(contains(text_of(bad.error()), "bad input"));
    auto good = p->apply<int32_t>(square{round}, kBound);
    ASSERT_TRUE(good) << describe(good.error());
    EXPECT_EQ(*good, round * round);
  }
  ASSERT_EQ(p->workers().size(), 1u);
  EXPECT_EQ(p->workers()[0].pid, pid) << "the worker was replaced";
  EXPECT_EQ(p->stats().workers_died, 0u);
  EXPECT_EQ(p->stats().failed, 3u);
}

TEST_F(PoolBasics, TheHandleRunsActorRequestsAsTasks) {
  auto p = start(options(2));
  ASSERT_TRUE(p) << describe(p.error());
  auto h = p->handle();
  ASSERT_TRUE(h);
  caf::scoped_actor self{sys};
  int32_t got = 0;
  self->request(h, 10s, square{6})
    .receive([&](int32_t y) { got = y; },
             [&](caf::error& err) { FAIL() << describe(err); });
  EXPECT_EQ(got, 36);
  caf::error failure;
  self->request(h, 10s, run_fault{pool_test::throw_exception, 1, "via handle"})
    .receive([&](int32_t) { FAIL() << "the faulty request succeeded"; },
             [&](caf::error& err) { failure = err; });
  EXPECT_EQ(failure, errc::worker_exception) << describe(failure);
}

// -- sizes --------------------------------------------------------------------

TEST_F(PoolSizes, APoolOfOneRunsEverythingInOrder) {
  auto p = start(options(1));
  ASSERT_TRUE(p) << describe(p.error());
  ASSERT_EQ(p->workers().size(), 1u);
  auto pid = p->workers()[0].pid;
  std::vector<whoami> tasks;
  for (int32_t i = 0; i < 300; ++i)
    tasks.push_back(whoami{i});
  auto results = p->map<tagged>(tasks);
  ASSERT_EQ(results.size(), tasks.size());
  for (size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i]) << describe(results[i].error());
    EXPECT_EQ(results[i]->value, static_cast<int32_t>(i * i));
    EXPECT_EQ(results[i]->pid, pid);
  }
  auto stream = p->imap<tagged>(tasks);
  size_t i = 0;
  while (auto r = stream.next(kBound)) {
    ASSERT_TRUE(*r) << describe(r->error());
    EXPECT_EQ((*r)->value, static_cast<int32_t>(i * i));
    ++i;
  }
  EXPECT_EQ(i, tasks.size());
}

TEST_F(PoolSizes, APoolOfSixtyFourRunsTinyTasks) {
  auto opts = options(64);
  opts.method = start_method::forkserver;
  auto t0 = clock_type::now();
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  std::printf("[   info   ] 64 workers started in %lld ms\n", ms_since(t0));
  EXPECT_EQ(p->size(), 64u);
  auto ws = p->workers();
  EXPECT_EQ(ws.size(), 64u);
  EXPECT_EQ(pids_of(ws).size(), 64u);
  std::vector<whoami> tasks;
  for (int32_t i = 0; i < 2000; ++i)
    tasks.push_back(whoami{i});
  t0 = clock_type::now();
  auto results = p->map<tagged>(tasks, 1);
  std::printf("[   info   ] 2000 tiny tasks on 64 workers took %lld ms\n",
              ms_since(t0));
  ASSERT_EQ(results.size(), tasks.size());
  std::set<pid_t> served;
  auto live = pids_of(ws);
  for (size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i]) << describe(results[i].error());
    EXPECT_EQ(results[i]->value, static_cast<int32_t>(i * i));
    EXPECT_EQ(live.count(results[i]->pid), 1u)
      << "result from an unknown process " << results[i]->pid;
    served.insert(results[i]->pid);
  }
  EXPECT_GT(served.size(), 1u) << "one worker did all the work";
  ASSERT_FALSE(p->close(30s));
  for (auto pid : live)
    EXPECT_TRUE(process_gone(pid)) << "worker " << pid << " survives close()";
}

TEST_F(PoolSizes, EmptyInputGivesEmptyResults) {
  auto p = start(options(2));
  ASSERT_TRUE(p) << describe(p.error());
  EXPECT_TRUE(p->map<int32_t>(std::vector<square>{}).empty());
  EXPECT_TRUE(p->map<int32_t>(std::vector<square>{}, 5).empty());
  EXPECT_TRUE(
    (p->starmap<int32_t, add>(std::vector<std::tuple<int32_t, int32_t>>{}))
      .empty());
  std::vector<square> none;
  auto s1 = p->imap<int32_t>(none);
  EXPECT_FALSE(s1.next(kBound));
  auto s2 = p->imap_unordered<int32_t>(none);
  EXPECT_FALSE(s2.next(kBound));
  EXPECT_EQ(p->stats().submitted, 0u);
  // The pool still works.
  auto y = p->apply<int32_t>(square{2}, kBound);
  ASSERT_TRUE(y) << describe(y.error());
  EXPECT_EQ(*y, 4);
}

// -- shutdown -----------------------------------------------------------------

namespace {

/// Starts and closes a one-worker pool so that the runtime's lazily started
/// parts (output thread, ...) exist before a descriptor count.
void warm_up(caf::actor_system& sys) {
  pool_options opts;
  opts.workers = 1;
  opts.sink = [](const output_line&) {};
  auto p = pool::start(sys, kTester, opts);
  ASSERT_TRUE(p) << describe(p.error());
  auto y = p->apply<int32_t>(square{1}, kBound);
  ASSERT_TRUE(y) << describe(y.error());
  ASSERT_FALSE(p->close(kBound));
}

/// Expects the open descriptors to be back to `baseline` (the runtime may
/// close its own within a moment).
void expect_no_fd_leak(const std::vector<std::string>& baseline) {
  auto deadline = clock_type::now() + 2s;
  auto now = list_fds();
  while (now.size() > baseline.size() && clock_type::now() < deadline) {
    std::this_thread::sleep_for(10ms);
    now = list_fds();
  }
  EXPECT_LE(now.size(), baseline.size())
    << "descriptors before:\n"
    << join_lines(baseline) << "after:\n"
    << join_lines(now);
}

} // namespace

TEST_F(PoolShutdown, CloseFinishesTenThousandQueuedTasks) {
  warm_up(sys);
  auto fds = list_fds();
  {
    auto p = start(options(4));
    ASSERT_TRUE(p) << describe(p.error());
    auto workers = pids_of(p->workers());
    auto fs = submit_squares(*p, 0, 10000);
    auto t0 = clock_type::now();
    auto err = p->close(40s);
    std::printf("[   info   ] close() took %lld ms\n", ms_since(t0));
    ASSERT_FALSE(err) << describe(err);
    for (size_t i = 0; i < fs.size(); ++i) {
      ASSERT_TRUE(is_ready(fs[i])) << "task " << i << " unresolved after close()";
      auto r = fs[i].get();
      ASSERT_TRUE(r) << "task " << i << ": " << describe(r.error());
      EXPECT_EQ(*r, static_cast<int32_t>(i * i));
    }
    auto stats = p->stats();
    EXPECT_EQ(stats.submitted, 10000u);
    EXPECT_EQ(stats.succeeded, 10000u);
    for (auto pid : workers)
      EXPECT_TRUE(process_gone(pid))
        << "worker " << pid << " survives close() (state " << proc_state(pid)
        << ")";
    // A closed pool takes no tasks.
    auto late = p->submit<int32_t>(square{1});
    ASSERT_TRUE(is_ready(late));
    auto lr = late.get();
    ASSERT_FALSE(lr);
    EXPECT_EQ(lr.error(), errc::closed) << describe(lr.error());
  }
  expect_no_fd_leak(fds);
}

TEST_F(PoolShutdown, TerminateResolvesTenThousandQueuedTasksAtOnce) {
  warm_up(sys);
  auto fds = list_fds();
  {
    auto p = start(options(4));
    ASSERT_TRUE(p) << describe(p.error());
    auto workers = pids_of(p->workers());
    std::vector<multiproc::task_future<tagged>> fs;
    fs.reserve(10000);
    for (int32_t i = 0; i < 10000; ++i)
      fs.push_back(p->submit<tagged>(nap{1, i, "", 0}));
    auto t0 = clock_type::now();
    p->terminate();
    auto took = ms_since(t0);
    std::printf("[   info   ] terminate() took %lld ms\n", took);
    EXPECT_LT(took, 5000);
    ASSERT_EQ(wait_all_until(fs, clock_type::now() + 2s), 0u)
      << "tasks unresolved after terminate()";
    size_t ok = 0;
    size_t closed = 0;
    for (size_t i = 0; i < fs.size(); ++i) {
      auto r = fs[i].get();
      if (r) {
        ++ok;
        EXPECT_EQ(r->value, static_cast<int32_t>(i));
      } else {
        ASSERT_EQ(r.error(), errc::closed)
          << "task " << i << ": " << describe(r.error());
        ++closed;
      }
    }
    std::printf("[   info   ] %zu finished, %zu closed\n", ok, closed);
    EXPECT_GT(closed, 0u);
    for (auto pid : workers)
      EXPECT_TRUE(process_gone(pid))
        << "worker " << pid << " survives terminate() (state "
        << proc_state(pid) << ")";
    auto late = p->submit<int32_t>(square{1});
    ASSERT_TRUE(is_ready(late));
    auto lr = late.get();
    ASSERT_FALSE(lr);
    EXPECT_EQ(lr.error(), errc::closed) << describe(lr.error());
  }
  expect_no_fd_leak(fds);
}

TEST_F(PoolShutdown, TheDestructorTerminatesRunningWork) {
  warm_up(sys);
  auto fds = list_fds();
  std::vector<multiproc::task_future<tagged>> fs;
  std::set<pid_t> workers;
  clock_type::time_point t0;
  {
    auto p = start(options(2));
    ASSERT_TRUE(p) << describe(p.error());
    workers = pids_of(p->workers());
    auto log = path("runs");
    for (int32_t i = 0; i < 50; ++i)
      fs.push_back(p->submit<tagged>(nap{10000, i, log, 0}));
    ASSERT_NE(wait_started(log, 0), 0) << "no task started";
    t0 = clock_type::now();
  }
  auto took = ms_since(t0);
  std::printf("[   info   ] the destructor took %lld ms\n", took);
  EXPECT_LT(took, 3000);
  ASSERT_EQ(wait_all_until(fs, clock_type::now() + 1s), 0u)
    << "tasks unresolved after the destructor";
  for (auto& f : fs) {
    auto r = f.get();
    ASSERT_FALSE(r) << "a 10 s task finished";
    EXPECT_EQ(r.error(), errc::closed) << describe(r.error());
  }
  for (auto pid : workers)
    EXPECT_TRUE(process_gone(pid))
      << "worker " << pid << " survives the destructor (state "
      << proc_state(pid) << ")";
  expect_no_fd_leak(fds);
}

TEST_F(PoolShutdown, CloseWithATimeoutGivesUpAndTheDestructorTerminates) {
  multiproc::task_future<tagged> slow;
  std::set<pid_t> workers;
  {
    auto p = start(options(1));
    ASSERT_TRUE(p) << describe(p.error());
    workers = pids_of(p->workers());
    slow = p->submit<tagged>(nap{5000, 1, "", 0});
    auto t0 = clock_type::now();
    auto err = p->close(200ms);
    auto took = ms_since(t0);
    EXPECT_EQ(err, errc::timeout) << describe(err);
    EXPECT_LT(took, 2000);
    EXPECT_FALSE(is_ready(slow)) << "close() ended the running task";
  }
  ASSERT_TRUE(is_ready(slow, 1s));
  auto r = slow.get();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::closed) << describe(r.error());
  for (auto pid : workers)
    EXPECT_TRUE(process_gone(pid)) << "worker " << pid << " survives";
}

TEST_F(PoolBackpressure, MapLargerThanMaxPendingDoesNotDeadlock) {
  // A chunk (or the whole input) above max_pending must not wait for room
  // that only its own undispatched tasks could free.
  auto opts = options(2);
  opts.max_pending = 100;
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<square> tasks;
  for (int32_t i = 0; i < 5000; ++i)
    tasks.push_back(square{i});
  for (size_t chunk : {size_t{1}, size_t{0}, size_t{1001}}) {
    SCOPED_TRACE("chunksize " + std::to_string(chunk));
    auto done = std::async(std::launch::async,
                           [&] { return p->map<int32_t>(tasks, chunk); });
    ASSERT_EQ(done.wait_for(20s), std::future_status::ready)
      << "map deadlocked";
    auto ys = done.get();
    ASSERT_EQ(ys.size(), tasks.size());
    for (int32_t i = 0; i < 5000; ++i) {
      ASSERT_TRUE(ys[i]) << describe(ys[i].error());
      EXPECT_EQ(*ys[i], i * i);
    }
  }
  remember(*p);
}

// -- progress -----------------------------------------------------------------

namespace {

// -- chunks ---------------------------------------------------------------------
//
// map() with a chunk size above 1 sends each chunk as one frame; the worker
// still gets its items as requests of their own, and their outcomes come
// back per item.

class PoolChunks : public PoolFixture {};

TEST_F(PoolChunks, ItemsThatThrowFailAloneAndTheirChunkGoesOn) {
  auto p = start(options(2));
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<run_fault> tasks;
  for (int32_t i = 0; i < 100; ++i)
    tasks.push_back(run_fault{i == 10 || i == 55 ? pool_test::throw_exception
                                                 : pool_test::no_fault,
                              i, "pool_test-note: item " + std::to_string(i)});
  auto rs = p->map<int32_t>(tasks, 25);
  ASSERT_EQ(rs.size(), tasks.size());
  for (size_t i = 0; i < rs.size(); ++i) {
    auto x = static_cast<int32_t>(i);
    if (i == 10 || i == 55) {
      ASSERT_FALSE(rs[i]) << "item " << i << " gave " << *rs[i];
      EXPECT_EQ(rs[i].error(), errc::worker_exception);
      EXPECT_TRUE(contains(text_of(rs[i].error()),
                           "pool_test-note: item " + std::to_string(i)))
        << describe(rs[i].error());
      continue;
    }
    ASSERT_TRUE(rs[i]) << "item " << i << ": " << describe(rs[i].error());
    EXPECT_EQ(*rs[i], x * x);
  }
  EXPECT_EQ(p->stats().workers_died, 0u);
  EXPECT_EQ(p->stats().failed, 2u);
  remember(*p);
}

TEST_F(PoolChunks, AResultThatCannotBeDecodedFailsItsItemAlone) {
  // map() decodes results straight into the vector it returns.
  auto p = start(options(2));
  ASSERT_TRUE(p) << describe(p.error());
  std::string note = "pool_test-note: this result refuses to be decoded";
  std::vector<make_fragile> tasks;
  for (int32_t i = 0; i < 60; ++i)
    tasks.push_back(make_fragile{i, pool_test::no_fault,
                                 i == 33 ? pool_test::throw_exception
                                         : pool_test::no_fault,
                                 note});
  for (size_t chunksize : {size_t{1}, size_t{20}}) {
    auto rs = p->map<fragile>(tasks, chunksize);
    ASSERT_EQ(rs.size(), tasks.size());
    for (size_t i = 0; i < rs.size(); ++i) {
      if (i == 33) {
        ASSERT_FALSE(rs[i]) << "chunksize " << chunksize;
        EXPECT_EQ(rs[i].error(), errc::decode_failed)
          << describe(rs[i].error());
        EXPECT_TRUE(contains(text_of(rs[i].error()), note))
          << describe(rs[i].error());
        continue;
      }
      ASSERT_TRUE(rs[i]) << "item " << i << ", chunksize " << chunksize
                         << ": " << describe(rs[i].error());
      EXPECT_EQ(rs[i]->value, static_cast<int32_t>(i));
    }
  }
  // A result of another type than asked for names both.
  std::vector<square> squares{{1}, {2}, {3}};
  auto wrong = p->map<std::string>(squares, 3);
  ASSERT_EQ(wrong.size(), 3u);
  for (auto& r : wrong) {
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), errc::type_mismatch) << describe(r.error());
  }
  EXPECT_EQ(p->stats().workers_died, 0u);
  remember(*p);
}

TEST_F(PoolChunks, ItemsAnsweredLaterThroughAPromiseReachTheirTasks) {
  auto p = start(options(2));
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<later> tasks;
  for (int32_t i = 0; i < 200; ++i)
    tasks.push_back(later{i});
  auto rs = p->map<int32_t>(tasks, 50);
  auto err = expect_squares_but(rs, tasks.size(), tasks.size());
  EXPECT_FALSE(err);
  EXPECT_EQ(p->stats().succeeded, 200u);
  remember(*p);
}

TEST_F(PoolChunks, ABehaviorChangeInsideAChunkTakesEffectAtTheNextItem) {
  auto p = start(options(1), "pool_test.shifter");
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<square> tasks;
  for (int32_t i = 0; i < 20; ++i)
    tasks.push_back(square{i});
  auto rs = p->map<int32_t>(tasks, 20);
  ASSERT_EQ(rs.size(), tasks.size());
  for (int32_t i = 0; i < 20; ++i) {
    ASSERT_TRUE(rs[i]) << "item " << i << ": " << describe(rs[i].error());
    EXPECT_EQ(*rs[i], i <= 5 ? i * i : -i * i) << "item " << i;
  }
  remember(*p);
}

TEST_F(PoolChunks, ItemsTheWorkerHasNoHandlerForFailAndTheWorkerLives) {
  auto p = start(options(1));
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<probe> tasks(10);
  auto rs = p->map<probe_reply>(tasks, 10);
  ASSERT_EQ(rs.size(), tasks.size());
  for (auto& r : rs) {
    ASSERT_FALSE(r);
    EXPECT_TRUE(contains(describe(r.error()), "unexpected"))
      << describe(r.error());
  }
  auto after = p->map<int32_t>(std::vector<square>{{3}, {4}}, 2);
  ASSERT_TRUE(after[0] && after[1]);
  EXPECT_EQ(*after[0], 9);
  EXPECT_EQ(*after[1], 16);
  EXPECT_EQ(p->stats().workers_died, 0u);
  remember(*p);
}

/// 100 logged naps in chunks of 100 on one worker; item 50 naps long enough
/// to be killed while it runs.
struct killed_chunk {
  std::vector<nap> tasks;
  std::vector<caf::expected<tagged>> results;
  pid_t victim = 0;

  void run(pool& p, const std::string& log, int32_t long_ms) {
    for (int32_t i = 0; i < 100; ++i)
      tasks.push_back(nap{i == 50 ? long_ms : 0, i, log, 0});
    auto f = std::async(std::launch::async,
                        [&] { return p.map<tagged>(tasks, 100); });
    victim = wait_started(log, 50);
    if (victim != 0)
      ::kill(victim, SIGKILL);
    ASSERT_EQ(f.wait_for(kBound), std::future_status::ready)
      << "map did not finish after its worker died";
    results = f.get();
    ASSERT_NE(victim, 0) << "item 50 did not start";
    ASSERT_EQ(results.size(), tasks.size());
  }
};

TEST_F(PoolChunks, AKilledChunkRunsWhatItDidNotAnswerAgain) {
  auto p = start(options(1));
  ASSERT_TRUE(p) << describe(p.error());
  auto log = path("runs");
  killed_chunk k;
  k.run(*p, log, 300);
  remember(k.victim);
  for (size_t i = 0; i < k.results.size(); ++i) {
    ASSERT_TRUE(k.results[i]) << "item " << i << ": "
                              << describe(k.results[i].error());
    EXPECT_EQ(k.results[i]->value, static_cast<int32_t>(i));
  }
  // Item 50 ran again on the new worker.
  EXPECT_NE(k.results[50]->pid, k.victim);
  auto runs = read_log(log);
  EXPECT_EQ(count_value(runs, 50), 2u) << describe_log(runs);
  EXPECT_EQ(p->stats().workers_died, 1u);
  EXPECT_GE(p->stats().redispatched, 1u);
  remember(*p);
}

TEST_F(PoolChunks, AtMostOnceAKilledChunkFailsWhatItDidNotAnswerAndRunsNothingTwice) {
  auto opts = options(1);
  opts.guarantee = delivery::at_most_once;
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  auto log = path("runs");
  killed_chunk k;
  k.run(*p, log, 20000);
  remember(k.victim);
  ASSERT_FALSE(k.results[50]);
  EXPECT_EQ(k.results[50].error(), errc::worker_died)
    << describe(k.results[50].error());
  auto runs = read_log(log);
  for (int32_t i = 0; i < 100; ++i) {
    EXPECT_LE(count_value(runs, i), 1u) << "item " << i << " ran twice";
    auto& r = k.results[static_cast<size_t>(i)];
    if (r) {
      EXPECT_EQ(r->value, i);
      EXPECT_EQ(r->pid, k.victim);
    } else {
      EXPECT_EQ(r.error(), errc::worker_died) << describe(r.error());
    }
    // The items after the one killed never ran.
    if (i > 50) {
      EXPECT_FALSE(r) << "item " << i;
    }
  }
  EXPECT_EQ(p->stats().redispatched, 0u);
  remember(*p);
}

// -- task workers ----------------------------------------------------------------
//
// A task worker's chunk items run its function on the channel's thread; the
// outcomes, the order and what a death does are those of any worker.

class PoolTaskWorkers : public PoolFixture {};

TEST_F(PoolTaskWorkers, MapReturnsResultsInInputOrderForAnyChunksize) {
  auto p = start(options(2), "pool_test.square_fn");
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<square> tasks;
  for (int32_t i = 0; i < 5000; ++i)
    tasks.push_back(square{i});
  for (size_t chunksize : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}}) {
    auto rs = p->map<int32_t>(tasks, chunksize);
    ASSERT_EQ(rs.size(), tasks.size());
    for (size_t i = 0; i < rs.size(); ++i) {
      ASSERT_TRUE(rs[i]) << "chunksize " << chunksize << ", item " << i
                         << ": " << describe(rs[i].error());
      EXPECT_EQ(*rs[i], tasks[i].value * tasks[i].value);
    }
  }
  auto one = p->submit<int32_t>(square{12}).get();
  ASSERT_TRUE(one) << describe(one.error());
  EXPECT_EQ(*one, 144);
  EXPECT_EQ(p->stats().workers_died, 0u);
  remember(*p);
}

TEST_F(PoolTaskWorkers, AnExceptionFailsItsItemAloneWithTheWorkersText) {
  auto p = start(options(2), "pool_test.fault_fn");
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<run_fault> tasks;
  for (int32_t i = 0; i < 100; ++i)
    tasks.push_back(run_fault{i == 10 || i == 55 ? pool_test::throw_exception
                                                 : pool_test::no_fault,
                              i, "pool_test-note: item " + std::to_string(i)});
  for (size_t chunksize : {size_t{25}, size_t{1}}) {
    auto rs = p->map<int32_t>(tasks, chunksize);
    ASSERT_EQ(rs.size(), tasks.size());
    for (size_t i = 0; i < rs.size(); ++i) {
      auto x = static_cast<int32_t>(i);
      if (i == 10 || i == 55) {
        ASSERT_FALSE(rs[i]) << "item " << i << " gave " << *rs[i];
        EXPECT_EQ(rs[i].error(), errc::worker_exception);
        auto text = text_of(rs[i].error());
        EXPECT_TRUE(contains(text, "pool_test-note: item " + std::to_string(i))
                    && contains(text, "threw std::runtime_error")
                    && contains(text, "worker pool_test.fault_fn"))
          << "chunksize " << chunksize << ": " << describe(rs[i].error());
        continue;
      }
      ASSERT_TRUE(rs[i]) << "item " << i << ": " << describe(rs[i].error());
      EXPECT_EQ(*rs[i], x * x);
    }
  }
  EXPECT_EQ(p->stats().workers_died, 0u);
  EXPECT_EQ(p->stats().failed, 4u);
  remember(*p);
}

TEST_F(PoolTaskWorkers, AReturnedErrorFailsItsItemAlone) {
  auto p = start(options(2), "pool_test.checked_square_fn");
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<square> tasks;
  for (int32_t i = 0; i < 100; ++i)
    tasks.push_back(square{i == 30 ? -30 : i});
  for (size_t chunksize : {size_t{25}, size_t{1}}) {
    auto rs = p->map<int32_t>(tasks, chunksize);
    ASSERT_EQ(rs.size(), tasks.size());
    for (size_t i = 0; i < rs.size(); ++i) {
      auto x = static_cast<int32_t>(i);
      if (i == 30) {
        ASSERT_FALSE(rs[i]) << "item 30 gave " << *rs[i];
        EXPECT_EQ(rs[i].error(), errc::invalid_argument)
          << "chunksize " << chunksize << ": " << describe(rs[i].error());
        EXPECT_TRUE(contains(text_of(rs[i].error()), "pool_test: negative -30"))
          << describe(rs[i].error());
        continue;
      }
      ASSERT_TRUE(rs[i]) << "item " << i << ": " << describe(rs[i].error());
      EXPECT_EQ(*rs[i], x * x);
    }
  }
  EXPECT_EQ(p->stats().workers_died, 0u);
  remember(*p);
}

TEST_F(PoolTaskWorkers, ItemsOfAnotherTypeFailAndTheRestOfTheChunkRuns) {
  auto p = start(options(1), "pool_test.square_fn");
  ASSERT_TRUE(p) << describe(p.error());
  auto bad = p->map<int32_t>(std::vector<add>{{1, 2}, {3, 4}}, 2);
  ASSERT_EQ(bad.size(), 2u);
  for (auto& r : bad) {
    ASSERT_FALSE(r);
    EXPECT_TRUE(contains(describe(r.error()), "unexpected"))
      << describe(r.error());
  }
  auto after = p->map<int32_t>(std::vector<square>{{3}, {4}}, 2);
  ASSERT_TRUE(after[0] && after[1]);
  EXPECT_EQ(*after[0], 9);
  EXPECT_EQ(*after[1], 16);
  EXPECT_EQ(p->stats().workers_died, 0u);
  remember(*p);
}

TEST_F(PoolTaskWorkers, AKilledChunkRunsWhatItDidNotAnswerAgain) {
  auto p = start(options(1), "pool_test.nap_fn");
  ASSERT_TRUE(p) << describe(p.error());
  auto log = path("runs");
  killed_chunk k;
  k.run(*p, log, 300);
  remember(k.victim);
  for (size_t i = 0; i < k.results.size(); ++i) {
    ASSERT_TRUE(k.results[i]) << "item " << i << ": "
                              << describe(k.results[i].error());
    EXPECT_EQ(k.results[i]->value, static_cast<int32_t>(i));
  }
  EXPECT_NE(k.results[50]->pid, k.victim);
  // Items whose results had not left the child yet run again, once.
  auto runs = read_log(log);
  for (int32_t i = 0; i < 100; ++i)
    EXPECT_LE(count_value(runs, i), 2u) << "item " << i << ": "
                                        << describe_log(runs);
  EXPECT_EQ(count_value(runs, 50), 2u) << describe_log(runs);
  EXPECT_EQ(p->stats().workers_died, 1u);
  remember(*p);
}

TEST_F(PoolTaskWorkers, AtMostOnceAKilledChunkRunsNothingTwice) {
  auto opts = options(1);
  opts.guarantee = delivery::at_most_once;
  auto p = start(opts, "pool_test.nap_fn");
  ASSERT_TRUE(p) << describe(p.error());
  auto log = path("runs");
  killed_chunk k;
  k.run(*p, log, 20000);
  remember(k.victim);
  ASSERT_FALSE(k.results[50]);
  EXPECT_EQ(k.results[50].error(), errc::worker_died)
    << describe(k.results[50].error());
  auto runs = read_log(log);
  for (int32_t i = 0; i < 100; ++i) {
    EXPECT_LE(count_value(runs, i), 1u) << "item " << i << " ran twice";
    if (i > 50) {
      EXPECT_FALSE(k.results[static_cast<size_t>(i)]) << "item " << i;
    }
  }
  EXPECT_EQ(p->stats().redispatched, 0u);
  remember(*p);
}

TEST_F(PoolTaskWorkers, AnItemThatCrashesEveryRunIsQuarantinedAndTheOthersSucceed) {
  auto p = start(options(2), "pool_test.fault_fn");
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<run_fault> tasks;
  for (int32_t i = 0; i < 1000; ++i)
    tasks.push_back(run_fault{i == 13 ? pool_test::segfault
                                      : pool_test::no_fault,
                              i, "pool_test-note: the culprit"});
  auto rs = p->map<int32_t>(tasks, 100);
  auto err = expect_squares_but(rs, tasks.size(), 13);
  EXPECT_EQ(err, errc::task_quarantined) << describe(err);
  EXPECT_TRUE(contains(text_of(err), "killed by SIGSEGV")) << describe(err);
  auto st = p->stats();
  EXPECT_EQ(st.quarantined, 1u);
  EXPECT_EQ(st.succeeded, 999u);
  remember(*p);
}

TEST_F(PoolChunks, MaxTasksPerChildHoldsWithChunks) {
  auto opts = options(2);
  opts.max_tasks_per_child = 7;
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  std::vector<whoami> tasks;
  for (int32_t i = 0; i < 100; ++i)
    tasks.push_back(whoami{i});
  auto results = p->map<tagged>(tasks, 5);
  ASSERT_EQ(results.size(), tasks.size());
  for (auto& [pid, n] : tasks_per_worker(results)) {
    remember(pid);
    EXPECT_LE(n, 7) << "worker " << pid << " ran " << n << " tasks";
  }
  remember(*p);
}

class PoolProgress : public PoolFixture {};

/// Records every on_progress call and the threads that made it.
struct progress_log {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<pool_stats> calls;
  std::set<std::thread::id> threads;

  progress_fn callback() {
    return [this](const pool_stats& s) {
      {
        std::lock_guard<std::mutex> guard{mu};
        calls.push_back(s);
        threads.insert(std::this_thread::get_id());
      }
      cv.notify_all();
    };
  }

  /// Waits until a call reports `done` tasks done (false: `bound` passed).
  bool wait_done(uint64_t done, std::chrono::milliseconds bound) {
    std::unique_lock<std::mutex> lk{mu};
    return cv.wait_for(lk, bound, [&] {
      return !calls.empty() && calls.back().done() >= done;
    });
  }
};

/// Task i of the progress test: every tenth throws, the others succeed.
run_fault progress_task(int32_t i) {
  return run_fault{i % 10 == 0 ? pool_test::throw_exception
                               : pool_test::no_fault,
                   i, "pool_test: progress task " + std::to_string(i)};
}

} // namespace

TEST_F(PoolProgress, ReportsCountsThatNeverDecreaseAndEndWithTheTotals) {
  progress_log progress; // outlives the pool, whose thread calls it
  auto opts = options(2);
  opts.on_progress = progress.callback();
  opts.progress_interval = 1ms;
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  // Half through submit(): the pool reports them while it is still open.
  constexpr int32_t n = 100;
  std::vector<multiproc::task_future<int32_t>> fs;
  for (int32_t i = 0; i < n / 2; ++i)
    fs.push_back(p->submit<int32_t>(progress_task(i)));
  ASSERT_EQ(wait_all_until(fs, clock_type::now() + kBound), 0u);
  ASSERT_TRUE(progress.wait_done(n / 2, kBound))
    << "no progress call reported the first " << n / 2 << " tasks done";
  // The other half through map(); close() makes the last call.
  std::vector<run_fault> rest;
  for (int32_t i = n / 2; i < n; ++i)
    rest.push_back(progress_task(i));
  auto ys = p->map<int32_t>(rest);
  ASSERT_EQ(ys.size(), rest.size());
  ASSERT_FALSE(p->close(kBound));
  std::lock_guard<std::mutex> guard{progress.mu};
  auto& calls = progress.calls;
  std::printf("[   info   ] %zu progress calls\n", calls.size());
  ASSERT_GE(calls.size(), 2u);
  EXPECT_EQ(progress.threads.size(), 1u) << "calls from several threads";
  EXPECT_EQ(progress.threads.count(std::this_thread::get_id()), 0u)
    << "a call on the caller's thread";
  for (size_t i = 0; i < calls.size(); ++i) {
    SCOPED_TRACE("call " + std::to_string(i) + ": "
                 + describe_stats(calls[i]));
    auto& s = calls[i];
    EXPECT_LE(s.done(), s.submitted);
    EXPECT_LE(s.quarantined, s.failed);
    if (i == 0)
      continue;
    auto& before = calls[i - 1];
    EXPECT_NE(describe_stats(s), describe_stats(before))
      << "a call without a change";
    EXPECT_GE(s.submitted, before.submitted);
    EXPECT_GE(s.succeeded, before.succeeded);
    EXPECT_GE(s.failed, before.failed);
    EXPECT_GE(s.quarantined, before.quarantined);
    EXPECT_GE(s.redispatched, before.redispatched);
    EXPECT_GE(s.workers_started, before.workers_started);
    EXPECT_GE(s.workers_died, before.workers_died);
  }
  auto& last = calls.back();
  EXPECT_EQ(last.submitted, uint64_t{n});
  EXPECT_EQ(last.done(), uint64_t{n});
  EXPECT_EQ(last.pending(), 0u);
  EXPECT_EQ(last.failed, uint64_t{n / 10});
  EXPECT_EQ(last.succeeded, uint64_t{n - n / 10});
  EXPECT_EQ(describe_stats(last), describe_stats(p->stats()))
    << "the last call missed a change";
}

// -- metrics (metrics.hpp) -----------------------------------------------------------

class PoolMetrics : public PoolFixture {};

TEST_F(PoolMetrics, CountRestartsByCauseAndEveryTasksLatency) {
  auto opts = options(2);
  opts.window = 1;         // each death is charged to the one task it held
  opts.max_attempts = 2;   // a faulty task is quarantined after two deaths
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  auto squares = submit_squares(*p, 0, 10);
  auto crash = p->submit<caf::message>(
    run_fault{pool_test::segfault, 7, "pool_test-note: metrics crash"});
  auto exits = p->submit<caf::message>(
    run_fault{pool_test::exit_3, 8, "pool_test-note: metrics exit"});
  // Only the nap has a deadline: on a loaded machine (tsan, 2 cores) a
  // square once took longer than a pool-wide 1.5 s and was timed out too.
  task_options nap_deadline;
  nap_deadline.timeout = 1500ms;
  auto hang = p->submit<tagged>(nap{20000, 9, "", 0}, nap_deadline);
  expect_squares(squares, 0);
  ASSERT_TRUE(is_ready(crash, kBound) && is_ready(exits, kBound)
              && is_ready(hang, kBound))
    << "a faulty task hangs";
  EXPECT_EQ(crash.get().error(), errc::task_quarantined);
  EXPECT_EQ(exits.get().error(), errc::task_quarantined);
  EXPECT_EQ(hang.get().error(), errc::timeout);
  remember(*p);
  ASSERT_FALSE(p->close(kBound)) << "close() did not finish";

  auto s = p->stats();
  EXPECT_EQ(s.submitted, 13u);
  EXPECT_EQ(s.succeeded, 10u);
  EXPECT_EQ(s.failed, 3u);
  EXPECT_EQ(s.quarantined, 2u);
  EXPECT_EQ(s.timed_out, 1u);
  EXPECT_EQ(s.workers_killed, 2u);  // SIGSEGV, twice
  EXPECT_EQ(s.workers_exited, 2u);  // exit code 3, twice
  EXPECT_EQ(s.workers_overdue, 1u); // the nap past its deadline
  EXPECT_EQ(s.workers_died, 5u);
  EXPECT_EQ(s.in_flight, 0u);
  EXPECT_EQ(s.queued(), 0u);
  EXPECT_EQ(s.latency.count(), 13u);
  // The nap's 1.5 s deadline is the slowest task's latency.
  EXPECT_GE(s.latency.sum_seconds(), 1.5);
  EXPECT_GE(s.latency.quantile(1.0), 1.0);

  metrics_registry reg;
  reg.add("metrics", *p);
  auto snap = reg.collect();
  auto cause = [&](const char* c) {
    return snap.value("multiproc_pool_worker_restarts_total",
                      {{"pool", "metrics"}, {"cause", c}});
  };
  EXPECT_EQ(cause("signal"), 2.0);
  EXPECT_EQ(cause("exit"), 2.0);
  EXPECT_EQ(cause("deadline"), 1.0);
  EXPECT_EQ(cause("recycled"), 0.0);
  EXPECT_EQ(snap.value("multiproc_pool_tasks_retried_total"),
            static_cast<double>(s.redispatched));
  auto text = snap.to_prometheus();
  EXPECT_TRUE(contains(text, "# TYPE multiproc_pool_task_latency_seconds "
                             "histogram\n"))
    << text;
  EXPECT_TRUE(contains(text, "multiproc_pool_task_latency_seconds_count{pool="
                             "\"metrics\"} 13\n"))
    << text;
  EXPECT_TRUE(contains(text, "multiproc_pool_task_latency_seconds_bucket{pool="
                             "\"metrics\",le=\"+Inf\"} 13\n"))
    << text;
  EXPECT_TRUE(contains(text, "multiproc_pool_tasks_quarantined_total{pool="
                             "\"metrics\"} 2\n"))
    << text;
}

TEST_F(PoolMetrics, CountWorkersRecycledAfterMaxTasksPerChild) {
  auto opts = options(2);
  opts.window = 1;
  opts.max_tasks_per_child = 5;
  auto p = start(opts);
  ASSERT_TRUE(p) << describe(p.error());
  auto squares = submit_squares(*p, 0, 20);
  expect_squares(squares, 0);
  // 20 tasks at 5 per worker need 4 workers; the first ones retire as the
  // next take over (their exits arrive on the pool's own time).
  auto deadline = clock_type::now() + kBound;
  while (p->stats().workers_recycled < 2 && clock_type::now() < deadline)
    std::this_thread::sleep_for(10ms);
  remember(*p);
  auto s = p->stats();
  EXPECT_GE(s.workers_recycled, 2u);
  EXPECT_EQ(s.workers_died, 0u);
  EXPECT_EQ(s.latency.count(), 20u);
  ASSERT_FALSE(p->close(kBound)) << "close() did not finish";
}
