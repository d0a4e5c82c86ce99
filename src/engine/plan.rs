//! The plan of a job: which threads run which rows (batch chunks balanced by valid steps) or which gate
//! columns (the weight-stationary split), chosen from the shape and the measured cache size.

use std::sync::OnceLock;

use super::workspace::{clear_reserve, ChunkScratch};

/// How a job (a forward, a training forward or a backward) spreads over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Schedule {
    /// Chosen from the shape and the cache (one core's L2, read from the OS): one thread for jobs of
    /// fewer than 8 M multiply-adds (waking another thread costs more than it saves); else gate columns
    /// when a thread would get no rows, when threads would get fewer than 4 rows each and the recurrent
    /// weights fill L2 (or 1 MiB, where L2 is larger), or when the weights exceed twice the threads' L2
    /// together and threads would get fewer than 64 rows each; batch chunks of at least 2 sequences
    /// otherwise (cells of fewer than 64 K multiply-adds per row and step always use batch chunks: too
    /// little work per step for a barrier).
    #[default]
    Auto,
    /// Sequences split into chunks balanced by valid steps (one per thread, down to one sequence per
    /// chunk, whatever the job's size); no synchronisation between chunks.
    BatchChunks,
    /// Weight-stationary: each thread owns a slice of the gate columns (hidden blocks) for every
    /// sequence, keeps that slice of the weights in its own cache, and the threads meet at a cheap
    /// barrier after every step (the DeepCPU idea). For small batches and large hidden sizes.
    GateColumns,
}

/// Whether a job of `rows` sequences over `blocks` column blocks of recurrent weights (`recurrent_bytes`,
/// `work` multiply-adds per row and step, `macs` in all) splits the gate columns across `threads` threads
/// instead of dealing sequences to them; the same rule for every pass (forward, training forward,
/// backward).
pub(crate) fn use_columns(
    schedule: Schedule,
    threads: usize,
    rows: usize,
    blocks: usize,
    recurrent_bytes: usize,
    work: usize,
    macs: usize,
) -> bool {
    if threads < 2 || blocks < 2 || rows == 0 || cores() < 2 {
        return false;
    }
    match schedule {
        Schedule::BatchChunks => false,
        Schedule::GateColumns => true,
        Schedule::Auto => {
            // Measured with `examples/schedule_sweep` (bench/README.md): gate columns win when a thread
            // would sit idle, when few rows per thread each stream weights that fill L2 (or 1 MiB), and
            // when even a thread's share of the weights is far beyond L2; batch chunks win otherwise.
            let l2 = l2_bytes();
            let idle = rows < threads;
            let few_rows = rows < MIN_ROWS_PER_THREAD * threads;
            let fills = recurrent_bytes >= l2.min(FEW_ROWS_COLUMN_BYTES);
            // Far beyond L2, unless each thread has rows enough to be compute-bound on streamed weights.
            let huge = recurrent_bytes > 2 * threads * l2 && rows < HUGE_MAX_ROWS_PER_THREAD * threads;
            // Enough work per step to pay for a barrier (at least a 64 x 256 block of weights), and in
            // all to pay for waking the other threads.
            let enough = work >= 1 << 16 && macs >= PARALLEL_MIN_MACS;
            enough && blocks >= threads && (idle || (few_rows && fills) || huge)
        }
    }
}

/// Multiply-adds below which a job runs on one thread under `Schedule::Auto` (about 0.15 ms of one
/// core's work at small batch). Waking a pool thread and waiting for it cost 50-120 us on the 2-core
/// Intel VM, so smaller jobs lost on 2 threads: in the full `bench/grid.py` run of 2026-12-03
/// (T = 50, lengths 25..50) an LSTM of 64 units at 4 sequences (4.9 M multiply-adds) took 1.83x as long
/// on 2 threads as on 1, its one-shot call 1.32x, the GRU's one-shot 3.0x (3.7 M); from 15 M up (a GRU
/// of 64 units at 16 sequences, or of 256 units at one) 2 threads were faster (0.50-0.96x).
const PARALLEL_MIN_MACS: usize = 1 << 23;

/// Fewest sequences a batch chunk gets. A step's cost hardly falls from two rows to one (the weights
/// stream through the registers once either way), so one-row chunks gain only the projection's share and
/// pay a hand-off: LSTMs of 64 and 100 units at 2 sequences, and a GRU of 192, ran slower on 2 threads
/// than on 1 (`examples/profile_layer`, `bench/grid.py`); at 4 sequences (2 per chunk) 2 threads are
/// as fast or faster.
const MIN_CHUNK_ROWS: usize = 2;

/// Into how many batch chunks a job of `rows` sequences and `macs` multiply-adds (over all its valid steps)
/// splits on `threads` threads; the same rule for every pass. Under `Schedule::Auto`, jobs of fewer than
/// [`PARALLEL_MIN_MACS`] multiply-adds run as one chunk (on the calling thread: a second thread's start
/// and finish cost more than it saves), and chunks get at least [`MIN_CHUNK_ROWS`] sequences. A forced
/// `Schedule::BatchChunks` deals one chunk to every thread, down to one sequence per chunk, whatever the
/// job's size.
pub(crate) fn batch_chunks(schedule: Schedule, threads: usize, rows: usize, macs: usize) -> usize {
    if schedule == Schedule::BatchChunks {
        threads.min(rows).max(1)
    } else if macs < PARALLEL_MIN_MACS {
        1
    } else {
        threads.min(rows / MIN_CHUNK_ROWS).max(1)
    }
}

/// Threads of a gate-column split over `blocks` column blocks: they spin at a barrier every step, so
/// never more of them than blocks or cores.
pub(crate) fn column_threads(threads: usize, blocks: usize) -> usize {
    threads.min(blocks).min(cores())
}

/// Rows per thread from which batch chunks beat gate columns even for weights far beyond L2. Each row
/// does `G x H` multiply-adds per weight row streamed, so from a few dozen rows a thread's step is bound by
/// its arithmetic, not by streaming the weights; the column split then only adds its barriers (and at
/// more than [`BLOCK_ROWS`](crate::kernel::simd::BLOCK_ROWS) rows it streams each slice once per row
/// group, as much traffic as the batch chunks). Measured on the 2-core Intel VM (`examples/profile_onnx`,
/// T 50, lengths T/2..T, 2 threads, 3 rounds alternating the two schedules, median of 3 calls): batch
/// chunks faster at 128 and 256 sequences (columns / batch per round: 1024 units, GRU 0.93-1.20, LSTM
/// 0.91-1.14; 2048 units at 256, LSTM 1.04-1.24, GRU 0.96-1.11); at 64 sequences mixed (2048 units: GRU
/// 1.10-1.22, LSTM 0.81-0.95), so the columns keep 32 rows per thread and fewer. A second run, 8 rounds of
/// 2 calls at 256 sequences and 1024 units: medians 1.05 (GRU) and 1.07 (LSTM), the machine's noise
/// 0.71-1.32 per round.
const HUGE_MAX_ROWS_PER_THREAD: usize = 64;

/// Recurrent weights from which few rows per thread split the gate columns even where L2 is larger: on a
/// 2 MiB-L2 Intel Xeon a 256-unit LSTM (1 MiB) at 2-6 sequences ran 1.25x faster on the columns
/// (`examples/schedule_sweep`), as it does on a 1 MiB-L2 AMD EPYC where its weights fill L2.
const FEW_ROWS_COLUMN_BYTES: usize = 1 << 20;

/// Rows per thread below which batch chunks leave threads underused.
pub(crate) const MIN_ROWS_PER_THREAD: usize = 4;

/// One core's L2 cache in bytes: read once from Linux' sysfs, else 1 MiB (typical of current x86).
pub(crate) fn l2_bytes() -> usize {
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
pub(crate) fn parse_cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult).filter(|&b| b > 0)
}

/// Deals rows (sorted by decreasing length) to the chunks, each to the chunk with the least work so far;
/// every chunk stays sorted by decreasing length.
pub(crate) fn balance(order: &[usize], lens: &[usize], load: &mut Vec<usize>, chunks: &mut [ChunkScratch]) {
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
    refine(lens, load, chunks);
}

/// Rounds of [`refine`] at most, and the largest `rows x rows` of two chunks it searches (beyond that,
/// rows are short against the chunks' loads and the greedy deal is within one short row of even).
const REFINE_ROUNDS: usize = 16;
const REFINE_PAIRS: usize = 4096;

/// Evens out the greedy deal (15 sequences on 2 threads can end 6 % apart): swaps a row of the most
/// loaded chunk with a shorter row of the least loaded one while that lowers the larger of their loads,
/// each time the swap that leaves them closest; every chunk stays sorted by decreasing length. Swaps keep
/// the chunks' sizes, so nothing is allocated. `load` holds the chunks' loads on entry.
fn refine(lens: &[usize], load: &mut [usize], chunks: &mut [ChunkScratch]) {
    for _ in 0..REFINE_ROUNDS {
        let hi = (0..chunks.len()).max_by_key(|&i| (load[i], usize::MAX - i)).expect("at least one chunk");
        let lo = (0..chunks.len()).min_by_key(|&i| (load[i], i)).expect("at least one chunk");
        let gap = load[hi] - load[lo];
        if gap < 2 || chunks[hi].rows.len() * chunks[lo].rows.len() > REFINE_PAIRS {
            return;
        }
        // A swap moving d = len(a) - len(b) in 0 < d < gap leaves the pair |gap - 2 d| apart.
        let mut best: Option<(usize, usize, usize)> = None;
        for (ia, &a) in chunks[hi].rows.iter().enumerate() {
            for (ib, &b) in chunks[lo].rows.iter().enumerate() {
                let d = lens[a].wrapping_sub(lens[b]);
                if d > 0 && d < gap && best.is_none_or(|(e, _, _)| gap.abs_diff(2 * d) < e) {
                    best = Some((gap.abs_diff(2 * d), ia, ib));
                }
            }
        }
        let Some((_, ia, ib)) = best else { return };
        let (a, b) = (chunks[hi].rows[ia], chunks[lo].rows[ib]);
        let d = lens[a] - lens[b];
        chunks[hi].rows[ia] = b;
        chunks[lo].rows[ib] = a;
        load[hi] -= d;
        load[lo] += d;
        for c in [hi, lo] {
            chunks[c].rows.sort_unstable_by_key(|&r| (std::cmp::Reverse(lens[r]), r));
        }
    }
}

/// Cores available to this process (at least 1), read once.
pub(crate) fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Largest thread pool the library will build.
pub(crate) const MAX_THREADS: usize = 256;

pub(crate) fn effective_threads(threads: usize) -> usize {
    match threads {
        0 => rayon::current_num_threads(),
        n => n.min(MAX_THREADS),
    }
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
    fn refinement_evens_what_the_greedy_deal_cannot() {
        // Greedy: 3, 2, 2 | 3, 2 (7 vs 5); even is 3, 3 | 2, 2, 2.
        let lens = [3, 3, 2, 2, 2];
        let order: Vec<usize> = (0..5).collect();
        let mut chunks: Vec<ChunkScratch> = (0..2).map(|_| ChunkScratch::default()).collect();
        balance(&order, &lens, &mut Vec::new(), &mut chunks);
        let loads: Vec<usize> = chunks.iter().map(|c| c.rows.iter().map(|&b| lens[b]).sum()).collect();
        assert_eq!(loads, [6, 6]);
        let mut rows: Vec<usize> = chunks.iter().flat_map(|c| c.rows.iter().copied()).collect();
        rows.sort_unstable();
        assert_eq!(rows, order);
        for c in &chunks {
            assert!(c.rows.windows(2).all(|w| lens[w[0]] >= lens[w[1]]));
        }
    }

    #[test]
    fn weights_far_beyond_l2_split_the_columns_for_few_rows_per_thread_only() {
        // Recurrent weights beyond twice the two threads' L2, 64 column blocks, work enough for threads.
        let (bytes, blocks, work, macs) = (4 * l2_bytes() + 4, 64, 1 << 20, 1 << 30);
        let columns = |rows| use_columns(Schedule::Auto, 2, rows, blocks, bytes, work, macs);
        let split = cores() >= 2;
        assert_eq!(columns(16), split);
        assert_eq!(columns(2 * HUGE_MAX_ROWS_PER_THREAD - 1), split);
        assert!(!columns(2 * HUGE_MAX_ROWS_PER_THREAD));
        assert!(!columns(256));
        // Forced schedules are obeyed whatever the rows.
        assert_eq!(use_columns(Schedule::GateColumns, 2, 256, blocks, bytes, work, macs), split);
        assert!(!use_columns(Schedule::BatchChunks, 2, 16, blocks, bytes, work, macs));
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
}
