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

use crate::cells::activation::{clip, Activation};
use crate::cells::weights::PackedLstm;
use crate::kernel::pack::PackedGates;
use crate::kernel::simd::{clip_lanes, gemm, gemm_tall, Epilogue, Rows, Simd};
use crate::kernel::{CellKernel, SimdJob, StepState};
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
        let dao = dh.mul(hc).mul(slope_lanes(spec, spec.gate, ao, o));
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
            (fv, df.mul(slope_lanes(spec, spec.gate, af, fv)))
        };
        let dai = di.mul(slope_lanes(spec, spec.gate, ai, i));
        let dac = dg.mul(slope_lanes(spec, spec.cell, ac, g));
        let mut dcp = dc.mul(f);
        if let Some([pi, pf, _]) = p {
            dcp = dcp.add(dai.mul(pi)).add(daf.mul(pf));
        }
        ([dai, daf, dac, dao], dcp)
    }
}

/// `d a(clip(v)) / dv` lane-wise given `y = a(clip(v))`: zero outside the clip's open interval.
///
/// # Safety
/// S's instructions available.
#[inline(always)]
unsafe fn slope_lanes<S: Simd>(spec: &CellSpec, a: Activation, v: S, y: S) -> S {
    // SAFETY: S's instructions are available (caller's contract); no memory is accessed.
    unsafe {
        let d = derivative_lanes(a, v, y);
        match spec.clip {
            Some(cl) => {
                let zero = S::splat(0.0);
                S::select(v.gt(S::splat(-cl)), S::select(v.lt(S::splat(cl)), d, zero), zero)
            }
            None => d,
        }
    }
}

/// [`derivative`] lane-wise: from `y` for sigmoid and tanh, lane by lane for the others.
///
/// # Safety
/// S's instructions available.
#[inline(always)]
unsafe fn derivative_lanes<S: Simd>(a: Activation, x: S, y: S) -> S {
    // SAFETY: S's instructions are available (caller's contract); the arrays hold 16 >= LANES floats.
    unsafe {
        let one = S::splat(1.0);
        match a {
            Activation::Sigmoid => y.mul(one.sub(y)),
            Activation::Tanh => one.sub(y.mul(y)),
            _ => {
                let (mut xs, mut ys) = ([0.0f32; 16], [0.0f32; 16]);
                x.store(xs.as_mut_ptr());
                y.store(ys.as_mut_ptr());
                for (x, &y) in xs[..S::LANES].iter_mut().zip(&ys) {
                    *x = derivative(a, *x, y);
                }
                S::load(xs.as_ptr())
            }
        }
    }
}

/// `a'(x)` given `y = a(x)`: from `y` for sigmoid and tanh (no second transcendental), else exactly (in
/// f64) from `x`, with the C ABI's conventions at kinks.
#[inline]
fn derivative(a: Activation, x: f32, y: f32) -> f32 {
    match a {
        Activation::Sigmoid => y * (1.0 - y),
        Activation::Tanh => 1.0 - y * y,
        _ => crate::reference::backward::dact64(a, f64::from(x)) as f32,
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

/// One reverse step of the LSTM's backward over the first `m` rows of a sweep (sorted by decreasing
/// valid length), row `r` at tape row `rows[r]` of sequence `s = seqs[r]`, for the hidden units of
/// `blocks`:
///
/// ```text
/// dh[r] = dh_up[rows[r]] + (r < m_gemm ? dZ[rows[r] + 1] · Rᵀ : dh_start[s])
/// dZ[rows[r]], dc[s] = the cell's backward at rows[r] (from the tape, c_prev[r] and dc[s])
/// ```
/// Rows below `m_gemm` continue from the step after (their `dh` is the GEMM `dZ_next · Rᵀ` over the
/// transposed recurrent weights, the gate derivatives fused into its epilogue while the tile is in
/// registers); the others start here (their last valid step), from `dh_start` and the `dc` the caller
/// set. Buffers are raw pointers because parallel sweeps write their own elements of shared buffers:
/// batch chunks their sequences' rows, the threads of a gate-column split their units' columns.
pub(crate) struct BackwardStep<'a> {
    pub kernel: LstmKernel<'a>,
    /// `Rᵀ` ([`crate::cells::weights::Transposes::rt`]).
    pub rt: &'a PackedGates,
    /// The blocks of `Rᵀ` computed (all of them, or a thread's share in a gate-column split): block `b`
    /// covers the hidden-unit blocks `4 b .. 4 b + 4`, which are the only ones this step writes.
    pub blocks: Range<usize>,
    pub m_gemm: usize,
    pub m: usize,
    /// Tape row of each of the `m` rows.
    pub rows: &'a [usize],
    /// Sequence of each of the `m` rows (`dh_start` and `dc` are indexed by sequence).
    pub seqs: &'a [usize],
    /// Offset in `dz` of `dZ` of the step after, for the rows below `m_gemm`.
    pub next: &'a [usize],
    /// Each row's previous cell state (`hp` floats).
    pub c_prev: &'a [*const f32],
    /// `dZ` of every tape row, `4 hp` floats each in the packed order `[blocks][4][nb]`.
    pub dz: *mut f32,
    /// The tape (see [`TAPE_RECORD`]) and its floats per row.
    pub tape: *const f32,
    pub stride: usize,
    /// The gradient arriving at each tape row's `h`, `hp` floats per tape row.
    pub dh_up: *const f32,
    /// `[B][hp]`: `dh` of each sequence at its last valid step (where it starts).
    pub dh_start: *const f32,
    /// `[B][hp]`: the gradient reaching each sequence's `c`, replaced by that reaching `c_prev`.
    pub dc: *mut f32,
}

impl BackwardStep<'_> {
    /// Runs the step with `backend`'s instructions.
    ///
    /// # Safety
    /// `rows`, `c_prev` hold `m` entries, `next` `m_gemm`; every pointer is valid for what the field docs
    /// say (tape rows `rows[r]`, and `rows[r] - 1` where `c_prev` points into the tape; `dz` rows `rows[r]`
    /// and those `next` points at); `rt` and the kernel packed for `backend`; no other thread writes
    /// what this step reads or accesses the `dz` rows `rows[r]` or the `dc` rows during the call.
    pub(crate) unsafe fn run(self, backend: &crate::kernel::Backend) {
        let hp = self.kernel.packed.gates.hidden_padded();
        assert!(self.rows.len() >= self.m && self.c_prev.len() >= self.m && self.next.len() >= self.m_gemm);
        assert!(self.seqs.len() >= self.m && self.blocks.end <= self.rt.blocks);
        assert!(self.rt.gates == 4 && self.rt.input == 4 * hp && self.rt.padded_cols() >= hp);
        assert!(self.kernel.packed.peephole.as_ref().is_none_or(|p| p.len() >= 3 * hp));
        backend.run(self)
    }
}

// SAFETY: `run` is only reachable through `BackwardStep::run`, whose caller guarantees the buffers.
unsafe impl SimdJob for BackwardStep<'_> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        // SAFETY (both calls): as `BackwardStep::run`'s caller guaranteed.
        // Unoptimised builds compile the general epilogue only (see `LstmKernel::step`).
        #[cfg(not(debug_assertions))]
        if self.kernel.is_standard() {
            return unsafe { self.run_as::<S, true>() };
        }
        unsafe { self.run_as::<S, false>() }
    }
}

impl BackwardStep<'_> {
    /// [`SimdJob::run`], the epilogue compiled for the standard cell when `STD`.
    ///
    /// # Safety
    /// As [`SimdJob::run`]; `STD` only if the kernel [`is_standard`](LstmKernel::is_standard).
    #[inline(always)]
    unsafe fn run_as<S: Simd, const STD: bool>(&self) {
        let w = &self.kernel.packed.gates;
        let hp = w.hidden_padded();
        assert!(w.nb == S::LANES && self.rt.nb == S::LANES);
        let mut ep = BackwardEpilogue::<STD> {
            st: self,
            hp,
            peepholes: self.kernel.packed.peephole.as_deref().map(<[f32]>::as_ptr),
        };
        // SAFETY: S's instructions are available; the buffers as `BackwardStep::run`'s caller guaranteed,
        // the asserts there bound `rt`'s panels (4 hp rows) and columns (>= hp).
        unsafe {
            let units = (4 * self.blocks.start).min(w.blocks)..(4 * self.blocks.end).min(w.blocks);
            self.prefetch_next::<S>(units.clone(), hp);
            for r in self.m_gemm..self.m {
                let start = self.dh_start.add(*self.seqs.get_unchecked(r) * hp);
                for u in units.clone() {
                    ep.unit_block::<S>(r, u, S::load(start.add(u * S::LANES)));
                }
            }
            let a = Rows::Gathered { base: self.dz, offsets: &self.next[..self.m_gemm] };
            gemm_tall::<S, 4>(&self.rt.w, self.rt.input, self.m_gemm, a, self.blocks.clone(), &mut ep);
        }
    }
}

impl BackwardStep<'_> {
    /// Hints the cache at what the step before this one (in time; the next to run) reads of `units`:
    /// each row's tape record before this one (gate values and `c`), the upstream gradient at it and
    /// the cell state before that. The tape was written long before and is read backwards, record by
    /// record, a pattern the hardware prefetchers do not follow: without the hints every record came
    /// from L3 or memory with its full latency, inside the epilogue (perf on seed_fit: the epilogue's
    /// first tape load took a fifth of the backward step's samples).
    ///
    /// # Safety
    /// S's instructions available; `rows` holds `m` entries. The addresses need not be valid: a
    /// prefetch never faults, and they are formed with wrapping arithmetic.
    #[inline(always)]
    unsafe fn prefetch_next<S: Simd>(&self, units: Range<usize>, hp: usize) {
        let l = S::LANES;
        // SAFETY: prefetches only, of addresses computed without `add`'s in-bounds requirement.
        unsafe {
            for &t in &self.rows[..self.m] {
                let Some(t) = t.checked_sub(1) else { continue };
                let rec = self.tape.wrapping_add(t * self.stride);
                let up = self.dh_up.wrapping_add(t * hp);
                let c_prev = self.tape.wrapping_add(t.wrapping_sub(1).wrapping_mul(self.stride)).wrapping_add(4 * hp);
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
}

/// The epilogue of `dZ_next · Rᵀ`: block `blk` of `Rᵀ`'s output holds four blocks of `dh`
/// (units `(4 blk + g) nb ..`), each finished by the cell's backward.
struct BackwardEpilogue<'a, 'b, const STD: bool> {
    st: &'a BackwardStep<'b>,
    hp: usize,
    peepholes: Option<*const f32>,
}

impl<const STD: bool> BackwardEpilogue<'_, '_, STD> {
    /// The backward of unit block `u` of row `r`, `dh_in` the gradient from the step after.
    ///
    /// # Safety
    /// S's instructions available; `r < m`, `u < blocks` (the buffers as `BackwardStep::run`).
    #[inline(always)]
    unsafe fn unit_block<S: Simd>(&mut self, r: usize, u: usize, dh_in: S) {
        let (st, hp, l) = (self.st, self.hp, S::LANES);
        // SAFETY: the caller's contract; `u < blocks` keeps every access inside row `r`'s buffers.
        unsafe {
            let tr = *st.rows.get_unchecked(r);
            let rec = st.tape.add(tr * st.stride);
            let args: [S; 4] = std::array::from_fn(|g| S::load(rec.add((u * 4 + g) * l)));
            let c = S::load(rec.add(4 * hp + u * l));
            let c_prev = S::load(st.c_prev.get_unchecked(r).add(u * l));
            let dh = dh_in.add(S::load(st.dh_up.add(tr * hp + u * l)));
            let dcp = st.dc.add(*st.seqs.get_unchecked(r) * hp + u * l);
            let p = self.peepholes.map(|p| {
                let b = p.add(u * 3 * l);
                [S::load(b), S::load(b.add(l)), S::load(b.add(2 * l))]
            });
            let (dz, dc_prev) = backward_lanes::<S, STD>(st.kernel.spec, args, p, c_prev, c, dh, S::load(dcp));
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
