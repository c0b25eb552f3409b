// Tests of metrics.hpp: the histogram's buckets and quantiles, the JSON and
// Prometheus exports, writing them to a file, and the queue source. The
// pool's and supervisor's sources are tested beside them (PoolMetrics in
// pool_test.cpp, SupervisorTest.CountsRestartsByCause... in
// supervisor_test.cpp).

#include "multiproc/metrics.hpp"

#include <chrono>
#include <string>

#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_util.hpp"

using namespace multiproc;
using namespace std::chrono_literals;

namespace {

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

using multiproc::test::read_file;

} // namespace

TEST(LatencyHistogram, PutsEachValueInTheFirstBucketAtOrAboveIt) {
  latency_histogram h;
  h.record(5us);      // <= 10 us: bucket 0
  h.record(10us);     // exactly on a bound: that bucket
  h.record(11us, 3);  // <= 25 us: bucket 1, three times
  h.record(20s);      // above 10 s: the unbounded bucket
  h.record(-1ms);     // counts as 0
  EXPECT_EQ(h.count(), 7u);
  EXPECT_EQ(h.bucket(0), 3u);
  EXPECT_EQ(h.bucket(1), 3u);
  EXPECT_EQ(h.bucket(latency_histogram::bounded_buckets), 1u);
  EXPECT_NEAR(h.sum_seconds(), 20.0 + 5e-6 + 10e-6 + 33e-6, 1e-9);
}

TEST(LatencyHistogram, EstimatesQuantilesInsideTheirBucket) {
  latency_histogram h;
  EXPECT_EQ(h.quantile(0.5), 0.0); // nothing recorded
  for (int i = 0; i < 100; ++i)
    h.record(700us); // all in (500 us, 1 ms]
  auto p50 = h.quantile(0.5);
  EXPECT_GT(p50, 500e-6);
  EXPECT_LE(p50, 1e-3);
  EXPECT_NEAR(h.quantile(1.0), 1e-3, 1e-12);
  h.record(60s);
  EXPECT_EQ(h.quantile(1.0), 10.0); // above the last bound: the last bound
  latency_histogram other;
  other.record(2ms, 10);
  h.merge(other);
  EXPECT_EQ(h.count(), 111u);
  EXPECT_EQ(h.bucket(7), 10u); // (1 ms, 2.5 ms]
}

TEST(MetricsSnapshot, WritesThePrometheusTextFormat) {
  metrics_snapshot snap;
  snap.counter("jobs_total", "Jobs done.", {{"pool", "a\"b\\c\nd"}}, 42);
  snap.counter("jobs_total", "Jobs done.", {{"pool", "x"}}, 1);
  snap.gauge("depth", "Queue depth.", {}, 2.5);
  latency_histogram h;
  h.record(3us);
  h.record(2ms);
  snap.histogram("lat_seconds", "Latency.", {{"pool", "x"}}, h);
  auto text = snap.to_prometheus();
  EXPECT_TRUE(contains(text, "# HELP jobs_total Jobs done.\n"
                             "# TYPE jobs_total counter\n"
                             "jobs_total{pool=\"a\\\"b\\\\c\\nd\"} 42\n"
                             "jobs_total{pool=\"x\"} 1\n"))
    << text;
  EXPECT_TRUE(contains(text, "# TYPE depth gauge\ndepth 2.5\n")) << text;
  EXPECT_TRUE(contains(text, "# TYPE lat_seconds histogram\n")) << text;
  // Cumulative buckets, le last among the labels, then sum and count.
  EXPECT_TRUE(contains(text, "lat_seconds_bucket{pool=\"x\",le=\"1e-05\"} 1\n"))
    << text;
  EXPECT_TRUE(contains(text, "lat_seconds_bucket{pool=\"x\",le=\"0.001\"} 1\n"))
    << text;
  EXPECT_TRUE(contains(text, "lat_seconds_bucket{pool=\"x\",le=\"0.0025\"} 2\n"))
    << text;
  EXPECT_TRUE(contains(text, "lat_seconds_bucket{pool=\"x\",le=\"+Inf\"} 2\n"))
    << text;
  EXPECT_TRUE(contains(text, "lat_seconds_sum{pool=\"x\"} 0.002003\n")) << text;
  EXPECT_TRUE(contains(text, "lat_seconds_count{pool=\"x\"} 2\n")) << text;
}

TEST(MetricsSnapshot, WritesJsonThatParsesBackToTheSameValues) {
  metrics_snapshot snap;
  snap.counter("jobs_total", "Jobs done.", {{"pool", "p"}}, 7);
  latency_histogram h;
  h.record(1ms, 4);
  snap.histogram("lat_seconds", "Latency.", {{"pool", "p"}}, h);
  auto j = nlohmann::json::parse(snap.to_json());
  ASSERT_EQ(j["metrics"].size(), 2u);
  auto& jobs = j["metrics"][0];
  EXPECT_EQ(jobs["name"], "jobs_total");
  EXPECT_EQ(jobs["type"], "counter");
  EXPECT_EQ(jobs["samples"][0]["labels"]["pool"], "p");
  EXPECT_EQ(jobs["samples"][0]["value"], 7.0);
  auto& lat = j["metrics"][1]["samples"][0];
  EXPECT_EQ(lat["count"], 4);
  EXPECT_NEAR(lat["sum"].get<double>(), 4e-3, 1e-12);
  auto& buckets = lat["buckets"];
  ASSERT_EQ(buckets.size(), latency_histogram::bounded_buckets + 1);
  EXPECT_EQ(buckets.back()["le"], "+Inf");
  EXPECT_EQ(buckets.back()["count"], 4);
  EXPECT_EQ(buckets[6]["count"], 4); // le = 0.001
  EXPECT_EQ(buckets[5]["count"], 0);
}

TEST(MetricsSnapshot, DropsASampleWhoseTypeDisagreesWithItsFamily) {
  metrics_snapshot snap;
  snap.counter("x", "X.", {}, 1);
  snap.gauge("x", "X.", {{"a", "b"}}, 2);
  ASSERT_NE(snap.find("x"), nullptr);
  EXPECT_EQ(snap.find("x")->samples.size(), 1u);
  EXPECT_EQ(snap.value("x"), 1.0);
  EXPECT_EQ(snap.value("x", {{"a", "b"}}), std::nullopt);
  EXPECT_EQ(snap.value("nothing"), std::nullopt);
}

TEST(WriteMetrics, ReplacesTheFileWhole) {
  auto path = testing::TempDir() + "metrics_test_"
              + std::to_string(::getpid()) + ".prom";
  metrics_snapshot snap;
  snap.counter("a_total", "A.", {}, 1);
  ASSERT_FALSE(write_metrics(snap, metrics_format::prometheus, path));
  EXPECT_EQ(read_file(path), "# HELP a_total A.\n# TYPE a_total counter\n"
                         "a_total 1\n");
  metrics_snapshot next;
  next.counter("b_total", "B.", {}, 2);
  ASSERT_FALSE(write_metrics(next, metrics_format::json, path));
  auto j = nlohmann::json::parse(read_file(path));
  EXPECT_EQ(j["metrics"][0]["name"], "b_total");
  // No temporary file is left next to it.
  struct stat st{};
  EXPECT_NE(::stat((path + ".tmp." + std::to_string(::getpid())).c_str(), &st),
            0);
  ::unlink(path.c_str());
}

TEST(WriteMetrics, NamesThePathItCannotWrite) {
  metrics_snapshot snap;
  auto err = write_metrics(snap, metrics_format::json,
                           "/nonexistent-dir/metrics.json");
  ASSERT_TRUE(err);
  EXPECT_EQ(err, errc::system_error);
  EXPECT_TRUE(contains(describe(err), "/nonexistent-dir/metrics.json"))
    << describe(err);
  EXPECT_EQ(write_metrics(snap, metrics_format::json, ""),
            errc::invalid_argument);
}

TEST(QueueMetrics, ReportDepthConsumedAndClosed) {
  queue_options opts;
  opts.batching = false; // with batching, depth counts slots of messages
  auto q = queue<int>::create(opts);
  ASSERT_TRUE(q) << describe(q.error());
  for (int i = 0; i < 3; ++i)
    ASSERT_FALSE(q->put(i, 1s));
  auto x = q->get(1s);
  ASSERT_TRUE(x) << describe(x.error());
  q->ack();
  metrics_registry reg;
  auto id = reg.add("work", *q);
  auto snap = reg.collect();
  EXPECT_EQ(snap.value("multiproc_queue_depth", {{"queue", "work"}}), 2.0);
  EXPECT_EQ(snap.value("multiproc_queue_consumed_total", {{"queue", "work"}}),
            1.0);
  EXPECT_EQ(snap.value("multiproc_queue_redelivered_total"), 0.0);
  EXPECT_EQ(snap.value("multiproc_queue_closed"), 0.0);
  EXPECT_GE(*snap.value("multiproc_queue_capacity"), 2.0);
  q->close();
  EXPECT_EQ(reg.collect().value("multiproc_queue_closed"), 1.0);
  reg.remove(id);
  EXPECT_TRUE(reg.collect().families().empty());
}
