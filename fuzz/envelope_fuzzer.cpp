// Fuzzes the envelope decoder (serialization/, envelope.hpp) on a whole frame
// body: read_envelope(), then what the receiver does with each kind: chunk
// frames through read_chunk(), error frames through decode_error(), hello
// through decode<hello>() and check_hello(), the others through the message
// registry. What decodes must encode back to the same bytes.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include "multiproc/envelope.hpp"
#include "multiproc/error.hpp"
#include "multiproc/message_registry.hpp"

#include "fuzz_check.hpp"

using namespace multiproc;

namespace {

void check_chunk(wire::kind what, std::string_view payload) {
  std::vector<wire::chunk_item> items;
  auto err = wire::read_chunk(what, payload, items);
  if (err) {
    FUZZ_CHECK(err == errc::protocol_error, "read_chunk's only error");
    return;
  }
  // The items re-encode to the payload, byte for byte.
  bool response = what == wire::kind::chunk_response;
  std::string out(wire::chunk_count_size, '\0');
  wire::write_chunk_count(out.data(), static_cast<uint32_t>(items.size()));
  for (auto& item : items) {
    FUZZ_CHECK(item.payload.data() >= payload.data()
                 && item.payload.data() + item.payload.size()
                      <= payload.data() + payload.size(),
               "an item's payload lies inside the chunk");
    if (response) {
      char head[wire::chunk_response_item_head];
      wire::write_chunk_response_item_head(
        head, item.index, item.failed, item.type,
        static_cast<uint32_t>(item.payload.size()));
      out.append(head, sizeof(head));
      out.append(item.payload);
    } else {
      wire::append_chunk_request_item(out, item.type, item.payload);
    }
    // What the worker and the parent then do with each item.
    if (item.failed) {
      caf::error reason;
      (void) decode_error(item.payload, reason);
    } else {
      (void) decode_message(item.type, item.payload);
    }
  }
  FUZZ_CHECK(out == payload, "a chunk re-encodes to other bytes");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body{reinterpret_cast<const char*>(data), size};
  std::string_view payload;
  auto env = wire::read_envelope(body, payload);
  if (!env) {
    FUZZ_CHECK(env.error() == errc::protocol_error, "read_envelope's error");
    return 0;
  }
  FUZZ_CHECK(size >= wire::envelope_size, "a short body was accepted");
  FUZZ_CHECK(payload.data() == body.data() + wire::envelope_size
               && payload.size() == size - wire::envelope_size,
             "the payload is the rest of the body");
  char head[wire::envelope_size];
  wire::write_envelope(*env, head);
  FUZZ_CHECK(std::memcmp(head, body.data(), sizeof(head)) == 0,
             "the envelope re-encodes to other bytes");
  (void) wire::to_string(env->what);
  switch (env->what) {
    case wire::kind::chunk_request:
    case wire::kind::chunk_response:
      check_chunk(env->what, payload);
      break;
    case wire::kind::error: {
      caf::error reason;
      if (decode_error(payload, reason)) {
        (void) describe(reason);
        (void) encode_error(reason);
      } else {
        FUZZ_CHECK(reason == errc::decode_failed, "decode_error's error");
      }
      break;
    }
    case wire::kind::hello: {
      auto theirs = decode<wire::hello>(payload);
      if (!theirs) {
        FUZZ_CHECK(theirs.error() == errc::decode_failed, "hello's error");
        break;
      }
      std::string out;
      FUZZ_CHECK(!encode(*theirs, out) && out == payload,
                 "a hello re-encodes to other bytes");
      auto mine = wire::make_hello("fuzz");
      auto err = wire::check_hello(mine, *theirs);
      FUZZ_CHECK(!err || err == errc::fingerprint_mismatch,
                 "check_hello's error");
      break;
    }
    case wire::kind::request:
    case wire::kind::response:
    case wire::kind::async:
    case wire::kind::shutdown: {
      auto msg = decode_message(env->type, payload);
      if (!msg) {
        auto code = code_of(msg.error());
        FUZZ_CHECK(code == errc::unknown_type || code == errc::decode_failed,
                   "decode_message's error");
        break;
      }
      type_id type = 0;
      std::string out;
      FUZZ_CHECK(!encode_message(*msg, type, out), "re-encoding failed");
      FUZZ_CHECK(type == env->type && out == payload,
                 "a message re-encodes to other bytes");
      break;
    }
  }
  return 0;
}
