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
// run_inline() goes one step further for the items of a chunk: it invokes
// the worker's current behavior itself, as CAF's scheduled_actor::consume()
// does for an ordinary message, and hands the handler's result to a sink
// instead of a response message (no activation, no response promise, no
// mailbox element for the reply). It runs only when nothing of what
// consume() and activate() would do differently applies: the actor is
// claimed, initialized, has a behavior without a receive timeout and awaits
// no response. Otherwise, and when the behavior skips the message or has no
// handler for it, nothing is consumed and the caller delivers the message
// the usual way.
//
// Not thread-safe: used only by the channel's I/O thread.

#include <string_view>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_cast.hpp>
#include <caf/detail/invoke_result_visitor.hpp>
#include <caf/mailbox_element.hpp>
#include <caf/none.hpp>
#include <caf/scheduled_actor.hpp>
#include <caf/sec.hpp>

#include "inline_unit.hpp"
#include "multiproc/envelope.hpp"

namespace multiproc::detail {

/// Receives the outcomes of messages run by direct_delivery::run_inline().
class inline_sink {
public:
  virtual ~inline_sink() = default;
  /// The handler's result (empty for a handler that returns nothing).
  virtual void reply(caf::message& result) = 0;
  /// The handler's error (returned, or its exception).
  virtual void fail(caf::error& err) = 0;
};

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
    caf::mailbox_element_ptr element;
    if (auto err = load(type, payload, mid, element))
      return err;
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

  /// Runs a decoded request with the actor's behavior on this thread and
  /// gives its outcome to `sink`, or, if the response is left to a promise
  /// (delegate, make_response_promise), to the sender. Returns false when
  /// it did not consume the message (see above): deliver() it then. A
  /// decode error is returned in `err` (true: nothing more to do).
  bool run_inline(type_id type, std::string_view payload, caf::message_id mid,
                  inline_sink& sink, caf::error& err) {
    if (queue_rest_ || self_ == nullptr || (!claimed_ && !claim()))
      return false;
    if (!ready_) {
      // Once per claim: initializes the actor if need be and sets its
      // execution context, as an activation does.
      if (!self_->activate(&unit_))
        return false;
      ready_ = true;
    }
    auto& stack = self_->bhvr_stack();
    if (stack.empty())
      return false;
    auto& bhvr = stack.back();
    if (&self_->current_behavior() != &bhvr || bhvr.timeout() != caf::infinite)
      return false; // awaiting a response, or a receive timeout to reset
    caf::mailbox_element_ptr element;
    if (auto e = load(type, payload, mid, element)) {
      err = std::move(e);
      return true;
    }
    result_visitor visitor{*element, sink};
    auto& current = element_access::of(self_);
    current = element.get();
    auto res = bhvr(visitor, element->content());
    current = nullptr;
    if (res != caf::match_case::match) {
      // Skipped or unhandled: deliver() runs it the way CAF would.
      put_spare(type, std::move(element));
      return false;
    }
    put_spare(type, std::move(element));
    stack.cleanup();
    if (self_->finalize()) { // the handler ended the actor
      self_ = nullptr;
      return true;
    }
    // As after a successful activation (the handler may have become a
    // behavior with a receive timeout).
    if (self_->has_behavior() && self_->bhvr_stack().back().timeout()
                                   != caf::infinite)
      self_->set_receive_timeout();
    return true;
  }

  /// Claims the actor for this batch without running it, for work done on
  /// its behalf on this thread (a task worker's chunk items): true if it is
  /// claimed and nothing waits in the mailbox ahead of the next message
  /// (see "Order" above). False: deliver() the message.
  bool hold() {
    return !queue_rest_ && self_ != nullptr && (claimed_ || claim());
  }

  /// Ends the current batch: gives the actor back to CAF.
  void release() {
    queue_rest_ = false;
    if (!claimed_)
      return;
    claimed_ = false;
    ready_ = false;
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
  /// CAF's default_invoke_result_visitor, answering through a sink: a result
  /// goes out unless the handler took a response promise (which marks the
  /// request answered; the promise answers then).
  class result_visitor : public caf::detail::invoke_result_visitor {
  public:
    result_visitor(caf::mailbox_element& element, inline_sink& sink)
      : element_(element), sink_(sink) {
    }
    void operator()() override {
      // A promise or a delegation answers.
    }
    void operator()(caf::error& x) override {
      if (take())
        sink_.fail(x);
    }
    void operator()(caf::message& x) override {
      if (take())
        sink_.reply(x);
    }
    void operator()(const caf::none_t&) override {
      if (take()) {
        caf::error err = caf::sec::unexpected_response;
        sink_.fail(err);
      }
    }

  private:
    bool take() {
      if (element_.mid.is_answered())
        return false;
      element_.mid.mark_as_answered();
      return true;
    }
    caf::mailbox_element& element_;
    inline_sink& sink_;
  };

  /// local_actor::current_element_ (protected), which response promises
  /// and current_sender() read while a handler runs.
  struct element_access : caf::scheduled_actor {
    static caf::mailbox_element*& of(caf::scheduled_actor* self) {
      return self->*(&element_access::current_element_);
    }
  };
  /// Decodes a message into `out`: a spare element of its type if there is
  /// one, else a new one. On error, `out` stays empty.
  caf::error load(type_id type, std::string_view payload, caf::message_id mid,
                  caf::mailbox_element_ptr& out) {
    caf::mailbox_element_ptr element = take_spare(type);
    if (!element) {
      auto fresh = decode_mailbox_element(type, payload, sender_, mid);
      if (!fresh)
        return std::move(fresh.error());
      out = std::move(*fresh);
      return caf::none;
    }
    if (auto err = redecode_mailbox_element(type, payload, *element)) {
      put_spare(type, std::move(element));
      return err;
    }
    // A response promise takes the sender and stages away.
    if (element->sender != sender_)
      element->sender = sender_;
    element->mid = mid;
    element->stages.clear();
    out = std::move(element);
    return caf::none;
  }

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
  bool ready_ = false; // activated once during this claim
  bool queue_rest_ = false;
  std::vector<std::pair<type_id, caf::mailbox_element_ptr>> spares_;
};

} // namespace multiproc::detail
