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

use crate::cells::activation::Activation;
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
