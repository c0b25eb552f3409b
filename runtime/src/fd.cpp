#include "multiproc/fd.hpp"

#include <cerrno>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

namespace multiproc {

void unique_fd::reset(int fd) noexcept {
  if (fd_ >= 0 && fd_ != fd) {
    int saved = errno;
    ::close(fd_);
    errno = saved;
  }
  fd_ = fd;
}

bool make_socketpair(unique_fd& a, unique_fd& b) noexcept {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
    return false;
  a.reset(fds[0]);
  b.reset(fds[1]);
  return true;
}

bool set_nonblocking(int fd, bool on) noexcept {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0)
    return false;
  flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  return ::fcntl(fd, F_SETFL, flags) == 0;
}

bool write_all(int fd, std::string_view data) noexcept {
  while (!data.empty()) {
    auto n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return false;
    if (n == 0) {
      errno = EIO;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

} // namespace multiproc
