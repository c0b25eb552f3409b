#pragma once

/// shm_queue: a bounded many-to-many queue of byte messages in anonymous
/// shared memory (memfd_create), for any number of producer and consumer
/// processes. It is the untyped core of multiproc::queue<T> (queue.hpp);
/// docs/queue.md describes its memory layout, algorithm and invariants.
///
/// Guarantees:
/// - No lock: every slot moves through its states by compare-and-swap, so a
///   process that dies at any instant leaves no lock held.
/// - A producer that dies mid-put leaves no stuck slot: the half-written
///   message is dropped (it was never delivered).
/// - At-least-once delivery: a message taken by get() stays leased to the
///   consumer until it is acknowledged (by the consumer's next get(), ack(),
///   task_done() in a joinable queue, or the handle's destruction). If the
///   consumer's process dies first, the message is delivered again to
///   another consumer, with deliveries() > 1.
/// - Dead parties are found by the waiters themselves (every ~10 ms of
///   waiting) or at once through recover(), which a supervisor calls when
///   it learns that a process died.
/// - Nothing is ever named in /dev/shm: the memory disappears with the last
///   descriptor and mapping, even when every process is SIGKILLed.
/// - Idle waiting costs no CPU (a futex), after a short adaptive spin.
///
/// Thread safety: put() and the observers may be called from any thread.
/// The consumer calls (get, ack, task_done) keep per-handle lease records:
/// one thread at a time per handle; give each consumer thread its own handle
/// (clone()).

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string_view>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "multiproc/fd.hpp"

namespace multiproc {

namespace detail {
struct shm_queue_header;
struct shm_slot;
} // namespace detail

/// Options of shm_queue::create().
struct shm_queue_options {
  /// How many messages the queue holds, counting taken but unacknowledged
  /// ones; rounded up to a power of two, 2 to 1,048,576.
  uint32_t capacity = 1024;
  /// The largest message in bytes (a slot's payload), 1 to 16 MiB; a larger
  /// put fails with frame_too_large. Memory used: 4 KiB + capacity × (this
  /// + 16 bytes, rounded up to 64).
  uint32_t max_message_size = 1000;
  /// A joinable queue (Python's JoinableQueue): consumers call task_done()
  /// for each message and join() waits until every message put was done.
  /// A lease then ends at task_done(), not at the next get().
  bool joinable = false;
  /// An application tag checked by attach() (queue<T> stores T's type id).
  uint64_t tag = 0;
};

/// A handle to a shared queue. Move-only; each handle maps the memory once.
class shm_queue {
public:
  /// The wait of a call: nullopt waits forever, zero does not wait.
  using timeout_type = std::optional<std::chrono::milliseconds>;

  /// A message taken by get(): the bytes stay valid (in shared memory) until
  /// the lease ends (the handle's next get, ack or task_done).
  struct message {
    std::string_view bytes;
    /// 1 for a first delivery; more when a consumer died holding it.
    uint32_t deliveries = 1;
  };

  shm_queue() noexcept = default;
  shm_queue(shm_queue&& other) noexcept;
  shm_queue& operator=(shm_queue&& other) noexcept;
  shm_queue(const shm_queue&) = delete;
  shm_queue& operator=(const shm_queue&) = delete;
  /// Acknowledges this handle's leases and unmaps the memory.
  ~shm_queue();

  /// Creates a queue in a new memfd. Errors: invalid_argument (an option out
  /// of range), system_error (memfd_create, ftruncate or mmap failed).
  static caf::expected<shm_queue> create(const shm_queue_options& opts = {});

  /// Maps the queue behind `fd` (from fd() of another handle, e.g. passed to
  /// a child in process_options::fds). Errors: invalid_argument naming what
  /// is wrong (not a multiproc queue, a wrong size or version) and
  /// system_error.
  static caf::expected<shm_queue> attach(unique_fd fd);

  /// A new handle on the same queue (its own descriptor, mapping and leases).
  caf::expected<shm_queue> clone() const;

  /// The memfd, to pass to another process; owned by the handle.
  int fd() const noexcept { return fd_.get(); }

  bool valid() const noexcept { return header_ != nullptr; }

  // -- producers ------------------------------------------------------------

  /// Puts one message, waiting for room up to `timeout`. Errors: full (no
  /// room, `timeout` zero), timeout, closed (close() was called; the message
  /// is not put), frame_too_large, invalid_argument (an empty handle).
  caf::error put(std::string_view bytes, timeout_type timeout = std::nullopt);

  /// Ends the stream: later puts fail with `closed`; consumers drain what is
  /// left and then get end_of_stream. Wakes every waiter. Idempotent.
  void close() noexcept;

  // -- consumers -----------------------------------------------------------

  /// Ends the previous lease (unless joinable), then takes the next message,
  /// waiting up to `timeout`. Errors: empty (nothing there, `timeout` zero),
  /// timeout, end_of_stream (closed, drained, and no other consumer holds a
  /// lease that could come back), invalid_argument.
  caf::expected<message> get(timeout_type timeout = std::nullopt);

  /// Acknowledges every lease of this handle: those messages are done and
  /// will not be delivered again.
  void ack() noexcept;

  /// Joinable queues: marks this handle's oldest leased message as done
  /// (acknowledging it). Errors: invalid_argument if the queue is not
  /// joinable or the handle holds no message (task_done called more often
  /// than get, Python's ValueError).
  caf::error task_done();

  /// Joinable queues: waits until every message ever put is done. Errors:
  /// timeout, invalid_argument (not joinable).
  caf::error join(timeout_type timeout = std::nullopt);

  // -- observers (approximate while others run, like Python's qsize) -------

  /// Messages waiting to be taken (not counting leased ones).
  size_t size() const noexcept;
  bool empty() const noexcept { return size() == 0; }
  /// True if a put would find no room now.
  bool full() const noexcept;
  bool closed() const noexcept;
  uint32_t capacity() const noexcept;
  uint32_t max_message_size() const noexcept;
  bool joinable() const noexcept;
  uint64_t tag() const noexcept;
  /// Messages put and not yet done (joinable queues), else 0.
  uint64_t unfinished() const noexcept;
  /// Messages this handle holds leased.
  size_t leases() const noexcept { return leases_.size(); }

  // -- recovery -------------------------------------------------------------

  /// Repairs what dead processes left: a slot a dead producer was writing is
  /// dropped, a message leased by a dead consumer is delivered again. With
  /// `pid`, treats that process as dead (call it once the process has
  /// exited, before reaping it); without, checks each owner's liveness.
  /// Returns how many slots were repaired.
  size_t recover(std::optional<int> pid = std::nullopt) noexcept;

private:
  enum class attempt { done, none, closed };

  void release() noexcept;
  attempt try_put(std::string_view bytes) noexcept;
  attempt try_get(message& out) noexcept;
  bool take_redelivered(message& out) noexcept;
  /// Scans every slot: repairs dead owners' slots (all non-self owners are
  /// checked when `dead` is nullopt) and tells whether anything could still
  /// be delivered to a consumer of a closed queue.
  size_t scan(std::optional<int> dead, bool* pending) noexcept;
  bool end_lease(uint64_t lease) noexcept;
  message view(detail::shm_slot& slot, uint64_t lease) noexcept;
  detail::shm_slot& slot_at(uint64_t index) const noexcept;
  void wake_producers(bool all) noexcept;
  void wake_consumers(bool all) noexcept;

  unique_fd fd_;
  void* base_ = nullptr;
  size_t size_ = 0;
  detail::shm_queue_header* header_ = nullptr;
  char* slots_ = nullptr;
  uint64_t mask_ = 0;
  unsigned shift_ = 0;
  uint32_t stride_ = 0;
  uint32_t pid_ = 0;
  /// Leased messages, oldest first: slot index | lap << 32.
  std::deque<uint64_t> leases_;
  /// Adaptive spin budget of this handle's waits, in nanoseconds.
  int64_t spin_ns_ = 20000;
};

} // namespace multiproc
