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
use super::tape::DirTape;
use super::workspace::ChunkScratch;
use crate::cells::grads::LstmGrads;
use crate::cells::lstm::{backward_unit, CellSpec};
use crate::cells::weights::{LstmWeights, PackedLstm};
use crate::error::{Error, ErrorKind, Result};
use crate::kernel::pack::PackedGates;
use crate::kernel::Backend;
use crate::reference::Rounding;
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

/// A raw pointer to `dZ` rows that the chunks write in parallel: each chunk writes the tape rows of its
/// own sequences only.
#[derive(Clone, Copy)]
struct RowsPtr(*mut f32);
// SAFETY: chunks hold distinct sequences, so they write distinct tape rows (see `run`).
unsafe impl Send for RowsPtr {}
unsafe impl Sync for RowsPtr {}

impl LstmBackward<'_> {
    /// Runs the backward; returns the cell steps computed (the valid steps).
    pub(crate) fn run(&self, out: LstmBackwardOut<'_>) -> Result<usize> {
        let (b, hd, input) = (self.view.batch(), self.weights.hidden_size(), self.weights.input_size());
        let w = &self.packed.gates;
        let (hp, nb) = (w.hidden_padded(), w.nb);
        let rows = self.tape.rows();
        let z4 = 4 * hp;
        if self.tape.hp != hp || self.tape.offsets.len() != b + 1 || rows != self.view.total_valid() {
            return Err(Error::argument("the tape was made for another view or layer"));
        }
        if self.dh_up.len() != rows * hp {
            return Err(Error::new(ErrorKind::Internal, "dh_up has the wrong length"));
        }
        let rounding = Rounding::of(self.backend);
        // dZ of every valid step, in tape order, in the packed layout [blocks][4][nb].
        let mut dz = vec![0.0f32; rows * z4];
        let mut d_h0 = vec![0.0f32; b * hp];
        let mut d_c0 = vec![0.0f32; b * hp];
        let rt = PackedGates::matrix(z4, hd, &self.transposed(true), nb)?;

        let lens: Vec<usize> = (0..b).map(|s| self.view.valid_len(s)).collect();
        let mut order: Vec<usize> = (0..b).filter(|&s| lens[s] > 0).collect();
        order.sort_unstable_by_key(|&s| (Reverse(lens[s]), s));
        let threads = effective_threads(self.threads);
        let mut chunks: Vec<ChunkScratch> = (0..threads.min(order.len()).max(1)).map(|_| Default::default()).collect();
        balance(&order, &lens, &mut Vec::new(), &mut chunks);
        let dz_ptr = RowsPtr(dz.as_mut_ptr());
        let h0_ptr = RowsPtr(d_h0.as_mut_ptr());
        let c0_ptr = RowsPtr(d_c0.as_mut_ptr());
        let run = |cs: &mut ChunkScratch| {
            if !cs.rows.is_empty() {
                self.sweep(&cs.rows, &lens, &rt, rounding, dz_ptr, h0_ptr, c0_ptr);
            }
        };
        match self.threads {
            1 => chunks.iter_mut().for_each(run),
            0 => chunks.par_iter_mut().for_each(run),
            n => pool(n)?.install(|| chunks.par_iter_mut().for_each(run)),
        }
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
            let wt = PackedGates::matrix(z4, input, &self.transposed(false), nb)?;
            let ip = wt.padded_cols();
            let offs: Vec<usize> = (0..rows).map(|r| r * z4).collect();
            let mut dxr = vec![0.0f32; rows * ip];
            self.gemm(&wt, &dz, &offs, &mut dxr, ip)?;
            for s in 0..b {
                for r in self.tape.offsets[s]..self.tape.offsets[s + 1] {
                    let at = s * sb + self.tape.times[r] * st;
                    let (dst, src) = (&mut dx[at..at + input], &dxr[r * ip..r * ip + input]);
                    if accumulate {
                        dst.iter_mut().zip(src).for_each(|(d, v)| *d += v);
                    } else {
                        dst.copy_from_slice(src);
                    }
                }
            }
        }
        if let Some(g) = out.params {
            self.weight_grads(&dz, g)?;
        }
        Ok(rows)
    }

    /// The recurrence of one chunk's rows (sorted by decreasing valid length).
    #[allow(clippy::too_many_arguments)]
    fn sweep(
        &self,
        rows: &[usize],
        lens: &[usize],
        rt: &PackedGates,
        rounding: Rounding,
        dz: RowsPtr,
        d_h0: RowsPtr,
        d_c0: RowsPtr,
    ) {
        let hd = self.weights.hidden_size();
        let hp = self.tape.hp;
        let (z4, stride) = (4 * hp, self.tape.stride);
        let m = rows.len();
        let pc = rt.padded_cols();
        let mut dh_prev = vec![0.0f32; m * pc];
        let mut dc = vec![0.0f32; m * hp];
        let mut offs = Vec::with_capacity(m);
        // This step's dZ rows, contiguous (the GEMM reads them here, not from the shared buffer).
        let mut zrows = vec![0.0f32; m * z4];
        let peep = self.weights.peephole();
        let n_max = lens[rows[0]];
        let mut active = 0;
        for k in (0..n_max).rev() {
            while active < m && lens[rows[active]] > k {
                active += 1;
            }
            offs.clear();
            for (r, &s) in rows[..active].iter().enumerate() {
                let tr = self.tape.offsets[s] + k;
                let last = lens[s] == k + 1;
                let rec = &self.tape.data[tr * stride..(tr + 1) * stride];
                let c_prev_of = |j: usize| -> f32 {
                    if k > 0 {
                        self.tape.data[(tr - 1) * stride + 4 * hp + j]
                    } else {
                        self.init.map_or(0.0, |(_, c0)| c0[s * hd + j])
                    }
                };
                let dzr = &mut zrows[r * z4..(r + 1) * z4];
                for j in 0..hd {
                    let (blk, lane) = (j / self.packed.gates.nb, j % self.packed.gates.nb);
                    let nbl = self.packed.gates.nb;
                    let gate = |g: usize| (blk * 4 + g) * nbl + lane;
                    let args = [rec[gate(0)], rec[gate(1)], rec[gate(2)], rec[gate(3)]];
                    let c = rec[4 * hp + j];
                    let up = self.dh_up[tr * hp + j];
                    let (dh_in, dc_in) = if last {
                        (self.d_h_n.map_or(0.0, |d| d[s * hd + j]), self.d_c_n.map_or(0.0, |d| d[s * hd + j]))
                    } else {
                        (dh_prev[r * pc + j], dc[r * hp + j])
                    };
                    let p = peep.map(|p| [p[j], p[hd + j], p[2 * hd + j]]);
                    let (dzu, dcp) = backward_unit(self.spec, args, p, c_prev_of(j), c, up + dh_in, dc_in, rounding);
                    for (g, v) in dzu.into_iter().enumerate() {
                        dzr[gate(g)] = v;
                    }
                    dc[r * hp + j] = dcp;
                }
                // SAFETY: tape row `tr` belongs to sequence `s`, which only this chunk holds; `dz` holds
                // rows x 4 hp floats.
                unsafe { std::ptr::copy_nonoverlapping(dzr.as_ptr(), dz.0.add(tr * z4), z4) };
                offs.push(r * z4);
            }
            // dh_prev = dZ_k · Rᵀ for the rows active at k.
            (self.backend.project)(rt, &zrows, &offs, 0..rt.blocks, &mut dh_prev[..active * pc]);
        }
        for (r, &s) in rows.iter().enumerate() {
            // SAFETY: sequence `s` belongs to this chunk alone; the buffers hold B x hp floats.
            unsafe {
                std::ptr::copy_nonoverlapping(dh_prev.as_ptr().add(r * pc), d_h0.0.add(s * hp), hd);
                std::ptr::copy_nonoverlapping(dc.as_ptr().add(r * hp), d_c0.0.add(s * hp), hp);
            }
        }
    }

    /// `Rᵀ` (`recurrent`) or `Wᵀ` as `[4 hp][n]` with rows in dZ's packed order (zero rows for padded
    /// units), the right operand of `dZ · Rᵀ` and `dZ · Wᵀ`.
    fn transposed(&self, recurrent: bool) -> Vec<f32> {
        let (hd, nb) = (self.weights.hidden_size(), self.packed.gates.nb);
        let hp = self.tape.hp;
        let (m, n) =
            if recurrent { (self.weights.recurrent(), hd) } else { (self.weights.kernel(), self.weights.input_size()) };
        let mut t = vec![0.0f32; 4 * hp * n];
        for u in 0..n {
            for g in 0..4 {
                for j in 0..hd {
                    t[((j / nb * 4 + g) * nb + j % nb) * n + u] = m[u * 4 * hd + g * hd + j];
                }
            }
        }
        t
    }

    /// `out[r] = a[offs[r]..] · b` for every row, the output columns split across threads (each element
    /// is one sum over `k` in order, so the split never changes a bit).
    fn gemm(&self, b: &PackedGates, a: &[f32], offs: &[usize], out: &mut [f32], out_row: usize) -> Result<()> {
        let project = self.backend.project;
        let threads = effective_threads(self.threads).min(b.blocks).max(1);
        if threads == 1 || offs.is_empty() {
            project(b, a, offs, 0..b.blocks, out);
            return Ok(());
        }
        let nb = b.gates * b.nb; // output columns per block
        let parts: Vec<(std::ops::Range<usize>, Vec<f32>)> = (0..threads)
            .map(|j| {
                let r = j * b.blocks / threads..(j + 1) * b.blocks / threads;
                let n = r.len() * nb;
                (r, vec![0.0; offs.len() * n])
            })
            .collect();
        let run = |parts: Vec<(std::ops::Range<usize>, Vec<f32>)>| {
            parts
                .into_par_iter()
                .map(|(r, mut o)| {
                    project(b, a, offs, r.clone(), &mut o);
                    (r, o)
                })
                .collect::<Vec<_>>()
        };
        let done = match self.threads {
            0 => run(parts),
            n => pool(n)?.install(|| run(parts)),
        };
        for (r, o) in done {
            let n = r.len() * nb;
            for (row, src) in o.chunks_exact(n).enumerate() {
                out[row * out_row + r.start * nb..row * out_row + r.start * nb + n].copy_from_slice(src);
            }
        }
        Ok(())
    }

    /// `dW = Xᵀ·dZ`, `dR = H_prevᵀ·dZ`, `db = Σ dZ` and the peephole gradients, over the valid rows in
    /// tape order.
    fn weight_grads(&self, dz: &[f32], g: &mut LstmGrads<f32>) -> Result<()> {
        let (b, hd, input) = (self.view.batch(), self.weights.hidden_size(), self.weights.input_size());
        let hp = self.tape.hp;
        let (z4, stride, nb) = (4 * hp, self.tape.stride, self.packed.gates.nb);
        let rows = self.tape.rows();
        // dZ as the right operand [rows][4 hp]; Xᵀ and H_prevᵀ as left operands [n][rows].
        let dzm = PackedGates::matrix(rows, z4, dz, nb)?;
        let mut xt = vec![0.0f32; input * rows];
        let mut ht = vec![0.0f32; hd * rows];
        for s in 0..b {
            for tr in self.tape.offsets[s]..self.tape.offsets[s + 1] {
                let at = self.x.off + s * self.x.sb + self.tape.times[tr] * self.x.st;
                for (i, &v) in self.x.data[at..at + input].iter().enumerate() {
                    xt[i * rows + tr] = v;
                }
                for j in 0..hd {
                    ht[j * rows + tr] = if tr > self.tape.offsets[s] {
                        self.tape.data[(tr - 1) * stride + 5 * hp + j]
                    } else {
                        self.init.map_or(0.0, |(h0, _)| h0[s * hd + j])
                    };
                }
            }
        }
        let zc = dzm.padded_cols();
        let unpack = |packed: &[f32], n: usize, stride: usize, dst: &mut [f32]| {
            for k in 0..n {
                for gate in 0..4 {
                    for j in 0..hd {
                        dst[k * 4 * hd + gate * hd + j] = packed[k * stride + (j / nb * 4 + gate) * nb + j % nb];
                    }
                }
            }
        };
        let mut tmp = vec![0.0f32; input.max(hd) * zc];
        let offs: Vec<usize> = (0..input).map(|i| i * rows).collect();
        self.gemm(&dzm, &xt, &offs, &mut tmp[..input * zc], zc)?;
        unpack(&tmp, input, zc, &mut g.d_kernel);
        let offs: Vec<usize> = (0..hd).map(|j| j * rows).collect();
        self.gemm(&dzm, &ht, &offs, &mut tmp[..hd * zc], zc)?;
        unpack(&tmp, hd, zc, &mut g.d_recurrent);
        let mut db = vec![0.0f32; z4];
        for row in dz.chunks_exact(z4) {
            for (d, &v) in db.iter_mut().zip(row) {
                *d += v;
            }
        }
        unpack(&db, 1, z4, &mut g.d_bias);
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
