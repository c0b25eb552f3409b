// 4 worker processes each add 1 to one shared counter 50,000 times, with no
// lock: every add is a message to the counter's owner (a thread of this
// process), which applies one at a time, so no increment is lost. Python: a
// multiprocessing.Value incremented without get_lock() silently loses some.

#include <chrono>
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "multiproc/bootstrap.hpp"
#include "multiproc/function.hpp"
#include "multiproc/shared_state.hpp"

using namespace std::chrono_literals;

constexpr int workers = 4;
constexpr int64_t increments = 50000;

/// Runs in each worker: `times` increments of `counter`. All but the last are
/// fire-and-forget posts (batched on the connection to the owner); sync()
/// waits until they are applied, so the last one, a fetch_add, must see at
/// least this worker's own `times - 1`.
int add_many(multiproc::value<int64_t> counter, int64_t times) {
  for (int64_t i = 1; i < times; ++i) {
    if (auto err = counter.add(1)) {
      std::cerr << "add: " << multiproc::describe(err) << '\n';
      return 2;
    }
  }
  if (auto err = counter.sync()) {
    std::cerr << "sync: " << multiproc::describe(err) << '\n';
    return 3;
  }
  auto before = counter.fetch_add(1);
  if (!before) {
    std::cerr << "fetch_add: " << multiproc::describe(before.error()) << '\n';
    return 4;
  }
  if (*before < times - 1) {
    std::cerr << "fetch_add saw " << *before << " after " << times - 1
              << " synced adds of my own\n";
    return 5;
  }
  return 0;
}

MULTIPROC_FUNCTION("add_many", add_many)

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv);
  auto state = multiproc::shared_state::start();
  if (!state) {
    std::cerr << "cannot start the shared state: "
              << multiproc::describe(state.error()) << '\n';
    return 1;
  }
  auto counter = state->value<int64_t>("counter", 0);
  if (!counter) {
    std::cerr << "cannot create the counter: "
              << multiproc::describe(counter.error()) << '\n';
    return 1;
  }
  std::vector<multiproc::process> children;
  for (int k = 0; k < workers; ++k) {
    multiproc::process_options opts;
    opts.name = "adder-" + std::to_string(k);
    // The handle is a value: it travels to the child as an argument.
    auto child = multiproc::start_function("add_many", opts, *counter,
                                           increments);
    if (!child) {
      std::cerr << "cannot start " << opts.name << ": "
                << multiproc::describe(child.error()) << '\n';
      return 1; // the process destructors kill and reap the others
    }
    children.push_back(std::move(*child));
  }
  if (auto err = multiproc::join_all(children, 45s)) {
    std::cerr << multiproc::describe(err) << '\n';
    return 1;
  }
  auto total = counter->load();
  if (!total) {
    std::cerr << "load: " << multiproc::describe(total.error()) << '\n';
    return 1;
  }
  constexpr int64_t expected = workers * increments;
  std::cout << "counter = " << *total << " (expected " << expected << ")\n";
  return *total == expected ? 0 : 1;
}
