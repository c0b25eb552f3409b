#pragma once

/// \file
/// The envelope: the fixed 20-byte header at the start of every frame body,
/// then the payload (docs/wire_format.md):
///
///     offset size field
///     0      1    version      (wire::protocol_version)
///     1      1    kind         (wire::kind)
///     2      2    flags        (0; reserved)
///     4      8    type id      (FNV-1a 64 of the type's stable name; 0: empty)
///     12     8    request id   (0 for messages that expect no reply)
///     20     ...  payload      (Cereal binary encoding of one value)
///
/// All integers are little-endian. Pure functions; thread-safe. Errors are
/// values (protocol_error, unknown_type, encode_failed, decode_failed,
/// fingerprint_mismatch): Cereal's exceptions are caught here.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/message.hpp>

#include "multiproc/message_registry.hpp"

/// The wire protocol between a parent and its workers (docs/wire_format.md).
namespace multiproc::wire {

/// The envelope's `version` this build writes and accepts.
constexpr uint8_t protocol_version = 2;
/// Bytes of an envelope, before the payload.
constexpr size_t envelope_size = 20;

/// What a frame carries.
enum class kind : uint8_t {
  hello = 1,    ///< handshake: a `hello` payload, sent first by both ends
  request = 2,  ///< a message that expects a reply with the same request id
  response = 3, ///< the reply to a request
  error = 4,    ///< the reply to a request is an error (`wire_error` payload)
  async = 5,    ///< a message that expects no reply
  shutdown = 6, ///< the parent asks the worker to finish and exit
  chunk_request = 7,  ///< several requests in one frame (chunk items)
  chunk_response = 8, ///< outcomes of some items of a chunk_request
};

/// "hello", "request", ...
const char* to_string(kind k) noexcept;

/// The decoded fields of an envelope (the table above).
struct envelope {
  uint8_t version = protocol_version; ///< wire::protocol_version
  kind what = kind::async;            ///< what the frame carries
  uint16_t flags = 0;                 ///< reserved, 0
  type_id type = 0;                   ///< the payload's type id; 0: empty
  uint64_t request_id = 0;            ///< pairs a response with its request
};

/// Writes `env` into `out` (envelope_size bytes).
void write_envelope(const envelope& env, char* out) noexcept;

/// Parses the envelope at the start of `body`; `payload` receives the rest.
/// Fails with protocol_error for a short body, another version or an unknown
/// kind.
caf::expected<envelope> read_envelope(std::string_view body,
                                      std::string_view& payload);

/// The payload of a `kind::error` frame.
struct wire_error {
  uint8_t code = 0;     ///< the error's code within its category
  std::string category; ///< the category atom, e.g. "multiproc"
  std::string text;     ///< multiproc: text_of(); others: describe()
  /// Cereal.
  template <class Archive>
  void serialize(Archive& ar) {
    ar(code, category, text);
  }
};

/// The payload of a `kind::hello` frame.
struct hello {
  uint32_t pid = 0;               ///< the sender's pid
  std::string name;               ///< the sender's process name
  uint64_t fingerprint = 0;       ///< message_registry::fingerprint()
  std::vector<std::string> types; ///< the registered type names
  /// Cereal.
  template <class Archive>
  void serialize(Archive& ar) {
    ar(pid, name, fingerprint, types);
  }
};

/// One item of a chunk frame (docs/wire_format.md, "Chunks"). In a
/// chunk_request, `index` is the item's position and `failed` is false; in a
/// chunk_response, `index` names the request item it answers and `failed`
/// marks an error (`payload` is then a wire_error).
struct chunk_item {
  uint32_t index = 0;       ///< position (request) or the answered item
  bool failed = false;      ///< response only: `payload` is a wire_error
  type_id type = 0;         ///< the payload's type id
  std::string_view payload; ///< into the frame; valid while the frame is
};

/// Bytes before an item's payload: a request item {u64 type, u32 size}; a
/// response item {u32 index, u8 failed, u64 type, u32 size}.
constexpr size_t chunk_request_item_head = 12;
/// Bytes before a response item's payload (see chunk_request_item_head).
constexpr size_t chunk_response_item_head = 17;
/// Bytes of the item count at the start of a chunk payload.
constexpr size_t chunk_count_size = 4;

/// Appends a request item to a chunk payload.
void append_chunk_request_item(std::string& out, type_id type,
                               std::string_view payload);

/// Writes the head of a request item whose payload is `size` bytes (for a
/// payload encoded in place after chunk_request_item_head bytes).
void write_chunk_request_item_head(char* out, type_id type,
                                   uint32_t size) noexcept;

/// Writes the head of a response item whose payload is `size` bytes.
void write_chunk_response_item_head(char* out, uint32_t index, bool failed,
                                    type_id type, uint32_t size) noexcept;

/// Writes the item count at the start of a chunk payload.
void write_chunk_count(char* out, uint32_t count) noexcept;

/// Splits a chunk payload into its items (appended to `out`). Fails with
/// protocol_error, naming the item, if a size runs past the payload or the
/// count does not match the items.
caf::error read_chunk(kind what, std::string_view payload,
                      std::vector<chunk_item>& out);

/// This process's hello.
hello make_hello(std::string name);

/// Compares a peer's hello with ours; fingerprint_mismatch names the types
/// only one side has.
caf::error check_hello(const hello& mine, const hello& theirs);

} // namespace multiproc::wire

namespace multiproc {

/// Encodes a CAF message of zero or one registered values: sets `type` (0 for
/// an empty message) and appends the payload to `out`. Fails with
/// unknown_type (naming the C++ type) or encode_failed.
caf::error encode_message(const caf::message& msg, type_id& type,
                          std::string& out);

/// Decodes a payload of type `type` into a CAF message. Fails with
/// unknown_type (naming the id) or decode_failed.
caf::expected<caf::message> decode_message(type_id type,
                                           std::string_view payload);

/// Decodes a payload straight into a mailbox element from `sender` with
/// message id `mid` (one allocation instead of two). Errors as for
/// decode_message().
caf::expected<caf::mailbox_element_ptr>
decode_mailbox_element(type_id type, std::string_view payload,
                       caf::strong_actor_ptr sender, caf::message_id mid);

/// Decodes a payload of type `type` into `element`, an element that
/// decode_mailbox_element() made for the same type, replacing its value:
/// a receiver that reuses its elements allocates nothing per message.
/// Errors as for decode_message(); on error the element stays valid.
caf::error redecode_mailbox_element(type_id type, std::string_view payload,
                                    caf::mailbox_element& element);

/// Encodes an error for a `kind::error` frame.
std::string encode_error(const caf::error& err);

/// Decodes a `kind::error` payload into `out`. Returns false, with the
/// decode_failed error in `out`, if the payload is malformed.
bool decode_error(std::string_view payload, caf::error& out);

} // namespace multiproc
