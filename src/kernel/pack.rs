//! Packed weights: the panel layout every kernel streams, for any number of gates per hidden unit.
//!
//! Canonical weights are `[K][G * H]` (gate-major columns: gate `g` of unit `j` at column `g * H + j`).
//! The hidden units are grouped in blocks of `nb` lanes (the backend's vector width) and, within a block,
//! the `G` gates of those units are adjacent, in groups of `group_gates(G)` gates:
//! `packed[block][group][k][gate in group][lane] = canonical[k][gate * H + block * nb + lane]`, zero past
//! `H` (for one, two or three gates a single group: `[block][k][gate][lane]`). One register tile of
//! `G nb` columns then holds every gate of `nb` hidden units, so a cell can finish its update in the
//! GEMM's epilogue without another pass over memory; and each group's panel streams contiguously over
//! `k` (no 4 KiB strides to defeat the prefetchers and the TLB). Four gates go in two groups of two
//! because register files of 16 vectors sweep them two at a time (see `Simd::GATE_PAIRS`): with the four
//! interleaved, each pass read every other cache line of the panel (measured: the training steps of
//! seed_fit and mid_fit up to a tenth slower).

use super::simd::MAX_GATES;
use crate::error::{checked_product, Error, Result};

/// Gates per group of a packed panel (see the [module docs](self)): two for four gates, else all.
#[inline(always)]
pub(crate) const fn group_gates(gates: usize) -> usize {
    if gates == 4 {
        2
    } else {
        gates
    }
}

/// Offset of gate `g`, row `k` (lane 0) in a block's panel of `k_len` rows of `gates` gates of `nb`
/// lanes.
#[inline(always)]
pub(crate) const fn panel_offset(gates: usize, nb: usize, k_len: usize, k: usize, g: usize) -> usize {
    let gg = group_gates(gates);
    ((g / gg) * k_len + k) * gg * nb + (g % gg) * nb
}

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
    // Whole lanes of a block at a time (the weights are repacked after every optimizer step).
    for g in 0..gates {
        for (bl, lanes) in src[g * hidden..(g + 1) * hidden].chunks(nb).enumerate() {
            let at = (bl * gates + g) * nb;
            dst[at..at + lanes.len()].copy_from_slice(lanes);
        }
    }
}

/// `[rows][gates * hidden]` as block-major panels `[blocks][group][rows][gates in group][nb]`.
pub(crate) fn pack_panels(m: &[f32], rows: usize, gates: usize, hidden: usize, nb: usize) -> Vec<f32> {
    let blocks = hidden.div_ceil(nb);
    let (panel, row, group) = (gates * nb, gates * blocks * nb, group_gates(gates) * nb);
    let mut out = vec![0.0; rows * row];
    let mut packed_row = vec![0.0; row];
    for k in 0..rows {
        pack_row(&m[k * gates * hidden..(k + 1) * gates * hidden], &mut packed_row, gates, hidden, nb);
        for bl in 0..blocks {
            for (q, src) in packed_row[bl * panel..(bl + 1) * panel].chunks(group).enumerate() {
                let at = bl * rows * panel + panel_offset(gates, nb, rows, k, q * group_gates(gates));
                out[at..at + group].copy_from_slice(src);
            }
        }
    }
    out
}

impl PackedGates {
    /// A zero plain matrix `[k][n]`, packed as the right operand of the kernels' GEMM (fill it with
    /// [`column_mut`](Self::column_mut)): `project` then computes `out[r] = a[r] · m` for rows `a[r]` of
    /// `k` floats, output rows of [`padded_cols`](Self::padded_cols) floats in `m`'s column order (zero past
    /// `n`). The columns are grouped four blocks at a time as the four "gates" of a block, so the GEMM runs
    /// with the same register tiles as the LSTM's projection. The backward's GEMMs (`dZ·Rᵀ`, `dZ·Wᵀ`) use
    /// it.
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

    /// Column `c` of a [`zero_matrix`](Self::zero_matrix), to fill row by row: element `(kk, c)`
    /// (block `c / (4 nb)`'s panel, row `kk`, gate `c mod 4 nb / nb`, lane `c mod nb`) at `kk` without the
    /// index arithmetic per element.
    pub(crate) fn column_mut(&mut self, c: usize) -> ColumnMut<'_> {
        let (panel, nb) = (self.gates * self.nb, self.nb);
        let stride = group_gates(self.gates) * nb;
        if self.input == 0 {
            return ColumnMut { w: &mut [], stride };
        }
        let (block, g) = (c / panel, c % panel / nb);
        let start = block * self.input * panel + panel_offset(self.gates, nb, self.input, 0, g) + c % nb;
        let len = (self.input - 1) * stride + 1;
        ColumnMut { w: &mut self.w[start..start + len], stride }
    }

    /// Floats per output row of `project`: every block's gates.
    pub(crate) fn padded_cols(&self) -> usize {
        self.blocks * self.gates * self.nb
    }
}

/// One column of a packed matrix ([`PackedGates::column_mut`]): its rows `stride` floats apart.
pub(crate) struct ColumnMut<'a> {
    w: &'a mut [f32],
    stride: usize,
}

impl ColumnMut<'_> {
    /// Sets row `kk` of the column.
    #[inline]
    pub(crate) fn set(&mut self, kk: usize, v: f32) {
        self.w[kk * self.stride] = v;
    }
}
