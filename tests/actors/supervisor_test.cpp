// Tests for actors/supervisor: start and stop order, each restart strategy
// and restart type, the restart intensity, shutdown escalation, nested
// supervisors and the pipeline form. The children are entries of this test
// binary; every test stops its supervisor, so no process is left behind.

#include "multiproc/supervisor.hpp"
#include "multiproc/metrics.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <mutex>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/send.hpp>

#include "multiproc/bootstrap.hpp"
#include "multiproc/error.hpp"
#include "multiproc/shm_queue.hpp"
#include "multiproc/worker.hpp"

using namespace std::chrono_literals;
using namespace multiproc;

namespace {

// -- entries (run in children) ------------------------------------------------

/// Runs until its supervisor asks it to stop (at most 60 s), then exits 0.
int sup_sleeper(child_context& ctx) {
  for (int i = 0; i < 600 && !stop_requested(ctx, 100ms); ++i)
    ;
  return 0;
}

/// Ignores the graceful stop: SIGTERM ends it.
int sup_ignores_stop(child_context&) {
  for (int i = 0; i < 600; ++i)
    ::usleep(100 * 1000);
  return 0;
}

/// Ignores the graceful stop and SIGTERM: only SIGKILL ends it.
int sup_ignores_term(child_context&) {
  std::signal(SIGTERM, SIG_IGN);
  for (int i = 0; i < 600; ++i)
    ::usleep(100 * 1000);
  return 0;
}

/// Exits after 20 ms with the code in its args.
int sup_exits(child_context& ctx) {
  ::usleep(20 * 1000);
  return std::stoi(ctx.args);
}

/// Dies by SIGSEGV after 20 ms.
int sup_crashes(child_context&) {
  ::usleep(20 * 1000);
  std::signal(SIGSEGV, SIG_DFL);
  std::raise(SIGSEGV);
  return 0;
}

/// Pipeline producer: puts the ints [first, first + count) (args "first
/// count") as 4-byte messages into fds[0].
int sup_producer(child_context& ctx) {
  auto q = shm_queue::attach(std::move(ctx.fds.at(0)));
  if (!q)
    return 2;
  int32_t first = 0, count = 0;
  if (std::sscanf(ctx.args.c_str(), "%d %d", &first, &count) != 2)
    return 3;
  for (int32_t x = first; x < first + count; ++x)
    if (q->put({reinterpret_cast<const char*>(&x), sizeof(x)}, 10s))
      return 4;
  return 0;
}

/// Pipeline consumer: moves every message of fds[0] to fds[1] until the end
/// of the stream. With args "crash N", it dies by SIGKILL on each first
/// delivery of a multiple of N.
int sup_consumer(child_context& ctx) {
  auto in = shm_queue::attach(std::move(ctx.fds.at(0)));
  auto out = shm_queue::attach(std::move(ctx.fds.at(1)));
  if (!in || !out)
    return 2;
  int crash_every = 0;
  std::sscanf(ctx.args.c_str(), "crash %d", &crash_every);
  for (;;) {
    auto msg = in->get(10s);
    if (!msg)
      return msg.error() == errc::end_of_stream ? 0 : 3;
    int32_t x = 0;
    std::memcpy(&x, msg->bytes.data(), sizeof(x));
    if (crash_every > 0 && x % crash_every == 0 && msg->deliveries == 1)
      ::raise(SIGKILL);
    if (out->put(msg->bytes, 10s))
      return 4;
  }
}

/// A worker actor: squares an int.
caf::behavior sup_squarer(caf::event_based_actor*) {
  return {[](int32_t x) { return x * x; }};
}

MULTIPROC_REGISTER_ENTRY("sup.sleeper", sup_sleeper);
MULTIPROC_REGISTER_ENTRY("sup.ignores_stop", sup_ignores_stop);
MULTIPROC_REGISTER_ENTRY("sup.ignores_term", sup_ignores_term);
MULTIPROC_REGISTER_ENTRY("sup.exits", sup_exits);
MULTIPROC_REGISTER_ENTRY("sup.crashes", sup_crashes);
MULTIPROC_REGISTER_ENTRY("sup.producer", sup_producer);
MULTIPROC_REGISTER_ENTRY("sup.consumer", sup_consumer);
MULTIPROC_WORKER("sup.squarer", sup_squarer)

// -- helpers -------------------------------------------------------------------

/// Collects a supervisor's events; tests wait for the ones they expect.
class event_log {
public:
  std::function<void(const supervisor_event&)> sink() {
    return [this](const supervisor_event& ev) {
      {
        std::lock_guard<std::mutex> guard{mtx_};
        events_.push_back(ev);
      }
      cv_.notify_all();
    };
  }

  /// "started a", "exited b", "stopped c", "gave_up ", "complete " for the
  /// events so far (with the nested path, "sub/x").
  std::vector<std::string> lines() {
    std::lock_guard<std::mutex> guard{mtx_};
    std::vector<std::string> out;
    for (auto& ev : events_)
      out.push_back(line(ev));
    return out;
  }

  /// Waits up to 10 s until `n` events equal to `what` were seen.
  bool await(const std::string& what, size_t n = 1) {
    std::unique_lock<std::mutex> guard{mtx_};
    return cv_.wait_for(guard, 10s, [&] {
      return static_cast<size_t>(std::count_if(
               events_.begin(), events_.end(),
               [&](auto& ev) { return line(ev) == what; }))
             >= n;
    });
  }

  std::vector<supervisor_event> events() {
    std::lock_guard<std::mutex> guard{mtx_};
    return events_;
  }

private:
  static std::string line(const supervisor_event& ev) {
    static const char* kinds[] = {"started", "exited", "stopped", "gave_up",
                                  "complete"};
    auto who = ev.supervisor.empty() || ev.child.empty()
                 ? ev.supervisor + ev.child
                 : ev.supervisor + "/" + ev.child;
    return std::string{kinds[ev.kind]} + " " + who;
  }

  std::mutex mtx_;
  std::condition_variable cv_;
  std::vector<supervisor_event> events_;
};

std::vector<std::string> only(const std::vector<std::string>& lines,
                              const std::string& prefix) {
  std::vector<std::string> out;
  for (auto& l : lines)
    if (l.rfind(prefix, 0) == 0)
      out.push_back(l);
  return out;
}

pid_t pid_of(const supervisor& sup, const std::string& id) {
  for (auto& c : sup.report().children)
    if (c.id == id)
      return c.pid;
  return 0;
}

bool process_gone(pid_t pid) {
  return pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH;
}

child_spec sleeper(const std::string& id) {
  auto c = child_spec::process(id, "sup.sleeper");
  c.shutdown_timeout = 5s;
  return c;
}

class SupervisorTest : public testing::Test {
protected:
  caf::actor_system_config cfg_;
  caf::actor_system sys_{cfg_};
  event_log log_;

  supervisor start(supervisor_spec spec) {
    spec.on_event = log_.sink();
    auto sup = supervisor::start(sys_, std::move(spec));
    EXPECT_TRUE(sup) << describe(sup.error());
    return sup ? std::move(*sup) : supervisor{};
  }
};

} // namespace

// -- order and shutdown ----------------------------------------------------------

TEST_F(SupervisorTest, StartsChildrenInOrderAndStopsThemInReverse) {
  supervisor_spec spec;
  spec.children = {sleeper("a"), sleeper("b"), sleeper("c")};
  auto sup = start(std::move(spec));
  EXPECT_EQ(log_.lines(),
            (std::vector<std::string>{"started a", "started b", "started c"}));
  std::vector<pid_t> pids{pid_of(sup, "a"), pid_of(sup, "b"),
                          pid_of(sup, "c")};
  auto report = sup.stop();
  ASSERT_TRUE(report) << describe(report.error());
  EXPECT_EQ(only(log_.lines(), "stopped"),
            (std::vector<std::string>{"stopped c", "stopped b", "stopped a"}));
  // Each child saw the graceful stop and exited on its own with code 0.
  for (auto& c : report->children) {
    ASSERT_TRUE(c.last_exit) << c.id;
    EXPECT_TRUE(c.last_exit->success()) << c.id << ": "
                                        << c.last_exit->to_string();
  }
  for (auto pid : pids)
    EXPECT_TRUE(process_gone(pid)) << pid;
}

TEST_F(SupervisorTest, EscalatesAnIgnoredStopToSigtermThenSigkill) {
  auto deaf = child_spec::process("deaf", "sup.ignores_stop");
  deaf.shutdown_timeout = 200ms;
  auto unyielding = child_spec::process("unyielding", "sup.ignores_term");
  unyielding.shutdown_timeout = 200ms;
  unyielding.kill_timeout = 200ms;
  supervisor_spec spec;
  spec.children = {deaf, unyielding};
  auto sup = start(std::move(spec));
  // Let the unyielding child install its SIGTERM handler first.
  std::this_thread::sleep_for(200ms);
  auto report = sup.stop();
  ASSERT_TRUE(report) << describe(report.error());
  ASSERT_EQ(report->children.size(), 2u);
  ASSERT_TRUE(report->children[0].last_exit);
  ASSERT_TRUE(report->children[1].last_exit);
  EXPECT_EQ(report->children[0].last_exit->to_string(), "killed by SIGTERM");
  EXPECT_EQ(report->children[1].last_exit->to_string(), "killed by SIGKILL");
}

TEST_F(SupervisorTest, RejectsBadSpecsNamingTheChild) {
  supervisor_spec dup;
  dup.children = {sleeper("a"), sleeper("a")};
  auto sup = supervisor::start(sys_, dup);
  ASSERT_FALSE(sup);
  EXPECT_EQ(sup.error(), errc::invalid_argument);
  EXPECT_NE(text_of(sup.error()).find("'a'"), std::string::npos);

  supervisor_spec unknown;
  unknown.on_event = log_.sink();
  unknown.children = {sleeper("a"),
                      child_spec::process("b", "sup.no_such_entry")};
  sup = supervisor::start(sys_, unknown);
  ASSERT_FALSE(sup);
  EXPECT_EQ(sup.error(), errc::invalid_argument);
  EXPECT_NE(text_of(sup.error()).find("sup.no_such_entry"), std::string::npos);
  EXPECT_TRUE(log_.lines().empty()); // checked before anything started

  supervisor_spec consumer_without_queue;
  consumer_without_queue.children = {
    child_spec::process("c", "sup.consumer", "", child_role::consumer)};
  sup = supervisor::start(sys_, consumer_without_queue);
  ASSERT_FALSE(sup);
  EXPECT_NE(text_of(sup.error()).find("queue"), std::string::npos);
}

TEST_F(SupervisorTest, UsesOtpsDefaultIntensityOfOneRestartInFiveSeconds) {
  supervisor_spec spec;
  EXPECT_EQ(spec.max_restarts, 1);
  EXPECT_EQ(spec.within, 5000ms);
  EXPECT_EQ(spec.strategy, restart_strategy::one_for_one);
  EXPECT_EQ(child_spec{}.restart, restart_type::permanent);
}

// -- strategies ------------------------------------------------------------------

TEST_F(SupervisorTest, OneForOneRestartsOnlyTheChildThatDied) {
  supervisor_spec spec;
  spec.strategy = restart_strategy::one_for_one;
  spec.max_restarts = 5;
  spec.children = {sleeper("a"), sleeper("b"), sleeper("c")};
  auto sup = start(std::move(spec));
  auto a = pid_of(sup, "a"), b = pid_of(sup, "b"), c = pid_of(sup, "c");
  ASSERT_EQ(::kill(b, SIGKILL), 0);
  ASSERT_TRUE(log_.await("started b", 2));
  EXPECT_EQ(pid_of(sup, "a"), a);
  EXPECT_EQ(pid_of(sup, "c"), c);
  EXPECT_NE(pid_of(sup, "b"), b);
  EXPECT_TRUE(only(log_.lines(), "stopped").empty());
  auto report = sup.stop();
  ASSERT_TRUE(report);
  EXPECT_EQ(report->restarts, 1u);
}

TEST_F(SupervisorTest, CountsRestartsByCauseInItsReportAndMetrics) {
  supervisor_spec spec;
  spec.strategy = restart_strategy::one_for_one;
  spec.max_restarts = 10;
  spec.children = {sleeper("a"), sleeper("b")};
  auto sup = start(std::move(spec));
  // a: killed by a signal twice; b: once, by SIGUSR1's default action.
  ASSERT_EQ(::kill(pid_of(sup, "a"), SIGKILL), 0);
  ASSERT_TRUE(log_.await("started a", 2));
  ASSERT_EQ(::kill(pid_of(sup, "a"), SIGKILL), 0);
  ASSERT_TRUE(log_.await("started a", 3));
  ASSERT_EQ(::kill(pid_of(sup, "b"), SIGUSR1), 0);
  ASSERT_TRUE(log_.await("started b", 2));
  auto report = sup.stop();
  ASSERT_TRUE(report) << describe(report.error());
  std::map<std::string, restart_causes> by_id;
  for (auto& c : report->children)
    by_id[c.id] = c.restarts_by_cause;
  EXPECT_EQ(by_id["a"].signal, 2u);
  EXPECT_EQ(by_id["a"].error_exit + by_id["a"].normal_exit, 0u);
  EXPECT_EQ(by_id["b"].signal, 1u);
  metrics_registry reg;
  reg.add("tree", *report);
  auto snap = reg.collect();
  EXPECT_EQ(snap.value("multiproc_supervisor_restarts_total",
                       {{"supervisor", "tree"}, {"child", "a"},
                        {"cause", "signal"}}),
            2.0);
  EXPECT_EQ(snap.value("multiproc_supervisor_restarts_total",
                       {{"supervisor", "tree"}, {"child", "b"},
                        {"cause", "signal"}}),
            1.0);
  EXPECT_EQ(snap.value("multiproc_supervisor_restarts_total",
                       {{"supervisor", "tree"}, {"child", "b"},
                        {"cause", "error_exit"}}),
            0.0);
}

TEST_F(SupervisorTest, CountsAnErrorExitApartFromASignal) {
  supervisor_spec spec;
  spec.max_restarts = 100;
  auto child = child_spec::process("quits", "sup.exits", "4");
  child.restart = restart_type::transient;
  spec.children = {child};
  auto sup = start(std::move(spec));
  ASSERT_TRUE(log_.await("started quits", 2));
  auto report = sup.stop();
  ASSERT_TRUE(report) << describe(report.error());
  ASSERT_EQ(report->children.size(), 1u);
  EXPECT_GE(report->children[0].restarts_by_cause.error_exit, 1u);
  EXPECT_EQ(report->children[0].restarts_by_cause.signal, 0u);
}

TEST_F(SupervisorTest, OneForAllStopsTheOthersInReverseAndRestartsAllInOrder) {
  supervisor_spec spec;
  spec.strategy = restart_strategy::one_for_all;
  spec.max_restarts = 5;
  spec.children = {sleeper("a"), sleeper("b"), sleeper("c")};
  auto sup = start(std::move(spec));
  auto a = pid_of(sup, "a"), c = pid_of(sup, "c");
  ASSERT_EQ(::kill(pid_of(sup, "b"), SIGKILL), 0);
  ASSERT_TRUE(log_.await("started c", 2));
  EXPECT_EQ(log_.lines(),
            (std::vector<std::string>{"started a", "started b", "started c",
                                      "exited b", "stopped c", "stopped a",
                                      "started a", "started b", "started c"}));
  EXPECT_NE(pid_of(sup, "a"), a);
  EXPECT_NE(pid_of(sup, "c"), c);
  EXPECT_TRUE(process_gone(a));
  ASSERT_TRUE(sup.stop());
}

TEST_F(SupervisorTest, RestForOneRestartsTheChildAndThoseStartedAfterIt) {
  supervisor_spec spec;
  spec.strategy = restart_strategy::rest_for_one;
  spec.max_restarts = 5;
  spec.children = {sleeper("a"), sleeper("b"), sleeper("c")};
  auto sup = start(std::move(spec));
  auto a = pid_of(sup, "a");
  ASSERT_EQ(::kill(pid_of(sup, "b"), SIGKILL), 0);
  ASSERT_TRUE(log_.await("started c", 2));
  EXPECT_EQ(log_.lines(),
            (std::vector<std::string>{"started a", "started b", "started c",
                                      "exited b", "stopped c", "started b",
                                      "started c"}));
  EXPECT_EQ(pid_of(sup, "a"), a);
  ASSERT_TRUE(sup.stop());
}

// -- restart types ---------------------------------------------------------------

TEST_F(SupervisorTest, RestartsAPermanentChildEvenAfterANormalExit) {
  auto once = child_spec::process("once", "sup.exits", "0");
  supervisor_spec spec;
  spec.max_restarts = 1;
  spec.within = 60s;
  spec.children = {once};
  auto sup = start(std::move(spec));
  // Exit 0, restart, exit 0 again: one restart too many.
  auto result = sup.wait(10s);
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error(), errc::restart_intensity_exceeded);
  EXPECT_EQ(only(log_.lines(), "started"),
            (std::vector<std::string>{"started once", "started once"}));
}

TEST_F(SupervisorTest, RestartsATransientChildOnlyAfterAnAbnormalEnd) {
  auto failing = child_spec::process("failing", "sup.exits", "3");
  failing.restart = restart_type::transient;
  auto done = child_spec::process("done", "sup.exits", "0");
  done.restart = restart_type::transient;
  supervisor_spec spec;
  spec.max_restarts = 2;
  spec.within = 60s;
  spec.children = {done, failing};
  auto sup = start(std::move(spec));
  auto result = sup.wait(10s);
  ASSERT_FALSE(result); // "failing" used up the intensity
  EXPECT_EQ(result.error(), errc::restart_intensity_exceeded);
  auto text = text_of(result.error());
  EXPECT_NE(text.find("child 'failing' exited with code 3"), std::string::npos)
    << text;
  auto report = sup.report();
  ASSERT_EQ(report.children.size(), 2u);
  EXPECT_EQ(report.children[0].starts, 1u);
  EXPECT_TRUE(report.children[0].finished);
  EXPECT_EQ(report.children[1].starts, 3u);
}

TEST_F(SupervisorTest, NeverRestartsATemporaryChild) {
  auto crash = child_spec::process("crash", "sup.crashes");
  crash.restart = restart_type::temporary;
  supervisor_spec spec;
  spec.children = {crash};
  auto sup = start(std::move(spec));
  // Its only child is finished: nothing is left to run.
  auto result = sup.wait(10s);
  ASSERT_TRUE(result) << describe(result.error());
  ASSERT_EQ(result->children.size(), 1u);
  EXPECT_EQ(result->children[0].starts, 1u);
  EXPECT_TRUE(result->children[0].finished);
  ASSERT_TRUE(result->children[0].last_exit);
  EXPECT_EQ(result->children[0].last_exit->to_string(), "killed by SIGSEGV");
  EXPECT_EQ(result->restarts, 0u);
}

// -- intensity ---------------------------------------------------------------------

TEST_F(SupervisorTest, GivesUpPastItsIntensityStoppingEveryChild) {
  supervisor_spec spec;
  spec.max_restarts = 2;
  spec.within = 60s;
  spec.children = {sleeper("steady"),
                   child_spec::process("crasher", "sup.crashes")};
  auto sup = start(std::move(spec));
  auto steady = pid_of(sup, "steady");
  auto result = sup.wait(10s);
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error(), errc::restart_intensity_exceeded);
  auto text = text_of(result.error());
  EXPECT_NE(text.find("more than 2 restart(s) within 60000 ms"),
            std::string::npos) << text;
  EXPECT_NE(text.find("child 'crasher' killed by SIGSEGV"), std::string::npos)
    << text;
  EXPECT_TRUE(process_gone(steady));
  EXPECT_EQ(only(log_.lines(), "started crasher").size(), 3u);
  EXPECT_TRUE(log_.await("gave_up "));
  // stop() after giving up reports the same error, and does nothing else.
  auto again = sup.stop();
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error(), errc::restart_intensity_exceeded);
}

TEST_F(SupervisorTest, ForgetsRestartsOlderThanItsWindow) {
  auto crasher = child_spec::process("crasher", "sup.exits", "1");
  supervisor_spec spec;
  spec.max_restarts = 1;
  spec.within = 1ms; // every restart is alone in its window
  spec.children = {crasher};
  auto sup = start(std::move(spec));
  ASSERT_TRUE(log_.await("started crasher", 5));
  EXPECT_TRUE(sup.report().restarts >= 4u);
  ASSERT_TRUE(sup.stop());
}

// -- trees -------------------------------------------------------------------------

TEST_F(SupervisorTest, ANestedSupervisorThatGivesUpIsRestartedByItsParent) {
  supervisor_spec inner;
  inner.max_restarts = 0; // gives up at the first crash
  inner.children = {sleeper("calm"),
                    child_spec::process("crasher", "sup.crashes")};
  supervisor_spec outer;
  outer.max_restarts = 2;
  outer.within = 60s;
  outer.children = {sleeper("top"), child_spec::nested("sub", inner)};
  auto sup = start(std::move(outer));
  auto top = pid_of(sup, "top");
  EXPECT_NE(pid_of(sup, "sub/calm"), 0);
  // The inner one gives up three times; the outer one restarts it twice,
  // then gives up too.
  auto result = sup.wait(10s);
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error(), errc::restart_intensity_exceeded);
  auto text = text_of(result.error());
  EXPECT_NE(text.find("child 'sub' gave up"), std::string::npos) << text;
  EXPECT_NE(text.find("supervisor 'sub'"), std::string::npos) << text;
  EXPECT_EQ(only(log_.lines(), "gave_up").size(), 4u);
  EXPECT_EQ(only(log_.lines(), "started sub/calm").size(), 3u);
  // Each inner give-up stopped its calm child in an orderly way.
  EXPECT_EQ(only(log_.lines(), "stopped sub/calm").size(), 3u);
  EXPECT_TRUE(process_gone(top));
}

// -- pipelines ---------------------------------------------------------------------

namespace {

shm_queue make_raw_queue() {
  shm_queue_options opts;
  opts.capacity = 256;
  opts.max_message_size = 64;
  auto q = shm_queue::create(opts);
  EXPECT_TRUE(q) << describe(q.error());
  return std::move(*q);
}

/// Reads every int of `results` until its end of stream (at most 30 s).
std::vector<int32_t> drain(shm_queue& results) {
  std::vector<int32_t> out;
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < deadline) {
    auto msg = results.get(1s);
    if (!msg) {
      if (msg.error() == errc::end_of_stream)
        break;
      continue;
    }
    int32_t x = 0;
    std::memcpy(&x, msg->bytes.data(), sizeof(x));
    out.push_back(x);
  }
  return out;
}

supervisor_spec pipeline_spec(shm_queue& work, shm_queue& results,
                              const std::string& consumer_args) {
  supervisor_spec spec;
  spec.queue = work.fd();
  spec.results = results.fd();
  spec.max_restarts = 100;
  for (int i = 0; i < 2; ++i) {
    auto p = child_spec::process("producer" + std::to_string(i),
                                 "sup.producer",
                                 std::to_string(i * 1000) + " 1000",
                                 child_role::producer);
    p.restart = restart_type::transient;
    spec.children.push_back(p);
  }
  for (int i = 0; i < 2; ++i) {
    auto c = child_spec::process("consumer" + std::to_string(i),
                                 "sup.consumer", consumer_args,
                                 child_role::consumer);
    c.restart = restart_type::transient;
    spec.children.push_back(c);
  }
  return spec;
}

} // namespace

TEST_F(SupervisorTest, CompletesAPipelineAndReportsItsTotals) {
  auto work = make_raw_queue();
  auto results = make_raw_queue();
  auto sup = start(pipeline_spec(work, results, ""));
  auto got = drain(results);
  auto report = sup.wait(30s);
  ASSERT_TRUE(report) << describe(report.error());
  EXPECT_TRUE(report->stream_complete);
  EXPECT_EQ(report->restarts, 0u);
  EXPECT_EQ(report->consumed, 2000u);
  EXPECT_EQ(report->redelivered, 0u);
  std::sort(got.begin(), got.end());
  ASSERT_EQ(got.size(), 2000u);
  for (int32_t i = 0; i < 2000; ++i)
    ASSERT_EQ(got[static_cast<size_t>(i)], i);
  EXPECT_TRUE(work.closed());
  EXPECT_TRUE(results.closed());
  EXPECT_TRUE(log_.await("complete "));
}

TEST_F(SupervisorTest, APipelineLosesNothingWhenConsumersCrash) {
  auto work = make_raw_queue();
  auto results = make_raw_queue();
  auto sup = start(pipeline_spec(work, results, "crash 250"));
  auto got = drain(results);
  auto report = sup.wait(30s);
  ASSERT_TRUE(report) << describe(report.error());
  EXPECT_TRUE(report->stream_complete);
  // 0, 250, ..., 1750: each first delivery kills its consumer (a batch holds
  // a few consecutive values of one producer, never two of these).
  EXPECT_EQ(report->restarts, 8u);
  EXPECT_GE(report->redelivered, report->restarts);
  std::set<int32_t> distinct(got.begin(), got.end());
  EXPECT_EQ(distinct.size(), 2000u);
  EXPECT_EQ(*distinct.begin(), 0);
  EXPECT_EQ(*distinct.rbegin(), 1999);
}

TEST_F(SupervisorTest, StopsWhenItsActorIsToldToExit) {
  supervisor_spec spec;
  spec.children = {sleeper("a")};
  auto sup = start(std::move(spec));
  auto a = pid_of(sup, "a");
  caf::anon_send_exit(sup.actor(), caf::exit_reason::user_shutdown);
  auto result = sup.wait(10s);
  ASSERT_FALSE(result);
  EXPECT_TRUE(process_gone(a));
}

// -- worker actors -------------------------------------------------------------

TEST_F(SupervisorTest, RestartsAWorkerActorAndHandsOutItsNewHandle) {
  supervisor_spec spec;
  spec.max_restarts = 3;
  spec.children = {child_spec::worker("squarer", "sup.squarer")};
  auto sup = start(std::move(spec));
  auto first = sup.worker("squarer");
  ASSERT_TRUE(first);
  auto y = request<int32_t>(first, 5s, int32_t{7});
  ASSERT_TRUE(y) << describe(y.error());
  EXPECT_EQ(*y, 49);
  auto pid = pid_of(sup, "squarer");
  ASSERT_GT(pid, 0);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  ASSERT_TRUE(log_.await("started squarer", 2));
  auto second = sup.worker("squarer");
  ASSERT_TRUE(second);
  EXPECT_NE(second, first);
  auto second_pid = pid_of(sup, "squarer");
  EXPECT_NE(second_pid, pid);
  y = request<int32_t>(second, 5s, int32_t{9});
  ASSERT_TRUE(y) << describe(y.error());
  EXPECT_EQ(*y, 81);
  // The old handle fails clearly instead of waiting.
  auto stale = request<int32_t>(first, 5s, int32_t{1});
  ASSERT_FALSE(stale);
  auto report = sup.stop();
  ASSERT_TRUE(report) << describe(report.error());
  ASSERT_TRUE(report->children[0].last_exit);
  EXPECT_TRUE(report->children[0].last_exit->success())
    << report->children[0].last_exit->to_string();
  EXPECT_FALSE(sup.worker("squarer"));
  EXPECT_TRUE(process_gone(second_pid));
}

TEST_F(SupervisorTest, RejectsAWorkerActorThatIsNotRegistered) {
  supervisor_spec spec;
  spec.children = {child_spec::worker("w", "sup.no_such_worker")};
  auto sup = supervisor::start(sys_, spec);
  ASSERT_FALSE(sup);
  EXPECT_EQ(sup.error(), errc::invalid_argument);
  EXPECT_NE(text_of(sup.error()).find("MULTIPROC_WORKER"), std::string::npos);
}
