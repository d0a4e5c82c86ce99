//! The cells whose only state is `h` (GRU, simple RNN) as the frameworks see them: one trait, so each
//! framework's layer is written once for both.

use std::fmt::Debug;

use crate::cells::gru::{GruKernel, GruSpec, GruWeights, PackedGru};
use crate::cells::rnn::{PackedRnn, RnnKernel, RnnSpec, RnnWeights};
use crate::error::Result;
use crate::frameworks::torch::TorchParams;
use crate::kernel::CellKernel;
use crate::reference::Rounding;

/// A cell with `h` as its only state, as the frameworks import, pack and run it.
pub(crate) trait Family {
    type Weights: Clone + Debug + Sync;
    type Packed: Clone + Debug + Sync;
    type Spec: Clone + Debug + Sync;
    type Kernel<'a>: CellKernel
    where
        Self: 'a;
    /// Gates per hidden unit (rows of `W` and `R` per unit).
    const GATES: usize;
    /// One direction's weights from ONNX's `W`, `R`, `B`.
    fn import_onnx(input: usize, hidden: usize, w: &[f32], r: &[f32], b: Option<&[f32]>) -> Result<Self::Weights>;
    /// One layer direction's weights from PyTorch's `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`.
    fn import_pytorch(input: usize, hidden: usize, p: &TorchParams<'_>) -> Result<Self::Weights>;
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
    const GATES: usize = 3;
    fn import_onnx(input: usize, hidden: usize, w: &[f32], r: &[f32], b: Option<&[f32]>) -> Result<GruWeights> {
        GruWeights::from_onnx(input, hidden, w, r, b)
    }
    fn import_pytorch(input: usize, hidden: usize, p: &TorchParams<'_>) -> Result<GruWeights> {
        GruWeights::from_pytorch(input, hidden, p.weight_ih, p.weight_hh, p.bias_ih, p.bias_hh)
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
    const GATES: usize = 1;
    fn import_onnx(input: usize, hidden: usize, w: &[f32], r: &[f32], b: Option<&[f32]>) -> Result<RnnWeights> {
        RnnWeights::from_onnx(input, hidden, w, r, b)
    }
    fn import_pytorch(input: usize, hidden: usize, p: &TorchParams<'_>) -> Result<RnnWeights> {
        RnnWeights::from_pytorch(input, hidden, p.weight_ih, p.weight_hh, p.bias_ih, p.bias_hh)
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
