#pragma once

/// \file
/// Process bootstrap and the registry of child entry functions.
///
/// Every program that starts child processes calls multiproc::bootstrap()
/// first in main(). The same executable then serves as parent and as child:
/// a child started with start_method::spawn re-executes the program, and
/// bootstrap() recognises worker mode, runs the registered entry and exits.
///
/// Thread-safety: bootstrap() must be called once, from main(), before any
/// other thread exists; everything else may be called from any thread.
///
/// Errors: none are returned. bootstrap() aborts with a message if it cannot
/// create the lifeline and ends the process with exit code 2 on a malformed
/// MULTIPROC_FAULTS; a fork server that fails to start only makes
/// start_method::forkserver unavailable. register_entry() aborts on a
/// duplicate name. See docs/processes.md.

#include <string>
#include <vector>

#include "multiproc/fd.hpp"
#include "multiproc/start_method.hpp"

namespace multiproc {

/// Options of bootstrap().
struct bootstrap_options {
  /// Fork the fork server (start_method::forkserver) now. Skipped, whatever
  /// this says, when the process already has more than one thread or when it
  /// is itself a multiproc child.
  bool start_forkserver = true;
};

/// Must be the first call in main(). In worker mode (the process was started
/// by multiproc as a child with start_method::spawn) it runs the registered
/// entry and exits with its return code: it never returns. Otherwise it
/// creates the lifeline that ties children to this process, starts the fork
/// server (if enabled, and only if the process is single-threaded) and
/// returns. A second call does nothing.
void bootstrap(int argc, char** argv, const bootstrap_options& opts = {});

/// True once bootstrap() ran in this process (always true inside a child).
bool bootstrapped() noexcept;

/// True inside a child process started by multiproc (any start method).
bool is_child_process() noexcept;

/// What a child's entry function receives.
struct child_context {
  /// The registered entry name.
  std::string entry;
  /// The process name given by the parent (for logs).
  std::string name;
  /// Opaque bytes given by the parent to start_process().
  std::string args;
  /// The child's end of the parent<->child socketpair (AF_UNIX, SOCK_STREAM,
  /// blocking, close-on-exec), always descriptor 3. The entry owns it.
  unique_fd channel;
  /// The descriptors the parent passed in process_options::fds, in that
  /// order (close-on-exec). The entry owns them.
  std::vector<unique_fd> fds;
  /// How this child was started.
  start_method method = start_method::spawn;
};

/// A child's main function; its return value becomes the exit code. An
/// exception escaping it is printed to stderr and gives exit code 1.
using entry_function = int (*)(child_context&);

/// Registers `fn` as the entry called `name` and returns true. Call it from a
/// static initializer (see MULTIPROC_REGISTER_ENTRY) so that parent and child
/// share the same registry. A duplicate name prints a message and aborts.
/// `name` must stay alive (a string literal).
bool register_entry(const char* name, entry_function fn);

/// True if an entry is registered under `name`.
bool has_entry(const std::string& name);

namespace detail {

/// Registers `fn` to run when a child's entry returns, before the child
/// exits (a forked child ends with _exit(), which runs no destructors): for
/// libraries that must write what they buffered. At most 8 hooks.
void at_child_exit(void (*fn)()) noexcept;

} // namespace detail

} // namespace multiproc

#define MULTIPROC_ENTRY_CAT_I(a, b) a##b
#define MULTIPROC_ENTRY_CAT(a, b) MULTIPROC_ENTRY_CAT_I(a, b)

/// Registers an entry function at namespace scope, in one line:
/// `MULTIPROC_REGISTER_ENTRY("square", square_main);`
#define MULTIPROC_REGISTER_ENTRY(name, fn)                                     \
  [[maybe_unused]] static const bool MULTIPROC_ENTRY_CAT(                      \
    multiproc_entry_registered_, __COUNTER__)                                  \
    = ::multiproc::register_entry(name, fn)
