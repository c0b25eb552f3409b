// A shared-memory array of 1,000,000 doubles that 4 worker processes square
// in place, each its own slice, with no copy and no lock: the parent learns
// that a slice is done when its process exits. Python: multiprocessing.Array
// with lock=False, or a NumPy array on shared_memory (without its leak).

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "multiproc/bootstrap.hpp"
#include "multiproc/process.hpp"
#include "multiproc/shm_array.hpp"

using namespace std::chrono_literals;

constexpr size_t length = 1000000;
constexpr size_t workers = 4;

/// Child: squares the elements [first, last) (args) of the array (fds[0]).
int square_slice(multiproc::child_context& ctx) {
  auto a = multiproc::shm_array<double>::attach(std::move(ctx.fds.at(0)));
  if (!a)
    return 2;
  size_t first = 0, last = 0;
  if (std::sscanf(ctx.args.c_str(), "%zu %zu", &first, &last) != 2)
    return 3;
  for (size_t i = first; i < last; ++i)
    (*a)[i] *= (*a)[i];
  return 0;
}

MULTIPROC_REGISTER_ENTRY("square_slice", square_slice);

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv);
  auto a = multiproc::shm_array<double>::create(length);
  if (!a) {
    std::fprintf(stderr, "%s\n", multiproc::describe(a.error()).c_str());
    return 1;
  }
  for (size_t i = 0; i < length; ++i)
    (*a)[i] = static_cast<double>(i) * 0.5;
  std::vector<multiproc::process> children;
  for (size_t k = 0; k < workers; ++k) {
    multiproc::process_options opts;
    opts.name = "squarer-" + std::to_string(k);
    opts.fds = {a->fd()}; // the child maps the same memory
    auto first = k * length / workers, last = (k + 1) * length / workers;
    auto child = multiproc::start_process(
      "square_slice", std::to_string(first) + " " + std::to_string(last), opts);
    if (!child) {
      std::fprintf(stderr, "%s\n", multiproc::describe(child.error()).c_str());
      return 1;
    }
    children.push_back(std::move(*child));
  }
  for (auto& c : children) {
    auto st = c.join(30s);
    if (!st || !st->success()) {
      std::fprintf(stderr, "%s failed\n", c.name().c_str());
      return 1;
    }
  }
  std::printf("first 5: %g %g %g %g %g\n", (*a)[0], (*a)[1], (*a)[2], (*a)[3],
              (*a)[4]);
  // The same sums, in the same order, of what the workers wrote and of the
  // serial computation.
  double shared = 0, serial = 0;
  for (size_t i = 0; i < length; ++i) {
    auto x = static_cast<double>(i) * 0.5;
    shared += (*a)[i];
    serial += x * x;
  }
  std::printf("checksum %.17g, serial %.17g: %s\n", shared, serial,
              shared == serial ? "equal" : "DIFFERENT");
  return shared == serial ? 0 : 1;
}
