//! The losses and their gradients: against a plain f64 loop, against finite differences, on holes,
//! pre-padding, all-masked batches, time windows and NaN at masked positions, and against Keras 3
//! (`MeanAbsoluteError` / `MeanSquaredError` on a masked prediction and the `GradientTape` gradient,
//! tools/fixtures/optim_golden.py).

use crate::common::{fixtures, floats, mask};
use masked_rnn::{Loss, MaskedSeq, Padding, SeqView};

const LOSSES: [Loss; 4] = [Loss::MaskedMae, Loss::MaskedMse, Loss::UnmaskedMae, Loss::UnmaskedMse];

/// The plain loop: every `(b, t)` whose mask counts, per-step mean over features, mean over steps.
/// Returns (value, count, gradient) in f64.
fn plain(loss: Loss, pred: &[f32], target: &[f32], valid: &[bool], f: usize) -> (f64, usize, Vec<f64>) {
    let count = valid.iter().filter(|&&v| v || !loss.is_masked()).count();
    let mut sum = 0.0;
    let mut grad = vec![0.0; pred.len()];
    for (step, &v) in valid.iter().enumerate() {
        if !v && loss.is_masked() {
            continue;
        }
        let mut per_step = 0.0;
        for j in step * f..(step + 1) * f {
            let d = pred[j] as f64 - target[j] as f64;
            let mae = matches!(loss, Loss::MaskedMae | Loss::UnmaskedMae);
            per_step += if mae { d.abs() } else { d * d };
            let dd = if mae {
                if d > 0.0 {
                    1.0
                } else if d < 0.0 {
                    -1.0
                } else if d == 0.0 {
                    0.0
                } else {
                    f64::NAN
                }
            } else {
                2.0 * d
            };
            grad[j] = dd / (f as f64 * count as f64);
        }
        if f > 0 {
            sum += per_step / f as f64;
        }
    }
    (if count > 0 { sum / count as f64 } else { 0.0 }, count, grad)
}

/// Deterministic values on a grid of 1/64 (so small steps are exact in f32).
fn grid(n: usize, salt: usize) -> Vec<f32> {
    (0..n).map(|k| (((k * 37 + salt * 11) % 193) as f32 - 96.0) / 64.0).collect()
}

fn check_against_plain(what: &str, pred: &MaskedSeq, target: &[f32], valid: &[bool]) {
    let values = pred.to_vec();
    for loss in LOSSES {
        let mut g = vec![f32::NAN; values.len()];
        let got = loss.value_and_grad(pred, target, &mut g).unwrap();
        assert_eq!(loss.value(pred, target).unwrap(), got, "{what} {loss:?}");
        let (value, count, grad) = plain(loss, &values, target, valid, pred.features());
        assert_eq!(got.count, count, "{what} {loss:?}");
        assert!((got.value - value).abs() <= 1e-12 * value.abs(), "{what} {loss:?}: {} vs {value}", got.value);
        for (j, (&a, &b)) in g.iter().zip(&grad).enumerate() {
            assert_eq!(a, b as f32, "{what} {loss:?}: gradient [{j}]");
        }
    }
}

/// (name, view, valid mask) for B = 4, T = 6.
fn views() -> Vec<(&'static str, SeqView, Vec<bool>)> {
    let (b, t) = (4, 6);
    let lens = [6, 3, 0, 1];
    let post = SeqView::from_lengths(&lens, t, Padding::Post).unwrap();
    let pre = SeqView::from_lengths(&lens, t, Padding::Pre).unwrap();
    let mask_of = |pre: bool| -> Vec<bool> {
        lens.iter().flat_map(|&l| (0..t).map(move |s| if pre { s >= t - l } else { s < l })).collect()
    };
    let holes: Vec<bool> = (0..b * t).map(|k| (k * 7 % 5) < 3 && k % 6 != 0).collect();
    let all_masked = vec![false; b * t];
    vec![
        ("post-padding", post, mask_of(false)),
        ("pre-padding", pre, mask_of(true)),
        ("holes", SeqView::from_mask(&holes, b, t).unwrap(), holes),
        ("all masked", SeqView::from_mask(&all_masked, b, t).unwrap(), all_masked),
        ("full", SeqView::full(b, t), vec![true; b * t]),
    ]
}

#[test]
fn value_and_gradient_match_a_plain_loop() {
    for f in [1, 3] {
        for (name, view, valid) in views() {
            let n = view.batch() * view.time() * f;
            let mut target = grid(n, 2);
            let pred = grid(n, 5);
            target[1] = pred[1]; // y == t: MAE gradient 0
            let seq = MaskedSeq::new(pred, f, view).unwrap();
            check_against_plain(&format!("{name} F={f}"), &seq, &target, &valid);
        }
    }
}

#[test]
fn all_masked_batch_is_zero_with_count_zero() {
    let view = SeqView::from_lengths(&[0, 0], 3, Padding::Post).unwrap();
    let pred = MaskedSeq::new(vec![f32::NAN; 12], 2, view).unwrap();
    for loss in [Loss::MaskedMae, Loss::MaskedMse] {
        let mut g = vec![7.0; 12];
        let v = loss.value_and_grad(&pred, &[1.0; 12], &mut g).unwrap();
        assert_eq!((v.value, v.count), (0.0, 0));
        assert!(g.iter().all(|&x| x.to_bits() == 0), "{g:?}");
    }
    // No sequences or no steps at all: also 0, count 0, for the unmasked losses too.
    for (b, t) in [(0, 4), (3, 0)] {
        let empty = MaskedSeq::dense(vec![], b, t, 2).unwrap();
        for loss in LOSSES {
            let v = loss.value_and_grad(&empty, &[], &mut []).unwrap();
            assert_eq!((v.value, v.count), (0.0, 0), "{loss:?}");
        }
    }
}

/// Time windows: the gradient is laid out like the window's values (`to_vec`), not the storage.
#[test]
fn sliced_windows() {
    for (name, view, valid) in views() {
        let (b, t, f) = (view.batch(), view.time(), 2);
        let full = MaskedSeq::new(grid(b * t * f, 3), f, view).unwrap();
        for (a, e) in [(1, 5), (2, 6), (0, 3), (3, 3)] {
            let win = full.slice_time(a, e).unwrap();
            let wvalid: Vec<bool> = (0..b).flat_map(|s| valid[s * t + a..s * t + e].to_vec()).collect();
            let target = grid(b * (e - a) * f, 9);
            check_against_plain(&format!("{name} [{a}, {e})"), &win, &target, &wvalid);
        }
    }
}

/// Central differences of the f64 value: pred and target on a 1/64 grid, |y - t| >= 1/128 except exact
/// ties, step 1/1024, so every perturbation is exact in f32 and no kink of |.| is crossed; at a tie the
/// central difference of |.| is 0, which is TensorFlow's sign(0).
#[test]
fn gradient_matches_finite_differences() {
    let h = 1.0 / 1024.0;
    for (name, view, valid) in views() {
        let f = 3;
        let n = view.batch() * view.time() * f;
        let pred0 = grid(n, 4);
        let mut target: Vec<f32> = grid(n, 8).iter().map(|v| v + 1.0 / 128.0).collect();
        target[2] = pred0[2];
        target[n - 1] = pred0[n - 1];
        let at = |p: Vec<f32>| MaskedSeq::new(p, f, view.clone()).unwrap();
        for loss in LOSSES {
            let mut g = vec![0.0f32; n];
            loss.value_and_grad(&at(pred0.clone()), &target, &mut g).unwrap();
            for j in 0..n {
                let bump = |d: f32| {
                    let mut p = pred0.clone();
                    p[j] += d;
                    loss.value(&at(p), &target).unwrap().value
                };
                let fd = (bump(h) - bump(-h)) / (2.0 * h as f64);
                assert!(
                    (fd - g[j] as f64).abs() <= 1e-6 * fd.abs().max(1e-3),
                    "{name} {loss:?} [{j}]: fd {fd} vs gradient {}",
                    g[j]
                );
                if loss.is_masked() && !valid[j / f] {
                    assert_eq!(g[j], 0.0);
                }
            }
        }
    }
}

#[test]
fn nan_at_masked_positions_is_never_read() {
    for (name, view, valid) in views() {
        let f = 2;
        let n = view.batch() * view.time() * f;
        let (pred, target) = (grid(n, 1), grid(n, 6));
        let poison = |v: &[f32]| -> Vec<f32> {
            v.iter().enumerate().map(|(j, &x)| if valid[j / f] { x } else { f32::NAN }).collect()
        };
        let clean = MaskedSeq::new(pred.clone(), f, view.clone()).unwrap();
        let dirty = MaskedSeq::new(poison(&pred), f, view.clone()).unwrap();
        for loss in [Loss::MaskedMae, Loss::MaskedMse] {
            let (mut g1, mut g2) = (vec![0.0; n], vec![0.0; n]);
            let a = loss.value_and_grad(&clean, &target, &mut g1).unwrap();
            let b = loss.value_and_grad(&dirty, &poison(&target), &mut g2).unwrap();
            assert_eq!(a, b, "{name} {loss:?}");
            assert!(!b.value.is_nan());
            assert_eq!(g1, g2, "{name} {loss:?}");
        }
        // The unmasked losses read everything: NaN padding poisons them (the seed's bug).
        if valid.iter().any(|v| !v) {
            assert!(Loss::UnmaskedMae.value(&dirty, &target).unwrap().value.is_nan(), "{name}");
        }
    }
}

#[test]
fn nan_at_a_valid_position_propagates() {
    let view = SeqView::from_lengths(&[2, 1], 3, Padding::Post).unwrap();
    let mut pred = vec![0.5f32; 6];
    pred[1] = f32::NAN; // sequence 0, step 1: valid
    let seq = MaskedSeq::new(pred, 1, view).unwrap();
    let target = [0.0f32; 6];
    for loss in LOSSES {
        let mut g = vec![0.0; 6];
        let v = loss.value_and_grad(&seq, &target, &mut g).unwrap();
        assert!(v.value.is_nan(), "{loss:?}");
        assert!(g[1].is_nan(), "{loss:?}");
        assert!(g[0].is_finite() && g[3].is_finite(), "{loss:?}: only the NaN element's gradient is NaN");
        if loss.is_masked() {
            assert_eq!(g[2], 0.0);
        }
    }
}

/// The unmasked loss of a masked prediction equals the masked loss with the mask dropped.
#[test]
fn unmasked_is_masked_without_the_mask() {
    for (name, view, _) in views() {
        let n = view.batch() * view.time() * 2;
        let (pred, target) = (MaskedSeq::new(grid(n, 2), 2, view).unwrap(), grid(n, 3));
        for (unmasked, masked) in [(Loss::UnmaskedMae, Loss::MaskedMae), (Loss::UnmaskedMse, Loss::MaskedMse)] {
            let (mut g1, mut g2) = (vec![0.0; n], vec![0.0; n]);
            let a = unmasked.value_and_grad(&pred, &target, &mut g1).unwrap();
            let b = masked.value_and_grad(&pred.drop_mask(), &target, &mut g2).unwrap();
            assert_eq!((a, g1), (b, g2), "{name}");
        }
    }
}

#[test]
fn keras_masked_losses_and_gradients() {
    let (_, fx) = fixtures("train", "optim").into_iter().next().expect("optim fixture");
    let shape: Vec<usize> = fx["loss_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let (b, t, f) = (shape[0], shape[1], shape[2]);
    let (pred, target) = (floats(&fx["loss_pred"]), floats(&fx["loss_target"]));
    let (mut worst_value, mut worst_grad) = (0.0f64, 0.0f64);
    let cases = fx["losses"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let valid = mask(&case["mask"]);
        let loss = match case["loss"].as_str().unwrap() {
            "mae" => Loss::MaskedMae,
            "mse" => Loss::MaskedMse,
            other => panic!("unknown loss {other}"),
        };
        let view = SeqView::from_mask(&valid, b, t).unwrap();
        // NaN at every masked position: Keras would return NaN; masked-rnn never reads them.
        let poison = |v: &[f32]| -> Vec<f32> {
            v.iter().enumerate().map(|(j, &x)| if valid[j / f] { x } else { f32::NAN }).collect()
        };
        for (p, y) in [(pred.clone(), target.clone()), (poison(&pred), poison(&target))] {
            let seq = MaskedSeq::new(p, f, view.clone()).unwrap();
            let mut g = vec![f32::NAN; pred.len()];
            let got = loss.value_and_grad(&seq, &y, &mut g).unwrap();
            let want = case["value"].as_f64().unwrap();
            let name = case["case"].as_str().unwrap();
            assert_eq!(got.count, valid.iter().filter(|&&v| v).count());
            if want == 0.0 {
                assert_eq!(got.value, 0.0, "{name} {loss:?}");
            } else {
                let d = (got.value - want).abs() / want.abs();
                worst_value = worst_value.max(d);
                assert!(d <= 1e-6, "{name} {loss:?}: {} vs Keras {want}", got.value);
            }
            for (j, (&a, &w)) in g.iter().zip(&floats(&case["grad"])).enumerate() {
                if w == 0.0 {
                    assert_eq!(a, 0.0, "{name} {loss:?} gradient [{j}]");
                } else {
                    let d = (a as f64 - w as f64).abs() / (w as f64).abs();
                    worst_grad = worst_grad.max(d);
                    assert!(d <= 1e-6, "{name} {loss:?} gradient [{j}]: {a} vs Keras {w}");
                }
            }
        }
    }
    println!("Keras losses: worst relative difference value {worst_value:e}, gradient {worst_grad:e}");
}
