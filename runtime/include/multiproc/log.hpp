#pragma once

/// \file
/// The library's one logger (spdlog), shared by the parent and its children.
///
/// `multiproc::logger()` is an ordinary spdlog logger named "multiproc": the
/// library writes its own diagnostics to it and user code may use it too, in
/// the parent and in children alike. In a child started by start_process()
/// each record becomes one marked line on the child's stderr pipe; the
/// parent's output forwarder recognises it (output_line::level) and
/// default_output_sink() logs it again through the parent's logger, tagged
/// "name pid". So one set of sinks, configured in the parent, sees the
/// records of the whole process tree. Everywhere else (the parent, a
/// program that multiproc did not start) records go to stderr as text lines.
///
/// The level comes from the environment variable MULTIPROC_LOG_LEVEL (trace,
/// debug, info, warn, error, critical, off; default info), read when the
/// logger is first used. Children inherit the environment, so one setting
/// covers the tree. Thread-safe: spdlog's `_mt` logger; every function here
/// may be called from any thread. See docs/logging.md (format of the
/// forwarded lines, adding sinks).

#include <memory>

#include <spdlog/spdlog.h>

#include "multiproc/log_level.hpp"
#include "multiproc/output.hpp"

namespace multiproc {

/// The environment variable that sets the level: "MULTIPROC_LOG_LEVEL".
constexpr const char* log_level_env_var = "MULTIPROC_LOG_LEVEL";

/// The logger, created on first use (thread-safe) and never destroyed, so it
/// may be used from static destructors and from threads that outlive main().
/// It is also registered with spdlog (spdlog::get("multiproc")) unless a
/// logger of that name was registered before. Never null.
///
/// On creation it reads MULTIPROC_LOG_LEVEL; an unknown value gives one
/// warning record naming it and the accepted names, and the level info.
/// Parent: one sink, colored stderr (colors only on a terminal), pattern
/// "[%Y-%m-%d %H:%M:%S.%e] [%n] [%l] %v". A child started by start_process()
/// replaces the sinks with one that forwards to the parent (sinks a
/// `fork` child inherited are parked, never flushed or closed, so the
/// parent's file sinks do not write twice); sinks the child adds later are
/// its own.
///
/// Adding a sink (`logger()->sinks().push_back(...)`) is not thread-safe in
/// spdlog: do it before other threads log, e.g. right after bootstrap().
const std::shared_ptr<spdlog::logger>& logger();

/// Sets the logger's level in this process (a child started afterwards with
/// start_method::fork inherits it; spawn and forkserver children read
/// MULTIPROC_LOG_LEVEL). Thread-safe.
void set_log_level(log_level x);

/// The logger's level in this process. Thread-safe.
log_level get_log_level();

/// Logs a child's output line through logger() as if the child had logged
/// it here: the record's logger name is "name pid" (line.process_name,
/// line.pid), its level line.level, or info for a plain stdout/stderr line,
/// and it passes the parent's level filter. This is what default_output_sink()
/// does with records; a custom output_sink may call it too. Thread-safe.
void log_output_line(const output_line& line);

} // namespace multiproc
