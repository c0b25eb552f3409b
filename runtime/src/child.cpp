// The child side: descriptor layout, the boot record, the lifeline watcher
// and running the entry.

#include <atomic>
#include <iterator>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio_ext.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log_internal.hpp"
#include "multiproc/error.hpp"
#include "multiproc/faults.hpp"
#include "multiproc/log.hpp"
#include "process_internal.hpp"

namespace multiproc::detail {

// -- descriptors -------------------------------------------------------------------

static_assert(child_passed_fd == child_lifeline_fd + 1);

bool setup_child_fds(int out, int err, int channel, int lifeline,
                     std::vector<unique_fd>* passed) noexcept {
  size_t npassed = passed != nullptr ? passed->size() : 0;
  if (npassed > max_passed_fds)
    return false;
  int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull < 0)
    return false;
  int src[5] = {devnull, out < 0 ? devnull : out, err < 0 ? devnull : err,
                channel, lifeline};
  // Move every source above the target range first, so that placing one
  // descriptor never overwrites a source that is still needed.
  int end = child_passed_fd + static_cast<int>(npassed);
  int low = end > 16 ? end : 16;
  int high[child_passed_fd + max_passed_fds];
  for (int i = 0; i < end; ++i) {
    int fd = i < child_passed_fd ? src[i]
                                 : (*passed)[i - child_passed_fd].get();
    high[i] = ::fcntl(fd, F_DUPFD_CLOEXEC, low);
    if (high[i] < 0)
      return false;
  }
  for (int i = 0; i < child_passed_fd; ++i)
    if (::dup2(high[i], i) < 0) // dup2 clears FD_CLOEXEC on the target
      return false;
  for (int i = child_passed_fd; i < end; ++i)
    if (::dup3(high[i], i, O_CLOEXEC) < 0)
      return false;
  if (::close_range(end, ~0U, 0) != 0)
    return false;
  for (size_t i = 0; i < npassed; ++i) {
    // The old number is closed by now, or holds another passed descriptor.
    (*passed)[i].release();
    (*passed)[i].reset(child_passed_fd + static_cast<int>(i));
  }
  return ::fcntl(child_channel_fd, F_SETFD, FD_CLOEXEC) == 0
         && ::fcntl(child_lifeline_fd, F_SETFD, FD_CLOEXEC) == 0;
}

// -- boot record --------------------------------------------------------------------

namespace {

// Layout (native byte order, both ends are the same program on one machine):
// magic "MPB2", u32 entry size, u32 name size, u32 descriptor count,
// u64 args size, u32 faults size, then entry, name, args and faults bytes
// (faults.hpp: the rules the child takes over). The descriptors travel
// (SCM_RIGHTS) with the first bytes of the record. See docs/processes.md.
constexpr size_t header_size = 28;
constexpr char magic[4] = {'M', 'P', 'B', '2'};
constexpr uint32_t max_name_size = 4096;
constexpr uint64_t max_args_size = uint64_t{1} << 32;
constexpr uint32_t max_faults_size = 65536;

/// Room for max_passed_fds descriptors in a control message.
constexpr size_t fds_space = CMSG_SPACE(sizeof(int) * max_passed_fds);

/// sendmsg() of `len` bytes with `fds` attached (SCM_RIGHTS).
ssize_t send_with_fds(int sock, const char* data, size_t len,
                      const std::vector<unique_fd>& fds, int flags) {
  iovec iov{const_cast<char*>(data), len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[fds_space] = {};
  msg.msg_control = ctrl;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
  auto* cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  for (size_t i = 0; i < fds.size(); ++i) {
    int value = fds[i].get();
    std::memcpy(CMSG_DATA(cm) + i * sizeof(int), &value, sizeof(int));
  }
  return ::sendmsg(sock, &msg, flags);
}

/// recvmsg() of at most `len` bytes; appends the descriptors that arrive
/// with them (close-on-exec) to `fds`. Sets `truncated` if more arrived than
/// fit (the kernel closed the rest).
ssize_t recv_with_fds(int sock, char* data, size_t len,
                      std::vector<unique_fd>& fds, bool& truncated) {
  iovec iov{data, len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[fds_space];
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof(ctrl);
  auto n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  if (n < 0)
    return n;
  for (auto* cm = CMSG_FIRSTHDR(&msg); cm != nullptr;
       cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
      continue;
    auto count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int value;
      std::memcpy(&value, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
      fds.emplace_back(value);
    }
  }
  truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  return n;
}

} // namespace

caf::error write_boot_record(int fd, const boot_record& rec,
                             std::chrono::milliseconds timeout) {
  if (rec.fds.size() > max_passed_fds)
    return make_error(errc::invalid_argument,
                      "a boot record carries at most "
                        + std::to_string(max_passed_fds) + " descriptors");
  std::string buf(header_size, '\0');
  auto entry_size = static_cast<uint32_t>(rec.entry.size());
  auto name_size = static_cast<uint32_t>(rec.name.size());
  auto fd_count = static_cast<uint32_t>(rec.fds.size());
  auto args_size = static_cast<uint64_t>(rec.args.size());
  std::memcpy(&buf[0], magic, 4);
  std::memcpy(&buf[4], &entry_size, 4);
  std::memcpy(&buf[8], &name_size, 4);
  std::memcpy(&buf[12], &fd_count, 4);
  std::memcpy(&buf[16], &args_size, 8);
  auto faults_size = static_cast<uint32_t>(rec.faults.size());
  std::memcpy(&buf[24], &faults_size, 4);
  buf += rec.entry;
  buf += rec.name;
  buf += rec.args;
  buf += rec.faults;
  auto deadline = clock::now() + timeout;
  size_t done = 0;
  while (done < buf.size()) {
    // The descriptors ride on the first bytes that go out.
    int flags = MSG_DONTWAIT | MSG_NOSIGNAL;
    auto n = done == 0 && !rec.fds.empty()
               ? send_with_fds(fd, buf.data(), buf.size(), rec.fds, flags)
               : ::send(fd, buf.data() + done, buf.size() - done, flags);
    if (n >= 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (errno == EINTR)
      continue;
    if (errno == EPIPE || errno == ECONNRESET)
      return caf::none; // the child is gone; join() tells how it ended
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return make_system_error("cannot send the boot record to the child",
                               errno);
    int rev = poll_until(fd, POLLOUT, deadline);
    if (rev == 0)
      return make_error(errc::spawn_failed,
                        "the child did not read its boot record within "
                          + std::to_string(timeout.count()) + " ms");
    if (rev < 0)
      return make_system_error("poll on the child's channel", errno);
  }
  return caf::none;
}

namespace {

/// Reads exactly `len` bytes. With `fds`, reads with recvmsg() and appends
/// the descriptors that arrive with the bytes to `fds`.
caf::error read_exactly(int fd, char* buf, size_t len,
                        clock::time_point deadline,
                        std::vector<unique_fd>* fds = nullptr) {
  size_t done = 0;
  while (done < len) {
    int rev = poll_until(fd, POLLIN, deadline);
    if (rev == 0)
      return make_error(errc::timeout, "no boot record from the parent");
    if (rev < 0)
      return make_system_error("poll on the channel", errno);
    bool truncated = false;
    auto n = fds != nullptr
               ? recv_with_fds(fd, buf + done, len - done, *fds, truncated)
               : ::read(fd, buf + done, len - done);
    if (truncated)
      return make_error(errc::protocol_error,
                        "more than " + std::to_string(max_passed_fds)
                          + " descriptors came with the boot record");
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n == 0)
      return make_error(errc::peer_closed,
                        "the parent closed the channel before the boot "
                        "record was complete");
    if (errno != EINTR && errno != EAGAIN)
      return make_system_error("read of the boot record", errno);
  }
  return caf::none;
}

} // namespace

caf::expected<boot_record> read_boot_record(int fd,
                                            std::chrono::milliseconds timeout) {
  auto deadline = clock::now() + timeout;
  boot_record rec; // closes the received descriptors on error
  char header[header_size];
  if (auto err = read_exactly(fd, header, header_size, deadline, &rec.fds))
    return err;
  uint32_t entry_size = 0;
  uint32_t name_size = 0;
  uint32_t fd_count = 0;
  uint64_t args_size = 0;
  std::memcpy(&entry_size, header + 4, 4);
  std::memcpy(&name_size, header + 8, 4);
  std::memcpy(&fd_count, header + 12, 4);
  std::memcpy(&args_size, header + 16, 8);
  uint32_t faults_size = 0;
  std::memcpy(&faults_size, header + 24, 4);
  if (std::memcmp(header, magic, 4) != 0 || entry_size > max_name_size
      || name_size > max_name_size || fd_count > max_passed_fds
      || args_size > max_args_size || faults_size > max_faults_size)
    return make_error(errc::protocol_error, "malformed boot record");
  if (rec.fds.size() != fd_count)
    return make_error(errc::protocol_error,
                      "the boot record announces " + std::to_string(fd_count)
                        + " descriptors, but "
                        + std::to_string(rec.fds.size()) + " arrived");
  rec.entry.resize(entry_size);
  rec.name.resize(name_size);
  rec.args.resize(static_cast<size_t>(args_size));
  rec.faults.resize(faults_size);
  for (auto* str : {&rec.entry, &rec.name, &rec.args, &rec.faults})
    if (!str->empty())
      if (auto err = read_exactly(fd, &(*str)[0], str->size(), deadline))
        return err;
  return rec;
}

// -- running the entry ------------------------------------------------------------

namespace {

/// Blocks on the lifeline; EOF means the parent died: die with it.
void watch_lifeline() {
  char byte;
  for (;;) {
    auto n = ::read(child_lifeline_fd, &byte, 1);
    if (n > 0 || (n < 0 && errno == EINTR))
      continue;
    ::kill(::getpid(), SIGKILL);
    ::_exit(boot_failed_exit_code); // not reached
  }
}

void (*exit_hooks[8])() = {};
std::atomic<size_t> num_exit_hooks{0};

[[noreturn]] void finish(int code, bool exec_child) {
  for (size_t i = 0; i < num_exit_hooks.load(); ++i)
    if (exit_hooks[i] != nullptr)
      exit_hooks[i]();
  std::fflush(nullptr);
  if (exec_child)
    std::exit(code);
  ::_exit(code);
}

} // namespace

void at_child_exit(void (*fn)()) noexcept {
  auto i = num_exit_hooks.fetch_add(1);
  if (i < std::size(exit_hooks))
    exit_hooks[i] = fn;
  else
    num_exit_hooks.store(std::size(exit_hooks));
}

void run_child(boot_record rec, start_method method, bool exec_child) {
  auto& st = state();
  st.child = true;
  st.bootstrapped = true;
  if (!exec_child) {
    // Output the parent buffered before the fork is the parent's to print.
    __fpurge(stdout);
    __fpurge(stderr);
  }
  // Line-buffered, so that lines are not stuck in stdio when the child
  // crashes. An explicit buffer also resets the pointers of a stream the
  // parent used before fork (glibc ignores _IOLBF on it otherwise).
  static char stdout_buf[BUFSIZ];
  std::setvbuf(stdout, stdout_buf, _IOLBF, sizeof(stdout_buf));
  // Still one thread: the logger's sinks may be replaced.
  log_to_parent();
  std::thread{watch_lifeline}.detach();
  faults::detail::on_child_start(rec.faults);
  auto fn = find_entry(rec.entry);
  if (fn == nullptr) {
    logger()->error("no entry is registered as '{}' in this executable",
                    rec.entry);
    finish(unknown_entry_exit_code, exec_child);
  }
  int code = 1;
  {
    child_context ctx;
    ctx.entry = std::move(rec.entry);
    ctx.name = std::move(rec.name);
    ctx.args = std::move(rec.args);
    ctx.channel.reset(child_channel_fd);
    ctx.fds = std::move(rec.fds);
    ctx.method = method;
    try {
      code = fn(ctx);
    } catch (const std::exception& ex) {
      logger()->error("entry '{}' threw: {}", ctx.entry, ex.what());
      code = 1;
    } catch (...) {
      logger()->error("entry '{}' threw a non-std exception", ctx.entry);
      code = 1;
    }
  }
  finish(code, exec_child);
}

void run_child_if_spawned() {
  const char* spec = ::getenv(child_env_var);
  if (spec == nullptr)
    return;
  std::string value = spec;
  ::unsetenv(child_env_var);
  if (value != "1") {
    // Not known to be the parent's child yet: a plain line.
    logger()->critical("malformed {}={} in the environment", child_env_var,
                       value);
    ::_exit(boot_failed_exit_code);
  }
  if (::fcntl(child_channel_fd, F_SETFD, FD_CLOEXEC) != 0
      || ::fcntl(child_lifeline_fd, F_SETFD, FD_CLOEXEC) != 0) {
    logger()->critical("started in worker mode without descriptors 3 and 4");
    ::_exit(boot_failed_exit_code);
  }
  boot_and_run_child(start_method::spawn, true);
}

void boot_and_run_child(start_method method, bool exec_child) {
  // Descriptors 2-4 are the parent's: records go to it from here on.
  log_to_parent();
  auto rec = read_boot_record(child_channel_fd, std::chrono::seconds{30});
  if (!rec) {
    logger()->error("child boot failed: {}", describe(rec.error()));
    ::_exit(boot_failed_exit_code);
  }
  run_child(std::move(*rec), method, exec_child);
}

} // namespace multiproc::detail
