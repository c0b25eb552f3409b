#pragma once

// Helpers shared by the test files: reading a child's channel with a bound,
// counting what a queue leaves behind in this process, collecting a child's
// output lines, and raw frames on
// abstract Unix sockets.

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include <dirent.h>
#include <endian.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "multiproc/output.hpp"

namespace multiproc::test {

/// Collects a child's output lines (process_options::sink) from the
/// forwarder thread.
struct line_collector {
  std::mutex mtx;
  std::vector<output_line> lines;

  output_sink sink() {
    return [this](const output_line& line) {
      std::lock_guard<std::mutex> guard{mtx};
      lines.push_back(line);
    };
  }

  std::vector<output_line> snapshot() {
    std::lock_guard<std::mutex> guard{mtx};
    return lines;
  }
};

/// Reads `fd` until EOF or `timeout`, whichever comes first.
inline std::string read_until_eof(int fd, std::chrono::milliseconds timeout) {
  std::string result;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      return result;
    pollfd p{fd, POLLIN, 0};
    int rc = ::poll(&p, 1, static_cast<int>(left.count()));
    if (rc < 0 && errno == EINTR)
      continue;
    if (rc <= 0)
      return result;
    char buf[4096];
    auto n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return result;
    result.append(buf, static_cast<size_t>(n));
  }
}

/// The whole content of the file at `path` ("" if it cannot be read).
inline std::string read_file(const std::string& path) {
  std::ifstream in{path};
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

/// CPU time (user + system) the process `pid` has used, in clock ticks.
inline long cpu_ticks(pid_t pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/stat"};
  std::string line;
  std::getline(in, line);
  // Fields after the ")" that ends the command name: state is field 3,
  // utime 14 and stime 15.
  std::istringstream rest{line.substr(line.rfind(')') + 2)};
  std::string field;
  long utime = 0;
  long stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14)
      utime = std::stol(field);
    if (i == 15)
      stime = std::stol(field);
  }
  return utime + stime;
}

/// Lines of /proc/self/maps naming a queue's memfd (one per mapping).
inline int queue_mappings() {
  std::ifstream maps{"/proc/self/maps"};
  int n = 0;
  for (std::string line; std::getline(maps, line);)
    if (line.find("memfd:multiproc-queue") != std::string::npos)
      ++n;
  return n;
}

/// Descriptors of this process that refer to a queue's memfd, or -1.
inline int queue_descriptors() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr)
    return -1;
  int n = 0;
  while (auto* ent = ::readdir(dir)) {
    char target[256] = {};
    auto path = std::string{"/proc/self/fd/"} + ent->d_name;
    auto len = ::readlink(path.c_str(), target, sizeof(target) - 1);
    if (len > 0 && std::strstr(target, "memfd:multiproc-queue") != nullptr)
      ++n;
  }
  ::closedir(dir);
  return n;
}

// -- raw frames on abstract Unix sockets (the shared-state owner's) -----------

/// Fills `sa` for the abstract socket `name`; returns its length.
inline socklen_t abstract_socket_address(const std::string& name,
                                         sockaddr_un& sa) {
  sa = sockaddr_un{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path + 1, name.data(), name.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1
                                + name.size());
}

/// A socket connected to the abstract socket `name`; -1 on failure.
inline int connect_abstract(const std::string& name) {
  sockaddr_un sa;
  auto len = abstract_socket_address(name, sa);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

/// A socket listening on the abstract socket `name`; -1 on failure.
inline int listen_abstract(const std::string& name) {
  sockaddr_un sa;
  auto len = abstract_socket_address(name, sa);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0
      && (::bind(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0
          || ::listen(fd, 4) != 0)) {
    ::close(fd);
    return -1;
  }
  return fd;
}

/// The body of the next frame on `fd` ("" on EOF or after `timeout`).
inline std::string receive_frame(int fd, std::chrono::milliseconds timeout
                                         = std::chrono::seconds{5}) {
  std::string got;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (got.size() >= 4) {
      uint32_t len;
      std::memcpy(&len, got.data(), 4);
      len = le32toh(len);
      if (got.size() >= 4 + len)
        return got.substr(4, len);
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0)
      continue;
    char buf[4096];
    auto n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0)
      return {};
    got.append(buf, static_cast<size_t>(n));
  }
  return {};
}

} // namespace multiproc::test
