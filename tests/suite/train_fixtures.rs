//! Golden float64 gradients from real Keras 3 (LSTM and Bidirectional), PyTorch autograd on packed
//! sequences, and a float64 autograd model of the ONNX operator (tools/fixtures/*_grad_golden.py),
//! against the reference backward (`masked_rnn::reference::backward`): forward outputs and every gradient
//! within 1e-6 relative to `max(1, |fixture|)`.

use crate::common::grad::{f64s, grad_fixtures, opt_f64s, swap_axes, Agreement};
use crate::common::{mask, usize_of};
use masked_rnn::bidirectional::MergeMode;
use masked_rnn::cells::grads::LstmGrads;
use masked_rnn::reference::backward::*;
use masked_rnn::{Activation, CellSpec, HardSigmoidFlavor};
use serde_json::Value;

/// Both sides are float64: only summation order and the f32 storage of activation parameters differ.
const TOL: f64 = 1e-6;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `sum(up * out)` over the pairs whose upstream is present.
fn loss(pairs: &[(&Option<Vec<f64>>, &[f64])]) -> f64 {
    pairs.iter().filter_map(|(u, o)| u.as_ref().map(|u| dot(u, o))).sum()
}

fn check_loss(what: &str, got: f64, f: &Value) {
    let want = f["loss"].as_f64().expect("loss");
    assert!((got - want).abs() <= TOL * want.abs().max(1.0), "{what}: loss {got} vs fixture {want}");
}

fn report(kind: &str, files: usize, fwd: &Agreement, grads: &Agreement) {
    println!(
        "{kind}: {files} files; forward {} values, worst {:.2e} at {}; gradients {} values, worst {:.2e} at {}",
        fwd.values, fwd.worst, fwd.worst_at, grads.values, grads.worst, grads.worst_at
    );
}

fn keras_params(v: &Value, i: usize, h: usize) -> LstmParams64 {
    LstmParams64::from_keras(i, h, &f64s(&v["kernel"]), &f64s(&v["recurrent_kernel"]), Some(&f64s(&v["bias"])))
}

#[test]
fn keras_lstm_grad_fixtures() {
    let cases = grad_fixtures("keras_grad", "keras_lstm_grad");
    let (mut fwd, mut agree) = (Agreement::default(), Agreement::default());
    let mut compared = 0;
    for (name, f) in &cases {
        let (b, t, i, h) = (usize_of(&f["batch"]), usize_of(&f["time"]), usize_of(&f["input"]), usize_of(&f["hidden"]));
        let flavor = match f["hard_sigmoid_flavor"].as_str() {
            Some("keras2") => HardSigmoidFlavor::Keras2,
            _ => HardSigmoidFlavor::Keras3,
        };
        let act = |k: &str| Activation::from_keras_name(f[k].as_str().expect("name"), flavor).expect("activation");
        let cell = CellSpec::keras(act("activation"), act("recurrent_activation"));
        let p = keras_params(f, i, h);
        let (x, m) = (f64s(&f["x"]), mask(&f["mask"]));
        let (gb, zofm) = (f["go_backwards"].as_bool().unwrap(), f["zero_output_for_mask"].as_bool().unwrap());
        let init_vals = opt_f64s(&f["initial_h"]).map(|h0| (h0, f64s(&f["initial_c"])));
        let init = init_vals.as_ref().map(|(a, c)| (&a[..], &c[..]));
        let out = keras_lstm_f64(&p, &cell, &x, &m, b, t, gb, zofm, init);
        for (k, v) in [("y", &out.y), ("last_output", &out.last_output), ("h_n", &out.h_n), ("c_n", &out.c_n)] {
            fwd.check(&format!("{name} {k}"), v, &f64s(&f[k]), TOL);
        }
        let ups = ["dy", "d_last_output", "d_h_n", "d_c_n"].map(|k| opt_f64s(&f[k]));
        check_loss(
            name,
            loss(&[(&ups[0], &out.y), (&ups[1], &out.last_output), (&ups[2], &out.h_n), (&ups[3], &out.c_n)]),
            f,
        );
        let up = KerasUpstream64 {
            dy: ups[0].as_deref(),
            d_last_output: ups[1].as_deref(),
            d_h_n: ups[2].as_deref(),
            d_c_n: ups[3].as_deref(),
        };
        let g = keras_lstm_backward(&p, &cell, &x, &m, b, t, gb, zofm, init, &up);
        let k = g.params.to_keras();
        for (key, v) in
            [("dx", &g.dx), ("d_kernel", &k.kernel), ("d_recurrent_kernel", &k.recurrent_kernel), ("d_bias", &k.bias)]
        {
            agree.check(&format!("{name} {key}"), v, &f64s(&f[key]), TOL);
        }
        for (key, v) in [("d_initial_h", &g.d_initial_h), ("d_initial_c", &g.d_initial_c)] {
            match opt_f64s(&f[key]) {
                Some(want) => agree.check(&format!("{name} {key}"), v, &want, TOL),
                None => assert!(init.is_none(), "{name}: {key} missing with an initial state"),
            }
        }
        compared += 1;
    }
    assert_eq!(compared, cases.len());
    report("keras_lstm_grad", compared, &fwd, &agree);
}

#[test]
fn keras_bidi_grad_fixtures() {
    let cases = grad_fixtures("keras_grad", "keras_bidi_grad");
    let (mut fwd, mut agree) = (Agreement::default(), Agreement::default());
    let mut compared = 0;
    let mut merges = Vec::new();
    for (name, f) in &cases {
        let (b, t, i, h) = (usize_of(&f["batch"]), usize_of(&f["time"]), usize_of(&f["input"]), usize_of(&f["hidden"]));
        let merge = MergeMode::from_keras_name(f["merge_mode"].as_str()).unwrap();
        merges.push(merge);
        let (pf, pb) = (keras_params(&f["forward"], i, h), keras_params(&f["backward"], i, h));
        let layer = KerasBidi64 {
            forward: &pf,
            backward: &pb,
            cell: CellSpec::default(),
            go_backwards: false,
            merge,
            return_sequences: f["return_sequences"].as_bool().unwrap(),
        };
        let (x, m) = (f64s(&f["x"]), mask(&f["mask"]));
        let states: Option<[Vec<f64>; 4]> =
            (!f["initial_state"].is_null()).then(|| ["h_f", "c_f", "h_b", "c_b"].map(|k| f64s(&f["initial_state"][k])));
        let init = states.as_ref().map(|s| BidiState64 { h_f: &s[0], c_f: &s[1], h_b: &s[2], c_b: &s[3] });
        let out = keras_bidirectional_f64(&layer, &x, &m, b, t, init);
        let outs: [(&str, &[f64]); 7] = [
            ("y", &out.y),
            ("y_forward", &out.y_forward),
            ("y_backward", &out.y_backward),
            ("h_f", &out.h_f),
            ("c_f", &out.c_f),
            ("h_b", &out.h_b),
            ("c_b", &out.c_b),
        ];
        for (k, v) in outs {
            match opt_f64s(&f[k]) {
                Some(want) => fwd.check(&format!("{name} {k}"), v, &want, TOL),
                None => assert!(v.is_empty(), "{name}: {k} should be absent"),
            }
        }
        let ups = ["dy", "dy_forward", "dy_backward", "d_h_f", "d_c_f", "d_h_b", "d_c_b"].map(|k| opt_f64s(&f[k]));
        let pairs: Vec<(&Option<Vec<f64>>, &[f64])> = ups.iter().zip(outs).map(|(u, (_, o))| (u, o)).collect();
        check_loss(name, loss(&pairs), f);
        let up = BidiUpstream64 {
            dy: ups[0].as_deref(),
            dy_forward: ups[1].as_deref(),
            dy_backward: ups[2].as_deref(),
            d_h_f: ups[3].as_deref(),
            d_c_f: ups[4].as_deref(),
            d_h_b: ups[5].as_deref(),
            d_c_b: ups[6].as_deref(),
        };
        let g = keras_bidirectional_backward(&layer, &x, &m, b, t, init, &up);
        agree.check(&format!("{name} dx"), &g.dx, &f64s(&f["dx"]), TOL);
        for (key, gp) in [("d_forward", &g.forward), ("d_backward", &g.backward)] {
            let k = gp.to_keras();
            for (field, v) in [("kernel", &k.kernel), ("recurrent_kernel", &k.recurrent_kernel), ("bias", &k.bias)] {
                agree.check(&format!("{name} {key}.{field}"), v, &f64s(&f[key][field]), TOL);
            }
        }
        match f["d_initial_state"].as_array() {
            Some(want) => {
                assert_eq!(want.len(), 4, "{name}: d_initial_state");
                for (k, (w, v)) in want.iter().zip([&g.d_h_f, &g.d_c_f, &g.d_h_b, &g.d_c_b]).enumerate() {
                    agree.check(&format!("{name} d_initial_state[{k}]"), v, &f64s(w), TOL);
                }
            }
            None => assert!(init.is_none(), "{name}: d_initial_state missing with initial states"),
        }
        compared += 1;
    }
    assert_eq!(compared, cases.len());
    for m in [MergeMode::Concat, MergeMode::Sum, MergeMode::Ave, MergeMode::Mul, MergeMode::None] {
        assert!(merges.contains(&m), "no {m:?} fixture");
    }
    report("keras_bidi_grad", compared, &fwd, &agree);
}

#[test]
fn torch_packed_grad_fixtures() {
    let cases = grad_fixtures("torch_grad", "torch_packed_grad");
    let (mut fwd, mut agree) = (Agreement::default(), Agreement::default());
    let mut compared = 0;
    for (name, f) in &cases {
        let (t, b, i, h) =
            (usize_of(&f["seq_length"]), usize_of(&f["batch"]), usize_of(&f["input"]), usize_of(&f["hidden"]));
        let (layers, bidi, bf) =
            (usize_of(&f["num_layers"]), f["bidirectional"].as_bool().unwrap(), f["batch_first"].as_bool().unwrap());
        let d_n = if bidi { 2 } else { 1 };
        let sets = f["weights"].as_array().unwrap();
        assert_eq!(sets.len(), layers * d_n, "{name}: weights");
        let params: Vec<LstmParams64> = sets
            .iter()
            .enumerate()
            .map(|(k, w)| {
                let inp = if k < d_n { i } else { d_n * h };
                let (bih, bhh) = (opt_f64s(&w["bias_ih"]), opt_f64s(&w["bias_hh"]));
                LstmParams64::from_pytorch(
                    inp,
                    h,
                    &f64s(&w["weight_ih"]),
                    &f64s(&w["weight_hh"]),
                    bih.as_deref(),
                    bhh.as_deref(),
                )
            })
            .collect();
        let stack = TorchStack64 { params: &params, num_layers: layers, bidirectional: bidi };
        let lengths: Vec<usize> = f["lengths"].as_array().unwrap().iter().map(usize_of).collect();
        let x = f64s(&f["x"]);
        let (h0, c0) = (opt_f64s(&f["h0"]), opt_f64s(&f["c0"]));
        let out = torch_lstm_f64(&stack, &x, t, b, bf, &lengths, h0.as_deref(), c0.as_deref());
        for (k, v) in [("y", &out.y), ("h_n", &out.h_n), ("c_n", &out.c_n)] {
            fwd.check(&format!("{name} {k}"), v, &f64s(&f[k]), TOL);
        }
        let ups = ["dy", "dh_n", "dc_n"].map(|k| opt_f64s(&f[k]));
        let up = TorchUpstream64 { dy: ups[0].as_deref(), dh_n: ups[1].as_deref(), dc_n: ups[2].as_deref() };
        let g = torch_lstm_backward(&stack, &x, t, b, bf, &lengths, h0.as_deref(), c0.as_deref(), &up);
        agree.check(&format!("{name} dx"), &g.dx, &f64s(&f["dx"]), TOL);
        let d_sets = f["d_weights"].as_array().unwrap();
        assert_eq!(d_sets.len(), g.params.len(), "{name}: d_weights");
        for (k, (want, gp)) in d_sets.iter().zip(&g.params).enumerate() {
            let pt = gp.to_pytorch();
            for (field, v) in [
                ("weight_ih", &pt.weight_ih),
                ("weight_hh", &pt.weight_hh),
                ("bias_ih", &pt.bias_ih),
                ("bias_hh", &pt.bias_hh),
            ] {
                match opt_f64s(&want[field]) {
                    Some(w) => agree.check(&format!("{name} d_weights[{k}].{field}"), v, &w, TOL),
                    None => assert!(field.starts_with("bias") && f["bias"] == false, "{name}: {field} missing"),
                }
            }
        }
        for (key, v, given) in [("dh0", &g.dh0, h0.is_some()), ("dc0", &g.dc0, c0.is_some())] {
            match opt_f64s(&f[key]) {
                Some(want) => agree.check(&format!("{name} {key}"), v, &want, TOL),
                None => assert!(!given, "{name}: {key} missing"),
            }
        }
        compared += 1;
    }
    assert_eq!(compared, cases.len());
    report("torch_packed_grad", compared, &fwd, &agree);
}

/// Per direction, the (f, g, h) activations of an ONNX fixture, with ORT's defaults for missing
/// parameters (`null` alpha/beta) and Sigmoid, Tanh, Tanh for an empty list.
fn onnx_activations(f: &Value, d_n: usize) -> Vec<[Activation; 3]> {
    let names = f["activations"].as_array().unwrap();
    if names.is_empty() {
        return vec![[Activation::Sigmoid, Activation::Tanh, Activation::Tanh]; d_n];
    }
    assert_eq!(names.len(), 3 * d_n, "activations");
    let param = |k: &str, j: usize| f[k][j].as_f64().map_or(f32::NAN, |v| v as f32);
    let acts: Vec<Activation> = names
        .iter()
        .enumerate()
        .map(|(j, n)| {
            let code = Activation::onnx_code(n.as_str().unwrap()).unwrap();
            Activation::from_code(code, param("activation_alpha", j), param("activation_beta", j)).unwrap()
        })
        .collect();
    acts.chunks(3).map(|a| [a[0], a[1], a[2]]).collect()
}

#[test]
fn onnx_lstm_grad_fixtures() {
    let cases = grad_fixtures("onnx_grad", "onnx_lstm_grad");
    let (mut fwd, mut agree) = (Agreement::default(), Agreement::default());
    let (mut compared, mut layouts) = (0, [0, 0]);
    for (name, f) in &cases {
        let (t, b, i, h) =
            (usize_of(&f["seq_length"]), usize_of(&f["batch"]), usize_of(&f["input"]), usize_of(&f["hidden"]));
        let direction = f["direction"].as_str().unwrap();
        let d_n = if direction == "bidirectional" { 2 } else { 1 };
        let bm = usize_of(&f["layout"]) == 1;
        layouts[usize::from(bm)] += 1;
        let clip = f["clip"].as_f64().map(|c| c as f32);
        let input_forget = f["input_forget"].as_u64() == Some(1);
        let cells: Vec<CellSpec> =
            onnx_activations(f, d_n).iter().map(|a| CellSpec::onnx(a[0], a[1], a[2], clip, input_forget)).collect();
        let (w, r, bias, p) = (f64s(&f["w"]), f64s(&f["r"]), opt_f64s(&f["b"]), opt_f64s(&f["p"]));
        let (g4, hh) = (4 * h, h);
        let params: Vec<LstmParams64> = (0..d_n)
            .map(|d| {
                LstmParams64::from_onnx(
                    i,
                    h,
                    &w[d * g4 * i..(d + 1) * g4 * i],
                    &r[d * g4 * hh..(d + 1) * g4 * hh],
                    bias.as_ref().map(|v| &v[d * 2 * g4..(d + 1) * 2 * g4]),
                    p.as_ref().map(|v| &v[d * 3 * h..(d + 1) * 3 * h]),
                )
            })
            .collect();
        let dirs: Vec<OnnxDir64<'_>> =
            (0..d_n).map(|d| (&params[d], &cells[d], direction == "reverse" || d == 1)).collect();
        let lengths: Vec<usize> =
            f["sequence_lens"].as_array().map_or(vec![t; b], |l| l.iter().map(usize_of).collect());
        // Everything to layout 0: x [T, B, I], states [D, B, H], Y [T, D, B, H].
        let x = f64s(&f["x"]);
        let x0 = if bm { swap_axes(&x, b, t, i) } else { x };
        let state_to0 = |s: Vec<f64>| if bm { swap_axes(&s, b, d_n, h) } else { s };
        let state_from0 = |s: &[f64]| if bm { swap_axes(s, d_n, b, h) } else { s.to_vec() };
        let y_to0 = |y: Vec<f64>| {
            if !bm {
                return y;
            }
            let tb = swap_axes(&y, b, t, d_n * h);
            (0..t).flat_map(|tt| swap_axes(&tb[tt * b * d_n * h..(tt + 1) * b * d_n * h], b, d_n, h)).collect()
        };
        let y_from0 = |y: &[f64]| {
            if !bm {
                return y.to_vec();
            }
            let tb: Vec<f64> =
                (0..t).flat_map(|tt| swap_axes(&y[tt * d_n * b * h..(tt + 1) * d_n * b * h], d_n, b, h)).collect();
            swap_axes(&tb, t, b, d_n * h)
        };
        let (h0, c0) = (opt_f64s(&f["initial_h"]).map(state_to0), opt_f64s(&f["initial_c"]).map(state_to0));
        let zeros = vec![0.0; d_n * b * h];
        let init = match (&h0, &c0) {
            (None, None) => None,
            _ => Some((h0.as_deref().unwrap_or(&zeros), c0.as_deref().unwrap_or(&zeros))),
        };
        let (y, yh, yc) = onnx_lstm_f64(&dirs, &x0, t, b, &lengths, init);
        let (y_s, yh_s, yc_s) = (y_from0(&y), state_from0(&yh), state_from0(&yc));
        for (k, v) in [("y", &y_s), ("y_h", &yh_s), ("y_c", &yc_s)] {
            fwd.check(&format!("{name} {k}"), v, &f64s(&f[k]), TOL);
        }
        let ups = [opt_f64s(&f["dy"]), opt_f64s(&f["dy_h"]), opt_f64s(&f["dy_c"])];
        let dy = ups[0].clone().map(y_to0);
        let (dyh, dyc) = (ups[1].clone().map(state_to0), ups[2].clone().map(state_to0));
        let g = onnx_lstm_backward(&dirs, &x0, t, b, &lengths, init, dy.as_deref(), dyh.as_deref(), dyc.as_deref());
        let dx = if bm { swap_axes(&g.dx, t, b, i) } else { g.dx.clone() };
        agree.check(&format!("{name} dx"), &dx, &f64s(&f["dx"]), TOL);
        let o = LstmGrads::to_onnx_dirs(&g.params);
        agree.check(&format!("{name} dw"), &o.w, &f64s(&f["dw"]), TOL);
        agree.check(&format!("{name} dr"), &o.r, &f64s(&f["dr"]), TOL);
        let optional = [
            ("db", Some(o.b.clone()), bias.is_some()),
            ("dp", o.p.clone(), p.is_some()),
            ("d_initial_h", Some(state_from0(&g.d_initial_h)), h0.is_some()),
            ("d_initial_c", Some(state_from0(&g.d_initial_c)), c0.is_some()),
        ];
        for (key, got, given) in optional {
            match opt_f64s(&f[key]) {
                Some(want) => agree.check(&format!("{name} {key}"), &got.expect("present"), &want, TOL),
                None => assert!(!given, "{name}: {key} missing"),
            }
        }
        compared += 1;
    }
    assert_eq!(compared, cases.len());
    assert!(layouts[0] > 0 && layouts[1] > 0, "layouts {layouts:?}");
    report("onnx_lstm_grad", compared, &fwd, &agree);
}
