#pragma once

/// \file
/// An OTP-style supervisor of child processes, with a producer/consumer
/// pipeline form.
///
/// A supervisor starts child processes from child specs (a registered entry,
/// see MULTIPROC_REGISTER_ENTRY, its role and its arguments) in order, keeps
/// them alive by the restart strategy and each child's restart type, and
/// stops them in reverse order:
///
///     multiproc::supervisor_spec spec;
///     spec.strategy = multiproc::restart_strategy::one_for_one;
///     spec.children = {multiproc::child_spec::process("db", "db_main"),
///                      multiproc::child_spec::process("web", "web_main")};
///     auto sup = multiproc::supervisor::start(sys, std::move(spec));
///     ...
///     auto report = sup->stop();         // web, then db
///
/// More than `max_restarts` restarts within `within` (OTP's default: 1 in
/// 5 s) make the supervisor give up: it stops its children and reports
/// errc::restart_intensity_exceeded to whoever started it (wait(), stop(),
/// the actor's exit reason), or, for a nested supervisor, to its parent,
/// which treats it as a child that died.
///
/// Pipelines: with `spec.queue` set, producers and consumers get the queue's
/// descriptor first in child_context::fds (consumers the result queue's
/// second). When every producer has ended normally the supervisor closes the
/// queue; consumers drain it and end at end_of_stream; when every consumer
/// has ended normally it closes the result queue, and wait() returns the
/// totals. A consumer that dies holding messages has them delivered again
/// at once (the supervisor calls recover() with its pid).
///
/// A child asks stop_requested(ctx) to learn of a graceful stop. docs/
/// supervision.md has a timeline per strategy and every rule.
///
/// Thread safety: a supervisor's member functions may be called from any
/// thread. The supervisor runs as a detached CAF actor; its blocking work
/// (starting and stopping processes) never holds a scheduler thread.
///
/// Lifetimes: the actor system given to start() must outlive the
/// supervisor. The handle's destructor stops the supervisor and its children
/// (as stop(), which waits). A default-constructed or moved-from handle is
/// empty: wait() and stop() fail with invalid_argument.
///
/// Errors are values (caf::error, caf::expected); each call names its codes.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "multiproc/bootstrap.hpp"
#include "multiproc/error.hpp"
#include "multiproc/metrics.hpp"
#include "multiproc/output.hpp"
#include "multiproc/process.hpp"
#include "multiproc/start_method.hpp"

namespace multiproc {

/// What else a supervisor restarts when one child died (OTP's strategies).
enum class restart_strategy {
  one_for_one,  ///< only the child that died
  one_for_all,  ///< every child: the others are stopped first
  rest_for_one, ///< the child and those started after it
};

/// When a child that ended is started again (OTP's restart types).
enum class restart_type {
  permanent, ///< always, also after a normal exit (code 0)
  transient, ///< only after an abnormal end (a signal or a non-zero code)
  temporary, ///< never
};

/// What a child does in a pipeline (supervisor_spec::queue).
enum class child_role {
  worker,   ///< neither: no queue descriptors, not counted for completion
  producer, ///< puts into the queue; fds[0] is the queue
  consumer, ///< takes from the queue; fds[0] is the queue, fds[1] results
};

/// "one_for_one", ...
const char* to_string(restart_strategy x) noexcept;
/// "permanent", ...
const char* to_string(restart_type x) noexcept;
/// "worker", "producer" or "consumer".
const char* to_string(child_role x) noexcept;

struct supervisor_spec;

/// One child of a supervisor: a process, or a nested supervisor.
struct child_spec {
  /// Unique among its siblings; the process name in output and errors.
  std::string id;
  /// The registered entry the process runs (MULTIPROC_REGISTER_ENTRY).
  std::string entry;
  /// Bytes the child gets in child_context::args.
  std::string args;
  /// Its part in a pipeline.
  child_role role = child_role::worker;
  /// When it is started again after it ended.
  restart_type restart = restart_type::permanent;
  /// How long a graceful stop may take before SIGTERM.
  std::chrono::milliseconds shutdown_timeout{5000};
  /// How long after SIGTERM before SIGKILL.
  std::chrono::milliseconds kill_timeout{1000};
  /// More descriptors for the child, after the pipeline's queues (the
  /// supervisor keeps a copy of each for restarts).
  std::vector<int> fds;
  /// How to start the process; empty: default_start_method().
  std::optional<start_method> method;
  /// Where its output lines go; empty: default_output_sink().
  output_sink sink;
  /// True: `entry` names a worker actor (MULTIPROC_WORKER), started with
  /// spawn_worker(); supervisor::worker(id) returns its current handle. Its
  /// graceful stop is the worker's own (its actor gets an exit message); it
  /// takes no args, fds or pipeline role.
  bool actor = false;
  /// Set for a nested supervisor (entry and the process fields unused).
  std::shared_ptr<const supervisor_spec> supervisor;

  /// A process child running `entry`.
  static child_spec process(std::string id, std::string entry,
                            std::string args = {},
                            child_role role = child_role::worker);
  /// A worker actor child running the MULTIPROC_WORKER `entry`.
  static child_spec worker(std::string id, std::string entry);
  /// A nested supervisor: its restarts count against its own intensity; when
  /// it gives up, this supervisor handles it like a child that died.
  static child_spec nested(std::string id, supervisor_spec spec);
};

/// What the supervisor was asked to do, or saw; see supervisor_spec::on_event.
struct supervisor_event {
  /// What happened.
  enum kind_type {
    started,    ///< a child process started (pid set)
    exited,     ///< a child ended (status set); `restarting` says what next
    stopped,    ///< the supervisor stopped a child (status set)
    gave_up,    ///< a supervisor exceeded its restart intensity (error set)
    complete,   ///< the pipeline's stream is complete
  };
  /// What happened.
  kind_type kind = started;
  /// The supervisor's path ("" for the top, "a/b" for nested ones).
  std::string supervisor;
  /// The child's id ("" for supervisor-wide events).
  std::string child;
  /// The child's pid (`started`, `exited`, `stopped`).
  pid_t pid = 0;
  /// How the child ended (`exited`, `stopped`).
  std::optional<exit_status> status;
  /// For `exited`: the child will be started again.
  bool restarting = false;
  /// For `gave_up`: restart_intensity_exceeded, naming the supervisor.
  caf::error error;

  /// One line for logs, e.g. "child consumer[123] killed by SIGSEGV:
  /// restarting (one_for_one)".
  std::string to_string() const;
};

/// How a supervisor runs its children; one comment per field.
struct supervisor_spec {
  /// What is restarted when a child dies.
  restart_strategy strategy = restart_strategy::one_for_one;
  /// Restart intensity: at most this many restarts within `within`; one more
  /// and the supervisor gives up (OTP's default: 1 in 5 s).
  int max_restarts = 1;
  /// The window of `max_restarts`.
  std::chrono::milliseconds within{5000};
  /// The children, started in this order and stopped in reverse.
  std::vector<child_spec> children;
  /// Pipeline: a queue's descriptor (shm_queue or queue<T>::fd()); -1 for
  /// none. The supervisor keeps its own handle to it.
  int queue = -1;
  /// Pipeline: the result queue's descriptor, given to consumers; -1: none.
  int results = -1;
  /// Called on the supervisor's thread for every event (logging, progress);
  /// must not block for long or call the supervisor. Nested supervisors use
  /// their parent's.
  std::function<void(const supervisor_event&)> on_event;
};

/// A child's restarts by what ended the process before each of them.
struct restart_causes {
  uint64_t signal = 0;       ///< killed by a signal (a crash, SIGKILL)
  uint64_t error_exit = 0;   ///< exited with a non-zero or unknown code
  uint64_t normal_exit = 0;  ///< exited with code 0 (a permanent child)
  uint64_t start_failed = 0; ///< its process failed to start
};

/// One child as the supervisor sees it.
struct child_report {
  /// "id" for the top supervisor's children, "nested/id" below it.
  std::string id;
  /// Its role in a pipeline.
  child_role role = child_role::worker;
  /// The running process's pid, 0 if none.
  pid_t pid = 0;
  /// Processes started for it, the first included.
  uint64_t starts = 0;
  /// Restarts counted against the intensity.
  uint64_t restarts = 0;
  /// `restarts` by cause (a sibling's restart under one_for_all or
  /// rest_for_one starts a child again without counting it here).
  restart_causes restarts_by_cause;
  /// How its last process ended, if one did.
  std::optional<exit_status> last_exit;
  /// Ended and not to be started again (transient after a normal exit,
  /// temporary after any end).
  bool finished = false;
};

/// A supervisor's state and totals.
struct supervisor_report {
  /// Restarts of all children, nested ones included.
  uint64_t restarts = 0;
  /// Pipeline: every producer ended normally, the queue was closed and
  /// drained, and every consumer ended normally.
  bool stream_complete = false;
  /// Pipeline: messages consumed and acknowledged, and those delivered again
  /// because their consumer died (shm_queue::consumed(), redelivered()).
  uint64_t consumed = 0;
  /// See `consumed`.
  uint64_t redelivered = 0;
  /// Every child of the tree, in start order (a nested supervisor's
  /// children follow its own entry).
  std::vector<child_report> children;
};

namespace detail {
struct supervisor_shared;
} // namespace detail

/// A running supervisor. Movable; the destructor stops it (as stop()).
class supervisor {
public:
  /// The wait of a call: nullopt waits forever.
  using timeout_type = std::optional<std::chrono::milliseconds>;

  /// Starts every child in order and returns once they all started. If one
  /// fails to start, those started are stopped in reverse order and the
  /// error names the child. Errors: invalid_argument (an empty or duplicate
  /// id, an unknown entry, a bad descriptor), spawn_failed, not_bootstrapped.
  static caf::expected<supervisor> start(caf::actor_system& sys,
                                         supervisor_spec spec);

  /// An empty handle.
  supervisor() noexcept;
  /// Takes over `other`'s supervisor; `other` becomes empty.
  supervisor(supervisor&&) noexcept;
  /// Stops this handle's supervisor (as stop()), then takes `other`'s.
  supervisor& operator=(supervisor&&) noexcept;
  /// Stops the supervisor and its children, as stop().
  ~supervisor();

  /// Waits until the pipeline's stream is complete or no child is left to
  /// run (both give the report), or until the supervisor gave up (the
  /// error: restart_intensity_exceeded) or was stopped (closed). Errors:
  /// timeout (the supervisor runs on).
  caf::expected<supervisor_report> wait(timeout_type timeout = std::nullopt);

  /// Stops every child in reverse order (graceful stop, SIGTERM, SIGKILL)
  /// and the supervisor; returns the final report, or the error it gave up
  /// with, once the supervisor's actor is gone (its queue mappings, channels
  /// and descriptors closed). Idempotent.
  caf::expected<supervisor_report> stop();

  /// A snapshot of the children and totals (OTP's which_children).
  supervisor_report report() const;

  /// The running worker actor of the child `id` (a child_spec::worker; "a/b"
  /// for one of a nested supervisor), or an invalid handle while it is not
  /// running. A restart gives a new handle: ask again after a worker_died.
  caf::actor worker(const std::string& id) const;

  /// The supervisor's actor: it answers `caf::get_atom` with a
  /// supervisor_report and `caf::exit_msg`/`caf::close_atom` by stopping;
  /// its exit reason is the error it gave up with. Monitors and links work.
  const caf::actor& actor() const noexcept;

private:
  std::shared_ptr<detail::supervisor_shared> shared_;
  caf::actor actor_;
};

/// Adds a supervisor's figures to `out` under the label supervisor=`name`:
/// multiproc_supervisor_restarts_total{child, cause=signal|error_exit|
/// normal_exit|start_failed}, multiproc_supervisor_children_running, and for
/// a pipeline multiproc_supervisor_consumed_total, _redelivered_total and
/// _stream_complete (docs/metrics.md).
void add_metrics(metrics_snapshot& out, const std::string& name,
                 const supervisor_report& r);
/// The same with s.report() (metrics_registry::add(name, supervisor)).
void add_metrics(metrics_snapshot& out, const std::string& name,
                 const supervisor& s);

/// In a supervised child: true once its supervisor asked it to stop
/// gracefully, or died (the child's channel, ctx.channel, reached its end).
/// Waits up to `wait` for that. A child that ignores it gets SIGTERM after
/// its shutdown_timeout, then SIGKILL.
bool stop_requested(const child_context& ctx,
                    std::chrono::milliseconds wait = std::chrono::milliseconds{0});

} // namespace multiproc
