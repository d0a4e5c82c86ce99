//! A reused workspace makes a forward call allocation-free (on the calling thread).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use masked_rnn::{KerasLstm, KerasLstmOptions, KerasOutputs, LstmWeights, Padding, SeqView, Workspace};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn second_call_with_a_workspace_allocates_nothing() {
    let (b, t, i, h) = (9, 40, 7, 37);
    let w = |n: usize, s: f32| (0..n).map(|k| ((k * 7919 % 1000) as f32 / 1000.0 - 0.5) * s).collect::<Vec<f32>>();
    let weights = LstmWeights::from_keras(i, h, &w(i * 4 * h, 0.5), &w(h * 4 * h, 0.5), Some(&w(4 * h, 0.1))).unwrap();
    let layer = KerasLstm::new(weights, KerasLstmOptions::default()).unwrap();
    let x = w(b * t * i, 2.0);
    let view = SeqView::from_lengths(&[40, 3, 0, 17, 40, 25, 1, 9, 33], t, Padding::Pre).unwrap();
    let (mut y, mut last, mut hn, mut cn) =
        (vec![0.0; b * t * h], vec![0.0; b * h], vec![0.0; b * h], vec![0.0; b * h]);
    let mut ws = Workspace::new();
    let mut first = Vec::new();
    let mut during = usize::MAX;
    for round in 0..2 {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let out =
            KerasOutputs { y: Some(&mut y), last_output: Some(&mut last), h_n: Some(&mut hn), c_n: Some(&mut cn) };
        layer.forward_in(&x, &view, None, out, 1, &mut ws).unwrap();
        if round == 0 {
            first = y.clone();
        } else {
            during = ALLOCATIONS.load(Ordering::Relaxed) - before;
        }
    }
    assert_eq!(during, 0, "a forward call with a warm workspace allocated {during} times");
    assert_eq!(y, first);
    assert!(ws.bytes() > 0);
}
