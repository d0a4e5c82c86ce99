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
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use crate::cells::lstm::CellSpec;
use crate::cells::weights::PackedLstm;
use crate::error::{Error, ErrorKind, Result};
use crate::kernel::Backend;
use crate::view::SeqView;

/// Bytes of projected input a time tile aims to keep in cache.
const TILE_BYTES: usize = 256 * 1024;

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
    pub schedule: Schedule,
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

/// How a job spreads over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Schedule {
    /// Chosen from the shape and the cache (one core's L2, read from the OS): gate columns when a thread
    /// would get no rows, when threads would get fewer than 4 rows each and the recurrent weights fill
    /// L2, or when the weights exceed twice the threads' L2 together; batch chunks otherwise (hidden
    /// sizes below 128 always use batch chunks: too little work per step for a barrier).
    #[default]
    Auto,
    /// Sequences split into chunks balanced by valid steps; no synchronisation between chunks.
    BatchChunks,
    /// Weight-stationary: each thread owns a slice of the gate columns (hidden blocks) for every
    /// sequence, keeps that slice of the weights in its own cache, and the threads meet at a cheap
    /// barrier after every step (the DeepCPU idea). For small batches and large hidden sizes.
    GateColumns,
}

/// Rows per thread below which batch chunks leave threads underused.
const MIN_ROWS_PER_THREAD: usize = 4;
/// One core's L2 cache in bytes: read once from Linux' sysfs, else 1 MiB (typical of current x86).
fn l2_bytes() -> usize {
    static L2: OnceLock<usize> = OnceLock::new();
    *L2.get_or_init(|| {
        (0..8)
            .find_map(|i| {
                let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
                let level = std::fs::read_to_string(format!("{dir}/level")).ok()?;
                let kind = std::fs::read_to_string(format!("{dir}/type")).ok()?;
                if level.trim() != "2" || kind.trim() == "Instruction" {
                    return None;
                }
                parse_cache_size(&std::fs::read_to_string(format!("{dir}/size")).ok()?)
            })
            .unwrap_or(1 << 20)
    })
}

/// `"1024K"`, `"2M"` or `"524288"` as bytes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult).filter(|&b| b > 0)
}

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
    lens: Vec<usize>,
    order: Vec<usize>,
    load: Vec<usize>,
    chunks: Vec<ChunkScratch>,
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
struct ChunkScratch {
    rows: Vec<usize>,
    h: Vec<f32>,
    h2: Vec<f32>,
    c: Vec<f32>,
    proj: Vec<f32>,
    offs: Vec<usize>,
    times: Vec<usize>,
    cur: Vec<Cursor>,
    steps: usize,
}

impl ChunkScratch {
    fn bytes(&self) -> usize {
        (self.h.capacity() + self.h2.capacity() + self.c.capacity() + self.proj.capacity()) * 4
            + (self.rows.capacity() + self.offs.capacity() + self.times.capacity()) * 8
            + self.cur.capacity() * std::mem::size_of::<Cursor>()
    }
}

/// Where a sequence's walk over its valid steps stands: next run index (counted from the end when
/// reversed), current time, steps left in the current run.
#[derive(Clone, Copy, Debug, Default)]
struct Cursor {
    next_run: usize,
    t: usize,
    left: usize,
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

/// The recurrent state shared by the threads of a job: `h`, `h2` (double buffer) and `c`, `m x hp` each.
#[derive(Clone, Copy, Debug)]
struct SharedState {
    h: *mut f32,
    h2: *mut f32,
    c: *mut f32,
    len: usize,
}

// SAFETY: the threads of a column-split job write disjoint columns of `h2`/`c` during a step, read `h`
// only, and meet at a barrier before the buffers swap roles; batch chunks use their own private state.
unsafe impl Send for SharedState {}
unsafe impl Sync for SharedState {}

/// A spinning barrier: threads of a column-split job meet after each step. Spins briefly, then yields,
/// so an oversubscribed machine still makes progress. A thread that panics poisons it, releasing the
/// others.
struct SpinBarrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
}

impl SpinBarrier {
    fn new(n: usize) -> Self {
        SpinBarrier { n, count: AtomicUsize::new(0), generation: AtomicUsize::new(0), poisoned: AtomicBool::new(false) }
    }

    /// Waits for all `n` threads; `false` if the barrier was poisoned.
    fn wait(&self) -> bool {
        let gen = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
        } else {
            let mut spins = 0u32;
            while self.generation.load(Ordering::Acquire) == gen {
                if self.poisoned.load(Ordering::Relaxed) {
                    return false;
                }
                spins += 1;
                if spins < 1 << 12 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        !self.poisoned.load(Ordering::Relaxed)
    }

    fn poison(&self) {
        self.poisoned.store(true, Ordering::Relaxed);
    }
}

impl Job<'_> {
    /// Validates every buffer against its layout, then runs. After this check all raw writes are in bounds.
    pub(crate) fn run(&self, ws: &mut JobScratch) -> Result<ForwardStats> {
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

        let JobScratch { lens, order, load, chunks } = ws;
        clear_reserve(lens, b);
        lens.extend((0..b).map(|s| self.view.valid_len(s)));
        clear_reserve(order, b);
        order.extend((0..b).filter(|&s| lens[s] > 0));
        order.sort_unstable_by_key(|&s| (Reverse(lens[s]), s));
        let threads = effective_threads(self.threads);
        let lens: &[usize] = lens;

        let (columns, n_chunks) = self.layout(threads, order.len());
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
            let run = |cs: &mut ChunkScratch| {
                cs.steps = if cs.rows.is_empty() { 0 } else { self.run_chunk(cs, lens) };
            };
            match self.threads {
                1 => chunks.iter_mut().for_each(run),
                0 => chunks.par_iter_mut().for_each(run),
                n => pool(n)?.install(|| chunks.par_iter_mut().for_each(run)),
            }
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

    /// Whether the job splits gate columns, and into how many chunks (or column threads) it runs.
    fn layout(&self, threads: usize, rows: usize) -> (bool, usize) {
        let columns = self.use_columns(threads, rows);
        // Column threads spin at a barrier every step: never more of them than cores.
        (columns, if columns { threads.min(self.w.blocks).min(cores()) } else { threads.min(rows).max(1) })
    }

    /// An upper bound of the bytes a fresh [`JobScratch`] holds after running this job (buffers are sized
    /// exactly, never by amortised doubling): per sequence a few indices; per sequence with valid steps the
    /// state `h, h', c` (`3 x hp` floats) and a cursor; per chunk (or column thread) the projected input of
    /// one time tile (about `TILE_BYTES`, more only when one step of the chunk's rows alone is larger) with
    /// its row offsets and times.
    pub(crate) fn scratch_bound(&self) -> usize {
        let b = self.view.batch();
        let rows = (0..b).filter(|&s| self.view.valid_len(s) > 0).count();
        let (columns, n) = self.layout(effective_threads(self.threads), rows);
        let (hp, nb, blocks) = (self.w.hidden_padded(), self.w.nb, self.w.blocks);
        let word = std::mem::size_of::<usize>();
        let mut bytes = (2 * b + n) * word + n * std::mem::size_of::<ChunkScratch>();
        if rows == 0 {
            return bytes;
        }
        bytes += 3 * rows * hp * 4;
        // One chunk's time tile over `proj_row` floats per row: at most max(tile rows, its rows) rows of
        // projection, row offsets and times.
        let tile_rows = |proj_row: usize| TILE_BYTES / (4 * proj_row).max(1);
        let per_row = |proj_row: usize| proj_row * 4 + 2 * word;
        let cursor = std::mem::size_of::<Cursor>();
        if columns {
            for j in 0..n {
                let proj_row = ((j + 1) * blocks / n - j * blocks / n) * 4 * nb;
                bytes += tile_rows(proj_row).max(rows) * per_row(proj_row) + rows * cursor;
            }
        } else {
            // Chunk row counts m_c sum to `rows`; sum of max(A, m_c) <= n A + max(0, rows - A).
            let proj_row = blocks * 4 * nb;
            let a = tile_rows(proj_row);
            bytes += (n * a + rows.saturating_sub(a)) * per_row(proj_row) + rows * (cursor + word);
        }
        bytes
    }

    /// Whether this job splits gate columns across threads instead of sequences.
    fn use_columns(&self, threads: usize, rows: usize) -> bool {
        if threads < 2 || self.w.blocks < 2 || rows == 0 || cores() < 2 {
            return false;
        }
        match self.schedule {
            Schedule::BatchChunks => false,
            Schedule::GateColumns => true,
            Schedule::Auto => {
                // Measured with `examples/schedule_sweep` (bench/README.md): gate columns win when a
                // thread would sit idle, when few rows per thread each stream weights that fill L2, and
                // when even a thread's share of the weights is far beyond L2; batch chunks win otherwise.
                let (recurrent_bytes, l2) = (self.w.r.len() * 4, l2_bytes());
                let idle = rows < threads;
                let few_rows = rows < MIN_ROWS_PER_THREAD * threads;
                let huge = recurrent_bytes > 2 * threads * l2;
                // Enough work per step to pay for a barrier: at least a 64 x 256 block of weights.
                let enough = self.w.hidden * self.w.hidden_padded() * 4 >= 1 << 16;
                enough && self.w.blocks >= threads && (idle || (few_rows && recurrent_bytes >= l2) || huge)
            }
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
        let hp = self.w.hidden_padded();
        let m = cs.rows.len();
        for v in [&mut cs.h, &mut cs.h2, &mut cs.c] {
            clear_reserve(v, m * hp);
            v.resize(m * hp, 0.0);
        }
        self.load_initial(&cs.rows, &mut cs.h, &mut cs.c);
        let state = SharedState { h: cs.h.as_mut_ptr(), h2: cs.h2.as_mut_ptr(), c: cs.c.as_mut_ptr(), len: m * hp };
        let rows = std::mem::take(&mut cs.rows);
        let steps = self.drive(&rows, lens, 0..self.w.blocks, state, cs, None);
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
        let hp = self.w.hidden_padded();
        let m = order.len();
        let n = chunks.len();
        let first = &mut chunks[0];
        for v in [&mut first.h, &mut first.h2, &mut first.c] {
            clear_reserve(v, m * hp);
            v.resize(m * hp, 0.0);
        }
        self.load_initial(order, &mut first.h, &mut first.c);
        let state =
            SharedState { h: first.h.as_mut_ptr(), h2: first.h2.as_mut_ptr(), c: first.c.as_mut_ptr(), len: m * hp };
        let blocks = self.w.blocks;
        let range = |j: usize| (j * blocks / n)..((j + 1) * blocks / n);
        let barrier = SpinBarrier::new(n);
        let scratch = ChunkPtr(chunks.as_mut_ptr());
        let work = |j: usize| -> usize {
            // SAFETY: `j < n` and every index is run by exactly one thread (broadcast indices and the
            // scoped threads below are distinct), so each thread has its own ChunkScratch; chunk 0's
            // h/h2/c buffers are only reached through `state`, never through this reference.
            let cs = unsafe { &mut *scratch.at(j) };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.drive(order, lens, range(j), state, cs, Some(&barrier))
            }));
            match r {
                Ok(steps) => steps,
                Err(p) => {
                    barrier.poison();
                    std::panic::resume_unwind(p)
                }
            }
        };
        // The barrier needs every participant running at once. A pool that runs nothing but column jobs,
        // one job at a time, guarantees that and keeps its threads (and their caches) from call to call;
        // if another job holds it, dedicated scoped threads do.
        let cp = column_pool(n)?;
        let guard = match cp.lock.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let steps = match guard {
            Some(_held) => cp.pool.broadcast(|ctx| work(ctx.index()))[0],
            None => std::thread::scope(|s| {
                for j in 1..n {
                    let work = &work;
                    if let Err(e) = std::thread::Builder::new().spawn_scoped(s, move || work(j)) {
                        // The threads already started would wait at the barrier for ever: release them.
                        barrier.poison();
                        return Err(Error::new(ErrorKind::Internal, format!("cannot start a thread: {e}")));
                    }
                }
                Ok(work(0))
            })?,
        };
        if let Some(y) = &self.y {
            for &b in order {
                self.fill_padding(y, b);
            }
        }
        Ok(steps)
    }

    fn load_initial(&self, rows: &[usize], h: &mut [f32], c: &mut [f32]) {
        let (hidden, hp) = (self.w.hidden, self.w.hidden_padded());
        if let Some(init) = &self.init {
            for (r, &b) in rows.iter().enumerate() {
                let src = init.off + b * init.sb;
                h[r * hp..r * hp + hidden].copy_from_slice(&init.h[src..src + hidden]);
                c[r * hp..r * hp + hidden].copy_from_slice(&init.c[src..src + hidden]);
            }
        }
    }

    /// The time loop over `rows` (sorted by decreasing valid length) for the hidden blocks `blocks`, with
    /// the recurrent state in `state` (`rows.len() x hp` each). Writes y, h_n, c_n for the hidden units
    /// of `blocks` only. With a barrier, threads meet after every step. Returns the cell steps computed.
    fn drive(
        &self,
        rows: &[usize],
        lens: &[usize],
        blocks: Range<usize>,
        state: SharedState,
        cs: &mut ChunkScratch,
        barrier: Option<&SpinBarrier>,
    ) -> usize {
        let (be, w) = (self.backend, self.w);
        let (hidden, hp) = (w.hidden, w.hidden_padded());
        let cols = (blocks.start * w.nb).min(hidden)..(blocks.end * w.nb).min(hidden);
        let proj_row = blocks.len() * 4 * w.nb;
        let m = rows.len();
        debug_assert!(state.len >= m * hp);
        clear_reserve(&mut cs.cur, m);
        cs.cur.resize(m, Cursor::default());
        // The largest time tile, so the buffers below are sized once, exactly: a tile holds at most
        // max(TILE_BYTES / row bytes, m) rows of projection (see the tile size below).
        let most = (TILE_BYTES / (4 * proj_row).max(1)).max(m);
        clear_reserve(&mut cs.offs, most);
        clear_reserve(&mut cs.times, most);
        clear_reserve(&mut cs.proj, most * proj_row);
        let n_max = lens[rows[0]];
        let (mut h, mut h2) = (state.h, state.h2);
        // active(k) = rows with more than k valid steps; rows are sorted, so it is a shrinking prefix.
        let mut active = m;
        let mut steps = 0;
        let mut k0 = 0;
        let mut reverse = false; // the direction of the next step's first weight sweep
        while k0 < n_max {
            while lens[rows[active - 1]] <= k0 {
                active -= 1;
            }
            let tile = (TILE_BYTES / (4 * proj_row * active)).clamp(1, n_max - k0);
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
            cs.proj.clear();
            cs.proj.resize(cs.offs.len() * proj_row, 0.0);
            (be.project)(w, self.x.data, &cs.offs, blocks.clone(), &mut cs.proj);

            let mut base = 0;
            for k in k0..k0 + tile {
                while lens[rows[active - 1]] <= k {
                    active -= 1;
                }
                let a = active;
                // SAFETY: `state` holds m x hp floats per buffer (allocated by the caller), a <= m; h and
                // h2 are distinct buffers and proj is private. Other threads (column split) write only
                // their own blocks' columns of h2 and c during this step and read h, which nobody writes
                // until every thread has passed the barrier below.
                unsafe {
                    let h_prev = std::slice::from_raw_parts(h, a * hp);
                    let p = &cs.proj[base * proj_row..(base + a) * proj_row];
                    reverse = !(be.step)(w, self.cell, a, blocks.clone(), p, h_prev, state.c, h2, reverse);
                }
                if let Some(b) = barrier {
                    if !b.wait() {
                        return steps;
                    }
                }
                std::mem::swap(&mut h, &mut h2);
                steps += a;
                // SAFETY (both blocks below): after the barrier `h` holds the complete new state and no
                // thread writes it before the next barrier; this thread reads and writes only the
                // columns `cols` of its own blocks, and only rows of this job (extents checked in `run`).
                if let Some(y) = &self.y {
                    for (r, (&row, &t)) in rows[..a].iter().zip(&cs.times[base..base + a]).enumerate() {
                        let off = y.off + row * y.sb + self.pos(y, t) * y.st;
                        unsafe {
                            let src = std::slice::from_raw_parts(h.add(r * hp + cols.start), cols.len());
                            y.buf.write(off + cols.start, src);
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
                unsafe { o.buf.write(o.off + b * o.sb + col, v) };
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

/// Deals rows (sorted by decreasing length) to the chunks, each to the chunk with the least work so far;
/// every chunk stays sorted by decreasing length.
fn balance(order: &[usize], lens: &[usize], load: &mut Vec<usize>, chunks: &mut [ChunkScratch]) {
    let n = chunks.len();
    let deal = |load: &mut Vec<usize>, to: &mut dyn FnMut(usize, usize)| {
        clear_reserve(load, n);
        load.resize(n, 0);
        for &b in order {
            let (i, _) = load.iter().enumerate().min_by_key(|&(i, &l)| (l, i)).expect("at least one chunk");
            to(i, b);
            load[i] += lens[b];
        }
    };
    // Count first (in `steps`, which the run overwrites), so each row list gets its exact size.
    for c in chunks.iter_mut() {
        c.steps = 0;
    }
    deal(load, &mut |i, _| chunks[i].steps += 1);
    for c in chunks.iter_mut() {
        clear_reserve(&mut c.rows, c.steps);
    }
    deal(load, &mut |i, b| chunks[i].rows.push(b));
}

/// Cores available to this process (at least 1), read once.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
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

/// The scratch of a column-split job's threads, shared by index.
#[derive(Clone, Copy)]
struct ChunkPtr(*mut ChunkScratch);

impl ChunkPtr {
    /// Element `j` (the closure captures the whole wrapper, not the raw pointer field).
    fn at(&self, j: usize) -> *mut ChunkScratch {
        self.0.wrapping_add(j)
    }
}

// SAFETY: each thread of a column-split job dereferences a distinct index (see `run_columns`).
unsafe impl Send for ChunkPtr {}
unsafe impl Sync for ChunkPtr {}

/// A pool of `n` threads that only ever runs column-split jobs, one at a time.
struct ColumnPool {
    lock: Mutex<()>,
    pool: rayon::ThreadPool,
}

type ColumnPoolCache = Mutex<Vec<(usize, Arc<ColumnPool>)>>;

fn column_pool(n: usize) -> Result<Arc<ColumnPool>> {
    static POOLS: OnceLock<ColumnPoolCache> = OnceLock::new();
    let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = pools.iter().find(|(k, _)| *k == n) {
        return Ok(Arc::clone(p));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("masked-rnn-columns-{i}"))
        .build()
        .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot start {n} threads: {e}")))?;
    let p = Arc::new(ColumnPool { lock: Mutex::new(()), pool });
    pools.push((n, Arc::clone(&p)));
    Ok(p)
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
        let mut chunks: Vec<ChunkScratch> = (0..3).map(|_| ChunkScratch::default()).collect();
        balance(&order, &lens, &mut Vec::new(), &mut chunks);
        let loads: Vec<usize> = chunks.iter().map(|c| c.rows.iter().map(|&b| lens[b]).sum()).collect();
        assert!(loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 2, "{loads:?}");
        for c in &chunks {
            assert!(c.rows.windows(2).all(|w| lens[w[0]] >= lens[w[1]]));
        }
    }

    #[test]
    fn cursor_walks_runs_both_ways() {
        let v = SeqView::from_mask(&[true, false, true, true, false], 1, 5).unwrap();
        let mut f = Cursor::default();
        assert_eq!([f.next_time(&v, 0, false), f.next_time(&v, 0, false), f.next_time(&v, 0, false)], [0, 2, 3]);
        let mut r = Cursor::default();
        assert_eq!([r.next_time(&v, 0, true), r.next_time(&v, 0, true), r.next_time(&v, 0, true)], [3, 2, 0]);
    }

    #[test]
    fn barrier_releases_all_and_poison_frees_waiters() {
        let b = SpinBarrier::new(3);
        let passed = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..100 {
                        assert!(b.wait());
                        passed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(passed.load(Ordering::Relaxed), 300);
        let p = SpinBarrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| assert!(!p.wait()));
            std::thread::sleep(std::time::Duration::from_millis(20));
            p.poison();
        });
    }

    #[test]
    fn cache_sizes_parse() {
        assert_eq!(parse_cache_size("1024K\n"), Some(1 << 20));
        assert_eq!(parse_cache_size("2M"), Some(2 << 20));
        assert_eq!(parse_cache_size("524288"), Some(524_288));
        assert_eq!(parse_cache_size("0K"), None);
        assert_eq!(parse_cache_size("lots"), None);
        assert!(l2_bytes() >= 64 << 10);
    }

    #[test]
    fn extent_overflow_is_none() {
        assert_eq!(extent(0, usize::MAX, 2, 2, 1, 1), None);
        assert_eq!(extent(0, 2, 3, 12, 4, 4), Some(24));
        assert_eq!(extent(5, 0, 3, 12, 4, 4), Some(0));
    }
}
