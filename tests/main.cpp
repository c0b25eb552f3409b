// The test binary is its own child: in worker mode bootstrap() runs the
// worker and exits; otherwise it starts the fork server and returns.
#include <gtest/gtest.h>

#include "multiproc/bootstrap.hpp"
#include "sanitizer_reports.hpp"

int main(int argc, char** argv) {
  // Before bootstrap(): a spawned child runs its entry inside bootstrap().
  test_util::sanitizer_reports reports;
  multiproc::bootstrap(argc, argv);
  // Death tests must not fork while CAF threads are alive.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  testing::InitGoogleTest(&argc, argv);
  int rc = RUN_ALL_TESTS();
  return reports.collect() ? rc : 1;
}
