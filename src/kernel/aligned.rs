//! Float buffers that start on a cache line.
//!
//! The kernels stream packed weight panels and projection rows in whole 64-byte blocks (one AVX-512
//! vector, four AVX2 vectors per two lines). The system allocator hands out large `Vec<f32>` buffers at
//! 16 bytes past a line (glibc's `mmap` chunks), so every such load straddles two cache lines. Measured
//! on an AVX-512 Xeon, aligning them made whole layers 0-12 % faster (about 5 % typical: see
//! `bench/README.md`, "Alignment").
//!
//! [`AlignedVec`] keeps an ordinary `Vec<f32>` (so fresh memory still comes zeroed from the allocator,
//! without a pass over it) with up to [`LINE_FLOATS`]` - 1` floats of slack in front, and exposes the
//! floats from the first line boundary on. No `unsafe` is involved: when the allocator's address is not
//! a multiple of four bytes (never, for `f32`) the buffer is merely unaligned.

use std::ops::{Deref, DerefMut};

/// Floats in one 64-byte cache line.
pub(crate) const LINE_FLOATS: usize = 16;

/// A resizable `[f32]` whose first element sits on a 64-byte boundary (see the module docs). Grows only
/// to the exact size asked for (no amortised doubling), so workspaces stay within their stated bounds.
#[derive(Default)]
pub(crate) struct AlignedVec {
    /// The allocation; every element is initialised (`buf.len()` is what was allocated).
    buf: Vec<f32>,
    /// Floats before the first line boundary.
    off: usize,
    /// Floats in use, from `off`.
    len: usize,
}

impl AlignedVec {
    /// Floats the buffer holds without allocating.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len() - self.off
    }

    /// Bytes allocated.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.buf.capacity() * std::mem::size_of::<f32>()
    }

    /// Empties the buffer and makes room for exactly `n` floats when it holds fewer (old contents are
    /// dropped, not copied: callers fill the buffer after sizing it).
    pub(crate) fn clear_reserve(&mut self, n: usize) {
        self.len = 0;
        if self.capacity() < n {
            // Free first: a weight-sized buffer should not be held twice.
            self.buf = Vec::new();
            self.buf = vec![0.0; n + LINE_FLOATS - 1];
            // `align_offset` counts elements; it may report "impossible" (usize::MAX), then stay unaligned.
            self.off = self.buf.as_ptr().align_offset(64).min(LINE_FLOATS - 1);
        }
    }

    /// `n` floats, each zero (a fresh allocation is zero already: only reused memory is cleared).
    pub(crate) fn resize_zeroed(&mut self, n: usize) {
        let reused = self.capacity() >= n;
        let floats = self.resize_stale(n);
        if reused {
            floats.fill(0.0);
        }
    }

    /// `n` floats of unspecified (but initialised) values, such as a previous use left (zeros where the
    /// buffer had to grow), as a slice: for callers that overwrite every one before reading it.
    pub(crate) fn resize_stale(&mut self, n: usize) -> &mut [f32] {
        self.clear_reserve(n);
        self.len = n;
        self
    }
}

impl Deref for AlignedVec {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl DerefMut for AlignedVec {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

impl Clone for AlignedVec {
    fn clone(&self) -> Self {
        // A cloned `Vec` lands elsewhere: align the copy on its own.
        let mut v = AlignedVec::default();
        v.resize_stale(self.len);
        v.copy_from_slice(self);
        v
    }
}

impl PartialEq for AlignedVec {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for AlignedVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_aligned(v: &AlignedVec) -> bool {
        (v.as_ptr() as usize).is_multiple_of(64)
    }

    #[test]
    fn starts_on_a_cache_line_through_every_resize() {
        for n in [1, 15, 16, 17, 1000, 1 << 18, (1 << 20) + 3] {
            let mut v = AlignedVec::default();
            v.resize_zeroed(n);
            assert!(is_aligned(&v), "{n}");
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x.to_bits() == 0));
            v.iter_mut().enumerate().for_each(|(k, x)| *x = k as f32);
            // Shrinking keeps the allocation and the alignment; stale contents survive, zeroing clears.
            let ptr = v.as_ptr();
            v.resize_stale(n / 2);
            assert_eq!((v.as_ptr(), v.len()), (ptr, n / 2));
            assert!(v.iter().enumerate().all(|(k, &x)| x == k as f32));
            v.resize_zeroed(n);
            assert_eq!(v.as_ptr(), ptr);
            assert!(v.iter().all(|&x| x.to_bits() == 0));
            // Growing reallocates exactly and realigns.
            v.resize_stale(2 * n + 5);
            assert!(is_aligned(&v) && v.len() == 2 * n + 5);
            assert!((2 * n + 5..2 * n + 5 + LINE_FLOATS).contains(&v.capacity()));
            let c = v.clone();
            assert!(is_aligned(&c) && c == v && c.as_ptr() != v.as_ptr());
        }
        let e = AlignedVec::default();
        assert!(e.is_empty() && e.capacity() == 0);
    }
}
