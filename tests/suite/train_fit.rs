//! The training loop against a real Keras 3 `model.fit` of the seed model (tests/fixtures/keras_fit,
//! tools/fixtures/keras_fit_golden.py): every logged loss, the history, the weights after every step and
//! the final weights, `evaluate` and `predict`; then what Keras cannot show: thread-count independence,
//! seeded shuffling, the composition of the backward over every layer kind, and the error paths.

use crate::common::{fixtures, floats, usize_of};
use masked_rnn::bidirectional::{KerasBidirectional, MergeMode};
use masked_rnn::cells::grads::PytorchLayout;
use masked_rnn::keras::Recurrent;
use masked_rnn::train::fit::{FitOptions, History, Shuffle};
use masked_rnn::{
    Adam, ErrorKind, GruWeights, KerasGru, KerasGruOptions, KerasLstm, KerasLstmOptions, KerasRnnOptions,
    KerasSimpleRnn, Loss, LstmWeights, MaskValueMode, MaskedSeq, Optimizer, Result, RnnWeights, Sequential, Sgd,
};
use serde_json::Value;

/// Per-batch logs and history: relative to Keras (float32 forward and loss, other summation orders).
const LOSS_REL: f64 = 1e-4;
/// Weights after every step and at the end, absolute.
const WEIGHT_ABS: f64 = 1e-4;
/// `model.evaluate`, absolute.
const EVAL_ABS: f64 = 1e-5;

fn lstm(l: &Value) -> KerasLstm {
    let w = LstmWeights::from_keras(
        usize_of(&l["input"]),
        usize_of(&l["hidden"]),
        &floats(&l["kernel"]),
        &floats(&l["recurrent_kernel"]),
        Some(&floats(&l["bias"])),
    )
    .unwrap();
    KerasLstm::new(w, KerasLstmOptions::default()).unwrap()
}

/// A fixture's recurrent layer (`class` LSTM when absent, GRU, SimpleRNN), Keras' default options.
fn recurrent(l: &Value) -> Recurrent {
    let (i, h) = (usize_of(&l["input"]), usize_of(&l["hidden"]));
    let (k, r, b) = (floats(&l["kernel"]), floats(&l["recurrent_kernel"]), floats(&l["bias"]));
    match l["class"].as_str().unwrap_or("LSTM") {
        "LSTM" => lstm(l).into(),
        "GRU" => {
            let reset_after = l["reset_after"].as_bool().unwrap();
            let w = GruWeights::from_keras(i, h, &k, &r, Some(&b), reset_after).unwrap();
            KerasGru::new(w, KerasGruOptions::default().reset_after(reset_after)).unwrap().into()
        }
        "SimpleRNN" => {
            let w = RnnWeights::from_keras(i, h, &k, &r, Some(&b)).unwrap();
            KerasSimpleRnn::new(w, KerasRnnOptions::default()).unwrap().into()
        }
        other => panic!("layer class {other}"),
    }
}

/// Keras `get_weights()` of the recurrent layers, concatenated (a `Bidirectional`'s forward layer's, then
/// its backward layer's).
fn keras_weights(v: &Value) -> Vec<Vec<f32>> {
    let one = |l: &Value| [floats(&l["kernel"]), floats(&l["recurrent_kernel"]), floats(&l["bias"])];
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|l| match l["class"].as_str() {
            Some("Bidirectional") => [one(&l["forward"]), one(&l["backward"])].concat(),
            _ => one(l).to_vec(),
        })
        .collect()
}

/// The fixture's model at its initial weights: `Masking -> recurrent layers -> x[:, slice:]`, plus
/// `DropMask` when Keras' Lambda dropped the mask.
fn model(f: &Value, drop_mask: bool) -> Sequential {
    let mut m = Sequential::new().masking(f["mask_value"].as_f64().unwrap() as f32, MaskValueMode::Ieee);
    for l in f["initial_weights"].as_array().unwrap() {
        m = match l["class"].as_str() {
            Some("Bidirectional") => {
                let merge = MergeMode::from_keras_name(l["merge_mode"].as_str()).unwrap();
                let (fw, bw) = (recurrent(&l["forward"]), recurrent(&l["backward"]));
                m.bidirectional(KerasBidirectional::from_layers(fw, bw, merge, true).unwrap())
            }
            _ => m.recurrent(recurrent(l)),
        };
    }
    m = m.time_slice(usize_of(&f["slice_start"]), None);
    if drop_mask {
        m = m.drop_mask();
    }
    m
}

struct Data {
    x: MaskedSeq,
    y: Vec<f32>,
    x_val: MaskedSeq,
    y_val: Vec<f32>,
}

fn data(f: &Value) -> Data {
    let (t, feat) = (usize_of(&f["time"]), usize_of(&f["features"]));
    let seq = |k: &str, n: &str| MaskedSeq::dense(floats(&f[k]), usize_of(&f[n]), t, feat).unwrap();
    Data { x: seq("x", "n_train"), y: floats(&f["y"]), x_val: seq("x_val", "n_val"), y_val: floats(&f["y_val"]) }
}

fn worst_abs(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(&p, &q)| (p as f64 - q as f64).abs())
        })
        .fold(0.0, f64::max)
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-30)
}

fn bits(w: &[Vec<f32>]) -> Vec<Vec<u32>> {
    w.iter().map(|t| t.iter().map(|v| v.to_bits()).collect()).collect()
}

/// Fits `m` as the fixture's Keras run did; returns the history and the weights after every step.
fn fit_like_keras(
    m: &mut Sequential,
    f: &Value,
    d: &Data,
    loss: Loss,
    shuffle: Shuffle,
    threads: usize,
) -> Result<(History, Vec<Vec<Vec<f32>>>)> {
    let mut adam = Adam::keras();
    let opts = FitOptions::new(loss, &mut adam)
        .epochs(usize_of(&f["epochs"]))
        .batch_size(usize_of(&f["batch_size"]))
        .shuffle(shuffle)
        .validation(&d.x_val, &d.y_val)
        .threads(threads);
    let mut after = Vec::new();
    let h = m.fit_with(&d.x, &d.y, opts, |e| after.push(e.model.weights()))?;
    assert_eq!(adam.iterations() as usize, after.len());
    Ok((h, after))
}

#[test]
fn keras_fit_fixtures_reproduced() {
    let (mut finals, mut fits) = (Vec::new(), 0);
    for (name, f) in fixtures("keras_fit", "keras_fit") {
        let carried = f["mask_carried"].as_bool().unwrap();
        let (loss, unmasked) = match f["loss"].as_str().unwrap() {
            "mae" => (Loss::MaskedMae, Loss::UnmaskedMae),
            "mse" => (Loss::MaskedMse, Loss::UnmaskedMse),
            other => panic!("{name}: loss {other}"),
        };
        assert_eq!(f["shuffle"], false);
        let d = data(&f);
        let mut m = model(&f, !carried);
        assert_eq!(m.weights(), keras_weights(&f["initial_weights"]));
        let t0 = std::time::Instant::now();
        let (h, after) = fit_like_keras(&mut m, &f, &d, loss, Shuffle::Off, 1).unwrap();
        let fit_time = t0.elapsed();

        // Per-batch logs (running means weighted by samples), each batch's own loss, history.
        let logs: Vec<Vec<f64>> = f["batch_logs_loss"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
            .collect();
        let sizes: Vec<usize> = f["batch_sizes"].as_array().unwrap().iter().map(usize_of).collect();
        assert_eq!(h.batch_loss.len(), logs.len());
        let mut w_logs = 0.0f64;
        for (got, want) in h.batch_loss.iter().zip(&logs) {
            assert_eq!(got.len(), sizes.len());
            for (&g, &w) in got.iter().zip(want) {
                w_logs = w_logs.max(rel(g, w));
            }
        }
        let own: Vec<f64> = f["batch_loss"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let w_own = h.step_loss.concat().iter().zip(&own).map(|(&g, &w)| rel(g, w)).fold(0.0, f64::max);
        let hist =
            |k: &str| -> Vec<f64> { f["history"][k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
        let w_loss = h.loss.iter().zip(hist("loss")).map(|(&g, w)| rel(g, w)).fold(0.0, f64::max);
        let w_val = h.val_loss.iter().zip(hist("val_loss")).map(|(&g, w)| rel(g, w)).fold(0.0, f64::max);
        assert_eq!((h.loss.len(), h.val_loss.len()), (2, 2));
        assert_eq!(h.loss, h.batch_loss.iter().map(|e| *e.last().unwrap()).collect::<Vec<_>>());

        // Weights after every optimizer step, and at the end.
        let steps = f["weights_after_batch"].as_array().unwrap();
        assert_eq!(after.len(), steps.len());
        let w_steps = after.iter().zip(steps).map(|(g, w)| worst_abs(g, &keras_weights(w))).fold(0.0, f64::max);
        let w_final = worst_abs(&m.weights(), &keras_weights(&f["final_weights"]));

        // evaluate (one batch of 10: per-batch and per-sample weighting agree) and predict.
        let batch = usize_of(&f["batch_size"]);
        let ev = m.evaluate(&d.x_val, &d.y_val, batch, loss, 1).unwrap();
        let keras_ev = f["evaluate_val"].as_f64().unwrap();
        let w_eval = (ev - keras_ev).abs();
        assert_eq!(ev, *h.val_loss.last().unwrap(), "{name}: evaluate is the last val_loss");
        let pred = m.predict(&d.x_val, 1).unwrap().to_vec();
        let w_pred = worst_abs(&[pred], &[floats(&f["y_val_pred"])]);

        println!(
            "{name}: worst rel: batch logs {w_logs:.2e}, batch losses {w_own:.2e}, history loss {w_loss:.2e}, \
             val_loss {w_val:.2e}; worst abs: weights per step {w_steps:.2e}, final {w_final:.2e}, \
             evaluate {w_eval:.2e}, predict {w_pred:.2e}; fit {:.1} ms",
            fit_time.as_secs_f64() * 1e3
        );
        assert!(w_logs <= LOSS_REL && w_own <= LOSS_REL, "{name}: batch logs {w_logs:e}, own {w_own:e}");
        assert!(w_loss <= LOSS_REL && w_val <= LOSS_REL, "{name}: history {w_loss:e} {w_val:e}");
        assert!(w_steps <= WEIGHT_ABS && w_final <= WEIGHT_ABS, "{name}: weights {w_steps:e} {w_final:e}");
        assert!(w_eval <= EVAL_ABS, "{name}: evaluate {ev} vs Keras {keras_ev}");
        assert!(w_pred <= 1e-4, "{name}: predict {w_pred:e}");

        if !carried {
            // The same bug as an unmasked loss on the masked model: the same numbers, bit for bit.
            let mut m2 = model(&f, false);
            let (h2, _) = fit_like_keras(&mut m2, &f, &d, unmasked, Shuffle::Off, 1).unwrap();
            assert_eq!(bits(&m2.weights()), bits(&m.weights()), "{name}: DropMask vs unmasked loss");
            assert_eq!(h2.batch_loss, h.batch_loss);
        }
        if name.starts_with("seed_fit") {
            finals.push((carried, m.weights(), keras_weights(&f["final_weights"])));
        }
        fits += 1;
    }
    // Both seed models, and the GRU / SimpleRNN / Bidirectional stacks.
    assert!(fits >= 4, "{fits} fits");
    // The mask-dropped seed model learns something else, as in Keras: by about as much.
    assert_eq!(finals.len(), 2);
    let ours = worst_abs(&finals[0].1, &finals[1].1);
    let keras = worst_abs(&finals[0].2, &finals[1].2);
    println!("masked vs mask-dropped final weights: ours differ by up to {ours:.3e}, Keras' by {keras:.3e}");
    assert!(ours > 1e-3 && (ours - keras).abs() <= 2.0 * WEIGHT_ABS, "{ours} vs {keras}");
}

fn masked_fixture() -> Value {
    fixtures("keras_fit", "keras_fit").into_iter().find(|(n, _)| n == "seed_fit_masked").unwrap().1
}

#[test]
fn threads_do_not_change_a_bit() {
    let f = masked_fixture();
    let d = data(&f);
    let mut one = model(&f, false);
    let mut two = model(&f, false);
    let (h1, a1) = fit_like_keras(&mut one, &f, &d, Loss::MaskedMae, Shuffle::Off, 1).unwrap();
    let (h2, a2) = fit_like_keras(&mut two, &f, &d, Loss::MaskedMae, Shuffle::Off, 2).unwrap();
    assert_eq!(bits(&one.weights()), bits(&two.weights()));
    for (a, b) in a1.iter().zip(&a2) {
        assert_eq!(bits(a), bits(b));
    }
    assert_eq!((h1.batch_loss, h1.val_loss), (h2.batch_loss, h2.val_loss));
}

#[test]
fn seeded_shuffle_is_reproducible_and_shuffles() {
    let f = masked_fixture();
    let d = data(&f);
    let run = |s| {
        let mut m = model(&f, false);
        let (h, _) = fit_like_keras(&mut m, &f, &d, Loss::MaskedMae, s, 1).unwrap();
        (bits(&m.weights()), h.batch_loss)
    };
    let (a, b, c, off) = (run(Shuffle::Seeded(7)), run(Shuffle::Seeded(7)), run(Shuffle::Seeded(8)), run(Shuffle::Off));
    assert_eq!(a, b);
    assert_ne!(a.0, off.0);
    assert_ne!(a.0, c.0);
    assert_ne!(a.1, off.1);
}

/// Records the gradients handed to the optimizer, changes nothing.
#[derive(Default)]
struct Capture(Vec<Vec<f32>>, u64);

impl Optimizer for Capture {
    fn step(&mut self, _: &mut [&mut [f32]], grads: &[&[f32]]) -> Result<()> {
        self.0 = grads.iter().map(|g| g.to_vec()).collect();
        self.1 += 1;
        Ok(())
    }
    fn learning_rate(&self) -> f64 {
        0.0
    }
    fn set_learning_rate(&mut self, _: f64) {}
    fn iterations(&self) -> u64 {
        self.1
    }
    fn reset(&mut self) {}
}

fn small_layer(i: usize, h: usize, seed: u32) -> KerasLstm {
    let v = |n: usize, k: u32| -> Vec<f32> {
        (0..n)
            .map(|j| (((j as u32).wrapping_mul(2_654_435_761) ^ k.wrapping_mul(97)) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    };
    let w =
        LstmWeights::from_keras(i, h, &v(i * 4 * h, seed), &v(h * 4 * h, seed + 1), Some(&v(4 * h, seed + 2))).unwrap();
    KerasLstm::new(w, KerasLstmOptions::default()).unwrap()
}

/// `[B, T, F]` with sequence `s` valid for `lens[s]` steps: pre-padded for odd `s`, post-padded for
/// even ones, zeros at padding, values in about [-0.8, 0.8] drawn by `(e * mul % modulus)`.
fn mixed_padding(b: usize, t: usize, fe: usize, lens: &[usize], (mul, modulus): (usize, usize)) -> MaskedSeq {
    let x: Vec<f32> = (0..b * t * fe)
        .map(|e| {
            let (s, step) = (e / (t * fe), (e / fe) % t);
            let valid = if s % 2 == 1 { step >= t - lens[s] } else { step < lens[s] };
            if valid {
                ((e * mul % modulus) as f32 / (modulus / 2) as f32 - 1.0) * 0.8
            } else {
                0.0
            }
        })
        .collect();
    MaskedSeq::dense(x, b, t, fe).unwrap()
}

/// Every layer kind in the backward, including an LSTM fed by a time slice (a copied, densified input),
/// a `DropMask` before an LSTM, and pre-padding: gradients against central finite differences.
#[test]
fn backward_through_every_layer_kind_matches_finite_differences() {
    let (b, t, fe) = (4, 9, 3);
    let x = mixed_padding(b, t, fe, &[9, 5, 7, 2], (37, 19));
    let mut m = Sequential::new()
        .masking(0.0, MaskValueMode::Ieee)
        .lstm(small_layer(fe, 5, 1))
        .time_slice(2, Some(8))
        .lstm(small_layer(5, 4, 11))
        .drop_mask()
        .time_slice(1, None)
        .lstm(small_layer(4, 2, 21));
    let (to, fo) = m.output_shape(t, fe).unwrap();
    assert_eq!((to, fo), (5, 2));
    let worst = gradients_match_finite_differences(&mut m, &x, (to, fo), 9);
    println!("every layer kind: worst relative gradient difference vs finite differences {worst:.2e}");
}

/// One `train_step` of `m` on `x` (masked MSE against fixed targets of the output's shape `(T, F)`)
/// hands the optimizer `tensors` gradients, each within tolerance of central finite differences of the
/// loss at a spread of its elements; returns the worst relative difference.
fn gradients_match_finite_differences(
    m: &mut Sequential,
    x: &MaskedSeq,
    (to, fo): (usize, usize),
    tensors: usize,
) -> f64 {
    let y: Vec<f32> = (0..x.batch() * to * fo).map(|k| (k % 7) as f32 / 7.0 - 0.4).collect();
    let loss = Loss::MaskedMse;
    let mut cap = Capture::default();
    let w0 = m.weights();
    let lv = m.train_step(x, &y, loss, &mut cap, 1).unwrap();
    assert_eq!(cap.0.len(), tensors);
    assert_eq!(w0.len(), tensors);
    let value = |m: &Sequential| loss.value(&m.predict(x, 1).unwrap(), &y).unwrap().value;
    assert_eq!(lv.value, value(m));
    let mut worst = 0.0f64;
    for (k, tensor) in w0.iter().enumerate() {
        assert_eq!(cap.0[k].len(), tensor.len(), "tensor {k}");
        for j in (0..tensor.len()).step_by(tensor.len() / 5 + 1) {
            let eps = 1e-2f32;
            let mut at = |d: f32| {
                let mut w = w0.clone();
                w[k][j] += d;
                m.set_weights(&w).unwrap();
                value(m)
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            let g = cap.0[k][j] as f64;
            worst = worst.max((fd - g).abs() / fd.abs().max(g.abs()).max(1e-2));
            assert!(
                (fd - g).abs() <= 2e-3 + 2e-2 * fd.abs(),
                "tensor {k} [{j}]: backward {g} vs finite difference {fd}"
            );
        }
    }
    m.set_weights(&w0).unwrap();
    worst
}

/// A small deterministic tensor of `n` values in [-0.5, 0.5).
fn small(n: usize, k: u32) -> Vec<f32> {
    (0..n)
        .map(|j| (((j as u32).wrapping_mul(2_654_435_761) ^ k.wrapping_mul(97)) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn small_gru(i: usize, h: usize, reset_after: bool, seed: u32) -> KerasGru {
    let bias = small(if reset_after { 6 * h } else { 3 * h }, seed + 2);
    let w =
        GruWeights::from_keras(i, h, &small(i * 3 * h, seed), &small(h * 3 * h, seed + 1), Some(&bias), reset_after)
            .unwrap();
    KerasGru::new(w, KerasGruOptions::default().reset_after(reset_after)).unwrap()
}

fn small_rnn(i: usize, h: usize, seed: u32) -> KerasSimpleRnn {
    let w =
        RnnWeights::from_keras(i, h, &small(i * h, seed), &small(h * h, seed + 1), Some(&small(h, seed + 2))).unwrap();
    KerasSimpleRnn::new(w, KerasRnnOptions::default()).unwrap()
}

/// GRU (both reset placements), SimpleRNN, LSTM and `Bidirectional` GRU / SimpleRNN layers in one stack,
/// with masks, pre-padding, a time slice and a `DropMask`: one training step's gradients against finite
/// differences, in `weights()` order (a `Bidirectional`'s forward then backward layer); the same stack
/// gives bitwise the same step on 1 and 2 threads.
#[test]
fn backward_through_gru_rnn_and_bidirectional_matches_finite_differences() {
    let (b, t, fe) = (4, 8, 3);
    let x = mixed_padding(b, t, fe, &[8, 3, 6, 1], (29, 17));
    let bidi_rnn =
        KerasBidirectional::from_layers(small_rnn(4, 3, 31), small_rnn(4, 3, 41), MergeMode::Concat, true).unwrap();
    let bidi_gru =
        KerasBidirectional::from_layers(small_gru(5, 2, true, 61), small_gru(5, 2, true, 71), MergeMode::Mul, true)
            .unwrap();
    let mut m = Sequential::new()
        .masking(0.0, MaskValueMode::Ieee)
        .gru(small_gru(fe, 4, false, 1))
        .time_slice(1, Some(7))
        .bidirectional(bidi_rnn)
        .simple_rnn(small_rnn(6, 5, 51))
        .bidirectional(bidi_gru)
        .drop_mask()
        .lstm(small_layer(2, 2, 81));
    let shape = m.output_shape(t, fe).unwrap();
    assert_eq!(shape, (6, 2));
    // 1 GRU + 2 directions + 1 SimpleRNN + 2 directions + 1 LSTM, three tensors each.
    let worst = gradients_match_finite_differences(&mut m, &x, shape, 21);
    println!("GRU / SimpleRNN / Bidirectional stack: worst relative gradient difference {worst:.2e}");
    let y: Vec<f32> = (0..b * shape.0 * shape.1).map(|k| (k % 5) as f32 / 5.0).collect();
    let mut two = m.clone();
    let (mut a1, mut a2) = (Adam::keras(), Adam::keras());
    for _ in 0..3 {
        let l1 = m.train_step(&x, &y, Loss::MaskedMae, &mut a1, 1).unwrap();
        let l2 = two.train_step(&x, &y, Loss::MaskedMae, &mut a2, 2).unwrap();
        assert_eq!(l1.value.to_bits(), l2.value.to_bits());
    }
    assert_eq!(bits(&m.weights()), bits(&two.weights()));
    // A Bidirectional that does not return merged sequences has no place in a stack.
    let last =
        KerasBidirectional::from_layers(small_gru(fe, 2, true, 1), small_gru(fe, 2, true, 2), MergeMode::Sum, false)
            .unwrap();
    let bad = Sequential::new().bidirectional(last);
    assert_eq!(bad.output_shape(t, fe).unwrap_err().kind(), ErrorKind::BadArgument);
    let wrong = Sequential::new().gru(small_gru(fe + 1, 2, true, 1));
    assert_eq!(wrong.output_shape(t, fe).unwrap_err().kind(), ErrorKind::BadShape);
}

#[test]
fn errors_no_ops_and_weight_io() {
    let f = masked_fixture();
    let d = data(&f);
    let mut m = model(&f, false);
    let w0 = m.weights();
    let mut sgd = Sgd::keras();
    let kind = |r: Result<History>| r.unwrap_err().kind();

    // Shapes and arguments, checked before any step: nothing changes.
    fn opts(o: &mut Sgd) -> FitOptions<'_> {
        FitOptions::new(Loss::MaskedMae, o).epochs(2).batch_size(15)
    }
    assert_eq!(kind(m.fit(&d.x, &d.y, opts(&mut sgd).batch_size(0))), ErrorKind::BadArgument);
    assert_eq!(kind(m.fit(&d.x, &d.y[1..], opts(&mut sgd))), ErrorKind::BadShape);
    assert_eq!(kind(m.fit(&d.x, &d.y, opts(&mut sgd).validation(&d.x_val, &d.y_val[1..]))), ErrorKind::BadShape);
    let wrong_features = MaskedSeq::dense(vec![0.5; 2 * 30 * 4], 2, 30, 4).unwrap();
    assert_eq!(kind(m.fit(&wrong_features, &[0.0; 2 * 25], opts(&mut sgd))), ErrorKind::BadShape);
    let empty = MaskedSeq::dense(vec![], 0, 30, 5).unwrap();
    assert_eq!(kind(m.fit(&empty, &[], opts(&mut sgd))), ErrorKind::BadArgument);
    assert_eq!(m.evaluate(&d.x_val, &d.y_val, 0, Loss::MaskedMae, 1).unwrap_err().kind(), ErrorKind::BadArgument);
    assert_eq!(m.evaluate(&d.x_val, &d.y_val[2..], 4, Loss::MaskedMae, 1).unwrap_err().kind(), ErrorKind::BadShape);
    // epochs 0: a no-op.
    let h = m.fit(&d.x, &d.y, opts(&mut sgd).epochs(0)).unwrap();
    assert_eq!(h, History::default());
    assert_eq!(m.weights(), w0);
    assert_eq!(sgd.iterations(), 0);

    // set_weights: wrong count or length is an error and changes nothing.
    let mut bad = w0.clone();
    bad.pop();
    assert_eq!(m.set_weights(&bad).unwrap_err().kind(), ErrorKind::BadShape);
    let mut bad = w0.clone();
    bad[4].push(0.0);
    assert_eq!(m.set_weights(&bad).unwrap_err().kind(), ErrorKind::BadShape);
    assert_eq!(m.weights(), w0);

    // evaluate: per-batch losses weighted by samples, so the batch size matters with a masked loss.
    let whole = m.evaluate(&d.x, &d.y, 40, Loss::MaskedMae, 1).unwrap();
    let batched = m.evaluate(&d.x, &d.y, 15, Loss::MaskedMae, 1).unwrap();
    let manual: f64 = [(0, 15), (15, 30), (30, 40)]
        .iter()
        .map(|&(lo, hi)| {
            let out = m.predict(&d.x.slice_batch(lo, hi).unwrap(), 1).unwrap();
            Loss::MaskedMae.value(&out, &d.y[lo * 25..hi * 25]).unwrap().value * (hi - lo) as f64
        })
        .sum::<f64>()
        / 40.0;
    assert_eq!(batched, manual);
    assert_ne!(whole, batched);

    // Keras and PyTorch layouts round-trip, and train a model that predicts the same bits.
    let before = m.predict(&d.x_val, 1).unwrap().to_vec();
    let pt: Vec<PytorchLayout<f32>> = m.pytorch_weights();
    assert_eq!(pt.len(), 3);
    assert_eq!((pt[0].weight_ih.len(), pt[0].weight_hh.len(), pt[0].bias_ih.len()), (32 * 5, 32 * 8, 32));
    assert!(pt.iter().all(|p| p.bias_hh.iter().all(|&v| v == 0.0)));
    let mut other = model(&f, false);
    assert_eq!(other.set_weights::<Vec<f32>>(&[]).unwrap_err().kind(), ErrorKind::BadShape);
    other.set_pytorch_weights(&pt).unwrap();
    assert_eq!(bits(&other.weights()), bits(&w0));
    assert_eq!(other.set_pytorch_weights(&pt[..2]).unwrap_err().kind(), ErrorKind::BadShape);
    other.set_weights(&w0).unwrap();
    assert_eq!(other.predict(&d.x_val, 1).unwrap().to_vec(), before);
}
