// Remote workers (network.hpp): several nodes on one machine, each a
// process of its own on 127.0.0.1. A remote worker is a child process of
// the test that connects to the pool over TCP like a worker on another
// host; the test kills, freezes or misconfigures it and checks what the
// pool does with its tasks.

#include "multiproc/envelope.hpp"
#include "multiproc/network.hpp"
#include "multiproc/pool.hpp"

#include <chrono>
#include <csignal>
#include <cstdint>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <gtest/gtest.h>

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <cereal/types/string.hpp>

using namespace multiproc;
using namespace std::chrono_literals;

namespace {

using clock_type = std::chrono::steady_clock;
constexpr auto kBound = 20s; // generous: a loaded machine, a sanitizer build

/// Sleeps `ms`, appending "<pid> <value>" to `log` (if set) first.
struct net_task {
  int32_t value = 0;
  int32_t ms = 0;
  std::string log;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value, ms, log);
  }
};

struct net_result {
  int32_t value = 0;
  int32_t pid = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value, pid);
  }
};

} // namespace

MULTIPROC_MESSAGE(net_task, "network_test.task")
MULTIPROC_MESSAGE(net_result, "network_test.result")

namespace {

caf::behavior net_worker(caf::event_based_actor*) {
  return {[](const net_task& t) {
    if (!t.log.empty()) {
      std::ofstream out{t.log, std::ios::app};
      out << ::getpid() << ' ' << t.value << '\n';
    }
    std::this_thread::sleep_for(std::chrono::milliseconds{t.ms});
    return net_result{t.value * t.value, static_cast<int32_t>(::getpid())};
  }};
}

} // namespace

MULTIPROC_WORKER("network_test.worker", net_worker)

namespace {

/// A remote worker node. args: "<port> <mode> <secret>"; mode "ok" or
/// "extra_type" (registers a message type the pool's program lacks).
/// Exit codes: run_remote_worker's, or 3 auth_failed, 4 connection_lost,
/// 5 another error.
int remote_node(child_context& ctx) {
  std::istringstream in{ctx.args};
  int port = 0;
  std::string mode;
  remote_worker_options o;
  in >> port >> mode >> o.secret;
  o.port = static_cast<uint16_t>(port);
  o.entry = "network_test.worker";
  o.heartbeat_interval = 100ms;
  o.connection_timeout = 1000ms;
  if (mode == "extra_type")
    message_registry::instance().add(message_type{
      "network_test.only_here", type_id_of("network_test.only_here"),
      std::type_index{typeid(void)}, 0, nullptr, nullptr, nullptr, nullptr});
  auto code = run_remote_worker(o);
  if (code)
    return *code;
  std::fprintf(stderr, "remote worker: %s\n", describe(code.error()).c_str());
  if (code.error() == errc::auth_failed)
    return 3;
  if (code.error() == errc::connection_lost)
    return 4;
  return 5;
}

} // namespace

MULTIPROC_REGISTER_ENTRY("network_test.remote_node", remote_node);

namespace {

const std::string kSecret = "network-test-secret";

class Network : public ::testing::Test {
protected:
  void SetUp() override {
    char dir[] = "/tmp/multiproc-network-test-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
  }

  void TearDown() override {
    for (auto& r : remotes_) {
      [[maybe_unused]] auto e1 = r.signal(SIGCONT);
      [[maybe_unused]] auto e2 = r.kill();
      [[maybe_unused]] auto st = r.join(5s);
    }
    remotes_.clear();
    std::system(("rm -rf " + dir_).c_str());
  }

  pool start_pool(size_t local_workers) {
    pool_options opts;
    opts.workers = local_workers;
    opts.window = 1; // one task in flight per worker: kills hit one task
    auto p = pool::start(sys_, "network_test.worker", opts);
    EXPECT_TRUE(p) << describe(p.error());
    return std::move(*p);
  }

  uint16_t publish(pool& p, const std::string& secret = kSecret) {
    network_options net;
    net.secret = secret;
    net.heartbeat_interval = 100ms;
    net.connection_timeout = 1000ms;
    net.log = [this](const std::string& line) {
      std::lock_guard<std::mutex> guard{log_mu_};
      log_.push_back(line);
    };
    auto port = p.publish(net);
    EXPECT_TRUE(port) << describe(port.error());
    return port ? *port : 0;
  }

  process& start_remote(uint16_t port, const std::string& mode = "ok",
                        const std::string& secret = kSecret) {
    process_options popts;
    popts.sink = [](const output_line&) {};
    auto proc = start_process("network_test.remote_node",
                              std::to_string(port) + " " + mode + " " + secret,
                              popts);
    EXPECT_TRUE(proc) << describe(proc.error());
    remotes_.push_back(std::move(*proc));
    return remotes_.back();
  }

  /// Waits until the pool has `n` live workers.
  bool wait_workers(pool& p, size_t n) {
    auto deadline = clock_type::now() + kBound;
    while (clock_type::now() < deadline) {
      if (p.workers().size() == n)
        return true;
      std::this_thread::sleep_for(5ms);
    }
    return false;
  }

  bool logged(const std::string& needle) {
    std::lock_guard<std::mutex> guard{log_mu_};
    for (auto& line : log_)
      if (line.find(needle) != std::string::npos)
        return true;
    return false;
  }

  std::string log_text() {
    std::lock_guard<std::mutex> guard{log_mu_};
    std::string out;
    for (auto& line : log_)
      out += line + "\n";
    return out;
  }

  /// The pid that logged task `value` first (0 if none within kBound).
  pid_t wait_started(const std::string& log, int32_t value) {
    auto deadline = clock_type::now() + kBound;
    while (clock_type::now() < deadline) {
      std::ifstream in{log};
      long pid = 0;
      long v = 0;
      while (in >> pid >> v)
        if (v == value)
          return static_cast<pid_t>(pid);
      std::this_thread::sleep_for(2ms);
    }
    return 0;
  }

  caf::actor_system_config cfg_;
  caf::actor_system sys_{cfg_};
  std::string dir_;
  std::vector<process> remotes_;
  std::mutex log_mu_;
  std::vector<std::string> log_;
};

TEST_F(Network, RemoteWorkersJoinAndServeTasks) {
  auto p = start_pool(1);
  auto port = publish(p);
  ASSERT_NE(port, 0);
  auto& remote = start_remote(port);
  ASSERT_TRUE(wait_workers(p, 2)) << log_text();
  std::vector<net_task> tasks;
  for (int32_t i = 0; i < 40; ++i)
    tasks.push_back(net_task{i, 5, ""});
  auto rs = p.map<net_result>(tasks, 1);
  std::set<int32_t> pids;
  for (size_t i = 0; i < rs.size(); ++i) {
    ASSERT_TRUE(rs[i]) << describe(rs[i].error());
    EXPECT_EQ(rs[i]->value, static_cast<int32_t>(i * i));
    pids.insert(rs[i]->pid);
  }
  EXPECT_EQ(pids.count(remote.pid()), 1u) << "the remote worker ran no task";
  bool listed = false;
  for (auto& w : p.workers())
    if (w.pid == remote.pid())
      listed = !w.node.empty();
  EXPECT_TRUE(listed) << "workers() does not list the remote one with a node";
  ASSERT_FALSE(p.close(kBound));
  auto st = remote.join(kBound);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_TRUE(st->success()) << st->to_string();
}

TEST_F(Network, AWrongSecretIsRejectedWithALoggedReasonAndRunsNothing) {
  auto p = start_pool(1);
  auto port = publish(p);
  ASSERT_NE(port, 0);
  // A worker with another secret finds that the pool cannot prove it holds
  // its secret, and gives up before it answers.
  auto& stranger = start_remote(port, "ok", "not-the-secret");
  auto st = stranger.join(kBound);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_EQ(st->code, 3) << "the worker was not refused with auth_failed: "
                         << st->to_string();
  // An intruder speaks the gateway's protocol by hand, ignores the pool's
  // proof and answers the challenge without the secret.
  caf::actor_system_config icfg;
  icfg.load<caf::io::middleman>();
  icfg.set("middleman.app-identifiers",
           std::vector<std::string>{"multiproc-"
                                    + std::to_string(wire::protocol_version)});
  caf::actor_system intruder{icfg};
  auto gw = intruder.middleman().remote_actor("127.0.0.1", port);
  ASSERT_TRUE(gw) << intruder.render(gw.error());
  caf::scoped_actor self{intruder};
  using hello_atom = caf::atom_constant<caf::atom("mp_hello")>;
  using join_atom = caf::atom_constant<caf::atom("mp_join")>;
  bool challenged = false;
  self->request(*gw, kBound, hello_atom::value, std::string(32, 'n'),
                std::string{"network_test.worker"})
    .receive([&](const std::string&, const std::string&) { challenged = true; },
             [&](caf::error& err) { ADD_FAILURE() << intruder.render(err); });
  ASSERT_TRUE(challenged);
  caf::error refused;
  self->request(*gw, kBound, join_atom::value, std::string(32, 'x'),
                caf::actor_cast<caf::actor>(self), std::string{"intruder"},
                int32_t{1}, std::string{"evil"})
    .receive([&](const caf::actor&) { ADD_FAILURE() << "the intruder joined"; },
             [&](caf::error& err) { refused = std::move(err); });
  EXPECT_EQ(refused, errc::auth_failed) << intruder.render(refused);
  // Anything else it sends before authenticating is dropped and logged.
  self->request(*gw, kBound, std::string{"run this"})
    .receive([&](const caf::message&) { ADD_FAILURE() << "it was answered"; },
             [&](caf::error&) {});
  EXPECT_TRUE(logged("wrong secret")) << log_text();
  EXPECT_TRUE(logged("did not authenticate")) << log_text();
  EXPECT_EQ(p.workers().size(), 1u) << "the intruder joined";
  auto r = p.submit<net_result>(net_task{7, 0, ""}).get();
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(r->value, 49);
}

TEST_F(Network, AMessageTypeFingerprintMismatchIsRejected) {
  auto p = start_pool(1);
  auto port = publish(p);
  ASSERT_NE(port, 0);
  auto& other = start_remote(port, "extra_type");
  auto st = other.join(kBound);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_EQ(st->code, 65) << st->to_string();
  EXPECT_TRUE(logged("fingerprint")) << log_text();
  EXPECT_EQ(p.workers().size(), 1u);
}

/// Runs slow tasks until one starts on the remote worker, does `harm` to
/// it, and checks that every task still succeeds (the remote one's task
/// ran again on the local worker) and the remote worker left the pool.
void expect_survives(Network& t, pool& p, process& remote,
                     const std::string& log, int harm) {
  std::vector<task_future<net_result>> fs;
  for (int32_t i = 0; i < 6; ++i)
    fs.push_back(p.submit<net_result>(net_task{i, 300, log}));
  pid_t victim = 0;
  auto deadline = clock_type::now() + kBound;
  while (victim != remote.pid() && clock_type::now() < deadline) {
    std::ifstream in{log};
    long pid = 0;
    long v = 0;
    while (in >> pid >> v)
      if (pid == remote.pid())
        victim = static_cast<pid_t>(pid);
    std::this_thread::sleep_for(2ms);
  }
  ASSERT_EQ(victim, remote.pid()) << "no task started on the remote worker";
  ASSERT_FALSE(remote.signal(harm));
  for (auto& f : fs) {
    ASSERT_EQ(f.wait_for(kBound), std::future_status::ready)
      << "a task hangs after the remote worker got " << signal_name(harm);
    auto r = f.get();
    ASSERT_TRUE(r) << describe(r.error());
    EXPECT_NE(r->pid, remote.pid()) << "a result came from the harmed worker";
  }
  EXPECT_GE(p.stats().redispatched, 1u);
  (void) t;
}

TEST_F(Network, ARemoteWorkerKilledMidTaskHasItsTaskRunAgain) {
  auto p = start_pool(1);
  auto port = publish(p);
  ASSERT_NE(port, 0);
  auto& remote = start_remote(port);
  ASSERT_TRUE(wait_workers(p, 2)) << log_text();
  ASSERT_NO_FATAL_FAILURE(
    expect_survives(*this, p, remote, dir_ + "/runs", SIGKILL));
  EXPECT_TRUE(wait_workers(p, 1)) << "the dead remote worker is still listed";
}

TEST_F(Network, AFrozenRemoteWorkerIsDroppedAfterTheConnectionTimeout) {
  auto p = start_pool(1);
  auto port = publish(p);
  ASSERT_NE(port, 0);
  auto& remote = start_remote(port);
  ASSERT_TRUE(wait_workers(p, 2)) << log_text();
  ASSERT_NO_FATAL_FAILURE(
    expect_survives(*this, p, remote, dir_ + "/runs", SIGSTOP));
  EXPECT_TRUE(wait_workers(p, 1)) << "the frozen remote worker is still listed";
}

} // namespace
