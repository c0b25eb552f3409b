#pragma once

// Internals of the logger shared by log.cpp, child.cpp and
// output_forwarder.cpp. Not installed. The marker's format is in
// docs/logging.md.

#include <optional>
#include <string>

#include "multiproc/log_level.hpp"

namespace multiproc::detail {

/// First byte of a log record on a child's stderr (ASCII RS); the second is
/// the level's digit, '0' (trace) to '5' (critical).
constexpr char log_marker = '\x1e';

/// Makes this process, a child whose stderr is the parent's pipe, forward
/// every record of logger() to the parent as marked stderr lines. Called
/// before the entry runs, while the child has one thread. Idempotent.
void log_to_parent();

/// If `text` starts with a record marker, removes it and returns the
/// record's level; otherwise leaves `text` alone and returns nullopt.
std::optional<log_level> strip_log_marker(std::string& text) noexcept;

} // namespace multiproc::detail
