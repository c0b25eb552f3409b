// Tests runtime/frame_channel: framing, limits, EOF handling, batching and
// the I/O thread.
#include "multiproc/frame_channel.hpp"

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include "multiproc/error.hpp"

using namespace multiproc;
using namespace std::chrono_literals;

namespace {

struct channel_pair {
  std::unique_ptr<frame_channel> a;
  std::unique_ptr<frame_channel> b;
};

channel_pair make_pair_of_channels(channel_options opts = {}) {
  unique_fd x;
  unique_fd y;
  EXPECT_TRUE(make_socketpair(x, y));
  return {std::make_unique<frame_channel>(std::move(x), opts),
          std::make_unique<frame_channel>(std::move(y), opts)};
}

// Writes raw bytes to the peer socket, bypassing the channel.
void write_raw(int fd, const void* data, size_t size) {
  ASSERT_EQ(::send(fd, data, size, MSG_NOSIGNAL), static_cast<ssize_t>(size));
}

class collecting_handler : public frame_handler {
public:
  void on_frame(std::string_view body) override {
    std::lock_guard<std::mutex> guard{mu};
    frames.emplace_back(body);
  }
  void on_closed(const caf::error& reason) override {
    std::lock_guard<std::mutex> guard{mu};
    closed = reason;
    done = true;
    cv.notify_all();
  }
  bool wait_closed(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lk{mu};
    return cv.wait_for(lk, timeout, [this] { return done; });
  }
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> frames;
  caf::error closed;
  bool done = false;
};

} // namespace

TEST(FrameChannel, RoundTripsFramesOfManySizes) {
  auto [a, b] = make_pair_of_channels();
  std::thread sender{[&a = a] {
    for (size_t size : {size_t{0}, size_t{1}, size_t{64}, size_t{65536},
                        size_t{16} << 20}) {
      std::string body(size, static_cast<char>('a' + size % 26));
      EXPECT_FALSE(a->send(body));
    }
  }};
  for (size_t size : {size_t{0}, size_t{1}, size_t{64}, size_t{65536},
                      size_t{16} << 20}) {
    auto frame = b->receive(10s);
    ASSERT_TRUE(frame) << describe(frame.error());
    EXPECT_EQ(frame->size(), size);
    EXPECT_EQ(*frame, std::string(size, static_cast<char>('a' + size % 26)));
  }
  sender.join();
}

TEST(FrameChannel, ConcatenatesPartsIntoOneFrame) {
  auto [a, b] = make_pair_of_channels();
  std::string_view parts[] = {"abc", "", "defg"};
  ASSERT_FALSE(a->send(parts, 3));
  auto frame = b->receive(1s);
  ASSERT_TRUE(frame);
  EXPECT_EQ(*frame, "abcdefg");
}

TEST(FrameChannel, ReportsPeerClosedOnCleanEof) {
  auto [a, b] = make_pair_of_channels();
  ASSERT_FALSE(a->send("last words"));
  a.reset();
  auto frame = b->receive(1s);
  ASSERT_TRUE(frame);
  EXPECT_EQ(*frame, "last words");
  auto eof = b->receive(1s);
  ASSERT_FALSE(eof);
  EXPECT_EQ(eof.error(), errc::peer_closed);
  // A broken channel keeps reporting the same error.
  EXPECT_EQ(b->receive(1s).error(), errc::peer_closed);
}

TEST(FrameChannel, ReportsTruncatedFrameOnEofInsideBody) {
  unique_fd x;
  unique_fd y;
  ASSERT_TRUE(make_socketpair(x, y));
  frame_channel b{std::move(y)};
  uint32_t len = 100;
  write_raw(x.get(), &len, 4);
  write_raw(x.get(), "0123456789", 10);
  x.reset();
  auto frame = b.receive(1s);
  ASSERT_FALSE(frame);
  EXPECT_EQ(frame.error(), errc::truncated_frame);
  EXPECT_NE(text_of(frame.error()).find("10 of 100 body bytes"),
            std::string::npos)
    << describe(frame.error());
}

TEST(FrameChannel, ReportsTruncatedFrameOnEofInsideHeader) {
  unique_fd x;
  unique_fd y;
  ASSERT_TRUE(make_socketpair(x, y));
  frame_channel b{std::move(y)};
  write_raw(x.get(), "\x05\x00", 2);
  x.reset();
  auto frame = b.receive(1s);
  ASSERT_FALSE(frame);
  EXPECT_EQ(frame.error(), errc::truncated_frame);
  EXPECT_NE(text_of(frame.error()).find("header"), std::string::npos);
}

TEST(FrameChannel, RejectsAnnouncedLengthAboveLimit) {
  unique_fd x;
  unique_fd y;
  ASSERT_TRUE(make_socketpair(x, y));
  frame_channel b{std::move(y)};
  uint32_t len = 0xFFFFFFFF; // about 4 GiB
  write_raw(x.get(), &len, 4);
  auto frame = b.receive(1s);
  ASSERT_FALSE(frame);
  EXPECT_EQ(frame.error(), errc::frame_too_large);
  EXPECT_NE(text_of(frame.error()).find("4294967295"), std::string::npos);
}

TEST(FrameChannel, HonoursAConfiguredLimit) {
  channel_options opts;
  opts.max_frame_size = 1000;
  auto [a, b] = make_pair_of_channels(opts);
  auto err = a->send(std::string(1001, 'x'));
  EXPECT_EQ(err, errc::frame_too_large);
  // Nothing was sent: the channel still works.
  ASSERT_FALSE(a->send(std::string(1000, 'y')));
  auto frame = b->receive(1s);
  ASSERT_TRUE(frame);
  EXPECT_EQ(frame->size(), 1000u);
}

TEST(FrameChannel, TimesOutWithoutLosingData) {
  auto [a, b] = make_pair_of_channels();
  auto none = b->receive(20ms);
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error(), errc::timeout);
  ASSERT_FALSE(a->send("late"));
  auto frame = b->receive(1s);
  ASSERT_TRUE(frame);
  EXPECT_EQ(*frame, "late");
}

TEST(FrameChannel, PollTellsWhetherAFrameIsReady) {
  auto [a, b] = make_pair_of_channels();
  auto ready = b->poll(10ms);
  ASSERT_TRUE(ready);
  EXPECT_FALSE(*ready);
  ASSERT_FALSE(a->send("x"));
  ready = b->poll(1000ms);
  ASSERT_TRUE(ready);
  EXPECT_TRUE(*ready);
}

TEST(FrameChannel, KeepsEachSendersFramesInOrderUnderConcurrency) {
  auto [a, b] = make_pair_of_channels();
  constexpr int senders = 4;
  constexpr int per_sender = 5000;
  std::vector<std::thread> threads;
  for (int s = 0; s < senders; ++s)
    threads.emplace_back([&a = a, s] {
      for (int i = 0; i < per_sender; ++i) {
        std::string body = std::to_string(s) + ":" + std::to_string(i);
        EXPECT_FALSE(a->send(body));
      }
    });
  std::vector<int> next(senders, 0);
  for (int n = 0; n < senders * per_sender; ++n) {
    auto frame = b->receive(10s);
    ASSERT_TRUE(frame);
    std::string body{*frame};
    auto colon = body.find(':');
    int s = std::stoi(body.substr(0, colon));
    int i = std::stoi(body.substr(colon + 1));
    ASSERT_EQ(i, next[s]) << "sender " << s;
    ++next[s];
  }
  for (auto& t : threads)
    t.join();
}

TEST(FrameChannel, IoThreadDeliversDeferredFramesInOrderThenClose) {
  auto [a, b] = make_pair_of_channels();
  collecting_handler handler;
  b->start(&handler);
  collecting_handler sender_side;
  a->start(&sender_side);
  for (int i = 0; i < 10000; ++i)
    ASSERT_FALSE(a->send(std::to_string(i), send_mode::deferred));
  a->stop(1000ms);
  ASSERT_TRUE(handler.wait_closed(10s));
  EXPECT_EQ(handler.closed, errc::peer_closed);
  ASSERT_EQ(handler.frames.size(), 10000u);
  for (int i = 0; i < 10000; ++i)
    ASSERT_EQ(handler.frames[i], std::to_string(i));
}

TEST(FrameChannel, BusyPollingDeliversEveryFrameThroughBurstsAndPauses) {
  // The receiving I/O thread busy-polls between frames that come close
  // together and sleeps in the pauses; either way each frame arrives once,
  // in order, and a close ends it.
  channel_options opts;
  opts.busy_poll = std::chrono::microseconds{500};
  auto [a, b] = make_pair_of_channels(opts);
  collecting_handler handler;
  b->start(&handler);
  int sent = 0;
  for (int burst = 0; burst < 20; ++burst) {
    for (int i = 0; i < 50; ++i)
      ASSERT_FALSE(a->send(std::to_string(sent++), send_mode::immediate));
    std::this_thread::sleep_for(std::chrono::milliseconds{burst % 3 * 2});
  }
  a->stop(1000ms);
  ASSERT_TRUE(handler.wait_closed(10s));
  EXPECT_EQ(handler.closed, errc::peer_closed);
  ASSERT_EQ(handler.frames.size(), static_cast<size_t>(sent));
  for (int i = 0; i < sent; ++i)
    ASSERT_EQ(handler.frames[i], std::to_string(i));
}

TEST(FrameChannel, IoThreadReportsABadFrame) {
  unique_fd x;
  unique_fd y;
  ASSERT_TRUE(make_socketpair(x, y));
  frame_channel b{std::move(y)};
  collecting_handler handler;
  b.start(&handler);
  uint32_t len = 0x7FFFFFFF;
  write_raw(x.get(), &len, 4);
  ASSERT_TRUE(handler.wait_closed(10s));
  EXPECT_EQ(handler.closed, errc::frame_too_large);
  // Writes after the break fail instead of hanging.
  EXPECT_TRUE(b.send("x"));
}

TEST(FrameChannel, SendFailsWithPeerClosedAfterPeerIsGone) {
  auto [a, b] = make_pair_of_channels();
  b.reset();
  caf::error err;
  for (int i = 0; i < 100 && !err; ++i)
    err = a->send(std::string(4096, 'z'));
  EXPECT_EQ(err, errc::peer_closed) << describe(err);
}
