//! PyTorch `nn.GRU` and `nn.RNN` on packed sequences against PyTorch itself (float64 autograd fixtures of
//! `tools/fixtures/torch_gru_rnn_golden.py`: outputs and gradients), against their plain references (bit
//! for bit in each backend's rounding) on random stacks of every shape, on 1 and 2 threads; the training
//! pass's properties (valid steps only, bitwise the same on every thread count and for a sequence alone);
//! and their errors.

use crate::common::{fixtures, floats, opt_floats, usize_of, FRAMEWORK_TOL};
use masked_rnn::fuzzing::close;
use masked_rnn::kernel::{self, Backend};
use masked_rnn::torch::{
    Nonlinearity, PytorchLayout, TorchGrads, TorchGru, TorchOutputs, TorchParams, TorchResult, TorchRnn, TorchTape,
    TorchUpstream,
};
use masked_rnn::{ErrorKind, ForwardStats, Result, Workspace};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Either module, as the tests drive them.
enum Module {
    Gru(TorchGru),
    Rnn(TorchRnn),
}

/// One call's inputs: `x [T, B, I]` (`[B, T, I]` with `batch_first`), lengths, `h0 [L*D, B, H]`.
struct Call<'a> {
    x: &'a [f32],
    t: usize,
    b: usize,
    batch_first: bool,
    lengths: &'a [usize],
    h0: Option<&'a [f32]>,
}

impl Module {
    /// `with_backend` of the cell `kind` ("gru", "tanh", "relu").
    fn new(
        kind: &str,
        shape: (usize, usize, usize, bool),
        params: &[TorchParams<'_>],
        backend: &'static Backend,
    ) -> Result<Self> {
        let (i, h, layers, bidi) = shape;
        Ok(match kind {
            "gru" => Module::Gru(TorchGru::with_backend(i, h, layers, bidi, params, backend)?),
            name => {
                let nl = Nonlinearity::from_name(name)?;
                Module::Rnn(TorchRnn::with_backend(i, h, layers, bidi, nl, params, backend)?)
            }
        })
    }

    fn forward(&self, c: &Call<'_>, threads: usize) -> Result<(TorchResult, ForwardStats)> {
        match self {
            Module::Gru(m) => m.forward_packed(c.x, c.t, c.b, c.batch_first, c.lengths, c.h0, threads),
            Module::Rnn(m) => m.forward_packed(c.x, c.t, c.b, c.batch_first, c.lengths, c.h0, threads),
        }
    }

    fn forward_in(
        &self,
        c: &Call<'_>,
        out: TorchOutputs<'_>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        match self {
            Module::Gru(m) => m.forward_packed_in(c.x, c.t, c.b, c.batch_first, c.lengths, c.h0, out, threads, ws),
            Module::Rnn(m) => m.forward_packed_in(c.x, c.t, c.b, c.batch_first, c.lengths, c.h0, out, threads, ws),
        }
    }

    /// The training forward (every output) into a new tape.
    fn forward_train(&self, c: &Call<'_>, threads: usize) -> Result<(TorchResult, TorchTape, ForwardStats)> {
        let (mut tape, ws) = (TorchTape::new(), &mut Workspace::new());
        let (h, layers, d) = self.sizes();
        let mut r = TorchResult {
            y: vec![f32::NAN; c.t * c.b * d * h],
            h_n: vec![f32::NAN; layers * d * c.b * h],
            c_n: Vec::new(),
        };
        let out = TorchOutputs { y: Some(&mut r.y), h_n: Some(&mut r.h_n), c_n: None };
        let (t, b, bf) = (c.t, c.b, c.batch_first);
        let stats = match self {
            Module::Gru(m) => m.forward_packed_train(c.x, t, b, bf, c.lengths, c.h0, out, &mut tape, threads, ws),
            Module::Rnn(m) => m.forward_packed_train(c.x, t, b, bf, c.lengths, c.h0, out, &mut tape, threads, ws),
        }?;
        Ok((r, tape, stats))
    }

    fn backward(
        &self,
        c: &Call<'_>,
        tape: &TorchTape,
        up: TorchUpstream<'_>,
        grads: TorchGrads<'_>,
        threads: usize,
    ) -> Result<ForwardStats> {
        let (t, b, bf) = (c.t, c.b, c.batch_first);
        match self {
            Module::Gru(m) => m.backward_packed(c.x, t, b, bf, c.lengths, c.h0, tape, up, grads, threads),
            Module::Rnn(m) => m.backward_packed(c.x, t, b, bf, c.lengths, c.h0, tape, up, grads, threads),
        }
    }

    /// `(H, L, D)`.
    fn sizes(&self) -> (usize, usize, usize) {
        let (h, l, bidi) = match self {
            Module::Gru(m) => (m.hidden_size(), m.num_layers(), m.bidirectional()),
            Module::Rnn(m) => (m.hidden_size(), m.num_layers(), m.bidirectional()),
        };
        (h, l, if bidi { 2 } else { 1 })
    }

    fn reference(&self, c: &Call<'_>) -> Result<TorchResult> {
        match self {
            Module::Gru(m) => m.forward_packed_reference(c.x, c.t, c.b, c.batch_first, c.lengths, c.h0),
            Module::Rnn(m) => m.forward_packed_reference(c.x, c.t, c.b, c.batch_first, c.lengths, c.h0),
        }
    }
}

fn params_of(tensors: &[[Option<Vec<f32>>; 4]]) -> Vec<TorchParams<'_>> {
    tensors
        .iter()
        .map(|[a, b, c, d]| TorchParams {
            weight_ih: a.as_deref().expect("weight_ih"),
            weight_hh: b.as_deref().expect("weight_hh"),
            bias_ih: c.as_deref(),
            bias_hh: d.as_deref(),
        })
        .collect()
}

/// One fixture: the module and its call's inputs.
struct Fixture {
    model: Module,
    /// `(T, B, batch_first, L * D)`.
    shape: (usize, usize, bool, usize),
    lengths: Vec<usize>,
    x: Vec<f32>,
    h0: Option<Vec<f32>>,
}

impl Fixture {
    fn read(f: &serde_json::Value) -> Self {
        let (t, b, i, h) =
            (usize_of(&f["seq_length"]), usize_of(&f["batch"]), usize_of(&f["input"]), usize_of(&f["hidden"]));
        let (layers, bidi, bf) =
            (usize_of(&f["num_layers"]), f["bidirectional"].as_bool().unwrap(), f["batch_first"].as_bool().unwrap());
        let tensors: Vec<[Option<Vec<f32>>; 4]> = f["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| ["weight_ih", "weight_hh", "bias_ih", "bias_hh"].map(|k| opt_floats(&w[k])))
            .collect();
        assert_eq!(f["bias"].as_bool().unwrap(), tensors[0][2].is_some());
        let cell = f["nonlinearity"].as_str().unwrap_or("gru");
        let model = Module::new(cell, (i, h, layers, bidi), &params_of(&tensors), kernel::selected()).unwrap();
        let lengths: Vec<usize> = f["lengths"].as_array().unwrap().iter().map(usize_of).collect();
        let (x, h0) = (floats(&f["x"]), opt_floats(&f["h0"]));
        let ld = layers * if bidi { 2 } else { 1 };
        Fixture { model, shape: (t, b, bf, ld), lengths, x, h0 }
    }

    fn call(&self) -> Call<'_> {
        let (t, b, batch_first, _) = self.shape;
        Call { x: &self.x, t, b, batch_first, lengths: &self.lengths, h0: self.h0.as_deref() }
    }

    /// Cell steps of a run: each valid step once per layer and direction.
    fn steps(&self) -> usize {
        self.shape.3 * self.lengths.iter().sum::<usize>()
    }
}

/// Every fixture of `dir` within the framework tolerance of PyTorch's float64 forward, on the fast path (1
/// and 2 threads, valid steps only) and on the reference; returns the outputs compared.
fn fixtures_match(dir: &str, kind: &str) -> usize {
    let mut compared = 0;
    for (name, f) in fixtures(dir, kind) {
        let fx = Fixture::read(&f);
        let (model, call) = (&fx.model, fx.call());
        let (want_y, want_h) = (floats(&f["y"]), floats(&f["h_n"]));
        for threads in [1, 2] {
            let (got, stats) = model.forward(&call, threads).unwrap();
            assert_eq!(stats.steps_computed, fx.steps(), "{name}");
            assert!(got.c_n.is_empty(), "{name}: c_n");
            close(&format!("{name} y"), &got.y, &want_y, FRAMEWORK_TOL).unwrap();
            close(&format!("{name} h_n"), &got.h_n, &want_h, FRAMEWORK_TOL).unwrap();
            compared += 2;
        }
        let reference = model.reference(&call).unwrap();
        close(&format!("{name} reference y"), &reference.y, &want_y, FRAMEWORK_TOL).unwrap();
        close(&format!("{name} reference h_n"), &reference.h_n, &want_h, FRAMEWORK_TOL).unwrap();
    }
    compared
}

#[test]
fn gru_fixtures_match_pytorch() {
    assert!(fixtures_match("torch_gru", "torch_gru_packed") >= 20 * 4);
}

#[test]
fn rnn_fixtures_match_pytorch() {
    assert!(fixtures_match("torch_rnn", "torch_rnn_packed") >= 20 * 4);
}

fn uniform(rng: &mut StdRng, n: usize, s: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-s..s)).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

const EDGE_HIDDEN: [usize; 8] = [1, 3, 7, 8, 9, 16, 17, 33];

/// A random stack of cell `kind` and a call on it: padded positions of `x` hold NaN and infinities (never
/// read).
struct Case {
    kind: &'static str,
    shape: (usize, usize, usize, bool),
    tensors: Vec<[Option<Vec<f32>>; 4]>,
    t: usize,
    b: usize,
    batch_first: bool,
    lengths: Vec<usize>,
    x: Vec<f32>,
    h0: Option<Vec<f32>>,
}

impl Case {
    fn random(rng: &mut StdRng, n: usize, kind: &'static str) -> Self {
        let gates = if kind == "gru" { 3 } else { 1 };
        let (t, b, i) = (rng.random_range(1..9), rng.random_range(1..8), rng.random_range(1..12));
        let h = EDGE_HIDDEN[n % EDGE_HIDDEN.len()];
        let (layers, bidi, batch_first) = (rng.random_range(1..4), rng.random_bool(0.5), rng.random_bool(0.5));
        let d = if bidi { 2 } else { 1 };
        let bias = rng.random_bool(0.8);
        let scale = 1.0 / (h as f32).sqrt() + 0.2;
        let tensors = (0..layers * d)
            .map(|k| {
                let inp = if k < d { i } else { d * h };
                let mut v = |n: usize| Some(uniform(rng, n, scale));
                let (w_ih, w_hh) = (v(gates * h * inp), v(gates * h * h));
                let (b_ih, b_hh) = if bias { (v(gates * h), v(gates * h)) } else { (None, None) };
                [w_ih, w_hh, b_ih, b_hh]
            })
            .collect();
        // Unsorted lengths in 1..=T, sometimes all T or all 1.
        let lengths = match rng.random_range(0..6) {
            0 => vec![t; b],
            1 => vec![1; b],
            _ => (0..b).map(|_| rng.random_range(1..=t)).collect(),
        };
        let mut x = vec![0.0; t * b * i];
        let wild = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30];
        for (s, &len) in lengths.iter().enumerate() {
            for tt in 0..t {
                let o = if batch_first { (s * t + tt) * i } else { (tt * b + s) * i };
                for v in &mut x[o..o + i] {
                    *v = if tt < len { rng.random_range(-1.5..1.5) } else { wild[rng.random_range(0..wild.len())] };
                }
            }
        }
        let h0 = rng.random_bool(0.5).then(|| uniform(rng, layers * d * b * h, 1.0));
        Case { kind, shape: (i, h, layers, bidi), tensors, t, b, batch_first, lengths, x, h0 }
    }

    fn call(&self) -> Call<'_> {
        let (x, lengths, h0) = (&self.x[..], &self.lengths[..], self.h0.as_deref());
        Call { x, t: self.t, b: self.b, batch_first: self.batch_first, lengths, h0 }
    }

    fn module(&self, backend: &'static Backend) -> Module {
        Module::new(self.kind, self.shape, &params_of(&self.tensors), backend).unwrap()
    }

    /// Sequence `s` alone: its `x`, `h0` and a call of batch 1 on them.
    fn alone(&self, s: usize) -> (Vec<f32>, Option<Vec<f32>>) {
        let (t, b, i, h) = (self.t, self.b, self.shape.0, self.shape.1);
        let x: Vec<f32> = (0..t)
            .flat_map(|tt| {
                let o = if self.batch_first { (s * t + tt) * i } else { (tt * b + s) * i };
                self.x[o..o + i].to_vec()
            })
            .collect();
        let h0 = self.h0.as_ref().map(|h0| h0.chunks(b * h).flat_map(|blk| blk[s * h..(s + 1) * h].to_vec()).collect());
        (x, h0)
    }
}

/// The fast path equals the reference bit for bit on every backend, on 1 and 2 threads, through
/// `forward_packed` and a warm `forward_packed_in`, computing each valid step once per layer and
/// direction; each sequence's results are those it has alone.
fn fast_equals_reference(kind: &'static str, seed: u64, cases: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    for n in 0..cases {
        let c = Case::random(&mut rng, n, kind);
        let call = c.call();
        let (_, h, layers, bidi) = c.shape;
        let d = if bidi { 2 } else { 1 };
        let valid: usize = c.lengths.iter().sum();
        for backend in kernel::available() {
            let what = format!("{kind} case {n} {} shape {:?} lengths {:?}", backend.name, c.shape, c.lengths);
            let model = c.module(backend);
            let want = model.reference(&call).unwrap();
            let mut ws = Workspace::new();
            for threads in [1, 2] {
                let (got, stats) = model.forward(&call, threads).unwrap();
                assert_eq!(stats.steps_computed, layers * d * valid, "{what}");
                assert_eq!(bits(&got.y), bits(&want.y), "y: {what} threads {threads}");
                assert_eq!(bits(&got.h_n), bits(&want.h_n), "h_n: {what} threads {threads}");
                assert!(got.c_n.is_empty() && want.c_n.is_empty());
                for _warm in 0..2 {
                    let (mut y, mut h_n) = (vec![f32::NAN; got.y.len()], vec![f32::NAN; got.h_n.len()]);
                    let out = TorchOutputs { y: Some(&mut y), h_n: Some(&mut h_n), c_n: None };
                    model.forward_in(&call, out, threads, &mut ws).unwrap();
                    assert_eq!(bits(&y), bits(&want.y), "forward_packed_in y: {what} threads {threads}");
                    assert_eq!(bits(&h_n), bits(&want.h_n), "forward_packed_in h_n: {what} threads {threads}");
                }
            }
            if n % 4 == 0 {
                let (t, b, width) = (c.t, c.b, d * h);
                for s in 0..b {
                    let (x, h0) = c.alone(s);
                    let one = Call {
                        x: &x,
                        t,
                        b: 1,
                        batch_first: c.batch_first,
                        lengths: &c.lengths[s..=s],
                        h0: h0.as_deref(),
                    };
                    let (alone, _) = model.forward(&one, 1).unwrap();
                    for tt in 0..t {
                        let o = if c.batch_first { (s * t + tt) * width } else { (tt * b + s) * width };
                        assert_eq!(
                            bits(&alone.y[tt * width..(tt + 1) * width]),
                            bits(&want.y[o..o + width]),
                            "{what}: sequence {s} alone"
                        );
                    }
                    let h_alone: Vec<f32> =
                        want.h_n.chunks(b * h).flat_map(|blk| blk[s * h..(s + 1) * h].to_vec()).collect();
                    assert_eq!(bits(&alone.h_n), bits(&h_alone), "{what}: h_n of sequence {s} alone");
                }
            }
        }
    }
}

#[test]
fn gru_equals_reference_on_random_stacks() {
    fast_equals_reference("gru", 31, 96);
}

#[test]
fn rnn_tanh_equals_reference_on_random_stacks() {
    fast_equals_reference("tanh", 32, 64);
}

#[test]
fn rnn_relu_equals_reference_on_random_stacks() {
    fast_equals_reference("relu", 33, 64);
}

/// A hand-computed GRU step in PyTorch's gate order (r, z, n; the reset gate inside the candidate's
/// recurrent term) and an RNN step with each nonlinearity, against values computed here in f64.
#[test]
fn one_step_is_pytorch_formula() {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    // weight_ih = [r, z, n] = [0.5, -0.3, 0.8], weight_hh = [0.2, 0.4, -0.6], b_ih = [0.1, 0.2, 0.3],
    // b_hh = [-0.1, 0.05, 0.7]; x = 1, h0 = 0.5.
    let (w_ih, w_hh) = ([0.5f32, -0.3, 0.8], [0.2f32, 0.4, -0.6]);
    let (b_ih, b_hh) = ([0.1f32, 0.2, 0.3], [-0.1f32, 0.05, 0.7]);
    let (x, h0) = (1.0f64, 0.5f64);
    let r = sig(0.5 * x + 0.1 + 0.2 * h0 - 0.1);
    let z = sig(-0.3 * x + 0.2 + 0.4 * h0 + 0.05);
    let n = (0.8 * x + 0.3 + r * (-0.6 * h0 + 0.7)).tanh();
    let want = (1.0 - z) * n + z * h0;
    let p = TorchParams { weight_ih: &w_ih, weight_hh: &w_hh, bias_ih: Some(&b_ih), bias_hh: Some(&b_hh) };
    let gru = TorchGru::new(1, 1, 1, false, &[p]).unwrap();
    let (got, _) = gru.forward_packed(&[1.0], 1, 1, false, &[1], Some(&[0.5]), 1).unwrap();
    assert!((f64::from(got.h_n[0]) - want).abs() < 1e-6, "GRU: {} vs {want}", got.h_n[0]);
    assert_eq!(got.y, got.h_n);

    // nn.RNN: h' = f(w_ih x + b_ih + w_hh h + b_hh); the argument is negative, so relu gives 0.
    let p = TorchParams { weight_ih: &[-0.7], weight_hh: &[0.2], bias_ih: Some(&[0.1]), bias_hh: Some(&[-0.05]) };
    let arg = -0.7 + 0.1 + 0.2 * 0.5 - 0.05;
    for (nl, want) in [(Nonlinearity::Tanh, f64::tanh(arg)), (Nonlinearity::Relu, 0.0)] {
        let rnn = TorchRnn::new(1, 1, 1, false, nl, &[p]).unwrap();
        assert_eq!(rnn.nonlinearity(), nl);
        let (got, _) = rnn.forward_packed(&[1.0], 1, 1, false, &[1], Some(&[0.5]), 1).unwrap();
        assert!((f64::from(got.h_n[0]) - want).abs() < 1e-6, "{nl:?}: {} vs {want}", got.h_n[0]);
    }
}

/// Lengths in any order: `h_n` comes back in the caller's batch order, and the reverse direction starts
/// at each sequence's own last step (its `y` at time 0 is `h_n`).
#[test]
fn unsorted_lengths_and_reverse_direction() {
    let mut rng = StdRng::seed_from_u64(7);
    let (i, h, t) = (3, 4, 5);
    let ws: Vec<Vec<f32>> = (0..2).map(|_| uniform(&mut rng, 3 * h * i, 0.6)).collect();
    let rs: Vec<Vec<f32>> = (0..2).map(|_| uniform(&mut rng, 3 * h * h, 0.6)).collect();
    let params: Vec<TorchParams<'_>> =
        (0..2).map(|d| TorchParams { weight_ih: &ws[d], weight_hh: &rs[d], bias_ih: None, bias_hh: None }).collect();
    let gru = TorchGru::new(i, h, 1, true, &params).unwrap();
    assert_eq!((gru.input_size(), gru.hidden_size(), gru.num_layers(), gru.bidirectional()), (i, h, 1, true));
    let lengths = [2, 5, 1];
    let b = lengths.len();
    let x = uniform(&mut rng, t * b * i, 1.0);
    let (got, _) = gru.forward_packed(&x, t, b, false, &lengths, None, 2).unwrap();
    for (s, &len) in lengths.iter().enumerate() {
        let y_at = |tt: usize, d: usize| &got.y[(tt * b + s) * 2 * h + d * h..(tt * b + s) * 2 * h + (d + 1) * h];
        assert_eq!(y_at(len - 1, 0), &got.h_n[s * h..(s + 1) * h], "forward h_n of sequence {s}");
        assert_eq!(y_at(0, 1), &got.h_n[(b + s) * h..(b + s + 1) * h], "reverse h_n of sequence {s}");
        for tt in len..t {
            assert!(y_at(tt, 0).iter().chain(y_at(tt, 1)).all(|v| v.to_bits() == 0), "padded y of sequence {s}");
        }
    }
    // The same sequences sorted by length give the same per-sequence results.
    let order = [1, 0, 2];
    let mut xs = vec![0.0; x.len()];
    for tt in 0..t {
        for (dst, &src) in order.iter().enumerate() {
            xs[(tt * b + dst) * i..(tt * b + dst + 1) * i]
                .copy_from_slice(&x[(tt * b + src) * i..(tt * b + src + 1) * i]);
        }
    }
    let sorted: Vec<usize> = order.iter().map(|&s| lengths[s]).collect();
    let (got2, _) = gru.forward_packed(&xs, t, b, false, &sorted, None, 1).unwrap();
    for (dst, &src) in order.iter().enumerate() {
        for d in 0..2 {
            let at = |s: usize| (d * b + s) * h..(d * b + s + 1) * h;
            assert_eq!(bits(&got2.h_n[at(dst)]), bits(&got.h_n[at(src)]), "sorted vs unsorted h_n");
        }
    }
}

/// NaN and infinities at valid steps are values like any other, as in PyTorch: a NaN input makes its
/// sequence's outputs NaN from that step on (every unit, both nonlinearities, relu included), and leaves the
/// other sequences alone; at padded steps nothing is read.
#[test]
fn nan_inputs_propagate_as_pytorch() {
    let (i, h, t, b) = (2, 3, 4, 2);
    let mut rng = StdRng::seed_from_u64(9);
    for kind in ["gru", "tanh", "relu"] {
        let gates = if kind == "gru" { 3 } else { 1 };
        let (w, r, bias) = (
            uniform(&mut rng, gates * h * i, 0.5),
            uniform(&mut rng, gates * h * h, 0.5),
            uniform(&mut rng, gates * h, 0.5),
        );
        let p = TorchParams { weight_ih: &w, weight_hh: &r, bias_ih: Some(&bias), bias_hh: None };
        let m = Module::new(kind, (i, h, 1, false), &[p], kernel::selected()).unwrap();
        let lengths = [4, 3];
        let mut x = uniform(&mut rng, t * b * i, 1.0);
        x[(b + 1) * i] = f32::NAN; // sequence 1, time 1
        x[(3 * b + 1) * i + 1] = f32::NAN; // sequence 1, time 3: padding
        let call = Call { x: &x, t, b, batch_first: false, lengths: &lengths, h0: None };
        let (got, _) = m.forward(&call, 1).unwrap();
        let want = m.reference(&call).unwrap();
        assert_eq!(bits(&got.y), bits(&want.y), "{kind}");
        let y = |tt: usize, s: usize| &got.y[(tt * b + s) * h..(tt * b + s + 1) * h];
        assert!(y(0, 1).iter().all(|v| v.is_finite()), "{kind}: before the NaN");
        for tt in 1..3 {
            assert!(y(tt, 1).iter().all(|v| v.is_nan()), "{kind}: NaN at time {tt}");
        }
        assert!(y(3, 1).iter().all(|v| v.to_bits() == 0), "{kind}: padded output");
        assert!(got.h_n[h..].iter().all(|v| v.is_nan()), "{kind}: h_n");
        assert!((0..t).all(|tt| y(tt, 0).iter().all(|v| v.is_finite())), "{kind}: the other sequence");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let kind = |e: masked_rnn::Error| e.kind();
    let (i, h) = (3, 2);
    let (w, r, bias) = (vec![0.1; 3 * h * i], vec![0.1; 3 * h * h], vec![0.0; 3 * h]);
    let w1 = vec![0.1; 3 * h * h]; // layer 1 of a unidirectional stack: D*H = H inputs
    let p0 = TorchParams { weight_ih: &w, weight_hh: &r, bias_ih: Some(&bias), bias_hh: Some(&bias) };
    let p1 = TorchParams { weight_ih: &w1, ..p0 };
    // Construction: zero layers, a parameter set missing, hidden 0, tensors of the wrong length (layer 1
    // takes D*H inputs), an unknown nonlinearity, sizes that overflow.
    assert_eq!(kind(TorchGru::new(i, h, 0, false, &[]).unwrap_err()), ErrorKind::BadArgument);
    assert_eq!(kind(TorchGru::new(i, h, 1, true, &[p0]).unwrap_err()), ErrorKind::BadArgument);
    assert_eq!(kind(TorchGru::new(i, 0, 1, false, &[p0]).unwrap_err()), ErrorKind::BadArgument);
    assert_eq!(
        kind(TorchGru::new(i, h, 1, false, &[TorchParams { weight_ih: &w[1..], ..p0 }]).unwrap_err()),
        ErrorKind::BadShape
    );
    assert_eq!(
        kind(TorchGru::new(i, h, 1, false, &[TorchParams { weight_hh: &w, ..p0 }]).unwrap_err()),
        ErrorKind::BadShape
    );
    assert_eq!(
        kind(TorchGru::new(i, h, 1, false, &[TorchParams { bias_hh: Some(&r), ..p0 }]).unwrap_err()),
        ErrorKind::BadShape
    );
    assert_eq!(kind(TorchGru::new(i, h, 2, false, &[p0, p0]).unwrap_err()), ErrorKind::BadShape);
    assert_eq!(kind(TorchRnn::new(i, h, 1, false, Nonlinearity::Tanh, &[p0]).unwrap_err()), ErrorKind::BadShape);
    assert_eq!(kind(Nonlinearity::from_name("sigmoid").unwrap_err()), ErrorKind::BadArgument);
    assert_eq!(Nonlinearity::from_name("relu").unwrap(), Nonlinearity::Relu);
    assert_eq!(kind(TorchGru::new(i, usize::MAX / 2, 1, false, &[p0]).unwrap_err()), ErrorKind::Overflow);

    let gru = TorchGru::new(i, h, 2, false, &[p0, p1]).unwrap();
    let (t, b) = (4, 2);
    let x = vec![0.5; t * b * i];
    let state = vec![0.0; 2 * b * h];
    let run = |x: &[f32], lengths: &[usize], h0: Option<&[f32]>| gru.forward_packed(x, t, b, false, lengths, h0, 1);
    // x of the wrong length, a length per sequence missing, a length of 0 and one past T (PyTorch refuses
    // both when packing), h0 of the wrong length.
    assert_eq!(kind(run(&x[1..], &[4, 2], None).unwrap_err()), ErrorKind::BadShape);
    assert_eq!(kind(run(&x, &[4], None).unwrap_err()), ErrorKind::BadShape);
    assert_eq!(kind(run(&x, &[4, 0], None).unwrap_err()), ErrorKind::BadArgument);
    assert_eq!(kind(run(&x, &[5, 2], None).unwrap_err()), ErrorKind::BadArgument);
    assert_eq!(kind(run(&x, &[4, 2], Some(&state[1..])).unwrap_err()), ErrorKind::BadShape);
    assert!(run(&x, &[4, 2], Some(&state)).is_ok());
    assert_eq!(kind(gru.forward_packed_reference(&x, t, b, false, &[4, 0], None).unwrap_err()), ErrorKind::BadArgument);
    assert_eq!(
        kind(gru.forward_packed(&x, usize::MAX / 2, 4, false, &[1; 4], None, 1).unwrap_err()),
        ErrorKind::Overflow
    );
    // Outputs of the wrong length, and a c_n buffer (no cell state).
    let ws = &mut Workspace::new();
    let mut y = vec![0.0; t * b * h + 1];
    let out = TorchOutputs { y: Some(&mut y), ..Default::default() };
    assert_eq!(
        kind(gru.forward_packed_in(&x, t, b, false, &[4, 2], None, out, 1, ws).unwrap_err()),
        ErrorKind::BadShape
    );
    let mut h_n = vec![0.0; 3];
    let out = TorchOutputs { h_n: Some(&mut h_n), ..Default::default() };
    assert_eq!(
        kind(gru.forward_packed_in(&x, t, b, false, &[4, 2], None, out, 1, ws).unwrap_err()),
        ErrorKind::BadShape
    );
    let mut c_n = vec![0.0; 2 * b * h];
    let out = TorchOutputs { c_n: Some(&mut c_n), ..Default::default() };
    assert_eq!(
        kind(gru.forward_packed_in(&x, t, b, false, &[4, 2], None, out, 1, ws).unwrap_err()),
        ErrorKind::BadArgument
    );
    // Only h_n, no y: the same h_n.
    let mut h_n = vec![0.0; 2 * b * h];
    let out = TorchOutputs { h_n: Some(&mut h_n), ..Default::default() };
    gru.forward_packed_in(&x, t, b, false, &[4, 2], None, out, 2, ws).unwrap();
    assert_eq!(bits(&h_n), bits(&run(&x, &[4, 2], None).unwrap().0.h_n));
}

/// What one backward returns: `dx`, the parameters' gradients, `dh0`.
type Gradients = (Vec<f32>, Vec<PytorchLayout<f32>>, Vec<f32>);

/// The training forward then the backward of `up`, every gradient asked for.
fn gradients(m: &Module, c: &Call<'_>, up: TorchUpstream<'_>, threads: usize) -> (Gradients, ForwardStats) {
    let (h, layers, d) = m.sizes();
    let (_, tape, _) = m.forward_train(c, threads).unwrap();
    let (mut dx, mut dh0, mut params) = (vec![f32::NAN; c.x.len()], vec![f32::NAN; layers * d * c.b * h], Vec::new());
    let grads = TorchGrads { dx: Some(&mut dx), params: Some(&mut params), dh0: Some(&mut dh0), dc0: None };
    let stats = m.backward(c, &tape, up, grads, threads).unwrap();
    ((dx, params, dh0), stats)
}

/// Largest `|got - want| / max(1, |want|)` of a gradient against PyTorch's float64 one; panics past 1e-4.
fn check_grad(what: &str, got: &[f32], want: &serde_json::Value, worst: &mut f64) {
    let want: Vec<f64> = want.as_array().expect(what).iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let err = (f64::from(g) - w).abs() / w.abs().max(1.0);
        assert!(err <= 1e-4, "{what}[{k}]: {g} vs PyTorch {w}");
        *worst = worst.max(err);
    }
}

/// Every fixture's gradients (dx, every layer direction's weight_ih, weight_hh, bias_ih, bias_hh, dh0)
/// within 1e-4 of PyTorch's float64 autograd, bitwise the same on 1 and 2 threads, computing each valid
/// step once per layer and direction. Returns the gradients compared.
fn gradient_fixtures_match(dir: &str, kind: &str) -> usize {
    let (mut compared, mut worst) = (0, 0.0f64);
    for (name, f) in fixtures(dir, kind) {
        let fx = Fixture::read(&f);
        let (model, call) = (&fx.model, fx.call());
        let (dy, dh_n) = (opt_floats(&f["dy"]), opt_floats(&f["dh_n"]));
        assert!(dy.is_some() || dh_n.is_some(), "{name}: no upstream");
        let up = TorchUpstream { dy: dy.as_deref(), dh_n: dh_n.as_deref(), dc_n: None };
        let ((dx, params, dh0), stats) = gradients(model, &call, up, 1);
        assert_eq!(stats.steps_computed, fx.steps(), "{name}: steps");
        let ((dx2, params2, dh02), _) = gradients(model, &call, up, 2);
        assert_eq!(bits(&dx), bits(&dx2), "{name}: dx on 2 threads");
        assert_eq!(bits(&dh0), bits(&dh02), "{name}: dh0 on 2 threads");
        assert_eq!(params, params2, "{name}: parameter gradients on 2 threads");
        check_grad(&format!("{name} dx"), &dx, &f["dx"], &mut worst);
        let want = f["d_weights"].as_array().unwrap();
        assert_eq!(want.len(), params.len(), "{name}: parameter sets");
        for (k, (w, g)) in want.iter().zip(&params).enumerate() {
            check_grad(&format!("{name} [{k}] weight_ih"), &g.weight_ih, &w["weight_ih"], &mut worst);
            check_grad(&format!("{name} [{k}] weight_hh"), &g.weight_hh, &w["weight_hh"], &mut worst);
            compared += 2;
            if !w["bias_ih"].is_null() {
                check_grad(&format!("{name} [{k}] bias_ih"), &g.bias_ih, &w["bias_ih"], &mut worst);
                check_grad(&format!("{name} [{k}] bias_hh"), &g.bias_hh, &w["bias_hh"], &mut worst);
                compared += 2;
            }
        }
        if fx.h0.is_some() {
            check_grad(&format!("{name} dh0"), &dh0, &f["dh0"], &mut worst);
            compared += 1;
        }
        compared += 1;
    }
    println!("{dir}: worst gradient error {worst:.2e}");
    compared
}

#[test]
fn gru_gradients_match_pytorch_autograd() {
    assert!(gradient_fixtures_match("torch_gru", "torch_gru_packed") >= 20 * 3);
}

#[test]
fn rnn_gradients_match_pytorch_autograd() {
    assert!(gradient_fixtures_match("torch_rnn", "torch_rnn_packed") >= 20 * 3);
}

/// On random stacks of every shape (NaN and infinities at padded steps) and every backend: the training
/// forward's outputs are bitwise those of the plain forward; the backward computes each valid step once
/// per layer and direction, is bitwise the same on 1 and 2 threads, writes `+0.0` into `dx` at padded
/// steps whatever the upstream there, and gives each sequence the `dx` and `dh0` it has alone.
fn training_properties(kind: &'static str, seed: u64, cases: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    for n in 0..cases {
        let c = Case::random(&mut rng, n, kind);
        let call = c.call();
        let (i, h, layers, bidi) = c.shape;
        let d = if bidi { 2 } else { 1 };
        let (t, b, width) = (c.t, c.b, d * h);
        let valid: usize = c.lengths.iter().sum();
        let dy = uniform(&mut rng, t * b * width, 1.0);
        let dh_n = rng.random_bool(0.5).then(|| uniform(&mut rng, layers * d * b * h, 1.0));
        let up = TorchUpstream { dy: Some(&dy), dh_n: dh_n.as_deref(), dc_n: None };
        let at = |s: usize, tt: usize, w: usize| if c.batch_first { (s * t + tt) * w } else { (tt * b + s) * w };
        for backend in kernel::available() {
            let what = format!("{kind} case {n} {} shape {:?} lengths {:?}", backend.name, c.shape, c.lengths);
            let model = c.module(backend);
            let (plain, _) = model.forward(&call, 1).unwrap();
            let (trained, _, _) = model.forward_train(&call, 2).unwrap();
            assert_eq!(bits(&trained.y), bits(&plain.y), "training forward y: {what}");
            assert_eq!(bits(&trained.h_n), bits(&plain.h_n), "training forward h_n: {what}");
            let ((dx, params, dh0), stats) = gradients(&model, &call, up, 1);
            assert_eq!(stats.steps_computed, layers * d * valid, "{what}");
            assert_eq!(params.len(), layers * d, "{what}");
            let ((dx2, params2, dh02), _) = gradients(&model, &call, up, 2);
            assert_eq!(bits(&dx), bits(&dx2), "dx on 2 threads: {what}");
            assert_eq!(bits(&dh0), bits(&dh02), "dh0 on 2 threads: {what}");
            assert_eq!(params, params2, "parameter gradients on 2 threads: {what}");
            for (s, &len) in c.lengths.iter().enumerate() {
                for tt in 0..t {
                    let g = &dx[at(s, tt, i)..at(s, tt, i) + i];
                    if tt >= len {
                        assert!(g.iter().all(|v| v.to_bits() == 0), "dx at a padded step: {what}");
                    } else {
                        assert!(g.iter().all(|v| v.is_finite()), "dx at a valid step: {what}");
                    }
                }
            }
            if n % 4 != 0 {
                continue;
            }
            for s in 0..b {
                let (x, h0) = c.alone(s);
                let one =
                    Call { x: &x, t, b: 1, batch_first: c.batch_first, lengths: &c.lengths[s..=s], h0: h0.as_deref() };
                let dy1: Vec<f32> =
                    (0..t).flat_map(|tt| dy[at(s, tt, width)..at(s, tt, width) + width].to_vec()).collect();
                let pick = |v: &[f32]| -> Vec<f32> {
                    v.chunks(b * h).flat_map(|blk| blk[s * h..(s + 1) * h].to_vec()).collect()
                };
                let dh_n1 = dh_n.as_deref().map(pick);
                let up1 = TorchUpstream { dy: Some(&dy1), dh_n: dh_n1.as_deref(), dc_n: None };
                let ((dx1, _, dh01), _) = gradients(&model, &one, up1, 1);
                for tt in 0..t {
                    assert_eq!(
                        bits(&dx1[tt * i..(tt + 1) * i]),
                        bits(&dx[at(s, tt, i)..at(s, tt, i) + i]),
                        "{what}: dx of sequence {s} alone"
                    );
                }
                assert_eq!(bits(&dh01), bits(&pick(&dh0)), "{what}: dh0 of sequence {s} alone");
            }
        }
    }
}

#[test]
fn gru_training_properties_on_random_stacks() {
    training_properties("gru", 41, 48);
}

#[test]
fn rnn_training_properties_on_random_stacks() {
    training_properties("tanh", 42, 32);
    training_properties("relu", 43, 32);
}

/// The training entry points refuse what cannot be right: buffers and upstream of the wrong length, a
/// cell state the GRU and RNN do not have, and tapes of another shape or another cell.
#[test]
fn training_errors() {
    let kind = |e: masked_rnn::Error| e.kind();
    let (i, h, t, b) = (3, 2, 4, 2);
    let (w, r, bias) = (vec![0.1; 3 * h * i], vec![0.2; 3 * h * h], vec![0.0; 3 * h]);
    let p = TorchParams { weight_ih: &w, weight_hh: &r, bias_ih: Some(&bias), bias_hh: Some(&bias) };
    let gru = Module::Gru(TorchGru::new(i, h, 1, false, &[p]).unwrap());
    let (w1, r1) = (vec![0.1; h * i], vec![0.2; h * h]);
    let p1 = TorchParams { weight_ih: &w1, weight_hh: &r1, bias_ih: None, bias_hh: None };
    let rnn = Module::Rnn(TorchRnn::new(i, h, 1, false, Nonlinearity::Tanh, &[p1]).unwrap());
    let x = vec![0.5; t * b * i];
    let lengths = [4, 2];
    let call = Call { x: &x, t, b, batch_first: false, lengths: &lengths, h0: None };
    let (_, tape, _) = gru.forward_train(&call, 1).unwrap();
    let dy = vec![1.0; t * b * h];
    let up = TorchUpstream { dy: Some(&dy), ..Default::default() };
    let none = || TorchGrads::default();
    // A backward of nothing asked for still checks its inputs and runs.
    assert!(gru.backward(&call, &tape, up, none(), 1).is_ok());
    let short = TorchUpstream { dy: Some(&dy[1..]), ..Default::default() };
    assert_eq!(kind(gru.backward(&call, &tape, short, none(), 1).unwrap_err()), ErrorKind::BadShape);
    let dc = vec![0.0; b * h];
    let with_c = TorchUpstream { dc_n: Some(&dc), ..up };
    assert_eq!(kind(gru.backward(&call, &tape, with_c, none(), 1).unwrap_err()), ErrorKind::BadArgument);
    let mut dc0 = vec![0.0; b * h];
    let grads = TorchGrads { dc0: Some(&mut dc0), ..Default::default() };
    assert_eq!(kind(gru.backward(&call, &tape, up, grads, 1).unwrap_err()), ErrorKind::BadArgument);
    let mut dx = vec![0.0; x.len() - 1];
    let grads = TorchGrads { dx: Some(&mut dx), ..Default::default() };
    assert_eq!(kind(gru.backward(&call, &tape, up, grads, 1).unwrap_err()), ErrorKind::BadShape);
    // Tapes of another shape, another length pattern, another cell, or never filled.
    let other = Call { lengths: &[3, 2], ..call };
    assert_eq!(kind(gru.backward(&other, &tape, up, none(), 1).unwrap_err()), ErrorKind::BadArgument);
    let (_, rnn_tape, _) = rnn.forward_train(&call, 1).unwrap();
    assert_eq!(kind(gru.backward(&call, &rnn_tape, up, none(), 1).unwrap_err()), ErrorKind::BadArgument);
    assert_eq!(kind(rnn.backward(&call, &tape, up, none(), 1).unwrap_err()), ErrorKind::BadArgument);
    assert_eq!(kind(gru.backward(&call, &TorchTape::new(), up, none(), 1).unwrap_err()), ErrorKind::BadArgument);
}
