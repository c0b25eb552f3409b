// `multiproc demo`: this process generates blocks of pseudo-random bytes,
// worker processes hash them (FNV-1a 64 and CRC-32) and reply, and this
// process checks every reply against its own computation. Halfway through,
// one worker is told to crash: the requests in flight to it fail with
// worker_died, and the lost tasks go to the surviving workers.
//
// Then a multiproc::pool of as many workers mines proof-of-work nonces, with
// its progress on stderr (a bar on a terminal, plain lines otherwise). A third
// of the way, one of its workers is killed: the pool replaces it and runs its
// tasks again, and every result is still checked here.
//
// Last, a supervised pipeline: a producer process puts block ids into a
// shared-memory queue, two consumer processes hash the blocks into a result
// queue, and one consumer is killed a third of the way. The supervisor
// restarts it, the queue hands its unfinished block to a consumer again, and
// every block's hash is checked here.

#include "demo.hpp"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <signal.h>
#include <unistd.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/after.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/system_messages.hpp>
#include <cereal/types/vector.hpp>
#include <nlohmann/json.hpp>

#include "multiproc/pool.hpp"
#include "multiproc/function.hpp"
#include "multiproc/metrics.hpp"
#include "multiproc/queue.hpp"
#include "multiproc/shared_state.hpp"
#include "multiproc/supervisor.hpp"
#include "multiproc/worker.hpp"

namespace demo {

// -- messages -------------------------------------------------------------------

/// A block to hash (reply: block_hash).
struct hash_block {
  uint32_t id = 0;
  std::vector<char> data;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id, data);
  }
};

/// The hashes of block `id`.
struct block_hash {
  uint32_t id = 0;
  uint64_t fnv = 0;
  uint32_t crc = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id, fnv, crc);
  }
};

/// Makes the worker raise SIGSEGV (reply: none, ever).
struct crash_now {
  template <class Archive>
  void serialize(Archive&) {
  }
};

/// What a find_nonce task does besides its work: the demo injects faults.
enum fault : uint8_t {
  no_fault = 0,
  crash_fault = 1, ///< the worker raises SIGSEGV
  hang_fault = 2,  ///< the worker sleeps for an hour
};

/// Find the smallest nonce whose hash with `id` starts with pow_bits zero
/// bits (reply: nonce_found), unless `fault` says otherwise.
struct find_nonce {
  uint32_t id = 0;
  uint8_t fault = no_fault;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id, fault);
  }
};

/// The nonce found for `id`.
struct nonce_found {
  uint32_t id = 0;
  uint32_t nonce = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id, nonce);
  }
};

} // namespace demo

MULTIPROC_MESSAGE(demo::hash_block, "multiproc.demo.hash_block")
MULTIPROC_MESSAGE(demo::block_hash, "multiproc.demo.block_hash")
MULTIPROC_MESSAGE(demo::crash_now, "multiproc.demo.crash_now")
MULTIPROC_MESSAGE(demo::find_nonce, "multiproc.demo.find_nonce")
MULTIPROC_MESSAGE(demo::nonce_found, "multiproc.demo.nonce_found")

namespace demo {

// -- the work --------------------------------------------------------------------

constexpr size_t block_size = 64 * 1024;

uint64_t fnv1a64(const std::vector<char>& data) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : data) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

uint32_t crc32(const std::vector<char>& data) {
  static const auto table = [] {
    std::vector<uint32_t> t(256);
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k)
        c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xffffffffu;
  for (char x : data)
    c = table[(c ^ static_cast<uint8_t>(x)) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

/// Block `id`: xorshift64 bytes seeded by the id, the same in every process.
std::vector<char> make_block(uint32_t id) {
  std::vector<char> data(block_size);
  uint64_t x = 0x9e3779b97f4a7c15ull * (id + 1);
  for (auto& c : data) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c = static_cast<char>(x >> 56);
  }
  return data;
}

block_hash hash_of(const hash_block& x) {
  return {x.id, fnv1a64(x.data), crc32(x.data)};
}

/// Folds the hashes of all blocks, in id order, into one number.
uint64_t checksum(const std::vector<block_hash>& hashes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (auto& x : hashes) {
    h = (h ^ x.fnv) * 0x100000001b3ull;
    h = (h ^ x.crc) * 0x100000001b3ull;
  }
  return h;
}

/// Leading zero bits a nonce's hash needs: about a million tries, a
/// millisecond or so of work per task, and a single hash to check it.
constexpr int pow_bits = 20;

/// The hash of (id, nonce): splitmix64's finalizer.
uint64_t pow_hash(uint32_t id, uint32_t nonce) {
  uint64_t z = ((uint64_t{id} << 32) | nonce) + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

bool meets_target(uint32_t id, uint32_t nonce) {
  return pow_hash(id, nonce) >> (64 - pow_bits) == 0;
}

nonce_found mine(const find_nonce& x) {
  if (x.fault == crash_fault) {
    std::fprintf(stderr, "task %u: crashing on purpose (SIGSEGV)\n", x.id);
    std::signal(SIGSEGV, SIG_DFL);
    std::raise(SIGSEGV);
  } else if (x.fault == hang_fault) {
    std::this_thread::sleep_for(std::chrono::hours{1});
  }
  uint32_t nonce = 0;
  while (!meets_target(x.id, nonce))
    ++nonce;
  return {x.id, nonce};
}

// -- the workers (run in the child processes) ---------------------------------------

caf::behavior hasher(caf::event_based_actor*) {
  return {
    [](const hash_block& x) { return hash_of(x); },
    [](const crash_now&) -> block_hash {
      std::signal(SIGSEGV, SIG_DFL);
      std::raise(SIGSEGV);
      return {};
    },
  };
}

caf::behavior miner(caf::event_based_actor*) {
  return {
    [](const find_nonce& x) { return mine(x); },
  };
}

} // namespace demo

MULTIPROC_WORKER("multiproc.demo.hasher", demo::hasher)
MULTIPROC_WORKER("multiproc.demo.miner", demo::miner)

namespace demo {

// -- the parent ---------------------------------------------------------------------

using namespace std::chrono_literals;

constexpr auto task_timeout = 10s;

struct worker_slot {
  caf::actor handle;
  multiproc::worker_info info;
  size_t sent = 0;
  size_t answered = 0;
  bool alive = true;
};

std::string label(const worker_slot& w) {
  return w.info.name + "[" + std::to_string(w.info.pid) + "]";
}

class pipeline {
public:
  pipeline(caf::actor_system& sys, size_t tasks)
    : self_(sys), results_(tasks), answered_(tasks, false) {
  }

  std::vector<worker_slot> workers;

  /// Sends the blocks `ids` round-robin to the living workers, all at once,
  /// then collects the replies. Returns the ids whose request failed; a
  /// worker that died is marked dead.
  std::vector<uint32_t> round(const std::vector<uint32_t>& ids) {
    std::vector<size_t> alive;
    for (size_t i = 0; i < workers.size(); ++i)
      if (workers[i].alive)
        alive.push_back(i);
    if (alive.empty())
      return ids;
    std::vector<pending> in_flight;
    for (size_t k = 0; k < ids.size(); ++k)
      in_flight.push_back(send_block(alive[k % alive.size()], ids[k]));
    return collect(in_flight);
  }

  /// Tells worker `victim` to crash, with `ids` queued behind the crash.
  /// Returns the ids whose request failed.
  std::vector<uint32_t> crash(size_t victim, const std::vector<uint32_t>& ids) {
    auto& w = workers[victim];
    self_->monitor(w.handle);
    std::printf("crash: asking %s to raise SIGSEGV, with %zu tasks queued "
                "behind it\n",
                label(w).c_str(), ids.size());
    auto crash_reply = self_->request(w.handle, task_timeout, crash_now{});
    std::vector<pending> in_flight;
    for (auto id : ids)
      in_flight.push_back(send_block(victim, id));
    crash_reply.receive(
      [&](const block_hash&) {
        std::printf("  %s replied instead of crashing\n", label(w).c_str());
      },
      [&](caf::error& err) {
        std::printf("  the crash request failed: %s\n",
                    multiproc::describe(err).c_str());
        if (err == multiproc::errc::worker_died)
          w.alive = false;
      });
    auto failed = collect(in_flight);
    self_->receive(
      [&](caf::down_msg& down) {
        std::printf("  monitor: %s is down: %s\n", label(w).c_str(),
                    multiproc::describe(down.reason).c_str());
      },
      caf::after(std::chrono::seconds{5}) >> [&] {
        std::printf("  monitor: no down message from %s within 5 s\n",
                    label(w).c_str());
      });
    return failed;
  }

  /// Prints sent/answered per worker.
  void print_counts() const {
    for (auto& w : workers)
      std::printf("  %-16s %3zu tasks sent, %3zu answered%s\n",
                  label(w).c_str(), w.sent, w.answered,
                  w.alive ? "" : " (dead)");
  }

  /// True if every block was answered once with the right hashes.
  bool verify(const std::vector<block_hash>& expected, uint64_t& got) const {
    got = checksum(results_);
    for (size_t i = 0; i < expected.size(); ++i)
      if (!answered_[i] || results_[i].fnv != expected[i].fnv
          || results_[i].crc != expected[i].crc)
        return false;
    return got == checksum(expected);
  }

  size_t answered() const {
    size_t n = 0;
    for (bool x : answered_)
      n += x ? 1 : 0;
    return n;
  }

private:
  using handle = decltype(std::declval<caf::scoped_actor&>()->request(
    caf::actor{}, task_timeout, hash_block{}));

  struct pending {
    size_t worker;
    uint32_t id;
    handle reply;
  };

  pending send_block(size_t worker, uint32_t id) {
    auto& w = workers[worker];
    ++w.sent;
    return {worker, id,
            self_->request(w.handle, task_timeout,
                           hash_block{id, make_block(id)})};
  }

  std::vector<uint32_t> collect(std::vector<pending>& in_flight) {
    std::vector<uint32_t> failed;
    size_t died = 0;
    std::string why;
    for (auto& p : in_flight) {
      auto& w = workers[p.worker];
      p.reply.receive(
        [&](const block_hash& x) {
          ++w.answered;
          results_[x.id] = x;
          answered_[x.id] = true;
        },
        [&](caf::error& err) {
          failed.push_back(p.id);
          if (err == multiproc::errc::worker_died) {
            w.alive = false;
            ++died;
            why = multiproc::describe(err);
          } else {
            std::printf("  block %u on %s failed: %s\n", p.id,
                        label(w).c_str(), multiproc::describe(err).c_str());
          }
        });
    }
    if (died > 0)
      std::printf("  %zu task(s) in flight failed with %s\n", died,
                  why.c_str());
    return failed;
  }

  caf::scoped_actor self_;
  std::vector<block_hash> results_;
  std::vector<bool> answered_;
};

std::vector<uint32_t> id_range(size_t first, size_t last) {
  std::vector<uint32_t> ids;
  for (auto i = first; i < last; ++i)
    ids.push_back(static_cast<uint32_t>(i));
  return ids;
}

// -- the pool -----------------------------------------------------------------------

/// Shows the pool's counters on stderr: on a terminal, one bar redrawn in
/// place; otherwise a plain line each time, which a log or a pipe keeps.
void show_progress(const multiproc::pool_stats& s, bool tty) {
  if (s.submitted == 0) // the workers started; no task yet
    return;
  auto done = static_cast<unsigned long long>(s.done());
  auto total = static_cast<unsigned long long>(s.submitted);
  auto failed = static_cast<unsigned long long>(s.failed);
  auto retried = static_cast<unsigned long long>(s.redispatched);
  if (!tty) {
    std::fprintf(stderr,
                 "progress: %llu/%llu done, %llu failed, %llu retried\n", done,
                 total, failed, retried);
    return;
  }
  constexpr unsigned long long width = 30;
  auto filled = done * width / total;
  std::string bar(filled, '#');
  bar.append(width - filled, '.');
  std::fprintf(stderr, "\r  [%s] %llu/%llu %3llu%%, %llu failed, %llu retried",
               bar.c_str(), done, total, done * 100 / total, failed, retried);
}

/// What the pool stage saw.
struct pool_outcome {
  size_t tasks = 0;
  size_t crashes = 0; ///< tasks that crash their worker (injected)
  size_t hangs = 0;   ///< tasks that hang their worker (injected)
  size_t ok = 0;      ///< the others, with a verified result
  /// Tasks without their right outcome: a verified result, or for the
  /// injected ones task_quarantined / timeout.
  size_t lost = 0;
  bool closed_cleanly = true;
  long long ms = 0;
  multiproc::pool_stats stats;

  bool passed() const {
    return lost == 0 && closed_cleanly && ok + crashes + hangs == tasks;
  }
};

/// Which tasks get a fault: `crashes` and `hangs` of them, alternating,
/// spread evenly over the run but the first tenth (so the bar starts
/// moving). None when there are fewer than ten tasks per fault.
std::vector<uint8_t> plan_faults(size_t n, size_t crashes, size_t hangs) {
  std::vector<uint8_t> faults(n, no_fault);
  std::vector<uint8_t> kinds;
  for (size_t i = 0; i < std::max(crashes, hangs); ++i) {
    if (i < crashes)
      kinds.push_back(crash_fault);
    if (i < hangs)
      kinds.push_back(hang_fault);
  }
  if (kinds.empty() || n < 10 * kinds.size())
    return faults;
  auto step = (n - n / 10) / kinds.size();
  for (size_t k = 0; k < kinds.size(); ++k)
    faults[n / 10 + k * step + step / 2] = kinds[k];
  return faults;
}

/// Mines a nonce for ids 0..n-1 on a pool of `workers` while some tasks
/// crash or hang their worker and one worker is killed a third of the way;
/// checks every result. The result says what happened.
pool_outcome run_pool(caf::actor_system& sys, const demo_options& o,
                      multiproc::start_method method,
                      multiproc::metrics_snapshot& metrics) {
  pool_outcome out;
  out.tasks = o.size;
  auto n = o.size;
  bool tty = ::isatty(STDERR_FILENO) == 1;
  multiproc::pool_options opts;
  opts.workers = o.workers;
  opts.method = method;
  opts.name = "miner";
  opts.task_timeout = o.task_timeout;
  opts.on_progress = [tty](const multiproc::pool_stats& s) {
    show_progress(s, tty);
  };
  // The crashing tasks print a line on their way down: keep it in the
  // demo's output, one line each, and out of the progress bar's line.
  opts.sink = [tty](const multiproc::output_line& line) {
    std::fprintf(stderr, "%s[%s %d] %s\n", tty ? "\r\33[K" : "",
                 line.process_name.c_str(), static_cast<int>(line.pid),
                 line.text.c_str());
  };
  // A bar may redraw often; plain lines should stay a few per second.
  opts.progress_interval = tty ? 100ms : 250ms;
  auto start = std::chrono::steady_clock::now();
  auto p = multiproc::pool::start(sys, "multiproc.demo.miner", opts);
  if (!p) {
    std::printf("pool: cannot start: %s\n",
                multiproc::describe(p.error()).c_str());
    out.lost = n;
    return out;
  }
  auto faults = plan_faults(n, o.crashes, o.hangs);
  out.crashes = static_cast<size_t>(
    std::count(faults.begin(), faults.end(), crash_fault));
  out.hangs = static_cast<size_t>(
    std::count(faults.begin(), faults.end(), hang_fault));
  auto victim = p->workers().back();
  std::printf("pool: %zu tasks (find a nonce whose hash starts with %d zero "
              "bits) on %zu workers; %zu of them crash their worker, %zu "
              "hang it (deadline %lld ms), and %s[%d] gets SIGKILL a third "
              "of the way\n",
              n, pow_bits, o.workers, out.crashes, out.hangs,
              static_cast<long long>(o.task_timeout.count()),
              victim.name.c_str(), static_cast<int>(victim.pid));
  // The progress lines go to stderr: what came before must be out first.
  std::fflush(stdout);
  std::vector<multiproc::task_future<nonce_found>> fs;
  for (uint32_t i = 0; i < n; ++i)
    fs.push_back(p->submit<nonce_found>(find_nonce{i, faults[i]}));
  // As the OOM killer would: the tasks the victim held run again elsewhere.
  fs[n / 3].wait();
  ::kill(victim.pid, SIGKILL);
  std::string first_failure;
  for (uint32_t i = 0; i < n; ++i) {
    auto r = fs[i].get();
    bool right = false;
    if (faults[i] == crash_fault)
      right = !r && r.error() == multiproc::errc::task_quarantined;
    else if (faults[i] == hang_fault)
      right = !r && r.error() == multiproc::errc::timeout;
    else
      right = r && r->id == i && meets_target(i, r->nonce);
    if (right && faults[i] == no_fault)
      ++out.ok;
    if (!right) {
      ++out.lost;
      if (first_failure.empty())
        first_failure = "task " + std::to_string(i) + ": "
                        + (r ? "wrong nonce" : multiproc::describe(r.error()));
    }
  }
  auto closed = p->close();
  if (tty) // close() made the last call: end the bar's line
    std::fputc('\n', stderr);
  out.stats = p->stats();
  multiproc::add_metrics(metrics, "miner", out.stats);
  out.ms = std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now() - start)
             .count();
  auto& s = out.stats;
  if (!first_failure.empty())
    std::printf("  first lost %s\n", first_failure.c_str());
  if (closed) {
    std::printf("  cannot close the pool: %s\n",
                multiproc::describe(closed).c_str());
    out.closed_cleanly = false;
  }
  std::printf("pool: %zu tasks, %zu ok, %llu quarantined, %llu timed out, "
              "%zu lost, %llu worker%s replaced (%llu by a signal, %llu for "
              "a deadline), %llu tasks retried, in %lld ms\n",
              n, out.ok, static_cast<unsigned long long>(s.quarantined),
              static_cast<unsigned long long>(s.timed_out), out.lost,
              static_cast<unsigned long long>(s.workers_died),
              s.workers_died == 1 ? "" : "s",
              static_cast<unsigned long long>(s.workers_killed),
              static_cast<unsigned long long>(s.workers_overdue),
              static_cast<unsigned long long>(s.redispatched),
              static_cast<long long>(out.ms));
  std::printf("  task latency: p50 %.2f ms, p99 %.2f ms (the pool's "
              "histogram)\n",
              s.latency.quantile(0.5) * 1e3, s.latency.quantile(0.99) * 1e3);
  return out;
}

// -- the supervised pipeline ------------------------------------------------------

/// Child: puts the ids 0..n-1 (args: n) into the work queue (fds[0]).
int produce_ids(multiproc::child_context& ctx) {
  auto work = multiproc::queue<uint32_t>::attach(std::move(ctx.fds.at(0)));
  if (!work)
    return 2;
  auto n = static_cast<uint32_t>(std::stoul(ctx.args));
  for (uint32_t id = 0; id < n; ++id)
    if (work->put(id, 30s))
      return 3;
  return 0;
}

/// Child: hashes the block of each id (fds[0]) into the result queue
/// (fds[1]) until the end of the stream.
int hash_ids(multiproc::child_context& ctx) {
  auto work = multiproc::queue<uint32_t>::attach(std::move(ctx.fds.at(0)));
  auto results = multiproc::queue<block_hash>::attach(std::move(ctx.fds.at(1)));
  if (!work || !results)
    return 2;
  for (;;) {
    auto id = work->get(30s);
    if (!id)
      return id.error() == multiproc::errc::end_of_stream ? 0 : 3;
    if (results->put(hash_of(hash_block{*id, make_block(*id)}), 30s))
      return 4;
  }
}

MULTIPROC_REGISTER_ENTRY("multiproc.demo.produce_ids", produce_ids);
MULTIPROC_REGISTER_ENTRY("multiproc.demo.hash_ids", hash_ids);

bool run_supervised(caf::actor_system& sys, size_t n,
                    multiproc::start_method method,
                    multiproc::metrics_snapshot& metrics) {
  auto start = std::chrono::steady_clock::now();
  auto work = multiproc::queue<uint32_t>::create();
  auto results = multiproc::queue<block_hash>::create();
  if (!work || !results) {
    std::printf("supervisor: cannot create the queues: %s\n",
                multiproc::describe(work ? results.error() : work.error())
                  .c_str());
    return false;
  }
  multiproc::supervisor_spec spec;
  spec.strategy = multiproc::restart_strategy::one_for_one;
  spec.max_restarts = 3;
  spec.queue = work->fd();
  spec.results = results->fd();
  auto producer = multiproc::child_spec::process(
    "producer", "multiproc.demo.produce_ids", std::to_string(n),
    multiproc::child_role::producer);
  producer.restart = multiproc::restart_type::transient;
  producer.method = method;
  spec.children.push_back(producer);
  for (int i = 1; i <= 2; ++i) {
    auto consumer = multiproc::child_spec::process(
      "consumer-" + std::to_string(i), "multiproc.demo.hash_ids", "",
      multiproc::child_role::consumer);
    consumer.restart = multiproc::restart_type::transient;
    consumer.method = method;
    spec.children.push_back(consumer);
  }
  spec.on_event = [](const multiproc::supervisor_event& ev) {
    if (ev.kind == multiproc::supervisor_event::exited && !ev.status->success())
      std::printf("  %s\n", ev.to_string().c_str());
  };
  auto sup = multiproc::supervisor::start(sys, std::move(spec));
  if (!sup) {
    std::printf("supervisor: cannot start: %s\n",
                multiproc::describe(sup.error()).c_str());
    return false;
  }
  auto victim = sup->report().children.back();
  std::printf("supervisor: %zu blocks, producer -> queue -> 2 consumers; "
              "%s[%d] gets SIGKILL a third of the way\n",
              n, victim.id.c_str(), static_cast<int>(victim.pid));
  std::vector<int> seen(n, 0);
  size_t verified = 0, received = 0;
  bool killed = false;
  for (;;) {
    auto h = results->get(30s);
    if (!h) {
      if (h.error() != multiproc::errc::end_of_stream)
        std::printf("  results: %s\n", multiproc::describe(h.error()).c_str());
      break;
    }
    ++received;
    if (h->id < n && seen[h->id]++ == 0) {
      auto want = hash_of(hash_block{h->id, make_block(h->id)});
      verified += want.fnv == h->fnv && want.crc == h->crc ? 1 : 0;
    }
    if (!killed && received >= n / 3) {
      ::kill(victim.pid, SIGKILL);
      killed = true;
    }
  }
  auto report = sup->wait(30s);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
              std::chrono::steady_clock::now() - start)
              .count();
  if (!report) {
    std::printf("supervisor: %s\n", multiproc::describe(report.error()).c_str());
    return false;
  }
  multiproc::add_metrics(metrics, "pipeline", *report);
  multiproc::add_metrics(metrics, "work", *work);
  multiproc::add_metrics(metrics, "results", *results);
  auto lost = static_cast<size_t>(std::count(seen.begin(), seen.end(), 0));
  std::printf("supervisor: %zu blocks, %zu verified, %zu lost, %llu "
              "redelivered, %llu restart%s, stream %s, in %lld ms\n",
              n, verified, lost,
              static_cast<unsigned long long>(report->redelivered),
              static_cast<unsigned long long>(report->restarts),
              report->restarts == 1 ? "" : "s",
              report->stream_complete ? "complete" : "NOT complete",
              static_cast<long long>(ms));
  return verified == n && lost == 0 && report->stream_complete;
}

// -- the shared-state stage -----------------------------------------------------

/// A tallier: adds 1 to the shared counter `n` times (posts), then records
/// its count under its name in the shared dict.
int tally(multiproc::value<int64_t> counter,
          multiproc::dict<std::string, int64_t> done, std::string name,
          int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (counter.add(1))
      return 2;
  if (auto err = counter.sync()) {
    std::fprintf(stderr, "%s: %s\n", name.c_str(),
                 multiproc::describe(err).c_str());
    return 3;
  }
  return done.set(name, n) ? 4 : 0;
}

int64_t load_or(const multiproc::value<int64_t>& v, int64_t fallback) {
  auto x = v.load();
  return x ? *x : fallback;
}

/// Posts increments until it is killed.
int tally_forever(multiproc::value<int64_t> counter) {
  for (;;)
    if (counter.add(1))
      return 2;
}

bool run_shared(size_t n, multiproc::start_method method) {
  auto start = std::chrono::steady_clock::now();
  auto state = multiproc::shared_state::start();
  if (!state) {
    std::printf("shared: cannot start the owner: %s\n",
                multiproc::describe(state.error()).c_str());
    return false;
  }
  auto counter = state->value<int64_t>("counter", 0);
  auto victim_count = state->value<int64_t>("victim", 0);
  auto done = state->dict<std::string, int64_t>("done");
  if (!counter || !victim_count || !done) {
    std::printf("shared: cannot create the cells\n");
    return false;
  }
  std::printf("shared: 3 processes add to one counter (no lock) while a "
              "fourth, adding to another cell, is killed mid-stream\n");
  multiproc::process_options opts;
  opts.method = method;
  std::vector<multiproc::process> children;
  opts.name = "victim";
  auto victim = multiproc::start_function("multiproc.demo.tally_forever",
                                          opts, *victim_count);
  for (int i = 1; i <= 3; ++i) {
    opts.name = "tally-" + std::to_string(i);
    auto p = multiproc::start_function("multiproc.demo.tally", opts, *counter,
                                       *done, opts.name,
                                       static_cast<int64_t>(n));
    if (p)
      children.push_back(std::move(*p));
    else
      std::printf("  cannot start %s: %s\n", opts.name.c_str(),
                  multiproc::describe(p.error()).c_str());
  }
  if (victim) {
    for (int i = 0; i < 200 && load_or(*victim_count, 0) < 1000; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds{5});
    (void) victim->kill();
    auto st = victim->join(std::chrono::milliseconds{5000});
    std::printf("  victim[%d] %s after %lld increments\n",
                static_cast<int>(victim->pid()),
                st ? st->to_string().c_str()
                   : multiproc::describe(st.error()).c_str(),
                static_cast<long long>(load_or(*victim_count, -1)));
  }
  auto joined = multiproc::join_all(children, std::chrono::seconds{60});
  if (joined)
    std::printf("  %s\n", multiproc::describe(joined).c_str());
  auto total = counter->load();
  auto entries = done->size();
  auto after = victim_count->fetch_add(1);
  int64_t expected = 3 * static_cast<int64_t>(n);
  bool ok = !joined && total && *total == expected && entries
            && *entries == 3 && after;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
              std::chrono::steady_clock::now() - start)
              .count();
  std::printf("shared: counter = %lld (expected %lld), %llu of 3 processes "
              "recorded, the killed one's cell still works: %s (%lld ms)\n",
              static_cast<long long>(total ? *total : -1),
              static_cast<long long>(expected),
              static_cast<unsigned long long>(entries ? *entries : 0),
              after ? "yes" : "no", static_cast<long long>(ms));
  return ok;
}

} // namespace demo

namespace demo {

int saved_stdout = -1;

void narrate_on_stderr() {
  std::fflush(stdout);
  saved_stdout = ::dup(STDOUT_FILENO);
  ::dup2(STDERR_FILENO, STDOUT_FILENO);
}

void restore_stdout() {
  if (saved_stdout < 0)
    return;
  std::fflush(stdout);
  ::dup2(saved_stdout, STDOUT_FILENO);
  ::close(saved_stdout);
  saved_stdout = -1;
}

} // namespace demo

MULTIPROC_FUNCTION("multiproc.demo.tally", demo::tally)
MULTIPROC_FUNCTION("multiproc.demo.tally_forever", demo::tally_forever)

int run_demo(const demo_options& opts) {
  using namespace demo;
  // --json: stdout carries the JSON object alone; the narration goes to
  // stderr until then.
  if (opts.json)
    narrate_on_stderr();
  auto start = std::chrono::steady_clock::now();
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  pipeline pl{sys, opts.tasks};

  // 1. Start the workers.
  auto method = opts.method.value_or(multiproc::default_start_method());
  std::printf("starting %zu workers (start method: %s)\n", opts.workers,
              multiproc::to_string(method));
  if (method == multiproc::start_method::fork)
    std::printf("note: this process runs a CAF actor system (threads), so the "
                "runtime refuses fork; forkserver forks from a "
                "single-threaded server instead\n");
  for (size_t i = 0; i < opts.workers; ++i) {
    multiproc::worker_options wopts;
    wopts.method = method;
    wopts.name = "hasher-" + std::to_string(i + 1);
    auto w = multiproc::spawn_worker(sys, "multiproc.demo.hasher", wopts);
    if (!w) {
      std::printf("cannot start %s: %s\n", wopts.name.c_str(),
                  multiproc::describe(w.error()).c_str());
      for (auto& x : pl.workers)
        [[maybe_unused]] auto st = multiproc::stop_worker(x.handle);
      return 1;
    }
    worker_slot slot;
    slot.handle = *w;
    slot.info = *multiproc::info_of(*w);
    std::printf("  %s started (pid %d, %s)\n", slot.info.name.c_str(),
                static_cast<int>(slot.info.pid),
                multiproc::to_string(slot.info.method));
    pl.workers.push_back(std::move(slot));
  }

  // 2. The expected results, computed here.
  std::vector<block_hash> expected;
  for (uint32_t i = 0; i < opts.tasks; ++i)
    expected.push_back(hash_of(hash_block{i, make_block(i)}));

  // 3. First half of the blocks over all workers.
  auto half = opts.tasks / 2;
  std::printf("round 1: %zu blocks of %zu KiB over %zu workers\n", half,
              block_size / 1024, pl.workers.size());
  auto retry = pl.round(id_range(0, half));
  pl.print_counts();

  // 4. The last worker crashes with some blocks queued behind the crash.
  auto victim = pl.workers.size() - 1;
  auto queued = id_range(half, half + std::min<size_t>(2, opts.tasks - half));
  auto lost = pl.crash(victim, queued);
  retry.insert(retry.end(), lost.begin(), lost.end());

  // 5. The rest, plus whatever was lost, over the survivors.
  auto rest = id_range(half + queued.size(), opts.tasks);
  rest.insert(rest.end(), retry.begin(), retry.end());
  for (int n = 2; !rest.empty() && n <= 4; ++n) {
    std::printf("round %d: %zu blocks (%zu re-sent) over the survivors\n", n,
                rest.size(), retry.size());
    rest = pl.round(rest);
    retry = rest;
  }
  pl.print_counts();

  // 6. Verify against the local computation.
  uint64_t sum = 0;
  bool ok = pl.verify(expected, sum);
  std::printf("checksum 0x%016llx: %s\n", static_cast<unsigned long long>(sum),
              ok ? "matches the local computation"
                 : "DOES NOT match the local computation");

  // 7. Stop every worker; the crashed one reports how it ended.
  std::printf("stopping the workers\n");
  size_t crashed = 0;
  for (auto& w : pl.workers) {
    auto st = multiproc::stop_worker(w.handle);
    if (st && st->signaled)
      ++crashed;
    std::printf("  %s %s\n", label(w).c_str(),
                st ? st->to_string().c_str()
                   : multiproc::describe(st.error()).c_str());
  }

  // 8. The pool: mining with a progress display while some tasks crash or
  // hang their worker and one worker is killed.
  multiproc::metrics_snapshot metrics;
  pool_outcome pool;
  if (opts.size > 0)
    pool = run_pool(sys, opts, method, metrics);
  // 9. A supervised producer/consumer pipeline; one consumer is killed.
  bool supervised_ok = opts.pipeline_blocks == 0
                       || run_supervised(sys, opts.pipeline_blocks, method,
                                         metrics);
  // 10. Shared state: processes update one counter; one is killed.
  bool shared_ok = opts.shared_increments == 0
                   || run_shared(opts.shared_increments, method);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
              std::chrono::steady_clock::now() - start)
              .count();
  bool pool_ok = opts.size == 0 || pool.passed();
  bool passed = ok && pool_ok && supervised_ok && shared_ok;

  // 11. The summary, and the metrics if asked for.
  auto& s = pool.stats;
  double secs = static_cast<double>(std::max(pool.ms, 1LL)) / 1e3;
  auto tput = static_cast<double>(pool.tasks) / secs;
  std::printf("\nsummary: %zu pool tasks in %.2f s (%.0f tasks/s): %zu ok, "
              "%llu workers restarted, %llu tasks retried, %llu quarantined, "
              "%llu timed out, lost = %zu\n",
              pool.tasks, secs, tput, pool.ok,
              static_cast<unsigned long long>(s.workers_died),
              static_cast<unsigned long long>(s.redispatched),
              static_cast<unsigned long long>(s.quarantined),
              static_cast<unsigned long long>(s.timed_out), pool.lost);
  caf::error metrics_err;
  if (!opts.metrics_path.empty()) {
    auto format = opts.metrics_path.size() > 5
                      && opts.metrics_path.compare(opts.metrics_path.size() - 5,
                                                   5, ".json")
                           == 0
                    ? multiproc::metrics_format::json
                    : multiproc::metrics_format::prometheus;
    metrics_err = multiproc::write_metrics(metrics, format, opts.metrics_path);
    if (metrics_err)
      std::printf("demo: %s\n", multiproc::describe(metrics_err).c_str());
    else if (opts.metrics_path != "-")
      std::printf("metrics written to %s\n", opts.metrics_path.c_str());
  }
  if (!passed) {
    std::printf("demo: FAILED: %zu/%zu requests answered correctly%s%s%s\n",
                pl.answered(), opts.tasks,
                pool_ok ? "" : "; the pool lost tasks",
                supervised_ok ? "" : "; the supervised pipeline lost blocks",
                shared_ok ? "" : "; the shared counter is wrong");
  } else {
    std::printf("demo: %zu/%zu requests answered by %zu workers (%zu crashed "
                "on purpose), checksum 0x%016llx verified; every stage lost "
                "nothing, in %lld ms\n",
                pl.answered(), opts.tasks, pl.workers.size(), crashed,
                static_cast<unsigned long long>(sum),
                static_cast<long long>(ms));
  }
  if (opts.json) {
    nlohmann::json j;
    j["passed"] = passed;
    j["start_method"] = multiproc::to_string(method);
    j["workers"] = opts.workers;
    j["elapsed_ms"] = ms;
    j["requests"] = {{"sent", opts.tasks},
                     {"answered", pl.answered()},
                     {"workers_crashed", crashed},
                     {"checksum_verified", ok}};
    j["pool"] = {{"tasks", pool.tasks},
                 {"ok", pool.ok},
                 {"injected_crashes", pool.crashes},
                 {"injected_hangs", pool.hangs},
                 {"quarantined", s.quarantined},
                 {"timed_out", s.timed_out},
                 {"workers_restarted", s.workers_died},
                 {"workers_killed", s.workers_killed},
                 {"workers_overdue", s.workers_overdue},
                 {"tasks_retried", s.redispatched},
                 {"lost", pool.lost},
                 {"elapsed_ms", pool.ms},
                 {"tasks_per_second", tput},
                 {"latency_p50_ms", s.latency.quantile(0.5) * 1e3},
                 {"latency_p99_ms", s.latency.quantile(0.99) * 1e3}};
    j["pipeline"] = {{"blocks", opts.pipeline_blocks},
                     {"passed", supervised_ok}};
    j["shared"] = {{"increments_per_process", opts.shared_increments},
                   {"passed", shared_ok}};
    j["metrics"] = nlohmann::json::parse(metrics.to_json())["metrics"];
    restore_stdout();
    std::printf("%s\n", j.dump(2).c_str());
  }
  return passed && !metrics_err ? 0 : 1;
}
