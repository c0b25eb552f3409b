#pragma once

/// \file
/// Workers on other hosts, over CAF's network layer (the caf_io middleman,
/// BASP over TCP).
///
/// A pool publishes itself on a TCP address (pool::publish); a worker
/// process on any host joins it by connecting with the cluster's secret:
///
///     // node A                                 // node B
///     auto port = p.publish({"0.0.0.0", 7000,   multiproc::remote_worker_options o;
///                            secret});          o.host = "nodeA"; o.port = 7000;
///                                               o.entry = "squarer"; o.secret = secret;
///                                               return *multiproc::run_remote_worker(o);
///
/// or `multiproc worker --connect nodeA:7000 --entry squarer` (secret from
/// MULTIPROC_SECRET or --secret-file). The pool then dispatches to the
/// remote worker as to its own children, with the same ledger: a connection
/// that ends or stays silent past connection_timeout is a dead worker.
///
/// Frames are the local wire format (Cereal bytes, docs/wire_format.md)
/// carried inside CAF messages; message types need only their Cereal
/// serialize(). Before anything runs, both ends prove that they hold the
/// secret (HMAC-SHA256 challenge-response, as Python's authkey), and the
/// hello frames compare the message-type fingerprints. docs/distribution.md
/// has deployment, the security model, failure detection and firewalling.
///
/// Thread safety: the option structs are plain values. run_remote_worker()
/// and worker_command() block the calling thread until the worker is done;
/// each runs its own CAF actor system (with the middleman), so they need no
/// system from the caller. Errors: run_remote_worker() returns
/// caf::expected (the codes below); worker_command() returns an exit code.

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include <caf/expected.hpp>

namespace multiproc {

/// How a node listens for remote workers and watches them; one comment per
/// field. The same timing settings should be used on both ends.
struct network_options {
  /// Address to listen on: loopback unless told otherwise ("0.0.0.0": all).
  std::string host = "127.0.0.1";
  /// TCP port; 0: any free port (pool::publish returns the one it got).
  uint16_t port = 0;
  /// The cluster's secret; a peer must prove it holds the same one. Must
  /// not be empty.
  std::string secret;
  /// How often each end sends a heartbeat over an idle connection.
  std::chrono::milliseconds heartbeat_interval{250};
  /// A peer heard nothing from for this long is dropped (its worker counts
  /// as dead): a frozen host, a cut cable, a SIGSTOPped process.
  std::chrono::milliseconds connection_timeout{2000};
  /// How long a joining worker may take to authenticate and say hello.
  std::chrono::milliseconds handshake_timeout{5000};
  /// Where the node's log lines go (a worker joined, left or was rejected,
  /// and why); empty: stderr, prefixed "multiproc: ".
  std::function<void(const std::string&)> log;
};

/// Where a published node is and how the connection to it is watched: the
/// part that every kind of remote client's options share (a worker joining
/// a pool, a shared-state client, a remote queue); one comment per field.
struct remote_endpoint {
  /// The publishing node's address.
  std::string host = "127.0.0.1";
  /// The publishing node's port (what publish() returned); must not be 0.
  uint16_t port = 0;
  /// The cluster's secret (the publisher's network_options::secret).
  std::string secret;
  /// Heartbeats, and the silence after which the publisher counts as gone;
  /// as network_options, and the same on both ends.
  std::chrono::milliseconds heartbeat_interval{250};
  /// Silence after which the publisher counts as gone; see above.
  std::chrono::milliseconds connection_timeout{2000};
  /// How long connecting, authenticating and the hello may take.
  std::chrono::milliseconds handshake_timeout{5000};
};

/// How a remote worker joins a pool (a worker exits when the pool is gone).
struct remote_worker_options : remote_endpoint {
  /// The worker entry to run (MULTIPROC_WORKER name); the pool's must match.
  std::string entry;
  /// The worker's name in the pool's logs and errors; empty: "<entry>@<host>".
  std::string name;
};

/// How a process reaches a published shared-state owner
/// (remote_shared_state::connect). handshake_timeout applies to each
/// connection a handle opens.
struct remote_state_options : remote_endpoint {
  /// The timeout of every blocking call made through the handles.
  std::chrono::milliseconds timeout{10000};
};

/// Connects to the pool at opts.host:opts.port, authenticates, and serves
/// its tasks in this process. Returns the exit code for main(): 0 when the
/// pool lets the worker go (close(), retirement) or closes the link
/// cleanly; 65 when the hello fails (the two programs registered different
/// message types: the fingerprint mismatch is printed on stderr and logged
/// by the pool) or the connection is lost while serving (printed on
/// stderr). Fails with errc::connection_lost when the pool cannot be
/// reached, errc::auth_failed when either side lacks the secret,
/// errc::unknown_entry for an entry that is not registered here or not the
/// pool's, errc::invalid_argument for an empty secret or port 0. Call
/// multiproc::bootstrap(argc, argv) first in main(), as for any worker.
caf::expected<int> run_remote_worker(const remote_worker_options& opts);

/// The `worker` command, for any program that registers worker entries
/// (the multiproc tool runs it as `multiproc worker ...`): argv[0] is the
/// command's name, then
///   --connect HOST:PORT --entry NAME [--name NAME] [--secret-file PATH]
///   [--heartbeat MS] [--connection-timeout MS] [--handshake-timeout MS]
///   [--list]
/// The secret is the first line of --secret-file, else $MULTIPROC_SECRET;
/// never an argument (other users see arguments in ps). --list prints the
/// worker entries this program registers. Returns main()'s exit code:
/// run_remote_worker's (0, 65), 2 for a usage error, 3 when the pool
/// refused the secret, 4 when it cannot be reached, 1 for any other error;
/// errors are printed on stderr, each naming what was wrong.
int worker_command(int argc, const char* const* argv);

} // namespace multiproc
