//! The ONNX `GRU` and `RNN` operators against ONNX Runtime's answers and the onnx package's node tests
//! (`tools/fixtures/onnx_gru_rnn_golden.py`) in both layouts, against their plain references (bit for
//! bit in each backend's rounding) in every direction and layout, on 1 and 2 threads; and their errors.

use crate::common::{fixtures, floats, opt_floats, usize_of, y_to_batch_major, FRAMEWORK_TOL};
use masked_rnn::fuzzing::close;
use masked_rnn::onnx::{swap_axes, Direction, Layout, OnnxGru, OnnxGruAttrs, OnnxOutputs, OnnxRnn, OnnxRnnAttrs};
use masked_rnn::{kernel, Activation, ErrorKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// A fixture's operator in `layout`: `(forward_all, forward_reference)` as closures of
/// `(x, h0, threads)`.
type Run = Box<dyn Fn(&[f32], Option<&[f32]>, usize) -> (Vec<f32>, Vec<f32>, usize)>;

fn fixture_node(f: &Value, layout: Layout) -> Run {
    let direction = match f["direction"].as_str().unwrap() {
        "forward" => Direction::Forward,
        "reverse" => Direction::Reverse,
        "bidirectional" => Direction::Bidirectional,
        d => panic!("direction {d}"),
    };
    // The attributes exactly as ONNX Runtime was given them.
    let names: Vec<&str> = f["activations"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    let list = |k: &str| opt_floats(&f[k]).unwrap_or_default();
    let acts = Activation::from_onnx_attributes(
        &names,
        &list("onnx_attr_activation_alpha"),
        &list("onnx_attr_activation_beta"),
    )
    .unwrap();
    let clip = f["clip"].as_f64().map(|c| c as f32);
    let (t, b, i, h) =
        (usize_of(&f["seq_length"]), usize_of(&f["batch"]), usize_of(&f["input"]), usize_of(&f["hidden"]));
    let lens: Option<Vec<i32>> =
        f["sequence_lens"].as_array().map(|l| l.iter().map(|v| v.as_i64().unwrap() as i32).collect());
    let (w, r, bias) = (floats(&f["w"]), floats(&f["r"]), opt_floats(&f["b"]));
    if f["kind"] == "onnx_gru" {
        let attrs = OnnxGruAttrs::new(h, direction)
            .layout(layout)
            .clip(clip)
            .linear_before_reset(f["linear_before_reset"].as_u64() == Some(1))
            .activations(acts);
        let node = OnnxGru::new(attrs, i, &w, &r, bias.as_deref()).unwrap();
        Box::new(move |x, h0, threads| {
            let (got, stats) = node.forward_all(x, t, b, lens.as_deref(), h0, threads).unwrap();
            (got.y, got.y_h, stats.steps_computed)
        })
    } else {
        let attrs = OnnxRnnAttrs::new(h, direction).layout(layout).clip(clip).activations(acts);
        let node = OnnxRnn::new(attrs, i, &w, &r, bias.as_deref()).unwrap();
        Box::new(move |x, h0, threads| {
            let (got, stats) = node.forward_all(x, t, b, lens.as_deref(), h0, threads).unwrap();
            (got.y, got.y_h, stats.steps_computed)
        })
    }
}

/// Every fixture of `dir` within the framework tolerance, in its layout and (for layout 0) transposed to
/// layout 1, on 1 and 2 threads; returns the outputs compared.
fn fixtures_match(dir: &str, kind: &str) -> usize {
    let cases = fixtures(dir, kind);
    let mut compared = 0;
    for (name, f) in &cases {
        let (t, b, h) = (usize_of(&f["seq_length"]), usize_of(&f["batch"]), usize_of(&f["hidden"]));
        let i = usize_of(&f["input"]);
        let stored = if f["layout"].as_u64() == Some(1) { Layout::BatchMajor } else { Layout::SeqMajor };
        let d = if f["direction"] == "bidirectional" { 2 } else { 1 };
        let valid: usize =
            f["sequence_lens"].as_array().map_or(t * b, |l| l.iter().map(|v| v.as_u64().unwrap() as usize).sum());
        let (x, h0) = (floats(&f["x"]), opt_floats(&f["initial_h"]));
        let (y, y_h) = (opt_floats(&f["y"]), opt_floats(&f["y_h"]));
        let mut layouts = vec![(stored, x.clone(), h0.clone(), y.clone(), y_h.clone())];
        if stored == Layout::SeqMajor {
            let tr_state = |s: &Option<Vec<f32>>| s.as_ref().map(|s| swap_axes(s, d, b, h));
            let y1 = y.as_ref().map(|y| y_to_batch_major(y, t, d, b, h));
            layouts.push((Layout::BatchMajor, swap_axes(&x, t, b, i), tr_state(&h0), y1, tr_state(&y_h)));
        }
        for (layout, x, h0, want_y, want_h) in layouts {
            let run = fixture_node(f, layout);
            for threads in [1, 2] {
                let (got_y, got_h, steps) = run(&x, h0.as_deref(), threads);
                assert_eq!(steps, valid * d, "{name}: steps computed");
                for (what, got, want) in [("Y", &got_y, &want_y), ("Y_h", &got_h, &want_h)] {
                    if let Some(want) = want {
                        close(&format!("{name} {layout:?} {what}"), got, want, FRAMEWORK_TOL).unwrap();
                        compared += 1;
                    }
                }
            }
        }
    }
    compared
}

#[test]
fn gru_fixtures_match_onnx_runtime_and_node_tests() {
    assert!(fixtures_match("onnx_gru", "onnx_gru") >= 200);
}

#[test]
fn rnn_fixtures_match_onnx_runtime_and_node_tests() {
    assert!(fixtures_match("onnx_rnn", "onnx_rnn") >= 180);
}

fn uniform(rng: &mut StdRng, n: usize, s: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-s..s)).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

const DIRECTIONS: [Direction; 3] = [Direction::Forward, Direction::Reverse, Direction::Bidirectional];
const ACTS: [Activation; 6] = [
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::Relu,
    Activation::LeakyRelu { alpha: 0.1 },
    Activation::ScaledTanh { alpha: 1.5, beta: 0.7 },
    Activation::Softsign,
];

/// One random call's shapes and inputs.
struct Case {
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    lens: Option<Vec<i32>>,
    x: Vec<f32>,
    h0: Option<Vec<f32>>,
    direction: Direction,
    layout: Layout,
    clip: Option<f32>,
}

fn random_case(rng: &mut StdRng, case: usize) -> Case {
    let (t, b, i) = (rng.random_range(1..9), rng.random_range(1..10), rng.random_range(1..12));
    let h = [1, 3, 8, 9, 16, 17, 33][case % 7];
    let direction = DIRECTIONS[case % 3];
    let lens = rng.random_bool(0.7).then(|| (0..b).map(|_| rng.random_range(0..=t as i32)).collect());
    let x = uniform(rng, t * b * i, 1.0);
    let h0 = rng.random_bool(0.5).then(|| uniform(rng, direction.count() * b * h, 1.0));
    let layout = if rng.random_bool(0.5) { Layout::BatchMajor } else { Layout::SeqMajor };
    let clip = rng.random_bool(0.3).then(|| rng.random_range(0.5..2.0));
    Case { t, b, i, h, lens, x, h0, direction, layout, clip }
}

fn random_acts(rng: &mut StdRng, n: usize) -> Vec<Activation> {
    if rng.random_bool(0.5) {
        Vec::new()
    } else {
        (0..n).map(|_| ACTS[rng.random_range(0..ACTS.len())]).collect()
    }
}

/// `run(case, threads)` and `reference(case)` agree bit for bit, on 1 and 2 threads, and compute the
/// valid steps only.
fn agree(c: &Case, run: &dyn Fn(usize) -> (Vec<f32>, Vec<f32>, usize), reference: (Vec<f32>, Vec<f32>), what: &str) {
    let valid = c.lens.as_ref().map_or(c.t * c.b, |l| l.iter().map(|&v| v as usize).sum()) * c.direction.count();
    for threads in [1, 2] {
        let (y, y_h, steps) = run(threads);
        assert_eq!(steps, valid, "{what}");
        assert_eq!(bits(&y), bits(&reference.0), "Y: {what} threads {threads}");
        assert_eq!(bits(&y_h), bits(&reference.1), "Y_h: {what} threads {threads}");
    }
}

#[test]
fn gru_equals_reference_in_every_direction_and_layout() {
    let mut rng = StdRng::seed_from_u64(21);
    for case in 0..120 {
        let c = random_case(&mut rng, case);
        let d = c.direction.count();
        let (w, r, b) = (
            uniform(&mut rng, d * 3 * c.h * c.i, 0.5),
            uniform(&mut rng, d * 3 * c.h * c.h, 0.5),
            uniform(&mut rng, d * 6 * c.h, 0.5),
        );
        let acts = random_acts(&mut rng, 2 * d);
        let lbr = rng.random_bool(0.5);
        let bias = rng.random_bool(0.8).then_some(&b[..]);
        for backend in kernel::available() {
            let attrs = OnnxGruAttrs::new(c.h, c.direction)
                .layout(c.layout)
                .clip(c.clip)
                .linear_before_reset(lbr)
                .activations(acts.clone());
            let node = OnnxGru::with_backend(attrs, c.i, &w, &r, bias, backend).unwrap();
            let reference = node.forward_reference(&c.x, c.t, c.b, c.lens.as_deref(), c.h0.as_deref()).unwrap();
            assert!(reference.y_c.is_empty());
            let run = |threads| {
                let (got, stats) =
                    node.forward_all(&c.x, c.t, c.b, c.lens.as_deref(), c.h0.as_deref(), threads).unwrap();
                (got.y, got.y_h, stats.steps_computed)
            };
            let what = format!("case {case} {} lbr {lbr} {:?} {:?}", backend.name, c.direction, c.layout);
            agree(&c, &run, (reference.y, reference.y_h), &what);
        }
    }
}

#[test]
fn rnn_equals_reference_in_every_direction_and_layout() {
    let mut rng = StdRng::seed_from_u64(22);
    for case in 0..120 {
        let c = random_case(&mut rng, case);
        let d = c.direction.count();
        let (w, r, b) = (
            uniform(&mut rng, d * c.h * c.i, 0.5),
            uniform(&mut rng, d * c.h * c.h, 0.5),
            uniform(&mut rng, d * 2 * c.h, 0.5),
        );
        let acts = random_acts(&mut rng, d);
        for backend in kernel::available() {
            let attrs = OnnxRnnAttrs::new(c.h, c.direction).layout(c.layout).clip(c.clip).activations(acts.clone());
            let node = OnnxRnn::with_backend(attrs, c.i, &w, &r, Some(&b), backend).unwrap();
            let reference = node.forward_reference(&c.x, c.t, c.b, c.lens.as_deref(), c.h0.as_deref()).unwrap();
            let run = |threads| {
                let (got, stats) =
                    node.forward_all(&c.x, c.t, c.b, c.lens.as_deref(), c.h0.as_deref(), threads).unwrap();
                (got.y, got.y_h, stats.steps_computed)
            };
            let what = format!("case {case} {} {:?} {:?}", backend.name, c.direction, c.layout);
            agree(&c, &run, (reference.y, reference.y_h), &what);
        }
    }
}

/// A hand-checked GRU step in both placements of the reset gate (one unit, one input, zero state
/// except where noted), against values computed here in f64.
#[test]
fn gru_placements_differ_as_defined() {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    // W = [z, r, h] = [0.5, -0.3, 0.8], R = [0.2, 0.4, -0.6], biases zero, x = 1, h0 = 0.5.
    let (w, r) = ([0.5f32, -0.3, 0.8], [0.2f32, 0.4, -0.6]);
    let (x, h0) = ([1.0f32], [0.5f32]);
    let z = sig(0.5 + 0.2 * 0.5);
    let rg = sig(-0.3 + 0.4 * 0.5);
    // Both placements give the same n when the bias is zero: r * (h R_h) == (r h) R_h.
    let n = (0.8 + rg * (0.5 * -0.6)).tanh();
    let want = (1.0 - z) * n + z * 0.5;
    for lbr in [false, true] {
        let node =
            OnnxGru::new(OnnxGruAttrs::new(1, Direction::Forward).linear_before_reset(lbr), 1, &w, &r, None).unwrap();
        let (got, _) = node.forward_all(&x, 1, 1, None, Some(&h0), 1).unwrap();
        assert!((f64::from(got.y_h[0]) - want).abs() < 1e-6, "lbr {lbr}: {} vs {want}", got.y_h[0]);
    }
    // With a recurrent candidate bias Rb_h the placements differ: r (h R_h + Rb_h) vs (r h) R_h + Rb_h.
    let mut b = [0.0f32; 6];
    b[5] = 0.7;
    let n_after = (0.8 + rg * (0.5 * -0.6 + 0.7)).tanh();
    let n_before = (0.8 + rg * 0.5 * -0.6 + 0.7).tanh();
    for (lbr, n) in [(true, n_after), (false, n_before)] {
        let node = OnnxGru::new(OnnxGruAttrs::new(1, Direction::Forward).linear_before_reset(lbr), 1, &w, &r, Some(&b))
            .unwrap();
        let (got, _) = node.forward_all(&x, 1, 1, None, Some(&h0), 1).unwrap();
        let want = (1.0 - z) * n + z * 0.5;
        assert!((f64::from(got.y_h[0]) - want).abs() < 1e-6, "lbr {lbr}: {} vs {want}", got.y_h[0]);
    }
}

#[test]
fn bad_inputs_are_errors() {
    let attrs = OnnxGruAttrs::new(2, Direction::Forward);
    let (w, r) = (vec![0.0; 3 * 2 * 3], vec![0.0; 3 * 2 * 2]);
    let kind = |e: masked_rnn::Error| e.kind();
    assert_eq!(kind(OnnxGru::new(attrs.clone(), 3, &w[1..], &r, None).unwrap_err()), ErrorKind::BadShape);
    assert_eq!(kind(OnnxGru::new(attrs.clone(), 3, &w, &r, Some(&[0.0; 6])).unwrap_err()), ErrorKind::BadShape);
    let three = attrs.clone().activations(vec![Activation::Tanh; 3]);
    assert_eq!(kind(OnnxGru::new(three, 3, &w, &r, None).unwrap_err()), ErrorKind::BadArgument);
    assert_eq!(kind(OnnxGru::new(attrs.clone().clip(Some(0.0)), 3, &w, &r, None).unwrap_err()), ErrorKind::BadArgument);
    assert_eq!(
        kind(OnnxGru::new(OnnxGruAttrs::new(0, Direction::Forward), 3, &[], &[], None).unwrap_err()),
        ErrorKind::BadArgument
    );
    let big = OnnxRnnAttrs::new(usize::MAX / 2, Direction::Bidirectional);
    assert_eq!(kind(OnnxRnn::new(big, 3, &[], &[], None).unwrap_err()), ErrorKind::Overflow);

    let node = OnnxGru::new(attrs, 3, &w, &r, None).unwrap();
    let x = vec![0.0; 4 * 2 * 3];
    // A length past seq_length, a negative one, X of the wrong length, a Y_c buffer.
    assert_eq!(kind(node.forward_all(&x, 4, 2, Some(&[5, 1]), None, 1).unwrap_err()), ErrorKind::BadArgument);
    assert_eq!(kind(node.forward_all(&x, 4, 2, Some(&[-1, 1]), None, 1).unwrap_err()), ErrorKind::BadArgument);
    assert_eq!(kind(node.forward_all(&x[1..], 4, 2, None, None, 1).unwrap_err()), ErrorKind::BadShape);
    assert_eq!(kind(node.forward_all(&x, 4, 2, None, Some(&[0.0; 3]), 1).unwrap_err()), ErrorKind::BadShape);
    let mut y_c = vec![0.0; 4];
    let out = OnnxOutputs { y_c: Some(&mut y_c), ..Default::default() };
    assert_eq!(kind(node.forward(&x, 4, 2, None, None, out, 1).unwrap_err()), ErrorKind::BadArgument);
    // NaN and infinities are values like any other: they propagate, never panic.
    let mut xn = x.clone();
    xn[0] = f32::NAN;
    xn[4] = f32::INFINITY;
    let (got, _) = node.forward_all(&xn, 4, 2, None, None, 2).unwrap();
    let want = node.forward_reference(&xn, 4, 2, None, None).unwrap();
    assert_eq!(bits(&got.y), bits(&want.y));
}
