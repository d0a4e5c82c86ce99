//! Layer handles: weights packed once, run many times.
//!
//! ```text
//! mrnn_keras_lstm_new(attrs, kernel, recurrent_kernel, bias, &layer)  validate attrs, pack weights, box
//! mrnn_keras_lstm_run(layer, attrs, x, mask, h0, c0, y, last, h_n, c_n)  attrs: B, T, num_threads of this
//!     run; every other field must equal the handle's      (repeat: any B, T, threads; any thread)
//! mrnn_keras_lstm_free(layer)                                          NULL is a no-op
//! ```
//!
//! The ONNX functions follow the same pattern. A handle owns the packed layer ([`KerasLstm`] /
//! [`OnnxLstm`]) and scratch memory (`Core`, the same for every kind): a small pool of [`Workspace`]s
//! (`ScratchPool`). Runs on one handle may overlap: each takes a buffer of the pool (or a fresh one when
//! none is left) and gives it back at its end, so runs never wait for each other. Scratch memory never
//! changes results, so a run gives bitwise the one-shot function's outputs whichever scratch served it.
//!
//! Validation follows the order of the one-shot functions (module docs of [`super`]): NULL, then values
//! (a run's attributes are checked as the one-shot's, then compared with the handle's), then sizes, then
//! pointers, then `sequence_lens`. `_new` checks every attribute value, including the per-run ones
//! (`batch_size`, `seq_length` >= 0, `num_threads` >= 0), but sizes only of the weights. The functions
//! here are entry points only: each validates and runs through the one path of every layer kind (the
//! private module `layer`, with the kinds in `keras` and `onnx`), which the one-shot functions and the
//! training functions share.
//!
//! Training ([`super::train`]) identifies a handle by a process-unique id (`next_handle_id`, shared by
//! every kind of handle, never reused, unlike an address) and its packed weights by a generation
//! (`Current`) that `mrnn_keras_lstm_set_weights` / `mrnn_onnx_lstm_set_weights` increment; a tape records
//! both, so a stale or foreign tape is recognised.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use super::keras::{KerasArgs, KerasFields};
use super::layer::{new, run};
use super::onnx::{OnnxArgs, OnnxFields};
use super::*;

/// The next handle id: 1, 2, 3, ... for the process's life.
static NEXT_HANDLE_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh handle id, never given out before in this process.
pub(super) fn next_handle_id() -> u64 {
    NEXT_HANDLE_ID.fetch_add(1, Ordering::Relaxed)
}

/// A handle's packed layer and its weights generation (0 at creation, +1 per replacement).
#[derive(Debug)]
struct Versioned<L> {
    layer: Arc<L>,
    generation: u64,
}

/// A handle's packed layer, replaceable while other threads run it: a run takes a snapshot (the layer
/// and its generation, read together) and computes with it whatever replaces it meanwhile.
#[derive(Debug)]
pub(super) struct Current<L>(RwLock<Versioned<L>>);

impl<L> Current<L> {
    /// Generation 0 of `layer`.
    pub(super) fn new(layer: L) -> Self {
        Current(RwLock::new(Versioned { layer: Arc::new(layer), generation: 0 }))
    }

    /// The layer and its generation. (The lock is held only for an assignment, which cannot leave the
    /// pair half-written: a poisoned lock still holds a consistent pair.)
    pub(super) fn snapshot(&self) -> (Arc<L>, u64) {
        let v = self.0.read().unwrap_or_else(PoisonError::into_inner);
        (Arc::clone(&v.layer), v.generation)
    }

    /// Replaces the layer; returns the new generation. Runs under way keep the layer they started with.
    pub(super) fn replace(&self, layer: L) -> u64 {
        let layer = Arc::new(layer);
        let mut v = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let generation = v.generation + 1;
        // The old layer is dropped after the lock is released (by the last run that still uses it).
        let old = std::mem::replace(&mut *v, Versioned { layer, generation });
        drop(v);
        drop(old);
        generation
    }
}

/// At most how many scratch buffers a handle keeps for its next runs (see [`ScratchPool`]).
pub(super) const SCRATCH_KEPT: usize = 8;

/// A handle's scratch memory: the buffers of its finished runs, for its next ones. A run takes one (or a
/// fresh one when none is left) and gives it back when it ends, so runs that overlap on one handle each
/// compute with their own buffer: they never wait for each other (the lock is held only to take or give
/// back a buffer, never during a run), and once the handle has served as many overlapping runs they no
/// longer allocate. At most [`SCRATCH_KEPT`] buffers are kept; a run that panics drops its buffer.
#[derive(Debug, Default)]
pub(super) struct ScratchPool(Mutex<Vec<Scratch>>);

impl ScratchPool {
    /// The kept buffers. (Nothing can panic while the lock is held, but a poisoned lock would still hold a
    /// valid list.)
    fn kept(&self) -> MutexGuard<'_, Vec<Scratch>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many buffers are kept now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.kept().len()
    }

    /// Runs `f` with a scratch buffer of its own: a kept one, or a fresh one when none is left.
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> R {
        let taken = self.kept().pop();
        let mut scratch = taken.unwrap_or_default();
        let result = f(&mut scratch);
        let mut kept = self.kept();
        let surplus = if kept.len() < SCRATCH_KEPT {
            kept.push(scratch);
            None
        } else {
            Some(scratch)
        };
        // A surplus buffer is freed after the lock is released.
        drop(kept);
        drop(surplus);
        result
    }
}

/// What every handle holds, whatever its kind: its id, its packed layer and its scratch memory.
#[derive(Debug)]
pub(super) struct Core<L> {
    /// Unique among the handles of this process (of every kind); tapes record it.
    pub(super) id: u64,
    /// The packed layer, replaced by `set_weights`.
    pub(super) current: Current<L>,
    /// The scratch buffers of the handle's runs.
    pub(super) scratch: ScratchPool,
}

impl<L> Core<L> {
    /// A new handle's: a fresh id, generation 0 of `layer`.
    pub(super) fn new(layer: L) -> Self {
        Core { id: next_handle_id(), current: Current::new(layer), scratch: ScratchPool::default() }
    }
}

/// A Keras LSTM layer of the C ABI (`MrnnKerasLstm` of `masked_rnn.h`): packed weights and scratch memory.
#[derive(Debug)]
pub struct MrnnKerasLstm {
    pub(super) core: Core<KerasLstm>,
    /// The validated creation attributes: the layer options and sizes (the same for every generation).
    pub(super) args: KerasArgs,
    /// The creation attributes; a run's must agree on every field but `batch_size`, `seq_length`,
    /// `num_threads`.
    pub(super) attrs: MrnnKerasLstmAttrs,
}

/// An ONNX LSTM node of the C ABI (`MrnnOnnxLstm` of `masked_rnn.h`): packed weights and scratch memory.
#[derive(Debug)]
pub struct MrnnOnnxLstm {
    pub(super) core: Core<OnnxNode>,
    /// The validated creation attributes: the Rust attributes and sizes (the same for every generation).
    pub(super) args: OnnxArgs,
    /// The creation attributes; a run's must agree on every field but `seq_length`, `batch_size`,
    /// `num_threads`.
    pub(super) attrs: MrnnOnnxLstmAttrs,
}

/// One generation of an ONNX handle's weights: the packed node, and whether it was given peepholes (`p`
/// non-NULL), which decides whether a backward may ask for `dp`.
#[derive(Debug)]
pub(super) struct OnnxNode {
    pub(super) node: OnnxLstm,
    pub(super) peepholes: bool,
}

// Concurrent runs share `&MrnnKerasLstm` / `&MrnnOnnxLstm` across threads.
const _: () = {
    const fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<MrnnKerasLstm>();
    shared_across_threads::<MrnnOnnxLstm>();
};

/// `Err(BadArgument)` naming `field` when a run's value differs from the handle's.
fn differs(field: &str, run: impl std::fmt::Display, created: impl std::fmt::Display) -> Error {
    Error::argument(format!("attrs.{field} = {run} differs from the handle's {created} (fixed at creation)"))
}

/// An activation's code and parameter bits (0 for a parameter it does not have), for exact comparison.
fn activation_bits(a: Activation) -> (i32, u32, u32) {
    let (alpha, beta) = match a {
        Activation::Affine { alpha, beta }
        | Activation::ScaledTanh { alpha, beta }
        | Activation::HardSigmoid { alpha, beta } => (alpha.to_bits(), beta.to_bits()),
        Activation::LeakyRelu { alpha } | Activation::ThresholdedRelu { alpha } | Activation::Elu { alpha } => {
            (alpha.to_bits(), 0)
        }
        Activation::Sigmoid | Activation::Tanh | Activation::Relu | Activation::Softsign | Activation::Softplus => {
            (0, 0)
        }
    };
    (a.code(), alpha, beta)
}

/// Compares the activation fields `names` (code, alpha, beta) of a run with the handle's, by the activations
/// they stand for: a NaN parameter is its default, a parameter the activation does not take is ignored.
fn same_activation(
    names: [&str; 3],
    run: (Activation, i32, f32, f32),
    created: (Activation, i32, f32, f32),
) -> Result<()> {
    let (r, c) = (activation_bits(run.0), activation_bits(created.0));
    if r.0 != c.0 {
        return Err(differs(names[0], run.1, created.1));
    }
    if r.1 != c.1 {
        return Err(differs(names[1], format!("{} ({:?})", run.2, run.0), format!("{} ({:?})", created.2, created.0)));
    }
    if r.2 != c.2 {
        return Err(differs(names[2], format!("{} ({:?})", run.3, run.0), format!("{} ({:?})", created.3, created.0)));
    }
    Ok(())
}

/// `Err(BadArgument)` naming the first of `fields` (name, run's value, handle's value) that differs.
fn same_fields<T: PartialEq + std::fmt::Display>(fields: &[(&str, T, T)]) -> Result<()> {
    match fields.iter().find(|(_, r, h)| r != h) {
        Some((field, r, h)) => Err(differs(field, r, h)),
        None => Ok(()),
    }
}

/// Checks that a run's Keras attributes (`run`, with their recurrent activation) agree with the handle's
/// (`created`, with the activation it was made with) on every field fixed at creation, in field order.
pub(super) fn keras_attrs_match(
    run: &KerasFields,
    run_recurrent: Option<Activation>,
    created: &KerasFields,
    fixed_recurrent: Option<Activation>,
) -> Result<()> {
    let (r, c) = (run, created);
    same_fields(&[("input_size", r.sizes[2].1, c.sizes[2].1), ("hidden_size", r.sizes[3].1, c.sizes[3].1)])?;
    same_fields(&[
        ("go_backwards", r.go_backwards, c.go_backwards),
        ("zero_output_for_mask", r.zero_output_for_mask, c.zero_output_for_mask),
        ("activation", r.activation, c.activation),
    ])?;
    if let (Some(rr), Some(cr), Some(ra), Some(ca)) = (r.recurrent, c.recurrent, run_recurrent, fixed_recurrent) {
        same_activation(
            ["recurrent_activation", "recurrent_alpha", "recurrent_beta"],
            (ra, rr.0, rr.1, rr.2),
            (ca, cr.0, cr.1, cr.2),
        )?;
    }
    if let (Some(rr), Some(cr)) = (r.reset_after, c.reset_after) {
        same_fields(&[("reset_after", rr, cr)])?;
    }
    Ok(())
}

/// Checks that a run's ONNX attributes (`run`, with their activations) agree with the handle's (`created`,
/// with the activations it was made with) on every field fixed at creation, in field order.
pub(super) fn onnx_attrs_match(
    run: &OnnxFields<'_>,
    acts: &[Activation],
    created: &OnnxFields<'_>,
    fixed: &[Activation],
) -> Result<()> {
    let (r, c) = (run, created);
    same_fields(&[("input_size", r.sizes[2].1, c.sizes[2].1), ("hidden_size", r.sizes[3].1, c.sizes[3].1)])?;
    same_fields(&[("direction", r.direction, c.direction), ("layout", r.layout, c.layout)])?;
    if let (Some((name, rv)), Some((_, cv))) = (r.flag, c.flag) {
        same_fields(&[(name, rv, cv)])?;
    }
    same_fields(&[("has_clip", r.has_clip, c.has_clip)])?;
    if r.has_clip == 1 && r.clip.to_bits() != c.clip.to_bits() {
        return Err(differs("clip", r.clip, c.clip));
    }
    if r.num_activations != c.num_activations {
        return Err(differs("num_activations", r.num_activations, c.num_activations));
    }
    for (k, (&ra, &ca)) in acts.iter().zip(fixed).enumerate() {
        let names = [format!("activations[{k}]"), format!("activation_alpha[{k}]"), format!("activation_beta[{k}]")];
        same_activation(
            [&names[0], &names[1], &names[2]],
            (ra, r.activations[k], r.alpha[k], r.beta[k]),
            (ca, c.activations[k], c.alpha[k], c.beta[k]),
        )?;
    }
    Ok(())
}

/// Creates a Keras LSTM layer: validates `attrs` and packs the weights once; see `masked_rnn.h`.
///
/// # Safety
/// `attrs` is NULL or points to one readable `MrnnKerasLstmAttrs`; `kernel`, `recurrent_kernel` and `bias`
/// are NULL or valid for reading the tensor sizes the header documents; `out` is NULL or valid for writing
/// one pointer; for the duration of the call, and no other thread writes them meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_keras_lstm_new(
    attrs: *const MrnnKerasLstmAttrs,
    kernel: *const f32,
    recurrent_kernel: *const f32,
    bias: *const f32,
    out: *mut *mut MrnnKerasLstm,
) -> i32 {
    let weights = KerasWeightPtrs { kernel, recurrent_kernel, bias };
    // SAFETY: the caller's contract, as `new` requires it.
    guard("mrnn_keras_lstm_new", || unsafe { new(attrs, weights, out) })
}

/// Runs a Keras LSTM layer made by [`mrnn_keras_lstm_new`]; see `masked_rnn.h`. Results are bitwise those
/// of [`mrnn_lstm_keras`] with the same attributes and weights.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_keras_lstm_new`] not yet freed (other threads may run it at the
/// same time, none may free it meanwhile). Every other non-NULL pointer is valid for the tensor size the
/// header documents for it (reads for the `const` inputs, writes for the outputs) for the duration of the
/// call, and no other thread writes the inputs or touches the outputs meanwhile.
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_keras_lstm_run(
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
) -> i32 {
    let input = KerasInputPtrs { x, mask, initial_h, initial_c };
    let output = KerasOutputPtrs { y, last_output, h_n, c_n };
    // SAFETY: the caller's contract, as `run` requires it.
    guard("mrnn_keras_lstm_run", || unsafe { run(layer, attrs, input, output) })
}

/// Frees a handle made by [`mrnn_keras_lstm_new`]; NULL is a no-op.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_keras_lstm_new`] not yet freed, which no other thread uses
/// during or after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_keras_lstm_free(layer: *mut MrnnKerasLstm) {
    // SAFETY: the caller's contract: a pointer from `Box::into_raw` (`mrnn_keras_lstm_new`) or NULL.
    unsafe { free_boxed("mrnn_keras_lstm_free", layer) }
}

/// Creates an ONNX LSTM node: validates `attrs` and packs `W`, `R`, `B`, `P` once; see `masked_rnn.h`.
///
/// # Safety
/// `attrs` is NULL or points to one readable `MrnnOnnxLstmAttrs`; `w`, `r`, `b` and `p` are NULL or valid
/// for reading the tensor sizes the header documents; `out` is NULL or valid for writing one pointer; for
/// the duration of the call, and no other thread writes them meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_onnx_lstm_new(
    attrs: *const MrnnOnnxLstmAttrs,
    w: *const f32,
    r: *const f32,
    b: *const f32,
    p: *const f32,
    out: *mut *mut MrnnOnnxLstm,
) -> i32 {
    let weights = OnnxWeightPtrs { w, r, b, p };
    // SAFETY: the caller's contract, as `new` requires it.
    guard("mrnn_onnx_lstm_new", || unsafe { new(attrs, weights, out) })
}

/// Runs an ONNX LSTM node made by [`mrnn_onnx_lstm_new`]; see `masked_rnn.h`. Results are bitwise those of
/// [`mrnn_lstm_onnx`] with the same attributes and weights.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_onnx_lstm_new`] not yet freed (other threads may run it at the
/// same time, none may free it meanwhile). Every other non-NULL pointer is valid for the tensor size the
/// header documents for it (reads for the `const` inputs, writes for the outputs) for the duration of the
/// call, and no other thread writes the inputs or touches the outputs meanwhile.
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_onnx_lstm_run(
    layer: *const MrnnOnnxLstm,
    attrs: *const MrnnOnnxLstmAttrs,
    x: *const f32,
    sequence_lens: *const i32,
    initial_h: *const f32,
    initial_c: *const f32,
    y: *mut f32,
    y_h: *mut f32,
    y_c: *mut f32,
) -> i32 {
    let input = OnnxInputPtrs { x, sequence_lens, initial_h, initial_c };
    let output = OnnxOutputPtrs { y, y_h, y_c };
    // SAFETY: the caller's contract, as `run` requires it.
    guard("mrnn_onnx_lstm_run", || unsafe { run(layer, attrs, input, output) })
}

/// Frees a handle made by [`mrnn_onnx_lstm_new`]; NULL is a no-op.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_onnx_lstm_new`] not yet freed, which no other thread uses
/// during or after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_onnx_lstm_free(layer: *mut MrnnOnnxLstm) {
    // SAFETY: the caller's contract: a pointer from `Box::into_raw` (`mrnn_onnx_lstm_new`) or NULL.
    unsafe { free_boxed("mrnn_onnx_lstm_free", layer) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr;

    fn last() -> String {
        last_error_message()
    }

    fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / 16_777_216.0 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    struct KerasCase {
        attrs: MrnnKerasLstmAttrs,
        kernel: Vec<f32>,
        recurrent: Vec<f32>,
        bias: Vec<f32>,
    }

    impl KerasCase {
        fn new(i: i64, h: i64) -> Self {
            let (iu, hu) = (i as usize, h as usize);
            KerasCase {
                attrs: MrnnKerasLstmAttrs { input_size: i, hidden_size: h, ..Default::default() },
                kernel: values(iu * 4 * hu, 1, 0.5),
                recurrent: values(hu * 4 * hu, 2, 0.5),
                bias: values(4 * hu, 3, 0.5),
            }
        }

        fn handle(&self) -> *mut MrnnKerasLstm {
            let mut out = ptr::null_mut();
            // SAFETY: the weights have the sizes of the attributes; `out` is a valid pointer slot.
            let status = unsafe {
                mrnn_keras_lstm_new(
                    &self.attrs,
                    self.kernel.as_ptr(),
                    self.recurrent.as_ptr(),
                    self.bias.as_ptr(),
                    &mut out,
                )
            };
            assert_eq!(status, MRNN_OK, "{}", last());
            out
        }

        /// `[y, last_output, h_n, c_n]` of a run on `layer`, or of the one-shot call when `layer` is NULL.
        fn run(&self, layer: *mut MrnnKerasLstm, b: i64, t: i64, threads: i32) -> (i32, [Vec<f32>; 4]) {
            let a = MrnnKerasLstmAttrs { batch_size: b, seq_length: t, num_threads: threads, ..self.attrs };
            let (bu, tu, iu, hu) = (b as usize, t as usize, a.input_size as usize, a.hidden_size as usize);
            let x = values(bu * tu * iu, 4 + b as u32 * 7 + t as u32, 1.5);
            let mask: Vec<u8> = (0..bu * tu).map(|k| u8::from(k % 5 != 2)).collect();
            let h0 = values(bu * hu, 5, 1.0);
            let mut outs = [bu * tu * hu, bu * hu, bu * hu, bu * hu].map(|n| vec![f32::NAN; n]);
            let [y, l, hn, cn] = &mut outs;
            // SAFETY: every buffer has the size its attributes give; h0 stands in for initial_h only.
            let status = unsafe {
                if layer.is_null() {
                    mrnn_lstm_keras(
                        &a,
                        x.as_ptr(),
                        mask.as_ptr(),
                        self.kernel.as_ptr(),
                        self.recurrent.as_ptr(),
                        self.bias.as_ptr(),
                        h0.as_ptr(),
                        ptr::null(),
                        y.as_mut_ptr(),
                        l.as_mut_ptr(),
                        hn.as_mut_ptr(),
                        cn.as_mut_ptr(),
                    )
                } else {
                    mrnn_keras_lstm_run(
                        layer,
                        &a,
                        x.as_ptr(),
                        mask.as_ptr(),
                        h0.as_ptr(),
                        ptr::null(),
                        y.as_mut_ptr(),
                        l.as_mut_ptr(),
                        hn.as_mut_ptr(),
                        cn.as_mut_ptr(),
                    )
                }
            };
            (status, outs)
        }
    }

    fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
        v.iter().map(|v| v.iter().map(|x| x.to_bits()).collect()).collect()
    }

    #[test]
    fn keras_runs_equal_one_shot_across_shapes() {
        let case = KerasCase::new(3, 9);
        let layer = case.handle();
        for (b, t, threads) in [(4, 7, 1), (1, 3, 2), (6, 12, 0), (0, 5, 1), (4, 7, 2), (2, 0, 1)] {
            let (s1, one_shot) = case.run(ptr::null_mut(), b, t, threads);
            let (s2, run) = case.run(layer, b, t, threads);
            assert_eq!((s1, s2), (MRNN_OK, MRNN_OK), "{}", last());
            assert_eq!(bits(&one_shot), bits(&run), "B {b} T {t} threads {threads}");
        }
        // SAFETY: a live handle, freed once; NULL is a no-op.
        unsafe {
            mrnn_keras_lstm_free(layer);
            mrnn_keras_lstm_free(ptr::null_mut());
        }
    }

    #[test]
    fn concurrent_runs_on_one_handle_agree() {
        let case = KerasCase::new(4, 17);
        let layer = case.handle();
        let (_, expected) = case.run(ptr::null_mut(), 5, 9, 1);
        let shared = layer as usize;
        std::thread::scope(|s| {
            for k in 0..4 {
                let (case, expected) = (&case, &expected);
                s.spawn(move || {
                    for _ in 0..20 {
                        let (status, got) = case.run(shared as *mut MrnnKerasLstm, 5, 9, 1 + k % 2);
                        assert_eq!(status, MRNN_OK);
                        assert_eq!(bits(&got), bits(expected));
                    }
                });
            }
        });
        // SAFETY: a live handle no thread uses any more.
        unsafe { mrnn_keras_lstm_free(layer) };
    }

    #[test]
    fn overlapping_runs_take_their_own_scratch_and_give_it_back() {
        let case = KerasCase::new(2, 8);
        let layer = case.handle();
        let (_, expected) = case.run(ptr::null_mut(), 3, 6, 1);
        // SAFETY: a live handle; only shared references are taken while it lives.
        let pool = unsafe { &(*layer).core.scratch };
        assert_eq!(pool.len(), 0);
        let (status, got) = case.run(layer, 3, 6, 1);
        assert_eq!((status, bits(&got)), (MRNN_OK, bits(&expected)));
        assert_eq!(pool.len(), 1, "a finished run gives its buffer back");
        // Runs nested in a run (as overlapping runs of other threads would be) find the pool empty or
        // short, take fresh buffers, neither wait nor differ, and give them all back.
        pool.with(|_| {
            pool.with(|_| {
                assert_eq!(pool.len(), 0);
                let (status, got) = case.run(layer, 3, 6, 2);
                assert_eq!((status, bits(&got)), (MRNN_OK, bits(&expected)));
            })
        });
        assert_eq!(pool.len(), 3);
        // At most SCRATCH_KEPT are kept.
        fn nest(pool: &ScratchPool, depth: usize) {
            if depth > 0 {
                pool.with(|_| nest(pool, depth - 1));
            }
        }
        nest(pool, SCRATCH_KEPT + 3);
        assert_eq!(pool.len(), SCRATCH_KEPT);
        // A run that panics drops its buffer; the pool still serves.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.with(|_| panic!("on purpose"))));
        assert!(panicked.is_err());
        assert_eq!(pool.len(), SCRATCH_KEPT - 1);
        let (status, got) = case.run(layer, 3, 6, 1);
        assert_eq!((status, bits(&got)), (MRNN_OK, bits(&expected)));
        // SAFETY: a live handle no thread uses any more.
        unsafe { mrnn_keras_lstm_free(layer) };
    }

    #[test]
    fn keras_run_rejects_changed_attributes() {
        let case = KerasCase::new(2, 3);
        let layer = case.handle();
        let a = MrnnKerasLstmAttrs { batch_size: 1, seq_length: 1, ..case.attrs };
        let (x, mut y) = ([0.5_f32; 2], [0.0_f32; 3]);
        let run = |a: &MrnnKerasLstmAttrs, y: &mut [f32]| {
            // SAFETY: x and y have the sizes of B = T = 1, I = 2, H = 3, whenever validation lets the call
            // read them.
            unsafe {
                mrnn_keras_lstm_run(
                    layer,
                    a,
                    x.as_ptr(),
                    ptr::null(),
                    ptr::null(),
                    ptr::null(),
                    y.as_mut_ptr(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                )
            }
        };
        assert_eq!(run(&a, &mut y), MRNN_OK);
        let cases = [
            (MrnnKerasLstmAttrs { input_size: 3, ..a }, "input_size"),
            (MrnnKerasLstmAttrs { hidden_size: 2, ..a }, "hidden_size"),
            (MrnnKerasLstmAttrs { go_backwards: 1, ..a }, "go_backwards"),
            (MrnnKerasLstmAttrs { zero_output_for_mask: 1, ..a }, "zero_output_for_mask"),
            (MrnnKerasLstmAttrs { activation: 2, ..a }, "activation"),
            (MrnnKerasLstmAttrs { recurrent_activation: 7, ..a }, "recurrent_activation"),
        ];
        for (bad, field) in cases {
            assert_eq!(run(&bad, &mut y), MRNN_ERR_BAD_ARGUMENT, "{field}");
            assert!(last().contains(&format!("attrs.{field} ")), "{field}: {}", last());
        }
        // Ignored unless HardSigmoid; NaN = 0.2.
        assert_eq!(run(&MrnnKerasLstmAttrs { recurrent_alpha: 0.7, ..a }, &mut y), MRNN_OK);
        // A bad value is reported as such, before the comparison.
        assert_eq!(run(&MrnnKerasLstmAttrs { activation: 99, ..a }, &mut y), MRNN_ERR_BAD_ARGUMENT);
        assert!(last().contains("activation: unknown"), "{}", last());
        // SAFETY: a live handle.
        unsafe { mrnn_keras_lstm_free(layer) };

        let hard = KerasCase { attrs: MrnnKerasLstmAttrs { recurrent_activation: 7, ..case.attrs }, ..case };
        let layer = hard.handle();
        let a = MrnnKerasLstmAttrs { batch_size: 1, seq_length: 1, ..hard.attrs };
        let run = |a: &MrnnKerasLstmAttrs, y: &mut [f32]| {
            // SAFETY: as above.
            unsafe {
                mrnn_keras_lstm_run(
                    layer,
                    a,
                    x.as_ptr(),
                    ptr::null(),
                    ptr::null(),
                    ptr::null(),
                    y.as_mut_ptr(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                )
            }
        };
        assert_eq!(run(&MrnnKerasLstmAttrs { recurrent_alpha: 0.2, recurrent_beta: 0.5, ..a }, &mut y), MRNN_OK);
        assert_eq!(run(&MrnnKerasLstmAttrs { recurrent_alpha: 1.0 / 6.0, ..a }, &mut y), MRNN_ERR_BAD_ARGUMENT);
        assert!(last().contains("attrs.recurrent_alpha "), "{}", last());
        assert_eq!(run(&MrnnKerasLstmAttrs { recurrent_beta: 0.4, ..a }, &mut y), MRNN_ERR_BAD_ARGUMENT);
        assert!(last().contains("attrs.recurrent_beta "), "{}", last());
        // SAFETY: a live handle.
        unsafe { mrnn_keras_lstm_free(layer) };
    }

    #[test]
    fn null_and_bad_arguments_to_new() {
        let case = KerasCase::new(2, 3);
        let (k, r) = (case.kernel.as_ptr(), case.recurrent.as_ptr());
        let sentinel = ptr::dangling_mut::<MrnnKerasLstm>();
        let mut out = sentinel;
        // SAFETY: every call fails validation before it reads past the attributes.
        unsafe {
            assert_eq!(mrnn_keras_lstm_new(ptr::null(), k, r, ptr::null(), &mut out), MRNN_ERR_NULL_POINTER);
            assert_eq!(mrnn_keras_lstm_new(&case.attrs, ptr::null(), r, ptr::null(), &mut out), 1);
            assert_eq!(mrnn_keras_lstm_new(&case.attrs, k, ptr::null(), ptr::null(), &mut out), 1);
            assert_eq!(mrnn_keras_lstm_new(&case.attrs, k, r, ptr::null(), ptr::null_mut()), 1);
            assert!(last().contains("out is NULL"), "{}", last());
            let neg = MrnnKerasLstmAttrs { batch_size: -1, ..case.attrs };
            assert_eq!(mrnn_keras_lstm_new(&neg, k, r, ptr::null(), &mut out), MRNN_ERR_BAD_ARGUMENT);
            let huge = MrnnKerasLstmAttrs { hidden_size: i64::MAX / 2, ..case.attrs };
            assert_eq!(mrnn_keras_lstm_new(&huge, k, r, ptr::null(), &mut out), MRNN_ERR_OVERFLOW);
            // B and T are not used at creation: huge ones are fine.
            let big = MrnnKerasLstmAttrs { batch_size: i64::MAX, seq_length: i64::MAX, ..case.attrs };
            assert_eq!(out, sentinel, "a failing _new wrote *out");
            assert_eq!(mrnn_keras_lstm_new(&big, k, r, ptr::null(), &mut out), MRNN_OK);
            assert!(!out.is_null() && out != sentinel);
            let x = [0.0_f32];
            let run = MrnnKerasLstmAttrs { batch_size: 0, seq_length: 1, ..case.attrs };
            let nul = ptr::null_mut();
            assert_eq!(
                mrnn_keras_lstm_run(
                    ptr::null_mut(),
                    &run,
                    x.as_ptr(),
                    ptr::null(),
                    ptr::null(),
                    ptr::null(),
                    nul,
                    nul,
                    nul,
                    nul
                ),
                1
            );
            assert!(last().contains("layer is NULL"), "{}", last());
            assert_eq!(
                mrnn_keras_lstm_run(
                    out,
                    ptr::null(),
                    x.as_ptr(),
                    ptr::null(),
                    ptr::null(),
                    ptr::null(),
                    nul,
                    nul,
                    nul,
                    nul
                ),
                1
            );
            assert_eq!(
                mrnn_keras_lstm_run(out, &run, ptr::null(), ptr::null(), ptr::null(), ptr::null(), nul, nul, nul, nul),
                1
            );
            assert_eq!(
                mrnn_keras_lstm_run(out, &run, x.as_ptr(), ptr::null(), ptr::null(), ptr::null(), nul, nul, nul, nul),
                0
            );
            mrnn_keras_lstm_free(out);
        }
    }

    /// A bidirectional ONNX node with peepholes, clip and explicit activations.
    struct OnnxCase {
        attrs: MrnnOnnxLstmAttrs,
        w: Vec<f32>,
        r: Vec<f32>,
        b: Vec<f32>,
        p: Vec<f32>,
    }

    impl OnnxCase {
        fn new(layout: i32) -> Self {
            let (i, h) = (3_usize, 5_usize);
            let attrs = MrnnOnnxLstmAttrs {
                input_size: i as i64,
                hidden_size: h as i64,
                direction: 2,
                layout,
                has_clip: 1,
                clip: 2.5,
                num_activations: 6,
                activations: [0, 1, 1, 7, 3, 4],
                activation_alpha: [f32::NAN, f32::NAN, f32::NAN, 0.3, 0.9, f32::NAN],
                ..Default::default()
            };
            OnnxCase {
                attrs,
                w: values(2 * 4 * h * i, 6, 0.6),
                r: values(2 * 4 * h * h, 7, 0.6),
                b: values(2 * 8 * h, 8, 0.4),
                p: values(2 * 3 * h, 9, 0.4),
            }
        }

        fn handle(&self) -> *mut MrnnOnnxLstm {
            let mut out = ptr::null_mut();
            // SAFETY: the weights have the sizes of the attributes; `out` is a valid pointer slot.
            let status = unsafe {
                mrnn_onnx_lstm_new(
                    &self.attrs,
                    self.w.as_ptr(),
                    self.r.as_ptr(),
                    self.b.as_ptr(),
                    self.p.as_ptr(),
                    &mut out,
                )
            };
            assert_eq!(status, MRNN_OK, "{}", last());
            out
        }

        fn run(&self, layer: *mut MrnnOnnxLstm, a: &MrnnOnnxLstmAttrs) -> (i32, [Vec<f32>; 3]) {
            let (tu, bu) = (a.seq_length as usize, a.batch_size as usize);
            let (iu, hu) = (self.attrs.input_size as usize, self.attrs.hidden_size as usize);
            let x = values(tu * bu * iu, 10 + tu as u32, 1.5);
            let lens: Vec<i32> = (0..bu).map(|k| ((k * 3) % (tu + 1)) as i32).collect();
            let c0 = values(2 * bu * hu, 11, 1.0);
            let mut outs = [tu * 2 * bu * hu, 2 * bu * hu, 2 * bu * hu].map(|n| vec![f32::NAN; n]);
            let [y, yh, yc] = &mut outs;
            // SAFETY: every buffer has the size its attributes give.
            let status = unsafe {
                if layer.is_null() {
                    mrnn_lstm_onnx(
                        a,
                        x.as_ptr(),
                        self.w.as_ptr(),
                        self.r.as_ptr(),
                        self.b.as_ptr(),
                        lens.as_ptr(),
                        ptr::null(),
                        c0.as_ptr(),
                        self.p.as_ptr(),
                        y.as_mut_ptr(),
                        yh.as_mut_ptr(),
                        yc.as_mut_ptr(),
                    )
                } else {
                    mrnn_onnx_lstm_run(
                        layer,
                        a,
                        x.as_ptr(),
                        lens.as_ptr(),
                        ptr::null(),
                        c0.as_ptr(),
                        y.as_mut_ptr(),
                        yh.as_mut_ptr(),
                        yc.as_mut_ptr(),
                    )
                }
            };
            (status, outs)
        }
    }

    #[test]
    fn onnx_runs_equal_one_shot_and_check_attributes() {
        for layout in [0, 1] {
            let case = OnnxCase::new(layout);
            let layer = case.handle();
            for (t, b, threads) in [(6, 4, 1), (2, 1, 2), (9, 7, 0), (0, 3, 1), (6, 4, 2)] {
                let a = MrnnOnnxLstmAttrs { seq_length: t, batch_size: b, num_threads: threads, ..case.attrs };
                let (s1, one_shot) = case.run(ptr::null_mut(), &a);
                let (s2, run) = case.run(layer, &a);
                assert_eq!((s1, s2), (MRNN_OK, MRNN_OK), "{}", last());
                assert_eq!(bits(&one_shot), bits(&run), "layout {layout} T {t} B {b} threads {threads}");
            }
            let a = MrnnOnnxLstmAttrs { seq_length: 2, batch_size: 2, ..case.attrs };
            let mut acts = a.activations;
            acts[4] = 2;
            let (mut alpha, mut beta) = (a.activation_alpha, a.activation_beta);
            alpha[3] = 0.2;
            beta[4] = 1.0;
            let cases = [
                (MrnnOnnxLstmAttrs { input_size: 4, ..a }, "input_size"),
                (MrnnOnnxLstmAttrs { hidden_size: 4, ..a }, "hidden_size"),
                (MrnnOnnxLstmAttrs { direction: 0, num_activations: 3, ..a }, "direction"),
                (MrnnOnnxLstmAttrs { layout: 1 - layout, ..a }, "layout"),
                (MrnnOnnxLstmAttrs { input_forget: 1, ..a }, "input_forget"),
                (MrnnOnnxLstmAttrs { has_clip: 0, ..a }, "has_clip"),
                (MrnnOnnxLstmAttrs { clip: 3.0, ..a }, "clip"),
                (MrnnOnnxLstmAttrs { num_activations: 0, ..a }, "num_activations"),
                (MrnnOnnxLstmAttrs { activations: acts, ..a }, "activations[4]"),
                (MrnnOnnxLstmAttrs { activation_alpha: alpha, ..a }, "activation_alpha[3]"),
                (MrnnOnnxLstmAttrs { activation_beta: beta, ..a }, "activation_beta[4]"),
            ];
            for (bad, field) in cases {
                assert_eq!(case.run(layer, &bad).0, MRNN_ERR_BAD_ARGUMENT, "{field}");
                assert!(last().contains(&format!("attrs.{field} ")), "{field}: {}", last());
            }
            // Parameters an activation does not take, and NaN for its default, match.
            let (mut alpha, mut beta) = (a.activation_alpha, a.activation_beta);
            alpha[0] = 7.0; // Sigmoid
            beta[5] = 7.0; // LeakyRelu has no beta
            alpha[5] = 0.01; // LeakyRelu's default
            assert_eq!(
                case.run(layer, &MrnnOnnxLstmAttrs { activation_alpha: alpha, activation_beta: beta, ..a }).0,
                0
            );
            // SAFETY: a live handle, freed once.
            unsafe { mrnn_onnx_lstm_free(layer) };
        }
        // SAFETY: NULL is a no-op.
        unsafe { mrnn_onnx_lstm_free(ptr::null_mut()) };
    }
}
