//! Elementary functions with a fixed sequence of IEEE operations, so that the scalar form here (used by the
//! reference) and the lane-wise SIMD forms in the kernels give bitwise the same results.
//!
//! `sigmoid` and `tanh` run in every cell step (five per hidden unit), so they take the cheapest form
//! with a stated error: one odd rational function, `tanh(x) ≈ x P(x²) / Q(x²)` with `P` of degree 5 and
//! `Q` of degree 3, clamped, and `sigmoid(x) = 1/2 + tanh(x/2)/2` with the halving folded exactly into
//! the coefficients. The coefficients are minimax for relative error on `[0, 9]`, then tuned for float32
//! evaluation by `tools/activations/fit_tanh.py`, which also checks every float32 input. Errors against
//! the exact function, over all float32 inputs (re-checked by the ignored test `every_float`): `tanh` at
//! most 3.9e-7 absolute and 6.5 ulp; `sigmoid` at most 2.2e-7 absolute (so no relative accuracy for
//! results far below 1e-7), 3.5 ulp for `x >= 0`. With fused Horner steps (the AVX2 and AVX-512
//! backends) the errors are smaller: 3.4e-7 and 5.7 ulp, 2.0e-7 and 3.3 ulp.
//! `tanh(±inf) = ±1`, `sigmoid(-inf) = 0`, `sigmoid(inf) = 1`, NaN stays NaN. ONNX Runtime (MLAS) and
//! Eigen (TensorFlow) evaluate these two functions as clamped rational functions too.
//!
//! `exp` (within 2 ulp for normal results) and `ln` (within 2 ulp) serve the rarer activations (`elu`,
//! `softplus`): the classical Cody–Waite range reduction with minimax polynomials (coefficients as
//! published with the Cephes single-precision library). All errors are tested in `tests` below.
//!
//! Rules that keep scalar and SIMD forms identical: only `+ - * /`, comparisons, selects and exact bit
//! manipulation, in the same order; a fused multiply-add only in the Horner steps of `sigmoid` and `tanh`,
//! and only in [`Rounding::Fused`] (the AVX2 and AVX-512 backends; the portable one rounds separately).

// The coefficients are kept digit for digit as published.
#![allow(clippy::excessive_precision)]

use crate::reference::Rounding;

/// `log2(e)`.
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
/// High part of `ln 2` (few mantissa bits, so `n * LN2_HI` is exact).
pub(crate) const LN2_HI: f32 = 0.693_359_4;
/// Low part of `ln 2`: `LN2_HI + LN2_LO ≈ ln 2`.
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5 * 2^23`: adding and subtracting it rounds to the nearest integer for `|t| < 2^22`.
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;
/// Inputs of `exp` are clamped to `[EXP_LO, EXP_HI]`.
pub(crate) const EXP_LO: f32 = -87.336_54;
/// Upper clamp of `exp` input (the result stays finite).
pub(crate) const EXP_HI: f32 = 88.722_83;
/// Polynomial of `exp(r) ≈ 1 + r + r² p(r)` on `|r| <= ln2 / 2`.
pub(crate) const EXP_P: [f32; 6] =
    [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];
/// The input of the rational tanh is clamped to `[-TANH_CLAMP, TANH_CLAMP]`; the rational exceeds 1
/// there, so the clamped output is exactly `±1`.
pub(crate) const TANH_CLAMP: f32 = 9.5;
/// Numerator of the rational tanh, in powers of `x²` (from `tools/activations/fit_tanh.py`).
pub(crate) const TANH_P: [f32; 6] =
    [0.999_999_94, 0.129_297_4, 0.002_931_603_5, 9.356_99e-6, -1.301_373_7e-8, 1.876_445_4e-11];
/// Denominator of the rational tanh, in powers of `x²`.
pub(crate) const TANH_Q: [f32; 4] = [1.0, 0.462_630_54, 0.023_808_815, 2.295_355_5e-4];
/// [`TANH_P`] scaled for `sigmoid(x) - 1/2 = tanh(x/2)/2`: coefficient `k` divided by `4^(k+1)`, exact.
pub(crate) const SIGMOID_P: [f32; 6] =
    [0.249_999_99, 0.008_081_088, 4.580_630_4e-5, 3.655_074e-8, -1.270_872_7e-11, 4.581_165_4e-15];
/// [`TANH_Q`] scaled for the sigmoid: coefficient `k` divided by `4^k`, exact.
pub(crate) const SIGMOID_Q: [f32; 4] = [1.0, 0.115_657_635, 0.001_488_050_9, 3.586_493e-6];
/// Input clamp of the sigmoid (`2 TANH_CLAMP`).
pub(crate) const SIGMOID_CLAMP: f32 = 19.0;

/// `sqrt(1/2)`: mantissa split point of `ln`.
pub(crate) const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `ln(1 + m) ≈ m - m²/2 + m³ l(m)` on `sqrt(1/2) - 1 <= m < sqrt(2) - 1`.
pub(crate) const LN_P: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_4e-1,
    -2.499_999_4e-1,
    3.333_333_1e-1,
];

/// `e^x`. NaN gives NaN; the input is clamped so the result is finite (0 below about `-87.3`).
#[inline]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_LO, EXP_HI); // NaN stays NaN
    let n = (x * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = EXP_P[0];
    for &c in &EXP_P[1..] {
        p = p * r + c;
    }
    let y = ((p * (r * r)) + r) + 1.0;
    // 2^n as 2^(n-1) * 2 keeps the exponent field in range for n = 128.
    let ni = n as i32;
    let scale = f32::from_bits(((ni + 126) as u32) << 23);
    (y * scale) * 2.0
}

/// `v` clamped to `[-bound, bound]` by comparisons (NaN passes through).
#[inline(always)]
fn clamp_sym(v: f32, bound: f32) -> f32 {
    let v = if v < -bound { -bound } else { v };
    if v > bound {
        bound
    } else {
        v
    }
}

/// `a P(a²) / Q(a²)` for the clamped input `a`, clamped to `[-out, out]`; each Horner step
/// `acc * z + c` rounded as `rounding` says.
#[inline(always)]
fn odd_rational(x: f32, clamp: f32, p: &[f32; 6], q: &[f32; 4], out: f32, rounding: Rounding) -> f32 {
    let a = clamp_sym(x, clamp);
    let z = a * a;
    let mut num = p[5];
    for &c in p[..5].iter().rev() {
        num = rounding.mul_add(num, z, c);
    }
    let mut den = q[3];
    for &c in q[..3].iter().rev() {
        den = rounding.mul_add(den, z, c);
    }
    clamp_sym((a * num) / den, out)
}

/// `1 / (1 + e^-x)` (see the module docs for the error), with separate roundings.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    sigmoid_rounded(x, Rounding::Separate)
}

/// `tanh(x)` (see the module docs for the error), with separate roundings.
#[inline]
pub fn tanh(x: f32) -> f32 {
    tanh_rounded(x, Rounding::Separate)
}

/// [`sigmoid`] with its Horner steps rounded as `rounding` says (fused on the AVX2 and AVX-512 backends).
#[inline]
pub fn sigmoid_rounded(x: f32, rounding: Rounding) -> f32 {
    odd_rational(x, SIGMOID_CLAMP, &SIGMOID_P, &SIGMOID_Q, 0.5, rounding) + 0.5
}

/// [`tanh`] with its Horner steps rounded as `rounding` says (fused on the AVX2 and AVX-512 backends).
#[inline]
pub fn tanh_rounded(x: f32, rounding: Rounding) -> f32 {
    odd_rational(x, TANH_CLAMP, &TANH_P, &TANH_Q, 1.0, rounding)
}

/// `ln(x)` for finite `x > 0` (other inputs give unspecified finite or NaN values; callers guard).
#[inline]
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = (((bits >> 23) & 0xff) as i32 - 126) as f32;
    let m0 = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    let m = if m0 < SQRT_HALF {
        e -= 1.0;
        (m0 + m0) - 1.0
    } else {
        m0 - 1.0
    };
    let z = m * m;
    let mut p = LN_P[0];
    for &c in &LN_P[1..] {
        p = p * m + c;
    }
    let y = ((p * m) * z + e * LN2_LO) - 0.5 * z;
    (m + y) + e * LN2_HI
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, e: f64) -> f64 {
        let e32 = e as f32;
        let ulp = (f32::from_bits(e32.abs().to_bits() + 1) - e32.abs()) as f64;
        (a as f64 - e).abs() / ulp
    }

    #[test]
    fn exp_within_2_ulp() {
        for x in (-200_000..=200_000).map(|i| i as f32 * 4.5e-4) {
            let e = (x as f64).exp();
            if e > 1e-37 && e < 3e38 {
                assert!(ulps(exp(x), e) <= 2.0, "exp({x}) = {} vs {e}", exp(x));
            }
        }
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(1000.0).is_finite() && exp(-1000.0) >= 0.0);
    }

    /// Every `stride`-th float32 in `[0, hi]` (by bit pattern), then the points where the exhaustive
    /// checks found the largest errors.
    fn sampled(hi: f32, stride: usize) -> impl Iterator<Item = f32> {
        (0..=hi.to_bits()).step_by(stride).map(f32::from_bits).chain(WORST)
    }
    const WORST: [f32; 3] = [7.542_675, 17.613_348, 8.258_604];
    const ROUNDINGS: [Rounding; 2] = [Rounding::Separate, Rounding::Fused];

    /// Largest (absolute, ulp) error of tanh over the sampled inputs and their negations; panics past the
    /// stated bounds.
    fn tanh_errors(stride: usize, rounding: Rounding) -> (f64, f64) {
        let mut worst = (0.0f64, 0.0f64);
        for x in sampled(2.0 * TANH_CLAMP, stride) {
            let t = (x as f64).tanh();
            for (x, t) in [(x, t), (-x, -t)] {
                let y = tanh_rounded(x, rounding);
                let (ab, ul) = ((y as f64 - t).abs(), ulps(y, t));
                assert!(ab <= 3.9e-7 && ul <= 6.5, "tanh({x}) = {y} vs {t} ({rounding:?})");
                worst = (worst.0.max(ab), worst.1.max(ul));
            }
        }
        worst
    }

    /// Largest (absolute, ulp for x >= 0) error of sigmoid over the sampled inputs and their negations.
    fn sigmoid_errors(stride: usize, rounding: Rounding) -> (f64, f64) {
        let mut worst = (0.0f64, 0.0f64);
        for x in sampled(4.0 * TANH_CLAMP, stride) {
            for x in [x, -x] {
                let s = 1.0 / (1.0 + (-(x as f64)).exp());
                let y = sigmoid_rounded(x, rounding);
                let (ab, ul) = ((y as f64 - s).abs(), if x < 0.0 { 0.0 } else { ulps(y, s) });
                assert!(ab <= 2.2e-7 && ul <= 3.5, "sigmoid({x}) = {y} vs {s} ({rounding:?})");
                worst = (worst.0.max(ab), worst.1.max(ul));
            }
        }
        worst
    }

    #[test]
    fn tanh_error_as_stated() {
        for rounding in ROUNDINGS {
            tanh_errors(127, rounding);
            let t = |x| tanh_rounded(x, rounding);
            for (x, want) in [(f32::INFINITY, 1.0), (-f32::INFINITY, -1.0), (1e30, 1.0), (TANH_CLAMP, 1.0), (0.0, 0.0)]
            {
                assert_eq!(t(x), want);
            }
            assert!(t(f32::NAN).is_nan() && t(-0.0).is_sign_negative());
        }
    }

    #[test]
    fn sigmoid_error_as_stated() {
        for rounding in ROUNDINGS {
            sigmoid_errors(127, rounding);
            let s = |x| sigmoid_rounded(x, rounding);
            for (x, want) in [(f32::INFINITY, 1.0), (-f32::INFINITY, 0.0), (1e30, 1.0), (-1e30, 0.0), (0.0, 0.5)] {
                assert_eq!(s(x), want);
            }
            assert!(s(f32::NAN).is_nan());
        }
    }

    /// Every float32 input, both roundings (about three minutes in release):
    /// `cargo test --release --lib -- --ignored every_float`.
    #[test]
    #[ignore]
    fn every_float() {
        for rounding in ROUNDINGS {
            let (t_abs, t_ulp) = tanh_errors(1, rounding);
            let (s_abs, s_ulp) = sigmoid_errors(1, rounding);
            println!(
                "{rounding:?}: tanh {t_abs:.3e} abs, {t_ulp:.2} ulp; sigmoid {s_abs:.3e} abs, {s_ulp:.2} ulp (x >= 0)"
            );
        }
    }

    #[test]
    fn sigmoid_coefficients_are_scaled_tanh_coefficients() {
        for k in 0..6 {
            assert_eq!(SIGMOID_P[k], TANH_P[k] / 4f32.powi(k as i32 + 1));
        }
        for k in 0..4 {
            assert_eq!(SIGMOID_Q[k], TANH_Q[k] / 4f32.powi(k as i32));
        }
        assert_eq!(SIGMOID_CLAMP, 2.0 * TANH_CLAMP);
    }

    #[test]
    fn ln_within_2_ulp() {
        for i in 1..200_000 {
            let x = i as f32 * 1.7e-3;
            assert!(ulps(ln(x), (x as f64).ln()) <= 2.0, "ln({x})");
        }
        for x in [1.0f32, 2.0, 1e-30, 1e30, f32::MAX, 1.5e-38] {
            assert!(ulps(ln(x), (x as f64).ln()) <= 2.0, "ln({x})");
        }
    }
}
