//! Fuzz logic, kept in the library so that `cargo test` replays thousands of seeded cases and the
//! `fuzz/` targets stay three lines long. Each function takes arbitrary bytes, builds a case from them and
//! returns `Err(description)` when a property fails (the fuzz targets panic on it).
//!
//! - [`skip_equals_masked`]: the fast path, which skips padded steps, equals the reference, which computes
//!   every step and selects by the mask; threads 1 and 2 and a sequence alone give bitwise the same output.
//! - [`seq_view`]: mask -> view -> mask round-trips; slicing the view equals slicing the mask.
//! - [`onnx_equals_reference`], [`bidirectional_equals_reference`], [`torch_equals_reference`]: the same
//!   for the ONNX operator, Keras `Bidirectional` and PyTorch packed sequences.
//! - [`backward_equals_reference`]: the Keras training forward and backward against the float64 reference
//!   backward (within [`BACKWARD_TOL`]), bitwise independent of threads and of the other sequences.
//!
//! "Equal" means bit for bit ([`same_bits`]): `-0.0` is not `+0.0`, and a NaN equals only the same NaN.
//! Every run's [`ForwardStats`] is also checked against the schedule it forced ([`check_schedule`]).
//!
//! Sizes are small, with the edges of the lane blocks ([`EDGE_HIDDEN`]); one case in 1024 draws a hidden
//! size of [`LARGE_HIDDEN`] (many weight blocks) or an input size of [`LARGE_INPUT`]; such cases (and cases
//! whose sizes a [`CaseSpec`] forces) fill whatever the bytes do not cover from a pseudo-random stream
//! seeded by them ([`ByteReader::noise_past_end`]), so their weights are not constant.

// `byte % n == 0` reads as "one case in n" here.
#![allow(clippy::manual_is_multiple_of)]

mod keras_h;
mod torch_h;

pub use keras_h::{check_keras_gru_rnn, keras_gru_rnn_equals_reference, KerasHReport};
pub use torch_h::torch_gru_rnn_equals_reference;

use crate::cells::activation::Activation;
use crate::cells::weights::LstmWeights;
use crate::engine::{ForwardStats, Schedule, Workspace};
use crate::frameworks::keras::{
    InitialState, KerasGrads, KerasLstm, KerasLstmOptions, KerasOutputs, KerasTape, KerasUpstream,
};
use crate::view::{Padding, SeqView};

/// Reads values from fuzz bytes; past the end it yields zeros (or, after
/// [`noise_past_end`](Self::noise_past_end), a pseudo-random stream), so every input is a valid case.
#[derive(Debug)]
pub struct ByteReader<'a> {
    data: &'a [u8],
    /// State of the SplitMix64 stream read past the end, if enabled.
    noise: Option<u64>,
}

impl<'a> ByteReader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        ByteReader { data, noise: None }
    }
    /// The next byte (past the end: 0, or the next byte of the noise stream).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => match &mut self.noise {
                Some(state) => {
                    // SplitMix64; the top byte of each output.
                    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = *state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    ((z ^ (z >> 31)) >> 56) as u8
                }
                None => 0,
            },
        }
    }
    /// From now on, reading past the end yields a pseudo-random stream seeded by the next 8 bytes (and the
    /// number of bytes left), instead of zeros: large cases need far more values than the fuzz input holds,
    /// and constant weights would hide a misplaced weight block.
    pub fn noise_past_end(&mut self) {
        let seed = u64::from_le_bytes(std::array::from_fn(|_| self.u8()));
        self.noise = Some(seed ^ (self.data.len() as u64).rotate_left(32));
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

/// Compares two float slices within a tolerance: `|g - e| <= tol * max(|e|, 1)`, NaN equal to any NaN.
/// For comparisons against a framework's numbers (fixtures), which sum in other orders.
///
/// A tolerance of `0.0` (or less, or NaN) means "bit for bit": the comparison is then [`same_bits`], which tells
/// `-0.0` from `+0.0` and one NaN from another.
pub fn close(what: &str, got: &[f32], expected: &[f32], tol: f32) -> Result<(), String> {
    if tol <= 0.0 || tol.is_nan() {
        return same_bits(what, got, expected);
    }
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

/// Compares two float slices bit for bit: every element's `to_bits()` must be equal, so `-0.0` differs
/// from `+0.0` and a NaN equals only a NaN with the same bit pattern (sign and payload).
///
/// # Errors
/// A message naming `what`, the first differing index, both values (decimal and hex bits) and how many
/// elements differ; or the two lengths when they differ.
pub fn same_bits(what: &str, got: &[f32], expected: &[f32]) -> Result<(), String> {
    if got.len() != expected.len() {
        return Err(format!("{what}: length {} != {}", got.len(), expected.len()));
    }
    let differs = |(g, e): (&f32, &f32)| g.to_bits() != e.to_bits();
    let Some(i) = got.iter().zip(expected).position(differs) else { return Ok(()) };
    let n = got.iter().zip(expected).filter(|&p| differs(p)).count();
    let (g, e) = (got[i], expected[i]);
    Err(format!(
        "{what}[{i}]: got {g:?} ({:#010x}), expected {e:?} ({:#010x}); {n} of {} elements differ in their bits",
        g.to_bits(),
        e.to_bits(),
        got.len()
    ))
}

/// Hidden sizes at the edges of the lane blocks (8 and 16 lanes).
pub const EDGE_HIDDEN: [usize; 9] = [1, 7, 8, 9, 15, 16, 17, 33, 2];

/// A hidden size of many weight blocks (33 blocks of 8 lanes, 17 of 16, the last one holding one unit),
/// drawn in one case of 1024.
pub const LARGE_HIDDEN: usize = 257;

/// A long input vector (a deep input projection), drawn in one case of 1024.
pub const LARGE_INPUT: usize = 1024;

/// Widest weight block of any backend, in lanes (AVX-512); the narrowest is 8.
const MAX_LANES: usize = 16;

/// Sizes (and optionally the schedule) forced on a generated case; everything else still comes from the
/// bytes. Forced cases read past the end of the bytes from a pseudo-random stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaseSpec {
    /// `B`.
    pub batch: usize,
    /// `T`.
    pub time: usize,
    /// `I`.
    pub input: usize,
    /// `H` (at least 1).
    pub hidden: usize,
    /// The schedule, or `None` to draw it from the bytes.
    pub schedule: Option<Schedule>,
}

/// An input size: `0..small`, or [`LARGE_INPUT`] in one case of 1024.
fn input_size(r: &mut ByteReader<'_>, small: usize) -> usize {
    // Not 0: bytes past the end read as 0, and a short input should stay a small case.
    if r.below(1024) == 1023 {
        LARGE_INPUT
    } else {
        r.below(small)
    }
}

/// A hidden size: an edge size (half the cases), `1..=small`, or [`LARGE_HIDDEN`] in one case of 1024.
fn hidden_size(r: &mut ByteReader<'_>, small: usize) -> usize {
    match r.below(1024) {
        1023 => LARGE_HIDDEN,
        k if k % 2 == 1 => EDGE_HIDDEN[r.below(EDGE_HIDDEN.len())],
        _ => 1 + r.below(small),
    }
}

/// Sizes from `spec`, or drawn by `draw`; a large or forced case switches `r` to noise past the end.
fn sizes(
    r: &mut ByteReader<'_>,
    spec: Option<CaseSpec>,
    draw: impl FnOnce(&mut ByteReader<'_>) -> [usize; 4],
) -> [usize; 4] {
    let sizes = match spec {
        Some(s) => [s.batch, s.time, s.input, s.hidden],
        None => draw(r),
    };
    if spec.is_some() || sizes[2] == LARGE_INPUT || sizes[3] == LARGE_HIDDEN {
        r.noise_past_end();
    }
    sizes
}

/// Cores the engine sees (`std::thread::available_parallelism`); it never splits gate columns on fewer
/// than 2.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether a run must have split the gate columns across threads, as far as the arguments decide it:
/// `Some(true)` it must, `Some(false)` it must not (one thread, no sequence with valid steps, fewer than 2
/// cores, [`Schedule::BatchChunks`], a single weight block, or [`Schedule::Auto`] below 128 hidden units),
/// `None` when it depends on the backend's lane width (8 < `hidden` <= 16) or on the cache
/// ([`Schedule::Auto`] from 128 units), or `threads` is 0 (the pool's size).
/// `active` is the number of sequences with at least one valid step.
pub fn expected_column_split(schedule: Schedule, threads: usize, hidden: usize, active: usize) -> Option<bool> {
    expected_split(schedule, threads, hidden, active, 1)
}

/// [`expected_column_split`] for a backward, which splits the blocks of the transposed recurrent weights:
/// 4 x LANES hidden units each, so a single block up to 32 units, and possibly 2 up to 64.
pub fn expected_backward_column_split(
    schedule: Schedule,
    threads: usize,
    hidden: usize,
    active: usize,
) -> Option<bool> {
    expected_split(schedule, threads, hidden, active, 4)
}

/// The rule of [`expected_column_split`] for column blocks of `units x LANES` hidden units.
fn expected_split(schedule: Schedule, threads: usize, hidden: usize, active: usize, units: usize) -> Option<bool> {
    let single_block = hidden <= units * 8;
    if threads == 1 || active == 0 || cores() < 2 || schedule == Schedule::BatchChunks || single_block {
        return Some(false);
    }
    if threads == 0 {
        return None;
    }
    match schedule {
        Schedule::GateColumns => (hidden > units * MAX_LANES).then_some(true),
        Schedule::Auto => (hidden < 128).then_some(false),
        Schedule::BatchChunks => Some(false),
    }
}

/// Checks that a call ran the schedule it had to ([`expected_column_split`]): `runs` layer-direction runs
/// (1 for a Keras layer, 2 for a bidirectional one, layers x directions for a stack), each over `active`
/// sequences with valid steps, all split by gate columns or all by batch chunks.
///
/// # Errors
/// A message naming `what`, the expectation and [`ForwardStats`].
pub fn check_schedule(
    what: &str,
    stats: &ForwardStats,
    schedule: Schedule,
    threads: usize,
    hidden: usize,
    active: usize,
    runs: usize,
) -> Result<(), String> {
    let expected = expected_column_split(schedule, threads, hidden, active);
    check_split(what, stats, expected, schedule, threads, hidden, active, runs)
}

/// [`check_schedule`] for a backward run ([`expected_backward_column_split`]).
///
/// # Errors
/// As [`check_schedule`].
pub fn check_backward_schedule(
    what: &str,
    stats: &ForwardStats,
    schedule: Schedule,
    threads: usize,
    hidden: usize,
    active: usize,
) -> Result<(), String> {
    let expected = expected_backward_column_split(schedule, threads, hidden, active);
    check_split(what, stats, expected, schedule, threads, hidden, active, 1)
}

#[allow(clippy::too_many_arguments)]
fn check_split(
    what: &str,
    stats: &ForwardStats,
    expected: Option<bool>,
    schedule: Schedule,
    threads: usize,
    hidden: usize,
    active: usize,
    runs: usize,
) -> Result<(), String> {
    let (columns, chunks) = (stats.column_split_runs, stats.batch_chunk_runs);
    let ok = match expected {
        Some(true) => columns == runs && chunks == 0,
        Some(false) => columns == 0 && (active == 0 || chunks == runs),
        None => active == 0 || columns + chunks == runs,
    };
    if ok {
        return Ok(());
    }
    Err(format!(
        "{what}: {schedule:?} on {threads} threads (H {hidden}, {active} active sequences, {} cores, {runs} \
         runs) should split gate columns: {expected:?}; ran {columns} column-split and {chunks} batch-chunk runs",
        cores()
    ))
}

/// What a differential check ran, for tests that count their coverage.
#[derive(Clone, Copy, Debug)]
pub struct CaseReport {
    /// The case's sizes and schedule.
    pub spec: CaseSpec,
    /// Statistics of the run on two threads.
    pub two_threads: ForwardStats,
}

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
fn schedule(r: &mut ByteReader<'_>) -> Schedule {
    [Schedule::Auto, Schedule::BatchChunks, Schedule::GateColumns][r.below(3)]
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
    /// The schedule the layer was given.
    pub schedule: Schedule,
}

impl KerasCase {
    /// Builds a case from fuzz bytes.
    pub fn from_bytes(data: &[u8]) -> KerasCase {
        Self::from_bytes_on(data, crate::kernel::selected())
    }

    /// Builds a case from fuzz bytes, with the layer packed for `backend`.
    pub fn from_bytes_on(data: &[u8], backend: &'static crate::kernel::Backend) -> KerasCase {
        Self::from_spec(data, backend, None)
    }

    /// Builds a case from fuzz bytes with the sizes (and schedule) of `spec` if given, the layer packed
    /// for `backend`.
    pub fn from_spec(data: &[u8], backend: &'static crate::kernel::Backend, spec: Option<CaseSpec>) -> KerasCase {
        let mut r = ByteReader::new(data);
        let [batch, time, input, hidden] =
            sizes(&mut r, spec, |r| [r.below(7), r.below(13), input_size(r, 6), hidden_size(r, 40)]);
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
        let schedule = spec.and_then(|s| s.schedule).unwrap_or_else(|| schedule(&mut r));
        let layer = KerasLstm::with_backend(weights, options, backend).expect("small layer").with_schedule(schedule);
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
        KerasCase { layer, x, view, initial, schedule }
    }

    /// The initial state as the layer takes it.
    pub fn init(&self) -> Option<InitialState<'_>> {
        self.initial.as_ref().map(|(h, c)| InitialState { h, c })
    }

    /// The case's sizes and schedule.
    pub fn spec(&self) -> CaseSpec {
        CaseSpec {
            batch: self.view.batch(),
            time: self.view.time(),
            input: self.layer.weights().input_size(),
            hidden: self.layer.units(),
            schedule: Some(self.schedule),
        }
    }
}

/// Sequences of `view` with at least one valid step.
fn active(view: &SeqView) -> usize {
    (0..view.batch()).filter(|&s| view.valid_len(s) > 0).count()
}

/// Tolerance of the fast path against the reference: none. The reference runs in the backend's rounding
/// mode ([`crate::reference::Rounding`]) and the activations are the same IEEE operation sequences, so
/// every backend must match it bit for bit, signs of zeros and NaN bit patterns included: the properties
/// here compare with [`same_bits`] (as [`close`] does with this tolerance).
pub const FAST_VS_REFERENCE_TOL: f32 = 0.0;

/// Property: skipping padded steps equals computing them under the mask; threads and batch composition
/// do not change a bit; the engine computes exactly the valid steps.
pub fn skip_equals_masked(data: &[u8]) -> Result<(), String> {
    skip_equals_masked_on(data, crate::kernel::selected())
}

/// [`skip_equals_masked`] on a given backend.
pub fn skip_equals_masked_on(data: &[u8], backend: &'static crate::kernel::Backend) -> Result<(), String> {
    check_keras_case(&KerasCase::from_bytes_on(data, backend)).map(drop)
}

/// The properties of [`skip_equals_masked`] on a given case; returns what ran.
pub fn check_keras_case(case: &KerasCase) -> Result<CaseReport, String> {
    let expected = case.layer.forward_reference(&case.x, &case.view, case.init()).map_err(|e| e.to_string())?;
    let (one, stats) = case.layer.forward_all(&case.x, &case.view, case.init(), 1).map_err(|e| e.to_string())?;
    if stats.steps_computed != case.view.total_valid() {
        return Err(format!("computed {} steps for {} valid steps", stats.steps_computed, case.view.total_valid()));
    }
    let (hidden, n_active) = (case.layer.units(), active(&case.view));
    check_schedule("threads 1", &stats, case.schedule, 1, hidden, n_active, 1)?;
    same_bits("y", &one.y, &expected.y)?;
    same_bits("last_output", &one.last_output, &expected.last_output)?;
    same_bits("h_n", &one.h_n, &expected.h_n)?;
    same_bits("c_n", &one.c_n, &expected.c_n)?;
    let (two, two_stats) = case.layer.forward_all(&case.x, &case.view, case.init(), 2).map_err(|e| e.to_string())?;
    check_schedule("threads 2", &two_stats, case.schedule, 2, hidden, n_active, 1)?;
    same_bits("threads 2 vs 1 (y)", &two.y, &one.y)?;
    // Every element of y is written, padded ones included: a y full of a NaN pattern ends up the same.
    let mut y = vec![f32::from_bits(0x7fc0_dead); one.y.len()];
    let out = KerasOutputs { y: Some(&mut y), ..Default::default() };
    let mut ws = crate::engine::Workspace::new();
    let stats = case.layer.forward_in(&case.x, &case.view, case.init(), out, 2, &mut ws).map_err(|e| e.to_string())?;
    check_schedule("forward_in, threads 2", &stats, case.schedule, 2, hidden, n_active, 1)?;
    same_bits("y over a NaN-filled buffer", &y, &one.y)?;
    same_bits("threads 2 vs 1 (h_n)", &two.h_n, &one.h_n)?;
    same_bits("threads 2 vs 1 (c_n)", &two.c_n, &one.c_n)?;
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
        same_bits("alone vs batch (y)", &alone.y, &one.y[s * t * h..(s + 1) * t * h])?;
        same_bits("alone vs batch (h_n)", &alone.h_n, &one.h_n[s * h..(s + 1) * h])?;
        same_bits("alone vs batch (last_output)", &alone.last_output, &one.last_output[s * h..(s + 1) * h])?;
        same_bits("alone vs batch (c_n)", &alone.c_n, &one.c_n[s * h..(s + 1) * h])?;
    }
    Ok(CaseReport { spec: case.spec(), two_threads: two_stats })
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

/// The cell of an ONNX recurrent operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnnxCell {
    /// `LSTM`.
    Lstm,
    /// `GRU` (either `linear_before_reset`).
    Gru,
    /// `RNN`.
    Rnn,
}

impl OnnxCell {
    /// Gates per hidden unit.
    fn gates(self) -> usize {
        match self {
            OnnxCell::Lstm => 4,
            OnnxCell::Gru => 3,
            OnnxCell::Rnn => 1,
        }
    }
}

/// An ONNX recurrent operator of any cell, as the ONNX properties drive it.
#[derive(Clone, Debug)]
pub enum OnnxNode {
    /// `LSTM`.
    Lstm(crate::frameworks::onnx::OnnxLstm),
    /// `GRU`.
    Gru(crate::frameworks::onnx::OnnxGru),
    /// `RNN`.
    Rnn(crate::frameworks::onnx::OnnxRnn),
}

impl OnnxNode {
    /// `(direction, layout, input size, hidden size)`.
    pub fn shape(&self) -> (crate::frameworks::onnx::Direction, crate::frameworks::onnx::Layout, usize, usize) {
        match self {
            OnnxNode::Lstm(n) => (n.attrs().direction, n.attrs().layout, n.input_size(), n.attrs().hidden_size),
            OnnxNode::Gru(n) => (n.attrs().direction, n.attrs().layout, n.input_size(), n.attrs().hidden_size),
            OnnxNode::Rnn(n) => (n.attrs().direction, n.attrs().layout, n.input_size(), n.attrs().hidden_size),
        }
    }

    /// The node's `forward_all` (`initial_c` only for the LSTM).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_all(
        &self,
        x: &[f32],
        t: usize,
        b: usize,
        lens: Option<&[i32]>,
        h0: Option<&[f32]>,
        c0: Option<&[f32]>,
        threads: usize,
    ) -> crate::Result<(crate::frameworks::onnx::OnnxResult, ForwardStats)> {
        match self {
            OnnxNode::Lstm(n) => n.forward_all(x, t, b, lens, h0, c0, threads),
            OnnxNode::Gru(n) => n.forward_all(x, t, b, lens, h0, threads),
            OnnxNode::Rnn(n) => n.forward_all(x, t, b, lens, h0, threads),
        }
    }

    /// The node's `forward_reference` (`initial_c` only for the LSTM).
    pub fn forward_reference(
        &self,
        x: &[f32],
        t: usize,
        b: usize,
        lens: Option<&[i32]>,
        h0: Option<&[f32]>,
        c0: Option<&[f32]>,
    ) -> crate::Result<crate::frameworks::onnx::OnnxResult> {
        match self {
            OnnxNode::Lstm(n) => n.forward_reference(x, t, b, lens, h0, c0),
            OnnxNode::Gru(n) => n.forward_reference(x, t, b, lens, h0),
            OnnxNode::Rnn(n) => n.forward_reference(x, t, b, lens, h0),
        }
    }
}

/// A random ONNX node (LSTM, GRU or RNN) and its inputs.
pub struct OnnxCase {
    /// The node.
    pub node: OnnxNode,
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
    /// `initial_c`, if given (LSTM only).
    pub initial_c: Option<Vec<f32>>,
    /// The schedule the node was given.
    pub schedule: Schedule,
}

impl OnnxCase {
    /// Builds a case from fuzz bytes.
    pub fn from_bytes(data: &[u8]) -> OnnxCase {
        Self::from_bytes_on(data, crate::kernel::selected())
    }

    /// Builds a case from fuzz bytes, with the node packed for `backend`.
    pub fn from_bytes_on(data: &[u8], backend: &'static crate::kernel::Backend) -> OnnxCase {
        Self::from_spec(data, backend, None)
    }

    /// Builds an LSTM case from fuzz bytes with the sizes (and schedule) of `spec` if given (`time` is
    /// `seq_length`), the node packed for `backend`.
    pub fn from_spec(data: &[u8], backend: &'static crate::kernel::Backend, spec: Option<CaseSpec>) -> OnnxCase {
        Self::from_cell(data, backend, spec, OnnxCell::Lstm)
    }

    /// Builds a case of `cell` from fuzz bytes, as [`from_spec`](Self::from_spec).
    pub fn from_cell(
        data: &[u8],
        backend: &'static crate::kernel::Backend,
        spec: Option<CaseSpec>,
        cell: OnnxCell,
    ) -> OnnxCase {
        use crate::frameworks::onnx::{
            Direction, Layout, OnnxGru, OnnxGruAttrs, OnnxLstm, OnnxLstmAttrs, OnnxRnn, OnnxRnnAttrs,
        };
        let mut r = ByteReader::new(data);
        let [b, t, i, h] = sizes(&mut r, spec, |r| {
            let (t, b, i) = (r.below(10), r.below(6), input_size(r, 5));
            [b, t, i, hidden_size(r, 20)]
        });
        let direction = [Direction::Forward, Direction::Reverse, Direction::Bidirectional][r.below(3)];
        let d_n = direction.count();
        let layout = if r.bool() { Layout::BatchMajor } else { Layout::SeqMajor };
        let per_dir = match cell {
            OnnxCell::Lstm => 3,
            OnnxCell::Gru => 2,
            OnnxCell::Rnn => 1,
        };
        let n_acts = if r.bool() { 0 } else { per_dir * d_n };
        let acts: Vec<Activation> = (0..n_acts)
            .map(|_| {
                let code = r.below(11) as i32;
                let alpha = if r.bool() { f32::NAN } else { r.unit(1.5) };
                let beta = if r.bool() { f32::NAN } else { r.unit(1.5) };
                Activation::from_code(code, alpha, beta).expect("code in range")
            })
            .collect();
        let clip = if r.u8() % 3 == 0 { Some(0.25 + r.unit(3.0).abs()) } else { None };
        // LSTM: input_forget; GRU: linear_before_reset.
        let option = r.u8() % 4 == 0;
        let g = cell.gates();
        let scale = 0.25 + r.unit(0.75).abs();
        let mut v = |n: usize, s: f32| (0..n).map(|_| r.unit(s)).collect::<Vec<f32>>();
        let w = v(d_n * g * h * i, scale);
        let rr = v(d_n * g * h * h, scale);
        let bias = v(d_n * 2 * g * h, scale);
        let peep = if cell == OnnxCell::Lstm { v(d_n * 3 * h, scale) } else { Vec::new() };
        let x = v(t * b * i, 2.0);
        let (use_b, use_p) = (r.bool(), r.u8() % 3 == 0);
        let schedule = spec.and_then(|s| s.schedule).unwrap_or_else(|| schedule(&mut r));
        let b_in = use_b.then_some(&bias[..]);
        let node = match cell {
            OnnxCell::Lstm => {
                let attrs =
                    OnnxLstmAttrs::new(h, direction).layout(layout).clip(clip).input_forget(option).activations(acts);
                let p = use_p.then_some(&peep[..]);
                OnnxNode::Lstm(
                    OnnxLstm::with_backend(attrs, i, &w, &rr, b_in, p, backend)
                        .expect("consistent case")
                        .with_schedule(schedule),
                )
            }
            OnnxCell::Gru => {
                let attrs = OnnxGruAttrs::new(h, direction)
                    .layout(layout)
                    .clip(clip)
                    .linear_before_reset(r.bool())
                    .activations(acts);
                let node = OnnxGru::with_backend(attrs, i, &w, &rr, b_in, backend).expect("consistent case");
                OnnxNode::Gru(node.with_schedule(schedule))
            }
            OnnxCell::Rnn => {
                let attrs = OnnxRnnAttrs::new(h, direction).layout(layout).clip(clip).activations(acts);
                let node = OnnxRnn::with_backend(attrs, i, &w, &rr, b_in, backend).expect("consistent case");
                OnnxNode::Rnn(node.with_schedule(schedule))
            }
        };
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
        let initial_c = initial_c.filter(|_| cell == OnnxCell::Lstm);
        OnnxCase { node, x, seq_length: t, batch: b, lens, initial_h, initial_c, schedule }
    }

    /// The case's sizes and schedule.
    pub fn spec(&self) -> CaseSpec {
        CaseSpec {
            batch: self.batch,
            time: self.seq_length,
            input: self.node.shape().2,
            hidden: self.node.shape().3,
            schedule: Some(self.schedule),
        }
    }

    /// Sequences with at least one valid step.
    pub fn active(&self) -> usize {
        match &self.lens {
            Some(l) => l.iter().filter(|&&v| v > 0).count(),
            None if self.seq_length > 0 => self.batch,
            None => 0,
        }
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
    check_onnx_case(&OnnxCase::from_bytes_on(data, backend)).map(drop)
}

/// Property: as [`onnx_equals_reference`] for the `GRU` (either placement of the reset gate; first byte
/// even) or the `RNN` operator (odd), and their backward (see `check_h_backward`: valid steps only, every
/// gradient written, bitwise thread-independent, equal to the float64 reference backward).
pub fn onnx_gru_rnn_equals_reference(data: &[u8]) -> Result<(), String> {
    let (cell, rest) = match data.split_first() {
        Some((c, rest)) if c % 2 == 1 => (OnnxCell::Rnn, rest),
        Some((_, rest)) => (OnnxCell::Gru, rest),
        None => (OnnxCell::Gru, data),
    };
    let case = OnnxCase::from_cell(rest, crate::kernel::selected(), None, cell);
    check_onnx_case(&case)?;
    check_h_backward(&case).map(drop)
}

/// The backward properties of a `GRU` / `RNN` case: the training forward and the backward compute the
/// valid steps only, every gradient element is written, `dX` is `+0.0` past each length, the gradients
/// are bitwise the same on 1 and 2 threads, and, for smooth bounded activations without a clip (no kink
/// where float32 and float64 may fall on different sides), they equal the float64 reference backward
/// within [`H_BACKWARD_TOL`]. Returns the largest normwise difference from the reference (`|got -
/// expected| / max(1, max |expected|)` over every gradient tensor) when it compared.
pub fn check_h_backward(case: &OnnxCase) -> Result<Option<f32>, String> {
    use crate::frameworks::onnx::{Layout, OnnxGrads, OnnxGradsResult, OnnxOutputs, OnnxTape, OnnxUpstream};
    let (direction, layout, i, h) = case.node.shape();
    let (t, b, d_n) = (case.seq_length, case.batch, direction.count());
    let valid: usize = case.lens.as_ref().map_or(t * b, |l| l.iter().map(|&v| v as usize).sum());
    // A fixed upstream, every element distinct from its neighbours.
    let wave = |n: usize, p: usize| (0..n).map(|k| (k * p % 61) as f32 / 30.0 - 1.0).collect::<Vec<f32>>();
    let (dy, dy_h) = (wave(t * d_n * b * h, 7919), wave(d_n * b * h, 104_729));
    let up = OnnxUpstream { dy: Some(&dy), dy_h: Some(&dy_h), dy_c: None };
    let h0 = case.initial_h.as_deref();
    let lens = case.lens.as_deref();
    let g = match &case.node {
        OnnxNode::Gru(_) => 3,
        OnnxNode::Rnn(_) => 1,
        OnnxNode::Lstm(_) => return Ok(None),
    };
    let run = |threads: usize| -> Result<(OnnxGradsResult, ForwardStats, ForwardStats), String> {
        let fill = |n: usize| vec![f32::from_bits(UNWRITTEN); n];
        let mut o = OnnxGradsResult {
            dx: fill(t * b * i),
            dw: fill(d_n * g * h * i),
            dr: fill(d_n * g * h * h),
            db: fill(d_n * 2 * g * h),
            d_initial_h: fill(d_n * b * h),
        };
        let grads = OnnxGrads {
            dx: Some(&mut o.dx),
            dw: Some(&mut o.dw),
            dr: Some(&mut o.dr),
            db: Some(&mut o.db),
            d_initial_h: Some(&mut o.d_initial_h),
            d_initial_c: None,
            dp: None,
        };
        let (mut tape, ws) = (OnnxTape::new(), &mut Workspace::new());
        let out = OnnxOutputs::default();
        let err = |e: crate::Error| e.to_string();
        let (fwd, bwd) = match &case.node {
            OnnxNode::Gru(n) => (
                n.forward_train(&case.x, t, b, lens, h0, out, &mut tape, threads, ws).map_err(err)?,
                n.backward(&case.x, t, b, lens, h0, &tape, up, grads, threads).map_err(err)?,
            ),
            OnnxNode::Rnn(n) => (
                n.forward_train(&case.x, t, b, lens, h0, out, &mut tape, threads, ws).map_err(err)?,
                n.backward(&case.x, t, b, lens, h0, &tape, up, grads, threads).map_err(err)?,
            ),
            OnnxNode::Lstm(_) => unreachable!("returned above"),
        };
        Ok((o, fwd, bwd))
    };
    let (one, fwd, bwd) = run(1)?;
    for (what, stats) in [("forward_train", fwd), ("backward", bwd)] {
        if stats.steps_computed != d_n * valid {
            return Err(format!("{what} computed {} steps for {d_n} x {valid} valid steps", stats.steps_computed));
        }
    }
    let all = [("dX", &one.dx), ("dW", &one.dw), ("dR", &one.dr), ("dB", &one.db), ("d_initial_h", &one.d_initial_h)];
    for (what, v) in all {
        if let Some(k) = v.iter().position(|x| x.to_bits() == UNWRITTEN) {
            return Err(format!("{what}[{k}] was not written"));
        }
    }
    for s in 0..b {
        let len = case.lens.as_ref().map_or(t, |l| l[s] as usize);
        for tt in len..t {
            let o = if layout == Layout::BatchMajor { (s * t + tt) * i } else { (tt * b + s) * i };
            if let Some(k) = one.dx[o..o + i].iter().position(|v| v.to_bits() != 0) {
                return Err(format!("dX[{}] = {:?} past the length of sequence {s}", o + k, one.dx[o + k]));
            }
        }
    }
    let (two, _, _) = run(2)?;
    for (what, a, b2) in [
        ("dX", &one.dx, &two.dx),
        ("dW", &one.dw, &two.dw),
        ("dR", &one.dr, &two.dr),
        ("dB", &one.db, &two.db),
        ("d_initial_h", &one.d_initial_h, &two.d_initial_h),
    ] {
        same_bits(&format!("threads 2 vs 1 ({what})"), b2, a)?;
    }
    let (acts, clip) = match &case.node {
        OnnxNode::Gru(n) => (n.attrs().activations.clone(), n.attrs().clip),
        OnnxNode::Rnn(n) => (n.attrs().activations.clone(), n.attrs().clip),
        OnnxNode::Lstm(_) => unreachable!("returned above"),
    };
    // Smooth with slopes at most 1 (a steeper activation amplifies float32 rounding step after step).
    let smooth = |a: &Activation| matches!(a, Activation::Sigmoid | Activation::Tanh | Activation::Softsign);
    // The valid steps' inputs (padding may hold anything, and is never read).
    let finite = h0.unwrap_or(&[]).iter().all(|v| v.is_finite())
        && (0..b).all(|s| {
            let len = case.lens.as_ref().map_or(t, |l| l[s] as usize);
            (0..len).all(|tt| {
                let o = if layout == Layout::BatchMajor { (s * t + tt) * i } else { (tt * b + s) * i };
                case.x[o..o + i].iter().all(|v| v.is_finite())
            })
        });
    let mut worst = None;
    if clip.is_none() && acts.iter().all(smooth) && finite {
        let want = match &case.node {
            OnnxNode::Gru(n) => n.backward_reference(&case.x, t, b, lens, h0, up),
            OnnxNode::Rnn(n) => n.backward_reference(&case.x, t, b, lens, h0, up),
            OnnxNode::Lstm(_) => unreachable!("returned above"),
        }
        .map_err(|e| e.to_string())?;
        for (what, got, exp) in [
            ("dX", &one.dx, &want.dx),
            ("dW", &one.dw, &want.dw),
            ("dR", &one.dr, &want.dr),
            ("dB", &one.db, &want.db),
            ("d_initial_h", &one.d_initial_h, &want.d_initial_h),
        ] {
            // Normwise: a weight gradient is a sum over every valid step, and the recurrence may amplify
            // float32 rounding; each element within the tolerance of the tensor's largest magnitude.
            let scale = exp.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let w = got.iter().zip(exp.iter()).fold(worst.unwrap_or(0.0f32), |w, (g, e)| w.max((g - e).abs() / scale));
            worst = Some(w);
            let scaled = |v: &[f32]| v.iter().map(|x| x / scale).collect::<Vec<f32>>();
            near(what, &scaled(got), &scaled(exp), H_BACKWARD_TOL).map_err(|e| format!("{e}; activations {acts:?}"))?;
        }
    }
    Ok(worst)
}

/// Tolerance of a `GRU` / `RNN` backward against the float64 reference in [`onnx_gru_rnn_equals_reference`],
/// normwise (relative to each gradient tensor's largest magnitude, at least 1): float32 rounding through
/// the recurrence and the sums over every valid step (fuzzed weights up to 1 on layers of hundreds of
/// units amplify it step after step: 1.1e-4 was found by `cargo fuzz`; 1e-4 passes the 10,000 seeded
/// cases of tests/suite/differential.rs).
pub const H_BACKWARD_TOL: f32 = 1e-3;

/// The properties of [`onnx_equals_reference`] on a given case; returns what ran.
pub fn check_onnx_case(case: &OnnxCase) -> Result<CaseReport, String> {
    use crate::frameworks::onnx::Layout;
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
    let (direction, layout, input, hidden) = case.node.shape();
    let d_n = direction.count();
    let valid: usize = match &case.lens {
        Some(l) => l.iter().map(|&v| v as usize).sum(),
        None => case.seq_length * case.batch,
    };
    if stats.steps_computed != d_n * valid {
        return Err(format!("computed {} steps, {} directions x {valid} valid steps", stats.steps_computed, d_n));
    }
    same_bits("Y", &one.y, &expected.y)?;
    same_bits("Y_h", &one.y_h, &expected.y_h)?;
    same_bits("Y_c", &one.y_c, &expected.y_c)?;
    let n_active = case.active();
    check_schedule("threads 1", &stats, case.schedule, 1, hidden, n_active, d_n)?;
    let (two, two_stats) = case.run(2).map_err(err)?;
    check_schedule("threads 2", &two_stats, case.schedule, 2, hidden, n_active, d_n)?;
    same_bits("threads 2 vs 1 (Y)", &two.y, &one.y)?;
    same_bits("threads 2 vs 1 (Y_h)", &two.y_h, &one.y_h)?;
    same_bits("threads 2 vs 1 (Y_c)", &two.y_c, &one.y_c)?;
    // Each sequence alone, bitwise equal to its slice of the batch output.
    let (t, b, i, h) = (case.seq_length, case.batch, input, hidden);
    let batch_major = layout == Layout::BatchMajor;
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
        same_bits("alone vs batch (Y)", &alone.y, &pick(&one.y, t * d_n, b, h))?;
        same_bits("alone vs batch (Y_h)", &alone.y_h, &pick(&one.y_h, d_n, b, h))?;
        if !one.y_c.is_empty() {
            same_bits("alone vs batch (Y_c)", &alone.y_c, &pick(&one.y_c, d_n, b, h))?;
        }
    }
    Ok(CaseReport { spec: case.spec(), two_threads: two_stats })
}

fn keras_weights(r: &mut ByteReader<'_>, input: usize, hidden: usize) -> LstmWeights {
    let scale = 0.25 + r.unit(0.75).abs();
    let mut w = |n: usize| (0..n).map(|_| r.unit(scale)).collect::<Vec<f32>>();
    let (k, rk, b) = (w(input * 4 * hidden), w(hidden * 4 * hidden), w(4 * hidden));
    LstmWeights::from_keras(input, hidden, &k, &rk, Some(&b)).expect("consistent sizes")
}

/// Property: Keras `Bidirectional` of an LSTM, a GRU (either `reset_after`) or a SimpleRNN (first byte
/// mod 3) on the fast path equals the reference (two Keras layers, the backward output flipped, then
/// merged), computes each valid step once per direction, and does not depend on the thread count.
pub fn bidirectional_equals_reference(data: &[u8]) -> Result<(), String> {
    use crate::frameworks::bidirectional::{BidirectionalState, KerasBidirectional, MergeMode};
    let mut r = ByteReader::new(data);
    let cell = r.u8() % 3;
    let (b, t, i) = (r.below(6), r.below(11), r.below(5));
    let h = if r.bool() { EDGE_HIDDEN[r.below(EDGE_HIDDEN.len())] } else { 1 + r.below(12) };
    let view = view_from_bytes(&mut r, b, t);
    let merge = [MergeMode::Concat, MergeMode::Sum, MergeMode::Ave, MergeMode::Mul, MergeMode::None][r.below(5)];
    let return_sequences = r.u8() % 4 != 0;
    let options = KerasLstmOptions::default()
        .activation(if r.u8() % 4 == 0 { activation(&mut r) } else { Activation::Tanh })
        .recurrent_activation(if r.u8() % 4 == 0 { Activation::HARD_SIGMOID_KERAS3 } else { Activation::Sigmoid });
    let err = |e: crate::Error| e.to_string();
    let layer = match cell {
        0 => {
            let (wf, wb) = (keras_weights(&mut r, i, h), keras_weights(&mut r, i, h));
            KerasBidirectional::new(wf, wb, options, merge, return_sequences).map_err(err)?
        }
        _ => {
            use crate::frameworks::keras::{KerasGru, KerasGruOptions, KerasRnnOptions, KerasSimpleRnn, Recurrent};
            let reset_after = r.bool();
            let scale = 0.25 + r.unit(0.75).abs();
            let layer = |r: &mut ByteReader<'_>| -> crate::Result<Recurrent> {
                let mut w = |n: usize| (0..n).map(|_| r.unit(scale)).collect::<Vec<f32>>();
                Ok(if cell == 1 {
                    let (k, rk, b) = (w(i * 3 * h), w(h * 3 * h), w(if reset_after { 6 } else { 3 } * h));
                    let w = crate::GruWeights::from_keras(i, h, &k, &rk, Some(&b), reset_after)?;
                    let o = KerasGruOptions::default()
                        .reset_after(reset_after)
                        .activation(options.activation)
                        .recurrent_activation(options.recurrent_activation);
                    KerasGru::new(w, o)?.into()
                } else {
                    let (k, rk, b) = (w(i * h), w(h * h), w(h));
                    let w = crate::RnnWeights::from_keras(i, h, &k, &rk, Some(&b))?;
                    KerasSimpleRnn::new(w, KerasRnnOptions::default().activation(options.activation))?.into()
                })
            };
            let (f, bw) = (layer(&mut r).map_err(err)?, layer(&mut r).map_err(err)?);
            KerasBidirectional::from_layers(f, bw, merge, return_sequences).map_err(err)?
        }
    };
    let mut x = vec![0.0; b * t * i];
    for s in 0..b {
        for tt in 0..t {
            let valid = view.is_valid(s, tt);
            for v in &mut x[(s * t + tt) * i..(s * t + tt + 1) * i] {
                *v = if valid { r.unit(2.0) } else { r.wild() };
            }
        }
    }
    let c_len = if cell == 0 { b * h } else { 0 }; // the GRU and SimpleRNN have no c
    let states: Vec<Vec<f32>> =
        (0..4).map(|k| (0..if k % 2 == 0 { b * h } else { c_len }).map(|_| r.unit(1.0)).collect()).collect();
    let init =
        r.bool().then(|| BidirectionalState { h_f: &states[0], c_f: &states[1], h_b: &states[2], c_b: &states[3] });
    let expected = layer.forward_reference(&x, &view, init).map_err(|e| e.to_string())?;
    let (one, stats) = layer.forward(&x, &view, init, 1).map_err(|e| e.to_string())?;
    if stats.steps_computed != 2 * view.total_valid() {
        return Err(format!("computed {} steps for 2 x {} valid steps", stats.steps_computed, view.total_valid()));
    }
    for (what, g, e) in [
        ("y", &one.y, &expected.y),
        ("y_forward", &one.y_forward, &expected.y_forward),
        ("y_backward", &one.y_backward, &expected.y_backward),
        ("h_f", &one.h_f, &expected.h_f),
        ("c_f", &one.c_f, &expected.c_f),
        ("h_b", &one.h_b, &expected.h_b),
        ("c_b", &one.c_b, &expected.c_b),
    ] {
        same_bits(what, g, e)?;
    }
    let n_active = active(&view);
    check_schedule("threads 1", &stats, Schedule::Auto, 1, h, n_active, 2)?;
    let (two, two_stats) = layer.forward(&x, &view, init, 2).map_err(|e| e.to_string())?;
    check_schedule("threads 2", &two_stats, Schedule::Auto, 2, h, n_active, 2)?;
    same_bits("threads 2 vs 1 (y)", &two.y, &one.y)?;
    same_bits("threads 2 vs 1 (h_b)", &two.h_b, &one.h_b)?;
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
    same_bits("y", &one.y, &expected.y)?;
    same_bits("h_n", &one.h_n, &expected.h_n)?;
    same_bits("c_n", &one.c_n, &expected.c_n)?;
    check_schedule("threads 1", &stats, Schedule::Auto, 1, h, b, layers * d_n)?;
    let (two, two_stats) = model
        .forward_packed(&x, t, b, batch_first, &lengths, h0.as_deref(), c0.as_deref(), 2)
        .map_err(|e| e.to_string())?;
    check_schedule("threads 2", &two_stats, Schedule::Auto, 2, h, b, layers * d_n)?;
    same_bits("threads 2 vs 1 (y)", &two.y, &one.y)?;
    same_bits("threads 2 vs 1 (h_n)", &two.h_n, &one.h_n)?;
    Ok(())
}

/// Relative tolerance of the fast backward against the float64 reference backward (rounded to f32):
/// `|got - expected| <= BACKWARD_TOL * max(|expected|, 1)`.
pub const BACKWARD_TOL: f32 = 1e-5;

/// How close (in the pre-activation) a valid step of a [`backward_equals_reference`] case may come to an
/// activation's kink before its comparison with the reference is skipped: there f32 and f64 may fall on
/// different sides, and their derivatives legitimately differ.
pub const KINK_MARGIN: f64 = 1e-3;

/// Gradient buffers before a backward call: a NaN pattern, so an element left unwritten shows.
const UNWRITTEN: u32 = 0x7fc0_dead;

/// Names of the gradients in the order [`TrainRun::grads`] holds them.
pub const GRAD_NAMES: [&str; 6] = ["dx", "d_kernel", "d_recurrent_kernel", "d_bias", "d_initial_h", "d_initial_c"];

/// A random Keras training case: a layer (weights scaled by `1/sqrt(fan-in)`, so gradients stay well
/// conditioned), its input (NaN, infinities and huge values at masked steps), view, initial state, and
/// the upstream gradients of the outputs, each present or absent.
pub struct BackwardCase {
    /// The layer, input, view, initial state and schedule.
    pub case: KerasCase,
    /// `[B, T, H]`, of `y`, if present.
    pub dy: Option<Vec<f32>>,
    /// `[B, H]`, of `last_output`, if present.
    pub d_last_output: Option<Vec<f32>>,
    /// `[B, H]`, of `h_n`, if present.
    pub d_h_n: Option<Vec<f32>>,
    /// `[B, H]`, of `c_n`, if present.
    pub d_c_n: Option<Vec<f32>>,
    /// Whether the runs of single sequences also ask for the parameter gradients (their `dx` and
    /// initial-state gradients must not depend on it).
    pub alone_params: bool,
}

/// Keras `activation`s (candidate and output), kinked ones (relu, both hard_sigmoid flavours) included.
fn keras_activation(r: &mut ByteReader<'_>) -> Activation {
    match r.u8() % 8 {
        0 | 1 => Activation::Relu,
        2 => Activation::HARD_SIGMOID_KERAS2,
        3 => Activation::HARD_SIGMOID_KERAS3,
        4 => Activation::Softsign,
        5 => Activation::Elu { alpha: 1.0 },
        6 => Activation::Softplus,
        _ => Activation::Sigmoid,
    }
}

/// Keras `recurrent_activation`s other than sigmoid: both hard_sigmoid flavours. Gates stay in `[0, 1]`
/// as Keras' do: a gate that can exceed 1 (relu, softplus) or turn negative (tanh, softsign) makes the
/// gradients so sensitive that a one-ulp change of an input moves them by more than [`BACKWARD_TOL`],
/// and no f32 computation can then meet it.
fn keras_gate(r: &mut ByteReader<'_>) -> Activation {
    if r.bool() {
        Activation::HARD_SIGMOID_KERAS2
    } else {
        Activation::HARD_SIGMOID_KERAS3
    }
}

impl BackwardCase {
    /// Builds a case from fuzz bytes.
    pub fn from_bytes(data: &[u8]) -> BackwardCase {
        Self::from_bytes_on(data, crate::kernel::selected())
    }

    /// Builds a case from fuzz bytes, with the layer packed for `backend`. Sizes: `B < 5`, `T < 10`,
    /// `I < 6` (or [`LARGE_INPUT`] in one case of 1024), `H` an edge size, `1..=20` (or [`LARGE_HIDDEN`]
    /// in one case of 1024); a large case has `B <= 2` and `T <= 4`, and with the large `H`, `T <= 2` and
    /// `I <= 5`.
    pub fn from_bytes_on(data: &[u8], backend: &'static crate::kernel::Backend) -> BackwardCase {
        let mut r = ByteReader::new(data);
        let [mut batch, mut time, mut input, hidden] =
            sizes(&mut r, None, |r| [r.below(5), r.below(10), input_size(r, 6), hidden_size(r, 20)]);
        if hidden == LARGE_HIDDEN || input == LARGE_INPUT {
            // The fuzzer finds the large sizes easily (it sees the comparison), and then keeps them in its
            // corpus: keep those cases to a few steps, and never both large at once, so that they stay fast.
            (batch, time) = (batch.min(2), time.min(4));
            if hidden == LARGE_HIDDEN {
                (time, input) = (time.min(2), input.min(5));
            }
        }
        let view = view_from_bytes(&mut r, batch, time);
        let options = KerasLstmOptions::default()
            .go_backwards(r.bool())
            .zero_output_for_mask(r.bool())
            .activation(if r.u8() % 2 == 0 { keras_activation(&mut r) } else { Activation::Tanh })
            .recurrent_activation(if r.u8() % 2 == 0 { keras_gate(&mut r) } else { Activation::Sigmoid });
        // Pre-activations of order `scale` whatever the sizes: sums of f32 terms then stay accurate to
        // well within the tolerance.
        let scale = 0.25 + r.unit(1.5).abs();
        let (sk, sr) = (scale / (input.max(1) as f32).sqrt(), scale / (hidden as f32).sqrt());
        let mut w = |n: usize, s: f32| (0..n).map(|_| r.unit(s)).collect::<Vec<f32>>();
        let kernel = w(input * 4 * hidden, sk);
        let recurrent = w(hidden * 4 * hidden, sr);
        let bias = w(4 * hidden, scale);
        let weights =
            LstmWeights::from_keras(input, hidden, &kernel, &recurrent, Some(&bias)).expect("consistent sizes");
        let schedule = schedule(&mut r);
        let layer = KerasLstm::with_backend(weights, options, backend).expect("small layer").with_schedule(schedule);
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
        let mut upstream = |n: usize| (r.u8() % 4 != 0).then(|| (0..n).map(|_| r.unit(1.0)).collect::<Vec<f32>>());
        let dy = upstream(batch * time * hidden);
        let (d_last_output, d_h_n, d_c_n) =
            (upstream(batch * hidden), upstream(batch * hidden), upstream(batch * hidden));
        let alone_params = r.bool();
        let case = KerasCase { layer, x, view, initial, schedule };
        BackwardCase { case, dy, d_last_output, d_h_n, d_c_n, alone_params }
    }

    /// The upstream gradients as the layer takes them.
    pub fn upstream(&self) -> KerasUpstream<'_> {
        KerasUpstream {
            dy: self.dy.as_deref(),
            d_last_output: self.d_last_output.as_deref(),
            d_h_n: self.d_h_n.as_deref(),
            d_c_n: self.d_c_n.as_deref(),
        }
    }

    /// Whether an activation of the layer has a kink (a jump of its derivative).
    pub fn kinked(&self) -> bool {
        let o = self.case.layer.options();
        [o.activation, o.recurrent_activation].iter().any(|&a| kink(a, 0.0).is_finite())
    }

    /// The float64 reference backward, rounded to f32 (gradients in [`TrainRun::grads`]'s order), and
    /// the smallest distance of a valid step's activation argument from a kink (arguments exactly at a
    /// kink excepted: see [`backward_equals_reference`]).
    pub fn reference(&self) -> ([Vec<f32>; 6], f64) {
        use crate::cells::lstm::CellSpec;
        use crate::reference::backward::{keras_lstm_backward, keras_lstm_tape, KerasUpstream64, LstmParams64};
        let c = &self.case;
        let f = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        let p = LstmParams64::from_weights(c.layer.weights());
        let o = c.layer.options();
        let cell = CellSpec::keras(o.activation, o.recurrent_activation);
        let (b, t) = (c.view.batch(), c.view.time());
        let (x, mask) = (f(&c.x), c.view.to_mask());
        let init = c.initial.as_ref().map(|(h, cc)| (f(h), f(cc)));
        let init = init.as_ref().map(|(h, cc)| (&h[..], &cc[..]));
        let mut margin = f64::INFINITY;
        let tape = if self.kinked() {
            keras_lstm_tape(&p, &cell, &x, &mask, b, t, o.go_backwards, o.zero_output_for_mask, init).1
        } else {
            Vec::new() // no kink to come near
        };
        for args in tape.iter().flatten().flat_map(|s| s.arguments(&p, &cell)) {
            let acts = [cell.gate, cell.gate, cell.cell, cell.gate, cell.output];
            for (&a, &v) in acts.iter().zip(&args) {
                let d = kink(a, v);
                if d > 0.0 {
                    margin = margin.min(d);
                }
            }
        }
        let up: [Option<Vec<f64>>; 4] =
            [&self.dy, &self.d_last_output, &self.d_h_n, &self.d_c_n].map(|v| v.as_deref().map(f));
        let up = KerasUpstream64 {
            dy: up[0].as_deref(),
            d_last_output: up[1].as_deref(),
            d_h_n: up[2].as_deref(),
            d_c_n: up[3].as_deref(),
        };
        let g = keras_lstm_backward(&p, &cell, &x, &mask, b, t, o.go_backwards, o.zero_output_for_mask, init, &up);
        let r = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let grads = [
            r(&g.dx),
            r(&g.params.d_kernel),
            r(&g.params.d_recurrent),
            r(&g.params.d_bias),
            r(&g.d_initial_h),
            r(&g.d_initial_c),
        ];
        (grads, margin)
    }
}

/// Distance of `x` from a kink of `a` ([`kink_distance`](crate::reference::backward::kink_distance)),
/// infinite for `elu` with alpha 1, whose derivative is continuous.
fn kink(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Elu { alpha: 1.0 } => f64::INFINITY,
        _ => crate::reference::backward::kink_distance(a, x),
    }
}

/// One training step of a layer: the outputs of `forward_train`, the gradients asked for (in the order
/// of [`GRAD_NAMES`]: dx, kernel, recurrent kernel, bias, initial h, initial c) and both calls' stats.
pub struct TrainRun {
    /// Outputs of the training forward.
    pub out: crate::reference::KerasResult,
    /// The gradients asked for.
    pub grads: [Option<Vec<f32>>; 6],
    /// Statistics of `forward_train`.
    pub forward: ForwardStats,
    /// Statistics of `backward`.
    pub backward: ForwardStats,
}

/// Runs `forward_train` (every output requested) then `backward` (the gradients `want` asks for, in
/// the order of [`GRAD_NAMES`], in buffers filled with a NaN pattern), reusing `tape` and `ws`.
///
/// # Errors
/// The message of a call's error.
#[allow(clippy::too_many_arguments)]
pub fn train_run(
    layer: &KerasLstm,
    x: &[f32],
    view: &SeqView,
    init: Option<InitialState<'_>>,
    up: KerasUpstream<'_>,
    want: [bool; 6],
    threads: usize,
    tape: &mut KerasTape,
    ws: &mut Workspace,
) -> Result<TrainRun, String> {
    let (b, t, i, h) = (view.batch(), view.time(), layer.weights().input_size(), layer.units());
    let nan = f32::from_bits(UNWRITTEN);
    let mut out = crate::reference::KerasResult {
        y: vec![nan; b * t * h],
        last_output: vec![nan; b * h],
        h_n: vec![nan; b * h],
        c_n: vec![nan; b * h],
    };
    let outputs = KerasOutputs {
        y: Some(&mut out.y),
        last_output: Some(&mut out.last_output),
        h_n: Some(&mut out.h_n),
        c_n: Some(&mut out.c_n),
    };
    let forward = layer.forward_train(x, view, init, outputs, tape, threads, ws).map_err(|e| e.to_string())?;
    let lens = [b * t * i, i * 4 * h, h * 4 * h, 4 * h, b * h, b * h];
    let mut grads: [Option<Vec<f32>>; 6] = std::array::from_fn(|k| want[k].then(|| vec![nan; lens[k]]));
    let [dx, dk, dr, db, dh0, dc0] = &mut grads;
    let g = KerasGrads {
        dx: dx.as_deref_mut(),
        d_kernel: dk.as_deref_mut(),
        d_recurrent_kernel: dr.as_deref_mut(),
        d_bias: db.as_deref_mut(),
        d_initial_h: dh0.as_deref_mut(),
        d_initial_c: dc0.as_deref_mut(),
    };
    let backward = layer.backward(x, view, init, tape, up, g, threads).map_err(|e| e.to_string())?;
    Ok(TrainRun { out, grads, forward, backward })
}

/// `|got - expected| <= tol * max(|expected|, 1)` elementwise; unlike [`close`], a NaN is never close.
fn near(what: &str, got: &[f32], expected: &[f32], tol: f32) -> Result<(), String> {
    if got.len() != expected.len() {
        return Err(format!("{what}: length {} != {}", got.len(), expected.len()));
    }
    for (k, (&g, &e)) in got.iter().zip(expected).enumerate() {
        let ok = (g - e).abs() <= tol * e.abs().max(1.0); // false for a NaN
        if !ok {
            return Err(format!("{what}[{k}]: got {g:?}, reference {e:?} (tolerance {tol} relative, floor 1)"));
        }
    }
    Ok(())
}

/// What [`check_backward_case`] ran.
#[derive(Clone, Copy, Debug)]
pub struct BackwardReport {
    /// The case's sizes and schedule.
    pub spec: CaseSpec,
    /// Whether an activation of the layer has a kink.
    pub kinked: bool,
    /// Whether the gradients were compared with the reference (not when a valid step came within
    /// [`KINK_MARGIN`] of a kink).
    pub compared: bool,
    /// Valid steps (each computed once forward and once backward).
    pub steps: usize,
}

/// Property: the fast Keras backward (after `forward_train`) equals the float64 reference backward
/// within [`BACKWARD_TOL`]; `forward_train`'s outputs are bitwise those of `forward`; forward and backward
/// compute exactly the valid steps; `dx` is `+0.0` bit for bit at masked steps, whose NaN and infinite
/// inputs reach no gradient; every requested gradient is written; threads 1 and 2 give bitwise the same
/// outputs and gradients; a sequence alone gives bitwise the `dx` and initial-state gradients it has in
/// the batch.
///
/// The comparison with the reference is skipped (and the other properties still checked) when a valid
/// step's activation argument lies within [`KINK_MARGIN`] of a kink of relu or hard_sigmoid, where
/// f32 and f64 may take different sides. Arguments exactly at a kink are not counted: they arise
/// structurally (a zero cell state and relu of a negative value give `c = 0` exactly, in f32 as in f64),
/// and both sides then use the same derivative.
pub fn backward_equals_reference(data: &[u8]) -> Result<(), String> {
    backward_equals_reference_on(data, crate::kernel::selected())
}

/// [`backward_equals_reference`] on a given backend.
pub fn backward_equals_reference_on(data: &[u8], backend: &'static crate::kernel::Backend) -> Result<(), String> {
    check_backward_case(&BackwardCase::from_bytes_on(data, backend)).map(drop)
}

/// The properties of [`backward_equals_reference`] on a given case; returns what ran.
pub fn check_backward_case(bc: &BackwardCase) -> Result<BackwardReport, String> {
    let c = &bc.case;
    let (layer, view) = (&c.layer, &c.view);
    let (b, t, i, h) = (view.batch(), view.time(), layer.weights().input_size(), layer.units());
    let (valid, n_active) = (view.total_valid(), active(view));
    let (mut tape, mut ws) = (KerasTape::new(), Workspace::new());
    let one = train_run(layer, &c.x, view, c.init(), bc.upstream(), [true; 6], 1, &mut tape, &mut ws)?;
    for (what, stats) in [("forward_train", &one.forward), ("backward", &one.backward)] {
        if stats.steps_computed != valid {
            return Err(format!("{what} computed {} steps for {valid} valid steps", stats.steps_computed));
        }
    }
    check_schedule("forward_train, threads 1", &one.forward, c.schedule, 1, h, n_active, 1)?;
    check_backward_schedule("backward, threads 1", &one.backward, c.schedule, 1, h, n_active)?;
    let (plain, _) = layer.forward_all(&c.x, view, c.init(), 1).map_err(|e| e.to_string())?;
    same_bits("forward_train vs forward (y)", &one.out.y, &plain.y)?;
    same_bits("forward_train vs forward (last_output)", &one.out.last_output, &plain.last_output)?;
    same_bits("forward_train vs forward (h_n)", &one.out.h_n, &plain.h_n)?;
    same_bits("forward_train vs forward (c_n)", &one.out.c_n, &plain.c_n)?;
    let g: [&[f32]; 6] = std::array::from_fn(|k| one.grads[k].as_deref().expect("every gradient requested"));
    for (name, v) in GRAD_NAMES.iter().zip(g) {
        if let Some(k) = v.iter().position(|x| !x.is_finite()) {
            return Err(format!("{name}[{k}] is {:?}: unwritten, or a masked input leaked", v[k]));
        }
    }
    for s in 0..b {
        for tt in (0..t).filter(|&tt| !view.is_valid(s, tt)) {
            let o = (s * t + tt) * i;
            if let Some(k) = g[0][o..o + i].iter().position(|v| v.to_bits() != 0) {
                return Err(format!("dx[{}] = {:?} at masked step (batch {s}, time {tt})", o + k, g[0][o + k]));
            }
        }
    }
    // The reference, unless a valid step is too close to a kink.
    let (expected, margin) = bc.reference();
    let compared = margin >= KINK_MARGIN;
    if compared {
        for ((name, got), exp) in GRAD_NAMES.iter().zip(g).zip(&expected) {
            near(name, got, exp, BACKWARD_TOL)?;
        }
    }
    // Two threads: bitwise the same.
    let two = train_run(layer, &c.x, view, c.init(), bc.upstream(), [true; 6], 2, &mut tape, &mut ws)?;
    check_schedule("forward_train, threads 2", &two.forward, c.schedule, 2, h, n_active, 1)?;
    check_backward_schedule("backward, threads 2", &two.backward, c.schedule, 2, h, n_active)?;
    if two.backward.steps_computed != valid {
        return Err(format!("backward on 2 threads computed {} steps for {valid}", two.backward.steps_computed));
    }
    same_bits("threads 2 vs 1 (y)", &two.out.y, &one.out.y)?;
    same_bits("threads 2 vs 1 (last_output)", &two.out.last_output, &one.out.last_output)?;
    same_bits("threads 2 vs 1 (h_n)", &two.out.h_n, &one.out.h_n)?;
    same_bits("threads 2 vs 1 (c_n)", &two.out.c_n, &one.out.c_n)?;
    for ((name, a), bb) in GRAD_NAMES.iter().zip(&two.grads).zip(g) {
        same_bits(&format!("threads 2 vs 1 ({name})"), a.as_deref().expect("requested"), bb)?;
    }
    // Each sequence alone: bitwise its dx and initial-state gradients in the batch.
    fn rows(v: &Option<Vec<f32>>, r: std::ops::Range<usize>) -> Option<&[f32]> {
        v.as_ref().map(|v| &v[r])
    }
    let want = [true, bc.alone_params, bc.alone_params, bc.alone_params, true, true];
    for s in 0..b {
        let view1 = view.select_batch(s, s + 1).map_err(|e| e.to_string())?;
        let x1 = &c.x[s * t * i..(s + 1) * t * i];
        let state = |v| rows(v, s * h..(s + 1) * h);
        let init =
            c.initial.as_ref().map(|(hh, cc)| InitialState { h: &hh[s * h..(s + 1) * h], c: &cc[s * h..(s + 1) * h] });
        let up = KerasUpstream {
            dy: rows(&bc.dy, s * t * h..(s + 1) * t * h),
            d_last_output: state(&bc.d_last_output),
            d_h_n: state(&bc.d_h_n),
            d_c_n: state(&bc.d_c_n),
        };
        let alone = train_run(layer, x1, &view1, init, up, want, 1, &mut tape, &mut ws)?;
        let ranges = [s * t * i..(s + 1) * t * i, s * h..(s + 1) * h, s * h..(s + 1) * h];
        for (k, range) in [0, 4, 5].into_iter().zip(ranges) {
            let got = alone.grads[k].as_deref().expect("requested");
            same_bits(&format!("sequence {s} alone vs in the batch ({})", GRAD_NAMES[k]), got, &g[k][range])?;
        }
    }
    Ok(BackwardReport { spec: c.spec(), kinked: bc.kinked(), compared, steps: valid })
}
