// The supervisor: a detached CAF actor that owns a tree of supervisor nodes
// (the top one and the nested ones) and their child processes, and an exit
// watcher thread that polls every running child's pidfd and tells the actor
// which one ended. Everything else (starting, stopping, restarting, the
// pipeline's completion) runs on the actor's own thread, one event at a time,
// as in OTP, where a supervisor also stops its children synchronously.

#include "multiproc/supervisor.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <future>
#include <thread>
#include <utility>

#include <csignal>

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <caf/actor_cast.hpp>
#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>

#include "multiproc/shm_queue.hpp"
#include "multiproc/worker.hpp"

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(multiproc::supervisor_report)

namespace multiproc {

namespace {

using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

using child_exit_atom = caf::atom_constant<caf::atom("chld_exit")>;

/// Waits up to `timeout` for the process to exit (its pidfd to poll
/// readable), without reaping it.
bool await_exit(process& proc, milliseconds timeout) {
  pollfd p{proc.exit_fd(), POLLIN, 0};
  auto deadline = clock_type::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<milliseconds>(deadline
                                                         - clock_type::now());
    int rc = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
    if (rc > 0)
      return true;
    if (rc == 0)
      return false;
    if (errno != EINTR)
      return !proc.is_alive();
  }
}

// -- the exit watcher ---------------------------------------------------------

/// One thread that polls the pidfds of running children and calls `notify`
/// with the key of each one that ended (once per watch). Keys are unique per
/// process incarnation, so a late notification for a stopped child is
/// recognised as stale.
class exit_watcher {
public:
  explicit exit_watcher(std::function<void(uint64_t)> notify)
    : notify_(std::move(notify)),
      wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    thread_ = std::thread{[this] { run(); }};
  }

  ~exit_watcher() {
    stop_.store(true);
    poke();
    thread_.join();
  }

  /// Watches `pidfd` (duplicated: the caller keeps its own) under `key`.
  void watch(uint64_t key, int pidfd) {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      fds_[key] = unique_fd{::fcntl(pidfd, F_DUPFD_CLOEXEC, 0)};
    }
    poke();
  }

  void unwatch(uint64_t key) {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      fds_.erase(key);
    }
    poke();
  }

private:
  void poke() noexcept {
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_.get(), &one, sizeof(one));
  }

  void run() {
    std::vector<pollfd> fds;
    std::vector<uint64_t> keys;
    while (!stop_.load()) {
      fds.assign(1, pollfd{wake_.get(), POLLIN, 0});
      keys.assign(1, 0);
      {
        std::lock_guard<std::mutex> guard{mtx_};
        for (auto& [key, fd] : fds_) {
          fds.push_back(pollfd{fd.get(), POLLIN, 0});
          keys.push_back(key);
        }
      }
      if (::poll(fds.data(), fds.size(), -1) <= 0)
        continue;
      if (fds[0].revents != 0) {
        uint64_t n = 0;
        [[maybe_unused]] auto r = ::read(wake_.get(), &n, sizeof(n));
      }
      for (size_t i = 1; i < fds.size(); ++i) {
        if (fds[i].revents == 0)
          continue;
        bool ours = false;
        {
          std::lock_guard<std::mutex> guard{mtx_};
          auto it = fds_.find(keys[i]);
          if (it != fds_.end() && it->second.get() == fds[i].fd) {
            fds_.erase(it);
            ours = true;
          }
        }
        if (ours)
          notify_(keys[i]);
      }
    }
  }

  std::function<void(uint64_t)> notify_;
  unique_fd wake_;
  std::mutex mtx_;
  std::map<uint64_t, unique_fd> fds_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

/// How a worker actor child ended, set by its on_exit callback (on the
/// worker's I/O thread) before the supervisor hears of it.
class exit_box {
public:
  void set(exit_status st) {
    {
      std::lock_guard<std::mutex> guard{mtx_};
      status_ = st;
    }
    cv_.notify_all();
  }

  /// Waits up to `timeout` for the exit; nullopt if it did not come.
  std::optional<exit_status> wait(milliseconds timeout) {
    std::unique_lock<std::mutex> guard{mtx_};
    cv_.wait_for(guard, timeout, [&] { return status_.has_value(); });
    return status_;
  }

private:
  std::mutex mtx_;
  std::condition_variable cv_;
  std::optional<exit_status> status_;
};

// -- the tree -------------------------------------------------------------------

struct node;

struct child {
  child_spec spec;
  /// Copies of spec.fds, owned, so that restarts work after the caller
  /// closed its own.
  std::vector<unique_fd> fds;
  process proc;
  /// The parent end of the child's channel: closing it is the graceful stop.
  unique_fd channel;
  std::unique_ptr<node> nested;
  /// A worker actor child: its handle and how it ended.
  caf::actor actor;
  std::shared_ptr<exit_box> exited;
  uint64_t key = 0;
  bool running = false;
  bool finished = false;
  uint64_t starts = 0;
  uint64_t restarts = 0;
  restart_causes causes;
  std::optional<exit_status> last_exit;
};

struct node {
  std::string path;
  restart_strategy strategy = restart_strategy::one_for_one;
  int max_restarts = 1;
  milliseconds within{5000};
  std::vector<child> children;
  std::deque<clock_type::time_point> restart_times;
  shm_queue queue;
  shm_queue results;
  bool queue_closed = false;
  bool complete = false;
  /// Gave up (restart intensity exceeded): handles no more ends.
  bool failed = false;
  node* parent = nullptr;
  size_t index = 0; // in parent->children
};

std::string child_name(const node& n, const child& c) {
  return n.path.empty() ? c.spec.id : n.path + "/" + c.spec.id;
}

size_t count_role(const node& n, child_role role, bool finished_only) {
  return static_cast<size_t>(
    std::count_if(n.children.begin(), n.children.end(), [&](const child& c) {
      return c.spec.role == role && (!finished_only || c.finished);
    }));
}

} // namespace

// -- what the actor and the handle share -------------------------------------

namespace detail {

struct supervisor_shared {
  std::mutex mtx;
  std::condition_variable cv;
  bool started = false;
  /// The stream is complete, or no child is left to run.
  bool settled = false;
  /// The supervisor stopped (by stop(), or after giving up).
  bool stopped = false;
  /// The actor's state is gone: the queues' mappings, the children's
  /// channels and the exit watcher's descriptors are closed.
  bool released = false;
  caf::error error;
  supervisor_report report;
  /// Running worker actor children by id ("a/b" below the top).
  std::map<std::string, caf::actor> workers;
  supervisor_spec spec; // consumed by the actor at start

  template <class F>
  void update(F&& f) {
    {
      std::lock_guard<std::mutex> guard{mtx};
      f();
    }
    cv.notify_all();
  }
};

} // namespace detail

namespace {

/// The supervisor's logic; lives in the actor's state, runs on its thread.
class supervisor_core {
public:
  supervisor_core(caf::actor_system& sys,
                  std::shared_ptr<detail::supervisor_shared> shared,
                  caf::actor_addr self)
    : sys_(sys),
      shared_(std::move(shared)),
      self_(self),
      on_event_(shared_->spec.on_event),
      watcher_([self](uint64_t key) {
        if (auto hdl = caf::actor_cast<caf::actor>(self))
          caf::anon_send(hdl, child_exit_atom::value, key);
      }) {
  }

  ~supervisor_core() {
    stop(caf::none);
  }

  /// Builds the top node and starts every child; an error stops those
  /// started and is the supervisor's result.
  caf::error start() {
    auto spec = std::move(shared_->spec);
    auto top = build(spec, "", nullptr, 0);
    if (!top)
      return std::move(top.error());
    top_ = std::move(*top);
    if (auto err = start_node(*top_))
      return err;
    publish();
    return caf::none;
  }

  /// A watched process ended.
  void on_exit(uint64_t key) {
    auto it = keys_.find(key);
    if (it == keys_.end())
      return; // stale: stopped by us meanwhile
    auto [n, i] = it->second;
    keys_.erase(it);
    auto& c = n->children[i];
    c.key = 0;
    pid_t pid = 0;
    if (c.spec.actor) {
      pid = pid_of(c);
      c.last_exit = c.exited->wait(milliseconds{0});
      forget_worker(*n, c);
    } else {
      pid = c.proc.pid();
      recover_queues(*n, pid);
      auto status = c.proc.join(milliseconds{2000});
      c.last_exit = status ? *status : exit_status{false, -1, 0};
      c.proc = process{};
      c.channel.reset();
    }
    if (!c.last_exit)
      c.last_exit = exit_status{false, -1, 0};
    c.running = false;
    ended(*n, i, c.last_exit->success(), c.last_exit->to_string(), pid);
    graveyard_.clear();
    publish();
  }

  /// Stops every child in reverse order. `reason` is the supervisor's
  /// result (none for a requested stop).
  void stop(caf::error reason) {
    if (stopped_)
      return;
    stopped_ = true;
    if (top_)
      stop_children(*top_, 0, top_->children.size());
    auto report = make_report();
    shared_->update([&] {
      shared_->report = std::move(report);
      if (reason && !shared_->error)
        shared_->error = std::move(reason);
      shared_->settled = settled_;
      shared_->stopped = true;
    });
  }

  supervisor_report make_report() const {
    supervisor_report r;
    if (!top_)
      return r;
    report_node(*top_, r);
    r.stream_complete = top_->complete;
    if (top_->queue.valid()) {
      r.consumed = top_->queue.consumed();
      r.redelivered = top_->queue.redelivered();
    }
    return r;
  }

  /// The error the supervisor gave up with, or none.
  const caf::error& failure() const noexcept {
    return failure_;
  }

private:
  // -- building and validating ----------------------------------------------

  caf::expected<std::unique_ptr<node>> build(const supervisor_spec& spec,
                                             std::string path, node* parent,
                                             size_t index) {
    auto where = path.empty() ? std::string{"supervisor"}
                              : "supervisor '" + path + "'";
    if (spec.max_restarts < 0 || spec.within.count() <= 0)
      return make_error(errc::invalid_argument,
                        where + ": max_restarts must be >= 0 and within > 0");
    auto n = std::make_unique<node>();
    n->path = std::move(path);
    n->strategy = spec.strategy;
    n->max_restarts = spec.max_restarts;
    n->within = spec.within;
    n->parent = parent;
    n->index = index;
    if (auto err = attach_queue(spec.queue, n->queue, where, "queue"))
      return err;
    if (auto err = attach_queue(spec.results, n->results, where, "results"))
      return err;
    std::set<std::string> ids;
    for (auto& cs : spec.children) {
      auto name = where + ", child '" + cs.id + "'";
      if (cs.id.empty() || cs.id.find('/') != std::string::npos)
        return make_error(errc::invalid_argument,
                          where + ": a child id must be non-empty, without '/'");
      if (!ids.insert(cs.id).second)
        return make_error(errc::invalid_argument,
                          where + ": two children have the id '" + cs.id + "'");
      if (cs.actor) {
        if (!has_worker(cs.entry))
          return make_error(errc::invalid_argument,
                            name + ": no worker registered as '" + cs.entry
                              + "' (MULTIPROC_WORKER)");
        if (cs.role != child_role::worker || !cs.fds.empty())
          return make_error(errc::invalid_argument,
                            name + ": a worker actor takes no pipeline role "
                                   "or descriptors");
      } else if (cs.supervisor == nullptr && !has_entry(cs.entry))
        return make_error(errc::invalid_argument,
                          name + ": no entry registered as '" + cs.entry
                            + "' (MULTIPROC_REGISTER_ENTRY)");
      if (cs.role != child_role::worker && !n->queue.valid())
        return make_error(errc::invalid_argument,
                          name + ": a " + to_string(cs.role)
                            + " needs the supervisor_spec's queue");
      child c;
      c.spec = cs;
      for (int fd : cs.fds) {
        unique_fd copy{::fcntl(fd, F_DUPFD_CLOEXEC, 0)};
        if (!copy)
          return make_error(errc::invalid_argument,
                            name + ": descriptor " + std::to_string(fd)
                              + " is not open");
        c.fds.push_back(std::move(copy));
      }
      n->children.push_back(std::move(c));
    }
    return n;
  }

  static caf::error attach_queue(int fd, shm_queue& out,
                                 const std::string& where, const char* what) {
    if (fd < 0)
      return caf::none;
    unique_fd copy{::fcntl(fd, F_DUPFD_CLOEXEC, 0)};
    if (!copy)
      return make_error(errc::invalid_argument,
                        where + ": the " + what + " descriptor "
                          + std::to_string(fd) + " is not open");
    auto q = shm_queue::attach(std::move(copy));
    if (!q)
      return make_error(errc::invalid_argument,
                        where + ": the " + what + " descriptor: "
                          + text_of(q.error()));
    out = std::move(*q);
    return caf::none;
  }

  // -- starting and stopping --------------------------------------------------

  caf::error start_node(node& n) {
    for (size_t i = 0; i < n.children.size(); ++i) {
      if (auto err = start_child(n, i)) {
        stop_children(n, 0, i);
        return err;
      }
    }
    return caf::none;
  }

  caf::error start_child(node& n, size_t i) {
    auto& c = n.children[i];
    c.finished = false;
    ++c.starts;
    if (c.spec.supervisor != nullptr) {
      auto sub = build(*c.spec.supervisor, child_name(n, c), &n, i);
      if (!sub)
        return std::move(sub.error());
      if (auto err = start_node(**sub))
        return err;
      c.nested = std::move(*sub);
      c.running = true;
      return caf::none;
    }
    if (c.spec.actor)
      return start_worker(n, i);
    process_options opts;
    opts.name = c.spec.id;
    opts.method = c.spec.method;
    opts.sink = c.spec.sink;
    if (c.spec.role != child_role::worker)
      opts.fds.push_back(n.queue.fd());
    if (c.spec.role == child_role::consumer && n.results.valid())
      opts.fds.push_back(n.results.fd());
    for (auto& fd : c.fds)
      opts.fds.push_back(fd.get());
    auto proc = start_process(c.spec.entry, c.spec.args, std::move(opts));
    if (!proc)
      return make_error(code_of(proc.error()) == errc::none
                          ? errc::spawn_failed
                          : code_of(proc.error()),
                        "cannot start child '" + child_name(n, c)
                          + "': " + text_of(proc.error()));
    c.proc = std::move(*proc);
    c.channel = c.proc.take_channel();
    c.key = ++last_key_;
    c.running = true;
    keys_[c.key] = {&n, i};
    watcher_.watch(c.key, c.proc.exit_fd());
    emit(supervisor_event::started, n, c.spec.id, c.proc.pid());
    return caf::none;
  }

  caf::error start_worker(node& n, size_t i) {
    auto& c = n.children[i];
    auto key = ++last_key_;
    auto exited = std::make_shared<exit_box>();
    worker_options opts;
    opts.name = c.spec.id;
    opts.method = c.spec.method;
    opts.sink = c.spec.sink;
    // The graceful stop, then SIGTERM (stop_child), then SIGKILL.
    opts.shutdown_timeout = c.spec.shutdown_timeout + c.spec.kill_timeout;
    opts.on_exit = [exited, self = self_, key](const caf::expected<exit_status>& st) {
      exited->set(st ? *st : exit_status{false, -1, 0});
      if (auto hdl = caf::actor_cast<caf::actor>(self))
        caf::anon_send(hdl, child_exit_atom::value, key);
    };
    auto w = spawn_worker(sys_, c.spec.entry, std::move(opts));
    if (!w)
      return make_error(code_of(w.error()) == errc::none ? errc::spawn_failed
                                                         : code_of(w.error()),
                        "cannot start worker child '" + child_name(n, c)
                          + "': " + text_of(w.error()));
    c.actor = std::move(*w);
    c.exited = std::move(exited);
    c.key = key;
    c.running = true;
    keys_[key] = {&n, i};
    auto name = child_name(n, c);
    auto hdl = c.actor;
    shared_->update([&] { shared_->workers[name] = hdl; });
    emit(supervisor_event::started, n, c.spec.id, pid_of(c));
    return caf::none;
  }

  static pid_t pid_of(const child& c) {
    if (c.spec.actor) {
      auto info = c.actor ? info_of(c.actor) : std::nullopt;
      return info ? info->pid : 0;
    }
    return c.proc.pid();
  }

  void forget_worker(const node& n, child& c) {
    auto name = child_name(n, c);
    shared_->update([&] { shared_->workers.erase(name); });
    c.actor = nullptr;
  }

  /// A process child: the graceful stop (the channel closes), SIGTERM after
  /// shutdown_timeout, SIGKILL after kill_timeout more.
  void stop_process_child(node& n, child& c) {
    c.channel.reset();
    if (!await_exit(c.proc, c.spec.shutdown_timeout)) {
      (void) c.proc.terminate();
      if (!await_exit(c.proc, c.spec.kill_timeout)) {
        (void) c.proc.kill();
        await_exit(c.proc, milliseconds{5000});
      }
    }
    recover_queues(n, c.proc.pid());
    auto status = c.proc.join(milliseconds{2000});
    c.last_exit = status ? *status : exit_status{false, -1, 0};
    c.proc = process{};
  }

  /// A worker actor child: the worker's graceful stop (its shutdown frame),
  /// SIGTERM after shutdown_timeout, SIGKILL after kill_timeout more.
  void stop_worker_child(node& n, child& c) {
    auto stopping = std::async(std::launch::async,
                               [hdl = c.actor] { return stop_worker(hdl); });
    if (!c.exited->wait(c.spec.shutdown_timeout)) {
      (void) detail::signal_worker(c.actor, SIGTERM);
      c.exited->wait(c.spec.kill_timeout);
    }
    auto st = stopping.get();
    c.last_exit = c.exited->wait(milliseconds{5000});
    if (!c.last_exit)
      c.last_exit = st ? *st : exit_status{false, -1, 0};
    forget_worker(n, c);
  }

  /// Stops the running children in [first, last), the last one first.
  void stop_children(node& n, size_t first, size_t last) {
    for (size_t i = last; i-- > first;)
      stop_child(n, i);
  }

  /// Stops child `i` of `n` if it runs, as its kind stops (below).
  void stop_child(node& n, size_t i) {
    auto& c = n.children[i];
    if (!c.running)
      return;
    c.running = false;
    if (c.nested) {
      stop_children(*c.nested, 0, c.nested->children.size());
      graveyard_.push_back(std::move(c.nested));
      return;
    }
    auto key = std::exchange(c.key, 0);
    keys_.erase(key);
    auto pid = pid_of(c);
    if (c.spec.actor) {
      stop_worker_child(n, c);
    } else {
      watcher_.unwatch(key);
      stop_process_child(n, c);
    }
    supervisor_event ev;
    ev.kind = supervisor_event::stopped;
    ev.pid = pid;
    ev.status = c.last_exit;
    emit(std::move(ev), n, c.spec.id);
  }

  /// Lets the queues of `n` (and of its ancestors: a nested child may use
  /// theirs through its fds) redeliver what `pid` held at once.
  static void recover_queues(node& n, pid_t pid) {
    for (node* p = &n; p != nullptr; p = p->parent) {
      if (p->queue.valid())
        p->queue.recover(pid);
      if (p->results.valid())
        p->results.recover(pid);
    }
  }

  // -- restarts ---------------------------------------------------------------

  /// Child `i` of `n` ended (`normal`: code 0), described by `how`.
  void ended(node& n, size_t i, bool normal, const std::string& how,
             pid_t pid) {
    if (n.failed)
      return;
    auto& c = n.children[i];
    bool restart = c.spec.restart == restart_type::permanent
                   || (c.spec.restart == restart_type::transient && !normal);
    bool again = restart && note_restart(n);
    supervisor_event ev;
    ev.kind = supervisor_event::exited;
    ev.pid = pid;
    ev.status = c.last_exit;
    ev.restarting = again;
    emit(std::move(ev), n, c.spec.id);
    if (!restart) {
      c.finished = true;
      progress(n);
    } else if (!again) {
      give_up(n, "child '" + child_name(n, c) + "' " + how);
    } else {
      ++c.restarts;
      if (!c.last_exit)
        ++c.causes.start_failed;
      else if (c.last_exit->signaled)
        ++c.causes.signal;
      else if (c.last_exit->code != 0)
        ++c.causes.error_exit;
      else
        ++c.causes.normal_exit;
      restart_after(n, i);
    }
  }

  /// Counts a restart; false if it is one too many for the intensity.
  bool note_restart(node& n) {
    auto now = clock_type::now();
    while (!n.restart_times.empty() && now - n.restart_times.front() >= n.within)
      n.restart_times.pop_front();
    if (static_cast<int>(n.restart_times.size()) + 1 > n.max_restarts)
      return false;
    n.restart_times.push_back(now);
    return true;
  }

  /// Applies the strategy after child `i` of `n` ended and may restart.
  void restart_after(node& n, size_t i) {
    std::vector<size_t> again;
    switch (n.strategy) {
      case restart_strategy::one_for_one:
        again = {i};
        break;
      case restart_strategy::one_for_all:
      case restart_strategy::rest_for_one: {
        size_t first = n.strategy == restart_strategy::one_for_all ? 0 : i + 1;
        for (size_t j = first; j < n.children.size(); ++j)
          if (j == i || n.children[j].running)
            again.push_back(j);
        for (size_t j = n.children.size(); j-- > first;) {
          if (j == i || !n.children[j].running)
            continue;
          stop_child(n, j);
          // A temporary child stopped for a sibling is not started again.
          if (n.children[j].spec.restart == restart_type::temporary) {
            n.children[j].finished = true;
            again.erase(std::find(again.begin(), again.end(), j));
          }
        }
        if (n.strategy == restart_strategy::rest_for_one)
          again.insert(again.begin(), i);
        break;
      }
    }
    std::vector<std::pair<size_t, caf::error>> failed;
    for (auto j : again)
      if (auto err = start_child(n, j))
        failed.emplace_back(j, std::move(err));
    // A failed start counts as another end of that child.
    for (auto& [j, err] : failed) {
      auto& c = n.children[j];
      c.last_exit.reset();
      emit_error(n, c.spec.id, err);
      ended(n, j, false, "failed to start: " + text_of(err), 0);
    }
  }

  /// `n` exceeded its restart intensity: it stops its children and reports
  /// to its parent (or, at the top, to whoever started the supervisor).
  void give_up(node& n, const std::string& last) {
    n.failed = true;
    stop_children(n, 0, n.children.size());
    auto who = n.path.empty() ? std::string{"supervisor"}
                              : "supervisor '" + n.path + "'";
    auto err = make_error(errc::restart_intensity_exceeded,
                          who + ": more than " + std::to_string(n.max_restarts)
                            + " restart(s) within "
                            + std::to_string(n.within.count())
                            + " ms; the last: " + last);
    emit_error(n, "", err, supervisor_event::gave_up);
    if (n.parent == nullptr) {
      failure_ = err;
      return;
    }
    // The parent sees its nested child end abnormally.
    auto& parent = *n.parent;
    auto index = n.index;
    auto& entry = parent.children[index];
    entry.running = false;
    graveyard_.push_back(std::move(entry.nested));
    ended(parent, index, false, "gave up: " + text_of(err), 0);
  }

  // -- the pipeline -------------------------------------------------------------

  /// After a child finished for good: closes the queue once every producer
  /// finished, and completes the stream once every consumer did too.
  void progress(node& n) {
    if (n.queue.valid() && !n.queue_closed
        && count_role(n, child_role::producer, false) > 0
        && count_role(n, child_role::producer, true)
             == count_role(n, child_role::producer, false)) {
      n.queue.close();
      n.queue_closed = true;
    }
    if (n.queue_closed && !n.complete
        && count_role(n, child_role::consumer, true)
             == count_role(n, child_role::consumer, false)) {
      if (n.results.valid())
        n.results.close();
      n.complete = n.queue.empty();
      if (n.complete)
        emit(supervisor_event::complete, n, "", 0);
    }
    if (n.parent == nullptr)
      settle_if_done();
  }

  void settle_if_done() {
    bool all_finished = std::all_of(top_->children.begin(),
                                    top_->children.end(),
                                    [](const child& c) { return c.finished; });
    if (top_->complete || all_finished)
      settled_ = true; // published with the report that says so
  }

  // -- reports and events -------------------------------------------------------

  void report_node(const node& n, supervisor_report& r) const {
    for (auto& c : n.children) {
      child_report cr;
      cr.id = child_name(n, c);
      cr.role = c.spec.role;
      cr.pid = c.running && !c.nested ? pid_of(c) : 0;
      cr.starts = c.starts;
      cr.restarts = c.restarts;
      cr.restarts_by_cause = c.causes;
      cr.last_exit = c.last_exit;
      cr.finished = c.finished;
      r.restarts += c.restarts;
      r.children.push_back(std::move(cr));
      if (c.nested)
        report_node(*c.nested, r);
    }
  }

  void publish() {
    auto report = make_report();
    shared_->update([&] {
      shared_->report = std::move(report);
      shared_->settled = settled_;
    });
  }

  void emit(supervisor_event::kind_type kind, const node& n,
            const std::string& id, pid_t pid) {
    supervisor_event ev;
    ev.kind = kind;
    ev.pid = pid;
    emit(std::move(ev), n, id);
  }

  void emit_error(const node& n, const std::string& id, const caf::error& err,
                  supervisor_event::kind_type kind = supervisor_event::exited) {
    supervisor_event ev;
    ev.kind = kind;
    ev.error = err;
    emit(std::move(ev), n, id);
  }

  /// Publishes the report first: whoever sees an event sees its effect in
  /// report().
  void emit(supervisor_event ev, const node& n, const std::string& id) {
    publish();
    if (!on_event_)
      return;
    ev.supervisor = n.path;
    ev.child = id;
    on_event_(ev);
  }

  caf::actor_system& sys_;
  std::shared_ptr<detail::supervisor_shared> shared_;
  caf::actor_addr self_;
  std::function<void(const supervisor_event&)> on_event_;
  std::unique_ptr<node> top_;
  /// Running processes by watcher key: their node and index.
  std::map<uint64_t, std::pair<node*, size_t>> keys_;
  uint64_t last_key_ = 0;
  /// Nested nodes replaced during one event, freed after it (a call into
  /// such a node may still be on the stack).
  std::vector<std::unique_ptr<node>> graveyard_;
  caf::error failure_;
  bool settled_ = false;
  bool stopped_ = false;
  exit_watcher watcher_;
};

struct supervisor_state {
  std::unique_ptr<supervisor_core> core;
  std::shared_ptr<detail::supervisor_shared> shared;
  static inline const char* name = "multiproc.supervisor";

  // Runs when the actor exits (CAF destroys a stateful actor's state in
  // on_exit), after `stopped` was published: supervisor::stop() waits for
  // this, so that it returns with every descriptor and mapping closed.
  ~supervisor_state() {
    core.reset();
    if (shared)
      shared->update([this] { shared->released = true; });
  }
};

caf::behavior supervisor_actor(caf::stateful_actor<supervisor_state>* self,
                               std::shared_ptr<detail::supervisor_shared> sh) {
  auto& core = self->state.core;
  self->state.shared = sh;
  core = std::make_unique<supervisor_core>(self->home_system(), sh,
                                           self->address());
  auto err = core->start();
  sh->update([&] {
    sh->started = true;
    sh->error = err;
    if (err)
      sh->stopped = true;
  });
  if (err) {
    core.reset();
    self->quit(err);
    return {};
  }
  self->set_exit_handler([self](caf::exit_msg& msg) {
    self->state.core->stop(msg.reason);
    self->quit(msg.reason);
  });
  return {
    [self](child_exit_atom, uint64_t key) {
      auto& core = *self->state.core;
      core.on_exit(key);
      if (auto& err = core.failure()) {
        core.stop(err);
        self->quit(err);
      }
    },
    [self](caf::get_atom) { return self->state.core->make_report(); },
    [self](caf::close_atom) {
      self->state.core->stop(caf::none);
      auto report = self->state.core->make_report();
      self->quit();
      return report;
    },
  };
}

} // namespace

// -- names ----------------------------------------------------------------------

const char* to_string(restart_strategy x) noexcept {
  switch (x) {
    case restart_strategy::one_for_one: return "one_for_one";
    case restart_strategy::one_for_all: return "one_for_all";
    case restart_strategy::rest_for_one: return "rest_for_one";
  }
  return "?";
}

const char* to_string(restart_type x) noexcept {
  switch (x) {
    case restart_type::permanent: return "permanent";
    case restart_type::transient: return "transient";
    case restart_type::temporary: return "temporary";
  }
  return "?";
}

const char* to_string(child_role x) noexcept {
  switch (x) {
    case child_role::worker: return "worker";
    case child_role::producer: return "producer";
    case child_role::consumer: return "consumer";
  }
  return "?";
}

child_spec child_spec::process(std::string id, std::string entry,
                               std::string args, child_role role) {
  child_spec spec;
  spec.id = std::move(id);
  spec.entry = std::move(entry);
  spec.args = std::move(args);
  spec.role = role;
  return spec;
}

child_spec child_spec::worker(std::string id, std::string entry) {
  child_spec spec;
  spec.id = std::move(id);
  spec.entry = std::move(entry);
  spec.actor = true;
  return spec;
}

child_spec child_spec::nested(std::string id, supervisor_spec spec) {
  child_spec c;
  c.id = std::move(id);
  c.supervisor = std::make_shared<const supervisor_spec>(std::move(spec));
  return c;
}

std::string supervisor_event::to_string() const {
  std::string who = child.empty() ? std::string{"supervisor"}
                                  : "child " + child;
  if (!supervisor.empty())
    who = (child.empty() ? "supervisor " : "child ") + supervisor
          + (child.empty() ? "" : "/" + child);
  if (pid > 0)
    who += "[" + std::to_string(pid) + "]";
  switch (kind) {
    case started:
      return who + " started";
    case exited:
      if (error)
        return who + ": " + describe(error);
      return who + " " + (status ? status->to_string() : "ended")
             + (restarting ? ": restarting" : ": not restarted");
    case stopped:
      return who + " stopped (" + (status ? status->to_string() : "?") + ")";
    case gave_up:
      return who + " gave up: " + describe(error);
    case complete:
      return who + ": the stream is complete";
  }
  return who;
}

// -- the handle -------------------------------------------------------------------

supervisor::supervisor() noexcept = default;
supervisor::supervisor(supervisor&&) noexcept = default;

supervisor& supervisor::operator=(supervisor&& other) noexcept {
  if (this != &other) {
    (void) stop();
    shared_ = std::move(other.shared_);
    actor_ = std::move(other.actor_);
  }
  return *this;
}

supervisor::~supervisor() {
  (void) stop();
}

caf::expected<supervisor> supervisor::start(caf::actor_system& sys,
                                            supervisor_spec spec) {
  auto sh = std::make_shared<detail::supervisor_shared>();
  sh->spec = std::move(spec);
  auto hdl = sys.spawn<caf::detached>(supervisor_actor, sh);
  std::unique_lock<std::mutex> guard{sh->mtx};
  sh->cv.wait(guard, [&] { return sh->started; });
  if (sh->error)
    return sh->error;
  guard.unlock();
  supervisor result;
  result.shared_ = std::move(sh);
  result.actor_ = std::move(hdl);
  return result;
}

caf::expected<supervisor_report> supervisor::wait(timeout_type timeout) {
  if (!shared_)
    return make_error(errc::invalid_argument, "wait on an empty supervisor");
  auto& sh = *shared_;
  std::unique_lock<std::mutex> guard{sh.mtx};
  auto ready = [&] { return sh.settled || sh.stopped; };
  if (timeout) {
    if (!sh.cv.wait_for(guard, *timeout, ready))
      return make_error(errc::timeout,
                        "the supervisor still runs after "
                          + std::to_string(timeout->count()) + " ms");
  } else {
    sh.cv.wait(guard, ready);
  }
  if (sh.error)
    return sh.error;
  if (sh.stopped && !sh.settled)
    return make_error(errc::closed, "the supervisor was stopped");
  return sh.report;
}

caf::expected<supervisor_report> supervisor::stop() {
  if (!shared_)
    return make_error(errc::invalid_argument, "stop on an empty supervisor");
  caf::anon_send(actor_, caf::close_atom::value);
  auto& sh = *shared_;
  std::unique_lock<std::mutex> guard{sh.mtx};
  // Until the actor is gone, not only stopped: its state still holds the
  // queues' mappings and descriptors a moment after `stopped`.
  sh.cv.wait(guard, [&] { return sh.stopped && sh.released; });
  if (sh.error)
    return sh.error;
  return sh.report;
}

supervisor_report supervisor::report() const {
  if (!shared_)
    return {};
  std::lock_guard<std::mutex> guard{shared_->mtx};
  return shared_->report;
}

caf::actor supervisor::worker(const std::string& id) const {
  if (!shared_)
    return {};
  std::lock_guard<std::mutex> guard{shared_->mtx};
  auto it = shared_->workers.find(id);
  return it != shared_->workers.end() ? it->second : caf::actor{};
}

const caf::actor& supervisor::actor() const noexcept {
  return actor_;
}

bool stop_requested(const child_context& ctx, std::chrono::milliseconds wait) {
  if (!ctx.channel)
    return false;
  pollfd p{ctx.channel.get(), POLLIN, 0};
  int rc;
  do {
    rc = ::poll(&p, 1, static_cast<int>(wait.count()));
  } while (rc < 0 && errno == EINTR);
  return rc > 0;
}

// -- metrics ----------------------------------------------------------------------

void add_metrics(metrics_snapshot& out, const std::string& name,
                 const supervisor_report& r) {
  auto n = [](uint64_t x) { return static_cast<double>(x); };
  const char* restarts = "multiproc_supervisor_restarts_total";
  const char* help = "Restarts of a child, by what ended its process: signal, "
                     "error_exit, normal_exit, start_failed.";
  for (auto& c : r.children) {
    auto labels = [&](const char* cause) {
      return metric_labels{{"supervisor", name}, {"child", c.id},
                           {"cause", cause}};
    };
    out.counter(restarts, help, labels("signal"), n(c.restarts_by_cause.signal));
    out.counter(restarts, help, labels("error_exit"),
                n(c.restarts_by_cause.error_exit));
    out.counter(restarts, help, labels("normal_exit"),
                n(c.restarts_by_cause.normal_exit));
    out.counter(restarts, help, labels("start_failed"),
                n(c.restarts_by_cause.start_failed));
  }
  metric_labels l{{"supervisor", name}};
  size_t running = 0;
  for (auto& c : r.children)
    running += c.pid != 0 ? 1 : 0;
  out.gauge("multiproc_supervisor_children_running",
            "Children with a running process.", l, n(running));
  out.counter("multiproc_supervisor_consumed_total",
              "Pipeline: messages consumed and acknowledged.", l,
              n(r.consumed));
  out.counter("multiproc_supervisor_redelivered_total",
              "Pipeline: messages delivered again after their consumer died.",
              l, n(r.redelivered));
  out.gauge("multiproc_supervisor_stream_complete",
            "Pipeline: 1 once every producer ended, the queue drained and "
            "every consumer ended normally.",
            l, r.stream_complete ? 1 : 0);
}

void add_metrics(metrics_snapshot& out, const std::string& name,
                 const supervisor& s) {
  add_metrics(out, name, s.report());
}

} // namespace multiproc
