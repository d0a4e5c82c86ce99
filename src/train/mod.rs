//! Training: masked losses with their gradients, optimizers, and the training loop.

pub mod fit;
pub mod loss;
pub mod optim;
