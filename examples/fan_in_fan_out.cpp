// Fan-in and fan-out over one queue: 2 producer processes put 50,000 ids each,
// 2 consumer processes take them and send each id back over a result queue,
// and the parent checks that every id arrived exactly once. The parent closes
// the work queue once both producers have finished (neither closes it).

#include <chrono>
#include <cstdint>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "multiproc/bootstrap.hpp"
#include "multiproc/process.hpp"
#include "multiproc/queue.hpp"

using namespace std::chrono_literals;

constexpr int32_t producers = 2;
constexpr int32_t consumers = 2;
constexpr int32_t per_producer = 50000;
constexpr int32_t total = producers * per_producer;

/// Child: producer <args> puts its ids into the work queue (fds[0]).
int produce(multiproc::child_context& ctx) {
  auto work = multiproc::queue<int32_t>::attach(std::move(ctx.fds.at(0)));
  if (!work)
    return 2;
  auto first = std::stoi(ctx.args) * per_producer;
  for (int32_t id = first; id < first + per_producer; ++id)
    if (work->put(id, 10s))
      return 3;
  return 0;
}

/// Child: moves ids from the work queue (fds[0]) to the result queue
/// (fds[1]) until the end of the stream.
int consume(multiproc::child_context& ctx) {
  auto work = multiproc::queue<int32_t>::attach(std::move(ctx.fds.at(0)));
  auto results = multiproc::queue<int32_t>::attach(std::move(ctx.fds.at(1)));
  if (!work || !results)
    return 2;
  for (;;) {
    auto id = work->get(10s);
    if (!id)
      return id.error() == multiproc::errc::end_of_stream ? 0 : 3;
    if (results->put(*id, 10s))
      return 4;
  }
}

MULTIPROC_REGISTER_ENTRY("fan_in_fan_out.produce", produce);
MULTIPROC_REGISTER_ENTRY("fan_in_fan_out.consume", consume);

/// A child process; `failed` is set once it has exited unsuccessfully.
struct child {
  multiproc::process proc;
  std::optional<multiproc::exit_status> status;

  /// True once the child has exited (reaps it; reports a failure once).
  bool exited(bool& failed) {
    if (status)
      return true;
    status = proc.status();
    if (status && !status->success()) {
      std::cerr << proc.name() << ": " << status->to_string() << '\n';
      failed = true;
    }
    return status.has_value();
  }
};

/// True once every child of `group` has exited.
bool all_exited(std::vector<child>& group, bool& failed) {
  bool all = true;
  for (auto& c : group)
    all = c.exited(failed) && all;
  return all;
}

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv);
  auto work = multiproc::queue<int32_t>::create();
  auto results = multiproc::queue<int32_t>::create();
  if (!work || !results) {
    std::cerr << "cannot create the queues\n";
    return 1;
  }
  auto start = [&](const char* entry, std::string name, int32_t index,
                   std::vector<child>& group) {
    multiproc::process_options opts;
    opts.fds = {work->fd(), results->fd()};
    opts.name = name + "-" + std::to_string(index);
    auto proc = multiproc::start_process(entry, std::to_string(index), opts);
    if (!proc) {
      std::cerr << multiproc::describe(proc.error()) << '\n';
      return false;
    }
    group.push_back({std::move(*proc), std::nullopt});
    return true;
  };
  std::vector<child> producing;
  std::vector<child> consuming;
  for (int32_t i = 0; i < consumers; ++i)
    if (!start("fan_in_fan_out.consume", "consumer", i, consuming))
      return 1;
  for (int32_t i = 0; i < producers; ++i)
    if (!start("fan_in_fan_out.produce", "producer", i, producing))
      return 1;
  std::vector<bool> seen(total, false);
  int32_t consumed = 0;
  int32_t duplicates = 0;
  bool failed = false;
  auto deadline = std::chrono::steady_clock::now() + 50s;
  for (;;) {
    auto id = results->get(20ms);
    if (id) {
      if (*id < 0 || *id >= total || seen[*id]) {
        ++duplicates;
        continue;
      }
      seen[*id] = true;
      ++consumed;
      continue;
    }
    if (id.error() == multiproc::errc::end_of_stream)
      break; // closed below, and drained
    if (id.error() != multiproc::errc::timeout
        || std::chrono::steady_clock::now() > deadline) {
      std::cerr << multiproc::describe(id.error()) << '\n';
      failed = true;
      break;
    }
    // Idle for a moment: the work queue ends once both producers are done,
    // the result queue once both consumers are.
    if (!work->closed() && all_exited(producing, failed))
      work->close();
    if (work->closed() && !results->closed() && all_exited(consuming, failed))
      results->close();
  }
  std::cout << "consumed " << consumed << " of " << total << ", duplicates "
            << duplicates << '\n';
  return !failed && consumed == total && duplicates == 0 ? 0 : 1;
}
