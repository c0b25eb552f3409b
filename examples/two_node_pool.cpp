// A pool that spans two nodes: 2 workers of its own plus 2 remote workers
// that connect over TCP from a second process (the "other host": here it
// connects over loopback). Both remote workers prove that they hold the
// cluster secret before they get any task; the pool then squares 0..99 on
// all four and prints the sum and how many tasks each node served. On real
// hosts the second node runs `multiproc worker --connect HOST:PORT --entry
// two_node.square` (docs/distribution.md).

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <cereal/types/string.hpp>
#include <unistd.h>

#include "multiproc/bootstrap.hpp"
#include "multiproc/network.hpp"
#include "multiproc/pool.hpp"
#include "multiproc/process.hpp"

using namespace std::chrono_literals;

/// Squares `value`; the answer says which node and process served it.
struct square {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

struct squared {
  int64_t value = 0;
  std::string node; // "local" or "remote"
  int32_t pid = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value, node, pid);
  }
};

MULTIPROC_MESSAGE(square, "examples.two_node.square")
MULTIPROC_MESSAGE(squared, "examples.two_node.squared")

caf::behavior squarer(caf::event_based_actor*) {
  return {[](const square& x) {
    const char* node = std::getenv("TWO_NODE_ROLE");
    return squared{int64_t{x.value} * x.value, node ? node : "local",
                   static_cast<int32_t>(::getpid())};
  }};
}

MULTIPROC_WORKER("two_node.square", squarer)

/// The second node: two remote workers, each a process of its own that
/// connects to the pool (args: "<port> <secret>", passed by the runtime,
/// not on a command line).
int second_node(multiproc::child_context& ctx) {
  ::setenv("TWO_NODE_ROLE", "remote", 1);
  multiproc::remote_worker_options o;
  o.host = "127.0.0.1";
  auto space = ctx.args.find(' ');
  o.port = static_cast<uint16_t>(std::stoi(ctx.args.substr(0, space)));
  o.secret = ctx.args.substr(space + 1);
  o.entry = "two_node.square";
  o.name = "remote-" + std::to_string(::getpid());
  auto code = multiproc::run_remote_worker(o);
  if (!code) {
    std::cerr << "remote worker: " << multiproc::describe(code.error()) << '\n';
    return 1;
  }
  return *code;
}

MULTIPROC_REGISTER_ENTRY("two_node.second_node", second_node);

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv);
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  multiproc::pool_options opts;
  opts.workers = 2;
  auto p = multiproc::pool::start(sys, "two_node.square", opts);
  if (!p) {
    std::cerr << multiproc::describe(p.error()) << '\n';
    return 1;
  }
  // The secret every node holds (in real use: from a file or the
  // environment, never on a command line).
  const std::string secret = "two-node-example-secret";
  multiproc::network_options net;
  net.secret = secret; // listens on 127.0.0.1 only
  net.log = [](const std::string&) {}; // joins are not part of the output
  auto port = p->publish(net);
  if (!port) {
    std::cerr << multiproc::describe(port.error()) << '\n';
    return 1;
  }
  std::vector<multiproc::process> remotes;
  for (int i = 0; i < 2; ++i) {
    auto proc = multiproc::start_process("two_node.second_node",
                                         std::to_string(*port) + " " + secret);
    if (!proc) {
      std::cerr << multiproc::describe(proc.error()) << '\n';
      return 1;
    }
    remotes.push_back(std::move(*proc));
  }
  // Wait until both remote workers have joined (at most 10 s).
  for (int i = 0; i < 1000 && p->workers().size() < 4; ++i)
    std::this_thread::sleep_for(10ms);
  std::cout << "workers: " << p->workers().size() << '\n';
  std::vector<square> tasks;
  for (int32_t i = 0; i < 100; ++i)
    tasks.push_back(square{i});
  auto results = p->map<squared>(tasks, 1);
  int64_t sum = 0;
  std::map<std::string, int> served;
  for (auto& r : results) {
    if (!r) {
      std::cerr << multiproc::describe(r.error()) << '\n';
      return 1;
    }
    sum += r->value;
    ++served[r->node];
  }
  std::cout << "sum: " << sum << '\n';
  for (auto& [node, n] : served)
    std::cout << node << " node served " << n << " tasks\n";
  if (auto err = p->close())
    std::cerr << multiproc::describe(err) << '\n';
  for (auto& proc : remotes) {
    auto st = proc.join(10s);
    std::cout << "remote worker process " << (st ? st->to_string()
                                                  : multiproc::describe(st.error()))
              << '\n';
  }
  return sum == 328350 && served.size() == 2 ? 0 : 1;
}
