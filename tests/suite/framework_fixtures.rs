//! Golden fixtures from ONNX Runtime and the onnx package's LSTM node tests, Keras 3 `Bidirectional` and
//! PyTorch packed sequences (tools/fixtures/*.py), on the fast path and the references.

use crate::common::{fixtures, floats, mask, onnx_node, opt_floats, usize_of, y_to_batch_major, FRAMEWORK_TOL};
use masked_rnn::bidirectional::{BidirectionalState, KerasBidirectional, MergeMode};
use masked_rnn::fuzzing::close;
use masked_rnn::onnx::{swap_axes, Layout};
use masked_rnn::torch::{TorchLstm, TorchLstmParams};
use masked_rnn::{KerasLstmOptions, LstmWeights, SeqView};
use serde_json::Value;

#[test]
fn onnx_fixtures_match_in_both_layouts() {
    let cases = fixtures("onnx", "onnx_lstm");
    assert!(cases.len() >= 30, "{} ONNX fixtures", cases.len());
    let mut compared = 0;
    for (name, f) in cases {
        let (t, b, h) = (usize_of(&f["seq_length"]), usize_of(&f["batch"]), usize_of(&f["hidden"]));
        let i = usize_of(&f["input"]);
        let stored = if f["layout"].as_u64() == Some(1) { Layout::BatchMajor } else { Layout::SeqMajor };
        let d = if f["direction"] == "bidirectional" { 2 } else { 1 };
        let lens: Option<Vec<i32>> =
            f["sequence_lens"].as_array().map(|l| l.iter().map(|v| v.as_i64().unwrap() as i32).collect());
        let x = floats(&f["x"]);
        let (h0, c0) = (opt_floats(&f["initial_h"]), opt_floats(&f["initial_c"]));
        let expected = [("Y", opt_floats(&f["y"])), ("Y_h", opt_floats(&f["y_h"])), ("Y_c", opt_floats(&f["y_c"]))];
        let mut layouts = vec![(stored, x.clone(), h0.clone(), c0.clone(), expected.clone())];
        if stored == Layout::SeqMajor {
            // The layout = 1 path against the same fixture, transposed.
            let tr_state = |s: &Option<Vec<f32>>| s.as_ref().map(|s| swap_axes(s, d, b, h));
            layouts.push((
                Layout::BatchMajor,
                swap_axes(&x, t, b, i),
                tr_state(&h0),
                tr_state(&c0),
                [
                    ("Y", expected[0].1.as_ref().map(|y| y_to_batch_major(y, t, d, b, h))),
                    ("Y_h", tr_state(&expected[1].1)),
                    ("Y_c", tr_state(&expected[2].1)),
                ],
            ));
        }
        for (layout, x, h0, c0, expected) in layouts {
            let node = onnx_node(&f, layout);
            for threads in [1, 2] {
                let (got, stats) =
                    node.forward_all(&x, t, b, lens.as_deref(), h0.as_deref(), c0.as_deref(), threads).unwrap();
                let valid: usize = lens.as_ref().map_or(t * b, |l| l.iter().map(|&v| v as usize).sum());
                assert_eq!(stats.steps_computed, d * valid, "{name}: padded steps computed");
                for ((what, want), got) in expected.iter().zip([&got.y, &got.y_h, &got.y_c]) {
                    if let Some(want) = want {
                        close(&format!("{name} {layout:?} {what}"), got, want, FRAMEWORK_TOL).unwrap();
                        compared += 1;
                    }
                }
            }
            let reference = node.forward_reference(&x, t, b, lens.as_deref(), h0.as_deref(), c0.as_deref()).unwrap();
            if let Some(want) = &expected[1].1 {
                close(&format!("{name} {layout:?} reference Y_h"), &reference.y_h, want, FRAMEWORK_TOL).unwrap();
            }
        }
    }
    assert!(compared > 150, "only {compared} outputs compared");
}

fn keras_weights(v: &Value, i: usize, h: usize) -> LstmWeights {
    LstmWeights::from_keras(i, h, &floats(&v["kernel"]), &floats(&v["recurrent_kernel"]), Some(&floats(&v["bias"])))
        .unwrap()
}

#[test]
fn keras_bidirectional_fixtures() {
    let cases = fixtures("keras_bidi", "keras_bidirectional");
    assert!(cases.len() >= 9);
    let mut compared = 0;
    for (name, f) in cases {
        let (b, t, i, h) = (usize_of(&f["batch"]), usize_of(&f["time"]), usize_of(&f["input"]), usize_of(&f["hidden"]));
        let merge = MergeMode::from_keras_name(f["merge_mode"].as_str()).unwrap();
        let rs = f["return_sequences"].as_bool().unwrap();
        let layer = KerasBidirectional::new(
            keras_weights(&f["forward"], i, h),
            keras_weights(&f["backward"], i, h),
            KerasLstmOptions::default(),
            merge,
            rs,
        )
        .unwrap();
        let view = SeqView::from_mask(&mask(&f["mask"]), b, t).unwrap();
        let states: Option<[Vec<f32>; 4]> = (!f["initial_state"].is_null())
            .then(|| ["h_f", "c_f", "h_b", "c_b"].map(|k| floats(&f["initial_state"][k])));
        let init = states.as_ref().map(|s| BidirectionalState { h_f: &s[0], c_f: &s[1], h_b: &s[2], c_b: &s[3] });
        let x = floats(&f["x"]);
        for threads in [1, 2] {
            let (got, stats) = layer.forward(&x, &view, init, threads).unwrap();
            assert_eq!(stats.steps_computed, 2 * view.total_valid(), "{name}");
            let outs = [
                ("y", &got.y),
                ("y_forward", &got.y_forward),
                ("y_backward", &got.y_backward),
                ("h_f", &got.h_f),
                ("c_f", &got.c_f),
                ("h_b", &got.h_b),
                ("c_b", &got.c_b),
            ];
            for (k, v) in outs {
                match opt_floats(&f[k]) {
                    Some(want) => {
                        close(&format!("{name} {k}"), v, &want, FRAMEWORK_TOL).unwrap();
                        compared += 1;
                    }
                    None => assert!(v.is_empty(), "{name}: {k} should be absent"),
                }
            }
        }
        let reference = layer.forward_reference(&x, &view, init).unwrap();
        if let Some(want) = opt_floats(&f["y"]) {
            close(&format!("{name} reference y"), &reference.y, &want, FRAMEWORK_TOL).unwrap();
        }
    }
    // Each fixture holds y or y_forward / y_backward, and the four states: at least 5 outputs, twice.
    assert!(compared >= 9 * 2 * 5, "only {compared} outputs compared");
}

#[test]
fn pytorch_packed_fixtures() {
    let cases = fixtures("torch", "torch_packed");
    assert!(cases.len() >= 7);
    for (name, f) in cases {
        let (t, b, i, h) =
            (usize_of(&f["seq_length"]), usize_of(&f["batch"]), usize_of(&f["input"]), usize_of(&f["hidden"]));
        let (layers, bidi, bf) =
            (usize_of(&f["num_layers"]), f["bidirectional"].as_bool().unwrap(), f["batch_first"].as_bool().unwrap());
        let tensors: Vec<[Vec<f32>; 4]> = f["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| ["weight_ih", "weight_hh", "bias_ih", "bias_hh"].map(|k| floats(&w[k])))
            .collect();
        let params: Vec<TorchLstmParams<'_>> = tensors
            .iter()
            .map(|[a, bb, c, d]| TorchLstmParams { weight_ih: a, weight_hh: bb, bias_ih: Some(c), bias_hh: Some(d) })
            .collect();
        let model = TorchLstm::new(i, h, layers, bidi, &params).unwrap();
        let lengths: Vec<usize> = f["lengths"].as_array().unwrap().iter().map(usize_of).collect();
        let (h0, c0) = (opt_floats(&f["h0"]), opt_floats(&f["c0"]));
        let x = floats(&f["x"]);
        for threads in [1, 2] {
            let (got, stats) =
                model.forward_packed(&x, t, b, bf, &lengths, h0.as_deref(), c0.as_deref(), threads).unwrap();
            let d = if bidi { 2 } else { 1 };
            assert_eq!(stats.steps_computed, layers * d * lengths.iter().sum::<usize>(), "{name}");
            close(&format!("{name} y"), &got.y, &floats(&f["y"]), FRAMEWORK_TOL).unwrap();
            close(&format!("{name} h_n"), &got.h_n, &floats(&f["h_n"]), FRAMEWORK_TOL).unwrap();
            close(&format!("{name} c_n"), &got.c_n, &floats(&f["c_n"]), FRAMEWORK_TOL).unwrap();
        }
    }
}
