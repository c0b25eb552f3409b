// A process pool that survives its workers' deaths: 1000 tasks on 4 workers,
// at_least_once delivery. Task 13 crashes its worker (SIGSEGV) on every
// attempt and ends quarantined after 3; tasks 100..109 kill their worker
// (SIGKILL) on their first attempt only and succeed when run again. Every
// other task succeeds, and no result is lost. Python's Pool would wait
// forever for the result of a killed worker's task.
//
// A worker cannot remember across processes that a task ran before, so the
// parent makes a temporary directory and passes it in each task: a task of
// 100..109 kills its worker only if its marker file did not exist yet.

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <cereal/types/string.hpp>

#include "multiproc/bootstrap.hpp"
#include "multiproc/pool.hpp"

/// The task: square `value`; `marker_dir` holds the markers of tasks that
/// killed their worker once already.
struct job {
  int32_t value = 0;
  std::string marker_dir;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value, marker_dir);
  }
};

MULTIPROC_MESSAGE(job, "examples.crash_tolerant_pool.job")

namespace {

constexpr int32_t n_tasks = 1000;
constexpr int32_t poison = 13;        // SIGSEGV on every attempt
constexpr int32_t first_killer = 100; // 100..109: SIGKILL on the first attempt
constexpr int32_t last_killer = 109;

bool kills_once(int32_t value) {
  return value >= first_killer && value <= last_killer;
}

std::string marker_of(const std::string& dir, int32_t value) {
  return dir + "/task-" + std::to_string(value);
}

int32_t run(const job& x) {
  if (x.value == poison) {
    rlimit no_core{0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);
    std::signal(SIGSEGV, SIG_DFL);
    std::raise(SIGSEGV);
  }
  if (kills_once(x.value)) {
    auto path = marker_of(x.marker_dir, x.value);
    int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600);
    if (fd >= 0) { // first attempt: leave the marker, then die
      ::close(fd);
      std::raise(SIGKILL);
    }
    if (errno != EEXIST) // neither first nor later attempt: say so
      throw std::runtime_error("cannot create " + path + ": "
                               + std::strerror(errno));
  }
  return x.value * x.value;
}

} // namespace

caf::behavior squarer(caf::event_based_actor*) {
  return {
    [](const job& x) { return run(x); },
  };
}

MULTIPROC_WORKER("crash_tolerant_pool.squarer", squarer)

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv); // in a child, this runs the worker
  namespace fs = std::filesystem;
  auto pattern = (fs::temp_directory_path() / "multiproc-crash-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::cerr << "cannot create a temporary directory: " << std::strerror(errno)
              << '\n';
    return 1;
  }
  const std::string marker_dir = pattern;
  int rc = 1;
  {
    caf::actor_system_config cfg;
    caf::actor_system sys{cfg};
    multiproc::pool_options opts;
    opts.workers = 4;
    opts.guarantee = multiproc::delivery::at_least_once;
    opts.max_attempts = 3;
    auto pool = multiproc::pool::start(sys, "crash_tolerant_pool.squarer",
                                       opts);
    if (!pool) {
      std::cerr << "cannot start the pool: "
                << multiproc::describe(pool.error()) << '\n';
    } else {
      std::vector<job> tasks;
      for (int32_t i = 0; i < n_tasks; ++i)
        tasks.push_back(job{i, marker_dir});
      auto results = pool->map<int32_t>(tasks);
      // Count from the results themselves: map returns one per task, so a
      // task whose result is missing or an unexpected error is lost.
      size_t ok = 0;
      size_t wrong = 0;
      size_t lost = 0;
      std::vector<std::string> quarantined;
      bool quarantine_as_expected = true;
      for (size_t i = 0; i < tasks.size(); ++i) {
        if (i >= results.size()) {
          ++lost;
          continue;
        }
        auto& r = results[i];
        auto value = static_cast<int32_t>(i);
        if (r) {
          if (*r == value * value) {
            ++ok;
          } else {
            ++wrong;
            std::cerr << "task " << i << ": wrong result " << *r << '\n';
          }
          continue;
        }
        if (r.error() != multiproc::errc::task_quarantined) {
          ++lost;
          std::cerr << "task " << i
                    << " lost: " << multiproc::describe(r.error()) << '\n';
          continue;
        }
        // Which signals and how many attempts does the error text name?
        auto text = multiproc::text_of(r.error());
        std::set<std::string> signals;
        static const std::regex sig_re{"killed by (SIG[A-Z0-9]+)"};
        for (std::sregex_iterator m{text.begin(), text.end(), sig_re}, end;
             m != end; ++m)
          signals.insert((*m)[1]);
        std::string attempts = "? attempts";
        std::smatch m;
        static const std::regex attempts_re{"([0-9]+) attempts"};
        if (std::regex_search(text, m, attempts_re))
          attempts = m.str(0);
        std::string sigs;
        for (auto& s : signals)
          sigs += (sigs.empty() ? "" : "/") + s;
        if (sigs.empty())
          sigs = "no signal named";
        quarantined.push_back("task " + std::to_string(i) + ", " + sigs + ", "
                              + attempts);
        if (i != static_cast<size_t>(poison)
            || text.find("SIGSEGV") == std::string::npos
            || text.find("3 attempts") == std::string::npos)
          quarantine_as_expected = false;
        std::cerr << "task " << i << " is quarantined: "
                  << multiproc::describe(r.error()) << '\n';
      }
      size_t markers = 0;
      for (int32_t v = first_killer; v <= last_killer; ++v)
        markers += fs::exists(marker_of(marker_dir, v)) ? 1 : 0;
      auto stats = pool->stats();
      auto closed = pool->close();
      if (closed)
        std::cerr << "cannot close the pool: " << multiproc::describe(closed)
                  << '\n';
      std::ostringstream q;
      q << quarantined.size();
      if (!quarantined.empty()) {
        q << " (";
        for (size_t i = 0; i < quarantined.size(); ++i)
          q << (i > 0 ? "; " : "") << quarantined[i];
        q << ')';
      }
      std::cout << "crash_tolerant_pool: " << tasks.size() << " tasks on "
                << opts.workers << " workers, " << stats.workers_died
                << " worker deaths, " << stats.redispatched
                << " re-dispatches, " << markers
                << " tasks killed their worker once\n"
                << "ok: " << ok << '\n'
                << "quarantined: " << q.str() << '\n';
      if (wrong > 0)
        std::cout << "wrong: " << wrong << '\n';
      std::cout << "lost: " << lost << '\n' << std::flush;
      bool as_expected = ok == tasks.size() - 1 && wrong == 0 && lost == 0
                         && quarantined.size() == 1 && quarantine_as_expected
                         && markers == size_t(last_killer - first_killer + 1)
                         && !closed;
      rc = as_expected ? 0 : 1;
    }
  }
  std::error_code ec;
  fs::remove_all(marker_dir, ec);
  if (ec) {
    std::cerr << "cannot remove " << marker_dir << ": " << ec.message() << '\n';
    rc = 1;
  }
  return rc;
}
