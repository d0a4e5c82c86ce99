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
//! Real buffers are allocated only when all sizes are small; with other sizes the harness passes
//! one-element dummies and the call must fail validation before reading them. Huge sizes that would
//! pass validation are paired with a NULL `x`, so no case ever asks for a huge computation.

use std::ffi::CStr;
use std::ptr;

use super::*;
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
    fuzz_onnx_handle(&mut ByteReader::new(&reversed[reversed.len() / 3..]))
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
