#pragma once

/// Cereal archives for multiproc's payloads. The bytes are those of Cereal's
/// BinaryArchive (host byte order, no metadata), but the output archive
/// appends straight to a std::string (no ostream per message) and the input
/// archive reads from a memory view with bounds checks: a size prefix larger
/// than the bytes left is rejected before anything is allocated, so a
/// malicious length cannot make the decoder allocate gigabytes.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <cereal/cereal.hpp>

namespace multiproc::detail {

/// Large byte ranges that an output archive referenced instead of copying
/// (scatter-gather): the frame is then written from the value's own memory.
/// Valid only while the encoded value is alive and unchanged.
struct gather_list {
  /// Ranges at least this long are referenced, not copied.
  static constexpr size_t threshold = 64 * 1024;
  static constexpr size_t max_refs = 6;
  struct ref {
    size_t offset;          // where the range belongs in the encoded bytes
    std::string_view bytes; // the range itself
  };
  ref items[max_refs];
  size_t size = 0;

  /// Fills `parts` (room for 2 * max_refs + 1) with the encoding in order;
  /// returns how many parts it used.
  size_t parts(const std::string& encoded, std::string_view* out) const {
    size_t n = 0;
    size_t pos = 0;
    for (size_t i = 0; i < size; ++i) {
      out[n++] = std::string_view{encoded}.substr(pos, items[i].offset - pos);
      out[n++] = items[i].bytes;
      pos = items[i].offset;
    }
    out[n++] = std::string_view{encoded}.substr(pos);
    return n;
  }
};

/// Appends Cereal binary encodings to a std::string.
class wire_output_archive
  : public cereal::OutputArchive<wire_output_archive,
                                 cereal::AllowEmptyClassElision> {
public:
  explicit wire_output_archive(std::string& out, gather_list* gather = nullptr)
    : cereal::OutputArchive<wire_output_archive,
                            cereal::AllowEmptyClassElision>(this),
      out_(out),
      gather_(gather) {
  }

  void save_binary(const void* data, size_t size) {
    if (size == 0)
      return;
    if (gather_ != nullptr && size >= gather_list::threshold
        && gather_->size < gather_list::max_refs) {
      gather_->items[gather_->size++]
        = {out_.size(), {static_cast<const char*>(data), size}};
      return;
    }
    out_.append(static_cast<const char*>(data), size);
  }

private:
  std::string& out_;
  gather_list* gather_;
};

/// Thrown by wire_input_archive on malformed input; caught in serialization/.
class wire_decode_error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// Reads Cereal binary encodings from a memory view.
class wire_input_archive
  : public cereal::InputArchive<wire_input_archive,
                                cereal::AllowEmptyClassElision> {
public:
  explicit wire_input_archive(std::string_view in)
    : cereal::InputArchive<wire_input_archive,
                           cereal::AllowEmptyClassElision>(this),
      in_(in) {
  }

  void load_binary(void* data, size_t size) {
    if (size > in_.size() - pos_)
      throw wire_decode_error("needs " + std::to_string(size)
                              + " more bytes, only "
                              + std::to_string(in_.size() - pos_) + " left");
    if (size == 0)
      return;
    std::memcpy(data, in_.data() + pos_, size);
    pos_ += size;
  }

  /// Bytes not yet consumed.
  size_t remaining() const noexcept { return in_.size() - pos_; }

  /// Consumes `size` bytes and returns a view of them.
  std::string_view take(size_t size) {
    if (size > in_.size() - pos_)
      throw wire_decode_error("needs " + std::to_string(size)
                              + " more bytes, only "
                              + std::to_string(in_.size() - pos_) + " left");
    auto result = in_.substr(pos_, size);
    pos_ += size;
    return result;
  }

private:
  std::string_view in_;
  size_t pos_ = 0;
};

// -- arithmetic types ---------------------------------------------------------

template <class T>
std::enable_if_t<std::is_arithmetic<T>::value>
CEREAL_SAVE_FUNCTION_NAME(wire_output_archive& ar, const T& x) {
  ar.save_binary(std::addressof(x), sizeof(T));
}

template <class T>
std::enable_if_t<std::is_arithmetic<T>::value && !std::is_same<T, bool>::value>
CEREAL_LOAD_FUNCTION_NAME(wire_input_archive& ar, T& x) {
  ar.load_binary(std::addressof(x), sizeof(T));
}

/// Throws unless `byte`, the encoding of a bool, is 0 or 1: any other value
/// copied into a bool is undefined behavior (found by fuzz/message).
inline bool bool_from_byte(unsigned char byte) {
  if (byte > 1)
    throw wire_decode_error("a bool is encoded as 0 or 1, not "
                            + std::to_string(byte));
  return byte == 1;
}

inline void CEREAL_LOAD_FUNCTION_NAME(wire_input_archive& ar, bool& x) {
  unsigned char byte = 0;
  ar.load_binary(&byte, 1);
  x = bool_from_byte(byte);
}

// -- name-value pairs: the name is dropped ------------------------------------

template <class Archive, class T>
CEREAL_ARCHIVE_RESTRICT(wire_input_archive, wire_output_archive)
CEREAL_SERIALIZE_FUNCTION_NAME(Archive& ar, cereal::NameValuePair<T>& x) {
  ar(x.value);
}

// -- size tags: checked against the bytes left --------------------------------

template <class T>
void CEREAL_SAVE_FUNCTION_NAME(wire_output_archive& ar,
                               const cereal::SizeTag<T>& x) {
  ar(x.size);
}

template <class T>
void CEREAL_LOAD_FUNCTION_NAME(wire_input_archive& ar, cereal::SizeTag<T>& x) {
  ar(x.size);
  // Every element takes at least one byte on the wire (empty classes aside).
  if (static_cast<uint64_t>(x.size) > ar.remaining())
    throw wire_decode_error("a size prefix of " + std::to_string(x.size)
                            + " exceeds the " + std::to_string(ar.remaining())
                            + " bytes left");
}

// -- contiguous binary data ---------------------------------------------------

template <class T>
void CEREAL_SAVE_FUNCTION_NAME(wire_output_archive& ar,
                               const cereal::BinaryData<T>& x) {
  ar.save_binary(x.data, static_cast<size_t>(x.size));
}

template <class T>
void CEREAL_LOAD_FUNCTION_NAME(wire_input_archive& ar,
                               cereal::BinaryData<T>& x) {
  ar.load_binary(x.data, static_cast<size_t>(x.size));
}

// -- byte containers: one copy, no zero-fill first ---------------------------
//
// Cereal's generic loaders resize (zero-filling) and then copy; for byte
// buffers these overloads copy once. The encoding is Cereal's: a uint64 size
// followed by the bytes.

template <class Container>
void load_bytes(wire_input_archive& ar, Container& out) {
  uint64_t size = 0;
  ar.load_binary(&size, sizeof(size));
  if (size > ar.remaining())
    throw wire_decode_error("a size prefix of " + std::to_string(size)
                            + " exceeds the " + std::to_string(ar.remaining())
                            + " bytes left");
  auto bytes = ar.take(static_cast<size_t>(size));
  using value_type = typename Container::value_type;
  auto* first = reinterpret_cast<const value_type*>(bytes.data());
  out.assign(first, first + bytes.size());
}

inline void CEREAL_LOAD_FUNCTION_NAME(wire_input_archive& ar,
                                      std::vector<char>& x) {
  load_bytes(ar, x);
}

inline void CEREAL_LOAD_FUNCTION_NAME(wire_input_archive& ar,
                                      std::vector<unsigned char>& x) {
  load_bytes(ar, x);
}

inline void CEREAL_LOAD_FUNCTION_NAME(wire_input_archive& ar,
                                      std::vector<signed char>& x) {
  load_bytes(ar, x);
}

inline void CEREAL_LOAD_FUNCTION_NAME(wire_input_archive& ar, std::string& x) {
  load_bytes(ar, x);
}

} // namespace multiproc::detail

CEREAL_REGISTER_ARCHIVE(multiproc::detail::wire_output_archive)
CEREAL_REGISTER_ARCHIVE(multiproc::detail::wire_input_archive)
CEREAL_SETUP_ARCHIVE_TRAITS(multiproc::detail::wire_input_archive,
                            multiproc::detail::wire_output_archive)
