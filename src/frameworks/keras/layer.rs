//! [`Recurrent`]: a Keras recurrent layer of any cell (`LSTM`, `GRU`, `SimpleRNN`), as `Bidirectional`
//! and `Sequential` hold them. One enum, so the wrappers are written once for every cell; the cells
//! differ only in whether they carry a `c` state and in the layout of their weights.

use super::{
    InitialState, KerasGrads, KerasGru, KerasLstm, KerasMasking, KerasOutputs, KerasSimpleRnn, KerasTape,
    KerasUpstream, StridedInput,
};
use crate::cells::gru::GruWeights;
use crate::cells::rnn::RnnWeights;
use crate::cells::weights::LstmWeights;
use crate::engine::{par_join, ForwardStats, Job, JobScratch, OutRegion, StateIn, StateOut, Workspace};
use crate::error::{Error, ErrorKind, Result};
use crate::kernel::{Backend, CellKernel};
use crate::reference::KerasResult;
use crate::view::SeqView;

/// A Keras recurrent layer of any cell.
#[derive(Clone, Debug)]
// A few hundred bytes per layer of a model, built once: the GRU's extra packed panels and biases are
// not worth an indirection on every access.
#[allow(clippy::large_enum_variant)]
pub enum Recurrent {
    /// `LSTM`.
    Lstm(KerasLstm),
    /// `GRU`.
    Gru(KerasGru),
    /// `SimpleRNN`.
    SimpleRnn(KerasSimpleRnn),
}

impl From<KerasLstm> for Recurrent {
    fn from(l: KerasLstm) -> Self {
        Recurrent::Lstm(l)
    }
}

impl From<KerasGru> for Recurrent {
    fn from(l: KerasGru) -> Self {
        Recurrent::Gru(l)
    }
}

impl From<KerasSimpleRnn> for Recurrent {
    fn from(l: KerasSimpleRnn) -> Self {
        Recurrent::SimpleRnn(l)
    }
}

/// `$body` with `$l` bound to the layer, whatever its cell.
macro_rules! each {
    ($self:expr, $l:ident => $body:expr) => {
        match $self {
            Recurrent::Lstm($l) => $body,
            Recurrent::Gru($l) => $body,
            Recurrent::SimpleRnn($l) => $body,
        }
    };
}

/// What one engine job of a layer writes and reads, besides the layer itself.
pub(crate) struct JobParts<'a> {
    pub x: StridedInput<'a>,
    pub view: &'a SeqView,
    pub init: Option<StateIn<'a>>,
    /// `(region, flip)` as in [`KerasMasking::job`].
    pub y: Option<(OutRegion<'a>, bool)>,
    pub h_n: Option<StateOut<'a>>,
    /// Only for a layer with a cell state.
    pub c_n: Option<StateOut<'a>>,
}

/// Runs two jobs of one cell type concurrently (unless `threads == 1`).
fn join<C: CellKernel + Sync>(
    a: Job<'_, C>,
    b: Job<'_, C>,
    threads: usize,
    [wa, wb]: &mut [JobScratch; 2],
) -> Result<ForwardStats> {
    let (sa, sb) = par_join(threads, || a.run(wa), || b.run(wb))?;
    Ok(sa?.merge(sb?))
}

impl Recurrent {
    /// Keras' class name: `"LSTM"`, `"GRU"` or `"SimpleRNN"`.
    pub fn name(&self) -> &'static str {
        match self {
            Recurrent::Lstm(_) => "LSTM",
            Recurrent::Gru(_) => "GRU",
            Recurrent::SimpleRnn(_) => "SimpleRNN",
        }
    }

    /// Hidden size `H`.
    pub fn units(&self) -> usize {
        each!(self, l => l.units())
    }

    /// Input features `I`.
    pub fn input_size(&self) -> usize {
        each!(self, l => l.weights().input_size())
    }

    /// The backend the weights are packed for.
    pub fn backend(&self) -> &'static Backend {
        each!(self, l => l.backend())
    }

    /// Whether the cell carries a `c` state (the LSTM).
    pub fn has_cell_state(&self) -> bool {
        matches!(self, Recurrent::Lstm(_))
    }

    /// The mask semantics of the layer's options.
    pub(crate) fn masking(&self) -> KerasMasking {
        each!(self, l => l.masking())
    }

    /// The same layer with `go_backwards` and `zero_output_for_mask` set (the packed weights shared).
    pub(crate) fn with_mask_options(&self, go_backwards: bool, zero_output_for_mask: bool) -> Self {
        match self {
            Recurrent::Lstm(l) => {
                let mut l = l.clone();
                l.options = l.options.go_backwards(go_backwards).zero_output_for_mask(zero_output_for_mask);
                Recurrent::Lstm(l)
            }
            Recurrent::Gru(l) => Recurrent::Gru(l.with_mask_options(go_backwards, zero_output_for_mask)),
            Recurrent::SimpleRnn(l) => Recurrent::SimpleRnn(l.with_mask_options(go_backwards, zero_output_for_mask)),
        }
    }

    /// Whether `other` is the same cell with the same options and sizes (its weights may differ).
    pub(crate) fn same_config(&self, other: &Recurrent) -> bool {
        let sizes = (self.input_size(), self.units()) == (other.input_size(), other.units());
        sizes
            && match (self, other) {
                (Recurrent::Lstm(a), Recurrent::Lstm(b)) => {
                    a.options() == b.options() && a.weights().peephole().is_none() == b.weights().peephole().is_none()
                }
                (Recurrent::Gru(a), Recurrent::Gru(b)) => a.options() == b.options(),
                (Recurrent::SimpleRnn(a), Recurrent::SimpleRnn(b)) => a.options() == b.options(),
                _ => false,
            }
    }

    /// `initial` as a cell of this kind takes it: `(h, c)`, `c` empty for a cell without one.
    fn initial_h<'a>(&self, initial: Option<InitialState<'a>>) -> Result<Option<&'a [f32]>> {
        match initial {
            Some(s) if !self.has_cell_state() && !s.c.is_empty() => {
                Err(Error::argument(format!("initial c: a {} layer has no cell state", self.name())))
            }
            s => Ok(s.map(|s| s.h)),
        }
    }

    /// The forward on an input described by strides.
    pub(crate) fn forward_strided(
        &self,
        x: StridedInput<'_>,
        view: &SeqView,
        initial: Option<InitialState<'_>>,
        out: KerasOutputs<'_>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        match self {
            Recurrent::Lstm(l) => l.forward_strided(x, view, initial, out, None, threads, ws),
            Recurrent::Gru(l) => l.forward_strided(x, view, self.initial_h(initial)?, out, threads, ws),
            Recurrent::SimpleRnn(l) => l.forward_strided(x, view, self.initial_h(initial)?, out, threads, ws),
        }
    }

    /// The layer's `forward_train` ([`KerasLstm::forward_train`], ...).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_train(
        &self,
        x: &[f32],
        view: &SeqView,
        initial: Option<InitialState<'_>>,
        out: KerasOutputs<'_>,
        tape: &mut KerasTape,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<ForwardStats> {
        match self {
            Recurrent::Lstm(l) => l.forward_train(x, view, initial, out, tape, threads, ws),
            Recurrent::Gru(l) => l.forward_train(x, view, self.initial_h(initial)?, out, tape, threads, ws),
            Recurrent::SimpleRnn(l) => l.forward_train(x, view, self.initial_h(initial)?, out, tape, threads, ws),
        }
    }

    /// The layer's `backward` ([`KerasLstm::backward`], ...).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &self,
        x: &[f32],
        view: &SeqView,
        initial: Option<InitialState<'_>>,
        tape: &KerasTape,
        up: KerasUpstream<'_>,
        grads: KerasGrads<'_>,
        threads: usize,
    ) -> Result<ForwardStats> {
        match self {
            Recurrent::Lstm(l) => l.backward(x, view, initial, tape, up, grads, threads),
            Recurrent::Gru(l) => l.backward(x, view, self.initial_h(initial)?, tape, up, grads, threads),
            Recurrent::SimpleRnn(l) => l.backward(x, view, self.initial_h(initial)?, tape, up, grads, threads),
        }
    }

    /// The layer on the [reference](mod@crate::reference) implementation.
    pub(crate) fn forward_reference(
        &self,
        x: &[f32],
        view: &SeqView,
        initial: Option<InitialState<'_>>,
    ) -> Result<KerasResult> {
        match self {
            Recurrent::Lstm(l) => l.forward_reference(x, view, initial),
            Recurrent::Gru(l) => l.forward_reference(x, view, self.initial_h(initial)?),
            Recurrent::SimpleRnn(l) => l.forward_reference(x, view, self.initial_h(initial)?),
        }
    }

    /// Bytes a [`KerasTape`] of this layer holds after a training forward on `view`.
    pub fn tape_bytes(&self, view: &SeqView) -> usize {
        each!(self, l => l.tape_bytes(view))
    }

    /// The lengths of the three tensors of [`keras_weights`](Self::keras_weights).
    pub fn keras_weight_lens(&self) -> [usize; 3] {
        let (i, h) = (self.input_size(), self.units());
        match self {
            Recurrent::Lstm(_) => [i * 4 * h, h * 4 * h, 4 * h],
            Recurrent::Gru(l) => l.keras_weight_lens(),
            Recurrent::SimpleRnn(l) => l.keras_weight_lens(),
        }
    }

    /// Whether the layer can be trained (an LSTM with peepholes, which Keras does not have, cannot).
    pub fn trainable(&self) -> bool {
        !matches!(self, Recurrent::Lstm(l) if l.weights().peephole().is_some())
    }

    /// The weights as Keras' `get_weights()` returns them: `kernel [I, G H]`, `recurrent_kernel [H, G H]`,
    /// `bias` (`[G H]`; the GRU with `reset_after`: `[2, 3H]`).
    pub fn keras_weights(&self) -> [Vec<f32>; 3] {
        match self {
            Recurrent::Lstm(l) => {
                let w = l.weights();
                [w.kernel().to_vec(), w.recurrent().to_vec(), w.bias().to_vec()]
            }
            Recurrent::Gru(l) => {
                let w = l.weights();
                let mut bias = w.bias_input().to_vec();
                if l.options().reset_after {
                    bias.extend_from_slice(w.bias_recurrent());
                }
                [w.kernel().to_vec(), w.recurrent().to_vec(), bias]
            }
            Recurrent::SimpleRnn(l) => {
                let w = l.weights();
                [w.kernel().to_vec(), w.recurrent().to_vec(), w.bias().to_vec()]
            }
        }
    }

    /// The same layer (options, backend, schedule) with the weights of Keras' `set_weights([kernel,
    /// recurrent_kernel, bias])`, repacked.
    ///
    /// # Errors
    /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) for a tensor of the wrong length;
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for an LSTM with peepholes (Keras has
    /// none).
    pub fn with_keras_weights(&self, kernel: &[f32], recurrent: &[f32], bias: &[f32]) -> Result<Self> {
        let (i, h) = (self.input_size(), self.units());
        Ok(match self {
            Recurrent::Lstm(l) => {
                if l.weights().peephole().is_some() {
                    return Err(Error::argument("an LSTM layer with peepholes has no Keras weights"));
                }
                let w = LstmWeights::from_keras(i, h, kernel, recurrent, Some(bias))?;
                Recurrent::Lstm(KerasLstm::with_backend(w, *l.options(), l.backend())?.with_schedule(l.schedule))
            }
            Recurrent::Gru(l) => {
                let w = GruWeights::from_keras(i, h, kernel, recurrent, Some(bias), l.options().reset_after)?;
                let m = l.masking();
                Recurrent::Gru(KerasGru::with_backend(w, *l.options(), m.backend)?.with_schedule(m.schedule))
            }
            Recurrent::SimpleRnn(l) => {
                let w = RnnWeights::from_keras(i, h, kernel, recurrent, Some(bias))?;
                let m = l.masking();
                Recurrent::SimpleRnn(
                    KerasSimpleRnn::with_backend(w, *l.options(), m.backend)?.with_schedule(m.schedule),
                )
            }
        })
    }

    /// Runs `self` on `a` and `other` (the same cell) on `b`, concurrently unless `threads == 1`.
    pub(crate) fn run_pair(
        &self,
        other: &Recurrent,
        a: JobParts<'_>,
        b: JobParts<'_>,
        threads: usize,
        jobs: &mut [JobScratch; 2],
    ) -> Result<ForwardStats> {
        macro_rules! h_only {
            ($l:expr, $p:expr) => {
                $l.job($p.x, $p.view, $p.init, $p.y, $p.h_n, threads)
            };
        }
        if !self.has_cell_state() && (a.c_n.is_some() || b.c_n.is_some()) {
            return Err(Error::new(ErrorKind::Internal, "c_n of a cell without one"));
        }
        match (self, other) {
            (Recurrent::Lstm(f), Recurrent::Lstm(g)) => {
                let jf = f.job(a.x, a.view, a.init, a.y, a.h_n, a.c_n, None, threads);
                let jg = g.job(b.x, b.view, b.init, b.y, b.h_n, b.c_n, None, threads);
                join(jf, jg, threads, jobs)
            }
            (Recurrent::Gru(f), Recurrent::Gru(g)) => join(h_only!(f, a), h_only!(g, b), threads, jobs),
            (Recurrent::SimpleRnn(f), Recurrent::SimpleRnn(g)) => join(h_only!(f, a), h_only!(g, b), threads, jobs),
            _ => Err(Error::new(ErrorKind::Internal, "a pair of layers of different cells")),
        }
    }
}
