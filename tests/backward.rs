//! The fast backward against the float64 reference backward, on seeded Keras cases: masks with holes,
//! pre-padding, fully masked rows, go_backwards, zero_output_for_mask, initial states, activations,
//! every upstream combination, sizes with many weight blocks; plus thread-count and batch-composition
//! invariance (bitwise) and steps computed = valid steps.

use masked_rnn::reference::backward::{keras_lstm_backward, KerasUpstream64, LstmParams64};
use masked_rnn::{
    Activation, InitialState, KerasGrads, KerasLstm, KerasLstmOptions, KerasOutputs, KerasTape, KerasUpstream,
    LstmWeights, SeqView, Workspace,
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
        let (b, t, i, h) = (self.b, self.t, self.i, self.h);
        let view = self.view();
        let init = self.init.as_ref().map(|(h0, c0)| InitialState { h: h0, c: c0 });
        let mut tape = KerasTape::new();
        let mut y = vec![0.0; b * t * h];
        let out = KerasOutputs { y: Some(&mut y), ..Default::default() };
        self.layer.forward_train(&self.x, &view, init, out, &mut tape, threads, &mut Workspace::new()).unwrap();
        let mut g = Grads {
            dx: vec![f32::NAN; b * t * i],
            dk: vec![f32::NAN; i * 4 * h],
            dr: vec![f32::NAN; h * 4 * h],
            db: vec![f32::NAN; 4 * h],
            dh0: vec![f32::NAN; b * h],
            dc0: vec![f32::NAN; b * h],
            steps: 0,
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
        g.steps = self.layer.backward(&self.x, &view, init, &tape, up, grads, threads).unwrap().steps_computed;
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
    let c = case(seed, big);
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
    one.steps
}

#[test]
fn fast_backward_equals_reference() {
    let steps: usize = (0..2000).map(|s| check(s, false)).sum();
    assert!(steps > 10_000, "{steps}");
}

#[test]
fn many_weight_blocks_and_long_inputs() {
    let steps: usize = (0..12).map(|s| check(10_000 + s, true)).sum();
    assert!(steps > 50, "{steps}");
}
