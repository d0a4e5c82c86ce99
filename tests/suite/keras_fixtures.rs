//! Golden fixtures from real Keras 3 (tools/fixtures/keras_golden.py): the fast path, the reference, the
//! Masking layer and the seed model with its sliced, masked loss must reproduce Keras within 1e-5.

use crate::common::{fixtures, float, floats, keras_layer, mask, usize_of, FRAMEWORK_TOL as KERAS_TOL};
use masked_rnn::fuzzing::{close, same_bits};
use masked_rnn::{
    masked_mae, masked_mse, unmasked_mae, InitialState, KerasLstm, KerasLstmOptions, LstmWeights, MaskValueMode,
    MaskedSeq, SeqView, Sequential,
};
use serde_json::Value;

#[test]
fn lstm_layers_match_keras() {
    let cases = fixtures("keras", "lstm");
    assert!(cases.len() >= 15, "expected the full Keras case list, found {}", cases.len());
    for (name, f) in cases {
        let (b, t) = (usize_of(&f["batch"]), usize_of(&f["time"]));
        let layer = keras_layer(&f);
        let x = floats(&f["x"]);
        let view = SeqView::from_mask(&mask(&f["mask"]), b, t).expect("view");
        let init_vals = (!f["initial_h"].is_null()).then(|| (floats(&f["initial_h"]), floats(&f["initial_c"])));
        let init = init_vals.as_ref().map(|(h, c)| InitialState { h, c });
        for threads in [1, 2] {
            let (got, stats) = layer.forward_all(&x, &view, init, threads).expect("forward");
            assert_eq!(stats.steps_computed, view.total_valid(), "{name}: padded steps computed");
            for (field, vals) in
                [("y", &got.y), ("last_output", &got.last_output), ("h_n", &got.h_n), ("c_n", &got.c_n)]
            {
                close(&format!("{name}: {field}"), vals, &floats(&f[field]), KERAS_TOL).unwrap();
            }
        }
        let reference = layer.forward_reference(&x, &view, init).expect("reference");
        close(&format!("{name}: reference y"), &reference.y, &floats(&f["y"]), KERAS_TOL).unwrap();
        close(&format!("{name}: reference h_n"), &reference.h_n, &floats(&f["h_n"]), KERAS_TOL).unwrap();
    }
}

#[test]
fn hard_sigmoid_flavors_are_distinguished() {
    // The Keras 2 fixture computed with the Keras 3 formula must fail: the flavours really differ.
    let (_, f) = fixtures("keras", "lstm").into_iter().find(|(n, _)| n == "hard_sigmoid_keras2").unwrap();
    let mut wrong = f.clone();
    wrong["hard_sigmoid_flavor"] = Value::String("keras3".into());
    let (b, t) = (usize_of(&f["batch"]), usize_of(&f["time"]));
    let view = SeqView::from_mask(&mask(&f["mask"]), b, t).unwrap();
    let (got, _) = keras_layer(&wrong).forward_all(&floats(&f["x"]), &view, None, 1).unwrap();
    assert!(close("y", &got.y, &floats(&f["y"]), KERAS_TOL).is_err());
}

#[test]
fn masking_matches_keras() {
    for (name, f) in fixtures("keras", "masking") {
        let (b, t, feat) = (usize_of(&f["batch"]), usize_of(&f["time"]), usize_of(&f["features"]));
        let x = floats(&f["x"]);
        let mv = float(&f["mask_value"]);
        let expected = mask(&f["mask"]);
        let view = SeqView::from_values(&x, b, t, feat, mv, MaskValueMode::Ieee).unwrap();
        assert_eq!(view.to_mask(), expected, "{name}");
        // The layer's output, sign bits included (+0.0 at masked steps).
        let out = Sequential::new().masking(mv, MaskValueMode::Ieee);
        let y = out.forward(&MaskedSeq::dense(x, b, t, feat).unwrap(), 1).unwrap().0.to_vec();
        same_bits(&format!("{name}: masking output"), &y, &floats(&f["y"])).unwrap();
    }
}

struct Seed {
    model: Sequential,
    input: MaskedSeq,
    targets: Vec<f32>,
    f: Value,
}

fn seed(name: &str, masking: (f32, MaskValueMode)) -> Seed {
    let (_, f) = fixtures("keras", "seed_model").into_iter().find(|(n, _)| n == name).unwrap();
    let (b, t, i) = (usize_of(&f["batch"]), usize_of(&f["time"]), usize_of(&f["input"]));
    let mut model = Sequential::new().masking(masking.0, masking.1);
    for l in f["layers"].as_array().unwrap() {
        let w = LstmWeights::from_keras(
            usize_of(&l["input"]),
            usize_of(&l["hidden"]),
            &floats(&l["kernel"]),
            &floats(&l["recurrent_kernel"]),
            Some(&floats(&l["bias"])),
        )
        .unwrap();
        model = model.lstm(KerasLstm::new(w, KerasLstmOptions::default()).unwrap());
    }
    model = model.time_slice(usize_of(&f["slice_start"]), None);
    let input = MaskedSeq::dense(floats(&f["x"]), b, t, i).unwrap();
    Seed { model, input, targets: floats(&f["targets"]), f }
}

#[test]
fn seed_model_sliced_masked_loss_matches_keras() {
    let s = seed("seed_model", (0.0, MaskValueMode::Ieee));
    let (out, stats) = s.model.forward(&s.input, 2).unwrap();
    close("seed y", &out.to_vec(), &floats(&s.f["y"]), KERAS_TOL).unwrap();
    let lengths: Vec<usize> = s.f["lengths"].as_array().unwrap().iter().map(usize_of).collect();
    assert_eq!(stats.steps_computed, 3 * lengths.iter().sum::<usize>(), "three layers, valid steps only");
    let mae = masked_mae(&out, &s.targets).unwrap();
    let mse = masked_mse(&out, &s.targets).unwrap();
    let bug = unmasked_mae(&out.drop_mask(), &s.targets).unwrap();
    let n = usize_of(&s.f["slice_start"]);
    assert_eq!(mae.count, lengths.iter().map(|&l| l.saturating_sub(n)).sum::<usize>());
    for (what, got, want) in [
        ("masked MAE", mae.value, &s.f["loss_masked_mae"]),
        ("masked MSE", mse.value, &s.f["loss_masked_mse"]),
        ("unmasked MAE", bug.value, &s.f["loss_unmasked_mae"]),
    ] {
        let want = want.as_f64().unwrap();
        assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{what}: {got} vs Keras {want}");
    }
    // The reference stack agrees too.
    let reference = s.model.forward_reference(&s.input).unwrap();
    same_bits("seed reference vs fast path", &reference.to_vec(), &out.to_vec()).unwrap();
}

#[test]
fn seed_model_nan_padding() {
    // Keras: Masking(0.0) does not mask NaN rows, so every loss is NaN.
    let ieee = seed("seed_model_nan_padding", (0.0, MaskValueMode::Ieee));
    assert!(ieee.f["loss_masked_mae"].is_null());
    let (out, _) = ieee.model.forward(&ieee.input, 1).unwrap();
    assert!(masked_mae(&out, &ieee.targets).unwrap().value.is_nan());
    // NaN-aware masking: the same numbers as the zero-padded model, bit for bit.
    let aware = seed("seed_model_nan_padding", (f32::NAN, MaskValueMode::NanAware));
    let zero = seed("seed_model", (0.0, MaskValueMode::Ieee));
    let (a, _) = aware.model.forward(&aware.input, 1).unwrap();
    let (z, _) = zero.model.forward(&zero.input, 1).unwrap();
    same_bits("NaN-aware vs zero-padded outputs", &a.to_vec(), &z.to_vec()).unwrap();
    let (la, lz) = (masked_mae(&a, &aware.targets).unwrap(), masked_mae(&z, &zero.targets).unwrap());
    assert_eq!(la.count, lz.count);
    assert_eq!(la.value.to_bits(), lz.value.to_bits(), "masked MAE {} vs {}", la.value, lz.value);
    let want = zero.f["loss_masked_mae"].as_f64().unwrap();
    assert!((masked_mae(&a, &aware.targets).unwrap().value - want).abs() <= 1e-5);
}
