//! The backward sweep: backpropagation through time over valid steps only.
//!
//! ```text
//! chunks = the forward's balanced deal of the sequences (sorted by valid length, longest first)
//! per chunk, in parallel:
//!     for k = n_max - 1 down to 0:                  (the active prefix grows as k falls)
//!         for each row active at k:
//!             dh = dh_up[row, k] + (k is its last step ? d_h_n : dh_prev from step k + 1)
//!             dc = (k is its last step ? d_c_n : dc_prev from step k + 1)
//!             dZ[row, k], dc_prev = the cell's backward (from the tape)
//!         dh_prev[rows active at k] = dZ_k · Rᵀ      (one GEMM, the forward's kernel)
//!     d_h0, d_c0 = dh_prev, dc_prev after step 0
//! then, over all valid rows in tape order (so every sum has one order whatever the thread count):
//!     dW = Xᵀ·dZ, dR = H_prevᵀ·dZ, db = Σ dZ, dx = dZ·Wᵀ          (GEMMs split by output columns)
//! ```
//! Each row's arithmetic depends only on that row, and each weight-gradient element is one sum in tape
//! order, so gradients are bitwise identical whatever the thread count, and `dx` of a sequence is the
//! same alone or in a batch.

use std::cmp::Reverse;

use rayon::prelude::*;

use super::layout::SeqIn;
use super::plan::{balance, effective_threads};
use super::sync::pool;
use super::tape::{DirTape, GradBufs};
use super::workspace::ChunkScratch;
use crate::cells::grads::LstmGrads;
use crate::cells::lstm::{BackwardStep, CellSpec, LstmKernel};
use crate::cells::weights::{LstmWeights, PackedLstm};
use crate::error::{checked_product, Error, ErrorKind, Result};
use crate::kernel::pack::PackedGates;
use crate::kernel::simd::{Rows, Tn};
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

/// Row pointers of a GEMM operand, shared read-only by parallel parts.
struct SharedRows(Vec<*const f32>);
// SAFETY: the pointers are only read through, and the rows they point at are not written meanwhile.
unsafe impl Send for SharedRows {}
unsafe impl Sync for SharedRows {}

impl LstmBackward<'_> {
    /// Runs the backward in `bufs` (grown as needed, never zeroed: every element used is written first);
    /// returns the cell steps computed (the valid steps).
    pub(crate) fn run(&self, out: LstmBackwardOut<'_>, bufs: &mut GradBufs) -> Result<usize> {
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
        let GradBufs { dz, dw, dr, db } = bufs;
        let dz = grow(dz, checked_product(&[rows, z4], "dZ")?);
        let mut d_h0 = vec![0.0f32; b * hp];
        let mut d_c0 = vec![0.0f32; b * hp];

        let lens: Vec<usize> = (0..b).map(|s| self.view.valid_len(s)).collect();
        let mut order: Vec<usize> = (0..b).filter(|&s| lens[s] > 0).collect();
        order.sort_unstable_by_key(|&s| (Reverse(lens[s]), s));
        let threads = effective_threads(self.threads);
        let mut chunks: Vec<ChunkScratch> = (0..threads.min(order.len()).max(1)).map(|_| Default::default()).collect();
        balance(&order, &lens, &mut Vec::new(), &mut chunks);
        let (dz_ptr, h0_ptr, c0_ptr) =
            (SharedMut(dz.as_mut_ptr()), SharedMut(d_h0.as_mut_ptr()), SharedMut(d_c0.as_mut_ptr()));
        self.parallel(chunks.len(), |j| {
            if !chunks[j].rows.is_empty() {
                self.sweep(&chunks[j].rows, &lens, &tr.rt, dz_ptr, h0_ptr, c0_ptr);
            }
        })?;
        // Sequences without valid steps: the state gradients pass straight through (Keras), or nothing
        // reaches the initial state (d_h0, d_c0 stay zero).
        for s in (0..b).filter(|&s| lens[s] == 0 && self.empty_is_initial) {
            for (src, dst) in [(self.d_h_n, &mut d_h0), (self.d_c_n, &mut d_c0)] {
                if let Some(src) = src {
                    dst[s * hp..s * hp + hd].copy_from_slice(&src[s * hd..(s + 1) * hd]);
                }
            }
        }
        for (src, dst) in [(&d_h0, out.d_h0), (&d_c0, out.d_c0)] {
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
            let parts = threads.min(rows.div_ceil(64)).max(1);
            let dx_ptr = SharedMut(dx.as_mut_ptr());
            self.parallel(parts, |j| {
                let part = j * rows / parts..(j + 1) * rows / parts;
                let n = part.len();
                // SAFETY: dz holds rows x z4 floats, so the part's dz rows (z4 = wt.input floats each) start
                // in bounds; each output row (a distinct (sequence, time) of dx, checked in bounds above)
                // holds `input` floats, written by this part alone.
                unsafe {
                    let a = Rows::Strided { base: dz_ptr.get().add(part.start * z4), stride: z4 };
                    let o = Rows::Gathered { base: dx_ptr.get(), offsets: &o[part] };
                    self.backend.gemm_rows(&tr.wt, a, n, o, input, accumulate)
                };
            })?;
        }
        if let Some(g) = out.params {
            self.weight_grads(dz, g, [dw, dr, db])?;
        }
        Ok(rows)
    }

    /// Runs `f(0..parts)` on the layer's threads (in order on one thread).
    fn parallel(&self, parts: usize, f: impl Fn(usize) + Sync + Send) -> Result<()> {
        match self.threads {
            1 => (0..parts).for_each(f),
            0 => (0..parts).into_par_iter().for_each(f),
            n => pool(n)?.install(|| (0..parts).into_par_iter().for_each(f)),
        }
        Ok(())
    }

    /// The recurrence of one chunk's rows (sorted by decreasing valid length): writes their `dZ` rows
    /// and their `d_h0`, `d_c0` rows.
    fn sweep(&self, rows: &[usize], lens: &[usize], rt: &PackedGates, dz: SharedMut, d_h0: SharedMut, d_c0: SharedMut) {
        let hd = self.weights.hidden_size();
        let hp = self.tape.hp;
        let (z4, stride) = (4 * hp, self.tape.stride);
        let m = rows.len();
        let mut dc = vec![0.0f32; m * hp];
        let mut dh_start = vec![0.0f32; m * hp];
        let mut c0 = vec![0.0f32; m * hp];
        if let Some((_, init)) = self.init {
            for (r, &s) in rows.iter().enumerate() {
                c0[r * hp..r * hp + hd].copy_from_slice(&init[s * hd..(s + 1) * hd]);
            }
        }
        let (mut at, mut next) = (vec![0usize; m], vec![0usize; m]);
        let mut c_prev = vec![std::ptr::null::<f32>(); m];
        let tape = self.tape.data.as_ptr();
        let kernel = LstmKernel { packed: self.packed, spec: self.spec };
        let mut active = 0;
        for k in (0..lens[rows[0]]).rev() {
            let m_gemm = active;
            while active < m && lens[rows[active]] > k {
                // Row `active` starts here, at its last valid step, from the final states' gradients.
                let (r, s) = (active, rows[active]);
                for (src, dst) in [(self.d_h_n, &mut dh_start), (self.d_c_n, &mut dc)] {
                    if let Some(src) = src {
                        dst[r * hp..r * hp + hd].copy_from_slice(&src[s * hd..(s + 1) * hd]);
                    }
                }
                active += 1;
            }
            for r in 0..active {
                let t = self.tape.offsets[rows[r]] + k;
                at[r] = t;
                next[r] = (t + 1) * z4;
                // SAFETY: tape row t - 1 (k > 0) belongs to the same sequence; c0 holds m x hp floats.
                c_prev[r] = unsafe {
                    if k > 0 {
                        tape.add((t - 1) * stride + 4 * hp)
                    } else {
                        c0.as_ptr().add(r * hp)
                    }
                };
            }
            let step = BackwardStep {
                kernel,
                rt,
                m_gemm,
                m: active,
                rows: &at,
                next: &next,
                c_prev: &c_prev,
                dz: dz.get(),
                tape,
                stride,
                dh_up: self.dh_up.as_ptr(),
                dh_start: dh_start.as_ptr(),
                dc: dc.as_mut_ptr(),
            };
            // SAFETY: `run` checked the tape (rows x stride floats, stride >= 6 hp) and dh_up (rows x hp);
            // the rows below m_gemm were active at k + 1, so their tape row t + 1 exists and its dZ was
            // written by the previous step; dz holds rows x 4 hp floats; this chunk alone holds these
            // sequences, so no other thread touches their dz rows; dh_start, dc and c0 are this call's.
            unsafe { step.run(self.backend) };
        }
        // d_h0 = dZ_0 · Rᵀ for every row; d_c0 = dc after step 0.
        let first: Vec<usize> = rows.iter().map(|&s| self.tape.offsets[s] * z4).collect();
        let out: Vec<usize> = rows.iter().map(|&s| s * hp).collect();
        // SAFETY: dz rows hold 4 hp = rt.input floats; d_h0 holds B x hp floats and row s (hp <=
        // rt.padded_cols() floats) belongs to this chunk alone; dz is not written meanwhile by this chunk,
        // and other chunks write other rows.
        unsafe {
            let a = Rows::Gathered { base: dz.get(), offsets: &first };
            self.backend.gemm_rows(rt, a, m, Rows::Gathered { base: d_h0.get(), offsets: &out }, hp, false);
            for (r, &s) in rows.iter().enumerate() {
                std::ptr::copy_nonoverlapping(dc.as_ptr().add(r * hp), d_c0.get().add(s * hp), hp);
            }
        }
    }

    /// `dW = Xᵀ·dZ`, `dR = H_prevᵀ·dZ`, `db = Σ dZ` and the peephole gradients, over the valid rows in
    /// tape order; the columns of dZ split among threads (results do not depend on the split). `bufs`
    /// hold the packed `dW`, `dR`, `db`.
    fn weight_grads(&self, dz: &[f32], g: &mut LstmGrads<f32>, bufs: [&mut Vec<f32>; 3]) -> Result<()> {
        let (b, hd, input) = (self.view.batch(), self.weights.hidden_size(), self.weights.input_size());
        let hp = self.tape.hp;
        let (z4, stride, nb) = (4 * hp, self.tape.stride, self.packed.gates.nb);
        let rows = self.tape.rows();
        let mut h0 = vec![0.0f32; b * hp];
        if let Some((init, _)) = self.init {
            for s in 0..b {
                h0[s * hp..s * hp + hd].copy_from_slice(&init[s * hd..(s + 1) * hd]);
            }
        }
        // Row k of Xᵀ's transpose (the input of tape row k) and of H_prevᵀ's (its previous h).
        let mut xr = SharedRows(vec![std::ptr::null(); rows]);
        let mut hr = SharedRows(vec![std::ptr::null(); rows]);
        for s in 0..b {
            for t in self.tape.offsets[s]..self.tape.offsets[s + 1] {
                let at = self.x.off + s * self.x.sb + self.tape.times[t] * self.x.st;
                if at + input > self.x.data.len() {
                    return Err(Error::new(ErrorKind::Internal, "the input is too short for the view"));
                }
                // SAFETY: in bounds of x (checked above) and of the tape (rows x stride floats, checked
                // in `run`) or h0 (B x hp).
                unsafe {
                    xr.0[t] = self.x.data.as_ptr().add(at);
                    hr.0[t] = if t > self.tape.offsets[s] {
                        self.tape.data.as_ptr().add((t - 1) * stride + 5 * hp)
                    } else {
                        h0.as_ptr().add(s * hp)
                    };
                }
            }
        }
        // Every element is written by the column part holding it (`gemm_tn` overwrites C and the sums).
        let [dw, dr, db] = bufs;
        let (dw, dr, db) = (grow(dw, input * z4), grow(dr, hd * z4), grow(db, z4));
        let (xr, hr) = (&xr, &hr);
        let (dw_ptr, dr_ptr, db_ptr) =
            (SharedMut(dw.as_mut_ptr()), SharedMut(dr.as_mut_ptr()), SharedMut(db.as_mut_ptr()));
        // Column parts of whole pairs of vectors.
        let pairs = z4 / (2 * nb);
        let parts = effective_threads(self.threads).min(pairs).max(1);
        self.parallel(parts, |j| {
            let cols = j * pairs / parts * 2 * nb..if j + 1 == parts { z4 } else { (j + 1) * pairs / parts * 2 * nb };
            // SAFETY: every row pointer is valid for `input` (x) or `hd` (tape h, h0) reads; dz holds
            // rows x z4 floats; dw, dr and db hold input, hd and 1 rows of z4 floats, of which this part
            // writes its own columns only; nothing reads them meanwhile.
            unsafe {
                let (b, ldb, ldc) = (dz.as_ptr(), z4, z4);
                let (dw, db) = (dw_ptr.get(), Some(db_ptr.get()));
                self.backend.gemm_tn(Tn { a: &xr.0, m: input, b, ldb, cols: cols.clone(), c: dw, ldc, sums: db });
                self.backend.gemm_tn(Tn { a: &hr.0, m: hd, b, ldb, cols, c: dr_ptr.get(), ldc, sums: None });
            }
        })?;
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
