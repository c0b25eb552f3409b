// Tests actors/worker against malformed peers (issue 6): worker children
// that write garbage, a frame that never ends, a 4 GiB length, or stop
// reading. Each is cut off with an error naming what was wrong, while the
// parent and another worker in the same actor system keep working, in
// bounded memory.
//
// A misbehaving child is a worker entry whose factory writes raw bytes to its
// channel (descriptor 3, see child_context::channel) after the handshake and
// before the child's channel starts, so nothing else is written before them.
#include "multiproc/worker.hpp"

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <future>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <caf/all.hpp>
#include <cereal/types/string.hpp>

using namespace multiproc;
using namespace std::chrono_literals;

namespace malformed_peer_test {

// -- the children -------------------------------------------------------------

/// child_context::channel is always descriptor 3 in a child (bootstrap.hpp).
constexpr int channel_fd = 3;

/// The peer announces this much and sends endless_sent bytes of it.
constexpr uint32_t endless_size = 60u << 20;
constexpr size_t endless_sent = 64 * 1024;

/// Writes all of `bytes` to the (non-blocking) channel.
void write_raw(const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    auto n = ::write(channel_fd, bytes.data() + done, bytes.size() - done);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      pollfd p{channel_fd, POLLOUT, 0};
      ::poll(&p, 1, 1000);
    } else {
      std::perror("malformed_peer_test: write to the channel");
      std::_Exit(70);
    }
  }
}

std::string header(uint32_t body_size) {
  std::string result(frame_header_size, '\0');
  write_frame_header(body_size, result.data());
  return result;
}

caf::behavior adder(caf::event_based_actor*) {
  return {[](int32_t x) { return x + 1; }};
}

/// A worker that writes `bytes` on its channel, then serves as `adder`.
worker_factory writes_then_serves(std::string bytes) {
  return [bytes](caf::actor_system& sys) {
    write_raw(bytes);
    return sys.spawn(adder);
  };
}

std::string text_garbage() {
  std::string text;
  while (text.size() < 4096)
    text += "this is not a frame, only text\n";
  return text;
}

MULTIPROC_WORKER("malformed.healthy", adder);

// Text: its first four bytes read as a length of 1936287860 ("this").
const bool text_registered
  = register_worker("malformed.text", writes_then_serves(text_garbage()));

// A frame of the right size whose body is not an envelope (version 'g').
const bool bad_envelope_registered = register_worker(
  "malformed.bad_envelope",
  writes_then_serves(header(32) + std::string(32, 'g')));

// A header announcing 60 MiB, then 64 KiB of it; the rest never comes (the
// replies of the running worker only add to the body).
const bool endless_registered = register_worker(
  "malformed.endless",
  writes_then_serves(header(endless_size) + std::string(endless_sent, 'x')));

// A header announcing 4 GiB (the largest u32), then a little of it.
const bool huge_registered = register_worker(
  "malformed.huge",
  writes_then_serves(header(0xffffffffu) + std::string(1024, 'x')));

// Never reads its channel: the factory does not return (the child ends by
// SIGKILL, or with its parent through the lifeline).
const bool deaf_registered = register_worker(
  "malformed.deaf", [](caf::actor_system&) -> caf::actor {
    for (;;)
      std::this_thread::sleep_for(1h);
  });

// -- the parent's memory ------------------------------------------------------

/// This process's resident memory now, in bytes.
size_t rss_now() {
  std::ifstream in{"/proc/self/statm"};
  size_t size = 0;
  size_t resident = 0;
  in >> size >> resident;
  return resident * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
}

/// Resets the peak resident memory (VmHWM) to the current one; false if the
/// kernel does not allow it.
bool reset_peak_rss() {
  std::ofstream out{"/proc/self/clear_refs"};
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

/// The peak resident memory since reset_peak_rss() (VmHWM), in bytes.
size_t peak_rss() {
  std::ifstream in{"/proc/self/status"};
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmHWM:", 0) == 0)
      return std::stoul(line.substr(6)) * 1024;
  return rss_now();
}

constexpr size_t rss_bound = size_t{16} << 20;

bool gone(pid_t pid) {
  return ::kill(pid, 0) != 0 && errno == ESRCH;
}

// -- fixture ------------------------------------------------------------------

class MalformedPeer : public testing::Test {
protected:
  void SetUp() override {
    healthy_ = spawn("malformed.healthy");
    ASSERT_TRUE(healthy_);
    expect_healthy_answers();
    // Measure from here: the actor system and one worker are running.
    peak_reset_ = reset_peak_rss();
    baseline_ = peak_reset_ ? peak_rss() : rss_now();
  }

  void TearDown() override {
    if (bad_)
      [[maybe_unused]] auto st = kill_worker(bad_);
    if (healthy_) {
      auto st = stop_worker(healthy_);
      EXPECT_TRUE(st && st->success()) << (st ? st->to_string()
                                              : describe(st.error()));
    }
  }

  caf::actor spawn(const std::string& entry, worker_options opts = {}) {
    opts.start_timeout = 10s;
    auto w = spawn_worker(sys_, entry, std::move(opts));
    EXPECT_TRUE(w) << entry << ": " << describe(w.error());
    return w ? *w : caf::actor{};
  }

  void expect_healthy_answers() {
    auto y = request<int32_t>(healthy_, 5s, int32_t{41});
    ASSERT_TRUE(y) << "the healthy worker: " << describe(y.error());
    EXPECT_EQ(*y, 42);
  }

  /// Growth of the resident memory since SetUp: its peak where the kernel
  /// allows resetting the peak, else now.
  size_t rss_growth() {
    auto now = peak_reset_ ? peak_rss() : rss_now();
    return now > baseline_ ? now - baseline_ : 0;
  }

  /// Spawns `entry`, expects its channel to be cut off with worker_died
  /// naming `code` and `text`, and the child to be gone.
  void expect_cut_off(const std::string& entry, errc code,
                      const std::string& text) {
    bad_ = spawn(entry);
    ASSERT_TRUE(bad_);
    auto pid = info_of(bad_)->pid;
    auto y = request<int32_t>(bad_, 10s, int32_t{1});
    ASSERT_FALSE(y) << entry << " answered " << *y;
    auto what = describe(y.error());
    EXPECT_EQ(y.error(), errc::worker_died) << what;
    EXPECT_NE(what.find("broke the channel (" + std::string{to_string(code)}
                        + ": " + text),
              std::string::npos)
      << what;
    // Cut off: the parent stopped the child; stopping it again reports how.
    auto st = stop_worker(bad_);
    EXPECT_TRUE(st) << describe(st.error());
    EXPECT_TRUE(gone(pid)) << "the child " << pid << " still runs";
    // Later requests fail at once with the same error.
    auto again = request<int32_t>(bad_, 10s, int32_t{2});
    ASSERT_FALSE(again);
    EXPECT_EQ(describe(again.error()), what);
    bad_ = nullptr;
  }

  caf::actor_system_config cfg_;
  caf::actor_system sys_{cfg_};
  caf::actor healthy_;
  caf::actor bad_;
  bool peak_reset_ = false;
  size_t baseline_ = 0;
};

// -- garbage ------------------------------------------------------------------

TEST_F(MalformedPeer, TextOnTheChannelIsCutOffAsAFrameTooLarge) {
  expect_cut_off("malformed.text", errc::frame_too_large,
                 "the peer announced a frame of 1936287860 bytes; the limit "
                 "is 67108864 bytes");
  expect_healthy_answers();
  EXPECT_LE(rss_growth(), rss_bound);
}

TEST_F(MalformedPeer, AFrameThatIsNotAnEnvelopeIsCutOffAsAProtocolError) {
  expect_cut_off("malformed.bad_envelope", errc::protocol_error,
                 "wire protocol version 103 is not supported");
  expect_healthy_answers();
  EXPECT_LE(rss_growth(), rss_bound);
}

// -- a 4 GiB length -----------------------------------------------------------

TEST_F(MalformedPeer, A4GiBLengthIsCutOffBeforeAnythingIsAllocated) {
  expect_cut_off("malformed.huge", errc::frame_too_large,
                 "the peer announced a frame of 4294967295 bytes; the limit "
                 "is 67108864 bytes");
  expect_healthy_answers();
  EXPECT_LE(rss_growth(), rss_bound);
}

// -- a frame that never ends --------------------------------------------------

// Regression test: the receive buffer was sized for the whole announced frame
// (60 MiB here) as soon as its header arrived.
TEST_F(MalformedPeer, AFrameThatNeverEndsCostsOnlyTheBytesThatArrived) {
  bad_ = spawn("malformed.endless");
  ASSERT_TRUE(bad_);
  auto pid = info_of(bad_)->pid;
  // The reply is stuck inside the endless frame: the request times out,
  // naming the worker.
  auto y = request<int32_t>(bad_, 300ms, int32_t{1});
  ASSERT_FALSE(y) << "answered " << *y;
  EXPECT_EQ(y.error(), errc::timeout) << describe(y.error());
  EXPECT_NE(describe(y.error()).find("request to worker malformed.endless["
                                     + std::to_string(pid)
                                     + "] timed out after 300 ms"),
            std::string::npos)
    << describe(y.error());
  // Meanwhile the other worker answers.
  expect_healthy_answers();
  // Cut off: the child ends (it reads the shutdown request) inside the
  // frame, which the parent reports with how much of it came.
  auto st = stop_worker(bad_);
  EXPECT_TRUE(st) << describe(st.error());
  EXPECT_TRUE(gone(pid));
  auto again = request<int32_t>(bad_, 1s, int32_t{2});
  ASSERT_FALSE(again);
  auto what = describe(again.error());
  EXPECT_EQ(again.error(), errc::worker_died) << what;
  EXPECT_NE(what.find("broke the channel (truncated_frame: the channel closed "
                      "inside a frame: "),
            std::string::npos)
    << what;
  EXPECT_NE(what.find(" of " + std::to_string(endless_size) + " body bytes"),
            std::string::npos)
    << what;
  bad_ = nullptr;
  expect_healthy_answers();
  // The parent received 64 KiB of the frame: it must not have held 60 MiB.
  EXPECT_LE(rss_growth(), rss_bound);
}

// -- a peer that stops reading (backpressure) ---------------------------------

/// Sends 1 KiB messages to `w` from a thread until a send fails or
/// `total` bytes went; counts what send() accepted.
struct flooder {
  flooder(caf::actor w, size_t total) : worker(std::move(w)) {
    thread = std::thread{[this, total] {
      std::string msg(1024, 'm');
      while (sent.load() < total) {
        if (auto err = send(worker, msg)) {
          error = describe(err);
          break;
        }
        sent += msg.size();
      }
      done = true;
    }};
  }
  ~flooder() {
    if (thread.joinable())
      thread.join();
  }
  /// Waits until the sender has made no progress for a while (blocked), or
  /// it is done, or `timeout`; returns true if it is blocked.
  bool wait_blocked(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    size_t last = sent.load();
    int still = 0;
    while (!done.load() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(50ms);
      auto now = sent.load();
      still = now == last ? still + 1 : 0;
      last = now;
      if (still >= 6)
        return true;
    }
    return false;
  }

  caf::actor worker;
  std::atomic<size_t> sent{0};
  std::atomic<bool> done{false};
  std::string error; // read after join
  std::thread thread;
};

constexpr size_t flood_total = size_t{512} << 20;

worker_options deaf_options() {
  worker_options opts;
  opts.channel.send_high_watermark = size_t{1} << 20;
  opts.shutdown_timeout = 500ms;
  return opts;
}

TEST_F(MalformedPeer, SendsToAPeerThatStopsReadingBlockInBoundedMemory) {
  bad_ = spawn("malformed.deaf", deaf_options());
  ASSERT_TRUE(bad_);
  auto pid = info_of(bad_)->pid;
  flooder flood{bad_, flood_total};
  ASSERT_TRUE(flood.wait_blocked(20s))
    << "the sender did not block; it sent " << flood.sent.load() << " bytes";
  // What send() accepted is what the socket buffers and the watermark hold,
  // not the 512 MiB the sender tried.
  EXPECT_LT(flood.sent.load(), rss_bound) << "bytes accepted";
  EXPECT_LE(rss_growth(), rss_bound);
  // The other worker is not affected.
  expect_healthy_answers();
  // Cut off: killing the child ends the blocked send with an error.
  auto st = kill_worker(bad_);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_EQ(st->signal, SIGKILL);
  flood.thread.join();
  EXPECT_TRUE(flood.error.find("peer_closed") == 0
              || flood.error.find("worker_died") == 0)
    << flood.error;
  EXPECT_TRUE(gone(pid));
  bad_ = nullptr;
  expect_healthy_answers();
  EXPECT_LE(rss_growth(), rss_bound);
}

// Regression test: stop_worker() waited forever to queue its shutdown
// request behind the full channel instead of killing the child after
// shutdown_timeout.
TEST_F(MalformedPeer, StopWorkerEndsAPeerThatStopsReading) {
  bad_ = spawn("malformed.deaf", deaf_options());
  ASSERT_TRUE(bad_);
  auto pid = info_of(bad_)->pid;
  flooder flood{bad_, flood_total};
  ASSERT_TRUE(flood.wait_blocked(20s))
    << "the sender did not block; it sent " << flood.sent.load() << " bytes";
  auto stopped = std::async(std::launch::async, [w = bad_] {
    return stop_worker(w);
  });
  bool ended = stopped.wait_for(10s) == std::future_status::ready;
  EXPECT_TRUE(ended) << "stop_worker() did not return within 10 s";
  if (!ended)
    [[maybe_unused]] auto st = kill_worker(bad_); // unblocks it
  auto st = stopped.get();
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_EQ(st->signal, SIGKILL) << st->to_string();
  flood.thread.join();
  EXPECT_FALSE(flood.error.empty());
  EXPECT_TRUE(gone(pid));
  bad_ = nullptr;
  expect_healthy_answers();
}

// Regression test: a blocking request to a peer that stops reading waited
// for room on the channel without its timeout.
TEST_F(MalformedPeer, ARequestToAPeerThatStopsReadingTimesOut) {
  bad_ = spawn("malformed.deaf", deaf_options());
  ASSERT_TRUE(bad_);
  flooder flood{bad_, flood_total};
  ASSERT_TRUE(flood.wait_blocked(20s))
    << "the sender did not block; it sent " << flood.sent.load() << " bytes";
  auto answer = std::async(std::launch::async, [w = bad_] {
    return request<int32_t>(w, 200ms, int32_t{1});
  });
  bool ended = answer.wait_for(10s) == std::future_status::ready;
  EXPECT_TRUE(ended) << "a request with a 200 ms timeout still waits after "
                        "10 s";
  if (!ended)
    [[maybe_unused]] auto st = kill_worker(bad_); // unblocks it
  auto y = answer.get();
  ASSERT_FALSE(y);
  if (ended) {
    EXPECT_EQ(y.error(), errc::timeout) << describe(y.error());
  }
  [[maybe_unused]] auto st = kill_worker(bad_);
  flood.thread.join();
  bad_ = nullptr;
  expect_healthy_answers();
}

} // namespace malformed_peer_test
