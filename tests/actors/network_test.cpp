// Remote workers (network.hpp): several nodes on one machine, each a
// process of its own on 127.0.0.1. A remote worker is a child process of
// the test that connects to the pool over TCP like a worker on another
// host; the test kills, freezes or misconfigures it and checks what the
// pool does with its tasks. Where a test must cut a link, the worker runs
// in a network namespace of its own, joined to the test's by a veth pair.

#include "multiproc/envelope.hpp"
#include "multiproc/network.hpp"
#include "multiproc/pool.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sched.h>
#include <sys/wait.h>
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
/// Both ends' failure detection. Under TSan, with three tests at a time on
/// two cores, a node went over a second without a heartbeat: a shorter
/// timeout dropped healthy links mid-join.
constexpr auto kHeartbeat = 250ms;
constexpr auto kConnectionTimeout = 3000ms;

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

/// A remote worker node. args: "<port> <mode> <secret> [<host>]"; mode
/// "ok", "extra_type" (registers a message type the pool's program lacks)
/// or "netns:<name>" (serves from the network namespace `ip netns add
/// <name>` made). Exit codes: run_remote_worker's, or 3 auth_failed,
/// 4 connection_lost, 5 another error, 6 the namespace cannot be entered.
int remote_node(child_context& ctx) {
  std::istringstream in{ctx.args};
  int port = 0;
  std::string mode;
  remote_worker_options o;
  in >> port >> mode >> o.secret;
  o.port = static_cast<uint16_t>(port);
  if (std::string host; in >> host)
    o.host = host;
  if (mode.rfind("netns:", 0) == 0) {
    // Before the actor system exists: setns() moves only the calling
    // thread, and CAF's threads inherit its namespace when they start.
    auto path = "/var/run/netns/" + mode.substr(6);
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    bool entered = fd >= 0 && ::setns(fd, CLONE_NEWNET) == 0;
    int err = errno;
    if (fd >= 0)
      ::close(fd);
    if (!entered) {
      std::fprintf(stderr, "remote worker: cannot enter %s: %s\n",
                   path.c_str(), std::strerror(err));
      return 6;
    }
  }
  o.entry = "network_test.worker";
  o.heartbeat_interval = kHeartbeat;
  o.connection_timeout = kConnectionTimeout;
  // A TSan child among three tests on two cores took over the default 5 s
  // for the join's round trips; no test here waits for this timeout.
  o.handshake_timeout = kBound;
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

/// A node that speaks the gateway's protocol without the secret. args:
/// "<port>". Exit codes: 0 it was challenged, its wrong answer refused with
/// auth_failed and its other message left unanswered; otherwise 10 cannot
/// connect, 11 not challenged, 12 it joined, 13 refused otherwise, 14 its
/// other message was answered (each said on stderr).
int intruder_node(child_context& ctx) {
  auto port = static_cast<uint16_t>(std::stoi(ctx.args));
  caf::actor_system_config cfg;
  cfg.load<caf::io::middleman>();
  // Configured as multiproc's own nodes are (net_node). With CAF's
  // defaults (work stealing, BASP workers), TSan reported CAF handing a
  // received string from one of its threads to another, with both stacks
  // cut off at libstdc++ (no frame of ours or of libcaf_*.so to suppress).
  cfg.set("scheduler.policy", caf::atom("sharing"));
  cfg.set("scheduler.max-threads", size_t{2});
  cfg.set("middleman.workers", size_t{0});
  cfg.set("middleman.app-identifiers",
          std::vector<std::string>{"multiproc-"
                                   + std::to_string(wire::protocol_version)});
  caf::actor_system sys{cfg};
  auto gw = sys.middleman().remote_actor("127.0.0.1", port);
  if (!gw) {
    std::fprintf(stderr, "intruder: %s\n", sys.render(gw.error()).c_str());
    return 10;
  }
  caf::scoped_actor self{sys};
  using hello_atom = caf::atom_constant<caf::atom("mp_hello")>;
  using join_atom = caf::atom_constant<caf::atom("mp_join")>;
  int code = 11;
  self->request(*gw, kBound, hello_atom::value, std::string(32, 'n'),
                std::string{"network_test.worker"})
    .receive([&](const std::string&, const std::string&) { code = 0; },
             [&](caf::error& err) {
               std::fprintf(stderr, "intruder: no challenge: %s\n",
                            sys.render(err).c_str());
             });
  if (code != 0)
    return code;
  self->request(*gw, kBound, join_atom::value, std::string(32, 'x'),
                caf::actor_cast<caf::actor>(self), std::string{"intruder"},
                int32_t{1}, std::string{"evil"})
    .receive([&](const caf::actor&) { code = 12; },
             [&](caf::error& err) {
               if (err != errc::auth_failed) {
                 std::fprintf(stderr, "intruder: refused with %s\n",
                              sys.render(err).c_str());
                 code = 13;
               }
             });
  if (code != 0)
    return code;
  // Anything else it sends before authenticating is dropped and logged.
  self->request(*gw, kBound, std::string{"run this"})
    .receive([&](const caf::message&) { code = 14; }, [&](caf::error&) {});
  return code;
}

} // namespace

MULTIPROC_REGISTER_ENTRY("network_test.intruder", intruder_node);

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

  uint16_t publish(pool& p, const std::string& secret = kSecret,
                   const std::string& host = "127.0.0.1") {
    network_options net;
    net.host = host;
    net.secret = secret;
    net.heartbeat_interval = kHeartbeat;
    net.connection_timeout = kConnectionTimeout;
    net.handshake_timeout = kBound; // as the remote worker's
    net.log = [this](const std::string& line) {
      std::lock_guard<std::mutex> guard{log_mu_};
      log_.push_back(line);
    };
    auto port = p.publish(net);
    EXPECT_TRUE(port) << describe(port.error());
    return port ? *port : 0;
  }

  process& start_remote(uint16_t port, const std::string& mode = "ok",
                        const std::string& secret = kSecret,
                        const std::string& host = "127.0.0.1") {
    process_options popts;
    // Kept for failure messages (log_text), apart from the pool's log.
    popts.sink = [this](const output_line& line) {
      std::lock_guard<std::mutex> guard{log_mu_};
      remote_out_.push_back("remote[" + std::to_string(line.pid) + "]: "
                            + line.text);
    };
    auto proc = start_process("network_test.remote_node",
                              std::to_string(port) + " " + mode + " " + secret
                                + " " + host,
                              popts);
    EXPECT_TRUE(proc) << describe(proc.error());
    remotes_.push_back(std::move(*proc));
    return remotes_.back();
  }

  process& start_intruder(uint16_t port) {
    process_options popts;
    popts.sink = [this](const output_line& line) {
      std::lock_guard<std::mutex> guard{log_mu_};
      remote_out_.push_back("intruder: " + line.text);
    };
    auto proc = start_process("network_test.intruder", std::to_string(port),
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

  /// The pool's log, then what the remote workers printed.
  std::string log_text() {
    std::lock_guard<std::mutex> guard{log_mu_};
    std::string out;
    for (auto& line : log_)
      out += line + "\n";
    for (auto& line : remote_out_)
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
  std::vector<std::string> remote_out_;
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

TEST_F(Network, ARemoteOnlyPoolWaitsForItsFirstRemoteWorker) {
  pool_options opts;
  opts.remote_only = true;
  opts.workers = 3; // ignored: no worker process of its own
  auto p = pool::start(sys_, "network_test.worker", opts);
  ASSERT_TRUE(p) << describe(p.error());
  EXPECT_EQ(p->size(), 0u);
  EXPECT_TRUE(p->workers().empty());
  // Submitted before any worker exists: it waits, it does not fail.
  auto early = p->submit<net_result>(net_task{7, 0, ""});
  EXPECT_EQ(early.wait_for(200ms), std::future_status::timeout);
  auto port = publish(*p);
  ASSERT_NE(port, 0);
  auto& remote = start_remote(port);
  ASSERT_EQ(early.wait_for(kBound), std::future_status::ready) << log_text();
  auto r = early.get();
  ASSERT_TRUE(r) << describe(r.error()) << "\n" << log_text();
  EXPECT_EQ(r->value, 49);
  EXPECT_EQ(r->pid, remote.pid());
  std::vector<net_task> tasks;
  for (int32_t i = 0; i < 20; ++i)
    tasks.push_back(net_task{i, 0, ""});
  auto rs = p->map<net_result>(tasks);
  ASSERT_EQ(rs.size(), tasks.size());
  for (size_t i = 0; i < rs.size(); ++i) {
    ASSERT_TRUE(rs[i]) << describe(rs[i].error());
    EXPECT_EQ(rs[i]->value, static_cast<int32_t>(i * i));
    EXPECT_EQ(rs[i]->pid, remote.pid()) << "task " << i;
  }
  ASSERT_FALSE(p->close(kBound));
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
  // An intruder node (a process of its own, as a peer on another host
  // is) asks for a challenge, answers it wrongly, then asks for work.
  auto& intruder = start_intruder(port);
  auto ist = intruder.join(kBound);
  ASSERT_TRUE(ist) << describe(ist.error());
  EXPECT_EQ(ist->code, 0) << ist->to_string() << "\n" << log_text();
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

/// Runs `ip <args>`; a failure names the command and what it printed.
::testing::AssertionResult ip(const std::string& args) {
  auto cmd = "ip " + args;
  auto* out = ::popen((cmd + " 2>&1").c_str(), "r");
  if (out == nullptr)
    return ::testing::AssertionFailure()
           << "cannot run `" << cmd << "`: " << std::strerror(errno);
  std::string text;
  char buf[256];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), out)) > 0;)
    text.append(buf, n);
  int st = ::pclose(out);
  if (st == 0)
    return ::testing::AssertionSuccess();
  auto result = ::testing::AssertionFailure() << "`" << cmd << "` failed (";
  if (st != -1 && WIFEXITED(st))
    result << "exit code " << WEXITSTATUS(st);
  else
    result << "wait status " << st;
  return result << "): " << text;
}

/// A network namespace for one remote worker, joined to the test's own by a
/// veth pair: the pool's end is pool_address() here, the worker's end the
/// next address of the same /30 in the namespace. Names and subnet derive
/// from this process's pid, so that parallel test runs on one machine
/// (ctest -j, several presets) do not collide. Going out of scope kills the
/// worker given to guard() and removes the pair and the namespace, whether
/// or not the test passed.
class veth_link {
public:
  veth_link() {
    auto pid = std::to_string(::getpid());
    ns_ = "mpns" + pid;
    pool_if_ = "mpv" + pid + "a"; // at most 11 of IFNAMSIZ's 15 characters
    worker_if_ = "mpv" + pid + "b";
    // 10.203.0.0/16 holds 16384 /30s.
    auto k = ::getpid() % 16384;
    auto net = "10.203." + std::to_string(k / 64) + ".";
    pool_address_ = net + std::to_string(k % 64 * 4 + 1);
    worker_address_ = net + std::to_string(k % 64 * 4 + 2);
  }

  veth_link(const veth_link&) = delete;
  veth_link& operator=(const veth_link&) = delete;

  ~veth_link() {
    // The worker first: it must not outlive the test, and its namespace
    // goes only once nothing runs in it.
    if (remote_ != nullptr) {
      [[maybe_unused]] auto e1 = remote_->kill();
      [[maybe_unused]] auto st = remote_->join(5s);
    }
    if (has_pair_) {
      EXPECT_TRUE(ip("link del " + pool_if_)); // takes the peer along
    }
    if (has_ns_) {
      EXPECT_TRUE(ip("netns del " + ns_));
    }
  }

  /// Creates the namespace; fails as `ip` does (without privileges, too).
  ::testing::AssertionResult add_namespace() {
    // Our pid is in the names: whatever holds them now was left behind by
    // a dead process that had this pid.
    [[maybe_unused]] auto stale_pair = ip("link del " + pool_if_);
    [[maybe_unused]] auto stale_ns = ip("netns del " + ns_);
    auto made = ip("netns add " + ns_);
    has_ns_ = static_cast<bool>(made);
    return made;
  }

  /// Creates the veth pair, moves one end into the namespace, gives both
  /// their addresses and brings them (and the namespace's lo) up.
  ::testing::AssertionResult connect() {
    auto made = ip("link add " + pool_if_ + " type veth peer name "
                   + worker_if_);
    has_pair_ = static_cast<bool>(made);
    for (auto args : {"link set " + worker_if_ + " netns " + ns_,
                      "addr add " + pool_address_ + "/30 dev " + pool_if_,
                      "link set " + pool_if_ + " up",
                      "-n " + ns_ + " addr add " + worker_address_
                        + "/30 dev " + worker_if_,
                      "-n " + ns_ + " link set " + worker_if_ + " up",
                      "-n " + ns_ + " link set lo up"})
      if (made)
        made = ip(args);
    return made;
  }

  /// Cuts the link as a pulled cable at the worker's host would: its end
  /// goes down, ours loses the carrier. Downing our end instead would drop
  /// the pool's route to the worker, and its packets would follow the
  /// default route off the machine rather than vanish.
  ::testing::AssertionResult cut() {
    return ip("-n " + ns_ + " link set " + worker_if_ + " down");
  }

  /// Kills and reaps `remote` on the way out (before removing its
  /// namespace); it must outlive this guard.
  void guard(process& remote) {
    remote_ = &remote;
  }

  const std::string& name() const {
    return ns_;
  }

  const std::string& pool_address() const {
    return pool_address_;
  }

private:
  std::string ns_;
  std::string pool_if_;
  std::string worker_if_;
  std::string pool_address_;
  std::string worker_address_;
  bool has_ns_ = false;
  bool has_pair_ = false;
  process* remote_ = nullptr;
};

TEST_F(Network, ALinkCutMidTaskHasItsTaskRunAgain) {
  veth_link net;
  if (auto made = net.add_namespace(); !made) {
    if (::geteuid() != 0)
      GTEST_SKIP() << "cutting a link needs root (CAP_SYS_ADMIN and "
                      "CAP_NET_ADMIN, for network namespaces and veth pairs): "
                   << made.message();
    FAIL() << made.message();
  }
  ASSERT_TRUE(net.connect());
  auto p = start_pool(1);
  auto port = publish(p, kSecret, net.pool_address());
  ASSERT_NE(port, 0);
  auto& remote = start_remote(port, "netns:" + net.name(), kSecret,
                              net.pool_address());
  net.guard(remote);
  ASSERT_TRUE(wait_workers(p, 2))
    << "the remote worker did not join: it "
    << (remote.is_alive() ? "still runs" : remote.status()->to_string())
    << "\n"
    << log_text();
  pid_t local = 0;
  for (auto& w : p.workers())
    if (w.node.empty())
      local = w.pid;
  ASSERT_NE(local, 0) << "no local worker is listed";
  // With a window of 1, the two tasks start one on each worker; they last
  // long enough to be cut off while the remote one runs.
  auto log = dir_ + "/runs";
  std::vector<task_future<net_result>> fs;
  for (int32_t i = 0; i < 2; ++i)
    fs.push_back(p.submit<net_result>(net_task{i, 500, log}));
  int32_t victim = -1;
  auto deadline = clock_type::now() + kBound;
  while (victim < 0 && clock_type::now() < deadline) {
    std::ifstream in{log};
    long pid = 0;
    long v = 0;
    while (in >> pid >> v)
      if (pid == remote.pid())
        victim = static_cast<int32_t>(v);
    std::this_thread::sleep_for(2ms);
  }
  ASSERT_GE(victim, 0) << "no task started on the remote worker";
  ASSERT_TRUE(net.cut());
  auto cut = clock_type::now();
  // Nothing comes back over a cut link: only the heartbeats' silence tells
  // either end that the other is gone. The worker's end must give up by
  // itself rather than wait for a pool it cannot reach.
  std::optional<clock_type::time_point> back;
  std::optional<clock_type::time_point> gone;
  while ((!back || !gone) && clock_type::now() < cut + kBound) {
    if (!back && fs[victim].wait_for(0s) == std::future_status::ready)
      back = clock_type::now();
    if (!gone && !remote.is_alive())
      gone = clock_type::now();
    std::this_thread::sleep_for(2ms);
  }
  ASSERT_TRUE(back) << "the remote worker's task hangs after the link was "
                       "cut\n"
                    << log_text();
  ASSERT_TRUE(gone) << "the cut-off remote worker does not exit";
  auto ms = [&](clock_type::time_point t) {
    return static_cast<long long>(
      std::chrono::duration_cast<std::chrono::milliseconds>(t - cut).count());
  };
  std::printf("link cut: the task's result came %lld ms after the cut, the "
              "remote worker exited %lld ms after it\n",
              ms(*back), ms(*gone));
  auto r = fs[victim].get();
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(r->value, victim * victim);
  EXPECT_EQ(r->pid, local) << "the task did not run again on the local worker";
  auto& other = fs[1 - victim];
  ASSERT_EQ(other.wait_for(kBound), std::future_status::ready);
  auto o = other.get();
  ASSERT_TRUE(o) << describe(o.error());
  EXPECT_EQ(o->pid, local);
  EXPECT_GE(p.stats().redispatched, 1u);
  EXPECT_TRUE(wait_workers(p, 1)) << "the cut-off remote worker is still listed";
  auto st = remote.join(kBound);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_EQ(st->code, 65) << "not the exit of a connection lost while "
                             "serving: "
                          << st->to_string();
}

} // namespace
