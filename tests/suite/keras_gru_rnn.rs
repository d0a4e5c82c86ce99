//! The Keras `GRU` and `SimpleRNN` layers against Keras 3 itself (`tools/fixtures/keras_gru_rnn_golden.py`)
//! and against their plain references (every step computed, the mask selects; bit for bit in each
//! backend's rounding) with masks of every shape, both directions, both fills, initial states, on 1 and 2
//! threads; and their errors.

use crate::common::{fixtures, floats, mask, opt_floats, usize_of, FRAMEWORK_TOL};
use masked_rnn::fuzzing::close;
use masked_rnn::{
    kernel, Activation, ErrorKind, GruWeights, HardSigmoidFlavor, KerasGru, KerasGruOptions, KerasOutputs,
    KerasRnnOptions, KerasSimpleRnn, RnnWeights, SeqView,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// A forward fixture's layer as `forward_all` of `(x, view, h0, threads)`.
type Run = Box<dyn Fn(&[f32], &SeqView, Option<&[f32]>, usize) -> (masked_rnn::reference::KerasResult, usize)>;

fn fixture_layer(f: &Value) -> Run {
    let (i, h) = (usize_of(&f["input"]), usize_of(&f["hidden"]));
    let flavor = match f["hard_sigmoid_flavor"].as_str() {
        Some("keras2") => HardSigmoidFlavor::Keras2,
        _ => HardSigmoidFlavor::Keras3,
    };
    let act = |k: &str| Activation::from_keras_name(f[k].as_str().expect("name"), flavor).expect("activation");
    let (k, r, bias) = (floats(&f["kernel"]), floats(&f["recurrent_kernel"]), opt_floats(&f["bias"]));
    let (back, zero) = (f["go_backwards"].as_bool().unwrap(), f["zero_output_for_mask"].as_bool().unwrap());
    if f["kind"] == "keras_gru" {
        let reset_after = f["reset_after"].as_bool().unwrap();
        let w = GruWeights::from_keras(i, h, &k, &r, bias.as_deref(), reset_after).unwrap();
        let options = KerasGruOptions::default()
            .reset_after(reset_after)
            .activation(act("activation"))
            .recurrent_activation(act("recurrent_activation"))
            .go_backwards(back)
            .zero_output_for_mask(zero);
        let layer = KerasGru::new(w, options).unwrap();
        Box::new(move |x, view, h0, threads| {
            let (got, stats) = layer.forward_all(x, view, h0, threads).unwrap();
            (got, stats.steps_computed)
        })
    } else {
        let w = RnnWeights::from_keras(i, h, &k, &r, bias.as_deref()).unwrap();
        let options =
            KerasRnnOptions::default().activation(act("activation")).go_backwards(back).zero_output_for_mask(zero);
        let layer = KerasSimpleRnn::new(w, options).unwrap();
        Box::new(move |x, view, h0, threads| {
            let (got, stats) = layer.forward_all(x, view, h0, threads).unwrap();
            (got, stats.steps_computed)
        })
    }
}

/// Every forward fixture of `dir` within the framework tolerance on 1 and 2 threads, valid steps only;
/// returns the outputs compared.
fn keras_fixtures_match(dir: &str, kind: &str) -> usize {
    let mut compared = 0;
    for (name, f) in fixtures(dir, kind) {
        let (b, t) = (usize_of(&f["batch"]), usize_of(&f["time"]));
        let view = SeqView::from_mask(&mask(&f["mask"]), b, t).unwrap();
        let (x, h0) = (floats(&f["x"]), opt_floats(&f["initial_h"]));
        let run = fixture_layer(&f);
        for threads in [1, 2] {
            let (got, steps) = run(&x, &view, h0.as_deref(), threads);
            assert_eq!(steps, view.total_valid(), "{name}: steps computed");
            for (what, got) in [("y", &got.y), ("last_output", &got.last_output), ("h_n", &got.h_n)] {
                close(&format!("{name} {what}"), got, &floats(&f[what]), FRAMEWORK_TOL).unwrap();
                compared += 1;
            }
        }
    }
    compared
}

#[test]
fn gru_fixtures_match_keras() {
    assert!(keras_fixtures_match("keras_gru", "keras_gru") >= 90);
}

#[test]
fn simple_rnn_fixtures_match_keras() {
    assert!(keras_fixtures_match("keras_rnn", "keras_rnn") >= 90);
}

fn uniform(rng: &mut StdRng, n: usize, s: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-s..s)).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// A mask mixing all-valid, post-padded, pre-padded, holed and empty sequences.
fn random_mask(rng: &mut StdRng, b: usize, t: usize) -> Vec<bool> {
    (0..b)
        .flat_map(|_| {
            let (kind, len) = (rng.random_range(0..5), rng.random_range(0..=t));
            (0..t)
                .map(|s| match kind {
                    0 => true,
                    1 => s < len,
                    2 => s >= t - len,
                    3 => rng.random_bool(0.6),
                    _ => false,
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

const ACTS: [Activation; 4] =
    [Activation::Tanh, Activation::Relu, Activation::Sigmoid, Activation::HARD_SIGMOID_KERAS3];

/// Every output of `run(threads)` equals `reference` bit for bit on 1 and 2 threads, valid steps only.
fn agree(
    run: &dyn Fn(usize) -> (masked_rnn::reference::KerasResult, usize),
    reference: &masked_rnn::reference::KerasResult,
    valid: usize,
    what: &str,
) {
    for threads in [1, 2] {
        let (got, steps) = run(threads);
        assert_eq!(steps, valid, "{what}: steps");
        assert_eq!(bits(&got.y), bits(&reference.y), "y: {what} threads {threads}");
        assert_eq!(bits(&got.last_output), bits(&reference.last_output), "last_output: {what} threads {threads}");
        assert_eq!(bits(&got.h_n), bits(&reference.h_n), "h_n: {what} threads {threads}");
        assert!(got.c_n.is_empty() && reference.c_n.is_empty());
    }
}

#[test]
fn gru_equals_reference_with_every_mask_and_option() {
    let mut rng = StdRng::seed_from_u64(41);
    for case in 0..150 {
        let (b, t, i) = (rng.random_range(1..9), rng.random_range(1..10), rng.random_range(1..10));
        let h = [1, 5, 8, 9, 16, 17, 33][case % 7];
        let reset_after = case % 2 == 0;
        let s = 1.0 / (h as f32).sqrt();
        let (k, r) = (uniform(&mut rng, i * 3 * h, s), uniform(&mut rng, h * 3 * h, s));
        let bias = uniform(&mut rng, if reset_after { 6 * h } else { 3 * h }, 0.5);
        let w = GruWeights::from_keras(i, h, &k, &r, rng.random_bool(0.8).then_some(&bias[..]), reset_after).unwrap();
        let options = KerasGruOptions::default()
            .reset_after(reset_after)
            .activation(if rng.random_bool(0.7) { Activation::Tanh } else { ACTS[rng.random_range(0..4)] })
            .recurrent_activation(if rng.random_bool(0.7) { Activation::Sigmoid } else { ACTS[rng.random_range(0..4)] })
            .go_backwards(rng.random_bool(0.5))
            .zero_output_for_mask(rng.random_bool(0.5));
        let mask = random_mask(&mut rng, b, t);
        let view = SeqView::from_mask(&mask, b, t).unwrap();
        let x = uniform(&mut rng, b * t * i, 1.0);
        let h0 = rng.random_bool(0.5).then(|| uniform(&mut rng, b * h, 1.0));
        for backend in kernel::available() {
            let layer = KerasGru::with_backend(w.clone(), options, backend).unwrap();
            let reference = layer.forward_reference(&x, &view, h0.as_deref()).unwrap();
            let run = |threads| {
                let (got, stats) = layer.forward_all(&x, &view, h0.as_deref(), threads).unwrap();
                (got, stats.steps_computed)
            };
            agree(&run, &reference, view.total_valid(), &format!("case {case} {} {options:?}", backend.name));
        }
    }
}

#[test]
fn simple_rnn_equals_reference_with_every_mask_and_option() {
    let mut rng = StdRng::seed_from_u64(42);
    for case in 0..150 {
        let (b, t, i) = (rng.random_range(1..9), rng.random_range(1..10), rng.random_range(1..10));
        let h = [1, 5, 8, 9, 16, 17, 33][case % 7];
        let s = 1.0 / (h as f32).sqrt();
        let (k, r, bias) = (uniform(&mut rng, i * h, s), uniform(&mut rng, h * h, s), uniform(&mut rng, h, 0.5));
        let w = RnnWeights::from_keras(i, h, &k, &r, Some(&bias)).unwrap();
        let options = KerasRnnOptions::default()
            .activation(ACTS[case % 3])
            .go_backwards(rng.random_bool(0.5))
            .zero_output_for_mask(rng.random_bool(0.5));
        let mask = random_mask(&mut rng, b, t);
        let view = SeqView::from_mask(&mask, b, t).unwrap();
        let x = uniform(&mut rng, b * t * i, 1.0);
        let h0 = rng.random_bool(0.5).then(|| uniform(&mut rng, b * h, 1.0));
        for backend in kernel::available() {
            let layer = KerasSimpleRnn::with_backend(w.clone(), options, backend).unwrap();
            let reference = layer.forward_reference(&x, &view, h0.as_deref()).unwrap();
            let run = |threads| {
                let (got, stats) = layer.forward_all(&x, &view, h0.as_deref(), threads).unwrap();
                (got, stats.steps_computed)
            };
            agree(&run, &reference, view.total_valid(), &format!("case {case} {} {options:?}", backend.name));
        }
    }
}

/// Keras' masked-step semantics, spelled out on one sequence with a hole: the output at a masked step
/// repeats the previous output (zeros with `zero_output_for_mask`), the state passes through unchanged,
/// and a sequence without valid steps keeps its initial state.
#[test]
fn masked_steps_carry_as_keras_does() {
    let (i, h, t) = (2, 3, 4);
    let mut rng = StdRng::seed_from_u64(43);
    let w = RnnWeights::from_keras(i, h, &uniform(&mut rng, i * h, 0.5), &uniform(&mut rng, h * h, 0.5), None).unwrap();
    let x = uniform(&mut rng, 2 * t * i, 1.0);
    let mask = [true, false, true, false, false, false, false, false];
    let view = SeqView::from_mask(&mask, 2, t).unwrap();
    let h0 = uniform(&mut rng, 2 * h, 1.0);
    for zero in [false, true] {
        let layer = KerasSimpleRnn::new(w.clone(), KerasRnnOptions::default().zero_output_for_mask(zero)).unwrap();
        let (got, _) = layer.forward_all(&x, &view, Some(&h0), 1).unwrap();
        let y = |s: usize, tt: usize| &got.y[(s * t + tt) * h..(s * t + tt + 1) * h];
        let carried = if zero { vec![0.0; h] } else { y(0, 0).to_vec() };
        assert_eq!(y(0, 1), &carried[..]);
        let last = if zero { vec![0.0; h] } else { y(0, 2).to_vec() };
        assert_eq!(y(0, 3), &last[..]);
        assert_eq!(&got.last_output[..h], &last[..]);
        assert_eq!(&got.h_n[..h], y(0, 2));
        // The empty sequence: zeros out, its initial state as the state.
        assert!(got.y[t * h..].iter().all(|&v| v == 0.0));
        assert_eq!(&got.h_n[h..], &h0[h..]);
    }
}

#[test]
fn bad_inputs_are_errors() {
    let w = GruWeights::from_keras(2, 3, &[0.0; 18], &[0.0; 27], None, true).unwrap();
    let layer = KerasGru::new(w, KerasGruOptions::default()).unwrap();
    let view = SeqView::full(2, 4);
    let x = vec![0.0; 2 * 4 * 2];
    let kind = |e: masked_rnn::Error| e.kind();
    assert_eq!(kind(layer.forward_all(&x[1..], &view, None, 1).unwrap_err()), ErrorKind::BadShape);
    assert_eq!(kind(layer.forward_all(&x, &view, Some(&[0.0; 5]), 1).unwrap_err()), ErrorKind::BadShape);
    let mut c_n = vec![0.0; 6];
    let out = KerasOutputs { c_n: Some(&mut c_n), ..Default::default() };
    assert_eq!(kind(layer.forward(&x, &view, None, out, 1).unwrap_err()), ErrorKind::BadArgument);
    let mut y = vec![0.0; 7];
    let out = KerasOutputs { y: Some(&mut y), ..Default::default() };
    assert_eq!(kind(layer.forward(&x, &view, None, out, 1).unwrap_err()), ErrorKind::BadShape);
    assert_eq!(
        kind(GruWeights::from_keras(2, 3, &[0.0; 18], &[0.0; 27], Some(&[0.0; 9]), true).unwrap_err()),
        ErrorKind::BadShape
    );
}
