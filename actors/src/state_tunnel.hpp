#pragma once

// Shared state across hosts: a published owner's connections travel as
// frames over authenticated links (network_impl.hpp). Each end of a link is
// a relay to a local socket connection: on the owner's host a connection to
// the owner, on the client's host one that a client thread opened to the
// tunnel's local listening socket. The owner and the clients run unchanged.

#include <cstdint>
#include <memory>
#include <string>

#include <caf/expected.hpp>

#include "multiproc/network.hpp"

namespace multiproc::detail {

/// The gateway entry of a published shared-state owner.
inline constexpr const char* shared_state_entry = "multiproc.shared_state";

/// Publishes the owner listening on `owner_address`; destroying it closes
/// every connection it carries.
class state_publisher {
public:
  static caf::expected<std::unique_ptr<state_publisher>>
  start(network_options opts, std::string owner_address);
  ~state_publisher();
  uint16_t port() const noexcept;

  struct impl;

private:
  explicit state_publisher(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

/// The client's end: a local abstract socket whose every connection is
/// carried to the published owner.
class state_tunnel {
public:
  static caf::expected<std::unique_ptr<state_tunnel>>
  connect(const remote_state_options& opts);
  ~state_tunnel();
  /// The local address the handles use.
  const std::string& address() const noexcept;

  struct impl;

private:
  explicit state_tunnel(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

} // namespace multiproc::detail
