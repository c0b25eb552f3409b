// The `worker` command (network.hpp): joins a published pool from the
// command line of any program that registers worker entries.

#include "multiproc/network.hpp"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include <CLI/CLI.hpp>

#include "multiproc/error.hpp"
#include "multiproc/worker.hpp"

namespace multiproc {

namespace {

/// Exit codes beyond run_remote_worker's own (0, 65).
constexpr int usage_error = 2;
constexpr int refused = 3;
constexpr int unreachable = 4;
constexpr int other_error = 1;

/// Splits "HOST:PORT" (the last colon: HOST may be an IPv6 address in
/// brackets, "[::1]:7000").
caf::error parse_address(const std::string& text, remote_worker_options& o) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    return make_error(errc::invalid_argument,
                      "--connect wants HOST:PORT, not '" + text + "'");
  auto host = text.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  auto port_text = text.substr(colon + 1);
  char* end = nullptr;
  auto port = std::strtoul(port_text.c_str(), &end, 10);
  if (*end != '\0' || port == 0 || port > 65535)
    return make_error(errc::invalid_argument,
                      "--connect: '" + port_text
                        + "' is not a port (1..65535)");
  o.host = host;
  o.port = static_cast<uint16_t>(port);
  return caf::none;
}

caf::error read_secret(const std::string& file, std::string& secret) {
  if (file.empty()) {
    const char* env = std::getenv("MULTIPROC_SECRET");
    if (env == nullptr || *env == '\0')
      return make_error(errc::invalid_argument,
                        "no secret: pass --secret-file PATH or set "
                        "MULTIPROC_SECRET");
    secret = env;
    return caf::none;
  }
  std::ifstream in{file};
  if (!in)
    return make_error(errc::invalid_argument,
                      "--secret-file: cannot read '" + file + "'");
  std::getline(in, secret);
  if (secret.empty())
    return make_error(errc::invalid_argument,
                      "--secret-file: the first line of '" + file
                        + "' is empty");
  return caf::none;
}

} // namespace

int worker_command(int argc, const char* const* argv) {
  CLI::App app{"Join a published pool as a remote worker and serve its "
               "tasks until the pool lets the worker go",
               argc > 0 ? argv[0] : "worker"};
  std::string address;
  std::string secret_file;
  remote_worker_options o;
  int64_t heartbeat_ms = o.heartbeat_interval.count();
  int64_t timeout_ms = o.connection_timeout.count();
  int64_t handshake_ms = o.handshake_timeout.count();
  bool list = false;
  app.add_option("--connect", address, "The pool's HOST:PORT");
  app.add_option("--entry", o.entry,
                 "The worker entry to run (the pool's; see --list)");
  app.add_option("--name", o.name,
                 "The worker's name in the pool's logs (default: "
                 "ENTRY@HOSTNAME)");
  app.add_option("--secret-file", secret_file,
                 "A file whose first line is the cluster's secret (default: "
                 "$MULTIPROC_SECRET)");
  app.add_option("--heartbeat", heartbeat_ms, "Heartbeat interval, ms")
    ->check(CLI::Range(int64_t{1}, int64_t{600000}))
    ->capture_default_str();
  app.add_option("--connection-timeout", timeout_ms,
                 "Silence after which the pool counts as gone, ms")
    ->check(CLI::Range(int64_t{1}, int64_t{3600000}))
    ->capture_default_str();
  app.add_option("--handshake-timeout", handshake_ms,
                 "How long connecting and authenticating may take, ms")
    ->check(CLI::Range(int64_t{1}, int64_t{600000}))
    ->capture_default_str();
  app.add_flag("--list", list, "Print the worker entries this program has");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : usage_error;
  }
  if (list) {
    for (auto& name : worker_names())
      std::printf("%s\n", name.c_str());
    return 0;
  }
  auto usage = [&](const caf::error& err) {
    std::fprintf(stderr, "%s: %s\n", app.get_name().c_str(),
                 describe(err).c_str());
    return usage_error;
  };
  if (address.empty())
    return usage(make_error(errc::invalid_argument,
                            "--connect HOST:PORT is required"));
  if (o.entry.empty())
    return usage(make_error(errc::invalid_argument,
                            "--entry NAME is required (see --list)"));
  if (auto err = parse_address(address, o))
    return usage(err);
  if (auto err = read_secret(secret_file, o.secret))
    return usage(err);
  o.heartbeat_interval = std::chrono::milliseconds{heartbeat_ms};
  o.connection_timeout = std::chrono::milliseconds{timeout_ms};
  o.handshake_timeout = std::chrono::milliseconds{handshake_ms};
  auto code = run_remote_worker(o);
  if (code)
    return *code;
  std::fprintf(stderr, "%s: %s\n", app.get_name().c_str(),
               describe(code.error()).c_str());
  if (code.error() == errc::unknown_entry
      || code.error() == errc::invalid_argument)
    return usage_error;
  if (code.error() == errc::auth_failed)
    return refused;
  if (code.error() == errc::connection_lost)
    return unreachable;
  return other_error;
}

} // namespace multiproc
