// Tests for runtime/shm_queue between processes: consumers and producers
// SIGKILLed at chosen steps (through the queue seam) or at random instants,
// the repairs that follow, and that nothing is left behind. The test binary
// is its own child: the entries below run in child processes.

#include "multiproc/shm_queue.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <dirent.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "multiproc/bootstrap.hpp"
#include "multiproc/detail/queue_seam.hpp"
#include "multiproc/error.hpp"
#include "multiproc/process.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
using namespace multiproc;
using namespace multiproc::test;

namespace {

using clock_type = std::chrono::steady_clock;

// -- helpers shared by parent and child ------------------------------------------

shm_queue make_queue(uint32_t capacity, bool batching) {
  shm_queue_options opts;
  opts.capacity = capacity;
  opts.max_message_size = 64;
  opts.batching = batching;
  auto q = shm_queue::create(opts);
  EXPECT_TRUE(q) << describe(q.error());
  return std::move(*q);
}

/// Maps the queue passed as the child's descriptor `i`; exits on failure.
shm_queue attach_or_exit(child_context& ctx, size_t i = 0) {
  if (ctx.fds.size() <= i)
    std::_Exit(20);
  auto q = shm_queue::attach(std::move(ctx.fds[i]));
  if (!q) {
    std::fprintf(stderr, "attach: %s\n", describe(q.error()).c_str());
    std::_Exit(21);
  }
  return std::move(*q);
}

bool send_text(int fd, const std::string& text) {
  return ::send(fd, text.data(), text.size(), MSG_NOSIGNAL)
         == static_cast<ssize_t>(text.size());
}

/// Waits until the child has exited, without reaping it (so that its pid
/// cannot be reused before recover(pid)).
bool wait_exited(process& proc, std::chrono::milliseconds timeout) {
  pollfd p{proc.exit_fd(), POLLIN, 0};
  auto deadline = clock_type::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - clock_type::now());
    int rc = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(0, left.count())));
    if (rc > 0)
      return true;
    if (rc == 0 || errno != EINTR)
      return false;
  }
}

/// True if no process has `pid` any more (exited and reaped).
bool reaped(pid_t pid) {
  return ::kill(pid, 0) != 0 && errno == ESRCH;
}

std::set<std::string> dev_shm_names() {
  std::set<std::string> names;
  if (DIR* dir = ::opendir("/dev/shm")) {
    while (auto* ent = ::readdir(dir))
      names.insert(ent->d_name);
    ::closedir(dir);
  }
  return names;
}

// -- seam hooks (run in children) ------------------------------------------------

void die_at_get_leased(detail::queue_step step) {
  if (step == detail::queue_step::get_leased)
    ::kill(::getpid(), SIGKILL);
}

void die_at_put_claimed(detail::queue_step step) {
  if (step == detail::queue_step::put_claimed)
    ::kill(::getpid(), SIGKILL);
}

// -- entries (run in children) ---------------------------------------------------

/// Takes a message and is SIGKILLed before get() returns it.
int die_holding_a_lease(child_context& ctx) {
  auto q = attach_or_exit(ctx);
  detail::set_queue_hook(die_at_get_leased);
  auto msg = q.get(10s);
  return msg ? 2 : 3; // not reached while a message comes
}

/// Puts args and is SIGKILLed after claiming a slot, before writing.
int die_while_putting(child_context& ctx) {
  auto q = attach_or_exit(ctx);
  detail::set_queue_hook(die_at_put_claimed);
  auto err = q.put(ctx.args, 10s);
  return err ? 3 : 2; // not reached
}

/// Takes one message and reports "<bytes> <deliveries>" on the channel.
int take_one(child_context& ctx) {
  auto q = attach_or_exit(ctx);
  auto msg = q.get(10s);
  if (!msg)
    return send_text(ctx.channel.get(), "error: " + describe(msg.error())) ? 4
                                                                             : 5;
  auto text = std::string{msg->bytes} + " " + std::to_string(msg->deliveries);
  return send_text(ctx.channel.get(), text) ? 0 : 5;
}

/// Echoes every message of fds[0] into fds[1] until it gets "stop".
int echo_until_stop(child_context& ctx) {
  auto in = attach_or_exit(ctx, 0);
  auto out = attach_or_exit(ctx, 1);
  for (;;) {
    auto msg = in.get(30s);
    if (!msg)
      return 4;
    if (msg->bytes == "stop")
      return 0;
    if (out.put(msg->bytes, 10s))
      return 5;
  }
}

} // namespace

MULTIPROC_REGISTER_ENTRY("shm_queue_test.echo_until_stop", echo_until_stop);
MULTIPROC_REGISTER_ENTRY("shm_queue_test.die_holding_a_lease",
                         die_holding_a_lease);
MULTIPROC_REGISTER_ENTRY("shm_queue_test.die_while_putting", die_while_putting);
MULTIPROC_REGISTER_ENTRY("shm_queue_test.take_one", take_one);

namespace {

caf::expected<process> start_with_queue(const std::string& entry,
                                        const shm_queue& q,
                                        std::string args = {}) {
  process_options opts;
  opts.fds = {q.fd()};
  return start_process(entry, std::move(args), std::move(opts));
}

/// Waits for the child's exit and expects a SIGKILL.
void expect_killed(process& proc) {
  auto status = proc.join(10s);
  ASSERT_TRUE(status) << describe(status.error());
  EXPECT_TRUE(status->signaled && status->signal == SIGKILL)
    << status->to_string();
}

} // namespace

TEST(ShmQueueProcesses, RedeliversAMessageWhoseConsumerWasKilled) {
  auto q = make_queue(8, false);
  ASSERT_FALSE(q.put("job"));
  auto victim = start_with_queue("shm_queue_test.die_holding_a_lease", q);
  ASSERT_TRUE(victim) << describe(victim.error());
  expect_killed(*victim);
  EXPECT_TRUE(q.empty()); // leased by the dead consumer, not yet repaired
  // Another consumer finds the dead lease by itself (its wait scans).
  auto other = start_with_queue("shm_queue_test.take_one", q);
  ASSERT_TRUE(other) << describe(other.error());
  auto channel = other->take_channel();
  EXPECT_EQ(read_until_eof(channel.get(), 10s), "job 2");
  auto status = other->join(10s);
  ASSERT_TRUE(status) << describe(status.error());
  EXPECT_TRUE(status->success()) << status->to_string();
  EXPECT_EQ(q.redelivered(), 1u);
  EXPECT_EQ(q.consumed(), 1u);
  EXPECT_EQ(q.get(0ms).error(), errc::empty);
}

TEST(ShmQueueProcesses, AnIdleConsumerCostsNoCpuAfterSpinningForTraffic) {
  auto requests = make_queue(64, false);
  auto replies = make_queue(64, false);
  process_options opts;
  opts.fds = {requests.fd(), replies.fd()};
  auto echo = start_process("shm_queue_test.echo_until_stop", {}, opts);
  ASSERT_TRUE(echo) << describe(echo.error());
  // Back-to-back round trips grow the child's spin budget to its maximum.
  for (int i = 0; i < 5000; ++i) {
    ASSERT_FALSE(requests.put("ping", 5s));
    auto reply = replies.get(5s);
    ASSERT_TRUE(reply) << describe(reply.error());
    ASSERT_EQ(reply->bytes, "ping");
  }
  std::this_thread::sleep_for(100ms);
  auto before = cpu_ticks(echo->pid());
  std::this_thread::sleep_for(1000ms);
  auto used = cpu_ticks(echo->pid()) - before;
  // Spinning through that second would take about 100 ticks; the futex
  // sleep with its 10 ms recovery scans takes almost none.
  EXPECT_LE(used, 5) << "the idle consumer used " << used << " ticks in 1 s";
  ASSERT_FALSE(requests.put("stop", 5s));
  auto status = echo->join(10s);
  ASSERT_TRUE(status) << describe(status.error());
  EXPECT_TRUE(status->success()) << status->to_string();
}

TEST(ShmQueueProcesses, DropsTheMessageOfAProducerKilledWhilePutting) {
  auto q = make_queue(2, false);
  auto victim = start_with_queue("shm_queue_test.die_while_putting", q, "lost");
  ASSERT_TRUE(victim) << describe(victim.error());
  expect_killed(*victim);
  // The dead producer's slot is claimed: one slot of two is left.
  ASSERT_FALSE(q.put("a", 0ms));
  EXPECT_EQ(q.put("b", 0ms), errc::full);
  // A waiting producer finds the dead one's slot and frees it.
  auto err = q.put("b", 10s);
  ASSERT_FALSE(err) << describe(err);
  auto first = q.get(1s);
  ASSERT_TRUE(first) << describe(first.error());
  EXPECT_EQ(std::string{first->bytes}, "a");
  auto second = q.get(1s);
  ASSERT_TRUE(second) << describe(second.error());
  EXPECT_EQ(std::string{second->bytes}, "b");
  EXPECT_EQ(q.get(0ms).error(), errc::empty);
  q.ack();
  // Both slots cycle again.
  ASSERT_FALSE(q.put("c", 0ms));
  ASSERT_FALSE(q.put("d", 0ms));
  EXPECT_EQ(q.size(), 2u);
  EXPECT_EQ(q.redelivered(), 0u);
}

TEST(ShmQueueProcesses, RecoverOfAKilledConsumerRedeliversAtOnce) {
  auto q = make_queue(8, false);
  ASSERT_FALSE(q.put("job"));
  auto victim = start_with_queue("shm_queue_test.die_holding_a_lease", q);
  ASSERT_TRUE(victim) << describe(victim.error());
  ASSERT_TRUE(wait_exited(*victim, 10s));
  // Not reaped yet: its pid cannot belong to another process.
  EXPECT_EQ(q.get(0ms).error(), errc::empty); // a try does not scan
  EXPECT_EQ(q.recover(victim->pid()), 1u);
  auto msg = q.get(0ms);
  ASSERT_TRUE(msg) << describe(msg.error());
  EXPECT_EQ(std::string{msg->bytes}, "job");
  EXPECT_EQ(msg->deliveries, 2u);
  EXPECT_EQ(q.redelivered(), 1u);
  EXPECT_EQ(q.recover(victim->pid()), 0u); // nothing left to repair
  expect_killed(*victim);
}

// -- random SIGKILLs ---------------------------------------------------------------

namespace {

constexpr int stress_producers = 2;
constexpr int stress_consumers = 2;
constexpr uint32_t stress_per_producer = 20000;
constexpr uint32_t stress_messages = stress_producers * stress_per_producer;

/// Progress and receipts, in a memfd shared by the parent and the children.
struct stress_record {
  /// Per producer: puts that returned, and 1 + the index of a put under way
  /// (a producer restarted after a kill cannot know whether that one landed).
  std::atomic<uint32_t> done[stress_producers];
  std::atomic<uint32_t> intent[stress_producers];
  /// Per message: a restarted producer may have put it twice.
  std::atomic<uint8_t> reput[stress_messages];
  /// Per message: how often a consumer got it, and how often with
  /// deliveries > 1.
  std::atomic<uint32_t> got[stress_messages];
  std::atomic<uint32_t> got_again[stress_messages];
};

/// A shared mapping of a stress_record.
class shared_record {
public:
  /// Zero-filled memory: every count starts at 0.
  static shared_record create() {
    unique_fd fd{static_cast<int>(
      ::syscall(SYS_memfd_create, "shm-queue-stress", MFD_CLOEXEC))};
    if (!fd || ::ftruncate(fd.get(), sizeof(stress_record)) != 0)
      return {};
    return shared_record{std::move(fd)};
  }

  static shared_record attach(unique_fd fd) {
    return shared_record{std::move(fd)};
  }

  shared_record() = default;
  shared_record(shared_record&& other) noexcept
    : fd_(std::move(other.fd_)), rec_(std::exchange(other.rec_, nullptr)) {
  }
  shared_record& operator=(shared_record&&) = delete;
  ~shared_record() {
    if (rec_ != nullptr)
      ::munmap(rec_, sizeof(stress_record));
  }

  stress_record* get() const noexcept { return rec_; }
  stress_record* operator->() const noexcept { return rec_; }
  int fd() const noexcept { return fd_.get(); }

private:
  explicit shared_record(unique_fd fd) : fd_(std::move(fd)) {
    void* p = ::mmap(nullptr, sizeof(stress_record), PROT_READ | PROT_WRITE,
                     MAP_SHARED, fd_.get(), 0);
    if (p != MAP_FAILED)
      rec_ = static_cast<stress_record*>(p);
  }

  unique_fd fd_;
  stress_record* rec_ = nullptr;
};

/// A child's own death, if any: SIGKILL at the n-th seam step of its kind.
std::atomic<int> steps_to_death{0};
detail::queue_step death_step = detail::queue_step::put_claimed;

void die_at_nth_step(detail::queue_step step) {
  if (step == death_step && steps_to_death.fetch_sub(1) == 1)
    ::kill(::getpid(), SIGKILL);
}

/// Arms die_at_nth_step from the child's args "<index> <steps>" (0 steps:
/// no death of its own); returns the index.
int arm_death(const std::string& args, detail::queue_step step) {
  auto space = args.find(' ');
  steps_to_death = std::stoi(args.substr(space + 1));
  death_step = step;
  if (steps_to_death > 0)
    detail::set_queue_hook(die_at_nth_step);
  return std::stoi(args.substr(0, space));
}

/// Spins for `d`: the work a child does with each message.
void busy_for(std::chrono::microseconds d) {
  auto until = clock_type::now() + d;
  while (clock_type::now() < until) {
  }
}

/// Producer <index> puts its ids, resuming after the last put that returned.
int stress_producer(child_context& ctx) {
  auto q = attach_or_exit(ctx);
  auto rec = shared_record::attach(std::move(ctx.fds[1]));
  if (rec.get() == nullptr)
    return 22;
  auto p = arm_death(ctx.args, detail::queue_step::put_claimed);
  auto i = rec->done[p].load();
  if (rec->intent[p].load() > i) // killed inside that put: it may have landed
    rec->reput[p * stress_per_producer + i].store(1);
  for (; i < stress_per_producer; ++i) {
    uint32_t id = p * stress_per_producer + i;
    rec->intent[p].store(i + 1);
    if (auto err = q.put({reinterpret_cast<const char*>(&id), sizeof(id)},
                         10s)) {
      std::fprintf(stderr, "put: %s\n", describe(err).c_str());
      return 6;
    }
    rec->done[p].store(i + 1);
    busy_for(2us);
  }
  return 0;
}

/// Records every id it gets until the end of the stream, spending a few
/// microseconds on each.
int stress_consumer(child_context& ctx) {
  auto q = attach_or_exit(ctx);
  auto rec = shared_record::attach(std::move(ctx.fds[1]));
  if (rec.get() == nullptr)
    return 22;
  arm_death(ctx.args, detail::queue_step::get_leased);
  for (;;) {
    auto msg = q.get(10s);
    if (!msg) {
      if (msg.error() == errc::end_of_stream)
        return 0;
      std::fprintf(stderr, "get: %s\n", describe(msg.error()).c_str());
      return 7;
    }
    uint32_t id = 0;
    if (msg->bytes.size() != sizeof(id))
      return 8;
    std::memcpy(&id, msg->bytes.data(), sizeof(id));
    if (id >= stress_messages)
      return 9;
    if (msg->deliveries > 1)
      rec->got_again[id].fetch_add(1);
    rec->got[id].fetch_add(1);
    busy_for(10us);
  }
}

} // namespace

MULTIPROC_REGISTER_ENTRY("shm_queue_test.stress_producer", stress_producer);
MULTIPROC_REGISTER_ENTRY("shm_queue_test.stress_consumer", stress_consumer);

namespace {

/// One child of the stress test and what it plays.
struct stress_child {
  std::string entry;
  bool consumer = false;
  int index = 0;
  process proc;
  bool finished = false; // exited with code 0
};

class ShmQueueKills : public testing::TestWithParam<bool> {};

} // namespace

// Children die two ways: the parent SIGKILLs a random one at a random
// instant (producers and consumers in turn), and children started with a
// death of their own SIGKILL themselves at a random put_claimed or
// get_leased step (a consumer then surely holds a lease). Each is restarted.
TEST_P(ShmQueueKills, LoseNothingAndDuplicateOnlyRedeliveredMessages) {
  constexpr int max_kills = 16; // by the parent
  constexpr int max_armed = 8;  // children started with a death of their own,
                                // of each kind
  constexpr auto time_limit = 12s;
  auto mappings_before = queue_mappings();
  auto descriptors_before = queue_descriptors();
  auto dev_shm_before = dev_shm_names();
  auto rec = shared_record::create();
  ASSERT_NE(rec.get(), nullptr);
  std::mt19937 rng{std::random_device{}()};
  std::vector<pid_t> pids;
  int kills = 0;
  int armed[2] = {0, 0}; // producers, consumers
  int consumer_deaths = 0; // killed or died, either way
  uint64_t consumed = 0;
  uint64_t redelivered = 0;
  {
    auto q = make_queue(16, GetParam());
    auto start = [&](stress_child& c) {
      int steps = 0;
      if (armed[c.consumer] < max_armed) {
        steps = std::uniform_int_distribution<int>{1, 500}(rng);
        ++armed[c.consumer];
      }
      process_options opts;
      opts.fds = {q.fd(), rec.fd()};
      auto args = std::to_string(c.index) + " " + std::to_string(steps);
      auto proc = start_process(c.entry, args, std::move(opts));
      if (!proc)
        return describe(proc.error());
      pids.push_back(proc->pid());
      c.proc = std::move(*proc);
      return std::string{};
    };
    std::vector<stress_child> children;
    for (int p = 0; p < stress_producers; ++p)
      children.push_back({"shm_queue_test.stress_producer", false, p, {}, false});
    for (int c = 0; c < stress_consumers; ++c)
      children.push_back({"shm_queue_test.stress_consumer", true, c, {}, false});
    for (auto& c : children)
      ASSERT_EQ(start(c), "");
    /// Reaps a child that has exited (before: recover(pid) half the time,
    /// otherwise the waiters' scans find it); restarts it after a SIGKILL.
    /// Returns false if the child failed.
    auto settle_exit = [&](stress_child& c) {
      if (rng() % 2 == 0)
        q.recover(c.proc.pid());
      auto st = c.proc.join(10s);
      if (!st) {
        ADD_FAILURE() << describe(st.error());
        return false;
      }
      if (st->success()) {
        c.finished = true;
        return true;
      }
      if (!st->signaled || st->signal != SIGKILL) {
        ADD_FAILURE() << c.entry << " " << c.index << " " << st->to_string();
        return false;
      }
      consumer_deaths += c.consumer;
      auto err = start(c);
      if (!err.empty())
        ADD_FAILURE() << err;
      return err.empty();
    };
    auto began = clock_type::now();
    bool closed = false;
    bool failed = false;
    while (!failed) {
      if (clock_type::now() - began > time_limit) {
        ADD_FAILURE() << "the stress test did not finish within 12 s";
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds{
        std::uniform_int_distribution<int>{2, 20}(rng)});
      for (auto& c : children)
        if (!c.finished && wait_exited(c.proc, 0ms) && !settle_exit(c))
          failed = true;
      if (!closed
          && std::all_of(children.begin(), children.begin() + stress_producers,
                         [](auto& c) { return c.finished; })) {
        q.close(); // both producers are done: the stream ends
        closed = true;
      }
      if (std::all_of(children.begin(), children.end(),
                      [](auto& c) { return c.finished; }))
        break;
      if (failed || kills >= max_kills)
        continue;
      // Producers and consumers in turn, a random one of each.
      auto& victim = children[(kills % 2 == 0 ? 0 : stress_producers)
                              + std::uniform_int_distribution<size_t>{
                                0, stress_consumers - 1}(rng)];
      if (victim.finished)
        continue;
      ASSERT_FALSE(victim.proc.kill());
      ASSERT_TRUE(wait_exited(victim.proc, 10s));
      ++kills;
      failed = !settle_exit(victim);
    }
    for (auto& c : children) {
      if (!c.finished)
        c.proc.kill();
      auto st = c.proc.join(10s);
      EXPECT_TRUE(st) << describe(st.error());
    }
    consumed = q.consumed();
    redelivered = q.redelivered();
  }
  // Every message arrived; any extra copy was a redelivery (or a put that a
  // killed producer could not know had landed).
  uint32_t lost = 0;
  uint32_t unexplained = 0;
  uint32_t reput = 0;
  uint64_t copies_again = 0;
  for (uint32_t id = 0; id < stress_messages; ++id) {
    auto got = rec->got[id].load();
    auto again = rec->got_again[id].load();
    reput += rec->reput[id].load();
    copies_again += again;
    lost += got == 0;
    if (got > 1 && got - 1 > again + rec->reput[id].load())
      ++unexplained;
  }
  EXPECT_EQ(lost, 0u);
  EXPECT_EQ(unexplained, 0u);
  EXPECT_GE(consumer_deaths, 4) << "too few deaths to prove anything";
  EXPECT_GT(redelivered, 0u);
  EXPECT_LE(copies_again, redelivered);
  // Every message put was acknowledged once; a consumer killed between
  // ending a lease and counting it leaves at most one slot uncounted (8
  // messages of 4 bytes with batching, else 1).
  EXPECT_LE(consumed, uint64_t{stress_messages} + reput);
  EXPECT_GE(consumed + 8u * consumer_deaths, uint64_t{stress_messages});
  for (auto pid : pids)
    EXPECT_TRUE(reaped(pid)) << "process " << pid << " is left behind";
  EXPECT_EQ(queue_mappings(), mappings_before);
  EXPECT_EQ(queue_descriptors(), descriptors_before);
  EXPECT_EQ(dev_shm_names(), dev_shm_before);
  std::printf("%zu processes, %d consumer deaths, %d kills by the parent, "
              "%llu redelivered, %llu consumed, %u puts maybe repeated\n",
              pids.size(), consumer_deaths, kills,
              static_cast<unsigned long long>(redelivered),
              static_cast<unsigned long long>(consumed), reput);
}

INSTANTIATE_TEST_SUITE_P(BatchingOffAndOn, ShmQueueKills, testing::Bool());
