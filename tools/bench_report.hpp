#pragma once

// What every `multiproc bench` group shares: repetitions, the reporter that
// prints lines in the ../shared/peers format (or JSON), medians and
// percentiles, and a watchdog that ends a hung benchmark.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace bench_report {

using clock_type = std::chrono::steady_clock;

inline int reps() {
  if (auto* env = std::getenv("BENCH_REPS"))
    return std::max(1, std::atoi(env));
  return 5;
}

inline double micros(clock_type::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

struct result_line {
  std::string metric;
  std::string unit;
  std::vector<double> values;
};

inline std::string fmt_count(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.0f", v);
  return buf;
}

inline std::string fmt(double v) {
  char buf[32];
  if (v < 100)
    std::snprintf(buf, sizeof(buf), "%.3f", v);
  else if (v < 10000)
    std::snprintf(buf, sizeof(buf), "%.1f", v);
  else
    std::snprintf(buf, sizeof(buf), "%.0f", v);
  return buf;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

class reporter {
public:
  /// `json`: print nothing as results come, one JSON object at finish().
  explicit reporter(bool json) : json_(json) {
  }

  /// Prints each line and note as it comes to `stream` (stdout by default;
  /// `multiproc bench` shows them on stderr as progress and prints its table
  /// at the end), unless constructed with `json`.
  void echo_to(std::FILE* stream) {
    echo_ = stream;
  }

  /// `integer`: a count, printed without decimals.
  void add(std::string metric, std::string unit, std::vector<double> values,
           bool integer = false) {
    if (values.empty())
      return;
    if (!json_) {
      auto f = integer ? fmt_count : fmt;
      auto [lo, hi] = std::minmax_element(values.begin(), values.end());
      std::fprintf(echo_, "%s %s %s min=%s max=%s n=%zu\n", metric.c_str(),
                   f(median(values)).c_str(), unit.c_str(), f(*lo).c_str(),
                   f(*hi).c_str(), values.size());
      std::fflush(echo_);
    }
    lines_.push_back({std::move(metric), std::move(unit), std::move(values)});
  }

  void note(const std::string& text) {
    if (!json_) {
      std::fprintf(echo_, "# %s\n", text.c_str());
      std::fflush(echo_);
    }
    notes_.push_back(text);
  }

  /// The lines added so far, in order.
  const std::vector<result_line>& lines() const {
    return lines_;
  }

  /// The notes added so far, in order.
  const std::vector<std::string>& notes() const {
    return notes_;
  }

  void finish() {
    if (!json_)
      return;
    nlohmann::json out;
    for (auto& l : lines_) {
      auto [lo, hi] = std::minmax_element(l.values.begin(), l.values.end());
      out["metrics"][l.metric] = {{"median", median(l.values)},
                                  {"min", *lo},
                                  {"max", *hi},
                                  {"n", l.values.size()},
                                  {"unit", l.unit}};
    }
    out["notes"] = notes_;
    std::printf("%s\n", out.dump(2).c_str());
  }

private:
  bool json_;
  std::FILE* echo_ = stdout;
  std::vector<result_line> lines_;
  std::vector<std::string> notes_;
};

inline double p50(std::vector<double>& samples) {
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

/// One p50 per repetition of `n` calls `one(i, &us)` (each measures itself
/// into `us`), after n / 10 warm-up calls `one(i, nullptr)`; empty as soon
/// as a call returns false (it has said why).
template <class F>
std::vector<double> p50_per_rep(int n, F one) {
  std::vector<double> result;
  std::vector<double> samples(static_cast<size_t>(n));
  for (int i = 0; i < n / 10; ++i)
    if (!one(i, nullptr))
      return {};
  for (int r = 0; r < reps(); ++r) {
    for (int i = 0; i < n; ++i)
      if (!one(i, &samples[static_cast<size_t>(i)]))
        return {};
    result.push_back(p50(samples));
  }
  return result;
}

/// Ends the process (exit code 3) if it is still alive after `limit`.
class watchdog {
public:
  watchdog(std::string what, std::chrono::seconds limit)
    : what_(std::move(what)), thread_([this, limit] {
        std::unique_lock<std::mutex> guard{mu_};
        if (cv_.wait_for(guard, limit, [this] { return done_; }))
          return;
        std::printf("# %s: no result within %lld s; giving up\n", what_.c_str(),
                    static_cast<long long>(limit.count()));
        std::fflush(stdout);
        std::fprintf(stderr, "multiproc bench: %s hung (more than %lld s)\n",
                     what_.c_str(), static_cast<long long>(limit.count()));
        std::_Exit(3);
      }) {
  }

  ~watchdog() {
    {
      std::lock_guard<std::mutex> guard{mu_};
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

private:
  std::string what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_; // last: starts after the members it uses
};

} // namespace bench_report
