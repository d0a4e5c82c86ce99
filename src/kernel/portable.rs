//! The portable backend: `wide::f32x8`, whatever instructions the crate was compiled for (SSE2 without FMA
//! on the default x86-64 target, NEON on aarch64). It is the fallback on every CPU.
//!
//! Rounding: this backend never fuses a multiply and an add (`wide`'s `mul_add` fuses on some targets and
//! not on others), so it performs exactly the operations of the scalar reference in the same order and
//! agrees with it bit for bit on every platform.

use wide::bytemuck::cast;
use wide::{f32x8, i32x8};

use super::Backend;
use crate::activation::Activation;
use crate::cell::CellSpec;
use crate::math;
use crate::weights::PackedLstm;

const NB: usize = 8;

/// The portable backend's function table.
pub(crate) static BACKEND: Backend = Backend { name: "portable", fused_multiply_add: false, nb: NB, project, step };

#[inline(always)]
fn load(s: &[f32]) -> f32x8 {
    f32x8::from(<[f32; NB]>::try_from(&s[..NB]).expect("block of 8"))
}

#[inline(always)]
fn store(v: f32x8, d: &mut [f32]) {
    d[..NB].copy_from_slice(&v.to_array());
}

/// [`math::exp`] lane-wise, the same operations in the same order.
#[inline(always)]
fn exp(x: f32x8) -> f32x8 {
    let lo = f32x8::splat(math::EXP_LO);
    let hi = f32x8::splat(math::EXP_HI);
    let x = x.simd_lt(lo).select(lo, x);
    let x = x.simd_gt(hi).select(hi, x);
    let magic = f32x8::splat(math::ROUND_MAGIC);
    let n = (x * f32x8::splat(math::LOG2E) + magic) - magic;
    let r = (x - n * f32x8::splat(math::LN2_HI)) - n * f32x8::splat(math::LN2_LO);
    let mut p = f32x8::splat(math::EXP_P[0]);
    for &c in &math::EXP_P[1..] {
        p = p * r + f32x8::splat(c);
    }
    let y = ((p * (r * r)) + r) + f32x8::splat(1.0);
    let bits: i32x8 = (n.fast_trunc_int() + i32x8::splat(126)) << 23;
    let scale: f32x8 = cast(bits);
    (y * scale) * f32x8::splat(2.0)
}

/// [`math::tanh`] lane-wise: both branches, selected per lane.
#[inline(always)]
fn tanh(x: f32x8) -> f32x8 {
    let a = x.abs();
    let z = x * x;
    let mut q = f32x8::splat(math::TANH_Q[0]);
    for &c in &math::TANH_Q[1..] {
        q = q * z + f32x8::splat(c);
    }
    let small = ((q * z) * x) + x;
    let one = f32x8::splat(1.0);
    let r = one - f32x8::splat(2.0) / (exp(a + a) + one);
    let sign = x & f32x8::splat(-0.0);
    let large = r | sign;
    a.simd_lt(f32x8::splat(math::TANH_SMALL)).select(small, large)
}

/// [`math::ln`] lane-wise.
#[inline(always)]
fn ln(x: f32x8) -> f32x8 {
    let bits: i32x8 = cast(x);
    let e = f32x8::from_i32x8(((bits >> 23) & i32x8::splat(0xff)) - i32x8::splat(126));
    let m0: f32x8 = cast((bits & i32x8::splat(0x007f_ffff)) | i32x8::splat(0x3f00_0000));
    let one = f32x8::splat(1.0);
    let below = m0.simd_lt(f32x8::splat(math::SQRT_HALF));
    let e = below.select(e - one, e);
    let m = below.select((m0 + m0) - one, m0 - one);
    let z = m * m;
    let mut p = f32x8::splat(math::LN_P[0]);
    for &c in &math::LN_P[1..] {
        p = p * m + f32x8::splat(c);
    }
    let y = ((p * m) * z + e * f32x8::splat(math::LN2_LO)) - f32x8::splat(0.5) * z;
    (m + y) + e * f32x8::splat(math::LN2_HI)
}

/// [`Activation::apply`] lane-wise, bit for bit.
#[inline(always)]
pub(crate) fn act(a: Activation, x: f32x8) -> f32x8 {
    let one = f32x8::splat(1.0);
    let zero = f32x8::ZERO;
    let nan = x.is_nan();
    match a {
        Activation::Sigmoid => one / (one + exp(-x)),
        Activation::Tanh => tanh(x),
        Activation::Relu => (x.simd_gt(zero) | nan).select(x, zero),
        Activation::Affine { alpha, beta } => f32x8::splat(alpha) * x + f32x8::splat(beta),
        Activation::LeakyRelu { alpha } => x.simd_ge(zero).select(x, f32x8::splat(alpha) * x),
        Activation::ThresholdedRelu { alpha } => (x.simd_gt(f32x8::splat(alpha)) | nan).select(x, zero),
        Activation::ScaledTanh { alpha, beta } => f32x8::splat(alpha) * tanh(f32x8::splat(beta) * x),
        Activation::HardSigmoid { alpha, beta } => {
            let y = f32x8::splat(alpha) * x + f32x8::splat(beta);
            let mid = (y.simd_gt(zero) | y.is_nan()).select(y, zero);
            y.simd_gt(one).select(one, mid)
        }
        Activation::Elu { alpha } => x.simd_ge(zero).select(x, f32x8::splat(alpha) * (exp(x) - one)),
        Activation::Softsign => x / (one + x.abs()),
        Activation::Softplus => (x.simd_gt(f32x8::splat(20.0)) | nan).select(x, ln(one + exp(x))),
    }
}

#[inline(always)]
fn clip(v: f32x8, clip: Option<f32>) -> f32x8 {
    match clip {
        Some(cl) => {
            let hi = f32x8::splat(cl);
            let lo = f32x8::splat(-cl);
            let v = v.simd_gt(hi).select(hi, v);
            v.simd_lt(lo).select(lo, v)
        }
        None => v,
    }
}

fn project(w: &PackedLstm, x: &[f32], rows: &[usize], out: &mut [f32]) {
    let row_len = 4 * w.hidden_padded();
    let input = w.input;
    for (&o, dst) in rows.iter().zip(out.chunks_exact_mut(row_len)) {
        let xr = &x[o..o + input];
        for bl in 0..w.blocks {
            let base = bl * 4 * NB;
            let mut acc = [f32x8::ZERO; 4];
            for (k, &xv) in xr.iter().enumerate() {
                let xv = f32x8::splat(xv);
                let wk = &w.w[k * row_len + base..];
                for (g, a) in acc.iter_mut().enumerate() {
                    *a = xv * load(&wk[g * NB..]) + *a;
                }
            }
            for (g, a) in acc.iter().enumerate() {
                store(*a, &mut dst[base + g * NB..]);
            }
        }
    }
}

fn step(w: &PackedLstm, cell: &CellSpec, m: usize, proj: &[f32], h: &[f32], c: &mut [f32], h_out: &mut [f32]) {
    let hp = w.hidden_padded();
    let row_len = 4 * hp;
    let hidden = w.hidden;
    for r in 0..m {
        let hr = &h[r * hp..r * hp + hidden];
        let pr = &proj[r * row_len..(r + 1) * row_len];
        for bl in 0..w.blocks {
            let base = bl * 4 * NB;
            let mut acc = [f32x8::ZERO; 4];
            for (k, &hv) in hr.iter().enumerate() {
                let hv = f32x8::splat(hv);
                let rk = &w.r[k * row_len + base..];
                for (g, a) in acc.iter_mut().enumerate() {
                    *a = hv * load(&rk[g * NB..]) + *a;
                }
            }
            // Keras' summation order: (x·W + h·R) + b.
            for (g, a) in acc.iter_mut().enumerate() {
                *a = (load(&pr[base + g * NB..]) + *a) + load(&w.bias[base + g * NB..]);
            }
            let cs = r * hp + bl * NB;
            let c_prev = load(&c[cs..]);
            let (h_new, c_new) = epilogue(w, cell, bl, acc, c_prev);
            store(c_new, &mut c[cs..]);
            store(h_new, &mut h_out[cs..]);
        }
    }
}

/// The cell update of [`CellSpec::update`] on one block of `NB` hidden units.
#[inline(always)]
fn epilogue(w: &PackedLstm, cell: &CellSpec, bl: usize, z: [f32x8; 4], c_prev: f32x8) -> (f32x8, f32x8) {
    let [mut zi, mut zf, zc, mut zo] = z;
    let peep = w.peephole.as_deref().map(|p| {
        let b = &p[bl * 3 * NB..];
        [load(b), load(&b[NB..]), load(&b[2 * NB..])]
    });
    if let Some([pi, pf, _]) = peep {
        zi += pi * c_prev;
        zf += pf * c_prev;
    }
    let i = act(cell.gate, clip(zi, cell.clip));
    let f = if cell.input_forget { f32x8::splat(1.0) - i } else { act(cell.gate, clip(zf, cell.clip)) };
    let c = f * c_prev + i * act(cell.cell, clip(zc, cell.clip));
    if let Some([_, _, po]) = peep {
        zo += po * c;
    }
    let o = act(cell.gate, clip(zo, cell.clip));
    (o * act(cell.output, c), c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lane-wise activations agree with the scalar definitions bit for bit.
    #[test]
    fn activations_match_scalar_bitwise() {
        let acts = (0..=10).map(|c| Activation::from_code(c, f32::NAN, f32::NAN).unwrap());
        let specials = [-100.0, 100.0, -1e30, 1e30, 0.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 20.0, 0.625];
        let xs: Vec<f32> = (-40_000..=40_000).map(|i| i as f32 * 2.5e-3).chain(specials).collect();
        let extra = [Activation::HARD_SIGMOID_KERAS3, Activation::ScaledTanh { alpha: 1.7, beta: 0.6 }];
        for a in acts.chain(extra) {
            for chunk in xs.chunks(8) {
                let mut v = [0.0f32; 8];
                v[..chunk.len()].copy_from_slice(chunk);
                let got = act(a, f32x8::from(v)).to_array();
                for (g, &x) in got.iter().zip(&v) {
                    let e = a.apply(x);
                    assert!(g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan()), "{a:?}({x}) = {g}, scalar {e}");
                }
            }
        }
    }
}
