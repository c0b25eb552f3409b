// Runs the embedded Python peer script (python_peers.hpp).
#include "python_peers.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "multiproc/fd.hpp"
#include "python_peers_script.hpp" // generated: bench_peers::python_peers_script

namespace bench_peers {

namespace {

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

bool executable_file(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)
         && ::access(path.c_str(), X_OK) == 0;
}

// Writes the script to a new file in $TMPDIR (or /tmp); "" on failure, with
// `why` set.
std::string write_script(std::string& why) {
  const char* dir = std::getenv("TMPDIR");
  std::string path = std::string{dir != nullptr && *dir != '\0' ? dir : "/tmp"}
                     + "/multiproc-python-peers-XXXXXX.py";
  int fd = ::mkstemps(path.data(), 3);
  if (fd < 0) {
    why = "mkstemps " + path + ": " + std::strerror(errno);
    return "";
  }
  if (!multiproc::write_all(fd, python_peers_script)) {
    why = "write " + path + ": " + std::strerror(errno);
    ::close(fd);
    ::unlink(path.c_str());
    return "";
  }
  ::close(fd);
  return path;
}

} // namespace

bool parse_peer_line(const std::string& text, peer_line& out) {
  if (text.empty() || text[0] == '#')
    return false;
  std::istringstream in{text};
  std::string median;
  std::string min;
  std::string max;
  std::string n;
  if (!(in >> out.metric >> median >> out.unit >> min >> max >> n))
    return false;
  if (min.rfind("min=", 0) != 0 || max.rfind("max=", 0) != 0
      || n.rfind("n=", 0) != 0)
    return false;
  char* end = nullptr;
  out.median = std::strtod(median.c_str(), &end);
  if (end == median.c_str() || *end != '\0')
    return false;
  out.min = std::strtod(min.c_str() + 4, nullptr);
  out.max = std::strtod(max.c_str() + 4, nullptr);
  out.n = static_cast<size_t>(std::strtoul(n.c_str() + 2, nullptr, 10));
  return true;
}

std::string find_python3() {
  const char* path = std::getenv("PATH");
  if (path == nullptr)
    return "";
  std::string dirs{path};
  size_t pos = 0;
  while (pos <= dirs.size()) {
    auto colon = dirs.find(':', pos);
    auto dir = dirs.substr(pos, colon == std::string::npos ? std::string::npos
                                                           : colon - pos);
    auto candidate = (dir.empty() ? std::string{"."} : dir) + "/python3";
    if (executable_file(candidate))
      return candidate;
    if (colon == std::string::npos)
      break;
    pos = colon + 1;
  }
  return "";
}

python_run run_python_peers(const std::vector<std::string>& sections) {
  python_run run;
  auto python = find_python3();
  if (python.empty()) {
    run.status = "no python3 on PATH";
    return run;
  }
  run.available = true;
  std::string why;
  auto script = write_script(why);
  if (script.empty()) {
    run.status = "cannot write the script: " + why;
    return run;
  }
  auto command = shell_quote(python) + " " + shell_quote(script);
  for (auto& s : sections)
    command += " " + shell_quote(s);
  std::FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) {
    run.status = "cannot run " + python + ": " + std::strerror(errno);
    ::unlink(script.c_str());
    return run;
  }
  std::string text;
  char buf[512];
  while (std::fgets(buf, sizeof(buf), pipe) != nullptr) {
    text += buf;
    if (text.empty() || text.back() != '\n')
      continue;
    text.pop_back();
    peer_line line;
    if (parse_peer_line(text, line)) {
      std::fprintf(stderr, "%s\n", text.c_str()); // progress, as ours
      run.lines.push_back(line);
    } else if (text.rfind("# python ", 0) == 0) {
      run.version = text.substr(2);
    }
    text.clear();
  }
  int status = ::pclose(pipe);
  ::unlink(script.c_str());
  if (status == -1)
    run.status = std::string{"python3: pclose: "} + std::strerror(errno);
  else if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    run.status = "measured";
  else if (WIFEXITED(status))
    run.status = "python3 exited with status "
                 + std::to_string(WEXITSTATUS(status));
  else
    run.status = "python3 ended by signal "
                 + std::to_string(WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return run;
}

} // namespace bench_peers
