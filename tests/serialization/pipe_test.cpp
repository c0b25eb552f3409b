// Tests serialization/pipe and function processes: typed messages over a
// Pipe, EOF, one-way ends, 16 MiB messages, and arguments of plain processes.
#include "multiproc/pipe.hpp"

#include <mutex>
#include <numeric>
#include <thread>

#include <gtest/gtest.h>

#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include "multiproc/function.hpp"

using namespace multiproc;
using namespace std::chrono_literals;

namespace pipe_test {

struct note {
  std::string text;
  int32_t n = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(text, n);
  }
};

struct blob {
  std::vector<char> bytes;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(bytes);
  }
};

struct unregistered {
  template <class Archive>
  void serialize(Archive&) {
  }
};

// Echoes the size and checksum of every blob until EOF, then exits 0.
int echo_sizes(pipe_end& parent) {
  for (;;) {
    auto b = parent.recv<blob>();
    if (!b)
      return b.error() == errc::peer_closed ? 0 : 3;
    int64_t sum = std::accumulate(b->bytes.begin(), b->bytes.end(), int64_t{0});
    if (parent.send(int64_t(b->bytes.size())) || parent.send(sum))
      return 4;
  }
}

// Sends a greeting built from its arguments, then returns `code`.
int greet(pipe_end& parent, std::string who, int32_t times, int32_t code) {
  std::string text;
  for (int i = 0; i < times; ++i)
    text += "hello " + who + ";";
  [[maybe_unused]] auto err = parent.send(note{text, times});
  return code;
}

void throws_in_child(int32_t) {
  throw std::logic_error("raised in the child");
}

} // namespace pipe_test

MULTIPROC_MESSAGE(pipe_test::note, "pipe_test.note")
MULTIPROC_MESSAGE(pipe_test::blob, "pipe_test.blob")
MULTIPROC_FUNCTION("pipe_test.echo_sizes", pipe_test::echo_sizes)
MULTIPROC_FUNCTION("pipe_test.greet", pipe_test::greet)
MULTIPROC_FUNCTION("pipe_test.throws_in_child", pipe_test::throws_in_child)

using pipe_test::note;

TEST(Pipe, CarriesTypedMessagesBothWays) {
  auto ends = make_pipe();
  ASSERT_TRUE(ends);
  auto& [a, b] = *ends;
  ASSERT_FALSE(a.send(note{"ping", 1}));
  auto got = b.recv<note>(1s);
  ASSERT_TRUE(got) << describe(got.error());
  EXPECT_EQ(got->text, "ping");
  ASSERT_FALSE(b.send(std::string{"pong"}));
  auto back = a.recv<std::string>(1s);
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, "pong");
}

TEST(Pipe, OneWayEndsRefuseTheOtherDirection) {
  auto ends = make_pipe(false);
  ASSERT_TRUE(ends);
  auto& [reader, writer] = *ends;
  EXPECT_EQ(reader.send(int32_t{1}), errc::invalid_argument);
  EXPECT_EQ(writer.recv<int32_t>(10ms).error(), errc::invalid_argument);
  ASSERT_FALSE(writer.send(int32_t{5}));
  EXPECT_EQ(*reader.recv<int32_t>(1s), 5);
}

TEST(Pipe, ReportsEofOnlyAfterEverythingWasReceived) {
  auto ends = make_pipe();
  ASSERT_TRUE(ends);
  auto& [a, b] = *ends;
  ASSERT_FALSE(a.send(int32_t{1}));
  ASSERT_FALSE(a.send(int32_t{2}));
  a.close();
  EXPECT_EQ(*b.recv<int32_t>(1s), 1);
  EXPECT_EQ(*b.recv<int32_t>(1s), 2);
  auto eof = b.recv<int32_t>(1s);
  ASSERT_FALSE(eof);
  EXPECT_EQ(eof.error(), errc::peer_closed);
  EXPECT_EQ(a.send(int32_t{3}), errc::closed);
}

TEST(Pipe, KeepsAMessageOfAnotherTypeForTheNextRecv) {
  auto ends = make_pipe();
  ASSERT_TRUE(ends);
  auto& [a, b] = *ends;
  ASSERT_FALSE(a.send(std::string{"text"}));
  auto wrong = b.recv<int32_t>(1s);
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error(), errc::type_mismatch);
  auto right = b.recv<std::string>(1s);
  ASSERT_TRUE(right);
  EXPECT_EQ(*right, "text");
}

TEST(Pipe, PollWaitsForAMessage) {
  auto ends = make_pipe();
  ASSERT_TRUE(ends);
  auto& [a, b] = *ends;
  EXPECT_FALSE(*b.poll(10ms));
  std::thread later{[&a = a] {
    std::this_thread::sleep_for(20ms);
    EXPECT_FALSE(a.send(int32_t{7}));
  }};
  EXPECT_TRUE(*b.poll(5000ms));
  later.join();
  EXPECT_EQ(*b.recv<int32_t>(), 7);
}

TEST(Pipe, RejectsUnregisteredTypesAtTheCallSite) {
  auto ends = make_pipe();
  ASSERT_TRUE(ends);
  EXPECT_EQ(ends->first.send(pipe_test::unregistered{}), errc::unknown_type);
}

class FunctionProcess : public testing::TestWithParam<start_method> {};

TEST_P(FunctionProcess, CarriesSixteenMebibyteMessagesToAChild) {
  process_options opts;
  opts.method = GetParam();
  auto proc = start_function("pipe_test.echo_sizes", opts);
  ASSERT_TRUE(proc) << describe(proc.error());
  pipe_end child{proc->take_channel()};
  pipe_test::blob b;
  b.bytes.resize(16u << 20);
  for (size_t i = 0; i < b.bytes.size(); ++i)
    b.bytes[i] = static_cast<char>(i % 7);
  int64_t sum = std::accumulate(b.bytes.begin(), b.bytes.end(), int64_t{0});
  for (int round = 0; round < 2; ++round) {
    ASSERT_FALSE(child.send(b));
    auto size = child.recv<int64_t>(30s);
    ASSERT_TRUE(size) << describe(size.error());
    EXPECT_EQ(*size, int64_t{16} << 20);
    auto got = child.recv<int64_t>(30s);
    ASSERT_TRUE(got);
    EXPECT_EQ(*got, sum);
  }
  child.close();
  auto st = proc->join(10s);
  ASSERT_TRUE(st) << describe(st.error());
  EXPECT_TRUE(st->success()) << st->to_string();
}

TEST_P(FunctionProcess, PassesArgumentsAndReturnsTheExitCode) {
  process_options opts;
  opts.method = GetParam();
  auto proc = start_function("pipe_test.greet", opts, std::string{"Ann"},
                             int32_t{2}, int32_t{7});
  ASSERT_TRUE(proc) << describe(proc.error());
  pipe_end child{proc->take_channel()};
  auto msg = child.recv<note>(10s);
  ASSERT_TRUE(msg) << describe(msg.error());
  EXPECT_EQ(msg->text, "hello Ann;hello Ann;");
  auto eof = child.recv<note>(10s);
  EXPECT_EQ(eof.error(), errc::peer_closed);
  auto st = proc->join(10s);
  ASSERT_TRUE(st);
  EXPECT_EQ(st->code, 7);
}

TEST_P(FunctionProcess, ReportsAnExceptionInTheChildAsExitCodeOne) {
  process_options opts;
  opts.method = GetParam();
  std::vector<std::string> lines;
  std::mutex mu;
  opts.sink = [&](const output_line& line) {
    std::lock_guard<std::mutex> guard{mu};
    lines.push_back(line.text);
  };
  auto proc = start_function("pipe_test.throws_in_child", opts, int32_t{1});
  ASSERT_TRUE(proc) << describe(proc.error());
  auto st = proc->join(10s);
  ASSERT_TRUE(st);
  EXPECT_EQ(st->code, 1);
  std::lock_guard<std::mutex> guard{mu};
  ASSERT_FALSE(lines.empty());
  EXPECT_NE(lines.back().find("std::logic_error: raised in the child"),
            std::string::npos)
    << lines.back();
}

INSTANTIATE_TEST_SUITE_P(EveryStartMethod, FunctionProcess,
                         testing::Values(start_method::fork,
                                         start_method::forkserver,
                                         start_method::spawn),
                         [](const testing::TestParamInfo<start_method>& info) {
                           return std::string{to_string(info.param)};
                         });

TEST(StartFunction, RejectsArgumentsOfTheWrongTypes) {
  auto proc = start_function("pipe_test.greet", {}, 1.5);
  ASSERT_FALSE(proc);
  EXPECT_EQ(proc.error(), errc::invalid_argument);
  EXPECT_NE(text_of(proc.error()).find("pipe_test.greet"), std::string::npos);
  auto unknown = start_function("pipe_test.nope", {});
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error(), errc::unknown_entry);
}
