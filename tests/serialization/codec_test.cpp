// Tests serialization/: the type registry, the Cereal codec, the envelope,
// error frames and the handshake check.
#include <cstring>
#include <limits>

#include <gtest/gtest.h>

#include <caf/sec.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include "multiproc/envelope.hpp"
#include "multiproc/message_registry.hpp"

using namespace multiproc;

namespace codec_test {

struct point {
  int32_t x = 0;
  int32_t y = 0;
  std::string label;
  std::vector<double> weights;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x, y, label, weights);
  }
};

struct not_registered {
  int value = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(value);
  }
};

struct throws_on_encode {
  template <class Archive>
  void save(Archive&) const {
    throw std::runtime_error("cannot save this");
  }
  template <class Archive>
  void load(Archive&) {
  }
};

} // namespace codec_test

MULTIPROC_MESSAGE(codec_test::point, "codec_test.point")
MULTIPROC_MESSAGE(codec_test::throws_on_encode, "codec_test.throws_on_encode")
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(codec_test::not_registered)

using codec_test::point;

TEST(MessageRegistry, FindsTypesByNameIdAndCppType) {
  auto& reg = message_registry::instance();
  auto* by_name = reg.find(std::string{"codec_test.point"});
  ASSERT_NE(by_name, nullptr);
  EXPECT_EQ(by_name->id, type_id_of("codec_test.point"));
  EXPECT_EQ(reg.find(typeid(point)), by_name);
  EXPECT_EQ(reg.find(by_name->id), by_name);
  EXPECT_NE(reg.find(typeid(int32_t)), nullptr);
  EXPECT_NE(reg.find(typeid(std::string)), nullptr);
  EXPECT_EQ(reg.find(typeid(codec_test::not_registered)), nullptr);
}

TEST(MessageRegistry, FingerprintCoversRegisteredNames) {
  auto& reg = message_registry::instance();
  EXPECT_EQ(reg.fingerprint(), reg.fingerprint());
  auto names = reg.names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_NE(std::find(names.begin(), names.end(), "codec_test.point"),
            names.end());
}

TEST(Codec, RoundTripsARegisteredStruct) {
  point p{3, -4, "corner", {0.5, 1.5}};
  std::string bytes;
  ASSERT_FALSE(encode(p, bytes));
  auto q = decode<point>(bytes);
  ASSERT_TRUE(q) << describe(q.error());
  EXPECT_EQ(q->x, 3);
  EXPECT_EQ(q->y, -4);
  EXPECT_EQ(q->label, "corner");
  EXPECT_EQ(q->weights, (std::vector<double>{0.5, 1.5}));
}

TEST(Codec, ReportsATruncatedPayload) {
  point p{1, 2, "abcdef", {}};
  std::string bytes;
  ASSERT_FALSE(encode(p, bytes));
  bytes.resize(bytes.size() - 3);
  auto q = decode<point>(bytes);
  ASSERT_FALSE(q);
  EXPECT_EQ(q.error(), errc::decode_failed);
  EXPECT_NE(text_of(q.error()).find("codec_test.point"), std::string::npos)
    << describe(q.error());
}

TEST(Codec, RejectsAHugeSizePrefixWithoutAllocating) {
  // x, y, then a string length of 2^62: must fail fast, not allocate.
  std::string bytes(8, '\0');
  uint64_t huge = uint64_t{1} << 62;
  bytes.append(reinterpret_cast<const char*>(&huge), sizeof(huge));
  auto q = decode<point>(bytes);
  ASSERT_FALSE(q);
  EXPECT_EQ(q.error(), errc::decode_failed);
  EXPECT_NE(text_of(q.error()).find("size prefix"), std::string::npos)
    << describe(q.error());
}

TEST(Codec, RejectsTrailingBytes) {
  std::string bytes;
  ASSERT_FALSE(encode(int32_t{7}, bytes));
  bytes += "junk";
  auto x = decode<int32_t>(bytes);
  ASSERT_FALSE(x);
  EXPECT_EQ(x.error(), errc::decode_failed);
}

TEST(Codec, ArithmeticValuesEncodeAsTheArchiveWouldWithoutOne) {
  // encode()/decode() skip the archive for arithmetic types; the bytes must
  // be the archive's, both ways.
  auto same = [](auto x) {
    std::string fast;
    std::string archived;
    EXPECT_FALSE(encode(x, fast));
    {
      detail::wire_output_archive ar{archived};
      ar(x);
    }
    EXPECT_EQ(fast, archived);
    decltype(x) back{};
    detail::wire_input_archive ar{fast};
    ar(back);
    EXPECT_EQ(back, x);
    auto decoded = decode<decltype(x)>(archived);
    ASSERT_TRUE(decoded) << describe(decoded.error());
    EXPECT_EQ(*decoded, x);
  };
  same(int64_t{-1234567890123});
  same(uint8_t{200});
  same(true);
  same(3.25);
  same(-0.5f);
}

TEST(Codec, RejectsATruncatedArithmeticValue) {
  std::string bytes;
  ASSERT_FALSE(encode(int64_t{7}, bytes));
  bytes.resize(5);
  auto x = decode<int64_t>(bytes);
  ASSERT_FALSE(x);
  EXPECT_EQ(x.error(), errc::decode_failed);
  EXPECT_NE(text_of(x.error()).find("needs 8 bytes, only 5"),
            std::string::npos)
    << describe(x.error());
}

TEST(Codec, EncodeFailureIsReportedAtTheCallSite) {
  std::string bytes;
  auto err = encode(codec_test::throws_on_encode{}, bytes);
  EXPECT_EQ(err, errc::encode_failed);
  EXPECT_NE(text_of(err).find("cannot save this"), std::string::npos);
}

TEST(Codec, EncodesAndDecodesCafMessages) {
  auto msg = caf::make_message(point{5, 6, "m", {}});
  type_id type = 0;
  std::string bytes;
  ASSERT_FALSE(encode_message(msg, type, bytes));
  EXPECT_EQ(type, type_id_of("codec_test.point"));
  auto back = decode_message(type, bytes);
  ASSERT_TRUE(back);
  ASSERT_TRUE(back->match_elements<point>());
  EXPECT_EQ(back->get_as<point>(0).y, 6);
  // Builtin CAF types map to multiproc's builtin names.
  bytes.clear();
  ASSERT_FALSE(encode_message(caf::make_message(int32_t{42}), type, bytes));
  EXPECT_EQ(type, type_id_of("i32"));
  auto i = decode_message(type, bytes);
  ASSERT_TRUE(i);
  EXPECT_EQ(i->get_as<int32_t>(0), 42);
}

TEST(Codec, EmptyMessagesHaveTypeZero) {
  type_id type = 99;
  std::string bytes;
  ASSERT_FALSE(encode_message(caf::message{}, type, bytes));
  EXPECT_EQ(type, 0u);
  EXPECT_TRUE(bytes.empty());
  auto back = decode_message(0, "");
  ASSERT_TRUE(back);
  EXPECT_TRUE(back->empty());
  EXPECT_EQ(decode_message(0, "x").error(), errc::decode_failed);
}

TEST(Codec, RefusesUnregisteredAndMultiValueMessages) {
  type_id type = 0;
  std::string bytes;
  auto err = encode_message(caf::make_message(codec_test::not_registered{}),
                            type, bytes);
  EXPECT_EQ(err, errc::unknown_type);
  EXPECT_NE(text_of(err).find("MULTIPROC_MESSAGE"), std::string::npos);
  err = encode_message(caf::make_message(int32_t{1}, int32_t{2}), type, bytes);
  EXPECT_EQ(err, errc::encode_failed);
}

TEST(Codec, ReportsAnUnknownTypeId) {
  auto msg = decode_message(0x1234, "");
  ASSERT_FALSE(msg);
  EXPECT_EQ(msg.error(), errc::unknown_type);
  EXPECT_NE(text_of(msg.error()).find("0000000000001234"), std::string::npos);
}

TEST(Envelope, RoundTripsAllFields) {
  wire::envelope env;
  env.what = wire::kind::request;
  env.type = 0x0102030405060708ull;
  env.request_id = 77;
  char buf[wire::envelope_size + 3];
  wire::write_envelope(env, buf);
  std::memcpy(buf + wire::envelope_size, "abc", 3);
  std::string_view payload;
  auto back = wire::read_envelope({buf, sizeof(buf)}, payload);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->what, wire::kind::request);
  EXPECT_EQ(back->type, env.type);
  EXPECT_EQ(back->request_id, 77u);
  EXPECT_EQ(payload, "abc");
  // Little-endian on the wire.
  EXPECT_EQ(buf[4], 0x08);
  EXPECT_EQ(buf[12], 77);
}

TEST(Envelope, RejectsShortFramesOtherVersionsAndUnknownKinds) {
  std::string_view payload;
  auto short_frame = wire::read_envelope("abc", payload);
  EXPECT_EQ(short_frame.error(), errc::protocol_error);
  char buf[wire::envelope_size] = {};
  wire::write_envelope(wire::envelope{}, buf);
  buf[0] = 9;
  auto version = wire::read_envelope({buf, sizeof(buf)}, payload);
  EXPECT_EQ(version.error(), errc::protocol_error);
  EXPECT_NE(text_of(version.error()).find("version 9"), std::string::npos);
  buf[0] = wire::protocol_version;
  buf[1] = 42;
  auto kind = wire::read_envelope({buf, sizeof(buf)}, payload);
  EXPECT_EQ(kind.error(), errc::protocol_error);
  EXPECT_NE(text_of(kind.error()).find("kind 42"), std::string::npos);
}

TEST(Chunk, RequestItemsRoundTripInOrder) {
  std::string payload(wire::chunk_count_size, '\0');
  wire::append_chunk_request_item(payload, 7, "abc");
  wire::append_chunk_request_item(payload, 8, "");
  wire::append_chunk_request_item(payload, 9, std::string(300, 'x'));
  wire::write_chunk_count(payload.data(), 3);
  std::vector<wire::chunk_item> items;
  ASSERT_FALSE(wire::read_chunk(wire::kind::chunk_request, payload, items));
  ASSERT_EQ(items.size(), 3u);
  EXPECT_EQ(items[0].index, 0u);
  EXPECT_EQ(items[0].type, 7u);
  EXPECT_EQ(items[0].payload, "abc");
  EXPECT_EQ(items[1].index, 1u);
  EXPECT_EQ(items[1].payload, "");
  EXPECT_EQ(items[2].index, 2u);
  EXPECT_EQ(items[2].type, 9u);
  EXPECT_EQ(items[2].payload, std::string(300, 'x'));
}

TEST(Chunk, ResponseItemsCarryTheirIndexAndStatus) {
  std::string payload(wire::chunk_count_size, '\0');
  auto add = [&](uint32_t index, bool failed, type_id type,
                 std::string_view bytes) {
    char head[wire::chunk_response_item_head];
    wire::write_chunk_response_item_head(head, index, failed, type,
                                         static_cast<uint32_t>(bytes.size()));
    payload.append(head, sizeof(head));
    payload.append(bytes.data(), bytes.size());
  };
  add(5, false, 11, "ok");
  auto err = encode_error(make_error(errc::worker_exception, "boom"));
  add(2, true, 0, err);
  wire::write_chunk_count(payload.data(), 2);
  std::vector<wire::chunk_item> items;
  ASSERT_FALSE(wire::read_chunk(wire::kind::chunk_response, payload, items));
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0].index, 5u);
  EXPECT_FALSE(items[0].failed);
  EXPECT_EQ(items[0].type, 11u);
  EXPECT_EQ(items[0].payload, "ok");
  EXPECT_EQ(items[1].index, 2u);
  EXPECT_TRUE(items[1].failed);
  caf::error out;
  ASSERT_TRUE(decode_error(items[1].payload, out));
  EXPECT_EQ(text_of(out), "boom");
}

TEST(Chunk, MalformedPayloadsAreProtocolErrorsNamingTheItem) {
  std::vector<wire::chunk_item> items;
  auto read = [&](std::string_view payload) {
    items.clear();
    return wire::read_chunk(wire::kind::chunk_request, payload, items);
  };
  auto no_count = read("ab");
  EXPECT_EQ(no_count, errc::protocol_error);
  EXPECT_NE(text_of(no_count).find("no item count"), std::string::npos);
  std::string good(wire::chunk_count_size, '\0');
  wire::append_chunk_request_item(good, 7, "abcdef");
  wire::write_chunk_count(good.data(), 1);
  // The item claims more bytes than there are.
  auto cut = read(std::string_view{good}.substr(0, good.size() - 2));
  EXPECT_EQ(cut, errc::protocol_error);
  EXPECT_NE(text_of(cut).find("item 0 claims 6 bytes; 4 are left"),
            std::string::npos)
    << text_of(cut);
  // The count promises an item that is not there.
  auto more = good;
  wire::write_chunk_count(more.data(), 2);
  auto missing = read(more);
  EXPECT_EQ(missing, errc::protocol_error);
  EXPECT_NE(text_of(missing).find("item 1 of 2 is cut off"), std::string::npos)
    << text_of(missing);
  // Bytes after the last item.
  auto extra = good + "zz";
  auto trailing = read(extra);
  EXPECT_EQ(trailing, errc::protocol_error);
  EXPECT_NE(text_of(trailing).find("2 bytes after the last of 1 items"),
            std::string::npos)
    << text_of(trailing);
  // A response item with a status other than 0 or 1.
  std::string bad_status(wire::chunk_count_size, '\0');
  char head[wire::chunk_response_item_head];
  wire::write_chunk_response_item_head(head, 0, false, 1, 0);
  head[4] = 7;
  bad_status.append(head, sizeof(head));
  wire::write_chunk_count(bad_status.data(), 1);
  items.clear();
  auto status = wire::read_chunk(wire::kind::chunk_response, bad_status, items);
  EXPECT_EQ(status, errc::protocol_error);
  EXPECT_NE(text_of(status).find("status 7"), std::string::npos);
  EXPECT_NE(text_of(status).find("chunk_response"), std::string::npos);
}

TEST(ErrorFrame, RoundTripsMultiprocAndCafErrors) {
  caf::error out;
  ASSERT_TRUE(decode_error(
    encode_error(make_error(errc::worker_exception, "boom")), out));
  EXPECT_EQ(out, errc::worker_exception);
  EXPECT_EQ(text_of(out), "boom");
  ASSERT_TRUE(
    decode_error(encode_error(caf::make_error(caf::sec::unexpected_response)),
                 out));
  EXPECT_EQ(out.category(), caf::atom("system"));
  EXPECT_EQ(out.code(), static_cast<uint8_t>(caf::sec::unexpected_response));
  EXPECT_FALSE(decode_error("\x01", out));
  EXPECT_EQ(out, errc::decode_failed);
}

TEST(Handshake, NamesTheTypesOnlyOneSideHas) {
  auto mine = wire::make_hello("parent");
  EXPECT_FALSE(wire::check_hello(mine, mine));
  auto theirs = mine;
  theirs.name = "worker w[1]";
  theirs.types.push_back("extra.type");
  theirs.fingerprint ^= 1;
  auto err = wire::check_hello(mine, theirs);
  EXPECT_EQ(err, errc::fingerprint_mismatch);
  EXPECT_NE(text_of(err).find("only in worker w[1]: [extra.type]"),
            std::string::npos)
    << describe(err);
}

TEST(Codec, GatherEncodingEqualsThePlainEncoding) {
  // Large byte ranges are referenced instead of copied; the frame written
  // from the parts must carry exactly the bytes of the plain encoding.
  point p{1, 2, std::string(200 * 1024, 'q'),
          std::vector<double>(20 * 1024, 0.25)};
  std::string plain;
  ASSERT_FALSE(encode(p, plain));
  std::string head;
  detail::gather_list gather;
  detail::encode_value_gather<point>(&p, head, &gather);
  EXPECT_EQ(gather.size, 2u);
  EXPECT_LT(head.size(), 1024u);
  std::string_view parts[2 * detail::gather_list::max_refs + 1];
  auto n = gather.parts(head, parts);
  std::string joined;
  for (size_t i = 0; i < n; ++i)
    joined.append(parts[i].data(), parts[i].size());
  EXPECT_EQ(joined, plain);
}
