//! The float64 reference backward (`masked_rnn::reference::backward`) against the model it claims to
//! differentiate: its forward equals the crate's f32 references, and central finite differences of that
//! forward agree with the backward for every input (x, every weight, peepholes, initial states), on small
//! random cases covering masks, directions, every activation, clip, input_forget and the framework stacks.

use masked_rnn::bidirectional::{BidirectionalState, KerasBidirectional, MergeMode};
use masked_rnn::cells::grads::LstmGrads;
use masked_rnn::reference::backward::*;
use masked_rnn::reference::{keras_lstm, onnx_lstm, Rounding};
use masked_rnn::torch::{TorchLstm, TorchLstmParams};
use masked_rnn::{Activation, CellSpec, KerasLstmOptions, LstmWeights, SeqView};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Finite-difference step and the agreement required (relative to `max(1, |g|)`).
const EPS: f64 = 1e-6;
const FD_TOL: f64 = 1e-6;
/// The f64 forward against the crate's f32 references.
const F32_TOL: f64 = 1e-5;
/// How far every activation argument must stay from a kink for finite differences to be valid.
const KINK_MARGIN: f64 = 1e-3;

fn uniform(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `got` (f64) against `want` (f32) within [`F32_TOL`] relative to `max(1, |want|)`.
fn close_f32(what: &str, got: &[f64], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let w = f64::from(w);
        assert!((g - w).abs() <= F32_TOL * w.abs().max(1.0), "{what}[{k}]: f64 {g} vs f32 reference {w}");
    }
}

/// The worst finite-difference disagreement seen and how many partial derivatives were checked.
#[derive(Default, Debug)]
struct FdStats {
    worst: f64,
    checked: usize,
}

/// Checks every element of every tensor in `vars` against `grads` by central differences of `loss`.
fn fd_check(
    what: &str,
    names: &[&str],
    vars: &[Vec<f64>],
    grads: &[Vec<f64>],
    loss: impl Fn(&[Vec<f64>]) -> f64,
    stats: &mut FdStats,
) {
    assert_eq!((names.len(), vars.len()), (grads.len(), grads.len()), "{what}: tensors");
    let mut v = vars.to_vec();
    for (k, g) in grads.iter().enumerate() {
        assert_eq!(g.len(), v[k].len(), "{what}: {} length", names[k]);
        assert!(!g.is_empty(), "{what}: {} is empty", names[k]);
        for e in 0..g.len() {
            let orig = v[k][e];
            v[k][e] = orig + EPS;
            let lp = loss(&v);
            v[k][e] = orig - EPS;
            let lm = loss(&v);
            v[k][e] = orig;
            let fd = (lp - lm) / (2.0 * EPS);
            let err = (fd - g[e]).abs() / g[e].abs().max(1.0);
            assert!(err <= FD_TOL, "{what}: d{}[{e}]: backward {} vs finite difference {fd}", names[k], g[e]);
            stats.worst = stats.worst.max(err);
            stats.checked += 1;
        }
    }
}

/// A parameter set as FD variables: kernel, recurrent, bias and (if any) peepholes.
fn param_vars(p: &LstmParams64) -> Vec<Vec<f64>> {
    let mut v = vec![p.kernel.clone(), p.recurrent.clone(), p.bias.clone()];
    v.extend(p.peephole.clone());
    v
}

/// The inverse of [`param_vars`]: takes the variables from the front of `vars`.
fn params_from(like: &LstmParams64, vars: &mut std::slice::Iter<'_, Vec<f64>>) -> LstmParams64 {
    let mut p = like.clone();
    p.kernel.clone_from(vars.next().unwrap());
    p.recurrent.clone_from(vars.next().unwrap());
    p.bias.clone_from(vars.next().unwrap());
    if p.peephole.is_some() {
        p.peephole = Some(vars.next().unwrap().clone());
    }
    p
}

/// Gradients in the order of [`param_vars`].
fn grad_vars(g: &LstmGrads<f64>) -> Vec<Vec<f64>> {
    let mut v = vec![g.d_kernel.clone(), g.d_recurrent.clone(), g.d_bias.clone()];
    v.extend(g.d_peephole.clone());
    v
}

fn param_names(p: &LstmParams64, tag: &str) -> Vec<String> {
    let mut n = vec![format!("kernel{tag}"), format!("recurrent{tag}"), format!("bias{tag}")];
    if p.peephole.is_some() {
        n.push(format!("peephole{tag}"));
    }
    n
}

/// Distance of the valid steps on `tape` from any kink (activation kinks, clip bounds), and the number of
/// clipped gate arguments.
fn kink_margin<'a>(steps: impl Iterator<Item = (&'a StepTape, &'a LstmParams64, &'a CellSpec)>) -> (f64, usize) {
    let (mut margin, mut clipped) = (f64::INFINITY, 0);
    for (s, p, cell) in steps {
        for args in s.arguments(p, cell) {
            for (k, &a) in args[..4].iter().enumerate() {
                if k == 1 && cell.input_forget {
                    continue;
                }
                let act = if k == 2 { cell.cell } else { cell.gate };
                let d = match cell.clip.map(f64::from) {
                    Some(cl) if a.abs() >= cl => {
                        clipped += 1;
                        a.abs() - cl
                    }
                    Some(cl) => (cl - a.abs()).min(kink_distance(act, a)),
                    None => kink_distance(act, a),
                };
                margin = margin.min(d);
            }
            margin = margin.min(kink_distance(cell.output, args[4]));
        }
    }
    (margin, clipped)
}

/// Tries seeds `base, base + 1, ...` until `draw` accepts one (a case away from kinks).
fn draw<T>(base: u64, mut draw: impl FnMut(&mut StdRng) -> Option<T>) -> T {
    for k in 0..200 {
        if let Some(v) = draw(&mut StdRng::seed_from_u64(base * 1000 + k)) {
            return v;
        }
    }
    panic!("no acceptable draw for seed {base}");
}

/// Mask rows.
#[derive(Clone, Copy, Debug)]
enum Row {
    Valid,
    Post(usize),
    Pre(usize),
    /// Random interior holes (first and last step valid, at least one hole).
    Holes,
    Masked,
}

fn mask_rows(rows: &[Row], t: usize, rng: &mut StdRng) -> Vec<bool> {
    rows.iter()
        .flat_map(|r| -> Vec<bool> {
            match *r {
                Row::Valid => vec![true; t],
                Row::Post(n) => (0..t).map(|k| k < n).collect(),
                Row::Pre(n) => (0..t).map(|k| k >= t - n).collect(),
                Row::Holes => {
                    let mut m: Vec<bool> = (0..t).map(|_| rng.random_bool(0.5)).collect();
                    (m[0], m[t - 1], m[1 + rng.random_range(0..t - 2)]) = (true, true, false);
                    m
                }
                Row::Masked => vec![false; t],
            }
        })
        .collect()
}

/// Activations with parameters: every ONNX activation, both `hard_sigmoid` flavours.
fn activations() -> Vec<Activation> {
    let acts = vec![
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Relu,
        Activation::Affine { alpha: 0.7, beta: 0.1 },
        Activation::LeakyRelu { alpha: 0.1 },
        Activation::ThresholdedRelu { alpha: 0.2 },
        Activation::ScaledTanh { alpha: 1.3, beta: 0.8 },
        Activation::HARD_SIGMOID_KERAS2,
        Activation::HARD_SIGMOID_KERAS3,
        Activation::Elu { alpha: 0.9 },
        Activation::Softsign,
        Activation::Softplus,
    ];
    let mut codes: Vec<i32> = acts.iter().map(|a| a.code()).collect();
    codes.dedup();
    assert_eq!(codes, (0..=10).collect::<Vec<_>>(), "all 11 activations");
    acts
}

#[test]
fn activation_derivatives_match_finite_differences() {
    let mut n = 0;
    for a in activations() {
        for k in 0..41 {
            let x = -4.0 + 0.2 * f64::from(k) + 0.013;
            if kink_distance(a, x) < 1e-3 {
                continue;
            }
            let fd = (act64(a, x + 1e-7) - act64(a, x - 1e-7)) / 2e-7;
            assert!((fd - dact64(a, x)).abs() < 1e-7, "{a:?} at {x}: {fd} vs {}", dact64(a, x));
            assert!((act64(a, x) - f64::from(a.apply(x as f32))).abs() < 1e-6, "{a:?} at {x}");
            n += 1;
        }
    }
    assert!(n > 400, "{n} points");
    // Kink conventions (C_ABI.md section 3).
    assert_eq!(dact64(Activation::Relu, 0.0), 0.0);
    assert_eq!(dact64(Activation::ThresholdedRelu { alpha: 0.5 }, 0.5), 0.0);
    assert_eq!(dact64(Activation::HARD_SIGMOID_KERAS2, 2.5), 0.0);
    assert_eq!(dact64(Activation::HARD_SIGMOID_KERAS2, -2.5), 0.0);
    assert_eq!(dact64(Activation::HARD_SIGMOID_KERAS2, 2.4), f64::from(0.2f32));
    assert_eq!(act64(Activation::Softplus, 800.0), 800.0);
}

#[test]
fn f64_importers_match_the_f32_ones() {
    let rng = &mut StdRng::seed_from_u64(7);
    let (i, h) = (3, 2);
    let g = 4 * h;
    let (k, r, b) = (uniform(rng, i * g, 1.0), uniform(rng, h * g, 1.0), uniform(rng, g, 1.0));
    let p = uniform(rng, 3 * h, 1.0);
    let exact = |w: LstmWeights| LstmParams64::from_weights(&w);
    assert_eq!(
        LstmParams64::from_keras(i, h, &f64s(&k), &f64s(&r), Some(&f64s(&b))),
        exact(LstmWeights::from_keras(i, h, &k, &r, Some(&b)).unwrap())
    );
    assert_eq!(
        LstmParams64::from_pytorch(i, h, &f64s(&k), &f64s(&r), Some(&f64s(&b)), None),
        exact(LstmWeights::from_pytorch(i, h, &k, &r, Some(&b), None).unwrap())
    );
    let bb = [b.clone(), vec![0.0; g]].concat();
    assert_eq!(
        LstmParams64::from_onnx(i, h, &f64s(&k), &f64s(&r), Some(&f64s(&bb)), Some(&f64s(&p))),
        exact(LstmWeights::from_onnx(i, h, &k, &r, Some(&bb), Some(&p)).unwrap())
    );
    // Both halves of the bias add up.
    let split = LstmParams64::from_pytorch(i, h, &f64s(&k), &f64s(&r), Some(&f64s(&b)), Some(&f64s(&b)));
    assert_eq!(split.bias, f64s(&b).iter().map(|v| 2.0 * v).collect::<Vec<_>>());
}

/// One Keras-layer case.
#[derive(Clone, Debug)]
struct KerasCase {
    name: String,
    cell: CellSpec,
    peephole: bool,
    go_backwards: bool,
    zero_output_for_mask: bool,
    initial: bool,
    rows: Vec<Row>,
}

const HOLEY: [Row; 4] = [Row::Holes, Row::Pre(3), Row::Masked, Row::Post(2)];

fn keras_cases() -> Vec<KerasCase> {
    let base = KerasCase {
        name: String::new(),
        cell: CellSpec::default(),
        peephole: false,
        go_backwards: false,
        zero_output_for_mask: false,
        initial: false,
        rows: HOLEY.to_vec(),
    };
    let case = |name: &str, f: &dyn Fn(&mut KerasCase)| {
        let mut c = base.clone();
        c.name = name.into();
        f(&mut c);
        c
    };
    let mut cases = vec![
        case("holes_pre_padding_fully_masked", &|_| {}),
        case("all_valid", &|c| c.rows = vec![Row::Valid; 3]),
        case("go_backwards", &|c| c.go_backwards = true),
        case("zero_output_for_mask", &|c| c.zero_output_for_mask = true),
        case("go_backwards_zero_output_initial", &|c| {
            (c.go_backwards, c.zero_output_for_mask, c.initial) = (true, true, true)
        }),
        case("initial_states", &|c| c.initial = true),
        case("peepholes", &|c| (c.peephole, c.initial) = (true, true)),
        case("clip", &|c| {
            c.cell = CellSpec::onnx(Activation::Sigmoid, Activation::Tanh, Activation::Tanh, Some(0.5), false)
        }),
        case("input_forget", &|c| {
            c.cell = CellSpec::onnx(Activation::Sigmoid, Activation::Tanh, Activation::Tanh, None, true);
            c.initial = true;
        }),
        case("peepholes_clip_input_forget_go_backwards", &|c| {
            c.cell = CellSpec::onnx(Activation::Sigmoid, Activation::Tanh, Activation::Tanh, Some(0.6), true);
            (c.peephole, c.initial, c.go_backwards) = (true, true, true);
        }),
    ];
    for a in activations() {
        // Initial states keep c away from an exact 0 (a structural kink of relu-like output activations).
        cases.push(case(&format!("gate_{a:?}"), &|c| {
            (c.cell, c.initial) = (CellSpec::keras(Activation::Tanh, a), true)
        }));
        cases.push(case(&format!("activation_{a:?}"), &|c| {
            (c.cell, c.initial) = (CellSpec::keras(a, Activation::Sigmoid), true)
        }));
    }
    cases
}

#[test]
fn keras_layer_forward_matches_f32_and_backward_matches_finite_differences() {
    let (b, t, i, h) = (4, 5, 3, 3);
    let mut stats = FdStats::default();
    let (mut cases_run, mut masked_zeros, mut clipped_cases) = (0, 0, 0);
    for (n, c) in keras_cases().into_iter().enumerate() {
        let b = c.rows.len().min(b);
        let case = draw(n as u64, |rng| {
            let g = 4 * h;
            let w = if c.peephole {
                let (wk, rk, bk, pk) = (
                    uniform(rng, g * i, 0.6),
                    uniform(rng, g * h, 0.6),
                    uniform(rng, 2 * g, 0.3),
                    uniform(rng, 3 * h, 0.6),
                );
                LstmWeights::from_onnx(i, h, &wk, &rk, Some(&bk), Some(&pk)).unwrap()
            } else {
                let (kk, rk, bk) = (uniform(rng, i * g, 0.6), uniform(rng, h * g, 0.6), uniform(rng, g, 0.3));
                LstmWeights::from_keras(i, h, &kk, &rk, Some(&bk)).unwrap()
            };
            let x = uniform(rng, b * t * i, 1.0);
            let mask = mask_rows(&c.rows[..b], t, rng);
            let init = c.initial.then(|| (uniform(rng, b * h, 0.8), uniform(rng, b * h, 0.8)));
            let p = LstmParams64::from_weights(&w);
            let (x64, init64) = (f64s(&x), init.as_ref().map(|(a, bb)| (f64s(a), f64s(bb))));
            let init_ref = init64.as_ref().map(|(a, bb)| (&a[..], &bb[..]));
            let (_, tape) =
                keras_lstm_tape(&p, &c.cell, &x64, &mask, b, t, c.go_backwards, c.zero_output_for_mask, init_ref);
            let (margin, clipped) = kink_margin(tape.iter().flatten().map(|s| (s, &p, &c.cell)));
            (margin >= KINK_MARGIN).then_some((w, x, mask, init, p, x64, init64, clipped))
        });
        let (w, x, mask, init, p, x64, init64, clipped) = case;
        if c.cell.clip.is_some() {
            assert!(clipped > 0, "{}: nothing clipped", c.name);
            clipped_cases += 1;
        }
        let init_ref = init64.as_ref().map(|(a, bb)| (&a[..], &bb[..]));
        let got = keras_lstm_f64(&p, &c.cell, &x64, &mask, b, t, c.go_backwards, c.zero_output_for_mask, init_ref);
        let want = keras_lstm(
            &w,
            &c.cell,
            &x,
            &mask,
            b,
            t,
            c.go_backwards,
            c.zero_output_for_mask,
            init.as_ref().map(|(a, bb)| (&a[..], &bb[..])),
            Rounding::Separate,
        )
        .unwrap();
        for (k, g, e) in [
            ("y", &got.y, &want.y),
            ("last", &got.last_output, &want.last_output),
            ("h_n", &got.h_n, &want.h_n),
            ("c_n", &got.c_n, &want.c_n),
        ] {
            close_f32(&format!("{} {k}", c.name), g, e);
        }
        // Backward against finite differences of the loss sum(upstream * outputs).
        let rng = &mut StdRng::seed_from_u64(10_000 + n as u64);
        let ups: Vec<Vec<f64>> =
            [b * t * h, b * h, b * h, b * h].iter().map(|&m| f64s(&uniform(rng, m, 1.0))).collect();
        let up = KerasUpstream64 {
            dy: Some(&ups[0]),
            d_last_output: Some(&ups[1]),
            d_h_n: Some(&ups[2]),
            d_c_n: Some(&ups[3]),
        };
        let gr =
            keras_lstm_backward(&p, &c.cell, &x64, &mask, b, t, c.go_backwards, c.zero_output_for_mask, init_ref, &up);
        let zeros = vec![0.0; b * h];
        let (h0, c0) = init64.clone().unwrap_or((zeros.clone(), zeros));
        let mut vars = vec![x64.clone()];
        vars.extend(param_vars(&p));
        vars.extend([h0, c0]);
        let mut grads = vec![gr.dx.clone()];
        grads.extend(grad_vars(&gr.params));
        grads.extend([gr.d_initial_h.clone(), gr.d_initial_c.clone()]);
        let names: Vec<String> =
            ["x".to_string()].into_iter().chain(param_names(&p, "")).chain(["h0".into(), "c0".into()]).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        fd_check(
            &c.name,
            &names,
            &vars,
            &grads,
            |v| {
                let mut it = v[1..].iter();
                let q = params_from(&p, &mut it);
                let (h0, c0) = (it.next().unwrap(), it.next().unwrap());
                let o = keras_lstm_f64(
                    &q,
                    &c.cell,
                    &v[0],
                    &mask,
                    b,
                    t,
                    c.go_backwards,
                    c.zero_output_for_mask,
                    Some((h0, c0)),
                );
                dot(&ups[0], &o.y) + dot(&ups[1], &o.last_output) + dot(&ups[2], &o.h_n) + dot(&ups[3], &o.c_n)
            },
            &mut stats,
        );
        // dx at masked steps is exactly +0.0.
        for (s, &valid) in mask.iter().enumerate() {
            if !valid {
                assert!(gr.dx[s * i..(s + 1) * i].iter().all(|v| v.to_bits() == 0), "{}: dx at masked step", c.name);
                masked_zeros += 1;
            }
        }
        cases_run += 1;
    }
    assert!(cases_run >= 34 && masked_zeros > 50 && clipped_cases >= 2, "{cases_run} {masked_zeros} {clipped_cases}");
    assert!(stats.checked > 5000, "{stats:?}");
    println!("keras layer: {cases_run} cases, {} partials, worst FD error {:.2e}", stats.checked, stats.worst);
}

#[test]
fn keras_upstream_of_constant_outputs_changes_nothing() {
    // zero_output_for_mask: masked outputs are zeros; without it, outputs before the first valid step are.
    let (b, t, i, h) = (3, 6, 2, 3);
    let mut n = 0;
    for (zofm, gb) in [(true, false), (true, true), (false, false), (false, true)] {
        let rng = &mut StdRng::seed_from_u64(77);
        let p = LstmParams64::from_keras(
            i,
            h,
            &f64s(&uniform(rng, i * 4 * h, 0.6)),
            &f64s(&uniform(rng, h * 4 * h, 0.6)),
            None,
        );
        let x = f64s(&uniform(rng, b * t * i, 1.0));
        let mask = mask_rows(&[Row::Holes, Row::Pre(2), Row::Masked], t, rng);
        let dy = f64s(&uniform(rng, b * t * h, 1.0));
        let cell = CellSpec::default();
        let run = |dy: &[f64]| {
            let up = KerasUpstream64 { dy: Some(dy), ..Default::default() };
            keras_lstm_backward(&p, &cell, &x, &mask, b, t, gb, zofm, None, &up)
        };
        let base = run(&dy);
        let mut noisy = dy.clone();
        for s in 0..b {
            let mut seen_valid = false;
            for pos in 0..t {
                let tt = if gb { t - 1 - pos } else { pos };
                seen_valid |= mask[s * t + tt];
                if !mask[s * t + tt] && (zofm || !seen_valid) {
                    noisy[(s * t + pos) * h..(s * t + pos + 1) * h].iter_mut().for_each(|v| *v += 3.5);
                    n += 1;
                }
            }
        }
        assert_eq!(bits(&run(&noisy).dx), bits(&base.dx));
        assert_eq!(bits(&run(&noisy).params.d_kernel), bits(&base.params.d_kernel));
    }
    assert!(n > 10, "{n}");
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// One ONNX case: per direction (gate, cell, output activations), clip, input_forget, peepholes.
struct OnnxCase {
    name: &'static str,
    reverse_only: bool,
    dirs: usize,
    acts: [Activation; 3],
    clip: Option<f32>,
    input_forget: bool,
    peephole: bool,
    initial: bool,
}

#[test]
fn onnx_operator_forward_matches_f32_and_backward_matches_finite_differences() {
    let (t, b, i, h) = (5, 4, 3, 3);
    let lengths = [5, 0, 1, 3];
    let st = [Activation::Sigmoid, Activation::Tanh, Activation::Tanh];
    let mut cases = Vec::new();
    for (dirs, reverse_only) in [(1, false), (1, true), (2, false)] {
        let c = |name, acts, clip, input_forget, peephole, initial| OnnxCase {
            name,
            reverse_only,
            dirs,
            acts,
            clip,
            input_forget,
            peephole,
            initial,
        };
        cases.push(c("plain", st, None, false, false, false));
        cases.push(c("peepholes_initial", st, None, false, true, true));
        cases.push(c("clip_input_forget_peepholes", st, Some(0.5), true, true, true));
        cases.push(c(
            "activations",
            [Activation::HARD_SIGMOID_KERAS2, Activation::Elu { alpha: 0.9 }, Activation::Softsign],
            None,
            false,
            false,
            true,
        ));
        cases.push(c(
            "activations_clip",
            [
                Activation::Affine { alpha: 0.3, beta: 0.5 },
                Activation::LeakyRelu { alpha: 0.1 },
                Activation::ScaledTanh { alpha: 1.3, beta: 0.8 },
            ],
            Some(0.7),
            false,
            true,
            true,
        ));
    }
    let mut stats = FdStats::default();
    let (mut run, mut padded_zeros, mut len0) = (0, 0, 0);
    for (n, c) in cases.iter().enumerate() {
        let d_n = c.dirs;
        // The second direction gets rotated activations, so directions differ.
        let cells: Vec<CellSpec> = (0..d_n)
            .map(|d| {
                let a = if d == 0 { c.acts } else { [c.acts[0], c.acts[2], c.acts[1]] };
                CellSpec::onnx(a[0], a[1], a[2], c.clip, c.input_forget)
            })
            .collect();
        let reverse = |d: usize| c.reverse_only || d == 1;
        let (ws, x, init, ps) = draw(100 + n as u64, |rng| {
            let ws: Vec<LstmWeights> = (0..d_n)
                .map(|_| {
                    let p = uniform(rng, 3 * h, 0.6);
                    let (w, r, bb) =
                        (uniform(rng, 4 * h * i, 0.6), uniform(rng, 4 * h * h, 0.6), uniform(rng, 8 * h, 0.3));
                    LstmWeights::from_onnx(i, h, &w, &r, Some(&bb), c.peephole.then_some(&p[..])).unwrap()
                })
                .collect();
            let x = uniform(rng, t * b * i, 1.0);
            let init = c.initial.then(|| (uniform(rng, d_n * b * h, 0.8), uniform(rng, d_n * b * h, 0.8)));
            let ps: Vec<LstmParams64> = ws.iter().map(LstmParams64::from_weights).collect();
            let dirs: Vec<OnnxDir64<'_>> = (0..d_n).map(|d| (&ps[d], &cells[d], reverse(d))).collect();
            let i64s = init.as_ref().map(|(a, bb)| (f64s(a), f64s(bb)));
            let (_, tape) =
                onnx_lstm_tape(&dirs, &f64s(&x), t, b, &lengths, i64s.as_ref().map(|(a, bb)| (&a[..], &bb[..])));
            let steps = tape
                .iter()
                .enumerate()
                .filter_map(|(k, s)| s.as_ref().map(|s| (s, &ps[k / (t * b)], &cells[k / (t * b)])));
            let (margin, clipped) = kink_margin(steps);
            let clip_ok = c.clip.is_none() || clipped > 0;
            (margin >= KINK_MARGIN && clip_ok).then_some((ws, x, init, ps))
        });
        let dirs: Vec<OnnxDir64<'_>> = (0..d_n).map(|d| (&ps[d], &cells[d], reverse(d))).collect();
        let x64 = f64s(&x);
        let init64 = init.as_ref().map(|(a, bb)| (f64s(a), f64s(bb)));
        let init_ref = init64.as_ref().map(|(a, bb)| (&a[..], &bb[..]));
        let (y, yh, yc) = onnx_lstm_f64(&dirs, &x64, t, b, &lengths, init_ref);
        let dirs32: Vec<(&LstmWeights, &CellSpec, bool)> = (0..d_n).map(|d| (&ws[d], &cells[d], reverse(d))).collect();
        let init32 = init.as_ref().map(|(a, bb)| (&a[..], &bb[..]));
        let (y32, yh32, yc32) = onnx_lstm(&dirs32, &x, t, b, &lengths, init32, Rounding::Separate).unwrap();
        close_f32(&format!("{} Y", c.name), &y, &y32);
        close_f32(&format!("{} Y_h", c.name), &yh, &yh32);
        close_f32(&format!("{} Y_c", c.name), &yc, &yc32);
        let rng = &mut StdRng::seed_from_u64(20_000 + n as u64);
        let ups: Vec<Vec<f64>> = [y.len(), yh.len(), yc.len()].iter().map(|&m| f64s(&uniform(rng, m, 1.0))).collect();
        let gr = onnx_lstm_backward(&dirs, &x64, t, b, &lengths, init_ref, Some(&ups[0]), Some(&ups[1]), Some(&ups[2]));
        let zeros = vec![0.0; d_n * b * h];
        let (h0, c0) = init64.clone().unwrap_or((zeros.clone(), zeros));
        let mut vars = vec![x64.clone()];
        let mut grads = vec![gr.dx.clone()];
        let mut names = vec!["x".to_string()];
        for (d, (p, g)) in ps.iter().zip(&gr.params).enumerate() {
            vars.extend(param_vars(p));
            grads.extend(grad_vars(g));
            names.extend(param_names(p, &format!("[{d}]")));
        }
        vars.extend([h0, c0]);
        grads.extend([gr.d_initial_h.clone(), gr.d_initial_c.clone()]);
        names.extend(["h0".into(), "c0".into()]);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let what = format!(
            "onnx {} {}",
            if d_n == 2 {
                "bidirectional"
            } else if c.reverse_only {
                "reverse"
            } else {
                "forward"
            },
            c.name
        );
        fd_check(
            &what,
            &names,
            &vars,
            &grads,
            |v| {
                let mut it = v[1..].iter();
                let qs: Vec<LstmParams64> = ps.iter().map(|p| params_from(p, &mut it)).collect();
                let (h0, c0) = (it.next().unwrap(), it.next().unwrap());
                let dirs: Vec<OnnxDir64<'_>> = (0..d_n).map(|d| (&qs[d], &cells[d], reverse(d))).collect();
                let (y, yh, yc) = onnx_lstm_f64(&dirs, &v[0], t, b, &lengths, Some((h0, c0)));
                dot(&ups[0], &y) + dot(&ups[1], &yh) + dot(&ups[2], &yc)
            },
            &mut stats,
        );
        // Padded steps: dx exactly +0.0; length 0: no gradient reaches the initial state.
        for (s, &len) in lengths.iter().enumerate() {
            for tt in len..t {
                let dx = &gr.dx[(tt * b + s) * i..(tt * b + s + 1) * i];
                assert!(dx.iter().all(|v| v.to_bits() == 0), "{what}: dx past the length");
                padded_zeros += 1;
            }
            if len == 0 {
                for d in 0..d_n {
                    let r = (d * b + s) * h..(d * b + s + 1) * h;
                    assert!(gr.d_initial_h[r.clone()].iter().chain(&gr.d_initial_c[r]).all(|&v| v == 0.0));
                    len0 += 1;
                }
            }
        }
        // Upstream at padded positions of Y changes nothing.
        let mut noisy = ups[0].clone();
        for tt in 0..t {
            for d in 0..d_n {
                for (s, &len) in lengths.iter().enumerate() {
                    if tt >= len {
                        noisy[((tt * d_n + d) * b + s) * h..((tt * d_n + d) * b + s + 1) * h].fill(9.0);
                    }
                }
            }
        }
        let again =
            onnx_lstm_backward(&dirs, &x64, t, b, &lengths, init_ref, Some(&noisy), Some(&ups[1]), Some(&ups[2]));
        assert_eq!(again, gr, "{what}: padded upstream changed the gradients");
        run += 1;
    }
    assert!(run == 15 && padded_zeros > 100 && len0 >= 20, "{run} {padded_zeros} {len0}");
    println!("onnx: {run} cases, {} partials, worst FD error {:.2e}", stats.checked, stats.worst);
}

fn bidi_state(s: &[Vec<f64>]) -> BidiState64<'_> {
    BidiState64 { h_f: &s[0], c_f: &s[1], h_b: &s[2], c_b: &s[3] }
}

/// `None` for an empty tensor (an output the merge mode does not have).
fn some(v: &[f64]) -> Option<&[f64]> {
    (!v.is_empty()).then_some(v)
}

#[test]
fn keras_bidirectional_forward_matches_f32_and_backward_matches_finite_differences() {
    let (b, t, i, h) = (4, 5, 3, 3);
    let merges = [MergeMode::Concat, MergeMode::Sum, MergeMode::Ave, MergeMode::Mul, MergeMode::None];
    let mut stats = FdStats::default();
    let mut run = 0;
    for (n, (merge, rs)) in merges.iter().flat_map(|&m| [(m, true), (m, false)]).enumerate() {
        let (initial, go_backwards) = (n % 2 == 0, n == 3);
        let rng = &mut StdRng::seed_from_u64(300 + n as u64);
        let g = 4 * h;
        let mut weights = || {
            LstmWeights::from_keras(
                i,
                h,
                &uniform(rng, i * g, 0.6),
                &uniform(rng, h * g, 0.6),
                Some(&uniform(rng, g, 0.3)),
            )
            .unwrap()
        };
        let (wf, wb) = (weights(), weights());
        let x = uniform(rng, b * t * i, 1.0);
        let mask = mask_rows(&HOLEY, t, rng);
        let states: Vec<Vec<f32>> = (0..4).map(|_| uniform(rng, b * h, 0.8)).collect();
        let layer32 = KerasBidirectional::new(
            wf.clone(),
            wb.clone(),
            KerasLstmOptions::default().go_backwards(go_backwards),
            merge,
            rs,
        )
        .unwrap();
        let view = SeqView::from_mask(&mask, b, t).unwrap();
        let init32 =
            initial.then(|| BidirectionalState { h_f: &states[0], c_f: &states[1], h_b: &states[2], c_b: &states[3] });
        let want = layer32.forward_reference(&x, &view, init32).unwrap();
        let (pf, pb) = (LstmParams64::from_weights(&wf), LstmParams64::from_weights(&wb));
        let layer = KerasBidi64 {
            forward: &pf,
            backward: &pb,
            cell: CellSpec::default(),
            go_backwards,
            merge,
            return_sequences: rs,
        };
        let s64: Vec<Vec<f64>> = states.iter().map(|s| f64s(s)).collect();
        let init = initial.then(|| bidi_state(&s64));
        let x64 = f64s(&x);
        let got = keras_bidirectional_f64(&layer, &x64, &mask, b, t, init);
        let outs = [
            (&got.y, &want.y),
            (&got.y_forward, &want.y_forward),
            (&got.y_backward, &want.y_backward),
            (&got.h_f, &want.h_f),
            (&got.c_f, &want.c_f),
            (&got.h_b, &want.h_b),
            (&got.c_b, &want.c_b),
        ];
        for (k, (g, w)) in outs.into_iter().enumerate() {
            close_f32(&format!("bidi {merge:?} rs={rs} output {k}"), g, w);
        }
        let ups: Vec<Vec<f64>> = [got.y.len(), got.y_forward.len(), got.y_backward.len(), b * h, b * h, b * h, b * h]
            .iter()
            .map(|&m| f64s(&uniform(rng, m, 1.0)))
            .collect();
        let up = BidiUpstream64 {
            dy: some(&ups[0]),
            dy_forward: some(&ups[1]),
            dy_backward: some(&ups[2]),
            d_h_f: Some(&ups[3]),
            d_c_f: Some(&ups[4]),
            d_h_b: Some(&ups[5]),
            d_c_b: Some(&ups[6]),
        };
        let gr = keras_bidirectional_backward(&layer, &x64, &mask, b, t, init, &up);
        let mut vars = vec![x64.clone()];
        vars.extend(param_vars(&pf));
        vars.extend(param_vars(&pb));
        vars.extend(if initial { s64.clone() } else { vec![vec![0.0; b * h]; 4] });
        let mut grads = vec![gr.dx.clone()];
        grads.extend(grad_vars(&gr.forward));
        grads.extend(grad_vars(&gr.backward));
        grads.extend([gr.d_h_f.clone(), gr.d_c_f.clone(), gr.d_h_b.clone(), gr.d_c_b.clone()]);
        let names: Vec<String> = ["x".to_string()]
            .into_iter()
            .chain(param_names(&pf, "_f"))
            .chain(param_names(&pb, "_b"))
            .chain(["h_f", "c_f", "h_b", "c_b"].map(String::from))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        fd_check(
            &format!("bidi {merge:?} return_sequences={rs}"),
            &names,
            &vars,
            &grads,
            |v| {
                let mut it = v[1..].iter();
                let (qf, qb) = (params_from(&pf, &mut it), params_from(&pb, &mut it));
                let s: Vec<Vec<f64>> = it.cloned().collect();
                let l = KerasBidi64 { forward: &qf, backward: &qb, ..layer };
                let o = keras_bidirectional_f64(&l, &v[0], &mask, b, t, Some(bidi_state(&s)));
                [&o.y, &o.y_forward, &o.y_backward, &o.h_f, &o.c_f, &o.h_b, &o.c_b]
                    .iter()
                    .zip(&ups)
                    .map(|(o, u)| if o.is_empty() { 0.0 } else { dot(u, o) })
                    .sum()
            },
            &mut stats,
        );
        for (s, &valid) in mask.iter().enumerate() {
            assert!(valid || gr.dx[s * i..(s + 1) * i].iter().all(|v| v.to_bits() == 0), "bidi dx at a masked step");
        }
        run += 1;
    }
    assert_eq!(run, 10);
    println!("bidirectional: {run} cases, {} partials, worst FD error {:.2e}", stats.checked, stats.worst);
}

#[test]
fn torch_stacks_forward_matches_f32_and_backward_matches_finite_differences() {
    let (t, b, i, h) = (6, 4, 3, 3);
    let lengths = [3, 6, 1, 4];
    let mut stats = FdStats::default();
    let mut run = 0;
    for (n, (layers, bidi, batch_first, initial)) in
        [(2, true, false, true), (2, true, true, false), (1, false, true, true), (2, false, false, true)]
            .into_iter()
            .enumerate()
    {
        let d_n = if bidi { 2 } else { 1 };
        let rng = &mut StdRng::seed_from_u64(400 + n as u64);
        let tensors: Vec<[Vec<f32>; 4]> = (0..layers * d_n)
            .map(|k| {
                let inp = if k < d_n { i } else { d_n * h };
                [
                    uniform(rng, 4 * h * inp, 0.6),
                    uniform(rng, 4 * h * h, 0.6),
                    uniform(rng, 4 * h, 0.3),
                    uniform(rng, 4 * h, 0.3),
                ]
            })
            .collect();
        let params32: Vec<TorchLstmParams<'_>> = tensors
            .iter()
            .map(|[a, bb, c, d]| TorchLstmParams { weight_ih: a, weight_hh: bb, bias_ih: Some(c), bias_hh: Some(d) })
            .collect();
        let model = TorchLstm::new(i, h, layers, bidi, &params32).unwrap();
        let x = uniform(rng, t * b * i, 1.0);
        let state = layers * d_n * b * h;
        let (h0, c0) = (uniform(rng, state, 0.8), uniform(rng, state, 0.8));
        let (h0r, c0r) = if initial { (Some(&h0[..]), Some(&c0[..])) } else { (None, None) };
        let want = model.forward_packed_reference(&x, t, b, batch_first, &lengths, h0r, c0r).unwrap();
        let ps: Vec<LstmParams64> = tensors
            .iter()
            .enumerate()
            .map(|(k, [a, bb, c, d])| {
                let inp = if k < d_n { i } else { d_n * h };
                LstmParams64::from_pytorch(inp, h, &f64s(a), &f64s(bb), Some(&f64s(c)), Some(&f64s(d)))
            })
            .collect();
        let stack = TorchStack64 { params: &ps, num_layers: layers, bidirectional: bidi };
        let (x64, h064, c064) = (f64s(&x), f64s(&h0), f64s(&c0));
        let (h0o, c0o) = if initial { (Some(&h064[..]), Some(&c064[..])) } else { (None, None) };
        let got = torch_lstm_f64(&stack, &x64, t, b, batch_first, &lengths, h0o, c0o);
        close_f32(&format!("torch {n} y"), &got.y, &want.y);
        close_f32(&format!("torch {n} h_n"), &got.h_n, &want.h_n);
        close_f32(&format!("torch {n} c_n"), &got.c_n, &want.c_n);
        let ups: Vec<Vec<f64>> = [got.y.len(), state, state].iter().map(|&m| f64s(&uniform(rng, m, 1.0))).collect();
        let up = TorchUpstream64 { dy: Some(&ups[0]), dh_n: Some(&ups[1]), dc_n: Some(&ups[2]) };
        let gr = torch_lstm_backward(&stack, &x64, t, b, batch_first, &lengths, h0o, c0o, &up);
        let zeros = vec![0.0; state];
        let mut vars = vec![x64.clone()];
        let mut grads = vec![gr.dx.clone()];
        let mut names = vec!["x".to_string()];
        for (k, p) in ps.iter().enumerate() {
            vars.extend(param_vars(p));
            grads.extend(grad_vars(&gr.params[k]));
            names.extend(param_names(p, &format!("[{k}]")));
        }
        vars.extend(if initial { [h064.clone(), c064.clone()] } else { [zeros.clone(), zeros.clone()] });
        grads.extend([gr.dh0.clone(), gr.dc0.clone()]);
        names.extend(["h0".into(), "c0".into()]);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let what = format!("torch layers={layers} bidirectional={bidi} batch_first={batch_first}");
        fd_check(
            &what,
            &names,
            &vars,
            &grads,
            |v| {
                let mut it = v[1..].iter();
                let qs: Vec<LstmParams64> = ps.iter().map(|p| params_from(p, &mut it)).collect();
                let (h0, c0) = (it.next().unwrap(), it.next().unwrap());
                let s = TorchStack64 { params: &qs, ..stack };
                let o = torch_lstm_f64(&s, &v[0], t, b, batch_first, &lengths, Some(h0), Some(c0));
                dot(&ups[0], &o.y) + dot(&ups[1], &o.h_n) + dot(&ups[2], &o.c_n)
            },
            &mut stats,
        );
        // Padded positions: dx exactly +0.0, and upstream there changes nothing.
        let mut noisy = ups[0].clone();
        let mut padded = 0;
        for (s, &len) in lengths.iter().enumerate() {
            for tt in len..t {
                let (xi, yi) = if batch_first { (s * t + tt, s * t + tt) } else { (tt * b + s, tt * b + s) };
                assert!(gr.dx[xi * i..(xi + 1) * i].iter().all(|v| v.to_bits() == 0), "{what}: dx at a padded step");
                noisy[yi * d_n * h..(yi + 1) * d_n * h].fill(-7.0);
                padded += 1;
            }
        }
        assert_eq!(padded, 4 * t - lengths.iter().sum::<usize>());
        let up2 = TorchUpstream64 { dy: Some(&noisy), ..up };
        assert_eq!(torch_lstm_backward(&stack, &x64, t, b, batch_first, &lengths, h0o, c0o, &up2), gr, "{what}");
        run += 1;
    }
    assert_eq!(run, 4);
    println!("torch: {run} cases, {} partials, worst FD error {:.2e}", stats.checked, stats.worst);
}

#[test]
fn gradients_export_to_framework_layouts() {
    // The ONNX export of a bidirectional gradient has the operator's shapes; PyTorch's both biases agree.
    let rng = &mut StdRng::seed_from_u64(5);
    let (t, b, i, h) = (3, 2, 2, 2);
    let p: Vec<LstmParams64> = (0..2)
        .map(|_| {
            let (w, r, bb, pp) = (
                uniform(rng, 4 * h * i, 0.5),
                uniform(rng, 4 * h * h, 0.5),
                uniform(rng, 8 * h, 0.5),
                uniform(rng, 3 * h, 0.5),
            );
            LstmParams64::from_onnx(i, h, &f64s(&w), &f64s(&r), Some(&f64s(&bb)), Some(&f64s(&pp)))
        })
        .collect();
    let cell = CellSpec::default();
    let dirs: Vec<OnnxDir64<'_>> = vec![(&p[0], &cell, false), (&p[1], &cell, true)];
    let x = f64s(&uniform(rng, t * b * i, 1.0));
    let dy = vec![1.0; t * 2 * b * h];
    let g = onnx_lstm_backward(&dirs, &x, t, b, &[3, 2], None, Some(&dy), None, None);
    let onnx = LstmGrads::to_onnx_dirs(&g.params);
    assert_eq!((onnx.w.len(), onnx.r.len(), onnx.b.len()), (2 * 4 * h * i, 2 * 4 * h * h, 2 * 8 * h));
    assert_eq!(onnx.p.map(|p| p.len()), Some(2 * 3 * h));
    assert_eq!(onnx.b[..4 * h], onnx.b[4 * h..8 * h]);
    let pt = g.params[0].to_pytorch();
    assert_eq!(pt.bias_ih, pt.bias_hh);
    assert_eq!(g.params[1].to_keras().kernel, g.params[1].d_kernel);
}
