// Tests for runtime/shm_array: shared elements between handles and between
// processes, the checks of attach, and that nothing is left behind.

#include "multiproc/shm_array.hpp"

#include <chrono>
#include <cstdint>
#include <fstream>
#include <string>

#include <unistd.h>

#include <gtest/gtest.h>

#include "multiproc/bootstrap.hpp"
#include "multiproc/error.hpp"
#include "multiproc/process.hpp"
#include "multiproc/shm_queue.hpp"

using namespace std::chrono_literals;
using namespace multiproc;

namespace {

/// Lines of /proc/self/maps naming an array's memfd.
int array_mappings() {
  std::ifstream maps{"/proc/self/maps"};
  int n = 0;
  for (std::string line; std::getline(maps, line);)
    if (line.find("memfd:multiproc-array") != std::string::npos)
      ++n;
  return n;
}

/// Child: writes i * 3 into elements [first, last) of the array fds[0].
int fill_slice(child_context& ctx) {
  auto a = shm_array<int64_t>::attach(std::move(ctx.fds.at(0)));
  if (!a)
    return 2;
  size_t first = 0, last = 0;
  if (std::sscanf(ctx.args.c_str(), "%zu %zu", &first, &last) != 2)
    return 3;
  for (size_t i = first; i < last && i < a->size(); ++i)
    (*a)[i] = static_cast<int64_t>(i) * 3;
  return 0;
}

MULTIPROC_REGISTER_ENTRY("shm_array_test.fill_slice", fill_slice);

} // namespace

TEST(ShmArray, StartsZeroedAndSharesItsElementsBetweenHandles) {
  auto a = shm_array<double>::create(1000);
  ASSERT_TRUE(a) << describe(a.error());
  ASSERT_EQ(a->size(), 1000u);
  for (auto x : *a)
    ASSERT_EQ(x, 0.0);
  (*a)[7] = 2.5;
  unique_fd dup{::dup(a->fd())};
  auto b = shm_array<double>::attach(std::move(dup));
  ASSERT_TRUE(b) << describe(b.error());
  EXPECT_EQ(b->size(), 1000u);
  EXPECT_EQ((*b)[7], 2.5);
  (*b)[999] = -1.0;
  EXPECT_EQ((*a)[999], -1.0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data()) % 64, 0u);
}

TEST(ShmArray, ChildProcessesWriteDisjointSlices) {
  auto a = shm_array<int64_t>::create(100000);
  ASSERT_TRUE(a) << describe(a.error());
  std::vector<process> children;
  for (size_t k = 0; k < 4; ++k) {
    process_options opts;
    opts.fds = {a->fd()};
    auto child = start_process("shm_array_test.fill_slice",
                               std::to_string(k * 25000) + " "
                                 + std::to_string((k + 1) * 25000),
                               opts);
    ASSERT_TRUE(child) << describe(child.error());
    children.push_back(std::move(*child));
  }
  for (auto& c : children) {
    auto st = c.join(10s);
    ASSERT_TRUE(st) << describe(st.error());
    EXPECT_TRUE(st->success()) << st->to_string();
  }
  for (size_t i = 0; i < a->size(); ++i)
    ASSERT_EQ((*a)[i], static_cast<int64_t>(i) * 3) << "element " << i;
}

TEST(ShmArray, AttachRejectsAnotherElementTypeNamingBoth) {
  auto a = shm_array<double>::create(10);
  ASSERT_TRUE(a);
  auto b = shm_array<int32_t>::attach(unique_fd{::dup(a->fd())});
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error(), errc::type_mismatch);
  auto text = text_of(b.error());
  EXPECT_NE(text.find("double"), std::string::npos) << text;
  EXPECT_NE(text.find("int"), std::string::npos) << text;
  // Same size, other type.
  auto c = shm_array<int64_t>::attach(unique_fd{::dup(a->fd())});
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error(), errc::type_mismatch);
}

TEST(ShmArray, AttachRejectsADescriptorThatIsNotAnArray) {
  auto q = shm_queue::create();
  ASSERT_TRUE(q);
  auto a = shm_array<double>::attach(unique_fd{::dup(q->fd())});
  ASSERT_FALSE(a);
  EXPECT_EQ(a.error(), errc::invalid_argument);
  EXPECT_NE(text_of(a.error()).find("not a multiproc shared array"),
            std::string::npos)
    << describe(a.error());
  auto none = shm_array<double>::attach(unique_fd{});
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error(), errc::invalid_argument);
}

TEST(ShmArray, RejectsAnEmptyOrHugeArray) {
  auto empty = shm_array<double>::create(0);
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error(), errc::invalid_argument);
  auto huge = shm_array<double>::create(size_t{1} << 40);
  ASSERT_FALSE(huge);
  EXPECT_EQ(huge.error(), errc::invalid_argument);
  EXPECT_NE(text_of(huge.error()).find("1 TiB"), std::string::npos);
}

TEST(ShmArray, LeavesNoMappingBehind) {
  auto before = array_mappings();
  {
    auto a = shm_array<char>::create(1 << 20);
    ASSERT_TRUE(a);
    auto b = shm_array<char>::attach(unique_fd{::dup(a->fd())});
    ASSERT_TRUE(b);
    EXPECT_EQ(array_mappings(), before + 2);
    auto moved = std::move(*b);
    EXPECT_EQ(array_mappings(), before + 2);
  }
  EXPECT_EQ(array_mappings(), before);
}
