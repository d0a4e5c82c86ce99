//! The mask-aware scheduler: runs an LSTM over the valid steps of every sequence and never touches a
//! padded step.
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

use std::cmp::Reverse;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use crate::cell::CellSpec;
use crate::error::{Error, ErrorKind, Result};
use crate::kernel::Backend;
use crate::view::{Runs, SeqView};
use crate::weights::PackedLstm;

/// Bytes of projected input a time tile aims to keep in cache.
const TILE_BYTES: usize = 256 * 1024;

/// What the engine did, for statistics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwardStats {
    /// Cell steps computed (one per valid step of each sequence; padded steps are never computed).
    pub steps_computed: usize,
    /// Number of parallel chunks the batch was split into.
    pub chunks: usize,
}

impl ForwardStats {
    /// Adds another run's statistics (for stacked or bidirectional runs).
    pub fn merge(self, other: ForwardStats) -> ForwardStats {
        ForwardStats {
            steps_computed: self.steps_computed + other.steps_computed,
            chunks: self.chunks.max(other.chunks),
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
    /// Zeros (ONNX Runtime; the ONNX operator of the next milestone selects it).
    #[allow(dead_code)]
    Zero,
}

/// A raw output buffer shared by the chunks. Chunks write disjoint positions (distinct sequences).
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutBuf {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: an `OutBuf` is only written through `write`/`copy`, at positions of the sequences of one chunk;
// chunks hold distinct sequences and every layout used is injective in (sequence, time), so no two threads
// write the same element; the buffer outlives the job (it is borrowed mutably for the job's lifetime).
unsafe impl Send for OutBuf {}
unsafe impl Sync for OutBuf {}

impl OutBuf {
    pub(crate) fn new(s: &mut [f32]) -> Self {
        OutBuf { ptr: s.as_mut_ptr(), len: s.len() }
    }

    /// Writes `src` at `off`.
    ///
    /// # Safety
    /// `off + src.len() <= self.len` (checked by [`Job::run`] before any write), and no other thread
    /// accesses these elements concurrently.
    #[inline]
    unsafe fn write(&self, off: usize, src: &[f32]) {
        debug_assert!(off + src.len() <= self.len);
        // SAFETY: in bounds by the caller's contract; `src` is a workspace slice, never this buffer.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(off), src.len()) }
    }

    /// Fills `n` elements at `off` with `+0.0`.
    ///
    /// # Safety
    /// As [`write`](Self::write).
    #[inline]
    unsafe fn zero(&self, off: usize, n: usize) {
        debug_assert!(off + n <= self.len);
        // SAFETY: in bounds by the caller's contract; all-zero bits are +0.0.
        unsafe { std::ptr::write_bytes(self.ptr.add(off), 0, n) }
    }

    /// Copies `n` elements from `src` to `dst` within the buffer.
    ///
    /// # Safety
    /// Both ranges in bounds and disjoint; no other thread accesses them concurrently.
    #[inline]
    unsafe fn copy(&self, src: usize, dst: usize, n: usize) {
        debug_assert!(src.max(dst) + n <= self.len && (src + n <= dst || dst + n <= src));
        // SAFETY: in bounds and disjoint by the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(src), self.ptr.add(dst), n) }
    }
}

/// The sequence output `y`: position `(b, p)` at `off + b * sb + p * st`, `H` contiguous floats.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SeqOut {
    pub buf: OutBuf,
    pub off: usize,
    pub sb: usize,
    pub st: usize,
    /// Output position of time `t` is `T - 1 - t` (Keras `go_backwards`) instead of `t`.
    pub mirror: bool,
    pub fill: Fill,
}

/// A state output `[b]` at `off + b * sb`, `H` contiguous floats.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StateOut {
    pub buf: OutBuf,
    pub off: usize,
    pub sb: usize,
}

/// Input `x`: row `(b, t)` at `off + b * sb + t * st`, `I` contiguous floats.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SeqIn<'a> {
    pub data: &'a [f32],
    pub off: usize,
    pub sb: usize,
    pub st: usize,
}

/// Initial state `[b]` at `off + b * sb`, `H` contiguous floats each.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StateIn<'a> {
    pub h: &'a [f32],
    pub c: &'a [f32],
    pub off: usize,
    pub sb: usize,
}

/// One LSTM direction over one batch.
pub(crate) struct Job<'a> {
    pub backend: &'static Backend,
    pub w: &'a PackedLstm,
    pub cell: &'a CellSpec,
    pub view: &'a SeqView,
    pub x: SeqIn<'a>,
    /// Process each sequence's valid steps in descending time.
    pub reverse: bool,
    pub init: Option<StateIn<'a>>,
    pub empty_state: EmptyState,
    pub y: Option<SeqOut>,
    pub h_n: Option<StateOut>,
    pub c_n: Option<StateOut>,
    /// 0: rayon's default pool; 1: the calling thread; n: a pool of n threads.
    pub threads: usize,
}

/// One past the largest element index of a strided `[batch][time]` layout of `width` floats each.
fn extent(off: usize, batch: usize, time: usize, sb: usize, st: usize, width: usize) -> Option<usize> {
    if batch == 0 || time == 0 || width == 0 {
        return Some(0);
    }
    off.checked_add((batch - 1).checked_mul(sb)?)?.checked_add((time - 1).checked_mul(st)?)?.checked_add(width)
}

fn check_extent(name: &str, need: Option<usize>, len: usize) -> Result<()> {
    match need {
        Some(n) if n <= len => Ok(()),
        _ => Err(Error::new(ErrorKind::Internal, format!("{name}: buffer of {len} elements too small for its layout"))),
    }
}

impl Job<'_> {
    /// Validates every buffer against its layout, then runs. After this check all raw writes are in bounds.
    pub(crate) fn run(&self) -> Result<ForwardStats> {
        let (b, t) = (self.view.batch(), self.view.time());
        let (i, h) = (self.w.input, self.w.hidden);
        if self.w.nb != self.backend.nb {
            return Err(Error::new(ErrorKind::Internal, "weights packed for another backend"));
        }
        check_extent("x", extent(self.x.off, b, t, self.x.sb, self.x.st, i), self.x.data.len())?;
        if let Some(y) = &self.y {
            check_extent("y", extent(y.off, b, t, y.sb, y.st, h), y.buf.len)?;
        }
        for s in [&self.h_n, &self.c_n].into_iter().flatten() {
            check_extent("state", extent(s.off, b, 1, s.sb, 0, h), s.buf.len)?;
        }
        if let Some(s) = &self.init {
            check_extent("initial_h", extent(s.off, b, 1, s.sb, 0, h), s.h.len())?;
            check_extent("initial_c", extent(s.off, b, 1, s.sb, 0, h), s.c.len())?;
        }

        let lens = self.view.valid_lens();
        let mut order: Vec<usize> = (0..b).filter(|&s| lens[s] > 0).collect();
        order.sort_by_key(|&s| (Reverse(lens[s]), s));
        let threads = effective_threads(self.threads);
        let chunks = balance(&order, &lens, threads.min(order.len()).max(1));
        let steps: usize =
            par_map(self.threads, chunks.len(), |ci| self.run_chunk(&chunks[ci], &lens))?.into_iter().sum();
        for s in (0..b).filter(|&s| lens[s] == 0) {
            self.finish_empty(s);
        }
        Ok(ForwardStats { steps_computed: steps, chunks: chunks.len() })
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

    fn run_chunk(&self, rows: &[usize], lens: &[usize]) -> usize {
        let (be, w) = (self.backend, self.w);
        let (hidden, hp) = (w.hidden, w.hidden_padded());
        let row_len = 4 * hp;
        let m = rows.len();
        let mut h = vec![0.0f32; m * hp];
        let mut h2 = vec![0.0f32; m * hp];
        let mut c = vec![0.0f32; m * hp];
        if let Some(init) = &self.init {
            for (r, &b) in rows.iter().enumerate() {
                let src = init.off + b * init.sb;
                h[r * hp..r * hp + hidden].copy_from_slice(&init.h[src..src + hidden]);
                c[r * hp..r * hp + hidden].copy_from_slice(&init.c[src..src + hidden]);
            }
        }
        let mut cursors: Vec<StepCursor<'_>> =
            rows.iter().map(|&b| StepCursor::new(self.view.runs(b), self.reverse)).collect();
        let n_max = lens[rows[0]];
        // active(k) = rows with more than k valid steps; rows are sorted, so it is a shrinking prefix.
        let mut active = m;
        let mut offs: Vec<usize> = Vec::new();
        let mut times: Vec<usize> = Vec::new();
        let mut proj: Vec<f32> = Vec::new();
        let mut steps = 0;
        let mut k0 = 0;
        while k0 < n_max {
            while lens[rows[active - 1]] <= k0 {
                active -= 1;
            }
            let tile = (TILE_BYTES / (4 * row_len * active)).clamp(1, n_max - k0);
            offs.clear();
            times.clear();
            let mut a = active;
            for k in k0..k0 + tile {
                while lens[rows[a - 1]] <= k {
                    a -= 1;
                }
                for (r, cur) in cursors[..a].iter_mut().enumerate() {
                    let t = cur.next_time();
                    times.push(t);
                    offs.push(self.x.off + rows[r] * self.x.sb + t * self.x.st);
                }
            }
            proj.resize(offs.len() * row_len, 0.0);
            (be.project)(w, self.x.data, &offs, &mut proj);

            let mut base = 0;
            for k in k0..k0 + tile {
                while lens[rows[active - 1]] <= k {
                    active -= 1;
                }
                let a = active;
                (be.step)(
                    w,
                    self.cell,
                    a,
                    &proj[base * row_len..(base + a) * row_len],
                    &h[..a * hp],
                    &mut c[..a * hp],
                    &mut h2[..a * hp],
                );
                std::mem::swap(&mut h, &mut h2);
                steps += a;
                if let Some(y) = &self.y {
                    for r in 0..a {
                        let off = y.off + rows[r] * y.sb + self.pos(y, times[base + r]) * y.st;
                        // SAFETY: `run` checked the extent of y for every (b, t) of the view; this
                        // chunk alone owns sequence rows[r].
                        unsafe { y.buf.write(off, &h[r * hp..r * hp + hidden]) };
                    }
                }
                // Rows whose last valid step this was: the tail of the active prefix.
                let mut r = a;
                while r > 0 && lens[rows[r - 1]] == k + 1 {
                    r -= 1;
                    self.write_states(rows[r], &h[r * hp..r * hp + hidden], &c[r * hp..r * hp + hidden]);
                }
                base += a;
            }
            k0 += tile;
        }
        if let Some(y) = &self.y {
            for &b in rows {
                self.fill_padding(y, b);
            }
        }
        steps
    }

    fn write_states(&self, b: usize, h: &[f32], c: &[f32]) {
        for (out, v) in [(&self.h_n, h), (&self.c_n, c)] {
            if let Some(o) = out {
                // SAFETY: extent checked in `run`; sequence b belongs to the calling chunk only.
                unsafe { o.buf.write(o.off + b * o.sb, v) };
            }
        }
    }

    /// A sequence without valid steps: padded outputs and the empty state, nothing computed.
    fn finish_empty(&self, b: usize) {
        let hidden = self.w.hidden;
        let init_h = self.init.map(|s| &s.h[s.off + b * s.sb..s.off + b * s.sb + hidden]);
        let init_c = self.init.map(|s| &s.c[s.off + b * s.sb..s.off + b * s.sb + hidden]);
        for (out, init) in [(&self.h_n, init_h), (&self.c_n, init_c)] {
            if let Some(o) = out {
                match (self.empty_state, init) {
                    // SAFETY: extent checked in `run`; `finish_empty` runs after the parallel part.
                    (EmptyState::Initial, Some(src)) => unsafe { o.buf.write(o.off + b * o.sb, src) },
                    // SAFETY: as above.
                    _ => unsafe { o.buf.zero(o.off + b * o.sb, hidden) },
                }
            }
        }
        if let Some(y) = &self.y {
            self.fill_padding(y, b);
        }
    }

    /// Writes the output at every padded time of sequence `b`, walking time in processing order.
    fn fill_padding(&self, y: &SeqOut, b: usize) {
        let (t_len, hidden) = (self.view.time(), self.w.hidden);
        let at = |t: usize| y.off + b * y.sb + self.pos(y, t) * y.st;
        let mut last: Option<usize> = None;
        let fill = |t: usize, last: Option<usize>| match (y.fill, last) {
            // SAFETY: positions of sequence b, in bounds by the extent check in `run`; distinct (b, t)
            // positions are disjoint, and `last` is a valid time, never a padded `t`.
            (Fill::Previous, Some(src)) => unsafe { y.buf.copy(at(src), at(t), hidden) },
            // SAFETY: as above.
            _ => unsafe { y.buf.zero(at(t), hidden) },
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

/// Walks the valid times of one sequence in processing order.
struct StepCursor<'a> {
    runs: Runs<'a>,
    reverse: bool,
    t: usize,
    left: usize,
}

impl<'a> StepCursor<'a> {
    fn new(runs: Runs<'a>, reverse: bool) -> Self {
        StepCursor { runs, reverse, t: 0, left: 0 }
    }

    /// The next valid time. Called at most `valid_len` times.
    #[inline]
    fn next_time(&mut self) -> usize {
        if self.left == 0 {
            let r = if self.reverse { self.runs.next_back() } else { self.runs.next() };
            let r = r.expect("cursor advanced past the valid steps");
            self.left = r.len;
            self.t = if self.reverse { r.end() - 1 } else { r.offset };
        } else if self.reverse {
            self.t -= 1;
        } else {
            self.t += 1;
        }
        self.left -= 1;
        self.t
    }
}

/// Deals rows (sorted by decreasing length) to `n` chunks, each to the chunk with the least work so far.
/// Every chunk stays sorted by decreasing length.
fn balance(order: &[usize], lens: &[usize], n: usize) -> Vec<Vec<usize>> {
    let mut chunks: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut load = vec![0usize; n];
    for &b in order {
        let (i, _) = load.iter().enumerate().min_by_key(|&(i, &l)| (l, i)).expect("n >= 1");
        chunks[i].push(b);
        load[i] += lens[b];
    }
    chunks.retain(|c| !c.is_empty());
    chunks
}

/// Largest thread pool the library will build.
const MAX_THREADS: usize = 256;

fn effective_threads(threads: usize) -> usize {
    match threads {
        0 => rayon::current_num_threads(),
        n => n.min(MAX_THREADS),
    }
}

/// A cached pool of `n` threads.
type PoolCache = Mutex<Vec<(usize, Arc<rayon::ThreadPool>)>>;

fn pool(n: usize) -> Result<Arc<rayon::ThreadPool>> {
    static POOLS: OnceLock<PoolCache> = OnceLock::new();
    let n = n.min(MAX_THREADS);
    let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = pools.iter().find(|(k, _)| *k == n) {
        return Ok(Arc::clone(p));
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("masked-rnn-{i}"))
        .build()
        .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot start {n} threads: {e}")))?;
    let p = Arc::new(p);
    pools.push((n, Arc::clone(&p)));
    Ok(p)
}

/// Maps `f` over `0..n` on `threads` threads (0: rayon's pool, 1: this thread), results in index order.
pub(crate) fn par_map<T: Send>(threads: usize, n: usize, f: impl Fn(usize) -> T + Sync) -> Result<Vec<T>> {
    if n <= 1 || threads == 1 {
        return Ok((0..n).map(f).collect());
    }
    let go = || (0..n).into_par_iter().map(&f).collect();
    Ok(if threads == 0 { go() } else { pool(threads)?.install(go) })
}

/// Runs `a` and `b`, in parallel unless `threads == 1`; both results are returned.
pub(crate) fn par_join<A: Send, B: Send>(
    threads: usize,
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> Result<(A, B)> {
    Ok(match threads {
        1 => (a(), b()),
        0 => rayon::join(a, b),
        n => pool(n)?.install(|| rayon::join(a, b)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_is_even_and_sorted() {
        let lens = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1];
        let order: Vec<usize> = (0..10).collect();
        let chunks = balance(&order, &lens, 3);
        let loads: Vec<usize> = chunks.iter().map(|c| c.iter().map(|&b| lens[b]).sum()).collect();
        assert!(loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 2, "{loads:?}");
        for c in &chunks {
            assert!(c.windows(2).all(|w| lens[w[0]] >= lens[w[1]]));
        }
    }

    #[test]
    fn cursor_walks_runs_both_ways() {
        let v = SeqView::from_mask(&[true, false, true, true, false], 1, 5).unwrap();
        let mut f = StepCursor::new(v.runs(0), false);
        assert_eq!([f.next_time(), f.next_time(), f.next_time()], [0, 2, 3]);
        let mut r = StepCursor::new(v.runs(0), true);
        assert_eq!([r.next_time(), r.next_time(), r.next_time()], [3, 2, 0]);
    }

    #[test]
    fn extent_overflow_is_none() {
        assert_eq!(extent(0, usize::MAX, 2, 2, 1, 1), None);
        assert_eq!(extent(0, 2, 3, 12, 4, 4), Some(24));
        assert_eq!(extent(5, 0, 3, 12, 4, 4), Some(0));
    }
}
