#pragma once

/// Internals of the shared-state actor (shared_state.hpp): the operation
/// codes, the typed code that applies an operation to a node of a cell
/// inside the owner, and the registries of cell types and named functions.
/// docs/wire_format.md ("Shared state") specifies the frames.
///
/// The owner runs the same program as its clients, so every cell type a
/// client names was registered in the owner too: a handle template odr-uses
/// cell_type<T>::registered, whose initialization registers T at start-up in
/// every process of the program.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include <cereal/types/map.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/vector.hpp>

#include "multiproc/detail/wire_archive.hpp"
#include "multiproc/error.hpp"

namespace multiproc::detail {

// -- operation codes ----------------------------------------------------------

/// What an operation does to its node (a cell, or an element inside one).
enum class shared_op : uint8_t {
  // on any node
  load = 1,
  store,
  exchange,
  compare_exchange,
  update, // a registered function changes the node; result: the new value
  call,   // a registered function or method; result: what it returns
  // on arithmetic nodes
  fetch_add,
  fetch_sub,
  // on std::map nodes
  map_get,
  map_get_or,
  map_set,
  map_erase,
  map_contains,
  map_keys,
  map_items,
  map_pop,
  // on std::vector nodes
  vec_get,
  vec_set,
  vec_append,
  vec_extend,
  vec_pop,
  vec_insert,
  vec_slice,
  vec_set_slice,
  vec_fill,
  // on std::map and std::vector nodes
  size,
  clear,
  // on the owner itself (the cell name is the subject)
  create,
  drop,
  list_cells,
};

/// The name of an operation for error texts, e.g. "fetch_add".
const char* to_string(shared_op op) noexcept;

/// True if `op` may change its node.
bool mutates(shared_op op) noexcept;

/// True if `op` changes the length of a std::vector node.
bool resizes(shared_op op) noexcept;

/// Kinds of frames (their first byte).
enum class shared_frame : uint8_t {
  request = 1,     // client -> owner: one operation, answered by a reply
  post = 2,        // client -> owner: one operation, no reply unless it fails
  transaction = 3, // client -> owner: several operations, one reply
  sync = 4,        // client -> owner: answered once earlier posts are applied
  subscribe = 5,   // client -> owner: send a change frame on every change
  unsubscribe = 6, // client -> owner
  reply = 16,      // owner -> client
  post_error = 17, // owner -> client: a post failed
  change = 18,     // owner -> client: a subscribed cell's new value
};

/// Thrown by the typed code inside the owner; the owner turns it into an
/// error reply.
struct shared_failure : std::runtime_error {
  shared_failure(errc c, std::string text)
    : std::runtime_error(std::move(text)), code(c) {
  }
  errc code;
};

/// The demangled name of a type key (a mangled typeid name).
std::string readable_type(const std::string& type_key);

template <class T>
const char* type_key() {
  return typeid(T).name();
}

// -- named functions ----------------------------------------------------------

/// A function registered with MULTIPROC_SHARED_FUNCTION or a method with
/// MULTIPROC_SHARED_METHOD: called inside the owner on a node of type
/// `node_type`, with arguments decoded from the archive; it appends its
/// encoded result to the output (nothing for void).
struct shared_function {
  std::string node_type;
  std::string args_type;
  std::string result_type;
  std::function<void(void* node, wire_input_archive& args, std::string& out)>
    invoke;
};

/// Registers `fn` as `name` for nodes of fn.node_type (one name may serve
/// several types, as BaseManager.register does per class). A second
/// registration of the same name for the same type aborts the program.
bool register_shared_function(const char* name, shared_function fn);

/// The function `name` for nodes of type `node_type`; nullptr if there is
/// none. `other_types` gets the types it is registered for otherwise.
const shared_function* find_shared_function(const std::string& name,
                                             const std::string& node_type,
                                             std::string* other_types
                                             = nullptr);

template <class T>
void encode_to(const T& value, std::string& out) {
  wire_output_archive ar{out};
  ar(value);
}

template <class T>
T decode_from(wire_input_archive& in) {
  T value{};
  in(value);
  return value;
}

template <class F>
struct shared_fn_traits;

template <class R, class T, class... Args>
struct shared_fn_traits<R (*)(T&, Args...)> {
  using node = T;
  using result = R;
  using args = std::tuple<std::decay_t<Args>...>;
};

template <class R, class C, class... Args>
struct shared_fn_traits<R (C::*)(Args...)> {
  using node = C;
  using result = R;
  using args = std::tuple<std::decay_t<Args>...>;
};

template <class R, class C, class... Args>
struct shared_fn_traits<R (C::*)(Args...) const> {
  using node = C;
  using result = R;
  using args = std::tuple<std::decay_t<Args>...>;
};

template <class F>
bool register_shared_fn(const char* name, F fn) {
  using traits = shared_fn_traits<F>;
  using node = typename traits::node;
  using result = typename traits::result;
  using args = typename traits::args;
  shared_function entry;
  entry.node_type = type_key<node>();
  entry.args_type = type_key<args>();
  entry.result_type = type_key<result>();
  entry.invoke = [fn](void* ptr, wire_input_archive& in, std::string& out) {
    auto& obj = *static_cast<node*>(ptr);
    auto xs = decode_from<args>(in);
    auto call = [&](auto&&... ys) -> decltype(auto) {
      if constexpr (std::is_member_function_pointer<F>::value)
        return (obj.*fn)(std::move(ys)...);
      else
        return fn(obj, std::move(ys)...);
    };
    if constexpr (std::is_void<result>::value) {
      std::apply(call, std::move(xs));
    } else {
      result r = std::apply(call, std::move(xs));
      encode_to(r, out);
    }
  };
  return register_shared_function(name, std::move(entry));
}

// -- typed operations on nodes ------------------------------------------------

template <class T>
struct is_std_map : std::false_type {};

template <class K, class V, class C, class A>
struct is_std_map<std::map<K, V, C, A>> : std::true_type {};

template <class T>
struct is_std_vector : std::false_type {};

template <class T, class A>
struct is_std_vector<std::vector<T, A>> : std::true_type {};

template <class T, class = void>
struct has_equal : std::false_type {};

template <class T>
struct has_equal<T, std::void_t<decltype(std::declval<const T&>()
                                         == std::declval<const T&>())>>
  : std::true_type {};

/// Where an operation applies and what it may do there.
struct node_context {
  const std::string& cell;     // for error texts
  const std::string& type;     // the node type the client expects
  shared_op op;
  bool fixed_length;           // the root is an array: no resizing
  size_t depth = 0;
};

[[noreturn]] void fail_type(const node_context& ctx,
                            const std::string& actual);
[[noreturn]] void fail_op(const node_context& ctx, const std::string& actual);
[[noreturn]] void fail_index(const node_context& ctx, uint64_t index,
                             size_t size);
[[noreturn]] void fail_key(const node_context& ctx, const std::string& key);
[[noreturn]] void fail_path(const node_context& ctx,
                            const std::string& actual);
[[noreturn]] void fail_fixed(const node_context& ctx, size_t size);
void check_function(const node_context& ctx, const std::string& name,
                    const shared_function* fn, const std::string& others,
                    const std::string& args_type,
                    const std::string& result_type);

template <class K>
std::string key_text(const K& key) {
  if constexpr (std::is_same<K, std::string>::value)
    return "'" + key + "'";
  else if constexpr (std::is_arithmetic<K>::value)
    return std::to_string(key);
  else
    return "(a " + readable_type(type_key<K>()) + ")";
}

template <class T>
void apply_node(T& node, const std::string* path, const std::string* end,
                node_context& ctx, wire_input_archive& in, std::string& out);

/// Refuses a new value for an array (a fixed-length root) of another length.
template <class T>
void check_length(const T& node, const T& next, const node_context& ctx) {
  if constexpr (is_std_vector<T>::value) {
    if (ctx.fixed_length && ctx.depth == 0 && next.size() != node.size())
      fail_fixed(ctx, node.size());
  } else {
    (void) node, (void) next, (void) ctx;
  }
}

template <class T>
void apply_here(T& node, node_context& ctx, wire_input_archive& in,
                std::string& out) {
  using op = shared_op;
  if (ctx.type != type_key<T>())
    fail_type(ctx, type_key<T>());
  switch (ctx.op) {
    case op::load:
      encode_to(node, out);
      return;
    case op::store: {
      T next = decode_from<T>(in);
      check_length(node, next, ctx);
      node = std::move(next);
      return;
    }
    case op::exchange: {
      T next = decode_from<T>(in);
      check_length(node, next, ctx);
      encode_to(node, out);
      node = std::move(next);
      return;
    }
    case op::compare_exchange:
      if constexpr (has_equal<T>::value) {
        T expected = decode_from<T>(in);
        T desired = decode_from<T>(in);
        bool ok = node == expected;
        if (ok)
          check_length(node, desired, ctx);
        if (ok)
          node = std::move(desired);
        encode_to(std::make_pair(ok, node), out);
        return;
      } else {
        fail_op(ctx, type_key<T>());
      }
    case op::update:
    case op::call: {
      auto name = decode_from<std::string>(in);
      auto args_type = decode_from<std::string>(in);
      auto result_type = decode_from<std::string>(in);
      std::string others;
      auto* fn = find_shared_function(name, type_key<T>(), &others);
      check_function(ctx, name, fn, others, args_type, result_type);
      if constexpr (is_std_vector<T>::value) {
        if (ctx.fixed_length && ctx.depth == 0) {
          // An array's function must keep its length: undo it otherwise.
          T before = node;
          fn->invoke(&node, in, out);
          if (node.size() != before.size()) {
            auto size = before.size();
            node = std::move(before);
            fail_fixed(ctx, size);
          }
        } else {
          fn->invoke(&node, in, out);
        }
      } else {
        fn->invoke(&node, in, out);
      }
      if (ctx.op == op::update) {
        out.clear();
        encode_to(node, out);
      }
      return;
    }
    case op::fetch_add:
    case op::fetch_sub:
      if constexpr (std::is_arithmetic<T>::value
                    && !std::is_same<T, bool>::value) {
        T delta = decode_from<T>(in);
        encode_to(node, out);
        bool add = ctx.op == op::fetch_add;
        if constexpr (std::is_integral<T>::value) {
          // Integers wrap around, as std::atomic's fetch_add does (signed
          // overflow would be undefined behavior).
          using bits = std::make_unsigned_t<T>;
          auto x = static_cast<bits>(node);
          auto d = static_cast<bits>(delta);
          node = static_cast<T>(static_cast<bits>(add ? x + d : x - d));
        } else {
          node = add ? node + delta : node - delta;
        }
        return;
      } else {
        fail_op(ctx, type_key<T>());
      }
    default:
      break;
  }
  if constexpr (is_std_map<T>::value) {
    using key = typename T::key_type;
    using mapped = typename T::mapped_type;
    switch (ctx.op) {
      case op::map_get: {
        auto k = decode_from<key>(in);
        auto i = node.find(k);
        if (i == node.end())
          fail_key(ctx, key_text(k));
        encode_to(i->second, out);
        return;
      }
      case op::map_get_or: {
        auto k = decode_from<key>(in);
        auto fallback = decode_from<mapped>(in);
        auto i = node.find(k);
        encode_to(i == node.end() ? fallback : i->second, out);
        return;
      }
      case op::map_set: {
        auto k = decode_from<key>(in);
        node[std::move(k)] = decode_from<mapped>(in);
        return;
      }
      case op::map_erase: {
        auto k = decode_from<key>(in);
        encode_to(node.erase(k) != 0, out);
        return;
      }
      case op::map_contains: {
        auto k = decode_from<key>(in);
        encode_to(node.count(k) != 0, out);
        return;
      }
      case op::map_keys: {
        std::vector<key> keys;
        keys.reserve(node.size());
        for (auto& kv : node)
          keys.push_back(kv.first);
        encode_to(keys, out);
        return;
      }
      case op::map_items: {
        std::vector<std::pair<key, mapped>> items{node.begin(), node.end()};
        encode_to(items, out);
        return;
      }
      case op::map_pop: {
        auto k = decode_from<key>(in);
        auto i = node.find(k);
        if (i == node.end())
          fail_key(ctx, key_text(k));
        encode_to(i->second, out);
        node.erase(i);
        return;
      }
      case op::size:
        encode_to(static_cast<uint64_t>(node.size()), out);
        return;
      case op::clear:
        node.clear();
        return;
      default:
        break;
    }
  } else if constexpr (is_std_vector<T>::value) {
    using elem = typename T::value_type;
    if (ctx.fixed_length && ctx.depth == 0 && resizes(ctx.op))
      fail_fixed(ctx, node.size());
    auto index = [&](bool one_past_end = false) {
      auto i = decode_from<uint64_t>(in);
      if (i > node.size() || (i == node.size() && !one_past_end))
        fail_index(ctx, i, node.size());
      return static_cast<size_t>(i);
    };
    switch (ctx.op) {
      case op::vec_get:
        encode_to(node[index()], out);
        return;
      case op::vec_set: {
        auto i = index();
        node[i] = decode_from<elem>(in);
        return;
      }
      case op::vec_append:
        node.push_back(decode_from<elem>(in));
        return;
      case op::vec_extend: {
        auto xs = decode_from<std::vector<elem>>(in);
        node.insert(node.end(), std::make_move_iterator(xs.begin()),
                    std::make_move_iterator(xs.end()));
        return;
      }
      case op::vec_pop: {
        auto has_index = decode_from<bool>(in);
        if (node.empty())
          fail_index(ctx, 0, 0);
        size_t i = has_index ? index() : node.size() - 1;
        encode_to(node[i], out);
        node.erase(node.begin() + static_cast<std::ptrdiff_t>(i));
        return;
      }
      case op::vec_insert: {
        auto i = index(true);
        node.insert(node.begin() + static_cast<std::ptrdiff_t>(i),
                    decode_from<elem>(in));
        return;
      }
      case op::vec_slice: {
        auto first = decode_from<uint64_t>(in);
        auto last = decode_from<uint64_t>(in);
        if (first > last || last > node.size())
          fail_index(ctx, first > node.size() ? first : last, node.size());
        std::vector<elem> xs{node.begin() + static_cast<std::ptrdiff_t>(first),
                             node.begin() + static_cast<std::ptrdiff_t>(last)};
        encode_to(xs, out);
        return;
      }
      case op::vec_set_slice: {
        auto first = decode_from<uint64_t>(in);
        auto xs = decode_from<std::vector<elem>>(in);
        if (first > node.size() || xs.size() > node.size() - first)
          fail_index(ctx, first + xs.size(), node.size());
        std::move(xs.begin(), xs.end(),
                  node.begin() + static_cast<std::ptrdiff_t>(first));
        return;
      }
      case op::vec_fill: {
        auto x = decode_from<elem>(in);
        std::fill(node.begin(), node.end(), x);
        return;
      }
      case op::size:
        encode_to(static_cast<uint64_t>(node.size()), out);
        return;
      case op::clear:
        node.clear();
        return;
      default:
        break;
    }
  }
  fail_op(ctx, type_key<T>());
}

template <class T>
void apply_node(T& node, const std::string* path, const std::string* end,
                node_context& ctx, wire_input_archive& in, std::string& out) {
  if (path == end) {
    apply_here(node, ctx, in, out);
    return;
  }
  if constexpr (is_std_map<T>::value) {
    using key = typename T::key_type;
    wire_input_archive kin{*path};
    auto k = decode_from<key>(kin);
    auto i = node.find(k);
    if (i == node.end())
      fail_key(ctx, key_text(k));
    ++ctx.depth;
    apply_node(i->second, path + 1, end, ctx, in, out);
  } else if constexpr (is_std_vector<T>::value) {
    wire_input_archive kin{*path};
    auto i = decode_from<uint64_t>(kin);
    if (i >= node.size())
      fail_index(ctx, i, node.size());
    ++ctx.depth;
    apply_node(node[static_cast<size_t>(i)], path + 1, end, ctx, in, out);
  } else {
    fail_path(ctx, type_key<T>());
  }
}

// -- cells --------------------------------------------------------------------

/// A named cell inside the owner: a value of one type.
class shared_cell {
public:
  virtual ~shared_cell() = default;
  /// The type key of the value.
  virtual const char* type() const noexcept = 0;
  /// Applies one operation at `path`; throws shared_failure or
  /// wire_decode_error.
  virtual void apply(const std::vector<std::string>& path,
                     node_context& ctx, wire_input_archive& in,
                     std::string& out) = 0;
  /// Appends the encoded value.
  virtual void encode(std::string& out) const = 0;
  /// A copy (a transaction's backup).
  virtual std::unique_ptr<shared_cell> clone() const = 0;
  /// The number of elements of a std::vector value (fixed-length arrays).
  virtual size_t length() const noexcept = 0;
  bool fixed_length = false;
};

template <class T>
class typed_cell final : public shared_cell {
public:
  explicit typed_cell(T value) : value_(std::move(value)) {
  }

  const char* type() const noexcept override {
    return type_key<T>();
  }

  void apply(const std::vector<std::string>& path, node_context& ctx,
             wire_input_archive& in, std::string& out) override {
    ctx.fixed_length = fixed_length;
    apply_node(value_, path.data(), path.data() + path.size(), ctx, in, out);
  }

  void encode(std::string& out) const override {
    encode_to(value_, out);
  }

  std::unique_ptr<shared_cell> clone() const override {
    auto copy = std::make_unique<typed_cell<T>>(value_);
    copy->fixed_length = fixed_length;
    return copy;
  }

  size_t length() const noexcept override {
    if constexpr (is_std_vector<T>::value)
      return value_.size();
    else
      return 0;
  }

private:
  T value_;
};

/// Makes a cell from its encoded initial value.
using cell_factory = std::unique_ptr<shared_cell> (*)(wire_input_archive& in);

bool register_cell_type(const char* type, cell_factory factory);
cell_factory find_cell_type(const std::string& type);

template <class T>
std::unique_ptr<shared_cell> make_cell(wire_input_archive& in) {
  return std::make_unique<typed_cell<T>>(decode_from<T>(in));
}

/// Registers T as a cell type in every process of the program (see the
/// top of this file).
template <class T>
struct cell_type {
  static inline const bool registered
    = register_cell_type(type_key<T>(), &make_cell<T>);
};

} // namespace multiproc::detail
