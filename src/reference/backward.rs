//! The reference backward: the oracle every fast gradient is tested against.
//!
//! Everything here is float64 with exact functions (`std` `exp`, `tanh`, `ln_1p`; not the crate's
//! rational f32 approximations), and written to be obviously right rather than fast: each forward is the
//! f32 [reference](super) computed in f64 (every step computed, the mask only selects), recording a
//! per-step tape `(h_prev, c_prev, z)`; each backward replays the forward and walks the tape in reverse.
//! Gradients are those of the forward semantics, masks included (SEMANTICS.md section 7, C_ABI.md
//! section 3): a Keras masked step carries `h` and `c` unchanged, so their gradients pass through it
//! unchanged; a masked output that repeats the previous output sends its upstream gradient to that
//! earlier output; `dx` at a masked or padded step is `+0.0`.
//!
//! - [`keras_lstm_f64`] / [`keras_lstm_backward`]: one Keras LSTM layer;
//! - [`onnx_lstm_f64`] / [`onnx_lstm_backward`]: the ONNX LSTM operator (layout 0);
//! - [`keras_bidirectional_f64`] / [`keras_bidirectional_backward`] and [`torch_lstm_f64`] /
//!   [`torch_lstm_backward`]: Keras `Bidirectional` and PyTorch packed stacks, composed from the two above;
//! - [`onnx_h_tape`] / [`onnx_h_backward`]: the ONNX `GRU` and `RNN` operators (cells [`GruParams64`],
//!   [`RnnParams64`], any [`HCell64`]).
//!
//! Parameters and their gradients are canonical ([`LstmParams64`], [`LstmGrads`]); convert gradients to a
//! framework's layout with [`LstmGrads::to_keras`], [`to_pytorch`](LstmGrads::to_pytorch) or
//! [`to_onnx`](LstmGrads::to_onnx). Inconsistent sizes panic: this is test code's oracle.

mod hcell;
mod stacks;

pub use hcell::{
    onnx_h_backward, onnx_h_tape, GruGrads64, GruParams64, GruTape, HCell64, OnnxHDir64, OnnxHGrads64, RnnGrads64,
    RnnParams64,
};

pub use stacks::{
    keras_bidirectional_backward, keras_bidirectional_f64, torch_lstm_backward, torch_lstm_f64, BidiGrads64,
    BidiResult64, BidiState64, BidiUpstream64, KerasBidi64, TorchGrads64, TorchResult64, TorchStack64, TorchUpstream64,
};

use crate::cells::activation::Activation;
use crate::cells::grads::{onnx_to_canon, swap_peephole_fo, transpose, LstmGrads};
use crate::cells::lstm::CellSpec;
use crate::cells::weights::LstmWeights;

/// The activation `a` at `x`, in f64 with exact functions.
pub fn act64(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
        Activation::Relu => {
            if x > 0.0 {
                x
            } else {
                0.0
            }
        }
        Activation::Affine { alpha, beta } => f64::from(alpha) * x + f64::from(beta),
        Activation::LeakyRelu { alpha } => {
            if x >= 0.0 {
                x
            } else {
                f64::from(alpha) * x
            }
        }
        Activation::ThresholdedRelu { alpha } => {
            if x > f64::from(alpha) {
                x
            } else {
                0.0
            }
        }
        Activation::ScaledTanh { alpha, beta } => f64::from(alpha) * (f64::from(beta) * x).tanh(),
        Activation::HardSigmoid { alpha, beta } => (f64::from(alpha) * x + f64::from(beta)).clamp(0.0, 1.0),
        Activation::Elu { alpha } => {
            if x >= 0.0 {
                x
            } else {
                f64::from(alpha) * x.exp_m1()
            }
        }
        Activation::Softsign => x / (1.0 + x.abs()),
        // ln(1 + e^x), stable for large x.
        Activation::Softplus => {
            if x > 0.0 {
                x + (-x).exp().ln_1p()
            } else {
                x.exp().ln_1p()
            }
        }
    }
}

/// The derivative of [`act64`] with respect to the pre-activation `x`. At kinks (C_ABI.md section 3):
/// `Relu'(0) = 0` (likewise `LeakyRelu'(0) = alpha`, `Elu'(0) = alpha`), `HardSigmoid' = alpha` strictly
/// inside its linear part and 0 elsewhere, `ThresholdedRelu'(alpha) = 0`.
pub fn dact64(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Sigmoid => {
            let s = act64(a, x);
            s * (1.0 - s)
        }
        Activation::Tanh => 1.0 - x.tanh().powi(2),
        Activation::Relu => f64::from(u8::from(x > 0.0)),
        Activation::Affine { alpha, .. } => f64::from(alpha),
        Activation::LeakyRelu { alpha } => {
            if x > 0.0 {
                1.0
            } else {
                f64::from(alpha)
            }
        }
        Activation::ThresholdedRelu { alpha } => f64::from(u8::from(x > f64::from(alpha))),
        Activation::ScaledTanh { alpha, beta } => {
            f64::from(alpha) * f64::from(beta) * (1.0 - (f64::from(beta) * x).tanh().powi(2))
        }
        Activation::HardSigmoid { alpha, beta } => {
            let y = f64::from(alpha) * x + f64::from(beta);
            if y > 0.0 && y < 1.0 {
                f64::from(alpha)
            } else {
                0.0
            }
        }
        Activation::Elu { alpha } => {
            if x > 0.0 {
                1.0
            } else {
                f64::from(alpha) * x.exp()
            }
        }
        Activation::Softsign => 1.0 / (1.0 + x.abs()).powi(2),
        Activation::Softplus => act64(Activation::Sigmoid, x),
    }
}

/// Distance from `x` to the nearest kink of `a` (a point where `a` or its derivative jumps): `|x|` for
/// Relu, LeakyRelu and Elu, `|x - alpha|` for ThresholdedRelu, the distance to either end of HardSigmoid's
/// linear part, infinity for smooth activations. Finite differences are only valid away from kinks.
pub fn kink_distance(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Relu | Activation::LeakyRelu { .. } | Activation::Elu { .. } => x.abs(),
        Activation::ThresholdedRelu { alpha } => (x - f64::from(alpha)).abs(),
        Activation::HardSigmoid { alpha, beta } => {
            let (al, be) = (f64::from(alpha), f64::from(beta));
            ((x + be / al).abs()).min((x - (1.0 - be) / al).abs())
        }
        _ => f64::INFINITY,
    }
}

/// ONNX `clip` in f64: `v` clamped to `[-clip, clip]`.
fn clip64(clip: Option<f32>, v: f64) -> f64 {
    clip.map_or(v, |c| v.clamp(-f64::from(c), f64::from(c)))
}

/// The derivative of [`clip64`]: 1 where `-clip < v < clip` (or without clip), else 0.
fn dclip64(clip: Option<f32>, v: f64) -> f64 {
    clip.map_or(1.0, |c| f64::from(u8::from(v.abs() < f64::from(c))))
}

/// One LSTM direction's parameters in canonical form (see [`LstmWeights`]), in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct LstmParams64 {
    /// Input size `I`.
    pub input: usize,
    /// Hidden size `H`.
    pub hidden: usize,
    /// `[I, 4H]`, gates i, f, c, o.
    pub kernel: Vec<f64>,
    /// `[H, 4H]`.
    pub recurrent: Vec<f64>,
    /// `[4H]` (input and recurrent biases summed).
    pub bias: Vec<f64>,
    /// `[3H]` in order i, f, o, if any.
    pub peephole: Option<Vec<f64>>,
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

impl LstmParams64 {
    /// The exact f64 copy of `w`.
    pub fn from_weights(w: &LstmWeights) -> Self {
        LstmParams64 {
            input: w.input_size(),
            hidden: w.hidden_size(),
            kernel: f64s(w.kernel()),
            recurrent: f64s(w.recurrent()),
            bias: f64s(w.bias()),
            peephole: w.peephole().map(f64s),
        }
    }

    /// From Keras' layout in f64 (as [`LstmWeights::from_keras`]); `None` bias is zeros.
    ///
    /// # Panics
    /// If a length disagrees with `input` and `hidden`.
    pub fn from_keras(input: usize, hidden: usize, kernel: &[f64], recurrent: &[f64], bias: Option<&[f64]>) -> Self {
        let g = 4 * hidden;
        assert_eq!((kernel.len(), recurrent.len()), (input * g, hidden * g), "kernel, recurrent_kernel");
        let bias = bias.map_or(vec![0.0; g], <[f64]>::to_vec);
        assert_eq!(bias.len(), g, "bias");
        LstmParams64 { input, hidden, kernel: kernel.to_vec(), recurrent: recurrent.to_vec(), bias, peephole: None }
    }

    /// From PyTorch's layout in f64 (as [`LstmWeights::from_pytorch`]): the bias is `bias_ih + bias_hh`.
    ///
    /// # Panics
    /// If a length disagrees with `input` and `hidden`.
    pub fn from_pytorch(
        input: usize,
        hidden: usize,
        weight_ih: &[f64],
        weight_hh: &[f64],
        bias_ih: Option<&[f64]>,
        bias_hh: Option<&[f64]>,
    ) -> Self {
        let g = 4 * hidden;
        let mut bias = vec![0.0; g];
        for b in [bias_ih, bias_hh].into_iter().flatten() {
            assert_eq!(b.len(), g, "bias");
            bias.iter_mut().zip(b).for_each(|(d, s)| *d += s);
        }
        let (kernel, recurrent) = (transpose(weight_ih, g, input), transpose(weight_hh, g, hidden));
        Self::from_keras(input, hidden, &kernel, &recurrent, Some(&bias))
    }

    /// From one direction of ONNX's `W [4H, I]`, `R [4H, H]`, `B [8H]`, `P [3H]` in f64 (as
    /// [`LstmWeights::from_onnx`]): gates i, o, f, c; the bias is `Wb + Rb`; peepholes i, o, f.
    ///
    /// # Panics
    /// If a length disagrees with `input` and `hidden`.
    pub fn from_onnx(input: usize, hidden: usize, w: &[f64], r: &[f64], b: Option<&[f64]>, p: Option<&[f64]>) -> Self {
        let g = 4 * hidden;
        let bias = b.map(|b| {
            assert_eq!(b.len(), 2 * g, "B");
            let (wb, rb) = (onnx_to_canon(&b[..g], hidden, 1), onnx_to_canon(&b[g..], hidden, 1));
            wb.iter().zip(&rb).map(|(x, y)| x + y).collect::<Vec<f64>>()
        });
        let (w, r) = (onnx_to_canon(w, hidden, input), onnx_to_canon(r, hidden, hidden));
        let mut out =
            Self::from_keras(input, hidden, &transpose(&w, g, input), &transpose(&r, g, hidden), bias.as_deref());
        out.peephole = p.map(|p| {
            assert_eq!(p.len(), 3 * hidden, "P");
            swap_peephole_fo(p, hidden)
        });
        out
    }

    /// Zero gradients shaped as these parameters.
    pub fn zero_grads(&self) -> LstmGrads<f64> {
        LstmGrads::zeros(self.input, self.hidden, self.peephole.is_some())
    }

    fn peep(&self, j: usize) -> [f64; 3] {
        let h = self.hidden;
        self.peephole.as_ref().map_or([0.0; 3], |p| [p[j], p[h + j], p[2 * h + j]])
    }
}

/// What one computed cell step keeps for its backward.
#[derive(Clone, Debug, PartialEq)]
pub struct StepTape {
    /// `[H]`: the hidden state the step read.
    pub h_prev: Vec<f64>,
    /// `[H]`: the cell state the step read.
    pub c_prev: Vec<f64>,
    /// `[4H]`: `z = x·K + h_prev·R + b`, gates i, f, c, o (before peepholes and clip).
    pub z: Vec<f64>,
}

impl StepTape {
    /// Per hidden unit, the arguments of the step's five activations: the gate arguments
    /// `[a_i, a_f, a_c, a_o]` (peepholes added, *before* clip) and the new cell state `c` (the argument of
    /// the output activation). With [`kink_distance`] and the clip bounds they tell how far the step is
    /// from a point where it is not differentiable.
    pub fn arguments(&self, p: &LstmParams64, cell: &CellSpec) -> Vec<[f64; 5]> {
        (0..p.hidden)
            .map(|j| {
                let u = unit(p, cell, &self.z, self.c_prev[j], j);
                [u.a[0], u.a[1], u.a[2], u.a[3], u.c]
            })
            .collect()
    }
}

/// One hidden unit of a cell step, every intermediate value.
struct Unit {
    /// Gate arguments i, f, c, o after peepholes, before clip.
    a: [f64; 4],
    i: f64,
    f: f64,
    g: f64,
    o: f64,
    c: f64,
    /// `h_act(c)`.
    hc: f64,
}

/// The cell update of unit `j` (see [`CellSpec`]'s definition).
fn unit(p: &LstmParams64, cell: &CellSpec, z: &[f64], c_prev: f64, j: usize) -> Unit {
    let h = p.hidden;
    let [pi, pf, po] = p.peep(j);
    let gate = |a: f64| act64(cell.gate, clip64(cell.clip, a));
    let (a_i, a_f, a_c) = (z[j] + pi * c_prev, z[h + j] + pf * c_prev, z[2 * h + j]);
    let i = gate(a_i);
    let f = if cell.input_forget { 1.0 - i } else { gate(a_f) };
    let g = act64(cell.cell, clip64(cell.clip, a_c));
    let c = f * c_prev + i * g;
    let a_o = z[3 * h + j] + po * c;
    let o = gate(a_o);
    Unit { a: [a_i, a_f, a_c, a_o], i, f, g, o, c, hc: act64(cell.output, c) }
}

/// One cell step on `x`: its tape and the new `(h, c)`.
fn step(p: &LstmParams64, cell: &CellSpec, x: &[f64], h: &[f64], c: &[f64]) -> (StepTape, Vec<f64>, Vec<f64>) {
    let g4 = 4 * p.hidden;
    let z: Vec<f64> = (0..g4)
        .map(|j| {
            let xk: f64 = x.iter().enumerate().map(|(k, v)| v * p.kernel[k * g4 + j]).sum();
            let hr: f64 = h.iter().enumerate().map(|(k, v)| v * p.recurrent[k * g4 + j]).sum();
            xk + hr + p.bias[j]
        })
        .collect();
    let (h_new, c_new) = (0..p.hidden)
        .map(|j| {
            let u = unit(p, cell, &z, c[j], j);
            (u.o * u.hc, u.c)
        })
        .unzip();
    (StepTape { h_prev: h.to_vec(), c_prev: c.to_vec(), z }, h_new, c_new)
}

/// The backward of one cell step: from the gradients `dh`, `dc` of its new state, accumulates the
/// parameter gradients into `g` and `dx`, and returns the gradients of `(h_prev, c_prev)`.
#[allow(clippy::too_many_arguments)]
fn step_backward(
    p: &LstmParams64,
    cell: &CellSpec,
    x: &[f64],
    s: &StepTape,
    dh: &[f64],
    dc: &[f64],
    g: &mut LstmGrads<f64>,
    dx: &mut [f64],
) -> (Vec<f64>, Vec<f64>) {
    let (hd, g4) = (p.hidden, 4 * p.hidden);
    let mut dz = vec![0.0; g4];
    let mut dc_prev = vec![0.0; hd];
    let gate = |a: f64| dact64(cell.gate, clip64(cell.clip, a)) * dclip64(cell.clip, a);
    for j in 0..hd {
        let u = unit(p, cell, &s.z, s.c_prev[j], j);
        let [pi, pf, po] = p.peep(j);
        let [a_i, a_f, a_c, a_o] = u.a;
        // h = o * h_act(c); o = gate(a_o) with a_o = z_o + p_o * c.
        let da_o = dh[j] * u.hc * gate(a_o);
        let d_c = dc[j] + dh[j] * u.o * dact64(cell.output, u.c) + da_o * po;
        // c = f * c_prev + i * g.
        let (di, dg, df) = (d_c * u.g, d_c * u.i, d_c * s.c_prev[j]);
        let (di, da_f) = if cell.input_forget { (di - df, 0.0) } else { (di, df * gate(a_f)) };
        let da_i = di * gate(a_i);
        let da_c = dg * dact64(cell.cell, clip64(cell.clip, a_c)) * dclip64(cell.clip, a_c);
        dc_prev[j] = d_c * u.f + da_i * pi + da_f * pf;
        [dz[j], dz[hd + j], dz[2 * hd + j], dz[3 * hd + j]] = [da_i, da_f, da_c, da_o];
        if let Some(dp) = &mut g.d_peephole {
            dp[j] += da_i * s.c_prev[j];
            dp[hd + j] += da_f * s.c_prev[j];
            dp[2 * hd + j] += da_o * u.c;
        }
    }
    for (k, &xk) in x.iter().enumerate() {
        for (j, &d) in dz.iter().enumerate() {
            g.d_kernel[k * g4 + j] += xk * d;
            dx[k] += p.kernel[k * g4 + j] * d;
        }
    }
    let mut dh_prev = vec![0.0; hd];
    for (k, &hk) in s.h_prev.iter().enumerate() {
        for (j, &d) in dz.iter().enumerate() {
            g.d_recurrent[k * g4 + j] += hk * d;
            dh_prev[k] += p.recurrent[k * g4 + j] * d;
        }
    }
    g.d_bias.iter_mut().zip(&dz).for_each(|(b, d)| *b += d);
    (dh_prev, dc_prev)
}

/// `v[i * n..(i + 1) * n]`, or zeros for `None`.
fn part(v: Option<&[f64]>, i: usize, n: usize) -> Vec<f64> {
    v.map_or(vec![0.0; n], |v| v[i * n..(i + 1) * n].to_vec())
}

/// What a Keras LSTM layer returns, in f64 (as [`KerasResult`](super::KerasResult)).
#[derive(Clone, Debug, PartialEq)]
pub struct KerasResult64 {
    /// `[B, T, H]`: the `return_sequences=True` output (processing order for `go_backwards`).
    pub y: Vec<f64>,
    /// `[B, H]`: `outputs[:, -1]`.
    pub last_output: Vec<f64>,
    /// `[B, H]`: hidden state of the last valid step (the initial state if there is none).
    pub h_n: Vec<f64>,
    /// `[B, H]`: cell state of the last valid step (the initial state if there is none).
    pub c_n: Vec<f64>,
}

/// Upstream gradients of a Keras LSTM layer's outputs; `None` = zeros.
#[derive(Clone, Copy, Debug, Default)]
pub struct KerasUpstream64<'a> {
    /// `[B, T, H]`, of [`KerasResult64::y`].
    pub dy: Option<&'a [f64]>,
    /// `[B, H]`, of [`KerasResult64::last_output`].
    pub d_last_output: Option<&'a [f64]>,
    /// `[B, H]`, of [`KerasResult64::h_n`].
    pub d_h_n: Option<&'a [f64]>,
    /// `[B, H]`, of [`KerasResult64::c_n`].
    pub d_c_n: Option<&'a [f64]>,
}

/// Gradients of a Keras LSTM layer's inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct KerasLstmGrads64 {
    /// `[B, T, I]`; `+0.0` at masked steps.
    pub dx: Vec<f64>,
    /// Parameter gradients, summed over the batch.
    pub params: LstmGrads<f64>,
    /// `[B, H]`: of the initial `h` (zeros when it was absent: the gradient at a zero initial state).
    pub d_initial_h: Vec<f64>,
    /// `[B, H]`: of the initial `c`.
    pub d_initial_c: Vec<f64>,
}

/// A Keras LSTM layer in f64 with its tape: `tape[b * T + t]` (`t` in original time order) is the step
/// that read `x[b, t]`, `None` at a masked step (computed, then discarded: nothing depends on it).
///
/// # Panics
/// If a buffer's length disagrees with the sizes.
#[allow(clippy::too_many_arguments)]
pub fn keras_lstm_tape(
    p: &LstmParams64,
    cell: &CellSpec,
    x: &[f64],
    mask: &[bool],
    batch: usize,
    time: usize,
    go_backwards: bool,
    zero_output_for_mask: bool,
    initial: Option<(&[f64], &[f64])>,
) -> (KerasResult64, Vec<Option<StepTape>>) {
    let (i, hd) = (p.input, p.hidden);
    assert_eq!((x.len(), mask.len()), (batch * time * i, batch * time), "x, mask");
    if let Some((h0, c0)) = initial {
        assert_eq!((h0.len(), c0.len()), (batch * hd, batch * hd), "initial state");
    }
    let mut out = KerasResult64 {
        y: vec![0.0; batch * time * hd],
        last_output: vec![0.0; batch * hd],
        h_n: vec![0.0; batch * hd],
        c_n: vec![0.0; batch * hd],
    };
    let mut tape = vec![None; batch * time];
    for b in 0..batch {
        let (mut h, mut c) = (part(initial.map(|s| s.0), b, hd), part(initial.map(|s| s.1), b, hd));
        let mut prev_out = vec![0.0; hd];
        for pos in 0..time {
            let t = if go_backwards { time - 1 - pos } else { pos };
            let (s, h_new, c_new) = step(p, cell, &x[(b * time + t) * i..(b * time + t + 1) * i], &h, &c);
            if mask[b * time + t] {
                (h, c) = (h_new, c_new);
                prev_out.clone_from(&h);
                tape[b * time + t] = Some(s);
            } else if zero_output_for_mask {
                prev_out = vec![0.0; hd];
            }
            out.y[(b * time + pos) * hd..(b * time + pos + 1) * hd].copy_from_slice(&prev_out);
        }
        out.last_output[b * hd..(b + 1) * hd].copy_from_slice(&prev_out);
        out.h_n[b * hd..(b + 1) * hd].copy_from_slice(&h);
        out.c_n[b * hd..(b + 1) * hd].copy_from_slice(&c);
    }
    (out, tape)
}

/// A Keras LSTM layer on `x [B, T, I]` with `mask [B, T]` (true = valid), in f64: the f32
/// [`keras_lstm`](super::keras_lstm) with exact arithmetic. `initial`: `(h0, c0)`, `[B, H]` each.
///
/// # Panics
/// If a buffer's length disagrees with the sizes.
#[allow(clippy::too_many_arguments)]
pub fn keras_lstm_f64(
    p: &LstmParams64,
    cell: &CellSpec,
    x: &[f64],
    mask: &[bool],
    batch: usize,
    time: usize,
    go_backwards: bool,
    zero_output_for_mask: bool,
    initial: Option<(&[f64], &[f64])>,
) -> KerasResult64 {
    keras_lstm_tape(p, cell, x, mask, batch, time, go_backwards, zero_output_for_mask, initial).0
}

/// The gradients of [`keras_lstm_f64`] (same inputs) for the upstream gradients `up`.
///
/// # Panics
/// If a buffer's length disagrees with the sizes.
#[allow(clippy::too_many_arguments)]
pub fn keras_lstm_backward(
    p: &LstmParams64,
    cell: &CellSpec,
    x: &[f64],
    mask: &[bool],
    batch: usize,
    time: usize,
    go_backwards: bool,
    zero_output_for_mask: bool,
    initial: Option<(&[f64], &[f64])>,
    up: &KerasUpstream64<'_>,
) -> KerasLstmGrads64 {
    let (i, hd) = (p.input, p.hidden);
    let (_, tape) = keras_lstm_tape(p, cell, x, mask, batch, time, go_backwards, zero_output_for_mask, initial);
    let mut g = KerasLstmGrads64 {
        dx: vec![0.0; x.len()],
        params: p.zero_grads(),
        d_initial_h: vec![0.0; batch * hd],
        d_initial_c: vec![0.0; batch * hd],
    };
    for b in 0..batch {
        let (mut dh, mut dc) = (part(up.d_h_n, b, hd), part(up.d_c_n, b, hd));
        // The gradient of the output at the current position (before adding its own upstream: that of
        // the outputs after it that repeat it).
        let mut d_out = part(up.d_last_output, b, hd);
        for pos in (0..time).rev() {
            let t = if go_backwards { time - 1 - pos } else { pos };
            if let Some(dy) = up.dy {
                let row = &dy[(b * time + pos) * hd..(b * time + pos + 1) * hd];
                d_out.iter_mut().zip(row).for_each(|(d, u)| *d += u);
            }
            match &tape[b * time + t] {
                // Valid: the output is this step's h.
                Some(s) => {
                    dh.iter_mut().zip(&d_out).for_each(|(d, o)| *d += o);
                    d_out.fill(0.0);
                    let dx = &mut g.dx[(b * time + t) * i..(b * time + t + 1) * i];
                    (dh, dc) = step_backward(
                        p,
                        cell,
                        &x[(b * time + t) * i..(b * time + t + 1) * i],
                        s,
                        &dh,
                        &dc,
                        &mut g.params,
                        dx,
                    );
                }
                // Masked: the output is a constant zero, or the previous output (d_out flows on to it).
                None if zero_output_for_mask => d_out.fill(0.0),
                None => {}
            }
        }
        // Whatever is left in d_out belongs to the zeros before the first valid step.
        g.d_initial_h[b * hd..(b + 1) * hd].copy_from_slice(&dh);
        g.d_initial_c[b * hd..(b + 1) * hd].copy_from_slice(&dc);
    }
    g
}

/// One direction of the ONNX operator: `(parameters, cell, reverse)`.
pub type OnnxDir64<'a> = (&'a LstmParams64, &'a CellSpec, bool);

/// The ONNX LSTM operator in f64 with its tape: `tape[(d * T + t) * B + b]` is the step of direction `d`
/// that read `x[t, b]`, `None` past the sequence's length.
///
/// # Panics
/// If a buffer's length disagrees with the sizes, or a length exceeds `seq_length`.
#[allow(clippy::type_complexity)]
pub fn onnx_lstm_tape(
    dirs: &[OnnxDir64<'_>],
    x: &[f64],
    seq_length: usize,
    batch: usize,
    lengths: &[usize],
    initial: Option<(&[f64], &[f64])>,
) -> ((Vec<f64>, Vec<f64>, Vec<f64>), Vec<Option<StepTape>>) {
    let (d_n, (i, hd)) = (dirs.len(), (dirs[0].0.input, dirs[0].0.hidden));
    assert_eq!((x.len(), lengths.len()), (seq_length * batch * i, batch), "x, lengths");
    assert!(lengths.iter().all(|&l| l <= seq_length), "a length exceeds seq_length");
    if let Some((h0, c0)) = initial {
        assert_eq!((h0.len(), c0.len()), (d_n * batch * hd, d_n * batch * hd), "initial state");
    }
    let mut y = vec![0.0; seq_length * d_n * batch * hd];
    let (mut y_h, mut y_c) = (vec![0.0; d_n * batch * hd], vec![0.0; d_n * batch * hd]);
    let mut tape = vec![None; d_n * seq_length * batch];
    for (d, &(p, cell, reverse)) in dirs.iter().enumerate() {
        for (b, &len) in lengths.iter().enumerate().filter(|(_, &l)| l > 0) {
            let s = d * batch + b;
            let (mut h, mut c) = (part(initial.map(|s| s.0), s, hd), part(initial.map(|s| s.1), s, hd));
            for k in 0..len {
                let t = if reverse { len - 1 - k } else { k };
                let st;
                (st, h, c) = step(p, cell, &x[(t * batch + b) * i..(t * batch + b + 1) * i], &h, &c);
                tape[(d * seq_length + t) * batch + b] = Some(st);
                let o = ((t * d_n + d) * batch + b) * hd;
                y[o..o + hd].copy_from_slice(&h);
            }
            y_h[s * hd..(s + 1) * hd].copy_from_slice(&h);
            y_c[s * hd..(s + 1) * hd].copy_from_slice(&c);
        }
    }
    ((y, y_h, y_c), tape)
}

/// The ONNX LSTM operator in f64, layout 0: the f32 [`onnx_lstm`](super::onnx_lstm) with exact
/// arithmetic. `x [T, B, I]`, `initial` `[D, B, H]` each; returns `(Y [T, D, B, H], Y_h, Y_c [D, B, H])`:
/// `Y` is `+0.0` past each length, a length-0 sequence gives `Y_h = Y_c = 0`.
///
/// # Panics
/// As [`onnx_lstm_tape`].
pub fn onnx_lstm_f64(
    dirs: &[OnnxDir64<'_>],
    x: &[f64],
    seq_length: usize,
    batch: usize,
    lengths: &[usize],
    initial: Option<(&[f64], &[f64])>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    onnx_lstm_tape(dirs, x, seq_length, batch, lengths, initial).0
}

/// Gradients of the ONNX LSTM operator's inputs (canonical parameters: convert with
/// [`LstmGrads::to_onnx_dirs`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OnnxGrads64 {
    /// `[T, B, I]`; `+0.0` past each length.
    pub dx: Vec<f64>,
    /// One per direction, summed over the batch.
    pub params: Vec<LstmGrads<f64>>,
    /// `[D, B, H]`: of `initial_h` (zero for a length-0 sequence, whose outputs ignore it).
    pub d_initial_h: Vec<f64>,
    /// `[D, B, H]`: of `initial_c`.
    pub d_initial_c: Vec<f64>,
}

/// The gradients of [`onnx_lstm_f64`] (same inputs) for upstream `dy [T, D, B, H]`, `dy_h`, `dy_c`
/// `[D, B, H]` (`None` = zeros). `dy` past a length is ignored: those outputs are constants.
///
/// # Panics
/// As [`onnx_lstm_tape`].
#[allow(clippy::too_many_arguments)]
pub fn onnx_lstm_backward(
    dirs: &[OnnxDir64<'_>],
    x: &[f64],
    seq_length: usize,
    batch: usize,
    lengths: &[usize],
    initial: Option<(&[f64], &[f64])>,
    dy: Option<&[f64]>,
    dy_h: Option<&[f64]>,
    dy_c: Option<&[f64]>,
) -> OnnxGrads64 {
    let (d_n, (i, hd)) = (dirs.len(), (dirs[0].0.input, dirs[0].0.hidden));
    let (_, tape) = onnx_lstm_tape(dirs, x, seq_length, batch, lengths, initial);
    let mut g = OnnxGrads64 {
        dx: vec![0.0; x.len()],
        params: dirs.iter().map(|(p, _, _)| p.zero_grads()).collect(),
        d_initial_h: vec![0.0; d_n * batch * hd],
        d_initial_c: vec![0.0; d_n * batch * hd],
    };
    for (d, &(p, cell, reverse)) in dirs.iter().enumerate() {
        for (b, &len) in lengths.iter().enumerate().filter(|(_, &l)| l > 0) {
            let s = d * batch + b;
            let (mut dh, mut dc) = (part(dy_h, s, hd), part(dy_c, s, hd));
            for k in (0..len).rev() {
                let t = if reverse { len - 1 - k } else { k };
                if let Some(dy) = dy {
                    let o = ((t * d_n + d) * batch + b) * hd;
                    dh.iter_mut().zip(&dy[o..o + hd]).for_each(|(a, u)| *a += u);
                }
                let st = tape[(d * seq_length + t) * batch + b].as_ref().expect("valid step on the tape");
                let xs = (t * batch + b) * i..(t * batch + b + 1) * i;
                (dh, dc) = step_backward(p, cell, &x[xs.clone()], st, &dh, &dc, &mut g.params[d], &mut g.dx[xs]);
            }
            g.d_initial_h[s * hd..(s + 1) * hd].copy_from_slice(&dh);
            g.d_initial_c[s * hd..(s + 1) * hd].copy_from_slice(&dc);
        }
    }
    g
}
