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
#include "test_util.hpp"

using namespace std::chrono_literals;
using namespace multiproc;

namespace {

using test::receive_frame;

int connect_raw(const std::string& address) {
  return test::connect_abstract(address);
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
