//! Keras `Bidirectional(LSTM(...))` on the mask-aware engine.
//!
//! Keras semantics (SEMANTICS.md section 3): both layers see the same mask; `zero_output_for_mask` is
//! forced to `return_sequences` on both; the backward layer runs with `go_backwards` toggled and its
//! sequence output is flipped along the full time axis before the merge (`concat`, `sum`, `ave`, `mul`,
//! or none); states come back as forward `h, c`, then backward `h, c`.
//!
//! The flip costs nothing here: the backward job writes each step straight to its time position, and
//! with `concat` both directions write their halves of the merged output in place, concurrently.

use crate::cells::weights::LstmWeights;
use crate::engine::{par_join, ForwardStats, OutRegion, Region, StateIn, Workspace};
use crate::error::{check_len, checked_product, Error, Result};
use crate::frameworks::keras::{KerasLstm, KerasLstmOptions, StridedInput};
use crate::reference::{self, KerasResult};
use crate::view::SeqView;

/// How Keras' `Bidirectional` merges the two directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MergeMode {
    /// Forward then backward features: `2H` wide (Keras default).
    #[default]
    Concat,
    /// Elementwise sum.
    Sum,
    /// Elementwise mean.
    Ave,
    /// Elementwise product.
    Mul,
    /// No merge: both outputs are returned.
    None,
}

impl MergeMode {
    /// From the Keras name (`"concat"`, `"sum"`, `"ave"`, `"mul"`, or `None`).
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for another name.
    pub fn from_keras_name(name: Option<&str>) -> Result<Self> {
        Ok(match name {
            Some("concat") => MergeMode::Concat,
            Some("sum") => MergeMode::Sum,
            Some("ave") => MergeMode::Ave,
            Some("mul") => MergeMode::Mul,
            None => MergeMode::None,
            Some(other) => return Err(Error::argument(format!("unknown merge mode {other:?}"))),
        })
    }
}

/// Initial states of both directions, `[B, H]` each.
#[derive(Clone, Copy, Debug)]
pub struct BidirectionalState<'a> {
    /// Forward `h`.
    pub h_f: &'a [f32],
    /// Forward `c`.
    pub c_f: &'a [f32],
    /// Backward `h`.
    pub h_b: &'a [f32],
    /// Backward `c`.
    pub c_b: &'a [f32],
}

/// What a Keras `Bidirectional` LSTM returns.
#[derive(Clone, Debug, PartialEq)]
pub struct BidirectionalResult {
    /// The merged output: `[B, T, W]` with `return_sequences`, else `[B, W]`; `W` is `2H` for concat, `H`
    /// otherwise. Empty for [`MergeMode::None`].
    pub y: Vec<f32>,
    /// Forward output (only for [`MergeMode::None`]).
    pub y_forward: Vec<f32>,
    /// Backward output, flipped to original time order (only for [`MergeMode::None`]).
    pub y_backward: Vec<f32>,
    /// Forward final `h` `[B, H]`.
    pub h_f: Vec<f32>,
    /// Forward final `c`.
    pub c_f: Vec<f32>,
    /// Backward final `h`.
    pub h_b: Vec<f32>,
    /// Backward final `c`.
    pub c_b: Vec<f32>,
}

/// Caller buffers for [`KerasBidirectional::forward_in`], shaped as the fields of
/// [`BidirectionalResult`]; `None` skips an output.
#[derive(Debug, Default)]
pub struct BidirectionalOutputs<'a> {
    /// The merged output (every merge mode but [`MergeMode::None`]).
    pub y: Option<&'a mut [f32]>,
    /// Forward output ([`MergeMode::None`] only).
    pub y_forward: Option<&'a mut [f32]>,
    /// Backward output in original time order ([`MergeMode::None`] only).
    pub y_backward: Option<&'a mut [f32]>,
    /// Forward final `h` `[B, H]`.
    pub h_f: Option<&'a mut [f32]>,
    /// Forward final `c`.
    pub c_f: Option<&'a mut [f32]>,
    /// Backward final `h`.
    pub h_b: Option<&'a mut [f32]>,
    /// Backward final `c`.
    pub c_b: Option<&'a mut [f32]>,
}

/// The caller's buffer, or the next scratch chunk (empty when the chunks are empty).
fn or_scratch<'a>(v: Option<&'a mut [f32]>, scratch: &mut impl Iterator<Item = &'a mut [f32]>) -> &'a mut [f32] {
    match v {
        Some(v) => v,
        None => scratch.next().unwrap_or(&mut []),
    }
}

/// A Keras `Bidirectional` LSTM layer.
#[derive(Clone, Debug)]
pub struct KerasBidirectional {
    forward: KerasLstm,
    backward: KerasLstm,
    merge: MergeMode,
    return_sequences: bool,
}

impl KerasBidirectional {
    /// Builds the layer from the weights of both directions. `options` are the wrapped layer's; as in
    /// Keras, `zero_output_for_mask` is replaced by `return_sequences` and the backward layer gets
    /// `go_backwards` toggled.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) if the two directions differ in size.
    pub fn new(
        forward: LstmWeights,
        backward: LstmWeights,
        options: KerasLstmOptions,
        merge: MergeMode,
        return_sequences: bool,
    ) -> Result<Self> {
        if (forward.input_size(), forward.hidden_size()) != (backward.input_size(), backward.hidden_size()) {
            return Err(Error::shape("forward and backward weights differ in size"));
        }
        let opts = options.zero_output_for_mask(return_sequences);
        Ok(KerasBidirectional {
            forward: KerasLstm::new(forward, opts)?,
            backward: KerasLstm::new(backward, opts.go_backwards(!options.go_backwards))?,
            merge,
            return_sequences,
        })
    }

    /// The forward layer.
    pub fn forward_layer(&self) -> &KerasLstm {
        &self.forward
    }
    /// The backward layer.
    pub fn backward_layer(&self) -> &KerasLstm {
        &self.backward
    }

    fn width(&self) -> usize {
        let h = self.forward.units();
        if self.merge == MergeMode::Concat {
            2 * h
        } else {
            h
        }
    }

    fn check(&self, x: &[f32], view: &SeqView, initial: Option<BidirectionalState<'_>>) -> Result<usize> {
        let (b, t, i, h) = (view.batch(), view.time(), self.forward.weights().input_size(), self.forward.units());
        check_len("x", x.len(), checked_product(&[b, t, i], "x")?)?;
        let state_len = checked_product(&[b, h], "state")?;
        if let Some(s) = initial {
            for (name, v) in [("h_f", s.h_f), ("c_f", s.c_f), ("h_b", s.h_b), ("c_b", s.c_b)] {
                check_len(name, v.len(), state_len)?;
            }
        }
        Ok(state_len)
    }

    /// Runs both directions on the fast path (concurrently unless `threads == 1`).
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) for buffers of the wrong length.
    pub fn forward(
        &self,
        x: &[f32],
        view: &SeqView,
        initial: Option<BidirectionalState<'_>>,
        threads: usize,
    ) -> Result<(BidirectionalResult, ForwardStats)> {
        let state_len = self.check(x, view, initial)?;
        let rows = view.batch() * if self.return_sequences { view.time() } else { 1 };
        let h = self.forward.units();
        let (merged, each) = if self.merge == MergeMode::None { (0, rows * h) } else { (rows * self.width(), 0) };
        let mut r = BidirectionalResult {
            y: vec![0.0; merged],
            y_forward: vec![0.0; each],
            y_backward: vec![0.0; each],
            h_f: vec![0.0; state_len],
            c_f: vec![0.0; state_len],
            h_b: vec![0.0; state_len],
            c_b: vec![0.0; state_len],
        };
        let none = self.merge == MergeMode::None;
        let out = BidirectionalOutputs {
            y: (!none).then_some(&mut r.y[..]),
            y_forward: none.then_some(&mut r.y_forward[..]),
            y_backward: none.then_some(&mut r.y_backward[..]),
            h_f: Some(&mut r.h_f),
            c_f: Some(&mut r.c_f),
            h_b: Some(&mut r.h_b),
            c_b: Some(&mut r.c_b),
        };
        let stats = self.forward_in(x, view, initial, out, threads, &mut Workspace::new())?;
        Ok((r, stats))
    }

    /// As [`forward`](Self::forward), into caller buffers (see [`BidirectionalOutputs`]) with
    /// caller-owned scratch: a warm call with the same view and thread count allocates nothing.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) for buffers of the wrong length;
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for `y` with [`MergeMode::None`], or
    /// `y_forward` / `y_backward` with another merge mode.
    pub fn forward_in(
        &self,
        x: &[f32],
        view: &SeqView,
        initial: Option<BidirectionalState<'_>>,
        out: BidirectionalOutputs<'_>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        let state_len = self.check(x, view, initial)?;
        let (b, t, i, h) = (view.batch(), view.time(), self.forward.weights().input_size(), self.forward.units());
        let seq = self.return_sequences;
        let rows = b * if seq { t } else { 1 };
        let BidirectionalOutputs { y, y_forward, y_backward, h_f, c_f, h_b, c_b } = out;
        let none = self.merge == MergeMode::None;
        if none && y.is_some() {
            return Err(Error::argument("merge mode None has no merged output y: use y_forward and y_backward"));
        }
        if !none && (y_forward.is_some() || y_backward.is_some()) {
            return Err(Error::argument("y_forward and y_backward are the outputs of merge mode None only"));
        }
        let seq_len = checked_product(&[rows, h], "y")?;
        if let Some(y) = &y {
            check_len("y", y.len(), checked_product(&[rows, self.width()], "y")?)?;
        }
        for (name, v) in [("y_forward", &y_forward), ("y_backward", &y_backward)] {
            if let Some(v) = v {
                check_len(name, v.len(), seq_len)?;
            }
        }
        for (name, v) in [("h_f", &h_f), ("c_f", &c_f), ("h_b", &h_b), ("c_b", &c_b)] {
            if let Some(v) = v {
                check_len(name, v.len(), state_len)?;
            }
        }
        let Workspace { jobs, layers: [other, states], .. } = ws;
        // Final states the caller does not want still feed the last outputs: scratch for them.
        states.clear();
        states.resize(4 * state_len, 0.0);
        let mut scratch = states.chunks_exact_mut(state_len.max(1));
        let h_f = or_scratch(h_f, &mut scratch);
        let c_f = or_scratch(c_f, &mut scratch);
        let h_b = or_scratch(h_b, &mut scratch);
        let c_b = or_scratch(c_b, &mut scratch);
        // Sequence outputs: concat writes both halves of y; sum, ave and mul write the forward direction
        // into y and the backward one into scratch, merged below; None writes each to its own buffer.
        let concat = self.merge == MergeMode::Concat;
        let elementwise = !none && !concat;
        // Scratch: the backward sequence before an elementwise merge, or both directions' last outputs.
        other.clear();
        match (seq, elementwise && y.is_some(), none) {
            (true, true, _) => other.resize(seq_len, 0.0),
            (false, _, false) => other.resize(2 * seq_len, 0.0),
            _ => {}
        }
        let (mut y, mut y_forward, mut y_backward) = (y, y_forward, y_backward);
        let w = if concat { 2 * h } else { h };
        let region = |off: usize| Region::seq(off, b, t * w, t, w, h);
        let (ya, yb): (Option<OutRegion>, Option<OutRegion>) = match (seq, self.merge) {
            (false, _) => (None, None),
            (true, MergeMode::None) => (
                OutRegion::split_opt("y_forward", y_forward.as_deref_mut(), [region(0)])?[0],
                OutRegion::split_opt("y_backward", y_backward.as_deref_mut(), [region(0)])?[0],
            ),
            (true, MergeMode::Concat) => {
                let [ya, yb] = OutRegion::split_opt("y", y.as_deref_mut(), [region(0), region(h)])?;
                (ya, yb)
            }
            (true, _) => match y.as_deref_mut() {
                Some(y) => (
                    Some(OutRegion::split("y", y, [region(0)])?[0]),
                    Some(OutRegion::split("y_backward", &mut other[..seq_len], [region(0)])?[0]),
                ),
                None => (None, None),
            },
        };
        let input = StridedInput { data: x, off: 0, sb: t * i, st: i };
        let init_f = initial.map(|s| StateIn { h: s.h_f, c: s.c_f, off: 0, sb: h });
        let init_b = initial.map(|s| StateIn { h: s.h_b, c: s.c_b, off: 0, sb: h });
        let state = Region::state(0, b, h, h);
        let [hf] = OutRegion::split("h_f", h_f, [state])?;
        let [cf] = OutRegion::split("c_f", c_f, [state])?;
        let [hb] = OutRegion::split("h_b", h_b, [state])?;
        let [cb] = OutRegion::split("c_b", c_b, [state])?;
        let jf = self.forward.job(input, view, init_f, ya.map(|out| (out, false)), Some(hf), Some(cf), None, threads);
        let jb = self.backward.job(input, view, init_b, yb.map(|out| (out, true)), Some(hb), Some(cb), None, threads);
        // The jobs write disjoint elements: different buffers, or the two halves of the concat buffer.
        let [wf, wb] = jobs;
        let (sf, sb) = par_join(threads, || jf.run(wf), || jb.run(wb))?;
        let stats = sf?.merge(sb?);
        if !seq {
            // Last outputs, [B, H] per direction.
            if none {
                if let Some(f) = y_forward {
                    self.forward.write_last_output(view, h_f, f);
                }
                if let Some(bk) = y_backward {
                    self.backward.write_last_output(view, h_b, bk);
                }
            } else {
                let (fa, ba) = other.split_at_mut(seq_len);
                self.forward.write_last_output(view, h_f, fa);
                self.backward.write_last_output(view, h_b, ba);
                if let Some(y) = y {
                    self.merge_rows(y, fa, ba, rows);
                }
            }
        } else if elementwise {
            if let Some(y) = y {
                self.merge_in_place(y, &other[..seq_len]);
            }
        }
        Ok(stats)
    }

    /// `y[k] = op(y[k], b[k])` for sum, ave and mul: `y` holds the forward direction (the operand order of
    /// [`forward_reference`](Self::forward_reference)).
    fn merge_in_place(&self, y: &mut [f32], b: &[f32]) {
        for (a, &b) in y.iter_mut().zip(b) {
            *a = match self.merge {
                MergeMode::Sum => *a + b,
                MergeMode::Ave => (*a + b) / 2.0,
                MergeMode::Mul => *a * b,
                MergeMode::Concat | MergeMode::None => unreachable!("elementwise merges only"),
            };
        }
    }

    /// `y` (rows of the merged width) from the directions' rows `fa`, `ba` of `H`.
    fn merge_rows(&self, y: &mut [f32], fa: &[f32], ba: &[f32], rows: usize) {
        let h = self.forward.units();
        if self.merge == MergeMode::Concat {
            for k in 0..rows {
                y[2 * k * h..(2 * k + 1) * h].copy_from_slice(&fa[k * h..(k + 1) * h]);
                y[(2 * k + 1) * h..(2 * k + 2) * h].copy_from_slice(&ba[k * h..(k + 1) * h]);
            }
        } else {
            y.copy_from_slice(fa);
            self.merge_in_place(y, ba);
        }
    }

    /// The same layer on the [reference](mod@crate::reference) implementation.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_reference(
        &self,
        x: &[f32],
        view: &SeqView,
        initial: Option<BidirectionalState<'_>>,
    ) -> Result<BidirectionalResult> {
        self.check(x, view, initial)?;
        let (b, t, h) = (view.batch(), view.time(), self.forward.units());
        let run = |layer: &KerasLstm, init: Option<(&[f32], &[f32])>| -> Result<KerasResult> {
            let o = layer.options();
            reference::keras_lstm(
                layer.weights(),
                &crate::cells::lstm::CellSpec::keras(o.activation, o.recurrent_activation),
                x,
                &view.to_mask(),
                b,
                t,
                o.go_backwards,
                o.zero_output_for_mask,
                init,
                reference::Rounding::of(layer.backend()),
            )
        };
        let f = run(&self.forward, initial.map(|s| (s.h_f, s.c_f)))?;
        let bw = run(&self.backward, initial.map(|s| (s.h_b, s.c_b)))?;
        let (ya, yb) = if self.return_sequences {
            // Flip the backward output along the whole time axis.
            let mut flipped = vec![0.0; bw.y.len()];
            for s in 0..b {
                for p in 0..t {
                    let src = (s * t + p) * h;
                    let dst = (s * t + (t - 1 - p)) * h;
                    flipped[dst..dst + h].copy_from_slice(&bw.y[src..src + h]);
                }
            }
            (f.y, flipped)
        } else {
            (f.last_output, bw.last_output)
        };
        let rows = b * if self.return_sequences { t } else { 1 };
        let (y, y_forward, y_backward) = if self.merge == MergeMode::None {
            (Vec::new(), ya, yb)
        } else {
            let mut y = vec![0.0; rows * self.width()];
            self.merge_rows(&mut y, &ya, &yb, rows);
            (y, Vec::new(), Vec::new())
        };
        Ok(BidirectionalResult { y, y_forward, y_backward, h_f: f.h_n, c_f: f.c_n, h_b: bw.h_n, c_b: bw.c_n })
    }
}
