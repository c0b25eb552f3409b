#pragma once

/// \file
/// shm_channel: the frames of a frame_channel carried by two shared-memory
/// queues (shm_queue.hpp) instead of a socket, one queue per direction. It
/// serves worker actors that choose worker_transport::shared_memory: a
/// request and its reply then cross the process boundary without a system
/// call while both ends are busy (the queue's waits spin briefly before they
/// sleep on a futex).
///
/// The bytes are those of the socket channel (docs/wire_format.md): each
/// queue message holds whole frames, header and body, or a piece of a frame
/// larger than one message; a reader joins them back into the stream. A
/// queue has one producer process, and the sending threads of that process
/// take turns (a local mutex: no lock is shared with the other process).
///
/// Thread safety: as frame_channel. send() may be called from any thread;
/// receiving is single-consumer (receive() or the I/O thread). Writing never
/// blocks the I/O thread: what the queue does not take at once waits in a
/// local backlog that the I/O thread writes as room appears. Other senders
/// wait while the backlog exceeds send_high_watermark.
///
/// Ends: stop() closes both queues (the peer's reads end with peer_closed
/// after what was sent); the peer's stop() or the death of its process
/// (death_fd) ends this end's I/O thread with peer_closed.
///
/// Lifetimes: an end owns its two queue handles; its destructor calls stop()
/// (no linger: backlog not yet in the queue is dropped). A frame_handler
/// passed to start() must outlive the end or the call to stop().
///
/// Errors are values: peer_closed, closed (after this end's stop()),
/// truncated_frame, frame_too_large, timeout, and those of the queues.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "multiproc/frame_channel.hpp"
#include "multiproc/shm_queue.hpp"

namespace multiproc {

/// One end of a shared-memory channel; the contract is at the top of this
/// header. Neither copyable nor movable.
class shm_channel final : public frame_link {
public:
  /// Slots of each queue.
  static constexpr uint32_t queue_capacity = 64;
  /// Bytes of one queue message: larger frames travel in pieces. Each queue
  /// takes capacity × (this + 36, rounded up) bytes: about 1 MiB.
  static constexpr uint32_t queue_message_size = 16 * 1024;

  /// Creates the two queues of a channel: `first` for one direction,
  /// `second` for the other. Errors: those of shm_queue::create().
  static caf::expected<std::pair<shm_queue, shm_queue>> make_queues();

  /// An end that reads `in` and writes `out` (the peer's end has them the
  /// other way round).
  shm_channel(shm_queue in, shm_queue out, channel_options opts = {});
  /// Calls stop() (no linger).
  ~shm_channel() override;
  shm_channel(const shm_channel&) = delete;
  shm_channel& operator=(const shm_channel&) = delete;

  /// The options given to the constructor.
  const channel_options& options() const noexcept override {
    return opts_;
  }

  /// As frame_channel::send(); the frame may travel in several queue
  /// messages. Errors: frame_too_large, closed, peer_closed.
  caf::error send(const std::string_view* parts, size_t num_parts,
                  send_mode mode = send_mode::immediate) override;
  using frame_link::send;
  /// As frame_channel::send_framed().
  caf::error send_framed(std::string_view frames,
                         send_mode mode = send_mode::immediate) override;
  /// Writes backlog while the queue has room, without waiting.
  void flush() override {
    flush_backlog();
  }
  /// As frame_channel::receive(): the view stays valid until the next
  /// receive(). Errors: timeout, peer_closed, truncated_frame,
  /// frame_too_large, closed.
  caf::expected<std::string_view>
  receive(std::optional<std::chrono::milliseconds> timeout
          = std::nullopt) override;
  /// As frame_channel::start(): `death_fd` readable ends the I/O thread with
  /// peer_closed once the input is drained.
  void start(frame_handler* handler, int death_fd = -1) override;
  /// Waits up to `linger` for the backlog to reach the queue, closes both
  /// queues and ends the I/O thread (joined unless called from it).
  void stop(std::chrono::milliseconds linger
            = std::chrono::milliseconds{0}) override;
  /// As frame_channel::fail().
  void fail(caf::error reason) override;
  /// True on this end's own I/O thread.
  bool on_io_thread() const noexcept override;

private:
  enum class pulled { message, nothing, ended };

  /// Writes stream bytes: into the queue while it has room, the rest into
  /// the backlog (or, without an I/O thread, waiting for room).
  caf::error write_stream(std::string_view bytes);
  /// Puts what it can of `bytes` without waiting; advances `bytes`.
  caf::error put_some(std::string_view& bytes);
  /// The I/O thread: writes backlog while the queue has room; true if some
  /// is left.
  bool flush_backlog();
  /// Takes the next message, waiting up to `timeout`; `bytes` stay valid
  /// until the next pull.
  pulled pull(std::chrono::milliseconds timeout, std::string_view& bytes);
  /// Appends stream bytes to the buffer.
  void buffer(std::string_view bytes);
  /// Hands the frames completed by `bytes` to `handler`.
  void consume(std::string_view bytes, frame_handler* handler);
  bool next_frame(std::string_view& out);
  /// Why the stream ended, once the frames before the end were taken.
  caf::error end_error();
  void run(frame_handler* handler, int death_fd);

  shm_queue in_;
  shm_queue out_;
  channel_options opts_;

  // Writing (guarded by wmu_; out_ is used only under it).
  std::mutex wmu_;
  std::condition_variable wcv_;
  std::deque<std::string> backlog_;
  size_t backlog_bytes_ = 0;
  caf::error wr_error_;

  // Reading (the I/O thread or receive()'s caller).
  std::string rbuf_;
  size_t rpos_ = 0;
  caf::error rd_error_;
  /// The input queue ended (closed and drained, or an error in end_).
  bool ended_ = false;
  caf::error end_;

  std::thread io_thread_;
  std::atomic<std::thread::id> io_thread_id_{};
  std::atomic<bool> io_running_{false};
  std::atomic<bool> stopping_{false};
};

} // namespace multiproc
