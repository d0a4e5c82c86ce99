//! The reference backward of the cells whose only state is `h` (GRU in both placements of the reset
//! gate, simple RNN), in f64 with exact functions, as for the LSTM in the parent module: each forward
//! records a per-step tape, each backward replays it in reverse. The ONNX operators' semantics (layout 0):
//! each sequence's valid steps `0..len`, `Y` zero past the length, a length-0 sequence gives `Y_h = 0`.
//! The oracle of the GRU and RNN fast backward, itself checked against finite differences below.

use super::{act64, clip64, dact64, dclip64, f64s};
use crate::cells::gru::{GruSpec, GruWeights};
use crate::cells::rnn::{RnnSpec, RnnWeights};

/// A cell with `h` as its only state, in f64: one step forward with its tape, and that step's
/// vector-Jacobian product.
pub trait HCell64 {
    /// What a step keeps for its backward.
    type Tape: Clone;
    /// Gradients of the cell's canonical parameters.
    type Grads: Clone;
    /// `(I, H)`.
    fn sizes(&self) -> (usize, usize);
    /// Zero gradients.
    fn zero_grads(&self) -> Self::Grads;
    /// `h' = cell(x, h)` and the step's tape.
    fn step(&self, x: &[f64], h: &[f64]) -> (Self::Tape, Vec<f64>);
    /// Given `dh'`, adds the parameters' gradients to `g` and `x`'s to `dx`; returns `dh`.
    fn step_backward(
        &self,
        x: &[f64],
        h: &[f64],
        tape: &Self::Tape,
        dh_new: &[f64],
        g: &mut Self::Grads,
        dx: &mut [f64],
    ) -> Vec<f64>;
}

/// `v · m` for `m [v.len()][cols]`.
fn vec_mat(v: &[f64], m: &[f64], cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; cols];
    for (k, &a) in v.iter().enumerate() {
        out.iter_mut().zip(&m[k * cols..(k + 1) * cols]).for_each(|(o, w)| *o += a * w);
    }
    out
}

/// `m += vᵀ · d` (the outer product) for `m [v.len()][cols]`, over the columns `col0..col0 + d.len()`.
fn add_outer(m: &mut [f64], cols: usize, col0: usize, v: &[f64], d: &[f64]) {
    for (k, &a) in v.iter().enumerate() {
        m[k * cols + col0..k * cols + col0 + d.len()].iter_mut().zip(d).for_each(|(o, g)| *o += a * g);
    }
}

/// `out[k] += Σ_j d[j] m[k][col0 + j]` (`d · mᵀ` over those columns).
fn add_mat_t(out: &mut [f64], m: &[f64], cols: usize, col0: usize, d: &[f64]) {
    for (k, o) in out.iter_mut().enumerate() {
        *o += m[k * cols + col0..k * cols + col0 + d.len()].iter().zip(d).map(|(w, g)| w * g).sum::<f64>();
    }
}

/// One GRU direction's parameters in canonical form ([`GruWeights`]) and its cell, in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct GruParams64 {
    /// Input size `I`.
    pub input: usize,
    /// Hidden size `H`.
    pub hidden: usize,
    /// `[I, 3H]`, gates z, r, h.
    pub kernel: Vec<f64>,
    /// `[H, 3H]`.
    pub recurrent: Vec<f64>,
    /// `[3H]`.
    pub bias_input: Vec<f64>,
    /// `[3H]`.
    pub bias_recurrent: Vec<f64>,
    /// The cell.
    pub spec: GruSpec,
}

impl GruParams64 {
    /// From f32 weights.
    pub fn new(w: &GruWeights, spec: GruSpec) -> Self {
        GruParams64 {
            input: w.input_size(),
            hidden: w.hidden_size(),
            kernel: f64s(w.kernel()),
            recurrent: f64s(w.recurrent()),
            bias_input: f64s(w.bias_input()),
            bias_recurrent: f64s(w.bias_recurrent()),
            spec,
        }
    }
}

/// Gradients of [`GruParams64`]' parameters, the same shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct GruGrads64 {
    /// `[I, 3H]`.
    pub kernel: Vec<f64>,
    /// `[H, 3H]`.
    pub recurrent: Vec<f64>,
    /// `[3H]`.
    pub bias_input: Vec<f64>,
    /// `[3H]`.
    pub bias_recurrent: Vec<f64>,
}

/// One GRU step's tape: the activations' arguments, the gates, the candidate, and `h·R` (reset after)
/// or `r ∘ h` (reset before).
#[derive(Clone, Debug)]
pub struct GruTape {
    a: Vec<f64>,
    z: Vec<f64>,
    r: Vec<f64>,
    n: Vec<f64>,
    /// Reset after: `h·R_h + br_h`; reset before: `r ∘ h`.
    q: Vec<f64>,
}

impl HCell64 for GruParams64 {
    type Tape = GruTape;
    type Grads = GruGrads64;

    fn sizes(&self) -> (usize, usize) {
        (self.input, self.hidden)
    }

    fn zero_grads(&self) -> GruGrads64 {
        let (i, h) = (self.input, self.hidden);
        GruGrads64 {
            kernel: vec![0.0; i * 3 * h],
            recurrent: vec![0.0; h * 3 * h],
            bias_input: vec![0.0; 3 * h],
            bias_recurrent: vec![0.0; 3 * h],
        }
    }

    fn step(&self, x: &[f64], h: &[f64]) -> (GruTape, Vec<f64>) {
        let (hd, c3, s) = (self.hidden, 3 * self.hidden, &self.spec);
        let (bi, br) = (&self.bias_input, &self.bias_recurrent);
        let p = vec_mat(x, &self.kernel, c3);
        let mut a = vec![0.0; c3];
        let (mut z, mut r) = (vec![0.0; hd], vec![0.0; hd]);
        for j in 0..hd {
            let (hr, hz) = (vec_mat_col(h, &self.recurrent, c3, j), vec_mat_col(h, &self.recurrent, c3, hd + j));
            a[j] = p[j] + hr + bi[j] + br[j];
            a[hd + j] = p[hd + j] + hz + bi[hd + j] + br[hd + j];
            z[j] = act64(s.gate, clip64(s.clip, a[j]));
            r[j] = act64(s.gate, clip64(s.clip, a[hd + j]));
        }
        let q: Vec<f64> = if s.reset_after {
            (0..hd).map(|j| vec_mat_col(h, &self.recurrent, c3, 2 * hd + j) + br[2 * hd + j]).collect()
        } else {
            (0..hd).map(|j| r[j] * h[j]).collect()
        };
        let mut n = vec![0.0; hd];
        for j in 0..hd {
            let jh = 2 * hd + j;
            a[jh] = if s.reset_after {
                p[jh] + bi[jh] + r[j] * q[j]
            } else {
                let v: f64 = (0..hd).map(|k| q[k] * self.recurrent[k * c3 + jh]).sum();
                p[jh] + v + bi[jh] + br[jh]
            };
            n[j] = act64(s.candidate, clip64(s.clip, a[jh]));
        }
        let h_new = (0..hd).map(|j| (1.0 - z[j]) * n[j] + z[j] * h[j]).collect();
        (GruTape { a, z, r, n, q }, h_new)
    }

    fn step_backward(
        &self,
        x: &[f64],
        h: &[f64],
        t: &GruTape,
        dh_new: &[f64],
        g: &mut GruGrads64,
        dx: &mut [f64],
    ) -> Vec<f64> {
        let (hd, c3, s) = (self.hidden, 3 * self.hidden, &self.spec);
        let slope = |act, v: f64| dact64(act, clip64(s.clip, v)) * dclip64(s.clip, v);
        let mut dh: Vec<f64> = (0..hd).map(|j| dh_new[j] * t.z[j]).collect();
        // dA: the gradients of the three activations' arguments.
        let mut da = vec![0.0; c3];
        for j in 0..hd {
            da[2 * hd + j] = dh_new[j] * (1.0 - t.z[j]) * slope(s.candidate, t.a[2 * hd + j]);
            da[j] = dh_new[j] * (h[j] - t.n[j]) * slope(s.gate, t.a[j]);
        }
        // The recurrent products' gradients: dq over the columns h·R feeds.
        let mut dq = vec![0.0; c3];
        let dan: Vec<f64> = da[2 * hd..].to_vec();
        let dr: Vec<f64> = if s.reset_after {
            for j in 0..hd {
                dq[2 * hd + j] = dan[j] * t.r[j];
                g.bias_recurrent[2 * hd + j] += dan[j] * t.r[j];
            }
            (0..hd).map(|j| dan[j] * t.q[j]).collect()
        } else {
            // v = (r ∘ h)·R_h: d(r ∘ h) = dn · R_hᵀ, dR_h += (r ∘ h)ᵀ dn.
            let mut drh = vec![0.0; hd];
            add_mat_t(&mut drh, &self.recurrent, c3, 2 * hd, &dan);
            add_outer(&mut g.recurrent, c3, 2 * hd, &t.q, &dan);
            for j in 0..hd {
                dh[j] += drh[j] * t.r[j];
                g.bias_recurrent[2 * hd + j] += dan[j];
            }
            (0..hd).map(|j| drh[j] * h[j]).collect()
        };
        for j in 0..hd {
            da[hd + j] = dr[j] * slope(s.gate, t.a[hd + j]);
        }
        dq[..2 * hd].copy_from_slice(&da[..2 * hd]);
        g.bias_recurrent[..2 * hd].iter_mut().zip(&da).for_each(|(b, d)| *b += d);
        g.bias_input.iter_mut().zip(&da).for_each(|(b, d)| *b += d);
        add_outer(&mut g.kernel, c3, 0, x, &da);
        add_mat_t(dx, &self.kernel, c3, 0, &da);
        let used = if s.reset_after { c3 } else { 2 * hd };
        add_outer(&mut g.recurrent, c3, 0, h, &dq[..used]);
        add_mat_t(&mut dh, &self.recurrent, c3, 0, &dq[..used]);
        dh
    }
}

/// `Σ_k v[k] m[k][col]`.
fn vec_mat_col(v: &[f64], m: &[f64], cols: usize, col: usize) -> f64 {
    v.iter().enumerate().map(|(k, a)| a * m[k * cols + col]).sum()
}

/// One simple RNN direction's parameters in canonical form ([`RnnWeights`]) and its cell, in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct RnnParams64 {
    /// Input size `I`.
    pub input: usize,
    /// Hidden size `H`.
    pub hidden: usize,
    /// `[I, H]`.
    pub kernel: Vec<f64>,
    /// `[H, H]`.
    pub recurrent: Vec<f64>,
    /// `[H]` (both biases summed).
    pub bias: Vec<f64>,
    /// The cell.
    pub spec: RnnSpec,
}

impl RnnParams64 {
    /// From f32 weights.
    pub fn new(w: &RnnWeights, spec: RnnSpec) -> Self {
        RnnParams64 {
            input: w.input_size(),
            hidden: w.hidden_size(),
            kernel: f64s(w.kernel()),
            recurrent: f64s(w.recurrent()),
            bias: f64s(w.bias()),
            spec,
        }
    }
}

/// Gradients of [`RnnParams64`]' parameters, the same shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct RnnGrads64 {
    /// `[I, H]`.
    pub kernel: Vec<f64>,
    /// `[H, H]`.
    pub recurrent: Vec<f64>,
    /// `[H]` (of each of the two framework biases alike).
    pub bias: Vec<f64>,
}

impl HCell64 for RnnParams64 {
    /// The activation's arguments.
    type Tape = Vec<f64>;
    type Grads = RnnGrads64;

    fn sizes(&self) -> (usize, usize) {
        (self.input, self.hidden)
    }

    fn zero_grads(&self) -> RnnGrads64 {
        let (i, h) = (self.input, self.hidden);
        RnnGrads64 { kernel: vec![0.0; i * h], recurrent: vec![0.0; h * h], bias: vec![0.0; h] }
    }

    fn step(&self, x: &[f64], h: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let hd = self.hidden;
        let (p, q) = (vec_mat(x, &self.kernel, hd), vec_mat(h, &self.recurrent, hd));
        let a: Vec<f64> = (0..hd).map(|j| p[j] + q[j] + self.bias[j]).collect();
        let h_new = a.iter().map(|&v| act64(self.spec.activation, clip64(self.spec.clip, v))).collect();
        (a, h_new)
    }

    fn step_backward(
        &self,
        x: &[f64],
        h: &[f64],
        a: &Vec<f64>,
        dh_new: &[f64],
        g: &mut RnnGrads64,
        dx: &mut [f64],
    ) -> Vec<f64> {
        let (hd, s) = (self.hidden, &self.spec);
        let da: Vec<f64> =
            (0..hd).map(|j| dh_new[j] * dact64(s.activation, clip64(s.clip, a[j])) * dclip64(s.clip, a[j])).collect();
        g.bias.iter_mut().zip(&da).for_each(|(b, d)| *b += d);
        add_outer(&mut g.kernel, hd, 0, x, &da);
        add_outer(&mut g.recurrent, hd, 0, h, &da);
        add_mat_t(dx, &self.kernel, hd, 0, &da);
        let mut dh = vec![0.0; hd];
        add_mat_t(&mut dh, &self.recurrent, hd, 0, &da);
        dh
    }
}

/// One direction of an ONNX operator: its cell and whether it runs backwards.
pub type OnnxHDir64<'a, C> = (&'a C, bool);

/// Each step's `(h_prev, tape)`, `[(d * T + t) * B + b]`, `None` past the sequence's length.
type HTapes<C> = Vec<Option<(Vec<f64>, <C as HCell64>::Tape)>>;

/// The ONNX `GRU` / `RNN` operator in f64 with its tapes (layout 0: `x [T, B, I]`, `initial_h [D, B, H]`):
/// `(Y [T, D, B, H], Y_h [D, B, H])` and each step's input state and tape.
///
/// # Panics
/// If a buffer's length disagrees with the sizes, or a length exceeds `seq_length`.
pub fn onnx_h_tape<C: HCell64>(
    dirs: &[OnnxHDir64<'_, C>],
    x: &[f64],
    (seq_length, batch): (usize, usize),
    lengths: &[usize],
    initial_h: Option<&[f64]>,
) -> ((Vec<f64>, Vec<f64>), HTapes<C>) {
    let (d_n, (i, hd)) = (dirs.len(), dirs[0].0.sizes());
    assert_eq!((x.len(), lengths.len()), (seq_length * batch * i, batch), "x, lengths");
    assert!(lengths.iter().all(|&l| l <= seq_length), "a length exceeds seq_length");
    let mut y = vec![0.0; seq_length * d_n * batch * hd];
    let mut y_h = vec![0.0; d_n * batch * hd];
    let mut tape: HTapes<C> = vec![None; d_n * seq_length * batch];
    for (d, &(cell, reverse)) in dirs.iter().enumerate() {
        for (b, &len) in lengths.iter().enumerate().filter(|(_, &l)| l > 0) {
            let s = d * batch + b;
            let mut h = initial_h.map_or(vec![0.0; hd], |h0| h0[s * hd..(s + 1) * hd].to_vec());
            for k in 0..len {
                let t = if reverse { len - 1 - k } else { k };
                let (st, h_new) = cell.step(&x[(t * batch + b) * i..(t * batch + b + 1) * i], &h);
                tape[(d * seq_length + t) * batch + b] = Some((h, st));
                h = h_new;
                let o = ((t * d_n + d) * batch + b) * hd;
                y[o..o + hd].copy_from_slice(&h);
            }
            y_h[s * hd..(s + 1) * hd].copy_from_slice(&h);
        }
    }
    ((y, y_h), tape)
}

/// Gradients of the ONNX `GRU` / `RNN` operator's inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct OnnxHGrads64<G> {
    /// `[T, B, I]`; `+0.0` past each length.
    pub dx: Vec<f64>,
    /// One per direction, summed over the batch.
    pub params: Vec<G>,
    /// `[D, B, H]`: of `initial_h` (zero for a length-0 sequence).
    pub d_initial_h: Vec<f64>,
}

/// The gradients of [`onnx_h_tape`]'s outputs (same inputs) for upstream `dy [T, D, B, H]` and `dy_h
/// [D, B, H]` (`None` = zeros). `dy` past a length is ignored: those outputs are constants.
///
/// # Panics
/// As [`onnx_h_tape`].
pub fn onnx_h_backward<C: HCell64>(
    dirs: &[OnnxHDir64<'_, C>],
    x: &[f64],
    (seq_length, batch): (usize, usize),
    lengths: &[usize],
    initial_h: Option<&[f64]>,
    dy: Option<&[f64]>,
    dy_h: Option<&[f64]>,
) -> OnnxHGrads64<C::Grads> {
    let (d_n, (i, hd)) = (dirs.len(), dirs[0].0.sizes());
    let (_, tape) = onnx_h_tape(dirs, x, (seq_length, batch), lengths, initial_h);
    let mut g = OnnxHGrads64 {
        dx: vec![0.0; x.len()],
        params: dirs.iter().map(|(c, _)| c.zero_grads()).collect(),
        d_initial_h: vec![0.0; d_n * batch * hd],
    };
    for (d, &(cell, reverse)) in dirs.iter().enumerate() {
        for (b, &len) in lengths.iter().enumerate().filter(|(_, &l)| l > 0) {
            let s = d * batch + b;
            let mut dh = dy_h.map_or(vec![0.0; hd], |u| u[s * hd..(s + 1) * hd].to_vec());
            for k in (0..len).rev() {
                let t = if reverse { len - 1 - k } else { k };
                if let Some(dy) = dy {
                    let o = ((t * d_n + d) * batch + b) * hd;
                    dh.iter_mut().zip(&dy[o..o + hd]).for_each(|(a, u)| *a += u);
                }
                let (h_prev, st) = tape[(d * seq_length + t) * batch + b].as_ref().expect("valid step on the tape");
                let xs = (t * batch + b) * i..(t * batch + b + 1) * i;
                dh = cell.step_backward(&x[xs.clone()], h_prev, st, &dh, &mut g.params[d], &mut g.dx[xs]);
            }
            g.d_initial_h[s * hd..(s + 1) * hd].copy_from_slice(&dh);
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cells::activation::Activation;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn uniform(rng: &mut StdRng, n: usize, s: f64) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-s..s)).collect()
    }

    /// The loss `Σ dy·Y + Σ dy_h·Y_h` of a bidirectional operator, and its gradient by the backward.
    struct Case {
        t: usize,
        b: usize,
        lengths: Vec<usize>,
        x: Vec<f64>,
        h0: Vec<f64>,
        dy: Vec<f64>,
        dy_h: Vec<f64>,
    }

    fn case(rng: &mut StdRng, (i, h): (usize, usize)) -> Case {
        let (t, b) = (5, 3);
        let lengths = vec![5, 0, 3];
        Case {
            t,
            b,
            lengths,
            x: uniform(rng, t * b * i, 1.0),
            h0: uniform(rng, 2 * b * h, 1.0),
            dy: uniform(rng, t * 2 * b * h, 1.0),
            dy_h: uniform(rng, 2 * b * h, 1.0),
        }
    }

    fn loss<C: HCell64>(dirs: &[OnnxHDir64<'_, C>], c: &Case, x: &[f64], h0: &[f64]) -> f64 {
        let ((y, y_h), _) = onnx_h_tape(dirs, x, (c.t, c.b), &c.lengths, Some(h0));
        y.iter().zip(&c.dy).chain(y_h.iter().zip(&c.dy_h)).map(|(a, b)| a * b).sum()
    }

    /// Central differences of `f` at every element of `v`, against `want`.
    fn check_fd(what: &str, v: &[f64], want: &[f64], f: &dyn Fn(&[f64]) -> f64) {
        let eps = 1e-6;
        let mut nonzero = 0;
        for k in 0..v.len() {
            let (mut up, mut down) = (v.to_vec(), v.to_vec());
            up[k] += eps;
            down[k] -= eps;
            let fd = (f(&up) - f(&down)) / (2.0 * eps);
            assert!(
                (fd - want[k]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{what}[{k}]: finite difference {fd}, backward {}",
                want[k]
            );
            nonzero += usize::from(want[k] != 0.0);
        }
        assert!(nonzero > 0 || v.is_empty(), "{what}: every gradient is zero");
    }

    const SMOOTH: [(Activation, Activation); 3] = [
        (Activation::Sigmoid, Activation::Tanh),
        (Activation::Tanh, Activation::Softsign),
        (Activation::ScaledTanh { alpha: 0.9, beta: 1.3 }, Activation::Sigmoid),
    ];

    #[test]
    fn gru_backward_matches_finite_differences() {
        let mut rng = StdRng::seed_from_u64(31);
        let (i, h) = (3, 4);
        for (reset_after, (f, g)) in [false, true].into_iter().flat_map(|r| SMOOTH.into_iter().map(move |a| (r, a))) {
            let params = |rng: &mut StdRng| {
                let w = |rng: &mut StdRng, n| uniform(rng, n, 0.7);
                let spec = GruSpec::onnx(f, g, Some(40.0), reset_after);
                GruParams64 {
                    input: i,
                    hidden: h,
                    kernel: w(rng, i * 3 * h),
                    recurrent: w(rng, h * 3 * h),
                    bias_input: w(rng, 3 * h),
                    bias_recurrent: w(rng, 3 * h),
                    spec,
                }
            };
            let (pf, pb) = (params(&mut rng), params(&mut rng));
            let c = case(&mut rng, (i, h));
            let dirs = [(&pf, false), (&pb, true)];
            let got = onnx_h_backward(&dirs, &c.x, (c.t, c.b), &c.lengths, Some(&c.h0), Some(&c.dy), Some(&c.dy_h));
            let what = format!("reset_after {reset_after} {f:?} {g:?}");
            check_fd(&format!("{what} dx"), &c.x, &got.dx, &|x| loss(&dirs, &c, x, &c.h0));
            check_fd(&format!("{what} dh0"), &c.h0, &got.d_initial_h, &|h0| loss(&dirs, &c, &c.x, h0));
            // Every parameter of the backward direction.
            type Field = fn(&mut GruParams64) -> &mut Vec<f64>;
            let fields: [(&str, Field, &Vec<f64>); 4] = [
                ("kernel", |p| &mut p.kernel, &got.params[1].kernel),
                ("recurrent", |p| &mut p.recurrent, &got.params[1].recurrent),
                ("bias_input", |p| &mut p.bias_input, &got.params[1].bias_input),
                ("bias_recurrent", |p| &mut p.bias_recurrent, &got.params[1].bias_recurrent),
            ];
            for (name, field, want) in fields {
                let v = field(&mut pb.clone()).clone();
                check_fd(&format!("{what} {name}"), &v, want, &|v| {
                    let mut p = pb.clone();
                    *field(&mut p) = v.to_vec();
                    loss(&[(&pf, false), (&p, true)], &c, &c.x, &c.h0)
                });
            }
        }
    }

    #[test]
    fn rnn_backward_matches_finite_differences() {
        let mut rng = StdRng::seed_from_u64(32);
        let (i, h) = (3, 4);
        for act in
            [Activation::Tanh, Activation::Sigmoid, Activation::Softsign, Activation::Affine { alpha: 0.7, beta: 0.1 }]
        {
            let params = |rng: &mut StdRng| RnnParams64 {
                input: i,
                hidden: h,
                kernel: uniform(rng, i * h, 0.7),
                recurrent: uniform(rng, h * h, 0.7),
                bias: uniform(rng, h, 0.7),
                spec: RnnSpec::new(act, None),
            };
            let (pf, pb) = (params(&mut rng), params(&mut rng));
            let c = case(&mut rng, (i, h));
            let dirs = [(&pf, false), (&pb, true)];
            let got = onnx_h_backward(&dirs, &c.x, (c.t, c.b), &c.lengths, Some(&c.h0), Some(&c.dy), Some(&c.dy_h));
            check_fd(&format!("{act:?} dx"), &c.x, &got.dx, &|x| loss(&dirs, &c, x, &c.h0));
            check_fd(&format!("{act:?} dh0"), &c.h0, &got.d_initial_h, &|h0| loss(&dirs, &c, &c.x, h0));
            type Field = fn(&mut RnnParams64) -> &mut Vec<f64>;
            let fields: [(&str, Field, &Vec<f64>); 3] = [
                ("kernel", |p| &mut p.kernel, &got.params[0].kernel),
                ("recurrent", |p| &mut p.recurrent, &got.params[0].recurrent),
                ("bias", |p| &mut p.bias, &got.params[0].bias),
            ];
            for (name, field, want) in fields {
                let v = field(&mut pf.clone()).clone();
                check_fd(&format!("{act:?} {name}"), &v, want, &|v| {
                    let mut p = pf.clone();
                    *field(&mut p) = v.to_vec();
                    loss(&[(&p, false), (&pb, true)], &c, &c.x, &c.h0)
                });
            }
        }
    }

    /// The f64 forward equals the f32 definition the kernels match (within f32 rounding).
    #[test]
    fn f64_forward_agrees_with_the_f32_definition() {
        let mut rng = StdRng::seed_from_u64(33);
        let (i, h) = (5, 6);
        for reset_after in [false, true] {
            let f32s = |rng: &mut StdRng, n| (0..n).map(|_| rng.random_range(-0.7f32..0.7)).collect::<Vec<f32>>();
            let (k, r, b) = (f32s(&mut rng, 3 * h * i), f32s(&mut rng, 3 * h * h), f32s(&mut rng, 6 * h));
            let w = GruWeights::from_onnx(i, h, &k, &r, Some(&b)).unwrap();
            let spec = GruSpec::onnx(Activation::Sigmoid, Activation::Tanh, None, reset_after);
            let p = GruParams64::new(&w, spec);
            let (x, h0) = (f32s(&mut rng, i), f32s(&mut rng, h));
            let want = spec.step_rounded(&w, &x, &h0, crate::reference::Rounding::Separate);
            let (_, got) = p.step(&f64s(&x), &f64s(&h0));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - f64::from(*w)).abs() < 2e-6, "reset_after {reset_after}: {g} vs {w}");
            }
        }
    }
}
