//! The cells whose only state is `h` (GRU, simple RNN) as the frameworks see them: one trait, so each
//! framework's layer is written once for both.

use std::fmt::Debug;

use crate::cells::grads::{transpose, PytorchLayout};
use crate::cells::gru::{GruBackCell, GruGrads, GruKernel, GruSpec, GruWeights, PackedGru, GRU_TAPE_RECORD};
use crate::cells::rnn::{PackedRnn, RnnBackCell, RnnGrads, RnnKernel, RnnSpec, RnnWeights, RNN_TAPE_RECORD};
use crate::error::Result;
use crate::frameworks::torch::TorchParams;
use crate::kernel::{CellBackward, CellKernel};
use crate::reference::backward::{GruGrads64, GruParams64, HCell64, RnnGrads64, RnnParams64};
use crate::reference::Rounding;

/// A cell with `h` as its only state, as the frameworks import, pack and run it.
pub(crate) trait Family {
    type Weights: Clone + Debug + Send + Sync;
    type Packed: Clone + Debug + Sync;
    type Spec: Clone + Debug + Sync;
    type Kernel<'a>: CellKernel
    where
        Self: 'a;
    /// The canonical parameter gradients.
    type Grads: Clone + Debug;
    type Back<'a>: CellBackward<Grads = Self::Grads>
    where
        Self: 'a;
    /// Gates per hidden unit (rows of `W` and `R` per unit).
    const GATES: usize;
    /// Floats of a training forward's tape record per padded hidden unit.
    const RECORD: usize;
    /// The cell's backward (packs the transposed weights on first use).
    fn backward_cell<'a>(w: &Self::Weights, packed: &'a Self::Packed, spec: &'a Self::Spec) -> Result<Self::Back<'a>>;
    /// Zero gradients for the weights' sizes.
    fn zero_grads(w: &Self::Weights) -> Self::Grads;
    /// ONNX's `dW`, `dR`, `dB` of the directions' gradients.
    fn grads_to_onnx(dirs: &[Self::Grads]) -> (Vec<f32>, Vec<f32>, Vec<f32>);
    /// Hidden size padded to whole blocks.
    fn hidden_padded(packed: &Self::Packed) -> usize;
    /// The float64 reference cell of the weights.
    type Ref: HCell64;
    /// The reference cell of `w` with `spec`.
    fn reference_cell(w: &Self::Weights, spec: &Self::Spec) -> Self::Ref;
    /// ONNX's `dW`, `dR`, `dB` of one direction's reference gradients.
    fn reference_grads_to_onnx(g: &<Self::Ref as HCell64>::Grads, input: usize, hidden: usize) -> [Vec<f64>; 3];
    /// The gradients of Keras' `kernel`, `recurrent_kernel` and `bias` (the shapes `get_weights()`
    /// returns for the cell `spec`).
    fn grads_to_keras(g: &Self::Grads, spec: &Self::Spec) -> (Vec<f32>, Vec<f32>, Vec<f32>);
    /// The gradients of PyTorch's `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh` (PyTorch's gate order).
    fn grads_to_pytorch(g: &Self::Grads) -> PytorchLayout<f32>;
    /// The lengths of [`grads_to_keras`](Self::grads_to_keras)' three tensors.
    fn keras_grad_lens(w: &Self::Weights, spec: &Self::Spec) -> [usize; 3];
    /// One direction's weights from ONNX's `W`, `R`, `B`, packed straight from that layout for a backend
    /// of `nb` lanes and the cell `spec` (as [`pack`](Self::pack) of the imported weights, bit for bit).
    fn pack_onnx(
        input: usize,
        hidden: usize,
        w: &[f32],
        r: &[f32],
        b: Option<&[f32]>,
        spec: &Self::Spec,
        nb: usize,
    ) -> Result<Self::Packed>;
    /// One layer's weights from Keras' `kernel`, `recurrent_kernel`, `bias`, packed as they are (as
    /// [`pack`](Self::pack) of the imported weights, bit for bit).
    #[allow(clippy::too_many_arguments)]
    fn pack_keras(
        input: usize,
        hidden: usize,
        kernel: &[f32],
        recurrent_kernel: &[f32],
        bias: Option<&[f32]>,
        spec: &Self::Spec,
        nb: usize,
    ) -> Result<Self::Packed>;
    /// The canonical weights packed weights were made from.
    fn canonical(packed: &Self::Packed) -> Self::Weights;
    /// One layer direction's weights from PyTorch's `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`.
    /// One layer direction's weights from PyTorch's `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`,
    /// packed straight from that layout (as [`pack`](Self::pack) of the imported weights, bit for bit).
    fn pack_pytorch(
        input: usize,
        hidden: usize,
        p: &TorchParams<'_>,
        spec: &Self::Spec,
        nb: usize,
    ) -> Result<Self::Packed>;
    /// The weights packed for a backend of `nb` lanes, for the cell `spec`.
    fn pack(w: &Self::Weights, spec: &Self::Spec, nb: usize) -> Result<Self::Packed>;
    /// The cell as the kernels see it.
    fn kernel<'a>(packed: &'a Self::Packed, spec: &'a Self::Spec) -> Self::Kernel<'a>;
    /// One step in scalar arithmetic (the reference).
    fn step(spec: &Self::Spec, w: &Self::Weights, x: &[f32], h: &[f32], rounding: Rounding) -> Vec<f32>;
    /// `(I, H)` of the weights.
    fn sizes(w: &Self::Weights) -> (usize, usize);
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Gru;

impl Family for Gru {
    type Weights = GruWeights;
    type Packed = PackedGru;
    type Spec = GruSpec;
    type Kernel<'a> = GruKernel<'a>;
    type Grads = GruGrads<f32>;
    type Back<'a> = GruBackCell<'a>;
    const GATES: usize = 3;
    const RECORD: usize = GRU_TAPE_RECORD;
    fn backward_cell<'a>(w: &GruWeights, packed: &'a PackedGru, spec: &'a GruSpec) -> Result<GruBackCell<'a>> {
        packed.backward_cell(w, spec)
    }
    fn zero_grads(w: &GruWeights) -> GruGrads<f32> {
        GruGrads::zeros(w.input_size(), w.hidden_size())
    }
    fn grads_to_onnx(dirs: &[GruGrads<f32>]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        GruGrads::to_onnx_dirs(dirs)
    }
    fn hidden_padded(packed: &PackedGru) -> usize {
        packed.gates.hidden_padded()
    }
    type Ref = GruParams64;
    fn reference_cell(w: &GruWeights, spec: &GruSpec) -> GruParams64 {
        GruParams64::new(w, *spec)
    }
    fn reference_grads_to_onnx(g: &GruGrads64, input: usize, hidden: usize) -> [Vec<f64>; 3] {
        let b = [g.bias_input.clone(), g.bias_recurrent.clone()].concat();
        [transpose(&g.kernel, input, 3 * hidden), transpose(&g.recurrent, hidden, 3 * hidden), b]
    }
    fn keras_grad_lens(w: &GruWeights, spec: &GruSpec) -> [usize; 3] {
        let (i, h) = (w.input_size(), w.hidden_size());
        [i * 3 * h, h * 3 * h, if spec.reset_after { 6 * h } else { 3 * h }]
    }
    fn grads_to_keras(g: &GruGrads<f32>, spec: &GruSpec) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        // reset_after: bias [2, 3H] (input row, recurrent row); else [3H], which enters as the input bias.
        let mut bias = g.d_bias_input.clone();
        if spec.reset_after {
            bias.extend_from_slice(&g.d_bias_recurrent);
        }
        (g.d_kernel.clone(), g.d_recurrent.clone(), bias)
    }
    fn grads_to_pytorch(g: &GruGrads<f32>) -> PytorchLayout<f32> {
        g.to_pytorch()
    }
    fn pack_onnx(
        input: usize,
        hidden: usize,
        w: &[f32],
        r: &[f32],
        b: Option<&[f32]>,
        spec: &GruSpec,
        nb: usize,
    ) -> Result<PackedGru> {
        PackedGru::from_onnx(input, hidden, w, r, b, spec.reset_after, nb)
    }
    fn pack_keras(
        input: usize,
        hidden: usize,
        kernel: &[f32],
        recurrent_kernel: &[f32],
        bias: Option<&[f32]>,
        spec: &GruSpec,
        nb: usize,
    ) -> Result<PackedGru> {
        PackedGru::from_keras(input, hidden, kernel, recurrent_kernel, bias, spec.reset_after, nb)
    }
    fn canonical(packed: &PackedGru) -> GruWeights {
        packed.canonical()
    }
    fn pack_pytorch(input: usize, hidden: usize, p: &TorchParams<'_>, spec: &GruSpec, nb: usize) -> Result<PackedGru> {
        PackedGru::from_pytorch(input, hidden, p, spec.reset_after, nb)
    }
    fn pack(w: &GruWeights, spec: &GruSpec, nb: usize) -> Result<PackedGru> {
        PackedGru::new(w, spec.reset_after, nb)
    }
    fn kernel<'a>(packed: &'a PackedGru, spec: &'a GruSpec) -> GruKernel<'a> {
        GruKernel { packed, spec }
    }
    fn step(spec: &GruSpec, w: &GruWeights, x: &[f32], h: &[f32], rounding: Rounding) -> Vec<f32> {
        spec.step_rounded(w, x, h, rounding)
    }
    fn sizes(w: &GruWeights) -> (usize, usize) {
        (w.input_size(), w.hidden_size())
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Rnn;

impl Family for Rnn {
    type Weights = RnnWeights;
    type Packed = PackedRnn;
    type Spec = RnnSpec;
    type Kernel<'a> = RnnKernel<'a>;
    type Grads = RnnGrads<f32>;
    type Back<'a> = RnnBackCell<'a>;
    const GATES: usize = 1;
    const RECORD: usize = RNN_TAPE_RECORD;
    fn backward_cell<'a>(w: &RnnWeights, packed: &'a PackedRnn, spec: &'a RnnSpec) -> Result<RnnBackCell<'a>> {
        packed.backward_cell(w, spec)
    }
    fn zero_grads(w: &RnnWeights) -> RnnGrads<f32> {
        RnnGrads::zeros(w.input_size(), w.hidden_size())
    }
    fn grads_to_onnx(dirs: &[RnnGrads<f32>]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        RnnGrads::to_onnx_dirs(dirs)
    }
    fn hidden_padded(packed: &PackedRnn) -> usize {
        packed.gates.hidden_padded()
    }
    type Ref = RnnParams64;
    fn reference_cell(w: &RnnWeights, spec: &RnnSpec) -> RnnParams64 {
        RnnParams64::new(w, *spec)
    }
    fn reference_grads_to_onnx(g: &RnnGrads64, input: usize, hidden: usize) -> [Vec<f64>; 3] {
        let b = [g.bias.clone(), g.bias.clone()].concat();
        [transpose(&g.kernel, input, hidden), transpose(&g.recurrent, hidden, hidden), b]
    }
    fn keras_grad_lens(w: &RnnWeights, _spec: &RnnSpec) -> [usize; 3] {
        let (i, h) = (w.input_size(), w.hidden_size());
        [i * h, h * h, h]
    }
    fn grads_to_keras(g: &RnnGrads<f32>, _spec: &RnnSpec) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        (g.d_kernel.clone(), g.d_recurrent.clone(), g.d_bias.clone())
    }
    fn grads_to_pytorch(g: &RnnGrads<f32>) -> PytorchLayout<f32> {
        g.to_pytorch()
    }
    fn pack_onnx(
        input: usize,
        hidden: usize,
        w: &[f32],
        r: &[f32],
        b: Option<&[f32]>,
        _spec: &RnnSpec,
        nb: usize,
    ) -> Result<PackedRnn> {
        PackedRnn::from_onnx(input, hidden, w, r, b, nb)
    }
    fn pack_keras(
        input: usize,
        hidden: usize,
        kernel: &[f32],
        recurrent_kernel: &[f32],
        bias: Option<&[f32]>,
        _spec: &RnnSpec,
        nb: usize,
    ) -> Result<PackedRnn> {
        PackedRnn::from_keras(input, hidden, kernel, recurrent_kernel, bias, nb)
    }
    fn canonical(packed: &PackedRnn) -> RnnWeights {
        packed.canonical()
    }
    fn pack_pytorch(input: usize, hidden: usize, p: &TorchParams<'_>, _spec: &RnnSpec, nb: usize) -> Result<PackedRnn> {
        PackedRnn::from_pytorch(input, hidden, p, nb)
    }
    fn pack(w: &RnnWeights, _spec: &RnnSpec, nb: usize) -> Result<PackedRnn> {
        PackedRnn::new(w, nb)
    }
    fn kernel<'a>(packed: &'a PackedRnn, spec: &'a RnnSpec) -> RnnKernel<'a> {
        RnnKernel { packed, spec }
    }
    fn step(spec: &RnnSpec, w: &RnnWeights, x: &[f32], h: &[f32], rounding: Rounding) -> Vec<f32> {
        spec.step_rounded(w, x, h, rounding)
    }
    fn sizes(w: &RnnWeights) -> (usize, usize) {
        (w.input_size(), w.hidden_size())
    }
}
