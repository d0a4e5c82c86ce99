//! The LSTM cell: which activations and options turn gate pre-activations into the new state.
//!
//! With gate pre-activations `z = x·W + h·R + b` (gates i, f, c, o):
//!
//! ```text
//! i = f_act(z_i + p_i ∘ c_prev)        (peepholes p only for ONNX; clip bounds each gate's argument)
//! f = f_act(z_f + p_f ∘ c_prev)        (input_forget: f = 1 - i)
//! c = f ∘ c_prev + i ∘ g_act(z_c)
//! o = f_act(z_o + p_o ∘ c)
//! h = o ∘ h_act(c)
//! ```
//! Keras: `f_act = recurrent_activation`, `g_act = h_act = activation`.

use std::ops::Range;

use crate::cells::activation::Activation;
use crate::cells::weights::PackedLstm;
use crate::kernel::pack::PackedGates;
use crate::kernel::simd::{gemm, Epilogue, Rows, Simd};
use crate::kernel::{CellKernel, StepState};
use crate::reference::Rounding;

/// Activations and options of an LSTM cell (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct CellSpec {
    /// Gate activation `f` (Keras `recurrent_activation`), applied to i, f and o.
    pub gate: Activation,
    /// Cell candidate activation `g` (Keras `activation`).
    pub cell: Activation,
    /// Output activation `h` (Keras `activation`).
    pub output: Activation,
    /// ONNX `clip`: gate arguments are clamped to `[-clip, clip]` after bias and peephole.
    pub clip: Option<f32>,
    /// ONNX `input_forget`: couple the forget gate to the input gate, `f = 1 - i`.
    pub input_forget: bool,
}

impl Default for CellSpec {
    fn default() -> Self {
        CellSpec {
            gate: Activation::Sigmoid,
            cell: Activation::Tanh,
            output: Activation::Tanh,
            clip: None,
            input_forget: false,
        }
    }
}

impl CellSpec {
    /// A Keras cell: `activation` for the candidate and the output, `recurrent_activation` for the gates.
    pub fn keras(activation: Activation, recurrent_activation: Activation) -> Self {
        CellSpec { gate: recurrent_activation, cell: activation, output: activation, ..Self::default() }
    }

    /// An ONNX cell with activations `(f, g, h)`, optional clip and input_forget.
    pub fn onnx(f: Activation, g: Activation, h: Activation, clip: Option<f32>, input_forget: bool) -> Self {
        CellSpec { gate: f, cell: g, output: h, clip, input_forget }
    }

    /// One cell update in scalar arithmetic with separate roundings (the portable backend's).
    /// `z` holds the four pre-activations (i, f, c, o) including bias; `p` the peepholes (i, f, o).
    #[inline]
    pub fn update(&self, z: [f32; 4], p: Option<[f32; 3]>, c_prev: f32) -> (f32, f32) {
        self.update_rounded(z, p, c_prev, Rounding::Separate)
    }

    /// One cell update in scalar arithmetic, the definition every kernel with `rounding` must match bit for
    /// bit (the activations round as [`Activation::apply_rounded`] says; the rest never fuses).
    #[inline]
    pub fn update_rounded(&self, z: [f32; 4], p: Option<[f32; 3]>, c_prev: f32, rounding: Rounding) -> (f32, f32) {
        let clip = |v: f32| match self.clip {
            // Comparisons, not `clamp`: NaN passes through as it does in the SIMD kernels.
            Some(cl) if v < -cl => -cl,
            Some(cl) if v > cl => cl,
            _ => v,
        };
        let [zi, zf, zc, zo] = z;
        let (zi, zf) = match p {
            Some([pi, pf, _]) => (zi + pi * c_prev, zf + pf * c_prev),
            None => (zi, zf),
        };
        let i = self.gate.apply_rounded(clip(zi), rounding);
        let f = if self.input_forget { 1.0 - i } else { self.gate.apply_rounded(clip(zf), rounding) };
        let c = f * c_prev + i * self.cell.apply_rounded(clip(zc), rounding);
        let zo = match p {
            Some([_, _, po]) => zo + po * c,
            None => zo,
        };
        let o = self.gate.apply_rounded(clip(zo), rounding);
        (o * self.output.apply_rounded(c, rounding), c)
    }
}

/// One unit's backward through [`CellSpec::update_rounded`]: from the gate arguments `args` (after the
/// peepholes, before the clip, as the training forward kept them), the previous and new cell states and
/// the gradients `dh` and `dc` arriving at the new `h` and `c`, returns the gradients of the four gate
/// pre-activations `z` (i, f, c, o) and of `c_prev`. Derivatives at kinks as the C ABI documents them
/// (the clip passes the gradient strictly inside its bounds).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_unit(
    spec: &CellSpec,
    args: [f32; 4],
    p: Option<[f32; 3]>,
    c_prev: f32,
    c: f32,
    dh: f32,
    dc: f32,
    rounding: Rounding,
) -> ([f32; 4], f32) {
    let clip = |v: f32| match spec.clip {
        Some(cl) if v < -cl => -cl,
        Some(cl) if v > cl => cl,
        _ => v,
    };
    // d act(clip(v)) / dv, from the activation's value `y` where that is exact (sigmoid, tanh).
    let slope = |a: Activation, v: f32, y: f32| -> f32 {
        if spec.clip.is_some_and(|cl| !(-cl < v && v < cl)) {
            return 0.0;
        }
        derivative(a, v, y)
    };
    let [ai, af, ac, ao] = args;
    let i = spec.gate.apply_rounded(clip(ai), rounding);
    let fv = spec.gate.apply_rounded(clip(af), rounding);
    let f = if spec.input_forget { 1.0 - i } else { fv };
    let g = spec.cell.apply_rounded(clip(ac), rounding);
    let o = spec.gate.apply_rounded(clip(ao), rounding);
    let hc = spec.output.apply_rounded(c, rounding);
    let [pi, pf, po] = p.unwrap_or([0.0; 3]);
    let dao = dh * hc * slope(spec.gate, ao, o);
    let dc = dc + dh * o * derivative(spec.output, c, hc) + dao * po;
    let (mut di, df, dg) = (dc * g, dc * c_prev, dc * i);
    let daf = if spec.input_forget {
        di -= df;
        0.0
    } else {
        df * slope(spec.gate, af, fv)
    };
    let dai = di * slope(spec.gate, ai, i);
    let dac = dg * slope(spec.cell, ac, g);
    ([dai, daf, dac, dao], dc * f + dai * pi + daf * pf)
}

/// `a'(x)` given `y = a(x)`: from `y` for sigmoid and tanh (no second transcendental), else exactly (in
/// f64) from `x`, with the C ABI's conventions at kinks.
#[inline]
fn derivative(a: Activation, x: f32, y: f32) -> f32 {
    match a {
        Activation::Sigmoid => y * (1.0 - y),
        Activation::Tanh => 1.0 - y * y,
        _ => crate::reference::backward::dact64(a, f64::from(x)) as f32,
    }
}

/// Floats a training forward keeps per valid step and hidden unit (padded to whole blocks): the four
/// gate arguments after the peepholes and before the clip, `[blocks][4][nb]` (`4 hp` floats), then the
/// new `c` and the new `h` (`hp` floats each).
pub(crate) const TAPE_RECORD: usize = 6;

/// The LSTM as the kernels see it: packed weights and activations of one layer direction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LstmKernel<'a> {
    pub packed: &'a PackedLstm,
    pub spec: &'a CellSpec,
}

impl CellKernel for LstmKernel<'_> {
    const EXTRA_STATES: usize = 1;

    fn packed(&self) -> &PackedGates {
        &self.packed.gates
    }

    #[inline(always)]
    unsafe fn step<S: Simd>(&self, m: usize, blocks: Range<usize>, st: StepState<'_>, reverse_first: bool) -> bool {
        let w = &self.packed.gates;
        let hp = w.hidden_padded();
        let panel = 4 * S::LANES;
        let proj_row = blocks.len() * panel;
        assert!(w.gates == 4 && w.nb == S::LANES && blocks.end <= w.blocks && st.proj.len() >= m * proj_row);
        assert!(w.r.len() >= w.blocks * w.hidden * panel && st.h.len() >= m * hp && w.bias.len() >= w.blocks * panel);
        let peepholes = self.packed.peephole.as_deref();
        assert!(peepholes.is_none_or(|p| p.len() >= 3 * hp));
        let mut update = Update {
            spec: self.spec,
            proj: st.proj.as_ptr(),
            proj_row,
            first: blocks.start,
            bias: w.bias.as_ptr(),
            peepholes: peepholes.map(<[f32]>::as_ptr),
            c: st.extra,
            h_out: st.h_out,
            hp,
            tape: st.tape,
            tape_rows: st.tape_rows,
            tape_stride: st.tape_stride,
        };
        let rows = Rows::Strided { base: st.h.as_ptr(), stride: hp };
        // SAFETY: the asserts above bound every read: rows < m of h (hp floats each, hidden <= hp), panels
        // of H x 4 LANES floats for blocks < w.blocks, the bias, proj and peephole blocks. The writes stay in
        // rows < m of c and h_out, in the columns of `blocks`, which the caller's contract gives us.
        unsafe { gemm::<S, 4>(&w.r, w.hidden, m, rows, blocks, reverse_first, &mut update) }
    }
}

/// The LSTM step's epilogue: `z = (proj + h·R) + b` (Keras' summation order), then the cell update.
struct Update<'a> {
    spec: &'a CellSpec,
    proj: *const f32,
    proj_row: usize,
    first: usize,
    bias: *const f32,
    peepholes: Option<*const f32>,
    c: *mut f32,
    h_out: *mut f32,
    hp: usize,
    tape: *mut f32,
    tape_rows: *const usize,
    tape_stride: usize,
}

impl<S: Simd> Epilogue<S, 4> for Update<'_> {
    #[inline(always)]
    unsafe fn apply(&mut self, r: usize, blk: usize, acc: [S; 4]) {
        let panel = 4 * S::LANES;
        // SAFETY: `LstmKernel::step` checked every buffer for the rows and blocks `gemm` hands here.
        unsafe {
            let pr = self.proj.add(r * self.proj_row + (blk - self.first) * panel);
            let bias = self.bias.add(blk * panel);
            let peep = self.peepholes.map(|p| {
                let b = p.add(blk * 3 * S::LANES);
                [S::load(b), S::load(b.add(S::LANES)), S::load(b.add(2 * S::LANES))]
            });
            let z: [S; 4] =
                std::array::from_fn(|g| S::load(pr.add(g * S::LANES)).add(acc[g]).add(S::load(bias.add(g * S::LANES))));
            let cs = r * self.hp + blk * S::LANES;
            let (hn, cn, args) = update_lanes(self.spec, z, peep, S::load(self.c.add(cs)));
            cn.store(self.c.add(cs));
            hn.store(self.h_out.add(cs));
            if !self.tape.is_null() {
                // The training record of this step (see `TAPE_RECORD`).
                let rec = self.tape.add(*self.tape_rows.add(r) * self.tape_stride);
                for (g, a) in args.iter().enumerate() {
                    a.store(rec.add(blk * panel + g * S::LANES));
                }
                cn.store(rec.add(4 * self.hp + blk * S::LANES));
                hn.store(rec.add(5 * self.hp + blk * S::LANES));
            }
        }
    }
}

/// `v` clamped to `[-clip, clip]` by comparisons (NaN passes through), as [`CellSpec::update_rounded`].
#[inline(always)]
unsafe fn clip_lanes<S: Simd>(v: S, clip: Option<f32>) -> S {
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

/// [`CellSpec::update_rounded`] on one block of lanes: `z` are the gate pre-activations including bias,
/// `p` the block's peepholes (i, f, o). Returns `(h, c, args)`, `h` and `c` bit for bit the scalar update
/// in the backend's rounding, `args` the four gate arguments after the peepholes and before the clip
/// (what the backward differentiates the activations at).
///
/// # Safety
/// S's instructions available.
#[inline(always)]
unsafe fn update_lanes<S: Simd>(cell: &CellSpec, z: [S; 4], p: Option<[S; 3]>, c_prev: S) -> (S, S, [S; 4]) {
    // SAFETY: S's instructions are available (caller's contract); no memory is accessed.
    unsafe {
        let [mut zi, mut zf, zc, mut zo] = z;
        if let Some([pi, pf, _]) = p {
            zi = zi.add(pi.mul(c_prev));
            zf = zf.add(pf.mul(c_prev));
        }
        let i = S::act(cell.gate, clip_lanes(zi, cell.clip));
        let f = if cell.input_forget { S::splat(1.0).sub(i) } else { S::act(cell.gate, clip_lanes(zf, cell.clip)) };
        let c = f.mul(c_prev).add(i.mul(S::act(cell.cell, clip_lanes(zc, cell.clip))));
        if let Some([_, _, po]) = p {
            zo = zo.add(po.mul(c));
        }
        let o = S::act(cell.gate, clip_lanes(zo, cell.clip));
        (o.mul(S::act(cell.output, c)), c, [zi, zf, zc, zo])
    }
}
