#pragma once

/// \file
/// frame_channel: length-prefixed frames over a connected SOCK_STREAM socket
/// (socketpair(AF_UNIX)). A frame is a 4-byte little-endian body length
/// followed by the body; docs/wire_format.md specifies it.
///
/// Thread safety: send() may be called from any number of threads at once.
/// Receiving is single-consumer: either one thread calls receive()/poll(), or
/// start() hands the channel to an I/O thread that calls a frame_handler.
///
/// Writing never blocks the I/O thread: what the socket does not take at once
/// is queued and flushed when the socket becomes writable. Other threads block
/// in send() only while the queued output exceeds `send_high_watermark`
/// (backpressure) or, without an I/O thread, until their frame is written.
/// Frames queued concurrently are written together (batching).
///
/// Lifetimes: the channel owns its socket. Destroying it (or stop()) ends
/// and joins the I/O thread and shuts the socket down; output still queued
/// is dropped unless stop() was given a `linger`. A frame_handler passed to
/// start() must outlive the channel or the call to stop().
///
/// Errors are values (caf::error, caf::expected): peer_closed,
/// truncated_frame, frame_too_large, timeout and system_error.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include <endian.h>
#include <sys/uio.h>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "multiproc/fd.hpp"

namespace multiproc {

/// Size of the frame header (the body length, u32 little-endian).
constexpr size_t frame_header_size = 4;

/// Writes the header of a frame whose body has `body_size` bytes into `out`
/// (frame_header_size bytes).
inline void write_frame_header(size_t body_size, char* out) noexcept {
  uint32_t len = htole32(static_cast<uint32_t>(body_size));
  std::memcpy(out, &len, sizeof(len));
}

/// Reads the body length from a frame header (frame_header_size bytes).
inline uint32_t read_frame_header(const char* in) noexcept {
  uint32_t len;
  std::memcpy(&len, in, sizeof(len));
  return le32toh(len);
}

/// The frame_too_large error for a frame of `size` bytes above `limit`:
/// "<who> a frame of <size> bytes; the limit is <limit> bytes".
caf::error frame_too_large_error(size_t size, size_t limit, const char* who);

/// Takes the next complete frame off the front of `bytes`: its body goes to
/// `body` and the result is the bytes it took, header included; 0 while the
/// frame is incomplete, or when its header announces more than
/// `max_frame_size` (then `err` is frame_too_large).
size_t split_frame(std::string_view bytes, size_t max_frame_size,
                   std::string_view& body, caf::error& err);

/// Default limit on a frame body: 64 MiB.
constexpr size_t default_max_frame_size = size_t{64} << 20;

/// Options of a frame_channel; one comment per field.
struct channel_options {
  /// Largest accepted frame body, in bytes, for sending and receiving.
  size_t max_frame_size = default_max_frame_size;
  /// Queued output above which senders (other than the I/O thread) wait.
  size_t send_high_watermark = size_t{64} << 20;
  /// SO_SNDBUF/SO_RCVBUF to request for the socket (0: the kernel's default).
  size_t socket_buffer_size = size_t{4} << 20;
  /// After reading, the I/O thread keeps polling the socket (without
  /// sleeping, yielding the CPU between polls) for this long before it
  /// blocks, while the peer is in a request/response exchange: its frames
  /// come one or two at a time, within a few such periods of each other
  /// (streams of batched frames need no polling). The next frame is then
  /// read without a wake-up, which costs more than the kernel's whole round
  /// trip on a VM. Costs at most this much CPU per burst; 0 turns it off.
  std::chrono::microseconds busy_poll{0};
};

/// How send() treats a frame.
enum class send_mode {
  /// Write now from the calling thread (lowest latency).
  immediate,
  /// Queue; the I/O thread writes it soon, together with other queued frames
  /// (highest throughput). Falls back to `immediate` without an I/O thread.
  deferred,
};

/// Receives the frames read by a channel's I/O thread.
class frame_handler {
public:
  virtual ~frame_handler();
  /// Called on the I/O thread for each complete frame; `body` is valid only
  /// during the call.
  virtual void on_frame(std::string_view body) = 0;
  /// Called on the I/O thread after each batch of frames read at once.
  virtual void on_batch_end();
  /// Called once on the I/O thread when the channel ends: errc::peer_closed
  /// on a clean EOF, or the error that broke it (truncated_frame,
  /// frame_too_large, system_error, or what on_frame() reported via fail()).
  virtual void on_closed(const caf::error& reason) = 0;
};

/// What the worker machinery needs of a channel of frames, whatever carries
/// them: frame_channel (a socket) or shm_channel (shared-memory queues,
/// shm_channel.hpp). Each member is documented at frame_channel.
class frame_link {
public:
  virtual ~frame_link();

  /// The channel's options.
  virtual const channel_options& options() const noexcept = 0;
  /// Sends one frame made of `parts`; see frame_channel::send().
  virtual caf::error send(const std::string_view* parts, size_t num_parts,
                          send_mode mode = send_mode::immediate) = 0;
  /// Sends one frame whose body is `body`.
  caf::error send(std::string_view body,
                  send_mode mode = send_mode::immediate) {
    return send(&body, 1, mode);
  }
  /// As send(), but waits for room only until `deadline`; the default
  /// (shm_channel) waits as long as send() does.
  virtual caf::error
  send_until(const std::string_view* parts, size_t num_parts, send_mode mode,
             std::chrono::steady_clock::time_point deadline) {
    (void) deadline;
    return send(parts, num_parts, mode);
  }
  /// send_until() of one frame whose body is `body`.
  caf::error send_until(std::string_view body, send_mode mode,
                        std::chrono::steady_clock::time_point deadline) {
    return send_until(&body, 1, mode, deadline);
  }
  /// Sends frames already laid out as on the wire; see
  /// frame_channel::send_framed().
  virtual caf::error send_framed(std::string_view frames,
                                 send_mode mode = send_mode::immediate) = 0;
  /// Writes queued output without blocking; see frame_channel::flush().
  virtual void flush() = 0;
  /// Waits for the next frame; see frame_channel::receive().
  virtual caf::expected<std::string_view>
  receive(std::optional<std::chrono::milliseconds> timeout = std::nullopt) = 0;
  /// Starts the I/O thread; see frame_channel::start().
  virtual void start(frame_handler* handler, int death_fd = -1) = 0;
  /// Ends the I/O thread; see frame_channel::stop().
  virtual void
  stop(std::chrono::milliseconds linger = std::chrono::milliseconds{0}) = 0;
  /// Ends the channel with `reason` from on_frame(); see frame_channel::fail().
  virtual void fail(caf::error reason) = 0;
  /// True on the channel's own I/O thread.
  virtual bool on_io_thread() const noexcept = 0;
};

/// Frames over a connected SOCK_STREAM socket; the contract is at the top of
/// this header. Neither copyable nor movable.
class frame_channel : public frame_link {
public:
  /// The clock of send_until() deadlines.
  using time_point = std::chrono::steady_clock::time_point;

  /// Takes ownership of `socket` (a connected SOCK_STREAM socket) and makes it
  /// non-blocking; requests `opts.socket_buffer_size` buffers (best effort).
  explicit frame_channel(unique_fd socket, channel_options opts = {});
  /// Calls stop() (no linger) and closes the socket.
  ~frame_channel() override;
  frame_channel(const frame_channel&) = delete;
  frame_channel& operator=(const frame_channel&) = delete;

  /// The socket descriptor (owned by the channel).
  int fd() const noexcept { return fd_.get(); }

  /// The options given to the constructor.
  const channel_options& options() const noexcept override { return opts_; }

  // -- sending ----------------------------------------------------------------

  /// Sends one frame whose body is the concatenation of `parts`. Fails with
  /// frame_too_large (nothing sent) if the body exceeds the limit, with
  /// peer_closed / system_error once the channel is broken.
  caf::error send(const std::string_view* parts, size_t num_parts,
                  send_mode mode = send_mode::immediate) override;
  using frame_link::send;

  /// As send(), but a sender that has to wait (a full socket, queued output
  /// above send_high_watermark: the peer does not read) waits only until
  /// `deadline`, then fails with errc::timeout ("the peer does not read:
  /// <n> bytes are queued on the channel"). The frame is queued whole by
  /// then and may still be sent later.
  caf::error send_until(const std::string_view* parts, size_t num_parts,
                        send_mode mode, time_point deadline) override;
  using frame_link::send_until;

  /// Sends frames already laid out as on the wire (header, body, header,
  /// body, ...), e.g. many small frames built in one buffer: one lock and
  /// one write for all. The caller checks each body against the limit.
  caf::error send_framed(std::string_view frames,
                         send_mode mode = send_mode::immediate) override;

  /// Bytes queued and not yet written.
  size_t pending_output() const;

  /// Writes queued output now, without blocking (what the socket does not
  /// take stays queued). Typically called by the I/O thread after a batch.
  void flush() override;

  // -- receiving without an I/O thread ---------------------------------------

  /// Waits for the next frame. The view stays valid until the next receive()
  /// or poll(). Errors: errc::timeout when `timeout` passes (nothing is lost),
  /// peer_closed on EOF at a frame boundary, truncated_frame on EOF inside a
  /// frame, frame_too_large, system_error. A broken channel keeps failing with
  /// the same error.
  caf::expected<std::string_view>
  receive(std::optional<std::chrono::milliseconds> timeout
          = std::nullopt) override;

  /// True when receive() would return at once (a frame, EOF or an error).
  caf::expected<bool> poll(std::chrono::milliseconds timeout);

  // -- I/O thread -------------------------------------------------------------

  /// Starts the I/O thread, which reads frames into `handler` until the
  /// channel ends. If `death_fd` >= 0 (e.g. a pidfd), its readability means
  /// the peer is gone even if the socket stays open: the thread drains what
  /// is readable and then ends with peer_closed. `handler` must outlive the
  /// channel or the call to stop().
  void start(frame_handler* handler, int death_fd = -1) override;

  /// Ends the I/O thread (if running) and waits for it, unless called from it.
  /// Shuts the socket down; pending output is flushed first for at most
  /// `linger`.
  void stop(std::chrono::milliseconds linger
            = std::chrono::milliseconds{0}) override;

  /// Called from on_frame() to end the channel with `reason` (e.g. a frame
  /// that fails to decode); on_closed() follows.
  void fail(caf::error reason) override;

  /// True on the channel's own I/O thread.
  bool on_io_thread() const noexcept override;

private:
  // Reads what the socket has (non-blocking). Returns false on EOF/error and
  // sets rd_error_.
  bool read_some();
  // Extracts the next complete frame from the receive buffer, if any.
  // Returns false on a bad header (sets rd_error_).
  bool next_frame(std::string_view& out);
  // Sends `hdr` (may be empty) followed by `parts` (`total` bytes of them).
  caf::error send_bytes(std::string_view hdr, const std::string_view* parts,
                        size_t num_parts, size_t total, send_mode mode,
                        time_point deadline);
  // The error of a send that waited until its deadline; lock held.
  caf::error send_timeout() const;
  // Writes queued output, waiting for the socket at most until `deadline`
  // if may_block; lock held on entry and exit.
  void flush_locked(std::unique_lock<std::mutex>& lk, bool may_block,
                    time_point deadline = time_point::max());
  // Writes from an iovec array until done, EAGAIN or error.
  ssize_t write_some(::iovec* iov, int iovcnt);
  // Writes until done, EAGAIN (returns 0 with iovcnt > 0 unless may_block;
  // if may_block, when `deadline` passes) or an error (returns errno);
  // advances iov and iovcnt.
  int write_iov(::iovec*& iov, int& iovcnt, bool may_block,
                time_point deadline);
  static caf::error write_error(int err);
  void break_writes(caf::error err);
  size_t pending_bytes_locked() const noexcept {
    return pending_.size() + (out_.size() - out_off_);
  }
  bool has_pending_locked() const noexcept {
    return pending_bytes_locked() != 0;
  }
  void wake();
  void run(frame_handler* handler, int death_fd);

  unique_fd fd_;
  channel_options opts_;

  // -- receive state (single consumer) --
  std::string rbuf_;
  size_t rpos_ = 0;
  size_t rend_ = 0;
  bool last_frame_large_ = false;
  caf::error rd_error_;

  // -- send state --
  mutable std::mutex wmu_;
  std::condition_variable wcv_;
  std::string pending_;     // queued frames, after out_
  std::string out_;         // being written by the flusher
  size_t out_off_ = 0;      // bytes of out_ already written
  bool flushing_ = false;
  bool wake_pending_ = false;
  bool watching_ = false;          // the I/O thread ticks while frames come
  uint64_t deferred_appends_ = 0;  // deferred frames queued so far
  caf::error wr_error_;

  // -- I/O thread --
  unique_fd wake_fd_;
  std::thread io_thread_;
  std::atomic<std::thread::id> io_thread_id_{};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> io_running_{false};
};

} // namespace multiproc
