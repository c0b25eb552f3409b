// The targets and the table of `multiproc bench` (bench_targets.hpp).
#include "bench_targets.hpp"

#include <algorithm>
#include <cstdio>

namespace bench_targets {

namespace {

using bench_peers::peer_line;

// The parts of each group, in the order the group runs them.
const std::map<std::string, std::vector<std::string>>& group_parts() {
  static const std::map<std::string, std::vector<std::string>> parts{
    {"pipe", {"rtt", "tput", "bw", "spawn"}},
    {"pool", {"auto", "map1", "auto_behavior", "latency", "chaos"}},
    {"queue", {"1p1c", "2p2c", "rtt"}},
    {"shared", {"incr", "dict", "rtt", "lock"}},
    {"remote", {"rtt", "tput"}},
  };
  return parts;
}

const figure* find(const std::vector<figure>& xs, const std::string& metric) {
  for (auto& x : xs)
    if (x.line.metric == metric)
      return &x;
  return nullptr;
}

bool selected(const run_results& run, const target& t) {
  return std::find(run.parts.begin(), run.parts.end(), t.part)
         != run.parts.end();
}

bool holds(double value, const std::string& op, double bound) {
  if (op == "<=")
    return value <= bound;
  if (op == ">=")
    return value >= bound;
  return value == bound;
}

std::string fmt_value(const peer_line& l) {
  return (l.unit == "count" ? bench_report::fmt_count(l.median)
                            : bench_report::fmt(l.median))
         + " " + l.unit;
}

std::string fmt_ratio(double r) {
  char buf[32];
  if (r >= 100)
    std::snprintf(buf, sizeof(buf), "%.0f", r);
  else if (r >= 10)
    std::snprintf(buf, sizeof(buf), "%.1f", r);
  else if (r >= 0.01)
    std::snprintf(buf, sizeof(buf), "%.2f", r);
  else
    std::snprintf(buf, sizeof(buf), "%.4f", r);
  return buf;
}

std::string fmt_bound(double b) {
  char buf[32];
  if (b == static_cast<double>(static_cast<long long>(b)))
    std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(b));
  else
    std::snprintf(buf, sizeof(buf), "%g", b);
  return buf;
}

/// One target evaluated against the run.
struct row {
  const target* t = nullptr;
  const figure* ours = nullptr;
  const figure* peer = nullptr;
  std::string peer_status; // why there is no peer figure
  bool has_ratio = false;
  double ratio = 0;
  std::string verdict; // met, NOT met, no peer, missing, orientation
};

row evaluate(const run_results& run, const target& t) {
  row r;
  r.t = &t;
  r.ours = find(run.ours, t.ours);
  if (!t.peer.empty()) {
    r.peer = find(run.peers, t.peer);
    if (r.peer == nullptr) {
      auto src = source_of(t.peer);
      if (src.kind == peer_kind::python)
        r.peer_status = run.python.available ? "not measured" : "no python3";
      else if (src.kind == peer_kind::os)
        r.peer_status = "not measured";
      else
        r.peer_status = "not run (" + src.who + ")";
    }
  }
  if (r.ours == nullptr) {
    r.verdict = "missing";
    return r;
  }
  double value = r.ours->line.median;
  if (!t.peer.empty()) {
    if (r.peer == nullptr || r.peer->line.median <= 0) {
      r.verdict = "no peer";
      return r;
    }
    r.has_ratio = true;
    r.ratio = value / r.peer->line.median;
    value = r.ratio;
  }
  if (t.op.empty())
    r.verdict = "orientation";
  else
    r.verdict = holds(value, t.op, t.bound) ? "met" : "NOT met";
  return r;
}

std::string target_text(const target& t, const figure* ours) {
  if (t.op.empty())
    return "-";
  auto text = t.op + " " + fmt_bound(t.bound);
  if (t.peer.empty() && ours != nullptr && ours->line.unit != "count")
    text += " " + ours->line.unit;
  return text;
}

std::vector<row> rows_of(const run_results& run) {
  std::vector<row> rows;
  for (auto& t : all_targets())
    if (selected(run, t))
      rows.push_back(evaluate(run, t));
  return rows;
}

// Ours that no selected target names.
std::vector<const figure*> others_of(const run_results& run) {
  std::vector<const figure*> out;
  for (auto& f : run.ours) {
    bool named = false;
    for (auto& t : all_targets())
      named = named || (selected(run, t) && t.ours == f.line.metric);
    if (!named)
      out.push_back(&f);
  }
  return out;
}

nlohmann::json line_json(const figure& f) {
  return {{"median", f.line.median}, {"min", f.line.min},
          {"max", f.line.max},       {"n", f.line.n},
          {"unit", f.line.unit},     {"source", f.source}};
}

} // namespace

const std::vector<target>& all_targets() {
  static const std::vector<target> targets{
    // issue 2: the pipe
    {"pipe.rtt", "cpp_pipe_rtt_p50", "os_socketpair_rtt_p50", "<=", 1.5},
    {"pipe.rtt", "cpp_pipe_sync_rtt_p50", "os_socketpair_rtt_p50", "<=", 1.5},
    {"pipe.tput", "cpp_pipe_tput_64B", "zmq_pushpull_tput_64B_ipc", ">=", 2.0},
    {"pipe.bw", "cpp_pipe_bw_1MiB", "os_socketpair_bw_1MiB_msgs", ">=", 0.8},
    {"pipe.spawn", "cpp_spawn_first_reply_forkserver",
     "py_process_start_join_fork", "<=", 0.5},
    // issue 3: the pool
    {"pool.map1", "cpp_pool_map_chunksize1", "py_pool_map_chunksize1_n20000",
     ">=", 25},
    {"pool.auto", "cpp_pool_map_auto", "py_pool_map_default_chunksize_n200000",
     ">=", 4},
    {"pool.latency", "cpp_pool_submit_latency_p50", "os_socketpair_rtt_p50",
     "<=", 1.5},
    {"pool.map1", "cpp_pool_map_chunksize1", "", ">=", 1e6},
    {"pool.chaos", "cpp_pool_chaos_lost", "", "==", 0},
    {"pool.chaos", "cpp_pool_chaos_duplicated", "", "==", 0},
    {"pool.latency", "cpp_pool_submit_latency_p50",
     "py_executor_submit_result_sequential_latency", "", 0},
    // issue 4: the queue
    {"queue.1p1c", "cpp_queue_tput_1p1c", "zmq_pushpull_tput_64B_ipc", ">=", 4},
    {"queue.2p2c", "cpp_queue_tput_2p2c", "zmq_pushpull_tput_64B_ipc", ">=", 4},
    {"queue.1p1c", "cpp_queue_tput_1p1c", "py_queue_tput_1p1c", ">=", 50},
    {"queue.2p2c", "cpp_queue_tput_2p2c", "py_queue_tput_2p2c", ">=", 50},
    {"queue.rtt", "cpp_queue_rtt_p50", "", "<=", 2},
    {"queue.rtt", "cpp_queue_rtt_p50", "os_socketpair_rtt_p50", "", 0},
    {"queue.rtt", "cpp_queue_rtt_p50", "os_shm_pingpong_spin_rtt_p50", "", 0},
    // issue 5: shared state
    {"shared.incr", "cpp_value_incr_2proc", "py_value_locked_incr_2proc", ">=",
     2},
    {"shared.dict", "cpp_dict_set_2proc", "py_manager_dict_set_2proc", ">=",
     20},
    {"shared.rtt", "cpp_value_fetch_add_rtt_p50", "os_socketpair_rtt_p50",
     "<=", 1.5},
    {"shared.lock", "cpp_lock_incr_2proc", "py_value_locked_incr_2proc", "",
     0},
    // issue 7: remote workers
    {"remote.rtt", "cpp_remote_rtt_p50", "caf_remote_request_rtt_int_p50", "<=",
     0.5},
    {"remote.tput", "cpp_remote_tput_64B", "caf_remote_anon_send_tput_int",
     ">=", 2},
    {"remote.rtt", "cpp_remote_rtt_p50",
     "caf_remote_request_rtt_int_sched_sharing_p50", "", 0},
  };
  return targets;
}

peer_source source_of(const std::string& m) {
  auto starts = [&](const char* prefix) { return m.rfind(prefix, 0) == 0; };
  if (starts("os_socketpair_rtt"))
    return {peer_kind::os, "rtt", "OS"};
  if (starts("os_socketpair_bw"))
    return {peer_kind::os, "bw", "OS"};
  if (starts("os_shm_pingpong_spin"))
    return {peer_kind::os, "shm", "OS"};
  if (starts("py_process_start"))
    return {peer_kind::python, "start", "Python"};
  if (starts("py_pool_map"))
    return {peer_kind::python, "pool", "Python"};
  if (starts("py_executor"))
    return {peer_kind::python, "executor", "Python"};
  if (starts("py_queue"))
    return {peer_kind::python, "queue", "Python"};
  if (starts("py_value"))
    return {peer_kind::python, "value", "Python"};
  if (starts("py_manager"))
    return {peer_kind::python, "manager", "Python"};
  if (starts("zmq_"))
    return {peer_kind::external, "", "ZeroMQ"};
  if (starts("caf_"))
    return {peer_kind::external, "", "CAF"};
  return {peer_kind::external, "", "?"};
}

std::vector<std::string> benchmark_names() {
  std::vector<std::string> names;
  for (auto g : {"pipe", "pool", "queue", "shared", "remote"}) {
    names.emplace_back(g);
    for (auto& p : group_parts().at(g))
      names.push_back(std::string{g} + "." + p);
    if (std::string{g} == "queue")
      names.emplace_back("queue.tput");
  }
  names.emplace_back("all");
  return names;
}

bool expand_parts(const std::string& what, std::vector<std::string>& parts) {
  auto add = [&](const std::string& p) {
    if (std::find(parts.begin(), parts.end(), p) == parts.end())
      parts.push_back(p);
  };
  auto& groups = group_parts();
  if (what == "all") {
    for (auto g : {"pipe", "queue", "pool", "shared", "remote"})
      for (auto& p : groups.at(g))
        add(std::string{g} + "." + p);
    return true;
  }
  auto dot = what.find('.');
  auto group = what.substr(0, dot);
  auto it = groups.find(group);
  if (it == groups.end())
    return false;
  if (dot == std::string::npos) {
    for (auto& p : it->second)
      add(group + "." + p);
    return true;
  }
  auto part = what.substr(dot + 1);
  if (what == "queue.tput") {
    add("queue.1p1c");
    add("queue.2p2c");
    return true;
  }
  if (std::find(it->second.begin(), it->second.end(), part)
      == it->second.end())
    return false;
  add(what);
  return true;
}

void print_table(const run_results& run) {
  using cells = std::vector<std::string>;
  std::vector<cells> table;
  table.push_back(
    {"metric", "multiproc", "peer", "peer value", "ratio", "target", "verdict"});
  size_t met = 0;
  size_t not_met = 0;
  size_t no_peer = 0;
  for (auto& r : rows_of(run)) {
    cells c;
    c.push_back(r.t->ours);
    c.push_back(r.ours != nullptr ? fmt_value(r.ours->line) : "missing");
    c.push_back(r.t->peer.empty() ? "-" : r.t->peer);
    if (r.t->peer.empty())
      c.push_back("-");
    else
      c.push_back(r.peer != nullptr ? fmt_value(r.peer->line) : r.peer_status);
    c.push_back(r.has_ratio ? fmt_ratio(r.ratio) : "-");
    c.push_back(target_text(*r.t, r.ours));
    c.push_back(r.verdict);
    if (!r.t->op.empty()) { // orientation rows are no targets
      met += r.verdict == "met";
      not_met += r.verdict == "NOT met";
      no_peer += r.verdict == "no peer" || r.verdict == "missing";
    }
    table.push_back(std::move(c));
  }
  for (auto* f : others_of(run))
    table.push_back({f->line.metric, fmt_value(f->line), "", "", "", "", ""});
  std::vector<size_t> width(table.front().size(), 0);
  for (auto& c : table)
    for (size_t i = 0; i < c.size(); ++i)
      width[i] = std::max(width[i], c[i].size());
  std::string what;
  for (auto& w : run.what)
    what += (what.empty() ? "" : " ") + w;
  std::printf("multiproc bench %s: medians of %d repetitions (BENCH_REPS); "
              "peers measured in this run\n",
              what.c_str(), bench_report::reps());
  bool os_measured = std::any_of(run.peers.begin(), run.peers.end(),
                                 [](auto& f) { return f.source == "os"; });
  if (os_measured)
    std::printf("  OS: the tool's own measurements (os_peers)\n");
  if (run.python_needed)
    std::printf("  Python: %s%s%s\n",
                run.python.version.empty() ? "" : run.python.version.c_str(),
                run.python.version.empty() ? "" : ": ",
                run.python.status.c_str());
  if (!run.peer_lines_file.empty())
    std::printf("  other peers: %s\n", run.peer_lines_file.c_str());
  std::printf("  ratio = multiproc / peer; the target bounds the ratio "
              "(or, without a peer, our figure)\n\n");
  // Numbers right-aligned, names left-aligned.
  const bool right[] = {false, true, false, true, true, false, false};
  for (size_t row = 0; row < table.size(); ++row) {
    std::string line;
    for (size_t i = 0; i < table[row].size(); ++i) {
      auto& cell = table[row][i];
      std::string pad(width[i] - cell.size(), ' ');
      line += (i == 0 ? "" : "  ")
              + (right[i] && row > 0 ? pad + cell : cell + pad);
    }
    while (!line.empty() && line.back() == ' ')
      line.pop_back();
    std::printf("%s\n", line.c_str());
  }
  std::printf("\ntargets: %zu met, %zu NOT met, %zu without a verdict "
              "(no peer or missing)\n",
              met, not_met, no_peer);
  for (auto& n : run.notes)
    std::printf("# %s\n", n.c_str());
  std::fflush(stdout);
}

nlohmann::json to_json(const run_results& run) {
  nlohmann::json out;
  out["what"] = run.what;
  out["parts"] = run.parts;
  out["reps"] = bench_report::reps();
  out["metrics"] = nlohmann::json::object();
  for (auto& f : run.ours)
    out["metrics"][f.line.metric] = line_json(f);
  out["peers"] = nlohmann::json::object();
  for (auto& f : run.peers)
    out["peers"][f.line.metric] = line_json(f);
  out["python"] = nullptr;
  if (run.python_needed)
    out["python"] = {{"available", run.python.available},
                     {"status", run.python.status},
                     {"version", run.python.version}};
  out["targets"] = nlohmann::json::array();
  for (auto& r : rows_of(run)) {
    nlohmann::json t{{"part", r.t->part},
                     {"metric", r.t->ours},
                     {"value", nullptr},
                     {"unit", nullptr},
                     {"peer", nullptr},
                     {"peer_value", nullptr},
                     {"peer_unit", nullptr},
                     {"ratio", nullptr},
                     {"op", nullptr},
                     {"bound", nullptr},
                     {"verdict", r.verdict}};
    if (r.ours != nullptr) {
      t["value"] = r.ours->line.median;
      t["unit"] = r.ours->line.unit;
    }
    if (!r.t->peer.empty()) {
      t["peer"] = r.t->peer;
      if (r.peer != nullptr) {
        t["peer_value"] = r.peer->line.median;
        t["peer_unit"] = r.peer->line.unit;
      } else {
        t["peer_status"] = r.peer_status;
      }
    }
    if (r.has_ratio)
      t["ratio"] = r.ratio;
    if (!r.t->op.empty()) {
      t["op"] = r.t->op;
      t["bound"] = r.t->bound;
    }
    out["targets"].push_back(std::move(t));
  }
  out["notes"] = run.notes;
  return out;
}

} // namespace bench_targets
