//! Fuzz logic, kept in the library so that `cargo test` replays thousands of seeded cases and the
//! `fuzz/` targets stay three lines long. Each function takes arbitrary bytes, builds a case from them and
//! returns `Err(description)` when a property fails (the fuzz targets panic on it).
//!
//! - [`skip_equals_masked`]: the fast path, which skips padded steps, equals the reference, which computes
//!   every step and selects by the mask; threads 1 and 2 and a sequence alone give bitwise the same output.
//! - [`seq_view`]: mask -> view -> mask round-trips; slicing the view equals slicing the mask.

// `byte % n == 0` reads as "one case in n" here.
#![allow(clippy::manual_is_multiple_of)]

use crate::cells::activation::Activation;
use crate::cells::weights::LstmWeights;
use crate::frameworks::keras::{InitialState, KerasLstm, KerasLstmOptions, KerasOutputs};
use crate::view::{Padding, SeqView};

/// Reads values from fuzz bytes; past the end it yields zeros, so every input is a valid case.
#[derive(Debug)]
pub struct ByteReader<'a> {
    data: &'a [u8],
}

impl<'a> ByteReader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        ByteReader { data }
    }
    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        let v = u16::from_le_bytes([self.u8(), self.u8()]) as usize;
        v % n
    }
    /// A boolean.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    /// A float in `[-scale, scale]` on a grid of 1/128 steps.
    pub fn unit(&mut self, scale: f32) -> f32 {
        (self.u8() as f32 - 127.5) / 127.5 * scale
    }
    /// A float that may be anything: NaN, infinities, huge or ordinary.
    pub fn wild(&mut self) -> f32 {
        match self.u8() % 8 {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => 1e30,
            _ => self.unit(4.0),
        }
    }
}

/// Compares two float slices: `|a - e| <= tol * max(|e|, 1)`, NaN equal to NaN.
pub fn close(what: &str, got: &[f32], expected: &[f32], tol: f32) -> Result<(), String> {
    if got.len() != expected.len() {
        return Err(format!("{what}: length {} != {}", got.len(), expected.len()));
    }
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        let ok = (g.is_nan() && e.is_nan()) || g == e || (g - e).abs() <= tol * e.abs().max(1.0);
        if !ok {
            return Err(format!("{what}[{i}]: got {g}, expected {e} (tolerance {tol})"));
        }
    }
    Ok(())
}

fn bitwise(what: &str, a: &[f32], b: &[f32]) -> Result<(), String> {
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.to_bits() != y.to_bits()) {
        return Err(format!("{what}: not bitwise identical"));
    }
    Ok(())
}

/// Hidden sizes at the edges of the lane blocks.
pub const EDGE_HIDDEN: [usize; 9] = [1, 7, 8, 9, 15, 16, 17, 33, 2];

/// A random view of `batch x time`: post/pre lengths (0, 1, T included), holes, all valid or all padded.
pub fn view_from_bytes(r: &mut ByteReader<'_>, batch: usize, time: usize) -> SeqView {
    let len = |r: &mut ByteReader<'_>| match r.u8() % 4 {
        0 => 0,
        1 => time.min(1),
        2 => time,
        _ => r.below(time + 1),
    };
    let result = match r.u8() % 5 {
        0 => SeqView::from_lengths(&(0..batch).map(|_| len(r)).collect::<Vec<_>>(), time, Padding::Post),
        1 => SeqView::from_lengths(&(0..batch).map(|_| len(r)).collect::<Vec<_>>(), time, Padding::Pre),
        2 => Ok(SeqView::full(batch, time)),
        3 => SeqView::from_mask(&vec![false; batch * time], batch, time),
        _ => {
            let density = r.u8();
            let mask: Vec<bool> = (0..batch * time).map(|_| r.u8() <= density).collect();
            SeqView::from_mask(&mask, batch, time)
        }
    };
    result.expect("sizes are consistent by construction")
}

/// Any schedule: results must not depend on it.
fn schedule(r: &mut ByteReader<'_>) -> crate::Schedule {
    [crate::Schedule::Auto, crate::Schedule::BatchChunks, crate::Schedule::GateColumns][r.below(3)]
}

fn activation(r: &mut ByteReader<'_>) -> Activation {
    match r.u8() % 8 {
        0 => Activation::Relu,
        1 => Activation::HARD_SIGMOID_KERAS2,
        2 => Activation::HARD_SIGMOID_KERAS3,
        3 => Activation::Softsign,
        4 => Activation::Sigmoid,
        _ => Activation::Tanh,
    }
}

/// A random Keras layer configuration, input, view and initial state.
pub struct KerasCase {
    /// The layer.
    pub layer: KerasLstm,
    /// `[B, T, I]`; padded steps hold arbitrary values (NaN, infinities) that must never be read.
    pub x: Vec<f32>,
    /// Valid steps.
    pub view: SeqView,
    /// Initial `(h, c)`, if any.
    pub initial: Option<(Vec<f32>, Vec<f32>)>,
}

impl KerasCase {
    /// Builds a case from fuzz bytes.
    pub fn from_bytes(data: &[u8]) -> KerasCase {
        Self::from_bytes_on(data, crate::kernel::selected())
    }

    /// Builds a case from fuzz bytes, with the layer packed for `backend`.
    pub fn from_bytes_on(data: &[u8], backend: &'static crate::kernel::Backend) -> KerasCase {
        let mut r = ByteReader::new(data);
        let batch = r.below(7);
        let time = r.below(13);
        let input = r.below(6);
        let hidden = if r.bool() { EDGE_HIDDEN[r.below(EDGE_HIDDEN.len())] } else { 1 + r.below(40) };
        let view = view_from_bytes(&mut r, batch, time);
        let options = KerasLstmOptions::default()
            .go_backwards(r.bool())
            .zero_output_for_mask(r.bool())
            .activation(if r.u8() % 4 == 0 { activation(&mut r) } else { Activation::Tanh })
            .recurrent_activation(if r.u8() % 4 == 0 { activation(&mut r) } else { Activation::Sigmoid });
        let scale = 0.25 + r.unit(1.0).abs();
        let mut w = |n: usize| (0..n).map(|_| r.unit(scale)).collect::<Vec<f32>>();
        let kernel = w(input * 4 * hidden);
        let recurrent = w(hidden * 4 * hidden);
        let bias = w(4 * hidden);
        let weights =
            LstmWeights::from_keras(input, hidden, &kernel, &recurrent, Some(&bias)).expect("consistent sizes");
        let layer =
            KerasLstm::with_backend(weights, options, backend).expect("small layer").with_schedule(schedule(&mut r));
        let mut x = vec![0.0; batch * time * input];
        for b in 0..batch {
            for t in 0..time {
                let valid = view.is_valid(b, t);
                for v in &mut x[(b * time + t) * input..(b * time + t + 1) * input] {
                    *v = if valid { r.unit(2.0) } else { r.wild() };
                }
            }
        }
        let initial = r.bool().then(|| {
            let h = (0..batch * hidden).map(|_| r.unit(1.0)).collect();
            let c = (0..batch * hidden).map(|_| r.unit(1.0)).collect();
            (h, c)
        });
        KerasCase { layer, x, view, initial }
    }

    fn init(&self) -> Option<InitialState<'_>> {
        self.initial.as_ref().map(|(h, c)| InitialState { h, c })
    }
}

/// Tolerance of the fast path against the reference: none. The reference runs in the backend's rounding
/// mode ([`crate::reference::Rounding`]) and the activations are the same IEEE operation sequences, so
/// every backend must match it bit for bit (NaN matching NaN).
pub const FAST_VS_REFERENCE_TOL: f32 = 0.0;

/// Property: skipping padded steps equals computing them under the mask; threads and batch composition
/// do not change a bit; the engine computes exactly the valid steps.
pub fn skip_equals_masked(data: &[u8]) -> Result<(), String> {
    skip_equals_masked_on(data, crate::kernel::selected())
}

/// [`skip_equals_masked`] on a given backend.
pub fn skip_equals_masked_on(data: &[u8], backend: &'static crate::kernel::Backend) -> Result<(), String> {
    let case = KerasCase::from_bytes_on(data, backend);
    let expected = case.layer.forward_reference(&case.x, &case.view, case.init()).map_err(|e| e.to_string())?;
    let (one, stats) = case.layer.forward_all(&case.x, &case.view, case.init(), 1).map_err(|e| e.to_string())?;
    if stats.steps_computed != case.view.total_valid() {
        return Err(format!("computed {} steps for {} valid steps", stats.steps_computed, case.view.total_valid()));
    }
    let tol = FAST_VS_REFERENCE_TOL;
    close("y", &one.y, &expected.y, tol)?;
    close("last_output", &one.last_output, &expected.last_output, tol)?;
    close("h_n", &one.h_n, &expected.h_n, tol)?;
    close("c_n", &one.c_n, &expected.c_n, tol)?;
    let (two, _) = case.layer.forward_all(&case.x, &case.view, case.init(), 2).map_err(|e| e.to_string())?;
    bitwise("threads 2 vs 1 (y)", &two.y, &one.y)?;
    // Every element of y is written, padded ones included: a y full of a NaN pattern ends up the same.
    let mut y = vec![f32::from_bits(0x7fc0_dead); one.y.len()];
    let out = KerasOutputs { y: Some(&mut y), ..Default::default() };
    let mut ws = crate::engine::Workspace::new();
    case.layer.forward_in(&case.x, &case.view, case.init(), out, 2, &mut ws).map_err(|e| e.to_string())?;
    bitwise("y over a NaN-filled buffer", &y, &one.y)?;
    bitwise("threads 2 vs 1 (h_n)", &two.h_n, &one.h_n)?;
    bitwise("threads 2 vs 1 (c_n)", &two.c_n, &one.c_n)?;
    // Each sequence alone gives bitwise the output it has in the batch.
    let (b, t, i, h) = (case.view.batch(), case.view.time(), case.layer.weights().input_size(), case.layer.units());
    for s in 0..b {
        let view = case.view.select_batch(s, s + 1).map_err(|e| e.to_string())?;
        let x = &case.x[s * t * i..(s + 1) * t * i];
        let init = case
            .initial
            .as_ref()
            .map(|(hh, cc)| InitialState { h: &hh[s * h..(s + 1) * h], c: &cc[s * h..(s + 1) * h] });
        let (alone, _) = case.layer.forward_all(x, &view, init, 1).map_err(|e| e.to_string())?;
        bitwise("alone vs batch (y)", &alone.y, &one.y[s * t * h..(s + 1) * t * h])?;
        bitwise("alone vs batch (h_n)", &alone.h_n, &one.h_n[s * h..(s + 1) * h])?;
        bitwise("alone vs batch (last_output)", &alone.last_output, &one.last_output[s * h..(s + 1) * h])?;
    }
    Ok(())
}

/// Property: a view round-trips through its mask, and slicing a view equals slicing its mask.
pub fn seq_view(data: &[u8]) -> Result<(), String> {
    let mut r = ByteReader::new(data);
    let batch = r.below(9);
    let time = r.below(40);
    let view = view_from_bytes(&mut r, batch, time);
    let mask = view.to_mask();
    let again = SeqView::from_mask(&mask, batch, time).map_err(|e| e.to_string())?;
    if again != view {
        return Err("mask -> view -> mask does not round-trip".into());
    }
    if view.total_valid() != mask.iter().filter(|&&m| m).count() {
        return Err("total_valid disagrees with the mask".into());
    }
    // Two nested slices, compared with slicing the mask itself.
    let mut cur = view;
    let mut cur_mask = mask;
    let mut cur_t = time;
    for _ in 0..2 {
        let a = r.below(cur_t + 1);
        let b = a + r.below(cur_t - a + 1);
        let sliced = cur.slice(a, b).map_err(|e| e.to_string())?;
        let sliced_mask: Vec<bool> = (0..batch).flat_map(|s| cur_mask[s * cur_t + a..s * cur_t + b].to_vec()).collect();
        let expected = SeqView::from_mask(&sliced_mask, batch, b - a).map_err(|e| e.to_string())?;
        if sliced != expected || sliced.to_mask() != sliced_mask {
            return Err(format!("slice [{a}, {b}) of the view differs from the slice of the mask"));
        }
        for s in 0..batch {
            if sliced.runs(s).any(|run| run.len == 0 || run.end() > b - a) {
                return Err("a sliced run is empty or out of the window".into());
            }
        }
        if cur.slice(a, cur_t + 1).is_ok() {
            return Err("a slice past the end was accepted".into());
        }
        cur = sliced;
        cur_mask = sliced_mask;
        cur_t = b - a;
    }
    Ok(())
}

/// A random ONNX LSTM node and its inputs.
pub struct OnnxCase {
    /// The node.
    pub node: crate::frameworks::onnx::OnnxLstm,
    /// `X` in the node's layout.
    pub x: Vec<f32>,
    /// `seq_length`.
    pub seq_length: usize,
    /// `batch_size`.
    pub batch: usize,
    /// `sequence_lens`, if given.
    pub lens: Option<Vec<i32>>,
    /// `initial_h`, if given.
    pub initial_h: Option<Vec<f32>>,
    /// `initial_c`, if given.
    pub initial_c: Option<Vec<f32>>,
}

impl OnnxCase {
    /// Builds a case from fuzz bytes.
    pub fn from_bytes(data: &[u8]) -> OnnxCase {
        Self::from_bytes_on(data, crate::kernel::selected())
    }

    /// Builds a case from fuzz bytes, with the node packed for `backend`.
    pub fn from_bytes_on(data: &[u8], backend: &'static crate::kernel::Backend) -> OnnxCase {
        use crate::frameworks::onnx::{Direction, Layout, OnnxLstm, OnnxLstmAttrs};
        let mut r = ByteReader::new(data);
        let (t, b, i) = (r.below(10), r.below(6), r.below(5));
        let h = if r.bool() { EDGE_HIDDEN[r.below(EDGE_HIDDEN.len())] } else { 1 + r.below(20) };
        let direction = [Direction::Forward, Direction::Reverse, Direction::Bidirectional][r.below(3)];
        let d_n = direction.count();
        let layout = if r.bool() { Layout::BatchMajor } else { Layout::SeqMajor };
        let n_acts = if r.bool() { 0 } else { 3 * d_n };
        let acts: Vec<Activation> = (0..n_acts)
            .map(|_| {
                let code = r.below(11) as i32;
                let alpha = if r.bool() { f32::NAN } else { r.unit(1.5) };
                let beta = if r.bool() { f32::NAN } else { r.unit(1.5) };
                Activation::from_code(code, alpha, beta).expect("code in range")
            })
            .collect();
        let clip = if r.u8() % 3 == 0 { Some(0.25 + r.unit(3.0).abs()) } else { None };
        let attrs =
            OnnxLstmAttrs::new(h, direction).layout(layout).clip(clip).input_forget(r.u8() % 4 == 0).activations(acts);
        let scale = 0.25 + r.unit(0.75).abs();
        let mut v = |n: usize, s: f32| (0..n).map(|_| r.unit(s)).collect::<Vec<f32>>();
        let w = v(d_n * 4 * h * i, scale);
        let rr = v(d_n * 4 * h * h, scale);
        let bias = v(d_n * 8 * h, scale);
        let peep = v(d_n * 3 * h, scale);
        let x = v(t * b * i, 2.0);
        let (use_b, use_p) = (r.bool(), r.u8() % 3 == 0);
        let node =
            OnnxLstm::with_backend(attrs, i, &w, &rr, use_b.then_some(&bias[..]), use_p.then_some(&peep[..]), backend)
                .expect("consistent case")
                .with_schedule(schedule(&mut r));
        let lens: Option<Vec<i32>> = (r.u8() % 4 != 0).then(|| {
            (0..b)
                .map(|_| match r.u8() % 4 {
                    0 => 0,
                    1 => t as i32,
                    _ => r.below(t + 1) as i32,
                })
                .collect()
        });
        let mut x = x;
        // Steps past a length hold anything, NaN included: they must never be read.
        if let Some(l) = &lens {
            for (bb, &len) in l.iter().enumerate() {
                for tt in len as usize..t {
                    let o = match layout {
                        Layout::SeqMajor => (tt * b + bb) * i,
                        Layout::BatchMajor => (bb * t + tt) * i,
                    };
                    x[o..o + i].iter_mut().for_each(|v| *v = r.wild());
                }
            }
        }
        let initial_h = r.bool().then(|| (0..d_n * b * h).map(|_| r.unit(1.0)).collect());
        let initial_c = r.bool().then(|| (0..d_n * b * h).map(|_| r.unit(1.0)).collect());
        OnnxCase { node, x, seq_length: t, batch: b, lens, initial_h, initial_c }
    }

    /// Runs the fast path.
    pub fn run(&self, threads: usize) -> crate::Result<(crate::frameworks::onnx::OnnxResult, crate::ForwardStats)> {
        self.node.forward_all(
            &self.x,
            self.seq_length,
            self.batch,
            self.lens.as_deref(),
            self.initial_h.as_deref(),
            self.initial_c.as_deref(),
            threads,
        )
    }
}

/// Property: the ONNX operator's fast path equals its plain reference in every direction and layout,
/// computes exactly the valid steps of each direction, and is bitwise independent of the thread count
/// and of the other sequences in the batch.
pub fn onnx_equals_reference(data: &[u8]) -> Result<(), String> {
    onnx_equals_reference_on(data, crate::kernel::selected())
}

/// [`onnx_equals_reference`] on a given backend.
pub fn onnx_equals_reference_on(data: &[u8], backend: &'static crate::kernel::Backend) -> Result<(), String> {
    use crate::frameworks::onnx::Layout;
    let case = OnnxCase::from_bytes_on(data, backend);
    let err = |e: crate::Error| e.to_string();
    let expected = case
        .node
        .forward_reference(
            &case.x,
            case.seq_length,
            case.batch,
            case.lens.as_deref(),
            case.initial_h.as_deref(),
            case.initial_c.as_deref(),
        )
        .map_err(err)?;
    let (one, stats) = case.run(1).map_err(err)?;
    let d_n = case.node.attrs().direction.count();
    let valid: usize = match &case.lens {
        Some(l) => l.iter().map(|&v| v as usize).sum(),
        None => case.seq_length * case.batch,
    };
    if stats.steps_computed != d_n * valid {
        return Err(format!("computed {} steps, {} directions x {valid} valid steps", stats.steps_computed, d_n));
    }
    let tol = FAST_VS_REFERENCE_TOL;
    close("Y", &one.y, &expected.y, tol)?;
    close("Y_h", &one.y_h, &expected.y_h, tol)?;
    close("Y_c", &one.y_c, &expected.y_c, tol)?;
    let (two, _) = case.run(2).map_err(err)?;
    bitwise("threads 2 vs 1 (Y)", &two.y, &one.y)?;
    bitwise("threads 2 vs 1 (Y_h)", &two.y_h, &one.y_h)?;
    // Each sequence alone, bitwise equal to its slice of the batch output.
    let (t, b, i, h) = (case.seq_length, case.batch, case.node.input_size(), case.node.attrs().hidden_size);
    let batch_major = case.node.attrs().layout == Layout::BatchMajor;
    for s in 0..b {
        let pick = |v: &[f32], outer: usize, inner_b: usize, w: usize| -> Vec<f32> {
            // Rows of sequence s from a tensor [outer][inner_b][w] (sequence on the inner axis) or, batch
            // major, [b][outer * w].
            if batch_major {
                v[s * outer * w..(s + 1) * outer * w].to_vec()
            } else {
                (0..outer).flat_map(|o| v[(o * inner_b + s) * w..(o * inner_b + s + 1) * w].to_vec()).collect()
            }
        };
        let x1 = pick(&case.x, t, b, i);
        let h1 = case.initial_h.as_ref().map(|v| pick(v, d_n, b, h));
        let c1 = case.initial_c.as_ref().map(|v| pick(v, d_n, b, h));
        let l1 = case.lens.as_ref().map(|l| vec![l[s]]);
        let (alone, _) =
            case.node.forward_all(&x1, t, 1, l1.as_deref(), h1.as_deref(), c1.as_deref(), 1).map_err(err)?;
        bitwise("alone vs batch (Y)", &alone.y, &pick(&one.y, t * d_n, b, h))?;
        bitwise("alone vs batch (Y_h)", &alone.y_h, &pick(&one.y_h, d_n, b, h))?;
        bitwise("alone vs batch (Y_c)", &alone.y_c, &pick(&one.y_c, d_n, b, h))?;
    }
    Ok(())
}

fn keras_weights(r: &mut ByteReader<'_>, input: usize, hidden: usize) -> LstmWeights {
    let scale = 0.25 + r.unit(0.75).abs();
    let mut w = |n: usize| (0..n).map(|_| r.unit(scale)).collect::<Vec<f32>>();
    let (k, rk, b) = (w(input * 4 * hidden), w(hidden * 4 * hidden), w(4 * hidden));
    LstmWeights::from_keras(input, hidden, &k, &rk, Some(&b)).expect("consistent sizes")
}

/// Property: Keras `Bidirectional` on the fast path equals the reference (two Keras layers, the backward
/// output flipped, then merged), computes each valid step once per direction, and does not depend on the
/// thread count.
pub fn bidirectional_equals_reference(data: &[u8]) -> Result<(), String> {
    use crate::frameworks::bidirectional::{BidirectionalState, KerasBidirectional, MergeMode};
    let mut r = ByteReader::new(data);
    let (b, t, i) = (r.below(6), r.below(11), r.below(5));
    let h = if r.bool() { EDGE_HIDDEN[r.below(EDGE_HIDDEN.len())] } else { 1 + r.below(12) };
    let view = view_from_bytes(&mut r, b, t);
    let merge = [MergeMode::Concat, MergeMode::Sum, MergeMode::Ave, MergeMode::Mul, MergeMode::None][r.below(5)];
    let return_sequences = r.u8() % 4 != 0;
    let options = KerasLstmOptions::default()
        .activation(if r.u8() % 4 == 0 { activation(&mut r) } else { Activation::Tanh })
        .recurrent_activation(if r.u8() % 4 == 0 { Activation::HARD_SIGMOID_KERAS3 } else { Activation::Sigmoid });
    let (wf, wb) = (keras_weights(&mut r, i, h), keras_weights(&mut r, i, h));
    let layer = KerasBidirectional::new(wf, wb, options, merge, return_sequences).map_err(|e| e.to_string())?;
    let mut x = vec![0.0; b * t * i];
    for s in 0..b {
        for tt in 0..t {
            let valid = view.is_valid(s, tt);
            for v in &mut x[(s * t + tt) * i..(s * t + tt + 1) * i] {
                *v = if valid { r.unit(2.0) } else { r.wild() };
            }
        }
    }
    let states: Vec<Vec<f32>> = (0..4).map(|_| (0..b * h).map(|_| r.unit(1.0)).collect()).collect();
    let init =
        r.bool().then(|| BidirectionalState { h_f: &states[0], c_f: &states[1], h_b: &states[2], c_b: &states[3] });
    let expected = layer.forward_reference(&x, &view, init).map_err(|e| e.to_string())?;
    let (one, stats) = layer.forward(&x, &view, init, 1).map_err(|e| e.to_string())?;
    if stats.steps_computed != 2 * view.total_valid() {
        return Err(format!("computed {} steps for 2 x {} valid steps", stats.steps_computed, view.total_valid()));
    }
    let tol = FAST_VS_REFERENCE_TOL;
    for (what, g, e) in [
        ("y", &one.y, &expected.y),
        ("y_forward", &one.y_forward, &expected.y_forward),
        ("y_backward", &one.y_backward, &expected.y_backward),
        ("h_f", &one.h_f, &expected.h_f),
        ("c_f", &one.c_f, &expected.c_f),
        ("h_b", &one.h_b, &expected.h_b),
        ("c_b", &one.c_b, &expected.c_b),
    ] {
        close(what, g, e, tol)?;
    }
    let (two, _) = layer.forward(&x, &view, init, 2).map_err(|e| e.to_string())?;
    bitwise("threads 2 vs 1 (y)", &two.y, &one.y)?;
    bitwise("threads 2 vs 1 (h_b)", &two.h_b, &one.h_b)?;
    Ok(())
}

/// Property: the PyTorch packed-sequence entry (stacked, bidirectional, unsorted lengths) equals its
/// reference, computes each valid step once per layer and direction, and does not depend on threads.
pub fn torch_equals_reference(data: &[u8]) -> Result<(), String> {
    use crate::frameworks::torch::{TorchLstm, TorchLstmParams};
    let mut r = ByteReader::new(data);
    let (t, b, i) = (1 + r.below(9), r.below(6), r.below(5));
    let h = if r.bool() { EDGE_HIDDEN[r.below(EDGE_HIDDEN.len())] } else { 1 + r.below(12) };
    let (layers, bidi, batch_first) = (1 + r.below(3), r.bool(), r.bool());
    let d_n = if bidi { 2 } else { 1 };
    let scale = 0.25 + r.unit(0.75).abs();
    let mut tensors: Vec<[Vec<f32>; 4]> = Vec::new();
    for k in 0..layers * d_n {
        let inp = if k < d_n { i } else { d_n * h };
        let mut w = |n: usize| (0..n).map(|_| r.unit(scale)).collect::<Vec<f32>>();
        tensors.push([w(4 * h * inp), w(4 * h * h), w(4 * h), w(4 * h)]);
    }
    let no_bias = r.u8() % 4 == 0;
    let params: Vec<TorchLstmParams<'_>> = tensors
        .iter()
        .map(|[a, bb, c, d]| TorchLstmParams {
            weight_ih: a,
            weight_hh: bb,
            bias_ih: (!no_bias).then_some(&c[..]),
            bias_hh: (!no_bias).then_some(&d[..]),
        })
        .collect();
    let model = TorchLstm::new(i, h, layers, bidi, &params).map_err(|e| e.to_string())?;
    let lengths: Vec<usize> = (0..b).map(|_| if r.bool() { t } else { 1 + r.below(t) }).collect();
    let mut x = vec![0.0; t * b * i];
    for (s, &len) in lengths.iter().enumerate() {
        for tt in 0..t {
            let o = if batch_first { (s * t + tt) * i } else { (tt * b + s) * i };
            for v in &mut x[o..o + i] {
                *v = if tt < len { r.unit(2.0) } else { r.wild() };
            }
        }
    }
    let n = layers * d_n * b * h;
    let h0: Option<Vec<f32>> = r.bool().then(|| (0..n).map(|_| r.unit(1.0)).collect());
    let c0: Option<Vec<f32>> = r.bool().then(|| (0..n).map(|_| r.unit(1.0)).collect());
    let expected = model
        .forward_packed_reference(&x, t, b, batch_first, &lengths, h0.as_deref(), c0.as_deref())
        .map_err(|e| e.to_string())?;
    let (one, stats) = model
        .forward_packed(&x, t, b, batch_first, &lengths, h0.as_deref(), c0.as_deref(), 1)
        .map_err(|e| e.to_string())?;
    let valid: usize = lengths.iter().sum();
    if stats.steps_computed != layers * d_n * valid {
        return Err(format!("computed {} steps for {layers} x {d_n} x {valid}", stats.steps_computed));
    }
    let tol = FAST_VS_REFERENCE_TOL;
    close("y", &one.y, &expected.y, tol)?;
    close("h_n", &one.h_n, &expected.h_n, tol)?;
    close("c_n", &one.c_n, &expected.c_n, tol)?;
    let (two, _) = model
        .forward_packed(&x, t, b, batch_first, &lengths, h0.as_deref(), c0.as_deref(), 2)
        .map_err(|e| e.to_string())?;
    bitwise("threads 2 vs 1 (y)", &two.y, &one.y)?;
    bitwise("threads 2 vs 1 (h_n)", &two.h_n, &one.h_n)?;
    Ok(())
}
