/*
 * C test of the embedding surface of the masked-rnn C ABI, built and run by tests/suite/capi.rs (also under
 * valgrind):
 *
 *   embed_test [IGNORED [quick]]
 *
 * tests/suite/capi.rs gives every C test a cases file; this one reads none. "quick" (under valgrind): fewer
 * threads and runs.
 *
 * - The status codes: the MrnnStatus enum has the contract's values, and mrnn_status_string names each
 *   code (a static string, never NULL, "unknown status" for other values) without touching the last
 *   error.
 *
 * - const handles and threads: one handle of every kind (ONNX and Keras LSTM, GRU, RNN), used only through
 *   `const` pointers (the header must declare _run, _run_train and _run_backward with const handles, or
 *   this file does not compile with -Werror), is run from 12 pthreads at once (forward runs, and training
 *   runs with their backward, on 1 and 2 threads each); every result must equal bitwise that of the same
 *   run made alone on this thread before.
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

/* ---------------------------------------------------------------- const handles, from several threads */

enum { ONNX_LSTM, ONNX_GRU, ONNX_RNN, KERAS_LSTM, KERAS_GRU, KERAS_RNN, KINDS };
static const char *const NAMES[KINDS] = {"ONNX LSTM", "ONNX GRU", "ONNX RNN", "Keras LSTM", "Keras GRU",
                                         "Keras SimpleRNN"};
static const size_t GATES[KINDS] = {4, 3, 1, 4, 3, 1};

/* A padded batch: ONNX reads x as [T,B,I] with sequence_lens, Keras as [B,T,I] with the mask of the same
   lengths (and a hole). */
#define T 7
#define B 6
#define I 5
#define H 9
static const int32_t LENS[B] = {7, 0, 3, 7, 1, 5};
static uint8_t mask[B * T];
static float *x, *dy, *w, *r, *bias;

/* The handles, created (non-const) and freed by handles_new / handles_free; every run goes through the
   const pointers below. */
static MrnnOnnxLstm *onnx_lstm;
static MrnnOnnxGru *onnx_gru;
static MrnnOnnxRnn *onnx_rnn;
static MrnnKerasLstm *keras_lstm;
static MrnnKerasGru *keras_gru;
static MrnnKerasRnn *keras_rnn;
static MrnnOnnxLstmAttrs ol;
static MrnnOnnxGruAttrs og;
static MrnnOnnxRnnAttrs orn;
static MrnnKerasLstmAttrs kl;
static MrnnKerasGruAttrs kg;
static MrnnKerasRnnAttrs kr;

/* What one computation writes: y, the last state (Y_h / h_n), dx and the recurrent weights' gradient. */
static size_t out_sizes[KINDS][4];

static void handles_new(void) {
  int32_t st = MRNN_OK;
  int b, t;
  for (b = 0; b < B; b++)
    for (t = 0; t < T; t++) mask[b * T + t] = t < LENS[b] && !(b == 5 && t == 2);
  x = rnd_buf(T * B * I, 1.5f), dy = rnd_buf(T * B * H, 1.0f);
  w = rnd_buf(4 * H * I, 0.6f), r = rnd_buf(4 * H * H, 0.6f), bias = rnd_buf(8 * H, 0.4f);
  mrnn_onnx_lstm_attrs_init(&ol), mrnn_onnx_gru_attrs_init(&og), mrnn_onnx_rnn_attrs_init(&orn);
  mrnn_keras_lstm_attrs_init(&kl), mrnn_keras_gru_attrs_init(&kg), mrnn_keras_rnn_attrs_init(&kr);
  ol.seq_length = og.seq_length = orn.seq_length = kl.seq_length = kg.seq_length = kr.seq_length = T;
  ol.batch_size = og.batch_size = orn.batch_size = kl.batch_size = kg.batch_size = kr.batch_size = B;
  ol.input_size = og.input_size = orn.input_size = kl.input_size = kg.input_size = kr.input_size = I;
  ol.hidden_size = og.hidden_size = orn.hidden_size = kl.hidden_size = kg.hidden_size = kr.hidden_size = H;
  st |= mrnn_onnx_lstm_new(&ol, w, r, bias, NULL, &onnx_lstm);
  st |= mrnn_onnx_gru_new(&og, w, r, bias, &onnx_gru);
  st |= mrnn_onnx_rnn_new(&orn, w, r, bias, &onnx_rnn);
  st |= mrnn_keras_lstm_new(&kl, w, r, bias, &keras_lstm);
  st |= mrnn_keras_gru_new(&kg, w, r, bias, &keras_gru);
  st |= mrnn_keras_rnn_new(&kr, w, r, bias, &keras_rnn);
  CHECK(st == MRNN_OK, "creating the handles: %s", last_error());
  for (b = 0; b < KINDS; b++) {
    out_sizes[b][0] = T * B * H, out_sizes[b][1] = B * H, out_sizes[b][2] = T * B * I;
    out_sizes[b][3] = GATES[b] * H * H;
  }
}

static void handles_free(void) {
  mrnn_onnx_lstm_free(onnx_lstm), mrnn_onnx_gru_free(onnx_gru), mrnn_onnx_rnn_free(onnx_rnn);
  mrnn_keras_lstm_free(keras_lstm), mrnn_keras_gru_free(keras_gru), mrnn_keras_rnn_free(keras_rnn);
  free(x), free(dy), free(w), free(r), free(bias);
}

/* A forward run of a handle of `kind` on `threads` threads into o->g[0] (y) and o->g[1] (the last state). */
static int32_t forward(int kind, int32_t threads, const Grads *o) {
  float *y = o->g[0], *state = o->g[1];
  switch (kind) {
    case ONNX_LSTM: {
      const MrnnOnnxLstm *h = onnx_lstm;
      MrnnOnnxLstmAttrs a = ol;
      a.num_threads = threads;
      return mrnn_onnx_lstm_run(h, &a, x, LENS, NULL, NULL, y, state, NULL);
    }
    case ONNX_GRU: {
      const MrnnOnnxGru *h = onnx_gru;
      MrnnOnnxGruAttrs a = og;
      a.num_threads = threads;
      return mrnn_onnx_gru_run(h, &a, x, LENS, NULL, y, state);
    }
    case ONNX_RNN: {
      const MrnnOnnxRnn *h = onnx_rnn;
      MrnnOnnxRnnAttrs a = orn;
      a.num_threads = threads;
      return mrnn_onnx_rnn_run(h, &a, x, LENS, NULL, y, state);
    }
    case KERAS_LSTM: {
      const MrnnKerasLstm *h = keras_lstm;
      MrnnKerasLstmAttrs a = kl;
      a.num_threads = threads;
      return mrnn_keras_lstm_run(h, &a, x, mask, NULL, NULL, y, NULL, state, NULL);
    }
    case KERAS_GRU: {
      const MrnnKerasGru *h = keras_gru;
      MrnnKerasGruAttrs a = kg;
      a.num_threads = threads;
      return mrnn_keras_gru_run(h, &a, x, mask, NULL, y, NULL, state);
    }
    default: {
      const MrnnKerasRnn *h = keras_rnn;
      MrnnKerasRnnAttrs a = kr;
      a.num_threads = threads;
      return mrnn_keras_rnn_run(h, &a, x, mask, NULL, y, NULL, state);
    }
  }
}

/* A training run of a handle of `kind` on `threads` threads (its outputs dropped) and the backward of its
   tape for dy, into o->g[2] (dx) and o->g[3] (the recurrent weights' gradient). */
static int32_t train(int kind, int32_t threads, const Grads *o) {
  float *dx = o->g[2], *dr = o->g[3];
  const MrnnTape *tape;
  MrnnTape *made = NULL;
  uint64_t bytes = 0;
  int32_t st;
  switch (kind) {
    case ONNX_LSTM: {
      const MrnnOnnxLstm *h = onnx_lstm;
      MrnnOnnxLstmAttrs a = ol;
      a.num_threads = threads;
      st = mrnn_onnx_lstm_run_train(h, &a, x, LENS, NULL, NULL, NULL, NULL, NULL, &made);
      tape = made;
      if (st == MRNN_OK)
        st = mrnn_onnx_lstm_run_backward(h, tape, dy, NULL, NULL, dx, NULL, dr, NULL, NULL, NULL, NULL);
      break;
    }
    case ONNX_GRU: {
      const MrnnOnnxGru *h = onnx_gru;
      MrnnOnnxGruAttrs a = og;
      a.num_threads = threads;
      st = mrnn_onnx_gru_run_train(h, &a, x, LENS, NULL, NULL, NULL, &made);
      tape = made;
      if (st == MRNN_OK) st = mrnn_onnx_gru_run_backward(h, tape, dy, NULL, dx, NULL, dr, NULL, NULL);
      break;
    }
    case ONNX_RNN: {
      const MrnnOnnxRnn *h = onnx_rnn;
      MrnnOnnxRnnAttrs a = orn;
      a.num_threads = threads;
      st = mrnn_onnx_rnn_run_train(h, &a, x, LENS, NULL, NULL, NULL, &made);
      tape = made;
      if (st == MRNN_OK) st = mrnn_onnx_rnn_run_backward(h, tape, dy, NULL, dx, NULL, dr, NULL, NULL);
      break;
    }
    case KERAS_LSTM: {
      const MrnnKerasLstm *h = keras_lstm;
      MrnnKerasLstmAttrs a = kl;
      a.num_threads = threads;
      st = mrnn_keras_lstm_run_train(h, &a, x, mask, NULL, NULL, NULL, NULL, NULL, NULL, &made);
      tape = made;
      if (st == MRNN_OK)
        st = mrnn_keras_lstm_run_backward(h, tape, dy, NULL, NULL, NULL, dx, NULL, dr, NULL, NULL, NULL);
      break;
    }
    case KERAS_GRU: {
      const MrnnKerasGru *h = keras_gru;
      MrnnKerasGruAttrs a = kg;
      a.num_threads = threads;
      st = mrnn_keras_gru_run_train(h, &a, x, mask, NULL, NULL, NULL, NULL, &made);
      tape = made;
      if (st == MRNN_OK) st = mrnn_keras_gru_run_backward(h, tape, dy, NULL, NULL, dx, NULL, dr, NULL, NULL);
      break;
    }
    default: {
      const MrnnKerasRnn *h = keras_rnn;
      MrnnKerasRnnAttrs a = kr;
      a.num_threads = threads;
      st = mrnn_keras_rnn_run_train(h, &a, x, mask, NULL, NULL, NULL, NULL, &made);
      tape = made;
      if (st == MRNN_OK) st = mrnn_keras_rnn_run_backward(h, tape, dy, NULL, NULL, dx, NULL, dr, NULL, NULL);
      break;
    }
  }
  if (st == MRNN_OK) st = mrnn_tape_bytes(tape, &bytes);
  if (st == MRNN_OK && bytes == 0) st = -1;
  mrnn_tape_free(made);
  return st;
}

/* Both computations of `kind` on `threads` threads into a fresh set of outputs. */
static int32_t compute(int kind, int32_t threads, Grads *o) {
  int32_t st;
  *o = new_grads(4, out_sizes[kind]);
  st = forward(kind, threads, o);
  return st == MRNN_OK ? train(kind, threads, o) : st;
}

/* Computed alone, on this thread, before the threads start. */
static Grads expected[KINDS];

/* Runs per worker: 6, or 2 with "quick". */
static int runs_per_worker = 6;

typedef struct {
  Tally tally;
  int kind;
} Worker;

static void *worker_main(void *arg) {
  Worker *wk = (Worker *)arg;
  int k;
  for (k = 0; k < runs_per_worker; k++) {
    Grads o;
    if (compute(wk->kind, 1 + k % 2, &o) != MRNN_OK)
      wk->tally.failures++;
    else if (!same_grads(&o, &expected[wk->kind]))
      wk->tally.mismatches++;
    free_grads(&o);
  }
  return NULL;
}

/* n_workers threads (at most 2 * KINDS), worker k running the handle of kind k % KINDS. */
static void concurrent_runs(int n_workers) {
  Worker workers[2 * KINDS];
  int k;
  handles_new();
  for (k = 0; k < KINDS; k++) {
    Grads again;
    int32_t st = compute(k, 1, &expected[k]);
    CHECK(st == MRNN_OK, "%s: status %d: %s", NAMES[k], (int)st, last_error());
    /* The reference itself: a run on 2 threads agrees, and ONNX's y is +0.0 at the padded steps. */
    st = compute(k, 2, &again);
    CHECK(st == MRNN_OK && same_grads(&again, &expected[k]), "%s: 2 threads differ from 1", NAMES[k]);
    free_grads(&again);
    if (k <= ONNX_RNN) {
      int t, b, j, nonzero = 0;
      for (t = 0; t < T; t++)
        for (b = 0; b < B; b++)
          for (j = 0; j < H && t >= LENS[b]; j++) {
            uint32_t u;
            memcpy(&u, &expected[k].g[0][(t * B + b) * H + j], sizeof u);
            nonzero += u != 0;
          }
      CHECK(nonzero == 0, "%s: %d padded values of y are not +0.0", NAMES[k], nonzero);
    }
  }
  for (k = 0; k < n_workers; k++) workers[k].kind = k % KINDS;
  run_workers(n_workers, worker_main, workers, sizeof workers[0]);
  for (k = 0; k < KINDS; k++) free_grads(&expected[k]);
  handles_free();
}

int main(int argc, char **argv) {
  int quick = argc > 2 && strcmp(argv[2], "quick") == 0;
  runs_per_worker = quick ? 2 : 6;
  status_codes();
  concurrent_runs(quick ? KINDS : 2 * KINDS);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
