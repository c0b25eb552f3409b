// The test binary is its own child: in worker mode bootstrap() runs the
// worker and exits; otherwise it starts the fork server and returns.
#include <gtest/gtest.h>

#include "multiproc/bootstrap.hpp"

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv);
  // Death tests must not fork while CAF threads are alive.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
