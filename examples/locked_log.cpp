// Four writer processes append to one log file, each line in two writes, one
// process at a time under a shm_lock; a shm_event starts them together. A
// fifth process is killed while it holds the lock: the kernel releases it,
// and the next writer is told. Python: multiprocessing.Lock and Event (whose
// lock would stay held by the dead process, hanging every writer).

#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include "multiproc/bootstrap.hpp"
#include "multiproc/process.hpp"
#include "multiproc/shm_sync.hpp"

using namespace std::chrono_literals;

constexpr int writers = 4;
constexpr int lines_each = 50;

/// Appends `text` to the file at `path` (O_APPEND: each write lands at the
/// end, but two writes of one line may have another's in between).
bool append(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    return false;
  bool ok = ::write(fd, text.data(), text.size())
            == static_cast<ssize_t>(text.size());
  ::close(fd);
  return ok;
}

/// Child: takes the lock (fds[0]), writes half a line, then dies by SIGKILL
/// holding it.
int die_holding(multiproc::child_context& ctx) {
  auto lock = multiproc::shm_lock::attach(std::move(ctx.fds.at(0)));
  if (!lock || lock->lock())
    return 2;
  append(ctx.args, "half a line from a process about to die");
  ::raise(SIGKILL);
  return 3;
}
MULTIPROC_REGISTER_ENTRY("die_holding", die_holding);

/// Child: waits for the start (fds[1]), then writes `lines_each` lines,
/// each in two writes, under the lock (fds[0]). Exit code 10 if one of its
/// acquisitions found the previous holder dead, else 0.
int write_lines(multiproc::child_context& ctx) {
  auto lock = multiproc::shm_lock::attach(std::move(ctx.fds.at(0)));
  auto start = multiproc::shm_event::attach(std::move(ctx.fds.at(1)));
  if (!lock || !start || !start->wait_for(30s))
    return 2;
  bool saw_death = false;
  for (int i = 0; i < lines_each; ++i) {
    std::lock_guard<multiproc::shm_lock> guard{*lock};
    if (lock->previous_holder_died()) {
      saw_death = true;
      append(ctx.args, "\n"); // end the dead process's half line
    }
    if (!append(ctx.args, ctx.name + " line ")
        || !append(ctx.args, std::to_string(i) + "\n"))
      return 4;
  }
  return saw_death ? 10 : 0;
}
MULTIPROC_REGISTER_ENTRY("write_lines", write_lines);

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv);
  auto lock = multiproc::shm_lock::create();
  auto start = multiproc::shm_event::create();
  if (!lock || !start) {
    std::fprintf(stderr, "cannot create the lock or the event\n");
    return 1;
  }
  std::string path = "/tmp/multiproc-locked-log-" + std::to_string(::getpid());
  ::unlink(path.c_str());
  multiproc::process_options opts;
  opts.fds = {lock->fd()};
  auto victim = multiproc::start_process("die_holding", path, opts);
  if (!victim || !victim->join(30s)) {
    std::fprintf(stderr, "the victim did not run\n");
    return 1;
  }
  std::printf("a process died holding the lock\n");
  std::vector<multiproc::process> children;
  for (int k = 0; k < writers; ++k) {
    multiproc::process_options wopts;
    wopts.name = "writer-" + std::to_string(k);
    wopts.fds = {lock->fd(), start->fd()};
    auto child = multiproc::start_process("write_lines", path, wopts);
    if (!child) {
      std::fprintf(stderr, "%s\n", multiproc::describe(child.error()).c_str());
      return 1;
    }
    children.push_back(std::move(*child));
  }
  start->set(); // every writer starts now
  int told = 0;
  for (auto& c : children) {
    auto st = c.join(30s);
    if (!st || st->signaled || (st->code != 0 && st->code != 10)) {
      std::fprintf(stderr, "%s failed\n", c.name().c_str());
      return 1;
    }
    told += st->code == 10 ? 1 : 0;
  }
  std::printf("writers told that the holder had died: %d\n", told);
  int whole = 0, other = 0;
  std::ifstream in{path};
  for (std::string line; std::getline(in, line);) {
    int k = -1, i = -1;
    char rest = 0;
    if (std::sscanf(line.c_str(), "writer-%d line %d%c", &k, &i, &rest) == 2)
      ++whole;
    else
      ++other;
  }
  ::unlink(path.c_str());
  std::printf("lines: %d whole, %d other (the dead process's half line)\n",
              whole, other);
  return whole == writers * lines_each && other == 1 && told == 1 ? 0 : 1;
}
