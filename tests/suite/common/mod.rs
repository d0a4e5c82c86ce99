//! Reading the golden fixture files (JSON, written by tools/fixtures/*.py).
#![allow(dead_code)]

pub mod grad;

use std::path::{Path, PathBuf};

use masked_rnn::onnx::{swap_axes, Direction, Layout, OnnxLstm, OnnxLstmAttrs};
use masked_rnn::{Activation, HardSigmoidFlavor, KerasLstm, KerasLstmOptions, LstmWeights};
use serde_json::Value;

/// Frameworks sum in other orders (and ONNX Runtime approximates sigmoid/tanh, max abs error about
/// 2.6e-7): after a whole sequence the outputs agree to about 1e-6, so fixtures are compared at 1e-5.
pub const FRAMEWORK_TOL: f32 = 1e-5;

/// Every fixture of `kind` in `tests/fixtures/<dir>`, sorted by path.
pub fn fixtures(dir: &str, kind: &str) -> Vec<(String, Value)> {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir);
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("json");
            (p.file_stem().expect("name").to_string_lossy().into_owned(), v)
        })
        .filter(|(_, v)| v["kind"] == kind)
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no {kind} fixtures in {}", dir.display());
    out
}

/// A fixture float: numbers, `null` for NaN, `"inf"` / `"-inf"`.
pub fn float(v: &Value) -> f32 {
    match v {
        Value::Null => f32::NAN,
        Value::String(s) if s == "inf" => f32::INFINITY,
        Value::String(s) if s == "-inf" => f32::NEG_INFINITY,
        v => v.as_f64().expect("number") as f32,
    }
}

/// A flat float list.
pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(float).collect()
}

/// A flat float list, or `None` for `null`.
pub fn opt_floats(v: &Value) -> Option<Vec<f32>> {
    (!v.is_null()).then(|| floats(v))
}

/// A non-negative integer.
pub fn usize_of(v: &Value) -> usize {
    v.as_u64().expect("integer") as usize
}

/// A 0/1 mask.
pub fn mask(v: &Value) -> Vec<bool> {
    v.as_array().expect("mask").iter().map(|m| m.as_u64() == Some(1)).collect()
}

/// The ONNX LSTM node of a fixture (kinds `onnx_lstm` and `onnx_lstm_grad`), in `layout`.
pub fn onnx_node(f: &Value, layout: Layout) -> OnnxLstm {
    let direction = match f["direction"].as_str().unwrap() {
        "forward" => Direction::Forward,
        "reverse" => Direction::Reverse,
        "bidirectional" => Direction::Bidirectional,
        d => panic!("direction {d}"),
    };
    let names = f["activations"].as_array().unwrap();
    let param = |k: &str, i: usize| float(&f[k][i]);
    let acts: Vec<Activation> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let code = Activation::onnx_code(n.as_str().unwrap()).unwrap();
            Activation::from_code(code, param("activation_alpha", i), param("activation_beta", i)).unwrap()
        })
        .collect();
    let clip = f["clip"].as_f64().map(|c| c as f32);
    let attrs = OnnxLstmAttrs::new(usize_of(&f["hidden"]), direction)
        .layout(layout)
        .clip(clip)
        .input_forget(f["input_forget"].as_u64() == Some(1))
        .activations(acts);
    OnnxLstm::new(
        attrs,
        usize_of(&f["input"]),
        &floats(&f["w"]),
        &floats(&f["r"]),
        opt_floats(&f["b"]).as_deref(),
        opt_floats(&f["p"]).as_deref(),
    )
    .unwrap()
}

/// The Keras LSTM layer of a fixture (kinds `lstm` and `keras_lstm_grad`).
pub fn keras_layer(f: &Value) -> KerasLstm {
    let (i, h) = (usize_of(&f["input"]), usize_of(&f["hidden"]));
    let flavor = match f["hard_sigmoid_flavor"].as_str() {
        Some("keras2") => HardSigmoidFlavor::Keras2,
        _ => HardSigmoidFlavor::Keras3,
    };
    let act = |k: &str| Activation::from_keras_name(f[k].as_str().expect("name"), flavor).expect("activation");
    let weights = LstmWeights::from_keras(
        i,
        h,
        &floats(&f["kernel"]),
        &floats(&f["recurrent_kernel"]),
        Some(&floats(&f["bias"])),
    )
    .expect("weights");
    let options = KerasLstmOptions::default()
        .activation(act("activation"))
        .recurrent_activation(act("recurrent_activation"))
        .go_backwards(f["go_backwards"].as_bool().expect("bool"))
        .zero_output_for_mask(f["zero_output_for_mask"].as_bool().expect("bool"));
    KerasLstm::new(weights, options).expect("layer")
}

/// `[T, D, B, H] -> [B, T, D, H]`.
pub fn y_to_batch_major(y: &[f32], t: usize, d: usize, b: usize, h: usize) -> Vec<f32> {
    // [T, D*B*H] viewed as [T, D, B*H]: first [T, D, B, H] -> [T, B, D, H] per time step, then swap T and B.
    let mut per_t = Vec::with_capacity(y.len());
    for tt in 0..t {
        per_t.extend(swap_axes(&y[tt * d * b * h..(tt + 1) * d * b * h], d, b, h));
    }
    swap_axes(&per_t, t, b, d * h)
}
