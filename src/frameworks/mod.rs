//! Framework semantics on top of the engine: each module turns one framework's layer (its weight
//! layout, mask or lengths, directions, outputs) into engine jobs and returns exactly what that framework
//! returns.
//!
//! - [`keras`]: Keras 3 `LSTM`, `GRU` and `SimpleRNN` with any mask (holes, pre-padding), `go_backwards`,
//!   `zero_output_for_mask`;
//! - [`bidirectional`]: Keras `Bidirectional` with every merge mode;
//! - [`onnx`]: the ONNX `LSTM`, `GRU` and `RNN` operators as ONNX Runtime answers them;
//! - [`torch`]: PyTorch `nn.LSTM`, `nn.GRU` and `nn.RNN` stacks on packed sequences;
//! - [`sequential`]: a Keras-like model (`Masking`, LSTM layers, time slices) and masked losses.

pub mod bidirectional;
pub(crate) mod family;
pub mod keras;
pub mod onnx;
pub mod sequential;
pub mod torch;
