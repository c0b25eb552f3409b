// Tests for serialization/queue: typed values over shm_queue, its errors
// (full, empty, timeout, end_of_stream, type_mismatch, unknown_type,
// frame_too_large) and the joinable form.

#include "multiproc/queue.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>

#include <gtest/gtest.h>

#include <cereal/types/array.hpp>
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

enum class color : uint8_t { red = 1, blue = 7 };

/// Everything the flat archive encodes itself (detail/flat_archive.hpp).
struct flat_record {
  int64_t id = 0;
  double price = 0;
  bool urgent = false;
  color tint = color::red;
  std::string note;
  std::array<int16_t, 3> dims{};
  char tag[5] = {};
  receipt nested;
  std::array<char, 16> blob{};
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id, CEREAL_NVP(price), urgent, tint, note, dims, tag, nested,
       cereal::binary_data(blob.data(), blob.size()));
  }
};

/// A vector needs the full Cereal archive: the flat one falls back.
struct mixed_record {
  int32_t id = 0;
  std::vector<int32_t> values;
  std::string name;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id, values, name);
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
MULTIPROC_MESSAGE(queue_test::flat_record, "queue_test.flat_record")
MULTIPROC_MESSAGE(queue_test::mixed_record, "queue_test.mixed_record")

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

namespace {

flat_record sample_flat_record() {
  flat_record r;
  r.id = -42;
  r.price = 9.75;
  r.urgent = true;
  r.tint = color::blue;
  r.note = "fragile";
  r.dims = {3, -4, 5};
  std::memcpy(r.tag, "abcd", 5);
  r.nested.id = 17;
  for (size_t i = 0; i < r.blob.size(); ++i)
    r.blob[i] = static_cast<char>(i * 7);
  return r;
}

} // namespace

TEST(QueueFlatArchive, WritesTheBytesOfTheCerealArchive) {
  auto r = sample_flat_record();
  std::string flat;
  ASSERT_TRUE(detail::flat_encode(r, flat));
  std::string full;
  ASSERT_FALSE(encode(r, full));
  EXPECT_EQ(flat, full);
  flat_record back;
  ASSERT_TRUE(detail::flat_decode(full, back));
  EXPECT_EQ(back.id, r.id);
  EXPECT_EQ(back.price, r.price);
  EXPECT_EQ(back.urgent, r.urgent);
  EXPECT_EQ(back.tint, r.tint);
  EXPECT_EQ(back.note, r.note);
  EXPECT_EQ(back.dims, r.dims);
  EXPECT_STREQ(back.tag, r.tag);
  EXPECT_EQ(back.nested.id, r.nested.id);
  EXPECT_EQ(back.blob, r.blob);
}

TEST(QueueFlatArchive, LeavesWhatItDoesNotKnowToCereal) {
  mixed_record m;
  m.values = {1, 2, 3};
  std::string flat;
  EXPECT_FALSE(detail::flat_encode(m, flat));
  std::string full;
  ASSERT_FALSE(encode(m, full));
  mixed_record back;
  EXPECT_FALSE(detail::flat_decode(full, back));
}

TEST(QueueFlatArchive, RejectsTruncatedAndTrailingBytes) {
  std::string full;
  ASSERT_FALSE(encode(sample_flat_record(), full));
  flat_record back;
  EXPECT_FALSE(detail::flat_decode(std::string_view{full}.substr(0, 20), back));
  EXPECT_FALSE(detail::flat_decode(full + "x", back));
  // A string's size prefix beyond the bytes left.
  std::string bad = full;
  uint64_t huge = 1u << 30;
  std::memcpy(&bad[8 + 8 + 1 + 1], &huge, sizeof(huge));
  EXPECT_FALSE(detail::flat_decode(bad, back));
}

TEST(QueueFlatArchive, CarriesFlatAndMixedValuesAndReportsDecodeErrors) {
  auto flat_q = queue<flat_record>::create();
  ASSERT_TRUE(flat_q) << describe(flat_q.error());
  auto r = sample_flat_record();
  ASSERT_FALSE(flat_q->put(r));
  auto got = flat_q->get(0ms);
  ASSERT_TRUE(got) << describe(got.error());
  EXPECT_EQ(got->note, r.note);
  EXPECT_EQ(got->blob, r.blob);
  // Truncated bytes through the raw queue: Cereal names the problem.
  ASSERT_FALSE(flat_q->raw().put(std::string_view{"\x01\x02\x03", 3}));
  auto bad = flat_q->get(0ms);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error(), errc::decode_failed);
  auto mixed_q = queue<mixed_record>::create();
  ASSERT_TRUE(mixed_q) << describe(mixed_q.error());
  mixed_record m;
  m.id = 5;
  m.values = {7, 8};
  m.name = "five";
  ASSERT_FALSE(mixed_q->put(m));
  auto back = mixed_q->get(0ms);
  ASSERT_TRUE(back) << describe(back.error());
  EXPECT_EQ(back->id, 5);
  EXPECT_EQ(back->values, m.values);
  EXPECT_EQ(back->name, "five");
}
