//! The fast backward against golden float64 gradients from real Keras 3 (`GradientTape`) and from an
//! autograd model of the ONNX operator proven against ONNX Runtime (tools/fixtures/*_grad_golden.py):
//! every gradient within 1e-4 relative to `max(1, |fixture|)`, and steps computed = valid steps.

use crate::common::{keras_layer, mask, onnx_node, opt_floats, usize_of};
use masked_rnn::onnx::Layout;
use masked_rnn::{
    InitialState, KerasGrads, KerasOutputs, KerasTape, KerasUpstream, OnnxGrads, OnnxTape, OnnxUpstream, SeqView,
    Workspace,
};
use serde_json::Value;

const TOL: f64 = 1e-4;

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

/// Largest `|got - want| / max(1, |want|)`; panics with the place when it exceeds [`TOL`].
fn check(what: &str, got: &[f32], want: &[f64], worst: &mut f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - w).abs() / w.abs().max(1.0);
        assert!(err <= TOL, "{what}[{k}]: {g} vs fixture {w}");
        *worst = worst.max(err);
    }
}

#[test]
fn keras_lstm_gradients_match_keras() {
    let cases = crate::common::fixtures("keras_grad", "keras_lstm_grad");
    assert!(cases.len() >= 15, "{} cases", cases.len());
    let mut worst = 0.0f64;
    for (name, f) in &cases {
        let layer = keras_layer(f);
        let (b, t, i, h) = (usize_of(&f["batch"]), usize_of(&f["time"]), usize_of(&f["input"]), usize_of(&f["hidden"]));
        let m = mask(&f["mask"]);
        let view = SeqView::from_mask(&m, b, t).unwrap();
        let x = crate::common::floats(&f["x"]);
        let (h0, c0) = (opt_floats(&f["initial_h"]), opt_floats(&f["initial_c"]));
        let init = || h0.as_ref().map(|h0| InitialState { h: h0, c: c0.as_deref().expect("initial_c") });
        let mut tape = KerasTape::new();
        let mut y = vec![0.0; b * t * h];
        let out = KerasOutputs { y: Some(&mut y), ..Default::default() };
        layer.forward_train(&x, &view, init(), out, &mut tape, 2, &mut Workspace::new()).unwrap();
        let ups: Vec<Option<Vec<f32>>> =
            ["dy", "d_last_output", "d_h_n", "d_c_n"].iter().map(|k| opt_floats(&f[*k])).collect();
        let up = KerasUpstream {
            dy: ups[0].as_deref(),
            d_last_output: ups[1].as_deref(),
            d_h_n: ups[2].as_deref(),
            d_c_n: ups[3].as_deref(),
        };
        let (mut dx, mut dk, mut dr, mut db) =
            (vec![0.0; b * t * i], vec![0.0; i * 4 * h], vec![0.0; h * 4 * h], vec![0.0; 4 * h]);
        let (mut dh0, mut dc0) = (vec![0.0; b * h], vec![0.0; b * h]);
        let grads = KerasGrads {
            dx: Some(&mut dx),
            d_kernel: Some(&mut dk),
            d_recurrent_kernel: Some(&mut dr),
            d_bias: Some(&mut db),
            d_initial_h: Some(&mut dh0),
            d_initial_c: Some(&mut dc0),
        };
        let stats = layer.backward(&x, &view, init(), &tape, up, grads, 2).unwrap();
        assert_eq!(stats.steps_computed, m.iter().filter(|&&v| v).count(), "{name}: steps");
        for (k, got) in [("dx", &dx), ("d_kernel", &dk), ("d_recurrent_kernel", &dr), ("d_bias", &db)] {
            check(&format!("{name} {k}"), got, &f64s(&f[k]), &mut worst);
        }
        if h0.is_some() {
            check(&format!("{name} d_initial_h"), &dh0, &f64s(&f["d_initial_h"]), &mut worst);
            check(&format!("{name} d_initial_c"), &dc0, &f64s(&f["d_initial_c"]), &mut worst);
        }
    }
    println!("keras_lstm_grad: {} files, worst {worst:.2e}", cases.len());
}

#[test]
fn onnx_gradients_match_the_operator_model() {
    let cases = crate::common::fixtures("onnx_grad", "onnx_lstm_grad");
    assert!(cases.len() >= 10, "{} cases", cases.len());
    let mut worst = 0.0f64;
    let mut layouts = [0, 0];
    for (name, f) in &cases {
        let layout = if f["layout"].as_u64() == Some(1) { Layout::BatchMajor } else { Layout::SeqMajor };
        layouts[usize::from(layout == Layout::BatchMajor)] += 1;
        let node = onnx_node(f, layout);
        let (t, b, i, h) =
            (usize_of(&f["seq_length"]), usize_of(&f["batch"]), usize_of(&f["input"]), usize_of(&f["hidden"]));
        let d = if f["direction"] == "bidirectional" { 2 } else { 1 };
        let lens: Option<Vec<i32>> =
            f["sequence_lens"].as_array().map(|l| l.iter().map(|v| v.as_i64().unwrap() as i32).collect());
        let x = crate::common::floats(&f["x"]);
        let (h0, c0) = (opt_floats(&f["initial_h"]), opt_floats(&f["initial_c"]));
        let mut tape = OnnxTape::new();
        let out = Default::default();
        node.forward_train(
            &x,
            t,
            b,
            lens.as_deref(),
            h0.as_deref(),
            c0.as_deref(),
            out,
            &mut tape,
            2,
            &mut Workspace::new(),
        )
        .unwrap();
        let ups: Vec<Option<Vec<f32>>> = ["dy", "dy_h", "dy_c"].iter().map(|k| opt_floats(&f[*k])).collect();
        let up = OnnxUpstream { dy: ups[0].as_deref(), dy_h: ups[1].as_deref(), dy_c: ups[2].as_deref() };
        let has = |k: &str| !f[k].is_null();
        let mut bufs: Vec<(&str, Vec<f32>)> = vec![
            ("dx", vec![0.0; t * b * i]),
            ("dw", vec![0.0; d * 4 * h * i]),
            ("dr", vec![0.0; d * 4 * h * h]),
            ("db", vec![0.0; d * 8 * h]),
            ("d_initial_h", vec![0.0; d * b * h]),
            ("d_initial_c", vec![0.0; d * b * h]),
            ("dp", vec![0.0; d * 3 * h]),
        ];
        let [dx, dw, dr, db, dh0, dc0, dp] = &mut bufs[..] else { unreachable!() };
        let grads = OnnxGrads {
            dx: Some(&mut dx.1),
            dw: Some(&mut dw.1),
            dr: Some(&mut dr.1),
            db: Some(&mut db.1),
            d_initial_h: Some(&mut dh0.1),
            d_initial_c: Some(&mut dc0.1),
            dp: has("p").then_some(&mut dp.1[..]),
        };
        let stats =
            node.backward(&x, t, b, lens.as_deref(), h0.as_deref(), c0.as_deref(), &tape, up, grads, 1).unwrap();
        let valid: usize = lens.as_ref().map_or(t * b, |l| l.iter().map(|&v| v as usize).sum());
        assert_eq!(stats.steps_computed, d * valid, "{name}: steps");
        for (k, got) in &bufs {
            if !f[*k].is_null() {
                check(&format!("{name} {k}"), got, &f64s(&f[*k]), &mut worst);
            }
        }
    }
    assert!(layouts[0] > 0 && layouts[1] > 0, "{layouts:?}");
    println!("onnx_lstm_grad: {} files, worst {worst:.2e}", cases.len());
}

#[test]
fn keras_bidirectional_gradients_match_keras() {
    use masked_rnn::bidirectional::{
        BidirectionalGrads, BidirectionalState, BidirectionalTape, BidirectionalUpstream, KerasBidirectional, MergeMode,
    };
    use masked_rnn::{KerasLstmOptions, LstmWeights};
    let cases = crate::common::fixtures("keras_grad", "keras_bidi_grad");
    assert!(cases.len() >= 10, "{} cases", cases.len());
    let mut worst = 0.0f64;
    let weights = |v: &Value, i: usize, h: usize| {
        let fl = |k: &str| crate::common::floats(&v[k]);
        LstmWeights::from_keras(i, h, &fl("kernel"), &fl("recurrent_kernel"), Some(&fl("bias"))).unwrap()
    };
    for (name, f) in &cases {
        let (b, t, i, h) = (usize_of(&f["batch"]), usize_of(&f["time"]), usize_of(&f["input"]), usize_of(&f["hidden"]));
        let merge = MergeMode::from_keras_name(f["merge_mode"].as_str()).unwrap();
        let rs = f["return_sequences"].as_bool().unwrap();
        let layer = KerasBidirectional::new(
            weights(&f["forward"], i, h),
            weights(&f["backward"], i, h),
            KerasLstmOptions::default(),
            merge,
            rs,
        )
        .unwrap();
        let m = mask(&f["mask"]);
        let view = SeqView::from_mask(&m, b, t).unwrap();
        let keys = ["h_f", "c_f", "h_b", "c_b"];
        let states: Option<[Vec<f32>; 4]> =
            (!f["initial_state"].is_null()).then(|| keys.map(|k| crate::common::floats(&f["initial_state"][k])));
        let init = states.as_ref().map(|s| BidirectionalState { h_f: &s[0], c_f: &s[1], h_b: &s[2], c_b: &s[3] });
        let x = crate::common::floats(&f["x"]);
        let mut tape = BidirectionalTape::new();
        let (out, _) = layer.forward_train(&x, &view, init, &mut tape, 2).unwrap();
        let (fwd, _) = layer.forward(&x, &view, init, 1).unwrap();
        assert_eq!(out, fwd, "{name}: forward_train outputs differ from forward");
        let ups: Vec<Option<Vec<f32>>> = ["dy", "dy_forward", "dy_backward", "d_h_f", "d_c_f", "d_h_b", "d_c_b"]
            .iter()
            .map(|k| opt_floats(&f[*k]))
            .collect();
        let up = BidirectionalUpstream {
            dy: ups[0].as_deref(),
            dy_forward: ups[1].as_deref(),
            dy_backward: ups[2].as_deref(),
            d_h_f: ups[3].as_deref(),
            d_c_f: ups[4].as_deref(),
            d_h_b: ups[5].as_deref(),
            d_c_b: ups[6].as_deref(),
        };
        let mut dx = vec![0.0; b * t * i];
        let mut p: Vec<Vec<f32>> =
            [i * 4 * h, h * 4 * h, 4 * h, i * 4 * h, h * 4 * h, 4 * h].map(|n| vec![0.0; n]).into();
        let mut s: Vec<Vec<f32>> = (0..4).map(|_| vec![0.0; b * h]).collect();
        {
            let [kf, rf, bf, kb, rb, bb] = &mut p[..] else { unreachable!() };
            let [hf, cf, hb, cb] = &mut s[..] else { unreachable!() };
            let grads = BidirectionalGrads {
                dx: Some(&mut dx),
                forward: KerasGrads {
                    d_kernel: Some(kf),
                    d_recurrent_kernel: Some(rf),
                    d_bias: Some(bf),
                    d_initial_h: Some(hf),
                    d_initial_c: Some(cf),
                    ..Default::default()
                },
                backward: KerasGrads {
                    d_kernel: Some(kb),
                    d_recurrent_kernel: Some(rb),
                    d_bias: Some(bb),
                    d_initial_h: Some(hb),
                    d_initial_c: Some(cb),
                    ..Default::default()
                },
            };
            let stats = layer.backward(&x, &view, init, &tape, up, grads, 2).unwrap();
            assert_eq!(stats.steps_computed, 2 * view.total_valid(), "{name}: steps");
        }
        check(&format!("{name} dx"), &dx, &f64s(&f["dx"]), &mut worst);
        for (d, dir) in ["d_forward", "d_backward"].iter().enumerate() {
            for (k, key) in ["kernel", "recurrent_kernel", "bias"].iter().enumerate() {
                check(&format!("{name} {dir}.{key}"), &p[3 * d + k], &f64s(&f[*dir][*key]), &mut worst);
            }
        }
        if states.is_some() {
            for (k, key) in keys.iter().enumerate() {
                check(&format!("{name} d_initial {key}"), &s[k], &f64s(&f["d_initial_state"][k]), &mut worst);
            }
        }
    }
    println!("keras_bidi_grad: {} files, worst {worst:.2e}", cases.len());
}

#[test]
fn pytorch_packed_gradients_match_autograd() {
    use masked_rnn::torch::{TorchGrads, TorchLstm, TorchLstmParams, TorchTape, TorchUpstream};
    let cases = crate::common::fixtures("torch_grad", "torch_packed_grad");
    assert!(cases.len() >= 8, "{} cases", cases.len());
    let mut worst = 0.0f64;
    for (name, f) in &cases {
        let (t, b, i, h) =
            (usize_of(&f["seq_length"]), usize_of(&f["batch"]), usize_of(&f["input"]), usize_of(&f["hidden"]));
        let (layers, bidi, bf) =
            (usize_of(&f["num_layers"]), f["bidirectional"].as_bool().unwrap(), f["batch_first"].as_bool().unwrap());
        let keys = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"];
        let tensors: Vec<[Option<Vec<f32>>; 4]> =
            f["weights"].as_array().unwrap().iter().map(|w| keys.map(|k| opt_floats(&w[k]))).collect();
        let params: Vec<TorchLstmParams<'_>> = tensors
            .iter()
            .map(|[a, bb, c, d]| TorchLstmParams {
                weight_ih: a.as_deref().unwrap(),
                weight_hh: bb.as_deref().unwrap(),
                bias_ih: c.as_deref(),
                bias_hh: d.as_deref(),
            })
            .collect();
        let model = TorchLstm::new(i, h, layers, bidi, &params).unwrap();
        let lengths: Vec<usize> = f["lengths"].as_array().unwrap().iter().map(usize_of).collect();
        let (h0, c0) = (opt_floats(&f["h0"]), opt_floats(&f["c0"]));
        let x = crate::common::floats(&f["x"]);
        let mut tape = TorchTape::new();
        let (hd0, cd0) = (h0.as_deref(), c0.as_deref());
        model
            .forward_packed_train(
                &x,
                t,
                b,
                bf,
                &lengths,
                hd0,
                cd0,
                Default::default(),
                &mut tape,
                2,
                &mut Workspace::new(),
            )
            .unwrap();
        let ups: Vec<Option<Vec<f32>>> = ["dy", "dh_n", "dc_n"].iter().map(|k| opt_floats(&f[*k])).collect();
        let up = TorchUpstream { dy: ups[0].as_deref(), dh_n: ups[1].as_deref(), dc_n: ups[2].as_deref() };
        let d = if bidi { 2 } else { 1 };
        let (mut dx, mut dh0, mut dc0) =
            (vec![0.0; x.len()], vec![0.0; layers * d * b * h], vec![0.0; layers * d * b * h]);
        let mut p = Vec::new();
        let grads = TorchGrads { dx: Some(&mut dx), params: Some(&mut p), dh0: Some(&mut dh0), dc0: Some(&mut dc0) };
        let stats = model.backward_packed(&x, t, b, bf, &lengths, hd0, cd0, &tape, up, grads, 2).unwrap();
        assert_eq!(stats.steps_computed, layers * d * lengths.iter().sum::<usize>(), "{name}: steps");
        check(&format!("{name} dx"), &dx, &f64s(&f["dx"]), &mut worst);
        let dw = f["d_weights"].as_array().unwrap();
        assert_eq!(dw.len(), p.len(), "{name}: parameter sets");
        for (k, (want, got)) in dw.iter().zip(&p).enumerate() {
            check(&format!("{name} [{k}] weight_ih"), &got.weight_ih, &f64s(&want["weight_ih"]), &mut worst);
            check(&format!("{name} [{k}] weight_hh"), &got.weight_hh, &f64s(&want["weight_hh"]), &mut worst);
            if !want["bias_ih"].is_null() {
                check(&format!("{name} [{k}] bias_ih"), &got.bias_ih, &f64s(&want["bias_ih"]), &mut worst);
                check(&format!("{name} [{k}] bias_hh"), &got.bias_hh, &f64s(&want["bias_hh"]), &mut worst);
            }
        }
        if h0.is_some() {
            check(&format!("{name} dh0"), &dh0, &f64s(&f["dh0"]), &mut worst);
            check(&format!("{name} dc0"), &dc0, &f64s(&f["dc0"]), &mut worst);
        }
    }
    println!("torch_packed_grad: {} files, worst {worst:.2e}", cases.len());
}
