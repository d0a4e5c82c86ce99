//! PyTorch `nn.LSTM`, `nn.GRU` and `nn.RNN` on packed sequences (`pack_padded_sequence(...,
//! enforce_sorted=False)` then `pad_packed_sequence`), stacked and bidirectional, on the mask-aware engine.
//!
//! Lengths come in any order and `h_n` (and the LSTM's `c_n`) are returned in the original batch order, as
//! PyTorch does; the engine sorts internally and never computes a padded step. Padded outputs are `0.0`.
//! The reverse direction runs each sequence's valid part from its own last step, exactly like ONNX
//! `reverse`. The three modules share one stack (layers, directions, lengths, outputs and the reference);
//! the cell is the only difference.

mod gru;

pub use crate::cells::grads::PytorchLayout;
pub use gru::{Nonlinearity, TorchGru, TorchRnn};

use std::fmt::Debug;
use std::sync::OnceLock;

use crate::cells::grads::LstmGrads;
use crate::cells::lstm::{CellSpec, LstmBackCell, LstmKernel, TAPE_RECORD};
use crate::cells::weights::{LstmWeights, PackedLstm};
use crate::engine::{
    directions, initial_pair, par_join, Backward, BackwardOut, DirTape, EmptyState, Fill, ForwardStats, Job, OutRegion,
    Region, Schedule, SeqIn, SeqOut, StateIn, TapeOut, Workspace,
};
use crate::error::{check_len, checked_product, Error, Result};
use crate::frameworks::onnx::swap_axes;
use crate::kernel::{self, Backend, CellBackward, CellKernel};
use crate::reference::{self, Rounding};
use crate::view::{Padding, SeqView};

/// The parameters of one layer and direction, as PyTorch names them (`weight_ih_l{k}[_reverse]`, ...),
/// for `G` gates per hidden unit: the LSTM's 4 (i, f, g, o), the GRU's 3 (r, z, n), the RNN's 1.
#[derive(Clone, Copy, Debug)]
pub struct TorchParams<'a> {
    /// `weight_ih [G*H, in]`: `in` is the input size in layer 0, `D*H` above it.
    pub weight_ih: &'a [f32],
    /// `weight_hh [G*H, H]`.
    pub weight_hh: &'a [f32],
    /// `bias_ih [G*H]` (None with `bias=False`).
    pub bias_ih: Option<&'a [f32]>,
    /// `bias_hh [G*H]`.
    pub bias_hh: Option<&'a [f32]>,
}

/// The parameters of one `nn.LSTM` layer and direction (gates i, f, g, o): [`TorchParams`].
pub type TorchLstmParams<'a> = TorchParams<'a>;

/// Caller buffers for the `forward_packed_in` methods ([`TorchLstm::forward_packed_in`],
/// [`TorchGru::forward_packed_in`], [`TorchRnn::forward_packed_in`]); `None` skips an output.
#[derive(Debug, Default)]
pub struct TorchOutputs<'a> {
    /// `[T, B, D*H]` (`[B, T, D*H]` with `batch_first`).
    pub y: Option<&'a mut [f32]>,
    /// `h_n [L*D, B, H]`.
    pub h_n: Option<&'a mut [f32]>,
    /// `c_n [L*D, B, H]` (the LSTM only; the GRU and the RNN have no cell state and refuse it).
    pub c_n: Option<&'a mut [f32]>,
}

/// Outputs of the `forward_packed` methods ([`TorchLstm::forward_packed`], [`TorchGru::forward_packed`],
/// [`TorchRnn::forward_packed`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TorchResult {
    /// The padded output `[T, B, D*H]` (or `[B, T, D*H]` with `batch_first`), zeros past each length.
    pub y: Vec<f32>,
    /// `h_n [L*D, B, H]`, original batch order.
    pub h_n: Vec<f32>,
    /// `c_n [L*D, B, H]` (empty for the GRU and the RNN).
    pub c_n: Vec<f32>,
}

/// What [`TorchLstm::forward_packed_train`] keeps for [`TorchLstm::backward_packed`].
#[derive(Clone, Debug, Default)]
pub struct TorchTape {
    /// Per layer and direction, PyTorch's order.
    dirs: Vec<DirTape>,
    /// The outputs of the layers below the last (the inputs of the layers above them).
    inputs: Vec<Vec<f32>>,
    /// `(T, B, input, hidden, layers x directions, batch_first)` of the run that filled it.
    shape: (usize, usize, usize, usize, usize, bool),
}

impl TorchTape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Gradients of a scalar loss with respect to the stack's outputs, shaped as [`TorchOutputs`]; `None` =
/// zeros.
#[derive(Clone, Copy, Debug, Default)]
pub struct TorchUpstream<'a> {
    /// Of `y` (padded positions are ignored).
    pub dy: Option<&'a [f32]>,
    /// Of `h_n`.
    pub dh_n: Option<&'a [f32]>,
    /// Of `c_n`.
    pub dc_n: Option<&'a [f32]>,
}

/// Where [`TorchLstm::backward_packed`] writes; `None` = not computed; everything is overwritten.
#[derive(Debug, Default)]
pub struct TorchGrads<'a> {
    /// Of `x` (zeros at padded positions).
    pub dx: Option<&'a mut [f32]>,
    /// One entry per layer and direction (PyTorch's order), in PyTorch's layout.
    pub params: Option<&'a mut Vec<PytorchLayout<f32>>>,
    /// Of `h0 [L*D, B, H]`.
    pub dh0: Option<&'a mut [f32]>,
    /// Of `c0`.
    pub dc0: Option<&'a mut [f32]>,
}

/// A (possibly stacked, possibly bidirectional) PyTorch LSTM.
#[derive(Clone, Debug)]
pub struct TorchLstm {
    stack: Stack<Lstm>,
}

impl TorchLstm {
    /// Imports `num_layers * D` parameter sets in PyTorch's order (layer 0 forward, layer 0 reverse, layer 1
    /// forward, ...). Layer 0 takes `input_size` features, later layers `D * hidden`.
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for zero layers or hidden size, or the
    /// wrong number of parameter sets; [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) for tensors of
    /// the wrong length.
    pub fn new(
        input_size: usize,
        hidden: usize,
        num_layers: usize,
        bidirectional: bool,
        params: &[TorchParams<'_>],
    ) -> Result<Self> {
        let shape = (input_size, hidden, num_layers, bidirectional);
        Ok(TorchLstm { stack: Stack::new(shape, params, CellSpec::default(), kernel::selected())? })
    }

    /// Runs the stack on `x [T, B, I]` (`[B, T, I]` with `batch_first`) with per-sequence `lengths` in any
    /// order, each in `1..=T`. `h0`, `c0`: `[L*D, B, H]`, zeros when absent.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) for tensors of the wrong length;
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for a length of 0 or past `T`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_packed(
        &self,
        x: &[f32],
        seq_len: usize,
        batch: usize,
        batch_first: bool,
        lengths: &[usize],
        h0: Option<&[f32]>,
        c0: Option<&[f32]>,
        threads: usize,
    ) -> Result<(TorchResult, ForwardStats)> {
        let call = Call { x, t: seq_len, b: batch, batch_first, lengths, h0, c0 };
        self.stack.forward_all(call, threads)
    }

    /// As [`forward_packed`](Self::forward_packed), into caller buffers (`y [T, B, D*H]` or `[B, T, D*H]`,
    /// `h_n`, `c_n [L*D, B, H]`; any of them may be omitted) with caller-owned scratch: the lengths' view
    /// and the outputs of the lower layers live in `ws`, so a warm call with the same lengths and thread
    /// count allocates nothing.
    ///
    /// # Errors
    /// As [`forward_packed`](Self::forward_packed), and [`ErrorKind::BadShape`](crate::ErrorKind::BadShape)
    /// for an output of the wrong length.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_packed_in(
        &self,
        x: &[f32],
        seq_len: usize,
        batch: usize,
        batch_first: bool,
        lengths: &[usize],
        h0: Option<&[f32]>,
        c0: Option<&[f32]>,
        out: TorchOutputs<'_>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        let call = Call { x, t: seq_len, b: batch, batch_first, lengths, h0, c0 };
        self.stack.run(call, out, None, threads, ws)
    }

    /// [`forward_packed_in`](Self::forward_packed_in) that also fills `tape` for
    /// [`backward_packed`](Self::backward_packed) (each layer direction's valid steps, and the outputs of
    /// the layers below the last, which are the inputs of the ones above). Outputs are bitwise those of
    /// `forward_packed_in`.
    ///
    /// # Errors
    /// As [`forward_packed_in`](Self::forward_packed_in).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_packed_train(
        &self,
        x: &[f32],
        seq_len: usize,
        batch: usize,
        batch_first: bool,
        lengths: &[usize],
        h0: Option<&[f32]>,
        c0: Option<&[f32]>,
        out: TorchOutputs<'_>,
        tape: &mut TorchTape,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        let call = Call { x, t: seq_len, b: batch, batch_first, lengths, h0, c0 };
        self.stack.run(call, out, Some(tape), threads, ws)
    }

    /// The gradients of a scalar loss through the stack, given the gradients `up` of its outputs: the
    /// vector-Jacobian product of [`forward_packed`](Self::forward_packed) at the inputs of the
    /// [`forward_packed_train`](Self::forward_packed_train) call that filled `tape` (pass the same
    /// inputs). Upstream at padded positions of `y` has no effect (those outputs are constant zeros).
    /// `params` receives one [`PytorchLayout`] per layer and direction in PyTorch's order.
    ///
    /// # Errors
    /// As [`forward_packed`](Self::forward_packed); [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument)
    /// for a tape filled by a run of another shape.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_packed(
        &self,
        x: &[f32],
        seq_len: usize,
        batch: usize,
        batch_first: bool,
        lengths: &[usize],
        h0: Option<&[f32]>,
        c0: Option<&[f32]>,
        tape: &TorchTape,
        up: TorchUpstream<'_>,
        grads: TorchGrads<'_>,
        threads: usize,
    ) -> Result<ForwardStats> {
        let call = Call { x, t: seq_len, b: batch, batch_first, lengths, h0, c0 };
        self.stack.backward_packed(call, tape, up, grads, threads)
    }

    /// The same computation on the plain [reference](crate::reference::onnx_lstm).
    ///
    /// # Errors
    /// As [`forward_packed`](Self::forward_packed).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_packed_reference(
        &self,
        x: &[f32],
        seq_len: usize,
        batch: usize,
        batch_first: bool,
        lengths: &[usize],
        h0: Option<&[f32]>,
        c0: Option<&[f32]>,
    ) -> Result<TorchResult> {
        self.stack.reference(Call { x, t: seq_len, b: batch, batch_first, lengths, h0, c0 })
    }
}

/// `(y [T, D, B, H], h_n [D, B, H], c_n [D, B, H] or empty)`: one layer's outputs on the reference.
type LayerOutputs = (Vec<f32>, Vec<f32>, Vec<f32>);

/// The inputs of one call (see [`TorchLstm::forward_packed`]): `x [T, B, I]` (`[B, T, I]` with
/// `batch_first`), the lengths, the initial states `[L*D, B, H]` (`c0`: the LSTM's).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call<'a> {
    pub x: &'a [f32],
    pub t: usize,
    pub b: usize,
    pub batch_first: bool,
    pub lengths: &'a [usize],
    pub h0: Option<&'a [f32]>,
    pub c0: Option<&'a [f32]>,
}

/// A cell PyTorch stacks in layers and directions (`nn.LSTM`, `nn.GRU`, `nn.RNN`): how one layer
/// direction's parameters are imported, packed and run, on the engine and on the reference.
pub(crate) trait TorchCell {
    type Weights: Clone + Debug + Send + Sync;
    type Packed: Clone + Debug + Sync;
    type Spec: Clone + Debug + Sync;
    type Kernel<'a>: CellKernel
    where
        Self: 'a;
    /// The canonical parameter gradients of one layer direction.
    type Grads: Clone + Debug;
    /// The cell's backward.
    type Back<'a>: CellBackward<Grads = Self::Grads>
    where
        Self: 'a;
    /// Floats of a training forward's tape record per padded hidden unit.
    const RECORD: usize;
    /// One layer direction's weights from PyTorch's parameters, `input` features in, packed straight from
    /// their layout for a backend of `nb` lanes and the cell `spec`.
    fn pack_pytorch(
        input: usize,
        hidden: usize,
        p: &TorchParams<'_>,
        spec: &Self::Spec,
        nb: usize,
    ) -> Result<Self::Packed>;
    /// The canonical weights packed weights were made from.
    fn canonical(packed: &Self::Packed) -> Self::Weights;
    /// The backward of the layer direction `w` was packed into (`packed`), for the cell `spec`.
    fn backward_cell<'a>(w: &Self::Weights, packed: &'a Self::Packed, spec: &'a Self::Spec) -> Result<Self::Back<'a>>;
    /// Zero gradients for the weights' sizes.
    fn zero_grads(w: &Self::Weights) -> Self::Grads;
    /// The gradients in PyTorch's layout and gate order.
    fn grads_to_pytorch(g: &Self::Grads) -> PytorchLayout<f32>;
    /// The cell as the kernels see it.
    fn kernel<'a>(packed: &'a Self::Packed, spec: &'a Self::Spec) -> Self::Kernel<'a>;
    /// One layer on the plain reference, each sequence's valid steps in scalar arithmetic: `x [T, B, in]`
    /// with `shape = (T, B)`, `dirs[d] = (weights, reverse)`, the layer's initial `h` and `c` `[D, B, H]`
    /// (`None`: zeros; a cell without `c` is never given one).
    fn reference_layer(
        spec: &Self::Spec,
        dirs: &[(&Self::Weights, bool)],
        x: &[f32],
        shape: (usize, usize),
        lengths: &[usize],
        init: (Option<&[f32]>, Option<&[f32]>),
        rounding: Rounding,
    ) -> Result<LayerOutputs>;
}

/// Recurrent states of a cell kernel: `h`, and `c` for the LSTM.
fn states<C: CellKernel>(_: &C) -> usize {
    1 + C::EXTRA_STATES
}

/// A PyTorch recurrent module of cell `F`: `num_layers` layers of one or two directions, each direction's
/// weights packed once.
#[derive(Clone, Debug)]
pub(crate) struct Stack<F: TorchCell> {
    input_size: usize,
    hidden: usize,
    num_layers: usize,
    bidirectional: bool,
    /// Layer-major, then direction: the packed weights, and the canonical ones (for the backward and the
    /// reference), unpacked from them on first use.
    weights: Vec<(OnceLock<F::Weights>, F::Packed)>,
    backend: &'static Backend,
    cell: F::Spec,
}

impl<F: TorchCell> Stack<F> {
    /// Imports `num_layers * D` parameter sets in PyTorch's order (layer 0 forward, layer 0 reverse, layer 1
    /// forward, ...) and packs them for `backend`. Layer 0 takes `input_size` features, later layers
    /// `D * hidden`.
    pub(crate) fn new(
        (input_size, hidden, num_layers, bidirectional): (usize, usize, usize, bool),
        params: &[TorchParams<'_>],
        cell: F::Spec,
        backend: &'static Backend,
    ) -> Result<Self> {
        let d_n = if bidirectional { 2 } else { 1 };
        if num_layers == 0 {
            return Err(Error::argument("num_layers must be at least 1"));
        }
        if params.len() != checked_product(&[num_layers, d_n], "layers")? {
            return Err(Error::argument(format!(
                "{} parameter sets given, expected {}",
                params.len(),
                num_layers * d_n
            )));
        }
        let weights = params
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let inp = if k < d_n { input_size } else { checked_product(&[d_n, hidden], "layer input")? };
                Ok((OnceLock::new(), F::pack_pytorch(inp, hidden, p, &cell, backend.nb)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Stack { input_size, hidden, num_layers, bidirectional, weights, backend, cell })
    }

    /// The canonical weights of layer direction `k` (PyTorch's order), unpacked on the first call.
    fn canonical(&self, k: usize) -> &F::Weights {
        let (canonical, packed) = &self.weights[k];
        canonical.get_or_init(|| F::canonical(packed))
    }

    fn dirs(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// The cell of layer direction `k` (PyTorch's order) as the kernels see it.
    fn kernel(&self, k: usize) -> F::Kernel<'_> {
        F::kernel(&self.weights[k].1, &self.cell)
    }

    /// Checks the inputs; returns the length of `h_n` (`L*D*B*H`).
    fn check(&self, call: &Call<'_>) -> Result<usize> {
        let Call { x, t, b, lengths, h0, c0, .. } = *call;
        check_len("x", x.len(), checked_product(&[t, b, self.input_size], "x")?)?;
        check_len("lengths", lengths.len(), b)?;
        if let Some((s, &l)) = lengths.iter().enumerate().find(|(_, &l)| l == 0 || l > t) {
            return Err(Error::argument(format!("length {l} of sequence {s} is outside 1..={t} (PyTorch packing)")));
        }
        let state_len = checked_product(&[self.num_layers, self.dirs(), b, self.hidden], "h0")?;
        for (name, s) in [("h0", h0), ("c0", c0)] {
            if let Some(s) = s {
                check_len(name, s.len(), state_len)?;
            }
        }
        Ok(state_len)
    }

    /// The stack's outputs as owned vectors (`c_n` empty for a cell without `c`).
    fn forward_all(&self, call: Call<'_>, threads: usize) -> Result<(TorchResult, ForwardStats)> {
        let state_len = self.check(&call)?;
        let c_len = if states(&self.kernel(0)) > 1 { state_len } else { 0 };
        let mut r = TorchResult {
            y: vec![0.0; checked_product(&[call.t, call.b, self.dirs(), self.hidden], "y")?],
            h_n: vec![0.0; state_len],
            c_n: vec![0.0; c_len],
        };
        let c_n = (c_len > 0).then_some(&mut r.c_n[..]);
        let out = TorchOutputs { y: Some(&mut r.y), h_n: Some(&mut r.h_n), c_n };
        let ws = &mut Workspace::new();
        let stats = self.run(call, out, None, threads, ws)?;
        Ok((r, stats))
    }

    /// Runs the stack: per layer, one engine job per direction (both concurrently), the outputs of the
    /// layers below the last in `ws`. A training forward passes its `tape`.
    fn run(
        &self,
        call: Call<'_>,
        out: TorchOutputs<'_>,
        mut tape: Option<&mut TorchTape>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        let state_len = self.check(&call)?;
        let Call { x, t, b, batch_first, lengths, h0, c0 } = call;
        let (h, d_n) = (self.hidden, self.dirs());
        let width = d_n * h;
        let y_len = checked_product(&[t, b, width], "y")?;
        let TorchOutputs { y: mut y_out, h_n, c_n } = out;
        if c_n.is_some() && states(&self.kernel(0)) == 1 {
            return Err(Error::argument("c_n: this cell has no cell state"));
        }
        if let Some(y) = &y_out {
            check_len("y", y.len(), y_len)?;
        }
        for (name, s) in [("h_n", &h_n), ("c_n", &c_n)] {
            if let Some(s) = s {
                check_len(name, s.len(), state_len)?;
            }
        }
        let Workspace { jobs, state: zeros, view, layers } = ws;
        view.assign_lengths(lengths, t, Padding::Post)?;
        let view: &SeqView = view;
        let init = initial_pair(h0, c0, zeros, state_len);
        let (mut h_n, mut c_n) = (h_n, c_n);
        let mut stats = ForwardStats::default();
        let [below, above] = layers;
        let (mut prev, mut next) = (below, above);
        if let Some(tape) = tape.as_mut() {
            tape.shape = (t, b, self.input_size, h, d_n * self.num_layers, batch_first);
            tape.dirs.resize_with(d_n * self.num_layers, DirTape::default);
            tape.inputs.resize_with(self.num_layers - 1, Vec::new);
            let hp = self.kernel(0).packed().hidden_padded();
            for dir in &mut tape.dirs {
                dir.prepare(view, F::RECORD, hp)?;
            }
        }
        for l in 0..self.num_layers {
            let last = l + 1 == self.num_layers;
            if !last {
                next.clear();
                next.resize(y_len, 0.0);
            }
            let (input, inp): (&[f32], usize) = if l == 0 { (x, self.input_size) } else { (prev, width) };
            let (xsb, xst, ysb, yst) =
                if batch_first { (t * inp, inp, t * width, width) } else { (inp, b * inp, width, b * width) };
            // Directions write disjoint halves of y and disjoint blocks of h_n, c_n (checked by `split`).
            let y_regions = [Region::seq(0, b, ysb, t, yst, h), Region::seq(h, b, ysb, t, yst, h)];
            let ys = if last { y_out.as_deref_mut() } else { Some(&mut next[..]) };
            let ys = OutRegion::split_opt("y", ys, directions(y_regions, d_n))?;
            let s_regions = [Region::state(0, b, h, h), Region::state(b * h, b, h, h)];
            let layer = l * d_n * b * h..(l + 1) * d_n * b * h;
            let hs = OutRegion::split_opt(
                "h_n",
                h_n.as_deref_mut().map(|v| &mut v[layer.clone()]),
                directions(s_regions, d_n),
            )?;
            let cs =
                OutRegion::split_opt("c_n", c_n.as_deref_mut().map(|v| &mut v[layer]), directions(s_regions, d_n))?;
            let tapes: [Option<TapeOut>; 2] = match tape.as_mut() {
                Some(tape) => {
                    let (t0, t1) = tape.dirs[l * d_n..(l + 1) * d_n].split_at_mut(1);
                    [Some(TapeOut::new(&mut t0[0])), t1.first_mut().map(TapeOut::new)]
                }
                None => [None, None],
            };
            let job = |d: usize| Job {
                backend: self.backend,
                cell: self.kernel(l * d_n + d),
                view,
                x: SeqIn { data: input, off: 0, sb: xsb, st: xst },
                reverse: d == 1,
                init: init.map(|(hh, cc)| StateIn { h: hh, c: cc, off: (l * d_n + d) * b * h, sb: h }),
                empty_state: EmptyState::Zero,
                y: ys[d].map(|out| SeqOut { out, mirror: false, fill: Fill::Zero }),
                h_n: hs[d],
                c_n: cs[d],
                tape: tapes[d],
                threads,
                schedule: Schedule::Auto,
            };
            let [w0, w1] = &mut *jobs;
            stats = stats.merge(if d_n == 1 {
                job(0).run(w0)?
            } else {
                let (f, r) = par_join(threads, || job(0).run(w0), || job(1).run(w1))?;
                f?.merge(r?)
            });
            if let (Some(tape), false) = (tape.as_mut(), last) {
                // The next layer's input, kept for the backward.
                tape.inputs[l].clear();
                tape.inputs[l].extend_from_slice(next);
            }
            std::mem::swap(&mut prev, &mut next);
        }
        Ok(stats)
    }

    /// The same computation on the plain reference, layer by layer ([`TorchCell::reference_layer`]).
    fn reference(&self, call: Call<'_>) -> Result<TorchResult> {
        self.check(&call)?;
        let Call { x, t, b, batch_first, lengths, h0, c0 } = call;
        let (h, d_n) = (self.hidden, self.dirs());
        let block = d_n * b * h;
        let rounding = Rounding::of(self.backend);
        let mut cur = if batch_first { swap_axes(x, b, t, self.input_size) } else { x.to_vec() };
        let (mut h_n, mut c_n) = (Vec::new(), Vec::new());
        for l in 0..self.num_layers {
            let dirs: Vec<(&F::Weights, bool)> = (0..d_n).map(|d| (self.canonical(l * d_n + d), d == 1)).collect();
            let range = l * block..(l + 1) * block;
            let init = (h0.map(|s| &s[range.clone()]), c0.map(|s| &s[range.clone()]));
            let (y, yh, yc) = F::reference_layer(&self.cell, &dirs, &cur, (t, b), lengths, init, rounding)?;
            // [T, D, B, H] -> [T, B, D*H].
            cur = vec![0.0; y.len()];
            for tt in 0..t {
                for d in 0..d_n {
                    for s in 0..b {
                        let src = ((tt * d_n + d) * b + s) * h;
                        let dst = (tt * b + s) * d_n * h + d * h;
                        cur[dst..dst + h].copy_from_slice(&y[src..src + h]);
                    }
                }
            }
            h_n.extend(yh);
            c_n.extend(yc);
        }
        let y = if batch_first { swap_axes(&cur, t, b, d_n * h) } else { cur };
        Ok(TorchResult { y, h_n, c_n })
    }
}

/// The LSTM as [`Stack`] runs it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lstm;

impl TorchCell for Lstm {
    type Weights = LstmWeights;
    type Packed = PackedLstm;
    type Spec = CellSpec;
    type Kernel<'a> = LstmKernel<'a>;
    type Grads = LstmGrads<f32>;
    type Back<'a> = LstmBackCell<'a>;
    const RECORD: usize = TAPE_RECORD;
    fn pack_pytorch(
        input: usize,
        hidden: usize,
        p: &TorchParams<'_>,
        _spec: &CellSpec,
        nb: usize,
    ) -> Result<PackedLstm> {
        PackedLstm::from_pytorch(input, hidden, p, nb)
    }
    fn canonical(packed: &PackedLstm) -> LstmWeights {
        packed.canonical()
    }
    fn backward_cell<'a>(w: &LstmWeights, packed: &'a PackedLstm, spec: &'a CellSpec) -> Result<LstmBackCell<'a>> {
        packed.backward_cell(w, spec)
    }
    fn zero_grads(w: &LstmWeights) -> LstmGrads<f32> {
        LstmGrads::zeros(w.input_size(), w.hidden_size(), false)
    }
    fn grads_to_pytorch(g: &LstmGrads<f32>) -> PytorchLayout<f32> {
        g.to_pytorch()
    }
    fn kernel<'a>(packed: &'a PackedLstm, spec: &'a CellSpec) -> LstmKernel<'a> {
        LstmKernel { packed, spec }
    }
    fn reference_layer(
        spec: &CellSpec,
        dirs: &[(&LstmWeights, bool)],
        x: &[f32],
        (t, b): (usize, usize),
        lengths: &[usize],
        (h0, c0): (Option<&[f32]>, Option<&[f32]>),
        rounding: Rounding,
    ) -> Result<LayerOutputs> {
        let dirs: Vec<(&LstmWeights, &CellSpec, bool)> = dirs.iter().map(|&(w, reverse)| (w, spec, reverse)).collect();
        // A missing half of the initial state is zeros.
        let zeros = vec![0.0; h0.or(c0).map_or(0, <[f32]>::len)];
        let init = h0.is_some() || c0.is_some();
        let init = init.then(|| (h0.unwrap_or(&zeros), c0.unwrap_or(&zeros)));
        reference::onnx_lstm(&dirs, x, t, b, lengths, init, rounding)
    }
}

impl<F: TorchCell> Stack<F> {
    /// [`TorchLstm::backward_packed`], for every cell (`c0`, `dc_n` and `dc0` only for the LSTM).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_packed(
        &self,
        call: Call<'_>,
        tape: &TorchTape,
        up: TorchUpstream<'_>,
        grads: TorchGrads<'_>,
        threads: usize,
    ) -> Result<ForwardStats> {
        let state_len = self.check(&call)?;
        let Call { x, t, b, batch_first, lengths, h0, c0 } = call;
        let (h, d_n, nl) = (self.hidden, self.dirs(), self.num_layers);
        let width = d_n * h;
        let y_len = checked_product(&[t, b, width], "y")?;
        if tape.shape != (t, b, self.input_size, h, d_n * nl, batch_first) || tape.inputs.len() + 1 != nl {
            return Err(Error::argument("the tape was filled by a run of another shape"));
        }
        let has_c = states(&self.kernel(0)) > 1;
        if !has_c && (c0.is_some() || up.dc_n.is_some() || grads.dc0.is_some()) {
            return Err(Error::argument("c0, dc_n, dc0: this cell has no cell state"));
        }
        for (name, v, n) in [("dy", up.dy, y_len), ("dh_n", up.dh_n, state_len), ("dc_n", up.dc_n, state_len)] {
            if let Some(v) = v {
                check_len(name, v.len(), n)?;
            }
        }
        let TorchGrads { dx, params, mut dh0, mut dc0 } = grads;
        for (name, v, n) in [
            ("dx", dx.as_deref().map(<[f32]>::len), x.len()),
            ("dh0", dh0.as_deref().map(<[f32]>::len), state_len),
            ("dc0", dc0.as_deref().map(<[f32]>::len), state_len),
        ] {
            if let Some(len) = v {
                check_len(name, len, n)?;
            }
        }
        let mut view = SeqView::default();
        view.assign_lengths(lengths, t, Padding::Post)?;
        let mut layer_grads = Vec::with_capacity(nl * d_n);
        let mut dcur: Vec<f32> = up.dy.map_or_else(|| vec![0.0; y_len], <[f32]>::to_vec);
        let (mut dh_l, mut dc_l) = (vec![0.0f32; b * h], vec![0.0f32; b * h]);
        let mut dx = dx;
        let mut stats = ForwardStats::default();
        for l in (0..nl).rev() {
            let (input, inp): (&[f32], usize) =
                if l == 0 { (x, self.input_size) } else { (&tape.inputs[l - 1], width) };
            let (xsb, xst, ysb, yst) =
                if batch_first { (t * inp, inp, t * width, width) } else { (inp, b * inp, width, b * width) };
            // The gradient of this layer's input: the next layer down's output gradient, or dx.
            let mut below = if l > 0 { vec![0.0f32; y_len] } else { Vec::new() };
            if l == 0 {
                if let Some(dx) = dx.as_deref_mut() {
                    dx.fill(0.0);
                }
            }
            for d in 0..d_n {
                let k = l * d_n + d;
                let (weights, packed) = (self.canonical(k), &self.weights[k].1);
                let dtape = &tape.dirs[k];
                let hp = self.kernel(k).packed().hidden_padded();
                let mut scratch = dtape.scratch.take();
                let dh_up = &mut scratch.dh_up;
                dh_up.clear();
                dh_up.resize(dtape.rows() * hp, 0.0);
                for s in 0..b {
                    for row in dtape.offsets[s]..dtape.offsets[s + 1] {
                        let at = d * h + s * ysb + dtape.times[row] * yst;
                        dh_up[row * hp..row * hp + h].copy_from_slice(&dcur[at..at + h]);
                    }
                }
                let part = |v: Option<&'_ [f32]>| v.map(|v| v[k * b * h..(k + 1) * b * h].to_vec());
                let (hn, cn, hi, ci) = (part(up.dh_n), part(up.dc_n), part(h0), part(c0));
                let zeros = vec![0.0f32; b * h];
                let init = (hi.is_some() || ci.is_some())
                    .then(|| (hi.as_deref().unwrap_or(&zeros), ci.as_deref().unwrap_or(&zeros)));
                let mut g = params.is_some().then(|| F::zero_grads(weights));
                let job = Backward {
                    backend: self.backend,
                    cell: F::backward_cell(weights, packed, &self.cell)?,
                    view: &view,
                    tape: dtape,
                    x: SeqIn { data: input, off: 0, sb: xsb, st: xst },
                    init,
                    dh_up: &scratch.dh_up,
                    d_h_n: hn.as_deref(),
                    d_c_n: cn.as_deref().filter(|_| has_c),
                    empty_is_initial: false,
                    threads,
                    schedule: Schedule::Auto,
                };
                let dxl = if l > 0 { Some(&mut below[..]) } else { dx.as_deref_mut() };
                let out = BackwardOut {
                    dx: dxl.map(|v| (v, xsb, xst, d > 0)),
                    params: g.as_mut(),
                    d_h0: Some(&mut dh_l),
                    d_c0: has_c.then_some(&mut dc_l[..]),
                };
                let done = job.run(out, &mut scratch.bufs);
                dtape.scratch.put(scratch);
                stats = stats.merge(done?);
                for (src, dst) in [(&dh_l, dh0.as_deref_mut()), (&dc_l, dc0.as_deref_mut())] {
                    if let Some(dst) = dst {
                        dst[k * b * h..(k + 1) * b * h].copy_from_slice(src);
                    }
                }
                layer_grads.push((k, g));
            }
            dcur = below;
        }
        if let Some(params) = params {
            layer_grads.sort_by_key(|(k, _)| *k);
            params.clear();
            params.extend(layer_grads.into_iter().filter_map(|(_, g)| g.map(|g| F::grads_to_pytorch(&g))));
        }
        Ok(stats)
    }
}
