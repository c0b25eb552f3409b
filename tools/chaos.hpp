#pragma once

// `multiproc chaos`: a process pool and a supervised queue pipeline run in
// rounds while a monkey SIGKILLs and SIGSTOPs their workers; every round
// checks that no task or item was lost or duplicated and that no zombie,
// child process, descriptor or shared memory was left behind, and the run
// checks that the parent's memory stayed flat. docs/reliability.md ("Chaos
// run") describes the checks, their bounds and the semantics behind them.

#include <cstddef>
#include <cstdint>
#include <optional>

#include "multiproc/start_method.hpp"

/// Options of `multiproc chaos`; one comment per field.
struct chaos_options {
  /// Rounds start until this many seconds have passed (at least one round).
  double seconds = 10;
  /// Pool workers per round; the pipeline has max(2, workers / 2) consumers.
  size_t workers = 4;
  /// Seed of the monkeys' choices; empty: a random one (printed, so that a
  /// failing run's choices can be repeated; the timing still varies).
  std::optional<uint64_t> seed;
  /// How to start every child; empty: multiproc::default_start_method().
  /// start_method::fork is refused: the run has threads before it forks.
  std::optional<multiproc::start_method> method;
  /// Tasks of the pool's map in each round.
  size_t pool_tasks = 20000;
  /// Items the pipeline's producer streams in each round.
  size_t queue_items = 10000;
  /// Print one JSON object with the figures instead of lines.
  bool json = false;
};

/// Runs the chaos rounds; returns the process exit code: 0 when every check
/// held, 1 when one failed (a line names each), 2 when the run could not
/// start (a bad option, a pool or supervisor that would not start). A round
/// that hangs ends the process with exit code 3.
int run_chaos(const chaos_options& opts);
