#pragma once

// FUZZ_CHECK(cond, what): a property every input must keep. On failure it
// prints the condition and aborts, which libFuzzer reports as a crash (and
// saves the input). Shared by the harnesses in fuzz/.

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(cond, what)                                                 \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::fprintf(stderr, "%s:%d: property violated: %s (%s)\n", __FILE__,   \
                   __LINE__, #cond, what);                                     \
      std::abort();                                                            \
    }                                                                          \
  } while (false)
