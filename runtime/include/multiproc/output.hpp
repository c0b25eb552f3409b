#pragma once

/// \file
/// Forwarding of child processes' stdout and stderr to the parent.
///
/// The parent reads every child's stdout and stderr pipes on one runtime
/// thread (started when the first child starts, stopped when no child output
/// is open), splits the bytes into lines and hands each line to the child's
/// sink. See docs/processes.md.

#include <functional>
#include <optional>
#include <string>

#include <sys/types.h>

#include "multiproc/log_level.hpp"

namespace multiproc {

/// One line printed by a child process.
struct output_line {
  /// The child's name (process_options::name, or its entry name).
  std::string process_name;
  /// The child's pid.
  pid_t pid = 0;
  /// True for stderr, false for stdout.
  bool is_stderr = false;
  /// The line without its '\n'. A final line without '\n' is delivered when
  /// the stream closes; a line longer than 64 KiB arrives in 64 KiB pieces.
  /// For a log record (below) the text without the record's marker.
  std::string text;
  /// Set when the line is a record the child wrote to multiproc::logger()
  /// (a stderr line that started with the record marker, docs/logging.md);
  /// nullopt for a plain stdout or stderr line.
  std::optional<log_level> level;
};

/// Receives a child's output lines. Called on the runtime's forwarding
/// thread, one call at a time, in the order the child wrote each stream (no
/// order between stdout and stderr). Must not block for long: it delays every
/// other child's output. Must not call start_process() or destroy a process.
using output_sink = std::function<void(const output_line&)>;

/// The sink used when process_options::sink is empty: a log record (level
/// set) goes through the parent's multiproc::logger() (log_output_line(),
/// log.hpp), so the parent's sinks and level apply to it; a plain line is
/// written as "[name pid] text\n" to the parent's descriptor 2 in one
/// write() call, so lines from different children never interleave inside a
/// line.
output_sink default_output_sink();

} // namespace multiproc
