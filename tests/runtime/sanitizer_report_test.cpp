// A sanitizer report in a child process fails the test that started it
// (issue 6; tests/sanitizer_reports.hpp). The check runs the test binary
// again on a test whose children misbehave on purpose (a use after free under
// ASan, a data race under TSan) and expects that run to fail and to print the
// children's reports. Only sanitized builds can show it.
#include <cstdio>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include "multiproc/bootstrap.hpp"
#include "multiproc/process.hpp"
#include "sanitizer_reports.hpp"

using namespace multiproc;
using namespace std::chrono_literals;

namespace sanitizer_report_test {

/// A child that misbehaves in the way its sanitizer reports.
int misbehave(child_context&) {
#if defined(__SANITIZE_ADDRESS__)
  int* volatile p = new int[4]{1, 2, 3, 4}; // volatile: no compile-time warning
  delete[] p;
  return p[1]; // heap-use-after-free
#elif defined(__SANITIZE_THREAD__)
  int counter = 0;
  std::thread other{[&] { ++counter; }}; // data race on counter
  ++counter;
  other.join();
  return 0;
#else
  return 0;
#endif
}

MULTIPROC_REGISTER_ENTRY("sanitizer_report_test.misbehave", misbehave);

/// The output (stdout and stderr) and exit status of `command`.
std::pair<std::string, int> run(const std::string& command) {
  std::string out;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr)
    return {"popen failed", -1};
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), pipe)) > 0;)
    out.append(buf, n);
  return {out, ::pclose(pipe)};
}

} // namespace sanitizer_report_test

using namespace sanitizer_report_test;

// Run only by the test below (it passes on its own: the parent sees nothing
// wrong; the report must fail it).
TEST(SanitizerReports, DISABLED_ChildrenThatMisbehave) {
  for (auto method : {start_method::spawn, start_method::forkserver}) {
    process_options opts;
    opts.method = method;
    auto p = start_process("sanitizer_report_test.misbehave", {}, opts);
    ASSERT_TRUE(p) << describe(p.error());
    auto st = p->join(30s);
    ASSERT_TRUE(st) << describe(st.error());
  }
}

TEST(SanitizerReports, AChildsReportFailsTheTestThatStartedIt) {
#ifndef MULTIPROC_TEST_SANITIZED
  GTEST_SKIP() << "shows only in an ASan or TSan build (asan, tsan presets)";
#else
  char self[4096] = {};
  ASSERT_GT(::readlink("/proc/self/exe", self, sizeof(self) - 1), 0);
  // A run of its own: without our report directory, so that it makes one.
  auto [out, status] = run(
    std::string{"env -u MULTIPROC_TEST_SANITIZER_DIR timeout 60 "} + self
    + " --gtest_also_run_disabled_tests"
      " --gtest_filter=SanitizerReports.DISABLED_ChildrenThatMisbehave");
  ASSERT_TRUE(WIFEXITED(status)) << out;
  EXPECT_EQ(WEXITSTATUS(status), 1) << out;
  // The inner test itself passed: the reports failed the run.
  EXPECT_NE(out.find("[  PASSED  ] 1 test"), std::string::npos) << out;
  EXPECT_NE(out.find("sanitizer report of a child process"), std::string::npos)
    << out;
#  if defined(__SANITIZE_ADDRESS__)
  const char* what = "heap-use-after-free";
#  else
  const char* what = "data race";
#  endif
  EXPECT_NE(out.find(what), std::string::npos) << out;
  // One report per start method.
  const std::string header = "==== sanitizer report of a child process";
  size_t reports = 0;
  for (auto at = out.find(header); at != std::string::npos;
       at = out.find(header, at + 1))
    ++reports;
  EXPECT_EQ(reports, 2u) << out;
  EXPECT_NE(out.find("FAILED: a child process had a sanitizer report"),
            std::string::npos)
    << out;
#endif
}
