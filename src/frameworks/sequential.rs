//! A small layer stack in the Keras style: `Masking -> LSTM / GRU / SimpleRNN / Bidirectional -> ... -> time
//! slice`, where the sequence view flows through the stack. The masked losses are in [`train::loss`](crate::train::loss), the training
//! loop ([`Sequential::fit`], [`Sequential::evaluate`]) in [`train::fit`](crate::train::fit).
//!
//! This is the seed model of the crate: Keras' `Lambda(lambda x: x[:, N:])` silently dropped the mask so the
//! loss counted padding; here [`Layer::TimeSlice`] shifts the view instead, in O(B), and the losses average
//! over valid steps only, as Keras 3 does when the mask survives. [`Layer::DropMask`] reproduces the bug on
//! purpose (every step counts from there on).
//!
//! Training ([`Sequential::train_step`]): the training forward keeps every layer's input and each recurrent
//! layer's tape; the backward walks the layers in reverse, each layer mapping the gradient with respect to
//! its output to the gradient with respect to its input (a time slice scatters into the unsliced
//! positions, zeros elsewhere; `DropMask` passes it through; a recurrent layer runs its backward
//! ([`KerasLstm::backward`], [`KerasGru::backward`](crate::KerasGru::backward), ...,
//! [`KerasBidirectional::backward`]) and also writes its parameter gradients; `Masking` zeroes the masked
//! steps), and stops at the first layer with parameters. The optimizer then updates every recurrent
//! layer's kernel, recurrent kernel and bias (a `Bidirectional`'s forward then backward layer), and each
//! layer is repacked.

use std::sync::{Arc, Mutex, TryLockError};

use crate::cells::grads::{LstmGrads, PytorchLayout};
use crate::cells::weights::LstmWeights;
use crate::engine::{ForwardStats, Workspace};
use crate::error::{check_len, checked_product, Error, ErrorKind, Result};
use crate::frameworks::bidirectional::{
    BidirectionalGrads, BidirectionalOutputs, BidirectionalTape, BidirectionalUpstream, KerasBidirectional, MergeMode,
};
use crate::frameworks::keras::{
    KerasGrads, KerasGru, KerasLstm, KerasOutputs, KerasSimpleRnn, KerasTape, KerasUpstream, Recurrent, StridedInput,
};
use crate::train::loss::{Loss, LossValue};
use crate::train::optim::Optimizer;
use crate::view::{mask_from_values, MaskValueMode, SeqView};

/// A padded batch `[B, T, F]` with its valid-step view. The batch and time axes may be a window of a
/// larger tensor (after a time slice or a batch slice), sharing its storage.
#[derive(Clone, Debug)]
pub struct MaskedSeq {
    /// Shared storage (a `Vec` behind the `Arc`: wrapping a layer's output copies nothing, and a
    /// stack can take the buffer back once no one else holds it).
    data: Arc<Vec<f32>>,
    /// Time length of the storage.
    stored_time: usize,
    /// First stored step of the window.
    t_off: usize,
    /// First stored sequence of the window.
    b_off: usize,
    features: usize,
    view: SeqView,
}

impl MaskedSeq {
    /// Wraps `data [B, T, F]` (B and T from `view`).
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`] if `data.len() != B * T * F`.
    pub fn new(data: Vec<f32>, features: usize, view: SeqView) -> Result<Self> {
        check_len("data", data.len(), checked_product(&[view.batch(), view.time(), features], "data")?)?;
        Ok(MaskedSeq { data: Arc::new(data), stored_time: view.time(), t_off: 0, b_off: 0, features, view })
    }

    /// Wraps `data [B, T, F]` with every step valid.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn dense(data: Vec<f32>, batch: usize, time: usize, features: usize) -> Result<Self> {
        Self::new(data, features, SeqView::full(batch, time))
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.view.batch()
    }
    /// Time steps in this window.
    pub fn time(&self) -> usize {
        self.view.time()
    }
    /// Features per step.
    pub fn features(&self) -> usize {
        self.features
    }
    /// The valid steps.
    pub fn view(&self) -> &SeqView {
        &self.view
    }

    /// Storage index of step `t` of sequence `b` of the window.
    #[inline]
    fn at(&self, b: usize, t: usize) -> usize {
        ((self.b_off + b) * self.stored_time + self.t_off + t) * self.features
    }

    /// The values of step `t` of sequence `b`.
    ///
    /// # Panics
    /// If `b` or `t` is out of range.
    pub fn step(&self, b: usize, t: usize) -> &[f32] {
        assert!(b < self.batch() && t < self.time(), "step ({b}, {t}) out of range");
        let o = self.at(b, t);
        &self.data[o..o + self.features]
    }

    /// The window as a dense `[B, T, F]` vector.
    pub fn to_vec(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.batch() * self.time() * self.features);
        self.extend_window(&mut out);
        out
    }

    /// The window as one dense `[B, T, F]` slice of the storage, when it is one (no time window, or a
    /// time window covering the whole stored axis): the case of every layer output and of
    /// [`slice_batch`](Self::slice_batch).
    pub fn as_dense(&self) -> Option<&[f32]> {
        if self.t_off != 0 || self.stored_time != self.time() {
            return None;
        }
        let o = self.at(0, 0);
        Some(&self.data[o..o + self.batch() * self.time() * self.features])
    }

    /// Appends the window, dense `[B, T, F]`, to `out`.
    fn extend_window(&self, out: &mut Vec<f32>) {
        if let Some(d) = self.as_dense() {
            out.extend_from_slice(d);
            return;
        }
        for b in 0..self.batch() {
            let o = self.at(b, 0);
            out.extend_from_slice(&self.data[o..o + self.time() * self.features]);
        }
    }

    /// Time steps `[a, b)`: the view is shifted and the storage shared; nothing is copied but the O(B)
    /// per-sequence run ranges.
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`] unless `a <= b <= T`.
    pub fn slice_time(&self, a: usize, b: usize) -> Result<MaskedSeq> {
        Ok(MaskedSeq {
            data: Arc::clone(&self.data),
            stored_time: self.stored_time,
            t_off: self.t_off + a,
            b_off: self.b_off,
            features: self.features,
            view: self.view.slice(a, b)?,
        })
    }

    /// Sequences `[lo, hi)` of the batch, each with its own valid steps: the storage is shared, nothing is
    /// copied but the O(hi - lo) per-sequence run ranges. A mini-batch of a dataset.
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`] unless `lo <= hi <= B`.
    pub fn slice_batch(&self, lo: usize, hi: usize) -> Result<MaskedSeq> {
        Ok(MaskedSeq {
            data: Arc::clone(&self.data),
            stored_time: self.stored_time,
            t_off: self.t_off,
            b_off: self.b_off + lo,
            features: self.features,
            view: self.view.select_batch(lo, hi)?,
        })
    }

    /// The same values with every step valid: what a Keras `Lambda` without `mask=` passes on.
    pub fn drop_mask(&self) -> MaskedSeq {
        MaskedSeq { view: SeqView::full(self.batch(), self.time()), ..self.clone() }
    }

    pub(crate) fn strided(&self) -> StridedInput<'_> {
        StridedInput { data: &self.data, off: self.at(0, 0), sb: self.stored_time * self.features, st: self.features }
    }
}

/// One layer of a [`Sequential`] stack.
#[derive(Clone, Debug)]
pub enum Layer {
    /// Keras `Masking(mask_value)`: a step is masked iff all its features equal `mask_value`; masked steps
    /// are output as `+0.0` (Keras 3.15). Any incoming view is replaced.
    Masking {
        /// The padding value.
        mask_value: f32,
        /// IEEE comparison (Keras) or NaN-aware.
        mode: MaskValueMode,
    },
    /// A Keras `LSTM`, `GRU` or `SimpleRNN` layer with `return_sequences=True`: the view passes through.
    Recurrent(Box<Recurrent>),
    /// A Keras `Bidirectional` layer with `return_sequences=True` and a merge mode other than `None`: the
    /// view passes through.
    Bidirectional(Box<KerasBidirectional>),
    /// `x[:, start:end]` with the mask carried along (`Lambda(..., mask=...)` done right).
    TimeSlice {
        /// First step kept.
        start: usize,
        /// One past the last step kept; `None` for the end of the axis.
        end: Option<usize>,
    },
    /// Every step valid from here on, values unchanged: a Keras `Lambda` without `mask=`, the seed
    /// model's bug (a masked loss after it counts the padded steps, whose outputs repeat the last valid
    /// output).
    DropMask,
}

/// A stack of layers through which the view flows.
#[derive(Debug, Default)]
pub struct Sequential {
    layers: Vec<Layer>,
    /// Buffers reused from call to call (see [`forward`](Self::forward)).
    scratch: Mutex<StackScratch>,
    /// What training keeps between its forward and its backward, reused from step to step.
    train: TrainScratch,
}

impl Clone for Sequential {
    /// The same layers, with scratch buffers of its own.
    fn clone(&self) -> Self {
        Sequential { layers: self.layers.clone(), scratch: Mutex::default(), train: TrainScratch::default() }
    }
}

/// What a [`Sequential`] keeps between calls: the engine's workspace, the intermediate outputs of the
/// last call, taken back once the next layer has consumed them, and the Masking layer's mask.
#[derive(Debug, Default)]
struct StackScratch {
    ws: Workspace,
    pool: Vec<Vec<f32>>,
    mask: Vec<bool>,
}

/// Buffers a stack keeps at least room for (see [`Sequential::pool_limit`]).
const POOL_BUFFERS: usize = 4;

impl StackScratch {
    /// A buffer of `n` elements with unspecified contents (the caller overwrites every element).
    fn take(&mut self, n: usize) -> Vec<f32> {
        let mut v = self.pick(n);
        v.resize(n, 0.0);
        v
    }

    /// An empty buffer with room for `n` elements.
    fn take_empty(&mut self, n: usize) -> Vec<f32> {
        let mut v = self.pick(n);
        v.clear();
        v.reserve(n);
        v
    }

    /// The smallest pooled buffer with room for `n`, else the largest one, else a new one.
    fn pick(&mut self, n: usize) -> Vec<f32> {
        let fit =
            (0..self.pool.len()).filter(|&k| self.pool[k].capacity() >= n).min_by_key(|&k| self.pool[k].capacity());
        let pick = fit.or_else(|| (0..self.pool.len()).max_by_key(|&k| self.pool[k].capacity()));
        pick.map(|k| self.pool.swap_remove(k)).unwrap_or_default()
    }

    /// Takes `seq`'s storage back if nothing else holds it and fewer than `limit` buffers are pooled.
    fn recycle(&mut self, seq: MaskedSeq, limit: usize) {
        if let Ok(v) = Arc::try_unwrap(seq.data) {
            if self.pool.len() < limit {
                self.pool.push(v);
            }
        }
    }

    /// `seq`'s window as a dense sequence in a pooled buffer (shares the view).
    fn densify(&mut self, seq: &MaskedSeq) -> Result<MaskedSeq> {
        let mut x = self.take_empty(checked_product(&[seq.batch(), seq.time(), seq.features()], "x")?);
        seq.extend_window(&mut x);
        MaskedSeq::new(x, seq.features(), seq.view().clone())
    }
}

/// What a training step keeps and reuses: the activations of the training forward, the recurrent layers'
/// tapes, the gradient buffers and the parameters handed to the optimizer.
#[derive(Debug, Default)]
struct TrainScratch {
    /// `acts[k]` is the input of layer `k`; `acts[L]` the model output (of the last training forward).
    acts: Vec<MaskedSeq>,
    /// Per layer; filled for the recurrent layers only.
    tapes: Vec<LayerTape>,
    /// Gradient with respect to the current layer's output, then (swapped) its input; dense.
    grad: Vec<f32>,
    grad_next: Vec<f32>,
    /// Per recurrent layer (a `Bidirectional`: per direction): kernel, recurrent kernel, bias (Keras
    /// layout), the optimizer's view of them.
    params: Vec<Vec<f32>>,
    /// Their gradients, same layout.
    param_grads: Vec<Vec<f32>>,
}

/// A recurrent layer's tape: a single layer's or a `Bidirectional`'s.
#[derive(Debug, Default)]
struct LayerTape {
    single: KerasTape,
    bidi: BidirectionalTape,
}

/// How [`Sequential::apply`] runs a recurrent layer.
#[derive(Debug)]
enum Mode<'t> {
    /// The fast path (threads).
    Fast(usize),
    /// The reference implementation.
    Reference,
    /// The fast path filling a tape (threads); the input must be dense.
    Train(usize, &'t mut LayerTape),
}

impl Sequential {
    /// An empty stack.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a layer.
    pub fn push(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }
    /// Appends Keras `Masking`.
    pub fn masking(self, mask_value: f32, mode: MaskValueMode) -> Self {
        self.push(Layer::Masking { mask_value, mode })
    }
    /// Appends an LSTM layer (sequence output).
    pub fn lstm(self, layer: KerasLstm) -> Self {
        self.recurrent(layer)
    }
    /// Appends a [`Layer::Recurrent`] GRU layer (`return_sequences=True`).
    pub fn gru(self, layer: KerasGru) -> Self {
        self.recurrent(layer)
    }
    /// Appends a [`Layer::Recurrent`] SimpleRNN layer (`return_sequences=True`).
    pub fn simple_rnn(self, layer: KerasSimpleRnn) -> Self {
        self.recurrent(layer)
    }
    /// Appends a [`Layer::Recurrent`] layer of any cell.
    pub fn recurrent(self, layer: impl Into<Recurrent>) -> Self {
        self.push(Layer::Recurrent(Box::new(layer.into())))
    }
    /// Appends a [`Layer::Bidirectional`] (it must return sequences, merged).
    pub fn bidirectional(self, layer: KerasBidirectional) -> Self {
        self.push(Layer::Bidirectional(Box::new(layer)))
    }
    /// Appends a time slice `[start, end)` that carries the mask.
    pub fn time_slice(self, start: usize, end: Option<usize>) -> Self {
        self.push(Layer::TimeSlice { start, end })
    }
    /// Appends [`Layer::DropMask`]: every step valid from here on (the seed model's bug, on purpose).
    pub fn drop_mask(self) -> Self {
        self.push(Layer::DropMask)
    }
    /// The layers.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The LSTM layers (not in a `Bidirectional`), in order.
    fn lstms(&self) -> impl Iterator<Item = &KerasLstm> {
        self.layers.iter().filter_map(|l| match l {
            Layer::Recurrent(r) => match &**r {
                Recurrent::Lstm(l) => Some(l),
                _ => None,
            },
            _ => None,
        })
    }

    /// The layers with parameters, in order, a `Bidirectional` as its forward then its backward layer.
    fn units(&self) -> impl Iterator<Item = &Recurrent> {
        units(&self.layers)
    }

    /// The output's `(time, features)` for an input of `time` steps and `features` features, checking
    /// every layer's shape.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn output_shape(&self, time: usize, features: usize) -> Result<(usize, usize)> {
        let (mut t, mut f) = (time, features);
        for (li, layer) in self.layers.iter().enumerate() {
            match layer {
                Layer::Masking { .. } | Layer::DropMask => {}
                Layer::Recurrent(r) => {
                    check_input(li, r, f)?;
                    f = r.units();
                }
                Layer::Bidirectional(bd) => {
                    check_bidirectional(li, bd, f)?;
                    f = bd.output_width();
                }
                Layer::TimeSlice { start, end } => {
                    let e = end.unwrap_or(t);
                    if *start > e || e > t {
                        return Err(Error::argument(format!(
                            "layer {li}: time slice [{start}, {e}) is not inside [0, {t})"
                        )));
                    }
                    t = e - start;
                }
            }
        }
        Ok((t, f))
    }

    /// Runs the stack on the fast path; padded steps are never computed. `threads` as in
    /// [`KerasLstm::forward`].
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`] if a layer's input size disagrees with the
    /// features it receives; [`ErrorKind::BadArgument`] for a slice outside
    /// the time axis.
    pub fn forward(&self, input: &MaskedSeq, threads: usize) -> Result<(MaskedSeq, ForwardStats)> {
        self.run(input, Some(threads))
    }

    /// Runs the stack with every recurrent layer on the [reference](crate::reference) implementation
    /// (every step computed, then selected by the mask).
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_reference(&self, input: &MaskedSeq) -> Result<MaskedSeq> {
        self.run(input, None).map(|(s, _)| s)
    }

    /// Hands an output of [`forward`](Self::forward) back to the stack, whose next call can then reuse
    /// its buffer instead of allocating one (when nothing else holds it). Optional.
    pub fn recycle(&self, output: MaskedSeq) {
        if let Ok(mut g) = self.scratch.try_lock() {
            g.recycle(output, self.pool_limit());
        }
    }

    /// Runs the stack on the fast path with `threads`, or on the reference implementation for `None`.
    fn run(&self, input: &MaskedSeq, threads: Option<usize>) -> Result<(MaskedSeq, ForwardStats)> {
        // Another thread running this stack keeps the shared scratch: this call then uses its own. A
        // panic in an earlier call leaves nothing to distrust (the buffers' contents are never read).
        let mut local = StackScratch::default();
        let mut guard = match self.scratch.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => {
                self.scratch.clear_poison();
                Some(p.into_inner())
            }
            Err(TryLockError::WouldBlock) => None,
        };
        let scratch = guard.as_deref_mut().unwrap_or(&mut local);
        let mut cur = input.clone();
        let mut stats = ForwardStats::default();
        for (li, layer) in self.layers.iter().enumerate() {
            let mode = match threads {
                Some(t) => Mode::Fast(t),
                None => Mode::Reference,
            };
            let next = Self::apply(li, layer, &cur, mode, scratch, &mut stats)?;
            scratch.recycle(std::mem::replace(&mut cur, next), self.pool_limit());
        }
        Ok((cur, stats))
    }

    /// Layer `li`'s output for input `cur`.
    fn apply(
        li: usize,
        layer: &Layer,
        cur: &MaskedSeq,
        mode: Mode<'_>,
        scratch: &mut StackScratch,
        stats: &mut ForwardStats,
    ) -> Result<MaskedSeq> {
        Ok(match layer {
            Layer::Masking { mask_value, mode } => {
                let (b, t, f) = (cur.batch(), cur.time(), cur.features());
                let mut x = scratch.take_empty(checked_product(&[b, t, f], "x")?);
                cur.extend_window(&mut x);
                let mask = &mut scratch.mask;
                mask.clear();
                mask.resize(b * t, false);
                mask_from_values(&x, b, t, f, *mask_value, *mode, mask)?;
                for (row, &valid) in x.chunks_exact_mut(f.max(1)).zip(mask.iter()) {
                    if !valid {
                        row.fill(0.0);
                    }
                }
                MaskedSeq::new(x, f, SeqView::from_mask(mask, b, t)?)?
            }
            Layer::Recurrent(r) => {
                check_input(li, r, cur.features())?;
                let h = r.units();
                let y = match mode {
                    Mode::Fast(threads) => {
                        // Every element of y is written: valid steps by the cells, the rest as padding.
                        let mut y = scratch.take(checked_product(&[cur.batch(), cur.time(), h], "y")?);
                        let out = KerasOutputs { y: Some(&mut y), ..Default::default() };
                        let st = r.forward_strided(cur.strided(), cur.view(), None, out, threads, &mut scratch.ws)?;
                        *stats = stats.merge(st);
                        y
                    }
                    Mode::Train(threads, tape) => {
                        let x = dense(cur)?;
                        let mut y = scratch.take(checked_product(&[cur.batch(), cur.time(), h], "y")?);
                        let out = KerasOutputs { y: Some(&mut y), ..Default::default() };
                        let st =
                            r.forward_train(x, cur.view(), None, out, &mut tape.single, threads, &mut scratch.ws)?;
                        *stats = stats.merge(st);
                        y
                    }
                    Mode::Reference => r.forward_reference(&cur.to_vec(), cur.view(), None)?.y,
                };
                MaskedSeq::new(y, h, cur.view().clone())?
            }
            Layer::Bidirectional(bd) => {
                check_bidirectional(li, bd, cur.features())?;
                let w = bd.output_width();
                let y = match mode {
                    Mode::Fast(threads) => {
                        let copy = match cur.as_dense() {
                            Some(_) => None,
                            None => Some(scratch.densify(cur)?),
                        };
                        let x = dense(copy.as_ref().unwrap_or(cur))?;
                        let mut y = scratch.take(checked_product(&[cur.batch(), cur.time(), w], "y")?);
                        let out = BidirectionalOutputs { y: Some(&mut y), ..Default::default() };
                        let st = bd.forward_in(x, cur.view(), None, out, threads, &mut scratch.ws)?;
                        *stats = stats.merge(st);
                        if let Some(copy) = copy {
                            scratch.recycle(copy, POOL_BUFFERS);
                        }
                        y
                    }
                    Mode::Train(threads, tape) => {
                        let (r, st) = bd.forward_train(dense(cur)?, cur.view(), None, &mut tape.bidi, threads)?;
                        *stats = stats.merge(st);
                        r.y
                    }
                    Mode::Reference => bd.forward_reference(&cur.to_vec(), cur.view(), None)?.y,
                };
                MaskedSeq::new(y, w, cur.view().clone())?
            }
            Layer::TimeSlice { start, end } => cur.slice_time(*start, end.unwrap_or(cur.time()))?,
            Layer::DropMask => cur.drop_mask(),
        })
    }

    /// Buffers a stack keeps pooled at most: enough for a training step (one per layer output, plus the
    /// densified inputs), so that inference calls in between (validation) do not make training reallocate.
    fn pool_limit(&self) -> usize {
        POOL_BUFFERS.max(2 * self.layers.len() + 1)
    }

    /// The training forward: fills `self.train.acts` (every layer's input, then the output) and the
    /// recurrent layers' tapes. A recurrent layer whose input is not dense (after a time slice) gets a dense
    /// copy.
    fn forward_train(&mut self, input: &MaskedSeq, threads: usize) -> Result<ForwardStats> {
        let limit = self.pool_limit();
        let Sequential { layers, scratch, train } = self;
        let scratch = scratch.get_mut().unwrap_or_else(|p| p.into_inner());
        for a in train.acts.drain(..) {
            scratch.recycle(a, limit);
        }
        train.tapes.resize_with(layers.len(), LayerTape::default);
        Self::forward_train_layers(layers, input, threads, scratch, train)
    }

    fn forward_train_layers(
        layers: &[Layer],
        input: &MaskedSeq,
        threads: usize,
        scratch: &mut StackScratch,
        train: &mut TrainScratch,
    ) -> Result<ForwardStats> {
        let mut stats = ForwardStats::default();
        let mut cur = input.clone();
        for (li, layer) in layers.iter().enumerate() {
            let mode = match layer {
                Layer::Recurrent(_) | Layer::Bidirectional(_) => {
                    if cur.as_dense().is_none() {
                        cur = scratch.densify(&cur)?;
                    }
                    Mode::Train(threads, &mut train.tapes[li])
                }
                _ => Mode::Fast(threads),
            };
            let next = Self::apply(li, layer, &cur, mode, scratch, &mut stats)?;
            train.acts.push(std::mem::replace(&mut cur, next));
        }
        train.acts.push(cur);
        Ok(stats)
    }

    /// Gives the training activations' buffers back to the pool.
    fn release_train(&mut self) {
        let limit = self.pool_limit();
        let scratch = self.scratch.get_mut().unwrap_or_else(|p| p.into_inner());
        for a in self.train.acts.drain(..) {
            scratch.recycle(a, limit);
        }
    }

    /// One optimizer step on one batch: the training forward, the loss and its gradient with respect to
    /// the model output, the backward through every layer, `optimizer.step` over every recurrent layer's
    /// kernel, recurrent kernel and bias (in layer order, Keras order within a layer, a `Bidirectional`'s
    /// forward layer then its backward layer: the order of Keras' `model.trainable_weights`), and the
    /// repacking of the updated layers. Returns the batch's loss at the weights the step started from.
    ///
    /// The same code path serves every stack: masked or not (a [`Layer::DropMask`], or an unmasked
    /// [`Loss`], makes every step count), sliced or not. Results are bitwise the same for every `threads`.
    ///
    /// Allocation, once the stack has run a step of the same shape: none for the activations, the tapes
    /// and the gradient buffers (all reused, the backward's buffers kept with the tapes; a `Bidirectional`
    /// allocates its outputs); per recurrent layer the repacked weights and gradient scratch
    /// (O(parameters)), and O(B x H) for the views, the schedule and the state gradients.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`] if `y` is not the model output's `[B, T, F]`
    /// or a layer's input size disagrees; [`ErrorKind::BadArgument`] for
    /// a slice outside the time axis or an LSTM layer with peepholes (not trainable here); the
    /// optimizer's errors. Nothing is updated on error.
    pub fn train_step(
        &mut self,
        x: &MaskedSeq,
        y: &[f32],
        loss: Loss,
        optimizer: &mut dyn Optimizer,
        threads: usize,
    ) -> Result<LossValue> {
        self.check_trainable()?;
        let r = self.train_step_inner(x, y, loss, optimizer, threads);
        self.release_train();
        r
    }

    /// Errors unless every recurrent layer can be trained (no peepholes).
    pub(crate) fn check_trainable(&self) -> Result<()> {
        if self.units().any(|l| !l.trainable()) {
            return Err(Error::argument("an LSTM layer with peepholes cannot be trained in a Sequential"));
        }
        Ok(())
    }

    fn train_step_inner(
        &mut self,
        x: &MaskedSeq,
        y: &[f32],
        loss: Loss,
        optimizer: &mut dyn Optimizer,
        threads: usize,
    ) -> Result<LossValue> {
        self.forward_train(x, threads)?;
        let value = {
            let t = &mut self.train;
            let out = t.acts.last().ok_or_else(|| Error::new(ErrorKind::Internal, "no output"))?;
            check_len("y", y.len(), checked_product(&[out.batch(), out.time(), out.features()], "y")?)?;
            t.grad.resize(y.len(), 0.0);
            loss.value_and_grad(out, y, &mut t.grad)?
        };
        self.backward(threads)?;
        self.apply_gradients(optimizer)?;
        Ok(value)
    }

    /// Walks the layers in reverse from `train.grad` (the gradient with respect to the model output),
    /// writing each recurrent layer's parameter gradients into `train.param_grads`.
    fn backward(&mut self, threads: usize) -> Result<()> {
        let Sequential { layers, train, .. } = self;
        let n_units = units(layers).count();
        train.param_grads.resize_with(3 * n_units, Vec::new);
        let Some(first) = layers.iter().position(|l| matches!(l, Layer::Recurrent(_) | Layer::Bidirectional(_))) else {
            return Ok(());
        };
        let TrainScratch { acts, tapes, grad, grad_next, param_grads, .. } = train;
        let mut k = n_units;
        for li in (first..layers.len()).rev() {
            let (inp, out) = (&acts[li], &acts[li + 1]);
            let want_dx = li > first;
            match &layers[li] {
                Layer::DropMask => {}
                Layer::Masking { .. } => {
                    // Masked steps are constant zeros; valid ones pass x through.
                    let (t, f) = (out.time(), out.features());
                    for b in 0..out.batch() {
                        for s in 0..t {
                            if !out.view().is_valid(b, s) {
                                grad[(b * t + s) * f..(b * t + s + 1) * f].fill(0.0);
                            }
                        }
                    }
                }
                Layer::TimeSlice { start, .. } => {
                    let (t_in, t_out, f) = (inp.time(), out.time(), out.features());
                    grad_next.clear();
                    grad_next.resize(inp.batch() * t_in * f, 0.0);
                    for b in 0..out.batch() {
                        let src = &grad[b * t_out * f..(b + 1) * t_out * f];
                        let o = (b * t_in + start) * f;
                        grad_next[o..o + t_out * f].copy_from_slice(src);
                    }
                    std::mem::swap(grad, grad_next);
                }
                Layer::Recurrent(r) => {
                    k -= 1;
                    let x = dense(inp)?;
                    if want_dx {
                        grad_next.resize(x.len(), 0.0);
                    }
                    let [gk, gr, gb] = param_slots(param_grads, k, r)?;
                    r.backward(
                        x,
                        inp.view(),
                        None,
                        &tapes[li].single,
                        KerasUpstream { dy: Some(grad), ..Default::default() },
                        KerasGrads {
                            dx: want_dx.then_some(&mut grad_next[..]),
                            d_kernel: Some(gk),
                            d_recurrent_kernel: Some(gr),
                            d_bias: Some(gb),
                            ..Default::default()
                        },
                        threads,
                    )?;
                }
                Layer::Bidirectional(bd) => {
                    k -= 2;
                    let x = dense(inp)?;
                    if want_dx {
                        grad_next.resize(x.len(), 0.0);
                    }
                    let (pf, pb) = param_grads[3 * k..3 * k + 6].split_at_mut(3);
                    let [fk, fr, fb] = param_slots(pf, 0, bd.forward_layer())?;
                    let [bk, br, bb] = param_slots(pb, 0, bd.backward_layer())?;
                    let params = |d_kernel, d_recurrent_kernel, d_bias| KerasGrads {
                        d_kernel: Some(d_kernel),
                        d_recurrent_kernel: Some(d_recurrent_kernel),
                        d_bias: Some(d_bias),
                        ..Default::default()
                    };
                    bd.backward(
                        x,
                        inp.view(),
                        None,
                        &tapes[li].bidi,
                        BidirectionalUpstream { dy: Some(grad), ..Default::default() },
                        BidirectionalGrads {
                            dx: want_dx.then_some(&mut grad_next[..]),
                            forward: params(fk, fr, fb),
                            backward: params(bk, br, bb),
                        },
                        threads,
                    )?;
                }
            }
            if want_dx && matches!(layers[li], Layer::Recurrent(_) | Layer::Bidirectional(_)) {
                std::mem::swap(grad, grad_next);
            }
        }
        Ok(())
    }

    /// `optimizer.step` over every recurrent layer's parameters, then repacks the layers.
    fn apply_gradients(&mut self, optimizer: &mut dyn Optimizer) -> Result<()> {
        let Sequential { layers, train, .. } = self;
        let n = units(layers).count();
        train.params.resize_with(3 * n, Vec::new);
        for (k, l) in units(layers).enumerate() {
            for (dst, src) in train.params[3 * k..3 * k + 3].iter_mut().zip(l.keras_weights()) {
                *dst = src;
            }
        }
        let mut params: Vec<&mut [f32]> = train.params.iter_mut().map(|p| &mut p[..]).collect();
        let grads: Vec<&[f32]> = train.param_grads.iter().map(|g| &g[..]).collect();
        optimizer.step(&mut params, &grads)?;
        let updated = Self::with_weights(layers, &train.params)?;
        *layers = updated;
        Ok(())
    }

    /// `layers` with the recurrent layers' weights replaced by `weights` (3 tensors per layer, in
    /// [`weights`](Self::weights) order), repacked.
    fn with_weights<W: AsRef<[f32]>>(layers: &[Layer], weights: &[W]) -> Result<Vec<Layer>> {
        let n = units(layers).count();
        if weights.len() != 3 * n {
            return Err(Error::shape(format!("{} weight tensors for {n} recurrent layers (3 each)", weights.len())));
        }
        let mut next = weights.chunks_exact(3);
        let mut repack = |r: &Recurrent| -> Result<Recurrent> {
            let w = next.next().ok_or_else(|| Error::new(ErrorKind::Internal, "weights"))?;
            r.with_keras_weights(w[0].as_ref(), w[1].as_ref(), w[2].as_ref())
        };
        layers
            .iter()
            .map(|layer| {
                Ok(match layer {
                    Layer::Recurrent(r) => Layer::Recurrent(Box::new(repack(r)?)),
                    // Directions in weights() order: forward, then backward.
                    Layer::Bidirectional(bd) => Layer::Bidirectional(Box::new(bd.map_directions(&mut repack)?)),
                    other => other.clone(),
                })
            })
            .collect()
    }

    /// Every recurrent layer's weights in Keras order (`get_weights()` of each layer, concatenated; a
    /// `Bidirectional`'s forward layer then its backward layer): per layer `kernel [I, G H]`,
    /// `recurrent_kernel [H, G H]`, `bias` (see [`Recurrent::keras_weights`]).
    pub fn weights(&self) -> Vec<Vec<f32>> {
        self.units().flat_map(Recurrent::keras_weights).collect()
    }

    /// Sets every recurrent layer's weights, in [`weights`](Self::weights) order; each layer is repacked
    /// with its options and backend.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`] for a wrong number of tensors or a tensor of the wrong length; nothing is
    /// changed then.
    pub fn set_weights<W: AsRef<[f32]>>(&mut self, weights: &[W]) -> Result<()> {
        self.layers = Self::with_weights(&self.layers, weights)?;
        Ok(())
    }

    /// Every LSTM layer's weights in PyTorch's `nn.LSTM` layout: `weight_ih [4H, I]`, `weight_hh [4H, H]`,
    /// `bias_ih [4H]` (the whole bias) and `bias_hh [4H]` (zeros), gates i, f, g, o.
    pub fn pytorch_weights(&self) -> Vec<PytorchLayout<f32>> {
        self.lstms()
            .map(|l| {
                let mut p = LstmGrads::from(l.weights()).to_pytorch();
                p.bias_hh.fill(0.0);
                p
            })
            .collect()
    }

    /// Sets every LSTM layer's weights from PyTorch's layout (one entry per LSTM layer; the canonical bias
    /// is `bias_ih + bias_hh`); each layer is repacked with its options and backend.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`] for a wrong number of layers or a tensor of
    /// the wrong length; nothing is changed then.
    pub fn set_pytorch_weights(&mut self, layers: &[PytorchLayout<f32>]) -> Result<()> {
        let n = self.lstms().count();
        if layers.len() != n {
            return Err(Error::shape(format!("weights for {} layers, the stack has {n} LSTM layers", layers.len())));
        }
        let new = self
            .lstms()
            .zip(layers)
            .map(|(l, p)| {
                let (i, h) = (l.weights().input_size(), l.units());
                let w =
                    LstmWeights::from_pytorch(i, h, &p.weight_ih, &p.weight_hh, Some(&p.bias_ih), Some(&p.bias_hh))?;
                KerasLstm::with_backend(w, *l.options(), l.backend())
            })
            .collect::<Result<Vec<_>>>()?;
        self.replace_lstms(new);
        Ok(())
    }

    /// Replaces the LSTM layers (not in a `Bidirectional`), in order.
    fn replace_lstms(&mut self, new: Vec<KerasLstm>) {
        let mut new = new.into_iter();
        for layer in &mut self.layers {
            if let Layer::Recurrent(r) = layer {
                if let (Recurrent::Lstm(l), Some(n)) = (&mut **r, new.next()) {
                    *l = n;
                }
            }
        }
    }
}

/// The layers with parameters, in order, a `Bidirectional` as its forward then its backward layer.
fn units(layers: &[Layer]) -> impl Iterator<Item = &Recurrent> {
    layers.iter().flat_map(|l| {
        let (a, b) = match l {
            Layer::Recurrent(r) => (Some(&**r), None),
            Layer::Bidirectional(bd) => (Some(bd.forward_layer()), Some(bd.backward_layer())),
            _ => (None, None),
        };
        a.into_iter().chain(b)
    })
}

/// The three gradient buffers of unit `k` in `grads`, sized for `layer`'s Keras weights.
fn param_slots<'g>(grads: &'g mut [Vec<f32>], k: usize, layer: &Recurrent) -> Result<[&'g mut [f32]; 3]> {
    let [gk, gr, gb] = grads.get_mut(3 * k..3 * k + 3).ok_or_else(|| Error::new(ErrorKind::Internal, "gradients"))?
    else {
        return Err(Error::new(ErrorKind::Internal, "parameter gradients"));
    };
    let [nk, nr, nb] = layer.keras_weight_lens();
    gk.resize(nk, 0.0);
    gr.resize(nr, 0.0);
    gb.resize(nb, 0.0);
    Ok([gk, gr, gb])
}

/// The data of a sequence a training pass needs whole.
fn dense(seq: &MaskedSeq) -> Result<&[f32]> {
    seq.as_dense().ok_or_else(|| Error::new(ErrorKind::Internal, "recurrent input not dense"))
}

fn check_input(li: usize, layer: &Recurrent, features: usize) -> Result<()> {
    if layer.input_size() != features {
        return Err(Error::shape(format!(
            "layer {li}: {} expects {} input features, got {features}",
            layer.name(),
            layer.input_size()
        )));
    }
    Ok(())
}

/// A `Bidirectional` in a stack must take `features` and return merged sequences.
fn check_bidirectional(li: usize, layer: &KerasBidirectional, features: usize) -> Result<()> {
    check_input(li, layer.forward_layer(), features)?;
    if !layer.return_sequences() || layer.merge_mode() == MergeMode::None {
        return Err(Error::argument(format!(
            "layer {li}: a Bidirectional in a Sequential must return merged sequences (return_sequences=True, a \
             merge mode)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::Padding;

    #[test]
    fn slice_shares_storage_and_shifts_view() {
        let data: Vec<f32> = (0..2 * 5).map(|v| v as f32).collect();
        let view = SeqView::from_lengths(&[5, 2], 5, Padding::Post).unwrap();
        let s = MaskedSeq::new(data, 1, view).unwrap();
        let sl = s.slice_time(1, 4).unwrap();
        assert!(Arc::ptr_eq(&s.data, &sl.data));
        assert_eq!(sl.to_vec(), vec![1.0, 2.0, 3.0, 6.0, 7.0, 8.0]);
        assert_eq!(sl.view().valid_lens(), vec![3, 1]);
        assert!(s.slice_time(3, 6).is_err());
    }

    /// A stack that reuses its buffers gives, call after call and whatever the previous shapes, bitwise
    /// what a fresh stack gives; the caller's input and earlier outputs are never reused.
    #[test]
    fn reused_buffers_change_nothing() {
        use crate::{KerasLstmOptions, LstmWeights};
        let layer = |i: usize, h: usize, seed: u32| {
            let v = |n: usize, k: u32| {
                (0..n).map(move |j| (((j as u32).wrapping_mul(2_654_435_761) ^ k) % 1000) as f32 / 2000.0 - 0.25)
            };
            let w = LstmWeights::from_keras(
                i,
                h,
                &v(i * 4 * h, seed).collect::<Vec<_>>(),
                &v(h * 4 * h, seed + 1).collect::<Vec<_>>(),
                Some(&v(4 * h, seed + 2).collect::<Vec<_>>()),
            )
            .unwrap();
            KerasLstm::new(w, KerasLstmOptions::default()).unwrap()
        };
        let stack = Sequential::new()
            .masking(0.0, MaskValueMode::Ieee)
            .lstm(layer(3, 20, 1))
            .lstm(layer(20, 5, 7))
            .time_slice(2, None);
        let input = |b: usize, t: usize, salt: usize| {
            let x: Vec<f32> = (0..b * t * 3)
                .map(|k| if (k / 3 + salt).is_multiple_of(5) { 0.0 } else { ((k * 7 + salt) % 11) as f32 / 5.0 - 1.0 })
                .collect();
            MaskedSeq::dense(x, b, t, 3).unwrap()
        };
        let mut kept = Vec::new();
        for (b, t, salt) in [(4, 9, 0), (7, 12, 1), (2, 5, 2), (7, 12, 3), (4, 9, 0)] {
            let x = input(b, t, salt);
            let before = x.to_vec();
            let (got, _) = stack.forward(&x, 2).unwrap();
            let (fresh, _) = stack.clone().forward(&x, 1).unwrap();
            assert_eq!(got.view(), fresh.view());
            assert!(got.to_vec().iter().zip(fresh.to_vec()).all(|(a, b)| a.to_bits() == b.to_bits()), "{b} {t}");
            assert_eq!(x.to_vec(), before);
            kept.push((got.to_vec(), got));
        }
        for (values, seq) in &kept {
            assert_eq!(&seq.to_vec(), values, "a returned output was overwritten by a later call");
        }
    }
}
