//! Fuzz logic for the C ABI, kept in the library so `cargo test` replays seeded cases (`tests/suite/capi.rs`).
//!
//! From arbitrary bytes, [`fuzz_capi`] builds attributes (sane small sizes most of the time; otherwise
//! negative, zero, huge and overflowing sizes, flags that are not 0/1, unknown activation codes, negative
//! thread counts), NULL pointers, a misaligned input or aliased outputs, and calls [`mrnn_lstm_keras`]
//! and [`mrnn_mask_from_value`] through their `extern "C"` entry points. Every buffer is followed by a
//! canary region. The properties:
//!
//! ```text
//! status in 0..=5; a failure leaves a non-empty mrnn_last_error()
//! canaries intact; inputs unchanged
//! status predicted by the validation order (NULL 1 > value 3 > overflow 4 > pointer 3): exactly that
//!     status, and no output element written
//! otherwise: the status and every output bitwise equal to the Rust API on the same inputs
//! ```
//!
//! Training: `mrnn_lstm_keras_backward` from arbitrary attributes against the Rust API
//! (`KerasLstm::forward_train` then `KerasLstm::backward`) bitwise, and a Keras handle driven through a
//! random sequence of `run_train`, `run_backward` (own, stale and foreign tapes), `set_weights` and
//! `mrnn_tape_free`: every status as predicted, every successful `run_backward` bitwise the one-shot
//! backward on the tape's inputs and the weights it was made with. The same for the ONNX LSTM:
//! `mrnn_lstm_onnx_backward` (lengths, both layouts, every direction, `dp` with and without peepholes)
//! against `OnnxLstm::forward_train` then `OnnxLstm::backward`, and two ONNX handles driven through
//! `run_train`, `run_backward` (own, stale, foreign and Keras tapes), `set_weights` (peepholes dropped or
//! restored), `mrnn_tape_bytes` and `mrnn_tape_free`, their runs bitwise `mrnn_lstm_onnx` and their
//! gradients bitwise `mrnn_lstm_onnx_backward`; ONNX tapes given to a Keras handle are refused.
//!
//! The GRU and RNN (section 4, forward): `mrnn_gru_onnx`, `mrnn_rnn_onnx`, `mrnn_gru_keras`,
//! `mrnn_rnn_keras` from arbitrary attributes (the LSTM's generators, carried over field for field) with
//! NULL or misaligned pointers, aliased outputs and bad lengths, against `OnnxGru`, `OnnxRnn`, `KerasGru`,
//! `KerasSimpleRnn` bitwise; then a handle made with those attributes, whose run is bitwise the one-shot
//! call, or is refused (naming the field, nothing written) when a field fixed at creation changes. Their
//! gradients: `mrnn_{gru,rnn}_{onnx,keras}_backward` with the same arguments (random upstream gradients and
//! gradient outputs, an output aliased over an upstream gradient) must give the forward's predicted status
//! and write nothing when refused; on the handle, `_run_train` with a NULL tape slot is refused,
//! `_run_backward` of a fresh tape is bitwise the one-shot backward, and after `_set_weights` the tape is
//! refused as stale, nothing written.
//!
//! Real buffers are allocated only when all sizes are small; with other sizes the harness passes
//! one-element dummies and the call must fail validation before reading them. Huge sizes that would
//! pass validation are paired with a NULL `x`, so no case ever asks for a huge computation.

use std::ffi::CStr;
use std::ptr;

use super::*;
use crate::cells::weights::LstmWeights;
use crate::frameworks::keras::{KerasGrads, KerasTape, KerasUpstream};
use crate::frameworks::onnx::{OnnxGrads, OnnxTape, OnnxUpstream};
use crate::fuzzing::{same_bits, ByteReader};

/// Outcome of a property check: `Err` describes the failure.
type Check = std::result::Result<(), String>;

/// Elements of canary after every buffer.
const CANARY: usize = 8;
/// Bit pattern of canary floats: a NaN payload no computation produces.
const CANARY_BITS: u32 = 0x7fa5_a5a5;
/// Bit pattern of output floats before the call.
const UNSET_BITS: u32 = 0x7fb0_0b0b;
const CANARY_BYTE: u8 = 0xa5;
/// Canary after `sequence_lens`.
const CANARY_I32: i32 = 0x5a5a_a5a5;
const UNSET_BYTE: u8 = 0xee;

/// A caller buffer: `len` elements, then the canary.
struct Buf<T> {
    data: Vec<T>,
    len: usize,
}

/// Bitwise equality (NaN canaries compare equal to themselves).
trait Same: Copy {
    fn same(self, other: Self) -> bool;
}
impl Same for f32 {
    fn same(self, other: Self) -> bool {
        self.to_bits() == other.to_bits()
    }
}
impl Same for i32 {
    fn same(self, other: Self) -> bool {
        self == other
    }
}
impl Same for u8 {
    fn same(self, other: Self) -> bool {
        self == other
    }
}

impl<T: Same> Buf<T> {
    fn new(mut values: Vec<T>, canary: T) -> Self {
        let len = values.len();
        values.extend(std::iter::repeat_n(canary, CANARY));
        Buf { data: values, len }
    }
    fn filled(len: usize, unset: T, canary: T) -> Self {
        Self::new(vec![unset; len], canary)
    }
    fn values(&self) -> &[T] {
        &self.data[..self.len]
    }
    fn ptr(&self) -> *const T {
        self.data.as_ptr()
    }
    fn mut_ptr(&mut self) -> *mut T {
        self.data.as_mut_ptr()
    }
    fn check_canary(&self, name: &str, canary: T) -> Check {
        match self.data[self.len..].iter().position(|&v| !v.same(canary)) {
            Some(k) => Err(format!("{name}: canary element {k} past the end overwritten")),
            None => Ok(()),
        }
    }
}

fn wild_size(r: &mut ByteReader<'_>) -> i64 {
    match r.u8() % 12 {
        0 => -1,
        1 => i64::MIN,
        2 => -1 - r.below(1 << 16) as i64,
        3 => i64::MAX,
        4 => i64::MAX / 2,
        5 => 1 << 30,
        6 => 1 << 31,
        7 => 1 << 32,
        8 => 1 << 40,
        9 => 0,
        10 => (1 << 61) - 1,
        _ => 1 << 20,
    }
}

fn code(r: &mut ByteReader<'_>, default: i32) -> i32 {
    match r.u8() % 32 {
        0..=15 => default,
        16..=30 => r.below(11) as i32,
        _ => [11, -1, i32::MIN, i32::MAX, 12, 100][r.below(6)],
    }
}

fn flag_value(r: &mut ByteReader<'_>) -> i32 {
    match r.u8() % 32 {
        0 => [2, -1, i32::MAX, i32::MIN][r.below(4)],
        v => i32::from(v % 2),
    }
}

/// `checked_product` computed independently: every partial product within `usize`, the result within
/// `isize::MAX` bytes of f32.
fn overflows(dims: &[i64]) -> bool {
    let mut n: u128 = 1;
    for &d in dims {
        n *= d as u128; // both factors < 2^64 at every step: no u128 overflow
        if n > usize::MAX as u128 {
            return true;
        }
    }
    n > (isize::MAX as u128) / 4
}

/// What validation must answer before the library reads anything, if anything.
fn predicted(required_null: bool, bad_value: bool, overflow: bool, bad_pointer: bool) -> Option<i32> {
    if required_null {
        Some(MRNN_ERR_NULL_POINTER)
    } else if bad_value {
        Some(MRNN_ERR_BAD_ARGUMENT)
    } else if overflow {
        Some(MRNN_ERR_OVERFLOW)
    } else if bad_pointer {
        Some(MRNN_ERR_BAD_ARGUMENT)
    } else {
        None
    }
}

fn check_status(what: &str, status: i32) -> Check {
    if !(0..=5).contains(&status) {
        return Err(format!("{what}: status {status} outside 0..=5"));
    }
    if status != MRNN_OK {
        // SAFETY: mrnn_last_error always returns a valid NUL-terminated string.
        let msg = unsafe { CStr::from_ptr(mrnn_last_error()) };
        if msg.to_bytes().is_empty() {
            return Err(format!("{what}: status {status} with an empty mrnn_last_error()"));
        }
    }
    Ok(())
}

/// Whether a call predicted to pass validation would compute with sizes that are not sane: the harness
/// then makes a required input NULL, so that no case ever asks for a huge computation.
fn too_big(required_null: bool, bad_value: bool, overflow: bool, sane: bool) -> bool {
    predicted(required_null, bad_value, overflow, false).is_none() && !sane
}

/// The length of a buffer of dimensions `dims`: exact when the sizes are sane, a one-element dummy
/// otherwise (validation must reject the call before reading it).
fn buffer_len(sane: bool, dims: &[i64]) -> usize {
    if sane {
        dims.iter().map(|&d| d as usize).product()
    } else {
        1
    }
}

/// The checks after a call: the status in range (with a message), the canaries past the outputs intact,
/// the float inputs unchanged, and for a predicted failure exactly its status and no output written.
/// Returns whether the call was a predicted failure (nothing more to compare).
fn check_call(
    what: &str,
    status: i32,
    outs: &[Buf<f32>],
    names: &[&str],
    inputs: &[&Buf<f32>],
    inputs_before: &[Vec<f32>],
    expected: Option<i32>,
) -> std::result::Result<bool, String> {
    check_status(what, status)?;
    let canary = f32::from_bits(CANARY_BITS);
    for (buf, name) in outs.iter().zip(names) {
        buf.check_canary(name, canary).map_err(|e| format!("{what}: {e}"))?;
    }
    for (k, (b, s)) in inputs.iter().zip(inputs_before).enumerate() {
        same_bits(&format!("{what}: input {k} modified (after vs before)"), &b.data, s)?;
    }
    let Some(expected) = expected else { return Ok(false) };
    if status != expected {
        return Err(format!("{what}: status {status}, expected {expected}: {}", last_error_message()));
    }
    if outs.iter().any(|b| b.values().iter().any(|v| v.to_bits() != UNSET_BITS)) {
        return Err(format!("{what}: an output was written by a call that failed validation"));
    }
    Ok(true)
}

/// After a predicted failure for which `cause` holds: the message names it (contains `needle`).
fn check_message(what: &str, cause: bool, needle: &str) -> Check {
    let message = last_error_message();
    if cause && !message.contains(needle) {
        return Err(format!("{what}: expected a message with {needle:?}, got {message:?}"));
    }
    Ok(())
}

/// A call against the Rust API on the same inputs (`reference`: its outputs, or its error): the same
/// status, and bitwise the same outputs.
fn check_same_as_rust<const N: usize>(
    what: &str,
    status: i32,
    reference: Result<[Vec<f32>; N]>,
    outs: &[Buf<f32>],
    names: &[&str],
) -> Check {
    let rust_status = reference.as_ref().map_or_else(|e| status_of(e.kind()), |_| MRNN_OK);
    if status != rust_status {
        return Err(format!("{what}: status {status}, the Rust API gives {rust_status}: {}", last_error_message()));
    }
    if let Ok(reference) = reference {
        for ((buf, expected), name) in outs.iter().zip(&reference).zip(names) {
            same_bits(&format!("{what}: {name} (C ABI vs the Rust API)"), buf.values(), expected)?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------ calls

// The C functions under test with their pointers grouped, in argument order, so that a call states what
// it passes in a line or two: a run's inputs `(x, mask or sequence_lens, initial_h, initial_c)`, the
// weights, the outputs, the upstream gradients, the gradient outputs.

/// An input pointer, an output pointer.
type In = *const f32;
type Out = *mut f32;

/// A run's input pointers: `x`, the mask or `sequence_lens` (`S`), `initial_h`, `initial_c`.
type Inputs<S> = (In, *const S, In, In);

/// The `tape` argument of a `run_train`.
type TapeOut = *mut *mut MrnnTape;

/// [`mrnn_lstm_keras`]; `w`: kernel, recurrent_kernel, bias.
///
/// # Safety
/// As [`mrnn_lstm_keras`] (this and every wrapper below: the contract of the function it calls).
unsafe fn lstm_keras(a: *const MrnnKerasLstmAttrs, i: Inputs<u8>, w: [In; 3], o: [Out; 4]) -> i32 {
    // SAFETY: forwarded from this function's contract.
    unsafe { mrnn_lstm_keras(a, i.0, i.1, w[0], w[1], w[2], i.2, i.3, o[0], o[1], o[2], o[3]) }
}

/// [`mrnn_lstm_onnx`]; `w`: W, R, B, P.
///
/// # Safety
/// As [`lstm_keras`].
unsafe fn lstm_onnx(a: *const MrnnOnnxLstmAttrs, i: Inputs<i32>, w: [In; 4], o: [Out; 3]) -> i32 {
    // SAFETY: forwarded from this function's contract.
    unsafe { mrnn_lstm_onnx(a, i.0, w[0], w[1], w[2], i.1, i.2, i.3, w[3], o[0], o[1], o[2]) }
}

/// [`mrnn_lstm_keras_backward`].
///
/// # Safety
/// As [`lstm_keras`].
unsafe fn lstm_keras_backward(a: *const MrnnKerasLstmAttrs, i: Inputs<u8>, w: [In; 3], u: [In; 4], g: [Out; 6]) -> i32 {
    let (x, mask, h0, c0) = i;
    // SAFETY: forwarded from this function's contract.
    unsafe {
        mrnn_lstm_keras_backward(
            a, x, mask, w[0], w[1], w[2], h0, c0, u[0], u[1], u[2], u[3], g[0], g[1], g[2], g[3], g[4], g[5],
        )
    }
}

/// [`mrnn_lstm_onnx_backward`].
///
/// # Safety
/// As [`lstm_keras`].
unsafe fn lstm_onnx_backward(a: *const MrnnOnnxLstmAttrs, i: Inputs<i32>, w: [In; 4], u: [In; 3], g: [Out; 7]) -> i32 {
    let ((x, lens, h0, c0), [w, r, b, p]) = (i, w);
    // SAFETY: forwarded from this function's contract.
    unsafe {
        mrnn_lstm_onnx_backward(
            a, x, w, r, b, lens, h0, c0, p, u[0], u[1], u[2], g[0], g[1], g[2], g[3], g[4], g[5], g[6],
        )
    }
}

/// [`mrnn_keras_lstm_run`].
///
/// # Safety
/// As [`lstm_keras`].
unsafe fn keras_run(layer: *mut MrnnKerasLstm, a: *const MrnnKerasLstmAttrs, i: Inputs<u8>, o: [Out; 4]) -> i32 {
    // SAFETY: forwarded from this function's contract.
    unsafe { mrnn_keras_lstm_run(layer, a, i.0, i.1, i.2, i.3, o[0], o[1], o[2], o[3]) }
}

/// [`mrnn_onnx_lstm_run`].
///
/// # Safety
/// As [`lstm_keras`].
unsafe fn onnx_run(layer: *mut MrnnOnnxLstm, a: *const MrnnOnnxLstmAttrs, i: Inputs<i32>, o: [Out; 3]) -> i32 {
    // SAFETY: forwarded from this function's contract.
    unsafe { mrnn_onnx_lstm_run(layer, a, i.0, i.1, i.2, i.3, o[0], o[1], o[2]) }
}

/// [`mrnn_keras_lstm_run_train`].
///
/// # Safety
/// As [`lstm_keras`].
unsafe fn keras_run_train(
    l: *mut MrnnKerasLstm,
    a: *const MrnnKerasLstmAttrs,
    i: Inputs<u8>,
    o: [Out; 4],
    t: TapeOut,
) -> i32 {
    // SAFETY: forwarded from this function's contract.
    unsafe { mrnn_keras_lstm_run_train(l, a, i.0, i.1, i.2, i.3, o[0], o[1], o[2], o[3], t) }
}

/// [`mrnn_onnx_lstm_run_train`].
///
/// # Safety
/// As [`lstm_keras`].
unsafe fn onnx_run_train(
    l: *mut MrnnOnnxLstm,
    a: *const MrnnOnnxLstmAttrs,
    i: Inputs<i32>,
    o: [Out; 3],
    t: TapeOut,
) -> i32 {
    // SAFETY: forwarded from this function's contract.
    unsafe { mrnn_onnx_lstm_run_train(l, a, i.0, i.1, i.2, i.3, o[0], o[1], o[2], t) }
}

/// [`mrnn_keras_lstm_run_backward`].
///
/// # Safety
/// As [`lstm_keras`].
unsafe fn keras_run_backward(layer: *mut MrnnKerasLstm, tape: *const MrnnTape, u: [In; 4], g: [Out; 6]) -> i32 {
    // SAFETY: forwarded from this function's contract.
    unsafe { mrnn_keras_lstm_run_backward(layer, tape, u[0], u[1], u[2], u[3], g[0], g[1], g[2], g[3], g[4], g[5]) }
}

/// [`mrnn_onnx_lstm_run_backward`].
///
/// # Safety
/// As [`lstm_keras`].
unsafe fn onnx_run_backward(layer: *mut MrnnOnnxLstm, tape: *const MrnnTape, u: [In; 3], g: [Out; 7]) -> i32 {
    // SAFETY: forwarded from this function's contract.
    unsafe { mrnn_onnx_lstm_run_backward(layer, tape, u[0], u[1], u[2], g[0], g[1], g[2], g[3], g[4], g[5], g[6]) }
}

/// Drives the C ABI with a case built from `data`; `Err` describes a broken property (see the module docs).
pub fn fuzz_capi(data: &[u8]) -> std::result::Result<(), String> {
    let mut r = ByteReader::new(data);
    fuzz_lstm_keras(&mut r)?;
    fuzz_mask_from_value(&mut r)?;
    // The ONNX case reads the same bytes from the start: the Keras case often exhausts short inputs.
    fuzz_lstm_onnx(&mut ByteReader::new(data))?;
    // The handle cases read the bytes backwards, so that they do not repeat the cases above.
    let reversed: Vec<u8> = data.iter().rev().copied().collect();
    fuzz_keras_handle(&mut ByteReader::new(&reversed))?;
    fuzz_onnx_handle(&mut ByteReader::new(&reversed[reversed.len() / 3..]))?;
    // The training cases read the bytes from the middle on, then a stream seeded by them, so that short
    // inputs reach them too.
    let mut r = ByteReader::new(&data[data.len() / 2..]);
    r.noise_past_end();
    fuzz_keras_backward(&mut r)?;
    fuzz_keras_train(&mut r)?;
    // The ONNX training cases from a quarter on, likewise.
    let mut r = ByteReader::new(&data[data.len() / 4..]);
    r.noise_past_end();
    fuzz_onnx_backward(&mut r)?;
    fuzz_onnx_train(&mut r)?;
    // The GRU and RNN cases (section 4) from a third on, likewise.
    let mut r = ByteReader::new(&data[data.len() / 3..]);
    r.noise_past_end();
    fuzz_gru_rnn(&mut r)
}

/// Small limits of `B, T, I, H` in sane cases.
const SANE: [i64; 4] = [4, 8, 4, 9];

/// A Keras-style activation code with the parameters `MrnnKerasLstmAttrs` documents (HardSigmoid: 0.2,
/// 0.5), written out here rather than shared with the C ABI's code.
fn keras_reference_activation(code: i32) -> Result<Activation> {
    Ok(match code {
        0 => Activation::Sigmoid,
        1 => Activation::Tanh,
        2 => Activation::Relu,
        3 => Activation::Affine { alpha: 1.0, beta: 0.0 },
        4 => Activation::LeakyRelu { alpha: 0.01 },
        5 => Activation::ThresholdedRelu { alpha: 1.0 },
        6 => Activation::ScaledTanh { alpha: 1.0, beta: 1.0 },
        7 => Activation::HardSigmoid { alpha: 0.2, beta: 0.5 },
        8 => Activation::Elu { alpha: 1.0 },
        9 => Activation::Softsign,
        10 => Activation::Softplus,
        _ => return Err(Error::argument(format!("activation code {code}"))),
    })
}

/// Keras attributes from fuzz bytes: small sane sizes most of the time, otherwise negative, zero, huge
/// and overflowing sizes, flags that are not 0/1, unknown activation codes, negative thread counts.
/// Returns them with whether every size is sane (within [`SANE`]) and whether a value must be rejected.
fn keras_attrs(r: &mut ByteReader<'_>) -> (MrnnKerasLstmAttrs, bool, bool) {
    let mut dims = [0_i64; 4];
    for (d, &max) in dims.iter_mut().zip(&SANE) {
        *d = r.below(max as usize + 1) as i64;
    }
    // Keep H >= 1 most of the time: H = 0 is an argument error.
    if dims[3] == 0 && !r.u8().is_multiple_of(4) {
        dims[3] = 1;
    }
    if r.u8().is_multiple_of(4) {
        for d in &mut dims {
            if r.bool() {
                *d = wild_size(r);
            }
        }
    }
    let [bs, ts, is, hs] = dims;
    let attrs = MrnnKerasLstmAttrs {
        batch_size: bs,
        seq_length: ts,
        input_size: is,
        hidden_size: hs,
        go_backwards: flag_value(r),
        zero_output_for_mask: flag_value(r),
        activation: code(r, 1),
        recurrent_activation: code(r, 0),
        recurrent_alpha: if r.bool() { f32::NAN } else { r.wild() },
        recurrent_beta: if r.bool() { f32::NAN } else { r.wild() },
        num_threads: match r.u8() % 32 {
            0 => -1,
            1 => i32::MIN,
            v => i32::from(v % 4),
        },
    };
    let sane = dims.iter().zip(&SANE).all(|(&d, &max)| (0..=max).contains(&d));
    (attrs, sane, keras_value_error(&attrs))
}

/// Whether validation must reject a value of `a` (step 2).
fn keras_value_error(a: &MrnnKerasLstmAttrs) -> bool {
    [a.batch_size, a.seq_length, a.input_size, a.hidden_size].iter().any(|&d| d < 0)
        || a.hidden_size == 0
        || !(0..=1).contains(&a.go_backwards)
        || !(0..=1).contains(&a.zero_output_for_mask)
        || !(0..=10).contains(&a.activation)
        || !(0..=10).contains(&a.recurrent_activation)
        || a.num_threads < 0
}

/// Whether a size of a Keras call of sizes `B, T, I, H` overflows, as the C ABI computes them (`B = T = 0`:
/// the weights alone).
fn keras_overflows([bs, ts, is, hs]: [i64; 4]) -> bool {
    [&[4, hs][..], &[bs, ts, is], &[bs, ts], &[is, 4, hs], &[hs, 4, hs], &[bs, hs], &[bs, ts, hs]]
        .iter()
        .any(|d| overflows(d))
}

/// The buffer lengths of a Keras case of sizes `B, T, I, H` (see [`buffer_len`]).
struct KerasLens {
    x: usize,
    mask: usize,
    kernel: usize,
    recurrent: usize,
    bias: usize,
    state: usize,
    y: usize,
}

impl KerasLens {
    fn new(sane: bool, [bs, ts, is, hs]: [i64; 4]) -> Self {
        let len = |dims: &[i64]| buffer_len(sane, dims);
        KerasLens {
            x: len(&[bs, ts, is]),
            mask: len(&[bs, ts]),
            kernel: len(&[is, 4, hs]),
            recurrent: len(&[hs, 4, hs]),
            bias: len(&[4, hs]),
            state: len(&[bs, hs]),
            y: len(&[bs, ts, hs]),
        }
    }
}

/// A one-shot call's attributes from fuzz bytes (`keras_attrs`, `onnx_attrs`), their sizes, what validation
/// must say of them, and which required pointers are NULL: the attributes (one time in `rarity.0`), `x` and
/// the two required weights (one time in `rarity.1` each).
struct OneShot<A> {
    attrs: A,
    dims: [i64; 4],
    sane: bool,
    bad_value: bool,
    overflow: bool,
    nulls: [bool; 4],
}

/// A one-shot call of the kind of `A` (`rarity`: see [`OneShot`]).
fn one_shot<A>(r: &mut ByteReader<'_>, kind: &AttrsKind<A>, (attrs_rarity, rarity): (u8, u8)) -> OneShot<A> {
    let (attrs, sane, bad_value) = (kind.arbitrary)(r);
    let dims = (kind.dims)(&attrs);
    let overflow = !bad_value && (kind.overflows)(&attrs, dims);
    let nulls = std::array::from_fn(|k| r.u8().is_multiple_of(if k == 0 { attrs_rarity } else { rarity }));
    OneShot { attrs, dims, sane, bad_value, overflow, nulls }
}

/// Which optional inputs a one-shot Keras call is given, from fuzz bytes.
#[derive(Clone, Copy)]
struct KerasGiven {
    mask: bool,
    bias: bool,
    h0: bool,
    c0: bool,
}

impl KerasGiven {
    fn new(r: &mut ByteReader<'_>) -> Self {
        let (mask, bias) = (r.bool(), r.bool());
        KerasGiven { mask, bias, h0: r.u8().is_multiple_of(3), c0: r.u8().is_multiple_of(3) }
    }
}

/// The input buffers of a one-shot Keras call, from fuzz bytes (`x_extra` more elements of `x`).
struct KerasBufs {
    x: Buf<f32>,
    kernel: Buf<f32>,
    recurrent: Buf<f32>,
    bias: Buf<f32>,
    h0: Buf<f32>,
    c0: Buf<f32>,
    mask: Buf<u8>,
}

impl KerasBufs {
    fn new(r: &mut ByteReader<'_>, n: &KerasLens, x_extra: usize) -> Self {
        let canary = f32::from_bits(CANARY_BITS);
        KerasBufs {
            x: Buf::new(values(r, n.x + x_extra, 2.0), canary),
            kernel: Buf::new(values(r, n.kernel, 0.5), canary),
            recurrent: Buf::new(values(r, n.recurrent, 0.5), canary),
            bias: Buf::new(values(r, n.bias, 0.5), canary),
            h0: Buf::new(values(r, n.state, 1.0), canary),
            c0: Buf::new(values(r, n.state, 1.0), canary),
            mask: Buf::new(mask_values(r, n.mask), CANARY_BYTE),
        }
    }

    /// The float buffers, in argument order.
    fn floats(&self) -> [&Buf<f32>; 6] {
        [&self.x, &self.kernel, &self.recurrent, &self.bias, &self.h0, &self.c0]
    }

    /// The pointers a call gets: `x`, the required weights unless NULL (`nulls`), the rest as `given`.
    fn ptrs(&self, x: In, [kernel_null, recurrent_null]: [bool; 2], given: KerasGiven) -> (Inputs<u8>, [In; 3]) {
        let opt = |on: bool, p: In| if on { p } else { ptr::null() };
        let mask = if given.mask { self.mask.ptr() } else { ptr::null() };
        let (h0, c0) = (opt(given.h0, self.h0.ptr()), opt(given.c0, self.c0.ptr()));
        let w = [
            opt(!kernel_null, self.kernel.ptr()),
            opt(!recurrent_null, self.recurrent.ptr()),
            opt(given.bias, self.bias.ptr()),
        ];
        ((x, mask, h0, c0), w)
    }

    /// The Rust API's layer for the attributes `a` and these weights.
    fn reference_layer(&self, a: &MrnnKerasLstmAttrs, given: KerasGiven) -> Result<KerasLstm> {
        reference_keras_layer(a, self.kernel.values(), self.recurrent.values(), given.bias.then(|| self.bias.values()))
    }
}

/// Names of the outputs of a Keras forward, in argument order.
const KERAS_OUT_NAMES: [&str; 4] = ["y", "last_output", "h_n", "c_n"];

fn fuzz_lstm_keras(r: &mut ByteReader<'_>) -> Check {
    let OneShot { attrs, dims, sane, bad_value, overflow, nulls } = one_shot(r, &KERAS, (32, 24));
    let [attrs_null, mut x_null, kernel_null, recurrent_null] = nulls;
    let rare = |r: &mut ByteReader<'_>, n: u8| r.u8().is_multiple_of(n);
    let given = KerasGiven::new(r);
    let outs_on = [!r.u8().is_multiple_of(4), r.bool(), r.bool(), r.bool()];
    let misalign_x = rare(r, 32);
    let alias_c_to_h = rare(r, 32);

    let required_null = attrs_null || x_null || kernel_null || recurrent_null;
    // Huge sizes that validate: never compute them.
    x_null |= too_big(required_null, bad_value, overflow, sane);
    let required_null = required_null || x_null;

    let n = KerasLens::new(sane, dims);
    let aliased = alias_c_to_h && outs_on[2] && outs_on[3];
    let expected = predicted(required_null, bad_value, overflow, misalign_x || (aliased && n.state > 0));

    // Misaligned x: one more element so that reads at a 2-byte offset stay inside the allocation.
    let bufs = KerasBufs::new(r, &n, usize::from(misalign_x));
    let (outs, mut out_ptrs) = output_bufs([n.y, n.state, n.state, n.state], &outs_on);
    let inputs = bufs.floats();
    let inputs_before: Vec<Vec<f32>> = inputs.iter().map(|b| b.data.clone()).collect();
    if aliased {
        out_ptrs[3] = out_ptrs[2];
    }
    let (i, w) = bufs.ptrs(input_ptr(&bufs.x, x_null, misalign_x), [kernel_null, recurrent_null], given);
    // SAFETY: every non-NULL buffer holds exactly its documented size (plus a canary) when the sizes are
    // sane. Otherwise the buffers are one-element dummies and `expected` is a failure that validation
    // reports before any access; a library that read or wrote them anyway is what this harness hunts
    // (writes land in the canary, which is checked). A misaligned `x` and aliased outputs stay inside
    // their allocations.
    let status = unsafe { lstm_keras(if attrs_null { ptr::null() } else { &attrs }, i, w, out_ptrs) };
    let what = format!("mrnn_lstm_keras({attrs:?}, nulls: attrs {attrs_null} x {x_null} kernel {kernel_null} recurrent {recurrent_null}, misaligned x {misalign_x}, aliased c_n {alias_c_to_h})");
    bufs.mask.check_canary("mask", CANARY_BYTE).map_err(|e| format!("{what}: {e}"))?;
    if check_call(&what, status, &outs, &KERAS_OUT_NAMES, &inputs, &inputs_before, expected)? {
        return Ok(());
    }

    // Sane sizes, valid pointers: the Rust API on the same inputs must agree bitwise.
    let (b, t) = (dims[0] as usize, dims[1] as usize);
    let reference = (|| {
        let view = if given.mask { SeqView::from_mask_bytes(bufs.mask.values(), b, t)? } else { SeqView::full(b, t) };
        let layer = bufs.reference_layer(&attrs, given)?;
        let zeros = vec![0.0; n.state];
        let initial = (given.h0 || given.c0).then(|| InitialState {
            h: if given.h0 { bufs.h0.values() } else { &zeros },
            c: if given.c0 { bufs.c0.values() } else { &zeros },
        });
        let mut reference = [n.y, n.state, n.state, n.state].map(|n| vec![f32::from_bits(UNSET_BITS); n]);
        let [ry, rl, rh, rc] = &mut reference;
        let out = KerasOutputs {
            y: outs_on[0].then_some(&mut ry[..]),
            last_output: outs_on[1].then_some(&mut rl[..]),
            h_n: outs_on[2].then_some(&mut rh[..]),
            c_n: outs_on[3].then_some(&mut rc[..]),
        };
        layer.forward(bufs.x.values(), &view, initial, out, attrs.num_threads as usize)?;
        Ok(reference)
    })();
    check_same_as_rust(&what, status, reference, &outs, &KERAS_OUT_NAMES)
}

/// Small limits of `T, B, I, H` in sane ONNX cases.
const SANE_ONNX: [i64; 4] = [8, 4, 4, 9];

/// An `int32_t` enum value: mostly in `0..n`, sometimes out of range.
fn enum_value(r: &mut ByteReader<'_>, n: usize) -> i32 {
    match r.u8() % 32 {
        0 => [n as i32, -1, i32::MIN, i32::MAX, 100][r.below(5)],
        _ => r.below(n) as i32,
    }
}

/// A `sequence_lens` value for `T` steps: mostly in `0..=T` (often 0 or T), sometimes out of range.
fn length_value(r: &mut ByteReader<'_>, t: i64) -> i32 {
    match r.u8() % 48 {
        0 => -1,
        1 => (t + 1) as i32,
        2 => [i32::MIN, i32::MAX, -7][r.below(3)],
        3..=10 => 0,
        11..=22 => t as i32,
        _ => r.below(t as usize + 1) as i32,
    }
}

/// The ONNX attributes the C ABI should build from `a` (assumed valid), written from the header's
/// documentation rather than shared with the C ABI's code.
fn expected_onnx_attrs(a: &MrnnOnnxLstmAttrs) -> Result<OnnxLstmAttrs> {
    let direction = [Direction::Forward, Direction::Reverse, Direction::Bidirectional][a.direction as usize];
    let layout = if a.layout == 1 { Layout::BatchMajor } else { Layout::SeqMajor };
    let n = a.num_activations as usize;
    let acts = (0..n)
        .map(|k| Activation::from_code(a.activations[k], a.activation_alpha[k], a.activation_beta[k]))
        .collect::<Result<Vec<_>>>()?;
    // +inf is passed on as a clip: the Rust API must then compute exactly what "no clip" does.
    Ok(OnnxLstmAttrs::new(a.hidden_size as usize, direction)
        .layout(layout)
        .clip((a.has_clip == 1).then_some(a.clip))
        .input_forget(a.input_forget == 1)
        .activations(acts))
}

/// ONNX attributes from fuzz bytes, as [`keras_attrs`]: returns them with whether every size is sane
/// (within [`SANE_ONNX`]) and whether a value must be rejected.
fn onnx_attrs(r: &mut ByteReader<'_>) -> (MrnnOnnxLstmAttrs, bool, bool) {
    let mut dims = [0_i64; 4];
    for (d, &max) in dims.iter_mut().zip(&SANE_ONNX) {
        *d = r.below(max as usize + 1) as i64;
    }
    if dims[3] == 0 && !r.u8().is_multiple_of(4) {
        dims[3] = 1;
    }
    if r.u8().is_multiple_of(4) {
        for d in &mut dims {
            if r.bool() {
                *d = wild_size(r);
            }
        }
    }
    let [ts, bs, is, hs] = dims;
    let direction = enum_value(r, 3);
    let layout = enum_value(r, 2);
    let input_forget = flag_value(r);
    let has_clip = match r.u8() % 32 {
        0 => [2, -1, i32::MIN][r.below(3)],
        v => i32::from(v % 3 == 0),
    };
    let clip = match r.u8() % 32 {
        0 => f32::NAN,
        1 => 0.0,
        2 => -0.0,
        3 => -1.0,
        4 => f32::INFINITY,
        5 => f32::NEG_INFINITY,
        6 => f32::MIN_POSITIVE,
        _ => 0.25 + r.unit(3.0).abs(),
    };
    let num_activations = match r.u8() % 32 {
        0 => [1, 2, 4, 5, 7, 9, -1, -3, i32::MIN, i32::MAX][r.below(10)],
        1..=12 => 0,
        13..=24 => 3,
        // 6 is valid only for bidirectional: mostly give it there.
        _ if direction == 2 || r.u8().is_multiple_of(8) => 6,
        _ => 3,
    };
    let mut activations = [0_i32; 6];
    let mut activation_alpha = [f32::NAN; 6];
    let mut activation_beta = [f32::NAN; 6];
    for k in 0..6 {
        activations[k] = code(r, [0, 1, 1][k % 3]);
        activation_alpha[k] = match r.u8() % 8 {
            0..=3 => f32::NAN,
            4 => r.wild(),
            _ => r.unit(1.5),
        };
        activation_beta[k] = match r.u8() % 8 {
            0..=3 => f32::NAN,
            4 => r.wild(),
            _ => r.unit(1.5),
        };
    }
    let attrs = MrnnOnnxLstmAttrs {
        seq_length: ts,
        batch_size: bs,
        input_size: is,
        hidden_size: hs,
        direction,
        layout,
        input_forget,
        has_clip,
        clip,
        num_activations,
        activations,
        activation_alpha,
        activation_beta,
        num_threads: match r.u8() % 32 {
            0 => -1,
            1 => i32::MIN,
            v => i32::from(v % 4),
        },
    };
    let sane = dims.iter().zip(&SANE_ONNX).all(|(&d, &max)| (0..=max).contains(&d));
    (attrs, sane, onnx_value_error(&attrs))
}

/// Whether validation must reject a value of `a` (step 2).
fn onnx_value_error(a: &MrnnOnnxLstmAttrs) -> bool {
    let used_acts = match a.num_activations {
        3 => 3,
        6 => 6,
        _ => 0,
    };
    [a.seq_length, a.batch_size, a.input_size, a.hidden_size].iter().any(|&d| d < 0)
        || a.hidden_size == 0
        || !(0..=2).contains(&a.direction)
        || !(0..=1).contains(&a.layout)
        || !(0..=1).contains(&a.input_forget)
        || !(0..=1).contains(&a.has_clip)
        || (a.has_clip == 1 && (a.clip.is_nan() || a.clip <= 0.0))
        || !(a.num_activations == 0
            || (a.num_activations == 3 && a.direction != 2)
            || (a.num_activations == 6 && a.direction == 2))
        || a.activations[..used_acts].iter().any(|c| !(0..=10).contains(c))
        || a.num_threads < 0
}

/// `D` of ONNX attributes: 2 for bidirectional, else 1.
fn directions(a: &MrnnOnnxLstmAttrs) -> i64 {
    if a.direction == 2 {
        2
    } else {
        1
    }
}

/// Whether a size of an ONNX call of sizes `T, B, I, H` and `d` directions overflows, as the C ABI computes
/// them (`T = B = 0`: the weights alone).
fn onnx_overflows([ts, bs, is, hs]: [i64; 4], d: i64) -> bool {
    [&[ts, bs, is][..], &[d, 4, hs, is], &[d, 4, hs, hs], &[d, 8, hs], &[d, 3, hs], &[d, bs, hs], &[ts, d, bs, hs]]
        .iter()
        .any(|dims| overflows(dims))
}

/// The buffer lengths of an ONNX case of sizes `T, B, I, H` and `d` directions (see [`buffer_len`]).
struct OnnxLens {
    x: usize,
    w: usize,
    r: usize,
    b: usize,
    p: usize,
    state: usize,
    y: usize,
    lens: usize,
}

impl OnnxLens {
    fn new(sane: bool, [ts, bs, is, hs]: [i64; 4], d: i64) -> Self {
        let len = |dims: &[i64]| buffer_len(sane, dims);
        OnnxLens {
            x: len(&[ts, bs, is]),
            w: len(&[d, 4, hs, is]),
            r: len(&[d, 4, hs, hs]),
            b: len(&[d, 8, hs]),
            p: len(&[d, 3, hs]),
            state: len(&[d, bs, hs]),
            y: len(&[ts, d, bs, hs]),
            lens: len(&[bs]),
        }
    }
}

/// Which optional inputs a one-shot ONNX call is given, from fuzz bytes (`p_often`: peepholes two times in
/// three, else one time in three).
#[derive(Clone, Copy)]
struct OnnxGiven {
    b: bool,
    lens: bool,
    h0: bool,
    c0: bool,
    p: bool,
}

impl OnnxGiven {
    fn new(r: &mut ByteReader<'_>, p_often: bool) -> Self {
        let (b, lens) = (r.bool(), !r.u8().is_multiple_of(4));
        let (h0, c0) = (r.u8().is_multiple_of(3), r.u8().is_multiple_of(3));
        OnnxGiven { b, lens, h0, c0, p: r.u8().is_multiple_of(3) != p_often }
    }
}

/// `W`, `R`, `B`, `P` as the Rust API takes them.
type OnnxWeightSlices<'a> = (&'a [f32], &'a [f32], Option<&'a [f32]>, Option<&'a [f32]>);

/// The float input buffers of a one-shot ONNX call, from fuzz bytes (`extra` more elements of `x`, `W`).
struct OnnxBufs {
    x: Buf<f32>,
    w: Buf<f32>,
    r: Buf<f32>,
    b: Buf<f32>,
    p: Buf<f32>,
    h0: Buf<f32>,
    c0: Buf<f32>,
}

impl OnnxBufs {
    fn new(r: &mut ByteReader<'_>, n: &OnnxLens, [x_extra, w_extra]: [usize; 2]) -> Self {
        let canary = f32::from_bits(CANARY_BITS);
        OnnxBufs {
            x: Buf::new(values(r, n.x + x_extra, 2.0), canary),
            w: Buf::new(values(r, n.w + w_extra, 0.5), canary),
            r: Buf::new(values(r, n.r, 0.5), canary),
            b: Buf::new(values(r, n.b, 0.5), canary),
            p: Buf::new(values(r, n.p, 0.5), canary),
            h0: Buf::new(values(r, n.state, 1.0), canary),
            c0: Buf::new(values(r, n.state, 1.0), canary),
        }
    }

    /// The float buffers, in argument order.
    fn floats(&self) -> [&Buf<f32>; 7] {
        [&self.x, &self.w, &self.r, &self.b, &self.p, &self.h0, &self.c0]
    }

    /// The pointers a call gets: `x`, `W`, `initial_h` (as given) and `sequence_lens`, `R` unless NULL, the
    /// rest as `given`.
    fn ptrs(&self, [x, w, h0]: [In; 3], lens: *const i32, r_null: bool, given: OnnxGiven) -> (Inputs<i32>, [In; 4]) {
        let opt = |on: bool, p: In| if on { p } else { ptr::null() };
        let inputs = (x, lens, opt(given.h0, h0), opt(given.c0, self.c0.ptr()));
        (inputs, [w, opt(!r_null, self.r.ptr()), opt(given.b, self.b.ptr()), opt(given.p, self.p.ptr())])
    }

    /// The weights as the Rust API takes them: `W`, `R`, and `B`, `P` as given.
    fn weights(&self, given: OnnxGiven) -> OnnxWeightSlices<'_> {
        (self.w.values(), self.r.values(), given.b.then(|| self.b.values()), given.p.then(|| self.p.values()))
    }

    /// The initial states as the Rust API takes them.
    fn initial(&self, given: OnnxGiven) -> (Option<&[f32]>, Option<&[f32]>) {
        (given.h0.then(|| self.h0.values()), given.c0.then(|| self.c0.values()))
    }
}

/// Names of the outputs of an ONNX forward, in argument order.
const ONNX_OUT_NAMES: [&str; 3] = ["Y", "Y_h", "Y_c"];

/// `n` sequence lengths for `T` steps from fuzz bytes (`T` = 0 unless the sizes are sane), and whether one
/// is outside `0..=T` (only in a sane case, where the library reads them).
fn lengths(r: &mut ByteReader<'_>, n: usize, ts: i64, sane: bool) -> (Vec<i32>, bool) {
    let lens: Vec<i32> = (0..n).map(|_| length_value(r, if sane { ts } else { 0 })).collect();
    let bad = sane && lens.iter().any(|&l| l < 0 || i64::from(l) > ts);
    (lens, bad)
}

fn fuzz_lstm_onnx(r: &mut ByteReader<'_>) -> Check {
    let OneShot { attrs, dims, sane, bad_value, overflow, nulls } = one_shot(r, &ONNX, (32, 24));
    let [attrs_null, mut x_null, w_null, r_null] = nulls;
    let d_n = directions(&attrs);
    let given = OnnxGiven::new(r, false);
    let outs_on = [!r.u8().is_multiple_of(4), r.bool(), r.bool()];
    let misalign = match r.u8() % 48 {
        0 => 1, // x
        1 => 2, // w
        2 => 3, // sequence_lens
        _ => 0,
    };
    // 1: y_c = y_h; 2: y_h = initial_h (same sizes, so a missed overlap stays inside the allocation).
    let alias = match r.u8() % 48 {
        0 => 1,
        1 => 2,
        _ => 0,
    };

    let required_null = attrs_null || x_null || w_null || r_null;
    x_null |= too_big(required_null, bad_value, overflow, sane);
    let required_null = required_null || x_null;

    let n = OnnxLens::new(sane, dims, d_n);
    let aliased = match alias {
        1 => outs_on[1] && outs_on[2] && n.state > 0,
        2 => outs_on[1] && given.h0 && n.state > 0,
        _ => false,
    };
    let misaligned = misalign == 1 || misalign == 2 || (misalign == 3 && given.lens);
    let (mut lens_data, lens_bad) = lengths(r, n.lens, dims[0], sane);
    let lens_bad = given.lens && lens_bad;
    let expected = predicted(required_null, bad_value, overflow, misaligned || aliased)
        .or_else(|| lens_bad.then_some(MRNN_ERR_BAD_ARGUMENT));

    // Misaligned buffers get one more element so that reads at a 2-byte offset stay inside.
    let mut bufs = OnnxBufs::new(r, &n, [usize::from(misalign == 1), usize::from(misalign == 2)]);
    if misalign == 3 {
        lens_data.push(0);
    }
    let lens = Buf::new(lens_data, CANARY_I32);
    let (outs, mut out_ptrs) = output_bufs([n.y, n.state, n.state], &outs_on);
    // One raw pointer for initial_h, from which the aliased output is also derived.
    let h0_ptr = bufs.h0.mut_ptr();
    let inputs = bufs.floats();
    let inputs_before: Vec<Vec<f32>> = inputs.iter().map(|b| b.data.clone()).collect();
    let lens_before = lens.data.clone();
    let ptrs = [input_ptr(&bufs.x, x_null, misalign == 1), input_ptr(&bufs.w, w_null, misalign == 2), h0_ptr];
    let (i, w) = bufs.ptrs(ptrs, input_ptr(&lens, !given.lens, misalign == 3), r_null, given);
    if aliased && alias == 1 {
        out_ptrs[2] = out_ptrs[1];
    }
    if aliased && alias == 2 {
        // The library must reject this before writing; if it did write, h0's data and canary catch it.
        out_ptrs[1] = h0_ptr;
    }
    // SAFETY: every non-NULL buffer holds exactly its documented size (plus a canary) when the sizes are
    // sane. Otherwise the buffers are one-element dummies and `expected` is a failure that validation
    // reports before any access. Misaligned and aliased buffers stay inside their allocations; an output
    // aliased to `initial_h` shares its raw pointer, and `initial_h` is compared with its copy afterwards.
    let status = unsafe { lstm_onnx(if attrs_null { ptr::null() } else { &attrs }, i, w, out_ptrs) };
    let what = format!(
        "mrnn_lstm_onnx({attrs:?}, nulls: attrs {attrs_null} x {x_null} w {w_null} r {r_null}, misaligned {misalign}, alias {alias}, lens {:?})",
        given.lens.then(|| lens.values())
    );
    check_lens(&what, &lens, &lens_before)?;
    if check_call(&what, status, &outs, &ONNX_OUT_NAMES, &inputs, &inputs_before, expected)? {
        return Ok(());
    }

    // Sane sizes, valid pointers and lengths: the Rust API on the same inputs must agree bitwise.
    let reference = (|| {
        // +inf is passed on as a clip: the Rust API must then compute exactly what "no clip" does.
        let (w, rr, b, p) = bufs.weights(given);
        let node = OnnxLstm::new(expected_onnx_attrs(&attrs)?, dims[2] as usize, w, rr, b, p)?;
        let mut reference = [n.y, n.state, n.state].map(|n| vec![f32::from_bits(UNSET_BITS); n]);
        let [ry, rh, rc] = &mut reference;
        let out = OnnxOutputs {
            y: outs_on[0].then_some(&mut ry[..]),
            y_h: outs_on[1].then_some(&mut rh[..]),
            y_c: outs_on[2].then_some(&mut rc[..]),
        };
        let ((t, b), (h0, c0)) = ((dims[0] as usize, dims[1] as usize), bufs.initial(given));
        let lens = given.lens.then(|| lens.values());
        node.forward(bufs.x.values(), t, b, lens, h0, c0, out, attrs.num_threads as usize)?;
        Ok(reference)
    })();
    check_same_as_rust(&what, status, reference, &outs, &ONNX_OUT_NAMES)
}

/// The checks of `sequence_lens` after a call: its canary intact, its values unchanged.
fn check_lens(what: &str, lens: &Buf<i32>, before: &[i32]) -> Check {
    lens.check_canary("sequence_lens", CANARY_I32).map_err(|e| format!("{what}: {e}"))?;
    if lens.data != before {
        return Err(format!("{what}: sequence_lens was modified"));
    }
    Ok(())
}

fn fuzz_mask_from_value(r: &mut ByteReader<'_>) -> Check {
    let mut dims = [r.below(5) as i64, r.below(9) as i64, r.below(5) as i64];
    if r.u8().is_multiple_of(4) {
        for d in &mut dims {
            if r.bool() {
                *d = wild_size(r);
            }
        }
    }
    let [bs, ts, fs] = dims;
    let nan_aware = flag_value(r);
    let mask_value = match r.u8() % 8 {
        0 => f32::NAN,
        1 => -0.0,
        2 => 1.0,
        3 => f32::INFINITY,
        4 => r.wild(),
        _ => 0.0,
    };
    let sane = dims.iter().all(|&d| (0..=8).contains(&d));
    let bad_value = dims.iter().any(|&d| d < 0) || !(0..=1).contains(&nan_aware);
    let overflow = !bad_value && (overflows(&[bs, ts, fs]) || overflows(&[bs, ts]));
    let mut x_null = r.u8().is_multiple_of(16);
    let out_null = r.u8().is_multiple_of(16);
    if predicted(x_null || out_null, bad_value, overflow, false).is_none() && !sane {
        x_null = true;
    }
    let (n_x, n_m) = if sane { ((bs * ts * fs) as usize, (bs * ts) as usize) } else { (1, 1) };
    let misalign_x = r.u8().is_multiple_of(32);
    // Aliasing only where the mask would land inside x's values, never in its canary.
    let alias = r.u8().is_multiple_of(32) && sane && n_m > 0 && fs > 0;
    let expected = predicted(x_null || out_null, bad_value, overflow, misalign_x || alias);

    let x_values: Vec<f32> = (0..n_x + usize::from(misalign_x))
        .map(|_| match r.u8() % 6 {
            0..=2 => mask_value,
            3 => f32::NAN,
            4 => -0.0,
            _ => r.unit(2.0),
        })
        .collect();
    let mut x = Buf::new(x_values, f32::from_bits(CANARY_BITS));
    let mut out = Buf::filled(n_m, UNSET_BYTE, CANARY_BYTE);
    let x_before = x.data.clone();
    let x_ptr = if x_null {
        ptr::null()
    } else if misalign_x {
        x.ptr().cast::<u8>().wrapping_add(2).cast::<f32>()
    } else {
        x.ptr()
    };
    let out_ptr = if out_null {
        ptr::null_mut()
    } else if alias {
        x.mut_ptr().cast::<u8>()
    } else {
        out.mut_ptr()
    };
    // SAFETY: as in `fuzz_lstm_keras`: exact sizes when sane, otherwise dummies and a predicted validation
    // failure; a misaligned or aliased buffer stays inside its allocation.
    let status = unsafe { mrnn_mask_from_value(x_ptr, bs, ts, fs, mask_value, nan_aware, out_ptr) };
    let what = format!(
        "mrnn_mask_from_value(B {bs}, T {ts}, F {fs}, value {mask_value}, nan_aware {nan_aware}, x NULL {x_null}, out NULL {out_null}, misaligned {misalign_x}, aliased {alias})"
    );
    check_status(&what, status)?;
    out.check_canary("mask_out", CANARY_BYTE)?;
    same_bits(&format!("{what}: x modified (after vs before)"), &x.data, &x_before)?;
    if let Some(expected) = expected {
        if status != expected {
            return Err(format!("{what}: status {status}, expected {expected}: {}", last_error_message()));
        }
        if out.values().iter().any(|&v| v != UNSET_BYTE) {
            return Err(format!("{what}: mask_out written by a call that failed validation"));
        }
        return Ok(());
    }
    let mode = if nan_aware == 1 { MaskValueMode::NanAware } else { MaskValueMode::Ieee };
    let mut reference = vec![false; n_m];
    let rust_status =
        mask_from_values(x.values(), bs as usize, ts as usize, fs as usize, mask_value, mode, &mut reference)
            .map_or_else(|e| status_of(e.kind()), |()| MRNN_OK);
    if status != rust_status {
        return Err(format!("{what}: status {status}, the Rust API gives {rust_status}"));
    }
    if status == MRNN_OK && !out.values().iter().zip(&reference).all(|(&o, &m)| o == u8::from(m)) {
        return Err(format!("{what}: mask {:?} differs from the Rust API {reference:?}", out.values()));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------ handles

/// Frees a handle when dropped, so that a failed check does not leak it.
struct Owned<T> {
    ptr: *mut T,
    free: unsafe extern "C" fn(*mut T),
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr` is a live handle from the matching `_new` (or NULL), freed only here.
        unsafe { (self.free)(self.ptr) }
    }
}

/// A handle's creation under test: `out` starts as this dangling, never dereferenced sentinel.
fn sentinel<T>() -> *mut T {
    ptr::NonNull::dangling().as_ptr()
}

/// Sizes of a run from fuzz bytes: sane most of the time (`sane` limits), otherwise anything.
fn run_sizes(r: &mut ByteReader<'_>, sane: [i64; 2]) -> [i64; 2] {
    let mut dims = [r.below(sane[0] as usize + 1) as i64, r.below(sane[1] as usize + 1) as i64];
    if r.u8().is_multiple_of(6) {
        for d in &mut dims {
            if r.bool() {
                *d = wild_size(r);
            }
        }
    }
    dims
}

fn thread_count(r: &mut ByteReader<'_>) -> i32 {
    match r.u8() % 32 {
        0 => -1,
        1 => i32::MIN,
        v => i32::from(v % 4),
    }
}

/// A HardSigmoid parameter after the Keras attributes' NaN default, as bits.
fn keras_param_bits(v: f32, default: f32) -> u32 {
    if v.is_nan() {
        default.to_bits()
    } else {
        v.to_bits()
    }
}

/// Whether a run's Keras attributes differ from the handle's on a field fixed at creation (written from the
/// header: HardSigmoid parameters count only for HardSigmoid, NaN as its default).
fn keras_fixed_differ(run: &MrnnKerasLstmAttrs, c: &MrnnKerasLstmAttrs) -> bool {
    let hard = run.recurrent_activation == 7;
    run.input_size != c.input_size
        || run.hidden_size != c.hidden_size
        || run.go_backwards != c.go_backwards
        || run.zero_output_for_mask != c.zero_output_for_mask
        || run.activation != c.activation
        || run.recurrent_activation != c.recurrent_activation
        || (hard && keras_param_bits(run.recurrent_alpha, 0.2) != keras_param_bits(c.recurrent_alpha, 0.2))
        || (hard && keras_param_bits(run.recurrent_beta, 0.5) != keras_param_bits(c.recurrent_beta, 0.5))
}

/// Whether a run's ONNX attributes differ from the handle's on a field fixed at creation (written from the
/// header: clip only with has_clip, activations up to num_activations, compared as the activations the
/// code and parameters stand for).
fn onnx_fixed_differ(run: &MrnnOnnxLstmAttrs, c: &MrnnOnnxLstmAttrs) -> bool {
    let n = if c.num_activations > 0 { c.num_activations as usize } else { 0 };
    let act = |a: &MrnnOnnxLstmAttrs, k: usize| {
        // Debug of an f32 is exact (shortest round-trip form), and resolved parameters are never NaN.
        format!("{:?}", Activation::from_code(a.activations[k], a.activation_alpha[k], a.activation_beta[k]).ok())
    };
    run.input_size != c.input_size
        || run.hidden_size != c.hidden_size
        || run.direction != c.direction
        || run.layout != c.layout
        || run.input_forget != c.input_forget
        || run.has_clip != c.has_clip
        || (run.has_clip == 1 && run.clip.to_bits() != c.clip.to_bits())
        || run.num_activations != c.num_activations
        || (0..n.min(6)).any(|k| act(run, k) != act(c, k))
}

/// What the harness knows of a kind's attributes, written from the header: arbitrary ones, the per-run
/// fields, the sizes and the checks of validation.
struct AttrsKind<A> {
    /// Attributes from fuzz bytes, whether every size is sane, whether a value must be rejected.
    arbitrary: fn(&mut ByteReader<'_>) -> (A, bool, bool),
    /// The limits of the per-run sizes in sane cases, in field order.
    sane_run: [i64; 2],
    /// Sets the per-run sizes (in field order) and the thread count.
    set_run: fn(&mut A, [i64; 2], i32),
    /// The four sizes in field order (`B, T, I, H` or `T, B, I, H`).
    dims: fn(&A) -> [i64; 4],
    /// Whether validation must reject a value (step 2), and whether a run's attributes differ from the
    /// handle's on a field fixed at creation.
    value_error: fn(&A) -> bool,
    fixed_differ: fn(&A, &A) -> bool,
    /// Whether a size of a call with these attributes overflows when its sizes are `dims`.
    overflows: fn(&A, [i64; 4]) -> bool,
}

const KERAS: AttrsKind<MrnnKerasLstmAttrs> = AttrsKind {
    arbitrary: keras_attrs,
    sane_run: [SANE[0], SANE[1]],
    set_run: |a, [b, t], threads| (a.batch_size, a.seq_length, a.num_threads) = (b, t, threads),
    dims: |a| [a.batch_size, a.seq_length, a.input_size, a.hidden_size],
    value_error: keras_value_error,
    fixed_differ: keras_fixed_differ,
    overflows: |_, dims| keras_overflows(dims),
};

const ONNX: AttrsKind<MrnnOnnxLstmAttrs> = AttrsKind {
    arbitrary: onnx_attrs,
    sane_run: [SANE_ONNX[0], SANE_ONNX[1]],
    set_run: |a, [t, b], threads| (a.seq_length, a.batch_size, a.num_threads) = (t, b, threads),
    dims: |a| [a.seq_length, a.batch_size, a.input_size, a.hidden_size],
    value_error: onnx_value_error,
    fixed_differ: onnx_fixed_differ,
    overflows: |a, dims| onnx_overflows(dims, directions(a)),
};

/// The attributes of one run of a handle made with `created`, from fuzz bytes: the per-run sizes and thread
/// count, and sometimes a changed fixed field; what validation must say of them.
struct RunAttrs<A> {
    a: A,
    /// The sizes (`B, T, I, H` or `T, B, I, H`), `I` and `H` the handle's.
    dims: [i64; 4],
    /// A bad value, a field that differs from the handle's, a size that overflows.
    bad_value: bool,
    mismatch: bool,
    overflow: bool,
    /// Whether the per-run sizes are small enough to compute.
    sane: bool,
}

/// A run of a handle of the kind of `A` made with `created`: `change` may change a fixed field.
fn run_attrs<A: Copy>(
    r: &mut ByteReader<'_>,
    kind: &AttrsKind<A>,
    created: &A,
    change: impl FnOnce(&mut ByteReader<'_>, &mut A),
) -> RunAttrs<A> {
    let mut a = *created;
    let sizes = run_sizes(r, kind.sane_run);
    (kind.set_run)(&mut a, sizes, thread_count(r));
    change(r, &mut a);
    let (bad_value, mismatch) = ((kind.value_error)(&a), (kind.fixed_differ)(&a, created));
    // The weights' sizes (and directions) are the handle's, which validated.
    let [_, _, is, hs] = (kind.dims)(created);
    let dims = [sizes[0], sizes[1], is, hs];
    let overflow = !bad_value && !mismatch && (kind.overflows)(created, dims);
    let sane = sizes.iter().zip(kind.sane_run).all(|(&s, max)| (0..=max).contains(&s));
    RunAttrs { a, dims, bad_value, mismatch, overflow, sane }
}

/// `n` input values from fuzz bytes: mostly in `±scale`, sometimes anything (NaN, infinities, huge).
fn values(r: &mut ByteReader<'_>, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| if r.u8().is_multiple_of(32) { r.wild() } else { r.unit(scale) }).collect()
}

/// The pointer a call gets for `buf`: NULL, two bytes past the start (misaligned, still inside the
/// allocation) or the start.
fn input_ptr<T: Same>(buf: &Buf<T>, null: bool, misalign: bool) -> *const T {
    if null {
        ptr::null()
    } else if misalign {
        buf.ptr().cast::<u8>().wrapping_add(2).cast::<T>()
    } else {
        buf.ptr()
    }
}

/// Output buffers of `sizes` filled with the unset pattern, and the pointers a call gets for them (NULL
/// where `on` is false).
fn output_bufs<const N: usize>(sizes: [usize; N], on: &[bool; N]) -> ([Buf<f32>; N], [*mut f32; N]) {
    let (unset, canary) = (f32::from_bits(UNSET_BITS), f32::from_bits(CANARY_BITS));
    let mut bufs = sizes.map(|n| Buf::filled(n, unset, canary));
    let mut ptrs = [ptr::null_mut::<f32>(); N];
    for (k, (buf, &on)) in bufs.iter_mut().zip(on).enumerate() {
        if on {
            ptrs[k] = buf.mut_ptr();
        }
    }
    (bufs, ptrs)
}

/// The checks after a handle's `_new`: canaries intact, weights unmodified, the status as predicted
/// (`*out` untouched on failure, a fresh handle on success). Returns whether a handle was made.
fn check_new<T>(
    what: &str,
    status: i32,
    out: *mut T,
    weights: &[(&Buf<f32>, &str)],
    saved: &[Vec<f32>],
    expected: Option<i32>,
) -> std::result::Result<bool, String> {
    check_status(what, status)?;
    let canary = f32::from_bits(CANARY_BITS);
    for (buf, name) in weights {
        buf.check_canary(name, canary).map_err(|e| format!("{what}: {e}"))?;
    }
    for ((b, name), s) in weights.iter().zip(saved) {
        same_bits(&format!("{what}: weight {name} modified (after vs before)"), &b.data, s)?;
    }
    if let Some(expected) = expected {
        if status != expected || out != sentinel() {
            return Err(format!(
                "{what}: status {status}, expected {expected}, *out {out:p}: {}",
                last_error_message()
            ));
        }
        return Ok(false);
    }
    if status != MRNN_OK || out.is_null() || out == sentinel() {
        return Err(format!("{what}: status {status}, *out {out:p}: {}", last_error_message()));
    }
    Ok(true)
}

/// A handle's run against the one-shot function on the same inputs: the same status and bitwise the
/// same outputs.
fn check_same_as_one_shot(
    what: &str,
    one_shot_name: &str,
    status: i32,
    one_status: i32,
    outs: &[Buf<f32>],
    one_shot: &[Buf<f32>],
    names: &[&str],
) -> Check {
    if status != one_status {
        return Err(format!("{what}: status {status}, {one_shot_name} gives {one_status}: {}", last_error_message()));
    }
    for ((got, want), name) in outs.iter().zip(one_shot).zip(names) {
        same_bits(&format!("{what}: {name} (handle vs {one_shot_name})"), got.values(), want.values())?;
    }
    Ok(())
}

/// The optional inputs of a run as given (absent: `None`): the mask's bytes or the lengths, `initial_h`,
/// `initial_c`.
type Given<'a, S> = (Option<&'a Buf<S>>, Option<&'a Buf<f32>>, Option<&'a Buf<f32>>);

/// The pointer of an optional buffer: NULL when absent.
fn opt_ptr<T: Same>(buf: Option<&Buf<T>>) -> *const T {
    buf.map_or(ptr::null(), Buf::ptr)
}

/// A run's input pointers: `x`, and the buffers given.
fn input_ptrs<S: Same>(x: *const f32, (steps, h0, c0): Given<'_, S>) -> Inputs<S> {
    (x, opt_ptr(steps), opt_ptr(h0), opt_ptr(c0))
}

/// A handle's call against `one_shot` (the one-shot function `name`, given the outputs) on the same inputs
/// and the weights the handle had: the same status and bitwise the same outputs (`outs`, of which `on` were
/// asked for).
fn check_against_one_shot<const N: usize>(
    (what, name): (&str, &str),
    status: i32,
    outs: &[Buf<f32>; N],
    (on, names): (&[bool; N], &[&str]),
    one_shot: impl FnOnce([*mut f32; N]) -> i32,
) -> Check {
    let (expected, ptrs) = output_bufs(outs.each_ref().map(|b| b.len), on);
    let one_status = one_shot(ptrs);
    check_same_as_one_shot(what, name, status, one_status, outs, &expected, names)
}

/// The caller's weights after a handle's `_new`: scribbled over (`fill`), since the handle owns a copy;
/// returns copies of the values it was given, for the one-shot calls.
fn scribble<const N: usize>(bufs: [&mut Buf<f32>; N], saved: &[Vec<f32>], fill: f32) -> [Buf<f32>; N] {
    let canary = f32::from_bits(CANARY_BITS);
    let mut k = 0;
    bufs.map(|buf| {
        let n = buf.len;
        buf.data[..n].fill(fill);
        k += 1;
        Buf::new(saved[k - 1][..n].to_vec(), canary)
    })
}

/// Creates a Keras handle from arbitrary attributes and weights, then runs it a few times with other
/// shapes, thread counts and sometimes changed fixed fields: every status as the contract predicts, every
/// successful run bitwise equal to `mrnn_lstm_keras` on the same inputs, canaries intact.
fn fuzz_keras_handle(r: &mut ByteReader<'_>) -> Check {
    let (created, _, bad_value) = keras_attrs(r);
    let (is, hs) = (created.input_size, created.hidden_size);
    let sane_weights = (0..=SANE[2]).contains(&is) && (0..=SANE[3]).contains(&hs);
    let overflow = !bad_value && keras_overflows([0, 0, is, hs]);
    let rare = |r: &mut ByteReader<'_>, n: u8| r.u8().is_multiple_of(n);
    let (attrs_null, mut kernel_null, recurrent_null, out_null) = (rare(r, 32), rare(r, 24), rare(r, 24), rare(r, 32));
    let (bias_on, misalign_kernel) = (r.bool(), rare(r, 32));
    // Huge weights that validate: never pack them.
    kernel_null |= too_big(attrs_null || kernel_null || recurrent_null || out_null, bad_value, overflow, sane_weights);
    let required_null = attrs_null || kernel_null || recurrent_null || out_null;
    let expected = predicted(required_null, bad_value, overflow, misalign_kernel);
    let n = KerasLens::new(sane_weights, [0, 0, is, hs]);
    let canary = f32::from_bits(CANARY_BITS);
    let mut kernel = Buf::new(values(r, n.kernel + usize::from(misalign_kernel), 0.5), canary);
    let mut recurrent = Buf::new(values(r, n.recurrent, 0.5), canary);
    let mut bias = Buf::new(values(r, n.bias, 0.5), canary);
    let saved: Vec<Vec<f32>> = [&kernel, &recurrent, &bias].iter().map(|b| b.data.clone()).collect();
    let mut out = sentinel::<MrnnKerasLstm>();
    // SAFETY: the weights hold exactly their documented sizes (plus a canary) when the sizes are sane;
    // otherwise they are one-element dummies and `expected` is a failure validation reports first. A
    // misaligned kernel stays inside its allocation.
    let status = unsafe {
        mrnn_keras_lstm_new(
            if attrs_null { ptr::null() } else { &created },
            input_ptr(&kernel, kernel_null, misalign_kernel),
            if recurrent_null { ptr::null() } else { recurrent.ptr() },
            if bias_on { bias.ptr() } else { ptr::null() },
            if out_null { ptr::null_mut() } else { &mut out },
        )
    };
    let what = format!("mrnn_keras_lstm_new({created:?}, nulls: attrs {attrs_null} kernel {kernel_null} recurrent {recurrent_null} out {out_null}, misaligned kernel {misalign_kernel})");
    let layer = Owned { ptr: if status == MRNN_OK { out } else { ptr::null_mut() }, free: mrnn_keras_lstm_free };
    let weights = [(&kernel, "kernel"), (&recurrent, "recurrent_kernel"), (&bias, "bias")];
    if !check_new(&what, status, out, &weights, &saved, expected)? {
        return Ok(());
    }
    // The handle owns a copy: the caller's weights may change (the one-shot calls get the saved ones).
    let [kernel, recurrent, bias] = scribble([&mut kernel, &mut recurrent, &mut bias], &saved, 1e3);
    let saved = Weights { kernel, recurrent, bias: bias_on.then_some(bias) };

    for run in 0..1 + r.below(4) {
        let RunAttrs { a, dims, bad_value, mismatch, overflow, sane } =
            run_attrs(r, &KERAS, &created, |r, a| match r.u8() % 24 {
                0 => a.input_size += 1,
                1 => a.hidden_size += 1,
                2 => a.go_backwards ^= 1,
                3 => a.zero_output_for_mask ^= 1,
                4 => a.activation = code(r, 1),
                5 => a.recurrent_activation = code(r, 0),
                6 => a.recurrent_alpha = [f32::NAN, 0.2, 0.5, r.wild()][r.below(4)],
                7 => a.recurrent_beta = [f32::NAN, 0.5, 0.2, r.wild()][r.below(4)],
                _ => {}
            });
        let (layer_null, attrs_null, mut x_null) = (rare(r, 32), rare(r, 32), rare(r, 24));
        let (mask_on, h0_on, c0_on) = (r.bool(), r.u8().is_multiple_of(3), r.u8().is_multiple_of(3));
        let outs_on = [!r.u8().is_multiple_of(4), r.bool(), r.bool(), r.bool()];
        let (misalign_x, alias) = (rare(r, 32), rare(r, 32));
        x_null |= too_big(layer_null || attrs_null || x_null, bad_value || mismatch, overflow, sane);
        let required_null = layer_null || attrs_null || x_null;
        let n = KerasLens::new(sane, dims);
        let aliased = alias && outs_on[2] && outs_on[3] && n.state > 0;
        let expected = predicted(required_null, bad_value || mismatch, overflow, misalign_x || aliased);

        let x = Buf::new(values(r, n.x + usize::from(misalign_x), 2.0), canary);
        let h0 = Buf::new(values(r, n.state, 1.0), canary);
        let c0 = Buf::new(values(r, n.state, 1.0), canary);
        let mask = Buf::new((0..n.mask).map(|_| [0, 1, 1, 255, 0, 1, 7, 1][r.below(8)]).collect(), CANARY_BYTE);
        let inputs_before: Vec<Vec<f32>> = [&x, &h0, &c0].iter().map(|b| b.data.clone()).collect();
        let (outs, mut ptrs) = output_bufs([n.y, n.state, n.state, n.state], &outs_on);
        if aliased {
            ptrs[3] = ptrs[2];
        }
        let given = (mask_on.then_some(&mask), h0_on.then_some(&h0), c0_on.then_some(&c0));
        // SAFETY: `layer.ptr` is a live handle; the buffers hold exactly their documented sizes (plus a
        // canary) when the sizes are sane, otherwise `expected` is a failure validation reports before any
        // access. A misaligned x and aliased outputs stay inside their allocations.
        let status = unsafe {
            keras_run(
                if layer_null { ptr::null_mut() } else { layer.ptr },
                if attrs_null { ptr::null() } else { &a },
                input_ptrs(input_ptr(&x, x_null, misalign_x), given),
                ptrs,
            )
        };
        let what = format!("mrnn_keras_lstm_run #{run} ({a:?}, handle {created:?}, nulls: layer {layer_null} attrs {attrs_null} x {x_null}, misaligned x {misalign_x}, aliased {aliased})");
        mask.check_canary("mask", CANARY_BYTE).map_err(|e| format!("{what}: {e}"))?;
        if check_call(&what, status, &outs, &KERAS_OUT_NAMES, &[&x, &h0, &c0], &inputs_before, expected)? {
            check_message(&what, !required_null && !bad_value && mismatch, "differs from the handle's")?;
            continue;
        }
        // The one-shot function on the same inputs and the saved weights: bitwise the same.
        // SAFETY: the run's valid buffers, and the weights the handle was given, of its sizes.
        let one_shot = |o| unsafe { lstm_keras(&a, input_ptrs(x.ptr(), given), saved.ptrs(), o) };
        check_against_one_shot((&what, "mrnn_lstm_keras"), status, &outs, (&outs_on, &KERAS_OUT_NAMES), one_shot)?;
    }
    drop(layer);
    // SAFETY: NULL is a no-op.
    unsafe { mrnn_keras_lstm_free(ptr::null_mut()) };
    Ok(())
}

/// As [`fuzz_keras_handle`], for `mrnn_onnx_lstm_new` / `_run` against `mrnn_lstm_onnx`.
fn fuzz_onnx_handle(r: &mut ByteReader<'_>) -> Check {
    let (created, _, bad_value) = onnx_attrs(r);
    let (is, hs) = (created.input_size, created.hidden_size);
    let d_n = directions(&created);
    let sane_weights = (0..=SANE_ONNX[2]).contains(&is) && (0..=SANE_ONNX[3]).contains(&hs);
    let overflow = !bad_value && onnx_overflows([0, 0, is, hs], d_n);
    let rare = |r: &mut ByteReader<'_>, n: u8| r.u8().is_multiple_of(n);
    let (attrs_null, mut w_null, r_null, out_null) = (rare(r, 32), rare(r, 24), rare(r, 24), rare(r, 32));
    let (b_on, p_on, misalign_w) = (r.bool(), r.u8().is_multiple_of(3), rare(r, 32));
    w_null |= too_big(attrs_null || w_null || r_null || out_null, bad_value, overflow, sane_weights);
    let required_null = attrs_null || w_null || r_null || out_null;
    let expected = predicted(required_null, bad_value, overflow, misalign_w);
    let n = OnnxLens::new(sane_weights, [0, 0, is, hs], d_n);
    let canary = f32::from_bits(CANARY_BITS);
    let mut w = Buf::new(values(r, n.w + usize::from(misalign_w), 0.5), canary);
    let mut rr = Buf::new(values(r, n.r, 0.5), canary);
    let mut bias = Buf::new(values(r, n.b, 0.5), canary);
    let mut peep = Buf::new(values(r, n.p, 0.5), canary);
    let saved: Vec<Vec<f32>> = [&w, &rr, &bias, &peep].iter().map(|b| b.data.clone()).collect();
    let mut out = sentinel::<MrnnOnnxLstm>();
    // SAFETY: as in `fuzz_keras_handle`.
    let status = unsafe {
        mrnn_onnx_lstm_new(
            if attrs_null { ptr::null() } else { &created },
            input_ptr(&w, w_null, misalign_w),
            if r_null { ptr::null() } else { rr.ptr() },
            if b_on { bias.ptr() } else { ptr::null() },
            if p_on { peep.ptr() } else { ptr::null() },
            if out_null { ptr::null_mut() } else { &mut out },
        )
    };
    let what = format!("mrnn_onnx_lstm_new({created:?}, nulls: attrs {attrs_null} w {w_null} r {r_null} out {out_null}, misaligned w {misalign_w})");
    let layer = Owned { ptr: if status == MRNN_OK { out } else { ptr::null_mut() }, free: mrnn_onnx_lstm_free };
    let weights = [(&w, "w"), (&rr, "r"), (&bias, "b"), (&peep, "p")];
    if !check_new(&what, status, out, &weights, &saved, expected)? {
        return Ok(());
    }
    let [w, r_, b, p] = scribble([&mut w, &mut rr, &mut bias, &mut peep], &saved, -1e3);
    let saved = OnnxWeights { w, r: r_, b: b_on.then_some(b), p: p_on.then_some(p) };

    for run in 0..1 + r.below(4) {
        let RunAttrs { a, dims, bad_value, mismatch, overflow, sane } =
            run_attrs(r, &ONNX, &created, |r, a| match r.u8() % 32 {
                0 => a.input_size += 1,
                1 => a.hidden_size += 1,
                2 => a.direction = enum_value(r, 3),
                3 => a.layout ^= 1,
                4 => a.input_forget ^= 1,
                5 => a.has_clip ^= 1,
                6 => a.clip = [f32::INFINITY, 1.0, 0.5, f32::NAN][r.below(4)],
                7 => a.num_activations = [0, 3, 6][r.below(3)],
                8 => a.activations[r.below(6)] = code(r, 0),
                9 => a.activation_alpha[r.below(6)] = [f32::NAN, 0.2, 0.01, 1.0, r.wild()][r.below(5)],
                10 => a.activation_beta[r.below(6)] = [f32::NAN, 0.5, 0.0, r.wild()][r.below(4)],
                _ => {}
            });
        let (layer_null, attrs_null, mut x_null) = (rare(r, 32), rare(r, 32), rare(r, 24));
        let (lens_on, h0_on, c0_on) = (!r.u8().is_multiple_of(4), r.u8().is_multiple_of(3), r.u8().is_multiple_of(3));
        let outs_on = [!r.u8().is_multiple_of(4), r.bool(), r.bool()];
        let (misalign_x, alias) = (rare(r, 48), rare(r, 32));
        x_null |= too_big(layer_null || attrs_null || x_null, bad_value || mismatch, overflow, sane);
        let required_null = layer_null || attrs_null || x_null;
        let n = OnnxLens::new(sane, dims, d_n);
        let aliased = alias && outs_on[1] && outs_on[2] && n.state > 0;
        let (lens_values, lens_bad) = lengths(r, n.lens, dims[0], sane);
        let expected = predicted(required_null, bad_value || mismatch, overflow, misalign_x || aliased)
            .or_else(|| (lens_on && lens_bad).then_some(MRNN_ERR_BAD_ARGUMENT));

        let x = Buf::new(values(r, n.x + usize::from(misalign_x), 2.0), canary);
        let h0 = Buf::new(values(r, n.state, 1.0), canary);
        let c0 = Buf::new(values(r, n.state, 1.0), canary);
        let lens = Buf::new(lens_values, CANARY_I32);
        let inputs_before: Vec<Vec<f32>> = [&x, &h0, &c0].iter().map(|b| b.data.clone()).collect();
        let lens_before = lens.data.clone();
        let (outs, mut ptrs) = output_bufs([n.y, n.state, n.state], &outs_on);
        if aliased {
            ptrs[2] = ptrs[1];
        }
        let given = (lens_on.then_some(&lens), h0_on.then_some(&h0), c0_on.then_some(&c0));
        // SAFETY: as in `fuzz_keras_handle`.
        let status = unsafe {
            onnx_run(
                if layer_null { ptr::null_mut() } else { layer.ptr },
                if attrs_null { ptr::null() } else { &a },
                input_ptrs(input_ptr(&x, x_null, misalign_x), given),
                ptrs,
            )
        };
        let what = format!(
            "mrnn_onnx_lstm_run #{run} ({a:?}, handle {created:?}, nulls: layer {layer_null} attrs {attrs_null} x {x_null}, misaligned x {misalign_x}, aliased {aliased}, lens {:?})",
            lens_on.then(|| lens.values())
        );
        check_lens(&what, &lens, &lens_before)?;
        if check_call(&what, status, &outs, &ONNX_OUT_NAMES, &[&x, &h0, &c0], &inputs_before, expected)? {
            check_message(&what, !required_null && !bad_value && mismatch, "differs from the handle's")?;
            continue;
        }
        // SAFETY: the run's valid buffers, and the weights the handle was given, of its sizes.
        let one_shot = |o| unsafe { lstm_onnx(&a, input_ptrs(x.ptr(), given), saved.ptrs(), o) };
        check_against_one_shot((&what, "mrnn_lstm_onnx"), status, &outs, (&outs_on, &ONNX_OUT_NAMES), one_shot)?;
    }
    drop(layer);
    // SAFETY: NULL is a no-op.
    unsafe { mrnn_onnx_lstm_free(ptr::null_mut()) };
    Ok(())
}

// ------------------------------------------------------------------------------------------------ training

/// Names of the gradient outputs, in argument order.
const GRAD_NAMES: [&str; 6] = ["dx", "d_kernel", "d_recurrent_kernel", "d_bias", "d_initial_h", "d_initial_c"];

/// The Rust API's layer for valid Keras attributes `a`, written from the header.
fn reference_keras_layer(
    a: &MrnnKerasLstmAttrs,
    kernel: &[f32],
    recurrent: &[f32],
    bias: Option<&[f32]>,
) -> Result<KerasLstm> {
    let ract = if a.recurrent_activation == 7 {
        let or = |v: f32, d: f32| if v.is_nan() { d } else { v };
        Activation::HardSigmoid { alpha: or(a.recurrent_alpha, 0.2), beta: or(a.recurrent_beta, 0.5) }
    } else {
        keras_reference_activation(a.recurrent_activation)?
    };
    let options = KerasLstmOptions::default()
        .activation(keras_reference_activation(a.activation)?)
        .recurrent_activation(ract)
        .go_backwards(a.go_backwards == 1)
        .zero_output_for_mask(a.zero_output_for_mask == 1);
    let weights = LstmWeights::from_keras(a.input_size as usize, a.hidden_size as usize, kernel, recurrent, bias)?;
    KerasLstm::new(weights, options)
}

/// One backward problem's inputs, as the Rust API takes them.
struct BackwardInputs<'a> {
    b: usize,
    t: usize,
    x: &'a [f32],
    mask: Option<&'a [u8]>,
    h0: Option<&'a [f32]>,
    c0: Option<&'a [f32]>,
    /// dy, d_last_output, d_h_n, d_c_n.
    up: [Option<&'a [f32]>; 4],
}

/// The Rust API's gradients (`forward_train`, then `backward`) of the outputs `on`, in vectors of `sizes`
/// (the others stay unset), with the C ABI's rule for the initial state: a missing half is zeros.
fn reference_grads(
    layer: &KerasLstm,
    p: &BackwardInputs<'_>,
    sizes: [usize; 6],
    on: &[bool; 6],
    threads: usize,
) -> Result<[Vec<f32>; 6]> {
    let view = match p.mask {
        Some(m) => SeqView::from_mask_bytes(m, p.b, p.t)?,
        None => SeqView::full(p.b, p.t),
    };
    let zeros = vec![0.0; p.b * layer.units()];
    let initial = match (p.h0, p.c0) {
        (None, None) => None,
        (h, c) => Some(InitialState { h: h.unwrap_or(&zeros), c: c.unwrap_or(&zeros) }),
    };
    let mut tape = KerasTape::new();
    layer.forward_train(p.x, &view, initial, KerasOutputs::default(), &mut tape, threads, &mut Workspace::new())?;
    let mut g = sizes.map(|n| vec![f32::from_bits(UNSET_BITS); n]);
    let [dx, dk, dr, db, dh, dc] = &mut g;
    let grads = KerasGrads {
        dx: on[0].then_some(&mut dx[..]),
        d_kernel: on[1].then_some(&mut dk[..]),
        d_recurrent_kernel: on[2].then_some(&mut dr[..]),
        d_bias: on[3].then_some(&mut db[..]),
        d_initial_h: on[4].then_some(&mut dh[..]),
        d_initial_c: on[5].then_some(&mut dc[..]),
    };
    let up = KerasUpstream { dy: p.up[0], d_last_output: p.up[1], d_h_n: p.up[2], d_c_n: p.up[3] };
    layer.backward(p.x, &view, initial, &tape, up, grads, threads)?;
    Ok(g)
}

/// A `[B,T]` mask from fuzz bytes: holes, zeros, and nonzero bytes other than 1.
fn mask_values(r: &mut ByteReader<'_>, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| match r.u8() % 8 {
            0..=2 => 0,
            3 => r.u8(),
            4 => 255,
            _ => 1,
        })
        .collect()
}

/// `mrnn_lstm_keras_backward` from arbitrary attributes, pointers and outputs: every status as predicted,
/// nothing written by a failing call, canaries intact, inputs unchanged, and the requested gradients
/// bitwise the Rust API's.
fn fuzz_keras_backward(r: &mut ByteReader<'_>) -> Check {
    let OneShot { attrs, dims, sane, bad_value, overflow, nulls } = one_shot(r, &KERAS, (48, 32));
    let [attrs_null, mut x_null, kernel_null, recurrent_null] = nulls;
    let given = KerasGiven::new(r);
    let up_on = [!r.u8().is_multiple_of(4), r.bool(), r.bool(), r.bool()];
    let grads_on: [bool; 6] = std::array::from_fn(|_| !r.u8().is_multiple_of(3));
    // 1: dy two bytes off; 2: d_bias two bytes off.
    let misalign = match r.u8() % 40 {
        0 => 1,
        1 => 2,
        _ => 0,
    };
    // 1: d_initial_c = d_initial_h; 2: dx = x.
    let alias = match r.u8() % 40 {
        0 => 1,
        1 => 2,
        _ => 0,
    };
    let required_null = attrs_null || x_null || kernel_null || recurrent_null;
    // Huge sizes that validate: never compute them.
    x_null |= too_big(required_null, bad_value, overflow, sane);
    let required_null = required_null || x_null;
    let n = KerasLens::new(sane, dims);
    let sizes = [n.x, n.kernel, n.recurrent, n.bias, n.state, n.state];
    let misaligned = match misalign {
        1 => up_on[0],
        2 => grads_on[3],
        _ => false,
    };
    let aliased = match alias {
        1 => grads_on[4] && grads_on[5] && n.state > 0,
        2 => grads_on[0] && n.x > 0,
        _ => false,
    };
    let expected = predicted(required_null, bad_value, overflow, misaligned || aliased);

    let canary = f32::from_bits(CANARY_BITS);
    let mut bufs = KerasBufs::new(r, &n, 0);
    let ups =
        [n.y + usize::from(misalign == 1), n.state, n.state, n.state].map(|n| Buf::new(values(r, n, 1.0), canary));
    // One raw pointer for x, from which the aliased dx is also derived.
    let x_raw = bufs.x.mut_ptr();
    let inputs: Vec<&Buf<f32>> = bufs.floats().into_iter().chain(&ups).collect();
    let inputs_before: Vec<Vec<f32>> = inputs.iter().map(|b| b.data.clone()).collect();
    let (outs, mut out_ptrs) = output_bufs(sizes, &grads_on);
    if misaligned && misalign == 2 {
        out_ptrs[3] = out_ptrs[3].cast::<u8>().wrapping_add(2).cast::<f32>();
    }
    if aliased && alias == 1 {
        out_ptrs[5] = out_ptrs[4];
    }
    if aliased && alias == 2 {
        out_ptrs[0] = x_raw;
    }
    let x_ptr = if x_null { ptr::null() } else { x_raw.cast_const() };
    let (i, w) = bufs.ptrs(x_ptr, [kernel_null, recurrent_null], given);
    let up_ptrs: [*const f32; 4] = std::array::from_fn(|k| input_ptr(&ups[k], !up_on[k], k == 0 && misalign == 1));
    // SAFETY: every non-NULL buffer holds exactly its documented size (plus a canary) when the sizes are
    // sane. Otherwise the buffers are one-element dummies and `expected` is a failure that validation
    // reports before any access. A misaligned dy has one more element; a misaligned d_bias stays inside its
    // canary; an output aliased to x shares x's raw pointer, and x is compared with its copy afterwards.
    let status = unsafe { lstm_keras_backward(if attrs_null { ptr::null() } else { &attrs }, i, w, up_ptrs, out_ptrs) };
    let what = format!(
        "mrnn_lstm_keras_backward({attrs:?}, nulls: attrs {attrs_null} x {x_null} kernel {kernel_null} recurrent \
         {recurrent_null}, upstream {up_on:?}, gradients {grads_on:?}, misaligned {misalign}, alias {alias})"
    );
    bufs.mask.check_canary("mask", CANARY_BYTE).map_err(|e| format!("{what}: {e}"))?;
    if check_call(&what, status, &outs, &GRAD_NAMES, &inputs, &inputs_before, expected)?
        || !asked(&what, status, &grads_on)?
    {
        return Ok(());
    }
    let reference = (|| {
        let layer = bufs.reference_layer(&attrs, given)?;
        let p = BackwardInputs {
            b: dims[0] as usize,
            t: dims[1] as usize,
            x: bufs.x.values(),
            mask: given.mask.then(|| bufs.mask.values()),
            h0: given.h0.then(|| bufs.h0.values()),
            c0: given.c0.then(|| bufs.c0.values()),
            up: std::array::from_fn(|k| up_on[k].then(|| ups[k].values())),
        };
        reference_grads(&layer, &p, sizes, &grads_on, attrs.num_threads as usize)
    })();
    check_same_as_rust(&what, status, reference, &outs, &GRAD_NAMES)
}

/// Whether a backward that passed validation was asked for any gradient; with none, it must have
/// succeeded and there is nothing to compare.
fn asked(what: &str, status: i32, grads_on: &[bool]) -> std::result::Result<bool, String> {
    if grads_on.contains(&true) {
        return Ok(true);
    }
    if status != MRNN_OK {
        return Err(format!("{what}: status {status}: {}", last_error_message()));
    }
    Ok(false)
}

/// Valid Keras attributes for a handle (sizes within [`SANE`]), otherwise arbitrary.
fn valid_keras_attrs(r: &mut ByteReader<'_>) -> MrnnKerasLstmAttrs {
    MrnnKerasLstmAttrs {
        input_size: r.below(SANE[2] as usize + 1) as i64,
        hidden_size: 1 + r.below(SANE[3] as usize) as i64,
        go_backwards: i32::from(r.bool()),
        zero_output_for_mask: i32::from(r.bool()),
        activation: [1, r.below(11) as i32][r.below(2)],
        recurrent_activation: [0, 7, r.below(11) as i32][r.below(3)],
        recurrent_alpha: [f32::NAN, 1.0 / 6.0, r.unit(1.0)][r.below(3)],
        recurrent_beta: [f32::NAN, 0.5, r.unit(1.0)][r.below(3)],
        ..MrnnKerasLstmAttrs::default()
    }
}

/// A handle's weights as the caller passes them (bias optional).
struct Weights {
    kernel: Buf<f32>,
    recurrent: Buf<f32>,
    bias: Option<Buf<f32>>,
}

impl Weights {
    fn new(r: &mut ByteReader<'_>, a: &MrnnKerasLstmAttrs) -> Self {
        let (i, h) = (a.input_size as usize, a.hidden_size as usize);
        let canary = f32::from_bits(CANARY_BITS);
        Weights {
            kernel: Buf::new(values(r, i * 4 * h, 0.5), canary),
            recurrent: Buf::new(values(r, h * 4 * h, 0.5), canary),
            bias: r.bool().then(|| Buf::new(values(r, 4 * h, 0.5), canary)),
        }
    }

    fn bias_ptr(&self) -> *const f32 {
        opt_ptr(self.bias.as_ref())
    }

    /// `kernel`, `recurrent_kernel`, `bias`.
    fn ptrs(&self) -> [*const f32; 3] {
        [self.kernel.ptr(), self.recurrent.ptr(), self.bias_ptr()]
    }
}

/// A tape under test and copies of the inputs of the run that made it (`S`: the valid steps as the run was
/// given them, the mask's bytes or the lengths).
struct TrainRun<A, S> {
    tape: Owned<MrnnTape>,
    attrs: A,
    x: Buf<f32>,
    steps: Option<Buf<S>>,
    h0: Option<Buf<f32>>,
    c0: Option<Buf<f32>>,
    /// The handle that made it, and that handle's weights generation then.
    owner: usize,
    generation: usize,
    /// Index of the weights it was made with in the history.
    weights: usize,
}

impl<A, S: Same> TrainRun<A, S> {
    /// The pointers of the copies of the run's inputs.
    fn inputs(&self) -> Inputs<S> {
        (self.x.ptr(), opt_ptr(self.steps.as_ref()), opt_ptr(self.h0.as_ref()), opt_ptr(self.c0.as_ref()))
    }
}

/// Two handles of one kind (`H`) made with the same weights, driven through a random sequence of calls:
/// every set of weights they were given successfully (`history`), per handle the index of its current
/// ones and their generation, and the tapes of their runs.
struct Session<H, W, R> {
    handles: Vec<Owned<H>>,
    history: Vec<W>,
    current: [usize; 2],
    generation: [usize; 2],
    runs: Vec<R>,
}

impl<H, W, A, S: Same> Session<H, W, TrainRun<A, S>> {
    /// Two handles made by `new` (which writes the handle to its second argument) with `weights`.
    fn new(
        weights: W,
        new: impl Fn(&W, *mut *mut H) -> i32,
        free: unsafe extern "C" fn(*mut H),
        what: &str,
    ) -> std::result::Result<Self, String> {
        let mut handles = Vec::new();
        for _ in 0..2 {
            let mut out = ptr::null_mut();
            let status = new(&weights, &mut out);
            if status != MRNN_OK || out.is_null() {
                return Err(format!("{what}: status {status}: {}", last_error_message()));
            }
            handles.push(Owned { ptr: out, free });
        }
        Ok(Session { handles, history: vec![weights], current: [0; 2], generation: [0; 2], runs: Vec::new() })
    }

    /// Handle `k`'s weights replaced by `w` (a successful `set_weights`).
    fn replaced(&mut self, k: usize, w: W) {
        self.history.push(w);
        self.current[k] = self.history.len() - 1;
        self.generation[k] += 1;
    }

    /// One of the tapes, or none.
    fn pick(&self, r: &mut ByteReader<'_>) -> Option<&TrainRun<A, S>> {
        (!self.runs.is_empty()).then(|| &self.runs[r.below(self.runs.len())])
    }

    /// Keeps a successful run of handle `k` (its tape, and copies of its inputs for the one-shot backward),
    /// then scribbles over the caller's buffers: the tape must hold its own copies.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        k: usize,
        tape: Owned<MrnnTape>,
        attrs: A,
        [x, h0, c0]: [&mut Buf<f32>; 3],
        (h0_on, c0_on): (bool, bool),
        steps: Option<&mut Buf<S>>,
        (scribble, canary): (S, S),
    ) {
        let keep = |b: &Buf<f32>| Buf::new(b.values().to_vec(), f32::from_bits(CANARY_BITS));
        self.runs.push(TrainRun {
            tape,
            attrs,
            x: keep(x),
            steps: steps.as_deref().map(|s| Buf::new(s.values().to_vec(), canary)),
            h0: h0_on.then(|| keep(h0)),
            c0: c0_on.then(|| keep(c0)),
            owner: k,
            generation: self.generation[k],
            weights: self.current[k],
        });
        for buf in [x, h0, c0] {
            let n = buf.len;
            buf.data[..n].fill(f32::NAN);
        }
        if let Some(steps) = steps {
            let n = steps.len;
            steps.data[..n].fill(scribble);
        }
    }

    /// After a `run_train` of handle `k`: the checks of every call ([`check_call`] with the float inputs and
    /// their copies from before the call), `*tape` untouched by a predicted failure, and for a success the
    /// outputs bitwise those of the one-shot forward `name` (`one_shot`, given the handle's current weights
    /// and the outputs). Returns the new tape, if any.
    fn check_run_train<const N: usize>(
        &self,
        (k, what, name): (usize, &str, &str),
        (status, expected): (i32, Option<i32>),
        (outs, on, names): (&[Buf<f32>; N], &[bool; N], &[&str]),
        (inputs, before): (&[&Buf<f32>], &[Vec<f32>]),
        slot: &TapeSlot,
        one_shot: impl FnOnce(&W, [*mut f32; N]) -> i32,
    ) -> std::result::Result<Option<Owned<MrnnTape>>, String> {
        let failed = check_call(what, status, outs, names, inputs, before, expected)?;
        let Some(tape) = slot.take(what, status, failed)? else { return Ok(None) };
        let w = &self.history[self.current[k]];
        check_against_one_shot((what, name), status, outs, (on, names), |o| one_shot(w, o))?;
        Ok(Some(tape))
    }

    /// Frees one of the tapes (`Owned`'s drop), if any.
    fn free_one(&mut self, r: &mut ByteReader<'_>) {
        if !self.runs.is_empty() {
            self.runs.swap_remove(r.below(self.runs.len()));
        }
    }

    /// `mrnn_tape_bytes` of one of the tapes, if any: at least `floor(run)` bytes.
    fn check_bytes(&self, r: &mut ByteReader<'_>, step: usize, floor: impl Fn(&TrainRun<A, S>) -> usize) -> Check {
        let Some(run) = self.pick(r) else { return Ok(()) };
        let mut bytes = u64::MAX;
        // SAFETY: a live tape and a `u64` slot.
        let status = unsafe { mrnn_tape_bytes(run.tape.ptr, &mut bytes) };
        let floor = floor(run) as u64;
        if status != MRNN_OK || bytes < floor || bytes == u64::MAX {
            return Err(format!(
                "step {step}: mrnn_tape_bytes: status {status}, {bytes} bytes (its copies alone {floor})"
            ));
        }
        Ok(())
    }
}

/// The `tape` argument of a `run_train`: NULL, misaligned (one byte into the slots) or the first of three
/// slots, which hold a sentinel until a successful call writes its tape to the first.
struct TapeSlot {
    slots: [*mut MrnnTape; 3],
    null: bool,
    misalign: bool,
}

impl TapeSlot {
    fn new(null: bool, misalign: bool) -> Self {
        TapeSlot { slots: [sentinel(); 3], null, misalign }
    }

    fn ptr(&mut self) -> *mut *mut MrnnTape {
        if self.null {
            ptr::null_mut()
        } else if self.misalign {
            self.slots.as_mut_ptr().cast::<u8>().wrapping_add(1).cast()
        } else {
            self.slots.as_mut_ptr()
        }
    }

    /// After the call (which passed `check_call`): untouched by a predicted failure, a new tape otherwise.
    fn take(&self, what: &str, status: i32, failed: bool) -> std::result::Result<Option<Owned<MrnnTape>>, String> {
        if failed {
            if self.slots != [sentinel(); 3] {
                return Err(format!("{what}: a failing run_train wrote the tape slot"));
            }
            return Ok(None);
        }
        let tape = self.slots[0];
        if status != MRNN_OK || tape == sentinel() || tape.is_null() {
            return Err(format!("{what}: status {status}, tape {tape:p}: {}", last_error_message()));
        }
        Ok(Some(Owned { ptr: tape, free: mrnn_tape_free }))
    }
}

/// The upstream gradients and gradient outputs of a `run_backward` from fuzz bytes: which are given
/// (`adjust` may withdraw some), sometimes a misaligned second output or aliased initial-state
/// gradients; the buffers and the pointers the call gets.
struct GradCase<const U: usize, const G: usize> {
    up_on: [bool; U],
    grads_on: [bool; G],
    misalign: bool,
    alias: bool,
    ups: [Buf<f32>; U],
    ups_before: Vec<Vec<f32>>,
    outs: [Buf<f32>; G],
    ptrs: [*mut f32; G],
    up_ptrs: [*const f32; U],
}

impl<const U: usize, const G: usize> GradCase<U, G> {
    fn new(
        r: &mut ByteReader<'_>,
        up_sizes: [usize; U],
        sizes: [usize; G],
        b: usize,
        adjust: impl FnOnce(&mut ByteReader<'_>, &mut [bool; G]),
    ) -> Self {
        let up_on: [bool; U] = std::array::from_fn(|j| if j == 0 { !r.u8().is_multiple_of(4) } else { r.bool() });
        let mut grads_on: [bool; G] = std::array::from_fn(|_| !r.u8().is_multiple_of(3));
        adjust(r, &mut grads_on);
        let misalign = r.u8().is_multiple_of(32) && grads_on[1];
        let alias = r.u8().is_multiple_of(32) && grads_on[4] && grads_on[5] && b > 0;
        let ups = up_sizes.map(|n| Buf::new(values(r, n, 1.0), f32::from_bits(CANARY_BITS)));
        let ups_before = ups.iter().map(|u| u.data.clone()).collect();
        let (outs, mut ptrs) = output_bufs(sizes, &grads_on);
        if misalign {
            ptrs[1] = ptrs[1].cast::<u8>().wrapping_add(2).cast();
        }
        if alias {
            ptrs[5] = ptrs[4];
        }
        let up_ptrs = std::array::from_fn(|j| if up_on[j] { ups[j].ptr() } else { ptr::null() });
        GradCase { up_on, grads_on, misalign, alias, ups, ups_before, outs, ptrs, up_ptrs }
    }

    /// The checks after the call ([`check_call`], the upstream as inputs); a predicted failure names its
    /// cause (`causes`: whether it holds, what the message says then).
    fn check(
        &self,
        what: &str,
        status: i32,
        expected: Option<i32>,
        names: &[&str],
        causes: &[(bool, &str)],
    ) -> std::result::Result<bool, String> {
        let ups: Vec<&Buf<f32>> = self.ups.iter().collect();
        if !check_call(what, status, &self.outs, names, &ups, &self.ups_before, expected)? {
            return Ok(false);
        }
        for &(cause, needle) in causes {
            check_message(what, cause, needle)?;
        }
        Ok(true)
    }
}

/// A `run_backward` with a NULL tape (`call`): refused before anything else is read.
fn check_null_tape(step: usize, what: &str, status: i32) -> Check {
    if status != MRNN_ERR_NULL_POINTER {
        return Err(format!("step {step}: {what} with a NULL tape: status {status}"));
    }
    check_status(what, status)
}

/// A `set_weights` of `w` (whose first tensor `first` is sometimes NULL or misaligned) on handle `k`
/// (`layer_null`: given NULL instead) by `call` (the first tensor's pointer, the weights): its status as
/// predicted, and the session's bookkeeping of a success.
fn fuzz_set_weights<H, W, A, S: Same>(
    r: &mut ByteReader<'_>,
    session: &mut Session<H, W, TrainRun<A, S>>,
    (step, k, layer_null): (usize, usize, bool),
    w: W,
    first: impl Fn(&W) -> &Buf<f32>,
    call: impl FnOnce(*const f32, &W) -> i32,
    what: impl FnOnce(&W, bool, bool) -> String,
) -> Check {
    let rare = |r: &mut ByteReader<'_>, n: u8| r.u8().is_multiple_of(n);
    let (null, misalign) = (rare(r, 16), rare(r, 16));
    // A misaligned first tensor: two bytes into a copy with one more element.
    let canary = f32::from_bits(CANARY_BITS);
    let shifted = Buf::new(first(&w).values().iter().copied().chain([0.0]).collect::<Vec<f32>>(), canary);
    let p = if null {
        ptr::null()
    } else if misalign {
        shifted.ptr().cast::<u8>().wrapping_add(2).cast()
    } else {
        first(&w).ptr()
    };
    let expected = if layer_null || null {
        Some(MRNN_ERR_NULL_POINTER)
    } else if misalign {
        Some(MRNN_ERR_BAD_ARGUMENT)
    } else {
        None
    };
    let status = call(p, &w);
    let what = format!("step {step}: {} on handle {k} (layer NULL {layer_null})", what(&w, null, misalign));
    check_status(&what, status)?;
    if status != expected.unwrap_or(MRNN_OK) {
        return Err(format!("{what}: status {status}, expected {expected:?}: {}", last_error_message()));
    }
    if status == MRNN_OK {
        session.replaced(k, w);
    }
    Ok(())
}

/// A Keras tape under test and copies of the inputs of the run that made it.
type KerasTrainRun = TrainRun<MrnnKerasLstmAttrs, u8>;

/// Two Keras handles of the same attributes driven through a random sequence of `run_train`,
/// `run_backward` (with their own tapes, stale ones and the other handle's), `set_weights`,
/// `mrnn_tape_bytes` and `mrnn_tape_free`: every status as predicted (with "another handle" / "stale" in
/// the message of a refused tape), nothing written by a failing call, `*tape` untouched by a failing
/// `run_train`, every run's outputs bitwise `mrnn_lstm_keras`'s and every `run_backward` bitwise
/// `mrnn_lstm_keras_backward`'s on the run's inputs and the weights it was made with. The callers' input
/// buffers are overwritten right after `run_train` returns (the tape holds copies), and the handles are
/// freed before the tapes.
fn fuzz_keras_train(r: &mut ByteReader<'_>) -> Check {
    let created = valid_keras_attrs(r);
    let (is, hs) = (created.input_size, created.hidden_size);
    let (iu, hu) = (is as usize, hs as usize);
    let canary = f32::from_bits(CANARY_BITS);
    let rare = |r: &mut ByteReader<'_>, n: u8| r.u8().is_multiple_of(n);
    let new = |w: &Weights, out: *mut *mut MrnnKerasLstm| {
        // SAFETY: the weights hold exactly the sizes of the (valid) attributes; `out` is a pointer slot.
        unsafe { mrnn_keras_lstm_new(&created, w.kernel.ptr(), w.recurrent.ptr(), w.bias_ptr(), out) }
    };
    let what = format!("mrnn_keras_lstm_new({created:?})");
    let mut session: Session<MrnnKerasLstm, Weights, KerasTrainRun> =
        Session::new(Weights::new(r, &created), new, mrnn_keras_lstm_free, &what)?;

    for step in 0..2 + r.below(10) {
        let k = usize::from(rare(r, 4));
        let layer_null = rare(r, 48);
        let layer = if layer_null { ptr::null_mut() } else { session.handles[k].ptr };
        match r.u8() % 10 {
            0..=3 => {
                // run_train.
                let change = |r: &mut ByteReader<'_>, a: &mut MrnnKerasLstmAttrs| match r.u8() % 24 {
                    0 => a.hidden_size += 1,
                    1 => a.go_backwards ^= 1,
                    2 => a.activation = code(r, 1),
                    _ => {}
                };
                let RunAttrs { a, dims, bad_value, mismatch, overflow, sane } = run_attrs(r, &KERAS, &created, change);
                let (attrs_null, mut x_null, tape_null) = (rare(r, 48), rare(r, 32), rare(r, 32));
                let (mask_on, h0_on, c0_on) = (r.bool(), r.u8().is_multiple_of(3), r.u8().is_multiple_of(3));
                let outs_on = [r.bool(), r.bool(), r.bool(), r.bool()];
                let (misalign_slot, alias) = (rare(r, 32), rare(r, 32));
                let required_null = layer_null || attrs_null || x_null || tape_null;
                x_null |= too_big(required_null, bad_value || mismatch, overflow, sane);
                let required_null = required_null || x_null;
                let n = KerasLens::new(sane, dims);
                let aliased = alias && outs_on[2] && outs_on[3] && n.state > 0;
                let expected =
                    predicted(required_null, bad_value || mismatch, overflow, (misalign_slot && !tape_null) || aliased);
                let mut x = Buf::new(values(r, n.x, 2.0), canary);
                let mut mask = Buf::new(mask_values(r, n.mask), CANARY_BYTE);
                let mut h0 = Buf::new(values(r, n.state, 1.0), canary);
                let mut c0 = Buf::new(values(r, n.state, 1.0), canary);
                let inputs_before: Vec<Vec<f32>> = [&x, &h0, &c0].iter().map(|b| b.data.clone()).collect();
                let (outs, mut ptrs) = output_bufs([n.y, n.state, n.state, n.state], &outs_on);
                if aliased {
                    ptrs[3] = ptrs[2];
                }
                let mut slot = TapeSlot::new(tape_null, misalign_slot);
                let given = (mask_on.then_some(&mask), h0_on.then_some(&h0), c0_on.then_some(&c0));
                // SAFETY: `layer` is a live handle (or NULL); the buffers hold exactly their documented sizes
                // (plus a canary) when the sizes are sane, otherwise `expected` is a failure validation reports
                // before any access. A misaligned tape slot lies inside `slots`; aliased outputs inside theirs.
                let status = unsafe {
                    keras_run_train(
                        layer,
                        if attrs_null { ptr::null() } else { &a },
                        input_ptrs(if x_null { ptr::null() } else { x.ptr() }, given),
                        ptrs,
                        slot.ptr(),
                    )
                };
                let what = format!(
                    "step {step}: mrnn_keras_lstm_run_train on handle {k} ({a:?}, nulls: layer {layer_null} attrs \
                     {attrs_null} x {x_null} tape {tape_null}, misaligned slot {misalign_slot}, aliased {aliased})"
                );
                // The outputs are mrnn_lstm_keras's with the handle's current weights.
                // SAFETY: the run's valid buffers, and the handle's weights, of its sizes.
                let one_shot = |w: &Weights, o| unsafe { lstm_keras(&a, input_ptrs(x.ptr(), given), w.ptrs(), o) };
                let (outputs, inputs) =
                    ((&outs, &outs_on, &KERAS_OUT_NAMES[..]), (&[&x, &h0, &c0][..], &inputs_before[..]));
                let call = ((k, what.as_str(), "mrnn_lstm_keras"), (status, expected));
                let Some(tape) = session.check_run_train(call.0, call.1, outputs, inputs, &slot, one_shot)? else {
                    continue;
                };
                let steps = mask_on.then_some(&mut mask);
                session.record(k, tape, a, [&mut x, &mut h0, &mut c0], (h0_on, c0_on), steps, (0, CANARY_BYTE));
            }
            4..=6 => {
                // run_backward.
                let tape_null = session.runs.is_empty() || rare(r, 32);
                let Some(run) = (!tape_null).then(|| &session.runs[r.below(session.runs.len())]) else {
                    // SAFETY: NULL tape: rejected before anything else is read.
                    let status =
                        unsafe { keras_run_backward(layer, ptr::null(), [ptr::null(); 4], [ptr::null_mut(); 6]) };
                    check_null_tape(step, "run_backward", status)?;
                    continue;
                };
                let (b, t) = (run.attrs.batch_size as usize, run.attrs.seq_length as usize);
                let sizes = [b * t * iu, iu * 4 * hu, hu * 4 * hu, 4 * hu, b * hu, b * hu];
                let g = GradCase::new(r, [b * t * hu, b * hu, b * hu, b * hu], sizes, b, |_, _| {});
                let foreign = run.owner != k;
                let stale = run.generation != session.generation[run.owner];
                let expected = if layer_null {
                    Some(MRNN_ERR_NULL_POINTER)
                } else if foreign || stale || g.misalign || g.alias {
                    Some(MRNN_ERR_BAD_ARGUMENT)
                } else {
                    None
                };
                let (up, p) = (g.up_ptrs, g.ptrs);
                // SAFETY: `layer` is a live handle (or NULL), `run.tape` a live tape; the upstream and output
                // buffers have the sizes of the tape's run (plus a canary, in which a misaligned d_kernel
                // stays).
                let status = unsafe { keras_run_backward(layer, run.tape.ptr, up, p) };
                let what = format!(
                    "step {step}: mrnn_keras_lstm_run_backward on handle {k} (layer NULL {layer_null}) of a tape of \
                     handle {} generation {} (now {}), {:?}, upstream {:?}, gradients {:?}, misaligned {}, aliased {}",
                    run.owner,
                    run.generation,
                    session.generation[run.owner],
                    run.attrs,
                    g.up_on,
                    g.grads_on,
                    g.misalign,
                    g.alias
                );
                let causes = [(!layer_null && foreign, "another handle"), (!layer_null && !foreign && stale, "stale")];
                if g.check(&what, status, expected, &GRAD_NAMES, &causes)? {
                    continue;
                }
                // Bitwise the one-shot backward on the run's inputs and the weights it was made with.
                let (i, w) = (run.inputs(), session.history[run.weights].ptrs());
                // SAFETY: the run's inputs and the weights have the sizes of the run's attributes; the
                // upstream and outputs those of the call that is checked.
                let one_shot = |o| unsafe { lstm_keras_backward(&run.attrs, i, w, g.up_ptrs, o) };
                let name = "mrnn_lstm_keras_backward";
                check_against_one_shot((&what, name), status, &g.outs, (&g.grads_on, &GRAD_NAMES), one_shot)?;
            }
            7 => {
                // set_weights.
                let w = Weights::new(r, &created);
                let call = |kernel: *const f32, w: &Weights| {
                    // SAFETY: `layer` is a live handle (or NULL); the weights have the handle's sizes (a
                    // misaligned kernel has one more element).
                    unsafe { mrnn_keras_lstm_set_weights(layer, kernel, w.recurrent.ptr(), w.bias_ptr()) }
                };
                let what = |_: &Weights, null: bool, misalign: bool| {
                    format!("mrnn_keras_lstm_set_weights (kernel NULL {null}, misaligned {misalign})")
                };
                fuzz_set_weights(r, &mut session, (step, k, layer_null), w, |w| &w.kernel, call, what)?;
            }
            8 => session.free_one(r),
            _ => session.check_bytes(r, step, |run| run.x.len * 4)?,
        }
    }
    // Tapes may outlive their handles.
    let Session { handles, runs, .. } = session;
    drop(handles);
    drop(runs);
    // SAFETY: NULL is a no-op.
    unsafe { mrnn_tape_free(ptr::null_mut()) };
    Ok(())
}

// ------------------------------------------------------------------------------------------------ ONNX training

/// Names of the ONNX gradient outputs, in argument order.
const ONNX_GRAD_NAMES: [&str; 7] = ["dx", "dw", "dr", "db", "d_initial_h", "d_initial_c", "dp"];

/// The ONNX node of the Rust API for valid attributes `a`, written from the header (`+INFINITY` clip: no
/// clipping).
fn reference_onnx_node(
    a: &MrnnOnnxLstmAttrs,
    w: &[f32],
    r: &[f32],
    b: Option<&[f32]>,
    p: Option<&[f32]>,
) -> Result<OnnxLstm> {
    let mut attrs = expected_onnx_attrs(a)?;
    if a.has_clip == 1 && a.clip == f32::INFINITY {
        attrs = attrs.clip(None);
    }
    OnnxLstm::new(attrs, a.input_size as usize, w, r, b, p)
}

/// One ONNX backward problem's inputs, as the Rust API takes them.
struct OnnxBackwardInputs<'a> {
    t: usize,
    b: usize,
    x: &'a [f32],
    lens: Option<&'a [i32]>,
    h0: Option<&'a [f32]>,
    c0: Option<&'a [f32]>,
    /// dy, dy_h, dy_c.
    up: [Option<&'a [f32]>; 3],
}

/// The Rust API's gradients (`forward_train`, then `backward`) of the outputs `on`, in vectors of `sizes`
/// (the others stay unset).
fn reference_onnx_grads(
    node: &OnnxLstm,
    p: &OnnxBackwardInputs<'_>,
    sizes: [usize; 7],
    on: &[bool; 7],
    threads: usize,
) -> Result<[Vec<f32>; 7]> {
    let mut tape = OnnxTape::new();
    let ws = &mut Workspace::new();
    node.forward_train(p.x, p.t, p.b, p.lens, p.h0, p.c0, OnnxOutputs::default(), &mut tape, threads, ws)?;
    let mut g = sizes.map(|n| vec![f32::from_bits(UNSET_BITS); n]);
    let [dx, dw, dr, db, dh, dc, dp] = &mut g;
    let grads = OnnxGrads {
        dx: on[0].then_some(&mut dx[..]),
        dw: on[1].then_some(&mut dw[..]),
        dr: on[2].then_some(&mut dr[..]),
        db: on[3].then_some(&mut db[..]),
        d_initial_h: on[4].then_some(&mut dh[..]),
        d_initial_c: on[5].then_some(&mut dc[..]),
        dp: on[6].then_some(&mut dp[..]),
    };
    let up = OnnxUpstream { dy: p.up[0], dy_h: p.up[1], dy_c: p.up[2] };
    node.backward(p.x, p.t, p.b, p.lens, p.h0, p.c0, &tape, up, grads, threads)?;
    Ok(g)
}

/// `mrnn_lstm_onnx_backward` from arbitrary attributes, pointers, lengths and outputs (`dp` sometimes
/// without `p`): every status as predicted, nothing written by a failing call, canaries intact, inputs
/// unchanged, and the requested gradients bitwise the Rust API's.
fn fuzz_onnx_backward(r: &mut ByteReader<'_>) -> Check {
    let OneShot { attrs, dims, sane, bad_value, overflow, nulls } = one_shot(r, &ONNX, (48, 32));
    let [attrs_null, mut x_null, w_null, r_null] = nulls;
    let d_n = directions(&attrs);
    let rare = |r: &mut ByteReader<'_>, n: u8| r.u8().is_multiple_of(n);
    let given = OnnxGiven::new(r, true);
    let up_on = [!r.u8().is_multiple_of(4), r.bool(), r.bool()];
    let mut grads_on: [bool; 7] = std::array::from_fn(|_| !r.u8().is_multiple_of(3));
    // dp is mostly asked for with peepholes only; without, it must be refused.
    if !given.p && !rare(r, 8) {
        grads_on[6] = false;
    }
    // 1: dy two bytes off; 2: db two bytes off; 3: sequence_lens two bytes off.
    let misalign = match r.u8() % 40 {
        0 => 1,
        1 => 2,
        2 => 3,
        _ => 0,
    };
    // 1: d_initial_c = d_initial_h; 2: dx = x; 3: d_initial_h = initial_h.
    let alias = match r.u8() % 40 {
        0 => 1,
        1 => 2,
        2 => 3,
        _ => 0,
    };
    let required_null = attrs_null || x_null || w_null || r_null;
    // Huge sizes that validate: never compute them.
    x_null |= too_big(required_null, bad_value, overflow, sane);
    let required_null = required_null || x_null;
    let n = OnnxLens::new(sane, dims, d_n);
    let sizes = [n.x, n.w, n.r, n.b, n.state, n.state, n.p];
    let misaligned = match misalign {
        1 => up_on[0],
        2 => grads_on[3],
        3 => given.lens,
        _ => false,
    };
    let aliased = match alias {
        1 => grads_on[4] && grads_on[5] && n.state > 0,
        2 => grads_on[0] && n.x > 0,
        3 => grads_on[4] && given.h0 && n.state > 0,
        _ => false,
    };
    let dp_without_p = grads_on[6] && !given.p;
    let (mut lens_data, lens_bad) = lengths(r, n.lens, dims[0], sane);
    let lens_bad = given.lens && lens_bad;
    let expected = predicted(required_null, bad_value, overflow, misaligned || aliased || dp_without_p)
        .or_else(|| lens_bad.then_some(MRNN_ERR_BAD_ARGUMENT));
    let only_dp = !required_null && !bad_value && !overflow && !misaligned && !aliased && dp_without_p;

    let canary = f32::from_bits(CANARY_BITS);
    let mut bufs = OnnxBufs::new(r, &n, [0, 0]);
    if misalign == 3 {
        lens_data.push(0);
    }
    let lens = Buf::new(lens_data, CANARY_I32);
    let ups = [n.y + usize::from(misalign == 1), n.state, n.state].map(|n| Buf::new(values(r, n, 1.0), canary));
    // Raw pointers for x and initial_h, from which the aliased outputs are also derived.
    let (x_raw, h0_raw) = (bufs.x.mut_ptr(), bufs.h0.mut_ptr());
    let inputs: Vec<&Buf<f32>> = bufs.floats().into_iter().chain(&ups).collect();
    let inputs_before: Vec<Vec<f32>> = inputs.iter().map(|b| b.data.clone()).collect();
    let lens_before = lens.data.clone();
    let (outs, mut out_ptrs) = output_bufs(sizes, &grads_on);
    if misaligned && misalign == 2 {
        out_ptrs[3] = out_ptrs[3].cast::<u8>().wrapping_add(2).cast::<f32>();
    }
    if aliased && alias == 1 {
        out_ptrs[5] = out_ptrs[4];
    }
    if aliased && alias == 2 {
        out_ptrs[0] = x_raw;
    }
    if aliased && alias == 3 {
        out_ptrs[4] = h0_raw;
    }
    let up_ptrs: [*const f32; 3] = std::array::from_fn(|k| input_ptr(&ups[k], !up_on[k], k == 0 && misalign == 1));
    let x_ptr = if x_null { ptr::null() } else { x_raw.cast_const() };
    let w_ptr = if w_null { ptr::null() } else { bufs.w.ptr() };
    let (i, w) = bufs.ptrs([x_ptr, w_ptr, h0_raw], input_ptr(&lens, !given.lens, misalign == 3), r_null, given);
    // SAFETY: every non-NULL buffer holds exactly its documented size (plus a canary) when the sizes are
    // sane. Otherwise the buffers are one-element dummies and `expected` is a failure that validation
    // reports before any access. Misaligned dy and sequence_lens have one more element; a misaligned db
    // stays inside its canary; outputs aliased to x or initial_h share their raw pointers, and the inputs
    // are compared with their copies afterwards.
    let status = unsafe { lstm_onnx_backward(if attrs_null { ptr::null() } else { &attrs }, i, w, up_ptrs, out_ptrs) };
    let what = format!(
        "mrnn_lstm_onnx_backward({attrs:?}, nulls: attrs {attrs_null} x {x_null} w {w_null} r {r_null}, b {} \
         p {} h0 {} c0 {}, upstream {up_on:?}, gradients {grads_on:?}, misaligned {misalign}, alias \
         {alias}, lens {:?})",
        given.b,
        given.p,
        given.h0,
        given.c0,
        given.lens.then(|| lens.values())
    );
    check_lens(&what, &lens, &lens_before)?;
    if check_call(&what, status, &outs, &ONNX_GRAD_NAMES, &inputs, &inputs_before, expected)? {
        return check_message(&what, only_dp, "no peepholes");
    }
    if !asked(&what, status, &grads_on)? {
        return Ok(());
    }
    let reference = (|| {
        let (w, rr, b, p) = bufs.weights(given);
        let node = reference_onnx_node(&attrs, w, rr, b, p)?;
        let (h0, c0) = bufs.initial(given);
        let p = OnnxBackwardInputs {
            t: dims[0] as usize,
            b: dims[1] as usize,
            x: bufs.x.values(),
            lens: given.lens.then(|| lens.values()),
            h0,
            c0,
            up: std::array::from_fn(|k| up_on[k].then(|| ups[k].values())),
        };
        reference_onnx_grads(&node, &p, sizes, &grads_on, attrs.num_threads as usize)
    })();
    check_same_as_rust(&what, status, reference, &outs, &ONNX_GRAD_NAMES)
}

/// Valid ONNX attributes for a handle (sizes within [`SANE_ONNX`]), otherwise arbitrary.
fn valid_onnx_attrs(r: &mut ByteReader<'_>) -> MrnnOnnxLstmAttrs {
    let direction = r.below(3) as i32;
    let d = if direction == 2 { 2 } else { 1 };
    let mut a = MrnnOnnxLstmAttrs {
        input_size: r.below(SANE_ONNX[2] as usize + 1) as i64,
        hidden_size: 1 + r.below(SANE_ONNX[3] as usize) as i64,
        direction,
        layout: i32::from(r.bool()),
        input_forget: i32::from(r.u8().is_multiple_of(4)),
        has_clip: i32::from(r.u8().is_multiple_of(3)),
        clip: [f32::INFINITY, 1.0, 0.25 + r.unit(3.0).abs()][r.below(3)],
        num_activations: [0, 3 * d][r.below(2)],
        ..MrnnOnnxLstmAttrs::default()
    };
    for k in 0..6 {
        a.activations[k] = [[0, 1, 1][k % 3], r.below(11) as i32][r.below(2)];
        a.activation_alpha[k] = [f32::NAN, r.unit(1.5)][r.below(2)];
        a.activation_beta[k] = [f32::NAN, r.unit(1.5)][r.below(2)];
    }
    a
}

/// An ONNX handle's weights as the caller passes them (`b` and `p` optional).
struct OnnxWeights {
    w: Buf<f32>,
    r: Buf<f32>,
    b: Option<Buf<f32>>,
    p: Option<Buf<f32>>,
}

impl OnnxWeights {
    fn new(r: &mut ByteReader<'_>, a: &MrnnOnnxLstmAttrs) -> Self {
        let (i, h) = (a.input_size as usize, a.hidden_size as usize);
        let d = if a.direction == 2 { 2 } else { 1 };
        let canary = f32::from_bits(CANARY_BITS);
        OnnxWeights {
            w: Buf::new(values(r, d * 4 * h * i, 0.5), canary),
            r: Buf::new(values(r, d * 4 * h * h, 0.5), canary),
            b: r.bool().then(|| Buf::new(values(r, d * 8 * h, 0.5), canary)),
            p: (!r.u8().is_multiple_of(3)).then(|| Buf::new(values(r, d * 3 * h, 0.5), canary)),
        }
    }

    fn b_ptr(&self) -> *const f32 {
        opt_ptr(self.b.as_ref())
    }

    fn p_ptr(&self) -> *const f32 {
        opt_ptr(self.p.as_ref())
    }

    /// `W`, `R`, `B`, `P`.
    fn ptrs(&self) -> [*const f32; 4] {
        [self.w.ptr(), self.r.ptr(), self.b_ptr(), self.p_ptr()]
    }
}

/// A Keras handle and a tape of one of its runs, to give to the ONNX functions.
fn keras_handle_and_tape(
    r: &mut ByteReader<'_>,
) -> std::result::Result<(Owned<MrnnKerasLstm>, Owned<MrnnTape>), String> {
    let a = MrnnKerasLstmAttrs { batch_size: 1, seq_length: 2, num_threads: 1, ..valid_keras_attrs(r) };
    let w = Weights::new(r, &a);
    let mut out = ptr::null_mut();
    // SAFETY: the weights hold exactly the sizes of the (valid) attributes; `out` is a pointer slot.
    let status = unsafe { mrnn_keras_lstm_new(&a, w.kernel.ptr(), w.recurrent.ptr(), w.bias_ptr(), &mut out) };
    if status != MRNN_OK || out.is_null() {
        return Err(format!("mrnn_keras_lstm_new({a:?}): status {status}: {}", last_error_message()));
    }
    let layer = Owned { ptr: out, free: mrnn_keras_lstm_free };
    let x = values(r, 2 * a.input_size as usize, 1.0);
    let mut tape = ptr::null_mut();
    // SAFETY: a live handle, x of B*T*I floats, a pointer slot.
    let status = unsafe {
        keras_run_train(
            layer.ptr,
            &a,
            (x.as_ptr(), ptr::null(), ptr::null(), ptr::null()),
            [ptr::null_mut(); 4],
            &mut tape,
        )
    };
    if status != MRNN_OK || tape.is_null() {
        return Err(format!("mrnn_keras_lstm_run_train({a:?}): status {status}: {}", last_error_message()));
    }
    Ok((layer, Owned { ptr: tape, free: mrnn_tape_free }))
}

/// An ONNX tape under test and copies of the inputs of the run that made it.
type OnnxTrainRun = TrainRun<MrnnOnnxLstmAttrs, i32>;

/// Two ONNX handles of the same attributes driven through a random sequence of `run_train`,
/// `run_backward` (with their own tapes, stale ones, the other handle's and a Keras handle's),
/// `set_weights` (sometimes dropping or restoring the peepholes), `mrnn_tape_bytes` and `mrnn_tape_free`,
/// and their tapes given to a Keras handle: every status as predicted (with "another handle" / "another
/// kind" / "stale" / "no peepholes" in the message of a refusal), nothing written by a failing call, `*tape`
/// untouched by a failing `run_train`, every run's outputs bitwise `mrnn_lstm_onnx`'s and every
/// `run_backward` bitwise `mrnn_lstm_onnx_backward`'s on the run's inputs and the weights it was made with.
/// The callers' input buffers are overwritten right after `run_train` returns, and the handles are freed
/// before the tapes.
fn fuzz_onnx_train(r: &mut ByteReader<'_>) -> Check {
    let created = valid_onnx_attrs(r);
    let (is, hs) = (created.input_size, created.hidden_size);
    let d_n = directions(&created);
    let (iu, hu, du) = (is as usize, hs as usize, d_n as usize);
    let canary = f32::from_bits(CANARY_BITS);
    let rare = |r: &mut ByteReader<'_>, n: u8| r.u8().is_multiple_of(n);
    let new = |w: &OnnxWeights, out: *mut *mut MrnnOnnxLstm| {
        // SAFETY: the weights hold exactly the sizes of the (valid) attributes; `out` is a pointer slot.
        unsafe { mrnn_onnx_lstm_new(&created, w.w.ptr(), w.r.ptr(), w.b_ptr(), w.p_ptr(), out) }
    };
    let what = format!("mrnn_onnx_lstm_new({created:?})");
    let mut session: Session<MrnnOnnxLstm, OnnxWeights, OnnxTrainRun> =
        Session::new(OnnxWeights::new(r, &created), new, mrnn_onnx_lstm_free, &what)?;
    let (keras, keras_tape) = keras_handle_and_tape(r)?;

    for step in 0..2 + r.below(10) {
        let k = usize::from(rare(r, 4));
        let layer_null = rare(r, 48);
        let layer = if layer_null { ptr::null_mut() } else { session.handles[k].ptr };
        match r.u8() % 11 {
            0..=3 => {
                // run_train.
                let change = |r: &mut ByteReader<'_>, a: &mut MrnnOnnxLstmAttrs| match r.u8() % 24 {
                    0 => a.hidden_size += 1,
                    1 => a.layout ^= 1,
                    2 => a.direction = enum_value(r, 3),
                    _ => {}
                };
                let RunAttrs { a, dims, bad_value, mismatch, overflow, sane } = run_attrs(r, &ONNX, &created, change);
                let (attrs_null, mut x_null, tape_null) = (rare(r, 48), rare(r, 32), rare(r, 32));
                let (lens_on, h0_on, c0_on) =
                    (!r.u8().is_multiple_of(4), r.u8().is_multiple_of(3), r.u8().is_multiple_of(3));
                let outs_on = [r.bool(), r.bool(), r.bool()];
                let (misalign_slot, alias) = (rare(r, 32), rare(r, 32));
                let required_null = layer_null || attrs_null || x_null || tape_null;
                x_null |= too_big(required_null, bad_value || mismatch, overflow, sane);
                let required_null = required_null || x_null;
                let n = OnnxLens::new(sane, dims, d_n);
                let aliased = alias && outs_on[1] && outs_on[2] && n.state > 0;
                let (lens_values, lens_bad) = lengths(r, n.lens, dims[0], sane);
                let expected =
                    predicted(required_null, bad_value || mismatch, overflow, (misalign_slot && !tape_null) || aliased)
                        .or_else(|| (lens_on && lens_bad).then_some(MRNN_ERR_BAD_ARGUMENT));
                let mut x = Buf::new(values(r, n.x, 2.0), canary);
                let mut lens = Buf::new(lens_values, CANARY_I32);
                let mut h0 = Buf::new(values(r, n.state, 1.0), canary);
                let mut c0 = Buf::new(values(r, n.state, 1.0), canary);
                let inputs_before: Vec<Vec<f32>> = [&x, &h0, &c0].iter().map(|b| b.data.clone()).collect();
                let lens_before = lens.data.clone();
                let (outs, mut ptrs) = output_bufs([n.y, n.state, n.state], &outs_on);
                if aliased {
                    ptrs[2] = ptrs[1];
                }
                let mut slot = TapeSlot::new(tape_null, misalign_slot);
                let given = (lens_on.then_some(&lens), h0_on.then_some(&h0), c0_on.then_some(&c0));
                // SAFETY: `layer` is a live handle (or NULL); the buffers hold exactly their documented sizes
                // (plus a canary) when the sizes are sane, otherwise `expected` is a failure validation reports
                // before any access. A misaligned tape slot lies inside `slots`; aliased outputs inside theirs.
                let status = unsafe {
                    onnx_run_train(
                        layer,
                        if attrs_null { ptr::null() } else { &a },
                        input_ptrs(if x_null { ptr::null() } else { x.ptr() }, given),
                        ptrs,
                        slot.ptr(),
                    )
                };
                let what = format!(
                    "step {step}: mrnn_onnx_lstm_run_train on handle {k} ({a:?}, handle {created:?}, nulls: layer \
                     {layer_null} attrs {attrs_null} x {x_null} tape {tape_null}, misaligned slot {misalign_slot}, \
                     aliased {aliased}, lens {:?})",
                    lens_on.then(|| lens.values())
                );
                check_lens(&what, &lens, &lens_before)?;
                // The outputs are mrnn_lstm_onnx's with the handle's current weights.
                // SAFETY: the run's valid buffers, and the handle's weights, of its sizes.
                let one_shot = |w: &OnnxWeights, o| unsafe { lstm_onnx(&a, input_ptrs(x.ptr(), given), w.ptrs(), o) };
                let (outputs, inputs) =
                    ((&outs, &outs_on, &ONNX_OUT_NAMES[..]), (&[&x, &h0, &c0][..], &inputs_before[..]));
                let call = ((k, what.as_str(), "mrnn_lstm_onnx"), (status, expected));
                let Some(tape) = session.check_run_train(call.0, call.1, outputs, inputs, &slot, one_shot)? else {
                    continue;
                };
                let steps = lens_on.then_some(&mut lens);
                session.record(k, tape, a, [&mut x, &mut h0, &mut c0], (h0_on, c0_on), steps, (-1, CANARY_I32));
            }
            4..=6 => {
                // run_backward.
                let tape_null = session.runs.is_empty() || rare(r, 32);
                let Some(run) = (!tape_null).then(|| &session.runs[r.below(session.runs.len())]) else {
                    // SAFETY: NULL tape: rejected before anything else is read.
                    let status =
                        unsafe { onnx_run_backward(layer, ptr::null(), [ptr::null(); 3], [ptr::null_mut(); 7]) };
                    check_null_tape(step, "onnx run_backward", status)?;
                    continue;
                };
                let (t, b) = (run.attrs.seq_length as usize, run.attrs.batch_size as usize);
                let (state, w_sizes) = (du * b * hu, [du * 4 * hu * iu, du * 4 * hu * hu, du * 8 * hu]);
                let sizes = [t * b * iu, w_sizes[0], w_sizes[1], w_sizes[2], state, state, du * 3 * hu];
                // The peepholes of the weights the backward would compute with (when the tape is not refused).
                let peepholes = session.history[session.current[k]].p.is_some();
                let g = GradCase::new(r, [t * state, state, state], sizes, b, |r, grads_on: &mut [bool; 7]| {
                    if !peepholes && !r.u8().is_multiple_of(6) {
                        grads_on[6] = false;
                    }
                });
                let foreign = run.owner != k;
                let stale = run.generation != session.generation[run.owner];
                let dp_without = g.grads_on[6] && !peepholes;
                let expected = if layer_null {
                    Some(MRNN_ERR_NULL_POINTER)
                } else if foreign || stale || g.misalign || g.alias || dp_without {
                    Some(MRNN_ERR_BAD_ARGUMENT)
                } else {
                    None
                };
                let (up, p) = (g.up_ptrs, g.ptrs);
                // SAFETY: `layer` is a live handle (or NULL), `run.tape` a live tape; the upstream and output
                // buffers have the sizes of the tape's run (plus a canary, in which a misaligned dw stays).
                let status = unsafe { onnx_run_backward(layer, run.tape.ptr, up, p) };
                let what = format!(
                    "step {step}: mrnn_onnx_lstm_run_backward on handle {k} (layer NULL {layer_null}) of a tape of \
                     handle {} generation {} (now {}), {:?}, upstream {:?}, gradients {:?}, misaligned {}, aliased \
                     {}, peepholes {peepholes}",
                    run.owner,
                    run.generation,
                    session.generation[run.owner],
                    run.attrs,
                    g.up_on,
                    g.grads_on,
                    g.misalign,
                    g.alias
                );
                let refused = !layer_null && !foreign && !stale && !g.misalign && !g.alias;
                let causes = [
                    (!layer_null && foreign, "another handle"),
                    (!layer_null && !foreign && stale, "stale"),
                    (refused, "no peepholes"),
                ];
                if g.check(&what, status, expected, &ONNX_GRAD_NAMES, &causes)? {
                    continue;
                }
                // Bitwise the one-shot backward on the run's inputs and the weights it was made with.
                let (i, w) = (run.inputs(), session.history[run.weights].ptrs());
                // SAFETY: the run's inputs and the weights have the sizes of the run's attributes; the
                // upstream and outputs those of the call that is checked.
                let one_shot = |o| unsafe { lstm_onnx_backward(&run.attrs, i, w, g.up_ptrs, o) };
                let name = "mrnn_lstm_onnx_backward";
                check_against_one_shot((&what, name), status, &g.outs, (&g.grads_on, &ONNX_GRAD_NAMES), one_shot)?;
            }
            7 => {
                // set_weights.
                let w = OnnxWeights::new(r, &created);
                let call = |w_ptr: *const f32, w: &OnnxWeights| {
                    // SAFETY: `layer` is a live handle (or NULL); the weights have the handle's sizes (a
                    // misaligned w has one more element).
                    unsafe { mrnn_onnx_lstm_set_weights(layer, w_ptr, w.r.ptr(), w.b_ptr(), w.p_ptr()) }
                };
                let what = |w: &OnnxWeights, null: bool, misalign: bool| {
                    format!(
                        "mrnn_onnx_lstm_set_weights (w NULL {null}, misaligned {misalign}, b {} p {})",
                        w.b.is_some(),
                        w.p.is_some()
                    )
                };
                fuzz_set_weights(r, &mut session, (step, k, layer_null), w, |w| &w.w, call, what)?;
            }
            8 => session.free_one(r),
            9 => session.check_bytes(r, step, |run| (run.x.len + run.steps.as_ref().map_or(0, |l| l.len)) * 4)?,
            _ => {
                // A tape of the other kind: refused before any other argument is looked at.
                let onnx_tape =
                    (!session.runs.is_empty() && r.bool()).then(|| &session.runs[r.below(session.runs.len())]);
                // SAFETY: live handles and tapes; every upstream and output NULL.
                let (status, what) = unsafe {
                    match onnx_tape {
                        Some(run) => (
                            keras_run_backward(keras.ptr, run.tape.ptr, [ptr::null(); 4], [ptr::null_mut(); 6]),
                            "an ONNX tape on a Keras handle",
                        ),
                        None => (
                            onnx_run_backward(
                                session.handles[k].ptr,
                                keras_tape.ptr,
                                [ptr::null(); 3],
                                [ptr::null_mut(); 7],
                            ),
                            "a Keras tape on an ONNX handle",
                        ),
                    }
                };
                check_status(what, status)?;
                let message = last_error_message();
                if status != MRNN_ERR_BAD_ARGUMENT || !message.contains("another kind") {
                    return Err(format!("step {step}: {what}: status {status}: {message}"));
                }
            }
        }
    }
    // Tapes may outlive their handles.
    let Session { handles, runs, .. } = session;
    drop(handles);
    drop(keras);
    drop(runs);
    drop(keras_tape);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_prediction_matches_checked_product() {
        let cases: [&[i64]; 6] =
            [&[1 << 31, 1 << 30], &[(1 << 61) - 1], &[1 << 61], &[i64::MAX, i64::MAX, 0], &[0, 5], &[1 << 40, 1 << 20]];
        for dims in cases {
            let as_usize: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
            assert_eq!(overflows(dims), checked_product(&as_usize, "t").is_err(), "{dims:?}");
        }
    }

    #[test]
    fn a_few_fixed_inputs() {
        for data in [&[][..], &[0xff; 64][..], &[0x01, 0x02, 0x03, 0x04, 0x05][..]] {
            if let Err(e) = fuzz_capi(data) {
                panic!("{data:?}: {e}");
            }
        }
    }
}

// ------------------------------------------------------------------------------ GRU and RNN (section 4)

/// The four kinds of C_ABI.md section 4, with their attributes.
#[derive(Clone, Copy, Debug)]
enum HOnly {
    OnnxGru(MrnnOnnxGruAttrs),
    OnnxRnn(MrnnOnnxRnnAttrs),
    KerasGru(MrnnKerasGruAttrs),
    KerasRnn(MrnnKerasRnnAttrs),
}

/// A handle of one of the four kinds (NULL: none).
#[derive(Clone, Copy)]
enum HHandle {
    OnnxGru(*mut MrnnOnnxGru),
    OnnxRnn(*mut MrnnOnnxRnn),
    KerasGru(*mut MrnnKerasGru),
    KerasRnn(*mut MrnnKerasRnn),
}

impl HHandle {
    fn is_null(self) -> bool {
        match self {
            HHandle::OnnxGru(p) => p.is_null(),
            HHandle::OnnxRnn(p) => p.is_null(),
            HHandle::KerasGru(p) => p.is_null(),
            HHandle::KerasRnn(p) => p.is_null(),
        }
    }

    /// Frees the handle (NULL: a no-op).
    ///
    /// # Safety
    /// A live handle of the C ABI, or NULL; freed once.
    unsafe fn free(self) {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            match self {
                HHandle::OnnxGru(p) => mrnn_onnx_gru_free(p),
                HHandle::OnnxRnn(p) => mrnn_onnx_rnn_free(p),
                HHandle::KerasGru(p) => mrnn_keras_gru_free(p),
                HHandle::KerasRnn(p) => mrnn_keras_rnn_free(p),
            }
        }
    }
}

/// The caller buffers of a GRU / RNN call: `x`, the lengths (ONNX) or the mask (Keras), `initial_h`, the
/// three weights.
struct HBufs {
    x: Buf<f32>,
    lens: Buf<i32>,
    mask: Buf<u8>,
    h0: Buf<f32>,
    w: [Buf<f32>; 3],
}

impl HOnly {
    fn name(&self) -> &'static str {
        match self {
            HOnly::OnnxGru(_) => "ONNX GRU",
            HOnly::OnnxRnn(_) => "ONNX RNN",
            HOnly::KerasGru(_) => "Keras GRU",
            HOnly::KerasRnn(_) => "Keras SimpleRNN",
        }
    }

    fn onnx(&self) -> bool {
        matches!(self, HOnly::OnnxGru(_) | HOnly::OnnxRnn(_))
    }

    /// Gate blocks `G`: 3 for the GRU, 1 for the RNN.
    fn gates(&self) -> i64 {
        if matches!(self, HOnly::OnnxGru(_) | HOnly::KerasGru(_)) {
            3
        } else {
            1
        }
    }

    /// ONNX `T, B, I, H`; Keras `B, T, I, H`.
    fn dims(&self) -> [i64; 4] {
        match self {
            HOnly::OnnxGru(a) => [a.seq_length, a.batch_size, a.input_size, a.hidden_size],
            HOnly::OnnxRnn(a) => [a.seq_length, a.batch_size, a.input_size, a.hidden_size],
            HOnly::KerasGru(a) => [a.batch_size, a.seq_length, a.input_size, a.hidden_size],
            HOnly::KerasRnn(a) => [a.batch_size, a.seq_length, a.input_size, a.hidden_size],
        }
    }

    /// `D`: 2 for a bidirectional ONNX operator, else 1.
    fn d(&self) -> i64 {
        match self {
            HOnly::OnnxGru(a) if a.direction == 2 => 2,
            HOnly::OnnxRnn(a) if a.direction == 2 => 2,
            _ => 1,
        }
    }

    /// The bias's rows times `G` (ONNX: `2G` per direction; Keras GRU with `reset_after`: `2 x 3`).
    fn bias_blocks(&self) -> i64 {
        match self {
            HOnly::OnnxGru(_) | HOnly::OnnxRnn(_) => 2 * self.gates(),
            HOnly::KerasGru(a) if a.reset_after == 1 => 6,
            _ => self.gates(),
        }
    }

    /// The tensor dimensions in the order the C ABI checks them for overflow: `x`, the steps (`[B]` or
    /// `[B,T]`), the weights, the states, the sequence output (`B = T = 0`: the weights alone).
    fn tensors(&self, run: bool) -> Vec<Vec<i64>> {
        let (g, d) = (self.gates(), self.d());
        let [a, b, i, h] = self.dims();
        let (a, b) = if run { (a, b) } else { (0, 0) };
        if self.onnx() {
            let (t, bs) = (a, b);
            vec![
                vec![t, bs, i],
                vec![d, g, h, i],
                vec![d, g, h, h],
                vec![d, 2 * g, h],
                vec![d, bs, h],
                vec![t, d, bs, h],
            ]
        } else {
            let (bs, t) = (a, b);
            let rows = self.bias_blocks() / g;
            // `G x H` as factors (the library checks `[G,H]` first, so `[I,G,H]` overflows exactly when
            // its `[I,G*H]` does): never a product computed here, which could overflow `i64`.
            vec![
                vec![g, h],
                vec![rows, g, h],
                vec![bs, t, i],
                vec![bs, t],
                vec![i, g, h],
                vec![h, g, h],
                vec![bs, h],
                vec![bs, t, h],
            ]
        }
    }

    /// Whether validation must reject a value (step 2), written from the header.
    fn value_error(&self) -> bool {
        let sizes = self.dims();
        let bad_size = sizes.iter().any(|&v| v < 0) || sizes[3] == 0;
        let flag = |v: i32| !(0..=1).contains(&v);
        let code = |c: i32| !(0..=10).contains(&c);
        let onnx = |direction: i32, layout: i32, has_clip: i32, clip: f32, n: i32, acts: &[i32], per: i32| {
            let d = if direction == 2 { 2 } else { 1 };
            !(0..=2).contains(&direction)
                || flag(layout)
                || flag(has_clip)
                || (has_clip == 1 && (clip.is_nan() || clip <= 0.0))
                || !(n == 0 || n == per * d)
                || acts[..usize::try_from(n).unwrap_or(0).min(acts.len())].iter().any(|&c| code(c))
        };
        bad_size
            || match self {
                HOnly::OnnxGru(a) => {
                    onnx(a.direction, a.layout, a.has_clip, a.clip, a.num_activations, &a.activations, 2)
                        || flag(a.linear_before_reset)
                        || a.num_threads < 0
                }
                HOnly::OnnxRnn(a) => {
                    onnx(a.direction, a.layout, a.has_clip, a.clip, a.num_activations, &a.activations, 1)
                        || a.num_threads < 0
                }
                HOnly::KerasGru(a) => {
                    flag(a.go_backwards)
                        || flag(a.zero_output_for_mask)
                        || code(a.activation)
                        || code(a.recurrent_activation)
                        || flag(a.reset_after)
                        || a.num_threads < 0
                }
                HOnly::KerasRnn(a) => {
                    flag(a.go_backwards) || flag(a.zero_output_for_mask) || code(a.activation) || a.num_threads < 0
                }
            }
    }

    /// The Rust API's outputs on these inputs (`Y`, `Y_h`; or `y`, `last_output`, `h_n`), the layer built
    /// from the header's description of the attributes.
    fn rust(
        &self,
        x: &[f32],
        w: [&[f32]; 3],
        bias: Option<&[f32]>,
        steps: (Option<&[i32]>, Option<&[u8]>),
        h0: Option<&[f32]>,
    ) -> Result<Vec<Vec<f32>>> {
        let [_, _, i, h] = self.dims().map(|v| v as usize);
        let onnx_act = |n: i32, acts: &[i32], alpha: &[f32], beta: &[f32]| {
            (0..n as usize).map(|k| Activation::from_code(acts[k], alpha[k], beta[k])).collect::<Result<Vec<_>>>()
        };
        let direction = |c: i32| [Direction::Forward, Direction::Reverse, Direction::Bidirectional][c as usize];
        let layout = |c: i32| if c == 1 { Layout::BatchMajor } else { Layout::SeqMajor };
        let clip = |on: i32, c: f32| (on == 1 && c != f32::INFINITY).then_some(c);
        match self {
            HOnly::OnnxGru(a) => {
                let attrs = crate::onnx::OnnxGruAttrs::new(h, direction(a.direction))
                    .layout(layout(a.layout))
                    .clip(clip(a.has_clip, a.clip))
                    .linear_before_reset(a.linear_before_reset == 1)
                    .activations(onnx_act(a.num_activations, &a.activations, &a.activation_alpha, &a.activation_beta)?);
                let node = crate::onnx::OnnxGru::new(attrs, i, w[0], w[1], bias)?;
                let (t, b) = (a.seq_length as usize, a.batch_size as usize);
                let (res, _) = node.forward_all(x, t, b, steps.0, h0, a.num_threads as usize)?;
                Ok(vec![res.y, res.y_h])
            }
            HOnly::OnnxRnn(a) => {
                let attrs = crate::onnx::OnnxRnnAttrs::new(h, direction(a.direction))
                    .layout(layout(a.layout))
                    .clip(clip(a.has_clip, a.clip))
                    .activations(onnx_act(a.num_activations, &a.activations, &a.activation_alpha, &a.activation_beta)?);
                let node = crate::onnx::OnnxRnn::new(attrs, i, w[0], w[1], bias)?;
                let (t, b) = (a.seq_length as usize, a.batch_size as usize);
                let (res, _) = node.forward_all(x, t, b, steps.0, h0, a.num_threads as usize)?;
                Ok(vec![res.y, res.y_h])
            }
            HOnly::KerasGru(a) => {
                let (b, t) = (a.batch_size as usize, a.seq_length as usize);
                let view = steps.1.map_or_else(|| Ok(SeqView::full(b, t)), |m| SeqView::from_mask_bytes(m, b, t))?;
                let or = |v: f32, d: f32| if v.is_nan() { d } else { v };
                let recurrent = match a.recurrent_activation {
                    7 => Activation::HardSigmoid { alpha: or(a.recurrent_alpha, 0.2), beta: or(a.recurrent_beta, 0.5) },
                    c => keras_reference_activation(c)?,
                };
                let options = crate::keras::KerasGruOptions::default()
                    .activation(keras_reference_activation(a.activation)?)
                    .recurrent_activation(recurrent)
                    .reset_after(a.reset_after == 1)
                    .go_backwards(a.go_backwards == 1)
                    .zero_output_for_mask(a.zero_output_for_mask == 1);
                let weights = crate::GruWeights::from_keras(i, h, w[0], w[1], bias, a.reset_after == 1)?;
                let (res, _) =
                    crate::KerasGru::new(weights, options)?.forward_all(x, &view, h0, a.num_threads as usize)?;
                Ok(vec![res.y, res.last_output, res.h_n])
            }
            HOnly::KerasRnn(a) => {
                let (b, t) = (a.batch_size as usize, a.seq_length as usize);
                let view = steps.1.map_or_else(|| Ok(SeqView::full(b, t)), |m| SeqView::from_mask_bytes(m, b, t))?;
                let options = crate::keras::KerasRnnOptions::default()
                    .activation(keras_reference_activation(a.activation)?)
                    .go_backwards(a.go_backwards == 1)
                    .zero_output_for_mask(a.zero_output_for_mask == 1);
                let weights = crate::RnnWeights::from_keras(i, h, w[0], w[1], bias)?;
                let (res, _) =
                    crate::KerasSimpleRnn::new(weights, options)?.forward_all(x, &view, h0, a.num_threads as usize)?;
                Ok(vec![res.y, res.last_output, res.h_n])
            }
        }
    }

    /// The one-shot call.
    ///
    /// # Safety
    /// As the function called: every non-NULL pointer valid for its documented size.
    unsafe fn one_shot(&self, x: In, steps: (*const i32, *const u8), w: [In; 4], h0: In, o: [Out; 3]) -> i32 {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            match self {
                HOnly::OnnxGru(a) => mrnn_gru_onnx(a, x, w[0], w[1], w[2], steps.0, h0, o[0], o[1]),
                HOnly::OnnxRnn(a) => mrnn_rnn_onnx(a, x, w[0], w[1], w[2], steps.0, h0, o[0], o[1]),
                HOnly::KerasGru(a) => mrnn_gru_keras(a, x, steps.1, w[0], w[1], w[2], h0, o[0], o[1], o[2]),
                HOnly::KerasRnn(a) => mrnn_rnn_keras(a, x, steps.1, w[0], w[1], w[2], h0, o[0], o[1], o[2]),
            }
        }
    }

    /// `_new` into `out` (whose kind is this one's).
    ///
    /// # Safety
    /// As the function called.
    unsafe fn new_handle(&self, w: [In; 3], out: &mut HHandle) -> i32 {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            match (self, out) {
                (HOnly::OnnxGru(a), HHandle::OnnxGru(p)) => mrnn_onnx_gru_new(a, w[0], w[1], w[2], p),
                (HOnly::OnnxRnn(a), HHandle::OnnxRnn(p)) => mrnn_onnx_rnn_new(a, w[0], w[1], w[2], p),
                (HOnly::KerasGru(a), HHandle::KerasGru(p)) => mrnn_keras_gru_new(a, w[0], w[1], w[2], p),
                (HOnly::KerasRnn(a), HHandle::KerasRnn(p)) => mrnn_keras_rnn_new(a, w[0], w[1], w[2], p),
                _ => MRNN_ERR_INTERNAL,
            }
        }
    }

    /// `_run` of `layer` (of this kind) with these attributes.
    ///
    /// # Safety
    /// As the function called; `layer` live.
    unsafe fn run(&self, layer: HHandle, x: In, steps: (*const i32, *const u8), h0: In, o: [Out; 3]) -> i32 {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            match (self, layer) {
                (HOnly::OnnxGru(a), HHandle::OnnxGru(l)) => mrnn_onnx_gru_run(l, a, x, steps.0, h0, o[0], o[1]),
                (HOnly::OnnxRnn(a), HHandle::OnnxRnn(l)) => mrnn_onnx_rnn_run(l, a, x, steps.0, h0, o[0], o[1]),
                (HOnly::KerasGru(a), HHandle::KerasGru(l)) => {
                    mrnn_keras_gru_run(l, a, x, steps.1, h0, o[0], o[1], o[2])
                }
                (HOnly::KerasRnn(a), HHandle::KerasRnn(l)) => {
                    mrnn_keras_rnn_run(l, a, x, steps.1, h0, o[0], o[1], o[2])
                }
                _ => MRNN_ERR_INTERNAL,
            }
        }
    }

    /// The one-shot backward (with NULL attributes when `null_attrs`): `w` kernel / W, recurrent / R, bias; `u` the upstream gradients (ONNX: dy,
    /// dy_h; Keras: dy, d_last_output, d_h_n); `g` dx, dw, dr, db, d_initial_h.
    ///
    /// # Safety
    /// As the function called: every non-NULL pointer valid for its documented size.
    #[allow(clippy::too_many_arguments)]
    unsafe fn backward(
        &self,
        null_attrs: bool,
        x: In,
        steps: (*const i32, *const u8),
        w: [In; 3],
        h0: In,
        u: [In; 3],
        g: [Out; 5],
    ) -> i32 {
        let (s, m) = steps;
        // SAFETY: forwarded from this function's contract.
        unsafe {
            match self {
                HOnly::OnnxGru(a) => {
                    let a = attrs_or_null(a, null_attrs);
                    mrnn_gru_onnx_backward(a, x, w[0], w[1], w[2], s, h0, u[0], u[1], g[0], g[1], g[2], g[3], g[4])
                }
                HOnly::OnnxRnn(a) => {
                    let a = attrs_or_null(a, null_attrs);
                    mrnn_rnn_onnx_backward(a, x, w[0], w[1], w[2], s, h0, u[0], u[1], g[0], g[1], g[2], g[3], g[4])
                }
                HOnly::KerasGru(a) => {
                    let a = attrs_or_null(a, null_attrs);
                    mrnn_gru_keras_backward(
                        a, x, m, w[0], w[1], w[2], h0, u[0], u[1], u[2], g[0], g[1], g[2], g[3], g[4],
                    )
                }
                HOnly::KerasRnn(a) => {
                    let a = attrs_or_null(a, null_attrs);
                    mrnn_rnn_keras_backward(
                        a, x, m, w[0], w[1], w[2], h0, u[0], u[1], u[2], g[0], g[1], g[2], g[3], g[4],
                    )
                }
            }
        }
    }

    /// `_run_train` of `layer` (of this kind) with these attributes.
    ///
    /// # Safety
    /// As the function called; `layer` live.
    unsafe fn run_train(
        &self,
        layer: HHandle,
        x: In,
        steps: (*const i32, *const u8),
        h0: In,
        o: [Out; 3],
        t: TapeOut,
    ) -> i32 {
        let (s, m) = steps;
        // SAFETY: forwarded from this function's contract.
        unsafe {
            match (self, layer) {
                (HOnly::OnnxGru(a), HHandle::OnnxGru(l)) => mrnn_onnx_gru_run_train(l, a, x, s, h0, o[0], o[1], t),
                (HOnly::OnnxRnn(a), HHandle::OnnxRnn(l)) => mrnn_onnx_rnn_run_train(l, a, x, s, h0, o[0], o[1], t),
                (HOnly::KerasGru(a), HHandle::KerasGru(l)) => {
                    mrnn_keras_gru_run_train(l, a, x, m, h0, o[0], o[1], o[2], t)
                }
                (HOnly::KerasRnn(a), HHandle::KerasRnn(l)) => {
                    mrnn_keras_rnn_run_train(l, a, x, m, h0, o[0], o[1], o[2], t)
                }
                _ => MRNN_ERR_INTERNAL,
            }
        }
    }

    /// `_run_backward` of `layer` with `tape`; arguments as [`backward`](Self::backward).
    ///
    /// # Safety
    /// As the function called; `layer` and `tape` live (or NULL).
    unsafe fn run_backward(layer: HHandle, tape: *const MrnnTape, u: [In; 3], g: [Out; 5]) -> i32 {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            match layer {
                HHandle::OnnxGru(l) => mrnn_onnx_gru_run_backward(l, tape, u[0], u[1], g[0], g[1], g[2], g[3], g[4]),
                HHandle::OnnxRnn(l) => mrnn_onnx_rnn_run_backward(l, tape, u[0], u[1], g[0], g[1], g[2], g[3], g[4]),
                HHandle::KerasGru(l) => {
                    mrnn_keras_gru_run_backward(l, tape, u[0], u[1], u[2], g[0], g[1], g[2], g[3], g[4])
                }
                HHandle::KerasRnn(l) => {
                    mrnn_keras_rnn_run_backward(l, tape, u[0], u[1], u[2], g[0], g[1], g[2], g[3], g[4])
                }
            }
        }
    }

    /// `_set_weights` of `layer`.
    ///
    /// # Safety
    /// As the function called; `layer` live.
    unsafe fn set_weights(layer: HHandle, w: [In; 3]) -> i32 {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            match layer {
                HHandle::OnnxGru(l) => mrnn_onnx_gru_set_weights(l, w[0], w[1], w[2]),
                HHandle::OnnxRnn(l) => mrnn_onnx_rnn_set_weights(l, w[0], w[1], w[2]),
                HHandle::KerasGru(l) => mrnn_keras_gru_set_weights(l, w[0], w[1], w[2]),
                HHandle::KerasRnn(l) => mrnn_keras_rnn_set_weights(l, w[0], w[1], w[2]),
            }
        }
    }

    /// A NULL handle of this kind.
    fn null_handle(&self) -> HHandle {
        match self {
            HOnly::OnnxGru(_) => HHandle::OnnxGru(ptr::null_mut()),
            HOnly::OnnxRnn(_) => HHandle::OnnxRnn(ptr::null_mut()),
            HOnly::KerasGru(_) => HHandle::KerasGru(ptr::null_mut()),
            HOnly::KerasRnn(_) => HHandle::KerasRnn(ptr::null_mut()),
        }
    }

    /// The same attributes with one field fixed at creation changed (named in the message), or with only
    /// per-run fields changed (`None`).
    fn mutated(&self, r: &mut ByteReader<'_>) -> (Self, Option<&'static str>) {
        let mut m = *self;
        let field = match (&mut m, r.below(3)) {
            (HOnly::OnnxGru(a), 0) => {
                a.linear_before_reset = 1 - a.linear_before_reset;
                "attrs.linear_before_reset "
            }
            (HOnly::OnnxRnn(a), 0) => {
                a.layout = 1 - a.layout;
                "attrs.layout "
            }
            (HOnly::KerasGru(a), 0) => {
                a.reset_after = 1 - a.reset_after;
                "attrs.reset_after "
            }
            (HOnly::KerasRnn(a), 0) => {
                a.go_backwards = 1 - a.go_backwards;
                "attrs.go_backwards "
            }
            (HOnly::OnnxGru(a), 1) => {
                a.input_size += 1;
                "attrs.input_size "
            }
            (HOnly::OnnxRnn(a), 1) => {
                a.input_size += 1;
                "attrs.input_size "
            }
            (HOnly::KerasGru(a), 1) => {
                a.input_size += 1;
                "attrs.input_size "
            }
            (HOnly::KerasRnn(a), 1) => {
                a.input_size += 1;
                "attrs.input_size "
            }
            _ => return (m, None),
        };
        (m, Some(field))
    }
}

/// Attributes of one of the four kinds from fuzz bytes, built from the LSTM's generators (whose values,
/// sane or wild, carry over field for field); returns them with whether every size is sane.
fn h_only_attrs(r: &mut ByteReader<'_>) -> (HOnly, bool) {
    let kind = r.below(4);
    if kind < 2 {
        let (l, sane, _) = onnx_attrs(r);
        // The LSTM's 3 or 6 activations become 2 or 4 (GRU), 1 or 2 (RNN); other counts stay.
        let per = if kind == 0 { 2 } else { 1 };
        let n = match l.num_activations {
            3 => per,
            6 => 2 * per,
            n => n,
        };
        let attrs = if kind == 0 {
            HOnly::OnnxGru(MrnnOnnxGruAttrs {
                seq_length: l.seq_length,
                batch_size: l.batch_size,
                input_size: l.input_size,
                hidden_size: l.hidden_size,
                direction: l.direction,
                layout: l.layout,
                linear_before_reset: l.input_forget,
                has_clip: l.has_clip,
                clip: l.clip,
                num_activations: n,
                activations: std::array::from_fn(|k| l.activations[k]),
                activation_alpha: std::array::from_fn(|k| l.activation_alpha[k]),
                activation_beta: std::array::from_fn(|k| l.activation_beta[k]),
                num_threads: l.num_threads,
            })
        } else {
            HOnly::OnnxRnn(MrnnOnnxRnnAttrs {
                seq_length: l.seq_length,
                batch_size: l.batch_size,
                input_size: l.input_size,
                hidden_size: l.hidden_size,
                direction: l.direction,
                layout: l.layout,
                has_clip: l.has_clip,
                clip: l.clip,
                num_activations: n,
                activations: std::array::from_fn(|k| l.activations[k]),
                activation_alpha: std::array::from_fn(|k| l.activation_alpha[k]),
                activation_beta: std::array::from_fn(|k| l.activation_beta[k]),
                num_threads: l.num_threads,
            })
        };
        (attrs, sane)
    } else {
        let (l, sane, _) = keras_attrs(r);
        let attrs = if kind == 2 {
            HOnly::KerasGru(MrnnKerasGruAttrs {
                batch_size: l.batch_size,
                seq_length: l.seq_length,
                input_size: l.input_size,
                hidden_size: l.hidden_size,
                go_backwards: l.go_backwards,
                zero_output_for_mask: l.zero_output_for_mask,
                activation: l.activation,
                recurrent_activation: l.recurrent_activation,
                recurrent_alpha: l.recurrent_alpha,
                recurrent_beta: l.recurrent_beta,
                reset_after: flag_value(r),
                num_threads: l.num_threads,
            })
        } else {
            HOnly::KerasRnn(MrnnKerasRnnAttrs {
                batch_size: l.batch_size,
                seq_length: l.seq_length,
                input_size: l.input_size,
                hidden_size: l.hidden_size,
                go_backwards: l.go_backwards,
                zero_output_for_mask: l.zero_output_for_mask,
                activation: l.activation,
                num_threads: l.num_threads,
            })
        };
        (attrs, sane)
    }
}

const H_OUT_NAMES: [&str; 3] = ["y", "y_h / last_output", "h_n"];

/// The GRU and RNN functions of section 4 from arbitrary attributes: the one-shot function (NULL and
/// misaligned pointers, aliased outputs, bad lengths), then a handle made with the same attributes, run
/// with them (bitwise the one-shot outputs) or with a field fixed at creation changed (refused, nothing
/// written). Every status as predicted by the validation order, canaries intact, inputs unchanged, and
/// successful outputs bitwise the Rust API's.
fn fuzz_gru_rnn(r: &mut ByteReader<'_>) -> Check {
    let (attrs, sane) = h_only_attrs(r);
    let what = attrs.name();
    let bad_value = attrs.value_error();
    let overflow = !bad_value && attrs.tensors(true).iter().any(|d| overflows(d));
    let mut nulls: [bool; 4] = std::array::from_fn(|k| r.u8().is_multiple_of(if k == 0 { 32 } else { 24 }));
    if too_big(nulls.iter().any(|&n| n), bad_value, overflow, sane) {
        nulls[1] = true; // x
    }
    let [a, b, i, h] = attrs.dims();
    let (g, d) = (attrs.gates(), attrs.d());
    let len = |dims: &[i64]| buffer_len(sane, dims);
    let (bs, ts) = if attrs.onnx() { (b, a) } else { (a, b) };
    let n_state = len(&[d, bs, h]);
    let out_sizes =
        if attrs.onnx() { [len(&[ts, d, bs, h]), n_state, 0] } else { [len(&[bs, ts, h]), n_state, n_state] };
    let canary = f32::from_bits(CANARY_BITS);
    let (given_bias, given_h0, given_steps) = (r.bool(), r.bool(), r.bool());
    let (lens, bad_len) = lengths(r, len(&[bs]), ts, sane);
    let bufs = HBufs {
        x: Buf::new(values(r, len(&[bs, ts, i]), 1.5), canary),
        lens: Buf::new(lens, CANARY_I32),
        mask: Buf::new(mask_values(r, len(&[bs, ts])), CANARY_BYTE),
        h0: Buf::new(values(r, n_state, 1.0), canary),
        w: [
            Buf::new(values(r, len(&[d, g, h, i]), 0.7), canary),
            Buf::new(values(r, len(&[d, g, h, h]), 0.7), canary),
            Buf::new(values(r, len(&[d, attrs.bias_blocks(), h]), 0.5), canary),
        ],
    };
    let misalign = r.u8().is_multiple_of(24);
    let alias = r.u8().is_multiple_of(24) && out_sizes[0] > 0 && out_sizes[1] > 0;
    let onnx = attrs.onnx();
    let bad_len = bad_len && onnx && given_steps;
    let required_null = nulls.iter().any(|&n| n);
    let expected =
        predicted(required_null, bad_value, overflow, misalign || alias).or((bad_len).then_some(MRNN_ERR_BAD_ARGUMENT));
    let x_ptr = input_ptr(&bufs.x, nulls[1], misalign);
    let steps = (
        if onnx && given_steps { bufs.lens.ptr() } else { ptr::null() },
        if !onnx && given_steps { bufs.mask.ptr() } else { ptr::null() },
    );
    let h0 = if given_h0 { bufs.h0.ptr() } else { ptr::null() };
    let w = [
        if nulls[2] { ptr::null() } else { bufs.w[0].ptr() },
        if nulls[3] { ptr::null() } else { bufs.w[1].ptr() },
        if given_bias { bufs.w[2].ptr() } else { ptr::null() },
        ptr::null(),
    ];
    let on = [r.bool() || alias, r.bool() || alias, r.bool()];
    let (outs, mut o) = output_bufs(out_sizes, &on);
    if alias {
        o[1] = o[0];
    }
    let attrs_ptr_null = nulls[0];
    let before: Vec<Vec<f32>> =
        [&bufs.x, &bufs.h0, &bufs.w[0], &bufs.w[1], &bufs.w[2]].iter().map(|b| b.data.clone()).collect();
    let (lens_before, mask_before) = (bufs.lens.data.clone(), bufs.mask.data.clone());
    let status = if attrs_ptr_null {
        // SAFETY: NULL attributes are reported before anything is read.
        unsafe {
            match attrs {
                HOnly::OnnxGru(_) => mrnn_gru_onnx(ptr::null(), x_ptr, w[0], w[1], w[2], steps.0, h0, o[0], o[1]),
                HOnly::OnnxRnn(_) => mrnn_rnn_onnx(ptr::null(), x_ptr, w[0], w[1], w[2], steps.0, h0, o[0], o[1]),
                HOnly::KerasGru(_) => {
                    mrnn_gru_keras(ptr::null(), x_ptr, steps.1, w[0], w[1], w[2], h0, o[0], o[1], o[2])
                }
                HOnly::KerasRnn(_) => {
                    mrnn_rnn_keras(ptr::null(), x_ptr, steps.1, w[0], w[1], w[2], h0, o[0], o[1], o[2])
                }
            }
        }
    } else {
        // SAFETY: every buffer has the size of the attributes when they are sane; otherwise the call is
        // predicted to fail validation before reading (a huge valid case gets a NULL `x`).
        unsafe { attrs.one_shot(x_ptr, steps, w, h0, o) }
    };
    let inputs = [&bufs.x, &bufs.h0, &bufs.w[0], &bufs.w[1], &bufs.w[2]];
    let failed = check_call(what, status, &outs, &H_OUT_NAMES, &inputs, &before, expected)?;
    // The backward with the same arguments: the same validation, so the same status (an alias: d_initial_h
    // over an upstream gradient of the same size).
    let up_sizes = [out_sizes[0], n_state, if onnx { 0 } else { n_state }];
    let up_on = [r.bool(), r.bool() || alias, r.bool() && !onnx];
    let up_bufs = up_sizes.map(|n| Buf::new(values(r, n, 1.0), canary));
    let up: [In; 3] = std::array::from_fn(|k| if up_on[k] { up_bufs[k].ptr() } else { ptr::null() });
    let grad_sizes =
        [bufs.x.values().len(), bufs.w[0].values().len(), bufs.w[1].values().len(), bufs.w[2].values().len(), n_state];
    let grad_on = [r.bool(), r.bool(), r.bool(), r.bool(), r.bool() || alias];
    let (grads, mut g) = output_bufs(grad_sizes, &grad_on);
    if alias {
        g[4] = up[1].cast_mut();
    }
    // SAFETY: as for the forward call (NULL attributes are reported before anything is read); the gradients
    // have the sizes of the inputs they belong to.
    let backward = unsafe { attrs.backward(attrs_ptr_null, x_ptr, steps, [w[0], w[1], w[2]], h0, up, g) };
    let what_b = format!("{what} backward");
    let ups: Vec<&Buf<f32>> = up_bufs.iter().collect();
    let ups_before: Vec<Vec<f32>> = up_bufs.iter().map(|b| b.data.clone()).collect();
    let backward_failed = check_call(&what_b, backward, &grads, &H_GRAD_NAMES, &ups, &ups_before, expected)?;
    if backward_failed != failed || (!failed && (backward == MRNN_OK) != (status == MRNN_OK)) {
        return Err(format!("{what_b}: status {backward} where the forward's was {status}: {}", last_error_message()));
    }
    check_lens(what, &bufs.lens, &lens_before)?;
    if bufs.mask.data != mask_before {
        return Err(format!("{what}: the mask was modified"));
    }
    if failed {
        let earlier = required_null || bad_value || overflow;
        check_message(what, bad_len && !earlier && !misalign && !alias, "sequence_lens[")?;
        check_message(what, alias && !earlier && !misalign, "overlaps")?;
        return Ok(());
    }
    let steps_slices = (given_steps.then(|| bufs.lens.values()), given_steps.then(|| bufs.mask.values()));
    let steps_slices = if onnx { (steps_slices.0, None) } else { (None, steps_slices.1) };
    let reference = attrs.rust(
        bufs.x.values(),
        [bufs.w[0].values(), bufs.w[1].values(), bufs.w[2].values()],
        given_bias.then(|| bufs.w[2].values()),
        steps_slices,
        given_h0.then(|| bufs.h0.values()),
    );
    let n_outs = if onnx { 2 } else { 3 };
    let reference = reference.map(|v| {
        let mut it = v.into_iter();
        std::array::from_fn::<Vec<f32>, 3, _>(|_| it.next().unwrap_or_default())
    });
    // Outputs not asked for are compared as empty: only those given are checked.
    let masked_ref = reference.map(|v| {
        let mut v = v;
        for k in 0..3 {
            if !on[k] || k >= n_outs {
                v[k] = outs[k].values().to_vec();
            }
        }
        v
    });
    check_same_as_rust(what, status, masked_ref, &outs, &H_OUT_NAMES)?;
    if status != MRNN_OK {
        return Ok(());
    }

    // A handle made with the same attributes: the same outputs, bitwise; or a changed fixed field: refused.
    let mut layer = attrs.null_handle();
    // SAFETY: the weights have the sizes of the attributes (sane and valid: the one-shot call succeeded).
    let st = unsafe { attrs.new_handle([w[0], w[1], w[2]], &mut layer) };
    if st != MRNN_OK || layer.is_null() {
        return Err(format!("{what}: _new failed ({st}) where the one-shot call succeeded: {}", last_error_message()));
    }
    let (run_attrs, field) = if r.u8().is_multiple_of(4) { attrs.mutated(r) } else { (attrs, None) };
    let saved: Vec<Vec<f32>> = outs.iter().map(|b| b.data.clone()).collect();
    let (mut again, o2) = output_bufs(out_sizes, &on);
    // SAFETY: a live handle; the buffers as for the one-shot call.
    let st = unsafe { run_attrs.run(layer, x_ptr, steps, h0, o2) };
    let trained = if backward == MRNN_OK && field.is_none() {
        // SAFETY: a live handle; the buffers as for the one-shot calls.
        unsafe {
            check_handle_training(what, &attrs, layer, (x_ptr, steps, h0), [w[0], w[1], w[2]], up, (&grads, grad_on))
        }
    } else {
        Ok(())
    };
    // SAFETY: a live handle, freed once.
    unsafe { layer.free() };
    trained?;
    check_status(what, st)?;
    match field {
        Some(field) => {
            if st != MRNN_ERR_BAD_ARGUMENT || !last_error_message().contains(field) {
                return Err(format!("{what}: a run with other {field}: status {st}: {}", last_error_message()));
            }
            if again.iter().any(|b| b.values().iter().any(|v| v.to_bits() != UNSET_BITS)) {
                return Err(format!("{what}: a refused run wrote an output"));
            }
        }
        None => {
            if st != MRNN_OK {
                return Err(format!("{what}: the handle's run failed ({st}): {}", last_error_message()));
            }
            for (k, (buf, s)) in again.iter_mut().zip(&saved).enumerate() {
                same_bits(&format!("{what}: {} (handle vs one-shot)", H_OUT_NAMES[k]), &buf.data, s)?;
            }
        }
    }
    Ok(())
}

/// `a`, or NULL when `null`.
fn attrs_or_null<T>(a: &T, null: bool) -> *const T {
    if null {
        ptr::null()
    } else {
        a
    }
}

const H_GRAD_NAMES: [&str; 5] = ["dx", "dw / d_kernel", "dr / d_recurrent_kernel", "db / d_bias", "d_initial_h"];

/// A handle's training against the one-shot backward that gave `want` (those of `on` asked for): a
/// `run_train` with the tape slot NULL is refused; `run_backward` of a fresh tape gives `want` bitwise;
/// after `set_weights` (the same values) the tape is stale: refused, nothing written.
///
/// # Safety
/// `layer` live, of the kind of `attrs`; every pointer as for the one-shot call that gave `want`.
unsafe fn check_handle_training(
    what: &str,
    attrs: &HOnly,
    layer: HHandle,
    (x, steps, h0): (In, (*const i32, *const u8), In),
    w: [In; 3],
    up: [In; 3],
    (want, on): (&[Buf<f32>; 5], [bool; 5]),
) -> Check {
    let none = [ptr::null_mut(); 3];
    // SAFETY: forwarded from this function's contract; a NULL slot is reported before anything is written.
    let st = unsafe { attrs.run_train(layer, x, steps, h0, none, ptr::null_mut()) };
    if st != MRNN_ERR_NULL_POINTER || !last_error_message().contains("tape is NULL") {
        return Err(format!("{what}: run_train with tape NULL: status {st}: {}", last_error_message()));
    }
    let mut tape = ptr::null_mut();
    // SAFETY: as above.
    let st = unsafe { attrs.run_train(layer, x, steps, h0, none, &mut tape) };
    let tape = Owned { ptr: tape, free: mrnn_tape_free };
    if st != MRNN_OK || tape.ptr.is_null() {
        return Err(format!("{what}: run_train failed ({st}): {}", last_error_message()));
    }
    let sizes = want.each_ref().map(|b| b.values().len());
    let (got, g) = output_bufs(sizes, &on);
    // SAFETY: a live handle and tape; the gradients have the run's sizes.
    let st = unsafe { HOnly::run_backward(layer, tape.ptr, up, g) };
    if st != MRNN_OK {
        return Err(format!("{what}: run_backward failed ({st}): {}", last_error_message()));
    }
    for (k, (a, b)) in got.iter().zip(want).enumerate() {
        same_bits(&format!("{what}: {} (run_backward vs one-shot)", H_GRAD_NAMES[k]), &a.data, &b.data)?;
    }
    // SAFETY: a live handle; the weights have its sizes (the one-shot call accepted them).
    let st = unsafe { HOnly::set_weights(layer, w) };
    if st != MRNN_OK {
        return Err(format!("{what}: set_weights failed ({st}): {}", last_error_message()));
    }
    let (stale, g) = output_bufs(sizes, &on);
    // SAFETY: as above.
    let st = unsafe { HOnly::run_backward(layer, tape.ptr, up, g) };
    if st != MRNN_ERR_BAD_ARGUMENT || !last_error_message().contains("stale") {
        return Err(format!("{what}: run_backward of a stale tape: status {st}: {}", last_error_message()));
    }
    if stale.iter().any(|b| b.values().iter().any(|v| v.to_bits() != UNSET_BITS)) {
        return Err(format!("{what}: a refused run_backward wrote an output"));
    }
    Ok(())
}
