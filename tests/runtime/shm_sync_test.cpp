// Tests for runtime/shm_sync: shm_lock excludes across processes and is not
// lost with a killed holder, shm_semaphore counts, shm_event wakes waiters in
// other processes, and attach() names what a descriptor holds.

#include "multiproc/shm_sync.hpp"

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <gtest/gtest.h>

#include "multiproc/bootstrap.hpp"
#include "multiproc/error.hpp"
#include "multiproc/process.hpp"
#include "multiproc/shm_array.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
using namespace multiproc;

namespace {

constexpr int increments = 2000;

/// Child: adds 1 to the plain element 0 of the array fds[1], `increments`
/// times, each under the lock fds[0], with a read and a write apart so that
/// an unguarded run would lose updates.
int add_under_lock(child_context& ctx) {
  auto lock = shm_lock::attach(std::move(ctx.fds.at(0)));
  auto a = shm_array<int64_t>::attach(std::move(ctx.fds.at(1)));
  if (!lock || !a)
    return 2;
  for (int i = 0; i < increments; ++i) {
    std::lock_guard<shm_lock> guard{*lock};
    volatile int64_t* x = a->data();
    int64_t v = *x;
    if (i % 64 == 0)
      std::this_thread::yield();
    *x = v + 1;
  }
  return 0;
}
MULTIPROC_REGISTER_ENTRY("shm_sync_test.add_under_lock", add_under_lock);

/// Child: takes the lock fds[0], sets the event fds[1], then sleeps until
/// it is killed, holding the lock.
int hold_lock_forever(child_context& ctx) {
  auto lock = shm_lock::attach(std::move(ctx.fds.at(0)));
  auto held = shm_event::attach(std::move(ctx.fds.at(1)));
  if (!lock || !held || lock->lock())
    return 2;
  held->set();
  for (;;)
    ::pause();
}
MULTIPROC_REGISTER_ENTRY("shm_sync_test.hold_lock_forever", hold_lock_forever);

/// Child: waits at most 10 s for the event fds[0]; exits 0 if it was set.
int wait_for_event(child_context& ctx) {
  auto ev = shm_event::attach(std::move(ctx.fds.at(0)));
  if (!ev)
    return 2;
  return ev->wait_for(10s) ? 0 : 3;
}
MULTIPROC_REGISTER_ENTRY("shm_sync_test.wait_for_event", wait_for_event);

/// Child: acquires the semaphore fds[0] within 10 s; exits 0 if it did.
int acquire_semaphore(child_context& ctx) {
  auto sem = shm_semaphore::attach(std::move(ctx.fds.at(0)));
  if (!sem)
    return 2;
  return sem->try_acquire_for(10s) ? 0 : 3;
}
MULTIPROC_REGISTER_ENTRY("shm_sync_test.acquire_semaphore", acquire_semaphore);

process start_with(const char* entry, std::vector<int> fds) {
  process_options opts;
  opts.fds = std::move(fds);
  auto proc = start_process(entry, {}, std::move(opts));
  EXPECT_TRUE(proc) << describe(proc.error());
  return std::move(*proc);
}

int exit_code_of(process& proc) {
  auto st = proc.join(20s);
  EXPECT_TRUE(st) << describe(st.error());
  return st && !st->signaled ? st->code : -1;
}

} // namespace

// -- shm_lock ---------------------------------------------------------------------

TEST(ShmLock, ExcludesAcrossProcesses) {
  auto lock = shm_lock::create();
  auto a = shm_array<int64_t>::create(1);
  ASSERT_TRUE(lock && a);
  std::vector<process> children;
  for (int k = 0; k < 4; ++k)
    children.push_back(
      start_with("shm_sync_test.add_under_lock", {lock->fd(), a->fd()}));
  for (auto& child : children)
    EXPECT_EQ(exit_code_of(child), 0);
  EXPECT_EQ((*a)[0], 4 * increments);
}

TEST(ShmLock, AHolderKilledHoldingItDoesNotKeepIt) {
  auto lock = shm_lock::create();
  auto held = shm_event::create();
  ASSERT_TRUE(lock && held);
  auto child = start_with("shm_sync_test.hold_lock_forever",
                          {lock->fd(), held->fd()});
  ASSERT_TRUE(held->wait_for(20s)) << "the child never took the lock";
  EXPECT_FALSE(lock->try_lock());
  EXPECT_FALSE(lock->try_lock_for(50ms));
  ASSERT_FALSE(child.kill());
  auto st = child.join(20s);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_EQ(st->signal, SIGKILL);
  // The kernel released it: the next lock gets it, and is told.
  ASSERT_TRUE(lock->try_lock_for(10s));
  EXPECT_TRUE(lock->previous_holder_died());
  EXPECT_FALSE(lock->unlock());
  // Usable again as an ordinary lock.
  EXPECT_FALSE(lock->lock());
  EXPECT_FALSE(lock->previous_holder_died());
  EXPECT_FALSE(lock->unlock());
}

TEST(ShmLock, RelockingAndForeignUnlockAreErrorsNotDeadlocks) {
  auto lock = shm_lock::create();
  ASSERT_TRUE(lock);
  auto err = lock->unlock();
  EXPECT_EQ(err, errc::invalid_argument);
  EXPECT_NE(describe(err).find("does not hold"), std::string::npos)
    << describe(err);
  ASSERT_FALSE(lock->lock());
  err = lock->lock();
  EXPECT_EQ(err, errc::invalid_argument);
  EXPECT_NE(describe(err).find("holds the shm_lock already"), std::string::npos)
    << describe(err);
  // Another thread can neither take it nor release it.
  std::thread other{[&] {
    EXPECT_FALSE(lock->try_lock());
    EXPECT_EQ(lock->unlock(), errc::invalid_argument);
  }};
  other.join();
  EXPECT_FALSE(lock->unlock());
  EXPECT_TRUE(lock->try_lock());
  EXPECT_FALSE(lock->unlock());
  // A second handle of the same lock (another mapping) is the same lock.
  auto second = shm_lock::attach(unique_fd{::dup(lock->fd())});
  ASSERT_TRUE(second) << describe(second.error());
  ASSERT_FALSE(lock->lock());
  EXPECT_EQ(second->lock(), errc::invalid_argument);
  EXPECT_FALSE(second->try_lock());
  EXPECT_FALSE(second->try_lock_for(10ms));
  EXPECT_FALSE(lock->unlock());
  EXPECT_TRUE(second->try_lock());
  EXPECT_FALSE(second->unlock());
}

TEST(ShmLock, WorksWithUniqueLockAndTimeouts) {
  auto lock = shm_lock::create();
  ASSERT_TRUE(lock);
  std::unique_lock<shm_lock> guard{*lock, std::defer_lock};
  EXPECT_TRUE(guard.try_lock_for(1s));
  std::thread other{[&] { EXPECT_FALSE(lock->try_lock_for(20ms)); }};
  other.join();
  guard.unlock();
  std::thread again{[&] {
    EXPECT_TRUE(lock->try_lock_for(1s));
    EXPECT_FALSE(lock->unlock());
  }};
  again.join();
}

// -- attach ---------------------------------------------------------------------------

TEST(ShmSyncAttach, NamesWhatTheDescriptorHolds) {
  auto sem = shm_semaphore::create(1);
  auto a = shm_array<int64_t>::create(4);
  ASSERT_TRUE(sem && a);
  auto as_lock = shm_lock::attach(unique_fd{::dup(sem->fd())});
  ASSERT_FALSE(as_lock);
  EXPECT_EQ(as_lock.error(), errc::invalid_argument);
  EXPECT_NE(describe(as_lock.error()).find("holds a shm_semaphore, not a shm_lock"),
            std::string::npos)
    << describe(as_lock.error());
  auto from_array = shm_event::attach(unique_fd{::dup(a->fd())});
  ASSERT_FALSE(from_array);
  EXPECT_EQ(from_array.error(), errc::invalid_argument);
  EXPECT_NE(describe(from_array.error()).find("is not a shm_event"),
            std::string::npos)
    << describe(from_array.error());
  auto none = shm_lock::attach(unique_fd{});
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error(), errc::invalid_argument);
  shm_lock empty;
  EXPECT_EQ(empty.lock(), errc::invalid_argument);
  EXPECT_FALSE(empty.try_lock());
}

// -- shm_semaphore ----------------------------------------------------------------------

TEST(ShmSemaphore, CountsAcquiresAndReleases) {
  auto sem = shm_semaphore::create(2);
  ASSERT_TRUE(sem);
  EXPECT_EQ(sem->value(), 2u);
  EXPECT_TRUE(sem->try_acquire());
  EXPECT_FALSE(sem->acquire());
  EXPECT_EQ(sem->value(), 0u);
  EXPECT_FALSE(sem->try_acquire());
  EXPECT_FALSE(sem->try_acquire_for(20ms));
  EXPECT_FALSE(sem->release());
  EXPECT_EQ(sem->value(), 1u);
  EXPECT_TRUE(sem->try_acquire_for(1s));
  auto too_big = shm_semaphore::create(uint32_t{0x80000000});
  ASSERT_FALSE(too_big);
  EXPECT_EQ(too_big.error(), errc::invalid_argument);
}

TEST(ShmSemaphore, AReleaseWakesAWaiterInAnotherProcess) {
  auto sem = shm_semaphore::create(0);
  ASSERT_TRUE(sem);
  auto child = start_with("shm_sync_test.acquire_semaphore", {sem->fd()});
  EXPECT_FALSE(sem->release());
  EXPECT_EQ(exit_code_of(child), 0);
  EXPECT_EQ(sem->value(), 0u); // the child took the one released
}

// -- shm_event ---------------------------------------------------------------------------

TEST(ShmEvent, SetWakesWaitersInOtherProcesses) {
  auto ev = shm_event::create();
  ASSERT_TRUE(ev);
  EXPECT_FALSE(ev->is_set());
  std::vector<process> children;
  for (int k = 0; k < 3; ++k)
    children.push_back(start_with("shm_sync_test.wait_for_event", {ev->fd()}));
  ev->set();
  EXPECT_TRUE(ev->is_set());
  for (auto& child : children)
    EXPECT_EQ(exit_code_of(child), 0);
}

TEST(ShmEvent, WaitTimesOutUntilSetAndClearResetsIt) {
  auto ev = shm_event::create();
  ASSERT_TRUE(ev);
  EXPECT_FALSE(ev->wait_for(20ms));
  ev->set();
  ev->set(); // idempotent
  EXPECT_TRUE(ev->wait_for(0ms));
  ev->wait(); // returns at once
  ev->clear();
  EXPECT_FALSE(ev->is_set());
  EXPECT_FALSE(ev->wait_for(20ms));
}

TEST(ShmEvent, ASetFollowedByAClearStillEndsAWaitThatBeganBefore) {
  auto ev = shm_event::create();
  ASSERT_TRUE(ev);
  std::atomic<pid_t> tid{0};
  bool woke = false;
  std::thread waiter{[&] {
    tid = static_cast<pid_t>(::gettid());
    woke = ev->wait_for(10s);
  }};
  // Until the waiter sleeps: its only blocking call is the event's futex.
  auto stat = [&] {
    return test::read_file("/proc/self/task/" + std::to_string(tid.load())
                           + "/stat");
  };
  auto deadline = std::chrono::steady_clock::now() + 10s;
  for (;;) {
    auto text = tid.load() == 0 ? std::string{} : stat();
    auto close = text.rfind(')');
    if (close != std::string::npos && text.size() > close + 2
        && text[close + 2] == 'S')
      break;
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "never waited";
    std::this_thread::sleep_for(1ms);
  }
  ev->set();
  ev->clear();
  waiter.join();
  EXPECT_TRUE(woke);
  EXPECT_FALSE(ev->is_set());
}
