//! The engine with every cell against the cells' scalar definitions: bit for bit in each backend's
//! rounding, for both schedules, 1 and 2 threads, both directions, holes and pre-padding, and a sequence
//! alone vs in a batch. (The LSTM is covered the same way through its frameworks, in `tests/`.)

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::layout::{OutRegion, Region, SeqIn, SeqOut, StateIn};
use super::workspace::JobScratch;
use super::{EmptyState, Fill, ForwardStats, Job, Schedule};
use crate::cells::activation::Activation;
use crate::cells::gru::{GruKernel, GruSpec, GruWeights, PackedGru};
use crate::cells::rnn::{PackedRnn, RnnKernel, RnnSpec, RnnWeights};
use crate::kernel::{self, Backend, CellKernel};
use crate::reference::{HStep, Rounding};
use crate::view::SeqView;

/// One forward job over `x [B][T][I]`: `(y [B][T][H], h_n [B][H], stats)`, ONNX conventions (zeros at
/// padded positions and for empty sequences).
#[allow(clippy::too_many_arguments)]
fn run<C: CellKernel>(
    backend: &'static Backend,
    cell: C,
    view: &SeqView,
    x: &[f32],
    reverse: bool,
    init: Option<&[f32]>,
    threads: usize,
    schedule: Schedule,
) -> (Vec<f32>, Vec<f32>, ForwardStats) {
    let (b, t, i, h) = (view.batch(), view.time(), cell.packed().input, cell.packed().hidden);
    let mut y = vec![f32::NAN; b * t * h];
    let mut h_n = vec![f32::NAN; b * h];
    let [yo] = OutRegion::split("y", &mut y, [Region::seq(0, b, t * h, t, h, h)]).unwrap();
    let [ho] = OutRegion::split("h_n", &mut h_n, [Region::state(0, b, h, h)]).unwrap();
    let job = Job {
        backend,
        cell,
        view,
        x: SeqIn { data: x, off: 0, sb: t * i, st: i },
        reverse,
        init: init.map(|h0| StateIn { h: h0, c: &[], off: 0, sb: h }),
        empty_state: EmptyState::Zero,
        y: Some(SeqOut { out: yo, mirror: false, fill: Fill::Zero }),
        h_n: Some(ho),
        c_n: None,
        tape: None,
        threads,
        schedule,
    };
    let stats = job.run(&mut JobScratch::default()).unwrap();
    (y, h_n, stats)
}

/// The same by stepping `step` over each sequence's valid steps.
fn reference(
    view: &SeqView,
    x: &[f32],
    (i, h): (usize, usize),
    reverse: bool,
    init: Option<&[f32]>,
    step: HStep<'_>,
) -> (Vec<f32>, Vec<f32>) {
    let (b_n, t_n) = (view.batch(), view.time());
    let (mut y, mut h_n) = (vec![0.0; b_n * t_n * h], vec![0.0; b_n * h]);
    for b in 0..b_n {
        let mut times: Vec<usize> = (0..t_n).filter(|&t| view.is_valid(b, t)).collect();
        if times.is_empty() {
            continue;
        }
        if reverse {
            times.reverse();
        }
        let mut state = init.map_or(vec![0.0; h], |s| s[b * h..(b + 1) * h].to_vec());
        for t in times {
            state = step(&x[(b * t_n + t) * i..][..i], &state);
            y[(b * t_n + t) * h..][..h].copy_from_slice(&state);
        }
        h_n[b * h..(b + 1) * h].copy_from_slice(&state);
    }
    (y, h_n)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn uniform(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// A random mask: all valid, post-padded, pre-padded, holes, or empty sequences among them.
fn random_view(rng: &mut StdRng, b: usize, t: usize) -> SeqView {
    let mask: Vec<bool> = (0..b)
        .flat_map(|_| {
            let kind = rng.random_range(0..5);
            let len = rng.random_range(0..=t);
            let p: f64 = rng.random_range(0.2..0.9);
            (0..t)
                .map(|s| match kind {
                    0 => true,
                    1 => s < len,
                    2 => s >= t - len,
                    3 => rng.random_bool(p),
                    _ => false,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    SeqView::from_mask(&mask, b, t).unwrap()
}

/// A case's cell, run through `check`.
enum Cell {
    Gru(GruWeights, GruSpec),
    Rnn(RnnWeights, RnnSpec),
}

const ACTS: [Activation; 5] = [
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::Relu,
    Activation::HardSigmoid { alpha: 0.2, beta: 0.5 },
    Activation::Elu { alpha: 1.0 },
];

fn random_cell(rng: &mut StdRng, gru: bool, i: usize, h: usize) -> Cell {
    let s = 1.0 / (h as f32).sqrt();
    let (kn, rn) = (uniform(rng, i * 3 * h, s), uniform(rng, h * 3 * h, s));
    let clip = rng.random_bool(0.3).then(|| rng.random_range(0.5..3.0));
    let pick = |rng: &mut StdRng, standard: Activation| {
        if rng.random_bool(0.7) {
            standard
        } else {
            ACTS[rng.random_range(0..ACTS.len())]
        }
    };
    if gru {
        let spec =
            GruSpec::onnx(pick(rng, Activation::Sigmoid), pick(rng, Activation::Tanh), clip, rng.random_bool(0.5));
        let b = uniform(rng, 6 * h, 0.5);
        Cell::Gru(GruWeights::from_onnx(i, h, &kn, &rn, Some(&b)).unwrap(), spec)
    } else {
        let spec = RnnSpec::new(pick(rng, Activation::Tanh), clip);
        let b = uniform(rng, 2 * h, 0.5);
        let (k1, r1) = (&kn[..i * h], &rn[..h * h]);
        Cell::Rnn(RnnWeights::from_onnx(i, h, k1, r1, Some(&b)).unwrap(), spec)
    }
}

/// Every backend and schedule against the scalar definition, bit for bit; returns the steps computed and
/// the runs that split the gate columns.
fn check(rng: &mut StdRng, gru: bool, dims: (usize, usize, usize, usize)) -> (usize, usize) {
    let (b, t, i, h) = dims;
    let cell = random_cell(rng, gru, i, h);
    let view = random_view(rng, b, t);
    let x = uniform(rng, b * t * i, 1.0);
    let init = rng.random_bool(0.5).then(|| uniform(rng, b * h, 1.0));
    let reverse = rng.random_bool(0.5);
    let valid = view.total_valid();
    let mut split = 0;
    for backend in kernel::available() {
        let rounding = Rounding::of(backend);
        macro_rules! with_kernel {
            ($kernel:expr, $step:expr) => {{
                let want = reference(&view, &x, (i, h), reverse, init.as_deref(), &$step);
                let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
                for (threads, schedule) in
                    [(1, Schedule::BatchChunks), (2, Schedule::BatchChunks), (2, Schedule::GateColumns)]
                {
                    let (y, h_n, stats) = run(backend, $kernel, &view, &x, reverse, init.as_deref(), threads, schedule);
                    let what = format!("{} {dims:?} threads {threads} {schedule:?} reverse {reverse}", backend.name);
                    assert_eq!(stats.steps_computed, valid, "{what}");
                    split += stats.column_split_runs;
                    assert_eq!(bits(&y), bits(&want.0), "y: {what}");
                    assert_eq!(bits(&h_n), bits(&want.1), "h_n: {what}");
                    match &first {
                        None => first = Some((y, h_n)),
                        Some(f) => assert_eq!((bits(&f.0), bits(&f.1)), (bits(&y), bits(&h_n)), "{what}"),
                    }
                }
            }};
        }
        match &cell {
            Cell::Gru(w, spec) => {
                let packed = PackedGru::new(w, spec.reset_after, backend.nb).unwrap();
                with_kernel!(GruKernel { packed: &packed, spec }, |x: &[f32], hs: &[f32]| spec
                    .step_rounded(w, x, hs, rounding))
            }
            Cell::Rnn(w, spec) => {
                let packed = PackedRnn::new(w, backend.nb).unwrap();
                with_kernel!(RnnKernel { packed: &packed, spec }, |x: &[f32], hs: &[f32]| spec
                    .step_rounded(w, x, hs, rounding))
            }
        }
    }
    (valid, split)
}

/// Edge sizes: hidden sizes around the block widths (1, 7, 8, 9, 15, 16, 17, 33) and a few larger.
const HIDDEN: [usize; 11] = [1, 2, 7, 8, 9, 15, 16, 17, 33, 40, 70];

fn sweep(gru: bool, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut steps, mut splits) = (0, 0);
    for case in 0..300 {
        let h = HIDDEN[case % HIDDEN.len()];
        let dims = (rng.random_range(1..14), rng.random_range(1..12), rng.random_range(1..20), h);
        let (s, c) = check(&mut rng, gru, dims);
        steps += s;
        splits += c;
    }
    // Two cores or more split the columns (`plan::use_columns`).
    let want_splits = if super::plan::cores() >= 2 { 100 } else { 0 };
    assert!(steps > 5000 && splits >= want_splits, "the cases computed only {steps} steps, {splits} column splits");
}

#[test]
fn gru_matches_its_definition_bitwise() {
    sweep(true, 9);
}

#[test]
fn rnn_matches_its_definition_bitwise() {
    sweep(false, 10);
}

/// A sequence computes the same bits alone as in a batch, in both placements of the reset gate.
#[test]
fn gru_sequence_alone_equals_in_batch() {
    let mut rng = StdRng::seed_from_u64(11);
    let (b, t, i, h) = (9, 13, 6, 37);
    let view = random_view(&mut rng, b, t);
    let x = uniform(&mut rng, b * t * i, 1.0);
    for reset_after in [false, true] {
        let s = 1.0 / (h as f32).sqrt();
        let (kn, rn, bn) =
            (uniform(&mut rng, i * 3 * h, s), uniform(&mut rng, h * 3 * h, s), uniform(&mut rng, 6 * h, 0.5));
        let w = GruWeights::from_onnx(i, h, &kn, &rn, Some(&bn)).unwrap();
        let spec = GruSpec::onnx(Activation::Sigmoid, Activation::Tanh, None, reset_after);
        let backend = kernel::selected();
        let packed = PackedGru::new(&w, reset_after, backend.nb).unwrap();
        let cell = GruKernel { packed: &packed, spec: &spec };
        let (y, h_n, _) = run(backend, cell, &view, &x, false, None, 2, Schedule::Auto);
        let mut nonzero = 0;
        for s in 0..b {
            let one = view.select_batch(s, s + 1).unwrap();
            let xs = &x[s * t * i..(s + 1) * t * i];
            let (ys, hs, _) = run(backend, cell, &one, xs, false, None, 1, Schedule::BatchChunks);
            assert_eq!(bits(&ys), bits(&y[s * t * h..(s + 1) * t * h]), "sequence {s}");
            assert_eq!(bits(&hs), bits(&h_n[s * h..(s + 1) * h]), "sequence {s}");
            nonzero += hs.iter().filter(|v| **v != 0.0).count();
        }
        assert!(nonzero > 0);
    }
}
