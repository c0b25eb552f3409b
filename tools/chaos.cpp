// multiproc chaos — a pool and a supervised queue pipeline under random
// SIGKILL and SIGSTOP of their workers, in rounds, with leak checks.
//
// Each round:
//   1. pool: start a pool (task_timeout 1 s, retry_timeouts, max_attempts
//      20), map --pool-tasks tasks that echo their index while a monkey, every
//      50-100 ms, SIGKILLs a random worker, freezes one (SIGSTOP) and thaws it
//      (SIGCONT) 20-400 ms later, or freezes one for good (the pool must find
//      it through task_timeout and replace it); close.
//   2. queue: a supervisor runs producer -> queue<uint32_t> -> consumers ->
//      result queue; the monkey SIGKILLs consumers (restarted; the queue
//      delivers what they held again) or freezes one for 10-200 ms (never for
//      good: the supervisor has no liveness check for a stopped child). The
//      producer is left alone (a restarted producer would put everything
//      again).
//   3. leaks: zombies and children of ours, open descriptors, memfd/shm
//      mappings and new /dev/shm entries, VmRSS.
// docs/reliability.md ("Chaos run") has the checks and their bounds.
//
// Metrics (the ../shared/peers line format; one value per round):
//   cpp_chaos_pool_lost                     count  tasks without their right
//                                                  result (quarantine and
//                                                  timeout excepted)
//   cpp_chaos_pool_duplicated               count  results in a slot not their own
//   cpp_chaos_queue_lost                    count  ids with no right result
//   cpp_chaos_queue_unexplained_duplicates  count  ids whose result came twice
//                                                  from a first delivery
//   cpp_chaos_zombies                       count  zombie descendants after the round
//   cpp_chaos_fd_growth                     count  open descriptors vs the start
//   cpp_chaos_shm_growth                    count  memfd/shm mappings and new
//                                                  /dev/shm entries vs the start
//   cpp_chaos_rss_growth_mib                MiB    VmRSS vs after the first round
#include "chaos.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench_report.hpp"
#include "multiproc/bootstrap.hpp"
#include "multiproc/fd.hpp"
#include "multiproc/pool.hpp"
#include "multiproc/queue.hpp"
#include "multiproc/supervisor.hpp"
#include "multiproc/worker.hpp"

namespace chaos {

// -- messages -----------------------------------------------------------------

/// A pool task (reply: pool_reply for the same index).
struct pool_task {
  int64_t index = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(index);
  }
};

/// The result of task `index`: value_of(index).
struct pool_reply {
  int64_t index = 0;
  uint64_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(index, value);
  }
};

/// A consumer's result for item `id`, with the delivery count it saw.
struct queue_result {
  uint32_t id = 0;
  uint32_t deliveries = 0;
  uint64_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id, deliveries, value);
  }
};

} // namespace chaos

MULTIPROC_MESSAGE(chaos::pool_task, "multiproc.chaos.pool_task")
MULTIPROC_MESSAGE(chaos::pool_reply, "multiproc.chaos.pool_reply")
MULTIPROC_MESSAGE(chaos::queue_result, "multiproc.chaos.queue_result")

namespace chaos {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

// -- the work -----------------------------------------------------------------

/// The value every result must carry for its index (splitmix64).
uint64_t value_of(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// Keeps the CPU busy for `d`, so that a round lasts long enough for the
/// monkey to strike while work is in flight.
void spin(std::chrono::microseconds d) {
  auto until = clock_type::now() + d;
  while (clock_type::now() < until) {
  }
}

constexpr auto pool_task_work = std::chrono::microseconds{20};
constexpr auto queue_item_work = std::chrono::microseconds{100};

pool_reply run_task(const pool_task& t) {
  spin(pool_task_work);
  return {t.index, value_of(static_cast<uint64_t>(t.index))};
}

/// Child: puts the ids 0..n-1 (args: n) into the work queue (fds[0]).
int produce(multiproc::child_context& ctx) {
  auto work = multiproc::queue<uint32_t>::attach(std::move(ctx.fds.at(0)));
  if (!work)
    return 2;
  auto n = static_cast<uint32_t>(std::stoul(ctx.args));
  for (uint32_t id = 0; id < n; ++id)
    if (work->put(id, 30s))
      return 3;
  return 0;
}

/// Child: takes ids (fds[0]) until the end of the stream and puts each one's
/// result, with the delivery count it saw, into the result queue (fds[1]).
int consume(multiproc::child_context& ctx) {
  auto work = multiproc::queue<uint32_t>::attach(std::move(ctx.fds.at(0)));
  auto results = multiproc::queue<queue_result>::attach(
    std::move(ctx.fds.at(1)));
  if (!work || !results)
    return 2;
  for (;;) {
    auto id = work->get(30s);
    if (!id)
      return id.error() == multiproc::errc::end_of_stream ? 0 : 3;
    spin(queue_item_work);
    queue_result r{*id, work->last_deliveries(), value_of(*id)};
    if (results->put(r, 30s))
      return 4;
  }
}

} // namespace chaos

MULTIPROC_TASK_WORKER("multiproc.chaos.pool_worker", chaos::run_task)
MULTIPROC_REGISTER_ENTRY("multiproc.chaos.produce", chaos::produce);
MULTIPROC_REGISTER_ENTRY("multiproc.chaos.consume", chaos::consume);

namespace {

using namespace std::chrono_literals;
using chaos::clock_type;
using ms = std::chrono::milliseconds;

// -- the RSS bound and sanitizer builds ----------------------------------------

// Under AddressSanitizer (or ThreadSanitizer) VmRSS measures the sanitizer's
// allocator, not ours: ASan holds freed memory in a quarantine
// (quarantine_size_mb, 256 MiB by default) and in per-thread caches, so RSS
// climbs for hundreds of MiB without a leak. The rss_growth check is then not
// applied (the figure is still printed); LeakSanitizer finds real leaks at
// exit instead. gcc defines __SANITIZE_*__; clang answers __has_feature.
#if defined(__SANITIZE_ADDRESS__)
#  define MULTIPROC_CHAOS_ASAN 1
#elif defined(__SANITIZE_THREAD__)
#  define MULTIPROC_CHAOS_TSAN 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define MULTIPROC_CHAOS_ASAN 1
#  elif __has_feature(thread_sanitizer)
#    define MULTIPROC_CHAOS_TSAN 1
#  endif
#endif

/// Why the rss_growth check is not applied in this build; empty: it is.
const char* rss_check_not_applied_why() {
#if defined(MULTIPROC_CHAOS_ASAN)
  return "ASan build; its quarantine keeps up to 256 MiB of freed memory "
         "(quarantine_size_mb) and its allocator caches more; LeakSanitizer "
         "checks leaks at exit";
#elif defined(MULTIPROC_CHAOS_TSAN)
  return "TSan build; its allocator keeps freed memory resident; a leak "
         "shows in the normal and ASan builds";
#else
  return "";
#endif
}

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// -- pidfds -------------------------------------------------------------------

// A pidfd names one process for good: a signal through it can never reach a
// process that reused the pid (pid_max is 32768 on small machines).
multiproc::unique_fd open_pidfd(pid_t pid) {
  return multiproc::unique_fd{static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))};
}

bool signal_pidfd(const multiproc::unique_fd& fd, int sig) {
  return ::syscall(SYS_pidfd_send_signal, fd.get(), sig, nullptr, 0) == 0;
}

// True once the process has ended (a pidfd polls readable then).
bool has_exited(const multiproc::unique_fd& fd) {
  pollfd p{fd.get(), POLLIN, 0};
  return ::poll(&p, 1, 0) > 0;
}

// -- the monkey ---------------------------------------------------------------

/// What a monkey does; one comment per field.
struct monkey_plan {
  /// Pause between two actions: uniform in [min_period, max_period].
  ms min_period{50};
  ms max_period{100};
  /// Weights of the actions: SIGKILL, SIGSTOP then SIGCONT after a pause,
  /// SIGSTOP for good.
  int kill = 1;
  int freeze_thaw = 1;
  int freeze_forever = 0;
  /// The pause of a freeze that thaws: uniform in [min_pause, max_pause].
  ms min_pause{10};
  ms max_pause{200};
  /// At most this many processes frozen at once (a freeze becomes a kill).
  size_t max_frozen = 1;
  /// Strikes only this long after the start (it still thaws afterwards), so
  /// that a phase ends on a loaded machine, where replacing a worker can
  /// take about as long as the pause between two strikes.
  ms strike_for{3000};
};

/// What a monkey did.
struct monkey_counts {
  size_t kills = 0;
  size_t freezes = 0;  ///< SIGSTOPs, of either kind
  size_t forever = 0;  ///< of those: never undone by the monkey
  size_t thawed = 0;   ///< SIGCONT after the pause, the process still alive
  /// Frozen processes that ended before the monkey thawed them: the pool
  /// found them through task_timeout and stopped them.
  size_t detected = 0;
  /// Frozen for good, still alive (idle) when the monkey stopped: thawed then.
  size_t idle_at_end = 0;
};

class chaos_monkey;

// Every running monkey, for the watchdog: it kills their frozen processes
// before it ends the run (a stopped process never sees its lifeline close).
std::mutex monkeys_mu;
std::set<chaos_monkey*> monkeys;

/// Strikes a random process of `victims()` now and then until stopped.
/// Thread-safe: stop() and kill_frozen() may be called from any thread.
class chaos_monkey {
public:
  using victims_fn = std::function<std::vector<pid_t>()>;

  chaos_monkey(victims_fn victims, monkey_plan plan, uint64_t seed)
    : victims_(std::move(victims)), plan_(plan), rng_(seed) {
    {
      std::lock_guard<std::mutex> guard{monkeys_mu};
      monkeys.insert(this);
    }
    thread_ = std::thread{[this] { run(); }};
  }

  ~chaos_monkey() {
    stop();
    std::lock_guard<std::mutex> guard{monkeys_mu};
    monkeys.erase(this);
  }

  chaos_monkey(const chaos_monkey&) = delete;
  chaos_monkey& operator=(const chaos_monkey&) = delete;

  /// Stops striking, thaws every process still frozen, returns the counts.
  /// Idempotent.
  monkey_counts stop() {
    {
      std::lock_guard<std::mutex> guard{mu_};
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable())
      thread_.join();
    std::lock_guard<std::mutex> guard{mu_};
    for (auto& f : frozen_) {
      if (has_exited(f.fd))
        ++counts_.detected;
      else if (signal_pidfd(f.fd, SIGCONT))
        ++(f.forever ? counts_.idle_at_end : counts_.thawed);
    }
    frozen_.clear();
    return counts_;
  }

  /// SIGKILLs every process this monkey holds frozen (the watchdog's last
  /// act).
  void kill_frozen() {
    std::lock_guard<std::mutex> guard{mu_};
    for (auto& f : frozen_)
      signal_pidfd(f.fd, SIGKILL);
  }

private:
  struct frozen_rec {
    multiproc::unique_fd fd;
    pid_t pid = 0;
    clock_type::time_point thaw_at;
    bool forever = false;
  };

  template <class Rep, class Period>
  auto uniform(std::chrono::duration<Rep, Period> lo,
               std::chrono::duration<Rep, Period> hi) {
    std::uniform_int_distribution<Rep> pick{lo.count(), hi.count()};
    return std::chrono::duration<Rep, Period>{pick(rng_)};
  }

  void run() {
    auto last = clock_type::now() + plan_.strike_for;
    auto next = clock_type::now() + uniform(plan_.min_period, plan_.max_period);
    std::unique_lock<std::mutex> lk{mu_};
    while (!stop_) {
      auto wake = next;
      for (auto& f : frozen_)
        wake = std::min(wake, f.thaw_at);
      if (cv_.wait_until(lk, wake, [this] { return stop_; }))
        break;
      settle(clock_type::now());
      if (next >= last) {
        next = clock_type::now() + std::chrono::hours{24}; // no more strikes
        continue;
      }
      if (clock_type::now() < next)
        continue;
      lk.unlock();
      strike();
      lk.lock();
      next = clock_type::now() + uniform(plan_.min_period, plan_.max_period);
    }
  }

  // Thaws the frozen processes whose pause is over; forgets those that
  // ended. Runs under mu_.
  void settle(clock_type::time_point now) {
    for (auto i = frozen_.begin(); i != frozen_.end();) {
      if (has_exited(i->fd)) {
        ++counts_.detected;
        i = frozen_.erase(i);
      } else if (now >= i->thaw_at) {
        if (signal_pidfd(i->fd, SIGCONT))
          ++counts_.thawed;
        i = frozen_.erase(i);
      } else {
        ++i;
      }
    }
  }

  static bool contains(const std::vector<pid_t>& xs, pid_t x) {
    return std::find(xs.begin(), xs.end(), x) != xs.end();
  }

  // One action on a random victim that is not frozen. Only this thread
  // changes frozen_, so reading it without the lock is safe here.
  void strike() {
    auto victims = victims_();
    victims.erase(std::remove_if(victims.begin(), victims.end(),
                                 [this](pid_t pid) {
                                   if (pid <= 0)
                                     return true;
                                   for (auto& f : frozen_)
                                     if (f.pid == pid)
                                       return true;
                                   return false;
                                 }),
                  victims.end());
    if (victims.empty())
      return;
    auto pid = victims[std::uniform_int_distribution<size_t>{
      0, victims.size() - 1}(rng_)];
    auto fd = open_pidfd(pid);
    // Still a victim once the pidfd pins it: not a recycled pid.
    if (!fd || !contains(victims_(), pid))
      return;
    std::discrete_distribution<int> what{
      {double(plan_.kill), double(plan_.freeze_thaw),
       double(plan_.freeze_forever)}};
    int action = what(rng_);
    if (action != 0 && frozen_.size() >= plan_.max_frozen)
      action = 0;
    if (action == 0) {
      if (signal_pidfd(fd, SIGKILL)) {
        std::lock_guard<std::mutex> guard{mu_};
        ++counts_.kills;
      }
      return;
    }
    frozen_rec rec;
    rec.pid = pid;
    rec.forever = action == 2;
    rec.thaw_at = rec.forever
                    ? clock_type::now() + std::chrono::hours{24}
                    : clock_type::now() + uniform(plan_.min_pause,
                                                  plan_.max_pause);
    if (!signal_pidfd(fd, SIGSTOP))
      return;
    rec.fd = std::move(fd);
    std::lock_guard<std::mutex> guard{mu_};
    ++counts_.freezes;
    if (rec.forever)
      ++counts_.forever;
    frozen_.push_back(std::move(rec));
  }

  victims_fn victims_;
  monkey_plan plan_;
  std::mt19937_64 rng_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::vector<frozen_rec> frozen_;
  monkey_counts counts_;
  std::thread thread_; // last: starts after the members it uses
};

monkey_counts& operator+=(monkey_counts& x, const monkey_counts& y) {
  x.kills += y.kills;
  x.freezes += y.freezes;
  x.forever += y.forever;
  x.thawed += y.thawed;
  x.detected += y.detected;
  x.idle_at_end += y.idle_at_end;
  return x;
}

// -- the watchdog -------------------------------------------------------------

// What the current round is doing, for the watchdog's message.
std::atomic<const char*> phase{"starting"};

/// Ends the process (exit code 3) if a round runs past `limit`: it names the
/// round and its phase and SIGKILLs the frozen processes first (a stopped
/// process would not notice that its parent is gone).
class watchdog {
public:
  watchdog(size_t round, std::chrono::seconds limit)
    : thread_([this, round, limit] {
        std::unique_lock<std::mutex> guard{mu_};
        if (cv_.wait_for(guard, limit, [this] { return done_; }))
          return;
        std::printf("chaos: round %zu hung in the %s phase (more than %lld "
                    "s); giving up: FAILED\n",
                    round, phase.load(), static_cast<long long>(limit.count()));
        std::fflush(stdout);
        std::fprintf(stderr, "multiproc chaos: round %zu hung in the %s "
                             "phase\n", round, phase.load());
        {
          std::lock_guard<std::mutex> g{monkeys_mu};
          for (auto* m : monkeys)
            m->kill_frozen();
        }
        std::_Exit(3);
      }) {
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
  std::thread thread_; // last: starts after the members it uses
};

// -- what the parent holds ----------------------------------------------------

struct proc_entry {
  pid_t pid = 0;
  pid_t ppid = 0;
  char state = '?';
};

std::vector<proc_entry> all_processes() {
  std::vector<proc_entry> out;
  DIR* dir = ::opendir("/proc");
  if (dir == nullptr)
    return out;
  while (auto* e = ::readdir(dir)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9')
      continue;
    std::ifstream in{std::string{"/proc/"} + e->d_name + "/stat"};
    std::string line;
    if (!std::getline(in, line))
      continue; // it ended meanwhile
    auto close = line.rfind(')');
    if (close == std::string::npos)
      continue;
    proc_entry p;
    p.pid = static_cast<pid_t>(std::atoi(e->d_name));
    int ppid = 0;
    if (std::sscanf(line.c_str() + close + 1, " %c %d", &p.state, &ppid) != 2)
      continue;
    p.ppid = static_cast<pid_t>(ppid);
    out.push_back(p);
  }
  ::closedir(dir);
  return out;
}

/// Every process below this one (children, theirs, ...).
std::vector<proc_entry> descendants() {
  auto all = all_processes();
  std::vector<proc_entry> out;
  std::set<pid_t> parents{::getpid()};
  for (bool grew = true; grew;) {
    grew = false;
    for (auto& p : all)
      if (parents.count(p.ppid) != 0 && parents.insert(p.pid).second) {
        out.push_back(p);
        grew = true;
      }
  }
  return out;
}

size_t open_fds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr)
    return 0;
  size_t n = 0;
  while (auto* e = ::readdir(dir))
    if (e->d_name[0] != '.')
      ++n;
  ::closedir(dir);
  return n - 1; // the directory's own descriptor
}

/// Lines of /proc/self/maps that map shared memory: memfds, /dev/shm, SysV.
size_t shm_mappings() {
  std::ifstream in{"/proc/self/maps"};
  size_t n = 0;
  for (std::string line; std::getline(in, line);)
    if (line.find("/memfd:") != std::string::npos
        || line.find("/dev/shm/") != std::string::npos
        || line.find("/SYSV") != std::string::npos)
      ++n;
  return n;
}

std::set<std::string> dev_shm_entries() {
  std::set<std::string> out;
  if (DIR* dir = ::opendir("/dev/shm")) {
    while (auto* e = ::readdir(dir))
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
        out.insert(e->d_name);
    ::closedir(dir);
  }
  return out;
}

double rss_mib() {
  std::ifstream in{"/proc/self/status"};
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0)
      return std::atof(line.c_str() + 6) / 1024.0;
  return 0;
}

/// A snapshot of what the parent holds.
struct holdings {
  size_t zombies = 0;
  size_t children_left = 0; ///< descendants that were not there at the start
  size_t fds = 0;
  size_t shm_maps = 0;
  size_t dev_shm_new = 0; ///< /dev/shm entries that were not there at the start
  double rss = 0;
};

struct baseline {
  std::set<pid_t> processes;
  std::set<std::string> dev_shm;
};

holdings measure(const baseline& base) {
  holdings h;
  for (auto& p : descendants()) {
    if (p.state == 'Z')
      ++h.zombies;
    if (base.processes.count(p.pid) == 0)
      ++h.children_left;
  }
  h.fds = open_fds();
  h.shm_maps = shm_mappings();
  for (auto& name : dev_shm_entries())
    if (base.dev_shm.count(name) == 0)
      ++h.dev_shm_new;
  h.rss = rss_mib();
  return h;
}

// -- one round ----------------------------------------------------------------

struct pool_figures {
  size_t tasks = 0;
  size_t ok = 0;
  size_t lost = 0;        ///< no right result, and not quarantined/timed out
  size_t duplicated = 0;  ///< a result in a slot not its own
  size_t quarantined = 0;
  size_t timed_out = 0;
  double secs = 0;
  monkey_counts monkey;
  multiproc::pool_stats stats;
  std::string first_problem;
};

struct queue_figures {
  size_t items = 0;
  size_t received = 0;
  size_t lost = 0;
  size_t bad = 0; ///< results with an unknown id, a wrong value, 0 deliveries
  size_t unexplained = 0;
  size_t redelivered_dups = 0;
  double secs = 0;
  monkey_counts monkey;
  uint64_t restarts = 0;
  uint64_t redelivered = 0;
  bool complete = false;
  std::string first_problem;
};

struct round_figures {
  pool_figures pool;
  queue_figures queue;
  holdings after;
  std::vector<std::string> errors; ///< what kept the round from running
};

void note_first(std::string& first, const std::string& what) {
  if (first.empty())
    first = what;
}

void run_pool(caf::actor_system& sys, const chaos_options& opts, uint64_t seed,
              round_figures& out) {
  auto& f = out.pool;
  multiproc::pool_options po;
  po.workers = opts.workers;
  po.method = opts.method;
  po.name = "chaos-pool";
  po.max_attempts = 20;
  po.task_timeout = 1000ms;
  po.retry_timeouts = true;
  phase = "pool start";
  auto p = multiproc::pool::start(sys, "multiproc.chaos.pool_worker", po);
  if (!p) {
    out.errors.push_back("pool: cannot start: "
                         + multiproc::describe(p.error()));
    return;
  }
  std::vector<chaos::pool_task> tasks(opts.pool_tasks);
  for (size_t i = 0; i < tasks.size(); ++i)
    tasks[i].index = static_cast<int64_t>(i);
  f.tasks = tasks.size();
  monkey_plan plan;
  plan.freeze_forever = 1;
  plan.min_pause = 20ms;
  plan.max_pause = 400ms; // well below task_timeout: a thaw is no timeout
  plan.max_frozen = std::max<size_t>(1, opts.workers / 2);
  auto t0 = clock_type::now();
  std::vector<caf::expected<chaos::pool_reply>> results;
  {
    phase = "pool map";
    chaos_monkey monkey{[&p] {
                          std::vector<pid_t> pids;
                          for (auto& w : p->workers())
                            pids.push_back(w.pid);
                          return pids;
                        },
                        plan, seed};
    results = p->map<chaos::pool_reply>(tasks);
    f.monkey = monkey.stop();
  }
  f.secs = seconds_since(t0);
  if (results.size() != tasks.size()) {
    note_first(f.first_problem, std::to_string(results.size())
                                  + " results for " + std::to_string(f.tasks)
                                  + " tasks");
    f.lost += tasks.size() > results.size() ? tasks.size() - results.size() : 0;
  }
  for (size_t i = 0; i < results.size(); ++i) {
    auto& r = results[i];
    if (!r) {
      auto code = multiproc::code_of(r.error());
      if (code == multiproc::errc::task_quarantined) {
        ++f.quarantined;
      } else if (code == multiproc::errc::timeout) {
        ++f.timed_out;
      } else {
        ++f.lost;
        note_first(f.first_problem, "task " + std::to_string(i) + ": "
                                      + multiproc::describe(r.error()));
      }
      continue;
    }
    if (r->index != static_cast<int64_t>(i)) {
      ++f.duplicated;
      ++f.lost;
      note_first(f.first_problem, "slot " + std::to_string(i)
                                    + " holds the result of task "
                                    + std::to_string(r->index));
    } else if (r->value != chaos::value_of(static_cast<uint64_t>(i))) {
      ++f.lost;
      note_first(f.first_problem, "task " + std::to_string(i)
                                    + " returned a wrong value");
    } else {
      ++f.ok;
    }
  }
  phase = "pool close";
  if (auto err = p->close(30s))
    out.errors.push_back("pool: close: " + multiproc::describe(err));
  f.stats = p->stats();
}

void run_queue(caf::actor_system& sys, const chaos_options& opts,
               uint64_t seed, round_figures& out) {
  auto& f = out.queue;
  phase = "queue start";
  auto work = multiproc::queue<uint32_t>::create();
  auto results = multiproc::queue<chaos::queue_result>::create();
  if (!work || !results) {
    out.errors.push_back(
      "queue: cannot create the queues: "
      + multiproc::describe(work ? results.error() : work.error()));
    return;
  }
  auto n = static_cast<uint32_t>(opts.queue_items);
  f.items = n;
  multiproc::supervisor_spec spec;
  spec.strategy = multiproc::restart_strategy::one_for_one;
  spec.max_restarts = 100000; // the monkey's kills are not a crash loop
  spec.within = 1000ms;
  spec.queue = work->fd();
  spec.results = results->fd();
  auto producer = multiproc::child_spec::process(
    "producer", "multiproc.chaos.produce", std::to_string(n),
    multiproc::child_role::producer);
  producer.restart = multiproc::restart_type::transient;
  producer.method = opts.method;
  spec.children.push_back(producer);
  size_t consumers = std::max<size_t>(2, opts.workers / 2);
  for (size_t i = 1; i <= consumers; ++i) {
    auto c = multiproc::child_spec::process(
      "consumer-" + std::to_string(i), "multiproc.chaos.consume", "",
      multiproc::child_role::consumer);
    c.restart = multiproc::restart_type::transient;
    c.method = opts.method;
    spec.children.push_back(c);
  }
  auto sup = multiproc::supervisor::start(sys, std::move(spec));
  if (!sup) {
    out.errors.push_back("queue: cannot start the supervisor: "
                         + multiproc::describe(sup.error()));
    return;
  }
  monkey_plan plan;
  plan.min_pause = 10ms;
  plan.max_pause = 200ms;
  plan.max_frozen = 1;
  std::vector<uint32_t> copies(n, 0);
  std::vector<uint32_t> firsts(n, 0);
  auto t0 = clock_type::now();
  {
    phase = "queue stream";
    chaos_monkey monkey{[&sup] {
                          std::vector<pid_t> pids;
                          for (auto& c : sup->report().children)
                            if (c.role == multiproc::child_role::consumer)
                              pids.push_back(c.pid);
                          return pids;
                        },
                        plan, seed};
    for (;;) {
      auto r = results->get(30s);
      if (!r) {
        if (r.error() != multiproc::errc::end_of_stream)
          out.errors.push_back("queue: results: "
                               + multiproc::describe(r.error()));
        break;
      }
      ++f.received;
      if (r->id >= n || r->deliveries == 0 || r->value != chaos::value_of(r->id)) {
        ++f.bad;
        note_first(f.first_problem,
                   "a result for id " + std::to_string(r->id) + " (delivery "
                     + std::to_string(r->deliveries) + ") is wrong");
        continue;
      }
      ++copies[r->id];
      if (r->deliveries == 1)
        ++firsts[r->id];
    }
    f.monkey = monkey.stop();
  }
  f.secs = seconds_since(t0);
  phase = "supervisor wait";
  auto report = sup->wait(30s);
  if (!report) {
    out.errors.push_back("queue: supervisor: "
                         + multiproc::describe(report.error()));
  } else {
    f.restarts = report->restarts;
    f.redelivered = report->redelivered;
    f.complete = report->stream_complete;
  }
  phase = "supervisor stop";
  [[maybe_unused]] auto final_report = sup->stop();
  for (uint32_t id = 0; id < n; ++id) {
    if (copies[id] == 0) {
      ++f.lost;
      note_first(f.first_problem, "no result for id " + std::to_string(id));
      continue;
    }
    auto extra_firsts = firsts[id] > 1 ? firsts[id] - 1 : 0;
    if (extra_firsts > 0)
      note_first(f.first_problem,
                 "id " + std::to_string(id) + " came "
                   + std::to_string(firsts[id])
                   + " times from a first delivery");
    f.unexplained += extra_firsts;
    f.redelivered_dups += copies[id] - 1 - extra_firsts;
  }
}

// -- the report ---------------------------------------------------------------

std::string plural(size_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

std::string freezes_text(const monkey_counts& m, bool pool) {
  auto s = plural(m.freezes, "freeze", "freezes");
  if (!pool)
    return s + " (" + std::to_string(m.thawed) + " thawed)";
  return s + " (" + std::to_string(m.thawed) + " thawed, "
         + std::to_string(m.detected) + " detected by task_timeout, "
         + std::to_string(m.idle_at_end) + " idle at the end)";
}

std::string round_line(size_t i, const round_figures& r) {
  auto& p = r.pool;
  auto& q = r.queue;
  auto& h = r.after;
  return "round " + std::to_string(i) + ": pool " + std::to_string(p.tasks)
         + " tasks in " + fmt::format("{:.2f}", p.secs) + " s: "
         + std::to_string(p.lost) + " lost, " + std::to_string(p.duplicated)
         + " duplicated, " + std::to_string(p.quarantined) + " quarantined, "
         + std::to_string(p.timed_out) + " timed out; "
         + plural(p.monkey.kills, "kill", "kills") + ", "
         + freezes_text(p.monkey, true) + ", "
         + std::to_string(p.stats.workers_died) + " workers replaced | queue "
         + std::to_string(q.items) + " items in " + fmt::format("{:.2f}", q.secs)
         + " s: " + std::to_string(q.lost) + " lost, "
         + std::to_string(q.unexplained) + " unexplained duplicates, "
         + std::to_string(q.redelivered_dups) + " redelivered duplicates; "
         + plural(q.monkey.kills, "kill", "kills") + ", "
         + freezes_text(q.monkey, false) + ", "
         + plural(q.restarts, "restart", "restarts") + " | zombies "
         + std::to_string(h.zombies) + ", children left "
         + std::to_string(h.children_left) + ", fds " + std::to_string(h.fds)
         + ", shm " + std::to_string(h.shm_maps + h.dev_shm_new) + ", rss "
         + fmt::format("{:.1f}", h.rss) + " MiB";
}

nlohmann::json to_json(const monkey_counts& m) {
  return {{"kills", m.kills},       {"freezes", m.freezes},
          {"forever", m.forever},   {"thawed", m.thawed},
          {"detected", m.detected}, {"idle_at_end", m.idle_at_end}};
}

nlohmann::json to_json(const round_figures& r) {
  auto& p = r.pool;
  auto& q = r.queue;
  auto& h = r.after;
  return {
    {"pool",
     {{"tasks", p.tasks},
      {"ok", p.ok},
      {"lost", p.lost},
      {"duplicated", p.duplicated},
      {"quarantined", p.quarantined},
      {"timed_out", p.timed_out},
      {"seconds", p.secs},
      {"monkey", to_json(p.monkey)},
      {"workers_died", p.stats.workers_died},
      {"redispatched", p.stats.redispatched},
      {"first_problem", p.first_problem}}},
    {"queue",
     {{"items", q.items},
      {"received", q.received},
      {"lost", q.lost},
      {"bad", q.bad},
      {"unexplained_duplicates", q.unexplained},
      {"redelivered_duplicates", q.redelivered_dups},
      {"seconds", q.secs},
      {"monkey", to_json(q.monkey)},
      {"restarts", q.restarts},
      {"redelivered", q.redelivered},
      {"stream_complete", q.complete},
      {"first_problem", q.first_problem}}},
    {"after",
     {{"zombies", h.zombies},
      {"children_left", h.children_left},
      {"fds", h.fds},
      {"shm_mappings", h.shm_maps},
      {"dev_shm_new", h.dev_shm_new},
      {"rss_mib", h.rss}}},
    {"errors", r.errors},
  };
}

} // namespace

int run_chaos(const chaos_options& opts) {
  constexpr double rss_bound_mib = 16;
  constexpr auto round_limit = std::chrono::seconds{90};
  if (opts.method == multiproc::start_method::fork) {
    std::fprintf(stderr,
                 "multiproc chaos: --method fork is not possible here: fork "
                 "needs a single-threaded parent, and the run has CAF's and "
                 "the monkey's threads; use forkserver or spawn\n");
    return 2;
  }
  auto method = opts.method.value_or(multiproc::default_start_method());
  chaos_options run = opts;
  run.method = method;
  uint64_t seed = opts.seed ? *opts.seed
                            : (uint64_t{std::random_device{}()} << 32)
                                ^ std::random_device{}();
  auto say = [&](const std::string& line) {
    if (!opts.json) {
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    }
  };
  say("chaos: seed " + std::to_string(seed) + ", method "
      + multiproc::to_string(method) + ", " + std::to_string(opts.workers)
      + " pool workers, " + std::to_string(std::max<size_t>(2, opts.workers / 2))
      + " consumers, " + fmt::format("{:.0f}", opts.seconds) + " s; pool "
      + std::to_string(opts.pool_tasks)
      + " tasks a round (task_timeout 1000 ms, retry_timeouts, max_attempts "
        "20); queue "
      + std::to_string(opts.queue_items) + " items a round");

  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  baseline base;
  for (auto& p : descendants())
    base.processes.insert(p.pid); // the fork server, if running
  base.dev_shm = dev_shm_entries();
  auto start = measure(base);
  auto t0 = clock_type::now();
  std::vector<round_figures> rounds;
  std::mt19937_64 seeds{seed};
  do {
    round_figures r;
    {
      watchdog dog{rounds.size() + 1, round_limit};
      run_pool(sys, run, seeds(), r);
      run_queue(sys, run, seeds(), r);
      phase = "leak check";
      r.after = measure(base);
    }
    rounds.push_back(std::move(r));
    say(round_line(rounds.size(), rounds.back()));
    for (auto& e : rounds.back().errors)
      say("  error: " + e);
  } while (seconds_since(t0) < opts.seconds);
  auto secs = seconds_since(t0);

  // Totals and checks.
  pool_figures pool;
  queue_figures queue;
  size_t zombies = 0, children_left = 0, errors = 0;
  for (auto& r : rounds) {
    pool.tasks += r.pool.tasks;
    pool.lost += r.pool.lost;
    pool.duplicated += r.pool.duplicated;
    pool.quarantined += r.pool.quarantined;
    pool.timed_out += r.pool.timed_out;
    pool.monkey += r.pool.monkey;
    note_first(pool.first_problem, r.pool.first_problem);
    queue.items += r.queue.items;
    queue.lost += r.queue.lost;
    queue.bad += r.queue.bad;
    queue.unexplained += r.queue.unexplained;
    queue.redelivered_dups += r.queue.redelivered_dups;
    queue.monkey += r.queue.monkey;
    queue.restarts += r.queue.restarts;
    note_first(queue.first_problem, r.queue.first_problem);
    zombies = std::max(zombies, r.after.zombies);
    children_left = std::max(children_left, r.after.children_left);
    errors += r.errors.size();
  }
  bool complete = std::all_of(rounds.begin(), rounds.end(),
                              [](auto& r) { return r.queue.complete; });
  auto& first = rounds.front().after;
  auto& last = rounds.back().after;
  auto shm_start = start.shm_maps + start.dev_shm_new;
  auto shm_end = last.shm_maps + last.dev_shm_new;
  double rss_growth = last.rss - first.rss;

  std::vector<std::pair<std::string, bool>> checks;
  std::vector<std::string> failed;
  auto check = [&](const std::string& name, bool ok, const std::string& why) {
    checks.emplace_back(name, ok);
    if (!ok)
      failed.push_back(name + ": " + why);
  };
  check("pool_lost", pool.lost == 0,
        std::to_string(pool.lost) + " tasks lost (first: "
          + pool.first_problem + ")");
  check("pool_duplicated", pool.duplicated == 0,
        std::to_string(pool.duplicated) + " results in a slot not their own");
  check("queue_lost", queue.lost == 0,
        std::to_string(queue.lost) + " ids without a right result (first: "
          + queue.first_problem + ")");
  check("queue_bad", queue.bad == 0,
        std::to_string(queue.bad) + " results with an unknown id, a wrong "
                                    "value or no delivery count");
  check("queue_unexplained_duplicates", queue.unexplained == 0,
        std::to_string(queue.unexplained) + " results repeated from a first "
                                            "delivery (first: "
          + queue.first_problem + ")");
  check("queue_stream_complete", complete,
        "a round's pipeline did not complete");
  check("round_errors", errors == 0,
        std::to_string(errors) + " errors kept rounds from running (see the "
                                 "round lines)");
  check("zombies", zombies == 0,
        std::to_string(zombies) + " zombies after a round");
  check("children_left", children_left == 0,
        std::to_string(children_left) + " child processes left after a round");
  check("fd_growth", last.fds <= start.fds,
        "open descriptors " + std::to_string(start.fds) + " -> "
          + std::to_string(last.fds));
  check("shm_growth", shm_end <= shm_start,
        "shared memory " + std::to_string(shm_start) + " -> "
          + std::to_string(shm_end) + " (memfd/shm mappings "
          + std::to_string(last.shm_maps) + ", new /dev/shm entries "
          + std::to_string(last.dev_shm_new) + ")");
  std::string rss_not_applied = rss_check_not_applied_why();
  if (rss_not_applied.empty())
    check("rss_growth", rss_growth <= rss_bound_mib,
          "VmRSS grew by " + fmt::format("{:.1f}", rss_growth) + " MiB after the first "
            "round (bound " + fmt::format("{:.0f}", rss_bound_mib) + " MiB)");
  check("chaos_happened",
        pool.monkey.kills > 0 && pool.monkey.freezes > 0
          && queue.monkey.kills > 0 && queue.monkey.freezes > 0,
        "the monkey did not both kill and freeze in the pool and the queue "
        "(a longer run is needed)");
  bool ok = failed.empty();

  // Per-round figures in the peers' line format.
  std::vector<std::tuple<std::string, std::string, std::vector<double>, bool>>
    metrics;
  auto per_round = [&](const char* name, const char* unit, bool integer,
                       auto value) {
    std::vector<double> v;
    for (auto& r : rounds)
      v.push_back(static_cast<double>(value(r)));
    metrics.emplace_back(name, unit, std::move(v), integer);
  };
  per_round("cpp_chaos_pool_lost", "count", true,
            [](auto& r) { return r.pool.lost; });
  per_round("cpp_chaos_pool_duplicated", "count", true,
            [](auto& r) { return r.pool.duplicated; });
  per_round("cpp_chaos_queue_lost", "count", true,
            [](auto& r) { return r.queue.lost; });
  per_round("cpp_chaos_queue_unexplained_duplicates", "count", true,
            [](auto& r) { return r.queue.unexplained; });
  per_round("cpp_chaos_zombies", "count", true,
            [](auto& r) { return r.after.zombies; });
  per_round("cpp_chaos_fd_growth", "count", true, [&](auto& r) {
    return static_cast<double>(r.after.fds) - static_cast<double>(start.fds);
  });
  per_round("cpp_chaos_shm_growth", "count", true, [&](auto& r) {
    return static_cast<double>(r.after.shm_maps + r.after.dev_shm_new)
           - static_cast<double>(shm_start);
  });
  per_round("cpp_chaos_rss_growth_mib", "MiB", false,
            [&](auto& r) { return r.after.rss - first.rss; });

  std::string summary
    = "chaos: " + std::to_string(rounds.size()) + " rounds in "
      + fmt::format("{:.1f}", secs) + " s: pool " + std::to_string(pool.tasks)
      + " tasks, " + std::to_string(pool.lost) + " lost, "
      + std::to_string(pool.duplicated) + " duplicated, "
      + std::to_string(pool.quarantined) + " quarantined, "
      + std::to_string(pool.timed_out) + " timed out, "
      + plural(pool.monkey.kills, "kill", "kills") + ", "
      + freezes_text(pool.monkey, true) + "; queue "
      + std::to_string(queue.items) + " items, " + std::to_string(queue.lost)
      + " lost, " + std::to_string(queue.unexplained)
      + " unexplained duplicates, " + std::to_string(queue.redelivered_dups)
      + " redelivered duplicates, "
      + plural(queue.monkey.kills, "kill", "kills") + ", "
      + freezes_text(queue.monkey, false) + "; zombies "
      + std::to_string(zombies) + ", children left "
      + std::to_string(children_left) + ", fds " + std::to_string(start.fds)
      + " -> " + std::to_string(last.fds) + ", shm "
      + std::to_string(shm_start) + " -> " + std::to_string(shm_end)
      + ", rss " + fmt::format("{:.1f}", first.rss) + " -> " + fmt::format("{:.1f}", last.rss)
      + " MiB" + (rss_not_applied.empty() ? "" : " (not checked)") + ": "
      + (ok ? "OK" : "FAILED");
  std::string rss_note;
  if (!rss_not_applied.empty())
    rss_note = "chaos: rss check not applied: " + rss_not_applied
               + " (VmRSS grew by " + fmt::format("{:.1f}", rss_growth)
               + " MiB after the first round; bound "
               + fmt::format("{:.0f}", rss_bound_mib) + " MiB in normal builds)";

  if (opts.json) {
    nlohmann::json out;
    out["seed"] = seed;
    out["method"] = multiproc::to_string(method);
    out["workers"] = opts.workers;
    out["seconds"] = secs;
    out["rss_bound_mib"] = rss_bound_mib;
    out["rss_growth_mib"] = rss_growth;
    if (!rss_not_applied.empty())
      out["rss_check_not_applied"] = rss_not_applied;
    out["start"] = {{"fds", start.fds},
                    {"shm_mappings", start.shm_maps},
                    {"rss_mib", start.rss}};
    for (auto& r : rounds)
      out["rounds"].push_back(to_json(r));
    for (auto& [name, passed] : checks)
      out["checks"][name] = passed;
    out["failed"] = failed;
    for (auto& [name, unit, values, integer] : metrics) {
      auto [lo, hi] = std::minmax_element(values.begin(), values.end());
      out["metrics"][name] = {{"median", bench_report::median(values)},
                              {"min", *lo},
                              {"max", *hi},
                              {"n", values.size()},
                              {"unit", unit}};
    }
    out["summary"] = summary;
    out["ok"] = ok;
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    bench_report::reporter report{false};
    for (auto& [name, unit, values, integer] : metrics)
      report.add(name, unit, values, integer);
    if (!rss_note.empty())
      std::printf("%s\n", rss_note.c_str());
    for (auto& why : failed)
      std::printf("chaos: FAILED check %s\n", why.c_str());
    std::printf("%s\n", summary.c_str());
  }
  std::fflush(stdout);
  return ok ? 0 : 1;
}
