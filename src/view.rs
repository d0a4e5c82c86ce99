//! The sequence view: which steps of each sequence in a padded batch are valid, as `(offset, length)` runs.
//!
//! A padded batch `[B, T, ...]` plus a mask `[B, T]` becomes, per sequence, a sorted list of maximal runs of
//! valid steps. Post-padding is one run `(0, len)`, pre-padding one run `(T - len, len)`, a mask with holes
//! several runs. The engine iterates runs, so it never touches a padded step.
//!
//! Time slicing `[a, b)` copies no mask: the runs are shared (`Arc`) in the coordinates of the axis they were
//! built on, and a view only records its window on that axis plus, per sequence, the index range of the runs
//! that meet the window. Slicing narrows the window and those ranges: O(B log R) for R runs per sequence,
//! O(B) for the usual one run per sequence.

use std::sync::Arc;

use crate::error::{check_len, checked_product, Error, Result};

/// A maximal run of valid steps: `len` steps starting at time `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Run {
    /// First valid step of the run.
    pub offset: usize,
    /// Number of valid steps (never zero in a view).
    pub len: usize,
}

impl Run {
    /// One past the last step of the run.
    #[inline]
    pub fn end(&self) -> usize {
        self.offset + self.len
    }
}

/// Where the padding of a length-described batch sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Padding {
    /// Valid steps first, padding at the end (ONNX `sequence_lens`, PyTorch packing, Keras `padding='post'`).
    #[default]
    Post,
    /// Padding first (Keras `pad_sequences` default, `padding='pre'`).
    Pre,
}

/// How Keras-style value masking compares features with the mask value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MaskValueMode {
    /// IEEE comparison, exactly as Keras' `Masking`: a NaN `mask_value` masks nothing.
    #[default]
    Ieee,
    /// As IEEE, but a NaN `mask_value` matches NaN features, so NaN padding can be masked.
    NanAware,
}

/// The valid steps of every sequence of a padded batch, as runs. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct SeqView {
    /// Runs in base-axis coordinates, all sequences concatenated.
    runs: Arc<Vec<Run>>,
    /// Per sequence, the index range into `runs` of the runs that meet the window.
    ranges: Vec<(usize, usize)>,
    /// Window start on the base axis.
    start: usize,
    /// Window length: the view's time dimension.
    time: usize,
}

impl Default for SeqView {
    /// No sequences, no time steps.
    fn default() -> Self {
        SeqView { runs: Arc::default(), ranges: Vec::new(), start: 0, time: 0 }
    }
}

/// The runs of one sequence inside a view, clipped to the window and in window coordinates.
#[derive(Clone, Debug)]
pub struct Runs<'a> {
    runs: &'a [Run],
    start: usize,
    end: usize,
}

impl Iterator for Runs<'_> {
    type Item = Run;
    #[inline]
    fn next(&mut self) -> Option<Run> {
        let (first, rest) = self.runs.split_first()?;
        self.runs = rest;
        Some(clip(*first, self.start, self.end))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.runs.len(), Some(self.runs.len()))
    }
}

impl DoubleEndedIterator for Runs<'_> {
    #[inline]
    fn next_back(&mut self) -> Option<Run> {
        let (last, rest) = self.runs.split_last()?;
        self.runs = rest;
        Some(clip(*last, self.start, self.end))
    }
}

impl ExactSizeIterator for Runs<'_> {}

#[inline]
fn clip(r: Run, start: usize, end: usize) -> Run {
    let s = r.offset.max(start);
    let e = r.end().min(end);
    Run { offset: s - start, len: e - s }
}

impl SeqView {
    fn build(time: usize, per_seq: impl Iterator<Item = Vec<Run>>) -> Self {
        let mut runs = Vec::new();
        let mut ranges = Vec::new();
        for seq in per_seq {
            let lo = runs.len();
            runs.extend(seq);
            ranges.push((lo, runs.len()));
        }
        SeqView { runs: Arc::new(runs), ranges, start: 0, time }
    }

    /// Heap bytes held (the runs and the per-sequence ranges), for [`Workspace::bytes`](crate::Workspace::bytes).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.runs.capacity() * std::mem::size_of::<Run>()
            + self.ranges.capacity() * std::mem::size_of::<(usize, usize)>()
    }

    /// Every step of every sequence valid.
    pub fn full(batch: usize, time: usize) -> Self {
        let mut v = Self::default();
        v.assign_full(batch, time);
        v
    }

    /// Sequences of the given lengths, padded at the end (`Post`) or at the front (`Pre`) of a `time` axis.
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) if a length exceeds `time`.
    pub fn from_lengths(lengths: &[usize], time: usize, padding: Padding) -> Result<Self> {
        let mut v = Self::default();
        v.assign_lengths(lengths, time, padding)?;
        Ok(v)
    }

    /// As [`from_lengths`](Self::from_lengths) with `i32` lengths, as ONNX `sequence_lens` and the C ABI give them.
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for a negative length or one past `time`.
    pub fn from_i32_lengths(lengths: &[i32], time: usize, padding: Padding) -> Result<Self> {
        let mut v = Self::default();
        v.assign_i32_lengths(lengths, time, padding)?;
        Ok(v)
    }

    /// Makes this view [`from_i32_lengths`](Self::from_i32_lengths)`(lengths, time, padding)`, reusing its
    /// memory when no other view shares it: a view kept from call to call (as the ONNX operator keeps one
    /// in its [`Workspace`](crate::Workspace)) then allocates nothing once it has held as many sequences.
    /// On error the view is unchanged.
    ///
    /// # Errors
    /// As [`from_i32_lengths`](Self::from_i32_lengths).
    pub fn assign_i32_lengths(&mut self, lengths: &[i32], time: usize, padding: Padding) -> Result<()> {
        for (b, &l) in lengths.iter().enumerate() {
            if l < 0 {
                return Err(Error::argument(format!("length {l} of sequence {b} is negative")));
            }
        }
        self.assign_with(lengths.len(), |b| lengths[b] as usize, time, padding)
    }

    /// As [`assign_i32_lengths`](Self::assign_i32_lengths) with `usize` lengths
    /// ([`from_lengths`](Self::from_lengths) in place).
    ///
    /// # Errors
    /// As [`from_lengths`](Self::from_lengths).
    pub fn assign_lengths(&mut self, lengths: &[usize], time: usize, padding: Padding) -> Result<()> {
        self.assign_with(lengths.len(), |b| lengths[b], time, padding)
    }

    /// [`full`](Self::full) in place.
    pub(crate) fn assign_full(&mut self, batch: usize, time: usize) {
        self.fill(batch, |_| time, time, Padding::Post);
    }

    fn assign_with(&mut self, batch: usize, len: impl Fn(usize) -> usize, time: usize, padding: Padding) -> Result<()> {
        if let Some(b) = (0..batch).find(|&b| len(b) > time) {
            return Err(Error::argument(format!(
                "length {} of sequence {b} exceeds the time dimension {time}",
                len(b)
            )));
        }
        self.fill(batch, len, time, padding);
        Ok(())
    }

    /// Rebuilds the view from `batch` lengths, each at most `time`, in this view's memory when unshared.
    fn fill(&mut self, batch: usize, len: impl Fn(usize) -> usize, time: usize, padding: Padding) {
        if Arc::get_mut(&mut self.runs).is_none() {
            self.runs = Arc::new(Vec::with_capacity(batch));
        }
        let runs = Arc::get_mut(&mut self.runs).expect("unshared");
        runs.clear();
        runs.reserve(batch);
        self.ranges.clear();
        self.ranges.reserve(batch);
        for b in 0..batch {
            let (lo, len) = (runs.len(), len(b));
            if len > 0 {
                let offset = if padding == Padding::Post { 0 } else { time - len };
                runs.push(Run { offset, len });
            }
            self.ranges.push((lo, runs.len()));
        }
        (self.start, self.time) = (0, time);
    }

    /// From a boolean mask `[batch, time]` (`true` = valid). Holes are allowed.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) if `mask.len() != batch * time`;
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) if that product overflows.
    pub fn from_mask(mask: &[bool], batch: usize, time: usize) -> Result<Self> {
        Self::from_mask_fn(mask, batch, time, |&m| m)
    }

    /// From a byte mask `[batch, time]` (nonzero = valid), as the C ABI passes it.
    ///
    /// # Errors
    /// As [`from_mask`](Self::from_mask).
    pub fn from_mask_bytes(mask: &[u8], batch: usize, time: usize) -> Result<Self> {
        Self::from_mask_fn(mask, batch, time, |&m| m != 0)
    }

    fn from_mask_fn<T>(mask: &[T], batch: usize, time: usize, valid: impl Fn(&T) -> bool) -> Result<Self> {
        check_len("mask", mask.len(), checked_product(&[batch, time], "mask")?)?;
        if time == 0 {
            return Ok(Self::full(batch, 0));
        }
        Ok(Self::build(
            time,
            mask.chunks_exact(time).map(|row| {
                let mut runs = Vec::new();
                let mut t = 0;
                while t < time {
                    if valid(&row[t]) {
                        let s = t;
                        while t < time && valid(&row[t]) {
                            t += 1;
                        }
                        runs.push(Run { offset: s, len: t - s });
                    } else {
                        t += 1;
                    }
                }
                runs
            }),
        ))
    }

    /// Keras `Masking`: step `t` of sequence `b` is masked iff every one of its `features` values equals
    /// `mask_value` (see [`MaskValueMode`] for NaN). `x` is `[batch, time, features]`.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) if `x` has the wrong length,
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) if the sizes overflow.
    pub fn from_values(
        x: &[f32],
        batch: usize,
        time: usize,
        features: usize,
        mask_value: f32,
        mode: MaskValueMode,
    ) -> Result<Self> {
        let mut mask = vec![false; checked_product(&[batch, time], "mask")?];
        mask_from_values(x, batch, time, features, mask_value, mode, &mut mask)?;
        Self::from_mask(&mask, batch, time)
    }

    /// Explicit runs per sequence, in the coordinates of a `time` axis.
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) if a run is empty, ends past `time`, or
    /// runs of one sequence are not sorted and separated by at least one padded step.
    pub fn from_runs(time: usize, runs: &[Vec<Run>]) -> Result<Self> {
        for (b, seq) in runs.iter().enumerate() {
            let mut prev_end: Option<usize> = None;
            for r in seq {
                let end = r.offset.checked_add(r.len).filter(|&e| e <= time);
                if r.len == 0 || end.is_none() {
                    return Err(Error::argument(format!(
                        "run {r:?} of sequence {b} is empty or ends past time {time}"
                    )));
                }
                if prev_end.is_some_and(|p| r.offset <= p) {
                    return Err(Error::argument(format!(
                        "runs of sequence {b} must be sorted and separated by padding; {r:?} follows a run ending at {}",
                        prev_end.unwrap_or(0)
                    )));
                }
                prev_end = end;
            }
        }
        Ok(Self::build(time, runs.iter().cloned()))
    }

    /// Number of sequences.
    #[inline]
    pub fn batch(&self) -> usize {
        self.ranges.len()
    }

    /// Length of the (padded) time axis.
    #[inline]
    pub fn time(&self) -> usize {
        self.time
    }

    /// The valid runs of sequence `b`, in order, in this view's time coordinates.
    ///
    /// # Panics
    /// If `b >= self.batch()`.
    #[inline]
    pub fn runs(&self, b: usize) -> Runs<'_> {
        let (lo, hi) = self.ranges[b];
        Runs { runs: &self.runs[lo..hi], start: self.start, end: self.start + self.time }
    }

    /// Number of runs of sequence `b`.
    ///
    /// # Panics
    /// If `b >= self.batch()`.
    #[inline]
    pub fn run_count(&self, b: usize) -> usize {
        let (lo, hi) = self.ranges[b];
        hi - lo
    }

    /// Run `j` of sequence `b` (in this view's coordinates), in O(1).
    ///
    /// # Panics
    /// If `b >= self.batch()` or `j >= self.run_count(b)`.
    #[inline]
    pub fn run(&self, b: usize, j: usize) -> Run {
        let (lo, hi) = self.ranges[b];
        assert!(j < hi - lo, "run {j} of sequence {b} out of range");
        clip(self.runs[lo + j], self.start, self.start + self.time)
    }

    /// Number of valid steps of sequence `b`.
    pub fn valid_len(&self, b: usize) -> usize {
        self.runs(b).map(|r| r.len).sum()
    }

    /// Valid steps of every sequence.
    pub fn valid_lens(&self) -> Vec<usize> {
        (0..self.batch()).map(|b| self.valid_len(b)).collect()
    }

    /// Total number of valid steps in the batch.
    pub fn total_valid(&self) -> usize {
        (0..self.batch()).map(|b| self.valid_len(b)).sum()
    }

    /// Whether step `t` of sequence `b` is valid.
    pub fn is_valid(&self, b: usize, t: usize) -> bool {
        self.runs(b).any(|r| r.offset <= t && t < r.end())
    }

    /// `Some(lengths)` if every sequence is a valid prefix (post-padding), else `None`.
    pub fn prefix_lengths(&self) -> Option<Vec<usize>> {
        (0..self.batch())
            .map(|b| {
                let mut it = self.runs(b);
                match (it.next(), it.next()) {
                    (None, _) => Some(0),
                    (Some(r), None) if r.offset == 0 => Some(r.len),
                    _ => None,
                }
            })
            .collect()
    }

    /// The view of time steps `[a, b)`: O(B log R), no mask is copied.
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) unless `a <= b <= self.time()`.
    pub fn slice(&self, a: usize, b: usize) -> Result<SeqView> {
        if a > b || b > self.time {
            return Err(Error::argument(format!("time slice [{a}, {b}) is not inside [0, {})", self.time)));
        }
        let start = self.start + a;
        let end = self.start + b;
        let ranges = self
            .ranges
            .iter()
            .map(|&(lo, hi)| {
                let seq = &self.runs[lo..hi];
                if start == end {
                    return (lo, lo);
                }
                let first = seq.partition_point(|r| r.end() <= start);
                let last = seq.partition_point(|r| r.offset < end);
                (lo + first, lo + last.max(first))
            })
            .collect();
        Ok(SeqView { runs: Arc::clone(&self.runs), ranges, start, time: b - a })
    }

    /// The view of sequences `[lo, hi)` of the batch.
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) unless `lo <= hi <= self.batch()`.
    pub fn select_batch(&self, lo: usize, hi: usize) -> Result<SeqView> {
        if lo > hi || hi > self.batch() {
            return Err(Error::argument(format!("batch range [{lo}, {hi}) is not inside [0, {})", self.batch())));
        }
        Ok(SeqView {
            runs: Arc::clone(&self.runs),
            ranges: self.ranges[lo..hi].to_vec(),
            start: self.start,
            time: self.time,
        })
    }

    /// Writes the mask `[batch, time]` (`true` = valid) into `out`.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) if `out` has the wrong length.
    pub fn write_mask(&self, out: &mut [bool]) -> Result<()> {
        check_len("mask", out.len(), self.batch() * self.time)?;
        out.fill(false);
        if self.time == 0 {
            return Ok(());
        }
        for (b, row) in out.chunks_exact_mut(self.time).enumerate() {
            for r in self.runs(b) {
                row[r.offset..r.end()].fill(true);
            }
        }
        Ok(())
    }

    /// The mask `[batch, time]` (`true` = valid).
    pub fn to_mask(&self) -> Vec<bool> {
        let mut m = vec![false; self.batch() * self.time];
        // The length is right by construction.
        let _ = self.write_mask(&mut m);
        m
    }
}

impl PartialEq for SeqView {
    /// Views are equal when they have the same shape and the same valid steps, however they were built.
    fn eq(&self, other: &Self) -> bool {
        self.time == other.time
            && self.batch() == other.batch()
            && (0..self.batch()).all(|b| self.runs(b).eq(other.runs(b)))
    }
}

/// Keras `Masking`: writes `mask[b, t] = false` iff every feature of `x[b, t, :]` equals `mask_value`
/// (see [`MaskValueMode`] for NaN). `x` is `[batch, time, features]`, `mask` is `[batch, time]`.
///
/// # Errors
/// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) if a buffer has the wrong length,
/// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) if the sizes overflow.
pub fn mask_from_values(
    x: &[f32],
    batch: usize,
    time: usize,
    features: usize,
    mask_value: f32,
    mode: MaskValueMode,
    mask: &mut [bool],
) -> Result<()> {
    check_len("x", x.len(), checked_product(&[batch, time, features], "x")?)?;
    check_len("mask", mask.len(), checked_product(&[batch, time], "mask")?)?;
    let nan_matches = mode == MaskValueMode::NanAware && mask_value.is_nan();
    let equal = |v: f32| if nan_matches { v.is_nan() } else { v == mask_value };
    if features == 0 {
        // Keras: any(x != mask_value) over no features is false, so every step is masked.
        mask.fill(false);
        return Ok(());
    }
    for (m, row) in mask.iter_mut().zip(x.chunks_exact(features)) {
        *m = !row.iter().all(|&v| equal(v));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs_of(v: &SeqView, b: usize) -> Vec<(usize, usize)> {
        v.runs(b).map(|r| (r.offset, r.len)).collect()
    }

    #[test]
    fn lengths_post_and_pre() {
        let v = SeqView::from_lengths(&[3, 0, 5], 5, Padding::Post).unwrap();
        assert_eq!(runs_of(&v, 0), vec![(0, 3)]);
        assert_eq!(runs_of(&v, 1), vec![]);
        assert_eq!(runs_of(&v, 2), vec![(0, 5)]);
        let v = SeqView::from_lengths(&[3, 0, 5], 5, Padding::Pre).unwrap();
        assert_eq!(runs_of(&v, 0), vec![(2, 3)]);
        assert_eq!(v.total_valid(), 8);
        assert!(SeqView::from_lengths(&[6], 5, Padding::Post).is_err());
        assert!(SeqView::from_i32_lengths(&[-1], 5, Padding::Post).is_err());
    }

    #[test]
    fn mask_with_holes_round_trips() {
        let m = [true, true, false, true, false, false, true, true];
        let v = SeqView::from_mask(&m, 2, 4).unwrap();
        assert_eq!(runs_of(&v, 0), vec![(0, 2), (3, 1)]);
        assert_eq!(runs_of(&v, 1), vec![(2, 2)]);
        assert_eq!(v.to_mask(), m);
        assert!(SeqView::from_mask(&m, 3, 4).is_err());
        assert!(SeqView::from_mask(&m, usize::MAX, 4).is_err());
    }

    #[test]
    fn slicing_shifts_and_clips_without_copying() {
        let m = [true, true, false, true, true, false, true, true, true, false];
        let v = SeqView::from_mask(&m, 1, 10).unwrap();
        let s = v.slice(1, 8).unwrap();
        assert_eq!(runs_of(&s, 0), vec![(0, 1), (2, 2), (5, 2)]);
        let s2 = s.slice(2, 4).unwrap();
        assert_eq!(runs_of(&s2, 0), vec![(0, 2)]);
        assert!(Arc::ptr_eq(&v.runs, &s2.runs));
        let e = s.slice(3, 3).unwrap();
        assert_eq!(e.time(), 0);
        assert_eq!(runs_of(&e, 0), vec![]);
        assert!(v.slice(4, 11).is_err());
        assert!(v.slice(5, 4).is_err());
        // Slicing the view equals slicing the mask.
        let sm: Vec<bool> = m[1..8].to_vec();
        assert_eq!(s, SeqView::from_mask(&sm, 1, 7).unwrap());
    }

    #[test]
    fn masking_values() {
        let x = [0.0, 0.0, -0.0, 0.0, 0.0, 1.0, f32::NAN, f32::NAN];
        let mut m = [false; 4];
        mask_from_values(&x, 1, 4, 2, 0.0, MaskValueMode::Ieee, &mut m).unwrap();
        assert_eq!(m, [false, false, true, true]);
        mask_from_values(&x, 1, 4, 2, f32::NAN, MaskValueMode::Ieee, &mut m).unwrap();
        assert_eq!(m, [true, true, true, true]);
        mask_from_values(&x, 1, 4, 2, f32::NAN, MaskValueMode::NanAware, &mut m).unwrap();
        assert_eq!(m, [true, true, true, false]);
    }

    #[test]
    fn assign_lengths_equals_building_and_leaves_shared_views_alone() {
        let mut v = SeqView::default();
        for (lens, time, padding) in [
            (vec![3, 0, 5, 5], 5, Padding::Post),
            (vec![1, 2], 4, Padding::Pre),
            (vec![0, 0, 0, 0, 0, 7], 7, Padding::Post),
            (vec![], 3, Padding::Post),
        ] {
            let kept = v.clone(); // shares the runs: assigning must not change it
            let kept_lens = kept.valid_lens();
            let want = SeqView::from_i32_lengths(&lens, time, padding).unwrap();
            v.assign_i32_lengths(&lens, time, padding).unwrap();
            assert_eq!(v, want);
            assert_eq!(kept.valid_lens(), kept_lens);
            let sliced = v.slice(0, time.min(2)).unwrap();
            assert!(v.assign_i32_lengths(&[1, -1], 9, Padding::Post).is_err());
            assert!(v.assign_i32_lengths(&[10], 9, Padding::Post).is_err());
            assert_eq!(v, want, "a failed assignment changed the view");
            assert_eq!(sliced, want.slice(0, time.min(2)).unwrap());
        }
    }

    #[test]
    fn from_runs_validates() {
        assert!(SeqView::from_runs(5, &[vec![Run { offset: 0, len: 2 }, Run { offset: 2, len: 1 }]]).is_err());
        assert!(SeqView::from_runs(5, &[vec![Run { offset: 4, len: 2 }]]).is_err());
        assert!(SeqView::from_runs(5, &[vec![Run { offset: 1, len: 0 }]]).is_err());
        assert!(SeqView::from_runs(5, &[vec![Run { offset: usize::MAX, len: 2 }]]).is_err());
        let v = SeqView::from_runs(5, &[vec![Run { offset: 0, len: 2 }, Run { offset: 3, len: 2 }]]).unwrap();
        assert_eq!(v.prefix_lengths(), None);
        assert_eq!(v.slice(0, 2).unwrap().prefix_lengths(), Some(vec![2]));
    }
}
