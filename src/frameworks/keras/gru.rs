//! The Keras `GRU` and `SimpleRNN` layers (forward): one layer type for both cells, Keras' mask semantics
//! from [`KerasMasking`] as for the LSTM.

use std::sync::OnceLock;

use super::{KerasGrads, KerasMasking, KerasOutputs, KerasTape, KerasUpstream, StridedInput};
use crate::cells::activation::Activation;
use crate::cells::gru::{GruSpec, GruWeights};
use crate::cells::rnn::{RnnSpec, RnnWeights};
use crate::engine::{DirTape, ForwardStats, Job, OutRegion, Schedule, StateIn, StateOut, TapeOut, Workspace};
use crate::error::{check_len, checked_product, Result};
use crate::frameworks::family::{Family, Gru, Rnn};
use crate::kernel::{self, Backend, CellKernel};
use crate::reference::{self, KerasResult, Rounding};
use crate::view::SeqView;

/// One Keras layer of family `F`: its weights packed once. The canonical weights are those it was made
/// from, or, for a layer packed straight from Keras' arrays, unpacked from the packed ones on first use.
#[derive(Clone, Debug)]
struct Layer<F: Family> {
    canonical: OnceLock<F::Weights>,
    input: usize,
    packed: F::Packed,
    spec: F::Spec,
    masking: KerasMasking,
}

impl<F: Family> Layer<F> {
    fn new(weights: F::Weights, spec: F::Spec, masking: KerasMasking) -> Result<Self> {
        let packed = F::pack(&weights, &spec, masking.backend.nb)?;
        let input = F::sizes(&weights).0;
        Ok(Layer { canonical: OnceLock::from(weights), input, packed, spec, masking })
    }

    /// Packs Keras' arrays as they are (`masking.units` units).
    fn from_slices(
        input: usize,
        kernel: &[f32],
        recurrent_kernel: &[f32],
        bias: Option<&[f32]>,
        spec: F::Spec,
        masking: KerasMasking,
    ) -> Result<Self> {
        let (h, nb) = (masking.units, masking.backend.nb);
        let packed = F::pack_keras(input, h, kernel, recurrent_kernel, bias, &spec, nb)?;
        Ok(Layer { canonical: OnceLock::new(), input, packed, spec, masking })
    }

    /// The canonical weights.
    fn weights(&self) -> &F::Weights {
        self.canonical.get_or_init(|| F::canonical(&self.packed))
    }

    fn forward_in(
        &self,
        x: &[f32],
        view: &SeqView,
        initial_h: Option<&[f32]>,
        out: KerasOutputs<'_>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        let (b, t, i) = (view.batch(), view.time(), self.input);
        check_len("x", x.len(), checked_product(&[b, t, i], "x")?)?;
        let input = StridedInput { data: x, off: 0, sb: t * i, st: i };
        self.forward_strided(input, view, initial_h, out, threads, ws)
    }

    /// The forward on an input described by strides (a time slice of a larger tensor needs no copy).
    fn forward_strided(
        &self,
        x: StridedInput<'_>,
        view: &SeqView,
        initial_h: Option<&[f32]>,
        out: KerasOutputs<'_>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        let cell = F::kernel(&self.packed, &self.spec);
        self.masking.forward(cell, x, view, initial_h.map(|h| (h, None)), out, None, threads, ws)
    }

    /// The engine job of this layer (see [`KerasMasking::job`]).
    #[allow(clippy::too_many_arguments)]
    fn job<'a>(
        &'a self,
        x: StridedInput<'a>,
        view: &'a SeqView,
        init: Option<StateIn<'a>>,
        y: Option<(OutRegion<'a>, bool)>,
        h_n: Option<StateOut<'a>>,
        threads: usize,
    ) -> Job<'a, F::Kernel<'a>> {
        self.masking.job(F::kernel(&self.packed, &self.spec), x, view, init, y, h_n, None, None, threads)
    }

    fn keras_weight_lens(&self) -> [usize; 3] {
        F::keras_grad_lens(self.weights(), &self.spec)
    }

    fn tape_bytes(&self, view: &SeqView) -> usize {
        DirTape::bytes_for(view, F::RECORD, F::hidden_padded(&self.packed))
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_train(
        &self,
        x: &[f32],
        view: &SeqView,
        initial_h: Option<&[f32]>,
        out: KerasOutputs<'_>,
        tape: &mut KerasTape,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        let (b, t, i) = (view.batch(), view.time(), self.input);
        check_len("x", x.len(), checked_product(&[b, t, i], "x")?)?;
        let input = StridedInput { data: x, off: 0, sb: t * i, st: i };
        tape.shape = (b, t, i, self.masking.units);
        tape.dir.prepare(view, F::RECORD, F::hidden_padded(&self.packed))?;
        let cell = F::kernel(&self.packed, &self.spec);
        let tape = Some(TapeOut::new(&mut tape.dir));
        self.masking.forward(cell, input, view, initial_h.map(|h| (h, None)), out, tape, threads, ws)
    }

    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        x: &[f32],
        view: &SeqView,
        initial_h: Option<&[f32]>,
        tape: &KerasTape,
        up: KerasUpstream<'_>,
        grads: KerasGrads<'_>,
        threads: usize,
    ) -> Result<ForwardStats> {
        let KerasGrads { dx, d_kernel, d_recurrent_kernel, d_bias, d_initial_h, d_initial_c } = grads;
        let cell = F::backward_cell(self.weights(), &self.packed, &self.spec)?;
        let mut params = (d_kernel.is_some() || d_recurrent_kernel.is_some() || d_bias.is_some())
            .then(|| F::zero_grads(self.weights()));
        // The Keras layouts' lengths, checked before anything runs.
        let [nk, nr, nb] = self.keras_weight_lens();
        for (name, v, want) in
            [("d_kernel", &d_kernel, nk), ("d_recurrent_kernel", &d_recurrent_kernel, nr), ("d_bias", &d_bias, nb)]
        {
            if let Some(v) = v {
                check_len(name, v.len(), want)?;
            }
        }
        let outs = (dx, d_initial_h, d_initial_c);
        let initial = initial_h.map(|h| (h, None));
        let stats = self.masking.backward(cell, x, view, initial, tape, up, outs, params.as_mut(), threads)?;
        if let Some(p) = params {
            let (k, r, b) = F::grads_to_keras(&p, &self.spec);
            for (dst, src) in [(d_kernel, k), (d_recurrent_kernel, r), (d_bias, b)] {
                if let Some(dst) = dst {
                    dst.copy_from_slice(&src);
                }
            }
        }
        Ok(stats)
    }

    fn forward_all(
        &self,
        x: &[f32],
        view: &SeqView,
        initial_h: Option<&[f32]>,
        threads: usize,
    ) -> Result<(KerasResult, ForwardStats)> {
        let (b, t, hd) = (view.batch(), view.time(), self.masking.units);
        let mut r = KerasResult {
            y: vec![0.0; checked_product(&[b, t, hd], "y")?],
            last_output: vec![0.0; checked_product(&[b, hd], "state")?],
            h_n: vec![0.0; b * hd],
            c_n: Vec::new(),
        };
        let out =
            KerasOutputs { y: Some(&mut r.y), last_output: Some(&mut r.last_output), h_n: Some(&mut r.h_n), c_n: None };
        let stats = self.forward_in(x, view, initial_h, out, threads, &mut Workspace::new())?;
        Ok((r, stats))
    }

    fn forward_reference(&self, x: &[f32], view: &SeqView, initial_h: Option<&[f32]>) -> Result<KerasResult> {
        let rounding = Rounding::of(self.masking.backend);
        let step = |x: &[f32], h: &[f32]| F::step(&self.spec, self.weights(), x, h, rounding);
        let m = &self.masking;
        let shape = (view.batch(), view.time());
        let sizes = F::sizes(self.weights());
        let mask = view.to_mask();
        reference::keras_h_only(&step, sizes, x, &mask, shape, m.go_backwards, m.zero_output_for_mask, initial_h)
    }
}

/// Options of a Keras `GRU` layer that change what it computes.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct KerasGruOptions {
    /// `activation` (candidate), default `tanh`.
    pub activation: Activation,
    /// `recurrent_activation` (gates z, r), default `sigmoid`.
    pub recurrent_activation: Activation,
    /// `reset_after`, default `true` (Keras 3): the reset gate multiplies `h·R_h + br_h`; `false`: it
    /// multiplies `h` before the matmul.
    pub reset_after: bool,
    /// `go_backwards`.
    pub go_backwards: bool,
    /// `zero_output_for_mask` (Keras' layer default `false`).
    pub zero_output_for_mask: bool,
}

impl Default for KerasGruOptions {
    fn default() -> Self {
        KerasGruOptions {
            activation: Activation::Tanh,
            recurrent_activation: Activation::Sigmoid,
            reset_after: true,
            go_backwards: false,
            zero_output_for_mask: false,
        }
    }
}

impl KerasGruOptions {
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
    /// Sets `reset_after`.
    pub fn reset_after(mut self, on: bool) -> Self {
        self.reset_after = on;
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

/// Options of a Keras `SimpleRNN` layer that change what it computes.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct KerasRnnOptions {
    /// `activation`, default `tanh`.
    pub activation: Activation,
    /// `go_backwards`.
    pub go_backwards: bool,
    /// `zero_output_for_mask` (Keras' layer default `false`).
    pub zero_output_for_mask: bool,
}

impl Default for KerasRnnOptions {
    fn default() -> Self {
        KerasRnnOptions { activation: Activation::Tanh, go_backwards: false, zero_output_for_mask: false }
    }
}

impl KerasRnnOptions {
    /// Sets `activation`.
    pub fn activation(mut self, a: Activation) -> Self {
        self.activation = a;
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

fn masking(go_backwards: bool, zero_output_for_mask: bool, units: usize, backend: &'static Backend) -> KerasMasking {
    KerasMasking { go_backwards, zero_output_for_mask, units, backend, schedule: Schedule::Auto }
}

/// The methods both layers share.
macro_rules! layer_methods {
    ($weights:ty, $options:ty) => {
        /// The weights in canonical form.
        pub fn weights(&self) -> &$weights {
            self.layer.weights()
        }
        /// The layer options.
        pub fn options(&self) -> &$options {
            &self.options
        }
        /// The backend the weights are packed for.
        pub fn backend(&self) -> &'static Backend {
            self.layer.masking.backend
        }
        /// Hidden size `H`.
        pub fn units(&self) -> usize {
            self.layer.masking.units
        }
        /// Sets how a call spreads over threads (default [`Schedule::Auto`]); results are bitwise the same
        /// for every schedule.
        pub fn with_schedule(mut self, schedule: Schedule) -> Self {
            self.layer.masking.schedule = schedule;
            self
        }

        /// Bytes a [`KerasTape`] holds after [`forward_train`](Self::forward_train) on `view`:
        /// proportional to the valid steps.
        pub fn tape_bytes(&self, view: &SeqView) -> usize {
            self.layer.tape_bytes(view)
        }

        /// The same layer with `go_backwards` and `zero_output_for_mask` set (what `Bidirectional` does
        /// to the layers it wraps); the packed weights are shared, not repacked.
        pub(crate) fn with_mask_options(&self, go_backwards: bool, zero_output_for_mask: bool) -> Self {
            let mut l = self.clone();
            l.options = l.options.go_backwards(go_backwards).zero_output_for_mask(zero_output_for_mask);
            l.layer.masking.go_backwards = go_backwards;
            l.layer.masking.zero_output_for_mask = zero_output_for_mask;
            l
        }

        /// The lengths of the layer's Keras weights (`kernel`, `recurrent_kernel`, `bias`).
        pub(crate) fn keras_weight_lens(&self) -> [usize; 3] {
            self.layer.keras_weight_lens()
        }

        /// The mask semantics of this layer's options.
        pub(crate) fn masking(&self) -> KerasMasking {
            self.layer.masking
        }

        /// [`forward_in`](Self::forward_in) on an input described by strides.
        pub(crate) fn forward_strided(
            &self,
            x: StridedInput<'_>,
            view: &SeqView,
            initial_h: Option<&[f32]>,
            out: KerasOutputs<'_>,
            threads: usize,
            ws: &mut Workspace,
        ) -> Result<ForwardStats> {
            self.layer.forward_strided(x, view, initial_h, out, threads, ws)
        }

        /// The engine job of this layer (see `KerasMasking::job`); no cell state.
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn job<'a>(
            &'a self,
            x: StridedInput<'a>,
            view: &'a SeqView,
            init: Option<StateIn<'a>>,
            y: Option<(OutRegion<'a>, bool)>,
            h_n: Option<StateOut<'a>>,
            threads: usize,
        ) -> Job<'a, impl CellKernel + 'a> {
            self.layer.job(x, view, init, y, h_n, threads)
        }

        /// Runs the layer on `x [B, T, I]` (B and T from `view`) over the valid steps of `view` only, from
        /// `initial_h [B, H]` (`None`: zeros). `out.c_n` must be `None` (no cell state). Results are
        /// bitwise identical for every `threads` value (0: all cores, 1: the calling thread).
        ///
        /// # Errors
        /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) if `x`, the initial state or an output
        /// buffer has the wrong length; [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for a
        /// `c_n` buffer; [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) if sizes overflow.
        pub fn forward(
            &self,
            x: &[f32],
            view: &SeqView,
            initial_h: Option<&[f32]>,
            out: KerasOutputs<'_>,
            threads: usize,
        ) -> Result<ForwardStats> {
            self.layer.forward_in(x, view, initial_h, out, threads, &mut Workspace::new())
        }

        /// As [`forward`](Self::forward), with caller-owned scratch memory reused across calls (see
        /// [`Workspace`]).
        ///
        /// # Errors
        /// As [`forward`](Self::forward).
        pub fn forward_in(
            &self,
            x: &[f32],
            view: &SeqView,
            initial_h: Option<&[f32]>,
            out: KerasOutputs<'_>,
            threads: usize,
            ws: &mut Workspace,
        ) -> Result<ForwardStats> {
            self.layer.forward_in(x, view, initial_h, out, threads, ws)
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
            view: &SeqView,
            initial_h: Option<&[f32]>,
            out: KerasOutputs<'_>,
            tape: &mut KerasTape,
            threads: usize,
            ws: &mut Workspace,
        ) -> Result<ForwardStats> {
            self.layer.forward_train(x, view, initial_h, out, tape, threads, ws)
        }

        /// The gradients of a scalar loss through this layer, given the gradients `up` with respect to its
        /// outputs (`up.d_c_n` must be `None`): the vector-Jacobian product of [`forward`](Self::forward)
        /// at the inputs of the [`forward_train`](Self::forward_train) call that filled `tape` (pass the
        /// same `x`, `view` and `initial_h`). Padded steps are never computed; a masked step's output
        /// repeats the previous output, so its gradient flows to that output (or nowhere, before the first
        /// valid step or with `zero_output_for_mask`). The parameter gradients come in Keras' layouts
        /// (the shapes of `get_weights()`); `grads.d_initial_c` must be `None`. Results do not depend on
        /// `threads`.
        ///
        /// # Errors
        /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) for a buffer of the wrong length;
        /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for a tape filled with another shape,
        /// or a `d_c_n` or `d_initial_c` buffer.
        #[allow(clippy::too_many_arguments)]
        pub fn backward(
            &self,
            x: &[f32],
            view: &SeqView,
            initial_h: Option<&[f32]>,
            tape: &KerasTape,
            up: KerasUpstream<'_>,
            grads: KerasGrads<'_>,
            threads: usize,
        ) -> Result<ForwardStats> {
            self.layer.backward(x, view, initial_h, tape, up, grads, threads)
        }

        /// Runs the fast path and returns `y`, `last_output` and `h_n` as owned vectors (`c_n` empty).
        ///
        /// # Errors
        /// As [`forward`](Self::forward).
        pub fn forward_all(
            &self,
            x: &[f32],
            view: &SeqView,
            initial_h: Option<&[f32]>,
            threads: usize,
        ) -> Result<(KerasResult, ForwardStats)> {
            self.layer.forward_all(x, view, initial_h, threads)
        }

        /// The same layer computed by the [reference](crate::reference::keras_h_only): every step, then
        /// selected by the mask (`c_n` empty).
        ///
        /// # Errors
        /// As [`forward`](Self::forward).
        pub fn forward_reference(&self, x: &[f32], view: &SeqView, initial_h: Option<&[f32]>) -> Result<KerasResult> {
            self.layer.forward_reference(x, view, initial_h)
        }
    };
}

/// A Keras `GRU` layer: weights packed once for the reset placement of its options.
#[derive(Clone, Debug)]
pub struct KerasGru {
    options: KerasGruOptions,
    layer: Layer<Gru>,
}

impl KerasGru {
    /// Packs `weights` (import Keras' with [`GruWeights::from_keras`], the same `reset_after`) for the
    /// best backend of this CPU.
    ///
    /// # Errors
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) if the packed weights would not fit in memory.
    pub fn new(weights: GruWeights, options: KerasGruOptions) -> Result<Self> {
        Self::with_backend(weights, options, kernel::selected())
    }

    /// As [`new`](Self::new), for a given backend.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_backend(weights: GruWeights, options: KerasGruOptions, backend: &'static Backend) -> Result<Self> {
        let spec = GruSpec::keras(options.activation, options.recurrent_activation, options.reset_after);
        let m = masking(options.go_backwards, options.zero_output_for_mask, weights.hidden_size(), backend);
        Ok(KerasGru { options, layer: Layer::new(weights, spec, m)? })
    }

    /// Packs Keras' `kernel [I, 3H]`, `recurrent_kernel [H, 3H]` and `bias` (as in
    /// [`GruWeights::from_keras`], with the options' `reset_after`) as they are, for the best backend of
    /// this CPU: no canonical copy is made unless [`weights`](Self::weights) or a backward asks for it.
    ///
    /// # Errors
    /// As [`GruWeights::from_keras`].
    pub fn from_slices(
        input: usize,
        hidden: usize,
        kernel: &[f32],
        recurrent_kernel: &[f32],
        bias: Option<&[f32]>,
        options: KerasGruOptions,
    ) -> Result<Self> {
        let spec = GruSpec::keras(options.activation, options.recurrent_activation, options.reset_after);
        let m = masking(options.go_backwards, options.zero_output_for_mask, hidden, kernel::selected());
        Ok(KerasGru { options, layer: Layer::from_slices(input, kernel, recurrent_kernel, bias, spec, m)? })
    }

    layer_methods!(GruWeights, KerasGruOptions);
}

/// A Keras `SimpleRNN` layer: weights packed once.
#[derive(Clone, Debug)]
pub struct KerasSimpleRnn {
    options: KerasRnnOptions,
    layer: Layer<Rnn>,
}

impl KerasSimpleRnn {
    /// Packs `weights` (import Keras' with [`RnnWeights::from_keras`]) for the best backend of this CPU.
    ///
    /// # Errors
    /// As [`KerasGru::new`].
    pub fn new(weights: RnnWeights, options: KerasRnnOptions) -> Result<Self> {
        Self::with_backend(weights, options, kernel::selected())
    }

    /// As [`new`](Self::new), for a given backend.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_backend(weights: RnnWeights, options: KerasRnnOptions, backend: &'static Backend) -> Result<Self> {
        let spec = RnnSpec::new(options.activation, None);
        let m = masking(options.go_backwards, options.zero_output_for_mask, weights.hidden_size(), backend);
        Ok(KerasSimpleRnn { options, layer: Layer::new(weights, spec, m)? })
    }

    /// Packs Keras' `kernel [I, H]`, `recurrent_kernel [H, H]` and `bias [H]` as they are, for the best
    /// backend of this CPU: no canonical copy is made unless [`weights`](Self::weights) or a backward asks
    /// for it.
    ///
    /// # Errors
    /// As [`RnnWeights::from_keras`].
    pub fn from_slices(
        input: usize,
        hidden: usize,
        kernel: &[f32],
        recurrent_kernel: &[f32],
        bias: Option<&[f32]>,
        options: KerasRnnOptions,
    ) -> Result<Self> {
        let spec = RnnSpec::new(options.activation, None);
        let m = masking(options.go_backwards, options.zero_output_for_mask, hidden, kernel::selected());
        Ok(KerasSimpleRnn { options, layer: Layer::from_slices(input, kernel, recurrent_kernel, bias, spec, m)? })
    }

    layer_methods!(RnnWeights, KerasRnnOptions);
}
