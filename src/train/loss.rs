//! Losses over a padded batch, masked the Keras 3 way, with their gradients.
//!
//! Reduction (Keras 3, and tf.keras >= 2.11, when the mask reaches the loss): per step, the mean over
//! features of `|y - t|` (MAE) or `(y - t)^2` (MSE); then the sum over valid steps divided by the number of
//! valid steps. An all-masked batch gives 0 (Keras 3; tf.keras gives NaN) with [`LossValue::count`] 0 and an
//! all-zero gradient, so callers can tell.
//!
//! Masked positions are never read: NaN (or anything else) in a prediction or target at a masked step
//! reaches neither the value nor the gradient. At a valid step NaN propagates, as in the frameworks.
//!
//! The unmasked losses count every step, padding included: what Keras computes once a `Lambda` without
//! `mask=` has dropped the mask (the seed model's bug).
//!
//! The value is accumulated in `f64`; the gradient is computed in `f64` and rounded once to `f32`.

use crate::error::{check_len, checked_product, Result};
use crate::frameworks::sequential::MaskedSeq;

/// A loss averaged over a number of steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossValue {
    /// The mean loss; 0 when `count` is 0 (Keras 3).
    pub value: f64,
    /// Number of steps averaged over.
    pub count: usize,
}

/// A loss, masked (Keras 3 reduction over valid steps) or not (every step counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Loss {
    /// Mean absolute error over valid steps; see [`masked_mae`].
    MaskedMae,
    /// Mean squared error over valid steps; see [`masked_mse`].
    MaskedMse,
    /// Mean absolute error over every step, padding included; see [`unmasked_mae`].
    UnmaskedMae,
    /// Mean squared error over every step, padding included; see [`unmasked_mse`].
    UnmaskedMse,
}

#[derive(Clone, Copy)]
enum Kind {
    Mae,
    Mse,
}

impl Loss {
    /// Whether only the valid steps of the prediction's view count.
    pub fn is_masked(self) -> bool {
        matches!(self, Loss::MaskedMae | Loss::MaskedMse)
    }

    fn kind(self) -> Kind {
        match self {
            Loss::MaskedMae | Loss::UnmaskedMae => Kind::Mae,
            Loss::MaskedMse | Loss::UnmaskedMse => Kind::Mse,
        }
    }

    /// The loss of `pred` against `target` (dense `[B, T, F]`, laid out like [`MaskedSeq::to_vec`]).
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) if `target` is not `[B, T, F]` of `pred`.
    pub fn value(self, pred: &MaskedSeq, target: &[f32]) -> Result<LossValue> {
        run(pred, target, self.kind(), self.is_masked(), None)
    }

    /// The loss, and its gradient with respect to the prediction values written to `grad_out`, dense
    /// `[B, T, F]` like [`MaskedSeq::to_vec`]. Every element of `grad_out` is written: zero at steps that do
    /// not count (masked steps of a masked loss, everything when no step counts).
    ///
    /// Per counted element, with `n` the number of counted steps and `F` the features:
    /// MAE `sign(y - t) / (F n)` with `sign(0) = 0` (as TensorFlow's `abs` gradient), MSE
    /// `2 (y - t) / (F n)`.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) if `target` or `grad_out` is not `[B, T, F]` of
    /// `pred`; `grad_out` is then left untouched.
    pub fn value_and_grad(self, pred: &MaskedSeq, target: &[f32], grad_out: &mut [f32]) -> Result<LossValue> {
        run(pred, target, self.kind(), self.is_masked(), Some(grad_out))
    }
}

/// Calls `f(sequence, first step, end step)` for each range of steps a loss counts, in order.
fn for_each_counted(pred: &MaskedSeq, masked: bool, mut f: impl FnMut(usize, usize, usize)) {
    for s in 0..pred.batch() {
        if masked {
            pred.view().runs(s).filter(|r| r.len > 0).for_each(|r| f(s, r.offset, r.end()));
        } else if pred.time() > 0 {
            f(s, 0, pred.time());
        }
    }
}

fn run(pred: &MaskedSeq, target: &[f32], kind: Kind, masked: bool, grad: Option<&mut [f32]>) -> Result<LossValue> {
    let (t, f) = (pred.time(), pred.features());
    let n = checked_product(&[pred.batch(), t, f], "target")?;
    check_len("target", target.len(), n)?;
    if let Some(g) = &grad {
        check_len("grad_out", g.len(), n)?;
    }
    let mut count = 0usize;
    for_each_counted(pred, masked, |_, a, b| count += b - a);
    let per_value = |d: f64| match kind {
        Kind::Mae => d.abs(),
        Kind::Mse => d * d,
    };
    let mut sum = 0.0f64;
    for_each_counted(pred, masked, |s, a, b| {
        for step in a..b {
            let y = &target[(s * t + step) * f..(s * t + step + 1) * f];
            let per_step: f64 = pred.step(s, step).iter().zip(y).map(|(&p, &y)| per_value(p as f64 - y as f64)).sum();
            sum += if f > 0 { per_step / f as f64 } else { 0.0 };
        }
    });
    if let Some(g) = grad {
        g.fill(0.0);
        // d/dy of (1 / (F n)) sum |y - t| or (y - t)^2 over the counted elements.
        let denom = f as f64 * count as f64;
        for_each_counted(pred, masked, |s, a, b| {
            for step in a..b {
                let o = (s * t + step) * f;
                let (y, out) = (&target[o..o + f], &mut g[o..o + f]);
                for ((out, &p), &y) in out.iter_mut().zip(pred.step(s, step)).zip(y) {
                    let d = p as f64 - y as f64;
                    *out = match kind {
                        Kind::Mae => sign(d) / denom,
                        Kind::Mse => 2.0 * d / denom,
                    } as f32;
                }
            }
        });
    }
    Ok(LossValue { value: if count > 0 { sum / count as f64 } else { 0.0 }, count })
}

/// `sign` as TensorFlow's: 0 at 0, NaN for NaN.
fn sign(d: f64) -> f64 {
    if d > 0.0 {
        1.0
    } else if d < 0.0 {
        -1.0
    } else if d == 0.0 {
        0.0
    } else {
        d // NaN
    }
}

/// Masked mean absolute error (Keras 3): the per-step MAE (mean over features) summed over valid steps and
/// divided by their number. An all-masked batch gives 0 with `count == 0`. Gradient:
/// [`Loss::MaskedMae`]`.value_and_grad`.
///
/// # Errors
/// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) if `target` is not `[B, T, F]` of `pred`.
pub fn masked_mae(pred: &MaskedSeq, target: &[f32]) -> Result<LossValue> {
    Loss::MaskedMae.value(pred, target)
}

/// Masked mean squared error (Keras 3), as [`masked_mae`]. Gradient: [`Loss::MaskedMse`]`.value_and_grad`.
///
/// # Errors
/// As [`masked_mae`].
pub fn masked_mse(pred: &MaskedSeq, target: &[f32]) -> Result<LossValue> {
    Loss::MaskedMse.value(pred, target)
}

/// Mean absolute error over every step, padding included: what Keras reports once the mask is lost.
/// Gradient: [`Loss::UnmaskedMae`]`.value_and_grad`.
///
/// # Errors
/// As [`masked_mae`].
pub fn unmasked_mae(pred: &MaskedSeq, target: &[f32]) -> Result<LossValue> {
    Loss::UnmaskedMae.value(pred, target)
}

/// Mean squared error over every step, padding included, as [`unmasked_mae`]. Gradient:
/// [`Loss::UnmaskedMse`]`.value_and_grad`.
///
/// # Errors
/// As [`masked_mae`].
pub fn unmasked_mse(pred: &MaskedSeq, target: &[f32]) -> Result<LossValue> {
    Loss::UnmaskedMse.value(pred, target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{Padding, SeqView};

    #[test]
    fn losses_count_valid_steps_only() {
        let view = SeqView::from_lengths(&[2, 0], 3, Padding::Post).unwrap();
        let pred = MaskedSeq::new(vec![1.0, 2.0, 100.0, 5.0, 5.0, 5.0], 1, view).unwrap();
        let target = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(masked_mae(&pred, &target).unwrap(), LossValue { value: 1.5, count: 2 });
        assert_eq!(masked_mse(&pred, &target).unwrap(), LossValue { value: 2.5, count: 2 });
        assert_eq!(unmasked_mae(&pred, &target).unwrap(), LossValue { value: 118.0 / 6.0, count: 6 });
        assert_eq!(unmasked_mse(&pred, &target).unwrap(), LossValue { value: 10080.0 / 6.0, count: 6 });
        let none = pred.slice_time(2, 3).unwrap();
        assert_eq!(masked_mae(&none, &[0.0, 0.0]).unwrap(), LossValue { value: 0.0, count: 0 });
        assert!(masked_mae(&pred, &target[..5]).is_err());
    }

    #[test]
    fn gradient_shape_errors_leave_grad_untouched() {
        let pred = MaskedSeq::dense(vec![1.0; 6], 2, 3, 1).unwrap();
        let mut g = vec![7.0; 5];
        let e = Loss::MaskedMse.value_and_grad(&pred, &[0.0; 6], &mut g).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::BadShape);
        assert!(e.message().contains("grad_out"), "{e}");
        assert_eq!(g, vec![7.0; 5]);
        let mut g = vec![7.0; 6];
        assert!(Loss::MaskedMse.value_and_grad(&pred, &[0.0; 5], &mut g).is_err());
        assert_eq!(g, vec![7.0; 6]);
    }

    #[test]
    fn sign_is_tensorflows() {
        assert_eq!(sign(2.0), 1.0);
        assert_eq!(sign(-0.5), -1.0);
        assert_eq!(sign(0.0), 0.0);
        assert_eq!(sign(-0.0), 0.0);
        assert!(sign(f64::NAN).is_nan());
    }
}
