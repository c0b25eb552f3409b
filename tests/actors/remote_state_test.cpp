// Shared state across hosts (shared_state::publish,
// remote_shared_state::connect): the owner publishes on 127.0.0.1 and its
// clients reach it through the tunnel, from threads of this process and
// from a child process, as they would from another host.

#include "multiproc/network.hpp"
#include "multiproc/pool.hpp"
#include "multiproc/process.hpp"
#include "multiproc/shared_state.hpp"

#include <chrono>
#include <future>
#include <mutex>
#include <cstdint>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <caf/all.hpp>

using namespace multiproc;
using namespace std::chrono_literals;

namespace {

const std::string kSecret = "remote-state-test-secret";
constexpr auto kBound = 20s;

// No test here waits for a connection timeout, so it is generous: under
// TSan, with three tests at a time on 2 cores, a node's multiplexer went
// more than a second without answering a new connection's handshake.
constexpr auto kConnectionTimeout = 10s;

network_options net_options(const std::string& secret = kSecret) {
  network_options net;
  net.secret = secret;
  net.connection_timeout = kConnectionTimeout;
  net.log = [](const std::string&) {};
  return net;
}

remote_state_options client_options(uint16_t port,
                                    const std::string& secret = kSecret) {
  remote_state_options o;
  o.port = port;
  o.secret = secret;
  o.connection_timeout = kConnectionTimeout;
  // Generous: three sanitizer tests at a time on 2 cores, two of them
  // starting processes, took more than the default 5 s to authenticate.
  o.handshake_timeout = kBound;
  o.timeout = 5000ms;
  return o;
}

/// A client on another node: args "<port> <n>"; adds 1 to "counter" n
/// times with fetch_add, sets "seen"[<pid>] = n, and exits 0, or prints
/// what failed and exits 1.
int remote_client(child_context& ctx) {
  std::istringstream in{ctx.args};
  int port = 0;
  int n = 0;
  in >> port >> n;
  auto state = remote_shared_state::connect(
    client_options(static_cast<uint16_t>(port)));
  if (!state) {
    std::fprintf(stderr, "connect: %s\n", describe(state.error()).c_str());
    return 1;
  }
  auto counter = state->value<int64_t>("counter", 0);
  auto seen = state->dict<std::string, int64_t>("seen");
  if (!counter || !seen) {
    std::fprintf(stderr, "handles: %s\n",
                 describe(counter ? seen.error() : counter.error()).c_str());
    return 1;
  }
  for (int i = 0; i < n; ++i) {
    if (auto r = counter->fetch_add(1); !r) {
      std::fprintf(stderr, "fetch_add: %s\n", describe(r.error()).c_str());
      return 1;
    }
  }
  if (auto err = seen->set(std::to_string(::getpid()), n)) {
    std::fprintf(stderr, "set: %s\n", describe(err).c_str());
    return 1;
  }
  return 0;
}

caf::behavior echo_worker(caf::event_based_actor*) {
  return {[](int32_t x) { return x; }};
}

} // namespace

MULTIPROC_REGISTER_ENTRY("remote_state_test.client", remote_client);
MULTIPROC_WORKER("remote_state_test.worker", echo_worker)

namespace {

TEST(RemoteState, ClientsOnOtherNodesShareOneCounter) {
  auto owner = shared_state::start();
  ASSERT_TRUE(owner) << describe(owner.error());
  auto port = owner->publish(net_options());
  ASSERT_TRUE(port) << describe(port.error());
  // Two client processes and two threads of a client in this process; each
  // thread has a connection of its own, each carried by a link of its own.
  std::vector<process> children;
  process_options popts;
  for (int i = 0; i < 2; ++i) {
    auto p = start_process("remote_state_test.client",
                           std::to_string(*port) + " 200", popts);
    ASSERT_TRUE(p) << describe(p.error());
    children.push_back(std::move(*p));
  }
  auto here = remote_shared_state::connect(client_options(*port));
  ASSERT_TRUE(here) << describe(here.error());
  auto counter = here->value<int64_t>("counter", 0);
  ASSERT_TRUE(counter) << describe(counter.error());
  std::vector<std::vector<int64_t>> befores(2);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        auto r = counter->fetch_add(1);
        if (!r) {
          ADD_FAILURE() << describe(r.error());
          return;
        }
        befores[t].push_back(*r);
      }
    });
  for (auto& t : threads)
    t.join();
  for (auto& c : children) {
    auto st = c.join(kBound);
    ASSERT_TRUE(st) << describe(st.error());
    EXPECT_TRUE(st->success()) << st->to_string();
  }
  // Every fetch_add was applied once: the owner's own view has them all,
  // and this process's 600 saw 600 distinct values before theirs.
  auto total = owner->value<int64_t>("counter", 0);
  ASSERT_TRUE(total);
  auto v = total->load();
  ASSERT_TRUE(v) << describe(v.error());
  EXPECT_EQ(*v, 2 * 200 + 2 * 300);
  std::set<int64_t> distinct;
  for (auto& b : befores)
    distinct.insert(b.begin(), b.end());
  EXPECT_EQ(distinct.size(), 600u);
  auto seen = owner->dict<std::string, int64_t>("seen");
  ASSERT_TRUE(seen);
  for (auto& c : children) {
    auto n = seen->get(std::to_string(c.pid()));
    ASSERT_TRUE(n) << describe(n.error());
    EXPECT_EQ(*n, 200);
  }
}

TEST(RemoteState, AnActorOnAnotherNodeSubscribesToACell) {
  auto owner = shared_state::start();
  ASSERT_TRUE(owner) << describe(owner.error());
  auto port = owner->publish(net_options());
  ASSERT_TRUE(port) << describe(port.error());
  auto here = remote_shared_state::connect(client_options(*port));
  ASSERT_TRUE(here) << describe(here.error());
  auto c = here->value<int64_t>("c", 1);
  ASSERT_TRUE(c) << describe(c.error());
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  auto fetched = std::make_shared<std::promise<int64_t>>();
  auto subscribed = std::make_shared<std::promise<void>>();
  auto changed = std::make_shared<std::promise<int64_t>>();
  auto counter = *c;
  caf::actor a;
  // Ends the actor on every way out, so that ~actor_system does not wait.
  struct stopper {
    caf::actor& a;
    ~stopper() {
      caf::anon_send_exit(a, caf::exit_reason::kill);
    }
  } stop_a{a};
  a = sys.spawn([=](caf::event_based_actor* self) -> caf::behavior {
    auto h = counter.from(self);
    h.subscribe();
    h.fetch_add(1).then([=](int64_t old) { fetched->set_value(old); },
                        [=](caf::error& e) {
                          ADD_FAILURE() << describe(e);
                          self->quit();
                        });
    h.sync().then([=] { subscribed->set_value(); },
                  [=](caf::error& e) {
                    ADD_FAILURE() << describe(e);
                    self->quit();
                  });
    return {
      [=](shared_changed_atom, const std::string& cell, int64_t x) {
        if (cell == "c" && x == 42) {
          changed->set_value(x);
          self->quit();
        }
      },
    };
  });
  auto f = fetched->get_future();
  ASSERT_EQ(f.wait_for(kBound), std::future_status::ready);
  EXPECT_EQ(f.get(), 1);
  ASSERT_EQ(subscribed->get_future().wait_for(kBound),
            std::future_status::ready);
  // The owner's own handle changes it; the change crosses to the actor.
  auto mine = owner->value<int64_t>("c", 0);
  ASSERT_TRUE(mine);
  EXPECT_FALSE(mine->store(42));
  auto ch = changed->get_future();
  ASSERT_EQ(ch.wait_for(kBound), std::future_status::ready);
  EXPECT_EQ(ch.get(), 42);
}

TEST(RemoteState, AWrongSecretIsRefusedAtConnect) {
  auto owner = shared_state::start();
  ASSERT_TRUE(owner) << describe(owner.error());
  std::vector<std::string> log;
  std::mutex log_mu;
  auto net = net_options();
  net.log = [&](const std::string& line) {
    std::lock_guard<std::mutex> guard{log_mu};
    log.push_back(line);
  };
  auto port = owner->publish(net);
  ASSERT_TRUE(port) << describe(port.error());
  auto bad = remote_shared_state::connect(client_options(*port, "not-it"));
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error(), errc::auth_failed) << describe(bad.error());
  auto cells = owner->cells();
  ASSERT_TRUE(cells) << describe(cells.error());
  EXPECT_TRUE(cells->empty());
  // Nor does an empty secret get anywhere.
  auto none = remote_shared_state::connect(client_options(*port, ""));
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error(), errc::invalid_argument);
}

TEST(RemoteState, APoolAndASharedStateRefuseEachOthersClients) {
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  pool_options opts;
  opts.remote_only = true;
  auto p = pool::start(sys, "remote_state_test.worker", opts);
  ASSERT_TRUE(p) << describe(p.error());
  auto pool_port = p->publish(net_options());
  ASSERT_TRUE(pool_port) << describe(pool_port.error());
  auto client = remote_shared_state::connect(client_options(*pool_port));
  ASSERT_FALSE(client);
  EXPECT_EQ(client.error(), errc::unknown_entry) << describe(client.error());
  auto owner = shared_state::start();
  ASSERT_TRUE(owner) << describe(owner.error());
  auto state_port = owner->publish(net_options());
  ASSERT_TRUE(state_port) << describe(state_port.error());
  remote_worker_options w;
  w.port = *state_port;
  w.secret = kSecret;
  w.entry = "remote_state_test.worker";
  auto code = run_remote_worker(w);
  ASSERT_FALSE(code);
  EXPECT_EQ(code.error(), errc::unknown_entry) << describe(code.error());
  EXPECT_TRUE(p->workers().empty());
  ASSERT_FALSE(p->close(kBound));
}

TEST(RemoteState, CallsFailWithOwnerDiedOnceTheOwnerIsGone) {
  auto owner = shared_state::start();
  ASSERT_TRUE(owner) << describe(owner.error());
  auto port = owner->publish(net_options());
  ASSERT_TRUE(port) << describe(port.error());
  auto here = remote_shared_state::connect(client_options(*port));
  ASSERT_TRUE(here) << describe(here.error());
  auto counter = here->value<int64_t>("counter", 0);
  ASSERT_TRUE(counter) << describe(counter.error());
  ASSERT_TRUE(counter->fetch_add(5));
  owner->stop();
  // owner_died, not the call's timeout: the tunnel closed the connection.
  auto r = counter->fetch_add(1);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::owner_died) << describe(r.error());
  // And so does a thread's first call, on a new connection.
  std::thread other([&] {
    auto r2 = counter->fetch_add(1);
    ASSERT_FALSE(r2);
    EXPECT_EQ(r2.error(), errc::owner_died) << describe(r2.error());
  });
  other.join();
}

} // namespace
