#pragma once

/// \file
/// Plain processes: run a registered function with Cereal-serializable
/// arguments in a child, the counterpart of Python's
/// `Process(target=f, args=(...))`.
///
///     void greet(multiproc::pipe_end& parent, std::string who, int times);
///     MULTIPROC_FUNCTION("greet", greet);
///     ...
///     auto proc = multiproc::start_function("greet", {}, std::string{"Ann"}, 3);
///     multiproc::pipe_end to_child{proc->take_channel()};
///
/// The function may take a `multiproc::pipe_end&` first: its end of the pipe
/// to the parent (the parent gets the other end with take_channel()). It may
/// return void (exit code 0) or int (the exit code). An exception escaping it
/// is printed to the child's stderr (forwarded to the parent) and the child
/// exits with code 1, as an uncaught exception in a Python Process does.
/// Arguments are checked against the function's parameter types when the
/// process starts: a mismatch fails start_function() with invalid_argument.
///
/// Thread safety: MULTIPROC_FUNCTION registers during static initialisation
/// (no lock; a duplicate name aborts); start_function() may then be called
/// from any thread, as start_process(). The returned `process` owns the
/// child (process.hpp).

#include <cstdio>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeindex>
#include <utility>

#include <cereal/types/tuple.hpp>

#include "multiproc/bootstrap.hpp"
#include "multiproc/log.hpp"
#include "multiproc/message_registry.hpp"
#include "multiproc/pipe.hpp"
#include "multiproc/process.hpp"

namespace multiproc {

namespace detail {

/// Runs the function with its decoded arguments; returns the exit code.
using function_invoker = int (*)(void* fn, pipe_end& parent,
                                 std::string_view args);

struct function_entry {
  void* fn;
  function_invoker invoke;
  std::type_index args_type;
  std::string signature;
};

bool register_function(const char* name, function_entry entry);
const function_entry* find_function(const std::string& name);
std::string demangled(const std::type_info& type);
caf::expected<process> start_function_impl(const std::string& name,
                                           const std::type_info& args_type,
                                           std::string args,
                                           process_options opts);

template <class R, class... Args>
struct function_traits_impl {
  static constexpr bool takes_pipe = false;
  using args_tuple = std::tuple<std::decay_t<Args>...>;
};

template <class R, class... Args>
struct function_traits_impl<R, pipe_end&, Args...> {
  static constexpr bool takes_pipe = true;
  using args_tuple = std::tuple<std::decay_t<Args>...>;
};

template <class F>
struct function_traits;

template <class R, class... Args>
struct function_traits<R (*)(Args...)> : function_traits_impl<R, Args...> {
  using result = R;
};

template <class F>
int invoke_function(void* fn, pipe_end& parent, std::string_view bytes) {
  using traits = function_traits<F>;
  using tuple = typename traits::args_tuple;
  auto f = reinterpret_cast<F>(fn);
  auto args = decode<tuple>(bytes);
  if (!args) {
    logger()->error("cannot decode the arguments: {}", describe(args.error()));
    return 2;
  }
  auto call = [&](auto&&... xs) {
    if constexpr (traits::takes_pipe)
      return f(parent, std::move(xs)...);
    else
      return f(std::move(xs)...);
  };
  if constexpr (std::is_void<typename traits::result>::value) {
    std::apply(call, std::move(*args));
    return 0;
  } else {
    return static_cast<int>(std::apply(call, std::move(*args)));
  }
}

template <class F>
bool register_function_ptr(const char* name, F fn) {
  using tuple = typename function_traits<F>::args_tuple;
  return register_function(
    name, function_entry{reinterpret_cast<void*>(fn), &invoke_function<F>,
                         std::type_index{typeid(tuple)},
                         demangled(typeid(tuple))});
}

} // namespace detail

/// Starts a child process running the function registered as `name` with
/// `args`. Errors: unknown_entry, invalid_argument (argument types do not
/// match the function's parameters), encode_failed, and those of
/// start_process().
template <class... Args>
caf::expected<process> start_function(const std::string& name,
                                       process_options opts, Args&&... args) {
  using tuple = std::tuple<std::decay_t<Args>...>;
  std::string bytes;
  if (auto err = encode(tuple{std::forward<Args>(args)...}, bytes))
    return err;
  return detail::start_function_impl(name, typeid(tuple), std::move(bytes),
                                     std::move(opts));
}

} // namespace multiproc

/// Registers a function to run in child processes under `name` (a string
/// literal), at namespace scope. `fn` takes an optional `pipe_end&` first,
/// then Cereal-serializable values, and returns void or int.
#define MULTIPROC_FUNCTION(name, fn)                                           \
  static const bool MULTIPROC_PP_CAT(multiproc_function_registered_,           \
                                     __COUNTER__)                              \
    = ::multiproc::detail::register_function_ptr(name, &fn);
