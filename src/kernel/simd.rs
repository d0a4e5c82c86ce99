//! The kernels, written once over a small vector trait ([`Simd`]); each backend only implements the
//! trait for its register type and wraps the generic kernels in `#[target_feature]` entry points.
//!
//! - [`gemm`]: register tiles of up to `MR` rows x one or two weight blocks (`G` gates x `LANES` hidden
//!   units each), `k` over the inputs, `acc = a_k * W_k + acc` (fused or not, per backend); the caller's
//!   epilogue receives each tile's accumulators while they are in registers. A cell's step is this GEMM
//!   over the recurrent weights with the cell update as its epilogue (see [`crate::cells`]).
//! - [`project`]: the same GEMM over the input weights, storing the tiles (the input projection).
//!
//! Every output element sees the same operation sequence whatever `MR`, the tile it falls in, or the
//! number of rows, so results are independent of batch composition. Activations use only `+ - * /`,
//! multiply-adds (fused where the backend fuses), compares, selects and exact bit operations, in the order
//! of [`crate::cells::math`], so every backend matches the scalar reference bit for bit (with the reference's
//! rounding mode set to the backend's).

use std::ops::Range;

use super::pack::{group_gates, panel_offset, PackedGates};
use crate::cells::activation::Activation;
use crate::cells::math;
#[cfg(not(debug_assertions))]
use crate::engine::l2_bytes;
use crate::reference::Rounding;

/// A vector of `f32` lanes.
///
/// # Safety
/// Implementations may only be used when the CPU supports their instructions; every method is `unsafe`
/// for that reason. Pointers passed to `load`/`store` must be valid for `LANES` floats.
pub(crate) unsafe trait Simd: Copy {
    /// Lanes per vector (the weight block width).
    const LANES: usize;
    /// Rows per register tile.
    const MR: usize;
    /// Tiles of at most this many rows span two weight blocks (enough registers for the doubled
    /// accumulators plus the weight vectors); 0: never.
    const PAIR_ROWS: usize;
    /// Whether tiles of three or more rows of a 4-gate GEMM accumulate two gates at a time (rows x 2
    /// accumulators, each weight vector used by every row) and hand the epilogue all four gates after:
    /// for register files too small for rows x 4 gate accumulators.
    const GATE_PAIRS: bool;
    /// Register tiles of at most this many rows prefetch their weight panel rows [`PREFETCH_ROWS`]
    /// ahead. The hint costs a load-port slot per cache line, which pays where a tile does little
    /// arithmetic per weight or the register file leaves room: with AVX-512, prefetching in every tile
    /// ran the ONNX layers 10-25 % faster at 1024-2048 units (batches 4-64) and no slower at 64 units;
    /// AVX2's three-row GRU tiles ran up to 20 % slower with it.
    const PREFETCH_TILE_ROWS: usize;
    /// Whether `mul_add` rounds once.
    const FUSED: bool;
    /// A lane mask.
    type Mask: Copy;

    unsafe fn splat(v: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    unsafe fn div(self, o: Self) -> Self;
    /// `self * a + b`, fused iff `FUSED`. Used by the GEMMs and the Horner steps of sigmoid and tanh
    /// ([`crate::cells::math`]), nowhere else.
    unsafe fn mul_add(self, a: Self, b: Self) -> Self;
    unsafe fn lt(self, o: Self) -> Self::Mask;
    unsafe fn gt(self, o: Self) -> Self::Mask;
    unsafe fn ge(self, o: Self) -> Self::Mask;
    unsafe fn is_nan(self) -> Self::Mask;
    unsafe fn or_mask(a: Self::Mask, b: Self::Mask) -> Self::Mask;
    /// `m ? a : b` per lane.
    unsafe fn select(m: Self::Mask, a: Self, b: Self) -> Self;
    /// `if a < b { a } else { b }` per lane (so a NaN in `b` passes through: x86 `minps a, b`).
    #[inline(always)]
    unsafe fn min_first(a: Self, b: Self) -> Self {
        // SAFETY: S's instructions are available (caller's contract).
        unsafe { Self::select(a.lt(b), a, b) }
    }
    /// `if a > b { a } else { b }` per lane (so a NaN in `b` passes through: x86 `maxps a, b`).
    #[inline(always)]
    unsafe fn max_first(a: Self, b: Self) -> Self {
        // SAFETY: as in `min_first`.
        unsafe { Self::select(a.gt(b), a, b) }
    }
    /// Clears the sign bits.
    unsafe fn abs(self) -> Self;
    /// `2^(n - 1)` for integral `n` in `[-126, 128]`: bits `(n + 126) << 23`.
    unsafe fn pow2_minus1(n: Self) -> Self;
    /// `(e, m)` with `x = m * 2^(e + 1)` for finite positive normal `x`: `e` the biased exponent minus
    /// 126 (as float), `m` in `[0.5, 1)` (the bit manipulation of [`math::ln`]).
    unsafe fn frexp(x: Self) -> (Self, Self);
    /// Hints that the cache line at `p` will be read soon (no-op where unsupported).
    #[inline(always)]
    unsafe fn prefetch(_p: *const f32) {}
    /// [`act_lanes`] for this type. Backends with target features implement it as a call to a
    /// `#[target_feature]` function (inlined where the optimizer sees fit), so unoptimized builds keep
    /// each activation in a frame of its own instead of inflating the kernels' stack frames.
    unsafe fn act(a: Activation, x: Self) -> Self;
}

/// `v` clamped to `[-clip, clip]` by comparisons (NaN passes through), lane-wise
/// [`activation::clip`](crate::cells::activation::clip).
///
/// # Safety
/// S's instructions available.
#[inline(always)]
pub(crate) unsafe fn clip_lanes<S: Simd>(v: S, clip: Option<f32>) -> S {
    match clip {
        // SAFETY: S's instructions are available (caller's contract); no memory is accessed.
        Some(cl) => unsafe {
            let (hi, lo) = (S::splat(cl), S::splat(-cl));
            let v = S::select(v.gt(hi), hi, v);
            S::select(v.lt(lo), lo, v)
        },
        None => v,
    }
}

#[inline(always)]
unsafe fn s<S: Simd>(v: f32) -> S {
    // SAFETY: the caller runs with S's instructions available.
    unsafe { S::splat(v) }
}

/// [`math::exp`] lane-wise.
#[inline(always)]
pub(crate) unsafe fn exp<S: Simd>(x: S) -> S {
    // SAFETY (whole body): S's instructions are available (caller's contract); no memory is accessed.
    unsafe {
        let (lo, hi) = (s::<S>(math::EXP_LO), s::<S>(math::EXP_HI));
        let x = S::select(x.lt(lo), lo, x);
        let x = S::select(x.gt(hi), hi, x);
        let magic = s::<S>(math::ROUND_MAGIC);
        let n = x.mul(s(math::LOG2E)).add(magic).sub(magic);
        let r = x.sub(n.mul(s(math::LN2_HI))).sub(n.mul(s(math::LN2_LO)));
        let mut p = s::<S>(math::EXP_P[0]);
        for &c in &math::EXP_P[1..] {
            p = p.mul(r).add(s(c));
        }
        let y = p.mul(r.mul(r)).add(r).add(s(1.0));
        y.mul(S::pow2_minus1(n)).mul(s(2.0))
    }
}

/// `v` clamped to `[-bound, bound]` by comparisons, as `math::clamp_sym`.
#[inline(always)]
unsafe fn clamp_sym<S: Simd>(v: S, bound: f32) -> S {
    // SAFETY: as in `exp`.
    unsafe {
        // `v < lo ? lo : v` is `lo > v ? lo : v`, then `v > hi ? hi : v` is `hi < v ? hi : v`.
        S::min_first(s(bound), S::max_first(s(-bound), v))
    }
}

/// `math::odd_rational` lane-wise.
#[inline(always)]
unsafe fn odd_rational<S: Simd>(x: S, clamp: f32, p: &[f32; 6], q: &[f32; 4], out: f32) -> S {
    // SAFETY: as in `exp`.
    unsafe {
        let a = clamp_sym(x, clamp);
        let z = a.mul(a);
        let mut num = s::<S>(p[5]);
        for &c in p[..5].iter().rev() {
            num = num.mul_add(z, s(c));
        }
        let mut den = s::<S>(q[3]);
        for &c in q[..3].iter().rev() {
            den = den.mul_add(z, s(c));
        }
        clamp_sym(a.mul(num).div(den), out)
    }
}

/// [`math::tanh`] lane-wise.
#[inline(always)]
pub(crate) unsafe fn tanh<S: Simd>(x: S) -> S {
    // SAFETY: as in `exp`.
    unsafe { odd_rational(x, math::TANH_CLAMP, &math::TANH_P, &math::TANH_Q, 1.0) }
}

/// [`math::sigmoid`] lane-wise.
#[inline(always)]
pub(crate) unsafe fn sigmoid<S: Simd>(x: S) -> S {
    // SAFETY: as in `exp`.
    unsafe { odd_rational(x, math::SIGMOID_CLAMP, &math::SIGMOID_P, &math::SIGMOID_Q, 0.5).add(s(0.5)) }
}

/// [`math::ln`] lane-wise.
#[inline(always)]
pub(crate) unsafe fn ln<S: Simd>(x: S) -> S {
    // SAFETY: as in `exp`.
    unsafe {
        let (e, m0) = S::frexp(x);
        let one = s::<S>(1.0);
        let below = m0.lt(s(math::SQRT_HALF));
        let e = S::select(below, e.sub(one), e);
        let m = S::select(below, m0.add(m0).sub(one), m0.sub(one));
        let z = m.mul(m);
        let mut p = s::<S>(math::LN_P[0]);
        for &c in &math::LN_P[1..] {
            p = p.mul(m).add(s(c));
        }
        let y = p.mul(m).mul(z).add(e.mul(s(math::LN2_LO))).sub(s::<S>(0.5).mul(z));
        m.add(y).add(e.mul(s(math::LN2_HI)))
    }
}

/// [`Activation::apply_rounded`] lane-wise with the backend's rounding, bit for bit.
#[inline(always)]
pub(crate) unsafe fn act_lanes<S: Simd>(a: Activation, x: S) -> S {
    // SAFETY: as in `exp`.
    unsafe {
        let one = s::<S>(1.0);
        let zero = s::<S>(0.0);
        match a {
            Activation::Sigmoid => sigmoid(x),
            Activation::Tanh => tanh(x),
            Activation::Relu => S::select(S::or_mask(x.gt(zero), x.is_nan()), x, zero),
            Activation::Affine { alpha, beta } => s::<S>(alpha).mul(x).add(s(beta)),
            Activation::LeakyRelu { alpha } => S::select(x.ge(zero), x, s::<S>(alpha).mul(x)),
            Activation::ThresholdedRelu { alpha } => S::select(S::or_mask(x.gt(s(alpha)), x.is_nan()), x, zero),
            Activation::ScaledTanh { alpha, beta } => s::<S>(alpha).mul(tanh(s::<S>(beta).mul(x))),
            Activation::HardSigmoid { alpha, beta } => {
                let y = s::<S>(alpha).mul(x).add(s(beta));
                let mid = S::select(S::or_mask(y.gt(zero), y.is_nan()), y, zero);
                S::select(y.gt(one), one, mid)
            }
            Activation::Elu { alpha } => S::select(x.ge(zero), x, s::<S>(alpha).mul(exp(x).sub(one))),
            Activation::Softsign => x.div(one.add(x.abs())),
            Activation::Softplus => S::select(S::or_mask(x.gt(s(20.0)), x.is_nan()), x, ln(one.add(exp(x)))),
        }
    }
}

/// One register tile: `acc[m][j][g] = init[m][j][g] + sum_k a[m][k] * b_j[k][g]` (the multiply-adds in
/// order of `k`) for `M` rows, `NB` weight blocks and `G` gate vectors per block, `k` in `ks` (a slice of
/// `0..k_len`), where `b_j[k][g]` is at `panels[j] + panel_offset(G, LANES, k_len, k, g)` (the packed
/// layout, [`crate::kernel::pack`]). A sum split into slices of `k`, each continuing from the previous
/// slice's accumulators, is bit for bit the sum over `0..k_len` in one call. Two blocks give short tiles (one to three rows) enough independent FMA
/// chains to hide the FMA latency; every element still sums over `k` in order, so the result does not
/// depend on the tiling.
///
/// # Safety
/// S's instructions available; `ks` within `0..k_len`; `a[m]` valid for `k_len` reads; `panels[j]` valid
/// for `k_len * G * LANES` reads.
#[inline(always)]
unsafe fn tile<S: Simd, const M: usize, const NB: usize, const G: usize>(
    a: [*const f32; M],
    k_len: usize,
    ks: Range<usize>,
    panels: [*const f32; NB],
    init: [[[S; G]; NB]; M],
) -> [[[S; G]; NB]; M] {
    // SAFETY: the caller's contract covers every read; no writes.
    unsafe {
        let mut acc = init;
        for k in ks.clone() {
            // Fetch the panel rows a few steps ahead (only a hint; reads past the panel are never
            // dereferenced): short tiles do too little arithmetic per weight to hide memory latency, and
            // with AVX-512 even six-row tiles waited on the hardware prefetcher for weights beyond L2
            // (see `Simd::PREFETCH_TILE_ROWS`).
            if M <= S::PREFETCH_TILE_ROWS && k + PREFETCH_ROWS < ks.end {
                for p in panels {
                    for g in (0..G).step_by(group_gates(G)) {
                        let ahead = p.add(panel_offset(G, S::LANES, k_len, k + PREFETCH_ROWS, g));
                        for line in 0..(group_gates(G) * S::LANES * 4).div_ceil(64) {
                            S::prefetch(ahead.add(line * 16));
                        }
                    }
                }
            }
            let b: [[S; G]; NB] = std::array::from_fn(|j| {
                std::array::from_fn(|g| S::load(panels[j].add(panel_offset(G, S::LANES, k_len, k, g))))
            });
            for m in 0..M {
                let av = S::splat(*a[m].add(k));
                for j in 0..NB {
                    for g in 0..G {
                        acc[m][j][g] = av.mul_add(b[j][g], acc[m][j][g]);
                    }
                }
            }
        }
        acc
    }
}

/// [`tile`] for `G = 4` and one block, two gates at a time: `M x 2` accumulators over `k` for gates 0
/// and 1, then for gates 2 and 3, so each weight vector loaded serves all `M` rows (see
/// [`Simd::GATE_PAIRS`]). Every element is the same sum over `k` in order as in [`tile`], bit for bit.
///
/// # Safety
/// As [`tile`].
#[inline(always)]
unsafe fn tile_gate_pairs<S: Simd, const M: usize, const NB: usize, const G: usize>(
    a: [*const f32; M],
    k_len: usize,
    ks: Range<usize>,
    panels: [*const f32; NB],
    init: [[[S; G]; NB]; M],
) -> [[[S; G]; NB]; M] {
    // SAFETY: the caller's contract covers every read; no writes.
    unsafe {
        // The first half goes to memory (`black_box`) before the second runs: kept live in registers
        // through the second half's loop, it left too few for that loop's accumulators, which then
        // went to the stack on every k (the input projection ran at 37 GFLOP/s instead of ~60).
        debug_assert!(G == 4 && group_gates(G) == 2);
        let half = |q: usize| std::array::from_fn(|m| [init[m][0][2 * q], init[m][0][2 * q + 1]]);
        let lo = std::hint::black_box(pair_tile::<S, M>(&a, ks.clone(), panels[0], half(0)));
        let hi = pair_tile::<S, M>(&a, ks, panels[0].add(panel_offset(G, S::LANES, k_len, 0, 2)), half(1));
        let mut out = [[[s::<S>(0.0); G]; NB]; M];
        for m in 0..M {
            out[m][0][0] = lo[m][0];
            out[m][0][1] = lo[m][1];
            out[m][0][2] = hi[m][0];
            out[m][0][3] = hi[m][1];
        }
        out
    }
}

/// Rows per group of [`gemm_tall`], in row tiles of `S::MR`.
const TALL_GROUP_TILES: usize = 8;

/// [`gemm`] for operands with more rows than one tile: the rows in groups of [`TALL_GROUP_TILES`] row
/// tiles and, within a group, the weight blocks outermost, so each block's panel streams once per
/// group instead of once per row tile while the group's rows stay cached. The backward's `dZ·Rᵀ` and
/// `dZ·Wᵀ` have `4 H` rows of weights: mid_fit's panels together are 1 MiB, as large as L2, and every
/// row tile streamed them from L3. Every element is the same sum as in [`gemm`], bit for bit; the
/// epilogue sees the rows and blocks in another order.
///
/// # Safety
/// As [`gemm`].
#[inline(always)]
pub(crate) unsafe fn gemm_tall<S: Simd, const G: usize>(
    panels: &[f32],
    k_len: usize,
    m: usize,
    a: Rows<'_>,
    blocks: Range<usize>,
    epilogue: &mut impl Epilogue<S, G>,
) {
    /// Hands the inner epilogue rows shifted by `row0`.
    struct Shifted<'e, E> {
        inner: &'e mut E,
        row0: usize,
    }
    impl<S: Simd, const G: usize, E: Epilogue<S, G>> Epilogue<S, G> for Shifted<'_, E> {
        #[inline(always)]
        unsafe fn apply(&mut self, row: usize, block: usize, acc: [S; G]) {
            // SAFETY: row + row0 < m, a row of the caller's GEMM.
            unsafe { self.inner.apply(self.row0 + row, block, acc) }
        }
    }
    // SAFETY (both calls): the rows and blocks are within the caller's.
    unsafe {
        // The snake order directly: these calls never take the blocked one (a single block, or one
        // row tile).
        if m <= S::MR || blocks.len() < 2 {
            gemm_snake::<S, G>(panels, k_len, m, a, blocks, false, epilogue);
            return;
        }
        let group = TALL_GROUP_TILES * S::MR;
        for row0 in (0..m).step_by(group) {
            let mut ep = Shifted { inner: &mut *epilogue, row0 };
            for bl in blocks.clone() {
                gemm_snake::<S, G>(panels, k_len, group.min(m - row0), a.skip(row0), bl..bl + 1, false, &mut ep);
            }
        }
    }
}

/// The two gate vectors of one group of a [`tile_gate_pairs`] tile over `ks`, from `init`, `p` at the
/// group's panel (`[k_len][2][LANES]`).
///
/// # Safety
/// As [`tile`].
#[inline(always)]
unsafe fn pair_tile<S: Simd, const M: usize>(
    a: &[*const f32; M],
    ks: Range<usize>,
    p: *const f32,
    init: [[S; 2]; M],
) -> [[S; 2]; M] {
    // SAFETY: the caller's contract covers every read; no writes.
    unsafe {
        let mut acc = init;
        for k in ks {
            let bk = p.add(k * 2 * S::LANES);
            let (b0, b1) = (S::load(bk), S::load(bk.add(S::LANES)));
            for (m, acc_m) in acc.iter_mut().enumerate() {
                let av = S::splat(*a[m].add(k));
                acc_m[0] = av.mul_add(b0, acc_m[0]);
                acc_m[1] = av.mul_add(b1, acc_m[1]);
            }
        }
        acc
    }
}

/// Weight-panel rows fetched ahead by the register tiles (see [`Simd::PREFETCH_TILE_ROWS`]).
const PREFETCH_ROWS: usize = 16;

/// Calls `$body!(M, NB)` for a tile of `m` rows over `nb` blocks (two only for one to three rows).
/// Tiles hold `M x NB x G` accumulators.
macro_rules! dispatch_tile {
    ($m:expr, $nb:expr, $body:ident) => {
        match ($m, $nb) {
            (1, 2) => $body!(1, 2),
            (2, 2) => $body!(2, 2),
            (3, 2) => $body!(3, 2),
            (1, _) => $body!(1, 1),
            (2, _) => $body!(2, 1),
            (3, _) => $body!(3, 1),
            (4, _) => $body!(4, 1),
            (5, _) => $body!(5, 1),
            _ => $body!(6, 1),
        }
    };
}

/// Rows per register tile of a `G`-gate [`gemm`]: `S::MR`, or 3 for three gates on register files of 16
/// vectors ([`Simd::GATE_PAIRS`]): 6 x 3 accumulators spill, and so did 4 x 3 (with the three weight
/// vectors and the broadcast that is all 16 registers, and the compiler kept two accumulators on the
/// stack, a store and a load in every `k`). Results do not depend on the tiling.
#[inline(always)]
const fn tile_rows<S: Simd, const G: usize>() -> usize {
    if S::GATE_PAIRS && G == 3 && S::MR > 3 {
        3
    } else {
        S::MR
    }
}

/// Row counts of the tiles covering `m` rows: as few tiles as with `mr` rows each, as equal as possible
/// (13 rows with `mr = 6`: 5, 4, 4 rather than 6, 6, 1), so no tile is left with one or two rows, which
/// do too little arithmetic per weight loaded. Results do not depend on the tiling.
#[inline(always)]
fn row_tiles(m: usize, mr: usize) -> impl Iterator<Item = usize> {
    let tiles = m.div_ceil(mr);
    let (base, extra) = m.checked_div(tiles).map_or((0, 0), |b| (b, m % tiles));
    (0..tiles).map(move |i| base + usize::from(i < extra))
}

/// The weight-block groups of one sweep of a tile of `m` rows over `blocks`, as `(first block, blocks in
/// the group)`: pairs for short tiles where two blocks remain, else single blocks; front to back, or back
/// to front when `reverse`. Successive row tiles and steps sweep in alternating directions ("snake"
/// order), so each sweep starts on the weights the previous one touched last, still in L1/L2: weights
/// larger than L2 then stream only partly from L3. Every block's outputs are computed the same way in
/// either order.
#[inline(always)]
fn sweep<S: Simd>(m: usize, blocks: Range<usize>, reverse: bool) -> impl Iterator<Item = (usize, usize)> {
    let pairs = m <= S::PAIR_ROWS;
    let mut done = 0;
    std::iter::from_fn(move || {
        let left = blocks.len() - done;
        let nb = match left {
            0 => return None,
            2.. if pairs => 2,
            _ => 1,
        };
        let first = if reverse { blocks.end - done - nb } else { blocks.start + done };
        done += nb;
        Some((first, nb))
    })
}

/// `out[r] = x[rows[r]..][..I] · W` over the weight blocks `blocks`: each output row holds
/// `blocks.len() * G * LANES` floats, block `blocks.start` first.
///
/// # Safety
/// S's instructions available; `w` packed for `S::LANES`.
#[inline(always)]
pub(crate) unsafe fn project<S: Simd>(
    w: &PackedGates,
    x: &[f32],
    rows: &[usize],
    blocks: Range<usize>,
    out: &mut [f32],
) {
    // SAFETY (every arm): the caller's contract.
    unsafe {
        match w.gates {
            1 => project_gates::<S, 1>(w, x, rows, blocks, out),
            2 => project_gates::<S, 2>(w, x, rows, blocks, out),
            3 => project_gates::<S, 3>(w, x, rows, blocks, out),
            4 => project_gates::<S, 4>(w, x, rows, blocks, out),
            g => unreachable!("{g} gates: PackedGates::new accepts 1 to {MAX_GATES}"),
        }
    }
}

/// Gates per hidden unit the kernels are compiled for.
pub(crate) const MAX_GATES: usize = 4;

/// [`project`] for `G` gates.
///
/// # Safety
/// As [`project`].
#[inline(always)]
unsafe fn project_gates<S: Simd, const G: usize>(
    w: &PackedGates,
    x: &[f32],
    rows: &[usize],
    blocks: Range<usize>,
    out: &mut [f32],
) {
    let panel = G * S::LANES;
    let out_row = blocks.len() * panel;
    let input = w.input;
    assert!(w.gates == G && w.nb == S::LANES && blocks.end <= w.blocks && out.len() >= rows.len() * out_row);
    assert!(w.w.len() >= w.blocks * input * panel);
    assert!(rows.iter().all(|&o| o.checked_add(input).is_some_and(|e| e <= x.len())));
    let mut store = Store {
        out: Rows::Strided { base: out.as_mut_ptr(), stride: out_row },
        first: blocks.start,
        limit: out_row,
        accumulate: false,
    };
    let rows_len = rows.len();
    let rows = Rows::Gathered { base: x.as_ptr(), offsets: rows };
    // SAFETY: the asserts above bound every row read (o + input <= x.len()) and every weight read (panels
    // of input x G LANES floats for blocks < w.blocks); `gemm` hands the epilogue rows < rows.len() and
    // blocks in `blocks`, so every write stays inside `out`.
    unsafe { gemm::<S, G>(&w.w, input, rows_len, rows, blocks, false, &mut store) };
}

/// The epilogue that stores (or adds) each tile into output rows: row `r` at `out.at(r)`, the columns of
/// block `first` first, only the first `limit` columns (the rest of the tile is padding).
pub(crate) struct Store<'a> {
    /// Where output row `r` starts (the pointers are written through).
    pub out: Rows<'a>,
    /// The first block of the GEMM (column 0 of the output).
    pub first: usize,
    /// Columns written per row.
    pub limit: usize,
    /// Add to the output instead of overwriting it.
    pub accumulate: bool,
}

impl<S: Simd, const G: usize> Epilogue<S, G> for Store<'_> {
    #[inline(always)]
    unsafe fn apply(&mut self, row: usize, block: usize, acc: [S; G]) {
        // SAFETY: the GEMM's caller guarantees that output row `row` holds `limit` floats.
        unsafe {
            let dst = self.out.at(row).cast_mut();
            for (g, v) in acc.iter().enumerate() {
                let col = ((block - self.first) * G + g) * S::LANES;
                if col + S::LANES <= self.limit {
                    let v = if self.accumulate { v.add(S::load(dst.add(col))) } else { *v };
                    v.store(dst.add(col));
                } else if col < self.limit {
                    let mut lanes = [0.0f32; 16];
                    v.store(lanes.as_mut_ptr());
                    for (l, &x) in lanes[..self.limit - col].iter().enumerate() {
                        let d = dst.add(col + l);
                        *d = if self.accumulate { *d + x } else { x };
                    }
                }
            }
        }
    }
}

/// Where the rows of a GEMM's left operand start.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rows<'a> {
    /// Row `i` at `base + i * stride`.
    Strided { base: *const f32, stride: usize },
    /// Row `i` at `base + offsets[i]` (gathered valid steps).
    Gathered { base: *const f32, offsets: &'a [usize] },
}

impl<'a> Rows<'a> {
    /// The rows from row `i` on (row 0 of the result is row `i`). Addresses formed with wrapping
    /// arithmetic; [`Rows::at`]'s contract covers their use.
    #[inline(always)]
    pub(crate) fn skip(self, i: usize) -> Rows<'a> {
        match self {
            Rows::Strided { base, stride } => Rows::Strided { base: base.wrapping_add(i * stride), stride },
            Rows::Gathered { base, offsets } => Rows::Gathered { base, offsets: &offsets[i.min(offsets.len())..] },
        }
    }

    /// Row `i`.
    ///
    /// # Safety
    /// The resulting pointer is in bounds of the allocation `base` points into (the caller of [`gemm`]
    /// guarantees it for every row it passes).
    #[inline(always)]
    pub(crate) unsafe fn at(&self, i: usize) -> *const f32 {
        // SAFETY: the caller's contract.
        unsafe {
            match *self {
                Rows::Strided { base, stride } => base.add(i * stride),
                Rows::Gathered { base, offsets } => base.add(offsets[i]),
            }
        }
    }
}

/// What a GEMM does with each register tile: a cell's update, or a store. Implementations mark
/// `apply` `#[inline(always)]`, so the epilogue is compiled into the kernel with its instruction set
/// (a closure would be compiled apart, without the kernel's target features).
pub(crate) trait Epilogue<S: Simd, const G: usize> {
    /// Handles the `G` gate vectors of `row` and weight block `block`.
    ///
    /// # Safety
    /// S's instructions available; `row` and `block` are among those the GEMM was asked for.
    unsafe fn apply(&mut self, row: usize, block: usize, acc: [S; G]);
}

/// The GEMM every kernel is made of: for the `m` rows of `a` (each `k_len` floats) and the weight blocks
/// `blocks` of `panels` (`[blocks][k_len][G][LANES]`), hands `epilogue` the `G` gate vectors
/// `acc[g] = sum_k a(row)[k] * panel[block][k][g]` of every row and block, while they are in registers.
/// Rows go in tiles of at most `S::MR`; the first tile sweeps the blocks backwards if `reverse_first`,
/// later ones alternate ("snake" order, so weights beyond L2 are partly re-used from it); returns whether
/// the last sweep ran backwards. Each element's sum runs over `k` in order whatever the tiling or
/// direction, so results never depend on them.
///
/// # Safety
/// S's instructions available; every row `a.at(i)`, `i < m`, valid for `k_len` reads; `panels` holds
/// `blocks.end` panels of `k_len * G * LANES` floats.
#[inline(always)]
pub(crate) unsafe fn gemm<S: Simd, const G: usize>(
    panels: &[f32],
    k_len: usize,
    m: usize,
    a: Rows<'_>,
    blocks: Range<usize>,
    reverse_first: bool,
    epilogue: &mut impl Epilogue<S, G>,
) -> bool {
    const { assert!(S::MR >= 1 && S::MR <= 6) };
    let panel = G * S::LANES;
    debug_assert!(panels.len() >= blocks.end * k_len * panel);
    // Unoptimised builds take the snake order only: they give every inlined register tile its own
    // stack slots, and a GRU step inlining three GEMMs with both orders overflowed a 2 MiB thread
    // stack. The two orders compute the same bits, so only the speed differs.
    #[cfg(not(debug_assertions))]
    if m > tile_rows::<S, G>() && blocks.len() >= 2 && blocks.len() * k_len * panel * 4 > l2_bytes() {
        // SAFETY: the caller's contract.
        return unsafe { gemm_blocked::<S, G>(panels, k_len, m, a, blocks, reverse_first, epilogue) };
    }
    // SAFETY: the caller's contract.
    unsafe { gemm_snake::<S, G>(panels, k_len, m, a, blocks, reverse_first, epilogue) }
}

/// [`gemm`] for weights that fit in L2: row tiles outermost, each sweeping the blocks in snake order.
///
/// # Safety
/// As [`gemm`].
#[inline(always)]
unsafe fn gemm_snake<S: Simd, const G: usize>(
    panels: &[f32],
    k_len: usize,
    m: usize,
    a: Rows<'_>,
    blocks: Range<usize>,
    reverse_first: bool,
    epilogue: &mut impl Epilogue<S, G>,
) -> bool {
    let panel = G * S::LANES;
    let mut r = 0;
    let mut reverse = reverse_first;
    for mr in row_tiles(m, tile_rows::<S, G>()) {
        for (bl, nb) in sweep::<S>(mr, blocks.clone(), reverse) {
            // SAFETY: rows r..r + mr < m and panels bl.. < blocks.end, within the caller's contract.
            unsafe {
                macro_rules! run {
                    ($m:literal, $nb:literal) => {{
                        let p: [*const f32; $nb] =
                            std::array::from_fn(|j| panels.as_ptr().add((bl + j) * k_len * panel));
                        let rows: [*const f32; $m] = std::array::from_fn(|i| a.at(r + i));
                        let acc = run_tile::<S, $m, $nb, G>(rows, k_len, 0..k_len, p, zeros());
                        for (i, row) in acc.into_iter().enumerate() {
                            for (j, blk) in row.into_iter().enumerate() {
                                epilogue.apply(r + i, bl + j, blk);
                            }
                        }
                    }};
                }
                dispatch_tile!(mr, nb, run);
            }
        }
        r += mr;
        reverse = !reverse;
    }
    !reverse
}

/// The register tile of `M` rows and `NB` blocks over `ks` from `init`: [`tile_gate_pairs`] where the
/// register file needs it, else [`tile`]; the same sums either way.
///
/// # Safety
/// As [`tile`].
#[inline(always)]
unsafe fn run_tile<S: Simd, const M: usize, const NB: usize, const G: usize>(
    rows: [*const f32; M],
    k_len: usize,
    ks: Range<usize>,
    panels: [*const f32; NB],
    init: [[[S; G]; NB]; M],
) -> [[[S; G]; NB]; M] {
    // SAFETY: the caller's contract.
    unsafe {
        if G >= 4 && S::GATE_PAIRS && M >= 3 && NB == 1 {
            tile_gate_pairs::<S, M, NB, G>(rows, k_len, ks, panels, init)
        } else {
            tile::<S, M, NB, G>(rows, k_len, ks, panels, init)
        }
    }
}

/// Zero accumulators.
///
/// # Safety
/// S's instructions available.
#[inline(always)]
unsafe fn zeros<S: Simd, const M: usize, const NB: usize, const G: usize>() -> [[[S; G]; NB]; M] {
    // SAFETY: the caller's contract; `splat` touches no memory.
    [[[unsafe { S::splat(0.0) }; G]; NB]; M]
}

/// Rows of the left operand a [`gemm_blocked`] group holds (their slices of [`BLOCK_KC`] floats stay in
/// L2 while each weight panel slice streams once over them).
pub(crate) const BLOCK_ROWS: usize = 192;

/// Rows of `k` per slice of [`gemm_blocked`]: a block's panel slice (`BLOCK_KC x G x LANES` floats,
/// 64 KiB for four gates of 16 lanes) stays in L2 while every row tile of the group runs over it.
#[cfg_attr(debug_assertions, allow(dead_code))] // only optimised builds block (see `gemm`)
pub(crate) const BLOCK_KC: usize = 256;

/// [`gemm`] for weights larger than L2 (the GotoBLAS order): rows in groups of [`BLOCK_ROWS`]; within a
/// group the blocks outermost and `k` in slices of [`BLOCK_KC`], each row tile continuing its
/// accumulators from the previous slice (kept in a small buffer), the epilogue at the last slice. Each
/// weight panel then streams from memory once per group instead of once per row tile (a 2048-unit LSTM's
/// recurrent weights are 64 MiB: at a batch of 256 rows the snake order read them 43 times per step).
/// Successive groups sweep the blocks in alternating directions; returns whether the last sweep ran
/// backwards. Each element is the same sum over `k` in order as in [`gemm_snake`], bit for bit.
///
/// # Safety
/// As [`gemm`].
#[cfg_attr(debug_assertions, allow(dead_code))] // only optimised builds block (see `gemm`)
#[inline(always)]
unsafe fn gemm_blocked<S: Simd, const G: usize>(
    panels: &[f32],
    k_len: usize,
    m: usize,
    a: Rows<'_>,
    blocks: Range<usize>,
    reverse_first: bool,
    epilogue: &mut impl Epilogue<S, G>,
) -> bool {
    let panel = G * S::LANES;
    // A last slice of fewer than half a slice joins the one before.
    let kc = if k_len < 2 * BLOCK_KC { k_len.max(1) } else { BLOCK_KC };
    let slices = (k_len / kc).max(1);
    let slice = |q: usize| q * kc..if q + 1 == slices { k_len } else { (q + 1) * kc };
    // SAFETY: the caller's contract (S's instructions).
    let mut partial = [unsafe { zeros::<S, 1, 1, G>() }[0]; BLOCK_ROWS];
    let mut reverse = reverse_first;
    let mut last = reverse;
    for g0 in (0..m).step_by(BLOCK_ROWS) {
        let gm = BLOCK_ROWS.min(m - g0);
        for i in 0..blocks.len() {
            let bl = if reverse { blocks.end - 1 - i } else { blocks.start + i };
            let p = [panels.as_ptr().wrapping_add(bl * k_len * panel)];
            for q in 0..slices {
                let (ks, first, final_slice) = (slice(q), q == 0, q + 1 == slices);
                let mut r = 0;
                for mr in row_tiles(gm, tile_rows::<S, G>()) {
                    // SAFETY: rows g0 + r .. g0 + r + mr < m and block bl < blocks.end, within the
                    // caller's contract; `ks` within 0..k_len; partial rows r + i < gm <= BLOCK_ROWS.
                    unsafe {
                        macro_rules! run {
                            ($m:literal, $nb:literal) => {{
                                let rows: [*const f32; $m] = std::array::from_fn(|i| a.at(g0 + r + i));
                                let init: [[[S; G]; 1]; $m] =
                                    if first { zeros() } else { std::array::from_fn(|i| partial[r + i]) };
                                let acc = run_tile::<S, $m, 1, G>(rows, k_len, ks.clone(), p, init);
                                for (i, row) in acc.into_iter().enumerate() {
                                    if final_slice {
                                        epilogue.apply(g0 + r + i, bl, row[0]);
                                    } else {
                                        partial[r + i] = row;
                                    }
                                }
                            }};
                        }
                        dispatch_tile!(mr, 1, run);
                    }
                    r += mr;
                }
            }
        }
        last = reverse;
        reverse = !reverse;
    }
    last
}

/// The operands of [`gemm_tn`] (see there).
pub(crate) struct Tn<'a> {
    /// A's rows, in parts side by side: row `k` of A is `parts[0].rows[k]`'s `parts[0].width` floats,
    /// then `parts[1].rows[k]`'s, and so on (`m`, the rows of C, is the sum of the widths). Every part
    /// has the same number of rows, K.
    pub a: &'a [TnPart<'a>],
    /// B, K rows of `ldb` floats.
    pub b: *const f32,
    pub ldb: usize,
    /// The columns of B and C computed.
    pub cols: Range<usize>,
    /// C, `m` rows of `ldc` floats.
    pub c: *mut f32,
    pub ldc: usize,
    /// Column sums of B, if wanted.
    pub sums: Option<*mut f32>,
}

/// Columns of A in [`Tn`]: row `k` of them starts at `rows[k]` and holds `width` floats.
#[derive(Clone, Copy)]
pub(crate) struct TnPart<'a> {
    pub rows: &'a [*const f32],
    pub width: usize,
}

/// Rows of one K-block of [`gemm_tn`].
pub(crate) const KC: usize = 256;

/// `c[i][j] = Σ_k a[k][i] · b[k][j]` (`Aᵀ·B`, the weight gradients' product; zero when A has no rows)
/// for the rows `i < m` of C and the columns `cols`, `k` over the rows of A (row `k` of A gathered from its
/// parts, see [`Tn`]); row `k` of B at `b + k * ldb`, `c[i][j]` at `c + i * ldc + j`. If `sums` is given,
/// also `sums[j] = Σ_k b[k][j]` (the bias gradient). Each sum runs over `k` in order within blocks of
/// [`KC`] rows, the blocks' sums added in order, so no result depends on how a caller splits the columns
/// among threads.
///
/// Register tiles of 6 rows of C by two vectors of B's columns, `k` innermost; for each block of `KC`
/// rows, A is first packed into contiguous 6-row tiles (each row of A gathered once, zero past `m`) and
/// B into contiguous strips of two vectors (in one pass along its rows), then each strip stays in L1
/// while every row tile of A streams over it. Several parts in one call (the input and the previous `h`
/// of a step) stream B once for all of them.
///
/// # Safety
/// S's instructions available; every part's rows as many as the first part's (K), each `rows[k]` valid
/// for `width` reads; `b` valid for K rows of `ldb` floats covering `cols`, `c` for `m` rows of `ldc`
/// floats covering `cols`, `sums` (if any) covering `cols`; `cols` a range of whole vectors; `c` and
/// `sums` overlap neither A's rows nor `b`.
#[inline(always)]
pub(crate) unsafe fn gemm_tn<S: Simd>(p: Tn<'_>) {
    let Tn { a, b, ldb, cols, c, ldc, sums } = p;
    let lanes = S::LANES;
    debug_assert!(cols.start.is_multiple_of(lanes) && cols.end.is_multiple_of(lanes));
    let m: usize = a.iter().map(|p| p.width).sum();
    let k_rows = a.first().map_or(0, |p| p.rows.len());
    debug_assert!(a.iter().all(|p| p.rows.len() == k_rows));
    if k_rows == 0 {
        // No rows: every sum is empty, zero.
        // SAFETY: rows of C below `m` and `sums` cover `cols` (the caller's contract).
        unsafe {
            for i in 0..m {
                std::ptr::write_bytes(c.add(i * ldc + cols.start), 0, cols.len());
            }
            if let Some(sums) = sums {
                std::ptr::write_bytes(sums.add(cols.start), 0, cols.len());
            }
        }
        return;
    }
    let tiles = m.div_ceil(TN_MR);
    // One row of A gathered from its parts, zero from `m` to the end of its last tile.
    let mut row = vec![0.0f32; tiles * TN_MR];
    // A's rows of one K-block packed as [row tile][k][TN_MR]: the tiles then stream contiguous memory
    // instead of gathering a line per k.
    let mut packed = vec![0.0f32; tiles * TN_MR * KC.min(k_rows)];
    // B's columns `cols` of one K-block, in strips of two vectors (the last may be one), each strip
    // contiguous ([k][its width]) in a slot of `slot` floats: strip `s` covers the columns from
    // `cols.start + 2 LANES s`.
    let slot = 2 * lanes * KC.min(k_rows);
    let mut strips = vec![0.0f32; cols.len().div_ceil(2 * lanes) * slot];
    // Each strip's first column, its width in floats and its slot's offset in `strips`.
    let end = cols.end;
    let spans =
        || cols.clone().step_by(2 * lanes).enumerate().map(move |(s, j)| (j, (end - j).min(2 * lanes), s * slot));
    // SAFETY (whole body): every access is to rows of A below K at columns below their widths, rows of B
    // at columns in `cols`, rows of C below `m` at columns in `cols` (within the caller's contract), and
    // to `row` below tiles x TN_MR, `packed` below tiles x kn x TN_MR, `strips` below a slot per strip.
    unsafe {
        for (kb, k0) in (0..k_rows).step_by(KC).enumerate() {
            let kn = KC.min(k_rows - k0);
            for k in 0..kn {
                let mut at = 0;
                for part in a {
                    // Rows are gathered from anywhere (the tape, long written): fetch ahead.
                    if let Some(&ahead) = part.rows.get(k0 + k + TN_PREFETCH_ROWS) {
                        for line in (0..part.width).step_by(16) {
                            S::prefetch(ahead.wrapping_add(line));
                        }
                    }
                    std::ptr::copy_nonoverlapping(part.rows[k0 + k], row.as_mut_ptr().add(at), part.width);
                    at += part.width;
                }
                // Whole tiles of a fixed size: copies the compiler inlines.
                for t in 0..tiles {
                    let src = row.as_ptr().add(t * TN_MR).cast::<[f32; TN_MR]>();
                    let dst = packed.as_mut_ptr().add((t * kn + k) * TN_MR).cast::<[f32; TN_MR]>();
                    dst.write_unaligned(src.read_unaligned());
                }
            }
            // B's K-block packed into its strips in one pass along its rows: read in the order it lies
            // in memory (B is dZ, often larger than the caches; strip by strip, each row's lines
            // were fetched one pass at a time, 4 KiB apart), and each strip then contiguous (rows of B
            // 4 KiB apart would map a strip's rows to one L1 set).
            let bk = b.add(k0 * ldb);
            for k in 0..kn {
                let src = bk.add(k * ldb);
                for (j, w, at) in spans() {
                    for v in (0..w).step_by(lanes) {
                        S::load(src.add(j + v)).store(strips.as_mut_ptr().add(at + k * w + v));
                    }
                }
            }
            for (j, w, at) in spans() {
                let nv = w / lanes;
                let strip = strips.as_ptr().add(at);
                for t in 0..tiles {
                    let (i, mr) = (t * TN_MR, TN_MR.min(m - t * TN_MR));
                    let ap = packed.as_ptr().add(t * kn * TN_MR);
                    macro_rules! run {
                        ($nv:literal) => {{
                            let acc = tn_tile::<S, $nv>(ap, kn, strip, w);
                            for (r, row) in acc[..mr].iter().enumerate() {
                                for (v, x) in row.iter().enumerate() {
                                    let dst = c.add((i + r) * ldc + j + v * lanes);
                                    let x = if kb == 0 { *x } else { S::load(dst).add(*x) };
                                    x.store(dst);
                                }
                            }
                        }};
                    }
                    if nv == 2 {
                        run!(2)
                    } else {
                        run!(1)
                    }
                }
                if let Some(sums) = sums {
                    for v in 0..nv {
                        let mut t = S::splat(0.0);
                        for k in 0..kn {
                            t = t.add(S::load(strip.add(k * w + v * lanes)));
                        }
                        let dst = sums.add(j + v * lanes);
                        let t = if kb == 0 { t } else { S::load(dst).add(t) };
                        t.store(dst);
                    }
                }
            }
        }
    }
}

/// How many rows ahead [`gemm_tn`] fetches the rows of A it gathers.
const TN_PREFETCH_ROWS: usize = 8;

/// Rows of A per register tile of [`gemm_tn`].
const TN_MR: usize = 6;

/// One register tile of [`gemm_tn`]: `acc[r][v] = Σ_k ap[k][r] · b[k * ldb + v LANES ..]` over `kn` rows,
/// `ap` a packed tile of A (`TN_MR` floats per k).
///
/// # Safety
/// As [`gemm_tn`] for the tile's columns; `ap` valid for `kn * TN_MR` reads.
#[inline(always)]
unsafe fn tn_tile<S: Simd, const NV: usize>(ap: *const f32, kn: usize, b: *const f32, ldb: usize) -> [[S; NV]; TN_MR] {
    // SAFETY: the caller's contract covers every read.
    unsafe {
        let mut acc = [[s::<S>(0.0); NV]; TN_MR];
        for k in 0..kn {
            let bk = b.add(k * ldb);
            let bv: [S; NV] = std::array::from_fn(|v| S::load(bk.add(v * S::LANES)));
            let ar = ap.add(k * TN_MR);
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = S::splat(*ar.add(r));
                for v in 0..NV {
                    acc_r[v] = av.mul_add(bv[v], acc_r[v]);
                }
            }
        }
        acc
    }
}

/// [`act_lanes`] over a slice, in place; a tail shorter than `LANES` takes the scalar definition (which is
/// bitwise the same).
///
/// # Safety
/// S's instructions available.
#[inline(always)]
pub(crate) unsafe fn activate_slice<S: Simd>(a: Activation, xs: &mut [f32]) {
    let mut chunks = xs.chunks_exact_mut(S::LANES);
    for c in &mut chunks {
        // SAFETY: c holds exactly LANES floats; S's instructions are available (caller's contract).
        unsafe { S::act(a, S::load(c.as_ptr())).store(c.as_mut_ptr()) };
    }
    for v in chunks.into_remainder() {
        *v = a.apply_rounded(*v, Rounding::fused_if(S::FUSED));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{available, SimdJob};

    /// Deterministic values in [-1, 1).
    fn val(k: usize) -> f32 {
        ((k.wrapping_mul(2_654_435_761) >> 7) % 2000) as f32 / 1000.0 - 1.0
    }

    /// The snake and the blocked order of one GEMM, each into its own output (`[m][blocks][G][LANES]`).
    struct Orders<'a, const G: usize> {
        panels: &'a [f32],
        k_len: usize,
        a: &'a [f32],
        offsets: &'a [usize],
        blocks: Range<usize>,
        reverse_first: bool,
        snake: &'a mut [f32],
        blocked: &'a mut [f32],
    }

    unsafe impl<const G: usize> SimdJob for Orders<'_, G> {
        type Output = (bool, bool);
        #[inline(always)]
        unsafe fn run<S: Simd>(self) -> (bool, bool) {
            let m = self.offsets.len();
            let row = self.blocks.len() * G * S::LANES;
            let store = |out: &mut [f32]| Store {
                out: Rows::Strided { base: out.as_mut_ptr(), stride: row },
                first: self.blocks.start,
                limit: row,
                accumulate: false,
            };
            let a = Rows::Gathered { base: self.a.as_ptr(), offsets: self.offsets };
            let (pn, k, b, rev) = (self.panels, self.k_len, self.blocks.clone(), self.reverse_first);
            // SAFETY: the test sizes every buffer for m rows, k_len inputs and the blocks' panels.
            unsafe {
                (
                    gemm_snake::<S, G>(pn, k, m, a, b.clone(), rev, &mut store(self.snake)),
                    gemm_blocked::<S, G>(pn, k, m, a, b, rev, &mut store(self.blocked)),
                )
            }
        }
    }

    fn orders_agree<const G: usize>() -> usize {
        let mut checked = 0;
        for be in available() {
            let l = be.nb;
            // k_len: one slice, one and a half (joined), several with a remainder; m: one group, several.
            for (k_len, m, n_blocks, first) in [(37, 9, 3, 0), (300, 200, 4, 1), (700, 7, 2, 0), (1100, 400, 3, 2)] {
                let blocks = first..first + n_blocks;
                let panels: Vec<f32> = (0..blocks.end * k_len * G * l).map(|q| val(q + 1)).collect();
                let a: Vec<f32> = (0..(m + 2) * k_len).map(|q| val(q + 7)).collect();
                let offsets: Vec<usize> = (0..m).map(|r| (m + 1 - r) * k_len).collect();
                for reverse_first in [false, true] {
                    let n = m * n_blocks * G * l;
                    let (mut snake, mut blocked) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                    let job = Orders::<G> {
                        panels: &panels,
                        k_len,
                        a: &a,
                        offsets: &offsets,
                        blocks: blocks.clone(),
                        reverse_first,
                        snake: &mut snake,
                        blocked: &mut blocked,
                    };
                    be.run(job);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&blocked), bits(&snake), "{}: G {G}, k {k_len}, m {m}", be.name);
                    // And the sums are right: row r, block j, gate g, lane q.
                    let (r, j, g, q) = (m - 1, n_blocks - 1, G - 1, l - 1);
                    let e: f64 = (0..k_len)
                        .map(|k| {
                            let w = panels[(first + j) * k_len * G * l + panel_offset(G, l, k_len, k, g) + q];
                            f64::from(a[offsets[r] + k]) * f64::from(w)
                        })
                        .sum();
                    let got = snake[((r * n_blocks + j) * G + g) * l + q];
                    assert!((f64::from(got) - e).abs() < 1e-4 * k_len as f64, "{}: {got} vs {e}", be.name);
                    checked += 1;
                }
            }
        }
        checked
    }

    /// The blocked order (weights beyond L2) computes every element bit for bit as the snake order, for
    /// every gate count, slicing of `k` and grouping of rows.
    #[test]
    fn blocked_gemm_equals_snake_gemm() {
        let n = orders_agree::<1>() + orders_agree::<2>() + orders_agree::<3>() + orders_agree::<4>();
        assert!(n >= 32, "{n} cases");
    }

    #[test]
    fn row_tiles_cover_evenly() {
        for mr in 1..=6 {
            for m in 0..200 {
                let t: Vec<usize> = row_tiles(m, mr).collect();
                assert_eq!(t.iter().sum::<usize>(), m);
                assert_eq!(t.len(), m.div_ceil(mr));
                assert!(t.iter().all(|&n| (1..=mr).contains(&n)));
                assert!(t.iter().max().unwrap_or(&0) - t.iter().min().unwrap_or(&0) <= 1, "{m} rows, mr {mr}: {t:?}");
            }
        }
        assert_eq!(row_tiles(13, 6).collect::<Vec<_>>(), [5, 4, 4]);
    }
}
