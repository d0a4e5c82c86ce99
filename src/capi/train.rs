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
//! leaves `*tape` unchanged). With every gradient output NULL, a backward validates its arguments and
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

use super::handle::{keras_attrs_match, onnx_attrs_match, with_handle_scratch, MrnnKerasLstm, MrnnOnnxLstm, OnnxNode};
use super::*;
use crate::frameworks::keras::{KerasGrads, KerasTape, KerasUpstream};
use crate::frameworks::onnx::{OnnxGrads, OnnxTape, OnnxUpstream};

/// What one training run keeps for its backward (`MrnnTape` of `masked_rnn.h`), opaque to C.
#[derive(Debug)]
pub struct MrnnTape {
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

/// The kind-specific part of a tape.
#[derive(Debug)]
enum Record {
    /// A run of a Keras LSTM handle.
    Keras(KerasRecord),
    /// A run of an ONNX LSTM handle.
    Onnx(OnnxRecord),
}

/// What a Keras LSTM run keeps: copies of its inputs (the caller may reuse their buffers) and the
/// [`KerasTape`] of its valid steps.
#[derive(Debug)]
struct KerasRecord {
    /// `B`, `T` and `num_threads` of the run (the backward uses the same thread count).
    b: usize,
    t: usize,
    threads: usize,
    /// `x [B,T,I]`.
    x: Vec<f32>,
    /// The valid steps (from the mask).
    view: SeqView,
    /// `[B,H]` each, as given (`None`: NULL).
    initial_h: Option<Vec<f32>>,
    initial_c: Option<Vec<f32>>,
    tape: KerasTape,
}

impl KerasRecord {
    /// Bytes held (the vectors' capacities, the view's runs and ranges, the tape).
    fn bytes(&self) -> usize {
        let floats = self.x.capacity()
            + self.initial_h.as_ref().map_or(0, Vec::capacity)
            + self.initial_c.as_ref().map_or(0, Vec::capacity);
        let runs: usize = (0..self.view.batch()).map(|s| self.view.run_count(s)).sum();
        floats * 4
            + runs * std::mem::size_of::<crate::view::Run>()
            + self.view.batch() * 2 * std::mem::size_of::<usize>()
            + self.tape.bytes()
    }
}

/// What an ONNX LSTM run keeps: copies of its inputs (the caller may reuse their buffers) and the
/// [`OnnxTape`] of its valid steps.
#[derive(Debug)]
struct OnnxRecord {
    /// `T`, `B` and `num_threads` of the run (the backward uses the same thread count).
    t: usize,
    b: usize,
    threads: usize,
    /// `X` in the handle's layout.
    x: Vec<f32>,
    /// `sequence_lens [B]` as given (`None`: NULL, every sequence `T` steps).
    sequence_lens: Option<Vec<i32>>,
    /// `[D,B,H]` / `[B,D,H]` each, as given (`None`: NULL).
    initial_h: Option<Vec<f32>>,
    initial_c: Option<Vec<f32>>,
    tape: OnnxTape,
}

impl OnnxRecord {
    /// Bytes held (the vectors' capacities and the tape).
    fn bytes(&self) -> usize {
        let floats = self.x.capacity()
            + self.initial_h.as_ref().map_or(0, Vec::capacity)
            + self.initial_c.as_ref().map_or(0, Vec::capacity);
        (floats + self.sequence_lens.as_ref().map_or(0, Vec::capacity)) * 4 + self.tape.bytes()
    }
}

impl MrnnTape {
    /// The kind of handle that made the tape, as messages name it.
    fn kind(&self) -> &'static str {
        match self.record {
            Record::Keras(_) => "Keras LSTM",
            Record::Onnx(_) => "ONNX LSTM",
        }
    }

    /// `Err(BadArgument)` for a tape given to a handle of another kind (`kind`, id `id`).
    fn other_kind(&self, kind: &str, id: u64) -> Error {
        Error::argument(format!(
            "the tape was made by another handle, of another kind: {} handle #{}; this is {kind} handle #{id}",
            self.kind(),
            self.owner
        ))
    }

    /// Checks that handle `id` made the tape with its weights generation `generation` (`set_weights` and
    /// `run_train` name the functions of that kind, for the message).
    fn check_made_by(&self, id: u64, generation: u64, set_weights: &str, run_train: &str) -> Result<()> {
        if self.owner != id {
            return Err(Error::argument(format!(
                "the tape was made by another handle (handle #{}; this is handle #{id})",
                self.owner
            )));
        }
        if self.generation != generation {
            return Err(Error::argument(format!(
                "the tape is stale: it was made with weights generation {} and {set_weights} has since replaced \
                 them (generation {generation}); run {run_train} again",
                self.generation
            )));
        }
        Ok(())
    }

    /// The tape's Keras record, after checking that `handle` made it with its current weights
    /// (`generation`, from the snapshot the backward will compute with).
    fn keras_for(&self, handle: &MrnnKerasLstm, generation: u64) -> Result<&KerasRecord> {
        let Record::Keras(record) = &self.record else {
            return Err(self.other_kind("Keras LSTM", handle.id));
        };
        self.check_made_by(handle.id, generation, "mrnn_keras_lstm_set_weights", "mrnn_keras_lstm_run_train")?;
        Ok(record)
    }

    /// The tape's ONNX record, after checking that `handle` made it with its current weights.
    fn onnx_for(&self, handle: &MrnnOnnxLstm, generation: u64) -> Result<&OnnxRecord> {
        let Record::Onnx(record) = &self.record else {
            return Err(self.other_kind("ONNX LSTM", handle.id));
        };
        self.check_made_by(handle.id, generation, "mrnn_onnx_lstm_set_weights", "mrnn_onnx_lstm_run_train")?;
        Ok(record)
    }

    /// Bytes held by the tape.
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + match &self.record {
                Record::Keras(r) => r.bytes(),
                Record::Onnx(r) => r.bytes(),
            }
    }
}

/// The initial state of a Keras run from its two optional halves: a missing half is zeros (`zeros`,
/// resized to `n` floats), both missing is `None`.
fn initial_state<'a>(
    h: Option<&'a [f32]>,
    c: Option<&'a [f32]>,
    zeros: &'a mut Vec<f32>,
    n: usize,
) -> Option<InitialState<'a>> {
    match (h, c) {
        (None, None) => None,
        (Some(h), Some(c)) => Some(InitialState { h, c }),
        (h, c) => {
            zeros.clear();
            zeros.resize(n, 0.0);
            let zeros: &'a [f32] = zeros;
            Some(InitialState { h: h.unwrap_or(zeros), c: c.unwrap_or(zeros) })
        }
    }
}

/// The valid steps of a `[B,T]` mask (`None`: all valid).
fn view_of(mask: Option<&[u8]>, b: usize, t: usize) -> Result<SeqView> {
    match mask {
        Some(m) => SeqView::from_mask_bytes(m, b, t),
        None => Ok(SeqView::full(b, t)),
    }
}

/// Whether any gradient is asked for (none: the call validates and computes nothing).
fn wants_any(grads: &KerasGrads<'_>) -> bool {
    grads.dx.is_some()
        || grads.d_kernel.is_some()
        || grads.d_recurrent_kernel.is_some()
        || grads.d_bias.is_some()
        || grads.d_initial_h.is_some()
        || grads.d_initial_c.is_some()
}

/// Element counts of a Keras layer's tensors (step 3 of the validation).
struct KerasSizes {
    gates: usize,
    x: usize,
    mask: usize,
    kernel: usize,
    recurrent: usize,
    state: usize,
    y: usize,
}

impl KerasSizes {
    fn new(b: usize, t: usize, i: usize, h: usize) -> Result<Self> {
        let gates = checked_product(&[4, h], "bias [4H]")?;
        Ok(KerasSizes {
            gates,
            x: checked_product(&[b, t, i], "x [B,T,I]")?,
            mask: checked_product(&[b, t], "mask [B,T]")?,
            kernel: checked_product(&[i, gates], "kernel [I,4H]")?,
            recurrent: checked_product(&[h, gates], "recurrent_kernel [H,4H]")?,
            state: checked_product(&[b, h], "state [B,H]")?,
            y: checked_product(&[b, t, h], "y [B,T,H]")?,
        })
    }
}

/// The upstream gradients and gradient outputs of a Keras backward, as raw caller pointers.
#[derive(Clone, Copy)]
struct KerasGradPtrs {
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
}

impl KerasGradPtrs {
    /// Their extents (step 4), to check with the other buffers of the call.
    fn extents(&self, n: &KerasSizes) -> Result<[Option<Extent>; 10]> {
        Ok([
            Extent::new("dy", self.dy, n.y, false)?,
            Extent::new("d_last_output", self.d_last_output, n.state, false)?,
            Extent::new("d_h_n", self.d_h_n, n.state, false)?,
            Extent::new("d_c_n", self.d_c_n, n.state, false)?,
            Extent::new("dx", self.dx, n.x, true)?,
            Extent::new("d_kernel", self.d_kernel, n.kernel, true)?,
            Extent::new("d_recurrent_kernel", self.d_recurrent_kernel, n.recurrent, true)?,
            Extent::new("d_bias", self.d_bias, n.gates, true)?,
            Extent::new("d_initial_h", self.d_initial_h, n.state, true)?,
            Extent::new("d_initial_c", self.d_initial_c, n.state, true)?,
        ])
    }

    /// The slices.
    ///
    /// # Safety
    /// [`extents`](Self::extents) with the same sizes succeeded, and so did `check_disjoint` over them and
    /// every other buffer of the call; each non-NULL pointer is valid for its size for `'a` (the caller's
    /// contract), and nothing else accesses the outputs during `'a`.
    unsafe fn slices<'a>(&self, n: &KerasSizes) -> (KerasUpstream<'a>, KerasGrads<'a>) {
        // SAFETY (every `input`/`output` call): forwarded from this function's contract: aligned,
        // non-wrapping, bounded by `checked_product`, valid, and the outputs alias nothing.
        unsafe {
            (
                KerasUpstream {
                    dy: input(self.dy, n.y),
                    d_last_output: input(self.d_last_output, n.state),
                    d_h_n: input(self.d_h_n, n.state),
                    d_c_n: input(self.d_c_n, n.state),
                },
                KerasGrads {
                    dx: output(self.dx, n.x),
                    d_kernel: output(self.d_kernel, n.kernel),
                    d_recurrent_kernel: output(self.d_recurrent_kernel, n.recurrent),
                    d_bias: output(self.d_bias, n.gates),
                    d_initial_h: output(self.d_initial_h, n.state),
                    d_initial_c: output(self.d_initial_c, n.state),
                },
            )
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
    guard("mrnn_lstm_keras_backward", || {
        // 1. NULL.
        require("attrs", attrs)?;
        require("x", x)?;
        require("kernel", kernel)?;
        require("recurrent_kernel", recurrent_kernel)?;
        // SAFETY: `attrs` is non-NULL (checked above) and points to one readable `MrnnKerasLstmAttrs`
        // (caller's contract); read_unaligned needs no alignment.
        let a = unsafe { attrs.read_unaligned() };

        // 2. Values.
        let KerasArgs { options, b, t, i, h, threads } = keras_args(&a)?;

        // 3. Sizes.
        let n = KerasSizes::new(b, t, i, h)?;

        // 4. Pointers.
        let grads = KerasGradPtrs {
            dy,
            d_last_output,
            d_h_n,
            d_c_n,
            dx,
            d_kernel,
            d_recurrent_kernel,
            d_bias,
            d_initial_h,
            d_initial_c,
        };
        let inputs = [
            Extent::new("x", x, n.x, false)?,
            Extent::new("mask", mask, n.mask, false)?,
            Extent::new("kernel", kernel, n.kernel, false)?,
            Extent::new("recurrent_kernel", recurrent_kernel, n.recurrent, false)?,
            Extent::new("bias", bias, n.gates, false)?,
            Extent::new("initial_h", initial_h, n.state, false)?,
            Extent::new("initial_c", initial_c, n.state, false)?,
        ];
        let extents: Vec<Option<Extent>> = inputs.into_iter().chain(grads.extents(&n)?).collect();
        check_disjoint(&extents)?;

        // SAFETY (every `input` call and `slices`): each pointer is NULL, or was checked aligned and
        // non-wrapping by `Extent::new` with the very length passed here, which `checked_product` bounds
        // to isize::MAX bytes; the caller guarantees the memory is valid for that length; `check_disjoint`
        // proved no output overlaps any other buffer, so the `&mut` slices alias nothing.
        let (x, kernel, recurrent_kernel) = unsafe {
            (
                input(x, n.x).ok_or_else(|| null("x"))?,
                input(kernel, n.kernel).ok_or_else(|| null("kernel"))?,
                input(recurrent_kernel, n.recurrent).ok_or_else(|| null("recurrent_kernel"))?,
            )
        };
        // SAFETY: as above.
        let (mask, bias, initial_h, initial_c) = unsafe {
            (input(mask, n.mask), input(bias, n.gates), input(initial_h, n.state), input(initial_c, n.state))
        };
        // SAFETY: as above.
        let (up, out) = unsafe { grads.slices(&n) };
        if !wants_any(&out) {
            // Validated; nothing asked for, so nothing is computed.
            return Ok(());
        }

        let layer = KerasLstm::new(LstmWeights::from_keras(i, h, kernel, recurrent_kernel, bias)?, options)?;
        let view = view_of(mask, b, t)?;
        with_thread_scratch(|scratch| {
            let Scratch { workspace, zeros } = scratch;
            let initial = initial_state(initial_h, initial_c, zeros, n.state);
            let mut tape = KerasTape::new();
            layer.forward_train(x, &view, initial, KerasOutputs::default(), &mut tape, threads, workspace)?;
            layer.backward(x, &view, initial, &tape, up, out, threads)?;
            Ok(())
        })
    })
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
    layer: *mut MrnnKerasLstm,
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
    guard("mrnn_keras_lstm_run_train", || {
        // 1. NULL.
        require("layer", layer)?;
        require("attrs", attrs)?;
        require("x", x)?;
        require("tape", tape)?;
        if !layer.is_aligned() {
            return Err(Error::argument(format!("layer ({layer:p}) is not a handle: misaligned")));
        }
        // SAFETY: `layer` is non-NULL and aligned (checked above) and, by the caller's contract, a live
        // handle from `mrnn_keras_lstm_new` that nobody frees during this call; the C ABI only ever takes
        // `&` to it (interior mutability), so this shared reference aliases no `&mut`.
        let handle = unsafe { &*layer };
        // SAFETY: `attrs` is non-NULL (checked above) and points to one readable `MrnnKerasLstmAttrs`
        // (caller's contract); read_unaligned needs no alignment.
        let a = unsafe { attrs.read_unaligned() };

        // 2. Values, then agreement with the handle.
        let KerasArgs { options, b, t, i, h, threads } = keras_args(&a)?;
        keras_attrs_match(&a, &options, handle)?;

        // 3. Sizes.
        let n = KerasSizes::new(b, t, i, h)?;

        // 4. Pointers.
        let extents = [
            Extent::new("x", x, n.x, false)?,
            Extent::new("mask", mask, n.mask, false)?,
            Extent::new("initial_h", initial_h, n.state, false)?,
            Extent::new("initial_c", initial_c, n.state, false)?,
            Extent::new("y", y, n.y, true)?,
            Extent::new("last_output", last_output, n.state, true)?,
            Extent::new("h_n", h_n, n.state, true)?,
            Extent::new("c_n", c_n, n.state, true)?,
            Extent::new("tape", tape, 1, true)?,
        ];
        check_disjoint(&extents)?;

        // SAFETY (every `input`/`output` call below): each pointer is NULL, or was checked aligned and
        // non-wrapping by `Extent::new` with the very length passed here, which `checked_product` bounds
        // to isize::MAX bytes; the caller guarantees the memory is valid for that length; `check_disjoint`
        // proved no output overlaps any other buffer, so the `&mut` slices alias nothing.
        let (x, mask, initial_h, initial_c) = unsafe {
            (
                input(x, n.x).ok_or_else(|| null("x"))?,
                input(mask, n.mask),
                input(initial_h, n.state),
                input(initial_c, n.state),
            )
        };
        // SAFETY: as above.
        let out = unsafe {
            KerasOutputs {
                y: output(y, n.y),
                last_output: output(last_output, n.state),
                h_n: output(h_n, n.state),
                c_n: output(c_n, n.state),
            }
        };

        // The tape's own copies, so that the caller may reuse its buffers once this returns.
        let mut record = KerasRecord {
            b,
            t,
            threads,
            x: x.to_vec(),
            view: view_of(mask, b, t)?,
            initial_h: initial_h.map(<[f32]>::to_vec),
            initial_c: initial_c.map(<[f32]>::to_vec),
            tape: KerasTape::new(),
        };
        let (layer, generation) = handle.current.snapshot();
        with_handle_scratch(&handle.scratch, |scratch| {
            let Scratch { workspace, zeros } = scratch;
            let KerasRecord { x, view, initial_h, initial_c, tape, .. } = &mut record;
            let initial = initial_state(initial_h.as_deref(), initial_c.as_deref(), zeros, n.state);
            layer.forward_train(x, view, initial, out, tape, threads, workspace).map(drop)
        })?;
        let made = Box::new(MrnnTape { owner: handle.id, generation, record: Record::Keras(record) });
        // SAFETY: `tape` is non-NULL, aligned (`Extent::new`) and valid for one write (caller's contract);
        // it overlaps none of the other buffers (`check_disjoint`).
        unsafe { tape.write(Box::into_raw(made)) };
        Ok(())
    })
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
    layer: *mut MrnnKerasLstm,
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
    guard("mrnn_keras_lstm_run_backward", || {
        // 1. NULL.
        require("layer", layer)?;
        require("tape", tape)?;
        if !layer.is_aligned() {
            return Err(Error::argument(format!("layer ({layer:p}) is not a handle: misaligned")));
        }
        if !tape.is_aligned() {
            return Err(Error::argument(format!("tape ({tape:p}) is not a tape: misaligned")));
        }
        // SAFETY: `layer` is non-NULL and aligned (checked above) and, by the caller's contract, a live
        // handle from `mrnn_keras_lstm_new` that nobody frees during this call; the C ABI only ever takes
        // `&` to it, so this shared reference aliases no `&mut`.
        let handle = unsafe { &*layer };
        // SAFETY: likewise a live tape from `mrnn_keras_lstm_run_train` (caller's contract), which the C
        // ABI never mutates after creating it.
        let tape = unsafe { &*tape };

        // 2. Values: the tape is this handle's, made with its current weights.
        let (layer, generation) = handle.current.snapshot();
        let record = tape.keras_for(handle, generation)?;
        let KerasRecord { b, t, threads, .. } = *record;
        let (i, h) = (layer.weights().input_size(), layer.units());

        // 3. Sizes (checked at the run that made the tape: they cannot overflow now).
        let n = KerasSizes::new(b, t, i, h)?;

        // 4. Pointers.
        let grads = KerasGradPtrs {
            dy,
            d_last_output,
            d_h_n,
            d_c_n,
            dx,
            d_kernel,
            d_recurrent_kernel,
            d_bias,
            d_initial_h,
            d_initial_c,
        };
        check_disjoint(&grads.extents(&n)?)?;

        // SAFETY: `extents` and `check_disjoint` succeeded with these sizes just above; the caller
        // guarantees validity for the documented sizes.
        let (up, out) = unsafe { grads.slices(&n) };
        if !wants_any(&out) {
            return Ok(());
        }
        let mut zeros = Vec::new();
        let initial = initial_state(record.initial_h.as_deref(), record.initial_c.as_deref(), &mut zeros, n.state);
        layer.backward(&record.x, &record.view, initial, &record.tape, up, out, threads)?;
        Ok(())
    })
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
    guard("mrnn_keras_lstm_set_weights", || {
        // 1. NULL.
        require("layer", layer)?;
        require("kernel", kernel)?;
        require("recurrent_kernel", recurrent_kernel)?;
        if !layer.is_aligned() {
            return Err(Error::argument(format!("layer ({layer:p}) is not a handle: misaligned")));
        }
        // SAFETY: `layer` is non-NULL and aligned (checked above) and, by the caller's contract, a live
        // handle from `mrnn_keras_lstm_new` that nobody frees during this call; the C ABI only ever takes
        // `&` to it (the weights are replaced through its lock), so this aliases no `&mut`.
        let handle = unsafe { &*layer };

        // 2. and 3.: the sizes are the handle's (validated at creation).
        let (i, h) = (dim("input_size", handle.attrs.input_size)?, dim("hidden_size", handle.attrs.hidden_size)?);
        let gates = checked_product(&[4, h], "bias [4H]")?;
        let n_kernel = checked_product(&[i, gates], "kernel [I,4H]")?;
        let n_recurrent = checked_product(&[h, gates], "recurrent_kernel [H,4H]")?;

        // 4. Pointers.
        let extents = [
            Extent::new("kernel", kernel, n_kernel, false)?,
            Extent::new("recurrent_kernel", recurrent_kernel, n_recurrent, false)?,
            Extent::new("bias", bias, gates, false)?,
        ];
        check_disjoint(&extents)?;

        // SAFETY: each pointer is NULL or was checked aligned and non-wrapping by `Extent::new` with the
        // very length passed here, bounded to isize::MAX bytes by `checked_product`; the caller guarantees
        // the memory is valid for that length; these are inputs only.
        let (kernel, recurrent_kernel, bias) = unsafe {
            (
                input(kernel, n_kernel).ok_or_else(|| null("kernel"))?,
                input(recurrent_kernel, n_recurrent).ok_or_else(|| null("recurrent_kernel"))?,
                input(bias, gates),
            )
        };
        let packed = KerasLstm::new(LstmWeights::from_keras(i, h, kernel, recurrent_kernel, bias)?, handle.options)?;
        handle.current.replace(packed);
        Ok(())
    })
}

// ------------------------------------------------------------------------------------------------ ONNX

/// Whether any gradient is asked for (none: the call validates and computes nothing).
fn onnx_wants_any(grads: &OnnxGrads<'_>) -> bool {
    grads.dx.is_some()
        || grads.dw.is_some()
        || grads.dr.is_some()
        || grads.db.is_some()
        || grads.d_initial_h.is_some()
        || grads.d_initial_c.is_some()
        || grads.dp.is_some()
}

/// Element counts of an ONNX node's tensors (step 3 of the validation; the same products in both layouts).
struct OnnxSizes {
    x: usize,
    w: usize,
    r: usize,
    b: usize,
    p: usize,
    state: usize,
    y: usize,
}

impl OnnxSizes {
    fn new(t: usize, batch: usize, i: usize, h: usize, d: usize) -> Result<Self> {
        Ok(OnnxSizes {
            x: checked_product(&[t, batch, i], "X [T,B,I]")?,
            w: checked_product(&[d, 4, h, i], "W [D,4H,I]")?,
            r: checked_product(&[d, 4, h, h], "R [D,4H,H]")?,
            b: checked_product(&[d, 8, h], "B [D,8H]")?,
            p: checked_product(&[d, 3, h], "P [D,3H]")?,
            state: checked_product(&[d, batch, h], "state [D,B,H]")?,
            y: checked_product(&[t, d, batch, h], "Y [T,D,B,H]")?,
        })
    }
}

/// The upstream gradients and gradient outputs of an ONNX backward, as raw caller pointers.
#[derive(Clone, Copy)]
struct OnnxGradPtrs {
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
}

impl OnnxGradPtrs {
    /// Their extents (step 4), to check with the other buffers of the call.
    fn extents(&self, n: &OnnxSizes) -> Result<[Option<Extent>; 10]> {
        Ok([
            Extent::new("dy", self.dy, n.y, false)?,
            Extent::new("dy_h", self.dy_h, n.state, false)?,
            Extent::new("dy_c", self.dy_c, n.state, false)?,
            Extent::new("dx", self.dx, n.x, true)?,
            Extent::new("dw", self.dw, n.w, true)?,
            Extent::new("dr", self.dr, n.r, true)?,
            Extent::new("db", self.db, n.b, true)?,
            Extent::new("d_initial_h", self.d_initial_h, n.state, true)?,
            Extent::new("d_initial_c", self.d_initial_c, n.state, true)?,
            Extent::new("dp", self.dp, n.p, true)?,
        ])
    }

    /// The last pointer check: `dp` only for an operator with peepholes (`without` says why there are none).
    fn check_dp(&self, peepholes: bool, without: &str) -> Result<()> {
        if !self.dp.is_null() && !peepholes {
            return Err(Error::argument(format!(
                "dp is given but {without}: an operator without peepholes has no dP (p NULL means no peepholes, \
                 not P = 0); pass dp = NULL"
            )));
        }
        Ok(())
    }

    /// The slices.
    ///
    /// # Safety
    /// [`extents`](Self::extents) with the same sizes succeeded, and so did `check_disjoint` over them and
    /// every other buffer of the call; each non-NULL pointer is valid for its size for `'a` (the caller's
    /// contract), and nothing else accesses the outputs during `'a`.
    unsafe fn slices<'a>(&self, n: &OnnxSizes) -> (OnnxUpstream<'a>, OnnxGrads<'a>) {
        // SAFETY (every `input`/`output` call): forwarded from this function's contract: aligned,
        // non-wrapping, bounded by `checked_product`, valid, and the outputs alias nothing.
        unsafe {
            (
                OnnxUpstream {
                    dy: input(self.dy, n.y),
                    dy_h: input(self.dy_h, n.state),
                    dy_c: input(self.dy_c, n.state),
                },
                OnnxGrads {
                    dx: output(self.dx, n.x),
                    dw: output(self.dw, n.w),
                    dr: output(self.dr, n.r),
                    db: output(self.db, n.b),
                    d_initial_h: output(self.d_initial_h, n.state),
                    d_initial_c: output(self.d_initial_c, n.state),
                    dp: output(self.dp, n.p),
                },
            )
        }
    }
}

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
    guard("mrnn_lstm_onnx_backward", || {
        // 1. NULL.
        require("attrs", attrs)?;
        require("x", x)?;
        require("w", w)?;
        require("r", r)?;
        // SAFETY: `attrs` is non-NULL (checked above) and points to one readable `MrnnOnnxLstmAttrs`
        // (caller's contract); read_unaligned needs no alignment.
        let a = unsafe { attrs.read_unaligned() };

        // 2. Values.
        let OnnxArgs { attrs: onnx_attrs, t, b: batch, i, h, d, threads } = onnx_args(&a)?;

        // 3. Sizes.
        let n = OnnxSizes::new(t, batch, i, h, d)?;

        // 4. Pointers.
        let grads = OnnxGradPtrs { dy, dy_h, dy_c, dx, dw, dr, db, d_initial_h, d_initial_c, dp };
        let inputs = [
            Extent::new("x", x, n.x, false)?,
            Extent::new("w", w, n.w, false)?,
            Extent::new("r", r, n.r, false)?,
            Extent::new("b", b, n.b, false)?,
            Extent::new("sequence_lens", sequence_lens, batch, false)?,
            Extent::new("initial_h", initial_h, n.state, false)?,
            Extent::new("initial_c", initial_c, n.state, false)?,
            Extent::new("p", p, n.p, false)?,
        ];
        let extents: Vec<Option<Extent>> = inputs.into_iter().chain(grads.extents(&n)?).collect();
        check_disjoint(&extents)?;
        grads.check_dp(!p.is_null(), "p is NULL")?;

        // SAFETY (every `input` call and `slices`): each pointer is NULL, or was checked aligned and
        // non-wrapping by `Extent::new` with the very length passed here, which `checked_product` bounds
        // to isize::MAX bytes (`sequence_lens` has `batch` 4-byte elements, at most the checked `n.state`
        // since `d, h >= 1`); the caller guarantees the memory is valid for that length; `check_disjoint`
        // proved no output overlaps any other buffer, so the `&mut` slices alias nothing.
        let (x, w, r) = unsafe {
            (
                input(x, n.x).ok_or_else(|| null("x"))?,
                input(w, n.w).ok_or_else(|| null("w"))?,
                input(r, n.r).ok_or_else(|| null("r"))?,
            )
        };
        // SAFETY: as above.
        let (b, sequence_lens, initial_h, initial_c, p) = unsafe {
            (
                input(b, n.b),
                input(sequence_lens, batch),
                input(initial_h, n.state),
                input(initial_c, n.state),
                input(p, n.p),
            )
        };

        // 5. Values in caller memory, still before any output is written.
        check_lengths(sequence_lens, t)?;

        // SAFETY: as above.
        let (up, out) = unsafe { grads.slices(&n) };
        if !onnx_wants_any(&out) {
            // Validated; nothing asked for, so nothing is computed.
            return Ok(());
        }
        let node = OnnxLstm::new(onnx_attrs, i, w, r, b, p)?;
        with_thread_scratch(|scratch| {
            let mut tape = OnnxTape::new();
            let none = OnnxOutputs::default();
            let ws = &mut scratch.workspace;
            node.forward_train(x, t, batch, sequence_lens, initial_h, initial_c, none, &mut tape, threads, ws)?;
            node.backward(x, t, batch, sequence_lens, initial_h, initial_c, &tape, up, out, threads)?;
            Ok(())
        })
    })
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
    layer: *mut MrnnOnnxLstm,
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
    guard("mrnn_onnx_lstm_run_train", || {
        // 1. NULL.
        require("layer", layer)?;
        require("attrs", attrs)?;
        require("x", x)?;
        require("tape", tape)?;
        if !layer.is_aligned() {
            return Err(Error::argument(format!("layer ({layer:p}) is not a handle: misaligned")));
        }
        // SAFETY: `layer` is non-NULL and aligned (checked above) and, by the caller's contract, a live
        // handle from `mrnn_onnx_lstm_new` that nobody frees during this call; the C ABI only ever takes
        // `&` to it (interior mutability), so this shared reference aliases no `&mut`.
        let handle = unsafe { &*layer };
        // SAFETY: `attrs` is non-NULL (checked above) and points to one readable `MrnnOnnxLstmAttrs`
        // (caller's contract); read_unaligned needs no alignment.
        let a = unsafe { attrs.read_unaligned() };

        // 2. Values, then agreement with the handle.
        let OnnxArgs { attrs: run_attrs, t, b: batch, i, h, d, threads } = onnx_args(&a)?;
        onnx_attrs_match(&a, &run_attrs.activations, handle)?;

        // 3. Sizes.
        let n = OnnxSizes::new(t, batch, i, h, d)?;

        // 4. Pointers.
        let extents = [
            Extent::new("x", x, n.x, false)?,
            Extent::new("sequence_lens", sequence_lens, batch, false)?,
            Extent::new("initial_h", initial_h, n.state, false)?,
            Extent::new("initial_c", initial_c, n.state, false)?,
            Extent::new("y", y, n.y, true)?,
            Extent::new("y_h", y_h, n.state, true)?,
            Extent::new("y_c", y_c, n.state, true)?,
            Extent::new("tape", tape, 1, true)?,
        ];
        check_disjoint(&extents)?;

        // SAFETY (every `input`/`output` call below): each pointer is NULL, or was checked aligned and
        // non-wrapping by `Extent::new` with the very length passed here, which `checked_product` bounds
        // to isize::MAX bytes (`sequence_lens` has `batch` 4-byte elements, at most the checked `n.state`);
        // the caller guarantees the memory is valid for that length; `check_disjoint` proved no output
        // overlaps any other buffer, so the `&mut` slices alias nothing.
        let (x, sequence_lens, initial_h, initial_c) = unsafe {
            (
                input(x, n.x).ok_or_else(|| null("x"))?,
                input(sequence_lens, batch),
                input(initial_h, n.state),
                input(initial_c, n.state),
            )
        };

        // 5. Values in caller memory, still before any output is written.
        check_lengths(sequence_lens, t)?;

        // SAFETY: as above.
        let out = unsafe { OnnxOutputs { y: output(y, n.y), y_h: output(y_h, n.state), y_c: output(y_c, n.state) } };

        // The tape's own copies, so that the caller may reuse its buffers once this returns.
        let mut record = OnnxRecord {
            t,
            b: batch,
            threads,
            x: x.to_vec(),
            sequence_lens: sequence_lens.map(<[i32]>::to_vec),
            initial_h: initial_h.map(<[f32]>::to_vec),
            initial_c: initial_c.map(<[f32]>::to_vec),
            tape: OnnxTape::new(),
        };
        let (packed, generation) = handle.current.snapshot();
        with_handle_scratch(&handle.scratch, |scratch| {
            let OnnxRecord { x, sequence_lens, initial_h, initial_c, tape, .. } = &mut record;
            let (lens, h0, c0) = (sequence_lens.as_deref(), initial_h.as_deref(), initial_c.as_deref());
            let ws = &mut scratch.workspace;
            packed.node.forward_train(x, t, batch, lens, h0, c0, out, tape, threads, ws).map(drop)
        })?;
        let made = Box::new(MrnnTape { owner: handle.id, generation, record: Record::Onnx(record) });
        // SAFETY: `tape` is non-NULL, aligned (`Extent::new`) and valid for one write (caller's contract);
        // it overlaps none of the other buffers (`check_disjoint`).
        unsafe { tape.write(Box::into_raw(made)) };
        Ok(())
    })
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
    layer: *mut MrnnOnnxLstm,
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
    guard("mrnn_onnx_lstm_run_backward", || {
        // 1. NULL.
        require("layer", layer)?;
        require("tape", tape)?;
        if !layer.is_aligned() {
            return Err(Error::argument(format!("layer ({layer:p}) is not a handle: misaligned")));
        }
        if !tape.is_aligned() {
            return Err(Error::argument(format!("tape ({tape:p}) is not a tape: misaligned")));
        }
        // SAFETY: `layer` is non-NULL and aligned (checked above) and, by the caller's contract, a live
        // handle from `mrnn_onnx_lstm_new` that nobody frees during this call; the C ABI only ever takes
        // `&` to it, so this shared reference aliases no `&mut`.
        let handle = unsafe { &*layer };
        // SAFETY: likewise a live tape from a `run_train` (caller's contract), which the C ABI never
        // mutates after creating it.
        let tape = unsafe { &*tape };

        // 2. Values: the tape is this handle's, made with its current weights.
        let (packed, generation) = handle.current.snapshot();
        let record = tape.onnx_for(handle, generation)?;
        let OnnxRecord { t, b, threads, .. } = *record;
        let (i, h, d) = (packed.node.input_size(), handle.onnx_attrs.hidden_size, handle.onnx_attrs.direction.count());

        // 3. Sizes (checked at the run that made the tape: they cannot overflow now).
        let n = OnnxSizes::new(t, b, i, h, d)?;

        // 4. Pointers.
        let grads = OnnxGradPtrs { dy, dy_h, dy_c, dx, dw, dr, db, d_initial_h, d_initial_c, dp };
        check_disjoint(&grads.extents(&n)?)?;
        grads.check_dp(packed.peepholes, "the handle's weights have no peepholes (p was NULL)")?;

        // SAFETY: `extents` and `check_disjoint` succeeded with these sizes just above; the caller
        // guarantees validity for the documented sizes.
        let (up, out) = unsafe { grads.slices(&n) };
        if !onnx_wants_any(&out) {
            return Ok(());
        }
        let OnnxRecord { x, sequence_lens, initial_h, initial_c, tape, .. } = record;
        let (lens, h0, c0) = (sequence_lens.as_deref(), initial_h.as_deref(), initial_c.as_deref());
        packed.node.backward(x, t, b, lens, h0, c0, tape, up, out, threads)?;
        Ok(())
    })
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
    guard("mrnn_onnx_lstm_set_weights", || {
        // 1. NULL.
        require("layer", layer)?;
        require("w", w)?;
        require("r", r)?;
        if !layer.is_aligned() {
            return Err(Error::argument(format!("layer ({layer:p}) is not a handle: misaligned")));
        }
        // SAFETY: `layer` is non-NULL and aligned (checked above) and, by the caller's contract, a live
        // handle from `mrnn_onnx_lstm_new` that nobody frees during this call; the C ABI only ever takes
        // `&` to it (the weights are replaced through its lock), so this aliases no `&mut`.
        let handle = unsafe { &*layer };

        // 2. and 3.: the sizes are the handle's (validated at creation).
        let (i, h) = (dim("input_size", handle.attrs.input_size)?, dim("hidden_size", handle.attrs.hidden_size)?);
        let n = OnnxSizes::new(0, 0, i, h, handle.onnx_attrs.direction.count())?;

        // 4. Pointers.
        let extents = [
            Extent::new("w", w, n.w, false)?,
            Extent::new("r", r, n.r, false)?,
            Extent::new("b", b, n.b, false)?,
            Extent::new("p", p, n.p, false)?,
        ];
        check_disjoint(&extents)?;

        // SAFETY: each pointer is NULL or was checked aligned and non-wrapping by `Extent::new` with the
        // very length passed here, bounded to isize::MAX bytes by `checked_product`; the caller guarantees
        // the memory is valid for that length; these are inputs only.
        let (w, r, b, p) = unsafe {
            (
                input(w, n.w).ok_or_else(|| null("w"))?,
                input(r, n.r).ok_or_else(|| null("r"))?,
                input(b, n.b),
                input(p, n.p),
            )
        };
        let node = OnnxLstm::new(handle.onnx_attrs.clone(), i, w, r, b, p)?;
        handle.current.replace(OnnxNode { node, peepholes: p.is_some() });
        Ok(())
    })
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
        if !tape.is_aligned() {
            return Err(Error::argument(format!("tape ({tape:p}) is not a tape: misaligned")));
        }
        if !bytes.is_aligned() {
            return Err(Error::argument(format!("bytes ({bytes:p}) is not aligned to 8 bytes")));
        }
        // SAFETY: a live tape (caller's contract), non-NULL and aligned (checked above), never mutated.
        let held = unsafe { &*tape }.bytes();
        // SAFETY: `bytes` is non-NULL and aligned (checked above) and valid for one write (caller's
        // contract); it cannot overlap the tape, which the library allocated.
        unsafe { bytes.write(held as u64) };
        Ok(())
    })
}

/// Frees a tape made by [`mrnn_keras_lstm_run_train`] or [`mrnn_onnx_lstm_run_train`]; NULL is a no-op.
///
/// # Safety
/// `tape` is NULL or a tape not yet freed, which no other thread uses during or after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_tape_free(tape: *mut MrnnTape) {
    if tape.is_null() {
        return;
    }
    // A panic while dropping (there is none to expect) becomes a last-error message, never an unwind.
    let _ = guard("mrnn_tape_free", || {
        // SAFETY: a live tape (caller's contract), i.e. a pointer from `Box::into_raw` not yet reclaimed;
        // nothing uses it after this call.
        drop(unsafe { Box::from_raw(tape) });
        Ok(())
    });
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
