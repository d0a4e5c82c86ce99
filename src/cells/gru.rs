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

use crate::cells::activation::{clip, Activation};
use crate::cells::weights::{sizes, transpose};
use crate::error::{check_len, Result};
use crate::kernel::pack::{pack_panels, pack_vector, PackedGates};
use crate::kernel::simd::{clip_lanes, gemm, Epilogue, Rows, Simd};
use crate::kernel::{CellKernel, StepState};
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
        let (g, nk) = sizes(3, input, hidden)?;
        check_len("kernel", kernel.len(), nk)?;
        check_len("recurrent_kernel", recurrent_kernel.len(), hidden * g)?;
        let (mut bias_input, mut bias_recurrent) = (vec![0.0; g], vec![0.0; g]);
        if let Some(b) = bias {
            check_len("bias", b.len(), if reset_after { 2 * g } else { g })?;
            bias_input.copy_from_slice(&b[..g]);
            if reset_after {
                bias_recurrent.copy_from_slice(&b[g..]);
            }
        }
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
        let (g, nk) = sizes(3, input, hidden)?;
        check_len("weight_ih", weight_ih.len(), nk)?;
        check_len("weight_hh", weight_hh.len(), hidden * g)?;
        let reorder = |m: &[f32], cols: usize| reorder_blocks(m, hidden * cols, &TORCH_TO_CANON);
        let mut biases = [vec![0.0; g], vec![0.0; g]];
        for ((name, b), dst) in [("bias_ih", bias_ih), ("bias_hh", bias_hh)].into_iter().zip(&mut biases) {
            if let Some(b) = b {
                check_len(name, b.len(), g)?;
                *dst = reorder(b, 1);
            }
        }
        let [bias_input, bias_recurrent] = biases;
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
        let (g, nk) = sizes(3, input, hidden)?;
        check_len("W", w.len(), nk)?;
        check_len("R", r.len(), hidden * g)?;
        let (mut bias_input, mut bias_recurrent) = (vec![0.0; g], vec![0.0; g]);
        if let Some(b) = b {
            check_len("B", b.len(), 2 * g)?;
            bias_input.copy_from_slice(&b[..g]);
            bias_recurrent.copy_from_slice(&b[g..]);
        }
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
    pub(crate) r_zr: Vec<f32>,
    pub(crate) r_h: Vec<f32>,
    pub(crate) reset_after: bool,
}

impl PackedGru {
    /// Packs `w` for a cell with the reset gate after the matmul (`reset_after`) or before it, for a
    /// backend with `nb` lanes per block.
    ///
    /// # Errors
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) for sizes whose product overflows.
    pub(crate) fn new(w: &GruWeights, reset_after: bool, nb: usize) -> Result<Self> {
        let (i, h) = (w.input, w.hidden);
        let mut bias: Vec<f32> = w.bias_input.iter().zip(&w.bias_recurrent).map(|(a, b)| a + b).collect();
        if reset_after {
            bias[2 * h..].copy_from_slice(&w.bias_input[2 * h..]);
        }
        let mut gates = PackedGates::new(3, i, h, &w.kernel, &w.recurrent, &bias, nb)?;
        let (mut bias_rh, mut r_zr, mut r_h) = (Vec::new(), Vec::new(), Vec::new());
        if reset_after {
            bias_rh = pack_vector(&w.bias_recurrent[2 * h..], 1, h, nb);
        } else {
            gates.r = Vec::new();
            let cols = |range: Range<usize>| -> Vec<f32> {
                (0..h).flat_map(|k| w.recurrent[k * 3 * h..][range.clone()].iter().copied()).collect()
            };
            r_zr = pack_panels(&cols(0..2 * h), h, 2, h, nb);
            r_h = pack_panels(&cols(2 * h..3 * h), h, 1, h, nb);
        }
        Ok(PackedGru { gates, bias_rh, r_zr, r_h, reset_after })
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
        assert!(st.h.len() >= m * hp && w.bias.len() >= w.blocks * 3 * S::LANES && st.tape.is_null());
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
        };
        let rows = |base: *const f32| Rows::Strided { base, stride: hp };
        // SAFETY (every arm): the asserts above bound the reads of proj, h and the bias; the panels hold
        // `w.blocks` blocks of H rows (packed by `PackedGru::new` for this placement). The writes stay in
        // rows < m of h_out and mid, in the columns of `blocks` (the caller's contract), and the second
        // phase reads whole rows of `r ∘ h`, complete after the first phase (the caller's contract).
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

    /// `z` or `r`: `f((p + acc) + b)`.
    #[inline(always)]
    unsafe fn gate<S: Simd>(&self, r: usize, blk: usize, g: usize, acc: S) -> S {
        // SAFETY: the caller's contract.
        unsafe {
            let (p, b) = self.proj_bias::<S>(r, blk, g);
            self.act(self.spec.gate, p.add(acc).add(b))
        }
    }

    /// `h' = (1 - z) ∘ n + z ∘ h`, stored.
    #[inline(always)]
    unsafe fn update<S: Simd>(&self, r: usize, blk: usize, z: S, n: S) {
        // SAFETY: the caller's contract.
        unsafe {
            let at = r * self.hp + blk * S::LANES;
            let h = S::load(self.h.add(at));
            S::splat(1.0).sub(z).mul(n).add(z.mul(h)).store(self.h_out.add(at));
        }
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
            let brh = S::load(e.bias_rh.add(blk * S::LANES));
            let n = e.act(e.spec.candidate, p.add(b).add(rg.mul(acc[2].add(brh))));
            e.update(r, blk, z, n);
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
            e.gate(r, blk, 0, acc[0]).store(e.z.add(at));
            e.gate(r, blk, 1, acc[1]).mul(S::load(e.h.add(at))).store(e.rh.add(at));
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
            let n = e.act(e.spec.candidate, p.add(acc[0]).add(b));
            e.update(r, blk, S::load(e.z.add(r * e.hp + blk * S::LANES)), n);
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
