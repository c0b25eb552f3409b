#pragma once

/// \file
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
///   task_done() in a joinable queue, or the handle's destruction, which
///   hands messages taken in a batch but not yet returned back to the
///   queue). If the consumer's process dies first, the message is delivered
///   again to another consumer, with deliveries > 1.
/// - Dead parties are found by the waiters themselves (every ~10 ms of
///   waiting) or at once through recover(), which a supervisor calls when
///   it learns that a process died.
/// - Nothing is ever named in /dev/shm: the memory disappears with the last
///   descriptor and mapping, even when every process is SIGKILLed.
/// - Idle waiting costs no CPU (a futex), after a short adaptive spin.
///
/// Thread safety: a handle keeps per-handle records (its last slot, its
/// leases): use it from one thread at a time and give each thread its own
/// handle (clone()). The observers may be called from any thread.
///
/// Lifetimes: a handle owns its descriptor and mapping; its destructor ends
/// its leases (see above) and unmaps. The queue lives until the last handle
/// and descriptor in any process are gone. A moved-from handle is empty
/// (valid() false): its fallible calls fail with invalid_argument, its
/// observers return 0 or false.
///
/// Errors are values (caf::error, caf::expected); each call names its codes.

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

/// How long a handle's waits spin before they sleep, adapted to how often
/// spinning pays off (see adapt_spin in shm_queue.cpp).
struct shm_spin_state {
  /// The budget, in nanoseconds.
  int64_t ns = 20000;
  /// Spins in a row that ended in a sleep since one last succeeded; a few
  /// mean that the peer cannot run while we spin (it shares our core).
  uint32_t futile = 0;
  /// Waits left that spin only briefly after spinning proved futile.
  uint32_t cooldown = 0;
  /// The most any wait spins (shm_queue::set_max_spin).
  int64_t max_ns = 50000;
};
} // namespace detail

/// The most slots shm_queue::create() accepts.
constexpr uint32_t max_queue_capacity = 1u << 20;
/// The largest shm_queue_options::max_message_size, in bytes.
constexpr uint32_t max_queue_message_size = 16u << 20;

/// Options of shm_queue::create().
struct shm_queue_options {
  /// How many slots the queue has, counting leased ones (taken by a consumer
  /// and not yet acknowledged); rounded up to a power of two, 2 to 1,048,576.
  /// Without batching a slot holds one message: `capacity` is then exactly
  /// the bound of Python's maxsize.
  uint32_t capacity = 1024;
  /// The largest message in bytes, 1 to 16 MiB; a larger put fails with
  /// frame_too_large. A slot holds this many bytes of messages (plus 4 per
  /// message). Memory used: 4 KiB + capacity × (this + 36 bytes, rounded up
  /// to 64).
  uint32_t max_message_size = 1000;
  /// Batching: while no consumer has taken a producer's last slot, the
  /// producer's next put appends to it (as long as it fits), and a consumer
  /// takes the whole batch at once. Throughput then grows several-fold when
  /// consumers lag behind, and nothing changes when they keep up. The queue
  /// then holds more than `capacity` messages (up to capacity slots of
  /// max_message_size bytes). False: one message per slot.
  bool batching = true;
  /// A joinable queue (Python's JoinableQueue): consumers call task_done()
  /// for each message and join() waits until every message put was done.
  /// A message's lease then ends at task_done(), not at the next get().
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
    /// The message's bytes, in shared memory.
    std::string_view bytes;
    /// 1 for a first delivery; more when a consumer died holding it.
    uint32_t deliveries = 1;
  };

  /// An empty handle (valid() false).
  shm_queue() noexcept = default;
  /// Takes over `other`'s mapping and leases; `other` becomes empty.
  shm_queue(shm_queue&& other) noexcept;
  /// Releases this handle as the destructor does, then takes over `other`.
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
  /// Errors: invalid_argument (an empty handle), those of attach().
  caf::expected<shm_queue> clone() const;

  /// The memfd, to pass to another process; owned by the handle.
  int fd() const noexcept { return fd_.get(); }

  /// True unless empty (default-constructed or moved from).
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

  /// Plain queues: acknowledges the messages get() returned so far: they are
  /// done and will not be delivered again. (Joinable queues: task_done.)
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
  /// True if size() is 0.
  bool empty() const noexcept { return size() == 0; }
  /// True if a put would find no room now.
  bool full() const noexcept;
  /// True once close() was called by any handle.
  bool closed() const noexcept;
  /// Slots of the queue (shm_queue_options::capacity, rounded up).
  uint32_t capacity() const noexcept;
  /// The largest message in bytes.
  uint32_t max_message_size() const noexcept;
  /// True for a joinable queue.
  bool joinable() const noexcept;
  /// The application tag given at create().
  uint64_t tag() const noexcept;
  /// Messages put and not yet done (joinable queues), else 0.
  uint64_t unfinished() const noexcept;
  /// Messages acknowledged since the queue was created, by every handle:
  /// dropped from a lease by a plain queue's next get(), ack() or a handle's
  /// destruction, or marked done by task_done(). A handle adds its count
  /// when a slot's lease ends (once per slot, not per message), so the total
  /// lags by the batches being read; a consumer's death adds what it had
  /// acknowledged in its lease at the repair. Exact, except that a consumer
  /// killed between ending a lease and counting it (a few instructions)
  /// leaves that slot's messages uncounted.
  uint64_t consumed() const noexcept;
  /// Messages handed out again after their consumer died (counted by the
  /// repair: recover() or a waiter's scan). Messages a destroyed handle
  /// hands back are not counted (they were not delivered).
  uint64_t redelivered() const noexcept;
  /// Slots this handle holds leased (each holds one or more messages).
  size_t leases() const noexcept { return leases_.size(); }

  /// Caps how long this handle's waits spin before they sleep on the futex
  /// (by default up to 50 µs, adapted to how often spinning pays off); 0:
  /// sleep at once, for a thread that should leave the CPU to others.
  void set_max_spin(std::chrono::nanoseconds max) noexcept;

  // -- recovery -------------------------------------------------------------

  /// Repairs what dead processes left: a slot a dead producer was writing is
  /// dropped, a message leased by a dead consumer is delivered again. With
  /// `pid`, treats that process as dead (call it once the process has
  /// exited, before reaping it); without, checks each owner's liveness.
  /// Returns how many slots were repaired.
  size_t recover(std::optional<int> pid = std::nullopt) noexcept;

private:
  enum class attempt { done, none, closed };

  /// Marks "no slot" in the lease words below.
  static constexpr uint64_t no_slot = ~uint64_t{0};

  void release() noexcept;
  attempt try_put(std::string_view bytes) noexcept;
  bool try_append(std::string_view bytes) noexcept;
  attempt try_get() noexcept;
  bool take_redelivered() noexcept;
  /// Batching consumers: waits briefly while `slot` (at ticket `pos`) is the
  /// producer's newest and still filling; returns the slot's state.
  uint64_t hold(detail::shm_slot& slot, uint64_t pos) noexcept;
  /// Starts reading the batch of a slot just leased.
  void begin_batch(detail::shm_slot& slot, uint64_t lease) noexcept;
  /// Returns the next message of the current batch.
  caf::expected<message> next_message();
  /// Plain queues: drops the messages returned so far from the leased slot
  /// (they are acknowledged) and ends the lease once the batch is read.
  void settle() noexcept;
  /// Ends a lease: the slot is free for the next lap.
  void end_lease(uint64_t lease) noexcept;
  /// Adds the messages this handle acknowledged to the shared total.
  void count_consumed() noexcept;
  /// Offers a leased slot's remaining messages to other consumers.
  void hand_back(uint64_t lease) noexcept;
  /// Scans every slot: repairs dead owners' slots (all non-self owners are
  /// checked when `dead` is nullopt) and tells whether anything could still
  /// be delivered to a consumer of a closed queue.
  size_t scan(std::optional<int> dead, bool* pending) noexcept;
  detail::shm_slot& slot_at(uint64_t index) const noexcept;
  void wake_producers() noexcept;
  void wake_consumers() noexcept;

  unique_fd fd_;
  void* base_ = nullptr;
  size_t size_ = 0;
  detail::shm_queue_header* header_ = nullptr;
  char* slots_ = nullptr;
  uint64_t mask_ = 0;
  unsigned shift_ = 0;
  uint32_t stride_ = 0;
  /// Bytes a slot's batch can hold.
  uint32_t room_ = 0;

  // Producer side. A put appends to the producer's last slot while no
  // consumer has taken it (a batch forms only while consumers lag behind).
  /// The last slot this handle published: index | lap << 32, or no_slot.
  uint64_t last_put_ = no_slot;
  /// After a failed append, puts skip that many append attempts (doubling
  /// up to 64): the slot was taken, consumers keep up, batches do not form.
  uint32_t append_backoff_ = 0;
  uint32_t append_skip_ = 0;

  // Consumer side. Leases are slots: index | lap << 32.
  /// Leased slots, oldest first: a plain queue holds at most the batch being
  /// read; a joinable one also the read ones with messages not yet done.
  std::deque<uint64_t> leases_;
  /// The slot being read, or no_slot.
  uint64_t batch_ = no_slot;
  /// Offsets in the batch: the next message and the end.
  uint32_t read_ = 0;
  uint32_t end_ = 0;
  /// Plain queues: messages returned from the batch and not yet dropped.
  uint32_t returned_ = 0;
  /// Joinable queues: messages returned by get and not yet task_done.
  uint64_t undone_ = 0;
  /// Messages acknowledged and not yet added to the header's `consumed`
  /// (added when a lease ends: one atomic add per slot, not per message).
  uint32_t acked_ = 0;
  uint32_t batch_deliveries_ = 1;
  /// The first attempt of a call claims a slot by compare-and-swap at once
  /// (one cache-line transfer while streaming); retries read first, so that
  /// a waiter does not pull the line away from the party about to write it.
  bool optimistic_ = true;
  /// Consumer in lockstep with a streaming producer (every slot taken holds
  /// one message): it then lets the newest slot fill for up to hold_ns
  /// before taking it. A hold that sees nothing arrive ends this mode for
  /// the next hold_cooldown_ slots.
  bool holding_ = false;
  uint32_t lockstep_ = 0;
  uint32_t hold_cooldown_ = 0;
  static constexpr int64_t hold_ns = 1000;
  /// How long this handle's waits spin before they sleep.
  detail::shm_spin_state spin_;
};

} // namespace multiproc
