// Uses an installed multiproc from outside its source tree: starts a worker
// actor in a child process, asks it to square 7, prints "7^2 = 49" and
// exits 0.
#include <iostream>

#include <multiproc/multiproc.hpp>

struct square {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};
MULTIPROC_MESSAGE(square, "consumer.square")

caf::behavior squarer(caf::event_based_actor*) {
  return {[](const square& x) { return x.value * x.value; }};
}
MULTIPROC_WORKER("squarer", squarer)

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv);
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  auto worker = multiproc::spawn_worker(sys, "squarer");
  if (!worker) {
    std::cerr << multiproc::describe(worker.error()) << "\n";
    return 1;
  }
  auto y = multiproc::request<int32_t>(*worker, std::chrono::seconds{10},
                                       square{7});
  if (!y) {
    std::cerr << multiproc::describe(y.error()) << "\n";
    return 1;
  }
  std::cout << "7^2 = " << *y << "\n";
  multiproc::logger()->debug("the installed logger links"); // log.hpp, spdlog
  auto st = multiproc::stop_worker(*worker);
  return st && st->success() ? 0 : 1;
}
