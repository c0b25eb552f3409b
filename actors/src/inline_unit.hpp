#pragma once

// inline_unit: a CAF execution unit that runs actors on the calling thread.
//
// A channel's I/O thread enqueues decoded messages with this unit as the
// context. When that wakes an idle actor, CAF calls exec_later() on the unit
// instead of waking a scheduler thread, and run_jobs() then resumes the actor
// right here: no thread hand-off between the socket and the handler (one
// hand-off costs several microseconds, more than the kernel's round trip).
// CAF's mailbox protocol still guarantees that an actor runs on one thread at
// a time. After a budget of resumptions, remaining jobs go to the scheduler
// so that one busy actor cannot starve the channel.
//
// Not thread-safe: used only by the thread that owns it.

#include <deque>

#include <caf/actor_system.hpp>
#include <caf/execution_unit.hpp>
#include <caf/resumable.hpp>
#include <caf/scheduler/abstract_coordinator.hpp>

namespace multiproc::detail {

class inline_unit : public caf::execution_unit {
public:
  explicit inline_unit(caf::actor_system* sys) : caf::execution_unit(sys) {
  }

  void exec_later(caf::resumable* job) override {
    jobs_.push_back(job);
  }

  /// Resumes the queued actors; each job carries one reference (taken by
  /// CAF when it scheduled the actor) that is released or handed on.
  void run_jobs(size_t budget = 64, size_t max_throughput = 64) {
    while (!jobs_.empty()) {
      auto* job = jobs_.front();
      jobs_.pop_front();
      if (budget == 0) {
        system().scheduler().enqueue(job);
        continue;
      }
      --budget;
      switch (job->resume(this, max_throughput)) {
        case caf::resumable::resume_later:
          jobs_.push_back(job);
          break;
        case caf::resumable::done:
        case caf::resumable::awaiting_message:
        case caf::resumable::shutdown_execution_unit:
          intrusive_ptr_release(job);
          break;
      }
    }
  }

private:
  std::deque<caf::resumable*> jobs_;
};

} // namespace multiproc::detail
