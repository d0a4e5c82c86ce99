//! The training loop of a [`Sequential`] stack, reporting as Keras 3's `model.fit` does.
//!
//! - Batches are consecutive sample ranges of the dataset (the last one may be smaller), taken with
//!   [`MaskedSeq::slice_batch`]: each sample keeps its valid steps, nothing is copied. With
//!   [`Shuffle::Seeded`] the samples are permuted at the start of every epoch (one copy of the dataset per
//!   epoch), then cut into consecutive ranges.
//! - The loss logged after each batch is the running mean of the epoch's batch losses weighted by each
//!   batch's number of samples (not by its valid steps); the epoch's `loss` is the last logged value.
//! - `val_loss` is [`Sequential::evaluate`] on the validation data after the epoch, with the training batch
//!   size (Keras' `validation_batch_size` default).
//!
//! Reproducing a Keras run: same initial weights ([`Sequential::set_weights`]), `shuffle=False`
//! ([`Shuffle::Off`]), [`Adam::keras`](crate::Adam::keras), the same batch size; the masked loss when the
//! mask reaches the loss, [`Layer::DropMask`](crate::Layer::DropMask) (or an unmasked [`Loss`]) when a
//! `Lambda` dropped it.
//!
//! ```
//! use masked_rnn::train::fit::{FitOptions, Shuffle};
//! use masked_rnn::{Adam, KerasLstm, KerasLstmOptions, Loss, LstmWeights, MaskValueMode, MaskedSeq, Sequential};
//! let (n, t, f, h) = (6, 5, 2, 3);
//! let w = LstmWeights::from_keras(f, h, &vec![0.1; f * 4 * h], &vec![-0.1; h * 4 * h], None)?;
//! let mut model = Sequential::new()
//!     .masking(0.0, MaskValueMode::Ieee)
//!     .lstm(KerasLstm::new(w, KerasLstmOptions::default())?)
//!     .time_slice(1, None);
//! // Sample k has k + 1 valid steps, zero padding after them.
//! let x: Vec<f32> = (0..n * t * f).map(|e| if (e / f) % t <= (e / f) / t { 0.5 } else { 0.0 }).collect();
//! let x = MaskedSeq::dense(x, n, t, f)?;
//! let y = vec![0.25; n * (t - 1) * h];
//! let mut adam = Adam::keras();
//! let opts = FitOptions::new(Loss::MaskedMae, &mut adam).epochs(3).batch_size(4).shuffle(Shuffle::Off);
//! let history = model.fit(&x, &y, opts)?;
//! assert_eq!(history.loss.len(), 3);
//! assert_eq!(history.batch_loss[0].len(), 2); // batches of 4 and 2 samples
//! assert!(history.loss[2] < history.loss[0]);
//! # Ok::<(), masked_rnn::Error>(())
//! ```

use std::time::{Duration, Instant};

use crate::error::{check_len, checked_product, Error, Result};
use crate::frameworks::sequential::{MaskedSeq, Sequential};
use crate::train::loss::Loss;
use crate::train::optim::Optimizer;
use crate::view::{Run, SeqView};

/// Sample order of each epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Shuffle {
    /// The dataset's order every epoch (Keras `shuffle=False`).
    #[default]
    Off,
    /// A new permutation every epoch, drawn from a generator seeded once per [`Sequential::fit`] call:
    /// the same seed gives the same run. (Keras' `shuffle=True` uses its own generator; its order cannot
    /// be reproduced.)
    Seeded(u64),
}

/// How [`Sequential::fit`] trains.
pub struct FitOptions<'a> {
    /// Passes over the dataset; 0 trains nothing.
    pub epochs: usize,
    /// Samples per batch (> 0); the last batch of an epoch may be smaller.
    pub batch_size: usize,
    /// Sample order.
    pub shuffle: Shuffle,
    /// Data `(x, y)` evaluated after every epoch (`val_loss`).
    pub validation: Option<(&'a MaskedSeq, &'a [f32])>,
    /// The loss.
    pub loss: Loss,
    /// The optimizer; its state carries over from call to call, as a compiled Keras model's does.
    pub optimizer: &'a mut dyn Optimizer,
    /// Threads per layer call (0: all cores, 1: the calling thread); results do not depend on it.
    pub threads: usize,
    /// Prints a progress line per epoch to stdout.
    pub verbose: bool,
}

impl<'a> FitOptions<'a> {
    /// Keras' `fit` defaults: 1 epoch, batch size 32, no validation, quiet, one thread; no shuffling
    /// (Keras shuffles by default; see [`Shuffle`]).
    pub fn new(loss: Loss, optimizer: &'a mut dyn Optimizer) -> Self {
        FitOptions {
            epochs: 1,
            batch_size: 32,
            shuffle: Shuffle::Off,
            validation: None,
            loss,
            optimizer,
            threads: 1,
            verbose: false,
        }
    }
    /// Sets [`epochs`](Self::epochs).
    pub fn epochs(mut self, epochs: usize) -> Self {
        self.epochs = epochs;
        self
    }
    /// Sets [`batch_size`](Self::batch_size).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }
    /// Sets [`shuffle`](Self::shuffle).
    pub fn shuffle(mut self, shuffle: Shuffle) -> Self {
        self.shuffle = shuffle;
        self
    }
    /// Sets [`validation`](Self::validation).
    pub fn validation(mut self, x: &'a MaskedSeq, y: &'a [f32]) -> Self {
        self.validation = Some((x, y));
        self
    }
    /// Sets [`threads`](Self::threads).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }
    /// Sets [`verbose`](Self::verbose).
    pub fn verbose(mut self, verbose: bool) -> Self {
        self.verbose = verbose;
        self
    }
}

/// What [`Sequential::fit`] reports (Keras' `History.history` plus the per-batch logs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// Per epoch: the training loss (the last logged running mean).
    pub loss: Vec<f64>,
    /// Per epoch: the loss on the validation data after the epoch; empty without validation data.
    pub val_loss: Vec<f64>,
    /// `[epoch][batch]`: the loss logged after each batch (Keras' `logs["loss"]` in
    /// `on_train_batch_end`): the running mean of the epoch's batch losses weighted by samples.
    pub batch_loss: Vec<Vec<f64>>,
    /// `[epoch][batch]`: each batch's own loss, at the weights its step started from.
    pub step_loss: Vec<Vec<f64>>,
    /// Per epoch: wall time, validation included.
    pub epoch_time: Vec<Duration>,
}

/// What [`Sequential::fit_with`] passes to its callback after each optimizer step.
#[derive(Debug)]
pub struct BatchEnd<'m> {
    /// Epoch, from 0.
    pub epoch: usize,
    /// Batch within the epoch, from 0.
    pub batch: usize,
    /// Samples in the batch.
    pub samples: usize,
    /// The batch's own loss (at the weights the step started from).
    pub loss: f64,
    /// The logged loss: running mean of the epoch's batch losses so far, weighted by samples.
    pub logged: f64,
    /// The model after the step.
    pub model: &'m Sequential,
}

/// SplitMix64: small, fast, and fully determined by its seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher-Yates.
    fn shuffle(&mut self, v: &mut [usize]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// `x` and `y` (`row` target values per sample) in the sample order `perm`, each sample with its valid
/// steps.
fn permuted(x: &MaskedSeq, y: &[f32], row: usize, perm: &[usize]) -> Result<(MaskedSeq, Vec<f32>)> {
    let (t, f) = (x.time(), x.features());
    let mut data = Vec::with_capacity(checked_product(&[x.batch(), t, f], "x")?);
    let mut ys = Vec::with_capacity(y.len());
    let mut runs: Vec<Vec<Run>> = Vec::with_capacity(perm.len());
    for &s in perm {
        for step in 0..t {
            data.extend_from_slice(x.step(s, step));
        }
        ys.extend_from_slice(&y[s * row..(s + 1) * row]);
        runs.push(x.view().runs(s).filter(|r| r.len > 0).collect());
    }
    Ok((MaskedSeq::new(data, f, SeqView::from_runs(t, &runs)?)?, ys))
}

impl Sequential {
    /// Target values per sample for an input of `x`'s shape, checking `y` (`[N, T_out, F_out]`).
    fn target_row(&self, what: &str, x: &MaskedSeq, y: &[f32]) -> Result<usize> {
        let (t, f) = self.output_shape(x.time(), x.features())?;
        let row = checked_product(&[t, f], what)?;
        check_len(what, y.len(), checked_product(&[x.batch(), row], what)?)?;
        Ok(row)
    }

    /// Trains on `x` (`[N, T, F]` with its view, as [`forward`](Self::forward) takes it) against the
    /// targets `y` (dense `[N, T_out, F_out]` of the model output, like [`MaskedSeq::to_vec`]), as Keras'
    /// `model.fit` (see the [module docs](self)). Each batch is one [`train_step`](Self::train_step).
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) if `y` or the validation data disagree with the
    /// model's output shape, or a layer's input size disagrees;
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for `batch_size == 0`, an empty dataset
    /// (with `epochs > 0`), a slice outside the time axis or an LSTM layer with peepholes; the optimizer's
    /// errors. Shapes are checked before the first step; `epochs == 0` is a no-op.
    pub fn fit(&mut self, x: &MaskedSeq, y: &[f32], options: FitOptions<'_>) -> Result<History> {
        self.fit_with(x, y, options, |_| {})
    }

    /// [`fit`](Self::fit), calling `on_batch_end` after every optimizer step (Keras' `on_train_batch_end`).
    ///
    /// # Errors
    /// As [`fit`](Self::fit).
    pub fn fit_with(
        &mut self,
        x: &MaskedSeq,
        y: &[f32],
        options: FitOptions<'_>,
        mut on_batch_end: impl FnMut(&BatchEnd<'_>),
    ) -> Result<History> {
        let FitOptions { epochs, batch_size, shuffle, validation, loss, optimizer, threads, verbose } = options;
        if batch_size == 0 {
            return Err(Error::argument("batch_size must be at least 1"));
        }
        self.check_trainable()?;
        let row = self.target_row("y", x, y)?;
        if let Some((xv, yv)) = validation {
            self.target_row("validation y", xv, yv)?;
        }
        let mut history = History::default();
        if epochs == 0 {
            return Ok(history);
        }
        let n = x.batch();
        if n == 0 {
            return Err(Error::argument("no training samples"));
        }
        let mut rng = match shuffle {
            Shuffle::Off => None,
            Shuffle::Seeded(seed) => Some((SplitMix64(seed), (0..n).collect::<Vec<usize>>())),
        };
        for epoch in 0..epochs {
            let started = Instant::now();
            let shuffled = match &mut rng {
                Some((rng, perm)) => {
                    perm.iter_mut().enumerate().for_each(|(k, p)| *p = k);
                    rng.shuffle(perm);
                    Some(permuted(x, y, row, perm)?)
                }
                None => None,
            };
            let (xs, ys) = match &shuffled {
                Some((xs, ys)) => (xs, &ys[..]),
                None => (x, y),
            };
            let (mut logged, mut steps) = (Vec::new(), Vec::new());
            let (mut seen, mut total) = (0usize, 0.0f64);
            for (batch, lo) in (0..n).step_by(batch_size).enumerate() {
                let hi = (lo + batch_size).min(n);
                let xb = xs.slice_batch(lo, hi)?;
                let value = self.train_step(&xb, &ys[lo * row..hi * row], loss, optimizer, threads)?.value;
                seen += hi - lo;
                total += value * (hi - lo) as f64;
                let mean = total / seen as f64;
                logged.push(mean);
                steps.push(value);
                on_batch_end(&BatchEnd { epoch, batch, samples: hi - lo, loss: value, logged: mean, model: self });
            }
            let epoch_loss = *logged.last().unwrap_or(&0.0);
            history.loss.push(epoch_loss);
            history.batch_loss.push(logged);
            history.step_loss.push(steps);
            let val = match validation {
                Some((xv, yv)) => {
                    let v = self.evaluate(xv, yv, batch_size, loss, threads)?;
                    history.val_loss.push(v);
                    Some(v)
                }
                None => None,
            };
            let elapsed = started.elapsed();
            history.epoch_time.push(elapsed);
            if verbose {
                let val = val.map(|v| format!(" - val_loss: {v:.4}")).unwrap_or_default();
                println!("Epoch {}/{epochs} - loss: {epoch_loss:.4}{val} - {} ms", epoch + 1, elapsed.as_millis());
            }
        }
        Ok(history)
    }

    /// The loss of the model on a dataset, as Keras 3's `model.evaluate(x, y, batch_size)` reports it:
    /// each batch's loss (over its valid steps, for a masked loss), averaged over the batches weighted by
    /// their number of samples. Inference path ([`forward`](Self::forward)).
    ///
    /// # Errors
    /// As [`fit`](Self::fit) for shapes, `batch_size == 0` and an empty dataset.
    pub fn evaluate(&self, x: &MaskedSeq, y: &[f32], batch_size: usize, loss: Loss, threads: usize) -> Result<f64> {
        if batch_size == 0 {
            return Err(Error::argument("batch_size must be at least 1"));
        }
        let row = self.target_row("y", x, y)?;
        let n = x.batch();
        if n == 0 {
            return Err(Error::argument("no samples to evaluate"));
        }
        let mut total = 0.0f64;
        for lo in (0..n).step_by(batch_size) {
            let hi = (lo + batch_size).min(n);
            let (out, _) = self.forward(&x.slice_batch(lo, hi)?, threads)?;
            total += loss.value(&out, &y[lo * row..hi * row])?.value * (hi - lo) as f64;
            self.recycle(out);
        }
        Ok(total / n as f64)
    }

    /// The model output for `x` (Keras' `model.predict`): [`forward`](Self::forward) on the whole batch,
    /// returned with its view.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn predict(&self, x: &MaskedSeq, threads: usize) -> Result<MaskedSeq> {
        self.forward(x, threads).map(|(y, _)| y)
    }
}
