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

use std::cell::{Cell, RefCell};
use std::ops::{Deref, DerefMut, Range};

use super::aligned::AlignedVec;
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
    pub(crate) w: Panels,
    /// `[blocks][H][G][nb]`
    pub(crate) r: Panels,
    /// `[blocks][G][nb]`
    pub(crate) bias: Vec<f32>,
}

/// Where packing reads a layer direction's `W` and `R` from, for `G` gates per unit.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source<'a> {
    /// Canonical `kernel [I][G H]` and `recurrent [H][G H]` (gate-major columns).
    Canonical { kernel: &'a [f32], recurrent: &'a [f32] },
    /// A framework's unit-major `w [S H][I]` and `r [S H][H]` (ONNX, PyTorch): gate `g` is the
    /// framework's gate block `order[g]` (see [`pack_unit_panels`]).
    Units { w: &'a [f32], r: &'a [f32], order: &'a [usize] },
}

impl Source<'_> {
    /// Whether the matrices hold `gates` gates of `hidden` units over `input` and `hidden` rows.
    fn holds(&self, gates: usize, input: usize, hidden: usize) -> bool {
        let cols = gates * hidden;
        match *self {
            Source::Canonical { kernel, recurrent } => kernel.len() == input * cols && recurrent.len() == hidden * cols,
            Source::Units { w, r, order } => {
                let s_n = order.iter().max().map_or(0, |&s| s + 1);
                order.len() == gates && w.len() == s_n * hidden * input && r.len() == hidden * s_n * hidden
            }
        }
    }

    /// The panels of `W` (or of `R`, `recurrent`; `rows` rows) for the gates `sel` of `gates`.
    pub(crate) fn panels(
        &self,
        recurrent: bool,
        rows: usize,
        gates: usize,
        sel: Range<usize>,
        hidden: usize,
        nb: usize,
    ) -> Panels {
        match *self {
            Source::Canonical { kernel, recurrent: rec } => {
                pack_gate_panels(if recurrent { rec } else { kernel }, rows, gates, sel, hidden, nb)
            }
            Source::Units { w, r, order } => {
                pack_unit_panels(if recurrent { r } else { w }, rows, &order[sel], hidden, nb)
            }
        }
    }
}

impl PackedGates {
    /// Packs `W` and `R` read from `src` (gate `g` of every unit: the [`Source`]'s gate `g`) and canonical
    /// `bias [G H]` for `nb` lanes per block.
    ///
    /// # Errors
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) for sizes whose product overflows;
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for a gate count the kernels do not
    /// have, `nb == 0` or slices of the wrong length (a bug in the caller).
    pub(crate) fn new(
        gates: usize,
        input: usize,
        hidden: usize,
        src: Source<'_>,
        bias: &[f32],
        nb: usize,
    ) -> Result<Self> {
        Self::with_recurrent(gates, input, hidden, src, bias, nb, true)
    }

    /// As [`new`](Self::new), packing `R` only if `recurrent` (else [`r`](Self::r) stays empty: a GRU
    /// with the reset gate before the matmul packs it in two parts of its own).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub(crate) fn with_recurrent(
        gates: usize,
        input: usize,
        hidden: usize,
        src: Source<'_>,
        bias: &[f32],
        nb: usize,
        recurrent: bool,
    ) -> Result<Self> {
        let blocks = Self::check(gates, input, hidden, nb)?;
        let cols = gates * hidden;
        if !src.holds(gates, input, hidden) || bias.len() != cols {
            return Err(Error::argument("weights to pack of the wrong length"));
        }
        Ok(PackedGates {
            gates,
            input,
            hidden,
            nb,
            blocks,
            w: src.panels(false, input, gates, 0..gates, hidden, nb),
            r: if recurrent { src.panels(true, hidden, gates, 0..gates, hidden, nb) } else { Panels::default() },
            bias: pack_vector(bias, gates, hidden, nb),
        })
    }

    /// `panels` (this layer's `w` or `r`, `rows` rows, all its gates) unpacked to canonical
    /// `[rows][G H]`.
    pub(crate) fn unpack(&self, panels: &[f32], rows: usize) -> Vec<f32> {
        let (g, h) = (self.gates, self.hidden);
        let mut m = vec![0.0; rows * g * h];
        unpack_gate_panels(panels, rows, g, &mut m, g, 0, h, self.nb);
        m
    }

    /// The checks of [`new`](Self::new) on the sizes: the number of blocks.
    fn check(gates: usize, input: usize, hidden: usize, nb: usize) -> Result<usize> {
        if !(1..=MAX_GATES).contains(&gates) || nb == 0 {
            return Err(Error::argument(format!("{gates} gates of {nb} lanes cannot be packed")));
        }
        checked_product(&[gates, hidden], "gates")?;
        let blocks = hidden.div_ceil(nb);
        let row = checked_product(&[gates, blocks, nb], "packed row")?;
        checked_product(&[input.max(hidden), row], "packed weights")?;
        Ok(blocks)
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

/// Rows of `k` a group of panels is filled in at a time by [`pack_gate_panels`]: that many source rows
/// stay in L1/L2 while every gate of the group is copied from them.
const PACK_ROWS: usize = 16;

/// Units whose panels one part of [`pack_gate_panels`] fills (fewer when the threads need more parts):
/// each source row is then read in runs of 1 KiB rather than one block's 64 bytes per 16 KiB row, so
/// far fewer pages are touched per byte. (Measured on 1024-unit LSTM weights among runs of 16 to 1024
/// units: 256 was fastest, 1.8x one block at a time.)
const GROUP_UNITS: usize = 256;

/// The gates `sel` of `m [rows][src_gates * hidden]` (canonical, gate-major columns) as the block-major
/// panels of `sel.len()` gates, `[blocks][group][rows][gates in group][nb]` (see the
/// [module docs](self)). The panels of a group of blocks (contiguous in the output) are filled by one
/// thread ([`fill_panels`]), `PACK_ROWS` source rows at a time, each row's run of the group's units
/// copied lane block by lane block.
pub(crate) fn pack_gate_panels(
    m: &[f32],
    rows: usize,
    src_gates: usize,
    sel: Range<usize>,
    hidden: usize,
    nb: usize,
) -> Panels {
    let gates = sel.len();
    let src_row = src_gates * hidden;
    debug_assert!(m.len() >= rows * src_row && sel.end <= src_gates);
    let block_len = rows * gates * nb;
    let threads = crate::engine::effective_threads(pack_threads()).max(1);
    let group = (GROUP_UNITS / nb).clamp(1, hidden.div_ceil(nb).div_ceil(threads).max(1));
    fill_panels(block_len, hidden, nb, group, |b0, dst| {
        let n = dst.len() / block_len;
        for k0 in (0..rows).step_by(PACK_ROWS) {
            for g in 0..gates {
                let at = panel_offset(gates, nb, rows, 0, g);
                for k in k0..(k0 + PACK_ROWS).min(rows) {
                    let row = &m[k * src_row + (sel.start + g) * hidden..][..hidden];
                    let at = at + k * group_gates(gates) * nb;
                    for j in 0..n {
                        let (u0, lanes) = block_units(b0 + j, hidden, nb);
                        copy_lanes(&mut dst[j * block_len + at..][..lanes], &row[u0..u0 + lanes]);
                    }
                }
            }
        }
    })
}

/// `dst.copy_from_slice(src)` for one block's lanes. Whole blocks of the backends' widths (16 or 8
/// floats) copy with explicit 16-byte moves (SSE, in every x86-64): LLVM turns any copy it recognises,
/// fixed-size arrays included, into a call to `memcpy`, which for 64 bytes cost more than the copy.
#[inline(always)]
fn copy_lanes(dst: &mut [f32], src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if dst.len() == src.len() && (src.len() == 16 || src.len() == 8) {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_storeu_ps};
        let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
        // SAFETY: both slices hold `src.len()` (8 or 16) floats, so every 4-float move below is within
        // them; SSE is part of the x86-64 baseline.
        unsafe {
            _mm_storeu_ps(d, _mm_loadu_ps(s));
            _mm_storeu_ps(d.add(4), _mm_loadu_ps(s.add(4)));
            if src.len() == 16 {
                _mm_storeu_ps(d.add(8), _mm_loadu_ps(s.add(8)));
                _mm_storeu_ps(d.add(12), _mm_loadu_ps(s.add(12)));
            }
        }
        return;
    }
    dst.copy_from_slice(src);
}

/// The first unit of block `b` and its number of real units (fewer than `nb` in the last block).
#[inline]
fn block_units(b: usize, hidden: usize, nb: usize) -> (usize, usize) {
    (b * nb, nb.min(hidden - b * nb))
}

/// The panels of `ceil(hidden / nb)` blocks of `block_len` floats, filled `group` blocks at a time:
/// `fill(b0, dst)` writes the real units of the blocks from `b0` (their panels, contiguous, are `dst`; the
/// lanes past `hidden` are zeroed first). Each group is filled by one thread; the groups are shared among
/// the threads of [`pack_threads`] when the weights are large.
fn fill_panels(
    block_len: usize,
    hidden: usize,
    nb: usize,
    group: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Panels {
    let mut out = Panels::uninit(block_len * hidden.div_ceil(nb));
    if out.is_empty() {
        return out;
    }
    let floats = out.len();
    let mut parts: Vec<(usize, &mut [f32])> = out.chunks_mut(block_len * group).enumerate().collect();
    in_parallel(floats, &mut parts, |(p, dst)| {
        let b0 = *p * group;
        let last = b0 + dst.len() / block_len - 1;
        if (last + 1) * nb > hidden {
            // The units past `hidden` are zero: `fill` writes only the real ones.
            dst[(last - b0) * block_len..].fill(0.0);
        }
        fill(b0, dst);
    });
    out
}

/// Weights in a framework's unit-major layout, `m [src_gates * hidden][k_len]` (row `s * hidden + u`: gate
/// block `s` of the framework's order, unit `u`; ONNX `W` / `R`, PyTorch `weight_ih` / `weight_hh`), as
/// the panels of [`pack_gate_panels`] for the gates `blocks` (gate `g` of the panels is the framework's
/// block `blocks[g]`): transposed and reordered in one pass, with no canonical copy in between. Each
/// block's panel is filled by one thread ([`transpose_into`] per gate); the blocks are shared among the
/// threads of [`pack_threads`] when the weights are large.
pub(crate) fn pack_unit_panels(m: &[f32], k_len: usize, blocks: &[usize], hidden: usize, nb: usize) -> Panels {
    let gates = blocks.len();
    let stride = group_gates(gates) * nb;
    debug_assert!(blocks.iter().all(|&s| m.len() >= (s + 1) * hidden * k_len));
    fill_panels(k_len * gates * nb, hidden, nb, 1, |b, dst| {
        let (u0, lanes) = block_units(b, hidden, nb);
        for (g, &s) in blocks.iter().enumerate() {
            let src = &m[(s * hidden + u0) * k_len..][..lanes * k_len];
            let base = panel_offset(gates, nb, k_len, 0, g);
            transpose_into(src, lanes, k_len, &mut dst[base..base + (k_len - 1) * stride + lanes], stride);
        }
    })
}

/// `src [lanes][k_len]` transposed into `dst[k * stride + lane]`: the whole 8x8 tiles in registers with AVX
/// where the selected backend has it ([`super::x86::transpose_tiles`]), else through a local array (8
/// loads of 8 floats, 8 stores of 8), in the same order: an 8-row step of `k` at a time, every lane tile
/// of it, so that each panel row segment is written at once; then the edges one float at a time. (On
/// 1024-unit ONNX LSTM weights the AVX tiles transpose 1.5-2x faster than the local array.)
fn transpose_into(src: &[f32], lanes: usize, k_len: usize, dst: &mut [f32], stride: usize) {
    const T: usize = 8;
    let (l8, k8) = (lanes / T * T, k_len / T * T);
    if !vector_tiles(src, lanes, k_len, dst, stride) {
        scalar_tiles(src, lanes, k_len, dst, stride);
    }
    let edge = |dst: &mut [f32], ls: Range<usize>, ks: Range<usize>| {
        for l in ls {
            for k in ks.clone() {
                dst[k * stride + l] = src[l * k_len + k];
            }
        }
    };
    edge(dst, 0..l8, k8..k_len);
    edge(dst, l8..lanes, 0..k_len);
}

/// The whole 8x8 tiles of [`transpose_into`] through a local array, in the order of
/// [`super::x86::transpose_tiles`].
fn scalar_tiles(src: &[f32], lanes: usize, k_len: usize, dst: &mut [f32], stride: usize) {
    const T: usize = 8;
    for kk in (0..k_len / T * T).step_by(T) {
        for l0 in (0..lanes / T * T).step_by(T) {
            let mut t = [[0f32; T]; T];
            for (l, row) in t.iter_mut().enumerate() {
                row.copy_from_slice(&src[(l0 + l) * k_len + kk..][..T]);
            }
            for dk in 0..T {
                let d = &mut dst[(kk + dk) * stride + l0..][..T];
                for (l, v) in d.iter_mut().enumerate() {
                    *v = t[l][dk];
                }
            }
        }
    }
}

/// The whole 8x8 tiles of [`transpose_into`] with vector instructions, where the selected backend has
/// them; returns whether it did.
fn vector_tiles(src: &[f32], lanes: usize, k_len: usize, dst: &mut [f32], stride: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if super::selected().level >= super::CpuLevel::Avx2 {
        // SAFETY: the AVX2 level implies AVX (a backend is only selected when the CPU supports it);
        // `transpose_tiles` checks the lengths.
        unsafe { super::x86::transpose_tiles(src, lanes, k_len, dst, stride) };
        return true;
    }
    false
}

/// The inverse of [`pack_gate_panels`]: writes the `gates` gates of panels `p` (packed from `rows` rows)
/// into the gate columns `first..first + gates` of canonical `m [rows][m_gates * hidden]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn unpack_gate_panels(
    p: &[f32],
    rows: usize,
    gates: usize,
    m: &mut [f32],
    m_gates: usize,
    first: usize,
    hidden: usize,
    nb: usize,
) {
    let panel_len = rows * gates * nb;
    debug_assert!(p.len() >= hidden.div_ceil(nb) * panel_len && m.len() >= rows * m_gates * hidden);
    if panel_len == 0 {
        return;
    }
    for (bl, panel) in p.chunks_exact(panel_len).take(hidden.div_ceil(nb)).enumerate() {
        let (u0, lanes) = (bl * nb, nb.min(hidden - bl * nb));
        // In panel order (gate group, k, gate), so the panel is read straight through.
        let gg = group_gates(gates);
        for g0 in (0..gates).step_by(gg) {
            for k in 0..rows {
                for g in g0..(g0 + gg).min(gates) {
                    let at = panel_offset(gates, nb, rows, k, g);
                    let row = &mut m[k * m_gates * hidden + (first + g) * hidden + u0..];
                    copy_lanes(&mut row[..lanes], &panel[at..at + lanes]);
                }
            }
        }
    }
}

/// The inverse of [`pack_vector`]: `[blocks][gates][nb]` as one canonical row of `gates * hidden`.
pub(crate) fn unpack_vector(p: &[f32], gates: usize, hidden: usize, nb: usize) -> Vec<f32> {
    let mut out = vec![0.0; gates * hidden];
    for g in 0..gates {
        for (bl, lanes) in out[g * hidden..(g + 1) * hidden].chunks_mut(nb).enumerate() {
            let at = (bl * gates + g) * nb;
            lanes.copy_from_slice(&p[at..at + lanes.len()]);
        }
    }
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
    /// Panel memory this thread's packing may reuse, and whether it is in a [`with_recycled_panels`]
    /// scope (only then do dropped [`Panels`] come back here).
    static RECYCLED: RefCell<Recycled> = const { RefCell::new(Recycled { active: false, old: Vec::new(), returned: Vec::new() }) };
}

/// The recycled panel memory of one thread (see [`with_recycled_panels`]).
struct Recycled {
    active: bool,
    /// Buffers of the previous scope, for this scope's packing to take.
    old: Vec<AlignedVec>,
    /// Buffers dropped in this scope: the next scope's `old`.
    returned: Vec<AlignedVec>,
}

/// Buffers smaller than this many floats are not worth keeping: the allocator reuses them without page
/// faults anyway.
const RECYCLE_MIN_FLOATS: usize = 1 << 14;

/// Runs `f` with the packed weights dropped inside it kept for reuse on this thread: repeated one-shot C
/// calls then convert their weights into memory that is already mapped (fresh allocations of
/// weight-sized buffers cost more in page faults than the packing itself: see the `packing` benchmark
/// group). Packing takes kept memory wherever it runs on the thread; between calls the thread keeps the
/// buffers dropped in its last scope only, until it exits.
pub(crate) fn with_recycled_panels<R>(f: impl FnOnce() -> R) -> R {
    let nested = RECYCLED.with(|r| std::mem::replace(&mut r.borrow_mut().active, true));
    if nested {
        return f();
    }
    /// Ends the scope even if `f` unwinds: the returned buffers become the next scope's.
    struct End;
    impl Drop for End {
        fn drop(&mut self) {
            let _ = RECYCLED.try_with(|r| {
                let mut r = r.borrow_mut();
                r.active = false;
                r.old = std::mem::take(&mut r.returned);
            });
        }
    }
    let _end = End;
    f()
}

/// Packed panels: an [`AlignedVec`] (every panel starts on a cache line) whose memory comes from, and
/// goes back to, the thread's recycled panel memory inside [`with_recycled_panels`] (elsewhere an
/// ordinary allocation).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Panels(AlignedVec);

impl Panels {
    /// `len` floats of unspecified values (recycled memory holds older panels): the caller writes every
    /// one.
    pub(crate) fn uninit(len: usize) -> Self {
        let mut v = Self::recycled(len).unwrap_or_default();
        v.resize_stale(len);
        Panels(v)
    }

    /// `len` zeros (fresh memory is zero already; recycled memory is cleared).
    pub(crate) fn zeroed(len: usize) -> Self {
        let mut v = Self::recycled(len).unwrap_or_default();
        v.resize_zeroed(len);
        Panels(v)
    }

    /// The smallest kept buffer of this thread that holds `len` floats.
    fn recycled(len: usize) -> Option<AlignedVec> {
        let taken = RECYCLED.try_with(|r| {
            let mut r = r.borrow_mut();
            let best = (0..r.old.len()).filter(|&i| r.old[i].capacity() >= len).min_by_key(|&i| r.old[i].capacity());
            best.map(|i| r.old.swap_remove(i))
        });
        taken.ok().flatten()
    }
}

impl Deref for Panels {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl DerefMut for Panels {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for Panels {
    fn drop(&mut self) {
        if self.0.capacity() < RECYCLE_MIN_FLOATS {
            return;
        }
        let v = std::mem::take(&mut self.0);
        let _ = RECYCLED.try_with(|r| {
            if let Ok(mut r) = r.try_borrow_mut() {
                if r.active {
                    r.returned.push(v);
                }
            }
        });
    }
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

/// Floats below which a conversion runs on the calling thread (1 MiB, about 0.2 ms of one thread's
/// copying): starting threads would cost more. Waking a pool thread took 40-100 us on an Intel VM, and a
/// panel the other core wrote must then travel to the core that runs a single-chunk job: one-shot calls
/// of 192-unit layers at 2-4 sequences, whose 110-150 K float matrices were converted on 2 threads, ran
/// 1.2-1.9x slower on 2 threads than on 1 (`bench/grid.py`).
const PARALLEL_FLOATS: usize = 1 << 18;

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
        let (w, r) = (Panels::zeroed(len), Panels::default());
        Ok(PackedGates { gates: G, input: k, hidden, nb, blocks, w, r, bias: Vec::new() })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct values, so any mix-up of rows, units or gates shows.
    fn numbered(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32 + 0.5).collect()
    }

    /// The canonical `[k][G H]` form of unit-major `m [S H][k]` for the gate blocks `blocks`.
    fn canonical_of_units(m: &[f32], k_len: usize, blocks: &[usize], hidden: usize) -> Vec<f32> {
        let g_n = blocks.len();
        let mut c = vec![0.0; k_len * g_n * hidden];
        for (g, &s) in blocks.iter().enumerate() {
            for u in 0..hidden {
                for k in 0..k_len {
                    c[k * g_n * hidden + g * hidden + u] = m[(s * hidden + u) * k_len + k];
                }
            }
        }
        c
    }

    #[test]
    fn unit_major_packing_equals_packing_the_canonical_form() {
        let orders: [&[usize]; 5] = [&[0], &[1, 0], &[0, 1, 2], &[1, 0, 2], &[0, 2, 3, 1]];
        let mut cases = 0;
        for blocks in orders {
            let s_n = blocks.len();
            // The last size is past `PARALLEL_FLOATS` for every gate count, so two threads really split it.
            for (k_len, hidden) in [(1, 1), (63, 5), (64, 16), (65, 17), (130, 33), (300, 70), (600, 450)] {
                for nb in [4, 8, 16] {
                    for threads in [1, 2] {
                        let m = numbered(s_n * hidden * k_len);
                        let canon = canonical_of_units(&m, k_len, blocks, hidden);
                        // One group of panels on one thread, two on two (see `pack_gate_panels`).
                        let want =
                            with_pack_threads(threads, || pack_gate_panels(&canon, k_len, s_n, 0..s_n, hidden, nb));
                        let got = with_pack_threads(threads, || pack_unit_panels(&m, k_len, blocks, hidden, nb));
                        assert_eq!(got, want, "blocks {blocks:?} k {k_len} H {hidden} nb {nb} t {threads}");
                        // The panels start on a cache line.
                        assert!([&got, &want].iter().all(|p| (p.as_ptr() as usize).is_multiple_of(64)));
                        // And back: every gate, and gate subsets into their columns.
                        let mut back = vec![f32::NAN; canon.len()];
                        unpack_gate_panels(&got, k_len, s_n, &mut back, s_n, 0, hidden, nb);
                        assert_eq!(back, canon);
                        if s_n == 3 {
                            let mut split = vec![f32::NAN; canon.len()];
                            let zr = pack_gate_panels(&canon, k_len, 3, 0..2, hidden, nb);
                            let h = pack_gate_panels(&canon, k_len, 3, 2..3, hidden, nb);
                            unpack_gate_panels(&zr, k_len, 2, &mut split, 3, 0, hidden, nb);
                            unpack_gate_panels(&h, k_len, 1, &mut split, 3, 2, hidden, nb);
                            assert_eq!(split, canon);
                        }
                        cases += 1;
                    }
                }
            }
        }
        const { assert!(600 * 450 >= PARALLEL_FLOATS) };
        assert_eq!(cases, 5 * 7 * 3 * 2);
    }

    #[test]
    fn recycled_panels_reuse_memory_and_pack_the_same_bits() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        let (k_len, nb, order) = (300, 16, [0, 2, 3, 1]);
        // 80 units fill 5 blocks; 70 units use the same 5 blocks with 10 padded lanes, which must come out
        // zero though the recycled memory holds 80 units' values there.
        let dirty = numbered(4 * 80 * k_len);
        let b: Vec<f32> = numbered(4 * 70 * k_len).iter().map(|v| -v).collect();
        let want = pack_gate_panels(&canonical_of_units(&b, k_len, &order, 70), k_len, 4, 0..4, 70, nb);
        let ptr = with_recycled_panels(|| pack_unit_panels(&dirty, k_len, &order, 80, nb).as_ptr() as usize);
        assert!(ptr.is_multiple_of(64), "recycled panels start on a cache line");
        with_recycled_panels(|| {
            let got = pack_unit_panels(&b, k_len, &order, 70, nb);
            assert_eq!(got.as_ptr() as usize, ptr, "the previous call's memory is reused");
            assert_eq!(bits(&got), bits(&want));
        });
        // The same through the canonical path, and zeroed matrices, in twice-recycled memory.
        with_recycled_panels(|| {
            let got = pack_gate_panels(&canonical_of_units(&b, k_len, &order, 70), k_len, 4, 0..4, 70, nb);
            assert_eq!(got.as_ptr() as usize, ptr);
            assert_eq!(bits(&got), bits(&want));
        });
        with_recycled_panels(|| {
            let z = Panels::zeroed(want.len());
            assert_eq!(z.as_ptr() as usize, ptr);
            assert!(z.iter().all(|v| v.to_bits() == 0));
        });
        // Outside a scope, packing may take the kept memory too, and dropping returns nothing: the thread
        // then keeps no memory.
        let outside = pack_unit_panels(&b, k_len, &order, 70, nb);
        assert_eq!(outside.as_ptr() as usize, ptr);
        assert_eq!(bits(&outside), bits(&want));
        drop(outside);
        with_recycled_panels(|| assert!(RECYCLED.with(|r| r.borrow().old.is_empty())));
    }

    #[test]
    fn both_tile_transposes_write_exactly_the_whole_tiles() {
        let mut cases = 0;
        for (lanes, k_len, stride) in [(8, 8, 8), (16, 64, 32), (16, 67, 64), (13, 30, 16), (7, 40, 8), (24, 9, 24)] {
            let src = numbered(lanes * k_len);
            let len = (k_len - 1) * stride + lanes;
            let want: Vec<f32> = (0..len)
                .map(|i| {
                    let (k, l) = (i / stride, i % stride);
                    let whole = k < k_len / 8 * 8 && l < lanes / 8 * 8;
                    if whole {
                        src[l * k_len + k]
                    } else {
                        f32::NAN
                    }
                })
                .collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            let mut scalar = vec![f32::NAN; len];
            scalar_tiles(&src, lanes, k_len, &mut scalar, stride);
            assert_eq!(bits(&scalar), bits(&want), "scalar lanes {lanes} k {k_len} stride {stride}");
            let mut vector = vec![f32::NAN; len];
            if vector_tiles(&src, lanes, k_len, &mut vector, stride) {
                assert_eq!(bits(&vector), bits(&want), "vector lanes {lanes} k {k_len} stride {stride}");
            } else {
                eprintln!("SKIPPED: vector tiles (the selected backend has no AVX)");
            }
            // The whole transpose: the edges too.
            let mut full = vec![f32::NAN; len];
            transpose_into(&src, lanes, k_len, &mut full, stride);
            for k in 0..k_len {
                for l in 0..lanes {
                    assert_eq!(full[k * stride + l], src[l * k_len + k]);
                }
            }
            cases += 1;
        }
        assert_eq!(cases, 6);
    }

    #[test]
    fn vectors_unpack_to_what_was_packed() {
        for (gates, hidden, nb) in [(1, 1, 4), (3, 17, 8), (4, 33, 16), (3, 16, 16)] {
            let v = numbered(gates * hidden);
            let p = pack_vector(&v, gates, hidden, nb);
            assert_eq!(p.len(), gates * hidden.div_ceil(nb) * nb);
            assert_eq!(unpack_vector(&p, gates, hidden, nb), v);
        }
    }
}
