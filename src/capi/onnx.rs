//! The ONNX LSTM operator as a layer kind of the C ABI ([`Kind`] for [`MrnnOnnxLstm`]): its attributes'
//! values (`onnx_args`), its sizes (`OnnxSizes`), its pointer groups, the `sequence_lens` values (step 5)
//! and `dp` (only with peepholes), and the runs of its packed node. Every ONNX function validates and runs
//! through the one path of every kind (module `layer`).
//!
//! A run's inputs (`OnnxInput`) serve the forward, the forward that fills a tape and the backward, whether
//! they are the caller's buffers or a tape's copies of them.
//!
//! The ONNX GRU and RNN kinds (module `gru`) share what is not the LSTM's own: the fields of an attributes
//! struct and their checks (`OnnxFields`, `onnx_values`), the sizes for any gate count (`OnnxSizes` of
//! `OnnxShapes`), the pointer groups and their checks (`onnx_require`, `onnx_extents`,
//! `onnx_check_lengths`; `initial_c`, `p` and `y_c` are NULL for them).

use super::handle::{onnx_attrs_match, Core, MrnnOnnxLstm, OnnxNode};
use super::layer::{Kind, Ptrs, TrainKind};
use super::train::{OnnxRecord, Record};
use super::*;
use crate::frameworks::onnx::{OnnxGrads, OnnxTape, OnnxUpstream};

/// The validated values of an ONNX attributes struct: the Rust attributes (`A`: of the LSTM, GRU or RNN
/// operator), the sizes and the thread count.
#[derive(Debug)]
pub(super) struct OnnxArgs<A = OnnxLstmAttrs> {
    pub(super) attrs: A,
    pub(super) t: usize,
    pub(super) b: usize,
    pub(super) i: usize,
    pub(super) h: usize,
    pub(super) d: usize,
    pub(super) threads: usize,
}

/// The fields of an ONNX attributes struct (`MrnnOnnxLstmAttrs`, `MrnnOnnxGruAttrs`, `MrnnOnnxRnnAttrs`),
/// in their order.
#[derive(Clone, Copy, Debug)]
pub(super) struct OnnxFields<'a> {
    pub(super) sizes: [(&'static str, i64); 4],
    pub(super) direction: i32,
    pub(super) layout: i32,
    /// The operator's flag (`input_forget`, `linear_before_reset`), named; `None`: it has none (RNN).
    pub(super) flag: Option<(&'static str, i32)>,
    pub(super) has_clip: i32,
    pub(super) clip: f32,
    pub(super) num_activations: i32,
    pub(super) activations: &'a [i32],
    pub(super) alpha: &'a [f32],
    pub(super) beta: &'a [f32],
    /// The activations of one direction (LSTM 3, GRU 2, RNN 1).
    pub(super) per_direction: usize,
    pub(super) num_threads: i32,
}

/// An ONNX attributes struct, seen through its [`OnnxFields`].
pub(super) trait OnnxAttrs: Copy {
    fn fields(&self) -> OnnxFields<'_>;
}

impl OnnxAttrs for MrnnOnnxLstmAttrs {
    fn fields(&self) -> OnnxFields<'_> {
        OnnxFields {
            sizes: onnx_sizes(self.seq_length, self.batch_size, self.input_size, self.hidden_size),
            direction: self.direction,
            layout: self.layout,
            flag: Some(("input_forget", self.input_forget)),
            has_clip: self.has_clip,
            clip: self.clip,
            num_activations: self.num_activations,
            activations: &self.activations,
            alpha: &self.activation_alpha,
            beta: &self.activation_beta,
            per_direction: 3,
            num_threads: self.num_threads,
        }
    }
}

/// The four sizes of an ONNX attributes struct, named, in their order.
pub(super) fn onnx_sizes(t: i64, b: i64, i: i64, h: i64) -> [(&'static str, i64); 4] {
    [("seq_length", t), ("batch_size", b), ("input_size", i), ("hidden_size", h)]
}

/// The checked values of [`OnnxFields`].
pub(super) struct OnnxValues {
    pub(super) direction: Direction,
    pub(super) layout: Layout,
    /// The operator's flag (false when it has none).
    pub(super) flag: bool,
    pub(super) clip: Option<f32>,
    pub(super) activations: Vec<Activation>,
    pub(super) dims: [usize; 4],
    pub(super) threads: usize,
}

impl OnnxValues {
    /// The [`OnnxArgs`] of these values with the Rust attributes `attrs`.
    pub(super) fn args<A>(&self, attrs: A) -> OnnxArgs<A> {
        let [t, b, i, h] = self.dims;
        OnnxArgs { attrs, t, b, i, h, d: self.direction.count(), threads: self.threads }
    }
}

/// Step 2 and the size conversions of step 3: every value check on the fields of an ONNX attributes
/// struct, in field order.
pub(super) fn onnx_values(f: &OnnxFields<'_>) -> Result<OnnxValues> {
    layer_sizes(&f.sizes)?;
    let direction = Direction::from_code(f.direction)?;
    let layout = Layout::from_code(f.layout)?;
    let op_flag = match f.flag {
        Some((name, v)) => flag(name, v)?,
        None => false,
    };
    let clip = if flag("has_clip", f.has_clip)? {
        if f.clip.is_nan() || f.clip <= 0.0 {
            return Err(Error::argument(format!("clip = {} must be positive (has_clip = 1)", f.clip)));
        }
        // +inf clips nothing: no clip at all, whatever the kernels do with infinite bounds.
        (f.clip != f32::INFINITY).then_some(f.clip)
    } else {
        None
    };
    let (d, per) = (direction.count(), f.per_direction);
    // As ONNX Runtime: none (the defaults) or exactly `per` per direction.
    let n_act = match usize::try_from(f.num_activations) {
        Ok(n) if n == 0 || n == per * d => n,
        _ => {
            return Err(Error::argument(format!(
                "num_activations = {} with direction {}: expected 0 or {} ({per} per direction)",
                f.num_activations,
                f.direction,
                per * d
            )))
        }
    };
    let activations = (0..n_act)
        .map(|k| {
            Activation::from_code(f.activations[k], f.alpha[k], f.beta[k])
                .map_err(|e| Error::argument(format!("activations[{k}]: {}", e.message())))
        })
        .collect::<Result<Vec<_>>>()?;
    let threads = thread_count(f.num_threads)?;
    let dims = dims(f.sizes)?;
    Ok(OnnxValues { direction, layout, flag: op_flag, clip, activations, dims, threads })
}

/// Step 2 for the ONNX LSTM.
fn onnx_args(a: &MrnnOnnxLstmAttrs) -> Result<OnnxArgs> {
    let v = onnx_values(&a.fields())?;
    let attrs = OnnxLstmAttrs::new(v.dims[3], v.direction)
        .layout(v.layout)
        .clip(v.clip)
        .input_forget(v.flag)
        .activations(v.activations.clone());
    Ok(v.args(attrs))
}

/// The shapes of an ONNX operator's weights: gate blocks `G` per direction (LSTM 4, GRU 3, RNN 1), and
/// the names the overflow messages give them; `p`: the peepholes' (LSTM only).
#[derive(Debug)]
pub(super) struct OnnxShapes {
    pub(super) gates: usize,
    pub(super) w: &'static str,
    pub(super) r: &'static str,
    pub(super) b: &'static str,
    pub(super) p: Option<&'static str>,
}

/// The ONNX LSTM's: `W [D,4H,I]`, `R [D,4H,H]`, `B [D,8H]`, `P [D,3H]`.
const LSTM_SHAPES: OnnxShapes =
    OnnxShapes { gates: 4, w: "W [D,4H,I]", r: "R [D,4H,H]", b: "B [D,8H]", p: Some("P [D,3H]") };

/// The dimensions of an ONNX call and the element counts of its tensors (step 3, checked in this order;
/// the same products in both layouts).
pub(super) struct OnnxSizes {
    t: usize,
    b: usize,
    i: usize,
    x: usize,
    w: usize,
    r: usize,
    bias: usize,
    p: usize,
    state: usize,
    y: usize,
}

impl OnnxSizes {
    /// A run of `B` sequences of `T` steps through a node of sizes `I`, `H`, `D` directions and weights
    /// `shapes` (`T = B = 0`: the weights alone).
    pub(super) fn new(t: usize, b: usize, i: usize, h: usize, d: usize, shapes: &OnnxShapes) -> Result<Self> {
        let g = shapes.gates;
        Ok(OnnxSizes {
            t,
            b,
            i,
            x: checked_product(&[t, b, i], "X [T,B,I]")?,
            w: checked_product(&[d, g, h, i], shapes.w)?,
            r: checked_product(&[d, g, h, h], shapes.r)?,
            bias: checked_product(&[d, 2 * g, h], shapes.b)?,
            p: match shapes.p {
                Some(name) => checked_product(&[d, 3, h], name)?,
                None => 0,
            },
            state: checked_product(&[d, b, h], "state [D,B,H]")?,
            y: checked_product(&[t, d, b, h], "Y [T,D,B,H]")?,
        })
    }

    /// `I`.
    pub(super) fn input(&self) -> usize {
        self.i
    }
}

/// The inputs of a run, as caller pointers: `x` (required), `sequence_lens [B]`, initial states.
#[derive(Clone, Copy)]
pub(super) struct OnnxInputPtrs {
    pub(super) x: *const f32,
    pub(super) sequence_lens: *const i32,
    pub(super) initial_h: *const f32,
    pub(super) initial_c: *const f32,
}

impl OnnxInputPtrs {
    fn extents(&self, n: &OnnxSizes) -> [Option<Extent>; 4] {
        [
            Extent::new("x", self.x, n.x, false),
            Extent::new("sequence_lens", self.sequence_lens, n.b, false),
            Extent::new("initial_h", self.initial_h, n.state, false),
            Extent::new("initial_c", self.initial_c, n.state, false),
        ]
    }

    /// The inputs.
    ///
    /// # Safety
    /// Steps 1 to 4 passed for these pointers with the sizes `n`; each non-NULL one is valid for reading
    /// its size during `'a`, and nothing writes it meanwhile (the caller's contract).
    pub(super) unsafe fn slices<'a>(&self, n: &OnnxSizes) -> Result<OnnxInput<&'a [f32], &'a [i32]>> {
        // SAFETY: each pointer is NULL or was checked aligned and non-wrapping with the very length passed
        // here, which `checked_product` bounds to isize::MAX bytes (`sequence_lens` has `B` 4-byte
        // elements, at most the checked `n.state` since `D, H >= 1`); valid by this function's contract.
        let (x, sequence_lens, initial_h, initial_c) = unsafe {
            (
                required("x", self.x, n.x)?,
                input(self.sequence_lens, n.b),
                input(self.initial_h, n.state),
                input(self.initial_c, n.state),
            )
        };
        Ok(OnnxInput { t: n.t, b: n.b, x, sequence_lens, initial_h, initial_c })
    }
}

/// The weight slices: `W`, `R`, `B`, `P`.
pub(super) type OnnxWeightSlices<'a> = (&'a [f32], &'a [f32], Option<&'a [f32]>, Option<&'a [f32]>);

/// The weights, as caller pointers: `W`, `R` (both required), `B`, `P`.
#[derive(Clone, Copy)]
pub(super) struct OnnxWeightPtrs {
    pub(super) w: *const f32,
    pub(super) r: *const f32,
    pub(super) b: *const f32,
    pub(super) p: *const f32,
}

impl OnnxWeightPtrs {
    fn extents(&self, n: &OnnxSizes) -> [Option<Extent>; 4] {
        [
            Extent::new("w", self.w, n.w, false),
            Extent::new("r", self.r, n.r, false),
            Extent::new("b", self.b, n.bias, false),
            Extent::new("p", self.p, n.p, false),
        ]
    }

    /// The weight slices: `W`, `R`, `B`, `P`.
    ///
    /// # Safety
    /// As [`OnnxInputPtrs::slices`].
    pub(super) unsafe fn slices<'a>(&self, n: &OnnxSizes) -> Result<OnnxWeightSlices<'a>> {
        // SAFETY: as in `OnnxInputPtrs::slices`.
        unsafe {
            Ok((required("w", self.w, n.w)?, required("r", self.r, n.r)?, input(self.b, n.bias), input(self.p, n.p)))
        }
    }

    /// The LSTM node packed from the weights, and whether it has peepholes (`p` given).
    ///
    /// # Safety
    /// As [`OnnxInputPtrs::slices`].
    unsafe fn pack(&self, n: &OnnxSizes, attrs: OnnxLstmAttrs) -> Result<OnnxNode> {
        // SAFETY: forwarded; the slices live for this call only.
        let (w, r, b, p) = unsafe { self.slices(n) }?;
        Ok(OnnxNode { node: OnnxLstm::new(attrs, n.i, w, r, b, p)?, peepholes: p.is_some() })
    }
}

/// The outputs of a run, as caller pointers: `Y`, `Y_h`, `Y_c`.
#[derive(Clone, Copy)]
pub(super) struct OnnxOutputPtrs {
    pub(super) y: *mut f32,
    pub(super) y_h: *mut f32,
    pub(super) y_c: *mut f32,
}

impl OnnxOutputPtrs {
    fn extents(&self, n: &OnnxSizes) -> [Option<Extent>; 3] {
        [
            Extent::new("y", self.y, n.y, true),
            Extent::new("y_h", self.y_h, n.state, true),
            Extent::new("y_c", self.y_c, n.state, true),
        ]
    }

    /// The output slices.
    ///
    /// # Safety
    /// As [`OnnxInputPtrs::slices`], for writes; step 4 proved that no output overlaps another buffer, and
    /// nothing else accesses them during `'a`.
    pub(super) unsafe fn slices<'a>(&self, n: &OnnxSizes) -> OnnxOutputs<'a> {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            OnnxOutputs { y: output(self.y, n.y), y_h: output(self.y_h, n.state), y_c: output(self.y_c, n.state) }
        }
    }
}

/// The upstream gradients and gradient outputs of an ONNX backward, as caller pointers.
#[derive(Clone, Copy)]
pub(super) struct OnnxGradPtrs {
    pub(super) dy: *const f32,
    pub(super) dy_h: *const f32,
    pub(super) dy_c: *const f32,
    pub(super) dx: *mut f32,
    pub(super) dw: *mut f32,
    pub(super) dr: *mut f32,
    pub(super) db: *mut f32,
    pub(super) d_initial_h: *mut f32,
    pub(super) d_initial_c: *mut f32,
    pub(super) dp: *mut f32,
}

impl OnnxGradPtrs {
    /// Whether any gradient output is given.
    pub(super) fn wants(&self) -> bool {
        [self.dx, self.dw, self.dr, self.db, self.d_initial_h, self.d_initial_c, self.dp].iter().any(|p| !p.is_null())
    }

    /// Step 4 for the gradients: the upstream gradients, then the gradient outputs.
    pub(super) fn extents(&self, n: &OnnxSizes) -> [Option<Extent>; 10] {
        [
            Extent::new("dy", self.dy, n.y, false),
            Extent::new("dy_h", self.dy_h, n.state, false),
            Extent::new("dy_c", self.dy_c, n.state, false),
            Extent::new("dx", self.dx, n.x, true),
            Extent::new("dw", self.dw, n.w, true),
            Extent::new("dr", self.dr, n.r, true),
            Extent::new("db", self.db, n.bias, true),
            Extent::new("d_initial_h", self.d_initial_h, n.state, true),
            Extent::new("d_initial_c", self.d_initial_c, n.state, true),
            Extent::new("dp", self.dp, n.p, true),
        ]
    }

    /// The last pointer check: `dp` only for an operator with peepholes (`without` says why there are none).
    fn check_dp(&self, peepholes: bool, without: &str) -> Result<()> {
        if !self.dp.is_null() && !peepholes {
            return Err(Error::argument(format!(
                "dp is given but {without}: an operator without peepholes has no dP (p NULL means no peepholes, \
                 not P = 0); pass dp = NULL"
            )));
        }
        Ok(())
    }

    /// The upstream and gradient slices.
    ///
    /// # Safety
    /// As [`OnnxOutputPtrs::slices`].
    pub(super) unsafe fn slices<'a>(&self, n: &OnnxSizes) -> (OnnxUpstream<'a>, OnnxGrads<'a>) {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            (
                OnnxUpstream {
                    dy: input(self.dy, n.y),
                    dy_h: input(self.dy_h, n.state),
                    dy_c: input(self.dy_c, n.state),
                },
                OnnxGrads {
                    dx: output(self.dx, n.x),
                    dw: output(self.dw, n.w),
                    dr: output(self.dr, n.r),
                    db: output(self.db, n.bias),
                    d_initial_h: output(self.d_initial_h, n.state),
                    d_initial_c: output(self.d_initial_c, n.state),
                    dp: output(self.dp, n.p),
                },
            )
        }
    }
}

/// A run's validated inputs (lengths included): `x`, `sequence_lens` and the initial states as given; the
/// caller's buffers (`X = &[f32]`, `L = &[i32]`) or a tape's copies of them (`Vec`s).
#[derive(Debug)]
pub(super) struct OnnxInput<X, L> {
    pub(super) t: usize,
    pub(super) b: usize,
    pub(super) x: X,
    pub(super) sequence_lens: Option<L>,
    pub(super) initial_h: Option<X>,
    initial_c: Option<X>,
}

impl<X: AsRef<[f32]>, L: AsRef<[i32]>> OnnxInput<X, L> {
    /// The forward pass through a packed node: `forward_in` (nothing at all with every output NULL), or
    /// with a tape `forward_train`, which fills it.
    fn forward(
        &self,
        node: &OnnxLstm,
        out: OnnxOutputs<'_>,
        tape: Option<&mut OnnxTape>,
        threads: usize,
        scratch: &mut Scratch,
    ) -> Result<()> {
        let (x, lens) = (self.x.as_ref(), self.sequence_lens.as_ref().map(|l| l.as_ref()));
        let (h0, c0) = (self.initial_h.as_ref().map(|v| v.as_ref()), self.initial_c.as_ref().map(|v| v.as_ref()));
        let (t, b, ws) = (self.t, self.b, &mut scratch.workspace);
        match tape {
            Some(tape) => node.forward_train(x, t, b, lens, h0, c0, out, tape, threads, ws),
            // Validated; nothing asked for, so nothing is computed.
            None if out.y.is_none() && out.y_h.is_none() && out.y_c.is_none() => return Ok(()),
            None => node.forward_in(x, t, b, lens, h0, c0, out, threads, ws),
        }
        .map(drop)
    }

    /// The gradients of the forward pass that filled `tape` with these inputs.
    fn backward(
        &self,
        node: &OnnxLstm,
        tape: &OnnxTape,
        (up, grads): (OnnxUpstream<'_>, OnnxGrads<'_>),
        threads: usize,
    ) -> Result<()> {
        let (x, lens) = (self.x.as_ref(), self.sequence_lens.as_ref().map(|l| l.as_ref()));
        let (h0, c0) = (self.initial_h.as_ref().map(|v| v.as_ref()), self.initial_c.as_ref().map(|v| v.as_ref()));
        node.backward(x, self.t, self.b, lens, h0, c0, tape, up, grads, threads).map(drop)
    }
}

impl OnnxInput<&[f32], &[i32]> {
    /// The tape's own copies, so that the caller may reuse its buffers once `run_train` returns.
    pub(super) fn copy(&self) -> OnnxInput<Vec<f32>, Vec<i32>> {
        OnnxInput {
            t: self.t,
            b: self.b,
            x: self.x.to_vec(),
            sequence_lens: self.sequence_lens.map(<[i32]>::to_vec),
            initial_h: self.initial_h.map(<[f32]>::to_vec),
            initial_c: self.initial_c.map(<[f32]>::to_vec),
        }
    }
}

impl OnnxInput<Vec<f32>, Vec<i32>> {
    /// Bytes held (the vectors' capacities).
    pub(super) fn bytes(&self) -> usize {
        let floats = self.x.capacity()
            + self.initial_h.as_ref().map_or(0, Vec::capacity)
            + self.initial_c.as_ref().map_or(0, Vec::capacity);
        (floats + self.sequence_lens.as_ref().map_or(0, Vec::capacity)) * 4
    }
}

/// Step 1 for the groups of an ONNX kind: `x`, `w`, `r`.
pub(super) fn onnx_require<K>(p: &Ptrs<K>) -> Result<()>
where
    K: Kind<Input = OnnxInputPtrs, Weights = OnnxWeightPtrs>,
{
    if let Some(input) = &p.input {
        require("x", input.x)?;
    }
    if let Some(w) = &p.weights {
        require("w", w.w)?;
        require("r", w.r)?;
    }
    Ok(())
}

/// Step 4 for the groups of an ONNX kind: `x`, `w`, `r`, `b`, `sequence_lens`, the initial states, `p`,
/// the outputs.
pub(super) fn onnx_extents<K>(p: &Ptrs<K>, n: &OnnxSizes) -> Vec<Option<Extent>>
where
    K: Kind<Input = OnnxInputPtrs, Weights = OnnxWeightPtrs, Output = OnnxOutputPtrs>,
{
    let [x, lens, initial_h, initial_c] = p.input.map_or([None; 4], |i| i.extents(n));
    let [w, r, b, peepholes] = p.weights.map_or([None; 4], |w| w.extents(n));
    let outputs = p.output.map_or([None; 3], |o| o.extents(n));
    [x, w, r, b, lens, initial_h, initial_c, peepholes].into_iter().chain(outputs).collect()
}

/// Step 5 for an ONNX kind: every length in `0..=T`.
///
/// # Safety
/// Steps 1 to 4 passed for these pointers with the sizes `n`; they are valid (the caller's contract).
pub(super) unsafe fn onnx_check_lengths(input: &OnnxInputPtrs, n: &OnnxSizes) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    let lens = unsafe { input.slices(n) }?.sequence_lens.unwrap_or_default();
    if let Some((k, &l)) = lens.iter().enumerate().find(|&(_, &l)| usize::try_from(l).map_or(true, |l| l > n.t)) {
        return Err(Error::argument(format!("sequence_lens[{k}] = {l} is outside 0..={} (seq_length)", n.t)));
    }
    Ok(())
}

impl Kind for MrnnOnnxLstm {
    const NAME: &'static str = "ONNX LSTM";
    const PREFIX: &'static str = "mrnn_onnx_lstm";
    type Attrs = MrnnOnnxLstmAttrs;
    type Args = OnnxArgs;
    type Sizes = OnnxSizes;
    type Packed = OnnxNode;
    type Input = OnnxInputPtrs;
    type Weights = OnnxWeightPtrs;
    type Output = OnnxOutputPtrs;

    fn core(&self) -> &Core<OnnxNode> {
        &self.core
    }

    fn fixed(&self) -> &OnnxArgs {
        &self.args
    }

    fn new_handle(packed: OnnxNode, args: OnnxArgs, attrs: MrnnOnnxLstmAttrs) -> Self {
        MrnnOnnxLstm { core: Core::new(packed), args, attrs }
    }

    /// `x`, `w`, `r`.
    fn require(p: &Ptrs<Self>) -> Result<()> {
        onnx_require(p)
    }

    fn args(a: &MrnnOnnxLstmAttrs, handle: Option<&Self>) -> Result<OnnxArgs> {
        let args = onnx_args(a)?;
        if let Some(handle) = handle {
            let fixed = &handle.args.attrs.activations;
            onnx_attrs_match(&a.fields(), &args.attrs.activations, &handle.attrs.fields(), fixed)?;
        }
        Ok(args)
    }

    fn threads(args: &OnnxArgs) -> usize {
        args.threads
    }

    fn sizes(args: &OnnxArgs, run: bool) -> Result<OnnxSizes> {
        let (t, b) = if run { (args.t, args.b) } else { (0, 0) };
        OnnxSizes::new(t, b, args.i, args.h, args.d, &LSTM_SHAPES)
    }

    /// `x`, `w`, `r`, `b`, `sequence_lens`, the initial states, `p`, the outputs.
    fn extents(p: &Ptrs<Self>, n: &OnnxSizes) -> Vec<Option<Extent>> {
        onnx_extents(p, n)
    }

    /// Every length in `0..=T`.
    unsafe fn check_memory(input: &OnnxInputPtrs, n: &OnnxSizes) -> Result<()> {
        // SAFETY: forwarded from this function's contract.
        unsafe { onnx_check_lengths(input, n) }
    }

    unsafe fn pack(weights: &OnnxWeightPtrs, n: &OnnxSizes, args: &OnnxArgs) -> Result<OnnxNode> {
        // SAFETY: forwarded from this function's contract.
        unsafe { weights.pack(n, args.attrs.clone()) }
    }

    unsafe fn forward(
        packed: &OnnxNode,
        input: &OnnxInputPtrs,
        output: &OnnxOutputPtrs,
        n: &OnnxSizes,
        threads: usize,
        scratch: &mut Scratch,
    ) -> Result<()> {
        // SAFETY: forwarded from this function's contract.
        let (input, out) = unsafe { (input.slices(n)?, output.slices(n)) };
        input.forward(&packed.node, out, None, threads, scratch)
    }
}

impl TrainKind for MrnnOnnxLstm {
    type Grads = OnnxGradPtrs;
    type Tape = OnnxTape;
    type Copies = OnnxInput<Vec<f32>, Vec<i32>>;

    fn tape_sizes(args: &OnnxArgs, copies: &OnnxInput<Vec<f32>, Vec<i32>>) -> Result<OnnxSizes> {
        OnnxSizes::new(copies.t, copies.b, args.i, args.h, args.d, &LSTM_SHAPES)
    }

    /// The upstream gradients, then the gradient outputs.
    fn grad_extents(g: &OnnxGradPtrs, n: &OnnxSizes) -> Vec<Option<Extent>> {
        g.extents(n).to_vec()
    }

    /// `dp` only for an operator with peepholes: the handle's current weights, or the call's `p`.
    fn check_grads(g: &OnnxGradPtrs, weights: Option<&OnnxWeightPtrs>, packed: Option<&OnnxNode>) -> Result<()> {
        match (packed, weights) {
            (Some(packed), _) => g.check_dp(packed.peepholes, "the handle's weights have no peepholes (p was NULL)"),
            (None, Some(w)) => g.check_dp(!w.p.is_null(), "p is NULL"),
            (None, None) => Ok(()),
        }
    }

    fn wants(g: &OnnxGradPtrs) -> bool {
        g.wants()
    }

    unsafe fn forward_train(
        packed: &OnnxNode,
        input: &OnnxInputPtrs,
        output: &OnnxOutputPtrs,
        n: &OnnxSizes,
        threads: usize,
        tape: &mut OnnxTape,
        scratch: &mut Scratch,
    ) -> Result<OnnxInput<Vec<f32>, Vec<i32>>> {
        // SAFETY: forwarded from this function's contract.
        let (input, out) = unsafe { (input.slices(n)?, output.slices(n)) };
        input.forward(&packed.node, out, Some(tape), threads, scratch)?;
        Ok(input.copy())
    }

    unsafe fn backward_once(
        packed: &OnnxNode,
        input: &OnnxInputPtrs,
        grads: &OnnxGradPtrs,
        n: &OnnxSizes,
        threads: usize,
        scratch: &mut Scratch,
    ) -> Result<()> {
        // SAFETY: forwarded from this function's contract.
        let (input, grads) = unsafe { (input.slices(n)?, grads.slices(n)) };
        let mut tape = OnnxTape::new();
        input.forward(&packed.node, OnnxOutputs::default(), Some(&mut tape), threads, scratch)?;
        input.backward(&packed.node, &tape, grads, threads)
    }

    unsafe fn backward(packed: &OnnxNode, record: &OnnxRecord, grads: &OnnxGradPtrs, n: &OnnxSizes) -> Result<()> {
        // SAFETY: forwarded from this function's contract.
        let grads = unsafe { grads.slices(n) };
        record.input.backward(&packed.node, &record.tape, grads, record.threads)
    }

    fn record(run: OnnxRecord) -> Record {
        Record::Onnx(run)
    }

    fn recorded(record: &Record) -> Option<&OnnxRecord> {
        record.onnx()
    }
}
