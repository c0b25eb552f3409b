// Queues across hosts (remote_queue.hpp): a queue published on 127.0.0.1,
// with remote producers and consumers that are child processes of the test
// (nodes of their own) or handles in this process.

#include "multiproc/remote_queue.hpp"

#include <chrono>
#include <cstdio>
#include <cstdint>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "multiproc/bootstrap.hpp"
#include "multiproc/process.hpp"
#include "multiproc/queue.hpp"

using namespace multiproc;
using namespace std::chrono_literals;

namespace {

using clock_type = std::chrono::steady_clock;
constexpr auto kBound = 20s; // generous: a loaded machine, a sanitizer build

const std::string kSecret = "remote-queue-test-secret";

network_options net_options() {
  network_options net;
  net.secret = kSecret;
  net.connection_timeout = 3000ms;
  net.handshake_timeout = kBound;
  net.log = [](const std::string&) {};
  return net;
}

remote_queue_options client_options(uint16_t port,
                                    const std::string& secret = kSecret) {
  remote_queue_options o;
  o.port = port;
  o.secret = secret;
  o.connection_timeout = 3000ms;
  o.handshake_timeout = kBound;
  return o;
}

/// args "<port> <mode> <a> <b>". Modes: "put" puts a..a+b-1; "get" takes b
/// values and prints each as "value <v>"; "hold" takes one value, prints
/// "holding <v>" and waits to be killed. Exit 0, or 1 after printing what
/// failed on stderr.
int remote_client(child_context& ctx) {
  std::istringstream in{ctx.args};
  int port = 0;
  std::string mode;
  int32_t a = 0;
  int32_t b = 0;
  in >> port >> mode >> a >> b;
  auto q = remote_queue<int32_t>::connect(
    client_options(static_cast<uint16_t>(port)));
  if (!q) {
    std::fprintf(stderr, "connect: %s\n", describe(q.error()).c_str());
    return 1;
  }
  if (mode == "put") {
    for (int32_t i = a; i < a + b; ++i)
      if (auto err = q->put(i)) {
        std::fprintf(stderr, "put %d: %s\n", i, describe(err).c_str());
        return 1;
      }
    return 0;
  }
  int32_t n = mode == "hold" ? 1 : b;
  for (int32_t i = 0; i < n; ++i) {
    auto v = q->get(kBound);
    if (!v) {
      std::fprintf(stderr, "get: %s\n", describe(v.error()).c_str());
      return 1;
    }
    std::printf("%s %d\n", mode == "hold" ? "holding" : "value", *v);
    std::fflush(stdout);
  }
  if (mode == "hold")
    std::this_thread::sleep_for(60s); // until the test kills it
  return 0;
}

} // namespace

MULTIPROC_REGISTER_ENTRY("remote_queue_test.client", remote_client);

namespace {

class RemoteQueue : public ::testing::Test {
protected:
  void SetUp() override {
    children_.reserve(8); // start_client returns references into it
    queue_options qo;
    qo.capacity = 64;
    auto q = queue<int32_t>::create(qo);
    ASSERT_TRUE(q) << describe(q.error());
    q_ = std::move(*q);
    auto pub = publish(q_, net_options());
    ASSERT_TRUE(pub) << describe(pub.error());
    pub_ = std::move(*pub);
    port_ = pub_->port();
  }

  void TearDown() override {
    for (auto& c : children_) {
      [[maybe_unused]] auto e = c.kill();
      [[maybe_unused]] auto st = c.join(5s);
    }
    children_.clear();
    pub_.reset();
  }

  process& start_client(const std::string& mode, int32_t a, int32_t b) {
    process_options popts;
    popts.sink = [this](const output_line& line) {
      std::lock_guard<std::mutex> guard{mu_};
      (line.is_stderr ? errors_ : lines_)[line.pid].push_back(line.text);
    };
    auto p = start_process("remote_queue_test.client",
                           std::to_string(port_) + " " + mode + " "
                             + std::to_string(a) + " " + std::to_string(b),
                           popts);
    EXPECT_TRUE(p) << describe(p.error());
    children_.push_back(std::move(*p));
    return children_.back();
  }

  std::vector<std::string> lines_of(pid_t pid) {
    std::lock_guard<std::mutex> guard{mu_};
    return lines_[pid];
  }

  /// Waits until `pid` printed a line starting with `prefix`; returns it.
  std::string wait_line(pid_t pid, const std::string& prefix) {
    auto deadline = clock_type::now() + kBound;
    while (clock_type::now() < deadline) {
      for (auto& l : lines_of(pid))
        if (l.rfind(prefix, 0) == 0)
          return l;
      std::this_thread::sleep_for(5ms);
    }
    return {};
  }

  std::string name_of(process& p) {
    if (&p == &children_[0])
      return "producer of 0..99";
    if (&p == &children_[1])
      return "producer of 100..199";
    return "consumer";
  }

  /// What `pid` printed, stdout then stderr.
  std::string output_of(pid_t pid) {
    std::lock_guard<std::mutex> guard{mu_};
    std::string out;
    for (auto& l : lines_[pid])
      out += l + "\n";
    for (auto& l : errors_[pid])
      out += "stderr: " + l + "\n";
    return out;
  }

  queue<int32_t> q_;
  std::unique_ptr<queue_publisher> pub_;
  uint16_t port_ = 0;
  std::vector<process> children_;
  std::mutex mu_;
  std::map<pid_t, std::vector<std::string>> lines_;  // stdout
  std::map<pid_t, std::vector<std::string>> errors_; // stderr
};

TEST_F(RemoteQueue, ProducersAndConsumersOnOtherNodesShareOneQueue) {
  // Two remote producers put 0..199; a remote consumer and this process
  // take 100 each: every value arrives exactly once.
  auto& p1 = start_client("put", 0, 100);
  auto& p2 = start_client("put", 100, 100);
  auto& c = start_client("get", 0, 100);
  std::multiset<int32_t> seen;
  for (int i = 0; i < 100; ++i) {
    auto v = q_.get(kBound);
    ASSERT_TRUE(v) << describe(v.error());
    seen.insert(*v);
  }
  // Done with them: an unacknowledged value's slot would stop the producers
  // once they wrap around the ring (docs/queue.md).
  q_.ack();
  for (auto* child : {&p1, &p2, &c}) {
    auto st = child->join(kBound);
    if (!st) {
      std::multiset<int32_t> all = seen;
      for (auto& l : lines_of(c.pid()))
        if (l.rfind("value ", 0) == 0)
          all.insert(std::stoi(l.substr(6)));
      std::string missing;
      for (int32_t v = 0; v < 200; ++v)
        if (all.count(v) != 1)
          missing += std::to_string(v) + "x" + std::to_string(all.count(v)) + " ";
      FAIL() << describe(st.error()) << " (" << name_of(*child) << ") consumer lines "
             << lines_of(c.pid()).size() << " parent " << seen.size() << " not once: " << missing
             << " queue size " << q_.size() << " consumed " << q_.consumed()
             << " redelivered " << q_.redelivered();
    }
    EXPECT_TRUE(st->success()) << st->to_string() << "\n"
                               << output_of(child->pid());
  }
  for (auto& l : lines_of(c.pid())) {
    ASSERT_EQ(l.rfind("value ", 0), 0u) << l;
    seen.insert(std::stoi(l.substr(6)));
  }
  ASSERT_EQ(seen.size(), 200u);
  int32_t expect = 0;
  for (auto v : seen)
    EXPECT_EQ(v, expect++) << "a value missing or twice";
  EXPECT_TRUE(q_.empty());
}

TEST_F(RemoteQueue, AValueHeldByAKilledRemoteConsumerIsDeliveredAgain) {
  ASSERT_FALSE(q_.put(7));
  auto& holder = start_client("hold", 0, 0);
  EXPECT_EQ(wait_line(holder.pid(), "holding"), "holding 7")
    << output_of(holder.pid());
  EXPECT_TRUE(q_.empty()) << "the remote consumer's value is not leased";
  ASSERT_FALSE(holder.kill());
  // Its connection ends with it: its server process on this host is
  // killed and the queue hands the value out again.
  auto v = q_.get(kBound);
  ASSERT_TRUE(v) << describe(v.error());
  EXPECT_EQ(*v, 7);
  EXPECT_EQ(q_.last_deliveries(), 2u);
  EXPECT_GE(q_.redelivered(), 1u);
}

TEST_F(RemoteQueue, AcknowledgedValuesAreNotDeliveredAgain) {
  for (int32_t i = 0; i < 3; ++i)
    ASSERT_FALSE(q_.put(i));
  {
    auto rq = remote_queue<int32_t>::connect(client_options(port_));
    ASSERT_TRUE(rq) << describe(rq.error());
    for (int32_t i = 0; i < 2; ++i) {
      auto v = rq->get(kBound);
      ASSERT_TRUE(v) << describe(v.error());
      EXPECT_EQ(*v, i);
      EXPECT_EQ(rq->last_deliveries(), 1u);
    }
    // The handle ends cleanly: what it took is done, the rest goes back.
  }
  auto v = q_.get(kBound);
  ASSERT_TRUE(v) << describe(v.error());
  EXPECT_EQ(*v, 2);
  EXPECT_EQ(q_.last_deliveries(), 1u);
  auto again = q_.get(200ms);
  ASSERT_FALSE(again) << "value " << *again << " came twice";
  EXPECT_EQ(again.error(), errc::timeout) << describe(again.error());
}

TEST_F(RemoteQueue, CloseEndsTheStreamForARemoteConsumer) {
  auto rq = remote_queue<int32_t>::connect(client_options(port_));
  ASSERT_TRUE(rq) << describe(rq.error());
  ASSERT_FALSE(q_.put(1));
  ASSERT_FALSE(rq->put(2));
  ASSERT_FALSE(rq->close());
  EXPECT_TRUE(q_.closed());
  EXPECT_EQ(rq->put(3), errc::closed);
  auto size = rq->size();
  ASSERT_TRUE(size) << describe(size.error());
  EXPECT_EQ(*size, 2u);
  for (int32_t want : {1, 2}) {
    auto v = rq->get(kBound);
    ASSERT_TRUE(v) << describe(v.error());
    EXPECT_EQ(*v, want);
  }
  auto end = rq->get(kBound);
  ASSERT_FALSE(end);
  EXPECT_EQ(end.error(), errc::end_of_stream) << describe(end.error());
  auto after = rq->try_get();
  ASSERT_FALSE(after);
  EXPECT_EQ(after.error(), errc::end_of_stream);
}

TEST_F(RemoteQueue, ATimeoutAndAFullQueueAreReportedAsLocally) {
  auto rq = remote_queue<int32_t>::connect(client_options(port_));
  ASSERT_TRUE(rq) << describe(rq.error());
  auto none = rq->try_get();
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error(), errc::empty) << describe(none.error());
  auto t = rq->get(100ms);
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error(), errc::timeout) << describe(t.error());
  auto big = rq->raw().put(std::string(q_.raw().max_message_size() + 1, 'x'));
  EXPECT_EQ(big, errc::frame_too_large) << describe(big);
  // The handle still works after each error.
  ASSERT_FALSE(rq->put(5));
  auto v = q_.get(kBound);
  ASSERT_TRUE(v);
  EXPECT_EQ(*v, 5);
}

TEST_F(RemoteQueue, AWrongSecretIsRefused) {
  auto rq = remote_queue<int32_t>::connect(client_options(port_, "wrong"));
  ASSERT_FALSE(rq);
  EXPECT_EQ(rq.error(), errc::auth_failed) << describe(rq.error());
}

TEST_F(RemoteQueue, AQueueOfAnotherTypeIsRefused) {
  auto rq = remote_queue<std::string>::connect(client_options(port_));
  ASSERT_FALSE(rq);
  EXPECT_EQ(rq.error(), errc::type_mismatch) << describe(rq.error());
}

TEST_F(RemoteQueue, AWaitingCallFailsWithConnectionLostWhenThePublisherStops) {
  auto rq = remote_queue<int32_t>::connect(client_options(port_));
  ASSERT_TRUE(rq) << describe(rq.error());
  // A get that would wait for ever ends when the publisher goes away.
  auto waiting = std::async(std::launch::async, [&] { return rq->get(); });
  EXPECT_EQ(waiting.wait_for(200ms), std::future_status::timeout);
  pub_.reset();
  ASSERT_EQ(waiting.wait_for(kBound), std::future_status::ready)
    << "the get still waits";
  auto r = waiting.get();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::connection_lost) << describe(r.error());
  EXPECT_EQ(rq->put(1), errc::connection_lost) << "the handle is closed";
}

} // namespace
