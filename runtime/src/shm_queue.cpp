// The shared-memory queue: layout, slot state machine, waiting and recovery.
// docs/queue.md explains the algorithm and what each party's death leaves.

#include "multiproc/shm_queue.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "multiproc/detail/queue_seam.hpp"
#include "multiproc/detail/shm_memory.hpp"
#include "multiproc/error.hpp"

namespace multiproc {

namespace detail {

// -- layout -------------------------------------------------------------------

constexpr uint64_t queue_magic = 0x3145555150434d4dull; // "MMCPQUE1"
constexpr uint32_t queue_version = 4;
constexpr size_t header_bytes = 4096;
constexpr size_t slot_header_bytes = 32;
/// Each message in a slot is preceded by its length (u32).
constexpr uint32_t length_bytes = 4;
constexpr uint32_t flag_joinable = 1;
constexpr uint32_t flag_batching = 2;

/// The first page of the memory. Words written by different parties sit on
/// different cache lines.
struct shm_queue_header {
  // Written once by the creator.
  uint64_t magic;
  uint32_t version;
  uint32_t capacity;
  uint32_t stride;
  uint32_t max_message;
  uint32_t flags;
  uint32_t reserved;
  uint64_t tag;
  uint64_t total_size;
  /// The next ticket a producer claims.
  alignas(64) std::atomic<uint64_t> enqueue_pos;
  /// The next ticket a consumer takes.
  alignas(64) std::atomic<uint64_t> dequeue_pos;
  /// Messages acknowledged, added once per slot when its lease ends: on the
  /// line consumers write at every take anyway (producers never touch it).
  std::atomic<uint64_t> consumed;
  /// Consumers sleep on this futex word (a sequence << 1 | sleepers: see
  /// notify; bumped by producers).
  alignas(64) std::atomic<uint32_t> not_empty;
  /// Producers sleep on this futex word (bumped by acknowledgements).
  alignas(64) std::atomic<uint32_t> not_full;
  /// Read-mostly words.
  alignas(64) std::atomic<uint32_t> closed;
  /// Slots in state `redeliver` (a hint: consumers scan when non-zero).
  std::atomic<uint32_t> redeliver;
  /// Messages handed out again after their consumer died (added by the
  /// repair, next to `redeliver`, which it writes as well).
  std::atomic<uint64_t> redelivered;
  /// Joinable queues: messages put and not yet done; joiners sleep on
  /// `done_events`.
  alignas(64) std::atomic<uint64_t> unfinished;
  std::atomic<uint32_t> done_events;
};

static_assert(sizeof(shm_queue_header) <= header_bytes);
static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

/// One slot: its state word, then a batch of messages, each a u32 length
/// and its bytes, in payload()[start, end). Only the slot's owner (the
/// producer writing it, the consumer leasing it) writes start, end and count.
struct shm_slot {
  std::atomic<uint64_t> state;
  /// Offset of the first message not yet consumed.
  uint32_t start;
  /// Offset after the last committed message.
  uint32_t end;
  /// Messages in [start, end).
  uint32_t count;
  /// How often the batch was handed to a consumer.
  std::atomic<uint32_t> deliveries;
  /// `count` when the current lease began; 0 while ready or redeliver
  /// (set by the producer that claims the slot and by whoever offers it
  /// again). A consumer adds the messages it acknowledged to the header's
  /// `consumed` only when its lease ends; if it dies first, the repair adds
  /// taken - count for it.
  uint32_t taken;
  uint32_t reserved;
  char* payload() noexcept {
    return reinterpret_cast<char*>(this) + slot_header_bytes;
  }
};

static_assert(sizeof(shm_slot) == slot_header_bytes);

// -- the state word: lap (32 bits) | owner pid (24 bits) | status (8 bits) ---

enum status : uint64_t {
  st_free = 0,       ///< empty, open for the producer of ticket lap*C+i
  st_writing = 1,    ///< a producer (owner) is writing the message
  st_ready = 2,      ///< a message waits for a consumer
  st_leased = 3,     ///< a consumer (owner) took it, not yet acknowledged
  st_redeliver = 4,  ///< its consumer died: waits for another consumer
};

constexpr uint64_t make_state(uint32_t lap, uint32_t pid, uint64_t st) {
  return uint64_t{lap} << 32 | uint64_t{pid & 0xffffffu} << 8 | st;
}
constexpr uint32_t lap_of(uint64_t s) {
  return static_cast<uint32_t>(s >> 32);
}
constexpr uint32_t pid_of(uint64_t s) {
  return static_cast<uint32_t>(s >> 8) & 0xffffffu;
}
constexpr uint64_t status_of(uint64_t s) {
  return s & 0xffu;
}
/// Laps wrap at 2^32: compare them as a signed distance.
constexpr int32_t lap_distance(uint32_t a, uint32_t b) {
  return static_cast<int32_t>(a - b);
}

// -- test seam -----------------------------------------------------------------

queue_hook current_hook = nullptr;

void set_queue_hook(queue_hook hook) noexcept {
  current_hook = hook;
}

inline void at_step(queue_step step) noexcept {
  if (current_hook != nullptr)
    current_hook(step);
}

// -- this process -------------------------------------------------------------

std::atomic<uint32_t> cached_pid{0};

void refresh_pid() noexcept {
  cached_pid.store(static_cast<uint32_t>(::getpid()), std::memory_order_relaxed);
}

/// getpid() is a system call; the queue needs it on every put and get.
uint32_t self_pid() noexcept {
  static const bool registered = [] {
    refresh_pid();
    ::pthread_atfork(nullptr, nullptr, refresh_pid);
    return true;
  }();
  (void) registered;
  return cached_pid.load(std::memory_order_relaxed);
}

/// True if `pid` has exited (gone, or a zombie waiting to be reaped).
bool process_gone(uint32_t pid) noexcept {
  if (::kill(static_cast<pid_t>(pid), 0) != 0)
    return errno == ESRCH;
  char path[32];
  std::snprintf(path, sizeof(path), "/proc/%u/stat", pid);
  auto* f = std::fopen(path, "re");
  if (f == nullptr)
    return errno == ENOENT;
  char buf[512];
  auto n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // "pid (comm) S ...": the state follows the last ')'.
  auto* close_paren = std::strrchr(buf, ')');
  return close_paren != nullptr && close_paren[1] == ' '
         && (close_paren[2] == 'Z' || close_paren[2] == 'X');
}

// -- futex ----------------------------------------------------------------------

uint32_t* futex_word(std::atomic<uint32_t>& word) noexcept {
  return reinterpret_cast<uint32_t*>(&word);
}

void futex_wait(std::atomic<uint32_t>& word, uint32_t seen,
                std::chrono::nanoseconds rel) noexcept {
  timespec ts;
  ts.tv_sec = static_cast<time_t>(rel.count() / 1000000000);
  ts.tv_nsec = static_cast<long>(rel.count() % 1000000000);
  ::syscall(SYS_futex, futex_word(word), FUTEX_WAIT, seen, &ts, nullptr, 0);
}

void futex_wake(std::atomic<uint32_t>& word, int count) noexcept {
  ::syscall(SYS_futex, futex_word(word), FUTEX_WAKE, count, nullptr, nullptr,
            0);
}

/// Recomputes a slot's message count from its bytes (a dead writer may have
/// stopped between updating `end` and `count`); returns it.
uint32_t recount(shm_slot& slot) noexcept {
  uint32_t n = 0;
  uint32_t at = slot.start;
  while (slot.end >= at + length_bytes) {
    uint32_t size = 0;
    std::memcpy(&size, slot.payload() + at, length_bytes);
    if (size > slot.end - at - length_bytes)
      break;
    at += length_bytes + size;
    ++n;
  }
  slot.end = at;
  slot.count = n;
  return n;
}

/// The low bit of a futex word: a waiter is (about to be) asleep on it.
constexpr uint32_t sleepers_bit = 1;

/// Wakes the sleepers of `word`, if any. A waiter sets the word's low bit
/// before its last check and sleeps on the value with the bit; the first
/// notifier after that clears the bit (bumping the sequence in the upper
/// bits) and wakes every sleeper, and the notifiers after it see no bit and
/// make no system call until a waiter sets it again. The caller's preceding
/// seq_cst operation orders its update before this load.
void notify(std::atomic<uint32_t>& word) noexcept {
  auto seen = word.load(std::memory_order_seq_cst);
  if ((seen & sleepers_bit) == 0)
    return;
  // Fails only if another notifier cleared the bit first: it wakes them.
  if (word.compare_exchange_strong(seen, (seen + 2) & ~sleepers_bit,
                                   std::memory_order_seq_cst))
    futex_wake(word, INT_MAX);
}

/// Moves a position from `from` to `from + 1` unless someone did already.
/// (A copy: compare_exchange overwrites its first argument on failure.)
void advance(std::atomic<uint64_t>& position, uint64_t from) noexcept {
  position.compare_exchange_strong(from, from + 1, std::memory_order_acq_rel);
}

#if defined(__x86_64__)
/// PREFETCHW (AMD's 3DNowPrefetch bit, CPUID 0x80000001 ECX bit 8; Intel
/// since Broadwell).
const bool has_prefetchw = [] {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(0x80000001u, &eax, &ebx, &ecx, &edx) != 0
         && (ecx & (1u << 8)) != 0;
}();
#endif

/// Asks for the cache lines of [p, p + n) ahead of use: exclusively (for
/// writing) if `write`. A producer's fences then wait for lines already on
/// their way, not for one line transfer after the other.
inline void prefetch_lines(const char* p, size_t n, bool write) noexcept {
#if defined(__x86_64__)
  if (write && has_prefetchw) {
    for (size_t i = 0; i < n; i += 64)
      asm volatile("prefetchw %0" : : "m"(*(p + i)));
    return;
  }
#endif
  for (size_t i = 0; i < n; i += 64)
    __builtin_prefetch(p + i, 0, 3);
}

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/// How often a waiter looks for dead parties.
constexpr auto recovery_period = std::chrono::milliseconds{10};
constexpr int64_t min_spin_ns = 1000;
constexpr int64_t max_spin_ns = 50000;
/// A spin of at least this long that ends in a sleep counts as futile.
constexpr int64_t futile_spin_ns = 8000;
/// Futile spins in a row after which a handle spins only briefly ...
constexpr uint32_t max_futile = 4;
/// ... for this many waits.
constexpr uint32_t futile_cooldown = 1024;
/// A spin calls sched_yield after this long without success (a peer sharing
/// our core, or starved by other processes, runs only then: 20 us made a
/// round trip on one core take ~51 us, 4 us ~19 us).
constexpr auto yield_after = std::chrono::microseconds{4};

using clock = std::chrono::steady_clock;
using spin_state = shm_spin_state;

/// Adapts the spin budget after a wait that spun for `spun` ns and then
/// succeeded at once (`caught`), or slept and ended after `waited` ns in
/// total (`done`: with success).
///
/// Spinning pays while the peer runs on another core; after yield_after a
/// spin yields the core between its checks, so that parties sharing a core
/// (more processes than cores) still progress. A wait that slept although it
/// ended soon after the spin (`waited` under the maximum) grows the budget
/// to twice that wait: two parties that both sleep wake each other through
/// the kernel (~10 us each way) and would otherwise never find out that
/// spinning catches the peer. Spins that end in a sleep max_futile times in
/// a row (a peer that is slow, or starved) make the handle spin only
/// min_spin_ns for the next futile_cooldown waits.
void adapt_spin(spin_state& spin, bool caught, bool done, int64_t spun,
                int64_t waited) noexcept {
  if (caught) {
    spin.ns = std::min(max_spin_ns, spin.ns * 2);
    spin.futile = 0;
    return;
  }
  if (spin.cooldown > 0) {
    --spin.cooldown;
    spin.ns = min_spin_ns;
    return;
  }
  if (spun >= futile_spin_ns && ++spin.futile >= max_futile) {
    spin.futile = 0;
    spin.cooldown = futile_cooldown;
    spin.ns = min_spin_ns;
    return;
  }
  if (done && waited < max_spin_ns)
    spin.ns = std::clamp<int64_t>(2 * waited, min_spin_ns, max_spin_ns);
  else
    spin.ns = std::max(min_spin_ns, spin.ns / 2);
}

/// Waits until `try_op` returns something else than `none`: first spinning
/// for up to spin.ns (see adapt_spin), then sleeping on `word`, running
/// `idle` every recovery_period. Returns `none` only when `timeout` expired.
template <class Attempt, class Try, class Idle>
Attempt wait_for(std::atomic<uint32_t>& word,
                 std::optional<std::chrono::milliseconds> timeout,
                 spin_state& spin, Try&& try_op, Idle&& idle) {
  auto r = try_op();
  if (r != Attempt::none || (timeout && timeout->count() <= 0))
    return r;
  auto start = clock::now();
  auto since = [&] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now()
                                                                - start)
      .count();
  };
  auto deadline = timeout ? start + *timeout : clock::time_point::max();
  auto spin_until = std::min(
    deadline, start + std::chrono::nanoseconds{std::min(spin.ns, spin.max_ns)});
  for (unsigned i = 1; spin.max_ns > 0; ++i) {
    for (int k = 0; k < 16; ++k)
      cpu_relax();
    if ((r = try_op()) != Attempt::none) {
      adapt_spin(spin, true, true, since(), 0);
      return r;
    }
    if (i % 2 == 0) {
      auto now = clock::now();
      if (now >= spin_until)
        break;
      // A peer on our core cannot run while we spin: hand it the core.
      if (now - start >= yield_after)
        ::sched_yield();
    }
  }
  auto spun = since();
  auto last_idle = clock::now();
  for (;;) {
    // Announce a sleeper (see notify), then check once more.
    auto seen = word.fetch_or(sleepers_bit, std::memory_order_seq_cst)
                | sleepers_bit;
    if ((r = try_op()) != Attempt::none)
      break;
    auto now = clock::now();
    if (now >= deadline)
      break;
    if (now - last_idle >= recovery_period) {
      idle();
      last_idle = now;
      continue;
    }
    auto sleep = std::min<clock::duration>(deadline - now, recovery_period);
    futex_wait(word, seen, sleep);
  }
  adapt_spin(spin, false, r != Attempt::none, spun, since());
  return r;
}

std::string describe_fd(int fd) {
  return "descriptor " + std::to_string(fd);
}

} // namespace detail

using namespace detail;

// -- life cycle -------------------------------------------------------------------

shm_queue::shm_queue(shm_queue&& other) noexcept {
  *this = std::move(other);
}

shm_queue& shm_queue::operator=(shm_queue&& other) noexcept {
  if (this != &other) {
    release();
    fd_ = std::move(other.fd_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    header_ = std::exchange(other.header_, nullptr);
    slots_ = std::exchange(other.slots_, nullptr);
    mask_ = other.mask_;
    shift_ = other.shift_;
    stride_ = other.stride_;
    room_ = other.room_;
    last_put_ = std::exchange(other.last_put_, no_slot);
    append_backoff_ = other.append_backoff_;
    append_skip_ = other.append_skip_;
    leases_ = std::move(other.leases_);
    other.leases_.clear();
    batch_ = std::exchange(other.batch_, no_slot);
    read_ = other.read_;
    end_ = other.end_;
    returned_ = std::exchange(other.returned_, 0);
    undone_ = std::exchange(other.undone_, 0);
    acked_ = std::exchange(other.acked_, 0);
    batch_deliveries_ = other.batch_deliveries_;
    spin_ = other.spin_;
  }
  return *this;
}

shm_queue::~shm_queue() {
  release();
}

void shm_queue::release() noexcept {
  if (header_ == nullptr)
    return;
  // Messages returned by get() are done (plain queues); the others go back
  // to the queue for other consumers.
  if (!joinable())
    settle();
  for (auto lease : leases_) {
    auto& slot = slot_at(lease & 0xffffffffu);
    if (slot.count == 0)
      end_lease(lease);
    else
      hand_back(lease);
  }
  leases_.clear();
  batch_ = no_slot;
  ::munmap(base_, size_);
  base_ = nullptr;
  header_ = nullptr;
  slots_ = nullptr;
  fd_.reset();
}

namespace {

/// Maps `fd` and fills in a handle's pointers; validates the header when
/// `check` is set.
caf::error map_queue(unique_fd& fd, bool check, void*& base, size_t& size,
                     shm_queue_header*& header) {
  auto m = map_shared(fd.get(), header_bytes, "a multiproc queue");
  if (!m)
    return std::move(m.error());
  base = m->base;
  size = m->size;
  header = static_cast<shm_queue_header*>(base);
  if (!check)
    return caf::none;
  std::string problem;
  auto cap = header->capacity;
  if (header->magic != queue_magic)
    problem = "is not a multiproc queue (wrong magic)";
  else if (header->version != queue_version)
    problem = "holds a queue of layout version "
              + std::to_string(header->version) + ", this program reads "
              + std::to_string(queue_version);
  else if (cap < 2 || (cap & (cap - 1)) != 0 || header->stride % 64 != 0
           || uint64_t{header->max_message} + length_bytes + slot_header_bytes
                > header->stride
           || header->total_size != size
           || header_bytes + uint64_t{cap} * header->stride != size)
    problem = "holds a queue with an inconsistent header";
  if (problem.empty())
    return caf::none;
  ::munmap(base, size);
  base = nullptr;
  header = nullptr;
  return make_error(errc::invalid_argument,
                    describe_fd(fd.get()) + " " + problem);
}

} // namespace

caf::expected<shm_queue> shm_queue::create(const shm_queue_options& opts) {
  if (opts.capacity < 2 || opts.capacity > max_queue_capacity)
    return make_error(errc::invalid_argument,
                      "queue capacity " + std::to_string(opts.capacity)
                        + " is out of range (2 to 1048576)");
  if (opts.max_message_size < 1
      || opts.max_message_size > max_queue_message_size)
    return make_error(errc::invalid_argument,
                      "queue max_message_size "
                        + std::to_string(opts.max_message_size)
                        + " is out of range (1 to 16 MiB)");
  uint32_t cap = 2;
  while (cap < opts.capacity)
    cap <<= 1;
  uint32_t stride
    = (opts.max_message_size + length_bytes + slot_header_bytes + 63) / 64 * 64;
  uint64_t total = header_bytes + uint64_t{cap} * stride;
  // Sealed: nobody may resize it under a mapping (that would raise SIGBUS).
  auto memfd = create_sealed_memfd("multiproc-queue", total, "a queue");
  if (!memfd)
    return std::move(memfd.error());
  auto fd = std::move(*memfd);
  shm_queue q;
  if (auto err = map_queue(fd, false, q.base_, q.size_, q.header_))
    return err;
  auto* h = new (q.base_) shm_queue_header{};
  h->magic = queue_magic;
  h->version = queue_version;
  h->capacity = cap;
  h->stride = stride;
  h->max_message = opts.max_message_size;
  h->flags = (opts.joinable ? flag_joinable : 0)
             | (opts.batching ? flag_batching : 0);
  h->tag = opts.tag;
  h->total_size = total;
  q.fd_ = std::move(fd);
  q.slots_ = static_cast<char*>(q.base_) + header_bytes;
  q.stride_ = stride;
  q.room_ = stride - slot_header_bytes;
  q.mask_ = cap - 1;
  while ((uint32_t{1} << q.shift_) < cap)
    ++q.shift_;
  for (uint32_t i = 0; i < cap; ++i) {
    auto* slot = new (q.slots_ + uint64_t{i} * stride) shm_slot{};
    slot->state.store(make_state(0, 0, st_free), std::memory_order_relaxed);
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return q;
}

caf::expected<shm_queue> shm_queue::attach(unique_fd fd) {
  if (!fd)
    return make_error(errc::invalid_argument,
                      "attach needs a queue descriptor, got none");
  shm_queue q;
  if (auto err = map_queue(fd, true, q.base_, q.size_, q.header_))
    return err;
  q.fd_ = std::move(fd);
  q.slots_ = static_cast<char*>(q.base_) + header_bytes;
  q.stride_ = q.header_->stride;
  q.room_ = q.stride_ - slot_header_bytes;
  q.mask_ = q.header_->capacity - 1;
  while ((uint32_t{1} << q.shift_) < q.header_->capacity)
    ++q.shift_;
  return q;
}

caf::expected<shm_queue> shm_queue::clone() const {
  if (!valid())
    return make_error(errc::invalid_argument, "clone of an empty queue handle");
  unique_fd dup{::fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0)};
  if (!dup)
    return make_system_error("dup of queue " + describe_fd(fd_.get()), errno);
  return attach(std::move(dup));
}

shm_slot& shm_queue::slot_at(uint64_t index) const noexcept {
  return *reinterpret_cast<shm_slot*>(slots_ + (index & mask_) * stride_);
}

// -- producers ----------------------------------------------------------------------

namespace {

/// Appends one length-prefixed message at the slot's end.
void append_message(shm_slot& slot, std::string_view bytes) noexcept {
  auto size = static_cast<uint32_t>(bytes.size());
  std::memcpy(slot.payload() + slot.end, &size, length_bytes);
  std::memcpy(slot.payload() + slot.end + length_bytes, bytes.data(),
              bytes.size());
  slot.end += length_bytes + size;
  slot.count += 1;
}

} // namespace

bool shm_queue::try_append(std::string_view bytes) noexcept {
  if (last_put_ == no_slot || (header_->flags & flag_batching) == 0)
    return false;
  if (append_skip_ > 0) {
    --append_skip_;
    return false;
  }
  auto& h = *header_;
  auto& slot = slot_at(last_put_ & 0xffffffffu);
  auto lap = static_cast<uint32_t>(last_put_ >> 32);
  // Take the slot back from `ready` unless a consumer took it already.
  auto s = make_state(lap, 0, st_ready);
  if (!slot.state.compare_exchange_strong(s, make_state(lap, self_pid(),
                                                        st_writing),
                                          std::memory_order_seq_cst)) {
    last_put_ = no_slot;
    append_backoff_ = std::min<uint32_t>(64, append_backoff_ * 2 + 1);
    append_skip_ = append_backoff_;
    return false;
  }
  bool fits = slot.end + length_bytes + bytes.size() <= room_;
  // A put racing with close() must not land after a consumer saw the end.
  if (fits && h.closed.load(std::memory_order_seq_cst) == 0) {
    at_step(queue_step::put_claimed);
    append_message(slot, bytes);
    if (h.flags & flag_joinable)
      h.unfinished.fetch_add(1, std::memory_order_relaxed);
    append_backoff_ = 0;
  } else {
    last_put_ = no_slot;
  }
  slot.state.store(make_state(lap, 0, st_ready), std::memory_order_seq_cst);
  if (fits)
    notify(h.not_empty);
  return fits && last_put_ != no_slot;
}

shm_queue::attempt shm_queue::try_put(std::string_view bytes) noexcept {
  auto& h = *header_;
  if (h.closed.load(std::memory_order_acquire) != 0)
    return attempt::closed;
  if (try_append(bytes))
    return attempt::done;
  auto me = self_pid();
  bool optimistic = std::exchange(optimistic_, false);
  for (;;) {
    auto pos = h.enqueue_pos.load(std::memory_order_acquire);
    auto& slot = slot_at(pos);
    auto lap = static_cast<uint32_t>(pos >> shift_);
    // Compare-and-swap first: one cache-line transfer instead of a read
    // and then an upgrade when the slot is free, as it is while streaming.
    auto s = make_state(lap, 0, st_free);
    bool claimed = false;
    if (optimistic)
      claimed = slot.state.compare_exchange_strong(
        s, make_state(lap, me, st_writing), std::memory_order_seq_cst);
    else
      s = slot.state.load(std::memory_order_acquire);
    optimistic = true;
    auto d = lap_distance(lap_of(s), lap);
    if (!claimed && d == 0 && status_of(s) == st_free) {
      if (!slot.state.compare_exchange_strong(s, make_state(lap, me, st_writing),
                                              std::memory_order_seq_cst))
        continue;
      claimed = true;
    }
    if (claimed) {
      advance(h.enqueue_pos, pos);
      // close() may have run between the check above and the claim: then
      // a consumer may already have seen the stream end. Drop the slot.
      if (h.closed.load(std::memory_order_seq_cst) != 0) {
        slot.state.store(make_state(lap + 1, 0, st_free),
                         std::memory_order_seq_cst);
        notify(h.not_full);
        return attempt::closed;
      }
      if (header_->flags & flag_batching)
        prefetch_lines(slot.payload(), std::min<size_t>(room_, 4096), true);
      at_step(queue_step::put_claimed);
      append_message(slot, bytes);
      slot.deliveries.store(1, std::memory_order_relaxed);
      slot.taken = 0;
      if (h.flags & flag_joinable)
        h.unfinished.fetch_add(1, std::memory_order_relaxed);
      slot.state.store(make_state(lap, 0, st_ready), std::memory_order_seq_cst);
      notify(h.not_empty);
      last_put_ = (pos & mask_) | uint64_t{lap} << 32;
      return attempt::done;
    }
    if (d >= 0) {
      // Another producer claimed this ticket (or it is long done): help
      // move the position on, then try the next ticket.
      advance(h.enqueue_pos, pos);
      continue;
    }
    // The slot still holds the message of the previous lap.
    if (h.enqueue_pos.load(std::memory_order_acquire) != pos)
      continue;
    return attempt::none;
  }
}

caf::error shm_queue::put(std::string_view bytes, timeout_type timeout) {
  if (!valid())
    return make_error(errc::invalid_argument, "put on an empty queue handle");
  if (bytes.size() > header_->max_message)
    return make_error(errc::frame_too_large,
                      "a message of " + std::to_string(bytes.size())
                        + " bytes exceeds the queue's max_message_size of "
                        + std::to_string(header_->max_message) + " bytes");
  optimistic_ = true;
  auto r = wait_for<attempt>(
    header_->not_full, timeout, spin_,
    [&] { return try_put(bytes); }, [&] { recover(); });
  switch (r) {
    case attempt::done:
      return caf::none;
    case attempt::closed:
      return make_error(errc::closed, "put on a closed queue");
    case attempt::none:
      break;
  }
  if (timeout && timeout->count() <= 0)
    return make_error(errc::full, "the queue is full ("
                                    + std::to_string(header_->capacity)
                                    + " slots)");
  return make_error(errc::timeout, "the queue stayed full for "
                                     + std::to_string(timeout->count())
                                     + " ms");
}

void shm_queue::close() noexcept {
  if (!valid())
    return;
  header_->closed.store(1, std::memory_order_seq_cst);
  wake_consumers();
  wake_producers();
}

void shm_queue::wake_producers() noexcept {
  notify(header_->not_full);
}

void shm_queue::wake_consumers() noexcept {
  notify(header_->not_empty);
}

// -- consumers ----------------------------------------------------------------------

void shm_queue::begin_batch(shm_slot& slot, uint64_t lease) noexcept {
  leases_.push_back(lease);
  batch_ = lease;
  end_ = std::min(slot.end, room_);
  read_ = std::min(slot.start, end_);
  returned_ = 0;
  batch_deliveries_ = slot.deliveries.load(std::memory_order_relaxed);
  slot.taken = slot.count;
}

caf::expected<shm_queue::message> shm_queue::next_message() {
  auto& slot = slot_at(batch_ & 0xffffffffu);
  uint32_t size = 0;
  if (end_ - read_ >= length_bytes)
    std::memcpy(&size, slot.payload() + read_, length_bytes);
  if (end_ - read_ < length_bytes || size > end_ - read_ - length_bytes) {
    // Only a foreign writer can leave this: drop the rest of the batch.
    auto at = read_;
    read_ = end_;
    slot.count = 0;
    slot.start = end_;
    return make_error(errc::protocol_error,
                      "queue slot " + std::to_string(batch_ & 0xffffffffu)
                        + " holds a malformed message at offset "
                        + std::to_string(at) + "; the rest of its batch is "
                        + "dropped");
  }
  message out{std::string_view{slot.payload() + read_ + length_bytes, size},
              batch_deliveries_};
  read_ += length_bytes + size;
  if (joinable())
    ++undone_;
  else
    ++returned_;
  at_step(queue_step::get_leased);
  return out;
}

void shm_queue::settle() noexcept {
  if (batch_ == no_slot)
    return;
  auto& slot = slot_at(batch_ & 0xffffffffu);
  if (read_ < end_) {
    // Drop what was returned; the rest stays leased to this handle.
    if (returned_ > 0) {
      slot.start = read_;
      slot.count -= std::min(slot.count, returned_);
      acked_ += returned_;
      returned_ = 0;
    }
    return;
  }
  acked_ += returned_;
  slot.count = 0;
  end_lease(batch_);
  leases_.clear();
  batch_ = no_slot;
  returned_ = 0;
}

shm_queue::attempt shm_queue::try_get() noexcept {
  auto& h = *header_;
  auto me = self_pid();
  if (h.redeliver.load(std::memory_order_acquire) != 0 && take_redelivered())
    return attempt::done;
  bool optimistic = std::exchange(optimistic_, false) && !holding_;
  for (;;) {
    auto pos = h.dequeue_pos.load(std::memory_order_acquire);
    auto& slot = slot_at(pos);
    auto lap = static_cast<uint32_t>(pos >> shift_);
    auto s = make_state(lap, 0, st_ready);
    bool taken = false;
    if (optimistic)
      taken = slot.state.compare_exchange_strong(
        s, make_state(lap, me, st_leased), std::memory_order_acq_rel);
    else if (h.enqueue_pos.load(std::memory_order_acquire) <= pos)
      // No producer claimed this ticket yet: a waiting consumer watches the
      // enqueue position, not the slot the producer is about to write.
      s = make_state(lap, 0, st_free);
    else
      s = holding_ ? hold(slot, pos) : slot.state.load(std::memory_order_acquire);
    optimistic = !holding_;
    auto d = lap_distance(lap_of(s), lap);
    if (!taken && d == 0 && status_of(s) == st_ready) {
      if (!slot.state.compare_exchange_strong(s, make_state(lap, me, st_leased),
                                              std::memory_order_acq_rel))
        continue;
      taken = true;
    }
    if (taken) {
      advance(h.dequeue_pos, pos);
      begin_batch(slot, (pos & mask_) | uint64_t{lap} << 32);
      // Lockstep: slot after slot taken while barely filled. Batches would
      // form if we waited a little.
      if (!holding_ && end_ - read_ <= room_ / 2) {
        if (hold_cooldown_ > 0)
          --hold_cooldown_;
        else if (++lockstep_ >= 8)
          holding_ = true;
      } else {
        lockstep_ = 0;
      }
      return attempt::done;
    }
    if (d > 0
        || (d == 0
            && (status_of(s) == st_leased || status_of(s) == st_redeliver))) {
      // Taken already: help move the position on.
      advance(h.dequeue_pos, pos);
      continue;
    }
    // Not written yet (free or being written at this lap, or the slot still
    // holds the previous lap's leased batch).
    if (h.dequeue_pos.load(std::memory_order_acquire) != pos)
      continue;
    if (h.closed.load(std::memory_order_seq_cst) != 0) {
      bool pending = false;
      scan(std::nullopt, &pending);
      if (pending)
        return h.redeliver.load(std::memory_order_acquire) != 0
                   && take_redelivered()
                 ? attempt::done
                 : attempt::none;
      return attempt::closed;
    }
    return attempt::none;
  }
}

uint64_t shm_queue::hold(shm_slot& slot, uint64_t pos) noexcept {
  // Wait (at most hold_ns) while the slot is the producer's newest: the
  // producer is appending to it. Watches only the enqueue position (written
  // once per slot), not the slot, so as not to pull the slot's line away
  // from its writer at every append.
  auto& h = *header_;
  auto start = clock::now();
  auto first_end = __atomic_load_n(&slot.end, __ATOMIC_RELAXED);
  for (unsigned i = 0;; ++i) {
    if (h.enqueue_pos.load(std::memory_order_acquire) != pos + 1)
      break;
    if (i % 4 == 3 && clock::now() - start > std::chrono::nanoseconds{hold_ns}) {
      if (__atomic_load_n(&slot.end, __ATOMIC_RELAXED) == first_end) {
        // Nothing came: not a stream. Take messages at once for a while.
        holding_ = false;
        lockstep_ = 0;
        hold_cooldown_ = 1024;
      }
      break;
    }
    for (int k = 0; k < 8; ++k)
      cpu_relax();
  }
  return slot.state.load(std::memory_order_acquire);
}

bool shm_queue::take_redelivered() noexcept {
  auto me = self_pid();
  for (uint64_t i = 0; i <= mask_; ++i) {
    auto& slot = slot_at(i);
    auto s = slot.state.load(std::memory_order_acquire);
    if (status_of(s) != st_redeliver)
      continue;
    if (!slot.state.compare_exchange_strong(
          s, make_state(lap_of(s), me, st_leased), std::memory_order_acq_rel))
      continue;
    header_->redeliver.fetch_sub(1, std::memory_order_acq_rel);
    begin_batch(slot, i | uint64_t{lap_of(s)} << 32);
    return true;
  }
  return false;
}

caf::expected<shm_queue::message> shm_queue::get(timeout_type timeout) {
  if (!valid())
    return make_error(errc::invalid_argument, "get on an empty queue handle");
  if (!joinable())
    settle();
  if (batch_ != no_slot && read_ < end_)
    return next_message();
  batch_ = no_slot;
  optimistic_ = true;
  auto r = wait_for<attempt>(
    header_->not_empty, timeout, spin_,
    [&] { return try_get(); }, [&] { recover(); });
  switch (r) {
    case attempt::done:
      if (read_ < end_)
        return next_message();
      // An empty batch: its consumer died after finishing every message.
      end_lease(batch_);
      leases_.pop_back();
      batch_ = no_slot;
      return get(timeout);
    case attempt::closed:
      return make_error(errc::end_of_stream,
                        "the queue is closed and drained");
    case attempt::none:
      break;
  }
  if (timeout && timeout->count() <= 0)
    return make_error(errc::empty, "the queue is empty");
  return make_error(errc::timeout, "the queue stayed empty for "
                                     + std::to_string(timeout->count())
                                     + " ms");
}

void shm_queue::end_lease(uint64_t lease) noexcept {
  auto& slot = slot_at(lease & 0xffffffffu);
  auto lap = static_cast<uint32_t>(lease >> 32);
  slot.start = 0;
  slot.end = 0;
  slot.count = 0;
  auto expected = make_state(lap, self_pid(), st_leased);
  // Fails only if a recovery wrongly took the lease over; then the slot is
  // not ours to free.
  if (slot.state.compare_exchange_strong(expected,
                                         make_state(lap + 1, 0, st_free),
                                         std::memory_order_seq_cst)) {
    count_consumed();
    wake_producers();
    if (header_->closed.load(std::memory_order_acquire) != 0)
      wake_consumers();
  } else {
    acked_ = 0; // the repairer counted them
  }
}

void shm_queue::count_consumed() noexcept {
  // After the state store that ended the lease: a death in between leaves
  // these few messages uncounted, never counted twice.
  if (acked_ == 0)
    return;
  header_->consumed.fetch_add(acked_, std::memory_order_relaxed);
  acked_ = 0;
}

void shm_queue::hand_back(uint64_t lease) noexcept {
  auto& slot = slot_at(lease & 0xffffffffu);
  auto lap = static_cast<uint32_t>(lease >> 32);
  auto expected = make_state(lap, self_pid(), st_leased);
  slot.taken = 0;
  if (!slot.state.compare_exchange_strong(expected,
                                          make_state(lap, 0, st_redeliver),
                                          std::memory_order_seq_cst)) {
    acked_ = 0;
    return;
  }
  count_consumed();
  header_->redeliver.fetch_add(1, std::memory_order_seq_cst);
  wake_consumers();
}

void shm_queue::ack() noexcept {
  if (valid() && !joinable())
    settle();
}

caf::error shm_queue::task_done() {
  if (!valid() || !joinable())
    return make_error(errc::invalid_argument,
                      "task_done on a queue that is not joinable");
  if (undone_ == 0 || leases_.empty())
    return make_error(errc::invalid_argument,
                      "task_done called more times than get on this handle");
  // Messages are done in the order they were taken: drop the oldest.
  auto lease = leases_.front();
  auto& slot = slot_at(lease & 0xffffffffu);
  uint32_t size = 0;
  std::memcpy(&size, slot.payload() + slot.start, length_bytes);
  slot.start = std::min(slot.end, slot.start + length_bytes + size);
  slot.count -= std::min(slot.count, 1u);
  --undone_;
  ++acked_;
  if (slot.count == 0) {
    end_lease(lease);
    leases_.pop_front();
    if (lease == batch_)
      batch_ = no_slot;
  }
  if (header_->unfinished.fetch_sub(1, std::memory_order_seq_cst) == 1)
    notify(header_->done_events);
  return caf::none;
}

caf::error shm_queue::join(timeout_type timeout) {
  if (!valid() || !joinable())
    return make_error(errc::invalid_argument,
                      "join on a queue that is not joinable");
  auto r = wait_for<attempt>(
    header_->done_events, timeout, spin_,
    [&] {
      return header_->unfinished.load(std::memory_order_seq_cst) == 0
               ? attempt::done
               : attempt::none;
    },
    [&] { recover(); });
  if (r == attempt::done)
    return caf::none;
  return make_error(errc::timeout,
                    std::to_string(unfinished()) + " messages still not done");
}

// -- observers ---------------------------------------------------------------------

void shm_queue::set_max_spin(std::chrono::nanoseconds max) noexcept {
  spin_.max_ns = std::clamp<int64_t>(max.count(), 0, max_spin_ns);
}

size_t shm_queue::size() const noexcept {
  if (!valid())
    return 0;
  size_t n = 0;
  for (uint64_t i = 0; i <= mask_; ++i) {
    auto& slot = slot_at(i);
    auto st = status_of(slot.state.load(std::memory_order_acquire));
    if (st == st_ready || st == st_redeliver)
      n += slot.count;
  }
  return n;
}

bool shm_queue::full() const noexcept {
  if (!valid())
    return false;
  auto pos = header_->enqueue_pos.load(std::memory_order_acquire);
  auto s = slot_at(pos).state.load(std::memory_order_acquire);
  return lap_distance(lap_of(s), static_cast<uint32_t>(pos >> shift_)) < 0;
}

bool shm_queue::closed() const noexcept {
  return valid() && header_->closed.load(std::memory_order_acquire) != 0;
}

uint32_t shm_queue::capacity() const noexcept {
  return valid() ? header_->capacity : 0;
}

uint32_t shm_queue::max_message_size() const noexcept {
  return valid() ? header_->max_message : 0;
}

bool shm_queue::joinable() const noexcept {
  return valid() && (header_->flags & flag_joinable) != 0;
}

uint64_t shm_queue::tag() const noexcept {
  return valid() ? header_->tag : 0;
}

uint64_t shm_queue::unfinished() const noexcept {
  return valid() ? header_->unfinished.load(std::memory_order_acquire) : 0;
}

uint64_t shm_queue::consumed() const noexcept {
  return valid() ? header_->consumed.load(std::memory_order_relaxed) : 0;
}

uint64_t shm_queue::redelivered() const noexcept {
  return valid() ? header_->redelivered.load(std::memory_order_relaxed) : 0;
}

// -- recovery ----------------------------------------------------------------------

size_t shm_queue::recover(std::optional<int> pid) noexcept {
  if (!valid())
    return 0;
  return scan(pid, nullptr);
}

size_t shm_queue::scan(std::optional<int> dead, bool* pending) noexcept {
  auto me = self_pid();
  // Liveness answers of this scan (a system call each).
  std::array<std::pair<uint32_t, bool>, 16> known{};
  size_t known_n = 0;
  auto is_dead = [&](uint32_t owner) {
    if (dead)
      return owner == static_cast<uint32_t>(*dead);
    for (size_t i = 0; i < known_n; ++i)
      if (known[i].first == owner)
        return known[i].second;
    bool gone = process_gone(owner);
    if (known_n < known.size())
      known[known_n++] = {owner, gone};
    return gone;
  };
  size_t repaired = 0;
  bool any_pending = false;
  bool dropped = false;
  bool redelivered = false;
  for (uint64_t i = 0; i <= mask_; ++i) {
    auto& slot = slot_at(i);
    auto s = slot.state.load(std::memory_order_acquire);
    auto st = status_of(s);
    if (st == st_free)
      continue;
    if (st == st_ready || st == st_redeliver) {
      any_pending = true;
      continue;
    }
    auto owner = pid_of(s);
    if (owner == me || !is_dead(owner)) {
      // A live producer's message will come; a live consumer's lease may
      // come back. Our own leases end before we look for the next message.
      if (owner != me || st == st_writing)
        any_pending = true;
      continue;
    }
    auto lap = lap_of(s);
    if (st == st_writing) {
      // The producer died before publishing its message: that message never
      // existed. Messages it had published in the slot before stay.
      if (!slot.state.compare_exchange_strong(
            s, make_state(lap, me, st_writing), std::memory_order_seq_cst))
        continue;
      ++repaired;
      if (recount(slot) > 0) {
        slot.state.store(make_state(lap, 0, st_ready), std::memory_order_seq_cst);
        redelivered = true;
        any_pending = true;
      } else {
        slot.start = slot.end = slot.count = 0;
        slot.state.store(make_state(lap + 1, 0, st_free),
                         std::memory_order_seq_cst);
        dropped = true;
      }
      continue;
    }
    // st_leased by a dead consumer: take the lease over, count the
    // delivery, then offer the message again.
    if (!slot.state.compare_exchange_strong(
          s, make_state(lap, me, st_leased), std::memory_order_seq_cst))
      continue;
    slot.deliveries.fetch_add(1, std::memory_order_relaxed);
    // The dead consumer may have stopped between moving `start` and `count`.
    auto left = recount(slot);
    // What it acknowledged in this lease was not counted yet.
    if (slot.taken > left)
      header_->consumed.fetch_add(slot.taken - left, std::memory_order_relaxed);
    slot.taken = 0;
    header_->redelivered.fetch_add(left, std::memory_order_relaxed);
    slot.state.store(make_state(lap, 0, st_redeliver), std::memory_order_seq_cst);
    header_->redeliver.fetch_add(1, std::memory_order_seq_cst);
    ++repaired;
    redelivered = true;
    any_pending = true;
  }
  if (dropped)
    wake_producers();
  if (dropped || redelivered)
    wake_consumers();
  if (pending != nullptr)
    *pending = any_pending;
  return repaired;
}

} // namespace multiproc
