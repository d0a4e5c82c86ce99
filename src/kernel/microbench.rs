//! The kernels on their own, for benchmarks: one input-projection GEMM and one recurrent step of a
//! batch, on a chosen backend. `benches/lstm.rs` measures these per backend.

use super::aligned::AlignedVec;
use super::simd::{Rows, Tn, TnPart};
use super::{Backend, StepState};
use crate::cells::lstm::{CellSpec, LstmKernel};
use crate::cells::weights::{LstmWeights, PackedLstm};
use crate::error::Result;

/// Weights and buffers for running one backend's kernels on `batch` rows.
#[derive(Debug)]
pub struct KernelBench {
    backend: &'static Backend,
    packed: PackedLstm,
    cell: CellSpec,
    batch: usize,
    x: Vec<f32>,
    rows: Vec<usize>,
    /// Line-aligned, as the engine's.
    proj: AlignedVec,
    h: Vec<f32>,
    c: Vec<f32>,
    h_out: Vec<f32>,
    /// The weights (the backward's transposes are packed from them on first use).
    weights: LstmWeights,
    /// `dZ` rows of every row, `4 hp` floats each, and the backward GEMMs' outputs.
    dz: Vec<f32>,
    grad: Vec<f32>,
    /// Direction of the next step's first weight sweep (as the engine alternates it).
    reverse: bool,
}

impl KernelBench {
    /// Packs `weights` for `backend` and prepares `batch` rows of input and state (deterministic values).
    ///
    /// # Errors
    /// As [`LstmWeights`] packing (sizes that overflow).
    pub fn new(backend: &'static Backend, weights: &LstmWeights, batch: usize) -> Result<Self> {
        let packed = PackedLstm::new(weights, backend.nb)?;
        let (i, hp) = (weights.input_size(), packed.gates.hidden_padded());
        let val = |k: usize| ((k * 2_654_435_761) % 1000) as f32 / 1000.0 - 0.5;
        Ok(KernelBench {
            backend,
            cell: CellSpec::default(),
            batch,
            x: (0..batch * i).map(val).collect(),
            rows: (0..batch).map(|r| r * i).collect(),
            proj: {
                let mut p = AlignedVec::default();
                p.resize_zeroed(batch * 4 * hp);
                p
            },
            h: (0..batch * hp).map(val).collect(),
            c: (0..batch * hp).map(val).collect(),
            h_out: vec![0.0; batch * hp],
            weights: weights.clone(),
            dz: (0..batch * 4 * hp).map(val).collect(),
            grad: vec![0.0; batch.max(i).max(hp) * 4 * hp.max(i)],
            reverse: false,
            packed,
        })
    }

    /// Multiply-adds of one projection (`batch x I x 4H`); one step's recurrent GEMM is `batch x H x 4H`.
    pub fn projection_flops(&self) -> usize {
        2 * self.batch * self.packed.gates.input * 4 * self.packed.gates.hidden
    }

    /// Floating-point operations of one step's recurrent GEMM.
    pub fn step_flops(&self) -> usize {
        2 * self.batch * self.packed.gates.hidden * 4 * self.packed.gates.hidden
    }

    /// The input projection of every row (the GEMM tile kernel).
    pub fn project(&mut self) {
        self.backend.project(&self.packed.gates, &self.x, &self.rows, 0..self.packed.gates.blocks, &mut self.proj);
    }

    /// One recurrent step of every row: GEMM with the recurrent weights and the fused cell epilogue.
    pub fn step(&mut self) {
        let hp = self.packed.gates.hidden_padded();
        assert!(self.c.len() >= self.batch * hp && self.h_out.len() >= self.batch * hp);
        // SAFETY: c and h_out hold batch x hp floats (asserted), are distinct from h and proj, and this
        // thread is their only user.
        let st = StepState {
            proj: &self.proj,
            h: &self.h,
            h_out: self.h_out.as_mut_ptr(),
            extra: self.c.as_mut_ptr(),
            mid: std::ptr::null_mut(),
            tape: std::ptr::null_mut(),
            tape_rows: std::ptr::null(),
            tape_stride: 0,
        };
        let cell = LstmKernel { packed: &self.packed, spec: &self.cell };
        self.reverse =
            !unsafe { self.backend.step(&cell, 0, self.batch, 0..self.packed.gates.blocks, st, self.reverse) };
    }

    /// Floating-point operations of one of the backward's GEMMs over every row: `Xᵀ·dZ` and `dZ·Wᵀ`
    /// (`recurrent == false`), `H_prevᵀ·dZ` and `dZ·Rᵀ` (`recurrent`).
    pub fn backward_gemm_flops(&self, recurrent: bool) -> usize {
        let g = &self.packed.gates;
        2 * self.batch * if recurrent { g.hidden } else { g.input } * 4 * g.hidden
    }

    /// The weight gradient `Xᵀ·dZ` over every row (the backward's `Aᵀ·B` kernel, K = the rows), with the
    /// bias gradient's column sums.
    pub fn weight_grad(&mut self) {
        let (input, z4) = (self.packed.gates.input, 4 * self.packed.gates.hidden_padded());
        let a: Vec<*const f32> = self.rows.iter().map(|&o| self.x[o..].as_ptr()).collect();
        let (c, sums) = self.grad.split_at_mut(input * z4);
        let p = Tn {
            a: &[TnPart { rows: &a, width: input }],
            b: self.dz.as_ptr(),
            ldb: z4,
            cols: 0..z4,
            c: c.as_mut_ptr(),
            ldc: z4,
            sums: Some(sums.as_mut_ptr()),
        };
        assert!(sums.len() >= z4 && self.dz.len() >= self.rows.len() * z4);
        // SAFETY: every row of x holds `input` floats; dz holds rows x z4; c input x z4, sums z4 (asserted).
        unsafe { self.backend.gemm_tn(p) }
    }

    /// `dZ · Rᵀ` (`recurrent`) or `dZ · Wᵀ` of every row (the backward's `dh_prev` and `dx` GEMMs, without
    /// the cell's epilogue).
    ///
    /// # Errors
    /// As [`KernelBench::new`] (packing the transposes).
    pub fn backward_gemm(&mut self, recurrent: bool) -> Result<()> {
        let t = self.packed.transposes(&self.weights)?;
        let w = if recurrent { &t.rt } else { &t.wt };
        let (z4, cols) = (w.input, w.padded_cols());
        assert!(self.dz.len() >= self.batch * z4 && self.grad.len() >= self.batch * cols);
        let offs: Vec<usize> = (0..self.batch).map(|r| r * z4).collect();
        let outs: Vec<usize> = (0..self.batch).map(|r| r * cols).collect();
        let a = Rows::Gathered { base: self.dz.as_ptr(), offsets: &offs };
        let out = Rows::Gathered { base: self.grad.as_mut_ptr(), offsets: &outs };
        // SAFETY: dz rows hold z4 = w.input floats, grad rows `cols` (asserted), distinct from dz.
        unsafe { self.backend.gemm_rows(w, a, self.batch, out, cols, false) };
        Ok(())
    }

    /// The last backward GEMM's output (so the work cannot be optimised away).
    pub fn grad(&self) -> &[f32] {
        &self.grad
    }

    /// The last step's hidden state (so the work cannot be optimised away).
    pub fn output(&self) -> &[f32] {
        &self.h_out
    }
}

/// Runs `f` with weight conversion and packing on `threads` threads (0: rayon's pool, 1: the calling
/// thread), as the C functions' `num_threads` sets it: for the `packing` benchmark group.
pub fn with_pack_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    super::pack::with_pack_threads(threads, f)
}

/// Runs `f` with the packed weights it makes and drops reusing the memory of the previous such call on
/// this thread, as the one-shot C functions do: for the `packing` benchmark group.
pub fn with_recycled_panels<R>(f: impl FnOnce() -> R) -> R {
    super::pack::with_recycled_panels(f)
}
