/*
 * C test of mrnn_lstm_onnx, built and run by tests/suite/capi.rs.
 *
 *   onnx_test CASES_FILE
 *
 * CASES_FILE is written by tests/suite/capi.rs, whitespace-separated:
 *   onnx NAME T B I H direction layout input_forget has_clip CLIP_BITS num_activations
 *        ACT0 .. ACT5 ALPHA_BITS0 .. ALPHA_BITS5 BETA_BITS0 .. BETA_BITS5
 *        HAS_B HAS_LENS HAS_INITIAL_H HAS_INITIAL_C HAS_P HAS_Y HAS_Y_H HAS_Y_C
 *     then arrays x, w, r, [b], [sequence_lens], [initial_h], [initial_c], [p], [y], [y_h], [y_c]
 *     (ONNX Runtime golden fixtures, and the layout-0 ones transposed to layout 1)
 *   stack NAME layout T B I H1 H2 direction1 direction2 TOL_BITS
 *     then arrays x, w1, r1, b1, w2, r2, b2, sequence_lens, y1, y2, y_h2, y_c2
 *     (a 2-layer network; expected values from the crate's Rust reference)
 *   end
 * Each array is "COUNT v0 v1 ...": floats as the hex bits of the IEEE single, lengths as integers.
 *
 * Every fixture and stack also runs through handles (mrnn_onnx_lstm_new / _run / _free), which must give
 * bitwise the outputs of mrnn_lstm_onnx; more handle checks (attributes, reuse across shapes) at the end.
 *
 * Prints one line per failure and closes with "N passed, M failed"; exits nonzero on any failure.
 */
#include "test_util.h"

/* The fixtures come from ONNX Runtime, whose CPU LSTM evaluates sigmoid and tanh with rational
   approximations (max abs error about 2.6e-7 each) and sums in another order; after a full sequence the
   outputs differ from the crate's by up to a few 1e-6, so they are compared with
   |a - e| <= 1e-5 * max(1, |e|). */
#define FIXTURE_TOL 1e-5f

/* ---------------------------------------------------------------- problems */

/* One call's inputs, and the element counts of every tensor. */
typedef struct {
  MrnnOnnxLstmAttrs a;
  const float *x, *w, *r, *b, *h0, *c0, *p;
  const int32_t *lens;
  size_t d, nx, nw, nr, nb, np, ns, ny;
} Problem;

static void sizes(Problem *q) {
  const MrnnOnnxLstmAttrs *a = &q->a;
  size_t T = (size_t)a->seq_length, B = (size_t)a->batch_size, I = (size_t)a->input_size,
         H = (size_t)a->hidden_size;
  q->d = a->direction == 2 ? 2 : 1;
  q->nx = T * B * I;
  q->nw = q->d * 4 * H * I;
  q->nr = q->d * 4 * H * H;
  q->nb = q->d * 8 * H;
  q->np = q->d * 3 * H;
  q->ns = q->d * B * H;
  q->ny = T * q->d * B * H;
}

static int32_t run(const Problem *q, float *y, float *y_h, float *y_c) {
  return mrnn_lstm_onnx(&q->a, q->x, q->w, q->r, q->b, q->lens, q->h0, q->c0, q->p, y, y_h, y_c);
}

/* Outputs of one call, each followed by a canary. */
typedef struct {
  float *y, *y_h, *y_c;
} Outputs;

static Outputs outputs(const Problem *q) {
  Outputs o;
  o.y = out_buf(q->ny);
  o.y_h = out_buf(q->ns);
  o.y_c = out_buf(q->ns);
  return o;
}

static void free_outputs(Outputs *o) {
  free(o->y);
  free(o->y_h);
  free(o->y_c);
}

static int32_t run_all(const Problem *q, Outputs *o) { return run(q, o->y, o->y_h, o->y_c); }

static int canaries_intact(const Problem *q, const Outputs *o) {
  return canary_intact(o->y, q->ny) && canary_intact(o->y_h, q->ns) && canary_intact(o->y_c, q->ns);
}

static int same_outputs(const Problem *q, const Outputs *a, const Outputs *b) {
  return memcmp(a->y, b->y, q->ny * sizeof(float)) == 0 && memcmp(a->y_h, b->y_h, q->ns * sizeof(float)) == 0 &&
         memcmp(a->y_c, b->y_c, q->ns * sizeof(float)) == 0;
}

/* Runs q through a handle made for it (new, run, free): the status of the failing step, or of the run. */
static int32_t run_handle(const Problem *q, float *y, float *y_h, float *y_c) {
  MrnnOnnxLstm *layer = NULL;
  int32_t st = mrnn_onnx_lstm_new(&q->a, q->w, q->r, q->b, q->p, &layer);
  if (st != MRNN_OK) return st;
  st = mrnn_onnx_lstm_run(layer, &q->a, q->x, q->lens, q->h0, q->c0, y, y_h, y_c);
  mrnn_onnx_lstm_free(layer);
  return st;
}

/* ---------------------------------------------------------------- golden fixtures */

static double worst_fixture_error = 0.0;

static void onnx_fixture(const char *name) {
  Problem q;
  Outputs o, t1, alone;
  long flags[8];
  int k, threads;
  float *x, *w, *r, *b = NULL, *h0 = NULL, *c0 = NULL, *p = NULL, *ey = NULL, *eh = NULL, *ec = NULL;
  int32_t *lens = NULL, st;
  double worst = 0.0, e;

  memset(&q, 0, sizeof q);
  mrnn_onnx_lstm_attrs_init(&q.a);
  q.a.seq_length = read_long();
  q.a.batch_size = read_long();
  q.a.input_size = read_long();
  q.a.hidden_size = read_long();
  q.a.direction = (int32_t)read_long();
  q.a.layout = (int32_t)read_long();
  q.a.input_forget = (int32_t)read_long();
  q.a.has_clip = (int32_t)read_long();
  q.a.clip = bits_to_float(read_bits());
  q.a.num_activations = (int32_t)read_long();
  for (k = 0; k < 6; k++) q.a.activations[k] = (int32_t)read_long();
  for (k = 0; k < 6; k++) q.a.activation_alpha[k] = bits_to_float(read_bits());
  for (k = 0; k < 6; k++) q.a.activation_beta[k] = bits_to_float(read_bits());
  for (k = 0; k < 8; k++) flags[k] = read_long();
  sizes(&q);
  x = read_floats("x", q.nx);
  w = read_floats("w", q.nw);
  r = read_floats("r", q.nr);
  if (flags[0]) b = read_floats("b", q.nb);
  if (flags[1]) lens = read_ints("sequence_lens", (size_t)q.a.batch_size);
  if (flags[2]) h0 = read_floats("initial_h", q.ns);
  if (flags[3]) c0 = read_floats("initial_c", q.ns);
  if (flags[4]) p = read_floats("p", q.np);
  if (flags[5]) ey = read_floats("y", q.ny);
  if (flags[6]) eh = read_floats("y_h", q.ns);
  if (flags[7]) ec = read_floats("y_c", q.ns);
  q.x = x, q.w = w, q.r = r, q.b = b, q.lens = lens, q.h0 = h0, q.c0 = c0, q.p = p;

  o = outputs(&q);
  st = run_all(&q, &o);
  CHECK(st == MRNN_OK, "%s: status %d: %s", name, (int)st, last_error());
  if (ey) {
    e = check_close_tol(name, "Y", o.y, ey, q.ny, FIXTURE_TOL);
    worst = e > worst ? e : worst;
  }
  if (eh) {
    e = check_close_tol(name, "Y_h", o.y_h, eh, q.ns, FIXTURE_TOL);
    worst = e > worst ? e : worst;
  }
  if (ec) {
    e = check_close_tol(name, "Y_c", o.y_c, ec, q.ns, FIXTURE_TOL);
    worst = e > worst ? e : worst;
  }
  CHECK(canaries_intact(&q, &o), "%s: a canary past an output was overwritten", name);
  printf("fixture %s: worst relative error %.3g\n", name, worst);
  if (worst > worst_fixture_error) worst_fixture_error = worst;

  /* Threads 1 and 2 give bitwise the outputs of the default. */
  t1 = outputs(&q);
  for (threads = 1; threads <= 2; threads++) {
    q.a.num_threads = threads;
    st = run_all(&q, &t1);
    CHECK(st == MRNN_OK && same_outputs(&q, &o, &t1), "%s: %d thread(s) differ from the default (status %d)", name,
          threads, (int)st);
  }
  q.a.num_threads = 0;

  /* Through a handle, threads 0, 1 and 2 on one handle: bitwise the one-shot outputs. */
  {
    MrnnOnnxLstm *layer = NULL;
    st = mrnn_onnx_lstm_new(&q.a, q.w, q.r, q.b, q.p, &layer);
    CHECK(st == MRNN_OK && layer != NULL, "%s: mrnn_onnx_lstm_new: status %d: %s", name, (int)st, last_error());
    for (threads = 0; threads <= 2 && layer; threads++) {
      q.a.num_threads = threads;
      st = mrnn_onnx_lstm_run(layer, &q.a, q.x, q.lens, q.h0, q.c0, t1.y, t1.y_h, t1.y_c);
      CHECK(st == MRNN_OK && same_outputs(&q, &o, &t1), "%s: handle run (%d threads) differs from mrnn_lstm_onnx "
            "(status %d: %s)", name, threads, (int)st, last_error());
      CHECK(canaries_intact(&q, &t1), "%s: a canary was overwritten (handle)", name);
    }
    q.a.num_threads = 0;
    mrnn_onnx_lstm_free(layer);
  }

  /* Y_h alone: the same Y_h, nothing else written. */
  alone = outputs(&q);
  st = run(&q, NULL, alone.y_h, NULL);
  CHECK(st == MRNN_OK && memcmp(alone.y_h, o.y_h, q.ns * sizeof(float)) == 0, "%s: Y_h alone differs (status %d)",
        name, (int)st);
  CHECK(canaries_intact(&q, &alone), "%s: a canary was overwritten (Y_h alone)", name);
  expect_status(name, run(&q, NULL, NULL, NULL), MRNN_OK);

  free_outputs(&o);
  free_outputs(&t1);
  free_outputs(&alone);
  free(x), free(w), free(r), free(b), free(lens), free(h0), free(c0), free(p), free(ey), free(eh), free(ec);
}

/* ---------------------------------------------------------------- stacked layers */

/* Layer 2 reads layer 1's Y in place: layout 0 with a unidirectional layer 1 ([T,1,B,H1] = [T,B,H1]), or
   layout 1 ([B,T,D,H1] = [B,T,D*H1]). */
static void stack_case(const char *name) {
  MrnnOnnxLstmAttrs l1, l2;
  long layout = read_long(), T = read_long(), B = read_long(), I = read_long(), H1 = read_long(),
       H2 = read_long(), dir1 = read_long(), dir2 = read_long();
  float tol = bits_to_float(read_bits());
  size_t d1 = dir1 == 2 ? 2 : 1, d2 = dir2 == 2 ? 2 : 1;
  size_t ny1 = (size_t)T * d1 * (size_t)B * (size_t)H1, ny2 = (size_t)T * d2 * (size_t)B * (size_t)H2,
         ns2 = d2 * (size_t)B * (size_t)H2, i2 = d1 * (size_t)H1;
  float *x = read_floats("x", (size_t)(T * B * I));
  float *w1 = read_floats("w1", d1 * 4 * (size_t)(H1 * I));
  float *r1 = read_floats("r1", d1 * 4 * (size_t)(H1 * H1));
  float *b1 = read_floats("b1", d1 * 8 * (size_t)H1);
  float *w2 = read_floats("w2", d2 * 4 * (size_t)H2 * i2);
  float *r2 = read_floats("r2", d2 * 4 * (size_t)(H2 * H2));
  float *b2 = read_floats("b2", d2 * 8 * (size_t)H2);
  int32_t *lens = read_ints("sequence_lens", (size_t)B);
  float *ey1 = read_floats("y1", ny1);
  float *ey2 = read_floats("y2", ny2);
  float *eh2 = read_floats("y_h2", ns2);
  float *ec2 = read_floats("y_c2", ns2);
  float *y1 = out_buf(ny1), *y2 = out_buf(ny2), *h2 = out_buf(ns2), *c2 = out_buf(ns2);
  int32_t st;
  double worst = 0.0, e;

  CHECK(layout == 1 || d1 == 1, "%s: a bidirectional layout-0 Y cannot be the next X", name);
  mrnn_onnx_lstm_attrs_init(&l1);
  l1.seq_length = T;
  l1.batch_size = B;
  l1.input_size = I;
  l1.hidden_size = H1;
  l1.direction = (int32_t)dir1;
  l1.layout = (int32_t)layout;
  l2 = l1;
  l2.input_size = (int64_t)i2;
  l2.hidden_size = H2;
  l2.direction = (int32_t)dir2;

  st = mrnn_lstm_onnx(&l1, x, w1, r1, b1, lens, NULL, NULL, NULL, y1, NULL, NULL);
  CHECK(st == MRNN_OK, "%s: layer 1: status %d: %s", name, (int)st, last_error());
  (void)check_close_tol(name, "layer 1 Y", y1, ey1, ny1, tol);
  /* Y of layer 1, as it is, is X of layer 2. */
  st = mrnn_lstm_onnx(&l2, y1, w2, r2, b2, lens, NULL, NULL, NULL, y2, h2, c2);
  CHECK(st == MRNN_OK, "%s: layer 2: status %d: %s", name, (int)st, last_error());
  e = check_close_tol(name, "layer 2 Y", y2, ey2, ny2, tol);
  worst = e > worst ? e : worst;
  e = check_close_tol(name, "layer 2 Y_h", h2, eh2, ns2, tol);
  worst = e > worst ? e : worst;
  e = check_close_tol(name, "layer 2 Y_c", c2, ec2, ns2, tol);
  worst = e > worst ? e : worst;
  CHECK(canary_intact(y1, ny1) && canary_intact(y2, ny2) && canary_intact(h2, ns2) && canary_intact(c2, ns2),
        "%s: a canary was overwritten", name);
  printf("stack %s: layout %ld, directions %ld then %ld, layer 2 worst relative error %.3g (tolerance %g)\n", name,
         layout, dir1, dir2, worst, tol);

  /* The same network through handles, made once and run twice: bitwise the one-shot outputs. */
  {
    MrnnOnnxLstm *h1 = NULL, *h2n = NULL;
    float *z1 = out_buf(ny1), *z2 = out_buf(ny2), *zh = out_buf(ns2), *zc = out_buf(ns2);
    int pass;
    st = mrnn_onnx_lstm_new(&l1, w1, r1, b1, NULL, &h1);
    st |= mrnn_onnx_lstm_new(&l2, w2, r2, b2, NULL, &h2n);
    CHECK(st == MRNN_OK, "%s: handles: %s", name, last_error());
    for (pass = 0; pass < 2 && st == MRNN_OK; pass++) {
      l1.num_threads = l2.num_threads = 1 + pass;
      st = mrnn_onnx_lstm_run(h1, &l1, x, lens, NULL, NULL, z1, NULL, NULL);
      st |= mrnn_onnx_lstm_run(h2n, &l2, z1, lens, NULL, NULL, z2, zh, zc);
      CHECK(st == MRNN_OK && memcmp(z1, y1, ny1 * sizeof(float)) == 0 && memcmp(z2, y2, ny2 * sizeof(float)) == 0 &&
                memcmp(zh, h2, ns2 * sizeof(float)) == 0 && memcmp(zc, c2, ns2 * sizeof(float)) == 0,
            "%s: the stack through handles (pass %d) differs from mrnn_lstm_onnx: %s", name, pass, last_error());
    }
    CHECK(canary_intact(z1, ny1) && canary_intact(z2, ny2) && canary_intact(zh, ns2) && canary_intact(zc, ns2),
          "%s: a canary was overwritten (handles)", name);
    mrnn_onnx_lstm_free(h1);
    mrnn_onnx_lstm_free(h2n);
    free(z1), free(z2), free(zh), free(zc);
  }

  free(x), free(w1), free(r1), free(b1), free(w2), free(r2), free(b2), free(lens);
  free(ey1), free(ey2), free(eh2), free(ec2), free(y1), free(y2), free(h2), free(c2);
}

static void run_cases(const char *path, int *n_onnx, int *n_stack) {
  CaseKind kinds[2] = {{"onnx", onnx_fixture, 0}, {"stack", stack_case, 0}};
  read_cases(path, kinds, 2);
  *n_onnx = kinds[0].count;
  *n_stack = kinds[1].count;
}

/* ---------------------------------------------------------------- contract */

/* A small problem with room for two directions. H = 5 is not a multiple of any lane width. */
#define CT 5
#define CB 4
#define CI 3
#define CH 5

static float cx[CT * CB * CI], cw[2 * 4 * CH * CI], cr[2 * 4 * CH * CH], cbias[2 * 8 * CH], cp[2 * 3 * CH];
static float ch0[2 * CB * CH], cc0[2 * CB * CH], zeros[2 * CB * CH];
static int32_t clens[CB] = {CT, 0, 3, 1};

static Problem small(int32_t direction, int32_t layout) {
  Problem q;
  memset(&q, 0, sizeof q);
  mrnn_onnx_lstm_attrs_init(&q.a);
  q.a.seq_length = CT;
  q.a.batch_size = CB;
  q.a.input_size = CI;
  q.a.hidden_size = CH;
  q.a.direction = direction;
  q.a.layout = layout;
  q.x = cx, q.w = cw, q.r = cr, q.b = cbias, q.lens = clens, q.h0 = ch0, q.c0 = cc0, q.p = cp;
  sizes(&q);
  return q;
}

/* Runs a call that must fail validation with `expected` and write nothing: every output, with its
   canary, is compared with a copy taken before the call. */
static void expect_failure(const char *what, const Problem *q, int32_t expected) {
  Outputs o = outputs(q);
  size_t by = (q->ny + CANARY) * sizeof(float), bs = (q->ns + CANARY) * sizeof(float);
  float *sy = (float *)xmalloc(by), *sh = (float *)xmalloc(bs), *sc = (float *)xmalloc(bs);
  memcpy(sy, o.y, by);
  memcpy(sh, o.y_h, bs);
  memcpy(sc, o.y_c, bs);
  expect_status(what, run_all(q, &o), expected);
  CHECK(memcmp(sy, o.y, by) == 0 && memcmp(sh, o.y_h, bs) == 0 && memcmp(sc, o.y_c, bs) == 0,
        "%s: a failing call wrote an output or a canary", what);
  free_outputs(&o);
  free(sy), free(sh), free(sc);
}

static void layout_and_defaults(void) {
  MrnnOnnxLstmAttrs a;
  int k, all_nan = 1;
  CHECK(sizeof(MrnnOnnxLstmAttrs) == 136, "sizeof(MrnnOnnxLstmAttrs) = %lu", (unsigned long)sizeof(MrnnOnnxLstmAttrs));
  CHECK(offsetof(MrnnOnnxLstmAttrs, direction) == 32 && offsetof(MrnnOnnxLstmAttrs, clip) == 48 &&
            offsetof(MrnnOnnxLstmAttrs, num_activations) == 52 && offsetof(MrnnOnnxLstmAttrs, activations) == 56 &&
            offsetof(MrnnOnnxLstmAttrs, activation_alpha) == 80 &&
            offsetof(MrnnOnnxLstmAttrs, activation_beta) == 104 && offsetof(MrnnOnnxLstmAttrs, num_threads) == 128,
        "MrnnOnnxLstmAttrs field offsets");
  memset(&a, 0x5a, sizeof a);
  expect_status("onnx attrs_init", mrnn_onnx_lstm_attrs_init(&a), MRNN_OK);
  for (k = 0; k < 6; k++) all_nan &= isnan(a.activation_alpha[k]) && isnan(a.activation_beta[k]);
  CHECK(a.seq_length == 0 && a.batch_size == 0 && a.input_size == 0 && a.hidden_size == 0 && a.direction == 0 &&
            a.layout == 0 && a.input_forget == 0 && a.has_clip == 0 && a.num_activations == 0 &&
            a.num_threads == 0 && all_nan && a.activations[0] == MRNN_ACT_SIGMOID &&
            a.activations[1] == MRNN_ACT_TANH && a.activations[2] == MRNN_ACT_TANH &&
            a.activations[3] == MRNN_ACT_SIGMOID && a.activations[5] == MRNN_ACT_TANH,
        "mrnn_onnx_lstm_attrs_init defaults");
  expect_status("onnx attrs_init(NULL)", mrnn_onnx_lstm_attrs_init(NULL), MRNN_ERR_NULL_POINTER);
}

static void null_pointers(void) {
  Problem q = small(2, 0), e;
  Outputs o = outputs(&q);
  e = q, e.x = NULL;
  expect_failure("NULL x", &e, MRNN_ERR_NULL_POINTER);
  CHECK(strstr(mrnn_last_error(), "x") != NULL, "message names x: %s", last_error());
  e = q, e.w = NULL;
  expect_failure("NULL w", &e, MRNN_ERR_NULL_POINTER);
  e = q, e.r = NULL;
  expect_failure("NULL r", &e, MRNN_ERR_NULL_POINTER);
  expect_status("NULL attrs", mrnn_lstm_onnx(NULL, cx, cw, cr, NULL, NULL, NULL, NULL, NULL, o.y, o.y_h, o.y_c),
                MRNN_ERR_NULL_POINTER);
  CHECK(isnan(o.y[0]) && isnan(o.y_h[0]) && isnan(o.y_c[0]) && canaries_intact(&q, &o), "NULL attrs wrote an output");
  /* NULL wins over bad values; a required input is required even when empty. */
  e = q, e.x = NULL, e.a.direction = 9;
  expect_failure("NULL x and a bad direction", &e, MRNN_ERR_NULL_POINTER);
  e = q, e.x = NULL, e.a.batch_size = 0;
  expect_failure("NULL x with an empty batch", &e, MRNN_ERR_NULL_POINTER);
  /* Every optional pointer NULL is fine. */
  e = q, e.b = NULL, e.lens = NULL, e.h0 = NULL, e.c0 = NULL, e.p = NULL;
  expect_status("optional inputs NULL", run_all(&e, &o), MRNN_OK);
  CHECK(canaries_intact(&q, &o), "canary overwritten (optional inputs NULL)");
  free_outputs(&o);
}

static void bad_values(void) {
  Problem q = small(2, 0), e;
  static const int32_t bad_counts[] = {1, 2, 4, 5, 7, 9, -1, -3};
  size_t k;
  char what[96];

  e = q, e.a.direction = 3;
  expect_failure("direction 3", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.direction = -1;
  expect_failure("direction -1", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.layout = 2;
  expect_failure("layout 2", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.layout = -1;
  expect_failure("layout -1", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.input_forget = 2;
  expect_failure("input_forget 2", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.input_forget = -1;
  expect_failure("input_forget -1", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.has_clip = 2;
  expect_failure("has_clip 2", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.has_clip = -1, e.a.clip = 1.0f;
  expect_failure("has_clip -1", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.has_clip = 1, e.a.clip = 0.0f;
  expect_failure("clip 0", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.has_clip = 1, e.a.clip = -0.0f;
  expect_failure("clip -0", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.has_clip = 1, e.a.clip = -1.0f;
  expect_failure("clip -1", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.has_clip = 1, e.a.clip = bits_to_float(0x7fc00000u);
  expect_failure("clip NaN", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.has_clip = 1, e.a.clip = -INFINITY;
  expect_failure("clip -inf", &e, MRNN_ERR_BAD_ARGUMENT);
  for (k = 0; k < sizeof bad_counts / sizeof bad_counts[0]; k++) {
    e = q, e.a.num_activations = bad_counts[k];
    sprintf(what, "num_activations %d", (int)bad_counts[k]);
    expect_failure(what, &e, MRNN_ERR_BAD_ARGUMENT);
  }
  e = small(0, 0), e.a.num_activations = 6;
  expect_failure("num_activations 6, forward", &e, MRNN_ERR_BAD_ARGUMENT);
  e = small(1, 1), e.a.num_activations = 6;
  expect_failure("num_activations 6, reverse", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.num_activations = 3, e.a.activations[1] = 11;
  expect_failure("activation code 11", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.num_activations = 3, e.a.activations[0] = -1;
  expect_failure("activation code -1", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.num_activations = 6, e.a.activations[5] = INT32_MAX;
  expect_failure("activation code INT32_MAX in the reverse half", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.seq_length = -1;
  expect_failure("seq_length -1", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.batch_size = -2;
  expect_failure("batch_size -2", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.input_size = INT64_MIN;
  expect_failure("input_size INT64_MIN", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.hidden_size = -5;
  expect_failure("hidden_size -5", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.hidden_size = 0;
  expect_failure("hidden_size 0", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.num_threads = -1;
  expect_failure("num_threads -1", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.num_threads = INT32_MIN;
  expect_failure("num_threads INT32_MIN", &e, MRNN_ERR_BAD_ARGUMENT);

  /* Lengths: checked after the pointers, before any write; the message names the index and value. */
  {
    int32_t past[CB] = {CT, 0, CT + 1, 1}, negative[CB] = {-1, 0, 3, 1}, minimum[CB] = {CT, INT32_MIN, 0, 0};
    e = q, e.lens = past;
    expect_failure("a length past seq_length", &e, MRNN_ERR_BAD_ARGUMENT);
    CHECK(strstr(mrnn_last_error(), "sequence_lens[2] = 6") != NULL, "message: %s", last_error());
    e = q, e.lens = negative;
    expect_failure("a negative length", &e, MRNN_ERR_BAD_ARGUMENT);
    CHECK(strstr(mrnn_last_error(), "sequence_lens[0] = -1") != NULL, "message: %s", last_error());
    e = q, e.lens = minimum;
    expect_failure("length INT32_MIN", &e, MRNN_ERR_BAD_ARGUMENT);
    CHECK(strstr(mrnn_last_error(), "sequence_lens[1] = -2147483648") != NULL, "message: %s", last_error());
    e = q, e.lens = past;
    expect_status("bad lengths, every output NULL", run(&e, NULL, NULL, NULL), MRNN_ERR_BAD_ARGUMENT);
    e = q, e.lens = past, e.a.seq_length = CT + 1;
    /* The same values are fine for a longer sequence (x, y sized for it below). */
    {
      float *x6 = rnd_buf((CT + 1) * CB * CI, 1.0f);
      Outputs o;
      e.x = x6;
      sizes(&e);
      o = outputs(&e);
      expect_status("lengths within a longer seq_length", run_all(&e, &o), MRNN_OK);
      CHECK(canaries_intact(&e, &o), "canary overwritten (longer seq_length)");
      free_outputs(&o);
      free(x6);
    }
  }

  /* Bad values are found before overflow. */
  e = q, e.a.seq_length = INT64_MAX, e.a.batch_size = INT64_MAX, e.a.input_size = -1;
  expect_failure("negative wins over overflow", &e, MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.seq_length = INT64_MAX, e.a.batch_size = INT64_MAX, e.a.layout = 7;
  expect_failure("bad layout wins over overflow", &e, MRNN_ERR_BAD_ARGUMENT);
}

static void overflows(void) {
  Problem q = small(2, 0), e;
  /* The buffers are never read: validation fails first. */
  e = q, e.a.seq_length = INT64_MAX / 2, e.a.batch_size = 4;
  expect_failure("X [T,B,I] overflows", &e, MRNN_ERR_OVERFLOW);
  e = q, e.a.hidden_size = INT64_MAX / 8;
  expect_failure("4H overflows", &e, MRNN_ERR_OVERFLOW);
  e = q, e.a.input_size = INT64_MAX / 16, e.a.seq_length = 0;
  expect_failure("W [D,4H,I] overflows", &e, MRNN_ERR_OVERFLOW);
  e = q, e.a.seq_length = (int64_t)1 << 31, e.a.batch_size = (int64_t)1 << 30, e.a.input_size = 1;
  expect_failure("X bytes past PTRDIFF_MAX", &e, MRNN_ERR_OVERFLOW);
  e = q, e.a.seq_length = (int64_t)1 << 20, e.a.batch_size = (int64_t)1 << 20, e.a.hidden_size = (int64_t)1 << 20,
  e.a.input_size = 0;
  expect_failure("Y [T,2,B,H] bytes past PTRDIFF_MAX", &e, MRNN_ERR_OVERFLOW);
  e = q, e.a.hidden_size = (int64_t)1 << 31, e.a.input_size = 0, e.a.seq_length = 0, e.a.batch_size = 0;
  expect_failure("R [D,4H,H] overflows", &e, MRNN_ERR_OVERFLOW);
}

static void pointers(void) {
  Problem q = small(2, 0), e;
  Outputs o = outputs(&q);
  float *big = rnd_buf(q.ny + q.nx, 1.0f);
  unsigned char *raw = (unsigned char *)xmalloc(sizeof cx + 8);
  memcpy(raw + 2, cx, sizeof cx);
  e = q, e.x = (const float *)(const void *)(raw + 2);
  expect_failure("misaligned x", &e, MRNN_ERR_BAD_ARGUMENT);
  /* Overlaps: every buffer large enough for what it stands for, so a missed overlap stays in bounds. */
  e = q, e.x = big;
  expect_status("Y overlaps x", run(&e, big, NULL, NULL), MRNN_ERR_BAD_ARGUMENT);
  expect_status("Y_h overlaps Y_c", run(&q, NULL, o.y, o.y + 1), MRNN_ERR_BAD_ARGUMENT);
  e = q, e.h0 = o.y_h;
  expect_status("Y_h is initial_h", run(&e, NULL, o.y_h, NULL), MRNN_ERR_BAD_ARGUMENT);
  e = q, e.w = big;
  expect_status("Y overlaps w", run(&e, big + 1, NULL, NULL), MRNN_ERR_BAD_ARGUMENT);
  /* Inputs may share memory. */
  e = q, e.h0 = cc0;
  expect_status("initial_h is initial_c", run_all(&e, &o), MRNN_OK);
  CHECK(canaries_intact(&q, &o), "canary overwritten");
  free_outputs(&o);
  free(big);
  free(raw);
}

/* Semantics: +0.0 past the lengths, zero states for length 0, options equal to their explicit forms. */
static void semantics(void) {
  int32_t layout, dir;
  for (layout = 0; layout <= 1; layout++) {
    for (dir = 0; dir <= 2; dir++) {
      Problem q = small(dir, layout), e;
      Outputs o = outputs(&q), o2 = outputs(&q);
      size_t t, d, b, j, D = q.d, bad = 0;
      char what[96];
      sprintf(what, "direction %d layout %d", (int)dir, (int)layout);
      expect_status(what, run_all(&q, &o), MRNN_OK);
      CHECK(canaries_intact(&q, &o), "%s: canary overwritten", what);
      for (t = 0; t < CT; t++)
        for (d = 0; d < D; d++)
          for (b = 0; b < CB; b++)
            for (j = 0; j < CH; j++) {
              size_t k = layout == 0 ? ((t * D + d) * CB + b) * CH + j : ((b * CT + t) * D + d) * CH + j;
              uint32_t u;
              memcpy(&u, &o.y[k], sizeof u);
              if (t >= (size_t)clens[b] ? u != 0u : (u == 0u || isnan(o.y[k]))) bad++;
            }
      CHECK(bad == 0, "%s: %lu Y values wrong (+0.0 past the lengths, computed within)", what, (unsigned long)bad);
      for (d = 0; d < D; d++)
        for (j = 0; j < CH; j++) {
          size_t k = layout == 0 ? (d * CB + 1) * CH + j : (1 * D + d) * CH + j;
          CHECK(o.y_h[k] == 0.0f && o.y_c[k] == 0.0f, "%s: length 0 must give zero Y_h / Y_c", what);
        }

      /* clip = +inf is no clip. */
      e = q, e.a.has_clip = 1, e.a.clip = INFINITY;
      expect_status("clip +inf", run_all(&e, &o2), MRNN_OK);
      CHECK(same_outputs(&q, &o, &o2), "%s: clip +inf differs from no clip", what);
      /* A missing initial_c is zeros; NULL lengths are all seq_length. */
      e = q, e.c0 = NULL;
      expect_status("initial_c NULL", run_all(&e, &o), MRNN_OK);
      e = q, e.c0 = zeros;
      expect_status("initial_c zeros", run_all(&e, &o2), MRNN_OK);
      CHECK(same_outputs(&q, &o, &o2), "%s: initial_c NULL differs from zeros", what);
      {
        int32_t full[CB] = {CT, CT, CT, CT};
        e = q, e.lens = NULL;
        expect_status("lengths NULL", run_all(&e, &o), MRNN_OK);
        e = q, e.lens = full;
        expect_status("lengths all T", run_all(&e, &o2), MRNN_OK);
        CHECK(same_outputs(&q, &o, &o2), "%s: NULL lengths differ from all seq_length", what);
      }
      /* NaN alpha / beta are the documented defaults; entries past num_activations are ignored. A
         bidirectional node takes 3 per direction (ONNX Runtime refuses 3 there, and so do we). */
      e = q, e.a.num_activations = dir == 2 ? 6 : 3;
      for (j = 0; j < 6; j += 3) {
        e.a.activations[j] = MRNN_ACT_HARD_SIGMOID, e.a.activations[j + 1] = MRNN_ACT_LEAKY_RELU;
        e.a.activations[j + 2] = MRNN_ACT_AFFINE;
      }
      if (dir != 2) e.a.activations[3] = -7, e.a.activations[4] = 99;
      expect_status("NaN parameters", run_all(&e, &o), MRNN_OK);
      for (j = 0; j < 6; j += 3) {
        e.a.activation_alpha[j] = 0.2f, e.a.activation_beta[j] = 0.5f, e.a.activation_alpha[j + 1] = 0.01f;
        e.a.activation_alpha[j + 2] = 0.0f, e.a.activation_beta[j + 2] = 0.0f, e.a.activation_beta[j + 1] = 123.0f;
      }
      expect_status("explicit defaults", run_all(&e, &o2), MRNN_OK);
      CHECK(same_outputs(&q, &o, &o2), "%s: NaN alpha/beta differ from the documented defaults", what);
      if (dir == 2) {
        e.a.num_activations = 3;
        expect_status("three activations on a bidirectional node", run_all(&e, &o), MRNN_ERR_BAD_ARGUMENT);
      }
      /* Every output NULL: validated, OK. */
      expect_status("every output NULL", run(&q, NULL, NULL, NULL), MRNN_OK);
      CHECK(canaries_intact(&q, &o) && canaries_intact(&q, &o2), "%s: canary overwritten", what);
      free_outputs(&o);
      free_outputs(&o2);
    }
  }
}

/* Threads 1, 2 and the default: bitwise identical, bidirectional with mixed lengths, both layouts. */
static void threads(void) {
  int32_t layout;
  for (layout = 0; layout <= 1; layout++) {
    Problem q = small(2, layout);
    Outputs o0 = outputs(&q), o1 = outputs(&q), o2 = outputs(&q);
    q.a.num_threads = 1;
    expect_status("1 thread", run_all(&q, &o1), MRNN_OK);
    q.a.num_threads = 2;
    expect_status("2 threads", run_all(&q, &o2), MRNN_OK);
    q.a.num_threads = 0;
    expect_status("default threads", run_all(&q, &o0), MRNN_OK);
    CHECK(memcmp(o1.y, o2.y, q.ny * sizeof(float)) == 0 && memcmp(o1.y, o0.y, q.ny * sizeof(float)) == 0,
          "layout %d: Y differs between 1, 2 and the default threads", (int)layout);
    CHECK(memcmp(o1.y_h, o2.y_h, q.ns * sizeof(float)) == 0 && memcmp(o1.y_h, o0.y_h, q.ns * sizeof(float)) == 0,
          "layout %d: Y_h differs between 1, 2 and the default threads", (int)layout);
    CHECK(memcmp(o1.y_c, o2.y_c, q.ns * sizeof(float)) == 0 && memcmp(o1.y_c, o0.y_c, q.ns * sizeof(float)) == 0,
          "layout %d: Y_c differs between 1, 2 and the default threads", (int)layout);
    CHECK(canaries_intact(&q, &o0) && canaries_intact(&q, &o1) && canaries_intact(&q, &o2),
          "layout %d: canary overwritten", (int)layout);
    free_outputs(&o0);
    free_outputs(&o1);
    free_outputs(&o2);
  }
}

/* Rows of sequence b from a tensor [outer][B][inner] (layout 0) or [B][outer][inner] (layout 1). */
static void pick(const float *v, size_t outer, size_t B, size_t inner, size_t b, int batch_major, float *out) {
  size_t o;
  for (o = 0; o < outer; o++) {
    const float *src = batch_major ? v + (b * outer + o) * inner : v + (o * B + b) * inner;
    memcpy(out + o * inner, src, inner * sizeof(float));
  }
}

/* A sequence alone (batch 1) gives bitwise its slice of the batch call, for every direction and layout. */
static void alone_equals_batch(void) {
  int32_t layout, dir;
  for (layout = 0; layout <= 1; layout++) {
    for (dir = 0; dir <= 2; dir++) {
      Problem q = small(dir, layout);
      Outputs full = outputs(&q);
      size_t b, D = q.d;
      expect_status("batch call", run_all(&q, &full), MRNN_OK);
      for (b = 0; b < CB; b++) {
        Problem s = q;
        float x1[CT * CI], h1[2 * CH], c1[2 * CH], ey[CT * 2 * CH], eh[2 * CH], ec[2 * CH];
        Outputs one;
        pick(cx, CT, CB, CI, b, layout, x1);
        pick(ch0, D, CB, CH, b, layout, h1);
        pick(cc0, D, CB, CH, b, layout, c1);
        pick(full.y, CT * D, CB, CH, b, layout, ey);
        pick(full.y_h, D, CB, CH, b, layout, eh);
        pick(full.y_c, D, CB, CH, b, layout, ec);
        s.a.batch_size = 1;
        s.x = x1, s.h0 = h1, s.c0 = c1, s.lens = &clens[b];
        sizes(&s);
        one = outputs(&s);
        expect_status("alone", run_all(&s, &one), MRNN_OK);
        CHECK(memcmp(one.y, ey, s.ny * sizeof(float)) == 0 && memcmp(one.y_h, eh, s.ns * sizeof(float)) == 0 &&
                  memcmp(one.y_c, ec, s.ns * sizeof(float)) == 0,
              "direction %d layout %d: sequence %lu alone differs from its slice of the batch", (int)dir,
              (int)layout, (unsigned long)b);
        CHECK(canaries_intact(&s, &one), "canary overwritten (alone)");
        free_outputs(&one);
      }
      free_outputs(&full);
    }
  }
}

/* ---------------------------------------------------------------- handles */

/* Runs mrnn_lstm_onnx and the handle on one problem of length T, batch B (random x, lengths in 0..=T,
   initial states as `init`: 0 none, 1 both, 2 initial_h only) and checks Y, Y_h, Y_c bitwise equal. */
static void handle_vs_one_shot(const char *what, MrnnOnnxLstm *layer, const Problem *base, long T, long B,
                               int32_t threads, int init) {
  Problem q = *base;
  Outputs e, o;
  float *x, *h0, *c0;
  int32_t *lens, s1, s2;
  long b;
  q.a.seq_length = T, q.a.batch_size = B, q.a.num_threads = threads;
  sizes(&q);
  x = rnd_buf(q.nx, 1.5f), h0 = rnd_buf(q.ns, 1.0f), c0 = rnd_buf(q.ns, 1.0f);
  lens = (int32_t *)xmalloc((size_t)B * sizeof(int32_t));
  for (b = 0; b < B; b++) lens[b] = (int32_t)((b * 3 + 1) % (T + 1));
  if (B > 0) lens[0] = (int32_t)T;
  q.x = x, q.lens = lens, q.h0 = init ? h0 : NULL, q.c0 = init == 1 ? c0 : NULL;
  e = outputs(&q), o = outputs(&q);
  s1 = run_all(&q, &e);
  s2 = mrnn_onnx_lstm_run(layer, &q.a, q.x, q.lens, q.h0, q.c0, o.y, o.y_h, o.y_c);
  CHECK(s1 == MRNN_OK && s2 == MRNN_OK && same_outputs(&q, &e, &o),
        "%s (T %ld B %ld, %d threads): the handle differs from mrnn_lstm_onnx (statuses %d, %d: %s)", what, T, B,
        (int)threads, (int)s1, (int)s2, last_error());
  CHECK(canaries_intact(&q, &o), "%s: canary overwritten (handle)", what);
  free_outputs(&e), free_outputs(&o);
  free(x), free(h0), free(c0), free(lens);
}

static void handles(void) {
  Problem q = small(2, 0), e;
  MrnnOnnxLstm *layer = NULL, *sentinel = (MrnnOnnxLstm *)&q, *out = sentinel;
  Outputs o = outputs(&q), before = outputs(&q);
  int32_t layout, dir, k;
  char what[128], needle[64];

  mrnn_onnx_lstm_free(NULL);
  CHECK(1, "free(NULL)");

  /* _new: NULL, values, overflow, pointers; *out untouched on failure. */
  expect_status("new: NULL attrs", mrnn_onnx_lstm_new(NULL, cw, cr, cbias, cp, &out), MRNN_ERR_NULL_POINTER);
  expect_status("new: NULL w", mrnn_onnx_lstm_new(&q.a, NULL, cr, cbias, cp, &out), MRNN_ERR_NULL_POINTER);
  expect_status("new: NULL r", mrnn_onnx_lstm_new(&q.a, cw, NULL, cbias, cp, &out), MRNN_ERR_NULL_POINTER);
  expect_status("new: NULL out", mrnn_onnx_lstm_new(&q.a, cw, cr, cbias, cp, NULL), MRNN_ERR_NULL_POINTER);
  e = q, e.a.direction = 3;
  expect_status("new: direction 3", mrnn_onnx_lstm_new(&e.a, cw, cr, cbias, cp, &out), MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.has_clip = 1, e.a.clip = 0.0f;
  expect_status("new: clip 0", mrnn_onnx_lstm_new(&e.a, cw, cr, cbias, cp, &out), MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.num_activations = 3;
  expect_status("new: 3 activations, bidirectional", mrnn_onnx_lstm_new(&e.a, cw, cr, cbias, cp, &out),
                MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.seq_length = -1;
  expect_status("new: seq_length -1 (unused, still checked)", mrnn_onnx_lstm_new(&e.a, cw, cr, cbias, cp, &out),
                MRNN_ERR_BAD_ARGUMENT);
  e = q, e.a.hidden_size = INT64_MAX / 8;
  expect_status("new: 4H overflows", mrnn_onnx_lstm_new(&e.a, cw, cr, cbias, cp, &out), MRNN_ERR_OVERFLOW);
  expect_status("new: misaligned r",
                mrnn_onnx_lstm_new(&q.a, cw, (const float *)((const char *)cr + 2), cbias, cp, &out),
                MRNN_ERR_BAD_ARGUMENT);
  CHECK(out == sentinel, "a failing mrnn_onnx_lstm_new wrote *out");
  e = q, e.a.seq_length = INT64_MAX, e.a.batch_size = INT64_MAX;
  expect_status("new: huge T and B (unused)", mrnn_onnx_lstm_new(&e.a, cw, cr, cbias, cp, &layer), MRNN_OK);
  if (!layer) return;

  /* _run: NULL, then every fixed field that differs is named; nothing written. */
  memcpy(before.y, o.y, (q.ny + CANARY) * sizeof(float));
  expect_status("run: NULL layer", mrnn_onnx_lstm_run(NULL, &q.a, cx, clens, NULL, NULL, o.y, NULL, NULL),
                MRNN_ERR_NULL_POINTER);
  CHECK(strstr(mrnn_last_error(), "layer") != NULL, "message names layer: %s", last_error());
  expect_status("run: NULL attrs", mrnn_onnx_lstm_run(layer, NULL, cx, clens, NULL, NULL, o.y, NULL, NULL),
                MRNN_ERR_NULL_POINTER);
  expect_status("run: NULL x", mrnn_onnx_lstm_run(layer, &q.a, NULL, clens, NULL, NULL, o.y, NULL, NULL),
                MRNN_ERR_NULL_POINTER);
  {
    static const char *fields[] = {"input_size",   "hidden_size",     "direction",           "layout",
                                   "input_forget", "has_clip",        "num_activations",     "activations[4]",
                                   "clip",         "activation_alpha[3]", "activation_beta[3]"};
    for (k = 0; k < 11; k++) {
      MrnnOnnxLstm *h6 = NULL;
      Problem base = q;
      if (k >= 7) { /* handles with clip and explicit activations */
        base.a.has_clip = 1, base.a.clip = 3.0f, base.a.num_activations = 6;
        base.a.activations[3] = MRNN_ACT_HARD_SIGMOID, base.a.activations[4] = MRNN_ACT_AFFINE;
        base.a.activation_alpha[3] = 0.25f;
      }
      CHECK(mrnn_onnx_lstm_new(&base.a, cw, cr, cbias, cp, &h6) == MRNN_OK, "new: %s", last_error());
      e = base;
      if (k == 0) e.a.input_size = CI + 1;
      if (k == 1) e.a.hidden_size = CH - 1;
      if (k == 2) e.a.direction = 1;
      if (k == 3) e.a.layout = 1;
      if (k == 4) e.a.input_forget = 1;
      if (k == 5) e.a.has_clip = 1, e.a.clip = 1.0f;
      if (k == 6) e.a.num_activations = 6;
      if (k == 7) e.a.activations[4] = MRNN_ACT_RELU;
      if (k == 8) e.a.clip = 2.0f;
      if (k == 9) e.a.activation_alpha[3] = 0.2f;
      if (k == 10) e.a.activation_beta[3] = 0.25f;
      sprintf(what, "run: %s differs from the handle's", fields[k]);
      sprintf(needle, "attrs.%s ", fields[k]);
      expect_status(what, mrnn_onnx_lstm_run(h6, &e.a, cx, clens, NULL, NULL, o.y, o.y_h, o.y_c),
                    MRNN_ERR_BAD_ARGUMENT);
      CHECK(strstr(mrnn_last_error(), needle) != NULL, "%s: message %s", what, last_error());
      /* What does not matter is not compared: Sigmoid and Tanh take no alpha / beta, clip without has_clip. */
      e = base, e.a.activation_alpha[0] = 9.0f, e.a.activation_beta[1] = 9.0f;
      if (k < 7) e.a.clip = 42.0f;
      expect_status("run: unused parameters differ", mrnn_onnx_lstm_run(h6, &e.a, cx, clens, NULL, NULL, o.y, o.y_h,
                    o.y_c), MRNN_OK);
      mrnn_onnx_lstm_free(h6);
    }
  }
  {
    int32_t past[CB] = {CT, 0, CT + 1, 1};
    memcpy(before.y, o.y, (q.ny + CANARY) * sizeof(float));
    expect_status("run: a length past seq_length", mrnn_onnx_lstm_run(layer, &q.a, cx, past, NULL, NULL, o.y, NULL,
                  NULL), MRNN_ERR_BAD_ARGUMENT);
    CHECK(strstr(mrnn_last_error(), "sequence_lens[2] = 6") != NULL, "message: %s", last_error());
    e = q, e.a.seq_length = INT64_MAX / 2, e.a.batch_size = 4;
    expect_status("run: X overflows", mrnn_onnx_lstm_run(layer, &e.a, cx, clens, NULL, NULL, o.y, NULL, NULL),
                  MRNN_ERR_OVERFLOW);
    expect_status("run: Y_h overlaps Y_c", mrnn_onnx_lstm_run(layer, &q.a, cx, clens, NULL, NULL, NULL, o.y, o.y + 1),
                  MRNN_ERR_BAD_ARGUMENT);
    CHECK(memcmp(before.y, o.y, (q.ny + CANARY) * sizeof(float)) == 0, "a failing run wrote Y");
    expect_status("run: every output NULL", mrnn_onnx_lstm_run(layer, &q.a, cx, clens, NULL, NULL, NULL, NULL, NULL),
                  MRNN_OK);
  }
  mrnn_onnx_lstm_free(layer);

  /* One handle per direction and layout, many shapes: every run equals mrnn_lstm_onnx bitwise. */
  for (layout = 0; layout <= 1; layout++) {
    for (dir = 0; dir <= 2; dir++) {
      static const long shapes[][2] = {{5, 4}, {2, 1}, {9, 7}, {0, 3}, {3, 0}, {5, 4}, {1, 1}, {9, 7}};
      size_t j;
      Problem base = small(dir, layout);
      if (dir == 1) base.a.input_forget = 1, base.a.has_clip = 1, base.a.clip = 0.75f;
      layer = NULL;
      expect_status("new", mrnn_onnx_lstm_new(&base.a, base.w, base.r, base.b, dir == 0 ? NULL : base.p, &layer),
                    MRNN_OK);
      if (dir == 0) base.p = NULL;
      sprintf(what, "handle reuse, direction %d layout %d", (int)dir, (int)layout);
      for (j = 0; j < sizeof shapes / sizeof shapes[0] && layer; j++)
        handle_vs_one_shot(what, layer, &base, shapes[j][0], shapes[j][1], (int32_t)(j % 3), (int)(j % 3));
      mrnn_onnx_lstm_free(layer);
    }
  }

  /* The handle's results equal a one-shot call through run_handle too (new, run, free in one). */
  expect_status("run_handle", run_handle(&q, o.y, o.y_h, o.y_c), MRNN_OK);
  expect_status("one-shot", run_all(&q, &before), MRNN_OK);
  CHECK(same_outputs(&q, &o, &before), "run_handle differs from mrnn_lstm_onnx");
  free_outputs(&o);
  free_outputs(&before);
}

static void contract_tests(void) {
  size_t k;
  for (k = 0; k < sizeof cx / sizeof cx[0]; k++) cx[k] = rnd(1.5f);
  for (k = 0; k < sizeof cw / sizeof cw[0]; k++) cw[k] = rnd(0.6f);
  for (k = 0; k < sizeof cr / sizeof cr[0]; k++) cr[k] = rnd(0.6f);
  for (k = 0; k < sizeof cbias / sizeof cbias[0]; k++) cbias[k] = rnd(0.5f);
  for (k = 0; k < sizeof cp / sizeof cp[0]; k++) cp[k] = rnd(0.5f);
  for (k = 0; k < sizeof ch0 / sizeof ch0[0]; k++) {
    ch0[k] = rnd(0.8f);
    cc0[k] = rnd(1.0f);
    zeros[k] = 0.0f;
  }
  layout_and_defaults();
  null_pointers();
  bad_values();
  overflows();
  pointers();
  semantics();
  threads();
  alone_equals_batch();
  handles();
}

int main(int argc, char **argv) {
  int n_onnx, n_stack;
  if (argc < 2) {
    printf("usage: %s CASES_FILE\n", argv[0]);
    return 2;
  }
  run_cases(argv[1], &n_onnx, &n_stack);
  printf("onnx fixtures: %d, stacks: %d, worst fixture relative error %.3g\n", n_onnx, n_stack,
         worst_fixture_error);
  CHECK(n_onnx > 0 && n_stack > 0, "no fixtures or stacks");
  contract_tests();
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
