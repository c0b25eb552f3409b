// A process pool's map: square 0..9 on 4 worker processes and print the
// results in input order. Python: Pool(4).map(square, range(10)).

#include <cstdint>
#include <iostream>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>

#include "multiproc/bootstrap.hpp"
#include "multiproc/pool.hpp"

/// The task: square this number.
struct square {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

MULTIPROC_MESSAGE(square, "examples.pool_map.square")

/// The worker runs in each child; the reply is the task's result.
caf::behavior squarer(caf::event_based_actor*) {
  return {
    [](const square& x) { return x.value * x.value; },
  };
}

MULTIPROC_WORKER("pool_map.squarer", squarer)

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv); // in a child, this runs the worker
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  multiproc::pool_options opts;
  opts.workers = 4;
  auto pool = multiproc::pool::start(sys, "pool_map.squarer", opts);
  if (!pool) {
    std::cerr << "cannot start the pool: " << multiproc::describe(pool.error())
              << '\n';
    return 1;
  }
  std::vector<square> tasks;
  for (int32_t x = 0; x < 10; ++x)
    tasks.push_back(square{x});
  auto results = pool->map<int32_t>(tasks);
  int failures = 0;
  std::cout << '[';
  for (size_t i = 0; i < results.size(); ++i) {
    if (i > 0)
      std::cout << ", ";
    if (results[i]) {
      std::cout << *results[i];
    } else {
      std::cout << "<error>";
      std::cerr << "task " << i
                << " failed: " << multiproc::describe(results[i].error())
                << '\n';
      ++failures;
    }
  }
  std::cout << "]\n" << std::flush;
  if (auto err = pool->close()) {
    std::cerr << "cannot close the pool: " << multiproc::describe(err) << '\n';
    return 1;
  }
  return failures == 0 && results.size() == tasks.size() ? 0 : 1;
}
