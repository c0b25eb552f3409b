// multiproc bench shared — metrics (compare with ../shared/peers in the same run):
//   cpp_value_incr_2proc         incr/s  2 child processes each add(1) N times
//                                        to one value<int64_t> (fire-and-
//                                        forget posts, then sync()), from the
//                                        start signal to both synced
//   cpp_dict_set_2proc           ops/s   2 child processes each post_set() N
//                                        distinct keys in one
//                                        dict<std::string, int64_t>, then
//                                        sync(), timed likewise
//   cpp_value_fetch_add_rtt_p50  us      a blocking fetch_add(1) from a child
//                                        process to the owner, p50
//   cpp_lock_incr_2proc          incr/s  2 child processes each add 1 to a
//                                        plain int64 in a shm_array N times,
//                                        each under a shm_lock (Python's
//                                        Value with its lock), timed likewise
// The owner runs on a thread of this process (the default). The final count,
// the dict's size and every fetch_add's result are checked: a run that loses
// or duplicates an operation prints a note and no figure.
// Env: BENCH_REPS (default 5).
#include "bench_shared.hpp"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_report.hpp"
#include "multiproc/bootstrap.hpp"
#include "multiproc/function.hpp"
#include "multiproc/pipe.hpp"
#include "multiproc/process.hpp"
#include "multiproc/shared_state.hpp"
#include "multiproc/shm_array.hpp"
#include "multiproc/shm_sync.hpp"

namespace {

using namespace std::chrono_literals;
using namespace bench_report;
using multiproc::describe;
using multiproc::pipe_end;

// -- the children --------------------------------------------------------------

// A child tells the parent `ready` once connected to the owner and `done`
// once its operations are applied (after sync()); on a failure it sends the
// error's text (a std::string) instead and exits.
enum child_signal : int32_t { ready = 1, go = 2, done = 3 };

int fail(pipe_end& parent, const std::string& what, const caf::error& err) {
  (void) parent.send(what + ": " + describe(err));
  return 1;
}

/// Connects to the owner (a first call), says ready and waits for go.
template <class Handle>
caf::error ready_then_go(pipe_end& parent, const Handle& h) {
  if (auto x = h.load(); !x)
    return std::move(x.error());
  if (auto err = parent.send(int32_t{ready}))
    return err;
  auto start = parent.recv<int32_t>(60s);
  if (!start)
    return std::move(start.error());
  return caf::none;
}

int incr_child(pipe_end& parent, multiproc::value<int64_t> counter, int64_t n) {
  if (auto err = ready_then_go(parent, counter))
    return fail(parent, "incr child: before the start", err);
  for (int64_t i = 0; i < n; ++i)
    if (auto err = counter.add(1))
      return fail(parent, "incr child: add", err);
  if (auto err = counter.sync())
    return fail(parent, "incr child: sync", err);
  return parent.send(int32_t{done}) ? 2 : 0;
}

int dict_child(pipe_end& parent, multiproc::dict<std::string, int64_t> d,
               int32_t tag, int64_t n) {
  // The keys are made before the start: the time is the library's.
  std::vector<std::string> keys;
  keys.reserve(static_cast<size_t>(n));
  auto prefix = "p" + std::to_string(tag) + "_";
  for (int64_t i = 0; i < n; ++i)
    keys.push_back(prefix + std::to_string(i));
  if (auto err = ready_then_go(parent, d))
    return fail(parent, "dict child: before the start", err);
  for (int64_t i = 0; i < n; ++i)
    if (auto err = d.post_set(keys[static_cast<size_t>(i)], i))
      return fail(parent, "dict child: post_set", err);
  if (auto err = d.sync())
    return fail(parent, "dict child: sync", err);
  return parent.send(int32_t{done}) ? 2 : 0;
}

// Sends the p50 of n round trips (after n / 10 warm-up ones), `reps` times.
// The child is the cell's only user: the k-th fetch_add returns k.
int rtt_child(pipe_end& parent, multiproc::value<int64_t> counter, int32_t n,
              int32_t reps) {
  int64_t expected = 0;
  auto one = [&](double* us) -> caf::error {
    auto t0 = clock_type::now();
    auto before = counter.fetch_add(1);
    if (us != nullptr)
      *us = micros(clock_type::now() - t0);
    if (!before)
      return std::move(before.error());
    if (*before != expected)
      return multiproc::make_error(multiproc::errc::protocol_error,
                                   "fetch_add returned "
                                     + std::to_string(*before) + ", expected "
                                     + std::to_string(expected));
    ++expected;
    return caf::none;
  };
  for (int32_t i = 0; i < n / 10; ++i)
    if (auto err = one(nullptr))
      return fail(parent, "rtt child: warm-up", err);
  std::vector<double> samples(static_cast<size_t>(n));
  for (int32_t r = 0; r < reps; ++r) {
    for (auto& us : samples)
      if (auto err = one(&us))
        return fail(parent, "rtt child", err);
    if (parent.send(p50(samples)))
      return 2;
  }
  return 0;
}

/// Entry: adds 1 to element 0 of the array fds[1] `args` times, each under
/// the lock fds[0], between the start signal and `done`.
int lock_incr_child(multiproc::child_context& ctx) {
  pipe_end parent{std::move(ctx.channel)};
  auto lock = multiproc::shm_lock::attach(std::move(ctx.fds.at(0)));
  auto a = multiproc::shm_array<int64_t>::attach(std::move(ctx.fds.at(1)));
  if (!lock)
    return fail(parent, "lock child: attach", lock.error());
  if (!a)
    return fail(parent, "lock child: attach", a.error());
  int64_t n = std::stoll(ctx.args);
  if (parent.send(int32_t{ready}))
    return 2;
  if (auto start = parent.recv<int32_t>(60s); !start)
    return fail(parent, "lock child: before the start", start.error());
  volatile int64_t* x = a->data();
  for (int64_t i = 0; i < n; ++i) {
    if (auto err = lock->lock())
      return fail(parent, "lock child: lock", err);
    *x = *x + 1;
    if (auto err = lock->unlock())
      return fail(parent, "lock child: unlock", err);
  }
  return parent.send(int32_t{done}) ? 2 : 0;
}

} // namespace

MULTIPROC_REGISTER_ENTRY("bench.lock_incr", lock_incr_child);
MULTIPROC_FUNCTION("bench.shared_incr", incr_child)
MULTIPROC_FUNCTION("bench.shared_dict_set", dict_child)
MULTIPROC_FUNCTION("bench.shared_rtt", rtt_child)

namespace {

// -- the parent ----------------------------------------------------------------

/// A child process and the parent's end of its pipe.
struct child {
  multiproc::process proc;
  pipe_end pipe;
};

/// Joins every child (killing those still alive after a bound).
void reap(std::vector<child>& children) {
  for (auto& c : children)
    if (!c.proc.join(10s)) {
      c.proc.kill();
      (void) c.proc.join(5s);
    }
  children.clear();
}

/// Waits for `expected` from `c`; a child's failure text becomes the error.
caf::error await(child& c, int32_t expected, std::chrono::seconds timeout) {
  auto msg = c.pipe.recv_message(timeout);
  if (!msg)
    return std::move(msg.error());
  if (msg->match_elements<std::string>())
    return multiproc::make_error(multiproc::errc::protocol_error,
                                 msg->get_as<std::string>(0));
  if (!msg->match_elements<int32_t>() || msg->get_as<int32_t>(0) != expected)
    return multiproc::make_error(multiproc::errc::protocol_error,
                                 "unexpected message from "
                                   + c.proc.name() + ": "
                                   + caf::to_string(*msg));
  return caf::none;
}

/// A started process as a child (its channel becomes the pipe).
caf::expected<child> adopt(caf::expected<multiproc::process> proc) {
  if (!proc)
    return std::move(proc.error());
  child c;
  c.pipe = pipe_end{proc->take_channel()};
  c.proc = std::move(*proc);
  return c;
}

/// Starts the registered function `fn` with `args` in a child named `name`.
template <class... Args>
caf::expected<child> start(const std::string& fn, const std::string& name,
                           Args&&... args) {
  multiproc::process_options opts;
  opts.name = name;
  return adopt(
    multiproc::start_function(fn, opts, std::forward<Args>(args)...));
}

/// One run of 2 children started by `start_child(k)`: waits for both to be
/// ready, sends the start signal and waits for both to be done. Returns the
/// seconds from the start signal to the second done, or a negative value
/// after a failure (with a note).
template <class StartChild>
double two_children_once(reporter& out, const char* metric,
                         StartChild start_child) {
  std::vector<child> children;
  auto failed = [&](const std::string& why) {
    out.note(std::string{metric} + ": " + why);
    for (auto& c : children)
      (void) c.proc.kill();
    reap(children);
    return -1.0;
  };
  for (int32_t k = 0; k < 2; ++k) {
    auto c = start_child(k);
    if (!c)
      return failed("cannot start a child: " + describe(c.error()));
    children.push_back(std::move(*c));
  }
  for (auto& c : children)
    if (auto err = await(c, ready, 60s))
      return failed("a child did not get ready: " + describe(err));
  auto t0 = clock_type::now();
  for (auto& c : children)
    if (auto err = c.pipe.send(int32_t{go}))
      return failed("cannot start a child: " + describe(err));
  for (auto& c : children)
    if (auto err = await(c, done, 120s))
      return failed("a child did not finish: " + describe(err));
  auto secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  reap(children);
  return secs;
}

std::vector<double> value_incr(reporter& out, multiproc::shared_state& state,
                               int64_t n) {
  const char* metric = "cpp_value_incr_2proc";
  auto counter = state.value<int64_t>("bench.incr", 0);
  if (!counter) {
    out.note(std::string{metric} + ": " + describe(counter.error()));
    return {};
  }
  std::vector<double> values;
  for (int r = 0; r < reps(); ++r) {
    if (auto err = counter->store(0)) {
      out.note(std::string{metric} + ": store: " + describe(err));
      return {};
    }
    auto secs = two_children_once(out, metric, [&](int32_t k) {
      return start("bench.shared_incr", "bench-incr-" + std::to_string(k),
                   *counter, n);
    });
    if (secs < 0)
      return {};
    auto total = counter->load();
    if (!total) {
      out.note(std::string{metric} + ": load: " + describe(total.error()));
      return {};
    }
    if (*total != 2 * n) {
      out.note(std::string{metric} + ": the count is "
               + std::to_string(*total) + ", expected "
               + std::to_string(2 * n));
      return {};
    }
    values.push_back(static_cast<double>(2 * n) / secs);
  }
  return values;
}

std::vector<double> dict_set(reporter& out, multiproc::shared_state& state,
                             int64_t n) {
  const char* metric = "cpp_dict_set_2proc";
  auto d = state.dict<std::string, int64_t>("bench.dict");
  if (!d) {
    out.note(std::string{metric} + ": " + describe(d.error()));
    return {};
  }
  std::vector<double> values;
  for (int r = 0; r < reps(); ++r) {
    if (auto err = d->clear()) {
      out.note(std::string{metric} + ": clear: " + describe(err));
      return {};
    }
    auto secs = two_children_once(out, metric, [&](int32_t k) {
      return start("bench.shared_dict_set", "bench-dict-" + std::to_string(k),
                   *d, k, n);
    });
    if (secs < 0)
      return {};
    auto size = d->size();
    if (!size) {
      out.note(std::string{metric} + ": size: " + describe(size.error()));
      return {};
    }
    if (*size != static_cast<uint64_t>(2 * n)) {
      out.note(std::string{metric} + ": the dict has " + std::to_string(*size)
               + " entries, expected " + std::to_string(2 * n));
      return {};
    }
    values.push_back(static_cast<double>(2 * n) / secs);
  }
  return values;
}

std::vector<double> lock_incr(reporter& out, int64_t n) {
  const char* metric = "cpp_lock_incr_2proc";
  auto lock = multiproc::shm_lock::create();
  auto a = multiproc::shm_array<int64_t>::create(1);
  if (!lock || !a) {
    out.note(std::string{metric} + ": "
             + describe(!lock ? lock.error() : a.error()));
    return {};
  }
  std::vector<double> values;
  for (int r = 0; r < reps(); ++r) {
    (*a)[0] = 0;
    auto secs = two_children_once(out, metric, [&](int32_t k) {
      multiproc::process_options opts;
      opts.name = "bench-lock-" + std::to_string(k);
      opts.fds = {lock->fd(), a->fd()};
      return adopt(
        multiproc::start_process("bench.lock_incr", std::to_string(n), opts));
    });
    if (secs < 0)
      return {};
    if ((*a)[0] != 2 * n) {
      out.note(std::string{metric} + ": the count is " + std::to_string((*a)[0])
               + ", expected " + std::to_string(2 * n));
      return {};
    }
    values.push_back(static_cast<double>(2 * n) / secs);
  }
  return values;
}

std::vector<double> fetch_add_rtt(reporter& out,
                                  multiproc::shared_state& state, int32_t n) {
  const char* metric = "cpp_value_fetch_add_rtt_p50";
  auto counter = state.value<int64_t>("bench.rtt", 0);
  if (!counter) {
    out.note(std::string{metric} + ": " + describe(counter.error()));
    return {};
  }
  auto c = start("bench.shared_rtt", "bench-rtt", *counter, n,
                 static_cast<int32_t>(reps()));
  if (!c) {
    out.note(std::string{metric} + ": cannot start the child: "
             + describe(c.error()));
    return {};
  }
  std::vector<child> children;
  children.push_back(std::move(*c));
  std::vector<double> values;
  for (int r = 0; r < reps(); ++r) {
    auto msg = children[0].pipe.recv_message(120s);
    if (msg && msg->match_elements<double>()) {
      values.push_back(msg->get_as<double>(0));
      continue;
    }
    out.note(std::string{metric} + ": "
             + (!msg ? describe(msg.error())
                     : msg->match_elements<std::string>()
                         ? msg->get_as<std::string>(0)
                         : "unexpected message " + caf::to_string(*msg)));
    values.clear();
    break;
  }
  reap(children);
  return values;
}

} // namespace

void bench_shared(reporter& out, const std::string& part) {
  auto want = [&](const char* x) { return part.empty() || part == x; };
  auto limit = std::chrono::seconds{60 * reps()};
  multiproc::shared_state_options opts;
  opts.timeout = 60s; // a sync() after a million posts may take a while
  auto state = multiproc::shared_state::start(opts);
  if (!state) {
    out.note("cannot start the shared-state owner: "
             + describe(state.error()));
    return;
  }
  if (want("incr")) {
    watchdog dog{"cpp_value_incr_2proc", limit};
    out.add("cpp_value_incr_2proc", "incr/s", value_incr(out, *state, 1000000));
  }
  if (want("dict")) {
    watchdog dog{"cpp_dict_set_2proc", limit};
    out.add("cpp_dict_set_2proc", "ops/s", dict_set(out, *state, 200000));
  }
  if (want("rtt")) {
    watchdog dog{"cpp_value_fetch_add_rtt_p50", limit};
    out.add("cpp_value_fetch_add_rtt_p50", "us",
            fetch_add_rtt(out, *state, 20000));
  }
  if (want("lock")) {
    watchdog dog{"cpp_lock_incr_2proc", limit};
    out.add("cpp_lock_incr_2proc", "incr/s", lock_incr(out, 1000000));
  }
}
