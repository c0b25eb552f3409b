#pragma once

/// Test seam: lets a test stop a process at a chosen step of a queue
/// operation (e.g. SIGKILL itself after claiming a slot, before the message
/// is written), to prove what the other parties do. Not for production code.

namespace multiproc::detail {

/// The steps at which the hook runs.
enum class queue_step {
  put_claimed, ///< a producer owns a slot, the message is not written yet
  get_leased,  ///< a consumer leased a message, get() has not returned yet
};

/// Called at each step while set; nullptr (the default) disables it.
/// Set it before the queue is used (not synchronised with running calls).
using queue_hook = void (*)(queue_step);

void set_queue_hook(queue_hook hook) noexcept;

} // namespace multiproc::detail
