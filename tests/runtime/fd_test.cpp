// Tests of fd.hpp's free functions: write_all writes everything through
// short writes and reports a gone reader.
#include "multiproc/fd.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <string>
#include <thread>

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "test_util.hpp"

using namespace multiproc;
using namespace std::chrono_literals;

TEST(WriteAll, WritesMoreThanThePipeHoldsWhileTheReaderDrainsIt) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  unique_fd reader{fds[0]};
  unique_fd writer{fds[1]};
  ASSERT_GT(::fcntl(writer.get(), F_SETPIPE_SZ, 4096), 0);
  std::string data(256 * 1024, '\0');
  for (size_t i = 0; i < data.size(); ++i)
    data[i] = static_cast<char>('a' + i % 26);
  std::string got;
  std::thread drain{[&] { got = test::read_until_eof(reader.get(), 10s); }};
  bool ok = write_all(writer.get(), data);
  int err = errno;
  writer.reset();
  drain.join();
  EXPECT_TRUE(ok) << std::strerror(err);
  EXPECT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data);
}

TEST(WriteAll, ReportsEpipeWhenTheReaderIsGone) {
  auto old = std::signal(SIGPIPE, SIG_IGN);
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  unique_fd writer{fds[1]};
  ::close(fds[0]);
  errno = 0;
  EXPECT_FALSE(write_all(writer.get(), "lost"));
  EXPECT_EQ(errno, EPIPE);
  std::signal(SIGPIPE, old);
}

TEST(WriteAll, WritesNothingForAnEmptyView) {
  EXPECT_TRUE(write_all(-1, {})); // no write(2) at all: -1 is never used
}
