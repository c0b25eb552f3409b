#pragma once

/// \file
/// queue<T>: a bounded many-to-many queue of typed messages between
/// processes, the counterpart of Python's multiprocessing.Queue and
/// JoinableQueue, without their pitfalls: no feeder thread (a put is in
/// shared memory when it returns), no lock a dead process can hold, no
/// sentinel (close() ends the stream), and a message whose consumer dies
/// before finishing it is delivered again (at-least-once).
///
///     auto q = multiproc::queue<int>::create();            // parent
///     multiproc::process_options opts;
///     opts.fds = {q->fd()};                                // pass it on
///     auto child = multiproc::start_process("consumer", {}, opts);
///     auto q = multiproc::queue<int>::attach(std::move(ctx.fds[0]));  // child
///
/// T is any type registered with MULTIPROC_MESSAGE; values are Cereal-encoded
/// into shared memory (shm_queue.hpp, docs/queue.md). Values made only of
/// arithmetic fields, enums, strings, arrays and binary_data get the same
/// bytes without building a Cereal archive (detail/flat_archive.hpp).
///
/// Thread safety: as shm_queue: one thread at a time per handle; clone()
/// gives a thread its own handle.
///
/// Lifetimes: as shm_queue (a handle owns its mapping; its destructor ends
/// its leases; a moved-from handle is empty). A value returned by get() is a
/// decoded copy: it stays valid after the lease ends.
///
/// Errors are values; Cereal's exceptions become encode_failed and
/// decode_failed. Each call names its codes.

#include <chrono>
#include <optional>
#include <string>
#include <utility>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "multiproc/detail/flat_archive.hpp"
#include "multiproc/faults.hpp"
#include "multiproc/message_registry.hpp"
#include "multiproc/shm_queue.hpp"

namespace multiproc {

/// Options of queue<T>::create().
struct queue_options {
  /// How many slots the queue has, counting taken but unacknowledged ones
  /// (rounded up to a power of two); see shm_queue_options::capacity.
  uint32_t capacity = 1024;
  /// The largest encoded message in bytes; a larger put fails with
  /// frame_too_large.
  uint32_t max_message_size = 1000;
  /// Small messages share a slot while consumers lag behind (several times
  /// the throughput); false: one message per slot, so that `capacity` is an
  /// exact bound like Python's maxsize. See shm_queue_options::batching.
  bool batching = true;
  /// Python's JoinableQueue: consumers call task_done(), join() waits.
  bool joinable = false;
};

/// A typed handle on a shared queue; the contract is at the top of this
/// header. Move-only.
template <class T>
class queue {
public:
  /// The wait of a call: nullopt waits forever, zero does not wait.
  using timeout_type = shm_queue::timeout_type;

  /// An empty handle (valid() false).
  queue() noexcept = default;

  /// Creates a queue of T in new shared memory. Errors: unknown_type (T is
  /// not registered), invalid_argument, system_error.
  static caf::expected<queue> create(const queue_options& opts = {}) {
    auto id = registered_id_of<T>();
    if (!id)
      return std::move(id.error());
    shm_queue_options raw;
    raw.capacity = opts.capacity;
    raw.max_message_size = opts.max_message_size;
    raw.batching = opts.batching;
    raw.joinable = opts.joinable;
    raw.tag = *id;
    auto q = shm_queue::create(raw);
    if (!q)
      return std::move(q.error());
    return queue{std::move(*q)};
  }

  /// Maps the queue behind `fd` (another handle's fd(), e.g. received in
  /// child_context::fds). Errors: type_mismatch (a queue of another type),
  /// and those of shm_queue::attach.
  static caf::expected<queue> attach(unique_fd fd) {
    auto id = registered_id_of<T>();
    if (!id)
      return std::move(id.error());
    auto q = shm_queue::attach(std::move(fd));
    if (!q)
      return std::move(q.error());
    if (q->tag() != *id)
      return make_error(errc::type_mismatch,
                        "descriptor " + std::to_string(q->fd())
                          + " holds a queue of another type than '"
                          + type_name_of<T>() + "'");
    return queue{std::move(*q)};
  }

  /// A new handle on the same queue, e.g. for another consumer thread.
  caf::expected<queue> clone() const {
    auto q = q_.clone();
    if (!q)
      return std::move(q.error());
    return queue{std::move(*q)};
  }

  /// The shared-memory descriptor, for process_options::fds.
  int fd() const noexcept { return q_.fd(); }

  /// Puts `value`, waiting for room up to `timeout` (forever by default).
  /// Errors: encode_failed (nothing is put), frame_too_large, full (timeout
  /// zero), timeout, closed.
  caf::error put(const T& value, timeout_type timeout = std::nullopt) {
    if (auto err = faults::check(faults::point::queue_put))
      return err;
    thread_local std::string buf;
    buf.clear();
    // The bytes of Cereal's binary archive either way; the flat archive
    // only skips building one (detail/flat_archive.hpp).
    if (!detail::flat_encode(value, buf)) {
      buf.clear();
      if (auto err = encode(value, buf))
        return err;
    }
    return q_.put(buf, timeout);
  }

  /// put() without waiting: fails with `full` at once.
  caf::error try_put(const T& value) {
    return put(value, std::chrono::milliseconds{0});
  }

  /// Takes the next value, waiting up to `timeout` (forever by default).
  /// Errors: empty (timeout zero), timeout, end_of_stream (closed and
  /// drained), decode_failed (the message is consumed).
  caf::expected<T> get(timeout_type timeout = std::nullopt) {
    auto msg = q_.get(timeout);
    if (!msg)
      return std::move(msg.error());
    last_deliveries_ = msg->deliveries;
    if (auto err = faults::check(faults::point::queue_get))
      return err;
    T value{};
    if (detail::flat_decode(msg->bytes, value))
      return value;
    return decode<T>(msg->bytes);
  }

  /// get() without waiting: fails with `empty` at once.
  caf::expected<T> try_get() {
    return get(std::chrono::milliseconds{0});
  }

  /// How often the value of the last get() was delivered: 1, or more when
  /// a consumer died holding it.
  uint32_t last_deliveries() const noexcept { return last_deliveries_; }

  /// Ends the stream; see shm_queue::close().
  void close() noexcept { q_.close(); }
  /// Acknowledges the values taken so far; see shm_queue::ack().
  void ack() noexcept { q_.ack(); }
  /// Joinable queues; see shm_queue::task_done().
  caf::error task_done() { return q_.task_done(); }
  /// Joinable queues; see shm_queue::join().
  caf::error join(timeout_type timeout = std::nullopt) {
    return q_.join(timeout);
  }

  /// Values waiting to be taken (approximate); see shm_queue::size().
  size_t size() const noexcept { return q_.size(); }
  /// True if size() is 0.
  bool empty() const noexcept { return q_.empty(); }
  /// True if a put would find no room now.
  bool full() const noexcept { return q_.full(); }
  /// True once close() was called by any handle.
  bool closed() const noexcept { return q_.closed(); }
  /// True unless empty (default-constructed or moved from).
  bool valid() const noexcept { return q_.valid(); }
  /// Values acknowledged by every handle; see shm_queue::consumed().
  uint64_t consumed() const noexcept { return q_.consumed(); }
  /// Values delivered again after a consumer died; see
  /// shm_queue::redelivered().
  uint64_t redelivered() const noexcept { return q_.redelivered(); }

  /// Repairs what dead processes left; see shm_queue::recover().
  size_t recover(std::optional<int> pid = std::nullopt) noexcept {
    return q_.recover(pid);
  }

  /// The untyped queue underneath.
  shm_queue& raw() noexcept { return q_; }
  /// The untyped queue underneath.
  const shm_queue& raw() const noexcept { return q_; }

private:
  explicit queue(shm_queue q) noexcept : q_(std::move(q)) {}

  shm_queue q_;
  uint32_t last_deliveries_ = 0;
};

} // namespace multiproc
