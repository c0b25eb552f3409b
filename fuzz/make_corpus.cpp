// Writes the seed corpus of the harnesses: make_corpus <dir> fills
// <dir>/<target>/ with small valid (and a few broken) inputs built with the
// library's own encoders. The output is committed as fuzz/corpus/; rerun it
// (build/fuzz/fuzz/make_corpus fuzz/corpus) when a format changes.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include <endian.h>
#include <sys/stat.h>

#include "multiproc/detail/shared_ops.hpp"
#include "multiproc/detail/wire_archive.hpp"
#include "multiproc/envelope.hpp"
#include "multiproc/error.hpp"
#include "multiproc/frame_channel.hpp"
#include "multiproc/message_registry.hpp"

#include "fuzz_types.hpp"

using namespace multiproc;

namespace {

std::string root;

void put(const std::string& target, const std::string& name,
         const std::string& bytes) {
  auto dir = root + "/" + target;
  ::mkdir(root.c_str(), 0755);
  ::mkdir(dir.c_str(), 0755);
  auto path = dir + "/" + name;
  auto* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || std::fwrite(bytes.data(), 1, bytes.size(), f)
                        != bytes.size()) {
    std::perror(path.c_str());
    std::exit(1);
  }
  std::fclose(f);
}

std::string frame(const std::string& body) {
  char hdr[frame_header_size];
  write_frame_header(body.size(), hdr);
  return std::string{hdr, sizeof(hdr)} + body;
}

template <class... Ts>
std::string enc(const Ts&... xs) {
  std::string out;
  if constexpr (sizeof...(Ts) > 0) {
    detail::wire_output_archive ar{out};
    ar(xs...);
  }
  return out;
}

std::string body(wire::kind what, type_id type, uint64_t rid,
                 const std::string& payload) {
  wire::envelope env;
  env.what = what;
  env.type = type;
  env.request_id = rid;
  std::string out(wire::envelope_size, '\0');
  wire::write_envelope(env, out.data());
  return out + payload;
}

// -- frame_reader: byte 0 the limit, byte 1 the piece size, then the stream --

void frame_reader() {
  auto two = frame("hello") + frame(std::string(70, 'x')) + frame("");
  put("frame_reader", "three_frames_whole", std::string{"\x06\x00", 2} + two);
  put("frame_reader", "three_frames_bytewise", std::string{"\x06\x01", 2} + two);
  put("frame_reader", "over_limit", std::string{"\x03\x05", 2} + two);
  put("frame_reader", "empty_stream", std::string{"\x06\x00", 2});
  put("frame_reader", "cut_in_header", std::string{"\x06\x00\x10\x00", 4});
  put("frame_reader", "cut_in_body",
      std::string{"\x06\x03", 2} + frame("abcdef").substr(0, 7));
  put("frame_reader", "announces_4gib",
      std::string{"\x06\x00\xff\xff\xff\xff", 6});
  std::string many;
  for (int i = 0; i < 40; ++i)
    many += frame(std::string(static_cast<size_t>(i), 'a' + i % 26));
  put("frame_reader", "forty_frames", std::string{"\x05\x07", 2} + many);
}

// -- envelope: one frame body -------------------------------------------------

void envelope() {
  using wire::kind;
  put("envelope", "request_i32",
      body(kind::request, type_id_of("i32"), 7, enc(int32_t{42})));
  put("envelope", "response_string",
      body(kind::response, type_id_of("string"), 7, enc(std::string{"ok"})));
  put("envelope", "async_bytes",
      body(kind::async, type_id_of("bytes"), 0,
           enc(std::vector<char>{'a', 'b', 'c'})));
  put("envelope", "async_empty", body(kind::async, 0, 0, ""));
  put("envelope", "shutdown", body(kind::shutdown, 0, 0, ""));
  put("envelope", "unknown_type",
      body(kind::request, 0x1234, 1, enc(int32_t{1})));
  auto seed_hello = wire::make_hello("seed");
  seed_hello.pid = 1; // the same bytes on every run
  std::string hello;
  (void) encode(seed_hello, hello);
  put("envelope", "hello", body(kind::hello, 0, 0, hello));
  put("envelope", "error",
      body(kind::error, 0, 9,
           encode_error(make_error(errc::worker_exception, "it threw"))));
  std::string chunk(wire::chunk_count_size, '\0');
  wire::write_chunk_count(chunk.data(), 3);
  wire::append_chunk_request_item(chunk, type_id_of("i64"), enc(int64_t{5}));
  wire::append_chunk_request_item(chunk, type_id_of("string"),
                                  enc(std::string{"five"}));
  wire::append_chunk_request_item(chunk, type_id_of("f64"), enc(5.5));
  put("envelope", "chunk_request", body(kind::chunk_request, 0, 3, chunk));
  std::string reply(wire::chunk_count_size, '\0');
  wire::write_chunk_count(reply.data(), 2);
  auto ok = enc(int64_t{25});
  auto failed = encode_error(make_error(errc::decode_failed, "bad item"));
  char head[wire::chunk_response_item_head];
  wire::write_chunk_response_item_head(head, 1, false, type_id_of("i64"),
                                       static_cast<uint32_t>(ok.size()));
  reply.append(head, sizeof(head)).append(ok);
  wire::write_chunk_response_item_head(head, 0, true, 0,
                                       static_cast<uint32_t>(failed.size()));
  reply.append(head, sizeof(head)).append(failed);
  put("envelope", "chunk_response", body(kind::chunk_response, 0, 3, reply));
  put("envelope", "short_body", std::string(12, '\x02'));
  put("envelope", "version_1",
      "\x01" + body(kind::async, 0, 0, "").substr(1));
}

// -- message: byte 0 indexes the sorted registered names ---------------------

void message() {
  auto seed_hello = wire::make_hello("seed");
  seed_hello.pid = 1;
  auto names = message_registry::instance().names();
  std::map<std::string, std::string> values;
  values["bool"] = enc(true);
  values["i8"] = enc(int8_t{-5});
  values["i16"] = enc(int16_t{-300});
  values["i32"] = enc(int32_t{123456});
  values["i64"] = enc(int64_t{-1});
  values["u8"] = enc(uint8_t{200});
  values["u16"] = enc(uint16_t{60000});
  values["u32"] = enc(uint32_t{4000000000u});
  values["u64"] = enc(uint64_t{1} << 63);
  values["f32"] = enc(1.5f);
  values["f64"] = enc(-2.25);
  values["string"] = enc(std::string{"a string"});
  values["bytes"] = enc(std::vector<char>{'\0', '\x01', '\xff'});
  fuzz_types::flat_record flat{7, true, 0.5, "label", {{1, 2, 3}}};
  values["fuzz.flat_record"] = enc(flat);
  fuzz_types::nested_record nested;
  nested.names = {"a", "bc"};
  nested.groups = {{"g1", {1, 2}}, {"g2", {}}};
  nested.blobs = {{3, {'x', 'y'}}};
  values["fuzz.nested_record"] = enc(nested);
  values["fuzz.hello"] = enc(seed_hello);
  wire::wire_error err{12, "multiproc", "decode_failed"};
  values["fuzz.wire_error"] = enc(err);
  for (size_t i = 0; i < names.size(); ++i) {
    auto v = values.find(names[i]);
    if (v == values.end())
      continue; // a type added later: the fuzzer finds its inputs itself
    put("message", names[i], std::string(1, static_cast<char>(i)) + v->second);
  }
}

// -- shared_owner: the byte stream of one client ------------------------------

using detail::shared_frame;
using detail::shared_op;
using detail::type_key;

std::string prefix(shared_frame kind, uint64_t id) {
  std::string out(1, static_cast<char>(kind));
  uint64_t le = htole64(id);
  out.append(reinterpret_cast<const char*>(&le), sizeof(le));
  return out;
}

template <class T, class... Args>
std::string op(const std::string& cell, shared_op code,
               std::vector<std::string> path, const Args&... args) {
  return enc(cell, path, std::string{type_key<T>()},
             static_cast<uint8_t>(code))
         + enc(args...);
}

template <class T>
std::string op(const std::string& cell, shared_op code) {
  return enc(cell, std::vector<std::string>{}, std::string{type_key<T>()},
             static_cast<uint8_t>(code));
}

std::string request(const std::string& op_bytes, uint64_t id = 1) {
  return frame(prefix(shared_frame::request, id) + op_bytes);
}

std::string post(const std::string& op_bytes) {
  return frame(prefix(shared_frame::post, 0) + op_bytes);
}

template <class T>
std::string create(const std::string& cell, const T& initial,
                   bool fixed = false) {
  return request(op<T>(cell, shared_op::create) + enc(fixed, initial));
}

// A libFuzzer dictionary of the type keys (mangled names) and function
// names, which mutations would hardly guess.
void shared_owner_dict() {
  std::vector<std::string> words{
    type_key<int64_t>(), type_key<double>(), type_key<bool>(),
    type_key<std::string>(), type_key<std::vector<int64_t>>(),
    type_key<std::vector<std::string>>(),
    type_key<std::map<std::string, int64_t>>(),
    type_key<std::map<int64_t, std::vector<double>>>(),
    type_key<std::map<std::string, std::map<std::string, std::string>>>(),
    type_key<std::tuple<int64_t>>(), type_key<std::tuple<std::string>>(),
    "fuzz.add", "fuzz.push_twice", "fuzz.describe"};
  std::string out = "# Written by make_corpus: type keys and function names.\n";
  for (size_t i = 0; i < words.size(); ++i)
    out += "w" + std::to_string(i) + "=\"" + words[i] + "\"\n";
  auto path = root + "/shared_owner.dict";
  auto* f = std::fopen(path.c_str(), "w");
  if (f == nullptr || std::fputs(out.c_str(), f) < 0) {
    std::perror(path.c_str());
    std::exit(1);
  }
  std::fclose(f);
}

void shared_owner() {
  using list = std::vector<int64_t>;
  using dict = std::map<std::string, int64_t>;
  using nested = std::map<std::string, std::map<std::string, std::string>>;
  using series = std::map<int64_t, std::vector<double>>;
  put("shared_owner", "value_ops",
      create<int64_t>("n", 1) + request(op<int64_t>("n", shared_op::load))
        + post(op<int64_t>("n", shared_op::fetch_add, {}, int64_t{5}))
        + request(op<int64_t>("n", shared_op::compare_exchange, {}, int64_t{6},
                              int64_t{7}))
        + request(op<int64_t>("n", shared_op::update, {},
                              std::string{"fuzz.add"},
                              std::string{type_key<std::tuple<int64_t>>()},
                              std::string{type_key<int64_t>()},
                              std::make_tuple(int64_t{3})))
        + frame(prefix(shared_frame::sync, 2)));
  put("shared_owner", "string_and_bool",
      create<std::string>("s", "text") + create<bool>("b", false)
        + create<double>("d", 0.5)
        + request(op<std::string>("s", shared_op::exchange, {},
                                  std::string{"new"}))
        + request(op<bool>("b", shared_op::store, {}, true))
        + request(op<double>("d", shared_op::fetch_sub, {}, 0.25)));
  put("shared_owner", "list_ops",
      create<list>("l", list{1, 2, 3})
        + request(op<list>("l", shared_op::vec_append, {}, int64_t{4}))
        + request(op<list>("l", shared_op::vec_get, {}, uint64_t{0}))
        + request(op<list>("l", shared_op::vec_insert, {}, uint64_t{1},
                           int64_t{9}))
        + request(op<list>("l", shared_op::vec_slice, {}, uint64_t{1},
                           uint64_t{3}))
        + request(op<list>("l", shared_op::vec_pop, {}, true, uint64_t{0}))
        + request(op<list>("l", shared_op::vec_extend, {}, list{7, 8}))
        + request(op<list>("l", shared_op::vec_set_slice, {}, uint64_t{0},
                           list{5, 5}))
        + request(op<list>("l", shared_op::size))
        + request(op<int64_t>("l", shared_op::load, {enc(uint64_t{1})})));
  put("shared_owner", "array_ops",
      create<list>("a", list{0, 0, 0, 0}, true)
        + request(op<list>("a", shared_op::vec_fill, {}, int64_t{2}))
        + request(op<list>("a", shared_op::vec_append, {}, int64_t{4}))
        + request(op<list>("a", shared_op::call, {},
                           std::string{"fuzz.push_twice"},
                           std::string{type_key<std::tuple<int64_t>>()},
                           std::string{}, std::make_tuple(int64_t{1})))
        + request(op<list>("a", shared_op::store, {}, list{1, 2})));
  put("shared_owner", "dict_ops",
      create<dict>("m", dict{{"x", 1}})
        + request(op<dict>("m", shared_op::map_set, {}, std::string{"y"},
                           int64_t{2}))
        + request(op<dict>("m", shared_op::map_get, {}, std::string{"x"}))
        + request(op<dict>("m", shared_op::map_get_or, {}, std::string{"z"},
                           int64_t{0}))
        + request(op<dict>("m", shared_op::map_contains, {}, std::string{"y"}))
        + request(op<dict>("m", shared_op::map_keys))
        + request(op<dict>("m", shared_op::map_items))
        + request(op<dict>("m", shared_op::map_pop, {}, std::string{"x"}))
        + request(op<dict>("m", shared_op::map_erase, {}, std::string{"q"}))
        + request(op<dict>("m", shared_op::call, {},
                           std::string{"fuzz.describe"},
                           std::string{type_key<std::tuple<std::string>>()},
                           std::string{type_key<std::string>()},
                           std::make_tuple(std::string{"m:"})))
        + request(op<dict>("m", shared_op::clear)));
  put("shared_owner", "nested_paths",
      create<nested>("t", nested{{"k", {{"a", "b"}}}})
        + create<series>("p", series{{1, {0.5}}})
        + request(op<std::string>("t", shared_op::load,
                                  {enc(std::string{"k"}), enc(std::string{"a"})}))
        + request(op<std::vector<double>>("p", shared_op::vec_append,
                                          {enc(int64_t{1})}, 1.5))
        + request(op<double>("p", shared_op::store,
                             {enc(int64_t{1}), enc(uint64_t{0})}, 2.5)));
  std::vector<std::string> ops{
    op<int64_t>("n", shared_op::fetch_add, {}, int64_t{1}),
    op<int64_t>("missing", shared_op::load)};
  put("shared_owner", "transaction_and_subscription",
      create<int64_t>("n", 0)
        + frame(prefix(shared_frame::subscribe, 3) + enc(std::string{"n"},
                                                         uint64_t{11}))
        + frame(prefix(shared_frame::transaction, 4) + enc(ops))
        + frame(prefix(shared_frame::transaction, 5)
                + enc(std::vector<std::string>{ops[0]}))
        + frame(prefix(shared_frame::unsubscribe, 6)
                + enc(std::string{"n"}, uint64_t{11}))
        + request(op<int64_t>("", shared_op::list_cells))
        + request(op<int64_t>("n", shared_op::drop)));
  put("shared_owner", "malformed",
      frame("\x01") + frame(prefix(static_cast<shared_frame>(99), 1))
        + request(op<int64_t>("n", static_cast<shared_op>(200)))
        + request(op<int64_t>("n", shared_op::load).substr(0, 10))
        + request(op<float>("f", shared_op::create) + enc(false, 1.0f)));
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus dir>\n", argv[0]);
    return 2;
  }
  root = argv[1];
  frame_reader();
  envelope();
  message();
  shared_owner();
  shared_owner_dict();
  return 0;
}
