//! Keras `Bidirectional(GRU(...))` and `Bidirectional(SimpleRNN(...))` against Keras 3 itself (forward:
//! `tools/fixtures/keras_gru_rnn_golden.py`; float64 gradients: `keras_gru_rnn_bidi_grad_golden.py`) and
//! against their plain references (bit for bit) with every merge mode, both outputs, masks of every shape
//! and initial states, on 1 and 2 threads; the training forward's outputs; and the errors of wrapping
//! mismatched layers.

use crate::common::{fixtures, floats, mask, opt_floats, usize_of, FRAMEWORK_TOL};
use masked_rnn::bidirectional::{
    BidirectionalGrads, BidirectionalState, BidirectionalTape, BidirectionalUpstream, KerasBidirectional, MergeMode,
};
use masked_rnn::fuzzing::close;
use masked_rnn::keras::Recurrent;
use masked_rnn::{
    Activation, ErrorKind, GruWeights, HardSigmoidFlavor, KerasGrads, KerasGru, KerasGruOptions, KerasLstm,
    KerasLstmOptions, KerasRnnOptions, KerasSimpleRnn, LstmWeights, RnnWeights, SeqView,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// The layer of fixture `f` (its options) with the weights in `w` (`kernel`, `recurrent_kernel`, `bias`).
fn layer(f: &Value, w: &Value, i: usize, h: usize) -> Recurrent {
    let flavor = match f["hard_sigmoid_flavor"].as_str() {
        Some("keras2") => HardSigmoidFlavor::Keras2,
        _ => HardSigmoidFlavor::Keras3,
    };
    let act = |k: &str| Activation::from_keras_name(f[k].as_str().expect("name"), flavor).expect("activation");
    let (k, r, bias) = (floats(&w["kernel"]), floats(&w["recurrent_kernel"]), opt_floats(&w["bias"]));
    if f["kind"].as_str().unwrap().starts_with("keras_gru") {
        let reset_after = f["reset_after"].as_bool().unwrap();
        let w = GruWeights::from_keras(i, h, &k, &r, bias.as_deref(), reset_after).unwrap();
        let options = KerasGruOptions::default()
            .reset_after(reset_after)
            .activation(act("activation"))
            .recurrent_activation(act("recurrent_activation"));
        KerasGru::new(w, options).unwrap().into()
    } else {
        let w = RnnWeights::from_keras(i, h, &k, &r, bias.as_deref()).unwrap();
        KerasSimpleRnn::new(w, KerasRnnOptions::default().activation(act("activation"))).unwrap().into()
    }
}

/// Every forward fixture of `dir` within the framework tolerance on 1 and 2 threads (valid steps only,
/// twice: one per direction) and on the reference; returns the outputs compared.
fn bidi_fixtures_match(dir: &str, kind: &str) -> usize {
    let mut compared = 0;
    for (name, f) in fixtures(dir, kind) {
        let (b, t, i, h) = (usize_of(&f["batch"]), usize_of(&f["time"]), usize_of(&f["input"]), usize_of(&f["hidden"]));
        let merge = MergeMode::from_keras_name(f["merge_mode"].as_str()).unwrap();
        let rs = f["return_sequences"].as_bool().unwrap();
        let (fw, bw) = (layer(&f, &f["forward"], i, h), layer(&f, &f["backward"], i, h));
        let bidi = KerasBidirectional::from_layers(fw, bw, merge, rs).unwrap();
        assert_eq!((bidi.merge_mode(), bidi.return_sequences()), (merge, rs));
        let view = SeqView::from_mask(&mask(&f["mask"]), b, t).unwrap();
        let states: Option<[Vec<f32>; 2]> =
            (!f["initial_state"].is_null()).then(|| ["h_f", "h_b"].map(|k| floats(&f["initial_state"][k])));
        let init = states.as_ref().map(|s| BidirectionalState { h_f: &s[0], c_f: &[], h_b: &s[1], c_b: &[] });
        let x = floats(&f["x"]);
        let reference = bidi.forward_reference(&x, &view, init).unwrap();
        for threads in [1, 2] {
            let (got, stats) = bidi.forward(&x, &view, init, threads).unwrap();
            assert_eq!(stats.steps_computed, 2 * view.total_valid(), "{name}");
            assert!(got.c_f.is_empty() && got.c_b.is_empty(), "{name}: no c");
            let outs = [("y", &got.y), ("y_forward", &got.y_forward), ("y_backward", &got.y_backward)];
            for (k, v) in outs.into_iter().chain([("h_f", &got.h_f), ("h_b", &got.h_b)]) {
                match opt_floats(&f[k]) {
                    Some(want) => {
                        close(&format!("{name} {k}"), v, &want, FRAMEWORK_TOL).unwrap();
                        compared += 1;
                    }
                    None => assert!(v.is_empty(), "{name}: {k} should be absent"),
                }
            }
            assert_eq!(got, reference, "{name}: fast path vs reference, threads {threads}");
            let mut tape = BidirectionalTape::new();
            let (trained, _) = bidi.forward_train(&x, &view, init, &mut tape, threads).unwrap();
            assert_eq!(trained, got, "{name}: training forward");
        }
    }
    compared
}

#[test]
fn bidirectional_gru_fixtures_match_keras() {
    assert!(bidi_fixtures_match("keras_gru", "keras_gru_bidi") >= 7 * 2 * 3);
}

#[test]
fn bidirectional_simple_rnn_fixtures_match_keras() {
    assert!(bidi_fixtures_match("keras_rnn", "keras_rnn_bidi") >= 7 * 2 * 3);
}

/// Largest `|got - want| / max(1, |want|)`; panics past 1e-4.
fn check_grad(what: &str, got: &[f32], want: &Value, worst: &mut f64) {
    let want: Vec<f64> = want.as_array().expect(what).iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let err = (f64::from(g) - w).abs() / w.abs().max(1.0);
        assert!(err <= 1e-4, "{what}[{k}]: {g} vs Keras {w}");
        *worst = worst.max(err);
    }
}

/// Each direction's parameter and initial-state gradient buffers: kernel, recurrent kernel, bias, h0.
type DirGrads = [Vec<f32>; 4];

/// `g` as a direction's gradient outputs.
fn grads(g: &mut DirGrads) -> KerasGrads<'_> {
    let [k, r, bias, h0] = g;
    KerasGrads {
        d_kernel: Some(k),
        d_recurrent_kernel: Some(r),
        d_bias: Some(bias),
        d_initial_h: Some(h0),
        ..Default::default()
    }
}

/// The gradients of every Bidirectional fixture (dx, each direction's kernel, recurrent kernel, bias and
/// initial state) within 1e-4 of Keras' float64 `GradientTape`, bitwise the same on 1 and 2 threads;
/// returns the tensors compared.
fn bidi_gradients_match(kind: &str) -> usize {
    let (mut compared, mut worst) = (0, 0.0f64);
    for (name, f) in fixtures("keras_bidi_grad_gru_rnn", kind) {
        let (b, t, i, h) = (usize_of(&f["batch"]), usize_of(&f["time"]), usize_of(&f["input"]), usize_of(&f["hidden"]));
        let merge = MergeMode::from_keras_name(f["merge_mode"].as_str()).unwrap();
        let rs = f["return_sequences"].as_bool().unwrap();
        let (fw, bw) = (layer(&f, &f["forward"], i, h), layer(&f, &f["backward"], i, h));
        let lens = fw.keras_weight_lens();
        let bidi = KerasBidirectional::from_layers(fw, bw, merge, rs).unwrap();
        let view = SeqView::from_mask(&mask(&f["mask"]), b, t).unwrap();
        let states: Option<[Vec<f32>; 2]> =
            (!f["initial_state"].is_null()).then(|| ["h_f", "h_b"].map(|k| floats(&f["initial_state"][k])));
        let init = states.as_ref().map(|s| BidirectionalState { h_f: &s[0], c_f: &[], h_b: &s[1], c_b: &[] });
        let x = floats(&f["x"]);
        let ups: Vec<Option<Vec<f32>>> =
            ["dy", "dy_forward", "dy_backward", "d_h_f", "d_h_b"].iter().map(|k| opt_floats(&f[*k])).collect();
        let up = BidirectionalUpstream {
            dy: ups[0].as_deref(),
            dy_forward: ups[1].as_deref(),
            dy_backward: ups[2].as_deref(),
            d_h_f: ups[3].as_deref(),
            d_h_b: ups[4].as_deref(),
            ..Default::default()
        };
        let run = |threads: usize| -> (Vec<f32>, [DirGrads; 2]) {
            let mut tape = BidirectionalTape::new();
            bidi.forward_train(&x, &view, init, &mut tape, threads).unwrap();
            let mut dx = vec![f32::NAN; x.len()];
            let fresh =
                || [vec![f32::NAN; lens[0]], vec![f32::NAN; lens[1]], vec![f32::NAN; lens[2]], vec![f32::NAN; b * h]];
            let (mut gf, mut gb) = (fresh(), fresh());
            let g = BidirectionalGrads { dx: Some(&mut dx), forward: grads(&mut gf), backward: grads(&mut gb) };
            let stats = bidi.backward(&x, &view, init, &tape, up, g, threads).unwrap();
            assert_eq!(stats.steps_computed, 2 * view.total_valid(), "{name}: steps");
            (dx, [gf, gb])
        };
        let (dx, dirs) = run(1);
        let (dx2, dirs2) = run(2);
        assert_eq!(bits(&dx), bits(&dx2), "{name}: dx on 2 threads");
        assert_eq!(dirs, dirs2, "{name}: gradients on 2 threads");
        check_grad(&format!("{name} dx"), &dx, &f["dx"], &mut worst);
        compared += 1;
        for (d, (key, g)) in ["d_forward", "d_backward"].iter().zip(&dirs).enumerate() {
            let want = &f[*key];
            check_grad(&format!("{name} {key} kernel"), &g[0], &want["kernel"], &mut worst);
            check_grad(&format!("{name} {key} recurrent_kernel"), &g[1], &want["recurrent_kernel"], &mut worst);
            compared += 2;
            if !want["bias"].is_null() {
                check_grad(&format!("{name} {key} bias"), &g[2], &want["bias"], &mut worst);
                compared += 1;
            }
            if init.is_some() {
                check_grad(&format!("{name} {key} initial h"), &g[3], &f["d_initial_state"][d], &mut worst);
                compared += 1;
            }
        }
    }
    println!("{kind}: worst gradient error {worst:.2e}");
    compared
}

#[test]
fn bidirectional_gru_gradients_match_keras() {
    assert!(bidi_gradients_match("keras_gru_bidi_grad") >= 10 * 5);
}

#[test]
fn bidirectional_simple_rnn_gradients_match_keras() {
    assert!(bidi_gradients_match("keras_rnn_bidi_grad") >= 8 * 5);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn uniform(rng: &mut StdRng, n: usize, s: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-s..s)).collect()
}

/// A random layer of `kind` ("gru" with `reset_after`, "rnn"), `I -> H`.
fn random_layer(rng: &mut StdRng, kind: &str, reset_after: bool, i: usize, h: usize) -> Recurrent {
    let s = 0.7;
    if kind == "gru" {
        let bias = uniform(rng, if reset_after { 6 * h } else { 3 * h }, s);
        let w = GruWeights::from_keras(
            i,
            h,
            &uniform(rng, i * 3 * h, s),
            &uniform(rng, h * 3 * h, s),
            Some(&bias),
            reset_after,
        )
        .unwrap();
        KerasGru::new(w, KerasGruOptions::default().reset_after(reset_after)).unwrap().into()
    } else {
        let w =
            RnnWeights::from_keras(i, h, &uniform(rng, i * h, s), &uniform(rng, h * h, s), Some(&uniform(rng, h, s)))
                .unwrap();
        KerasSimpleRnn::new(w, KerasRnnOptions::default()).unwrap().into()
    }
}

/// Random layers, masks (holes, pre-padding, empty rows), every merge mode and both outputs: the fast
/// path equals the reference bit for bit on 1 and 2 threads, computing each valid step once per direction.
#[test]
fn bidirectional_equals_reference_on_random_layers() {
    let mut rng = StdRng::seed_from_u64(77);
    let merges = [MergeMode::Concat, MergeMode::Sum, MergeMode::Ave, MergeMode::Mul, MergeMode::None];
    for n in 0..60 {
        let kind = if n % 3 == 2 { "rnn" } else { "gru" };
        let (b, t, i, h) =
            (rng.random_range(1..6), rng.random_range(1..9), rng.random_range(1..6), [1, 3, 8, 9, 17][n % 5]);
        let reset_after = rng.random_bool(0.5);
        let (fw, bw) =
            (random_layer(&mut rng, kind, reset_after, i, h), random_layer(&mut rng, kind, reset_after, i, h));
        let merge = merges[n % merges.len()];
        let rs = rng.random_bool(0.5);
        let bidi = KerasBidirectional::from_layers(fw, bw, merge, rs).unwrap();
        let m: Vec<bool> = (0..b * t).map(|_| rng.random_bool(0.7)).collect();
        let view = SeqView::from_mask(&m, b, t).unwrap();
        let x = uniform(&mut rng, b * t * i, 1.5);
        let states = [uniform(&mut rng, b * h, 1.0), uniform(&mut rng, b * h, 1.0)];
        let init =
            rng.random_bool(0.5).then(|| BidirectionalState { h_f: &states[0], c_f: &[], h_b: &states[1], c_b: &[] });
        let what = format!("case {n}: {kind} reset_after {reset_after} {merge:?} rs {rs} b {b} t {t} i {i} h {h}");
        let want = bidi.forward_reference(&x, &view, init).unwrap();
        for threads in [1, 2] {
            let (got, stats) = bidi.forward(&x, &view, init, threads).unwrap();
            assert_eq!(stats.steps_computed, 2 * view.total_valid(), "{what}");
            assert_eq!(got, want, "{what}: threads {threads}");
        }
    }
}

/// Wrapping refuses layers that are not copies of one another, and `c` states for cells without one.
#[test]
fn wrapping_errors() {
    let mut rng = StdRng::seed_from_u64(5);
    let (i, h) = (3, 4);
    let gru = random_layer(&mut rng, "gru", true, i, h);
    let kind = |r: Result<KerasBidirectional, masked_rnn::Error>| r.unwrap_err().kind();
    let other_reset = random_layer(&mut rng, "gru", false, i, h);
    let wider = random_layer(&mut rng, "gru", true, i, h + 1);
    let rnn = random_layer(&mut rng, "rnn", true, i, h);
    let lstm: Recurrent = KerasLstm::new(
        LstmWeights::from_keras(i, h, &uniform(&mut rng, i * 4 * h, 0.5), &uniform(&mut rng, h * 4 * h, 0.5), None)
            .unwrap(),
        KerasLstmOptions::default(),
    )
    .unwrap()
    .into();
    for other in [other_reset, wider, rnn, lstm] {
        let what = format!("GRU with {}", other.name());
        assert_eq!(
            kind(KerasBidirectional::from_layers(gru.clone(), other, MergeMode::Concat, true)),
            ErrorKind::BadArgument,
            "{what}"
        );
    }
    let bidi = KerasBidirectional::from_layers(gru.clone(), gru, MergeMode::Sum, true).unwrap();
    let (b, t) = (2, 3);
    let view = SeqView::from_lengths(&[3, 1], t, masked_rnn::Padding::Post).unwrap();
    let x = vec![0.1; b * t * i];
    let hs = vec![0.0; b * h];
    let with_c = BidirectionalState { h_f: &hs, c_f: &hs, h_b: &hs, c_b: &hs };
    assert_eq!(bidi.forward(&x, &view, Some(with_c), 1).unwrap_err().kind(), ErrorKind::BadShape);
    let mut c = vec![0.0; b * h];
    let out = masked_rnn::bidirectional::BidirectionalOutputs { c_f: Some(&mut c), ..Default::default() };
    assert_eq!(
        bidi.forward_in(&x, &view, None, out, 1, &mut masked_rnn::Workspace::new()).unwrap_err().kind(),
        ErrorKind::BadArgument
    );
}
