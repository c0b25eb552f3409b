// A child's stdout reaches the parent line by line, tagged "[name pid]" by
// the default output sink, even when the child crashes right after printing:
// children run with a line-buffered stdout. The parent then reports the crash
// from the child's exit status.

#include <chrono>
#include <csignal>
#include <iostream>

#include "multiproc/bootstrap.hpp"
#include "multiproc/function.hpp"

using namespace std::chrono_literals;

/// Runs in the child: three lines, then a segmentation fault.
void crash_after_three_lines() {
  std::cout << "line 1: starting\n";
  std::cout << "line 2: working\n";
  std::cout << "line 3: about to crash\n";
  std::signal(SIGSEGV, SIG_DFL);
  std::raise(SIGSEGV);
}

MULTIPROC_FUNCTION("crash_after_three_lines", crash_after_three_lines)

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv);
  multiproc::process_options opts;
  opts.name = "crasher"; // the sink is empty: the default, to our stderr
  auto proc = multiproc::start_function("crash_after_three_lines", opts);
  if (!proc) {
    std::cerr << "cannot start the child: "
              << multiproc::describe(proc.error()) << '\n';
    return 1;
  }
  // join() returns once the child has exited and its output is forwarded.
  auto status = proc->join(10s);
  if (!status) {
    std::cerr << "join failed: " << multiproc::describe(status.error())
              << '\n';
    return 1;
  }
  std::cerr << "child " << proc->name() << '[' << proc->pid() << "] "
            << status->to_string() << '\n';
  return status->signaled && status->signal == SIGSEGV ? 0 : 1;
}
