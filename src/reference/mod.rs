//! The reference LSTM: short and obviously right. It computes the cell at every step of every sequence,
//! padded or not, and lets the mask only *select*, exactly as Keras does (SEMANTICS.md section 2). It is the
//! oracle for the fast path, the fuzzers and every SIMD backend.

pub mod backward;

use crate::cells::lstm::CellSpec;
use crate::cells::weights::LstmWeights;
use crate::error::{check_len, checked_product, Result};

/// Everything a Keras LSTM layer can return.
#[derive(Clone, Debug, PartialEq)]
pub struct KerasResult {
    /// `[B, T, H]`: the `return_sequences=True` output (processing order for `go_backwards`).
    pub y: Vec<f32>,
    /// `[B, H]`: `outputs[:, -1]`, the `return_sequences=False` output.
    pub last_output: Vec<f32>,
    /// `[B, H]`: hidden state of the last valid step (the initial state if there is none).
    pub h_n: Vec<f32>,
    /// `[B, H]`: cell state of the last valid step (the initial state if there is none).
    pub c_n: Vec<f32>,
}

/// How the reference rounds each term of its dot products, to match a backend bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Rounding {
    /// A multiply and an add, two roundings (the portable backend).
    #[default]
    Separate,
    /// A fused multiply-add, one rounding (the AVX2 and AVX-512 backends).
    Fused,
}

impl Rounding {
    /// The rounding of a backend.
    pub fn of(backend: &crate::kernel::Backend) -> Self {
        Self::fused_if(backend.fused_multiply_add)
    }

    /// [`Fused`](Rounding::Fused) if `fused`, else [`Separate`](Rounding::Separate).
    pub(crate) const fn fused_if(fused: bool) -> Self {
        if fused {
            Rounding::Fused
        } else {
            Rounding::Separate
        }
    }

    /// `acc + a * b`, rounded as this mode says.
    #[inline(always)]
    pub(crate) fn mul_add(self, a: f32, b: f32, acc: f32) -> f32 {
        match self {
            Rounding::Separate => acc + a * b,
            Rounding::Fused => a.mul_add(b, acc),
        }
    }
}

/// Pre-activations `z = (x·K + h·R) + b` for all four gates, in Keras' summation order.
fn gates(w: &LstmWeights, x: &[f32], h: &[f32], rounding: Rounding) -> Vec<f32> {
    let g4 = 4 * w.hidden_size();
    let xk = vec_mat(x, w.kernel(), g4, rounding);
    let hr = vec_mat(h, w.recurrent(), g4, rounding);
    xk.iter().zip(&hr).zip(w.bias()).map(|((a, b), c)| (a + b) + c).collect()
}

/// `v · m` for `m [v.len()][cols]`: each column's sum left to right from `+0.0`, every term rounded as
/// `rounding` says (the kernels' dot products, bit for bit).
pub(crate) fn vec_mat(v: &[f32], m: &[f32], cols: usize, rounding: Rounding) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if rounding == Rounding::Fused && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: FMA detected just above. Only speed differs: `f32::mul_add` is the exact fused
        // operation either way, compiled to one instruction here instead of a libm call.
        return unsafe { vec_mat_fma(v, m, cols) };
    }
    vec_mat_plain(v, m, cols, rounding)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn vec_mat_fma(v: &[f32], m: &[f32], cols: usize) -> Vec<f32> {
    vec_mat_plain(v, m, cols, Rounding::Fused)
}

#[inline(always)]
fn vec_mat_plain(v: &[f32], m: &[f32], cols: usize, rounding: Rounding) -> Vec<f32> {
    assert!(m.len() >= v.len() * cols);
    // Plain loops (no closures), so the FMA-enabled caller compiles them with its instruction set.
    let mut out = vec![0.0f32; cols];
    for (j, o) in out.iter_mut().enumerate() {
        let mut acc = 0.0f32;
        for (k, &a) in v.iter().enumerate() {
            acc = rounding.mul_add(a, m[k * cols + j], acc);
        }
        *o = acc;
    }
    out
}

/// One cell step for one sequence: returns the new `(h, c)`.
pub fn cell_step(
    w: &LstmWeights,
    cell: &CellSpec,
    x: &[f32],
    h: &[f32],
    c: &[f32],
    rounding: Rounding,
) -> (Vec<f32>, Vec<f32>) {
    let hd = w.hidden_size();
    let z = gates(w, x, h, rounding);
    (0..hd)
        .map(|j| {
            let p = w.peephole().map(|p| [p[j], p[hd + j], p[2 * hd + j]]);
            cell.update_rounded([z[j], z[hd + j], z[2 * hd + j], z[3 * hd + j]], p, c[j], rounding)
        })
        .unzip()
}

/// A Keras LSTM layer on `x [B, T, I]` with `mask [B, T]` (true = valid), every step computed.
///
/// # Errors
/// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) when a buffer disagrees with the sizes.
#[allow(clippy::too_many_arguments)]
pub fn keras_lstm(
    w: &LstmWeights,
    cell: &CellSpec,
    x: &[f32],
    mask: &[bool],
    batch: usize,
    time: usize,
    go_backwards: bool,
    zero_output_for_mask: bool,
    initial: Option<(&[f32], &[f32])>,
    rounding: Rounding,
) -> Result<KerasResult> {
    let (i, hd) = (w.input_size(), w.hidden_size());
    check_len("x", x.len(), checked_product(&[batch, time, i], "x")?)?;
    check_len("mask", mask.len(), checked_product(&[batch, time], "mask")?)?;
    let state_len = checked_product(&[batch, hd], "state")?;
    if let Some((h0, c0)) = initial {
        check_len("initial_h", h0.len(), state_len)?;
        check_len("initial_c", c0.len(), state_len)?;
    }
    let mut out = KerasResult {
        y: vec![0.0; checked_product(&[batch, time, hd], "y")?],
        last_output: vec![0.0; state_len],
        h_n: vec![0.0; state_len],
        c_n: vec![0.0; state_len],
    };
    for b in 0..batch {
        let (mut h, mut c) = match initial {
            Some((h0, c0)) => (h0[b * hd..(b + 1) * hd].to_vec(), c0[b * hd..(b + 1) * hd].to_vec()),
            None => (vec![0.0; hd], vec![0.0; hd]),
        };
        let mut prev_out = vec![0.0; hd];
        for p in 0..time {
            let t = if go_backwards { time - 1 - p } else { p };
            let xt = &x[(b * time + t) * i..(b * time + t + 1) * i];
            let (h_new, c_new) = cell_step(w, cell, xt, &h, &c, rounding);
            let output = if mask[b * time + t] {
                h = h_new;
                c = c_new;
                h.clone()
            } else if zero_output_for_mask {
                vec![0.0; hd]
            } else {
                prev_out.clone()
            };
            out.y[(b * time + p) * hd..(b * time + p + 1) * hd].copy_from_slice(&output);
            prev_out = output;
        }
        out.last_output[b * hd..(b + 1) * hd].copy_from_slice(&prev_out);
        out.h_n[b * hd..(b + 1) * hd].copy_from_slice(&h);
        out.c_n[b * hd..(b + 1) * hd].copy_from_slice(&c);
    }
    Ok(out)
}

/// The ONNX LSTM operator, plainly: for each direction and sequence, the valid steps `0..len` in order
/// (descending for reverse), outputs in original time order, `+0.0` past each length, `Y_h`/`Y_c` the
/// last processed state, zeros for a length-0 sequence. Layout 0: `x [T, B, I]`, initial states
/// `[D, B, H]`; returns `(y [T, D, B, H], y_h [D, B, H], y_c [D, B, H])`.
///
/// `dirs[d] = (weights, cell, reverse)`.
///
/// # Errors
/// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) or
/// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for inconsistent sizes or lengths.
#[allow(clippy::type_complexity)]
pub fn onnx_lstm(
    dirs: &[(&LstmWeights, &CellSpec, bool)],
    x: &[f32],
    seq_length: usize,
    batch: usize,
    lengths: &[usize],
    initial: Option<(&[f32], &[f32])>,
    rounding: Rounding,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let d_n = dirs.len();
    let (i, hd) = match dirs.first() {
        Some((w, _, _)) => (w.input_size(), w.hidden_size()),
        None => return Err(crate::Error::argument("no direction")),
    };
    check_len("x", x.len(), checked_product(&[seq_length, batch, i], "x")?)?;
    check_len("sequence_lens", lengths.len(), batch)?;
    if lengths.iter().any(|&l| l > seq_length) {
        return Err(crate::Error::argument("a length exceeds seq_length"));
    }
    let state_len = checked_product(&[d_n, batch, hd], "state")?;
    if let Some((h0, c0)) = initial {
        check_len("initial_h", h0.len(), state_len)?;
        check_len("initial_c", c0.len(), state_len)?;
    }
    let mut y = vec![0.0; checked_product(&[seq_length, d_n, batch, hd], "y")?];
    let mut y_h = vec![0.0; state_len];
    let mut y_c = vec![0.0; state_len];
    for (d, &(w, cell, reverse)) in dirs.iter().enumerate() {
        for (b, &len) in lengths.iter().enumerate() {
            if len == 0 {
                continue;
            }
            let s = (d * batch + b) * hd;
            let (mut h, mut c) = match initial {
                Some((h0, c0)) => (h0[s..s + hd].to_vec(), c0[s..s + hd].to_vec()),
                None => (vec![0.0; hd], vec![0.0; hd]),
            };
            for k in 0..len {
                let t = if reverse { len - 1 - k } else { k };
                (h, c) = cell_step(w, cell, &x[(t * batch + b) * i..(t * batch + b + 1) * i], &h, &c, rounding);
                let o = ((t * d_n + d) * batch + b) * hd;
                y[o..o + hd].copy_from_slice(&h);
            }
            y_h[s..s + hd].copy_from_slice(&h);
            y_c[s..s + hd].copy_from_slice(&c);
        }
    }
    Ok((y, y_h, y_c))
}

/// One step of a cell whose only state is `h` (GRU, simple RNN): `(x, h) -> h'`.
pub type HStep<'a> = &'a dyn Fn(&[f32], &[f32]) -> Vec<f32>;

/// The ONNX `GRU` or `RNN` operator, plainly, as [`onnx_lstm`] without the cell state: layout 0,
/// `x [T, B, I]`, `initial_h [D, B, H]`; returns `(y [T, D, B, H], y_h [D, B, H])`. `dirs[d] = (step,
/// reverse)`.
///
/// # Errors
/// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) or
/// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for inconsistent sizes or lengths.
#[allow(clippy::too_many_arguments)]
pub fn onnx_h_only(
    dirs: &[(HStep<'_>, bool)],
    (input, hidden): (usize, usize),
    x: &[f32],
    seq_length: usize,
    batch: usize,
    lengths: &[usize],
    initial_h: Option<&[f32]>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (d_n, i, hd) = (dirs.len(), input, hidden);
    check_len("x", x.len(), checked_product(&[seq_length, batch, i], "x")?)?;
    check_len("sequence_lens", lengths.len(), batch)?;
    if lengths.iter().any(|&l| l > seq_length) {
        return Err(crate::Error::argument("a length exceeds seq_length"));
    }
    let state_len = checked_product(&[d_n, batch, hd], "state")?;
    if let Some(h0) = initial_h {
        check_len("initial_h", h0.len(), state_len)?;
    }
    let mut y = vec![0.0; checked_product(&[seq_length, d_n, batch, hd], "y")?];
    let mut y_h = vec![0.0; state_len];
    for (d, &(step, reverse)) in dirs.iter().enumerate() {
        for (b, &len) in lengths.iter().enumerate().filter(|(_, &len)| len > 0) {
            let s = (d * batch + b) * hd;
            let mut h = initial_h.map_or(vec![0.0; hd], |h0| h0[s..s + hd].to_vec());
            for k in 0..len {
                let t = if reverse { len - 1 - k } else { k };
                h = step(&x[(t * batch + b) * i..(t * batch + b + 1) * i], &h);
                let o = ((t * d_n + d) * batch + b) * hd;
                y[o..o + hd].copy_from_slice(&h);
            }
            y_h[s..s + hd].copy_from_slice(&h);
        }
    }
    Ok((y, y_h))
}

/// A Keras layer whose cell's only state is `h` (`GRU`, `SimpleRNN`) on `x [B, T, I]` with `mask [B, T]`,
/// as [`keras_lstm`]: every step computed, the mask selects. Returns `c_n` empty.
///
/// # Errors
/// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) when a buffer disagrees with the sizes.
#[allow(clippy::too_many_arguments)]
pub fn keras_h_only(
    step: HStep<'_>,
    (input, hidden): (usize, usize),
    x: &[f32],
    mask: &[bool],
    (batch, time): (usize, usize),
    go_backwards: bool,
    zero_output_for_mask: bool,
    initial_h: Option<&[f32]>,
) -> Result<KerasResult> {
    let (i, hd) = (input, hidden);
    check_len("x", x.len(), checked_product(&[batch, time, i], "x")?)?;
    check_len("mask", mask.len(), checked_product(&[batch, time], "mask")?)?;
    let state_len = checked_product(&[batch, hd], "state")?;
    if let Some(h0) = initial_h {
        check_len("initial_h", h0.len(), state_len)?;
    }
    let mut out = KerasResult {
        y: vec![0.0; checked_product(&[batch, time, hd], "y")?],
        last_output: vec![0.0; state_len],
        h_n: vec![0.0; state_len],
        c_n: Vec::new(),
    };
    for b in 0..batch {
        let mut h = initial_h.map_or(vec![0.0; hd], |h0| h0[b * hd..(b + 1) * hd].to_vec());
        let mut prev_out = vec![0.0; hd];
        for p in 0..time {
            let t = if go_backwards { time - 1 - p } else { p };
            let h_new = step(&x[(b * time + t) * i..(b * time + t + 1) * i], &h);
            let output = if mask[b * time + t] {
                h = h_new;
                h.clone()
            } else if zero_output_for_mask {
                vec![0.0; hd]
            } else {
                prev_out.clone()
            };
            out.y[(b * time + p) * hd..(b * time + p + 1) * hd].copy_from_slice(&output);
            prev_out = output;
        }
        out.last_output[b * hd..(b + 1) * hd].copy_from_slice(&prev_out);
        out.h_n[b * hd..(b + 1) * hd].copy_from_slice(&h);
    }
    Ok(out)
}
