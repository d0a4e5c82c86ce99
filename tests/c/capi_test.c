/*
 * C test of the masked-rnn C ABI, built and run by tests/suite/capi.rs.
 *
 *   capi_test CASES_FILE [EXPECTED_VERSION]
 *
 * CASES_FILE holds Keras golden fixtures converted by tests/suite/capi.rs into whitespace-separated text:
 *   lstm NAME B T I H go_backwards zero_output_for_mask activation recurrent_activation
 *        ALPHA_BITS BETA_BITS HAS_MASK HAS_INITIAL
 *     then arrays x, mask, kernel, recurrent_kernel, bias, [initial_h, initial_c,] y, last_output, h_n, c_n
 *   masking NAME B T F MASK_VALUE_BITS
 *     then arrays x, mask
 *   end
 * Each array is "COUNT v0 v1 ...": floats as the hex bits of the IEEE single, masks as 0/1.
 *
 * Also checks the handles (mrnn_keras_lstm_new / _run / _free) against mrnn_lstm_keras, bitwise, on every
 * fixture and on several shapes per handle, from several threads at once.
 *
 * Prints one line per failure and closes with "N passed, M failed"; exits nonzero on any failure.
 */
#define _POSIX_C_SOURCE 200809L
#include "test_util.h"

/* ---------------------------------------------------------------- fixtures */

static void lstm_fixture(const char *name) {
  MrnnKerasLstmAttrs a;
  long B, T, I, H, has_mask, has_init;
  size_t nx, nm, nk, nr, nb, ns, ny;
  float *x, *kernel, *rk, *bias, *h0 = NULL, *c0 = NULL, *ey, *el, *eh, *ec;
  float *y, *last, *hn, *cn, *y1, *y2, *y0, *hn_only;
  uint8_t *mask;
  int32_t st;

  mrnn_keras_lstm_attrs_init(&a);
  B = read_long();
  T = read_long();
  I = read_long();
  H = read_long();
  a.batch_size = B;
  a.seq_length = T;
  a.input_size = I;
  a.hidden_size = H;
  a.go_backwards = (int32_t)read_long();
  a.zero_output_for_mask = (int32_t)read_long();
  a.activation = (int32_t)read_long();
  a.recurrent_activation = (int32_t)read_long();
  a.recurrent_alpha = bits_to_float(read_bits());
  a.recurrent_beta = bits_to_float(read_bits());
  has_mask = read_long();
  has_init = read_long();
  nx = (size_t)(B * T * I);
  nm = (size_t)(B * T);
  nk = (size_t)(I * 4 * H);
  nr = (size_t)(H * 4 * H);
  nb = (size_t)(4 * H);
  ns = (size_t)(B * H);
  ny = (size_t)(B * T * H);
  x = read_floats("x", nx);
  mask = read_mask("mask", nm);
  kernel = read_floats("kernel", nk);
  rk = read_floats("recurrent_kernel", nr);
  bias = read_floats("bias", nb);
  if (has_init) {
    h0 = read_floats("initial_h", ns);
    c0 = read_floats("initial_c", ns);
  }
  ey = read_floats("y", ny);
  el = read_floats("last_output", ns);
  eh = read_floats("h_n", ns);
  ec = read_floats("c_n", ns);

  y = out_buf(ny);
  last = out_buf(ns);
  hn = out_buf(ns);
  cn = out_buf(ns);
  st = mrnn_lstm_keras(&a, x, has_mask ? mask : NULL, kernel, rk, bias, h0, c0, y, last, hn, cn);
  CHECK(st == MRNN_OK, "%s: status %d: %s", name, (int)st, last_error());
  check_close(name, "y", y, ey, ny);
  check_close(name, "last_output", last, el, ns);
  check_close(name, "h_n", hn, eh, ns);
  check_close(name, "c_n", cn, ec, ns);
  CHECK(canary_intact(y, ny) && canary_intact(last, ns) && canary_intact(hn, ns) && canary_intact(cn, ns),
        "%s: a canary past an output was overwritten", name);

  /* Threads: 1, 2 and the default give bitwise the same y. */
  y1 = out_buf(ny);
  y2 = out_buf(ny);
  y0 = out_buf(ny);
  a.num_threads = 1;
  st = mrnn_lstm_keras(&a, x, has_mask ? mask : NULL, kernel, rk, bias, h0, c0, y1, NULL, NULL, NULL);
  CHECK(st == MRNN_OK, "%s (1 thread): status %d: %s", name, (int)st, last_error());
  a.num_threads = 2;
  st = mrnn_lstm_keras(&a, x, has_mask ? mask : NULL, kernel, rk, bias, h0, c0, y2, NULL, NULL, NULL);
  CHECK(st == MRNN_OK, "%s (2 threads): status %d: %s", name, (int)st, last_error());
  a.num_threads = 0;
  st = mrnn_lstm_keras(&a, x, has_mask ? mask : NULL, kernel, rk, bias, h0, c0, y0, NULL, NULL, NULL);
  CHECK(st == MRNN_OK, "%s (default threads): status %d: %s", name, (int)st, last_error());
  CHECK(memcmp(y1, y2, ny * sizeof(float)) == 0, "%s: y differs between 1 and 2 threads", name);
  CHECK(memcmp(y1, y0, ny * sizeof(float)) == 0, "%s: y differs between 1 and default threads", name);
  CHECK(memcmp(y1, y, ny * sizeof(float)) == 0, "%s: y alone differs from y with every output", name);

  /* Only h_n requested: the same h_n; every output NULL: OK. */
  hn_only = out_buf(ns);
  st = mrnn_lstm_keras(&a, x, has_mask ? mask : NULL, kernel, rk, bias, h0, c0, NULL, NULL, hn_only, NULL);
  CHECK(st == MRNN_OK && memcmp(hn_only, hn, ns * sizeof(float)) == 0, "%s: h_n alone differs (status %d)", name,
        (int)st);
  st = mrnn_lstm_keras(&a, x, has_mask ? mask : NULL, kernel, rk, bias, h0, c0, NULL, NULL, NULL, NULL);
  CHECK(st == MRNN_OK, "%s: every output NULL: status %d: %s", name, (int)st, last_error());

  /* A handle made from the same attributes and weights gives bitwise the one-shot outputs, for every
     thread count, and then again on its second and third runs (reused scratch memory). */
  {
    MrnnKerasLstm *layer = NULL;
    float *hy = out_buf(ny), *hl = out_buf(ns), *hh = out_buf(ns), *hc = out_buf(ns);
    int32_t threads;
    st = mrnn_keras_lstm_new(&a, kernel, rk, bias, &layer);
    CHECK(st == MRNN_OK && layer != NULL, "%s: mrnn_keras_lstm_new: status %d: %s", name, (int)st, last_error());
    for (threads = 0; threads <= 2 && layer; threads++) {
      a.num_threads = threads;
      st = mrnn_keras_lstm_run(layer, &a, x, has_mask ? mask : NULL, h0, c0, hy, hl, hh, hc);
      CHECK(st == MRNN_OK, "%s: handle run (%d threads): status %d: %s", name, (int)threads, (int)st, last_error());
      CHECK(memcmp(hy, y, ny * sizeof(float)) == 0 && memcmp(hl, last, ns * sizeof(float)) == 0 &&
                memcmp(hh, hn, ns * sizeof(float)) == 0 && memcmp(hc, cn, ns * sizeof(float)) == 0,
            "%s: handle run (%d threads) differs from mrnn_lstm_keras", name, (int)threads);
      CHECK(canary_intact(hy, ny) && canary_intact(hl, ns) && canary_intact(hh, ns) && canary_intact(hc, ns),
            "%s: handle run: a canary was overwritten", name);
    }
    a.num_threads = 0;
    mrnn_keras_lstm_free(layer);
    free(hy), free(hl), free(hh), free(hc);
  }

  /* HardSigmoid with NaN parameters is the explicit 0.2 / 0.5. */
  if (a.recurrent_activation == MRNN_ACT_HARD_SIGMOID && isnan(a.recurrent_alpha) && isnan(a.recurrent_beta)) {
    a.recurrent_alpha = 0.2f;
    a.recurrent_beta = 0.5f;
    st = mrnn_lstm_keras(&a, x, has_mask ? mask : NULL, kernel, rk, bias, h0, c0, y2, NULL, NULL, NULL);
    CHECK(st == MRNN_OK && memcmp(y1, y2, ny * sizeof(float)) == 0,
          "%s: explicit HardSigmoid 0.2/0.5 differs from the NaN defaults", name);
  }

  free(x);
  free(mask);
  free(kernel);
  free(rk);
  free(bias);
  free(h0);
  free(c0);
  free(ey);
  free(el);
  free(eh);
  free(ec);
  free(y);
  free(last);
  free(hn);
  free(cn);
  free(y1);
  free(y2);
  free(y0);
  free(hn_only);
}

static void masking_fixture(const char *name) {
  long B = read_long(), T = read_long(), F = read_long();
  float mv = bits_to_float(read_bits());
  size_t nx = (size_t)(B * T * F), nm = (size_t)(B * T), k;
  float *x = read_floats("x", nx);
  uint8_t *expected = read_mask("mask", nm);
  uint8_t *got = (uint8_t *)xmalloc(nm + CANARY);
  int32_t st;
  memset(got, 0xee, nm);
  memset(got + nm, 0xa5, CANARY);
  /* Keras Masking compares with IEEE semantics: nan_aware = 0. */
  st = mrnn_mask_from_value(x, B, T, F, mv, 0, got);
  CHECK(st == MRNN_OK, "%s: status %d: %s", name, (int)st, last_error());
  for (k = 0; k < nm && got[k] == expected[k]; k++) {
  }
  CHECK(k == nm, "%s: mask[%lu] = %d, expected %d", name, (unsigned long)k, k < nm ? got[k] : 0,
        k < nm ? expected[k] : 0);
  for (k = nm; k < nm + CANARY && got[k] == 0xa5; k++) {
  }
  CHECK(k == nm + CANARY, "%s: canary past mask_out overwritten", name);
  free(x);
  free(expected);
  free(got);
}

static int run_fixtures(const char *path) {
  CaseKind kinds[2] = {{"lstm", lstm_fixture, 0}, {"masking", masking_fixture, 0}};
  read_cases(path, kinds, 2);
  printf("fixtures: %d lstm, %d masking\n", kinds[0].count, kinds[1].count);
  return kinds[0].count + kinds[1].count;
}

/* ---------------------------------------------------------------- contract */

/* A small valid problem for the argument checks. */
#define SB 3
#define ST 5
#define SI 2
#define SH 4

static float sx[SB * ST * SI], sk[SI * 4 * SH], sr[SH * 4 * SH], sbias[4 * SH];

static MrnnKerasLstmAttrs small_attrs(void) {
  MrnnKerasLstmAttrs a;
  mrnn_keras_lstm_attrs_init(&a);
  a.batch_size = SB;
  a.seq_length = ST;
  a.input_size = SI;
  a.hidden_size = SH;
  return a;
}

static int32_t call_small(const MrnnKerasLstmAttrs *a, float *y) {
  return mrnn_lstm_keras(a, sx, NULL, sk, sr, sbias, NULL, NULL, y, NULL, NULL, NULL);
}

static void contract_tests(const char *expected_version) {
  MrnnKerasLstmAttrs a, ok = small_attrs();
  const size_t ny = SB * ST * SH, ns = SB * SH;
  float *y = out_buf(ny), *y2 = out_buf(ny), *hn = out_buf(ns), *cn = out_buf(ns);
  float *h0 = rnd_buf(ns, 1.0f), *zeros = (float *)xmalloc(ns * sizeof(float));
  uint8_t ones[SB * ST], holes[SB * ST];
  size_t k;
  int32_t st;
  char saved[512];

  for (k = 0; k < sizeof sx / sizeof sx[0]; k++) sx[k] = rnd(1.0f);
  for (k = 0; k < sizeof sk / sizeof sk[0]; k++) sk[k] = rnd(0.5f);
  for (k = 0; k < sizeof sr / sizeof sr[0]; k++) sr[k] = rnd(0.5f);
  for (k = 0; k < sizeof sbias / sizeof sbias[0]; k++) sbias[k] = rnd(0.5f);
  for (k = 0; k < ns; k++) zeros[k] = 0.0f;
  for (k = 0; k < SB * ST; k++) {
    ones[k] = 1;
    holes[k] = (uint8_t)(k % 3 != 1 ? (k % 2 ? 255 : 1) : 0);
  }

  /* Version and layout. */
  CHECK(mrnn_version() != NULL && strlen(mrnn_version()) > 0, "empty version");
  if (expected_version) CHECK(strcmp(mrnn_version(), expected_version) == 0, "version %s", mrnn_version());
  CHECK(sizeof(MrnnKerasLstmAttrs) == 64, "sizeof(MrnnKerasLstmAttrs) = %lu", (unsigned long)sizeof(MrnnKerasLstmAttrs));
  CHECK(offsetof(MrnnKerasLstmAttrs, go_backwards) == 32 && offsetof(MrnnKerasLstmAttrs, recurrent_alpha) == 48 &&
            offsetof(MrnnKerasLstmAttrs, num_threads) == 56,
        "MrnnKerasLstmAttrs field offsets");
  CHECK(ok.activation == MRNN_ACT_TANH && ok.recurrent_activation == MRNN_ACT_SIGMOID && isnan(ok.recurrent_alpha) &&
            ok.num_threads == 0 && ok.go_backwards == 0,
        "mrnn_keras_lstm_attrs_init defaults");
  expect_status("attrs_init(NULL)", mrnn_keras_lstm_attrs_init(NULL), MRNN_ERR_NULL_POINTER);

  /* Success. */
  expect_status("valid call", call_small(&ok, y), MRNN_OK);
  CHECK(canary_intact(y, ny), "canary past y overwritten");

  /* NULL pointers. */
  expect_status("NULL attrs", mrnn_lstm_keras(NULL, sx, NULL, sk, sr, NULL, NULL, NULL, y, NULL, NULL, NULL),
                MRNN_ERR_NULL_POINTER);
  expect_status("NULL x", mrnn_lstm_keras(&ok, NULL, NULL, sk, sr, NULL, NULL, NULL, y, NULL, NULL, NULL),
                MRNN_ERR_NULL_POINTER);
  CHECK(strstr(mrnn_last_error(), "x") != NULL, "message names x: %s", last_error());
  expect_status("NULL kernel", mrnn_lstm_keras(&ok, sx, NULL, NULL, sr, NULL, NULL, NULL, y, NULL, NULL, NULL),
                MRNN_ERR_NULL_POINTER);
  expect_status("NULL recurrent_kernel",
                mrnn_lstm_keras(&ok, sx, NULL, sk, NULL, NULL, NULL, NULL, y, NULL, NULL, NULL), MRNN_ERR_NULL_POINTER);
  a = ok;
  a.batch_size = 0;
  expect_status("NULL x with an empty batch", mrnn_lstm_keras(&a, NULL, NULL, sk, sr, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
                MRNN_ERR_NULL_POINTER);
  expect_status("empty batch", mrnn_lstm_keras(&a, sx, NULL, sk, sr, NULL, NULL, NULL, y, hn, cn, NULL), MRNN_OK);

  /* The message survives a successful call (until the next failure). */
  expect_status("NULL attrs again", mrnn_lstm_keras(NULL, sx, NULL, sk, sr, NULL, NULL, NULL, y, NULL, NULL, NULL),
                MRNN_ERR_NULL_POINTER);
  strncpy(saved, mrnn_last_error(), sizeof saved - 1);
  saved[sizeof saved - 1] = '\0';
  expect_status("valid call after a failure", call_small(&ok, y), MRNN_OK);
  CHECK(strcmp(saved, mrnn_last_error()) == 0, "a successful call changed mrnn_last_error(): %s", last_error());

  /* Bad values. */
  a = ok, a.batch_size = -1;
  expect_status("batch_size -1", call_small(&a, y), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.seq_length = -5;
  expect_status("seq_length -5", call_small(&a, y), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.input_size = INT64_MIN;
  expect_status("input_size INT64_MIN", call_small(&a, y), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.hidden_size = -1;
  expect_status("hidden_size -1", call_small(&a, y), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.hidden_size = 0;
  expect_status("hidden_size 0", call_small(&a, y), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.activation = 11;
  expect_status("activation 11", call_small(&a, y), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.activation = -1;
  expect_status("activation -1", call_small(&a, y), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.recurrent_activation = 11;
  expect_status("recurrent_activation 11", call_small(&a, y), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.recurrent_activation = -1;
  expect_status("recurrent_activation -1", call_small(&a, y), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.go_backwards = 2;
  expect_status("go_backwards 2", call_small(&a, y), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.zero_output_for_mask = -1;
  expect_status("zero_output_for_mask -1", call_small(&a, y), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.num_threads = -1;
  expect_status("num_threads -1", call_small(&a, y), MRNN_ERR_BAD_ARGUMENT);

  /* Overflow (the buffers are never read: validation fails first). */
  a = ok, a.batch_size = INT64_MAX / 2, a.seq_length = 4;
  expect_status("batch_size INT64_MAX/2, seq_length 4", call_small(&a, y), MRNN_ERR_OVERFLOW);
  a = ok, a.input_size = INT64_MAX / 8, a.hidden_size = 4;
  expect_status("input_size * 4H", call_small(&a, y), MRNN_ERR_OVERFLOW);
  a = ok, a.hidden_size = INT64_MAX / 4;
  expect_status("4H", call_small(&a, y), MRNN_ERR_OVERFLOW);
  a = ok, a.batch_size = (int64_t)1 << 31, a.seq_length = (int64_t)1 << 30, a.input_size = 1;
  expect_status("x bytes past PTRDIFF_MAX", call_small(&a, y), MRNN_ERR_OVERFLOW);
  a = ok, a.batch_size = INT64_MAX, a.seq_length = INT64_MAX, a.input_size = -1;
  expect_status("negative wins over overflow", call_small(&a, y), MRNN_ERR_BAD_ARGUMENT);

  /* A failing call writes nothing. */
  memcpy(y2, y, (ny + CANARY) * sizeof(float));
  a = ok, a.activation = 42;
  expect_status("activation 42", call_small(&a, y), MRNN_ERR_BAD_ARGUMENT);
  CHECK(memcmp(y, y2, (ny + CANARY) * sizeof(float)) == 0, "a failing call wrote y");

  /* Overlapping outputs. */
  expect_status("h_n overlaps c_n", mrnn_lstm_keras(&ok, sx, NULL, sk, sr, NULL, NULL, NULL, NULL, NULL, hn, hn + 1),
                MRNN_ERR_BAD_ARGUMENT);
  /* x and y in one buffer large enough for y, so a missed overlap could not write out of bounds. */
  memcpy(y2, sx, sizeof sx);
  expect_status("y overlaps x", mrnn_lstm_keras(&ok, y2, NULL, sk, sr, NULL, NULL, NULL, y2, NULL, NULL, NULL),
                MRNN_ERR_BAD_ARGUMENT);

  /* NULL mask = all valid; a missing initial_c = zeros; NULL outputs everywhere = nothing written. */
  st = mrnn_lstm_keras(&ok, sx, NULL, sk, sr, sbias, NULL, NULL, y, NULL, NULL, NULL);
  CHECK(st == MRNN_OK, "NULL mask: %s", last_error());
  st = mrnn_lstm_keras(&ok, sx, ones, sk, sr, sbias, NULL, NULL, y2, NULL, NULL, NULL);
  CHECK(st == MRNN_OK && memcmp(y, y2, ny * sizeof(float)) == 0, "NULL mask differs from an all-ones mask");
  st = mrnn_lstm_keras(&ok, sx, holes, sk, sr, sbias, h0, NULL, y, NULL, hn, cn);
  CHECK(st == MRNN_OK, "initial_c NULL: %s", last_error());
  st = mrnn_lstm_keras(&ok, sx, holes, sk, sr, sbias, h0, zeros, y2, NULL, NULL, NULL);
  CHECK(st == MRNN_OK && memcmp(y, y2, ny * sizeof(float)) == 0, "initial_c NULL differs from zeros");
  st = mrnn_lstm_keras(&ok, sx, holes, sk, sr, sbias, zeros, h0, y, NULL, NULL, NULL);
  CHECK(st == MRNN_OK, "initial_h zeros: %s", last_error());
  st = mrnn_lstm_keras(&ok, sx, holes, sk, sr, sbias, NULL, h0, y2, NULL, NULL, NULL);
  CHECK(st == MRNN_OK && memcmp(y, y2, ny * sizeof(float)) == 0, "initial_h NULL differs from zeros");
  expect_status("every output NULL", mrnn_lstm_keras(&ok, sx, holes, sk, sr, sbias, h0, h0, NULL, NULL, NULL, NULL),
                MRNN_OK);

  /* Threads 1 vs 2 with holes and go_backwards: bitwise identical. */
  a = ok, a.go_backwards = 1, a.num_threads = 1;
  st = mrnn_lstm_keras(&a, sx, holes, sk, sr, sbias, NULL, NULL, y, NULL, NULL, NULL);
  a.num_threads = 2;
  st |= mrnn_lstm_keras(&a, sx, holes, sk, sr, sbias, NULL, NULL, y2, NULL, NULL, NULL);
  CHECK(st == MRNN_OK && memcmp(y, y2, ny * sizeof(float)) == 0, "threads 1 vs 2 differ");
  CHECK(canary_intact(y, ny) && canary_intact(y2, ny) && canary_intact(hn, ns) && canary_intact(cn, ns),
        "a canary was overwritten");

  /* mrnn_mask_from_value. */
  {
    const float nanv = bits_to_float(0x7fc00000u);
    float mx[2 * 3 * 2] = {0.0f, 0.0f, 1.0f, 0.0f, -0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    uint8_t m[6 + CANARY];
    memset(m, 0xa5, sizeof m);
    mx[6] = nanv;
    mx[7] = nanv;
    mx[8] = nanv;
    expect_status("mask: zero", mrnn_mask_from_value(mx, 2, 3, 2, 0.0f, 0, m), MRNN_OK);
    CHECK(m[0] == 0 && m[1] == 1 && m[2] == 0 && m[3] == 1 && m[4] == 1 && m[5] == 0, "mask 0.0: %d%d%d%d%d%d", m[0],
          m[1], m[2], m[3], m[4], m[5]);
    expect_status("mask: NaN, IEEE", mrnn_mask_from_value(mx, 2, 3, 2, nanv, 0, m), MRNN_OK);
    CHECK(m[0] && m[1] && m[2] && m[3] && m[4] && m[5], "a NaN mask_value masks nothing with IEEE comparison");
    expect_status("mask: NaN, NaN-aware", mrnn_mask_from_value(mx, 2, 3, 2, nanv, 1, m), MRNN_OK);
    CHECK(m[0] && m[1] && m[2] && !m[3] && m[4] && m[5], "NaN-aware: %d%d%d%d%d%d", m[0], m[1], m[2], m[3], m[4], m[5]);
    for (k = 6; k < sizeof m && m[k] == 0xa5; k++) {
    }
    CHECK(k == sizeof m, "canary past mask_out overwritten");
    expect_status("mask: NULL x", mrnn_mask_from_value(NULL, 2, 3, 2, 0.0f, 0, m), MRNN_ERR_NULL_POINTER);
    expect_status("mask: NULL out", mrnn_mask_from_value(mx, 2, 3, 2, 0.0f, 0, NULL), MRNN_ERR_NULL_POINTER);
    expect_status("mask: negative", mrnn_mask_from_value(mx, 2, -3, 2, 0.0f, 0, m), MRNN_ERR_BAD_ARGUMENT);
    expect_status("mask: nan_aware 2", mrnn_mask_from_value(mx, 2, 3, 2, 0.0f, 2, m), MRNN_ERR_BAD_ARGUMENT);
    expect_status("mask: overflow", mrnn_mask_from_value(mx, INT64_MAX / 2, 4, 2, 0.0f, 0, m), MRNN_ERR_OVERFLOW);
    expect_status("mask: zero features", mrnn_mask_from_value(mx, 2, 3, 0, 0.0f, 0, m), MRNN_OK);
    CHECK(!m[0] && !m[5], "zero features mask every step");
  }

  free(y);
  free(y2);
  free(hn);
  free(cn);
  free(h0);
  free(zeros);
}

/* ---------------------------------------------------------------- handles */

/* Runs mrnn_lstm_keras and the handle on one problem of batch B, length T (mask with holes, optional
   initial states, every output) and checks the four outputs bitwise equal. */
static void handle_vs_one_shot(const char *what, MrnnKerasLstm *layer, MrnnKerasLstmAttrs a, const float *kernel,
                               const float *rk, const float *bias, long B, long T, int32_t threads, int with_init) {
  size_t nx = (size_t)(B * T * a.input_size), nm = (size_t)(B * T), ns = (size_t)(B * a.hidden_size);
  size_t ny = (size_t)B * (size_t)T * (size_t)a.hidden_size, k;
  float *x = rnd_buf(nx, 1.5f), *h0 = rnd_buf(ns, 1.0f), *c0 = rnd_buf(ns, 1.0f);
  uint8_t *mask = (uint8_t *)xmalloc(nm);
  float *o[4], *e[4];
  size_t n[4];
  int32_t s1, s2;
  n[0] = ny, n[1] = ns, n[2] = ns, n[3] = ns;
  for (k = 0; k < nm; k++) mask[k] = (uint8_t)((k * 7 + (size_t)T) % 5 != 1);
  for (k = 0; k < 4; k++) o[k] = out_buf(n[k]), e[k] = out_buf(n[k]);
  a.batch_size = B, a.seq_length = T, a.num_threads = threads;
  s1 = mrnn_lstm_keras(&a, x, mask, kernel, rk, bias, with_init ? h0 : NULL, with_init == 1 ? c0 : NULL, e[0], e[1],
                       e[2], e[3]);
  s2 = mrnn_keras_lstm_run(layer, &a, x, mask, with_init ? h0 : NULL, with_init == 1 ? c0 : NULL, o[0], o[1], o[2],
                           o[3]);
  CHECK(s1 == MRNN_OK && s2 == MRNN_OK, "%s (B %ld T %ld, %d threads): statuses %d, %d: %s", what, B, T, (int)threads,
        (int)s1, (int)s2, last_error());
  for (k = 0; k < 4; k++) {
    CHECK(memcmp(o[k], e[k], n[k] * sizeof(float)) == 0, "%s (B %ld T %ld, %d threads): output %lu differs", what, B,
          T, (int)threads, (unsigned long)k);
    CHECK(canary_intact(o[k], n[k]), "%s: canary past output %lu overwritten", what, (unsigned long)k);
    free(o[k]), free(e[k]);
  }
  free(x), free(h0), free(c0), free(mask);
}

/* Concurrent runs on one handle: each thread runs it several times and compares with `expected`. */
typedef struct {
  Tally tally;
  MrnnKerasLstm *layer;
  MrnnKerasLstmAttrs a;
  const float *x, *expected;
  size_t ny;
} Worker;

static void *worker_main(void *arg) {
  Worker *w = (Worker *)arg;
  float *y = out_buf(w->ny);
  int k;
  for (k = 0; k < 8; k++) {
    if (mrnn_keras_lstm_run(w->layer, &w->a, w->x, NULL, NULL, NULL, y, NULL, NULL, NULL) != MRNN_OK)
      w->tally.failures++;
    else if (memcmp(y, w->expected, w->ny * sizeof(float)) != 0 || !canary_intact(y, w->ny))
      w->tally.mismatches++;
  }
  free(y);
  return NULL;
}

static void handle_tests(void) {
  MrnnKerasLstmAttrs ok = small_attrs(), a;
  MrnnKerasLstm *layer = NULL, *sentinel = (MrnnKerasLstm *)&ok, *out;
  const size_t ny = SB * ST * SH, ns = SB * SH;
  float *y = out_buf(ny), *y2 = out_buf(ny), *hn = out_buf(ns), *cn = out_buf(ns);
  int32_t st;
  int k;

  /* _free(NULL) is a no-op. */
  mrnn_keras_lstm_free(NULL);
  CHECK(1, "free(NULL)");

  /* NULL pointers, bad values, overflow, pointers: *out untouched. */
  out = sentinel;
  expect_status("new: NULL attrs", mrnn_keras_lstm_new(NULL, sk, sr, sbias, &out), MRNN_ERR_NULL_POINTER);
  expect_status("new: NULL kernel", mrnn_keras_lstm_new(&ok, NULL, sr, sbias, &out), MRNN_ERR_NULL_POINTER);
  CHECK(strstr(mrnn_last_error(), "kernel") != NULL, "message names kernel: %s", last_error());
  expect_status("new: NULL recurrent_kernel", mrnn_keras_lstm_new(&ok, sk, NULL, sbias, &out), MRNN_ERR_NULL_POINTER);
  expect_status("new: NULL out", mrnn_keras_lstm_new(&ok, sk, sr, sbias, NULL), MRNN_ERR_NULL_POINTER);
  CHECK(strstr(mrnn_last_error(), "out") != NULL, "message names out: %s", last_error());
  a = ok, a.hidden_size = 0;
  expect_status("new: hidden_size 0", mrnn_keras_lstm_new(&a, sk, sr, sbias, &out), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.batch_size = -1;
  expect_status("new: batch_size -1 (unused, still checked)", mrnn_keras_lstm_new(&a, sk, sr, sbias, &out),
                MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.num_threads = -1;
  expect_status("new: num_threads -1", mrnn_keras_lstm_new(&a, sk, sr, sbias, &out), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.recurrent_activation = 11;
  expect_status("new: recurrent_activation 11", mrnn_keras_lstm_new(&a, sk, sr, sbias, &out), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.hidden_size = INT64_MAX / 4;
  expect_status("new: 4H overflows", mrnn_keras_lstm_new(&a, sk, sr, sbias, &out), MRNN_ERR_OVERFLOW);
  expect_status("new: misaligned kernel",
                mrnn_keras_lstm_new(&ok, (const float *)((const char *)sk + 2), sr, sbias, &out),
                MRNN_ERR_BAD_ARGUMENT);
  {
    MrnnKerasLstm *slots[2] = {NULL, NULL};
    expect_status("new: misaligned out",
                  mrnn_keras_lstm_new(&ok, sk, sr, sbias, (MrnnKerasLstm **)((char *)slots + 1)),
                  MRNN_ERR_BAD_ARGUMENT);
    CHECK(slots[0] == NULL && slots[1] == NULL, "a failing mrnn_keras_lstm_new wrote a misaligned out");
  }
  CHECK(out == sentinel, "a failing mrnn_keras_lstm_new wrote *out");
  /* B and T are not used at creation: any non-negative value. */
  a = ok, a.batch_size = INT64_MAX, a.seq_length = INT64_MAX;
  expect_status("new: huge B and T", mrnn_keras_lstm_new(&a, sk, sr, sbias, &layer), MRNN_OK);
  CHECK(layer != NULL && layer != sentinel, "mrnn_keras_lstm_new gave no handle");
  if (!layer) return;

  /* Run: NULL pointers, then mismatched attributes, each named; nothing written. */
  memcpy(y2, y, (ny + CANARY) * sizeof(float));
  expect_status("run: NULL layer", mrnn_keras_lstm_run(NULL, &ok, sx, NULL, NULL, NULL, y, NULL, NULL, NULL),
                MRNN_ERR_NULL_POINTER);
  CHECK(strstr(mrnn_last_error(), "layer") != NULL, "message names layer: %s", last_error());
  expect_status("run: NULL attrs", mrnn_keras_lstm_run(layer, NULL, sx, NULL, NULL, NULL, y, NULL, NULL, NULL),
                MRNN_ERR_NULL_POINTER);
  expect_status("run: NULL x", mrnn_keras_lstm_run(layer, &ok, NULL, NULL, NULL, NULL, y, NULL, NULL, NULL),
                MRNN_ERR_NULL_POINTER);
  {
    static const char *fields[] = {"input_size", "hidden_size", "go_backwards", "zero_output_for_mask",
                                   "activation", "recurrent_activation"};
    for (k = 0; k < 6; k++) {
      char what[96], needle[64];
      a = ok;
      if (k == 0) a.input_size = SI - 1;
      if (k == 1) a.hidden_size = SH - 1;
      if (k == 2) a.go_backwards = 1;
      if (k == 3) a.zero_output_for_mask = 1;
      if (k == 4) a.activation = MRNN_ACT_RELU;
      if (k == 5) a.recurrent_activation = MRNN_ACT_HARD_SIGMOID;
      sprintf(what, "run: %s differs from the handle's", fields[k]);
      sprintf(needle, "attrs.%s ", fields[k]);
      expect_status(what, mrnn_keras_lstm_run(layer, &a, sx, NULL, NULL, NULL, y, NULL, NULL, NULL),
                    MRNN_ERR_BAD_ARGUMENT);
      CHECK(strstr(mrnn_last_error(), needle) != NULL, "%s: message %s", what, last_error());
    }
  }
  a = ok, a.recurrent_alpha = 0.7f; /* ignored unless HardSigmoid */
  a.batch_size = -2;
  expect_status("run: batch_size -2", mrnn_keras_lstm_run(layer, &a, sx, NULL, NULL, NULL, y, NULL, NULL, NULL),
                MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.batch_size = INT64_MAX / 2, a.seq_length = 4;
  expect_status("run: B*T overflows", mrnn_keras_lstm_run(layer, &a, sx, NULL, NULL, NULL, y, NULL, NULL, NULL),
                MRNN_ERR_OVERFLOW);
  expect_status("run: h_n overlaps c_n", mrnn_keras_lstm_run(layer, &ok, sx, NULL, NULL, NULL, NULL, NULL, hn, hn + 1),
                MRNN_ERR_BAD_ARGUMENT);
  expect_status("run: misaligned x",
                mrnn_keras_lstm_run(layer, &ok, (const float *)((const char *)sx + 1), NULL, NULL, NULL, y, NULL,
                                    NULL, NULL),
                MRNN_ERR_BAD_ARGUMENT);
  CHECK(memcmp(y, y2, (ny + CANARY) * sizeof(float)) == 0, "a failing run wrote y");
  a = ok, a.recurrent_alpha = 0.7f, a.recurrent_beta = -3.0f;
  expect_status("run: recurrent_alpha/beta ignored without HardSigmoid",
                mrnn_keras_lstm_run(layer, &a, sx, NULL, NULL, NULL, y, NULL, hn, cn), MRNN_OK);
  mrnn_keras_lstm_free(layer);

  /* One handle, many shapes: every run equals mrnn_lstm_keras bitwise (the scratch memory grows, shrinks,
     grows again). Also with go_backwards, zero_output_for_mask, a HardSigmoid and H = 17. */
  for (k = 0; k < 3; k++) {
    static const long shapes[][2] = {{3, 5}, {1, 2}, {8, 11}, {0, 4}, {2, 0}, {3, 5}, {1, 1}, {8, 11}};
    size_t j, nk, nr;
    float *kk, *rr, *bb;
    char what[64];
    a = ok;
    if (k == 1) a.go_backwards = 1, a.zero_output_for_mask = 1, a.hidden_size = 17, a.input_size = 3;
    if (k == 2) a.recurrent_activation = MRNN_ACT_HARD_SIGMOID, a.recurrent_alpha = 1.0f / 6.0f, a.activation = MRNN_ACT_RELU;
    nk = (size_t)(a.input_size * 4 * a.hidden_size), nr = (size_t)(a.hidden_size * 4 * a.hidden_size);
    kk = rnd_buf(nk, 0.5f), rr = rnd_buf(nr, 0.5f), bb = rnd_buf((size_t)(4 * a.hidden_size), 0.5f);
    layer = NULL;
    st = mrnn_keras_lstm_new(&a, kk, rr, bb, &layer);
    CHECK(st == MRNN_OK, "new (variant %d): %s", k, last_error());
    sprintf(what, "variant %d", k);
    for (j = 0; j < sizeof shapes / sizeof shapes[0] && layer; j++) {
      handle_vs_one_shot(what, layer, a, kk, rr, bb, shapes[j][0], shapes[j][1], (int32_t)(1 + j % 2), (int)(j % 3));
    }
    mrnn_keras_lstm_free(layer);
    free(kk), free(rr), free(bb);
  }

  /* The handle keeps its own copy of the weights. */
  {
    float *kk = rnd_buf(SI * 4 * SH, 0.5f), *rr = rnd_buf(SH * 4 * SH, 0.5f);
    layer = NULL;
    st = mrnn_keras_lstm_new(&ok, kk, rr, NULL, &layer);
    CHECK(st == MRNN_OK, "new: %s", last_error());
    st = mrnn_lstm_keras(&ok, sx, NULL, kk, rr, NULL, NULL, NULL, y2, NULL, NULL, NULL);
    memset(kk, 0, SI * 4 * SH * sizeof(float));
    free(rr);
    st |= mrnn_keras_lstm_run(layer, &ok, sx, NULL, NULL, NULL, y, NULL, NULL, NULL);
    CHECK(st == MRNN_OK && memcmp(y, y2, ny * sizeof(float)) == 0, "the handle depends on the caller's weights");
    mrnn_keras_lstm_free(layer);
    free(kk);
  }

  /* Concurrent runs on one handle, 4 threads x 8 runs, 1 and 2 threads each: all equal the one-shot. */
  {
    Worker w[4];
    layer = NULL;
    st = mrnn_keras_lstm_new(&ok, sk, sr, sbias, &layer);
    a = ok, a.num_threads = 1;
    st |= mrnn_lstm_keras(&a, sx, NULL, sk, sr, sbias, NULL, NULL, y2, NULL, NULL, NULL);
    CHECK(st == MRNN_OK, "concurrent setup: %s", last_error());
    for (k = 0; k < 4; k++) {
      w[k].layer = layer, w[k].a = ok, w[k].a.num_threads = 1 + k % 2, w[k].x = sx, w[k].expected = y2;
      w[k].ny = ny;
    }
    run_workers(4, worker_main, w, sizeof w[0]);
    mrnn_keras_lstm_free(layer);
  }

  free(y), free(y2), free(hn), free(cn);
}

int main(int argc, char **argv) {
  /* Nothing has failed on this thread yet. */
  CHECK(mrnn_last_error() != NULL && mrnn_last_error()[0] == '\0', "fresh mrnn_last_error() = %s", last_error());
  if (argc < 2) {
    printf("usage: %s CASES_FILE [EXPECTED_VERSION]\n", argv[0]);
    return 2;
  }
  CHECK(run_fixtures(argv[1]) > 0, "no fixtures");
  contract_tests(argc > 2 ? argv[2] : NULL);
  handle_tests();
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
