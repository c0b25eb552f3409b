#pragma once

/// Wraps a worker's behavior so that an exception thrown by a handler becomes
/// an error reply (errc::worker_exception: type, what() and the worker) and
/// the actor keeps running. CAF 0.17 would otherwise terminate the actor.

#include <caf/behavior.hpp>

namespace multiproc::detail {

/// Returns a behavior that runs `inner` and turns exceptions into errors.
caf::behavior guard_behavior(caf::behavior inner, const char* worker_name);

} // namespace multiproc::detail
