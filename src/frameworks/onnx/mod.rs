//! The ONNX recurrent operators (opset 22): `LSTM` ([`OnnxLstm`]), `GRU` ([`OnnxGru`]) and `RNN`
//! ([`OnnxRnn`]), every direction and both layouts, on the mask-aware engine.
//!
//! Where the specification is silent this follows ONNX Runtime: `Y` past a sequence's length is `+0.0`,
//! `Y_h` (and the LSTM's `Y_c`) are the state after the last valid step (for reverse, after `x_0`), a
//! length-0 sequence gives a zero state even with a non-zero initial state, and lengths must lie in
//! `0..=seq_length`.
//!
//! Reverse runs each sequence from its own last valid step, reading `X` in place (no ReverseSequence
//! copy); bidirectional runs both directions concurrently, writing their halves of the interleaved `Y`.
//! `layout = 1` (batch-major, which ONNX Runtime's CPU kernels reject) is only a different set of strides.
//! The three operators share this module's run: one engine job per direction, the cell being the only
//! difference.

mod gru;
mod lstm;

pub use gru::{OnnxGru, OnnxGruAttrs, OnnxRnn, OnnxRnnAttrs};
pub use lstm::{OnnxLstm, OnnxLstmAttrs};

use crate::cells::activation::Activation;
use crate::engine::{
    directions, par_join, Backward, BackwardOut, DirTape, EmptyState, Fill, ForwardStats, Job, OutRegion, Region,
    Schedule, SeqIn, SeqOut, StateIn, TapeOut, Workspace,
};
use crate::error::{check_len, checked_product, Error, Result};
use crate::kernel::{Backend, Carry, CellBackward, CellKernel};
use crate::view::{Padding, SeqView};

/// ONNX `direction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Direction {
    /// `"forward"` (C ABI 0).
    #[default]
    Forward,
    /// `"reverse"` (C ABI 1): each sequence's valid part, last step first.
    Reverse,
    /// `"bidirectional"` (C ABI 2).
    Bidirectional,
}

impl Direction {
    /// From the C ABI code (0 forward, 1 reverse, 2 bidirectional).
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for another code.
    pub fn from_code(code: i32) -> Result<Self> {
        match code {
            0 => Ok(Direction::Forward),
            1 => Ok(Direction::Reverse),
            2 => Ok(Direction::Bidirectional),
            _ => Err(Error::argument(format!("unknown direction {code} (0 forward, 1 reverse, 2 bidirectional)"))),
        }
    }
    /// Number of directions `D`.
    pub fn count(self) -> usize {
        if self == Direction::Bidirectional {
            2
        } else {
            1
        }
    }
}

/// ONNX `layout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Layout {
    /// 0: `X [T, B, I]`, `Y [T, D, B, H]`, `Y_h`/`Y_c` and initial states `[D, B, H]`.
    #[default]
    SeqMajor,
    /// 1: `X [B, T, I]`, `Y [B, T, D, H]`, `Y_h`/`Y_c` and initial states `[B, D, H]`.
    BatchMajor,
}

impl Layout {
    /// From the C ABI code (0 or 1).
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for another code.
    pub fn from_code(code: i32) -> Result<Self> {
        match code {
            0 => Ok(Layout::SeqMajor),
            1 => Ok(Layout::BatchMajor),
            _ => Err(Error::argument(format!("unknown layout {code} (0 or 1)"))),
        }
    }
}

/// Output buffers of an operator's `forward` ([`OnnxLstm::forward`], [`OnnxGru::forward`],
/// [`OnnxRnn::forward`]); each optional.
#[derive(Debug, Default)]
pub struct OnnxOutputs<'a> {
    /// `Y`: `[T, D, B, H]` (layout 0) or `[B, T, D, H]` (layout 1).
    pub y: Option<&'a mut [f32]>,
    /// `Y_h`: `[D, B, H]` (layout 0) or `[B, D, H]` (layout 1).
    pub y_h: Option<&'a mut [f32]>,
    /// `Y_c`: as `Y_h` (the LSTM only; GRU and RNN have no cell state and refuse it).
    pub y_c: Option<&'a mut [f32]>,
}

/// `Y`, `Y_h`, `Y_c` as owned vectors.
#[derive(Clone, Debug, PartialEq)]
pub struct OnnxResult {
    /// `Y`.
    pub y: Vec<f32>,
    /// `Y_h`.
    pub y_h: Vec<f32>,
    /// `Y_c` (empty for GRU and RNN).
    pub y_c: Vec<f32>,
}

/// Strides of one tensor of the operator, in elements.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strides {
    /// Offset of direction d: `d * dir`.
    dir: usize,
    batch: usize,
    time: usize,
}

/// The strides of `X`, `Y` and the states of a call of `t` steps and `b` sequences.
pub(crate) fn strides(
    layout: Layout,
    (t, b, i, h, d): (usize, usize, usize, usize, usize),
) -> (Strides, Strides, Strides) {
    match layout {
        Layout::SeqMajor => (
            Strides { dir: 0, batch: i, time: b * i },
            Strides { dir: b * h, batch: h, time: d * b * h },
            Strides { dir: b * h, batch: h, time: 0 },
        ),
        Layout::BatchMajor => (
            Strides { dir: 0, batch: t * i, time: i },
            Strides { dir: h, batch: t * d * h, time: d * h },
            Strides { dir: h, batch: d * h, time: 0 },
        ),
    }
}

/// The activations of each direction: the defaults when none are given, else exactly `per_dir` per
/// direction (forward first), as ONNX Runtime requires.
pub(crate) fn direction_activations(
    given: &[Activation],
    defaults: &[Activation],
    directions: usize,
) -> Result<Vec<Vec<Activation>>> {
    let per_dir = defaults.len();
    let acts = match given.len() {
        0 => defaults.repeat(directions),
        n if n == per_dir * directions => given.to_vec(),
        n => {
            let want = per_dir * directions;
            return Err(Error::argument(format!("{n} activations given; {directions} direction(s) take 0 or {want}")));
        }
    };
    Ok(acts.chunks_exact(per_dir).map(<[Activation]>::to_vec).collect())
}

/// A clip attribute must be positive.
pub(crate) fn check_clip(clip: Option<f32>) -> Result<()> {
    match clip {
        Some(c) if c.is_nan() || c <= 0.0 => Err(Error::argument(format!("clip must be positive, got {c}"))),
        _ => Ok(()),
    }
}

/// Gradients of a scalar loss with respect to the operator's outputs (the upstream of
/// an operator's `backward` ([`OnnxLstm::backward`])), shaped as [`OnnxOutputs`]; `None` = zeros. `Y` past a sequence's length is a
/// constant `+0.0`, so its upstream there has no effect.
#[derive(Clone, Copy, Debug, Default)]
pub struct OnnxUpstream<'a> {
    /// Of `Y`.
    pub dy: Option<&'a [f32]>,
    /// Of `Y_h`.
    pub dy_h: Option<&'a [f32]>,
    /// Of `Y_c`.
    pub dy_c: Option<&'a [f32]>,
}

/// Where an operator's `backward` ([`OnnxLstm::backward`], [`OnnxGru::backward`], [`OnnxRnn::backward`])
/// writes gradients, each shaped as the matching input of the operator's `new` / `forward` (`G` gates per
/// unit: LSTM 4, GRU 3, RNN 1); `None` = not computed; every buffer is overwritten. `d_initial_c` and `dp`
/// only for the LSTM.
#[derive(Debug, Default)]
pub struct OnnxGrads<'a> {
    /// Of `X` (`+0.0` past each length).
    pub dx: Option<&'a mut [f32]>,
    /// Of `W [D, G H, I]`.
    pub dw: Option<&'a mut [f32]>,
    /// Of `R [D, G H, H]`.
    pub dr: Option<&'a mut [f32]>,
    /// Of `B [D, 2 G H]` (where `Wb` and `Rb` enter as a sum, as everywhere in the LSTM and the RNN,
    /// their halves are equal).
    pub db: Option<&'a mut [f32]>,
    /// Of `initial_h` (zeros for length-0 sequences, whose `Y_h` does not depend on it).
    pub d_initial_h: Option<&'a mut [f32]>,
    /// Of `initial_c`.
    pub d_initial_c: Option<&'a mut [f32]>,
    /// Of `P [D, 3H]` (only for an operator with peepholes).
    pub dp: Option<&'a mut [f32]>,
}

/// An operator's input gradients as owned vectors, shaped as [`OnnxGrads`] (see
/// [`OnnxGru::backward_reference`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OnnxGradsResult {
    /// Of `X`.
    pub dx: Vec<f32>,
    /// Of `W`.
    pub dw: Vec<f32>,
    /// Of `R`.
    pub dr: Vec<f32>,
    /// Of `B`.
    pub db: Vec<f32>,
    /// Of `initial_h`.
    pub d_initial_h: Vec<f32>,
}

/// What an operator's `forward_train` keeps for its `backward`, per direction and valid step.
#[derive(Clone, Debug, Default)]
pub struct OnnxTape {
    dirs: [DirTape; 2],
    /// `(seq_length, batch, input, hidden, directions)` of the run that filled it.
    shape: (usize, usize, usize, usize, usize),
}

impl OnnxTape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sizes the tape for a run of `shape` (`(seq_length, batch, input, hidden, directions)`) over `view`
    /// with records of `record x hp` floats, and lends its directions to the run's jobs.
    pub(crate) fn prepare(
        &mut self,
        view: &SeqView,
        shape: (usize, usize, usize, usize, usize),
        record: usize,
        hp: usize,
    ) -> Result<[Option<TapeOut<'_>>; 2]> {
        self.shape = shape;
        for dir in &mut self.dirs[..shape.4] {
            dir.prepare(view, record, hp)?;
        }
        let [t0, t1] = &mut self.dirs;
        Ok([Some(TapeOut::new(t0)), (shape.4 > 1).then(|| TapeOut::new(t1))])
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.dirs.iter().map(DirTape::bytes).sum()
    }
}

/// The inputs of an operator's backward (see [`OnnxLstm::backward`]).
pub(crate) struct BackCall<'a> {
    pub x: &'a [f32],
    pub seq_length: usize,
    pub batch: usize,
    pub sequence_lens: Option<&'a [i32]>,
    pub initial_h: Option<&'a [f32]>,
    pub initial_c: Option<&'a [f32]>,
    pub tape: &'a OnnxTape,
    pub up: OnnxUpstream<'a>,
    pub dx: Option<&'a mut [f32]>,
    pub d_initial_h: Option<&'a mut [f32]>,
    pub d_initial_c: Option<&'a mut [f32]>,
    pub threads: usize,
}

/// Checks the lengths of the requested parameter gradients (`(name, buffer, floats per direction)`) for
/// `d_n` directions; returns whether any is requested.
pub(crate) fn check_param_grads(want: &[(&str, &Option<&mut [f32]>, usize)], d_n: usize) -> Result<bool> {
    for (name, v, n) in want {
        if let Some(v) = v {
            check_len(name, v.len(), checked_product(&[d_n, *n], name)?)?;
        }
    }
    Ok(want.iter().any(|(_, v, _)| v.is_some()))
}

/// What every operator's run shares: its attributes' shape and where it runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operator {
    pub direction: Direction,
    pub layout: Layout,
    pub input: usize,
    pub hidden: usize,
    pub backend: &'static Backend,
    pub schedule: Schedule,
}

/// The inputs and outputs of one call (see [`OnnxLstm::forward`]).
pub(crate) struct Call<'a> {
    pub x: &'a [f32],
    pub seq_length: usize,
    pub batch: usize,
    pub sequence_lens: Option<&'a [i32]>,
    /// The initial `h` and the LSTM's initial `c` (`None` = zeros; always `None` for cells without `c`).
    pub initial_h: Option<&'a [f32]>,
    pub initial_c: Option<&'a [f32]>,
    pub out: OnnxOutputs<'a>,
    pub threads: usize,
}

impl Operator {
    /// Directions `D`.
    pub(crate) fn count(&self) -> usize {
        self.direction.count()
    }

    /// Whether direction `d` runs each sequence backwards.
    pub(crate) fn reverse(&self, d: usize) -> bool {
        self.direction == Direction::Reverse || d == 1
    }

    /// The strides of `X`, `Y` and the states of a call.
    pub(crate) fn strides(&self, t: usize, b: usize) -> (Strides, Strides, Strides) {
        strides(self.layout, (t, b, self.input, self.hidden, self.count()))
    }

    /// Runs `call`: checks its buffers, builds the view of its lengths in `ws`, then one engine job per
    /// direction with the cell `cell(d)` (both directions concurrently), the tape of each direction from
    /// `tapes(view)` (a training forward's).
    pub(crate) fn run<'t, C: CellKernel>(
        &self,
        call: Call<'_>,
        ws: &mut Workspace,
        cell: impl Fn(usize) -> C + Sync,
        tapes: impl FnOnce(&SeqView) -> Result<[Option<TapeOut<'t>>; 2]>,
    ) -> Result<ForwardStats> {
        let Call { x, seq_length: t, batch: b, sequence_lens, initial_h, initial_c, out, threads } = call;
        let (h, d_n) = (self.hidden, self.count());
        check_len("X", x.len(), checked_product(&[t, b, self.input], "X")?)?;
        let Workspace { jobs, state: zeros, view, .. } = ws;
        match sequence_lens {
            Some(l) => {
                check_len("sequence_lens", l.len(), b)?;
                view.assign_i32_lengths(l, t, Padding::Post)?;
            }
            None => view.assign_full(b, t),
        }
        let view: &SeqView = view;
        let state_len = checked_product(&[d_n, b, h], "Y_h")?;
        let OnnxOutputs { y, y_h, y_c } = out;
        if let Some(y) = &y {
            check_len("Y", y.len(), checked_product(&[t, d_n, b, h], "Y")?)?;
        }
        if y_c.is_some() && C::EXTRA_STATES == 0 {
            return Err(Error::argument("Y_c: this operator has no cell state"));
        }
        for (name, s) in [("Y_h", y_h.as_deref().map(<[f32]>::len)), ("Y_c", y_c.as_deref().map(<[f32]>::len))] {
            if let Some(len) = s {
                check_len(name, len, state_len)?;
            }
        }
        for (name, s) in [("initial_h", initial_h), ("initial_c", initial_c)] {
            if let Some(s) = s {
                check_len(name, s.len(), state_len)?;
            }
        }
        let init = crate::engine::initial_pair(initial_h, initial_c, zeros, state_len);
        let (xs, ys, ss) = self.strides(t, b);
        let y_region = |d: usize| Region::seq(d * ys.dir, b, ys.batch, t, ys.time, h);
        let s_region = |d: usize| Region::state(d * ss.dir, b, ss.batch, h);
        // The directions write disjoint parts of Y, Y_h and Y_c (checked by `split`).
        let ys_all = OutRegion::split_opt("Y", y, directions([y_region(0), y_region(1)], d_n))?;
        let hs_all = OutRegion::split_opt("Y_h", y_h, directions([s_region(0), s_region(1)], d_n))?;
        let cs_all = OutRegion::split_opt("Y_c", y_c, directions([s_region(0), s_region(1)], d_n))?;
        let tapes = tapes(view)?;
        let job = |d: usize| Job {
            backend: self.backend,
            cell: cell(d),
            view,
            x: SeqIn { data: x, off: 0, sb: xs.batch, st: xs.time },
            reverse: self.reverse(d),
            init: init.map(|(h0, c0)| StateIn { h: h0, c: c0, off: d * ss.dir, sb: ss.batch }),
            empty_state: EmptyState::Zero,
            y: ys_all[d].map(|out| SeqOut { out, mirror: false, fill: Fill::Zero }),
            h_n: hs_all[d],
            c_n: cs_all[d],
            tape: tapes[d],
            threads,
            schedule: self.schedule,
        };
        let [j0, j1] = jobs;
        if d_n == 1 {
            return job(0).run(j0);
        }
        let (fwd, bwd) = par_join(threads, || job(0).run(j0), || job(1).run(j1))?;
        Ok(fwd?.merge(bwd?))
    }

    /// The backward of `call`, the cell of direction `d` being `cell(d)`: checks the buffers and the tape,
    /// routes each direction's upstream to its valid steps, runs one engine backward per direction and
    /// writes `dX` (summed over the directions), the initial states' gradients and, into `params` (one per
    /// direction), the canonical parameter gradients.
    pub(crate) fn backward<C: CellBackward>(
        &self,
        call: BackCall<'_>,
        cell: impl Fn(usize) -> Result<C>,
        mut params: Option<&mut [C::Grads]>,
    ) -> Result<ForwardStats> {
        let BackCall { x, seq_length: t, batch: b, sequence_lens, initial_h, initial_c, tape, up, threads, .. } = call;
        let (mut dx, mut d_initial_h, mut d_initial_c) = (call.dx, call.d_initial_h, call.d_initial_c);
        let (h, d_n, i) = (self.hidden, self.count(), self.input);
        check_len("X", x.len(), checked_product(&[t, b, i], "X")?)?;
        if tape.shape != (t, b, i, h, d_n) {
            return Err(Error::argument("the tape was filled by a run of another shape"));
        }
        let has_c = C::CARRY == Carry::C;
        if !has_c && (up.dy_c.is_some() || initial_c.is_some() || d_initial_c.is_some()) {
            return Err(Error::argument("dY_c, initial_c, d_initial_c: this operator has no cell state"));
        }
        let mut view = SeqView::default();
        match sequence_lens {
            Some(l) => {
                check_len("sequence_lens", l.len(), b)?;
                view.assign_i32_lengths(l, t, Padding::Post)?;
            }
            None => view.assign_full(b, t),
        }
        let state_len = checked_product(&[d_n, b, h], "Y_h")?;
        let y_len = checked_product(&[t, d_n, b, h], "Y")?;
        for (name, v, n) in [("dY", up.dy, y_len), ("dY_h", up.dy_h, state_len), ("dY_c", up.dy_c, state_len)] {
            if let Some(v) = v {
                check_len(name, v.len(), n)?;
            }
        }
        for (name, s) in [("initial_h", initial_h), ("initial_c", initial_c)] {
            if let Some(s) = s {
                check_len(name, s.len(), state_len)?;
            }
        }
        for (name, v, n) in [
            ("dX", dx.as_deref().map(<[f32]>::len), t * b * i),
            ("d_initial_h", d_initial_h.as_deref().map(<[f32]>::len), state_len),
            ("d_initial_c", d_initial_c.as_deref().map(<[f32]>::len), state_len),
        ] {
            if let Some(len) = v {
                check_len(name, len, n)?;
            }
        }
        if params.as_deref().is_some_and(|p| p.len() != d_n) {
            return Err(Error::new(crate::error::ErrorKind::Internal, "one set of parameter gradients per direction"));
        }
        let (xs, ys, ss) = self.strides(t, b);
        // Per direction: [B][H] copies of the state tensors (layout 1 interleaves the directions).
        let per_dir = |v: Option<&[f32]>, d: usize| -> Option<Vec<f32>> {
            v.map(|v| (0..b).flat_map(|s| v[d * ss.dir + s * ss.batch..][..h].iter().copied()).collect())
        };
        if let Some(dx) = dx.as_deref_mut() {
            dx.fill(0.0);
        }
        let (mut dh0, mut dc0) = (vec![0.0f32; b * h], vec![0.0f32; if has_c { b * h } else { 0 }]);
        let mut stats = ForwardStats::default();
        for d in 0..d_n {
            let cell = cell(d)?;
            let dtape = &tape.dirs[d];
            let hp = cell.hp();
            if dtape.rows() != view.total_valid() || dtape.hp != hp {
                return Err(Error::argument("the tape was filled by a run of another shape"));
            }
            // Y at each valid step is that step's h: its upstream arrives there.
            let mut scratch = dtape.scratch.take();
            let dh_up = &mut scratch.dh_up;
            dh_up.clear();
            dh_up.resize(dtape.rows() * hp, 0.0);
            if let Some(dy) = up.dy {
                for s in 0..b {
                    for row in dtape.offsets[s]..dtape.offsets[s + 1] {
                        let at = d * ys.dir + s * ys.batch + dtape.times[row] * ys.time;
                        dh_up[row * hp..row * hp + h].copy_from_slice(&dy[at..at + h]);
                    }
                }
            }
            let (hn, cn) = (per_dir(up.dy_h, d), per_dir(up.dy_c, d));
            let (h0, c0) = (per_dir(initial_h, d), per_dir(initial_c, d));
            let zeros = vec![0.0f32; b * h];
            let init = (h0.is_some() || c0.is_some())
                .then(|| (h0.as_deref().unwrap_or(&zeros), c0.as_deref().unwrap_or(&zeros)));
            let job = Backward {
                backend: self.backend,
                cell,
                view: &view,
                tape: dtape,
                x: SeqIn { data: x, off: 0, sb: xs.batch, st: xs.time },
                init,
                dh_up: &scratch.dh_up,
                d_h_n: hn.as_deref(),
                d_c_n: cn.as_deref(),
                empty_is_initial: false,
                threads,
                schedule: self.schedule,
            };
            let out = BackwardOut {
                dx: dx.as_deref_mut().map(|dx| (dx, xs.batch, xs.time, d > 0)),
                params: params.as_deref_mut().map(|p| &mut p[d]),
                d_h0: Some(&mut dh0),
                d_c0: has_c.then_some(&mut dc0[..]),
            };
            let done = job.run(out, &mut scratch.bufs);
            dtape.scratch.put(scratch);
            stats = stats.merge(done?);
            for (src, dst) in [(&dh0, d_initial_h.as_deref_mut()), (&dc0, d_initial_c.as_deref_mut())] {
                if let Some(dst) = dst {
                    for s in 0..b {
                        dst[d * ss.dir + s * ss.batch..][..h].copy_from_slice(&src[s * h..(s + 1) * h]);
                    }
                }
            }
        }
        Ok(stats)
    }

    /// A reference run in this operator's layout: `X`, `initial_h` and `initial_c` brought to layout 0,
    /// `run(x, lengths, initial_h, initial_c)` returning `(Y, Y_h, Y_c)` in layout 0, brought back.
    pub(crate) fn reference(
        &self,
        (x, t, b): (&[f32], usize, usize),
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        initial_c: Option<&[f32]>,
        run: impl FnOnce(&[f32], &[usize], Option<&[f32]>, Option<&[f32]>) -> Result<OnnxResult>,
    ) -> Result<OnnxResult> {
        let (i, h, d_n) = (self.input, self.hidden, self.count());
        let lengths = match sequence_lens {
            Some(l) => SeqView::from_i32_lengths(l, t, Padding::Post)?.valid_lens(),
            None => vec![t; b],
        };
        check_len("X", x.len(), checked_product(&[t, b, i], "X")?)?;
        let batch_major = self.layout == Layout::BatchMajor;
        // Layout 1 is layout 0 with the first two axes swapped.
        let x0 = if batch_major { swap_axes(x, b, t, i) } else { x.to_vec() };
        let state = |s: Option<&[f32]>| s.map(|s| if batch_major { swap_axes(s, b, d_n, h) } else { s.to_vec() });
        let (h0, c0) = (state(initial_h), state(initial_c));
        let OnnxResult { y, y_h, y_c } = run(&x0, &lengths, h0.as_deref(), c0.as_deref())?;
        if !batch_major {
            return Ok(OnnxResult { y, y_h, y_c });
        }
        // [T, D, B, H] -> [B, T, D, H]; [D, B, H] -> [B, D, H].
        let mut yb = vec![0.0; y.len()];
        for tt in 0..t {
            for d in 0..d_n {
                for bb in 0..b {
                    let src = ((tt * d_n + d) * b + bb) * h;
                    let dst = ((bb * t + tt) * d_n + d) * h;
                    yb[dst..dst + h].copy_from_slice(&y[src..src + h]);
                }
            }
        }
        let y_c = if y_c.is_empty() { y_c } else { swap_axes(&y_c, d_n, b, h) };
        Ok(OnnxResult { y: yb, y_h: swap_axes(&y_h, d_n, b, h), y_c })
    }
}

/// `[a, b, c] -> [b, a, c]`.
pub fn swap_axes(v: &[f32], a: usize, b: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for i in 0..a {
        for j in 0..b {
            out[(j * a + i) * c..(j * a + i + 1) * c].copy_from_slice(&v[(i * b + j) * c..(i * b + j + 1) * c]);
        }
    }
    out
}
