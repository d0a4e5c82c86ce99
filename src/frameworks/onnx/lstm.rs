//! The ONNX `LSTM` operator, forward and backward.

use std::sync::OnceLock;

use super::{
    check_clip, check_param_grads, direction_activations, BackCall, Call, Direction, Layout, OnnxGrads, OnnxOutputs,
    OnnxResult, OnnxTape, OnnxUpstream, Operator,
};
use crate::cells::activation::Activation;
use crate::cells::grads::LstmGrads;
use crate::cells::lstm::{CellSpec, LstmKernel, TAPE_RECORD};
use crate::cells::weights::{LstmWeights, PackedLstm};
use crate::engine::{ForwardStats, Schedule, Workspace};
use crate::error::{check_len, checked_product, Error, Result};
use crate::kernel::{self, Backend};
use crate::reference;

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

/// One direction: its packed weights and cell. The canonical weights (for the backward, the reference
/// and the gradients' shapes) are unpacked from the packed ones on first use, so a forward-only node
/// (every one-shot C call) converts its weights once, straight into the panels.
#[derive(Clone, Debug)]
struct DirectionWeights {
    canonical: OnceLock<LstmWeights>,
    packed: PackedLstm,
    cell: CellSpec,
}

impl DirectionWeights {
    /// The canonical weights, unpacked on the first call.
    fn weights(&self) -> &LstmWeights {
        self.canonical.get_or_init(|| self.packed.canonical())
    }
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
                let packed = PackedLstm::from_onnx(
                    input_size,
                    h,
                    &w[d * wl..(d + 1) * wl],
                    &r[d * rl..(d + 1) * rl],
                    b.map(|b| &b[d * 8 * h..(d + 1) * 8 * h]),
                    p.map(|p| &p[d * 3 * h..(d + 1) * 3 * h]),
                    backend.nb,
                )?;
                Ok(DirectionWeights { canonical: OnceLock::new(), packed, cell })
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
        let (h, d_n, i) = (self.attrs.hidden_size, self.dirs.len(), self.input_size);
        let peepholes = self.dirs[0].packed.peephole.is_some();
        let OnnxGrads { dx, dw, dr, db, d_initial_h, d_initial_c, dp } = grads;
        if dp.is_some() && !peepholes {
            return Err(Error::argument("dP requested for an operator without peepholes"));
        }
        let want = [("dW", &dw, 4 * h * i), ("dR", &dr, 4 * h * h), ("dB", &db, 8 * h), ("dP", &dp, 3 * h)];
        let want_params = check_param_grads(&want, d_n)?;
        let mut params = want_params.then(|| vec![LstmGrads::zeros(i, h, peepholes); d_n]);
        let call = BackCall {
            x,
            seq_length,
            batch,
            sequence_lens,
            initial_h,
            initial_c,
            tape,
            up,
            dx,
            d_initial_h,
            d_initial_c,
            threads,
        };
        let cell = |d: usize| self.dirs[d].packed.backward_cell(self.dirs[d].weights(), &self.dirs[d].cell);
        let stats = self.operator().backward(call, cell, params.as_deref_mut())?;
        if let Some(params) = params {
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
                Some(tape) => tape.prepare(view, shape, TAPE_RECORD, self.dirs[0].packed.gates.hidden_padded())?,
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
                self.dirs.iter().enumerate().map(|(d, dw)| (dw.weights(), &dw.cell, op.reverse(d))).collect();
            let (y, y_h, y_c) = reference::onnx_lstm(&dirs, x0, seq_length, b, lengths, init, rounding)?;
            Ok(OnnxResult { y, y_h, y_c })
        })
    }
}
