#pragma once

/// \file
/// Queues across hosts: a node publishes a queue<T> on a TCP address
/// (publish()), and processes on other hosts put and get through a
/// remote_queue<T>, with the cluster's secret, as Python's BaseManager
/// serves a Queue with an authkey:
///
///     // node A: the queue's host                // node B
///     auto q = multiproc::queue<job>::create();  multiproc::remote_queue_options o;
///     auto pub = multiproc::publish(*q, net);    o.host = "nodeA"; o.port = port;
///     auto port = (*pub)->port();                o.secret = secret;
///                                                auto rq = multiproc::remote_queue<job>::connect(o);
///                                                rq->put(job{...});  auto j = rq->get();
///
/// The guarantees are the queue's (docs/queue.md), with a remote handle in
/// the place of a process: on the queue's host, each remote handle is served
/// by a process of its own, so a lost connection is that process's death. A
/// message a remote consumer got and had not acknowledged is delivered
/// again (deliveries 2 and more); a put that returned success is in the
/// queue. The connection is authenticated (HMAC challenge-response) and
/// watched by heartbeats as a pool's remote workers are (network.hpp,
/// docs/distribution.md).
///
/// Thread safety: one thread at a time per remote handle; connect again for
/// another thread (each handle is a connection of its own).
///
/// Lifetimes: a remote handle owns its connection; its destructor
/// acknowledges what get() returned (plain queues), hands back what it still
/// holds and disconnects. A default-constructed or moved-from handle is
/// empty: its calls fail with invalid_argument. Destroying the
/// queue_publisher ends its remote handles' connections (connection_lost).
///
/// Errors are values: those of queue<T>, plus connection_lost, auth_failed
/// and protocol_error (a malformed answer; the handle is then closed).

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "multiproc/detail/flat_archive.hpp"
#include "multiproc/message_registry.hpp"
#include "multiproc/network.hpp"
#include "multiproc/queue.hpp"
#include "multiproc/shm_queue.hpp"

namespace multiproc {

/// Where and how a process reaches a published queue
/// (remote_queue<T>::connect). A call that waits longer than its own
/// timeout plus connection_timeout for its answer fails with
/// connection_lost (the handle is then closed).
struct remote_queue_options : remote_endpoint {};

/// A published queue: remote handles connect to port(). Destroying it
/// stops listening and ends every remote handle's connection (their calls
/// then fail with connection_lost; what their consumers held is delivered
/// again). The queue itself lives on in its other handles.
class queue_publisher {
public:
  /// Publishes the queue behind `q` (the publisher keeps a handle of its
  /// own). Errors: invalid_argument (no secret, an empty handle),
  /// system_error (cannot listen).
  static caf::expected<std::unique_ptr<queue_publisher>>
  start(const shm_queue& q, network_options opts);
  ~queue_publisher();
  queue_publisher(const queue_publisher&) = delete;
  queue_publisher& operator=(const queue_publisher&) = delete;

  /// The TCP port it listens on.
  uint16_t port() const noexcept;

  struct impl;

private:
  explicit queue_publisher(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

/// Publishes a typed queue; see queue_publisher::start.
template <class T>
caf::expected<std::unique_ptr<queue_publisher>>
publish(queue<T>& q, network_options opts) {
  return queue_publisher::start(q.raw(), std::move(opts));
}

/// The untyped remote handle underneath remote_queue<T>: shm_queue's calls,
/// each a round trip to the queue's host.
class remote_shm_queue {
public:
  /// The wait of a call: nullopt waits forever, zero does not wait.
  using timeout_type = shm_queue::timeout_type;

  /// A message taken by get(): its bytes and how often it was delivered.
  struct message {
    std::string bytes;       ///< a copy of the message's bytes
    uint32_t deliveries = 0; ///< 1, or more when a consumer died holding it
  };

  /// Connects and authenticates. Errors: connection_lost (cannot reach the
  /// publisher), auth_failed (the secret differs), unknown_entry (not a
  /// queue's port), invalid_argument (no secret, port 0).
  static caf::expected<remote_shm_queue> connect(const remote_queue_options& o);

  /// An empty handle (valid() false).
  remote_shm_queue() noexcept;
  /// Takes over `other`'s connection; `other` becomes empty.
  remote_shm_queue(remote_shm_queue&&) noexcept;
  /// Ends this handle's connection (as the destructor), then takes `other`'s.
  remote_shm_queue& operator=(remote_shm_queue&&) noexcept;
  /// Acknowledges what get() returned (plain queues), gives what it still
  /// holds back to the queue, and ends the connection.
  ~remote_shm_queue();

  /// As shm_queue's; errors also connection_lost (the connection ended or
  /// an answer did not come in time: the handle is then closed).
  caf::error put(std::string_view bytes, timeout_type timeout = std::nullopt);
  /// As shm_queue::get(); the bytes are a copy.
  caf::expected<message> get(timeout_type timeout = std::nullopt);
  /// As shm_queue::ack().
  caf::error ack();
  /// As shm_queue::task_done().
  caf::error task_done();
  /// As shm_queue::join().
  caf::error join(timeout_type timeout = std::nullopt);
  /// As shm_queue::close().
  caf::error close();
  /// As shm_queue::size(), asked of the queue's host.
  caf::expected<size_t> size();

  /// The queue's tag (read once, at connect, as the next three).
  uint64_t tag() const noexcept;
  /// The queue's slots.
  uint32_t capacity() const noexcept;
  /// The largest message in bytes.
  uint32_t max_message_size() const noexcept;
  /// True for a joinable queue.
  bool joinable() const noexcept;
  /// True unless empty (default-constructed or moved from).
  bool valid() const noexcept { return impl_ != nullptr; }

  struct impl;

private:
  std::unique_ptr<impl> impl_;
};

/// A handle on a queue<T> on another host: queue<T>'s calls, each a round
/// trip (docs/distribution.md, "Queues across hosts").
template <class T>
class remote_queue {
public:
  /// The wait of a call: nullopt waits forever, zero does not wait.
  using timeout_type = shm_queue::timeout_type;

  /// Connects, authenticates and checks that the queue holds T. Errors:
  /// those of remote_shm_queue::connect, unknown_type (T is not
  /// registered), type_mismatch (a queue of another type).
  static caf::expected<remote_queue> connect(const remote_queue_options& o) {
    auto id = registered_id_of<T>();
    if (!id)
      return std::move(id.error());
    auto q = remote_shm_queue::connect(o);
    if (!q)
      return std::move(q.error());
    if (q->tag() != *id)
      return make_error(errc::type_mismatch,
                        "the queue at " + o.host + ":" + std::to_string(o.port)
                          + " holds another type than '" + type_name_of<T>()
                          + "'");
    remote_queue result;
    result.q_ = std::move(*q);
    return result;
  }

  /// As queue<T>::put; errors also connection_lost.
  caf::error put(const T& value, timeout_type timeout = std::nullopt) {
    std::string buf;
    if (!detail::flat_encode(value, buf)) {
      buf.clear();
      if (auto err = encode(value, buf))
        return err;
    }
    return q_.put(buf, timeout);
  }

  /// As queue<T>::get; errors also connection_lost.
  caf::expected<T> get(timeout_type timeout = std::nullopt) {
    auto msg = q_.get(timeout);
    if (!msg)
      return std::move(msg.error());
    last_deliveries_ = msg->deliveries;
    T value{};
    if (detail::flat_decode(msg->bytes, value))
      return value;
    return decode<T>(msg->bytes);
  }

  /// put() without waiting: fails with `full` at once.
  caf::error try_put(const T& value) {
    return put(value, std::chrono::milliseconds{0});
  }
  /// get() without waiting: fails with `empty` at once.
  caf::expected<T> try_get() {
    return get(std::chrono::milliseconds{0});
  }
  /// How often the value of the last get() was delivered.
  uint32_t last_deliveries() const noexcept { return last_deliveries_; }

  /// Ends the stream; see shm_queue::close().
  caf::error close() { return q_.close(); }
  /// Acknowledges the values taken so far; see shm_queue::ack().
  caf::error ack() { return q_.ack(); }
  /// Joinable queues; see shm_queue::task_done().
  caf::error task_done() { return q_.task_done(); }
  /// Joinable queues; see shm_queue::join().
  caf::error join(timeout_type timeout = std::nullopt) {
    return q_.join(timeout);
  }
  /// Values waiting on the queue's host (approximate).
  caf::expected<size_t> size() { return q_.size(); }
  /// True unless empty (default-constructed or moved from).
  bool valid() const noexcept { return q_.valid(); }

  /// The untyped handle underneath.
  remote_shm_queue& raw() noexcept { return q_; }

private:
  remote_shm_queue q_;
  uint32_t last_deliveries_ = 0;
};

} // namespace multiproc
