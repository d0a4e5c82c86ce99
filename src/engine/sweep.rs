//! The sweep: one job (one layer direction over one batch) walks each sequence's valid steps, projects
//! the gathered input rows tile by tile and runs the recurrence on the active prefix of rows.

use std::cmp::Reverse;
use std::ops::Range;

use super::layout::{check_extent, extent, Region, SeqIn, SeqOut, StateIn, StateOut};
use super::plan::{balance, batch_chunks, column_threads, effective_threads, l2_bytes, use_columns, Schedule};
use super::sync::{for_each_part, run_columns, ChunkPtr, SpinBarrier};
use super::tape::TapeOut;
use super::workspace::{clear_reserve, ChunkScratch, JobScratch};
use super::{EmptyState, Fill, ForwardStats};
use crate::error::{Error, ErrorKind, Result};
use crate::kernel::aligned::LINE_FLOATS;
use crate::kernel::pack::PackedGates;
use crate::kernel::simd::BLOCK_ROWS;
use crate::kernel::{Backend, CellKernel, StepState, MAX_PHASES};
use crate::view::SeqView;

/// Bytes of projected input a time tile aims to keep in cache.
pub(crate) const TILE_BYTES: usize = 256 * 1024;

/// One direction of a recurrent layer over one batch.
pub(crate) struct Job<'a, C: CellKernel> {
    pub backend: &'static Backend,
    /// The cell: its packed weights and its fused step.
    pub cell: C,
    pub view: &'a SeqView,
    pub x: SeqIn<'a>,
    /// Process each sequence's valid steps in descending time.
    pub reverse: bool,
    pub init: Option<StateIn<'a>>,
    pub empty_state: EmptyState,
    pub y: Option<SeqOut<'a>>,
    pub h_n: Option<StateOut<'a>>,
    pub c_n: Option<StateOut<'a>>,
    /// A training forward's tape (sized by `DirTape::prepare` for this view and cell), or `None`.
    pub tape: Option<TapeOut<'a>>,
    /// 0: rayon's default pool; 1: the calling thread; n: a pool of n threads.
    pub threads: usize,
    pub schedule: Schedule,
}

/// Where a sequence's walk over its valid steps stands: next run index (counted from the end when
/// reversed), current time, steps left in the current run.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Cursor {
    pub(crate) next_run: usize,
    pub(crate) t: usize,
    pub(crate) left: usize,
}

impl Cursor {
    /// The next valid time of sequence `b`. Called at most `valid_len(b)` times.
    #[inline]
    fn next_time(&mut self, view: &SeqView, b: usize, reverse: bool) -> usize {
        if self.left == 0 {
            let n = view.run_count(b);
            let r = view.run(b, if reverse { n - 1 - self.next_run } else { self.next_run });
            self.next_run += 1;
            self.left = r.len;
            self.t = if reverse { r.end() - 1 } else { r.offset };
        } else if reverse {
            self.t -= 1;
        } else {
            self.t += 1;
        }
        self.left -= 1;
        self.t
    }
}

/// The recurrent state shared by the threads of a job: `h`, `h2` (double buffer), the cell's extra
/// states (`c`) and what its phases hand each other (`mid`), `m x hp` floats per state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SharedState {
    pub(crate) h: *mut f32,
    pub(crate) h2: *mut f32,
    pub(crate) c: *mut f32,
    pub(crate) mid: *mut f32,
    pub(crate) len: usize,
}

// SAFETY: the threads of a column-split job write disjoint columns of `h2`/`c`/`mid` during a phase,
// read `h` (and in a later phase `mid`) only after the barrier that ends the phase writing it, and meet
// at a barrier before the buffers swap roles; batch chunks use their own private state.
unsafe impl Send for SharedState {}

unsafe impl Sync for SharedState {}

impl<C: CellKernel> Job<'_, C> {
    /// The packed weights.
    #[inline]
    fn w(&self) -> &PackedGates {
        self.cell.packed()
    }

    /// Validates every buffer against its layout, then runs. After this check all raw writes are in bounds.
    pub(crate) fn run(&self, ws: &mut JobScratch) -> Result<ForwardStats> {
        let (b, t) = (self.view.batch(), self.view.time());
        let (i, h) = (self.w().input, self.w().hidden);
        if self.w().nb != self.backend.nb {
            return Err(Error::new(ErrorKind::Internal, "weights packed for another backend"));
        }
        check_extent("x", extent(self.x.off, b, t, self.x.sb, self.x.st, i), self.x.data.len())?;
        if let Some(y) = &self.y {
            check_region("y", y.out.region(), b, t, h)?;
        }
        for s in [&self.h_n, &self.c_n].into_iter().flatten() {
            check_region("state", s.region(), b, 1, h)?;
        }
        if let Some(s) = &self.init {
            check_extent("initial_h", extent(s.off, b, 1, s.sb, 0, h), s.h.len())?;
            if C::EXTRA_STATES > 0 {
                check_extent("initial_c", extent(s.off, b, 1, s.sb, 0, h), s.c.len())?;
            }
        }
        if !(1..=MAX_PHASES).contains(&self.cell.phases()) {
            return Err(Error::new(ErrorKind::Internal, "a cell step of an unsupported number of phases"));
        }

        let JobScratch { lens, order, load, chunks } = ws;
        clear_reserve(lens, b);
        lens.extend((0..b).map(|s| self.view.valid_len(s)));
        clear_reserve(order, b);
        order.extend((0..b).filter(|&s| lens[s] > 0));
        order.sort_unstable_by_key(|&s| (Reverse(lens[s]), s));
        let threads = effective_threads(self.threads);
        let lens: &[usize] = lens;

        let valid: usize = lens.iter().sum();
        let (columns, n_chunks) = self.layout(threads, order.len(), valid);
        if chunks.len() < n_chunks {
            chunks.reserve_exact(n_chunks - chunks.len());
            chunks.resize_with(n_chunks, ChunkScratch::default);
        }
        let chunks = &mut chunks[..n_chunks];
        let steps = if order.is_empty() {
            0
        } else if columns {
            self.run_columns(order, lens, chunks)?
        } else {
            balance(order, lens, load, chunks);
            for_each_part(self.threads, chunks, |cs| {
                cs.steps = if cs.rows.is_empty() { 0 } else { self.run_chunk(cs, lens) };
            })?;
            chunks.iter().map(|c| c.steps).sum()
        };
        for s in (0..b).filter(|&s| lens[s] == 0) {
            self.finish_empty(s);
        }
        Ok(ForwardStats {
            steps_computed: steps,
            chunks: n_chunks,
            column_split_runs: usize::from(columns),
            batch_chunk_runs: usize::from(!columns),
        })
    }

    /// Whether the job splits gate columns, and into how many chunks (or column threads) it runs, for
    /// `rows` sequences with `valid` valid steps in all (batch chunks by [`batch_chunks`]).
    fn layout(&self, threads: usize, rows: usize, valid: usize) -> (bool, usize) {
        let w = self.w();
        let macs = valid.saturating_mul(w.gates * w.hidden_padded() * (w.input + w.hidden));
        let work = w.hidden * w.hidden_padded() * w.gates;
        if use_columns(self.schedule, threads, rows, w.blocks, self.cell.recurrent_bytes(), work, macs) {
            return (true, column_threads(threads, w.blocks));
        }
        (false, batch_chunks(self.schedule, threads, rows, macs))
    }

    /// An upper bound of the bytes a fresh [`JobScratch`] holds after running this job (buffers are sized
    /// exactly, never by amortised doubling): per sequence a few indices; per sequence with valid steps the
    /// state `h, h', c` (`3 x hp` floats) and a cursor; per chunk (or column thread) the projected input of
    /// one time tile (about `TILE_BYTES`, more only when one step of the chunk's rows alone is larger) with
    /// its row offsets and times.
    pub(crate) fn scratch_bound(&self) -> usize {
        let b = self.view.batch();
        let rows = (0..b).filter(|&s| self.view.valid_len(s) > 0).count();
        let valid = (0..b).map(|s| self.view.valid_len(s)).sum();
        let (columns, n) = self.layout(effective_threads(self.threads), rows, valid);
        let (hp, nb, blocks, gates) = (self.w().hidden_padded(), self.w().nb, self.w().blocks, self.w().gates);
        let word = std::mem::size_of::<usize>();
        let mut bytes = (2 * b + n) * word + n * std::mem::size_of::<ChunkScratch>();
        if rows == 0 {
            return bytes;
        }
        bytes += (2 + C::EXTRA_STATES + self.cell.mid_states()) * rows * hp * 4;
        // Each chunk's five line-aligned buffers (state, mid, projection) may start up to a line late.
        bytes += n * 5 * (LINE_FLOATS - 1) * 4;
        // One chunk's time tile over `proj_row` floats per row: at most max(tile rows, its rows) rows of
        // projection, row offsets and times.
        let tile_rows = |proj_row: usize| self.tile_rows(proj_row / (gates * nb));
        let per_row = |proj_row: usize| proj_row * 4 + 2 * word;
        let cursor = std::mem::size_of::<Cursor>();
        if columns {
            for j in 0..n {
                let proj_row = ((j + 1) * blocks / n - j * blocks / n) * gates * nb;
                bytes += tile_rows(proj_row).max(rows) * per_row(proj_row) + rows * cursor;
            }
        } else {
            // Chunk row counts m_c sum to `rows`; sum of max(A, m_c) <= n A + max(0, rows - A).
            let proj_row = blocks * gates * nb;
            let a = tile_rows(proj_row);
            bytes += (n * a + rows.saturating_sub(a)) * per_row(proj_row) + rows * (cursor + word);
        }
        bytes
    }

    /// Rows of projection a time tile aims at over `blocks` weight blocks: as many as fill [`TILE_BYTES`]
    /// (the projection stays in cache for the steps that read it); when the blocks' input weights exceed
    /// L2 at least [`BLOCK_ROWS`], so that the projection streams each weight panel once per group of
    /// that many rows (see `kernel::simd::gemm`) rather than once per few steps: a batch of 4
    /// on a 1024-unit LSTM read the 16 MiB input weights every 4 steps.
    fn tile_rows(&self, blocks: usize) -> usize {
        let w = self.w();
        let proj_row = blocks * w.gates * w.nb;
        let fill = TILE_BYTES / (4 * proj_row).max(1);
        if proj_row * w.input * 4 > l2_bytes() {
            fill.max(BLOCK_ROWS)
        } else {
            fill
        }
    }

    /// Output position of time `t`.
    #[inline]
    fn pos(&self, y: &SeqOut, t: usize) -> usize {
        if y.mirror {
            self.view.time() - 1 - t
        } else {
            t
        }
    }

    /// One batch chunk: private state, all blocks.
    fn run_chunk(&self, cs: &mut ChunkScratch, lens: &[usize]) -> usize {
        let rows = std::mem::take(&mut cs.rows);
        let state = self.init_state(&rows, cs);
        let steps = self.drive(&rows, lens, 0..self.w().blocks, state, cs, None);
        if let Some(y) = &self.y {
            for &b in &rows {
                self.fill_padding(y, b);
            }
        }
        cs.rows = rows;
        steps
    }

    /// A column-split job: every thread runs all rows over its own hidden blocks.
    fn run_columns(&self, order: &[usize], lens: &[usize], chunks: &mut [ChunkScratch]) -> Result<usize> {
        let n = chunks.len();
        let state = self.init_state(order, &mut chunks[0]);
        let blocks = self.w().blocks;
        let range = |j: usize| (j * blocks / n)..((j + 1) * blocks / n);
        let scratch = ChunkPtr(chunks.as_mut_ptr());
        let steps = run_columns(n, |j, barrier| {
            // SAFETY: `j < n` and every index is run by exactly one thread, so each thread has its own
            // ChunkScratch; chunk 0's h/h2/c/mid buffers are only reached through `state`, never through
            // this reference.
            let cs = unsafe { &mut *scratch.at(j) };
            self.drive(order, lens, range(j), state, cs, Some(barrier))
        })?;
        if let Some(y) = &self.y {
            for &b in order {
                self.fill_padding(y, b);
            }
        }
        Ok(steps)
    }

    /// Sizes `cs`'s state buffers for `rows` (zeroed), loads the initial state and returns them as the
    /// state of a walk over `rows`.
    fn init_state(&self, rows: &[usize], cs: &mut ChunkScratch) -> SharedState {
        let (hidden, hp, m) = (self.w().hidden, self.w().hidden_padded(), rows.len());
        let states =
            [(&mut cs.h, 1), (&mut cs.h2, 1), (&mut cs.c, C::EXTRA_STATES), (&mut cs.mid, self.cell.mid_states())];
        for (v, n) in states {
            v.resize_zeroed(n * m * hp);
        }
        if let Some(init) = &self.init {
            for (r, &b) in rows.iter().enumerate() {
                let src = init.off + b * init.sb;
                cs.h[r * hp..r * hp + hidden].copy_from_slice(&init.h[src..src + hidden]);
                if C::EXTRA_STATES > 0 {
                    cs.c[r * hp..r * hp + hidden].copy_from_slice(&init.c[src..src + hidden]);
                }
            }
        }
        SharedState {
            h: cs.h.as_mut_ptr(),
            h2: cs.h2.as_mut_ptr(),
            c: cs.c.as_mut_ptr(),
            mid: cs.mid.as_mut_ptr(),
            len: m * hp,
        }
    }

    /// The time loop over `rows` (sorted by decreasing valid length) for the hidden blocks `blocks`, with
    /// the recurrent state in `state` (`rows.len() x hp` each). Writes y, h_n, c_n for the hidden units
    /// of `blocks` only. With a barrier, threads meet after every phase of every step. Returns the cell
    /// steps computed.
    fn drive(
        &self,
        rows: &[usize],
        lens: &[usize],
        blocks: Range<usize>,
        state: SharedState,
        cs: &mut ChunkScratch,
        barrier: Option<&SpinBarrier>,
    ) -> usize {
        let (be, w) = (self.backend, self.cell.packed());
        let (hidden, hp) = (w.hidden, w.hidden_padded());
        let cols = (blocks.start * w.nb).min(hidden)..(blocks.end * w.nb).min(hidden);
        let proj_row = blocks.len() * w.gates * w.nb;
        let m = rows.len();
        debug_assert!(state.len >= m * hp);
        clear_reserve(&mut cs.cur, m);
        cs.cur.resize(m, Cursor::default());
        // The largest time tile, so the buffers below are sized once, exactly: a tile holds at most
        // max(TILE_BYTES / row bytes, m) rows of projection (see the tile size below).
        let tile_rows = self.tile_rows(blocks.len());
        let most = tile_rows.max(m);
        clear_reserve(&mut cs.offs, most);
        clear_reserve(&mut cs.times, most);
        cs.proj.clear_reserve(most * proj_row);
        clear_reserve(&mut cs.tape_rows, if self.tape.is_some() { m } else { 0 });
        let n_max = lens[rows[0]];
        let (mut h, mut h2) = (state.h, state.h2);
        // active(k) = rows with more than k valid steps; rows are sorted, so it is a shrinking prefix.
        let mut active = m;
        let mut steps = 0;
        let mut k0 = 0;
        let phases = self.cell.phases();
        let mut reverse = [false; MAX_PHASES]; // the direction of each phase's next first weight sweep
        while k0 < n_max {
            while lens[rows[active - 1]] <= k0 {
                active -= 1;
            }
            let tile = (tile_rows / active).clamp(1, n_max - k0);
            cs.offs.clear();
            cs.times.clear();
            let mut a = active;
            for k in k0..k0 + tile {
                while lens[rows[a - 1]] <= k {
                    a -= 1;
                }
                for (r, cur) in cs.cur[..a].iter_mut().enumerate() {
                    let t = cur.next_time(self.view, rows[r], self.reverse);
                    cs.times.push(t);
                    cs.offs.push(self.x.off + rows[r] * self.x.sb + t * self.x.st);
                }
            }
            cs.proj.resize_zeroed(cs.offs.len() * proj_row);
            be.project(w, self.x.data, &cs.offs, blocks.clone(), &mut cs.proj);

            let mut base = 0;
            for k in k0..k0 + tile {
                while lens[rows[active - 1]] <= k {
                    active -= 1;
                }
                let a = active;
                // SAFETY: `state` holds m x hp floats per buffer (allocated by the caller), a <= m; h, h2,
                // c and mid are distinct buffers and proj is private. Other threads (column split) write
                // only their own blocks' columns of h2, c and mid during a phase and read h (and mid,
                // after the barrier ending the phase that wrote it), which nobody writes until every
                // thread has passed the barrier after the step's last phase.
                let mut stopped = false;
                unsafe {
                    let h_prev = std::slice::from_raw_parts(h, a * hp);
                    let p = &cs.proj[base * proj_row..(base + a) * proj_row];
                    let mut st = StepState {
                        proj: p,
                        h: h_prev,
                        h_out: h2,
                        extra: state.c,
                        mid: state.mid,
                        tape: std::ptr::null_mut(),
                        tape_rows: std::ptr::null(),
                        tape_stride: 0,
                    };
                    if let Some(tape) = &self.tape {
                        cs.tape_rows.clear();
                        for (r, &row) in rows[..a].iter().enumerate() {
                            let tr = tape.offsets[row] + k;
                            cs.tape_rows.push(tr);
                            if blocks.start == 0 {
                                // Only one thread of a column split writes the times.
                                *tape.times.add(tr) = cs.times[base + r];
                            }
                        }
                        st.tape = tape.data;
                        st.tape_rows = cs.tape_rows.as_ptr();
                        st.tape_stride = tape.stride;
                    }
                    for (phase, rev) in reverse[..phases].iter_mut().enumerate() {
                        *rev = !be.step(&self.cell, phase, a, blocks.clone(), st, *rev);
                        if let Some(b) = barrier {
                            if !b.wait() {
                                stopped = true;
                                break;
                            }
                        }
                    }
                }
                if stopped {
                    return steps;
                }
                std::mem::swap(&mut h, &mut h2);
                steps += a;
                // SAFETY (both blocks below): after the barrier `h` holds the complete new state and no
                // thread writes it before the next barrier; this thread reads and writes only the
                // columns `cols` of its own blocks, and only rows of this job (extents checked in `run`).
                if let Some(y) = &self.y {
                    for (r, (&row, &t)) in rows[..a].iter().zip(&cs.times[base..base + a]).enumerate() {
                        unsafe {
                            let src = std::slice::from_raw_parts(h.add(r * hp + cols.start), cols.len());
                            y.out.write(row, self.pos(y, t), cols.start, src);
                        }
                    }
                }
                // Rows whose last valid step this was: the tail of the active prefix.
                let mut r = a;
                while r > 0 && lens[rows[r - 1]] == k + 1 {
                    r -= 1;
                    unsafe {
                        let hs = std::slice::from_raw_parts(h.add(r * hp + cols.start), cols.len());
                        let c = std::slice::from_raw_parts(state.c.add(r * hp + cols.start), cols.len());
                        self.write_states(rows[r], cols.start, hs, c);
                    }
                }
                base += a;
            }
            k0 += tile;
        }
        steps
    }

    fn write_states(&self, b: usize, col: usize, h: &[f32], c: &[f32]) {
        for (out, v) in [(&self.h_n, h), (&self.c_n, c)] {
            if let Some(o) = out {
                // SAFETY: extent checked in `run`; sequence b's columns `col..` belong to the caller only.
                unsafe { o.write(b, 0, col, v) };
            }
        }
    }

    /// A sequence without valid steps: padded outputs and the empty state, nothing computed.
    fn finish_empty(&self, b: usize) {
        let hidden = self.w().hidden;
        let init_h = self.init.map(|s| &s.h[s.off + b * s.sb..s.off + b * s.sb + hidden]);
        let init_c =
            self.init.filter(|_| C::EXTRA_STATES > 0).map(|s| &s.c[s.off + b * s.sb..s.off + b * s.sb + hidden]);
        for (out, init) in [(&self.h_n, init_h), (&self.c_n, init_c)] {
            if let Some(o) = out {
                match (self.empty_state, init) {
                    // SAFETY: extent checked in `run`; `finish_empty` runs after the parallel part.
                    (EmptyState::Initial, Some(src)) => unsafe { o.write(b, 0, 0, src) },
                    // SAFETY: as above.
                    _ => unsafe { o.zero(b, 0, 0, hidden) },
                }
            }
        }
        if let Some(y) = &self.y {
            self.fill_padding(y, b);
        }
    }

    /// Writes the output at every padded time of sequence `b`, walking time in processing order.
    fn fill_padding(&self, y: &SeqOut, b: usize) {
        let (t_len, hidden) = (self.view.time(), self.w().hidden);
        let at = |t: usize| self.pos(y, t);
        let mut last: Option<usize> = None;
        let fill = |t: usize, last: Option<usize>| match (y.fill, last) {
            // SAFETY: positions of sequence b, in bounds by the extent check in `run`; distinct (b, t)
            // positions are disjoint, and `last` is a valid time, never a padded `t`.
            (Fill::Previous, Some(src)) => unsafe { y.out.copy(b, at(src), at(t), 0, hidden) },
            // SAFETY: as above.
            _ => unsafe { y.out.zero(b, at(t), 0, hidden) },
        };
        if self.reverse {
            let mut cur = t_len;
            for r in self.view.runs(b).rev() {
                (r.end()..cur).rev().for_each(|t| fill(t, last));
                last = Some(r.offset);
                cur = r.offset;
            }
            (0..cur).rev().for_each(|t| fill(t, last));
        } else {
            let mut cur = 0;
            for r in self.view.runs(b) {
                (cur..r.offset).for_each(|t| fill(t, last));
                last = Some(r.end() - 1);
                cur = r.end();
            }
            (cur..t_len).for_each(|t| fill(t, last));
        }
    }
}

/// An output region must have the job's shape: `batch` sequences of `time` positions of `width` floats.
fn check_region(name: &str, r: &Region, batch: usize, time: usize, width: usize) -> Result<()> {
    if (r.batch, r.time, r.width) == (batch, time, width) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Internal,
            format!("{name}: region [{}][{}][{}] for a job of [{batch}][{time}][{width}]", r.batch, r.time, r.width),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_walks_runs_both_ways() {
        let v = SeqView::from_mask(&[true, false, true, true, false], 1, 5).unwrap();
        let mut f = Cursor::default();
        assert_eq!([f.next_time(&v, 0, false), f.next_time(&v, 0, false), f.next_time(&v, 0, false)], [0, 2, 3]);
        let mut r = Cursor::default();
        assert_eq!([r.next_time(&v, 0, true), r.next_time(&v, 0, true), r.next_time(&v, 0, true)], [3, 2, 0]);
    }
}
