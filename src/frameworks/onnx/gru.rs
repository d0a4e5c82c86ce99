//! The ONNX `GRU` and `RNN` operators: cells whose only state is `h`, sharing one node type.

use std::sync::OnceLock;

use super::swap_axes;
use super::{
    check_clip, check_param_grads, direction_activations, BackCall, Call, Direction, Layout, OnnxGrads,
    OnnxGradsResult, OnnxOutputs, OnnxResult, OnnxTape, OnnxUpstream, Operator,
};
use crate::cells::activation::Activation;
use crate::cells::gru::GruSpec;
use crate::cells::rnn::RnnSpec;
use crate::engine::{ForwardStats, Schedule, Workspace};
use crate::error::{check_len, checked_product, Error, Result};
use crate::frameworks::family::{Family, Gru, Rnn};
use crate::kernel::{self, Backend};
use crate::reference::backward::onnx_h_backward;
use crate::reference::{self, HStep, Rounding};
use crate::view::{Padding, SeqView};

/// One direction's packed weights and cell. The canonical weights (for the backward, the reference and
/// the gradients' shapes) are unpacked from the packed ones on first use, so a forward-only node (every
/// one-shot C call) converts its weights once, straight into the panels.
#[derive(Clone, Debug)]
struct Dir<F: Family> {
    canonical: OnceLock<F::Weights>,
    packed: F::Packed,
    spec: F::Spec,
}

impl<F: Family> Dir<F> {
    /// The canonical weights, unpacked on the first call.
    fn weights(&self) -> &F::Weights {
        self.canonical.get_or_init(|| F::canonical(&self.packed))
    }
}

/// An operator of family `F`: weights packed once per direction.
#[derive(Clone, Debug)]
struct Node<F: Family> {
    op: Operator,
    dirs: Vec<Dir<F>>,
}

impl<F: Family> Node<F> {
    /// Packs `W [D, G H, I]`, `R [D, G H, H]` and `B [D, 2 G H]` for the cells `specs` (one per direction).
    fn new(op: Operator, specs: Vec<F::Spec>, w: &[f32], r: &[f32], b: Option<&[f32]>) -> Result<Self> {
        let (h, i, d_n) = (op.hidden, op.input, specs.len());
        if h == 0 {
            return Err(Error::argument("hidden_size must be at least 1"));
        }
        let wl = checked_product(&[F::GATES, h, i], "W")?;
        let rl = checked_product(&[F::GATES, h, h], "R")?;
        let bl = checked_product(&[2 * F::GATES, h], "B")?;
        check_len("W", w.len(), checked_product(&[d_n, wl], "W")?)?;
        check_len("R", r.len(), checked_product(&[d_n, rl], "R")?)?;
        if let Some(b) = b {
            check_len("B", b.len(), checked_product(&[d_n, bl], "B")?)?;
        }
        let dirs = specs
            .into_iter()
            .enumerate()
            .map(|(d, spec)| {
                let (wd, rd) = (&w[d * wl..(d + 1) * wl], &r[d * rl..(d + 1) * rl]);
                let packed = F::pack_onnx(i, h, wd, rd, b.map(|b| &b[d * bl..(d + 1) * bl]), &spec, op.backend.nb)?;
                Ok(Dir { canonical: OnceLock::new(), packed, spec })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Node { op, dirs })
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_in(
        &self,
        x: &[f32],
        seq_length: usize,
        batch: usize,
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        out: OnnxOutputs<'_>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        self.run(x, (seq_length, batch), sequence_lens, initial_h, out, None, threads, ws)
    }

    /// A forward, filling `tape` when given.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        x: &[f32],
        (seq_length, batch): (usize, usize),
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        out: OnnxOutputs<'_>,
        tape: Option<&mut OnnxTape>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        let call = Call { x, seq_length, batch, sequence_lens, initial_h, initial_c: None, out, threads };
        let cell = |d: usize| F::kernel(&self.dirs[d].packed, &self.dirs[d].spec);
        let shape = (seq_length, batch, self.op.input, self.op.hidden, self.dirs.len());
        let hp = F::hidden_padded(&self.dirs[0].packed);
        self.op.run(call, ws, cell, |view| match tape {
            Some(tape) => tape.prepare(view, shape, F::RECORD, hp),
            None => Ok([None, None]),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        x: &[f32],
        (seq_length, batch): (usize, usize),
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        tape: &OnnxTape,
        up: OnnxUpstream<'_>,
        grads: OnnxGrads<'_>,
        threads: usize,
    ) -> Result<ForwardStats> {
        let (h, d_n, i) = (self.op.hidden, self.dirs.len(), self.op.input);
        let OnnxGrads { dx, dw, dr, db, d_initial_h, d_initial_c, dp } = grads;
        if dp.is_some() {
            return Err(Error::argument("dP: this operator has no peepholes"));
        }
        let g = F::GATES;
        let want = [("dW", &dw, g * h * i), ("dR", &dr, g * h * h), ("dB", &db, 2 * g * h)];
        let want_params = check_param_grads(&want, d_n)?;
        let mut params: Option<Vec<F::Grads>> =
            want_params.then(|| self.dirs.iter().map(|d| F::zero_grads(d.weights())).collect());
        let call = BackCall {
            x,
            seq_length,
            batch,
            sequence_lens,
            initial_h,
            initial_c: None,
            tape,
            up,
            dx,
            d_initial_h,
            d_initial_c,
            threads,
        };
        let cell = |d: usize| F::backward_cell(self.dirs[d].weights(), &self.dirs[d].packed, &self.dirs[d].spec);
        let stats = self.op.backward(call, cell, params.as_deref_mut())?;
        if let Some(params) = params {
            let (w, r, b) = F::grads_to_onnx(&params);
            for (dst, src) in [(dw, w), (dr, r), (db, b)] {
                if let Some(dst) = dst {
                    dst.copy_from_slice(&src);
                }
            }
        }
        Ok(stats)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_all(
        &self,
        x: &[f32],
        seq_length: usize,
        batch: usize,
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        threads: usize,
    ) -> Result<(OnnxResult, ForwardStats)> {
        let (h, d_n) = (self.op.hidden, self.dirs.len());
        let mut r = OnnxResult {
            y: vec![0.0; checked_product(&[seq_length, d_n, batch, h], "Y")?],
            y_h: vec![0.0; checked_product(&[d_n, batch, h], "Y_h")?],
            y_c: Vec::new(),
        };
        let out = OnnxOutputs { y: Some(&mut r.y), y_h: Some(&mut r.y_h), y_c: None };
        let ws = &mut Workspace::new();
        let stats = self.forward_in(x, seq_length, batch, sequence_lens, initial_h, out, threads, ws)?;
        Ok((r, stats))
    }

    /// The float64 reference backward (every valid step differentiated in scalar arithmetic) in this
    /// node's layout.
    #[allow(clippy::too_many_arguments)]
    fn backward_reference(
        &self,
        x: &[f32],
        (t, b): (usize, usize),
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        up: OnnxUpstream<'_>,
    ) -> Result<OnnxGradsResult> {
        let (i, h, d_n) = (self.op.input, self.op.hidden, self.dirs.len());
        check_len("X", x.len(), checked_product(&[t, b, i], "X")?)?;
        let state_len = checked_product(&[d_n, b, h], "Y_h")?;
        for (name, v, n) in [
            ("initial_h", initial_h, state_len),
            ("dY", up.dy, checked_product(&[t, d_n, b, h], "Y")?),
            ("dY_h", up.dy_h, state_len),
        ] {
            if let Some(v) = v {
                check_len(name, v.len(), n)?;
            }
        }
        if up.dy_c.is_some() {
            return Err(Error::argument("dY_c: this operator has no cell state"));
        }
        let lengths = match sequence_lens {
            Some(l) => SeqView::from_i32_lengths(l, t, Padding::Post)?.valid_lens(),
            None => vec![t; b],
        };
        let bm = self.op.layout == Layout::BatchMajor;
        // To layout 0 in f64: X [T, B, I], states [D, B, H], dY [T, D, B, H].
        let f64s = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<f64>>();
        let x0 = f64s(&if bm { swap_axes(x, b, t, i) } else { x.to_vec() });
        let state = |v: &[f32]| f64s(&if bm { swap_axes(v, b, d_n, h) } else { v.to_vec() });
        // dY [B, T, D, H] -> [T, B, D, H] -> [T, D, B, H].
        let dy0 = up.dy.map(|dy| {
            if !bm {
                return f64s(dy);
            }
            let tb = swap_axes(dy, b, t, d_n * h);
            f64s(&tb.chunks((b * d_n * h).max(1)).flat_map(|step| swap_axes(step, b, d_n, h)).collect::<Vec<f32>>())
        });
        let (h0, dyh) = (initial_h.map(state), up.dy_h.map(state));
        let cells: Vec<F::Ref> = self.dirs.iter().map(|d| F::reference_cell(d.weights(), &d.spec)).collect();
        let dirs: Vec<(&F::Ref, bool)> = cells.iter().enumerate().map(|(d, c)| (c, self.op.reverse(d))).collect();
        let g = onnx_h_backward(&dirs, &x0, (t, b), &lengths, h0.as_deref(), dy0.as_deref(), dyh.as_deref());
        let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let mut out = OnnxGradsResult { dx: f32s(&g.dx), d_initial_h: f32s(&g.d_initial_h), ..Default::default() };
        for p in &g.params {
            let [w, r, bb] = F::reference_grads_to_onnx(p, i, h);
            out.dw.extend(f32s(&w));
            out.dr.extend(f32s(&r));
            out.db.extend(f32s(&bb));
        }
        if bm {
            out.dx = swap_axes(&out.dx, t, b, i);
            out.d_initial_h = swap_axes(&out.d_initial_h, d_n, b, h);
        }
        Ok(out)
    }

    fn forward_reference(
        &self,
        x: &[f32],
        seq_length: usize,
        batch: usize,
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
    ) -> Result<OnnxResult> {
        let rounding = Rounding::of(self.op.backend);
        let steps: Vec<_> = self
            .dirs
            .iter()
            .map(|d| move |x: &[f32], h: &[f32]| F::step(&d.spec, d.weights(), x, h, rounding))
            .collect();
        let dirs: Vec<(HStep<'_>, bool)> =
            steps.iter().enumerate().map(|(d, s)| (s as HStep<'_>, self.op.reverse(d))).collect();
        let shape = (self.op.input, self.op.hidden);
        self.op.reference((x, seq_length, batch), sequence_lens, initial_h, None, |x0, lengths, h0, _| {
            let (y, y_h) = reference::onnx_h_only(&dirs, shape, x0, seq_length, batch, lengths, h0)?;
            Ok(OnnxResult { y, y_h, y_c: Vec::new() })
        })
    }
}

/// Attributes of the ONNX GRU operator.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OnnxGruAttrs {
    /// `direction`.
    pub direction: Direction,
    /// `layout`.
    pub layout: Layout,
    /// `hidden_size` (at least 1).
    pub hidden_size: usize,
    /// `clip`: every activation's argument is clamped to `[-clip, clip]`. Must be > 0.
    pub clip: Option<f32>,
    /// `linear_before_reset`: the reset gate multiplies `H·R_hᵀ + Rb_h` (`true`, PyTorch's and Keras'
    /// default placement) instead of `H` before the matmul (`false`, ONNX's default).
    pub linear_before_reset: bool,
    /// `activations`, `(f, g)` per direction: empty for the defaults (Sigmoid, Tanh), else 2 per direction
    /// (4 for bidirectional, forward first).
    pub activations: Vec<Activation>,
}

impl OnnxGruAttrs {
    /// Default attributes with the given hidden size and direction (`linear_before_reset = 0`).
    pub fn new(hidden_size: usize, direction: Direction) -> Self {
        OnnxGruAttrs {
            direction,
            layout: Layout::SeqMajor,
            hidden_size,
            clip: None,
            linear_before_reset: false,
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
    /// Sets `linear_before_reset`.
    pub fn linear_before_reset(mut self, on: bool) -> Self {
        self.linear_before_reset = on;
        self
    }
    /// Sets `activations`.
    pub fn activations(mut self, acts: Vec<Activation>) -> Self {
        self.activations = acts;
        self
    }

    fn cells(&self) -> Result<Vec<GruSpec>> {
        check_clip(self.clip)?;
        let acts =
            direction_activations(&self.activations, &[Activation::Sigmoid, Activation::Tanh], self.direction.count())?;
        Ok(acts.iter().map(|a| GruSpec::onnx(a[0], a[1], self.clip, self.linear_before_reset)).collect())
    }
}

/// Attributes of the ONNX RNN operator.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OnnxRnnAttrs {
    /// `direction`.
    pub direction: Direction,
    /// `layout`.
    pub layout: Layout,
    /// `hidden_size` (at least 1).
    pub hidden_size: usize,
    /// `clip`: the activation's argument is clamped to `[-clip, clip]`. Must be > 0.
    pub clip: Option<f32>,
    /// `activations`, one per direction: empty for the default (Tanh), else 1 per direction (2 for
    /// bidirectional, forward first).
    pub activations: Vec<Activation>,
}

impl OnnxRnnAttrs {
    /// Default attributes with the given hidden size and direction.
    pub fn new(hidden_size: usize, direction: Direction) -> Self {
        OnnxRnnAttrs { direction, layout: Layout::SeqMajor, hidden_size, clip: None, activations: Vec::new() }
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
    /// Sets `activations`.
    pub fn activations(mut self, acts: Vec<Activation>) -> Self {
        self.activations = acts;
        self
    }

    fn cells(&self) -> Result<Vec<RnnSpec>> {
        check_clip(self.clip)?;
        let acts = direction_activations(&self.activations, &[Activation::Tanh], self.direction.count())?;
        Ok(acts.iter().map(|a| RnnSpec::new(a[0], self.clip)).collect())
    }
}

/// The methods both operators share (documented once here, on each operator through the macro).
macro_rules! operator_methods {
    ($attrs:ty) => {
        /// The attributes.
        pub fn attrs(&self) -> &$attrs {
            &self.attrs
        }
        /// Input size `I`.
        pub fn input_size(&self) -> usize {
            self.node.op.input
        }
        /// The backend the weights are packed for.
        pub fn backend(&self) -> &'static Backend {
            self.node.op.backend
        }

        /// Sets how a call spreads over threads (default [`Schedule::Auto`]); results are bitwise the same
        /// for every schedule.
        pub fn with_schedule(mut self, schedule: Schedule) -> Self {
            self.node.op.schedule = schedule;
            self
        }

        /// Runs the operator on `X` (`[T, B, I]` in layout 0, `[B, T, I]` in layout 1) of `seq_length`
        /// steps and `batch` sequences, with `initial_h` (`None`: zeros). `out.y_c` must be `None`.
        /// Padded steps are never computed; results are bitwise identical for every `threads` (0: all
        /// cores, 1: the calling thread).
        ///
        /// # Errors
        /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) when a buffer has the wrong length;
        /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for a length outside
        /// `0..=seq_length` or a `Y_c` buffer; [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) for
        /// sizes that overflow.
        #[allow(clippy::too_many_arguments)]
        pub fn forward(
            &self,
            x: &[f32],
            seq_length: usize,
            batch: usize,
            sequence_lens: Option<&[i32]>,
            initial_h: Option<&[f32]>,
            out: OnnxOutputs<'_>,
            threads: usize,
        ) -> Result<ForwardStats> {
            let ws = &mut Workspace::new();
            self.node.forward_in(x, seq_length, batch, sequence_lens, initial_h, out, threads, ws)
        }

        /// As [`forward`](Self::forward), with caller-owned scratch memory reused across calls (see
        /// [`Workspace`]).
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
            out: OnnxOutputs<'_>,
            threads: usize,
            ws: &mut Workspace,
        ) -> Result<ForwardStats> {
            self.node.forward_in(x, seq_length, batch, sequence_lens, initial_h, out, threads, ws)
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
            out: OnnxOutputs<'_>,
            tape: &mut OnnxTape,
            threads: usize,
            ws: &mut Workspace,
        ) -> Result<ForwardStats> {
            self.node.run(x, (seq_length, batch), sequence_lens, initial_h, out, Some(tape), threads, ws)
        }

        /// The gradients of a scalar loss through the operator, given the gradients `up` of its outputs
        /// (`dy_c` must be `None`): the vector-Jacobian product of [`forward`](Self::forward) at the inputs
        /// of the [`forward_train`](Self::forward_train) call that filled `tape` (pass the same inputs).
        /// Padded steps are never computed; results do not depend on `threads`. `grads.d_initial_c` and
        /// `grads.dp` must be `None`.
        ///
        /// # Errors
        /// As [`forward`](Self::forward); [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for a
        /// tape filled by a run of another shape, or a `dy_c`, `d_initial_c` or `dp` buffer.
        #[allow(clippy::too_many_arguments)]
        pub fn backward(
            &self,
            x: &[f32],
            seq_length: usize,
            batch: usize,
            sequence_lens: Option<&[i32]>,
            initial_h: Option<&[f32]>,
            tape: &OnnxTape,
            up: OnnxUpstream<'_>,
            grads: OnnxGrads<'_>,
            threads: usize,
        ) -> Result<ForwardStats> {
            self.node.backward(x, (seq_length, batch), sequence_lens, initial_h, tape, up, grads, threads)
        }

        /// The gradients [`backward`](Self::backward) computes, by the float64
        /// [reference backward](crate::reference::backward::onnx_h_backward) (every valid step
        /// differentiated in scalar arithmetic), rounded to f32, in this node's layout.
        ///
        /// # Errors
        /// As [`forward`](Self::forward); a `dy_c` buffer.
        pub fn backward_reference(
            &self,
            x: &[f32],
            seq_length: usize,
            batch: usize,
            sequence_lens: Option<&[i32]>,
            initial_h: Option<&[f32]>,
            up: OnnxUpstream<'_>,
        ) -> Result<OnnxGradsResult> {
            self.node.backward_reference(x, (seq_length, batch), sequence_lens, initial_h, up)
        }

        /// Runs the operator and returns `Y` and `Y_h` as owned vectors (`y_c` empty).
        ///
        /// # Errors
        /// As [`forward`](Self::forward).
        pub fn forward_all(
            &self,
            x: &[f32],
            seq_length: usize,
            batch: usize,
            sequence_lens: Option<&[i32]>,
            initial_h: Option<&[f32]>,
            threads: usize,
        ) -> Result<(OnnxResult, ForwardStats)> {
            self.node.forward_all(x, seq_length, batch, sequence_lens, initial_h, threads)
        }

        /// The operator computed by the plain [reference](crate::reference::onnx_h_only), every step of
        /// each sequence's valid part in scalar arithmetic, in this node's layout (`y_c` empty).
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
        ) -> Result<OnnxResult> {
            self.node.forward_reference(x, seq_length, batch, sequence_lens, initial_h)
        }
    };
}

/// An ONNX GRU node: attributes validated and weights packed once.
#[derive(Clone, Debug)]
pub struct OnnxGru {
    attrs: OnnxGruAttrs,
    node: Node<Gru>,
}

impl OnnxGru {
    /// Validates the attributes and packs `W [D, 3H, I]`, `R [D, 3H, H]` and `B [D, 6H]` (ONNX gate
    /// order z, r, h; `B` = `Wb` then `Rb`).
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for bad attributes (hidden size 0,
    /// activation count, non-positive clip); [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) for
    /// weight lengths; [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) for sizes that overflow.
    pub fn new(attrs: OnnxGruAttrs, input_size: usize, w: &[f32], r: &[f32], b: Option<&[f32]>) -> Result<Self> {
        Self::with_backend(attrs, input_size, w, r, b, kernel::selected())
    }

    /// As [`new`](Self::new), for a given backend.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_backend(
        attrs: OnnxGruAttrs,
        input_size: usize,
        w: &[f32],
        r: &[f32],
        b: Option<&[f32]>,
        backend: &'static Backend,
    ) -> Result<Self> {
        let op = operator(attrs.direction, attrs.layout, input_size, attrs.hidden_size, backend);
        let node = Node::new(op, attrs.cells()?, w, r, b)?;
        Ok(OnnxGru { attrs, node })
    }

    operator_methods!(OnnxGruAttrs);
}

/// An ONNX RNN node: attributes validated and weights packed once.
#[derive(Clone, Debug)]
pub struct OnnxRnn {
    attrs: OnnxRnnAttrs,
    node: Node<Rnn>,
}

impl OnnxRnn {
    /// Validates the attributes and packs `W [D, H, I]`, `R [D, H, H]` and `B [D, 2H]` (`Wb` then `Rb`).
    ///
    /// # Errors
    /// As [`OnnxGru::new`].
    pub fn new(attrs: OnnxRnnAttrs, input_size: usize, w: &[f32], r: &[f32], b: Option<&[f32]>) -> Result<Self> {
        Self::with_backend(attrs, input_size, w, r, b, kernel::selected())
    }

    /// As [`new`](Self::new), for a given backend.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_backend(
        attrs: OnnxRnnAttrs,
        input_size: usize,
        w: &[f32],
        r: &[f32],
        b: Option<&[f32]>,
        backend: &'static Backend,
    ) -> Result<Self> {
        let op = operator(attrs.direction, attrs.layout, input_size, attrs.hidden_size, backend);
        let node = Node::new(op, attrs.cells()?, w, r, b)?;
        Ok(OnnxRnn { attrs, node })
    }

    operator_methods!(OnnxRnnAttrs);
}

fn operator(direction: Direction, layout: Layout, input: usize, hidden: usize, backend: &'static Backend) -> Operator {
    Operator { direction, layout, input, hidden, backend, schedule: Schedule::Auto }
}
