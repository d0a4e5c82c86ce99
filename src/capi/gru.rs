//! The GRU and the simple RNN through the C ABI (C_ABI.md section 4): the ONNX `GRU` and `RNN` operators
//! and the Keras `GRU` and `SimpleRNN` layers, one-shot and as handles, forward and gradients.
//!
//! ```text
//! mrnn_gru_onnx(attrs, x, w, r, b, lens, h0, y, y_h)         mrnn_rnn_onnx: the same arguments
//! mrnn_gru_keras(attrs, x, mask, kernel, recurrent_kernel, bias, h0, y, last_output, h_n)
//!                                                          mrnn_rnn_keras: the same arguments
//! mrnn_onnx_gru_new(attrs, w, r, b, &layer) / _run(layer, attrs, x, lens, h0, y, y_h) / _free(layer)
//! mrnn_keras_gru_new(attrs, kernel, recurrent_kernel, bias, &layer)
//!     / _run(layer, attrs, x, mask, h0, y, last_output, h_n) / _free(layer)
//! mrnn_onnx_rnn_*, mrnn_keras_rnn_*: as the GRU's
//! mrnn_{onnx,keras}_{gru,rnn}_attrs_init(&attrs)             the defaults, as for the LSTM
//!
//! mrnn_gru_onnx_backward(attrs, x, w, r, b, lens, h0, dy, dy_h, dx, dw, dr, db, dh0)
//! mrnn_gru_keras_backward(attrs, x, mask, kernel, recurrent_kernel, bias, h0, dy, d_last, d_h_n,
//!     dx, d_kernel, d_recurrent_kernel, d_bias, dh0)          mrnn_rnn_*_backward: the same arguments
//! mrnn_onnx_gru_run_train(layer, attrs, x, lens, h0, y, y_h, &tape)
//!     / _run_backward(layer, tape, dy, dy_h, dx, dw, dr, db, dh0) / _set_weights(layer, w, r, b)
//! mrnn_keras_gru_run_train(layer, attrs, x, mask, h0, y, last_output, h_n, &tape)
//!     / _run_backward(layer, tape, dy, d_last, d_h_n, dx, d_kernel, d_recurrent_kernel, d_bias, dh0)
//!     / _set_weights(layer, kernel, recurrent_kernel, bias)
//! ```
//!
//! Each of the four is a layer kind ([`Kind`] and [`TrainKind`]) implemented by its handle type, and runs
//! through the one path of every kind (module `layer`): validation in the order of the module docs of
//! [`super`], the pointer groups, sizes and checks of the LSTM kinds of the same framework (modules `keras`
//! and `onnx`: the same structs, with the cell-state pointers always NULL), the tapes of section 3 (module
//! `train`: a tape names the kind that made it), bitwise the results of the Rust API ([`OnnxGru`],
//! [`OnnxRnn`], [`KerasGru`], [`KerasSimpleRnn`] with `forward_in`, `forward_train` and `backward`). What
//! differs between the GRU and the RNN of one framework is a [`KerasCell`] / [`OnnxCell`], implemented by
//! the Rust layer; `keras_kind!` / `onnx_kind!` write the kinds of a handle from it, and
//! `keras_train_functions!` / `onnx_train_functions!` the training entry points.

use super::handle::{keras_attrs_match, onnx_attrs_match, Core};
use super::keras::{
    keras_extents, keras_require, keras_sizes, keras_values, KerasArgs, KerasAttrs, KerasFields, KerasGradOutPtrs,
    KerasGradPtrs, KerasInput, KerasInputPtrs, KerasOutputPtrs, KerasShapes, KerasSizes, KerasUpstreamPtrs,
    KerasValues, KerasWeightPtrs,
};
use super::layer::{
    new, one_shot, one_shot_backward, run, run_backward, run_train, set_weights, Kind, Ptrs, TrainKind,
};
use super::onnx::{
    onnx_check_lengths, onnx_extents, onnx_require, onnx_sizes, onnx_values, OnnxArgs, OnnxAttrs, OnnxFields,
    OnnxInput, OnnxInputPtrs, OnnxOutputPtrs, OnnxShapes, OnnxSizes, OnnxValues, OnnxWeightPtrs,
};
use super::train::{KerasRecord, MrnnTape, OnnxRecord, Record};
use super::*;
use crate::frameworks::keras::{
    KerasGrads, KerasGru, KerasGruOptions, KerasRnnOptions, KerasSimpleRnn, KerasTape, KerasUpstream,
};
use crate::frameworks::onnx::{OnnxGrads, OnnxGru, OnnxGruAttrs, OnnxRnn, OnnxRnnAttrs, OnnxTape, OnnxUpstream};
use std::ptr;

// ------------------------------------------------------------------------------------------ attributes

/// Attributes of [`mrnn_gru_onnx`] and the ONNX GRU handles; field for field `MrnnOnnxGruAttrs` of
/// `masked_rnn.h` (C_ABI.md section 4: names, order and numbering are the stable contract).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MrnnOnnxGruAttrs {
    /// `T`.
    pub seq_length: i64,
    /// `B`.
    pub batch_size: i64,
    /// `I`.
    pub input_size: i64,
    /// `H` (at least 1).
    pub hidden_size: i64,
    /// 0 forward, 1 reverse, 2 bidirectional.
    pub direction: i32,
    /// 0: `X [T,B,I]`, `Y [T,D,B,H]`, `Y_h [D,B,H]`; 1: `X [B,T,I]`, `Y [B,T,D,H]`, `Y_h [B,D,H]`.
    pub layout: i32,
    /// 0 or 1: ONNX `linear_before_reset`.
    pub linear_before_reset: i32,
    /// 0: no clip; 1: `clip` applies.
    pub has_clip: i32,
    /// ONNX `clip` when `has_clip` is 1: > 0, `+inf` = no clipping. Ignored when `has_clip` is 0.
    pub clip: f32,
    /// 0 (defaults: Sigmoid, Tanh), 2 (used for every direction) or 4 (bidirectional only).
    pub num_activations: i32,
    /// `MRNN_ACT_*` per direction: f, g. Entries past `num_activations` are ignored.
    pub activations: [i32; 4],
    /// Per activation; NaN: ONNX Runtime's default for that activation.
    pub activation_alpha: [f32; 4],
    /// Per activation; NaN: the default of that activation.
    pub activation_beta: [f32; 4],
    /// 0: all cores; 1: the calling thread; n: n threads.
    pub num_threads: i32,
}

// The layout the header promises (C: four int64_t, four int32_t, a float, an int32_t, three arrays of four
// 4-byte values, an int32_t, tail padding to a multiple of 8).
const _: () = {
    assert!(std::mem::size_of::<MrnnOnnxGruAttrs>() == 112);
    assert!(std::mem::align_of::<MrnnOnnxGruAttrs>() == 8);
    assert!(std::mem::offset_of!(MrnnOnnxGruAttrs, linear_before_reset) == 40);
    assert!(std::mem::offset_of!(MrnnOnnxGruAttrs, clip) == 48);
    assert!(std::mem::offset_of!(MrnnOnnxGruAttrs, activations) == 56);
    assert!(std::mem::offset_of!(MrnnOnnxGruAttrs, activation_alpha) == 72);
    assert!(std::mem::offset_of!(MrnnOnnxGruAttrs, activation_beta) == 88);
    assert!(std::mem::offset_of!(MrnnOnnxGruAttrs, num_threads) == 104);
};

impl Default for MrnnOnnxGruAttrs {
    /// What [`mrnn_onnx_gru_attrs_init`] writes: sizes 0, forward, layout 0, `linear_before_reset` 0, no
    /// clip (`clip` NaN), the default activations (`num_activations` 0; the array holds Sigmoid, Tanh
    /// twice), NaN alpha/beta, `num_threads` 0.
    fn default() -> Self {
        let (s, t) = (Activation::Sigmoid.code(), Activation::Tanh.code());
        MrnnOnnxGruAttrs {
            seq_length: 0,
            batch_size: 0,
            input_size: 0,
            hidden_size: 0,
            direction: 0,
            layout: 0,
            linear_before_reset: 0,
            has_clip: 0,
            clip: f32::NAN,
            num_activations: 0,
            activations: [s, t, s, t],
            activation_alpha: [f32::NAN; 4],
            activation_beta: [f32::NAN; 4],
            num_threads: 0,
        }
    }
}

/// Attributes of [`mrnn_rnn_onnx`] and the ONNX RNN handles; field for field `MrnnOnnxRnnAttrs` of
/// `masked_rnn.h` (C_ABI.md section 4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MrnnOnnxRnnAttrs {
    /// `T`.
    pub seq_length: i64,
    /// `B`.
    pub batch_size: i64,
    /// `I`.
    pub input_size: i64,
    /// `H` (at least 1).
    pub hidden_size: i64,
    /// 0 forward, 1 reverse, 2 bidirectional.
    pub direction: i32,
    /// 0 or 1, as in [`MrnnOnnxGruAttrs::layout`].
    pub layout: i32,
    /// 0: no clip; 1: `clip` applies.
    pub has_clip: i32,
    /// ONNX `clip` when `has_clip` is 1: > 0, `+inf` = no clipping. Ignored when `has_clip` is 0.
    pub clip: f32,
    /// 0 (default: Tanh), 1 (used for every direction) or 2 (bidirectional only).
    pub num_activations: i32,
    /// `MRNN_ACT_*` per direction. Entries past `num_activations` are ignored.
    pub activations: [i32; 2],
    /// Per activation; NaN: ONNX Runtime's default for that activation.
    pub activation_alpha: [f32; 2],
    /// Per activation; NaN: the default of that activation.
    pub activation_beta: [f32; 2],
    /// 0: all cores; 1: the calling thread; n: n threads.
    pub num_threads: i32,
}

// C: four int64_t, three int32_t, a float, an int32_t, three arrays of two 4-byte values, an int32_t.
const _: () = {
    assert!(std::mem::size_of::<MrnnOnnxRnnAttrs>() == 80);
    assert!(std::mem::align_of::<MrnnOnnxRnnAttrs>() == 8);
    assert!(std::mem::offset_of!(MrnnOnnxRnnAttrs, has_clip) == 40);
    assert!(std::mem::offset_of!(MrnnOnnxRnnAttrs, clip) == 44);
    assert!(std::mem::offset_of!(MrnnOnnxRnnAttrs, activations) == 52);
    assert!(std::mem::offset_of!(MrnnOnnxRnnAttrs, activation_beta) == 68);
    assert!(std::mem::offset_of!(MrnnOnnxRnnAttrs, num_threads) == 76);
};

impl Default for MrnnOnnxRnnAttrs {
    /// What [`mrnn_onnx_rnn_attrs_init`] writes: sizes 0, forward, layout 0, no clip (`clip` NaN), the
    /// default activation (`num_activations` 0; the array holds Tanh twice), NaN alpha/beta,
    /// `num_threads` 0.
    fn default() -> Self {
        let t = Activation::Tanh.code();
        MrnnOnnxRnnAttrs {
            seq_length: 0,
            batch_size: 0,
            input_size: 0,
            hidden_size: 0,
            direction: 0,
            layout: 0,
            has_clip: 0,
            clip: f32::NAN,
            num_activations: 0,
            activations: [t, t],
            activation_alpha: [f32::NAN; 2],
            activation_beta: [f32::NAN; 2],
            num_threads: 0,
        }
    }
}

/// Attributes of [`mrnn_gru_keras`] and the Keras GRU handles; field for field `MrnnKerasGruAttrs` of
/// `masked_rnn.h` (C_ABI.md section 4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MrnnKerasGruAttrs {
    /// `B`.
    pub batch_size: i64,
    /// `T`.
    pub seq_length: i64,
    /// `I`.
    pub input_size: i64,
    /// `H` (at least 1).
    pub hidden_size: i64,
    /// 0 or 1: Keras `go_backwards`.
    pub go_backwards: i32,
    /// 0 or 1: Keras `zero_output_for_mask`.
    pub zero_output_for_mask: i32,
    /// `MRNN_ACT_*` of Keras `activation` (the candidate's; parameters: the code's Keras defaults).
    pub activation: i32,
    /// `MRNN_ACT_*` of Keras `recurrent_activation` (gates z, r).
    pub recurrent_activation: i32,
    /// HardSigmoid slope when `recurrent_activation` is 7; NaN: 0.2. Ignored otherwise.
    pub recurrent_alpha: f32,
    /// HardSigmoid offset when `recurrent_activation` is 7; NaN: 0.5. Ignored otherwise.
    pub recurrent_beta: f32,
    /// 0 or 1: Keras `reset_after` (1, the Keras 3 default: `bias [2,3H]`; 0: `bias [3H]`).
    pub reset_after: i32,
    /// 0: all cores; 1: the calling thread; n: n threads.
    pub num_threads: i32,
}

// C: four int64_t, four int32_t, two float, two int32_t.
const _: () = {
    assert!(std::mem::size_of::<MrnnKerasGruAttrs>() == 64);
    assert!(std::mem::align_of::<MrnnKerasGruAttrs>() == 8);
    assert!(std::mem::offset_of!(MrnnKerasGruAttrs, recurrent_alpha) == 48);
    assert!(std::mem::offset_of!(MrnnKerasGruAttrs, reset_after) == 56);
    assert!(std::mem::offset_of!(MrnnKerasGruAttrs, num_threads) == 60);
};

impl Default for MrnnKerasGruAttrs {
    /// What [`mrnn_keras_gru_attrs_init`] writes: sizes 0, Keras 3 defaults (Tanh, Sigmoid, `reset_after`
    /// 1), NaN HardSigmoid parameters, `num_threads` 0.
    fn default() -> Self {
        MrnnKerasGruAttrs {
            batch_size: 0,
            seq_length: 0,
            input_size: 0,
            hidden_size: 0,
            go_backwards: 0,
            zero_output_for_mask: 0,
            activation: Activation::Tanh.code(),
            recurrent_activation: Activation::Sigmoid.code(),
            recurrent_alpha: f32::NAN,
            recurrent_beta: f32::NAN,
            reset_after: 1,
            num_threads: 0,
        }
    }
}

/// Attributes of [`mrnn_rnn_keras`] and the Keras SimpleRNN handles; field for field `MrnnKerasRnnAttrs`
/// of `masked_rnn.h` (C_ABI.md section 4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MrnnKerasRnnAttrs {
    /// `B`.
    pub batch_size: i64,
    /// `T`.
    pub seq_length: i64,
    /// `I`.
    pub input_size: i64,
    /// `H` (at least 1).
    pub hidden_size: i64,
    /// 0 or 1: Keras `go_backwards`.
    pub go_backwards: i32,
    /// 0 or 1: Keras `zero_output_for_mask`.
    pub zero_output_for_mask: i32,
    /// `MRNN_ACT_*` of Keras `activation` (parameters: the code's Keras defaults).
    pub activation: i32,
    /// 0: all cores; 1: the calling thread; n: n threads.
    pub num_threads: i32,
}

// C: four int64_t, four int32_t.
const _: () = {
    assert!(std::mem::size_of::<MrnnKerasRnnAttrs>() == 48);
    assert!(std::mem::align_of::<MrnnKerasRnnAttrs>() == 8);
    assert!(std::mem::offset_of!(MrnnKerasRnnAttrs, num_threads) == 44);
};

impl Default for MrnnKerasRnnAttrs {
    /// What [`mrnn_keras_rnn_attrs_init`] writes: sizes 0, Tanh, `num_threads` 0.
    fn default() -> Self {
        MrnnKerasRnnAttrs {
            batch_size: 0,
            seq_length: 0,
            input_size: 0,
            hidden_size: 0,
            go_backwards: 0,
            zero_output_for_mask: 0,
            activation: Activation::Tanh.code(),
            num_threads: 0,
        }
    }
}

impl OnnxAttrs for MrnnOnnxGruAttrs {
    fn fields(&self) -> OnnxFields<'_> {
        OnnxFields {
            sizes: onnx_sizes(self.seq_length, self.batch_size, self.input_size, self.hidden_size),
            direction: self.direction,
            layout: self.layout,
            flag: Some(("linear_before_reset", self.linear_before_reset)),
            has_clip: self.has_clip,
            clip: self.clip,
            num_activations: self.num_activations,
            activations: &self.activations,
            alpha: &self.activation_alpha,
            beta: &self.activation_beta,
            per_direction: 2,
            num_threads: self.num_threads,
        }
    }
}

impl OnnxAttrs for MrnnOnnxRnnAttrs {
    fn fields(&self) -> OnnxFields<'_> {
        OnnxFields {
            sizes: onnx_sizes(self.seq_length, self.batch_size, self.input_size, self.hidden_size),
            direction: self.direction,
            layout: self.layout,
            flag: None,
            has_clip: self.has_clip,
            clip: self.clip,
            num_activations: self.num_activations,
            activations: &self.activations,
            alpha: &self.activation_alpha,
            beta: &self.activation_beta,
            per_direction: 1,
            num_threads: self.num_threads,
        }
    }
}

impl KerasAttrs for MrnnKerasGruAttrs {
    fn fields(&self) -> KerasFields {
        KerasFields {
            sizes: keras_sizes(self.batch_size, self.seq_length, self.input_size, self.hidden_size),
            go_backwards: self.go_backwards,
            zero_output_for_mask: self.zero_output_for_mask,
            activation: self.activation,
            recurrent: Some((self.recurrent_activation, self.recurrent_alpha, self.recurrent_beta)),
            reset_after: Some(self.reset_after),
            num_threads: self.num_threads,
        }
    }
}

impl KerasAttrs for MrnnKerasRnnAttrs {
    fn fields(&self) -> KerasFields {
        KerasFields {
            sizes: keras_sizes(self.batch_size, self.seq_length, self.input_size, self.hidden_size),
            go_backwards: self.go_backwards,
            zero_output_for_mask: self.zero_output_for_mask,
            activation: self.activation,
            recurrent: None,
            reset_after: None,
            num_threads: self.num_threads,
        }
    }
}

// ------------------------------------------------------------------------------------------ the cells

/// What distinguishes the Keras GRU from the Keras SimpleRNN as a kind of the C ABI; implemented by the
/// packed Rust layer.
pub(super) trait KerasCell: Sized {
    const NAME: &'static str;
    const PREFIX: &'static str;
    /// The attributes struct of `masked_rnn.h`.
    type Attrs: KerasAttrs;
    /// The Rust layer options.
    type Options: Copy;
    /// The options of validated values.
    fn options(v: &KerasValues) -> Self::Options;
    /// The recurrent activation of the options, if the layer has one.
    fn recurrent(o: &Self::Options) -> Option<Activation>;
    /// The shapes of the weights for the options.
    fn shapes(o: &Self::Options) -> &'static KerasShapes;
    /// The layer packed from weights of the sizes `i`, `h` and [`shapes`](Self::shapes).
    fn pack(
        i: usize,
        h: usize,
        kernel: &[f32],
        recurrent: &[f32],
        bias: Option<&[f32]>,
        o: Self::Options,
    ) -> Result<Self>;
    /// The forward of the packed layer (`forward_in`).
    fn forward_in(
        &self,
        x: &[f32],
        view: &SeqView,
        initial_h: Option<&[f32]>,
        out: KerasOutputs<'_>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<()>;
    /// The forward that fills a tape (`forward_train`).
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
    ) -> Result<()>;
    /// The gradients of the forward that filled `tape` (`backward`).
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
    ) -> Result<()>;
}

/// The [`KerasCell`] runs of the Keras layer `$cell`: its own methods of the same names, without their
/// statistics.
macro_rules! keras_cell_runs {
    ($cell:ty) => {
        fn forward_in(
            &self,
            x: &[f32],
            view: &SeqView,
            initial_h: Option<&[f32]>,
            out: KerasOutputs<'_>,
            threads: usize,
            ws: &mut Workspace,
        ) -> Result<()> {
            <$cell>::forward_in(self, x, view, initial_h, out, threads, ws).map(drop)
        }

        fn forward_train(
            &self,
            x: &[f32],
            view: &SeqView,
            initial_h: Option<&[f32]>,
            out: KerasOutputs<'_>,
            tape: &mut KerasTape,
            threads: usize,
            ws: &mut Workspace,
        ) -> Result<()> {
            <$cell>::forward_train(self, x, view, initial_h, out, tape, threads, ws).map(drop)
        }

        fn backward(
            &self,
            x: &[f32],
            view: &SeqView,
            initial_h: Option<&[f32]>,
            tape: &KerasTape,
            up: KerasUpstream<'_>,
            grads: KerasGrads<'_>,
            threads: usize,
        ) -> Result<()> {
            <$cell>::backward(self, x, view, initial_h, tape, up, grads, threads).map(drop)
        }
    };
}

/// Keras GRU weights with `reset_after`: `kernel [I,3H]`, `recurrent_kernel [H,3H]`, `bias [2,3H]`.
const GRU_RESET_AFTER: KerasShapes = KerasShapes {
    gates: 3,
    bias_rows: 2,
    kernel: "kernel [I,3H]",
    recurrent: "recurrent_kernel [H,3H]",
    bias: "bias [2,3H]",
};

/// Keras GRU weights without `reset_after`: `bias [3H]`.
const GRU_RESET_BEFORE: KerasShapes = KerasShapes { bias_rows: 1, bias: "bias [3H]", ..GRU_RESET_AFTER };

/// Keras SimpleRNN weights: `kernel [I,H]`, `recurrent_kernel [H,H]`, `bias [H]`.
const RNN_SHAPES: KerasShapes = KerasShapes {
    gates: 1,
    bias_rows: 1,
    kernel: "kernel [I,H]",
    recurrent: "recurrent_kernel [H,H]",
    bias: "bias [H]",
};

impl KerasCell for KerasGru {
    const NAME: &'static str = "Keras GRU";
    const PREFIX: &'static str = "mrnn_keras_gru";
    type Attrs = MrnnKerasGruAttrs;
    type Options = KerasGruOptions;

    fn options(v: &KerasValues) -> KerasGruOptions {
        let mut o = KerasGruOptions::default()
            .activation(v.activation)
            .go_backwards(v.go_backwards)
            .zero_output_for_mask(v.zero_output_for_mask)
            .reset_after(v.reset_after.unwrap_or(true));
        if let Some(recurrent) = v.recurrent_activation {
            o = o.recurrent_activation(recurrent);
        }
        o
    }

    fn recurrent(o: &KerasGruOptions) -> Option<Activation> {
        Some(o.recurrent_activation)
    }

    fn shapes(o: &KerasGruOptions) -> &'static KerasShapes {
        if o.reset_after {
            &GRU_RESET_AFTER
        } else {
            &GRU_RESET_BEFORE
        }
    }

    fn pack(i: usize, h: usize, kernel: &[f32], rec: &[f32], bias: Option<&[f32]>, o: KerasGruOptions) -> Result<Self> {
        KerasGru::from_slices(i, h, kernel, rec, bias, o)
    }

    keras_cell_runs!(KerasGru);
}

impl KerasCell for KerasSimpleRnn {
    const NAME: &'static str = "Keras SimpleRNN";
    const PREFIX: &'static str = "mrnn_keras_rnn";
    type Attrs = MrnnKerasRnnAttrs;
    type Options = KerasRnnOptions;

    fn options(v: &KerasValues) -> KerasRnnOptions {
        KerasRnnOptions::default()
            .activation(v.activation)
            .go_backwards(v.go_backwards)
            .zero_output_for_mask(v.zero_output_for_mask)
    }

    fn recurrent(_: &KerasRnnOptions) -> Option<Activation> {
        None
    }

    fn shapes(_: &KerasRnnOptions) -> &'static KerasShapes {
        &RNN_SHAPES
    }

    fn pack(i: usize, h: usize, kernel: &[f32], rec: &[f32], bias: Option<&[f32]>, o: KerasRnnOptions) -> Result<Self> {
        KerasSimpleRnn::from_slices(i, h, kernel, rec, bias, o)
    }

    keras_cell_runs!(KerasSimpleRnn);
}

/// What distinguishes the ONNX GRU from the ONNX RNN as a kind of the C ABI; implemented by the packed
/// Rust node.
pub(super) trait OnnxCell: Sized {
    const NAME: &'static str;
    const PREFIX: &'static str;
    /// The shapes of the weights.
    const SHAPES: OnnxShapes;
    /// The attributes struct of `masked_rnn.h`.
    type Attrs: OnnxAttrs;
    /// The Rust attributes.
    type RustAttrs: Clone;
    /// The Rust attributes of validated values.
    fn attrs(v: &OnnxValues) -> Self::RustAttrs;
    /// Their activations (empty: the defaults).
    fn activations(a: &Self::RustAttrs) -> &[Activation];
    /// The node packed from the weights.
    fn pack(a: Self::RustAttrs, i: usize, w: &[f32], r: &[f32], b: Option<&[f32]>) -> Result<Self>;
    /// The forward of the packed node (`forward_in`).
    #[allow(clippy::too_many_arguments)]
    fn forward_in(
        &self,
        x: &[f32],
        t: usize,
        b: usize,
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        out: OnnxOutputs<'_>,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<()>;
    /// The forward that fills a tape (`forward_train`).
    #[allow(clippy::too_many_arguments)]
    fn forward_train(
        &self,
        x: &[f32],
        t: usize,
        b: usize,
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        out: OnnxOutputs<'_>,
        tape: &mut OnnxTape,
        threads: usize,
        ws: &mut Workspace,
    ) -> Result<()>;
    /// The gradients of the forward that filled `tape` (`backward`).
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        x: &[f32],
        t: usize,
        b: usize,
        sequence_lens: Option<&[i32]>,
        initial_h: Option<&[f32]>,
        tape: &OnnxTape,
        up: OnnxUpstream<'_>,
        grads: OnnxGrads<'_>,
        threads: usize,
    ) -> Result<()>;
}

/// The [`OnnxCell`] runs of the ONNX node `$cell`: its own methods of the same names, without their
/// statistics.
macro_rules! onnx_cell_runs {
    ($cell:ty) => {
        fn forward_in(
            &self,
            x: &[f32],
            t: usize,
            b: usize,
            sequence_lens: Option<&[i32]>,
            initial_h: Option<&[f32]>,
            out: OnnxOutputs<'_>,
            threads: usize,
            ws: &mut Workspace,
        ) -> Result<()> {
            <$cell>::forward_in(self, x, t, b, sequence_lens, initial_h, out, threads, ws).map(drop)
        }

        fn forward_train(
            &self,
            x: &[f32],
            t: usize,
            b: usize,
            sequence_lens: Option<&[i32]>,
            initial_h: Option<&[f32]>,
            out: OnnxOutputs<'_>,
            tape: &mut OnnxTape,
            threads: usize,
            ws: &mut Workspace,
        ) -> Result<()> {
            <$cell>::forward_train(self, x, t, b, sequence_lens, initial_h, out, tape, threads, ws).map(drop)
        }

        fn backward(
            &self,
            x: &[f32],
            t: usize,
            b: usize,
            sequence_lens: Option<&[i32]>,
            initial_h: Option<&[f32]>,
            tape: &OnnxTape,
            up: OnnxUpstream<'_>,
            grads: OnnxGrads<'_>,
            threads: usize,
        ) -> Result<()> {
            <$cell>::backward(self, x, t, b, sequence_lens, initial_h, tape, up, grads, threads).map(drop)
        }
    };
}

impl OnnxCell for OnnxGru {
    const NAME: &'static str = "ONNX GRU";
    const PREFIX: &'static str = "mrnn_onnx_gru";
    const SHAPES: OnnxShapes = OnnxShapes { gates: 3, w: "W [D,3H,I]", r: "R [D,3H,H]", b: "B [D,6H]", p: None };
    type Attrs = MrnnOnnxGruAttrs;
    type RustAttrs = OnnxGruAttrs;

    fn attrs(v: &OnnxValues) -> OnnxGruAttrs {
        OnnxGruAttrs::new(v.dims[3], v.direction)
            .layout(v.layout)
            .clip(v.clip)
            .linear_before_reset(v.flag)
            .activations(v.activations.clone())
    }

    fn activations(a: &OnnxGruAttrs) -> &[Activation] {
        &a.activations
    }

    fn pack(a: OnnxGruAttrs, i: usize, w: &[f32], r: &[f32], b: Option<&[f32]>) -> Result<Self> {
        OnnxGru::new(a, i, w, r, b)
    }

    onnx_cell_runs!(OnnxGru);
}

impl OnnxCell for OnnxRnn {
    const NAME: &'static str = "ONNX RNN";
    const PREFIX: &'static str = "mrnn_onnx_rnn";
    const SHAPES: OnnxShapes = OnnxShapes { gates: 1, w: "W [D,H,I]", r: "R [D,H,H]", b: "B [D,2H]", p: None };
    type Attrs = MrnnOnnxRnnAttrs;
    type RustAttrs = OnnxRnnAttrs;

    fn attrs(v: &OnnxValues) -> OnnxRnnAttrs {
        OnnxRnnAttrs::new(v.dims[3], v.direction).layout(v.layout).clip(v.clip).activations(v.activations.clone())
    }

    fn activations(a: &OnnxRnnAttrs) -> &[Activation] {
        &a.activations
    }

    fn pack(a: OnnxRnnAttrs, i: usize, w: &[f32], r: &[f32], b: Option<&[f32]>) -> Result<Self> {
        OnnxRnn::new(a, i, w, r, b)
    }

    onnx_cell_runs!(OnnxRnn);
}

// ------------------------------------------------------------------------------------------ the kinds

/// Step 2 for a Keras cell: every value of `a`, then, for a run, agreement with the handle's creation
/// attributes and options (`fixed`).
fn keras_cell_args<C: KerasCell>(
    a: &C::Attrs,
    fixed: Option<(&C::Attrs, &C::Options)>,
) -> Result<KerasArgs<C::Options>> {
    let (fields, v) = (a.fields(), keras_values(&a.fields())?);
    let args = v.args(C::options(&v));
    if let Some((created, options)) = fixed {
        keras_attrs_match(&fields, C::recurrent(&args.options), &created.fields(), C::recurrent(options))?;
    }
    Ok(args)
}

/// Step 3 for a Keras cell: a run's sizes (`run`) or the weights' alone.
fn keras_cell_sizes<C: KerasCell>(args: &KerasArgs<C::Options>, run: bool) -> Result<KerasSizes> {
    let (b, t) = if run { (args.b, args.t) } else { (0, 0) };
    KerasSizes::new(b, t, args.i, args.h, C::shapes(&args.options))
}

/// The Keras cell packed from the weights.
///
/// # Safety
/// As [`Kind::pack`].
unsafe fn keras_cell_pack<C: KerasCell>(
    w: &KerasWeightPtrs,
    n: &KerasSizes,
    args: &KerasArgs<C::Options>,
) -> Result<C> {
    // SAFETY: forwarded from this function's contract; the slices live for this call only.
    let (kernel, recurrent, bias) = unsafe { w.slices(n) }?;
    let (i, h) = n.layer();
    C::pack(i, h, kernel, recurrent, bias, args.options)
}

/// The forward of a packed Keras cell.
///
/// # Safety
/// As [`Kind::forward`].
unsafe fn keras_cell_forward<C: KerasCell>(
    layer: &C,
    input: &KerasInputPtrs,
    output: &KerasOutputPtrs,
    n: &KerasSizes,
    threads: usize,
    scratch: &mut Scratch,
) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    let (input, out) = unsafe { (input.slices(n)?, output.slices(n)) };
    layer.forward_in(input.x, &input.view, input.initial_h, out, threads, &mut scratch.workspace)
}

/// Step 2 for an ONNX cell: every value of `a`, then, for a run, agreement with the handle's creation
/// attributes and Rust attributes (`fixed`).
fn onnx_cell_args<C: OnnxCell>(
    a: &C::Attrs,
    fixed: Option<(&C::Attrs, &C::RustAttrs)>,
) -> Result<OnnxArgs<C::RustAttrs>> {
    let v = onnx_values(&a.fields())?;
    let args = v.args(C::attrs(&v));
    if let Some((created, attrs)) = fixed {
        onnx_attrs_match(&a.fields(), C::activations(&args.attrs), &created.fields(), C::activations(attrs))?;
    }
    Ok(args)
}

/// Step 3 for an ONNX cell: a run's sizes (`run`) or the weights' alone.
fn onnx_cell_sizes<C: OnnxCell>(args: &OnnxArgs<C::RustAttrs>, run: bool) -> Result<OnnxSizes> {
    let (t, b) = if run { (args.t, args.b) } else { (0, 0) };
    OnnxSizes::new(t, b, args.i, args.h, args.d, &C::SHAPES)
}

/// The ONNX cell packed from the weights (`p` is NULL: the GRU and RNN functions have none).
///
/// # Safety
/// As [`Kind::pack`].
unsafe fn onnx_cell_pack<C: OnnxCell>(w: &OnnxWeightPtrs, n: &OnnxSizes, args: &OnnxArgs<C::RustAttrs>) -> Result<C> {
    // SAFETY: forwarded from this function's contract; the slices live for this call only.
    let (w, r, b, _) = unsafe { w.slices(n) }?;
    C::pack(args.attrs.clone(), n.input(), w, r, b)
}

/// The forward of a packed ONNX cell; nothing at all with every output NULL.
///
/// # Safety
/// As [`Kind::forward`].
unsafe fn onnx_cell_forward<C: OnnxCell>(
    node: &C,
    input: &OnnxInputPtrs,
    output: &OnnxOutputPtrs,
    n: &OnnxSizes,
    threads: usize,
    scratch: &mut Scratch,
) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    let (input, out) = unsafe { (input.slices(n)?, output.slices(n)) };
    if out.y.is_none() && out.y_h.is_none() {
        // Validated; nothing asked for, so nothing is computed.
        return Ok(());
    }
    let lens = input.sequence_lens;
    node.forward_in(input.x, input.t, input.b, lens, input.initial_h, out, threads, &mut scratch.workspace)
}

// ------------------------------------------------------------------------------------------ training

/// The gradients of a Keras cell's forward that filled `tape` with `input` (the caller's buffers or a
/// tape's copies).
fn keras_cell_gradients<C: KerasCell, X: AsRef<[f32]>>(
    layer: &C,
    input: &KerasInput<X>,
    tape: &KerasTape,
    (up, grads): (KerasUpstream<'_>, KerasGrads<'_>),
    threads: usize,
) -> Result<()> {
    let h0 = input.initial_h.as_ref().map(AsRef::as_ref);
    layer.backward(input.x.as_ref(), &input.view, h0, tape, up, grads, threads)
}

/// The forward of a packed Keras cell that fills a tape; returns the tape's copies of the inputs.
///
/// # Safety
/// As [`Kind::forward`].
unsafe fn keras_cell_forward_train<C: KerasCell>(
    layer: &C,
    input: &KerasInputPtrs,
    output: &KerasOutputPtrs,
    n: &KerasSizes,
    threads: usize,
    tape: &mut KerasTape,
    scratch: &mut Scratch,
) -> Result<KerasInput<Vec<f32>>> {
    // SAFETY: forwarded from this function's contract.
    let (input, out) = unsafe { (input.slices(n)?, output.slices(n)) };
    layer.forward_train(input.x, &input.view, input.initial_h, out, tape, threads, &mut scratch.workspace)?;
    Ok(input.copy())
}

/// The one-shot backward of a packed Keras cell: the forward that fills a tape, then the gradients.
///
/// # Safety
/// As [`Kind::forward`].
unsafe fn keras_cell_backward_once<C: KerasCell>(
    layer: &C,
    input: &KerasInputPtrs,
    grads: &KerasGradPtrs,
    n: &KerasSizes,
    threads: usize,
    scratch: &mut Scratch,
) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    let (input, grads) = unsafe { (input.slices(n)?, grads.slices(n)) };
    let mut tape = KerasTape::new();
    let (x, h0, ws) = (input.x, input.initial_h, &mut scratch.workspace);
    layer.forward_train(x, &input.view, h0, KerasOutputs::default(), &mut tape, threads, ws)?;
    keras_cell_gradients(layer, &input, &tape, grads, threads)
}

/// The gradients of a Keras cell's run recorded on a tape.
///
/// # Safety
/// As [`Kind::forward`].
unsafe fn keras_cell_backward<C: KerasCell>(
    layer: &C,
    record: &KerasRecord,
    grads: &KerasGradPtrs,
    n: &KerasSizes,
) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    let grads = unsafe { grads.slices(n) };
    keras_cell_gradients(layer, &record.input, &record.tape, grads, record.threads)
}

/// The gradients of an ONNX cell's forward that filled `tape` with `input` (the caller's buffers or a
/// tape's copies).
fn onnx_cell_gradients<C: OnnxCell, X: AsRef<[f32]>, L: AsRef<[i32]>>(
    node: &C,
    input: &OnnxInput<X, L>,
    tape: &OnnxTape,
    (up, grads): (OnnxUpstream<'_>, OnnxGrads<'_>),
    threads: usize,
) -> Result<()> {
    let (x, lens, h0) = (input.x.as_ref(), input.sequence_lens.as_ref().map(AsRef::as_ref), input.initial_h.as_ref());
    node.backward(x, input.t, input.b, lens, h0.map(AsRef::as_ref), tape, up, grads, threads)
}

/// The forward of a packed ONNX cell that fills a tape; returns the tape's copies of the inputs.
///
/// # Safety
/// As [`Kind::forward`].
unsafe fn onnx_cell_forward_train<C: OnnxCell>(
    node: &C,
    input: &OnnxInputPtrs,
    output: &OnnxOutputPtrs,
    n: &OnnxSizes,
    threads: usize,
    tape: &mut OnnxTape,
    scratch: &mut Scratch,
) -> Result<OnnxInput<Vec<f32>, Vec<i32>>> {
    // SAFETY: forwarded from this function's contract.
    let (input, out) = unsafe { (input.slices(n)?, output.slices(n)) };
    let (lens, ws) = (input.sequence_lens, &mut scratch.workspace);
    node.forward_train(input.x, input.t, input.b, lens, input.initial_h, out, tape, threads, ws)?;
    Ok(input.copy())
}

/// The one-shot backward of a packed ONNX cell: the forward that fills a tape, then the gradients.
///
/// # Safety
/// As [`Kind::forward`].
unsafe fn onnx_cell_backward_once<C: OnnxCell>(
    node: &C,
    input: &OnnxInputPtrs,
    grads: &OnnxGradPtrs,
    n: &OnnxSizes,
    threads: usize,
    scratch: &mut Scratch,
) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    let (input, grads) = unsafe { (input.slices(n)?, grads.slices(n)) };
    let mut tape = OnnxTape::new();
    let (lens, h0, ws) = (input.sequence_lens, input.initial_h, &mut scratch.workspace);
    node.forward_train(input.x, input.t, input.b, lens, h0, OnnxOutputs::default(), &mut tape, threads, ws)?;
    onnx_cell_gradients(node, &input, &tape, grads, threads)
}

/// The gradients of an ONNX cell's run recorded on a tape.
///
/// # Safety
/// As [`Kind::forward`].
unsafe fn onnx_cell_backward<C: OnnxCell>(
    node: &C,
    record: &OnnxRecord,
    grads: &OnnxGradPtrs,
    n: &OnnxSizes,
) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    let grads = unsafe { grads.slices(n) };
    onnx_cell_gradients(node, &record.input, &record.tape, grads, record.threads)
}

/// A handle type of the C ABI for the Keras cell `$cell`, and its [`Kind`].
macro_rules! keras_kind {
    ($(#[$doc:meta])* $handle:ident, $cell:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $handle {
            core: Core<$cell>,
            /// The validated creation attributes: the layer options and sizes.
            args: KerasArgs<<$cell as KerasCell>::Options>,
            /// The creation attributes; a run's must agree on every field but `batch_size`, `seq_length`,
            /// `num_threads`.
            attrs: <$cell as KerasCell>::Attrs,
        }

        impl Kind for $handle {
            const NAME: &'static str = <$cell as KerasCell>::NAME;
            const PREFIX: &'static str = <$cell as KerasCell>::PREFIX;
            type Attrs = <$cell as KerasCell>::Attrs;
            type Args = KerasArgs<<$cell as KerasCell>::Options>;
            type Sizes = KerasSizes;
            type Packed = $cell;
            type Input = KerasInputPtrs;
            type Weights = KerasWeightPtrs;
            type Output = KerasOutputPtrs;

            fn core(&self) -> &Core<$cell> {
                &self.core
            }

            fn fixed(&self) -> &Self::Args {
                &self.args
            }

            fn new_handle(packed: $cell, args: Self::Args, attrs: Self::Attrs) -> Self {
                $handle { core: Core::new(packed), args, attrs }
            }

            /// `x`, `kernel`, `recurrent_kernel`.
            fn require(p: &Ptrs<Self>) -> Result<()> {
                keras_require(p)
            }

            fn args(a: &Self::Attrs, handle: Option<&Self>) -> Result<Self::Args> {
                keras_cell_args::<$cell>(a, handle.map(|h| (&h.attrs, &h.args.options)))
            }

            fn threads(args: &Self::Args) -> usize {
                args.threads
            }

            fn sizes(args: &Self::Args, run: bool) -> Result<KerasSizes> {
                keras_cell_sizes::<$cell>(args, run)
            }

            /// `x`, `mask`, the weights, `initial_h`, the outputs.
            fn extents(p: &Ptrs<Self>, n: &KerasSizes) -> Vec<Option<Extent>> {
                keras_extents(p, n)
            }

            unsafe fn pack(weights: &KerasWeightPtrs, n: &KerasSizes, args: &Self::Args) -> Result<$cell> {
                // SAFETY: forwarded from this function's contract.
                unsafe { keras_cell_pack(weights, n, args) }
            }

            unsafe fn forward(
                layer: &$cell,
                input: &KerasInputPtrs,
                output: &KerasOutputPtrs,
                n: &KerasSizes,
                threads: usize,
                scratch: &mut Scratch,
            ) -> Result<()> {
                // SAFETY: forwarded from this function's contract.
                unsafe { keras_cell_forward(layer, input, output, n, threads, scratch) }
            }
        }

        impl TrainKind for $handle {
            type Grads = KerasGradPtrs;
            type Tape = KerasTape;
            type Copies = KerasInput<Vec<f32>>;

            fn tape_sizes(args: &Self::Args, copies: &KerasInput<Vec<f32>>) -> Result<KerasSizes> {
                let (b, t) = (copies.view.batch(), copies.view.time());
                KerasSizes::new(b, t, args.i, args.h, <$cell as KerasCell>::shapes(&args.options))
            }

            /// The upstream gradients, then the gradient outputs (`d_c_n`, `d_initial_c`: NULL).
            fn grad_extents(g: &KerasGradPtrs, n: &KerasSizes) -> Vec<Option<Extent>> {
                g.extents(n).to_vec()
            }

            fn wants(g: &KerasGradPtrs) -> bool {
                g.wants()
            }

            unsafe fn forward_train(
                layer: &$cell,
                input: &KerasInputPtrs,
                output: &KerasOutputPtrs,
                n: &KerasSizes,
                threads: usize,
                tape: &mut KerasTape,
                scratch: &mut Scratch,
            ) -> Result<KerasInput<Vec<f32>>> {
                // SAFETY: forwarded from this function's contract.
                unsafe { keras_cell_forward_train(layer, input, output, n, threads, tape, scratch) }
            }

            unsafe fn backward_once(
                layer: &$cell,
                input: &KerasInputPtrs,
                grads: &KerasGradPtrs,
                n: &KerasSizes,
                threads: usize,
                scratch: &mut Scratch,
            ) -> Result<()> {
                // SAFETY: forwarded from this function's contract.
                unsafe { keras_cell_backward_once(layer, input, grads, n, threads, scratch) }
            }

            unsafe fn backward(
                layer: &$cell,
                record: &KerasRecord,
                grads: &KerasGradPtrs,
                n: &KerasSizes,
            ) -> Result<()> {
                // SAFETY: forwarded from this function's contract.
                unsafe { keras_cell_backward(layer, record, grads, n) }
            }

            fn record(run: KerasRecord) -> Record {
                Record::Keras(run)
            }

            fn recorded(record: &Record) -> Option<&KerasRecord> {
                record.keras()
            }
        }
    };
}

/// A handle type of the C ABI for the ONNX cell `$cell`, and its [`Kind`].
macro_rules! onnx_kind {
    ($(#[$doc:meta])* $handle:ident, $cell:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $handle {
            core: Core<$cell>,
            /// The validated creation attributes: the Rust attributes and sizes.
            args: OnnxArgs<<$cell as OnnxCell>::RustAttrs>,
            /// The creation attributes; a run's must agree on every field but `seq_length`, `batch_size`,
            /// `num_threads`.
            attrs: <$cell as OnnxCell>::Attrs,
        }

        impl Kind for $handle {
            const NAME: &'static str = <$cell as OnnxCell>::NAME;
            const PREFIX: &'static str = <$cell as OnnxCell>::PREFIX;
            type Attrs = <$cell as OnnxCell>::Attrs;
            type Args = OnnxArgs<<$cell as OnnxCell>::RustAttrs>;
            type Sizes = OnnxSizes;
            type Packed = $cell;
            type Input = OnnxInputPtrs;
            type Weights = OnnxWeightPtrs;
            type Output = OnnxOutputPtrs;

            fn core(&self) -> &Core<$cell> {
                &self.core
            }

            fn fixed(&self) -> &Self::Args {
                &self.args
            }

            fn new_handle(packed: $cell, args: Self::Args, attrs: Self::Attrs) -> Self {
                $handle { core: Core::new(packed), args, attrs }
            }

            /// `x`, `w`, `r`.
            fn require(p: &Ptrs<Self>) -> Result<()> {
                onnx_require(p)
            }

            fn args(a: &Self::Attrs, handle: Option<&Self>) -> Result<Self::Args> {
                onnx_cell_args::<$cell>(a, handle.map(|h| (&h.attrs, &h.args.attrs)))
            }

            fn threads(args: &Self::Args) -> usize {
                args.threads
            }

            fn sizes(args: &Self::Args, run: bool) -> Result<OnnxSizes> {
                onnx_cell_sizes::<$cell>(args, run)
            }

            /// `x`, `w`, `r`, `b`, `sequence_lens`, `initial_h`, the outputs.
            fn extents(p: &Ptrs<Self>, n: &OnnxSizes) -> Vec<Option<Extent>> {
                onnx_extents(p, n)
            }

            /// Every length in `0..=T`.
            unsafe fn check_memory(input: &OnnxInputPtrs, n: &OnnxSizes) -> Result<()> {
                // SAFETY: forwarded from this function's contract.
                unsafe { onnx_check_lengths(input, n) }
            }

            unsafe fn pack(weights: &OnnxWeightPtrs, n: &OnnxSizes, args: &Self::Args) -> Result<$cell> {
                // SAFETY: forwarded from this function's contract.
                unsafe { onnx_cell_pack(weights, n, args) }
            }

            unsafe fn forward(
                node: &$cell,
                input: &OnnxInputPtrs,
                output: &OnnxOutputPtrs,
                n: &OnnxSizes,
                threads: usize,
                scratch: &mut Scratch,
            ) -> Result<()> {
                // SAFETY: forwarded from this function's contract.
                unsafe { onnx_cell_forward(node, input, output, n, threads, scratch) }
            }
        }

        impl TrainKind for $handle {
            type Grads = OnnxGradPtrs;
            type Tape = OnnxTape;
            type Copies = OnnxInput<Vec<f32>, Vec<i32>>;

            fn tape_sizes(args: &Self::Args, copies: &OnnxInput<Vec<f32>, Vec<i32>>) -> Result<OnnxSizes> {
                OnnxSizes::new(copies.t, copies.b, args.i, args.h, args.d, &<$cell as OnnxCell>::SHAPES)
            }

            /// The upstream gradients, then the gradient outputs (`dy_c`, `d_initial_c`, `dp`: NULL).
            fn grad_extents(g: &OnnxGradPtrs, n: &OnnxSizes) -> Vec<Option<Extent>> {
                g.extents(n).to_vec()
            }

            fn wants(g: &OnnxGradPtrs) -> bool {
                g.wants()
            }

            unsafe fn forward_train(
                node: &$cell,
                input: &OnnxInputPtrs,
                output: &OnnxOutputPtrs,
                n: &OnnxSizes,
                threads: usize,
                tape: &mut OnnxTape,
                scratch: &mut Scratch,
            ) -> Result<OnnxInput<Vec<f32>, Vec<i32>>> {
                // SAFETY: forwarded from this function's contract.
                unsafe { onnx_cell_forward_train(node, input, output, n, threads, tape, scratch) }
            }

            unsafe fn backward_once(
                node: &$cell,
                input: &OnnxInputPtrs,
                grads: &OnnxGradPtrs,
                n: &OnnxSizes,
                threads: usize,
                scratch: &mut Scratch,
            ) -> Result<()> {
                // SAFETY: forwarded from this function's contract.
                unsafe { onnx_cell_backward_once(node, input, grads, n, threads, scratch) }
            }

            unsafe fn backward(node: &$cell, record: &OnnxRecord, grads: &OnnxGradPtrs, n: &OnnxSizes) -> Result<()> {
                // SAFETY: forwarded from this function's contract.
                unsafe { onnx_cell_backward(node, record, grads, n) }
            }

            fn record(run: OnnxRecord) -> Record {
                Record::Onnx(run)
            }

            fn recorded(record: &Record) -> Option<&OnnxRecord> {
                record.onnx()
            }
        }
    };
}

keras_kind!(
    /// A Keras GRU layer of the C ABI (`MrnnKerasGru` of `masked_rnn.h`): packed weights and scratch memory.
    MrnnKerasGru,
    KerasGru
);
keras_kind!(
    /// A Keras SimpleRNN layer of the C ABI (`MrnnKerasRnn` of `masked_rnn.h`): packed weights and scratch
    /// memory.
    MrnnKerasRnn,
    KerasSimpleRnn
);
onnx_kind!(
    /// An ONNX GRU node of the C ABI (`MrnnOnnxGru` of `masked_rnn.h`): packed weights and scratch memory.
    MrnnOnnxGru,
    OnnxGru
);
onnx_kind!(
    /// An ONNX RNN node of the C ABI (`MrnnOnnxRnn` of `masked_rnn.h`): packed weights and scratch memory.
    MrnnOnnxRnn,
    OnnxRnn
);

// Concurrent runs share the handles across threads.
const _: () = {
    const fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<MrnnKerasGru>();
    shared_across_threads::<MrnnKerasRnn>();
    shared_across_threads::<MrnnOnnxGru>();
    shared_across_threads::<MrnnOnnxRnn>();
};

// ------------------------------------------------------------------------------------------ functions

/// The body of the `_attrs_init` functions: `*attrs` = the defaults.
///
/// # Safety
/// `attrs` is NULL or valid for writing one `T`.
unsafe fn attrs_init<T: Default>(function: &str, attrs: *mut T) -> i32 {
    guard(function, || {
        require("attrs", attrs)?;
        // SAFETY: `attrs` is non-NULL (checked above) and valid for one write (caller's contract);
        // write_unaligned needs no alignment.
        unsafe { attrs.write_unaligned(T::default()) };
        Ok(())
    })
}

/// Fills `*attrs` with the defaults of [`MrnnOnnxGruAttrs::default`].
///
/// # Safety
/// `attrs` is NULL or valid for writing one `MrnnOnnxGruAttrs`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_onnx_gru_attrs_init(attrs: *mut MrnnOnnxGruAttrs) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { attrs_init("mrnn_onnx_gru_attrs_init", attrs) }
}

/// Fills `*attrs` with the defaults of [`MrnnOnnxRnnAttrs::default`].
///
/// # Safety
/// `attrs` is NULL or valid for writing one `MrnnOnnxRnnAttrs`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_onnx_rnn_attrs_init(attrs: *mut MrnnOnnxRnnAttrs) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { attrs_init("mrnn_onnx_rnn_attrs_init", attrs) }
}

/// Fills `*attrs` with the defaults of [`MrnnKerasGruAttrs::default`].
///
/// # Safety
/// `attrs` is NULL or valid for writing one `MrnnKerasGruAttrs`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_keras_gru_attrs_init(attrs: *mut MrnnKerasGruAttrs) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { attrs_init("mrnn_keras_gru_attrs_init", attrs) }
}

/// Fills `*attrs` with the defaults of [`MrnnKerasRnnAttrs::default`].
///
/// # Safety
/// `attrs` is NULL or valid for writing one `MrnnKerasRnnAttrs`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_keras_rnn_attrs_init(attrs: *mut MrnnKerasRnnAttrs) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { attrs_init("mrnn_keras_rnn_attrs_init", attrs) }
}

/// The ONNX `GRU` operator (opset 22); see `masked_rnn.h` for the arguments.
///
/// # Safety
/// Every non-NULL pointer is valid for the tensor size the header documents for it (reads for the `const`
/// inputs, writes for the outputs) for the duration of the call, and no other thread writes the inputs
/// or touches the outputs meanwhile. NULL is always allowed: it is reported or means "absent".
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_gru_onnx(
    attrs: *const MrnnOnnxGruAttrs,
    x: *const f32,
    w: *const f32,
    r: *const f32,
    b: *const f32,
    sequence_lens: *const i32,
    initial_h: *const f32,
    y: *mut f32,
    y_h: *mut f32,
) -> i32 {
    let input = OnnxInputPtrs { x, sequence_lens, initial_h, initial_c: ptr::null() };
    let weights = OnnxWeightPtrs { w, r, b, p: ptr::null() };
    let output = OnnxOutputPtrs { y, y_h, y_c: ptr::null_mut() };
    // SAFETY: the caller's contract, as `one_shot` requires it.
    guard("mrnn_gru_onnx", || unsafe { one_shot::<MrnnOnnxGru>(attrs, input, weights, output) })
}

/// The ONNX `RNN` operator (opset 22); see `masked_rnn.h` for the arguments.
///
/// # Safety
/// As [`mrnn_gru_onnx`].
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_rnn_onnx(
    attrs: *const MrnnOnnxRnnAttrs,
    x: *const f32,
    w: *const f32,
    r: *const f32,
    b: *const f32,
    sequence_lens: *const i32,
    initial_h: *const f32,
    y: *mut f32,
    y_h: *mut f32,
) -> i32 {
    let input = OnnxInputPtrs { x, sequence_lens, initial_h, initial_c: ptr::null() };
    let weights = OnnxWeightPtrs { w, r, b, p: ptr::null() };
    let output = OnnxOutputPtrs { y, y_h, y_c: ptr::null_mut() };
    // SAFETY: the caller's contract, as `one_shot` requires it.
    guard("mrnn_rnn_onnx", || unsafe { one_shot::<MrnnOnnxRnn>(attrs, input, weights, output) })
}

/// Keras-style masked GRU; see `masked_rnn.h` for the arguments.
///
/// # Safety
/// As [`mrnn_gru_onnx`].
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_gru_keras(
    attrs: *const MrnnKerasGruAttrs,
    x: *const f32,
    mask: *const u8,
    kernel: *const f32,
    recurrent_kernel: *const f32,
    bias: *const f32,
    initial_h: *const f32,
    y: *mut f32,
    last_output: *mut f32,
    h_n: *mut f32,
) -> i32 {
    let input = KerasInputPtrs { x, mask, initial_h, initial_c: ptr::null() };
    let weights = KerasWeightPtrs { kernel, recurrent_kernel, bias };
    let output = KerasOutputPtrs { y, last_output, h_n, c_n: ptr::null_mut() };
    // SAFETY: the caller's contract, as `one_shot` requires it.
    guard("mrnn_gru_keras", || unsafe { one_shot::<MrnnKerasGru>(attrs, input, weights, output) })
}

/// Keras-style masked SimpleRNN; see `masked_rnn.h` for the arguments.
///
/// # Safety
/// As [`mrnn_gru_onnx`].
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_rnn_keras(
    attrs: *const MrnnKerasRnnAttrs,
    x: *const f32,
    mask: *const u8,
    kernel: *const f32,
    recurrent_kernel: *const f32,
    bias: *const f32,
    initial_h: *const f32,
    y: *mut f32,
    last_output: *mut f32,
    h_n: *mut f32,
) -> i32 {
    let input = KerasInputPtrs { x, mask, initial_h, initial_c: ptr::null() };
    let weights = KerasWeightPtrs { kernel, recurrent_kernel, bias };
    let output = KerasOutputPtrs { y, last_output, h_n, c_n: ptr::null_mut() };
    // SAFETY: the caller's contract, as `one_shot` requires it.
    guard("mrnn_rnn_keras", || unsafe { one_shot::<MrnnKerasRnn>(attrs, input, weights, output) })
}

/// Creates an ONNX GRU node: validates `attrs` and packs `W`, `R`, `B` once; see `masked_rnn.h`.
///
/// # Safety
/// `attrs` is NULL or points to one readable `MrnnOnnxGruAttrs`; `w`, `r` and `b` are NULL or valid for
/// reading the tensor sizes the header documents; `out` is NULL or valid for writing one pointer; for the
/// duration of the call, and no other thread writes them meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_onnx_gru_new(
    attrs: *const MrnnOnnxGruAttrs,
    w: *const f32,
    r: *const f32,
    b: *const f32,
    out: *mut *mut MrnnOnnxGru,
) -> i32 {
    let weights = OnnxWeightPtrs { w, r, b, p: ptr::null() };
    // SAFETY: the caller's contract, as `new` requires it.
    guard("mrnn_onnx_gru_new", || unsafe { new(attrs, weights, out) })
}

/// Runs an ONNX GRU node made by [`mrnn_onnx_gru_new`]; see `masked_rnn.h`. Results are bitwise those of
/// [`mrnn_gru_onnx`] with the same attributes and weights.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_onnx_gru_new`] not yet freed (other threads may run it at the
/// same time, none may free it meanwhile). Every other non-NULL pointer is valid for the tensor size the
/// header documents for it (reads for the `const` inputs, writes for the outputs) for the duration of the
/// call, and no other thread writes the inputs or touches the outputs meanwhile.
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_onnx_gru_run(
    layer: *const MrnnOnnxGru,
    attrs: *const MrnnOnnxGruAttrs,
    x: *const f32,
    sequence_lens: *const i32,
    initial_h: *const f32,
    y: *mut f32,
    y_h: *mut f32,
) -> i32 {
    let input = OnnxInputPtrs { x, sequence_lens, initial_h, initial_c: ptr::null() };
    let output = OnnxOutputPtrs { y, y_h, y_c: ptr::null_mut() };
    // SAFETY: the caller's contract, as `run` requires it.
    guard("mrnn_onnx_gru_run", || unsafe { run(layer, attrs, input, output) })
}

/// Frees a handle made by [`mrnn_onnx_gru_new`]; NULL is a no-op.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_onnx_gru_new`] not yet freed, which no other thread uses during
/// or after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_onnx_gru_free(layer: *mut MrnnOnnxGru) {
    // SAFETY: the caller's contract: a pointer from `Box::into_raw` (`mrnn_onnx_gru_new`) or NULL.
    unsafe { free_boxed("mrnn_onnx_gru_free", layer) }
}

/// Creates an ONNX RNN node: validates `attrs` and packs `W`, `R`, `B` once; see `masked_rnn.h`.
///
/// # Safety
/// As [`mrnn_onnx_gru_new`], with `MrnnOnnxRnnAttrs`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_onnx_rnn_new(
    attrs: *const MrnnOnnxRnnAttrs,
    w: *const f32,
    r: *const f32,
    b: *const f32,
    out: *mut *mut MrnnOnnxRnn,
) -> i32 {
    let weights = OnnxWeightPtrs { w, r, b, p: ptr::null() };
    // SAFETY: the caller's contract, as `new` requires it.
    guard("mrnn_onnx_rnn_new", || unsafe { new(attrs, weights, out) })
}

/// Runs an ONNX RNN node made by [`mrnn_onnx_rnn_new`]; see `masked_rnn.h`. Results are bitwise those of
/// [`mrnn_rnn_onnx`] with the same attributes and weights.
///
/// # Safety
/// As [`mrnn_onnx_gru_run`], with a handle from [`mrnn_onnx_rnn_new`].
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_onnx_rnn_run(
    layer: *const MrnnOnnxRnn,
    attrs: *const MrnnOnnxRnnAttrs,
    x: *const f32,
    sequence_lens: *const i32,
    initial_h: *const f32,
    y: *mut f32,
    y_h: *mut f32,
) -> i32 {
    let input = OnnxInputPtrs { x, sequence_lens, initial_h, initial_c: ptr::null() };
    let output = OnnxOutputPtrs { y, y_h, y_c: ptr::null_mut() };
    // SAFETY: the caller's contract, as `run` requires it.
    guard("mrnn_onnx_rnn_run", || unsafe { run(layer, attrs, input, output) })
}

/// Frees a handle made by [`mrnn_onnx_rnn_new`]; NULL is a no-op.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_onnx_rnn_new`] not yet freed, which no other thread uses during
/// or after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_onnx_rnn_free(layer: *mut MrnnOnnxRnn) {
    // SAFETY: the caller's contract: a pointer from `Box::into_raw` (`mrnn_onnx_rnn_new`) or NULL.
    unsafe { free_boxed("mrnn_onnx_rnn_free", layer) }
}

/// Creates a Keras GRU layer: validates `attrs` and packs the weights once; see `masked_rnn.h`.
///
/// # Safety
/// `attrs` is NULL or points to one readable `MrnnKerasGruAttrs`; `kernel`, `recurrent_kernel` and `bias`
/// are NULL or valid for reading the tensor sizes the header documents; `out` is NULL or valid for writing
/// one pointer; for the duration of the call, and no other thread writes them meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_keras_gru_new(
    attrs: *const MrnnKerasGruAttrs,
    kernel: *const f32,
    recurrent_kernel: *const f32,
    bias: *const f32,
    out: *mut *mut MrnnKerasGru,
) -> i32 {
    let weights = KerasWeightPtrs { kernel, recurrent_kernel, bias };
    // SAFETY: the caller's contract, as `new` requires it.
    guard("mrnn_keras_gru_new", || unsafe { new(attrs, weights, out) })
}

/// Runs a Keras GRU layer made by [`mrnn_keras_gru_new`]; see `masked_rnn.h`. Results are bitwise those
/// of [`mrnn_gru_keras`] with the same attributes and weights.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_keras_gru_new`] not yet freed (other threads may run it at the
/// same time, none may free it meanwhile). Every other non-NULL pointer is valid for the tensor size the
/// header documents for it (reads for the `const` inputs, writes for the outputs) for the duration of the
/// call, and no other thread writes the inputs or touches the outputs meanwhile.
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_keras_gru_run(
    layer: *const MrnnKerasGru,
    attrs: *const MrnnKerasGruAttrs,
    x: *const f32,
    mask: *const u8,
    initial_h: *const f32,
    y: *mut f32,
    last_output: *mut f32,
    h_n: *mut f32,
) -> i32 {
    let input = KerasInputPtrs { x, mask, initial_h, initial_c: ptr::null() };
    let output = KerasOutputPtrs { y, last_output, h_n, c_n: ptr::null_mut() };
    // SAFETY: the caller's contract, as `run` requires it.
    guard("mrnn_keras_gru_run", || unsafe { run(layer, attrs, input, output) })
}

/// Frees a handle made by [`mrnn_keras_gru_new`]; NULL is a no-op.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_keras_gru_new`] not yet freed, which no other thread uses during
/// or after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_keras_gru_free(layer: *mut MrnnKerasGru) {
    // SAFETY: the caller's contract: a pointer from `Box::into_raw` (`mrnn_keras_gru_new`) or NULL.
    unsafe { free_boxed("mrnn_keras_gru_free", layer) }
}

/// Creates a Keras SimpleRNN layer: validates `attrs` and packs the weights once; see `masked_rnn.h`.
///
/// # Safety
/// As [`mrnn_keras_gru_new`], with `MrnnKerasRnnAttrs`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_keras_rnn_new(
    attrs: *const MrnnKerasRnnAttrs,
    kernel: *const f32,
    recurrent_kernel: *const f32,
    bias: *const f32,
    out: *mut *mut MrnnKerasRnn,
) -> i32 {
    let weights = KerasWeightPtrs { kernel, recurrent_kernel, bias };
    // SAFETY: the caller's contract, as `new` requires it.
    guard("mrnn_keras_rnn_new", || unsafe { new(attrs, weights, out) })
}

/// Runs a Keras SimpleRNN layer made by [`mrnn_keras_rnn_new`]; see `masked_rnn.h`. Results are bitwise
/// those of [`mrnn_rnn_keras`] with the same attributes and weights.
///
/// # Safety
/// As [`mrnn_keras_gru_run`], with a handle from [`mrnn_keras_rnn_new`].
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_keras_rnn_run(
    layer: *const MrnnKerasRnn,
    attrs: *const MrnnKerasRnnAttrs,
    x: *const f32,
    mask: *const u8,
    initial_h: *const f32,
    y: *mut f32,
    last_output: *mut f32,
    h_n: *mut f32,
) -> i32 {
    let input = KerasInputPtrs { x, mask, initial_h, initial_c: ptr::null() };
    let output = KerasOutputPtrs { y, last_output, h_n, c_n: ptr::null_mut() };
    // SAFETY: the caller's contract, as `run` requires it.
    guard("mrnn_keras_rnn_run", || unsafe { run(layer, attrs, input, output) })
}

/// Frees a handle made by [`mrnn_keras_rnn_new`]; NULL is a no-op.
///
/// # Safety
/// `layer` is NULL or a handle from [`mrnn_keras_rnn_new`] not yet freed, which no other thread uses during
/// or after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mrnn_keras_rnn_free(layer: *mut MrnnKerasRnn) {
    // SAFETY: the caller's contract: a pointer from `Box::into_raw` (`mrnn_keras_rnn_new`) or NULL.
    unsafe { free_boxed("mrnn_keras_rnn_free", layer) }
}

// ------------------------------------------------------------------------------- training functions

/// The training functions of a Keras kind (C_ABI.md section 4, as section 3 for the LSTM): the one-shot
/// backward of the forward `$forward`, and on a handle `$run_train`, `$run_backward`, `$set_weights`;
/// each an entry point of the one path of every kind (module `layer`).
macro_rules! keras_train_functions {
    (
        $handle:ident, $attrs:ident, $forward:ident, $new:ident, $run:ident,
        $backward:ident, $run_train:ident, $run_backward:ident, $set_weights:ident
    ) => {
        #[doc = concat!("The gradients of [`", stringify!($forward), "`]; see `masked_rnn.h` for the arguments.")]
        ///
        /// # Safety
        /// Every non-NULL pointer is valid for the tensor size the header documents for it (reads for the
        /// `const` inputs, writes for the outputs) for the duration of the call, and no other thread writes
        /// the inputs or touches the outputs meanwhile. NULL is always allowed: it is reported or means
        /// "absent".
        #[allow(clippy::too_many_arguments)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $backward(
            attrs: *const $attrs,
            x: *const f32,
            mask: *const u8,
            kernel: *const f32,
            recurrent_kernel: *const f32,
            bias: *const f32,
            initial_h: *const f32,
            dy: *const f32,
            d_last_output: *const f32,
            d_h_n: *const f32,
            dx: *mut f32,
            d_kernel: *mut f32,
            d_recurrent_kernel: *mut f32,
            d_bias: *mut f32,
            d_initial_h: *mut f32,
        ) -> i32 {
            let input = KerasInputPtrs { x, mask, initial_h, initial_c: ptr::null() };
            let weights = KerasWeightPtrs { kernel, recurrent_kernel, bias };
            let grads = KerasGradPtrs {
                up: KerasUpstreamPtrs { dy, d_last_output, d_h_n, d_c_n: ptr::null() },
                out: KerasGradOutPtrs {
                    dx,
                    d_kernel,
                    d_recurrent_kernel,
                    d_bias,
                    d_initial_h,
                    d_initial_c: ptr::null_mut(),
                },
            };
            // SAFETY: the caller's contract, as `one_shot_backward` requires it.
            guard(stringify!($backward), || unsafe { one_shot_backward::<$handle>(attrs, input, weights, grads) })
        }

        #[doc = concat!("Runs a handle as [`", stringify!($run), "`] does and returns a tape for [`")]
        #[doc = concat!(stringify!($run_backward), "`]; see `masked_rnn.h`.")]
        ///
        /// # Safety
        #[doc = concat!("`layer` is NULL or a handle from [`", stringify!($new), "`] not yet freed (other")]
        /// threads may use it at the same time, none may free it meanwhile); `tape` is NULL or valid for
        /// writing one pointer. Every other non-NULL pointer is valid for the tensor size the header
        /// documents for it (reads for the `const` inputs, writes for the outputs) for the duration of the
        /// call, and no other thread writes the inputs or touches the outputs meanwhile.
        #[allow(clippy::too_many_arguments)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $run_train(
            layer: *const $handle,
            attrs: *const $attrs,
            x: *const f32,
            mask: *const u8,
            initial_h: *const f32,
            y: *mut f32,
            last_output: *mut f32,
            h_n: *mut f32,
            tape: *mut *mut MrnnTape,
        ) -> i32 {
            let input = KerasInputPtrs { x, mask, initial_h, initial_c: ptr::null() };
            let output = KerasOutputPtrs { y, last_output, h_n, c_n: ptr::null_mut() };
            // SAFETY: the caller's contract, as `run_train` requires it.
            guard(stringify!($run_train), || unsafe { run_train(layer, attrs, input, output, tape) })
        }

        #[doc = concat!("The gradients of the run that made `tape`: bitwise those of [`", stringify!($backward), "`]")]
        /// with the same inputs; see `masked_rnn.h`.
        ///
        /// # Safety
        #[doc = concat!("`layer` is NULL or a handle from [`", stringify!($new), "`] not yet freed, `tape`")]
        /// NULL or a tape (of any kind) not yet freed (other threads may use either at the same time, none
        /// may free them meanwhile). Every other non-NULL pointer is valid for the tensor size the header
        /// documents for it (reads for the `const` inputs, writes for the outputs) for the duration of the
        /// call, and no other thread writes the inputs or touches the outputs meanwhile.
        #[allow(clippy::too_many_arguments)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $run_backward(
            layer: *const $handle,
            tape: *const MrnnTape,
            dy: *const f32,
            d_last_output: *const f32,
            d_h_n: *const f32,
            dx: *mut f32,
            d_kernel: *mut f32,
            d_recurrent_kernel: *mut f32,
            d_bias: *mut f32,
            d_initial_h: *mut f32,
        ) -> i32 {
            let grads = KerasGradPtrs {
                up: KerasUpstreamPtrs { dy, d_last_output, d_h_n, d_c_n: ptr::null() },
                out: KerasGradOutPtrs {
                    dx,
                    d_kernel,
                    d_recurrent_kernel,
                    d_bias,
                    d_initial_h,
                    d_initial_c: ptr::null_mut(),
                },
            };
            // SAFETY: the caller's contract, as `run_backward` requires it.
            guard(stringify!($run_backward), || unsafe { run_backward(layer, tape, grads) })
        }

        /// Replaces the weights of a handle (shapes as at creation; `bias` NULL: zeros); older tapes become
        /// stale. See `masked_rnn.h`.
        ///
        /// # Safety
        #[doc = concat!("`layer` is NULL or a handle from [`", stringify!($new), "`] not yet freed (other")]
        /// threads may run it at the same time, none may free it meanwhile); `kernel`, `recurrent_kernel`
        /// and `bias` are NULL or valid for reading the tensor sizes the header documents, and no other
        /// thread writes them during the call.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $set_weights(
            layer: *mut $handle,
            kernel: *const f32,
            recurrent_kernel: *const f32,
            bias: *const f32,
        ) -> i32 {
            let weights = KerasWeightPtrs { kernel, recurrent_kernel, bias };
            // SAFETY: the caller's contract, as `set_weights` requires it.
            guard(stringify!($set_weights), || unsafe { set_weights(layer, weights) })
        }
    };
}

/// The training functions of an ONNX kind, as [`keras_train_functions!`] for a Keras one.
macro_rules! onnx_train_functions {
    (
        $handle:ident, $attrs:ident, $forward:ident, $new:ident, $run:ident,
        $backward:ident, $run_train:ident, $run_backward:ident, $set_weights:ident
    ) => {
        #[doc = concat!("The gradients of [`", stringify!($forward), "`]; see `masked_rnn.h` for the arguments.")]
        ///
        /// # Safety
        /// Every non-NULL pointer is valid for the tensor size the header documents for it (reads for the
        /// `const` inputs, writes for the outputs) for the duration of the call, and no other thread writes
        /// the inputs or touches the outputs meanwhile. NULL is always allowed: it is reported or means
        /// "absent".
        #[allow(clippy::too_many_arguments)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $backward(
            attrs: *const $attrs,
            x: *const f32,
            w: *const f32,
            r: *const f32,
            b: *const f32,
            sequence_lens: *const i32,
            initial_h: *const f32,
            dy: *const f32,
            dy_h: *const f32,
            dx: *mut f32,
            dw: *mut f32,
            dr: *mut f32,
            db: *mut f32,
            d_initial_h: *mut f32,
        ) -> i32 {
            let input = OnnxInputPtrs { x, sequence_lens, initial_h, initial_c: ptr::null() };
            let weights = OnnxWeightPtrs { w, r, b, p: ptr::null() };
            let (dy_c, d_initial_c, dp) = (ptr::null(), ptr::null_mut(), ptr::null_mut());
            let grads = OnnxGradPtrs { dy, dy_h, dy_c, dx, dw, dr, db, d_initial_h, d_initial_c, dp };
            // SAFETY: the caller's contract, as `one_shot_backward` requires it.
            guard(stringify!($backward), || unsafe { one_shot_backward::<$handle>(attrs, input, weights, grads) })
        }

        #[doc = concat!("Runs a handle as [`", stringify!($run), "`] does and returns a tape for [`")]
        #[doc = concat!(stringify!($run_backward), "`]; see `masked_rnn.h`.")]
        ///
        /// # Safety
        #[doc = concat!("`layer` is NULL or a handle from [`", stringify!($new), "`] not yet freed (other")]
        /// threads may use it at the same time, none may free it meanwhile); `tape` is NULL or valid for
        /// writing one pointer. Every other non-NULL pointer is valid for the tensor size the header
        /// documents for it (reads for the `const` inputs, writes for the outputs) for the duration of the
        /// call, and no other thread writes the inputs or touches the outputs meanwhile.
        #[allow(clippy::too_many_arguments)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $run_train(
            layer: *const $handle,
            attrs: *const $attrs,
            x: *const f32,
            sequence_lens: *const i32,
            initial_h: *const f32,
            y: *mut f32,
            y_h: *mut f32,
            tape: *mut *mut MrnnTape,
        ) -> i32 {
            let input = OnnxInputPtrs { x, sequence_lens, initial_h, initial_c: ptr::null() };
            let output = OnnxOutputPtrs { y, y_h, y_c: ptr::null_mut() };
            // SAFETY: the caller's contract, as `run_train` requires it.
            guard(stringify!($run_train), || unsafe { run_train(layer, attrs, input, output, tape) })
        }

        #[doc = concat!("The gradients of the run that made `tape`: bitwise those of [`", stringify!($backward), "`]")]
        /// with the same inputs; see `masked_rnn.h`.
        ///
        /// # Safety
        #[doc = concat!("`layer` is NULL or a handle from [`", stringify!($new), "`] not yet freed, `tape`")]
        /// NULL or a tape (of any kind) not yet freed (other threads may use either at the same time, none
        /// may free them meanwhile). Every other non-NULL pointer is valid for the tensor size the header
        /// documents for it (reads for the `const` inputs, writes for the outputs) for the duration of the
        /// call, and no other thread writes the inputs or touches the outputs meanwhile.
        #[allow(clippy::too_many_arguments)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $run_backward(
            layer: *const $handle,
            tape: *const MrnnTape,
            dy: *const f32,
            dy_h: *const f32,
            dx: *mut f32,
            dw: *mut f32,
            dr: *mut f32,
            db: *mut f32,
            d_initial_h: *mut f32,
        ) -> i32 {
            let (dy_c, d_initial_c, dp) = (ptr::null(), ptr::null_mut(), ptr::null_mut());
            let grads = OnnxGradPtrs { dy, dy_h, dy_c, dx, dw, dr, db, d_initial_h, d_initial_c, dp };
            // SAFETY: the caller's contract, as `run_backward` requires it.
            guard(stringify!($run_backward), || unsafe { run_backward(layer, tape, grads) })
        }

        /// Replaces the weights of a handle (shapes as at creation; `b` NULL: zeros); older tapes become
        /// stale. See `masked_rnn.h`.
        ///
        /// # Safety
        #[doc = concat!("`layer` is NULL or a handle from [`", stringify!($new), "`] not yet freed (other")]
        /// threads may run it at the same time, none may free it meanwhile); `w`, `r` and `b` are NULL or
        /// valid for reading the tensor sizes the header documents, and no other thread writes them during
        /// the call.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $set_weights(layer: *mut $handle, w: *const f32, r: *const f32, b: *const f32) -> i32 {
            let weights = OnnxWeightPtrs { w, r, b, p: ptr::null() };
            // SAFETY: the caller's contract, as `set_weights` requires it.
            guard(stringify!($set_weights), || unsafe { set_weights(layer, weights) })
        }
    };
}

keras_train_functions!(
    MrnnKerasGru,
    MrnnKerasGruAttrs,
    mrnn_gru_keras,
    mrnn_keras_gru_new,
    mrnn_keras_gru_run,
    mrnn_gru_keras_backward,
    mrnn_keras_gru_run_train,
    mrnn_keras_gru_run_backward,
    mrnn_keras_gru_set_weights
);
keras_train_functions!(
    MrnnKerasRnn,
    MrnnKerasRnnAttrs,
    mrnn_rnn_keras,
    mrnn_keras_rnn_new,
    mrnn_keras_rnn_run,
    mrnn_rnn_keras_backward,
    mrnn_keras_rnn_run_train,
    mrnn_keras_rnn_run_backward,
    mrnn_keras_rnn_set_weights
);
onnx_train_functions!(
    MrnnOnnxGru,
    MrnnOnnxGruAttrs,
    mrnn_gru_onnx,
    mrnn_onnx_gru_new,
    mrnn_onnx_gru_run,
    mrnn_gru_onnx_backward,
    mrnn_onnx_gru_run_train,
    mrnn_onnx_gru_run_backward,
    mrnn_onnx_gru_set_weights
);
onnx_train_functions!(
    MrnnOnnxRnn,
    MrnnOnnxRnnAttrs,
    mrnn_rnn_onnx,
    mrnn_onnx_rnn_new,
    mrnn_onnx_rnn_run,
    mrnn_rnn_onnx_backward,
    mrnn_onnx_rnn_run_train,
    mrnn_onnx_rnn_run_backward,
    mrnn_onnx_rnn_set_weights
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cells::gru::GruWeights;
    use crate::cells::rnn::RnnWeights;
    use crate::fuzzing::same_bits;

    fn last() -> String {
        last_error_message()
    }

    fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / 16_777_216.0 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// A Keras GRU (`gates` 3) or SimpleRNN (1) problem: weights, inputs with holes, an initial state.
    struct KerasProblem {
        b: usize,
        t: usize,
        i: usize,
        h: usize,
        kernel: Vec<f32>,
        recurrent: Vec<f32>,
        bias: Vec<f32>,
        x: Vec<f32>,
        mask: Vec<u8>,
        h0: Vec<f32>,
    }

    impl KerasProblem {
        fn new(gates: usize, bias_rows: usize) -> Self {
            let (b, t, i, h) = (3, 5, 4, 6);
            KerasProblem {
                b,
                t,
                i,
                h,
                kernel: values(i * gates * h, 1, 0.6),
                recurrent: values(h * gates * h, 2, 0.6),
                bias: values(bias_rows * gates * h, 3, 0.4),
                x: values(b * t * i, 4, 1.5),
                mask: (0..b * t).map(|k| u8::from(k % 4 != 1)).collect(),
                h0: values(b * h, 5, 0.8),
            }
        }
    }

    #[test]
    fn keras_gru_and_rnn_equal_the_rust_api_and_their_handles() {
        for (reset_after, recurrent) in [(1, 0), (0, 7)] {
            let p = KerasProblem::new(3, if reset_after == 1 { 2 } else { 1 });
            let attrs = MrnnKerasGruAttrs {
                batch_size: p.b as i64,
                seq_length: p.t as i64,
                input_size: p.i as i64,
                hidden_size: p.h as i64,
                go_backwards: 1,
                recurrent_activation: recurrent,
                recurrent_alpha: 1.0 / 6.0,
                reset_after,
                num_threads: 2,
                ..Default::default()
            };
            let view = SeqView::from_mask_bytes(&p.mask, p.b, p.t).unwrap();
            let v = keras_values(&attrs.fields()).unwrap();
            let options = <KerasGru as KerasCell>::options(&v);
            let weights = GruWeights::from_keras(p.i, p.h, &p.kernel, &p.recurrent, Some(&p.bias), reset_after == 1);
            let layer = KerasGru::new(weights.unwrap(), options).unwrap();
            let (want, _) = layer.forward_all(&p.x, &view, Some(&p.h0), 1).unwrap();
            let mut got = [p.b * p.t * p.h, p.b * p.h, p.b * p.h].map(|n| vec![f32::NAN; n]);
            let [y, last_output, h_n] = &mut got;
            let (k, r, bias) = (p.kernel.as_ptr(), p.recurrent.as_ptr(), p.bias.as_ptr());
            // SAFETY: every buffer has the size of the attributes.
            let status = unsafe {
                let (m, h0) = (p.mask.as_ptr(), p.h0.as_ptr());
                mrnn_gru_keras(
                    &attrs,
                    p.x.as_ptr(),
                    m,
                    k,
                    r,
                    bias,
                    h0,
                    y.as_mut_ptr(),
                    last_output.as_mut_ptr(),
                    h_n.as_mut_ptr(),
                )
            };
            assert_eq!(status, MRNN_OK, "{}", last());
            same_bits("y", &got[0], &want.y).unwrap();
            same_bits("last_output", &got[1], &want.last_output).unwrap();
            same_bits("h_n", &got[2], &want.h_n).unwrap();
            let mut layer = ptr::null_mut();
            // SAFETY: the weights have the sizes of the attributes.
            assert_eq!(unsafe { mrnn_keras_gru_new(&attrs, k, r, bias, &mut layer) }, MRNN_OK);
            let mut again = [p.b * p.t * p.h, p.b * p.h, p.b * p.h].map(|n| vec![f32::NAN; n]);
            let [y, last_output, h_n] = &mut again;
            let run = MrnnKerasGruAttrs { num_threads: 1, ..attrs };
            // SAFETY: as above.
            let status = unsafe {
                let (m, h0) = (p.mask.as_ptr(), p.h0.as_ptr());
                mrnn_keras_gru_run(
                    layer,
                    &run,
                    p.x.as_ptr(),
                    m,
                    h0,
                    y.as_mut_ptr(),
                    last_output.as_mut_ptr(),
                    h_n.as_mut_ptr(),
                )
            };
            assert_eq!(status, MRNN_OK, "{}", last());
            for (a, b) in again.iter().zip(&got) {
                same_bits("handle vs one-shot", a, b).unwrap();
            }
            let cases = [
                (MrnnKerasGruAttrs { reset_after: 1 - reset_after, ..run }, "reset_after"),
                (MrnnKerasGruAttrs { recurrent_activation: 2, ..run }, "recurrent_activation"),
                (MrnnKerasGruAttrs { hidden_size: 5, ..run }, "hidden_size"),
            ];
            for (bad, field) in cases {
                // SAFETY: fails validation before any buffer is touched.
                let status = unsafe {
                    let n = ptr::null_mut();
                    mrnn_keras_gru_run(layer, &bad, p.x.as_ptr(), ptr::null(), ptr::null(), n, n, n)
                };
                assert_eq!(status, MRNN_ERR_BAD_ARGUMENT, "{field}");
                assert!(last().contains(&format!("attrs.{field} ")), "{field}: {}", last());
            }
            // The HardSigmoid flavour is fixed at creation; ignored for other activations.
            let alpha = MrnnKerasGruAttrs { recurrent_alpha: 0.2, ..run };
            // SAFETY: as above.
            let status = unsafe {
                let n = ptr::null_mut();
                mrnn_keras_gru_run(layer, &alpha, p.x.as_ptr(), ptr::null(), ptr::null(), n, n, n)
            };
            assert_eq!(status, if recurrent == 7 { MRNN_ERR_BAD_ARGUMENT } else { MRNN_OK }, "{}", last());
            // SAFETY: a live handle, freed once.
            unsafe { mrnn_keras_gru_free(layer) };
        }

        let p = KerasProblem::new(1, 1);
        let attrs = MrnnKerasRnnAttrs {
            batch_size: p.b as i64,
            seq_length: p.t as i64,
            input_size: p.i as i64,
            hidden_size: p.h as i64,
            zero_output_for_mask: 1,
            activation: 2,
            ..Default::default()
        };
        let view = SeqView::from_mask_bytes(&p.mask, p.b, p.t).unwrap();
        let options = KerasRnnOptions::default().activation(Activation::Relu).zero_output_for_mask(true);
        let weights = RnnWeights::from_keras(p.i, p.h, &p.kernel, &p.recurrent, Some(&p.bias)).unwrap();
        let (want, _) =
            KerasSimpleRnn::new(weights, options).unwrap().forward_all(&p.x, &view, Some(&p.h0), 1).unwrap();
        let mut layer = ptr::null_mut();
        let (k, r, bias) = (p.kernel.as_ptr(), p.recurrent.as_ptr(), p.bias.as_ptr());
        // SAFETY: the weights have the sizes of the attributes.
        assert_eq!(unsafe { mrnn_keras_rnn_new(&attrs, k, r, bias, &mut layer) }, MRNN_OK);
        for handle in [ptr::null_mut(), layer] {
            let mut got = [p.b * p.t * p.h, p.b * p.h, p.b * p.h].map(|n| vec![f32::NAN; n]);
            let [y, last_output, h_n] = &mut got;
            // SAFETY: every buffer has the size of the attributes; `handle` is NULL or live.
            let status = unsafe {
                let (x, m, h0) = (p.x.as_ptr(), p.mask.as_ptr(), p.h0.as_ptr());
                let (y, l, hn) = (y.as_mut_ptr(), last_output.as_mut_ptr(), h_n.as_mut_ptr());
                if handle.is_null() {
                    mrnn_rnn_keras(&attrs, x, m, k, r, bias, h0, y, l, hn)
                } else {
                    mrnn_keras_rnn_run(handle, &attrs, x, m, h0, y, l, hn)
                }
            };
            assert_eq!(status, MRNN_OK, "{}", last());
            same_bits("y", &got[0], &want.y).unwrap();
            same_bits("last_output", &got[1], &want.last_output).unwrap();
            same_bits("h_n", &got[2], &want.h_n).unwrap();
        }
        let bad = MrnnKerasRnnAttrs { go_backwards: 1, ..attrs };
        // SAFETY: fails validation before any buffer is touched.
        let status = unsafe {
            let n = ptr::null_mut();
            mrnn_keras_rnn_run(layer, &bad, p.x.as_ptr(), ptr::null(), ptr::null(), n, n, n)
        };
        assert_eq!(status, MRNN_ERR_BAD_ARGUMENT);
        assert!(last().contains("attrs.go_backwards "), "{}", last());
        // SAFETY: a live handle, freed once; NULL is a no-op.
        unsafe {
            mrnn_keras_rnn_free(layer);
            mrnn_keras_rnn_free(ptr::null_mut());
        }
    }

    #[test]
    fn onnx_gru_and_rnn_equal_the_rust_api_and_their_handles() {
        let (t, b, i, h, d) = (4, 3, 2, 5, 2);
        let x = values(t * b * i, 7, 1.5);
        let lens = [4, 0, 2];
        let h0 = values(d * b * h, 8, 0.8);
        for gates in [3, 1] {
            let (w, r, bias) = (
                values(d * gates * h * i, 9, 0.6),
                values(d * gates * h * h, 10, 0.6),
                values(d * 2 * gates * h, 11, 0.4),
            );
            let want = if gates == 3 {
                let a = OnnxGruAttrs::new(h, Direction::Bidirectional)
                    .layout(Layout::BatchMajor)
                    .linear_before_reset(true)
                    .clip(Some(2.0))
                    .activations(vec![
                        Activation::Sigmoid,
                        Activation::Tanh,
                        Activation::HardSigmoid { alpha: 0.3, beta: 0.5 },
                        Activation::Softsign,
                    ]);
                OnnxGru::new(a, i, &w, &r, Some(&bias))
                    .unwrap()
                    .forward_all(&x, t, b, Some(&lens), Some(&h0), 1)
                    .unwrap()
                    .0
            } else {
                let a = OnnxRnnAttrs::new(h, Direction::Bidirectional).layout(Layout::BatchMajor).clip(Some(2.0));
                OnnxRnn::new(a, i, &w, &r, Some(&bias))
                    .unwrap()
                    .forward_all(&x, t, b, Some(&lens), Some(&h0), 1)
                    .unwrap()
                    .0
            };
            let sizes = [t * d * b * h, d * b * h];
            let (wp, rp, bp) = (w.as_ptr(), r.as_ptr(), bias.as_ptr());
            let gru = MrnnOnnxGruAttrs {
                seq_length: t as i64,
                batch_size: b as i64,
                input_size: i as i64,
                hidden_size: h as i64,
                direction: 2,
                layout: 1,
                linear_before_reset: 1,
                has_clip: 1,
                clip: 2.0,
                num_activations: 4,
                activations: [0, 1, 7, 9],
                activation_alpha: [f32::NAN, f32::NAN, 0.3, f32::NAN],
                ..Default::default()
            };
            let rnn = MrnnOnnxRnnAttrs {
                seq_length: t as i64,
                batch_size: b as i64,
                input_size: i as i64,
                hidden_size: h as i64,
                direction: 2,
                layout: 1,
                has_clip: 1,
                clip: 2.0,
                ..Default::default()
            };
            let (mut g, mut n) = (ptr::null_mut(), ptr::null_mut());
            // SAFETY: the weights have the sizes of the attributes.
            unsafe {
                if gates == 3 {
                    assert_eq!(mrnn_onnx_gru_new(&gru, wp, rp, bp, &mut g), MRNN_OK, "{}", last());
                } else {
                    assert_eq!(mrnn_onnx_rnn_new(&rnn, wp, rp, bp, &mut n), MRNN_OK, "{}", last());
                }
            }
            for handle in [false, true] {
                let mut got = sizes.map(|n| vec![f32::NAN; n]);
                let [y, y_h] = &mut got;
                let (xp, lp, hp, yp, yhp) = (x.as_ptr(), lens.as_ptr(), h0.as_ptr(), y.as_mut_ptr(), y_h.as_mut_ptr());
                // SAFETY: every buffer has the size of the attributes; the handles are live.
                let status = unsafe {
                    match (gates, handle) {
                        (3, false) => mrnn_gru_onnx(&gru, xp, wp, rp, bp, lp, hp, yp, yhp),
                        (3, true) => mrnn_onnx_gru_run(g, &gru, xp, lp, hp, yp, yhp),
                        (_, false) => mrnn_rnn_onnx(&rnn, xp, wp, rp, bp, lp, hp, yp, yhp),
                        (_, true) => mrnn_onnx_rnn_run(n, &rnn, xp, lp, hp, yp, yhp),
                    }
                };
                assert_eq!(status, MRNN_OK, "{}", last());
                same_bits("Y", &got[0], &want.y).unwrap();
                same_bits("Y_h", &got[1], &want.y_h).unwrap();
                // A bad length: refused, nothing written.
                let bad = [4, 5, 0];
                let mut canary = sizes.map(|n| vec![7.0_f32; n]);
                let [y, y_h] = &mut canary;
                let (lp, yp, yhp) = (bad.as_ptr(), y.as_mut_ptr(), y_h.as_mut_ptr());
                // SAFETY: as above.
                let status = unsafe {
                    match (gates, handle) {
                        (3, false) => mrnn_gru_onnx(&gru, xp, wp, rp, bp, lp, hp, yp, yhp),
                        (3, true) => mrnn_onnx_gru_run(g, &gru, xp, lp, hp, yp, yhp),
                        (_, false) => mrnn_rnn_onnx(&rnn, xp, wp, rp, bp, lp, hp, yp, yhp),
                        (_, true) => mrnn_onnx_rnn_run(n, &rnn, xp, lp, hp, yp, yhp),
                    }
                };
                assert_eq!(status, MRNN_ERR_BAD_ARGUMENT);
                assert!(last().contains("sequence_lens[1] = 5"), "{}", last());
                assert!(canary.iter().flatten().all(|&v| v == 7.0));
            }
            // Mismatched attributes on a run.
            let mut acts = gru.activations;
            acts[3] = 1;
            let cases = [
                (MrnnOnnxGruAttrs { linear_before_reset: 0, ..gru }, "linear_before_reset"),
                (MrnnOnnxGruAttrs { activations: acts, ..gru }, "activations[3]"),
                (MrnnOnnxGruAttrs { clip: 3.0, ..gru }, "clip"),
            ];
            let xp = x.as_ptr();
            let none = ptr::null_mut();
            for (bad, field) in cases.iter().filter(|_| gates == 3) {
                // SAFETY: fails validation before any buffer is touched.
                let status = unsafe { mrnn_onnx_gru_run(g, bad, xp, ptr::null(), ptr::null(), none, none) };
                assert_eq!(status, MRNN_ERR_BAD_ARGUMENT, "{field}");
                assert!(last().contains(&format!("attrs.{field} ")), "{field}: {}", last());
            }
            if gates == 1 {
                let bad = MrnnOnnxRnnAttrs { num_activations: 2, activations: [1, 2], ..rnn };
                // SAFETY: as above.
                let status = unsafe { mrnn_onnx_rnn_run(n, &bad, xp, ptr::null(), ptr::null(), none, none) };
                assert_eq!(status, MRNN_ERR_BAD_ARGUMENT);
                assert!(last().contains("attrs.num_activations "), "{}", last());
                let three = MrnnOnnxRnnAttrs { num_activations: 3, ..rnn };
                // SAFETY: as above.
                let status = unsafe { mrnn_onnx_rnn_run(n, &three, xp, ptr::null(), ptr::null(), none, none) };
                assert_eq!(status, MRNN_ERR_BAD_ARGUMENT);
                assert!(last().contains("expected 0 or 2 (1 per direction)"), "{}", last());
            }
            // SAFETY: live handles (or NULL), freed once.
            unsafe {
                mrnn_onnx_gru_free(g);
                mrnn_onnx_rnn_free(n);
            }
        }
    }

    #[test]
    fn attrs_init_writes_the_defaults() {
        let mut g = MrnnOnnxGruAttrs { hidden_size: 3, ..Default::default() };
        let mut r = MrnnOnnxRnnAttrs { hidden_size: 3, ..Default::default() };
        let mut kg = MrnnKerasGruAttrs { reset_after: 0, ..Default::default() };
        let mut kr = MrnnKerasRnnAttrs { activation: 2, ..Default::default() };
        // SAFETY: valid structs; NULL is reported.
        unsafe {
            assert_eq!(mrnn_onnx_gru_attrs_init(&mut g), MRNN_OK);
            assert_eq!(mrnn_onnx_rnn_attrs_init(&mut r), MRNN_OK);
            assert_eq!(mrnn_keras_gru_attrs_init(&mut kg), MRNN_OK);
            assert_eq!(mrnn_keras_rnn_attrs_init(&mut kr), MRNN_OK);
            assert_eq!(mrnn_keras_rnn_attrs_init(ptr::null_mut()), MRNN_ERR_NULL_POINTER);
        }
        assert_eq!((g.hidden_size, g.activations, r.hidden_size, r.activations), (0, [0, 1, 0, 1], 0, [1, 1]));
        assert_eq!((kg.reset_after, kg.activation, kg.recurrent_activation, kr.activation), (1, 1, 0, 1));
        assert!(kg.recurrent_alpha.is_nan() && g.clip.is_nan() && r.activation_beta.iter().all(|v| v.is_nan()));
    }

    fn bits(g: &[Vec<f32>]) -> Vec<Vec<u32>> {
        g.iter().map(|v| v.iter().map(|x| x.to_bits()).collect()).collect()
    }

    /// `[dx, d_kernel, d_recurrent_kernel, d_bias, d_initial_h]` of a Keras GRU (`gru`) or SimpleRNN
    /// problem with `dy` and `d_h_n`: by the one-shot backward (`layer` None) or by `run_backward` of
    /// `layer` with `tape`.
    fn keras_grads(
        p: &KerasProblem,
        gru: bool,
        kernel: &[f32],
        layer: Option<(HandlePtr, *const MrnnTape)>,
    ) -> (i32, Vec<Vec<f32>>) {
        let (g, rows) = if gru { (3, 2) } else { (1, 1) };
        let (b, t, i, h) = (p.b, p.t, p.i, p.h);
        let mut out: Vec<Vec<f32>> =
            [b * t * i, i * g * h, h * g * h, rows * g * h, b * h].iter().map(|&n| vec![f32::NAN; n]).collect();
        let [dx, dk, dr, db, dh] = &mut out[..] else { unreachable!() };
        let (dx, dk, dr, db, dh) =
            (dx.as_mut_ptr(), dk.as_mut_ptr(), dr.as_mut_ptr(), db.as_mut_ptr(), dh.as_mut_ptr());
        let dy = values(b * t * h, 21, 1.0);
        let dhn = values(b * h, 22, 1.0);
        let (x, m, k, r, bias, h0) =
            (p.x.as_ptr(), p.mask.as_ptr(), kernel.as_ptr(), p.recurrent.as_ptr(), p.bias.as_ptr(), p.h0.as_ptr());
        let (dyp, dhnp, none) = (dy.as_ptr(), dhn.as_ptr(), ptr::null());
        let (ga, ra) = (keras_gru_attrs(p), keras_rnn_attrs(p));
        // SAFETY: every buffer has the size of the problem's attributes; handles and tapes are live.
        let status = unsafe {
            match layer {
                None if gru => mrnn_gru_keras_backward(&ga, x, m, k, r, bias, h0, dyp, none, dhnp, dx, dk, dr, db, dh),
                None => mrnn_rnn_keras_backward(&ra, x, m, k, r, bias, h0, dyp, none, dhnp, dx, dk, dr, db, dh),
                Some((HandlePtr::KerasGru(l), tape)) => {
                    mrnn_keras_gru_run_backward(l, tape, dyp, none, dhnp, dx, dk, dr, db, dh)
                }
                Some((HandlePtr::KerasRnn(l), tape)) => {
                    mrnn_keras_rnn_run_backward(l, tape, dyp, none, dhnp, dx, dk, dr, db, dh)
                }
            }
        };
        (status, out)
    }

    /// A handle of the C ABI, by kind.
    #[derive(Clone, Copy)]
    enum HandlePtr {
        KerasGru(*mut MrnnKerasGru),
        KerasRnn(*mut MrnnKerasRnn),
    }

    fn keras_gru_attrs(p: &KerasProblem) -> MrnnKerasGruAttrs {
        let (b, t, i, h) = (p.b as i64, p.t as i64, p.i as i64, p.h as i64);
        MrnnKerasGruAttrs {
            batch_size: b,
            seq_length: t,
            input_size: i,
            hidden_size: h,
            num_threads: 2,
            ..Default::default()
        }
    }

    fn keras_rnn_attrs(p: &KerasProblem) -> MrnnKerasRnnAttrs {
        let (b, t, i, h) = (p.b as i64, p.t as i64, p.i as i64, p.h as i64);
        MrnnKerasRnnAttrs {
            batch_size: b,
            seq_length: t,
            input_size: i,
            hidden_size: h,
            go_backwards: 1,
            ..Default::default()
        }
    }

    /// A new handle of the problem's kind, and a tape of its run.
    fn keras_handle_and_tape(p: &KerasProblem, gru: bool) -> (HandlePtr, *mut MrnnTape) {
        let (k, r, bias) = (p.kernel.as_ptr(), p.recurrent.as_ptr(), p.bias.as_ptr());
        let (x, m, h0, none) = (p.x.as_ptr(), p.mask.as_ptr(), p.h0.as_ptr(), ptr::null_mut());
        let mut tape = ptr::null_mut();
        // SAFETY: every buffer has the size of the problem's attributes.
        unsafe {
            if gru {
                let mut l = ptr::null_mut();
                assert_eq!(mrnn_keras_gru_new(&keras_gru_attrs(p), k, r, bias, &mut l), MRNN_OK, "{}", last());
                let a = MrnnKerasGruAttrs { num_threads: 1, ..keras_gru_attrs(p) };
                assert_eq!(mrnn_keras_gru_run_train(l, &a, x, m, h0, none, none, none, &mut tape), MRNN_OK);
                (HandlePtr::KerasGru(l), tape)
            } else {
                let mut l = ptr::null_mut();
                assert_eq!(mrnn_keras_rnn_new(&keras_rnn_attrs(p), k, r, bias, &mut l), MRNN_OK, "{}", last());
                assert_eq!(mrnn_keras_rnn_run_train(l, &keras_rnn_attrs(p), x, m, h0, none, none, none, &mut tape), 0);
                (HandlePtr::KerasRnn(l), tape)
            }
        }
    }

    #[test]
    fn keras_gru_and_rnn_gradients_equal_the_rust_api_and_foreign_tapes_are_refused() {
        let (gp, rp) = (KerasProblem::new(3, 2), KerasProblem::new(1, 1));
        // The Rust API's gradients of the GRU problem.
        let view = SeqView::from_mask_bytes(&gp.mask, gp.b, gp.t).unwrap();
        let weights = GruWeights::from_keras(gp.i, gp.h, &gp.kernel, &gp.recurrent, Some(&gp.bias), true).unwrap();
        let layer = KerasGru::new(weights, KerasGruOptions::default()).unwrap();
        let mut tape = KerasTape::new();
        let ws = &mut Workspace::new();
        layer.forward_train(&gp.x, &view, Some(&gp.h0), KerasOutputs::default(), &mut tape, 1, ws).unwrap();
        let (s, one_shot) = keras_grads(&gp, true, &gp.kernel, None);
        assert_eq!(s, MRNN_OK, "{}", last());
        let mut want = one_shot.iter().map(|v| vec![f32::NAN; v.len()]).collect::<Vec<_>>();
        {
            let [dx, dk, dr, db, dh] = &mut want[..] else { unreachable!() };
            let (dy, dhn) = (values(dx.len() / gp.i * gp.h, 21, 1.0), values(dh.len(), 22, 1.0));
            let up = KerasUpstream { dy: Some(&dy), d_h_n: Some(&dhn), ..Default::default() };
            let grads = KerasGrads {
                dx: Some(dx),
                d_kernel: Some(dk),
                d_recurrent_kernel: Some(dr),
                d_bias: Some(db),
                d_initial_h: Some(dh),
                d_initial_c: None,
            };
            layer.backward(&gp.x, &view, Some(&gp.h0), &tape, up, grads, 3).unwrap();
        }
        assert_eq!(bits(&one_shot), bits(&want), "one-shot vs the Rust API");

        let (gru, gru_tape) = keras_handle_and_tape(&gp, true);
        let (rnn, rnn_tape) = keras_handle_and_tape(&rp, false);
        let (other, other_tape) = keras_handle_and_tape(&gp, true);
        let (s, run) = keras_grads(&gp, true, &gp.kernel, Some((gru, gru_tape)));
        assert_eq!(s, MRNN_OK, "{}", last());
        assert_eq!(bits(&run), bits(&one_shot), "run_backward vs one-shot");
        let (s, run) = keras_grads(&rp, false, &rp.kernel, Some((rnn, rnn_tape)));
        let (s1, once) = keras_grads(&rp, false, &rp.kernel, None);
        assert_eq!((s, s1), (MRNN_OK, MRNN_OK), "{}", last());
        assert_eq!(bits(&run), bits(&once), "SimpleRNN: run_backward vs one-shot");

        // Another handle's tape, a tape of another kind (the same record type): refused, nothing written.
        let (s, g) = keras_grads(&gp, true, &gp.kernel, Some((gru, other_tape)));
        assert_eq!(s, MRNN_ERR_BAD_ARGUMENT);
        assert!(last().contains("another handle (handle #"), "{}", last());
        assert!(g.iter().flatten().all(|v| v.is_nan()));
        let (s, g) = keras_grads(&rp, false, &rp.kernel, Some((rnn, gru_tape)));
        assert_eq!(s, MRNN_ERR_BAD_ARGUMENT);
        assert!(last().contains("another kind: Keras GRU handle") && last().contains("Keras SimpleRNN"), "{}", last());
        assert!(g.iter().flatten().all(|v| v.is_nan()));

        // After set_weights, the tape is stale; a fresh one gives the one-shot gradients of the new weights.
        let k2 = values(gp.kernel.len(), 23, 0.6);
        let HandlePtr::KerasGru(l) = gru else { unreachable!() };
        // SAFETY: a live handle; the weights have its sizes.
        let s = unsafe { mrnn_keras_gru_set_weights(l, k2.as_ptr(), gp.recurrent.as_ptr(), gp.bias.as_ptr()) };
        assert_eq!(s, MRNN_OK, "{}", last());
        let (s, g) = keras_grads(&gp, true, &k2, Some((gru, gru_tape)));
        assert_eq!(s, MRNN_ERR_BAD_ARGUMENT);
        assert!(last().contains("stale") && last().contains("mrnn_keras_gru_set_weights"), "{}", last());
        assert!(g.iter().flatten().all(|v| v.is_nan()));
        // SAFETY: live handles and tapes, each freed once.
        unsafe {
            for h in [gru, rnn, other] {
                match h {
                    HandlePtr::KerasGru(l) => mrnn_keras_gru_free(l),
                    HandlePtr::KerasRnn(l) => mrnn_keras_rnn_free(l),
                }
            }
            for t in [gru_tape, rnn_tape, other_tape] {
                mrnn_tape_free(t);
            }
        }
    }

    #[test]
    fn onnx_gru_and_rnn_handles_train_as_the_one_shot_backward() {
        let (t, b, i, h, d) = (4, 3, 2, 5, 2);
        let x = values(t * b * i, 31, 1.5);
        let lens = [4, 0, 2];
        let h0 = values(d * b * h, 32, 0.8);
        let dy = values(t * d * b * h, 33, 1.0);
        let dyh = values(d * b * h, 34, 1.0);
        let gru = MrnnOnnxGruAttrs {
            seq_length: t as i64,
            batch_size: b as i64,
            input_size: i as i64,
            hidden_size: h as i64,
            direction: 2,
            layout: 1,
            linear_before_reset: 1,
            has_clip: 1,
            clip: 2.0,
            num_threads: 1,
            ..Default::default()
        };
        let rnn = MrnnOnnxRnnAttrs {
            seq_length: t as i64,
            batch_size: b as i64,
            input_size: i as i64,
            hidden_size: h as i64,
            direction: 1,
            ..Default::default()
        };
        let mut tapes = Vec::new();
        for gates in [3, 1] {
            let dn = if gates == 3 { 2 } else { 1 };
            let (w, r, bias) = (
                values(dn * gates * h * i, 35, 0.6),
                values(dn * gates * h * h, 36, 0.6),
                values(dn * 2 * gates * h, 37, 0.4),
            );
            let sizes = [t * b * i, dn * gates * h * i, dn * gates * h * h, dn * 2 * gates * h, dn * b * h];
            let (xp, wp, rp, bp, lp, hp) =
                (x.as_ptr(), w.as_ptr(), r.as_ptr(), bias.as_ptr(), lens.as_ptr(), h0.as_ptr());
            let (dyp, dyhp) = (dy.as_ptr(), dyh.as_ptr());
            let (mut g, mut n, mut tape) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
            let none = ptr::null_mut();
            // SAFETY: the buffers have the sizes of the attributes.
            unsafe {
                if gates == 3 {
                    assert_eq!(mrnn_onnx_gru_new(&gru, wp, rp, bp, &mut g), MRNN_OK, "{}", last());
                    assert_eq!(mrnn_onnx_gru_run_train(g, &gru, xp, lp, hp, none, none, &mut tape), MRNN_OK);
                } else {
                    assert_eq!(mrnn_onnx_rnn_new(&rnn, wp, rp, bp, &mut n), MRNN_OK, "{}", last());
                    assert_eq!(mrnn_onnx_rnn_run_train(n, &rnn, xp, lp, hp, none, none, &mut tape), MRNN_OK);
                }
            }
            tapes.push(tape);
            let mut results = Vec::new();
            for path in 0..2 {
                let mut out = sizes.map(|n| vec![f32::NAN; n]);
                let [dx, dw, dr, db, dh] = &mut out;
                let o = (dx.as_mut_ptr(), dw.as_mut_ptr(), dr.as_mut_ptr(), db.as_mut_ptr(), dh.as_mut_ptr());
                // SAFETY: as above; the handles and the tape are live.
                let s = unsafe {
                    match (gates, path) {
                        (3, 0) => {
                            mrnn_gru_onnx_backward(&gru, xp, wp, rp, bp, lp, hp, dyp, dyhp, o.0, o.1, o.2, o.3, o.4)
                        }
                        (3, _) => mrnn_onnx_gru_run_backward(g, tape, dyp, dyhp, o.0, o.1, o.2, o.3, o.4),
                        (_, 0) => {
                            mrnn_rnn_onnx_backward(&rnn, xp, wp, rp, bp, lp, hp, dyp, dyhp, o.0, o.1, o.2, o.3, o.4)
                        }
                        _ => mrnn_onnx_rnn_run_backward(n, tape, dyp, dyhp, o.0, o.1, o.2, o.3, o.4),
                    }
                };
                assert_eq!(s, MRNN_OK, "{}", last());
                results.push(out);
            }
            assert_eq!(bits(&results[0]), bits(&results[1]), "gates {gates}: run_backward vs one-shot");
            // Against the Rust reference backward, in f64.
            let want = if gates == 3 {
                let a = OnnxGruAttrs::new(h, Direction::Bidirectional)
                    .layout(Layout::BatchMajor)
                    .linear_before_reset(true)
                    .clip(Some(2.0));
                let up = OnnxUpstream { dy: Some(&dy), dy_h: Some(&dyh), dy_c: None };
                OnnxGru::new(a, i, &w, &r, Some(&bias)).unwrap().backward_reference(
                    &x,
                    t,
                    b,
                    Some(&lens),
                    Some(&h0),
                    up,
                )
            } else {
                let a = OnnxRnnAttrs::new(h, Direction::Reverse);
                let up = OnnxUpstream { dy: Some(&dy[..t * b * h]), dy_h: Some(&dyh[..b * h]), dy_c: None };
                OnnxRnn::new(a, i, &w, &r, Some(&bias)).unwrap().backward_reference(
                    &x,
                    t,
                    b,
                    Some(&lens),
                    Some(&h0[..b * h]),
                    up,
                )
            }
            .unwrap();
            let want = [&want.dx, &want.dw, &want.dr, &want.db, &want.d_initial_h];
            for (k, (got, want)) in results[0].iter().zip(want).enumerate() {
                for (&gv, &ev) in got.iter().zip(want.iter()) {
                    assert!((gv - ev).abs() <= 1e-4 * ev.abs().max(1.0), "gates {gates} grad {k}: {gv} vs {ev}");
                }
            }
            // The GRU tape on the RNN handle (and the reverse, below): another kind.
            if gates == 1 {
                let mut dx = vec![7.0_f32; t * b * i];
                let (np, ng) = (ptr::null(), ptr::null_mut());
                // SAFETY: as above.
                let s = unsafe { mrnn_onnx_rnn_run_backward(n, tapes[0], np, np, dx.as_mut_ptr(), ng, ng, ng, ng) };
                assert_eq!(s, MRNN_ERR_BAD_ARGUMENT);
                assert!(last().contains("another kind: ONNX GRU handle"), "{}", last());
                assert!(dx.iter().all(|&v| v == 7.0));
                // SAFETY: the weights have the handle's sizes.
                assert_eq!(unsafe { mrnn_onnx_rnn_set_weights(n, wp, rp, ptr::null()) }, MRNN_OK);
                // SAFETY: as above.
                let s = unsafe { mrnn_onnx_rnn_run_backward(n, tape, np, np, dx.as_mut_ptr(), ng, ng, ng, ng) };
                assert_eq!(s, MRNN_ERR_BAD_ARGUMENT);
                assert!(last().contains("stale"), "{}", last());
            }
            // SAFETY: live handles (or NULL), freed once.
            unsafe {
                mrnn_onnx_gru_free(g);
                mrnn_onnx_rnn_free(n);
            }
        }
        // SAFETY: live tapes, freed once (after their handles).
        unsafe { tapes.into_iter().for_each(|t| mrnn_tape_free(t)) };
    }
}
