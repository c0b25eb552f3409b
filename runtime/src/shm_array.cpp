#include "multiproc/shm_array.hpp"

#include <algorithm>
#include <cstring>
#include <cxxabi.h>
#include <memory>

#include <sys/mman.h>

#include "multiproc/detail/shm_memory.hpp"
#include "multiproc/error.hpp"

namespace multiproc {

namespace {

constexpr uint64_t array_magic = 0x3152524150434d4dull; // "MMCPARR1"
constexpr uint32_t array_version = 1;
/// The header takes the first page; the elements start after it.
constexpr size_t header_bytes = 4096;

struct array_header {
  uint64_t magic;
  uint32_t version;
  uint32_t element_size;
  uint64_t tag;
  uint64_t count;
  /// The element type's mangled name, for errors (truncated).
  char type_name[128];
};

static_assert(sizeof(array_header) <= header_bytes);

std::string readable(const std::string& mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> name{
    abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status),
    std::free};
  return status == 0 && name ? std::string{name.get()} : mangled;
}

} // namespace

namespace detail {

uint64_t array_type_tag(const std::type_info& type, size_t size) noexcept {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char* p = type.name(); *p != '\0'; ++p)
    h = (h ^ static_cast<unsigned char>(*p)) * 0x100000001b3ull;
  return (h ^ size) * 0x100000001b3ull;
}

} // namespace detail

shm_buffer::shm_buffer(shm_buffer&& other) noexcept {
  *this = std::move(other);
}

shm_buffer& shm_buffer::operator=(shm_buffer&& other) noexcept {
  if (this != &other) {
    if (base_ != nullptr)
      ::munmap(base_, size_);
    fd_ = std::move(other.fd_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    data_ = std::exchange(other.data_, nullptr);
    count_ = std::exchange(other.count_, 0);
  }
  return *this;
}

shm_buffer::~shm_buffer() {
  if (base_ != nullptr)
    ::munmap(base_, size_);
}

caf::expected<shm_buffer> shm_buffer::create(uint64_t count,
                                             uint32_t element_size,
                                             uint64_t tag,
                                             const std::string& type_name) {
  if (count == 0 || element_size == 0)
    return make_error(errc::invalid_argument,
                      "a shared array needs at least one element of at "
                      "least one byte");
  if (count > max_shm_array_bytes / element_size)
    return make_error(errc::invalid_argument,
                      "a shared array of " + std::to_string(count)
                        + " elements of " + std::to_string(element_size)
                        + " bytes is larger than 1 TiB");
  auto fd = detail::create_sealed_memfd(
    "multiproc-array", header_bytes + count * element_size, "a shared array");
  if (!fd)
    return std::move(fd.error());
  auto m = detail::map_shared(fd->get(), header_bytes, "a shared array");
  if (!m)
    return std::move(m.error());
  auto* h = new (m->base) array_header{};
  h->magic = array_magic;
  h->version = array_version;
  h->element_size = element_size;
  h->tag = tag;
  h->count = count;
  std::strncpy(h->type_name, type_name.c_str(), sizeof(h->type_name) - 1);
  shm_buffer b;
  b.fd_ = std::move(*fd);
  b.base_ = m->base;
  b.size_ = m->size;
  b.data_ = static_cast<char*>(m->base) + header_bytes;
  b.count_ = count;
  return b;
}

caf::expected<shm_buffer> shm_buffer::attach(unique_fd fd,
                                             uint32_t element_size,
                                             uint64_t tag,
                                             const std::string& type_name) {
  if (!fd)
    return make_error(errc::invalid_argument,
                      "attach needs a shared array descriptor, got none");
  auto m = detail::map_shared(fd.get(), header_bytes, "a shared array");
  if (!m)
    return std::move(m.error());
  shm_buffer b;
  b.base_ = m->base;
  b.size_ = m->size;
  const auto& h = *static_cast<const array_header*>(m->base);
  auto where = "descriptor " + std::to_string(fd.get());
  if (h.magic != array_magic || h.version != array_version)
    return make_error(errc::invalid_argument,
                      where + " is not a multiproc shared array (layout "
                        + std::to_string(h.version) + ")");
  if (h.element_size == 0 || h.count == 0
      || header_bytes + h.count * h.element_size != m->size)
    return make_error(errc::invalid_argument,
                      where + " holds a shared array with an inconsistent "
                              "header");
  if (h.tag != tag || h.element_size != element_size) {
    std::string theirs{h.type_name, strnlen(h.type_name, sizeof(h.type_name))};
    return make_error(errc::type_mismatch,
                      where + " holds an array of " + readable(theirs) + " ("
                        + std::to_string(h.element_size)
                        + "-byte elements), not of " + readable(type_name)
                        + " (" + std::to_string(element_size) + " bytes)");
  }
  b.fd_ = std::move(fd);
  b.data_ = static_cast<char*>(m->base) + header_bytes;
  b.count_ = h.count;
  return b;
}

} // namespace multiproc
