// Tests for runtime/shm_channel: frames over two shared-memory queues, in
// one process (the two ends in two threads): order, frames larger than a
// queue message, the I/O thread, the backlog, the frame limit, and how an
// end learns that the other one stopped or died.

#include "multiproc/shm_channel.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/eventfd.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "multiproc/error.hpp"

using namespace std::chrono_literals;
using namespace multiproc;

namespace {

/// Two connected ends.
struct channel_pair {
  std::unique_ptr<shm_channel> a;
  std::unique_ptr<shm_channel> b;
};

channel_pair make_pair(channel_options opts = {}) {
  auto qs = shm_channel::make_queues();
  EXPECT_TRUE(qs) << describe(qs.error());
  auto first = qs->first.clone();
  auto second = qs->second.clone();
  EXPECT_TRUE(first && second);
  channel_pair p;
  // a writes `first` and reads `second`; b the other way round.
  p.a = std::make_unique<shm_channel>(std::move(qs->second),
                                      std::move(qs->first), opts);
  p.b = std::make_unique<shm_channel>(std::move(*first), std::move(*second),
                                      opts);
  return p;
}

/// Collects what an I/O thread hands over.
class collector : public frame_handler {
public:
  void on_frame(std::string_view body) override {
    std::lock_guard<std::mutex> guard{mtx_};
    frames_.emplace_back(body);
    cv_.notify_all();
  }

  void on_closed(const caf::error& reason) override {
    std::lock_guard<std::mutex> guard{mtx_};
    closed_ = true;
    reason_ = reason;
    cv_.notify_all();
  }

  bool await_frames(size_t n) {
    std::unique_lock<std::mutex> guard{mtx_};
    return cv_.wait_for(guard, 10s, [&] { return frames_.size() >= n; });
  }

  bool await_closed() {
    std::unique_lock<std::mutex> guard{mtx_};
    return cv_.wait_for(guard, 10s, [&] { return closed_; });
  }

  std::vector<std::string> frames() {
    std::lock_guard<std::mutex> guard{mtx_};
    return frames_;
  }

  caf::error reason() {
    std::lock_guard<std::mutex> guard{mtx_};
    return reason_;
  }

private:
  std::mutex mtx_;
  std::condition_variable cv_;
  std::vector<std::string> frames_;
  bool closed_ = false;
  caf::error reason_;
};

} // namespace

TEST(ShmChannel, CarriesFramesBothWaysInOrder) {
  auto p = make_pair();
  for (int i = 0; i < 1000; ++i)
    ASSERT_FALSE(p.a->send("a" + std::to_string(i)));
  ASSERT_FALSE(p.b->send("from b"));
  for (int i = 0; i < 1000; ++i) {
    auto frame = p.b->receive(5s);
    ASSERT_TRUE(frame) << describe(frame.error());
    ASSERT_EQ(*frame, "a" + std::to_string(i));
  }
  auto frame = p.a->receive(5s);
  ASSERT_TRUE(frame) << describe(frame.error());
  EXPECT_EQ(*frame, "from b");
  EXPECT_EQ(p.a->receive(0ms).error(), errc::timeout);
}

TEST(ShmChannel, JoinsFramesLargerThanAQueueMessage) {
  collector got; // outlives the channels (their I/O threads)
  auto p = make_pair();
  std::string big(1 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i)
    big[i] = static_cast<char>(i * 7);
  p.b->start(&got);
  // A sender with an I/O thread at the other end never waits for room.
  ASSERT_FALSE(p.a->send("before"));
  std::thread sender{[&] {
    std::string_view parts[] = {std::string_view{big}.substr(0, 1000),
                                std::string_view{big}.substr(1000)};
    EXPECT_FALSE(p.a->send(parts, 2));
    EXPECT_FALSE(p.a->send("after"));
  }};
  sender.join();
  ASSERT_TRUE(got.await_frames(3));
  auto frames = got.frames();
  ASSERT_EQ(frames.size(), 3u);
  EXPECT_EQ(frames[0], "before");
  EXPECT_TRUE(frames[1] == big) << "the 1 MiB frame came back different";
  EXPECT_EQ(frames[2], "after");
}

TEST(ShmChannel, KeepsEachSendersOrderAcrossThreads) {
  collector got; // outlives the channels (their I/O threads)
  auto p = make_pair();
  p.b->start(&got);
  constexpr int per_thread = 5000;
  std::vector<std::thread> senders;
  for (int t = 0; t < 3; ++t)
    senders.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        // Some frames span queue messages.
        std::string frame = std::to_string(t) + ":" + std::to_string(i);
        if (i % 500 == 0)
          frame.append(40000, 'x');
        ASSERT_FALSE(p.a->send(frame, send_mode::deferred));
      }
    });
  for (auto& s : senders)
    s.join();
  ASSERT_TRUE(got.await_frames(3 * per_thread));
  std::vector<int> next(3, 0);
  for (auto& frame : got.frames()) {
    int t = frame[0] - '0';
    auto i = std::stoi(frame.substr(2));
    ASSERT_EQ(i, next[static_cast<size_t>(t)]) << "sender " << t;
    ++next[static_cast<size_t>(t)];
  }
}

TEST(ShmChannel, AnIoThreadQueuesWhatTheQueueCannotTakeYet) {
  auto p = make_pair();
  // b's I/O thread answers every frame with a 20 KiB frame while a does not
  // read yet: the queue fills, the rest waits in b's backlog.
  class echo : public frame_handler {
  public:
    explicit echo(shm_channel& ch) : ch_(ch) {
    }
    void on_frame(std::string_view body) override {
      std::string reply(20000, 'r');
      reply.replace(0, body.size(), body);
      EXPECT_FALSE(ch_.send(reply));
    }
    void on_closed(const caf::error&) override {
    }

  private:
    shm_channel& ch_;
  } responder{*p.b};
  p.b->start(&responder);
  for (int i = 0; i < 200; ++i)
    ASSERT_FALSE(p.a->send(std::to_string(i) + "|"));
  for (int i = 0; i < 200; ++i) {
    auto frame = p.a->receive(5s);
    ASSERT_TRUE(frame) << describe(frame.error());
    ASSERT_EQ(frame->size(), 20000u);
    ASSERT_EQ(frame->substr(0, frame->find('|')), std::to_string(i));
  }
  p.b->stop(); // before the responder goes out of scope
}

TEST(ShmChannel, RejectsAFrameAboveTheLimitAndGoesOn) {
  channel_options opts;
  opts.max_frame_size = 100;
  auto p = make_pair(opts);
  auto err = p.a->send(std::string(101, 'x'));
  EXPECT_EQ(err, errc::frame_too_large);
  ASSERT_FALSE(p.a->send("fits"));
  auto frame = p.b->receive(5s);
  ASSERT_TRUE(frame) << describe(frame.error());
  EXPECT_EQ(*frame, "fits");
}

TEST(ShmChannel, EndsThePeersIoThreadWhenOneEndStops) {
  collector got; // outlives the channels (their I/O threads)
  auto p = make_pair();
  p.b->start(&got);
  ASSERT_FALSE(p.a->send("last words"));
  p.a->stop();
  ASSERT_TRUE(got.await_closed());
  EXPECT_EQ(got.reason(), errc::peer_closed) << describe(got.reason());
  ASSERT_EQ(got.frames().size(), 1u);
  EXPECT_EQ(got.frames()[0], "last words");
  // b's own sends now fail clearly.
  EXPECT_NE(p.b->send("anyone?"), caf::none);
  EXPECT_EQ(p.a->send("after stop"), errc::closed);
}

TEST(ShmChannel, EndsWhenTheDeathDescriptorFires) {
  collector got; // outlives the channels (their I/O threads)
  auto p = make_pair();
  int death = ::eventfd(0, EFD_CLOEXEC);
  ASSERT_GE(death, 0);
  p.b->start(&got, death);
  ASSERT_FALSE(p.a->send("written before dying"));
  ASSERT_TRUE(got.await_frames(1));
  uint64_t one = 1;
  ASSERT_EQ(::write(death, &one, sizeof(one)), 8);
  ASSERT_TRUE(got.await_closed());
  EXPECT_EQ(got.reason(), errc::peer_closed);
  EXPECT_NE(text_of(got.reason()).find("exited"), std::string::npos);
  p.b->stop();
  ::close(death);
}
