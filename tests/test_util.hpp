#pragma once

// Helpers shared by the test files: reading a child's channel with a bound,
// and counting what a queue leaves behind in this process.

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include <dirent.h>
#include <poll.h>
#include <unistd.h>

namespace multiproc::test {

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

} // namespace multiproc::test
