//! Keras `Bidirectional(LSTM(...))`, `Bidirectional(GRU(...))` and `Bidirectional(SimpleRNN(...))` on the
//! mask-aware engine.
//!
//! Keras semantics (SEMANTICS.md section 3): both layers see the same mask; `zero_output_for_mask` is
//! forced to `return_sequences` on both; the backward layer runs with `go_backwards` toggled and its
//! sequence output is flipped along the full time axis before the merge (`concat`, `sum`, `ave`, `mul`,
//! or none); states come back as forward `h, c`, then backward `h, c` (`h` only for the GRU and the
//! SimpleRNN, whose `c` fields are empty).
//!
//! The flip costs nothing here: the backward job writes each step straight to its time position, and
//! with `concat` both directions write their halves of the merged output in place, concurrently.

use crate::cells::weights::LstmWeights;
use crate::engine::{ForwardStats, OutRegion, Region, StateIn, Workspace};
use crate::error::{check_len, checked_product, Error, Result};
use crate::frameworks::keras::{
    InitialState, JobParts, KerasGrads, KerasLstm, KerasLstmOptions, KerasOutputs, KerasTape, KerasUpstream, Recurrent,
    StridedInput,
};
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

/// Initial states of both directions, `[B, H]` each (`c_f` and `c_b` empty for a GRU or SimpleRNN).
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

/// What [`KerasBidirectional::forward_train`] keeps for [`KerasBidirectional::backward`]: each
/// direction's tape and its outputs (the `mul` merge's derivative needs them).
#[derive(Clone, Debug, Default)]
pub struct BidirectionalTape {
    f: KerasTape,
    b: KerasTape,
    /// The forward direction's sequence (or last) output, time order.
    y_f: Vec<f32>,
    /// The backward direction's, in its processing order.
    y_b: Vec<f32>,
}

impl BidirectionalTape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Gradients of a scalar loss with respect to the outputs of [`KerasBidirectional::forward`], shaped as
/// [`BidirectionalResult`]'s fields; `None` = zeros.
#[derive(Clone, Copy, Debug, Default)]
pub struct BidirectionalUpstream<'a> {
    /// Of the merged `y` (every merge mode but [`MergeMode::None`]).
    pub dy: Option<&'a [f32]>,
    /// Of `y_forward` ([`MergeMode::None`]).
    pub dy_forward: Option<&'a [f32]>,
    /// Of `y_backward` ([`MergeMode::None`], original time order).
    pub dy_backward: Option<&'a [f32]>,
    /// Of the forward final `h`.
    pub d_h_f: Option<&'a [f32]>,
    /// Of the forward final `c`.
    pub d_c_f: Option<&'a [f32]>,
    /// Of the backward final `h`.
    pub d_h_b: Option<&'a [f32]>,
    /// Of the backward final `c`.
    pub d_c_b: Option<&'a [f32]>,
}

/// Where [`KerasBidirectional::backward`] writes: `dx` (both directions summed) and each direction's
/// parameter and initial-state gradients (their `dx` fields must be `None`).
#[derive(Debug, Default)]
pub struct BidirectionalGrads<'a> {
    /// `[B, T, I]`, of `x`.
    pub dx: Option<&'a mut [f32]>,
    /// The forward layer's gradients.
    pub forward: KerasGrads<'a>,
    /// The backward layer's gradients.
    pub backward: KerasGrads<'a>,
}

/// A direction's upstream: its output gradient `g` (sequence or last output) and its state gradients.
fn upstream<'a>(seq: bool, g: &'a [f32], dh: Option<&'a [f32]>, dc: Option<&'a [f32]>) -> KerasUpstream<'a> {
    KerasUpstream { dy: seq.then_some(g), d_last_output: (!seq).then_some(g), d_h_n: dh, d_c_n: dc }
}

/// `g` writing its `dx` to `dx`.
fn with_dx<'b>(g: KerasGrads<'b>, dx: Option<&'b mut [f32]>) -> KerasGrads<'b> {
    KerasGrads { dx, ..g }
}

/// `[B][T][H]` with the time axis reversed.
fn flip(v: &[f32], b: usize, t: usize, h: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for s in 0..b {
        for p in 0..t {
            let (src, dst) = ((s * t + p) * h, (s * t + (t - 1 - p)) * h);
            out[dst..dst + h].copy_from_slice(&v[src..src + h]);
        }
    }
    out
}

/// A Keras `Bidirectional` layer around an LSTM, a GRU or a SimpleRNN.
#[derive(Clone, Debug)]
pub struct KerasBidirectional {
    forward: Recurrent,
    backward: Recurrent,
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
        let (f, b) = (KerasLstm::new(forward, options)?, KerasLstm::new(backward, options)?);
        Self::from_layers(f, b, merge, return_sequences)
    }

    /// Wraps a recurrent layer of any cell: `forward` and `backward` are the two copies Keras makes of the
    /// wrapped layer (the same cell, sizes and options, each with its own weights). As in Keras,
    /// `zero_output_for_mask` becomes `return_sequences` on both and the backward copy gets `go_backwards`
    /// toggled.
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) if the two layers differ in cell, size or
    /// options.
    pub fn from_layers(
        forward: impl Into<Recurrent>,
        backward: impl Into<Recurrent>,
        merge: MergeMode,
        return_sequences: bool,
    ) -> Result<Self> {
        let (forward, backward) = (forward.into(), backward.into());
        if !forward.same_config(&backward) {
            return Err(Error::argument(format!(
                "Bidirectional: the backward layer ({} {} -> {}) is not a copy of the forward one ({} {} -> {})",
                backward.name(),
                backward.input_size(),
                backward.units(),
                forward.name(),
                forward.input_size(),
                forward.units()
            )));
        }
        let go = forward.masking().go_backwards;
        Ok(KerasBidirectional {
            forward: forward.with_mask_options(go, return_sequences),
            backward: backward.with_mask_options(!go, return_sequences),
            merge,
            return_sequences,
        })
    }

    /// The same layer with each direction replaced by `f(direction)`, called on the forward layer first,
    /// then the backward one (new weights: the options, including the toggled `go_backwards`, are the
    /// caller's to keep).
    pub(crate) fn map_directions(&self, mut f: impl FnMut(&Recurrent) -> Result<Recurrent>) -> Result<Self> {
        Ok(KerasBidirectional {
            forward: f(&self.forward)?,
            backward: f(&self.backward)?,
            merge: self.merge,
            return_sequences: self.return_sequences,
        })
    }

    /// The forward layer.
    pub fn forward_layer(&self) -> &Recurrent {
        &self.forward
    }
    /// The backward layer.
    pub fn backward_layer(&self) -> &Recurrent {
        &self.backward
    }
    /// How the directions merge.
    pub fn merge_mode(&self) -> MergeMode {
        self.merge
    }
    /// Whether the layer returns sequences (else the last output).
    pub fn return_sequences(&self) -> bool {
        self.return_sequences
    }
    /// Features of the merged output: `2H` for concat, `H` otherwise.
    pub fn output_width(&self) -> usize {
        self.width()
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
        let (b, t, i, h) = (view.batch(), view.time(), self.forward.input_size(), self.forward.units());
        check_len("x", x.len(), checked_product(&[b, t, i], "x")?)?;
        let state_len = checked_product(&[b, h], "state")?;
        if let Some(s) = initial {
            let c_len = self.c_len(state_len);
            for (name, v, n) in
                [("h_f", s.h_f, state_len), ("c_f", s.c_f, c_len), ("h_b", s.h_b, state_len), ("c_b", s.c_b, c_len)]
            {
                check_len(name, v.len(), n)?;
            }
        }
        Ok(state_len)
    }

    /// The length of a `c` state: `state_len`, or 0 for a cell without one.
    fn c_len(&self, state_len: usize) -> usize {
        if self.forward.has_cell_state() {
            state_len
        } else {
            0
        }
    }

    /// Runs both directions on the fast path (concurrently unless `threads == 1`); `c_f` and `c_b` are
    /// empty for a cell without a `c` state.
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
            c_f: vec![0.0; self.c_len(state_len)],
            h_b: vec![0.0; state_len],
            c_b: vec![0.0; self.c_len(state_len)],
        };
        let none = self.merge == MergeMode::None;
        let has_c = self.forward.has_cell_state();
        let out = BidirectionalOutputs {
            y: (!none).then_some(&mut r.y[..]),
            y_forward: none.then_some(&mut r.y_forward[..]),
            y_backward: none.then_some(&mut r.y_backward[..]),
            h_f: Some(&mut r.h_f),
            c_f: has_c.then_some(&mut r.c_f[..]),
            h_b: Some(&mut r.h_b),
            c_b: has_c.then_some(&mut r.c_b[..]),
        };
        let stats = self.forward_in(x, view, initial, out, threads, &mut Workspace::new())?;
        Ok((r, stats))
    }

    /// As [`forward`](Self::forward), into caller buffers (see [`BidirectionalOutputs`]) with
    /// caller-owned scratch: a warm call with the same view and thread count allocates nothing.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) for buffers of the wrong length;
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for `y` with [`MergeMode::None`],
    /// `y_forward` / `y_backward` with another merge mode, or `c_f` / `c_b` for a cell without a `c`.
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
        let (b, t, i, h) = (view.batch(), view.time(), self.forward.input_size(), self.forward.units());
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
        let has_c = self.forward.has_cell_state();
        if !has_c && (c_f.is_some() || c_b.is_some()) {
            return Err(Error::argument(format!("c_f, c_b: a {} layer has no cell state", self.forward.name())));
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
        states.resize(if has_c { 4 } else { 2 } * state_len, 0.0);
        let mut scratch = states.chunks_exact_mut(state_len.max(1));
        let h_f = or_scratch(h_f, &mut scratch);
        let h_b = or_scratch(h_b, &mut scratch);
        let (c_f, c_b) = if has_c {
            (Some(or_scratch(c_f, &mut scratch)), Some(or_scratch(c_b, &mut scratch)))
        } else {
            (None, None)
        };
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
        let [hb] = OutRegion::split("h_b", h_b, [state])?;
        let [cf] = OutRegion::split_opt("c_f", c_f, [state])?;
        let [cb] = OutRegion::split_opt("c_b", c_b, [state])?;
        let pf = JobParts { x: input, view, init: init_f, y: ya.map(|out| (out, false)), h_n: Some(hf), c_n: cf };
        let pb = JobParts { x: input, view, init: init_b, y: yb.map(|out| (out, true)), h_n: Some(hb), c_n: cb };
        // The jobs write disjoint elements: different buffers, or the two halves of the concat buffer.
        let stats = self.forward.run_pair(&self.backward, pf, pb, threads, jobs)?;
        if !seq {
            // Last outputs, [B, H] per direction.
            if none {
                if let Some(f) = y_forward {
                    self.forward.masking().write_last_output(view, h_f, f);
                }
                if let Some(bk) = y_backward {
                    self.backward.masking().write_last_output(view, h_b, bk);
                }
            } else {
                let (fa, ba) = other.split_at_mut(seq_len);
                self.forward.masking().write_last_output(view, h_f, fa);
                self.backward.masking().write_last_output(view, h_b, ba);
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

    /// [`forward`](Self::forward) that also fills `tape` for [`backward`](Self::backward). Each
    /// direction runs its layer's `forward_train` ([`KerasLstm::forward_train`], ...); the outputs are
    /// bitwise those of `forward`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_train(
        &self,
        x: &[f32],
        view: &SeqView,
        initial: Option<BidirectionalState<'_>>,
        tape: &mut BidirectionalTape,
        threads: usize,
    ) -> Result<(BidirectionalResult, ForwardStats)> {
        let state_len = self.check(x, view, initial)?;
        let (b, t, h) = (view.batch(), view.time(), self.forward.units());
        let seq = self.return_sequences;
        let each = checked_product(&[b, if seq { t } else { 1 }, h], "y")?;
        let BidirectionalTape { f, b: bk, y_f, y_b } = tape;
        let c_len = self.c_len(state_len);
        let run = |layer: &Recurrent, tape: &mut KerasTape, out: &mut Vec<f32>, init: Option<InitialState<'_>>| {
            let (mut hn, mut cn) = (vec![0.0; state_len], vec![0.0; c_len]);
            out.clear();
            out.resize(each, 0.0);
            let (y, last) = if seq { (Some(&mut out[..]), None) } else { (None, Some(&mut out[..])) };
            let c_n = (c_len > 0).then_some(&mut cn[..]);
            let o = KerasOutputs { y, last_output: last, h_n: Some(&mut hn), c_n };
            let stats = layer.forward_train(x, view, init, o, tape, threads, &mut Workspace::new())?;
            Ok::<_, Error>((hn, cn, stats))
        };
        let (h_f, c_f, sf) = run(&self.forward, f, y_f, initial.map(|s| InitialState { h: s.h_f, c: s.c_f }))?;
        let (h_b, c_b, sb) = run(&self.backward, bk, y_b, initial.map(|s| InitialState { h: s.h_b, c: s.c_b }))?;
        // The backward layer's sequence comes in processing order: flip it to time order.
        let flipped = if seq { flip(y_b, b, t, h) } else { y_b.clone() };
        let rows = each / h.max(1);
        let (y, y_forward, y_backward) = if self.merge == MergeMode::None {
            (Vec::new(), y_f.clone(), flipped)
        } else {
            let mut y = vec![0.0; rows * self.width()];
            self.merge_rows(&mut y, y_f, &flipped, rows);
            (y, Vec::new(), Vec::new())
        };
        Ok((BidirectionalResult { y, y_forward, y_backward, h_f, c_f, h_b, c_b }, sf.merge(sb)))
    }

    /// The gradients of a scalar loss through the layer, given the gradients `up` of its outputs (shaped as
    /// [`BidirectionalResult`]'s fields): the vector-Jacobian product of [`forward`](Self::forward) at the
    /// inputs of the [`forward_train`](Self::forward_train) call that filled `tape`. `dx` sums both
    /// directions; each direction's parameter and initial-state gradients go to `grads.forward` /
    /// `grads.backward` (whose `dx` must be `None`).
    ///
    /// # Errors
    /// As [`forward`](Self::forward), and [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for
    /// upstream tensors of another merge mode or a per-direction `dx`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        x: &[f32],
        view: &SeqView,
        initial: Option<BidirectionalState<'_>>,
        tape: &BidirectionalTape,
        up: BidirectionalUpstream<'_>,
        grads: BidirectionalGrads<'_>,
        threads: usize,
    ) -> Result<ForwardStats> {
        let state_len = self.check(x, view, initial)?;
        let (b, t, h) = (view.batch(), view.time(), self.forward.units());
        let seq = self.return_sequences;
        let rows = b * if seq { t } else { 1 };
        let each = rows * h;
        let none = self.merge == MergeMode::None;
        if none && up.dy.is_some() || !none && (up.dy_forward.is_some() || up.dy_backward.is_some()) {
            return Err(Error::argument("upstream tensors of another merge mode"));
        }
        if let Some(dy) = up.dy {
            check_len("dy", dy.len(), rows * self.width())?;
        }
        for (name, v, n) in [
            ("dy_forward", up.dy_forward, each),
            ("dy_backward", up.dy_backward, each),
            ("d_h_f", up.d_h_f, state_len),
            ("d_c_f", up.d_c_f, state_len),
            ("d_h_b", up.d_h_b, state_len),
            ("d_c_b", up.d_c_b, state_len),
        ] {
            if let Some(v) = v {
                check_len(name, v.len(), n)?;
            }
        }
        if tape.y_f.len() != each || tape.y_b.len() != each {
            return Err(Error::argument("the tape was filled by a run of another shape"));
        }
        // The directions' output gradients (time order for both; the backward one is flipped below).
        let (mut gf, mut gb) = (vec![0.0f32; each], vec![0.0f32; each]);
        let yb_time = if seq { flip(&tape.y_b, b, t, h) } else { tape.y_b.clone() };
        match (self.merge, up.dy) {
            (MergeMode::None, _) => {
                if let Some(d) = up.dy_forward {
                    gf.copy_from_slice(d);
                }
                if let Some(d) = up.dy_backward {
                    gb.copy_from_slice(d);
                }
            }
            (_, None) => {}
            (mode, Some(dy)) => {
                for k in 0..rows {
                    for j in 0..h {
                        let (f, bk) = (k * h + j, k * h + j);
                        match mode {
                            MergeMode::Concat => {
                                gf[f] = dy[2 * k * h + j];
                                gb[bk] = dy[(2 * k + 1) * h + j];
                            }
                            MergeMode::Sum => (gf[f], gb[bk]) = (dy[f], dy[f]),
                            MergeMode::Ave => (gf[f], gb[bk]) = (dy[f] / 2.0, dy[f] / 2.0),
                            MergeMode::Mul => (gf[f], gb[bk]) = (dy[f] * yb_time[f], dy[f] * tape.y_f[f]),
                            MergeMode::None => unreachable!("handled above"),
                        }
                    }
                }
            }
        }
        let gb = if seq { flip(&gb, b, t, h) } else { gb };
        let BidirectionalGrads { dx, forward: g_f, backward: g_b } = grads;
        if g_f.dx.is_some() || g_b.dx.is_some() {
            return Err(Error::argument("dx of the layer is BidirectionalGrads::dx, not a direction's"));
        }
        let mut dx = dx;
        let mut dx_b = vec![0.0f32; if dx.is_some() { x.len() } else { 0 }];
        let init_f = initial.map(|s| InitialState { h: s.h_f, c: s.c_f });
        let init_b = initial.map(|s| InitialState { h: s.h_b, c: s.c_b });
        let up_f = upstream(seq, &gf, up.d_h_f, up.d_c_f);
        let up_b = upstream(seq, &gb, up.d_h_b, up.d_c_b);
        let sf = self.forward.backward(x, view, init_f, &tape.f, up_f, with_dx(g_f, dx.as_deref_mut()), threads)?;
        let db = (!dx_b.is_empty()).then_some(&mut dx_b[..]);
        let sb = self.backward.backward(x, view, init_b, &tape.b, up_b, with_dx(g_b, db), threads)?;
        if let Some(dx) = dx {
            dx.iter_mut().zip(&dx_b).for_each(|(d, v)| *d += v);
        }
        Ok(sf.merge(sb))
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
        let f = self.forward.forward_reference(x, view, initial.map(|s| InitialState { h: s.h_f, c: s.c_f }))?;
        let bw = self.backward.forward_reference(x, view, initial.map(|s| InitialState { h: s.h_b, c: s.c_b }))?;
        let (ya, yb) = if self.return_sequences {
            // Flip the backward output along the whole time axis.
            let flipped = flip(&bw.y, b, t, h);
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
