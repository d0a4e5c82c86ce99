//! `nn.GRU` and `nn.RNN`, forward and backward: the stack with a cell whose only state is `h`.

use super::{
    Call, LayerOutputs, Stack, TorchCell, TorchGrads, TorchOutputs, TorchParams, TorchResult, TorchTape, TorchUpstream,
};
use crate::cells::activation::Activation;
use crate::cells::grads::PytorchLayout;
use crate::cells::gru::GruSpec;
use crate::cells::rnn::RnnSpec;
use crate::engine::{ForwardStats, Workspace};
use crate::error::{Error, Result};
use crate::frameworks::family::{Family, Gru, Rnn};
use crate::kernel::{self, Backend};
use crate::reference::{self, HStep, Rounding};

impl<F: Family> TorchCell for F {
    type Weights = F::Weights;
    type Packed = F::Packed;
    type Spec = F::Spec;
    type Kernel<'a>
        = <F as Family>::Kernel<'a>
    where
        Self: 'a;
    type Grads = F::Grads;
    type Back<'a>
        = F::Back<'a>
    where
        Self: 'a;
    const RECORD: usize = F::RECORD;
    fn pack_pytorch(input: usize, hidden: usize, p: &TorchParams<'_>, spec: &F::Spec, nb: usize) -> Result<F::Packed> {
        F::pack_pytorch(input, hidden, p, spec, nb)
    }
    fn canonical(packed: &F::Packed) -> F::Weights {
        <F as Family>::canonical(packed)
    }
    fn backward_cell<'a>(w: &F::Weights, packed: &'a F::Packed, spec: &'a F::Spec) -> Result<F::Back<'a>> {
        <F as Family>::backward_cell(w, packed, spec)
    }
    fn zero_grads(w: &F::Weights) -> F::Grads {
        <F as Family>::zero_grads(w)
    }
    fn grads_to_pytorch(g: &F::Grads) -> PytorchLayout<f32> {
        <F as Family>::grads_to_pytorch(g)
    }
    fn kernel<'a>(packed: &'a F::Packed, spec: &'a F::Spec) -> Self::Kernel<'a> {
        <F as Family>::kernel(packed, spec)
    }
    fn reference_layer(
        spec: &F::Spec,
        dirs: &[(&F::Weights, bool)],
        x: &[f32],
        (t, b): (usize, usize),
        lengths: &[usize],
        (h0, _): (Option<&[f32]>, Option<&[f32]>),
        rounding: Rounding,
    ) -> Result<LayerOutputs> {
        let Some(&(first, _)) = dirs.first() else {
            return Err(Error::argument("no direction"));
        };
        let steps: Vec<_> =
            dirs.iter().map(|&(w, _)| move |x: &[f32], h: &[f32]| F::step(spec, w, x, h, rounding)).collect();
        let dirs: Vec<(HStep<'_>, bool)> =
            steps.iter().zip(dirs).map(|(s, &(_, reverse))| (s as HStep<'_>, reverse)).collect();
        let (y, y_h) = reference::onnx_h_only(&dirs, F::sizes(first), x, t, b, lengths, h0)?;
        Ok((y, y_h, Vec::new()))
    }
}

/// `nn.RNN`'s `nonlinearity`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Nonlinearity {
    /// `"tanh"` (PyTorch's default).
    #[default]
    Tanh,
    /// `"relu"`.
    Relu,
}

impl Nonlinearity {
    /// From PyTorch's name, `"tanh"` or `"relu"`.
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for any other name (PyTorch raises a
    /// `ValueError`).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "tanh" => Ok(Nonlinearity::Tanh),
            "relu" => Ok(Nonlinearity::Relu),
            _ => Err(Error::argument(format!("unknown nonlinearity '{name}' (PyTorch takes 'tanh' or 'relu')"))),
        }
    }

    /// The activation it applies.
    pub fn activation(self) -> Activation {
        match self {
            Nonlinearity::Tanh => Activation::Tanh,
            Nonlinearity::Relu => Activation::Relu,
        }
    }
}

/// The methods both modules share (documented once here, on each module through the macro).
macro_rules! stack_methods {
    () => {
        /// Input size of the first layer.
        pub fn input_size(&self) -> usize {
            self.stack.input_size
        }
        /// Hidden size `H`.
        pub fn hidden_size(&self) -> usize {
            self.stack.hidden
        }
        /// Number of layers `L`.
        pub fn num_layers(&self) -> usize {
            self.stack.num_layers
        }
        /// Whether each layer runs both directions (`D = 2`).
        pub fn bidirectional(&self) -> bool {
            self.stack.bidirectional
        }
        /// The backend the weights are packed for.
        pub fn backend(&self) -> &'static Backend {
            self.stack.backend
        }

        /// Runs the module on `x [T, B, I]` (`[B, T, I]` with `batch_first`) with per-sequence `lengths` in
        /// any order, each in `1..=T`, from `h0 [L*D, B, H]` (zeros when absent). Returns `y` (zeros past
        /// each length) and `h_n` in the original batch order (`c_n` empty). Padded steps are never
        /// computed; results are bitwise identical for every `threads` (0: all cores, 1: the calling
        /// thread).
        ///
        /// # Errors
        /// [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) for tensors of the wrong length;
        /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for a length of 0 or past `T` (PyTorch
        /// refuses both when packing); [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) for sizes that
        /// overflow.
        #[allow(clippy::too_many_arguments)]
        pub fn forward_packed(
            &self,
            x: &[f32],
            seq_len: usize,
            batch: usize,
            batch_first: bool,
            lengths: &[usize],
            h0: Option<&[f32]>,
            threads: usize,
        ) -> Result<(TorchResult, ForwardStats)> {
            let call = Call { x, t: seq_len, b: batch, batch_first, lengths, h0, c0: None };
            self.stack.forward_all(call, threads)
        }

        /// As [`forward_packed`](Self::forward_packed), into caller buffers (`y [T, B, D*H]` or
        /// `[B, T, D*H]`, `h_n [L*D, B, H]`; either may be omitted; `out.c_n` must be `None`) with
        /// caller-owned scratch: the lengths' view and the outputs of the lower layers live in `ws`, so a
        /// warm call with the same lengths and thread count allocates nothing.
        ///
        /// # Errors
        /// As [`forward_packed`](Self::forward_packed); [`ErrorKind::BadShape`](crate::ErrorKind::BadShape)
        /// for an output of the wrong length, [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for
        /// a `c_n` buffer.
        #[allow(clippy::too_many_arguments)]
        pub fn forward_packed_in(
            &self,
            x: &[f32],
            seq_len: usize,
            batch: usize,
            batch_first: bool,
            lengths: &[usize],
            h0: Option<&[f32]>,
            out: TorchOutputs<'_>,
            threads: usize,
            ws: &mut Workspace,
        ) -> Result<ForwardStats> {
            let call = Call { x, t: seq_len, b: batch, batch_first, lengths, h0, c0: None };
            self.stack.run(call, out, None, threads, ws)
        }

        /// [`forward_packed_in`](Self::forward_packed_in) that also fills `tape` for
        /// [`backward_packed`](Self::backward_packed): each layer direction's valid steps (memory
        /// proportional to them) and the outputs of the layers below the last. Outputs are bitwise those of
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
            out: TorchOutputs<'_>,
            tape: &mut TorchTape,
            threads: usize,
            ws: &mut Workspace,
        ) -> Result<ForwardStats> {
            let call = Call { x, t: seq_len, b: batch, batch_first, lengths, h0, c0: None };
            self.stack.run(call, out, Some(tape), threads, ws)
        }

        /// The gradients of a scalar loss through the module, given the gradients `up` of its outputs
        /// (`up.dc_n` must be `None`): the vector-Jacobian product of
        /// [`forward_packed`](Self::forward_packed) at the inputs of the
        /// [`forward_packed_train`](Self::forward_packed_train) call that filled `tape` (pass the same
        /// inputs). Only valid steps are computed; upstream at padded positions of `y` has no effect and
        /// `dx` there is `+0.0`. `grads.params` receives one [`PytorchLayout`] per layer and direction in
        /// PyTorch's order (`grads.dc0` must be `None`). Results are bitwise identical for every `threads`.
        ///
        /// # Errors
        /// As [`forward_packed`](Self::forward_packed);
        /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for a tape filled by a run of another
        /// shape or module kind, or a `dc_n` / `dc0`.
        #[allow(clippy::too_many_arguments)]
        pub fn backward_packed(
            &self,
            x: &[f32],
            seq_len: usize,
            batch: usize,
            batch_first: bool,
            lengths: &[usize],
            h0: Option<&[f32]>,
            tape: &TorchTape,
            up: TorchUpstream<'_>,
            grads: TorchGrads<'_>,
            threads: usize,
        ) -> Result<ForwardStats> {
            let call = Call { x, t: seq_len, b: batch, batch_first, lengths, h0, c0: None };
            self.stack.backward_packed(call, tape, up, grads, threads)
        }

        /// The same computation on the plain [reference](crate::reference::onnx_h_only): each sequence's
        /// valid steps in scalar arithmetic, layer by layer (`c_n` empty).
        ///
        /// # Errors
        /// As [`forward_packed`](Self::forward_packed).
        pub fn forward_packed_reference(
            &self,
            x: &[f32],
            seq_len: usize,
            batch: usize,
            batch_first: bool,
            lengths: &[usize],
            h0: Option<&[f32]>,
        ) -> Result<TorchResult> {
            self.stack.reference(Call { x, t: seq_len, b: batch, batch_first, lengths, h0, c0: None })
        }
    };
}

/// A (possibly stacked, possibly bidirectional) PyTorch `nn.GRU`: gates r, z, n, the reset gate applied
/// after the recurrent matmul (`n = tanh(W_in x + b_in + r ∘ (W_hn h + b_hn))`, `h' = (1 - z) ∘ n + z ∘ h`).
#[derive(Clone, Debug)]
pub struct TorchGru {
    stack: Stack<Gru>,
}

impl TorchGru {
    /// Imports `num_layers * D` parameter sets in PyTorch's order (layer 0 forward, layer 0 reverse, layer 1
    /// forward, ...): `weight_ih [3H, in]`, `weight_hh [3H, H]`, `bias_ih`, `bias_hh [3H]`, gates r, z, n.
    /// Layer 0 takes `input_size` features, later layers `D * hidden`.
    ///
    /// # Errors
    /// [`ErrorKind::BadArgument`](crate::ErrorKind::BadArgument) for zero layers or hidden size, or the
    /// wrong number of parameter sets; [`ErrorKind::BadShape`](crate::ErrorKind::BadShape) for tensors of
    /// the wrong length; [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) for sizes that overflow.
    pub fn new(
        input_size: usize,
        hidden: usize,
        num_layers: usize,
        bidirectional: bool,
        params: &[TorchParams<'_>],
    ) -> Result<Self> {
        Self::with_backend(input_size, hidden, num_layers, bidirectional, params, kernel::selected())
    }

    /// As [`new`](Self::new), for a given backend.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_backend(
        input_size: usize,
        hidden: usize,
        num_layers: usize,
        bidirectional: bool,
        params: &[TorchParams<'_>],
        backend: &'static Backend,
    ) -> Result<Self> {
        let shape = (input_size, hidden, num_layers, bidirectional);
        Ok(TorchGru { stack: Stack::new(shape, params, GruSpec::default(), backend)? })
    }

    stack_methods!();
}

/// A (possibly stacked, possibly bidirectional) PyTorch `nn.RNN`: `h' = f(W_ih x + b_ih + W_hh h + b_hh)`
/// with `f` tanh or relu.
#[derive(Clone, Debug)]
pub struct TorchRnn {
    nonlinearity: Nonlinearity,
    stack: Stack<Rnn>,
}

impl TorchRnn {
    /// Imports `num_layers * D` parameter sets in PyTorch's order (as [`TorchGru::new`]): `weight_ih
    /// [H, in]`, `weight_hh [H, H]`, `bias_ih`, `bias_hh [H]`.
    ///
    /// # Errors
    /// As [`TorchGru::new`].
    pub fn new(
        input_size: usize,
        hidden: usize,
        num_layers: usize,
        bidirectional: bool,
        nonlinearity: Nonlinearity,
        params: &[TorchParams<'_>],
    ) -> Result<Self> {
        Self::with_backend(input_size, hidden, num_layers, bidirectional, nonlinearity, params, kernel::selected())
    }

    /// As [`new`](Self::new), for a given backend.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_backend(
        input_size: usize,
        hidden: usize,
        num_layers: usize,
        bidirectional: bool,
        nonlinearity: Nonlinearity,
        params: &[TorchParams<'_>],
        backend: &'static Backend,
    ) -> Result<Self> {
        let shape = (input_size, hidden, num_layers, bidirectional);
        let spec = RnnSpec::new(nonlinearity.activation(), None);
        Ok(TorchRnn { nonlinearity, stack: Stack::new(shape, params, spec, backend)? })
    }

    /// The nonlinearity.
    pub fn nonlinearity(&self) -> Nonlinearity {
        self.nonlinearity
    }

    stack_methods!();
}
