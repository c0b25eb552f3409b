#pragma once

/// \file
/// unique_fd: sole owner of a file descriptor, closed on destruction.
/// Not thread-safe (like any value type); moving transfers ownership and
/// leaves the source empty (-1). Errors: the free functions report failure
/// as false and errno; nothing throws.

#include <string_view>
#include <utility>

namespace multiproc {

/// Owns one descriptor (or none: -1) and closes it on destruction.
class unique_fd {
public:
  /// Owns nothing.
  unique_fd() noexcept = default;
  /// Takes ownership of `fd` (-1: nothing).
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  /// Takes over `other`'s descriptor; `other` becomes empty.
  unique_fd(unique_fd&& other) noexcept : fd_(other.release()) {}
  /// Closes the owned descriptor, then takes over `other`'s.
  unique_fd& operator=(unique_fd&& other) noexcept {
    if (this != &other)
      reset(other.release());
    return *this;
  }
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  /// Closes the owned descriptor, if any.
  ~unique_fd() { reset(); }

  /// The descriptor, or -1.
  int get() const noexcept { return fd_; }
  /// True while a descriptor is owned.
  explicit operator bool() const noexcept { return fd_ >= 0; }

  /// Gives up ownership and returns the descriptor.
  int release() noexcept { return std::exchange(fd_, -1); }

  /// Closes the owned descriptor (if any) and takes ownership of `fd`.
  void reset(int fd = -1) noexcept;

private:
  int fd_ = -1;
};

/// Creates a connected socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC).
/// Returns false and sets errno on failure.
bool make_socketpair(unique_fd& a, unique_fd& b) noexcept;

/// Sets or clears O_NONBLOCK; returns false and sets errno on failure.
bool set_nonblocking(int fd, bool on) noexcept;

/// Writes all of `data` to the blocking descriptor `fd`, retrying after
/// EINTR and short writes. Returns false and sets errno on failure (EPIPE
/// when a pipe's reader is gone and SIGPIPE is ignored; a write of 0
/// bytes gives EIO).
bool write_all(int fd, std::string_view data) noexcept;

} // namespace multiproc
