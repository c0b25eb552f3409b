// A supervised pipeline: a producer puts 1..10000 into a queue, a consumer
// squares each into a result queue and crashes on the first delivery of every
// 1000th message. The supervisor restarts it (one_for_one), the queue hands
// the crashed consumer's message to its replacement, and nothing is lost.

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <iostream>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>

#include "multiproc/bootstrap.hpp"
#include "multiproc/queue.hpp"
#include "multiproc/supervisor.hpp"

using namespace std::chrono_literals;

constexpr int32_t messages = 10000;

/// Child: puts 1..10000 (fds[0] is the work queue), then ends normally; the
/// supervisor closes the queue once every producer has.
int produce(multiproc::child_context& ctx) {
  auto work = multiproc::queue<int32_t>::attach(std::move(ctx.fds.at(0)));
  if (!work)
    return 2;
  for (int32_t x = 1; x <= messages; ++x)
    if (work->put(x, 10s))
      return 3;
  return 0;
}

/// Child: squares what comes (fds[0]) into the result queue (fds[1]) until
/// the end of the stream.
int consume(multiproc::child_context& ctx) {
  auto work = multiproc::queue<int32_t>::attach(std::move(ctx.fds.at(0)));
  auto results = multiproc::queue<int64_t>::attach(std::move(ctx.fds.at(1)));
  if (!work || !results)
    return 2;
  for (;;) {
    auto x = work->get(10s);
    if (!x)
      return x.error() == multiproc::errc::end_of_stream ? 0 : 3;
    if (*x % 1000 == 0 && work->last_deliveries() == 1)
      std::raise(SIGKILL); // a crash while holding the message
    if (results->put(int64_t{*x} * *x, 10s))
      return 4;
  }
}

MULTIPROC_REGISTER_ENTRY("produce", produce);
MULTIPROC_REGISTER_ENTRY("consume", consume);

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv);
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  auto work = multiproc::queue<int32_t>::create();
  auto results = multiproc::queue<int64_t>::create();
  if (!work || !results) {
    std::cerr << "cannot create the queues\n";
    return 1;
  }
  multiproc::supervisor_spec spec;
  spec.strategy = multiproc::restart_strategy::one_for_one;
  spec.max_restarts = 20; // ten crashes are expected within a second
  spec.within = 5s;
  spec.queue = work->fd();
  spec.results = results->fd();
  auto producer = multiproc::child_spec::process(
    "producer", "produce", "", multiproc::child_role::producer);
  producer.restart = multiproc::restart_type::transient;
  auto consumer = multiproc::child_spec::process(
    "consumer", "consume", "", multiproc::child_role::consumer);
  consumer.restart = multiproc::restart_type::transient;
  spec.children = {producer, consumer};
  auto sup = multiproc::supervisor::start(sys, std::move(spec));
  if (!sup) {
    std::cerr << multiproc::describe(sup.error()) << '\n';
    return 1;
  }
  // The result queue ends when every consumer has ended normally.
  std::vector<bool> seen(messages + 1, false);
  int64_t distinct = 0;
  for (;;) {
    auto y = results->get(30s);
    if (!y) {
      if (y.error() != multiproc::errc::end_of_stream)
        std::cerr << multiproc::describe(y.error()) << '\n';
      break;
    }
    auto x = static_cast<int64_t>(std::llround(std::sqrt(double(*y))));
    if (x < 1 || x > messages || x * x != *y) {
      std::cerr << "unexpected result " << *y << '\n';
      continue;
    }
    distinct += seen[x] ? 0 : 1;
    seen[x] = true;
  }
  auto report = sup->wait(30s);
  if (!report) {
    std::cerr << multiproc::describe(report.error()) << '\n';
    return 1;
  }
  std::cout << "stream complete: " << (report->stream_complete ? "yes" : "no")
            << '\n'
            << "consumer restarts: " << report->restarts << '\n'
            << "consumed " << distinct << " of " << messages << '\n'
            << "lost " << messages - distinct << '\n';
  return report->stream_complete && distinct == messages ? 0 : 1;
}
