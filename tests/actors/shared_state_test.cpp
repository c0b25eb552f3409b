// Tests for actors/shared_state: every operation of value, array, list and
// dict handles, nested paths, hosted classes, transactions, namespaces,
// atomicity under clients in several processes, owner and client crashes,
// actors (request/response and subscriptions), and every bad input. The
// client processes are functions of this test binary; each test joins or
// kills its children, and every owner stops with its shared_state.

#include "multiproc/shared_state.hpp"

#include <chrono>
#include <cstring>
#include <future>
#include <limits>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <endian.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>

#include "multiproc/error.hpp"
#include "multiproc/function.hpp"
#include "multiproc/process.hpp"
#include "multiproc/start_method.hpp"
#include "multiproc/supervisor.hpp"
#include "multiproc/worker.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
using namespace multiproc;

namespace {

// -- a hosted class with a nested object --------------------------------------

struct child_object {
  int32_t value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

struct parent_object {
  int32_t value = 0;
  child_object child;
  std::vector<std::string> log;

  void set_value(int32_t x) {
    value = x;
    log.push_back("value");
  }
  void set_child_value(int32_t x) {
    child.value = x;
    log.push_back("child");
  }
  int32_t sum() const {
    return value + child.value;
  }
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value, child, log);
  }
};

MULTIPROC_SHARED_METHOD("shared_test.set_value", &parent_object::set_value)
MULTIPROC_SHARED_METHOD("shared_test.set_child_value",
                        &parent_object::set_child_value)
MULTIPROC_SHARED_METHOD("shared_test.sum", &parent_object::sum)

/// Another class with a method of the same name (names are per class).
struct other_object {
  std::string value;
  void set_value(std::string x) {
    value = std::move(x);
  }
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

MULTIPROC_SHARED_METHOD("shared_test.set_value", &other_object::set_value)

void times_ten(int64_t& x) {
  x *= 10;
}
MULTIPROC_SHARED_FUNCTION("shared_test.times_ten", times_ten)

int64_t add_and_report(int64_t& x, int64_t delta) {
  x += delta;
  return x * 2;
}
MULTIPROC_SHARED_FUNCTION("shared_test.add_and_report", add_and_report)

void grow(std::vector<int32_t>& xs) {
  xs.push_back(0);
}
MULTIPROC_SHARED_FUNCTION("shared_test.grow", grow)

// -- client processes ---------------------------------------------------------

/// Adds 1 to `counter` n times with fetch_add and n times with add (posts).
int add_many(value<int64_t> counter, int32_t n) {
  for (int32_t i = 0; i < n; ++i)
    if (!counter.fetch_add(1))
      return 2;
  for (int32_t i = 0; i < n; ++i)
    if (counter.add(1))
      return 3;
  return counter.sync() ? 4 : 0;
}
MULTIPROC_FUNCTION("shared_test.add_many", add_many)

/// Sets n keys "p<id>_k<j>", n posts and one sync.
int set_keys(dict<std::string, int32_t> d, int32_t id, int32_t n) {
  for (int32_t j = 0; j < n; ++j)
    if (d.post_set("p" + std::to_string(id) + "_k" + std::to_string(j), j))
      return 2;
  return d.sync() ? 3 : 0;
}
MULTIPROC_FUNCTION("shared_test.set_keys", set_keys)

/// Posts n adds and returns without a sync (a forked child then _exit()s).
int add_and_leave(value<int64_t> counter, int32_t n) {
  for (int32_t i = 0; i < n; ++i)
    if (counter.add(1))
      return 2;
  return 0;
}
MULTIPROC_FUNCTION("shared_test.add_and_leave", add_and_leave)

/// Posts adds forever (until killed).
int add_forever(value<int64_t> counter) {
  for (;;)
    if (counter.add(1))
      return 2;
}
MULTIPROC_FUNCTION("shared_test.add_forever", add_forever)

/// Appends its id to a list inside a transaction with a counter.
int tx_append(value<int64_t> counter, list<int64_t> xs, int32_t n) {
  for (int32_t i = 0; i < n; ++i) {
    transaction tx;
    auto before = tx(counter).fetch_add(1);
    tx(xs).append(int64_t{i});
    auto r = tx.commit();
    if (!r || !r->get(before))
      return 2;
  }
  return 0;
}
MULTIPROC_FUNCTION("shared_test.tx_append", tx_append)

/// An owner process for a supervisor: serves at the address in its args.
int owner_entry(child_context& ctx) {
  auto err = shared_state::serve(ctx.args);
  if (err)
    std::fprintf(stderr, "owner_entry: %s\n", describe(err).c_str());
  return err ? 1 : 0;
}
MULTIPROC_REGISTER_ENTRY("shared_test.owner", owner_entry);

std::vector<process> start_clients(int n,
                                   const std::function<caf::expected<process>(
                                     int)>& start) {
  std::vector<process> procs;
  for (int i = 0; i < n; ++i) {
    auto p = start(i);
    EXPECT_TRUE(p) << describe(p.error());
    if (p)
      procs.push_back(std::move(*p));
  }
  return procs;
}

void join_all(std::vector<process>& procs) {
  auto err = multiproc::join_all(procs, 30s);
  EXPECT_FALSE(err) << describe(err);
}

shared_state start_owner(shared_state_options opts = {}) {
  opts.timeout = 10s;
  auto st = shared_state::start(std::move(opts));
  EXPECT_TRUE(st) << describe(st.error());
  return std::move(*st);
}

// -- raw frames ---------------------------------------------------------------

/// A raw connection to an owner, for malformed input.
struct raw_client {
  int fd = -1;

  explicit raw_client(int) {
  }

  explicit raw_client(const std::string& address)
    : fd(test::connect_abstract(address)) {
    EXPECT_GE(fd, 0);
  }
  ~raw_client() {
    ::close(fd);
  }

  void send_raw(const std::string& bytes) {
    ASSERT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
  }

  void send_frame(const std::string& body) {
    uint32_t len = htole32(static_cast<uint32_t>(body.size()));
    std::string bytes(reinterpret_cast<const char*>(&len), 4);
    send_raw(bytes + body);
  }

  /// The next frame's body ("" on timeout or EOF).
  std::string receive() {
    return test::receive_frame(fd);
  }
};

/// The error text of a reply or post_error frame's body.
std::string error_text(const std::string& body) {
  if (body.size() < 10 || body[9] == 0)
    return "";
  detail::wire_input_archive in{std::string_view{body}.substr(10)};
  auto code = detail::decode_from<uint32_t>(in);
  auto text = detail::decode_from<std::string>(in);
  return std::string{to_string(static_cast<errc>(code))} + ": " + text;
}

std::string header(detail::shared_frame kind, uint64_t id) {
  std::string body(9, '\0');
  body[0] = static_cast<char>(kind);
  uint64_t le = htole64(id);
  std::memcpy(&body[1], &le, 8);
  return body;
}

} // namespace

// -- a worker actor that uses a handle it receives in a message ---------------

namespace shared_test {

struct bump {
  value<int64_t> counter;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(counter);
  }
};

caf::behavior bumper(caf::event_based_actor* self) {
  return {
    [self](const bump& b) -> caf::result<int64_t> {
      auto rp = self->make_response_promise<int64_t>();
      b.counter.from(self).fetch_add(1).then(
        [rp](int64_t old) mutable { rp.deliver(old); },
        [rp](caf::error& err) mutable { rp.deliver(err); });
      return rp;
    },
  };
}

} // namespace shared_test

MULTIPROC_MESSAGE(shared_test::bump, "shared_test.bump")
MULTIPROC_WORKER("shared_test.bumper", shared_test::bumper);

// -- value --------------------------------------------------------------------

TEST(SharedState, ValueOperationsAreAppliedByTheOwner) {
  auto state = start_owner();
  auto c = state.value<int64_t>("counter", 5);
  ASSERT_TRUE(c) << describe(c.error());
  EXPECT_EQ(*c->load(), 5);
  EXPECT_FALSE(c->store(7));
  EXPECT_EQ(*c->exchange(9), 7);
  auto cas = c->compare_exchange(1, 2);
  ASSERT_TRUE(cas);
  EXPECT_FALSE(cas->first);
  EXPECT_EQ(cas->second, 9);
  cas = c->compare_exchange(9, 10);
  ASSERT_TRUE(cas);
  EXPECT_TRUE(cas->first);
  EXPECT_EQ(*c->fetch_add(5), 10);
  EXPECT_EQ(*c->fetch_sub(3), 15);
  EXPECT_FALSE(c->add(100));
  EXPECT_FALSE(c->sub(1));
  EXPECT_FALSE(c->sync());
  EXPECT_EQ(*c->load(), 111);
  // A second handle attaches to the same cell, whatever its initial value.
  auto again = state.value<int64_t>("counter", 0);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again->load(), 111);
  // Integers wrap around as std::atomic's do (found by the fuzzer: signed
  // overflow was undefined behavior).
  auto big = state.value<int64_t>("big", std::numeric_limits<int64_t>::max());
  ASSERT_TRUE(big);
  EXPECT_EQ(*big->fetch_add(1), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(*big->load(), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(*big->fetch_sub(1), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(*big->load(), std::numeric_limits<int64_t>::max());
  auto small = state.value<int8_t>("small", 127);
  ASSERT_TRUE(small);
  EXPECT_EQ(*small->fetch_add(int8_t{1}), 127);
  EXPECT_EQ(*small->load(), -128);
  auto s = state.value<std::string>("name", "ann");
  ASSERT_TRUE(s);
  EXPECT_EQ(*s->exchange("bob"), "ann");
  EXPECT_EQ(*s->load(), "bob");
}

TEST(SharedState, UpdateAndCallRunRegisteredFunctionsInsideTheOwner) {
  auto state = start_owner();
  auto c = state.value<int64_t>("x", 3);
  ASSERT_TRUE(c);
  EXPECT_EQ(*c->update("shared_test.times_ten"), 30);
  EXPECT_EQ(*c->call<int64_t>("shared_test.add_and_report", int64_t{5}), 70);
  EXPECT_EQ(*c->load(), 35);
  EXPECT_FALSE(c->post_update("shared_test.times_ten"));
  EXPECT_FALSE(c->sync());
  EXPECT_EQ(*c->load(), 350);
  auto unknown = c->update("shared_test.no_such_function");
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error(), errc::unknown_entry);
  EXPECT_NE(text_of(unknown.error()).find("shared_test.no_such_function"),
            std::string::npos);
  auto wrong_args = c->call<int64_t>("shared_test.add_and_report", 5);
  ASSERT_FALSE(wrong_args);
  EXPECT_EQ(wrong_args.error(), errc::type_mismatch);
  auto wrong_result = c->call<std::string>("shared_test.add_and_report",
                                           int64_t{5});
  ASSERT_FALSE(wrong_result);
  EXPECT_EQ(wrong_result.error(), errc::type_mismatch);
  auto d = state.value<double>("d", 1.5);
  ASSERT_TRUE(d);
  auto wrong_node = d->update("shared_test.times_ten");
  ASSERT_FALSE(wrong_node);
  EXPECT_EQ(wrong_node.error(), errc::type_mismatch);
  EXPECT_EQ(*c->load(), 350); // the failed calls changed nothing
}

// -- array --------------------------------------------------------------------

TEST(SharedState, ArrayOperationsKeepTheLength) {
  auto state = start_owner();
  auto a = state.array<int32_t>("a", 5, 1);
  ASSERT_TRUE(a) << describe(a.error());
  EXPECT_EQ(*a->size(), 5u);
  EXPECT_FALSE(a->set(2, 7));
  EXPECT_EQ(*a->get(2), 7);
  EXPECT_EQ(*a->fetch_add(2, 3), 7);
  EXPECT_FALSE(a->add(0, 4));
  EXPECT_FALSE(a->sync());
  EXPECT_EQ(*a->snapshot(), (std::vector<int32_t>{5, 1, 10, 1, 1}));
  EXPECT_EQ(*a->slice(1, 3), (std::vector<int32_t>{1, 10}));
  EXPECT_FALSE(a->set_slice(3, {8, 9}));
  EXPECT_FALSE(a->at(4).store(6));
  EXPECT_EQ(*a->load(), (std::vector<int32_t>{5, 1, 10, 8, 6}));
  EXPECT_FALSE(a->fill(0));
  EXPECT_EQ(*a->load(), (std::vector<int32_t>(5, 0)));
  auto out = a->get(5);
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error(), errc::index_out_of_range);
  EXPECT_NE(text_of(out.error()).find("index 5"), std::string::npos);
  EXPECT_EQ(a->set_slice(4, {1, 2}), errc::index_out_of_range);
  EXPECT_EQ(a->slice(3, 9).error(), errc::index_out_of_range);
  // The length is fixed: neither a store nor a function may change it.
  EXPECT_EQ(a->store({1, 2}), errc::invalid_argument);
  EXPECT_EQ(a->update("shared_test.grow").error(), errc::invalid_argument);
  EXPECT_EQ(*a->size(), 5u);
  // The same cell as a list is refused.
  auto as_list = state.list<int32_t>("a");
  ASSERT_FALSE(as_list);
  EXPECT_EQ(as_list.error(), errc::type_mismatch);
}

// -- list ---------------------------------------------------------------------

TEST(SharedState, ListOperationsWorkAsPythonsList) {
  auto state = start_owner();
  auto l = state.list<std::string>("l", {"a"});
  ASSERT_TRUE(l);
  EXPECT_FALSE(l->append("b"));
  EXPECT_FALSE(l->post_append("c"));
  EXPECT_FALSE(l->extend({"d", "e"}));
  EXPECT_FALSE(l->insert(0, "z"));
  EXPECT_EQ(*l->snapshot(),
            (std::vector<std::string>{"z", "a", "b", "c", "d", "e"}));
  EXPECT_EQ(*l->pop(), "e");
  EXPECT_EQ(*l->pop(0), "z");
  EXPECT_EQ(*l->get(1), "b");
  EXPECT_FALSE(l->set(1, "B"));
  EXPECT_EQ(*l->size(), 4u);
  EXPECT_EQ(*l->slice(0, 2), (std::vector<std::string>{"a", "B"}));
  EXPECT_FALSE(l->clear());
  EXPECT_EQ(*l->size(), 0u);
  auto empty = l->pop();
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error(), errc::index_out_of_range);
  EXPECT_EQ(l->insert(3, "x"), errc::index_out_of_range);
}

// -- dict ---------------------------------------------------------------------

TEST(SharedState, DictOperationsWorkAsPythonsDict) {
  auto state = start_owner();
  auto d = state.dict<std::string, int32_t>("d", {{"a", 1}});
  ASSERT_TRUE(d);
  EXPECT_FALSE(d->set("b", 2));
  EXPECT_FALSE(d->post_set("c", 3));
  EXPECT_EQ(*d->get("a"), 1);
  EXPECT_EQ(*d->get("missing", 42), 42);
  EXPECT_TRUE(*d->contains("c"));
  EXPECT_FALSE(*d->contains("missing"));
  EXPECT_EQ(*d->size(), 3u);
  EXPECT_EQ(*d->keys(), (std::vector<std::string>{"a", "b", "c"}));
  auto items = d->items();
  ASSERT_TRUE(items);
  ASSERT_EQ(items->size(), 3u);
  EXPECT_EQ((*items)[1], (std::pair<std::string, int32_t>{"b", 2}));
  EXPECT_EQ(*d->pop("b"), 2);
  EXPECT_TRUE(*d->erase("a"));
  EXPECT_FALSE(*d->erase("a"));
  EXPECT_FALSE(d->post_erase("c"));
  EXPECT_FALSE(d->sync());
  EXPECT_EQ(*d->size(), 0u);
  EXPECT_FALSE(d->set("x", 1));
  EXPECT_FALSE(d->clear());
  EXPECT_EQ(d->snapshot()->size(), 0u);
  auto missing = d->get("nope");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error(), errc::key_not_found);
  EXPECT_NE(text_of(missing.error()).find("'nope'"), std::string::npos);
  EXPECT_EQ(d->pop("nope").error(), errc::key_not_found);
}

// -- nested paths and hosted classes ------------------------------------------

TEST(SharedState, NestedPathUpdatesChangeTheOwnersCopy) {
  auto state = start_owner();
  using inner = std::map<std::string, int64_t>;
  auto d = state.dict<std::string, inner>("config");
  ASSERT_TRUE(d);
  EXPECT_FALSE(d->set("net", inner{{"port", 80}}));
  // The Manager pitfall: d["net"]["port"] = 8080 on a copy is lost. Here the
  // change happens inside the owner.
  EXPECT_FALSE(d->at("net").set("port", 8080));
  EXPECT_EQ(*d->at("net").at("port").fetch_add(1), 8080);
  EXPECT_EQ(*d->get("net"), (inner{{"port", 8081}}));
  EXPECT_EQ(d->at("disk").set("size", 1), errc::key_not_found);
  auto lists = state.list<std::vector<int32_t>>("rows", {{1, 2}, {3}});
  ASSERT_TRUE(lists);
  EXPECT_FALSE(lists->at(1).append(4));
  EXPECT_EQ(*lists->at(0).at(1).exchange(20), 2);
  EXPECT_EQ(*lists->load(), (std::vector<std::vector<int32_t>>{{1, 20}, {3, 4}}));
  EXPECT_EQ(lists->at(5).size().error(), errc::index_out_of_range);
}

TEST(SharedState, HostedClassMethodsAndNestedObjectsWork) {
  auto state = start_owner();
  auto obj = state.object<parent_object>("p");
  ASSERT_TRUE(obj) << describe(obj.error());
  EXPECT_FALSE(obj->call<void>("shared_test.set_value", int32_t{100}));
  EXPECT_FALSE(obj->call<void>("shared_test.set_child_value", int32_t{100}));
  EXPECT_EQ(*obj->call<int32_t>("shared_test.sum"), 200);
  auto copy = obj->load();
  ASSERT_TRUE(copy);
  EXPECT_EQ(copy->value, 100);
  EXPECT_EQ(copy->child.value, 100);
  EXPECT_EQ(copy->log, (std::vector<std::string>{"value", "child"}));
  auto wrong = obj->call<void>("shared_test.times_ten");
  EXPECT_EQ(wrong, errc::type_mismatch) << describe(wrong);
  // The same method name on another class is that class's method.
  auto other = state.object<other_object>("o");
  ASSERT_TRUE(other);
  EXPECT_FALSE(other->call<void>("shared_test.set_value", std::string{"x"}));
  EXPECT_EQ(other->load()->value, "x");
  EXPECT_EQ(obj->load()->value, 100);
  auto neither = state.value<int64_t>("n");
  ASSERT_TRUE(neither);
  auto err = neither->call<void>("shared_test.set_value", int32_t{1});
  EXPECT_EQ(err, errc::type_mismatch);
  EXPECT_NE(text_of(err).find("other_object"), std::string::npos)
    << describe(err);
}

// -- transactions and namespaces ----------------------------------------------

TEST(SharedState, TransactionsAreAllOrNothing) {
  auto state = start_owner();
  auto c = state.value<int64_t>("c", 1);
  auto d = state.dict<std::string, int32_t>("d");
  ASSERT_TRUE(c && d);
  transaction tx;
  auto before = tx(*c).fetch_add(10);
  tx(*d).set("k", 5);
  auto size = tx(*d).size();
  EXPECT_EQ(tx.size(), 3u);
  auto r = tx.commit();
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(*r->get(before), 1);
  EXPECT_EQ(*r->get(size), 1u);
  transaction bad;
  bad(*c).fetch_add(100);
  bad(*d).set("other", 1);
  bad(*d).get("missing");
  auto failed = bad.commit();
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error(), errc::key_not_found);
  EXPECT_NE(text_of(failed.error()).find("operation 2"), std::string::npos);
  EXPECT_EQ(*c->load(), 11);          // undone
  EXPECT_FALSE(*d->contains("other")); // undone
  // Handles of two owners cannot share a transaction.
  auto other = start_owner();
  auto c2 = other.value<int64_t>("c", 0);
  ASSERT_TRUE(c2);
  transaction mixed;
  mixed(*c).fetch_add(1);
  mixed(*c2).fetch_add(1);
  EXPECT_EQ(mixed.commit().error(), errc::invalid_argument);
}

TEST(SharedState, NamespaceFieldsHaveTheirOwnTypes) {
  auto state = start_owner();
  auto ns = state.make_namespace("ns");
  auto x = ns.field<int64_t>("x", 0);
  auto name = ns.field<std::string>("name", "none");
  auto xs = ns.list<int64_t>("xs");
  ASSERT_TRUE(x && name && xs);
  EXPECT_EQ(*x->fetch_add(1), 0);
  EXPECT_FALSE(name->store("ann"));
  EXPECT_EQ(*ns.fields(), (std::vector<std::string>{"name", "x", "xs"}));
  EXPECT_EQ(ns.field<double>("x").error(), errc::type_mismatch);
}

// -- bad input ----------------------------------------------------------------

TEST(SharedState, BadInputGetsAClearErrorAndChangesNothing) {
  auto state = start_owner();
  auto c = state.value<int64_t>("c", 1);
  ASSERT_TRUE(c);
  auto wrong_type = state.value<double>("c");
  ASSERT_FALSE(wrong_type);
  EXPECT_EQ(wrong_type.error(), errc::type_mismatch);
  EXPECT_NE(text_of(wrong_type.error()).find("long"), std::string::npos);
  EXPECT_NE(text_of(wrong_type.error()).find("double"), std::string::npos);
  // A dropped cell: operations fail with key_not_found naming it.
  EXPECT_FALSE(state.drop("c"));
  auto gone = c->load();
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error(), errc::key_not_found);
  EXPECT_NE(text_of(gone.error()).find("'c'"), std::string::npos);
  EXPECT_EQ(state.drop("c"), errc::key_not_found);
  // A post that fails is reported by the next sync.
  auto d = state.value<double>("c", 0.5);
  ASSERT_TRUE(d);
  EXPECT_FALSE(c->add(1));
  auto err = c->sync();
  EXPECT_EQ(err, errc::type_mismatch) << describe(err);
  EXPECT_FALSE(c->sync()); // reported once
  EXPECT_EQ(*d->load(), 0.5);
  // An address nobody listens on.
  auto nobody = shared_client::connect("multiproc-test-nobody-listens", 1s);
  auto v = nobody.value<int64_t>("x");
  ASSERT_FALSE(v);
  EXPECT_EQ(v.error(), errc::owner_died);
}

TEST(SharedState, MalformedFramesGetErrorsAndTheOwnerKeepsServing) {
  auto state = start_owner();
  auto c = state.value<int64_t>("c", 1);
  ASSERT_TRUE(c);
  {
    raw_client raw{state.address()};
    raw.send_frame("xy");
    EXPECT_NE(error_text(raw.receive()).find("protocol_error"),
              std::string::npos);
    raw.send_frame(std::string(1, 'Z') + std::string(8, '\0'));
    EXPECT_NE(error_text(raw.receive()).find("unknown shared-state frame"),
              std::string::npos);
    // A request whose arguments do not decode.
    auto body = header(detail::shared_frame::request, 7);
    detail::wire_output_archive ar{body};
    ar(std::string{"c"}, std::vector<std::string>{},
       std::string{detail::type_key<int64_t>()},
       static_cast<uint8_t>(detail::shared_op::fetch_add));
    body += "abc"; // 3 bytes, not an int64_t
    raw.send_frame(body);
    auto text = error_text(raw.receive());
    EXPECT_NE(text.find("decode_failed"), std::string::npos) << text;
    // An unknown operation code.
    auto bad_op = header(detail::shared_frame::request, 8);
    detail::wire_output_archive ar2{bad_op};
    ar2(std::string{"c"}, std::vector<std::string>{}, std::string{"x"},
        uint8_t{200});
    raw.send_frame(bad_op);
    EXPECT_NE(error_text(raw.receive()).find("unknown operation code 200"),
              std::string::npos);
    // A frame announcing more than the limit: the connection is closed.
    raw.send_raw(std::string("\xff\xff\xff\x7f", 4));
    EXPECT_NE(error_text(raw.receive()).find("frame_too_large"),
              std::string::npos);
  }
  {
    // A client that dies in the middle of a frame: the frame is dropped.
    raw_client raw{state.address()};
    auto body = header(detail::shared_frame::post, 0);
    detail::wire_output_archive ar{body};
    ar(std::string{"c"}, std::vector<std::string>{},
       std::string{detail::type_key<int64_t>()},
       static_cast<uint8_t>(detail::shared_op::fetch_add), int64_t{1000});
    uint32_t len = htole32(static_cast<uint32_t>(body.size()));
    raw.send_raw(std::string(reinterpret_cast<const char*>(&len), 4)
                 + body.substr(0, body.size() - 3));
  }
  EXPECT_EQ(*c->load(), 1);
  EXPECT_EQ(*c->fetch_add(1), 1);
}

TEST(SharedState, ACallToAnOwnerThatDoesNotAnswerTimesOut) {
  // A listener that accepts and never answers.
  std::string address = "multiproc-test-silent-" + std::to_string(::getpid());
  int fd = test::listen_abstract(address);
  ASSERT_GE(fd, 0);
  auto client = shared_client::connect(address, 300ms);
  auto t0 = std::chrono::steady_clock::now();
  auto v = client.value<int64_t>("x");
  ASSERT_FALSE(v);
  EXPECT_EQ(v.error(), errc::timeout);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 20s);
  ::close(fd);
  // The owner address of a running owner cannot be taken twice.
  auto state = start_owner();
  shared_state_options opts;
  opts.address = state.address();
  auto twice = shared_state::start(opts);
  ASSERT_FALSE(twice);
  EXPECT_EQ(twice.error(), errc::invalid_argument);
}

TEST(SharedState, AnErrorReplyWithoutACodeStaysAFailure) {
  // A fake owner that answers the first request with an error of code 0.
  std::string address = "multiproc-test-code0-" + std::to_string(::getpid());
  int fd = test::listen_abstract(address);
  ASSERT_GE(fd, 0);
  std::thread fake([fd] {
    raw_client peer{-1};
    peer.fd = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
    auto request = peer.receive();
    if (request.size() < 9)
      return;
    uint64_t id;
    std::memcpy(&id, request.data() + 1, 8);
    auto reply = header(detail::shared_frame::reply, le64toh(id));
    reply.push_back(1); // an error...
    detail::wire_output_archive ar{reply};
    ar(uint32_t{0}, std::string{"but no code"}); // ...of code 0
    peer.send_frame(reply);
  });
  auto client = shared_client::connect(address, 5s);
  auto v = client.value<int64_t>("x");
  ASSERT_FALSE(v);
  EXPECT_EQ(v.error(), errc::protocol_error) << describe(v.error());
  fake.join();
  ::close(fd);
}

// -- processes ----------------------------------------------------------------

TEST(SharedState, IncrementsFromSeveralProcessesAreNeverLost) {
  auto state = start_owner();
  auto c = state.value<int64_t>("counter", 0);
  ASSERT_TRUE(c);
  constexpr int32_t n = 2000;
  auto procs = start_clients(4, [&](int) {
    return start_function("shared_test.add_many", {}, *c, n);
  });
  // This process adds concurrently from two threads too.
  auto t = std::thread([&] {
    for (int i = 0; i < n; ++i)
      (void) c->add(1);
    (void) c->sync();
  });
  for (int i = 0; i < n; ++i)
    (void) c->fetch_add(1);
  t.join();
  join_all(procs);
  EXPECT_EQ(*c->load(), 4 * 2 * n + 2 * n);
}

TEST(SharedState, PostsOfAChildThatEndsWithoutSyncAreApplied) {
  auto state = start_owner();
  auto c = state.value<int64_t>("c", 0);
  ASSERT_TRUE(c);
  std::vector<process> procs;
  for (auto method : available_start_methods()) {
    if (method == start_method::fork)
      continue; // refused: this process has threads
    process_options opts;
    opts.method = method;
    auto p = start_function("shared_test.add_and_leave", opts, *c,
                            int32_t{1000});
    ASSERT_TRUE(p) << describe(p.error());
    procs.push_back(std::move(*p));
  }
  join_all(procs);
  EXPECT_EQ(*c->load(), 1000 * static_cast<int64_t>(procs.size()));
}

TEST(SharedState, DictWritesFromSeveralProcessesAllArrive) {
  auto state = start_owner({});
  auto d = state.dict<std::string, int32_t>("d");
  ASSERT_TRUE(d);
  auto procs = start_clients(3, [&](int i) {
    return start_function("shared_test.set_keys", {}, *d, int32_t{i},
                          int32_t{500});
  });
  join_all(procs);
  EXPECT_EQ(*d->size(), 1500u);
  EXPECT_EQ(*d->get("p2_k499"), 499);
}

TEST(SharedState, TransactionsFromSeveralProcessesStayConsistent) {
  auto state = start_owner();
  auto c = state.value<int64_t>("c", 0);
  auto xs = state.list<int64_t>("xs");
  ASSERT_TRUE(c && xs);
  auto procs = start_clients(3, [&](int) {
    return start_function("shared_test.tx_append", {}, *c, *xs,
                          int32_t{300});
  });
  join_all(procs);
  EXPECT_EQ(*c->load(), 900);
  EXPECT_EQ(*xs->size(), 900u);
}

TEST(SharedState, AnOwnerInItsOwnProcessServesAndItsDeathIsReported) {
  shared_state_options opts;
  opts.own_process = true;
  auto state = start_owner(opts);
  EXPECT_NE(state.owner_pid(), ::getpid());
  auto c = state.value<int64_t>("c", 0);
  ASSERT_TRUE(c) << describe(c.error());
  auto procs = start_clients(2, [&](int) {
    return start_function("shared_test.add_many", {}, *c, int32_t{500});
  });
  join_all(procs);
  EXPECT_EQ(*c->load(), 2000);
  EXPECT_FALSE(state.kill_owner());
  // Every call fails at once with owner_died: none waits for a timeout.
  auto t0 = std::chrono::steady_clock::now();
  auto r = c->fetch_add(1);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), errc::owner_died);
  EXPECT_EQ(c->load().error(), errc::owner_died);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
}

TEST(SharedState, AClientKilledWhilePostingCorruptsNothing) {
  auto state = start_owner();
  auto c = state.value<int64_t>("c", 0);
  ASSERT_TRUE(c);
  auto p = start_function("shared_test.add_forever", {}, *c);
  ASSERT_TRUE(p) << describe(p.error());
  // Wait until its adds arrive, then kill it mid-stream.
  for (int i = 0; i < 500 && *c->load() < 1000; ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_FALSE(p->kill());
  ASSERT_TRUE(p->join(10s));
  auto last = *c->load();
  EXPECT_GE(last, 1000);
  std::this_thread::sleep_for(50ms);
  auto settled = *c->load();
  EXPECT_GE(settled, last);
  // The cell still works, and exactly.
  EXPECT_EQ(*c->fetch_add(1), settled);
  EXPECT_EQ(*c->load(), settled + 1);
}

TEST(SharedState, ASupervisorRestartsAnOwnerAtTheSameAddress) {
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  std::string address = "multiproc-test-supervised-"
                        + std::to_string(::getpid());
  supervisor_spec spec;
  spec.max_restarts = 3;
  auto child = child_spec::process("owner", "shared_test.owner", address);
  child.shutdown_timeout = 200ms;
  spec.children.push_back(child);
  auto sup = supervisor::start(sys, spec);
  ASSERT_TRUE(sup) << describe(sup.error());
  auto client = shared_client::connect(address, 5s);
  caf::expected<value<int64_t>> c = make_error(errc::timeout, "not yet");
  for (int i = 0; i < 200 && !c; ++i) {
    c = client.value<int64_t>("c", 0);
    if (!c)
      std::this_thread::sleep_for(10ms);
  }
  ASSERT_TRUE(c) << describe(c.error());
  EXPECT_EQ(*c->fetch_add(5), 0);
  auto pid = sup->report().children.at(0).pid;
  ASSERT_GT(pid, 0);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  // The old connection reports the death; a new owner serves the address
  // again, with its cells lost (documented).
  caf::expected<value<int64_t>> again = make_error(errc::timeout, "not yet");
  for (int i = 0; i < 500; ++i) {
    auto pid_now = sup->report().children.at(0).pid;
    if (pid_now != 0 && pid_now != pid) {
      again = client.value<int64_t>("c", 0);
      if (again)
        break;
    }
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_TRUE(again) << describe(again.error());
  EXPECT_EQ(*again->fetch_add(1), 0);
  EXPECT_TRUE(sup->stop());
}

// -- actors -------------------------------------------------------------------

TEST(SharedState, AWorkerActorUsesAHandleItReceivesInAMessage) {
  auto state = start_owner();
  auto c = state.value<int64_t>("c", 0);
  ASSERT_TRUE(c);
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  auto worker = spawn_worker(sys, "shared_test.bumper");
  ASSERT_TRUE(worker) << describe(worker.error());
  std::set<int64_t> seen;
  for (int i = 0; i < 50; ++i) {
    auto old = request<int64_t>(*worker, 10s, shared_test::bump{*c});
    ASSERT_TRUE(old) << describe(old.error());
    seen.insert(*old);
  }
  EXPECT_EQ(seen.size(), 50u);
  EXPECT_EQ(*c->load(), 50);
  EXPECT_TRUE(stop_worker(*worker));
}

TEST(SharedState, ActorsUseHandlesByRequestAndSubscribeToChanges) {
  auto state = start_owner();
  auto c = state.value<int64_t>("c", 1);
  ASSERT_TRUE(c);
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  std::promise<int64_t> fetched;
  std::promise<int64_t> changed;
  std::promise<caf::error> failed;
  auto counter = *c;
  auto subscribed = std::make_shared<std::promise<void>>();
  auto a = sys.spawn([&, counter, subscribed](caf::event_based_actor* self)
                       -> caf::behavior {
    auto h = counter.from(self);
    h.subscribe();
    h.fetch_add(1).then([&](int64_t old) { fetched.set_value(old); },
                        [&](caf::error& e) { failed.set_value(e); });
    h.sync().then([subscribed] { subscribed->set_value(); },
                  [&](caf::error& e) { failed.set_value(e); });
    auto dict_h = counter;
    (void) dict_h;
    return {
      [&, self](shared_changed_atom, const std::string& cell, int64_t x) {
        if (cell == "c" && x == 42) {
          changed.set_value(x);
          self->quit();
        }
      },
    };
  });
  auto f = fetched.get_future();
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(f.get(), 1);
  ASSERT_EQ(subscribed->get_future().wait_for(10s),
            std::future_status::ready);
  EXPECT_FALSE(c->store(42));
  auto ch = changed.get_future();
  ASSERT_EQ(ch.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(ch.get(), 42);
  // An actor's error arrives as a caf::error.
  std::promise<caf::error> err;
  auto d = state.dict<std::string, int32_t>("d");
  ASSERT_TRUE(d);
  auto dh = *d;
  sys.spawn([&, dh](caf::event_based_actor* self) {
    dh.from(self).get("missing").then(
      [&](int32_t) { err.set_value(caf::error{}); },
      [&](caf::error& e) { err.set_value(e); });
  });
  auto ef = err.get_future();
  ASSERT_EQ(ef.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(ef.get(), errc::key_not_found);
  // A post of an actor that fails is reported by its next sync.
  auto w = state.value<int64_t>("w", 0);
  ASSERT_TRUE(w);
  EXPECT_FALSE(state.drop("w"));
  ASSERT_TRUE(state.value<double>("w", 0.5));
  std::promise<caf::error> post_err;
  auto wh = *w;
  sys.spawn([&, wh](caf::event_based_actor* self) {
    auto h = wh.from(self);
    h.add(1);
    h.sync().then([&] { post_err.set_value(caf::error{}); },
                  [&](caf::error& e) { post_err.set_value(e); });
  });
  auto pf = post_err.get_future();
  ASSERT_EQ(pf.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(pf.get(), errc::type_mismatch);
  caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
}
