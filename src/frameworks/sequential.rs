//! A small layer stack in the Keras style: `Masking -> LSTM -> ... -> time slice`, where the sequence view
//! flows through the stack. The masked losses are in [`train::loss`](crate::train::loss).
//!
//! This is the seed model of the crate: Keras' `Lambda(lambda x: x[:, N:])` silently dropped the mask so the
//! loss counted padding; here [`Layer::TimeSlice`] shifts the view instead, in O(B), and the losses average
//! over valid steps only, as Keras 3 does when the mask survives.

use std::sync::{Arc, Mutex, TryLockError};

use crate::engine::{ForwardStats, Workspace};
use crate::error::{check_len, checked_product, Error, Result};
use crate::frameworks::keras::{KerasLstm, KerasOutputs, StridedInput};
use crate::view::{mask_from_values, MaskValueMode, SeqView};

/// A padded batch `[B, T, F]` with its valid-step view. The time axis may be a window of a larger
/// tensor (after a time slice), sharing its storage.
#[derive(Clone, Debug)]
pub struct MaskedSeq {
    /// Shared storage (a `Vec` behind the `Arc`: wrapping a layer's output copies nothing, and a
    /// stack can take the buffer back once no one else holds it).
    data: Arc<Vec<f32>>,
    /// Time length of the storage.
    stored_time: usize,
    /// First stored step of the window.
    t_off: usize,
    features: usize,
    view: SeqView,
}

impl MaskedSeq {
    /// Wraps `data [B, T, F]` (B and T from `view`).
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) if `data.len() != B * T * F`.
    pub fn new(data: Vec<f32>, features: usize, view: SeqView) -> Result<Self> {
        check_len("data", data.len(), checked_product(&[view.batch(), view.time(), features], "data")?)?;
        Ok(MaskedSeq { data: Arc::new(data), stored_time: view.time(), t_off: 0, features, view })
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

    /// The values of step `t` of sequence `b`.
    ///
    /// # Panics
    /// If `b` or `t` is out of range.
    pub fn step(&self, b: usize, t: usize) -> &[f32] {
        assert!(b < self.batch() && t < self.time(), "step ({b}, {t}) out of range");
        let o = (b * self.stored_time + self.t_off + t) * self.features;
        &self.data[o..o + self.features]
    }

    /// The window as a dense `[B, T, F]` vector.
    pub fn to_vec(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.batch() * self.time() * self.features);
        self.extend_window(&mut out);
        out
    }

    /// Appends the window, dense `[B, T, F]`, to `out`.
    fn extend_window(&self, out: &mut Vec<f32>) {
        for b in 0..self.batch() {
            let o = (b * self.stored_time + self.t_off) * self.features;
            out.extend_from_slice(&self.data[o..o + self.time() * self.features]);
        }
    }

    /// Time steps `[a, b)`: the view is shifted and the storage shared; nothing is copied but the O(B)
    /// per-sequence run ranges.
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) unless `a <= b <= T`.
    pub fn slice_time(&self, a: usize, b: usize) -> Result<MaskedSeq> {
        Ok(MaskedSeq {
            data: Arc::clone(&self.data),
            stored_time: self.stored_time,
            t_off: self.t_off + a,
            features: self.features,
            view: self.view.slice(a, b)?,
        })
    }

    /// The same values with every step valid: what a Keras `Lambda` without `mask=` passes on.
    pub fn drop_mask(&self) -> MaskedSeq {
        MaskedSeq { view: SeqView::full(self.batch(), self.time()), ..self.clone() }
    }

    fn strided(&self) -> StridedInput<'_> {
        StridedInput {
            data: &self.data,
            off: self.t_off * self.features,
            sb: self.stored_time * self.features,
            st: self.features,
        }
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
    /// A Keras LSTM layer with `return_sequences=True`: the view passes through.
    Lstm(Box<KerasLstm>),
    /// `x[:, start:end]` with the mask carried along (`Lambda(..., mask=...)` done right).
    TimeSlice {
        /// First step kept.
        start: usize,
        /// One past the last step kept; `None` for the end of the axis.
        end: Option<usize>,
    },
}

/// A stack of layers through which the view flows.
#[derive(Debug, Default)]
pub struct Sequential {
    layers: Vec<Layer>,
    /// Buffers reused from call to call (see [`forward`](Self::forward)).
    scratch: Mutex<StackScratch>,
}

impl Clone for Sequential {
    /// The same layers, with scratch buffers of its own.
    fn clone(&self) -> Self {
        Sequential { layers: self.layers.clone(), scratch: Mutex::default() }
    }
}

/// What a [`Sequential`] keeps between calls: the engine's workspace and the intermediate outputs of the
/// last call, taken back once the next layer has consumed them.
#[derive(Debug, Default)]
struct StackScratch {
    ws: Workspace,
    pool: Vec<Vec<f32>>,
}

/// Buffers a stack keeps at most.
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

    /// Takes `seq`'s storage back if nothing else holds it.
    fn recycle(&mut self, seq: MaskedSeq) {
        if let Ok(v) = Arc::try_unwrap(seq.data) {
            if self.pool.len() < POOL_BUFFERS {
                self.pool.push(v);
            }
        }
    }
}

/// Which implementation runs the LSTM layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Fast(usize),
    Reference,
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
        self.push(Layer::Lstm(Box::new(layer)))
    }
    /// Appends a time slice `[start, end)` that carries the mask.
    pub fn time_slice(self, start: usize, end: Option<usize>) -> Self {
        self.push(Layer::TimeSlice { start, end })
    }
    /// The layers.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Runs the stack on the fast path; padded steps are never computed. `threads` as in
    /// [`KerasLstm::forward`].
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) if a layer's input size disagrees with the
    /// features it receives; [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for a slice outside
    /// the time axis.
    pub fn forward(&self, input: &MaskedSeq, threads: usize) -> Result<(MaskedSeq, ForwardStats)> {
        self.run(input, Path::Fast(threads))
    }

    /// Runs the stack with every LSTM layer on the [reference](crate::reference) implementation (every
    /// step computed, then selected by the mask).
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_reference(&self, input: &MaskedSeq) -> Result<MaskedSeq> {
        self.run(input, Path::Reference).map(|(s, _)| s)
    }

    fn run(&self, input: &MaskedSeq, path: Path) -> Result<(MaskedSeq, ForwardStats)> {
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
            let next = match layer {
                Layer::Masking { mask_value, mode } => {
                    let (b, t, f) = (cur.batch(), cur.time(), cur.features());
                    let mut x = scratch.take_empty(checked_product(&[b, t, f], "x")?);
                    cur.extend_window(&mut x);
                    let mut mask = vec![false; b * t];
                    mask_from_values(&x, b, t, f, *mask_value, *mode, &mut mask)?;
                    for (row, &valid) in x.chunks_exact_mut(f.max(1)).zip(&mask) {
                        if !valid {
                            row.fill(0.0);
                        }
                    }
                    MaskedSeq::new(x, f, SeqView::from_mask(&mask, b, t)?)?
                }
                Layer::Lstm(lstm) => {
                    if lstm.weights().input_size() != cur.features() {
                        return Err(Error::shape(format!(
                            "layer {li}: LSTM expects {} input features, got {}",
                            lstm.weights().input_size(),
                            cur.features()
                        )));
                    }
                    let h = lstm.units();
                    let y = match path {
                        Path::Fast(threads) => {
                            // Every element of y is written: valid steps by the cells, the rest as padding.
                            let mut y = scratch.take(checked_product(&[cur.batch(), cur.time(), h], "y")?);
                            let out = KerasOutputs { y: Some(&mut y), ..Default::default() };
                            let ws = &mut scratch.ws;
                            stats = stats.merge(lstm.forward_strided(
                                cur.strided(),
                                cur.view(),
                                None,
                                out,
                                None,
                                threads,
                                ws,
                            )?);
                            y
                        }
                        Path::Reference => lstm.forward_reference(&cur.to_vec(), cur.view(), None)?.y,
                    };
                    MaskedSeq::new(y, h, cur.view().clone())?
                }
                Layer::TimeSlice { start, end } => cur.slice_time(*start, end.unwrap_or(cur.time()))?,
            };
            scratch.recycle(std::mem::replace(&mut cur, next));
        }
        Ok((cur, stats))
    }
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
