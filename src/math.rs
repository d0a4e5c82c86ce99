//! Elementary functions with a fixed sequence of IEEE operations, so that the scalar form here (used by the
//! reference) and the lane-wise SIMD forms in the kernels give bitwise the same results.
//!
//! Accuracy against the correctly rounded value (tested in `tests`): `exp` within 2 ulp for normal
//! results, `sigmoid` within 3e-7 absolute and 4 ulp relative, `tanh` within 3e-7 absolute and 4 ulp
//! relative, `ln` within 2 ulp. The algorithms are the classical Cody–Waite range reduction with minimax
//! polynomials (coefficients as published with the Cephes single-precision library).
//!
//! Rules that keep scalar and SIMD forms identical: only `+ - * /`, comparisons, selects and exact bit
//! manipulation; never a fused multiply-add; the same operation order.

// The coefficients are kept digit for digit as published.
#![allow(clippy::excessive_precision)]

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
/// Below this `|x|`, tanh uses its odd polynomial.
pub(crate) const TANH_SMALL: f32 = 0.625;
/// `tanh(x) ≈ x + x³ q(x²)` on `|x| < 0.625`.
pub(crate) const TANH_Q: [f32; 5] = [-5.704_988_7e-3, 2.063_908_9e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328_2e-1];
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

/// `1 / (1 + e^-x)`.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `tanh(x)`.
#[inline]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    if a < TANH_SMALL {
        let z = x * x;
        let mut q = TANH_Q[0];
        for &c in &TANH_Q[1..] {
            q = q * z + c;
        }
        ((q * z) * x) + x
    } else {
        let r = 1.0 - 2.0 / (exp(a + a) + 1.0);
        f32::from_bits(r.to_bits() | (x.to_bits() & 0x8000_0000))
    }
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

    fn grid() -> impl Iterator<Item = f32> {
        (-200_000..=200_000).map(|i| i as f32 * 4.5e-4)
    }

    #[test]
    fn exp_within_2_ulp() {
        for x in grid() {
            let e = (x as f64).exp();
            if e > 1e-37 && e < 3e38 {
                assert!(ulps(exp(x), e) <= 2.0, "exp({x}) = {} vs {e}", exp(x));
            }
        }
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(1000.0).is_finite() && exp(-1000.0) >= 0.0);
    }

    #[test]
    fn sigmoid_and_tanh_accuracy() {
        for x in grid().chain([1e-20, -3e-8, 30.0, -30.0, 1e30, -1e30]) {
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            let t = (x as f64).tanh();
            let (gs, gt) = (sigmoid(x), tanh(x));
            assert!((gs as f64 - s).abs() <= 3e-7 && (ulps(gs, s) <= 4.0 || s < 1e-30), "sigmoid({x}) = {gs} vs {s}");
            assert!((gt as f64 - t).abs() <= 3e-7 && ulps(gt, t) <= 4.0, "tanh({x}) = {gt} vs {t}");
        }
        assert!(tanh(f32::NAN).is_nan() && sigmoid(f32::NAN).is_nan());
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
