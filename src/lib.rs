//! # masked-rnn
//!
//! SIMD CPU LSTM kernels that never compute a padded step, and still return exactly what Keras, ONNX
//! Runtime or PyTorch would return for a padded, masked batch.
//!
//! The pipeline:
//! - a mask (lengths, a boolean mask with holes, or Keras `Masking` values) becomes a [`SeqView`]: per
//!   sequence, `(offset, length)` runs of valid steps; time slices shift the view, nothing is copied;
//! - weights from any framework become one canonical [`LstmWeights`], packed once per layer;
//! - the [`engine`] gathers valid steps, projects them with one GEMM per time tile, and runs the
//!   recurrence only on the sequences still active, split across threads by valid work;
//! - the [`reference`](mod@reference) implementation computes every step and selects by the mask, as Keras does: it is
//!   the oracle the fast path is tested and fuzzed against.
//!
//! ```
//! use masked_rnn::{KerasLstm, KerasLstmOptions, LstmWeights, Padding, SeqView};
//! let (b, t, i, h) = (2, 4, 3, 5);
//! let kernel = vec![0.1; i * 4 * h];
//! let recurrent = vec![-0.05; h * 4 * h];
//! let layer = KerasLstm::new(
//!     LstmWeights::from_keras(i, h, &kernel, &recurrent, None)?,
//!     KerasLstmOptions::default(),
//! )?;
//! let x = vec![1.0; b * t * i];
//! let view = SeqView::from_lengths(&[4, 2], t, Padding::Post)?;
//! let (out, stats) = layer.forward_all(&x, &view, None, 1)?;
//! assert_eq!(stats.steps_computed, 6); // 4 + 2 valid steps, nothing else
//! // Keras semantics: a masked step repeats the previous output.
//! assert_eq!(out.y[(t + 2) * h..(t + 3) * h], out.y[(t + 1) * h..(t + 2) * h]);
//! # Ok::<(), masked_rnn::Error>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

// The C ABI, behind the default feature `capi` (see the module's docs).
#[cfg(feature = "capi")]
pub mod capi;
pub mod cells;
pub mod engine;
pub mod error;
pub mod frameworks;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod kernel;
pub mod reference;
pub mod train;
pub mod view;

pub use cells::{activation, gru, math, rnn, weights};
pub use frameworks::{bidirectional, keras, onnx, sequential, torch};

pub use cells::activation::{Activation, HardSigmoidFlavor};
pub use cells::gru::{GruGrads, GruSpec, GruWeights};
pub use cells::lstm::CellSpec;
pub use cells::rnn::{RnnGrads, RnnSpec, RnnWeights};
pub use cells::weights::LstmWeights;
pub use engine::{ForwardStats, Schedule, Workspace};
pub use error::{Error, ErrorKind, Result};
pub use frameworks::keras::{
    InitialState, KerasGrads, KerasGru, KerasGruOptions, KerasLstm, KerasLstmOptions, KerasOutputs, KerasRnnOptions,
    KerasSimpleRnn, KerasTape, KerasUpstream,
};
pub use frameworks::onnx::{OnnxGrads, OnnxGru, OnnxRnn, OnnxTape, OnnxUpstream};
pub use frameworks::sequential::{Layer, MaskedSeq, Sequential};
pub use frameworks::torch::{TorchGru, TorchLstm, TorchParams, TorchRnn};
pub use train::fit::{BatchEnd, FitOptions, History, Shuffle};
pub use train::{
    loss::{masked_mae, masked_mse, unmasked_mae, unmasked_mse, Loss, LossValue},
    optim::{Adam, AdamFlavor, Optimizer, Sgd},
};
pub use view::{mask_from_values, MaskValueMode, Padding, Run, SeqView};
