//! The integration tests, one module per subject, built as one test binary: one optimised compile and
//! link of the crate's generic code for all of them rather than one per file (`tests/no_alloc.rs` stays
//! a binary of its own: its counting allocator is global to the process).
//!
//! Run one subject with `cargo test --test suite differential::` (module paths prefix the test names).

mod common;

mod backends;
mod backward;
mod backward_fixtures;
// The C ABI's tests need the `capi` feature (a default one).
#[cfg(feature = "capi")]
mod capi;
mod differential;
mod errors;
mod framework_fixtures;
mod gru_rnn_backward;
mod header;
mod keras_fixtures;
mod keras_gru_rnn;
mod keras_gru_rnn_bidi;
mod keras_gru_rnn_grad;
mod onnx_gru_rnn;
mod reference_backward;
mod torch_gru_rnn;
mod train_fit;
mod train_fixtures;
mod train_loss;
mod train_optim;
