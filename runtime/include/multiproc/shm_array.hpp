#pragma once

/// \file
/// shm_array<T>: a fixed-length array of plain values (trivially copyable
/// T) in anonymous shared memory that several processes map: zero copy,
/// for bulk numeric data. The counterpart of Python's multiprocessing.Array
/// with lock=False, or of a NumPy array on shared_memory, without a name to
/// leak: the memory is a memfd (nothing in /dev/shm) and goes away with the
/// last descriptor and mapping, even when every process is SIGKILLed.
///
///     auto a = multiproc::shm_array<double>::create(1000000);   // parent
///     opts.fds = {a->fd()};                                     // pass it on
///     auto a = multiproc::shm_array<double>::attach(std::move(ctx.fds[0]));
///     (*a)[i] = x;                                              // any process
///
/// Synchronisation is the user's: the elements are plain memory. Give each
/// process its own slice and learn that it is done from something that
/// synchronises (its exit, a queue message); docs/shared_state.md.
///
/// Thread safety: the handle is immutable after create/attach; accesses to
/// the elements follow the C++ memory model as for any shared memory.
///
/// Lifetimes: a handle owns its descriptor and mapping; its destructor
/// unmaps and closes them, and the memory goes away with the last of them in
/// any process. Element pointers are valid while the handle lives. A
/// moved-from handle is empty (valid() false, fd() -1).
///
/// Errors: create() and attach() return caf::expected (invalid_argument,
/// type_mismatch, system_error); nothing throws.

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "multiproc/fd.hpp"

namespace multiproc {

/// The largest shm_array (and shm_buffer) in bytes: 1 TiB.
constexpr uint64_t max_shm_array_bytes = uint64_t{1} << 40;

/// The untyped memory of a shm_array. Move-only; unmaps on destruction.
class shm_buffer {
public:
  /// An empty buffer (valid() false).
  shm_buffer() noexcept = default;
  /// Takes over `other`'s mapping and descriptor; `other` becomes empty.
  shm_buffer(shm_buffer&& other) noexcept;
  /// Unmaps the current memory, then takes over `other`'s.
  shm_buffer& operator=(shm_buffer&& other) noexcept;
  shm_buffer(const shm_buffer&) = delete;
  shm_buffer& operator=(const shm_buffer&) = delete;
  /// Unmaps the memory and closes the descriptor.
  ~shm_buffer();

  /// `count` elements of `element_size` bytes, zero-filled; `tag` and
  /// `type_name` identify the element type for attach(). Errors:
  /// invalid_argument (count or element_size zero, or too large),
  /// system_error.
  static caf::expected<shm_buffer> create(uint64_t count, uint32_t element_size,
                                          uint64_t tag,
                                          const std::string& type_name);

  /// Maps the array behind `fd`. Errors: invalid_argument (not a multiproc
  /// array, an inconsistent header), type_mismatch (an array of another
  /// element type than `type_name`), system_error.
  static caf::expected<shm_buffer> attach(unique_fd fd, uint32_t element_size,
                                          uint64_t tag,
                                          const std::string& type_name);

  /// The first element (aligned to 64 bytes).
  void* data() const noexcept {
    return data_;
  }
  /// The number of elements (0 for an empty buffer).
  uint64_t count() const noexcept {
    return count_;
  }
  /// The memfd, to pass to another process; owned by the handle.
  int fd() const noexcept {
    return fd_.get();
  }
  /// True unless empty (default-constructed or moved from).
  bool valid() const noexcept {
    return base_ != nullptr;
  }

private:
  unique_fd fd_;
  void* base_ = nullptr;
  size_t size_ = 0;
  void* data_ = nullptr;
  uint64_t count_ = 0;
};

namespace detail {

/// Identifies T in an array's header: a hash of its mangled name and size.
uint64_t array_type_tag(const std::type_info& type, size_t size) noexcept;

} // namespace detail

/// A typed view of a shm_buffer; the contract is at the top of this header.
/// Move-only. Bounds are not checked.
template <class T>
class shm_array {
public:
  static_assert(std::is_trivially_copyable<T>::value,
                "shm_array holds plain values: T must be trivially copyable");

  /// An empty array (valid() false).
  shm_array() noexcept = default;

  /// An array of `count` zero-filled elements in new shared memory. Errors:
  /// invalid_argument (count zero, or above max_shm_array_bytes),
  /// system_error.
  static caf::expected<shm_array> create(size_t count) {
    auto buf = shm_buffer::create(count, sizeof(T), tag(), typeid(T).name());
    if (!buf)
      return std::move(buf.error());
    return shm_array{std::move(*buf)};
  }

  /// Maps the array behind `fd` (another handle's fd(), e.g. received in
  /// child_context::fds). Errors: type_mismatch, invalid_argument,
  /// system_error (as shm_buffer::attach()).
  static caf::expected<shm_array> attach(unique_fd fd) {
    auto buf = shm_buffer::attach(std::move(fd), sizeof(T), tag(),
                                  typeid(T).name());
    if (!buf)
      return std::move(buf.error());
    return shm_array{std::move(*buf)};
  }

  /// The first element (aligned to 64 bytes); nullptr for an empty array.
  T* data() const noexcept {
    return static_cast<T*>(buf_.data());
  }
  /// The number of elements.
  size_t size() const noexcept {
    return static_cast<size_t>(buf_.count());
  }
  /// Element `i` (unchecked: `i` < size()).
  T& operator[](size_t i) const noexcept {
    return data()[i];
  }
  /// data(), for range-for.
  T* begin() const noexcept {
    return data();
  }
  /// One past the last element.
  T* end() const noexcept {
    return data() + size();
  }
  /// The memfd, to pass to another process (process_options::fds); owned by
  /// the handle; -1 for an empty array.
  int fd() const noexcept {
    return buf_.fd();
  }
  /// True unless empty (default-constructed or moved from).
  bool valid() const noexcept {
    return buf_.valid();
  }

private:
  explicit shm_array(shm_buffer buf) noexcept : buf_(std::move(buf)) {
  }

  static uint64_t tag() noexcept {
    return detail::array_type_tag(typeid(T), sizeof(T));
  }

  shm_buffer buf_;
};

} // namespace multiproc
