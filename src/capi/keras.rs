//! The Keras LSTM as a layer kind of the C ABI ([`Kind`] for [`MrnnKerasLstm`]): its attributes' values
//! (`keras_args`), its sizes (`KerasSizes`), its pointer groups and the runs of its packed layer. Every
//! Keras function validates and runs through the one path of every kind (module `layer`).
//!
//! A run's inputs (`KerasInput`) serve the forward, the forward that fills a tape and the backward,
//! whether they are the caller's buffers or a tape's copies of them.
//!
//! The Keras GRU and SimpleRNN kinds (module `gru`) share what is not the LSTM's own: the fields of an
//! attributes struct and their checks (`KerasFields`, `keras_values`), the sizes for any gate count
//! (`KerasSizes` of `KerasShapes`), the pointer groups and their checks (`keras_require`, `keras_extents`;
//! `initial_c` and `c_n` are NULL for them).

use super::handle::{keras_attrs_match, Core, MrnnKerasLstm};
use super::layer::{Kind, Ptrs, TrainKind};
use super::train::{KerasRecord, Record};
use super::*;
use crate::frameworks::keras::{KerasGrads, KerasTape, KerasUpstream};

/// The validated values of a Keras attributes struct: the layer options (`O`: of the LSTM, GRU or
/// SimpleRNN), the sizes and the thread count.
#[derive(Debug)]
pub(super) struct KerasArgs<O = KerasLstmOptions> {
    pub(super) options: O,
    pub(super) b: usize,
    pub(super) t: usize,
    pub(super) i: usize,
    pub(super) h: usize,
    pub(super) threads: usize,
}

/// The fields of a Keras attributes struct (`MrnnKerasLstmAttrs`, `MrnnKerasGruAttrs`,
/// `MrnnKerasRnnAttrs`), in their order; `None`: the struct has no such field.
#[derive(Clone, Copy, Debug)]
pub(super) struct KerasFields {
    pub(super) sizes: [(&'static str, i64); 4],
    pub(super) go_backwards: i32,
    pub(super) zero_output_for_mask: i32,
    pub(super) activation: i32,
    /// `recurrent_activation`, `recurrent_alpha`, `recurrent_beta`.
    pub(super) recurrent: Option<(i32, f32, f32)>,
    pub(super) reset_after: Option<i32>,
    pub(super) num_threads: i32,
}

/// A Keras attributes struct, seen through its [`KerasFields`].
pub(super) trait KerasAttrs: Copy {
    fn fields(&self) -> KerasFields;
}

impl KerasAttrs for MrnnKerasLstmAttrs {
    fn fields(&self) -> KerasFields {
        KerasFields {
            sizes: keras_sizes(self.batch_size, self.seq_length, self.input_size, self.hidden_size),
            go_backwards: self.go_backwards,
            zero_output_for_mask: self.zero_output_for_mask,
            activation: self.activation,
            recurrent: Some((self.recurrent_activation, self.recurrent_alpha, self.recurrent_beta)),
            reset_after: None,
            num_threads: self.num_threads,
        }
    }
}

/// The four sizes of a Keras attributes struct, named, in their order.
pub(super) fn keras_sizes(b: i64, t: i64, i: i64, h: i64) -> [(&'static str, i64); 4] {
    [("batch_size", b), ("seq_length", t), ("input_size", i), ("hidden_size", h)]
}

/// The checked values of [`KerasFields`].
pub(super) struct KerasValues {
    pub(super) go_backwards: bool,
    pub(super) zero_output_for_mask: bool,
    pub(super) activation: Activation,
    pub(super) recurrent_activation: Option<Activation>,
    pub(super) reset_after: Option<bool>,
    pub(super) dims: [usize; 4],
    pub(super) threads: usize,
}

impl KerasValues {
    /// The [`KerasArgs`] of these values with the layer options `options`.
    pub(super) fn args<O>(&self, options: O) -> KerasArgs<O> {
        let [b, t, i, h] = self.dims;
        KerasArgs { options, b, t, i, h, threads: self.threads }
    }
}

/// Step 2 and the size conversions of step 3: every value check on the fields of a Keras attributes
/// struct, in field order.
pub(super) fn keras_values(f: &KerasFields) -> Result<KerasValues> {
    layer_sizes(&f.sizes)?;
    let go_backwards = flag("go_backwards", f.go_backwards)?;
    let zero_output_for_mask = flag("zero_output_for_mask", f.zero_output_for_mask)?;
    let activation = keras_activation(f.activation, f32::NAN, f32::NAN)
        .map_err(|e| Error::argument(format!("activation: {}", e.message())))?;
    let recurrent_activation = f
        .recurrent
        .map(|(code, alpha, beta)| {
            keras_activation(code, alpha, beta)
                .map_err(|e| Error::argument(format!("recurrent_activation: {}", e.message())))
        })
        .transpose()?;
    let reset_after = f.reset_after.map(|v| flag("reset_after", v)).transpose()?;
    let threads = thread_count(f.num_threads)?;
    let dims = dims(f.sizes)?;
    Ok(KerasValues { go_backwards, zero_output_for_mask, activation, recurrent_activation, reset_after, dims, threads })
}

/// Step 2 for the Keras LSTM.
fn keras_args(a: &MrnnKerasLstmAttrs) -> Result<KerasArgs> {
    let v = keras_values(&a.fields())?;
    let mut options = KerasLstmOptions::default()
        .activation(v.activation)
        .go_backwards(v.go_backwards)
        .zero_output_for_mask(v.zero_output_for_mask);
    if let Some(recurrent) = v.recurrent_activation {
        options = options.recurrent_activation(recurrent);
    }
    Ok(v.args(options))
}

/// The shapes of a Keras layer's weights: gate blocks `G` (LSTM 4, GRU 3, SimpleRNN 1), bias rows, and
/// the names the overflow messages give them.
#[derive(Debug)]
pub(super) struct KerasShapes {
    pub(super) gates: usize,
    pub(super) bias_rows: usize,
    pub(super) kernel: &'static str,
    pub(super) recurrent: &'static str,
    pub(super) bias: &'static str,
}

/// The Keras LSTM's: `kernel [I,4H]`, `recurrent_kernel [H,4H]`, `bias [4H]`.
const LSTM_SHAPES: KerasShapes = KerasShapes {
    gates: 4,
    bias_rows: 1,
    kernel: "kernel [I,4H]",
    recurrent: "recurrent_kernel [H,4H]",
    bias: "bias [4H]",
};

/// The dimensions of a Keras call and the element counts of its tensors (step 3, checked in this order).
pub(super) struct KerasSizes {
    b: usize,
    t: usize,
    i: usize,
    h: usize,
    bias: usize,
    x: usize,
    mask: usize,
    kernel: usize,
    recurrent: usize,
    state: usize,
    y: usize,
}

impl KerasSizes {
    /// A run of `B` sequences of `T` steps through a layer of sizes `I`, `H` and weights `shapes` (`B = T =
    /// 0`: the weights alone).
    pub(super) fn new(b: usize, t: usize, i: usize, h: usize, shapes: &KerasShapes) -> Result<Self> {
        let gates = checked_product(&[shapes.gates, h], shapes.bias)?;
        Ok(KerasSizes {
            b,
            t,
            i,
            h,
            bias: checked_product(&[shapes.bias_rows, gates], shapes.bias)?,
            x: checked_product(&[b, t, i], "x [B,T,I]")?,
            mask: checked_product(&[b, t], "mask [B,T]")?,
            kernel: checked_product(&[i, gates], shapes.kernel)?,
            recurrent: checked_product(&[h, gates], shapes.recurrent)?,
            state: checked_product(&[b, h], "state [B,H]")?,
            y: checked_product(&[b, t, h], "y [B,T,H]")?,
        })
    }

    /// `I`, `H`.
    pub(super) fn layer(&self) -> (usize, usize) {
        (self.i, self.h)
    }
}

/// The inputs of a run, as caller pointers: `x [B,T,I]` (required), `mask [B,T]`, initial states `[B,H]`.
#[derive(Clone, Copy)]
pub(super) struct KerasInputPtrs {
    pub(super) x: *const f32,
    pub(super) mask: *const u8,
    pub(super) initial_h: *const f32,
    pub(super) initial_c: *const f32,
}

impl KerasInputPtrs {
    fn extents(&self, n: &KerasSizes) -> [Option<Extent>; 4] {
        [
            Extent::new("x", self.x, n.x, false),
            Extent::new("mask", self.mask, n.mask, false),
            Extent::new("initial_h", self.initial_h, n.state, false),
            Extent::new("initial_c", self.initial_c, n.state, false),
        ]
    }

    /// The inputs, with the valid steps of the mask.
    ///
    /// # Safety
    /// Steps 1 to 4 passed for these pointers with the sizes `n`; each non-NULL one is valid for reading
    /// its size during `'a`, and nothing writes it meanwhile (the caller's contract).
    pub(super) unsafe fn slices<'a>(&self, n: &KerasSizes) -> Result<KerasInput<&'a [f32]>> {
        // SAFETY: each pointer is NULL or was checked aligned and non-wrapping with the very length passed
        // here, which `checked_product` bounds to isize::MAX bytes; valid by this function's contract.
        let (x, mask, initial_h, initial_c) = unsafe {
            (
                required("x", self.x, n.x)?,
                input(self.mask, n.mask),
                input(self.initial_h, n.state),
                input(self.initial_c, n.state),
            )
        };
        let view = match mask {
            Some(m) => SeqView::from_mask_bytes(m, n.b, n.t)?,
            None => SeqView::full(n.b, n.t),
        };
        Ok(KerasInput { x, view, initial_h, initial_c })
    }
}

/// The weight slices: `kernel`, `recurrent_kernel`, `bias`.
pub(super) type KerasWeightSlices<'a> = (&'a [f32], &'a [f32], Option<&'a [f32]>);

/// The weights, as caller pointers: `kernel [I,4H]`, `recurrent_kernel [H,4H]` (both required), `bias [4H]`.
#[derive(Clone, Copy)]
pub(super) struct KerasWeightPtrs {
    pub(super) kernel: *const f32,
    pub(super) recurrent_kernel: *const f32,
    pub(super) bias: *const f32,
}

impl KerasWeightPtrs {
    fn extents(&self, n: &KerasSizes) -> [Option<Extent>; 3] {
        [
            Extent::new("kernel", self.kernel, n.kernel, false),
            Extent::new("recurrent_kernel", self.recurrent_kernel, n.recurrent, false),
            Extent::new("bias", self.bias, n.bias, false),
        ]
    }

    /// The weight slices: `kernel`, `recurrent_kernel`, `bias`.
    ///
    /// # Safety
    /// As [`KerasInputPtrs::slices`].
    pub(super) unsafe fn slices<'a>(&self, n: &KerasSizes) -> Result<KerasWeightSlices<'a>> {
        // SAFETY: as in `KerasInputPtrs::slices`.
        unsafe {
            Ok((
                required("kernel", self.kernel, n.kernel)?,
                required("recurrent_kernel", self.recurrent_kernel, n.recurrent)?,
                input(self.bias, n.bias),
            ))
        }
    }

    /// The LSTM packed from the weights.
    ///
    /// # Safety
    /// As [`KerasInputPtrs::slices`].
    unsafe fn pack(&self, n: &KerasSizes, options: KerasLstmOptions) -> Result<KerasLstm> {
        // SAFETY: forwarded; the slices live for this call only.
        let (kernel, recurrent_kernel, bias) = unsafe { self.slices(n) }?;
        KerasLstm::from_slices(n.i, n.h, kernel, recurrent_kernel, bias, options)
    }
}

/// The outputs of a run, as caller pointers: `y [B,T,H]`, `last_output`, `h_n`, `c_n [B,H]`.
#[derive(Clone, Copy)]
pub(super) struct KerasOutputPtrs {
    pub(super) y: *mut f32,
    pub(super) last_output: *mut f32,
    pub(super) h_n: *mut f32,
    pub(super) c_n: *mut f32,
}

impl KerasOutputPtrs {
    fn extents(&self, n: &KerasSizes) -> [Option<Extent>; 4] {
        [
            Extent::new("y", self.y, n.y, true),
            Extent::new("last_output", self.last_output, n.state, true),
            Extent::new("h_n", self.h_n, n.state, true),
            Extent::new("c_n", self.c_n, n.state, true),
        ]
    }

    /// The output slices.
    ///
    /// # Safety
    /// As [`KerasInputPtrs::slices`], for writes; step 4 proved that no output overlaps another buffer, and
    /// nothing else accesses them during `'a`.
    pub(super) unsafe fn slices<'a>(&self, n: &KerasSizes) -> KerasOutputs<'a> {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            KerasOutputs {
                y: output(self.y, n.y),
                last_output: output(self.last_output, n.state),
                h_n: output(self.h_n, n.state),
                c_n: output(self.c_n, n.state),
            }
        }
    }
}

/// The upstream gradients of a Keras backward, as caller pointers: `dy [B,T,H]`, `d_last_output`,
/// `d_h_n`, `d_c_n [B,H]`.
#[derive(Clone, Copy)]
pub(super) struct KerasUpstreamPtrs {
    pub(super) dy: *const f32,
    pub(super) d_last_output: *const f32,
    pub(super) d_h_n: *const f32,
    pub(super) d_c_n: *const f32,
}

/// The gradient outputs of a Keras backward, as caller pointers, shaped as `x`, the weights and the
/// initial states.
#[derive(Clone, Copy)]
pub(super) struct KerasGradOutPtrs {
    pub(super) dx: *mut f32,
    pub(super) d_kernel: *mut f32,
    pub(super) d_recurrent_kernel: *mut f32,
    pub(super) d_bias: *mut f32,
    pub(super) d_initial_h: *mut f32,
    pub(super) d_initial_c: *mut f32,
}

/// The upstream gradients and gradient outputs of a Keras backward.
#[derive(Clone, Copy)]
pub(super) struct KerasGradPtrs {
    pub(super) up: KerasUpstreamPtrs,
    pub(super) out: KerasGradOutPtrs,
}

impl KerasGradPtrs {
    /// Whether any gradient output is given.
    pub(super) fn wants(&self) -> bool {
        let g = &self.out;
        [g.dx, g.d_kernel, g.d_recurrent_kernel, g.d_bias, g.d_initial_h, g.d_initial_c].iter().any(|p| !p.is_null())
    }

    /// Step 4 for the gradients: the upstream gradients, then the gradient outputs.
    pub(super) fn extents(&self, n: &KerasSizes) -> [Option<Extent>; 10] {
        let (up, out) = (&self.up, &self.out);
        [
            Extent::new("dy", up.dy, n.y, false),
            Extent::new("d_last_output", up.d_last_output, n.state, false),
            Extent::new("d_h_n", up.d_h_n, n.state, false),
            Extent::new("d_c_n", up.d_c_n, n.state, false),
            Extent::new("dx", out.dx, n.x, true),
            Extent::new("d_kernel", out.d_kernel, n.kernel, true),
            Extent::new("d_recurrent_kernel", out.d_recurrent_kernel, n.recurrent, true),
            Extent::new("d_bias", out.d_bias, n.bias, true),
            Extent::new("d_initial_h", out.d_initial_h, n.state, true),
            Extent::new("d_initial_c", out.d_initial_c, n.state, true),
        ]
    }

    /// The upstream and gradient slices.
    ///
    /// # Safety
    /// As [`KerasOutputPtrs::slices`].
    pub(super) unsafe fn slices<'a>(&self, n: &KerasSizes) -> (KerasUpstream<'a>, KerasGrads<'a>) {
        let (up, out) = (&self.up, &self.out);
        // SAFETY: forwarded from this function's contract.
        unsafe {
            (
                KerasUpstream {
                    dy: input(up.dy, n.y),
                    d_last_output: input(up.d_last_output, n.state),
                    d_h_n: input(up.d_h_n, n.state),
                    d_c_n: input(up.d_c_n, n.state),
                },
                KerasGrads {
                    dx: output(out.dx, n.x),
                    d_kernel: output(out.d_kernel, n.kernel),
                    d_recurrent_kernel: output(out.d_recurrent_kernel, n.recurrent),
                    d_bias: output(out.d_bias, n.bias),
                    d_initial_h: output(out.d_initial_h, n.state),
                    d_initial_c: output(out.d_initial_c, n.state),
                },
            )
        }
    }
}

/// A run's validated inputs: `x [B,T,I]`, its valid steps, and the halves of the initial state as given;
/// the caller's buffers (`X = &[f32]`) or a tape's copies of them (`X = Vec<f32>`).
#[derive(Debug)]
pub(super) struct KerasInput<X> {
    pub(super) x: X,
    pub(super) view: SeqView,
    pub(super) initial_h: Option<X>,
    initial_c: Option<X>,
}

impl<X: AsRef<[f32]>> KerasInput<X> {
    /// The initial state for a layer of `units`: a missing half is zeros (`zeros`, resized), both missing
    /// is `None`.
    fn initial<'s>(&'s self, units: usize, zeros: &'s mut Vec<f32>) -> Result<Option<InitialState<'s>>> {
        Ok(match (self.initial_h.as_ref().map(AsRef::as_ref), self.initial_c.as_ref().map(AsRef::as_ref)) {
            (None, None) => None,
            (Some(h), Some(c)) => Some(InitialState { h, c }),
            (h, c) => {
                zeros.clear();
                zeros.resize(checked_product(&[self.view.batch(), units], "state [B,H]")?, 0.0);
                let zeros: &'s [f32] = zeros;
                Some(InitialState { h: h.unwrap_or(zeros), c: c.unwrap_or(zeros) })
            }
        })
    }

    /// The forward pass through a packed layer: `forward_in`, or with a tape `forward_train`, which fills it.
    fn forward(
        &self,
        layer: &KerasLstm,
        out: KerasOutputs<'_>,
        tape: Option<&mut KerasTape>,
        threads: usize,
        scratch: &mut Scratch,
    ) -> Result<()> {
        let Scratch { workspace, zeros } = scratch;
        let (x, view) = (self.x.as_ref(), &self.view);
        let initial = self.initial(layer.units(), zeros)?;
        match tape {
            Some(tape) => layer.forward_train(x, view, initial, out, tape, threads, workspace),
            None => layer.forward_in(x, view, initial, out, threads, workspace),
        }
        .map(drop)
    }

    /// The gradients of the forward pass that filled `tape` with these inputs.
    fn backward(
        &self,
        layer: &KerasLstm,
        tape: &KerasTape,
        (up, grads): (KerasUpstream<'_>, KerasGrads<'_>),
        threads: usize,
        zeros: &mut Vec<f32>,
    ) -> Result<()> {
        let initial = self.initial(layer.units(), zeros)?;
        layer.backward(self.x.as_ref(), &self.view, initial, tape, up, grads, threads).map(drop)
    }
}

impl KerasInput<&[f32]> {
    /// The tape's own copies, so that the caller may reuse its buffers once `run_train` returns.
    pub(super) fn copy(&self) -> KerasInput<Vec<f32>> {
        KerasInput {
            x: self.x.to_vec(),
            view: self.view.clone(),
            initial_h: self.initial_h.map(<[f32]>::to_vec),
            initial_c: self.initial_c.map(<[f32]>::to_vec),
        }
    }
}

impl KerasInput<Vec<f32>> {
    /// Bytes held (the vectors' capacities, the view's runs and ranges).
    pub(super) fn bytes(&self) -> usize {
        let floats = self.x.capacity()
            + self.initial_h.as_ref().map_or(0, Vec::capacity)
            + self.initial_c.as_ref().map_or(0, Vec::capacity);
        let runs: usize = (0..self.view.batch()).map(|s| self.view.run_count(s)).sum();
        floats * 4
            + runs * std::mem::size_of::<crate::view::Run>()
            + self.view.batch() * 2 * std::mem::size_of::<usize>()
    }
}

/// Step 1 for the groups of a Keras kind: `x`, `kernel`, `recurrent_kernel`.
pub(super) fn keras_require<K>(p: &Ptrs<K>) -> Result<()>
where
    K: Kind<Input = KerasInputPtrs, Weights = KerasWeightPtrs>,
{
    if let Some(input) = &p.input {
        require("x", input.x)?;
    }
    if let Some(w) = &p.weights {
        require("kernel", w.kernel)?;
        require("recurrent_kernel", w.recurrent_kernel)?;
    }
    Ok(())
}

/// Step 4 for the groups of a Keras kind: `x`, `mask`, the weights, the initial states, the outputs.
pub(super) fn keras_extents<K>(p: &Ptrs<K>, n: &KerasSizes) -> Vec<Option<Extent>>
where
    K: Kind<Input = KerasInputPtrs, Weights = KerasWeightPtrs, Output = KerasOutputPtrs>,
{
    let [x, mask, initial_h, initial_c] = p.input.map_or([None; 4], |i| i.extents(n));
    let weights = p.weights.map_or([None; 3], |w| w.extents(n));
    let outputs = p.output.map_or([None; 4], |o| o.extents(n));
    [x, mask].into_iter().chain(weights).chain([initial_h, initial_c]).chain(outputs).collect()
}

impl Kind for MrnnKerasLstm {
    const NAME: &'static str = "Keras LSTM";
    const PREFIX: &'static str = "mrnn_keras_lstm";
    type Attrs = MrnnKerasLstmAttrs;
    type Args = KerasArgs;
    type Sizes = KerasSizes;
    type Packed = KerasLstm;
    type Input = KerasInputPtrs;
    type Weights = KerasWeightPtrs;
    type Output = KerasOutputPtrs;

    fn core(&self) -> &Core<KerasLstm> {
        &self.core
    }

    fn fixed(&self) -> &KerasArgs {
        &self.args
    }

    fn new_handle(packed: KerasLstm, args: KerasArgs, attrs: MrnnKerasLstmAttrs) -> Self {
        MrnnKerasLstm { core: Core::new(packed), args, attrs }
    }

    /// `x`, `kernel`, `recurrent_kernel`.
    fn require(p: &Ptrs<Self>) -> Result<()> {
        keras_require(p)
    }

    fn args(a: &MrnnKerasLstmAttrs, handle: Option<&Self>) -> Result<KerasArgs> {
        let args = keras_args(a)?;
        if let Some(handle) = handle {
            let (run, fixed) =
                (Some(args.options.recurrent_activation), Some(handle.args.options.recurrent_activation));
            keras_attrs_match(&a.fields(), run, &handle.attrs.fields(), fixed)?;
        }
        Ok(args)
    }

    fn threads(args: &KerasArgs) -> usize {
        args.threads
    }

    fn sizes(args: &KerasArgs, run: bool) -> Result<KerasSizes> {
        let (b, t) = if run { (args.b, args.t) } else { (0, 0) };
        KerasSizes::new(b, t, args.i, args.h, &LSTM_SHAPES)
    }

    /// `x`, `mask`, the weights, the initial states, the outputs.
    fn extents(p: &Ptrs<Self>, n: &KerasSizes) -> Vec<Option<Extent>> {
        keras_extents(p, n)
    }

    unsafe fn pack(weights: &KerasWeightPtrs, n: &KerasSizes, args: &KerasArgs) -> Result<KerasLstm> {
        // SAFETY: forwarded from this function's contract.
        unsafe { weights.pack(n, args.options) }
    }

    unsafe fn forward(
        layer: &KerasLstm,
        input: &KerasInputPtrs,
        output: &KerasOutputPtrs,
        n: &KerasSizes,
        threads: usize,
        scratch: &mut Scratch,
    ) -> Result<()> {
        // SAFETY: forwarded from this function's contract.
        let (input, out) = unsafe { (input.slices(n)?, output.slices(n)) };
        input.forward(layer, out, None, threads, scratch)
    }
}

impl TrainKind for MrnnKerasLstm {
    type Grads = KerasGradPtrs;
    type Tape = KerasTape;
    type Copies = KerasInput<Vec<f32>>;

    fn tape_sizes(args: &KerasArgs, copies: &KerasInput<Vec<f32>>) -> Result<KerasSizes> {
        KerasSizes::new(copies.view.batch(), copies.view.time(), args.i, args.h, &LSTM_SHAPES)
    }

    /// The upstream gradients, then the gradient outputs.
    fn grad_extents(g: &KerasGradPtrs, n: &KerasSizes) -> Vec<Option<Extent>> {
        g.extents(n).to_vec()
    }

    fn wants(g: &KerasGradPtrs) -> bool {
        g.wants()
    }

    unsafe fn forward_train(
        layer: &KerasLstm,
        input: &KerasInputPtrs,
        output: &KerasOutputPtrs,
        n: &KerasSizes,
        threads: usize,
        tape: &mut KerasTape,
        scratch: &mut Scratch,
    ) -> Result<KerasInput<Vec<f32>>> {
        // SAFETY: forwarded from this function's contract.
        let (input, out) = unsafe { (input.slices(n)?, output.slices(n)) };
        input.forward(layer, out, Some(tape), threads, scratch)?;
        Ok(input.copy())
    }

    unsafe fn backward_once(
        layer: &KerasLstm,
        input: &KerasInputPtrs,
        grads: &KerasGradPtrs,
        n: &KerasSizes,
        threads: usize,
        scratch: &mut Scratch,
    ) -> Result<()> {
        // SAFETY: forwarded from this function's contract.
        let (input, grads) = unsafe { (input.slices(n)?, grads.slices(n)) };
        let mut tape = KerasTape::new();
        input.forward(layer, KerasOutputs::default(), Some(&mut tape), threads, scratch)?;
        input.backward(layer, &tape, grads, threads, &mut scratch.zeros)
    }

    unsafe fn backward(layer: &KerasLstm, record: &KerasRecord, grads: &KerasGradPtrs, n: &KerasSizes) -> Result<()> {
        // SAFETY: forwarded from this function's contract.
        let grads = unsafe { grads.slices(n) };
        record.input.backward(layer, &record.tape, grads, record.threads, &mut Vec::new())
    }

    fn record(run: KerasRecord) -> Record {
        Record::Keras(run)
    }

    fn recorded(record: &Record) -> Option<&KerasRecord> {
        record.keras()
    }
}
