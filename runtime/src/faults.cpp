// Fault injection: the rules, their counters, and what a fired rule does.

#include "multiproc/faults.hpp"

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include <unistd.h>

#include "multiproc/error.hpp"
#include "multiproc/log.hpp"

namespace multiproc::faults {

namespace detail {
std::atomic<bool> enabled_flag{false};
} // namespace detail

namespace {

constexpr const char* point_names[num_points] = {
  "parent.encode_task", "worker.decode_task",   "worker.run_task",
  "worker.encode_result", "parent.decode_result", "queue.put",
  "queue.get",          "spawn",                "child.start",
};

const char* action_name(action x) noexcept {
  switch (x) {
    case action::crash: return "crash";
    case action::exit: return "exit";
    default: return "throw";
  }
}

/// splitmix64: a small, good, seedable stream.
uint64_t next_random(uint64_t& state) noexcept {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

struct slot {
  bool active = false;
  rule r;
  uint64_t calls = 0;
  uint64_t fired = 0;
  uint64_t random = 0;
};

struct registry {
  std::mutex mu;
  slot slots[num_points];
  uint64_t children = 0; // children started, for their random streams
};

registry& reg() {
  static registry* r = new registry; // never destroyed: used until _exit
  return *r;
}

void update_flag_locked(registry& r) {
  bool any = false;
  for (auto& s : r.slots)
    any = any || s.active;
  detail::enabled_flag.store(any, std::memory_order_relaxed);
}

void install_locked(registry& r, const rule& x) {
  auto& s = r.slots[static_cast<size_t>(x.where)];
  s.active = true;
  s.r = x;
  s.calls = 0;
  s.fired = 0;
  s.random = x.seed;
}

std::string rule_to_string(const rule& x) {
  std::string out = to_string(x.where);
  out += ':';
  out += action_name(x.what);
  if (x.probability < 1.0) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), ":p=%.17g", x.probability);
    out += buf;
  }
  if (x.after != 0)
    out += ":after=" + std::to_string(x.after);
  if (x.times != 0)
    out += ":times=" + std::to_string(x.times);
  if (x.seed != 1)
    out += ":seed=" + std::to_string(x.seed);
  if (x.what == action::exit)
    out += ":code=" + std::to_string(x.code);
  if (x.what == action::crash && x.signal != SIGKILL)
    out += ":signal=" + std::to_string(x.signal);
  return out;
}

/// Counts a call at `x`; true (and the rule in `out`) if it fires.
bool decide(point x, rule& out, uint64_t& call) {
  auto& r = reg();
  std::lock_guard<std::mutex> guard{r.mu};
  auto& s = r.slots[static_cast<size_t>(x)];
  if (!s.active)
    return false;
  call = ++s.calls;
  if (call <= s.r.after)
    return false;
  if (s.r.times != 0 && s.fired >= s.r.times)
    return false;
  if (s.r.probability < 1.0) {
    // 53 random bits as a double in [0, 1).
    double draw = static_cast<double>(next_random(s.random) >> 11)
                  * (1.0 / 9007199254740992.0);
    if (draw >= s.r.probability)
      return false;
  }
  ++s.fired;
  out = s.r;
  return true;
}

std::string describe_fault(const rule& x, uint64_t call) {
  return "injected fault at " + std::string{to_string(x.where)} + " (rule '"
         + rule_to_string(x) + "', call " + std::to_string(call) + ", pid "
         + std::to_string(::getpid()) + ")";
}

/// Ends the process as the rule says (crash, exit); never returns.
[[noreturn]] void end_process(const rule& x, uint64_t call) {
  // A real crash flushes nothing; one record says why (the logger's sinks
  // write at once, nothing stays buffered).
  logger()->error("{}", describe_fault(x, call));
  if (x.what == action::crash) {
    ::kill(::getpid(), x.signal);
    ::_exit(128 + x.signal); // a signal that did not kill (ignored, caught)
  }
  ::_exit(x.code);
}

errc code_of_point(point x) noexcept {
  switch (x) {
    case point::worker_decode_task:
    case point::parent_decode_result:
    case point::queue_get:
      return errc::decode_failed;
    case point::parent_encode_task:
    case point::worker_encode_result:
    case point::queue_put:
      return errc::encode_failed;
    case point::worker_run_task:
      return errc::worker_exception;
    default:
      return errc::spawn_failed;
  }
}

/// Parses an unsigned decimal number.
bool parse_u64(std::string_view s, uint64_t& out) {
  if (s.empty() || s.size() > 20)
    return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9')
      return false;
    auto digit = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - digit) / 10)
      return false; // above 2^64 - 1
    v = v * 10 + digit;
  }
  out = v;
  return true;
}

bool parse_probability(std::string_view s, double& out) {
  std::string str{s};
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(str.c_str(), &end);
  if (str.empty() || end != str.c_str() + str.size() || errno != 0
      || !(v >= 0.0 && v <= 1.0))
    return false;
  out = v;
  return true;
}

caf::error parse_rule(std::string_view text, rule& x) {
  auto bad = [&](const std::string& why) {
    return make_error(errc::invalid_argument,
                      "fault rule '" + std::string{text} + "': " + why);
  };
  std::vector<std::string_view> fields;
  for (size_t pos = 0;;) {
    auto colon = text.find(':', pos);
    fields.push_back(text.substr(pos, colon == std::string_view::npos
                                        ? std::string_view::npos
                                        : colon - pos));
    if (colon == std::string_view::npos)
      break;
    pos = colon + 1;
  }
  if (fields.size() < 2)
    return bad("expected <point>:<action>[:<option>...]");
  bool found = false;
  for (size_t i = 0; i < num_points; ++i)
    if (fields[0] == point_names[i]) {
      x.where = static_cast<point>(i);
      found = true;
    }
  if (!found) {
    std::string names;
    for (auto* name : point_names)
      names += std::string{names.empty() ? "" : ", "} + name;
    return bad("unknown point '" + std::string{fields[0]} + "' (points: "
               + names + ")");
  }
  if (fields[1] == "crash")
    x.what = action::crash;
  else if (fields[1] == "exit")
    x.what = action::exit;
  else if (fields[1] == "throw")
    x.what = action::fail;
  else
    return bad("unknown action '" + std::string{fields[1]}
               + "' (actions: crash, exit, throw)");
  for (size_t i = 2; i < fields.size(); ++i) {
    auto f = fields[i];
    auto eq = f.find('=');
    auto key = eq == std::string_view::npos ? std::string_view{"p"}
                                            : f.substr(0, eq);
    auto value = eq == std::string_view::npos ? f : f.substr(eq + 1);
    uint64_t n = 0;
    if (key == "p") {
      if (!parse_probability(value, x.probability))
        return bad("probability '" + std::string{value}
                   + "' is not a number in [0, 1]");
    } else if (key == "after" || key == "times" || key == "seed"
               || key == "code" || key == "signal") {
      if (!parse_u64(value, n))
        return bad(std::string{key} + "='" + std::string{value}
                   + "' is not an unsigned number");
      if (key == "after")
        x.after = n;
      else if (key == "times")
        x.times = n;
      else if (key == "seed")
        x.seed = n;
      else if (key == "code") {
        if (n > 255)
          return bad("code must be at most 255");
        x.code = static_cast<int>(n);
      } else {
        if (n == 0 || n >= 65)
          return bad("signal must be a signal number (1 to 64)");
        x.signal = static_cast<int>(n);
      }
    } else {
      return bad("unknown option '" + std::string{key}
                 + "' (options: p, after, times, seed, code, signal)");
    }
  }
  return caf::none;
}

} // namespace

const char* to_string(point x) noexcept {
  auto i = static_cast<size_t>(x);
  return i < num_points ? point_names[i] : "?";
}

caf::error parse(std::string_view spec, std::vector<rule>& out) {
  std::vector<rule> rules;
  for (size_t pos = 0; pos < spec.size();) {
    auto comma = spec.find(',', pos);
    auto text = spec.substr(pos, comma == std::string_view::npos
                                   ? std::string_view::npos
                                   : comma - pos);
    pos = comma == std::string_view::npos ? spec.size() : comma + 1;
    if (text.empty())
      continue;
    rule x;
    if (auto err = parse_rule(text, x))
      return err;
    rules.push_back(x);
  }
  out = std::move(rules);
  return caf::none;
}

caf::error configure(std::string_view spec) {
  std::vector<rule> rules;
  if (auto err = parse(spec, rules))
    return err;
  auto& r = reg();
  std::lock_guard<std::mutex> guard{r.mu};
  for (auto& s : r.slots)
    s = slot{};
  for (auto& x : rules)
    install_locked(r, x);
  update_flag_locked(r);
  return caf::none;
}

void set(const rule& x) {
  auto& r = reg();
  std::lock_guard<std::mutex> guard{r.mu};
  install_locked(r, x);
  update_flag_locked(r);
}

void clear() {
  auto& r = reg();
  std::lock_guard<std::mutex> guard{r.mu};
  for (auto& s : r.slots)
    s = slot{};
  update_flag_locked(r);
}

std::string to_spec() {
  auto& r = reg();
  std::lock_guard<std::mutex> guard{r.mu};
  std::string out;
  for (auto& s : r.slots)
    if (s.active)
      out += (out.empty() ? "" : ",") + rule_to_string(s.r);
  return out;
}

uint64_t fired(point x) {
  auto& r = reg();
  std::lock_guard<std::mutex> guard{r.mu};
  return r.slots[static_cast<size_t>(x)].fired;
}

namespace detail {

caf::error fire(point x) {
  rule r;
  uint64_t call = 0;
  if (!decide(x, r, call))
    return caf::none;
  if (r.what != action::fail)
    end_process(r, call);
  return make_error(code_of_point(x), describe_fault(r, call));
}

void fire_throw(point x) {
  rule r;
  uint64_t call = 0;
  if (!decide(x, r, call))
    return;
  if (r.what != action::fail)
    end_process(r, call);
  throw injected_fault{describe_fault(r, call)};
}

caf::error on_spawn(std::string& child_spec) {
  child_spec.clear();
  if (!enabled())
    return caf::none;
  rule fired_rule;
  uint64_t call = 0;
  bool fires = decide(point::spawn, fired_rule, call);
  if (fires && fired_rule.what == action::fail)
    return make_error(errc::spawn_failed, describe_fault(fired_rule, call));
  auto& r = reg();
  std::lock_guard<std::mutex> guard{r.mu};
  // Each child draws its own random stream: the seed mixed with the
  // number of children started before it (deterministic in start order).
  uint64_t mix = ++r.children * 0x9e3779b97f4a7c15ULL;
  for (auto& s : r.slots) {
    if (!s.active || (fires && s.r.where == point::child_start))
      continue;
    auto x = s.r;
    x.seed = next_random(mix) ^ s.r.seed;
    child_spec += (child_spec.empty() ? "" : ",") + rule_to_string(x);
  }
  if (fires) {
    // The spawn rule's crash or exit, right after the child starts.
    auto x = fired_rule;
    x.where = point::child_start;
    x.probability = 1.0;
    x.after = 0;
    x.times = 0;
    child_spec += (child_spec.empty() ? "" : ",") + rule_to_string(x);
  }
  return caf::none;
}

void on_child_start(const std::string& spec) {
  if (spec.empty() && !enabled())
    return;
  if (auto err = configure(spec)) {
    logger()->error("the parent's fault rules: {}", describe(err));
    clear();
  }
  if (auto err = check(point::child_start)) {
    logger()->error("{}", describe(err));
    logger()->flush();
    ::_exit(1);
  }
}

void init_from_environment() {
  const char* spec = ::getenv("MULTIPROC_FAULTS");
  if (spec == nullptr || *spec == '\0')
    return;
  if (auto err = configure(spec)) {
    logger()->critical("MULTIPROC_FAULTS: {}", describe(err));
    logger()->flush();
    ::_exit(2);
  }
}

} // namespace detail

} // namespace multiproc::faults
