//! Fuzz logic, kept in the library so that `cargo test` replays thousands of seeded cases and the
//! `fuzz/` targets stay three lines long. Each function takes arbitrary bytes, builds a case from them and
//! returns `Err(description)` when a property fails (the fuzz targets panic on it).
//!
//! - [`skip_equals_masked`]: the fast path, which skips padded steps, equals the reference, which computes
//!   every step and selects by the mask; threads 1 and 2 and a sequence alone give bitwise the same output.
//! - [`seq_view`]: mask -> view -> mask round-trips; slicing the view equals slicing the mask.

use crate::activation::Activation;
use crate::keras::{InitialState, KerasLstm, KerasLstmOptions};
use crate::view::{Padding, SeqView};
use crate::weights::LstmWeights;

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
    /// Relative tolerance of the fast path against the reference for this case.
    pub tolerance: f32,
}

impl KerasCase {
    /// Builds a case from fuzz bytes.
    pub fn from_bytes(data: &[u8]) -> KerasCase {
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
        // Unbounded gates (relu as recurrent_activation) let f > 1, so the state grows exponentially and
        // rounding differences are amplified from step to step like the state itself: any two correct f32
        // implementations differ by more than 1e-6 there. Bounded gates keep the tight tolerance.
        let gate_bounded = !matches!(options.recurrent_activation, Activation::Relu | Activation::Softsign);
        let scale = 0.25 + r.unit(1.0).abs();
        let mut w = |n: usize| (0..n).map(|_| r.unit(scale)).collect::<Vec<f32>>();
        let kernel = w(input * 4 * hidden);
        let recurrent = w(hidden * 4 * hidden);
        let bias = w(4 * hidden);
        let weights =
            LstmWeights::from_keras(input, hidden, &kernel, &recurrent, Some(&bias)).expect("consistent sizes");
        let layer = KerasLstm::new(weights, options).expect("small layer");
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
        let tolerance = if gate_bounded { FAST_VS_REFERENCE_TOL } else { UNBOUNDED_GATE_TOL };
        KerasCase { layer, x, view, initial, tolerance }
    }

    fn init(&self) -> Option<InitialState<'_>> {
        self.initial.as_ref().map(|(h, c)| InitialState { h, c })
    }
}

/// Relative tolerance of the fast path against the reference (bounded gate activations).
pub const FAST_VS_REFERENCE_TOL: f32 = 1e-6;
/// Relative tolerance with unbounded gate activations, where the recurrence amplifies rounding.
pub const UNBOUNDED_GATE_TOL: f32 = 1e-4;

/// Property: skipping padded steps equals computing them under the mask; threads and batch composition
/// do not change a bit; the engine computes exactly the valid steps.
pub fn skip_equals_masked(data: &[u8]) -> Result<(), String> {
    let case = KerasCase::from_bytes(data);
    let expected = case.layer.forward_reference(&case.x, &case.view, case.init()).map_err(|e| e.to_string())?;
    let (one, stats) = case.layer.forward_all(&case.x, &case.view, case.init(), 1).map_err(|e| e.to_string())?;
    if stats.steps_computed != case.view.total_valid() {
        return Err(format!("computed {} steps for {} valid steps", stats.steps_computed, case.view.total_valid()));
    }
    // A backend that fuses no multiply-add performs the reference's operations in the reference's order.
    let tol = if case.layer.backend().fused_multiply_add { case.tolerance } else { 0.0 };
    close("y", &one.y, &expected.y, tol)?;
    close("last_output", &one.last_output, &expected.last_output, tol)?;
    close("h_n", &one.h_n, &expected.h_n, tol)?;
    close("c_n", &one.c_n, &expected.c_n, tol)?;
    let (two, _) = case.layer.forward_all(&case.x, &case.view, case.init(), 2).map_err(|e| e.to_string())?;
    bitwise("threads 2 vs 1 (y)", &two.y, &one.y)?;
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
