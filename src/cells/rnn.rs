//! The simple RNN cell (Keras `SimpleRNN`, ONNX `RNN`, PyTorch `nn.RNN`): weights imported from every
//! framework's layout, packed panels and its fused step.
//!
//! Canonical form: `kernel [I, H]`, `recurrent [H, H]`, `bias [H]` (input and recurrent biases summed):
//!
//! ```text
//! h' = f((x·kernel + h·recurrent) + bias)      f: tanh by default (ONNX: any activation, clipped
//!                                              argument; PyTorch: tanh or relu)
//! ```

use std::ops::Range;
use std::sync::OnceLock;

use crate::cells::activation::{clip, slope_lanes, Activation};
use crate::cells::grads::PytorchLayout;
use crate::cells::weights::{
    check_weights, keras_bias, pack_keras, pack_pytorch, pytorch_bias, transpose, transpose_rows, Transposes,
};
use crate::engine::GradRows;
use crate::error::{check_len, checked_product, Result};
use crate::frameworks::torch::TorchParams;
use crate::kernel::aligned::AlignedVec;
use crate::kernel::pack::{unpack_vector, PackedGates, Source};
use crate::kernel::simd::{clip_lanes, gemm, gemm_tall, Epilogue, Rows, Simd, TnPart};
use crate::kernel::{BackwardStep, Carry, CellBackward, CellKernel, PrevState, Stage, StepState};
use crate::reference::{vec_mat, Rounding};

/// The activation and options of a simple RNN cell.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct RnnSpec {
    /// The activation `f` (Keras `activation`, PyTorch `nonlinearity`, ONNX `activations[0]`).
    pub activation: Activation,
    /// ONNX `clip`: the activation's argument is clamped to `[-clip, clip]`.
    pub clip: Option<f32>,
}

impl Default for RnnSpec {
    /// `tanh`, no clip.
    fn default() -> Self {
        RnnSpec { activation: Activation::Tanh, clip: None }
    }
}

impl RnnSpec {
    /// A cell with activation `f` and optional clip.
    pub fn new(activation: Activation, clip: Option<f32>) -> Self {
        RnnSpec { activation, clip }
    }

    /// One step of one sequence in scalar arithmetic, the definition the kernels match bit for bit with
    /// `rounding`: returns the new `h`.
    pub fn step_rounded(&self, w: &RnnWeights, x: &[f32], h: &[f32], rounding: Rounding) -> Vec<f32> {
        let p = vec_mat(x, &w.kernel, w.hidden, rounding);
        let q = vec_mat(h, &w.recurrent, w.hidden, rounding);
        (0..w.hidden)
            .map(|j| self.activation.apply_rounded(clip((p[j] + q[j]) + w.bias[j], self.clip), rounding))
            .collect()
    }
}

/// Simple RNN weights of one direction in canonical form (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq)]
pub struct RnnWeights {
    input: usize,
    hidden: usize,
    kernel: Vec<f32>,
    recurrent: Vec<f32>,
    bias: Vec<f32>,
}

impl RnnWeights {
    /// From Keras' `kernel [I, H]`, `recurrent_kernel [H, H]` and `bias [H]` (None: no bias).
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
    ) -> Result<Self> {
        let g = check_weights(1, input, hidden, ["kernel", "recurrent_kernel"], kernel, recurrent_kernel)?;
        let bias = keras_bias(bias, g)?;
        Ok(RnnWeights { input, hidden, kernel: kernel.to_vec(), recurrent: recurrent_kernel.to_vec(), bias })
    }

    /// From PyTorch's `weight_ih [H, I]`, `weight_hh [H, H]`, `bias_ih`, `bias_hh [H]`.
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
        let g = check_weights(1, input, hidden, ["weight_ih", "weight_hh"], weight_ih, weight_hh)?;
        let bias = pytorch_bias(bias_ih, bias_hh, g)?;
        let (kernel, recurrent) = (transpose(weight_ih, g, input), transpose(weight_hh, g, hidden));
        Ok(RnnWeights { input, hidden, kernel, recurrent, bias })
    }

    /// From one direction of ONNX's `W [H, I]`, `R [H, H]` and `B [2H]` (Wb then Rb).
    ///
    /// # Errors
    /// As [`from_keras`](Self::from_keras).
    pub fn from_onnx(input: usize, hidden: usize, w: &[f32], r: &[f32], b: Option<&[f32]>) -> Result<Self> {
        let g = check_weights(1, input, hidden, ["W", "R"], w, r)?;
        let bias = onnx_bias(b, g)?;
        Ok(RnnWeights { input, hidden, kernel: transpose(w, g, input), recurrent: transpose(r, g, hidden), bias })
    }

    /// Input size `I`.
    pub fn input_size(&self) -> usize {
        self.input
    }
    /// Hidden size `H`.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }
    /// `kernel [I, H]`.
    pub fn kernel(&self) -> &[f32] {
        &self.kernel
    }
    /// `recurrent [H, H]`.
    pub fn recurrent(&self) -> &[f32] {
        &self.recurrent
    }
    /// `bias [H]` (input and recurrent biases summed).
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }
}

/// ONNX's `B [2 G]` (`Wb` then `Rb`; `None`: zeros) summed: `Wb + Rb`.
fn onnx_bias(b: Option<&[f32]>, g: usize) -> Result<Vec<f32>> {
    let mut bias = vec![0.0; g];
    if let Some(b) = b {
        check_len("B", b.len(), 2 * g)?;
        bias.iter_mut().zip(&b[..g]).zip(&b[g..]).for_each(|((d, x), y)| *d = x + y);
    }
    Ok(bias)
}

/// Weights of one simple RNN layer direction packed into a backend's panel layout (one gate).
#[derive(Clone, Debug)]
pub struct PackedRnn {
    pub(crate) gates: PackedGates,
    /// `Rᵀ` and `Wᵀ` for the backward, packed on first use.
    transposes: OnceLock<Transposes>,
}

impl PackedRnn {
    /// Packs `w` for a backend with `nb` lanes per block.
    ///
    /// # Errors
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) for sizes whose product overflows.
    pub(crate) fn new(w: &RnnWeights, nb: usize) -> Result<Self> {
        let src = Source::Canonical { kernel: &w.kernel, recurrent: &w.recurrent };
        let gates = PackedGates::new(1, w.input, w.hidden, src, &w.bias, nb)?;
        Ok(PackedRnn { gates, transposes: OnceLock::new() })
    }

    /// Packs one direction of ONNX's `W [H, I]`, `R [H, H]` and `B [2H]` straight from their layout, with
    /// no canonical copy: as `PackedRnn::new(&RnnWeights::from_onnx(..)?, nb)`, bit for bit.
    ///
    /// # Errors
    /// As [`RnnWeights::from_onnx`].
    pub(crate) fn from_onnx(
        input: usize,
        hidden: usize,
        w: &[f32],
        r: &[f32],
        b: Option<&[f32]>,
        nb: usize,
    ) -> Result<Self> {
        let g = check_weights(1, input, hidden, ["W", "R"], w, r)?;
        let bias = onnx_bias(b, g)?;
        let gates = PackedGates::new(1, input, hidden, Source::Units { w, r, order: &[0] }, &bias, nb)?;
        Ok(PackedRnn { gates, transposes: OnceLock::new() })
    }

    /// Packs Keras' `kernel [I, H]`, `recurrent_kernel [H, H]` and `bias [H]` as they are, with no
    /// canonical copy: as `PackedRnn::new(&RnnWeights::from_keras(..)?, nb)`.
    ///
    /// # Errors
    /// As [`RnnWeights::from_keras`].
    pub(crate) fn from_keras(
        input: usize,
        hidden: usize,
        kernel: &[f32],
        recurrent_kernel: &[f32],
        bias: Option<&[f32]>,
        nb: usize,
    ) -> Result<Self> {
        let gates = pack_keras(1, input, hidden, kernel, recurrent_kernel, bias, nb)?;
        Ok(PackedRnn { gates, transposes: OnceLock::new() })
    }

    /// Packs PyTorch's `weight_ih [H, I]`, `weight_hh [H, H]`, `bias_ih`, `bias_hh [H]` straight from
    /// their layout, with no canonical copy: as `PackedRnn::new(&RnnWeights::from_pytorch(..)?, nb)`.
    ///
    /// # Errors
    /// As [`RnnWeights::from_pytorch`].
    pub(crate) fn from_pytorch(input: usize, hidden: usize, p: &TorchParams<'_>, nb: usize) -> Result<Self> {
        Ok(PackedRnn { gates: pack_pytorch(input, hidden, p, &[0], nb)?, transposes: OnceLock::new() })
    }

    /// The canonical weights these were packed from (unpacked: exact).
    pub(crate) fn canonical(&self) -> RnnWeights {
        let p = &self.gates;
        let (input, hidden, nb) = (p.input, p.hidden, p.nb);
        let (kernel, recurrent) = (p.unpack(&p.w, input), p.unpack(&p.r, hidden));
        RnnWeights { input, hidden, kernel, recurrent, bias: unpack_vector(&p.bias, 1, hidden, nb) }
    }

    /// The backward of the layer direction these weights were packed from (`w`), with the cell `spec`:
    /// packs `Rᵀ` and `Wᵀ` (rows in unit order, `dZ`'s) on the first call.
    ///
    /// # Errors
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) if they would not fit in memory.
    pub(crate) fn backward_cell<'a>(&'a self, w: &RnnWeights, spec: &'a RnnSpec) -> Result<RnnBackCell<'a>> {
        let tr = match self.transposes.get() {
            Some(t) => t,
            None => {
                let (hp, nb) = (self.gates.hidden_padded(), self.gates.nb);
                let rt = transpose_rows(&w.recurrent, w.hidden, w.hidden, hp, nb, Some)?;
                let wt = transpose_rows(&w.kernel, w.input, w.hidden, hp, nb, Some)?;
                self.transposes.get_or_init(|| Transposes { rt, wt })
            }
        };
        Ok(RnnBackCell { packed: self, spec, tr, input: w.input, hidden: w.hidden })
    }
}

/// Floats a training forward keeps per valid step and padded hidden unit: the activation's argument
/// before the clip, then the new `h` (`hp` floats each).
pub(crate) const RNN_TAPE_RECORD: usize = 2;

/// Gradients of one simple RNN direction's parameters in canonical form ([`RnnWeights`]' shapes).
#[derive(Clone, Debug, PartialEq)]
pub struct RnnGrads<T> {
    /// Input size `I`.
    pub input: usize,
    /// Hidden size `H`.
    pub hidden: usize,
    /// `[I, H]`.
    pub d_kernel: Vec<T>,
    /// `[H, H]`.
    pub d_recurrent: Vec<T>,
    /// `[H]`: of the canonical (summed) bias, so of each framework bias alike.
    pub d_bias: Vec<T>,
}

impl<T: Copy + Default> RnnGrads<T> {
    /// Zero gradients for a cell of the given sizes.
    pub fn zeros(input: usize, hidden: usize) -> Self {
        RnnGrads {
            input,
            hidden,
            d_kernel: vec![T::default(); input * hidden],
            d_recurrent: vec![T::default(); hidden * hidden],
            d_bias: vec![T::default(); hidden],
        }
    }

    /// The gradients of ONNX's `W [H, I]`, `R [H, H]` and `B [2H]` (Wb then Rb) of several directions,
    /// concatenated along the leading direction axis.
    pub fn to_onnx_dirs(dirs: &[Self]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (mut w, mut r, mut b) = (Vec::new(), Vec::new(), Vec::new());
        for g in dirs {
            w.extend(crate::cells::grads::transpose(&g.d_kernel, g.input, g.hidden));
            r.extend(crate::cells::grads::transpose(&g.d_recurrent, g.hidden, g.hidden));
            b.extend(g.d_bias.iter().chain(&g.d_bias).copied());
        }
        (w, r, b)
    }
}

impl RnnGrads<f32> {
    /// The gradients of PyTorch's `weight_ih [H, I]`, `weight_hh [H, H]`, `bias_ih` and `bias_hh [H]`
    /// (both biases add into the same pre-activation: equal gradients).
    pub fn to_pytorch(&self) -> PytorchLayout<f32> {
        let (i, h) = (self.input, self.hidden);
        PytorchLayout {
            weight_ih: transpose(&self.d_kernel, i, h),
            weight_hh: transpose(&self.d_recurrent, h, h),
            bias_ih: self.d_bias.clone(),
            bias_hh: self.d_bias.clone(),
        }
    }
}

/// The simple RNN's backward as the backward sweep drives it: `dZ` rows are the activation's argument
/// gradients in unit order (`hp` floats); nothing is carried and no state is read from the step before.
#[derive(Clone, Copy)]
pub(crate) struct RnnBackCell<'a> {
    packed: &'a PackedRnn,
    spec: &'a RnnSpec,
    tr: &'a Transposes,
    input: usize,
    hidden: usize,
}

impl CellBackward for RnnBackCell<'_> {
    type Grads = RnnGrads<f32>;
    const CARRY: Carry = Carry::None;
    const RECORD: usize = RNN_TAPE_RECORD;

    fn sizes(&self) -> (usize, usize) {
        (self.input, self.hidden)
    }

    fn hp(&self) -> usize {
        self.packed.gates.hidden_padded()
    }

    fn dz_width(&self) -> usize {
        self.hp()
    }

    fn h_offset(&self) -> usize {
        self.hp()
    }

    fn prev_state(&self) -> PrevState {
        PrevState::None
    }

    fn mid_states(&self) -> usize {
        1
    }

    fn rt(&self, _phase: usize) -> (&PackedGates, usize) {
        (&self.tr.rt, 0)
    }

    fn wt(&self) -> (&PackedGates, usize) {
        (&self.tr.wt, 0)
    }

    #[inline(always)]
    unsafe fn step<S: Simd>(&self, _phase: usize, st: &BackwardStep<'_>) {
        let (hp, rt, l) = (self.hp(), &self.tr.rt, S::LANES);
        let blocks = self.packed.gates.blocks;
        assert!(st.rows.len() >= st.m && st.next.len() >= st.m_gemm && st.seqs.len() >= st.m);
        assert!(st.blocks.end <= rt.blocks && rt.gates == 4 && rt.input == hp && rt.padded_cols() >= hp);
        assert!(self.packed.gates.nb == l && rt.nb == l);
        // SAFETY: S's instructions are available; the buffers as `CellBackward::step`'s caller guaranteed
        // (`mid` one row of hp floats per sequence), the asserts bound `rt`'s panels (hp rows) and columns
        // (>= hp). The GEMM stages dh_next · Rᵀ of the continuing rows in `mid`, then one pass finishes
        // every row's units of `blocks`.
        unsafe {
            let a = Rows::Gathered { base: st.dz, offsets: &st.next[..st.m_gemm] };
            let mut stage = Stage { base: st.mid, seqs: st.seqs, hp };
            gemm_tall::<S, 4>(&rt.w, rt.input, st.m_gemm, a, st.blocks.clone(), &mut stage);
            let units = (4 * st.blocks.start).min(blocks)..(4 * st.blocks.end).min(blocks);
            for r in 0..st.m {
                let s = *st.seqs.get_unchecked(r);
                let from = if r < st.m_gemm { st.mid.cast_const() } else { st.dh_start };
                let (tr, spec) = (*st.rows.get_unchecked(r), self.spec);
                let rec = st.tape.add(tr * st.stride);
                for u in units.clone() {
                    let at = u * l;
                    let dh = S::load(from.add(s * hp + at)).add(S::load(st.dh_up.add(tr * hp + at)));
                    let (a, h) = (S::load(rec.add(at)), S::load(rec.add(hp + at)));
                    dh.mul(slope_lanes(spec.clip, spec.activation, a, h)).store(st.dz.add(tr * hp + at));
                }
            }
        }
    }

    fn weight_grads(
        &self,
        rows: &GradRows<'_>,
        g: &mut RnnGrads<f32>,
        dwr: &mut AlignedVec,
        db: &mut AlignedVec,
    ) -> Result<()> {
        let (input, hd, hp) = (self.input, self.hidden, self.hp());
        // [dW; dR] as one product ([X, H_prev]ᵀ·dZ, dZ streamed once).
        let (dwr, db) = (dwr.resize_stale(checked_product(&[input + hd, hp], "dW")?), db.resize_stale(hp));
        let a = [TnPart { rows: rows.x, width: input }, TnPart { rows: rows.h_prev, width: hd }];
        rows.product(&a, 0..hp, dwr, hp, Some(db))?;
        for (k, row) in dwr.chunks_exact(hp).enumerate() {
            let dst = if k < input { &mut g.d_kernel[k * hd..] } else { &mut g.d_recurrent[(k - input) * hd..] };
            dst[..hd].copy_from_slice(&row[..hd]);
        }
        g.d_bias.copy_from_slice(&db[..hd]);
        Ok(())
    }
}

/// The simple RNN as the kernels see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RnnKernel<'a> {
    pub packed: &'a PackedRnn,
    pub spec: &'a RnnSpec,
}

impl CellKernel for RnnKernel<'_> {
    const EXTRA_STATES: usize = 0;

    fn packed(&self) -> &PackedGates {
        &self.packed.gates
    }

    #[inline(always)]
    unsafe fn step<S: Simd>(
        &self,
        _phase: usize,
        m: usize,
        blocks: Range<usize>,
        st: StepState<'_>,
        reverse_first: bool,
    ) -> bool {
        let w = &self.packed.gates;
        let hp = w.hidden_padded();
        let proj_row = blocks.len() * S::LANES;
        assert!(w.gates == 1 && w.nb == S::LANES && blocks.end <= w.blocks && st.proj.len() >= m * proj_row);
        assert!(w.r.len() >= w.blocks * w.hidden * S::LANES && st.h.len() >= m * hp);
        assert!(w.bias.len() >= w.blocks * S::LANES && (st.tape.is_null() || st.tape_stride >= RNN_TAPE_RECORD * hp));
        let mut ep = RnnEpilogue {
            spec: self.spec,
            proj: st.proj.as_ptr(),
            proj_row,
            first: blocks.start,
            bias: w.bias.as_ptr(),
            h_out: st.h_out,
            hp,
            tape: st.tape,
            tape_rows: st.tape_rows,
            tape_stride: st.tape_stride,
        };
        let rows = Rows::Strided { base: st.h.as_ptr(), stride: hp };
        // SAFETY: the asserts above bound every read (rows < m of h and proj, panels of blocks < w.blocks,
        // the bias); the writes stay in rows < m of h_out and of the tape rows the caller gave (records of
        // RNN_TAPE_RECORD x hp floats), in the columns of `blocks` (caller's contract).
        unsafe { gemm::<S, 1>(&w.r, w.hidden, m, rows, blocks, reverse_first, &mut ep) }
    }
}

/// The simple RNN step's epilogue: `h' = f(clip((p + acc) + b))`.
struct RnnEpilogue<'a> {
    spec: &'a RnnSpec,
    proj: *const f32,
    proj_row: usize,
    first: usize,
    bias: *const f32,
    h_out: *mut f32,
    hp: usize,
    /// A training forward's tape (null: none), each row's tape row and the floats per tape row.
    tape: *mut f32,
    tape_rows: *const usize,
    tape_stride: usize,
}

impl<S: Simd> Epilogue<S, 1> for RnnEpilogue<'_> {
    #[inline(always)]
    unsafe fn apply(&mut self, r: usize, blk: usize, acc: [S; 1]) {
        let l = S::LANES;
        // SAFETY: `gemm` hands rows and blocks of the step, bounds checked by `RnnKernel::step`.
        unsafe {
            let p = S::load(self.proj.add(r * self.proj_row + (blk - self.first) * l));
            let v = p.add(acc[0]).add(S::load(self.bias.add(blk * l)));
            let h = S::act(self.spec.activation, clip_lanes(v, self.spec.clip));
            h.store(self.h_out.add(r * self.hp + blk * l));
            if !self.tape.is_null() {
                // The training record (see `RNN_TAPE_RECORD`).
                let rec = self.tape.add(*self.tape_rows.add(r) * self.tape_stride);
                v.store(rec.add(blk * l));
                h.store(rec.add(self.hp + blk * l));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytorch_and_onnx_import_to_keras_form() {
        let (i, h) = (3, 2);
        let k: Vec<f32> = (0..i * h).map(|v| v as f32).collect();
        let r: Vec<f32> = (0..h * h).map(|v| 100.0 + v as f32).collect();
        let keras = RnnWeights::from_keras(i, h, &k, &r, Some(&[3.0, 5.0])).unwrap();
        let (wt, rt) = (transpose(&k, i, h), transpose(&r, h, h));
        let torch = RnnWeights::from_pytorch(i, h, &wt, &rt, Some(&[1.0, 2.0]), Some(&[2.0, 3.0])).unwrap();
        assert_eq!(torch, keras);
        let onnx = RnnWeights::from_onnx(i, h, &wt, &rt, Some(&[1.0, 2.0, 2.0, 3.0])).unwrap();
        assert_eq!(onnx, keras);
        assert!(RnnWeights::from_onnx(i, h, &wt, &rt, Some(&[1.0, 2.0])).is_err());
        assert!(RnnWeights::from_keras(i, 0, &[], &[], None).is_err());
    }

    #[test]
    fn onnx_packs_straight_from_its_layout_and_unpacks_exactly() {
        let n = |len: usize, at: f32| (0..len).map(|v| at + v as f32).collect::<Vec<f32>>();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        for (i, h, nb) in [(3, 2, 4), (70, 33, 16), (1, 17, 8)] {
            let (w, r, b) = (n(h * i, 0.5), n(h * h, -7e4), n(2 * h, 3e5));
            for b in [Some(&b[..]), None] {
                let via = RnnWeights::from_onnx(i, h, &w, &r, b).unwrap();
                let (want, got) =
                    (PackedRnn::new(&via, nb).unwrap(), PackedRnn::from_onnx(i, h, &w, &r, b, nb).unwrap());
                assert_eq!(bits(&got.gates.w), bits(&want.gates.w));
                assert_eq!(bits(&got.gates.r), bits(&want.gates.r));
                assert_eq!(bits(&got.gates.bias), bits(&want.gates.bias));
                assert_eq!(got.canonical(), via);
                let (bih, bhh) = (b.map(|b| &b[..h]), b.map(|b| &b[h..]));
                let via = RnnWeights::from_pytorch(i, h, &w, &r, bih, bhh).unwrap();
                let tp = TorchParams { weight_ih: &w, weight_hh: &r, bias_ih: bih, bias_hh: bhh };
                let (want, got) = (PackedRnn::new(&via, nb).unwrap(), PackedRnn::from_pytorch(i, h, &tp, nb).unwrap());
                assert_eq!(bits(&got.gates.w), bits(&want.gates.w));
                assert_eq!(bits(&got.gates.r), bits(&want.gates.r));
                assert_eq!(bits(&got.gates.bias), bits(&want.gates.bias));
                assert_eq!(got.canonical(), via);
            }
        }
        assert!(PackedRnn::from_onnx(2, 1, &[0.0; 1], &[0.0; 1], None, 8).is_err());
        assert!(PackedRnn::from_onnx(2, 1, &[0.0; 2], &[0.0; 1], Some(&[0.0; 3]), 8).is_err());
    }
}
