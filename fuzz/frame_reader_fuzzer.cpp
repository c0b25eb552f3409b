// Fuzzes the frame reader (runtime/, frame_channel.hpp): split_frame() over
// arbitrary bytes, and frame_channel::receive() reading the same bytes from a
// socketpair in pieces of a fuzzed size. Both must see the same frames, and
// then the error the bytes call for: frame_too_large, truncated_frame inside
// a frame, peer_closed at a frame boundary.
//
// Input: byte 0 picks the frame size limit, byte 1 the piece size, the rest
// is what the peer writes.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <sys/socket.h>
#include <unistd.h>

#include "multiproc/error.hpp"
#include "multiproc/fd.hpp"
#include "multiproc/frame_channel.hpp"

#include "fuzz_check.hpp"

using namespace multiproc;

namespace {

// Frame size limits to pick from. Not the default 64 MiB: the channel sizes
// its buffer for a whole announced frame up front, and zero-filling megabytes
// per input would be most of the run (the code paths are the same).
constexpr size_t limits[] = {0, 1, 7, 64, 1000, 65536, size_t{1} << 20};

struct parsed {
  std::vector<std::string> frames;
  caf::error err; // frame_too_large, or none
  size_t used = 0; // bytes taken by complete frames
};

parsed split_all(std::string_view bytes, size_t limit) {
  parsed result;
  for (;;) {
    std::string_view rest = bytes.substr(result.used);
    std::string_view body;
    caf::error err;
    auto used = split_frame(rest, limit, body, err);
    if (err) {
      FUZZ_CHECK(used == 0, "split_frame takes nothing on an error");
      FUZZ_CHECK(err == errc::frame_too_large, "the only header error");
      FUZZ_CHECK(rest.size() >= frame_header_size, "error needs a header");
      FUZZ_CHECK(read_frame_header(rest.data()) > limit, "limit respected");
      result.err = std::move(err);
      return result;
    }
    if (used == 0) {
      // Incomplete: no header yet, or a body still to come.
      FUZZ_CHECK(rest.size() < frame_header_size
                   || frame_header_size + read_frame_header(rest.data())
                        > rest.size(),
                 "split_frame left a complete frame behind");
      return result;
    }
    FUZZ_CHECK(used == frame_header_size + body.size(), "size taken");
    FUZZ_CHECK(used <= rest.size(), "within the bytes");
    FUZZ_CHECK(body.data() == rest.data() + frame_header_size, "body view");
    FUZZ_CHECK(body.size() <= limit, "a body within the limit");
    result.frames.emplace_back(body);
    result.used += used;
  }
}

bool write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    auto n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2)
    return 0;
  size_t limit = limits[data[0] % (sizeof(limits) / sizeof(limits[0]))];
  size_t piece = size_t{1} + (data[1] % 8 == 0 ? 65536 : data[1] % 61);
  std::string_view bytes{reinterpret_cast<const char*>(data) + 2, size - 2};
  // At most 64 writes per input: system calls dominate the cost of a run.
  piece = std::max(piece, (bytes.size() + 63) / 64);
  auto expected = split_all(bytes, limit);

  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return 0;
  unique_fd writer{sv[0]};
  channel_options opts;
  opts.max_frame_size = limit;
  opts.socket_buffer_size = 0;
  frame_channel channel{unique_fd{sv[1]}, opts};

  std::vector<std::string> frames;
  caf::error end;
  auto drain = [&](std::chrono::milliseconds timeout) {
    for (;;) {
      auto frame = channel.receive(timeout);
      if (!frame) {
        if (frame.error() != errc::timeout)
          end = std::move(frame.error());
        return;
      }
      frames.emplace_back(*frame);
      FUZZ_CHECK(frames.size() <= expected.frames.size(), "extra frame");
    }
  };
  for (size_t pos = 0; pos < bytes.size() && !end; pos += piece) {
    auto n = std::min(piece, bytes.size() - pos);
    if (!write_all(writer.get(), bytes.data() + pos, n))
      break;
    drain(std::chrono::milliseconds{0});
  }
  ::shutdown(writer.get(), SHUT_WR);
  if (!end)
    drain(std::chrono::milliseconds{1000});

  FUZZ_CHECK(frames == expected.frames, "the channel sees other frames");
  if (expected.err)
    FUZZ_CHECK(end == errc::frame_too_large, "frame_too_large expected");
  else if (expected.used == bytes.size())
    FUZZ_CHECK(end == errc::peer_closed, "peer_closed expected");
  else
    FUZZ_CHECK(end == errc::truncated_frame, "truncated_frame expected");
  // A broken channel keeps failing with the same error.
  auto again = channel.receive(std::chrono::milliseconds{0});
  FUZZ_CHECK(!again && code_of(again.error()) == code_of(end), "sticky error");
  return 0;
}
