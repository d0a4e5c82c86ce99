//! The mask-aware scheduler: runs a recurrent cell (`kernel::CellKernel`: the LSTM
//! today) over the valid steps of every sequence and never touches a padded step.
//!
//! ```text
//! order  = sequences with valid steps, sorted by valid length (longest first)
//! chunks = order dealt to P chunks, each to the chunk with the fewest valid steps so far (balanced work)
//! per chunk, in parallel, no barrier between chunks:
//!     h, c = initial state of the chunk's rows
//!     for each time tile [k0, k0 + K) of the compacted step index k:
//!         gather the x rows of the valid steps k of the rows still active (an active prefix)
//!         proj = x_rows · W                             (one GEMM per tile; the block stays in cache)
//!         for k in tile: m = rows with more than k valid steps
//!             h[..m], c[..m] = cell((proj_k[..m] + h[..m] · R) + b)   (the GEMM shrinks as rows finish)
//!             write y at each row's k-th valid time; rows finishing here write h_n, c_n
//!     fill the output at padded positions (zeros, or the previous output as Keras does)
//! ```
//! Step `k` of a sequence is its k-th valid step in processing order (ascending time, or descending for
//! reverse directions), so holes and pre-padding cost nothing. Each row's arithmetic is independent of the
//! other rows, of the chunking and of the thread count, so results are bitwise reproducible.
//!
//! One concern per file: `layout` (strided views of inputs and outputs; output regions borrowed for the
//! job and checked disjoint in one place), `plan` (schedule choice, the cache probe, the balanced deal:
//! one rule for the forward, the training forward and the backward), `sync` (thread pools, the parallel
//! loops over chunks, the column-split threads and their barrier), `workspace` (reusable scratch),
//! `sweep` (the walk above), `tape` (what a training forward keeps) and `backward` (the reverse walk).

mod backward;
#[cfg(test)]
mod cell_tests;
mod layout;
mod plan;
mod sweep;
mod sync;
mod tape;
mod workspace;

pub(crate) use backward::{Backward, BackwardOut, GradRows};
pub(crate) use layout::{directions, OutRegion, Region, SeqIn, SeqOut, StateIn, StateOut};
pub(crate) use plan::effective_threads;
#[cfg(not(debug_assertions))]
pub(crate) use plan::l2_bytes;
pub use plan::Schedule;
pub(crate) use sweep::Job;
pub(crate) use sync::{for_each_part, par_join};
pub use tape::DirTape;
pub(crate) use tape::TapeOut;
pub use workspace::Workspace;
pub(crate) use workspace::{clear_reserve, initial_pair, JobScratch};

/// What the engine did, for statistics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwardStats {
    /// Cell steps computed (one per valid step of each sequence; padded steps are never computed).
    pub steps_computed: usize,
    /// Number of parallel chunks the batch was split into (or threads sharing the gate columns).
    pub chunks: usize,
    /// Runs that split the gate columns across threads (one per layer direction that did).
    pub column_split_runs: usize,
    /// Runs that dealt sequences to batch chunks.
    pub batch_chunk_runs: usize,
}

impl ForwardStats {
    /// Adds another run's statistics (for stacked or bidirectional runs).
    pub fn merge(self, other: ForwardStats) -> ForwardStats {
        ForwardStats {
            steps_computed: self.steps_computed + other.steps_computed,
            chunks: self.chunks.max(other.chunks),
            column_split_runs: self.column_split_runs + other.column_split_runs,
            batch_chunk_runs: self.batch_chunk_runs + other.batch_chunk_runs,
        }
    }
}

/// How output positions at padded steps are filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// `+0.0` (ONNX, Keras `zero_output_for_mask`).
    Zero,
    /// The previous output in processing order, zeros before the first valid step (Keras default).
    Previous,
}

/// State reported for a sequence without valid steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EmptyState {
    /// The initial state (Keras).
    Initial,
    /// Zeros (ONNX Runtime, PyTorch).
    Zero,
}
