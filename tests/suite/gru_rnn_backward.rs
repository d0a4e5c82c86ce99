//! The fast backward of the ONNX `GRU` (both reset placements) and `RNN` operators against the float64
//! reference backward (`reference::backward::onnx_h_backward`, itself checked by finite differences), on
//! seeded cases in every direction and layout, with lengths (zero and full among them), initial states,
//! clips, every activation family and the hidden sizes around the vector widths; plus, bitwise, the same
//! gradients on 1 and 2 threads and for every schedule, and steps computed = valid steps.

use masked_rnn::onnx::{swap_axes, Direction, Layout, OnnxGru, OnnxGruAttrs, OnnxOutputs, OnnxRnn, OnnxRnnAttrs};
use masked_rnn::reference::backward::{onnx_h_backward, GruParams64, HCell64, OnnxHGrads64, RnnParams64};
use masked_rnn::{
    Activation, ForwardStats, GruSpec, GruWeights, OnnxGrads, OnnxTape, OnnxUpstream, RnnSpec, RnnWeights, Schedule,
    Workspace,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIRECTIONS: [Direction; 3] = [Direction::Forward, Direction::Reverse, Direction::Bidirectional];
const ACTS: [Activation; 7] = [
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::Relu,
    Activation::LeakyRelu { alpha: 0.1 },
    Activation::ScaledTanh { alpha: 1.5, beta: 0.7 },
    Activation::Softsign,
    Activation::HardSigmoid { alpha: 0.2, beta: 0.5 },
];
/// Tolerance of the float32 gradients against the float64 reference, `|g - e| <= TOL * max(1, |e|)`:
/// through up to 8 steps of unbounded activations (ReLU, scaled tanh of slope above 1) float32 rounding
/// reached 3.3e-5 on 2 of these 1,200 cases (all others within 1e-5).
const TOL: f32 = 4e-5;
const HIDDEN: [usize; 11] = [1, 3, 7, 8, 9, 15, 16, 17, 33, 65, 130];

fn uniform(rng: &mut StdRng, n: usize, s: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-s..s)).collect()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn to32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// `|g - e| <= tol * max(1, |e|)` elementwise, NaN never close; names the first failure.
fn close(what: &str, got: &[f32], exp: &[f32], tol: f32) {
    assert_eq!(got.len(), exp.len(), "{what}: length");
    for (k, (&g, &e)) in got.iter().zip(exp).enumerate() {
        assert!((g - e).abs() <= tol * e.abs().max(1.0), "{what}[{k}]: got {g}, reference {e}");
    }
}

/// `m [rows, cols] -> [cols, rows]`.
fn transpose(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// One random problem in layout 0 (`x [T, B, I]`, states `[D, B, H]`, `dy [T, D, B, H]`).
struct Case {
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    direction: Direction,
    layout: Layout,
    clip: Option<f32>,
    acts: Vec<Activation>,
    lens: Option<Vec<i32>>,
    x: Vec<f32>,
    w: Vec<f32>,
    r: Vec<f32>,
    bias: Option<Vec<f32>>,
    h0: Option<Vec<f32>>,
    dy: Option<Vec<f32>>,
    dy_h: Option<Vec<f32>>,
}

impl Case {
    fn new(seed: u64, gates: usize, acts_per_dir: usize) -> Case {
        let mut rng = StdRng::seed_from_u64(seed);
        let (t, b, i) = (rng.random_range(1..9), rng.random_range(1..7), rng.random_range(1..8));
        let h = HIDDEN[rng.random_range(0..HIDDEN.len())];
        let direction = DIRECTIONS[rng.random_range(0..3)];
        let d = direction.count();
        let layout = if rng.random_bool(0.5) { Layout::BatchMajor } else { Layout::SeqMajor };
        let clip = rng.random_bool(0.3).then(|| rng.random_range(0.5..3.0));
        let acts = if rng.random_bool(0.4) {
            Vec::new()
        } else {
            (0..acts_per_dir * d).map(|_| ACTS[rng.random_range(0..ACTS.len())]).collect()
        };
        let lens = rng.random_bool(0.7).then(|| (0..b).map(|_| rng.random_range(0..=t as i32)).collect());
        let scale = 1.0 / (h as f32).sqrt();
        Case {
            t,
            b,
            i,
            h,
            direction,
            layout,
            clip,
            acts,
            lens,
            x: uniform(&mut rng, t * b * i, 1.0),
            w: uniform(&mut rng, d * gates * h * i, scale),
            r: uniform(&mut rng, d * gates * h * h, scale),
            bias: rng.random_bool(0.7).then(|| uniform(&mut rng, d * 2 * gates * h, 0.5)),
            h0: rng.random_bool(0.5).then(|| uniform(&mut rng, d * b * h, 1.0)),
            dy: rng.random_bool(0.8).then(|| uniform(&mut rng, t * d * b * h, 1.0)),
            dy_h: rng.random_bool(0.6).then(|| uniform(&mut rng, d * b * h, 1.0)),
        }
    }

    fn lengths(&self) -> Vec<usize> {
        self.lens.as_ref().map_or(vec![self.t; self.b], |l| l.iter().map(|&v| v as usize).collect())
    }

    /// The activations of direction `d` (`per` of them), defaults if none were given.
    fn dir_acts(&self, d: usize, per: usize, defaults: &[Activation]) -> Vec<Activation> {
        if self.acts.is_empty() {
            defaults.to_vec()
        } else {
            self.acts[d * per..(d + 1) * per].to_vec()
        }
    }
}

/// A training run of an operator: `(x, initial_h, tape, upstream, gradients)` in its layout.
type TrainRun<'a> = dyn Fn(&[f32], Option<&[f32]>, &mut OnnxTape, OnnxUpstream, OnnxGrads) -> ForwardStats + 'a;

/// The fast operator's results in layout 0: `[dx, dW, dR, dB, d_initial_h]` and what ran.
type Fast = ([Vec<f32>; 5], ForwardStats);

/// Runs `forward_train` then `backward` of an operator through `train(case inputs in its layout, tape,
/// outs)`, converting between the case's layout 0 and the operator's.
fn fast(c: &Case, gates: usize, run: &TrainRun) -> Fast {
    let (t, b, i, h, d) = (c.t, c.b, c.i, c.h, c.direction.count());
    let bm = c.layout == Layout::BatchMajor;
    let x = if bm { swap_axes(&c.x, t, b, i) } else { c.x.clone() };
    let state = |v: &Option<Vec<f32>>| v.as_ref().map(|v| if bm { swap_axes(v, d, b, h) } else { v.clone() });
    let (h0, dy_h) = (state(&c.h0), state(&c.dy_h));
    // dy [T, D, B, H] -> layout 1 [B, T, D, H].
    let dy = c.dy.as_ref().map(|dy| if bm { y_batch_major(dy, t, d, b, h) } else { dy.clone() });
    let mut g = [
        vec![0.0; t * b * i],
        vec![0.0; d * gates * h * i],
        vec![0.0; d * gates * h * h],
        vec![0.0; d * 2 * gates * h],
        vec![0.0; d * b * h],
    ];
    let mut tape = OnnxTape::new();
    let up = OnnxUpstream { dy: dy.as_deref(), dy_h: dy_h.as_deref(), dy_c: None };
    let [dx, dw, dr, db, dh0] = &mut g;
    let grads = OnnxGrads {
        dx: Some(dx),
        dw: Some(dw),
        dr: Some(dr),
        db: Some(db),
        d_initial_h: Some(dh0),
        d_initial_c: None,
        dp: None,
    };
    let stats = run(&x, h0.as_deref(), &mut tape, up, grads);
    if bm {
        g[0] = swap_axes(&g[0], b, t, i);
        g[4] = swap_axes(&g[4], b, d, h);
    }
    (g, stats)
}

/// `[T, D, B, H]` -> `[B, T, D, H]`.
fn y_batch_major(y: &[f32], t: usize, d: usize, b: usize, h: usize) -> Vec<f32> {
    let mut out = vec![0.0; y.len()];
    for tt in 0..t {
        for dd in 0..d {
            for bb in 0..b {
                let src = ((tt * d + dd) * b + bb) * h;
                let dst = ((bb * t + tt) * d + dd) * h;
                out[dst..dst + h].copy_from_slice(&y[src..src + h]);
            }
        }
    }
    out
}

/// The reference's gradients `[dx, dW, dR, dB, d_initial_h]` in ONNX's layouts, from per-direction
/// `(dW, dR, dB)` of its canonical gradients.
fn reference<C: HCell64>(
    c: &Case,
    cells: &[C],
    onnx: impl Fn(&C::Grads) -> (Vec<f64>, Vec<f64>, Vec<f64>),
) -> [Vec<f32>; 5] {
    let dirs: Vec<(&C, bool)> =
        cells.iter().enumerate().map(|(d, cell)| (cell, c.direction == Direction::Reverse || d == 1)).collect();
    let g: OnnxHGrads64<C::Grads> = onnx_h_backward(
        &dirs,
        &to64(&c.x),
        (c.t, c.b),
        &c.lengths(),
        c.h0.as_deref().map(to64).as_deref(),
        c.dy.as_deref().map(to64).as_deref(),
        c.dy_h.as_deref().map(to64).as_deref(),
    );
    let (mut dw, mut dr, mut db) = (Vec::new(), Vec::new(), Vec::new());
    for p in &g.params {
        let (w, r, b) = onnx(p);
        dw.extend(w);
        dr.extend(r);
        db.extend(b);
    }
    [to32(&g.dx), to32(&dw), to32(&dr), to32(&db), to32(&g.d_initial_h)]
}

/// The fast gradients equal the reference's, are bitwise the same for 1 and 2 threads and every
/// schedule, and come from the valid steps only.
fn check(c: &Case, what: &str, runs: &dyn Fn(usize, Schedule) -> Fast, want: &[Vec<f32>; 5]) {
    let valid = c.lengths().iter().sum::<usize>() * c.direction.count();
    let (one, stats) = runs(1, Schedule::Auto);
    assert_eq!(stats.steps_computed, valid, "{what}: steps computed");
    for (k, name) in ["dx", "dW", "dR", "dB", "d_initial_h"].iter().enumerate() {
        close(&format!("{what} {name} acts {:?} clip {:?}", c.acts, c.clip), &one[k], &want[k], TOL);
    }
    let bits =
        |g: &[Vec<f32>; 5]| g.iter().map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>();
    for (threads, schedule) in [(2, Schedule::Auto), (2, Schedule::GateColumns), (2, Schedule::BatchChunks)] {
        let (other, _) = runs(threads, schedule);
        assert_eq!(bits(&other), bits(&one), "{what}: {threads} threads, {schedule:?}");
    }
}

fn gru_case(seed: u64, reset_after: bool) {
    let c = Case::new(seed, 3, 2);
    let d = c.direction.count();
    let attrs = OnnxGruAttrs::new(c.h, c.direction)
        .layout(c.layout)
        .clip(c.clip)
        .linear_before_reset(reset_after)
        .activations(c.acts.clone());
    let what = format!(
        "seed {seed} gru reset_after={reset_after} {:?} {:?} t{} b{} i{} h{}",
        c.direction, c.layout, c.t, c.b, c.i, c.h
    );
    let (wl, rl, bl) = (3 * c.h * c.i, 3 * c.h * c.h, 6 * c.h);
    let cells: Vec<GruParams64> = (0..d)
        .map(|k| {
            let bias = c.bias.as_ref().map(|b| &b[k * bl..(k + 1) * bl]);
            let w =
                GruWeights::from_onnx(c.i, c.h, &c.w[k * wl..(k + 1) * wl], &c.r[k * rl..(k + 1) * rl], bias).unwrap();
            let a = c.dir_acts(k, 2, &[Activation::Sigmoid, Activation::Tanh]);
            GruParams64::new(&w, GruSpec::onnx(a[0], a[1], c.clip, reset_after))
        })
        .collect();
    let want = reference(&c, &cells, |g| {
        let h = c.h;
        (
            transpose(&g.kernel, c.i, 3 * h),
            transpose(&g.recurrent, h, 3 * h),
            [g.bias_input.clone(), g.bias_recurrent.clone()].concat(),
        )
    });
    let runs = |threads: usize, schedule: Schedule| {
        let node = OnnxGru::new(attrs.clone(), c.i, &c.w, &c.r, c.bias.as_deref()).unwrap().with_schedule(schedule);
        fast(&c, 3, &|x, h0, tape, up, grads| {
            let (t, b) = (c.t, c.b);
            let mut y = vec![0.0; t * d * b * c.h];
            let out = OnnxOutputs { y: Some(&mut y), y_h: None, y_c: None };
            let lens = c.lens.as_deref();
            node.forward_train(x, t, b, lens, h0, out, tape, threads, &mut Workspace::new()).unwrap();
            node.backward(x, t, b, lens, h0, tape, up, grads, threads).unwrap()
        })
    };
    check(&c, &what, &runs, &want);
}

fn rnn_case(seed: u64) {
    let c = Case::new(seed, 1, 1);
    let d = c.direction.count();
    let attrs = OnnxRnnAttrs::new(c.h, c.direction).layout(c.layout).clip(c.clip).activations(c.acts.clone());
    let what = format!("seed {seed} rnn {:?} {:?} t{} b{} i{} h{}", c.direction, c.layout, c.t, c.b, c.i, c.h);
    let (wl, rl, bl) = (c.h * c.i, c.h * c.h, 2 * c.h);
    let cells: Vec<RnnParams64> = (0..d)
        .map(|k| {
            let bias = c.bias.as_ref().map(|b| &b[k * bl..(k + 1) * bl]);
            let w =
                RnnWeights::from_onnx(c.i, c.h, &c.w[k * wl..(k + 1) * wl], &c.r[k * rl..(k + 1) * rl], bias).unwrap();
            let a = c.dir_acts(k, 1, &[Activation::Tanh]);
            RnnParams64::new(&w, RnnSpec::new(a[0], c.clip))
        })
        .collect();
    let want = reference(&c, &cells, |g| {
        (transpose(&g.kernel, c.i, c.h), transpose(&g.recurrent, c.h, c.h), [g.bias.clone(), g.bias.clone()].concat())
    });
    let runs = |threads: usize, schedule: Schedule| {
        let node = OnnxRnn::new(attrs.clone(), c.i, &c.w, &c.r, c.bias.as_deref()).unwrap().with_schedule(schedule);
        fast(&c, 1, &|x, h0, tape, up, grads| {
            let (t, b) = (c.t, c.b);
            let out = OnnxOutputs { y: None, y_h: None, y_c: None };
            let lens = c.lens.as_deref();
            node.forward_train(x, t, b, lens, h0, out, tape, threads, &mut Workspace::new()).unwrap();
            node.backward(x, t, b, lens, h0, tape, up, grads, threads).unwrap()
        })
    };
    check(&c, &what, &runs, &want);
}

#[test]
fn gru_reset_after_backward_equals_reference() {
    for seed in 0..400 {
        gru_case(seed, true);
    }
}

#[test]
fn gru_reset_before_backward_equals_reference() {
    for seed in 0..400 {
        gru_case(10_000 + seed, false);
    }
}

#[test]
fn rnn_backward_equals_reference() {
    for seed in 0..400 {
        rnn_case(20_000 + seed);
    }
}
