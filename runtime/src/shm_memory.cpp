#include "multiproc/detail/shm_memory.hpp"

#include <cerrno>
#include <string>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "multiproc/error.hpp"

namespace multiproc::detail {

caf::expected<unique_fd> create_sealed_memfd(const char* name, uint64_t size,
                                             const char* what) {
  unique_fd fd{static_cast<int>(
    ::syscall(SYS_memfd_create, name, MFD_CLOEXEC | MFD_ALLOW_SEALING))};
  if (!fd)
    return make_system_error(std::string{"memfd_create for "} + what, errno);
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0)
    return make_system_error(std::string{"ftruncate of "} + what + " to "
                               + std::to_string(size) + " bytes",
                             errno);
  ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  return fd;
}

caf::expected<shared_mapping> map_shared(int fd, size_t min_size,
                                         const char* what) {
  struct stat st;
  if (::fstat(fd, &st) != 0)
    return make_system_error("fstat of " + std::string{what} + " descriptor "
                               + std::to_string(fd),
                             errno);
  if (static_cast<size_t>(st.st_size) < min_size)
    return make_error(errc::invalid_argument,
                      "descriptor " + std::to_string(fd) + " is not "
                        + std::string{what} + " ("
                        + std::to_string(st.st_size) + " bytes)");
  shared_mapping m;
  m.size = static_cast<size_t>(st.st_size);
  m.base = ::mmap(nullptr, m.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m.base == MAP_FAILED)
    return make_system_error("mmap of " + std::string{what} + " descriptor "
                               + std::to_string(fd),
                             errno);
  return m;
}

} // namespace multiproc::detail
