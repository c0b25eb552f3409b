#pragma once

// Internals of network.cpp shared with pool.cpp: the node's own actor
// system with the middleman, the link that carries frames inside CAF
// messages (a frame_link, so a worker bridge runs on it unchanged), the
// remote end of a worker as a worker_peer, and the secret's arithmetic.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/mailbox_element.hpp>
#include <caf/node_id.hpp>

#include "multiproc/frame_channel.hpp"
#include "multiproc/process.hpp"
#include "remote.hpp"

namespace multiproc::detail {

/// 32 random bytes (getrandom).
std::string make_nonce();

/// HMAC-SHA256(secret, role NUL first second): one side's proof that it
/// holds the secret, bound to both nonces and to its role ("pool" or
/// "worker"), so that neither answer can be replayed as the other.
std::string answer(const std::string& secret, std::string_view role,
                   std::string_view first, std::string_view second);

/// Constant-time comparison of two answers.
bool same_answer(const std::string& x, const std::string& y);

/// The heartbeat settings of a node's middleman.
struct net_timing {
  std::chrono::milliseconds heartbeat_interval{250};
  std::chrono::milliseconds connection_timeout{2000};
};

/// An actor system of its own with CAF's middleman, tuned for round trips
/// (sharing scheduler, no BASP worker threads) and with heartbeats on. The
/// user's actor system stays as the user configured it: frames cross from
/// it to this one as bytes, never as actor handles.
class net_node {
public:
  explicit net_node(const net_timing& t);
  ~net_node();
  net_node(const net_node&) = delete;
  net_node& operator=(const net_node&) = delete;

  caf::actor_system& sys() noexcept {
    return *sys_;
  }

  /// The actor published at host:port (a BASP connection to its node).
  /// Retries, until `timeout` has passed, a connection that CAF dropped
  /// with sec::connection_timeout before the peer's handshake arrived: CAF
  /// 0.17.6 starts a connecting endpoint's last_seen at the clock's epoch,
  /// so a heartbeat tick inside that window always finds it timed out.
  caf::expected<caf::actor> connect(const std::string& host, uint16_t port,
                                    std::chrono::milliseconds timeout);

private:
  caf::actor_system_config cfg_;
  std::optional<caf::actor_system> sys_;
};

/// One end of a frame link between two nodes. Frames travel in batches as
/// (mp_frames, bytes) messages between the two ends' receiving actors; a
/// bye message ends the link cleanly, the peer actor's death (its node's
/// connection closed or timed out) ends it with errc::connection_lost.
///
/// Delivery: with `own_thread` a thread of the link calls the handler (a
/// worker's handlers may run for long); otherwise the thread that received
/// the message does (the multiplexer's: the pool's handlers are short).
class link_state : public std::enable_shared_from_this<link_state> {
public:
  /// Accepts messages only from actors on `expected` (the peer's node).
  static std::shared_ptr<link_state>
  make(caf::actor_system& sys, channel_options opts, bool own_thread,
       caf::node_id expected, std::string peer_name);
  ~link_state();

  /// This end's receiving actor, to give to the peer.
  const caf::actor& rx() const noexcept {
    return rx_;
  }
  /// Sets the peer's receiving actor; its death ends the link.
  void connect(caf::actor peer);
  const std::string& peer_name() const noexcept {
    return peer_name_;
  }
  const channel_options& options() const noexcept {
    return opts_;
  }

  // frame_link, for actor_link
  caf::error send(const std::string_view* parts, size_t num_parts,
                  send_mode mode);
  caf::error send_framed(std::string_view frames, send_mode mode);
  void flush();
  caf::expected<std::string_view>
  receive(std::optional<std::chrono::milliseconds> timeout);
  void start(frame_handler* handler);
  /// Flushes, says goodbye with `st` (once) and ends the link. Up to
  /// `linger`, waits for the peer's ack that everything sent has arrived
  /// (not when called on the multiplexer's thread or from a delivery).
  void stop(std::chrono::milliseconds linger, exit_status st);
  void fail(caf::error reason);
  bool on_io_thread() const noexcept;

  /// Asks the peer's process to raise `sig` (a worker's process).
  void send_signal(int sig);
  /// Ends the link from this side with `reason`.
  void drop(caf::error reason);
  /// The status the peer said goodbye with, if it did.
  std::optional<exit_status> peer_status();
  /// Why the link ended (or errc::closed).
  caf::error closed_error();
  /// Waits until the handler has seen the end (or the link never started).
  bool wait_closed(std::chrono::milliseconds timeout);

  /// Called on the receiving thread for (mp_signal, sig) from the peer.
  std::function<void(int)> on_signal;

  /// From the receiving actor.
  void on_message(caf::mailbox_element& m);
  void peer_gone(const caf::error& reason);

private:
  link_state(caf::actor_system& sys, channel_options opts, bool own_thread,
             caf::node_id expected, std::string peer_name);
  void close_locked(std::unique_lock<std::mutex>& lk, caf::error reason);
  void kick(std::unique_lock<std::mutex>& lk);
  void drain();
  void deliver(std::deque<std::string>& batch);
  void finish();
  void io_loop();

  caf::actor_system& sys_;
  channel_options opts_;
  bool own_thread_;
  caf::node_id expected_;
  std::string peer_name_;
  caf::actor rx_;
  caf::actor writer_; // flushes deferred sends from other threads

  std::mutex mu_; // guards what follows up to out_mu_
  std::condition_variable cv_;
  std::condition_variable done_cv_;
  caf::actor peer_;
  std::deque<std::string> inbox_;
  std::string rx_buf_; // receive(): the message being split into frames
  size_t rx_off_ = 0;
  bool started_ = false;
  bool closing_ = false; // no more input; the handler hears of it next
  bool closed_ = false;  // the handler has seen the end
  caf::error close_reason_;
  std::optional<exit_status> peer_status_;
  bool bye_acked_ = false; // the peer has our goodbye and all before it
  bool peer_gone_ = false; // its actor or its node is gone

  std::mutex out_mu_;
  std::string out_;        // frames not yet sent
  bool flush_due_ = false; // the writer will flush

  std::recursive_mutex deliver_mu_; // one delivering thread at a time
  frame_handler* handler_ = nullptr;
  caf::error fail_reason_; // fail() from inside a delivery
  bool finished_ = false;
  std::atomic<bool> bye_sent_{false};
  std::thread io_;
};

/// A link_state as the frame_link of a worker bridge or a served worker.
class actor_link : public frame_link {
public:
  explicit actor_link(std::shared_ptr<link_state> state);
  ~actor_link() override;

  const channel_options& options() const noexcept override;
  caf::error send(const std::string_view* parts, size_t num_parts,
                  send_mode mode = send_mode::immediate) override;
  using frame_link::send;
  caf::error send_framed(std::string_view frames,
                         send_mode mode = send_mode::immediate) override;
  void flush() override;
  caf::expected<std::string_view>
  receive(std::optional<std::chrono::milliseconds> timeout
          = std::nullopt) override;
  void start(frame_handler* handler, int death_fd = -1) override;
  void stop(std::chrono::milliseconds linger
            = std::chrono::milliseconds{0}) override;
  void fail(caf::error reason) override;
  bool on_io_thread() const noexcept override;

private:
  std::shared_ptr<link_state> state_;
};

/// A worker process on another node, reached through its link: signals
/// travel as messages; killing it also drops the link at once, so a frozen
/// or unreachable worker is dead to the pool without waiting for it.
class remote_peer : public worker_peer {
public:
  explicit remote_peer(std::shared_ptr<link_state> link);
  caf::error signal(int sig) override;
  caf::error kill() override;
  caf::expected<exit_status> join(std::chrono::milliseconds grace) override;

private:
  std::shared_ptr<link_state> link_;
};

} // namespace multiproc::detail

#include "multiproc/network.hpp"

namespace multiproc::detail {

/// A worker that proved it holds the secret, ready to be adopted.
struct joined_worker {
  std::shared_ptr<link_state> link;
  worker_info info;
  std::string entry;
};

/// The published actor through which remote workers join a pool. Before a
/// peer proves that it holds the secret it can only ask for a challenge;
/// anything else it sends is logged and dropped. Each authenticated worker
/// goes to `admit` on a thread of the gateway's (adoption waits for its
/// hello).
class gateway {
public:
  using admit_fn = std::function<void(joined_worker)>;

  /// `what` names the published thing in logs and errors ("pool squarer").
  /// `own_thread`: each joined link delivers on a thread of its own (its
  /// handler may block) rather than on the multiplexer's.
  static caf::expected<std::unique_ptr<gateway>>
  start(network_options opts, std::string entry, std::string what,
        channel_options channel, admit_fn admit, bool own_thread = false);
  /// Stops listening, drops unanswered challenges and waits for the
  /// adoptions under way; the node (and the links of the workers that
  /// joined) lives on until the gateway is destroyed.
  void stop_listening();
  ~gateway();

  uint16_t port() const noexcept {
    return port_;
  }

  /// How long a joined peer may take to say hello.
  std::chrono::milliseconds handshake_timeout() const noexcept {
    return opts_.handshake_timeout;
  }

  /// Writes a line to the node's log.
  void log(const std::string& line) const;

  struct state;

private:
  gateway() = default;
  network_options opts_;
  std::unique_ptr<net_node> node_;
  std::shared_ptr<state> state_;
  caf::actor actor_;
  uint16_t port_ = 0;
};

/// How a process joins a published gateway.
struct join_request {
  std::string peer; // "the pool at host:port", for errors and logs
  std::string secret;
  std::string entry;
  std::string name;
  std::chrono::milliseconds handshake_timeout{5000};
  /// The link's on_signal, set before the gateway can send one.
  std::function<void(int)> on_signal;
};

/// Proves to the gateway `gw` (a handle from remote_actor on `sys`) that
/// this process holds the secret, checks the gateway's proof, and joins:
/// the link (delivering on a thread of its own) is connected to the
/// gateway's side. Errors: auth_failed (either proof), unknown_entry, or
/// what the request failed with (a timeout, a lost connection).
caf::expected<std::shared_ptr<link_state>>
join_gateway(caf::actor_system& sys, const caf::actor& gw,
             const join_request& req);

} // namespace multiproc::detail
