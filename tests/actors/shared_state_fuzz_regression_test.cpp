// Regression tests for the shared-state owner from fuzz/shared_owner
// (docs/reliability.md, "Fuzzing"): each sends the frame that crashed the
// harness, inline, over a raw connection.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include <endian.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "multiproc/error.hpp"
#include "multiproc/shared_state.hpp"

using namespace std::chrono_literals;
using namespace multiproc;

namespace {

// Connects to the owner's abstract socket; -1 on failure.
int connect_raw(const std::string& address) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path + 1, address.data(), address.size());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  auto len = offsetof(sockaddr_un, sun_path) + 1 + address.size();
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa),
                static_cast<socklen_t>(len))
      != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// The body of the next frame ("" on EOF or after 5 s).
std::string receive_frame(int fd) {
  std::string got;
  auto deadline = std::chrono::steady_clock::now() + 5s;
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

} // namespace

// A create whose fixed-length flag is 0xc3: the owner copied the byte into a
// bool (undefined behavior; UBSan: "load of value 195, which is not a valid
// value for type 'bool'"). It now fails to decode and creates nothing.
TEST(SharedStateOwner, RejectsACreateWhoseFlagIsNotABool) {
  auto state = shared_state::start();
  ASSERT_TRUE(state) << describe(state.error());
  int fd = connect_raw(state->address());
  ASSERT_GE(fd, 0);
  // The frame: request 1, create cell "n" of type int64_t ("l"), flag 0xc3,
  // initial value 1.
  const std::string frame{
    "\x2d\x00\x00\x00\x01\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00"
    "\x00\x00\x00n\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    "\x00l\x1c\xc3\x01\x00\x00\x00\x00\x00\x00\x00",
    49};
  ASSERT_EQ(::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(frame.size()));
  auto reply = receive_frame(fd);
  ::close(fd);
  ASSERT_GE(reply.size(), 14u);
  EXPECT_EQ(reply[0], '\x10'); // reply
  EXPECT_EQ(reply[9], '\x01'); // an error
  uint32_t code;
  std::memcpy(&code, reply.data() + 10, sizeof(code));
  EXPECT_EQ(code, static_cast<uint32_t>(errc::decode_failed));
  EXPECT_NE(reply.find("a bool is encoded as 0 or 1, not 195"),
            std::string::npos)
    << reply.substr(14);
  // No cell was created: a handle creates it now with its own value.
  auto n = state->value<int64_t>("n", 5);
  ASSERT_TRUE(n) << describe(n.error());
  auto v = n->load();
  ASSERT_TRUE(v) << describe(v.error());
  EXPECT_EQ(*v, 5);
}
