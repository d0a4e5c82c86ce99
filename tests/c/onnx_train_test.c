/*
 * C test of the ONNX LSTM training functions of the masked-rnn C ABI (C_ABI.md section 3:
 * mrnn_lstm_onnx_backward, mrnn_onnx_lstm_run_train / _run_backward / _set_weights, with the tapes shared
 * with the Keras handles), built and run by tests/suite/capi.rs (also under valgrind).
 *
 *   onnx_train_test CASES_FILE [quick]
 *
 * CASES_FILE, written by tests/suite/capi.rs from the onnx_lstm_grad fixtures (each also transposed to the other
 * layout) and seeded problems:
 *   ograd NAME T B I H direction layout input_forget has_clip CLIP_BITS num_activations ACT0 .. ACT5
 *         ALPHA_BITS0 .. ALPHA_BITS5 BETA_BITS0 .. BETA_BITS5
 *         HAS_B HAS_LENS HAS_H0 HAS_C0 HAS_P HAS_DY HAS_DY_H HAS_DY_C FIXTURE_MASK TOL_BITS
 *     then arrays x, w, r, [b], [sequence_lens], [initial_h], [initial_c], [p], [dy], [dy_h], [dy_c]; the Rust
 *     API's forward outputs y, y_h, y_c and gradients dx, dw, dr, db, d_initial_h, d_initial_c, [dp, with
 *     HAS_P]; then, for each bit k of FIXTURE_MASK (dx, dw, dr, db, d_initial_h, d_initial_c, dp), the
 *     fixture's gradient k (float64 autograd of the operator, rounded to float).
 *   end
 * Each array is "COUNT v0 v1 ...": floats as the hex bits of the IEEE single, lengths as integers.
 *
 * Per case: mrnn_lstm_onnx_backward gives the Rust API's gradients bit for bit with 0, 1 and 2 threads and
 * every subset of outputs, and is within TOL of the fixture; dp without p is refused; a handle's run_train
 * gives the Rust API's outputs and run_backward its gradients bit for bit (within TOL of the fixture), after
 * the caller's input buffers were freed, twice from one tape. Then the contract, in both layouts: every bad
 * input gives its status and a message (NULLs, sizes, overflow, lengths past seq_length or negative, unknown
 * enums, overlaps, misalignment, dp without peepholes, stale tapes, another handle's, a Keras handle's), a
 * failing call writes nothing, the canaries past every output stay intact, set_weights (with and without
 * peepholes) takes effect, and concurrent training on one handle agrees.
 *
 * "quick" (for valgrind, which is slow): each case once per path (1 thread, no subsets of the outputs, one
 * backward per tape), the fixtures in their own layout only, the one-shot contract in layout 0 and the handle contract in
 * layout 1.
 *
 * Prints one line per failure and closes with "N passed, M failed"; exits nonzero on any failure.
 */
#define _POSIX_C_SOURCE 200809L
#include "test_util.h"

enum { NG = 7, NU = 3, NF = 3 };
static const char *const GRAD_NAMES[NG] = {"dx", "dw", "dr", "db", "d_initial_h", "d_initial_c", "dp"};
static const char *const FWD_NAMES[NF] = {"y", "y_h", "y_c"};
#define ALL_GRADS 0x7fu
#define NO_DP 0x3fu

/* Set by the "quick" argument. */
static int quick = 0;

typedef struct {
  char name[160];
  MrnnOnnxLstmAttrs a;
  size_t nx, nl, ns, ny;
  size_t ng[NG], nf[NF], nu[NU];
  float *x, *w, *r, *b, *h0, *c0, *p;
  int32_t *lens;
  float *up[NU];      /* dy, dy_h, dy_c; NULL = absent */
  float *fwd[NF];     /* the Rust API's outputs */
  float *grad[NG];    /* the Rust API's gradients (dp: NULL without peepholes) */
  float *fixture[NG]; /* the fixture's gradients; NULL = absent */
  float tol;
} Case;

/* The gradients a case can give: all, or all but dp without peepholes. */
static unsigned all_grads(const Case *c) { return c->p ? ALL_GRADS : NO_DP; }

/* Output buffers for the gradients selected by `want` (bit k: GRAD_NAMES[k]); NULL for the others. */
static void alloc_grads(const Case *c, unsigned want, float *g[NG]) { select_outputs(NG, c->ng, want, g); }

/* Compares the selected gradients with the Rust API's (dp: none without peepholes), checks their canaries
   and frees them. */
static void check_grads(const char *what, const Case *c, float *g[NG]) {
  check_outputs(what, NG, GRAD_NAMES, c->ng, c->grad, g);
}

/* The fixture's gradients, within the case's tolerance. */
static void check_fixture(const char *what, const Case *c, float *g[NG]) {
  int k;
  for (k = 0; k < NG; k++)
    if (c->fixture[k] && g[k]) (void)check_close_tol(what, GRAD_NAMES[k], g[k], c->fixture[k], c->ng[k], c->tol);
}

static int32_t one_shot(const Case *c, const MrnnOnnxLstmAttrs *a, float *g[NG]) {
  return mrnn_lstm_onnx_backward(a, c->x, c->w, c->r, c->b, c->lens, c->h0, c->c0, c->p, c->up[0], c->up[1],
                                 c->up[2], g[0], g[1], g[2], g[3], g[4], g[5], g[6]);
}

static int32_t run_backward(MrnnOnnxLstm *layer, const MrnnTape *tape, const Case *c, float *g[NG]) {
  return mrnn_onnx_lstm_run_backward(layer, tape, c->up[0], c->up[1], c->up[2], g[0], g[1], g[2], g[3], g[4], g[5],
                                     g[6]);
}

/* ---------------------------------------------------------------- cases */

static void read_case(Case *c, const char *name) {
  long T, B, I, H, has[9];
  size_t d;
  int k;
  memset(c, 0, sizeof *c);
  strcpy(c->name, name);
  mrnn_onnx_lstm_attrs_init(&c->a);
  T = read_long(), B = read_long(), I = read_long(), H = read_long();
  c->a.seq_length = T, c->a.batch_size = B, c->a.input_size = I, c->a.hidden_size = H;
  c->a.direction = (int32_t)read_long();
  c->a.layout = (int32_t)read_long();
  c->a.input_forget = (int32_t)read_long();
  c->a.has_clip = (int32_t)read_long();
  c->a.clip = bits_to_float(read_bits());
  c->a.num_activations = (int32_t)read_long();
  for (k = 0; k < 6; k++) c->a.activations[k] = (int32_t)read_long();
  for (k = 0; k < 6; k++) c->a.activation_alpha[k] = bits_to_float(read_bits());
  for (k = 0; k < 6; k++) c->a.activation_beta[k] = bits_to_float(read_bits());
  for (k = 0; k < 9; k++) has[k] = read_long(); /* b lens h0 c0 p dy dy_h dy_c fixture_mask */
  c->tol = bits_to_float(read_bits());
  d = c->a.direction == 2 ? 2 : 1;
  c->nx = (size_t)(T * B * I), c->nl = (size_t)B, c->ns = d * (size_t)(B * H), c->ny = (size_t)T * c->ns;
  c->ng[0] = c->nx, c->ng[1] = d * (size_t)(4 * H * I), c->ng[2] = d * (size_t)(4 * H * H);
  c->ng[3] = d * (size_t)(8 * H), c->ng[4] = c->ns, c->ng[5] = c->ns, c->ng[6] = d * (size_t)(3 * H);
  c->nf[0] = c->ny, c->nf[1] = c->ns, c->nf[2] = c->ns;
  c->nu[0] = c->ny, c->nu[1] = c->ns, c->nu[2] = c->ns;
  c->x = read_floats("x", c->nx);
  c->w = read_floats("w", c->ng[1]);
  c->r = read_floats("r", c->ng[2]);
  c->b = has[0] ? read_floats("b", c->ng[3]) : NULL;
  c->lens = has[1] ? read_ints("sequence_lens", c->nl) : NULL;
  c->h0 = has[2] ? read_floats("initial_h", c->ns) : NULL;
  c->c0 = has[3] ? read_floats("initial_c", c->ns) : NULL;
  c->p = has[4] ? read_floats("p", c->ng[6]) : NULL;
  for (k = 0; k < NU; k++) c->up[k] = has[5 + k] ? read_floats("upstream", c->nu[k]) : NULL;
  for (k = 0; k < NF; k++) c->fwd[k] = read_floats(FWD_NAMES[k], c->nf[k]);
  for (k = 0; k < NG; k++) c->grad[k] = (k < 6 || has[4]) ? read_floats(GRAD_NAMES[k], c->ng[k]) : NULL;
  for (k = 0; k < NG; k++) c->fixture[k] = (has[8] >> k) & 1 ? read_floats("fixture", c->ng[k]) : NULL;
}

static void free_case(Case *c) {
  int k;
  free(c->x), free(c->w), free(c->r), free(c->b), free(c->lens), free(c->h0), free(c->c0), free(c->p);
  for (k = 0; k < NU; k++) free(c->up[k]);
  for (k = 0; k < NF; k++) free(c->fwd[k]);
  for (k = 0; k < NG; k++) free(c->grad[k]), free(c->fixture[k]);
}

static int fixture_count = 0;

static void grad_case(Case *c) {
  MrnnOnnxLstmAttrs a = c->a;
  float *g[NG];
  char what[320];
  int32_t st, threads;
  int k;
  static const unsigned subsets[] = {0x01u, 0x0eu, 0x30u, 0x08u, 0x41u, 0x40u};

  if (c->fixture[0]) fixture_count++;
  /* One-shot: every thread count gives the Rust API's gradients bit for bit. */
  for (threads = quick; threads <= (quick ? 1 : 2); threads++) {
    a.num_threads = threads;
    alloc_grads(c, all_grads(c), g);
    st = one_shot(c, &a, g);
    snprintf(what, sizeof what, "%s: mrnn_lstm_onnx_backward (%d threads)", c->name, (int)threads);
    CHECK(st == MRNN_OK, "%s: status %d: %s", what, (int)st, last_error());
    if (threads == 1 && st == MRNN_OK) check_fixture(what, c, g);
    check_grads(what, c, g);
  }
  /* Subsets: what is asked for is what the full call gives; every output NULL is fine. */
  a.num_threads = 1;
  for (k = 0; k < (quick ? 0 : (int)(sizeof subsets / sizeof subsets[0])); k++) {
    unsigned want = subsets[k] & all_grads(c);
    alloc_grads(c, want, g);
    st = one_shot(c, &a, g);
    snprintf(what, sizeof what, "%s: mrnn_lstm_onnx_backward (outputs 0x%02x)", c->name, want);
    CHECK(st == MRNN_OK, "%s: status %d: %s", what, (int)st, last_error());
    check_grads(what, c, g);
  }
  alloc_grads(c, 0, g);
  expect_status("every gradient NULL", one_shot(c, &a, g), MRNN_OK);
  /* dp without p is refused, and nothing is written. */
  if (!c->p) {
    float *dp = out_buf(c->ng[6]), *dx = out_buf(c->nx);
    alloc_grads(c, 0, g);
    g[0] = dx, g[6] = dp;
    snprintf(what, sizeof what, "%s: dp without p", c->name);
    expect_status(what, one_shot(c, &a, g), MRNN_ERR_BAD_ARGUMENT);
    expect_message(what, "no peepholes");
    CHECK(unwritten(dp, c->ng[6]) && unwritten(dx, c->nx), "%s: a refused call wrote an output", what);
    free(dp), free(dx);
  }

  /* The handle: run_train gives the Rust API's outputs, run_backward its gradients, both bit for bit, with
     the caller's input buffers freed in between (the tape holds copies). */
  {
    MrnnOnnxLstm *layer = NULL;
    MrnnTape *tape = NULL, *bare = NULL;
    float *outs[NF], *x = dup_bytes(c->x, c->nx * sizeof(float)), *h0 = dup_bytes(c->h0, c->ns * sizeof(float));
    float *c0 = dup_bytes(c->c0, c->ns * sizeof(float));
    int32_t *lens = dup_bytes(c->lens, c->nl * sizeof(int32_t));
    uint64_t bytes = 0;
    st = mrnn_onnx_lstm_new(&c->a, c->w, c->r, c->b, c->p, &layer);
    CHECK(st == MRNN_OK && layer, "%s: mrnn_onnx_lstm_new: status %d: %s", c->name, (int)st, last_error());
    if (!layer) {
      free(x), free(h0), free(c0), free(lens);
      return;
    }
    select_outputs(NF, c->nf, 0x7u, outs);
    a = c->a, a.num_threads = quick ? 1 : 2; /* run_backward uses run_train's; any gives the same bits */
    st = mrnn_onnx_lstm_run_train(layer, &a, x, lens, h0, c0, outs[0], outs[1], outs[2], &tape);
    snprintf(what, sizeof what, "%s: mrnn_onnx_lstm_run_train", c->name);
    CHECK(st == MRNN_OK && tape, "%s: status %d: %s", what, (int)st, last_error());
    check_outputs(what, NF, FWD_NAMES, c->nf, c->fwd, outs);
    /* Every forward output NULL: a tape all the same. */
    if (!quick) {
      a.num_threads = 0;
      st = mrnn_onnx_lstm_run_train(layer, &a, x, lens, h0, c0, NULL, NULL, NULL, &bare);
      CHECK(st == MRNN_OK && bare, "%s (no outputs): status %d: %s", what, (int)st, last_error());
    }
    if (x) memset(x, 0x7f, c->nx * sizeof(float));
    if (lens) memset(lens, 0xff, c->nl * sizeof(int32_t));
    if (h0) memset(h0, 0x7f, c->ns * sizeof(float));
    free(x), free(h0), free(c0), free(lens);
    if (tape) {
      CHECK(mrnn_tape_bytes(tape, &bytes) == MRNN_OK, "%s: mrnn_tape_bytes: %s", c->name, last_error());
      CHECK(bytes >= c->nx * sizeof(float), "%s: mrnn_tape_bytes = %lu, less than x", c->name, (unsigned long)bytes);
      for (k = 0; k < 2 - quick; k++) {
        alloc_grads(c, all_grads(c), g);
        st = run_backward(layer, tape, c, g);
        snprintf(what, sizeof what, "%s: mrnn_onnx_lstm_run_backward #%d", c->name, k + 1);
        CHECK(st == MRNN_OK, "%s: status %d: %s", what, (int)st, last_error());
        if (k == 0) check_fixture(what, c, g);
        check_grads(what, c, g);
      }
      if (!quick) {
        alloc_grads(c, subsets[0], g);
        st = run_backward(layer, tape, c, g);
        CHECK(st == MRNN_OK, "%s: run_backward (dx only): %s", c->name, last_error());
        check_grads("run_backward (dx only)", c, g);
      }
      alloc_grads(c, 0, g);
      expect_status("run_backward, every gradient NULL", run_backward(layer, tape, c, g), MRNN_OK);
      if (!c->p) {
        alloc_grads(c, 0x40u, g);
        snprintf(what, sizeof what, "%s: run_backward, dp without peepholes", c->name);
        expect_status(what, run_backward(layer, tape, c, g), MRNN_ERR_BAD_ARGUMENT);
        expect_message(what, "no peepholes");
        free(g[6]);
      }
    }
    if (bare) {
      alloc_grads(c, all_grads(c), g);
      st = run_backward(layer, bare, c, g);
      snprintf(what, sizeof what, "%s: run_backward of a run without outputs", c->name);
      CHECK(st == MRNN_OK, "%s: status %d: %s", what, (int)st, last_error());
      check_grads(what, c, g);
    }
    mrnn_onnx_lstm_free(layer);
    /* Tapes may outlive their handle. */
    mrnn_tape_free(tape);
    mrnn_tape_free(bare);
  }
}

static int n_cases = 0;

/* One "ograd" case of the cases file; quick: the fixtures in their own layout only (their twins in the
   other layout run normally). */
static void one_case(const char *name) {
  Case c;
  read_case(&c, name);
  if (!quick || strchr(c.name, '@') == NULL) {
    grad_case(&c);
    n_cases++;
  }
  free_case(&c);
}

static int run_cases(const char *path) {
  CaseKind kinds[1] = {{"ograd", one_case, 0}};
  read_cases(path, kinds, 1);
  printf("ONNX gradient cases: %d (%d with fixture gradients)\n", n_cases, fixture_count);
  CHECK(fixture_count == (quick ? 16 : 32), "expected %d fixture cases (16 fixtures%s), got %d", quick ? 16 : 32,
        quick ? "" : " in both layouts", fixture_count);
  return n_cases;
}

/* ---------------------------------------------------------------- contract */

/* A bidirectional problem with peepholes and clip; H = 5 is not a multiple of any lane width. */
#define CT 4
#define CB 4
#define CI 3
#define CH 5
#define CD 2
#define NX (CT * CB * CI)
#define NW (CD * 4 * CH * CI)
#define NR (CD * 4 * CH * CH)
#define NB (CD * 8 * CH)
#define NP (CD * 3 * CH)
#define NS (CD * CB * CH)
#define NY (CT * CD * CB * CH)

static float sx[NX], sw[NW], sr[NR], sb[NB], sp[NP], sh0[NS], sc0[NS], sdy[NY], sdyh[NS], szeros[NY];
static int32_t slens[CB] = {CT, 0, 3, 1};
static const size_t small_sizes[NG] = {NX, NW, NR, NB, NS, NS, NP};

static MrnnOnnxLstmAttrs small_attrs(int32_t layout) {
  MrnnOnnxLstmAttrs a;
  mrnn_onnx_lstm_attrs_init(&a);
  a.seq_length = CT, a.batch_size = CB, a.input_size = CI, a.hidden_size = CH;
  a.direction = 2, a.layout = layout, a.has_clip = 1, a.clip = 2.5f, a.num_threads = 1;
  return a;
}

/* Every gradient output of the small problem, each followed by a canary. */
static Grads small_grads(void) { return new_grads(NG, small_sizes); }

static int32_t small_backward(const MrnnOnnxLstmAttrs *a, const Grads *r) {
  return mrnn_lstm_onnx_backward(a, sx, sw, sr, sb, slens, sh0, sc0, sp, sdy, sdyh, NULL, r->g[0], r->g[1], r->g[2],
                                 r->g[3], r->g[4], r->g[5], r->g[6]);
}

static int32_t small_backward_lens(const MrnnOnnxLstmAttrs *a, const int32_t *lens, const Grads *r) {
  return mrnn_lstm_onnx_backward(a, sx, sw, sr, sb, lens, sh0, sc0, sp, sdy, sdyh, NULL, r->g[0], r->g[1], r->g[2],
                                 r->g[3], r->g[4], r->g[5], r->g[6]);
}

static int32_t small_run_backward(MrnnOnnxLstm *layer, const MrnnTape *tape, const Grads *r) {
  return mrnn_onnx_lstm_run_backward(layer, tape, sdy, sdyh, NULL, r->g[0], r->g[1], r->g[2], r->g[3], r->g[4],
                                     r->g[5], r->g[6]);
}

static int32_t small_run_train(MrnnOnnxLstm *layer, const MrnnOnnxLstmAttrs *a, MrnnTape **tape) {
  return mrnn_onnx_lstm_run_train(layer, a, sx, slens, sh0, sc0, NULL, NULL, NULL, tape);
}

/* Whether n floats are all +0.0. */
static int all_positive_zero(const float *v, size_t n) {
  size_t k;
  for (k = 0; k < n; k++) {
    uint32_t u;
    memcpy(&u, &v[k], sizeof u);
    if (u != 0) return 0;
  }
  return 1;
}

static void one_shot_contract(int32_t layout) {
  MrnnOnnxLstmAttrs ok = small_attrs(layout), a;
  Grads r = small_grads(), e = small_grads(), f;
  float *big = out_buf(2 * NY + NX);
  int32_t st;
  size_t k;
  char what[160];

#define FAILS(what, call, status)                                                    \
  do {                                                                               \
    expect_status(what, call, status);                                               \
    CHECK(untouched(&r), "%s: a failing call wrote an output or a canary", what);    \
  } while (0)

  st = small_backward(&ok, &e);
  CHECK(st == MRNN_OK, "layout %d: small backward: %s", (int)layout, last_error());

  /* NULLs. */
  FAILS("onnx backward: NULL attrs",
        mrnn_lstm_onnx_backward(NULL, sx, sw, sr, sb, slens, sh0, sc0, sp, sdy, sdyh, NULL, r.g[0], r.g[1], r.g[2],
                                r.g[3], r.g[4], r.g[5], r.g[6]),
        MRNN_ERR_NULL_POINTER);
  expect_message("NULL attrs", "attrs is NULL");
  FAILS("onnx backward: NULL x",
        mrnn_lstm_onnx_backward(&ok, NULL, sw, sr, sb, slens, sh0, sc0, sp, sdy, sdyh, NULL, r.g[0], r.g[1], r.g[2],
                                r.g[3], r.g[4], r.g[5], r.g[6]),
        MRNN_ERR_NULL_POINTER);
  expect_message("NULL x", "x is NULL");
  FAILS("onnx backward: NULL w",
        mrnn_lstm_onnx_backward(&ok, sx, NULL, sr, sb, slens, sh0, sc0, sp, sdy, sdyh, NULL, r.g[0], r.g[1], r.g[2],
                                r.g[3], r.g[4], r.g[5], r.g[6]),
        MRNN_ERR_NULL_POINTER);
  expect_message("NULL w", "w is NULL");
  FAILS("onnx backward: NULL r",
        mrnn_lstm_onnx_backward(&ok, sx, sw, NULL, sb, slens, sh0, sc0, sp, sdy, sdyh, NULL, r.g[0], r.g[1], r.g[2],
                                r.g[3], r.g[4], r.g[5], r.g[6]),
        MRNN_ERR_NULL_POINTER);
  expect_message("NULL r", "r is NULL");

  /* Values. */
  {
    static const char *const names[] = {"seq_length -1",     "batch_size -2",    "input_size INT64_MIN",
                                        "hidden_size 0",     "hidden_size -1",   "direction 3",
                                        "direction -1",      "layout 2",         "input_forget 2",
                                        "has_clip 2",        "clip 0",           "clip NaN",
                                        "clip -inf",         "num_activations 3 (bidirectional)",
                                        "activations[1] 11", "activations[5] -1", "num_threads -1"};
    for (k = 0; k < sizeof names / sizeof names[0]; k++) {
      a = ok;
      if (k == 0) a.seq_length = -1;
      if (k == 1) a.batch_size = -2;
      if (k == 2) a.input_size = INT64_MIN;
      if (k == 3) a.hidden_size = 0;
      if (k == 4) a.hidden_size = -1;
      if (k == 5) a.direction = 3;
      if (k == 6) a.direction = -1;
      if (k == 7) a.layout = 2;
      if (k == 8) a.input_forget = 2;
      if (k == 9) a.has_clip = 2;
      if (k == 10) a.clip = 0.0f;
      if (k == 11) a.clip = NAN;
      if (k == 12) a.clip = -INFINITY;
      if (k == 13) a.num_activations = 3;
      if (k == 14) a.num_activations = 6, a.activations[1] = 11;
      if (k == 15) a.num_activations = 6, a.activations[5] = -1;
      if (k == 16) a.num_threads = -1;
      snprintf(what, sizeof what, "onnx backward: %s", names[k]);
      FAILS(what, small_backward(&a, &r), MRNN_ERR_BAD_ARGUMENT);
    }
  }
  /* Overflow; a bad value wins over it. */
  a = ok, a.seq_length = INT64_MAX / 2, a.batch_size = 4;
  FAILS("onnx backward: T*B overflows", small_backward(&a, &r), MRNN_ERR_OVERFLOW);
  a = ok, a.hidden_size = INT64_MAX / 8;
  FAILS("onnx backward: 8H overflows", small_backward(&a, &r), MRNN_ERR_OVERFLOW);
  a = ok, a.seq_length = (int64_t)1 << 31, a.batch_size = (int64_t)1 << 30, a.input_size = 1;
  FAILS("onnx backward: x bytes past PTRDIFF_MAX", small_backward(&a, &r), MRNN_ERR_OVERFLOW);
  a = ok, a.seq_length = INT64_MAX, a.batch_size = INT64_MAX, a.layout = 5;
  FAILS("onnx backward: a bad value wins over overflow", small_backward(&a, &r), MRNN_ERR_BAD_ARGUMENT);

  /* Lengths past seq_length or negative: refused after the other checks, before any write. */
  {
    static const int32_t bad[3][CB] = {{CT, CT + 1, 0, 0}, {0, 3, -1, 2}, {INT32_MIN, 0, 0, 0}};
    static const char *const needles[3] = {"sequence_lens[1] = 5", "sequence_lens[2] = -1",
                                           "sequence_lens[0] = -2147483648"};
    for (k = 0; k < 3; k++) {
      snprintf(what, sizeof what, "onnx backward: lengths #%d", (int)k);
      FAILS(what, small_backward_lens(&ok, bad[k], &r), MRNN_ERR_BAD_ARGUMENT);
      expect_message(what, needles[k]);
    }
    /* Even with every gradient NULL. */
    expect_status("onnx backward: bad lengths, no outputs",
                  mrnn_lstm_onnx_backward(&ok, sx, sw, sr, sb, bad[0], NULL, NULL, sp, NULL, NULL, NULL, NULL, NULL,
                                          NULL, NULL, NULL, NULL, NULL),
                  MRNN_ERR_BAD_ARGUMENT);
    /* A misaligned pointer (step 4) wins over bad lengths (step 5). */
    FAILS("onnx backward: misaligned dy wins over bad lengths",
          mrnn_lstm_onnx_backward(&ok, sx, sw, sr, sb, bad[0], NULL, NULL, sp, (const float *)((const char *)sdy + 2),
                                  NULL, NULL, r.g[0], NULL, NULL, NULL, NULL, NULL, NULL),
          MRNN_ERR_BAD_ARGUMENT);
    expect_message("misaligned dy wins over bad lengths", "dy");
  }

  /* Pointers: overlaps and misalignment. */
  memcpy(big, sx, sizeof sx);
  FAILS("onnx backward: dx overlaps x",
        mrnn_lstm_onnx_backward(&ok, big, sw, sr, NULL, NULL, NULL, NULL, NULL, sdy, NULL, NULL, big + 1, NULL, NULL,
                                NULL, NULL, NULL, NULL),
        MRNN_ERR_BAD_ARGUMENT);
  expect_message("dx overlaps x", "overlaps");
  memcpy(big, sdy, sizeof sdy);
  FAILS("onnx backward: dx overlaps dy",
        mrnn_lstm_onnx_backward(&ok, sx, sw, sr, NULL, NULL, NULL, NULL, NULL, big, NULL, NULL, big + NY - 1, NULL,
                                NULL, NULL, NULL, NULL, NULL),
        MRNN_ERR_BAD_ARGUMENT);
  FAILS("onnx backward: d_initial_h overlaps d_initial_c",
        mrnn_lstm_onnx_backward(&ok, sx, sw, sr, NULL, NULL, NULL, NULL, NULL, sdy, NULL, NULL, NULL, NULL, NULL, NULL,
                                big, big + 1, NULL),
        MRNN_ERR_BAD_ARGUMENT);
  memcpy(big, sw, sizeof sw);
  FAILS("onnx backward: dw overlaps w",
        mrnn_lstm_onnx_backward(&ok, sx, big, sr, NULL, NULL, NULL, NULL, NULL, sdy, NULL, NULL, NULL, big + 3, NULL,
                                NULL, NULL, NULL, NULL),
        MRNN_ERR_BAD_ARGUMENT);
  memcpy(big, sh0, sizeof sh0);
  FAILS("onnx backward: d_initial_h is initial_h",
        mrnn_lstm_onnx_backward(&ok, sx, sw, sr, NULL, NULL, big, NULL, NULL, sdy, NULL, NULL, NULL, NULL, NULL, NULL,
                                big, NULL, NULL),
        MRNN_ERR_BAD_ARGUMENT);
  FAILS("onnx backward: dp overlaps db",
        mrnn_lstm_onnx_backward(&ok, sx, sw, sr, NULL, NULL, NULL, NULL, sp, sdy, NULL, NULL, NULL, NULL, NULL, big,
                                NULL, NULL, big + NB - 1),
        MRNN_ERR_BAD_ARGUMENT);
  FAILS("onnx backward: misaligned dy_h",
        mrnn_lstm_onnx_backward(&ok, sx, sw, sr, NULL, NULL, NULL, NULL, NULL, sdy, (const float *)((const char *)big + 2),
                                NULL, r.g[0], NULL, NULL, NULL, NULL, NULL, NULL),
        MRNN_ERR_BAD_ARGUMENT);
  FAILS("onnx backward: misaligned db",
        mrnn_lstm_onnx_backward(&ok, sx, sw, sr, NULL, NULL, NULL, NULL, NULL, sdy, NULL, NULL, NULL, NULL, NULL,
                                (float *)((char *)big + 1), NULL, NULL, NULL),
        MRNN_ERR_BAD_ARGUMENT);
  {
    int32_t lens2[CB + 1] = {0, 0, 0, 0, 0};
    FAILS("onnx backward: misaligned sequence_lens",
          mrnn_lstm_onnx_backward(&ok, sx, sw, sr, NULL, (const int32_t *)((const char *)lens2 + 2), NULL, NULL, NULL,
                                  sdy, NULL, NULL, r.g[0], NULL, NULL, NULL, NULL, NULL, NULL),
          MRNN_ERR_BAD_ARGUMENT);
  }
  /* dp without p: refused ("no peepholes"), nothing written; without dp the call is fine. */
  FAILS("onnx backward: dp without p",
        mrnn_lstm_onnx_backward(&ok, sx, sw, sr, sb, slens, sh0, sc0, NULL, sdy, sdyh, NULL, r.g[0], r.g[1], r.g[2],
                                r.g[3], r.g[4], r.g[5], r.g[6]),
        MRNN_ERR_BAD_ARGUMENT);
  expect_message("dp without p", "no peepholes");
  f = small_grads();
  st = mrnn_lstm_onnx_backward(&ok, sx, sw, sr, sb, slens, sh0, sc0, NULL, sdy, sdyh, NULL, f.g[0], f.g[1], f.g[2],
                               f.g[3], f.g[4], f.g[5], NULL);
  CHECK(st == MRNN_OK, "onnx backward without peepholes, dp NULL: %s", last_error());
  free_grads(&f);

  /* Semantics: dx is +0.0 at padded steps; the length-0 sequence's initial-state gradients are zeros; a NULL
     upstream is zeros. */
  {
    int pad_ok = 1, zero_ok = 1;
    size_t t, s, j, dd;
    for (t = 0; t < CT; t++)
      for (s = 0; s < CB; s++)
        if ((int32_t)t >= slens[s]) {
          size_t at = layout == 0 ? (t * CB + s) * CI : (s * CT + t) * CI;
          pad_ok &= all_positive_zero(e.g[0] + at, CI);
        }
    CHECK(pad_ok, "layout %d: dx is not +0.0 at a padded step", (int)layout);
    for (dd = 0; dd < CD; dd++)
      for (j = 0; j < CH; j++) {
        size_t at = layout == 0 ? (dd * CB + 1) * CH + j : (1 * CD + dd) * CH + j;
        zero_ok &= e.g[4][at] == 0.0f && e.g[5][at] == 0.0f;
      }
    CHECK(zero_ok, "layout %d: the gradient of a length-0 sequence's initial state is not zero", (int)layout);
    f = small_grads();
    st = mrnn_lstm_onnx_backward(&ok, sx, sw, sr, sb, slens, sh0, sc0, sp, sdy, sdyh, szeros, f.g[0], f.g[1], f.g[2],
                                 f.g[3], f.g[4], f.g[5], f.g[6]);
    CHECK(st == MRNN_OK && same_grads(&e, &f), "layout %d: a NULL dy_c differs from zeros", (int)layout);
    free_grads(&f);
    f = small_grads();
    st = mrnn_lstm_onnx_backward(&ok, sx, sw, sr, sb, slens, sh0, sc0, sp, NULL, NULL, NULL, f.g[0], f.g[1], f.g[2],
                                 f.g[3], f.g[4], f.g[5], f.g[6]);
    zero_ok = st == MRNN_OK;
    for (k = 0; k < NG; k++)
      for (j = 0; j < small_sizes[k]; j++) zero_ok &= f.g[k][j] == 0.0f;
    CHECK(zero_ok, "layout %d: no upstream at all does not give zero gradients", (int)layout);
    free_grads(&f);
  }
  /* An empty batch and an empty sequence are fine. */
  a = ok, a.batch_size = 0;
  f = small_grads();
  expect_status("onnx backward: B = 0", small_backward(&a, &f), MRNN_OK);
  free_grads(&f);
  f = small_grads();
  a = ok, a.seq_length = 0;
  expect_status("onnx backward: T = 0",
                mrnn_lstm_onnx_backward(&a, sx, sw, sr, sb, NULL, sh0, sc0, sp, sdy, sdyh, NULL, f.g[0], f.g[1],
                                        f.g[2], f.g[3], f.g[4], f.g[5], f.g[6]),
                MRNN_OK);
  free_grads(&f);
#undef FAILS
  free_grads(&r);
  free_grads(&e);
  free(big);
}

/* Concurrent training on one handle: each thread trains and differentiates, and compares. */
typedef struct {
  Tally tally;
  MrnnOnnxLstm *layer;
  const Grads *expected;
  int32_t layout;
} Worker;

/* One training step of a worker: run_train with `threads`, then run_backward into `r`. */
static int32_t train_step(void *arg, int32_t threads, MrnnTape **tape, const Grads *r) {
  Worker *w = (Worker *)arg;
  MrnnOnnxLstmAttrs a = small_attrs(w->layout);
  a.num_threads = threads;
  return small_run_train(w->layer, &a, tape) != MRNN_OK ? MRNN_ERR_INTERNAL : small_run_backward(w->layer, *tape, r);
}

static void *worker_main(void *arg) { return train_worker(arg, ((Worker *)arg)->expected, small_grads, train_step); }

/* A Keras handle and one of its tapes, to give to the ONNX functions (and the reverse). */
static MrnnTape *keras_tape(MrnnKerasLstm **layer) {
  MrnnKerasLstmAttrs a;
  MrnnTape *tape = NULL;
  float *k = rnd_buf(2 * 4 * 3, 0.5f), *r = rnd_buf(3 * 4 * 3, 0.5f), x[2 * 2 * 2] = {0.5f, -0.5f, 1, 0, 0, 1, 2, 3};
  mrnn_keras_lstm_attrs_init(&a);
  a.batch_size = 2, a.seq_length = 2, a.input_size = 2, a.hidden_size = 3, a.num_threads = 1;
  *layer = NULL;
  CHECK(mrnn_keras_lstm_new(&a, k, r, NULL, layer) == MRNN_OK, "keras new: %s", last_error());
  if (*layer)
    CHECK(mrnn_keras_lstm_run_train(*layer, &a, x, NULL, NULL, NULL, NULL, NULL, NULL, NULL, &tape) == MRNN_OK,
          "keras run_train: %s", last_error());
  free(k), free(r);
  return tape;
}

static void handle_contract(int32_t layout) {
  MrnnOnnxLstmAttrs ok = small_attrs(layout), a;
  MrnnOnnxLstm *layer = NULL, *other = NULL;
  MrnnKerasLstm *keras = NULL;
  MrnnTape *tape = NULL, *old = NULL, *foreign = NULL, *ktape, *sentinel = (MrnnTape *)&ok, *slot;
  Grads r, e, f;
  float *w2 = rnd_buf(NW, 0.5f), *r2 = rnd_buf(NR, 0.5f), *y = out_buf(NY), *yh = out_buf(NS);
  float *big = out_buf(NY + NX);
  uint64_t bytes = 0, bytes2 = 0;
  int32_t st;
  int k;

  mrnn_tape_free(NULL);
  CHECK(1, "mrnn_tape_free(NULL)");
  st = mrnn_onnx_lstm_new(&ok, sw, sr, sb, sp, &layer);
  st |= mrnn_onnx_lstm_new(&ok, sw, sr, sb, sp, &other);
  CHECK(st == MRNN_OK && layer && other, "new: %s", last_error());
  ktape = keras_tape(&keras);
  if (!layer || !other || !keras || !ktape) return;

  /* run_train: failures leave *tape alone. */
  slot = sentinel;
  expect_status("onnx run_train: NULL layer", small_run_train(NULL, &ok, &slot), MRNN_ERR_NULL_POINTER);
  expect_message("onnx run_train: NULL layer", "layer is NULL");
  expect_status("onnx run_train: NULL attrs", small_run_train(layer, NULL, &slot), MRNN_ERR_NULL_POINTER);
  expect_status("onnx run_train: NULL x",
                mrnn_onnx_lstm_run_train(layer, &ok, NULL, NULL, NULL, NULL, NULL, NULL, NULL, &slot),
                MRNN_ERR_NULL_POINTER);
  expect_status("onnx run_train: NULL tape", small_run_train(layer, &ok, NULL), MRNN_ERR_NULL_POINTER);
  expect_message("onnx run_train: NULL tape", "tape is NULL");
  a = ok, a.hidden_size = CH + 1;
  expect_status("onnx run_train: hidden_size differs", small_run_train(layer, &a, &slot), MRNN_ERR_BAD_ARGUMENT);
  expect_message("onnx run_train: hidden_size differs", "attrs.hidden_size ");
  a = ok, a.layout = 1 - layout;
  expect_status("onnx run_train: layout differs", small_run_train(layer, &a, &slot), MRNN_ERR_BAD_ARGUMENT);
  expect_message("onnx run_train: layout differs", "attrs.layout ");
  a = ok, a.clip = 3.0f;
  expect_status("onnx run_train: clip differs", small_run_train(layer, &a, &slot), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.direction = 7;
  expect_status("onnx run_train: direction 7", small_run_train(layer, &a, &slot), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.seq_length = -1;
  expect_status("onnx run_train: seq_length -1", small_run_train(layer, &a, &slot), MRNN_ERR_BAD_ARGUMENT);
  a = ok, a.seq_length = INT64_MAX / 2, a.batch_size = 3;
  expect_status("onnx run_train: T*B overflows", small_run_train(layer, &a, &slot), MRNN_ERR_OVERFLOW);
  {
    int32_t bad[CB] = {0, CT, CT + 2, 0};
    expect_status("onnx run_train: a length past seq_length",
                  mrnn_onnx_lstm_run_train(layer, &ok, sx, bad, NULL, NULL, y, NULL, NULL, &slot),
                  MRNN_ERR_BAD_ARGUMENT);
    expect_message("onnx run_train: a length past seq_length", "sequence_lens[2] = 6");
    bad[2] = -3;
    expect_status("onnx run_train: a negative length",
                  mrnn_onnx_lstm_run_train(layer, &ok, sx, bad, NULL, NULL, y, NULL, NULL, &slot),
                  MRNN_ERR_BAD_ARGUMENT);
  }
  {
    MrnnTape *slots[2] = {NULL, NULL};
    expect_status("onnx run_train: misaligned tape", small_run_train(layer, &ok, (MrnnTape **)((char *)slots + 1)),
                  MRNN_ERR_BAD_ARGUMENT);
    CHECK(slots[0] == NULL && slots[1] == NULL, "a failing run_train wrote a misaligned tape slot");
  }
  expect_status("onnx run_train: tape slot overlaps y",
                mrnn_onnx_lstm_run_train(layer, &ok, sx, NULL, NULL, NULL, y, NULL, NULL, (MrnnTape **)y),
                MRNN_ERR_BAD_ARGUMENT);
  expect_status("onnx run_train: y_h overlaps y_c",
                mrnn_onnx_lstm_run_train(layer, &ok, sx, NULL, NULL, NULL, NULL, yh, yh + 1, &slot),
                MRNN_ERR_BAD_ARGUMENT);
  CHECK(slot == sentinel, "a failing run_train wrote *tape");
  CHECK(unwritten(y, NY) && canary_intact(yh, NS), "a failing run_train wrote y or a canary");

  /* A tape; mrnn_tape_bytes. */
  st = small_run_train(layer, &ok, &tape);
  CHECK(st == MRNN_OK && tape, "onnx run_train: %s", last_error());
  if (!tape) return;
  expect_status("tape_bytes: NULL tape", mrnn_tape_bytes(NULL, &bytes), MRNN_ERR_NULL_POINTER);
  expect_status("tape_bytes: NULL bytes", mrnn_tape_bytes(tape, NULL), MRNN_ERR_NULL_POINTER);
  expect_status("tape_bytes", mrnn_tape_bytes(tape, &bytes), MRNN_OK);
  CHECK(bytes >= (NX + 2 * NS + CB) * sizeof(float), "tape_bytes = %lu: less than its copies", (unsigned long)bytes);
  a = ok, a.seq_length = 2;
  st = mrnn_onnx_lstm_run_train(layer, &a, sx, NULL, NULL, NULL, NULL, NULL, NULL, &old);
  CHECK(st == MRNN_OK && mrnn_tape_bytes(old, &bytes2) == MRNN_OK && bytes2 < bytes,
        "tape_bytes: a shorter run keeps %lu bytes, not fewer than %lu", (unsigned long)bytes2, (unsigned long)bytes);
  mrnn_tape_free(old);
  old = NULL;

  /* run_backward equals the one-shot; failures write nothing. */
  e = small_grads();
  st = small_backward(&ok, &e);
  r = small_grads();
  st |= small_run_backward(layer, tape, &r);
  CHECK(st == MRNN_OK && same_grads(&r, &e), "layout %d: run_backward differs from mrnn_lstm_onnx_backward: %s",
        (int)layout, last_error());
  free_grads(&r);
  r = small_grads();
  expect_status("onnx run_backward: NULL layer", small_run_backward(NULL, tape, &r), MRNN_ERR_NULL_POINTER);
  expect_status("onnx run_backward: NULL tape", small_run_backward(layer, NULL, &r), MRNN_ERR_NULL_POINTER);
  expect_message("onnx run_backward: NULL tape", "tape is NULL");
  expect_status("onnx run_backward: d_initial_h overlaps d_initial_c",
                mrnn_onnx_lstm_run_backward(layer, tape, sdy, NULL, NULL, NULL, NULL, NULL, NULL, r.g[4], r.g[4] + 2,
                                            NULL),
                MRNN_ERR_BAD_ARGUMENT);
  memcpy(big, sdy, sizeof sdy);
  expect_status("onnx run_backward: dx overlaps dy",
                mrnn_onnx_lstm_run_backward(layer, tape, big, NULL, NULL, big + NY - 1, NULL, NULL, NULL, NULL, NULL,
                                            NULL),
                MRNN_ERR_BAD_ARGUMENT);
  expect_status("onnx run_backward: misaligned dw",
                mrnn_onnx_lstm_run_backward(layer, tape, sdy, NULL, NULL, NULL, (float *)((char *)r.g[1] + 2), NULL,
                                            NULL, NULL, NULL, NULL),
                MRNN_ERR_BAD_ARGUMENT);
  /* A tape made by another handle (same attributes, same weights) is refused; so are the tapes of the
     other kind, both ways. */
  st = small_run_train(other, &ok, &foreign);
  CHECK(st == MRNN_OK, "onnx run_train (other handle): %s", last_error());
  expect_status("onnx run_backward: another handle's tape", small_run_backward(layer, foreign, &r),
                MRNN_ERR_BAD_ARGUMENT);
  expect_message("another handle's tape", "another handle");
  expect_status("onnx run_backward: this handle's tape on the other", small_run_backward(other, tape, &r),
                MRNN_ERR_BAD_ARGUMENT);
  expect_status("onnx run_backward: a Keras tape", small_run_backward(layer, ktape, &r), MRNN_ERR_BAD_ARGUMENT);
  expect_message("onnx run_backward: a Keras tape", "another kind");
  expect_message("onnx run_backward: a Keras tape", "Keras LSTM handle");
  {
    float *dk = out_buf(2 * 4 * 3);
    expect_status("keras run_backward: an ONNX tape",
                  mrnn_keras_lstm_run_backward(keras, tape, NULL, NULL, NULL, NULL, NULL, dk, NULL, NULL, NULL, NULL),
                  MRNN_ERR_BAD_ARGUMENT);
    expect_message("keras run_backward: an ONNX tape", "ONNX LSTM handle");
    CHECK(canary_intact(dk, 2 * 4 * 3) && memcmp(dk, &(uint32_t){UNSET_BITS}, 4) == 0,
          "a refused Keras run_backward wrote d_kernel");
    free(dk);
  }
  CHECK(untouched(&r), "a failing run_backward wrote an output");

  /* set_weights: failures, then a stale tape. */
  expect_status("onnx set_weights: NULL layer", mrnn_onnx_lstm_set_weights(NULL, w2, r2, NULL, sp),
                MRNN_ERR_NULL_POINTER);
  expect_status("onnx set_weights: NULL w", mrnn_onnx_lstm_set_weights(layer, NULL, r2, NULL, sp),
                MRNN_ERR_NULL_POINTER);
  expect_message("onnx set_weights: NULL w", "w is NULL");
  expect_status("onnx set_weights: NULL r", mrnn_onnx_lstm_set_weights(layer, w2, NULL, NULL, sp),
                MRNN_ERR_NULL_POINTER);
  expect_status("onnx set_weights: misaligned w",
                mrnn_onnx_lstm_set_weights(layer, (const float *)((const char *)w2 + 1), r2, NULL, sp),
                MRNN_ERR_BAD_ARGUMENT);
  expect_status("onnx set_weights: misaligned p",
                mrnn_onnx_lstm_set_weights(layer, w2, r2, NULL, (const float *)((const char *)sp + 2)),
                MRNN_ERR_BAD_ARGUMENT);
  /* Failed set_weights changed nothing: the tape is still good. */
  st = small_run_backward(layer, tape, &r);
  CHECK(st == MRNN_OK && same_grads(&r, &e), "the tape went stale after failed set_weights: %s", last_error());
  free_grads(&r);
  r = small_grads();
  old = tape;
  tape = NULL;
  expect_status("onnx set_weights", mrnn_onnx_lstm_set_weights(layer, w2, r2, NULL, sp), MRNN_OK);
  expect_status("onnx run_backward: a tape made before set_weights", small_run_backward(layer, old, &r),
                MRNN_ERR_BAD_ARGUMENT);
  expect_message("a tape made before set_weights", "stale");
  CHECK(untouched(&r), "a run_backward with a stale tape wrote an output");
  /* Setting the same weights again still makes older tapes stale. */
  st = small_run_train(layer, &ok, &tape);
  st |= mrnn_onnx_lstm_set_weights(layer, w2, r2, NULL, sp);
  CHECK(st == MRNN_OK, "set_weights again: %s", last_error());
  expect_status("onnx run_backward: a tape made before the second set_weights", small_run_backward(layer, tape, &r),
                MRNN_ERR_BAD_ARGUMENT);
  mrnn_tape_free(tape);
  tape = NULL;
  /* The new weights: run_train + run_backward equal the one-shot with them (b NULL = zeros). */
  f = small_grads();
  st = mrnn_lstm_onnx_backward(&ok, sx, w2, r2, NULL, slens, sh0, sc0, sp, sdy, sdyh, NULL, f.g[0], f.g[1], f.g[2],
                               f.g[3], f.g[4], f.g[5], f.g[6]);
  st |= small_run_train(layer, &ok, &tape);
  CHECK(st == MRNN_OK, "training with the new weights: %s", last_error());
  if (tape) {
    st = small_run_backward(layer, tape, &r);
    CHECK(st == MRNN_OK && same_grads(&r, &f), "run_backward after set_weights differs from the one-shot: %s",
          last_error());
  }
  /* And the forward: mrnn_onnx_lstm_run uses them too. */
  {
    float *y1 = out_buf(NY), *y2 = out_buf(NY);
    st = mrnn_onnx_lstm_run(layer, &ok, sx, slens, sh0, NULL, y1, NULL, NULL);
    st |= mrnn_lstm_onnx(&ok, sx, w2, r2, NULL, slens, sh0, NULL, sp, y2, NULL, NULL);
    CHECK(st == MRNN_OK && memcmp(y1, y2, (NY + CANARY) * sizeof(float)) == 0,
          "mrnn_onnx_lstm_run after set_weights differs from mrnn_lstm_onnx with the new weights");
    free(y1), free(y2);
  }
  /* The other handle's weights did not change. */
  free_grads(&r);
  r = small_grads();
  st = small_run_backward(other, foreign, &r);
  CHECK(st == MRNN_OK && same_grads(&r, &e), "set_weights on one handle changed another: %s", last_error());
  free_grads(&r);

  /* Weights without peepholes: dp is refused, the rest is the one-shot's with p NULL; peepholes again. */
  {
    MrnnTape *np = NULL;
    Grads g = small_grads(), h = small_grads();
    st = mrnn_onnx_lstm_set_weights(layer, w2, r2, sb, NULL);
    st |= small_run_train(layer, &ok, &np);
    CHECK(st == MRNN_OK && np, "set_weights without peepholes: %s", last_error());
    expect_status("onnx run_backward: dp without peepholes", small_run_backward(layer, np, &g), MRNN_ERR_BAD_ARGUMENT);
    expect_message("onnx run_backward: dp without peepholes", "no peepholes");
    CHECK(untouched(&g), "a run_backward refusing dp wrote an output");
    st = mrnn_onnx_lstm_run_backward(layer, np, sdy, sdyh, NULL, g.g[0], g.g[1], g.g[2], g.g[3], g.g[4], g.g[5], NULL);
    st |= mrnn_lstm_onnx_backward(&ok, sx, w2, r2, sb, slens, sh0, sc0, NULL, sdy, sdyh, NULL, h.g[0], h.g[1], h.g[2],
                                  h.g[3], h.g[4], h.g[5], NULL);
    CHECK(st == MRNN_OK && same_grads(&g, &h), "run_backward without peepholes differs from the one-shot: %s",
          last_error());
    mrnn_tape_free(np);
    np = NULL;
    free_grads(&g), free_grads(&h);
    g = small_grads(), h = small_grads();
    st = mrnn_onnx_lstm_set_weights(layer, w2, r2, sb, sp);
    st |= small_run_train(layer, &ok, &np);
    st |= small_run_backward(layer, np, &g);
    st |= mrnn_lstm_onnx_backward(&ok, sx, w2, r2, sb, slens, sh0, sc0, sp, sdy, sdyh, NULL, h.g[0], h.g[1], h.g[2],
                                  h.g[3], h.g[4], h.g[5], h.g[6]);
    CHECK(st == MRNN_OK && same_grads(&g, &h), "peepholes set again: run_backward differs from the one-shot: %s",
          last_error());
    mrnn_tape_free(np);
    free_grads(&g), free_grads(&h);
    /* Back to the weights the workers expect. */
    st = mrnn_onnx_lstm_set_weights(layer, w2, r2, NULL, sp);
    CHECK(st == MRNN_OK, "set_weights: %s", last_error());
  }

  /* Concurrent training on one handle (its weights are w2, r2, no bias, sp now). */
  {
    Worker w[3];
    for (k = 0; k < 3; k++) w[k].layer = layer, w[k].expected = &f, w[k].layout = layout;
    run_workers(3, worker_main, w, sizeof w[0]);
  }

  /* Handles first: tapes may outlive them. */
  mrnn_onnx_lstm_free(layer);
  mrnn_onnx_lstm_free(other);
  mrnn_keras_lstm_free(keras);
  mrnn_tape_free(tape);
  mrnn_tape_free(old);
  mrnn_tape_free(foreign);
  mrnn_tape_free(ktape);
  free_grads(&e);
  free_grads(&f);
  free(w2), free(r2), free(y), free(yh), free(big);
}

static void contract_tests(void) {
  size_t k;
  int32_t layout;
  for (k = 0; k < NX; k++) sx[k] = rnd(1.0f);
  for (k = 0; k < NW; k++) sw[k] = rnd(0.5f);
  for (k = 0; k < NR; k++) sr[k] = rnd(0.5f);
  for (k = 0; k < NB; k++) sb[k] = rnd(0.5f);
  for (k = 0; k < NP; k++) sp[k] = rnd(0.5f);
  for (k = 0; k < NS; k++) sh0[k] = rnd(1.0f), sc0[k] = rnd(1.0f), sdyh[k] = rnd(1.0f);
  for (k = 0; k < NY; k++) sdy[k] = rnd(1.0f), szeros[k] = 0.0f;
  /* quick: the one-shot in layout 0 and the handles in layout 1 (the cases cover both layouts anyway). */
  for (layout = 0; layout < 2; layout++) {
    if (!quick || layout == 0) one_shot_contract(layout);
    if (!quick || layout == 1) handle_contract(layout);
  }
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
