//! Where a job reads and writes: strided views of the caller's input, initial state and outputs.
//!
//! Outputs are written by several threads at once through raw pointers, so the one rule that keeps that
//! sound is checked here, in one place, before anything runs: [`OutRegion::split`] borrows the caller's
//! buffer for the jobs' lifetime and checks that every [`Region`] lies inside it, that a region maps
//! distinct `(sequence, position, column)` triples to distinct elements, and that no two regions (jobs
//! sharing the buffer, such as the two directions of a bidirectional layer) share an element. Within a
//! job, threads then write distinct sequences (batch chunks) or distinct columns (the gate-column split).

use std::marker::PhantomData;

use super::Fill;
use crate::error::{Error, ErrorKind, Result};

/// A strided region of a buffer: element `(b, p, j)` at `off + b * sb + p * st + j` for `b < batch`,
/// `p < time`, `j < width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub off: usize,
    pub batch: usize,
    pub sb: usize,
    pub time: usize,
    pub st: usize,
    pub width: usize,
}

impl Region {
    /// A sequence region `[batch][time][width]` with the given strides.
    pub(crate) fn seq(off: usize, batch: usize, sb: usize, time: usize, st: usize, width: usize) -> Self {
        Region { off, batch, sb, time, st, width }
    }

    /// A state region `[batch][width]`.
    pub(crate) fn state(off: usize, batch: usize, sb: usize, width: usize) -> Self {
        Region { off, batch, sb, time: 1, st: 0, width }
    }

    /// One past the largest element index, `None` on overflow; 0 for an empty region.
    fn extent(&self) -> Option<usize> {
        extent(self.off, self.batch, self.time, self.sb, self.st, self.width)
    }

    /// Whether the region holds no element.
    fn is_empty(&self) -> bool {
        self.batch == 0 || self.time == 0 || self.width == 0
    }

    /// Same shape and strides, any offset.
    fn same_shape(&self, o: &Region) -> bool {
        Region { off: o.off, ..*self } == *o
    }
}

/// Whether the index map `sum_k i_k * stride_k` over `i_k < count_k` is injective, checked as a mixed
/// radix: sorted by stride, every stride exceeds the largest index the smaller dimensions reach.
/// Sufficient, and exact for the row-major layouts the frameworks use.
fn injective(dims: &mut [(usize, usize)]) -> bool {
    dims.sort_unstable_by_key(|&(count, stride)| (stride, count));
    let mut reach = 0usize; // largest index reached by the dimensions so far
    for &(count, stride) in dims.iter().filter(|d| d.0 > 1) {
        if stride <= reach {
            return false;
        }
        match (count - 1).checked_mul(stride).and_then(|r| r.checked_add(reach)) {
            Some(r) => reach = r,
            None => return false,
        }
    }
    true
}

/// A region of a caller's output buffer, borrowed mutably for `'a` and written by the engine's threads.
/// Made only by [`OutRegion::split`], so its elements are in bounds and belong to this region alone.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutRegion<'a> {
    ptr: *mut f32,
    region: Region,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: the elements of an `OutRegion` belong to it alone (checked by `split`) and live for `'a` (the
// buffer is borrowed mutably for that long). Threads write through `write`/`zero`/`copy`, whose contracts
// make them touch distinct elements (distinct sequences or distinct columns).
unsafe impl Send for OutRegion<'_> {}
unsafe impl Sync for OutRegion<'_> {}

impl<'a> OutRegion<'a> {
    /// Splits `buf` into `N` regions after checking that each lies inside it, that each is injective and
    /// that no two share an element. Regions of more than one job must have the same shape and strides,
    /// at equally spaced offsets (the jobs form one more dimension of a row-major layout).
    ///
    /// # Errors
    /// [`ErrorKind::Internal`] when the regions do not fit or overlap (a bug in the caller: the framework
    /// layers size every buffer before they build regions).
    pub(crate) fn split<const N: usize>(name: &str, buf: &'a mut [f32], regions: [Region; N]) -> Result<[Self; N]> {
        let bad = |what: &str| Err(Error::new(ErrorKind::Internal, format!("{name}: {what}")));
        let len = buf.len();
        for r in &regions {
            match r.extent() {
                Some(e) if e <= len => {}
                _ => return bad(&format!("a region does not fit in the buffer of {len} elements")),
            }
        }
        // No heap here: warm calls allocate nothing.
        let mut offs = [0usize; N];
        let mut live = 0;
        let mut first: Option<&Region> = None;
        for r in regions.iter().filter(|r| !r.is_empty()) {
            if !first.is_none_or(|f| f.same_shape(r)) {
                return bad("regions of different shapes");
            }
            first = first.or(Some(r));
            offs[live] = r.off;
            live += 1;
        }
        if let Some(first) = first {
            let offs = &mut offs[..live];
            offs.sort_unstable();
            let spacing = offs.get(1).map_or(0, |o| o - offs[0]);
            if !offs.windows(2).all(|w| w[1] - w[0] == spacing) {
                return bad("regions unevenly spaced");
            }
            let mut dims = [(first.width, 1), (first.batch, first.sb), (first.time, first.st), (live, spacing)];
            if !injective(&mut dims) {
                return bad("regions overlap");
            }
        }
        let ptr = buf.as_mut_ptr();
        Ok(regions.map(|region| OutRegion { ptr, region, _borrow: PhantomData }))
    }

    /// [`split`](Self::split) of an optional buffer: `None`s when there is none.
    ///
    /// # Errors
    /// As [`split`](Self::split).
    pub(crate) fn split_opt<const N: usize>(
        name: &str,
        buf: Option<&'a mut [f32]>,
        regions: [Region; N],
    ) -> Result<[Option<Self>; N]> {
        Ok(match buf {
            Some(buf) => Self::split(name, buf, regions)?.map(Some),
            None => [None; N],
        })
    }

    /// The region's shape.
    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    #[inline]
    fn at(&self, b: usize, p: usize, col: usize, n: usize) -> usize {
        let r = &self.region;
        debug_assert!(b < r.batch && p < r.time && col + n <= r.width);
        r.off + b * r.sb + p * r.st + col
    }

    /// Writes `src` at `(b, p)`, columns `col..col + src.len()`.
    ///
    /// # Safety
    /// `b < batch`, `p < time`, `col + src.len() <= width`, and no other thread accesses these elements
    /// meanwhile.
    #[inline]
    pub(crate) unsafe fn write(&self, b: usize, p: usize, col: usize, src: &[f32]) {
        let at = self.at(b, p, col, src.len());
        // SAFETY: in the region by the caller's contract, so in the buffer (checked by `split`); `src` is
        // engine scratch, never this borrowed buffer.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(at), src.len()) }
    }

    /// Fills columns `col..col + n` of `(b, p)` with `+0.0`.
    ///
    /// # Safety
    /// As [`write`](Self::write).
    #[inline]
    pub(crate) unsafe fn zero(&self, b: usize, p: usize, col: usize, n: usize) {
        let at = self.at(b, p, col, n);
        // SAFETY: as in `write`; all-zero bits are +0.0.
        unsafe { std::ptr::write_bytes(self.ptr.add(at), 0, n) }
    }

    /// Copies columns `col..col + n` of `(b, from)` to `(b, to)`, `from != to`.
    ///
    /// # Safety
    /// As [`write`](Self::write) for both positions.
    #[inline]
    pub(crate) unsafe fn copy(&self, b: usize, from: usize, to: usize, col: usize, n: usize) {
        debug_assert!(from != to);
        let (src, dst) = (self.at(b, from, col, n), self.at(b, to, col, n));
        // SAFETY: both in the region (caller's contract); distinct positions of an injective region are
        // disjoint.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(src), self.ptr.add(dst), n) }
    }
}

/// The regions of the directions a layer runs: both of `regions`, or the first alone (the second made
/// empty) for one direction.
pub(crate) fn directions(regions: [Region; 2], count: usize) -> [Region; 2] {
    let [first, second] = regions;
    [first, if count > 1 { second } else { Region { batch: 0, ..second } }]
}

/// The sequence output `y` of a job: its region is `[batch][time][H]`, position `p` of sequence `b`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SeqOut<'a> {
    pub out: OutRegion<'a>,
    /// Output position of time `t` is `T - 1 - t` (Keras `go_backwards`) instead of `t`.
    pub mirror: bool,
    pub fill: Fill,
}

/// A state output of a job: its region is `[batch][1][H]`.
pub(crate) type StateOut<'a> = OutRegion<'a>;

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

/// One past the largest element index of a strided `[batch][time]` layout of `width` floats each.
pub(crate) fn extent(off: usize, batch: usize, time: usize, sb: usize, st: usize, width: usize) -> Option<usize> {
    if batch == 0 || time == 0 || width == 0 {
        return Some(0);
    }
    off.checked_add((batch - 1).checked_mul(sb)?)?.checked_add((time - 1).checked_mul(st)?)?.checked_add(width)
}

pub(crate) fn check_extent(name: &str, need: Option<usize>, len: usize) -> Result<()> {
    match need {
        Some(n) if n <= len => Ok(()),
        _ => Err(Error::new(ErrorKind::Internal, format!("{name}: buffer of {len} elements too small for its layout"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_overflow_is_none() {
        assert_eq!(extent(0, usize::MAX, 2, 2, 1, 1), None);
        assert_eq!(extent(0, 2, 3, 12, 4, 4), Some(24));
        assert_eq!(extent(5, 0, 3, 12, 4, 4), Some(0));
    }

    /// The check agrees with brute force: every element written at most once, all inside the buffer.
    #[test]
    fn split_accepts_exactly_the_disjoint_layouts() {
        let brute = |regions: &[Region], len: usize| {
            let mut seen = vec![false; len];
            for r in regions {
                for b in 0..r.batch {
                    for p in 0..r.time {
                        for j in 0..r.width {
                            let at = r.off + b * r.sb + p * r.st + j;
                            if at >= len || seen[at] {
                                return false;
                            }
                            seen[at] = true;
                        }
                    }
                }
            }
            true
        };
        let (t, d, b, h) = (3, 2, 4, 5);
        // The frameworks' layouts: ONNX layout 0 and 1, PyTorch / Keras concat (directions side by side).
        let onnx0 = [Region::seq(0, b, h, t, d * b * h, h), Region::seq(b * h, b, h, t, d * b * h, h)];
        let onnx1 = [Region::seq(0, b, t * d * h, t, d * h, h), Region::seq(h, b, t * d * h, t, d * h, h)];
        let states = [Region::state(0, b, h, h), Region::state(b * h, b, h, h)];
        let len = t * d * b * h;
        for regions in [onnx0, onnx1] {
            assert!(brute(&regions, len));
            let mut buf = vec![0.0; len];
            assert!(OutRegion::split("y", &mut buf, regions).is_ok());
        }
        let mut buf = vec![0.0; d * b * h];
        assert!(OutRegion::split("y_h", &mut buf, states).is_ok());
        // Overlapping, out-of-bounds and self-overlapping regions are refused.
        let mut seed = 0x9e37_79b9_u32;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as usize % n
        };
        let mut agreed = 0;
        for _ in 0..20_000 {
            let r0 = Region::seq(next(6), 1 + next(3), next(12), 1 + next(3), next(12), 1 + next(4));
            let r1 = Region { off: next(30), ..r0 };
            let len = 10 + next(50);
            let mut buf = vec![0.0; len];
            let ok = OutRegion::split("y", &mut buf, [r0, r1]).is_ok();
            let exact = brute(&[r0, r1], len);
            // The check is sufficient (never accepts an overlap) ...
            assert!(!ok || exact, "{r0:?} {r1:?} len {len}");
            agreed += usize::from(ok == exact);
        }
        // ... and accepts most disjoint pairs too (it is exact for nested strides).
        assert!(agreed > 15_000, "{agreed}");
    }
}
