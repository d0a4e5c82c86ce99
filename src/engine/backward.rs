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

use std::cmp::Reverse;
use std::ops::Range;

use super::layout::SeqIn;
use super::plan::{balance, column_threads, effective_threads, use_columns, Schedule};
use super::sync::{for_each_index, for_each_part, run_columns, SpinBarrier};
use super::tape::{DirTape, GradBufs};
use super::workspace::ChunkScratch;
use super::ForwardStats;
use crate::cells::grads::LstmGrads;
use crate::cells::lstm::{BackwardStep, CellSpec, LstmKernel};
use crate::cells::weights::{LstmWeights, PackedLstm};
use crate::error::{checked_product, Error, ErrorKind, Result};
use crate::kernel::pack::PackedGates;
use crate::kernel::simd::{Rows, Tn, TnPart};
use crate::kernel::Backend;
use crate::view::SeqView;

/// One LSTM direction's backward over one batch (see the module docs).
pub(crate) struct LstmBackward<'a> {
    pub backend: &'static Backend,
    pub weights: &'a LstmWeights,
    pub packed: &'a PackedLstm,
    pub spec: &'a CellSpec,
    pub view: &'a SeqView,
    pub tape: &'a DirTape,
    /// The forward's input.
    pub x: SeqIn<'a>,
    /// The forward's initial state `[B][H]` each (`None`: zeros).
    pub init: Option<(&'a [f32], &'a [f32])>,
    /// Gradient arriving at each valid step's output `h`, `[tape rows][hp]` (the framework routes its
    /// outputs' gradients here).
    pub dh_up: &'a [f32],
    /// Gradients of the final states `[B][H]` (`None`: zeros).
    pub d_h_n: Option<&'a [f32]>,
    pub d_c_n: Option<&'a [f32]>,
    /// Whether a sequence without valid steps reports its initial state (Keras: its state gradients pass
    /// straight through) or zeros (ONNX, PyTorch: no gradient reaches its initial state).
    pub empty_is_initial: bool,
    pub threads: usize,
    /// How the recurrence spreads over threads (the forward's rule, see [`Schedule`]).
    pub schedule: Schedule,
}

/// Where [`LstmBackward::run`] writes; every buffer is overwritten.
pub(crate) struct LstmBackwardOut<'a> {
    /// `dx` in the input's layout `(buffer, batch stride, time stride, accumulate)`: written (or added
    /// to, when `accumulate`) at valid steps only; the caller zeroes the rest.
    pub dx: Option<(&'a mut [f32], usize, usize, bool)>,
    /// Canonical parameter gradients.
    pub params: Option<&'a mut LstmGrads<f32>>,
    /// `[B][H]` each.
    pub d_h0: Option<&'a mut [f32]>,
    pub d_c0: Option<&'a mut [f32]>,
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

/// `v` as a slice of `n` floats, grown (new room zeroed) but not cleared: the caller overwrites what it
/// reads.
fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
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

/// The buffers every sweep of a backward shares (see [`LstmBackward::sweep`]).
#[derive(Clone, Copy)]
struct Shared {
    /// `dZ`, `[tape rows][4 hp]`.
    dz: SharedMut,
    /// `[B][hp]` each.
    dc: SharedMut,
    dh_start: *const f32,
    c0: *const f32,
}
// SAFETY: sweeps write disjoint elements of `dz` and `dc` (see `LstmBackward::sweep`) and only read
// `dh_start` and `c0`, which nobody writes during the sweeps.
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

impl LstmBackward<'_> {
    /// Runs the backward in `bufs` (grown as needed, never zeroed: every element used is written first);
    /// returns what ran: the cell steps computed (the valid steps) and the schedule.
    pub(crate) fn run(&self, out: LstmBackwardOut<'_>, bufs: &mut GradBufs) -> Result<ForwardStats> {
        let (b, hd, input) = (self.view.batch(), self.weights.hidden_size(), self.weights.input_size());
        let hp = self.packed.gates.hidden_padded();
        let rows = self.tape.rows();
        let z4 = 4 * hp;
        if self.tape.hp != hp || self.tape.offsets.len() != b + 1 || rows != self.view.total_valid() {
            return Err(Error::argument("the tape was made for another view or layer"));
        }
        if self.dh_up.len() != rows * hp || self.tape.data.len() < rows * self.tape.stride || self.tape.stride < 6 * hp
        {
            return Err(Error::new(ErrorKind::Internal, "dh_up or the tape has the wrong length"));
        }
        let tr = self.packed.transposes(self.weights)?;
        // dZ of every valid step, in tape order, in the packed layout [blocks][4][nb]; the sweep writes
        // every element (all 4 gates of every unit block of every row) before anything reads it.
        let GradBufs { dz, dwr, db } = bufs;
        let dz = grow(dz, checked_product(&[rows, z4], "dZ")?);
        // Per sequence, [B][hp]: dh at its last valid step (d_h_n), the gradient reaching its c (d_c_n,
        // then step by step that reaching c_prev, d_c0 in the end) and its initial c.
        let (dh_start, mut dc) = (padded(self.d_h_n, b, hd, hp), padded(self.d_c_n, b, hd, hp));
        let c0 = padded(self.init.map(|i| i.1), b, hd, hp);

        let lens: Vec<usize> = (0..b).map(|s| self.view.valid_len(s)).collect();
        let mut order: Vec<usize> = (0..b).filter(|&s| lens[s] > 0).collect();
        order.sort_unstable_by_key(|&s| (Reverse(lens[s]), s));
        let threads = effective_threads(self.threads);
        let blocks = tr.rt.blocks;
        let sh = Shared {
            dz: SharedMut(dz.as_mut_ptr()),
            dc: SharedMut(dc.as_mut_ptr()),
            dh_start: dh_start.as_ptr(),
            c0: c0.as_ptr(),
        };
        // The forward's rule over the transposed recurrent weights' blocks (4 unit blocks each).
        let columns = use_columns(self.schedule, threads, order.len(), blocks, tr.rt.w.len() * 4, hd * hp * 4);
        let parts = if order.is_empty() {
            0
        } else if columns {
            let n = column_threads(threads, blocks);
            run_columns(n, |j, barrier| {
                self.sweep(&order, &lens, &tr.rt, j * blocks / n..(j + 1) * blocks / n, sh, Some(barrier))
            })?;
            n
        } else {
            let mut chunks: Vec<ChunkScratch> = (0..threads.min(order.len())).map(|_| Default::default()).collect();
            balance(&order, &lens, &mut Vec::new(), &mut chunks);
            for_each_part(self.threads, &mut chunks, |cs| {
                if !cs.rows.is_empty() {
                    self.sweep(&cs.rows, &lens, &tr.rt, 0..blocks, sh, None);
                }
            })?;
            chunks.len()
        };
        // d_h0 = dZ_0 · Rᵀ of each sequence with valid steps; d_c0 = dc after its step 0. Sequences
        // without valid steps pass the state gradients straight through (Keras) or get none (d_h0, d_c0
        // zero).
        let mut d_h0 = dh_start;
        let d_c0 = &mut dc;
        for s in (0..b).filter(|&s| lens[s] == 0 && !self.empty_is_initial) {
            d_h0[s * hp..(s + 1) * hp].fill(0.0);
            d_c0[s * hp..(s + 1) * hp].fill(0.0);
        }
        let first: Vec<usize> = order.iter().map(|&s| self.tape.offsets[s] * z4).collect();
        let at: Vec<usize> = order.iter().map(|&s| s * hp).collect();
        // SAFETY: dz rows hold 4 hp = rt.input floats, fully written by the sweep; d_h0 holds B x hp floats
        // and row s (hp <= rt.padded_cols() floats) of each sequence once.
        unsafe {
            let a = |part: Range<usize>| Rows::Gathered { base: sh.dz.get(), offsets: &first[part] };
            self.gemm_rows_split(&tr.rt, a, SharedMut(d_h0.as_mut_ptr()), &at, hp, false)?;
        }
        for (src, dst) in [(&d_h0, out.d_h0), (&*d_c0, out.d_c0)] {
            if let Some(dst) = dst {
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
            // SAFETY: dz holds rows x z4 floats, so each part's dz rows (z4 = wt.input floats each) start in
            // bounds; each output row (a distinct (sequence, time) of dx, checked in bounds above) holds
            // `input` floats.
            unsafe {
                let a = |part: Range<usize>| Rows::Strided { base: sh.dz.get().add(part.start * z4), stride: z4 };
                self.gemm_rows_split(&tr.wt, a, SharedMut(dx.as_mut_ptr()), &o, input, accumulate)?;
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
    /// them for one thread of a gate-column split, which meets the others at `barrier` after each step)
    /// over the hidden units of the `blocks` of `Rᵀ`: writes their `dZ` columns and their `dc`.
    fn sweep(
        &self,
        rows: &[usize],
        lens: &[usize],
        rt: &PackedGates,
        blocks: Range<usize>,
        sh: Shared,
        barrier: Option<&SpinBarrier>,
    ) {
        let hp = self.tape.hp;
        let (z4, stride) = (4 * hp, self.tape.stride);
        let m = rows.len();
        let (mut at, mut next) = (vec![0usize; m], vec![0usize; m]);
        let mut c_prev = vec![std::ptr::null::<f32>(); m];
        let tape = self.tape.data.as_ptr();
        let kernel = LstmKernel { packed: self.packed, spec: self.spec };
        let mut active = 0;
        for k in (0..lens[rows[0]]).rev() {
            let m_gemm = active;
            // Rows whose last valid step is k start here (from dh_start and the dc the caller set).
            while active < m && lens[rows[active]] > k {
                active += 1;
            }
            for r in 0..active {
                let t = self.tape.offsets[rows[r]] + k;
                at[r] = t;
                next[r] = (t + 1) * z4;
                // SAFETY: tape row t - 1 (k > 0) belongs to the same sequence; c0 holds B x hp floats.
                c_prev[r] = unsafe {
                    if k > 0 {
                        tape.add((t - 1) * stride + 4 * hp)
                    } else {
                        sh.c0.add(rows[r] * hp)
                    }
                };
            }
            let step = BackwardStep {
                kernel,
                rt,
                blocks: blocks.clone(),
                m_gemm,
                m: active,
                rows: &at,
                seqs: rows,
                next: &next,
                c_prev: &c_prev,
                dz: sh.dz.get(),
                tape,
                stride,
                dh_up: self.dh_up.as_ptr(),
                dh_start: sh.dh_start,
                dc: sh.dc.get(),
            };
            // SAFETY: `run` checked the tape (rows x stride floats, stride >= 6 hp) and dh_up (rows x hp);
            // the rows below m_gemm were active at k + 1, so their tape row t + 1 exists and its dZ was
            // written by the previous step (by every thread of a column split, before the barrier);
            // dz holds rows x 4 hp floats, dh_start, dc and c0 B x hp. This call writes the dz rows and dc
            // rows of its own sequences (no other chunk holds them) and only the columns of its blocks'
            // units (the other threads of a column split write the others).
            unsafe { step.run(self.backend) };
            if let Some(b) = barrier {
                if !b.wait() {
                    return;
                }
            }
        }
    }

    /// `dW = Xᵀ·dZ`, `dR = H_prevᵀ·dZ`, `db = Σ dZ` and the peephole gradients, over the valid rows in
    /// tape order; `[dW; dR]` as one product (`[X, H_prev]ᵀ·dZ`, dZ streamed once); the columns of dZ
    /// split among threads (results do not depend on the split). `dwr` and `db` hold the packed
    /// `[dW; dR]` and `db`.
    fn weight_grads(&self, dz: &[f32], g: &mut LstmGrads<f32>, dwr: &mut Vec<f32>, db: &mut Vec<f32>) -> Result<()> {
        let (b, hd, input) = (self.view.batch(), self.weights.hidden_size(), self.weights.input_size());
        let hp = self.tape.hp;
        let (z4, stride, nb) = (4 * hp, self.tape.stride, self.packed.gates.nb);
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
                // in `run`) or h0 (B x hp).
                unsafe {
                    xr[t] = self.x.data.as_ptr().add(at);
                    hr[t] = if t > self.tape.offsets[s] {
                        self.tape.data.as_ptr().add((t - 1) * stride + 5 * hp)
                    } else {
                        h0.as_ptr().add(s * hp)
                    };
                }
            }
        }
        // Every element is written by the column part holding it (`gemm_tn` overwrites C and the sums).
        let (dwr, db) = (grow(dwr, checked_product(&[input + hd, z4], "dW")?), grow(db, z4));
        let a = [TnPart { rows: &xr, width: input }, TnPart { rows: &hr, width: hd }];
        let a = SharedParts(&a);
        let (dwr_ptr, db_ptr) = (SharedMut(dwr.as_mut_ptr()), SharedMut(db.as_mut_ptr()));
        // Column parts of whole pairs of vectors.
        let pairs = z4 / (2 * nb);
        let parts = effective_threads(self.threads).min(pairs).max(1);
        for_each_index(self.threads, parts, |j| {
            let cols = j * pairs / parts * 2 * nb..if j + 1 == parts { z4 } else { (j + 1) * pairs / parts * 2 * nb };
            // SAFETY: every row pointer is valid for `input` (x) or `hd` (tape h, h0) reads; dz holds
            // rows x z4 floats; dwr and db hold input + hd and 1 rows of z4 floats, of which this part
            // writes its own columns only; nothing reads them meanwhile.
            unsafe {
                let (c, sums) = (dwr_ptr.get(), Some(db_ptr.get()));
                self.backend.gemm_tn(Tn { a: a.get(), b: dz.as_ptr(), ldb: z4, cols, c, ldc: z4, sums });
            }
        })?;
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
            dp.fill(0.0);
            for s in 0..b {
                for tr in self.tape.offsets[s]..self.tape.offsets[s + 1] {
                    for j in 0..hd {
                        let gate = |q: usize| dz[tr * z4 + (j / nb * 4 + q) * nb + j % nb];
                        let c_prev = if tr > self.tape.offsets[s] {
                            self.tape.data[(tr - 1) * stride + 4 * hp + j]
                        } else {
                            self.init.map_or(0.0, |(_, c0)| c0[s * hd + j])
                        };
                        let c = self.tape.data[tr * stride + 4 * hp + j];
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
