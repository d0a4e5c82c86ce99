//! The fast backward against the float64 reference backward, on seeded Keras cases: masks with holes,
//! pre-padding, fully masked rows, go_backwards, zero_output_for_mask, initial states, activations,
//! every upstream combination, sizes with many weight blocks; plus thread-count and batch-composition
//! invariance (bitwise) and steps computed = valid steps.

use masked_rnn::reference::backward::{keras_lstm_backward, KerasUpstream64, LstmParams64};
use masked_rnn::{
    Activation, InitialState, KerasGrads, KerasLstm, KerasLstmOptions, KerasOutputs, KerasTape, KerasUpstream,
    LstmWeights, Schedule, SeqView, Workspace,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Everything a backward call returns, in the Keras layout.
#[derive(Debug, PartialEq)]
struct Grads {
    dx: Vec<f32>,
    dk: Vec<f32>,
    dr: Vec<f32>,
    db: Vec<f32>,
    dh0: Vec<f32>,
    dc0: Vec<f32>,
    steps: usize,
    /// Backward runs that split the gate columns across threads.
    column_runs: usize,
    /// Batch chunks the backward's recurrence ran in (0 when it split the gate columns).
    chunks: usize,
}

struct Case {
    b: usize,
    t: usize,
    i: usize,
    h: usize,
    layer: KerasLstm,
    weights: LstmWeights,
    x: Vec<f32>,
    mask: Vec<bool>,
    init: Option<(Vec<f32>, Vec<f32>)>,
    dy: Option<Vec<f32>>,
    dlast: Option<Vec<f32>>,
    dhn: Option<Vec<f32>>,
    dcn: Option<Vec<f32>>,
}

fn draw(rng: &mut StdRng, n: usize, s: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-s..s)).collect()
}

fn case(seed: u64, big: bool) -> Case {
    let mut rng = StdRng::seed_from_u64(seed);
    let sizes = [1, 7, 8, 9, 15, 16, 17, 33];
    let (b, t) = (rng.random_range(1..6), rng.random_range(1..9));
    let (i, h) = if big {
        ([1024, 64, 3][rng.random_range(0..3)], [257, 64, 40][rng.random_range(0..3)])
    } else {
        (rng.random_range(1..6), sizes[rng.random_range(0..sizes.len())])
    };
    sized_case(rng, seed, b, t, i, h)
}

/// A seeded case of the given sizes (options, mask kind, initial state and upstream gradients drawn).
fn sized_case(mut rng: StdRng, seed: u64, b: usize, t: usize, i: usize, h: usize) -> Case {
    let s = 1.0 / (h as f32).sqrt();
    let weights = LstmWeights::from_keras(
        i,
        h,
        &draw(&mut rng, i * 4 * h, s),
        &draw(&mut rng, h * 4 * h, s),
        Some(&draw(&mut rng, 4 * h, 0.5)),
    )
    .unwrap();
    let acts = [Activation::Tanh, Activation::Sigmoid, Activation::Softsign, Activation::Elu { alpha: 1.0 }];
    let mut opts =
        KerasLstmOptions::default().go_backwards(rng.random_bool(0.3)).zero_output_for_mask(rng.random_bool(0.3));
    if rng.random_bool(0.3) {
        opts = opts.activation(acts[rng.random_range(0..acts.len())]);
    }
    let layer = KerasLstm::new(weights.clone(), opts).unwrap();
    // Masks: ragged post/pre padding, holes, all padded, all valid.
    let kind = rng.random_range(0..4);
    let mask: Vec<bool> = (0..b)
        .flat_map(|_| {
            let len = rng.random_range(0..=t);
            let holes = kind == 2;
            (0..t)
                .map(|p| match kind {
                    0 => p < len,
                    1 => p >= t - len,
                    2 => holes && rng.random_bool(0.6),
                    _ => true,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let init = rng.random_bool(0.4).then(|| (draw(&mut rng, b * h, 0.5), draw(&mut rng, b * h, 0.5)));
    let mut maybe = |n: usize| rng.random_bool(0.7).then(|| draw(&mut StdRng::seed_from_u64(seed ^ n as u64), n, 1.0));
    let (dy, dlast, dhn, dcn) = (maybe(b * t * h), maybe(b * h + 1), maybe(b * h + 2), maybe(b * h + 3));
    let trim = |v: Option<Vec<f32>>| {
        v.map(|mut v| {
            v.truncate(b * h);
            v
        })
    };
    Case {
        b,
        t,
        i,
        h,
        layer,
        weights,
        x: draw(&mut rng, b * t * i, 1.0),
        mask,
        init,
        dy,
        dlast: trim(dlast),
        dhn: trim(dhn),
        dcn: trim(dcn),
    }
}

impl Case {
    fn view(&self) -> SeqView {
        SeqView::from_mask(&self.mask, self.b, self.t).unwrap()
    }

    fn run(&self, threads: usize) -> Grads {
        self.run_in(&mut KerasTape::new(), threads)
    }

    /// [`run`](Self::run) with a caller's tape (which may hold another run's record and buffers).
    fn run_in(&self, tape: &mut KerasTape, threads: usize) -> Grads {
        let (b, t, i, h) = (self.b, self.t, self.i, self.h);
        let view = self.view();
        let init = self.init.as_ref().map(|(h0, c0)| InitialState { h: h0, c: c0 });
        let mut y = vec![0.0; b * t * h];
        let out = KerasOutputs { y: Some(&mut y), ..Default::default() };
        self.layer.forward_train(&self.x, &view, init, out, tape, threads, &mut Workspace::new()).unwrap();
        let mut g = Grads {
            dx: vec![f32::NAN; b * t * i],
            dk: vec![f32::NAN; i * 4 * h],
            dr: vec![f32::NAN; h * 4 * h],
            db: vec![f32::NAN; 4 * h],
            dh0: vec![f32::NAN; b * h],
            dc0: vec![f32::NAN; b * h],
            steps: 0,
            column_runs: 0,
            chunks: 0,
        };
        let up = KerasUpstream {
            dy: self.dy.as_deref(),
            d_last_output: self.dlast.as_deref(),
            d_h_n: self.dhn.as_deref(),
            d_c_n: self.dcn.as_deref(),
        };
        let grads = KerasGrads {
            dx: Some(&mut g.dx),
            d_kernel: Some(&mut g.dk),
            d_recurrent_kernel: Some(&mut g.dr),
            d_bias: Some(&mut g.db),
            d_initial_h: Some(&mut g.dh0),
            d_initial_c: Some(&mut g.dc0),
        };
        let init = self.init.as_ref().map(|(h0, c0)| InitialState { h: h0, c: c0 });
        let stats = self.layer.backward(&self.x, &view, init, tape, up, grads, threads).unwrap();
        (g.steps, g.column_runs) = (stats.steps_computed, stats.column_split_runs);
        g.chunks = if stats.batch_chunk_runs > 0 { stats.chunks } else { 0 };
        g
    }

    /// The reference backward, rounded to f32.
    fn expected(&self) -> Grads {
        let f = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        let o = self.layer.options();
        let (dy, dl, dh, dc) = (
            self.dy.as_deref().map(f),
            self.dlast.as_deref().map(f),
            self.dhn.as_deref().map(f),
            self.dcn.as_deref().map(f),
        );
        let init = self.init.as_ref().map(|(h0, c0)| (f(h0), f(c0)));
        let up = KerasUpstream64 {
            dy: dy.as_deref(),
            d_last_output: dl.as_deref(),
            d_h_n: dh.as_deref(),
            d_c_n: dc.as_deref(),
        };
        let r = keras_lstm_backward(
            &LstmParams64::from_weights(&self.weights),
            &masked_rnn::CellSpec::keras(o.activation, o.recurrent_activation),
            &f(&self.x),
            &self.mask,
            self.b,
            self.t,
            o.go_backwards,
            o.zero_output_for_mask,
            init.as_ref().map(|(a, b)| (&a[..], &b[..])),
            &up,
        );
        let g = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        Grads {
            dx: g(&r.dx),
            dk: g(&r.params.d_kernel),
            dr: g(&r.params.d_recurrent),
            db: g(&r.params.d_bias),
            dh0: g(&r.d_initial_h),
            dc0: g(&r.d_initial_c),
            steps: self.mask.iter().filter(|&&m| m).count(),
            column_runs: 0,
            chunks: 0,
        }
    }
}

/// `|g - e| <= tol * max(1, |e|)` elementwise, NaN never close; names the first failure.
fn close(what: &str, got: &[f32], exp: &[f32], tol: f32) {
    assert_eq!(got.len(), exp.len(), "{what}: lengths");
    for (k, (&g, &e)) in got.iter().zip(exp).enumerate() {
        assert!((g - e).abs() <= tol * e.abs().max(1.0), "{what}[{k}]: got {g}, reference {e}");
    }
}

fn same_bits(what: &str, a: &Grads, b: &Grads) {
    for (name, x, y) in [
        ("dx", &a.dx, &b.dx),
        ("dk", &a.dk, &b.dk),
        ("dr", &a.dr, &b.dr),
        ("db", &a.db, &b.db),
        ("dh0", &a.dh0, &b.dh0),
        ("dc0", &a.dc0, &b.dc0),
    ] {
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(x), bits(y), "{what}: {name} differs");
    }
}

fn check(seed: u64, big: bool) -> usize {
    check_case(seed, case(seed, big)).0
}

/// The fast backward of `c` against the reference (1e-5), dx exactly zero at masked steps, and 1 vs 2
/// threads bitwise (the automatic schedule, forced batch chunks, forced gate columns); returns the steps
/// computed and the batch chunks of the forced batch-chunk run.
fn check_case(seed: u64, c: Case) -> (usize, usize) {
    let one = c.run(1);
    let exp = c.expected();
    let what = format!("seed {seed} (B{} T{} I{} H{} {:?})", c.b, c.t, c.i, c.h, c.layer.options());
    assert_eq!(one.steps, exp.steps, "{what}: steps computed");
    for (name, g, e) in [
        ("dx", &one.dx, &exp.dx),
        ("d_kernel", &one.dk, &exp.dk),
        ("d_recurrent", &one.dr, &exp.dr),
        ("d_bias", &one.db, &exp.db),
        ("d_initial_h", &one.dh0, &exp.dh0),
        ("d_initial_c", &one.dc0, &exp.dc0),
    ] {
        close(&format!("{what} {name}"), g, e, 1e-5);
    }
    // dx at masked steps is exactly +0.0.
    for (k, &m) in c.mask.iter().enumerate() {
        if !m {
            assert!(one.dx[k * c.i..(k + 1) * c.i].iter().all(|v| v.to_bits() == 0), "{what}: dx at masked step {k}");
        }
    }
    same_bits(&format!("{what} threads 1 vs 2"), &one, &c.run(2));
    // Forced batch chunks (one per thread whatever the job's size) give the same bits.
    let mut c = c;
    c.layer = c.layer.clone().with_schedule(Schedule::BatchChunks);
    let two = c.run(2);
    same_bits(&format!("{what} batch chunks vs 1 thread"), &one, &two);
    let rows = c.mask.chunks(c.t).filter(|m| m.iter().any(|&v| v)).count();
    assert_eq!(two.chunks, rows.min(2), "{what}: forced batch chunks on 2 threads");
    // The gate-column split (forced, forward and backward) gives the same bits; its backward runs when the
    // transposed recurrent weights have two blocks or more (4 x 16 units at most each) and there are rows.
    c.layer = c.layer.clone().with_schedule(Schedule::GateColumns);
    let columns = c.run(2);
    same_bits(&format!("{what} gate columns vs 1 thread"), &one, &columns);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= 2 && one.steps > 0 && c.h > 64 {
        assert_eq!(columns.column_runs, 1, "{what}: the backward did not split the gate columns");
    }
    if c.h <= 8 {
        assert_eq!(columns.column_runs, 0, "{what}: one block of columns cannot be split");
    }
    (one.steps, two.chunks)
}

/// One tape serving a run of cases of every size in turn (as a training loop reuses its tapes, here
/// also across layers and views): the record and the buffers the backward keeps in it never leak into
/// the next case, whose gradients are bitwise those of a fresh tape.
#[test]
fn reused_tape_gives_what_a_fresh_one_gives() {
    let mut tape = KerasTape::new();
    let mut kept = 0;
    for seed in 0..300 {
        let c = case(seed, seed % 8 == 0);
        let threads = 1 + seed as usize % 2;
        let fresh = c.run(threads);
        let reused = c.run_in(&mut tape, threads);
        same_bits(&format!("seed {seed}: reused tape vs fresh"), &fresh, &reused);
        assert_eq!(fresh.steps, reused.steps, "seed {seed}");
        // The backward's buffers stay with the tape (and count in its bytes) for the next case.
        if reused.steps > 0 {
            kept += 1;
            assert!(tape.bytes() > c.layer.tape_bytes(&c.view()), "seed {seed}: no buffers kept");
        }
    }
    assert!(kept > 200, "{kept}");
}

#[test]
fn fast_backward_equals_reference() {
    let steps: usize = (0..2000).map(|s| check(s, false)).sum();
    assert!(steps > 10_000, "{steps}");
}

/// Shapes no issue names: hidden sizes that are not powers of two up to 1030 (weights of 17 MB), batches of
/// one, two and 130, and sequences long enough for several K-blocks of the weight-gradient kernel and
/// several thread parts of `dx` (hundreds of valid steps).
#[test]
fn unnamed_shapes() {
    let shapes = [(1, 6, 5, 1030), (2, 300, 5, 70), (130, 20, 3, 19), (1, 400, 2, 1), (2, 150, 33, 130)];
    let (mut steps, mut split) = (0, 0);
    for (k, &(b, t, i, h)) in shapes.iter().enumerate() {
        for seed in 0..2 {
            let seed = 30_000 + 10 * k as u64 + seed;
            let (s, chunks) = check_case(seed, sized_case(StdRng::seed_from_u64(seed), seed, b, t, i, h));
            steps += s;
            split += usize::from(chunks >= 2);
        }
    }
    assert!(steps > 1_000, "{steps}");
    // Most of these cases have 2 or more sequences with valid steps, which forced batch chunks split.
    assert!(split >= 6, "{split} cases ran several batch chunks");
}

#[test]
fn many_weight_blocks_and_long_inputs() {
    let steps: usize = (0..12).map(|s| check(10_000 + s, true)).sum();
    assert!(steps > 50, "{steps}");
}

/// The ONNX operator's fast backward against the float64 reference on seeded cases: every direction,
/// lengths with 0, 1 and T, initial states, peepholes, clip, input_forget, activations; threads 1 and 2
/// bitwise equal.
fn check_onnx(seed: u64) -> usize {
    use masked_rnn::cells::grads::LstmGrads;
    use masked_rnn::onnx::{Direction, OnnxLstm, OnnxLstmAttrs};
    use masked_rnn::reference::backward::{onnx_lstm_backward, OnnxDir64};
    use masked_rnn::{OnnxGrads, OnnxTape, OnnxUpstream};
    let mut rng = StdRng::seed_from_u64(seed);
    let (t, b, i) = (rng.random_range(1..7), rng.random_range(1..5), rng.random_range(1..5));
    let h = [1, 3, 7, 8, 9, 16, 17][rng.random_range(0..7)];
    let dir = [Direction::Forward, Direction::Reverse, Direction::Bidirectional][rng.random_range(0..3)];
    let d = dir.count();
    let smooth = [
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Softsign,
        Activation::ScaledTanh { alpha: 1.3, beta: 0.7 },
        Activation::Affine { alpha: 0.8, beta: 0.1 },
    ];
    let acts: Vec<Activation> = if rng.random_bool(0.5) {
        Vec::new()
    } else {
        (0..3 * d).map(|_| smooth[rng.random_range(0..smooth.len())]).collect()
    };
    let clip = rng.random_bool(0.3).then(|| rng.random_range(0.5..3.0f32));
    let input_forget = rng.random_bool(0.2);
    let peep = rng.random_bool(0.4);
    let attrs = OnnxLstmAttrs::new(h, dir).clip(clip).input_forget(input_forget).activations(acts.clone());
    let s = 1.0 / (h as f32).sqrt();
    let (w, r, bias) =
        (draw(&mut rng, d * 4 * h * i, s), draw(&mut rng, d * 4 * h * h, s), draw(&mut rng, d * 8 * h, 0.5));
    let p = peep.then(|| draw(&mut rng, d * 3 * h, 0.5));
    let node = OnnxLstm::new(attrs, i, &w, &r, Some(&bias), p.as_deref()).unwrap();
    let lens: Vec<i32> =
        (0..b).map(|_| [0, 1, t as i32, rng.random_range(0..=t as i32)][rng.random_range(0..4)]).collect();
    let x = draw(&mut rng, t * b * i, 1.0);
    let init = rng.random_bool(0.5).then(|| (draw(&mut rng, d * b * h, 0.5), draw(&mut rng, d * b * h, 0.5)));
    let (dy, dyh, dyc) =
        (draw(&mut rng, t * d * b * h, 1.0), draw(&mut rng, d * b * h, 1.0), draw(&mut rng, d * b * h, 1.0));
    let run = |threads: usize| {
        let mut tape = OnnxTape::new();
        let (h0, c0) = (init.as_ref().map(|v| &v.0[..]), init.as_ref().map(|v| &v.1[..]));
        node.forward_train(
            &x,
            t,
            b,
            Some(&lens),
            h0,
            c0,
            Default::default(),
            &mut tape,
            threads,
            &mut Workspace::new(),
        )
        .unwrap();
        let mut g: Vec<Vec<f32>> =
            [t * b * i, d * 4 * h * i, d * 4 * h * h, d * 8 * h, d * b * h, d * b * h, d * 3 * h]
                .map(|n| vec![f32::NAN; n])
                .into();
        let [gx, gw, gr, gb, gh, gc, gp] = &mut g[..] else { unreachable!() };
        let grads = OnnxGrads {
            dx: Some(gx),
            dw: Some(gw),
            dr: Some(gr),
            db: Some(gb),
            d_initial_h: Some(gh),
            d_initial_c: Some(gc),
            dp: peep.then_some(&mut gp[..]),
        };
        let up = OnnxUpstream { dy: Some(&dy), dy_h: Some(&dyh), dy_c: Some(&dyc) };
        let stats = node.backward(&x, t, b, Some(&lens), h0, c0, &tape, up, grads, threads).unwrap();
        (g, stats.steps_computed)
    };
    let (one, steps) = run(1);
    let (two, _) = run(2);
    let bits =
        |v: &Vec<Vec<f32>>| v.iter().map(|x| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>();
    assert_eq!(bits(&one), bits(&two), "seed {seed}: threads 1 vs 2");
    let valid: usize = lens.iter().map(|&l| l as usize).sum();
    assert_eq!(steps, d * valid, "seed {seed}: steps");
    // The reference: canonical f64 parameters per direction.
    let f = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    let weights: Vec<_> = (0..d)
        .map(|k| {
            masked_rnn::LstmWeights::from_onnx(
                i,
                h,
                &w[k * 4 * h * i..(k + 1) * 4 * h * i],
                &r[k * 4 * h * h..(k + 1) * 4 * h * h],
                Some(&bias[k * 8 * h..(k + 1) * 8 * h]),
                p.as_ref().map(|p| &p[k * 3 * h..(k + 1) * 3 * h]),
            )
            .unwrap()
        })
        .collect();
    let params: Vec<LstmParams64> = weights.iter().map(LstmParams64::from_weights).collect();
    let cells: Vec<masked_rnn::CellSpec> = (0..d)
        .map(|k| {
            let a = if acts.is_empty() {
                [Activation::Sigmoid, Activation::Tanh, Activation::Tanh]
            } else {
                [acts[3 * k], acts[3 * k + 1], acts[3 * k + 2]]
            };
            masked_rnn::CellSpec::onnx(a[0], a[1], a[2], clip, input_forget)
        })
        .collect();
    let dirs: Vec<OnnxDir64<'_>> =
        (0..d).map(|k| (&params[k], &cells[k], dir == Direction::Reverse || k == 1)).collect();
    let lengths: Vec<usize> = lens.iter().map(|&l| l as usize).collect();
    let init64 = init.as_ref().map(|(a, c)| (f(a), f(c)));
    let e = onnx_lstm_backward(
        &dirs,
        &f(&x),
        t,
        b,
        &lengths,
        init64.as_ref().map(|(a, c)| (&a[..], &c[..])),
        Some(&f(&dy)),
        Some(&f(&dyh)),
        Some(&f(&dyc)),
    );
    let o = LstmGrads::to_onnx_dirs(&e.params);
    let g32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let what =
        format!("seed {seed} (T{t} B{b} I{i} H{h} {dir:?} clip {clip:?} input_forget {input_forget} peep {peep})");
    close(&format!("{what} dx"), &one[0], &g32(&e.dx), 1e-5);
    close(&format!("{what} dw"), &one[1], &g32(&o.w), 1e-5);
    close(&format!("{what} dr"), &one[2], &g32(&o.r), 1e-5);
    close(&format!("{what} db"), &one[3], &g32(&o.b), 1e-5);
    if init.is_some() {
        close(&format!("{what} d_initial_h"), &one[4], &g32(&e.d_initial_h), 1e-5);
        close(&format!("{what} d_initial_c"), &one[5], &g32(&e.d_initial_c), 1e-5);
    }
    if peep {
        close(&format!("{what} dp"), &one[6], &g32(o.p.as_deref().unwrap()), 1e-5);
    }
    steps
}

#[test]
fn onnx_backward_equals_reference() {
    let steps: usize = (0..1500).map(|s| check_onnx(20_000 + s)).sum();
    assert!(steps > 5_000, "{steps}");
}
