//! LSTM weights: one canonical form, imported from Keras, PyTorch and ONNX, and packed once per layer into
//! the panel layout of the selected microkernel backend.
//!
//! Canonical form (Keras layout): `kernel [I, 4H]`, `recurrent [H, 4H]`, `bias [4H]`, gates in the order
//! i, f, c (candidate, PyTorch's g), o, so that `z = x·kernel + h·recurrent + bias`. Optional peepholes
//! `[3H]` in the order i, f, o.
//!
//! Packed form: the hidden units are grouped in blocks of `nb` lanes (the backend's vector width) and,
//! within a block, the four gates of those units are adjacent:
//! `packed[block][k][gate][lane] = canonical[k][gate * H + block * nb + lane]`, zero past `H`. One register
//! tile of `4 nb` columns then holds all four gates of `nb` hidden units, so the recurrent kernel can finish
//! the cell update in its epilogue without another pass over memory; and the panel a tile streams over `k`
//! is contiguous (no 4 KiB strides to defeat the prefetchers and the TLB).

use std::sync::OnceLock;

use crate::error::{check_len, checked_product, Error, Result};
use crate::frameworks::torch::TorchParams;
pub(crate) use crate::kernel::pack::transpose;
use crate::kernel::pack::{pack_vector, unpack_vector, PackedGates, Source};

/// Gate index within the canonical (Keras / PyTorch) order.
pub const GATE_I: usize = 0;
/// Forget gate index.
pub const GATE_F: usize = 1;
/// Cell candidate index.
pub const GATE_C: usize = 2;
/// Output gate index.
pub const GATE_O: usize = 3;

/// LSTM weights of one direction in canonical form (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq)]
pub struct LstmWeights {
    input: usize,
    hidden: usize,
    kernel: Vec<f32>,
    recurrent: Vec<f32>,
    bias: Vec<f32>,
    peephole: Option<Vec<f32>>,
}

/// `(G H, I G H)` for a cell of `gates` gates, checked: the canonical row width and kernel length.
pub(crate) fn sizes(gates: usize, input: usize, hidden: usize) -> Result<(usize, usize)> {
    if hidden == 0 {
        return Err(Error::argument("hidden size must be at least 1"));
    }
    let g = checked_product(&[gates, hidden], "gates")?;
    checked_product(&[input, g], "kernel")?;
    checked_product(&[hidden, g], "recurrent kernel")?;
    Ok((g, input * g))
}

impl LstmWeights {
    /// From Keras' `kernel [I, 4H]`, `recurrent_kernel [H, 4H]` and `bias [4H]` (None: no bias), gates i,f,c,o.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) when a length disagrees with `input`/`hidden`;
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for `hidden == 0`.
    pub fn from_keras(
        input: usize,
        hidden: usize,
        kernel: &[f32],
        recurrent_kernel: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<Self> {
        let g = check_weights(4, input, hidden, ["kernel", "recurrent_kernel"], kernel, recurrent_kernel)?;
        let bias = keras_bias(bias, g)?;
        Ok(LstmWeights {
            input,
            hidden,
            kernel: kernel.to_vec(),
            recurrent: recurrent_kernel.to_vec(),
            bias,
            peephole: None,
        })
    }

    /// From PyTorch's `weight_ih [4H, I]`, `weight_hh [4H, H]`, `bias_ih`, `bias_hh [4H]` (gates i,f,g,o).
    ///
    /// # Errors
    /// As [`from_keras`](Self::from_keras).
    pub fn from_pytorch(
        input: usize,
        hidden: usize,
        weight_ih: &[f32],
        weight_hh: &[f32],
        bias_ih: Option<&[f32]>,
        bias_hh: Option<&[f32]>,
    ) -> Result<Self> {
        let g = check_weights(4, input, hidden, ["weight_ih", "weight_hh"], weight_ih, weight_hh)?;
        let bias = pytorch_bias(bias_ih, bias_hh, g)?;
        Ok(LstmWeights {
            input,
            hidden,
            kernel: transpose(weight_ih, g, input),
            recurrent: transpose(weight_hh, g, hidden),
            bias,
            peephole: None,
        })
    }

    /// From one direction of ONNX's `W [4H, I]`, `R [4H, H]`, `B [8H]` (Wb then Rb) and `P [3H]`, all in
    /// ONNX gate order i, o, f, c (peepholes i, o, f).
    ///
    /// # Errors
    /// As [`from_keras`](Self::from_keras).
    pub fn from_onnx(
        input: usize,
        hidden: usize,
        w: &[f32],
        r: &[f32],
        b: Option<&[f32]>,
        p: Option<&[f32]>,
    ) -> Result<Self> {
        let g = check_weights(4, input, hidden, ["W", "R"], w, r)?;
        let reorder = |m: &[f32], cols: usize| {
            let mut out = vec![0.0; m.len()];
            for (j, &c) in ONNX_TO_CANON.iter().enumerate() {
                out[c * hidden * cols..(c + 1) * hidden * cols]
                    .copy_from_slice(&m[j * hidden * cols..(j + 1) * hidden * cols]);
            }
            out
        };
        let (bias, peephole) = onnx_bias_peephole(hidden, b, p)?;
        Ok(LstmWeights {
            input,
            hidden,
            kernel: transpose(&reorder(w, input), g, input),
            recurrent: transpose(&reorder(r, hidden), g, hidden),
            bias,
            peephole,
        })
    }

    /// Input size `I`.
    pub fn input_size(&self) -> usize {
        self.input
    }
    /// Hidden size `H`.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }
    /// `kernel [I, 4H]`, gates i, f, c, o.
    pub fn kernel(&self) -> &[f32] {
        &self.kernel
    }
    /// `recurrent [H, 4H]`, gates i, f, c, o.
    pub fn recurrent(&self) -> &[f32] {
        &self.recurrent
    }
    /// `bias [4H]` (input and recurrent biases summed).
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }
    /// Peepholes `[3H]` in order i, f, o, if any.
    pub fn peephole(&self) -> Option<&[f32]> {
        self.peephole.as_deref()
    }
}

/// Checks the lengths of a layer direction's input and recurrent weights (named `names`) for `gates`
/// gates; returns `G H`, the canonical row width.
pub(crate) fn check_weights(
    gates: usize,
    input: usize,
    hidden: usize,
    names: [&str; 2],
    w: &[f32],
    r: &[f32],
) -> Result<usize> {
    let (g, nk) = sizes(gates, input, hidden)?;
    check_len(names[0], w.len(), nk)?;
    check_len(names[1], r.len(), hidden * g)?;
    Ok(g)
}

/// Keras' `kernel [I, G H]`, `recurrent_kernel [H, G H]` and `bias [G H]` of a cell whose bias is one
/// vector (LSTM, RNN), checked and packed as they are.
pub(crate) fn pack_keras(
    gates: usize,
    input: usize,
    hidden: usize,
    kernel: &[f32],
    recurrent_kernel: &[f32],
    bias: Option<&[f32]>,
    nb: usize,
) -> Result<PackedGates> {
    let g = check_weights(gates, input, hidden, ["kernel", "recurrent_kernel"], kernel, recurrent_kernel)?;
    let src = Source::Canonical { kernel, recurrent: recurrent_kernel };
    PackedGates::new(gates, input, hidden, src, &keras_bias(bias, g)?, nb)
}

/// PyTorch's parameters of a cell whose biases are summed (LSTM, RNN), checked and packed straight from
/// their layout, gate `g` from PyTorch's block `order[g]` (`order.len()` gates).
pub(crate) fn pack_pytorch(
    input: usize,
    hidden: usize,
    p: &TorchParams<'_>,
    order: &[usize],
    nb: usize,
) -> Result<PackedGates> {
    let gates = order.len();
    let g = check_weights(gates, input, hidden, ["weight_ih", "weight_hh"], p.weight_ih, p.weight_hh)?;
    let bias = pytorch_bias(p.bias_ih, p.bias_hh, g)?;
    PackedGates::new(gates, input, hidden, Source::Units { w: p.weight_ih, r: p.weight_hh, order }, &bias, nb)
}

/// Keras' `bias [G H]` (`None`: zeros), checked.
pub(crate) fn keras_bias(bias: Option<&[f32]>, g: usize) -> Result<Vec<f32>> {
    match bias {
        Some(b) => {
            check_len("bias", b.len(), g)?;
            Ok(b.to_vec())
        }
        None => Ok(vec![0.0; g]),
    }
}

/// PyTorch's `bias_ih + bias_hh [G H]` (a missing one: zeros), checked.
pub(crate) fn pytorch_bias(bias_ih: Option<&[f32]>, bias_hh: Option<&[f32]>, g: usize) -> Result<Vec<f32>> {
    let mut bias = vec![0.0; g];
    for (name, b) in [("bias_ih", bias_ih), ("bias_hh", bias_hh)] {
        if let Some(b) = b {
            check_len(name, b.len(), g)?;
            bias.iter_mut().zip(b).for_each(|(d, s)| *d += s);
        }
    }
    Ok(bias)
}

/// ONNX gate block `j` holds canonical gate `ONNX_TO_CANON[j]` (ONNX order i, o, f, c).
const ONNX_TO_CANON: [usize; 4] = [GATE_I, GATE_O, GATE_F, GATE_C];
/// The ONNX gate block of each canonical gate (i, f, c, o): the inverse of [`ONNX_TO_CANON`].
const CANON_FROM_ONNX: [usize; 4] = [0, 2, 3, 1];

/// ONNX's `B [8H]` (`Wb` then `Rb`, gates i, o, f, c) and `P [3H]` (i, o, f) in canonical form: the summed
/// bias `[4H]` (i, f, c, o; zeros without `B`) and the peepholes `[3H]` (i, f, o).
fn onnx_bias_peephole(hidden: usize, b: Option<&[f32]>, p: Option<&[f32]>) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let g = 4 * hidden;
    let mut bias = vec![0.0; g];
    if let Some(b) = b {
        check_len("B", b.len(), 2 * g)?;
        for (j, &c) in ONNX_TO_CANON.iter().enumerate() {
            let (wb, rb) = (&b[j * hidden..][..hidden], &b[g + j * hidden..][..hidden]);
            for ((d, x), y) in bias[c * hidden..][..hidden].iter_mut().zip(wb).zip(rb) {
                *d = x + y;
            }
        }
    }
    let peephole = match p {
        Some(p) => {
            check_len("P", p.len(), 3 * hidden)?;
            // ONNX order i, o, f -> canonical i, f, o.
            let mut out = vec![0.0; 3 * hidden];
            out[..hidden].copy_from_slice(&p[..hidden]);
            out[hidden..2 * hidden].copy_from_slice(&p[2 * hidden..]);
            out[2 * hidden..].copy_from_slice(&p[hidden..2 * hidden]);
            Some(out)
        }
        None => None,
    };
    Ok((bias, peephole))
}

/// Weights of one LSTM layer direction packed into a backend's panel layout (see
/// [`PackedGates`]), with the peepholes as `[blocks][3][nb]` (i, f, o).
#[derive(Clone, Debug)]
pub struct PackedLstm {
    pub(crate) gates: PackedGates,
    pub(crate) peephole: Option<Vec<f32>>,
    /// `Rᵀ` and `Wᵀ` for the backward, packed on first use (see [`PackedLstm::transposes`]).
    transposes: OnceLock<Transposes>,
}

/// The transposed weights a backward multiplies by, as plain matrices ([`PackedGates::zero_matrix`]) whose
/// `4 hp` rows follow `dZ`'s packed column order (zero rows for padded units).
#[derive(Clone, Debug)]
pub(crate) struct Transposes {
    /// `Rᵀ`: `dh_prev = dZ · Rᵀ`, `H` output columns.
    pub rt: PackedGates,
    /// `Wᵀ`: `dx = dZ · Wᵀ`, `I` output columns.
    pub wt: PackedGates,
}

impl PackedLstm {
    /// Packs `weights` for a backend with `nb` lanes per block.
    pub(crate) fn new(weights: &LstmWeights, nb: usize) -> Result<Self> {
        let (i, h) = (weights.input, weights.hidden);
        let src = Source::Canonical { kernel: &weights.kernel, recurrent: &weights.recurrent };
        let gates = PackedGates::new(4, i, h, src, &weights.bias, nb)?;
        let peephole = weights.peephole.as_ref().map(|p| pack_vector(p, 3, h, nb));
        Ok(PackedLstm { gates, peephole, transposes: OnceLock::new() })
    }

    /// Packs one direction of ONNX's `W [4H, I]`, `R [4H, H]`, `B [8H]` and `P [3H]` (gates i, o, f, c;
    /// peepholes i, o, f) straight from their layout, with no canonical copy: as
    /// `PackedLstm::new(&LstmWeights::from_onnx(..)?, nb)`, bit for bit.
    ///
    /// # Errors
    /// As [`LstmWeights::from_onnx`].
    pub(crate) fn from_onnx(
        input: usize,
        hidden: usize,
        w: &[f32],
        r: &[f32],
        b: Option<&[f32]>,
        p: Option<&[f32]>,
        nb: usize,
    ) -> Result<Self> {
        check_weights(4, input, hidden, ["W", "R"], w, r)?;
        let (bias, peephole) = onnx_bias_peephole(hidden, b, p)?;
        let gates = PackedGates::new(4, input, hidden, Source::Units { w, r, order: &CANON_FROM_ONNX }, &bias, nb)?;
        let peephole = peephole.map(|p| pack_vector(&p, 3, hidden, nb));
        Ok(PackedLstm { gates, peephole, transposes: OnceLock::new() })
    }

    /// Packs Keras' `kernel [I, 4H]`, `recurrent_kernel [H, 4H]` and `bias [4H]` as they are, with no
    /// canonical copy: as `PackedLstm::new(&LstmWeights::from_keras(..)?, nb)`.
    ///
    /// # Errors
    /// As [`LstmWeights::from_keras`].
    pub(crate) fn from_keras(
        input: usize,
        hidden: usize,
        kernel: &[f32],
        recurrent_kernel: &[f32],
        bias: Option<&[f32]>,
        nb: usize,
    ) -> Result<Self> {
        let gates = pack_keras(4, input, hidden, kernel, recurrent_kernel, bias, nb)?;
        Ok(PackedLstm { gates, peephole: None, transposes: OnceLock::new() })
    }

    /// Packs PyTorch's `weight_ih [4H, I]`, `weight_hh [4H, H]`, `bias_ih`, `bias_hh [4H]` (gates i, f, g,
    /// o) straight from their layout, with no canonical copy: as
    /// `PackedLstm::new(&LstmWeights::from_pytorch(..)?, nb)`, bit for bit.
    ///
    /// # Errors
    /// As [`LstmWeights::from_pytorch`].
    pub(crate) fn from_pytorch(input: usize, hidden: usize, p: &TorchParams<'_>, nb: usize) -> Result<Self> {
        let gates = pack_pytorch(input, hidden, p, &[0, 1, 2, 3], nb)?;
        Ok(PackedLstm { gates, peephole: None, transposes: OnceLock::new() })
    }

    /// The canonical weights these were packed from (unpacked: exact).
    pub(crate) fn canonical(&self) -> LstmWeights {
        let p = &self.gates;
        let (i, h, nb) = (p.input, p.hidden, p.nb);
        LstmWeights {
            input: i,
            hidden: h,
            kernel: p.unpack(&p.w, i),
            recurrent: p.unpack(&p.r, h),
            bias: unpack_vector(&p.bias, 4, h, nb),
            peephole: self.peephole.as_ref().map(|v| unpack_vector(v, 3, h, nb)),
        }
    }

    /// `Rᵀ` and `Wᵀ` of `weights` (the weights this was packed from), packed on the first call and kept.
    ///
    /// # Errors
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) if they would not fit in memory.
    pub(crate) fn transposes(&self, weights: &LstmWeights) -> Result<&Transposes> {
        if let Some(t) = self.transposes.get() {
            return Ok(t);
        }
        let (hd, input, nb) = (weights.hidden, weights.input, self.gates.nb);
        let z4 = 4 * self.gates.hidden_padded();
        // `m [n][4 H]` transposed to `[4 hp][n]`, rows in dZ's packed order `[blocks][4][nb]`, packed
        // straight from the canonical weights (one pass, reading them in order).
        let transpose = |m: &[f32], n: usize| -> Result<PackedGates> {
            let mut t = PackedGates::zero_matrix(z4, n, nb)?;
            for u in 0..n {
                // Column u of the transpose: row `(block * 4 + g) nb + lane` of one panel's column.
                let mut col = t.column_mut(u);
                for g in 0..4 {
                    for (bl, lanes) in m[u * 4 * hd + g * hd..][..hd].chunks(nb).enumerate() {
                        for (lane, &v) in lanes.iter().enumerate() {
                            col.set((bl * 4 + g) * nb + lane, v);
                        }
                    }
                }
            }
            Ok(t)
        };
        let rt = transpose(&weights.recurrent, hd)?;
        let wt = transpose(&weights.kernel, input)?;
        Ok(self.transposes.get_or_init(|| Transposes { rt, wt }))
    }
}

/// `m [n][cols]` as a plain matrix `[k][n]` ([`PackedGates::zero_matrix`]) whose row `row(c)` holds
/// column `c` of `m` (columns without a row are left out, rows without a column are zero): the transposed
/// weights of a backward, rows in the order of its `dZ` columns.
///
/// # Errors
/// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) if the matrix would not fit in memory.
pub(crate) fn transpose_rows(
    m: &[f32],
    n: usize,
    cols: usize,
    k: usize,
    nb: usize,
    row: impl Fn(usize) -> Option<usize>,
) -> Result<PackedGates> {
    let mut t = PackedGates::zero_matrix(k, n, nb)?;
    for (u, src) in m.chunks_exact(cols.max(1)).take(n).enumerate() {
        let mut col = t.column_mut(u);
        for (c, &v) in src.iter().enumerate() {
            if let Some(kk) = row(c) {
                col.set(kk, v);
            }
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Canonical weights with distinct values so any mix-up of gates or transposition shows.
    fn numbered(input: usize, hidden: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let g = 4 * hidden;
        let k: Vec<f32> = (0..input * g).map(|i| i as f32).collect();
        let r: Vec<f32> = (0..hidden * g).map(|i| 1000.0 + i as f32).collect();
        let b: Vec<f32> = (0..g).map(|i| 5000.0 + i as f32).collect();
        (k, r, b)
    }

    #[test]
    fn pytorch_and_onnx_import_to_keras_form() {
        let (i, h) = (3, 2);
        let (k, r, b) = numbered(i, h);
        let keras = LstmWeights::from_keras(i, h, &k, &r, Some(&b)).unwrap();
        // PyTorch: transposed, same gate order, bias split in two.
        let wih = transpose(&k, i, 4 * h);
        let whh = transpose(&r, h, 4 * h);
        let half: Vec<f32> = b.iter().map(|v| v / 2.0).collect();
        let pt = LstmWeights::from_pytorch(i, h, &wih, &whh, Some(&half), Some(&half)).unwrap();
        assert_eq!(pt, keras);
        // ONNX: transposed, gate blocks i, o, f, c.
        let to_onnx = |m: &[f32], cols: usize| {
            let mut out = Vec::new();
            for c in [GATE_I, GATE_O, GATE_F, GATE_C] {
                out.extend_from_slice(&m[c * h * cols..(c + 1) * h * cols]);
            }
            out
        };
        let w = to_onnx(&wih, i);
        let rr = to_onnx(&whh, h);
        let mut bb = to_onnx(&b, 1);
        bb.extend(vec![0.0; 4 * h]);
        let onnx = LstmWeights::from_onnx(i, h, &w, &rr, Some(&bb), None).unwrap();
        assert_eq!(onnx, keras);
    }

    #[test]
    fn onnx_packs_straight_from_its_layout_and_unpacks_exactly() {
        for (i, h, nb) in [(3, 2, 4), (70, 33, 16), (1, 17, 8)] {
            let n = |len: usize, at: f32| (0..len).map(|v| at + v as f32).collect::<Vec<f32>>();
            let (w, r, b, p) = (n(4 * h * i, 0.5), n(4 * h * h, -7e4), n(8 * h, 3e5), n(3 * h, 9e5));
            let via = LstmWeights::from_onnx(i, h, &w, &r, Some(&b), Some(&p)).unwrap();
            let want = PackedLstm::new(&via, nb).unwrap();
            let got = PackedLstm::from_onnx(i, h, &w, &r, Some(&b), Some(&p), nb).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&got.gates.w), bits(&want.gates.w));
            assert_eq!(bits(&got.gates.r), bits(&want.gates.r));
            assert_eq!(bits(&got.gates.bias), bits(&want.gates.bias));
            assert_eq!(got.peephole, want.peephole);
            assert_eq!(got.canonical(), via);
            let plain = PackedLstm::from_onnx(i, h, &w, &r, None, None, nb).unwrap();
            assert_eq!(plain.canonical(), LstmWeights::from_onnx(i, h, &w, &r, None, None).unwrap());
            // PyTorch's layout: the same rows, gates i, f, g, o, two biases.
            for (bih, bhh) in [(Some(&b[..4 * h]), Some(&b[4 * h..])), (None, Some(&b[..4 * h])), (None, None)] {
                let via = LstmWeights::from_pytorch(i, h, &w, &r, bih, bhh).unwrap();
                let want = PackedLstm::new(&via, nb).unwrap();
                let tp = TorchParams { weight_ih: &w, weight_hh: &r, bias_ih: bih, bias_hh: bhh };
                let got = PackedLstm::from_pytorch(i, h, &tp, nb).unwrap();
                assert_eq!(bits(&got.gates.w), bits(&want.gates.w));
                assert_eq!(bits(&got.gates.r), bits(&want.gates.r));
                assert_eq!(bits(&got.gates.bias), bits(&want.gates.bias));
                assert_eq!(got.canonical(), via);
            }
        }
        assert!(PackedLstm::from_onnx(2, 1, &[0.0; 7], &[0.0; 4], None, None, 8).is_err());
        assert!(PackedLstm::from_onnx(2, 1, &[0.0; 8], &[0.0; 4], Some(&[0.0; 7]), None, 8).is_err());
        assert!(PackedLstm::from_onnx(usize::MAX, 2, &[], &[], None, None, 8).is_err());
    }

    #[test]
    fn onnx_peepholes_reordered() {
        let (i, h) = (1, 2);
        let w = vec![0.0; 4 * h * i];
        let r = vec![0.0; 4 * h * h];
        let p = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // i i o o f f
        let onnx = LstmWeights::from_onnx(i, h, &w, &r, None, Some(&p)).unwrap();
        assert_eq!(onnx.peephole().unwrap(), &[1.0, 2.0, 5.0, 6.0, 3.0, 4.0]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(LstmWeights::from_keras(2, 0, &[], &[], None).is_err());
        assert!(LstmWeights::from_keras(2, 1, &[0.0; 7], &[0.0; 4], None).is_err());
        assert!(LstmWeights::from_keras(2, 1, &[0.0; 8], &[0.0; 4], Some(&[0.0; 3])).is_err());
        assert!(LstmWeights::from_keras(usize::MAX, 2, &[], &[], None).is_err());
    }

    #[test]
    fn packing_interleaves_gates_per_block() {
        let (i, h) = (1, 3);
        let (k, r, b) = numbered(i, h);
        let wts = LstmWeights::from_keras(i, h, &k, &r, Some(&b)).unwrap();
        let p = PackedLstm::new(&wts, 2).unwrap();
        let p = &p.gates;
        assert_eq!(p.blocks, 2);
        // block 0: gate i lanes (h0, h1), gate f lanes, ...
        assert_eq!(&p.w[..8], &[0.0, 1.0, 3.0, 4.0, 6.0, 7.0, 9.0, 10.0]);
        // block 1 (after block 0's single k row): h2 then a zero lane.
        assert_eq!(&p.w[8..16], &[2.0, 0.0, 5.0, 0.0, 8.0, 0.0, 11.0, 0.0]);
        // The recurrent panels: block-major, then gates i, f over k, then gates c, o over k.
        assert_eq!(p.r[..4], [1000.0, 1001.0, 1003.0, 1004.0]); // block 0, k = 0: i (h0, h1), f
        assert_eq!(p.r[4], 1000.0 + 12.0); // block 0, k = 1, gate i
        assert_eq!(p.r[3 * 4..3 * 4 + 4], [1006.0, 1007.0, 1009.0, 1010.0]); // block 0, k = 0: c, o
        assert_eq!(p.r[3 * 8], 1002.0); // block 1, k = 0
    }
}
