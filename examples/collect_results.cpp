// Futures from a process pool, collected by id: 5 workers, task i computes
// i*i, and the parent gathers the results into a map. Python:
// {i: f.result() for i, f in futures.items()} over a ProcessPoolExecutor.

#include <cstdint>
#include <future>
#include <iostream>
#include <map>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>

#include "multiproc/bootstrap.hpp"
#include "multiproc/pool.hpp"

/// The task: compute the result of job `id`.
struct job {
  int32_t id = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id);
  }
};

MULTIPROC_MESSAGE(job, "examples.collect_results.job")

caf::behavior computer(caf::event_based_actor*) {
  return {
    [](const job& x) { return x.id * x.id; },
  };
}

MULTIPROC_WORKER("collect_results.computer", computer)

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv); // in a child, this runs the worker
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  multiproc::pool_options opts;
  opts.workers = 5;
  auto pool = multiproc::pool::start(sys, "collect_results.computer", opts);
  if (!pool) {
    std::cerr << "cannot start the pool: " << multiproc::describe(pool.error())
              << '\n';
    return 1;
  }
  // One future per id, all submitted before any is awaited.
  std::map<int32_t, multiproc::task_future<int32_t>> futures;
  for (int32_t id = 0; id < 5; ++id)
    futures.emplace(id, pool->submit<int32_t>(job{id}));
  std::map<int32_t, int32_t> results;
  int failures = 0;
  for (auto& [id, future] : futures) {
    auto result = future.get();
    if (result) {
      results.emplace(id, *result);
    } else {
      std::cerr << "job " << id
                << " failed: " << multiproc::describe(result.error()) << '\n';
      ++failures;
    }
  }
  std::cout << '{';
  for (auto i = results.begin(); i != results.end(); ++i)
    std::cout << (i == results.begin() ? "" : ", ") << i->first << ": "
              << i->second;
  std::cout << "}\n" << std::flush;
  if (auto err = pool->close()) {
    std::cerr << "cannot close the pool: " << multiproc::describe(err) << '\n';
    return 1;
  }
  return failures == 0 ? 0 : 1;
}
