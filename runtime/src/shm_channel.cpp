#include "multiproc/shm_channel.hpp"

#include <algorithm>
#include <cstring>

#include <poll.h>

#include "multiproc/error.hpp"

namespace multiproc {

namespace {

using std::chrono::milliseconds;

/// How long the I/O thread waits for input before it looks at the death
/// descriptor and the stop flag; with a backlog, before it writes again.
constexpr milliseconds idle_wait{10};
constexpr milliseconds backlog_wait{1};

/// The stream buffer is compacted once this much of it has been read.
constexpr size_t compact_above = 64 * 1024;

/// Messages the I/O thread takes before it ends a batch (on_batch_end).
constexpr size_t batch_messages = 64;

} // namespace

caf::expected<std::pair<shm_queue, shm_queue>> shm_channel::make_queues() {
  shm_queue_options opts;
  opts.capacity = queue_capacity;
  opts.max_message_size = queue_message_size;
  auto a = shm_queue::create(opts);
  if (!a)
    return std::move(a.error());
  auto b = shm_queue::create(opts);
  if (!b)
    return std::move(b.error());
  return std::make_pair(std::move(*a), std::move(*b));
}

shm_channel::shm_channel(shm_queue in, shm_queue out, channel_options opts)
  : in_(std::move(in)), out_(std::move(out)), opts_(opts) {
  // Like a socket channel's busy polling: how long a reader spins for the
  // next frame before it sleeps (0: at once, leaving the CPU to others).
  in_.set_max_spin(opts_.busy_poll);
}

shm_channel::~shm_channel() {
  stop();
}

// -- sending --------------------------------------------------------------------

caf::error shm_channel::send(const std::string_view* parts, size_t num_parts,
                             send_mode) {
  size_t total = 0;
  for (size_t i = 0; i < num_parts; ++i)
    total += parts[i].size();
  if (total > opts_.max_frame_size)
    return frame_too_large_error(total, opts_.max_frame_size,
                                 "refusing to send");
  thread_local std::string buf;
  buf.resize(frame_header_size);
  write_frame_header(total, buf.data());
  for (size_t i = 0; i < num_parts; ++i)
    buf.append(parts[i]);
  return write_stream(buf);
}

caf::error shm_channel::send_framed(std::string_view frames, send_mode) {
  return write_stream(frames);
}

caf::error shm_channel::put_some(std::string_view& bytes) {
  auto room = out_.max_message_size();
  while (!bytes.empty()) {
    auto piece = bytes.substr(0, room);
    auto err = out_.put(piece, milliseconds{0});
    if (err == errc::full)
      return caf::none;
    if (err)
      return err == errc::closed
               ? make_error(errc::peer_closed, "the peer closed the channel")
               : err;
    bytes.remove_prefix(piece.size());
  }
  return caf::none;
}

caf::error shm_channel::write_stream(std::string_view bytes) {
  std::unique_lock<std::mutex> lk{wmu_};
  if (!on_io_thread())
    wcv_.wait(lk, [&] {
      return wr_error_ || backlog_bytes_ < opts_.send_high_watermark;
    });
  if (wr_error_)
    return wr_error_;
  if (backlog_.empty()) {
    if (auto err = put_some(bytes)) {
      wr_error_ = err;
      return err;
    }
    if (bytes.empty())
      return caf::none;
  }
  if (io_running_.load()) {
    // Keep the order: everything after the backlog goes behind it.
    backlog_.emplace_back(bytes);
    backlog_bytes_ += bytes.size();
    return caf::none;
  }
  // No I/O thread to write it later (the handshake): wait for room.
  while (!bytes.empty()) {
    auto piece = bytes.substr(0, out_.max_message_size());
    auto err = out_.put(piece, idle_wait);
    if (err == errc::timeout) {
      if (stopping_.load())
        return wr_error_ = make_error(errc::closed, "the channel was closed");
      continue;
    }
    if (err)
      return wr_error_ = err == errc::closed
                           ? make_error(errc::peer_closed,
                                        "the peer closed the channel")
                           : err;
    bytes.remove_prefix(piece.size());
  }
  return caf::none;
}

bool shm_channel::flush_backlog() {
  std::lock_guard<std::mutex> guard{wmu_};
  while (!backlog_.empty() && !wr_error_) {
    auto& front = backlog_.front();
    std::string_view rest{front};
    auto before = rest.size();
    if (auto err = put_some(rest)) {
      wr_error_ = err;
      break;
    }
    backlog_bytes_ -= before - rest.size();
    if (!rest.empty()) {
      front.erase(0, before - rest.size());
      break;
    }
    backlog_.pop_front();
  }
  if (wr_error_) {
    backlog_.clear();
    backlog_bytes_ = 0;
  }
  wcv_.notify_all();
  return !backlog_.empty();
}

// -- receiving ------------------------------------------------------------------

shm_channel::pulled shm_channel::pull(milliseconds timeout,
                                      std::string_view& bytes) {
  if (ended_)
    return pulled::ended;
  auto msg = in_.get(timeout);
  if (!msg) {
    if (msg.error() == errc::timeout || msg.error() == errc::empty)
      return pulled::nothing;
    ended_ = true;
    if (stopping_.load())
      end_ = make_error(errc::closed, "the channel was closed");
    else if (msg.error() != errc::end_of_stream)
      end_ = std::move(msg.error());
    return pulled::ended;
  }
  bytes = msg->bytes;
  return pulled::message;
}

void shm_channel::buffer(std::string_view bytes) {
  if (rpos_ == rbuf_.size()) {
    rbuf_.clear();
    rpos_ = 0;
  } else if (rpos_ >= compact_above) {
    rbuf_.erase(0, rpos_);
    rpos_ = 0;
  }
  rbuf_.append(bytes);
}

void shm_channel::consume(std::string_view bytes, frame_handler* handler) {
  if (rpos_ == rbuf_.size()) {
    // Nothing buffered: hand over the message's whole frames where they
    // are (valid until the next get) and keep only a partial one.
    std::string_view frame;
    while (!rd_error_) {
      auto used = split_frame(bytes, opts_.max_frame_size, frame, rd_error_);
      if (used == 0)
        break;
      handler->on_frame(frame);
      bytes.remove_prefix(used);
    }
    if (!rd_error_ && !bytes.empty())
      buffer(bytes);
    return;
  }
  buffer(bytes);
  std::string_view frame;
  while (!rd_error_ && next_frame(frame))
    handler->on_frame(frame);
}

caf::error shm_channel::end_error() {
  if (end_)
    return end_;
  if (rpos_ < rbuf_.size())
    return make_error(errc::truncated_frame,
                      "the channel closed inside a frame ("
                        + std::to_string(rbuf_.size() - rpos_)
                        + " bytes of it came)");
  return make_error(errc::peer_closed, "the peer closed the channel");
}

bool shm_channel::next_frame(std::string_view& out) {
  auto used = split_frame({rbuf_.data() + rpos_, rbuf_.size() - rpos_},
                          opts_.max_frame_size, out, rd_error_);
  rpos_ += used;
  return used > 0;
}

caf::expected<std::string_view>
shm_channel::receive(std::optional<milliseconds> timeout) {
  using clock = std::chrono::steady_clock;
  auto deadline = timeout ? clock::now() + *timeout : clock::time_point::max();
  for (;;) {
    std::string_view frame;
    if (next_frame(frame))
      return frame;
    if (rd_error_)
      return rd_error_;
    auto left = timeout ? std::chrono::duration_cast<milliseconds>(
                            deadline - clock::now())
                        : idle_wait;
    if (timeout && left.count() <= 0)
      return make_error(errc::timeout, "no message within "
                                         + std::to_string(timeout->count())
                                         + " ms");
    std::string_view bytes;
    auto got = pull(std::min(left, idle_wait), bytes);
    if (got == pulled::message)
      buffer(bytes);
    if (got == pulled::ended) {
      if (next_frame(frame))
        return frame;
      if (!rd_error_)
        rd_error_ = end_error();
      return rd_error_;
    }
  }
}

// -- the I/O thread ---------------------------------------------------------------

void shm_channel::fail(caf::error reason) {
  if (!rd_error_)
    rd_error_ = std::move(reason);
}

bool shm_channel::on_io_thread() const noexcept {
  return io_thread_id_.load(std::memory_order_relaxed)
         == std::this_thread::get_id();
}

void shm_channel::start(frame_handler* handler, int death_fd) {
  io_running_ = true;
  io_thread_ = std::thread{[this, handler, death_fd] { run(handler, death_fd); }};
}

void shm_channel::run(frame_handler* handler, int death_fd) {
  io_thread_id_ = std::this_thread::get_id();
  auto process_buffered = [&] {
    std::string_view frame;
    while (!rd_error_ && next_frame(frame))
      handler->on_frame(frame);
    handler->on_batch_end();
  };
  // Takes messages while they come without waiting, at most a batch.
  auto take_batch = [&](std::string_view bytes) {
    size_t n = 0;
    do
      consume(bytes, handler);
    while (!rd_error_ && ++n < batch_messages
           && pull(milliseconds{0}, bytes) == pulled::message);
    handler->on_batch_end();
  };
  process_buffered(); // what arrived before start()
  while (!rd_error_) {
    bool backlog = flush_backlog();
    std::string_view bytes;
    auto got = pull(backlog ? backlog_wait : idle_wait, bytes);
    if (got == pulled::message) {
      take_batch(bytes);
      continue;
    }
    if (got == pulled::ended) {
      process_buffered();
      if (!rd_error_)
        rd_error_ = end_error();
      break;
    }
    if (stopping_.load()) {
      rd_error_ = make_error(errc::closed, "the channel was closed");
      break;
    }
    pollfd p{death_fd, POLLIN, 0};
    if (death_fd >= 0 && ::poll(&p, 1, 0) > 0) {
      // The peer is gone: take what it wrote before dying, then end.
      while (!rd_error_ && pull(milliseconds{0}, bytes) == pulled::message)
        take_batch(bytes);
      process_buffered();
      if (!rd_error_)
        rd_error_ = make_error(errc::peer_closed, "the peer process exited");
    }
  }
  {
    std::lock_guard<std::mutex> guard{wmu_};
    if (!wr_error_)
      wr_error_ = rd_error_;
    backlog_.clear();
    backlog_bytes_ = 0;
    wcv_.notify_all();
  }
  io_running_ = false;
  handler->on_closed(rd_error_);
}

void shm_channel::stop(milliseconds linger) {
  if (linger.count() > 0) {
    auto deadline = std::chrono::steady_clock::now() + linger;
    std::unique_lock<std::mutex> lk{wmu_};
    while (!wr_error_ && !backlog_.empty()
           && std::chrono::steady_clock::now() < deadline)
      wcv_.wait_until(lk, std::min(deadline, std::chrono::steady_clock::now()
                                               + milliseconds{5}));
  }
  stopping_ = true;
  {
    std::lock_guard<std::mutex> guard{wmu_};
    if (!wr_error_)
      wr_error_ = make_error(errc::closed, "the channel was closed");
    wcv_.notify_all();
  }
  // Both ends: the peer's reads end after what was sent, its writes fail,
  // and our I/O thread's wait ends at once.
  out_.close();
  in_.close();
  if (io_thread_.joinable()) {
    if (on_io_thread())
      io_thread_.detach();
    else
      io_thread_.join();
  }
}

} // namespace multiproc
