#pragma once

/// Anonymous shared memory for the queue transport and shared arrays: a
/// memfd sealed against resizing (nothing is named in /dev/shm; the memory
/// goes away with the last descriptor and mapping) and its mapping.

#include <cstddef>
#include <cstdint>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "multiproc/fd.hpp"

namespace multiproc::detail {

/// Creates a memfd called `name` of `size` bytes (zero-filled), sealed
/// against shrinking and growing: nobody can resize it under a mapping.
/// `what` names the object in errors ("a queue"). Errors: system_error.
caf::expected<unique_fd> create_sealed_memfd(const char* name, uint64_t size,
                                             const char* what);

/// A read-write shared mapping of a whole descriptor.
struct shared_mapping {
  void* base = nullptr;
  size_t size = 0;
};

/// Maps all of `fd` (at least `min_size` bytes, else invalid_argument naming
/// `what`). Errors: invalid_argument, system_error.
caf::expected<shared_mapping> map_shared(int fd, size_t min_size,
                                         const char* what);

} // namespace multiproc::detail
