// The fork server: a single-threaded process forked by bootstrap() before
// any other thread exists. It forks workers on request and reports each
// worker's pidfd (SCM_RIGHTS) and, when it reaps it, its wait status.
//
// Protocol on a SOCK_SEQPACKET socketpair (one message per datagram):
//   request:  fs_request, with 4 descriptors (channel, stdout, stderr,
//             status pipe write end)
//   reply:    fs_reply, with 1 descriptor (the worker's pidfd) on success
// The server writes the worker's wait status (an int) to the status pipe
// when it reaps the worker, then closes it. The server exits on EOF on the
// control socket or on the lifeline (the parent exited or died).

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio_ext.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "multiproc/error.hpp"
#include "process_internal.hpp"

namespace multiproc::detail {

namespace {

constexpr uint32_t request_magic = 0x4d504652; // "MPFR"
constexpr int server_ctrl_fd = 3;              // in the server
constexpr int request_fds = 4;

struct fs_request {
  uint32_t magic = request_magic;
  uint32_t reserved = 0;
};

struct fs_reply {
  int32_t pid = -1;
  int32_t err = 0; // errno of a failed fork, else 0
};

/// Sends `len` bytes with up to `nfds` descriptors.
ssize_t send_with_fds(int sock, const void* data, size_t len, const int* fds,
                      int nfds) {
  iovec iov{const_cast<void*>(data), len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * request_fds)];
  if (nfds > 0) {
    std::memset(ctrl, 0, sizeof(ctrl));
    msg.msg_control = ctrl;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    auto* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    std::memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
  }
  for (;;) {
    auto n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    return n;
  }
}

/// Receives one datagram of at most `len` bytes; stores up to `max_fds`
/// descriptors (close-on-exec) in `fds` and their number in `nfds`.
ssize_t recv_with_fds(int sock, void* data, size_t len, int* fds, int max_fds,
                      int& nfds) {
  iovec iov{data, len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * request_fds)];
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof(ctrl);
  nfds = 0;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0)
    return n;
  for (auto* cm = CMSG_FIRSTHDR(&msg); cm != nullptr;
       cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
      continue;
    int count = static_cast<int>((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    int received[request_fds];
    std::memcpy(received, CMSG_DATA(cm), sizeof(int) * count);
    for (int i = 0; i < count; ++i) {
      if (nfds < max_fds)
        fds[nfds++] = received[i];
      else
        ::close(received[i]);
    }
  }
  if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
    errno = EMSGSIZE;
    return -1;
  }
  return n;
}

char saved_comm[17];

/// The parent's dispositions at bootstrap, restored in workers.
struct sigaction saved_sigint, saved_sigquit, saved_sigpipe;

/// Runs in a worker forked by the server: never returns.
[[noreturn]] void run_worker(int channel, int out, int err) {
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::signal(SIGCHLD, SIG_DFL);
  ::sigaction(SIGINT, &saved_sigint, nullptr);
  ::sigaction(SIGQUIT, &saved_sigquit, nullptr);
  ::sigaction(SIGPIPE, &saved_sigpipe, nullptr);
  ::prctl(PR_SET_NAME, saved_comm, 0, 0, 0);
  if (!setup_child_fds(out, err, channel, child_lifeline_fd))
    ::_exit(boot_failed_exit_code);
  boot_and_run_child(start_method::forkserver, false);
}

/// Serves one request. Returns false if the parent is gone.
bool serve_request(std::unordered_map<pid_t, int>& status_fds) {
  fs_request req;
  int fds[request_fds];
  int nfds = 0;
  auto n = recv_with_fds(server_ctrl_fd, &req, sizeof(req), fds, request_fds,
                         nfds);
  if (n == 0)
    return false;
  fs_reply reply;
  if (n != static_cast<ssize_t>(sizeof(req)) || req.magic != request_magic
      || nfds != request_fds) {
    for (int i = 0; i < nfds; ++i)
      ::close(fds[i]);
    if (n < 0 && errno != EMSGSIZE)
      return false;
    reply.err = EPROTO;
    return send_with_fds(server_ctrl_fd, &reply, sizeof(reply), nullptr, 0)
           >= 0;
  }
  pid_t pid = ::fork();
  if (pid == 0)
    run_worker(fds[0], fds[1], fds[2]);
  int pidfd = -1;
  if (pid < 0) {
    reply.err = errno;
    ::close(fds[3]);
  } else {
    reply.pid = pid;
    pidfd = pidfd_open(pid);
    if (pidfd < 0)
      reply.err = errno; // the parent then kills nothing: it has no pidfd
    status_fds[pid] = fds[3];
  }
  for (int i = 0; i < 3; ++i)
    ::close(fds[i]);
  auto sent = send_with_fds(server_ctrl_fd, &reply, sizeof(reply), &pidfd,
                            pidfd >= 0 ? 1 : 0);
  if (pidfd >= 0)
    ::close(pidfd);
  if (pid > 0 && pidfd < 0)
    ::kill(pid, SIGKILL); // unreachable for the parent: do not leave it
  return sent >= 0;
}

void reap_workers(std::unordered_map<pid_t, int>& status_fds) {
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid < 0 && errno == EINTR)
      continue;
    if (pid <= 0)
      return;
    auto i = status_fds.find(pid);
    if (i == status_fds.end())
      continue;
    // A pipe has room for an int: this never blocks.
    [[maybe_unused]] auto n = ::write(i->second, &status, sizeof(status));
    ::close(i->second);
    status_fds.erase(i);
  }
}

[[noreturn]] void serve() {
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  ::sigprocmask(SIG_BLOCK, &chld, nullptr);
  int sig_fd = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sig_fd < 0)
    ::_exit(1);
  std::unordered_map<pid_t, int> status_fds;
  for (;;) {
    pollfd fds[3] = {{server_ctrl_fd, POLLIN, 0},
                     {child_lifeline_fd, POLLIN, 0},
                     {sig_fd, POLLIN, 0}};
    if (::poll(fds, 3, -1) < 0) {
      if (errno == EINTR)
        continue;
      ::_exit(1);
    }
    if (fds[1].revents != 0)
      ::_exit(0); // lifeline EOF: the parent exited or died
    if (fds[2].revents != 0) {
      signalfd_siginfo info[8];
      while (::read(sig_fd, info, sizeof(info)) > 0)
        ; // drain; reap_workers finds every exited worker
      reap_workers(status_fds);
    }
    if ((fds[0].revents & POLLIN) != 0) {
      if (!serve_request(status_fds))
        ::_exit(0);
    } else if (fds[0].revents != 0) {
      ::_exit(0); // the parent closed the control socket
    }
  }
}

} // namespace

bool start_forkserver(int lifeline_read) noexcept {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    return false;
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(sv[0]);
    ::close(sv[1]);
    return false;
  }
  if (pid == 0) {
    // Buffered output belongs to the parent; the server prints nothing.
    __fpurge(stdout);
    __fpurge(stderr);
    struct sigaction ign {};
    ign.sa_handler = SIG_IGN;
    // Ctrl-C is for the parent, as in Python; a worker's status pipe may be
    // closed by the parent when the server writes to it.
    ::sigaction(SIGINT, &ign, &saved_sigint);
    ::sigaction(SIGQUIT, &ign, &saved_sigquit);
    ::sigaction(SIGPIPE, &ign, &saved_sigpipe);
    if (!setup_child_fds(-1, -1, sv[1], lifeline_read))
      ::_exit(1);
    forget_parent_state_in_child();
    ::prctl(PR_GET_NAME, saved_comm, 0, 0, 0);
    ::prctl(PR_SET_NAME, "mp-forkserver", 0, 0, 0);
    serve();
  }
  ::close(sv[1]);
  state().forkserver_pid = pid;
  state().forkserver_fd = sv[0];
  return true;
}

void stop_forkserver() noexcept {
  auto& st = state();
  std::lock_guard<std::mutex> guard{st.forkserver_mtx};
  int fd = st.forkserver_fd.exchange(-1);
  if (fd < 0)
    return;
  ::close(fd); // the server exits on EOF
  pid_t pid = st.forkserver_pid.exchange(0);
  int status;
  for (int i = 0; i < 1000 && ::waitpid(pid, &status, WNOHANG) == 0; ++i)
    ::usleep(1000);
}

bool forkserver_running() noexcept {
  auto& st = state();
  int fd = st.forkserver_fd;
  if (fd < 0)
    return false;
  pollfd p{fd, 0, 0};
  if (::poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR)) != 0) {
    std::lock_guard<std::mutex> guard{st.forkserver_mtx};
    if (st.forkserver_fd == fd) {
      st.forkserver_fd = -1;
      ::close(fd);
      pid_t pid = st.forkserver_pid.exchange(0);
      if (pid > 0) {
        int status;
        // The server closed its socket: it exits at once; bounded wait.
        for (int i = 0; i < 100 && ::waitpid(pid, &status, WNOHANG) == 0; ++i)
          ::usleep(1000);
      }
    }
    return false;
  }
  return true;
}

caf::expected<forkserver_child> forkserver_fork(int channel, int out, int err,
                                                int status_write) {
  auto& st = state();
  std::lock_guard<std::mutex> guard{st.forkserver_mtx};
  int sock = st.forkserver_fd;
  if (sock < 0)
    return make_error(errc::spawn_failed,
                      "the fork server is not running (bootstrap() did not "
                      "start it, or it died); use start_method::spawn");
  fs_request req;
  int fds[request_fds] = {channel, out, err, status_write};
  if (send_with_fds(sock, &req, sizeof(req), fds, request_fds) < 0)
    return make_error(errc::spawn_failed,
                      std::string{"cannot reach the fork server: "}
                        + std::strerror(errno));
  auto rev = poll_until(sock, POLLIN,
                        clock::now() + std::chrono::seconds{10});
  if (rev == 0)
    return make_error(errc::spawn_failed,
                      "the fork server did not answer within 10 s");
  fs_reply reply;
  int pidfd = -1;
  int nfds = 0;
  auto n = recv_with_fds(sock, &reply, sizeof(reply), &pidfd, 1, nfds);
  if (n <= 0)
    return make_error(errc::spawn_failed,
                      n == 0 ? std::string{"the fork server died"}
                             : "cannot read the fork server's reply: "
                                 + std::string{std::strerror(errno)});
  forkserver_child result;
  result.pidfd.reset(nfds == 1 ? pidfd : -1);
  if (n != static_cast<ssize_t>(sizeof(reply)) || reply.err != 0
      || !result.pidfd)
    return make_error(errc::spawn_failed,
                      std::string{"the fork server could not fork: "}
                        + std::strerror(reply.err != 0 ? reply.err : EPROTO));
  result.pid = reply.pid;
  return result;
}

} // namespace multiproc::detail
