// A stateful worker actor keeps a value between messages: the parent tells it
// store{99}, then asks fetch{} and gets 99 back. Python needs a shared
// multiprocessing.Value for this (a child's globals are invisible to the
// parent); here the value lives in the child actor's state, read by message.

#include <chrono>
#include <cstdint>
#include <iostream>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/stateful_actor.hpp>

#include "multiproc/bootstrap.hpp"
#include "multiproc/worker.hpp"

using namespace std::chrono_literals;

/// Tells the keeper to remember a value (no reply).
struct store {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

/// Asks the keeper for the value it remembers (reply: int32_t).
struct fetch {
  template <class Archive>
  void serialize(Archive&) {
  }
};

MULTIPROC_MESSAGE(store, "examples.store")
MULTIPROC_MESSAGE(fetch, "examples.fetch")

/// The keeper's state, owned by its actor in the child process.
struct keeper_state {
  int32_t value = 0;
};

caf::behavior keeper(caf::stateful_actor<keeper_state>* self) {
  return {
    [self](const store& x) {
      self->state.value = x.value;
      // The child's stdout is line-buffered and forwarded to the parent.
      std::cout << "Child stored: " << x.value << '\n';
    },
    [self](const fetch&) { return self->state.value; },
  };
}

MULTIPROC_WORKER("keeper", keeper)

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv);
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  auto worker = multiproc::spawn_worker(sys, "keeper");
  if (!worker) {
    std::cerr << "cannot start the keeper: "
              << multiproc::describe(worker.error()) << '\n';
    return 1;
  }
  bool ok = false;
  {
    caf::scoped_actor self{sys};
    // Messages from one sender to one actor arrive in order: the fetch is
    // handled after the store.
    self->send(*worker, store{99});
    self->request(*worker, 5s, fetch{})
      .receive(
        [&](int32_t x) {
          std::cout << "Parent got: " << x << '\n';
          ok = x == 99;
        },
        [](caf::error& err) {
          std::cerr << "fetch failed: " << multiproc::describe(err) << '\n';
        });
  }
  auto status = multiproc::stop_worker(*worker);
  if (!status) {
    std::cerr << "cannot stop the keeper: "
              << multiproc::describe(status.error()) << '\n';
    return 1;
  }
  return ok && status->success() ? 0 : 1;
}
