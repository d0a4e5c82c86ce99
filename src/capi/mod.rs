//! The C ABI (`include/masked_rnn.h`, contract in `C_ABI.md`): `extern "C"` functions over the Rust API.
//! Behind the cargo feature `capi`, a default one: with `default-features = false` the library exports
//! no `mrnn_*` symbol.
//!
//! Every exported body runs behind a panic boundary ([`guard`]): a failure becomes an `int32_t` status
//! plus a thread-local message for [`mrnn_last_error`], and a panic becomes `MRNN_ERR_INTERNAL`, never an
//! unwind into C. Arguments are validated in a fixed order before any caller memory is touched:
//!
//! ```text
//! 1. a required pointer is NULL                                   -> MRNN_ERR_NULL_POINTER
//! 2. a negative size, hidden_size 0, a flag not 0/1, an unknown
//!    activation code, num_threads < 0                             -> MRNN_ERR_BAD_ARGUMENT
//! 3. a tensor size (elements, or bytes past isize::MAX) overflows -> MRNN_ERR_OVERFLOW
//! 4. a misaligned float pointer, a buffer wrapping the address
//!    space, an output overlapping another buffer                  -> MRNN_ERR_BAD_ARGUMENT
//! ```
//!
//! Only then are slices built from the raw pointers and the Rust API called. Required inputs (`x`,
//! `kernel`, `recurrent_kernel`, `mask_out`, and `x`, `w`, `r` of the ONNX functions) must be non-NULL even
//! when their tensor is empty. Checks that must read caller memory (`sequence_lens` values) come last, still
//! before any output is written.
//!
//! Every function of a layer kind validates and runs through the one path of every kind (the private
//! module `layer`; the kinds are described in `keras` and `onnx`), built on the checks here: a NULL
//! pointer (`require`), sizes and thread counts (`layer_sizes`, `thread_count`, `dims`), the pointers of
//! step 4 (`check_pointers`) and the handles and tapes the C ABI gave out (`live`), so that each check
//! exists once.
//!
//! Handles ([`handle`]): `mrnn_keras_lstm_new` / `mrnn_onnx_lstm_new` validate the attributes and pack the
//! weights once; `*_run` validates only the per-run arguments and reuses the handle's [`Workspace`]. The
//! one-shot [`mrnn_lstm_keras`] and [`mrnn_lstm_onnx`] pack on every call and reuse a per-thread
//! [`Workspace`] for their scratch memory.
//!
//! The GRU and the simple RNN (the private module `gru`, C_ABI.md section 4):
//! [`mrnn_gru_onnx`], [`mrnn_rnn_onnx`], [`mrnn_gru_keras`], [`mrnn_rnn_keras`] and their handles
//! (`mrnn_{onnx,keras}_{gru,rnn}_new` / `_run` / `_free`), layer kinds on the same path with the LSTM's
//! pointer groups and checks; their gradients as the LSTM's: [`mrnn_gru_keras_backward`],
//! [`mrnn_rnn_keras_backward`], [`mrnn_gru_onnx_backward`], [`mrnn_rnn_onnx_backward`] and on the handles
//! `_run_train`, `_run_backward`, `_set_weights`.
//!
//! Training ([`train`]): the one-shot [`mrnn_lstm_keras_backward`] and [`mrnn_lstm_onnx_backward`], and on
//! a handle of either kind `*_run_train` (a run that returns an [`MrnnTape`]), `*_run_backward` (the
//! gradients of that run) and `*_set_weights` (which makes older tapes stale).
//!
//! With the `testing` feature, `fuzz_capi` drives these functions with arbitrary attributes and checks the
//! contract.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::slice;

use crate::cells::activation::Activation;
use crate::engine::Workspace;
use crate::error::{checked_product, Error, ErrorKind, Result};
use crate::frameworks::keras::{InitialState, KerasLstm, KerasLstmOptions, KerasOutputs};
use crate::frameworks::onnx::{Direction, Layout, OnnxLstm, OnnxLstmAttrs, OnnxOutputs};
use crate::view::{mask_from_values, MaskValueMode, SeqView};

#[cfg(feature = "testing")]
mod fuzz;
mod gru;
pub mod handle;
mod keras;
mod layer;
mod onnx;
pub mod train;

use keras::{KerasGradPtrs, KerasInputPtrs, KerasOutputPtrs, KerasWeightPtrs};
use layer::one_shot;
use onnx::{OnnxGradPtrs, OnnxInputPtrs, OnnxOutputPtrs, OnnxWeightPtrs};

#[cfg(feature = "testing")]
pub use fuzz::fuzz_capi;
pub use gru::{
    mrnn_gru_keras, mrnn_gru_keras_backward, mrnn_gru_onnx, mrnn_gru_onnx_backward, mrnn_keras_gru_attrs_init,
    mrnn_keras_gru_free, mrnn_keras_gru_new, mrnn_keras_gru_run, mrnn_keras_gru_run_backward, mrnn_keras_gru_run_train,
    mrnn_keras_gru_set_weights, mrnn_keras_rnn_attrs_init, mrnn_keras_rnn_free, mrnn_keras_rnn_new, mrnn_keras_rnn_run,
    mrnn_keras_rnn_run_backward, mrnn_keras_rnn_run_train, mrnn_keras_rnn_set_weights, mrnn_onnx_gru_attrs_init,
    mrnn_onnx_gru_free, mrnn_onnx_gru_new, mrnn_onnx_gru_run, mrnn_onnx_gru_run_backward, mrnn_onnx_gru_run_train,
    mrnn_onnx_gru_set_weights, mrnn_onnx_rnn_attrs_init, mrnn_onnx_rnn_free, mrnn_onnx_rnn_new, mrnn_onnx_rnn_run,
    mrnn_onnx_rnn_run_backward, mrnn_onnx_rnn_run_train, mrnn_onnx_rnn_set_weights, mrnn_rnn_keras,
    mrnn_rnn_keras_backward, mrnn_rnn_onnx, mrnn_rnn_onnx_backward, MrnnKerasGru, MrnnKerasGruAttrs, MrnnKerasRnn,
    MrnnKerasRnnAttrs, MrnnOnnxGru, MrnnOnnxGruAttrs, MrnnOnnxRnn, MrnnOnnxRnnAttrs,
};
pub use handle::{
    mrnn_keras_lstm_free, mrnn_keras_lstm_new, mrnn_keras_lstm_run, mrnn_onnx_lstm_free, mrnn_onnx_lstm_new,
    mrnn_onnx_lstm_run, MrnnKerasLstm, MrnnOnnxLstm,
};
pub use train::{
    mrnn_keras_lstm_run_backward, mrnn_keras_lstm_run_train, mrnn_keras_lstm_set_weights, mrnn_lstm_keras_backward,
    mrnn_lstm_onnx_backward, mrnn_onnx_lstm_run_backward, mrnn_onnx_lstm_run_train, mrnn_onnx_lstm_set_weights,
    mrnn_tape_bytes, mrnn_tape_free, MrnnTape,
};

/// Success.
pub const MRNN_OK: i32 = 0;
/// A required pointer argument was NULL.
pub const MRNN_ERR_NULL_POINTER: i32 = 1;
/// Buffer lengths or dimensions disagree.
pub const MRNN_ERR_BAD_SHAPE: i32 = 2;
/// A value out of range: a negative size, an unknown enum, a flag that is not 0/1, a misaligned or
/// overlapping buffer.
pub const MRNN_ERR_BAD_ARGUMENT: i32 = 3;
/// Sizes whose product overflows (elements, or bytes past `isize::MAX`).
pub const MRNN_ERR_OVERFLOW: i32 = 4;
/// A caught panic: a bug in the library.
pub const MRNN_ERR_INTERNAL: i32 = 5;

/// What [`mrnn_status_string`] returns for each status code, indexed by the code: its name (as in the
/// header's `MrnnStatus` enum) and a short meaning.
static STATUS_STRINGS: [&CStr; 6] = [
    c"MRNN_OK: success",
    c"MRNN_ERR_NULL_POINTER: a required pointer is NULL",
    c"MRNN_ERR_BAD_SHAPE: buffer lengths or dimensions disagree",
    c"MRNN_ERR_BAD_ARGUMENT: a value out of range (a negative size, an unknown enum, a flag not 0/1, a \
      misaligned or overlapping buffer)",
    c"MRNN_ERR_OVERFLOW: sizes whose product overflows",
    c"MRNN_ERR_INTERNAL: internal error (a caught panic, a bug in the library)",
];

/// What [`mrnn_status_string`] returns for a value that is no status code.
static UNKNOWN_STATUS: &CStr = c"unknown status: not an MRNN_* status code";

/// The name and a short meaning of a status code, e.g. `"MRNN_ERR_NULL_POINTER: a required pointer is
/// NULL"`: a static NUL-terminated string, never NULL; for a value that is no status code, `"unknown
/// status: ..."`. Neither sets nor clears the thread's last error.
#[unsafe(no_mangle)]
pub extern "C" fn mrnn_status_string(status: i32) -> *const c_char {
    usize::try_from(status).ok().and_then(|k| STATUS_STRINGS.get(k)).unwrap_or(&UNKNOWN_STATUS).as_ptr()
}

/// Attributes of [`mrnn_lstm_keras`]; field for field `MrnnKerasLstmAttrs` of `masked_rnn.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MrnnKerasLstmAttrs {
    /// `B`.
    pub batch_size: i64,
    /// `T`.
    pub seq_length: i64,
    /// `I`.
    pub input_size: i64,
    /// `H` (at least 1).
    pub hidden_size: i64,
    /// 0 or 1: Keras `go_backwards`.
    pub go_backwards: i32,
    /// 0 or 1: Keras `zero_output_for_mask`.
    pub zero_output_for_mask: i32,
    /// `MRNN_ACT_*` of Keras `activation` (parameters: the code's defaults).
    pub activation: i32,
    /// `MRNN_ACT_*` of Keras `recurrent_activation`.
    pub recurrent_activation: i32,
    /// HardSigmoid slope when `recurrent_activation` is 7; NaN: 0.2. Ignored otherwise.
    pub recurrent_alpha: f32,
    /// HardSigmoid offset when `recurrent_activation` is 7; NaN: 0.5. Ignored otherwise.
    pub recurrent_beta: f32,
    /// 0: all cores; 1: the calling thread; n: n threads.
    pub num_threads: i32,
}

// The layout the header promises (C: four int64_t, four int32_t, two float, one int32_t, tail padding).
const _: () = {
    assert!(std::mem::size_of::<MrnnKerasLstmAttrs>() == 64);
    assert!(std::mem::align_of::<MrnnKerasLstmAttrs>() == 8);
    assert!(std::mem::offset_of!(MrnnKerasLstmAttrs, go_backwards) == 32);
    assert!(std::mem::offset_of!(MrnnKerasLstmAttrs, recurrent_alpha) == 48);
    assert!(std::mem::offset_of!(MrnnKerasLstmAttrs, num_threads) == 56);
};

impl Default for MrnnKerasLstmAttrs {
    /// What [`mrnn_keras_lstm_attrs_init`] writes: sizes 0, Keras defaults, NaN HardSigmoid parameters.
    fn default() -> Self {
        MrnnKerasLstmAttrs {
            batch_size: 0,
            seq_length: 0,
            input_size: 0,
            hidden_size: 0,
            go_backwards: 0,
            zero_output_for_mask: 0,
            activation: Activation::Tanh.code(),
            recurrent_activation: Activation::Sigmoid.code(),
            recurrent_alpha: f32::NAN,
            recurrent_beta: f32::NAN,
            num_threads: 0,
        }
    }
}

/// Attributes of [`mrnn_lstm_onnx`]; field for field `MrnnOnnxLstmAttrs` of `masked_rnn.h` (C_ABI.md
/// section 1: names, order and numbering are the stable contract).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MrnnOnnxLstmAttrs {
    /// `T`.
    pub seq_length: i64,
    /// `B`.
    pub batch_size: i64,
    /// `I`.
    pub input_size: i64,
    /// `H` (at least 1).
    pub hidden_size: i64,
    /// 0 forward, 1 reverse, 2 bidirectional.
    pub direction: i32,
    /// 0: `X [T,B,I]`, `Y [T,D,B,H]`, states `[D,B,H]`; 1: `X [B,T,I]`, `Y [B,T,D,H]`, states `[B,D,H]`.
    pub layout: i32,
    /// 0 or 1: ONNX `input_forget`.
    pub input_forget: i32,
    /// 0: no clip; 1: `clip` applies.
    pub has_clip: i32,
    /// ONNX `clip` when `has_clip` is 1: > 0, `+inf` = no clipping. Ignored when `has_clip` is 0.
    pub clip: f32,
    /// 0 (defaults), 3 (used for every direction) or 6 (bidirectional only).
    pub num_activations: i32,
    /// `MRNN_ACT_*` per direction: f, g, h. Entries past `num_activations` are ignored.
    pub activations: [i32; 6],
    /// Per activation; NaN: ONNX Runtime's default for that activation (`Activation::from_code`).
    pub activation_alpha: [f32; 6],
    /// Per activation; NaN: the default of that activation.
    pub activation_beta: [f32; 6],
    /// 0: all cores; 1: the calling thread; n: n threads.
    pub num_threads: i32,
}

// The layout the header promises (C: four int64_t, four int32_t, a float, an int32_t, three arrays of six
// 4-byte values, an int32_t, tail padding to a multiple of 8).
const _: () = {
    assert!(std::mem::size_of::<MrnnOnnxLstmAttrs>() == 136);
    assert!(std::mem::align_of::<MrnnOnnxLstmAttrs>() == 8);
    assert!(std::mem::offset_of!(MrnnOnnxLstmAttrs, direction) == 32);
    assert!(std::mem::offset_of!(MrnnOnnxLstmAttrs, clip) == 48);
    assert!(std::mem::offset_of!(MrnnOnnxLstmAttrs, num_activations) == 52);
    assert!(std::mem::offset_of!(MrnnOnnxLstmAttrs, activations) == 56);
    assert!(std::mem::offset_of!(MrnnOnnxLstmAttrs, activation_alpha) == 80);
    assert!(std::mem::offset_of!(MrnnOnnxLstmAttrs, activation_beta) == 104);
    assert!(std::mem::offset_of!(MrnnOnnxLstmAttrs, num_threads) == 128);
};

impl Default for MrnnOnnxLstmAttrs {
    /// What [`mrnn_onnx_lstm_attrs_init`] writes: sizes 0, forward, layout 0, no input_forget, no clip
    /// (`clip` NaN), the default activations (`num_activations` 0; the array holds Sigmoid, Tanh, Tanh
    /// twice), NaN alpha/beta, `num_threads` 0.
    fn default() -> Self {
        let (s, t) = (Activation::Sigmoid.code(), Activation::Tanh.code());
        MrnnOnnxLstmAttrs {
            seq_length: 0,
            batch_size: 0,
            input_size: 0,
            hidden_size: 0,
            direction: 0,
            layout: 0,
            input_forget: 0,
            has_clip: 0,
            clip: f32::NAN,
            num_activations: 0,
            activations: [s, t, t, s, t, t],
            activation_alpha: [f32::NAN; 6],
            activation_beta: [f32::NAN; 6],
            num_threads: 0,
        }
    }
}

/// The status code of an error kind.
pub fn status_of(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::NullPointer => MRNN_ERR_NULL_POINTER,
        ErrorKind::BadShape => MRNN_ERR_BAD_SHAPE,
        ErrorKind::BadArgument => MRNN_ERR_BAD_ARGUMENT,
        ErrorKind::Overflow => MRNN_ERR_OVERFLOW,
        // Exhaustive on purpose (non_exhaustive does not apply inside the crate): a new kind must get a code.
        ErrorKind::Internal => MRNN_ERR_INTERNAL,
    }
}

thread_local! {
    /// The message of the last failing call on this thread; replaced by the next failure only.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: String) {
    // Interior NULs would truncate the C string; show them instead.
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // During thread teardown the slot may be gone: the message is then lost, the status is not.
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = message;
        }
    });
}

/// The message of the last failing C ABI call on this thread, as a Rust string (empty if none).
pub fn last_error_message() -> String {
    LAST_ERROR
        .try_with(|slot| slot.try_borrow().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
        .unwrap_or_default()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "a panic with a non-string payload"
    }
}

/// Runs an exported function's body: `Ok` becomes `MRNN_OK`; an error becomes its status code and the
/// thread's last error message (prefixed by `function`); a panic becomes `MRNN_ERR_INTERNAL`.
pub fn guard(function: &str, body: impl FnOnce() -> Result<()>) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => MRNN_OK,
        Ok(Err(e)) => {
            set_last_error(format!("{function}: {e}"));
            status_of(e.kind())
        }
        Err(payload) => {
            set_last_error(format!("{function}: internal error: panic: {}", panic_message(&*payload)));
            // Dropping the payload may itself panic (a payload with a panicking Drop): contain that too.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            MRNN_ERR_INTERNAL
        }
    }
}

fn null(name: &str) -> Error {
    Error::new(ErrorKind::NullPointer, format!("{name} is NULL"))
}

/// Step 1 for one pointer: `Err(NullPointer)` naming it when it is NULL.
fn require<T>(name: &str, p: *const T) -> Result<()> {
    if p.is_null() {
        Err(null(name))
    } else {
        Ok(())
    }
}

fn non_negative(name: &str, v: i64) -> Result<()> {
    if v < 0 {
        return Err(Error::argument(format!("{name} = {v} is negative")));
    }
    Ok(())
}

fn flag(name: &str, v: i32) -> Result<bool> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Error::argument(format!("{name} = {v}, expected 0 or 1"))),
    }
}

/// A size already known to be non-negative, as `usize` (`Overflow` past the address width).
fn dim(name: &str, v: i64) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::overflow(format!("{name} = {v} does not fit in size_t")))
}

/// Step 3's conversion of sizes already checked by step 2, in order.
fn dims<const N: usize>(sizes: [(&str, i64); N]) -> Result<[usize; N]> {
    let mut out = [0; N];
    for (o, (name, v)) in out.iter_mut().zip(sizes) {
        *o = dim(name, v)?;
    }
    Ok(out)
}

/// Step 2 for the four sizes of a layer's attributes, in their field order (`hidden_size` last): none
/// negative, then `hidden_size` at least 1.
fn layer_sizes(sizes: &[(&str, i64); 4]) -> Result<()> {
    for &(name, v) in sizes {
        non_negative(name, v)?;
    }
    if sizes[3].1 == 0 {
        return Err(Error::argument("hidden_size must be at least 1"));
    }
    Ok(())
}

/// Step 2 for `num_threads`: the thread count (0: all cores), never negative.
fn thread_count(num_threads: i32) -> Result<usize> {
    usize::try_from(num_threads).map_err(|_| Error::argument(format!("num_threads = {num_threads} is negative")))
}

/// Where a caller buffer lies, for the alignment, wrap-around and overlap checks of step 4.
#[derive(Clone, Copy, Debug)]
struct Extent {
    name: &'static str,
    ptr: *const (),
    bytes: usize,
    /// The alignment its element type needs, and whether `ptr` has it.
    align: usize,
    aligned: bool,
    output: bool,
}

impl Extent {
    /// The extent of `len` values at `p`; `None` for NULL (an absent buffer). Checked by [`check_pointers`].
    fn new<T>(name: &'static str, p: *const T, len: usize, output: bool) -> Option<Self> {
        (!p.is_null()).then(|| Extent {
            name,
            ptr: p.cast(),
            // `len` comes from `checked_product` (or is at most such a product), so `len * size_of::<T>()`
            // <= isize::MAX for T up to 8 bytes (pointer slots hold one element).
            bytes: len * std::mem::size_of::<T>(),
            align: std::mem::align_of::<T>(),
            aligned: p.is_aligned(),
            output,
        })
    }

    /// The buffer alone: aligned, and not wrapping around the address space.
    fn check(&self) -> Result<()> {
        let (name, p, bytes) = (self.name, self.ptr, self.bytes);
        if !self.aligned {
            return Err(Error::argument(format!("{name} ({p:p}) is not aligned to {} bytes", self.align)));
        }
        if p.addr().checked_add(bytes).is_none() {
            return Err(Error::argument(format!("{name} ({p:p}, {bytes} bytes) wraps around the address space")));
        }
        Ok(())
    }

    fn overlaps(&self, other: &Extent) -> bool {
        let (start, other_start) = (self.ptr.addr(), other.ptr.addr());
        self.bytes > 0 && other.bytes > 0 && start < other_start + other.bytes && other_start < start + self.bytes
    }
}

/// Step 4 over every buffer of a call, in the contract's order: each one aligned and not wrapping (the
/// first failing one is reported), then no output overlapping another buffer (inputs may share memory
/// with each other).
fn check_pointers(extents: &[Option<Extent>]) -> Result<()> {
    let all: Vec<&Extent> = extents.iter().flatten().collect();
    for e in &all {
        e.check()?;
    }
    for (k, a) in all.iter().enumerate() {
        for b in &all[k + 1..] {
            if (a.output || b.output) && a.overlaps(b) {
                return Err(Error::argument(format!("{} overlaps {}", a.name, b.name)));
            }
        }
    }
    Ok(())
}

/// A pointer-sized slot a call writes last (the handle of `_new`, the tape of `*_run_train`): NULL-checked
/// with the required pointers (step 1), checked as a one-pointer output with the buffers (step 4).
#[derive(Clone, Copy, Debug)]
struct Slot {
    name: &'static str,
    ptr: *mut *mut (),
}

impl Slot {
    fn new<T>(name: &'static str, ptr: *mut *mut T) -> Self {
        Slot { name, ptr: ptr.cast() }
    }

    fn require(&self) -> Result<()> {
        require(self.name, self.ptr)
    }

    fn extent(&self) -> Option<Extent> {
        Extent::new(self.name, self.ptr, 1, true)
    }
}

/// Writes `value`, boxed, to `*slot`: the last act of a successful `_new` or `*_run_train`.
///
/// # Safety
/// `slot` was checked non-NULL (step 1) and, as a [`Slot`], aligned and overlapping no other buffer of the
/// call (step 4); it is valid for one pointer write (the caller's contract).
unsafe fn hand_out<T>(slot: *mut *mut T, value: T) {
    // SAFETY: forwarded from this function's contract.
    unsafe { slot.write(Box::into_raw(Box::new(value))) };
}

/// The live object (`what`: "a handle", "a tape") the C ABI gave out as `p`, after the NULL checks: a
/// misaligned pointer is no such object (`BadArgument`).
///
/// # Safety
/// `p` is non-NULL and, when aligned, points to a live `T` from this library that nobody frees during
/// `'a`; the C ABI only ever takes `&` to its handles and tapes (interior mutability), so the reference
/// aliases no `&mut`.
unsafe fn live<'a, T>(name: &str, p: *const T, what: &str) -> Result<&'a T> {
    if !p.is_aligned() {
        return Err(Error::argument(format!("{name} ({p:p}) is not {what}: misaligned")));
    }
    // SAFETY: non-NULL and aligned (checked above), and live for `'a` (this function's contract).
    Ok(unsafe { &*p })
}

/// The body of the `_free` functions: NULL is a no-op, anything else is dropped. A panic while dropping
/// (there is none to expect) becomes a last-error message of `function`, never an unwind.
///
/// # Safety
/// `p` is NULL or a pointer from `Box::into_raw` not yet reclaimed, which nobody uses during or after this
/// call.
unsafe fn free_boxed<T>(function: &str, p: *mut T) {
    if p.is_null() {
        return;
    }
    let _ = guard(function, || {
        // SAFETY: forwarded from this function's contract.
        drop(unsafe { Box::from_raw(p) });
        Ok(())
    });
}

/// Builds an input slice.
///
/// # Safety
/// `p` is NULL, or non-NULL, aligned and valid for reads of `len` values for `'a` (the caller's contract),
/// with `len * size_of::<T>() <= isize::MAX`, and no `&mut` to that memory lives during `'a`.
unsafe fn input<'a, T>(p: *const T, len: usize) -> Option<&'a [T]> {
    // SAFETY: forwarded from this function's contract; NULL is mapped to None.
    (!p.is_null()).then(|| unsafe { slice::from_raw_parts(p, len) })
}

/// Builds the slice of a required input (checked non-NULL at step 1).
///
/// # Safety
/// As [`input`].
unsafe fn required<'a, T>(name: &str, p: *const T, len: usize) -> Result<&'a [T]> {
    // SAFETY: forwarded from this function's contract.
    unsafe { input(p, len) }.ok_or_else(|| null(name))
}

/// Builds an output slice.
///
/// # Safety
/// As [`input`], for writes, and the memory is reachable through no other reference during `'a`.
unsafe fn output<'a, T>(p: *mut T, len: usize) -> Option<&'a mut [T]> {
    // SAFETY: forwarded from this function's contract; NULL is mapped to None.
    (!p.is_null()).then(|| unsafe { slice::from_raw_parts_mut(p, len) })
}

/// Scratch memory of the C ABI's layer runs: the engine's [`Workspace`], and the zeros that stand in for
/// a missing half of a Keras initial state. Contents never affect results; only capacity is reused.
#[derive(Debug, Default)]
struct Scratch {
    workspace: Workspace,
    zeros: Vec<f32>,
}

thread_local! {
    /// The scratch memory of the one-shot functions on this thread, kept until the thread exits.
    static SCRATCH: Cell<Scratch> = Cell::new(Scratch::default());
}

/// Runs `f` with this thread's [`SCRATCH`], taken out of its slot for the call (a nested call or a thread
/// that is exiting gets a fresh, temporary one) and put back afterwards (dropped if `f` panics).
fn with_thread_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut scratch = SCRATCH.try_with(Cell::take).unwrap_or_default();
    let result = f(&mut scratch);
    let _ = SCRATCH.try_with(|slot| slot.set(scratch));
    result
}

/// Fills `*attrs` with the defaults: sizes 0, `go_backwards` and `zero_output_for_mask` 0, activation
/// Tanh, recurrent activation Sigmoid, NaN (default) HardSigmoid parameters, `num_threads` 0.
///
/// # Safety
/// `attrs` is NULL or valid for writing one `MrnnKerasLstmAttrs`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_keras_lstm_attrs_init(attrs: *mut MrnnKerasLstmAttrs) -> i32 {
    guard("mrnn_keras_lstm_attrs_init", || {
        require("attrs", attrs)?;
        // SAFETY: `attrs` is non-NULL (checked above) and valid for one write (caller's contract);
        // write_unaligned needs no alignment.
        unsafe { attrs.write_unaligned(MrnnKerasLstmAttrs::default()) };
        Ok(())
    })
}

/// The activation of a Keras-style code: fixed parameters (the header's `MrnnKerasLstmAttrs`), so that
/// Affine is Keras `linear` whatever NaN means for the ONNX operator; `alpha`/`beta` (NaN: 0.2 / 0.5) are
/// used by HardSigmoid only.
fn keras_activation(code: i32, alpha: f32, beta: f32) -> Result<Activation> {
    let or = |v: f32, d: f32| if v.is_nan() { d } else { v };
    Ok(match code {
        3 => Activation::Affine { alpha: 1.0, beta: 0.0 },
        4 => Activation::LeakyRelu { alpha: 0.01 },
        5 => Activation::ThresholdedRelu { alpha: 1.0 },
        6 => Activation::ScaledTanh { alpha: 1.0, beta: 1.0 },
        7 => Activation::HardSigmoid { alpha: or(alpha, 0.2), beta: or(beta, 0.5) },
        8 => Activation::Elu { alpha: 1.0 },
        _ => Activation::from_code(code, f32::NAN, f32::NAN)?,
    })
}

/// Keras-style masked LSTM; see `masked_rnn.h` for the arguments.
///
/// # Safety
/// Every non-NULL pointer is valid for the tensor size the header documents for it (reads for the `const`
/// inputs, writes for the outputs) for the duration of the call, and no other thread writes the inputs
/// or touches the outputs meanwhile. NULL is always allowed: it is reported or means "absent".
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_lstm_keras(
    attrs: *const MrnnKerasLstmAttrs,
    x: *const f32,
    mask: *const u8,
    kernel: *const f32,
    recurrent_kernel: *const f32,
    bias: *const f32,
    initial_h: *const f32,
    initial_c: *const f32,
    y: *mut f32,
    last_output: *mut f32,
    h_n: *mut f32,
    c_n: *mut f32,
) -> i32 {
    let input = KerasInputPtrs { x, mask, initial_h, initial_c };
    let weights = KerasWeightPtrs { kernel, recurrent_kernel, bias };
    let output = KerasOutputPtrs { y, last_output, h_n, c_n };
    // SAFETY: the caller's contract, as `one_shot` requires it.
    guard("mrnn_lstm_keras", || unsafe { one_shot::<MrnnKerasLstm>(attrs, input, weights, output) })
}

/// Fills `*attrs` with the defaults: sizes 0, forward, layout 0, `input_forget` 0, `has_clip` 0 (`clip`
/// NaN), `num_activations` 0 (the array holds Sigmoid, Tanh, Tanh for each direction), NaN alpha/beta,
/// `num_threads` 0.
///
/// # Safety
/// `attrs` is NULL or valid for writing one `MrnnOnnxLstmAttrs`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_onnx_lstm_attrs_init(attrs: *mut MrnnOnnxLstmAttrs) -> i32 {
    guard("mrnn_onnx_lstm_attrs_init", || {
        require("attrs", attrs)?;
        // SAFETY: `attrs` is non-NULL (checked above) and valid for one write (caller's contract);
        // write_unaligned needs no alignment.
        unsafe { attrs.write_unaligned(MrnnOnnxLstmAttrs::default()) };
        Ok(())
    })
}

/// The ONNX `LSTM` operator (opset 22); see `masked_rnn.h` for the arguments.
///
/// # Safety
/// Every non-NULL pointer is valid for the tensor size the header documents for it (reads for the `const`
/// inputs, writes for the outputs) for the duration of the call, and no other thread writes the inputs
/// or touches the outputs meanwhile. NULL is always allowed: it is reported or means "absent".
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_lstm_onnx(
    attrs: *const MrnnOnnxLstmAttrs,
    x: *const f32,
    w: *const f32,
    r: *const f32,
    b: *const f32,
    sequence_lens: *const i32,
    initial_h: *const f32,
    initial_c: *const f32,
    p: *const f32,
    y: *mut f32,
    y_h: *mut f32,
    y_c: *mut f32,
) -> i32 {
    let input = OnnxInputPtrs { x, sequence_lens, initial_h, initial_c };
    let weights = OnnxWeightPtrs { w, r, b, p };
    let output = OnnxOutputPtrs { y, y_h, y_c };
    // SAFETY: the caller's contract, as `one_shot` requires it.
    guard("mrnn_lstm_onnx", || unsafe { one_shot::<MrnnOnnxLstm>(attrs, input, weights, output) })
}

/// Keras `Masking`; see `masked_rnn.h` for the arguments.
///
/// # Safety
/// `x` is NULL or valid for reading `batch_size * seq_length * features` floats, `mask_out` NULL or valid
/// for writing `batch_size * seq_length` bytes, for the duration of the call, and no other thread writes
/// `x` or touches `mask_out` meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_mask_from_value(
    x: *const f32,
    batch_size: i64,
    seq_length: i64,
    features: i64,
    mask_value: f32,
    nan_aware: i32,
    mask_out: *mut u8,
) -> i32 {
    guard("mrnn_mask_from_value", || {
        require("x", x)?;
        require("mask_out", mask_out)?;
        let sizes = [("batch_size", batch_size), ("seq_length", seq_length), ("features", features)];
        for (name, v) in sizes {
            non_negative(name, v)?;
        }
        let mode = if flag("nan_aware", nan_aware)? { MaskValueMode::NanAware } else { MaskValueMode::Ieee };
        let [b, t, f] = dims(sizes)?;
        let n_x = checked_product(&[b, t, f], "x [B,T,F]")?;
        let n_mask = checked_product(&[b, t], "mask_out [B,T]")?;
        check_pointers(&[Extent::new("x", x, n_x, false), Extent::new("mask_out", mask_out, n_mask, true)])?;
        // SAFETY: both pointers are non-NULL (checked first), aligned and non-wrapping for these lengths
        // (`check_pointers`), the lengths are bounded by `checked_product`, the caller guarantees validity,
        // and `check_pointers` proved the output does not overlap `x`.
        let (x, out) = unsafe { (required("x", x, n_x)?, output(mask_out, n_mask).ok_or_else(|| null("mask_out"))?) };
        let mut mask = vec![false; n_mask];
        mask_from_values(x, b, t, f, mask_value, mode, &mut mask)?;
        for (o, &m) in out.iter_mut().zip(&mask) {
            *o = u8::from(m);
        }
        Ok(())
    })
}

static EMPTY: &CStr = c"";

/// The message of the last failing call on this thread: a NUL-terminated string, empty if no call has
/// failed on this thread. Successful calls do not clear it. The pointer stays valid until the next failing
/// call on this thread (or the thread's exit).
#[unsafe(no_mangle)]
pub extern "C" fn mrnn_last_error() -> *const c_char {
    catch_unwind(|| {
        LAST_ERROR
            .try_with(|slot| slot.try_borrow().map(|s| s.as_ptr()).unwrap_or(EMPTY.as_ptr()))
            .unwrap_or(EMPTY.as_ptr())
    })
    .unwrap_or(EMPTY.as_ptr())
}

static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// The crate version, a static NUL-terminated string such as `"0.1.0"`.
#[unsafe(no_mangle)]
pub extern "C" fn mrnn_version() -> *const c_char {
    catch_unwind(|| VERSION.as_ptr().cast()).unwrap_or(EMPTY.as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr;

    fn last() -> String {
        // SAFETY: mrnn_last_error always returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(mrnn_last_error()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn error_kinds_map_to_status_codes() {
        assert_eq!(status_of(ErrorKind::NullPointer), 1);
        assert_eq!(status_of(ErrorKind::BadShape), 2);
        assert_eq!(status_of(ErrorKind::BadArgument), 3);
        assert_eq!(status_of(ErrorKind::Overflow), 4);
        assert_eq!(status_of(ErrorKind::Internal), 5);
    }

    #[test]
    fn status_strings_name_each_code_and_leave_the_last_error() {
        let text = |status: i32| {
            let p = mrnn_status_string(status);
            assert!(!p.is_null(), "status {status}");
            // SAFETY: non-NULL, and always a static NUL-terminated string.
            unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned()
        };
        let named = [
            (MRNN_OK, "MRNN_OK: "),
            (MRNN_ERR_NULL_POINTER, "MRNN_ERR_NULL_POINTER: "),
            (MRNN_ERR_BAD_SHAPE, "MRNN_ERR_BAD_SHAPE: "),
            (MRNN_ERR_BAD_ARGUMENT, "MRNN_ERR_BAD_ARGUMENT: "),
            (MRNN_ERR_OVERFLOW, "MRNN_ERR_OVERFLOW: "),
            (MRNN_ERR_INTERNAL, "MRNN_ERR_INTERNAL: "),
        ];
        assert_eq!(guard("before", || Err(Error::argument("kept"))), MRNN_ERR_BAD_ARGUMENT);
        for (status, prefix) in named {
            let s = text(status);
            assert!(s.starts_with(prefix) && s.len() > prefix.len() + 5, "{status}: {s:?}");
        }
        for status in [-1, 6, 7, 100, i32::MIN, i32::MAX] {
            assert!(text(status).starts_with("unknown status"), "{status}: {:?}", text(status));
        }
        // The same static string every time, and the last error untouched.
        assert_eq!(mrnn_status_string(2), mrnn_status_string(2));
        assert_eq!(last(), "before: bad argument: kept");
    }

    #[test]
    fn guard_maps_errors_and_panics() {
        assert_eq!(guard("f", || Ok(())), MRNN_OK);
        assert_eq!(guard("f", || Err(Error::shape("s"))), MRNN_ERR_BAD_SHAPE);
        assert_eq!(last(), "f: bad shape: s");
        assert_eq!(guard("f", || Err(Error::argument("a"))), MRNN_ERR_BAD_ARGUMENT);
        assert_eq!(guard("f", || Err(Error::overflow("o"))), MRNN_ERR_OVERFLOW);
        assert_eq!(guard("f", || Err(null("p"))), MRNN_ERR_NULL_POINTER);
        assert_eq!(guard("g", || panic!("boom {}", 1)), MRNN_ERR_INTERNAL);
        assert!(last().contains("boom 1"), "{}", last());
        assert_eq!(guard("g", || std::panic::panic_any(42_u32)), MRNN_ERR_INTERNAL);
        assert!(last().contains("non-string"), "{}", last());
        // Success leaves the last message in place.
        assert_eq!(guard("f", || Ok(())), MRNN_OK);
        assert!(last().contains("non-string"));
        // Interior NULs do not truncate the message.
        guard("f", || Err(Error::argument("a\0b")));
        assert_eq!(last(), "f: bad argument: a\\0b");
    }

    #[test]
    fn last_error_is_per_thread() {
        guard("f", || Err(Error::argument("here")));
        let other = std::thread::spawn(|| {
            let before = last();
            guard("f", || Err(Error::overflow("there")));
            (before, last())
        })
        .join()
        .unwrap();
        assert_eq!(other.0, "");
        assert!(other.1.contains("there"));
        assert!(last().contains("here"));
    }

    #[test]
    fn version_is_the_crate_version() {
        // SAFETY: a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(mrnn_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }

    fn call(a: &MrnnKerasLstmAttrs, y: &mut [f32]) -> i32 {
        let n = |d: i64| usize::try_from(d).unwrap_or(0).min(1 << 10);
        let (b, t, i, h) = (n(a.batch_size), n(a.seq_length), n(a.input_size), n(a.hidden_size));
        let x = vec![0.5; b * t * i];
        let k = vec![0.1; i * 4 * h];
        let r = vec![0.1; h * 4 * h];
        let y = if y.is_empty() { ptr::null_mut() } else { y.as_mut_ptr() };
        // SAFETY: the buffers have the sizes of the attributes whenever those are sane; otherwise the call
        // fails validation before reading them.
        unsafe {
            mrnn_lstm_keras(
                a,
                x.as_ptr(),
                ptr::null(),
                k.as_ptr(),
                r.as_ptr(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
                y,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        }
    }

    #[test]
    fn argument_checks_map_to_statuses() {
        let ok =
            MrnnKerasLstmAttrs { batch_size: 2, seq_length: 3, input_size: 2, hidden_size: 3, ..Default::default() };
        let mut y = vec![0.0; 18];
        assert_eq!(call(&ok, &mut y), MRNN_OK);
        let cases: [(MrnnKerasLstmAttrs, i32); 10] = [
            (MrnnKerasLstmAttrs { batch_size: -1, ..ok }, 3),
            (MrnnKerasLstmAttrs { hidden_size: 0, ..ok }, 3),
            (MrnnKerasLstmAttrs { go_backwards: 2, ..ok }, 3),
            (MrnnKerasLstmAttrs { zero_output_for_mask: -1, ..ok }, 3),
            (MrnnKerasLstmAttrs { activation: 11, ..ok }, 3),
            (MrnnKerasLstmAttrs { recurrent_activation: -1, ..ok }, 3),
            (MrnnKerasLstmAttrs { num_threads: -1, ..ok }, 3),
            (MrnnKerasLstmAttrs { batch_size: i64::MAX / 2, seq_length: 4, ..ok }, 4),
            (MrnnKerasLstmAttrs { hidden_size: i64::MAX / 2, ..ok }, 4),
            // A negative size wins over an overflowing one.
            (MrnnKerasLstmAttrs { batch_size: i64::MAX, seq_length: i64::MAX, input_size: -3, ..ok }, 3),
        ];
        for (a, status) in cases {
            assert_eq!(call(&a, &mut []), status, "{a:?}");
            assert!(!last().is_empty());
        }
    }

    #[test]
    fn overlapping_outputs_are_rejected() {
        let a =
            MrnnKerasLstmAttrs { batch_size: 1, seq_length: 1, input_size: 1, hidden_size: 2, ..Default::default() };
        let (x, k, r) = ([1.0_f32], [0.1_f32; 8], [0.1_f32; 16]);
        let mut out = [0.0_f32; 4];
        let p = out.as_mut_ptr();
        // SAFETY: every pointer is valid for its documented size; h_n and c_n share memory on purpose.
        let status = unsafe {
            mrnn_lstm_keras(
                &a,
                x.as_ptr(),
                ptr::null(),
                k.as_ptr(),
                r.as_ptr(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
                ptr::null_mut(),
                ptr::null_mut(),
                p,
                p.wrapping_add(1),
            )
        };
        assert_eq!(status, MRNN_ERR_BAD_ARGUMENT);
        assert!(last().contains("overlaps"), "{}", last());
    }

    #[test]
    fn mask_from_value_checks() {
        let x = [0.0_f32, 0.0, 1.0, 0.0];
        let mut m = [9_u8; 2];
        // SAFETY: x has 1*2*2 floats, m has 1*2 bytes.
        assert_eq!(unsafe { mrnn_mask_from_value(x.as_ptr(), 1, 2, 2, 0.0, 0, m.as_mut_ptr()) }, MRNN_OK);
        assert_eq!(m, [0, 1]);
        // SAFETY: NULL and bad arguments are rejected before any access.
        unsafe {
            assert_eq!(mrnn_mask_from_value(ptr::null(), 1, 2, 2, 0.0, 0, m.as_mut_ptr()), 1);
            assert_eq!(mrnn_mask_from_value(x.as_ptr(), 1, 2, 2, 0.0, 0, ptr::null_mut()), 1);
            assert_eq!(mrnn_mask_from_value(x.as_ptr(), 1, -2, 2, 0.0, 0, m.as_mut_ptr()), 3);
            assert_eq!(mrnn_mask_from_value(x.as_ptr(), 1, 2, 2, 0.0, 2, m.as_mut_ptr()), 3);
            assert_eq!(mrnn_mask_from_value(x.as_ptr(), i64::MAX, 2, 2, 0.0, 0, m.as_mut_ptr()), 4);
        }
    }

    #[test]
    fn attrs_init_writes_defaults() {
        let mut a = MrnnKerasLstmAttrs { batch_size: 7, ..Default::default() };
        // SAFETY: a valid attrs struct.
        assert_eq!(unsafe { mrnn_keras_lstm_attrs_init(&mut a) }, MRNN_OK);
        assert_eq!(a.batch_size, 0);
        assert_eq!(a.activation, 1);
        assert!(a.recurrent_alpha.is_nan());
        // SAFETY: NULL is reported.
        assert_eq!(unsafe { mrnn_keras_lstm_attrs_init(ptr::null_mut()) }, MRNN_ERR_NULL_POINTER);
    }

    /// Calls `mrnn_lstm_onnx` with inputs of the attributes' sizes (when they are sane), `lens` and `y`.
    fn call_onnx(a: &MrnnOnnxLstmAttrs, lens: Option<&[i32]>, y: &mut [f32]) -> i32 {
        let n = |v: i64| usize::try_from(v).unwrap_or(0).min(1 << 10);
        let d = if a.direction == 2 { 2 } else { 1 };
        let (t, b, i, h) = (n(a.seq_length), n(a.batch_size), n(a.input_size), n(a.hidden_size));
        let x = vec![0.5; t * b * i];
        let w = vec![0.1; d * 4 * h * i];
        let r = vec![-0.1; d * 4 * h * h];
        let y = if y.is_empty() { ptr::null_mut() } else { y.as_mut_ptr() };
        let lens = lens.map_or(ptr::null(), <[i32]>::as_ptr);
        // SAFETY: the buffers have the sizes of the attributes whenever those are sane (`lens` has
        // batch_size values, `y` holds Y); otherwise the call fails validation before reading them.
        unsafe {
            mrnn_lstm_onnx(
                a,
                x.as_ptr(),
                w.as_ptr(),
                r.as_ptr(),
                ptr::null(),
                lens,
                ptr::null(),
                ptr::null(),
                ptr::null(),
                y,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        }
    }

    #[test]
    fn onnx_attrs_init_writes_defaults() {
        let mut a = MrnnOnnxLstmAttrs { hidden_size: 7, has_clip: 1, ..Default::default() };
        // SAFETY: a valid attrs struct.
        assert_eq!(unsafe { mrnn_onnx_lstm_attrs_init(&mut a) }, MRNN_OK);
        assert_eq!((a.hidden_size, a.has_clip, a.num_activations, a.direction, a.layout), (0, 0, 0, 0, 0));
        assert_eq!(a.activations, [0, 1, 1, 0, 1, 1]);
        assert!(a.clip.is_nan() && a.activation_alpha.iter().chain(&a.activation_beta).all(|v| v.is_nan()));
        // SAFETY: NULL is reported.
        assert_eq!(unsafe { mrnn_onnx_lstm_attrs_init(ptr::null_mut()) }, MRNN_ERR_NULL_POINTER);
    }

    #[test]
    fn onnx_argument_checks_map_to_statuses() {
        let ok = MrnnOnnxLstmAttrs {
            seq_length: 3,
            batch_size: 2,
            input_size: 2,
            hidden_size: 3,
            direction: 2,
            ..Default::default()
        };
        let mut y = vec![0.0; 3 * 2 * 2 * 3];
        assert_eq!(call_onnx(&ok, Some(&[3, 0]), &mut y), MRNN_OK);
        let six = MrnnOnnxLstmAttrs { num_activations: 6, activations: [0, 1, 1, 7, 2, 3], ..ok };
        assert_eq!(call_onnx(&six, None, &mut y), MRNN_OK);
        let inf_clip = MrnnOnnxLstmAttrs { has_clip: 1, clip: f32::INFINITY, ..ok };
        let mut y_inf = vec![0.0; y.len()];
        assert_eq!(call_onnx(&inf_clip, Some(&[3, 1]), &mut y_inf), MRNN_OK);
        assert_eq!(call_onnx(&ok, Some(&[3, 1]), &mut y), MRNN_OK);
        assert_eq!(y_inf, y, "clip = +inf is no clipping");
        let cases: [(MrnnOnnxLstmAttrs, i32); 20] = [
            (MrnnOnnxLstmAttrs { seq_length: -1, ..ok }, 3),
            (MrnnOnnxLstmAttrs { hidden_size: 0, ..ok }, 3),
            (MrnnOnnxLstmAttrs { direction: 3, ..ok }, 3),
            (MrnnOnnxLstmAttrs { layout: -1, ..ok }, 3),
            (MrnnOnnxLstmAttrs { input_forget: 2, ..ok }, 3),
            (MrnnOnnxLstmAttrs { has_clip: 2, ..ok }, 3),
            (MrnnOnnxLstmAttrs { has_clip: 1, clip: 0.0, ..ok }, 3),
            (MrnnOnnxLstmAttrs { has_clip: 1, clip: f32::NAN, ..ok }, 3),
            (MrnnOnnxLstmAttrs { has_clip: 1, clip: f32::NEG_INFINITY, ..ok }, 3),
            (MrnnOnnxLstmAttrs { num_activations: 6, direction: 0, ..ok }, 3),
            (MrnnOnnxLstmAttrs { num_activations: 2, ..ok }, 3),
            (MrnnOnnxLstmAttrs { num_activations: 3, activations: [0, 11, 1, 0, 1, 1], ..ok }, 3),
            // Entries past num_activations are not read.
            (MrnnOnnxLstmAttrs { num_activations: 3, activations: [0, 1, 1, -1, -1, -1], direction: 0, ..ok }, 0),
            // As ONNX Runtime: 3 per direction, so a bidirectional node refuses 3.
            (MrnnOnnxLstmAttrs { num_activations: 3, ..ok }, 3),
            (MrnnOnnxLstmAttrs { num_activations: 6, activations: [0, 1, 1, 0, 1, -1], ..ok }, 3),
            (MrnnOnnxLstmAttrs { num_threads: -2, ..ok }, 3),
            (MrnnOnnxLstmAttrs { seq_length: i64::MAX / 2, batch_size: 4, ..ok }, 4),
            (MrnnOnnxLstmAttrs { hidden_size: 1 << 31, input_size: 1 << 31, ..ok }, 4),
            (MrnnOnnxLstmAttrs { hidden_size: i64::MAX / 8, ..ok }, 4),
            // A bad value wins over an overflowing size.
            (MrnnOnnxLstmAttrs { seq_length: i64::MAX, batch_size: i64::MAX, layout: 5, ..ok }, 3),
        ];
        for (a, status) in cases {
            assert_eq!(call_onnx(&a, None, &mut []), status, "{a:?}: {}", last());
            assert!(!last().is_empty());
        }
    }

    #[test]
    fn onnx_lengths_are_checked_before_any_write() {
        let a = MrnnOnnxLstmAttrs { seq_length: 3, batch_size: 3, input_size: 1, hidden_size: 2, ..Default::default() };
        for (lens, index, value) in [([3, 4, 0], 1, 4), ([0, 3, -1], 2, -1), ([i32::MIN, 0, 0], 0, i32::MIN)] {
            let mut y = vec![7.0; 3 * 3 * 2];
            assert_eq!(call_onnx(&a, Some(&lens), &mut y), MRNN_ERR_BAD_ARGUMENT);
            assert!(last().contains(&format!("sequence_lens[{index}] = {value}")), "{}", last());
            assert!(y.iter().all(|&v| v == 7.0), "a failing call wrote Y");
        }
    }

    #[test]
    fn onnx_outputs_may_not_overlap_inputs() {
        let a = MrnnOnnxLstmAttrs { seq_length: 1, batch_size: 1, input_size: 2, hidden_size: 2, ..Default::default() };
        let (w, r) = ([0.1_f32; 16], [0.1_f32; 16]);
        let mut buf = [0.5_f32; 4];
        let p = buf.as_mut_ptr();
        // SAFETY: every pointer is valid for its documented size; Y (2 floats) shares x's memory on purpose.
        let status = unsafe {
            mrnn_lstm_onnx(
                &a,
                p,
                w.as_ptr(),
                r.as_ptr(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
                p.wrapping_add(1),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        assert_eq!(status, MRNN_ERR_BAD_ARGUMENT);
        assert!(last().contains("x overlaps y"), "{}", last());
    }
}
