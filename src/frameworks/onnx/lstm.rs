//! The ONNX `LSTM` operator, forward and backward.

use super::{check_clip, direction_activations, Call, Direction, Layout, OnnxOutputs, OnnxResult, Operator};
use crate::cells::activation::Activation;
use crate::cells::grads::LstmGrads;
use crate::cells::lstm::{CellSpec, LstmKernel, TAPE_RECORD};
use crate::cells::weights::{LstmWeights, PackedLstm};
use crate::engine::{DirTape, ForwardStats, LstmBackward, LstmBackwardOut, Schedule, SeqIn, TapeOut, Workspace};
use crate::error::{check_len, checked_product, Error, Result};
use crate::kernel::{self, Backend};
use crate::reference;
use crate::view::{Padding, SeqView};

/// Attributes of the ONNX LSTM operator.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OnnxLstmAttrs {
    /// `direction`.
    pub direction: Direction,
    /// `layout`.
    pub layout: Layout,
    /// `hidden_size` (at least 1).
    pub hidden_size: usize,
    /// `clip`: gate pre-activations are clamped to `[-clip, clip]` after bias and peephole. Must be > 0.
    pub clip: Option<f32>,
    /// `input_forget`: `f = 1 - i`.
    pub input_forget: bool,
    /// `activations`, `(f, g, h)` per direction: empty for the defaults (Sigmoid, Tanh, Tanh), else 3 per
    /// direction (6 for bidirectional, forward first), as ONNX Runtime requires.
    pub activations: Vec<Activation>,
}

impl OnnxLstmAttrs {
    /// Default attributes with the given hidden size and direction.
    pub fn new(hidden_size: usize, direction: Direction) -> Self {
        OnnxLstmAttrs {
            direction,
            layout: Layout::SeqMajor,
            hidden_size,
            clip: None,
            input_forget: false,
            activations: Vec::new(),
        }
    }
    /// Sets `layout`.
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }
    /// Sets `clip`.
    pub fn clip(mut self, clip: Option<f32>) -> Self {
        self.clip = clip;
        self
    }
    /// Sets `input_forget`.
    pub fn input_forget(mut self, on: bool) -> Self {
        self.input_forget = on;
        self
    }
    /// Sets `activations`.
    pub fn activations(mut self, acts: Vec<Activation>) -> Self {
        self.activations = acts;
        self
    }

    /// The cell of each direction.
    fn cells(&self) -> Result<Vec<CellSpec>> {
        check_clip(self.clip)?;
        let defaults = [Activation::Sigmoid, Activation::Tanh, Activation::Tanh];
        let acts = direction_activations(&self.activations, &defaults, self.direction.count())?;
        Ok(acts.iter().map(|a| CellSpec::onnx(a[0], a[1], a[2], self.clip, self.input_forget)).collect())
    }
}

/// Gradients of a scalar loss with respect to the operator's outputs (the upstream of
/// [`OnnxLstm::backward`]), shaped as [`OnnxOutputs`]; `None` = zeros. `Y` past a sequence's length is a
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

/// Where [`OnnxLstm::backward`] writes gradients, each shaped as the matching input of
/// [`OnnxLstm::new`] / [`OnnxLstm::forward`]; `None` = not computed; every buffer is overwritten.
#[derive(Debug, Default)]
pub struct OnnxGrads<'a> {
    /// Of `X` (`+0.0` past each length).
    pub dx: Option<&'a mut [f32]>,
    /// Of `W [D, 4H, I]`.
    pub dw: Option<&'a mut [f32]>,
    /// Of `R [D, 4H, H]`.
    pub dr: Option<&'a mut [f32]>,
    /// Of `B [D, 8H]` (the `Wb` and `Rb` halves are equal: both enter the sum once).
    pub db: Option<&'a mut [f32]>,
    /// Of `initial_h` (zeros for length-0 sequences, whose `Y_h` does not depend on it).
    pub d_initial_h: Option<&'a mut [f32]>,
    /// Of `initial_c`.
    pub d_initial_c: Option<&'a mut [f32]>,
    /// Of `P [D, 3H]` (only for an operator with peepholes).
    pub dp: Option<&'a mut [f32]>,
}

/// What [`OnnxLstm::forward_train`] keeps for [`OnnxLstm::backward`], per direction and valid step.
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

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.dirs.iter().map(DirTape::bytes).sum()
    }
}

#[derive(Clone, Debug)]
struct DirectionWeights {
    weights: LstmWeights,
    packed: PackedLstm,
    cell: CellSpec,
}

/// An ONNX LSTM node: attributes validated and weights packed once.
#[derive(Clone, Debug)]
pub struct OnnxLstm {
    attrs: OnnxLstmAttrs,
    input_size: usize,
    dirs: Vec<DirectionWeights>,
    backend: &'static Backend,
    schedule: Schedule,
}

impl OnnxLstm {
    /// Validates the attributes and packs `W [D, 4H, I]`, `R [D, 4H, H]`, `B [D, 8H]` and `P [D, 3H]`
    /// (ONNX gate order i, o, f, c; peepholes i, o, f).
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for bad attributes (hidden size 0,
    /// activation count, non-positive clip); [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) for
    /// weight lengths; [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) for sizes that overflow.
    pub fn new(
        attrs: OnnxLstmAttrs,
        input_size: usize,
        w: &[f32],
        r: &[f32],
        b: Option<&[f32]>,
        p: Option<&[f32]>,
    ) -> Result<Self> {
        Self::with_backend(attrs, input_size, w, r, b, p, kernel::selected())
    }

    /// As [`new`](Self::new), for a given backend.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_backend(
        attrs: OnnxLstmAttrs,
        input_size: usize,
        w: &[f32],
        r: &[f32],
        b: Option<&[f32]>,
        p: Option<&[f32]>,
        backend: &'static Backend,
    ) -> Result<Self> {
        let h = attrs.hidden_size;
        if h == 0 {
            return Err(Error::argument("hidden_size must be at least 1"));
        }
        let cells = attrs.cells()?;
        let d_n = cells.len();
        let wl = checked_product(&[4, h, input_size], "W")?;
        let rl = checked_product(&[4, h, h], "R")?;
        check_len("W", w.len(), checked_product(&[d_n, wl], "W")?)?;
        check_len("R", r.len(), checked_product(&[d_n, rl], "R")?)?;
        if let Some(b) = b {
            check_len("B", b.len(), checked_product(&[d_n, 8, h], "B")?)?;
        }
        if let Some(p) = p {
            check_len("P", p.len(), checked_product(&[d_n, 3, h], "P")?)?;
        }
        let dirs = cells
            .into_iter()
            .enumerate()
            .map(|(d, cell)| {
                let weights = LstmWeights::from_onnx(
                    input_size,
                    h,
                    &w[d * wl..(d + 1) * wl],
                    &r[d * rl..(d + 1) * rl],
                    b.map(|b| &b[d * 8 * h..(d + 1) * 8 * h]),
                    p.map(|p| &p[d * 3 * h..(d + 1) * 3 * h]),
                )?;
                let packed = PackedLstm::new(&weights, backend.nb)?;
                Ok(DirectionWeights { weights, packed, cell })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(OnnxLstm { attrs, input_size, dirs, backend, schedule: Schedule::Auto })
    }

    /// The attributes.
    pub fn attrs(&self) -> &OnnxLstmAttrs {
        &self.attrs
    }
    /// Input size `I`.
    pub fn input_size(&self) -> usize {
        self.input_size
    }
    /// The backend the weights are packed for.
    pub fn backend(&self) -> &'static Backend {
        self.backend
    }

    /// Sets how a call spreads over threads (default [`Schedule::Auto`]); results are bitwise the same
    /// for every schedule.
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// What the three operators' runs share.
    fn operator(&self) -> Operator {
        Operator {
            direction: self.attrs.direction,
            layout: self.attrs.layout,
            input: self.input_size,
            hidden: self.attrs.hidden_size,
            backend: self.backend,
            schedule: self.schedule,
        }
    }

    /// Runs the operator on `X` of `seq_length` steps and `batch` sequences. Padded steps are never
    /// computed; results are bitwise identical for every `threads` (0: all cores, 1: the calling thread).
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) when a buffer has the wrong length;
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for a length outside `0..=seq_length`;
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) for sizes that overflow.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &[f32],
        seq_length: usize,
        batch: usize,
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        initial_c: Option<&[f32]>,
        out: OnnxOutputs<'_>,
        threads: usize,
    ) -> Result<ForwardStats> {
        let ws = &mut Workspace::new();
        self.forward_in(x, seq_length, batch, sequence_lens, initial_h, initial_c, out, threads, ws)
    }

    /// As [`forward`](Self::forward), with caller-owned scratch memory reused across calls (see
    /// [`Workspace`]). The sequence view is still built per call from `sequence_lens`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_in(
        &self,
        x: &[f32],
        seq_length: usize,
        batch: usize,
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        initial_c: Option<&[f32]>,
        out: OnnxOutputs<'_>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        self.run(x, seq_length, batch, sequence_lens, initial_h, initial_c, out, None, threads, ws)
    }

    /// [`forward_in`](Self::forward_in) that also fills `tape` with what [`backward`](Self::backward)
    /// needs (valid steps only). The outputs are bitwise those of `forward_in`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_train(
        &self,
        x: &[f32],
        seq_length: usize,
        batch: usize,
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        initial_c: Option<&[f32]>,
        out: OnnxOutputs<'_>,
        tape: &mut OnnxTape,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        self.run(x, seq_length, batch, sequence_lens, initial_h, initial_c, out, Some(tape), threads, ws)
    }

    /// The gradients of a scalar loss through the operator, given the gradients `up` of its outputs: the
    /// vector-Jacobian product of [`forward`](Self::forward) at the inputs of the
    /// [`forward_train`](Self::forward_train) call that filled `tape` (pass the same inputs). Padded steps
    /// are never computed; results do not depend on `threads`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward); [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for a
    /// tape filled by a run of another shape, or `dp` for an operator without peepholes.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        x: &[f32],
        seq_length: usize,
        batch: usize,
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        initial_c: Option<&[f32]>,
        tape: &OnnxTape,
        up: OnnxUpstream<'_>,
        grads: OnnxGrads<'_>,
        threads: usize,
    ) -> Result<ForwardStats> {
        let (t, b, h, d_n, i) = (seq_length, batch, self.attrs.hidden_size, self.dirs.len(), self.input_size);
        check_len("X", x.len(), checked_product(&[t, b, i], "X")?)?;
        if tape.shape != (t, b, i, h, d_n) {
            return Err(Error::argument("the tape was filled by a run of another shape"));
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
        let peepholes = self.dirs[0].weights.peephole().is_some();
        let OnnxGrads { dx, dw, dr, db, mut d_initial_h, mut d_initial_c, dp } = grads;
        if dp.is_some() && !peepholes {
            return Err(Error::argument("dP requested for an operator without peepholes"));
        }
        for (name, v, n) in [
            ("dX", dx.as_deref().map(<[f32]>::len), t * b * i),
            ("dW", dw.as_deref().map(<[f32]>::len), d_n * 4 * h * i),
            ("dR", dr.as_deref().map(<[f32]>::len), d_n * 4 * h * h),
            ("dB", db.as_deref().map(<[f32]>::len), d_n * 8 * h),
            ("d_initial_h", d_initial_h.as_deref().map(<[f32]>::len), state_len),
            ("d_initial_c", d_initial_c.as_deref().map(<[f32]>::len), state_len),
            ("dP", dp.as_deref().map(<[f32]>::len), d_n * 3 * h),
        ] {
            if let Some(len) = v {
                check_len(name, len, n)?;
            }
        }
        let (xs, ys, ss) = self.operator().strides(t, b);
        // Per direction: [B][H] copies of the state tensors (layout 1 interleaves the directions).
        let per_dir = |v: Option<&[f32]>, d: usize| -> Option<Vec<f32>> {
            v.map(|v| (0..b).flat_map(|s| v[d * ss.dir + s * ss.batch..][..h].iter().copied()).collect())
        };
        let want_params = dw.is_some() || dr.is_some() || db.is_some() || dp.is_some();
        let mut params = Vec::with_capacity(d_n);
        let mut dx = dx;
        if let Some(dx) = dx.as_deref_mut() {
            dx.fill(0.0);
        }
        let (mut dh0, mut dc0) = (vec![0.0f32; b * h], vec![0.0f32; b * h]);
        let mut stats = ForwardStats::default();
        for d in 0..d_n {
            let dir = &self.dirs[d];
            let dtape = &tape.dirs[d];
            let hp = dir.packed.gates.hidden_padded();
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
            let mut g = want_params.then(|| LstmGrads::zeros(i, h, peepholes));
            let job = LstmBackward {
                backend: self.backend,
                weights: &dir.weights,
                packed: &dir.packed,
                spec: &dir.cell,
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
            let out = LstmBackwardOut {
                dx: dx.as_deref_mut().map(|dx| (dx, xs.batch, xs.time, d > 0)),
                params: g.as_mut(),
                d_h0: Some(&mut dh0),
                d_c0: Some(&mut dc0),
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
            params.extend(g);
        }
        if want_params {
            let onnx = LstmGrads::to_onnx_dirs(&params);
            for (dst, src) in [(dw, Some(&onnx.w)), (dr, Some(&onnx.r)), (db, Some(&onnx.b)), (dp, onnx.p.as_ref())] {
                if let (Some(dst), Some(src)) = (dst, src) {
                    dst.copy_from_slice(src);
                }
            }
        }
        Ok(stats)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        x: &[f32],
        seq_length: usize,
        batch: usize,
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        initial_c: Option<&[f32]>,
        out: OnnxOutputs<'_>,
        tape: Option<&mut OnnxTape>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        let call = Call { x, seq_length, batch, sequence_lens, initial_h, initial_c, out, threads };
        let shape = (seq_length, batch, self.input_size, self.attrs.hidden_size, self.dirs.len());
        let cell = |d: usize| LstmKernel { packed: &self.dirs[d].packed, spec: &self.dirs[d].cell };
        self.operator().run(call, ws, cell, |view| {
            Ok(match tape {
                Some(tape) => {
                    tape.shape = shape;
                    let hp = self.dirs[0].packed.gates.hidden_padded();
                    for dir in &mut tape.dirs[..shape.4] {
                        dir.prepare(view, TAPE_RECORD, hp)?;
                    }
                    let [t0, t1] = &mut tape.dirs;
                    [Some(TapeOut::new(t0)), (shape.4 > 1).then(|| TapeOut::new(t1))]
                }
                None => [None, None],
            })
        })
    }

    /// Runs the operator and returns all outputs as owned vectors.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_all(
        &self,
        x: &[f32],
        seq_length: usize,
        batch: usize,
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        initial_c: Option<&[f32]>,
        threads: usize,
    ) -> Result<(OnnxResult, ForwardStats)> {
        let (h, d_n) = (self.attrs.hidden_size, self.dirs.len());
        let mut r = OnnxResult {
            y: vec![0.0; checked_product(&[seq_length, d_n, batch, h], "Y")?],
            y_h: vec![0.0; checked_product(&[d_n, batch, h], "Y_h")?],
            y_c: vec![0.0; d_n * batch * h],
        };
        let out = OnnxOutputs { y: Some(&mut r.y), y_h: Some(&mut r.y_h), y_c: Some(&mut r.y_c) };
        let stats = self.forward(x, seq_length, batch, sequence_lens, initial_h, initial_c, out, threads)?;
        Ok((r, stats))
    }

    /// The operator computed by the plain [reference](crate::reference::onnx_lstm), in this node's layout.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_reference(
        &self,
        x: &[f32],
        seq_length: usize,
        batch: usize,
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        initial_c: Option<&[f32]>,
    ) -> Result<OnnxResult> {
        let (b, h, d_n) = (batch, self.attrs.hidden_size, self.dirs.len());
        let rounding = reference::Rounding::of(self.backend);
        let op = self.operator();
        op.reference((x, seq_length, b), sequence_lens, initial_h, initial_c, |x0, lengths, h0, c0| {
            let zeros = vec![0.0; d_n * b * h];
            let init = match (h0, c0) {
                (None, None) => None,
                _ => Some((h0.unwrap_or(&zeros), c0.unwrap_or(&zeros))),
            };
            let dirs: Vec<(&LstmWeights, &CellSpec, bool)> =
                self.dirs.iter().enumerate().map(|(d, dw)| (&dw.weights, &dw.cell, op.reverse(d))).collect();
            let (y, y_h, y_c) = reference::onnx_lstm(&dirs, x0, seq_length, b, lengths, init, rounding)?;
            Ok(OnnxResult { y, y_h, y_c })
        })
    }
}
