//! The GRU cell: weights imported from every framework's layout, packed panels, and its fused step in
//! both placements of the reset gate.
//!
//! Canonical form (Keras' and ONNX's gate order z, r, h): `kernel [I, 3H]`, `recurrent [H, 3H]`, the
//! input bias and the recurrent bias `[3H]` each (they enter differently). With `p = x·kernel` and
//! `f`, `g` the gate and candidate activations (Keras `recurrent_activation`, `activation`; ONNX `f`,
//! `g`), ONNX's `clip` bounding every activation's argument:
//!
//! ```text
//! z  = f((p_z + h·R_z) + b_z)                    b_z = bw_z + br_z, likewise b_r
//! r  = f((p_r + h·R_r) + b_r)
//! n  = g((p_h + bw_h) + r ∘ (h·R_h + br_h))      reset after the matmul: Keras reset_after=True (its
//!                                                default), PyTorch, ONNX linear_before_reset=1
//! n  = g((p_h + (r ∘ h)·R_h) + b_h)              reset before it: Keras reset_after=False, the ONNX
//!                                                default; b_h = bw_h + br_h
//! h' = (1 - z) ∘ n + z ∘ h
//! ```
//! The reset-before cell needs `r` before its candidate's matmul: its step has two dependent phases
//! (`z, r` from `h · R_zr`, then the candidate from `(r ∘ h) · R_h`); the scheduler runs them in order,
//! with its barrier between them when threads share the gate columns.

use std::ops::Range;
use std::sync::OnceLock;

use crate::cells::activation::{clip, slope_lanes, Activation};
use crate::cells::grads::PytorchLayout;
use crate::cells::weights::{check_weights, transpose, transpose_rows};
use crate::engine::GradRows;
use crate::error::{check_len, checked_product, Result};
use crate::frameworks::torch::TorchParams;
use crate::kernel::aligned::AlignedVec;
use crate::kernel::pack::{pack_vector, unpack_gate_panels, PackedGates, Panels, Source};
use crate::kernel::simd::{clip_lanes, gemm, gemm_tall, Epilogue, Rows, Simd, TnPart};
use crate::kernel::{BackwardStep, Carry, CellBackward, CellKernel, PrevState, Stage, StepState};
use crate::reference::{vec_mat, Rounding};

/// Activations and options of a GRU cell (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct GruSpec {
    /// Gate activation `f` (Keras `recurrent_activation`), applied to z and r.
    pub gate: Activation,
    /// Candidate activation `g` (Keras `activation`).
    pub candidate: Activation,
    /// ONNX `clip`: every activation's argument is clamped to `[-clip, clip]`.
    pub clip: Option<f32>,
    /// The reset gate multiplies the candidate's recurrent matmul (`r ∘ (h·R_h + br_h)`: Keras
    /// `reset_after=True`, PyTorch, ONNX `linear_before_reset=1`) instead of its input
    /// (`(r ∘ h)·R_h`: Keras `reset_after=False`, ONNX's default).
    pub reset_after: bool,
}

impl Default for GruSpec {
    /// Sigmoid gates, tanh candidate, no clip, reset after the matmul (Keras' and PyTorch's default).
    fn default() -> Self {
        GruSpec { gate: Activation::Sigmoid, candidate: Activation::Tanh, clip: None, reset_after: true }
    }
}

impl GruSpec {
    /// A Keras cell: `activation` for the candidate, `recurrent_activation` for the gates.
    pub fn keras(activation: Activation, recurrent_activation: Activation, reset_after: bool) -> Self {
        GruSpec { gate: recurrent_activation, candidate: activation, clip: None, reset_after }
    }

    /// An ONNX cell with activations `(f, g)`, optional clip and `linear_before_reset`.
    pub fn onnx(f: Activation, g: Activation, clip: Option<f32>, linear_before_reset: bool) -> Self {
        GruSpec { gate: f, candidate: g, clip, reset_after: linear_before_reset }
    }

    /// Whether a training forward records the gate and candidate activations instead of their
    /// arguments: when no clip bounds the arguments and both activations are differentiated from their
    /// values alone (sigmoid, tanh).
    pub(crate) fn tape_keeps_activations(&self) -> bool {
        let from_value = |a: Activation| matches!(a, Activation::Sigmoid | Activation::Tanh);
        self.clip.is_none() && from_value(self.gate) && from_value(self.candidate)
    }

    /// One step of one sequence in scalar arithmetic, the definition the kernels match bit for bit with
    /// `rounding` (their dot products' rounding; the rest never fuses): returns the new `h`.
    pub fn step_rounded(&self, w: &GruWeights, x: &[f32], h: &[f32], rounding: Rounding) -> Vec<f32> {
        let hd = w.hidden;
        let (c3, act) = (3 * hd, |a: Activation, v: f32| a.apply_rounded(clip(v, self.clip), rounding));
        let p = vec_mat(x, &w.kernel, c3, rounding);
        if self.reset_after {
            let q = vec_mat(h, &w.recurrent, c3, rounding);
            (0..hd)
                .map(|j| {
                    let z = act(self.gate, (p[j] + q[j]) + (w.bias_input[j] + w.bias_recurrent[j]));
                    let (jr, jh) = (hd + j, 2 * hd + j);
                    let r = act(self.gate, (p[jr] + q[jr]) + (w.bias_input[jr] + w.bias_recurrent[jr]));
                    let n = act(self.candidate, (p[jh] + w.bias_input[jh]) + r * (q[jh] + w.bias_recurrent[jh]));
                    (1.0 - z) * n + z * h[j]
                })
                .collect()
        } else {
            // z and r from h·R_zr, then the candidate's matmul over r ∘ h.
            let r_zr: Vec<f32> = (0..hd).flat_map(|k| w.recurrent[k * c3..k * c3 + 2 * hd].to_vec()).collect();
            let r_h: Vec<f32> = (0..hd).flat_map(|k| w.recurrent[k * c3 + 2 * hd..(k + 1) * c3].to_vec()).collect();
            let q = vec_mat(h, &r_zr, 2 * hd, rounding);
            let b = |j: usize| w.bias_input[j] + w.bias_recurrent[j];
            let z: Vec<f32> = (0..hd).map(|j| act(self.gate, (p[j] + q[j]) + b(j))).collect();
            let rh: Vec<f32> = (0..hd).map(|j| act(self.gate, (p[hd + j] + q[hd + j]) + b(hd + j)) * h[j]).collect();
            let qh = vec_mat(&rh, &r_h, hd, rounding);
            (0..hd)
                .map(|j| {
                    let n = act(self.candidate, (p[2 * hd + j] + qh[j]) + b(2 * hd + j));
                    (1.0 - z[j]) * n + z[j] * h[j]
                })
                .collect()
        }
    }
}

/// PyTorch's gate blocks r, z, n hold canonical gates 1, 0, 2.
const TORCH_TO_CANON: [usize; 3] = [1, 0, 2];

/// GRU weights of one direction in canonical form (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq)]
pub struct GruWeights {
    input: usize,
    hidden: usize,
    kernel: Vec<f32>,
    recurrent: Vec<f32>,
    bias_input: Vec<f32>,
    bias_recurrent: Vec<f32>,
}

impl GruWeights {
    /// From Keras' `kernel [I, 3H]`, `recurrent_kernel [H, 3H]` (gates z, r, h) and `bias`: `[2, 3H]`
    /// (input row, recurrent row) when `reset_after`, else `[3H]`; `None`: no bias.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) when a length disagrees with `input`/`hidden`;
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for `hidden == 0`;
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) for sizes that overflow.
    pub fn from_keras(
        input: usize,
        hidden: usize,
        kernel: &[f32],
        recurrent_kernel: &[f32],
        bias: Option<&[f32]>,
        reset_after: bool,
    ) -> Result<Self> {
        let g = check_weights(3, input, hidden, ["kernel", "recurrent_kernel"], kernel, recurrent_kernel)?;
        let [bias_input, bias_recurrent] = keras_biases(bias, g, reset_after)?;
        Ok(GruWeights {
            input,
            hidden,
            kernel: kernel.to_vec(),
            recurrent: recurrent_kernel.to_vec(),
            bias_input,
            bias_recurrent,
        })
    }

    /// From PyTorch's `weight_ih [3H, I]`, `weight_hh [3H, H]`, `bias_ih`, `bias_hh [3H]` (gates r, z, n).
    ///
    /// # Errors
    /// As [`from_keras`](Self::from_keras).
    pub fn from_pytorch(
        input: usize,
        hidden: usize,
        weight_ih: &[f32],
        weight_hh: &[f32],
        bias_ih: Option<&[f32]>,
        bias_hh: Option<&[f32]>,
    ) -> Result<Self> {
        let g = check_weights(3, input, hidden, ["weight_ih", "weight_hh"], weight_ih, weight_hh)?;
        let reorder = |m: &[f32], cols: usize| reorder_blocks(m, hidden * cols, &TORCH_TO_CANON);
        let [bias_input, bias_recurrent] = pytorch_biases(bias_ih, bias_hh, hidden)?;
        Ok(GruWeights {
            input,
            hidden,
            kernel: transpose(&reorder(weight_ih, input), g, input),
            recurrent: transpose(&reorder(weight_hh, hidden), g, hidden),
            bias_input,
            bias_recurrent,
        })
    }

    /// From one direction of ONNX's `W [3H, I]`, `R [3H, H]` and `B [6H]` (Wb then Rb), gates z, r, h.
    ///
    /// # Errors
    /// As [`from_keras`](Self::from_keras).
    pub fn from_onnx(input: usize, hidden: usize, w: &[f32], r: &[f32], b: Option<&[f32]>) -> Result<Self> {
        let g = check_weights(3, input, hidden, ["W", "R"], w, r)?;
        let [bias_input, bias_recurrent] = onnx_biases(b, g)?;
        Ok(GruWeights {
            input,
            hidden,
            kernel: transpose(w, g, input),
            recurrent: transpose(r, g, hidden),
            bias_input,
            bias_recurrent,
        })
    }

    /// Input size `I`.
    pub fn input_size(&self) -> usize {
        self.input
    }
    /// Hidden size `H`.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }
    /// `kernel [I, 3H]`, gates z, r, h.
    pub fn kernel(&self) -> &[f32] {
        &self.kernel
    }
    /// `recurrent [H, 3H]`, gates z, r, h.
    pub fn recurrent(&self) -> &[f32] {
        &self.recurrent
    }
    /// The input bias `[3H]`, gates z, r, h.
    pub fn bias_input(&self) -> &[f32] {
        &self.bias_input
    }
    /// The recurrent bias `[3H]`, gates z, r, h.
    pub fn bias_recurrent(&self) -> &[f32] {
        &self.bias_recurrent
    }
}

/// PyTorch's `bias_ih` and `bias_hh [3H]` (gates r, z, n; a missing one: zeros) in canonical order
/// (z, r, h), checked.
fn pytorch_biases(bias_ih: Option<&[f32]>, bias_hh: Option<&[f32]>, hidden: usize) -> Result<[Vec<f32>; 2]> {
    let g = 3 * hidden;
    let mut biases = [vec![0.0; g], vec![0.0; g]];
    for ((name, b), dst) in [("bias_ih", bias_ih), ("bias_hh", bias_hh)].into_iter().zip(&mut biases) {
        if let Some(b) = b {
            check_len(name, b.len(), g)?;
            *dst = reorder_blocks(b, hidden, &TORCH_TO_CANON);
        }
    }
    Ok(biases)
}

/// Keras' `bias` (`[2, G]` when `reset_after`, else `[G]`; `None`: zeros) as `[bias_input,
/// bias_recurrent]`.
fn keras_biases(bias: Option<&[f32]>, g: usize, reset_after: bool) -> Result<[Vec<f32>; 2]> {
    let (mut bias_input, mut bias_recurrent) = (vec![0.0; g], vec![0.0; g]);
    if let Some(b) = bias {
        check_len("bias", b.len(), if reset_after { 2 * g } else { g })?;
        bias_input.copy_from_slice(&b[..g]);
        if reset_after {
            bias_recurrent.copy_from_slice(&b[g..]);
        }
    }
    Ok([bias_input, bias_recurrent])
}

/// ONNX's `B [2 G]` (`Wb` then `Rb`; `None`: zeros) as `[bias_input, bias_recurrent]`.
fn onnx_biases(b: Option<&[f32]>, g: usize) -> Result<[Vec<f32>; 2]> {
    match b {
        Some(b) => {
            check_len("B", b.len(), 2 * g)?;
            Ok([b[..g].to_vec(), b[g..].to_vec()])
        }
        None => Ok([vec![0.0; g], vec![0.0; g]]),
    }
}

/// `m`'s blocks of `block` floats reordered: block `j` of `m` goes to block `to[j]`.
pub(crate) fn reorder_blocks(m: &[f32], block: usize, to: &[usize]) -> Vec<f32> {
    let mut out = vec![0.0; m.len()];
    for (j, &c) in to.iter().enumerate() {
        out[c * block..(c + 1) * block].copy_from_slice(&m[j * block..(j + 1) * block]);
    }
    out
}

/// Weights of one GRU layer direction packed into a backend's panel layout, for the cell's placement of
/// the reset gate.
#[derive(Clone, Debug)]
pub struct PackedGru {
    /// The input panels `[blocks][I][3][nb]` and the bias the epilogue adds outside the reset gate,
    /// `[blocks][3][nb]` (z, r: `bw + br`; h: `bw_h`, plus `br_h` when the reset comes before); the
    /// recurrent panels `[blocks][H][3][nb]` when the reset comes after the matmul (one phase), else none.
    pub(crate) gates: PackedGates,
    /// Reset after: the candidate's recurrent bias `br_h` inside the reset gate, `[blocks][nb]`.
    pub(crate) bias_rh: Vec<f32>,
    /// Reset before: `R_zr` as 2-gate panels `[blocks][H][2][nb]` (phase one) and `R_h` as 1-gate panels
    /// `[blocks][H][nb]` (phase two).
    pub(crate) r_zr: Panels,
    pub(crate) r_h: Panels,
    pub(crate) reset_after: bool,
    /// The canonical biases `[3H]` (z, r, h) the packed ones were made from, for
    /// [`canonical`](Self::canonical).
    bias_input: Vec<f32>,
    bias_recurrent: Vec<f32>,
    /// The transposed weights of the backward, packed on first use.
    transposes: OnceLock<GruTransposes>,
}

/// The GRU backward's transposed weights (plain matrices, [`PackedGates::zero_matrix`]), rows in the
/// order of its `dZ` columns (see [`GruBackCell`]).
#[derive(Clone, Debug)]
pub(crate) struct GruTransposes {
    /// Phase 0: reset after, `Rᵀ` over `[da_nr, da_z, da_r]`; reset before, `R_zrᵀ` over `[da_z, da_r]`.
    rt0: PackedGates,
    /// Reset before, phase 1: `R_hᵀ` over `da_n`.
    rt1: Option<PackedGates>,
    /// `Wᵀ` over `[da_z, da_r, da_n]`.
    wt: PackedGates,
}

impl PackedGru {
    /// Packs `w` for a cell with the reset gate after the matmul (`reset_after`) or before it, for a
    /// backend with `nb` lanes per block.
    ///
    /// # Errors
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) for sizes whose product overflows.
    pub(crate) fn new(w: &GruWeights, reset_after: bool, nb: usize) -> Result<Self> {
        let src = Source::Canonical { kernel: &w.kernel, recurrent: &w.recurrent };
        let biases = [w.bias_input.clone(), w.bias_recurrent.clone()];
        Self::pack(w.input, w.hidden, src, biases, reset_after, nb)
    }

    /// Packs one direction of ONNX's `W [3H, I]`, `R [3H, H]` and `B [6H]` (gates z, r, h) straight from
    /// their layout, with no canonical copy: as `PackedGru::new(&GruWeights::from_onnx(..)?, ..)`, bit for
    /// bit.
    ///
    /// # Errors
    /// As [`GruWeights::from_onnx`].
    pub(crate) fn from_onnx(
        input: usize,
        hidden: usize,
        w: &[f32],
        r: &[f32],
        b: Option<&[f32]>,
        reset_after: bool,
        nb: usize,
    ) -> Result<Self> {
        let g = check_weights(3, input, hidden, ["W", "R"], w, r)?;
        let src = Source::Units { w, r, order: &[0, 1, 2] };
        Self::pack(input, hidden, src, onnx_biases(b, g)?, reset_after, nb)
    }

    /// Packs Keras' `kernel [I, 3H]`, `recurrent_kernel [H, 3H]` and `bias` (see
    /// [`GruWeights::from_keras`]) as they are, with no canonical copy: as
    /// `PackedGru::new(&GruWeights::from_keras(..)?, reset_after, nb)`.
    ///
    /// # Errors
    /// As [`GruWeights::from_keras`].
    pub(crate) fn from_keras(
        input: usize,
        hidden: usize,
        kernel: &[f32],
        recurrent_kernel: &[f32],
        bias: Option<&[f32]>,
        reset_after: bool,
        nb: usize,
    ) -> Result<Self> {
        let g = check_weights(3, input, hidden, ["kernel", "recurrent_kernel"], kernel, recurrent_kernel)?;
        let src = Source::Canonical { kernel, recurrent: recurrent_kernel };
        Self::pack(input, hidden, src, keras_biases(bias, g, reset_after)?, reset_after, nb)
    }

    /// Packs PyTorch's `weight_ih [3H, I]`, `weight_hh [3H, H]`, `bias_ih`, `bias_hh [3H]` (gates r, z, n)
    /// straight from their layout, with no canonical copy: as
    /// `PackedGru::new(&GruWeights::from_pytorch(..)?, reset_after, nb)`, bit for bit.
    ///
    /// # Errors
    /// As [`GruWeights::from_pytorch`].
    pub(crate) fn from_pytorch(
        input: usize,
        hidden: usize,
        p: &TorchParams<'_>,
        reset_after: bool,
        nb: usize,
    ) -> Result<Self> {
        check_weights(3, input, hidden, ["weight_ih", "weight_hh"], p.weight_ih, p.weight_hh)?;
        let biases = pytorch_biases(p.bias_ih, p.bias_hh, hidden)?;
        // Canonical gate z is PyTorch's block 1, r block 0, h (n) block 2.
        let src = Source::Units { w: p.weight_ih, r: p.weight_hh, order: &[1, 0, 2] };
        Self::pack(input, hidden, src, biases, reset_after, nb)
    }

    /// Packs `W` and `R` from `src` with the canonical `[bias_input, bias_recurrent]`.
    fn pack(i: usize, h: usize, src: Source<'_>, biases: [Vec<f32>; 2], reset_after: bool, nb: usize) -> Result<Self> {
        let [bias_input, bias_recurrent] = biases;
        let mut bias: Vec<f32> = bias_input.iter().zip(&bias_recurrent).map(|(a, b)| a + b).collect();
        if reset_after {
            bias[2 * h..].copy_from_slice(&bias_input[2 * h..]);
        }
        let gates = PackedGates::with_recurrent(3, i, h, src, &bias, nb, reset_after)?;
        let (mut bias_rh, mut r_zr, mut r_h) = (Vec::new(), Panels::default(), Panels::default());
        if reset_after {
            bias_rh = pack_vector(&bias_recurrent[2 * h..], 1, h, nb);
        } else {
            r_zr = src.panels(true, h, 3, 0..2, h, nb);
            r_h = src.panels(true, h, 3, 2..3, h, nb);
        }
        let transposes = OnceLock::new();
        Ok(PackedGru { gates, bias_rh, r_zr, r_h, reset_after, bias_input, bias_recurrent, transposes })
    }

    /// The canonical weights these were packed from (unpacked: exact).
    pub(crate) fn canonical(&self) -> GruWeights {
        let p = &self.gates;
        let (i, h, nb) = (p.input, p.hidden, p.nb);
        let kernel = p.unpack(&p.w, i);
        let recurrent = if self.reset_after {
            p.unpack(&p.r, h)
        } else {
            let mut recurrent = vec![0.0; h * 3 * h];
            unpack_gate_panels(&self.r_zr, h, 2, &mut recurrent, 3, 0, h, nb);
            unpack_gate_panels(&self.r_h, h, 1, &mut recurrent, 3, 2, h, nb);
            recurrent
        };
        let (bias_input, bias_recurrent) = (self.bias_input.clone(), self.bias_recurrent.clone());
        GruWeights { input: i, hidden: h, kernel, recurrent, bias_input, bias_recurrent }
    }

    /// The backward of the layer direction these weights were packed from (`w`), with the cell `spec`
    /// (whose reset placement they were packed for): packs the transposed weights on the first call.
    ///
    /// # Errors
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) if they would not fit in memory.
    pub(crate) fn backward_cell<'a>(&'a self, w: &GruWeights, spec: &'a GruSpec) -> Result<GruBackCell<'a>> {
        let tr = match self.transposes.get() {
            Some(t) => t,
            None => {
                let (h, hp, nb) = (w.hidden, self.gates.hidden_padded(), self.gates.nb);
                // Canonical column c = g H + j (gate g of unit j) of R and W, and its row in a transpose.
                let (gate, unit) = (|c: usize| c / h, |c: usize| c % h);
                let t = if self.reset_after {
                    GruTransposes {
                        rt0: transpose_rows(&w.recurrent, h, 3 * h, 3 * hp, nb, |c| {
                            Some([hp, 2 * hp, 0][gate(c)] + unit(c))
                        })?,
                        rt1: None,
                        wt: transpose_rows(&w.kernel, w.input, 3 * h, 3 * hp, nb, |c| Some(gate(c) * hp + unit(c)))?,
                    }
                } else {
                    GruTransposes {
                        rt0: transpose_rows(&w.recurrent, h, 3 * h, 2 * hp, nb, |c| {
                            (gate(c) < 2).then(|| gate(c) * hp + unit(c))
                        })?,
                        rt1: Some(transpose_rows(&w.recurrent, h, 3 * h, hp, nb, |c| (gate(c) == 2).then(|| unit(c)))?),
                        wt: transpose_rows(&w.kernel, w.input, 3 * h, 3 * hp, nb, |c| Some(gate(c) * hp + unit(c)))?,
                    }
                };
                self.transposes.get_or_init(|| t)
            }
        };
        Ok(GruBackCell { packed: self, spec, tr, input: w.input, hidden: w.hidden })
    }
}

/// Floats a training forward keeps per valid step and padded hidden unit: `z, r, n` as
/// `[blocks][3][nb]` (their activations when [`GruSpec::tape_keeps_activations`], else their arguments
/// before the clip), then `q` (reset after: `h·R_h + br_h`; reset before: `r ∘ h`) and the new `h`
/// (`hp` floats each).
pub(crate) const GRU_TAPE_RECORD: usize = 5;

/// Gradients of one GRU direction's parameters in canonical form ([`GruWeights`]' shapes).
#[derive(Clone, Debug, PartialEq)]
pub struct GruGrads<T> {
    /// Input size `I`.
    pub input: usize,
    /// Hidden size `H`.
    pub hidden: usize,
    /// `[I, 3H]`, gates z, r, h.
    pub d_kernel: Vec<T>,
    /// `[H, 3H]`.
    pub d_recurrent: Vec<T>,
    /// `[3H]`, of the input bias.
    pub d_bias_input: Vec<T>,
    /// `[3H]`, of the recurrent bias.
    pub d_bias_recurrent: Vec<T>,
}

impl<T: Copy + Default> GruGrads<T> {
    /// Zero gradients for a cell of the given sizes.
    pub fn zeros(input: usize, hidden: usize) -> Self {
        GruGrads {
            input,
            hidden,
            d_kernel: vec![T::default(); input * 3 * hidden],
            d_recurrent: vec![T::default(); hidden * 3 * hidden],
            d_bias_input: vec![T::default(); 3 * hidden],
            d_bias_recurrent: vec![T::default(); 3 * hidden],
        }
    }

    /// The gradients of ONNX's `W [3H, I]`, `R [3H, H]` and `B [6H]` (Wb then Rb) of several directions,
    /// concatenated along the leading direction axis.
    pub fn to_onnx_dirs(dirs: &[Self]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (mut w, mut r, mut b) = (Vec::new(), Vec::new(), Vec::new());
        for g in dirs {
            w.extend(crate::cells::grads::transpose(&g.d_kernel, g.input, 3 * g.hidden));
            r.extend(crate::cells::grads::transpose(&g.d_recurrent, g.hidden, 3 * g.hidden));
            b.extend(g.d_bias_input.iter().chain(&g.d_bias_recurrent).copied());
        }
        (w, r, b)
    }
}

impl GruGrads<f32> {
    /// The gradients of PyTorch's `weight_ih [3H, I]`, `weight_hh [3H, H]`, `bias_ih`, `bias_hh [3H]`,
    /// gates r, z, n.
    pub fn to_pytorch(&self) -> PytorchLayout<f32> {
        let (i, h) = (self.input, self.hidden);
        // TORCH_TO_CANON swaps two blocks: it maps canonical order back to PyTorch's too.
        let reorder = |m: &[f32], cols: usize| reorder_blocks(m, h * cols, &TORCH_TO_CANON);
        PytorchLayout {
            weight_ih: reorder(&transpose(&self.d_kernel, i, 3 * h), i),
            weight_hh: reorder(&transpose(&self.d_recurrent, h, 3 * h), h),
            bias_ih: reorder(&self.d_bias_input, 1),
            bias_hh: reorder(&self.d_bias_recurrent, 1),
        }
    }
}

/// The GRU's backward as the backward sweep drives it. Its `dZ` rows, gate-major (`hp` floats each):
///
/// ```text
/// reset after:  [da_n ∘ r | da_z | da_r | da_n]   phase 0: dh_prev = dZ[0, 3hp) · Rᵀ;   dx from [hp, 4hp)
/// reset before: [da_z | da_r | da_n]              phase 0: dh_prev = dZ[0, 2hp) · R_zrᵀ, then
///                                                 phase 1: d(r ∘ h) = dZ[2hp, 3hp) · R_hᵀ; dx from [0, 3hp)
/// ```
/// (`da` the activations' argument gradients). It reads `h` from the step before and carries the part of
/// `dh_prev` that does not go through `R`: `dh ∘ z` (reset before: plus `d(r ∘ h) ∘ r`).
#[derive(Clone, Copy)]
pub(crate) struct GruBackCell<'a> {
    packed: &'a PackedGru,
    spec: &'a GruSpec,
    tr: &'a GruTransposes,
    input: usize,
    hidden: usize,
}

impl CellBackward for GruBackCell<'_> {
    type Grads = GruGrads<f32>;
    const CARRY: Carry = Carry::H;
    const RECORD: usize = GRU_TAPE_RECORD;

    fn sizes(&self) -> (usize, usize) {
        (self.input, self.hidden)
    }

    fn hp(&self) -> usize {
        self.packed.gates.hidden_padded()
    }

    fn dz_width(&self) -> usize {
        (if self.packed.reset_after { 4 } else { 3 }) * self.hp()
    }

    fn h_offset(&self) -> usize {
        4 * self.hp()
    }

    fn prev_state(&self) -> PrevState {
        PrevState::H(4 * self.hp())
    }

    fn phases(&self) -> usize {
        if self.packed.reset_after {
            1
        } else {
            2
        }
    }

    fn mid_states(&self) -> usize {
        // The GEMM's staging rows; reset before, also dh between the phases.
        self.phases()
    }

    fn rt(&self, phase: usize) -> (&PackedGates, usize) {
        match (phase, &self.tr.rt1) {
            (1, Some(rt1)) => (rt1, 2 * self.hp()),
            _ => (&self.tr.rt0, 0),
        }
    }

    fn wt(&self) -> (&PackedGates, usize) {
        (&self.tr.wt, if self.packed.reset_after { self.hp() } else { 0 })
    }

    #[inline(always)]
    unsafe fn step<S: Simd>(&self, phase: usize, st: &BackwardStep<'_>) {
        let (hp, l) = (self.hp(), S::LANES);
        let (rt, off) = self.rt(phase);
        let blocks = self.packed.gates.blocks;
        assert!(st.rows.len() >= st.m && st.prev.len() >= st.m && st.cur.len() >= st.m);
        assert!(st.next.len() >= st.m_gemm && st.seqs.len() >= st.m && st.mid_stride >= hp);
        assert!(
            st.blocks.end <= rt.blocks && rt.gates == 4 && rt.padded_cols() >= hp && off + rt.input <= self.dz_width()
        );
        assert!(self.packed.gates.nb == l && rt.nb == l && st.stride >= GRU_TAPE_RECORD * hp);
        let units = (4 * st.blocks.start).min(blocks)..(4 * st.blocks.end).min(blocks);
        // SAFETY: S's instructions are available; the buffers as `CellBackward::step`'s caller guaranteed
        // (the rows' dZ of the step after complete, and for phase 1 this step's da_n; `mid` holds the
        // staging rows and, reset before, the dh rows, hp floats per sequence each); the asserts bound
        // `rt`'s panels (its K rows lie inside a dZ row from `off`) and columns (>= hp). The GEMM stages
        // its output in `mid`, then one pass finishes every row's units of `blocks`.
        unsafe {
            let mut stage = Stage { base: st.mid, seqs: st.seqs, hp };
            if phase == 0 {
                let a = Rows::Gathered { base: st.dz.add(off), offsets: &st.next[..st.m_gemm] };
                gemm_tall::<S, 4>(&rt.w, rt.input, st.m_gemm, a, st.blocks.clone(), &mut stage);
                for r in 0..st.m {
                    let start = r >= st.m_gemm;
                    let from = if start { st.dh_start } else { st.mid.cast_const() };
                    let row = from.add(*st.seqs.get_unchecked(r) * hp);
                    for u in units.clone() {
                        self.phase0::<S>(st, r, u, S::load(row.add(u * l)), start);
                    }
                }
            } else {
                let a = Rows::Gathered { base: st.dz.add(off), offsets: &st.cur[..st.m] };
                gemm_tall::<S, 4>(&rt.w, rt.input, st.m, a, st.blocks.clone(), &mut stage);
                for r in 0..st.m {
                    let row = st.mid.add(*st.seqs.get_unchecked(r) * hp);
                    for u in units.clone() {
                        self.phase1::<S>(st, r, u, S::load(row.add(u * l)));
                    }
                }
            }
        }
    }

    fn weight_grads(
        &self,
        rows: &GradRows<'_>,
        g: &mut GruGrads<f32>,
        dwr: &mut AlignedVec,
        db: &mut AlignedVec,
    ) -> Result<()> {
        let (input, hd, hp) = (self.input, self.hidden, self.hp());
        let zw = self.dz_width();
        let (dwr, db) = (dwr.resize_stale(checked_product(&[input + hd, zw], "dW")?), db.resize_stale(2 * zw));
        let x = TnPart { rows: rows.x, width: input };
        let h_prev = TnPart { rows: rows.h_prev, width: hd };
        // Column of gate `gate` (z, r, h) of unit j in the products' rows: input rows (dW) and recurrent
        // rows (dR), and where the input and the recurrent bias sums are.
        let (w_col, r_col, bi_at, br_at): ([usize; 3], [usize; 3], usize, usize);
        if self.packed.reset_after {
            // Xᵀ·[da_z, da_r, da_n] and H_prevᵀ·[da_n ∘ r, da_z, da_r], the sums of each.
            rows.product(&[x], hp..4 * hp, dwr, zw, Some(&mut db[..zw]))?;
            rows.product(&[h_prev], 0..3 * hp, &mut dwr[input * zw..], zw, Some(&mut db[zw..]))?;
            (w_col, r_col, bi_at, br_at) = ([hp, 2 * hp, 3 * hp], [hp, 2 * hp, 0], 0, zw);
        } else {
            // [X, H_prev]ᵀ·[da_z, da_r] and [X, r ∘ h_prev]ᵀ·da_n into one C; both biases are Σ da.
            let rh = rows.record_rows(3 * hp);
            rows.product(&[x, h_prev], 0..2 * hp, dwr, zw, Some(&mut db[..zw]))?;
            let rh = TnPart { rows: &rh, width: hd };
            rows.product(&[x, rh], 2 * hp..3 * hp, dwr, zw, Some(&mut db[..zw]))?;
            (w_col, r_col, bi_at, br_at) = ([0, hp, 2 * hp], [0, hp, 2 * hp], 0, 0);
        }
        for gate in 0..3 {
            for j in 0..hd {
                for k in 0..input {
                    g.d_kernel[k * 3 * hd + gate * hd + j] = dwr[k * zw + w_col[gate] + j];
                }
                for k in 0..hd {
                    g.d_recurrent[k * 3 * hd + gate * hd + j] = dwr[(input + k) * zw + r_col[gate] + j];
                }
                g.d_bias_input[gate * hd + j] = db[bi_at + w_col[gate] + j];
                g.d_bias_recurrent[gate * hd + j] = db[br_at + r_col[gate] + j];
            }
        }
        Ok(())
    }
}

impl GruBackCell<'_> {
    /// `z, r, n` of unit block `u` in a record: `(values, arguments)` (the arguments stand in for
    /// themselves when the record kept values; sigmoid and tanh are differentiated from the value).
    ///
    /// # Safety
    /// S's instructions available; `rec` a tape record, `u` a unit block below hp / nb.
    #[inline(always)]
    unsafe fn gates<S: Simd>(&self, rec: *const f32, u: usize) -> ([S; 3], [S; 3]) {
        let (spec, l) = (self.spec, S::LANES);
        // SAFETY: the caller's contract.
        unsafe {
            let kept: [S; 3] = std::array::from_fn(|g| S::load(rec.add((u * 3 + g) * l)));
            if spec.tape_keeps_activations() {
                return (kept, kept);
            }
            let act = |a: Activation, v: S| S::act(a, clip_lanes(v, spec.clip));
            ([act(spec.gate, kept[0]), act(spec.gate, kept[1]), act(spec.candidate, kept[2])], kept)
        }
    }

    /// Phase 0 of unit block `u` of row `r` from `dh_in`, the gradient from the step after (`start`: the
    /// row starts here, from `dh_start`, with nothing carried yet): `da_n`, `da_z` and, reset after,
    /// `da_r` and the carried `dh ∘ z`; reset before, `dh` for phase 1.
    ///
    /// # Safety
    /// S's instructions available; `r < m`, `u < blocks` (the buffers as `CellBackward::step`).
    #[inline(always)]
    unsafe fn phase0<S: Simd>(&self, st: &BackwardStep<'_>, r: usize, u: usize, dh_in: S, start: bool) {
        let (hp, l, spec, zw) = (self.hp(), S::LANES, self.spec, self.dz_width());
        // SAFETY: the caller's contract; `u < blocks` keeps every access inside row `r`'s buffers.
        unsafe {
            let (tr, s, at) = (*st.rows.get_unchecked(r), *st.seqs.get_unchecked(r), u * l);
            let rec = st.tape.add(tr * st.stride);
            let ([z, rg, n], [vz, vr, vn]) = self.gates::<S>(rec, u);
            let h_prev = S::load(st.prev.get_unchecked(r).add(at));
            let carry = st.carry.add(s * hp + at);
            let dz = st.dz.add(tr * zw);
            let mut dh = dh_in.add(S::load(st.dh_up.add(tr * hp + at)));
            if !start {
                dh = dh.add(S::load(carry));
            }
            let dan = dh.mul(S::splat(1.0).sub(z)).mul(slope_lanes(spec.clip, spec.candidate, vn, n));
            let daz = dh.mul(h_prev.sub(n)).mul(slope_lanes(spec.clip, spec.gate, vz, z));
            if self.packed.reset_after {
                let q = S::load(rec.add(3 * hp + at));
                let dar = dan.mul(q).mul(slope_lanes(spec.clip, spec.gate, vr, rg));
                dan.mul(rg).store(dz.add(at));
                daz.store(dz.add(hp + at));
                dar.store(dz.add(2 * hp + at));
                dan.store(dz.add(3 * hp + at));
                dh.mul(z).store(carry);
            } else {
                daz.store(dz.add(at));
                dan.store(dz.add(2 * hp + at));
                dh.store(st.mid.add(st.mid_stride + s * hp + at));
            }
        }
    }

    /// Phase 1 (reset before) of unit block `u` of row `r` from `d_rh = d(r ∘ h)`: `da_r` and the carried
    /// `d_rh ∘ r + dh ∘ z`.
    ///
    /// # Safety
    /// As [`phase0`](Self::phase0); phase 0 of the step complete.
    #[inline(always)]
    unsafe fn phase1<S: Simd>(&self, st: &BackwardStep<'_>, r: usize, u: usize, d_rh: S) {
        let (hp, l, spec, zw) = (self.hp(), S::LANES, self.spec, self.dz_width());
        // SAFETY: the caller's contract; `u < blocks` keeps every access inside row `r`'s buffers.
        unsafe {
            let (tr, s, at) = (*st.rows.get_unchecked(r), *st.seqs.get_unchecked(r), u * l);
            let rec = st.tape.add(tr * st.stride);
            let ([z, rg, _], [_, vr, _]) = self.gates::<S>(rec, u);
            let h_prev = S::load(st.prev.get_unchecked(r).add(at));
            let dar = d_rh.mul(h_prev).mul(slope_lanes(spec.clip, spec.gate, vr, rg));
            dar.store(st.dz.add(tr * zw + hp + at));
            let dh = S::load(st.mid.add(st.mid_stride + s * hp + at));
            d_rh.mul(rg).add(dh.mul(z)).store(st.carry.add(s * hp + at));
        }
    }
}

/// The GRU as the kernels see it: packed weights and activations of one layer direction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GruKernel<'a> {
    pub packed: &'a PackedGru,
    pub spec: &'a GruSpec,
}

impl CellKernel for GruKernel<'_> {
    const EXTRA_STATES: usize = 0;

    fn packed(&self) -> &PackedGates {
        &self.packed.gates
    }

    fn recurrent_bytes(&self) -> usize {
        let p = self.packed;
        (p.gates.r.len() + p.r_zr.len() + p.r_h.len()) * 4
    }

    fn phases(&self) -> usize {
        if self.packed.reset_after {
            1
        } else {
            2
        }
    }

    fn mid_states(&self) -> usize {
        // Reset before: `r ∘ h` (the second phase's matmul input) and `z`.
        if self.packed.reset_after {
            0
        } else {
            2
        }
    }

    #[inline(always)]
    unsafe fn step<S: Simd>(
        &self,
        phase: usize,
        m: usize,
        blocks: Range<usize>,
        st: StepState<'_>,
        reverse_first: bool,
    ) -> bool {
        let (p, w) = (self.packed, &self.packed.gates);
        let hp = w.hidden_padded();
        let proj_row = blocks.len() * 3 * S::LANES;
        assert!(w.gates == 3 && w.nb == S::LANES && blocks.end <= w.blocks && st.proj.len() >= m * proj_row);
        assert!(st.h.len() >= m * hp && w.bias.len() >= w.blocks * 3 * S::LANES);
        assert!(st.tape.is_null() || st.tape_stride >= GRU_TAPE_RECORD * hp);
        let ep = GruEpilogue {
            spec: self.spec,
            proj: st.proj.as_ptr(),
            proj_row,
            first: blocks.start,
            bias: w.bias.as_ptr(),
            bias_rh: p.bias_rh.as_ptr(),
            h: st.h.as_ptr(),
            h_out: st.h_out,
            rh: st.mid,
            z: st.mid.wrapping_add(m * hp),
            hp,
            tape: st.tape,
            tape_rows: st.tape_rows,
            tape_stride: st.tape_stride,
            keeps: self.spec.tape_keeps_activations(),
        };
        let rows = |base: *const f32| Rows::Strided { base, stride: hp };
        // SAFETY (every arm): the asserts above bound the reads of proj, h and the bias; the panels hold
        // `w.blocks` blocks of H rows (packed by `PackedGru::new` for this placement). The writes stay in
        // rows < m of h_out and mid and in the tape rows the caller gave (records of GRU_TAPE_RECORD x hp
        // floats), in the columns of `blocks` (the caller's contract), and the second phase reads whole
        // rows of `r ∘ h`, complete after the first phase (the caller's contract).
        unsafe {
            match (p.reset_after, phase) {
                (true, _) => {
                    assert!(w.r.len() >= w.blocks * w.hidden * 3 * S::LANES && p.bias_rh.len() >= w.blocks * S::LANES);
                    gemm::<S, 3>(&w.r, w.hidden, m, rows(st.h.as_ptr()), blocks, reverse_first, &mut ResetAfter(ep))
                }
                (false, 0) => {
                    assert!(p.r_zr.len() >= w.blocks * w.hidden * 2 * S::LANES);
                    gemm::<S, 2>(&p.r_zr, w.hidden, m, rows(st.h.as_ptr()), blocks, reverse_first, &mut Gates(ep))
                }
                (false, _) => {
                    assert!(p.r_h.len() >= w.blocks * w.hidden * S::LANES);
                    gemm::<S, 1>(&p.r_h, w.hidden, m, rows(st.mid), blocks, reverse_first, &mut Candidate(ep))
                }
            }
        }
    }
}

/// What every GRU epilogue reads and writes (see [`GruKernel::step`]).
struct GruEpilogue<'a> {
    spec: &'a GruSpec,
    proj: *const f32,
    proj_row: usize,
    first: usize,
    bias: *const f32,
    bias_rh: *const f32,
    h: *const f32,
    h_out: *mut f32,
    /// Reset before: `r ∘ h` and `z`, `m x hp` each.
    rh: *mut f32,
    z: *mut f32,
    hp: usize,
    /// A training forward's tape (null: none), each row's tape row, the floats per tape row, and whether
    /// the record keeps activations (see [`GRU_TAPE_RECORD`]).
    tape: *mut f32,
    tape_rows: *const usize,
    tape_stride: usize,
    keeps: bool,
}

impl GruEpilogue<'_> {
    /// Gate `g`'s projection and bias lanes at row `r`, block `blk`.
    ///
    /// # Safety
    /// S's instructions available; `r`, `blk` among the step's (bounds checked by `GruKernel::step`).
    #[inline(always)]
    unsafe fn proj_bias<S: Simd>(&self, r: usize, blk: usize, g: usize) -> (S, S) {
        let l = S::LANES;
        // SAFETY: the caller's contract.
        unsafe {
            let p = self.proj.add(r * self.proj_row + (blk - self.first) * 3 * l + g * l);
            (S::load(p), S::load(self.bias.add((blk * 3 + g) * l)))
        }
    }

    /// `f(clip(v))` lane-wise.
    #[inline(always)]
    unsafe fn act<S: Simd>(&self, a: Activation, v: S) -> S {
        // SAFETY: S's instructions available (caller's contract).
        unsafe { S::act(a, clip_lanes(v, self.spec.clip)) }
    }

    /// `z` or `r` and its argument: `f((p + acc) + b)`, `(p + acc) + b`.
    #[inline(always)]
    unsafe fn gate<S: Simd>(&self, r: usize, blk: usize, g: usize, acc: S) -> (S, S) {
        // SAFETY: the caller's contract.
        unsafe {
            let (p, b) = self.proj_bias::<S>(r, blk, g);
            let v = p.add(acc).add(b);
            (self.act(self.spec.gate, v), v)
        }
    }

    /// `h' = (1 - z) ∘ n + z ∘ h`, stored; returned.
    #[inline(always)]
    unsafe fn update<S: Simd>(&self, r: usize, blk: usize, z: S, n: S) -> S {
        // SAFETY: the caller's contract.
        unsafe {
            let at = r * self.hp + blk * S::LANES;
            let h = S::load(self.h.add(at));
            let h_new = S::splat(1.0).sub(z).mul(n).add(z.mul(h));
            h_new.store(self.h_out.add(at));
            h_new
        }
    }

    /// Row `r`'s tape record (null without a tape).
    #[inline(always)]
    unsafe fn record(&self, r: usize) -> *mut f32 {
        if self.tape.is_null() {
            return self.tape;
        }
        // SAFETY: with a tape, `tape_rows` holds the step's m rows' tape rows (the caller's contract).
        unsafe { self.tape.add(*self.tape_rows.add(r) * self.tape_stride) }
    }

    /// Records gate `g` of block `blk` in `rec`: its value `y` or its argument `v` (see
    /// [`GRU_TAPE_RECORD`]).
    #[inline(always)]
    unsafe fn keep<S: Simd>(&self, rec: *mut f32, blk: usize, g: usize, (y, v): (S, S)) {
        // SAFETY: `rec` a record of GRU_TAPE_RECORD x hp floats, `blk` a block of the step.
        unsafe { (if self.keeps { y } else { v }).store(rec.add((blk * 3 + g) * S::LANES)) }
    }
}

/// The one-phase step (reset after the matmul): `acc` holds `h·R` for z, r, h.
struct ResetAfter<'a>(GruEpilogue<'a>);

impl<S: Simd> Epilogue<S, 3> for ResetAfter<'_> {
    #[inline(always)]
    unsafe fn apply(&mut self, r: usize, blk: usize, acc: [S; 3]) {
        let e = &self.0;
        // SAFETY: `gemm` hands rows and blocks of the step, bounds checked by `GruKernel::step`.
        unsafe {
            let z = e.gate(r, blk, 0, acc[0]);
            let rg = e.gate(r, blk, 1, acc[1]);
            let (p, b) = e.proj_bias::<S>(r, blk, 2);
            let q = acc[2].add(S::load(e.bias_rh.add(blk * S::LANES)));
            let vn = p.add(b).add(rg.0.mul(q));
            let n = e.act(e.spec.candidate, vn);
            let h_new = e.update(r, blk, z.0, n);
            let rec = e.record(r);
            if !rec.is_null() {
                e.keep(rec, blk, 0, z);
                e.keep(rec, blk, 1, rg);
                e.keep(rec, blk, 2, (n, vn));
                q.store(rec.add(3 * e.hp + blk * S::LANES));
                h_new.store(rec.add(4 * e.hp + blk * S::LANES));
            }
        }
    }
}

/// Phase one of the two-phase step: `acc` holds `h·R` for z and r; keeps `z` and `r ∘ h`.
struct Gates<'a>(GruEpilogue<'a>);

impl<S: Simd> Epilogue<S, 2> for Gates<'_> {
    #[inline(always)]
    unsafe fn apply(&mut self, r: usize, blk: usize, acc: [S; 2]) {
        let e = &self.0;
        // SAFETY: as in `ResetAfter`; `rh` and `z` hold m x hp floats.
        unsafe {
            let at = r * e.hp + blk * S::LANES;
            let (z, rg) = (e.gate(r, blk, 0, acc[0]), e.gate(r, blk, 1, acc[1]));
            z.0.store(e.z.add(at));
            let rh = rg.0.mul(S::load(e.h.add(at)));
            rh.store(e.rh.add(at));
            let rec = e.record(r);
            if !rec.is_null() {
                e.keep(rec, blk, 0, z);
                e.keep(rec, blk, 1, rg);
                rh.store(rec.add(3 * e.hp + blk * S::LANES));
            }
        }
    }
}

/// Phase two: `acc` holds `(r ∘ h)·R_h`.
struct Candidate<'a>(GruEpilogue<'a>);

impl<S: Simd> Epilogue<S, 1> for Candidate<'_> {
    #[inline(always)]
    unsafe fn apply(&mut self, r: usize, blk: usize, acc: [S; 1]) {
        let e = &self.0;
        // SAFETY: as in `Gates`.
        unsafe {
            let (p, b) = e.proj_bias::<S>(r, blk, 2);
            let vn = p.add(acc[0]).add(b);
            let n = e.act(e.spec.candidate, vn);
            let h_new = e.update(r, blk, S::load(e.z.add(r * e.hp + blk * S::LANES)), n);
            let rec = e.record(r);
            if !rec.is_null() {
                e.keep(rec, blk, 2, (n, vn));
                h_new.store(rec.add(4 * e.hp + blk * S::LANES));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(n: usize, base: f32) -> Vec<f32> {
        (0..n).map(|i| base + i as f32).collect()
    }

    #[test]
    fn onnx_packs_straight_from_its_layout_and_unpacks_exactly() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        let same = |got: &PackedGru, want: &PackedGru, layout: &str| {
            let parts =
                |p: &PackedGru| [&p.gates.w[..], &p.gates.r, &p.gates.bias, &p.bias_rh, &p.r_zr, &p.r_h].map(&bits);
            assert_eq!(parts(got), parts(want), "{layout}: I {} H {}", got.gates.input, got.gates.hidden);
            assert_eq!(got.reset_after, want.reset_after);
        };
        for (i, h, nb) in [(3, 2, 4), (70, 33, 16), (1, 17, 8)] {
            let (w, r, b) = (numbered(3 * h * i, 0.5), numbered(3 * h * h, -7e4), numbered(6 * h, 3e5));
            for b in [Some(&b[..]), None] {
                let via = GruWeights::from_onnx(i, h, &w, &r, b).unwrap();
                for reset_after in [false, true] {
                    let want = PackedGru::new(&via, reset_after, nb).unwrap();
                    let got = PackedGru::from_onnx(i, h, &w, &r, b, reset_after, nb).unwrap();
                    same(&got, &want, "ONNX");
                    assert_eq!(got.canonical(), via);
                    // PyTorch's layout (gates r, z, n), the same arrays as its parameters.
                    let (bih, bhh) = (b.map(|b| &b[..3 * h]), b.map(|b| &b[3 * h..]));
                    let via = GruWeights::from_pytorch(i, h, &w, &r, bih, bhh).unwrap();
                    let want = PackedGru::new(&via, reset_after, nb).unwrap();
                    let tp = TorchParams { weight_ih: &w, weight_hh: &r, bias_ih: bih, bias_hh: bhh };
                    let got = PackedGru::from_pytorch(i, h, &tp, reset_after, nb).unwrap();
                    same(&got, &want, "PyTorch");
                    assert_eq!(got.canonical(), via);
                }
            }
        }
        assert!(PackedGru::from_onnx(2, 1, &[0.0; 5], &[0.0; 3], None, true, 8).is_err());
        assert!(PackedGru::from_onnx(2, 1, &[0.0; 6], &[0.0; 3], Some(&[0.0; 5]), false, 8).is_err());
    }

    #[test]
    fn pytorch_and_onnx_import_to_keras_form() {
        let (i, h) = (3, 2);
        let (k, r) = (numbered(i * 3 * h, 0.0), numbered(h * 3 * h, 1000.0));
        let b = numbered(6 * h, 5000.0);
        let keras = GruWeights::from_keras(i, h, &k, &r, Some(&b), true).unwrap();
        // ONNX: transposed, the same gate order, B = input then recurrent bias.
        let onnx = GruWeights::from_onnx(i, h, &transpose(&k, i, 3 * h), &transpose(&r, h, 3 * h), Some(&b)).unwrap();
        assert_eq!(onnx, keras);
        // PyTorch: transposed, gate blocks r, z, n.
        let to_torch = |m: &[f32], cols: usize| {
            let blk = h * cols;
            [&m[blk..2 * blk], &m[..blk], &m[2 * blk..]].concat()
        };
        let (wih, whh) = (to_torch(&transpose(&k, i, 3 * h), i), to_torch(&transpose(&r, h, 3 * h), h));
        let torch =
            GruWeights::from_pytorch(i, h, &wih, &whh, Some(&to_torch(&b[..6], 1)), Some(&to_torch(&b[6..], 1)))
                .unwrap();
        assert_eq!(torch, keras);
        // Keras reset_after=False: one bias row, the recurrent bias zero.
        let before = GruWeights::from_keras(i, h, &k, &r, Some(&b[..6]), false).unwrap();
        assert_eq!((before.bias_input(), before.bias_recurrent()), (&b[..6], &[0.0; 6][..]));
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(GruWeights::from_keras(2, 0, &[], &[], None, true).is_err());
        assert!(GruWeights::from_keras(2, 1, &[0.0; 6], &[0.0; 3], Some(&[0.0; 3]), true).is_err());
        assert!(GruWeights::from_keras(2, 1, &[0.0; 6], &[0.0; 3], Some(&[0.0; 6]), false).is_err());
        assert!(GruWeights::from_onnx(2, 1, &[0.0; 5], &[0.0; 3], None).is_err());
        assert!(GruWeights::from_pytorch(usize::MAX, 2, &[], &[], None, None).is_err());
    }

    #[test]
    fn packing_splits_the_recurrent_weights_by_phase() {
        let (i, h, nb) = (1, 3, 2);
        let w = GruWeights::from_keras(i, h, &numbered(3 * h, 0.0), &numbered(h * 3 * h, 100.0), None, false).unwrap();
        let p = PackedGru::new(&w, false, nb).unwrap();
        assert!(p.gates.r.is_empty() && p.bias_rh.is_empty());
        // R_zr block 0, k = 0: z (units 0, 1), r (units 0, 1); R_h block 0, k = 0, 1: units 0, 1.
        assert_eq!(p.r_zr[..4], [100.0, 101.0, 103.0, 104.0]);
        assert_eq!(p.r_h[..4], [106.0, 107.0, 115.0, 116.0]);
        let after = PackedGru::new(&w, true, nb).unwrap();
        assert_eq!(after.gates.r.len(), 2 * h * 3 * nb);
        assert_eq!(after.bias_rh.len(), 2 * nb);
    }
}
