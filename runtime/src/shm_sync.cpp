// shm_lock, shm_semaphore and shm_event: a robust process-shared pthread
// mutex, a process-shared POSIX semaphore and a futex word, each in one page
// of a sealed memfd behind a header that names its kind.

#include "multiproc/shm_sync.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>
#include <new>
#include <string>
#include <vector>

#include <linux/futex.h>
#include <pthread.h>
#include <semaphore.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "multiproc/detail/shm_memory.hpp"
#include "multiproc/error.hpp"

namespace multiproc {

namespace detail {

namespace {

constexpr uint64_t sync_magic = 0x31434e5953504d4dull; // "MMPSYNC1"
constexpr uint32_t sync_version = 1;
constexpr size_t page_bytes = 4096;
constexpr size_t object_offset = 64;

struct sync_header {
  uint64_t magic;
  uint32_t version;
  uint32_t kind;
};

static_assert(sizeof(sync_header) <= object_offset);
static_assert(object_offset + sizeof(pthread_mutex_t) <= page_bytes);
static_assert(object_offset + sizeof(sem_t) <= page_bytes);

const char* kind_name(uint32_t k) noexcept {
  switch (static_cast<shm_sync_page::kind>(k)) {
    case shm_sync_page::kind::lock: return "a shm_lock";
    case shm_sync_page::kind::semaphore: return "a shm_semaphore";
    case shm_sync_page::kind::event: return "a shm_event";
  }
  return "an unknown kind of object";
}

} // namespace

shm_sync_page::shm_sync_page(shm_sync_page&& other) noexcept {
  *this = std::move(other);
}

shm_sync_page& shm_sync_page::operator=(shm_sync_page&& other) noexcept {
  if (this != &other) {
    if (base_ != nullptr)
      ::munmap(base_, page_bytes);
    fd_ = std::move(other.fd_);
    base_ = std::exchange(other.base_, nullptr);
  }
  return *this;
}

shm_sync_page::~shm_sync_page() {
  if (base_ != nullptr)
    ::munmap(base_, page_bytes);
}

caf::expected<shm_sync_page> shm_sync_page::create(kind k) {
  auto what = kind_name(static_cast<uint32_t>(k));
  auto fd = create_sealed_memfd("multiproc-sync", page_bytes, what);
  if (!fd)
    return std::move(fd.error());
  auto m = map_shared(fd->get(), page_bytes, what);
  if (!m)
    return std::move(m.error());
  auto* h = new (m->base) sync_header{};
  h->magic = sync_magic;
  h->version = sync_version;
  h->kind = static_cast<uint32_t>(k);
  shm_sync_page page;
  page.fd_ = std::move(*fd);
  page.base_ = m->base;
  return page;
}

caf::expected<shm_sync_page> shm_sync_page::attach(unique_fd fd, kind k) {
  auto what = kind_name(static_cast<uint32_t>(k));
  if (!fd)
    return make_error(errc::invalid_argument,
                      std::string{"attach needs the descriptor of "} + what
                        + ", got none");
  auto where = "descriptor " + std::to_string(fd.get());
  auto m = map_shared(fd.get(), page_bytes, what);
  if (!m)
    return std::move(m.error());
  shm_sync_page page;
  page.base_ = m->base;
  if (m->size != page_bytes) {
    return make_error(errc::invalid_argument,
                      where + " is not " + what + " (" + std::to_string(m->size)
                        + " bytes, not one page)");
  }
  const auto& h = *static_cast<const sync_header*>(m->base);
  if (h.magic != sync_magic || h.version != sync_version)
    return make_error(errc::invalid_argument,
                      where + " is not " + what
                        + " (no multiproc synchronisation object)");
  if (h.kind != static_cast<uint32_t>(k))
    return make_error(errc::invalid_argument, where + " holds "
                                                + kind_name(h.kind) + ", not "
                                                + what);
  page.fd_ = std::move(fd);
  return page;
}

void* shm_sync_page::object() const noexcept {
  return static_cast<char*>(base_) + object_offset;
}

} // namespace detail

namespace {

/// CLOCK_MONOTONIC now plus `nanos`.
timespec deadline_after(int64_t nanos) noexcept {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  int64_t sec = nanos / 1000000000;
  int64_t nsec = ts.tv_nsec + nanos % 1000000000;
  ts.tv_sec += static_cast<time_t>(sec + nsec / 1000000000);
  ts.tv_nsec = static_cast<long>(nsec % 1000000000);
  return ts;
}

/// Nanoseconds from now (CLOCK_MONOTONIC) to `until`; 0 or less once past.
int64_t nanos_left(const timespec& until) noexcept {
  timespec now;
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  return (until.tv_sec - now.tv_sec) * int64_t{1000000000}
         + (until.tv_nsec - now.tv_nsec);
}

caf::error not_valid(const char* what) {
  return make_error(errc::invalid_argument,
                    std::string{"an empty "} + what
                      + " handle (default-constructed or moved from)");
}

} // namespace

// -- shm_lock -------------------------------------------------------------------

namespace {

pthread_mutex_t* mutex_of(const detail::shm_sync_page& page) noexcept {
  return static_cast<pthread_mutex_t*>(page.object());
}

/// The shm_locks this thread holds, by the inode of their memfd (two
/// handles of one lock map it at two addresses). Checked before the mutex
/// is touched, so that relocking and foreign unlocks are refused without
/// asking pthread (whose answer ThreadSanitizer would report).
thread_local std::vector<uint64_t> held_by_this_thread;

bool holds(uint64_t key) noexcept {
  auto& held = held_by_this_thread;
  return std::find(held.begin(), held.end(), key) != held.end();
}

uint64_t inode_of(int fd) noexcept {
  struct stat st {};
  return ::fstat(fd, &st) == 0 ? static_cast<uint64_t>(st.st_ino) : 0;
}

/// A forked child runs on a copy of the forking thread, which holds nothing
/// there: the locks are its parent's.
const bool forget_held_in_fork_children = [] {
  ::pthread_atfork(nullptr, nullptr, [] { held_by_this_thread.clear(); });
  return true;
}();

/// pthread_mutex_clocklock on CLOCK_MONOTONIC. ThreadSanitizer (GCC 12)
/// intercepts neither it nor an EOWNERDEAD from pthread_mutex_timedlock, so
/// under TSan the wait polls pthread_mutex_trylock, which it follows.
int lock_until(pthread_mutex_t* m, int64_t nanos) noexcept {
#if defined(__SANITIZE_THREAD__)
  auto until = deadline_after(nanos);
  for (;;) {
    int rc = pthread_mutex_trylock(m);
    if (rc != EBUSY)
      return rc;
    if (nanos_left(until) <= 0)
      return ETIMEDOUT;
    timespec pause{0, 200000};
    ::nanosleep(&pause, nullptr);
  }
#else
  auto until = deadline_after(nanos);
  return pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &until);
#endif
}

} // namespace

caf::expected<shm_lock> shm_lock::create() {
  auto page = detail::shm_sync_page::create(detail::shm_sync_page::kind::lock);
  if (!page)
    return std::move(page.error());
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
  int rc = pthread_mutex_init(mutex_of(*page), &attr);
  pthread_mutexattr_destroy(&attr);
  if (rc != 0)
    return make_system_error("cannot initialise a shm_lock", rc);
  auto key = inode_of(page->fd());
  return shm_lock{std::move(*page), key};
}

caf::expected<shm_lock> shm_lock::attach(unique_fd fd) {
  auto page = detail::shm_sync_page::attach(std::move(fd),
                                            detail::shm_sync_page::kind::lock);
  if (!page)
    return std::move(page.error());
  auto key = inode_of(page->fd());
  return shm_lock{std::move(*page), key};
}

bool shm_lock::acquired(int rc) noexcept {
  if (rc != 0 && rc != EOWNERDEAD)
    return false;
  if (rc == EOWNERDEAD) {
    // The holder died: the lock is ours, and usable again once marked so.
    pthread_mutex_consistent(mutex_of(page_));
  }
  holder_died_ = rc == EOWNERDEAD;
  held_by_this_thread.push_back(key_);
  return true;
}

namespace {

caf::error already_held() {
  return make_error(errc::invalid_argument,
                    "this thread holds the shm_lock already (it is not "
                    "recursive)");
}

} // namespace

caf::error shm_lock::lock() {
  if (!valid())
    return not_valid("shm_lock");
  if (holds(key_))
    return already_held();
  int rc = pthread_mutex_lock(mutex_of(page_));
  if (acquired(rc))
    return caf::none;
  if (rc == EDEADLK)
    return already_held();
  return make_system_error("cannot lock a shm_lock", rc);
}

bool shm_lock::try_lock() noexcept {
  return valid() && !holds(key_)
         && acquired(pthread_mutex_trylock(mutex_of(page_)));
}

bool shm_lock::timed_lock(int64_t nanos) noexcept {
  return valid() && !holds(key_)
         && acquired(lock_until(mutex_of(page_), nanos));
}

caf::error shm_lock::unlock() {
  if (!valid())
    return not_valid("shm_lock");
  auto* m = mutex_of(page_);
  auto& held = held_by_this_thread;
  auto i = std::find(held.begin(), held.end(), key_);
  if (i == held.end())
    return make_error(errc::invalid_argument,
                      "this thread does not hold the shm_lock it unlocks");
  held.erase(i);
  int rc = pthread_mutex_unlock(m);
  if (rc == 0)
    return caf::none;
  if (rc == EPERM)
    return make_error(errc::invalid_argument,
                      "this thread does not hold the shm_lock it unlocks");
  return make_system_error("cannot unlock a shm_lock", rc);
}

// -- shm_semaphore --------------------------------------------------------------

namespace {

sem_t* sem_of(const detail::shm_sync_page& page) noexcept {
  return static_cast<sem_t*>(page.object());
}

} // namespace

caf::expected<shm_semaphore> shm_semaphore::create(uint32_t initial) {
  if (initial > static_cast<uint32_t>(SEM_VALUE_MAX))
    return make_error(errc::invalid_argument,
                      "a shm_semaphore's count is at most "
                        + std::to_string(SEM_VALUE_MAX) + ", not "
                        + std::to_string(initial));
  auto page
    = detail::shm_sync_page::create(detail::shm_sync_page::kind::semaphore);
  if (!page)
    return std::move(page.error());
  if (::sem_init(sem_of(*page), 1, initial) != 0)
    return make_system_error("cannot initialise a shm_semaphore", errno);
  return shm_semaphore{std::move(*page)};
}

caf::expected<shm_semaphore> shm_semaphore::attach(unique_fd fd) {
  auto page = detail::shm_sync_page::attach(
    std::move(fd), detail::shm_sync_page::kind::semaphore);
  if (!page)
    return std::move(page.error());
  return shm_semaphore{std::move(*page)};
}

caf::error shm_semaphore::acquire() {
  if (!valid())
    return not_valid("shm_semaphore");
  while (::sem_wait(sem_of(page_)) != 0)
    if (errno != EINTR)
      return make_system_error("cannot acquire a shm_semaphore", errno);
  return caf::none;
}

bool shm_semaphore::try_acquire() noexcept {
  if (!valid())
    return false;
  int rc;
  while ((rc = ::sem_trywait(sem_of(page_))) != 0 && errno == EINTR)
    ;
  return rc == 0;
}

bool shm_semaphore::timed_acquire(int64_t nanos) noexcept {
  if (!valid())
    return false;
  auto until = deadline_after(nanos);
  int rc;
  while ((rc = ::sem_clockwait(sem_of(page_), CLOCK_MONOTONIC, &until)) != 0
         && errno == EINTR)
    ;
  return rc == 0;
}

caf::error shm_semaphore::release() {
  if (!valid())
    return not_valid("shm_semaphore");
  if (::sem_post(sem_of(page_)) == 0)
    return caf::none;
  if (errno == EOVERFLOW)
    return make_error(errc::invalid_argument,
                      "a shm_semaphore released past its maximum count "
                        + std::to_string(SEM_VALUE_MAX));
  return make_system_error("cannot release a shm_semaphore", errno);
}

uint32_t shm_semaphore::value() const noexcept {
  int v = 0;
  if (!valid() || ::sem_getvalue(sem_of(page_), &v) != 0 || v < 0)
    return 0;
  return static_cast<uint32_t>(v);
}

// -- shm_event --------------------------------------------------------------------

namespace {

std::atomic<uint32_t>* flag_of(const detail::shm_sync_page& page) noexcept {
  return static_cast<std::atomic<uint32_t>*>(page.object());
}

static_assert(std::atomic<uint32_t>::is_always_lock_free);

/// A shared (not private) futex operation on `word`.
long futex(std::atomic<uint32_t>* word, int op, uint32_t val,
           const timespec* timeout) noexcept {
  return ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, val,
                   timeout, nullptr, 0);
}

} // namespace

caf::expected<shm_event> shm_event::create() {
  auto page = detail::shm_sync_page::create(detail::shm_sync_page::kind::event);
  if (!page)
    return std::move(page.error());
  new (page->object()) std::atomic<uint32_t>{0};
  return shm_event{std::move(*page)};
}

caf::expected<shm_event> shm_event::attach(unique_fd fd) {
  auto page = detail::shm_sync_page::attach(
    std::move(fd), detail::shm_sync_page::kind::event);
  if (!page)
    return std::move(page.error());
  return shm_event{std::move(*page)};
}

// The word: bit 0 is the flag; the bits above count the set()s that found
// it clear. A waiter returns when the flag is set or the count moved, so a
// set() followed at once by clear() still ends every wait that began
// before it, as in Python.

void shm_event::set() noexcept {
  if (!valid())
    return;
  auto* word = flag_of(page_);
  auto w = word->load(std::memory_order_acquire);
  while ((w & 1) == 0) {
    if (word->compare_exchange_weak(w, (w + 2) | 1, std::memory_order_acq_rel,
                                    std::memory_order_acquire)) {
      futex(word, FUTEX_WAKE, INT_MAX, nullptr);
      return;
    }
  }
}

void shm_event::clear() noexcept {
  if (valid())
    flag_of(page_)->fetch_and(~uint32_t{1}, std::memory_order_acq_rel);
}

bool shm_event::is_set() const noexcept {
  return valid() && (flag_of(page_)->load(std::memory_order_acquire) & 1) != 0;
}

void shm_event::wait() const noexcept {
  if (!valid())
    return;
  auto* word = flag_of(page_);
  auto w = word->load(std::memory_order_acquire);
  if ((w & 1) != 0)
    return;
  // EAGAIN (it changed already) and EINTR: look again.
  while (word->load(std::memory_order_acquire) == w)
    futex(word, FUTEX_WAIT, w, nullptr);
}

bool shm_event::timed_wait(int64_t nanos) const noexcept {
  if (!valid())
    return false;
  auto* word = flag_of(page_);
  auto w = word->load(std::memory_order_acquire);
  if ((w & 1) != 0)
    return true;
  auto until = deadline_after(nanos);
  while (word->load(std::memory_order_acquire) == w) {
    auto left = nanos_left(until);
    if (left <= 0)
      return false;
    timespec rel{static_cast<time_t>(left / 1000000000),
                 static_cast<long>(left % 1000000000)};
    futex(word, FUTEX_WAIT, w, &rel);
  }
  return true;
}

} // namespace multiproc
