#pragma once

/// \file
/// The message type registry: every type that crosses a process boundary is
/// registered once, at static-initialisation time, under a stable name:
///
///     struct square { int value; template <class A> void serialize(A& a) { a(value); } };
///     MULTIPROC_MESSAGE(square, "example.square");   // at global scope
///
/// The line also lets the type travel in CAF messages inside a process, so
/// users never write CAF inspect functions. A type's wire id is the 64-bit
/// FNV-1a hash of its name (docs/wire_format.md). Two names with the same id,
/// or one name for two types, abort at start-up with a message naming both.
///
/// Thread safety: registration happens during static initialisation; lookups
/// are safe from any thread afterwards (add() takes no lock: never call it
/// once threads run).
///
/// Lifetimes: the registry lives for the whole program; a message_type
/// pointer that find() returns stays valid until exit.
///
/// Errors: encode() and decode() catch Cereal's exceptions and return
/// encode_failed / decode_failed; a registration conflict aborts.

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <typeindex>
#include <type_traits>
#include <typeinfo>
#include <vector>

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/expected.hpp>
#include <caf/mailbox_element.hpp>
#include <caf/make_message.hpp>
#include <caf/message.hpp>
#include <caf/type_nr.hpp>

#include "multiproc/detail/wire_archive.hpp"
#include "multiproc/error.hpp"

namespace multiproc {

/// A message type's wire id: FNV-1a 64 of its stable name; 0 means "empty".
using type_id = uint64_t;

/// Returns the wire id of a stable name.
constexpr type_id type_id_of(std::string_view name) noexcept {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : name) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  return h == 0 ? 1 : h;
}

/// What the registry knows about one message type.
struct message_type {
  /// The stable name given to MULTIPROC_MESSAGE.
  std::string name;
  /// type_id_of(name).
  type_id id;
  /// The C++ type.
  std::type_index type;
  /// CAF's builtin type number (0 for user types).
  uint16_t caf_type_nr;
  /// Appends the encoding of `*value` (a T) to `out`; throws on failure.
  void (*encode)(const void* value, std::string& out);
  /// Decodes a T and wraps it into a caf::message; throws on failure.
  caf::message (*decode)(std::string_view bytes);
  /// Decodes a T straight into a mailbox element (one allocation); throws
  /// on failure.
  caf::mailbox_element_ptr (*decode_element)(std::string_view bytes,
                                             caf::strong_actor_ptr sender,
                                             caf::message_id mid);
  /// Decodes a T into an existing T at `value` (replacing it); throws on
  /// failure, leaving `*value` valid.
  void (*decode_into)(std::string_view bytes, void* value);
};

/// The process-wide set of registered message types (a singleton).
class message_registry {
public:
  /// The registry of this process.
  static message_registry& instance();

  /// Adds a type; aborts the program with a clear message on a conflict.
  void add(message_type entry);

  /// The type with wire id `id`, or nullptr.
  const message_type* find(type_id id) const noexcept;
  /// The registered entry of C++ type `type`, or nullptr.
  const message_type* find(const std::type_info& type) const noexcept;
  /// The type registered under `name`, or nullptr.
  const message_type* find(const std::string& name) const noexcept;
  /// Finds the type of element `pos` of a CAF message.
  const message_type* find(const caf::message& msg, size_t pos) const noexcept;

  /// All registered names, sorted.
  std::vector<std::string> names() const;

  /// A hash over all registered names: both ends of a channel compare it.
  uint64_t fingerprint() const noexcept;

private:
  message_registry() = default;
  struct impl;
  impl& data() const;
};

namespace detail {

// An arithmetic value's encoding is its bytes (what the archive's save
// function for it writes); without an archive it costs a fraction.

template <class T>
void encode_value(const void* value, std::string& out) {
  if constexpr (std::is_arithmetic<T>::value) {
    out.append(static_cast<const char*>(value), sizeof(T));
  } else {
    wire_output_archive ar{out};
    ar(*static_cast<const T*>(value));
  }
}

/// Like encode_value, but large byte ranges are referenced in `gather`.
template <class T>
void encode_value_gather(const void* value, std::string& out,
                         gather_list* gather) {
  wire_output_archive ar{out, gather};
  ar(*static_cast<const T*>(value));
}

template <class T>
T decode_value(std::string_view bytes) {
  T value{};
  if constexpr (std::is_arithmetic<T>::value) {
    if (bytes.size() != sizeof(T))
      throw wire_decode_error(
        bytes.size() < sizeof(T)
          ? "needs " + std::to_string(sizeof(T)) + " bytes, only "
              + std::to_string(bytes.size()) + " left"
          : std::to_string(bytes.size() - sizeof(T))
              + " trailing bytes after the value");
    if constexpr (std::is_same<T, bool>::value)
      value = bool_from_byte(static_cast<unsigned char>(bytes[0]));
    else
      std::memcpy(&value, bytes.data(), sizeof(T));
  } else {
    wire_input_archive ar{bytes};
    ar(value);
    if (ar.remaining() != 0)
      throw wire_decode_error(std::to_string(ar.remaining())
                              + " trailing bytes after the value");
  }
  return value;
}

template <class T>
caf::message decode_message(std::string_view bytes) {
  return caf::make_message(decode_value<T>(bytes));
}

template <class T>
caf::mailbox_element_ptr decode_element(std::string_view bytes,
                                        caf::strong_actor_ptr sender,
                                        caf::message_id mid) {
  return caf::make_mailbox_element(std::move(sender), mid, {},
                                   decode_value<T>(bytes));
}

template <class T>
void decode_into(std::string_view bytes, void* value) {
  *static_cast<T*>(value) = decode_value<T>(bytes);
}

template <class T>
bool register_message(const char* name) {
  message_registry::instance().add(message_type{
    name, type_id_of(name), std::type_index{typeid(T)},
    caf::type_nr<T>::value, &encode_value<T>, &decode_message<T>,
    &decode_element<T>, &decode_into<T>});
  return true;
}

} // namespace detail

/// A readable name of T for error texts: its registered name if it has
/// one, else its demangled C++ name.
std::string type_name_of(const std::type_info& type);

/// type_name_of(typeid(T)).
template <class T>
std::string type_name_of() {
  return type_name_of(typeid(T));
}

/// T's registered type id. Errors: unknown_type naming T and the macro that
/// registers it.
template <class T>
caf::expected<type_id> registered_id_of() {
  auto* entry = message_registry::instance().find(typeid(T));
  if (entry == nullptr)
    return make_error(errc::unknown_type,
                      "type " + type_name_of<T>()
                        + " is not registered; add MULTIPROC_MESSAGE(T, "
                          "\"name\")");
  return entry->id;
}

/// Encodes a registered value into `out` (appending). Fails with
/// encode_failed naming the type and Cereal's reason.
template <class T>
caf::error encode(const T& value, std::string& out) {
  try {
    detail::encode_value<T>(&value, out);
    return caf::none;
  } catch (const std::exception& e) {
    return make_error(errc::encode_failed,
                      std::string{"cannot encode a value of type "}
                        + typeid(T).name() + ": " + e.what());
  }
}

/// Decodes a T from `bytes` (the whole view must be consumed). Fails with
/// decode_failed naming the type and the reason.
template <class T>
caf::expected<T> decode(std::string_view bytes) {
  try {
    return detail::decode_value<T>(bytes);
  } catch (const std::exception& e) {
    auto* entry = message_registry::instance().find(typeid(T));
    return make_error(errc::decode_failed,
                      "payload of type '"
                        + (entry ? entry->name : std::string{typeid(T).name()})
                        + "' failed to decode: " + e.what());
  }
}

} // namespace multiproc

#define MULTIPROC_PP_CAT_I(a, b) a##b
#define MULTIPROC_PP_CAT(a, b) MULTIPROC_PP_CAT_I(a, b)

/// Registers message type `T` under the stable name `name` (a string literal).
/// Use once per type, at global namespace scope, in one .cpp or a header.
#define MULTIPROC_MESSAGE(T, name)                                             \
  CAF_ALLOW_UNSAFE_MESSAGE_TYPE(T)                                             \
  static const bool MULTIPROC_PP_CAT(multiproc_message_registered_,            \
                                     __COUNTER__)                              \
    = ::multiproc::detail::register_message<T>(name);
