#pragma once

// The owner of shared cells: one thread that serves every client connection
// of an abstract Unix socket, one frame at a time (docs/wire_format.md,
// "Shared state"). It is the shared-state actor: its mailbox is the set of
// connections, its state the cells, and nothing else touches the cells.

#include <memory>
#include <string>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "multiproc/fd.hpp"

namespace multiproc::detail {

/// Fills a sockaddr_un for the abstract socket `address`; returns its length
/// or 0 if the name is too long.
size_t abstract_address(const std::string& address, void* sockaddr_un_out);

/// Connects to the owner listening on `address`. Errors: owner_died (no
/// one listens), invalid_argument (not an address), system_error.
caf::expected<unique_fd> connect_to(const std::string& address);

class shared_owner {
public:
  /// Binds and listens on `address`. Errors: invalid_argument (in use or
  /// too long), system_error.
  static caf::expected<std::unique_ptr<shared_owner>>
  listen(const std::string& address);

  ~shared_owner();

  /// Serves clients until stop() (on this thread).
  void run();

  /// Makes run() return; any thread, any time.
  void stop();

  struct impl;

private:
  explicit shared_owner(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

} // namespace multiproc::detail
