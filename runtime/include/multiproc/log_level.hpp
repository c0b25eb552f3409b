#pragma once

/// \file
/// The severity of a log record: multiproc's own spelling of spdlog's levels,
/// so that headers which only carry a level (output.hpp) need no spdlog.
/// See docs/logging.md.

#include <string_view>

#include <caf/expected.hpp>

namespace multiproc {

/// A record's severity, lowest first. The numbers are spdlog's
/// (spdlog::level::level_enum); `off` disables every record.
enum class log_level : int {
  trace = 0,
  debug = 1,
  info = 2,
  warn = 3,
  error = 4,
  critical = 5,
  off = 6,
};

/// "trace", "debug", "info", "warn", "error", "critical" or "off".
const char* to_string(log_level x) noexcept;

/// Parses one of the names to_string() gives (exact, lower case). Fails with
/// errc::invalid_argument naming `text` and the accepted names.
caf::expected<log_level> parse_log_level(std::string_view text);

} // namespace multiproc
