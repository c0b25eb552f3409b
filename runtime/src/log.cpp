// The library's logger: creation from MULTIPROC_LOG_LEVEL, the sink that
// forwards a child's records to its parent, and logging a child's records
// again in the parent. See docs/logging.md.

#include "multiproc/log.hpp"

#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include "log_internal.hpp"
#include "multiproc/error.hpp"
#include "multiproc/fd.hpp"

namespace multiproc {

namespace {

constexpr const char* logger_name = "multiproc";

constexpr const char* accepted_levels
  = "trace, debug, info, warn, error, critical, off";

spdlog::level::level_enum to_spdlog(log_level x) noexcept {
  return static_cast<spdlog::level::level_enum>(static_cast<int>(x));
}

/// spdlog's logger plus one call that logs a record under another logger
/// name: a child's record keeps the child's "name pid" as its name, so that
/// a pattern's %n shows which process wrote it.
class tree_logger final : public spdlog::logger {
public:
  using spdlog::logger::logger;

  void log_as(spdlog::string_view_t name, spdlog::level::level_enum lvl,
              spdlog::string_view_t text) {
    bool enabled = should_log(lvl);
    bool traceback = tracer_.enabled();
    if (!enabled && !traceback)
      return;
    spdlog::details::log_msg msg{spdlog::source_loc{}, name, lvl, text};
    log_it_(msg, enabled, traceback);
  }
};

/// A child's sink: each line of a record's text becomes one stderr line
/// "\x1e<level digit>[<name>] <line>" (the "[name] " part only for a record
/// forwarded from a grandchild), written in one write() so that concurrent
/// records and plain stderr lines never mix inside a line. Ignores the
/// formatter: the parent formats.
class parent_sink final : public spdlog::sinks::base_sink<std::mutex> {
protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    std::string_view name{msg.logger_name.data(), msg.logger_name.size()};
    std::string_view text{msg.payload.data(), msg.payload.size()};
    while (!text.empty() && text.back() == '\n')
      text.remove_suffix(1);
    bool tagged = name != logger_name;
    buf_.clear();
    for (;;) {
      auto pos = text.find('\n');
      buf_ += detail::log_marker;
      buf_ += static_cast<char>('0' + static_cast<int>(msg.level));
      if (tagged) {
        buf_ += '[';
        buf_ += name;
        buf_ += "] ";
      }
      buf_ += text.substr(0, pos);
      buf_ += '\n';
      if (pos == std::string_view::npos)
        break;
      text.remove_prefix(pos + 1);
    }
    write_all(STDERR_FILENO, buf_); // on failure, the parent is gone
  }

  void flush_() override {
    // Nothing buffered: sink_it_ writes at once.
  }

private:
  std::string buf_;
};

/// Set by log_to_parent() before it first calls logger(): the logger is then
/// created with the parent_sink, so that even its first record (a bad
/// MULTIPROC_LOG_LEVEL) reaches the parent as a record.
bool create_for_parent = false;

/// True if the logger was created with the parent_sink.
bool created_for_parent = false;

std::shared_ptr<spdlog::logger>* make_logger() {
  spdlog::sink_ptr sink;
  if (create_for_parent)
    sink = std::make_shared<parent_sink>();
  else
    sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  created_for_parent = create_for_parent;
  auto lg = std::make_shared<tree_logger>(logger_name, std::move(sink));
  lg->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%n] [%l] %v");
  std::string bad;
  lg->set_level(spdlog::level::info);
  if (const char* env = std::getenv(log_level_env_var);
      env != nullptr && *env != '\0') {
    if (auto x = parse_log_level(env))
      lg->set_level(to_spdlog(*x));
    else
      bad = env;
  }
  try {
    spdlog::register_logger(lg);
  } catch (const spdlog::spdlog_ex&) {
    // A logger named "multiproc" exists already: ours stays unregistered.
  }
  if (!bad.empty())
    lg->warn("{}='{}' is not a log level (accepted: {}); using info",
             log_level_env_var, bad, accepted_levels);
  // Never destroyed: the forwarding thread and static destructors may log
  // while the program exits.
  return new std::shared_ptr<spdlog::logger>{std::move(lg)};
}

tree_logger& tree() {
  return static_cast<tree_logger&>(*logger());
}

} // namespace

// -- log_level ------------------------------------------------------------------

const char* to_string(log_level x) noexcept {
  switch (x) {
    case log_level::trace: return "trace";
    case log_level::debug: return "debug";
    case log_level::info: return "info";
    case log_level::warn: return "warn";
    case log_level::error: return "error";
    case log_level::critical: return "critical";
    case log_level::off: return "off";
  }
  return "?";
}

caf::expected<log_level> parse_log_level(std::string_view text) {
  for (int i = 0; i <= static_cast<int>(log_level::off); ++i) {
    auto x = static_cast<log_level>(i);
    if (text == to_string(x))
      return x;
  }
  return make_error(errc::invalid_argument,
                    "'" + std::string{text} + "' is not a log level (accepted: "
                      + accepted_levels + ")");
}

// -- logger -----------------------------------------------------------------------

const std::shared_ptr<spdlog::logger>& logger() {
  static std::shared_ptr<spdlog::logger>* instance = make_logger();
  return *instance;
}

void set_log_level(log_level x) {
  logger()->set_level(to_spdlog(x));
}

log_level get_log_level() {
  return static_cast<log_level>(static_cast<int>(logger()->level()));
}

void log_output_line(const output_line& line) {
  auto name = line.process_name + ' ' + std::to_string(line.pid);
  tree().log_as(name, to_spdlog(line.level.value_or(log_level::info)),
                line.text);
}

namespace detail {

void log_to_parent() {
  static bool done = false;
  if (done)
    return;
  done = true;
  create_for_parent = true;
  auto& sinks = logger()->sinks();
  if (created_for_parent)
    return;
  // The logger existed already (a fork child's copy of the parent's, or one
  // used before the boot record was read).
  // Parked, never destroyed: a fork child's copies of the parent's sinks
  // (file sinks with buffered data) must neither flush nor close here.
  static auto* parked = new std::vector<spdlog::sink_ptr>;
  parked->insert(parked->end(), sinks.begin(), sinks.end());
  sinks.clear();
  sinks.push_back(std::make_shared<parent_sink>());
}

std::optional<log_level> strip_log_marker(std::string& text) noexcept {
  if (text.size() < 2 || text[0] != log_marker || text[1] < '0'
      || text[1] > '5')
    return std::nullopt;
  auto x = static_cast<log_level>(text[1] - '0');
  text.erase(0, 2);
  return x;
}

} // namespace detail

} // namespace multiproc
