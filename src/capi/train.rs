//! Training through the C ABI (C_ABI.md section 3): the vector-Jacobian products of the Keras LSTM and
//! of the ONNX LSTM operator.
//!
//! ```text
//! mrnn_lstm_keras_backward(attrs, x, mask, weights, h0, c0, dy, d_last, d_h_n, d_c_n, dx, dW.., dh0, dc0)
//!     one-shot: validate as mrnn_lstm_keras, pack, forward_train, backward
//! mrnn_keras_lstm_run_train(layer, attrs, x, mask, h0, c0, y, last, h_n, c_n, &tape)
//!     mrnn_keras_lstm_run that also returns a tape: copies of x, the mask's view and the initial states,
//!     the activations of every valid step, the handle's id and weights generation, num_threads
//! mrnn_keras_lstm_run_backward(layer, tape, dy, d_last, d_h_n, d_c_n, dx, dW.., dh0, dc0)
//!     the gradients of that run; refused (MRNN_ERR_BAD_ARGUMENT) if the tape is another handle's (of
//!     either kind) or older than the handle's weights
//! mrnn_keras_lstm_set_weights(layer, kernel, recurrent_kernel, bias)   repack, generation + 1
//!
//! mrnn_lstm_onnx_backward(attrs, x, w, r, b, lens, h0, c0, p, dy, dy_h, dy_c, dx, dw, dr, db, dh0, dc0, dp)
//!     one-shot: validate as mrnn_lstm_onnx (lengths last), pack, forward_train, backward
//! mrnn_onnx_lstm_run_train(layer, attrs, x, lens, h0, c0, y, y_h, y_c, &tape)
//!     mrnn_onnx_lstm_run that also returns a tape: copies of x, sequence_lens and the initial states, the
//!     activations of every valid step of each direction, the handle's id and generation, num_threads
//! mrnn_onnx_lstm_run_backward(layer, tape, dy, dy_h, dy_c, dx, dw, dr, db, dh0, dc0, dp)
//! mrnn_onnx_lstm_set_weights(layer, w, r, b, p)                       repack, generation + 1
//!
//! mrnn_tape_bytes(tape, &bytes), mrnn_tape_free(tape)                 either kind of tape
//! ```
//!
//! Gradients are the Rust API's ([`KerasLstm::forward_train`] then [`KerasLstm::backward`];
//! [`OnnxLstm::forward_train`] then [`OnnxLstm::backward`]) bit for bit, whichever path computes them.
//! Validation follows the order of the module docs of [`super`]; a failing call writes no output (and
//! leaves `*tape` unchanged). The functions here are entry points only: each validates and runs through
//! the one path of every layer kind (the private module `layer`), which the forwards and the handles
//! share: a one-shot backward is validated as the one-shot forward, a `run_train` as a `run`. With every gradient output NULL, a backward validates its arguments and
//! computes nothing.
//!
//! `dp` (the gradient of the ONNX peepholes) exists only for an operator with peepholes: `p` NULL means "no
//! peepholes", not `P = 0` (whose gradient is not zero), so a non-NULL `dp` with `p` NULL (one-shot) or
//! with a handle whose current weights have no peepholes is `MRNN_ERR_BAD_ARGUMENT`, checked with the
//! pointers (step 4).
//!
//! [`MrnnTape`] is shared by every layer kind: its record (`Record`) names the kind, so that a tape of one
//! kind given to another kind's `run_backward` is refused like any other foreign tape (handle ids are
//! unique across kinds too).

use super::keras::{KerasGradOutPtrs, KerasInput, KerasUpstreamPtrs};
use super::layer::{one_shot_backward, run_backward, run_train, set_weights, TrainKind};
use super::onnx::OnnxInput;
use super::*;
use crate::frameworks::keras::KerasTape;
use crate::frameworks::onnx::OnnxTape;

/// What one training run keeps for its backward (`MrnnTape` of `masked_rnn.h`), opaque to C.
#[derive(Debug)]
pub struct MrnnTape {
    /// The kind of that handle, as messages name it (`Kind::NAME`: "Keras LSTM", "ONNX GRU", ...).
    kind: &'static str,
    /// The id of the handle whose run made it.
    owner: u64,
    /// That handle's weights generation during the run.
    generation: u64,
    /// The run's inputs and activations.
    record: Record,
}

// Tapes may be made on one thread and used or freed on another, and read by several at once.
const _: () = {
    const fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<MrnnTape>();
};

/// The framework-specific part of a tape (the kind of handle is [`MrnnTape`]'s `kind`).
#[derive(Debug)]
pub(super) enum Record {
    /// A run of a Keras handle (LSTM, GRU or SimpleRNN).
    Keras(KerasRecord),
    /// A run of an ONNX handle (LSTM, GRU or RNN).
    Onnx(OnnxRecord),
}

impl Record {
    /// The record of a Keras run, if it is one.
    pub(super) fn keras(&self) -> Option<&KerasRecord> {
        match self {
            Record::Keras(run) => Some(run),
            Record::Onnx(_) => None,
        }
    }

    /// The record of an ONNX run, if it is one.
    pub(super) fn onnx(&self) -> Option<&OnnxRecord> {
        match self {
            Record::Onnx(run) => Some(run),
            Record::Keras(_) => None,
        }
    }
}

/// What a Keras run keeps: copies of its inputs (the mask as its valid steps) and its [`KerasTape`].
pub(super) type KerasRecord = Recorded<KerasInput<Vec<f32>>, KerasTape>;

/// What an ONNX run keeps: copies of its inputs and its [`OnnxTape`].
pub(super) type OnnxRecord = Recorded<OnnxInput<Vec<f32>, Vec<i32>>, OnnxTape>;

/// What a run keeps: its thread count (the backward uses the same), copies of its inputs (the caller may
/// reuse their buffers) and the tape of its valid steps.
#[derive(Debug)]
pub(super) struct Recorded<I, T> {
    pub(super) threads: usize,
    pub(super) input: I,
    pub(super) tape: T,
}

impl MrnnTape {
    /// The tape of a run of handle `owner`, of kind `kind`, with its weights generation `generation`.
    pub(super) fn new(kind: &'static str, owner: u64, generation: u64, record: Record) -> Self {
        MrnnTape { kind, owner, generation, record }
    }

    /// The tape's record, after checking that handle `id`, of kind `K`, made it with its weights
    /// generation `generation` (from the snapshot the backward will compute with).
    pub(super) fn made_by<K: TrainKind>(&self, id: u64, generation: u64) -> Result<&Recorded<K::Copies, K::Tape>> {
        // Kinds of one framework share their record's type: the kind's name tells them apart.
        let Some(record) = K::recorded(&self.record).filter(|_| self.kind == K::NAME) else {
            return Err(Error::argument(format!(
                "the tape was made by another handle, of another kind: {} handle #{}; this is {} handle #{id}",
                self.kind,
                self.owner,
                K::NAME
            )));
        };
        if self.owner != id {
            return Err(Error::argument(format!(
                "the tape was made by another handle (handle #{}; this is handle #{id})",
                self.owner
            )));
        }
        if self.generation != generation {
            return Err(Error::argument(format!(
                "the tape is stale: it was made with weights generation {} and {prefix}_set_weights has since \
                 replaced them (generation {generation}); run {prefix}_run_train again",
                self.generation,
                prefix = K::PREFIX
            )));
        }
        Ok(record)
    }

    /// Bytes held by the tape.
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + match &self.record {
                Record::Keras(r) => r.input.bytes() + r.tape.bytes(),
                Record::Onnx(r) => r.input.bytes() + r.tape.bytes(),
            }
    }
}

/// The gradients of a Keras LSTM; see `masked_rnn.h` for the arguments.
///
/// # Safety
/// Every non-NULL pointer is valid for the tensor size the header documents for it (reads for the `const`
/// inputs, writes for the outputs) for the duration of the call, and no other thread writes the inputs
/// or touches the outputs meanwhile. NULL is always allowed: it is reported or means "absent".
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_lstm_keras_backward(
    attrs: *const MrnnKerasLstmAttrs,
    x: *const f32,
    mask: *const u8,
    kernel: *const f32,
    recurrent_kernel: *const f32,
    bias: *const f32,
    initial_h: *const f32,
    initial_c: *const f32,
    dy: *const f32,
    d_last_output: *const f32,
    d_h_n: *const f32,
    d_c_n: *const f32,
    dx: *mut f32,
    d_kernel: *mut f32,
    d_recurrent_kernel: *mut f32,
    d_bias: *mut f32,
    d_initial_h: *mut f32,
    d_initial_c: *mut f32,
) -> i32 {
    let input = KerasInputPtrs { x, mask, initial_h, initial_c };
    let weights = KerasWeightPtrs { kernel, recurrent_kernel, bias };
    let grads = KerasGradPtrs {
        up: KerasUpstreamPtrs { dy, d_last_output, d_h_n, d_c_n },
        out: KerasGradOutPtrs { dx, d_kernel, d_recurrent_kernel, d_bias, d_initial_h, d_initial_c },
    };
    // SAFETY: the caller's contract, as `one_shot_backward` requires it.
    guard("mrnn_lstm_keras_backward", || unsafe { one_shot_backward::<MrnnKerasLstm>(attrs, input, weights, grads) })
}

/// Runs a Keras LSTM handle as [`mrnn_keras_lstm_run`] does and returns a tape for
/// [`mrnn_keras_lstm_run_backward`]; see `masked_rnn.h`.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_keras_lstm_new`] not yet freed (other threads may use it at the
/// same time, none may free it meanwhile); `tape` is NULL or valid for writing one pointer. Every other
/// non-NULL pointer is valid for the tensor size the header documents for it (reads for the `const`
/// inputs, writes for the outputs) for the duration of the call, and no other thread writes the inputs
/// or touches the outputs meanwhile.
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_keras_lstm_run_train(
    layer: *const MrnnKerasLstm,
    attrs: *const MrnnKerasLstmAttrs,
    x: *const f32,
    mask: *const u8,
    initial_h: *const f32,
    initial_c: *const f32,
    y: *mut f32,
    last_output: *mut f32,
    h_n: *mut f32,
    c_n: *mut f32,
    tape: *mut *mut MrnnTape,
) -> i32 {
    let input = KerasInputPtrs { x, mask, initial_h, initial_c };
    let output = KerasOutputPtrs { y, last_output, h_n, c_n };
    // SAFETY: the caller's contract, as `run_train` requires it.
    guard("mrnn_keras_lstm_run_train", || unsafe { run_train(layer, attrs, input, output, tape) })
}

/// The gradients of the run that made `tape`; see `masked_rnn.h`.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_keras_lstm_new`] not yet freed, `tape` NULL or a tape from
/// [`mrnn_keras_lstm_run_train`] not yet freed (other threads may use either at the same time, none may
/// free them meanwhile). Every other non-NULL pointer is valid for the tensor size the header documents
/// for it (reads for the `const` inputs, writes for the outputs) for the duration of the call, and no
/// other thread writes the inputs or touches the outputs meanwhile.
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_keras_lstm_run_backward(
    layer: *const MrnnKerasLstm,
    tape: *const MrnnTape,
    dy: *const f32,
    d_last_output: *const f32,
    d_h_n: *const f32,
    d_c_n: *const f32,
    dx: *mut f32,
    d_kernel: *mut f32,
    d_recurrent_kernel: *mut f32,
    d_bias: *mut f32,
    d_initial_h: *mut f32,
    d_initial_c: *mut f32,
) -> i32 {
    let grads = KerasGradPtrs {
        up: KerasUpstreamPtrs { dy, d_last_output, d_h_n, d_c_n },
        out: KerasGradOutPtrs { dx, d_kernel, d_recurrent_kernel, d_bias, d_initial_h, d_initial_c },
    };
    // SAFETY: the caller's contract, as `run_backward` requires it.
    guard("mrnn_keras_lstm_run_backward", || unsafe { run_backward(layer, tape, grads) })
}

/// Replaces the weights of a Keras LSTM handle; see `masked_rnn.h`.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_keras_lstm_new`] not yet freed (other threads may run it at
/// the same time, none may free it meanwhile); `kernel`, `recurrent_kernel` and `bias` are NULL or valid
/// for reading the tensor sizes the header documents, and no other thread writes them during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_keras_lstm_set_weights(
    layer: *mut MrnnKerasLstm,
    kernel: *const f32,
    recurrent_kernel: *const f32,
    bias: *const f32,
) -> i32 {
    let weights = KerasWeightPtrs { kernel, recurrent_kernel, bias };
    // SAFETY: the caller's contract, as `set_weights` requires it.
    guard("mrnn_keras_lstm_set_weights", || unsafe { set_weights(layer, weights) })
}

// ------------------------------------------------------------------------------------------------ ONNX

/// The gradients of the ONNX LSTM operator; see `masked_rnn.h` for the arguments.
///
/// # Safety
/// Every non-NULL pointer is valid for the tensor size the header documents for it (reads for the `const`
/// inputs, writes for the outputs) for the duration of the call, and no other thread writes the inputs
/// or touches the outputs meanwhile. NULL is always allowed: it is reported or means "absent".
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_lstm_onnx_backward(
    attrs: *const MrnnOnnxLstmAttrs,
    x: *const f32,
    w: *const f32,
    r: *const f32,
    b: *const f32,
    sequence_lens: *const i32,
    initial_h: *const f32,
    initial_c: *const f32,
    p: *const f32,
    dy: *const f32,
    dy_h: *const f32,
    dy_c: *const f32,
    dx: *mut f32,
    dw: *mut f32,
    dr: *mut f32,
    db: *mut f32,
    d_initial_h: *mut f32,
    d_initial_c: *mut f32,
    dp: *mut f32,
) -> i32 {
    let input = OnnxInputPtrs { x, sequence_lens, initial_h, initial_c };
    let weights = OnnxWeightPtrs { w, r, b, p };
    let grads = OnnxGradPtrs { dy, dy_h, dy_c, dx, dw, dr, db, d_initial_h, d_initial_c, dp };
    // SAFETY: the caller's contract, as `one_shot_backward` requires it.
    guard("mrnn_lstm_onnx_backward", || unsafe { one_shot_backward::<MrnnOnnxLstm>(attrs, input, weights, grads) })
}

/// Runs an ONNX LSTM handle as [`mrnn_onnx_lstm_run`] does and returns a tape for
/// [`mrnn_onnx_lstm_run_backward`]; see `masked_rnn.h`.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_onnx_lstm_new`] not yet freed (other threads may use it at the
/// same time, none may free it meanwhile); `tape` is NULL or valid for writing one pointer. Every other
/// non-NULL pointer is valid for the tensor size the header documents for it (reads for the `const`
/// inputs, writes for the outputs) for the duration of the call, and no other thread writes the inputs
/// or touches the outputs meanwhile.
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_onnx_lstm_run_train(
    layer: *const MrnnOnnxLstm,
    attrs: *const MrnnOnnxLstmAttrs,
    x: *const f32,
    sequence_lens: *const i32,
    initial_h: *const f32,
    initial_c: *const f32,
    y: *mut f32,
    y_h: *mut f32,
    y_c: *mut f32,
    tape: *mut *mut MrnnTape,
) -> i32 {
    let input = OnnxInputPtrs { x, sequence_lens, initial_h, initial_c };
    let output = OnnxOutputPtrs { y, y_h, y_c };
    // SAFETY: the caller's contract, as `run_train` requires it.
    guard("mrnn_onnx_lstm_run_train", || unsafe { run_train(layer, attrs, input, output, tape) })
}

/// The gradients of the ONNX run that made `tape`; see `masked_rnn.h`.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_onnx_lstm_new`] not yet freed, `tape` NULL or a tape (of either
/// kind) not yet freed (other threads may use either at the same time, none may free them meanwhile).
/// Every other non-NULL pointer is valid for the tensor size the header documents for it (reads for the
/// `const` inputs, writes for the outputs) for the duration of the call, and no other thread writes the
/// inputs or touches the outputs meanwhile.
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_onnx_lstm_run_backward(
    layer: *const MrnnOnnxLstm,
    tape: *const MrnnTape,
    dy: *const f32,
    dy_h: *const f32,
    dy_c: *const f32,
    dx: *mut f32,
    dw: *mut f32,
    dr: *mut f32,
    db: *mut f32,
    d_initial_h: *mut f32,
    d_initial_c: *mut f32,
    dp: *mut f32,
) -> i32 {
    let grads = OnnxGradPtrs { dy, dy_h, dy_c, dx, dw, dr, db, d_initial_h, d_initial_c, dp };
    // SAFETY: the caller's contract, as `run_backward` requires it.
    guard("mrnn_onnx_lstm_run_backward", || unsafe { run_backward(layer, tape, grads) })
}

/// Replaces the weights of an ONNX LSTM handle; see `masked_rnn.h`.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_onnx_lstm_new`] not yet freed (other threads may run it at the
/// same time, none may free it meanwhile); `w`, `r`, `b` and `p` are NULL or valid for reading the tensor
/// sizes the header documents, and no other thread writes them during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_onnx_lstm_set_weights(
    layer: *mut MrnnOnnxLstm,
    w: *const f32,
    r: *const f32,
    b: *const f32,
    p: *const f32,
) -> i32 {
    let weights = OnnxWeightPtrs { w, r, b, p };
    // SAFETY: the caller's contract, as `set_weights` requires it.
    guard("mrnn_onnx_lstm_set_weights", || unsafe { set_weights(layer, weights) })
}

/// Writes the bytes a tape holds to `*bytes`; see `masked_rnn.h`.
///
/// # Safety
/// `tape` is NULL or a live tape (from [`mrnn_keras_lstm_run_train`] or [`mrnn_onnx_lstm_run_train`]) that
/// nobody frees during the call;
/// `bytes` is NULL or valid for writing one `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_tape_bytes(tape: *const MrnnTape, bytes: *mut u64) -> i32 {
    guard("mrnn_tape_bytes", || {
        require("tape", tape)?;
        require("bytes", bytes)?;
        // SAFETY: a live tape (caller's contract), never mutated.
        let tape = unsafe { live("tape", tape, "a tape") }?;
        if !bytes.is_aligned() {
            return Err(Error::argument(format!("bytes ({bytes:p}) is not aligned to 8 bytes")));
        }
        // SAFETY: `bytes` is non-NULL and aligned (checked above) and valid for one write (caller's
        // contract); it cannot overlap the tape, which the library allocated.
        unsafe { bytes.write(tape.bytes() as u64) };
        Ok(())
    })
}

/// Frees a tape made by [`mrnn_keras_lstm_run_train`] or [`mrnn_onnx_lstm_run_train`]; NULL is a no-op.
///
/// # Safety
/// `tape` is NULL or a tape not yet freed, which no other thread uses during or after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_tape_free(tape: *mut MrnnTape) {
    // SAFETY: the caller's contract: a pointer from `Box::into_raw` (a `run_train`) or NULL.
    unsafe { free_boxed("mrnn_tape_free", tape) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr;

    fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / 16_777_216.0 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// A small problem: attrs, weights, inputs, upstream.
    struct Problem {
        a: MrnnKerasLstmAttrs,
        k: Vec<f32>,
        r: Vec<f32>,
        x: Vec<f32>,
        mask: Vec<u8>,
        h0: Vec<f32>,
        dy: Vec<f32>,
    }

    fn problem() -> Problem {
        let (b, t, i, h) = (3, 6, 2, 5);
        Problem {
            a: MrnnKerasLstmAttrs {
                batch_size: b as i64,
                seq_length: t as i64,
                input_size: i as i64,
                hidden_size: h as i64,
                go_backwards: 1,
                num_threads: 1,
                ..Default::default()
            },
            k: values(i * 4 * h, 1, 0.5),
            r: values(h * 4 * h, 2, 0.5),
            x: values(b * t * i, 3, 1.5),
            mask: (0..b * t).map(|k| u8::from(k % 4 != 1 && k < 2 * t)).collect(),
            h0: values(b * h, 4, 1.0),
            dy: values(b * t * h, 5, 1.0),
        }
    }

    /// `[dx, d_kernel, d_recurrent_kernel, d_bias, d_initial_h, d_initial_c]` of the one-shot (layer NULL)
    /// or of `run_backward` with `tape`.
    fn grads(p: &Problem, k: &[f32], layer: *mut MrnnKerasLstm, tape: *const MrnnTape) -> (i32, Vec<Vec<f32>>) {
        let (b, t, i, h) = (3, 6, 2, 5);
        let mut g: Vec<Vec<f32>> =
            [b * t * i, i * 4 * h, h * 4 * h, 4 * h, b * h, b * h].iter().map(|&n| vec![f32::NAN; n]).collect();
        let [dx, dk, dr, db, dh, dc] = &mut g[..] else { unreachable!() };
        // SAFETY: every buffer has the size of the problem's attributes.
        let status = unsafe {
            if layer.is_null() {
                mrnn_lstm_keras_backward(
                    &p.a,
                    p.x.as_ptr(),
                    p.mask.as_ptr(),
                    k.as_ptr(),
                    p.r.as_ptr(),
                    ptr::null(),
                    p.h0.as_ptr(),
                    ptr::null(),
                    p.dy.as_ptr(),
                    ptr::null(),
                    ptr::null(),
                    ptr::null(),
                    dx.as_mut_ptr(),
                    dk.as_mut_ptr(),
                    dr.as_mut_ptr(),
                    db.as_mut_ptr(),
                    dh.as_mut_ptr(),
                    dc.as_mut_ptr(),
                )
            } else {
                mrnn_keras_lstm_run_backward(
                    layer,
                    tape,
                    p.dy.as_ptr(),
                    ptr::null(),
                    ptr::null(),
                    ptr::null(),
                    dx.as_mut_ptr(),
                    dk.as_mut_ptr(),
                    dr.as_mut_ptr(),
                    db.as_mut_ptr(),
                    dh.as_mut_ptr(),
                    dc.as_mut_ptr(),
                )
            }
        };
        (status, g)
    }

    fn new_handle(p: &Problem) -> *mut MrnnKerasLstm {
        let mut out = ptr::null_mut();
        // SAFETY: the weights have the sizes of the attributes.
        let status = unsafe { mrnn_keras_lstm_new(&p.a, p.k.as_ptr(), p.r.as_ptr(), ptr::null(), &mut out) };
        assert_eq!(status, MRNN_OK, "{}", last_error_message());
        out
    }

    fn train(p: &Problem, layer: *mut MrnnKerasLstm) -> *mut MrnnTape {
        // Copies that are freed right after the call: the tape must not need them.
        let (x, mask, h0) = (p.x.clone(), p.mask.clone(), p.h0.clone());
        let mut tape = ptr::null_mut();
        // SAFETY: every buffer has the size of the problem's attributes.
        let status = unsafe {
            mrnn_keras_lstm_run_train(
                layer,
                &p.a,
                x.as_ptr(),
                mask.as_ptr(),
                h0.as_ptr(),
                ptr::null(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                &mut tape,
            )
        };
        assert_eq!(status, MRNN_OK, "{}", last_error_message());
        tape
    }

    fn bits(g: &[Vec<f32>]) -> Vec<Vec<u32>> {
        g.iter().map(|v| v.iter().map(|x| x.to_bits()).collect()).collect()
    }

    #[test]
    fn handle_gradients_equal_one_shot_and_stale_tapes_are_refused() {
        let p = problem();
        let (layer, other) = (new_handle(&p), new_handle(&p));
        let tape = train(&p, layer);
        let (s1, one_shot) = grads(&p, &p.k, ptr::null_mut(), ptr::null());
        let (s2, run) = grads(&p, &p.k, layer, tape);
        assert_eq!((s1, s2), (MRNN_OK, MRNN_OK), "{}", last_error_message());
        assert_eq!(bits(&one_shot), bits(&run));
        // dx is +0.0 at masked steps (the last sequence is fully masked).
        assert!(one_shot[0][2 * 6 * 2..].iter().all(|v| v.to_bits() == 0));

        let (status, _) = grads(&p, &p.k, other, tape);
        assert_eq!(status, MRNN_ERR_BAD_ARGUMENT);
        assert!(last_error_message().contains("another handle"), "{}", last_error_message());

        let k2 = values(p.k.len(), 9, 0.5);
        // SAFETY: the weights have the handle's sizes.
        let status = unsafe { mrnn_keras_lstm_set_weights(layer, k2.as_ptr(), p.r.as_ptr(), ptr::null()) };
        assert_eq!(status, MRNN_OK);
        let (status, g) = grads(&p, &k2, layer, tape);
        assert_eq!(status, MRNN_ERR_BAD_ARGUMENT);
        assert!(last_error_message().contains("stale"), "{}", last_error_message());
        assert!(g.iter().flatten().all(|v| v.is_nan()), "a refused backward wrote an output");

        let fresh = train(&p, layer);
        let (s1, one_shot) = grads(&p, &k2, ptr::null_mut(), ptr::null());
        let (s2, run) = grads(&p, &k2, layer, fresh);
        assert_eq!((s1, s2), (MRNN_OK, MRNN_OK), "{}", last_error_message());
        assert_eq!(bits(&one_shot), bits(&run));
        let mut bytes = 0_u64;
        // SAFETY: a live tape and a u64 slot.
        assert_eq!(unsafe { mrnn_tape_bytes(fresh, &mut bytes) }, MRNN_OK);
        assert!(bytes as usize >= p.x.len() * 4 + p.h0.len() * 4, "{bytes}");
        // SAFETY: live handles and tapes, each freed once (tapes after their handles); NULL is a no-op.
        unsafe {
            mrnn_keras_lstm_free(layer);
            mrnn_keras_lstm_free(other);
            mrnn_tape_free(tape);
            mrnn_tape_free(fresh);
            mrnn_tape_free(ptr::null_mut());
        }
    }

    /// A bidirectional ONNX problem with lengths, peepholes (or not) and clip, in `layout`.
    struct OnnxProblem {
        a: MrnnOnnxLstmAttrs,
        w: Vec<f32>,
        r: Vec<f32>,
        b: Vec<f32>,
        p: Option<Vec<f32>>,
        x: Vec<f32>,
        lens: Vec<i32>,
        c0: Vec<f32>,
        dy: Vec<f32>,
        dy_h: Vec<f32>,
    }

    const OT: usize = 5;
    const OB: usize = 3;
    const OI: usize = 2;
    const OH: usize = 4;

    fn onnx_problem(layout: i32, peepholes: bool) -> OnnxProblem {
        OnnxProblem {
            a: MrnnOnnxLstmAttrs {
                seq_length: OT as i64,
                batch_size: OB as i64,
                input_size: OI as i64,
                hidden_size: OH as i64,
                direction: 2,
                layout,
                has_clip: 1,
                clip: 3.0,
                num_threads: 1,
                ..Default::default()
            },
            w: values(2 * 4 * OH * OI, 11, 0.5),
            r: values(2 * 4 * OH * OH, 12, 0.5),
            b: values(2 * 8 * OH, 13, 0.3),
            p: peepholes.then(|| values(2 * 3 * OH, 14, 0.3)),
            x: values(OT * OB * OI, 15, 1.5),
            lens: vec![5, 0, 3],
            c0: values(2 * OB * OH, 16, 1.0),
            dy: values(OT * 2 * OB * OH, 17, 1.0),
            dy_h: values(2 * OB * OH, 18, 1.0),
        }
    }

    fn opt_ptr(v: &Option<Vec<f32>>) -> *const f32 {
        v.as_ref().map_or(ptr::null(), |v| v.as_ptr())
    }

    /// `[dx, dw, dr, db, d_initial_h, d_initial_c, dp]` of the one-shot (layer NULL) or of `run_backward`
    /// with `tape`; `dp` is asked for when `want_dp`.
    fn onnx_grads(
        p: &OnnxProblem,
        w: &[f32],
        layer: *mut MrnnOnnxLstm,
        tape: *const MrnnTape,
        want_dp: bool,
    ) -> (i32, Vec<Vec<f32>>) {
        let sizes = [OT * OB * OI, 2 * 4 * OH * OI, 2 * 4 * OH * OH, 2 * 8 * OH, 2 * OB * OH, 2 * OB * OH, 2 * 3 * OH];
        let mut g: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![f32::NAN; n]).collect();
        let [dx, dw, dr, db, dh, dc, dp] = &mut g[..] else { unreachable!() };
        let dp = if want_dp { dp.as_mut_ptr() } else { ptr::null_mut() };
        // SAFETY: every buffer has the size of the problem's attributes.
        let status = unsafe {
            if layer.is_null() {
                mrnn_lstm_onnx_backward(
                    &p.a,
                    p.x.as_ptr(),
                    w.as_ptr(),
                    p.r.as_ptr(),
                    p.b.as_ptr(),
                    p.lens.as_ptr(),
                    ptr::null(),
                    p.c0.as_ptr(),
                    opt_ptr(&p.p),
                    p.dy.as_ptr(),
                    p.dy_h.as_ptr(),
                    ptr::null(),
                    dx.as_mut_ptr(),
                    dw.as_mut_ptr(),
                    dr.as_mut_ptr(),
                    db.as_mut_ptr(),
                    dh.as_mut_ptr(),
                    dc.as_mut_ptr(),
                    dp,
                )
            } else {
                mrnn_onnx_lstm_run_backward(
                    layer,
                    tape,
                    p.dy.as_ptr(),
                    p.dy_h.as_ptr(),
                    ptr::null(),
                    dx.as_mut_ptr(),
                    dw.as_mut_ptr(),
                    dr.as_mut_ptr(),
                    db.as_mut_ptr(),
                    dh.as_mut_ptr(),
                    dc.as_mut_ptr(),
                    dp,
                )
            }
        };
        (status, g)
    }

    fn new_onnx_handle(p: &OnnxProblem) -> *mut MrnnOnnxLstm {
        let mut out = ptr::null_mut();
        // SAFETY: the weights have the sizes of the attributes.
        let status =
            unsafe { mrnn_onnx_lstm_new(&p.a, p.w.as_ptr(), p.r.as_ptr(), p.b.as_ptr(), opt_ptr(&p.p), &mut out) };
        assert_eq!(status, MRNN_OK, "{}", last_error_message());
        out
    }

    fn onnx_train(p: &OnnxProblem, layer: *mut MrnnOnnxLstm) -> *mut MrnnTape {
        // Copies that are freed right after the call: the tape must not need them.
        let (x, lens, c0) = (p.x.clone(), p.lens.clone(), p.c0.clone());
        let mut tape = ptr::null_mut();
        // SAFETY: every buffer has the size of the problem's attributes.
        let status = unsafe {
            mrnn_onnx_lstm_run_train(
                layer,
                &p.a,
                x.as_ptr(),
                lens.as_ptr(),
                ptr::null(),
                c0.as_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                &mut tape,
            )
        };
        assert_eq!(status, MRNN_OK, "{}", last_error_message());
        tape
    }

    #[test]
    fn onnx_handle_gradients_equal_one_shot_and_foreign_tapes_are_refused() {
        for layout in [0, 1] {
            let p = onnx_problem(layout, true);
            let (layer, other) = (new_onnx_handle(&p), new_onnx_handle(&p));
            let tape = onnx_train(&p, layer);
            let (s1, one_shot) = onnx_grads(&p, &p.w, ptr::null_mut(), ptr::null(), true);
            let (s2, run) = onnx_grads(&p, &p.w, layer, tape, true);
            assert_eq!((s1, s2), (MRNN_OK, MRNN_OK), "{}", last_error_message());
            assert_eq!(bits(&one_shot), bits(&run), "layout {layout}");
            assert!(one_shot.iter().flatten().all(|v| v.is_finite()));

            let (status, _) = onnx_grads(&p, &p.w, other, tape, true);
            assert_eq!(status, MRNN_ERR_BAD_ARGUMENT);
            assert!(last_error_message().contains("another handle"), "{}", last_error_message());

            // A Keras tape on the ONNX handle, the ONNX tape on a Keras handle.
            let kp = problem();
            let keras = new_handle(&kp);
            let keras_tape = train(&kp, keras);
            let (status, g) = onnx_grads(&p, &p.w, layer, keras_tape, true);
            assert_eq!(status, MRNN_ERR_BAD_ARGUMENT);
            let message = last_error_message();
            assert!(message.contains("another kind") && message.contains("Keras LSTM handle"), "{message}");
            assert!(g.iter().flatten().all(|v| v.is_nan()), "a refused backward wrote an output");
            let (status, _) = grads(&kp, &kp.k, keras, tape);
            assert_eq!(status, MRNN_ERR_BAD_ARGUMENT);
            assert!(last_error_message().contains("ONNX LSTM handle"), "{}", last_error_message());

            let w2 = values(p.w.len(), 19, 0.5);
            // SAFETY: the weights have the handle's sizes; p NULL: no peepholes from now on.
            let status =
                unsafe { mrnn_onnx_lstm_set_weights(layer, w2.as_ptr(), p.r.as_ptr(), p.b.as_ptr(), ptr::null()) };
            assert_eq!(status, MRNN_OK);
            let (status, _) = onnx_grads(&p, &w2, layer, tape, false);
            assert_eq!(status, MRNN_ERR_BAD_ARGUMENT);
            assert!(last_error_message().contains("stale"), "{}", last_error_message());

            let fresh = onnx_train(&p, layer);
            let q = OnnxProblem { p: None, ..onnx_problem(layout, false) };
            let (s1, one_shot) = onnx_grads(&q, &w2, ptr::null_mut(), ptr::null(), false);
            let (s2, run) = onnx_grads(&q, &w2, layer, fresh, false);
            assert_eq!((s1, s2), (MRNN_OK, MRNN_OK), "{}", last_error_message());
            assert_eq!(bits(&one_shot), bits(&run));
            // dp without peepholes: refused by both, nothing written.
            for (status, g) in
                [onnx_grads(&q, &w2, ptr::null_mut(), ptr::null(), true), onnx_grads(&q, &w2, layer, fresh, true)]
            {
                assert_eq!(status, MRNN_ERR_BAD_ARGUMENT);
                assert!(last_error_message().contains("no peepholes"), "{}", last_error_message());
                assert!(g.iter().flatten().all(|v| v.is_nan()), "a refused backward wrote an output");
            }
            let mut bytes = 0_u64;
            // SAFETY: a live tape and a u64 slot.
            assert_eq!(unsafe { mrnn_tape_bytes(fresh, &mut bytes) }, MRNN_OK);
            assert!(bytes as usize >= (p.x.len() + p.c0.len() + p.lens.len()) * 4, "{bytes}");
            // SAFETY: live handles and tapes, each freed once (tapes after their handles).
            unsafe {
                mrnn_onnx_lstm_free(layer);
                mrnn_onnx_lstm_free(other);
                mrnn_keras_lstm_free(keras);
                mrnn_tape_free(tape);
                mrnn_tape_free(fresh);
                mrnn_tape_free(keras_tape);
            }
        }
    }

    #[test]
    fn handle_ids_are_unique_and_generations_count_replacements() {
        let ids: Vec<u64> = (0..4).map(|_| super::super::handle::next_handle_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let current = super::super::handle::Current::new(1_u8);
        assert_eq!(current.snapshot().1, 0);
        let (old, _) = current.snapshot();
        assert_eq!(current.replace(2), 1);
        assert_eq!(current.replace(3), 2);
        let (layer, generation) = current.snapshot();
        assert_eq!((*old, *layer, generation), (1, 3, 2), "a snapshot keeps its layer");
    }
}
