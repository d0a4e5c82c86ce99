//! Reusable scratch memory: a warm workspace makes a call allocate nothing.

use super::sweep::Cursor;
use crate::kernel::aligned::AlignedVec;
use crate::view::SeqView;

/// Reusable buffers for the engine: once it has served a call, later calls with the same view and thread
/// count allocate nothing (another view may deal its sequences to threads differently and grow a buffer;
/// [`KerasLstm::workspace_bytes`](crate::KerasLstm::workspace_bytes) bounds one call). Keep one per layer
/// (or per thread) and pass it to the `*_in` methods.
#[derive(Debug, Default)]
pub struct Workspace {
    pub(crate) jobs: [JobScratch; 2],
    pub(crate) state: Vec<f32>,
    /// The ONNX operator's and PyTorch's view of the lengths, rebuilt in place each call.
    pub(crate) view: SeqView,
    /// PyTorch stacks: the outputs of the layers below the last, alternating; Keras `Bidirectional`: the
    /// backward output before an elementwise merge, and final states the caller did not ask for.
    pub(crate) layers: [Vec<f32>; 2],
}

impl Workspace {
    /// An empty workspace; it grows on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.jobs.iter().map(JobScratch::bytes).sum::<usize>()
            + (self.state.capacity() + self.layers.iter().map(Vec::capacity).sum::<usize>()) * 4
            + self.view.heap_bytes()
    }
}

/// Scratch of one job (one direction).
#[derive(Debug, Default)]
pub(crate) struct JobScratch {
    pub(crate) lens: Vec<usize>,
    pub(crate) order: Vec<usize>,
    pub(crate) load: Vec<usize>,
    pub(crate) chunks: Vec<ChunkScratch>,
}

impl JobScratch {
    fn bytes(&self) -> usize {
        (self.lens.capacity() + self.order.capacity() + self.load.capacity()) * 8
            + self.chunks.iter().map(ChunkScratch::bytes).sum::<usize>()
            + self.chunks.capacity() * std::mem::size_of::<ChunkScratch>()
    }
}

/// Scratch of one chunk (or of one thread of a column-split job).
#[derive(Debug, Default)]
pub(crate) struct ChunkScratch {
    pub(crate) rows: Vec<usize>,
    pub(crate) h: AlignedVec,
    pub(crate) h2: AlignedVec,
    pub(crate) c: AlignedVec,
    /// What a multi-phase cell's phases hand each other ([`crate::kernel::StepState::mid`]).
    pub(crate) mid: AlignedVec,
    pub(crate) proj: AlignedVec,
    pub(crate) offs: Vec<usize>,
    pub(crate) times: Vec<usize>,
    pub(crate) cur: Vec<Cursor>,
    /// Tape rows of a step's rows (training forwards only).
    pub(crate) tape_rows: Vec<usize>,
    pub(crate) steps: usize,
}

impl ChunkScratch {
    fn bytes(&self) -> usize {
        [&self.h, &self.h2, &self.c, &self.mid, &self.proj].iter().map(|v| v.heap_bytes()).sum::<usize>()
            + (self.rows.capacity() + self.offs.capacity() + self.times.capacity() + self.tape_rows.capacity()) * 8
            + self.cur.capacity() * std::mem::size_of::<Cursor>()
    }
}

/// Clears `v` and makes room for exactly `n` elements when it has less (no amortised doubling, so the
/// workspace stays within [`Job::scratch_bound`]).
pub(crate) fn clear_reserve<T>(v: &mut Vec<T>, n: usize) {
    v.clear();
    v.reserve_exact(n);
}

/// The initial `(h, c)` of a job: `None` when neither is given; a missing half reads `len` zeros kept
/// in `zeros` (the ONNX and PyTorch default).
pub(crate) fn initial_pair<'a>(
    h0: Option<&'a [f32]>,
    c0: Option<&'a [f32]>,
    zeros: &'a mut Vec<f32>,
    len: usize,
) -> Option<(&'a [f32], &'a [f32])> {
    zeros.clear();
    zeros.resize(if h0.is_some() != c0.is_some() { len } else { 0 }, 0.0);
    let zeros: &[f32] = zeros;
    match (h0, c0) {
        (None, None) => None,
        _ => Some((h0.unwrap_or(zeros), c0.unwrap_or(zeros))),
    }
}
