#pragma once

// `multiproc demo`: a request/response pipeline between this process and a
// few worker processes that hash generated blocks; one worker is made to
// crash mid-request and the pipeline continues with the others. Then the
// main job: a pool runs many small tasks with a progress display while a few
// tasks crash or hang their worker and one worker is killed; a supervised
// producer -> queue -> consumers pipeline loses nothing when one consumer is
// killed; processes share a counter. A summary (and --json) ends it.

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>

#include "multiproc/start_method.hpp"

/// Options of `multiproc demo`; one comment per field.
struct demo_options {
  /// Worker processes to start; one of them is crashed on purpose (>= 2).
  size_t workers = 3;
  /// Requests (blocks to hash) sent to the workers one by one.
  size_t tasks = 24;
  /// Tasks of the pool stage, the main job (about a millisecond each); 0:
  /// skip it.
  size_t size = 2000;
  /// Pool tasks that crash their worker (SIGSEGV) on every attempt: the
  /// pool quarantines them.
  size_t crashes = 2;
  /// Pool tasks that hang their worker: the pool stops it at the deadline.
  size_t hangs = 2;
  /// The pool's task deadline (pool_options::task_timeout).
  std::chrono::milliseconds task_timeout{1000};
  /// Blocks for the supervised pipeline stage; 0: skip it.
  size_t pipeline_blocks = 600;
  /// Increments per process for the shared-state stage; 0: skip it.
  size_t shared_increments = 20000;
  /// How to start the workers; empty: multiproc::default_start_method().
  std::optional<multiproc::start_method> method;
  /// Print one JSON object on stdout at the end (the narration goes to
  /// stderr).
  bool json = false;
  /// Write the stages' metrics here at the end ("-": stdout); a name ending
  /// in .json gets JSON, any other the Prometheus text format. Empty: none.
  std::string metrics_path;
};

/// Runs the demo, printing what happens; returns the process exit code (0
/// when every block was hashed and verified).
int run_demo(const demo_options& opts);
