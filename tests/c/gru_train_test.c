/*
 * C test of the GRU and simple RNN training functions of the masked-rnn C ABI (C_ABI.md section 4:
 * mrnn_{gru,rnn}_{keras,onnx}_backward, mrnn_{onnx,keras}_{gru,rnn}_run_train / _run_backward /
 * _set_weights, with the tapes shared by every kind), built and run by tests/suite/capi.rs (also under valgrind).
 *
 *   gru_train_test CASES_FILE [quick]
 *
 * CASES_FILE, written by tests/suite/capi.rs from the Keras GRU / SimpleRNN gradient fixtures and seeded problems:
 *   hgrad NAME KIND D0 D1 D2 D3 ATTRS HAS_BIAS HAS_STEPS HAS_H0 HAS_UP0 HAS_UP1 HAS_UP2 ORACLE_MASK TOL_BITS
 *     KIND: 0 ONNX GRU, 1 ONNX RNN (D0..D3 = T B I H), 2 Keras GRU, 3 Keras SimpleRNN (B T I H);
 *     ATTRS, ONNX: direction layout linear_before_reset has_clip CLIP_BITS num_activations ACT0..ACT3
 *       ALPHA_BITS0..3 BETA_BITS0..3; Keras: go_backwards zero_output_for_mask activation
 *       recurrent_activation ALPHA_BITS BETA_BITS reset_after;
 *     then arrays x, w / kernel, r / recurrent_kernel, [bias], [sequence_lens or mask], [initial_h], the
 *     upstream gradients given (ONNX dy, dy_h; Keras dy, d_last_output, d_h_n); the Rust API's forward
 *     outputs (ONNX y, y_h; Keras y, last_output, h_n) and gradients dx, dw, dr, db, d_initial_h; then for
 *     each bit k of ORACLE_MASK, float64 gradient k (a Keras fixture's, or the ONNX reference backward's).
 *   end
 * Each array is "COUNT v0 v1 ...": floats as the hex bits of the IEEE single, lengths / mask as integers.
 *
 * Per case: the one-shot backward gives the Rust API's gradients bit for bit with 0, 1 and 2 threads and
 * subsets of the outputs, and is within TOL of the oracle; every gradient NULL is fine; a handle's run_train
 * gives the Rust API's outputs, and run_backward its gradients bit for bit, twice from one tape, after the
 * caller's input buffers were freed. On the first case of each kind with B, T, I > 0, the contract: NULL
 * pointers, bad values, overflow, overlapping outputs, a misaligned x, a bad length (ONNX) give their status
 * and write nothing; run_backward refuses another handle's tape, a tape of the previous kind ("another
 * kind"), and a tape made before set_weights ("stale"); after set_weights a fresh tape gives the one-shot
 * gradients of the new weights bitwise.
 *
 * "quick" (for valgrind): each case once per path (1 thread, no subsets, one backward per tape).
 *
 * Prints one line per failure and closes with "N passed, M failed"; exits nonzero on any failure.
 */
#define _POSIX_C_SOURCE 200809L
#include "test_util.h"

enum { NG = 5, NU = 3 };
static const char *const GRAD_NAMES[NG] = {"dx", "dw", "dr", "db", "d_initial_h"};
static const char *const FWD_NAMES[3] = {"y", "y_h / last_output", "h_n"};
static const char *const KIND_NAMES[4] = {"ONNX GRU", "ONNX RNN", "Keras GRU", "Keras SimpleRNN"};
#define ALL_GRADS 0x1fu

static int quick = 0;

typedef struct {
  char name[160];
  int kind; /* 0 ONNX GRU, 1 ONNX RNN, 2 Keras GRU, 3 Keras SimpleRNN */
  MrnnOnnxGruAttrs og;
  MrnnOnnxRnnAttrs orn;
  MrnnKerasGruAttrs kg;
  MrnnKerasRnnAttrs kr;
  size_t nx, nb, ns, ny, nf, ng[NG], nu[NU];
  float *x, *w, *r, *bias, *h0;
  int32_t *lens;
  uint8_t *mask;
  float *up[NU];
  float *fwd[3];
  float *grad[NG];
  float *oracle[NG];
  float tol;
} Case;

/* A handle of any kind. */
typedef struct {
  int kind;
  void *p;
} Handle;

static int onnx(const Case *c) { return c->kind < 2; }

/* The attributes of the case's kind with num_threads = threads. */
static void set_threads(Case *c, int32_t threads) {
  c->og.num_threads = threads, c->orn.num_threads = threads, c->kg.num_threads = threads;
  c->kr.num_threads = threads;
}

static int32_t one_shot(const Case *c, const float *x, float *g[NG]) {
  const float *const *u = (const float *const *)c->up;
  switch (c->kind) {
  case 0:
    return mrnn_gru_onnx_backward(&c->og, x, c->w, c->r, c->bias, c->lens, c->h0, u[0], u[1], g[0], g[1], g[2], g[3],
                                  g[4]);
  case 1:
    return mrnn_rnn_onnx_backward(&c->orn, x, c->w, c->r, c->bias, c->lens, c->h0, u[0], u[1], g[0], g[1], g[2], g[3],
                                  g[4]);
  case 2:
    return mrnn_gru_keras_backward(&c->kg, x, c->mask, c->w, c->r, c->bias, c->h0, u[0], u[1], u[2], g[0], g[1], g[2],
                                   g[3], g[4]);
  default:
    return mrnn_rnn_keras_backward(&c->kr, x, c->mask, c->w, c->r, c->bias, c->h0, u[0], u[1], u[2], g[0], g[1], g[2],
                                   g[3], g[4]);
  }
}

static int32_t new_handle(const Case *c, Handle *h) {
  h->kind = c->kind, h->p = NULL;
  switch (c->kind) {
  case 0: return mrnn_onnx_gru_new(&c->og, c->w, c->r, c->bias, (MrnnOnnxGru **)&h->p);
  case 1: return mrnn_onnx_rnn_new(&c->orn, c->w, c->r, c->bias, (MrnnOnnxRnn **)&h->p);
  case 2: return mrnn_keras_gru_new(&c->kg, c->w, c->r, c->bias, (MrnnKerasGru **)&h->p);
  default: return mrnn_keras_rnn_new(&c->kr, c->w, c->r, c->bias, (MrnnKerasRnn **)&h->p);
  }
}

static void free_handle(Handle h) {
  switch (h.kind) {
  case 0: mrnn_onnx_gru_free((MrnnOnnxGru *)h.p); break;
  case 1: mrnn_onnx_rnn_free((MrnnOnnxRnn *)h.p); break;
  case 2: mrnn_keras_gru_free((MrnnKerasGru *)h.p); break;
  default: mrnn_keras_rnn_free((MrnnKerasRnn *)h.p); break;
  }
}

/* run_train with the case's attributes and steps, inputs x and h0, outputs o. */
static int32_t run_train(const Case *c, Handle h, const float *x, const void *steps, const float *h0, float *o[3],
                         MrnnTape **tape) {
  switch (c->kind) {
  case 0: return mrnn_onnx_gru_run_train((MrnnOnnxGru *)h.p, &c->og, x, steps, h0, o[0], o[1], tape);
  case 1: return mrnn_onnx_rnn_run_train((MrnnOnnxRnn *)h.p, &c->orn, x, steps, h0, o[0], o[1], tape);
  case 2: return mrnn_keras_gru_run_train((MrnnKerasGru *)h.p, &c->kg, x, steps, h0, o[0], o[1], o[2], tape);
  default: return mrnn_keras_rnn_run_train((MrnnKerasRnn *)h.p, &c->kr, x, steps, h0, o[0], o[1], o[2], tape);
  }
}

static int32_t run_backward(const Case *c, Handle h, const MrnnTape *tape, float *g[NG]) {
  const float *const *u = (const float *const *)c->up;
  switch (h.kind) {
  case 0: return mrnn_onnx_gru_run_backward((MrnnOnnxGru *)h.p, tape, u[0], u[1], g[0], g[1], g[2], g[3], g[4]);
  case 1: return mrnn_onnx_rnn_run_backward((MrnnOnnxRnn *)h.p, tape, u[0], u[1], g[0], g[1], g[2], g[3], g[4]);
  case 2:
    return mrnn_keras_gru_run_backward((MrnnKerasGru *)h.p, tape, u[0], u[1], u[2], g[0], g[1], g[2], g[3], g[4]);
  default:
    return mrnn_keras_rnn_run_backward((MrnnKerasRnn *)h.p, tape, u[0], u[1], u[2], g[0], g[1], g[2], g[3], g[4]);
  }
}

static int32_t set_weights(Handle h, const float *w, const float *r, const float *b) {
  switch (h.kind) {
  case 0: return mrnn_onnx_gru_set_weights((MrnnOnnxGru *)h.p, w, r, b);
  case 1: return mrnn_onnx_rnn_set_weights((MrnnOnnxRnn *)h.p, w, r, b);
  case 2: return mrnn_keras_gru_set_weights((MrnnKerasGru *)h.p, w, r, b);
  default: return mrnn_keras_rnn_set_weights((MrnnKerasRnn *)h.p, w, r, b);
  }
}

static const void *steps_of(const Case *c) { return onnx(c) ? (const void *)c->lens : (const void *)c->mask; }

/* ---------------------------------------------------------------- cases */

static void read_case(Case *c, const char *name) {
  long d0, d1, d2, d3, has[7], B, T, I, H, D = 1, G, rows = 1;
  int k;
  memset(c, 0, sizeof *c);
  strcpy(c->name, name);
  c->kind = (int)read_long();
  d0 = read_long(), d1 = read_long(), d2 = read_long(), d3 = read_long();
  G = c->kind % 2 == 0 ? 3 : 1;
  if (onnx(c)) {
    MrnnOnnxGruAttrs *a = &c->og;
    mrnn_onnx_gru_attrs_init(a);
    T = d0, B = d1;
    a->seq_length = d0, a->batch_size = d1, a->input_size = d2, a->hidden_size = d3;
    a->direction = (int32_t)read_long();
    a->layout = (int32_t)read_long();
    a->linear_before_reset = (int32_t)read_long();
    a->has_clip = (int32_t)read_long();
    a->clip = bits_to_float(read_bits());
    a->num_activations = (int32_t)read_long();
    for (k = 0; k < 4; k++) a->activations[k] = (int32_t)read_long();
    for (k = 0; k < 4; k++) a->activation_alpha[k] = bits_to_float(read_bits());
    for (k = 0; k < 4; k++) a->activation_beta[k] = bits_to_float(read_bits());
    D = a->direction == 2 ? 2 : 1;
    mrnn_onnx_rnn_attrs_init(&c->orn);
    c->orn.seq_length = d0, c->orn.batch_size = d1, c->orn.input_size = d2, c->orn.hidden_size = d3;
    c->orn.direction = a->direction, c->orn.layout = a->layout, c->orn.has_clip = a->has_clip, c->orn.clip = a->clip;
    c->orn.num_activations = a->num_activations;
    for (k = 0; k < 2; k++) {
      c->orn.activations[k] = a->activations[k];
      c->orn.activation_alpha[k] = a->activation_alpha[k], c->orn.activation_beta[k] = a->activation_beta[k];
    }
    rows = 2;
  } else {
    MrnnKerasGruAttrs *a = &c->kg;
    mrnn_keras_gru_attrs_init(a);
    B = d0, T = d1;
    a->batch_size = d0, a->seq_length = d1, a->input_size = d2, a->hidden_size = d3;
    a->go_backwards = (int32_t)read_long();
    a->zero_output_for_mask = (int32_t)read_long();
    a->activation = (int32_t)read_long();
    a->recurrent_activation = (int32_t)read_long();
    a->recurrent_alpha = bits_to_float(read_bits());
    a->recurrent_beta = bits_to_float(read_bits());
    a->reset_after = (int32_t)read_long();
    mrnn_keras_rnn_attrs_init(&c->kr);
    c->kr.batch_size = d0, c->kr.seq_length = d1, c->kr.input_size = d2, c->kr.hidden_size = d3;
    c->kr.go_backwards = a->go_backwards, c->kr.zero_output_for_mask = a->zero_output_for_mask;
    c->kr.activation = a->activation;
    rows = c->kind == 2 && a->reset_after ? 2 : 1;
  }
  I = d2, H = d3;
  for (k = 0; k < 7; k++) has[k] = read_long(); /* bias steps h0 up0 up1 up2 oracle_mask */
  c->tol = bits_to_float(read_bits());
  c->nx = (size_t)(B * T * I), c->nb = (size_t)B, c->ns = (size_t)(D * B * H), c->ny = (size_t)T * c->ns;
  c->ng[0] = c->nx, c->ng[1] = (size_t)(D * G * H * I), c->ng[2] = (size_t)(D * G * H * H);
  c->ng[3] = (size_t)(D * rows * G * H), c->ng[4] = c->ns;
  c->nu[0] = c->ny, c->nu[1] = c->ns, c->nu[2] = c->ns;
  c->nf = onnx(c) ? 2 : 3;
  c->x = read_floats("x", c->nx);
  c->w = read_floats("w", c->ng[1]);
  c->r = read_floats("r", c->ng[2]);
  c->bias = has[0] ? read_floats("bias", c->ng[3]) : NULL;
  if (has[1] && onnx(c)) c->lens = read_ints("sequence_lens", c->nb);
  if (has[1] && !onnx(c)) c->mask = read_mask("mask", (size_t)(B * T));
  c->h0 = has[2] ? read_floats("initial_h", c->ns) : NULL;
  for (k = 0; k < NU; k++) c->up[k] = has[3 + k] ? read_floats("upstream", c->nu[k]) : NULL;
  for (k = 0; k < (int)c->nf; k++) c->fwd[k] = read_floats(FWD_NAMES[k], k == 0 ? c->ny : c->ns);
  for (k = 0; k < NG; k++) c->grad[k] = read_floats(GRAD_NAMES[k], c->ng[k]);
  for (k = 0; k < NG; k++) c->oracle[k] = (has[6] >> k) & 1 ? read_floats("oracle", c->ng[k]) : NULL;
}

static void free_case(Case *c) {
  int k;
  free(c->x), free(c->w), free(c->r), free(c->bias), free(c->lens), free(c->mask), free(c->h0);
  for (k = 0; k < NU; k++) free(c->up[k]);
  for (k = 0; k < 3; k++) free(c->fwd[k]);
  for (k = 0; k < NG; k++) free(c->grad[k]), free(c->oracle[k]);
}

static int n_cases = 0, oracle_cases = 0;
static double worst_error = 0.0;

static void check_oracle(const char *what, const Case *c, float *g[NG]) {
  int k;
  for (k = 0; k < NG; k++)
    if (c->oracle[k] && g[k]) {
      double e = check_close_tol(what, GRAD_NAMES[k], g[k], c->oracle[k], c->ng[k], c->tol);
      if (e > worst_error) worst_error = e;
    }
}

static void grad_case(Case *c) {
  float *g[NG];
  char what[320];
  int32_t st, threads;
  int k;
  static const unsigned subsets[] = {0x01u, 0x0eu, 0x10u, 0x08u};
  Handle h;
  MrnnTape *tape = NULL;

  if (c->oracle[0] || c->oracle[1]) oracle_cases++;
  for (threads = quick; threads <= (quick ? 1 : 2); threads++) {
    set_threads(c, threads);
    select_outputs(NG, c->ng, ALL_GRADS, g);
    st = one_shot(c, c->x, g);
    snprintf(what, sizeof what, "%s: %s backward (%d threads)", c->name, KIND_NAMES[c->kind], (int)threads);
    CHECK(st == MRNN_OK, "%s: status %d: %s", what, (int)st, last_error());
    if (threads == 1 && st == MRNN_OK) check_oracle(what, c, g);
    check_outputs(what, NG, GRAD_NAMES, c->ng, c->grad, g);
  }
  set_threads(c, 1);
  for (k = 0; k < (quick ? 0 : (int)(sizeof subsets / sizeof subsets[0])); k++) {
    select_outputs(NG, c->ng, subsets[k], g);
    st = one_shot(c, c->x, g);
    snprintf(what, sizeof what, "%s: backward (outputs 0x%02x)", c->name, subsets[k]);
    CHECK(st == MRNN_OK, "%s: status %d: %s", what, (int)st, last_error());
    check_outputs(what, NG, GRAD_NAMES, c->ng, c->grad, g);
  }
  select_outputs(NG, c->ng, 0, g);
  expect_status("every gradient NULL", one_shot(c, c->x, g), MRNN_OK);

  /* The handle, with the caller's inputs freed between run_train and run_backward. */
  st = new_handle(c, &h);
  CHECK(st == MRNN_OK && h.p, "%s: _new: status %d: %s", c->name, (int)st, last_error());
  if (!h.p) return;
  {
    float *outs[3] = {NULL, NULL, NULL};
    float *x = dup_bytes(c->x, c->nx * sizeof(float)), *h0 = dup_bytes(c->h0, c->ns * sizeof(float));
    size_t step_bytes = onnx(c) ? c->nb * sizeof(int32_t) : (size_t)(c->kg.batch_size * c->kg.seq_length);
    void *steps = dup_bytes(steps_of(c), step_bytes);
    size_t sizes[3];
    uint64_t bytes = 0;
    sizes[0] = c->ny, sizes[1] = c->ns, sizes[2] = c->ns;
    select_outputs((int)c->nf, sizes, 0x7u, outs);
    set_threads(c, quick ? 1 : 2);
    st = run_train(c, h, x, steps, h0, outs, &tape);
    snprintf(what, sizeof what, "%s: run_train", c->name);
    CHECK(st == MRNN_OK && tape, "%s: status %d: %s", what, (int)st, last_error());
    check_outputs(what, (int)c->nf, FWD_NAMES, sizes, c->fwd, outs);
    if (x) memset(x, 0x7f, c->nx * sizeof(float));
    if (h0) memset(h0, 0x7f, c->ns * sizeof(float));
    free(x), free(h0), free(steps);
    if (tape) {
      CHECK(mrnn_tape_bytes(tape, &bytes) == MRNN_OK && bytes >= c->nx * sizeof(float), "%s: mrnn_tape_bytes %lu: %s",
            c->name, (unsigned long)bytes, last_error());
      for (k = 0; k < 2 - quick; k++) {
        select_outputs(NG, c->ng, ALL_GRADS, g);
        st = run_backward(c, h, tape, g);
        snprintf(what, sizeof what, "%s: run_backward #%d", c->name, k + 1);
        CHECK(st == MRNN_OK, "%s: status %d: %s", what, (int)st, last_error());
        if (k == 0) check_oracle(what, c, g);
        check_outputs(what, NG, GRAD_NAMES, c->ng, c->grad, g);
      }
    }
  }
  free_handle(h);
  mrnn_tape_free(tape); /* tapes may outlive their handle */
}

/* ---------------------------------------------------------------- contract */

/* The tape of the last contract case (of the previous kind), for the "another kind" check. */
static MrnnTape *previous_tape = NULL;
static int contract_done[4] = {0, 0, 0, 0};

/* Fresh gradient buffers (every one) for a refused call; whether none was written. */
static Grads fresh(const Case *c) { return new_grads(NG, c->ng); }

static void expect_refused(const char *what, const Case *c, int32_t st, int32_t status, const char *needle,
                           Grads *r) {
  expect_status(what, st, status);
  if (needle) expect_message(what, needle);
  CHECK(untouched(r), "%s: a refused call wrote an output", what);
  free_grads(r);
  (void)c;
}

static void contract(Case *c) {
  Grads r;
  Handle h, other;
  MrnnTape *tape = NULL, *foreign = NULL, *fresh_tape = NULL;
  float *w2;
  char what[320];
  size_t k;
  float *outs[3] = {NULL, NULL, NULL};
  const char *kind = KIND_NAMES[c->kind];

  set_threads(c, 1);
  /* One-shot: NULL pointers, bad values, overflow, overlaps, misalignment, bad lengths. */
  r = fresh(c);
  snprintf(what, sizeof what, "%s contract: x NULL", kind);
  expect_refused(what, c, one_shot(c, NULL, r.g), MRNN_ERR_NULL_POINTER, "x is NULL", &r);
  r = fresh(c);
  {
    float *x1 = xmalloc((c->nx + 1) * sizeof(float));
    memcpy(x1 + 1, c->x, c->nx * sizeof(float));
    snprintf(what, sizeof what, "%s contract: misaligned x", kind);
    expect_refused(what, c, one_shot(c, (const float *)((const char *)(x1 + 1) + 1), r.g), MRNN_ERR_BAD_ARGUMENT,
                   "aligned", &r);
    free(x1);
  }
  r = fresh(c);
  {
    float *dh = r.g[4];
    r.g[4] = r.g[0]; /* d_initial_h over dx */
    snprintf(what, sizeof what, "%s contract: overlapping outputs", kind);
    expect_status(what, one_shot(c, c->x, r.g), MRNN_ERR_BAD_ARGUMENT);
    expect_message(what, "overlaps");
    r.g[4] = dh;
    expect_refused(what, c, MRNN_ERR_BAD_ARGUMENT, MRNN_ERR_BAD_ARGUMENT, NULL, &r);
  }
  {
    Case bad = *c;
    bad.og.hidden_size = 0, bad.orn.hidden_size = 0, bad.kg.hidden_size = 0, bad.kr.hidden_size = 0;
    r = fresh(c);
    snprintf(what, sizeof what, "%s contract: hidden_size 0", kind);
    expect_refused(what, c, one_shot(&bad, c->x, r.g), MRNN_ERR_BAD_ARGUMENT, "hidden_size", &r);
    bad = *c;
    bad.og.batch_size = INT64_MAX / 2, bad.orn.batch_size = INT64_MAX / 2;
    bad.kg.batch_size = INT64_MAX / 2, bad.kr.batch_size = INT64_MAX / 2;
    r = fresh(c);
    snprintf(what, sizeof what, "%s contract: overflowing batch_size", kind);
    expect_refused(what, c, one_shot(&bad, c->x, r.g), MRNN_ERR_OVERFLOW, NULL, &r);
    bad = *c;
    bad.og.num_threads = -1, bad.orn.num_threads = -1, bad.kg.num_threads = -1, bad.kr.num_threads = -1;
    r = fresh(c);
    snprintf(what, sizeof what, "%s contract: num_threads -1", kind);
    expect_refused(what, c, one_shot(&bad, c->x, r.g), MRNN_ERR_BAD_ARGUMENT, "num_threads", &r);
    if (onnx(c)) {
      int32_t *lens = xmalloc(c->nb * sizeof(int32_t));
      for (k = 0; k < c->nb; k++) lens[k] = 0;
      lens[c->nb - 1] = (int32_t)c->og.seq_length + 1;
      bad = *c, bad.lens = lens;
      r = fresh(c);
      snprintf(what, sizeof what, "%s contract: a length past seq_length", kind);
      expect_refused(what, c, one_shot(&bad, c->x, r.g), MRNN_ERR_BAD_ARGUMENT, "sequence_lens[", &r);
      free(lens);
    } else {
      bad = *c;
      bad.kg.reset_after = 2, bad.kr.go_backwards = 2;
      r = fresh(c);
      snprintf(what, sizeof what, "%s contract: a flag of 2", kind);
      expect_refused(what, c, one_shot(&bad, c->x, r.g), MRNN_ERR_BAD_ARGUMENT, "expected 0 or 1", &r);
    }
  }

  /* Handles: NULLs, another handle's tape, another kind's, a stale one. */
  if (new_handle(c, &h) != MRNN_OK || new_handle(c, &other) != MRNN_OK) {
    CHECK(0, "%s contract: _new: %s", kind, last_error());
    return;
  }
  CHECK(run_train(c, h, c->x, steps_of(c), c->h0, outs, &tape) == MRNN_OK && tape, "%s contract: run_train: %s",
        kind, last_error());
  CHECK(run_train(c, other, c->x, steps_of(c), c->h0, outs, &foreign) == MRNN_OK, "%s contract: run_train: %s", kind,
        last_error());
  {
    MrnnTape *sentinel = (MrnnTape *)&what, *slot = sentinel;
    float *y[3];
    size_t sizes[3];
    sizes[0] = c->ny, sizes[1] = c->ns, sizes[2] = c->ns;
    select_outputs((int)c->nf, sizes, 0x7u, y);
    snprintf(what, sizeof what, "%s contract: run_train with tape NULL", kind);
    expect_status(what, run_train(c, h, c->x, steps_of(c), c->h0, y, NULL), MRNN_ERR_NULL_POINTER);
    CHECK(unwritten(y[0], sizes[0]), "%s: a refused call wrote y", what);
    snprintf(what, sizeof what, "%s contract: run_train with x NULL", kind);
    expect_status(what, run_train(c, h, NULL, steps_of(c), c->h0, y, &slot), MRNN_ERR_NULL_POINTER);
    CHECK(slot == sentinel && unwritten(y[0], sizes[0]), "%s: a refused call wrote *tape or y", what);
    for (k = 0; k < c->nf; k++) free(y[k]);
  }
  r = fresh(c);
  snprintf(what, sizeof what, "%s contract: run_backward with tape NULL", kind);
  expect_refused(what, c, run_backward(c, h, NULL, r.g), MRNN_ERR_NULL_POINTER, "tape is NULL", &r);
  r = fresh(c);
  {
    Handle none = h;
    none.p = NULL;
    snprintf(what, sizeof what, "%s contract: run_backward with layer NULL", kind);
    expect_refused(what, c, run_backward(c, none, tape, r.g), MRNN_ERR_NULL_POINTER, "layer is NULL", &r);
  }
  r = fresh(c);
  snprintf(what, sizeof what, "%s contract: another handle's tape", kind);
  expect_refused(what, c, run_backward(c, h, foreign, r.g), MRNN_ERR_BAD_ARGUMENT, "another handle (handle #", &r);
  if (previous_tape) {
    r = fresh(c);
    snprintf(what, sizeof what, "%s contract: a tape of another kind", kind);
    expect_refused(what, c, run_backward(c, h, previous_tape, r.g), MRNN_ERR_BAD_ARGUMENT, "another kind", &r);
    expect_message(what, kind);
  }
  r = fresh(c);
  snprintf(what, sizeof what, "%s contract: set_weights with w NULL", kind);
  expect_refused(what, c, set_weights(h, NULL, c->r, c->bias), MRNN_ERR_NULL_POINTER, NULL, &r);
  r = fresh(c);
  CHECK(run_backward(c, h, tape, r.g) == MRNN_OK, "%s contract: a failing set_weights changed the handle: %s", kind,
        last_error());
  free_grads(&r);

  /* set_weights: the old tape is stale; a fresh one gives the one-shot gradients of the new weights. */
  w2 = xmalloc((c->ng[1] + 1) * sizeof(float));
  for (k = 0; k < c->ng[1]; k++) w2[k] = c->w[k] * 0.5f + 0.01f;
  CHECK(set_weights(h, w2, c->r, c->bias) == MRNN_OK, "%s contract: set_weights: %s", kind, last_error());
  r = fresh(c);
  snprintf(what, sizeof what, "%s contract: a stale tape", kind);
  expect_refused(what, c, run_backward(c, h, tape, r.g), MRNN_ERR_BAD_ARGUMENT, "stale", &r);
  CHECK(run_train(c, h, c->x, steps_of(c), c->h0, outs, &fresh_tape) == MRNN_OK, "%s contract: run_train: %s", kind,
        last_error());
  {
    Case again = *c;
    Grads p = fresh(c), q = fresh(c);
    again.w = w2;
    CHECK(one_shot(&again, c->x, p.g) == MRNN_OK, "%s contract: one-shot: %s", kind, last_error());
    CHECK(run_backward(c, h, fresh_tape, q.g) == MRNN_OK, "%s contract: run_backward: %s", kind, last_error());
    CHECK(same_grads(&p, &q), "%s contract: run_backward after set_weights differs from the one-shot backward", kind);
    free_grads(&p), free_grads(&q);
  }
  free(w2);
  free_handle(h), free_handle(other);
  mrnn_tape_free(tape), mrnn_tape_free(foreign), mrnn_tape_free(previous_tape);
  previous_tape = fresh_tape;
}

static void one_case(const char *name) {
  Case c;
  read_case(&c, name);
  grad_case(&c);
  n_cases++;
  if (!contract_done[c.kind] && c.nx > 0 && c.ny > 0) {
    contract(&c);
    contract_done[c.kind] = 1;
  }
  free_case(&c);
}

int main(int argc, char **argv) {
  CaseKind kinds[1] = {{"hgrad", one_case, 0}};
  int k;
  if (argc < 2) {
    printf("usage: %s CASES_FILE [quick]\n", argv[0]);
    return 2;
  }
  quick = argc > 2 && strcmp(argv[2], "quick") == 0;
  read_cases(argv[1], kinds, 1);
  mrnn_tape_free(previous_tape);
  for (k = 0; k < 4; k++) CHECK(contract_done[k], "no contract case of kind %s", KIND_NAMES[k]);
  CHECK(oracle_cases >= 56, "only %d cases with float64 gradients", oracle_cases);
  printf("GRU / RNN gradient cases: %d (%d with float64 gradients, worst relative error %.3g)\n", n_cases,
         oracle_cases, worst_error);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
