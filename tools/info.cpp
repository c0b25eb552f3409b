// `multiproc info`: what this build and this machine offer.

#include "info.hpp"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include <sys/resource.h>

#include <caf/config.hpp>
#include <cereal/version.hpp>

#include "multiproc/envelope.hpp"
#include "multiproc/frame_channel.hpp"
#include "multiproc/message_registry.hpp"
#include "multiproc/shm_array.hpp"
#include "multiproc/shm_queue.hpp"
#include "multiproc/start_method.hpp"

namespace {

std::string rlimit_text(rlim_t x) {
  return x == RLIM_INFINITY ? std::string{"unlimited"} : std::to_string(x);
}

/// MemAvailable from /proc/meminfo in MiB, or -1.
long long mem_available_mib() {
  std::ifstream in{"/proc/meminfo"};
  std::string key;
  long long kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:")
      return kib / 1024;
  return -1;
}

/// This process's cgroup v2 memory limit ("max" or bytes), or empty.
std::string cgroup_memory_max() {
  std::ifstream cg{"/proc/self/cgroup"};
  std::string line, path;
  while (std::getline(cg, line))
    if (line.rfind("0::", 0) == 0)
      path = line.substr(3);
  if (path.empty())
    return {};
  std::ifstream in{"/sys/fs/cgroup" + path + "/memory.max"};
  std::string value;
  in >> value;
  return value;
}

} // namespace

int run_info() {
  std::printf("multiproc %s (wire protocol version %d)\n", MULTIPROC_VERSION,
              static_cast<int>(multiproc::wire::protocol_version));

  std::printf("start methods:");
  auto methods = multiproc::available_start_methods();
  for (size_t i = 0; i < methods.size(); ++i)
    std::printf("%s %s", i == 0 ? "" : ",", multiproc::to_string(methods[i]));
  std::printf(" (default: %s)\n",
              multiproc::to_string(multiproc::default_start_method()));
  std::printf("  fork is refused once the parent runs more than one thread\n");

  std::printf("limits:\n");
  std::printf("  default max frame size: %zu bytes (%zu MiB)\n",
              multiproc::default_max_frame_size,
              multiproc::default_max_frame_size >> 20);
  std::printf("  cores: %u\n", std::thread::hardware_concurrency());
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0)
    std::printf("  open files (RLIMIT_NOFILE): soft %s, hard %s\n",
                rlimit_text(nofile.rlim_cur).c_str(),
                rlimit_text(nofile.rlim_max).c_str());

  // Queues and arrays live in memfds: RAM (and the memory cgroup) is their
  // only bound; nothing is created in /dev/shm.
  std::printf("shared memory (memfd, sealed; nothing in /dev/shm):\n");
  std::printf("  queue: up to %u slots, messages up to %u MiB\n",
              multiproc::max_queue_capacity,
              multiproc::max_queue_message_size >> 20);
  std::printf("  shm_array: up to %llu GiB\n",
              static_cast<unsigned long long>(multiproc::max_shm_array_bytes
                                              >> 30));
  auto avail = mem_available_mib();
  if (avail >= 0)
    std::printf("  memory available: %lld MiB\n", avail);
  auto cg = cgroup_memory_max();
  if (cg == "max")
    std::printf("  cgroup memory.max: unlimited\n");
  else if (!cg.empty())
    std::printf("  cgroup memory.max: %lld MiB\n",
                std::strtoll(cg.c_str(), nullptr, 10) >> 20);

  std::printf("libraries:\n");
  std::printf("  CAF %d.%d.%d\n", CAF_MAJOR_VERSION, CAF_MINOR_VERSION,
              CAF_PATCH_VERSION);
  std::printf("  Cereal %d.%d.%d\n", CEREAL_VERSION_MAJOR,
              CEREAL_VERSION_MINOR, CEREAL_VERSION_PATCH);

  auto& registry = multiproc::message_registry::instance();
  std::printf("message types: %zu registered (fingerprint %016llx)\n",
              registry.names().size(),
              static_cast<unsigned long long>(registry.fingerprint()));
  return 0;
}
