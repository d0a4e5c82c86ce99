//! PyTorch `nn.GRU` and `nn.RNN` stacks under fuzzing, forward and backward
//! ([`torch_gru_rnn_equals_reference`]). Their gradients' values are checked against PyTorch's float64
//! autograd by the fixtures (tests/suite/torch_gru_rnn.rs) and, cell by cell, against the float64 reference by
//! the ONNX and Keras properties; here the stacks' structure: valid steps only, every gradient written,
//! padding untouched, thread-independent to the bit.

use super::{hidden_size, same_bits, ByteReader, UNWRITTEN};
use crate::cells::grads::PytorchLayout;
use crate::engine::Workspace;
use crate::frameworks::torch::{
    Nonlinearity, TorchGrads, TorchGru, TorchOutputs, TorchParams, TorchResult, TorchRnn, TorchTape, TorchUpstream,
};
use crate::ForwardStats;

/// Either module.
enum Module {
    Gru(TorchGru),
    Rnn(TorchRnn),
}

/// One call's inputs.
struct Call<'a> {
    x: &'a [f32],
    t: usize,
    b: usize,
    batch_first: bool,
    lengths: &'a [usize],
    h0: Option<&'a [f32]>,
}

/// The forward outputs, the gradients (`dx`, parameters, `dh0`) and both calls' statistics.
type Trained = (TorchResult, Vec<f32>, Vec<PytorchLayout<f32>>, Vec<f32>, ForwardStats, ForwardStats);

impl Module {
    fn forward(&self, c: &Call<'_>, threads: usize) -> crate::Result<(TorchResult, ForwardStats)> {
        match self {
            Module::Gru(m) => m.forward_packed(c.x, c.t, c.b, c.batch_first, c.lengths, c.h0, threads),
            Module::Rnn(m) => m.forward_packed(c.x, c.t, c.b, c.batch_first, c.lengths, c.h0, threads),
        }
    }

    fn reference(&self, c: &Call<'_>) -> crate::Result<TorchResult> {
        match self {
            Module::Gru(m) => m.forward_packed_reference(c.x, c.t, c.b, c.batch_first, c.lengths, c.h0),
            Module::Rnn(m) => m.forward_packed_reference(c.x, c.t, c.b, c.batch_first, c.lengths, c.h0),
        }
    }

    /// The training forward, then the backward of `up` into buffers filled with a NaN pattern.
    fn train(
        &self,
        c: &Call<'_>,
        up: TorchUpstream<'_>,
        sizes: (usize, usize),
        threads: usize,
    ) -> crate::Result<Trained> {
        let (width, states) = sizes;
        let nan = f32::from_bits(UNWRITTEN);
        let mut r = TorchResult { y: vec![nan; c.t * c.b * width], h_n: vec![nan; states], c_n: Vec::new() };
        let out = TorchOutputs { y: Some(&mut r.y), h_n: Some(&mut r.h_n), c_n: None };
        let (mut tape, ws) = (TorchTape::new(), &mut Workspace::new());
        let (mut dx, mut dh0, mut params) = (vec![nan; c.x.len()], vec![nan; states], Vec::new());
        let grads = TorchGrads { dx: Some(&mut dx), params: Some(&mut params), dh0: Some(&mut dh0), dc0: None };
        let (t, b, bf, l, h0) = (c.t, c.b, c.batch_first, c.lengths, c.h0);
        let (fwd, bwd) = match self {
            Module::Gru(m) => (
                m.forward_packed_train(c.x, t, b, bf, l, h0, out, &mut tape, threads, ws)?,
                m.backward_packed(c.x, t, b, bf, l, h0, &tape, up, grads, threads)?,
            ),
            Module::Rnn(m) => (
                m.forward_packed_train(c.x, t, b, bf, l, h0, out, &mut tape, threads, ws)?,
                m.backward_packed(c.x, t, b, bf, l, h0, &tape, up, grads, threads)?,
            ),
        };
        Ok((r, dx, params, dh0, fwd, bwd))
    }
}

/// Property: a PyTorch `nn.GRU` (first byte even) or `nn.RNN` (odd; tanh or relu) stack of 1 to 3
/// layers, one or two directions, either batch layout, lengths in any order (padding holding NaN and
/// infinities) and an optional `h0`: the fast path equals the reference bit for bit on 1 and 2 threads
/// computing each valid step once per layer and direction; the training forward gives the same outputs;
/// the backward computes the same steps, writes every gradient, `+0.0` into `dx` at padded steps and is
/// bitwise the same on 1 and 2 threads.
pub fn torch_gru_rnn_equals_reference(data: &[u8]) -> Result<(), String> {
    let mut r = ByteReader::new(data);
    let gru = !r.bool();
    let (t, b, i) = (1 + r.below(8), r.below(6), r.below(6));
    let h = hidden_size(&mut r, 12);
    if h > 33 {
        r.noise_past_end();
    }
    let (layers, bidi, batch_first) = (1 + r.below(3), r.bool(), r.bool());
    let d_n = if bidi { 2 } else { 1 };
    let g = if gru { 3 } else { 1 };
    let scale = 1.0 / ((i.max(d_n * h) + h) as f32).sqrt();
    let no_bias = r.u8() % 4 == 0;
    let tensors: Vec<[Vec<f32>; 4]> = (0..layers * d_n)
        .map(|k| {
            let inp = if k < d_n { i } else { d_n * h };
            let mut w = |n: usize| (0..n).map(|_| r.unit(scale)).collect::<Vec<f32>>();
            [w(g * h * inp), w(g * h * h), w(g * h), w(g * h)]
        })
        .collect();
    let params: Vec<TorchParams<'_>> = tensors
        .iter()
        .map(|[a, bb, c, d]| TorchParams {
            weight_ih: a,
            weight_hh: bb,
            bias_ih: (!no_bias).then_some(&c[..]),
            bias_hh: (!no_bias).then_some(&d[..]),
        })
        .collect();
    let err = |e: crate::Error| e.to_string();
    let module = if gru {
        Module::Gru(TorchGru::new(i, h, layers, bidi, &params).map_err(err)?)
    } else {
        let nl = if r.bool() { Nonlinearity::Relu } else { Nonlinearity::Tanh };
        Module::Rnn(TorchRnn::new(i, h, layers, bidi, nl, &params).map_err(err)?)
    };
    let lengths: Vec<usize> = (0..b).map(|_| if r.bool() { t } else { 1 + r.below(t) }).collect();
    let at = |s: usize, tt: usize, w: usize| if batch_first { (s * t + tt) * w } else { (tt * b + s) * w };
    let mut x = vec![0.0; t * b * i];
    for (s, &len) in lengths.iter().enumerate() {
        for tt in 0..t {
            for v in &mut x[at(s, tt, i)..at(s, tt, i) + i] {
                *v = if tt < len { r.unit(2.0) } else { r.wild() };
            }
        }
    }
    let states = layers * d_n * b * h;
    let h0: Option<Vec<f32>> = r.bool().then(|| (0..states).map(|_| r.unit(1.0)).collect());
    let call = Call { x: &x, t, b, batch_first, lengths: &lengths, h0: h0.as_deref() };
    let steps = layers * d_n * lengths.iter().sum::<usize>();

    let want = module.reference(&call).map_err(err)?;
    let mut outs = Vec::new();
    for threads in [1, 2] {
        let (got, stats) = module.forward(&call, threads).map_err(err)?;
        if stats.steps_computed != steps {
            return Err(format!("computed {} steps for {steps}", stats.steps_computed));
        }
        same_bits(&format!("threads {threads} y"), &got.y, &want.y)?;
        same_bits(&format!("threads {threads} h_n"), &got.h_n, &want.h_n)?;
        outs.push(got);
    }

    let width = d_n * h;
    let dy: Vec<f32> = (0..t * b * width).map(|_| r.unit(1.0)).collect();
    let dh_n: Option<Vec<f32>> = r.bool().then(|| (0..states).map(|_| r.unit(1.0)).collect());
    let up = TorchUpstream { dy: Some(&dy), dh_n: dh_n.as_deref(), dc_n: None };
    let (out, dx, p1, dh0, fwd, bwd) = module.train(&call, up, (width, states), 1).map_err(err)?;
    same_bits("training forward y", &out.y, &outs[0].y)?;
    same_bits("training forward h_n", &out.h_n, &outs[0].h_n)?;
    for (what, s) in [("forward_train", fwd), ("backward", bwd)] {
        if s.steps_computed != steps {
            return Err(format!("{what} computed {} steps for {steps}", s.steps_computed));
        }
    }
    if p1.len() != layers * d_n {
        return Err(format!("{} parameter sets for {layers} x {d_n}", p1.len()));
    }
    let flat = |p: &[PytorchLayout<f32>]| -> Vec<f32> {
        p.iter().flat_map(|l| [&l.weight_ih, &l.weight_hh, &l.bias_ih, &l.bias_hh]).flatten().copied().collect()
    };
    for (what, v) in [("dx", &dx), ("dh0", &dh0), ("parameters", &flat(&p1))] {
        if let Some(k) = v.iter().position(|e| e.to_bits() == UNWRITTEN) {
            return Err(format!("{what}[{k}] was not written"));
        }
    }
    for (s, &len) in lengths.iter().enumerate() {
        for tt in len..t {
            if let Some(k) = dx[at(s, tt, i)..at(s, tt, i) + i].iter().position(|v| v.to_bits() != 0) {
                return Err(format!("dx[{}] at a padded step of sequence {s}", at(s, tt, i) + k));
            }
        }
    }
    let (_, dx2, p2, dh02, _, _) = module.train(&call, up, (width, states), 2).map_err(err)?;
    same_bits("threads 2 vs 1 (dx)", &dx2, &dx)?;
    same_bits("threads 2 vs 1 (dh0)", &dh02, &dh0)?;
    same_bits("threads 2 vs 1 (parameters)", &flat(&p2), &flat(&p1))
}
