// The output forwarder: one epoll thread that reads every child's stdout and
// stderr pipes, splits lines and calls the sinks; it also reaps detached
// children. It starts when something is added and stops when nothing is
// left to watch, so that a parent whose children all finished is
// single-threaded again (start_method::fork needs that).

#include <cerrno>
#include <cstring>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log_internal.hpp"
#include "multiproc/error.hpp"
#include "multiproc/fd.hpp"
#include "multiproc/log.hpp"
#include "process_internal.hpp"

namespace multiproc {

output_sink default_output_sink() {
  return [](const output_line& line) {
    if (line.level) {
      log_output_line(line);
      return;
    }
    std::string buf;
    buf.reserve(line.process_name.size() + line.text.size() + 16);
    buf += '[';
    buf += line.process_name;
    buf += ' ';
    buf += std::to_string(line.pid);
    buf += "] ";
    buf += line.text;
    buf += '\n';
    write_all(STDERR_FILENO, buf); // on failure: no stderr to tell
  };
}

namespace detail {

namespace {

/// The longest line delivered in one piece.
constexpr size_t max_line = 64 * 1024;

} // namespace

// -- output_state ---------------------------------------------------------------

bool output_state::wait_closed(clock::time_point deadline) {
  std::unique_lock<std::mutex> guard{mtx};
  return cv.wait_until(guard, deadline, [this] { return open_streams == 0; });
}

void output_state::mute() {
  std::lock_guard<std::mutex> guard{sink_mtx};
  muted = true;
}

// -- output_forwarder ----------------------------------------------------------

struct output_forwarder::entry {
  bool is_reaper = false;
  unique_fd fd;
  bool is_stderr = false;
  std::shared_ptr<output_state> out;
  std::string buf;
};

output_forwarder& output_forwarder::instance() {
  static output_forwarder instance;
  return instance;
}

output_forwarder::~output_forwarder() {
  std::unique_lock<std::mutex> guard{mtx_};
  if (running_) {
    stopping_ = true;
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof(one));
  }
  guard.unlock();
  if (thread_.joinable())
    thread_.join();
}

caf::error output_forwarder::add_stream(unique_fd fd, bool is_stderr,
                                        std::shared_ptr<output_state> out) {
  if (!set_nonblocking(fd.get(), true))
    return make_system_error("cannot make an output pipe non-blocking", errno);
  auto e = std::make_shared<entry>();
  e->fd = std::move(fd);
  e->is_stderr = is_stderr;
  e->out = std::move(out);
  return add(std::move(e));
}

caf::error output_forwarder::add_reaper(unique_fd pidfd) {
  auto e = std::make_shared<entry>();
  e->is_reaper = true;
  e->fd = std::move(pidfd);
  return add(std::move(e));
}

caf::error output_forwarder::add(std::shared_ptr<entry> e) {
  std::lock_guard<std::mutex> guard{mtx_};
  if (!running_) {
    if (thread_.joinable())
      thread_.join(); // it left its loop already
    epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0)
      return make_system_error("epoll_create1", errno);
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = wake_fd_;
    if (wake_fd_ < 0 || ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev)) {
      auto err = make_system_error("cannot set up the output forwarder", errno);
      ::close(epoll_fd_);
      if (wake_fd_ >= 0)
        ::close(wake_fd_);
      epoll_fd_ = wake_fd_ = -1;
      return err;
    }
    stopping_ = false;
    try {
      thread_ = std::thread{[this] { run(); }};
    } catch (const std::system_error& ex) {
      ::close(epoll_fd_);
      ::close(wake_fd_);
      epoll_fd_ = wake_fd_ = -1;
      return make_error(errc::system_error,
                        std::string{"cannot start the output forwarder: "}
                          + ex.what());
    }
    running_ = true;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = e->fd.get();
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, e->fd.get(), &ev) != 0)
    return make_system_error("epoll_ctl", errno);
  entries_[e->fd.get()] = std::move(e);
  return caf::none;
}

bool output_forwarder::stop_if_idle(bool& running) {
  // With nothing left to watch, the thread leaves its loop on its own right
  // after the event that removed the last entry: wait for that (bounded).
  for (int i = 0; i < 1000; ++i) {
    std::unique_lock<std::mutex> guard{mtx_};
    running = running_;
    if (running_ && !entries_.empty())
      return false;
    if (!running_) {
      if (!thread_.joinable())
        return false;
      thread_.join();
      return true;
    }
    guard.unlock();
    std::this_thread::sleep_for(std::chrono::microseconds{100});
  }
  return false;
}

void output_forwarder::run() {
  epoll_event events[64];
  for (;;) {
    int n = ::epoll_wait(epoll_fd_, events, 64, -1);
    if (n < 0 && errno != EINTR)
      n = 0; // cannot happen with a valid epoll descriptor; re-check below
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == wake_fd_) {
        uint64_t value;
        [[maybe_unused]] auto r = ::read(wake_fd_, &value, sizeof(value));
        continue;
      }
      std::shared_ptr<entry> e;
      {
        std::lock_guard<std::mutex> guard{mtx_};
        auto j = entries_.find(fd);
        if (j != entries_.end())
          e = j->second;
      }
      if (e)
        handle(e);
    }
    std::lock_guard<std::mutex> guard{mtx_};
    if (entries_.empty() || stopping_) {
      entries_.clear();
      ::close(epoll_fd_);
      ::close(wake_fd_);
      epoll_fd_ = wake_fd_ = -1;
      running_ = false;
      return;
    }
  }
}

namespace {

void deliver(output_state& out, bool is_stderr, std::string text) {
  std::lock_guard<std::mutex> guard{out.sink_mtx};
  if (out.muted || !out.sink)
    return;
  std::optional<log_level> level;
  if (is_stderr)
    level = strip_log_marker(text);
  output_line line{out.name, out.pid, is_stderr, std::move(text), level};
  try {
    out.sink(line);
  } catch (...) {
    // A throwing sink loses its line; the forwarder keeps serving others.
  }
}

} // namespace

void output_forwarder::handle(const std::shared_ptr<entry>& e) {
  if (e->is_reaper) {
    siginfo_t info{};
    int rc = ::waitid(static_cast<idtype_t>(P_PIDFD),
                      static_cast<id_t>(e->fd.get()), &info,
                      WEXITED | WNOHANG);
    if ((rc == 0 && info.si_pid != 0) || (rc < 0 && errno != EINTR))
      remove(e);
    return;
  }
  char buf[16384];
  auto n = ::read(e->fd.get(), buf, sizeof(buf));
  if (n < 0 && (errno == EAGAIN || errno == EINTR))
    return;
  if (n > 0) {
    e->buf.append(buf, static_cast<size_t>(n));
    size_t start = 0;
    for (;;) {
      auto pos = e->buf.find('\n', start);
      if (pos == std::string::npos)
        break;
      deliver(*e->out, e->is_stderr, e->buf.substr(start, pos - start));
      start = pos + 1;
    }
    e->buf.erase(0, start);
    while (e->buf.size() >= max_line) {
      deliver(*e->out, e->is_stderr, e->buf.substr(0, max_line));
      e->buf.erase(0, max_line);
    }
    return;
  }
  // EOF (or a read error): deliver the final partial line and close.
  if (!e->buf.empty())
    deliver(*e->out, e->is_stderr, std::move(e->buf));
  e->buf.clear();
  remove(e);
  std::lock_guard<std::mutex> guard{e->out->mtx};
  --e->out->open_streams;
  e->out->cv.notify_all();
}

void output_forwarder::remove(const std::shared_ptr<entry>& e) {
  std::lock_guard<std::mutex> guard{mtx_};
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, e->fd.get(), nullptr);
  entries_.erase(e->fd.get());
  e->fd.reset();
}

} // namespace detail

} // namespace multiproc
