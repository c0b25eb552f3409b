// The registries of the shared-state actor (cell types, named functions) and
// the error texts of its typed operations (detail/shared_ops.hpp).

#include "multiproc/detail/shared_ops.hpp"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>

#include <cxxabi.h>

#include "multiproc/log.hpp"
#include "multiproc/shared_state.hpp"

namespace multiproc::detail {

namespace {

struct registries {
  std::mutex mtx;
  std::unordered_map<std::string, cell_factory> cells;
  // (name, node type) -> function
  std::map<std::pair<std::string, std::string>, shared_function> functions;
};

registries& regs() {
  static registries instance;
  return instance;
}

std::string where(const node_context& ctx) {
  std::string text = "cell '" + ctx.cell + "'";
  if (ctx.depth > 0)
    text += " (at depth " + std::to_string(ctx.depth) + ")";
  return text;
}

} // namespace

const char* to_string(shared_op op) noexcept {
  switch (op) {
    case shared_op::load: return "load";
    case shared_op::store: return "store";
    case shared_op::exchange: return "exchange";
    case shared_op::compare_exchange: return "compare_exchange";
    case shared_op::update: return "update";
    case shared_op::call: return "call";
    case shared_op::fetch_add: return "fetch_add";
    case shared_op::fetch_sub: return "fetch_sub";
    case shared_op::map_get: return "get";
    case shared_op::map_get_or: return "get";
    case shared_op::map_set: return "set";
    case shared_op::map_erase: return "erase";
    case shared_op::map_contains: return "contains";
    case shared_op::map_keys: return "keys";
    case shared_op::map_items: return "items";
    case shared_op::map_pop: return "pop";
    case shared_op::vec_get: return "get";
    case shared_op::vec_set: return "set";
    case shared_op::vec_append: return "append";
    case shared_op::vec_extend: return "extend";
    case shared_op::vec_pop: return "pop";
    case shared_op::vec_insert: return "insert";
    case shared_op::vec_slice: return "slice";
    case shared_op::vec_set_slice: return "set_slice";
    case shared_op::vec_fill: return "fill";
    case shared_op::size: return "size";
    case shared_op::clear: return "clear";
    case shared_op::create: return "create";
    case shared_op::drop: return "drop";
    case shared_op::list_cells: return "cells";
  }
  return "unknown operation";
}

bool mutates(shared_op op) noexcept {
  switch (op) {
    case shared_op::store:
    case shared_op::exchange:
    case shared_op::compare_exchange:
    case shared_op::update:
    case shared_op::call:
    case shared_op::fetch_add:
    case shared_op::fetch_sub:
    case shared_op::map_set:
    case shared_op::map_erase:
    case shared_op::map_pop:
    case shared_op::vec_set:
    case shared_op::vec_append:
    case shared_op::vec_extend:
    case shared_op::vec_pop:
    case shared_op::vec_insert:
    case shared_op::vec_set_slice:
    case shared_op::vec_fill:
    case shared_op::clear:
      return true;
    default:
      return false;
  }
}

bool resizes(shared_op op) noexcept {
  switch (op) {
    case shared_op::vec_append:
    case shared_op::vec_extend:
    case shared_op::vec_pop:
    case shared_op::vec_insert:
    case shared_op::clear:
      return true;
    default:
      return false;
  }
}

std::string readable_type(const std::string& type_key) {
  int status = 0;
  char* name = abi::__cxa_demangle(type_key.c_str(), nullptr, nullptr,
                                   &status);
  if (status != 0 || name == nullptr)
    return type_key;
  std::string result{name};
  std::free(name);
  // The usual spellings, not the library's.
  for (auto [from, to] :
       {std::pair<std::string, std::string>{
          "std::__cxx11::basic_string<char, std::char_traits<char>, "
          "std::allocator<char> >",
          "std::string"},
        {"std::__cxx11::", "std::"}}) {
    for (size_t pos; (pos = result.find(from)) != std::string::npos;)
      result.replace(pos, from.size(), to);
  }
  return result;
}

bool register_shared_function(const char* name, shared_function fn) {
  auto& r = regs();
  std::lock_guard<std::mutex> guard{r.mtx};
  auto key = std::make_pair(std::string{name}, fn.node_type);
  if (!r.functions.emplace(key, std::move(fn)).second) {
    logger()->critical("the shared function '{}' is registered twice for {}",
                       name, readable_type(key.second));
    std::abort();
  }
  return true;
}

const shared_function* find_shared_function(const std::string& name,
                                             const std::string& node_type,
                                             std::string* other_types) {
  auto& r = regs();
  std::lock_guard<std::mutex> guard{r.mtx};
  auto i = r.functions.find(std::make_pair(name, node_type));
  if (i != r.functions.end())
    return &i->second;
  if (other_types != nullptr)
    for (auto j = r.functions.lower_bound(std::make_pair(name, std::string{}));
         j != r.functions.end() && j->first.first == name; ++j)
      *other_types += (other_types->empty() ? "" : ", ")
                      + readable_type(j->first.second);
  return nullptr;
}

bool register_cell_type(const char* type, cell_factory factory) {
  auto& r = regs();
  std::lock_guard<std::mutex> guard{r.mtx};
  r.cells.emplace(type, factory);
  return true;
}

cell_factory find_cell_type(const std::string& type) {
  auto& r = regs();
  std::lock_guard<std::mutex> guard{r.mtx};
  auto i = r.cells.find(type);
  return i == r.cells.end() ? nullptr : i->second;
}

void fail_type(const node_context& ctx, const std::string& actual) {
  throw shared_failure{errc::type_mismatch,
                       where(ctx) + " holds a " + readable_type(actual)
                         + ", not a " + readable_type(ctx.type)};
}

void fail_op(const node_context& ctx, const std::string& actual) {
  throw shared_failure{errc::invalid_argument,
                       std::string{to_string(ctx.op)} + " does not apply to a "
                         + readable_type(actual) + " (" + where(ctx) + ")"};
}

void fail_index(const node_context& ctx, uint64_t index, size_t size) {
  throw shared_failure{errc::index_out_of_range,
                       std::string{to_string(ctx.op)} + ": index "
                         + std::to_string(index) + " is out of range for "
                         + where(ctx) + " of " + std::to_string(size)
                         + " elements"};
}

void fail_key(const node_context& ctx, const std::string& key) {
  throw shared_failure{errc::key_not_found,
                       std::string{to_string(ctx.op)} + ": " + where(ctx)
                         + " has no key " + key};
}

void fail_path(const node_context& ctx, const std::string& actual) {
  throw shared_failure{errc::invalid_argument,
                       where(ctx) + ": a " + readable_type(actual)
                         + " has no elements to address"};
}

void fail_fixed(const node_context& ctx, size_t size) {
  throw shared_failure{errc::invalid_argument,
                       std::string{to_string(ctx.op)}
                         + " would change the length of array '" + ctx.cell
                         + "', fixed at " + std::to_string(size)};
}

void check_function(const node_context& ctx, const std::string& name,
                    const shared_function* fn, const std::string& others,
                    const std::string& args_type,
                    const std::string& result_type) {
  if (fn == nullptr && others.empty())
    throw shared_failure{errc::unknown_entry,
                         "no shared function or method is registered as '"
                           + name + "' (MULTIPROC_SHARED_FUNCTION)"};
  if (fn == nullptr)
    throw shared_failure{errc::type_mismatch,
                         "'" + name + "' applies to a " + others + ", but "
                           + where(ctx) + " holds a "
                           + readable_type(ctx.type)};
  if (fn->args_type != args_type)
    throw shared_failure{errc::type_mismatch,
                         "'" + name + "' takes the arguments "
                           + readable_type(fn->args_type)
                           + ", the call passed " + readable_type(args_type)};
  if (!result_type.empty() && fn->result_type != result_type)
    throw shared_failure{errc::type_mismatch,
                         "'" + name + "' returns a "
                           + readable_type(fn->result_type)
                           + ", the call expects a "
                           + readable_type(result_type)};
}

std::string begin_op(const cell_ref& ref, const char* type, shared_op op) {
  std::string body(shared_frame_prefix, '\0');
  body[0] = static_cast<char>(shared_frame::request);
  wire_output_archive ar{body};
  ar(ref.cell, ref.path, std::string{type}, static_cast<uint8_t>(op));
  return body;
}

size_t transaction_state::add(const cell_ref& ref, std::string body) {
  if (address.empty()) {
    address = ref.address;
    timeout = ref.timeout;
  } else if (address != ref.address && !error) {
    error = make_error(errc::invalid_argument,
                       "a transaction spans one owner, but cell '" + ref.cell
                         + "' belongs to another (" + ref.address + ", not "
                         + address + ")");
  }
  ops.emplace_back(body.substr(shared_frame_prefix));
  return ops.size() - 1;
}

} // namespace multiproc::detail
