// Tests for runtime/shm_queue in one process: order, Full and Empty,
// timeouts, close while consumers wait, leases, join, attach checks, and
// that no memory is left behind.

#include "multiproc/shm_queue.hpp"

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "multiproc/error.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
using namespace multiproc;
using multiproc::test::queue_mappings;

namespace {

/// One message per slot unless `batching`.
shm_queue make_queue(uint32_t capacity = 8, bool joinable = false,
                     bool batching = false) {
  shm_queue_options opts;
  opts.capacity = capacity;
  opts.max_message_size = 64;
  opts.batching = batching;
  opts.joinable = joinable;
  auto q = shm_queue::create(opts);
  EXPECT_TRUE(q) << describe(q.error());
  return std::move(*q);
}

std::string get_text(shm_queue& q, shm_queue::timeout_type timeout = 5s) {
  auto msg = q.get(timeout);
  if (!msg)
    return "error: " + describe(msg.error());
  return std::string{msg->bytes};
}

} // namespace

TEST(ShmQueue, DeliversMessagesInOrder) {
  auto q = make_queue(4);
  for (int i = 0; i < 4; ++i)
    ASSERT_FALSE(q.put("m" + std::to_string(i), 0ms));
  EXPECT_EQ(q.size(), 4u);
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(get_text(q), "m" + std::to_string(i));
  EXPECT_EQ(q.size(), 0u);
  auto msg = q.get(0ms);
  EXPECT_EQ(msg.error(), errc::empty);
}

TEST(ShmQueue, WrapsTheRingManyTimesInOrder) {
  auto q = make_queue(4);
  for (int i = 0; i < 1000; ++i) {
    ASSERT_FALSE(q.put(std::to_string(i)));
    if (i % 3 == 2) {
      for (int k = i - 2; k <= i; ++k)
        ASSERT_EQ(get_text(q), std::to_string(k));
    }
  }
  EXPECT_EQ(get_text(q), "999");
  EXPECT_TRUE(q.empty());
}

TEST(ShmQueue, ReportsFullAndEmptyAtOnceWhenAskedNotToWait) {
  auto q = make_queue(2);
  auto msg = q.get(0ms);
  ASSERT_FALSE(msg);
  EXPECT_EQ(msg.error(), errc::empty) << describe(msg.error());
  ASSERT_FALSE(q.put("a", 0ms));
  ASSERT_FALSE(q.put("b", 0ms));
  EXPECT_TRUE(q.full());
  auto err = q.put("c", 0ms);
  EXPECT_EQ(err, errc::full) << describe(err);
  EXPECT_EQ(get_text(q), "a");
  // "a" is still leased: the slot frees at the next get or ack.
  EXPECT_EQ(q.put("c", 0ms), errc::full);
  q.ack();
  EXPECT_FALSE(q.put("c", 0ms));
  EXPECT_EQ(get_text(q), "b");
  EXPECT_EQ(get_text(q), "c");
}

TEST(ShmQueue, TimesOutWithAClearError) {
  auto q = make_queue(2);
  auto msg = q.get(30ms);
  ASSERT_FALSE(msg);
  EXPECT_EQ(msg.error(), errc::timeout) << describe(msg.error());
  ASSERT_FALSE(q.put("a"));
  ASSERT_FALSE(q.put("b"));
  auto err = q.put("c", 30ms);
  EXPECT_EQ(err, errc::timeout) << describe(err);
  EXPECT_NE(describe(err).find("full"), std::string::npos) << describe(err);
}

TEST(ShmQueue, RejectsAMessageAboveTheMaximumSize) {
  auto q = make_queue(2);
  auto err = q.put(std::string(65, 'x'));
  EXPECT_EQ(err, errc::frame_too_large) << describe(err);
  EXPECT_NE(describe(err).find("65 bytes"), std::string::npos) << describe(err);
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.put(std::string(64, 'x')));
}

TEST(ShmQueue, RejectsOptionsOutOfRange) {
  shm_queue_options opts;
  opts.capacity = 1;
  auto q = shm_queue::create(opts);
  ASSERT_FALSE(q);
  EXPECT_EQ(q.error(), errc::invalid_argument) << describe(q.error());
  opts.capacity = 8;
  opts.max_message_size = 0;
  q = shm_queue::create(opts);
  ASSERT_FALSE(q);
  EXPECT_EQ(q.error(), errc::invalid_argument) << describe(q.error());
}

TEST(ShmQueue, WakesABlockedConsumerAndABlockedProducer) {
  auto q = make_queue(2);
  auto consumer = q.clone();
  ASSERT_TRUE(consumer);
  std::string got;
  std::thread t{[&] { got = get_text(*consumer, 10s); }};
  std::this_thread::sleep_for(50ms); // let it sleep on the futex
  ASSERT_FALSE(q.put("late"));
  t.join();
  EXPECT_EQ(got, "late");
  consumer->ack();
  ASSERT_FALSE(q.put("1"));
  ASSERT_FALSE(q.put("2"));
  caf::error put_err;
  std::thread p{[&] { put_err = q.put("3", 10s); }};
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(get_text(*consumer), "1");
  EXPECT_EQ(get_text(*consumer), "2"); // acknowledges "1": room for "3"
  p.join();
  EXPECT_FALSE(put_err) << describe(put_err);
  EXPECT_EQ(get_text(*consumer), "3");
}

TEST(ShmQueue, CloseLetsConsumersDrainThenEndsTheStream) {
  auto q = make_queue(8);
  ASSERT_FALSE(q.put("x"));
  ASSERT_FALSE(q.put("y"));
  q.close();
  EXPECT_TRUE(q.closed());
  auto err = q.put("z");
  EXPECT_EQ(err, errc::closed) << describe(err);
  EXPECT_EQ(get_text(q), "x");
  EXPECT_EQ(get_text(q), "y");
  auto end = q.get(1s);
  ASSERT_FALSE(end);
  EXPECT_EQ(end.error(), errc::end_of_stream) << describe(end.error());
  end = q.get();
  EXPECT_EQ(end.error(), errc::end_of_stream) << describe(end.error());
}

TEST(ShmQueue, CloseWakesEveryWaitingConsumer) {
  auto q = make_queue(8);
  std::vector<std::thread> threads;
  std::atomic<int> ended{0};
  for (int i = 0; i < 3; ++i)
    threads.emplace_back([&] {
      auto h = q.clone();
      auto msg = h->get(10s);
      if (!msg && msg.error() == errc::end_of_stream)
        ++ended;
    });
  std::this_thread::sleep_for(50ms);
  q.close();
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(ended.load(), 3);
}

TEST(ShmQueue, EndOfStreamWaitsForAnotherConsumersLease) {
  auto q = make_queue(8);
  auto other = q.clone();
  ASSERT_FALSE(q.put("last"));
  q.close();
  EXPECT_EQ(get_text(*other), "last"); // leased by `other`, same process
  // Leases of this process never come back (if it dies, so does the
  // caller), so the stream ends for the other handle too.
  auto end = q.get(1s);
  EXPECT_EQ(end.error(), errc::end_of_stream) << describe(end.error());
}

TEST(ShmQueue, JoinWaitsUntilEveryMessageIsDone) {
  auto q = make_queue(8, true);
  ASSERT_TRUE(q.joinable());
  for (auto* m : {"a", "b", "c"})
    ASSERT_FALSE(q.put(m));
  EXPECT_EQ(q.unfinished(), 3u);
  auto err = q.join(20ms);
  EXPECT_EQ(err, errc::timeout) << describe(err);
  auto consumer = q.clone();
  std::thread t{[&] {
    for (int i = 0; i < 3; ++i) {
      auto msg = consumer->get(5s);
      ASSERT_TRUE(msg);
      std::this_thread::sleep_for(5ms);
      ASSERT_FALSE(consumer->task_done());
    }
  }};
  EXPECT_FALSE(q.join(10s));
  t.join();
  EXPECT_EQ(q.unfinished(), 0u);
  err = consumer->task_done();
  EXPECT_EQ(err, errc::invalid_argument) << describe(err);
}

TEST(ShmQueue, KeepsJoinableLeasesUntilTaskDone) {
  auto q = make_queue(2, true);
  ASSERT_FALSE(q.put("a"));
  ASSERT_FALSE(q.put("b"));
  EXPECT_EQ(get_text(q), "a");
  EXPECT_EQ(get_text(q), "b");
  EXPECT_EQ(q.leases(), 2u);
  EXPECT_EQ(q.put("c", 0ms), errc::full);
  ASSERT_FALSE(q.task_done());
  EXPECT_FALSE(q.put("c", 0ms));
}

TEST(ShmQueue, TaskDoneOnAPlainQueueIsAnError) {
  auto q = make_queue(2);
  auto err = q.task_done();
  EXPECT_EQ(err, errc::invalid_argument) << describe(err);
  err = q.join(0ms);
  EXPECT_EQ(err, errc::invalid_argument) << describe(err);
}

TEST(ShmQueue, AttachRejectsADescriptorThatIsNotAQueue) {
  unique_fd fd{static_cast<int>(::syscall(SYS_memfd_create, "other", 0))};
  ASSERT_TRUE(fd);
  ASSERT_EQ(::ftruncate(fd.get(), 8192), 0);
  auto q = shm_queue::attach(std::move(fd));
  ASSERT_FALSE(q);
  EXPECT_EQ(q.error(), errc::invalid_argument) << describe(q.error());
  EXPECT_NE(describe(q.error()).find("not a multiproc queue"),
            std::string::npos)
    << describe(q.error());
  q = shm_queue::attach(unique_fd{});
  EXPECT_EQ(q.error(), errc::invalid_argument) << describe(q.error());
}

TEST(ShmQueue, SharesMessagesBetweenHandles) {
  auto a = make_queue(8);
  unique_fd dup{::fcntl(a.fd(), F_DUPFD_CLOEXEC, 0)};
  auto b = shm_queue::attach(std::move(dup));
  ASSERT_TRUE(b) << describe(b.error());
  EXPECT_EQ(b->capacity(), 8u);
  EXPECT_EQ(b->max_message_size(), 64u);
  ASSERT_FALSE(a.put("hello"));
  EXPECT_EQ(get_text(*b), "hello");
}

TEST(ShmQueue, LeavesNoMappingBehind) {
  auto before = queue_mappings();
  {
    auto q = make_queue(8);
    auto c = q.clone();
    EXPECT_EQ(queue_mappings(), before + 2);
    ASSERT_FALSE(q.put("x"));
  }
  EXPECT_EQ(queue_mappings(), before);
}

class ShmQueueThreads : public testing::TestWithParam<bool> {};

TEST_P(ShmQueueThreads, LoseAndDuplicateNothing) {
  constexpr int producers = 3;
  constexpr int consumers = 3;
  constexpr int per_producer = 20000;
  auto q = make_queue(64, false, GetParam());
  std::vector<std::atomic<int>> seen(producers * per_producer);
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p)
    threads.emplace_back([&, p] {
      auto h = q.clone();
      for (int i = 0; i < per_producer; ++i) {
        auto v = std::to_string(p * per_producer + i);
        ASSERT_FALSE(h->put(v, 10s));
      }
    });
  for (int c = 0; c < consumers; ++c)
    threads.emplace_back([&] {
      auto h = q.clone();
      for (;;) {
        auto msg = h->get(10s);
        if (!msg) {
          EXPECT_EQ(msg.error(), errc::end_of_stream) << describe(msg.error());
          return;
        }
        seen[std::stoi(std::string{msg->bytes})]++;
      }
    });
  for (int p = 0; p < producers; ++p)
    threads[p].join();
  q.close();
  for (size_t i = producers; i < threads.size(); ++i)
    threads[i].join();
  int missing = 0;
  int duplicated = 0;
  for (auto& n : seen) {
    missing += n.load() == 0;
    duplicated += n.load() > 1;
  }
  EXPECT_EQ(missing, 0);
  EXPECT_EQ(duplicated, 0);
}

INSTANTIATE_TEST_SUITE_P(BatchingOffAndOn, ShmQueueThreads, testing::Bool());

TEST(ShmQueue, BatchesSmallMessagesWhileNoConsumerTakesThem) {
  auto q = make_queue(2, false, true); // a slot holds 96 bytes: 2 messages of 40 (+4)
  for (int i = 0; i < 4; ++i)
    ASSERT_FALSE(q.put(std::string(40, char('a' + i)), 0ms));
  EXPECT_TRUE(q.full());
  EXPECT_EQ(q.put(std::string(40, 'e'), 0ms), errc::full);
  EXPECT_EQ(q.size(), 4u);
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(get_text(q), std::string(40, char('a' + i)));
  EXPECT_TRUE(q.empty());
}

TEST(ShmQueue, ADestroyedConsumerHandsBackTheRestOfItsBatch) {
  shm_queue_options opts;
  opts.capacity = 4;
  opts.max_message_size = 200;
  auto q = shm_queue::create(opts);
  ASSERT_TRUE(q);
  for (int i = 1; i <= 5; ++i)
    ASSERT_FALSE(q->put("m" + std::to_string(i), 0ms));
  {
    auto a = q->clone();
    EXPECT_EQ(get_text(*a), "m1");
    EXPECT_EQ(get_text(*a), "m2");
  } // m1 and m2 were returned: done; m3..m5 go back to the queue
  EXPECT_EQ(q->size(), 3u);
  for (int i = 3; i <= 5; ++i) {
    auto msg = q->get(1s);
    ASSERT_TRUE(msg) << describe(msg.error());
    EXPECT_EQ(std::string{msg->bytes}, "m" + std::to_string(i));
    EXPECT_EQ(msg->deliveries, 1u);
  }
  EXPECT_EQ(q->get(0ms).error(), errc::empty);
}

TEST(ShmQueue, CountsAMessageAsConsumedWhenItsLeaseEnds) {
  auto q = make_queue(8);
  EXPECT_EQ(q.consumed(), 0u);
  for (auto* m : {"a", "b", "c"})
    ASSERT_FALSE(q.put(m));
  EXPECT_EQ(get_text(q), "a");
  EXPECT_EQ(q.consumed(), 0u); // leased, not acknowledged
  EXPECT_EQ(get_text(q), "b"); // acknowledges "a"
  EXPECT_EQ(q.consumed(), 1u);
  q.ack();
  EXPECT_EQ(q.consumed(), 2u);
  q.ack();
  EXPECT_EQ(q.consumed(), 2u);
  {
    auto other = q.clone();
    EXPECT_EQ(get_text(*other), "c");
    EXPECT_EQ(q.consumed(), 2u);
  } // a destroyed handle acknowledges what get() returned
  EXPECT_EQ(q.consumed(), 3u);
  EXPECT_EQ(q.redelivered(), 0u);
}

TEST(ShmQueue, CountsABatchAsConsumedOnceItsLeaseEnds) {
  auto q = make_queue(4, false, true);
  for (int i = 0; i < 3; ++i)
    ASSERT_FALSE(q.put(std::to_string(i), 0ms));
  ASSERT_EQ(q.size(), 3u);
  EXPECT_EQ(get_text(q), "0");
  EXPECT_EQ(get_text(q), "1"); // "0" is acknowledged, counted with the slot
  EXPECT_EQ(q.consumed(), 0u);
  EXPECT_EQ(get_text(q), "2");
  q.ack(); // the batch is read to its end: the lease ends
  EXPECT_EQ(q.consumed(), 3u);
  EXPECT_EQ(q.leases(), 0u);
}

TEST(ShmQueue, CountsWhatADestroyedHandleAcknowledgedBeforeHandingBack) {
  auto q = make_queue(4, false, true);
  for (int i = 0; i < 4; ++i)
    ASSERT_FALSE(q.put(std::to_string(i), 0ms));
  {
    auto a = q.clone();
    EXPECT_EQ(get_text(*a), "0");
    EXPECT_EQ(get_text(*a), "1");
  } // "0" and "1" are done; "2" and "3" go back to the queue
  EXPECT_EQ(q.consumed(), 2u);
  EXPECT_EQ(q.redelivered(), 0u); // handed back, not redelivered
  EXPECT_EQ(get_text(q), "2");
  EXPECT_EQ(get_text(q), "3");
  q.ack();
  EXPECT_EQ(q.consumed(), 4u);
}

TEST(ShmQueue, CountsTaskDoneAsConsumedOnAJoinableQueue) {
  auto q = make_queue(8, true);
  for (auto* m : {"a", "b"})
    ASSERT_FALSE(q.put(m));
  EXPECT_EQ(get_text(q), "a");
  EXPECT_EQ(get_text(q), "b");
  q.ack(); // not an acknowledgement on a joinable queue
  EXPECT_EQ(q.consumed(), 0u);
  ASSERT_FALSE(q.task_done());
  EXPECT_EQ(q.consumed(), 1u);
  ASSERT_FALSE(q.task_done());
  EXPECT_EQ(q.consumed(), 2u);
  EXPECT_FALSE(q.join(0ms));
}

TEST(ShmQueue, CountsEveryMessageOfManyThreadsOnce) {
  constexpr int producers = 2;
  constexpr int consumers = 2;
  constexpr int per_producer = 20000;
  auto q = make_queue(64, false, true);
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p)
    threads.emplace_back([&] {
      auto h = q.clone();
      for (int i = 0; i < per_producer; ++i)
        ASSERT_FALSE(h->put("x", 10s));
    });
  std::atomic<int> taken{0};
  for (int c = 0; c < consumers; ++c)
    threads.emplace_back([&] {
      auto h = q.clone();
      while (h->get(10s))
        ++taken;
    });
  for (int p = 0; p < producers; ++p)
    threads[p].join();
  q.close();
  for (size_t i = producers; i < threads.size(); ++i)
    threads[i].join();
  EXPECT_EQ(taken.load(), producers * per_producer);
  EXPECT_EQ(q.consumed(), uint64_t{producers * per_producer});
}
