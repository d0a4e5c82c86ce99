/*
 * C test of the GRU and simple RNN forward functions (C_ABI.md section 4), built and run by tests/suite/capi.rs.
 *
 *   gru_test CASES_FILE
 *
 * CASES_FILE is written by tests/suite/capi.rs, whitespace-separated:
 *   onnx KIND NAME T B I H direction layout linear_before_reset has_clip CLIP_BITS num_activations
 *        ACT0 .. ACT3 ALPHA_BITS0 .. ALPHA_BITS3 BETA_BITS0 .. BETA_BITS3 HAS_B HAS_LENS HAS_INITIAL_H HAS_Y HAS_Y_H
 *     then arrays x, w, r, [b], [sequence_lens], [initial_h], [y], [y_h]
 *     (KIND 0: ONNX GRU, 1: ONNX RNN, which reads the first two entries of each array; ONNX Runtime
 *     golden fixtures, and the layout-0 ones transposed to layout 1)
 *   keras KIND NAME B T I H go_backwards zero_output_for_mask activation recurrent_activation
 *        RALPHA_BITS RBETA_BITS reset_after HAS_MASK HAS_BIAS HAS_INITIAL_H
 *     then arrays x, [mask], kernel, recurrent_kernel, [bias], [initial_h], y, last_output, h_n
 *     (KIND 0: Keras GRU, 1: Keras SimpleRNN, which ignores the recurrent fields; Keras golden fixtures)
 *   end
 * Each array is "COUNT v0 v1 ...": floats as the hex bits of the IEEE single, integers as integers.
 *
 * Every fixture runs through the one-shot function (all outputs, then each output alone, on 1 and 0
 * threads: bitwise the same) and through a handle (new / run / free: bitwise the one-shot outputs), and is
 * compared with the fixture's outputs. Then the error contract of every function: each status with its
 * message, in the documented order, outputs and *out untouched on error (canaries), handles across shapes
 * and mismatched attributes.
 *
 * Prints one line per failure and closes with "N passed, M failed"; exits nonzero on any failure.
 */
#include "test_util.h"

/* ONNX Runtime and Keras evaluate the activations and sums differently; as for the LSTM, outputs are
   compared with |a - e| <= 1e-5 * max(1, |e|). */
#define FIXTURE_TOL 1e-5f

enum { ONNX_GRU = 0, ONNX_RNN = 1, KERAS_GRU = 2, KERAS_RNN = 3 };
static const char *const KIND_NAMES[4] = {"ONNX GRU", "ONNX RNN", "Keras GRU", "Keras SimpleRNN"};

/* One call of any of the four kinds: its attributes (the kind's struct), inputs and tensor sizes. */
typedef struct {
  int kind;
  MrnnOnnxGruAttrs og;
  MrnnOnnxRnnAttrs orn;
  MrnnKerasGruAttrs kg;
  MrnnKerasRnnAttrs kr;
  const float *x, *w, *r, *b, *h0;
  const int32_t *lens;
  const uint8_t *mask;
  size_t nx, nw, nr, nb, nout[3];
  int nouts;
} Problem;

static int is_onnx(const Problem *q) { return q->kind == ONNX_GRU || q->kind == ONNX_RNN; }

/* The element counts of every tensor, from the attributes. */
static void sizes(Problem *q) {
  size_t T, B, I, H, D = 1, G = (q->kind == ONNX_GRU || q->kind == KERAS_GRU) ? 3 : 1;
  switch (q->kind) {
    case ONNX_GRU:
      T = (size_t)q->og.seq_length, B = (size_t)q->og.batch_size, I = (size_t)q->og.input_size;
      H = (size_t)q->og.hidden_size, D = q->og.direction == 2 ? 2 : 1;
      break;
    case ONNX_RNN:
      T = (size_t)q->orn.seq_length, B = (size_t)q->orn.batch_size, I = (size_t)q->orn.input_size;
      H = (size_t)q->orn.hidden_size, D = q->orn.direction == 2 ? 2 : 1;
      break;
    case KERAS_GRU:
      B = (size_t)q->kg.batch_size, T = (size_t)q->kg.seq_length, I = (size_t)q->kg.input_size;
      H = (size_t)q->kg.hidden_size;
      break;
    default:
      B = (size_t)q->kr.batch_size, T = (size_t)q->kr.seq_length, I = (size_t)q->kr.input_size;
      H = (size_t)q->kr.hidden_size;
  }
  q->nx = T * B * I;
  q->nw = D * G * H * I;
  q->nr = D * G * H * H;
  if (is_onnx(q)) {
    q->nb = D * 2 * G * H;
    q->nouts = 2, q->nout[0] = T * D * B * H, q->nout[1] = D * B * H;
  } else {
    q->nb = (q->kind == KERAS_GRU && q->kg.reset_after ? 2 : 1) * G * H;
    q->nouts = 3, q->nout[0] = B * T * H, q->nout[1] = B * H, q->nout[2] = B * H;
  }
}

static const char *const ONNX_OUTS[3] = {"y", "y_h", ""};
static const char *const KERAS_OUTS[3] = {"y", "last_output", "h_n"};
static const char *const *out_names(const Problem *q) { return is_onnx(q) ? ONNX_OUTS : KERAS_OUTS; }

/* The one-shot function of the kind. out[k] may be NULL. */
static int32_t one_shot(const Problem *q, float *const *out) {
  switch (q->kind) {
    case ONNX_GRU: return mrnn_gru_onnx(&q->og, q->x, q->w, q->r, q->b, q->lens, q->h0, out[0], out[1]);
    case ONNX_RNN: return mrnn_rnn_onnx(&q->orn, q->x, q->w, q->r, q->b, q->lens, q->h0, out[0], out[1]);
    case KERAS_GRU:
      return mrnn_gru_keras(&q->kg, q->x, q->mask, q->w, q->r, q->b, q->h0, out[0], out[1], out[2]);
    default: return mrnn_rnn_keras(&q->kr, q->x, q->mask, q->w, q->r, q->b, q->h0, out[0], out[1], out[2]);
  }
}

/* A handle of any kind. */
typedef struct {
  int kind;
  void *p;
} Handle;

/* mrnn_*_new with q's attributes and weights; *h->p is left as it was on failure. */
static int32_t handle_new(const Problem *q, Handle *h) {
  h->kind = q->kind;
  switch (q->kind) {
    case ONNX_GRU: return mrnn_onnx_gru_new(&q->og, q->w, q->r, q->b, (MrnnOnnxGru **)&h->p);
    case ONNX_RNN: return mrnn_onnx_rnn_new(&q->orn, q->w, q->r, q->b, (MrnnOnnxRnn **)&h->p);
    case KERAS_GRU: return mrnn_keras_gru_new(&q->kg, q->w, q->r, q->b, (MrnnKerasGru **)&h->p);
    default: return mrnn_keras_rnn_new(&q->kr, q->w, q->r, q->b, (MrnnKerasRnn **)&h->p);
  }
}

/* mrnn_*_run of h with q's attributes and inputs. */
static int32_t handle_run(const Handle *h, const Problem *q, float *const *out) {
  switch (q->kind) {
    case ONNX_GRU: return mrnn_onnx_gru_run((MrnnOnnxGru *)h->p, &q->og, q->x, q->lens, q->h0, out[0], out[1]);
    case ONNX_RNN: return mrnn_onnx_rnn_run((MrnnOnnxRnn *)h->p, &q->orn, q->x, q->lens, q->h0, out[0], out[1]);
    case KERAS_GRU:
      return mrnn_keras_gru_run((MrnnKerasGru *)h->p, &q->kg, q->x, q->mask, q->h0, out[0], out[1], out[2]);
    default: return mrnn_keras_rnn_run((MrnnKerasRnn *)h->p, &q->kr, q->x, q->mask, q->h0, out[0], out[1], out[2]);
  }
}

static void handle_free(Handle *h) {
  switch (h->kind) {
    case ONNX_GRU: mrnn_onnx_gru_free((MrnnOnnxGru *)h->p); break;
    case ONNX_RNN: mrnn_onnx_rnn_free((MrnnOnnxRnn *)h->p); break;
    case KERAS_GRU: mrnn_keras_gru_free((MrnnKerasGru *)h->p); break;
    default: mrnn_keras_rnn_free((MrnnKerasRnn *)h->p);
  }
  h->p = NULL;
}

static void set_threads(Problem *q, int32_t threads) {
  q->og.num_threads = threads, q->orn.num_threads = threads, q->kg.num_threads = threads;
  q->kr.num_threads = threads;
}

/* Fresh output buffers (unset pattern, then a canary) for the outputs selected by `want`. */
static void outputs(const Problem *q, unsigned want, float **out) {
  out[2] = NULL;
  select_outputs(q->nouts, q->nout, want, out);
}

static void free_outs(float **out) {
  int k;
  for (k = 0; k < 3; k++) free(out[k]), out[k] = NULL;
}

/* Whether nothing wrote the outputs. */
static int outs_unwritten(const Problem *q, float *const *out) {
  int k;
  for (k = 0; k < q->nouts; k++)
    if (out[k] && !unwritten(out[k], q->nout[k])) return 0;
  return 1;
}

/* ---------------------------------------------------------------- golden fixtures */

static double worst_fixture_error = 0.0;
static int fixtures_run[4];

/* Runs a parsed fixture: one-shot (all outputs) against `expected` (NULL entries: not in the fixture),
   every output alone and on 0 threads bitwise the same, and a handle bitwise the same. */
static void run_fixture(const char *name, Problem *q, float *const *expected) {
  float *all[3], *one[3], *expect_bits[3] = {NULL, NULL, NULL};
  Handle h = {0, NULL};
  char what[256];
  int k;
  int32_t st;
  snprintf(what, sizeof what, "%s %s", KIND_NAMES[q->kind], name);
  set_threads(q, 1);
  outputs(q, 7u, all);
  st = one_shot(q, all);
  expect_status(what, st, MRNN_OK);
  for (k = 0; k < q->nouts; k++) {
    if (expected[k]) {
      double e = check_close_tol(what, out_names(q)[k], all[k], expected[k], q->nout[k], FIXTURE_TOL);
      if (e > worst_fixture_error) worst_fixture_error = e;
    }
    CHECK(canary_intact(all[k], q->nout[k]), "%s: canary past %s", what, out_names(q)[k]);
    expect_bits[k] = all[k];
  }
  /* Each output alone, and all of them on every core: bitwise the same. */
  for (k = 0; k < q->nouts; k++) {
    outputs(q, 1u << k, one);
    expect_status(what, one_shot(q, one), MRNN_OK);
    check_outputs(what, q->nouts, out_names(q), q->nout, expect_bits, one);
  }
  set_threads(q, 0);
  outputs(q, 7u, one);
  expect_status(what, one_shot(q, one), MRNN_OK);
  check_outputs(what, q->nouts, out_names(q), q->nout, expect_bits, one);
  /* A handle: bitwise the one-shot outputs. */
  st = handle_new(q, &h);
  expect_status(what, st, MRNN_OK);
  if (st == MRNN_OK) {
    set_threads(q, 2);
    outputs(q, 7u, one);
    expect_status(what, handle_run(&h, q, one), MRNN_OK);
    check_outputs(what, q->nouts, out_names(q), q->nout, expect_bits, one);
    handle_free(&h);
  }
  free_outs(all);
  fixtures_run[q->kind]++;
}

static void onnx_fixture(void) {
  Problem q;
  char name[200];
  long kind, T, B, I, H, direction, layout, flag, has_clip, num_act, flags[5];
  int32_t acts[4];
  float clip, alpha[4], beta[4];
  float *x, *w, *r, *b = NULL, *h0 = NULL, *y = NULL, *y_h = NULL;
  int32_t *lens = NULL;
  int k;
  float *expected[3] = {NULL, NULL, NULL};

  memset(&q, 0, sizeof q);
  kind = read_long();
  if (fscanf(cases, "%199s", name) != 1) exit(2);
  T = read_long(), B = read_long(), I = read_long(), H = read_long();
  direction = read_long(), layout = read_long(), flag = read_long(), has_clip = read_long();
  clip = bits_to_float(read_bits());
  num_act = read_long();
  for (k = 0; k < 4; k++) acts[k] = (int32_t)read_long();
  for (k = 0; k < 4; k++) alpha[k] = bits_to_float(read_bits());
  for (k = 0; k < 4; k++) beta[k] = bits_to_float(read_bits());
  for (k = 0; k < 5; k++) flags[k] = read_long();
  q.kind = kind == 0 ? ONNX_GRU : ONNX_RNN;
  mrnn_onnx_gru_attrs_init(&q.og);
  mrnn_onnx_rnn_attrs_init(&q.orn);
  if (q.kind == ONNX_GRU) {
    q.og.seq_length = T, q.og.batch_size = B, q.og.input_size = I, q.og.hidden_size = H;
    q.og.direction = (int32_t)direction, q.og.layout = (int32_t)layout;
    q.og.linear_before_reset = (int32_t)flag, q.og.has_clip = (int32_t)has_clip, q.og.clip = clip;
    q.og.num_activations = (int32_t)num_act;
    for (k = 0; k < (int)num_act && k < 4; k++)
      q.og.activations[k] = acts[k], q.og.activation_alpha[k] = alpha[k], q.og.activation_beta[k] = beta[k];
  } else {
    q.orn.seq_length = T, q.orn.batch_size = B, q.orn.input_size = I, q.orn.hidden_size = H;
    q.orn.direction = (int32_t)direction, q.orn.layout = (int32_t)layout;
    q.orn.has_clip = (int32_t)has_clip, q.orn.clip = clip, q.orn.num_activations = (int32_t)num_act;
    for (k = 0; k < (int)num_act && k < 2; k++)
      q.orn.activations[k] = acts[k], q.orn.activation_alpha[k] = alpha[k], q.orn.activation_beta[k] = beta[k];
  }
  sizes(&q);
  x = read_floats("x", q.nx);
  w = read_floats("w", q.nw);
  r = read_floats("r", q.nr);
  if (flags[0]) b = read_floats("b", q.nb);
  if (flags[1]) {
    long n = read_long(), j;
    if (n != B) exit(2);
    lens = (int32_t *)xmalloc((size_t)B * sizeof(int32_t));
    for (j = 0; j < n; j++) lens[j] = (int32_t)read_long();
  }
  if (flags[2]) h0 = read_floats("initial_h", q.nout[1]);
  if (flags[3]) y = read_floats("y", q.nout[0]);
  if (flags[4]) y_h = read_floats("y_h", q.nout[1]);
  q.x = x, q.w = w, q.r = r, q.b = b, q.h0 = h0, q.lens = lens;
  expected[0] = y, expected[1] = y_h;
  run_fixture(name, &q, expected);
  free(x), free(w), free(r), free(b), free(h0), free(y), free(y_h), free(lens);
}

static void keras_fixture(void) {
  Problem q;
  char name[200];
  long kind, B, T, I, H, back, zero, act, ract, reset_after, has_mask, has_bias, has_h0;
  float ralpha, rbeta;
  float *x, *w, *r, *b = NULL, *h0 = NULL, *expected[3];
  uint8_t *mask = NULL;

  memset(&q, 0, sizeof q);
  kind = read_long();
  if (fscanf(cases, "%199s", name) != 1) exit(2);
  B = read_long(), T = read_long(), I = read_long(), H = read_long();
  back = read_long(), zero = read_long(), act = read_long(), ract = read_long();
  ralpha = bits_to_float(read_bits()), rbeta = bits_to_float(read_bits());
  reset_after = read_long(), has_mask = read_long(), has_bias = read_long(), has_h0 = read_long();
  q.kind = kind == 0 ? KERAS_GRU : KERAS_RNN;
  mrnn_keras_gru_attrs_init(&q.kg);
  mrnn_keras_rnn_attrs_init(&q.kr);
  if (q.kind == KERAS_GRU) {
    q.kg.batch_size = B, q.kg.seq_length = T, q.kg.input_size = I, q.kg.hidden_size = H;
    q.kg.go_backwards = (int32_t)back, q.kg.zero_output_for_mask = (int32_t)zero;
    q.kg.activation = (int32_t)act, q.kg.recurrent_activation = (int32_t)ract;
    q.kg.recurrent_alpha = ralpha, q.kg.recurrent_beta = rbeta, q.kg.reset_after = (int32_t)reset_after;
  } else {
    q.kr.batch_size = B, q.kr.seq_length = T, q.kr.input_size = I, q.kr.hidden_size = H;
    q.kr.go_backwards = (int32_t)back, q.kr.zero_output_for_mask = (int32_t)zero, q.kr.activation = (int32_t)act;
  }
  sizes(&q);
  x = read_floats("x", q.nx);
  if (has_mask) mask = read_mask("mask", (size_t)(B * T));
  w = read_floats("kernel", q.nw);
  r = read_floats("recurrent_kernel", q.nr);
  if (has_bias) b = read_floats("bias", q.nb);
  if (has_h0) h0 = read_floats("initial_h", q.nout[1]);
  expected[0] = read_floats("y", q.nout[0]);
  expected[1] = read_floats("last_output", q.nout[1]);
  expected[2] = read_floats("h_n", q.nout[2]);
  q.x = x, q.w = w, q.r = r, q.b = b, q.h0 = h0, q.mask = mask;
  run_fixture(name, &q, expected);
  /* A Keras 2 hard_sigmoid (NaN parameters) given explicitly: the same. */
  if (q.kind == KERAS_GRU && ract == MRNN_ACT_HARD_SIGMOID && isnan(ralpha)) {
    q.kg.recurrent_alpha = 0.2f, q.kg.recurrent_beta = 0.5f;
    run_fixture(name, &q, expected);
  }
  free(x), free(w), free(r), free(b), free(h0), free(mask);
  free(expected[0]), free(expected[1]), free(expected[2]);
}

static void run_cases(const char *path) {
  char tag[32];
  cases = fopen(path, "r");
  if (!cases) {
    printf("cannot open %s\n", path);
    exit(2);
  }
  while (fscanf(cases, "%31s", tag) == 1 && strcmp(tag, "end") != 0) {
    if (strcmp(tag, "onnx") == 0)
      onnx_fixture();
    else if (strcmp(tag, "keras") == 0)
      keras_fixture();
    else {
      printf("unknown case %s\n", tag);
      exit(2);
    }
  }
  fclose(cases);
}

/* ---------------------------------------------------------------- the contract */

/* A small problem of each kind, with every optional input: T = 5, B = 3, I = 2, H = 4. ONNX: the
   bidirectional operator in layout 0 with lengths {5, 0, 3}; Keras: a mask with holes. */
#define ST 5
#define SB 3
#define SI 2
#define SH 4
static float sx[ST * SB * SI], sw[2 * 3 * SH * SI], sr[2 * 3 * SH * SH], sbias[2 * 6 * SH], sh0[2 * SB * SH];
static int32_t slens[SB] = {ST, 0, 3};
static uint8_t smask[SB * ST] = {1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 1};

static Problem small(int kind) {
  Problem q;
  memset(&q, 0, sizeof q);
  q.kind = kind;
  mrnn_onnx_gru_attrs_init(&q.og);
  mrnn_onnx_rnn_attrs_init(&q.orn);
  mrnn_keras_gru_attrs_init(&q.kg);
  mrnn_keras_rnn_attrs_init(&q.kr);
  q.og.seq_length = q.orn.seq_length = q.kg.seq_length = q.kr.seq_length = ST;
  q.og.batch_size = q.orn.batch_size = q.kg.batch_size = q.kr.batch_size = SB;
  q.og.input_size = q.orn.input_size = q.kg.input_size = q.kr.input_size = SI;
  q.og.hidden_size = q.orn.hidden_size = q.kg.hidden_size = q.kr.hidden_size = SH;
  q.og.direction = q.orn.direction = 2;
  q.og.linear_before_reset = 1;
  q.og.num_activations = 4;
  q.og.activations[0] = MRNN_ACT_HARD_SIGMOID, q.og.activation_alpha[0] = 0.3f;
  q.og.activations[1] = MRNN_ACT_SOFTSIGN, q.og.activations[2] = MRNN_ACT_SIGMOID;
  q.og.activations[3] = MRNN_ACT_TANH;
  q.orn.has_clip = 1, q.orn.clip = 1.5f;
  q.kg.go_backwards = 1, q.kg.recurrent_activation = MRNN_ACT_HARD_SIGMOID;
  q.kg.recurrent_alpha = 1.0f / 6.0f, q.kg.recurrent_beta = 0.5f;
  q.kr.zero_output_for_mask = 1, q.kr.activation = MRNN_ACT_RELU;
  q.x = sx, q.w = sw, q.r = sr, q.b = sbias, q.h0 = sh0;
  if (is_onnx(&q))
    q.lens = slens;
  else
    q.mask = smask;
  sizes(&q);
  return q;
}

/* Runs q (one-shot and, when `layer` is given, through that handle) expecting `status` and a message
   containing `needle`; no output may be written. */
static void expect_failure(const char *what, const Problem *q, const Handle *layer, int32_t status,
                           const char *needle) {
  float *out[3];
  char label[256];
  int path;
  for (path = 0; path < (layer ? 2 : 1); path++) {
    snprintf(label, sizeof label, "%s: %s (%s)", KIND_NAMES[q->kind], what, path ? "run" : "one-shot");
    outputs(q, 7u, out);
    expect_status(label, path ? handle_run(layer, q, out) : one_shot(q, out), status);
    expect_message(label, needle);
    CHECK(outs_unwritten(q, out), "%s: a failing call wrote an output", label);
    free_outs(out);
  }
}

/* Per-kind accessors of the attributes the tests change. */
static int64_t *batch_of(Problem *q) {
  return q->kind == ONNX_GRU ? &q->og.batch_size
         : q->kind == ONNX_RNN ? &q->orn.batch_size
         : q->kind == KERAS_GRU ? &q->kg.batch_size
                                : &q->kr.batch_size;
}
static int64_t *seq_of(Problem *q) {
  return q->kind == ONNX_GRU ? &q->og.seq_length
         : q->kind == ONNX_RNN ? &q->orn.seq_length
         : q->kind == KERAS_GRU ? &q->kg.seq_length
                                : &q->kr.seq_length;
}
static int64_t *hidden_of(Problem *q) {
  return q->kind == ONNX_GRU ? &q->og.hidden_size
         : q->kind == ONNX_RNN ? &q->orn.hidden_size
         : q->kind == KERAS_GRU ? &q->kg.hidden_size
                                : &q->kr.hidden_size;
}
static int64_t *input_of(Problem *q) {
  return q->kind == ONNX_GRU ? &q->og.input_size
         : q->kind == ONNX_RNN ? &q->orn.input_size
         : q->kind == KERAS_GRU ? &q->kg.input_size
                                : &q->kr.input_size;
}
static int32_t *threads_of(Problem *q) {
  return q->kind == ONNX_GRU ? &q->og.num_threads
         : q->kind == ONNX_RNN ? &q->orn.num_threads
         : q->kind == KERAS_GRU ? &q->kg.num_threads
                                : &q->kr.num_threads;
}

static void contract(int kind) {
  Problem base = small(kind), q;
  Handle h = {0, NULL}, none = {0, NULL};
  float *out[3], *ref[3];
  int32_t st;
  char buf[64];
  const char *wname = is_onnx(&base) ? "w is NULL" : "kernel is NULL";
  const char *rname = is_onnx(&base) ? "r is NULL" : "recurrent_kernel is NULL";

  /* The base problem runs; its outputs are the reference of the handle runs below. */
  outputs(&base, 7u, ref);
  expect_status(KIND_NAMES[kind], one_shot(&base, ref), MRNN_OK);
  st = handle_new(&base, &h);
  expect_status(KIND_NAMES[kind], st, MRNN_OK);
  if (st != MRNN_OK) return;

  /* 1. NULL pointers (before anything else: here with a bad size too). */
  q = base, *batch_of(&q) = -1;
  q.x = NULL;
  expect_failure("NULL x wins over a bad size", &q, &h, MRNN_ERR_NULL_POINTER, "x is NULL");
  q = base, q.w = NULL;
  expect_failure("NULL weights", &q, NULL, MRNN_ERR_NULL_POINTER, wname);
  q = base, q.r = NULL;
  expect_failure("NULL recurrent weights", &q, NULL, MRNN_ERR_NULL_POINTER, rname);
  outputs(&base, 7u, out);
  switch (kind) {
    case ONNX_GRU:
      st = mrnn_gru_onnx(NULL, sx, sw, sr, NULL, NULL, NULL, out[0], out[1]);
      expect_status("NULL attrs", st, MRNN_ERR_NULL_POINTER);
      st = mrnn_onnx_gru_run(NULL, &base.og, sx, NULL, NULL, out[0], out[1]);
      expect_status("NULL layer", st, MRNN_ERR_NULL_POINTER);
      expect_message("NULL layer", "layer is NULL");
      st = mrnn_onnx_gru_run((MrnnOnnxGru *)h.p, NULL, sx, NULL, NULL, out[0], out[1]);
      break;
    case ONNX_RNN:
      st = mrnn_rnn_onnx(NULL, sx, sw, sr, NULL, NULL, NULL, out[0], out[1]);
      expect_status("NULL attrs", st, MRNN_ERR_NULL_POINTER);
      st = mrnn_onnx_rnn_run(NULL, &base.orn, sx, NULL, NULL, out[0], out[1]);
      expect_status("NULL layer", st, MRNN_ERR_NULL_POINTER);
      expect_message("NULL layer", "layer is NULL");
      st = mrnn_onnx_rnn_run((MrnnOnnxRnn *)h.p, NULL, sx, NULL, NULL, out[0], out[1]);
      break;
    case KERAS_GRU:
      st = mrnn_gru_keras(NULL, sx, NULL, sw, sr, NULL, NULL, out[0], out[1], out[2]);
      expect_status("NULL attrs", st, MRNN_ERR_NULL_POINTER);
      st = mrnn_keras_gru_run(NULL, &base.kg, sx, NULL, NULL, out[0], out[1], out[2]);
      expect_status("NULL layer", st, MRNN_ERR_NULL_POINTER);
      expect_message("NULL layer", "layer is NULL");
      st = mrnn_keras_gru_run((MrnnKerasGru *)h.p, NULL, sx, NULL, NULL, out[0], out[1], out[2]);
      break;
    default:
      st = mrnn_rnn_keras(NULL, sx, NULL, sw, sr, NULL, NULL, out[0], out[1], out[2]);
      expect_status("NULL attrs", st, MRNN_ERR_NULL_POINTER);
      st = mrnn_keras_rnn_run(NULL, &base.kr, sx, NULL, NULL, out[0], out[1], out[2]);
      expect_status("NULL layer", st, MRNN_ERR_NULL_POINTER);
      expect_message("NULL layer", "layer is NULL");
      st = mrnn_keras_rnn_run((MrnnKerasRnn *)h.p, NULL, sx, NULL, NULL, out[0], out[1], out[2]);
  }
  expect_status("NULL attrs (run)", st, MRNN_ERR_NULL_POINTER);
  expect_message("NULL attrs (run)", "attrs is NULL");
  CHECK(outs_unwritten(&base, out), "%s: NULL attrs wrote an output", KIND_NAMES[kind]);
  free_outs(out);

  /* _new: NULL out, NULL weights, bad attributes: *out untouched. */
  {
    Handle fresh = {0, NULL};
    void *sentinel = (void *)&fresh;
    fresh.p = sentinel;
    q = base, q.w = NULL;
    expect_status("new: NULL weights", handle_new(&q, &fresh), MRNN_ERR_NULL_POINTER);
    expect_message("new: NULL weights", wname);
    q = base, *hidden_of(&q) = 0;
    expect_status("new: hidden_size 0", handle_new(&q, &fresh), MRNN_ERR_BAD_ARGUMENT);
    q = base, *hidden_of(&q) = INT64_MAX / 4;
    expect_status("new: huge hidden_size", handle_new(&q, &fresh), MRNN_ERR_OVERFLOW);
    CHECK(fresh.p == sentinel, "%s: a failing _new wrote *out", KIND_NAMES[kind]);
    switch (kind) {
      case ONNX_GRU: st = mrnn_onnx_gru_new(&base.og, sw, sr, NULL, NULL); break;
      case ONNX_RNN: st = mrnn_onnx_rnn_new(&base.orn, sw, sr, NULL, NULL); break;
      case KERAS_GRU: st = mrnn_keras_gru_new(&base.kg, sw, sr, NULL, NULL); break;
      default: st = mrnn_keras_rnn_new(&base.kr, sw, sr, NULL, NULL);
    }
    expect_status("new: NULL out", st, MRNN_ERR_NULL_POINTER);
    expect_message("new: NULL out", "out is NULL");
    /* B and T are not used at creation: huge ones are fine. */
    q = base, *batch_of(&q) = INT64_MAX, *seq_of(&q) = INT64_MAX;
    fresh.p = NULL;
    expect_status("new: huge B and T", handle_new(&q, &fresh), MRNN_OK);
    handle_free(&fresh);
    handle_free(&fresh); /* NULL now: a no-op */
  }

  /* 2. Bad values (a bad value wins over an overflowing size). */
  q = base, *batch_of(&q) = -1;
  expect_failure("negative batch_size", &q, &h, MRNN_ERR_BAD_ARGUMENT, "batch_size = -1 is negative");
  q = base, *hidden_of(&q) = 0;
  expect_failure("hidden_size 0", &q, &h, MRNN_ERR_BAD_ARGUMENT, "hidden_size must be at least 1");
  q = base, *threads_of(&q) = -1;
  expect_failure("negative num_threads", &q, &h, MRNN_ERR_BAD_ARGUMENT, "num_threads = -1");
  q = base, *seq_of(&q) = INT64_MAX, *batch_of(&q) = INT64_MAX;
  switch (kind) {
    case ONNX_GRU: q.og.layout = 5; break;
    case ONNX_RNN: q.orn.direction = 3; break;
    case KERAS_GRU: q.kg.reset_after = 2; break;
    default: q.kr.go_backwards = -1;
  }
  expect_failure("a bad value and an overflow", &q, &h, MRNN_ERR_BAD_ARGUMENT, "bad argument");
  if (kind == ONNX_GRU) {
    q = base, q.og.linear_before_reset = 2;
    expect_failure("linear_before_reset 2", &q, &h, MRNN_ERR_BAD_ARGUMENT, "linear_before_reset = 2");
    q = base, q.og.has_clip = 1, q.og.clip = 0.0f;
    expect_failure("clip 0", &q, &h, MRNN_ERR_BAD_ARGUMENT, "must be positive");
    q = base, q.og.num_activations = 2;
    expect_failure("2 activations, bidirectional", &q, &h, MRNN_ERR_BAD_ARGUMENT, "expected 0 or 4");
    q = base, q.og.activations[3] = 11;
    expect_failure("activation code 11", &q, &h, MRNN_ERR_BAD_ARGUMENT, "activations[3]");
    q = base, q.og.direction = -1;
    expect_failure("direction -1", &q, &h, MRNN_ERR_BAD_ARGUMENT, "direction");
  } else if (kind == ONNX_RNN) {
    q = base, q.orn.layout = 2;
    expect_failure("layout 2", &q, &h, MRNN_ERR_BAD_ARGUMENT, "layout");
    q = base, q.orn.has_clip = 1, q.orn.clip = NAN;
    expect_failure("clip NaN", &q, &h, MRNN_ERR_BAD_ARGUMENT, "must be positive");
    q = base, q.orn.num_activations = 1;
    expect_failure("1 activation, bidirectional", &q, &h, MRNN_ERR_BAD_ARGUMENT, "expected 0 or 2");
    q = base, q.orn.num_activations = 2, q.orn.activations[1] = -1;
    expect_failure("activation code -1", &q, &h, MRNN_ERR_BAD_ARGUMENT, "activations[1]");
  } else if (kind == KERAS_GRU) {
    q = base, q.kg.zero_output_for_mask = 3;
    expect_failure("zero_output_for_mask 3", &q, &h, MRNN_ERR_BAD_ARGUMENT, "zero_output_for_mask = 3");
    q = base, q.kg.recurrent_activation = 11;
    expect_failure("recurrent_activation 11", &q, &h, MRNN_ERR_BAD_ARGUMENT, "recurrent_activation");
    q = base, q.kg.activation = -2;
    expect_failure("activation -2", &q, &h, MRNN_ERR_BAD_ARGUMENT, "activation");
  } else {
    q = base, q.kr.activation = 11;
    expect_failure("activation 11", &q, &h, MRNN_ERR_BAD_ARGUMENT, "activation");
  }

  /* 3. Overflow. */
  q = base, *seq_of(&q) = INT64_MAX / 2, *batch_of(&q) = 4;
  expect_failure("x overflows", &q, &h, MRNN_ERR_OVERFLOW, "overflow");
  q = base, *hidden_of(&q) = ((int64_t)1 << 31), *input_of(&q) = ((int64_t)1 << 31);
  expect_failure("W overflows", &q, NULL, MRNN_ERR_OVERFLOW, is_onnx(&base) ? "W [D," : "kernel [I,");

  /* 4. Pointers: misaligned, overlapping. */
  {
    float *xm = (float *)xmalloc((base.nx + 1) * sizeof(float));
    float *shared;
    memcpy(xm, sx, base.nx * sizeof(float));
    q = base, q.x = (const float *)((const char *)xm + 1);
    expect_failure("misaligned x", &q, &h, MRNN_ERR_BAD_ARGUMENT, "not aligned");
    free(xm);
    q = base, q.b = (const float *)((const char *)sbias + 2);
    expect_failure("misaligned bias", &q, NULL, MRNN_ERR_BAD_ARGUMENT, "not aligned");
    /* The last state output inside y. */
    shared = out_buf(base.nout[0]);
    outputs(&base, 7u, out);
    if (is_onnx(&base))
      st = one_shot(&base, (float *[]){shared, shared + 1, NULL});
    else
      st = one_shot(&base, (float *[]){shared, out[1], shared + 3});
    expect_status("overlapping outputs", st, MRNN_ERR_BAD_ARGUMENT);
    expect_message("overlapping outputs", "overlaps");
    CHECK(unwritten(shared, base.nout[0]) && outs_unwritten(&base, out), "overlapping outputs were written");
    free(shared);
    free_outs(out);
    /* y over x (run): inputs may share memory with each other, outputs with nothing. */
    shared = out_buf(base.nout[0] + base.nx);
    memcpy(shared, sx, base.nx * sizeof(float));
    q = base, q.x = shared;
    outputs(&base, 6u, out);
    out[0] = shared + 1;
    expect_status("y overlaps x", handle_run(&h, &q, out), MRNN_ERR_BAD_ARGUMENT);
    expect_message("y overlaps x", "x overlaps y");
    out[0] = NULL;
    free_outs(out);
    free(shared);
  }

  /* 5. sequence_lens values (ONNX), checked last. */
  if (is_onnx(&base)) {
    int32_t bad[SB] = {ST, ST + 1, 0}, neg[SB] = {0, 1, -1};
    q = base, q.lens = bad;
    expect_failure("length > T", &q, &h, MRNN_ERR_BAD_ARGUMENT, "sequence_lens[1] = 6 is outside 0..=5");
    q.lens = neg;
    expect_failure("negative length", &q, &h, MRNN_ERR_BAD_ARGUMENT, "sequence_lens[2] = -1");
    /* A misaligned x wins over a bad length. */
    q = base, q.lens = bad, q.x = (const float *)((const char *)sx + 1);
    expect_failure("misaligned x before lengths", &q, &h, MRNN_ERR_BAD_ARGUMENT, "not aligned");
  }

  /* Mismatched attributes on a handle run. */
  {
    struct {
      const char *field;
      Problem p;
    } cases_[4];
    int n = 0, k;
    q = base, *input_of(&q) = SI + 1;
    cases_[n].field = "attrs.input_size ", cases_[n++].p = q;
    q = base, *hidden_of(&q) = SH + 1;
    cases_[n].field = "attrs.hidden_size ", cases_[n++].p = q;
    q = base;
    switch (kind) {
      case ONNX_GRU:
        q.og.linear_before_reset = 0, cases_[n].field = "attrs.linear_before_reset ";
        break;
      case ONNX_RNN: q.orn.has_clip = 0, cases_[n].field = "attrs.has_clip "; break;
      case KERAS_GRU: q.kg.reset_after = 0, cases_[n].field = "attrs.reset_after "; break;
      default: q.kr.activation = MRNN_ACT_TANH, cases_[n].field = "attrs.activation ";
    }
    cases_[n++].p = q;
    q = base;
    switch (kind) {
      case ONNX_GRU: q.og.activation_alpha[0] = 0.2f, cases_[n].field = "attrs.activation_alpha[0] "; break;
      case ONNX_RNN: q.orn.clip = 1.25f, cases_[n].field = "attrs.clip "; break;
      case KERAS_GRU: q.kg.recurrent_alpha = 0.2f, cases_[n].field = "attrs.recurrent_alpha "; break;
      default: q.kr.zero_output_for_mask = 0, cases_[n].field = "attrs.zero_output_for_mask ";
    }
    cases_[n++].p = q;
    for (k = 0; k < n; k++) {
      snprintf(buf, sizeof buf, "run with other %s", cases_[k].field);
      outputs(&base, 7u, out);
      /* The base problem's buffers: the run is refused before it looks at their sizes. */
      expect_status(buf, handle_run(&h, &cases_[k].p, out), MRNN_ERR_BAD_ARGUMENT);
      expect_message(buf, cases_[k].field);
      CHECK(outs_unwritten(&base, out), "%s wrote an output", buf);
      free_outs(out);
    }
  }

  /* The handle across shapes and thread counts: bitwise the one-shot function each time. */
  {
    static const long shapes[4][3] = {{5, 3, 1}, {2, 1, 2}, {0, 3, 1}, {4, 0, 0}};
    int k;
    for (k = 0; k < 4; k++) {
      float *a[3], *c[3], *expect[3];
      int j;
      q = base, *seq_of(&q) = shapes[k][0], *batch_of(&q) = shapes[k][1], *threads_of(&q) = (int32_t)shapes[k][2];
      q.lens = NULL; /* the base lengths do not fit a shorter T */
      sizes(&q);
      outputs(&q, 7u, a);
      outputs(&q, 7u, c);
      snprintf(buf, sizeof buf, "%s T %ld B %ld", KIND_NAMES[kind], shapes[k][0], shapes[k][1]);
      expect_status(buf, one_shot(&q, a), MRNN_OK);
      expect_status(buf, handle_run(&h, &q, c), MRNN_OK);
      for (j = 0; j < 3; j++) expect[j] = a[j];
      check_outputs(buf, q.nouts, out_names(&q), q.nout, expect, c);
      free_outs(a);
    }
    /* The base shape again: the reference outputs. */
    outputs(&base, 7u, out);
    expect_status("handle, base shape", handle_run(&h, &base, out), MRNN_OK);
    check_outputs("handle, base shape", base.nouts, out_names(&base), base.nout, ref, out);
  }
  /* Every output NULL: validated, fine. */
  {
    float *nothing[3] = {NULL, NULL, NULL};
    expect_status("no outputs", one_shot(&base, nothing), MRNN_OK);
    expect_status("no outputs (run)", handle_run(&h, &base, nothing), MRNN_OK);
  }
  free_outs(ref);
  handle_free(&h);
  handle_free(&none);
}

/* What a fixture-free check can pin: the Keras GRU's h_n = last_output with an all-valid mask, its bias
   sizes (reset_after 1 reads 2 x 3H values, 0 reads 3H: exact-size heap buffers, so valgrind sees an
   over-read), and for the ONNX RNN Y = +0.0 past each length and zeros in Y_h of a length-0 sequence. */
static void semantics(void) {
  Problem q = small(KERAS_GRU);
  float *out[3], *b6 = (float *)xmalloc(6 * SH * sizeof(float)), *b3 = (float *)xmalloc(3 * SH * sizeof(float));
  float *a[3];
  int k;
  for (k = 0; k < 6 * SH; k++) b6[k] = sbias[k];
  q.mask = NULL;
  q.b = b6;
  outputs(&q, 7u, out);
  expect_status("bias [2,3H]", one_shot(&q, out), MRNN_OK);
  same_bits("h_n = last_output (all valid)", "h_n", out[2], out[1], q.nout[1]);
  free_outs(out);
  /* reset_after 0: bias [3H]. */
  q.kg.reset_after = 0;
  sizes(&q);
  CHECK(q.nb == 3 * SH, "bias [3H]");
  memcpy(b3, sbias, 3 * SH * sizeof(float));
  q.b = b3;
  outputs(&q, 7u, out);
  expect_status("reset_after 0", one_shot(&q, out), MRNN_OK);
  free_outs(out);
  /* ONNX: Y is +0.0 past each length, Y_h of a length-0 sequence is zeros. */
  q = small(ONNX_RNN);
  outputs(&q, 7u, a);
  expect_status("ONNX RNN lengths", one_shot(&q, a), MRNN_OK);
  {
    size_t t, d, bb, hh, bad = 0;
    for (t = 0; t < ST; t++)
      for (d = 0; d < 2; d++)
        for (bb = 0; bb < SB; bb++)
          for (hh = 0; hh < SH; hh++) {
            float v = a[0][((t * 2 + d) * SB + bb) * SH + hh];
            if ((long)t >= slens[bb] && (v != 0.0f || signbit(v))) bad++;
          }
    CHECK(bad == 0, "ONNX RNN: %lu Y values past a length are not +0.0", (unsigned long)bad);
    for (d = 0; d < 2; d++)
      for (hh = 0; hh < SH; hh++) CHECK(a[1][(d * SB + 1) * SH + hh] == 0.0f, "Y_h of a length-0 sequence");
  }
  free_outs(a);
  free(b6), free(b3);
}

int main(int argc, char **argv) {
  int k;
  if (argc < 2) {
    printf("usage: %s CASES_FILE\n", argv[0]);
    return 2;
  }
  for (k = 0; k < (int)(sizeof sx / sizeof sx[0]); k++) sx[k] = rnd(1.5f);
  for (k = 0; k < (int)(sizeof sw / sizeof sw[0]); k++) sw[k] = rnd(0.6f);
  for (k = 0; k < (int)(sizeof sr / sizeof sr[0]); k++) sr[k] = rnd(0.6f);
  for (k = 0; k < (int)(sizeof sbias / sizeof sbias[0]); k++) sbias[k] = rnd(0.4f);
  for (k = 0; k < (int)(sizeof sh0 / sizeof sh0[0]); k++) sh0[k] = rnd(0.8f);
  run_cases(argv[1]);
  printf("fixtures: ONNX GRU %d, ONNX RNN %d, Keras GRU %d, Keras SimpleRNN %d; worst relative error %.3g\n",
         fixtures_run[0], fixtures_run[1], fixtures_run[2], fixtures_run[3], worst_fixture_error);
  CHECK(fixtures_run[0] > 0 && fixtures_run[1] > 0 && fixtures_run[2] > 0 && fixtures_run[3] > 0,
        "a kind without fixtures");
  for (k = 0; k < 4; k++) contract(k);
  semantics();
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
