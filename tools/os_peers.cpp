// The OS limits of `multiproc bench` (os_peers.hpp). Written to measure what
// ../shared/peers/os_limits.cpp measures, the same way: a forked child echoes
// or sinks, the parent times with CLOCK_MONOTONIC, one median per metric over
// BENCH_REPS repetitions. Children only read, write and _exit (no allocation
// after fork), so a stray thread in the parent cannot wedge them.
#include "os_peers.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <new>

#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "multiproc/fd.hpp"

namespace bench_peers {

namespace {

using bench_report::reps;
using bench_report::result_line;

constexpr size_t msg_size = 64;

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/// A failed system call: what was attempted and strerror(errno).
std::string failed(const char* what) {
  return std::string{"os peers: "} + what + ": " + std::strerror(errno);
}

// The parent writes with MSG_NOSIGNAL: a dead child gives EPIPE, not SIGPIPE.
bool send_all(int fd, const void* p, size_t n) {
  auto* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::send(fd, c, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return false;
    }
    c += w;
    n -= size_t(w);
  }
  return true;
}

// False on EOF or an error (errno 0 on EOF).
bool read_all(int fd, void* p, size_t n) {
  auto* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t r = ::read(fd, c, n);
    if (r == 0) {
      errno = 0;
      return false;
    }
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return false;
    }
    c += r;
    n -= size_t(r);
  }
  return true;
}

// In a child: write with plain write(2), as os_limits does.
bool write_all(int fd, const void* p, size_t n) {
  return multiproc::write_all(fd, {static_cast<const char*>(p), n});
}

void reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
}

double p50_us(std::vector<uint64_t>& lat) {
  std::sort(lat.begin(), lat.end());
  return double(lat[lat.size() / 2]) / 1000.0;
}

/// A forked child on the other end of a socketpair(AF_UNIX, SOCK_STREAM).
struct peer_child {
  int fd = -1; // this process's end
  pid_t pid = -1;
};

/// Forks a child that runs `body` on its end of a new socketpair and exits
/// with its result (0 or 1). On failure, a note and fd -1.
template <class Body>
peer_child fork_peer(std::vector<std::string>& notes, Body body) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
    notes.push_back(failed("socketpair"));
    return {};
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    notes.push_back(failed("fork"));
    ::close(sv[0]);
    ::close(sv[1]);
    return {};
  }
  if (pid == 0) {
    ::close(sv[0]);
    ::_exit(body(sv[1]) ? 0 : 1);
  }
  ::close(sv[1]);
  return {sv[0], pid};
}

// -- rtt: socketpair ping-pong -----------------------------------------------

bool socketpair_rtt(std::vector<result_line>& out,
                    std::vector<std::string>& notes) {
  const int n = 20000;
  auto peer = fork_peer(notes, [](int fd) { // echo until EOF
    char buf[msg_size];
    while (read_all(fd, buf, msg_size) && write_all(fd, buf, msg_size)) {
    }
    return true;
  });
  if (peer.fd < 0)
    return false;
  int fd = peer.fd;
  char buf[msg_size];
  std::memset(buf, 'x', msg_size);
  bool ok = true;
  for (int i = 0; ok && i < 1000; ++i)
    ok = send_all(fd, buf, msg_size) && read_all(fd, buf, msg_size);
  std::vector<double> p50s;
  std::vector<double> means;
  std::vector<uint64_t> lat(static_cast<size_t>(n));
  for (int r = 0; ok && r < reps(); ++r) {
    uint64_t t0 = now_ns();
    for (int i = 0; ok && i < n; ++i) {
      uint64_t s = now_ns();
      ok = send_all(fd, buf, msg_size) && read_all(fd, buf, msg_size);
      lat[size_t(i)] = now_ns() - s;
    }
    uint64_t t1 = now_ns();
    means.push_back(double(t1 - t0) / n / 1000.0);
    p50s.push_back(p50_us(lat));
  }
  if (!ok)
    notes.push_back(failed("socketpair ping-pong"));
  ::close(fd);
  reap(peer.pid);
  if (!ok)
    return false;
  out.push_back({"os_socketpair_rtt_p50", "us", p50s});
  out.push_back({"os_socketpair_rtt_mean", "us", means});
  return true;
}

// -- bw: 1 MiB messages over a socketpair --------------------------------------

bool socketpair_bw(std::vector<result_line>& out,
                   std::vector<std::string>& notes) {
  const size_t mib = size_t{1} << 20;
  const int count = 512;
  std::vector<char> buf(mib, 'q'); // the child's copy is its receive buffer
  std::vector<double> vals;
  for (int r = 0; r < reps(); ++r) {
    auto peer = fork_peer(notes, [&](int fd) { // read them all, then ack
      for (int i = 0; i < count; ++i)
        if (!read_all(fd, buf.data(), mib))
          return false;
      char k = 'k';
      return write_all(fd, &k, 1);
    });
    if (peer.fd < 0)
      return false;
    uint64_t t0 = now_ns();
    bool ok = true;
    for (int i = 0; ok && i < count; ++i)
      ok = send_all(peer.fd, buf.data(), mib);
    char k = 0;
    ok = ok && read_all(peer.fd, &k, 1);
    uint64_t t1 = now_ns();
    if (!ok)
      notes.push_back(failed("1 MiB writes to a socketpair"));
    ::close(peer.fd);
    reap(peer.pid);
    if (!ok)
      return false;
    vals.push_back(double(count) * double(mib) / (double(t1 - t0) / 1e9)
                   / 1e9);
  }
  out.push_back({"os_socketpair_bw_1MiB_msgs", "GB/s", vals});
  return true;
}

// -- shm: shared-memory ping-pong, both sides spinning ---------------------------

struct alignas(64) seq_line {
  std::atomic<uint32_t> seq{0};
  char pad[60];
};

struct shm_pingpong {
  seq_line ping;
  seq_line pong;
  alignas(64) char a2b[msg_size];
  alignas(64) char b2a[msg_size];
};

// Spins until `l` holds `want`; yields after 2^20 spins (a safety valve for
// a peer without a core, as in os_limits).
inline void spin_until(seq_line& l, uint32_t want) {
  uint64_t spins = 0;
  while (l.seq.load(std::memory_order_acquire) != want) {
    cpu_relax();
    if (++spins > (1u << 20)) {
      ::sched_yield();
      spins = 0;
    }
  }
}

bool shm_spin_rtt(std::vector<result_line>& out,
                  std::vector<std::string>& notes) {
  const int n = 200000;
  const uint32_t warm = 2000;
  void* mem = ::mmap(nullptr, sizeof(shm_pingpong), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    notes.push_back(failed("mmap"));
    return false;
  }
  auto* s = new (mem) shm_pingpong();
  const uint32_t total = warm + uint32_t(n) * uint32_t(reps());
  pid_t pid = ::fork();
  if (pid < 0) {
    notes.push_back(failed("fork"));
    ::munmap(mem, sizeof(shm_pingpong));
    return false;
  }
  if (pid == 0) {
    char local[msg_size];
    for (uint32_t i = 1; i <= total; ++i) {
      spin_until(s->ping, i);
      std::memcpy(local, s->a2b, msg_size);
      std::memcpy(s->b2a, local, msg_size);
      s->pong.seq.store(i, std::memory_order_release);
    }
    ::_exit(0);
  }
  char msg[msg_size];
  char back[msg_size];
  std::memset(msg, 'z', msg_size);
  uint32_t seq = 0;
  auto one = [&] {
    ++seq;
    std::memcpy(s->a2b, msg, msg_size);
    s->ping.seq.store(seq, std::memory_order_release);
    spin_until(s->pong, seq);
    std::memcpy(back, s->b2a, msg_size);
  };
  for (uint32_t i = 0; i < warm; ++i)
    one();
  std::vector<double> p50s;
  std::vector<double> means;
  std::vector<uint64_t> lat(static_cast<size_t>(n));
  for (int r = 0; r < reps(); ++r) {
    uint64_t t0 = now_ns();
    for (int i = 0; i < n; ++i) {
      uint64_t st = now_ns();
      one();
      lat[size_t(i)] = now_ns() - st;
    }
    uint64_t t1 = now_ns();
    means.push_back(double(t1 - t0) / n / 1000.0);
    p50s.push_back(p50_us(lat));
  }
  reap(pid);
  ::munmap(mem, sizeof(shm_pingpong));
  out.push_back({"os_shm_pingpong_spin_rtt_p50", "us", p50s});
  out.push_back({"os_shm_pingpong_spin_rtt_mean", "us", means});
  return true;
}

} // namespace

std::vector<result_line> measure_os(const std::string& section,
                                    std::vector<std::string>& notes) {
  std::vector<result_line> out;
  if (section == "rtt")
    socketpair_rtt(out, notes);
  else if (section == "bw")
    socketpair_bw(out, notes);
  else if (section == "shm")
    shm_spin_rtt(out, notes);
  else
    notes.push_back("os peers: unknown section '" + section + "'");
  return out;
}

} // namespace bench_peers
