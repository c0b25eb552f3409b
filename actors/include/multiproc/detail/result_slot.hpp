#pragma once

/// detail::result_slot: one reply (or error), handed from an I/O thread to a
/// waiting caller. The caller spins briefly (a reply usually comes within
/// tens of microseconds, and a futex wake-up costs about as much again),
/// then sleeps on a futex. Used by sync_request() and pool::submit().

#include <atomic>
#include <chrono>
#include <cstdint>

#include <caf/error.hpp>
#include <caf/message.hpp>

namespace multiproc::detail {

class result_slot {
public:
  using clock = std::chrono::steady_clock;

  /// Stores the outcome and wakes the waiter; call once.
  void fulfill(caf::message reply, caf::error err);

  /// Waits until the outcome is there (true) or `deadline` passed (false).
  bool wait_until(clock::time_point deadline);

  bool ready() const noexcept {
    return state_.load(std::memory_order_acquire) == done;
  }

  /// Valid once ready().
  caf::message reply;
  caf::error err;

private:
  static constexpr uint32_t waiting = 0;
  static constexpr uint32_t sleeping = 1;
  static constexpr uint32_t done = 2;
  std::atomic<uint32_t> state_{waiting};
};

} // namespace multiproc::detail
