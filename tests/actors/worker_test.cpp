// Tests actors/worker: worker actors in real child processes (the test binary
// is its own child), over every start method.
#include "multiproc/worker.hpp"

#include <csignal>
#include <future>
#include <thread>
#include <tuple>

#include <gtest/gtest.h>
#include <unistd.h>

#include <caf/all.hpp>
#include <cereal/types/string.hpp>

#include "test_util.hpp"

using namespace multiproc;
using namespace multiproc::test;
using namespace std::chrono_literals;

namespace worker_test {

struct square {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

struct crash_now {
  int32_t signal = SIGSEGV;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(signal);
  }
};

struct throw_now {
  std::string text;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(text);
  }
};

struct sleep_ms {
  int32_t ms = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(ms);
  }
};

struct unencodable {
  template <class Archive>
  void save(Archive&) const {
    throw std::runtime_error("this result cannot be encoded");
  }
  template <class Archive>
  void load(Archive&) {
  }
};

struct make_unencodable {
  template <class Archive>
  void serialize(Archive&) {
  }
};

struct make_text {
  int64_t size = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(size);
  }
};

struct store {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

struct fetch {
  template <class Archive>
  void serialize(Archive&) {
  }
};

struct counter_state {
  int32_t value = 0;
};

struct sequence_report {
  int32_t last = 0;
  int32_t out_of_order = 0;
  int32_t awaited = 0;
  int32_t ticks = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(last, out_of_order, awaited, ticks);
  }
};

struct sequencer_state {
  sequence_report report;
  caf::actor helper;
};

} // namespace worker_test

MULTIPROC_MESSAGE(worker_test::square, "worker_test.square")
MULTIPROC_MESSAGE(worker_test::crash_now, "worker_test.crash_now")
MULTIPROC_MESSAGE(worker_test::throw_now, "worker_test.throw_now")
MULTIPROC_MESSAGE(worker_test::sleep_ms, "worker_test.sleep_ms")
MULTIPROC_MESSAGE(worker_test::unencodable, "worker_test.unencodable")
MULTIPROC_MESSAGE(worker_test::make_unencodable, "worker_test.make_unencodable")
MULTIPROC_MESSAGE(worker_test::make_text, "worker_test.make_text")
MULTIPROC_MESSAGE(worker_test::store, "worker_test.store")
MULTIPROC_MESSAGE(worker_test::fetch, "worker_test.fetch")
MULTIPROC_MESSAGE(worker_test::sequence_report, "worker_test.sequence_report")

namespace worker_test {

caf::behavior tester(caf::event_based_actor*) {
  return {
    [](const square& x) { return x.value * x.value; },
    [](const crash_now& x) -> int32_t {
      std::signal(x.signal, SIG_DFL);
      std::raise(x.signal);
      return 0;
    },
    [](const throw_now& x) -> int32_t { throw std::runtime_error(x.text); },
    [](const sleep_ms& x) {
      std::this_thread::sleep_for(std::chrono::milliseconds{x.ms});
      return x.ms;
    },
    [](const make_unencodable&) { return unencodable{}; },
    [](const make_text& x) {
      return std::string(static_cast<size_t>(x.size), 't');
    },
  };
}

caf::behavior keeper(caf::stateful_actor<counter_state>* self) {
  return {
    [self](const store& x) { self->state.value = x.value; },
    [self](const fetch&) { return self->state.value; },
  };
}

using tick_atom = caf::atom_constant<caf::atom("tick")>;

// Checks that stores arrive in sending order while the worker also gets
// messages from actors of its own process, and now and then awaits a
// response from one of them (the parent's messages wait meanwhile).
caf::behavior sequencer(caf::stateful_actor<sequencer_state>* self) {
  self->state.helper = self->spawn([](caf::event_based_actor*) -> caf::behavior {
    return {[](int32_t x) {
      std::this_thread::sleep_for(std::chrono::milliseconds{1});
      return x;
    }};
  });
  auto worker = caf::actor_cast<caf::actor>(self);
  self->spawn([worker](caf::event_based_actor* ticker) -> caf::behavior {
    ticker->send(ticker, tick_atom::value);
    return {[=](tick_atom) {
      ticker->send(worker, tick_atom::value);
      ticker->delayed_send(ticker, std::chrono::milliseconds{1},
                           tick_atom::value);
    }};
  });
  return {
    [self](const store& x) {
      auto& r = self->state.report;
      if (x.value != r.last + 1)
        ++r.out_of_order;
      r.last = x.value;
      if (x.value % 500 == 0)
        self->request(self->state.helper, caf::infinite, x.value)
          .await([self](int32_t) { ++self->state.report.awaited; });
    },
    [self](tick_atom) { ++self->state.report.ticks; },
    [self](const fetch&) { return self->state.report; },
  };
}

} // namespace worker_test

MULTIPROC_WORKER("worker_test.tester", worker_test::tester)
MULTIPROC_WORKER("worker_test.keeper", worker_test::keeper)
MULTIPROC_WORKER("worker_test.sequencer", worker_test::sequencer)

using worker_test::square;

namespace {

/// Every test runs over each start method and each transport.
class WorkerTest
  : public testing::TestWithParam<std::tuple<start_method, worker_transport>> {
protected:
  /// The options of this run's start method and transport.
  static worker_options param_options(worker_options opts = {}) {
    opts.method = std::get<0>(GetParam());
    opts.transport = std::get<1>(GetParam());
    return opts;
  }

  caf::actor spawn(const std::string& entry, worker_options opts = {}) {
    opts = param_options(std::move(opts));
    auto worker = spawn_worker(sys, entry, opts);
    EXPECT_TRUE(worker) << describe(worker.error());
    if (!worker)
      return {};
    workers.push_back(*worker);
    return *worker;
  }

  void TearDown() override {
    for (auto& w : workers)
      [[maybe_unused]] auto st = kill_worker(w);
    workers.clear();
  }

  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  std::vector<caf::actor> workers;
};

std::string param_name(
  const testing::TestParamInfo<WorkerTest::ParamType>& info) {
  auto transport = std::get<1>(info.param) == worker_transport::socket
                     ? "Socket"
                     : "SharedMemory";
  return std::string{to_string(std::get<0>(info.param))} + transport;
}

} // namespace

TEST_P(WorkerTest, RepliesToTypedRequestsFromAnEventBasedActor) {
  auto worker = spawn("worker_test.tester");
  ASSERT_TRUE(worker);
  auto result = std::make_shared<std::promise<int32_t>>();
  auto future = result->get_future();
  sys.spawn([worker, result](caf::event_based_actor* self) {
    self->request(worker, 5s, square{12})
      .then([result](int32_t y) { result->set_value(y); },
            [result](caf::error& err) {
              result->set_exception(std::make_exception_ptr(
                std::runtime_error(describe(err))));
            });
  });
  ASSERT_EQ(future.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(future.get(), 144);
}

TEST_P(WorkerTest, RepliesToRequestsFromAScopedActor) {
  auto worker = spawn("worker_test.tester");
  ASSERT_TRUE(worker);
  caf::scoped_actor self{sys};
  int32_t got = 0;
  self->request(worker, 5s, square{9})
    .receive([&](int32_t y) { got = y; },
             [&](caf::error& err) { FAIL() << describe(err); });
  EXPECT_EQ(got, 81);
}

TEST_P(WorkerTest, RepliesToBlockingRequestsFromPlainCode) {
  auto worker = spawn("worker_test.tester");
  ASSERT_TRUE(worker);
  for (int32_t i = 0; i < 100; ++i) {
    auto y = request<int32_t>(worker, 5s, square{i});
    ASSERT_TRUE(y) << describe(y.error());
    EXPECT_EQ(*y, i * i);
  }
}

TEST_P(WorkerTest, ReportsAnExceptionAndKeepsServing) {
  auto worker = spawn("worker_test.tester");
  ASSERT_TRUE(worker);
  auto pid = info_of(worker)->pid;
  auto r = request<int32_t>(worker, 5s, worker_test::throw_now{"bad input"});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::worker_exception);
  auto text = text_of(r.error());
  EXPECT_NE(text.find("std::runtime_error"), std::string::npos) << text;
  EXPECT_NE(text.find("bad input"), std::string::npos) << text;
  EXPECT_NE(text.find("worker_test.tester[" + std::to_string(pid) + "]"),
            std::string::npos)
    << text;
  auto y = request<int32_t>(worker, 5s, square{3});
  ASSERT_TRUE(y) << describe(y.error());
  EXPECT_EQ(*y, 9);
}

TEST_P(WorkerTest, FailsInFlightRequestsAtOnceWhenTheChildCrashes) {
  auto worker = spawn("worker_test.tester");
  ASSERT_TRUE(worker);
  auto pid = info_of(worker)->pid;
  // One request is queued behind a slow one, then the child crashes.
  auto start = std::chrono::steady_clock::now();
  auto slow = std::async(std::launch::async, [&] {
    return request<int32_t>(worker, 30s, worker_test::sleep_ms{200});
  });
  std::this_thread::sleep_for(50ms);
  auto crash = request<int32_t>(worker, 30s, worker_test::crash_now{SIGSEGV});
  ASSERT_FALSE(crash);
  EXPECT_EQ(crash.error(), errc::worker_died);
  EXPECT_EQ(text_of(crash.error()), "worker worker_test.tester["
                                      + std::to_string(pid)
                                      + "] killed by SIGSEGV");
  auto slow_result = slow.get();
  // The slow one finished before the crash was processed (same mailbox).
  EXPECT_TRUE(slow_result) << describe(slow_result.error());
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  // Later requests fail at once with the same error.
  auto later = request<int32_t>(worker, 30s, square{1});
  ASSERT_FALSE(later);
  EXPECT_EQ(later.error(), errc::worker_died);
}

TEST_P(WorkerTest, FailsAPendingActorRequestWhenTheChildIsKilled) {
  auto worker = spawn("worker_test.tester");
  ASSERT_TRUE(worker);
  auto pid = info_of(worker)->pid;
  caf::scoped_actor self{sys};
  auto start = std::chrono::steady_clock::now();
  caf::error got;
  std::thread killer{[pid] {
    std::this_thread::sleep_for(100ms);
    ::kill(pid, SIGKILL);
  }};
  self->request(worker, 60s, worker_test::sleep_ms{5000})
    .receive([&](int32_t) { FAIL() << "the request should fail"; },
             [&](caf::error& err) { got = err; });
  killer.join();
  EXPECT_EQ(got, errc::worker_died);
  EXPECT_NE(text_of(got).find("killed by SIGKILL"), std::string::npos)
    << describe(got);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
}

TEST_P(WorkerTest, MonitorsGetADownMessageNamingTheSignal) {
  auto worker = spawn("worker_test.tester");
  ASSERT_TRUE(worker);
  caf::scoped_actor self{sys};
  self->monitor(worker);
  ASSERT_TRUE(info_of(worker));
  ::kill(info_of(worker)->pid, SIGTERM);
  caf::error reason;
  self->receive([&](caf::down_msg& dm) { reason = dm.reason; },
                caf::after(10s) >> [] { FAIL() << "no down message"; });
  EXPECT_EQ(reason, errc::worker_died);
  EXPECT_NE(text_of(reason).find("killed by SIGTERM"), std::string::npos)
    << describe(reason);
}

TEST_P(WorkerTest, TimesOutARequestThatTakesTooLong) {
  auto worker = spawn("worker_test.tester");
  ASSERT_TRUE(worker);
  auto r = request<int32_t>(worker, 100ms, worker_test::sleep_ms{1000});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::timeout);
  EXPECT_NE(text_of(r.error()).find("100 ms"), std::string::npos);
  // The late reply is dropped; the worker keeps serving.
  auto y = request<int32_t>(worker, 5s, square{4});
  ASSERT_TRUE(y) << describe(y.error());
  EXPECT_EQ(*y, 16);
}

TEST_P(WorkerTest, FailsOnlyTheRequestWhoseResultCannotBeEncoded) {
  auto worker = spawn("worker_test.tester");
  ASSERT_TRUE(worker);
  auto r = request<worker_test::unencodable>(worker, 5s,
                                             worker_test::make_unencodable{});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::encode_failed);
  EXPECT_NE(text_of(r.error()).find("this result cannot be encoded"),
            std::string::npos);
  auto y = request<int32_t>(worker, 5s, square{5});
  ASSERT_TRUE(y) << describe(y.error());
  EXPECT_EQ(*y, 25);
}

TEST_P(WorkerTest, AReplyAboveTheParentsFrameLimitFailsOnlyThatRequest) {
  // The child's end of the channel takes the parent's limit: it refuses to
  // send the reply (instead of the parent dropping the whole channel).
  worker_options opts;
  opts.channel.max_frame_size = size_t{1} << 20;
  auto worker = spawn("worker_test.tester", opts);
  ASSERT_TRUE(worker);
  auto small = request<std::string>(worker, 5s, worker_test::make_text{1000});
  ASSERT_TRUE(small) << describe(small.error());
  EXPECT_EQ(small->size(), 1000u);
  auto big = request<std::string>(worker, 5s,
                                  worker_test::make_text{int64_t{2} << 20});
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error(), errc::frame_too_large) << describe(big.error());
  auto y = request<int32_t>(worker, 5s, square{6});
  ASSERT_TRUE(y) << describe(y.error());
  EXPECT_EQ(*y, 36);
}

TEST_P(WorkerTest, StopsBusyPollingWhenRequestsStop) {
  // busy_poll keeps the child's I/O thread polling between back-to-back
  // requests; once they stop, it must sleep and cost no CPU.
  worker_options opts;
  opts.busy_poll = std::chrono::microseconds{2000};
  auto worker = spawn("worker_test.tester", opts);
  ASSERT_TRUE(worker);
  for (int32_t i = 0; i < 2000; ++i) {
    auto y = request<int32_t>(worker, 5s, square{i});
    ASSERT_TRUE(y) << describe(y.error());
    ASSERT_EQ(*y, i * i);
  }
  auto pid = info_of(worker)->pid;
  std::this_thread::sleep_for(100ms);
  auto before = cpu_ticks(pid);
  std::this_thread::sleep_for(1000ms);
  auto used = cpu_ticks(pid) - before;
  // Polling through that second would take about 100 ticks.
  long tick_hz = ::sysconf(_SC_CLK_TCK);
  EXPECT_LE(used, tick_hz / 20) << "the idle child used " << used
                                << " ticks of CPU in 1 s";
  auto y = request<int32_t>(worker, 5s, square{7});
  ASSERT_TRUE(y) << describe(y.error());
  EXPECT_EQ(*y, 49);
}

TEST_P(WorkerTest, RejectsAMismatchedTypeFingerprint) {
  auto opts = param_options();
  opts.extra_child_types = {"only.in.the.child"};
  auto worker = spawn_worker(sys, "worker_test.tester", opts);
  ASSERT_FALSE(worker);
  EXPECT_EQ(worker.error(), errc::fingerprint_mismatch);
  EXPECT_NE(text_of(worker.error()).find("only.in.the.child"),
            std::string::npos)
    << describe(worker.error());
}

TEST_P(WorkerTest, KeepsStateBetweenMessages) {
  auto worker = spawn("worker_test.keeper");
  ASSERT_TRUE(worker);
  caf::anon_send(worker, worker_test::store{99});
  auto y = request<int32_t>(worker, 5s, worker_test::fetch{});
  ASSERT_TRUE(y) << describe(y.error());
  EXPECT_EQ(*y, 99);
}

TEST_P(WorkerTest, DeliversFireAndForgetMessagesInOrder) {
  auto worker = spawn("worker_test.keeper");
  ASSERT_TRUE(worker);
  for (int32_t i = 1; i <= 10000; ++i)
    ASSERT_FALSE(send(worker, worker_test::store{i}));
  auto y = request<int32_t>(worker, 10s, worker_test::fetch{});
  ASSERT_TRUE(y) << describe(y.error());
  EXPECT_EQ(*y, 10000);
}

TEST_P(WorkerTest, KeepsTheParentsOrderAmidLocalMessagesAndAwaits) {
  auto worker = spawn("worker_test.sequencer");
  ASSERT_TRUE(worker);
  // The stores go in four batches, and before the next one the test waits
  // until the worker has had another tick from its own ticker actor: local
  // messages certainly come between the parent's, however fast either side
  // runs (under ASan the ticker may start only after a whole batch is done).
  constexpr int32_t n = 20000;
  constexpr int32_t batches = 4;
  int32_t ticks_seen = 0;
  for (int32_t b = 0; b < batches; ++b) {
    for (int32_t i = b * (n / batches) + 1; i <= (b + 1) * (n / batches); ++i)
      ASSERT_FALSE(send(worker, worker_test::store{i}));
    auto deadline = std::chrono::steady_clock::now() + 30s;
    for (;;) {
      auto mid = request<worker_test::sequence_report>(worker, 30s,
                                                       worker_test::fetch{});
      ASSERT_TRUE(mid) << describe(mid.error());
      EXPECT_EQ(mid->last, (b + 1) * (n / batches)); // the batch came first
      if (mid->ticks > ticks_seen) {
        ticks_seen = mid->ticks;
        break;
      }
      ASSERT_LT(std::chrono::steady_clock::now(), deadline)
        << "the worker's ticker sent no tick within 30 s";
      std::this_thread::sleep_for(1ms);
    }
  }
  auto r = request<worker_test::sequence_report>(worker, 30s,
                                                 worker_test::fetch{});
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(r->last, n);
  EXPECT_EQ(r->out_of_order, 0);
  EXPECT_EQ(r->awaited, n / 500);
  EXPECT_GE(r->ticks, ticks_seen);
  EXPECT_GE(ticks_seen, batches);
}

TEST_P(WorkerTest, StopsCleanlyOnRequest) {
  auto worker = spawn("worker_test.tester");
  ASSERT_TRUE(worker);
  auto st = stop_worker(worker);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_TRUE(st->success()) << st->to_string();
  auto r = request<int32_t>(worker, 1s, square{2});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::worker_died);
}

TEST_P(WorkerTest, AnswersAnUnhandledMessageWithAnError) {
  auto worker = spawn("worker_test.keeper");
  ASSERT_TRUE(worker);
  auto r = request<int32_t>(worker, 5s, square{2});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().category(), caf::atom("system"));
  auto y = request<int32_t>(worker, 5s, worker_test::fetch{});
  EXPECT_TRUE(y);
}

INSTANTIATE_TEST_SUITE_P(
  EveryStartMethod, WorkerTest,
  testing::Combine(testing::Values(start_method::spawn,
                                   start_method::forkserver),
                   testing::Values(worker_transport::socket,
                                   worker_transport::shared_memory)),
  param_name);

TEST(SpawnWorker, RefusesForkOnceActorSystemThreadsExist) {
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  worker_options opts;
  opts.method = start_method::fork;
  auto worker = spawn_worker(sys, "worker_test.tester", opts);
  ASSERT_FALSE(worker);
  EXPECT_EQ(worker.error(), errc::fork_unsafe);
  auto text = text_of(worker.error());
  EXPECT_NE(text.find("forkserver"), std::string::npos) << text;
  EXPECT_NE(text.find("spawn"), std::string::npos) << text;
}

TEST(SpawnWorker, ReportsAnUnknownEntry) {
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  auto worker = spawn_worker(sys, "no.such.worker");
  ASSERT_FALSE(worker);
  EXPECT_EQ(worker.error(), errc::unknown_entry);
  EXPECT_NE(text_of(worker.error()).find("worker_test.tester"),
            std::string::npos);
}

TEST(SpawnWorker, RefusesBlockingCallsOnOtherActors) {
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  auto local = sys.spawn([]() -> caf::behavior { return {[](int32_t x) { return x; }}; });
  auto r = request<int32_t>(local, 1s, square{1});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::invalid_argument);
  caf::anon_send_exit(local, caf::exit_reason::kill);
}
