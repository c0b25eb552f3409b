#pragma once

// The targets of multiproc's benchmarks (issues 2-5 and 7) and the one table
// `multiproc bench` prints: each target's figure beside its peer's, measured
// in the same run, the ratio and the verdict; then our other figures.
// docs/performance.md explains how to read it. Not thread-safe.

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_report.hpp"
#include "python_peers.hpp"

namespace bench_targets {

/// One target: `ours / peer op bound`, or `ours op bound` without a peer,
/// or a ratio for orientation only (empty `op`).
struct target {
  std::string part; ///< The benchmark part that measures `ours` ("pipe.rtt").
  std::string ours;
  std::string peer; ///< Empty: an absolute bound on `ours`.
  std::string op;   ///< "<=", ">=", "==", or empty: for orientation.
  double bound = 0;
};

/// Every target, in table order.
const std::vector<target>& all_targets();

/// Where a peer metric comes from.
enum class peer_kind {
  os,       ///< Measured by the tool (os_peers.hpp): `section`.
  python,   ///< Measured by the embedded Python script: `section`.
  external, ///< Not measured by the tool: ZeroMQ, CAF (--peer-lines FILE).
};

struct peer_source {
  peer_kind kind = peer_kind::external;
  std::string section; ///< os: rtt, bw, shm; python: start, pool, ...
  std::string who;     ///< For the table: "OS", "Python", "ZeroMQ", "CAF".
};

/// The source of a peer metric, by its name's prefix.
peer_source source_of(const std::string& peer_metric);

/// Expands benchmark names ("pipe", "pool.map1", "all", "queue.tput") into
/// parts ("pipe.rtt", ...); false for an unknown name.
bool expand_parts(const std::string& what, std::vector<std::string>& parts);

/// Every name expand_parts() knows, in the order of the groups: each group,
/// then its parts (and queue.tput), then "all".
std::vector<std::string> benchmark_names();

/// A figure of ours or of a peer, with where it came from ("multiproc",
/// "os", "python", "file").
struct figure {
  bench_peers::peer_line line;
  std::string source;
};

/// Everything a run measured, for the table and the JSON.
struct run_results {
  std::vector<std::string> what;  ///< As given on the command line.
  std::vector<std::string> parts; ///< Expanded.
  std::vector<figure> ours;
  std::vector<figure> peers;
  bool python_needed = false;
  bench_peers::python_run python;
  std::string peer_lines_file; ///< --peer-lines, or empty.
  std::vector<std::string> notes;
};

/// Prints the table on stdout.
void print_table(const run_results& run);

/// The run as one JSON object: "metrics" (ours), "peers", "targets" (each
/// with its values, ratio and verdict), "python", "notes".
nlohmann::json to_json(const run_results& run);

} // namespace bench_targets
