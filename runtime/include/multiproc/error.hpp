#pragma once

/// \file
/// multiproc's error codes. Every fallible call returns `caf::expected<T>` or
/// `caf::error`; an error of category `multiproc` carries one `errc` and a
/// human-readable text (its context is a single std::string) that names what
/// went wrong, e.g. `worker squarer[1234] killed by SIGSEGV`.
/// Thread-safe: everything here is a pure function. Nothing here throws
/// (beyond std::bad_alloc from the strings).

#include <cstdint>
#include <string>

#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/make_message.hpp>

namespace multiproc {

/// The one error-code enum of multiproc (category atom `multiproc`).
enum class errc : uint8_t {
  none = 0,
  system_error,         ///< a system call failed; the text names it and strerror
  invalid_argument,     ///< a caller passed a value the call cannot accept
  not_bootstrapped,     ///< multiproc::bootstrap() was not called first in main
  fork_unsafe,          ///< start_method::fork with more than one thread alive
  unknown_entry,        ///< no worker entry or function registered under a name
  spawn_failed,         ///< a child process could not be started
  peer_closed,          ///< the other end of a channel closed
  truncated_frame,      ///< a frame ended before its announced length
  frame_too_large,      ///< a frame announced a length above the limit
  unknown_type,         ///< a message type id that is not registered
  decode_failed,        ///< a payload that Cereal could not decode
  encode_failed,        ///< a value that Cereal could not encode
  type_mismatch,        ///< a message of another type than the one expected
  fingerprint_mismatch, ///< the two ends registered different message types
  protocol_error,       ///< a frame that breaks the wire protocol
  worker_died,          ///< the worker process died with requests in flight
  worker_exception,     ///< a worker's handler threw; text has type and what()
  timeout,              ///< a call did not complete within its timeout
  closed,               ///< the object was closed by its owner
  full,                 ///< a bounded queue is full and the caller chose not to wait
  task_quarantined,     ///< a task killed its worker on every attempt
  pool_broken,          ///< a pool cannot start workers (e.g. its initializer fails)
  empty,                ///< a queue is empty and the caller chose not to wait
  end_of_stream,        ///< a closed queue is drained: no message will ever come
  restart_intensity_exceeded, ///< a supervisor saw more restarts than allowed
  key_not_found,        ///< a shared dict (or cell) has no entry of that key
  index_out_of_range,   ///< an index past the end of a shared list or array
  owner_died,           ///< the shared-state owner's process or thread ended
  child_failed,         ///< a child process ended with a non-zero status
  connection_lost,      ///< a remote peer's connection ended or timed out
  auth_failed,          ///< a peer did not prove that it holds the cluster secret
};

} // namespace multiproc

/// \namespace multiproc
/// Python's multiprocessing for C++, on CAF actors; internals live in
/// multiproc::detail.

CAF_ERROR_CODE_ENUM(multiproc::errc, "multiproc")

namespace multiproc {

/// Returns the enumerator's name, e.g. "worker_died".
const char* to_string(errc x) noexcept;

/// Makes an error of category `multiproc` with a descriptive text.
caf::error make_error(errc code, std::string text);

/// Makes an `errc::system_error` whose text is "<what>: <strerror(err)>".
caf::error make_system_error(const std::string& what, int err);

/// Returns the errc of `x`, or errc::none if `x` is not of category multiproc.
errc code_of(const caf::error& x) noexcept;

/// True if `x` is a multiproc error with code `y`.
inline bool operator==(const caf::error& x, errc y) noexcept {
  return code_of(x) == y;
}
/// True unless `x` is a multiproc error with code `y`.
inline bool operator!=(const caf::error& x, errc y) noexcept {
  return !(x == y);
}

/// Renders any error for people: "worker_died: worker squarer[1234] killed by
/// SIGSEGV" for multiproc errors, CAF's own rendering otherwise.
std::string describe(const caf::error& x);

/// Returns the text of a multiproc error (without the code), or describe(x).
std::string text_of(const caf::error& x);

} // namespace multiproc
