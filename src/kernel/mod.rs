//! The microkernel seam: everything the scheduler needs from an instruction set.
//!
//! A [`Backend`] names an instruction set (its lane count `nb` fixes the panel layout of
//! [`pack::PackedGates`]) and provides:
//! - `project`: `out[r] = x[rows[r]] · W` for gathered valid input rows (the input projection), for any
//!   cell (the gate count is in the packed weights);
//! - `Backend::step`: one phase of a recurrent step of a `CellKernel` for the first `m` (active) rows,
//!   the cell's GEMM over its recurrent weights with its update fused into the epilogue while the tile is
//!   in registers; run with the backend's instructions through a `#[target_feature]` entry point per
//!   instruction set, generic over the cell.
//!
//! Every output element is computed by the same sequence of operations whatever the number of rows in the
//! call or the row's position in it, so results do not depend on batch composition or on threading.
//! The scheduler ([`crate::engine`]) only talks to this seam; backends for other instruction sets plug in
//! here, cells in [`crate::cells`].

use std::ops::Range;
use std::sync::OnceLock;

use crate::cells::activation::Activation;
use crate::engine::GradRows;
use crate::error::Result;
use aligned::AlignedVec;
use pack::PackedGates;
use simd::{Rows, Simd};

pub(crate) mod aligned;
#[cfg(feature = "testing")]
pub mod microbench;
pub mod pack;
pub(crate) mod portable;
pub(crate) mod simd;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

/// The recurrent state of the first `m` rows that one step of a cell reads and writes, each buffer
/// `m x hp` floats (`hp`: the hidden size padded to whole blocks).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepState<'a> {
    /// The input projections of the step's rows, as [`Backend::project`] wrote them for the step's blocks.
    pub proj: &'a [f32],
    /// The previous hidden state (read only; the whole row, every block).
    pub h: &'a [f32],
    /// The new hidden state (written for the step's blocks).
    pub h_out: *mut f32,
    /// The cell's other state, updated in place for the step's blocks (LSTM: `c`); unused by cells
    /// without one.
    pub extra: *mut f32,
    /// What one phase of the step hands the next ([`CellKernel::mid_states`] buffers of `m x hp`
    /// floats; the ONNX-default GRU: `r ⊙ h` and `z`); unused by single-phase cells. A phase writes the
    /// columns of its blocks and the next reads whole rows, so threads sharing the columns meet at a
    /// barrier between phases.
    pub mid: *mut f32,
    /// Where a training forward keeps what the backward needs (null: nothing is kept): row `r` of the
    /// step writes the cell's record (see the cell) at `tape + tape_rows[r] * tape_stride`.
    pub tape: *mut f32,
    /// Tape row of each of the step's rows (`m` entries when `tape` is not null).
    pub tape_rows: *const usize,
    /// Floats per tape row.
    pub tape_stride: usize,
}

/// Most dependent matmul phases a cell's step has (the ONNX-default GRU's two).
pub(crate) const MAX_PHASES: usize = 2;

/// A cell as the kernels see it: its packed weights and its step. A step is one or more dependent
/// phases, each a GEMM over (part of) the recurrent weights with the cell's arithmetic fused into the
/// epilogue ([`simd::gemm`] does the GEMM, the cell brings the epilogue): the LSTM, the simple RNN and the
/// GRU with the reset gate after the matmul have one, the GRU with the reset gate before it two (the
/// gates `z, r` from `h · R_zr`, then the candidate from `(r ⊙ h) · R_h`). The scheduler runs the phases
/// in order and, when threads share the columns, puts its barrier after each. Implemented once per cell,
/// generically over the vector type; [`Backend::step`] runs it with the backend's instruction set.
pub(crate) trait CellKernel: Sync {
    /// Recurrent states besides `h` (LSTM: 1, for `c`).
    const EXTRA_STATES: usize;
    /// The packed input weights (the projection's; their gate count sizes the projected rows) and the
    /// bias, and for single-phase cells the recurrent weights.
    fn packed(&self) -> &PackedGates;
    /// Bytes of recurrent weights one step streams (all phases).
    fn recurrent_bytes(&self) -> usize {
        self.packed().r.len() * 4
    }
    /// Dependent matmul phases per step, `1..=MAX_PHASES`.
    fn phases(&self) -> usize {
        1
    }
    /// Buffers of `m x hp` floats a phase hands the next ([`StepState::mid`]).
    fn mid_states(&self) -> usize {
        0
    }
    /// Phase `phase` of one step of the first `m` rows over the weight blocks `blocks`; the first row tile
    /// sweeps the blocks backwards if `reverse_first`; returns whether the last sweep ran backwards (see
    /// [`simd::gemm`]). The last phase writes `h_out`.
    ///
    /// # Safety
    /// S's instructions available; `phase < self.phases()`; `st.h_out`, `st.extra` (if the cell has extra
    /// states) and `st.mid` (if it has mid states) valid for `m * hp` floats per state, overlapping neither
    /// `st.h` nor `st.proj` nor each other; no other thread accesses the columns of `blocks` in them during
    /// the call, and every earlier phase of the step has completed for all columns.
    unsafe fn step<S: Simd>(
        &self,
        phase: usize,
        m: usize,
        blocks: Range<usize>,
        st: StepState<'_>,
        reverse_first: bool,
    ) -> bool;
}

/// One reverse step of a cell's backward over the first `m` rows of a backward sweep (sorted by
/// decreasing valid length), row `r` at tape row `rows[r]` of sequence `s = seqs[r]`, for the hidden
/// units of the transposed recurrent weights' `blocks` (block `b` covers the unit blocks `4 b .. 4 b + 4`,
/// see [`PackedGates::zero_matrix`]):
///
/// ```text
/// dh[r] = dh_up[rows[r]] + (r < m_gemm ? dZ[rows[r] + 1] · Rᵀ : dh_start[s])   (+ the carried gradient)
/// dZ[rows[r]], carry[s] = the cell's backward at rows[r] (from its tape record, prev[r] and carry[s])
/// ```
/// Rows below `m_gemm` continue from the step after (their `dh` is the GEMM over the transposed
/// recurrent weights, the gate derivatives fused into its epilogue while the tile is in registers); the
/// others start here (their last valid step), from `dh_start`. `carry` is the state gradient a cell hands
/// the step before besides `dh_prev = dZ · Rᵀ` (LSTM: `dc`; GRU: the part of `dh_prev` that does not go
/// through `R`), per sequence. Buffers are raw pointers because parallel sweeps write their own elements
/// of shared buffers: batch chunks their sequences' rows, the threads of a gate-column split their
/// units' columns.
pub(crate) struct BackwardStep<'a> {
    pub blocks: Range<usize>,
    pub m_gemm: usize,
    pub m: usize,
    /// Tape row of each of the `m` rows.
    pub rows: &'a [usize],
    /// Sequence of each of the `m` rows (`dh_start`, `carry` and `mid` are indexed by sequence).
    pub seqs: &'a [usize],
    /// Offset in `dz` of `dZ` of the step after, for the rows below `m_gemm`.
    pub next: &'a [usize],
    /// Offset in `dz` of each row's own `dZ`, for the `m` rows (the GEMMs of later phases).
    pub cur: &'a [usize],
    /// Each row's state from the step before ([`CellBackward::prev_state`]; `hp` floats), or nothing.
    pub prev: &'a [*const f32],
    /// `dZ` of every tape row, [`CellBackward::dz_width`] floats each.
    pub dz: *mut f32,
    /// The tape (the cell's records) and its floats per row.
    pub tape: *const f32,
    pub stride: usize,
    /// The gradient arriving at each tape row's `h`, `hp` floats per tape row.
    pub dh_up: *const f32,
    /// `[B][hp]`: `dh` of each sequence at its last valid step (where it starts).
    pub dh_start: *const f32,
    /// `[B][hp]`: the carried gradient reaching each sequence's step, replaced by that reaching the step
    /// before.
    pub carry: *mut f32,
    /// [`CellBackward::mid_states`] buffers of `[B][hp]` floats, one after the other: what a step's
    /// GEMM hands its epilogue pass, or one phase the next.
    pub mid: *mut f32,
    /// Floats from one `mid` buffer to the next (`B x hp`).
    pub mid_stride: usize,
}

/// The epilogue of a backward GEMM over transposed weights (blocks of four unit blocks, see
/// [`PackedGates::zero_matrix`]) that stores row `r`'s units at `base + seqs[r] * hp`, for cells that
/// finish their backward step in a pass of their own: one copy of the cell's arithmetic instead of one
/// per register-tile shape.
pub(crate) struct Stage<'a> {
    pub base: *mut f32,
    pub seqs: &'a [usize],
    pub hp: usize,
}

impl<S: Simd> simd::Epilogue<S, 4> for Stage<'_> {
    #[inline(always)]
    unsafe fn apply(&mut self, r: usize, blk: usize, acc: [S; 4]) {
        for (g, v) in acc.into_iter().enumerate() {
            let u = blk * 4 + g;
            if u * S::LANES < self.hp {
                // SAFETY: the GEMM's caller guarantees `base` holds a row of hp floats for each sequence of
                // the rows it hands (`seqs[r]`), and `u` is a unit block below hp / nb.
                unsafe { v.store(self.base.add(*self.seqs.get_unchecked(r) * self.hp + u * S::LANES)) };
            }
        }
    }
}

/// What a cell's backward carries per sequence from a step to the one before besides `dZ`
/// ([`BackwardStep::carry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Carry {
    /// Nothing (the simple RNN).
    None,
    /// A gradient of `h` (the GRU): zero at a sequence's last step, added to the initial `h`'s gradient.
    H,
    /// The gradient of the cell's other state (the LSTM's `c`): from that of the final `c`, ending as that
    /// of the initial `c`.
    C,
}

/// Which state a cell's backward reads from the step before each row ([`BackwardStep::prev`]): its
/// value in the previous tape row's record at this offset, or the initial state at a sequence's first
/// step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PrevState {
    /// None (the simple RNN).
    None,
    /// `h` (the GRU).
    H(usize),
    /// The cell state `c` (the LSTM).
    C(usize),
}

/// A cell's backward as the backward sweep ([`crate::engine`]) drives it: the width of its `dZ` rows,
/// the transposed weights of its GEMMs, the steps with its gate derivatives fused into the epilogues,
/// and its weight gradients. The sweep (order, active prefix, column split and its barriers, the
/// determinism) is the same for every cell.
pub(crate) trait CellBackward: Sync {
    /// The canonical parameter gradients.
    type Grads;
    /// What the carried gradient is.
    const CARRY: Carry;
    /// Floats of a tape record per padded hidden unit (a record is `RECORD x hp` floats).
    const RECORD: usize;
    /// Input size `I` and hidden size `H`.
    fn sizes(&self) -> (usize, usize);
    /// Hidden size padded to whole blocks.
    fn hp(&self) -> usize;
    /// Floats of `dZ` per tape row (a multiple of `hp`).
    fn dz_width(&self) -> usize;
    /// Offset of `h` in a tape record.
    fn h_offset(&self) -> usize;
    /// The state each row reads from the step before.
    fn prev_state(&self) -> PrevState;
    /// Dependent GEMM phases per step, `1..=MAX_PHASES`.
    fn phases(&self) -> usize {
        1
    }
    /// Buffers of `[B][hp]` floats the steps use ([`BackwardStep::mid`]).
    fn mid_states(&self) -> usize {
        0
    }
    /// The transposed recurrent weights of phase `phase`'s GEMM and the offset `off` in a `dZ` row of its
    /// left operand; phase 0's is `dh_prev = dZ[.., off ..] · Rᵀ` (also the initial `h`'s gradient). Every
    /// phase's has the same blocks (the column split's unit).
    fn rt(&self, phase: usize) -> (&PackedGates, usize);
    /// `Wᵀ` (`dx = dZ[.., off ..] · Wᵀ`) and the offset `off` in a `dZ` row of its left operand.
    fn wt(&self) -> (&PackedGates, usize);
    /// Phase `phase` of one backward step.
    ///
    /// # Safety
    /// S's instructions available; `phase < self.phases()`; `st.rows`, `st.cur`, `st.prev` hold `m`
    /// entries, `st.next` `m_gemm`; every pointer valid for what [`BackwardStep`]'s field docs say; the
    /// rows below `m_gemm` have their step-after `dZ` complete (every column), and every earlier phase of
    /// this step has completed for all columns; no other thread accesses the units of `st.blocks` of the
    /// rows' `dz`, `carry` and `mid` during the call.
    unsafe fn step<S: Simd>(&self, phase: usize, st: &BackwardStep<'_>);
    /// The canonical weight gradients from `rows` (their products with [`GradRows::product`], in the
    /// scratch buffers `dwr` and `db`, grown as needed).
    ///
    /// # Errors
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) for sizes that overflow;
    /// [`ErrorKind::Internal`](crate::ErrorKind::Internal) for buffers of the wrong shape.
    fn weight_grads(
        &self,
        rows: &GradRows<'_>,
        g: &mut Self::Grads,
        dwr: &mut AlignedVec,
        db: &mut AlignedVec,
    ) -> Result<()>;
}

/// Work generic over the vector type, run with one backend's instructions by [`Backend::run`].
///
/// # Safety
/// Implementors mark `run` `#[inline(always)]`, so it is compiled into the `#[target_feature]` entry point
/// with the instruction set (a function compiled apart would lack the target features), and make `run`
/// sound for any `S` whose instructions are available: a job that needs more of its caller wraps that in
/// an `unsafe` constructor or method.
pub(crate) unsafe trait SimdJob {
    /// What the job returns.
    type Output;
    /// Runs the job with `S`'s instructions.
    ///
    /// # Safety
    /// S's instructions available.
    unsafe fn run<S: Simd>(self) -> Self::Output;
}

/// Instruction-set levels, ordered: a level may run everything below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuLevel {
    /// `wide` vectors with the compile target's instructions (SSE2 on default x86-64).
    Portable,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512F.
    Avx512,
}

/// A set of kernels for one instruction set.
#[derive(Debug)]
pub struct Backend {
    /// Human-readable name (`"portable"`, ...).
    pub name: &'static str,
    /// The instruction-set level the kernels need.
    pub level: CpuLevel,
    /// Whether the kernels fuse multiply-adds (one rounding). A backend that does not performs exactly the
    /// reference's operations in the same order, so it matches the reference bit for bit.
    pub fused_multiply_add: bool,
    /// Lanes per weight block.
    pub(crate) nb: usize,
    pub(crate) activate: fn(Activation, &mut [f32]),
}

/// `job` with the portable vectors, compiled apart (not inlined into [`Backend::run`], so that an
/// unoptimised build does not give `run` the frames of every backend's instantiation at once).
#[inline(never)]
fn portable_run<J: SimdJob>(job: J) -> J::Output {
    // SAFETY: the portable vectors need no instructions beyond the compile target's.
    unsafe { job.run::<portable::Lanes>() }
}

impl Backend {
    /// Runs `job` with this backend's instructions: through a `#[target_feature]` entry point on x86,
    /// directly with the portable vectors elsewhere. Every kernel with more than one instantiation (a
    /// cell's step, the backward's GEMMs) reaches its instruction set this way.
    #[inline]
    pub(crate) fn run<J: SimdJob>(&self, job: J) -> J::Output {
        // SAFETY: a backend of `level` is only handed out when the CPU supports it.
        unsafe {
            match self.level {
                #[cfg(target_arch = "x86_64")]
                CpuLevel::Avx512 => x86::run_avx512(job),
                #[cfg(target_arch = "x86_64")]
                CpuLevel::Avx2 => x86::run_avx2(job),
                _ => portable_run(job),
            }
        }
    }

    /// One step of `cell` with this backend's instructions (see [`CellKernel::step`]).
    ///
    /// # Safety
    /// As [`CellKernel::step`], less the instruction set, which this backend guarantees (it is only
    /// handed out after run-time detection).
    #[inline]
    pub(crate) unsafe fn step<C: CellKernel>(
        &self,
        cell: &C,
        phase: usize,
        m: usize,
        blocks: Range<usize>,
        st: StepState<'_>,
        reverse_first: bool,
    ) -> bool {
        /// [`CellKernel::step`] as a job; sound to run because `Backend::step`'s caller upholds the
        /// step's contract.
        struct Step<'a, C> {
            cell: &'a C,
            phase: usize,
            m: usize,
            blocks: Range<usize>,
            st: StepState<'a>,
            reverse_first: bool,
        }
        unsafe impl<C: CellKernel> SimdJob for Step<'_, C> {
            type Output = bool;
            #[inline(always)]
            unsafe fn run<S: Simd>(self) -> bool {
                // SAFETY: S's instructions are available (`SimdJob` contract); the buffers as the caller of
                // `Backend::step` guaranteed.
                unsafe { self.cell.step::<S>(self.phase, self.m, self.blocks, self.st, self.reverse_first) }
            }
        }
        self.run(Step { cell, phase, m, blocks, st, reverse_first })
    }

    /// Phase `phase` of one backward step of `cell` with this backend's instructions (see
    /// [`CellBackward::step`]).
    ///
    /// # Safety
    /// As [`CellBackward::step`], less the instruction set, which this backend guarantees.
    #[inline]
    pub(crate) unsafe fn backward_step<C: CellBackward>(&self, cell: &C, phase: usize, st: &BackwardStep<'_>) {
        /// [`CellBackward::step`] as a job; sound to run because `Backend::backward_step`'s caller upholds
        /// the step's contract.
        struct Step<'a, 'b, C>(&'a C, usize, &'a BackwardStep<'b>);
        unsafe impl<C: CellBackward> SimdJob for Step<'_, '_, C> {
            type Output = ();
            #[inline(always)]
            unsafe fn run<S: Simd>(self) {
                // SAFETY: S's instructions are available (`SimdJob` contract); the buffers as the caller of
                // `Backend::backward_step` guaranteed.
                unsafe { self.0.step::<S>(self.1, self.2) }
            }
        }
        self.run(Step(cell, phase, st))
    }

    /// Input projection over the weight blocks `blocks`: `out[r] = x[rows[r]..][..I] · W[blocks]`, rows of
    /// `blocks.len() * G * nb` floats (see [`simd::project`]).
    pub(crate) fn project(&self, w: &PackedGates, x: &[f32], rows: &[usize], blocks: Range<usize>, out: &mut [f32]) {
        struct Job<'a> {
            w: &'a PackedGates,
            x: &'a [f32],
            rows: &'a [usize],
            blocks: Range<usize>,
            out: &'a mut [f32],
        }
        unsafe impl SimdJob for Job<'_> {
            type Output = ();
            #[inline(always)]
            unsafe fn run<S: Simd>(self) {
                // SAFETY: S's instructions are available; `project` checks every buffer itself.
                unsafe { simd::project::<S>(self.w, self.x, self.rows, self.blocks, self.out) }
            }
        }
        self.run(Job { w, x, rows, blocks, out })
    }

    /// `out.at(r)[..limit] (=|+=) a.at(r)[..w.input] · W` for rows `r < m`: the GEMM of the input
    /// projection over every block of `w` (a plain matrix, see [`PackedGates::zero_matrix`]), stored through
    /// [`simd::Store`] (added to the output when `accumulate`).
    ///
    /// # Safety
    /// Every `a.at(r)`, `r < m`, valid for `w.input` reads; every `out.at(r)` valid for `limit` writes,
    /// `limit <= w.padded_cols()`, overlapping no row of `a` and no other output row; `w` packed for this
    /// backend.
    pub(crate) unsafe fn gemm_rows(
        &self,
        w: &PackedGates,
        a: Rows<'_>,
        m: usize,
        out: Rows<'_>,
        limit: usize,
        accumulate: bool,
    ) {
        struct Job<'a> {
            w: &'a PackedGates,
            a: Rows<'a>,
            m: usize,
            store: simd::Store<'a>,
        }
        unsafe impl SimdJob for Job<'_> {
            type Output = ();
            #[inline(always)]
            unsafe fn run<S: Simd>(mut self) {
                let w = self.w;
                assert!(w.gates == 4 && w.nb == S::LANES && w.w.len() >= w.blocks * w.input * 4 * S::LANES);
                // SAFETY: S's instructions are available; the rows as the caller of `gemm_rows` guaranteed;
                // the asserts bound the weight reads.
                unsafe { simd::gemm_tall::<S, 4>(&w.w, w.input, self.m, self.a, 0..w.blocks, &mut self.store) };
            }
        }
        debug_assert!(limit <= w.padded_cols());
        self.run(Job { w, a, m, store: simd::Store { out, first: 0, limit, accumulate } })
    }

    /// [`simd::gemm_tn`] with this backend's instructions: `c[i][j] = Σ_k a[k][i] · b[k][j]` (and the column
    /// sums of B), for the weight gradients.
    ///
    /// # Safety
    /// As [`simd::gemm_tn`], less the instruction set.
    pub(crate) unsafe fn gemm_tn(&self, p: simd::Tn<'_>) {
        struct Job<'a>(simd::Tn<'a>);
        unsafe impl SimdJob for Job<'_> {
            type Output = ();
            #[inline(always)]
            unsafe fn run<S: Simd>(self) {
                // SAFETY: S's instructions are available; the buffers as the caller of `gemm_tn` guaranteed.
                unsafe { simd::gemm_tn::<S>(self.0) }
            }
        }
        assert!(p.cols.start.is_multiple_of(self.nb) && p.cols.end.is_multiple_of(self.nb));
        self.run(Job(p))
    }

    /// Applies `a` to every element of `xs` with this backend's vector code (bitwise equal to
    /// [`Activation::apply`]).
    pub fn activate(&self, a: Activation, xs: &mut [f32]) {
        (self.activate)(a, xs)
    }
}

/// The environment variable that lowers the instruction-set level: `portable`, `avx2` or `avx512`.
/// It can only lower the level the CPU supports, never raise it; other values are ignored.
pub const LEVEL_ENV: &str = "MASKED_RNN_CPU";

impl CpuLevel {
    /// All levels, lowest first.
    pub const ALL: [CpuLevel; 3] = [CpuLevel::Portable, CpuLevel::Avx2, CpuLevel::Avx512];

    /// The level's name as [`LEVEL_ENV`] spells it.
    pub fn name(self) -> &'static str {
        match self {
            CpuLevel::Portable => "portable",
            CpuLevel::Avx2 => "avx2",
            CpuLevel::Avx512 => "avx512",
        }
    }

    /// Parses a [`LEVEL_ENV`] value.
    pub fn from_name(name: &str) -> Option<CpuLevel> {
        CpuLevel::ALL.into_iter().find(|l| l.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// The highest level this CPU supports.
pub fn detected_level() -> CpuLevel {
    CpuLevel::ALL.into_iter().rev().find(|&l| supports(l)).unwrap_or(CpuLevel::Portable)
}

fn supports(level: CpuLevel) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        x86::supports(level)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        level == CpuLevel::Portable
    }
}

/// The backend of `level`, if this CPU supports it (whatever [`LEVEL_ENV`] says).
pub fn backend(level: CpuLevel) -> Option<&'static Backend> {
    if !supports(level) {
        return None;
    }
    match level {
        CpuLevel::Portable => Some(&portable::BACKEND),
        #[cfg(target_arch = "x86_64")]
        CpuLevel::Avx2 => Some(&x86::AVX2_BACKEND),
        #[cfg(target_arch = "x86_64")]
        CpuLevel::Avx512 => Some(&x86::AVX512_BACKEND),
        #[cfg(not(target_arch = "x86_64"))]
        _ => None,
    }
}

/// The backend every layer uses by default: the best the CPU supports, lowered by [`LEVEL_ENV`] if set.
/// Chosen once and cached.
pub fn selected() -> &'static Backend {
    static SELECTED: OnceLock<&'static Backend> = OnceLock::new();
    SELECTED.get_or_init(|| {
        let cap = std::env::var(LEVEL_ENV).ok().and_then(|v| CpuLevel::from_name(&v)).unwrap_or(CpuLevel::Avx512);
        let level = detected_level().min(cap);
        CpuLevel::ALL.into_iter().rev().filter(|&l| l <= level).find_map(backend).unwrap_or(&portable::BACKEND)
    })
}

/// All backends this CPU can run, best first.
pub fn available() -> Vec<&'static Backend> {
    CpuLevel::ALL.into_iter().rev().filter_map(backend).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::simd::Simd;
    use crate::cells::activation::Activation;
    use crate::reference::Rounding;

    /// Lane-wise activations of `S` agree with the scalar definitions bit for bit.
    pub(crate) fn activations_match_scalar<S: Simd>() {
        let acts = (0..=10).map(|c| Activation::from_code(c, f32::NAN, f32::NAN).unwrap());
        let specials =
            [-100.0, 100.0, -1e30, 1e30, 0.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 20.0, 0.625, -0.625];
        let xs: Vec<f32> = (-40_000..=40_000).map(|i| i as f32 * 2.5e-3).chain(specials).collect();
        let extra = [Activation::HARD_SIGMOID_KERAS3, Activation::ScaledTanh { alpha: 1.7, beta: 0.6 }];
        let mut buf = vec![0.0f32; S::LANES];
        let rounding = Rounding::fused_if(S::FUSED);
        for a in acts.chain(extra) {
            for chunk in xs.chunks(S::LANES) {
                buf.fill(0.0);
                buf[..chunk.len()].copy_from_slice(chunk);
                // SAFETY: callers only instantiate S for instruction sets this CPU has; buf holds LANES.
                unsafe { S::act(a, S::load(buf.as_ptr())).store(buf.as_mut_ptr()) };
                for (g, &x) in buf.iter().zip(chunk) {
                    let e = a.apply_rounded(x, rounding);
                    assert!(g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan()), "{a:?}({x}) = {g}, scalar {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod backward_gemm_tests {
    use super::simd::{Rows, Tn, TnPart, KC};
    use super::{available, PackedGates};

    /// Deterministic values in [-1, 1).
    fn val(k: usize) -> f32 {
        ((k.wrapping_mul(2_654_435_761) >> 7) % 2000) as f32 / 1000.0 - 1.0
    }

    /// `gemm_tn` against a float64 sum on every backend: no rows (zeros), several K-blocks, partial row tiles and
    /// column strips, gathered rows of A; the column sums too; and bit-identical results whatever the
    /// split of the columns (what makes the weight gradients independent of the thread count) or of A's
    /// columns into parts.
    #[test]
    fn gemm_tn_matches_f64_and_ignores_the_column_split() {
        let mut checked = 0;
        for be in available() {
            let l = be.nb;
            for (k_rows, m, n_vec) in
                [(0, 4, 2), (1, 1, 1), (7, 5, 3), (KC, 6, 2), (KC + 1, 13, 5), (2 * KC + 77, 25, 4)]
            {
                let n = n_vec * l;
                let ldb = n + l; // B's rows longer than the columns computed
                let a_data: Vec<f32> = (0..k_rows * (m + 3)).map(|k| val(k + 11)).collect();
                // Row k of A at a gathered, reversed position.
                let a: Vec<*const f32> =
                    (0..k_rows).map(|k| a_data[(k_rows - 1 - k) * (m + 3) + 1..].as_ptr()).collect();
                let b: Vec<f32> = (0..k_rows * ldb).map(|k| val(k + 5)).collect();
                // The same A given as one part, or as two (split inside a row tile where m allows).
                let w1 = m / 2 + 1;
                let a2: Vec<*const f32> = a.iter().map(|&r| r.wrapping_add(w1)).collect();
                let one = [TnPart { rows: &a, width: m }];
                let two = [TnPart { rows: &a, width: w1 }, TnPart { rows: &a2, width: m - w1 }];
                let run = |splits: &[usize], parts: &[TnPart<'_>]| {
                    let (mut c, mut sums) = (vec![f32::NAN; m * n], vec![f32::NAN; n]);
                    for w in splits.windows(2) {
                        let p = Tn {
                            a: parts,
                            b: b.as_ptr(),
                            ldb,
                            cols: w[0] * l..w[1] * l,
                            c: c.as_mut_ptr(),
                            ldc: n,
                            sums: Some(sums.as_mut_ptr()),
                        };
                        // SAFETY: A's rows hold m floats, B k_rows x ldb, C m x n, sums n; cols < n.
                        unsafe { be.gemm_tn(p) };
                    }
                    (c, sums)
                };
                let (c, sums) = run(&[0, n_vec], &one);
                for i in 0..m {
                    for j in 0..n {
                        let e: f64 =
                            (0..k_rows).map(|k| f64::from(unsafe { *a[k].add(i) }) * f64::from(b[k * ldb + j])).sum();
                        let g = c[i * n + j];
                        assert!(
                            (f64::from(g) - e).abs() <= 1e-5 * (1.0 + e.abs()) * k_rows as f64,
                            "{}: c[{i}][{j}] = {g}, {e}",
                            be.name
                        );
                    }
                }
                for j in 0..n {
                    let e: f64 = (0..k_rows).map(|k| f64::from(b[k * ldb + j])).sum();
                    assert!((f64::from(sums[j]) - e).abs() <= 1e-5 * k_rows as f64, "{}: sums[{j}]", be.name);
                }
                for (splits, parts) in
                    [(vec![0, 1, n_vec], &one[..]), (vec![0, n_vec - 1, n_vec], &one), (vec![0, n_vec], &two)]
                {
                    let (c2, s2) = run(&splits, parts);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&c2), bits(&c), "{}: split {splits:?}", be.name);
                    assert_eq!(bits(&s2), bits(&sums), "{}: split {splits:?}", be.name);
                }
                checked += 1;
            }
        }
        assert!(checked >= 5, "no backend ran");
    }

    /// `gemm_rows` (the backward's `dZ·Rᵀ` and `dZ·Wᵀ`) against a float64 product: output columns past
    /// `limit` untouched, `accumulate` adds.
    #[test]
    fn gemm_rows_stores_and_accumulates_within_the_limit() {
        let mut checked = 0;
        for be in available() {
            // The last case spans several row groups of `gemm_tall` (8 row tiles each) and blocks.
            let cases = [(1, 1, 1), (9, 13, 4), (40, 3 * be.nb + 5, 14), (64, 8 * be.nb, 7), (33, 9 * be.nb + 3, 101)];
            for (k, n, rows) in cases {
                let m: Vec<f32> = (0..k * n).map(|q| val(q + 3)).collect();
                let mut w = PackedGates::zero_matrix(k, n, be.nb).unwrap();
                for (q, &v) in m.iter().enumerate() {
                    w.column_mut(q % n).set(q / n, v);
                }
                let a: Vec<f32> = (0..rows * k).map(|q| val(q + 7)).collect();
                let offs: Vec<usize> = (0..rows).map(|r| (rows - 1 - r) * k).collect();
                let stride = n + 3;
                let outs: Vec<usize> = (0..rows).map(|r| r * stride).collect();
                for accumulate in [false, true] {
                    let mut out: Vec<f32> = (0..rows * stride).map(|q| val(q + 1)).collect();
                    let before = out.clone();
                    let (ra, ro) = (
                        Rows::Gathered { base: a.as_ptr(), offsets: &offs },
                        Rows::Gathered { base: out.as_mut_ptr(), offsets: &outs },
                    );
                    // SAFETY: a's rows hold k floats, out's rows n + 3 >= limit = n; rows disjoint.
                    unsafe { be.gemm_rows(&w, ra, rows, ro, n, accumulate) };
                    for r in 0..rows {
                        for j in 0..stride {
                            let got = out[r * stride + j];
                            if j >= n {
                                assert_eq!(
                                    got.to_bits(),
                                    before[r * stride + j].to_bits(),
                                    "{}: column {j} past the limit written",
                                    be.name
                                );
                                continue;
                            }
                            let mut e: f64 = (0..k).map(|q| f64::from(a[offs[r] + q]) * f64::from(m[q * n + j])).sum();
                            if accumulate {
                                e += f64::from(before[r * stride + j]);
                            }
                            assert!(
                                (f64::from(got) - e).abs() <= 1e-5 * (1.0 + e.abs()) * k as f64,
                                "{}: [{r}][{j}] = {got}, {e}",
                                be.name
                            );
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= 8, "no backend ran");
    }
}
