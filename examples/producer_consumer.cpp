// A producer process puts 1..5 into a queue and closes it; a consumer process
// prints each value in order and stops at the end of the stream: close() ends
// it, no None sentinel. Python: Queue, two Process objects and a sentinel.

#include <chrono>
#include <cstdint>
#include <iostream>

#include "multiproc/bootstrap.hpp"
#include "multiproc/process.hpp"
#include "multiproc/queue.hpp"

using namespace std::chrono_literals;

/// Child: puts 1..5 (fds[0] is the queue), then ends the stream.
int produce(multiproc::child_context& ctx) {
  auto q = multiproc::queue<int32_t>::attach(std::move(ctx.fds.at(0)));
  if (!q)
    return 2;
  for (int32_t x = 1; x <= 5; ++x)
    if (q->put(x, 10s))
      return 3;
  q->close();
  return 0;
}

/// Child: prints what comes until the end of the stream.
int consume(multiproc::child_context& ctx) {
  auto q = multiproc::queue<int32_t>::attach(std::move(ctx.fds.at(0)));
  if (!q)
    return 2;
  for (;;) {
    auto x = q->get(10s);
    if (!x) {
      if (x.error() != multiproc::errc::end_of_stream)
        return 3;
      std::cout << "done\n";
      return 0;
    }
    std::cout << "Consumed: " << *x << '\n';
  }
}

MULTIPROC_REGISTER_ENTRY("producer_consumer.produce", produce);
MULTIPROC_REGISTER_ENTRY("producer_consumer.consume", consume);

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv); // in a child, this runs its entry
  auto q = multiproc::queue<int32_t>::create();
  if (!q) {
    std::cerr << "cannot create the queue: " << multiproc::describe(q.error())
              << '\n';
    return 1;
  }
  multiproc::process_options opts;
  opts.fds = {q->fd()}; // each child gets its own copy of the descriptor
  opts.name = "consumer";
  auto consumer = multiproc::start_process("producer_consumer.consume", "", opts);
  opts.name = "producer";
  auto producer = multiproc::start_process("producer_consumer.produce", "", opts);
  if (!consumer || !producer) {
    std::cerr << "cannot start the children\n";
    return 1;
  }
  bool ok = true;
  for (auto* child : {&*producer, &*consumer}) {
    auto status = child->join(30s);
    if (!status || !status->success()) {
      std::cerr << child->name() << ": "
                << (status ? status->to_string()
                           : multiproc::describe(status.error()))
                << '\n';
      ok = false;
    }
  }
  return ok ? 0 : 1;
}
