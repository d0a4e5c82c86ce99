//! Keras `Bidirectional` and PyTorch packed stacks in f64, composed from the single-layer references by
//! the chain rule.

use super::{
    keras_lstm_backward, keras_lstm_f64, onnx_lstm_backward, onnx_lstm_f64, KerasUpstream64, LstmParams64, OnnxDir64,
};
use crate::cells::grads::LstmGrads;
use crate::cells::lstm::CellSpec;
use crate::frameworks::bidirectional::MergeMode;

/// `[a, b, c] -> [b, a, c]`.
fn swap_axes(v: &[f64], a: usize, b: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for i in 0..a {
        for j in 0..b {
            out[(j * a + i) * c..(j * a + i + 1) * c].copy_from_slice(&v[(i * b + j) * c..(i * b + j + 1) * c]);
        }
    }
    out
}

/// `[B, T, H]` with the time axis reversed.
fn flip_time(v: &[f64], batch: usize, time: usize, h: usize) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for b in 0..batch {
        for p in 0..time {
            let (src, dst) = ((b * time + p) * h, (b * time + time - 1 - p) * h);
            out[dst..dst + h].copy_from_slice(&v[src..src + h]);
        }
    }
    out
}

/// A Keras `Bidirectional(LSTM(...))` in f64 (as
/// [`KerasBidirectional`](crate::bidirectional::KerasBidirectional)): both layers see the same mask and
/// run with `zero_output_for_mask = return_sequences`; the backward layer has `go_backwards` toggled and
/// its sequence output is flipped along the full time axis before the merge.
#[derive(Clone, Copy, Debug)]
pub struct KerasBidi64<'a> {
    /// The forward layer's parameters.
    pub forward: &'a LstmParams64,
    /// The backward layer's parameters.
    pub backward: &'a LstmParams64,
    /// The cell of both layers (Keras: `CellSpec::keras(activation, recurrent_activation)`).
    pub cell: CellSpec,
    /// The wrapped layer's `go_backwards` (the backward layer gets the opposite).
    pub go_backwards: bool,
    /// How the two outputs are merged.
    pub merge: MergeMode,
    /// Whether the layer returns sequences (`[B, T, W]`) or last outputs (`[B, W]`).
    pub return_sequences: bool,
}

/// Initial states of both directions, `[B, H]` each.
#[derive(Clone, Copy, Debug)]
pub struct BidiState64<'a> {
    /// Forward `h`.
    pub h_f: &'a [f64],
    /// Forward `c`.
    pub c_f: &'a [f64],
    /// Backward `h`.
    pub h_b: &'a [f64],
    /// Backward `c`.
    pub c_b: &'a [f64],
}

/// What a Keras `Bidirectional` LSTM returns, in f64 (as
/// [`BidirectionalResult`](crate::bidirectional::BidirectionalResult)).
#[derive(Clone, Debug, PartialEq)]
pub struct BidiResult64 {
    /// The merged output, `[B, T, W]` or `[B, W]` (`W = 2H` for concat, else `H`); empty for
    /// [`MergeMode::None`].
    pub y: Vec<f64>,
    /// Forward output (only for [`MergeMode::None`]).
    pub y_forward: Vec<f64>,
    /// Backward output in original time order (only for [`MergeMode::None`]).
    pub y_backward: Vec<f64>,
    /// Forward final `h` `[B, H]`.
    pub h_f: Vec<f64>,
    /// Forward final `c`.
    pub c_f: Vec<f64>,
    /// Backward final `h`.
    pub h_b: Vec<f64>,
    /// Backward final `c`.
    pub c_b: Vec<f64>,
}

/// Upstream gradients of a [`BidiResult64`], shaped as its fields; `None` = zeros.
#[derive(Clone, Copy, Debug, Default)]
pub struct BidiUpstream64<'a> {
    /// Of the merged `y` (every merge mode but [`MergeMode::None`]).
    pub dy: Option<&'a [f64]>,
    /// Of `y_forward` ([`MergeMode::None`] only).
    pub dy_forward: Option<&'a [f64]>,
    /// Of `y_backward` ([`MergeMode::None`] only).
    pub dy_backward: Option<&'a [f64]>,
    /// Of `h_f`.
    pub d_h_f: Option<&'a [f64]>,
    /// Of `c_f`.
    pub d_c_f: Option<&'a [f64]>,
    /// Of `h_b`.
    pub d_h_b: Option<&'a [f64]>,
    /// Of `c_b`.
    pub d_c_b: Option<&'a [f64]>,
}

/// Gradients of a Keras `Bidirectional` LSTM's inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct BidiGrads64 {
    /// `[B, T, I]`; `+0.0` at masked steps.
    pub dx: Vec<f64>,
    /// The forward layer's parameter gradients.
    pub forward: LstmGrads<f64>,
    /// The backward layer's parameter gradients.
    pub backward: LstmGrads<f64>,
    /// Of the initial forward `h` `[B, H]` (zeros initial state when absent).
    pub d_h_f: Vec<f64>,
    /// Of the initial forward `c`.
    pub d_c_f: Vec<f64>,
    /// Of the initial backward `h`.
    pub d_h_b: Vec<f64>,
    /// Of the initial backward `c`.
    pub d_c_b: Vec<f64>,
}

/// An optional initial `(h, c)`.
type Initial<'a> = Option<(&'a [f64], &'a [f64])>;

/// The two layers of a bidirectional Keras LSTM: `(parameters, go_backwards, initial state)`.
fn bidi_layers<'a>(
    layer: &KerasBidi64<'a>,
    initial: Option<BidiState64<'a>>,
) -> [(&'a LstmParams64, bool, Initial<'a>); 2] {
    [
        (layer.forward, layer.go_backwards, initial.map(|s| (s.h_f, s.c_f))),
        (layer.backward, !layer.go_backwards, initial.map(|s| (s.h_b, s.c_b))),
    ]
}

/// A Keras `Bidirectional` LSTM on `x [B, T, I]` with `mask [B, T]`, in f64.
///
/// # Panics
/// If a buffer's length disagrees with the sizes.
pub fn keras_bidirectional_f64(
    layer: &KerasBidi64<'_>,
    x: &[f64],
    mask: &[bool],
    batch: usize,
    time: usize,
    initial: Option<BidiState64<'_>>,
) -> BidiResult64 {
    let (h, rs) = (layer.forward.hidden, layer.return_sequences);
    let [f, b] = bidi_layers(layer, initial)
        .map(|(p, gb, init)| keras_lstm_f64(p, &layer.cell, x, mask, batch, time, gb, rs, init));
    let (ya, yb) = if rs { (f.y, flip_time(&b.y, batch, time, h)) } else { (f.last_output, b.last_output) };
    let (y, y_forward, y_backward) = match layer.merge {
        MergeMode::None => (Vec::new(), ya, yb),
        MergeMode::Concat => {
            (ya.chunks(h).zip(yb.chunks(h)).flat_map(|(a, b)| [a, b].concat()).collect(), vec![], vec![])
        }
        MergeMode::Sum => (ya.iter().zip(&yb).map(|(a, b)| a + b).collect(), vec![], vec![]),
        MergeMode::Ave => (ya.iter().zip(&yb).map(|(a, b)| (a + b) / 2.0).collect(), vec![], vec![]),
        MergeMode::Mul => (ya.iter().zip(&yb).map(|(a, b)| a * b).collect(), vec![], vec![]),
    };
    BidiResult64 { y, y_forward, y_backward, h_f: f.h_n, c_f: f.c_n, h_b: b.h_n, c_b: b.c_n }
}

/// The gradients of [`keras_bidirectional_f64`] (same inputs) for the upstream gradients `up`.
///
/// # Panics
/// If a buffer's length disagrees with the sizes.
pub fn keras_bidirectional_backward(
    layer: &KerasBidi64<'_>,
    x: &[f64],
    mask: &[bool],
    batch: usize,
    time: usize,
    initial: Option<BidiState64<'_>>,
    up: &BidiUpstream64<'_>,
) -> BidiGrads64 {
    let (h, rs) = (layer.forward.hidden, layer.return_sequences);
    let rows = batch * if rs { time } else { 1 };
    let zeros = vec![0.0; rows * h];
    // The gradients of the two directions' outputs (the backward one in original time order).
    let (dya, dyb): (Vec<f64>, Vec<f64>) = match (layer.merge, up.dy) {
        (MergeMode::None, _) => (up.dy_forward.unwrap_or(&zeros).to_vec(), up.dy_backward.unwrap_or(&zeros).to_vec()),
        (_, None) => (zeros.clone(), zeros.clone()),
        (MergeMode::Concat, Some(dy)) => (
            dy.chunks(2 * h).flat_map(|r| r[..h].to_vec()).collect(),
            dy.chunks(2 * h).flat_map(|r| r[h..].to_vec()).collect(),
        ),
        (MergeMode::Sum, Some(dy)) => (dy.to_vec(), dy.to_vec()),
        (MergeMode::Ave, Some(dy)) => (dy.iter().map(|d| d / 2.0).collect(), dy.iter().map(|d| d / 2.0).collect()),
        (MergeMode::Mul, Some(dy)) => {
            // d(a b) = b da + a db: needs both outputs.
            let none = KerasBidi64 { merge: MergeMode::None, ..*layer };
            let out = keras_bidirectional_f64(&none, x, mask, batch, time, initial);
            (
                dy.iter().zip(&out.y_backward).map(|(d, b)| d * b).collect(),
                dy.iter().zip(&out.y_forward).map(|(d, a)| d * a).collect(),
            )
        }
    };
    let dyb = if rs { flip_time(&dyb, batch, time, h) } else { dyb };
    let ups = [(&dya, up.d_h_f, up.d_c_f), (&dyb, up.d_h_b, up.d_c_b)].map(|(dy, d_h_n, d_c_n)| {
        let (dy, d_last_output) = if rs { (Some(&dy[..]), None) } else { (None, Some(&dy[..])) };
        KerasUpstream64 { dy, d_last_output, d_h_n, d_c_n }
    });
    let [f, b] = bidi_layers(layer, initial);
    let [gf, gb] = [(f, &ups[0]), (b, &ups[1])]
        .map(|((p, gb, init), u)| keras_lstm_backward(p, &layer.cell, x, mask, batch, time, gb, rs, init, u));
    BidiGrads64 {
        dx: gf.dx.iter().zip(&gb.dx).map(|(a, b)| a + b).collect(),
        forward: gf.params,
        backward: gb.params,
        d_h_f: gf.d_initial_h,
        d_c_f: gf.d_initial_c,
        d_h_b: gb.d_initial_h,
        d_c_b: gb.d_initial_c,
    }
}

/// A PyTorch `nn.LSTM` stack in f64 (as [`TorchLstm`](crate::torch::TorchLstm), default cell):
/// `params` holds `num_layers * D` parameter sets, layer-major then direction (forward, reverse).
#[derive(Clone, Copy, Debug)]
pub struct TorchStack64<'a> {
    /// Layer 0 forward, layer 0 reverse, layer 1 forward, ...
    pub params: &'a [LstmParams64],
    /// Number of stacked layers `L`.
    pub num_layers: usize,
    /// Two directions per layer.
    pub bidirectional: bool,
}

impl TorchStack64<'_> {
    fn dirs(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }
}

/// Outputs of [`torch_lstm_f64`] (as [`TorchResult`](crate::torch::TorchResult)).
#[derive(Clone, Debug, PartialEq)]
pub struct TorchResult64 {
    /// `[T, B, D*H]` (`[B, T, D*H]` with `batch_first`), zeros past each length.
    pub y: Vec<f64>,
    /// `h_n [L*D, B, H]`.
    pub h_n: Vec<f64>,
    /// `c_n [L*D, B, H]`.
    pub c_n: Vec<f64>,
}

/// Upstream gradients of a [`TorchResult64`], shaped as its fields; `None` = zeros. `dy` at padded
/// positions has no effect (those outputs are constants).
#[derive(Clone, Copy, Debug, Default)]
pub struct TorchUpstream64<'a> {
    /// Of `y`.
    pub dy: Option<&'a [f64]>,
    /// Of `h_n`.
    pub dh_n: Option<&'a [f64]>,
    /// Of `c_n`.
    pub dc_n: Option<&'a [f64]>,
}

/// Gradients of a PyTorch stack's inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchGrads64 {
    /// Shaped as `x`; `+0.0` at padded positions.
    pub dx: Vec<f64>,
    /// One per parameter set, in the order of [`TorchStack64::params`] (export with
    /// [`LstmGrads::to_pytorch`]).
    pub params: Vec<LstmGrads<f64>>,
    /// `[L*D, B, H]`: of `h0` (zeros initial state when absent).
    pub dh0: Vec<f64>,
    /// `[L*D, B, H]`: of `c0`.
    pub dc0: Vec<f64>,
}

/// Runs the stack on sequence-major `x [T, B, I]`; returns every layer's input (the last entry is the
/// output `[T, B, D*H]`), `h_n` and `c_n`.
fn torch_layers(
    stack: &TorchStack64<'_>,
    x: Vec<f64>,
    t: usize,
    b: usize,
    lengths: &[usize],
    init: (&[f64], &[f64]),
) -> (Vec<Vec<f64>>, Vec<f64>, Vec<f64>) {
    let (d_n, h) = (stack.dirs(), stack.params[0].hidden);
    let (block, cell) = (d_n * b * h, CellSpec::default());
    let (mut h_n, mut c_n) = (Vec::new(), Vec::new());
    let mut inputs = vec![x];
    for l in 0..stack.num_layers {
        let dirs: Vec<OnnxDir64<'_>> = (0..d_n).map(|d| (&stack.params[l * d_n + d], &cell, d == 1)).collect();
        let range = l * block..(l + 1) * block;
        let (y, yh, yc) =
            onnx_lstm_f64(&dirs, &inputs[l], t, b, lengths, Some((&init.0[range.clone()], &init.1[range])));
        // [T, D, B, H] -> [T, B, D*H].
        inputs.push((0..t).flat_map(|tt| swap_axes(&y[tt * block..(tt + 1) * block], d_n, b, h)).collect());
        h_n.extend(yh);
        c_n.extend(yc);
    }
    (inputs, h_n, c_n)
}

/// Checks the sizes; returns `x` sequence-major and the initial states (zeros when absent).
#[allow(clippy::too_many_arguments)]
fn torch_prepare(
    stack: &TorchStack64<'_>,
    x: &[f64],
    t: usize,
    b: usize,
    batch_first: bool,
    lengths: &[usize],
    h0: Option<&[f64]>,
    c0: Option<&[f64]>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (d_n, i) = (stack.dirs(), stack.params[0].input);
    let state = stack.num_layers * d_n * b * stack.params[0].hidden;
    assert_eq!(stack.params.len(), stack.num_layers * d_n, "parameter sets");
    assert_eq!((x.len(), lengths.len()), (t * b * i, b), "x, lengths");
    assert!(lengths.iter().all(|&l| l >= 1 && l <= t), "PyTorch lengths are in 1..=T");
    let x = if batch_first { swap_axes(x, b, t, i) } else { x.to_vec() };
    let init = |s: Option<&[f64]>| {
        let s = s.map_or(vec![0.0; state], <[f64]>::to_vec);
        assert_eq!(s.len(), state, "h0 / c0");
        s
    };
    (x, init(h0), init(c0))
}

/// A PyTorch LSTM stack on packed sequences, in f64: `x [T, B, I]` (`[B, T, I]` with `batch_first`),
/// `lengths` in any order, each in `1..=T`; `h0`, `c0` `[L*D, B, H]` (zeros when absent). The output of
/// layer `l` (zeros at padded positions) is the input of layer `l + 1`.
///
/// # Panics
/// If a buffer's length disagrees with the sizes, or a length is outside `1..=T`.
#[allow(clippy::too_many_arguments)]
pub fn torch_lstm_f64(
    stack: &TorchStack64<'_>,
    x: &[f64],
    seq_len: usize,
    batch: usize,
    batch_first: bool,
    lengths: &[usize],
    h0: Option<&[f64]>,
    c0: Option<&[f64]>,
) -> TorchResult64 {
    let (x, h0, c0) = torch_prepare(stack, x, seq_len, batch, batch_first, lengths, h0, c0);
    let (mut inputs, h_n, c_n) = torch_layers(stack, x, seq_len, batch, lengths, (&h0, &c0));
    let y = inputs.pop().expect("output");
    let width = stack.dirs() * stack.params[0].hidden;
    TorchResult64 { y: if batch_first { swap_axes(&y, seq_len, batch, width) } else { y }, h_n, c_n }
}

/// The gradients of [`torch_lstm_f64`] (same inputs) for the upstream gradients `up`.
///
/// # Panics
/// As [`torch_lstm_f64`].
#[allow(clippy::too_many_arguments)]
pub fn torch_lstm_backward(
    stack: &TorchStack64<'_>,
    x: &[f64],
    seq_len: usize,
    batch: usize,
    batch_first: bool,
    lengths: &[usize],
    h0: Option<&[f64]>,
    c0: Option<&[f64]>,
    up: &TorchUpstream64<'_>,
) -> TorchGrads64 {
    let (t, b, d_n, h) = (seq_len, batch, stack.dirs(), stack.params[0].hidden);
    let (x, h0, c0) = torch_prepare(stack, x, t, b, batch_first, lengths, h0, c0);
    let (inputs, _, _) = torch_layers(stack, x, t, b, lengths, (&h0, &c0));
    let (block, cell) = (d_n * b * h, CellSpec::default());
    let mut g = TorchGrads64 {
        dx: Vec::new(),
        params: stack.params.iter().map(LstmParams64::zero_grads).collect(),
        dh0: vec![0.0; h0.len()],
        dc0: vec![0.0; c0.len()],
    };
    // The gradient of the current layer's output, [T, B, D*H].
    let mut d_out = match up.dy {
        Some(dy) if batch_first => swap_axes(dy, b, t, d_n * h),
        Some(dy) => dy.to_vec(),
        None => vec![0.0; t * block],
    };
    for l in (0..stack.num_layers).rev() {
        let dirs: Vec<OnnxDir64<'_>> = (0..d_n).map(|d| (&stack.params[l * d_n + d], &cell, d == 1)).collect();
        let range = l * block..(l + 1) * block;
        // [T, B, D*H] -> [T, D, B, H].
        let dy: Vec<f64> = (0..t).flat_map(|tt| swap_axes(&d_out[tt * block..(tt + 1) * block], b, d_n, h)).collect();
        let gl = onnx_lstm_backward(
            &dirs,
            &inputs[l],
            t,
            b,
            lengths,
            Some((&h0[range.clone()], &c0[range.clone()])),
            Some(&dy),
            up.dh_n.map(|s| &s[range.clone()]),
            up.dc_n.map(|s| &s[range.clone()]),
        );
        for (d, pg) in gl.params.into_iter().enumerate() {
            g.params[l * d_n + d] = pg;
        }
        g.dh0[range.clone()].copy_from_slice(&gl.d_initial_h);
        g.dc0[range.clone()].copy_from_slice(&gl.d_initial_c);
        d_out = gl.dx;
    }
    g.dx = if batch_first { swap_axes(&d_out, t, b, stack.params[0].input) } else { d_out };
    g
}
