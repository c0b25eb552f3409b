// Metrics: the histogram, snapshots and their two export formats, the queue
// source and the registry. The pool's and supervisor's sources live next to
// them (pool.cpp, supervisor.cpp).

#include "multiproc/metrics.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "multiproc/error.hpp"
#include "multiproc/fd.hpp"

namespace multiproc {

// -- latency_histogram ----------------------------------------------------------

void latency_histogram::record(std::chrono::nanoseconds d, uint64_t n) noexcept {
  if (n == 0)
    return;
  double s = d.count() > 0 ? static_cast<double>(d.count()) * 1e-9 : 0.0;
  auto i = static_cast<size_t>(
    std::lower_bound(bounds.begin(), bounds.end(), s) - bounds.begin());
  counts_[i] += n;
  count_ += n;
  sum_ += s * static_cast<double>(n);
}

void latency_histogram::merge(const latency_histogram& other) noexcept {
  for (size_t i = 0; i < counts_.size(); ++i)
    counts_[i] += other.counts_[i];
  count_ += other.count_;
  sum_ += other.sum_;
}

double latency_histogram::quantile(double q) const noexcept {
  if (count_ == 0)
    return 0;
  q = std::clamp(q, 0.0, 1.0);
  auto rank = q * static_cast<double>(count_);
  uint64_t below = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    if (counts_[i] == 0 || static_cast<double>(below + counts_[i]) < rank) {
      below += counts_[i];
      continue;
    }
    if (i == bounded_buckets)
      return bounds.back();
    double lo = i == 0 ? 0.0 : bounds[i - 1];
    double hi = bounds[i];
    auto within = (rank - static_cast<double>(below))
                  / static_cast<double>(counts_[i]);
    return lo + (hi - lo) * std::clamp(within, 0.0, 1.0);
  }
  return bounds.back();
}

// -- metrics_snapshot -------------------------------------------------------------

namespace {

const char* type_name(metric_type t) {
  switch (t) {
    case metric_type::counter:
      return "counter";
    case metric_type::gauge:
      return "gauge";
    case metric_type::histogram:
      return "histogram";
  }
  return "untyped";
}

/// A number as Prometheus reads it: integers without a fraction.
std::string number(double x) {
  if (std::isnan(x))
    return "NaN";
  if (std::isinf(x))
    return x > 0 ? "+Inf" : "-Inf";
  char buf[64];
  if (std::floor(x) == x && std::fabs(x) < 9e15)
    std::snprintf(buf, sizeof buf, "%.0f", x);
  else
    std::snprintf(buf, sizeof buf, "%.9g", x);
  return buf;
}

/// Escapes \ and newlines, and in a label value also " (HELP text keeps
/// its quotes).
std::string escape(std::string_view v, bool quotes) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else if (c == '"' && quotes)
      out += "\\\"";
    else
      out += c;
  }
  return out;
}

/// {a="x",b="y"} with `extra` (e.g. le) last; empty labels give "".
std::string label_text(const metric_labels& labels,
                       const std::pair<std::string, std::string>* extra
                       = nullptr) {
  if (labels.empty() && extra == nullptr)
    return {};
  std::string out = "{";
  bool first = true;
  auto put = [&](const std::string& k, const std::string& v) {
    if (!first)
      out += ',';
    first = false;
    out += k;
    out += "=\"";
    out += escape(v, true);
    out += '"';
  };
  for (auto& [k, v] : labels)
    put(k, v);
  if (extra != nullptr)
    put(extra->first, extra->second);
  out += '}';
  return out;
}

} // namespace

metric_sample* metrics_snapshot::add(std::string_view name,
                                     std::string_view help, metric_type type,
                                     metric_labels labels) {
  auto i = std::find_if(families_.begin(), families_.end(),
                        [&](const metric_family& f) { return f.name == name; });
  if (i == families_.end()) {
    families_.push_back({std::string{name}, std::string{help}, type, {}});
    i = families_.end() - 1;
  } else if (i->type != type) {
    return nullptr;
  }
  i->samples.push_back({std::move(labels), 0, std::nullopt});
  return &i->samples.back();
}

void metrics_snapshot::counter(std::string_view name, std::string_view help,
                               metric_labels labels, double value) {
  if (auto* s = add(name, help, metric_type::counter, std::move(labels)))
    s->value = value;
}

void metrics_snapshot::gauge(std::string_view name, std::string_view help,
                             metric_labels labels, double value) {
  if (auto* s = add(name, help, metric_type::gauge, std::move(labels)))
    s->value = value;
}

void metrics_snapshot::histogram(std::string_view name, std::string_view help,
                                 metric_labels labels,
                                 const latency_histogram& h) {
  if (auto* s = add(name, help, metric_type::histogram, std::move(labels))) {
    s->histogram = h;
    s->value = static_cast<double>(h.count());
  }
}

const metric_family*
metrics_snapshot::find(std::string_view name) const noexcept {
  for (auto& f : families_)
    if (f.name == name)
      return &f;
  return nullptr;
}

std::optional<double>
metrics_snapshot::value(std::string_view name,
                        const metric_labels& labels) const {
  auto* f = find(name);
  if (f == nullptr)
    return std::nullopt;
  for (auto& s : f->samples) {
    bool match = std::all_of(labels.begin(), labels.end(), [&](auto& kv) {
      auto j = s.labels.find(kv.first);
      return j != s.labels.end() && j->second == kv.second;
    });
    if (match)
      return s.value;
  }
  return std::nullopt;
}

std::string metrics_snapshot::to_json() const {
  auto families = nlohmann::json::array();
  for (auto& f : families_) {
    auto samples = nlohmann::json::array();
    for (auto& s : f.samples) {
      nlohmann::json j;
      j["labels"] = s.labels;
      if (s.histogram) {
        auto& h = *s.histogram;
        j["count"] = h.count();
        j["sum"] = h.sum_seconds();
        j["p50"] = h.quantile(0.5);
        j["p90"] = h.quantile(0.9);
        j["p99"] = h.quantile(0.99);
        auto buckets = nlohmann::json::array();
        uint64_t cumulative = 0;
        for (size_t i = 0; i <= latency_histogram::bounded_buckets; ++i) {
          cumulative += h.bucket(i);
          nlohmann::json b;
          if (i < latency_histogram::bounded_buckets)
            b["le"] = latency_histogram::bounds[i];
          else
            b["le"] = "+Inf";
          b["count"] = cumulative;
          buckets.push_back(std::move(b));
        }
        j["buckets"] = std::move(buckets);
      } else {
        j["value"] = s.value;
      }
      samples.push_back(std::move(j));
    }
    families.push_back({{"name", f.name},
                        {"help", f.help},
                        {"type", type_name(f.type)},
                        {"samples", std::move(samples)}});
  }
  nlohmann::json out;
  out["metrics"] = std::move(families);
  return out.dump(2) + "\n";
}

std::string metrics_snapshot::to_prometheus() const {
  std::string out;
  for (auto& f : families_) {
    out += "# HELP " + f.name + " " + escape(f.help, false) + "\n";
    out += "# TYPE " + f.name + " " + type_name(f.type) + "\n";
    for (auto& s : f.samples) {
      if (!s.histogram) {
        out += f.name + label_text(s.labels) + " " + number(s.value) + "\n";
        continue;
      }
      auto& h = *s.histogram;
      uint64_t cumulative = 0;
      for (size_t i = 0; i <= latency_histogram::bounded_buckets; ++i) {
        cumulative += h.bucket(i);
        std::pair<std::string, std::string> le{
          "le", i < latency_histogram::bounded_buckets
                  ? number(latency_histogram::bounds[i])
                  : std::string{"+Inf"}};
        out += f.name + "_bucket" + label_text(s.labels, &le) + " "
               + number(static_cast<double>(cumulative)) + "\n";
      }
      out += f.name + "_sum" + label_text(s.labels) + " "
             + number(h.sum_seconds()) + "\n";
      out += f.name + "_count" + label_text(s.labels) + " "
             + number(static_cast<double>(h.count())) + "\n";
    }
  }
  return out;
}

std::string metrics_snapshot::to_string(metrics_format format) const {
  return format == metrics_format::json ? to_json() : to_prometheus();
}

namespace {

caf::error write_text(int fd, const std::string& text, const std::string& what) {
  if (write_all(fd, text))
    return caf::none;
  return make_error(errc::system_error, "cannot write the metrics to " + what
                                          + ": " + std::strerror(errno));
}

} // namespace

caf::error write_metrics(const metrics_snapshot& snapshot,
                         metrics_format format, const std::string& path) {
  auto text = snapshot.to_string(format);
  if (path == "-") {
    std::fflush(stdout);
    return write_text(STDOUT_FILENO, text, "stdout");
  }
  if (path.empty())
    return make_error(errc::invalid_argument,
                      "write_metrics: empty path (use \"-\" for stdout)");
  auto tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return make_error(errc::system_error, "cannot create '" + tmp
                                            + "' for the metrics: "
                                            + std::strerror(errno));
  auto err = write_text(fd, text, "'" + tmp + "'");
  if (::close(fd) != 0 && !err)
    err = make_error(errc::system_error, "cannot close '" + tmp
                                           + "': " + std::strerror(errno));
  if (!err && ::rename(tmp.c_str(), path.c_str()) != 0)
    err = make_error(errc::system_error, "cannot rename '" + tmp + "' to '"
                                           + path + "': "
                                           + std::strerror(errno));
  if (err)
    ::unlink(tmp.c_str());
  return err;
}

// -- sources -----------------------------------------------------------------------

void add_metrics(metrics_snapshot& out, const std::string& name,
                 const shm_queue& q) {
  metric_labels l{{"queue", name}};
  out.gauge("multiproc_queue_depth",
            "Slots waiting to be taken (not counting leased ones): messages, "
            "or batches of them with batching on.",
            l,
            static_cast<double>(q.size()));
  out.gauge("multiproc_queue_capacity", "Slots of the queue's ring.", l,
            q.capacity());
  out.gauge("multiproc_queue_unfinished",
            "Joinable queues: messages put and not yet done.", l,
            static_cast<double>(q.unfinished()));
  out.gauge("multiproc_queue_closed", "1 once the queue was closed.", l,
            q.closed() ? 1 : 0);
  out.counter("multiproc_queue_consumed_total",
              "Messages acknowledged by every handle.", l,
              static_cast<double>(q.consumed()));
  out.counter("multiproc_queue_redelivered_total",
              "Messages delivered again after their consumer died.", l,
              static_cast<double>(q.redelivered()));
}

// -- metrics_registry ---------------------------------------------------------------

metrics_registry::id_type
metrics_registry::add_collector(std::function<void(metrics_snapshot&)> fn) {
  std::lock_guard<std::mutex> guard{mtx_};
  auto id = next_++;
  collectors_.emplace_back(id, std::move(fn));
  return id;
}

void metrics_registry::remove(id_type id) {
  std::lock_guard<std::mutex> guard{mtx_};
  collectors_.erase(std::remove_if(collectors_.begin(), collectors_.end(),
                                   [id](auto& c) { return c.first == id; }),
                    collectors_.end());
}

metrics_snapshot metrics_registry::collect() const {
  std::lock_guard<std::mutex> guard{mtx_};
  metrics_snapshot out;
  for (auto& [id, fn] : collectors_)
    fn(out);
  return out;
}

} // namespace multiproc
