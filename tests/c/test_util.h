/*
 * Helpers shared by the C tests of the masked-rnn C ABI (capi_test.c, onnx_test.c, train_test.c,
 * onnx_train_test.c): a CHECK macro with pass/fail counters, output buffers followed by canaries, float
 * comparison (within a tolerance or bitwise), sets of gradient outputs, a deterministic generator, the
 * reader of the cases files tests/suite/capi.rs writes, and (for programs that define _POSIX_C_SOURCE) threads
 * that run a handle concurrently.
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
#if defined(_POSIX_C_SOURCE)
#include <pthread.h>
#endif

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

/* Whether n floats still hold the UNSET_BITS pattern and the canary after them is intact: nothing wrote
   them. */
static inline int unwritten(const float *p, size_t n) {
  size_t k;
  for (k = 0; k < n; k++) {
    uint32_t u;
    memcpy(&u, &p[k], sizeof u);
    if (u != UNSET_BITS) return 0;
  }
  return canary_intact(p, n);
}

/* A heap copy of `bytes` bytes (which may be 0), or NULL for NULL. */
static inline void *dup_bytes(const void *p, size_t bytes) {
  void *q;
  if (!p) return NULL;
  q = xmalloc(bytes);
  memcpy(q, p, bytes);
  return q;
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

/* Bitwise equality of n floats with the Rust API's; reports the first difference. */
static inline void same_bits(const char *what, const char *name, const float *got, const float *expected, size_t n) {
  size_t k;
  if (memcmp(got, expected, n * sizeof(float)) == 0) {
    passed++;
    return;
  }
  for (k = 0; k < n && memcmp(&got[k], &expected[k], sizeof(float)) == 0; k++) {
  }
  CHECK(0, "%s: %s[%lu] = %.9g, the Rust API gives %.9g (bitwise)", what, name, (unsigned long)k, got[k],
        expected[k]);
}

static inline void expect_status(const char *what, int32_t got, int32_t expected) {
  const char *msg = mrnn_last_error();
  CHECK(got == expected, "%s: status %d, expected %d (%s)", what, (int)got, (int)expected, last_error());
  if (expected != MRNN_OK) CHECK(msg != NULL && msg[0] != '\0', "%s: empty mrnn_last_error()", what);
}

static inline void expect_message(const char *what, const char *needle) {
  CHECK(strstr(mrnn_last_error(), needle) != NULL, "%s: the message does not contain \"%s\": %s", what, needle,
        last_error());
}

/* ---------------------------------------------------------------- sets of outputs */

/* Output buffers for the n outputs of sizes[k] floats selected by `want` (bit k: output k), NULL for the
   others. */
static inline void select_outputs(int n, const size_t *sizes, unsigned want, float **out) {
  int k;
  for (k = 0; k < n; k++) out[k] = (want >> k) & 1u ? out_buf(sizes[k]) : NULL;
}

/* Compares each of the n outputs that is not NULL bitwise with expected[k] (when that is not NULL),
   checks its canary and frees it. */
static inline void check_outputs(const char *what, int n, const char *const *names, const size_t *sizes,
                                 float *const *expected, float **out) {
  int k;
  for (k = 0; k < n; k++) {
    if (!out[k]) continue;
    if (expected[k]) same_bits(what, names[k], out[k], expected[k], sizes[k]);
    CHECK(canary_intact(out[k], sizes[k]), "%s: canary past %s overwritten", what, names[k]);
    free(out[k]);
    out[k] = NULL;
  }
}

/* Every gradient output of a problem (n of them, of sizes[k] floats), each followed by a canary. */
#define MAX_GRADS 8
typedef struct {
  int n;
  const size_t *sizes;
  float *g[MAX_GRADS];
} Grads;

static inline Grads new_grads(int n, const size_t *sizes) {
  Grads r;
  int k;
  r.n = n, r.sizes = sizes;
  for (k = 0; k < n; k++) r.g[k] = out_buf(sizes[k]);
  return r;
}

static inline void free_grads(Grads *r) {
  int k;
  for (k = 0; k < r->n; k++) free(r->g[k]), r->g[k] = NULL;
}

/* Whether every output still holds its unset pattern and every canary is intact. */
static inline int untouched(const Grads *r) {
  int k;
  for (k = 0; k < r->n; k++)
    if (!unwritten(r->g[k], r->sizes[k])) return 0;
  return 1;
}

/* Whether two sets of outputs are bitwise equal, canaries included. */
static inline int same_grads(const Grads *p, const Grads *q) {
  int k;
  for (k = 0; k < p->n; k++)
    if (memcmp(p->g[k], q->g[k], (p->sizes[k] + CANARY) * sizeof(float)) != 0) return 0;
  return 1;
}

/* ---------------------------------------------------------------- threads */

/* What each concurrent worker counts: runs that failed, and runs that gave other results. A worker's
   struct begins with one. */
typedef struct {
  int failures, mismatches;
} Tally;

/* The body of a concurrent training worker (`worker`, which begins with its Tally): four times, with 1,
   2, 1, 2 threads, `step` makes a tape (`*tape`, freed here) and the gradients of its run into a fresh
   `fresh()`, which must equal `expected`. */
static inline void *train_worker(void *worker, const Grads *expected, Grads (*fresh)(void),
                                 int32_t (*step)(void *worker, int32_t threads, MrnnTape **tape, const Grads *r)) {
  Tally *t = (Tally *)worker;
  int k;
  for (k = 0; k < 4; k++) {
    MrnnTape *tape = NULL;
    Grads r = fresh();
    if (step(worker, 1 + k % 2, &tape, &r) != MRNN_OK)
      t->failures++;
    else if (!same_grads(&r, expected))
      t->mismatches++;
    mrnn_tape_free(tape);
    free_grads(&r);
  }
  return NULL;
}

#if defined(_POSIX_C_SOURCE)

/* Runs body(&worker k) on n threads at once (n <= 16), worker k being the k-th of the n structs of `size`
   bytes at `workers`, each beginning with a Tally (zeroed here); waits for them all and checks that none
   failed to start or counted a failure or a mismatch. */
static inline void run_workers(int n, void *(*body)(void *), void *workers, size_t size) {
  pthread_t tid[16];
  int started[16], k;
  for (k = 0; k < n && k < 16; k++) {
    Tally *t = (Tally *)((char *)workers + (size_t)k * size);
    t->failures = 0, t->mismatches = 0;
    started[k] = pthread_create(&tid[k], NULL, body, t) == 0;
    CHECK(started[k], "pthread_create %d", k);
  }
  for (k = 0; k < n && k < 16; k++) {
    const Tally *t = (const Tally *)((char *)workers + (size_t)k * size);
    if (!started[k]) continue;
    pthread_join(tid[k], NULL);
    CHECK(t->failures == 0 && t->mismatches == 0, "concurrent thread %d: %d failures, %d mismatches", k,
          t->failures, t->mismatches);
  }
}
#endif

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

/* A kind of case in a cases file: its keyword, the function that runs one case "KIND NAME ..." (it reads
   the rest of the case from `cases`), and how many cases of the kind there were. */
typedef struct {
  const char *kind;
  void (*run)(const char *name);
  int count;
} CaseKind;

/* Reads the cases file at `path`: cases "KIND NAME ..." up to "end", each run by the one of the n `kinds`
   with its keyword (another keyword is a malformed file). */
static inline void read_cases(const char *path, CaseKind *kinds, int n) {
  char kind[32] = "", name[160];
  int k;
  cases = fopen(path, "r");
  if (!cases) {
    printf("cannot open %s\n", path);
    exit(2);
  }
  while (fscanf(cases, "%31s", kind) == 1 && strcmp(kind, "end") != 0) {
    if (fscanf(cases, "%159s", name) != 1) {
      printf("malformed cases file (name)\n");
      exit(2);
    }
    for (k = 0; k < n && strcmp(kind, kinds[k].kind) != 0; k++) {
    }
    if (k == n) {
      printf("unknown case kind %s\n", kind);
      exit(2);
    }
    kinds[k].run(name);
    kinds[k].count++;
  }
  CHECK(strcmp(kind, "end") == 0, "cases file does not end with \"end\"");
  fclose(cases);
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
