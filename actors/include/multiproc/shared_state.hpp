#pragma once

/// \file
/// The shared-state actor: named cells owned by one actor, used from any
/// process. It stands in for Python's Value, Array and Manager.
///
///     auto state = multiproc::shared_state::start();         // the owner
///     auto counter = state->value<int64_t>("counter", 0);    // a handle
///     counter->fetch_add(1);                                 // atomic
///     // pass `*counter` to a worker inside a message, or at spawn; there:
///     counter.add(1);            // fire-and-forget, batched
///     counter.sync();            // my posts are applied
///
/// Every operation is a message to the owner, which applies one operation
/// at a time to the cells it owns: every operation, and every transaction,
/// is atomic with no user lock. A cell holds one value of any Cereal-
/// serializable type; value<T>, array<T>, list<T> and dict<K, V> are typed
/// handles to it, and at() gives a handle to an element nested inside
/// (a path), so nested changes happen inside the owner and are never lost.
///
/// The owner runs on a thread of the process that calls start() (the
/// default) or in a child process of its own (shared_state_options). It
/// listens on an abstract Unix socket (its address; only processes of the
/// same user may connect). Handles carry the address and are Cereal-
/// serializable; they connect on first use, one connection per thread.
///
/// Plain code uses the blocking calls, which wait at most the handle's
/// timeout and return caf::expected<R>; those without a result (store, set,
/// append, clear, call<void>, ...), the posts and sync() return a caf::error
/// (`if (auto err = d.set(k, v))` is the failure). Actors use `handle.from(self)`, whose calls
/// return a pending<R> to complete with .then(on_value, on_error), as a CAF
/// request does, and which can subscribe to a cell's changes.
///
/// Thread safety: handles are values; copies may be used from any number
/// of threads. A thread's calls reach the owner in the order they were made
/// (posts included); calls of different threads are not ordered.
///
/// Lifetimes: handles do not keep the owner alive. The shared_state object
/// is the owner: its destructor stops it (and its process); from then on,
/// or once the owner's process or thread ends, the handles' calls fail with
/// errc::owner_died.
/// docs/shared_state.md is the guide; docs/wire_format.md the frames.

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_cast.hpp>
#include <caf/actor_system.hpp>
#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/expected.hpp>
#include <caf/message.hpp>

#include "multiproc/detail/shared_ops.hpp"
#include "multiproc/message_registry.hpp"
#include "multiproc/network.hpp"
#include "multiproc/process.hpp"

namespace multiproc {

/// Options of shared_state::start(); one comment per field.
struct shared_state_options {
  /// Run the owner in a child process of its own instead of on a thread of
  /// this process. If that process dies, clients get errc::owner_died and
  /// the cells are lost (docs/shared_state.md: restarting it).
  bool own_process = false;
  /// The abstract socket name to listen on; empty: a unique one.
  std::string address;
  /// The timeout of every blocking call made through the handles.
  std::chrono::milliseconds timeout{10000};
  /// How long start() waits for an owner process to listen.
  std::chrono::milliseconds start_timeout{10000};
  /// How to start the owner process (own_process only).
  process_options process;
};

/// The message an actor receives for each change of a cell it subscribed
/// to: (shared_changed_atom, cell name, the cell's new value).
using shared_changed_atom = caf::atom_constant<caf::atom("changed")>;

namespace detail {

/// What a handle points to: a node of a cell of an owner.
struct cell_ref {
  std::string address;
  std::string cell;
  /// Encoded keys (std::map) and indices (uint64_t, std::vector) from the
  /// cell's value down to the node.
  std::vector<std::string> path;
  std::chrono::milliseconds timeout{10000};

  template <class Archive>
  void serialize(Archive& ar) {
    int64_t ms = timeout.count();
    ar(address, cell, path, ms);
    timeout = std::chrono::milliseconds{ms};
  }
};

/// Space at the front of a frame for its kind and id.
constexpr size_t shared_frame_prefix = 9;

/// Starts a frame for operation `op` on `ref` at a node of type `type`.
std::string begin_op(const cell_ref& ref, const char* type, shared_op op);

template <class... Args>
std::string make_op(const cell_ref& ref, const char* type, shared_op op,
                    const Args&... args) {
  auto body = begin_op(ref, type, op);
  wire_output_archive ar{body};
  (ar(args), ...);
  return body;
}

template <class R>
caf::expected<R> decode_result(std::string_view bytes) {
  if constexpr (std::is_void<R>::value) {
    return caf::expected<void>{};
  } else {
    try {
      wire_input_archive in{bytes};
      return decode_from<R>(in);
    } catch (const std::exception& e) {
      return make_error(errc::decode_failed,
                        "the owner's reply is not a "
                          + readable_type(type_key<R>()) + ": " + e.what());
    }
  }
}

/// Sends a request frame over this thread's connection to the owner and
/// waits for the reply's payload.
caf::expected<std::string> blocking_call(const cell_ref& ref,
                                         std::string body);

/// Queues a post frame on this thread's connection (written within about
/// a millisecond, or at the next call or sync of this thread).
caf::error blocking_post(const cell_ref& ref, std::string body);

/// Writes this thread's queued posts to `address` and waits until the owner
/// applied them; returns the first error of a post since the last sync.
caf::error blocking_sync(const std::string& address,
                         std::chrono::milliseconds timeout);

/// Blocking calls: results are caf::expected<R>, or a caf::error for calls
/// without a result (as posts and sync).
struct blocking_exec {
  template <class R>
  using result = std::conditional_t<std::is_void<R>::value, caf::error,
                                    caf::expected<R>>;

  template <class R>
  result<R> call(const cell_ref& ref, std::string body) const {
    auto reply = blocking_call(ref, std::move(body));
    if constexpr (std::is_void<R>::value) {
      if (!reply)
        return std::move(reply.error());
      return caf::none;
    } else {
      if (!reply)
        return std::move(reply.error());
      return decode_result<R>(*reply);
    }
  }

  caf::error post(const cell_ref& ref, std::string body) const {
    return blocking_post(ref, std::move(body));
  }

  caf::error sync(const cell_ref& ref) const {
    return blocking_sync(ref.address, ref.timeout);
  }
};

// -- the actor side -----------------------------------------------------------

/// A frame for the per-system client actor of an owner.
struct shared_request_msg {
  std::string body;
};

/// A post for the client actor (no reply).
struct shared_post_msg {
  std::string body;
};

/// The payload of a reply.
struct shared_reply_msg {
  std::string payload;
};

/// Subscribes `subscriber` to `cell`; `decode` makes its message from the
/// encoded value.
struct shared_subscribe_msg {
  std::string cell;
  caf::actor subscriber;
  caf::message (*decode)(const std::string& cell, std::string_view bytes);
  bool subscribe = true;
};

/// The client actor of `address` in `sys` (one per system and address,
/// spawned on first use).
caf::actor client_actor(caf::actor_system& sys, const std::string& address);

template <class T>
caf::message decode_change(const std::string& cell, std::string_view bytes) {
  wire_input_archive in{bytes};
  return caf::make_message(shared_changed_atom::value, cell,
                           decode_from<T>(in));
}

} // namespace detail
} // namespace multiproc

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(multiproc::detail::shared_request_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(multiproc::detail::shared_post_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(multiproc::detail::shared_reply_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(multiproc::detail::shared_subscribe_msg)

namespace multiproc {

/// The outcome of a call made from an actor: complete it with
/// .then(on_value, on_error), exactly once, as a CAF request.
template <class R, class Self>
class pending {
public:
  /// Made by a handle's call from(self); `body` is the encoded operation,
  /// sent to the owner's client actor `client` when then() is called.
  pending(Self* self, caf::actor client, std::chrono::milliseconds timeout,
          std::string body)
    : self_(self),
      client_(std::move(client)),
      timeout_(timeout),
      body_(std::move(body)) {
  }

  /// `on_value` takes the result (nothing for void), `on_error` a
  /// caf::error (the owner's, timeout, or owner_died).
  template <class F, class G>
  void then(F on_value, G on_error) {
    auto fail = on_error;
    self_
      ->request(client_, timeout_, detail::shared_request_msg{std::move(body_)})
      .then(
        [on_value, on_error](detail::shared_reply_msg& reply) mutable {
          auto x = detail::decode_result<R>(reply.payload);
          if (!x) {
            caf::error err = std::move(x.error());
            on_error(err);
            return;
          }
          if constexpr (std::is_void<R>::value)
            on_value();
          else
            on_value(std::move(*x));
        },
        [fail](caf::error& err) mutable { fail(err); });
  }

private:
  Self* self_;
  caf::actor client_;
  std::chrono::milliseconds timeout_;
  std::string body_;
};

namespace detail {

/// Calls from an actor: results are pending<R>.
template <class Self>
struct actor_exec {
  Self* self;
  caf::actor client; // the client actor of the owner (kept alive)

  actor_exec() = default;
  actor_exec(Self* s, const std::string& address)
    : self(s), client(client_actor(s->system(), address)) {
  }

  template <class R>
  using result = pending<R, Self>;

  template <class R>
  pending<R, Self> call(const cell_ref& ref, std::string body) const {
    return {self, client, ref.timeout, std::move(body)};
  }

  caf::error post(const cell_ref& ref, std::string body) const {
    body[0] = static_cast<char>(shared_frame::post);
    self->send(client, shared_post_msg{std::move(body)});
    return caf::none;
  }

  pending<void, Self> sync(const cell_ref& ref) const {
    std::string body(shared_frame_prefix, '\0');
    body[0] = static_cast<char>(shared_frame::sync);
    return {self, client, ref.timeout, std::move(body)};
  }
};

class transaction_state;

} // namespace detail

/// The place of an operation's result in a transaction's results.
template <class R>
struct tx_slot {
  /// The operation's position in its transaction (0 is the first).
  size_t index = 0;
};

/// The results of a committed transaction, one per operation.
class transaction_results {
public:
  /// The encoded results as the owner sent them, in operation order.
  explicit transaction_results(std::vector<std::string> results)
    : results_(std::move(results)) {
  }

  /// The result of the operation at `slot`; decode_failed if it is not an R.
  template <class R>
  caf::expected<R> get(tx_slot<R> slot) const {
    if (slot.index >= results_.size())
      return make_error(errc::invalid_argument,
                        "no operation " + std::to_string(slot.index)
                          + " in a transaction of "
                          + std::to_string(results_.size()));
    return detail::decode_result<R>(results_[slot.index]);
  }

  /// The number of results: the number of operations committed.
  size_t size() const noexcept {
    return results_.size();
  }

private:
  std::vector<std::string> results_;
};

namespace detail {

/// Calls inside a transaction: results are tx_slot<R>.
struct tx_exec {
  transaction_state* tx;

  template <class R>
  using result = tx_slot<R>;

  template <class R>
  tx_slot<R> call(const cell_ref& ref, std::string body) const;

  tx_slot<void> post(const cell_ref& ref, std::string body) const {
    return call<void>(ref, std::move(body));
  }
};

class transaction_state {
public:
  size_t add(const cell_ref& ref, std::string body);
  std::string address;
  std::chrono::milliseconds timeout{10000};
  std::vector<std::string> ops;
  caf::error error;
};

template <class R>
tx_slot<R> tx_exec::call(const cell_ref& ref, std::string body) const {
  return {tx->add(ref, std::move(body))};
}

template <class T, class Exec>
class basic_node;

} // namespace detail

template <class T, class Exec>
class basic_value;
template <class T, class Exec>
class basic_list;
template <class T, class Exec>
class basic_array;
template <class K, class V, class Exec>
class basic_dict;

namespace detail {

template <class T, class Exec>
struct node_handle {
  using type = basic_value<T, Exec>;
};

template <class T, class A, class Exec>
struct node_handle<std::vector<T, A>, Exec> {
  using type = basic_list<T, Exec>;
};

template <class K, class V, class C, class A, class Exec>
struct node_handle<std::map<K, V, C, A>, Exec> {
  using type = basic_dict<K, V, Exec>;
};

/// The handle type for a node of type T (dict for maps, list for vectors,
/// value otherwise).
template <class T, class Exec>
using node_handle_t = typename node_handle<T, Exec>::type;

/// What every handle has: its reference, its executor, and the operations
/// on any node.
template <class T, class Exec>
class basic_node {
public:
  basic_node() = default;
  basic_node(cell_ref ref, Exec exec)
    : ref_(std::move(ref)), exec_(std::move(exec)) {
    (void) cell_type<T>::registered;
  }

  /// The whole node's value (a snapshot).
  auto load() const {
    return run<T>(shared_op::load);
  }

  /// Replaces the node's value.
  auto store(const T& x) const {
    return run<void>(shared_op::store, x);
  }

  /// Replaces the node's value without waiting (a post).
  auto post_store(const T& x) const {
    return post(shared_op::store, x);
  }

  /// Replaces the value and returns the one before.
  auto exchange(const T& x) const {
    return run<T>(shared_op::exchange, x);
  }

  /// If the value equals `expected`, replaces it with `desired`. Returns
  /// (whether it did, the value now).
  auto compare_exchange(const T& expected, const T& desired) const {
    return run<std::pair<bool, T>>(shared_op::compare_exchange, expected,
                                   desired);
  }

  /// Applies the function registered as `name` (MULTIPROC_SHARED_FUNCTION,
  /// taking a T& first) inside the owner, atomically. Returns the new
  /// value. Errors: unknown_entry, type_mismatch (naming both types).
  template <class... Args>
  auto update(const std::string& name, const Args&... args) const {
    return run<T>(shared_op::update, name, args_type<Args...>(),
                  std::string{}, std::tuple<std::decay_t<Args>...>{args...});
  }

  /// update() without waiting for the result (a post).
  template <class... Args>
  auto post_update(const std::string& name, const Args&... args) const {
    return post(shared_op::update, name, args_type<Args...>(), std::string{},
                std::tuple<std::decay_t<Args>...>{args...});
  }

  /// Calls the function or method registered as `name`
  /// (MULTIPROC_SHARED_FUNCTION, MULTIPROC_SHARED_METHOD) on the node
  /// inside the owner and returns its result, an R.
  template <class R, class... Args>
  auto call(const std::string& name, const Args&... args) const {
    return run<R>(shared_op::call, name, args_type<Args...>(),
                  std::string{type_key<R>()},
                  std::tuple<std::decay_t<Args>...>{args...});
  }

  /// Waits until this thread's (or actor's) earlier posts to the owner are
  /// applied; returns the first error of one of them since the last sync.
  auto sync() const {
    return exec_.sync(ref_);
  }

  /// Subscribes the actor of from(self) to changes of this cell: it
  /// receives (shared_changed_atom, cell name, T) after each operation that
  /// may have changed it. Only on a whole cell (not at()).
  template <class E = Exec>
  auto subscribe() const -> decltype(std::declval<E>().self, void()) {
    auto* self = exec_.self;
    self->send(exec_.client,
               shared_subscribe_msg{ref_.cell,
                                    caf::actor_cast<caf::actor>(self),
                                    &decode_change<T>, true});
  }

  /// Ends a subscription of the actor of from(self).
  template <class E = Exec>
  auto unsubscribe() const -> decltype(std::declval<E>().self, void()) {
    auto* self = exec_.self;
    self->send(exec_.client,
               shared_subscribe_msg{ref_.cell,
                                    caf::actor_cast<caf::actor>(self),
                                    nullptr, false});
  }

  /// The cell's name.
  const std::string& cell() const noexcept {
    return ref_.cell;
  }

  /// The owner's address.
  const std::string& address() const noexcept {
    return ref_.address;
  }

  /// The timeout of this handle's blocking calls.
  std::chrono::milliseconds timeout() const noexcept {
    return ref_.timeout;
  }

  const cell_ref& ref() const noexcept {
    return ref_;
  }

  template <class Archive>
  void serialize(Archive& ar) {
    ar(ref_);
  }

protected:
  template <class... Args>
  static std::string args_type() {
    return type_key<std::tuple<std::decay_t<Args>...>>();
  }

  template <class R, class... Args>
  auto run(shared_op op, const Args&... args) const {
    return exec_.template call<R>(ref_,
                                  make_op(ref_, type_key<T>(), op, args...));
  }

  template <class... Args>
  auto post(shared_op op, const Args&... args) const {
    auto body = make_op(ref_, type_key<T>(), op, args...);
    return exec_.post(ref_, std::move(body));
  }

  template <class U, class Key>
  node_handle_t<U, Exec> child(const Key& key) const {
    auto ref = ref_;
    std::string bytes;
    encode_to(key, bytes);
    ref.path.push_back(std::move(bytes));
    return node_handle_t<U, Exec>{std::move(ref), exec_};
  }

  cell_ref ref_;
  Exec exec_;
};

} // namespace detail

/// A handle to a node holding one T. Arithmetic T adds fetch_add/fetch_sub
/// and their posts add/sub.
template <class T, class Exec = detail::blocking_exec>
class basic_value : public detail::basic_node<T, Exec> {
public:
  using detail::basic_node<T, Exec>::basic_node;

  /// Adds `delta` and returns the value before.
  auto fetch_add(const T& delta) const {
    static_assert(std::is_arithmetic<T>::value, "fetch_add needs a number");
    return this->template run<T>(detail::shared_op::fetch_add, delta);
  }

  /// Subtracts `delta` and returns the value before.
  auto fetch_sub(const T& delta) const {
    static_assert(std::is_arithmetic<T>::value, "fetch_sub needs a number");
    return this->template run<T>(detail::shared_op::fetch_sub, delta);
  }

  /// Adds `delta` without waiting (a post): batched, for throughput.
  auto add(const T& delta) const {
    static_assert(std::is_arithmetic<T>::value, "add needs a number");
    return this->post(detail::shared_op::fetch_add, delta);
  }

  /// Subtracts `delta` without waiting (a post).
  auto sub(const T& delta) const {
    static_assert(std::is_arithmetic<T>::value, "sub needs a number");
    return this->post(detail::shared_op::fetch_sub, delta);
  }

  /// The same handle for calls from an actor.
  template <class Self>
  basic_value<T, detail::actor_exec<Self>> from(Self* self) const {
    return {this->ref_, detail::actor_exec<Self>{self, this->ref_.address}};
  }
};

/// Operations of list<T> and array<T> (a std::vector<T> node).
template <class T, class Exec>
class basic_sequence : public detail::basic_node<std::vector<T>, Exec> {
public:
  using detail::basic_node<std::vector<T>, Exec>::basic_node;
  /// The operation codes of the wire format (detail::shared_op).
  using op = detail::shared_op;

  /// The number of elements.
  auto size() const {
    return this->template run<uint64_t>(op::size);
  }

  /// The element at `i`; index_out_of_range past the end.
  auto get(uint64_t i) const {
    return this->template run<T>(op::vec_get, i);
  }

  /// Replaces the element at `i`.
  auto set(uint64_t i, const T& x) const {
    return this->template run<void>(op::vec_set, i, x);
  }

  /// set() without waiting (a post).
  auto post_set(uint64_t i, const T& x) const {
    return this->post(op::vec_set, i, x);
  }

  /// The elements [first, last).
  auto slice(uint64_t first, uint64_t last) const {
    return this->template run<std::vector<T>>(op::vec_slice, first, last);
  }

  /// Replaces the elements from `first` on with `xs`.
  auto set_slice(uint64_t first, const std::vector<T>& xs) const {
    return this->template run<void>(op::vec_set_slice, first, xs);
  }

  /// Sets every element to `x`.
  auto fill(const T& x) const {
    return this->template run<void>(op::vec_fill, x);
  }

  /// A copy of all elements.
  auto snapshot() const {
    return this->load();
  }

  /// A handle to the element at `i` (e.g. at(i).fetch_add(1), atomic).
  auto at(uint64_t i) const {
    return this->template child<T>(i);
  }
};

/// A handle to a fixed-length sequence of T (Python's Array).
template <class T, class Exec = detail::blocking_exec>
class basic_array : public basic_sequence<T, Exec> {
public:
  using basic_sequence<T, Exec>::basic_sequence;

  /// Adds `delta` to the element at `i` and returns the value before.
  auto fetch_add(uint64_t i, const T& delta) const {
    return this->at(i).fetch_add(delta);
  }

  /// Adds `delta` to the element at `i` without waiting (a post).
  auto add(uint64_t i, const T& delta) const {
    return this->at(i).add(delta);
  }

  /// The same handle for calls from an actor (see basic_value::from()).
  template <class Self>
  basic_array<T, detail::actor_exec<Self>> from(Self* self) const {
    return {this->ref_, detail::actor_exec<Self>{self, this->ref_.address}};
  }
};

/// A handle to a list of T (Python's Manager().list()).
template <class T, class Exec = detail::blocking_exec>
class basic_list : public basic_sequence<T, Exec> {
public:
  using basic_sequence<T, Exec>::basic_sequence;
  /// The operation codes of the wire format (detail::shared_op).
  using op = detail::shared_op;

  /// Appends `x`.
  auto append(const T& x) const {
    return this->template run<void>(op::vec_append, x);
  }

  /// append() without waiting (a post).
  auto post_append(const T& x) const {
    return this->post(op::vec_append, x);
  }

  /// Appends every element of `xs`.
  auto extend(const std::vector<T>& xs) const {
    return this->template run<void>(op::vec_extend, xs);
  }

  /// Removes and returns the last element; index_out_of_range if empty.
  auto pop() const {
    return this->template run<T>(op::vec_pop, false);
  }

  /// Removes and returns the element at `i`.
  auto pop(uint64_t i) const {
    return this->template run<T>(op::vec_pop, true, i);
  }

  /// Inserts `x` before position `i` (i == size() appends).
  auto insert(uint64_t i, const T& x) const {
    return this->template run<void>(op::vec_insert, i, x);
  }

  /// Removes every element.
  auto clear() const {
    return this->template run<void>(op::clear);
  }

  /// The same handle for calls from an actor (see basic_value::from()).
  template <class Self>
  basic_list<T, detail::actor_exec<Self>> from(Self* self) const {
    return {this->ref_, detail::actor_exec<Self>{self, this->ref_.address}};
  }
};

/// A handle to a dictionary (Python's Manager().dict()); keys are ordered.
template <class K, class V, class Exec = detail::blocking_exec>
class basic_dict : public detail::basic_node<std::map<K, V>, Exec> {
public:
  using detail::basic_node<std::map<K, V>, Exec>::basic_node;
  /// The operation codes of the wire format (detail::shared_op).
  using op = detail::shared_op;

  /// The value of `key`; key_not_found (naming it) if there is none.
  auto get(const K& key) const {
    return this->template run<V>(op::map_get, key);
  }

  /// The value of `key`, or `fallback` if there is none.
  auto get(const K& key, const V& fallback) const {
    return this->template run<V>(op::map_get_or, key, fallback);
  }

  /// Sets `key` to `x`.
  auto set(const K& key, const V& x) const {
    return this->template run<void>(op::map_set, key, x);
  }

  /// set() without waiting (a post).
  auto post_set(const K& key, const V& x) const {
    return this->post(op::map_set, key, x);
  }

  /// Removes `key`; true if it was there.
  auto erase(const K& key) const {
    return this->template run<bool>(op::map_erase, key);
  }

  /// erase() without waiting (a post).
  auto post_erase(const K& key) const {
    return this->post(op::map_erase, key);
  }

  /// True if `key` is there.
  auto contains(const K& key) const {
    return this->template run<bool>(op::map_contains, key);
  }

  /// Removes `key` and returns its value; key_not_found if there is none.
  auto pop(const K& key) const {
    return this->template run<V>(op::map_pop, key);
  }

  /// The number of entries.
  auto size() const {
    return this->template run<uint64_t>(op::size);
  }

  /// The keys, in order (a snapshot).
  auto keys() const {
    return this->template run<std::vector<K>>(op::map_keys);
  }

  /// The entries, in key order (a snapshot).
  auto items() const {
    return this->template run<std::vector<std::pair<K, V>>>(op::map_items);
  }

  /// Removes every entry.
  auto clear() const {
    return this->template run<void>(op::clear);
  }

  /// A copy of the whole dictionary.
  auto snapshot() const {
    return this->load();
  }

  /// A handle to the value of `key`, for operations inside it (a nested
  /// dict, list or value): d.at("a").at("b").store(1) changes the owner's
  /// copy. Operations fail with key_not_found while `key` is missing.
  auto at(const K& key) const {
    return this->template child<V>(key);
  }

  /// The same handle for calls from an actor (see basic_value::from()).
  template <class Self>
  basic_dict<K, V, detail::actor_exec<Self>> from(Self* self) const {
    return {this->ref_, detail::actor_exec<Self>{self, this->ref_.address}};
  }
};

/// A handle to a cell holding one T (Python's Value).
template <class T>
using value = basic_value<T>;
/// A handle to a fixed-length sequence of T (Python's Array).
template <class T>
using array = basic_array<T>;
/// A handle to a growable sequence of T (a Manager's list()).
template <class T>
using list = basic_list<T>;
/// A handle to a map from K to V (a Manager's dict()).
template <class K, class V>
using dict = basic_dict<K, V>;

/// A client of an owner: makes handles to its cells (creating them on first
/// use). Copyable and Cereal-serializable; shared_state (the owner) is one.
class shared_client {
public:
  /// A client of no owner: every call fails until it is assigned one.
  shared_client() = default;
  /// A client of the owner on `address` whose handles' blocking calls wait
  /// at most `timeout` (connect() says the same).
  shared_client(std::string address, std::chrono::milliseconds timeout)
    : address_(std::move(address)), timeout_(timeout) {
  }

  /// A client of the owner listening on `address` (another process's
  /// shared_state::address()). Connects on first use.
  static shared_client connect(std::string address,
                               std::chrono::milliseconds timeout
                               = std::chrono::milliseconds{10000}) {
    return {std::move(address), timeout};
  }

  /// A handle to the cell `name` holding a T, created with `initial` if it
  /// does not exist. type_mismatch if it exists with another type.
  template <class T>
  caf::expected<::multiproc::value<T>> value(const std::string& name,
                                             T initial = T{}) const {
    return make<::multiproc::value<T>, T>(name, std::move(initial), false);
  }

  /// value() for a user's class (methods: MULTIPROC_SHARED_METHOD).
  template <class T>
  caf::expected<::multiproc::value<T>> object(const std::string& name,
                                              T initial = T{}) const {
    return value<T>(name, std::move(initial));
  }

  /// A fixed-length array of `length` elements, each `fill` at first.
  template <class T>
  caf::expected<::multiproc::array<T>> array(const std::string& name,
                                             size_t length,
                                             T fill = T{}) const {
    return make<::multiproc::array<T>, std::vector<T>>(
      name, std::vector<T>(length, fill), true);
  }

  /// A list, with `initial` elements if it is created.
  template <class T>
  caf::expected<::multiproc::list<T>> list(const std::string& name,
                                           std::vector<T> initial = {}) const {
    return make<::multiproc::list<T>, std::vector<T>>(name, std::move(initial),
                                                      false);
  }

  /// A dictionary, with `initial` entries if it is created.
  template <class K, class V>
  caf::expected<::multiproc::dict<K, V>>
  dict(const std::string& name, std::map<K, V> initial = {}) const {
    return make<::multiproc::dict<K, V>, std::map<K, V>>(
      name, std::move(initial), false);
  }

  /// The names of all cells (a snapshot).
  caf::expected<std::vector<std::string>> cells() const;

  /// Removes the cell `name`; key_not_found if there is none.
  caf::error drop(const std::string& name) const;

  /// Waits until this thread's posts to the owner are applied (see
  /// basic_node::sync()).
  caf::error sync() const {
    return detail::blocking_sync(address_, timeout_);
  }

  /// The owner's address (pass it to connect() in another process).
  const std::string& address() const noexcept {
    return address_;
  }

  /// The timeout of the blocking calls of this client and its handles.
  std::chrono::milliseconds timeout() const noexcept {
    return timeout_;
  }

  /// Cereal: the address and the timeout, so a client sent to a worker
  /// reaches the same owner.
  template <class Archive>
  void serialize(Archive& ar) {
    int64_t ms = timeout_.count();
    ar(address_, ms);
    timeout_ = std::chrono::milliseconds{ms};
  }

protected:
  /// Asks the owner to create cell `name` of type key `type` holding the
  /// encoded `initial`, unless it exists with that type (type_mismatch if
  /// with another).
  caf::error create(const std::string& name, const char* type,
                    bool fixed_length, const std::string& initial) const;

  /// create() for a T, then a Handle to the cell (encode_failed if
  /// `initial` cannot be encoded).
  template <class Handle, class T>
  caf::expected<Handle> make(const std::string& name, T initial,
                             bool fixed_length) const {
    (void) detail::cell_type<T>::registered;
    std::string bytes;
    try {
      detail::encode_to(initial, bytes);
    } catch (const std::exception& e) {
      return make_error(errc::encode_failed,
                        "cannot encode the initial value of cell '" + name
                          + "': " + e.what());
    }
    if (auto err = create(name, detail::type_key<T>(), fixed_length, bytes))
      return err;
    return Handle{detail::cell_ref{address_, name, {}, timeout_},
                  detail::blocking_exec{}};
  }

  std::string address_;                      ///< The owner's socket name.
  std::chrono::milliseconds timeout_{10000}; ///< Of every blocking call.
};

/// A namespace: named fields of different types (Python's
/// Manager().Namespace()). Field `x` of namespace `ns` is the cell "ns.x";
/// a transaction may span fields.
class shared_namespace {
public:
  /// A namespace of no owner (assign one before use).
  shared_namespace() = default;
  /// The namespace `name` of `client`'s owner (as make_namespace()).
  shared_namespace(shared_client client, std::string name)
    : client_(std::move(client)), name_(std::move(name)) {
  }

  /// The field `field` holding a T, created with `initial` if missing.
  template <class T>
  caf::expected<value<T>> field(const std::string& field,
                                T initial = T{}) const {
    return client_.value<T>(name_ + "." + field, std::move(initial));
  }

  /// A list field.
  template <class T>
  caf::expected<list<T>> list(const std::string& field,
                              std::vector<T> initial = {}) const {
    return client_.list<T>(name_ + "." + field, std::move(initial));
  }

  /// A dictionary field.
  template <class K, class V>
  caf::expected<dict<K, V>> dict(const std::string& field,
                                 std::map<K, V> initial = {}) const {
    return client_.dict<K, V>(name_ + "." + field, std::move(initial));
  }

  /// The names of the fields (without the namespace's prefix).
  caf::expected<std::vector<std::string>> fields() const;

  /// The namespace's name, the prefix of its cells' names.
  const std::string& name() const noexcept {
    return name_;
  }

  /// Cereal: the client and the name; a worker that receives it reaches
  /// the same fields.
  template <class Archive>
  void serialize(Archive& ar) {
    ar(client_, name_);
  }

private:
  shared_client client_;
  std::string name_;
};

/// Several operations applied atomically, in order, by one owner: no other
/// operation sees a state in between, and if one fails, the ones before it
/// are undone and commit() fails naming it.
///
///     multiproc::transaction tx;
///     auto before = tx(counter).fetch_add(1);     // a tx_slot<int64_t>
///     tx(d).set("last", 7);
///     auto results = tx.commit();                 // caf::expected
///     int64_t x = *results->get(before);
///
/// A transaction copies each cell that one of its operations may change
/// (its undo record). Not thread-safe: one thread builds and commits it.
class transaction {
public:
  transaction() : state_(std::make_unique<detail::transaction_state>()) {
  }

  /// The handle `h`, whose operations are added to this transaction.
  template <class T, class E>
  basic_value<T, detail::tx_exec> operator()(const basic_value<T, E>& h) {
    return {h.ref(), detail::tx_exec{state_.get()}};
  }

  /// The handle `h`, whose operations are added to this transaction.
  template <class T, class E>
  basic_array<T, detail::tx_exec> operator()(const basic_array<T, E>& h) {
    return {h.ref(), detail::tx_exec{state_.get()}};
  }

  /// The handle `h`, whose operations are added to this transaction.
  template <class T, class E>
  basic_list<T, detail::tx_exec> operator()(const basic_list<T, E>& h) {
    return {h.ref(), detail::tx_exec{state_.get()}};
  }

  /// The handle `h`, whose operations are added to this transaction.
  template <class K, class V, class E>
  basic_dict<K, V, detail::tx_exec> operator()(const basic_dict<K, V, E>& h) {
    return {h.ref(), detail::tx_exec{state_.get()}};
  }

  /// The number of operations so far.
  size_t size() const noexcept {
    return state_->ops.size();
  }

  /// Sends the operations and waits for their results. Errors: the failing
  /// operation's (its text names it and its position), invalid_argument
  /// (handles of different owners), timeout, owner_died.
  caf::expected<transaction_results> commit();

private:
  std::unique_ptr<detail::transaction_state> state_;
};

/// The owner of shared cells: start() runs it, the destructor stops it
/// (and its process). Move-only; make handles with the shared_client
/// functions, and give other processes the handles or address().
class shared_state : public shared_client {
public:
  /// No owner.
  shared_state() = default;
  /// Takes over `other`'s owner.
  shared_state(shared_state&&) noexcept;
  /// Stops this object's owner, then takes over `other`'s.
  shared_state& operator=(shared_state&&) noexcept;
  /// Stops the owner (and its process).
  ~shared_state();

  /// Starts an owner: on a thread of this process, or in a process of its
  /// own (options.own_process; needs bootstrap() in main). Errors:
  /// invalid_argument (the address is in use), system_error, and those of
  /// start_process().
  static caf::expected<shared_state> start(shared_state_options opts = {});

  /// Runs an owner on `address` in the calling thread until the process
  /// ends: the body of a process entry for a supervisor that restarts the
  /// owner at the same address.
  /// Returns invalid_argument if the address is in use.
  static caf::error serve(const std::string& address);

  /// The owner's process id (this process's if it runs on a thread here).
  pid_t owner_pid() const noexcept;

  /// Kills an owner that runs in its own process (tests, chaos).
  caf::error kill_owner();

  /// Stops the owner (cells are lost); handles then fail with owner_died.
  void stop();

  /// Listens on a TCP address (loopback unless told otherwise) for
  /// processes on other hosts: each connection that proves it holds the
  /// secret (remote_shared_state::connect) reaches the owner like a local
  /// client. Returns the port. Errors: invalid_argument (an empty secret,
  /// published already, or a stopped owner), system_error (cannot listen).
  /// docs/distribution.md, "Shared state across hosts".
  caf::expected<uint16_t> publish(network_options opts);

  /// A handle to the namespace `name`.
  shared_namespace make_namespace(const std::string& name) const {
    return {shared_client{address_, timeout_}, name};
  }

  struct impl;

private:
  std::unique_ptr<impl> impl_;
};

/// A shared-state owner on another host, published there with
/// shared_state::publish(): connect() authenticates with the secret and
/// returns a client whose handles work as local ones do, in this process
/// and its children (they reach a local tunnel end, which carries each
/// connection to the owner over CAF's network layer). The tunnel lives as
/// long as this object: afterwards, and after the connection is lost (the
/// owner's host died, froze past the connection timeout, or the network
/// failed), calls fail with errc::owner_died. Move-only.
class remote_shared_state : public shared_client {
public:
  /// Not connected.
  remote_shared_state() = default;
  /// Takes over `other`'s connection.
  remote_shared_state(remote_shared_state&&) noexcept;
  /// Ends this object's connection, then takes over `other`'s.
  remote_shared_state& operator=(remote_shared_state&&) noexcept;
  ~remote_shared_state();

  /// Connects and authenticates once (so that a wrong secret or an
  /// unreachable owner shows here, not at the first call). Errors:
  /// connection_lost (cannot reach it), auth_failed, unknown_entry (the
  /// address publishes something else, e.g. a pool), invalid_argument (an
  /// empty secret, port 0).
  static caf::expected<remote_shared_state>
  connect(const remote_state_options& opts);

  /// A handle to the namespace `name`.
  shared_namespace make_namespace(const std::string& name) const {
    return {shared_client{address_, timeout_}, name};
  }

  struct impl;

private:
  std::unique_ptr<impl> impl_;
};

} // namespace multiproc

/// Registers `fn`, a function `R fn(T& node, Args...)`, under `name` (a
/// string literal) for update() and call() on nodes of type T.
#define MULTIPROC_SHARED_FUNCTION(name, fn)                                    \
  static const bool MULTIPROC_PP_CAT(multiproc_shared_fn_registered_,          \
                                     __COUNTER__)                              \
    = ::multiproc::detail::register_shared_fn(name, &fn);

/// Registers the member function `method` (e.g. &parent::set_child) under
/// `name` for call() (and update()) on cells holding its class: the
/// counterpart of Python's BaseManager.register.
#define MULTIPROC_SHARED_METHOD(name, method)                                  \
  static const bool MULTIPROC_PP_CAT(multiproc_shared_fn_registered_,          \
                                     __COUNTER__)                              \
    = ::multiproc::detail::register_shared_fn(name, method);
