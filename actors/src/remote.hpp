#pragma once

// What worker.cpp and network.cpp share: the far end of a worker's channel
// (a child process or a remote worker process), adopting a channel that is
// already connected as a worker handle, and serving a worker on a channel.

#include <chrono>
#include <memory>
#include <string>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/expected.hpp>

#include "multiproc/frame_channel.hpp"
#include "multiproc/process.hpp"
#include "multiproc/worker.hpp"

namespace multiproc::detail {

/// The process at the other end of a worker's channel, as its bridge sees
/// it: a child this process started, or a worker on another node.
class worker_peer {
public:
  virtual ~worker_peer() = default;
  /// A descriptor whose readability means the peer is gone (-1: none).
  virtual int exit_fd() const noexcept {
    return -1;
  }
  /// Sends `sig` to the peer's process.
  virtual caf::error signal(int sig) = 0;
  /// Ends the peer at once (SIGKILL, or dropping a remote one).
  virtual caf::error kill() = 0;
  /// How the peer ended; waits at most `grace` after its channel closed.
  virtual caf::expected<exit_status> join(std::chrono::milliseconds grace) = 0;
};

/// Greets the worker at the far end of `ch` (hello frames both ways, the
/// message-type fingerprint check) and returns its handle, which behaves as
/// one from spawn_worker(). `who` names the worker in errors.
caf::expected<caf::actor> adopt_worker(caf::actor_system& sys,
                                       std::unique_ptr<worker_peer> peer,
                                       std::unique_ptr<frame_link> ch,
                                       worker_options opts, worker_info info);

/// Runs the worker registered as `entry` on `ch` (hello both ways, then
/// requests until the parent shuts it down or the channel ends) in `sys`.
/// Returns the process exit code: 0 after a shutdown or a closed channel,
/// 64 for an unknown entry, 65 when the parent's hello does not match.
int serve_worker(frame_link& ch, caf::actor_system& sys,
                 const std::string& entry, const std::string& name,
                 std::chrono::milliseconds hello_timeout);

} // namespace multiproc::detail
