//! The microkernel seam: everything the scheduler needs from an instruction set, as one function table.
//!
//! A [`Backend`] packs weights into its panel layout (blocks of `nb` lanes, see [`crate::weights`]) and
//! provides two kernels:
//! - `project`: `out[r] = x[rows[r]] · W` for gathered valid input rows (the input projection);
//! - `step`: one recurrent step for the first `m` (active) rows: `z = (proj + h · R) + bias` (Keras'
//!   summation order), then the cell update
//!   (peepholes, clip, activations, `c`, `h`) in the epilogue while the tile is in registers.
//!
//! Every output element is computed by the same sequence of operations whatever the number of rows in the
//! call or the row's position in it, so results do not depend on batch composition or on threading.
//! The scheduler ([`crate::engine`]) only talks to this table; backends for other instruction sets plug in
//! here.

use std::sync::OnceLock;

use crate::cell::CellSpec;
use crate::weights::PackedLstm;

pub(crate) mod portable;

/// Input projection: `out[r][..4 hp] = x[rows[r]..][..I] · W` in the packed gate layout.
pub(crate) type ProjectFn = fn(w: &PackedLstm, x: &[f32], rows: &[usize], out: &mut [f32]);

/// One recurrent step of `m` rows: reads `proj [m][4 hp]`, `h [m][hp]`, updates `c [m][hp]` in place
/// and writes the new hidden state to `h_out [m][hp]`.
pub(crate) type StepFn =
    fn(w: &PackedLstm, cell: &CellSpec, m: usize, proj: &[f32], h: &[f32], c: &mut [f32], h_out: &mut [f32]);

/// A set of kernels for one instruction set.
#[derive(Debug)]
pub struct Backend {
    /// Human-readable name (`"portable"`, ...).
    pub name: &'static str,
    /// Whether the kernels fuse multiply-adds (one rounding). A backend that does not performs exactly the
    /// reference's operations in the same order, so it matches the reference bit for bit.
    pub fused_multiply_add: bool,
    /// Lanes per weight block.
    pub(crate) nb: usize,
    pub(crate) project: ProjectFn,
    pub(crate) step: StepFn,
}

/// The best backend this CPU supports, chosen once and cached.
pub fn selected() -> &'static Backend {
    static SELECTED: OnceLock<&'static Backend> = OnceLock::new();
    SELECTED.get_or_init(|| &portable::BACKEND)
}

/// All backends this CPU can run, best first.
pub fn available() -> Vec<&'static Backend> {
    vec![&portable::BACKEND]
}
