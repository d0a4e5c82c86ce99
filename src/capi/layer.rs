//! The one path of every layer kind through the C ABI: each function of a kind validates its arguments
//! and runs through the functions here, written once for every kind.
//!
//! ```text
//! one_shot           mrnn_lstm_keras / _onnx, mrnn_gru_*, mrnn_rnn_*    attrs, weights, inputs, outputs
//! one_shot_backward  mrnn_{lstm,gru,rnn}_{keras,onnx}_backward        attrs, weights, inputs, gradients
//! run                *_run                                            handle, attrs, inputs, outputs
//! run_train          *_run_train                                      as run, and the tape's slot
//! run_backward       *_run_backward                                   handle, tape, gradients
//! new                *_new                                            attrs, weights, the handle's slot
//! set_weights        *_set_weights                                    handle, weights
//! ```
//!
//! Every call validates in the order of the module docs of [`super`]: step 1 (`require` and the kind's
//! [`Kind::require`]), step 2 ([`Kind::args`]: the values, and a run's agreement with its handle), step 3
//! ([`Kind::sizes`]), step 4 (`check_forward`, or `check` with a backward's gradients: the kind's buffers
//! in the contract's order, then the slot), step 5 ([`Kind::check_memory`]). A kind ([`Kind`],
//! implemented by its handle type in the modules `keras`, `onnx` and `gru`) says what its attributes,
//! pointer groups and sizes are, and how its packed layer runs forward; a kind with gradients (every kind:
//! the LSTMs, GRUs and RNNs) also implements [`TrainKind`]: its gradient pointers, tapes and backward. The
//! forward functions need only [`Kind`].

use super::handle::Core;
use super::train::{MrnnTape, Record, Recorded};
use super::*;
use crate::kernel::pack::{with_pack_threads, with_recycled_panels};

/// The caller pointers of one forward call of kind `K`, in groups; `None`: the function has no such
/// arguments. (A backward's gradient pointers are checked through a [`GradCheck`].)
pub(super) struct Ptrs<K: Kind> {
    pub(super) input: Option<K::Input>,
    pub(super) weights: Option<K::Weights>,
    pub(super) output: Option<K::Output>,
    /// The slot the call writes last: the handle of `_new`, the tape of `*_run_train`.
    pub(super) slot: Option<Slot>,
}

impl<K: Kind> Default for Ptrs<K> {
    fn default() -> Self {
        Ptrs { input: None, weights: None, output: None, slot: None }
    }
}

/// A layer kind of the C ABI, implemented by its handle type: its attributes, its pointer groups, the
/// checks of its values and sizes, and the forward of its packed layer. Everything a kind needs for the
/// one-shot forward and the handles (`*_new`, `*_run`, `*_free`); training is [`TrainKind`].
pub(super) trait Kind: Sized {
    /// How messages name the kind ("Keras LSTM"), and the prefix of its functions' names.
    const NAME: &'static str;
    const PREFIX: &'static str;
    /// The attributes struct of `masked_rnn.h`.
    type Attrs: Copy;
    /// The validated values of the attributes (step 2); a handle keeps those it was made with.
    type Args;
    /// The dimensions of a call and the element counts of its tensors (step 3).
    type Sizes;
    /// One generation of a handle's packed weights.
    type Packed;
    /// The pointer groups: a run's inputs, the weights, the outputs.
    type Input: Copy;
    type Weights: Copy;
    type Output: Copy;

    /// The handle's id, packed layer and scratch memory.
    fn core(&self) -> &Core<Self::Packed>;
    /// The values the handle was made with.
    fn fixed(&self) -> &Self::Args;
    /// A new handle (generation 0) of `packed`, made with `attrs` and their values `args`.
    fn new_handle(packed: Self::Packed, args: Self::Args, attrs: Self::Attrs) -> Self;

    /// Step 1 for the groups: their required pointers, in the contract's order.
    fn require(p: &Ptrs<Self>) -> Result<()>;
    /// Step 2: every value of `a`, then, for a run of `handle`, agreement with the values it was made with
    /// on every field but the per-run ones.
    fn args(a: &Self::Attrs, handle: Option<&Self>) -> Result<Self::Args>;
    /// The thread count of the values.
    fn threads(args: &Self::Args) -> usize;
    /// Step 3: the sizes of a run of the batch and length of `args` (`run`), or of the weights alone.
    fn sizes(args: &Self::Args, run: bool) -> Result<Self::Sizes>;
    /// Step 4 for the groups: their buffers, in the contract's order.
    fn extents(p: &Ptrs<Self>, n: &Self::Sizes) -> Vec<Option<Extent>>;
    /// Step 5: the values of the inputs in caller memory, still before any output is written.
    ///
    /// # Safety
    /// Steps 1 to 4 passed for these pointers with the sizes `n`; they are valid (the caller's contract).
    unsafe fn check_memory(_input: &Self::Input, _n: &Self::Sizes) -> Result<()> {
        Ok(())
    }

    /// The layer packed from the weights.
    ///
    /// # Safety (this and the forward below)
    /// Steps 1 to 5 passed for the pointers with the sizes `n`; they are valid for their sizes (the
    /// caller's contract), and no output overlaps another buffer.
    unsafe fn pack(weights: &Self::Weights, n: &Self::Sizes, args: &Self::Args) -> Result<Self::Packed>;
    /// The forward of a packed layer.
    ///
    /// # Safety
    /// As [`pack`](Self::pack).
    unsafe fn forward(
        packed: &Self::Packed,
        input: &Self::Input,
        output: &Self::Output,
        n: &Self::Sizes,
        threads: usize,
        scratch: &mut Scratch,
    ) -> Result<()>;
}

/// A layer kind with gradients (C_ABI.md section 3): its backward's pointers and checks, its tapes.
pub(super) trait TrainKind: Kind {
    /// The upstream gradients and gradient outputs of a backward.
    type Grads: Copy;
    /// What a forward fills for its backward, and a tape's copies of the inputs of the run.
    type Tape: Default;
    type Copies;

    /// Step 3 for the backward of a run recorded on a tape (whose sizes were checked when it ran).
    fn tape_sizes(args: &Self::Args, copies: &Self::Copies) -> Result<Self::Sizes>;
    /// Step 4 for the gradients: their buffers, in the contract's order (after the groups of [`Ptrs`]).
    fn grad_extents(grads: &Self::Grads, n: &Self::Sizes) -> Vec<Option<Extent>>;
    /// The last check of step 4: the gradients asked for exist for the weights (`packed`: a handle's
    /// current ones; else the call's own `weights`).
    fn check_grads(
        _grads: &Self::Grads,
        _weights: Option<&Self::Weights>,
        _packed: Option<&Self::Packed>,
    ) -> Result<()> {
        Ok(())
    }
    /// Whether any gradient output is given (none: a backward validates and computes nothing).
    fn wants(grads: &Self::Grads) -> bool;

    /// The forward that fills a tape, then the copies of the inputs that the tape keeps.
    ///
    /// # Safety
    /// As [`Kind::pack`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn forward_train(
        packed: &Self::Packed,
        input: &Self::Input,
        output: &Self::Output,
        n: &Self::Sizes,
        threads: usize,
        tape: &mut Self::Tape,
        scratch: &mut Scratch,
    ) -> Result<Self::Copies>;
    /// The backward of a one-shot call: the forward that fills a tape, then the gradients.
    ///
    /// # Safety
    /// As [`Kind::pack`].
    unsafe fn backward_once(
        packed: &Self::Packed,
        input: &Self::Input,
        grads: &Self::Grads,
        n: &Self::Sizes,
        threads: usize,
        scratch: &mut Scratch,
    ) -> Result<()>;
    /// The gradients of the run recorded on a tape.
    ///
    /// # Safety
    /// As [`Kind::pack`].
    unsafe fn backward(
        packed: &Self::Packed,
        record: &Recorded<Self::Copies, Self::Tape>,
        grads: &Self::Grads,
        n: &Self::Sizes,
    ) -> Result<()>;
    /// A tape's record of a run of this kind, and back.
    fn record(run: Recorded<Self::Copies, Self::Tape>) -> Record;
    fn recorded(record: &Record) -> Option<&Recorded<Self::Copies, Self::Tape>>;
}

/// A backward's part of step 4, for [`check`]: its gradient buffers (checked after the groups of the
/// call's [`Ptrs`]), then the kind's last check of them against the weights.
struct GradCheck<'a, K: TrainKind> {
    grads: &'a K::Grads,
    /// The call's own weights (one-shot), or a handle's current packed ones (`run_backward`).
    weights: Option<&'a K::Weights>,
    packed: Option<&'a K::Packed>,
}

/// Step 1 for the pointer groups and the slot.
fn require_ptrs<K: Kind>(p: &Ptrs<K>) -> Result<()> {
    K::require(p)?;
    p.slot.map_or(Ok(()), |s| s.require())
}

/// Step 4: the buffers of the groups in the contract's order, then a backward's gradients, then the
/// slot; last, the gradients' check against the weights.
fn check<K: TrainKind>(p: &Ptrs<K>, n: &K::Sizes, grads: Option<&GradCheck<'_, K>>) -> Result<()> {
    let mut all = K::extents(p, n);
    if let Some(g) = grads {
        all.extend(K::grad_extents(g.grads, n));
    }
    all.push(p.slot.and_then(|s| s.extent()));
    check_pointers(&all)?;
    grads.map_or(Ok(()), |g| K::check_grads(g.grads, g.weights, g.packed))
}

/// Step 4 of a forward call: [`check`] without gradients, for any kind.
fn check_forward<K: Kind>(p: &Ptrs<K>, n: &K::Sizes) -> Result<()> {
    let mut all = K::extents(p, n);
    all.push(p.slot.and_then(|s| s.extent()));
    check_pointers(&all)
}

/// Steps 2 to 5 of a call with attributes, after step 1: the values (and a handle's agreement with them),
/// the sizes of the run, the pointers (`step4`: [`check_forward`], or [`check`] with a backward's
/// gradients), the values in caller memory.
///
/// # Safety
/// `attrs` is non-NULL and points to one readable attributes struct; the pointers of `p` are NULL or valid
/// for their documented sizes (the caller's contract).
unsafe fn validate<K: Kind>(
    attrs: *const K::Attrs,
    handle: Option<&K>,
    p: &Ptrs<K>,
    step4: impl FnOnce(&Ptrs<K>, &K::Sizes) -> Result<()>,
) -> Result<(K::Args, K::Sizes)> {
    // SAFETY: forwarded from this function's contract; read_unaligned needs no alignment.
    let a = unsafe { attrs.read_unaligned() };
    let args = K::args(&a, handle)?;
    let n = K::sizes(&args, true)?;
    step4(p, &n)?;
    if let Some(input) = &p.input {
        // SAFETY: steps 1 to 4 passed; valid by this function's contract.
        unsafe { K::check_memory(input, &n) }?;
    }
    Ok((args, n))
}

/// The one-shot forward (`mrnn_lstm_keras`, `mrnn_gru_onnx`, ...): validated, packed on every call, run
/// with this thread's scratch memory.
///
/// # Safety
/// The contract of those functions: every non-NULL pointer is valid for the tensor size the header
/// documents for it during the call, and no other thread writes the inputs or touches the outputs.
pub(super) unsafe fn one_shot<K: Kind>(
    attrs: *const K::Attrs,
    input: K::Input,
    weights: K::Weights,
    output: K::Output,
) -> Result<()> {
    let p = Ptrs::<K> { input: Some(input), weights: Some(weights), output: Some(output), slot: None };
    require("attrs", attrs)?;
    require_ptrs(&p)?;
    // SAFETY (here and below): the caller's contract; `attrs` passed step 1, and the pointers steps 1 to 5
    // with the sizes `n` (no output overlaps another buffer).
    let (args, n) = unsafe { validate(attrs, None, &p, check_forward) }?;
    let threads = K::threads(&args);
    // The packed weights are dropped inside the scope, so the next call on this thread packs into their
    // memory.
    with_recycled_panels(|| {
        // SAFETY: as above.
        let packed = with_pack_threads(threads, || unsafe { K::pack(&weights, &n, &args) })?;
        // SAFETY: as above.
        with_thread_scratch(|scratch| unsafe { K::forward(&packed, &input, &output, &n, threads, scratch) })
    })
}

/// The one-shot backward (`mrnn_lstm_keras_backward`, `mrnn_gru_onnx_backward`, ...): validated as the
/// one-shot forward (the gradients in place of the outputs), packed on every call, run with this thread's
/// scratch memory. With every gradient output NULL, it computes nothing.
///
/// # Safety
/// As [`one_shot`].
pub(super) unsafe fn one_shot_backward<K: TrainKind>(
    attrs: *const K::Attrs,
    input: K::Input,
    weights: K::Weights,
    grads: K::Grads,
) -> Result<()> {
    let p = Ptrs::<K> { input: Some(input), weights: Some(weights), output: None, slot: None };
    require("attrs", attrs)?;
    require_ptrs(&p)?;
    let step4 = |p: &Ptrs<K>, n: &K::Sizes| {
        check(p, n, Some(&GradCheck { grads: &grads, weights: Some(&weights), packed: None }))
    };
    // SAFETY (here and below): the caller's contract; `attrs` passed step 1, and the pointers steps 1 to 5
    // with the sizes `n` (no gradient output overlaps another buffer).
    let (args, n) = unsafe { validate(attrs, None, &p, step4) }?;
    if !K::wants(&grads) {
        // Validated; nothing asked for, so nothing is computed.
        return Ok(());
    }
    let threads = K::threads(&args);
    // As in the forward: the packed weights and their transposes are dropped inside the scope.
    with_recycled_panels(|| {
        // SAFETY: as above.
        let packed = with_pack_threads(threads, || unsafe { K::pack(&weights, &n, &args) })?;
        // SAFETY: as above.
        with_thread_scratch(|scratch| unsafe { K::backward_once(&packed, &input, &grads, &n, threads, scratch) })
    })
}

/// What a handle's run computed, with the handle's id, the generation of the weights it used and its
/// thread count.
struct HandleRun<R> {
    made: R,
    id: u64,
    generation: u64,
    threads: usize,
}

/// A handle's run: validated as the one-shot forward (with `p`'s slot, if any), then compared with the
/// handle; `go` runs on a snapshot of the handle's packed layer with its scratch memory.
///
/// # Safety
/// The contract of `*_run` and `*_run_train`: `layer` is NULL or a live handle nobody frees during the
/// call; every other non-NULL pointer is valid for its documented size, and no other thread writes the
/// inputs or touches the outputs.
unsafe fn run_handle<K: Kind, R>(
    layer: *const K,
    attrs: *const K::Attrs,
    p: &Ptrs<K>,
    go: impl FnOnce(&K::Packed, &K::Sizes, usize, &mut Scratch) -> Result<R>,
) -> Result<HandleRun<R>> {
    require("layer", layer)?;
    require("attrs", attrs)?;
    require_ptrs(p)?;
    // SAFETY (here and below): the caller's contract; `layer` and `attrs` passed step 1, and the pointers
    // steps 1 to 5 with the sizes `n` (neither an output nor the slot overlaps another buffer).
    let handle = unsafe { live("layer", layer, "a handle") }?;
    // SAFETY: as above.
    let (args, n) = unsafe { validate(attrs, Some(handle), p, check_forward) }?;
    let (core, threads) = (handle.core(), K::threads(&args));
    let (packed, generation) = core.current.snapshot();
    let made = core.scratch.with(|scratch| go(&packed, &n, threads, scratch))?;
    Ok(HandleRun { made, id: core.id, generation, threads })
}

/// A handle's run (`*_run`): bitwise the one-shot forward's outputs.
///
/// # Safety
/// As [`run_handle`].
pub(super) unsafe fn run<K: Kind>(
    layer: *const K,
    attrs: *const K::Attrs,
    input: K::Input,
    output: K::Output,
) -> Result<()> {
    let p = Ptrs::<K> { input: Some(input), output: Some(output), ..Ptrs::default() };
    // SAFETY: the caller's contract; `go` runs only after steps 1 to 5 passed for `p`.
    let go = |packed: &K::Packed, n: &K::Sizes, threads, scratch: &mut Scratch| unsafe {
        K::forward(packed, &input, &output, n, threads, scratch)
    };
    // SAFETY: forwarded from this function's contract.
    unsafe { run_handle(layer, attrs, &p, go) }.map(drop)
}

/// A handle's training run (`*_run_train`): a run that also hands out, in `tape`, a tape recording it.
///
/// # Safety
/// As [`run_handle`]; `tape` is NULL or valid for one pointer write.
pub(super) unsafe fn run_train<K: TrainKind>(
    layer: *const K,
    attrs: *const K::Attrs,
    input: K::Input,
    output: K::Output,
    tape: *mut *mut MrnnTape,
) -> Result<()> {
    let p =
        Ptrs::<K> { input: Some(input), output: Some(output), slot: Some(Slot::new("tape", tape)), ..Ptrs::default() };
    let go = |packed: &K::Packed, n: &K::Sizes, threads, scratch: &mut Scratch| {
        let mut filled = K::Tape::default();
        // SAFETY: the caller's contract; `go` runs only after steps 1 to 5 passed for `p`.
        let copies = unsafe { K::forward_train(packed, &input, &output, n, threads, &mut filled, scratch) }?;
        Ok((copies, filled))
    };
    // SAFETY: forwarded from this function's contract.
    let run = unsafe { run_handle(layer, attrs, &p, go) }?;
    let ((input, filled), threads) = (run.made, run.threads);
    let record = K::record(Recorded { threads, input, tape: filled });
    // SAFETY: the slot passed steps 1 and 4 and is valid for one write (the caller's contract).
    unsafe { hand_out(tape, MrnnTape::new(K::NAME, run.id, run.generation, record)) };
    Ok(())
}

/// The gradients of a handle's training run (`*_run_backward`): the tape must be the handle's, made with
/// its current weights (step 2); the sizes are those of the run that made it.
///
/// # Safety
/// The contract of those functions: `layer` is NULL or a live handle, `tape` NULL or a live tape, neither
/// freed during the call; every other non-NULL pointer is valid for its documented size, and no other
/// thread writes the inputs or touches the outputs.
pub(super) unsafe fn run_backward<K: TrainKind>(layer: *const K, tape: *const MrnnTape, grads: K::Grads) -> Result<()> {
    require("layer", layer)?;
    require("tape", tape)?;
    // SAFETY: live (the caller's contract), and only ever shared by the C ABI.
    let (handle, tape) = unsafe { (live("layer", layer, "a handle")?, live("tape", tape, "a tape")?) };
    let (packed, generation) = handle.core().current.snapshot();
    let record = tape.made_by::<K>(handle.core().id, generation)?;
    let n = K::tape_sizes(handle.fixed(), &record.input)?;
    check(&Ptrs::<K>::default(), &n, Some(&GradCheck { grads: &grads, weights: None, packed: Some(&packed) }))?;
    if !K::wants(&grads) {
        return Ok(());
    }
    // SAFETY: steps 1 to 4 passed with these sizes; valid and unaliased by the caller's contract.
    unsafe { K::backward(&packed, record, &grads, &n) }
}

/// A new handle (`*_new`): the attributes validated (every value, though a handle uses the per-run ones
/// only at its runs), the weights (and `out`) checked and packed once.
///
/// # Safety
/// The contract of those functions: `attrs` NULL or one readable attributes struct, the weights NULL or
/// valid for their documented sizes, `out` NULL or valid for writing one pointer.
pub(super) unsafe fn new<K: Kind>(attrs: *const K::Attrs, weights: K::Weights, out: *mut *mut K) -> Result<()> {
    let p = Ptrs::<K> { weights: Some(weights), slot: Some(Slot::new("out", out)), ..Ptrs::default() };
    require("attrs", attrs)?;
    require_ptrs(&p)?;
    // SAFETY: `attrs` passed step 1 and is readable (the caller's contract); read_unaligned needs no
    // alignment.
    let a = unsafe { attrs.read_unaligned() };
    let args = K::args(&a, None)?;
    let n = K::sizes(&args, false)?;
    check_forward(&p, &n)?;
    // SAFETY: the weights and `out` passed steps 1 to 4 with these sizes; valid by the caller's contract.
    let packed = with_pack_threads(K::threads(&args), || unsafe { K::pack(&weights, &n, &args) })?;
    // SAFETY: `out` passed steps 1 to 4; valid by the caller's contract.
    unsafe { hand_out(out, K::new_handle(packed, args, a)) };
    Ok(())
}

/// New weights for a handle (`*_set_weights`): checked with the handle's sizes, packed, and made current.
///
/// # Safety
/// The contract of those functions: `layer` NULL or a live handle nobody frees during the call, the
/// weights NULL or valid for their documented sizes.
pub(super) unsafe fn set_weights<K: Kind>(layer: *mut K, weights: K::Weights) -> Result<()> {
    let p = Ptrs::<K> { weights: Some(weights), ..Ptrs::default() };
    require("layer", layer)?;
    require_ptrs(&p)?;
    // SAFETY: a live handle (the caller's contract), only ever shared by the C ABI.
    let handle = unsafe { live("layer", layer, "a handle") }?;
    let n = K::sizes(handle.fixed(), false)?;
    check_forward(&p, &n)?;
    // SAFETY: the weights passed steps 1 to 4 with these sizes; valid by the caller's contract.
    let threads = K::threads(handle.fixed());
    // SAFETY: as above.
    handle.core().current.replace(with_pack_threads(threads, || unsafe { K::pack(&weights, &n, handle.fixed()) })?);
    Ok(())
}
