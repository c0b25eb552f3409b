#pragma once

/// \file
/// Fault injection: crash, exit or fail on purpose at a chosen boundary, so
/// that the library's guarantees (and a user's pipeline) can be tested under
/// failure. Off by default; then each boundary costs one relaxed load of a
/// global flag and a predictable branch.
///
/// Rules come from the MULTIPROC_FAULTS environment variable, parsed once by
/// bootstrap(), or from set()/configure() (tests). A child started by
/// start_process() (any start method) takes over the rules its parent holds
/// at that moment, with fresh counters and its own random stream. The
/// grammar, the points and what each action does there: docs/reliability.md
/// ("Fault injection").
///
///     MULTIPROC_FAULTS="worker.decode_task:crash:p=0.01:seed=7,queue.put:exit:after=100"
///
/// Thread-safe: every function may be called from any thread.
/// Errors: parse() and configure() fail with invalid_argument; check() returns
/// the error its boundary reports; action::fail at worker.run_task throws
/// injected_fault (check_throw()), caught by the worker.

#include <atomic>
#include <cstdint>
#include <csignal>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>

namespace multiproc::faults {

/// A boundary where a fault can be injected.
enum class point : uint8_t {
  parent_encode_task,   ///< "parent.encode_task": a pool or request encodes a task
  worker_decode_task,   ///< "worker.decode_task": the worker decodes a task
  worker_run_task,      ///< "worker.run_task": just before the handler runs
  worker_encode_result, ///< "worker.encode_result": the worker encoded a result
  parent_decode_result, ///< "parent.decode_result": the parent decodes a result
  queue_put,            ///< "queue.put": queue<T>::put, before anything is put
  queue_get,            ///< "queue.get": queue<T>::get, the message taken (leased)
  spawn,                ///< "spawn": start_process() in the parent
  child_start,          ///< "child.start": a child, just before its entry runs
};

/// The number of points.
constexpr size_t num_points = 9;

/// What happens when a rule fires.
enum class action : uint8_t {
  crash, ///< "crash": the process kills itself (SIGKILL unless signal=N)
  exit,  ///< "exit": the process ends with _exit(code) (code=N, default 70)
  fail,  ///< "throw": the boundary fails as it does on a real error (below)
};

/// One rule: at `where`, after the first `after` calls, each call fires with
/// `probability` (a deterministic stream from `seed`), at most `times` times
/// (0: no limit). Counters are per process.
struct rule {
  point where = point::worker_run_task; ///< the boundary
  action what = action::fail;           ///< what happens when it fires
  double probability = 1.0;             ///< p=: chance of each call, 0 to 1
  uint64_t after = 0;                   ///< after=: calls that never fire
  uint64_t times = 0;                   ///< times=: most firings; 0: no limit
  uint64_t seed = 1;                    ///< seed=: of the random stream
  int code = 70;        ///< exit code of action::exit
  int signal = SIGKILL; ///< signal of action::crash
};

/// The exception that action::fail throws at worker.run_task (the worker
/// reports it as errc::worker_exception, naming this type and the fault).
class injected_fault : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// "worker.decode_task", ...
const char* to_string(point x) noexcept;

/// Parses a spec (the grammar of MULTIPROC_FAULTS) into rules. Errors:
/// invalid_argument, naming the rule and what is wrong with it.
caf::error parse(std::string_view spec, std::vector<rule>& out);

/// Replaces every rule of this process by those of `spec` (empty: none).
/// Errors as parse(); nothing changes then.
caf::error configure(std::string_view spec);

/// Adds `x`, replacing the rule for the same point if there is one, and
/// resets that point's counters.
void set(const rule& x);

/// Removes every rule; injection is off again.
void clear();

/// The rules of this process in the grammar of MULTIPROC_FAULTS.
std::string to_spec();

/// How often the rule at `x` fired in this process (since it was set).
uint64_t fired(point x);

namespace detail {

/// True while any rule is set.
extern std::atomic<bool> enabled_flag;

/// The slow path of check(): counts the call and fires the rule, if any.
caf::error fire(point x);

/// The slow path of check_throw().
void fire_throw(point x);

/// In start_process(): evaluates the spawn rule (a `throw` fails the start
/// with errc::spawn_failed; crash and exit happen in the child right after
/// it starts) and fills `child_spec` with the rules the child takes over.
caf::error on_spawn(std::string& child_spec);

/// In a child, before its entry: takes over the parent's rules, then
/// evaluates child.start.
void on_child_start(const std::string& spec);

/// Parses MULTIPROC_FAULTS (bootstrap()); a malformed value ends the
/// process with a message and exit code 2.
void init_from_environment();

} // namespace detail

/// True while any rule is set (a relaxed load).
inline bool enabled() noexcept {
  return detail::enabled_flag.load(std::memory_order_relaxed);
}

/// The hook at a boundary. Returns none, or, when a `throw` rule fires, the
/// error the boundary reports (decode_failed at decode points, encode_failed
/// at encode points and queue.put, spawn_failed at spawn), whose text names
/// the fault. A crash or exit rule does not return.
[[nodiscard]] inline caf::error check(point x) {
  if (__builtin_expect(enabled(), false))
    return detail::fire(x);
  return caf::none;
}

/// check() for places inside a handler's try block: a `throw` rule throws
/// injected_fault.
inline void check_throw(point x) {
  if (__builtin_expect(enabled(), false))
    detail::fire_throw(x);
}

} // namespace multiproc::faults
