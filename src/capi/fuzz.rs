//! Fuzz logic for the C ABI, kept in the library so `cargo test` replays seeded cases (`tests/capi.rs`).
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
//! Real buffers are allocated only when all sizes are small; with other sizes the harness passes
//! one-element dummies and the call must fail validation before reading them. Huge sizes that would
//! pass validation are paired with a NULL `x`, so no case ever asks for a huge computation.

use std::ffi::CStr;
use std::ptr;

use super::*;
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
    fuzz_onnx_train(&mut r)
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

fn fuzz_lstm_keras(r: &mut ByteReader<'_>) -> Check {
    let (attrs, sane, bad_value) = keras_attrs(r);
    let [bs, ts, is, hs] = [attrs.batch_size, attrs.seq_length, attrs.input_size, attrs.hidden_size];
    let overflow = !bad_value
        && [&[4, hs][..], &[bs, ts, is], &[bs, ts], &[is, 4, hs], &[hs, 4, hs], &[bs, hs], &[bs, ts, hs]]
            .iter()
            .any(|d| overflows(d));

    let rare = |r: &mut ByteReader<'_>, n: u8| r.u8().is_multiple_of(n);
    let attrs_null = rare(r, 32);
    let mut x_null = rare(r, 24);
    let kernel_null = rare(r, 24);
    let recurrent_null = rare(r, 24);
    let mask_on = r.bool();
    let bias_on = r.bool();
    let (h0_on, c0_on) = (r.u8().is_multiple_of(3), r.u8().is_multiple_of(3));
    let outs_on = [!r.u8().is_multiple_of(4), r.bool(), r.bool(), r.bool()];
    let misalign_x = rare(r, 32);
    let alias_c_to_h = rare(r, 32);

    let required_null = attrs_null || x_null || kernel_null || recurrent_null;
    if predicted(required_null, bad_value, overflow, false).is_none() && !sane {
        // Huge sizes that validate: never compute them.
        x_null = true;
    }
    let required_null = required_null || x_null;

    // Buffer lengths: exact when sane, one-element dummies otherwise (validation must reject first).
    let len = |dims: &[i64]| -> usize {
        if sane {
            dims.iter().map(|&d| d as usize).product()
        } else {
            1
        }
    };
    let (n_x, n_mask, n_k, n_r, n_b, n_s, n_y) = (
        len(&[bs, ts, is]),
        len(&[bs, ts]),
        len(&[is, 4, hs]),
        len(&[hs, 4, hs]),
        len(&[4, hs]),
        len(&[bs, hs]),
        len(&[bs, ts, hs]),
    );
    let bad_pointer = misalign_x || (alias_c_to_h && outs_on[2] && outs_on[3] && n_s > 0);
    let expected = predicted(required_null, bad_value, overflow, bad_pointer);

    // Misaligned x: one more element so that reads at a 2-byte offset stay inside the allocation.
    let x = Buf::new(values(r, n_x + usize::from(misalign_x), 2.0), f32::from_bits(CANARY_BITS));
    let kernel = Buf::new(values(r, n_k, 0.5), f32::from_bits(CANARY_BITS));
    let recurrent = Buf::new(values(r, n_r, 0.5), f32::from_bits(CANARY_BITS));
    let bias = Buf::new(values(r, n_b, 0.5), f32::from_bits(CANARY_BITS));
    let h0 = Buf::new(values(r, n_s, 1.0), f32::from_bits(CANARY_BITS));
    let c0 = Buf::new(values(r, n_s, 1.0), f32::from_bits(CANARY_BITS));
    let mask_bytes: Vec<u8> = (0..n_mask)
        .map(|_| match r.u8() % 8 {
            0..=2 => 0,
            3 => r.u8(),
            4 => 255,
            _ => 1,
        })
        .collect();
    let mask = Buf::new(mask_bytes, CANARY_BYTE);
    let unset = f32::from_bits(UNSET_BITS);
    let canary = f32::from_bits(CANARY_BITS);
    let mut outs = [n_y, n_s, n_s, n_s].map(|n| Buf::filled(n, unset, canary));
    let inputs_before: Vec<Vec<f32>> =
        [&x, &kernel, &recurrent, &bias, &h0, &c0].iter().map(|b| b.data.clone()).collect();

    let opt = |on: bool, p: *const f32| if on { p } else { ptr::null() };
    let x_ptr = if x_null {
        ptr::null()
    } else if misalign_x {
        x.ptr().cast::<u8>().wrapping_add(2).cast::<f32>()
    } else {
        x.ptr()
    };
    let mut out_ptrs = [ptr::null_mut::<f32>(); 4];
    for (k, (buf, &on)) in outs.iter_mut().zip(&outs_on).enumerate() {
        if on {
            out_ptrs[k] = buf.mut_ptr();
        }
    }
    if alias_c_to_h && outs_on[2] && outs_on[3] {
        out_ptrs[3] = out_ptrs[2];
    }
    // SAFETY: every non-NULL buffer holds exactly its documented size (plus a canary) when the sizes are
    // sane. Otherwise the buffers are one-element dummies and `expected` is a failure that validation
    // reports before any access; a library that read or wrote them anyway is what this harness hunts
    // (writes land in the canary, which is checked). A misaligned `x` and aliased outputs stay inside
    // their allocations.
    let status = unsafe {
        mrnn_lstm_keras(
            if attrs_null { ptr::null() } else { &attrs },
            x_ptr,
            if mask_on { mask.ptr() } else { ptr::null() },
            if kernel_null { ptr::null() } else { kernel.ptr() },
            if recurrent_null { ptr::null() } else { recurrent.ptr() },
            opt(bias_on, bias.ptr()),
            opt(h0_on, h0.ptr()),
            opt(c0_on, c0.ptr()),
            out_ptrs[0],
            out_ptrs[1],
            out_ptrs[2],
            out_ptrs[3],
        )
    };
    let what = format!("mrnn_lstm_keras({attrs:?}, nulls: attrs {attrs_null} x {x_null} kernel {kernel_null} recurrent {recurrent_null}, misaligned x {misalign_x}, aliased c_n {alias_c_to_h})");
    check_status(&what, status)?;
    const NAMES: [&str; 4] = ["y", "last_output", "h_n", "c_n"];
    for (buf, name) in outs.iter().zip(NAMES) {
        buf.check_canary(name, canary)?;
    }
    mask.check_canary("mask", CANARY_BYTE)?;
    for (before, (buf, name)) in inputs_before.iter().zip([
        (&x, "x"),
        (&kernel, "kernel"),
        (&recurrent, "recurrent_kernel"),
        (&bias, "bias"),
        (&h0, "initial_h"),
        (&c0, "initial_c"),
    ]) {
        same_bits(&format!("{what}: input {name} modified (after vs before)"), &buf.data, before)?;
    }

    if let Some(expected) = expected {
        if status != expected {
            return Err(format!("{what}: status {status}, expected {expected}: {}", last_error_message()));
        }
        for (buf, name) in outs.iter().zip(NAMES) {
            if buf.values().iter().any(|v| v.to_bits() != UNSET_BITS) {
                return Err(format!("{what}: {name} written by a call that failed validation"));
            }
        }
        return Ok(());
    }

    // Sane sizes, valid pointers: the Rust API on the same inputs must agree bitwise.
    let (b, t, i, h) = (bs as usize, ts as usize, is as usize, hs as usize);
    let mut reference = [n_y, n_s, n_s, n_s].map(|n| vec![unset; n]);
    let rust_status = (|| -> Result<()> {
        let view = if mask_on { SeqView::from_mask_bytes(mask.values(), b, t)? } else { SeqView::full(b, t) };
        let ract = if attrs.recurrent_activation == 7 {
            let or = |v: f32, d: f32| if v.is_nan() { d } else { v };
            Activation::HardSigmoid { alpha: or(attrs.recurrent_alpha, 0.2), beta: or(attrs.recurrent_beta, 0.5) }
        } else {
            keras_reference_activation(attrs.recurrent_activation)?
        };
        let options = KerasLstmOptions::default()
            .activation(keras_reference_activation(attrs.activation)?)
            .recurrent_activation(ract)
            .go_backwards(attrs.go_backwards == 1)
            .zero_output_for_mask(attrs.zero_output_for_mask == 1);
        let weights =
            LstmWeights::from_keras(i, h, kernel.values(), recurrent.values(), bias_on.then(|| bias.values()))?;
        let layer = KerasLstm::new(weights, options)?;
        let zeros = vec![0.0; n_s];
        let initial = (h0_on || c0_on).then(|| InitialState {
            h: if h0_on { h0.values() } else { &zeros },
            c: if c0_on { c0.values() } else { &zeros },
        });
        let [ry, rl, rh, rc] = &mut reference;
        let out = KerasOutputs {
            y: outs_on[0].then_some(&mut ry[..]),
            last_output: outs_on[1].then_some(&mut rl[..]),
            h_n: outs_on[2].then_some(&mut rh[..]),
            c_n: outs_on[3].then_some(&mut rc[..]),
        };
        layer.forward(x.values(), &view, initial, out, attrs.num_threads as usize)?;
        Ok(())
    })()
    .map_or_else(|e| status_of(e.kind()), |()| MRNN_OK);
    if status != rust_status {
        return Err(format!("{what}: status {status}, the Rust API gives {rust_status}: {}", last_error_message()));
    }
    if status == MRNN_OK {
        for ((buf, expected), name) in outs.iter().zip(&reference).zip(NAMES) {
            same_bits(&format!("{what}: {name} (C ABI vs the Rust API)"), buf.values(), expected)?;
        }
    }
    Ok(())
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

fn fuzz_lstm_onnx(r: &mut ByteReader<'_>) -> Check {
    let (attrs, sane, bad_value) = onnx_attrs(r);
    let [ts, bs, is, hs] = [attrs.seq_length, attrs.batch_size, attrs.input_size, attrs.hidden_size];
    let d_n: i64 = if attrs.direction == 2 { 2 } else { 1 };
    let overflow = !bad_value
        && [
            &[ts, bs, is][..],
            &[d_n, 4, hs, is],
            &[d_n, 4, hs, hs],
            &[d_n, 8, hs],
            &[d_n, 3, hs],
            &[d_n, bs, hs],
            &[ts, d_n, bs, hs],
        ]
        .iter()
        .any(|d| overflows(d));

    let rare = |r: &mut ByteReader<'_>, n: u8| r.u8().is_multiple_of(n);
    let attrs_null = rare(r, 32);
    let mut x_null = rare(r, 24);
    let w_null = rare(r, 24);
    let r_null = rare(r, 24);
    let b_on = r.bool();
    let lens_on = !r.u8().is_multiple_of(4);
    let (h0_on, c0_on, p_on) = (r.u8().is_multiple_of(3), r.u8().is_multiple_of(3), r.u8().is_multiple_of(3));
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
    if predicted(required_null, bad_value, overflow, false).is_none() && !sane {
        x_null = true;
    }
    let required_null = required_null || x_null;

    let len = |dims: &[i64]| -> usize {
        if sane {
            dims.iter().map(|&d| d as usize).product()
        } else {
            1
        }
    };
    let (n_x, n_w, n_r, n_b, n_p, n_s, n_y, n_l) = (
        len(&[ts, bs, is]),
        len(&[d_n, 4, hs, is]),
        len(&[d_n, 4, hs, hs]),
        len(&[d_n, 8, hs]),
        len(&[d_n, 3, hs]),
        len(&[d_n, bs, hs]),
        len(&[ts, d_n, bs, hs]),
        len(&[bs]),
    );
    let aliased = match alias {
        1 => outs_on[1] && outs_on[2] && n_s > 0,
        2 => outs_on[1] && h0_on && n_s > 0,
        _ => false,
    };
    let misaligned = match misalign {
        1 => true,
        2 => true,
        3 => lens_on,
        _ => false,
    };
    let lens_values: Vec<i32> = (0..n_l).map(|_| length_value(r, if sane { ts } else { 0 })).collect();
    let lens_bad = sane && lens_on && lens_values.iter().any(|&l| l < 0 || i64::from(l) > ts);
    let expected = predicted(required_null, bad_value, overflow, misaligned || aliased)
        .or_else(|| lens_bad.then_some(MRNN_ERR_BAD_ARGUMENT));

    let canary = f32::from_bits(CANARY_BITS);
    // Misaligned buffers get one more element so that reads at a 2-byte offset stay inside.
    let x = Buf::new(values(r, n_x + usize::from(misalign == 1), 2.0), canary);
    let w = Buf::new(values(r, n_w + usize::from(misalign == 2), 0.5), canary);
    let rr = Buf::new(values(r, n_r, 0.5), canary);
    let bias = Buf::new(values(r, n_b, 0.5), canary);
    let peep = Buf::new(values(r, n_p, 0.5), canary);
    let mut h0 = Buf::new(values(r, n_s, 1.0), canary);
    let c0 = Buf::new(values(r, n_s, 1.0), canary);
    let mut lens_data = lens_values;
    if misalign == 3 {
        lens_data.push(0);
    }
    let lens = Buf::new(lens_data, CANARY_I32);
    let unset = f32::from_bits(UNSET_BITS);
    let mut outs = [n_y, n_s, n_s].map(|n| Buf::filled(n, unset, canary));
    let inputs_before: Vec<Vec<f32>> = [&x, &w, &rr, &bias, &peep, &h0, &c0].iter().map(|b| b.data.clone()).collect();
    let lens_before = lens.data.clone();

    let opt = |on: bool, p: *const f32| if on { p } else { ptr::null() };
    // One raw pointer for initial_h, from which the aliased output is also derived.
    let h0_ptr = h0.mut_ptr();
    let shift = |p: *const f32, on: bool| if on { p.cast::<u8>().wrapping_add(2).cast::<f32>() } else { p };
    let x_ptr = if x_null { ptr::null() } else { shift(x.ptr(), misalign == 1) };
    let w_ptr = if w_null { ptr::null() } else { shift(w.ptr(), misalign == 2) };
    let lens_ptr = if !lens_on {
        ptr::null()
    } else if misalign == 3 {
        lens.ptr().cast::<u8>().wrapping_add(2).cast::<i32>()
    } else {
        lens.ptr()
    };
    let mut out_ptrs = [ptr::null_mut::<f32>(); 3];
    for (k, (buf, &on)) in outs.iter_mut().zip(&outs_on).enumerate() {
        if on {
            out_ptrs[k] = buf.mut_ptr();
        }
    }
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
    let status = unsafe {
        mrnn_lstm_onnx(
            if attrs_null { ptr::null() } else { &attrs },
            x_ptr,
            w_ptr,
            if r_null { ptr::null() } else { rr.ptr() },
            opt(b_on, bias.ptr()),
            lens_ptr,
            opt(h0_on, h0_ptr),
            opt(c0_on, c0.ptr()),
            opt(p_on, peep.ptr()),
            out_ptrs[0],
            out_ptrs[1],
            out_ptrs[2],
        )
    };
    let what = format!(
        "mrnn_lstm_onnx({attrs:?}, nulls: attrs {attrs_null} x {x_null} w {w_null} r {r_null}, misaligned {misalign}, alias {alias}, lens {:?})",
        lens_on.then(|| lens.values())
    );
    check_status(&what, status)?;
    const NAMES: [&str; 3] = ["Y", "Y_h", "Y_c"];
    for (buf, name) in outs.iter().zip(NAMES) {
        buf.check_canary(name, canary).map_err(|e| format!("{what}: {e}"))?;
    }
    lens.check_canary("sequence_lens", CANARY_I32).map_err(|e| format!("{what}: {e}"))?;
    for (before, (buf, name)) in inputs_before.iter().zip([
        (&x, "x"),
        (&w, "w"),
        (&rr, "r"),
        (&bias, "b"),
        (&peep, "p"),
        (&h0, "initial_h"),
        (&c0, "initial_c"),
    ]) {
        same_bits(&format!("{what}: input {name} modified (after vs before)"), &buf.data, before)?;
    }
    if lens_before != lens.data {
        return Err(format!("{what}: sequence_lens was modified"));
    }

    if let Some(expected) = expected {
        if status != expected {
            return Err(format!("{what}: status {status}, expected {expected}: {}", last_error_message()));
        }
        for (buf, name) in outs.iter().zip(NAMES) {
            if buf.values().iter().any(|v| v.to_bits() != UNSET_BITS) {
                return Err(format!("{what}: {name} written by a call that failed validation"));
            }
        }
        return Ok(());
    }

    // Sane sizes, valid pointers and lengths: the Rust API on the same inputs must agree bitwise.
    let (t, b, i) = (ts as usize, bs as usize, is as usize);
    let mut reference = [n_y, n_s, n_s].map(|n| vec![unset; n]);
    let rust_status = (|| -> Result<()> {
        let node = OnnxLstm::new(
            expected_onnx_attrs(&attrs)?,
            i,
            w.values(),
            rr.values(),
            b_on.then(|| bias.values()),
            p_on.then(|| peep.values()),
        )?;
        let [ry, rh, rc] = &mut reference;
        let out = OnnxOutputs {
            y: outs_on[0].then_some(&mut ry[..]),
            y_h: outs_on[1].then_some(&mut rh[..]),
            y_c: outs_on[2].then_some(&mut rc[..]),
        };
        node.forward(
            x.values(),
            t,
            b,
            lens_on.then(|| lens.values()),
            h0_on.then(|| h0.values()),
            c0_on.then(|| c0.values()),
            out,
            attrs.num_threads as usize,
        )?;
        Ok(())
    })()
    .map_or_else(|e| status_of(e.kind()), |()| MRNN_OK);
    if status != rust_status {
        return Err(format!("{what}: status {status}, the Rust API gives {rust_status}: {}", last_error_message()));
    }
    if status == MRNN_OK {
        for ((buf, expected), name) in outs.iter().zip(&reference).zip(NAMES) {
            same_bits(&format!("{what}: {name} (C ABI vs the Rust API)"), buf.values(), expected)?;
        }
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

/// `n` input values from fuzz bytes: mostly in `±scale`, sometimes anything (NaN, infinities, huge).
fn values(r: &mut ByteReader<'_>, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| if r.u8().is_multiple_of(32) { r.wild() } else { r.unit(scale) }).collect()
}

/// The pointer a call gets for `buf`: NULL, two bytes past the start (misaligned, still inside the
/// allocation) or the start.
fn input_ptr(buf: &Buf<f32>, null: bool, misalign: bool) -> *const f32 {
    if null {
        ptr::null()
    } else if misalign {
        buf.ptr().cast::<u8>().wrapping_add(2).cast::<f32>()
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

/// The checks after a handle's `_run`: output canaries intact, float inputs unmodified, and a predicted
/// failure with exactly its status, the fixed-field message when only a fixed field changed, and no output
/// written. Returns whether the run was a predicted failure (nothing more to compare).
#[allow(clippy::too_many_arguments)]
fn check_run(
    what: &str,
    status: i32,
    outs: &[Buf<f32>],
    names: &[&str],
    inputs: &[&Buf<f32>],
    inputs_before: &[Vec<f32>],
    expected: Option<i32>,
    only_fixed_field: bool,
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
    let message = last_error_message();
    if only_fixed_field && !message.contains("differs from the handle's") {
        return Err(format!("{what}: a changed fixed field, but the message is {message:?}"));
    }
    if outs.iter().any(|b| b.values().iter().any(|v| v.to_bits() != UNSET_BITS)) {
        return Err(format!("{what}: an output was written by a run that failed validation"));
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

/// Creates a Keras handle from arbitrary attributes and weights, then runs it a few times with other
/// shapes, thread counts and sometimes changed fixed fields: every status as the contract predicts, every
/// successful run bitwise equal to `mrnn_lstm_keras` on the same inputs, canaries intact.
fn fuzz_keras_handle(r: &mut ByteReader<'_>) -> Check {
    let (created, _, bad_value) = keras_attrs(r);
    let (is, hs) = (created.input_size, created.hidden_size);
    let sane_weights = (0..=SANE[2]).contains(&is) && (0..=SANE[3]).contains(&hs);
    let overflow = !bad_value && [&[4, hs][..], &[is, 4, hs], &[hs, 4, hs]].iter().any(|d| overflows(d));
    let rare = |r: &mut ByteReader<'_>, n: u8| r.u8().is_multiple_of(n);
    let (attrs_null, mut kernel_null, recurrent_null, out_null) = (rare(r, 32), rare(r, 24), rare(r, 24), rare(r, 32));
    let (bias_on, misalign_kernel) = (r.bool(), rare(r, 32));
    if predicted(attrs_null || kernel_null || recurrent_null || out_null, bad_value, overflow, false).is_none()
        && !sane_weights
    {
        // Huge weights that validate: never pack them.
        kernel_null = true;
    }
    let required_null = attrs_null || kernel_null || recurrent_null || out_null;
    let expected = predicted(required_null, bad_value, overflow, misalign_kernel);
    let len = |dims: &[i64]| if sane_weights { dims.iter().map(|&d| d as usize).product() } else { 1 };
    let canary = f32::from_bits(CANARY_BITS);
    let mut kernel = Buf::new(values(r, len(&[is, 4, hs]) + usize::from(misalign_kernel), 0.5), canary);
    let mut recurrent = Buf::new(values(r, len(&[hs, 4, hs]), 0.5), canary);
    let mut bias = Buf::new(values(r, len(&[4, hs]), 0.5), canary);
    let saved: Vec<Vec<f32>> = [&kernel, &recurrent, &bias].iter().map(|b| b.data.clone()).collect();
    let kernel_ptr = input_ptr(&kernel, kernel_null, misalign_kernel);
    let mut out = sentinel::<MrnnKerasLstm>();
    // SAFETY: the weights hold exactly their documented sizes (plus a canary) when the sizes are sane;
    // otherwise they are one-element dummies and `expected` is a failure validation reports first. A
    // misaligned kernel stays inside its allocation.
    let status = unsafe {
        mrnn_keras_lstm_new(
            if attrs_null { ptr::null() } else { &created },
            kernel_ptr,
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
    for buf in [&mut kernel, &mut recurrent, &mut bias] {
        let n = buf.len;
        buf.data[..n].fill(1e3);
    }
    let [saved_kernel, saved_recurrent, saved_bias] =
        [0, 1, 2].map(|k| Buf::new(saved[k][..[&kernel, &recurrent, &bias][k].len].to_vec(), canary));

    for run in 0..1 + r.below(4) {
        let mut a = created;
        let [bs, ts] = run_sizes(r, [SANE[0], SANE[1]]);
        (a.batch_size, a.seq_length, a.num_threads) = (bs, ts, thread_count(r));
        match r.u8() % 24 {
            0 => a.input_size += 1,
            1 => a.hidden_size += 1,
            2 => a.go_backwards ^= 1,
            3 => a.zero_output_for_mask ^= 1,
            4 => a.activation = code(r, 1),
            5 => a.recurrent_activation = code(r, 0),
            6 => a.recurrent_alpha = [f32::NAN, 0.2, 0.5, r.wild()][r.below(4)],
            7 => a.recurrent_beta = [f32::NAN, 0.5, 0.2, r.wild()][r.below(4)],
            _ => {}
        }
        let bad_value = keras_value_error(&a);
        let mismatch = keras_fixed_differ(&a, &created);
        let (i, h) = (is, hs);
        let overflow = !bad_value
            && !mismatch
            && [&[bs, ts, i][..], &[bs, ts], &[bs, h], &[bs, ts, h]].iter().any(|d| overflows(d));
        let (layer_null, attrs_null, mut x_null) = (rare(r, 32), rare(r, 32), rare(r, 24));
        let (mask_on, h0_on, c0_on) = (r.bool(), r.u8().is_multiple_of(3), r.u8().is_multiple_of(3));
        let outs_on = [!r.u8().is_multiple_of(4), r.bool(), r.bool(), r.bool()];
        let (misalign_x, alias) = (rare(r, 32), rare(r, 32));
        let sane = (0..=SANE[0]).contains(&bs) && (0..=SANE[1]).contains(&ts);
        if predicted(layer_null || attrs_null || x_null, bad_value || mismatch, overflow, false).is_none() && !sane {
            x_null = true;
        }
        let required_null = layer_null || attrs_null || x_null;
        let len = |dims: &[i64]| if sane { dims.iter().map(|&d| d as usize).product() } else { 1 };
        let (n_x, n_mask, n_s, n_y) = (len(&[bs, ts, i]), len(&[bs, ts]), len(&[bs, h]), len(&[bs, ts, h]));
        let aliased = alias && outs_on[2] && outs_on[3] && n_s > 0;
        let expected = predicted(required_null, bad_value || mismatch, overflow, misalign_x || aliased);

        let x = Buf::new(values(r, n_x + usize::from(misalign_x), 2.0), canary);
        let h0 = Buf::new(values(r, n_s, 1.0), canary);
        let c0 = Buf::new(values(r, n_s, 1.0), canary);
        let mask = Buf::new((0..n_mask).map(|_| [0, 1, 1, 255, 0, 1, 7, 1][r.below(8)]).collect(), CANARY_BYTE);
        let inputs_before: Vec<Vec<f32>> = [&x, &h0, &c0].iter().map(|b| b.data.clone()).collect();
        let (outs, mut ptrs) = output_bufs([n_y, n_s, n_s, n_s], &outs_on);
        if aliased {
            ptrs[3] = ptrs[2];
        }
        let x_ptr = input_ptr(&x, x_null, misalign_x);
        let opt = |on: bool, p: *const f32| if on { p } else { ptr::null() };
        // SAFETY: `layer.ptr` is a live handle; the buffers hold exactly their documented sizes (plus a
        // canary) when the sizes are sane, otherwise `expected` is a failure validation reports before any
        // access. A misaligned x and aliased outputs stay inside their allocations.
        let status = unsafe {
            mrnn_keras_lstm_run(
                if layer_null { ptr::null_mut() } else { layer.ptr },
                if attrs_null { ptr::null() } else { &a },
                x_ptr,
                if mask_on { mask.ptr() } else { ptr::null() },
                opt(h0_on, h0.ptr()),
                opt(c0_on, c0.ptr()),
                ptrs[0],
                ptrs[1],
                ptrs[2],
                ptrs[3],
            )
        };
        let what = format!("mrnn_keras_lstm_run #{run} ({a:?}, handle {created:?}, nulls: layer {layer_null} attrs {attrs_null} x {x_null}, misaligned x {misalign_x}, aliased {aliased})");
        mask.check_canary("mask", CANARY_BYTE).map_err(|e| format!("{what}: {e}"))?;
        const NAMES: [&str; 4] = ["y", "last_output", "h_n", "c_n"];
        let only_fixed_field = !required_null && !bad_value && mismatch;
        if check_run(&what, status, &outs, &NAMES, &[&x, &h0, &c0], &inputs_before, expected, only_fixed_field)? {
            continue;
        }
        // The one-shot function on the same inputs and the saved weights: bitwise the same.
        let (one_shot, ptrs) = output_bufs([n_y, n_s, n_s, n_s], &outs_on);
        // SAFETY: the same valid buffers as the run above, with the saved weights of the handle's sizes.
        let one_status = unsafe {
            mrnn_lstm_keras(
                &a,
                x.ptr(),
                if mask_on { mask.ptr() } else { ptr::null() },
                saved_kernel.ptr(),
                saved_recurrent.ptr(),
                if bias_on { saved_bias.ptr() } else { ptr::null() },
                opt(h0_on, h0.ptr()),
                opt(c0_on, c0.ptr()),
                ptrs[0],
                ptrs[1],
                ptrs[2],
                ptrs[3],
            )
        };
        check_same_as_one_shot(&what, "mrnn_lstm_keras", status, one_status, &outs, &one_shot, &NAMES)?;
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
    let d_n: i64 = if created.direction == 2 { 2 } else { 1 };
    let sane_weights = (0..=SANE_ONNX[2]).contains(&is) && (0..=SANE_ONNX[3]).contains(&hs);
    let overflow = !bad_value
        && [&[d_n, 4, hs, is][..], &[d_n, 4, hs, hs], &[d_n, 8, hs], &[d_n, 3, hs]].iter().any(|d| overflows(d));
    let rare = |r: &mut ByteReader<'_>, n: u8| r.u8().is_multiple_of(n);
    let (attrs_null, mut w_null, r_null, out_null) = (rare(r, 32), rare(r, 24), rare(r, 24), rare(r, 32));
    let (b_on, p_on, misalign_w) = (r.bool(), r.u8().is_multiple_of(3), rare(r, 32));
    if predicted(attrs_null || w_null || r_null || out_null, bad_value, overflow, false).is_none() && !sane_weights {
        w_null = true;
    }
    let required_null = attrs_null || w_null || r_null || out_null;
    let expected = predicted(required_null, bad_value, overflow, misalign_w);
    let len = |dims: &[i64]| if sane_weights { dims.iter().map(|&d| d as usize).product() } else { 1 };
    let canary = f32::from_bits(CANARY_BITS);
    let mut w = Buf::new(values(r, len(&[d_n, 4, hs, is]) + usize::from(misalign_w), 0.5), canary);
    let mut rr = Buf::new(values(r, len(&[d_n, 4, hs, hs]), 0.5), canary);
    let mut bias = Buf::new(values(r, len(&[d_n, 8, hs]), 0.5), canary);
    let mut peep = Buf::new(values(r, len(&[d_n, 3, hs]), 0.5), canary);
    let saved: Vec<Vec<f32>> = [&w, &rr, &bias, &peep].iter().map(|b| b.data.clone()).collect();
    let w_ptr = input_ptr(&w, w_null, misalign_w);
    let mut out = sentinel::<MrnnOnnxLstm>();
    // SAFETY: as in `fuzz_keras_handle`.
    let status = unsafe {
        mrnn_onnx_lstm_new(
            if attrs_null { ptr::null() } else { &created },
            w_ptr,
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
    for buf in [&mut w, &mut rr, &mut bias, &mut peep] {
        let n = buf.len;
        buf.data[..n].fill(-1e3);
    }
    let lens_of = [w.len, rr.len, bias.len, peep.len];
    let [saved_w, saved_r, saved_b, saved_p] = [0, 1, 2, 3].map(|k| Buf::new(saved[k][..lens_of[k]].to_vec(), canary));

    for run in 0..1 + r.below(4) {
        let mut a = created;
        let [ts, bs] = run_sizes(r, [SANE_ONNX[0], SANE_ONNX[1]]);
        (a.seq_length, a.batch_size, a.num_threads) = (ts, bs, thread_count(r));
        match r.u8() % 32 {
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
        }
        let bad_value = onnx_value_error(&a);
        let mismatch = onnx_fixed_differ(&a, &created);
        let d = d_n;
        let overflow = !bad_value
            && !mismatch
            && [&[ts, bs, is][..], &[d, bs, hs], &[ts, d, bs, hs]].iter().any(|dims| overflows(dims));
        let (layer_null, attrs_null, mut x_null) = (rare(r, 32), rare(r, 32), rare(r, 24));
        let (lens_on, h0_on, c0_on) = (!r.u8().is_multiple_of(4), r.u8().is_multiple_of(3), r.u8().is_multiple_of(3));
        let outs_on = [!r.u8().is_multiple_of(4), r.bool(), r.bool()];
        let (misalign_x, alias) = (rare(r, 48), rare(r, 32));
        let sane = (0..=SANE_ONNX[0]).contains(&ts) && (0..=SANE_ONNX[1]).contains(&bs);
        if predicted(layer_null || attrs_null || x_null, bad_value || mismatch, overflow, false).is_none() && !sane {
            x_null = true;
        }
        let required_null = layer_null || attrs_null || x_null;
        let len = |dims: &[i64]| if sane { dims.iter().map(|&v| v as usize).product() } else { 1 };
        let (n_x, n_s, n_y, n_l) = (len(&[ts, bs, is]), len(&[d, bs, hs]), len(&[ts, d, bs, hs]), len(&[bs]));
        let aliased = alias && outs_on[1] && outs_on[2] && n_s > 0;
        let lens_values: Vec<i32> = (0..n_l).map(|_| length_value(r, if sane { ts } else { 0 })).collect();
        let lens_bad = sane && lens_on && lens_values.iter().any(|&l| l < 0 || i64::from(l) > ts);
        let expected = predicted(required_null, bad_value || mismatch, overflow, misalign_x || aliased)
            .or_else(|| lens_bad.then_some(MRNN_ERR_BAD_ARGUMENT));

        let x = Buf::new(values(r, n_x + usize::from(misalign_x), 2.0), canary);
        let h0 = Buf::new(values(r, n_s, 1.0), canary);
        let c0 = Buf::new(values(r, n_s, 1.0), canary);
        let lens = Buf::new(lens_values, CANARY_I32);
        let inputs_before: Vec<Vec<f32>> = [&x, &h0, &c0].iter().map(|b| b.data.clone()).collect();
        let lens_before = lens.data.clone();
        let (outs, mut ptrs) = output_bufs([n_y, n_s, n_s], &outs_on);
        if aliased {
            ptrs[2] = ptrs[1];
        }
        let x_ptr = input_ptr(&x, x_null, misalign_x);
        let opt = |on: bool, p: *const f32| if on { p } else { ptr::null() };
        let lens_ptr = if lens_on { lens.ptr() } else { ptr::null() };
        // SAFETY: as in `fuzz_keras_handle`.
        let status = unsafe {
            mrnn_onnx_lstm_run(
                if layer_null { ptr::null_mut() } else { layer.ptr },
                if attrs_null { ptr::null() } else { &a },
                x_ptr,
                lens_ptr,
                opt(h0_on, h0.ptr()),
                opt(c0_on, c0.ptr()),
                ptrs[0],
                ptrs[1],
                ptrs[2],
            )
        };
        let what = format!(
            "mrnn_onnx_lstm_run #{run} ({a:?}, handle {created:?}, nulls: layer {layer_null} attrs {attrs_null} x {x_null}, misaligned x {misalign_x}, aliased {aliased}, lens {:?})",
            lens_on.then(|| lens.values())
        );
        lens.check_canary("sequence_lens", CANARY_I32).map_err(|e| format!("{what}: {e}"))?;
        if lens.data != lens_before {
            return Err(format!("{what}: sequence_lens was modified"));
        }
        const NAMES: [&str; 3] = ["Y", "Y_h", "Y_c"];
        let only_fixed_field = !required_null && !bad_value && mismatch;
        if check_run(&what, status, &outs, &NAMES, &[&x, &h0, &c0], &inputs_before, expected, only_fixed_field)? {
            continue;
        }
        let (one_shot, ptrs) = output_bufs([n_y, n_s, n_s], &outs_on);
        // SAFETY: the same valid buffers as the run above, with the saved weights of the handle's sizes.
        let one_status = unsafe {
            mrnn_lstm_onnx(
                &a,
                x.ptr(),
                saved_w.ptr(),
                saved_r.ptr(),
                if b_on { saved_b.ptr() } else { ptr::null() },
                lens_ptr,
                opt(h0_on, h0.ptr()),
                opt(c0_on, c0.ptr()),
                if p_on { saved_p.ptr() } else { ptr::null() },
                ptrs[0],
                ptrs[1],
                ptrs[2],
            )
        };
        check_same_as_one_shot(&what, "mrnn_lstm_onnx", status, one_status, &outs, &one_shot, &NAMES)?;
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
    let (attrs, sane, bad_value) = keras_attrs(r);
    let [bs, ts, is, hs] = [attrs.batch_size, attrs.seq_length, attrs.input_size, attrs.hidden_size];
    let overflow = !bad_value
        && [&[4, hs][..], &[bs, ts, is], &[bs, ts], &[is, 4, hs], &[hs, 4, hs], &[bs, hs], &[bs, ts, hs]]
            .iter()
            .any(|d| overflows(d));
    let rare = |r: &mut ByteReader<'_>, n: u8| r.u8().is_multiple_of(n);
    let attrs_null = rare(r, 48);
    let mut x_null = rare(r, 32);
    let kernel_null = rare(r, 32);
    let recurrent_null = rare(r, 32);
    let (mask_on, bias_on) = (r.bool(), r.bool());
    let (h0_on, c0_on) = (r.u8().is_multiple_of(3), r.u8().is_multiple_of(3));
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
    if predicted(required_null, bad_value, overflow, false).is_none() && !sane {
        // Huge sizes that validate: never compute them.
        x_null = true;
    }
    let required_null = required_null || x_null;
    let len = |dims: &[i64]| -> usize {
        if sane {
            dims.iter().map(|&d| d as usize).product()
        } else {
            1
        }
    };
    let (n_x, n_mask, n_k, n_r, n_b, n_s, n_y) = (
        len(&[bs, ts, is]),
        len(&[bs, ts]),
        len(&[is, 4, hs]),
        len(&[hs, 4, hs]),
        len(&[4, hs]),
        len(&[bs, hs]),
        len(&[bs, ts, hs]),
    );
    let sizes = [n_x, n_k, n_r, n_b, n_s, n_s];
    let misaligned = match misalign {
        1 => up_on[0],
        2 => grads_on[3],
        _ => false,
    };
    let aliased = match alias {
        1 => grads_on[4] && grads_on[5] && n_s > 0,
        2 => grads_on[0] && n_x > 0,
        _ => false,
    };
    let expected = predicted(required_null, bad_value, overflow, misaligned || aliased);

    let canary = f32::from_bits(CANARY_BITS);
    let mut x = Buf::new(values(r, n_x, 2.0), canary);
    let kernel = Buf::new(values(r, n_k, 0.5), canary);
    let recurrent = Buf::new(values(r, n_r, 0.5), canary);
    let bias = Buf::new(values(r, n_b, 0.5), canary);
    let h0 = Buf::new(values(r, n_s, 1.0), canary);
    let c0 = Buf::new(values(r, n_s, 1.0), canary);
    let mask = Buf::new(mask_values(r, n_mask), CANARY_BYTE);
    let ups = [n_y + usize::from(misalign == 1), n_s, n_s, n_s].map(|n| Buf::new(values(r, n, 1.0), canary));
    let inputs_before: Vec<Vec<f32>> =
        [&x, &kernel, &recurrent, &bias, &h0, &c0].into_iter().chain(&ups).map(|b| b.data.clone()).collect();
    let (outs, mut out_ptrs) = output_bufs(sizes, &grads_on);
    // One raw pointer for x, from which the aliased dx is also derived.
    let x_raw = x.mut_ptr();
    if misaligned && misalign == 2 {
        out_ptrs[3] = out_ptrs[3].cast::<u8>().wrapping_add(2).cast::<f32>();
    }
    if aliased && alias == 1 {
        out_ptrs[5] = out_ptrs[4];
    }
    if aliased && alias == 2 {
        out_ptrs[0] = x_raw;
    }
    let opt = |on: bool, p: *const f32| if on { p } else { ptr::null() };
    let up_ptrs: [*const f32; 4] = std::array::from_fn(|k| {
        if !up_on[k] {
            ptr::null()
        } else if k == 0 && misalign == 1 {
            ups[0].ptr().cast::<u8>().wrapping_add(2).cast::<f32>()
        } else {
            ups[k].ptr()
        }
    });
    // SAFETY: every non-NULL buffer holds exactly its documented size (plus a canary) when the sizes are
    // sane. Otherwise the buffers are one-element dummies and `expected` is a failure that validation
    // reports before any access. A misaligned dy has one more element; a misaligned d_bias stays inside its
    // canary; an output aliased to x shares x's raw pointer, and x is compared with its copy afterwards.
    let status = unsafe {
        mrnn_lstm_keras_backward(
            if attrs_null { ptr::null() } else { &attrs },
            if x_null { ptr::null() } else { x_raw.cast_const() },
            if mask_on { mask.ptr() } else { ptr::null() },
            if kernel_null { ptr::null() } else { kernel.ptr() },
            if recurrent_null { ptr::null() } else { recurrent.ptr() },
            opt(bias_on, bias.ptr()),
            opt(h0_on, h0.ptr()),
            opt(c0_on, c0.ptr()),
            up_ptrs[0],
            up_ptrs[1],
            up_ptrs[2],
            up_ptrs[3],
            out_ptrs[0],
            out_ptrs[1],
            out_ptrs[2],
            out_ptrs[3],
            out_ptrs[4],
            out_ptrs[5],
        )
    };
    let what = format!(
        "mrnn_lstm_keras_backward({attrs:?}, nulls: attrs {attrs_null} x {x_null} kernel {kernel_null} recurrent \
         {recurrent_null}, upstream {up_on:?}, gradients {grads_on:?}, misaligned {misalign}, alias {alias})"
    );
    check_status(&what, status)?;
    for (buf, name) in outs.iter().zip(GRAD_NAMES) {
        buf.check_canary(name, canary).map_err(|e| format!("{what}: {e}"))?;
    }
    mask.check_canary("mask", CANARY_BYTE).map_err(|e| format!("{what}: {e}"))?;
    for (k, (before, buf)) in
        inputs_before.iter().zip([&x, &kernel, &recurrent, &bias, &h0, &c0].into_iter().chain(&ups)).enumerate()
    {
        same_bits(&format!("{what}: input {k} modified (after vs before)"), &buf.data, before)?;
    }
    if let Some(expected) = expected {
        if status != expected {
            return Err(format!("{what}: status {status}, expected {expected}: {}", last_error_message()));
        }
        if outs.iter().any(|b| b.values().iter().any(|v| v.to_bits() != UNSET_BITS)) {
            return Err(format!("{what}: an output was written by a call that failed validation"));
        }
        return Ok(());
    }
    if !grads_on.contains(&true) {
        // Validated, nothing asked for: nothing to compare.
        return if status == MRNN_OK {
            Ok(())
        } else {
            Err(format!("{what}: status {status}: {}", last_error_message()))
        };
    }
    let (b, t) = (bs as usize, ts as usize);
    let reference = (|| {
        let layer = reference_keras_layer(&attrs, kernel.values(), recurrent.values(), bias_on.then(|| bias.values()))?;
        let p = BackwardInputs {
            b,
            t,
            x: x.values(),
            mask: mask_on.then(|| mask.values()),
            h0: h0_on.then(|| h0.values()),
            c0: c0_on.then(|| c0.values()),
            up: std::array::from_fn(|k| up_on[k].then(|| ups[k].values())),
        };
        reference_grads(&layer, &p, sizes, &grads_on, attrs.num_threads as usize)
    })();
    let rust_status = reference.as_ref().map_or_else(|e| status_of(e.kind()), |_| MRNN_OK);
    if status != rust_status {
        return Err(format!("{what}: status {status}, the Rust API gives {rust_status}: {}", last_error_message()));
    }
    if let Ok(reference) = reference {
        for ((buf, expected), name) in outs.iter().zip(&reference).zip(GRAD_NAMES) {
            same_bits(&format!("{what}: {name} (C ABI vs the Rust API)"), buf.values(), expected)?;
        }
    }
    Ok(())
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
        self.bias.as_ref().map_or(ptr::null(), Buf::ptr)
    }
}

/// A tape under test and copies of the inputs of the run that made it.
struct TrainRun {
    tape: Owned<MrnnTape>,
    attrs: MrnnKerasLstmAttrs,
    x: Buf<f32>,
    mask: Option<Buf<u8>>,
    h0: Option<Buf<f32>>,
    c0: Option<Buf<f32>>,
    /// The handle that made it, and that handle's weights generation then.
    owner: usize,
    generation: usize,
    /// Index of the weights it was made with in the history.
    weights: usize,
}

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
    let mut history = vec![Weights::new(r, &created)];
    let mut handles = Vec::new();
    for _ in 0..2 {
        let w = &history[0];
        let mut out = ptr::null_mut();
        // SAFETY: the weights hold exactly the sizes of the (valid) attributes; `out` is a pointer slot.
        let status =
            unsafe { mrnn_keras_lstm_new(&created, w.kernel.ptr(), w.recurrent.ptr(), w.bias_ptr(), &mut out) };
        if status != MRNN_OK || out.is_null() {
            return Err(format!("mrnn_keras_lstm_new({created:?}): status {status}: {}", last_error_message()));
        }
        handles.push(Owned { ptr: out, free: mrnn_keras_lstm_free });
    }
    // Per handle: its weights generation and the index of its weights in `history`.
    let mut generation = [0_usize; 2];
    let mut current = [0_usize; 2];
    let mut runs: Vec<TrainRun> = Vec::new();

    for step in 0..2 + r.below(10) {
        let k = usize::from(rare(r, 4));
        let layer_null = rare(r, 48);
        let layer = if layer_null { ptr::null_mut() } else { handles[k].ptr };
        match r.u8() % 10 {
            0..=3 => {
                // run_train.
                let mut a = created;
                let [bs, ts] = run_sizes(r, [SANE[0], SANE[1]]);
                (a.batch_size, a.seq_length, a.num_threads) = (bs, ts, thread_count(r));
                match r.u8() % 24 {
                    0 => a.hidden_size += 1,
                    1 => a.go_backwards ^= 1,
                    2 => a.activation = code(r, 1),
                    _ => {}
                }
                let bad_value = keras_value_error(&a);
                let mismatch = keras_fixed_differ(&a, &created);
                let overflow = !bad_value
                    && !mismatch
                    && [&[bs, ts, is][..], &[bs, ts], &[bs, hs], &[bs, ts, hs]].iter().any(|d| overflows(d));
                let (attrs_null, mut x_null, tape_null) = (rare(r, 48), rare(r, 32), rare(r, 32));
                let (mask_on, h0_on, c0_on) = (r.bool(), r.u8().is_multiple_of(3), r.u8().is_multiple_of(3));
                let outs_on = [r.bool(), r.bool(), r.bool(), r.bool()];
                let (misalign_slot, alias) = (rare(r, 32), rare(r, 32));
                let sane = (0..=SANE[0]).contains(&bs) && (0..=SANE[1]).contains(&ts);
                let required_null = layer_null || attrs_null || x_null || tape_null;
                if predicted(required_null, bad_value || mismatch, overflow, false).is_none() && !sane {
                    x_null = true;
                }
                let required_null = required_null || x_null;
                let len = |dims: &[i64]| if sane { dims.iter().map(|&d| d as usize).product() } else { 1 };
                let (n_x, n_mask, n_s, n_y) = (len(&[bs, ts, is]), len(&[bs, ts]), len(&[bs, hs]), len(&[bs, ts, hs]));
                let aliased = alias && outs_on[2] && outs_on[3] && n_s > 0;
                let expected =
                    predicted(required_null, bad_value || mismatch, overflow, (misalign_slot && !tape_null) || aliased);
                let mut x = Buf::new(values(r, n_x, 2.0), canary);
                let mut mask = Buf::new(mask_values(r, n_mask), CANARY_BYTE);
                let mut h0 = Buf::new(values(r, n_s, 1.0), canary);
                let mut c0 = Buf::new(values(r, n_s, 1.0), canary);
                let (outs, mut ptrs) = output_bufs([n_y, n_s, n_s, n_s], &outs_on);
                if aliased {
                    ptrs[3] = ptrs[2];
                }
                let sentinel_tape = sentinel::<MrnnTape>();
                let mut slots = [sentinel_tape; 3];
                let slot_ptr: *mut *mut MrnnTape = if tape_null {
                    ptr::null_mut()
                } else if misalign_slot {
                    slots.as_mut_ptr().cast::<u8>().wrapping_add(1).cast()
                } else {
                    slots.as_mut_ptr()
                };
                let opt = |on: bool, p: *const f32| if on { p } else { ptr::null() };
                // SAFETY: `layer` is a live handle (or NULL); the buffers hold exactly their documented sizes
                // (plus a canary) when the sizes are sane, otherwise `expected` is a failure validation reports
                // before any access. A misaligned tape slot lies inside `slots`; aliased outputs inside theirs.
                let status = unsafe {
                    mrnn_keras_lstm_run_train(
                        layer,
                        if attrs_null { ptr::null() } else { &a },
                        if x_null { ptr::null() } else { x.ptr() },
                        if mask_on { mask.ptr() } else { ptr::null() },
                        opt(h0_on, h0.ptr()),
                        opt(c0_on, c0.ptr()),
                        ptrs[0],
                        ptrs[1],
                        ptrs[2],
                        ptrs[3],
                        slot_ptr,
                    )
                };
                let what = format!(
                    "step {step}: mrnn_keras_lstm_run_train on handle {k} ({a:?}, nulls: layer {layer_null} attrs \
                     {attrs_null} x {x_null} tape {tape_null}, misaligned slot {misalign_slot}, aliased {aliased})"
                );
                check_status(&what, status)?;
                for (buf, name) in outs.iter().zip(["y", "last_output", "h_n", "c_n"]) {
                    buf.check_canary(name, canary).map_err(|e| format!("{what}: {e}"))?;
                }
                if let Some(expected) = expected {
                    if status != expected {
                        return Err(format!("{what}: status {status}, expected {expected}: {}", last_error_message()));
                    }
                    if slots != [sentinel_tape; 3] {
                        return Err(format!("{what}: a failing run_train wrote the tape slot"));
                    }
                    if outs.iter().any(|b| b.values().iter().any(|v| v.to_bits() != UNSET_BITS)) {
                        return Err(format!("{what}: an output was written by a run that failed validation"));
                    }
                    continue;
                }
                if status != MRNN_OK || slots[0] == sentinel_tape || slots[0].is_null() {
                    return Err(format!("{what}: status {status}, tape {:p}: {}", slots[0], last_error_message()));
                }
                let tape = Owned { ptr: slots[0], free: mrnn_tape_free };
                // The outputs are mrnn_lstm_keras's with the handle's current weights.
                let w = &history[current[k]];
                let (one_shot, one_ptrs) = output_bufs([n_y, n_s, n_s, n_s], &outs_on);
                // SAFETY: the same valid buffers as the run above, and the handle's weights at their sizes.
                let one_status = unsafe {
                    mrnn_lstm_keras(
                        &a,
                        x.ptr(),
                        if mask_on { mask.ptr() } else { ptr::null() },
                        w.kernel.ptr(),
                        w.recurrent.ptr(),
                        w.bias_ptr(),
                        opt(h0_on, h0.ptr()),
                        opt(c0_on, c0.ptr()),
                        one_ptrs[0],
                        one_ptrs[1],
                        one_ptrs[2],
                        one_ptrs[3],
                    )
                };
                let names = ["y", "last_output", "h_n", "c_n"];
                check_same_as_one_shot(&what, "mrnn_lstm_keras", status, one_status, &outs, &one_shot, &names)?;
                // Keep copies for the one-shot backward; scribble over the caller's buffers.
                let keep = |b: &Buf<f32>| Buf::new(b.values().to_vec(), canary);
                let run = TrainRun {
                    tape,
                    attrs: a,
                    x: keep(&x),
                    mask: mask_on.then(|| Buf::new(mask.values().to_vec(), CANARY_BYTE)),
                    h0: h0_on.then(|| keep(&h0)),
                    c0: c0_on.then(|| keep(&c0)),
                    owner: k,
                    generation: generation[k],
                    weights: current[k],
                };
                for buf in [&mut x, &mut h0, &mut c0] {
                    let n = buf.len;
                    buf.data[..n].fill(f32::NAN);
                }
                let n = mask.len;
                mask.data[..n].fill(0);
                runs.push(run);
            }
            4..=6 => {
                // run_backward.
                let tape_null = runs.is_empty() || rare(r, 32);
                let run = (!tape_null).then(|| &runs[r.below(runs.len())]);
                let Some(run) = run else {
                    // SAFETY: NULL tape: rejected before anything else is read.
                    let status = unsafe {
                        mrnn_keras_lstm_run_backward(
                            layer,
                            ptr::null(),
                            ptr::null(),
                            ptr::null(),
                            ptr::null(),
                            ptr::null(),
                            ptr::null_mut(),
                            ptr::null_mut(),
                            ptr::null_mut(),
                            ptr::null_mut(),
                            ptr::null_mut(),
                            ptr::null_mut(),
                        )
                    };
                    if status != MRNN_ERR_NULL_POINTER {
                        return Err(format!("step {step}: run_backward with a NULL tape: status {status}"));
                    }
                    check_status("run_backward with a NULL tape", status)?;
                    continue;
                };
                let (b, t) = (run.attrs.batch_size as usize, run.attrs.seq_length as usize);
                let sizes = [b * t * iu, iu * 4 * hu, hu * 4 * hu, 4 * hu, b * hu, b * hu];
                let up_on = [!r.u8().is_multiple_of(4), r.bool(), r.bool(), r.bool()];
                let grads_on: [bool; 6] = std::array::from_fn(|_| !r.u8().is_multiple_of(3));
                let (misalign, alias) =
                    (rare(r, 32) && grads_on[1], rare(r, 32) && grads_on[4] && grads_on[5] && b > 0);
                let ups = [b * t * hu, b * hu, b * hu, b * hu].map(|n| Buf::new(values(r, n, 1.0), canary));
                let ups_before: Vec<Vec<f32>> = ups.iter().map(|u| u.data.clone()).collect();
                let (outs, mut ptrs) = output_bufs(sizes, &grads_on);
                if misalign {
                    ptrs[1] = ptrs[1].cast::<u8>().wrapping_add(2).cast();
                }
                if alias {
                    ptrs[5] = ptrs[4];
                }
                let foreign = run.owner != k;
                let stale = run.generation != generation[run.owner];
                let expected = if layer_null {
                    Some(MRNN_ERR_NULL_POINTER)
                } else if foreign || stale || misalign || alias {
                    Some(MRNN_ERR_BAD_ARGUMENT)
                } else {
                    None
                };
                let up_ptrs: [*const f32; 4] =
                    std::array::from_fn(|j| if up_on[j] { ups[j].ptr() } else { ptr::null() });
                // SAFETY: `layer` is a live handle (or NULL), `run.tape` a live tape; the upstream and output
                // buffers have the sizes of the tape's run (plus a canary, in which a misaligned d_kernel
                // stays).
                let status = unsafe {
                    mrnn_keras_lstm_run_backward(
                        layer,
                        run.tape.ptr,
                        up_ptrs[0],
                        up_ptrs[1],
                        up_ptrs[2],
                        up_ptrs[3],
                        ptrs[0],
                        ptrs[1],
                        ptrs[2],
                        ptrs[3],
                        ptrs[4],
                        ptrs[5],
                    )
                };
                let what = format!(
                    "step {step}: mrnn_keras_lstm_run_backward on handle {k} (layer NULL {layer_null}) of a tape of \
                     handle {} generation {} (now {}), {:?}, upstream {up_on:?}, gradients {grads_on:?}, misaligned \
                     {misalign}, aliased {alias}",
                    run.owner, run.generation, generation[run.owner], run.attrs
                );
                check_status(&what, status)?;
                for (buf, name) in outs.iter().zip(GRAD_NAMES) {
                    buf.check_canary(name, canary).map_err(|e| format!("{what}: {e}"))?;
                }
                for (u, before) in ups.iter().zip(&ups_before) {
                    same_bits(&format!("{what}: upstream modified"), &u.data, before)?;
                }
                if let Some(expected) = expected {
                    if status != expected {
                        return Err(format!("{what}: status {status}, expected {expected}: {}", last_error_message()));
                    }
                    let message = last_error_message();
                    if !layer_null && foreign && !message.contains("another handle") {
                        return Err(format!("{what}: a foreign tape, but the message is {message:?}"));
                    }
                    if !layer_null && !foreign && stale && !message.contains("stale") {
                        return Err(format!("{what}: a stale tape, but the message is {message:?}"));
                    }
                    if outs.iter().any(|b| b.values().iter().any(|v| v.to_bits() != UNSET_BITS)) {
                        return Err(format!("{what}: an output was written by a call that failed validation"));
                    }
                    continue;
                }
                // Bitwise the one-shot backward on the run's inputs and the weights it was made with.
                let w = &history[run.weights];
                let (one_shot, one_ptrs) = output_bufs(sizes, &grads_on);
                let opt_f = |b: &Option<Buf<f32>>| b.as_ref().map_or(ptr::null(), Buf::ptr);
                // SAFETY: the run's inputs and the weights have the sizes of the run's attributes; the
                // upstream and outputs those of the call above.
                let one_status = unsafe {
                    mrnn_lstm_keras_backward(
                        &run.attrs,
                        run.x.ptr(),
                        run.mask.as_ref().map_or(ptr::null(), Buf::ptr),
                        w.kernel.ptr(),
                        w.recurrent.ptr(),
                        w.bias_ptr(),
                        opt_f(&run.h0),
                        opt_f(&run.c0),
                        up_ptrs[0],
                        up_ptrs[1],
                        up_ptrs[2],
                        up_ptrs[3],
                        one_ptrs[0],
                        one_ptrs[1],
                        one_ptrs[2],
                        one_ptrs[3],
                        one_ptrs[4],
                        one_ptrs[5],
                    )
                };
                check_same_as_one_shot(
                    &what,
                    "mrnn_lstm_keras_backward",
                    status,
                    one_status,
                    &outs,
                    &one_shot,
                    &GRAD_NAMES,
                )?;
            }
            7 => {
                // set_weights.
                let w = Weights::new(r, &created);
                let (kernel_null, misalign) = (rare(r, 16), rare(r, 16));
                // A misaligned kernel: two bytes into a copy with one more element.
                let shifted = Buf::new(w.kernel.values().iter().copied().chain([0.0]).collect::<Vec<f32>>(), canary);
                let kernel = if kernel_null {
                    ptr::null()
                } else if misalign {
                    shifted.ptr().cast::<u8>().wrapping_add(2).cast()
                } else {
                    w.kernel.ptr()
                };
                let expected = if layer_null || kernel_null {
                    Some(MRNN_ERR_NULL_POINTER)
                } else if misalign {
                    Some(MRNN_ERR_BAD_ARGUMENT)
                } else {
                    None
                };
                // SAFETY: `layer` is a live handle (or NULL); the weights have the handle's sizes (a misaligned
                // kernel has one more element).
                let status = unsafe { mrnn_keras_lstm_set_weights(layer, kernel, w.recurrent.ptr(), w.bias_ptr()) };
                let what = format!(
                    "step {step}: mrnn_keras_lstm_set_weights on handle {k} (layer NULL {layer_null}, kernel NULL \
                     {kernel_null}, misaligned {misalign})"
                );
                check_status(&what, status)?;
                if status != expected.unwrap_or(MRNN_OK) {
                    return Err(format!("{what}: status {status}, expected {expected:?}: {}", last_error_message()));
                }
                if status == MRNN_OK {
                    history.push(w);
                    current[k] = history.len() - 1;
                    generation[k] += 1;
                }
            }
            8 => {
                if !runs.is_empty() {
                    // Frees the tape (Owned's drop).
                    runs.swap_remove(r.below(runs.len()));
                }
            }
            _ => {
                let Some(run) = (!runs.is_empty()).then(|| &runs[r.below(runs.len())]) else { continue };
                let mut bytes = u64::MAX;
                // SAFETY: a live tape and a `u64` slot.
                let status = unsafe { mrnn_tape_bytes(run.tape.ptr, &mut bytes) };
                let floor = (run.x.len * 4) as u64;
                if status != MRNN_OK || bytes < floor || bytes == u64::MAX {
                    return Err(format!(
                        "step {step}: mrnn_tape_bytes: status {status}, {bytes} bytes (x alone {floor})"
                    ));
                }
            }
        }
    }
    // Tapes may outlive their handles.
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
    let (attrs, sane, bad_value) = onnx_attrs(r);
    let [ts, bs, is, hs] = [attrs.seq_length, attrs.batch_size, attrs.input_size, attrs.hidden_size];
    let d_n: i64 = if attrs.direction == 2 { 2 } else { 1 };
    let overflow = !bad_value
        && [
            &[ts, bs, is][..],
            &[d_n, 4, hs, is],
            &[d_n, 4, hs, hs],
            &[d_n, 8, hs],
            &[d_n, 3, hs],
            &[d_n, bs, hs],
            &[ts, d_n, bs, hs],
        ]
        .iter()
        .any(|d| overflows(d));
    let rare = |r: &mut ByteReader<'_>, n: u8| r.u8().is_multiple_of(n);
    let attrs_null = rare(r, 48);
    let mut x_null = rare(r, 32);
    let w_null = rare(r, 32);
    let r_null = rare(r, 32);
    let b_on = r.bool();
    let lens_on = !r.u8().is_multiple_of(4);
    let (h0_on, c0_on, p_on) = (r.u8().is_multiple_of(3), r.u8().is_multiple_of(3), !r.u8().is_multiple_of(3));
    let up_on = [!r.u8().is_multiple_of(4), r.bool(), r.bool()];
    let mut grads_on: [bool; 7] = std::array::from_fn(|_| !r.u8().is_multiple_of(3));
    // dp is mostly asked for with peepholes only; without, it must be refused.
    if !p_on && !rare(r, 8) {
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
    if predicted(required_null, bad_value, overflow, false).is_none() && !sane {
        // Huge sizes that validate: never compute them.
        x_null = true;
    }
    let required_null = required_null || x_null;
    let len = |dims: &[i64]| -> usize {
        if sane {
            dims.iter().map(|&d| d as usize).product()
        } else {
            1
        }
    };
    let (n_x, n_w, n_r, n_b, n_p, n_s, n_y, n_l) = (
        len(&[ts, bs, is]),
        len(&[d_n, 4, hs, is]),
        len(&[d_n, 4, hs, hs]),
        len(&[d_n, 8, hs]),
        len(&[d_n, 3, hs]),
        len(&[d_n, bs, hs]),
        len(&[ts, d_n, bs, hs]),
        len(&[bs]),
    );
    let sizes = [n_x, n_w, n_r, n_b, n_s, n_s, n_p];
    let misaligned = match misalign {
        1 => up_on[0],
        2 => grads_on[3],
        3 => lens_on,
        _ => false,
    };
    let aliased = match alias {
        1 => grads_on[4] && grads_on[5] && n_s > 0,
        2 => grads_on[0] && n_x > 0,
        3 => grads_on[4] && h0_on && n_s > 0,
        _ => false,
    };
    let dp_without_p = grads_on[6] && !p_on;
    let lens_values: Vec<i32> = (0..n_l).map(|_| length_value(r, if sane { ts } else { 0 })).collect();
    let lens_bad = sane && lens_on && lens_values.iter().any(|&l| l < 0 || i64::from(l) > ts);
    let expected = predicted(required_null, bad_value, overflow, misaligned || aliased || dp_without_p)
        .or_else(|| lens_bad.then_some(MRNN_ERR_BAD_ARGUMENT));
    let only_dp = !required_null && !bad_value && !overflow && !misaligned && !aliased && dp_without_p;

    let canary = f32::from_bits(CANARY_BITS);
    let mut x = Buf::new(values(r, n_x, 2.0), canary);
    let w = Buf::new(values(r, n_w, 0.5), canary);
    let rr = Buf::new(values(r, n_r, 0.5), canary);
    let bias = Buf::new(values(r, n_b, 0.5), canary);
    let peep = Buf::new(values(r, n_p, 0.5), canary);
    let mut h0 = Buf::new(values(r, n_s, 1.0), canary);
    let c0 = Buf::new(values(r, n_s, 1.0), canary);
    let mut lens_data = lens_values;
    if misalign == 3 {
        lens_data.push(0);
    }
    let lens = Buf::new(lens_data, CANARY_I32);
    let ups = [n_y + usize::from(misalign == 1), n_s, n_s].map(|n| Buf::new(values(r, n, 1.0), canary));
    let inputs_before: Vec<Vec<f32>> =
        [&x, &w, &rr, &bias, &peep, &h0, &c0].into_iter().chain(&ups).map(|b| b.data.clone()).collect();
    let lens_before = lens.data.clone();
    let (outs, mut out_ptrs) = output_bufs(sizes, &grads_on);
    // Raw pointers for x and initial_h, from which the aliased outputs are also derived.
    let (x_raw, h0_raw) = (x.mut_ptr(), h0.mut_ptr());
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
    let opt = |on: bool, p: *const f32| if on { p } else { ptr::null() };
    let up_ptrs: [*const f32; 3] = std::array::from_fn(|k| {
        if !up_on[k] {
            ptr::null()
        } else if k == 0 && misalign == 1 {
            ups[0].ptr().cast::<u8>().wrapping_add(2).cast::<f32>()
        } else {
            ups[k].ptr()
        }
    });
    let lens_ptr = if !lens_on {
        ptr::null()
    } else if misalign == 3 {
        lens.ptr().cast::<u8>().wrapping_add(2).cast::<i32>()
    } else {
        lens.ptr()
    };
    // SAFETY: every non-NULL buffer holds exactly its documented size (plus a canary) when the sizes are
    // sane. Otherwise the buffers are one-element dummies and `expected` is a failure that validation
    // reports before any access. Misaligned dy and sequence_lens have one more element; a misaligned db
    // stays inside its canary; outputs aliased to x or initial_h share their raw pointers, and the inputs
    // are compared with their copies afterwards.
    let status = unsafe {
        mrnn_lstm_onnx_backward(
            if attrs_null { ptr::null() } else { &attrs },
            if x_null { ptr::null() } else { x_raw.cast_const() },
            if w_null { ptr::null() } else { w.ptr() },
            if r_null { ptr::null() } else { rr.ptr() },
            opt(b_on, bias.ptr()),
            lens_ptr,
            opt(h0_on, h0_raw.cast_const()),
            opt(c0_on, c0.ptr()),
            opt(p_on, peep.ptr()),
            up_ptrs[0],
            up_ptrs[1],
            up_ptrs[2],
            out_ptrs[0],
            out_ptrs[1],
            out_ptrs[2],
            out_ptrs[3],
            out_ptrs[4],
            out_ptrs[5],
            out_ptrs[6],
        )
    };
    let what = format!(
        "mrnn_lstm_onnx_backward({attrs:?}, nulls: attrs {attrs_null} x {x_null} w {w_null} r {r_null}, b {b_on} \
         p {p_on} h0 {h0_on} c0 {c0_on}, upstream {up_on:?}, gradients {grads_on:?}, misaligned {misalign}, alias \
         {alias}, lens {:?})",
        lens_on.then(|| lens.values())
    );
    check_status(&what, status)?;
    for (buf, name) in outs.iter().zip(ONNX_GRAD_NAMES) {
        buf.check_canary(name, canary).map_err(|e| format!("{what}: {e}"))?;
    }
    lens.check_canary("sequence_lens", CANARY_I32).map_err(|e| format!("{what}: {e}"))?;
    if lens.data != lens_before {
        return Err(format!("{what}: sequence_lens was modified"));
    }
    for (k, (before, buf)) in
        inputs_before.iter().zip([&x, &w, &rr, &bias, &peep, &h0, &c0].into_iter().chain(&ups)).enumerate()
    {
        same_bits(&format!("{what}: input {k} modified (after vs before)"), &buf.data, before)?;
    }
    if let Some(expected) = expected {
        if status != expected {
            return Err(format!("{what}: status {status}, expected {expected}: {}", last_error_message()));
        }
        if only_dp && !last_error_message().contains("no peepholes") {
            return Err(format!("{what}: dp without p, but the message is {:?}", last_error_message()));
        }
        if outs.iter().any(|b| b.values().iter().any(|v| v.to_bits() != UNSET_BITS)) {
            return Err(format!("{what}: an output was written by a call that failed validation"));
        }
        return Ok(());
    }
    if !grads_on.contains(&true) {
        // Validated, nothing asked for: nothing to compare.
        return if status == MRNN_OK {
            Ok(())
        } else {
            Err(format!("{what}: status {status}: {}", last_error_message()))
        };
    }
    let reference = (|| {
        let node = reference_onnx_node(
            &attrs,
            w.values(),
            rr.values(),
            b_on.then(|| bias.values()),
            p_on.then(|| peep.values()),
        )?;
        let p = OnnxBackwardInputs {
            t: ts as usize,
            b: bs as usize,
            x: x.values(),
            lens: lens_on.then(|| lens.values()),
            h0: h0_on.then(|| h0.values()),
            c0: c0_on.then(|| c0.values()),
            up: std::array::from_fn(|k| up_on[k].then(|| ups[k].values())),
        };
        reference_onnx_grads(&node, &p, sizes, &grads_on, attrs.num_threads as usize)
    })();
    let rust_status = reference.as_ref().map_or_else(|e| status_of(e.kind()), |_| MRNN_OK);
    if status != rust_status {
        return Err(format!("{what}: status {status}, the Rust API gives {rust_status}: {}", last_error_message()));
    }
    if let Ok(reference) = reference {
        for ((buf, expected), name) in outs.iter().zip(&reference).zip(ONNX_GRAD_NAMES) {
            same_bits(&format!("{what}: {name} (C ABI vs the Rust API)"), buf.values(), expected)?;
        }
    }
    Ok(())
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
        self.b.as_ref().map_or(ptr::null(), Buf::ptr)
    }

    fn p_ptr(&self) -> *const f32 {
        self.p.as_ref().map_or(ptr::null(), Buf::ptr)
    }
}

/// An ONNX tape under test and copies of the inputs of the run that made it.
struct OnnxTrainRun {
    tape: Owned<MrnnTape>,
    attrs: MrnnOnnxLstmAttrs,
    x: Buf<f32>,
    lens: Option<Buf<i32>>,
    h0: Option<Buf<f32>>,
    c0: Option<Buf<f32>>,
    /// The handle that made it, and that handle's weights generation then.
    owner: usize,
    generation: usize,
    /// Index of the weights it was made with in the history.
    weights: usize,
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
    let nul = ptr::null_mut();
    // SAFETY: a live handle, x of B*T*I floats, a pointer slot.
    let status = unsafe {
        mrnn_keras_lstm_run_train(
            layer.ptr,
            &a,
            x.as_ptr(),
            ptr::null(),
            ptr::null(),
            ptr::null(),
            nul,
            nul,
            nul,
            nul,
            &mut tape,
        )
    };
    if status != MRNN_OK || tape.is_null() {
        return Err(format!("mrnn_keras_lstm_run_train({a:?}): status {status}: {}", last_error_message()));
    }
    Ok((layer, Owned { ptr: tape, free: mrnn_tape_free }))
}

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
    let d_n: i64 = if created.direction == 2 { 2 } else { 1 };
    let (iu, hu, du) = (is as usize, hs as usize, d_n as usize);
    let canary = f32::from_bits(CANARY_BITS);
    let rare = |r: &mut ByteReader<'_>, n: u8| r.u8().is_multiple_of(n);
    let mut history = vec![OnnxWeights::new(r, &created)];
    let mut handles = Vec::new();
    for _ in 0..2 {
        let w = &history[0];
        let mut out = ptr::null_mut();
        // SAFETY: the weights hold exactly the sizes of the (valid) attributes; `out` is a pointer slot.
        let status = unsafe { mrnn_onnx_lstm_new(&created, w.w.ptr(), w.r.ptr(), w.b_ptr(), w.p_ptr(), &mut out) };
        if status != MRNN_OK || out.is_null() {
            return Err(format!("mrnn_onnx_lstm_new({created:?}): status {status}: {}", last_error_message()));
        }
        handles.push(Owned { ptr: out, free: mrnn_onnx_lstm_free });
    }
    let (keras, keras_tape) = keras_handle_and_tape(r)?;
    // Per handle: its weights generation and the index of its weights in `history`.
    let mut generation = [0_usize; 2];
    let mut current = [0_usize; 2];
    let mut runs: Vec<OnnxTrainRun> = Vec::new();
    const NAMES: [&str; 3] = ["Y", "Y_h", "Y_c"];

    for step in 0..2 + r.below(10) {
        let k = usize::from(rare(r, 4));
        let layer_null = rare(r, 48);
        let layer = if layer_null { ptr::null_mut() } else { handles[k].ptr };
        match r.u8() % 11 {
            0..=3 => {
                // run_train.
                let mut a = created;
                let [ts, bs] = run_sizes(r, [SANE_ONNX[0], SANE_ONNX[1]]);
                (a.seq_length, a.batch_size, a.num_threads) = (ts, bs, thread_count(r));
                match r.u8() % 24 {
                    0 => a.hidden_size += 1,
                    1 => a.layout ^= 1,
                    2 => a.direction = enum_value(r, 3),
                    _ => {}
                }
                let bad_value = onnx_value_error(&a);
                let mismatch = onnx_fixed_differ(&a, &created);
                let overflow = !bad_value
                    && !mismatch
                    && [&[ts, bs, is][..], &[d_n, bs, hs], &[ts, d_n, bs, hs]].iter().any(|d| overflows(d));
                let (attrs_null, mut x_null, tape_null) = (rare(r, 48), rare(r, 32), rare(r, 32));
                let (lens_on, h0_on, c0_on) =
                    (!r.u8().is_multiple_of(4), r.u8().is_multiple_of(3), r.u8().is_multiple_of(3));
                let outs_on = [r.bool(), r.bool(), r.bool()];
                let (misalign_slot, alias) = (rare(r, 32), rare(r, 32));
                let sane = (0..=SANE_ONNX[0]).contains(&ts) && (0..=SANE_ONNX[1]).contains(&bs);
                let required_null = layer_null || attrs_null || x_null || tape_null;
                if predicted(required_null, bad_value || mismatch, overflow, false).is_none() && !sane {
                    x_null = true;
                }
                let required_null = required_null || x_null;
                let len = |dims: &[i64]| if sane { dims.iter().map(|&d| d as usize).product() } else { 1 };
                let (n_x, n_s, n_y, n_l) =
                    (len(&[ts, bs, is]), len(&[d_n, bs, hs]), len(&[ts, d_n, bs, hs]), len(&[bs]));
                let aliased = alias && outs_on[1] && outs_on[2] && n_s > 0;
                let lens_values: Vec<i32> = (0..n_l).map(|_| length_value(r, if sane { ts } else { 0 })).collect();
                let lens_bad = sane && lens_on && lens_values.iter().any(|&l| l < 0 || i64::from(l) > ts);
                let expected =
                    predicted(required_null, bad_value || mismatch, overflow, (misalign_slot && !tape_null) || aliased)
                        .or_else(|| lens_bad.then_some(MRNN_ERR_BAD_ARGUMENT));
                let mut x = Buf::new(values(r, n_x, 2.0), canary);
                let mut lens = Buf::new(lens_values, CANARY_I32);
                let mut h0 = Buf::new(values(r, n_s, 1.0), canary);
                let mut c0 = Buf::new(values(r, n_s, 1.0), canary);
                let (outs, mut ptrs) = output_bufs([n_y, n_s, n_s], &outs_on);
                if aliased {
                    ptrs[2] = ptrs[1];
                }
                let sentinel_tape = sentinel::<MrnnTape>();
                let mut slots = [sentinel_tape; 3];
                let slot_ptr: *mut *mut MrnnTape = if tape_null {
                    ptr::null_mut()
                } else if misalign_slot {
                    slots.as_mut_ptr().cast::<u8>().wrapping_add(1).cast()
                } else {
                    slots.as_mut_ptr()
                };
                let opt = |on: bool, p: *const f32| if on { p } else { ptr::null() };
                let lens_ptr = if lens_on { lens.ptr() } else { ptr::null() };
                // SAFETY: `layer` is a live handle (or NULL); the buffers hold exactly their documented sizes
                // (plus a canary) when the sizes are sane, otherwise `expected` is a failure validation reports
                // before any access. A misaligned tape slot lies inside `slots`; aliased outputs inside theirs.
                let status = unsafe {
                    mrnn_onnx_lstm_run_train(
                        layer,
                        if attrs_null { ptr::null() } else { &a },
                        if x_null { ptr::null() } else { x.ptr() },
                        lens_ptr,
                        opt(h0_on, h0.ptr()),
                        opt(c0_on, c0.ptr()),
                        ptrs[0],
                        ptrs[1],
                        ptrs[2],
                        slot_ptr,
                    )
                };
                let what = format!(
                    "step {step}: mrnn_onnx_lstm_run_train on handle {k} ({a:?}, handle {created:?}, nulls: layer \
                     {layer_null} attrs {attrs_null} x {x_null} tape {tape_null}, misaligned slot {misalign_slot}, \
                     aliased {aliased}, lens {:?})",
                    lens_on.then(|| lens.values())
                );
                check_status(&what, status)?;
                for (buf, name) in outs.iter().zip(NAMES) {
                    buf.check_canary(name, canary).map_err(|e| format!("{what}: {e}"))?;
                }
                lens.check_canary("sequence_lens", CANARY_I32).map_err(|e| format!("{what}: {e}"))?;
                if let Some(expected) = expected {
                    if status != expected {
                        return Err(format!("{what}: status {status}, expected {expected}: {}", last_error_message()));
                    }
                    if slots != [sentinel_tape; 3] {
                        return Err(format!("{what}: a failing run_train wrote the tape slot"));
                    }
                    if outs.iter().any(|b| b.values().iter().any(|v| v.to_bits() != UNSET_BITS)) {
                        return Err(format!("{what}: an output was written by a run that failed validation"));
                    }
                    continue;
                }
                if status != MRNN_OK || slots[0] == sentinel_tape || slots[0].is_null() {
                    return Err(format!("{what}: status {status}, tape {:p}: {}", slots[0], last_error_message()));
                }
                let tape = Owned { ptr: slots[0], free: mrnn_tape_free };
                // The outputs are mrnn_lstm_onnx's with the handle's current weights.
                let w = &history[current[k]];
                let (one_shot, one_ptrs) = output_bufs([n_y, n_s, n_s], &outs_on);
                // SAFETY: the same valid buffers as the run above, and the handle's weights at their sizes.
                let one_status = unsafe {
                    mrnn_lstm_onnx(
                        &a,
                        x.ptr(),
                        w.w.ptr(),
                        w.r.ptr(),
                        w.b_ptr(),
                        lens_ptr,
                        opt(h0_on, h0.ptr()),
                        opt(c0_on, c0.ptr()),
                        w.p_ptr(),
                        one_ptrs[0],
                        one_ptrs[1],
                        one_ptrs[2],
                    )
                };
                check_same_as_one_shot(&what, "mrnn_lstm_onnx", status, one_status, &outs, &one_shot, &NAMES)?;
                // Keep copies for the one-shot backward; scribble over the caller's buffers.
                let keep = |b: &Buf<f32>| Buf::new(b.values().to_vec(), canary);
                let run = OnnxTrainRun {
                    tape,
                    attrs: a,
                    x: keep(&x),
                    lens: lens_on.then(|| Buf::new(lens.values().to_vec(), CANARY_I32)),
                    h0: h0_on.then(|| keep(&h0)),
                    c0: c0_on.then(|| keep(&c0)),
                    owner: k,
                    generation: generation[k],
                    weights: current[k],
                };
                for buf in [&mut x, &mut h0, &mut c0] {
                    let n = buf.len;
                    buf.data[..n].fill(f32::NAN);
                }
                let n = lens.len;
                lens.data[..n].fill(-1);
                runs.push(run);
            }
            4..=6 => {
                // run_backward.
                let tape_null = runs.is_empty() || rare(r, 32);
                let Some(run) = (!tape_null).then(|| &runs[r.below(runs.len())]) else {
                    // SAFETY: NULL tape: rejected before anything else is read.
                    let status = unsafe {
                        mrnn_onnx_lstm_run_backward(
                            layer,
                            ptr::null(),
                            ptr::null(),
                            ptr::null(),
                            ptr::null(),
                            ptr::null_mut(),
                            ptr::null_mut(),
                            ptr::null_mut(),
                            ptr::null_mut(),
                            ptr::null_mut(),
                            ptr::null_mut(),
                            ptr::null_mut(),
                        )
                    };
                    if status != MRNN_ERR_NULL_POINTER {
                        return Err(format!("step {step}: onnx run_backward with a NULL tape: status {status}"));
                    }
                    check_status("onnx run_backward with a NULL tape", status)?;
                    continue;
                };
                let (t, b) = (run.attrs.seq_length as usize, run.attrs.batch_size as usize);
                let sizes = [
                    t * b * iu,
                    du * 4 * hu * iu,
                    du * 4 * hu * hu,
                    du * 8 * hu,
                    du * b * hu,
                    du * b * hu,
                    du * 3 * hu,
                ];
                let up_on = [!r.u8().is_multiple_of(4), r.bool(), r.bool()];
                let mut grads_on: [bool; 7] = std::array::from_fn(|_| !r.u8().is_multiple_of(3));
                // The peepholes of the weights the backward would compute with (when the tape is not refused).
                let peepholes = history[current[k]].p.is_some();
                if !peepholes && !rare(r, 6) {
                    grads_on[6] = false;
                }
                let (misalign, alias) =
                    (rare(r, 32) && grads_on[1], rare(r, 32) && grads_on[4] && grads_on[5] && b > 0);
                let ups = [t * du * b * hu, du * b * hu, du * b * hu].map(|n| Buf::new(values(r, n, 1.0), canary));
                let ups_before: Vec<Vec<f32>> = ups.iter().map(|u| u.data.clone()).collect();
                let (outs, mut ptrs) = output_bufs(sizes, &grads_on);
                if misalign {
                    ptrs[1] = ptrs[1].cast::<u8>().wrapping_add(2).cast();
                }
                if alias {
                    ptrs[5] = ptrs[4];
                }
                let foreign = run.owner != k;
                let stale = run.generation != generation[run.owner];
                let dp_without = grads_on[6] && !peepholes;
                let expected = if layer_null {
                    Some(MRNN_ERR_NULL_POINTER)
                } else if foreign || stale || misalign || alias || dp_without {
                    Some(MRNN_ERR_BAD_ARGUMENT)
                } else {
                    None
                };
                let up_ptrs: [*const f32; 3] =
                    std::array::from_fn(|j| if up_on[j] { ups[j].ptr() } else { ptr::null() });
                // SAFETY: `layer` is a live handle (or NULL), `run.tape` a live tape; the upstream and output
                // buffers have the sizes of the tape's run (plus a canary, in which a misaligned dw stays).
                let status = unsafe {
                    mrnn_onnx_lstm_run_backward(
                        layer,
                        run.tape.ptr,
                        up_ptrs[0],
                        up_ptrs[1],
                        up_ptrs[2],
                        ptrs[0],
                        ptrs[1],
                        ptrs[2],
                        ptrs[3],
                        ptrs[4],
                        ptrs[5],
                        ptrs[6],
                    )
                };
                let what = format!(
                    "step {step}: mrnn_onnx_lstm_run_backward on handle {k} (layer NULL {layer_null}) of a tape of \
                     handle {} generation {} (now {}), {:?}, upstream {up_on:?}, gradients {grads_on:?}, misaligned \
                     {misalign}, aliased {alias}, peepholes {peepholes}",
                    run.owner, run.generation, generation[run.owner], run.attrs
                );
                check_status(&what, status)?;
                for (buf, name) in outs.iter().zip(ONNX_GRAD_NAMES) {
                    buf.check_canary(name, canary).map_err(|e| format!("{what}: {e}"))?;
                }
                for (u, before) in ups.iter().zip(&ups_before) {
                    same_bits(&format!("{what}: upstream modified"), &u.data, before)?;
                }
                if let Some(expected) = expected {
                    if status != expected {
                        return Err(format!("{what}: status {status}, expected {expected}: {}", last_error_message()));
                    }
                    let message = last_error_message();
                    if !layer_null && foreign && !message.contains("another handle") {
                        return Err(format!("{what}: a foreign tape, but the message is {message:?}"));
                    }
                    if !layer_null && !foreign && stale && !message.contains("stale") {
                        return Err(format!("{what}: a stale tape, but the message is {message:?}"));
                    }
                    if !layer_null && !foreign && !stale && !misalign && !alias && !message.contains("no peepholes") {
                        return Err(format!("{what}: dp without peepholes, but the message is {message:?}"));
                    }
                    if outs.iter().any(|b| b.values().iter().any(|v| v.to_bits() != UNSET_BITS)) {
                        return Err(format!("{what}: an output was written by a call that failed validation"));
                    }
                    continue;
                }
                // Bitwise the one-shot backward on the run's inputs and the weights it was made with.
                let w = &history[run.weights];
                let (one_shot, one_ptrs) = output_bufs(sizes, &grads_on);
                let opt_f = |b: &Option<Buf<f32>>| b.as_ref().map_or(ptr::null(), Buf::ptr);
                // SAFETY: the run's inputs and the weights have the sizes of the run's attributes; the
                // upstream and outputs those of the call above.
                let one_status = unsafe {
                    mrnn_lstm_onnx_backward(
                        &run.attrs,
                        run.x.ptr(),
                        w.w.ptr(),
                        w.r.ptr(),
                        w.b_ptr(),
                        run.lens.as_ref().map_or(ptr::null(), Buf::ptr),
                        opt_f(&run.h0),
                        opt_f(&run.c0),
                        w.p_ptr(),
                        up_ptrs[0],
                        up_ptrs[1],
                        up_ptrs[2],
                        one_ptrs[0],
                        one_ptrs[1],
                        one_ptrs[2],
                        one_ptrs[3],
                        one_ptrs[4],
                        one_ptrs[5],
                        one_ptrs[6],
                    )
                };
                check_same_as_one_shot(
                    &what,
                    "mrnn_lstm_onnx_backward",
                    status,
                    one_status,
                    &outs,
                    &one_shot,
                    &ONNX_GRAD_NAMES,
                )?;
            }
            7 => {
                // set_weights.
                let w = OnnxWeights::new(r, &created);
                let (w_null, misalign) = (rare(r, 16), rare(r, 16));
                // A misaligned w: two bytes into a copy with one more element.
                let shifted = Buf::new(w.w.values().iter().copied().chain([0.0]).collect::<Vec<f32>>(), canary);
                let w_ptr = if w_null {
                    ptr::null()
                } else if misalign {
                    shifted.ptr().cast::<u8>().wrapping_add(2).cast()
                } else {
                    w.w.ptr()
                };
                let expected = if layer_null || w_null {
                    Some(MRNN_ERR_NULL_POINTER)
                } else if misalign {
                    Some(MRNN_ERR_BAD_ARGUMENT)
                } else {
                    None
                };
                // SAFETY: `layer` is a live handle (or NULL); the weights have the handle's sizes (a misaligned
                // w has one more element).
                let status = unsafe { mrnn_onnx_lstm_set_weights(layer, w_ptr, w.r.ptr(), w.b_ptr(), w.p_ptr()) };
                let what = format!(
                    "step {step}: mrnn_onnx_lstm_set_weights on handle {k} (layer NULL {layer_null}, w NULL {w_null}, \
                     misaligned {misalign}, b {} p {})",
                    w.b.is_some(),
                    w.p.is_some()
                );
                check_status(&what, status)?;
                if status != expected.unwrap_or(MRNN_OK) {
                    return Err(format!("{what}: status {status}, expected {expected:?}: {}", last_error_message()));
                }
                if status == MRNN_OK {
                    history.push(w);
                    current[k] = history.len() - 1;
                    generation[k] += 1;
                }
            }
            8 => {
                if !runs.is_empty() {
                    // Frees the tape (Owned's drop).
                    runs.swap_remove(r.below(runs.len()));
                }
            }
            9 => {
                let Some(run) = (!runs.is_empty()).then(|| &runs[r.below(runs.len())]) else { continue };
                let mut bytes = u64::MAX;
                // SAFETY: a live tape and a `u64` slot.
                let status = unsafe { mrnn_tape_bytes(run.tape.ptr, &mut bytes) };
                let floor = ((run.x.len + run.lens.as_ref().map_or(0, |l| l.len)) * 4) as u64;
                if status != MRNN_OK || bytes < floor || bytes == u64::MAX {
                    return Err(format!(
                        "step {step}: mrnn_tape_bytes: status {status}, {bytes} bytes (x and lengths alone {floor})"
                    ));
                }
            }
            _ => {
                // A tape of the other kind: refused before any other argument is looked at.
                let onnx_tape = (!runs.is_empty() && r.bool()).then(|| &runs[r.below(runs.len())]);
                let nul = ptr::null_mut();
                // SAFETY: live handles and tapes; every upstream and output NULL.
                let (status, what) = unsafe {
                    match onnx_tape {
                        Some(run) => (
                            mrnn_keras_lstm_run_backward(
                                keras.ptr,
                                run.tape.ptr,
                                ptr::null(),
                                ptr::null(),
                                ptr::null(),
                                ptr::null(),
                                nul,
                                nul,
                                nul,
                                nul,
                                nul,
                                nul,
                            ),
                            "an ONNX tape on a Keras handle",
                        ),
                        None => (
                            mrnn_onnx_lstm_run_backward(
                                handles[k].ptr,
                                keras_tape.ptr,
                                ptr::null(),
                                ptr::null(),
                                ptr::null(),
                                nul,
                                nul,
                                nul,
                                nul,
                                nul,
                                nul,
                                nul,
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
