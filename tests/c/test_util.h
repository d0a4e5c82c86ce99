/*
 * Helpers shared by the C tests of the masked-rnn C ABI (capi_test.c, onnx_test.c): a CHECK macro with
 * pass/fail counters, output buffers followed by canaries, float comparison, a deterministic generator
 * and the reader of the cases files tests/capi.rs writes.
 *
 * Each test program includes this header once; the functions are static inline so that a program need
 * not use all of them (-Wunused-function does not apply to inline functions).
 */
#ifndef MRNN_TEST_UTIL_H
#define MRNN_TEST_UTIL_H

#include "masked_rnn.h"

#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed = 0;
static int failed = 0;

#define CHECK(cond, ...)                                           \
  do {                                                             \
    if (cond) {                                                    \
      passed++;                                                    \
    } else {                                                       \
      failed++;                                                    \
      printf("FAIL %s:%d: (%s) ", __FILE__, __LINE__, #cond);      \
      printf(__VA_ARGS__);                                         \
      printf("\n");                                                \
    }                                                              \
  } while (0)

#define CANARY 16
#define CANARY_BITS 0x7fa5a5a5u
#define UNSET_BITS 0x7fb00b0bu

static inline const char *last_error(void) {
  const char *e = mrnn_last_error();
  return e ? e : "(NULL)";
}

/* ---------------------------------------------------------------- buffers */

static inline void *xmalloc(size_t bytes) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) {
    printf("out of memory\n");
    exit(2);
  }
  return p;
}

static inline float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* An output buffer of n floats (set to the UNSET_BITS NaN) followed by CANARY canary floats. */
static inline float *out_buf(size_t n) {
  float *p = (float *)xmalloc((n + CANARY) * sizeof(float));
  size_t k;
  for (k = 0; k < n + CANARY; k++) p[k] = bits_to_float(k < n ? UNSET_BITS : CANARY_BITS);
  return p;
}

static inline int canary_intact(const float *p, size_t n) {
  size_t k;
  for (k = n; k < n + CANARY; k++) {
    uint32_t u;
    memcpy(&u, &p[k], sizeof u);
    if (u != CANARY_BITS) return 0;
  }
  return 1;
}

/* |a - e| <= tol * max(1, |e|), NaN equal to NaN; tol = 0 asks for equality. */
static inline int close_within(float a, float e, float tol) {
  if (isnan(a) && isnan(e)) return 1;
  if (a == e) return 1;
  return fabsf(a - e) <= tol * fmaxf(1.0f, fabsf(e));
}

static inline int close_enough(float a, float e) { return close_within(a, e, 1e-5f); }

/* Compares n floats within tol; on a mismatch reports the first one. Returns the largest
   |a - e| / max(1, |e|) seen. */
static inline double check_close_tol(const char *what, const char *name, const float *got, const float *expected,
                                     size_t n, float tol) {
  size_t k, bad = n;
  double worst = 0.0;
  for (k = 0; k < n; k++) {
    double err = fabs((double)got[k] - (double)expected[k]) / fmax(1.0, fabs((double)expected[k]));
    if (!(isnan(got[k]) && isnan(expected[k])) && (err > worst || isnan(err))) worst = isnan(err) ? INFINITY : err;
    if (bad == n && !close_within(got[k], expected[k], tol)) bad = k;
  }
  CHECK(bad == n, "%s: %s[%lu] = %.9g, expected %.9g (tolerance %g, worst relative error %.3g)", what, name,
        (unsigned long)bad, bad < n ? got[bad] : 0.0, bad < n ? expected[bad] : 0.0, tol, worst);
  return worst;
}

static inline void check_close(const char *what, const char *name, const float *got, const float *expected,
                               size_t n) {
  (void)check_close_tol(what, name, got, expected, n, 1e-5f);
}

/* Deterministic pseudo-random floats in [-scale, scale]. */
static uint32_t rng_state = 12345u;
static inline float rnd(float scale) {
  rng_state = rng_state * 1664525u + 1013904223u;
  return ((float)(rng_state >> 8) / 16777216.0f * 2.0f - 1.0f) * scale;
}
static inline float *rnd_buf(size_t n, float scale) {
  float *p = (float *)xmalloc(n * sizeof(float));
  size_t k;
  for (k = 0; k < n; k++) p[k] = rnd(scale);
  return p;
}

static inline void expect_status(const char *what, int32_t got, int32_t expected) {
  const char *msg = mrnn_last_error();
  CHECK(got == expected, "%s: status %d, expected %d (%s)", what, (int)got, (int)expected, last_error());
  if (expected != MRNN_OK) CHECK(msg != NULL && msg[0] != '\0', "%s: empty mrnn_last_error()", what);
}

/* ---------------------------------------------------------------- parsing */

static FILE *cases;

static inline long read_long(void) {
  long v;
  if (fscanf(cases, "%ld", &v) != 1) {
    printf("malformed cases file\n");
    exit(2);
  }
  return v;
}

static inline uint32_t read_bits(void) {
  uint32_t u;
  if (fscanf(cases, "%" SCNx32, &u) != 1) {
    printf("malformed cases file (float bits)\n");
    exit(2);
  }
  return u;
}

/* Reads "COUNT v...", checking COUNT against the expected size. */
static inline float *read_floats(const char *name, size_t expected) {
  long n = read_long();
  float *p;
  long k;
  if (n < 0 || (size_t)n != expected) {
    printf("array %s has %ld values, expected %lu\n", name, n, (unsigned long)expected);
    exit(2);
  }
  p = (float *)xmalloc((size_t)n * sizeof(float));
  for (k = 0; k < n; k++) p[k] = bits_to_float(read_bits());
  return p;
}

static inline uint8_t *read_mask(const char *name, size_t expected) {
  long n = read_long();
  uint8_t *p;
  long k;
  if (n < 0 || (size_t)n != expected) {
    printf("array %s has %ld values, expected %lu\n", name, n, (unsigned long)expected);
    exit(2);
  }
  p = (uint8_t *)xmalloc((size_t)n);
  for (k = 0; k < n; k++) p[k] = (uint8_t)read_long();
  return p;
}

static inline int32_t *read_ints(const char *name, size_t expected) {
  long n = read_long();
  int32_t *p;
  long k;
  if (n < 0 || (size_t)n != expected) {
    printf("array %s has %ld values, expected %lu\n", name, n, (unsigned long)expected);
    exit(2);
  }
  p = (int32_t *)xmalloc((size_t)n * sizeof(int32_t));
  for (k = 0; k < n; k++) p[k] = (int32_t)read_long();
  return p;
}

#endif /* MRNN_TEST_UTIL_H */
