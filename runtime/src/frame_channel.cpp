#include "multiproc/frame_channel.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <endian.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sched.h>
#include <unistd.h>

#include "multiproc/error.hpp"

namespace multiproc {

namespace {

constexpr size_t initial_rbuf_size = 64 * 1024;
constexpr size_t shrink_rbuf_above = 8u << 20;
/// How far the receive buffer may grow past the bytes of a frame received.
constexpr size_t max_read_ahead = size_t{1} << 20;
constexpr int max_iov = 16;
constexpr size_t large_frame = 64 * 1024;
constexpr size_t deferred_batch_bytes = 32 * 1024;
constexpr auto deferred_linger = std::chrono::microseconds{20};
constexpr long deferred_tick_ns = 200 * 1000;
constexpr size_t max_kept_out_capacity = size_t{64} << 20;

int poll_one(int fd, short events, int timeout_ms) {
  pollfd p{fd, events, 0};
  for (;;) {
    int rc = ::poll(&p, 1, timeout_ms);
    if (rc < 0 && errno == EINTR)
      continue;
    return rc;
  }
}

/// The busy poll before a blocking wait (channel_options::busy_poll): polls
/// without sleeping until something is ready or `spin` has passed since
/// `last_input`, yielding the CPU between polls. Returns ppoll's result (0:
/// nothing became ready).
int spin_poll(pollfd* fds, int nfds,
              std::chrono::steady_clock::time_point last_input,
              std::chrono::microseconds spin) {
  timespec zero{0, 0};
  auto until = last_input + spin;
  for (;;) {
    int rc = ::ppoll(fds, nfds, &zero, nullptr);
    if (rc != 0 || std::chrono::steady_clock::now() >= until)
      return rc;
    ::sched_yield();
  }
}

} // namespace

caf::error frame_too_large_error(size_t size, size_t limit, const char* who) {
  return make_error(errc::frame_too_large,
                    std::string{who} + " a frame of " + std::to_string(size)
                      + " bytes; the limit is " + std::to_string(limit)
                      + " bytes");
}

size_t split_frame(std::string_view bytes, size_t max_frame_size,
                   std::string_view& body, caf::error& err) {
  if (bytes.size() < frame_header_size)
    return 0;
  auto len = read_frame_header(bytes.data());
  if (len > max_frame_size) {
    err = frame_too_large_error(len, max_frame_size, "the peer announced");
    return 0;
  }
  if (bytes.size() < frame_header_size + len)
    return 0;
  body = bytes.substr(frame_header_size, len);
  return frame_header_size + len;
}

frame_handler::~frame_handler() = default;
frame_link::~frame_link() = default;

void frame_handler::on_batch_end() {
  // nop
}

frame_channel::frame_channel(unique_fd socket, channel_options opts)
  : fd_(std::move(socket)), opts_(opts) {
  set_nonblocking(fd_.get(), true);
  if (opts_.socket_buffer_size > 0) {
    // A larger socket buffer means fewer wake-ups per large message; the
    // kernel caps it at net.core.wmem_max / rmem_max.
    int size = static_cast<int>(opts_.socket_buffer_size);
    ::setsockopt(fd_.get(), SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
  }
  rbuf_.resize(initial_rbuf_size);
}

frame_channel::~frame_channel() {
  stop();
}

// -- sending ------------------------------------------------------------------

ssize_t frame_channel::write_some(iovec* iov, int iovcnt) {
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = static_cast<size_t>(iovcnt);
  for (;;) {
    auto n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR)
      continue;
    return n;
  }
}

namespace {

// Advances an iovec array by `n` written bytes; returns the new start.
iovec* advance(iovec* iov, int& iovcnt, size_t n) {
  while (iovcnt > 0 && n >= iov->iov_len) {
    n -= iov->iov_len;
    ++iov;
    --iovcnt;
  }
  if (iovcnt > 0) {
    iov->iov_base = static_cast<char*>(iov->iov_base) + n;
    iov->iov_len -= n;
  }
  return iov;
}

} // namespace

int frame_channel::write_iov(iovec*& iov, int& iovcnt, bool may_block,
                             time_point deadline) {
  while (iovcnt > 0) {
    auto n = write_some(iov, iovcnt);
    if (n >= 0) {
      iov = advance(iov, iovcnt, static_cast<size_t>(n));
      continue;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return errno;
    if (!may_block)
      return 0;
    int wait_ms = -1;
    if (deadline != time_point::max()) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        return 0; // the caller's deadline: the rest stays queued
      wait_ms = static_cast<int>(std::min<int64_t>(left.count() + 1, 1 << 30));
    }
    if (poll_one(fd_.get(), POLLOUT, wait_ms) < 0)
      return errno;
  }
  return 0;
}

caf::error frame_channel::write_error(int err) {
  return err == EPIPE || err == ECONNRESET
           ? make_error(errc::peer_closed,
                        "peer closed the channel while sending")
           : make_system_error("sendmsg on channel", err);
}

void frame_channel::break_writes(caf::error err) {
  if (!wr_error_)
    wr_error_ = std::move(err);
  pending_.clear();
  out_.clear();
  out_off_ = 0;
  wcv_.notify_all();
}

caf::error frame_channel::send(const std::string_view* parts, size_t num_parts,
                               send_mode mode) {
  return send_until(parts, num_parts, mode, time_point::max());
}

caf::error frame_channel::send_until(const std::string_view* parts,
                                     size_t num_parts, send_mode mode,
                                     time_point deadline) {
  size_t total = 0;
  for (size_t i = 0; i < num_parts; ++i)
    total += parts[i].size();
  if (total > opts_.max_frame_size)
    return frame_too_large_error(total, opts_.max_frame_size,
                                 "refusing to send");
  char hdr[frame_header_size];
  write_frame_header(total, hdr);
  return send_bytes(std::string_view{hdr, sizeof(hdr)}, parts, num_parts,
                    total, mode, deadline);
}

caf::error frame_channel::send_framed(std::string_view frames,
                                      send_mode mode) {
  return send_bytes(std::string_view{}, &frames, 1, frames.size(), mode,
                    time_point::max());
}

caf::error frame_channel::send_bytes(std::string_view hdr,
                                     const std::string_view* parts,
                                     size_t num_parts, size_t total,
                                     send_mode mode, time_point deadline) {
  bool has_io = io_running_.load(std::memory_order_acquire);
  bool on_io = on_io_thread();
  bool may_block = !on_io;
  // Queueing pays off for small frames only: a large frame is written from
  // the caller's buffer (no copy), like an immediate one.
  if (mode == send_mode::deferred && (!has_io || total >= large_frame))
    mode = send_mode::immediate;
  std::unique_lock<std::mutex> lk{wmu_};
  if (wr_error_)
    return wr_error_;
  if (mode == send_mode::immediate && !flushing_ && !has_pending_locked()
      && num_parts < max_iov) {
    // Fast path: write straight from the caller's buffers, no copy.
    flushing_ = true;
    lk.unlock();
    iovec storage[max_iov];
    int iovcnt = 0;
    if (!hdr.empty())
      storage[iovcnt++] = iovec{const_cast<char*>(hdr.data()), hdr.size()};
    for (size_t i = 0; i < num_parts; ++i)
      storage[iovcnt++] = iovec{const_cast<char*>(parts[i].data()),
                                parts[i].size()};
    iovec* iov = storage;
    int err = write_iov(iov, iovcnt, may_block, deadline);
    lk.lock();
    flushing_ = false;
    if (err != 0) {
      break_writes(write_error(err));
      return wr_error_;
    }
    if (iovcnt > 0) {
      // The I/O thread could not write everything: queue the rest in front
      // of what other threads queued meanwhile.
      out_.clear();
      out_off_ = 0;
      for (int i = 0; i < iovcnt; ++i)
        out_.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
    }
    if (has_pending_locked()) {
      if (has_io && !on_io) {
        if (!wake_pending_) {
          wake_pending_ = true;
          wake();
        }
      } else if (!has_io) {
        flush_locked(lk, true, deadline);
      }
    }
    wcv_.notify_all();
    if (!wr_error_ && !has_io && has_pending_locked())
      return send_timeout(); // the deadline passed (see below)
    return wr_error_;
  }
  pending_.append(hdr.data(), hdr.size());
  for (size_t i = 0; i < num_parts; ++i)
    pending_.append(parts[i].data(), parts[i].size());
  if (!flushing_) {
    if (mode == send_mode::immediate) {
      flush_locked(lk, may_block, deadline);
    } else if (!on_io) {
      ++deferred_appends_;
      if (pending_.size() >= deferred_batch_bytes) {
        // A full batch: the sender writes it itself, no wake-up needed.
        flush_locked(lk, false);
      } else if (!watching_) {
        // The I/O thread watches the queue from now on while frames keep
        // coming (see run()); one wake-up per burst, not per batch.
        watching_ = true;
        wake();
      }
    }
  }
  auto wait = [&](auto ready) {
    if (deadline == time_point::max()) {
      wcv_.wait(lk, ready);
      return true;
    }
    return wcv_.wait_until(lk, deadline, ready);
  };
  if (may_block && has_io) {
    // Backpressure: wait while too much output is queued.
    if (!wait([this] {
          return wr_error_
                 || pending_bytes_locked() <= opts_.send_high_watermark
                 || stopping_.load();
        }))
      return send_timeout();
  } else if (may_block && !has_io) {
    // Without an I/O thread, a send returns once its frame is written.
    if (!wait([this] {
          return wr_error_ || (!flushing_ && !has_pending_locked());
        }))
      return send_timeout();
  }
  return wr_error_;
}

caf::error frame_channel::send_timeout() const {
  return make_error(errc::timeout,
                    "the peer does not read: "
                      + std::to_string(pending_bytes_locked())
                      + " bytes are queued on the channel");
}

void frame_channel::flush_locked(std::unique_lock<std::mutex>& lk,
                                 bool may_block, time_point deadline) {
  // The flusher owns out_: what is being written, in order before pending_.
  flushing_ = true;
  while (!wr_error_) {
    if (out_off_ == out_.size()) {
      if (pending_.empty())
        break;
      out_.clear();
      out_.swap(pending_);
      out_off_ = 0;
    }
    lk.unlock();
    iovec one{out_.data() + out_off_, out_.size() - out_off_};
    iovec* iov = &one;
    int iovcnt = 1;
    int err = write_iov(iov, iovcnt, may_block, deadline);
    size_t off = out_.size() - (iovcnt > 0 ? iov->iov_len : 0);
    lk.lock();
    out_off_ = off;
    if (err != 0) {
      flushing_ = false;
      break_writes(write_error(err));
      return;
    }
    if (off < out_.size())
      break; // the socket is full: the I/O thread continues on POLLOUT
    if (out_.capacity() > max_kept_out_capacity) {
      out_.clear();
      out_.shrink_to_fit();
      out_off_ = 0;
    }
  }
  flushing_ = false;
  if (has_pending_locked() && !on_io_thread() && io_running_.load()
      && !wake_pending_) {
    wake_pending_ = true;
    wake();
  }
  wcv_.notify_all();
}

void frame_channel::flush() {
  std::unique_lock<std::mutex> lk{wmu_};
  if (!flushing_ && !wr_error_ && has_pending_locked())
    flush_locked(lk, false);
}

size_t frame_channel::pending_output() const {
  std::lock_guard<std::mutex> guard{wmu_};
  return pending_bytes_locked();
}

// -- receiving ----------------------------------------------------------------

bool frame_channel::read_some() {
  if (rpos_ == rend_) {
    rpos_ = rend_ = 0;
    if (rbuf_.size() > shrink_rbuf_above) {
      rbuf_.resize(initial_rbuf_size);
      rbuf_.shrink_to_fit();
    }
  }
  // The frame at the front, header included, once its header is in.
  size_t have = rend_ - rpos_;
  size_t frame_end = 0;
  if (have >= frame_header_size) {
    auto len = read_frame_header(rbuf_.data() + rpos_);
    if (len <= opts_.max_frame_size)
      frame_end = frame_header_size + len;
  }
  // Make room for that frame, but only as far as its bytes arrive: a peer
  // that announces a large frame and sends little of it must not make the
  // channel hold the announced size (up to max_frame_size per channel).
  // The buffer grows by at most max_read_ahead past what was received (or
  // doubles, when full), so a large frame still costs only a few moves.
  size_t room = std::min(frame_end, have + max_read_ahead);
  if (rend_ == rbuf_.size() || rpos_ + room > rbuf_.size()) {
    if (rpos_ > 0) {
      std::memmove(rbuf_.data(), rbuf_.data() + rpos_, have);
      rend_ = have;
      rpos_ = 0;
    }
    if (rend_ == rbuf_.size() || room > rbuf_.size())
      rbuf_.resize(std::max(rbuf_.size() * 2, room));
  }
  // Read a large frame up to its last byte only, and after a large frame
  // read just the next header first: the next frame then starts at the front
  // of the buffer and nothing has to be moved. Small frames are read in as
  // big chunks as the buffer allows.
  size_t max_read = rbuf_.size() - rend_;
  if (frame_end >= large_frame)
    max_read = std::min(max_read, rpos_ + frame_end - rend_);
  else if (have < frame_header_size && last_frame_large_)
    max_read = std::min(max_read, frame_header_size - have);
  for (;;) {
    auto n = ::recv(fd_.get(), rbuf_.data() + rend_, max_read, MSG_DONTWAIT);
    if (n > 0) {
      rend_ += static_cast<size_t>(n);
      return true;
    }
    if (n == 0) {
      if (rpos_ < rend_) {
        std::string what = "the channel closed inside a frame: ";
        if (rend_ - rpos_ < frame_header_size)
          what += std::to_string(rend_ - rpos_) + " of "
                  + std::to_string(frame_header_size) + " header bytes";
        else
          what += std::to_string(rend_ - rpos_ - frame_header_size) + " of "
                  + std::to_string(read_frame_header(rbuf_.data() + rpos_))
                  + " body bytes";
        rd_error_ = make_error(errc::truncated_frame, std::move(what));
      } else {
        rd_error_ = make_error(errc::peer_closed, "the peer closed the channel");
      }
      return false;
    }
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return true;
    rd_error_ = errno == ECONNRESET
                  ? make_error(errc::peer_closed, "the peer reset the channel")
                  : make_system_error("recv on channel", errno);
    return false;
  }
}

bool frame_channel::next_frame(std::string_view& out) {
  auto used = split_frame({rbuf_.data() + rpos_, rend_ - rpos_},
                          opts_.max_frame_size, out, rd_error_);
  if (used == 0)
    return false;
  last_frame_large_ = out.size() >= large_frame;
  rpos_ += used;
  return true;
}

caf::expected<std::string_view>
frame_channel::receive(std::optional<std::chrono::milliseconds> timeout) {
  using clock = std::chrono::steady_clock;
  auto deadline = timeout ? clock::now() + *timeout : clock::time_point::max();
  for (;;) {
    std::string_view frame;
    if (next_frame(frame))
      return frame;
    if (rd_error_)
      return rd_error_;
    int wait_ms = -1;
    if (timeout) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - clock::now());
      wait_ms = static_cast<int>(std::max<int64_t>(0, left.count()));
    }
    int rc = poll_one(fd_.get(), POLLIN, wait_ms);
    if (rc < 0)
      return make_system_error("poll on channel", errno);
    if (rc == 0)
      return make_error(errc::timeout,
                        "no message within "
                          + std::to_string(timeout ? timeout->count() : 0)
                          + " ms");
    if (!read_some())
      return rd_error_;
  }
}

caf::expected<bool> frame_channel::poll(std::chrono::milliseconds timeout) {
  using clock = std::chrono::steady_clock;
  auto deadline = clock::now() + timeout;
  for (;;) {
    if (rd_error_)
      return true;
    if (rend_ - rpos_ >= frame_header_size) {
      auto len = read_frame_header(rbuf_.data() + rpos_);
      if (len > opts_.max_frame_size || rend_ - rpos_ >= frame_header_size + len)
        return true;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - clock::now());
    int rc = poll_one(fd_.get(), POLLIN,
                      static_cast<int>(std::max<int64_t>(0, left.count())));
    if (rc < 0)
      return make_system_error("poll on channel", errno);
    if (rc == 0)
      return false;
    if (!read_some())
      return true;
  }
}

// -- I/O thread ---------------------------------------------------------------

bool frame_channel::on_io_thread() const noexcept {
  return io_thread_id_.load(std::memory_order_relaxed)
         == std::this_thread::get_id();
}

void frame_channel::wake() {
  uint64_t one = 1;
  if (wake_fd_)
    [[maybe_unused]] auto n = ::write(wake_fd_.get(), &one, sizeof(one));
}

void frame_channel::fail(caf::error reason) {
  if (!rd_error_)
    rd_error_ = std::move(reason);
}

void frame_channel::start(frame_handler* handler, int death_fd) {
  wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  io_running_ = true;
  io_thread_ = std::thread{[this, handler, death_fd] { run(handler, death_fd); }};
}

void frame_channel::run(frame_handler* handler, int death_fd) {
  io_thread_id_ = std::this_thread::get_id();
  auto process_frames = [&] {
    std::string_view frame;
    size_t n = 0;
    while (!rd_error_ && next_frame(frame)) {
      handler->on_frame(frame);
      ++n;
    }
    handler->on_batch_end();
    return n;
  };
  caf::error reason;
  // Frames that arrived before start() was called.
  process_frames();
  bool busy_poll = opts_.busy_poll.count() > 0;
  // When the last input batch was done, and how long it had been since the
  // one before.
  auto last_input = std::chrono::steady_clock::now();
  std::chrono::steady_clock::duration gap = std::chrono::hours{1};
  // How long handling the last input batch took.
  std::chrono::steady_clock::duration work{};
  size_t last_batch = 0;
  while (!rd_error_) {
    bool want_out;
    bool watching;
    uint64_t appends_seen;
    {
      std::lock_guard<std::mutex> guard{wmu_};
      want_out = !flushing_ && has_pending_locked() && !wr_error_;
      watching = watching_;
      appends_seen = deferred_appends_;
    }
    pollfd fds[3];
    fds[0] = pollfd{fd_.get(), static_cast<short>(POLLIN | (want_out ? POLLOUT : 0)), 0};
    fds[1] = pollfd{wake_fd_.get(), POLLIN, 0};
    fds[2] = pollfd{death_fd, POLLIN, 0};
    // While a sender streams deferred frames, wake up on a short tick to
    // write partial batches instead of being woken for each of them.
    timespec tick{0, deferred_tick_ns};
    int nfds = death_fd >= 0 ? 3 : 2;
    int rc = 0;
    // Busy-poll only while the peer is chatty: its last frame came within a
    // few polling periods of the one before, and handling it took less than
    // a polling period. After long work (a chunk of tasks, say) the next
    // frame is usually there already, and spinning for one that is not
    // takes the CPU from the threads that make it.
    if (busy_poll && gap <= opts_.busy_poll * 8 && last_batch <= 2
        && work <= opts_.busy_poll) {
      rc = spin_poll(fds, nfds, last_input, opts_.busy_poll);
      if (rc < 0 && errno == EINTR)
        continue;
    }
    if (rc == 0)
      rc = ::ppoll(fds, nfds, watching ? &tick : nullptr, nullptr);
    if (rc < 0) {
      if (errno == EINTR)
        continue;
      rd_error_ = make_system_error("poll on channel", errno);
      break;
    }
    if (rc == 0) {
      std::unique_lock<std::mutex> lk{wmu_};
      if (deferred_appends_ == appends_seen)
        watching_ = false; // the burst is over: wait for the next wake-up
      if (!flushing_ && has_pending_locked())
        flush_locked(lk, false);
      continue;
    }
    if (fds[1].revents != 0) {
      uint64_t dummy;
      [[maybe_unused]] auto n = ::read(wake_fd_.get(), &dummy, sizeof(dummy));
    }
    if (stopping_.load()) {
      rd_error_ = make_error(errc::closed, "the channel was closed");
      break;
    }
    if ((fds[0].revents & POLLOUT) != 0 || fds[1].revents != 0) {
      if (fds[1].revents != 0 && (fds[0].revents & POLLOUT) == 0) {
        // Woken for deferred frames: linger a moment so that a busy sender
        // fills a batch (one write, one wake-up per batch instead of per
        // frame). Immediate sends and full batches do not wait for this.
        bool small;
        {
          std::lock_guard<std::mutex> guard{wmu_};
          small = pending_bytes_locked() < deferred_batch_bytes;
        }
        if (small && !stopping_.load())
          std::this_thread::sleep_for(deferred_linger);
      }
      std::unique_lock<std::mutex> lk{wmu_};
      wake_pending_ = false;
      if (!flushing_)
        flush_locked(lk, false);
    }
    if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      std::chrono::steady_clock::time_point began;
      if (busy_poll) {
        began = std::chrono::steady_clock::now();
        gap = began - last_input;
      }
      bool ok = read_some();
      last_batch = process_frames();
      if (busy_poll) {
        last_input = std::chrono::steady_clock::now();
        work = last_input - began;
      }
      if (!ok)
        break;
    }
    if (death_fd >= 0 && fds[2].revents != 0) {
      // The peer is gone: take what it wrote before dying, then end.
      while (!rd_error_) {
        auto before = rend_;
        bool ok = read_some();
        process_frames();
        if (!ok || rend_ == before)
          break;
      }
      if (!rd_error_)
        rd_error_ = make_error(errc::peer_closed, "the peer process exited");
    }
  }
  {
    std::lock_guard<std::mutex> guard{wmu_};
    break_writes(rd_error_);
  }
  io_running_ = false;
  handler->on_closed(rd_error_);
}

void frame_channel::stop(std::chrono::milliseconds linger) {
  if (linger.count() > 0 && fd_) {
    auto deadline = std::chrono::steady_clock::now() + linger;
    std::unique_lock<std::mutex> lk{wmu_};
    while (!wr_error_ && has_pending_locked()
           && std::chrono::steady_clock::now() < deadline) {
      if (!flushing_ && !io_running_.load())
        flush_locked(lk, false);
      wcv_.wait_until(lk, std::min(deadline, std::chrono::steady_clock::now()
                                               + std::chrono::milliseconds{5}));
    }
  }
  stopping_ = true;
  wake();
  {
    std::lock_guard<std::mutex> guard{wmu_};
    wcv_.notify_all();
  }
  if (io_thread_.joinable()) {
    if (on_io_thread())
      io_thread_.detach();
    else
      io_thread_.join();
  }
  if (fd_)
    ::shutdown(fd_.get(), SHUT_RDWR);
}

} // namespace multiproc
