//! The portable backend: the generic kernels over `wide::f32x8`, with whatever instructions the crate was
//! compiled for (SSE2 on the default x86-64 target, NEON on aarch64). It is the fallback on every CPU and
//! the only backend on other architectures.
//!
//! Rounding: this backend never fuses a multiply and an add (`wide`'s `mul_add` fuses on some targets and
//! not on others), so it performs exactly the operations of the scalar reference in
//! [`Rounding::Separate`](crate::reference::Rounding) mode and agrees with it bit for bit on every platform.

use wide::bytemuck::cast;
use wide::{f32x8, i32x8};

use super::simd::{self, Simd};
use super::{Backend, CpuLevel};

/// The portable backend's vector type.
pub(crate) type Lanes = f32x8;

/// The portable backend's function table.
pub(crate) static BACKEND: Backend = Backend {
    name: "portable",
    level: CpuLevel::Portable,
    fused_multiply_add: <f32x8 as Simd>::FUSED,
    nb: <f32x8 as Simd>::LANES,
    activate,
};

fn activate(a: crate::cells::activation::Activation, xs: &mut [f32]) {
    // SAFETY: f32x8 runs on every CPU.
    unsafe { simd::activate_slice::<f32x8>(a, xs) }
}

// SAFETY: `wide` selects instructions the compile target has, so every method is safe to call on any CPU
// this binary runs on; loads and stores go through the caller-guaranteed pointers.
unsafe impl Simd for f32x8 {
    const LANES: usize = 8;
    const MR: usize = 2;
    // Two f32x8 are four SSE registers: a two-block tile would spill.
    const PAIR_ROWS: usize = 0;
    const GATE_PAIRS: bool = false;
    const PREFETCH_TILE_ROWS: usize = 2;
    const FUSED: bool = false;
    type Mask = f32x8;

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        f32x8::splat(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 8 readable floats at p.
        unsafe { f32x8::from(std::ptr::read_unaligned(p as *const [f32; 8])) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees 8 writable floats at p.
        unsafe { std::ptr::write_unaligned(p as *mut [f32; 8], self.to_array()) }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        self - o
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        self * o
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        self / o
    }
    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        self * a + b
    }
    #[inline(always)]
    unsafe fn lt(self, o: Self) -> Self {
        self.simd_lt(o)
    }
    #[inline(always)]
    unsafe fn gt(self, o: Self) -> Self {
        self.simd_gt(o)
    }
    #[inline(always)]
    unsafe fn ge(self, o: Self) -> Self {
        self.simd_ge(o)
    }
    #[inline(always)]
    unsafe fn is_nan(self) -> Self {
        f32x8::is_nan(self)
    }
    #[inline(always)]
    unsafe fn or_mask(a: Self, b: Self) -> Self {
        a | b
    }
    #[inline(always)]
    unsafe fn select(m: Self, a: Self, b: Self) -> Self {
        m.select(a, b)
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        f32x8::abs(self)
    }
    #[inline(always)]
    unsafe fn pow2_minus1(n: Self) -> Self {
        cast((n.fast_trunc_int() + i32x8::splat(126)) << 23)
    }
    #[inline(always)]
    unsafe fn act(a: crate::cells::activation::Activation, x: Self) -> Self {
        // SAFETY: f32x8 runs on every CPU.
        unsafe { simd::act_lanes(a, x) }
    }
    #[inline(always)]
    unsafe fn frexp(x: Self) -> (Self, Self) {
        let bits: i32x8 = cast(x);
        let e = f32x8::from_i32x8(((bits >> 23) & i32x8::splat(0xff)) - i32x8::splat(126));
        let m: f32x8 = cast((bits & i32x8::splat(0x007f_ffff)) | i32x8::splat(0x3f00_0000));
        (e, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cells::activation::Activation;

    /// Lane-wise activations agree with the scalar definitions bit for bit.
    #[test]
    fn activations_match_scalar_bitwise() {
        super::super::tests::activations_match_scalar::<f32x8>();
        let _ = Activation::Tanh;
    }
}
