//! The microkernel seam: everything the scheduler needs from an instruction set, as one function table.
//!
//! A [`Backend`] packs weights into its panel layout (blocks of `nb` lanes, see [`crate::weights`]) and
//! provides two kernels:
//! - `project`: `out[r] = x[rows[r]] · W` for gathered valid input rows (the input projection);
//! - `step`: one recurrent step for the first `m` (active) rows: `z = (proj + h · R) + bias` (Keras'
//!   summation order), then the cell update
//!   (peepholes, clip, activations, `c`, `h`) in the epilogue while the tile is in registers.
//!
//! Every output element is computed by the same sequence of operations whatever the number of rows in the
//! call or the row's position in it, so results do not depend on batch composition or on threading.
//! The scheduler ([`crate::engine`]) only talks to this table; backends for other instruction sets plug in
//! here.

use std::sync::OnceLock;

use crate::cell::CellSpec;
use crate::weights::PackedLstm;

pub(crate) mod portable;
pub(crate) mod simd;

/// Input projection: `out[r][..4 hp] = x[rows[r]..][..I] · W` in the packed gate layout.
pub(crate) type ProjectFn = fn(w: &PackedLstm, x: &[f32], rows: &[usize], out: &mut [f32]);

/// One recurrent step of `m` rows: reads `proj [m][4 hp]`, `h [m][hp]`, updates `c [m][hp]` in place
/// and writes the new hidden state to `h_out [m][hp]`.
pub(crate) type StepFn =
    fn(w: &PackedLstm, cell: &CellSpec, m: usize, proj: &[f32], h: &[f32], c: &mut [f32], h_out: &mut [f32]);

/// Instruction-set levels, ordered: a level may run everything below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuLevel {
    /// `wide` vectors with the compile target's instructions (SSE2 on default x86-64).
    Portable,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512F.
    Avx512,
}

/// A set of kernels for one instruction set.
#[derive(Debug)]
pub struct Backend {
    /// Human-readable name (`"portable"`, ...).
    pub name: &'static str,
    /// The instruction-set level the kernels need.
    pub level: CpuLevel,
    /// Whether the kernels fuse multiply-adds (one rounding). A backend that does not performs exactly the
    /// reference's operations in the same order, so it matches the reference bit for bit.
    pub fused_multiply_add: bool,
    /// Lanes per weight block.
    pub(crate) nb: usize,
    pub(crate) project: ProjectFn,
    pub(crate) step: StepFn,
}

/// The best backend this CPU supports, chosen once and cached.
pub fn selected() -> &'static Backend {
    static SELECTED: OnceLock<&'static Backend> = OnceLock::new();
    SELECTED.get_or_init(|| &portable::BACKEND)
}

/// All backends this CPU can run, best first.
pub fn available() -> Vec<&'static Backend> {
    vec![&portable::BACKEND]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::simd::{self, Simd};
    use crate::activation::Activation;

    /// Lane-wise activations of `S` agree with the scalar definitions bit for bit.
    pub(crate) fn activations_match_scalar<S: Simd>() {
        let acts = (0..=10).map(|c| Activation::from_code(c, f32::NAN, f32::NAN).unwrap());
        let specials =
            [-100.0, 100.0, -1e30, 1e30, 0.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 20.0, 0.625, -0.625];
        let xs: Vec<f32> = (-40_000..=40_000).map(|i| i as f32 * 2.5e-3).chain(specials).collect();
        let extra = [Activation::HARD_SIGMOID_KERAS3, Activation::ScaledTanh { alpha: 1.7, beta: 0.6 }];
        let mut buf = vec![0.0f32; S::LANES];
        for a in acts.chain(extra) {
            for chunk in xs.chunks(S::LANES) {
                buf.fill(0.0);
                buf[..chunk.len()].copy_from_slice(chunk);
                // SAFETY: callers only instantiate S for instruction sets this CPU has; buf holds LANES.
                unsafe { simd::act(a, S::load(buf.as_ptr())).store(buf.as_mut_ptr()) };
                for (g, &x) in buf.iter().zip(chunk) {
                    let e = a.apply(x);
                    assert!(g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan()), "{a:?}({x}) = {g}, scalar {e}");
                }
            }
        }
    }
}
