//! Optimizers over flat `f32` parameter tensors: [`Adam`] in the Keras 3 and the PyTorch flavour, and
//! [`Sgd`] with momentum and Nesterov.
//!
//! A model's parameters are several tensors (per layer a kernel, a recurrent kernel, a bias, ...). An
//! optimizer keeps one state slot per tensor, registered in order on the first [`Optimizer::step`]: tensor
//! `k` of every later step is the tensor `k` of the first one, and a step with another number of tensors or
//! another length is an error (nothing is updated then).
//!
//! Each flavour repeats its framework's `float32` arithmetic operation by operation, in the same order, so
//! that a run reproduces the framework's parameters to the last bit or close to it:
//! - Keras 3 (`keras/src/optimizers/adam.py`, `sgd.py`, on the TensorFlow backend): every operation is a
//!   separate `float32` operation, scalars such as `1 - beta_1` are computed in `f64` (Python floats) and
//!   then rounded, `beta^t` is a `float32` `pow`. TensorFlow runs its CPU kernels with denormals flushed to
//!   zero (inputs and results): the Keras flavours do the same, so a subnormal gradient acts as 0.
//! - PyTorch (`torch/optim/adam.py`, the single-tensor path used on the CPU): bias corrections and the step
//!   size in `f64`, the moment updates with ATen's fused multiply-adds (`lerp`, `addcmul`, `add(alpha=)`).
//!   PyTorch's CPU `sqrt` (MKL) is not correctly rounded (one `f32` ulp off for about one value in five);
//!   this flavour uses the exact `sqrt`, so it agrees with PyTorch to a few `f32` ulps, not bitwise.

use crate::error::{Error, ErrorKind, Result};

/// An optimizer updating a list of parameter tensors from their gradients.
pub trait Optimizer {
    /// One update of every parameter tensor: `params[k]` from `grads[k]`.
    ///
    /// The first call registers the tensors (their number and lengths, in order) and creates their state;
    /// later calls must pass the same tensors in the same order.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`] if `params` and `grads` differ in count or in a
    /// tensor's length, or disagree with the registered tensors;
    /// [`ErrorKind::BadArgument`] for an invalid hyperparameter (negative or
    /// non-finite learning rate, a beta outside `[0, 1)`, ...). Nothing is updated on error.
    fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]]) -> Result<()>;

    /// The learning rate.
    fn learning_rate(&self) -> f64;

    /// Changes the learning rate from the next step on (a schedule); the state is kept.
    fn set_learning_rate(&mut self, lr: f64);

    /// Number of steps taken since creation or [`reset`](Self::reset).
    fn iterations(&self) -> u64;

    /// Forgets the state and the registered tensors: the next step is a first step again.
    fn reset(&mut self);
}

/// The tensors registered on the first step and one state buffer per tensor and per kind of state.
#[derive(Clone, Debug, Default)]
struct Slots {
    /// Lengths of the registered tensors; `None` before the first step.
    lens: Option<Vec<usize>>,
    /// `state[kind][tensor]`.
    state: Vec<Vec<Vec<f32>>>,
}

impl Slots {
    /// Checks `params` and `grads` against each other and the registered tensors, registering them (with
    /// `kinds` zeroed buffers each) on the first call.
    fn check_and_register(&mut self, who: &str, kinds: usize, params: &[&mut [f32]], grads: &[&[f32]]) -> Result<()> {
        if params.len() != grads.len() {
            return Err(Error::shape(format!(
                "{who}: {} parameter tensors but {} gradient tensors",
                params.len(),
                grads.len()
            )));
        }
        for (k, (p, g)) in params.iter().zip(grads).enumerate() {
            if p.len() != g.len() {
                return Err(Error::shape(format!(
                    "{who}: tensor {k}: the parameter has {} elements, its gradient {}",
                    p.len(),
                    g.len()
                )));
            }
        }
        match &self.lens {
            Some(lens) => {
                if lens.len() != params.len() {
                    return Err(Error::shape(format!(
                        "{who}: the optimizer state holds {} tensors (registered by the first step), got {}",
                        lens.len(),
                        params.len()
                    )));
                }
                for (k, (&n, p)) in lens.iter().zip(params).enumerate() {
                    if n != p.len() {
                        return Err(Error::shape(format!(
                            "{who}: tensor {k} has {} elements, the first step registered {n}",
                            p.len()
                        )));
                    }
                }
            }
            None => {
                let lens: Vec<usize> = params.iter().map(|p| p.len()).collect();
                self.state = (0..kinds).map(|_| lens.iter().map(|&n| vec![0.0; n]).collect()).collect();
                self.lens = Some(lens);
            }
        }
        Ok(())
    }
}

fn check_finite_nonneg(who: &str, name: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(Error::argument(format!("{who}: {name} must be finite and >= 0, got {v}")));
    }
    Ok(())
}

/// Flush-to-zero, as TensorFlow's CPU kernels run (`FTZ` and `DAZ` set): a subnormal becomes a zero of
/// the same sign.
#[inline(always)]
fn ftz(x: f32) -> f32 {
    // `|x| < MIN_POSITIVE` holds for subnormals and zeros (which it leaves as they are); unlike
    // `is_subnormal`, a compare and a select the compiler vectorizes.
    if x.abs() < f32::MIN_POSITIVE {
        0.0f32.copysign(x)
    } else {
        x
    }
}

/// Which framework's Adam [`Adam`] reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdamFlavor {
    /// Keras 3 `keras.optimizers.Adam` (`keras/src/optimizers/adam.py`): defaults lr 1e-3, betas 0.9 and
    /// 0.999, **eps 1e-7**; `lr_t = lr sqrt(1 - b2^t) / (1 - b1^t)`, `m += (g - m)(1 - b1)`,
    /// `v += (g^2 - v)(1 - b2)`, `w -= lr_t m / (sqrt(v) + eps)`. Weight decay is Keras' decoupled one,
    /// applied first: `w -= w wd lr`.
    Keras,
    /// PyTorch `torch.optim.Adam` (single-tensor path): defaults lr 1e-3, betas 0.9 and 0.999, **eps 1e-8**;
    /// `m = lerp(m, g, 1 - b1)`, `v = b2 v + (1 - b2) g^2`,
    /// `w -= lr / (1 - b1^t) m / (sqrt(v) / sqrt(1 - b2^t) + eps)`. Weight decay is PyTorch's L2 one:
    /// `g += wd w` before the moments.
    PyTorch,
}

/// Adam, in the Keras 3 or the PyTorch flavour (they differ in where `eps` enters and in its default).
///
/// ```
/// use masked_rnn::{Adam, Optimizer};
/// let (mut kernel, mut bias) = (vec![0.5f32; 6], vec![0.0f32; 2]);
/// let mut adam = Adam::keras().with_lr(1e-2);
/// for _ in 0..3 {
///     let (gk, gb) = (vec![0.1f32; 6], vec![-1.0f32; 2]);
///     adam.step(&mut [&mut kernel, &mut bias], &[&gk, &gb])?;
/// }
/// assert!(kernel[0] < 0.5 && bias[0] > 0.0);
/// assert!(adam.step(&mut [&mut kernel], &[&[0.0; 6]]).is_err()); // not the registered tensors
/// # Ok::<(), masked_rnn::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Adam {
    flavor: AdamFlavor,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    iterations: u64,
    /// Kinds: 0 = first moment `m`, 1 = second moment `v`.
    slots: Slots,
}

impl Adam {
    /// Adam with the defaults of `flavor`'s framework (see [`AdamFlavor`]); no weight decay.
    pub fn new(flavor: AdamFlavor) -> Self {
        let eps = match flavor {
            AdamFlavor::Keras => 1e-7,
            AdamFlavor::PyTorch => 1e-8,
        };
        Adam {
            flavor,
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps,
            weight_decay: 0.0,
            iterations: 0,
            slots: Slots::default(),
        }
    }

    /// Keras 3 `Adam()`: lr 1e-3, betas 0.9 and 0.999, eps 1e-7.
    pub fn keras() -> Self {
        Self::new(AdamFlavor::Keras)
    }

    /// PyTorch `Adam(params)`: lr 1e-3, betas 0.9 and 0.999, eps 1e-8.
    pub fn pytorch() -> Self {
        Self::new(AdamFlavor::PyTorch)
    }

    /// Sets the learning rate (Keras `learning_rate`, PyTorch `lr`).
    pub fn with_lr(mut self, lr: f64) -> Self {
        self.lr = lr;
        self
    }

    /// Sets the betas (Keras `beta_1`, `beta_2`; PyTorch `betas`), each in `[0, 1)`.
    pub fn with_betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }

    /// Sets eps (Keras `epsilon`, PyTorch `eps`).
    pub fn with_eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    /// Sets the weight decay, 0 for none: decoupled in the Keras flavour (`w -= w wd lr` before the
    /// update, Keras' `weight_decay`), L2 in the PyTorch flavour (`g += wd w`, `Adam(weight_decay=)`).
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// The flavour.
    pub fn flavor(&self) -> AdamFlavor {
        self.flavor
    }
    /// `(beta1, beta2)`.
    pub fn betas(&self) -> (f64, f64) {
        (self.beta1, self.beta2)
    }
    /// eps.
    pub fn eps(&self) -> f64 {
        self.eps
    }
    /// The weight decay (0 for none).
    pub fn weight_decay(&self) -> f64 {
        self.weight_decay
    }

    fn check_hyper(&self) -> Result<()> {
        check_finite_nonneg("Adam", "the learning rate", self.lr)?;
        check_finite_nonneg("Adam", "eps", self.eps)?;
        check_finite_nonneg("Adam", "the weight decay", self.weight_decay)?;
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::argument(format!("Adam: {name} must be in [0, 1), got {b}")));
            }
        }
        Ok(())
    }
}

impl Default for Adam {
    /// [`Adam::keras`].
    fn default() -> Self {
        Self::keras()
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]]) -> Result<()> {
        self.check_hyper()?;
        if self.iterations == u64::MAX {
            return Err(Error::argument("Adam: the step counter overflows"));
        }
        self.slots.check_and_register("Adam", 2, params, grads)?;
        let t = self.iterations + 1;
        let update = match self.flavor {
            AdamFlavor::Keras => AdamUpdate::Keras(KerasAdam::new(self, t)),
            AdamFlavor::PyTorch => AdamUpdate::PyTorch(TorchAdam::new(self, t)),
        };
        let [ms, vs] = &mut self.slots.state[..] else {
            return Err(Error::new(ErrorKind::Internal, "Adam: the state must hold two kinds of buffers"));
        };
        for (((w, &g), m), v) in params.iter_mut().zip(grads).zip(ms.iter_mut()).zip(vs.iter_mut()) {
            match &update {
                AdamUpdate::Keras(k) => k.update(w, g, m, v),
                AdamUpdate::PyTorch(k) => k.update(w, g, m, v),
            }
        }
        self.iterations = t;
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn iterations(&self) -> u64 {
        self.iterations
    }
    fn reset(&mut self) {
        self.iterations = 0;
        self.slots = Slots::default();
    }
}

/// One Adam step of either flavour.
enum AdamUpdate {
    Keras(KerasAdam),
    PyTorch(TorchAdam),
}

/// The `float32` scalars of one Keras Adam step.
struct KerasAdam {
    lr: f32,
    wd: Option<f32>,
    alpha: f32,
    one_minus_b1: f32,
    one_minus_b2: f32,
    eps: f32,
}

impl KerasAdam {
    fn new(a: &Adam, t: u64) -> Self {
        // learning_rate is a float32 variable; local_step = cast(iterations + 1, float32);
        // beta_power = pow(cast(beta, float32), local_step); alpha = lr * sqrt(1 - b2p) / (1 - b1p).
        let lr = ftz(a.lr as f32);
        let step = t as f32;
        let b1p = ftz((a.beta1 as f32).powf(step));
        let b2p = ftz((a.beta2 as f32).powf(step));
        let alpha = ftz(ftz(lr * ftz(ftz(1.0 - b2p).sqrt())) / ftz(1.0 - b1p));
        KerasAdam {
            lr,
            wd: (a.weight_decay != 0.0).then_some(ftz(a.weight_decay as f32)),
            alpha,
            // `1 - self.beta_1` is a Python float, rounded to float32 when it meets the tensor.
            one_minus_b1: ftz((1.0 - a.beta1) as f32),
            one_minus_b2: ftz((1.0 - a.beta2) as f32),
            eps: ftz(a.eps as f32),
        }
    }

    #[inline]
    fn update(&self, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = ftz(g);
            let mut wv = ftz(*w);
            if let Some(wd) = self.wd {
                // variable.assign_sub(variable * wd * lr)
                wv = ftz(wv - ftz(ftz(wv * wd) * self.lr));
            }
            // m += (g - m) * (1 - b1); v += (g^2 - v) * (1 - b2)
            *m = ftz(*m + ftz(ftz(g - *m) * self.one_minus_b1));
            *v = ftz(*v + ftz(ftz(ftz(g * g) - *v) * self.one_minus_b2));
            // w -= (m * alpha) / (sqrt(v) + eps)
            *w = ftz(wv - ftz(ftz(*m * self.alpha) / ftz(ftz(v.sqrt()) + self.eps)));
        }
    }
}

/// The scalars of one PyTorch Adam step (computed in `f64` as Python does, rounded where ATen rounds).
struct TorchAdam {
    wd: Option<f32>,
    lerp_weight: f32,
    beta2: f32,
    one_minus_b2: f32,
    bc2_sqrt: f32,
    eps: f32,
    neg_step_size: f32,
}

impl TorchAdam {
    fn new(a: &Adam, t: u64) -> Self {
        // The step counter is a float32 tensor; `_get_value(step_t)` gives it to Python as a float.
        let step = (t as f32) as f64;
        let bc1 = 1.0 - a.beta1.powf(step);
        let bc2 = 1.0 - a.beta2.powf(step);
        let step_size = a.lr / bc1;
        TorchAdam {
            wd: (a.weight_decay != 0.0).then_some(a.weight_decay as f32),
            lerp_weight: (1.0 - a.beta1) as f32,
            beta2: a.beta2 as f32,
            one_minus_b2: (1.0 - a.beta2) as f32,
            bc2_sqrt: bc2.powf(0.5) as f32,
            eps: a.eps as f32,
            neg_step_size: (-step_size) as f32,
        }
    }

    #[inline]
    fn update(&self, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let wt = self.lerp_weight;
        for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            // grad = grad.add(param, alpha=wd): fmadd(param, wd, grad)
            let g = match self.wd {
                Some(wd) => w.mul_add(wd, g),
                None => g,
            };
            // exp_avg.lerp_(grad, 1 - beta1): fmadd(coeff, end - start, base)
            *m = if wt.abs() < 0.5 { wt.mul_add(g - *m, *m) } else { (wt - 1.0).mul_add(g - *m, g) };
            // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            *v = (self.one_minus_b2 * g).mul_add(g, *v * self.beta2);
            // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            let denom = v.sqrt() / self.bc2_sqrt + self.eps;
            // param.addcdiv_(exp_avg, denom, value=-step_size)
            *w += (self.neg_step_size * *m) / denom;
        }
    }
}

/// Stochastic gradient descent with optional momentum and Nesterov momentum, in Keras 3's formulation
/// (`keras/src/optimizers/sgd.py`), `float32` and flush-to-zero as on TensorFlow:
///
/// - no momentum: `w -= g lr`;
/// - momentum: `m = m momentum - g lr`, then `w += m`, or with Nesterov `w += m momentum - g lr`.
///
/// PyTorch's `torch.optim.SGD` (dampening 0) keeps `b = momentum b + g` (`b = g` on the first step) and
/// updates `w -= lr b`, or with Nesterov `w -= lr (g + momentum b)`. For a constant learning rate Keras'
/// `m` is `-lr b`, so both give the same parameters up to rounding (a few `f32` ulps); with a learning
/// rate that changes between steps they differ (Keras' momentum remembers the old rates).
///
/// Defaults (Keras `SGD()`): lr 0.01, momentum 0, no Nesterov.
#[derive(Clone, Debug)]
pub struct Sgd {
    lr: f64,
    momentum: f64,
    nesterov: bool,
    iterations: u64,
    /// Kind 0: the momentum `m`.
    slots: Slots,
}

impl Sgd {
    /// Plain SGD with learning rate `lr` (no momentum).
    pub fn new(lr: f64) -> Self {
        Sgd { lr, momentum: 0.0, nesterov: false, iterations: 0, slots: Slots::default() }
    }

    /// Keras 3 `SGD()`: lr 0.01, no momentum.
    pub fn keras() -> Self {
        Self::new(0.01)
    }

    /// Sets the learning rate.
    pub fn with_lr(mut self, lr: f64) -> Self {
        self.lr = lr;
        self
    }

    /// Sets the momentum (0 for none), in `[0, 1]` as Keras requires.
    pub fn with_momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }

    /// Turns Nesterov momentum on or off.
    pub fn with_nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }

    /// The momentum.
    pub fn momentum(&self) -> f64 {
        self.momentum
    }
    /// Whether Nesterov momentum is on.
    pub fn nesterov(&self) -> bool {
        self.nesterov
    }
}

impl Default for Sgd {
    /// [`Sgd::keras`].
    fn default() -> Self {
        Self::keras()
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]]) -> Result<()> {
        check_finite_nonneg("SGD", "the learning rate", self.lr)?;
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::argument(format!("SGD: the momentum must be in [0, 1], got {}", self.momentum)));
        }
        if self.iterations == u64::MAX {
            return Err(Error::argument("SGD: the step counter overflows"));
        }
        self.slots.check_and_register("SGD", 1, params, grads)?;
        let lr = ftz(self.lr as f32);
        let mom = ftz(self.momentum as f32);
        for ((w, &g), m) in params.iter_mut().zip(grads).zip(self.slots.state[0].iter_mut()) {
            for ((w, &g), m) in w.iter_mut().zip(g).zip(m.iter_mut()) {
                let g = ftz(g);
                let wv = ftz(*w);
                *w = if self.momentum != 0.0 {
                    // m = m * momentum - g * lr
                    *m = ftz(ftz(*m * mom) - ftz(g * lr));
                    if self.nesterov {
                        ftz(wv + ftz(ftz(*m * mom) - ftz(g * lr)))
                    } else {
                        ftz(wv + *m)
                    }
                } else {
                    ftz(wv - ftz(g * lr))
                };
            }
        }
        self.iterations += 1;
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn iterations(&self) -> u64 {
        self.iterations
    }
    fn reset(&mut self) {
        self.iterations = 0;
        self.slots = Slots::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatches_are_errors_and_update_nothing() {
        let mut adam = Adam::pytorch();
        let (mut a, mut b) = (vec![1.0f32; 3], vec![2.0f32; 2]);
        adam.step(&mut [&mut a, &mut b], &[&[0.5; 3], &[0.5; 2]]).unwrap();
        let (a1, b1) = (a.clone(), b.clone());
        let e = adam.step(&mut [&mut a], &[&[0.5; 3]]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadShape);
        assert!(e.message().contains("holds 2 tensors"), "{e}");
        let mut long = vec![0.0f32; 4];
        let e = adam.step(&mut [&mut a, &mut long], &[&[0.5; 3], &[0.5; 4]]).unwrap_err();
        assert!(e.message().contains("tensor 1 has 4 elements"), "{e}");
        let e = adam.step(&mut [&mut a, &mut b], &[&[0.5; 3], &[0.5; 3]]).unwrap_err();
        assert!(e.message().contains("tensor 1: the parameter has 2 elements"), "{e}");
        let e = adam.step(&mut [&mut a, &mut b], &[&[0.5; 3]]).unwrap_err();
        assert!(e.message().contains("2 parameter tensors but 1 gradient"), "{e}");
        assert_eq!((a.clone(), b.clone()), (a1, b1));
        assert_eq!(adam.iterations(), 1);
        adam.reset();
        adam.step(&mut [&mut a], &[&[0.5; 3]]).unwrap();
        assert_eq!(adam.iterations(), 1);
    }

    #[test]
    fn bad_hyperparameters_are_errors() {
        let mut w = vec![1.0f32; 2];
        for mut adam in [
            Adam::keras().with_lr(-1.0),
            Adam::keras().with_lr(f64::NAN),
            Adam::pytorch().with_betas(1.0, 0.999),
            Adam::pytorch().with_betas(0.9, -0.1),
            Adam::keras().with_eps(f64::INFINITY),
            Adam::pytorch().with_weight_decay(-0.1),
        ] {
            let e = adam.step(&mut [&mut w], &[&[1.0; 2]]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::BadArgument, "{e}");
        }
        for mut sgd in [Sgd::new(-0.1), Sgd::keras().with_momentum(1.5), Sgd::keras().with_momentum(f64::NAN)] {
            assert_eq!(sgd.step(&mut [&mut w], &[&[1.0; 2]]).unwrap_err().kind(), ErrorKind::BadArgument);
        }
        assert_eq!(w, vec![1.0; 2]);
    }

    #[test]
    fn first_adam_step_moves_by_about_lr() {
        // With bias correction the first step is lr * g / (|g| + eps') in both flavours.
        for mut adam in [Adam::keras(), Adam::pytorch()] {
            let mut w = vec![1.0f32, -1.0, 0.0];
            adam.step(&mut [&mut w], &[&[3.0, -0.25, 0.0]]).unwrap();
            assert!((w[0] - (1.0 - 1e-3)).abs() < 1e-6, "{:?} {w:?}", adam.flavor());
            assert!((w[1] - (-1.0 + 1e-3)).abs() < 1e-6, "{:?} {w:?}", adam.flavor());
            assert_eq!(w[2], 0.0);
        }
    }

    #[test]
    fn sgd_forms() {
        let mut w = vec![1.0f32];
        let mut plain = Sgd::new(0.5);
        plain.step(&mut [&mut w], &[&[1.0]]).unwrap();
        assert_eq!(w, [0.5]);
        // momentum 0.5, lr 1: m = -1, w = -1; m = -1.5, w = -2.5
        let (mut a, mut b) = (vec![0.0f32], vec![0.0f32]);
        let mut heavy = Sgd::new(1.0).with_momentum(0.5);
        let mut nest = Sgd::new(1.0).with_momentum(0.5).with_nesterov(true);
        for _ in 0..2 {
            heavy.step(&mut [&mut a], &[&[1.0]]).unwrap();
            nest.step(&mut [&mut b], &[&[1.0]]).unwrap();
        }
        assert_eq!(a, [-2.5]);
        // Nesterov: w += m * 0.5 - g: -1.5, then m = -1.5: w += -1.75 -> -3.25
        assert_eq!(b, [-3.25]);
    }

    #[test]
    fn flush_to_zero() {
        assert_eq!(ftz(1e-40).to_bits(), 0.0f32.to_bits());
        assert_eq!(ftz(-1e-40).to_bits(), (-0.0f32).to_bits());
        assert_eq!(ftz(1e-37), 1e-37);
        assert!(ftz(f32::NAN).is_nan());
    }
}
