//! The backward sweep: backpropagation through time over valid steps only.
//!
//! ```text
//! the forward's plan (plan::use_columns, the same rule over Rᵀ's blocks):
//!   batch chunks: the sequences (sorted by valid length, longest first) dealt to chunks balanced by
//!                 valid steps, each chunk's sweep on its own thread, no synchronisation; or
//!   gate columns: every thread sweeps all sequences for its share of the hidden units, the threads
//!                 meeting at a barrier after every step (small batches, large layers)
//! each sweep:
//!     for k = n_max - 1 down to 0:                  (the active prefix grows as k falls)
//!         for each row active at k:
//!             dh = dh_up[row, k] + (k is its last step ? d_h_n : dh_prev from step k + 1)
//!             dc = (k is its last step ? d_c_n : dc_prev from step k + 1)
//!             dZ[row, k], dc_prev = the cell's backward (from the tape)
//!         dh_prev[rows active at k] = dZ_k · Rᵀ      (one GEMM, the forward's kernel)
//! then d_h0 = dZ_0 · Rᵀ, d_c0 = dc_prev after step 0; and over all valid rows in tape order (so every
//! sum has one order whatever the thread count):
//!     dW = Xᵀ·dZ, dR = H_prevᵀ·dZ, db = Σ dZ                      (GEMMs split by output columns)
//!     dx = dZ·Wᵀ                                                  (split by rows)
//! ```
//! Each row's arithmetic depends only on that row, and each weight-gradient element is one sum in tape
//! order, so gradients are bitwise identical whatever the thread count or schedule, and `dx` of a
//! sequence is the same alone or in a batch.
//!
//! The sweep is the same for every cell ([`CellBackward`]): a cell brings the width of its `dZ` rows,
//! the state it reads from the step before, the transposed weights of its GEMMs, its steps (one or more
//! dependent phases, each a GEMM with the gate derivatives fused into its epilogue, the threads of a
//! column split meeting at a barrier after each) and the products of its weight gradients. What the
//! LSTM calls `dc` is the cell's carried gradient: the GRU carries the part of `dh_prev` that does not go
//! through `R`.

use std::cmp::Reverse;
use std::ops::Range;

use super::layout::SeqIn;
use super::plan::{balance, batch_chunks, column_threads, effective_threads, use_columns, Schedule};
use super::sync::{for_each_index, for_each_part, run_columns, SpinBarrier};
use super::tape::{DirTape, GradBufs};
use super::workspace::ChunkScratch;
use super::ForwardStats;
use crate::error::{checked_product, Error, ErrorKind, Result};
use crate::kernel::aligned::AlignedVec;
use crate::kernel::pack::PackedGates;
use crate::kernel::simd::{Rows, Tn, TnPart};
use crate::kernel::{Backend, BackwardStep, Carry, CellBackward, PrevState, MAX_PHASES};
use crate::view::SeqView;

/// One layer direction's backward over one batch (see the module docs).
pub(crate) struct Backward<'a, C: CellBackward> {
    pub backend: &'static Backend,
    /// The cell: its transposed weights, its backward steps and weight-gradient products.
    pub cell: C,
    pub view: &'a SeqView,
    pub tape: &'a DirTape,
    /// The forward's input.
    pub x: SeqIn<'a>,
    /// The forward's initial `h` and, for cells with one, `c`, `[B][H]` each (`None`: zeros).
    pub init: Option<(&'a [f32], &'a [f32])>,
    /// Gradient arriving at each valid step's output `h`, `[tape rows][hp]` (the framework routes its
    /// outputs' gradients here).
    pub dh_up: &'a [f32],
    /// Gradients of the final states `[B][H]` (`None`: zeros; `d_c_n` only for cells with a `c`).
    pub d_h_n: Option<&'a [f32]>,
    pub d_c_n: Option<&'a [f32]>,
    /// Whether a sequence without valid steps reports its initial state (Keras: its state gradients pass
    /// straight through) or zeros (ONNX, PyTorch: no gradient reaches its initial state).
    pub empty_is_initial: bool,
    pub threads: usize,
    /// How the recurrence spreads over threads (the forward's rule, see [`Schedule`]).
    pub schedule: Schedule,
}

/// Where [`Backward::run`] writes; every buffer is overwritten.
pub(crate) struct BackwardOut<'a, G> {
    /// `dx` in the input's layout `(buffer, batch stride, time stride, accumulate)`: written (or added
    /// to, when `accumulate`) at valid steps only; the caller zeroes the rest.
    pub dx: Option<(&'a mut [f32], usize, usize, bool)>,
    /// Canonical parameter gradients.
    pub params: Option<&'a mut G>,
    /// `[B][H]` each (`d_c0` only for cells with a `c`).
    pub d_h0: Option<&'a mut [f32]>,
    pub d_c0: Option<&'a mut [f32]>,
}

/// What a cell's weight gradients are computed from ([`CellBackward::weight_grads`]): `dZ` of every
/// valid step in tape order and, per tape row, pointers to its input and to its previous `h`, and the
/// products over them split by columns among the layer's threads.
pub(crate) struct GradRows<'a> {
    pub backend: &'static Backend,
    pub threads: usize,
    /// `dZ`, `[tape rows][dz_width]`.
    pub dz: &'a [f32],
    pub dz_width: usize,
    /// Per tape row: its input (`input` floats) and its previous `h` (`hd` floats: the tape's `h` of the
    /// row before, or the initial `h`).
    pub x: &'a [*const f32],
    pub h_prev: &'a [*const f32],
    pub tape: &'a DirTape,
    /// The forward's initial `c` `[B][H]` (cells with a `c`).
    pub init_c: Option<&'a [f32]>,
}

impl GradRows<'_> {
    /// Per tape row, a pointer to its record's floats at `off` (for products over a recorded state).
    pub(crate) fn record_rows(&self, off: usize) -> Vec<*const f32> {
        let t = self.tape;
        // SAFETY (wrapping_add): only formed here; `Backward::run` checked the tape holds rows x stride
        // floats and callers pass an `off` inside a record.
        (0..t.rows()).map(|r| t.data.as_ptr().wrapping_add(r * t.stride + off)).collect()
    }

    /// `c[.., cols] = Aᵀ · dZ[.., cols]` and, with `sums`, `sums[cols] = Σ dZ[.., cols]`, for A the rows
    /// of `parts` side by side (C has the sum of their widths as rows of `ldc` floats); the columns split
    /// among the threads in whole pairs of vectors (the results do not depend on the split).
    pub(crate) fn product(
        &self,
        parts: &[TnPart<'_>],
        cols: Range<usize>,
        c: &mut [f32],
        ldc: usize,
        sums: Option<&mut [f32]>,
    ) -> Result<()> {
        let nb = self.backend.nb;
        let m: usize = parts.iter().map(|p| p.width).sum();
        let rows = self.tape.rows();
        if cols.end > ldc
            || cols.end > self.dz_width
            || c.len() < m * ldc
            || sums.as_ref().is_some_and(|s| s.len() < cols.end)
            || self.dz.len() < rows * self.dz_width
            || parts.iter().any(|p| p.rows.len() != rows)
            || !cols.start.is_multiple_of(nb)
            || !cols.end.is_multiple_of(nb)
        {
            return Err(Error::new(ErrorKind::Internal, "a weight-gradient product of the wrong shape"));
        }
        let a = SharedParts(parts);
        let (c_ptr, s_ptr) = (SharedMut(c.as_mut_ptr()), sums.map(|s| SharedMut(s.as_mut_ptr())));
        let (backend, dz, ldb) = (self.backend, self.dz, self.dz_width);
        let pairs = (cols.end - cols.start) / (2 * nb);
        let parts_n = effective_threads(self.threads).min(pairs).max(1);
        for_each_index(self.threads, parts_n, |j| {
            let lo = cols.start + j * pairs / parts_n * 2 * nb;
            let hi = if j + 1 == parts_n { cols.end } else { cols.start + (j + 1) * pairs / parts_n * 2 * nb };
            // SAFETY: the callers' row pointers are valid for their parts' widths (x: `input` floats, the
            // tape's h and states: `hd`), dz holds rows x dz_width floats (checked above), C holds m rows of
            // ldc >= cols.end floats and the sums cols.end floats, of which this part writes its own
            // columns only; nothing reads them meanwhile.
            unsafe {
                backend.gemm_tn(Tn {
                    a: a.get(),
                    b: dz.as_ptr(),
                    ldb,
                    cols: lo..hi,
                    c: c_ptr.get(),
                    ldc,
                    sums: s_ptr.map(SharedMut::get),
                })
            };
        })
    }
}

/// `[b][hd]` states as `[b][hp]` rows, zero past `hd` (all zero without `src`).
fn padded(src: Option<&[f32]>, b: usize, hd: usize, hp: usize) -> Vec<f32> {
    let mut dst = vec![0.0f32; b * hp];
    if let Some(src) = src {
        for s in 0..b {
            dst[s * hp..s * hp + hd].copy_from_slice(&src[s * hd..(s + 1) * hd]);
        }
    }
    dst
}

/// A raw pointer to buffers that chunks or column parts write in parallel, each its own elements.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every user writes disjoint elements (distinct sequences' rows, distinct columns; see `run`).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper, not the raw field).
    #[inline]
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The buffers every sweep of a backward shares (see [`Backward::sweep`]).
#[derive(Clone, Copy)]
struct Shared {
    /// `dZ`, `[tape rows][dz_width]`.
    dz: SharedMut,
    /// `[B][hp]` each: the carried gradient and what a step's phases hand each other.
    carry: SharedMut,
    mid: SharedMut,
    dh_start: *const f32,
    /// `[B][hp]`: the initial value of the state the cell reads from the step before.
    prev0: *const f32,
}
// SAFETY: sweeps write disjoint elements of `dz`, `carry` and `mid` (see `Backward::sweep`) and only
// read `dh_start` and `prev0`, which nobody writes during the sweeps.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// The parts of `gemm_tn`'s A (row pointers), shared read-only by parallel parts.
struct SharedParts<'a>(&'a [TnPart<'a>]);
// SAFETY: the pointers are only read through, and the rows they point at are not written meanwhile.
unsafe impl Send for SharedParts<'_> {}
unsafe impl Sync for SharedParts<'_> {}

impl<'a> SharedParts<'a> {
    /// The parts (a method, so that closures capture the wrapper and not the field).
    fn get(&self) -> &'a [TnPart<'a>] {
        self.0
    }
}

impl<C: CellBackward> Backward<'_, C> {
    /// Runs the backward in `bufs` (grown as needed, never zeroed: every element used is written first);
    /// returns what ran: the cell steps computed (the valid steps) and the schedule.
    pub(crate) fn run(&self, out: BackwardOut<'_, C::Grads>, bufs: &mut GradBufs) -> Result<ForwardStats> {
        let b = self.view.batch();
        let (input, hd) = self.cell.sizes();
        let (hp, zw, phases) = (self.cell.hp(), self.cell.dz_width(), self.cell.phases());
        let rows = self.tape.rows();
        // The record's width tells the cells apart (LSTM, GRU and RNN records differ in length).
        if self.tape.hp != hp
            || self.tape.offsets.len() != b + 1
            || rows != self.view.total_valid()
            || self.tape.stride != C::RECORD * hp
        {
            return Err(Error::argument("the tape was made for another view or layer"));
        }
        let (rt, rt_off) = self.cell.rt(0);
        let (wt, wt_off) = self.cell.wt();
        let blocks = rt.blocks;
        let shapes_ok = (1..=MAX_PHASES).contains(&phases)
            && (0..phases).all(|p| {
                let (r, off) = self.cell.rt(p);
                r.blocks == blocks && off + r.input <= zw && r.padded_cols() >= hp
            })
            && wt_off + wt.input <= zw
            && wt.padded_cols() >= input;
        if !shapes_ok || self.dh_up.len() != rows * hp || self.tape.data.len() < rows * self.tape.stride {
            return Err(Error::new(ErrorKind::Internal, "dh_up, the tape or the cell's weights have the wrong shape"));
        }
        // dZ of every valid step, in tape order; the sweep writes every element of every row before
        // anything reads it.
        let GradBufs { dz, dwr, db } = bufs;
        let dz = dz.resize_stale(checked_product(&[rows, zw], "dZ")?);
        // Per sequence, [B][hp]: dh at its last valid step (d_h_n); the carried gradient (the LSTM's: that
        // reaching c, from d_c_n, then step by step that reaching c_prev, d_c0 in the end; the GRU's: zero
        // at the last step); what a step's phases hand each other; the initial state the cell reads.
        let dh_start = padded(self.d_h_n, b, hd, hp);
        let mut carry = padded(if C::CARRY == Carry::C { self.d_c_n } else { None }, b, hd, hp);
        let mut mid = vec![0.0f32; checked_product(&[self.cell.mid_states(), b, hp], "mid")?];
        let prev0 = match self.cell.prev_state() {
            PrevState::None => Vec::new(),
            PrevState::H(_) => padded(self.init.map(|i| i.0), b, hd, hp),
            PrevState::C(_) => padded(self.init.map(|i| i.1), b, hd, hp),
        };

        let lens: Vec<usize> = (0..b).map(|s| self.view.valid_len(s)).collect();
        let mut order: Vec<usize> = (0..b).filter(|&s| lens[s] > 0).collect();
        order.sort_unstable_by_key(|&s| (Reverse(lens[s]), s));
        let threads = effective_threads(self.threads);
        let sh = Shared {
            dz: SharedMut(dz.as_mut_ptr()),
            carry: SharedMut(carry.as_mut_ptr()),
            mid: SharedMut(mid.as_mut_ptr()),
            dh_start: dh_start.as_ptr(),
            prev0: prev0.as_ptr(),
        };
        // The forward's rule over the transposed recurrent weights' blocks (4 unit blocks each).
        let (bytes, work) = (0..phases).fold((0, 0), |(bytes, work), p| {
            let r = self.cell.rt(p).0;
            (bytes + r.w.len() * 4, work + hd * r.input)
        });
        let valid: usize = order.iter().map(|&s| lens[s]).sum();
        let macs = valid.saturating_mul(work);
        let columns = use_columns(self.schedule, threads, order.len(), blocks, bytes, work, macs);
        let parts = if order.is_empty() {
            0
        } else if columns {
            let n = column_threads(threads, blocks);
            run_columns(n, |j, barrier| {
                self.sweep(&order, &lens, j * blocks / n..(j + 1) * blocks / n, sh, Some(barrier))
            })?;
            n
        } else {
            let n = batch_chunks(self.schedule, threads, order.len(), macs);
            let mut chunks: Vec<ChunkScratch> = (0..n).map(|_| Default::default()).collect();
            balance(&order, &lens, &mut Vec::new(), &mut chunks);
            for_each_part(self.threads, &mut chunks, |cs| {
                if !cs.rows.is_empty() {
                    self.sweep(&cs.rows, &lens, 0..blocks, sh, None);
                }
            })?;
            chunks.len()
        };
        // d_h0 = dZ_0 · Rᵀ (plus the carried gradient of h) of each sequence with valid steps; d_c0 = the
        // carried gradient of c after its step 0. Sequences without valid steps pass the state gradients
        // straight through (Keras) or get none (d_h0, d_c0 zero).
        let mut d_h0 = dh_start;
        for s in (0..b).filter(|&s| lens[s] == 0 && !self.empty_is_initial) {
            d_h0[s * hp..(s + 1) * hp].fill(0.0);
            carry[s * hp..(s + 1) * hp].fill(0.0);
        }
        let first: Vec<usize> = order.iter().map(|&s| self.tape.offsets[s] * zw + rt_off).collect();
        let at: Vec<usize> = order.iter().map(|&s| s * hp).collect();
        // SAFETY: each dz row from `rt_off` holds rt.input floats (checked above), fully written by the
        // sweep; d_h0 holds B x hp floats and row s (hp <= rt.padded_cols() floats) of each sequence once.
        unsafe {
            let a = |part: Range<usize>| Rows::Gathered { base: sh.dz.get(), offsets: &first[part] };
            self.gemm_rows_split(rt, a, SharedMut(d_h0.as_mut_ptr()), &at, hp, false)?;
        }
        if C::CARRY == Carry::H {
            for &s in &order {
                for (d, c) in d_h0[s * hp..(s + 1) * hp].iter_mut().zip(&carry[s * hp..]) {
                    *d += c;
                }
            }
        }
        let d_c0 = (C::CARRY == Carry::C).then_some(&carry);
        for (src, dst) in [(Some(&d_h0), out.d_h0), (d_c0, out.d_c0)] {
            if let (Some(src), Some(dst)) = (src, dst) {
                for s in 0..b {
                    dst[s * hd..(s + 1) * hd].copy_from_slice(&src[s * hp..s * hp + hd]);
                }
            }
        }
        if let Some((dx, sb, st, accumulate)) = out.dx {
            // dx = dZ · Wᵀ straight into the caller's rows, the tape rows split among threads.
            let mut o = vec![0usize; rows];
            for s in 0..b {
                let tape_rows = self.tape.offsets[s]..self.tape.offsets[s + 1];
                for (o, &t) in o[tape_rows.clone()].iter_mut().zip(&self.tape.times[tape_rows]) {
                    *o = s * sb + t * st;
                }
            }
            let end = o.iter().map(|&v| v + input).max().unwrap_or(0);
            if dx.len() < end {
                return Err(Error::new(ErrorKind::Internal, "dx is too short for the view"));
            }
            // SAFETY: dz holds rows x zw floats and each row from `wt_off` wt.input floats (checked above);
            // each output row (a distinct (sequence, time) of dx, checked in bounds above) holds `input`
            // floats.
            unsafe {
                let a =
                    |part: Range<usize>| Rows::Strided { base: sh.dz.get().add(part.start * zw + wt_off), stride: zw };
                self.gemm_rows_split(wt, a, SharedMut(dx.as_mut_ptr()), &o, input, accumulate)?;
            }
        }
        if let Some(g) = out.params {
            self.weight_grads(dz, g, dwr, db)?;
        }
        Ok(ForwardStats {
            steps_computed: rows,
            chunks: parts,
            column_split_runs: usize::from(columns && parts > 0),
            batch_chunk_runs: usize::from(!columns && parts > 0),
        })
    }

    /// `out + offsets[r] = a(r) · w` (first `limit` columns, added when `accumulate`) for every row
    /// `r < offsets.len()`, the rows split among the layer's threads in parts of at least 64; `a(part)`
    /// gives the left operand's rows of a part.
    ///
    /// # Safety
    /// Every row of `a` holds `w.input` floats; every output row holds `limit` floats, the rows are
    /// disjoint and nothing else accesses them meanwhile.
    unsafe fn gemm_rows_split<'r>(
        &self,
        w: &PackedGates,
        a: impl Fn(Range<usize>) -> Rows<'r> + Sync + Send,
        out: SharedMut,
        offsets: &[usize],
        limit: usize,
        accumulate: bool,
    ) -> Result<()> {
        let rows = offsets.len();
        let parts = effective_threads(self.threads).min(rows.div_ceil(64)).max(1);
        for_each_index(self.threads, parts, |j| {
            let part = j * rows / parts..(j + 1) * rows / parts;
            let o = Rows::Gathered { base: out.get(), offsets: &offsets[part.clone()] };
            // SAFETY: the caller's contract; parts write disjoint rows.
            unsafe { self.backend.gemm_rows(w, a(part.clone()), part.len(), o, limit, accumulate) };
        })
    }

    /// The recurrence of `rows` (sequences sorted by decreasing valid length: a batch chunk's, or all of
    /// them for one thread of a gate-column split, which meets the others at `barrier` after each phase
    /// of each step) over the hidden units of the `blocks` of `Rᵀ`: writes their `dZ` columns, their
    /// carried gradient and what the phases hand each other.
    fn sweep(&self, rows: &[usize], lens: &[usize], blocks: Range<usize>, sh: Shared, barrier: Option<&SpinBarrier>) {
        let hp = self.tape.hp;
        let (zw, stride, phases) = (self.cell.dz_width(), self.tape.stride, self.cell.phases());
        let prev_off = match self.cell.prev_state() {
            PrevState::None => None,
            PrevState::H(o) | PrevState::C(o) => Some(o),
        };
        let m = rows.len();
        let (mut at, mut next, mut cur) = (vec![0usize; m], vec![0usize; m], vec![0usize; m]);
        let mut prev = vec![std::ptr::null::<f32>(); m];
        let tape = self.tape.data.as_ptr();
        let mut active = 0;
        for k in (0..lens[rows[0]]).rev() {
            let m_gemm = active;
            // Rows whose last valid step is k start here (from dh_start and the carry the caller set).
            while active < m && lens[rows[active]] > k {
                active += 1;
            }
            for r in 0..active {
                let t = self.tape.offsets[rows[r]] + k;
                at[r] = t;
                next[r] = (t + 1) * zw;
                cur[r] = t * zw;
                if let Some(o) = prev_off {
                    // SAFETY: tape row t - 1 (k > 0) belongs to the same sequence and `o` lies inside a
                    // record; prev0 holds B x hp floats.
                    prev[r] = unsafe {
                        if k > 0 {
                            tape.add((t - 1) * stride + o)
                        } else {
                            sh.prev0.add(rows[r] * hp)
                        }
                    };
                }
            }
            let step = BackwardStep {
                blocks: blocks.clone(),
                m_gemm,
                m: active,
                rows: &at,
                seqs: rows,
                next: &next,
                cur: &cur,
                prev: &prev,
                dz: sh.dz.get(),
                tape,
                stride,
                dh_up: self.dh_up.as_ptr(),
                dh_start: sh.dh_start,
                carry: sh.carry.get(),
                mid: sh.mid.get(),
                mid_stride: self.view.batch() * hp,
            };
            for phase in 0..phases {
                // SAFETY: `run` checked the tape (rows x stride floats, stride >= the cell's record) and
                // dh_up (rows x hp); the rows below m_gemm were active at k + 1, so their tape row t + 1
                // exists and its dZ was written by the previous step (by every thread of a column split,
                // before the barrier), as was every earlier phase of this step; dz holds rows x zw floats,
                // dh_start, carry, mid and prev0 B x hp. This call writes the dz, carry and mid rows of its
                // own sequences (no other chunk holds them) and only the columns of its blocks' units (the
                // other threads of a column split write the others).
                unsafe { self.backend.backward_step(&self.cell, phase, &step) };
                if let Some(b) = barrier {
                    if !b.wait() {
                        return;
                    }
                }
            }
        }
    }

    /// The weight gradients over the valid rows in tape order: the cell's products (`[X, H_prev]ᵀ·dZ`
    /// and the like, dZ streamed once per product) and the bias sums, from the rows gathered here.
    fn weight_grads(&self, dz: &[f32], g: &mut C::Grads, dwr: &mut AlignedVec, db: &mut AlignedVec) -> Result<()> {
        let b = self.view.batch();
        let (input, hd) = self.cell.sizes();
        let hp = self.tape.hp;
        let stride = self.tape.stride;
        let h_off = self.cell.h_offset();
        let rows = self.tape.rows();
        let h0 = padded(self.init.map(|i| i.0), b, hd, hp);
        // Row k of Xᵀ's transpose (the input of tape row k) and of H_prevᵀ's (its previous h).
        let mut xr = vec![std::ptr::null(); rows];
        let mut hr = vec![std::ptr::null(); rows];
        for s in 0..b {
            for t in self.tape.offsets[s]..self.tape.offsets[s + 1] {
                let at = self.x.off + s * self.x.sb + self.tape.times[t] * self.x.st;
                if at + input > self.x.data.len() {
                    return Err(Error::new(ErrorKind::Internal, "the input is too short for the view"));
                }
                // SAFETY: in bounds of x (checked above) and of the tape (rows x stride floats, checked
                // in `run`, h_off + hp <= stride) or h0 (B x hp).
                unsafe {
                    xr[t] = self.x.data.as_ptr().add(at);
                    hr[t] = if t > self.tape.offsets[s] {
                        self.tape.data.as_ptr().add((t - 1) * stride + h_off)
                    } else {
                        h0.as_ptr().add(s * hp)
                    };
                }
            }
        }
        let ctx = GradRows {
            backend: self.backend,
            threads: self.threads,
            dz,
            dz_width: self.cell.dz_width(),
            x: &xr,
            h_prev: &hr,
            tape: self.tape,
            init_c: self.init.map(|i| i.1),
        };
        self.cell.weight_grads(&ctx, g, dwr, db)
    }
}
