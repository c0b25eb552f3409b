// Tests of runtime/log*: the one logger across the parent and its children
// (records forwarded as marked stderr lines, tagged with the child's name and
// pid), MULTIPROC_LOG_LEVEL, and plain output forwarded as before.
#include "multiproc/log.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <unistd.h>

#include <gtest/gtest.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/basic_file_sink.h>

#include "multiproc/bootstrap.hpp"
#include "multiproc/error.hpp"
#include "multiproc/process.hpp"
#include "test_util.hpp"

using namespace multiproc;
using namespace std::chrono_literals;

namespace {

// -- entries ------------------------------------------------------------------

/// Logs at info, warn ("disk <args> almost full", and a two-line record) and
/// error, and prints one plain line on stdout and one on stderr.
int log_some(child_context& ctx) {
  logger()->info("starting");
  logger()->warn("disk {} almost full", ctx.args);
  logger()->warn("line one\nline two");
  std::printf("plain stdout line\n");
  std::fprintf(stderr, "plain stderr line\n");
  logger()->error("an error");
  return 0;
}
MULTIPROC_REGISTER_ENTRY("log_test.log_some", log_some);

/// Starts log_test.log_some (with its own args) as "grandchild" with the
/// default sink, so that the grandchild's records are logged again by this
/// child's logger; prints "grandchild pid <pid>" on stdout once it ended.
int log_through_a_grandchild(child_context& ctx) {
  process_options opts;
  opts.method = start_method::spawn;
  opts.name = "grandchild";
  auto proc = start_process("log_test.log_some", ctx.args, std::move(opts));
  if (!proc)
    return 2;
  auto st = proc->join(10s);
  if (!st || !st->success())
    return 3;
  std::printf("grandchild pid %d\n", static_cast<int>(proc->pid()));
  return 0;
}
MULTIPROC_REGISTER_ENTRY("log_test.log_through_a_grandchild",
                         log_through_a_grandchild);

// -- helpers ------------------------------------------------------------------

using test::line_collector;

/// The lines of `lines` that are records at `level`.
std::vector<std::string> records_at(const std::vector<output_line>& lines,
                                    log_level level) {
  std::vector<std::string> result;
  for (auto& line : lines)
    if (line.level == level)
      result.push_back(line.text);
  return result;
}

/// One record as a spdlog sink of the parent's logger saw it.
struct seen_record {
  std::string name;
  spdlog::level::level_enum level;
  std::string text;
};

/// A sink added to the parent's logger for one test (removed again by its
/// destructor), keeping every record it sees.
class capture_sink final : public spdlog::sinks::base_sink<std::mutex> {
public:
  std::vector<seen_record> snapshot() {
    std::lock_guard<std::mutex> guard{mutex_};
    return records_;
  }

protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    records_.push_back(
      seen_record{std::string{msg.logger_name.data(), msg.logger_name.size()},
                  msg.level,
                  std::string{msg.payload.data(), msg.payload.size()}});
  }

  void flush_() override {
  }

private:
  std::vector<seen_record> records_;
};

/// Adds a capture_sink to logger() for its lifetime. Only while no child of
/// this process is logging (spdlog's sink list is not thread-safe).
struct captured {
  std::shared_ptr<capture_sink> sink = std::make_shared<capture_sink>();

  captured() {
    logger()->sinks().push_back(sink);
  }

  ~captured() {
    auto& sinks = logger()->sinks();
    for (auto i = sinks.begin(); i != sinks.end(); ++i)
      if (*i == sink) {
        sinks.erase(i);
        break;
      }
  }
};

/// Sets an environment variable for the test's lifetime (a spawn child
/// copies the environment when it starts). The parent's logger is created
/// before, so that its own level does not change.
struct scoped_env {
  std::string name;
  std::optional<std::string> old;

  scoped_env(std::string var, const std::string& value) : name(std::move(var)) {
    logger();
    if (const char* x = std::getenv(name.c_str()))
      old = x;
    ::setenv(name.c_str(), value.c_str(), 1);
  }

  ~scoped_env() {
    if (old)
      ::setenv(name.c_str(), old->c_str(), 1);
    else
      ::unsetenv(name.c_str());
  }
};

/// Runs `entry` (default log_test.log_some) with `method`, "logger-child" as
/// its name, args "7" and `sink` (empty: the default sink); returns the
/// child's pid, or -1.
pid_t run_log_some(start_method method, output_sink sink,
                   const char* entry = "log_test.log_some") {
  process_options opts;
  opts.method = method;
  opts.name = "logger-child";
  opts.sink = std::move(sink);
  auto proc = start_process(entry, "7", std::move(opts));
  EXPECT_TRUE(proc) << describe(proc.error());
  if (!proc)
    return -1;
  auto st = proc->join(10s);
  EXPECT_TRUE(st) << describe(st.error());
  EXPECT_TRUE(st && st->success()) << (st ? st->to_string() : "");
  return proc->pid();
}

std::vector<start_method> methods() {
  std::vector<start_method> result{start_method::spawn};
  if (default_start_method() == start_method::forkserver)
    result.push_back(start_method::forkserver);
  return result;
}

/// Restores the parent's level when a test changed it.
struct level_guard {
  log_level saved = get_log_level();
  ~level_guard() {
    set_log_level(saved);
  }
};

} // namespace

// -- log levels -----------------------------------------------------------------

TEST(LogLevel, ParsesEveryNameItPrints) {
  for (auto x : {log_level::trace, log_level::debug, log_level::info,
                 log_level::warn, log_level::error, log_level::critical,
                 log_level::off}) {
    auto y = parse_log_level(to_string(x));
    ASSERT_TRUE(y) << to_string(x);
    EXPECT_EQ(*y, x);
  }
}

TEST(LogLevel, RejectsAnUnknownNameNamingItAndTheAcceptedOnes) {
  auto x = parse_log_level("loud");
  ASSERT_FALSE(x);
  EXPECT_EQ(x.error(), errc::invalid_argument);
  auto text = describe(x.error());
  EXPECT_NE(text.find("'loud' is not a log level"), std::string::npos) << text;
  EXPECT_NE(text.find("trace, debug, info, warn, error, critical, off"),
            std::string::npos)
    << text;
}

TEST(LogLevel, SetLogLevelChangesThisProcesssLogger) {
  level_guard guard;
  set_log_level(log_level::error);
  EXPECT_EQ(get_log_level(), log_level::error);
  EXPECT_FALSE(logger()->should_log(spdlog::level::warn));
  set_log_level(log_level::debug);
  EXPECT_TRUE(logger()->should_log(spdlog::level::debug));
}

// -- forwarding ---------------------------------------------------------------------

TEST(LogForwarding, AChildsRecordsArriveWithTheirLevelAndCleanText) {
  for (auto method : methods()) {
    SCOPED_TRACE(to_string(method));
    line_collector out;
    auto pid = run_log_some(method, out.sink());
    auto lines = out.snapshot();
    for (auto& line : lines) {
      EXPECT_EQ(line.process_name, "logger-child");
      EXPECT_EQ(line.pid, pid);
      EXPECT_EQ(line.text.find('\x1e'), std::string::npos) << line.text;
      if (line.level) {
        EXPECT_TRUE(line.is_stderr) << line.text;
      }
    }
    EXPECT_EQ(records_at(lines, log_level::warn),
              (std::vector<std::string>{"disk 7 almost full", "line one",
                                        "line two"}));
    EXPECT_EQ(records_at(lines, log_level::info),
              (std::vector<std::string>{"starting"}));
    EXPECT_EQ(records_at(lines, log_level::error),
              (std::vector<std::string>{"an error"}));
  }
}

TEST(LogForwarding, AChildsWarningReachesAParentSinkWithItsNameAndPid) {
  for (auto method : methods()) {
    SCOPED_TRACE(to_string(method));
    captured cap;
    auto pid = run_log_some(method, {}); // default_output_sink()
    auto records = cap.sink->snapshot();
    auto tag = "logger-child " + std::to_string(pid);
    std::vector<std::string> warnings;
    for (auto& r : records) {
      EXPECT_EQ(r.name, tag) << r.text;
      if (r.level == spdlog::level::warn)
        warnings.push_back(r.text);
    }
    EXPECT_EQ(warnings, (std::vector<std::string>{"disk 7 almost full",
                                                  "line one", "line two"}));
    // Plain lines are not records.
    for (auto& r : records)
      EXPECT_EQ(r.text.find("plain"), std::string::npos) << r.text;
  }
}

TEST(LogForwarding, TheParentsLevelFiltersForwardedRecords) {
  level_guard guard;
  set_log_level(log_level::error);
  captured cap;
  run_log_some(start_method::spawn, {});
  std::vector<std::string> texts;
  for (auto& r : cap.sink->snapshot())
    texts.push_back(r.text);
  EXPECT_EQ(texts, (std::vector<std::string>{"an error"}));
}

TEST(LogForwarding, LevelErrorInTheChildsEnvironmentDropsItsWarnings) {
  scoped_env env{log_level_env_var, "error"};
  line_collector out;
  run_log_some(start_method::spawn, out.sink());
  auto lines = out.snapshot();
  EXPECT_TRUE(records_at(lines, log_level::warn).empty());
  EXPECT_TRUE(records_at(lines, log_level::info).empty());
  EXPECT_EQ(records_at(lines, log_level::error),
            (std::vector<std::string>{"an error"}));
}

TEST(LogForwarding, ABadLevelInTheChildsEnvironmentIsReportedOnce) {
  scoped_env env{log_level_env_var, "loud"};
  line_collector out;
  run_log_some(start_method::spawn, out.sink());
  auto warnings = records_at(out.snapshot(), log_level::warn);
  ASSERT_EQ(warnings.size(), 4u); // the report, then the entry's three
  EXPECT_EQ(warnings[0],
            "MULTIPROC_LOG_LEVEL='loud' is not a log level (accepted: trace, "
            "debug, info, warn, error, critical, off); using info");
  EXPECT_EQ(warnings[1], "disk 7 almost full");
  // The level fell back to info.
  EXPECT_EQ(records_at(out.snapshot(), log_level::info),
            (std::vector<std::string>{"starting"}));
}

TEST(LogForwarding, PlainStdoutAndStderrLinesAreForwardedAsBefore) {
  for (auto method : methods()) {
    SCOPED_TRACE(to_string(method));
    line_collector out;
    run_log_some(method, out.sink());
    std::vector<std::string> out_lines;
    std::vector<std::string> err_lines;
    for (auto& line : out.snapshot()) {
      if (!line.level)
        (line.is_stderr ? err_lines : out_lines).push_back(line.text);
    }
    EXPECT_EQ(out_lines, (std::vector<std::string>{"plain stdout line"}));
    EXPECT_EQ(err_lines, (std::vector<std::string>{"plain stderr line"}));
  }
}

TEST(LogForwarding, AGrandchildsRecordsReachTheParentTaggedWithItsNameAndPid) {
  line_collector out;
  auto pid = run_log_some(start_method::spawn, out.sink(),
                          "log_test.log_through_a_grandchild");
  auto lines = out.snapshot();
  std::string grandchild_pid;
  for (auto& line : lines) {
    EXPECT_EQ(line.process_name, "logger-child");
    EXPECT_EQ(line.pid, pid);
    if (!line.level && line.text.rfind("grandchild pid ", 0) == 0)
      grandchild_pid = line.text.substr(15);
  }
  ASSERT_FALSE(grandchild_pid.empty()) << "the child did not report";
  EXPECT_NE(grandchild_pid, std::to_string(pid));
  auto tag = "[grandchild " + grandchild_pid + "] ";
  // Records keep their level through two forwarders and carry the
  // grandchild's name and pid in front of their text.
  EXPECT_EQ(records_at(lines, log_level::warn),
            (std::vector<std::string>{tag + "disk 7 almost full",
                                      tag + "line one", tag + "line two"}));
  EXPECT_EQ(records_at(lines, log_level::error),
            (std::vector<std::string>{tag + "an error"}));
}

TEST(LogForwarding, AForkChildLogsToItsParentNotThroughTheInheritedSinks) {
  auto path = testing::TempDir() + "log_test_fork_"
              + std::to_string(::getpid()) + ".log";
  auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, true);
  logger()->sinks().push_back(file);
  // Buffered in the sink's FILE when the child is forked: a child that
  // flushed or closed its copy would write it a second time.
  logger()->warn("the parent's record before the fork");
  line_collector out;
  auto pid = run_log_some(start_method::fork, out.sink());
  logger()->sinks().pop_back();
  file->flush();
  file.reset();
  auto text = multiproc::test::read_file(path);
  ::unlink(path.c_str());
  // The child's records came through the pipe, as records...
  EXPECT_GT(pid, 0);
  EXPECT_EQ(records_at(out.snapshot(), log_level::warn),
            (std::vector<std::string>{"disk 7 almost full", "line one",
                                      "line two"}));
  // ...and not through its copy of the parent's file sink.
  EXPECT_EQ(text.find("almost full"), std::string::npos) << text;
  auto first = text.find("the parent's record before the fork");
  ASSERT_NE(first, std::string::npos) << text;
  EXPECT_EQ(text.find("the parent's record before the fork", first + 1),
            std::string::npos)
    << "written twice:\n"
    << text;
}

// -- default_output_sink -----------------------------------------------------------

TEST(DefaultOutputSink, WritesAPlainLineAsNamePidText) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  int saved = ::dup(STDERR_FILENO);
  ASSERT_GE(saved, 0);
  ::dup2(fds[1], STDERR_FILENO);
  ::close(fds[1]);
  default_output_sink()(output_line{"worker", 42, true, "hello", std::nullopt});
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  auto text = multiproc::test::read_until_eof(fds[0], 2s);
  ::close(fds[0]);
  EXPECT_EQ(text, "[worker 42] hello\n");
}

TEST(DefaultOutputSink, LogsARecordThroughTheParentsLogger) {
  level_guard guard;
  set_log_level(log_level::info);
  captured cap;
  auto sink = default_output_sink();
  sink(output_line{"worker", 42, true, "kept", log_level::warn});
  sink(output_line{"worker", 42, true, "dropped", log_level::debug});
  auto records = cap.sink->snapshot();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].name, "worker 42");
  EXPECT_EQ(records[0].level, spdlog::level::warn);
  EXPECT_EQ(records[0].text, "kept");
}
