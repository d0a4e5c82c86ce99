//! Cells: what turns gate pre-activations into a new state, and the numerics underneath.
//!
//! - [`activation`]: the eleven ONNX activations (every Keras one among them), scalar definitions;
//! - [`math`]: the IEEE operation sequences those activations use, shared by the reference and every
//!   SIMD backend so they agree bit for bit;
//! - [`lstm`]: the LSTM cell ([`CellSpec`](lstm::CellSpec));
//! - [`gru`]: the GRU cell in both placements of the reset gate, its weights and packed panels;
//! - [`rnn`]: the simple RNN cell, its weights and packed panels;
//! - [`weights`]: LSTM weights imported from every framework's layout, and their packed panels;
//! - [`grads`]: LSTM parameter gradients in canonical form, exported to every framework's layout.

pub mod activation;
pub mod grads;
pub mod gru;
pub mod lstm;
pub mod math;
pub mod rnn;
pub mod weights;
