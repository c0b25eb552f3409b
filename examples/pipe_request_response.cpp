// Request/response with a worker actor in a child process: the parent sends
// typed requests from a scoped_actor, the child squares each number and
// replies over the parent<->child pipe, and the parent stops the worker
// cleanly. Python: a Process that answers over a Pipe(), without the loop.

#include <chrono>
#include <cstdint>
#include <iostream>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>

#include "multiproc/bootstrap.hpp"
#include "multiproc/worker.hpp"

using namespace std::chrono_literals;

/// The request: square this number.
struct square {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

MULTIPROC_MESSAGE(square, "examples.square")

/// The worker runs in the child: one handler, the reply is its return value.
caf::behavior squarer(caf::event_based_actor*) {
  return {
    [](const square& x) { return x.value * x.value; },
  };
}

MULTIPROC_WORKER("squarer", squarer)

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv); // in the child, this runs the worker
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  auto worker = multiproc::spawn_worker(sys, "squarer");
  if (!worker) {
    std::cerr << "cannot start the worker: "
              << multiproc::describe(worker.error()) << '\n';
    return 1;
  }
  int failures = 0;
  {
    caf::scoped_actor self{sys};
    for (int32_t x : {3, 7, 11, 15, 20})
      self->request(*worker, 5s, square{x})
        .receive([x](int32_t y) { std::cout << x << "^2 = " << y << '\n'; },
                 [x, &failures](caf::error& err) {
                   std::cerr << x << "^2 failed: " << multiproc::describe(err)
                             << '\n';
                   ++failures;
                 });
  }
  auto status = multiproc::stop_worker(*worker);
  if (!status) {
    std::cerr << "cannot stop the worker: "
              << multiproc::describe(status.error()) << '\n';
    return 1;
  }
  std::cout << "worker " << status->to_string() << '\n';
  return failures == 0 && status->success() ? 0 : 1;
}
