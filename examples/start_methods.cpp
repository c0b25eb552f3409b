// What a child sees of the parent's globals under each start method: fork
// copies the parent as it is now (counter == 2), forkserver forks the fork
// server that bootstrap() forked before main() changed anything (1), spawn
// runs a fresh program image (1). A child's writes never reach the parent.

#include <chrono>
#include <cstdint>
#include <iostream>

#include "multiproc/bootstrap.hpp"
#include "multiproc/function.hpp"

using namespace std::chrono_literals;

int counter = 1;

/// Runs in the child: reports the counter it sees, sets its own copy to 100
/// and reports that too.
void report_counter(multiproc::pipe_end& parent) {
  [[maybe_unused]] auto err1 = parent.send(int32_t{counter});
  counter = 100;
  [[maybe_unused]] auto err2 = parent.send(int32_t{counter});
}

MULTIPROC_FUNCTION("report_counter", report_counter)

/// Starts one child with `method` and prints what it saw; false on failure.
bool run(multiproc::start_method method) {
  multiproc::process_options opts;
  opts.method = method;
  opts.name = std::string{"counter-"} + to_string(method);
  auto proc = multiproc::start_function("report_counter", opts);
  if (!proc) {
    std::cerr << to_string(method) << ": " << multiproc::describe(proc.error())
              << '\n';
    return false;
  }
  multiproc::pipe_end child{proc->take_channel()};
  auto seen = child.recv<int32_t>(5s);
  auto set = child.recv<int32_t>(5s);
  auto status = proc->join(5s);
  if (!seen || !set || !status || !status->success()) {
    std::cerr << to_string(method) << ": the child failed: "
              << (!seen ? multiproc::describe(seen.error())
                  : !set ? multiproc::describe(set.error())
                  : !status ? multiproc::describe(status.error())
                            : status->to_string())
              << '\n';
    return false;
  }
  std::cout << to_string(method) << ": child saw counter = " << *seen
            << "; parent still has " << counter << " after the child set "
            << *set << '\n';
  return true;
}

int main(int argc, char** argv) {
  // Forks the fork server now, while counter is still 1.
  multiproc::bootstrap(argc, argv);
  counter = 2;
  // fork is refused (fork_unsafe) while this process has a second thread:
  // multiproc's output forwarder runs while any child's output is open, a CAF
  // actor system runs for good. Each child is joined before the next starts,
  // so any order works here; fork goes first, as it must in real programs.
  bool ok = true;
  for (auto method : {multiproc::start_method::fork,
                      multiproc::start_method::forkserver,
                      multiproc::start_method::spawn})
    ok = run(method) && ok;
  return ok ? 0 : 1;
}
