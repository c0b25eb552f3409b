#pragma once

/// \file
/// Synchronisation between processes in anonymous shared memory: shm_lock
/// (Python's multiprocessing.Lock), shm_semaphore (Semaphore) and shm_event
/// (Event). Each lives in a page of its own memfd, passed to a child like a
/// shm_array (process_options::fds, then attach() in the child); nothing is
/// named in /dev/shm and the memory goes away with the last descriptor.
///
///     auto lock = multiproc::shm_lock::create();               // parent
///     opts.fds = {lock->fd()};                                 // pass it on
///     auto lock = multiproc::shm_lock::attach(std::move(ctx.fds[0]));
///     {
///       std::lock_guard<multiproc::shm_lock> guard{*lock};     // any process
///       ...                                                    // one at a time
///     }
///
/// Unlike Python's, a lock whose holder dies is not held forever: the
/// kernel releases it (a robust mutex), the next lock() gets it, and
/// previous_holder_died() tells that what it guards may be half-changed.
/// A thread that locks a lock it holds, or unlocks one it does not hold,
/// gets errc::invalid_argument instead of a deadlock. Every wait has a
/// bounded form (try_lock_for, try_acquire_for, wait_for); lock(),
/// acquire() and wait() wait as long as it takes, as Python's do.
///
/// Thread safety: every member may be called from any thread. A lock is
/// held by a thread, as a std::mutex is: the thread that locked it unlocks
/// it. shm_lock meets the Lockable and TimedLockable requirements, so
/// std::lock_guard and std::unique_lock work with it.
///
/// Lifetimes: a handle owns its descriptor and mapping (move-only; a
/// moved-from handle is empty: valid() false). The object lives as long as
/// one descriptor or mapping of it does, in any process.
///
/// Errors: create() and attach() return caf::expected (invalid_argument
/// when the descriptor is not that kind of object, system_error); blocking
/// calls return caf::error; nothing throws. docs/shared_state.md, "Locks,
/// semaphores and events".

#include <chrono>
#include <cstdint>
#include <utility>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "multiproc/fd.hpp"

namespace multiproc {

namespace detail {

/// What a shm_lock, shm_semaphore or shm_event shares: one page of a
/// sealed memfd with a header naming the kind. Move-only.
class shm_sync_page {
public:
  /// The kinds, as stored in the header.
  enum class kind : uint32_t { lock = 1, semaphore = 2, event = 3 };

  shm_sync_page() noexcept = default;
  shm_sync_page(shm_sync_page&& other) noexcept;
  shm_sync_page& operator=(shm_sync_page&& other) noexcept;
  shm_sync_page(const shm_sync_page&) = delete;
  shm_sync_page& operator=(const shm_sync_page&) = delete;
  ~shm_sync_page();

  /// A new zero-filled page of kind `k`.
  static caf::expected<shm_sync_page> create(kind k);

  /// The page behind `fd`; invalid_argument if it is not one of kind `k`.
  static caf::expected<shm_sync_page> attach(unique_fd fd, kind k);

  /// The object's memory after the header (64-byte aligned).
  void* object() const noexcept;

  int fd() const noexcept {
    return fd_.get();
  }

  bool valid() const noexcept {
    return base_ != nullptr;
  }

private:
  unique_fd fd_;
  void* base_ = nullptr;
};

/// Nanoseconds in a duration, saturated, never negative.
template <class Rep, class Period>
int64_t to_nanos(std::chrono::duration<Rep, Period> d) noexcept {
  using namespace std::chrono;
  if (d <= duration<Rep, Period>::zero())
    return 0;
  if (duration_cast<duration<double>>(d).count() > 1e9)
    return int64_t{1000000000} * 1000000000;
  return duration_cast<nanoseconds>(d).count();
}

} // namespace detail

/// A lock held by one thread of one process at a time (Python's Lock);
/// the contract is at the top of this header.
class shm_lock {
public:
  /// An empty handle (valid() false).
  shm_lock() noexcept = default;

  /// A new, unlocked lock. Errors: system_error.
  static caf::expected<shm_lock> create();

  /// The lock behind `fd` (another handle's fd(), e.g. received in
  /// child_context::fds). Errors: invalid_argument (not a shm_lock),
  /// system_error.
  static caf::expected<shm_lock> attach(unique_fd fd);

  /// Waits until this thread holds the lock. Errors: invalid_argument
  /// (this thread holds it already), system_error.
  caf::error lock();

  /// Takes the lock if it is free; never waits.
  bool try_lock() noexcept;

  /// Takes the lock if it becomes free within `timeout`.
  template <class Rep, class Period>
  bool try_lock_for(std::chrono::duration<Rep, Period> timeout) noexcept {
    return timed_lock(detail::to_nanos(timeout));
  }

  /// Releases the lock. Errors: invalid_argument (this thread does not
  /// hold it).
  caf::error unlock();

  /// True if the last acquisition through this handle took the lock from a
  /// holder that had died holding it (a process killed, a thread ended):
  /// what the lock guards may be half-changed.
  bool previous_holder_died() const noexcept {
    return holder_died_;
  }

  /// The memfd, to pass to another process; owned by the handle.
  int fd() const noexcept {
    return page_.fd();
  }

  /// True unless empty (default-constructed or moved from).
  bool valid() const noexcept {
    return page_.valid();
  }

private:
  shm_lock(detail::shm_sync_page page, uint64_t key) noexcept
    : page_(std::move(page)), key_(key) {
  }

  bool timed_lock(int64_t nanos) noexcept;

  /// Handles a pthread_mutex_*lock() result: 0 or EOWNERDEAD is success.
  bool acquired(int rc) noexcept;

  detail::shm_sync_page page_;
  /// Identifies the lock in this thread's list of held ones (the inode).
  uint64_t key_ = 0;
  bool holder_died_ = false;
};

/// A counter that acquire() decrements, waiting while it is zero, and
/// release() increments (Python's Semaphore). It has no owner, so a
/// process that dies before it releases what it acquired leaves the count
/// lower, as in Python.
class shm_semaphore {
public:
  /// An empty handle (valid() false).
  shm_semaphore() noexcept = default;

  /// A new semaphore with count `initial`. Errors: invalid_argument
  /// (initial above SEM_VALUE_MAX), system_error.
  static caf::expected<shm_semaphore> create(uint32_t initial);

  /// The semaphore behind `fd`. Errors: invalid_argument (not a
  /// shm_semaphore), system_error.
  static caf::expected<shm_semaphore> attach(unique_fd fd);

  /// Waits until the count is above zero, then decrements it. Errors:
  /// system_error.
  caf::error acquire();

  /// Decrements the count if it is above zero; never waits.
  bool try_acquire() noexcept;

  /// Decrements the count if it is above zero within `timeout`.
  template <class Rep, class Period>
  bool try_acquire_for(std::chrono::duration<Rep, Period> timeout) noexcept {
    return timed_acquire(detail::to_nanos(timeout));
  }

  /// Increments the count, waking one waiter. Errors: invalid_argument
  /// (the count would pass SEM_VALUE_MAX).
  caf::error release();

  /// The count now (a snapshot).
  uint32_t value() const noexcept;

  /// The memfd, to pass to another process; owned by the handle.
  int fd() const noexcept {
    return page_.fd();
  }

  /// True unless empty (default-constructed or moved from).
  bool valid() const noexcept {
    return page_.valid();
  }

private:
  explicit shm_semaphore(detail::shm_sync_page page) noexcept
    : page_(std::move(page)) {
  }

  bool timed_acquire(int64_t nanos) noexcept;

  detail::shm_sync_page page_;
};

/// A flag that processes wait for (Python's Event): set() wakes every
/// waiter, and later waits return at once until clear(). Nothing is held,
/// so a process dying anywhere leaves the others working.
class shm_event {
public:
  /// An empty handle (valid() false).
  shm_event() noexcept = default;

  /// A new event, not set. Errors: system_error.
  static caf::expected<shm_event> create();

  /// The event behind `fd`. Errors: invalid_argument (not a shm_event),
  /// system_error.
  static caf::expected<shm_event> attach(unique_fd fd);

  /// Sets the flag and wakes every waiter.
  void set() noexcept;

  /// Clears the flag.
  void clear() noexcept;

  /// True if the flag is set.
  bool is_set() const noexcept;

  /// Waits until the flag is set (at once if it is).
  void wait() const noexcept;

  /// Waits at most `timeout` for the flag; true if it is set.
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> timeout) const noexcept {
    return timed_wait(detail::to_nanos(timeout));
  }

  /// The memfd, to pass to another process; owned by the handle.
  int fd() const noexcept {
    return page_.fd();
  }

  /// True unless empty (default-constructed or moved from).
  bool valid() const noexcept {
    return page_.valid();
  }

private:
  explicit shm_event(detail::shm_sync_page page) noexcept
    : page_(std::move(page)) {
  }

  bool timed_wait(int64_t nanos) const noexcept;

  detail::shm_sync_page page_;
};

} // namespace multiproc
