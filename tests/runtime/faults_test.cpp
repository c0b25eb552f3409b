// Tests runtime/faults: the rule grammar, and the queue and spawn points with
// each of their actions (real child processes: the test binary is its own
// child). Every rule counts (after=, times=), so each run fires at the same
// calls; every wait is bounded and every child is joined.
#include "multiproc/faults.hpp"

#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "multiproc/bootstrap.hpp"
#include "multiproc/error.hpp"
#include "multiproc/process.hpp"
#include "multiproc/queue.hpp"

using namespace multiproc;
using namespace std::chrono_literals;

namespace {

/// Takes values until the queue fails (the fault ends the process first).
int fault_consumer(child_context& ctx) {
  auto q = queue<int32_t>::attach(std::move(ctx.fds[0]));
  if (!q)
    return 10;
  for (;;) {
    auto x = q->get(5s);
    if (!x)
      return 11;
  }
}

/// Puts 1, 2, ... 10 (the fault ends the process first).
int fault_producer(child_context& ctx) {
  auto q = queue<int32_t>::attach(std::move(ctx.fds[0]));
  if (!q)
    return 10;
  for (int32_t i = 1; i <= 10; ++i)
    if (q->put(i))
      return 11;
  return 0;
}

int fault_idle(child_context&) {
  return 0;
}

} // namespace

MULTIPROC_REGISTER_ENTRY("faults_test.consumer", fault_consumer);
MULTIPROC_REGISTER_ENTRY("faults_test.producer", fault_producer);
MULTIPROC_REGISTER_ENTRY("faults_test.idle", fault_idle);

namespace {

/// Clears every rule after each test, whatever it did.
class Faults : public testing::Test {
protected:
  void TearDown() override {
    faults::clear();
  }

  static void configure(const std::string& spec) {
    ASSERT_FALSE(faults::configure(spec)) << spec;
  }

  static process_options quiet(std::vector<int> fds = {}) {
    process_options opts;
    opts.sink = [](const output_line&) {};
    opts.fds = std::move(fds);
    return opts;
  }
};

using FaultSpec = Faults;
using FaultQueue = Faults;
using FaultSpawn = Faults;

// -- grammar ---------------------------------------------------------------------

TEST_F(FaultSpec, IsOffUntilARuleIsSet) {
  EXPECT_FALSE(faults::enabled());
  EXPECT_FALSE(faults::check(faults::point::queue_put));
  configure("queue.put:throw");
  EXPECT_TRUE(faults::enabled());
  faults::clear();
  EXPECT_FALSE(faults::enabled());
  EXPECT_EQ(faults::to_spec(), "");
}

TEST_F(FaultSpec, ParsesEveryPointActionAndOption) {
  std::vector<faults::rule> rules;
  ASSERT_FALSE(faults::parse(
    "worker.decode_task:crash:0.01,queue.put:exit:after=100:code=3,"
    "spawn:throw:times=2,worker.run_task:crash:p=0.5:seed=7:signal=6",
    rules));
  ASSERT_EQ(rules.size(), 4u);
  EXPECT_EQ(rules[0].where, faults::point::worker_decode_task);
  EXPECT_EQ(rules[0].what, faults::action::crash);
  EXPECT_DOUBLE_EQ(rules[0].probability, 0.01);
  EXPECT_EQ(rules[1].where, faults::point::queue_put);
  EXPECT_EQ(rules[1].what, faults::action::exit);
  EXPECT_EQ(rules[1].after, 100u);
  EXPECT_EQ(rules[1].code, 3);
  EXPECT_EQ(rules[2].what, faults::action::fail);
  EXPECT_EQ(rules[2].times, 2u);
  EXPECT_EQ(rules[3].seed, 7u);
  EXPECT_EQ(rules[3].signal, 6);
  const char* names[] = {"parent.encode_task", "worker.decode_task",
                         "worker.run_task",    "worker.encode_result",
                         "parent.decode_result", "queue.put",
                         "queue.get",          "spawn",
                         "child.start"};
  for (size_t i = 0; i < faults::num_points; ++i) {
    EXPECT_EQ(std::string{faults::to_string(static_cast<faults::point>(i))},
              names[i]);
    ASSERT_FALSE(faults::parse(std::string{names[i]} + ":throw", rules));
  }
}

TEST_F(FaultSpec, RoundTripsThroughToSpec) {
  configure("queue.get:exit:after=4:code=9,spawn:throw:p=0.25:seed=3");
  auto spec = faults::to_spec();
  EXPECT_EQ(spec, "queue.get:exit:after=4:code=9,spawn:throw:p=0.25:seed=3");
  configure(spec);
  EXPECT_EQ(faults::to_spec(), spec);
  // Children get seeds anywhere in 64 bits.
  configure("queue.get:throw:seed=18446744073709551615");
  EXPECT_EQ(faults::to_spec(), "queue.get:throw:seed=18446744073709551615");
  EXPECT_TRUE(faults::configure("queue.get:throw:seed=18446744073709551616"));
}

TEST_F(FaultSpec, RejectsMalformedRulesNamingWhatIsWrong) {
  std::vector<faults::rule> rules;
  struct bad_case {
    const char* spec;
    const char* says;
  } cases[] = {
    {"queue.put", "expected <point>:<action>"},
    {"queue.push:throw", "unknown point 'queue.push'"},
    {"queue.put:explode", "unknown action 'explode'"},
    {"queue.put:throw:p=2", "not a number in [0, 1]"},
    {"queue.put:throw:after=-1", "not an unsigned number"},
    {"queue.put:throw:often=3", "unknown option 'often'"},
    {"queue.put:exit:code=300", "at most 255"},
  };
  for (auto& c : cases) {
    auto err = faults::parse(c.spec, rules);
    EXPECT_EQ(err, errc::invalid_argument) << c.spec;
    EXPECT_NE(describe(err).find(c.says), std::string::npos)
      << c.spec << ": " << describe(err);
  }
  // A failed configure() leaves the rules as they were.
  configure("queue.put:throw");
  EXPECT_TRUE(faults::configure("queue.put:nope"));
  EXPECT_EQ(faults::to_spec(), "queue.put:throw");
}

TEST_F(FaultSpec, AfterAndTimesPickTheCallsThatFire) {
  configure("queue.put:throw:after=2:times=3");
  std::vector<int> fired;
  for (int call = 1; call <= 8; ++call)
    if (faults::check(faults::point::queue_put))
      fired.push_back(call);
  EXPECT_EQ(fired, (std::vector<int>{3, 4, 5}));
  EXPECT_EQ(faults::fired(faults::point::queue_put), 3u);
}

TEST_F(FaultSpec, AProbabilityWithASeedFiresAtTheSameCallsEveryRun) {
  auto calls = [] {
    std::vector<int> fired;
    for (int call = 1; call <= 1000; ++call)
      if (faults::check(faults::point::queue_get))
        fired.push_back(call);
    return fired;
  };
  configure("queue.get:throw:p=0.1:seed=42");
  auto first = calls();
  configure("queue.get:throw:p=0.1:seed=42");
  EXPECT_EQ(calls(), first);
  EXPECT_GT(first.size(), 50u);
  EXPECT_LT(first.size(), 150u);
  configure("queue.get:throw:p=0.1:seed=43");
  EXPECT_NE(calls(), first);
}

TEST_F(FaultSpec, AMalformedEnvironmentVariableEndsAChildWithCode2) {
  // A spawned child parses MULTIPROC_FAULTS in bootstrap(), like any
  // multiproc program, before anything else.
  ::setenv("MULTIPROC_FAULTS", "queue.put:bogus", 1);
  auto opts = quiet();
  opts.method = start_method::spawn;
  auto child = start_process("faults_test.idle", "", opts);
  ::unsetenv("MULTIPROC_FAULTS");
  ASSERT_TRUE(child) << describe(child.error());
  auto st = child->join(10s);
  ASSERT_TRUE(st);
  EXPECT_EQ(st->to_string(), "exited with code 2");
}

// -- queue.put, queue.get ---------------------------------------------------------

TEST_F(FaultQueue, PutThrowFailsWithEncodeFailedAndPutsNothing) {
  auto q = queue<int32_t>::create();
  ASSERT_TRUE(q);
  configure("queue.put:throw:after=2:times=1");
  EXPECT_FALSE(q->put(1));
  EXPECT_FALSE(q->put(2));
  auto err = q->put(3);
  EXPECT_EQ(err, errc::encode_failed);
  EXPECT_NE(describe(err).find("injected fault at queue.put"),
            std::string::npos)
    << describe(err);
  EXPECT_FALSE(q->put(4));
  std::vector<int32_t> got;
  while (auto x = q->try_get())
    got.push_back(*x);
  EXPECT_EQ(got, (std::vector<int32_t>{1, 2, 4}));
}

TEST_F(FaultQueue, GetThrowFailsWithDecodeFailedAndConsumesTheMessage) {
  auto q = queue<int32_t>::create();
  ASSERT_TRUE(q);
  for (int32_t i = 1; i <= 4; ++i)
    ASSERT_FALSE(q->put(i));
  configure("queue.get:throw:after=1:times=1");
  auto a = q->try_get();
  auto b = q->try_get();
  auto c = q->try_get();
  auto d = q->try_get();
  ASSERT_TRUE(a);
  EXPECT_EQ(*a, 1);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error(), errc::decode_failed);
  EXPECT_NE(describe(b.error()).find("queue.get"), std::string::npos);
  ASSERT_TRUE(c);
  EXPECT_EQ(*c, 3);
  ASSERT_TRUE(d);
  EXPECT_EQ(*d, 4);
  EXPECT_EQ(q->try_get().error(), errc::empty);
}

TEST_F(FaultQueue, ACrashInGetLeadsToRedeliveryOfTheLeasedMessage) {
  queue_options qo;
  qo.batching = false;
  auto q = queue<int32_t>::create(qo);
  ASSERT_TRUE(q);
  for (int32_t i = 1; i <= 5; ++i)
    ASSERT_FALSE(q->put(i));
  // The consumer inherits the rule: its third get takes 3, then it dies.
  configure("queue.get:crash:after=2");
  auto child = start_process("faults_test.consumer", "", quiet({q->fd()}));
  faults::clear();
  ASSERT_TRUE(child) << describe(child.error());
  auto st = child->join(10s);
  ASSERT_TRUE(st);
  EXPECT_EQ(st->to_string(), "killed by SIGKILL");
  q->recover(child->pid());
  std::vector<int32_t> got;
  std::vector<uint32_t> deliveries;
  while (auto x = q->get(2s)) {
    got.push_back(*x);
    deliveries.push_back(q->last_deliveries());
    if (got.size() == 3)
      break;
  }
  EXPECT_EQ(got, (std::vector<int32_t>{3, 4, 5}));
  EXPECT_EQ(deliveries, (std::vector<uint32_t>{2, 1, 1}));
}

TEST_F(FaultQueue, AnExitInPutEndsTheProducerWithItsCodeAfterWhatItPut) {
  auto q = queue<int32_t>::create();
  ASSERT_TRUE(q);
  configure("queue.put:exit:after=3:code=42");
  auto child = start_process("faults_test.producer", "", quiet({q->fd()}));
  faults::clear();
  ASSERT_TRUE(child) << describe(child.error());
  auto st = child->join(10s);
  ASSERT_TRUE(st);
  EXPECT_EQ(st->to_string(), "exited with code 42");
  std::vector<int32_t> got;
  while (auto x = q->get(200ms))
    got.push_back(*x);
  EXPECT_EQ(got, (std::vector<int32_t>{1, 2, 3}));
}

// -- spawn -----------------------------------------------------------------------

TEST_F(FaultSpawn, ThrowFailsStartProcessWithSpawnFailedNamingTheFault) {
  configure("spawn:throw:after=1:times=1");
  auto first = start_process("faults_test.idle", "", quiet());
  auto second = start_process("faults_test.idle", "", quiet());
  auto third = start_process("faults_test.idle", "", quiet());
  ASSERT_TRUE(first) << describe(first.error());
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error(), errc::spawn_failed);
  EXPECT_NE(describe(second.error()).find("injected fault at spawn"),
            std::string::npos)
    << describe(second.error());
  ASSERT_TRUE(third) << describe(third.error());
  EXPECT_EQ(first->join(10s)->to_string(), "exited with code 0");
  EXPECT_EQ(third->join(10s)->to_string(), "exited with code 0");
}

TEST_F(FaultSpawn, CrashAndExitEndTheChildRightAfterItStarts) {
  for (auto method : available_start_methods()) {
    if (method == start_method::fork)
      continue; // refused: this process runs threads
    SCOPED_TRACE(to_string(method));
    configure("spawn:crash:times=1,queue.put:throw:after=7");
    auto opts = quiet();
    opts.method = method;
    auto crashed = start_process("faults_test.idle", "", opts);
    auto fine = start_process("faults_test.idle", "", opts);
    configure("spawn:exit:code=9");
    auto exited = start_process("faults_test.idle", "", opts);
    faults::clear();
    ASSERT_TRUE(crashed && fine && exited);
    EXPECT_EQ(crashed->join(10s)->to_string(), "killed by SIGKILL");
    EXPECT_EQ(fine->join(10s)->to_string(), "exited with code 0");
    EXPECT_EQ(exited->join(10s)->to_string(), "exited with code 9");
  }
}

} // namespace
