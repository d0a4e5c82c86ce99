//! The LSTM cell: which activations and options turn gate pre-activations into the new state.
//!
//! With gate pre-activations `z = x·W + h·R + b` (gates i, f, c, o):
//!
//! ```text
//! i = f_act(z_i + p_i ∘ c_prev)        (peepholes p only for ONNX; clip bounds each gate's argument)
//! f = f_act(z_f + p_f ∘ c_prev)        (input_forget: f = 1 - i)
//! c = f ∘ c_prev + i ∘ g_act(z_c)
//! o = f_act(z_o + p_o ∘ c)
//! h = o ∘ h_act(c)
//! ```
//! Keras: `f_act = recurrent_activation`, `g_act = h_act = activation`.

use std::ops::Range;

use crate::cells::activation::{clip, derivative_lanes, slope_lanes, Activation};
use crate::cells::grads::LstmGrads;
use crate::cells::weights::{LstmWeights, PackedLstm, Transposes};
use crate::engine::GradRows;
use crate::error::{checked_product, Result};
use crate::kernel::aligned::AlignedVec;
use crate::kernel::pack::PackedGates;
use crate::kernel::simd::{clip_lanes, gemm, gemm_tall, Epilogue, Rows, Simd, TnPart};
use crate::kernel::{BackwardStep, Carry, CellBackward, CellKernel, PrevState, StepState};
use crate::reference::Rounding;

/// Activations and options of an LSTM cell (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct CellSpec {
    /// Gate activation `f` (Keras `recurrent_activation`), applied to i, f and o.
    pub gate: Activation,
    /// Cell candidate activation `g` (Keras `activation`).
    pub cell: Activation,
    /// Output activation `h` (Keras `activation`).
    pub output: Activation,
    /// ONNX `clip`: gate arguments are clamped to `[-clip, clip]` after bias and peephole.
    pub clip: Option<f32>,
    /// ONNX `input_forget`: couple the forget gate to the input gate, `f = 1 - i`.
    pub input_forget: bool,
}

impl Default for CellSpec {
    fn default() -> Self {
        STANDARD
    }
}

/// The cell nearly every model runs (Keras' and PyTorch's, ONNX's default): sigmoid gates, tanh candidate
/// and output, no clip, no coupled forget gate.
const STANDARD: CellSpec = CellSpec {
    gate: Activation::Sigmoid,
    cell: Activation::Tanh,
    output: Activation::Tanh,
    clip: None,
    input_forget: false,
};

/// `spec`, or [`STANDARD`] as a constant when `STD` (the caller checked that `spec` is the standard
/// cell): kernels compiled with `STD` see every activation and option at compile time, so the epilogue
/// is straight-line arithmetic the compiler can schedule, without a dispatch per activation. The same
/// operations run either way, so results are bit for bit the same.
#[inline(always)]
fn spec_of<const STD: bool>(spec: &CellSpec) -> &CellSpec {
    if STD {
        &STANDARD
    } else {
        spec
    }
}

impl CellSpec {
    /// A Keras cell: `activation` for the candidate and the output, `recurrent_activation` for the gates.
    pub fn keras(activation: Activation, recurrent_activation: Activation) -> Self {
        CellSpec { gate: recurrent_activation, cell: activation, output: activation, ..Self::default() }
    }

    /// An ONNX cell with activations `(f, g, h)`, optional clip and input_forget.
    pub fn onnx(f: Activation, g: Activation, h: Activation, clip: Option<f32>, input_forget: bool) -> Self {
        CellSpec { gate: f, cell: g, output: h, clip, input_forget }
    }

    /// One cell update in scalar arithmetic with separate roundings (the portable backend's).
    /// `z` holds the four pre-activations (i, f, c, o) including bias; `p` the peepholes (i, f, o).
    #[inline]
    pub fn update(&self, z: [f32; 4], p: Option<[f32; 3]>, c_prev: f32) -> (f32, f32) {
        self.update_rounded(z, p, c_prev, Rounding::Separate)
    }

    /// One cell update in scalar arithmetic, the definition every kernel with `rounding` must match bit for
    /// bit (the activations round as [`Activation::apply_rounded`] says; the rest never fuses).
    #[inline]
    pub fn update_rounded(&self, z: [f32; 4], p: Option<[f32; 3]>, c_prev: f32, rounding: Rounding) -> (f32, f32) {
        let clip = |v: f32| clip(v, self.clip);
        let [zi, zf, zc, zo] = z;
        let (zi, zf) = match p {
            Some([pi, pf, _]) => (zi + pi * c_prev, zf + pf * c_prev),
            None => (zi, zf),
        };
        let i = self.gate.apply_rounded(clip(zi), rounding);
        let f = if self.input_forget { 1.0 - i } else { self.gate.apply_rounded(clip(zf), rounding) };
        let c = f * c_prev + i * self.cell.apply_rounded(clip(zc), rounding);
        let zo = match p {
            Some([_, _, po]) => zo + po * c,
            None => zo,
        };
        let o = self.gate.apply_rounded(clip(zo), rounding);
        (o * self.output.apply_rounded(c, rounding), c)
    }

    /// Whether a training forward records the gate activations `i, f, g, o` instead of their arguments:
    /// when no clip bounds the arguments and the gate and candidate activations are differentiated from
    /// their values alone (sigmoid, tanh), the backward then needs no activation of the gates again.
    pub(crate) fn tape_keeps_activations(&self) -> bool {
        let from_value = |a: Activation| matches!(a, Activation::Sigmoid | Activation::Tanh);
        self.clip.is_none() && from_value(self.gate) && from_value(self.cell)
    }
}

/// One block of lanes of the backward through [`update_lanes`]: from the gates `recorded` by the training
/// forward (their activations, or their arguments after the peepholes and before the clip), the block's
/// peepholes `p` (i, f,
/// o), the previous and new cell states and the gradients `dh` and `dc` arriving at the new `h` and `c`,
/// returns the gradients of the four gate pre-activations `z` (i, f, c, o) and of `c_prev`. Where the
/// forward kept arguments (see [`TAPE_RECORD`]) the activations are recomputed from them exactly as the
/// forward computed them (so the result is the same either way, bit for bit); derivatives at
/// kinks as the C ABI documents them (the clip passes the gradient strictly inside its bounds).
///
/// # Safety
/// S's instructions available.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn backward_lanes<S: Simd, const STD: bool>(
    spec: &CellSpec,
    recorded: [S; 4],
    p: Option<[S; 3]>,
    c_prev: S,
    c: S,
    dh: S,
    dc: S,
) -> ([S; 4], S) {
    // SAFETY: S's instructions are available (caller's contract); no memory is accessed.
    unsafe {
        let (spec, p) = (spec_of::<STD>(spec), if STD { None } else { p });
        // What the forward recorded: the activations themselves, or their arguments to activate again.
        let [ai, af, ac, ao] = recorded;
        let activated = spec.tape_keeps_activations();
        let act = |a: Activation, v: S| if activated { v } else { S::act(a, clip_lanes(v, spec.clip)) };
        let i = act(spec.gate, ai);
        let g = act(spec.cell, ac);
        let o = act(spec.gate, ao);
        let hc = S::act(spec.output, c);
        let dao = dh.mul(hc).mul(slope_lanes(spec.clip, spec.gate, ao, o));
        let mut dc = dc.add(dh.mul(o).mul(derivative_lanes(spec.output, c, hc)));
        if let Some([_, _, po]) = p {
            dc = dc.add(dao.mul(po));
        }
        let (mut di, df, dg) = (dc.mul(g), dc.mul(c_prev), dc.mul(i));
        let (f, daf) = if spec.input_forget {
            di = di.sub(df);
            (S::splat(1.0).sub(i), S::splat(0.0))
        } else {
            let fv = act(spec.gate, af);
            (fv, df.mul(slope_lanes(spec.clip, spec.gate, af, fv)))
        };
        let dai = di.mul(slope_lanes(spec.clip, spec.gate, ai, i));
        let dac = dg.mul(slope_lanes(spec.clip, spec.cell, ac, g));
        let mut dcp = dc.mul(f);
        if let Some([pi, pf, _]) = p {
            dcp = dcp.add(dai.mul(pi)).add(daf.mul(pf));
        }
        ([dai, daf, dac, dao], dcp)
    }
}

/// Floats a training forward keeps per valid step and hidden unit (padded to whole blocks): the four
/// gate activations `i, f, g, o` when [`CellSpec::tape_keeps_activations`], else their arguments after
/// the peepholes and before the clip, `[blocks][4][nb]` (`4 hp` floats); then the new `c` and the new `h`
/// (`hp` floats each).
pub(crate) const TAPE_RECORD: usize = 6;

/// The LSTM as the kernels see it: packed weights and activations of one layer direction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LstmKernel<'a> {
    pub packed: &'a PackedLstm,
    pub spec: &'a CellSpec,
}

impl CellKernel for LstmKernel<'_> {
    const EXTRA_STATES: usize = 1;

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
        // SAFETY (both calls): the caller's contract, passed on (one phase).
        // Unoptimised builds compile the general epilogue only: both inlined into one kernel made its
        // stack frame (unoptimised builds give every local its own slot) overflow test threads' stacks.
        #[cfg(not(debug_assertions))]
        if self.is_standard() {
            return unsafe { self.step_as::<S, true>(m, blocks, st, reverse_first) };
        }
        unsafe { self.step_as::<S, false>(m, blocks, st, reverse_first) }
    }
}

impl LstmKernel<'_> {
    /// Whether the kernels may run the cell compiled as [`STANDARD`] without peepholes.
    #[cfg_attr(debug_assertions, allow(dead_code))]
    fn is_standard(&self) -> bool {
        *self.spec == STANDARD && self.packed.peephole.is_none()
    }

    /// [`CellKernel::step`], the epilogue compiled for the standard cell when `STD`.
    ///
    /// # Safety
    /// As [`CellKernel::step`]; `STD` only if [`Self::is_standard`].
    #[inline(always)]
    unsafe fn step_as<S: Simd, const STD: bool>(
        &self,
        m: usize,
        blocks: Range<usize>,
        st: StepState<'_>,
        reverse_first: bool,
    ) -> bool {
        let w = &self.packed.gates;
        let hp = w.hidden_padded();
        let panel = 4 * S::LANES;
        let proj_row = blocks.len() * panel;
        assert!(w.gates == 4 && w.nb == S::LANES && blocks.end <= w.blocks && st.proj.len() >= m * proj_row);
        assert!(w.r.len() >= w.blocks * w.hidden * panel && st.h.len() >= m * hp && w.bias.len() >= w.blocks * panel);
        let peepholes = self.packed.peephole.as_deref();
        assert!(peepholes.is_none_or(|p| p.len() >= 3 * hp));
        let mut update = Update::<STD> {
            spec: self.spec,
            proj: st.proj.as_ptr(),
            proj_row,
            first: blocks.start,
            bias: w.bias.as_ptr(),
            peepholes: peepholes.map(<[f32]>::as_ptr),
            c: st.extra,
            h_out: st.h_out,
            hp,
            tape: st.tape,
            tape_rows: st.tape_rows,
            tape_stride: st.tape_stride,
            prefetch_tape: m.saturating_mul(st.tape_stride).saturating_mul(4) <= TAPE_PREFETCH_MAX,
        };
        let rows = Rows::Strided { base: st.h.as_ptr(), stride: hp };
        // SAFETY: the asserts above bound every read: rows < m of h (hp floats each, hidden <= hp), panels
        // of H x 4 LANES floats for blocks < w.blocks, the bias, proj and peephole blocks. The writes stay in
        // rows < m of c and h_out, in the columns of `blocks`, which the caller's contract gives us.
        unsafe { gemm::<S, 4>(&w.r, w.hidden, m, rows, blocks, reverse_first, &mut update) }
    }
}

/// The LSTM step's epilogue: `z = (proj + h·R) + b` (Keras' summation order), then the cell update
/// (compiled for the standard cell when `STD`).
struct Update<'a, const STD: bool> {
    spec: &'a CellSpec,
    proj: *const f32,
    proj_row: usize,
    first: usize,
    bias: *const f32,
    peepholes: Option<*const f32>,
    c: *mut f32,
    h_out: *mut f32,
    hp: usize,
    tape: *mut f32,
    tape_rows: *const usize,
    tape_stride: usize,
    /// Whether to fetch each row's tape record of the next step ([`TAPE_PREFETCH_MAX`]).
    prefetch_tape: bool,
}

/// Bytes of tape records a forward step may fetch ahead for the next step: small steps (seed_fit's 15
/// sequences of 128 units, 46 KiB) gain from it; large ones (64 sequences of 256 units, 384 KiB) would
/// push the recurrent weights out of L2 and were measured slower.
const TAPE_PREFETCH_MAX: usize = 64 << 10;

impl<S: Simd, const STD: bool> Epilogue<S, 4> for Update<'_, STD> {
    #[inline(always)]
    unsafe fn apply(&mut self, r: usize, blk: usize, acc: [S; 4]) {
        let panel = 4 * S::LANES;
        // SAFETY: `LstmKernel::step` checked every buffer for the rows and blocks `gemm` hands here.
        unsafe {
            let pr = self.proj.add(r * self.proj_row + (blk - self.first) * panel);
            let bias = self.bias.add(blk * panel);
            let peep = self.peepholes.map(|p| {
                let b = p.add(blk * 3 * S::LANES);
                [S::load(b), S::load(b.add(S::LANES)), S::load(b.add(2 * S::LANES))]
            });
            let z: [S; 4] =
                std::array::from_fn(|g| S::load(pr.add(g * S::LANES)).add(acc[g]).add(S::load(bias.add(g * S::LANES))));
            let cs = r * self.hp + blk * S::LANES;
            let (hn, cn, args, acts) = update_lanes::<S, STD>(self.spec, z, peep, S::load(self.c.add(cs)));
            cn.store(self.c.add(cs));
            hn.store(self.h_out.add(cs));
            if !self.tape.is_null() {
                // The training record of this step (see `TAPE_RECORD`).
                let rec = self.tape.add(*self.tape_rows.add(r) * self.tape_stride);
                let kept = if spec_of::<STD>(self.spec).tape_keeps_activations() { acts } else { args };
                for (g, a) in kept.iter().enumerate() {
                    a.store(rec.add(blk * panel + g * S::LANES));
                }
                cn.store(rec.add(4 * self.hp + blk * S::LANES));
                hn.store(rec.add(5 * self.hp + blk * S::LANES));
                if self.prefetch_tape {
                    // The sequence's record of the next step follows this one: fetch its lines of this
                    // block now, a step before they are written (ten or more sequences each write a
                    // record per step, too many streams for the hardware prefetchers, and the stores
                    // missed). Only hints, formed with wrapping arithmetic: the last record has none after.
                    let next = rec.wrapping_add(self.tape_stride);
                    for line in (0..panel).step_by(16) {
                        S::prefetch(next.wrapping_add(blk * panel + line));
                    }
                    S::prefetch(next.wrapping_add(4 * self.hp + blk * S::LANES));
                    S::prefetch(next.wrapping_add(5 * self.hp + blk * S::LANES));
                }
            }
        }
    }
}

/// The LSTM's backward as the backward sweep drives it: the forward's kernel, the transposed weights
/// and the canonical weights' sizes. Its `dZ` rows are the four gates' in the packed order
/// `[blocks][4][nb]`; it reads `c` from the step before and carries `dc`.
#[derive(Clone, Copy)]
pub(crate) struct LstmBackCell<'a> {
    pub kernel: LstmKernel<'a>,
    /// `Rᵀ` and `Wᵀ` ([`PackedLstm::transposes`]).
    pub tr: &'a Transposes,
    pub input: usize,
    pub hidden: usize,
}

impl CellBackward for LstmBackCell<'_> {
    type Grads = LstmGrads<f32>;
    const CARRY: Carry = Carry::C;
    const RECORD: usize = TAPE_RECORD;

    fn sizes(&self) -> (usize, usize) {
        (self.input, self.hidden)
    }

    fn hp(&self) -> usize {
        self.kernel.packed.gates.hidden_padded()
    }

    fn dz_width(&self) -> usize {
        4 * self.hp()
    }

    fn h_offset(&self) -> usize {
        5 * self.hp()
    }

    fn prev_state(&self) -> PrevState {
        PrevState::C(4 * self.hp())
    }

    fn rt(&self, _phase: usize) -> (&PackedGates, usize) {
        (&self.tr.rt, 0)
    }

    fn wt(&self) -> (&PackedGates, usize) {
        (&self.tr.wt, 0)
    }

    #[inline(always)]
    unsafe fn step<S: Simd>(&self, _phase: usize, st: &BackwardStep<'_>) {
        let hp = self.hp();
        let rt = &self.tr.rt;
        assert!(st.rows.len() >= st.m && st.prev.len() >= st.m && st.next.len() >= st.m_gemm);
        assert!(st.seqs.len() >= st.m && st.blocks.end <= rt.blocks);
        assert!(rt.gates == 4 && rt.input == 4 * hp && rt.padded_cols() >= hp);
        assert!(self.kernel.packed.peephole.as_ref().is_none_or(|p| p.len() >= 3 * hp));
        // SAFETY (both calls): as `CellBackward::step`'s caller guaranteed.
        // Unoptimised builds compile the general epilogue only (see `LstmKernel::step`).
        #[cfg(not(debug_assertions))]
        if self.kernel.is_standard() {
            return unsafe { self.step_as::<S, true>(st) };
        }
        unsafe { self.step_as::<S, false>(st) }
    }

    fn weight_grads(
        &self,
        rows: &GradRows<'_>,
        g: &mut LstmGrads<f32>,
        dwr: &mut AlignedVec,
        db: &mut AlignedVec,
    ) -> Result<()> {
        let (input, hd, hp) = (self.input, self.hidden, self.hp());
        let (z4, nb) = (4 * hp, self.kernel.packed.gates.nb);
        let tape = rows.tape;
        // [dW; dR] as one product ([X, H_prev]ᵀ·dZ, dZ streamed once); every element is written by the
        // column part holding it.
        let (dwr, db) = (dwr.resize_stale(checked_product(&[input + hd, z4], "dW")?), db.resize_stale(z4));
        let a = [TnPart { rows: rows.x, width: input }, TnPart { rows: rows.h_prev, width: hd }];
        rows.product(&a, 0..z4, dwr, z4, Some(db))?;
        let (dw, dr) = dwr.split_at(input * z4);
        let unpack = |packed: &[f32], n: usize, dst: &mut [f32]| {
            for k in 0..n {
                for gate in 0..4 {
                    for j in 0..hd {
                        dst[k * 4 * hd + gate * hd + j] = packed[k * z4 + (j / nb * 4 + gate) * nb + j % nb];
                    }
                }
            }
        };
        unpack(dw, input, &mut g.d_kernel);
        unpack(dr, hd, &mut g.d_recurrent);
        unpack(db, 1, &mut g.d_bias);
        if let Some(dp) = g.d_peephole.as_mut() {
            let (dz, stride) = (rows.dz, tape.stride);
            dp.fill(0.0);
            for s in 0..tape.offsets.len() - 1 {
                for tr in tape.offsets[s]..tape.offsets[s + 1] {
                    for j in 0..hd {
                        let gate = |q: usize| dz[tr * z4 + (j / nb * 4 + q) * nb + j % nb];
                        let c_prev = if tr > tape.offsets[s] {
                            tape.data[(tr - 1) * stride + 4 * hp + j]
                        } else {
                            rows.init_c.map_or(0.0, |c0| c0[s * hd + j])
                        };
                        let c = tape.data[tr * stride + 4 * hp + j];
                        dp[j] += gate(0) * c_prev;
                        dp[hd + j] += gate(1) * c_prev;
                        dp[2 * hd + j] += gate(3) * c;
                    }
                }
            }
        }
        Ok(())
    }
}

impl PackedLstm {
    /// The backward of the layer direction these weights were packed from (`weights`), with the cell
    /// `spec`: packs the transposed weights on the first call.
    ///
    /// # Errors
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) if they would not fit in memory.
    pub(crate) fn backward_cell<'a>(&'a self, weights: &LstmWeights, spec: &'a CellSpec) -> Result<LstmBackCell<'a>> {
        Ok(LstmBackCell {
            kernel: LstmKernel { packed: self, spec },
            tr: self.transposes(weights)?,
            input: weights.input_size(),
            hidden: weights.hidden_size(),
        })
    }
}

impl LstmBackCell<'_> {
    /// [`CellBackward::step`], the epilogue compiled for the standard cell when `STD`.
    ///
    /// # Safety
    /// As [`CellBackward::step`]; `STD` only if the kernel [`is_standard`](LstmKernel::is_standard).
    #[inline(always)]
    unsafe fn step_as<S: Simd, const STD: bool>(&self, st: &BackwardStep<'_>) {
        let w = &self.kernel.packed.gates;
        let hp = w.hidden_padded();
        assert!(w.nb == S::LANES && self.tr.rt.nb == S::LANES);
        let mut ep = BackwardEpilogue::<STD> {
            cell: self,
            st,
            hp,
            peepholes: self.kernel.packed.peephole.as_deref().map(<[f32]>::as_ptr),
        };
        // SAFETY: S's instructions are available; the buffers as `CellBackward::step`'s caller guaranteed,
        // the asserts in `step` bound `rt`'s panels (4 hp rows) and columns (>= hp).
        unsafe {
            let units = (4 * st.blocks.start).min(w.blocks)..(4 * st.blocks.end).min(w.blocks);
            prefetch_next::<S>(st, units.clone(), hp);
            for r in st.m_gemm..st.m {
                let start = st.dh_start.add(*st.seqs.get_unchecked(r) * hp);
                for u in units.clone() {
                    ep.unit_block::<S>(r, u, S::load(start.add(u * S::LANES)));
                }
            }
            let a = Rows::Gathered { base: st.dz, offsets: &st.next[..st.m_gemm] };
            gemm_tall::<S, 4>(&self.tr.rt.w, self.tr.rt.input, st.m_gemm, a, st.blocks.clone(), &mut ep);
        }
    }
}

/// Hints the cache at what the step before this one (in time; the next to run) reads of `units`:
/// each row's tape record before this one (gate values and `c`), the upstream gradient at it and
/// the cell state before that. The tape was written long before and is read backwards, record by
/// record, a pattern the hardware prefetchers do not follow: without the hints every record came
/// from L3 or memory with its full latency, inside the epilogue (perf on seed_fit: the epilogue's
/// first tape load took a fifth of the backward step's samples).
///
/// # Safety
/// S's instructions available; `st.rows` holds `m` entries. The addresses need not be valid: a
/// prefetch never faults, and they are formed with wrapping arithmetic.
#[inline(always)]
unsafe fn prefetch_next<S: Simd>(st: &BackwardStep<'_>, units: Range<usize>, hp: usize) {
    let l = S::LANES;
    // SAFETY: prefetches only, of addresses computed without `add`'s in-bounds requirement.
    unsafe {
        for &t in &st.rows[..st.m] {
            let Some(t) = t.checked_sub(1) else { continue };
            let rec = st.tape.wrapping_add(t * st.stride);
            let up = st.dh_up.wrapping_add(t * hp);
            let c_prev = st.tape.wrapping_add(t.wrapping_sub(1).wrapping_mul(st.stride)).wrapping_add(4 * hp);
            for u in units.clone() {
                for line in (0..4 * l).step_by(16) {
                    S::prefetch(rec.wrapping_add(u * 4 * l + line));
                }
                S::prefetch(rec.wrapping_add(4 * hp + u * l));
                S::prefetch(up.wrapping_add(u * l));
                if t > 0 {
                    S::prefetch(c_prev.wrapping_add(u * l));
                }
            }
        }
    }
}

/// The epilogue of `dZ_next · Rᵀ`: block `blk` of `Rᵀ`'s output holds four blocks of `dh`
/// (units `(4 blk + g) nb ..`), each finished by the cell's backward.
struct BackwardEpilogue<'a, 'b, const STD: bool> {
    cell: &'a LstmBackCell<'a>,
    st: &'a BackwardStep<'b>,
    hp: usize,
    peepholes: Option<*const f32>,
}

impl<const STD: bool> BackwardEpilogue<'_, '_, STD> {
    /// The backward of unit block `u` of row `r`, `dh_in` the gradient from the step after.
    ///
    /// # Safety
    /// S's instructions available; `r < m`, `u < blocks` (the buffers as `CellBackward::step`).
    #[inline(always)]
    unsafe fn unit_block<S: Simd>(&mut self, r: usize, u: usize, dh_in: S) {
        let (st, hp, l) = (self.st, self.hp, S::LANES);
        // SAFETY: the caller's contract; `u < blocks` keeps every access inside row `r`'s buffers.
        unsafe {
            let tr = *st.rows.get_unchecked(r);
            let rec = st.tape.add(tr * st.stride);
            let args: [S; 4] = std::array::from_fn(|g| S::load(rec.add((u * 4 + g) * l)));
            let c = S::load(rec.add(4 * hp + u * l));
            let c_prev = S::load(st.prev.get_unchecked(r).add(u * l));
            let dh = dh_in.add(S::load(st.dh_up.add(tr * hp + u * l)));
            let dcp = st.carry.add(*st.seqs.get_unchecked(r) * hp + u * l);
            let p = self.peepholes.map(|p| {
                let b = p.add(u * 3 * l);
                [S::load(b), S::load(b.add(l)), S::load(b.add(2 * l))]
            });
            let (dz, dc_prev) = backward_lanes::<S, STD>(self.cell.kernel.spec, args, p, c_prev, c, dh, S::load(dcp));
            let out = st.dz.add(tr * 4 * hp + u * 4 * l);
            for (g, v) in dz.iter().enumerate() {
                v.store(out.add(g * l));
            }
            dc_prev.store(dcp);
        }
    }
}

impl<S: Simd, const STD: bool> Epilogue<S, 4> for BackwardEpilogue<'_, '_, STD> {
    #[inline(always)]
    unsafe fn apply(&mut self, r: usize, blk: usize, acc: [S; 4]) {
        for (g, dh) in acc.into_iter().enumerate() {
            let u = blk * 4 + g;
            if u * S::LANES < self.hp {
                // SAFETY: `gemm` hands rows < m_gemm; `u` is a unit block below hp / nb.
                unsafe { self.unit_block::<S>(r, u, dh) };
            }
        }
    }
}

/// [`CellSpec::update_rounded`] on one block of lanes: `z` are the gate pre-activations including bias,
/// `p` the block's peepholes (i, f, o). Returns `(h, c, args, acts)`, `h` and `c` bit for bit the scalar
/// update in the backend's rounding, `args` the four gate arguments after the peepholes and before the
/// clip (what the backward differentiates the activations at), `acts` the gates `i, f, g, o`.
///
/// # Safety
/// S's instructions available.
#[inline(always)]
unsafe fn update_lanes<S: Simd, const STD: bool>(
    cell: &CellSpec,
    z: [S; 4],
    p: Option<[S; 3]>,
    c_prev: S,
) -> (S, S, [S; 4], [S; 4]) {
    // SAFETY: S's instructions are available (caller's contract); no memory is accessed.
    unsafe {
        let (cell, p) = (spec_of::<STD>(cell), if STD { None } else { p });
        let [mut zi, mut zf, zc, mut zo] = z;
        if let Some([pi, pf, _]) = p {
            zi = zi.add(pi.mul(c_prev));
            zf = zf.add(pf.mul(c_prev));
        }
        let i = S::act(cell.gate, clip_lanes(zi, cell.clip));
        let f = if cell.input_forget { S::splat(1.0).sub(i) } else { S::act(cell.gate, clip_lanes(zf, cell.clip)) };
        let g = S::act(cell.cell, clip_lanes(zc, cell.clip));
        let c = f.mul(c_prev).add(i.mul(g));
        if let Some([_, _, po]) = p {
            zo = zo.add(po.mul(c));
        }
        let o = S::act(cell.gate, clip_lanes(zo, cell.clip));
        (o.mul(S::act(cell.output, c)), c, [zi, zf, zc, zo], [i, f, g, o])
    }
}
