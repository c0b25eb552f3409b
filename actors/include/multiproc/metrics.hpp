#pragma once

/// \file
/// Metrics: counters, gauges and latency histograms of pools, queues and
/// supervisors, readable through the API and exported as JSON or in the
/// Prometheus text format (to a file or stdout; no HTTP server).
///
///     multiproc::metrics_registry reg;
///     reg.add("miner", pool);          // pool.hpp: add_metrics(pool)
///     reg.add("work", queue);          // a queue<T> or shm_queue
///     reg.add("pipeline", supervisor); // supervisor.hpp
///     auto snap = reg.collect();       // a metrics_snapshot
///     snap.to_prometheus();            // "# TYPE multiproc_pool_... counter"
///     write_metrics(snap, metrics_format::prometheus, "/var/lib/x/m.prom");
///
/// A snapshot is a plain value: families of samples, each with labels. Every
/// source adds its samples through an add_metrics(snapshot, name, source)
/// overload found by argument-dependent lookup, so a user type gets into a
/// registry by declaring one in its own namespace. The metric names and what
/// each one counts are listed in docs/metrics.md.
///
/// Thread safety: latency_histogram and metrics_snapshot are values (one
/// thread at a time, or copies); metrics_registry may be used from any thread.

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <caf/error.hpp>

#include "multiproc/queue.hpp"
#include "multiproc/shm_queue.hpp"

namespace multiproc {

// -- latency_histogram ----------------------------------------------------------

/// A histogram of durations over fixed buckets from 10 us to 10 s (1, 2.5, 5
/// steps per decade, and one above 10 s), the way Prometheus histograms
/// count: each bucket holds the values at or below its bound and above the
/// previous one. Recording is a few compares, no allocation.
class latency_histogram {
public:
  /// The buckets' upper bounds in seconds; the last bucket is unbounded.
  static constexpr size_t bounded_buckets = 19;
  /// The bounds, ascending: bucket i holds the values in (bounds[i-1],
  /// bounds[i]].
  static constexpr std::array<double, bounded_buckets> bounds{
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
    2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0};

  /// Counts `n` values of `d` each (a negative duration counts as 0).
  void record(std::chrono::nanoseconds d, uint64_t n = 1) noexcept;

  /// Adds another histogram's counts to this one.
  void merge(const latency_histogram& other) noexcept;

  /// Values recorded.
  uint64_t count() const noexcept {
    return count_;
  }
  /// Their sum, in seconds.
  double sum_seconds() const noexcept {
    return sum_;
  }
  /// Values in bucket `i` alone (i == bounded_buckets: above the last bound).
  uint64_t bucket(size_t i) const noexcept {
    return counts_[i];
  }
  /// The q-quantile (0 <= q <= 1) in seconds, estimated by linear
  /// interpolation inside its bucket as Prometheus' histogram_quantile()
  /// does; values above 10 s report 10 s. 0 when nothing was recorded.
  double quantile(double q) const noexcept;

private:
  std::array<uint64_t, bounded_buckets + 1> counts_{};
  uint64_t count_ = 0;
  double sum_ = 0;
};

// -- metrics_snapshot -------------------------------------------------------------

/// What a metric's value means (Prometheus' TYPE).
enum class metric_type {
  counter,   ///< only grows over the source's life
  gauge,     ///< a current value: may go up and down
  histogram, ///< a latency_histogram
};

/// Labels of one sample, e.g. {{"pool", "miner"}, {"cause", "signal"}}.
using metric_labels = std::map<std::string, std::string>;

/// One value of a family, told apart from the family's others by its labels.
struct metric_sample {
  /// What tells this sample apart: label name to value.
  metric_labels labels;
  /// The value (counter, gauge).
  double value = 0;
  /// The histogram (histogram families).
  std::optional<latency_histogram> histogram;
};

/// A metric: its name (Prometheus syntax: [a-zA-Z_:][a-zA-Z0-9_:]*), a
/// one-line help text, its type and its samples.
struct metric_family {
  std::string name;                        ///< e.g. multiproc_pool_tasks_done_total
  std::string help;                        ///< One line, for # HELP.
  metric_type type = metric_type::counter; ///< counter, gauge or histogram.
  std::vector<metric_sample> samples;      ///< In the order added.
};

/// The two export formats.
enum class metrics_format {
  json,       ///< one JSON object: {"metrics": [family...]} (docs/metrics.md)
  prometheus, ///< the Prometheus text exposition format 0.0.4
};

/// Metrics collected at one moment: families in the order first added.
class metrics_snapshot {
public:
  /// Adds a sample to family `name` (created with `help` and `type` on first
  /// use; a later call with another type is a programming error and its
  /// sample is dropped).
  void counter(std::string_view name, std::string_view help,
               metric_labels labels, double value);
  /// counter() for a gauge: a value that goes up and down.
  void gauge(std::string_view name, std::string_view help,
             metric_labels labels, double value);
  /// counter() for a histogram sample: a copy of `h`.
  void histogram(std::string_view name, std::string_view help,
                 metric_labels labels, const latency_histogram& h);

  /// Every family, in the order first added.
  const std::vector<metric_family>& families() const noexcept {
    return families_;
  }

  /// The family called `name`, or nullptr.
  const metric_family* find(std::string_view name) const noexcept;

  /// The value of the sample of `name` whose labels include all of
  /// `labels`, or nullopt (histogram families: their count).
  std::optional<double> value(std::string_view name,
                              const metric_labels& labels = {}) const;

  /// JSON: {"metrics": [{"name", "help", "type", "samples": [{"labels",
  /// "value"} or {"labels", "count", "sum", "p50", "p90", "p99", "buckets":
  /// [{"le", "count"}]}]}]}, bucket counts cumulative as in Prometheus.
  std::string to_json() const;

  /// The Prometheus text format: # HELP and # TYPE lines, then the samples;
  /// histograms as _bucket{le=...} (cumulative, ending with le="+Inf"),
  /// _sum and _count. Label values are escaped (\\, \", \n).
  std::string to_prometheus() const;

  /// One of the two, by `format`.
  std::string to_string(metrics_format format) const;

private:
  metric_sample* add(std::string_view name, std::string_view help,
                     metric_type type, metric_labels labels);

  std::vector<metric_family> families_;
};

/// Writes `snapshot` in `format` to `path`; "-" is stdout. A file is written
/// whole under a temporary name next to it and renamed over `path`, so a
/// reader (e.g. node_exporter's textfile collector) never sees half of it.
/// Errors: system_error naming the path and strerror.
[[nodiscard]] caf::error write_metrics(const metrics_snapshot& snapshot,
                                       metrics_format format,
                                       const std::string& path);

// -- sources -----------------------------------------------------------------------

/// A queue's gauges and counters under the label queue=`name`: depth (as
/// shm_queue::size(): slots waiting, each one message, or a batch of them
/// when batching is on), capacity, unfinished (joinable queues), closed,
/// consumed_total, redelivered_total. The handle must be valid.
void add_metrics(metrics_snapshot& out, const std::string& name,
                 const shm_queue& q);

/// A queue<T>'s metrics: those of its shm_queue (above).
template <class T>
void add_metrics(metrics_snapshot& out, const std::string& name,
                 const queue<T>& q) {
  add_metrics(out, name, q.raw());
}

// -- metrics_registry ---------------------------------------------------------------

/// A set of named sources whose metrics collect() gathers into one snapshot.
/// Thread-safe. A source added by reference must stay alive, and in place
/// (not moved from), until it is removed or the registry is destroyed.
class metrics_registry {
public:
  /// Identifies an added source (for remove()).
  using id_type = uint64_t;

  /// Adds a function that adds samples to a snapshot. It runs inside
  /// collect(), on the caller's thread, one collector at a time; it must not
  /// call this registry.
  id_type add_collector(std::function<void(metrics_snapshot&)> fn);

  /// Adds `source` under `name`: collect() calls add_metrics(snapshot, name,
  /// source), which must exist for Source (pool, queue<T>, shm_queue,
  /// supervisor, or a user type with its own overload).
  template <class Source>
  id_type add(std::string name, const Source& source) {
    return add_collector(
      [name = std::move(name), src = &source](metrics_snapshot& out) {
        add_metrics(out, name, *src);
      });
  }

  /// Removes a source; an unknown id is ignored.
  void remove(id_type id);

  /// Every source's metrics now.
  metrics_snapshot collect() const;

private:
  mutable std::mutex mtx_;
  id_type next_ = 1;
  std::vector<std::pair<id_type, std::function<void(metrics_snapshot&)>>>
    collectors_;
};

} // namespace multiproc
