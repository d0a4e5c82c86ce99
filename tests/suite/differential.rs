//! Seeded replay of the fuzz properties: the fast path against the reference on thousands of random cases,
//! compared bit for bit, plus fixed cases of many weight blocks and long inputs ([`large_shapes`]).

use masked_rnn::fuzzing::{
    self, BackwardCase, CaseReport, CaseSpec, KerasCase, OnnxCase, OnnxCell, LARGE_HIDDEN, LARGE_INPUT,
};
use masked_rnn::onnx::{Direction, Layout};
use masked_rnn::{kernel, Padding, Schedule, SeqView};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::sync::atomic::{AtomicU32, Ordering};

fn seeded(seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let len = rng.random_range(0..6000);
    (0..len).map(|_| rng.random()).collect()
}

fn replay(name: &str, cases: u64, f: fn(&[u8]) -> Result<(), String>) {
    for seed in 0..cases {
        if let Err(e) = f(&seeded(seed)) {
            panic!("{name}: seed {seed} failed: {e}");
        }
    }
}

/// Replays a property that reports what it ran, and checks the replay covered what it must: the gate
/// column split really ran (where this machine allows it), batch chunks ran (also several of them at
/// once), and the rare large sizes were drawn.
fn replay_counting(name: &str, cases: u64, f: fn(&[u8]) -> Result<CaseReport, String>) {
    let (mut columns, mut chunks, mut several, mut large_h, mut large_i) = (0, 0, 0, 0, 0);
    for seed in 0..cases {
        let report = f(&seeded(seed)).unwrap_or_else(|e| panic!("{name}: seed {seed} failed: {e}"));
        let stats = &report.two_threads;
        columns += stats.column_split_runs;
        chunks += stats.batch_chunk_runs;
        several += usize::from(stats.column_split_runs == 0 && stats.batch_chunk_runs > 0 && stats.chunks >= 2);
        large_h += usize::from(report.spec.hidden == LARGE_HIDDEN);
        large_i += usize::from(report.spec.input == LARGE_INPUT);
    }
    eprintln!(
        "{name}: {cases} cases; on 2 threads {columns} column-split and {chunks} batch-chunk runs \
         ({several} cases on several chunks); {large_h} cases with H {LARGE_HIDDEN}, {large_i} with I {LARGE_INPUT}"
    );
    assert!(chunks > 0, "{name}: no run used batch chunks");
    assert!(several > 0, "{name}: no case ran several batch chunks at once");
    assert!(large_h > 0 && large_i > 0, "{name}: the generator drew no large case");
    if fuzzing::cores() >= 2 {
        assert!(columns > 0, "{name}: no run split the gate columns on a machine with {} cores", fuzzing::cores());
    } else {
        eprintln!("SKIPPED ({name}): the gate column split needs 2 cores, this machine has 1");
    }
}

#[test]
fn skip_equals_masked_10k_seeded_cases() {
    replay_counting("skip_equals_masked", 10_000, |d| fuzzing::check_keras_case(&KerasCase::from_bytes(d)));
}

#[test]
fn seq_view_seeded_cases() {
    replay("seq_view", 20_000, fuzzing::seq_view);
}

/// Every edge hidden size against every edge length pattern, both directions and output modes.
#[test]
fn edge_sizes_and_lengths() {
    use masked_rnn::{InitialState, KerasLstm, KerasLstmOptions, LstmWeights};
    let (b, t, i) = (6, 9, 4);
    let lengths = [0, 1, t, 5, t, 3];
    let mut holes = vec![false; b * t];
    for (k, m) in holes.iter_mut().enumerate() {
        *m = (k * 7 + k / t) % 3 != 0;
    }
    let views = [
        SeqView::from_lengths(&lengths, t, Padding::Post).unwrap(),
        SeqView::from_lengths(&lengths, t, Padding::Pre).unwrap(),
        SeqView::from_mask(&holes, b, t).unwrap(),
        SeqView::from_mask(&vec![false; b * t], b, t).unwrap(),
        SeqView::full(b, t),
    ];
    let mut rng = StdRng::seed_from_u64(7);
    for h in [1, 7, 8, 9, 15, 16, 17, 33] {
        let mut w = |n: usize| (0..n).map(|_| rng.random_range(-0.6f32..0.6)).collect::<Vec<_>>();
        let weights = LstmWeights::from_keras(i, h, &w(i * 4 * h), &w(h * 4 * h), Some(&w(4 * h))).unwrap();
        let x = w(b * t * i);
        let (h0, c0) = (w(b * h), w(b * h));
        for view in &views {
            for go_backwards in [false, true] {
                for zero_output in [false, true] {
                    for init in [None, Some(InitialState { h: &h0, c: &c0 })] {
                        let opts =
                            KerasLstmOptions::default().go_backwards(go_backwards).zero_output_for_mask(zero_output);
                        let layer = KerasLstm::new(weights.clone(), opts).unwrap();
                        let expected = layer.forward_reference(&x, view, init).unwrap();
                        for threads in [1, 2] {
                            let (got, stats) = layer.forward_all(&x, view, init, threads).unwrap();
                            assert_eq!(stats.steps_computed, view.total_valid());
                            let what = format!("H={h} backwards={go_backwards} zero={zero_output} threads={threads}");
                            fuzzing::same_bits(&format!("{what} y"), &got.y, &expected.y).unwrap();
                            fuzzing::same_bits(&format!("{what} last"), &got.last_output, &expected.last_output)
                                .unwrap();
                            fuzzing::same_bits(&format!("{what} h_n"), &got.h_n, &expected.h_n).unwrap();
                            fuzzing::same_bits(&format!("{what} c_n"), &got.c_n, &expected.c_n).unwrap();
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn onnx_equals_reference_seeded_cases() {
    replay_counting("onnx_equals_reference", 5_000, |d| fuzzing::check_onnx_case(&OnnxCase::from_bytes(d)));
}

/// The largest normwise backward difference from the float64 reference seen by the ONNX GRU / RNN replays
/// (`f32` bits; nonnegative floats order as their bits).
static ONNX_H_WORST: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];

/// One ONNX GRU / RNN case, forward and backward, its backward's difference from the reference recorded.
fn onnx_h_case(d: &[u8], cell: OnnxCell, slot: usize) -> Result<CaseReport, String> {
    let case = OnnxCase::from_cell(d, kernel::selected(), None, cell);
    let report = fuzzing::check_onnx_case(&case)?;
    if let Some(w) = fuzzing::check_h_backward(&case)? {
        ONNX_H_WORST[slot].fetch_max(w.to_bits(), Ordering::Relaxed);
    }
    Ok(report)
}

/// The GRU and RNN operators, forward and backward: 10,000 seeded cases each (the GRU's split between its
/// two placements of the reset gate by the bytes). Weights up to 1 in magnitude, not scaled by the fan-in
/// (unlike the Keras cases), so float32 rounding grows through the recurrence: the worst normwise
/// difference from the float64 reference is printed.
#[test]
fn onnx_gru_equals_reference_10k_seeded_cases() {
    replay_counting("onnx_gru_equals_reference", 10_000, |d| onnx_h_case(d, OnnxCell::Gru, 0));
    let worst = f32::from_bits(ONNX_H_WORST[0].load(Ordering::Relaxed));
    eprintln!("onnx GRU backward: worst normwise difference from the float64 reference {worst:.2e}");
}

#[test]
fn onnx_rnn_equals_reference_10k_seeded_cases() {
    replay_counting("onnx_rnn_equals_reference", 10_000, |d| onnx_h_case(d, OnnxCell::Rnn, 1));
    let worst = f32::from_bits(ONNX_H_WORST[1].load(Ordering::Relaxed));
    eprintln!("onnx RNN backward: worst normwise difference from the float64 reference {worst:.2e}");
}

/// The Keras GRU and SimpleRNN layers, forward and backward: 10,000 seeded cases each in release builds
/// (`.ci/run` runs them at every CPU level; 2,000 in debug builds), a quarter of them or more compared with
/// the float64 reference backward.
#[test]
fn keras_gru_rnn_equals_reference_10k_seeded_cases() {
    let cases: u64 = if cfg!(debug_assertions) { 2_000 } else { 10_000 };
    for (cell, first) in [("GRU", 0u8), ("SimpleRNN", 1u8)] {
        let (mut compared, mut steps, mut worst) = (0, 0, 0.0f32);
        for seed in 0..cases {
            let mut data = seeded(seed);
            data.insert(0, first);
            let report =
                fuzzing::check_keras_gru_rnn(&data).unwrap_or_else(|e| panic!("{cell}: seed {seed} failed: {e}"));
            assert_eq!(report.gru, cell == "GRU");
            compared += usize::from(report.compared);
            steps += report.steps;
            worst = worst.max(report.worst);
        }
        eprintln!(
            "keras {cell}: {cases} cases, {steps} valid steps, {compared} compared with the float64 reference, worst \
             normwise difference {worst:.2e}"
        );
        // The bound for the backward on these (fan-in scaled) layers.
        assert!(worst <= 1e-5, "{cell}: worst normwise difference {worst:e} from the float64 reference");
        assert!(compared as u64 >= cases / 4, "{cell}: only {compared} cases compared with the reference");
    }
}

/// PyTorch GRU and RNN stacks, forward and backward: 3,000 seeded cases each (1,000 in debug builds).
#[test]
fn torch_gru_rnn_equals_reference_seeded_cases() {
    let cases = if cfg!(debug_assertions) { 1_000 } else { 3_000 };
    replay("torch GRU", cases, |d| fuzzing::torch_gru_rnn_equals_reference(&[&[0], d].concat()));
    replay("torch RNN", cases, |d| fuzzing::torch_gru_rnn_equals_reference(&[&[1], d].concat()));
}

#[test]
fn bidirectional_equals_reference_seeded_cases() {
    replay("bidirectional_equals_reference", 3_000, fuzzing::bidirectional_equals_reference);
}

#[test]
fn torch_equals_reference_seeded_cases() {
    replay("torch_equals_reference", 3_000, fuzzing::torch_equals_reference);
}

/// The Keras backward against the float64 reference, 10,000 seeded cases (fewer in a debug build, whose
/// float64 reference is slow; CI runs the release tests too). Cases that come within
/// [`fuzzing::KINK_MARGIN`] of a relu / hard_sigmoid kink skip only the comparison with the reference:
/// most kinked cases must still be compared.
#[test]
fn backward_equals_reference_seeded_cases() {
    let cases: u64 = if cfg!(debug_assertions) { 4_000 } else { 10_000 };
    let (mut compared, mut kinked, mut kinked_compared, mut steps, mut large) = (0, 0, 0, 0, 0);
    for seed in 0..cases {
        let case = BackwardCase::from_bytes(&seeded(seed));
        let report = fuzzing::check_backward_case(&case)
            .unwrap_or_else(|e| panic!("backward_equals_reference: seed {seed} failed: {e}"));
        compared += usize::from(report.compared);
        kinked += usize::from(report.kinked);
        kinked_compared += usize::from(report.kinked && report.compared);
        steps += report.steps;
        large += usize::from(report.spec.hidden == LARGE_HIDDEN || report.spec.input == LARGE_INPUT);
    }
    eprintln!(
        "backward_equals_reference: {cases} cases, {steps} valid steps, {large} large; compared with the \
         reference: {compared} ({kinked_compared} of the {kinked} with a kinked activation; the others came \
         within {} of a kink)",
        fuzzing::KINK_MARGIN
    );
    assert!(large > 0, "the generator drew no case with H {LARGE_HIDDEN} or I {LARGE_INPUT}");
    assert!(kinked_compared * 2 > kinked, "most cases with relu / hard_sigmoid were not compared");
    assert!(compared as u64 * 10 > cases * 9, "only {compared} of {cases} cases compared with the reference");
}

/// A ragged view for the large cases: lengths 0, 1 and T among others, post- or pre-padded, or holes.
fn large_view(rng: &mut StdRng, b: usize, t: usize, k: usize) -> SeqView {
    let lens: Vec<usize> = (0..b)
        .map(|s| match (s + k) % 4 {
            0 => t,
            1 if s > 0 => [0, 1][k % 2],
            _ => rng.random_range(1..=t),
        })
        .collect();
    match k % 3 {
        0 => SeqView::from_lengths(&lens, t, Padding::Post).unwrap(),
        1 => SeqView::from_lengths(&lens, t, Padding::Pre).unwrap(),
        _ => {
            let mask: Vec<bool> = (0..b * t).map(|_| rng.random_range(0..10) < 7).collect();
            SeqView::from_mask(&mask, b, t).unwrap()
        }
    }
}

/// Fills `x` for `valid(b, t)`: ordinary values at valid steps, NaN and infinities at padded ones.
fn fill_x(
    rng: &mut StdRng,
    x: &mut [f32],
    offset: impl Fn(usize, usize) -> usize,
    valid: impl Fn(usize, usize) -> bool,
    [b, t, i]: [usize; 3],
) {
    for s in 0..b {
        for tt in 0..t {
            let o = offset(s, tt);
            for v in &mut x[o..o + i] {
                *v = if valid(s, tt) {
                    rng.random_range(-2.0..2.0)
                } else {
                    [f32::NAN, f32::INFINITY, -1e30][rng.random_range(0..3)]
                };
            }
        }
    }
}

/// Many weight blocks (H 257: 33 blocks of 8 lanes, the last holding one unit) and long inputs
/// (I 1024), T up to 64, every schedule, Keras options and ONNX directions: fast path against the
/// reference bit for bit, on 1 and 2 threads, with the schedule each run used checked.
#[test]
fn large_shapes() {
    use Schedule::{Auto, BatchChunks, GateColumns};
    let backend = masked_rnn::kernel::selected();
    let mut rng = StdRng::seed_from_u64(257);
    let mut columns = 0;
    // B, T, I, H, schedule, go_backwards, zero_output_for_mask. Sized so the reference (every step) stays
    // within a few seconds per case in a debug build.
    let keras = [
        (1, 16, 1024, 257, GateColumns, false, false),
        (1, 24, 1024, 257, BatchChunks, true, false),
        (2, 8, 1024, 257, Auto, false, true),
        (2, 64, 5, 257, GateColumns, true, true),
        (2, 40, 1, 257, BatchChunks, false, false),
        (3, 24, 0, 257, Auto, true, false),
        (3, 64, 1024, 17, GateColumns, false, true),
        (2, 64, 1024, 33, BatchChunks, true, true),
        (4, 48, 1024, 9, Auto, false, false),
        (3, 64, 1024, 1, GateColumns, true, false),
        (4, 20, 300, 129, GateColumns, false, false),
        (2, 64, 7, 257, Auto, false, true),
    ];
    for (k, &(b, t, i, h, schedule, go_backwards, zero_output)) in keras.iter().enumerate() {
        let spec = CaseSpec { batch: b, time: t, input: i, hidden: h, schedule: Some(schedule) };
        let data = seeded(1000 + k as u64);
        let mut case = KerasCase::from_spec(&data, backend, Some(spec));
        let options = case.layer.options().go_backwards(go_backwards).zero_output_for_mask(zero_output);
        case.layer = masked_rnn::KerasLstm::with_backend(case.layer.weights().clone(), options, backend)
            .unwrap()
            .with_schedule(schedule);
        case.view = large_view(&mut rng, b, t, k);
        let view = case.view.clone();
        fill_x(&mut rng, &mut case.x, |s, tt| (s * t + tt) * i, |s, tt| view.is_valid(s, tt), [b, t, i]);
        let what = format!("Keras B{b} T{t} I{i} H{h} {schedule:?} go_backwards {go_backwards} zero {zero_output}");
        let report = fuzzing::check_keras_case(&case).unwrap_or_else(|e| panic!("{what}: {e}"));
        columns += report.two_threads.column_split_runs;
    }
    // B, T, I, H, schedule, direction.
    let onnx = [
        (1, 16, 1024, 257, GateColumns, Direction::Forward),
        (2, 32, 5, 257, BatchChunks, Direction::Reverse),
        (1, 12, 1024, 257, Auto, Direction::Bidirectional),
        (3, 64, 1024, 17, GateColumns, Direction::Bidirectional),
        (2, 64, 8, 257, Auto, Direction::Forward),
        (1, 64, 1024, 33, GateColumns, Direction::Reverse),
        (4, 24, 1024, 16, BatchChunks, Direction::Bidirectional),
        (2, 24, 3, 257, GateColumns, Direction::Bidirectional),
    ];
    let mut directions = [false; 3];
    for (k, &(b, t, i, h, schedule, direction)) in onnx.iter().enumerate() {
        let spec = CaseSpec { batch: b, time: t, input: i, hidden: h, schedule: Some(schedule) };
        // The direction comes from the bytes: the first seed that draws the wanted one.
        let mut case = (0..200)
            .map(|n| OnnxCase::from_spec(&seeded(2000 + 1000 * k as u64 + n), backend, Some(spec)))
            .find(|c| c.node.shape().0 == direction)
            .unwrap_or_else(|| panic!("no seed draws {direction:?}"));
        directions[direction as usize] = true;
        let lens: Vec<i32> = (0..b)
            .map(|s| match (s + k) % 4 {
                0 => t as i32,
                1 if s > 0 => 0,
                2 if s > 0 => 1,
                _ => rng.random_range(1..=t as i32),
            })
            .collect();
        let batch_major = case.node.shape().1 == Layout::BatchMajor;
        let offset = |s: usize, tt: usize| if batch_major { (s * t + tt) * i } else { (tt * b + s) * i };
        fill_x(&mut rng, &mut case.x, offset, |s, tt| tt < lens[s] as usize, [b, t, i]);
        case.lens = Some(lens);
        let what = format!("ONNX B{b} T{t} I{i} H{h} {schedule:?} {direction:?}");
        let report = fuzzing::check_onnx_case(&case).unwrap_or_else(|e| panic!("{what}: {e}"));
        columns += report.two_threads.column_split_runs;
    }
    assert!(directions.iter().all(|&d| d), "an ONNX direction was not covered");
    if fuzzing::cores() >= 2 {
        assert!(columns >= 10, "only {columns} large runs split the gate columns");
    } else {
        eprintln!("SKIPPED (large_shapes): the gate column split needs 2 cores, this machine has 1");
    }
}
