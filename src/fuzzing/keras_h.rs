//! The Keras `GRU` and `SimpleRNN` layers under fuzzing, forward and backward
//! ([`keras_gru_rnn_equals_reference`]).
//!
//! Their float64 oracle: a Keras layer over a mask runs its cell over each sequence's valid steps in
//! processing order, carrying the state across masked steps. That is the ONNX operator (forward
//! direction) over the valid steps packed to the front of each sequence, whose float64 reference backward
//! exists ([`OnnxGru::backward_reference`]); with the upstream of masked steps and of `last_output` left
//! out (those route to earlier outputs, which the other properties check), the gradients must agree.

use super::{hidden_size, input_size, near, same_bits, view_from_bytes, ByteReader, H_BACKWARD_TOL, UNWRITTEN};
use crate::cells::activation::Activation;
use crate::cells::grads::transpose;
use crate::cells::gru::GruWeights;
use crate::cells::rnn::RnnWeights;
use crate::engine::{ForwardStats, Workspace};
use crate::frameworks::keras::{
    InitialState, KerasGrads, KerasGru, KerasGruOptions, KerasOutputs, KerasRnnOptions, KerasSimpleRnn, KerasTape,
    KerasUpstream, Recurrent, StridedInput,
};
use crate::frameworks::onnx::{Direction, OnnxGradsResult, OnnxGru, OnnxGruAttrs, OnnxRnn, OnnxRnnAttrs, OnnxUpstream};
use crate::reference::KerasResult;
use crate::view::SeqView;

/// A random Keras GRU or SimpleRNN case.
struct Case {
    layer: Recurrent,
    /// The canonical weights: `kernel [I, G H]`, `recurrent [H, G H]`, input bias `[G H]`, recurrent bias
    /// `[G H]` (zeros where the layer has none).
    weights: [Vec<f32>; 4],
    /// `(activation, recurrent_activation)` (the SimpleRNN: its activation twice).
    acts: (Activation, Activation),
    reset_after: bool,
    go_backwards: bool,
    /// Whether to also run each sequence alone.
    alone: bool,
    x: Vec<f32>,
    view: SeqView,
    h0: Option<Vec<f32>>,
    dy: Option<Vec<f32>>,
    d_last: Option<Vec<f32>>,
    d_h_n: Option<Vec<f32>>,
}

/// Activations: smooth ones most of the time (the float64 comparison needs them), kinked ones too.
fn act(r: &mut ByteReader<'_>, gate: bool) -> Activation {
    match (r.u8() % 8, gate) {
        (0, _) => Activation::HARD_SIGMOID_KERAS3,
        (1, true) => Activation::HARD_SIGMOID_KERAS2,
        (1, false) => Activation::Relu,
        (2, false) => Activation::Softsign,
        (_, true) => Activation::Sigmoid,
        (_, false) => Activation::Tanh,
    }
}

impl Case {
    fn from_bytes(data: &[u8]) -> Case {
        let mut r = ByteReader::new(data);
        let gru = !r.bool();
        let (b, t, i) = (r.below(6), r.below(10), input_size(&mut r, 5));
        let h = hidden_size(&mut r, 16);
        if i > 5 || h > 33 {
            r.noise_past_end();
        }
        let view = view_from_bytes(&mut r, b, t);
        let (reset_after, go_backwards, zero_output, alone) = (r.bool(), r.bool(), r.bool(), r.u8() % 4 == 0);
        let acts = (act(&mut r, false), if gru { act(&mut r, true) } else { Activation::Sigmoid });
        let g = if gru { 3 } else { 1 };
        let scale = 1.0 / ((i + h) as f32).sqrt().max(1.0);
        let mut v = |n: usize| (0..n).map(|_| r.unit(scale)).collect::<Vec<f32>>();
        let (k, rk, bi) = (v(i * g * h), v(h * g * h), v(g * h));
        let br = if gru && reset_after { v(g * h) } else { vec![0.0; g * h] };
        let layer: Recurrent = if gru {
            let bias = if reset_after { [&bi[..], &br[..]].concat() } else { bi.clone() };
            let w = GruWeights::from_keras(i, h, &k, &rk, Some(&bias), reset_after).expect("consistent case");
            let o = KerasGruOptions::default()
                .reset_after(reset_after)
                .activation(acts.0)
                .recurrent_activation(acts.1)
                .go_backwards(go_backwards)
                .zero_output_for_mask(zero_output);
            KerasGru::new(w, o).expect("consistent case").into()
        } else {
            let w = RnnWeights::from_keras(i, h, &k, &rk, Some(&bi)).expect("consistent case");
            let o = KerasRnnOptions::default()
                .activation(acts.0)
                .go_backwards(go_backwards)
                .zero_output_for_mask(zero_output);
            KerasSimpleRnn::new(w, o).expect("consistent case").into()
        };
        let mut x = vec![0.0; b * t * i];
        for s in 0..b {
            for tt in 0..t {
                let valid = view.is_valid(s, tt);
                for e in &mut x[(s * t + tt) * i..(s * t + tt + 1) * i] {
                    *e = if valid { r.unit(2.0) } else { r.wild() };
                }
            }
        }
        let opt = |n: usize, r: &mut ByteReader<'_>| r.bool().then(|| (0..n).map(|_| r.unit(1.0)).collect());
        let h0 = opt(b * h, &mut r);
        let (dy, d_last, d_h_n) = (opt(b * t * h, &mut r), opt(b * h, &mut r), opt(b * h, &mut r));
        let acts = if gru { acts } else { (acts.0, acts.0) };
        Case { layer, weights: [k, rk, bi, br], acts, reset_after, go_backwards, alone, x, view, h0, dy, d_last, d_h_n }
    }

    fn init(&self) -> Option<InitialState<'_>> {
        self.h0.as_deref().map(|h| InitialState { h, c: &[] })
    }

    fn upstream(&self) -> KerasUpstream<'_> {
        KerasUpstream {
            dy: self.dy.as_deref(),
            d_last_output: self.d_last.as_deref(),
            d_h_n: self.d_h_n.as_deref(),
            d_c_n: None,
        }
    }
}

/// Every output of the fast path.
fn forward(c: &Case, threads: usize) -> Result<(KerasResult, ForwardStats), String> {
    let (b, t, h) = (c.view.batch(), c.view.time(), c.layer.units());
    let mut o =
        KerasResult { y: vec![0.0; b * t * h], last_output: vec![0.0; b * h], h_n: vec![0.0; b * h], c_n: vec![] };
    let out =
        KerasOutputs { y: Some(&mut o.y), last_output: Some(&mut o.last_output), h_n: Some(&mut o.h_n), c_n: None };
    let x = StridedInput { data: &c.x, off: 0, sb: t * c.layer.input_size(), st: c.layer.input_size() };
    let stats = c
        .layer
        .forward_strided(x, &c.view, c.init(), out, threads, &mut Workspace::new())
        .map_err(|e| e.to_string())?;
    Ok((o, stats))
}

/// The training forward (outputs) and the backward of `up` (`[dx, d_kernel, d_recurrent, d_bias, dh0]`,
/// in buffers filled with a NaN pattern), with both calls' statistics.
type Trained = (KerasResult, [Vec<f32>; 5], ForwardStats, ForwardStats);

fn train(
    c: &Case,
    x: &[f32],
    view: &SeqView,
    h0: Option<&[f32]>,
    up: KerasUpstream<'_>,
    threads: usize,
) -> Result<Trained, String> {
    let (b, t, h) = (view.batch(), view.time(), c.layer.units());
    let err = |e: crate::Error| e.to_string();
    let mut o =
        KerasResult { y: vec![0.0; b * t * h], last_output: vec![0.0; b * h], h_n: vec![0.0; b * h], c_n: vec![] };
    let out =
        KerasOutputs { y: Some(&mut o.y), last_output: Some(&mut o.last_output), h_n: Some(&mut o.h_n), c_n: None };
    let (mut tape, ws) = (KerasTape::new(), &mut Workspace::new());
    let init = h0.map(|h| InitialState { h, c: &[] });
    let fwd = c.layer.forward_train(x, view, init, out, &mut tape, threads, ws).map_err(err)?;
    let [nk, nr, nb] = c.layer.keras_weight_lens();
    let fill = |n: usize| vec![f32::from_bits(UNWRITTEN); n];
    let mut g = [fill(x.len()), fill(nk), fill(nr), fill(nb), fill(b * h)];
    let [dx, dk, dr, db, dh0] = &mut g;
    let grads = KerasGrads {
        dx: Some(dx),
        d_kernel: Some(dk),
        d_recurrent_kernel: Some(dr),
        d_bias: Some(db),
        d_initial_h: Some(dh0),
        d_initial_c: None,
    };
    let bwd = c.layer.backward(x, view, init, &tape, up, grads, threads).map_err(err)?;
    Ok((o, g, fwd, bwd))
}

const GRAD_NAMES: [&str; 5] = ["dx", "d_kernel", "d_recurrent_kernel", "d_bias", "d_initial_h"];

/// Property: a Keras `GRU` (either `reset_after`; first byte even) or `SimpleRNN` (odd) layer with any
/// mask (holes, pre-padding, empty rows), `go_backwards`, `zero_output_for_mask` and initial state equals
/// its plain reference bit for bit on 1 and 2 threads, computing the valid steps only; its training
/// forward gives the same outputs; its backward computes the valid steps only, writes every gradient,
/// `+0.0` into `dx` at masked steps, bitwise the same on 1 and 2 threads and (one case in four) for a
/// sequence alone (its `dx` and initial-state gradient); and, for smooth activations, equals the float64 ONNX reference
/// backward of the same cell over the valid steps within [`H_BACKWARD_TOL`] normwise.
pub fn keras_gru_rnn_equals_reference(data: &[u8]) -> Result<(), String> {
    check_keras_gru_rnn(data).map(drop)
}

/// What [`check_keras_gru_rnn`] ran.
#[derive(Clone, Copy, Debug)]
pub struct KerasHReport {
    /// A GRU (else a SimpleRNN).
    pub gru: bool,
    /// Whether the gradients were compared with the float64 ONNX reference (smooth activations, finite
    /// valid inputs, a valid step somewhere).
    pub compared: bool,
    /// The largest normwise difference from the reference: `|got - expected| / max(1, max |expected|)`
    /// over every element of every gradient tensor (0 when not compared).
    pub worst: f32,
    /// Valid steps.
    pub steps: usize,
}

/// The properties of [`keras_gru_rnn_equals_reference`]; returns what ran.
pub fn check_keras_gru_rnn(data: &[u8]) -> Result<KerasHReport, String> {
    let c = Case::from_bytes(data);
    let view = &c.view;
    let (b, t, i) = (view.batch(), view.time(), c.layer.input_size());
    let valid = view.total_valid();
    let want = c.layer.forward_reference(&c.x, view, c.init()).map_err(|e| e.to_string())?;
    let (one, stats) = forward(&c, 1)?;
    if stats.steps_computed != valid {
        return Err(format!("computed {} steps for {valid} valid steps", stats.steps_computed));
    }
    let (two, _) = forward(&c, 2)?;
    for (what, got) in [("threads 1", &one), ("threads 2", &two)] {
        same_bits(&format!("{what} y"), &got.y, &want.y)?;
        same_bits(&format!("{what} last_output"), &got.last_output, &want.last_output)?;
        same_bits(&format!("{what} h_n"), &got.h_n, &want.h_n)?;
    }
    let (out, g1, fwd, bwd) = train(&c, &c.x, view, c.h0.as_deref(), c.upstream(), 1)?;
    same_bits("training forward y", &out.y, &one.y)?;
    same_bits("training forward h_n", &out.h_n, &one.h_n)?;
    for (what, s) in [("forward_train", fwd), ("backward", bwd)] {
        if s.steps_computed != valid {
            return Err(format!("{what} computed {} steps for {valid} valid steps", s.steps_computed));
        }
    }
    for (name, g) in GRAD_NAMES.iter().zip(&g1) {
        if let Some(k) = g.iter().position(|v| v.to_bits() == UNWRITTEN) {
            return Err(format!("{name}[{k}] was not written"));
        }
    }
    for s in 0..b {
        for tt in (0..t).filter(|&tt| !view.is_valid(s, tt)) {
            let o = (s * t + tt) * i;
            if let Some(k) = g1[0][o..o + i].iter().position(|v| v.to_bits() != 0) {
                return Err(format!("dx[{}] = {:?} at a masked step", o + k, g1[0][o + k]));
            }
        }
    }
    let (_, g2, _, _) = train(&c, &c.x, view, c.h0.as_deref(), c.upstream(), 2)?;
    for ((name, a), b2) in GRAD_NAMES.iter().zip(&g1).zip(&g2) {
        same_bits(&format!("threads 2 vs 1 ({name})"), b2, a)?;
    }
    if b > 1 && c.alone {
        check_alone(&c, &g1)?;
    }
    let worst = check_against_onnx(&c)?;
    let gru = matches!(c.layer, Recurrent::Gru(_));
    Ok(KerasHReport { gru, compared: worst.is_some(), worst: worst.unwrap_or(0.0), steps: valid })
}

/// Each sequence alone gets bitwise the `dx` and initial-state gradient it has in the batch.
fn check_alone(c: &Case, batch: &[Vec<f32>; 5]) -> Result<(), String> {
    let (view, h, i) = (&c.view, c.layer.units(), c.layer.input_size());
    let (b, t) = (view.batch(), view.time());
    let mask = view.to_mask();
    for s in 0..b {
        let one = SeqView::from_mask(&mask[s * t..(s + 1) * t], 1, t).map_err(|e| e.to_string())?;
        let row = |v: &Option<Vec<f32>>, n: usize| v.as_ref().map(|v| v[s * n..(s + 1) * n].to_vec());
        let (dy, d_last, d_h_n, h0) = (row(&c.dy, t * h), row(&c.d_last, h), row(&c.d_h_n, h), row(&c.h0, h));
        let up =
            KerasUpstream { dy: dy.as_deref(), d_last_output: d_last.as_deref(), d_h_n: d_h_n.as_deref(), d_c_n: None };
        let (_, g, _, _) = train(c, &c.x[s * t * i..(s + 1) * t * i], &one, h0.as_deref(), up, 1)?;
        same_bits(&format!("dx of sequence {s} alone"), &g[0], &batch[0][s * t * i..(s + 1) * t * i])?;
        same_bits(&format!("d_initial_h of sequence {s} alone"), &g[4], &batch[4][s * h..(s + 1) * h])?;
    }
    Ok(())
}

/// For smooth activations and finite valid inputs: the backward of the upstream at valid steps and of
/// `h_n` equals the float64 ONNX reference backward over each sequence's valid steps packed in processing
/// order. Returns the largest normwise difference, if it compared.
fn check_against_onnx(c: &Case) -> Result<Option<f32>, String> {
    let smooth = |a: Activation| matches!(a, Activation::Sigmoid | Activation::Tanh | Activation::Softsign);
    let (view, h, i) = (&c.view, c.layer.units(), c.layer.input_size());
    let (b, t) = (view.batch(), view.time());
    let finite =
        c.x.iter()
            .enumerate()
            .all(|(e, v)| v.is_finite() || !view.is_valid(e / (t * i).max(1), (e / i.max(1)) % t.max(1)));
    let packed_t = (0..b).map(|s| view.valid_len(s)).max().unwrap_or(0);
    if !smooth(c.acts.0) || !smooth(c.acts.1) || !finite || packed_t == 0 {
        return Ok(None);
    }
    // Processing position p reads time p (time t - 1 - p with go_backwards); y position p holds it.
    let time_of = |p: usize| if c.go_backwards { t - 1 - p } else { p };
    let steps: Vec<Vec<usize>> = (0..b).map(|s| (0..t).filter(|&p| view.is_valid(s, time_of(p))).collect()).collect();
    let wave = |n: usize, m: usize| (0..n).map(|k| (k * m % 53) as f32 / 26.0 - 1.0).collect::<Vec<f32>>();
    // Upstream at valid steps only (masked outputs repeat earlier ones: checked by the other properties).
    let mut dy = vec![0.0f32; b * t * h];
    let full = wave(b * t * h, 7907);
    for (s, ps) in steps.iter().enumerate() {
        for &p in ps {
            dy[(s * t + p) * h..(s * t + p + 1) * h].copy_from_slice(&full[(s * t + p) * h..(s * t + p + 1) * h]);
        }
    }
    let d_h_n = wave(b * h, 104_723);
    let up = KerasUpstream { dy: Some(&dy), d_last_output: None, d_h_n: Some(&d_h_n), d_c_n: None };
    let (_, got, _, _) = train(c, &c.x, view, c.h0.as_deref(), up, 1)?;
    // The ONNX problem: X [T', B, I], dY [T', 1, B, H], lengths the valid counts.
    let (mut x, mut d_y) = (vec![0.0f32; packed_t * b * i], vec![0.0f32; packed_t * b * h]);
    for (s, ps) in steps.iter().enumerate() {
        for (k, &p) in ps.iter().enumerate() {
            let tt = time_of(p);
            x[(k * b + s) * i..(k * b + s + 1) * i].copy_from_slice(&c.x[(s * t + tt) * i..(s * t + tt + 1) * i]);
            d_y[(k * b + s) * h..(k * b + s + 1) * h].copy_from_slice(&dy[(s * t + p) * h..(s * t + p + 1) * h]);
        }
    }
    let lens: Vec<i32> = steps.iter().map(|ps| ps.len() as i32).collect();
    let [k, rk, bi, br] = &c.weights;
    let g = if matches!(c.layer, Recurrent::Gru(_)) { 3 } else { 1 };
    let (w, r) = (transpose(k, i, g * h), transpose(rk, h, g * h));
    let bias = [&bi[..], &br[..]].concat();
    let up = OnnxUpstream { dy: Some(&d_y), dy_h: Some(&d_h_n), dy_c: None };
    let h0 = c.h0.as_deref();
    let err = |e: crate::Error| e.to_string();
    let want: OnnxGradsResult = if g == 3 {
        let attrs = OnnxGruAttrs::new(h, Direction::Forward)
            .linear_before_reset(c.reset_after)
            .activations(vec![c.acts.1, c.acts.0]);
        OnnxGru::new(attrs, i, &w, &r, Some(&bias)).map_err(err)?.backward_reference(
            &x,
            packed_t,
            b,
            Some(&lens),
            h0,
            up,
        )
    } else {
        let attrs = OnnxRnnAttrs::new(h, Direction::Forward).activations(vec![c.acts.0]);
        OnnxRnn::new(attrs, i, &w, &r, Some(&bias)).map_err(err)?.backward_reference(
            &x,
            packed_t,
            b,
            Some(&lens),
            h0,
            up,
        )
    }
    .map_err(err)?;
    // Keras' layouts of the reference gradients.
    let mut dx = vec![0.0f32; b * t * i];
    for (s, ps) in steps.iter().enumerate() {
        for (kk, &p) in ps.iter().enumerate() {
            let tt = time_of(p);
            dx[(s * t + tt) * i..(s * t + tt + 1) * i]
                .copy_from_slice(&want.dx[(kk * b + s) * i..(kk * b + s + 1) * i]);
        }
    }
    let keras_bias = if g == 3 && c.reset_after { want.db.clone() } else { want.db[..g * h].to_vec() };
    // A sequence without valid steps keeps its initial state as Keras' h_n (ONNX gives it zeros).
    let mut dh0 = want.d_initial_h.clone();
    for s in (0..b).filter(|&s| steps[s].is_empty()) {
        dh0[s * h..(s + 1) * h].copy_from_slice(&d_h_n[s * h..(s + 1) * h]);
    }
    let expected = [dx, transpose(&want.dw, g * h, i), transpose(&want.dr, g * h, h), keras_bias, dh0];
    let mut worst = 0.0f32;
    for ((name, got), exp) in GRAD_NAMES.iter().zip(&got).zip(&expected) {
        let scale = exp.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        worst = got.iter().zip(exp).fold(worst, |w, (g, e)| w.max((g - e).abs() / scale));
        let scaled = |v: &[f32]| v.iter().map(|x| x / scale).collect::<Vec<f32>>();
        near(name, &scaled(got), &scaled(exp), H_BACKWARD_TOL)
            .map_err(|e| format!("{e} (against the ONNX reference; activations {:?})", c.acts))?;
    }
    Ok(Some(worst))
}
