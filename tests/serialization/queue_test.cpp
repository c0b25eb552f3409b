// Tests for serialization/queue: typed values over shm_queue, its errors
// (full, empty, timeout, end_of_stream, type_mismatch, unknown_type,
// frame_too_large) and the joinable form.

#include "multiproc/queue.hpp"

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>

#include <gtest/gtest.h>

#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include "multiproc/error.hpp"

using namespace std::chrono_literals;
using namespace multiproc;

namespace queue_test {

struct order {
  int32_t id = 0;
  std::string item;
  std::vector<double> prices;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id, item, prices);
  }
};

struct receipt {
  int32_t id = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id);
  }
};

struct not_registered {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

} // namespace queue_test

MULTIPROC_MESSAGE(queue_test::order, "queue_test.order")
MULTIPROC_MESSAGE(queue_test::receipt, "queue_test.receipt")

using namespace queue_test;

namespace {

/// A queue of T with one value per slot (capacity an exact bound).
template <class T>
queue<T> make_queue(uint32_t capacity = 4, bool joinable = false) {
  queue_options opts;
  opts.capacity = capacity;
  opts.batching = false;
  opts.joinable = joinable;
  auto q = queue<T>::create(opts);
  EXPECT_TRUE(q) << describe(q.error());
  return std::move(*q);
}

/// A second descriptor of `q`'s memory, as a child would receive it.
unique_fd dup_fd(int fd) {
  return unique_fd{::fcntl(fd, F_DUPFD_CLOEXEC, 0)};
}

} // namespace

TEST(Queue, CarriesARegisteredStruct) {
  auto q = make_queue<order>();
  ASSERT_FALSE(q.put(order{7, "tea", {1.5, 2.25}}));
  auto other = queue<order>::attach(dup_fd(q.fd()));
  ASSERT_TRUE(other) << describe(other.error());
  auto x = other->get(1s);
  ASSERT_TRUE(x) << describe(x.error());
  EXPECT_EQ(x->id, 7);
  EXPECT_EQ(x->item, "tea");
  EXPECT_EQ(x->prices, (std::vector<double>{1.5, 2.25}));
  EXPECT_EQ(other->last_deliveries(), 1u);
  other->ack();
  EXPECT_EQ(q.consumed(), 1u);
}

TEST(Queue, TryPutOnAFullQueueFailsWithFull) {
  auto q = make_queue<receipt>(2);
  ASSERT_FALSE(q.try_put(receipt{1}));
  ASSERT_FALSE(q.try_put(receipt{2}));
  EXPECT_TRUE(q.full());
  auto err = q.try_put(receipt{3});
  EXPECT_EQ(err, errc::full) << describe(err);
  EXPECT_EQ(q.size(), 2u);
}

TEST(Queue, TryGetOnAnEmptyQueueFailsWithEmpty) {
  auto q = make_queue<receipt>();
  auto x = q.try_get();
  ASSERT_FALSE(x);
  EXPECT_EQ(x.error(), errc::empty) << describe(x.error());
  ASSERT_FALSE(q.put(receipt{1}));
  x = q.try_get();
  ASSERT_TRUE(x) << describe(x.error());
  EXPECT_EQ(x->id, 1);
}

TEST(Queue, GetWithATimeoutFailsWithTimeout) {
  auto q = make_queue<receipt>();
  auto began = std::chrono::steady_clock::now();
  auto x = q.get(30ms);
  ASSERT_FALSE(x);
  EXPECT_EQ(x.error(), errc::timeout) << describe(x.error());
  EXPECT_GE(std::chrono::steady_clock::now() - began, 30ms);
}

TEST(Queue, CloseEndsTheStreamForEveryWaitingConsumer) {
  auto q = make_queue<receipt>();
  ASSERT_FALSE(q.put(receipt{1}));
  constexpr int consumers = 3;
  std::atomic<int> ended{0};
  std::atomic<int> values{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < consumers; ++i)
    threads.emplace_back([&] {
      auto h = q.clone();
      ASSERT_TRUE(h) << describe(h.error());
      for (;;) {
        auto x = h->get(10s);
        if (x) {
          ++values;
          continue;
        }
        EXPECT_EQ(x.error(), errc::end_of_stream) << describe(x.error());
        ended += x.error() == errc::end_of_stream;
        return;
      }
    });
  std::this_thread::sleep_for(50ms); // let them sleep on the queue
  q.close();
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(ended.load(), consumers);
  EXPECT_EQ(values.load(), 1); // drained first
  auto err = q.put(receipt{2});
  EXPECT_EQ(err, errc::closed) << describe(err);
}

TEST(Queue, JoinWaitsForTaskDoneOfEveryValue) {
  auto q = make_queue<receipt>(8, true);
  for (int32_t i = 1; i <= 3; ++i)
    ASSERT_FALSE(q.put(receipt{i}));
  auto err = q.join(20ms);
  EXPECT_EQ(err, errc::timeout) << describe(err);
  auto worker = q.clone();
  ASSERT_TRUE(worker) << describe(worker.error());
  std::thread t{[&] {
    for (int i = 0; i < 3; ++i) {
      auto x = worker->get(5s);
      ASSERT_TRUE(x) << describe(x.error());
      EXPECT_EQ(x->id, i + 1);
      ASSERT_FALSE(worker->task_done());
    }
  }};
  err = q.join(10s);
  EXPECT_FALSE(err) << describe(err);
  t.join();
  EXPECT_EQ(q.consumed(), 3u);
  err = worker->task_done(); // once more than get
  EXPECT_EQ(err, errc::invalid_argument) << describe(err);
}

TEST(Queue, AttachOfAQueueOfAnotherTypeFailsWithTypeMismatch) {
  auto q = make_queue<order>();
  auto other = queue<receipt>::attach(dup_fd(q.fd()));
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error(), errc::type_mismatch) << describe(other.error());
  EXPECT_NE(describe(other.error()).find("queue_test.receipt"),
            std::string::npos)
    << describe(other.error());
}

TEST(Queue, AnUnregisteredTypeFailsWithUnknownType) {
  auto q = queue<not_registered>::create();
  ASSERT_FALSE(q);
  EXPECT_EQ(q.error(), errc::unknown_type) << describe(q.error());
  EXPECT_NE(describe(q.error()).find("MULTIPROC_MESSAGE"), std::string::npos)
    << describe(q.error());
  auto typed = make_queue<receipt>();
  auto attached = queue<not_registered>::attach(dup_fd(typed.fd()));
  ASSERT_FALSE(attached);
  EXPECT_EQ(attached.error(), errc::unknown_type)
    << describe(attached.error());
}

TEST(Queue, AValueAboveTheMaximumSizeFailsWithFrameTooLarge) {
  queue_options opts;
  opts.max_message_size = 64;
  auto q = queue<order>::create(opts);
  ASSERT_TRUE(q) << describe(q.error());
  auto err = q->put(order{1, std::string(100, 'x'), {}});
  EXPECT_EQ(err, errc::frame_too_large) << describe(err);
  EXPECT_TRUE(q->empty());
  EXPECT_FALSE(q->put(order{2, "small", {}}));
}
