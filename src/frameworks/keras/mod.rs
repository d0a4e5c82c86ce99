//! Keras recurrent layers with exact Keras mask semantics, on the mask-aware engine: `LSTM`
//! ([`KerasLstm`], forward and backward), `GRU` ([`KerasGru`]) and `SimpleRNN` ([`KerasSimpleRnn`]).
//! Every cell runs through one job builder (`KerasMasking`): the mask's holes and pre-padding cost
//! nothing, a masked step repeats the previous output (or zeros with `zero_output_for_mask`), the state
//! of a sequence without valid steps is its initial state.

use std::sync::OnceLock;

mod gru;
mod layer;

pub use gru::{KerasGru, KerasGruOptions, KerasRnnOptions, KerasSimpleRnn};
pub(crate) use layer::JobParts;
pub use layer::Recurrent;

use crate::cells::activation::Activation;
use crate::cells::grads::LstmGrads;
use crate::cells::lstm::{CellSpec, LstmKernel, TAPE_RECORD};
use crate::cells::weights::{LstmWeights, PackedLstm};
use crate::engine::{
    clear_reserve, Backward, BackwardOut, DirTape, EmptyState, Fill, ForwardStats, Job, OutRegion, Region, Schedule,
    SeqIn, SeqOut, StateIn, StateOut, TapeOut, Workspace,
};
use crate::error::{check_len, checked_product, Result};
use crate::kernel::{self, Backend, Carry, CellBackward, CellKernel};
use crate::reference::{self, KerasResult};
use crate::view::SeqView;

/// Options of a Keras LSTM layer that change what it computes.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct KerasLstmOptions {
    /// Keras `activation` (candidate and output), default `tanh`.
    pub activation: Activation,
    /// Keras `recurrent_activation` (gates), default `sigmoid`.
    pub recurrent_activation: Activation,
    /// Keras `go_backwards`: process the whole padded axis reversed, outputs in processing order.
    pub go_backwards: bool,
    /// Keras `zero_output_for_mask`: masked steps output zeros instead of the previous output.
    pub zero_output_for_mask: bool,
}

impl Default for KerasLstmOptions {
    fn default() -> Self {
        KerasLstmOptions {
            activation: Activation::Tanh,
            recurrent_activation: Activation::Sigmoid,
            go_backwards: false,
            zero_output_for_mask: false,
        }
    }
}

impl KerasLstmOptions {
    /// Sets `activation`.
    pub fn activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }
    /// Sets `recurrent_activation`.
    pub fn recurrent_activation(mut self, a: Activation) -> Self {
        self.recurrent_activation = a;
        self
    }
    /// Sets `go_backwards`.
    pub fn go_backwards(mut self, on: bool) -> Self {
        self.go_backwards = on;
        self
    }
    /// Sets `zero_output_for_mask`.
    pub fn zero_output_for_mask(mut self, on: bool) -> Self {
        self.zero_output_for_mask = on;
        self
    }
}

/// Initial state `[B, H]` each.
#[derive(Clone, Copy, Debug)]
pub struct InitialState<'a> {
    /// Initial hidden state `[B, H]`.
    pub h: &'a [f32],
    /// Initial cell state `[B, H]`.
    pub c: &'a [f32],
}

/// Output buffers of [`KerasLstm::forward`]; each is optional and must have the documented size.
#[derive(Debug, Default)]
pub struct KerasOutputs<'a> {
    /// `[B, T, H]`: the `return_sequences=True` output.
    pub y: Option<&'a mut [f32]>,
    /// `[B, H]`: `outputs[:, -1]`, the `return_sequences=False` output.
    pub last_output: Option<&'a mut [f32]>,
    /// `[B, H]`: hidden state after each sequence's last valid step.
    pub h_n: Option<&'a mut [f32]>,
    /// `[B, H]`: cell state after each sequence's last valid step.
    pub c_n: Option<&'a mut [f32]>,
}

/// Gradients of a scalar loss with respect to a Keras layer's outputs (the upstream of
/// [`KerasLstm::backward`]); `None` = zeros. Shapes as [`KerasOutputs`].
#[derive(Clone, Copy, Debug, Default)]
pub struct KerasUpstream<'a> {
    /// `[B, T, H]`, of `y`.
    pub dy: Option<&'a [f32]>,
    /// `[B, H]`, of `last_output`.
    pub d_last_output: Option<&'a [f32]>,
    /// `[B, H]`, of `h_n`.
    pub d_h_n: Option<&'a [f32]>,
    /// `[B, H]`, of `c_n`.
    pub d_c_n: Option<&'a [f32]>,
}

/// Where a Keras layer's `backward` ([`KerasLstm::backward`], [`KerasGru::backward`],
/// [`KerasSimpleRnn::backward`]) writes gradients; each is optional (not computed when `None`) and
/// overwritten, not accumulated. The parameters' in Keras' layouts, `G` gates per unit (LSTM 4, GRU 3,
/// SimpleRNN 1); `d_initial_c` only for the LSTM.
#[derive(Debug, Default)]
pub struct KerasGrads<'a> {
    /// `[B, T, I]`, of `x`: `+0.0` at masked steps.
    pub dx: Option<&'a mut [f32]>,
    /// `[I, G H]`, of the kernel (summed over the batch).
    pub d_kernel: Option<&'a mut [f32]>,
    /// `[H, G H]`, of the recurrent kernel.
    pub d_recurrent_kernel: Option<&'a mut [f32]>,
    /// `[G H]`, of the bias (the GRU with `reset_after`: `[2, 3H]`).
    pub d_bias: Option<&'a mut [f32]>,
    /// `[B, H]`, of the initial `h` (of zeros when none was given).
    pub d_initial_h: Option<&'a mut [f32]>,
    /// `[B, H]`, of the initial `c`.
    pub d_initial_c: Option<&'a mut [f32]>,
}

/// What [`KerasLstm::forward_train`] keeps for [`KerasLstm::backward`]: for each valid step the gate
/// arguments and the new `c` and `h` (6 x H floats, H rounded up to the vector width), nothing for
/// padded steps. Reuse one across calls to avoid allocating.
#[derive(Clone, Debug, Default)]
pub struct KerasTape {
    pub(crate) dir: DirTape,
    /// `(batch, time, input, hidden)` of the run that filled it.
    pub(crate) shape: (usize, usize, usize, usize),
}

impl KerasTape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.dir.bytes()
    }
}

/// Where a backward writes `dx`, and the initial `h`'s and `c`'s gradients.
pub(crate) type StateGrads<'a> = (Option<&'a mut [f32]>, Option<&'a mut [f32]>, Option<&'a mut [f32]>);

impl KerasMasking {
    /// The backward of a layer of this masking through `cell` (see [`KerasLstm::backward`]): checks the
    /// buffers and the tape, routes the upstream gradients to the valid steps' outputs, runs the engine's
    /// backward and writes `dx`, the initial states' gradients (`outs`) and the canonical `params`.
    /// `initial` is `(h, c)` (`c` only for cells with one).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward<C: CellBackward>(
        &self,
        cell: C,
        x: &[f32],
        view: &SeqView,
        initial: Option<(&[f32], Option<&[f32]>)>,
        tape: &KerasTape,
        up: KerasUpstream<'_>,
        outs: StateGrads<'_>,
        params: Option<&mut C::Grads>,
        threads: usize,
    ) -> Result<ForwardStats> {
        let (b, t, hd) = (view.batch(), view.time(), self.units);
        let (i, hp) = (cell.sizes().0, cell.hp());
        let (dx, d_initial_h, d_initial_c) = outs;
        check_len("x", x.len(), checked_product(&[b, t, i], "x")?)?;
        if tape.shape != (b, t, i, hd) || tape.dir.rows() != view.total_valid() {
            return Err(crate::Error::argument("the tape was filled by a run of another shape"));
        }
        let has_c = C::CARRY == Carry::C;
        if !has_c && (up.d_c_n.is_some() || d_initial_c.is_some() || initial.is_some_and(|s| s.1.is_some())) {
            return Err(crate::Error::argument("d_c_n, d_initial_c, initial c: this layer has no cell state"));
        }
        let state_len = checked_product(&[b, hd], "state")?;
        let seq_len = checked_product(&[b, t, hd], "dy")?;
        for (name, v, n) in [
            ("dy", up.dy, seq_len),
            ("d_last_output", up.d_last_output, state_len),
            ("d_h_n", up.d_h_n, state_len),
            ("d_c_n", up.d_c_n, state_len),
        ] {
            if let Some(v) = v {
                check_len(name, v.len(), n)?;
            }
        }
        if let Some((h0, c0)) = initial {
            check_len("initial_h", h0.len(), state_len)?;
            if let Some(c0) = c0 {
                check_len("initial_c", c0.len(), state_len)?;
            }
        }
        for (name, v, n) in [
            ("dx", dx.as_deref().map(<[f32]>::len), b * t * i),
            ("d_initial_h", d_initial_h.as_deref().map(<[f32]>::len), state_len),
            ("d_initial_c", d_initial_c.as_deref().map(<[f32]>::len), state_len),
        ] {
            if let Some(len) = v {
                check_len(name, len, n)?;
            }
        }
        let mut scratch = tape.dir.scratch.take();
        self.route_upstream(view, &tape.dir, up, hp, &mut scratch.dh_up);
        let dx = dx.map(|dx| {
            dx.fill(0.0);
            (dx, t * i, i, false)
        });
        let zeros;
        let init = match initial {
            Some((h0, Some(c0))) => Some((h0, c0)),
            Some((h0, None)) => {
                zeros = vec![0.0f32; state_len];
                Some((h0, &zeros[..]))
            }
            None => None,
        };
        let job = Backward {
            backend: self.backend,
            cell,
            view,
            tape: &tape.dir,
            x: SeqIn { data: x, off: 0, sb: t * i, st: i },
            init,
            dh_up: &scratch.dh_up,
            d_h_n: up.d_h_n,
            d_c_n: up.d_c_n,
            empty_is_initial: true,
            threads,
            schedule: self.schedule,
        };
        let out = BackwardOut { dx, params, d_h0: d_initial_h, d_c0: d_initial_c };
        let stats = job.run(out, &mut scratch.bufs);
        tape.dir.scratch.put(scratch);
        stats
    }

    /// The gradient arriving at each valid step's output `h`, `[tape rows][hp]`, into `dh`: its own position's `dy`,
    /// plus the `dy` of the masked positions that repeat its output (Keras' carry; not with
    /// `zero_output_for_mask`), plus `d_last_output` when the last position shows it.
    fn route_upstream(&self, view: &SeqView, tape: &DirTape, up: KerasUpstream<'_>, hp: usize, dh: &mut Vec<f32>) {
        let (t_len, hd) = (view.time(), self.units);
        dh.clear();
        dh.resize(tape.rows() * hp, 0.0);
        let carry = !self.zero_output_for_mask;
        for s in 0..view.batch() {
            let mut cur: Option<usize> = None; // tape row of the last valid step so far
            let mut k = 0;
            let mut add = |row: usize, src: &[f32]| {
                for (d, &v) in dh[row * hp..row * hp + hd].iter_mut().zip(src) {
                    *d += v;
                }
            };
            let mut last_shown = None;
            for p in 0..t_len {
                let time = if self.go_backwards { t_len - 1 - p } else { p };
                let shown = if view.is_valid(s, time) {
                    cur = Some(tape.offsets[s] + k);
                    k += 1;
                    cur
                } else if carry {
                    cur
                } else {
                    None
                };
                if let (Some(row), Some(dy)) = (shown, up.dy) {
                    add(row, &dy[(s * t_len + p) * hd..(s * t_len + p + 1) * hd]);
                }
                last_shown = shown;
            }
            if let (Some(row), Some(d)) = (last_shown, up.d_last_output) {
                add(row, &d[s * hd..(s + 1) * hd]);
            }
        }
    }
}

/// A Keras LSTM layer: weights packed once, then run on any batch.
#[derive(Clone, Debug)]
pub struct KerasLstm {
    /// The canonical weights: those the layer was made from, or, packed straight from Keras' arrays,
    /// unpacked from the packed ones on first use.
    canonical: OnceLock<LstmWeights>,
    packed: PackedLstm,
    backend: &'static Backend,
    cell: CellSpec,
    options: KerasLstmOptions,
    schedule: Schedule,
}

/// What the Keras layers of every cell share: the mask semantics of their options and where they run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KerasMasking {
    pub go_backwards: bool,
    pub zero_output_for_mask: bool,
    pub units: usize,
    pub backend: &'static Backend,
    pub schedule: Schedule,
}

impl KerasMasking {
    /// The engine job of a layer of cell `cell`. `y` is `(region, flip)`: output position `p` holds
    /// processing step `p` (Keras), or time `p` when `flip` (Bidirectional's flip of the backward layer's
    /// output).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn job<'a, C: CellKernel>(
        &self,
        cell: C,
        x: StridedInput<'a>,
        view: &'a SeqView,
        init: Option<StateIn<'a>>,
        y: Option<(OutRegion<'a>, bool)>,
        h_n: Option<StateOut<'a>>,
        c_n: Option<StateOut<'a>>,
        tape: Option<TapeOut<'a>>,
        threads: usize,
    ) -> Job<'a, C> {
        let fill = if self.zero_output_for_mask { Fill::Zero } else { Fill::Previous };
        let back = self.go_backwards;
        Job {
            backend: self.backend,
            cell,
            view,
            x: SeqIn { data: x.data, off: x.off, sb: x.sb, st: x.st },
            reverse: back,
            init,
            empty_state: EmptyState::Initial,
            y: y.map(|(out, flip)| SeqOut { out, mirror: back != flip, fill }),
            h_n,
            c_n,
            tape,
            threads,
            schedule: self.schedule,
        }
    }

    /// Keras' `outputs[:, -1]` from the final hidden states `h_n [B, H]`: the last processing step's
    /// output, which is `h_n` when that step is valid or carried, else zeros.
    pub(crate) fn write_last_output(&self, view: &SeqView, h_n: &[f32], last: &mut [f32]) {
        let (t, hd) = (view.time(), self.units);
        let t_last = if self.go_backwards { 0 } else { t.wrapping_sub(1) };
        for s in 0..view.batch() {
            let dst = &mut last[s * hd..(s + 1) * hd];
            let valid_last = t > 0 && view.is_valid(s, t_last);
            let carried = !self.zero_output_for_mask && view.runs(s).len() > 0;
            if valid_last || carried {
                dst.copy_from_slice(&h_n[s * hd..(s + 1) * hd]);
            } else {
                dst.fill(0.0);
            }
        }
    }

    /// The forward of a layer of cell `cell` on `x` over `view`: checks the buffers, runs the job (with
    /// `tape`, prepared by the caller for `view`), writes `last_output`. `initial` is `(h, c)`, `c` only
    /// for a cell with a cell state (as `out.c_n`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward<C: CellKernel>(
        &self,
        cell: C,
        x: StridedInput<'_>,
        view: &SeqView,
        initial: Option<(&[f32], Option<&[f32]>)>,
        out: KerasOutputs<'_>,
        tape: Option<TapeOut<'_>>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        let (b, t, hd) = (view.batch(), view.time(), self.units);
        let state_len = checked_product(&[b, hd], "state")?;
        let y_len = checked_product(&[b, t, hd], "y")?;
        if let Some((h0, c0)) = initial {
            check_len("initial_h", h0.len(), state_len)?;
            if let Some(c0) = c0 {
                check_len("initial_c", c0.len(), state_len)?;
            }
        }
        let KerasOutputs { y, last_output, h_n, c_n } = out;
        if C::EXTRA_STATES == 0 && c_n.is_some() {
            return Err(crate::Error::argument("c_n: this layer has no cell state"));
        }
        if let Some(y) = &y {
            check_len("y", y.len(), y_len)?;
        }
        for (name, s) in [("last_output", &last_output), ("h_n", &h_n), ("c_n", &c_n)] {
            if let Some(s) = s {
                check_len(name, s.len(), state_len)?;
            }
        }
        // last_output needs h_n; keep a scratch copy when the caller does not want it.
        let Workspace { jobs, state, .. } = ws;
        let h_n: Option<&mut [f32]> = match (h_n, last_output.is_some()) {
            (Some(h), _) => Some(h),
            (None, true) => {
                clear_reserve(state, state_len); // exactly: workspace_bytes counts B x H floats
                state.resize(state_len, 0.0);
                Some(&mut state[..])
            }
            (None, false) => None,
        };
        let mut h_n = h_n;
        let job = self.job(
            cell,
            x,
            view,
            initial.map(|(h, c)| StateIn { h, c: c.unwrap_or(&[]), off: 0, sb: hd }),
            OutRegion::split_opt("y", y, [Region::seq(0, b, t * hd, t, hd, hd)])?[0].map(|y| (y, false)),
            OutRegion::split_opt("h_n", h_n.as_deref_mut(), [Region::state(0, b, hd, hd)])?[0],
            OutRegion::split_opt("c_n", c_n, [Region::state(0, b, hd, hd)])?[0],
            tape,
            threads,
        );
        let stats = job.run(&mut jobs[0])?;
        if let (Some(last), Some(h_n)) = (last_output, h_n) {
            self.write_last_output(view, h_n, last);
        }
        Ok(stats)
    }
}

/// Input `[B, T, I]` described by strides, so time slices of a larger tensor need no copy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StridedInput<'a> {
    pub data: &'a [f32],
    pub off: usize,
    pub sb: usize,
    pub st: usize,
}

impl KerasLstm {
    /// Packs `weights` for the best backend of this CPU.
    ///
    /// # Errors
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) if the packed weights would not fit in memory.
    pub fn new(weights: LstmWeights, options: KerasLstmOptions) -> Result<Self> {
        Self::with_backend(weights, options, kernel::selected())
    }

    /// Packs `weights` for a given backend (see [`kernel::available`]).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_backend(weights: LstmWeights, options: KerasLstmOptions, backend: &'static Backend) -> Result<Self> {
        let packed = PackedLstm::new(&weights, backend.nb)?;
        let cell = CellSpec::keras(options.activation, options.recurrent_activation);
        let canonical = OnceLock::from(weights);
        Ok(KerasLstm { canonical, packed, backend, cell, options, schedule: Schedule::Auto })
    }

    /// Packs Keras' `kernel [I, 4H]`, `recurrent_kernel [H, 4H]` and `bias [4H]` (None: no bias) as they
    /// are, for the best backend of this CPU: no canonical copy is made unless
    /// [`weights`](Self::weights) or a backward asks for it.
    ///
    /// # Errors
    /// As [`LstmWeights::from_keras`].
    pub fn from_slices(
        input: usize,
        hidden: usize,
        kernel: &[f32],
        recurrent_kernel: &[f32],
        bias: Option<&[f32]>,
        options: KerasLstmOptions,
    ) -> Result<Self> {
        let backend = kernel::selected();
        let packed = PackedLstm::from_keras(input, hidden, kernel, recurrent_kernel, bias, backend.nb)?;
        let cell = CellSpec::keras(options.activation, options.recurrent_activation);
        Ok(KerasLstm { canonical: OnceLock::new(), packed, backend, cell, options, schedule: Schedule::Auto })
    }

    /// The weights in canonical form.
    pub fn weights(&self) -> &LstmWeights {
        self.canonical.get_or_init(|| self.packed.canonical())
    }
    /// The layer options.
    pub fn options(&self) -> &KerasLstmOptions {
        &self.options
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

    /// Hidden size `H`.
    pub fn units(&self) -> usize {
        self.packed.gates.hidden
    }

    /// Runs the layer on `x [B, T, I]` (B and T from `view`) over the valid steps of `view` only.
    /// Results are bitwise identical for every `threads` value (0: all cores, 1: the calling thread).
    /// Allocates its scratch memory; use [`forward_in`](Self::forward_in) to reuse it across calls.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) if `x`, the initial state or an output buffer
    /// has the wrong length; [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) if sizes overflow.
    pub fn forward(
        &self,
        x: &[f32],
        view: &SeqView,
        initial: Option<InitialState<'_>>,
        out: KerasOutputs<'_>,
        threads: usize,
    ) -> Result<ForwardStats> {
        self.forward_in(x, view, initial, out, threads, &mut Workspace::new())
    }

    /// As [`forward`](Self::forward), with caller-owned scratch memory: once `ws` has served a call,
    /// later calls with the same view and thread count allocate nothing (on one thread; thread pools may
    /// allocate for their own bookkeeping). See [`Workspace`] and
    /// [`workspace_bytes`](Self::workspace_bytes).
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_in(
        &self,
        x: &[f32],
        view: &SeqView,
        initial: Option<InitialState<'_>>,
        out: KerasOutputs<'_>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        let (b, t, i) = (view.batch(), view.time(), self.packed.gates.input);
        check_len("x", x.len(), checked_product(&[b, t, i], "x")?)?;
        let input = StridedInput { data: x, off: 0, sb: t * i, st: i };
        self.forward_strided(input, view, initial, out, None, threads, ws)
    }

    /// [`forward_in`](Self::forward_in) that also fills `tape` with what [`backward`](Self::backward)
    /// needs (valid steps only; see [`tape_bytes`](Self::tape_bytes)). The outputs are bitwise those of
    /// `forward_in`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_train(
        &self,
        x: &[f32],
        view: &SeqView,
        initial: Option<InitialState<'_>>,
        out: KerasOutputs<'_>,
        tape: &mut KerasTape,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        let (b, t, i) = (view.batch(), view.time(), self.packed.gates.input);
        check_len("x", x.len(), checked_product(&[b, t, i], "x")?)?;
        let input = StridedInput { data: x, off: 0, sb: t * i, st: i };
        tape.shape = (b, t, i, self.units());
        self.forward_strided(input, view, initial, out, Some(&mut tape.dir), threads, ws)
    }

    /// Bytes a [`KerasTape`] holds after [`forward_train`](Self::forward_train) on `view`: proportional to
    /// the valid steps.
    pub fn tape_bytes(&self, view: &SeqView) -> usize {
        DirTape::bytes_for(view, TAPE_RECORD, self.packed.gates.hidden_padded())
    }

    /// The gradients of a scalar loss through this layer, given the gradients `up` with respect to its
    /// outputs: the vector-Jacobian product of [`forward`](Self::forward) at the inputs of the
    /// [`forward_train`](Self::forward_train) call that filled `tape` (pass the same `x`, `view` and
    /// `initial`). Padded steps are never computed; a masked step's output repeats the previous output,
    /// so its gradient flows to that output (or nowhere, before the first valid step or with
    /// `zero_output_for_mask`). Results do not depend on `threads`.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) for a buffer of the wrong length;
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for a tape filled with another shape.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        x: &[f32],
        view: &SeqView,
        initial: Option<InitialState<'_>>,
        tape: &KerasTape,
        up: KerasUpstream<'_>,
        grads: KerasGrads<'_>,
        threads: usize,
    ) -> Result<ForwardStats> {
        let (i, hd) = (self.packed.gates.input, self.units());
        let KerasGrads { dx, d_kernel, d_recurrent_kernel, d_bias, d_initial_h, d_initial_c } = grads;
        for (name, v, n) in [
            ("d_kernel", d_kernel.as_deref().map(<[f32]>::len), i * 4 * hd),
            ("d_recurrent_kernel", d_recurrent_kernel.as_deref().map(<[f32]>::len), hd * 4 * hd),
            ("d_bias", d_bias.as_deref().map(<[f32]>::len), 4 * hd),
        ] {
            if let Some(len) = v {
                check_len(name, len, n)?;
            }
        }
        let want_params = d_kernel.is_some() || d_recurrent_kernel.is_some() || d_bias.is_some();
        let mut params = want_params.then(|| LstmGrads::zeros(i, hd, false));
        let cell = self.packed.backward_cell(self.weights(), &self.cell)?;
        let initial = initial.map(|s| (s.h, Some(s.c)));
        let outs = (dx, d_initial_h, d_initial_c);
        let stats = self.masking().backward(cell, x, view, initial, tape, up, outs, params.as_mut(), threads)?;
        if let Some(p) = params {
            for (dst, src) in [(d_kernel, &p.d_kernel), (d_recurrent_kernel, &p.d_recurrent), (d_bias, &p.d_bias)] {
                if let Some(dst) = dst {
                    dst.copy_from_slice(src);
                }
            }
        }
        Ok(stats)
    }

    /// An upper bound of the bytes a fresh [`Workspace`] holds after a [`forward_in`](Self::forward_in)
    /// call with this view and thread count (any outputs; `threads` as in [`forward`](Self::forward), 0
    /// meaning the current rayon pool's size). Besides a few indices per sequence, it is the recurrent
    /// state (`h`
    /// twice and `c`, per sequence with valid steps, hidden size rounded up to the vector width), the
    /// projected input of one time tile per thread (256 KiB, or one step of the thread's sequences when
    /// that is larger) with two indices per projected row, and `last_output`'s `B x H` scratch when
    /// `h_n` is not requested.
    pub fn workspace_bytes(&self, view: &SeqView, threads: usize) -> usize {
        let x = StridedInput { data: &[], off: 0, sb: 0, st: 0 };
        let job = self.job(x, view, None, None, None, None, None, threads);
        job.scratch_bound() + view.batch() * self.units() * 4
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_strided(
        &self,
        x: StridedInput<'_>,
        view: &SeqView,
        initial: Option<InitialState<'_>>,
        out: KerasOutputs<'_>,
        tape: Option<&mut DirTape>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        let tape = match tape {
            Some(tape) => {
                tape.prepare(view, TAPE_RECORD, self.packed.gates.hidden_padded())?;
                Some(TapeOut::new(tape))
            }
            None => None,
        };
        let initial = initial.map(|s| (s.h, Some(s.c)));
        self.masking().forward(self.kernel(), x, view, initial, out, tape, threads, ws)
    }

    /// The mask semantics of this layer's options.
    pub(crate) fn masking(&self) -> KerasMasking {
        KerasMasking {
            go_backwards: self.options.go_backwards,
            zero_output_for_mask: self.options.zero_output_for_mask,
            units: self.units(),
            backend: self.backend,
            schedule: self.schedule,
        }
    }

    /// The cell as the kernels see it.
    fn kernel(&self) -> LstmKernel<'_> {
        LstmKernel { packed: &self.packed, spec: &self.cell }
    }

    /// The engine job of this layer (see [`KerasMasking::job`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn job<'a>(
        &'a self,
        x: StridedInput<'a>,
        view: &'a SeqView,
        init: Option<StateIn<'a>>,
        y: Option<(OutRegion<'a>, bool)>,
        h_n: Option<StateOut<'a>>,
        c_n: Option<StateOut<'a>>,
        tape: Option<TapeOut<'a>>,
        threads: usize,
    ) -> Job<'a, LstmKernel<'a>> {
        self.masking().job(self.kernel(), x, view, init, y, h_n, c_n, tape, threads)
    }

    /// The same layer computed by the [reference](mod@crate::reference) implementation: every step, then
    /// selected by the mask. For tests and comparisons.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_reference(
        &self,
        x: &[f32],
        view: &SeqView,
        initial: Option<InitialState<'_>>,
    ) -> Result<KerasResult> {
        reference::keras_lstm(
            self.weights(),
            &self.cell,
            x,
            &view.to_mask(),
            view.batch(),
            view.time(),
            self.options.go_backwards,
            self.options.zero_output_for_mask,
            initial.map(|s| (s.h, s.c)),
            reference::Rounding::of(self.backend),
        )
    }

    /// Runs the fast path and returns every output as owned vectors.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_all(
        &self,
        x: &[f32],
        view: &SeqView,
        initial: Option<InitialState<'_>>,
        threads: usize,
    ) -> Result<(KerasResult, ForwardStats)> {
        let (b, t, hd) = (view.batch(), view.time(), self.units());
        let mut r = KerasResult {
            y: vec![0.0; checked_product(&[b, t, hd], "y")?],
            last_output: vec![0.0; b * hd],
            h_n: vec![0.0; b * hd],
            c_n: vec![0.0; b * hd],
        };
        let out = KerasOutputs {
            y: Some(&mut r.y),
            last_output: Some(&mut r.last_output),
            h_n: Some(&mut r.h_n),
            c_n: Some(&mut r.c_n),
        };
        let stats = self.forward(x, view, initial, out, threads)?;
        Ok((r, stats))
    }
}
