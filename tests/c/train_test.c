/*
 * C test of the training functions of the masked-rnn C ABI (C_ABI.md section 3, Keras LSTM), built and run
 * by tests/suite/capi.rs (also under valgrind).
 *
 *   train_test CASES_FILE [quick]
 *
 * CASES_FILE, written by tests/suite/capi.rs from seeded problems and the Keras gradient fixtures:
 *   grad NAME B T I H go_backwards zero_output_for_mask activation recurrent_activation ALPHA_BITS BETA_BITS
 *        HAS_MASK HAS_BIAS HAS_H0 HAS_C0 HAS_DY HAS_DLAST HAS_DHN HAS_DCN KERAS TOL_BITS
 *     then arrays x, [mask], kernel, recurrent_kernel, [bias], [initial_h], [initial_c], [dy], [d_last_output],
 *     [d_h_n], [d_c_n]; the Rust API's forward outputs y, last_output, h_n, c_n and gradients dx, d_kernel,
 *     d_recurrent_kernel, d_bias, d_initial_h, d_initial_c; KERAS = 1: Keras' dx, d_kernel,
 *     d_recurrent_kernel, d_bias; KERAS = 2: those and d_initial_h, d_initial_c.
 *   end
 * Each array is "COUNT v0 v1 ...": floats as the hex bits of the IEEE single, masks as bytes.
 *
 * Per case: mrnn_lstm_keras_backward gives the Rust API's gradients bit for bit, with every thread count
 * and every subset of outputs; a handle's run_train gives the Rust API's outputs and run_backward its
 * gradients bit for bit, after the caller's input buffers were freed, twice from one tape; and the gradients
 * are within TOL of Keras' where the case comes from a Keras fixture. Then the contract: every bad input
 * gives its status and a non-empty message (NULLs, sizes, overflow, unknown enums, overlaps, misalignment,
 * tapes made before mrnn_keras_lstm_set_weights or by another handle), a failing call writes nothing, the
 * canaries past every output stay intact, and concurrent training on one handle agrees.
 *
 * "quick" (for valgrind, which is slow): each case once per path (1 thread, no subsets, one backward per tape).
 *
 * Prints one line per failure and closes with "N passed, M failed"; exits nonzero on any failure.
 */
#define _POSIX_C_SOURCE 200809L
#include "test_util.h"

enum { NG = 6, NU = 4, NF = 4 };
static const char *const GRAD_NAMES[NG] = {"dx", "d_kernel", "d_recurrent_kernel", "d_bias", "d_initial_h",
                                           "d_initial_c"};
static const char *const FWD_NAMES[NF] = {"y", "last_output", "h_n", "c_n"};
#define ALL_GRADS 0x3fu

/* Set by the "quick" argument. */
static int quick = 0;

typedef struct {
  char name[160];
  MrnnKerasLstmAttrs a;
  size_t nx, nm, nk, nr, nb, ns, ny;
  size_t ng[NG], nf[NF], nu[NU];
  float *x, *kernel, *rk, *bias, *h0, *c0;
  uint8_t *mask;
  float *up[NU];    /* dy, d_last_output, d_h_n, d_c_n; NULL = absent */
  float *fwd[NF];   /* the Rust API's outputs */
  float *grad[NG];  /* the Rust API's gradients */
  float *keras[NG]; /* Keras' gradients (rounded to float); NULL = absent */
  float tol;
} Case;

/* Output buffers for the gradients selected by `want` (bit k: GRAD_NAMES[k]); NULL for the others. */
static void alloc_grads(const Case *c, unsigned want, float *g[NG]) { select_outputs(NG, c->ng, want, g); }

/* Compares the selected gradients with the Rust API's, checks their canaries and frees them. */
static void check_grads(const char *what, const Case *c, float *g[NG]) {
  check_outputs(what, NG, GRAD_NAMES, c->ng, c->grad, g);
}

static int32_t one_shot(const Case *c, const MrnnKerasLstmAttrs *a, float *g[NG]) {
  return mrnn_lstm_keras_backward(a, c->x, c->mask, c->kernel, c->rk, c->bias, c->h0, c->c0, c->up[0], c->up[1],
                                  c->up[2], c->up[3], g[0], g[1], g[2], g[3], g[4], g[5]);
}

static int32_t run_backward(MrnnKerasLstm *layer, const MrnnTape *tape, const Case *c, float *g[NG]) {
  return mrnn_keras_lstm_run_backward(layer, tape, c->up[0], c->up[1], c->up[2], c->up[3], g[0], g[1], g[2], g[3],
                                      g[4], g[5]);
}

/* ---------------------------------------------------------------- cases */

static void read_case(Case *c, const char *name) {
  long B, T, I, H, has[9];
  int k;
  memset(c, 0, sizeof *c);
  strcpy(c->name, name);
  mrnn_keras_lstm_attrs_init(&c->a);
  B = read_long(), T = read_long(), I = read_long(), H = read_long();
  c->a.batch_size = B, c->a.seq_length = T, c->a.input_size = I, c->a.hidden_size = H;
  c->a.go_backwards = (int32_t)read_long();
  c->a.zero_output_for_mask = (int32_t)read_long();
  c->a.activation = (int32_t)read_long();
  c->a.recurrent_activation = (int32_t)read_long();
  c->a.recurrent_alpha = bits_to_float(read_bits());
  c->a.recurrent_beta = bits_to_float(read_bits());
  for (k = 0; k < 9; k++) has[k] = read_long(); /* mask bias h0 c0 dy dlast dhn dcn keras */
  c->tol = bits_to_float(read_bits());
  c->nx = (size_t)(B * T * I), c->nm = (size_t)(B * T), c->nk = (size_t)(I * 4 * H), c->nr = (size_t)(H * 4 * H);
  c->nb = (size_t)(4 * H), c->ns = (size_t)(B * H), c->ny = (size_t)(B * T * H);
  c->ng[0] = c->nx, c->ng[1] = c->nk, c->ng[2] = c->nr, c->ng[3] = c->nb, c->ng[4] = c->ns, c->ng[5] = c->ns;
  c->nf[0] = c->ny, c->nf[1] = c->ns, c->nf[2] = c->ns, c->nf[3] = c->ns;
  c->nu[0] = c->ny, c->nu[1] = c->ns, c->nu[2] = c->ns, c->nu[3] = c->ns;
  c->x = read_floats("x", c->nx);
  c->mask = has[0] ? read_mask("mask", c->nm) : NULL;
  c->kernel = read_floats("kernel", c->nk);
  c->rk = read_floats("recurrent_kernel", c->nr);
  c->bias = has[1] ? read_floats("bias", c->nb) : NULL;
  c->h0 = has[2] ? read_floats("initial_h", c->ns) : NULL;
  c->c0 = has[3] ? read_floats("initial_c", c->ns) : NULL;
  for (k = 0; k < NU; k++) c->up[k] = has[4 + k] ? read_floats("upstream", c->nu[k]) : NULL;
  for (k = 0; k < NF; k++) c->fwd[k] = read_floats(FWD_NAMES[k], c->nf[k]);
  for (k = 0; k < NG; k++) c->grad[k] = read_floats(GRAD_NAMES[k], c->ng[k]);
  for (k = 0; k < NG; k++) c->keras[k] = (has[8] == 2 || (has[8] == 1 && k < 4)) ? read_floats("keras", c->ng[k]) : NULL;
}

static void free_case(Case *c) {
  int k;
  free(c->x), free(c->mask), free(c->kernel), free(c->rk), free(c->bias), free(c->h0), free(c->c0);
  for (k = 0; k < NU; k++) free(c->up[k]);
  for (k = 0; k < NF; k++) free(c->fwd[k]);
  for (k = 0; k < NG; k++) free(c->grad[k]), free(c->keras[k]);
}

static void grad_case(Case *c) {
  MrnnKerasLstmAttrs a = c->a;
  float *g[NG];
  char what[256];
  int32_t st, threads;
  int k;
  static const unsigned subsets[] = {0x01u, 0x0eu, 0x30u, 0x04u, 0x21u};

  /* One-shot: every thread count gives the Rust API's gradients bit for bit. */
  for (threads = quick; threads <= (quick ? 1 : 2); threads++) {
    a.num_threads = threads;
    alloc_grads(c, ALL_GRADS, g);
    st = one_shot(c, &a, g);
    snprintf(what, sizeof what, "%s: mrnn_lstm_keras_backward (%d threads)", c->name, (int)threads);
    CHECK(st == MRNN_OK, "%s: status %d: %s", what, (int)st, last_error());
    if (threads == 1 && st == MRNN_OK) {
      /* Keras' float64 gradients, within the case's tolerance. */
      for (k = 0; k < NG; k++)
        if (c->keras[k]) (void)check_close_tol(c->name, GRAD_NAMES[k], g[k], c->keras[k], c->ng[k], c->tol);
    }
    check_grads(what, c, g);
  }
  /* Subsets: what is asked for is what the full call gives; every output NULL is fine. */
  a.num_threads = 1;
  for (k = 0; k < (quick ? 1 : (int)(sizeof subsets / sizeof subsets[0])); k++) {
    alloc_grads(c, subsets[k], g);
    st = one_shot(c, &a, g);
    snprintf(what, sizeof what, "%s: mrnn_lstm_keras_backward (outputs 0x%02x)", c->name, subsets[k]);
    CHECK(st == MRNN_OK, "%s: status %d: %s", what, (int)st, last_error());
    check_grads(what, c, g);
  }
  alloc_grads(c, 0, g);
  expect_status("every gradient NULL", one_shot(c, &a, g), MRNN_OK);

  /* The handle: run_train gives the Rust API's outputs, run_backward its gradients, both bit for bit, with
     the caller's input buffers freed in between (the tape holds copies). */
  {
    MrnnKerasLstm *layer = NULL;
    MrnnTape *tape = NULL, *bare = NULL;
    float *outs[NF], *x = dup_bytes(c->x, c->nx * sizeof(float)), *h0 = dup_bytes(c->h0, c->ns * sizeof(float));
    float *c0 = dup_bytes(c->c0, c->ns * sizeof(float));
    uint8_t *mask = dup_bytes(c->mask, c->nm);
    uint64_t bytes = 0;
    st = mrnn_keras_lstm_new(&c->a, c->kernel, c->rk, c->bias, &layer);
    CHECK(st == MRNN_OK && layer, "%s: mrnn_keras_lstm_new: status %d: %s", c->name, (int)st, last_error());
    if (!layer) {
      free(x), free(h0), free(c0), free(mask);
      return;
    }
    select_outputs(NF, c->nf, 0xfu, outs);
    a = c->a, a.num_threads = quick ? 1 : 2; /* run_backward uses run_train's; any gives the same bits */
    st = mrnn_keras_lstm_run_train(layer, &a, x, mask, h0, c0, outs[0], outs[1], outs[2], outs[3], &tape);
    snprintf(what, sizeof what, "%s: mrnn_keras_lstm_run_train", c->name);
    CHECK(st == MRNN_OK && tape, "%s: status %d: %s", what, (int)st, last_error());
    check_outputs(what, NF, FWD_NAMES, c->nf, c->fwd, outs);
    /* Every forward output NULL: a tape all the same. */
    if (!quick) {
      a.num_threads = 0;
      st = mrnn_keras_lstm_run_train(layer, &a, x, mask, h0, c0, NULL, NULL, NULL, NULL, &bare);
      CHECK(st == MRNN_OK && bare, "%s (no outputs): status %d: %s", what, (int)st, last_error());
    }
    if (x) memset(x, 0x7f, c->nx * sizeof(float));
    if (mask) memset(mask, 0, c->nm);
    free(x), free(h0), free(c0), free(mask);
    if (tape) {
      CHECK(mrnn_tape_bytes(tape, &bytes) == MRNN_OK, "%s: mrnn_tape_bytes: %s", c->name, last_error());
      CHECK(bytes >= c->nx * sizeof(float), "%s: mrnn_tape_bytes = %lu, less than x", c->name, (unsigned long)bytes);
      for (k = 0; k < 2 - quick; k++) {
        alloc_grads(c, ALL_GRADS, g);
        st = run_backward(layer, tape, c, g);
        snprintf(what, sizeof what, "%s: mrnn_keras_lstm_run_backward #%d", c->name, k + 1);
        CHECK(st == MRNN_OK, "%s: status %d: %s", what, (int)st, last_error());
        check_grads(what, c, g);
      }
      alloc_grads(c, subsets[0], g);
      st = run_backward(layer, tape, c, g);
      CHECK(st == MRNN_OK, "%s: run_backward (dx only): %s", c->name, last_error());
      check_grads("run_backward (dx only)", c, g);
      alloc_grads(c, 0, g);
      expect_status("run_backward, every gradient NULL", run_backward(layer, tape, c, g), MRNN_OK);
    }
    if (bare) {
      alloc_grads(c, ALL_GRADS, g);
      st = run_backward(layer, bare, c, g);
      snprintf(what, sizeof what, "%s: run_backward of a run without outputs", c->name);
      CHECK(st == MRNN_OK, "%s: status %d: %s", what, (int)st, last_error());
      check_grads(what, c, g);
    }
    mrnn_tape_free(tape);
    mrnn_tape_free(bare);
    mrnn_keras_lstm_free(layer);
  }
}

/* One "grad" case of the cases file. */
static void one_case(const char *name) {
  Case c;
  read_case(&c, name);
  grad_case(&c);
  free_case(&c);
}

static int run_cases(const char *path) {
  CaseKind kinds[1] = {{"grad", one_case, 0}};
  read_cases(path, kinds, 1);
  printf("gradient cases: %d\n", kinds[0].count);
  return kinds[0].count;
}

/* ---------------------------------------------------------------- contract */

#define SB 3
#define ST 5
#define SI 2
#define SH 4
#define NX (SB * ST * SI)
#define NK (SI * 4 * SH)
#define NR (SH * 4 * SH)
#define NS (SB * SH)
#define NY (SB * ST * SH)

static float sx[NX], sk[NK], sr[NR], sbias[4 * SH], sh0[NS], sdy[NY], sdl[NS];
static uint8_t smask[SB * ST];

static MrnnKerasLstmAttrs small_attrs(void) {
  MrnnKerasLstmAttrs a;
  mrnn_keras_lstm_attrs_init(&a);
  a.batch_size = SB, a.seq_length = ST, a.input_size = SI, a.hidden_size = SH, a.num_threads = 1;
  return a;
}

static const size_t small_sizes[NG] = {NX, NK, NR, 4 * SH, NS, NS};

/* Every gradient output of the small problem, each followed by a canary. */
static Grads small_grads(void) { return new_grads(NG, small_sizes); }

static int32_t small_backward(const MrnnKerasLstmAttrs *a, const float *x, const Grads *r) {
  return mrnn_lstm_keras_backward(a, x, smask, sk, sr, sbias, sh0, NULL, sdy, sdl, NULL, NULL, r->g[0], r->g[1],
                                  r->g[2], r->g[3], r->g[4], r->g[5]);
}

static int32_t small_run_backward(MrnnKerasLstm *layer, const MrnnTape *tape, const Grads *r) {
  return mrnn_keras_lstm_run_backward(layer, tape, sdy, sdl, NULL, NULL, r->g[0], r->g[1], r->g[2], r->g[3],
                                      r->g[4], r->g[5]);
}

static int32_t small_run_train(MrnnKerasLstm *layer, const MrnnKerasLstmAttrs *a, MrnnTape **tape) {
  return mrnn_keras_lstm_run_train(layer, a, sx, smask, sh0, NULL, NULL, NULL, NULL, NULL, tape);
}

static void one_shot_contract(void) {
  MrnnKerasLstmAttrs ok = small_attrs(), a;
  Grads r = small_grads(), e = small_grads();
  float *big = out_buf(NY + NX), *zeros = (float *)xmalloc(NY * sizeof(float));
  int32_t st;
  size_t j, k;

  /* A valid call; the same again, with the upstream given as zeros instead of NULL. */
  st = small_backward(&ok, sx, &e);
  CHECK(st == MRNN_OK, "one-shot: %s", last_error());
  for (k = 0; k < NG; k++) CHECK(canary_intact(e.g[k], small_sizes[k]), "one-shot: canary past %s", GRAD_NAMES[k]);
  /* dx is +0.0 at masked steps. */
  for (j = 0; j < SB * ST; j++) {
    if (smask[j]) continue;
    for (k = 0; k < SI; k++) {
      uint32_t u;
      memcpy(&u, &e.g[0][j * SI + k], sizeof u);
      CHECK(u == 0, "dx at masked step %lu is 0x%08x, not +0.0", (unsigned long)j, (unsigned)u);
    }
  }
  memset(zeros, 0, NY * sizeof(float));
  st = mrnn_lstm_keras_backward(&ok, sx, smask, sk, sr, sbias, sh0, zeros, sdy, sdl, zeros, zeros, r.g[0], r.g[1],
                                r.g[2], r.g[3], r.g[4], r.g[5]);
  CHECK(st == MRNN_OK, "zeros for NULL: %s", last_error());
  for (k = 0; k < NG; k++)
    for (j = 0; j < small_sizes[k]; j++)
      CHECK(r.g[k][j] == e.g[k][j], "NULL upstream / initial_c differ from zeros: %s[%lu]", GRAD_NAMES[k],
            (unsigned long)j);
  /* Every upstream NULL: every gradient zero. */
  st = mrnn_lstm_keras_backward(&ok, sx, smask, sk, sr, sbias, sh0, NULL, NULL, NULL, NULL, NULL, r.g[0], r.g[1],
                                r.g[2], r.g[3], r.g[4], r.g[5]);
  CHECK(st == MRNN_OK, "no upstream: %s", last_error());
  for (k = 0; k < NG; k++)
    for (j = 0; j < small_sizes[k]; j++) CHECK(r.g[k][j] == 0.0f, "no upstream: %s[%lu] = %g", GRAD_NAMES[k], (unsigned long)j, r.g[k][j]);
  free_grads(&r);

  /* Failures: the status, a non-empty message, nothing written. */
  r = small_grads();
#define FAILS(what, call, status)                                  \
  do {                                                             \
    expect_status(what, call, status);                             \
    CHECK(untouched(&r), "%s: a failing call wrote an output", what); \
  } while (0)
  FAILS("backward: NULL attrs",
        mrnn_lstm_keras_backward(NULL, sx, NULL, sk, sr, NULL, NULL, NULL, sdy, NULL, NULL, NULL, r.g[0], r.g[1],
                                 r.g[2], r.g[3], r.g[4], r.g[5]),
        MRNN_ERR_NULL_POINTER);
  expect_message("NULL attrs", "attrs");
  FAILS("backward: NULL x",
        mrnn_lstm_keras_backward(&ok, NULL, NULL, sk, sr, NULL, NULL, NULL, sdy, NULL, NULL, NULL, r.g[0], r.g[1],
                                 r.g[2], r.g[3], r.g[4], r.g[5]),
        MRNN_ERR_NULL_POINTER);
  expect_message("NULL x", "x is NULL");
  FAILS("backward: NULL kernel",
        mrnn_lstm_keras_backward(&ok, sx, NULL, NULL, sr, NULL, NULL, NULL, sdy, NULL, NULL, NULL, r.g[0], r.g[1],
                                 r.g[2], r.g[3], r.g[4], r.g[5]),
        MRNN_ERR_NULL_POINTER);
  expect_message("NULL kernel", "kernel");
  FAILS("backward: NULL recurrent_kernel",
        mrnn_lstm_keras_backward(&ok, sx, NULL, sk, NULL, NULL, NULL, NULL, sdy, NULL, NULL, NULL, r.g[0], r.g[1],
                                 r.g[2], r.g[3], r.g[4], r.g[5]),
        MRNN_ERR_NULL_POINTER);
  expect_message("NULL recurrent_kernel", "recurrent_kernel");
  a = ok, a.batch_size = 0;
  FAILS("backward: NULL x with an empty batch",
        mrnn_lstm_keras_backward(&a, NULL, NULL, sk, sr, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                 NULL, NULL, NULL),
        MRNN_ERR_NULL_POINTER);
  {
    static const char *names[] = {"batch_size -1", "seq_length -2", "input_size INT64_MIN", "hidden_size 0",
                                  "hidden_size -1", "activation 11", "activation -1", "recurrent_activation 99",
                                  "go_backwards 2", "zero_output_for_mask -1", "num_threads -1"};
    for (k = 0; k < sizeof names / sizeof names[0]; k++) {
      a = ok;
      if (k == 0) a.batch_size = -1;
      if (k == 1) a.seq_length = -2;
      if (k == 2) a.input_size = INT64_MIN;
      if (k == 3) a.hidden_size = 0;
      if (k == 4) a.hidden_size = -1;
      if (k == 5) a.activation = 11;
      if (k == 6) a.activation = -1;
      if (k == 7) a.recurrent_activation = 99;
      if (k == 8) a.go_backwards = 2;
      if (k == 9) a.zero_output_for_mask = -1;
      if (k == 10) a.num_threads = -1;
      FAILS(names[k], small_backward(&a, sx, &r), MRNN_ERR_BAD_ARGUMENT);
    }
  }
  a = ok, a.batch_size = INT64_MAX / 2, a.seq_length = 4;
  FAILS("backward: B*T overflows", small_backward(&a, sx, &r), MRNN_ERR_OVERFLOW);
  a = ok, a.hidden_size = INT64_MAX / 4;
  FAILS("backward: 4H overflows", small_backward(&a, sx, &r), MRNN_ERR_OVERFLOW);
  a = ok, a.batch_size = (int64_t)1 << 31, a.seq_length = (int64_t)1 << 30, a.input_size = 1;
  FAILS("backward: x bytes past PTRDIFF_MAX", small_backward(&a, sx, &r), MRNN_ERR_OVERFLOW);
  a = ok, a.batch_size = INT64_MAX, a.seq_length = INT64_MAX, a.activation = 42;
  FAILS("backward: a bad value wins over overflow", small_backward(&a, sx, &r), MRNN_ERR_BAD_ARGUMENT);
  /* Overlaps: dx with x (one buffer large enough for both), with dy; outputs with each other; d_kernel with
     kernel. */
  memcpy(big, sx, sizeof sx);
  FAILS("backward: dx overlaps x",
        mrnn_lstm_keras_backward(&ok, big, NULL, sk, sr, NULL, NULL, NULL, sdy, NULL, NULL, NULL, big + 1, NULL, NULL,
                                 NULL, NULL, NULL),
        MRNN_ERR_BAD_ARGUMENT);
  expect_message("dx overlaps x", "overlaps");
  memcpy(big, sdy, sizeof sdy);
  FAILS("backward: dx overlaps dy",
        mrnn_lstm_keras_backward(&ok, sx, NULL, sk, sr, NULL, NULL, NULL, big, NULL, NULL, NULL, big + NY - 1, NULL,
                                 NULL, NULL, NULL, NULL),
        MRNN_ERR_BAD_ARGUMENT);
  FAILS("backward: d_initial_h overlaps d_initial_c",
        mrnn_lstm_keras_backward(&ok, sx, NULL, sk, sr, NULL, NULL, NULL, sdy, NULL, NULL, NULL, NULL, NULL, NULL,
                                 NULL, big, big + 1),
        MRNN_ERR_BAD_ARGUMENT);
  memcpy(big, sk, sizeof sk);
  FAILS("backward: d_kernel overlaps kernel",
        mrnn_lstm_keras_backward(&ok, sx, NULL, big, sr, NULL, NULL, NULL, sdy, NULL, NULL, NULL, NULL, big, NULL,
                                 NULL, NULL, NULL),
        MRNN_ERR_BAD_ARGUMENT);
  FAILS("backward: misaligned dy",
        mrnn_lstm_keras_backward(&ok, sx, NULL, sk, sr, NULL, NULL, NULL, (const float *)((const char *)big + 2), NULL,
                                 NULL, NULL, r.g[0], NULL, NULL, NULL, NULL, NULL),
        MRNN_ERR_BAD_ARGUMENT);
  FAILS("backward: misaligned d_bias",
        mrnn_lstm_keras_backward(&ok, sx, NULL, sk, sr, NULL, NULL, NULL, sdy, NULL, NULL, NULL, NULL, NULL, NULL,
                                 (float *)((char *)big + 1), NULL, NULL),
        MRNN_ERR_BAD_ARGUMENT);
  /* An empty batch and an empty sequence are fine. */
  a = ok, a.batch_size = 0;
  expect_status("backward: B = 0", small_backward(&a, sx, &e), MRNN_OK);
  a = ok, a.seq_length = 0;
  expect_status("backward: T = 0", small_backward(&a, sx, &e), MRNN_OK);
#undef FAILS
  free_grads(&r);
  free_grads(&e);
  free(big);
  free(zeros);
}

/* Concurrent training on one handle: each thread trains and differentiates, and compares. */
typedef struct {
  Tally tally;
  MrnnKerasLstm *layer;
  const Grads *expected;
} Worker;

/* One training step of a worker: run_train with `threads`, then run_backward into `r`. */
static int32_t train_step(void *arg, int32_t threads, MrnnTape **tape, const Grads *r) {
  Worker *w = (Worker *)arg;
  MrnnKerasLstmAttrs a = small_attrs();
  a.num_threads = threads;
  return small_run_train(w->layer, &a, tape) != MRNN_OK ? MRNN_ERR_INTERNAL : small_run_backward(w->layer, *tape, r);
}

static void *worker_main(void *arg) { return train_worker(arg, ((Worker *)arg)->expected, small_grads, train_step); }

static void handle_contract(void) {
  MrnnKerasLstmAttrs ok = small_attrs(), a;
  MrnnKerasLstm *layer = NULL, *other = NULL;
  MrnnTape *tape = NULL, *old = NULL, *foreign = NULL, *sentinel = (MrnnTape *)&ok, *slot;
  Grads r, e, f;
  float *k2 = rnd_buf(NK, 0.5f), *r2 = rnd_buf(NR, 0.5f), *y = out_buf(NY), *hn = out_buf(NS);
  float *big = out_buf(NY + NX);
  uint64_t bytes = 0, bytes2 = 0;
  int32_t st;
  int k;

  mrnn_tape_free(NULL);
  CHECK(1, "mrnn_tape_free(NULL)");
  st = mrnn_keras_lstm_new(&ok, sk, sr, sbias, &layer);
  st |= mrnn_keras_lstm_new(&ok, sk, sr, sbias, &other);
  CHECK(st == MRNN_OK && layer && other, "new: %s", last_error());
  if (!layer || !other) return;

  /* run_train: failures leave *tape alone. */
  slot = sentinel;
  expect_status("run_train: NULL layer", small_run_train(NULL, &ok, &slot), MRNN_ERR_NULL_POINTER);
  expect_message("run_train: NULL layer", "layer");
  expect_status("run_train: NULL attrs", small_run_train(layer, NULL, &slot), MRNN_ERR_NULL_POINTER);
  expect_status("run_train: NULL x",
                mrnn_keras_lstm_run_train(layer, &ok, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, &slot),
                MRNN_ERR_NULL_POINTER);
  expect_status("run_train: NULL tape", small_run_train(layer, &ok, NULL), MRNN_ERR_NULL_POINTER);
  expect_message("run_train: NULL tape", "tape");
  a = ok, a.hidden_size = SH + 1;
  expect_status("run_train: hidden_size differs", small_run_train(layer, &a, &slot), MRNN_ERR_BAD_ARGUMENT);
  expect_message("run_train: hidden_size differs", "attrs.hidden_size ");
  a = ok, a.go_backwards = 1;
  expect_status("run_train: go_backwards differs", small_run_train(layer, &a, &slot), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.activation = 12;
  expect_status("run_train: activation 12", small_run_train(layer, &a, &slot), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.seq_length = -1;
  expect_status("run_train: seq_length -1", small_run_train(layer, &a, &slot), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.batch_size = INT64_MAX / 2, a.seq_length = 3;
  expect_status("run_train: B*T overflows", small_run_train(layer, &a, &slot), MRNN_ERR_OVERFLOW);
  {
    MrnnTape *slots[2] = {NULL, NULL};
    expect_status("run_train: misaligned tape", small_run_train(layer, &ok, (MrnnTape **)((char *)slots + 1)),
                  MRNN_ERR_BAD_ARGUMENT);
    CHECK(slots[0] == NULL && slots[1] == NULL, "a failing run_train wrote a misaligned tape slot");
  }
  expect_status("run_train: tape slot overlaps y",
                mrnn_keras_lstm_run_train(layer, &ok, sx, NULL, NULL, NULL, y, NULL, NULL, NULL, (MrnnTape **)y),
                MRNN_ERR_BAD_ARGUMENT);
  expect_status("run_train: h_n overlaps c_n",
                mrnn_keras_lstm_run_train(layer, &ok, sx, NULL, NULL, NULL, NULL, NULL, hn, hn + 1, &slot),
                MRNN_ERR_BAD_ARGUMENT);
  CHECK(slot == sentinel, "a failing run_train wrote *tape");
  CHECK(canary_intact(y, NY) && canary_intact(hn, NS), "a failing run_train overwrote a canary");

  /* A tape; mrnn_tape_bytes. */
  st = small_run_train(layer, &ok, &tape);
  CHECK(st == MRNN_OK && tape, "run_train: %s", last_error());
  if (!tape) return;
  expect_status("tape_bytes: NULL tape", mrnn_tape_bytes(NULL, &bytes), MRNN_ERR_NULL_POINTER);
  expect_status("tape_bytes: NULL bytes", mrnn_tape_bytes(tape, NULL), MRNN_ERR_NULL_POINTER);
  expect_status("tape_bytes", mrnn_tape_bytes(tape, &bytes), MRNN_OK);
  a = ok, a.seq_length = 2;
  st = small_run_train(layer, &a, &old);
  CHECK(st == MRNN_OK && mrnn_tape_bytes(old, &bytes2) == MRNN_OK && bytes2 < bytes,
        "tape_bytes: a shorter run keeps %lu bytes, not fewer than %lu", (unsigned long)bytes2, (unsigned long)bytes);
  mrnn_tape_free(old);
  old = NULL;

  /* run_backward equals the one-shot; failures write nothing. */
  e = small_grads();
  st = small_backward(&ok, sx, &e);
  r = small_grads();
  st |= small_run_backward(layer, tape, &r);
  CHECK(st == MRNN_OK && same_grads(&r, &e), "run_backward differs from mrnn_lstm_keras_backward: %s", last_error());
  free_grads(&r);
  r = small_grads();
  expect_status("run_backward: NULL layer", small_run_backward(NULL, tape, &r), MRNN_ERR_NULL_POINTER);
  expect_status("run_backward: NULL tape", small_run_backward(layer, NULL, &r), MRNN_ERR_NULL_POINTER);
  expect_message("run_backward: NULL tape", "tape is NULL");
  expect_status("run_backward: d_initial_h overlaps d_initial_c",
                mrnn_keras_lstm_run_backward(layer, tape, sdy, NULL, NULL, NULL, NULL, NULL, NULL, NULL, r.g[4],
                                             r.g[4] + 2),
                MRNN_ERR_BAD_ARGUMENT);
  expect_status("run_backward: dx overlaps dy",
                mrnn_keras_lstm_run_backward(layer, tape, big, NULL, NULL, NULL, big + NY - 1, NULL, NULL, NULL,
                                             NULL, NULL),
                MRNN_ERR_BAD_ARGUMENT);
  expect_status("run_backward: misaligned d_kernel",
                mrnn_keras_lstm_run_backward(layer, tape, sdy, NULL, NULL, NULL, NULL,
                                             (float *)((char *)r.g[1] + 2), NULL, NULL, NULL, NULL),
                MRNN_ERR_BAD_ARGUMENT);
  /* A tape made by another handle (same attributes, same weights) is refused. */
  st = small_run_train(other, &ok, &foreign);
  CHECK(st == MRNN_OK, "run_train (other handle): %s", last_error());
  expect_status("run_backward: another handle's tape", small_run_backward(layer, foreign, &r), MRNN_ERR_BAD_ARGUMENT);
  expect_message("another handle's tape", "another handle");
  expect_status("run_backward: this handle's tape on the other", small_run_backward(other, tape, &r),
                MRNN_ERR_BAD_ARGUMENT);
  CHECK(untouched(&r), "a failing run_backward wrote an output");

  /* set_weights: failures, then a stale tape. */
  expect_status("set_weights: NULL layer", mrnn_keras_lstm_set_weights(NULL, k2, r2, NULL), MRNN_ERR_NULL_POINTER);
  expect_status("set_weights: NULL kernel", mrnn_keras_lstm_set_weights(layer, NULL, r2, NULL), MRNN_ERR_NULL_POINTER);
  expect_message("set_weights: NULL kernel", "kernel");
  expect_status("set_weights: NULL recurrent_kernel", mrnn_keras_lstm_set_weights(layer, k2, NULL, NULL),
                MRNN_ERR_NULL_POINTER);
  expect_status("set_weights: misaligned kernel",
                mrnn_keras_lstm_set_weights(layer, (const float *)((const char *)k2 + 1), r2, NULL),
                MRNN_ERR_BAD_ARGUMENT);
  /* Failed set_weights changed nothing: the tape is still good. */
  st = small_run_backward(layer, tape, &r);
  CHECK(st == MRNN_OK && same_grads(&r, &e), "the tape went stale after failed set_weights: %s", last_error());
  free_grads(&r);
  r = small_grads();
  old = tape;
  tape = NULL;
  expect_status("set_weights", mrnn_keras_lstm_set_weights(layer, k2, r2, NULL), MRNN_OK);
  expect_status("run_backward: a tape made before set_weights", small_run_backward(layer, old, &r),
                MRNN_ERR_BAD_ARGUMENT);
  expect_message("a tape made before set_weights", "stale");
  CHECK(untouched(&r), "a run_backward with a stale tape wrote an output");
  /* Setting the same weights again still makes older tapes stale. */
  st = small_run_train(layer, &ok, &tape);
  st |= mrnn_keras_lstm_set_weights(layer, k2, r2, NULL);
  CHECK(st == MRNN_OK, "set_weights again: %s", last_error());
  expect_status("run_backward: a tape made before the second set_weights", small_run_backward(layer, tape, &r),
                MRNN_ERR_BAD_ARGUMENT);
  mrnn_tape_free(tape);
  tape = NULL;
  /* The new weights: run_train + run_backward equal the one-shot with them (bias NULL = zeros). */
  f = small_grads();
  st = mrnn_lstm_keras_backward(&ok, sx, smask, k2, r2, NULL, sh0, NULL, sdy, sdl, NULL, NULL, f.g[0], f.g[1], f.g[2],
                                f.g[3], f.g[4], f.g[5]);
  st |= small_run_train(layer, &ok, &tape);
  CHECK(st == MRNN_OK, "training with the new weights: %s", last_error());
  if (tape) {
    st = small_run_backward(layer, tape, &r);
    CHECK(st == MRNN_OK && same_grads(&r, &f), "run_backward after set_weights differs from the one-shot: %s",
          last_error());
  }
  /* And the forward: mrnn_keras_lstm_run uses them too. */
  {
    float *y1 = out_buf(NY), *y2 = out_buf(NY);
    st = mrnn_keras_lstm_run(layer, &ok, sx, smask, NULL, NULL, y1, NULL, NULL, NULL);
    st |= mrnn_lstm_keras(&ok, sx, smask, k2, r2, NULL, NULL, NULL, y2, NULL, NULL, NULL);
    CHECK(st == MRNN_OK && memcmp(y1, y2, (NY + CANARY) * sizeof(float)) == 0,
          "mrnn_keras_lstm_run after set_weights differs from mrnn_lstm_keras with the new weights");
    free(y1), free(y2);
  }
  /* The other handle's weights did not change. */
  free_grads(&r);
  r = small_grads();
  st = small_run_backward(other, foreign, &r);
  CHECK(st == MRNN_OK && same_grads(&r, &e), "set_weights on one handle changed another: %s", last_error());
  free_grads(&r);

  /* Concurrent training on one handle (its weights are k2, r2 now). */
  {
    Worker w[3];
    for (k = 0; k < 3; k++) w[k].layer = layer, w[k].expected = &f;
    run_workers(3, worker_main, w, sizeof w[0]);
  }

  mrnn_tape_free(tape);
  mrnn_tape_free(old);
  mrnn_tape_free(foreign);
  mrnn_keras_lstm_free(layer);
  mrnn_keras_lstm_free(other);
  free_grads(&e);
  free_grads(&f);
  free(k2), free(r2), free(y), free(hn), free(big);
}

static void contract_tests(void) {
  size_t k;
  for (k = 0; k < NX; k++) sx[k] = rnd(1.0f);
  for (k = 0; k < NK; k++) sk[k] = rnd(0.5f);
  for (k = 0; k < NR; k++) sr[k] = rnd(0.5f);
  for (k = 0; k < 4 * SH; k++) sbias[k] = rnd(0.5f);
  for (k = 0; k < NS; k++) sh0[k] = rnd(1.0f), sdl[k] = rnd(1.0f);
  for (k = 0; k < NY; k++) sdy[k] = rnd(1.0f);
  /* Holes, a fully masked sequence (the last), nonzero bytes other than 1. */
  for (k = 0; k < SB * ST; k++) smask[k] = (uint8_t)(k >= (SB - 1) * ST ? 0 : (k % 3 == 1 ? 0 : (k % 2 ? 255 : 1)));
  one_shot_contract();
  handle_contract();
}

int main(int argc, char **argv) {
  if (argc < 2) {
    printf("usage: %s CASES_FILE [quick]\n", argv[0]);
    return 2;
  }
  quick = argc > 2 && strcmp(argv[2], "quick") == 0;
  CHECK(run_cases(argv[1]) > 0, "no gradient cases");
  contract_tests();
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
