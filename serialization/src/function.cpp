#include "multiproc/function.hpp"

#include <cstdlib>
#include <map>
#include <memory>

#include <cxxabi.h>
#include <unistd.h>

#include <cereal/types/string.hpp>

namespace multiproc::detail {

namespace {

constexpr const char* function_entry_name = "multiproc.function";

std::map<std::string, function_entry>& functions() {
  static std::map<std::string, function_entry> instance;
  return instance;
}

struct function_call {
  std::string name;
  std::string args;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, args);
  }
};

int run_function(child_context& ctx) {
  auto call = decode<function_call>(ctx.args);
  if (!call) {
    logger()->error("bad function call: {}", describe(call.error()));
    return 2;
  }
  auto* entry = find_function(call->name);
  if (entry == nullptr) {
    logger()->error("no function is registered as '{}'", call->name);
    return 2;
  }
  pipe_end parent{std::move(ctx.channel)};
  try {
    return entry->invoke(entry->fn, parent, call->args);
  } catch (const std::exception& e) {
    logger()->error("function '{}' in process {}[{}] threw {}: {}", call->name,
                    ctx.name, static_cast<int>(::getpid()),
                    demangled(typeid(e)), e.what());
  } catch (...) {
    logger()->error("function '{}' in process {}[{}] threw an exception",
                    call->name, ctx.name, static_cast<int>(::getpid()));
  }
  return 1;
}

const bool function_entry_registered = register_entry(function_entry_name,
                                                      &run_function);

} // namespace

std::string demangled(const std::type_info& type) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out{
    abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), std::free};
  return status == 0 && out ? std::string{out.get()}
                            : std::string{type.name()};
}

bool register_function(const char* name, function_entry entry) {
  if (!functions().emplace(name, std::move(entry)).second) {
    logger()->critical("function '{}' is registered twice", name);
    std::abort();
  }
  return true;
}

const function_entry* find_function(const std::string& name) {
  auto i = functions().find(name);
  return i == functions().end() ? nullptr : &i->second;
}

caf::expected<process> start_function_impl(const std::string& name,
                                           const std::type_info& args_type,
                                           std::string args,
                                           process_options opts) {
  auto* entry = find_function(name);
  if (entry == nullptr)
    return make_error(errc::unknown_entry,
                      "no function is registered as '" + name + "'");
  if (entry->args_type != std::type_index{args_type})
    return make_error(errc::invalid_argument,
                      "function '" + name + "' takes " + entry->signature
                        + " but was given " + demangled(args_type));
  if (opts.name.empty())
    opts.name = name;
  std::string bytes;
  if (auto err = encode(function_call{name, std::move(args)}, bytes))
    return err;
  return start_process(function_entry_name, std::move(bytes), std::move(opts));
}

} // namespace multiproc::detail
