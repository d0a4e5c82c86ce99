//! The tape: what a training forward keeps for the backward, for valid steps only.
//!
//! Rows are sequence-major in batch order: step `k` (in processing order) of sequence `b` is row
//! `offsets[b] + k`, so the tape holds exactly `view.total_valid()` rows, whatever the padding. Each row
//! is the cell's record (for the LSTM, [`TAPE_RECORD`](crate::cells::lstm::TAPE_RECORD) x `hp` floats:
//! gate arguments, `c`, `h`), and `times[row]` is the step's time index.

use std::sync::Mutex;

use super::workspace::clear_reserve;
use crate::error::{checked_product, Result};
use crate::kernel::aligned::AlignedVec;
use crate::view::SeqView;

/// What one training forward of one layer direction keeps for its backward. Made by the layers'
/// `forward_train`; memory proportional to the valid steps.
#[derive(Clone, Debug, Default)]
pub struct DirTape {
    /// Floats per row.
    pub(crate) stride: usize,
    /// Hidden size padded to whole blocks.
    pub(crate) hp: usize,
    /// `offsets[b]`: the row of sequence `b`'s first valid step; `offsets[B]` = rows.
    pub(crate) offsets: Vec<usize>,
    /// Time index of each row.
    pub(crate) times: Vec<usize>,
    /// `rows x stride` floats.
    pub(crate) data: AlignedVec,
    /// The backward's buffers, kept for the next backward through this tape.
    pub(crate) scratch: Reuse,
}

/// Buffers a backward through a tape needs, sized by its valid steps; kept with the tape so that a
/// training loop reusing its tapes allocates (and zeroes, and page-faults) nothing after the first step.
#[derive(Debug, Default)]
pub(crate) struct BackwardScratch {
    /// The gradient arriving at each valid step's `h`, `[rows][hp]` (the framework routes it).
    pub dh_up: Vec<f32>,
    /// What [`LstmBackward::run`](super::LstmBackward::run) works in.
    pub bufs: GradBufs,
}

/// The buffers of [`LstmBackward::run`](super::LstmBackward::run), each overwritten before it is read.
#[derive(Debug, Default)]
pub(crate) struct GradBufs {
    /// `dZ` of every valid step, `[rows][4 hp]`.
    pub dz: AlignedVec,
    /// The packed weight gradients `[dW; dR]` (`[I + H][4 hp]`, one product streams dZ once for both)
    /// and `db [4 hp]`.
    pub dwr: AlignedVec,
    pub db: AlignedVec,
}

impl BackwardScratch {
    fn bytes(&self) -> usize {
        let b = &self.bufs;
        self.dh_up.capacity() * 4 + [&b.dz, &b.dwr, &b.db].iter().map(|v| v.heap_bytes()).sum::<usize>()
    }
}

/// A tape's [`BackwardScratch`]: taken by a backward and put back after. Not part of what the tape
/// records: a clone starts empty, and a backward that finds it taken (another backward through the same
/// tape at the same time) works with fresh buffers.
#[derive(Debug, Default)]
pub(crate) struct Reuse(Mutex<Option<Box<BackwardScratch>>>);

impl Reuse {
    /// The buffers (empty ones if another backward holds them, or before the first backward).
    pub(crate) fn take(&self) -> Box<BackwardScratch> {
        self.0.try_lock().ok().and_then(|mut s| s.take()).unwrap_or_default()
    }

    /// Keeps `s` for the next backward.
    pub(crate) fn put(&self, s: Box<BackwardScratch>) {
        if let Ok(mut held) = self.0.try_lock() {
            *held = Some(s);
        }
    }

    fn bytes(&self) -> usize {
        self.0.try_lock().ok().and_then(|s| s.as_ref().map(|s| s.bytes())).unwrap_or(0)
    }
}

impl Clone for Reuse {
    fn clone(&self) -> Self {
        Reuse::default()
    }
}

impl DirTape {
    /// Sizes the tape for `view` with records of `record x hp` floats (contents are then written by the
    /// forward).
    ///
    /// # Errors
    /// [`ErrorKind::Overflow`](crate::ErrorKind::Overflow) when the size overflows.
    pub(crate) fn prepare(&mut self, view: &SeqView, record: usize, hp: usize) -> Result<()> {
        let b = view.batch();
        let rows = view.total_valid();
        let stride = checked_product(&[record, hp], "tape row")?;
        let floats = checked_product(&[rows, stride], "tape")?;
        self.stride = stride;
        self.hp = hp;
        clear_reserve(&mut self.offsets, b + 1);
        let mut at = 0;
        for s in 0..b {
            self.offsets.push(at);
            at += view.valid_len(s);
        }
        self.offsets.push(at);
        clear_reserve(&mut self.times, rows);
        self.times.resize(rows, 0);
        // Every float of a valid step's record is written by the forward: only new room is zeroed.
        self.data.resize_stale(floats);
        Ok(())
    }

    /// Rows held (valid steps of the batch).
    pub fn rows(&self) -> usize {
        self.times.len()
    }

    /// Bytes held: the record of the valid steps, and after a backward the buffers it keeps for the next
    /// one (`dZ` and the upstream gradient, 5 x hp floats per valid step, and the packed weight
    /// gradients).
    pub fn bytes(&self) -> usize {
        (self.offsets.capacity() + self.times.capacity()) * std::mem::size_of::<usize>()
            + self.data.heap_bytes()
            + self.scratch.bytes()
    }

    /// Bytes a tape of `view` with records of `record x hp` floats holds (the size query).
    pub(crate) fn bytes_for(view: &SeqView, record: usize, hp: usize) -> usize {
        let rows = view.total_valid();
        (view.batch() + 1 + rows) * std::mem::size_of::<usize>() + rows * record * hp * 4
    }
}

/// A tape being written by a job: raw access for the job's threads, which write distinct rows (batch
/// chunks) or distinct columns of a row (the gate-column split).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TapeOut<'a> {
    pub data: *mut f32,
    pub stride: usize,
    pub times: *mut usize,
    pub offsets: &'a [usize],
}

// SAFETY: threads write distinct tape rows (distinct sequences) or distinct columns of the same rows
// (column split; only the thread holding block 0 writes `times`); the tape is borrowed mutably for the
// job's lifetime by `TapeOut::new`.
unsafe impl Send for TapeOut<'_> {}
unsafe impl Sync for TapeOut<'_> {}

impl<'a> TapeOut<'a> {
    /// Borrows `tape` for a job.
    pub(crate) fn new(tape: &'a mut DirTape) -> Self {
        TapeOut {
            data: tape.data.as_mut_ptr(),
            stride: tape.stride,
            times: tape.times.as_mut_ptr(),
            offsets: &tape.offsets,
        }
    }
}
