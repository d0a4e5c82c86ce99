//! LSTM parameter gradients: one canonical form, exported to every framework's layout.
//!
//! [`LstmGrads`] mirrors the canonical [`LstmWeights`]: `d_kernel [I, 4H]`, `d_recurrent [H, 4H]`,
//! `d_bias [4H]` in gate order i, f, c, o, and optional `d_peephole [3H]` in order i, f, o. The exports
//! [`to_keras`](LstmGrads::to_keras), [`to_pytorch`](LstmGrads::to_pytorch) and
//! [`to_onnx`](LstmGrads::to_onnx) are the exact inverse layouts of [`LstmWeights::from_keras`],
//! [`LstmWeights::from_pytorch`] and [`LstmWeights::from_onnx`]. The canonical bias is the *sum* of
//! PyTorch's `bias_ih + bias_hh` (ONNX's `Wb + Rb`), so each of the two receives the whole `d_bias`.

use crate::cells::weights::{LstmWeights, GATE_C, GATE_F, GATE_I, GATE_O};

/// ONNX gate block `j` holds canonical gate `ONNX_TO_CANON[j]` (ONNX order i, o, f, c).
pub(crate) const ONNX_TO_CANON: [usize; 4] = [GATE_I, GATE_O, GATE_F, GATE_C];

/// `m [rows, cols] -> [cols, rows]`.
pub(crate) fn transpose<T: Copy + Default>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::default(); m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// Row blocks of `hidden * cols` elements, canonical gate order (i, f, c, o) -> ONNX order (i, o, f, c).
pub(crate) fn canon_to_onnx<T: Copy>(m: &[T], hidden: usize, cols: usize) -> Vec<T> {
    let n = hidden * cols;
    ONNX_TO_CANON.iter().flat_map(|&c| m[c * n..(c + 1) * n].iter().copied()).collect()
}

/// The inverse of [`canon_to_onnx`]: ONNX gate order (i, o, f, c) -> canonical (i, f, c, o).
pub(crate) fn onnx_to_canon<T: Copy + Default>(m: &[T], hidden: usize, cols: usize) -> Vec<T> {
    let n = hidden * cols;
    let mut out = vec![T::default(); m.len()];
    for (j, &c) in ONNX_TO_CANON.iter().enumerate() {
        out[c * n..(c + 1) * n].copy_from_slice(&m[j * n..(j + 1) * n]);
    }
    out
}

/// Peepholes, canonical order (i, f, o) <-> ONNX order (i, o, f): the same swap both ways.
pub(crate) fn swap_peephole_fo<T: Copy>(p: &[T], hidden: usize) -> Vec<T> {
    [0, 2, 1].iter().flat_map(|&g| p[g * hidden..(g + 1) * hidden].iter().copied()).collect()
}

/// Gradients of one LSTM direction's parameters in canonical form (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq)]
pub struct LstmGrads<T> {
    /// Input size `I`.
    pub input: usize,
    /// Hidden size `H`.
    pub hidden: usize,
    /// `[I, 4H]`, gates i, f, c, o.
    pub d_kernel: Vec<T>,
    /// `[H, 4H]`, gates i, f, c, o.
    pub d_recurrent: Vec<T>,
    /// `[4H]`, the gradient of the canonical (summed) bias.
    pub d_bias: Vec<T>,
    /// `[3H]` in order i, f, o, when the layer has peepholes.
    pub d_peephole: Option<Vec<T>>,
}

/// Gradients in Keras' layout (the shapes of the weights `LSTM.get_weights()` returns).
#[derive(Clone, Debug, PartialEq)]
pub struct KerasLayout<T> {
    /// `[I, 4H]`, gates i, f, c, o.
    pub kernel: Vec<T>,
    /// `[H, 4H]`.
    pub recurrent_kernel: Vec<T>,
    /// `[4H]`.
    pub bias: Vec<T>,
}

/// Gradients in PyTorch's layout (`weight_ih_l{k}`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct PytorchLayout<T> {
    /// `[4H, I]`, gates i, f, g, o.
    pub weight_ih: Vec<T>,
    /// `[4H, H]`.
    pub weight_hh: Vec<T>,
    /// `[4H]`: equal to `bias_hh`, as both add into the same pre-activation.
    pub bias_ih: Vec<T>,
    /// `[4H]`.
    pub bias_hh: Vec<T>,
}

/// Gradients in ONNX's layout, for `D` directions stacked along the first axis.
#[derive(Clone, Debug, PartialEq)]
pub struct OnnxLayout<T> {
    /// `W [D, 4H, I]`, gates i, o, f, c.
    pub w: Vec<T>,
    /// `R [D, 4H, H]`.
    pub r: Vec<T>,
    /// `B [D, 8H]`: `Wb` then `Rb`, both equal to the canonical bias gradient (reordered).
    pub b: Vec<T>,
    /// `P [D, 3H]` in order i, o, f, when the layer has peepholes.
    pub p: Option<Vec<T>>,
}

impl<T: Copy + Default> LstmGrads<T> {
    /// All-zero gradients for an `input x hidden` layer, with a peephole gradient if `peephole`.
    pub fn zeros(input: usize, hidden: usize, peephole: bool) -> Self {
        LstmGrads {
            input,
            hidden,
            d_kernel: vec![T::default(); input * 4 * hidden],
            d_recurrent: vec![T::default(); hidden * 4 * hidden],
            d_bias: vec![T::default(); 4 * hidden],
            d_peephole: peephole.then(|| vec![T::default(); 3 * hidden]),
        }
    }

    /// Keras layout: the canonical form itself.
    pub fn to_keras(&self) -> KerasLayout<T> {
        KerasLayout {
            kernel: self.d_kernel.clone(),
            recurrent_kernel: self.d_recurrent.clone(),
            bias: self.d_bias.clone(),
        }
    }

    /// PyTorch layout: transposed matrices (same gate order); `bias_ih = bias_hh = d_bias`.
    pub fn to_pytorch(&self) -> PytorchLayout<T> {
        let g = 4 * self.hidden;
        PytorchLayout {
            weight_ih: transpose(&self.d_kernel, self.input, g),
            weight_hh: transpose(&self.d_recurrent, self.hidden, g),
            bias_ih: self.d_bias.clone(),
            bias_hh: self.d_bias.clone(),
        }
    }

    /// ONNX layout of this one direction (`D = 1`): transposed, gate blocks i, o, f, c; `B` holds the
    /// reordered `d_bias` twice; `P` in order i, o, f.
    pub fn to_onnx(&self) -> OnnxLayout<T> {
        let (i, h) = (self.input, self.hidden);
        let bias = canon_to_onnx(&self.d_bias, h, 1);
        OnnxLayout {
            w: canon_to_onnx(&transpose(&self.d_kernel, i, 4 * h), h, i),
            r: canon_to_onnx(&transpose(&self.d_recurrent, h, 4 * h), h, h),
            b: [bias.clone(), bias].concat(),
            p: self.d_peephole.as_ref().map(|p| swap_peephole_fo(p, h)),
        }
    }

    /// ONNX layout of several directions, stacked along `D` (the order of the operator's `W`, `R`, `B`,
    /// `P`). `P` is present if any direction has peepholes (zeros for those that have none).
    pub fn to_onnx_dirs(dirs: &[Self]) -> OnnxLayout<T> {
        let each: Vec<OnnxLayout<T>> = dirs.iter().map(Self::to_onnx).collect();
        let any_p = each.iter().any(|o| o.p.is_some());
        OnnxLayout {
            w: each.iter().flat_map(|o| o.w.iter().copied()).collect(),
            r: each.iter().flat_map(|o| o.r.iter().copied()).collect(),
            b: each.iter().flat_map(|o| o.b.iter().copied()).collect(),
            p: any_p.then(|| {
                each.iter()
                    .zip(dirs)
                    .flat_map(|(o, d)| o.p.clone().unwrap_or_else(|| vec![T::default(); 3 * d.hidden]))
                    .collect()
            }),
        }
    }
}

impl From<&LstmWeights> for LstmGrads<f32> {
    /// The numbers of `w` laid out as a gradient (same shapes, same order): exporting it with `to_*`
    /// gives back the tensors `w` was imported from, up to the bias split.
    fn from(w: &LstmWeights) -> Self {
        LstmGrads {
            input: w.input_size(),
            hidden: w.hidden_size(),
            d_kernel: w.kernel().to_vec(),
            d_recurrent: w.recurrent().to_vec(),
            d_bias: w.bias().to_vec(),
            d_peephole: w.peephole().map(<[f32]>::to_vec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct pseudo-random values (exact in f32) so any mix-up of gates or transposition shows.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    const SIZES: [(usize, usize); 3] = [(3, 2), (1, 1), (4, 5)];

    #[test]
    fn keras_export_inverts_import() {
        for (k, (i, h)) in SIZES.into_iter().enumerate() {
            let (kern, rec, b) = (values(i * 4 * h, 1 + k as u32), values(h * 4 * h, 2), values(4 * h, 3));
            let w = LstmWeights::from_keras(i, h, &kern, &rec, Some(&b)).unwrap();
            let out = LstmGrads::from(&w).to_keras();
            assert_eq!(out, KerasLayout { kernel: kern, recurrent_kernel: rec, bias: b });
        }
    }

    #[test]
    fn pytorch_export_inverts_import() {
        for (k, (i, h)) in SIZES.into_iter().enumerate() {
            let (wih, whh, bih) = (values(4 * h * i, 4 + k as u32), values(4 * h * h, 5), values(4 * h, 6));
            // One bias absent: the canonical bias is then exactly bias_ih.
            let w = LstmWeights::from_pytorch(i, h, &wih, &whh, Some(&bih), None).unwrap();
            let out = LstmGrads::from(&w).to_pytorch();
            assert_eq!(out, PytorchLayout { weight_ih: wih, weight_hh: whh, bias_ih: bih.clone(), bias_hh: bih });
        }
    }

    #[test]
    fn onnx_export_inverts_import() {
        for (k, (i, h)) in SIZES.into_iter().enumerate() {
            let (w, r, wb, p) =
                (values(4 * h * i, 7 + k as u32), values(4 * h * h, 8), values(4 * h, 9), values(3 * h, 10));
            // Rb = 0: the canonical bias is Wb reordered, and both halves of B come back as Wb.
            let b = [wb.clone(), vec![0.0; 4 * h]].concat();
            let weights = LstmWeights::from_onnx(i, h, &w, &r, Some(&b), Some(&p)).unwrap();
            let out = LstmGrads::from(&weights).to_onnx();
            assert_eq!(out, OnnxLayout { w: w.clone(), r: r.clone(), b: [wb.clone(), wb].concat(), p: Some(p) });
            // Without peepholes, and stacked over two directions.
            let nop = LstmGrads::from(&LstmWeights::from_onnx(i, h, &w, &r, None, None).unwrap());
            assert_eq!(nop.to_onnx().p, None);
            let two = LstmGrads::to_onnx_dirs(&[LstmGrads::from(&weights), nop.clone()]);
            assert_eq!(two.w, [w.clone(), w].concat());
            assert_eq!(two.r.len(), 2 * 4 * h * h);
            assert_eq!(two.p.unwrap()[3 * h..], vec![0.0; 3 * h]);
            assert_eq!(&two.b[8 * h..], &vec![0.0; 8 * h][..]);
        }
    }

    #[test]
    fn zeros_have_layer_shapes() {
        let g = LstmGrads::<f64>::zeros(3, 2, true);
        assert_eq!((g.d_kernel.len(), g.d_recurrent.len(), g.d_bias.len()), (24, 16, 8));
        assert_eq!(g.d_peephole.map(|p| p.len()), Some(6));
        assert_eq!(LstmGrads::<f64>::zeros(3, 2, false).d_peephole, None);
    }
}
