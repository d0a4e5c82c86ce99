//! Threads: cached pools, the dedicated pool of column-split jobs and the spinning barrier its threads
//! meet at after every step.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::plan::MAX_THREADS;
use super::workspace::ChunkScratch;
use crate::error::{Error, ErrorKind, Result};

/// A spinning barrier: threads of a column-split job meet after each step. Spins briefly, then yields,
/// so an oversubscribed machine still makes progress. A thread that panics poisons it, releasing the
/// others.
pub(crate) struct SpinBarrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
}

impl SpinBarrier {
    pub(crate) fn new(n: usize) -> Self {
        SpinBarrier { n, count: AtomicUsize::new(0), generation: AtomicUsize::new(0), poisoned: AtomicBool::new(false) }
    }

    /// Waits for all `n` threads; `false` if the barrier was poisoned.
    pub(crate) fn wait(&self) -> bool {
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

    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::Relaxed);
    }
}

/// A cached pool of `n` threads.
pub(crate) type PoolCache = Mutex<Vec<(usize, Arc<rayon::ThreadPool>)>>;

pub(crate) fn pool(n: usize) -> Result<Arc<rayon::ThreadPool>> {
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
pub(crate) struct ChunkPtr(pub(crate) *mut ChunkScratch);

impl ChunkPtr {
    /// Element `j` (the closure captures the whole wrapper, not the raw pointer field).
    pub(crate) fn at(&self, j: usize) -> *mut ChunkScratch {
        self.0.wrapping_add(j)
    }
}

// SAFETY: each thread of a column-split job dereferences a distinct index (see `run_columns`).
unsafe impl Send for ChunkPtr {}

unsafe impl Sync for ChunkPtr {}

/// A pool of `n` threads that only ever runs column-split jobs, one at a time.
pub(crate) struct ColumnPool {
    pub(crate) lock: Mutex<()>,
    pub(crate) pool: rayon::ThreadPool,
}

pub(crate) type ColumnPoolCache = Mutex<Vec<(usize, Arc<ColumnPool>)>>;

pub(crate) fn column_pool(n: usize) -> Result<Arc<ColumnPool>> {
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

/// Runs `f(j)` for every `j < parts` on a job's threads: 1 the calling thread, in order; 0 rayon's current
/// pool; `n` a pool of `n` threads. A single part runs on the calling thread whatever `threads` is.
pub(crate) fn for_each_index(threads: usize, parts: usize, f: impl Fn(usize) + Sync + Send) -> Result<()> {
    if threads == 1 || parts <= 1 {
        (0..parts).for_each(f);
        return Ok(());
    }
    let f = &f;
    in_scope(threads, |s| {
        for j in 1..parts {
            s.spawn(move |_| f(j));
        }
        f(0);
    })
}

/// Runs `body` on the calling thread in a scope whose spawned jobs run on a job's threads (0: rayon's
/// current pool; `n`: a pool of `n` threads), returning when they have all finished.
///
/// The caller works too, rather than blocking while the pool works (`install`): waking a sleeping thread
/// costs tens of microseconds on a virtual machine (measured 40-100 us), and `install` pays it twice
/// (the caller's job to a worker, and the end back to the caller) while the caller sits idle. Spawning
/// first and then working lets the wake-up overlap the caller's own part.
fn in_scope<'s>(threads: usize, body: impl FnOnce(&rayon::Scope<'s>) + Send) -> Result<()> {
    match threads {
        0 => rayon::in_place_scope(body),
        n => pool(n)?.in_place_scope(body),
    }
    Ok(())
}

/// Runs `f` on every element of `parts` on a job's threads, as [`for_each_index`].
pub(crate) fn for_each_part<T: Send>(threads: usize, parts: &mut [T], f: impl Fn(&mut T) + Sync + Send) -> Result<()> {
    let Some((first, rest)) = parts.split_first_mut() else {
        return Ok(());
    };
    if threads == 1 || rest.is_empty() {
        f(first);
        rest.iter_mut().for_each(f);
        return Ok(());
    }
    let f = &f;
    in_scope(threads, |s| {
        for part in rest {
            s.spawn(move |_| f(part));
        }
        f(first);
    })
}

/// Runs `work(j, barrier)` for every `j < n` on `n` threads running at once, as a gate-column split
/// needs: its threads meet at `barrier` after every step (and between the dependent phases of a step).
/// A pool that runs nothing but column jobs, one at a time, guarantees that every participant runs and
/// keeps its threads (and their caches) from call to call; if another job holds it, dedicated scoped
/// threads run this one. A participant that panics poisons the barrier, releasing the others, and the
/// panic resumes on the caller. Returns participant 0's result.
pub(crate) fn run_columns<R: Send>(n: usize, work: impl Fn(usize, &SpinBarrier) -> R + Sync) -> Result<R> {
    let barrier = SpinBarrier::new(n);
    let guarded = |j: usize| -> R {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(j, &barrier))) {
            Ok(r) => r,
            Err(p) => {
                barrier.poison();
                std::panic::resume_unwind(p)
            }
        }
    };
    let cp = column_pool(n)?;
    let guard = match cp.lock.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    };
    match guard {
        Some(_held) => Ok(cp.pool.broadcast(|ctx| guarded(ctx.index())).swap_remove(0)),
        None => std::thread::scope(|s| {
            for j in 1..n {
                let guarded = &guarded;
                if let Err(e) = std::thread::Builder::new().spawn_scoped(s, move || {
                    guarded(j);
                }) {
                    // The threads already started would wait at the barrier for ever: release them.
                    barrier.poison();
                    return Err(Error::new(ErrorKind::Internal, format!("cannot start a thread: {e}")));
                }
            }
            Ok(guarded(0))
        }),
    }
}

/// Runs `a` and `b`, in parallel unless `threads == 1`; both results are returned.
pub(crate) fn par_join<A: Send, B: Send>(
    threads: usize,
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> Result<(A, B)> {
    Ok(match threads {
        1 => (a(), b()),
        n => {
            let (mut ra, mut rb) = (None, None);
            in_scope(n, |s| {
                let rb = &mut rb;
                s.spawn(move |_| *rb = Some(b()));
                ra = Some(a());
            })?;
            match (ra, rb) {
                (Some(ra), Some(rb)) => (ra, rb),
                _ => return Err(Error::new(ErrorKind::Internal, "a joined task did not finish")),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_and_the_caller_takes_the_first() {
        for threads in [0, 1, 2, 3] {
            let me = std::thread::current().id();
            let mut parts: Vec<(usize, Option<std::thread::ThreadId>)> = vec![(0, None); 7];
            for_each_part(threads, &mut parts, |p| *p = (p.0 + 1, Some(std::thread::current().id()))).unwrap();
            assert!(parts.iter().all(|p| p.0 == 1), "threads {threads}: {parts:?}");
            assert_eq!(parts[0].1, Some(me), "threads {threads}: the first part ran elsewhere");
            let hits: Vec<AtomicUsize> = (0..7).map(|_| AtomicUsize::new(0)).collect();
            for_each_index(threads, 7, |j| {
                hits[j].fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "threads {threads}");
            let (a, b) = par_join(threads, || std::thread::current().id(), || 2).unwrap();
            assert_eq!((a, b), (me, 2), "threads {threads}");
            for_each_part(threads, &mut Vec::<u8>::new(), |_| unreachable!("no parts")).unwrap();
            for_each_index(threads, 0, |_| unreachable!("no parts")).unwrap();
            // A single part never leaves the calling thread.
            let mut one = [None];
            for_each_part(threads, &mut one, |p| *p = Some(std::thread::current().id())).unwrap();
            assert_eq!(one[0], Some(me), "threads {threads}: a single part ran elsewhere");
            let ran_on = Mutex::new(None);
            for_each_index(threads, 1, |_| *ran_on.lock().unwrap() = Some(std::thread::current().id())).unwrap();
            assert_eq!(*ran_on.lock().unwrap(), Some(me), "threads {threads}: a single index ran elsewhere");
        }
    }

    #[test]
    fn a_panicking_part_panics_the_caller_after_the_others_ran() {
        let ran = AtomicUsize::new(0);
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut parts = [0usize, 1, 2, 3];
            for_each_part(2, &mut parts, |p| {
                ran.fetch_add(1, Ordering::Relaxed);
                assert!(*p != 2, "part 2 fails");
            })
        }));
        assert!(got.is_err());
        assert_eq!(ran.load(Ordering::Relaxed), 4);
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
}
