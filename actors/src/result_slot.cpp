#include "multiproc/detail/result_slot.hpp"

#include <ctime>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace multiproc::detail {

namespace {

long futex(std::atomic<uint32_t>* addr, int op, uint32_t val,
           const timespec* timeout) {
  return ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), op, val,
                   timeout, nullptr, 0);
}

/// Spin iterations before sleeping: about 50-100 µs of `pause`, enough to
/// cover a round trip to a worker (see docs/performance.md).
constexpr int spin_iterations = 2000;

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

} // namespace

void result_slot::fulfill(caf::message r, caf::error e) {
  reply = std::move(r);
  err = std::move(e);
  if (state_.exchange(done, std::memory_order_acq_rel) == sleeping)
    futex(&state_, FUTEX_WAKE_PRIVATE, 1, nullptr);
}

bool result_slot::wait_until(clock::time_point deadline) {
  if (ready())
    return true;
  if (deadline != clock::time_point::max() && deadline <= clock::now())
    return ready(); // a poll: no spinning
  for (int i = 0; i < spin_iterations; ++i) {
    if (ready())
      return true;
    cpu_relax();
  }
  for (;;) {
    uint32_t expected = waiting;
    if (!state_.compare_exchange_strong(expected, sleeping)
        && expected == done)
      return true;
    auto left = deadline - clock::now();
    if (left <= clock::duration::zero())
      return ready();
    timespec* ts_ptr = nullptr;
    timespec ts{};
    if (deadline != clock::time_point::max()) {
      auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left);
      ts.tv_sec = static_cast<time_t>(ns.count() / 1000000000);
      ts.tv_nsec = static_cast<long>(ns.count() % 1000000000);
      ts_ptr = &ts;
    }
    futex(&state_, FUTEX_WAIT_PRIVATE, sleeping, ts_ptr);
    if (ready())
      return true;
  }
}

} // namespace multiproc::detail
