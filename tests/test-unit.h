/* Tiny assertion helpers for the C unit tests. */
#ifndef TEST_UNIT_H
#define TEST_UNIT_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

static int test_failures;

#define CHECK(cond) do {                                                \
    if (!(cond)) {                                                      \
      fprintf (stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      test_failures++;                                                  \
    }                                                                   \
  } while (0)

#define CHECK_EQ(a, b) do {                                             \
    uint64_t _a = (a), _b = (b);                                        \
    if (_a != _b) {                                                     \
      fprintf (stderr, "%s:%d: CHECK_EQ failed: %s = %" PRIu64 ", %s = %" PRIu64 "\n", \
               __FILE__, __LINE__, #a, _a, #b, _b);                     \
      test_failures++;                                                  \
    }                                                                   \
  } while (0)

#define TEST_DONE() do {                                                \
    if (test_failures) {                                                \
      fprintf (stderr, "%d check(s) failed\n", test_failures);         \
      return 1;                                                         \
    }                                                                   \
    return 0;                                                           \
  } while (0)

#endif
