/*
 * C test of the embedding surface of the masked-rnn C ABI, built and run by tests/capi.rs (also under
 * valgrind):
 *
 *   embed_test [IGNORED]   (tests/capi.rs gives every C test a cases file; this one reads none)
 *
 * - The status codes: the MrnnStatus enum has the contract's values, and mrnn_status_string names each
 *   code (a static string, never NULL, "unknown status" for other values) without touching the last
 *   error.
 *
 * Prints one line per failure and closes with "N passed, M failed"; exits nonzero on any failure.
 */
#define _POSIX_C_SOURCE 200809L
#include "test_util.h"

/* ---------------------------------------------------------------- status codes */

static void status_codes(void) {
  static const struct {
    MrnnStatus status;
    int value;
    const char *name;
  } codes[] = {
      {MRNN_OK, 0, "MRNN_OK: "},
      {MRNN_ERR_NULL_POINTER, 1, "MRNN_ERR_NULL_POINTER: "},
      {MRNN_ERR_BAD_SHAPE, 2, "MRNN_ERR_BAD_SHAPE: "},
      {MRNN_ERR_BAD_ARGUMENT, 3, "MRNN_ERR_BAD_ARGUMENT: "},
      {MRNN_ERR_OVERFLOW, 4, "MRNN_ERR_OVERFLOW: "},
      {MRNN_ERR_INTERNAL, 5, "MRNN_ERR_INTERNAL: "},
  };
  static const int32_t unknown[] = {-1, 6, 7, 1000, INT32_MIN, INT32_MAX};
  const char *before;
  size_t k;

  /* A failure to leave a last error behind: mrnn_status_string must not change it. */
  expect_status("attrs_init(NULL)", mrnn_keras_lstm_attrs_init(NULL), MRNN_ERR_NULL_POINTER);
  before = mrnn_last_error();
  for (k = 0; k < sizeof codes / sizeof codes[0]; k++) {
    const char *s = mrnn_status_string(codes[k].status);
    CHECK((int)codes[k].status == codes[k].value, "%s has the value %d", codes[k].name, (int)codes[k].status);
    CHECK(s != NULL && strncmp(s, codes[k].name, strlen(codes[k].name)) == 0 && strlen(s) > strlen(codes[k].name) + 5,
          "mrnn_status_string(%d) = \"%s\", expected \"%s...\"", codes[k].value, s ? s : "(NULL)", codes[k].name);
    CHECK(s == mrnn_status_string(codes[k].value), "mrnn_status_string(%d) is not one static string",
          codes[k].value);
  }
  for (k = 0; k < sizeof unknown / sizeof unknown[0]; k++) {
    const char *s = mrnn_status_string(unknown[k]);
    CHECK(s != NULL && strncmp(s, "unknown status", 14) == 0, "mrnn_status_string(%ld) = \"%s\"", (long)unknown[k],
          s ? s : "(NULL)");
  }
  CHECK(mrnn_last_error() == before && strstr(before, "attrs") != NULL,
        "mrnn_status_string changed the last error: %s", last_error());
}

int main(void) {
  status_codes();
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
