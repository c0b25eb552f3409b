#pragma once

/// Flat archives: a fast path for values whose Cereal encoding is a plain
/// sequence of bytes, used by queue<T> (one value per message, millions per
/// second). Constructing a cereal::OutputArchive/InputArchive builds and
/// destroys several hash tables (shared pointers, polymorphic types, class
/// versions): for a 64-byte message that costs more than the copy itself.
///
/// A flat archive understands a subset of what Cereal's binary archives
/// (wire_archive.hpp) do, and writes exactly the same bytes for it:
/// arithmetic values, enums (as their underlying type), binary_data,
/// name-value pairs, std::string, arrays (std::array and built-in) of
/// arithmetic values, and
/// classes with a member `serialize(Archive&)` (no version parameter) made
/// of these. Anything else (a base_class, a container, a shared pointer, a
/// versioned or split save/load class, ...) marks the archive as failed
/// (ok() is false) instead of failing to compile; the caller then encodes
/// or decodes the value again with the full Cereal archive. Malformed input
/// fails the same way, so that Cereal reports the error.
///
/// Not thread-safe (one archive per call); the archive references its
/// output string or input bytes.

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <cereal/cereal.hpp>

namespace multiproc::detail {

template <class T>
struct is_flat_binary_data : std::false_type {};

template <class T>
struct is_flat_binary_data<cereal::BinaryData<T>> : std::true_type {};

template <class T>
struct is_flat_nvp : std::false_type {};

template <class T>
struct is_flat_nvp<cereal::NameValuePair<T>> : std::true_type {};

template <class T>
struct is_flat_array : std::false_type {};

template <class T, size_t N>
struct is_flat_array<std::array<T, N>> : std::is_arithmetic<T> {};

template <class T, size_t N>
struct is_flat_array<T[N]> : std::is_arithmetic<T> {};

template <class Archive, class T, class = void>
struct has_flat_serialize : std::false_type {};

template <class Archive, class T>
struct has_flat_serialize<
  Archive, T,
  std::void_t<decltype(cereal::access::member_serialize(
    std::declval<Archive&>(), std::declval<T&>()))>> : std::true_type {};

/// Appends the flat encoding of values to a string (see above).
class flat_output_archive {
public:
  using is_loading = std::false_type;
  using is_saving = std::true_type;

  explicit flat_output_archive(std::string& out) noexcept : out_(out) {}

  template <class... Ts>
  flat_output_archive& operator()(Ts&&... xs) {
    (process(xs), ...);
    return *this;
  }

  template <class T>
  flat_output_archive& operator&(T&& x) {
    process(x);
    return *this;
  }

  template <class T>
  flat_output_archive& operator<<(T&& x) {
    process(x);
    return *this;
  }

  /// False if a value needed more than this archive understands.
  bool ok() const noexcept { return ok_; }

private:
  template <class T>
  void process(const T& x) {
    if (!ok_)
      return;
    if constexpr (std::is_arithmetic<T>::value) {
      out_.append(reinterpret_cast<const char*>(&x), sizeof(T));
    } else if constexpr (std::is_enum<T>::value) {
      process(static_cast<std::underlying_type_t<T>>(x));
    } else if constexpr (is_flat_binary_data<T>::value) {
      out_.append(static_cast<const char*>(x.data),
                  static_cast<size_t>(x.size));
    } else if constexpr (is_flat_nvp<T>::value) {
      process(x.value);
    } else if constexpr (std::is_same<T, std::string>::value) {
      // Cereal: a u64 size tag, then the characters.
      auto size = static_cast<uint64_t>(x.size());
      out_.append(reinterpret_cast<const char*>(&size), sizeof(size));
      out_.append(x);
    } else if constexpr (is_flat_array<T>::value) {
      out_.append(reinterpret_cast<const char*>(&x), sizeof(x));
    } else if constexpr (has_flat_serialize<flat_output_archive, T>::value) {
      // Cereal casts constness away the same way for a member serialize.
      cereal::access::member_serialize(*this, const_cast<T&>(x));
    } else {
      ok_ = false;
    }
  }

  std::string& out_;
  bool ok_ = true;
};

/// Reads the flat encoding of values from bytes (see above).
class flat_input_archive {
public:
  using is_loading = std::true_type;
  using is_saving = std::false_type;

  explicit flat_input_archive(std::string_view in) noexcept : in_(in) {}

  template <class... Ts>
  flat_input_archive& operator()(Ts&&... xs) {
    (process(xs), ...);
    return *this;
  }

  template <class T>
  flat_input_archive& operator&(T&& x) {
    process(x);
    return *this;
  }

  template <class T>
  flat_input_archive& operator>>(T&& x) {
    process(x);
    return *this;
  }

  /// False if a value needed more than this archive understands, or the
  /// bytes ran out.
  bool ok() const noexcept { return ok_; }

  /// Bytes not yet consumed.
  size_t remaining() const noexcept { return in_.size() - pos_; }

private:
  bool read(void* data, size_t size) noexcept {
    if (size > in_.size() - pos_) {
      ok_ = false;
      return false;
    }
    if (size > 0)
      std::memcpy(data, in_.data() + pos_, size);
    pos_ += size;
    return true;
  }

  template <class T>
  void process(T& x) {
    if (!ok_)
      return;
    if constexpr (std::is_same<T, bool>::value) {
      // Only 0 and 1 are bools (anything else copied into one is undefined
      // behavior); Cereal's archive then reports the byte.
      unsigned char byte = 0;
      if (read(&byte, 1)) {
        ok_ = ok_ && byte <= 1;
        x = byte == 1;
      }
    } else if constexpr (std::is_arithmetic<T>::value) {
      read(&x, sizeof(T));
    } else if constexpr (std::is_enum<T>::value) {
      std::underlying_type_t<T> u{};
      if (read(&u, sizeof(u)))
        x = static_cast<T>(u);
    } else if constexpr (is_flat_binary_data<T>::value) {
      read(x.data, static_cast<size_t>(x.size));
    } else if constexpr (is_flat_nvp<T>::value) {
      process(x.value);
    } else if constexpr (std::is_same<T, std::string>::value) {
      uint64_t size = 0;
      if (!read(&size, sizeof(size)))
        return;
      if (size > remaining()) {
        ok_ = false;
        return;
      }
      x.assign(in_.data() + pos_, static_cast<size_t>(size));
      pos_ += static_cast<size_t>(size);
    } else if constexpr (is_flat_array<T>::value) {
      read(&x, sizeof(x));
    } else if constexpr (has_flat_serialize<flat_input_archive, T>::value) {
      cereal::access::member_serialize(*this, x);
    } else {
      ok_ = false;
    }
  }

  std::string_view in_;
  size_t pos_ = 0;
  bool ok_ = true;
};

} // namespace multiproc::detail

namespace multiproc::detail {

/// Appends the flat encoding of `value` to `out`; false (with `out` in an
/// unspecified state) if the value needs the full Cereal archive.
template <class T>
bool flat_encode(const T& value, std::string& out) noexcept {
  try {
    flat_output_archive ar{out};
    ar(value);
    return ar.ok();
  } catch (...) {
    return false; // the full archive reports it
  }
}

/// Decodes all of `bytes` into `value`; false (with `value` in an
/// unspecified state) if the value needs the full Cereal archive or the
/// bytes are malformed.
template <class T>
bool flat_decode(std::string_view bytes, T& value) noexcept {
  try {
    flat_input_archive ar{bytes};
    ar(value);
    return ar.ok() && ar.remaining() == 0;
  } catch (...) {
    return false;
  }
}

} // namespace multiproc::detail
