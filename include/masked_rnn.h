/*
 * masked_rnn.h - C ABI of masked-rnn: SIMD CPU LSTM, GRU and RNN kernels that never compute a padded step.
 *
 * Hand-written and committed; the contract is C_ABI.md. Link against libmasked_rnn.a (with
 * -lpthread -ldl -lm) or libmasked_rnn.so.
 *
 * Conventions
 * - Every function except mrnn_last_error, mrnn_version, mrnn_status_string and the _free functions
 *   returns an int32_t status (MRNN_OK or MRNN_ERR_*, the values of enum MrnnStatus). A failure sets a
 *   thread-local message, read with mrnn_last_error(); mrnn_status_string() names the code.
 * - Arguments are validated in this order, before any caller memory is read or written:
 *     1. a required pointer is NULL                                   -> MRNN_ERR_NULL_POINTER
 *     2. a negative size, hidden_size 0, a flag other than 0/1, an
 *        unknown enum or activation code, num_threads < 0             -> MRNN_ERR_BAD_ARGUMENT
 *     3. a tensor's element count overflows size_t, or its bytes
 *        exceed PTRDIFF_MAX (computed as 4 bytes per element)         -> MRNN_ERR_OVERFLOW
 *     4. a float pointer not aligned to 4 bytes, a buffer that wraps
 *        around the address space, an output overlapping another
 *        buffer (non-empty ranges only)                               -> MRNN_ERR_BAD_ARGUMENT
 *   So a call that fails validation writes no output. Outputs are unspecified after any other failure.
 * - Required inputs must be non-NULL even when their tensor has zero elements. A non-NULL pointer to
 *   a zero-element tensor is fine and never dereferenced.
 * - All tensors are dense, row-major float (f32), caller-allocated. Optional inputs and outputs may be
 *   NULL. Inputs may share memory with each other; outputs may not overlap anything. No caller pointer
 *   is retained after a call returns (a handle keeps its own packed copy of the weights, a training tape
 *   its own copies of the run's inputs). All functions are thread-safe; a handle may be run from several
 *   threads at once (see "Handles", which says what may overlap on one handle).
 * - Scratch memory: the one-shot functions (mrnn_lstm_*, mrnn_gru_*, mrnn_rnn_* and the backwards) keep
 *   theirs in a per-thread cache reused by the next call on that thread (freed when the thread exits),
 *   and with it the memory of their last call's packed weights, which the next call packs into (no fresh
 *   pages to fault in: repeated calls convert their weights at memory speed); a handle keeps its own
 *   until it is freed. (The backward passes also allocate their gradient scratch per call.)
 * - num_threads: 0 = the library's default (all cores); 1 = the calling thread; n = n threads.
 *   Results are bitwise identical for every num_threads and whatever else shares the batch.
 */
#ifndef MASKED_RNN_H
#define MASKED_RNN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes: what every function but mrnn_last_error, mrnn_version, mrnn_status_string and the _free
   functions returns. The functions return them as int32_t (the C_ABI.md contract); the enum names the
   values, which will never change. mrnn_status_string(status) gives a code's name and meaning. */
typedef enum MrnnStatus {
  MRNN_OK = 0,               /* success */
  MRNN_ERR_NULL_POINTER = 1, /* a required pointer is NULL */
  MRNN_ERR_BAD_SHAPE = 2,    /* buffer lengths or dimensions disagree */
  MRNN_ERR_BAD_ARGUMENT = 3, /* a value out of range: negative size, unknown enum, flag not 0/1,
                                misaligned or overlapping buffer */
  MRNN_ERR_OVERFLOW = 4,     /* sizes whose product overflows */
  MRNN_ERR_INTERNAL = 5      /* a caught panic: a bug in the library; never aborts or unwinds */
} MrnnStatus;

/* Activation codes (ONNX numbering). Defaults: what a NaN alpha / beta means in mrnn_lstm_onnx (ONNX
   Runtime's LSTM defaults); mrnn_lstm_keras uses the parameters marked "Keras". */
#define MRNN_ACT_SIGMOID 0          /* 1 / (1 + exp(-x)) */
#define MRNN_ACT_TANH 1             /* tanh(x) */
#define MRNN_ACT_RELU 2             /* max(0, x) */
#define MRNN_ACT_AFFINE 3           /* alpha * x + beta (default alpha 0, beta 0, as ONNX Runtime;
                                       Keras: 1, 0, i.e. `linear`) */
#define MRNN_ACT_LEAKY_RELU 4       /* x >= 0 ? x : alpha * x (default alpha 0.01; Keras: 0.01) */
#define MRNN_ACT_THRESHOLDED_RELU 5 /* x > alpha ? x : 0 (default alpha 0, as ONNX Runtime's LSTM; the
                                       standalone ONNX operator's is 1; Keras: 1) */
#define MRNN_ACT_SCALED_TANH 6      /* alpha * tanh(beta * x) (default 0, 0, as ONNX Runtime; Keras: 1, 1) */
#define MRNN_ACT_HARD_SIGMOID 7     /* max(0, min(1, alpha * x + beta)); default (Keras 2 / ONNX) 0.2, 0.5;
                                       Keras 3: 1/6, 0.5 */
#define MRNN_ACT_ELU 8              /* x >= 0 ? x : alpha * (exp(x) - 1) (default alpha 1; Keras: 1) */
#define MRNN_ACT_SOFTSIGN 9         /* x / (1 + |x|) */
#define MRNN_ACT_SOFTPLUS 10        /* log(1 + exp(x)) */

/* Attributes of mrnn_lstm_onnx (C_ABI.md section 1). Fill with mrnn_onnx_lstm_attrs_init, then set the
   sizes and whatever differs from the defaults. D = 2 for bidirectional, else 1. */
typedef struct {
  int64_t seq_length, batch_size, input_size, hidden_size; /* T, B, I >= 0; H >= 1 */
  int32_t direction;        /* 0 forward, 1 reverse, 2 bidirectional */
  int32_t layout;           /* 0: X [T,B,I], Y [T,D,B,H], Y_h/Y_c [D,B,H]; 1: X [B,T,I], Y [B,T,D,H], Y_h/Y_c [B,D,H] */
  int32_t input_forget;     /* 0 or 1: f = 1 - i */
  int32_t has_clip;         /* 0: no clip (clip ignored); 1: clip applies */
  float   clip;             /* with has_clip = 1: > 0 (NaN or <= 0 is MRNN_ERR_BAD_ARGUMENT); gate
                               pre-activations are clamped to [-clip, clip]; +INFINITY = no clipping */
  int32_t num_activations;  /* 0: defaults (Sigmoid, Tanh, Tanh per direction); else 3 per direction, as
                               ONNX Runtime requires: 3 (forward or reverse) or 6 (bidirectional: forward
                               f, g, h, then reverse f, g, h); any other count is MRNN_ERR_BAD_ARGUMENT */
  int32_t activations[6];   /* MRNN_ACT_* per direction: f, g, h. Entries past num_activations are ignored */
  float   activation_alpha[6];  /* NaN: the operator's default for that activation (see MRNN_ACT_*:
                                   ONNX Runtime's, e.g. 0 for Affine); ignored by activations without alpha */
  float   activation_beta[6];   /* NaN: the default; ignored by activations that take no beta */
  int32_t num_threads;      /* >= 0, see Conventions */
} MrnnOnnxLstmAttrs;

/* Attributes of mrnn_lstm_keras. Fill with mrnn_keras_lstm_attrs_init, then set the sizes. */
typedef struct {
  int64_t batch_size, seq_length, input_size, hidden_size; /* B, T, I >= 0; H >= 1 */
  int32_t go_backwards;          /* 0 or 1. Keras semantics: whole axis reversed, outputs in processing order */
  int32_t zero_output_for_mask;  /* 0 or 1. 0: masked steps repeat the previous output (Keras default); 1: zeros */
  int32_t activation;            /* MRNN_ACT_*, Keras `activation` (with the code's "Keras" parameters), default Tanh */
  int32_t recurrent_activation;  /* MRNN_ACT_*, Keras `recurrent_activation`, default Sigmoid */
  float   recurrent_alpha, recurrent_beta;  /* used only when recurrent_activation is MRNN_ACT_HARD_SIGMOID;
                                               NaN = the default 0.2 / 0.5 (Keras 2); Keras 3 is 1/6, 0.5.
                                               Beware: 0 is not "default", it is a constant gate. */
  int32_t num_threads;           /* >= 0, see Conventions */
} MrnnKerasLstmAttrs;

/* The crate version, e.g. "0.1.0": a static NUL-terminated string. */
const char *mrnn_version(void);

/* The name and a short meaning of a status code: a static NUL-terminated string such as
   "MRNN_ERR_NULL_POINTER: a required pointer is NULL" (it starts with the code's name, then ": "). Any
   other value gives "unknown status: not an MRNN_* status code". Never NULL; neither sets nor clears the
   last error (so it may format a failure before mrnn_last_error is read). Thread-safe. */
const char *mrnn_status_string(int32_t status);

/* The message of the last failing call on this thread: NUL-terminated, "" if no call has failed on
   this thread. Successful calls do not clear it. Valid until the next failing call on this thread
   (or the thread's exit); copy it to keep it. Never NULL. */
const char *mrnn_last_error(void);

/* Fills *attrs with the defaults: sizes 0, go_backwards 0, zero_output_for_mask 0, activation Tanh,
   recurrent_activation Sigmoid, recurrent_alpha/beta NaN, num_threads 0.
   Returns MRNN_OK, or MRNN_ERR_NULL_POINTER if attrs is NULL. */
int32_t mrnn_keras_lstm_attrs_init(MrnnKerasLstmAttrs *attrs);

/* Fills *attrs with the defaults: sizes 0, direction 0 (forward), layout 0, input_forget 0, has_clip 0
   (clip NaN), num_activations 0 (activations holds Sigmoid, Tanh, Tanh twice), activation_alpha/beta NaN,
   num_threads 0. Returns MRNN_OK, or MRNN_ERR_NULL_POINTER if attrs is NULL. */
int32_t mrnn_onnx_lstm_attrs_init(MrnnOnnxLstmAttrs *attrs);

/* The ONNX LSTM operator (opset 22; ONNX Runtime's answers where the spec is silent), gate order i, o, f,
   c. Padded steps are never computed. Y at steps past a sequence's length is +0.0; Y_h / Y_c hold the
   state after the last valid step (reverse: after x_0); a length-0 sequence gives zeros in Y_h / Y_c.
   If exactly one of initial_h / initial_c is NULL, the missing one is zeros. With every output NULL the
   call validates its arguments (sequence_lens included) and computes nothing.
   After the checks of Conventions, each sequence_lens value outside 0..=seq_length is
   MRNN_ERR_BAD_ARGUMENT (the message names its index and value); no output is written then either.
   Returns MRNN_OK or a status; see Conventions.

   Stacking layers: Y of one call can be X of the next, with no copy. In layout 0, Y of a forward or
   reverse layer is [T,1,B,H], the same memory as X [T,B,H] of a layer with input_size H. In layout 1,
   Y of any layer is [B,T,D,H], the same memory as X [B,T,D*H]; a bidirectional layout-0 Y ([T,2,B,H])
   is not [T,B,2H] and must be transposed first. Pass the same sequence_lens to every layer: Y is +0.0
   past each length and those steps are never read.

     MrnnOnnxLstmAttrs l1, l2;
     mrnn_onnx_lstm_attrs_init(&l1);
     l1.seq_length = T; l1.batch_size = B; l1.input_size = I; l1.hidden_size = H1;
     l2 = l1;
     l2.input_size = H1; l2.hidden_size = H2;
     // y1: T*B*H1 floats, y2: T*B*H2 floats, h2 / c2: B*H2 floats
     status = mrnn_lstm_onnx(&l1, x, w1, r1, b1, lens, NULL, NULL, NULL, y1, NULL, NULL);
     if (status == MRNN_OK)
       status = mrnn_lstm_onnx(&l2, y1, w2, r2, b2, lens, NULL, NULL, NULL, y2, h2, c2);
*/
int32_t mrnn_lstm_onnx(const MrnnOnnxLstmAttrs *attrs, /* required */
    const float *x,               /* [T,B,I] (layout 0) / [B,T,I] (layout 1), required */
    const float *w,               /* [D,4H,I], required */
    const float *r,               /* [D,4H,H], required */
    const float *b,               /* [D,8H] (Wb then Rb) or NULL (zeros) */
    const int32_t *sequence_lens, /* [B] or NULL = all seq_length; each in 0..=seq_length */
    const float *initial_h,       /* [D,B,H] (layout 0) / [B,D,H] (layout 1) or NULL (zeros) */
    const float *initial_c,       /* same, or NULL (zeros) */
    const float *p,               /* [D,3H] peepholes (i, o, f) or NULL (none) */
    float *y,                     /* [T,D,B,H] (layout 0) / [B,T,D,H] (layout 1) or NULL */
    float *y_h, float *y_c);      /* [D,B,H] (layout 0) / [B,D,H] (layout 1) or NULL */

/* Keras-style masked LSTM (tf.keras / Keras 3 `LSTM` with a mask). Padded steps are never computed.
   If exactly one of initial_h / initial_c is NULL, the missing one is zeros; both NULL: zero state.
   Returns MRNN_OK or a status; see Conventions. */
int32_t mrnn_lstm_keras(const MrnnKerasLstmAttrs *attrs, /* required */
    const float *x,                /* [B,T,I], required */
    const uint8_t *mask,           /* [B,T], nonzero = valid; NULL = all valid; holes allowed */
    const float *kernel,           /* [I,4H] gates i,f,c,o, required */
    const float *recurrent_kernel, /* [H,4H], required */
    const float *bias,             /* [4H] or NULL (zeros) */
    const float *initial_h, const float *initial_c,   /* [B,H] or NULL */
    float *y,                      /* [B,T,H] (return_sequences) or NULL */
    float *last_output,            /* [B,H]: outputs[:, -1] as Keras returns it, or NULL */
    float *h_n, float *c_n);       /* [B,H] last valid state, or NULL */

/* Keras Masking: mask[b,t] = 0 iff every feature of x[b,t,:] equals mask_value, else 1.
   nan_aware = 1: a NaN mask_value matches NaN features; 0: plain IEEE comparison (Keras: a NaN
   mask_value masks nothing). features = 0 masks every step (as Keras).
   x [B,T,F] and mask_out [B,T] are required. Returns MRNN_OK or a status; see Conventions. */
int32_t mrnn_mask_from_value(const float *x, int64_t batch_size, int64_t seq_length, int64_t features,
    float mask_value, int32_t nan_aware, uint8_t *mask_out);

/* ---------------------------------------------------------------- Handles: create once, run many

   mrnn_lstm_keras / mrnn_lstm_onnx convert and pack the weights on every call (for a 512-unit layer that
   takes longer than the LSTM itself). A handle packs them once: _new validates the attributes and copies
   the weights into the handle (the caller's buffers may be freed right after), _run computes with them,
   _free releases everything. A run gives bitwise the outputs of the one-shot function with the same
   attributes and weights.

   - At creation, attrs fixes everything but the per-run fields (Keras: batch_size, seq_length,
     num_threads; ONNX: seq_length, batch_size, num_threads), which are ignored then but must still be
     >= 0. Each _run takes the per-run fields from its attrs; all other fields must equal the handle's,
     else MRNN_ERR_BAD_ARGUMENT with a message naming the field ("attrs.hidden_size = 5 differs from the
     handle's 4 ..."). Fields that do not matter are not compared: recurrent_alpha / recurrent_beta unless
     recurrent_activation is MRNN_ACT_HARD_SIGMOID, clip when has_clip is 0, entries past num_activations,
     a parameter the activation does not take. A NaN parameter compares as the default it stands for.
   - Validation is that of the one-shot functions (see Conventions), NULL first: a NULL handle, attrs,
     required weight, x or out is MRNN_ERR_NULL_POINTER; the attribute mismatch is a step-2 value error;
     out must be aligned for a pointer and overlap no weight. A failing _new leaves *out unchanged.
   - const: the functions that only read a handle take a const pointer (_run, _run_train, _run_backward of
     every kind); _set_weights and _free take a non-const one.
   - Threads: every function may be called from any thread. On one handle, from several threads at once:
       * _run, _run_train and _run_backward (the const ones) may overlap each other, in any number: each
         run computes with a scratch buffer of its own, so runs never wait for each other. The handle
         keeps the buffers of finished runs (up to 8) for the next ones: overlapping runs allocate only
         until the handle has served as many at once.
       * _set_weights may overlap them (and itself): a run computes with the old or the new weights, never
         a mixture; a tape made before it completes is stale for _run_backward afterwards.
       * _free must overlap nothing on that handle; using a handle during or after its _free, or freeing
         it twice, is undefined behaviour.
     Results never depend on which thread or scratch buffer served a run: bitwise those of a
     single-threaded run. A tape may be read by several _run_backward / mrnn_tape_bytes at once; its
     mrnn_tape_free must overlap nothing on it.

     MrnnKerasLstmAttrs a;
     MrnnKerasLstm *layer = NULL;
     mrnn_keras_lstm_attrs_init(&a);
     a.input_size = I; a.hidden_size = H;                         // fixed for the handle's life
     if (mrnn_keras_lstm_new(&a, kernel, recurrent_kernel, bias, &layer) != MRNN_OK) {
       fprintf(stderr, "%s\n", mrnn_last_error());
       return -1;
     }
     for (each batch) {
       a.batch_size = B; a.seq_length = T; a.num_threads = 1;      // per run
       status = mrnn_keras_lstm_run(layer, &a, x, mask, NULL, NULL, y, NULL, h_n, c_n);
     }
     mrnn_keras_lstm_free(layer);                                 // NULL is fine
*/

/* A Keras LSTM layer with packed weights (opaque). */
typedef struct MrnnKerasLstm MrnnKerasLstm;

/* An ONNX LSTM node with packed weights (opaque). */
typedef struct MrnnOnnxLstm MrnnOnnxLstm;

/* Creates a Keras LSTM layer: attrs gives input_size, hidden_size, activation, recurrent_activation
   (with recurrent_alpha / recurrent_beta), go_backwards and zero_output_for_mask for the handle's life.
   The weights are those of mrnn_lstm_keras. On MRNN_OK, *out is a new handle to free with
   mrnn_keras_lstm_free; on failure *out is unchanged. */
int32_t mrnn_keras_lstm_new(const MrnnKerasLstmAttrs *attrs, /* required */
    const float *kernel,           /* [I,4H] gates i,f,c,o, required */
    const float *recurrent_kernel, /* [H,4H], required */
    const float *bias,             /* [4H] or NULL (zeros) */
    MrnnKerasLstm **out);          /* required */

/* Runs a layer made by mrnn_keras_lstm_new: exactly mrnn_lstm_keras with the handle's weights.
   attrs gives batch_size, seq_length and num_threads of this run; its other fields must equal the
   handle's (see "Handles"). Returns MRNN_OK or a status; see Conventions. */
int32_t mrnn_keras_lstm_run(const MrnnKerasLstm *layer, /* required */
    const MrnnKerasLstmAttrs *attrs,  /* required */
    const float *x,                   /* [B,T,I], required */
    const uint8_t *mask,              /* [B,T], nonzero = valid; NULL = all valid; holes allowed */
    const float *initial_h, const float *initial_c,   /* [B,H] or NULL */
    float *y,                         /* [B,T,H] or NULL */
    float *last_output,               /* [B,H] or NULL */
    float *h_n, float *c_n);          /* [B,H] or NULL */

/* Frees a handle made by mrnn_keras_lstm_new (and its scratch memory). NULL is a no-op. */
void mrnn_keras_lstm_free(MrnnKerasLstm *layer);

/* Creates an ONNX LSTM node: attrs gives input_size, hidden_size, direction, layout, input_forget,
   has_clip / clip and the activations for the handle's life. The weights are those of mrnn_lstm_onnx.
   On MRNN_OK, *out is a new handle to free with mrnn_onnx_lstm_free; on failure *out is unchanged. */
int32_t mrnn_onnx_lstm_new(const MrnnOnnxLstmAttrs *attrs, /* required */
    const float *w,               /* [D,4H,I], required */
    const float *r,               /* [D,4H,H], required */
    const float *b,               /* [D,8H] (Wb then Rb) or NULL (zeros) */
    const float *p,               /* [D,3H] peepholes (i, o, f) or NULL (none) */
    MrnnOnnxLstm **out);          /* required */

/* Runs a node made by mrnn_onnx_lstm_new: exactly mrnn_lstm_onnx with the handle's weights (every
   output NULL: validated, nothing computed). attrs gives seq_length, batch_size and num_threads of this
   run; its other fields must equal the handle's (see "Handles"). Returns MRNN_OK or a status. */
int32_t mrnn_onnx_lstm_run(const MrnnOnnxLstm *layer, /* required */
    const MrnnOnnxLstmAttrs *attrs, /* required */
    const float *x,               /* [T,B,I] (layout 0) / [B,T,I] (layout 1), required */
    const int32_t *sequence_lens, /* [B] or NULL = all seq_length; each in 0..=seq_length */
    const float *initial_h,       /* [D,B,H] (layout 0) / [B,D,H] (layout 1) or NULL (zeros) */
    const float *initial_c,       /* same, or NULL (zeros) */
    float *y,                     /* [T,D,B,H] (layout 0) / [B,T,D,H] (layout 1) or NULL */
    float *y_h, float *y_c);      /* [D,B,H] (layout 0) / [B,D,H] (layout 1) or NULL */

/* Frees a handle made by mrnn_onnx_lstm_new (and its scratch memory). NULL is a no-op. */
void mrnn_onnx_lstm_free(MrnnOnnxLstm *layer);

/* ---------------------------------------------------------------- Gradients (training)

   Each backward function is the vector-Jacobian product of its forward function: it takes the forward's
   inputs plus the gradients of a scalar loss with respect to the forward's outputs ("upstream"), and
   writes the gradients with respect to the forward's inputs. Same attributes struct, same validation
   (see Conventions), same status codes. Implemented for the Keras LSTM and the ONNX LSTM operator here,
   for the GRU and simple RNN in the last section.
   - Upstream gradients (dy, d_last_output, d_h_n, d_c_n; ONNX: dy, dy_h, dy_c) may each be NULL = zeros.
   - Every non-NULL gradient output is overwritten (not accumulated); NULL = not computed. With every
     gradient output NULL, the call validates its arguments and computes nothing.
   - Padded / masked steps are never computed in backward either. A masked step's output repeats the
     previous output (Keras), so its upstream gradient flows to that earlier output (or nowhere, before
     the first valid step or with zero_output_for_mask); dx at a masked step is +0.0.
   - ONNX: padded steps (past a sequence's length) are never computed either; Y there is a constant +0.0,
     so dy there is ignored, and dx there is +0.0.
   - d_initial_h / d_initial_c are the gradients of the initial state actually used: of zeros when
     initial_h / initial_c is NULL. ONNX: zeros for a length-0 sequence (its Y_h / Y_c are zeros whatever
     the initial state).
   - Bias gradients (d_bias, db) are computed whether or not the bias was NULL (the gradient at zeros).
     ONNX db [D,8H]: the Wb and Rb halves are equal (both enter the sum once).
   - dp (ONNX peepholes) exists only for an operator with peepholes: p NULL means "no peepholes", not
     P = 0 (whose gradient is not zero), so a non-NULL dp with p NULL (with a handle: with weights set
     without p) is MRNN_ERR_BAD_ARGUMENT ("no peepholes" in the message), checked with the pointers
     (Conventions step 4).
   - Derivatives at kinks: Relu'(0) = 0; HardSigmoid' = alpha strictly inside its linear part, 0
     elsewhere; ThresholdedRelu'(alpha) = 0; ONNX clip passes the gradient where -clip < z < clip, 0
     elsewhere (+INFINITY: no clip). Exact kinks have measure zero: frameworks differ there.
   - Weight gradients are sums over the batch; results are bitwise identical whatever num_threads is, and
     bitwise those of the Rust API (KerasLstm::forward_train then KerasLstm::backward; OnnxLstm::
     forward_train then OnnxLstm::backward).

   Training many steps goes through a handle, so that the weights are packed once per update and the
   forward is not recomputed in backward:

     MrnnTape *tape = NULL;
     for (each step) {
       a.batch_size = B; a.seq_length = T;
       status = mrnn_keras_lstm_run_train(layer, &a, x, mask, NULL, NULL, y, NULL, NULL, NULL, &tape);
       ... the loss and its gradient dy with respect to y ...
       status = mrnn_keras_lstm_run_backward(layer, tape, dy, NULL, NULL, NULL,
                                             dx, d_kernel, d_recurrent_kernel, d_bias, NULL, NULL);
       mrnn_tape_free(tape);
       ... the optimizer updates kernel, recurrent_kernel, bias ...
       status = mrnn_keras_lstm_set_weights(layer, kernel, recurrent_kernel, bias);
     }

   A tape is what one run_train keeps for its backward: its own copies of x, the mask (as runs of valid
   steps) and the initial states, the gate activations and states of every valid step (nothing for masked
   steps), the handle's identity and weights generation, and the run's num_threads. The caller's buffers
   may be reused or freed as soon as run_train returns. A tape may be used by any number of
   run_backward calls (from any threads at once) until it is freed; it is refused, with
   MRNN_ERR_BAD_ARGUMENT and a message, by another handle (of the same kind: "another handle"; a Keras
   tape given to an ONNX handle or the reverse: "another handle, of another kind") and after the handle's
   weights were replaced by its set_weights (even with equal values: "stale"). The ONNX handles work the
   same way (mrnn_onnx_lstm_run_train / _run_backward / _set_weights); their tapes keep copies of x,
   sequence_lens and the initial states, and the activations of the valid steps of each direction. One
   MrnnTape type serves both kinds; mrnn_tape_bytes and mrnn_tape_free take either. */

/* What one training run keeps for its backward (opaque). */
typedef struct MrnnTape MrnnTape;

/* The gradients of mrnn_lstm_keras with the same inputs. Validation is mrnn_lstm_keras's, with the
   upstream gradients as optional inputs and the gradients as outputs (which may overlap nothing).
   Returns MRNN_OK or a status; see Conventions. */
int32_t mrnn_lstm_keras_backward(const MrnnKerasLstmAttrs *attrs, /* required */
    const float *x,                  /* [B,T,I], required */
    const uint8_t *mask,             /* [B,T], nonzero = valid; NULL = all valid */
    const float *kernel,             /* [I,4H], required */
    const float *recurrent_kernel,   /* [H,4H], required */
    const float *bias,               /* [4H] or NULL (zeros) */
    const float *initial_h, const float *initial_c,   /* [B,H] or NULL (zeros) */
    const float *dy,                 /* [B,T,H], of y, or NULL (zeros) */
    const float *d_last_output,      /* [B,H], of last_output, or NULL */
    const float *d_h_n, const float *d_c_n,   /* [B,H], of h_n / c_n, or NULL */
    float *dx,                       /* [B,T,I] or NULL */
    float *d_kernel,                 /* [I,4H] or NULL */
    float *d_recurrent_kernel,       /* [H,4H] or NULL */
    float *d_bias,                   /* [4H] or NULL (computed whether or not bias was NULL) */
    float *d_initial_h, float *d_initial_c);  /* [B,H] or NULL */

/* mrnn_keras_lstm_run (same arguments, same outputs bit for bit, same validation), also returning a new
   tape in *tape, to free with mrnn_tape_free. The tape is kept whatever outputs are requested (all NULL
   is fine). tape is required, must be aligned for a pointer and overlap no other buffer; on failure *tape
   is unchanged. Memory: the tape holds about 6 x H (rounded up to the vector width) floats per valid step,
   plus copies of x and the initial states (see mrnn_tape_bytes). */
int32_t mrnn_keras_lstm_run_train(const MrnnKerasLstm *layer, /* required */
    const MrnnKerasLstmAttrs *attrs,  /* required; as mrnn_keras_lstm_run */
    const float *x,                   /* [B,T,I], required */
    const uint8_t *mask,              /* [B,T] or NULL */
    const float *initial_h, const float *initial_c,   /* [B,H] or NULL */
    float *y,                         /* [B,T,H] or NULL */
    float *last_output,               /* [B,H] or NULL */
    float *h_n, float *c_n,           /* [B,H] or NULL */
    MrnnTape **tape);                 /* required */

/* The gradients of the run that made tape: exactly those of mrnn_lstm_keras_backward with that run's
   inputs and the handle's weights. B and T are the run's; the run's num_threads is used again. Checks, in
   order: layer or tape NULL (MRNN_ERR_NULL_POINTER); tape made by another handle, or before the last
   mrnn_keras_lstm_set_weights on this one (MRNN_ERR_BAD_ARGUMENT, "another handle" / "stale" in the
   message); then the pointers, as Conventions step 4. Returns MRNN_OK or a status. */
int32_t mrnn_keras_lstm_run_backward(const MrnnKerasLstm *layer, /* required */
    const MrnnTape *tape,             /* required: from mrnn_keras_lstm_run_train on this handle */
    const float *dy,                  /* [B,T,H] or NULL (zeros) */
    const float *d_last_output,       /* [B,H] or NULL */
    const float *d_h_n, const float *d_c_n,   /* [B,H] or NULL */
    float *dx,                        /* [B,T,I] or NULL */
    float *d_kernel,                  /* [I,4H] or NULL */
    float *d_recurrent_kernel,        /* [H,4H] or NULL */
    float *d_bias,                    /* [4H] or NULL */
    float *d_initial_h, float *d_initial_c);  /* [B,H] or NULL */

/* Replaces the handle's weights (after an optimizer step), packing them once; shapes as at creation
   (mrnn_keras_lstm_new). Every tape made before is then stale (refused by run_backward), even if the
   values are equal. Runs of other threads that overlap this call compute with either the old or the new
   weights, never a mixture. On failure the handle is unchanged. Returns MRNN_OK or a status. */
int32_t mrnn_keras_lstm_set_weights(MrnnKerasLstm *layer, /* required */
    const float *kernel,              /* [I,4H], required */
    const float *recurrent_kernel,    /* [H,4H], required */
    const float *bias);               /* [4H] or NULL (zeros) */

/* The gradients of mrnn_lstm_onnx with the same inputs (opset 22 semantics, every direction, both
   layouts). Validation is mrnn_lstm_onnx's (sequence_lens values checked last, still before any output
   is written), with the upstream gradients as optional inputs and the gradients as outputs (which may
   overlap nothing), and a non-NULL dp with p NULL refused (see above). D = 2 for bidirectional, else 1.
   Returns MRNN_OK or a status; see Conventions. */
int32_t mrnn_lstm_onnx_backward(const MrnnOnnxLstmAttrs *attrs, /* required */
    const float *x,               /* [T,B,I] (layout 0) / [B,T,I] (layout 1), required */
    const float *w,               /* [D,4H,I], required */
    const float *r,               /* [D,4H,H], required */
    const float *b,               /* [D,8H] or NULL (zeros) */
    const int32_t *sequence_lens, /* [B] or NULL = all seq_length; each in 0..=seq_length */
    const float *initial_h,       /* [D,B,H] (layout 0) / [B,D,H] (layout 1) or NULL (zeros) */
    const float *initial_c,       /* same, or NULL (zeros) */
    const float *p,               /* [D,3H] peepholes (i, o, f) or NULL (none) */
    const float *dy,              /* [T,D,B,H] (layout 0) / [B,T,D,H] (layout 1), of y, or NULL (zeros) */
    const float *dy_h,            /* shaped as y_h, of y_h, or NULL */
    const float *dy_c,            /* shaped as y_c, of y_c, or NULL */
    float *dx,                    /* shaped as x, or NULL */
    float *dw,                    /* [D,4H,I] or NULL */
    float *dr,                    /* [D,4H,H] or NULL */
    float *db,                    /* [D,8H] or NULL (computed whether or not b was NULL) */
    float *d_initial_h,           /* shaped as initial_h, or NULL */
    float *d_initial_c,           /* shaped as initial_c, or NULL */
    float *dp);                   /* [D,3H] or NULL; non-NULL requires p */

/* mrnn_onnx_lstm_run (same arguments, same outputs bit for bit, same validation, sequence_lens values
   last), also returning a new tape in *tape, to free with mrnn_tape_free. As mrnn_keras_lstm_run_train:
   the tape is kept whatever outputs are requested, tape is required, must be aligned for a pointer and
   overlap no other buffer, and on failure *tape is unchanged. Memory: about 6 x H (rounded up to the
   vector width) floats per valid step and direction, plus copies of x, sequence_lens and the initial
   states (see mrnn_tape_bytes). */
int32_t mrnn_onnx_lstm_run_train(const MrnnOnnxLstm *layer, /* required */
    const MrnnOnnxLstmAttrs *attrs, /* required; as mrnn_onnx_lstm_run */
    const float *x,               /* [T,B,I] (layout 0) / [B,T,I] (layout 1), required */
    const int32_t *sequence_lens, /* [B] or NULL; each in 0..=seq_length */
    const float *initial_h,       /* [D,B,H] (layout 0) / [B,D,H] (layout 1) or NULL */
    const float *initial_c,       /* same, or NULL */
    float *y,                     /* [T,D,B,H] (layout 0) / [B,T,D,H] (layout 1) or NULL */
    float *y_h, float *y_c,       /* [D,B,H] (layout 0) / [B,D,H] (layout 1) or NULL */
    MrnnTape **tape);             /* required */

/* The gradients of the run that made tape: exactly those of mrnn_lstm_onnx_backward with that run's
   inputs and the handle's weights. T and B are the run's; the run's num_threads is used again. Checks, in
   order: layer or tape NULL (MRNN_ERR_NULL_POINTER); a tape of a Keras handle, of another ONNX handle, or
   made before the last mrnn_onnx_lstm_set_weights on this one (MRNN_ERR_BAD_ARGUMENT: "another kind",
   "another handle", "stale"); then the pointers, as Conventions step 4, and dp with weights without
   peepholes (MRNN_ERR_BAD_ARGUMENT, "no peepholes"). Returns MRNN_OK or a status. */
int32_t mrnn_onnx_lstm_run_backward(const MrnnOnnxLstm *layer, /* required */
    const MrnnTape *tape,         /* required: from mrnn_onnx_lstm_run_train on this handle */
    const float *dy,              /* shaped as y, or NULL (zeros) */
    const float *dy_h, const float *dy_c, /* shaped as y_h / y_c, or NULL */
    float *dx,                    /* shaped as x, or NULL */
    float *dw,                    /* [D,4H,I] or NULL */
    float *dr,                    /* [D,4H,H] or NULL */
    float *db,                    /* [D,8H] or NULL */
    float *d_initial_h, float *d_initial_c, /* shaped as initial_h / initial_c, or NULL */
    float *dp);                   /* [D,3H] or NULL; only if the handle's weights have peepholes */

/* Replaces the node's weights (after an optimizer step), packing them once; shapes as at creation
   (mrnn_onnx_lstm_new). b NULL: zeros; p NULL: no peepholes from now on (dp is then refused), p given:
   peepholes, whether or not the node had them before. Every tape made before is then stale, even if the
   values are equal. Runs of other threads that overlap this call compute with either the old or the new
   weights, never a mixture. On failure the handle is unchanged. Returns MRNN_OK or a status. */
int32_t mrnn_onnx_lstm_set_weights(MrnnOnnxLstm *layer, /* required */
    const float *w,               /* [D,4H,I], required */
    const float *r,               /* [D,4H,H], required */
    const float *b,               /* [D,8H] or NULL (zeros) */
    const float *p);              /* [D,3H] or NULL (none) */

/* Writes to *bytes the memory a tape holds (its copies of the inputs, the activations and bookkeeping,
   and after a run_backward the working buffers it keeps for the next one: about 5 x H floats per valid
   step and direction). Both pointers are required (bytes aligned to 8). Returns MRNN_OK or a status. */
int32_t mrnn_tape_bytes(const MrnnTape *tape, uint64_t *bytes);

/* Frees a tape made by any run_train (LSTM, GRU or RNN, Keras or ONNX). NULL is a no-op. A tape may
   outlive its handle (it is then useless, but must still be freed). */
void mrnn_tape_free(MrnnTape *tape);

/* ---------------------------------------------------------------- GRU and simple RNN (C_ABI.md section 4)

   The forward functions and handles of the GRU and the simple RNN. Same conventions, validation order,
   masks, directions, layouts, sequence_lens rules and handle rules as the LSTM functions above (read
   "LSTM" as "GRU" / "RNN"); the GRU and RNN have no cell state (no initial_c, y_c, c_n, no peepholes).
   Their gradients and training tapes follow "Gradients (training)"; see the end of this section. */

/* Attributes of the ONNX GRU operator (opset 22). Gates z, r, h. linear_before_reset = 0 (the ONNX
   default): h~ = g(x.Wh + (r * H).Rh + Rbh + Wbh); 1: h~ = g(x.Wh + r * (H.Rh + Rbh) + Wbh) (PyTorch,
   Keras reset_after). H' = (1 - z) * h~ + z * H. Fill with mrnn_onnx_gru_attrs_init first. */
typedef struct {
  int64_t seq_length, batch_size, input_size, hidden_size; /* T, B, I >= 0; H >= 1 */
  int32_t direction;            /* 0 forward, 1 reverse, 2 bidirectional */
  int32_t layout;               /* as MrnnOnnxLstmAttrs.layout (Y_h like Y_h there) */
  int32_t linear_before_reset;  /* 0 or 1 */
  int32_t has_clip;             /* 0: no clip (clip ignored); 1: clip applies */
  float   clip;                 /* with has_clip = 1: > 0; +INFINITY = no clipping */
  int32_t num_activations;      /* 0: defaults (Sigmoid, Tanh per direction); else 2 per direction: 2
                                   (forward or reverse) or 4 (bidirectional: forward f, g, then reverse
                                   f, g); any other count is MRNN_ERR_BAD_ARGUMENT */
  int32_t activations[4];       /* MRNN_ACT_* per direction: f (gates z, r), g (candidate h~) */
  float   activation_alpha[4];  /* NaN: the operator's default for that activation */
  float   activation_beta[4];   /* NaN: the operator's default */
  int32_t num_threads;          /* 0: all cores; 1: calling thread; n: n threads; < 0 is BAD_ARGUMENT */
} MrnnOnnxGruAttrs;

/* Attributes of the ONNX RNN operator (opset 22): H' = f(x.W^T + H.R^T + Wb + Rb). Fill with
   mrnn_onnx_rnn_attrs_init first. */
typedef struct {
  int64_t seq_length, batch_size, input_size, hidden_size; /* T, B, I >= 0; H >= 1 */
  int32_t direction;            /* 0 forward, 1 reverse, 2 bidirectional */
  int32_t layout;               /* as MrnnOnnxLstmAttrs.layout */
  int32_t has_clip;             /* 0: no clip; 1: clip applies */
  float   clip;                 /* with has_clip = 1: > 0; +INFINITY = no clipping */
  int32_t num_activations;      /* 0: Tanh per direction; else 1 (forward or reverse) or 2 (bidirectional) */
  int32_t activations[2];       /* MRNN_ACT_* per direction */
  float   activation_alpha[2];  /* NaN: the operator's default */
  float   activation_beta[2];
  int32_t num_threads;
} MrnnOnnxRnnAttrs;

/* Attributes of the Keras GRU layer (Keras 3). Gates z, r, h in kernel [I,3H] and recurrent_kernel
   [H,3H]. reset_after = 1 (Keras 3 default): bias [2,3H] (input bias row, then recurrent bias row);
   reset_after = 0: bias [3H], and the reset gate multiplies h before the recurrent matmul. Fill with
   mrnn_keras_gru_attrs_init first (Tanh, Sigmoid, reset_after 1). */
typedef struct {
  int64_t batch_size, seq_length, input_size, hidden_size; /* B, T, I >= 0; H >= 1 */
  int32_t go_backwards, zero_output_for_mask;  /* 0 or 1 each, as MrnnKerasLstmAttrs */
  int32_t activation, recurrent_activation;    /* MRNN_ACT_* with Keras parameters; defaults Tanh, Sigmoid */
  float   recurrent_alpha, recurrent_beta;     /* used when recurrent_activation is HardSigmoid; NaN: 0.2 /
                                                  0.5 (Keras 2); Keras 3's hard_sigmoid is 1/6, 0.5 */
  int32_t reset_after;                         /* 0 or 1 */
  int32_t num_threads;
} MrnnKerasGruAttrs;

/* Attributes of the Keras SimpleRNN layer: h' = activation(x.kernel + h.recurrent_kernel + bias). Fill
   with mrnn_keras_rnn_attrs_init first (Tanh). */
typedef struct {
  int64_t batch_size, seq_length, input_size, hidden_size; /* B, T, I >= 0; H >= 1 */
  int32_t go_backwards, zero_output_for_mask;  /* 0 or 1 each */
  int32_t activation;                          /* MRNN_ACT_* with Keras parameters; default Tanh */
  int32_t num_threads;
} MrnnKerasRnnAttrs;

/* Fill *attrs with the defaults: sizes 0; ONNX: forward, layout 0, linear_before_reset 0, has_clip 0
   (clip NaN), num_activations 0 (the arrays hold each direction's defaults), NaN alpha/beta; Keras: as
   above, NaN recurrent_alpha/beta; num_threads 0. Returns MRNN_OK, or MRNN_ERR_NULL_POINTER. */
int32_t mrnn_onnx_gru_attrs_init(MrnnOnnxGruAttrs *attrs);
int32_t mrnn_onnx_rnn_attrs_init(MrnnOnnxRnnAttrs *attrs);
int32_t mrnn_keras_gru_attrs_init(MrnnKerasGruAttrs *attrs);
int32_t mrnn_keras_rnn_attrs_init(MrnnKerasRnnAttrs *attrs);

/* The ONNX GRU operator. Y at steps beyond a sequence's length is +0.0; Y_h is the last valid step
   (reverse: the state after x_0); a length-0 sequence gives zeros in Y_h. Padded steps are never
   computed. Every output NULL: validated, nothing computed. Returns MRNN_OK or a status. */
int32_t mrnn_gru_onnx(const MrnnOnnxGruAttrs *attrs, /* required */
    const float *x,               /* [T,B,I] (layout 0) / [B,T,I] (layout 1), required */
    const float *w,               /* [D,3H,I] gates z, r, h, required */
    const float *r,               /* [D,3H,H], required */
    const float *b,               /* [D,6H] (Wb then Rb) or NULL (zeros) */
    const int32_t *sequence_lens, /* [B] or NULL = all seq_length; each in 0..=seq_length */
    const float *initial_h,       /* [D,B,H] (layout 0) / [B,D,H] (layout 1) or NULL (zeros) */
    float *y,                     /* [T,D,B,H] (layout 0) / [B,T,D,H] (layout 1) or NULL */
    float *y_h);                  /* [D,B,H] (layout 0) / [B,D,H] (layout 1) or NULL */

/* The ONNX RNN operator; outputs as mrnn_gru_onnx. */
int32_t mrnn_rnn_onnx(const MrnnOnnxRnnAttrs *attrs, /* required */
    const float *x,               /* as mrnn_gru_onnx, required */
    const float *w,               /* [D,H,I], required */
    const float *r,               /* [D,H,H], required */
    const float *b,               /* [D,2H] (Wb then Rb) or NULL (zeros) */
    const int32_t *sequence_lens, const float *initial_h,   /* as mrnn_gru_onnx */
    float *y, float *y_h);        /* as mrnn_gru_onnx */

/* Keras-style masked GRU: masked steps are skipped (the state carries over), as mrnn_lstm_keras. */
int32_t mrnn_gru_keras(const MrnnKerasGruAttrs *attrs, /* required */
    const float *x,                /* [B,T,I], required */
    const uint8_t *mask,           /* [B,T], nonzero = valid; NULL = all valid; holes allowed */
    const float *kernel,           /* [I,3H] gates z, r, h, required */
    const float *recurrent_kernel, /* [H,3H], required */
    const float *bias,             /* reset_after 1: [2,3H]; 0: [3H]; or NULL (zeros) */
    const float *initial_h,        /* [B,H] or NULL (zeros) */
    float *y,                      /* [B,T,H] (return_sequences) or NULL */
    float *last_output,            /* [B,H]: outputs[:, -1] as Keras returns it, or NULL */
    float *h_n);                   /* [B,H] last valid state, or NULL */

/* Keras-style masked SimpleRNN; as mrnn_gru_keras. */
int32_t mrnn_rnn_keras(const MrnnKerasRnnAttrs *attrs, /* required */
    const float *x,                /* [B,T,I], required */
    const uint8_t *mask,           /* [B,T] or NULL */
    const float *kernel,           /* [I,H], required */
    const float *recurrent_kernel, /* [H,H], required */
    const float *bias,             /* [H] or NULL (zeros) */
    const float *initial_h,        /* [B,H] or NULL (zeros) */
    float *y, float *last_output, float *h_n);   /* as mrnn_gru_keras */

/* Handles, as the LSTM's (see "Handles"): _new validates every attribute and copies and packs the
   weights once (*out unchanged on failure); _run is bitwise the one-shot function with the handle's
   weights, its attrs giving this run's batch_size, seq_length and num_threads, every other field equal to
   the handle's (else MRNN_ERR_BAD_ARGUMENT naming the field; an activation parameter the activation does
   not take, or NaN for its default, counts as equal); _free releases it (NULL is a no-op). Runs on one
   handle may overlap from any number of threads. */
typedef struct MrnnOnnxGru MrnnOnnxGru;     /* opaque */
typedef struct MrnnKerasGru MrnnKerasGru;   /* opaque */
typedef struct MrnnOnnxRnn MrnnOnnxRnn;     /* opaque */
typedef struct MrnnKerasRnn MrnnKerasRnn;   /* opaque */

int32_t mrnn_onnx_gru_new(const MrnnOnnxGruAttrs *attrs, /* required */
    const float *w, const float *r,   /* as mrnn_gru_onnx, required */
    const float *b,                   /* as mrnn_gru_onnx, or NULL */
    MrnnOnnxGru **out);               /* required */
int32_t mrnn_onnx_gru_run(const MrnnOnnxGru *layer, const MrnnOnnxGruAttrs *attrs, /* required */
    const float *x,                   /* required */
    const int32_t *sequence_lens, const float *initial_h,
    float *y, float *y_h);            /* as mrnn_gru_onnx */
void    mrnn_onnx_gru_free(MrnnOnnxGru *layer);

int32_t mrnn_keras_gru_new(const MrnnKerasGruAttrs *attrs, /* required */
    const float *kernel, const float *recurrent_kernel,   /* as mrnn_gru_keras, required */
    const float *bias,                /* as mrnn_gru_keras, or NULL */
    MrnnKerasGru **out);              /* required */
int32_t mrnn_keras_gru_run(const MrnnKerasGru *layer, const MrnnKerasGruAttrs *attrs, /* required */
    const float *x,                   /* required */
    const uint8_t *mask, const float *initial_h,
    float *y, float *last_output, float *h_n);  /* as mrnn_gru_keras */
void    mrnn_keras_gru_free(MrnnKerasGru *layer);

int32_t mrnn_onnx_rnn_new(const MrnnOnnxRnnAttrs *attrs, /* required */
    const float *w, const float *r,   /* as mrnn_rnn_onnx, required */
    const float *b,                   /* or NULL */
    MrnnOnnxRnn **out);               /* required */
int32_t mrnn_onnx_rnn_run(const MrnnOnnxRnn *layer, const MrnnOnnxRnnAttrs *attrs, /* required */
    const float *x,                   /* required */
    const int32_t *sequence_lens, const float *initial_h,
    float *y, float *y_h);
void    mrnn_onnx_rnn_free(MrnnOnnxRnn *layer);

int32_t mrnn_keras_rnn_new(const MrnnKerasRnnAttrs *attrs, /* required */
    const float *kernel, const float *recurrent_kernel,   /* as mrnn_rnn_keras, required */
    const float *bias,                /* or NULL */
    MrnnKerasRnn **out);              /* required */
int32_t mrnn_keras_rnn_run(const MrnnKerasRnn *layer, const MrnnKerasRnnAttrs *attrs, /* required */
    const float *x,                   /* required */
    const uint8_t *mask, const float *initial_h,
    float *y, float *last_output, float *h_n);
void    mrnn_keras_rnn_free(MrnnKerasRnn *layer);

/* ---------------------------------------------------------------- GRU and simple RNN: gradients

   The vector-Jacobian products of mrnn_gru_keras, mrnn_rnn_keras, mrnn_gru_onnx and mrnn_rnn_onnx, as
   "Gradients (training)" describes them for the LSTM (same validation as the forward, upstream gradients
   NULL = zeros, every non-NULL gradient output overwritten, NULL = not computed, all NULL = validated and
   nothing computed, masked / padded steps never computed and dx there +0.0, d_initial_h the gradient of
   the initial state actually used, bias gradients computed whether or not the bias was NULL, results
   bitwise those of the Rust API whatever num_threads is: KerasGru / KerasSimpleRnn / OnnxGru / OnnxRnn
   forward_train then backward). There is no cell state, so no d_c_n / dy_c / d_initial_c / dp. ONNX db
   [D,2GH] (G = 3 for the GRU, 1 for the RNN): Wb then Rb, the halves equal except for the GRU's Rbh
   with linear_before_reset = 1 (inside the reset product r * (H.Rh + Rbh)).

   The handles train as the LSTM's: _run_train is _run (same outputs bit for bit, same validation) that
   also returns a new tape; _run_backward gives exactly the one-shot backward's gradients for that run's
   inputs and the handle's current weights (the run's B, T and num_threads), after checking that the tape
   is this handle's (MRNN_ERR_BAD_ARGUMENT: "another handle"; a tape of a handle of another kind, LSTM,
   GRU or RNN, Keras or ONNX: "another handle, of another kind") and not older than its last _set_weights
   ("stale"); _set_weights replaces the weights (shapes as at creation, bias / b NULL: zeros) and makes
   every older tape stale. mrnn_tape_bytes and mrnn_tape_free take these tapes too. */

int32_t mrnn_gru_keras_backward(const MrnnKerasGruAttrs *attrs, /* required */
    const float *x, const uint8_t *mask,           /* as mrnn_gru_keras; x required */
    const float *kernel, const float *recurrent_kernel,   /* as mrnn_gru_keras, required */
    const float *bias, const float *initial_h,     /* as mrnn_gru_keras, or NULL (zeros) */
    const float *dy,                 /* [B,T,H], of y, or NULL (zeros) */
    const float *d_last_output,      /* [B,H], of last_output, or NULL */
    const float *d_h_n,              /* [B,H], of h_n, or NULL */
    float *dx,                       /* [B,T,I] or NULL */
    float *d_kernel,                 /* [I,3H] or NULL */
    float *d_recurrent_kernel,       /* [H,3H] or NULL */
    float *d_bias,                   /* shaped as bias ([2,3H] or [3H] by reset_after), or NULL */
    float *d_initial_h);             /* [B,H] or NULL */

int32_t mrnn_rnn_keras_backward(const MrnnKerasRnnAttrs *attrs, /* required */
    const float *x, const uint8_t *mask,           /* as mrnn_rnn_keras; x required */
    const float *kernel, const float *recurrent_kernel,   /* as mrnn_rnn_keras, required */
    const float *bias, const float *initial_h,     /* as mrnn_rnn_keras, or NULL (zeros) */
    const float *dy, const float *d_last_output, const float *d_h_n,   /* as mrnn_gru_keras_backward */
    float *dx,                       /* [B,T,I] or NULL */
    float *d_kernel,                 /* [I,H] or NULL */
    float *d_recurrent_kernel,       /* [H,H] or NULL */
    float *d_bias,                   /* [H] or NULL */
    float *d_initial_h);             /* [B,H] or NULL */

int32_t mrnn_gru_onnx_backward(const MrnnOnnxGruAttrs *attrs, /* required */
    const float *x, const float *w, const float *r,   /* as mrnn_gru_onnx, required */
    const float *b,                  /* as mrnn_gru_onnx, or NULL (zeros) */
    const int32_t *sequence_lens,    /* [B] or NULL; each in 0..=seq_length (checked last) */
    const float *initial_h,          /* as mrnn_gru_onnx, or NULL (zeros) */
    const float *dy,                 /* shaped as y, or NULL (zeros) */
    const float *dy_h,               /* shaped as y_h, or NULL */
    float *dx,                       /* shaped as x, or NULL */
    float *dw,                       /* [D,3H,I] or NULL */
    float *dr,                       /* [D,3H,H] or NULL */
    float *db,                       /* [D,6H] or NULL */
    float *d_initial_h);             /* shaped as initial_h, or NULL */

int32_t mrnn_rnn_onnx_backward(const MrnnOnnxRnnAttrs *attrs, /* required */
    const float *x, const float *w, const float *r,   /* as mrnn_rnn_onnx, required */
    const float *b,                  /* [D,2H] or NULL (zeros) */
    const int32_t *sequence_lens, const float *initial_h,   /* as mrnn_gru_onnx_backward */
    const float *dy, const float *dy_h,                     /* as mrnn_gru_onnx_backward */
    float *dx,                       /* shaped as x, or NULL */
    float *dw,                       /* [D,H,I] or NULL */
    float *dr,                       /* [D,H,H] or NULL */
    float *db,                       /* [D,2H] or NULL */
    float *d_initial_h);             /* shaped as initial_h, or NULL */

/* Training on the handles: run_train's outputs, tape and checks as mrnn_onnx_lstm_run_train's (tape
   required, aligned for a pointer, overlapping nothing; *tape unchanged on failure); run_backward's
   arguments shaped as the one-shot backward's; set_weights' as _new's. */
int32_t mrnn_onnx_gru_run_train(const MrnnOnnxGru *layer, const MrnnOnnxGruAttrs *attrs, /* required */
    const float *x,                   /* required */
    const int32_t *sequence_lens, const float *initial_h,
    float *y, float *y_h,             /* as mrnn_onnx_gru_run */
    MrnnTape **tape);                 /* required */
int32_t mrnn_onnx_gru_run_backward(const MrnnOnnxGru *layer, const MrnnTape *tape, /* required */
    const float *dy, const float *dy_h,
    float *dx, float *dw, float *dr, float *db, float *d_initial_h);
int32_t mrnn_onnx_gru_set_weights(MrnnOnnxGru *layer, /* required */
    const float *w, const float *r,   /* required */
    const float *b);                  /* or NULL (zeros) */

int32_t mrnn_onnx_rnn_run_train(const MrnnOnnxRnn *layer, const MrnnOnnxRnnAttrs *attrs, /* required */
    const float *x,                   /* required */
    const int32_t *sequence_lens, const float *initial_h,
    float *y, float *y_h,
    MrnnTape **tape);                 /* required */
int32_t mrnn_onnx_rnn_run_backward(const MrnnOnnxRnn *layer, const MrnnTape *tape, /* required */
    const float *dy, const float *dy_h,
    float *dx, float *dw, float *dr, float *db, float *d_initial_h);
int32_t mrnn_onnx_rnn_set_weights(MrnnOnnxRnn *layer, /* required */
    const float *w, const float *r,   /* required */
    const float *b);                  /* or NULL (zeros) */

int32_t mrnn_keras_gru_run_train(const MrnnKerasGru *layer, const MrnnKerasGruAttrs *attrs, /* required */
    const float *x,                   /* required */
    const uint8_t *mask, const float *initial_h,
    float *y, float *last_output, float *h_n,   /* as mrnn_keras_gru_run */
    MrnnTape **tape);                 /* required */
int32_t mrnn_keras_gru_run_backward(const MrnnKerasGru *layer, const MrnnTape *tape, /* required */
    const float *dy, const float *d_last_output, const float *d_h_n,
    float *dx, float *d_kernel, float *d_recurrent_kernel, float *d_bias, float *d_initial_h);
int32_t mrnn_keras_gru_set_weights(MrnnKerasGru *layer, /* required */
    const float *kernel, const float *recurrent_kernel,   /* required */
    const float *bias);               /* or NULL (zeros) */

int32_t mrnn_keras_rnn_run_train(const MrnnKerasRnn *layer, const MrnnKerasRnnAttrs *attrs, /* required */
    const float *x,                   /* required */
    const uint8_t *mask, const float *initial_h,
    float *y, float *last_output, float *h_n,
    MrnnTape **tape);                 /* required */
int32_t mrnn_keras_rnn_run_backward(const MrnnKerasRnn *layer, const MrnnTape *tape, /* required */
    const float *dy, const float *d_last_output, const float *d_h_n,
    float *dx, float *d_kernel, float *d_recurrent_kernel, float *d_bias, float *d_initial_h);
int32_t mrnn_keras_rnn_set_weights(MrnnKerasRnn *layer, /* required */
    const float *kernel, const float *recurrent_kernel,   /* required */
    const float *bias);               /* or NULL (zeros) */

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MASKED_RNN_H */
