//! Gate activations: the eleven ONNX activation functions, which include every Keras LSTM activation.
//!
//! Scalar forms ([`Activation::apply`]) serve the reference implementation; the SIMD backends evaluate
//! the same functions lane-wise.

use crate::error::{Error, Result};
use crate::kernel::simd::Simd;
use crate::reference::Rounding;

/// An activation function with its parameters.
///
/// The numbering of [`Activation::code`] is the C ABI's `MRNN_ACT_*`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `1 / (1 + exp(-x))`
    Sigmoid,
    /// `tanh(x)`
    Tanh,
    /// `max(0, x)`
    Relu,
    /// `alpha * x + beta`
    Affine {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// `x` if `x >= 0` else `alpha * x`
    LeakyRelu {
        /// Negative slope (ONNX default 0.01).
        alpha: f32,
    },
    /// `x` if `x > alpha` else `0`
    ThresholdedRelu {
        /// Threshold (ONNX default 1.0).
        alpha: f32,
    },
    /// `alpha * tanh(beta * x)`
    ScaledTanh {
        /// Output scale.
        alpha: f32,
        /// Input scale.
        beta: f32,
    },
    /// `clamp(alpha * x + beta, 0, 1)`; Keras 2 / ONNX use alpha 0.2, Keras 3 uses alpha 1/6.
    HardSigmoid {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// `x` if `x >= 0` else `alpha * (exp(x) - 1)`
    Elu {
        /// Scale of the negative branch (ONNX default 1.0).
        alpha: f32,
    },
    /// `x / (1 + |x|)`
    Softsign,
    /// `ln(1 + exp(x))`
    Softplus,
}

/// Which `hard_sigmoid` a Keras model name refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HardSigmoidFlavor {
    /// Keras 3: `clamp(x / 6 + 0.5, 0, 1)`.
    #[default]
    Keras3,
    /// Keras 2, tf.keras and ONNX: `clamp(0.2 x + 0.5, 0, 1)`.
    Keras2,
}

impl Activation {
    /// Keras 2 / tf.keras / ONNX-default `hard_sigmoid`: `clamp(0.2 x + 0.5, 0, 1)`.
    pub const HARD_SIGMOID_KERAS2: Activation = Activation::HardSigmoid { alpha: 0.2, beta: 0.5 };
    /// Keras 3 `hard_sigmoid`: `clamp(x / 6 + 0.5, 0, 1)`.
    pub const HARD_SIGMOID_KERAS3: Activation = Activation::HardSigmoid { alpha: 1.0 / 6.0, beta: 0.5 };

    /// Evaluates the activation at `x` with separate roundings: exactly what the portable backend
    /// computes (see [`crate::cells::math`]).
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        self.apply_rounded(x, Rounding::Separate)
    }

    /// Evaluates the activation at `x` as a backend with `rounding` does: the SIMD kernels evaluate the
    /// same sequence of operations lane-wise, so they agree with this bit for bit. Only `sigmoid` and
    /// `tanh` (also inside `scaledtanh`) depend on the rounding (see [`crate::cells::math`]).
    #[inline]
    pub fn apply_rounded(self, x: f32, rounding: Rounding) -> f32 {
        use crate::cells::math;
        match self {
            Activation::Sigmoid => math::sigmoid_rounded(x, rounding),
            Activation::Tanh => math::tanh_rounded(x, rounding),
            Activation::Relu => {
                if x > 0.0 || x.is_nan() {
                    x
                } else {
                    0.0
                }
            }
            Activation::Affine { alpha, beta } => alpha * x + beta,
            Activation::LeakyRelu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * x
                }
            }
            Activation::ThresholdedRelu { alpha } => {
                if x > alpha || x.is_nan() {
                    x
                } else {
                    0.0
                }
            }
            Activation::ScaledTanh { alpha, beta } => alpha * math::tanh_rounded(beta * x, rounding),
            Activation::HardSigmoid { alpha, beta } => {
                let y = alpha * x + beta;
                if y > 1.0 {
                    1.0
                } else if y > 0.0 || y.is_nan() {
                    y
                } else {
                    0.0
                }
            }
            Activation::Elu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * (math::exp(x) - 1.0)
                }
            }
            Activation::Softsign => x / (1.0 + x.abs()),
            Activation::Softplus => {
                // ln(1 + e^x); past 20 the result is x to f32 precision (and e^x would overflow later).
                if x > 20.0 || x.is_nan() {
                    x
                } else {
                    math::ln(1.0 + math::exp(x))
                }
            }
        }
    }

    /// The C ABI code (`MRNN_ACT_*`) of this activation.
    pub fn code(self) -> i32 {
        match self {
            Activation::Sigmoid => 0,
            Activation::Tanh => 1,
            Activation::Relu => 2,
            Activation::Affine { .. } => 3,
            Activation::LeakyRelu { .. } => 4,
            Activation::ThresholdedRelu { .. } => 5,
            Activation::ScaledTanh { .. } => 6,
            Activation::HardSigmoid { .. } => 7,
            Activation::Elu { .. } => 8,
            Activation::Softsign => 9,
            Activation::Softplus => 10,
        }
    }

    /// Builds an activation from its C ABI / ONNX code; a NaN `alpha` or `beta` takes ONNX Runtime's
    /// default for LSTM activations: LeakyRelu 0.01, HardSigmoid 0.2 / 0.5, Elu 1.0, and 0 for every other
    /// parameter (Affine, ScaledTanh, and ThresholdedRelu, whose standalone ONNX operator would default to
    /// 1.0: ONNX Runtime's LSTM uses 0, and a model's numbers come from its runtime).
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for an unknown code.
    pub fn from_code(code: i32, alpha: f32, beta: f32) -> Result<Self> {
        let a = |d: f32| if alpha.is_nan() { d } else { alpha };
        let b = |d: f32| if beta.is_nan() { d } else { beta };
        Ok(match code {
            0 => Activation::Sigmoid,
            1 => Activation::Tanh,
            2 => Activation::Relu,
            3 => Activation::Affine { alpha: a(0.0), beta: b(0.0) },
            4 => Activation::LeakyRelu { alpha: a(0.01) },
            5 => Activation::ThresholdedRelu { alpha: a(0.0) },
            6 => Activation::ScaledTanh { alpha: a(0.0), beta: b(0.0) },
            7 => Activation::HardSigmoid { alpha: a(0.2), beta: b(0.5) },
            8 => Activation::Elu { alpha: a(1.0) },
            9 => Activation::Softsign,
            10 => Activation::Softplus,
            _ => return Err(Error::argument(format!("unknown activation code {code} (expected 0..=10)"))),
        })
    }

    /// The ONNX name's code (`"Sigmoid"`, `"Tanh"`, ..., `"Softplus"`; ONNX Runtime matches names
    /// case-insensitively, so does this).
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for an unknown name.
    pub fn onnx_code(name: &str) -> Result<i32> {
        const NAMES: [&str; 11] = [
            "sigmoid",
            "tanh",
            "relu",
            "affine",
            "leakyrelu",
            "thresholdedrelu",
            "scaledtanh",
            "hardsigmoid",
            "elu",
            "softsign",
            "softplus",
        ];
        let lower = name.to_ascii_lowercase();
        NAMES
            .iter()
            .position(|n| *n == lower)
            .map(|p| p as i32)
            .ok_or_else(|| Error::argument(format!("unknown ONNX activation {name:?}")))
    }

    /// Whether this activation's ONNX form reads `alpha` / `beta` from the attribute lists.
    fn onnx_params(code: i32) -> (bool, bool) {
        match code {
            3 | 6 | 7 => (true, true),
            4 | 5 | 8 => (true, false),
            _ => (false, false),
        }
    }

    /// The ONNX attributes `activations`, `activation_alpha`, `activation_beta` as ONNX Runtime reads
    /// them: the flat lists are consumed in activation order, each value only by an activation that takes
    /// that parameter (alpha and beta counted separately); when a list runs out, defaults apply.
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for an unknown name.
    pub fn from_onnx_attributes(names: &[&str], alpha: &[f32], beta: &[f32]) -> Result<Vec<Activation>> {
        let (mut ai, mut bi) = (alpha.iter(), beta.iter());
        names
            .iter()
            .map(|n| {
                let code = Self::onnx_code(n)?;
                let (ua, ub) = Self::onnx_params(code);
                let a = if ua { ai.next().copied().unwrap_or(f32::NAN) } else { f32::NAN };
                let b = if ub { bi.next().copied().unwrap_or(f32::NAN) } else { f32::NAN };
                Self::from_code(code, a, b)
            })
            .collect()
    }

    /// Builds an activation from its Keras name (`"sigmoid"`, `"tanh"`, `"relu"`, `"hard_sigmoid"`,
    /// `"linear"`, `"softsign"`, `"softplus"`, `"elu"`); `flavor` picks which `hard_sigmoid` is meant.
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for a name this crate does not know.
    pub fn from_keras_name(name: &str, flavor: HardSigmoidFlavor) -> Result<Self> {
        Ok(match name {
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "relu" => Activation::Relu,
            "hard_sigmoid" => match flavor {
                HardSigmoidFlavor::Keras3 => Self::HARD_SIGMOID_KERAS3,
                HardSigmoidFlavor::Keras2 => Self::HARD_SIGMOID_KERAS2,
            },
            "linear" => Activation::Affine { alpha: 1.0, beta: 0.0 },
            "softsign" => Activation::Softsign,
            "softplus" => Activation::Softplus,
            "elu" => Activation::Elu { alpha: 1.0 },
            _ => return Err(Error::argument(format!("unknown Keras activation {name:?}"))),
        })
    }
}

/// `v` clamped to `[-clip, clip]` (ONNX's `clip` attribute) by comparisons, not `clamp`: NaN passes
/// through, as in the kernels' [`clip_lanes`](crate::kernel::simd::clip_lanes).
#[inline]
pub(crate) fn clip(v: f32, clip: Option<f32>) -> f32 {
    match clip {
        Some(cl) if v < -cl => -cl,
        Some(cl) if v > cl => cl,
        _ => v,
    }
}

/// `d a(clip(v)) / dv` lane-wise given `y = a(clip(v))`: zero outside the clip's open interval.
///
/// # Safety
/// S's instructions available.
#[inline(always)]
pub(crate) unsafe fn slope_lanes<S: Simd>(clip: Option<f32>, a: Activation, v: S, y: S) -> S {
    // SAFETY: S's instructions are available (caller's contract); no memory is accessed.
    unsafe {
        let d = derivative_lanes(a, v, y);
        match clip {
            Some(cl) => {
                let zero = S::splat(0.0);
                S::select(v.gt(S::splat(-cl)), S::select(v.lt(S::splat(cl)), d, zero), zero)
            }
            None => d,
        }
    }
}

/// [`derivative`] lane-wise: from `y` for sigmoid and tanh, lane by lane for the others.
///
/// # Safety
/// S's instructions available.
#[inline(always)]
pub(crate) unsafe fn derivative_lanes<S: Simd>(a: Activation, x: S, y: S) -> S {
    // SAFETY: S's instructions are available (caller's contract); the arrays hold 16 >= LANES floats.
    unsafe {
        let one = S::splat(1.0);
        match a {
            Activation::Sigmoid => y.mul(one.sub(y)),
            Activation::Tanh => one.sub(y.mul(y)),
            _ => {
                let (mut xs, mut ys) = ([0.0f32; 16], [0.0f32; 16]);
                x.store(xs.as_mut_ptr());
                y.store(ys.as_mut_ptr());
                for (x, &y) in xs[..S::LANES].iter_mut().zip(&ys) {
                    *x = derivative(a, *x, y);
                }
                S::load(xs.as_ptr())
            }
        }
    }
}

/// `a'(x)` given `y = a(x)`: from `y` for sigmoid and tanh (no second transcendental), else exactly (in
/// f64) from `x`, with the C ABI's conventions at kinks.
#[inline(never)]
fn derivative(a: Activation, x: f32, y: f32) -> f32 {
    match a {
        Activation::Sigmoid => y * (1.0 - y),
        Activation::Tanh => 1.0 - y * y,
        _ => crate::reference::backward::dact64(a, f64::from(x)) as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_sigmoid_flavors_differ() {
        let k2 = Activation::from_keras_name("hard_sigmoid", HardSigmoidFlavor::Keras2).unwrap();
        let k3 = Activation::from_keras_name("hard_sigmoid", HardSigmoidFlavor::Keras3).unwrap();
        assert_eq!(k2.apply(1.0), 0.7);
        assert!((k3.apply(1.0) - (1.0 / 6.0 + 0.5)).abs() < 1e-7);
        assert_eq!(k2.apply(10.0), 1.0);
        assert_eq!(k3.apply(-10.0), 0.0);
    }

    #[test]
    fn codes_round_trip() {
        for code in 0..=10 {
            assert_eq!(Activation::from_code(code, f32::NAN, f32::NAN).unwrap().code(), code);
        }
        assert!(Activation::from_code(11, 0.0, 0.0).is_err());
        assert!(Activation::from_code(-1, 0.0, 0.0).is_err());
    }

    #[test]
    fn onnx_attribute_lists_are_consumed_by_parameterised_activations_only() {
        let acts =
            Activation::from_onnx_attributes(&["Sigmoid", "LeakyRelu", "HardSigmoid", "Tanh"], &[0.3, 0.4], &[0.7])
                .unwrap();
        assert_eq!(acts[1], Activation::LeakyRelu { alpha: 0.3 });
        assert_eq!(acts[2], Activation::HardSigmoid { alpha: 0.4, beta: 0.7 });
        let short = Activation::from_onnx_attributes(&["Elu", "Affine"], &[0.5], &[]).unwrap();
        assert_eq!(short, vec![Activation::Elu { alpha: 0.5 }, Activation::Affine { alpha: 0.0, beta: 0.0 }]);
        assert!(Activation::from_onnx_attributes(&["Swish"], &[], &[]).is_err());
        assert_eq!(Activation::onnx_code("softplus").unwrap(), 10);
    }

    #[test]
    fn nan_alpha_takes_default() {
        assert_eq!(Activation::from_code(4, f32::NAN, f32::NAN).unwrap(), Activation::LeakyRelu { alpha: 0.01 });
        assert_eq!(Activation::from_code(4, 0.3, f32::NAN).unwrap(), Activation::LeakyRelu { alpha: 0.3 });
    }

    #[test]
    fn softplus_is_stable() {
        assert_eq!(Activation::Softplus.apply(100.0), 100.0);
        assert!((Activation::Softplus.apply(0.0) - 2f32.ln()).abs() < 1e-7);
        assert!(Activation::Softplus.apply(-100.0) >= 0.0);
    }
}
