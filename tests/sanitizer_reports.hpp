#pragma once
/// Sanitizer reports of child processes fail the test that started them.
///
/// A child's report would otherwise end up in its forwarded stderr, or
/// nowhere, and the test would pass as long as the parent saw what it
/// expected (a pool replaces a worker that died of a report). In a build
/// with ASan or TSan, the test process makes a directory, passes its name to
/// its children in MULTIPROC_TEST_SANITIZER_DIR and points their reports
/// there (`__sanitizer_set_report_path`: forked children through a
/// pthread_atfork handler, spawned ones at the start of main()). After the
/// tests, collect() prints every report found to stderr and removes the
/// directory; main() then fails. The test process's own reports still go to
/// its stderr, and its sanitizer ends it with a non-zero status.
///
/// Without a sanitizer this does nothing.

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#  define MULTIPROC_TEST_SANITIZED 1
#  include <pthread.h>
#  include <sanitizer/common_interface_defs.h>
#  include <sys/stat.h>
#  include <unistd.h>

#  include <cstdio>
#  include <cstdlib>
#  include <filesystem>
#  include <fstream>
#  include <iostream>
#  include <iterator>
#  include <string>
#endif

namespace test_util {

class sanitizer_reports {
public:
#ifdef MULTIPROC_TEST_SANITIZED
  sanitizer_reports() {
    if (const char* dir = std::getenv(env_name)) {
      // A spawned child (or a death test's re-run): report into the parent's
      // directory.
      set_prefix(dir);
      __sanitizer_set_report_path(prefix_);
      ::pthread_atfork(nullptr, nullptr, on_fork_child);
      return;
    }
    char dir[] = "/tmp/multiproc-sanitizer-XXXXXX";
    if (::mkdtemp(dir) == nullptr) {
      std::perror("sanitizer_reports: mkdtemp");
      return;
    }
    dir_ = dir;
    owner_ = ::getpid();
    set_prefix(dir);
    ::setenv(env_name, dir, 1);
    ::pthread_atfork(nullptr, nullptr, on_fork_child);
  }

  /// In the test process: prints the children's reports and removes the
  /// directory; false if there was a report.
  bool collect() {
    // A forked copy of the test process that returns from main() (a test's
    // own fork) must not take the directory away.
    if (dir_.empty() || ::getpid() != owner_)
      return true;
    bool clean = true;
    std::error_code ec;
    for (auto& entry : std::filesystem::directory_iterator{dir_, ec}) {
      std::ifstream in{entry.path()};
      std::string text{std::istreambuf_iterator<char>{in}, {}};
      if (text.empty())
        continue;
      clean = false;
      std::cerr << "\n==== sanitizer report of a child process ("
                << entry.path().filename().string() << ", pid after the dot)"
                << " ====\n"
                << text << "==== end of the child's report ====\n";
    }
    std::filesystem::remove_all(dir_, ec);
    if (!clean)
      std::cerr << "FAILED: a child process had a sanitizer report (above)\n";
    return clean;
  }

private:
  static constexpr const char* env_name = "MULTIPROC_TEST_SANITIZER_DIR";

  static void set_prefix(const char* dir) {
    std::snprintf(prefix_, sizeof(prefix_), "%s/report", dir);
  }

  // Runs in every forked child, also the fork server's children.
  static void on_fork_child() {
    __sanitizer_set_report_path(prefix_);
  }

  static inline char prefix_[4096] = {};
  std::string dir_;
  pid_t owner_ = 0;
#else
  bool collect() {
    return true;
  }
#endif
};

} // namespace test_util
