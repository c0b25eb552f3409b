#pragma once

// `multiproc demo`: a request/response pipeline between this process and a
// few worker processes that hash generated blocks; one worker is made to
// crash mid-request and the pipeline continues with the others. Then a pool
// runs many small tasks with a progress display while one worker is killed,
// and a supervised producer -> queue -> consumers pipeline loses nothing when
// one consumer is killed.

#include <cstddef>
#include <optional>

#include "multiproc/start_method.hpp"

/// Options of `multiproc demo`; one comment per field.
struct demo_options {
  /// Worker processes to start; one of them is crashed on purpose (>= 2).
  size_t workers = 3;
  /// Blocks to hash, spread over the workers.
  size_t tasks = 24;
  /// Tasks for the pool stage (about a millisecond each); 0: skip it.
  size_t pool_tasks = 2000;
  /// Blocks for the supervised pipeline stage; 0: skip it.
  size_t pipeline_blocks = 600;
  /// Increments per process for the shared-state stage; 0: skip it.
  size_t shared_increments = 20000;
  /// How to start the workers; empty: multiproc::default_start_method().
  std::optional<multiproc::start_method> method;
};

/// Runs the demo, printing what happens; returns the process exit code (0
/// when every block was hashed and verified).
int run_demo(const demo_options& opts);
