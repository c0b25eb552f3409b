// `multiproc info`: what this build and this machine offer.

#include "info.hpp"

#include <cstdio>
#include <string>
#include <thread>

#include <sys/resource.h>

#include <caf/config.hpp>
#include <cereal/version.hpp>

#include "multiproc/envelope.hpp"
#include "multiproc/frame_channel.hpp"
#include "multiproc/message_registry.hpp"
#include "multiproc/start_method.hpp"

namespace {

std::string rlimit_text(rlim_t x) {
  return x == RLIM_INFINITY ? std::string{"unlimited"} : std::to_string(x);
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
