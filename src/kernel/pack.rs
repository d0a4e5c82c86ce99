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

use std::cell::Cell;
use std::ops::Range;

use super::simd::MAX_GATES;
use crate::engine::for_each_part;
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
    pack_gate_panels(m, rows, gates, 0..gates, hidden, nb)
}

/// Rows of `k` a block's panel is filled in at a time by [`pack_gate_panels`]: that many source rows
/// stay in L1/L2 while every gate of the block is copied from them.
const PACK_ROWS: usize = 16;

/// The gates `sel` of `m [rows][src_gates * hidden]` (canonical, gate-major columns) as the panels of
/// `sel.len()` gates (see [`pack_panels`]). Each block's panel (contiguous in the output) is filled by one
/// thread, `PACK_ROWS` source rows at a time, whole lanes per copy; the blocks are shared among the
/// threads of [`pack_threads`] when the weights are large (measured in the `packing` benchmark group).
pub(crate) fn pack_gate_panels(
    m: &[f32],
    rows: usize,
    src_gates: usize,
    sel: Range<usize>,
    hidden: usize,
    nb: usize,
) -> Vec<f32> {
    let (gates, blocks) = (sel.len(), hidden.div_ceil(nb));
    let panel = gates * nb;
    let src_row = src_gates * hidden;
    debug_assert!(m.len() >= rows * src_row && sel.end <= src_gates);
    let mut out = vec![0.0; rows * panel * blocks];
    if out.is_empty() {
        return out;
    }
    let fill = |bl: usize, dst: &mut [f32]| {
        let (u0, lanes) = (bl * nb, nb.min(hidden - bl * nb));
        for k0 in (0..rows).step_by(PACK_ROWS) {
            for g in 0..gates {
                let col = (sel.start + g) * hidden + u0;
                for k in k0..(k0 + PACK_ROWS).min(rows) {
                    let at = panel_offset(gates, nb, rows, k, g);
                    dst[at..at + lanes].copy_from_slice(&m[k * src_row + col..][..lanes]);
                }
            }
        }
    };
    let mut parts: Vec<(usize, &mut [f32])> = out.chunks_mut(rows * panel).enumerate().collect();
    in_parallel(rows * panel * blocks, &mut parts, |(bl, dst)| fill(*bl, dst));
    out
}

/// `m [rows][cols]` transposed, in strips of 64 output rows: each source row gives 64 consecutive floats,
/// written to 64 output rows whose cache lines stay in L1 from one source row to the next. The strips
/// are shared among the threads of [`pack_threads`] when the matrix is large.
pub(crate) fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const STRIP: usize = 64;
    let mut t = vec![0.0; rows * cols];
    if t.is_empty() {
        return t;
    }
    debug_assert!(m.len() >= rows * cols);
    let mut parts: Vec<(usize, &mut [f32])> = t.chunks_mut(STRIP * rows).enumerate().collect();
    in_parallel(rows * cols, &mut parts, |(strip, dst)| {
        let c0 = *strip * STRIP;
        let width = dst.len() / rows;
        for r in 0..rows {
            for (c, &v) in m[r * cols + c0..][..width].iter().enumerate() {
                dst[c * rows + r] = v;
            }
        }
    });
    t
}

thread_local! {
    /// Threads the packing functions of this thread use (see [`with_pack_threads`]).
    static PACK_THREADS: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` with the weight conversions and packing it does on this thread spread over `threads`
/// threads (0: rayon's current pool, all cores by default; 1: this thread only), as the C functions'
/// `num_threads` asks.
pub(crate) fn with_pack_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    let before = PACK_THREADS.with(|t| t.replace(threads));
    /// Restores the setting even if `f` unwinds.
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            PACK_THREADS.with(|t| t.set(self.0));
        }
    }
    let _restore = Restore(before);
    f()
}

/// The threads packing uses on this thread ([`with_pack_threads`]; 0 by default).
pub(crate) fn pack_threads() -> usize {
    PACK_THREADS.with(Cell::get)
}

/// Floats below which a conversion runs on the calling thread: starting threads would cost more.
const PARALLEL_FLOATS: usize = 1 << 16;

/// Runs `f` on every part of a conversion of `floats` floats: on [`pack_threads`] threads, or on this
/// thread when the conversion is small or no thread could be started.
fn in_parallel<T: Send>(floats: usize, parts: &mut [T], f: impl Fn(&mut T) + Sync + Send) {
    let threads = if floats < PARALLEL_FLOATS { 1 } else { pack_threads() };
    if for_each_part(threads, parts, &f).is_err() {
        parts.iter_mut().for_each(f);
    }
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
