//! A reused workspace makes a forward call allocation-free (on the calling thread).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use masked_rnn::fuzzing::{check_schedule, cores, same_bits};
use masked_rnn::{KerasLstm, KerasLstmOptions, KerasOutputs, LstmWeights, Padding, SeqView, Workspace};

struct Counting;

thread_local! {
    /// Allocations made by this thread. Counted per thread: the test harness's own threads allocate
    /// (output capture, results) while a test runs, and every measured call runs on one thread.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// Allocations this thread has made so far.
fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

fn count() {
    // `try_with`: a thread being torn down has no counter left, and needs none.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn second_call_with_a_workspace_allocates_nothing() {
    let (b, t, i, h) = (9, 40, 7, 37);
    let w = |n: usize, s: f32| (0..n).map(|k| ((k * 7919 % 1000) as f32 / 1000.0 - 0.5) * s).collect::<Vec<f32>>();
    let weights = LstmWeights::from_keras(i, h, &w(i * 4 * h, 0.5), &w(h * 4 * h, 0.5), Some(&w(4 * h, 0.1))).unwrap();
    let layer = KerasLstm::new(weights, KerasLstmOptions::default()).unwrap();
    let x = w(b * t * i, 2.0);
    let view = SeqView::from_lengths(&[40, 3, 0, 17, 40, 25, 1, 9, 33], t, Padding::Pre).unwrap();
    let (mut y, mut last, mut hn, mut cn) =
        (vec![0.0; b * t * h], vec![0.0; b * h], vec![0.0; b * h], vec![0.0; b * h]);
    let mut ws = Workspace::new();
    let mut first = Vec::new();
    let mut during = usize::MAX;
    for round in 0..2 {
        let before = allocations();
        let out =
            KerasOutputs { y: Some(&mut y), last_output: Some(&mut last), h_n: Some(&mut hn), c_n: Some(&mut cn) };
        layer.forward_in(&x, &view, None, out, 1, &mut ws).unwrap();
        if round == 0 {
            first = y.clone();
        } else {
            during = allocations() - before;
        }
    }
    assert_eq!(during, 0, "a forward call with a warm workspace allocated {during} times");
    same_bits("warm call y vs first call y", &y, &first).unwrap();
    assert!(ws.bytes() > 0);
}

/// `workspace_bytes` bounds what a fresh workspace holds after a call, over shapes, thread counts and
/// schedules; the bound is the documented one (state, one projection tile per thread, small indices).
#[test]
fn workspace_bytes_bounds_a_fresh_workspace() {
    use masked_rnn::Schedule;
    let mut seed = 12345u64;
    let mut next = |n: usize| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) as usize) % n.max(1)
    };
    let w = |n: usize| (0..n).map(|k| ((k * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.3).collect::<Vec<f32>>();
    let mut column_splits = 0;
    for case in 0..60 {
        let h = [1, 7, 16, 33, 100, 256][case % 6];
        // Some 1 x 1 and 1 x 3 states: the smallest allocations.
        let b = if case % 10 == 0 { 1 } else { 1 + next(70) };
        let (t, i) = (1 + next(40), 1 + next(40));
        let weights = LstmWeights::from_keras(i, h, &w(i * 4 * h), &w(h * 4 * h), Some(&w(4 * h))).unwrap();
        let schedule = [Schedule::Auto, Schedule::BatchChunks, Schedule::GateColumns][next(3)];
        let layer = KerasLstm::new(weights, KerasLstmOptions::default()).unwrap().with_schedule(schedule);
        let lens: Vec<usize> = (0..b).map(|_| if next(6) == 0 { 0 } else { 1 + next(t) }).collect();
        let view = SeqView::from_lengths(&lens, t, Padding::Post).unwrap();
        let x = w(b * t * i);
        let (mut y, mut last) = (vec![0.0; b * t * h], vec![0.0; b * h]);
        for threads in [1, 2] {
            let mut ws = Workspace::new();
            let out = KerasOutputs { y: Some(&mut y), last_output: Some(&mut last), ..Default::default() };
            let stats = layer.forward_in(&x, &view, None, out, threads, &mut ws).unwrap();
            // The bound must hold for the schedule that really ran.
            let active = lens.iter().filter(|&&l| l > 0).count();
            check_schedule(&format!("B{b} H{h}"), &stats, schedule, threads, h, active, 1).unwrap();
            column_splits += stats.column_split_runs;
            let bound = layer.workspace_bytes(&view, threads);
            assert!(
                ws.bytes() <= bound,
                "B{b} T{t} I{i} H{h} {schedule:?} threads {threads}: {} > {bound}",
                ws.bytes()
            );
            // The bound is what the docs say: states, per thread one 256 KiB tile (or one step) and its
            // row indices (16 bytes per row of at least 32 floats: 9/8 of the tile), a few indices per
            // sequence. 16-lane padding covers the 8-lane backends too.
            let hp = h.div_ceil(16) * 16;
            let step = b * 4 * hp * 4;
            let documented = 3 * b * hp * 4 + threads * ((288 << 10) + 2 * step) + b * h * 4 + 64 * b + 4096;
            assert!(bound <= documented, "B{b} H{h} threads {threads}: bound {bound} > {documented}");
        }
    }
    if cores() >= 2 {
        assert!(column_splits > 0, "no case split the gate columns: their scratch bound went untested");
    } else {
        eprintln!("SKIPPED: the gate column split needs 2 cores, this machine has 1; its bound went untested");
    }
}

/// The ONNX operator rebuilds its view of `sequence_lens` inside the workspace: a warm call, with the
/// same lengths or a permutation of them, allocates nothing (one thread, both directions).
#[test]
fn onnx_warm_call_allocates_nothing() {
    use masked_rnn::onnx::{Direction, OnnxLstm, OnnxLstmAttrs, OnnxOutputs};
    let (t, b, i, h) = (30, 6, 5, 21);
    let w = |n: usize| (0..n).map(|k| ((k * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.4).collect::<Vec<f32>>();
    let attrs = OnnxLstmAttrs::new(h, Direction::Bidirectional);
    let layer = OnnxLstm::new(attrs, i, &w(2 * 4 * h * i), &w(2 * 4 * h * h), Some(&w(2 * 8 * h)), None).unwrap();
    let x = w(t * b * i);
    let (mut y, mut yh, mut yc) = (vec![0.0; t * 2 * b * h], vec![0.0; 2 * b * h], vec![0.0; 2 * b * h]);
    let mut ws = Workspace::new();
    let mut results = Vec::new();
    for lens in [[30, 0, 7, 12, 1, 30], [30, 0, 7, 12, 1, 30], [1, 30, 12, 0, 30, 7]] {
        let before = allocations();
        let out = OnnxOutputs { y: Some(&mut y), y_h: Some(&mut yh), y_c: Some(&mut yc) };
        layer.forward_in(&x, t, b, Some(&lens), None, None, out, 1, &mut ws).unwrap();
        results.push((allocations() - before, y.clone()));
    }
    assert_eq!(results[1].0, 0, "a warm call with the same lengths allocated {} times", results[1].0);
    assert_eq!(results[2].0, 0, "a warm call with permuted lengths allocated {} times", results[2].0);
    same_bits("warm call Y vs first call Y", &results[1].1, &results[0].1).unwrap();
    assert_ne!(results[1].1, results[2].1);
    // Without sequence_lens (every step valid) the view is rebuilt in place too.
    for round in 0..2 {
        let before = allocations();
        let out = OnnxOutputs { y: Some(&mut y), y_h: Some(&mut yh), y_c: Some(&mut yc) };
        layer.forward_in(&x, t, b, None, None, None, out, 1, &mut ws).unwrap();
        let n = allocations() - before;
        assert!(round == 0 || n == 0, "a warm call without sequence_lens allocated {n} times");
    }
}

/// A stacked bidirectional PyTorch LSTM keeps the lengths' view and its lower layers' outputs in the
/// workspace: a warm call allocates nothing (one thread), and skipping outputs changes none of the rest.
#[test]
fn torch_warm_call_allocates_nothing() {
    use masked_rnn::torch::{TorchLstm, TorchLstmParams, TorchOutputs};
    let (t, b, i, h, layers) = (20, 5, 6, 11, 2);
    let w = |n: usize, s: usize| {
        (0..n).map(|k| (((k + s) * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.5).collect::<Vec<f32>>()
    };
    let sets: Vec<[Vec<f32>; 4]> = (0..layers * 2)
        .map(|k| {
            let inp = if k < 2 { i } else { 2 * h };
            [w(4 * h * inp, k), w(4 * h * h, k + 10), w(4 * h, k + 20), w(4 * h, k + 30)]
        })
        .collect();
    let params: Vec<TorchLstmParams<'_>> = sets
        .iter()
        .map(|[wi, wh, bi, bh]| TorchLstmParams { weight_ih: wi, weight_hh: wh, bias_ih: Some(bi), bias_hh: Some(bh) })
        .collect();
    let lstm = TorchLstm::new(i, h, layers, true, &params).unwrap();
    let x = w(t * b * i, 3);
    let lens = [20, 3, 17, 1, 9];
    let (want, _) = lstm.forward_packed(&x, t, b, false, &lens, None, None, 1).unwrap();
    let (mut y, mut hn, mut cn) = (vec![0.0; want.y.len()], vec![0.0; want.h_n.len()], vec![0.0; want.c_n.len()]);
    let mut ws = Workspace::new();
    let mut allocated = Vec::new();
    for _ in 0..2 {
        let before = allocations();
        let out = TorchOutputs { y: Some(&mut y), h_n: Some(&mut hn), c_n: Some(&mut cn) };
        lstm.forward_packed_in(&x, t, b, false, &lens, None, None, out, 1, &mut ws).unwrap();
        allocated.push(allocations() - before);
        same_bits("forward_packed_in y", &y, &want.y).unwrap();
        same_bits("forward_packed_in h_n", &hn, &want.h_n).unwrap();
        same_bits("forward_packed_in c_n", &cn, &want.c_n).unwrap();
    }
    assert_eq!(allocated[1], 0, "a warm call allocated {} times", allocated[1]);
    let mut only_h = vec![0.0; want.h_n.len()];
    let out = TorchOutputs { h_n: Some(&mut only_h), ..Default::default() };
    lstm.forward_packed_in(&x, t, b, false, &lens, None, None, out, 1, &mut ws).unwrap();
    same_bits("h_n alone", &only_h, &want.h_n).unwrap();
}

/// The PyTorch GRU and RNN stacks (bidirectional, two layers, from `h0`) share the LSTM's: a warm
/// call allocates nothing (one thread).
#[test]
fn torch_gru_rnn_warm_call_allocates_nothing() {
    use masked_rnn::torch::{Nonlinearity, TorchGru, TorchOutputs, TorchParams, TorchRnn};
    let (t, b, i, h, layers) = (20, 5, 6, 11, 2);
    let w = |n: usize, s: usize| {
        (0..n).map(|k| (((k + s) * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.5).collect::<Vec<f32>>()
    };
    let (x, h0) = (&w(t * b * i, 3)[..], &w(layers * 2 * b * h, 4)[..]);
    let lens = &[20, 3, 17, 1, 9];
    for gates in [3, 1] {
        let sets: Vec<[Vec<f32>; 4]> = (0..layers * 2)
            .map(|k| {
                let inp = if k < 2 { i } else { 2 * h };
                [w(gates * h * inp, k), w(gates * h * h, k + 10), w(gates * h, k + 20), w(gates * h, k + 30)]
            })
            .collect();
        let params: Vec<TorchParams<'_>> = sets
            .iter()
            .map(|[wi, wh, bi, bh]| TorchParams { weight_ih: wi, weight_hh: wh, bias_ih: Some(bi), bias_hh: Some(bh) })
            .collect();
        let gru = (gates == 3).then(|| TorchGru::new(i, h, layers, true, &params).unwrap());
        let rnn = (gates == 1).then(|| TorchRnn::new(i, h, layers, true, Nonlinearity::Relu, &params).unwrap());
        let run = |out: TorchOutputs<'_>, ws: &mut Workspace| match (&gru, &rnn) {
            (Some(gru), _) => gru.forward_packed_in(x, t, b, false, lens, Some(h0), out, 1, ws).unwrap(),
            (_, Some(rnn)) => rnn.forward_packed_in(x, t, b, false, lens, Some(h0), out, 1, ws).unwrap(),
            _ => unreachable!(),
        };
        let (mut y, mut hn) = (vec![0.0; t * b * 2 * h], vec![0.0; layers * 2 * b * h]);
        let mut ws = Workspace::new();
        let mut allocated = Vec::new();
        let mut first = Vec::new();
        for _ in 0..2 {
            let before = allocations();
            run(TorchOutputs { y: Some(&mut y), h_n: Some(&mut hn), c_n: None }, &mut ws);
            allocated.push(allocations() - before);
            if first.is_empty() {
                first = [y.clone(), hn.clone()].concat();
            }
            same_bits("warm call", &[y.clone(), hn.clone()].concat(), &first).unwrap();
        }
        assert_eq!(allocated[1], 0, "{gates} gates: a warm call allocated {} times", allocated[1]);
    }
}

/// Keras `Bidirectional` into caller buffers: every merge mode, with and without sequences, equals the
/// owned `forward` bit for bit, a warm call allocates nothing, and misplaced outputs are errors.
#[test]
fn bidirectional_warm_call_allocates_nothing() {
    use masked_rnn::bidirectional::{BidirectionalOutputs, KerasBidirectional, MergeMode};
    let (b, t, i, h) = (5, 13, 4, 9);
    let w = |n: usize, s: usize| {
        (0..n).map(|k| (((k + s) * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.5).collect::<Vec<f32>>()
    };
    let weights = |s: usize| {
        LstmWeights::from_keras(i, h, &w(i * 4 * h, s), &w(h * 4 * h, s + 1), Some(&w(4 * h, s + 2))).unwrap()
    };
    let x = w(b * t * i, 9);
    let view = SeqView::from_lengths(&[13, 0, 4, 1, 9], t, Padding::Post).unwrap();
    for merge in [MergeMode::Concat, MergeMode::Sum, MergeMode::Ave, MergeMode::Mul, MergeMode::None] {
        for seq in [true, false] {
            let layer =
                KerasBidirectional::new(weights(1), weights(5), KerasLstmOptions::default(), merge, seq).unwrap();
            let (want, _) = layer.forward(&x, &view, None, 1).unwrap();
            let mut got = want.clone();
            for v in [
                &mut got.y,
                &mut got.y_forward,
                &mut got.y_backward,
                &mut got.h_f,
                &mut got.c_f,
                &mut got.h_b,
                &mut got.c_b,
            ] {
                v.fill(f32::NAN);
            }
            let mut ws = Workspace::new();
            let mut allocated = Vec::new();
            for _ in 0..2 {
                let none = merge == MergeMode::None;
                let out = BidirectionalOutputs {
                    y: (!none).then_some(&mut got.y[..]),
                    y_forward: none.then_some(&mut got.y_forward[..]),
                    y_backward: none.then_some(&mut got.y_backward[..]),
                    h_f: None, // the last outputs still need it: scratch
                    c_f: Some(&mut got.c_f),
                    h_b: Some(&mut got.h_b),
                    c_b: None,
                };
                let before = allocations();
                layer.forward_in(&x, &view, None, out, 1, &mut ws).unwrap();
                allocated.push(allocations() - before);
            }
            for (g, e, name) in [
                (&got.y, &want.y, "y"),
                (&got.y_forward, &want.y_forward, "y_forward"),
                (&got.y_backward, &want.y_backward, "y_backward"),
                (&got.c_f, &want.c_f, "c_f"),
                (&got.h_b, &want.h_b, "h_b"),
            ] {
                same_bits(&format!("{merge:?} sequences {seq}: {name}"), g, e).unwrap();
            }
            assert_eq!(allocated[1], 0, "{merge:?} sequences {seq}: a warm call allocated {} times", allocated[1]);
            let misplaced = if merge == MergeMode::None {
                BidirectionalOutputs { y: Some(&mut got.y_forward[..]), ..Default::default() }
            } else {
                BidirectionalOutputs { y_forward: Some(&mut got.h_f[..]), ..Default::default() }
            };
            assert!(layer.forward_in(&x, &view, None, misplaced, 1, &mut ws).is_err());
        }
    }
}
