// Tests the fault points of the pool and the worker (runtime/faults, hooked
// in actors/): each point with each action does what docs/reliability.md
// says, and the pool's guarantees hold under it — every result exactly once,
// crashes absorbed by the ledger. Rules count calls (after=, times=) or draw
// from a fixed seed, so a run fires at the same calls of each worker; every
// test is bounded by a watchdog and stops its pool.
#include "multiproc/faults.hpp"

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <caf/all.hpp>

#include "multiproc/pool.hpp"
#include "multiproc/worker.hpp"

using namespace multiproc;
using namespace std::chrono_literals;

namespace faults_test {

struct sq {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

caf::behavior squarer(caf::event_based_actor*) {
  return {[](const sq& x) { return x.value * x.value; }};
}

int32_t square_fn(const sq& x) {
  return x.value * x.value;
}

} // namespace faults_test

MULTIPROC_MESSAGE(faults_test::sq, "faults_test.sq")
MULTIPROC_WORKER("faults_test.squarer", faults_test::squarer)
MULTIPROC_TASK_WORKER("faults_test.square_fn", faults_test::square_fn)

namespace {

using faults_test::sq;

/// Aborts the test binary if a test runs for longer than `limit`.
class watchdog {
public:
  explicit watchdog(std::chrono::seconds limit) {
    thread_ = std::thread{[this, limit] {
      std::unique_lock<std::mutex> lk{mu_};
      if (cv_.wait_for(lk, limit, [this] { return done_; }))
        return;
      std::fprintf(stderr, "faults_test watchdog: still running after %lld "
                           "s: a hang; aborting\n",
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

/// The entries every behavior test runs over: a behavior and a task worker.
const char* const entries[] = {"faults_test.squarer", "faults_test.square_fn"};

class FaultPool : public testing::Test {
protected:
  void TearDown() override {
    faults::clear();
  }

  static void configure(const std::string& spec) {
    ASSERT_FALSE(faults::configure(spec)) << spec;
  }

  static pool_options options(size_t workers) {
    pool_options opts;
    opts.workers = workers;
    opts.sink = [](const output_line&) {};
    return opts;
  }

  static std::vector<sq> tasks(int32_t n) {
    std::vector<sq> xs;
    for (int32_t i = 0; i < n; ++i)
      xs.push_back(sq{i});
    return xs;
  }

  /// Indexes of the results that failed; checks that the others are right.
  static std::vector<size_t>
  failures(const std::vector<caf::expected<int32_t>>& ys, errc code,
           const char* point) {
    std::vector<size_t> failed;
    for (size_t i = 0; i < ys.size(); ++i) {
      auto x = static_cast<int32_t>(i);
      if (ys[i]) {
        EXPECT_EQ(*ys[i], x * x) << "task " << i;
        continue;
      }
      failed.push_back(i);
      EXPECT_EQ(ys[i].error(), code) << describe(ys[i].error());
      EXPECT_NE(describe(ys[i].error()).find(point), std::string::npos)
        << describe(ys[i].error());
    }
    return failed;
  }

  watchdog dog_{50s};
  caf::actor_system_config cfg_;
  caf::actor_system sys_{cfg_};
};

// -- crashes and exits: the ledger runs the lost tasks again ---------------------

TEST_F(FaultPool, ADecodeCrashAtAProbabilityStillReturnsEveryResultOnce) {
  for (auto entry : entries) {
    SCOPED_TRACE(entry);
    // Each worker (and each replacement) draws from its own stream of the
    // seed: about one task in a hundred kills its worker.
    configure("worker.decode_task:crash:p=0.01:seed=42");
    auto opts = options(2);
    opts.max_attempts = 10;
    auto p = pool::start(sys_, entry, opts);
    ASSERT_TRUE(p) << describe(p.error());
    auto ys = p->map<int32_t>(tasks(2000));
    ASSERT_EQ(ys.size(), 2000u);
    EXPECT_TRUE(failures(ys, errc::none, "").empty());
    auto st = p->stats();
    EXPECT_EQ(st.succeeded, 2000u);
    EXPECT_EQ(st.failed, 0u);
    EXPECT_GE(st.workers_died, 5u);
    EXPECT_GT(st.redispatched, 0u);
    p->close();
    faults::clear();
  }
}

TEST_F(FaultPool, AnExitWhileRunningIsADeathAndTheTaskRunsAgain) {
  for (auto entry : entries) {
    SCOPED_TRACE(entry);
    // Every worker exits with code 3 at its sixth task.
    configure("worker.run_task:exit:after=5:code=3");
    auto opts = options(1);
    opts.window = 1;
    auto p = pool::start(sys_, entry, opts);
    ASSERT_TRUE(p) << describe(p.error());
    auto ys = p->map<int32_t>(tasks(20), 1);
    EXPECT_TRUE(failures(ys, errc::none, "").empty());
    EXPECT_EQ(p->stats().workers_died, 3u); // at tasks 5, 10 and 15
    p->close();
    faults::clear();
  }
}

TEST_F(FaultPool, ACrashOnEveryRunQuarantinesTheTaskNamingTheFault) {
  configure("worker.run_task:crash");
  auto opts = options(1);
  opts.max_attempts = 2;
  auto p = pool::start(sys_, "faults_test.square_fn", opts);
  ASSERT_TRUE(p) << describe(p.error());
  auto y = p->apply<int32_t>(sq{3}, 30s);
  ASSERT_FALSE(y);
  EXPECT_EQ(y.error(), errc::task_quarantined);
  auto text = describe(y.error());
  EXPECT_NE(text.find("killed by SIGKILL"), std::string::npos) << text;
  EXPECT_NE(text.find("injected fault at worker.run_task"), std::string::npos)
    << text; // the dead worker's stderr tail
  p->terminate();
}

// -- throw: the boundary reports an error for that task only ---------------------

TEST_F(FaultPool, ADecodeThrowFailsThatTaskWithDecodeFailed) {
  for (auto entry : entries) {
    for (size_t chunksize : {size_t{1}, size_t{0}}) {
      SCOPED_TRACE(std::string{entry} + " chunksize "
                   + std::to_string(chunksize));
      configure("worker.decode_task:throw:after=5:times=1");
      auto p = pool::start(sys_, entry, options(1));
      ASSERT_TRUE(p) << describe(p.error());
      auto ys = p->map<int32_t>(tasks(40), chunksize);
      EXPECT_EQ(failures(ys, errc::decode_failed, "worker.decode_task"),
                std::vector<size_t>{5});
      EXPECT_EQ(p->stats().workers_died, 0u);
      p->close();
      faults::clear();
    }
  }
}

TEST_F(FaultPool, ARunThrowFailsThatTaskWithWorkerException) {
  for (auto entry : entries) {
    for (size_t chunksize : {size_t{1}, size_t{0}}) {
      SCOPED_TRACE(std::string{entry} + " chunksize "
                   + std::to_string(chunksize));
      configure("worker.run_task:throw:after=3:times=1");
      auto p = pool::start(sys_, entry, options(1));
      ASSERT_TRUE(p) << describe(p.error());
      auto ys = p->map<int32_t>(tasks(40), chunksize);
      EXPECT_EQ(failures(ys, errc::worker_exception, "injected_fault"),
                std::vector<size_t>{3});
      EXPECT_EQ(p->stats().workers_died, 0u);
      p->close();
      faults::clear();
    }
  }
}

TEST_F(FaultPool, AnEncodeResultThrowFailsThatTaskWithEncodeFailed) {
  for (auto entry : entries) {
    for (size_t chunksize : {size_t{1}, size_t{0}}) {
      SCOPED_TRACE(std::string{entry} + " chunksize "
                   + std::to_string(chunksize));
      configure("worker.encode_result:throw:after=7:times=1");
      auto p = pool::start(sys_, entry, options(1));
      ASSERT_TRUE(p) << describe(p.error());
      auto ys = p->map<int32_t>(tasks(40), chunksize);
      EXPECT_EQ(failures(ys, errc::encode_failed, "worker.encode_result"),
                std::vector<size_t>{7});
      p->close();
      faults::clear();
    }
  }
}

TEST_F(FaultPool, AnEncodeTaskThrowFailsThatTaskAtOnce) {
  for (size_t chunksize : {size_t{1}, size_t{0}}) {
    SCOPED_TRACE(chunksize);
    auto p = pool::start(sys_, "faults_test.square_fn", options(1));
    ASSERT_TRUE(p) << describe(p.error());
    configure("parent.encode_task:throw:after=4:times=1");
    auto ys = p->map<int32_t>(tasks(40), chunksize);
    EXPECT_EQ(failures(ys, errc::encode_failed, "parent.encode_task"),
              std::vector<size_t>{4});
    faults::clear();
    p->close();
  }
}

TEST_F(FaultPool, ADecodeResultThrowFailsThatTaskWithDecodeFailed) {
  for (size_t chunksize : {size_t{1}, size_t{0}}) {
    SCOPED_TRACE(chunksize);
    auto p = pool::start(sys_, "faults_test.square_fn", options(1));
    ASSERT_TRUE(p) << describe(p.error());
    configure("parent.decode_result:throw:after=9:times=1");
    auto ys = p->map<int32_t>(tasks(40), chunksize);
    auto failed = failures(ys, errc::decode_failed, "parent.decode_result");
    EXPECT_EQ(failed.size(), 1u); // results are decoded as they arrive
    faults::clear();
    p->close();
  }
}

TEST_F(FaultPool, RequestsToAWorkerFailAtTheParentsPoints) {
  auto w = spawn_worker(sys_, "faults_test.squarer");
  ASSERT_TRUE(w) << describe(w.error());
  configure("parent.encode_task:throw:times=1,"
            "parent.decode_result:throw:after=1:times=1");
  auto a = request<int32_t>(*w, 5s, sq{2}); // encode fails
  auto b = request<int32_t>(*w, 5s, sq{3}); // decode passes (call 1)
  auto c = request<int32_t>(*w, 5s, sq{4}); // decode fails
  faults::clear();
  ASSERT_FALSE(a);
  EXPECT_EQ(a.error(), errc::encode_failed);
  ASSERT_TRUE(b) << describe(b.error());
  EXPECT_EQ(*b, 9);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error(), errc::decode_failed);
  EXPECT_EQ(stop_worker(*w)->to_string(), "exited with code 0");
}

// -- spawn -----------------------------------------------------------------------

TEST_F(FaultPool, SpawnFailuresBreakThePoolNamingTheFault) {
  configure("spawn:throw");
  auto p = pool::start(sys_, "faults_test.square_fn", options(2));
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error(), errc::pool_broken);
  EXPECT_NE(describe(p.error()).find("injected fault at spawn"),
            std::string::npos)
    << describe(p.error());
}

TEST_F(FaultPool, AWorkerThatCrashesRightAfterStartFailsSpawnWorker) {
  configure("spawn:crash:times=1");
  auto w = spawn_worker(sys_, "faults_test.squarer");
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error(), errc::spawn_failed) << describe(w.error());
  // The next one starts: the rule fired once.
  auto v = spawn_worker(sys_, "faults_test.squarer");
  ASSERT_TRUE(v) << describe(v.error());
  EXPECT_EQ(stop_worker(*v)->to_string(), "exited with code 0");
}

TEST_F(FaultPool, APoolReplacesWorkersThatCrashRightAfterStart) {
  // The second and third workers die before their hello; the pool starts
  // others (fewer than max_start_failures in a row) and runs every task.
  configure("spawn:crash:after=1:times=2");
  auto opts = options(2);
  opts.max_start_failures = 3;
  auto p = pool::start(sys_, "faults_test.square_fn", opts);
  ASSERT_TRUE(p) << describe(p.error());
  auto ys = p->map<int32_t>(tasks(100));
  EXPECT_TRUE(failures(ys, errc::none, "").empty());
  p->close();
}

} // namespace
