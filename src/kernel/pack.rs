//! Packed weights: the panel layout every kernel streams, for any number of gates per hidden unit.
//!
//! Canonical weights are `[K][G * H]` (gate-major columns: gate `g` of unit `j` at column `g * H + j`).
//! The hidden units are grouped in blocks of `nb` lanes (the backend's vector width) and, within a block,
//! the `G` gates of those units are adjacent:
//! `packed[block][k][gate][lane] = canonical[k][gate * H + block * nb + lane]`, zero past `H`. One register
//! tile of `G nb` columns then holds every gate of `nb` hidden units, so a cell can finish its update in
//! the GEMM's epilogue without another pass over memory; and the panel a tile streams over `k` is
//! contiguous (no 4 KiB strides to defeat the prefetchers and the TLB).

use super::simd::MAX_GATES;
use crate::error::{checked_product, Error, Result};

/// The input and recurrent weights and the bias of one layer direction, packed for one backend.
#[derive(Clone, Debug)]
pub struct PackedGates {
    /// Gates per hidden unit (LSTM 4, GRU 3, simple RNN 1).
    pub(crate) gates: usize,
    pub(crate) input: usize,
    pub(crate) hidden: usize,
    /// Lanes per block.
    pub(crate) nb: usize,
    /// Number of blocks: `ceil(H / nb)`.
    pub(crate) blocks: usize,
    /// `[blocks][I][G][nb]`
    pub(crate) w: Vec<f32>,
    /// `[blocks][H][G][nb]`
    pub(crate) r: Vec<f32>,
    /// `[blocks][G][nb]`
    pub(crate) bias: Vec<f32>,
}

impl PackedGates {
    /// Packs canonical `kernel [I][G H]`, `recurrent [H][G H]` and `bias [G H]` for `nb` lanes per block.
    ///
    /// # Errors
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) for sizes whose product overflows;
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for a gate count the kernels do not
    /// have, `nb == 0` or slices of the wrong length (a bug in the caller).
    pub(crate) fn new(
        gates: usize,
        input: usize,
        hidden: usize,
        kernel: &[f32],
        recurrent: &[f32],
        bias: &[f32],
        nb: usize,
    ) -> Result<Self> {
        if !(1..=MAX_GATES).contains(&gates) || nb == 0 {
            return Err(Error::argument(format!("{gates} gates of {nb} lanes cannot be packed")));
        }
        let cols = checked_product(&[gates, hidden], "gates")?;
        let blocks = hidden.div_ceil(nb);
        let row = checked_product(&[gates, blocks, nb], "packed row")?;
        checked_product(&[input.max(hidden), row], "packed weights")?;
        if kernel.len() != input * cols || recurrent.len() != hidden * cols || bias.len() != cols {
            return Err(Error::argument("canonical weights of the wrong length"));
        }
        Ok(PackedGates {
            gates,
            input,
            hidden,
            nb,
            blocks,
            w: pack_panels(kernel, input, gates, hidden, nb),
            r: pack_panels(recurrent, hidden, gates, hidden, nb),
            bias: pack_vector(bias, gates, hidden, nb),
        })
    }

    /// Hidden size padded to whole blocks.
    #[inline]
    pub(crate) fn hidden_padded(&self) -> usize {
        self.blocks * self.nb
    }
}

/// One canonical row of `gates * hidden` values as `[blocks][gates][nb]`, zero past `hidden`.
pub(crate) fn pack_vector(src: &[f32], gates: usize, hidden: usize, nb: usize) -> Vec<f32> {
    let mut dst = vec![0.0; gates * hidden.div_ceil(nb) * nb];
    pack_row(src, &mut dst, gates, hidden, nb);
    dst
}

fn pack_row(src: &[f32], dst: &mut [f32], gates: usize, hidden: usize, nb: usize) {
    for g in 0..gates {
        for j in 0..hidden {
            dst[(j / nb * gates + g) * nb + j % nb] = src[g * hidden + j];
        }
    }
}

/// `[rows][gates * hidden]` as block-major panels `[blocks][rows][gates][nb]`.
fn pack_panels(m: &[f32], rows: usize, gates: usize, hidden: usize, nb: usize) -> Vec<f32> {
    let blocks = hidden.div_ceil(nb);
    let (panel, row) = (gates * nb, gates * blocks * nb);
    let mut out = vec![0.0; rows * row];
    let mut packed_row = vec![0.0; row];
    for k in 0..rows {
        pack_row(&m[k * gates * hidden..(k + 1) * gates * hidden], &mut packed_row, gates, hidden, nb);
        for bl in 0..blocks {
            out[(bl * rows + k) * panel..(bl * rows + k + 1) * panel]
                .copy_from_slice(&packed_row[bl * panel..(bl + 1) * panel]);
        }
    }
    out
}

impl PackedGates {
    /// A zero plain matrix `[k][n]`, packed as the right operand of the kernels' GEMM (fill it with
    /// [`set`](Self::set)): `project` then computes `out[r] = a[r] · m` for rows `a[r]` of `k` floats,
    /// output rows of [`padded_cols`](Self::padded_cols) floats in `m`'s column order (zero past `n`). The
    /// columns are grouped four blocks at a time as the four "gates" of a block, so the GEMM runs with the
    /// same register tiles as the LSTM's projection. The backward's GEMMs (`dZ·Rᵀ`, `dZ·Wᵀ`) use it.
    pub(crate) fn zero_matrix(k: usize, n: usize, nb: usize) -> Result<Self> {
        const G: usize = 4;
        if nb == 0 {
            return Err(Error::argument("matrix of blocks of 0 lanes"));
        }
        let blocks = n.div_ceil(G * nb).max(1);
        let hidden = blocks * nb;
        let len = checked_product(&[k, G, hidden], "packed matrix")?;
        Ok(PackedGates { gates: G, input: k, hidden, nb, blocks, w: vec![0.0; len], r: Vec::new(), bias: Vec::new() })
    }

    /// Sets element `(kk, c)` of a [`zero_matrix`](Self::zero_matrix): in block `c / (4 nb)`'s panel, row `kk`, column
    /// `c mod 4 nb` (the columns of a block's four "gates" are adjacent).
    #[inline]
    pub(crate) fn set(&mut self, kk: usize, c: usize, v: f32) {
        let panel = self.gates * self.nb;
        self.w[(c / panel * self.input + kk) * panel + c % panel] = v;
    }

    /// Floats per output row of `project`: every block's gates.
    pub(crate) fn padded_cols(&self) -> usize {
        self.blocks * self.gates * self.nb
    }
}
