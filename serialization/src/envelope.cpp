#include "multiproc/envelope.hpp"

#include <algorithm>
#include <cstring>
#include <iterator>

#include <endian.h>
#include <unistd.h>

#include <caf/atom.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

namespace multiproc::wire {

const char* to_string(kind k) noexcept {
  switch (k) {
    case kind::hello: return "hello";
    case kind::request: return "request";
    case kind::response: return "response";
    case kind::error: return "error";
    case kind::async: return "async";
    case kind::shutdown: return "shutdown";
    case kind::chunk_request: return "chunk_request";
    case kind::chunk_response: return "chunk_response";
  }
  return "unknown";
}

void write_envelope(const envelope& env, char* out) noexcept {
  out[0] = static_cast<char>(env.version);
  out[1] = static_cast<char>(env.what);
  uint16_t flags = htole16(env.flags);
  uint64_t type = htole64(env.type);
  uint64_t rid = htole64(env.request_id);
  std::memcpy(out + 2, &flags, 2);
  std::memcpy(out + 4, &type, 8);
  std::memcpy(out + 12, &rid, 8);
}

caf::expected<envelope> read_envelope(std::string_view body,
                                      std::string_view& payload) {
  if (body.size() < envelope_size)
    return make_error(errc::protocol_error,
                      "a frame of " + std::to_string(body.size())
                        + " bytes is shorter than the "
                        + std::to_string(envelope_size) + "-byte envelope");
  envelope env;
  env.version = static_cast<uint8_t>(body[0]);
  if (env.version != protocol_version)
    return make_error(errc::protocol_error,
                      "wire protocol version " + std::to_string(env.version)
                        + " is not supported (this side speaks version "
                        + std::to_string(protocol_version) + ")");
  auto k = static_cast<uint8_t>(body[1]);
  if (k < static_cast<uint8_t>(kind::hello)
      || k > static_cast<uint8_t>(kind::chunk_response))
    return make_error(errc::protocol_error,
                      "unknown frame kind " + std::to_string(k));
  env.what = static_cast<kind>(k);
  uint16_t flags;
  uint64_t type;
  uint64_t rid;
  std::memcpy(&flags, body.data() + 2, 2);
  std::memcpy(&type, body.data() + 4, 8);
  std::memcpy(&rid, body.data() + 12, 8);
  env.flags = le16toh(flags);
  env.type = le64toh(type);
  env.request_id = le64toh(rid);
  payload = body.substr(envelope_size);
  return env;
}

namespace {

template <class T>
void put_le(char* out, T x) noexcept {
  if constexpr (sizeof(T) == 4)
    x = htole32(x);
  else if constexpr (sizeof(T) == 8)
    x = htole64(x);
  std::memcpy(out, &x, sizeof(T));
}

template <class T>
T get_le(const char* in) noexcept {
  T x;
  std::memcpy(&x, in, sizeof(T));
  if constexpr (sizeof(T) == 4)
    return le32toh(x);
  else if constexpr (sizeof(T) == 8)
    return le64toh(x);
  else
    return x;
}

} // namespace

void append_chunk_request_item(std::string& out, type_id type,
                               std::string_view payload) {
  char head[chunk_request_item_head];
  write_chunk_request_item_head(head, type,
                                static_cast<uint32_t>(payload.size()));
  out.append(head, sizeof(head));
  out.append(payload.data(), payload.size());
}

void write_chunk_request_item_head(char* out, type_id type,
                                   uint32_t size) noexcept {
  put_le<uint64_t>(out, type);
  put_le<uint32_t>(out + 8, size);
}

void write_chunk_response_item_head(char* out, uint32_t index, bool failed,
                                    type_id type, uint32_t size) noexcept {
  put_le<uint32_t>(out, index);
  out[4] = failed ? 1 : 0;
  put_le<uint64_t>(out + 5, type);
  put_le<uint32_t>(out + 13, size);
}

void write_chunk_count(char* out, uint32_t count) noexcept {
  put_le<uint32_t>(out, count);
}

caf::error read_chunk(kind what, std::string_view payload,
                      std::vector<chunk_item>& out) {
  bool response = what == kind::chunk_response;
  auto bad = [&](const std::string& why) {
    return make_error(errc::protocol_error,
                      std::string{"malformed "} + to_string(what)
                        + " frame: " + why);
  };
  if (payload.size() < chunk_count_size)
    return bad("no item count");
  auto count = get_le<uint32_t>(payload.data());
  size_t pos = chunk_count_size;
  size_t head = response ? chunk_response_item_head : chunk_request_item_head;
  out.reserve(out.size() + std::min<size_t>(count, payload.size() / head));
  for (uint32_t i = 0; i < count; ++i) {
    if (payload.size() - pos < head)
      return bad("item " + std::to_string(i) + " of " + std::to_string(count)
                 + " is cut off");
    const char* p = payload.data() + pos;
    uint32_t index = i;
    bool failed = false;
    if (response) {
      index = get_le<uint32_t>(p);
      if (static_cast<uint8_t>(p[4]) > 1)
        return bad("item " + std::to_string(i) + " has status "
                   + std::to_string(static_cast<uint8_t>(p[4])));
      failed = p[4] == 1;
      p += 5;
    }
    auto type = get_le<uint64_t>(p);
    auto size = get_le<uint32_t>(p + 8);
    pos += head;
    if (payload.size() - pos < size)
      return bad("item " + std::to_string(i) + " claims "
                 + std::to_string(size) + " bytes; "
                 + std::to_string(payload.size() - pos) + " are left");
    // Filled in place: an item built on the stack and copied whole stalls
    // on its narrow stores (store forwarding), which showed in profiles.
    auto& item = out.emplace_back();
    item.index = index;
    item.failed = failed;
    item.type = type;
    item.payload = payload.substr(pos, size);
    pos += size;
  }
  if (pos != payload.size())
    return bad(std::to_string(payload.size() - pos)
               + " bytes after the last of " + std::to_string(count)
               + " items");
  return caf::none;
}

hello make_hello(std::string name) {
  auto& reg = message_registry::instance();
  return hello{static_cast<uint32_t>(::getpid()), std::move(name),
               reg.fingerprint(), reg.names()};
}

namespace {

std::string join(const std::vector<std::string>& xs) {
  std::string result = "[";
  for (size_t i = 0; i < xs.size(); ++i) {
    if (i > 0)
      result += ", ";
    result += xs[i];
  }
  return result + "]";
}

} // namespace

caf::error check_hello(const hello& mine, const hello& theirs) {
  if (mine.fingerprint == theirs.fingerprint)
    return caf::none;
  std::vector<std::string> only_mine;
  std::vector<std::string> only_theirs;
  auto a = mine.types;
  auto b = theirs.types;
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  std::set_difference(a.begin(), a.end(), b.begin(), b.end(),
                      std::back_inserter(only_mine));
  std::set_difference(b.begin(), b.end(), a.begin(), a.end(),
                      std::back_inserter(only_theirs));
  return make_error(errc::fingerprint_mismatch,
                    "registered message types differ between " + mine.name
                      + " [" + std::to_string(mine.pid) + "] and "
                      + theirs.name + " [" + std::to_string(theirs.pid)
                      + "]: only in " + mine.name + ": " + join(only_mine)
                      + "; only in " + theirs.name + ": " + join(only_theirs));
}

} // namespace multiproc::wire

namespace multiproc {

caf::error encode_message(const caf::message& msg, type_id& type,
                          std::string& out) {
  if (msg.empty()) {
    type = 0;
    return caf::none;
  }
  if (msg.size() != 1)
    return make_error(errc::encode_failed,
                      "a message must carry exactly one registered value, "
                      "got "
                        + std::to_string(msg.size()) + ": "
                        + caf::to_string(msg));
  auto* entry = message_registry::instance().find(msg, 0);
  if (entry == nullptr) {
    auto rtti = msg.type(0);
    return make_error(errc::unknown_type,
                      std::string{"type "}
                        + (rtti.second ? rtti.second->name()
                                       : caf::to_string(msg))
                        + " is not registered; add MULTIPROC_MESSAGE(T, "
                          "\"name\")");
  }
  type = entry->id;
  auto mark = out.size();
  try {
    entry->encode(msg.at(0), out);
    return caf::none;
  } catch (const std::exception& e) {
    out.resize(mark);
    return make_error(errc::encode_failed, "cannot encode a value of type '"
                                             + entry->name + "': " + e.what());
  }
}

namespace {

/// Finds the registry entry of a type id; consecutive messages are mostly of
/// one type, so the last lookup is remembered.
caf::expected<const message_type*> entry_of(type_id type) {
  thread_local const message_type* last = nullptr;
  auto* entry = last != nullptr && last->id == type
                  ? last
                  : message_registry::instance().find(type);
  if (entry == nullptr) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%016llx",
                  static_cast<unsigned long long>(type));
    return make_error(errc::unknown_type,
                      std::string{"unknown message type id 0x"} + buf);
  }
  if (entry->decode == nullptr)
    return make_error(errc::unknown_type,
                      "message type '" + entry->name
                        + "' has no decoder in this process");
  last = entry;
  return entry;
}

caf::error decode_failure(const message_type& entry, const char* what) {
  return make_error(errc::decode_failed, "payload of type '" + entry.name
                                           + "' failed to decode: " + what);
}

} // namespace

caf::expected<caf::message> decode_message(type_id type,
                                           std::string_view payload) {
  if (type == 0) {
    if (!payload.empty())
      return make_error(errc::decode_failed,
                        "an empty message carries "
                          + std::to_string(payload.size()) + " payload bytes");
    return caf::message{};
  }
  auto entry = entry_of(type);
  if (!entry)
    return std::move(entry.error());
  try {
    return (*entry)->decode(payload);
  } catch (const std::exception& e) {
    return decode_failure(**entry, e.what());
  }
}

caf::expected<caf::mailbox_element_ptr>
decode_mailbox_element(type_id type, std::string_view payload,
                       caf::strong_actor_ptr sender, caf::message_id mid) {
  if (type == 0) {
    auto msg = decode_message(type, payload);
    if (!msg)
      return std::move(msg.error());
    return caf::make_mailbox_element(std::move(sender), mid, {},
                                     std::move(*msg));
  }
  auto entry = entry_of(type);
  if (!entry)
    return std::move(entry.error());
  try {
    return (*entry)->decode_element(payload, std::move(sender), mid);
  } catch (const std::exception& e) {
    return decode_failure(**entry, e.what());
  }
}

caf::error redecode_mailbox_element(type_id type, std::string_view payload,
                                    caf::mailbox_element& element) {
  if (type == 0) {
    auto msg = decode_message(type, payload);
    if (!msg)
      return std::move(msg.error());
    return caf::none;
  }
  auto entry = entry_of(type);
  if (!entry)
    return std::move(entry.error());
  auto& content = element.content();
  if ((*entry)->decode_into == nullptr || content.size() != 1)
    return make_error(errc::unknown_type,
                      "message type '" + (*entry)->name
                        + "' cannot be decoded into an existing element");
  try {
    (*entry)->decode_into(payload, content.get_mutable(0));
    return caf::none;
  } catch (const std::exception& e) {
    return decode_failure(**entry, e.what());
  }
}

std::string encode_error(const caf::error& err) {
  wire::wire_error x;
  x.code = err.code();
  x.category = caf::to_string(err.category());
  x.text = err.category() == caf::atom("multiproc") ? text_of(err)
                                                     : describe(err);
  std::string out;
  detail::wire_output_archive ar{out};
  ar(x);
  return out;
}

bool decode_error(std::string_view payload, caf::error& out) {
  auto x = decode<wire::wire_error>(payload);
  if (!x) {
    out = std::move(x.error());
    return false;
  }
  if (x->code == 0) {
    // Code 0 is no error at all: a caf::error built from it is empty, so the
    // request would fail without an error (found by fuzz/envelope).
    out = make_error(errc::decode_failed,
                     "an error frame carries error code 0 (category '"
                       + x->category + "')");
    return false;
  }
  if (x->category == "multiproc")
    out = make_error(static_cast<errc>(x->code), std::move(x->text));
  else
    out = caf::error{x->code, caf::atom_from_string(x->category),
                     caf::make_message(std::move(x->text))};
  return true;
}

} // namespace multiproc
