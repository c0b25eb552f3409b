#pragma once

// direct_delivery: hands the messages a channel's I/O thread decodes straight
// to one actor's behavior, past its mailbox, while nothing else is queued.
//
// Why: for a small message, CAF's mailbox round trip (allocate an element,
// push it, pop it in resume(), free it, once per message) costs more than
// the handler. It decided cpp_pipe_tput_64B.
//
// How, without breaking CAF's one-thread-at-a-time rule: the actor is
// claimed only while it is idle, by turning its mailbox from "blocked" to
// "empty" (try_unblock). CAF schedules an actor only when a push finds its
// mailbox blocked, so from then on nobody else runs it; this thread runs it
// exactly as a scheduler thread would, through scheduled_actor::activate().
// Messages that other actors send meanwhile wait in the mailbox. release()
// ends the claim: it blocks the mailbox again or, if something arrived,
// resumes the actor through the execution unit, as CAF's enqueue would.
//
// Order: a message the behavior skips (while it awaits a response, say) is
// put into the mailbox, and so is every later message of the same batch;
// likewise when the actor cannot be claimed. Messages from one channel
// therefore reach the actor in the order they were sent.
//
// Elements are reused per type: a decoded message allocates nothing.
//
// Not thread-safe: used only by the channel's I/O thread.

#include <string_view>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_cast.hpp>
#include <caf/mailbox_element.hpp>
#include <caf/scheduled_actor.hpp>

#include "inline_unit.hpp"
#include "multiproc/envelope.hpp"

namespace multiproc::detail {

class direct_delivery {
public:
  /// `target` must be an event-based actor that is not detached.
  direct_delivery(caf::actor target, caf::strong_actor_ptr sender,
                  inline_unit& unit)
    : target_(std::move(target)),
      self_(dynamic_cast<caf::scheduled_actor*>(
        caf::actor_cast<caf::abstract_actor*>(target_))),
      sender_(std::move(sender)),
      unit_(unit) {
  }

  direct_delivery(const direct_delivery&) = delete;
  direct_delivery& operator=(const direct_delivery&) = delete;

  ~direct_delivery() {
    if (claimed_) {
      release();
      unit_.run_jobs();
    }
  }

  /// Decodes a message of type `type` with id `mid` and delivers it.
  /// Returns the decode error, if any (nothing is delivered then).
  caf::error deliver(type_id type, std::string_view payload,
                     caf::message_id mid) {
    caf::mailbox_element_ptr element = take_spare(type);
    if (element) {
      if (auto err = redecode_mailbox_element(type, payload, *element)) {
        put_spare(type, std::move(element));
        return err;
      }
      // A response promise takes the sender and stages away.
      if (element->sender != sender_)
        element->sender = sender_;
      element->mid = mid;
      element->stages.clear();
    } else {
      auto fresh = decode_mailbox_element(type, payload, sender_, mid);
      if (!fresh)
        return std::move(fresh.error());
      element = std::move(*fresh);
    }
    if (!queue_rest_ && (claimed_ || claim())) {
      switch (self_->activate(&unit_, *element)) {
        case caf::scheduled_actor::activation_result::skipped:
          break; // into the mailbox, with everything after it
        case caf::scheduled_actor::activation_result::terminated:
          // The actor is gone: later messages go to its closed mailbox,
          // which answers requests with an error.
          self_ = nullptr;
          put_spare(type, std::move(element));
          return caf::none;
        default:
          put_spare(type, std::move(element));
          return caf::none;
      }
    }
    queue_rest_ = true;
    target_->enqueue(std::move(element), &unit_);
    return caf::none;
  }

  /// Ends the current batch: gives the actor back to CAF.
  void release() {
    queue_rest_ = false;
    if (!claimed_)
      return;
    claimed_ = false;
    if (self_ != nullptr && self_->mailbox().try_block())
      return;
    // Messages arrived while we held the actor (or it terminated and its
    // mailbox is closed): resume it, holding the reference CAF's scheduling
    // holds, which the unit releases when the job is done.
    auto* actor = caf::actor_cast<caf::abstract_actor*>(target_);
    auto* job = dynamic_cast<caf::resumable*>(actor);
    intrusive_ptr_add_ref(actor->ctrl());
    unit_.exec_later(job);
  }

private:
  bool claim() {
    if (self_ == nullptr || !self_->mailbox().try_unblock())
      return false;
    claimed_ = true;
    return true;
  }

  caf::mailbox_element_ptr take_spare(type_id type) {
    for (auto& [t, element] : spares_)
      if (t == type && element)
        return std::move(element);
    return nullptr;
  }

  void put_spare(type_id type, caf::mailbox_element_ptr element) {
    for (auto& [t, slot] : spares_)
      if (t == type) {
        slot = std::move(element);
        return;
      }
    if (spares_.size() < max_spares)
      spares_.emplace_back(type, std::move(element));
  }

  static constexpr size_t max_spares = 16;

  caf::actor target_;
  caf::scheduled_actor* self_;
  caf::strong_actor_ptr sender_;
  inline_unit& unit_;
  bool claimed_ = false;
  bool queue_rest_ = false;
  std::vector<std::pair<type_id, caf::mailbox_element_ptr>> spares_;
};

} // namespace multiproc::detail
