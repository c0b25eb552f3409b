// Fuzzes the message decoders of the type registry (serialization/,
// message_registry.hpp): every built-in type (bool ... f64, string, bytes),
// the envelope's own payloads (hello, wire_error) and user-like types made of
// Cereal's containers, through decode_message(), decode_mailbox_element()
// and redecode_mailbox_element(). A value that decodes must encode back to
// the same bytes, and the flat archive (flat_archive.hpp) must agree with
// Cereal's wherever it accepts the bytes.
//
// Input: byte 0 picks the type (registered names, sorted), the rest is the
// payload.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <cereal/types/map.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/vector.hpp>

#include "multiproc/detail/flat_archive.hpp"
#include "multiproc/envelope.hpp"
#include "multiproc/error.hpp"
#include "multiproc/message_registry.hpp"

#include "fuzz_check.hpp"
#include "fuzz_types.hpp"

using namespace multiproc;

namespace {

// A decoded value never encodes to other bytes; for a type with a std::map
// (whose decoder sorts the keys and drops duplicates) the encoding is only
// stable: its decoding encodes to the same bytes again.
void check_round_trip(const message_type& entry, const caf::message& msg,
                      std::string_view payload) {
  type_id type = 0;
  std::string out;
  auto err = encode_message(msg, type, out);
  FUZZ_CHECK(!err, "a decoded value does not encode");
  FUZZ_CHECK(type == entry.id, "the type id changed");
  if (entry.name != "fuzz.nested_record") {
    FUZZ_CHECK(out == payload, "a value re-encodes to other bytes");
    return;
  }
  auto again = decode_message(entry.id, out);
  FUZZ_CHECK(static_cast<bool>(again), "an encoding does not decode");
  std::string out2;
  FUZZ_CHECK(!encode_message(*again, type, out2) && out2 == out,
             "an encoding is not stable");
}

// The flat archive accepts only what Cereal's decodes, and to the same value.
template <class T>
void check_flat(std::string_view payload, bool cereal_ok) {
  T flat{};
  if (!detail::flat_decode(payload, flat))
    return;
  FUZZ_CHECK(cereal_ok, "the flat archive accepts what Cereal refuses");
  auto full = decode<T>(payload);
  FUZZ_CHECK(full && *full == flat, "the flat archive decodes another value");
  std::string out;
  FUZZ_CHECK(detail::flat_encode(flat, out) && out == payload,
             "the flat archive re-encodes to other bytes");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1)
    return 0;
  static const auto names = message_registry::instance().names();
  auto& name = names[data[0] % names.size()];
  auto* entry = message_registry::instance().find(name);
  FUZZ_CHECK(entry != nullptr, "a listed name is not found");
  std::string_view payload{reinterpret_cast<const char*>(data) + 1, size - 1};

  auto msg = decode_message(entry->id, payload);
  if (msg)
    check_round_trip(*entry, *msg, payload);
  else
    FUZZ_CHECK(msg.error() == errc::decode_failed, "decode_message's error");

  auto element = decode_mailbox_element(entry->id, payload, nullptr,
                                        caf::make_message_id());
  FUZZ_CHECK(static_cast<bool>(element) == static_cast<bool>(msg),
             "decode_mailbox_element disagrees with decode_message");
  if (element) {
    check_round_trip(*entry, (*element)->copy_content_to_message(), payload);
    // Decoding again into the element gives the same value.
    auto err = redecode_mailbox_element(entry->id, payload, **element);
    FUZZ_CHECK(!err, "redecode_mailbox_element fails where decode works");
    check_round_trip(*entry, (*element)->copy_content_to_message(), payload);
  }

  if (name == "string")
    check_flat<std::string>(payload, static_cast<bool>(msg));
  else if (name == "fuzz.flat_record")
    check_flat<fuzz_types::flat_record>(payload, static_cast<bool>(msg));
  else if (name == "i64")
    check_flat<int64_t>(payload, static_cast<bool>(msg));
  return 0;
}
