// Regression tests for crashes found by the fuzzers in fuzz/ (docs/
// reliability.md, "Fuzzing"): each keeps the input that crashed, inline.
#include <cstdint>
#include <string>
#include <string_view>

#include <gtest/gtest.h>

#include <cereal/types/string.hpp>

#include "multiproc/detail/flat_archive.hpp"
#include "multiproc/envelope.hpp"
#include "multiproc/error.hpp"
#include "multiproc/message_registry.hpp"

using namespace multiproc;

namespace fuzz_regression_test {

struct flagged {
  int32_t id = 0;
  bool flag = false;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id, flag);
  }
};

} // namespace fuzz_regression_test

MULTIPROC_MESSAGE(fuzz_regression_test::flagged, "fuzz_regression_test.flagged")

using fuzz_regression_test::flagged;

// fuzz/message: a "bool" payload of 0xff was copied into a bool (undefined
// behavior; UBSan: "load of value 255, which is not a valid value for type
// 'bool'").
TEST(Codec, RejectsABoolPayloadOtherThanZeroOrOne) {
  auto msg = decode_message(type_id_of("bool"), "\xff");
  ASSERT_FALSE(msg);
  EXPECT_EQ(msg.error(), errc::decode_failed);
  EXPECT_NE(text_of(msg.error()).find("a bool is encoded as 0 or 1, not 255"),
            std::string::npos)
    << text_of(msg.error());
  EXPECT_FALSE(decode<bool>(std::string_view{"\x02", 1}));
  auto yes = decode<bool>(std::string_view{"\x01", 1});
  ASSERT_TRUE(yes);
  EXPECT_TRUE(*yes);
  auto no = decode<bool>(std::string_view{"\x00", 1});
  ASSERT_TRUE(no);
  EXPECT_FALSE(*no);
}

// fuzz/shared_owner: a create operation's bool (fixed length) of 0xc3 went
// through wire_input_archive into a bool; the same holds for a bool inside
// any value, and for the flat archive.
TEST(Codec, RejectsABoolInsideAValueOtherThanZeroOrOne) {
  std::string bytes{"\x07\x00\x00\x00\xc3", 5};
  auto x = decode<flagged>(bytes);
  ASSERT_FALSE(x);
  EXPECT_EQ(x.error(), errc::decode_failed);
  flagged flat;
  EXPECT_FALSE(detail::flat_decode(bytes, flat));
  bytes.back() = '\x01';
  auto y = decode<flagged>(bytes);
  ASSERT_TRUE(y) << describe(y.error());
  EXPECT_EQ(y->id, 7);
  EXPECT_TRUE(y->flag);
  EXPECT_TRUE(detail::flat_decode(bytes, flat));
  EXPECT_TRUE(flat.flag);
}

// fuzz/envelope: an error frame with error code 0 decoded to an empty
// caf::error, so the request it answers "failed" without an error (and
// encode_error() of it dereferenced null inside CAF).
TEST(ErrorFrame, WithErrorCodeZeroFailsToDecode) {
  // The crashing input: kind error, request 9 (mutated), code 0 and the
  // category "multripoc" (mutated: a CAF category, so code 0 made CAF's
  // empty error).
  const std::string body{
    "\x02\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x09\x00\x00\x00\x00\x00"
    "\x11\x00\x00\x09\x00\x00\x00\x00\x00\x00\x00multripoc\x08\x00\x00\x00"
    "\x00\x00\x00\x00it threw",
    54};
  std::string_view payload;
  auto env = wire::read_envelope(body, payload);
  ASSERT_TRUE(env) << describe(env.error());
  EXPECT_EQ(env->what, wire::kind::error);
  caf::error out;
  EXPECT_FALSE(decode_error(payload, out));
  EXPECT_EQ(out, errc::decode_failed);
  EXPECT_NE(text_of(out).find("error code 0"), std::string::npos)
    << text_of(out);
  // The same for multiproc's category.
  wire::wire_error zero{0, "multiproc", "nothing"};
  std::string encoded;
  ASSERT_FALSE(encode(zero, encoded));
  EXPECT_FALSE(decode_error(encoded, out));
  EXPECT_EQ(out, errc::decode_failed);
}
