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
      || k > static_cast<uint8_t>(kind::shutdown))
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
  if (x->category == "multiproc")
    out = make_error(static_cast<errc>(x->code), std::move(x->text));
  else
    out = caf::error{x->code, caf::atom_from_string(x->category),
                     caf::make_message(std::move(x->text))};
  return true;
}

} // namespace multiproc
