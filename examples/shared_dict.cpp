// 5 worker processes each write 10 keys into one shared dictionary, the
// counterpart of Python's Manager().dict(): the dictionary lives in its owner
// (a thread of this process), each set() is one message to it, and the
// parent then sees all 50 entries.

#include <chrono>
#include <cstdint>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "multiproc/bootstrap.hpp"
#include "multiproc/function.hpp"
#include "multiproc/shared_state.hpp"

using namespace std::chrono_literals;

constexpr int workers = 5;
constexpr int keys_per_worker = 10;

std::string key_name(int proc, int key) {
  return "proc" + std::to_string(proc) + "_key" + std::to_string(key);
}

/// Runs in worker `proc`: sets proc{proc}_key{j} to proc * 100 + j.
int write_keys(multiproc::dict<std::string, int> d, int proc) {
  for (int j = 0; j < keys_per_worker; ++j) {
    if (auto err = d.set(key_name(proc, j), proc * 100 + j)) {
      std::cerr << "set " << key_name(proc, j) << ": "
                << multiproc::describe(err) << '\n';
      return 2;
    }
  }
  return 0;
}

MULTIPROC_FUNCTION("write_keys", write_keys)

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv);
  auto state = multiproc::shared_state::start();
  if (!state) {
    std::cerr << "cannot start the shared state: "
              << multiproc::describe(state.error()) << '\n';
    return 1;
  }
  auto d = state->dict<std::string, int>("entries");
  if (!d) {
    std::cerr << "cannot create the dictionary: "
              << multiproc::describe(d.error()) << '\n';
    return 1;
  }
  std::vector<multiproc::process> children;
  for (int i = 0; i < workers; ++i) {
    multiproc::process_options opts;
    opts.name = "writer-" + std::to_string(i);
    auto child = multiproc::start_function("write_keys", opts, *d, i);
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
  auto size = d->size();
  if (!size) {
    std::cerr << "size: " << multiproc::describe(size.error()) << '\n';
    return 1;
  }
  auto sample = d->get(key_name(3, 7));
  if (!sample) {
    std::cerr << "get: " << multiproc::describe(sample.error()) << '\n';
    return 1;
  }
  // Every entry, checked against what its writer wrote.
  auto all = d->snapshot();
  if (!all) {
    std::cerr << "snapshot: " << multiproc::describe(all.error()) << '\n';
    return 1;
  }
  int wrong = 0;
  for (int i = 0; i < workers; ++i)
    for (int j = 0; j < keys_per_worker; ++j) {
      auto it = all->find(key_name(i, j));
      wrong += it == all->end() || it->second != i * 100 + j ? 1 : 0;
    }
  constexpr int expected = workers * keys_per_worker;
  std::cout << key_name(3, 7) << " = " << *sample << '\n'
            << "Total entries: " << *size << " (expected " << expected << ")\n"
            << "wrong or missing: " << wrong << '\n';
  return *size == expected && wrong == 0 ? 0 : 1;
}
