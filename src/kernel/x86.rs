//! x86-64 backends: AVX2 + FMA (8 lanes, 3-row tiles) and AVX-512F (16 lanes, 6-row tiles), selected at
//! run time. Each is the generic kernel of [`super::simd`] instantiated for its register type inside a
//! `#[target_feature]` entry point.
//!
//! Rounding: the GEMMs and the Horner steps of sigmoid and tanh use fused multiply-adds (one rounding per
//! term), so these backends match the reference in [`Rounding::Fused`](crate::reference::Rounding) mode
//! bit for bit, and differ from the portable backend in the last bits.

use std::arch::x86_64::*;

use super::simd::{self, Simd};
use super::{Backend, CpuLevel, SimdJob};
use crate::cells::activation::Activation;

/// An AVX2 register of 8 floats.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(__m256);

/// An AVX-512 register of 16 floats.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(__m512);

// SAFETY: every method uses AVX/AVX2/FMA instructions only; the trait's contract (callers run on a CPU
// with AVX2 and FMA, pointers valid for 8 floats) makes each intrinsic call sound.
unsafe impl Simd for Avx2 {
    const LANES: usize = 8;
    // 16 ymm registers: 3 or more rows x 4 gates would spill, so such tiles go two gates at a time (6 rows
    // x 2 gates = 12 accumulators + 2 weight vectors + a broadcast); one row spans two blocks (8
    // accumulators), two rows one block.
    const MR: usize = 6;
    const PAIR_ROWS: usize = 1;
    const GATE_PAIRS: bool = true;
    const PREFETCH_TILE_ROWS: usize = 2;
    const FUSED: bool = true;
    type Mask = __m256;

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        unsafe { Avx2(_mm256_set1_ps(v)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { Avx2(_mm256_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { _mm256_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        unsafe { Avx2(_mm256_add_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        unsafe { Avx2(_mm256_sub_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        unsafe { Avx2(_mm256_mul_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        unsafe { Avx2(_mm256_div_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        unsafe { Avx2(_mm256_fmadd_ps(self.0, a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn lt(self, o: Self) -> __m256 {
        unsafe { _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    unsafe fn gt(self, o: Self) -> __m256 {
        unsafe { _mm256_cmp_ps::<_CMP_GT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    unsafe fn ge(self, o: Self) -> __m256 {
        unsafe { _mm256_cmp_ps::<_CMP_GE_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    unsafe fn is_nan(self) -> __m256 {
        unsafe { _mm256_cmp_ps::<_CMP_UNORD_Q>(self.0, self.0) }
    }
    #[inline(always)]
    unsafe fn or_mask(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_or_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn select(m: __m256, a: Self, b: Self) -> Self {
        unsafe { Avx2(_mm256_blendv_ps(b.0, a.0, m)) }
    }
    #[inline(always)]
    unsafe fn min_first(a: Self, b: Self) -> Self {
        // `minps a, b` returns `a < b ? a : b`, exactly the trait's definition.
        unsafe { Avx2(_mm256_min_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn max_first(a: Self, b: Self) -> Self {
        // `maxps a, b` returns `a > b ? a : b`.
        unsafe { Avx2(_mm256_max_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        unsafe { Avx2(_mm256_and_ps(self.0, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff)))) }
    }
    #[inline(always)]
    unsafe fn pow2_minus1(n: Self) -> Self {
        unsafe {
            let e = _mm256_add_epi32(_mm256_cvttps_epi32(n.0), _mm256_set1_epi32(126));
            Avx2(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(e)))
        }
    }
    #[inline(always)]
    unsafe fn act(a: Activation, x: Self) -> Self {
        // Optimised builds inline the activation into the kernel; unoptimised ones call a
        // `#[target_feature]` function so each kernel's stack frame stays small.
        // SAFETY: the trait's contract: AVX2 and FMA are available.
        unsafe {
            if cfg!(debug_assertions) {
                act_avx2(a, x)
            } else {
                simd::act_lanes(a, x)
            }
        }
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        // SAFETY: a prefetch is a hint and never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
    }
    #[inline(always)]
    unsafe fn frexp(x: Self) -> (Self, Self) {
        unsafe {
            let bits = _mm256_castps_si256(x.0);
            let e = _mm256_sub_epi32(
                _mm256_and_si256(_mm256_srli_epi32::<23>(bits), _mm256_set1_epi32(0xff)),
                _mm256_set1_epi32(126),
            );
            let m =
                _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)), _mm256_set1_epi32(0x3f00_0000));
            (Avx2(_mm256_cvtepi32_ps(e)), Avx2(_mm256_castsi256_ps(m)))
        }
    }
}

// SAFETY: every method uses AVX-512F instructions only; the trait's contract (callers run on a CPU with
// AVX-512F, pointers valid for 16 floats) makes each intrinsic call sound.
unsafe impl Simd for Avx512 {
    const LANES: usize = 16;
    const MR: usize = 6;
    const PAIR_ROWS: usize = 3;
    const GATE_PAIRS: bool = false;
    const PREFETCH_TILE_ROWS: usize = usize::MAX;
    const FUSED: bool = true;
    type Mask = __mmask16;

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        unsafe { Avx512(_mm512_set1_ps(v)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { Avx512(_mm512_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { _mm512_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        unsafe { Avx512(_mm512_add_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        unsafe { Avx512(_mm512_sub_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        unsafe { Avx512(_mm512_mul_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        unsafe { Avx512(_mm512_div_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        unsafe { Avx512(_mm512_fmadd_ps(self.0, a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn lt(self, o: Self) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    unsafe fn gt(self, o: Self) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_GT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    unsafe fn ge(self, o: Self) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_GE_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    unsafe fn is_nan(self) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(self.0, self.0) }
    }
    #[inline(always)]
    unsafe fn or_mask(a: __mmask16, b: __mmask16) -> __mmask16 {
        a | b
    }
    #[inline(always)]
    unsafe fn select(m: __mmask16, a: Self, b: Self) -> Self {
        unsafe { Avx512(_mm512_mask_blend_ps(m, b.0, a.0)) }
    }
    #[inline(always)]
    unsafe fn min_first(a: Self, b: Self) -> Self {
        // `vminps a, b` returns `a < b ? a : b`, exactly the trait's definition.
        unsafe { Avx512(_mm512_min_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn max_first(a: Self, b: Self) -> Self {
        // `vmaxps a, b` returns `a > b ? a : b`.
        unsafe { Avx512(_mm512_max_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        unsafe {
            let bits = _mm512_and_si512(_mm512_castps_si512(self.0), _mm512_set1_epi32(0x7fff_ffff));
            Avx512(_mm512_castsi512_ps(bits))
        }
    }
    #[inline(always)]
    unsafe fn pow2_minus1(n: Self) -> Self {
        unsafe {
            let e = _mm512_add_epi32(_mm512_cvttps_epi32(n.0), _mm512_set1_epi32(126));
            Avx512(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(e)))
        }
    }
    #[inline(always)]
    unsafe fn act(a: Activation, x: Self) -> Self {
        // Optimised builds inline the activation into the kernel; unoptimised ones call a
        // `#[target_feature]` function so each kernel's stack frame stays small.
        // SAFETY: the trait's contract: AVX-512F is available.
        unsafe {
            if cfg!(debug_assertions) {
                act_avx512(a, x)
            } else {
                simd::act_lanes(a, x)
            }
        }
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        // SAFETY: a prefetch is a hint and never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
    }
    #[inline(always)]
    unsafe fn frexp(x: Self) -> (Self, Self) {
        unsafe {
            let bits = _mm512_castps_si512(x.0);
            let e = _mm512_sub_epi32(
                _mm512_and_si512(_mm512_srli_epi32::<23>(bits), _mm512_set1_epi32(0xff)),
                _mm512_set1_epi32(126),
            );
            let m =
                _mm512_or_si512(_mm512_and_si512(bits, _mm512_set1_epi32(0x007f_ffff)), _mm512_set1_epi32(0x3f00_0000));
            (Avx512(_mm512_cvtepi32_ps(e)), Avx512(_mm512_castsi512_ps(m)))
        }
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn act_avx2(a: Activation, x: Avx2) -> Avx2 {
    // SAFETY: the features are enabled on this function.
    unsafe { simd::act_lanes(a, x) }
}

/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn act_avx512(a: Activation, x: Avx512) -> Avx512 {
    // SAFETY: the features are enabled on this function.
    unsafe { simd::act_lanes(a, x) }
}

macro_rules! entry_points {
    ($ty:ty, $features:literal, $step:ident, $act:ident) => {
        fn $act(a: Activation, xs: &mut [f32]) {
            /// # Safety
            /// The CPU must support the backend's features.
            #[target_feature(enable = $features)]
            unsafe fn inner(a: Activation, xs: &mut [f32]) {
                // SAFETY: the features are enabled on this function.
                unsafe { simd::activate_slice::<$ty>(a, xs) }
            }
            // SAFETY: this backend is only handed out after run-time detection of its features.
            unsafe { inner(a, xs) }
        }

        /// Runs `job` with these instructions (see [`Backend::run`]).
        ///
        /// # Safety
        /// The CPU must support the backend's features.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $step<J: SimdJob>(job: J) -> J::Output {
            // SAFETY: the features are enabled on this function.
            unsafe { job.run::<$ty>() }
        }
    };
}

entry_points!(Avx2, "avx2,fma", run_avx2, activate_avx2);
entry_points!(Avx512, "avx512f", run_avx512, activate_avx512);

/// AVX2 + FMA kernels. Only reachable through [`super::backend`], which checks the CPU first.
pub(crate) static AVX2_BACKEND: Backend = Backend {
    name: "avx2",
    level: CpuLevel::Avx2,
    fused_multiply_add: <Avx2 as Simd>::FUSED,
    nb: <Avx2 as Simd>::LANES,
    activate: activate_avx2,
};

/// AVX-512F kernels. Only reachable through [`super::backend`], which checks the CPU first.
pub(crate) static AVX512_BACKEND: Backend = Backend {
    name: "avx512",
    level: CpuLevel::Avx512,
    fused_multiply_add: <Avx512 as Simd>::FUSED,
    nb: <Avx512 as Simd>::LANES,
    activate: activate_avx512,
};

/// `src [lanes][k_len]` transposed into `dst[k * stride + lane]` for the whole 8x8 tiles (`lanes / 8 * 8`
/// lanes, `k_len / 8 * 8` rows of `k`; the caller copies the edges). Each tile is 8 loads, three rounds of
/// register shuffles and 8 stores. The tiles of one 8-row step of `k` go lane tile by lane tile, so the
/// panel row segments of a step (a whole cache line for 16 lanes) are written together, and the source
/// rows stream forward (measured against tiles of 64 rows of `k` per lane tile: 1.5x on 1024-unit
/// weights).
///
/// # Safety
/// The CPU has AVX.
///
/// # Panics
/// If `src` holds fewer than `lanes * k_len` floats, or `dst` fewer than `(k_len - 1) * stride + lanes`
/// (when `k_len > 0`), or `stride < lanes`.
#[target_feature(enable = "avx")]
pub(crate) unsafe fn transpose_tiles(src: &[f32], lanes: usize, k_len: usize, dst: &mut [f32], stride: usize) {
    const T: usize = 8;
    assert!(stride >= lanes && src.len() >= lanes * k_len && (k_len == 0 || dst.len() >= (k_len - 1) * stride + lanes));
    let (l8, k8) = (lanes / T * T, k_len / T * T);
    for kk in (0..k8).step_by(T) {
        for l0 in (0..l8).step_by(T) {
            // SAFETY: rows l0..l0 + 8 <= lanes of src, columns kk..kk + 8 <= k_len; panel rows
            // kk..kk + 8 <= k_len at lanes l0..l0 + 8 <= lanes; AVX available (this function's contract).
            unsafe {
                transpose8(src.as_ptr().add(l0 * k_len + kk), k_len, dst.as_mut_ptr().add(kk * stride + l0), stride)
            }
        }
    }
}

/// One 8x8 tile: `dst[j * ds + i] = src[i * ss + j]`.
///
/// # Safety
/// The CPU has AVX; `src + i * ss` and `dst + i * ds` valid for 8 floats, `i < 8`.
#[inline]
#[target_feature(enable = "avx")]
unsafe fn transpose8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    // SAFETY: the pointers as the contract says; the shuffles touch no memory.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
        // Pairs of rows interleaved, then pairs of pairs: each 128-bit half holds a 4x4 sub-tile's column.
        let a = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let b = [
            _mm256_shuffle_ps::<0x44>(a[0], a[2]),
            _mm256_shuffle_ps::<0xEE>(a[0], a[2]),
            _mm256_shuffle_ps::<0x44>(a[1], a[3]),
            _mm256_shuffle_ps::<0xEE>(a[1], a[3]),
            _mm256_shuffle_ps::<0x44>(a[4], a[6]),
            _mm256_shuffle_ps::<0xEE>(a[4], a[6]),
            _mm256_shuffle_ps::<0x44>(a[5], a[7]),
            _mm256_shuffle_ps::<0xEE>(a[5], a[7]),
        ];
        // Low halves of rows 0-3 with low halves of rows 4-7 give columns 0-3, high halves columns 4-7.
        for j in 0..4 {
            _mm256_storeu_ps(dst.add(j * ds), _mm256_permute2f128_ps::<0x20>(b[j], b[j + 4]));
            _mm256_storeu_ps(dst.add((j + 4) * ds), _mm256_permute2f128_ps::<0x31>(b[j], b[j + 4]));
        }
    }
}

/// Whether the CPU runs `level`'s instructions.
pub(crate) fn supports(level: CpuLevel) -> bool {
    match level {
        CpuLevel::Portable => true,
        CpuLevel::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        CpuLevel::Avx512 => is_x86_feature_detected!("avx512f"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_match_scalar_bitwise() {
        if supports(CpuLevel::Avx2) {
            // SAFETY: AVX2 and FMA detected just above.
            unsafe { avx2_activations() };
        } else {
            eprintln!("SKIPPED: avx2 activations (CPU lacks AVX2/FMA)");
        }
        if supports(CpuLevel::Avx512) {
            // SAFETY: AVX-512F detected just above.
            unsafe { avx512_activations() };
        } else {
            eprintln!("SKIPPED: avx512 activations (CPU lacks AVX-512F)");
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_activations() {
        super::super::tests::activations_match_scalar::<Avx2>();
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn avx512_activations() {
        super::super::tests::activations_match_scalar::<Avx512>();
    }
}
