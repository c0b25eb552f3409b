#pragma once

/// Test seam: lets a test see how start_process() behaves in a process that
/// did not call bootstrap(). Not for production code.

namespace multiproc::detail {

/// While `on` is true, bootstrapped() returns false and start_process()
/// fails with errc::not_bootstrapped, as in a program that never called
/// bootstrap(). Restore with `false`. Thread-safe.
void simulate_not_bootstrapped(bool on) noexcept;

} // namespace multiproc::detail
