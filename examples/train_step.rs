//! Times one training step of a workload: the training forward (filling the tapes), the masked loss and
//! its gradient, the backward through time over valid steps, and the Adam update (with the repacking of
//! the updated weights), through [`Sequential::train_step`].
//!
//! ```text
//! cargo run --release --example train_step -- WORKLOAD [--threads N] [--steps N] [--warmup N]
//!     [--budget SECONDS] [--adam keras|pytorch] [--dump-grads PATH]
//! cargo run --release --example train_step -- padding [--threads N] [--steps N]
//! ```
//!
//! Workloads (the data and weights come from a counter-based generator that `bench/compare_train.py`
//! repeats in numpy, so both sides train the same model on the same batch):
//! - `mid_fit`: `[64, 256, 256]`, lengths uniform in 32..=256 (post-padded), `LSTM(256)` with
//!   `return_sequences`, masked MSE against targets `[64, 256, 256]`; the view comes from the lengths.
//! - `seed_fit`: `[15, 362, 24]`, lengths uniform in 90..=362, `Masking(0.0) -> LSTM(128) -> LSTM(64) ->
//!   LSTM(1)` (`return_sequences`) `-> x[:, 5:]` with the mask carried, masked MAE against `[15, 357, 1]`.
//! - `mid_full`, `mid_pad50`: `mid_fit` with every step valid, and with exactly 50 % padding (lengths
//!   65, 67, ..., 191 in a fixed shuffled order).
//! - `gru_mid_fit`, `gru_torch_fit`: `mid_fit` with `GRU(256)` instead of the LSTM: `reset_after=False`
//!   (the ONNX default placement of the reset gate, bias `[3H]`) and `reset_after=True` (PyTorch's and
//!   Keras' default, bias `[2, 3H]`: input row, recurrent row).
//!
//! The first step is the check step (untimed): its loss is printed (`loss`, at the initial weights) and,
//! with `--dump-grads`, the gradients it hands to the optimizer are written to PATH as little-endian
//! `f32`, tensor after tensor in [`Sequential::weights`] order (per layer: kernel `[I, G H]`, recurrent
//! kernel `[H, G H]`, bias, Keras layout; `G` = 4 for the LSTM, 3 for the GRU). Then `--warmup` steps (default 3), then timed
//! steps until `--budget` seconds (default 3) or `--steps` steps (default 20), at least 3. The last line
//! is `RESULT {json}` for the harness: median and min in ms, every step's time, the loss, the process CPU
//! time over wall time during the timed steps, the tape bytes (the recurrent layers' tapes of one step, valid steps
//! only), and checksums of the generated data (so the harness can check it generated the same).
//!
//! `padding` runs `mid_full` and `mid_pad50` steps alternately (side by side on a shared machine) and
//! prints the ratios of their median step times and of their tape bytes.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Instant;

use masked_rnn::{
    Adam, GruWeights, KerasGru, KerasGruOptions, KerasLstm, KerasLstmOptions, Layer, Loss, LstmWeights, MaskValueMode,
    MaskedSeq, Optimizer, Padding, Result, SeqView, Sequential,
};

/// Seed of the generator; `bench/compare_train.py` uses the same.
const SEED: u64 = 20240607;

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Draw `k` of stream `stream`: 64 random bits, a pure function of `(SEED, stream, k)`.
fn draw(stream: u64, k: u64) -> u64 {
    mix(SEED
        .wrapping_add(stream.wrapping_mul(0xd1b5_4a32_d192_ed03))
        .wrapping_add(k.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// `n` values uniform in `[lo, hi)`: `lo + (hi - lo) * u` in `f64` with `u` the top 24 bits of a draw over
/// 2^24, rounded once to `f32` (numpy computes exactly the same).
fn uniform(stream: u64, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n as u64).map(|k| (lo + (hi - lo) * ((draw(stream, k) >> 40) as f64 / 16_777_216.0)) as f32).collect()
}

/// `n` integers uniform in `lo..=hi` (`lo + draw % (hi - lo + 1)`).
fn integers(stream: u64, n: usize, lo: usize, hi: usize) -> Vec<usize> {
    (0..n as u64).map(|k| lo + (draw(stream, k) % (hi - lo + 1) as u64) as usize).collect()
}

/// Streams of the generator.
const LENGTHS: u64 = 1;
const INPUTS: u64 = 2;
const TARGETS: u64 = 3;
/// Layer `l`'s kernel, recurrent kernel and bias use streams `10 + 3l`, `11 + 3l`, `12 + 3l`.
const WEIGHTS: u64 = 10;

/// The recurrent cell of a workload's layers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cell {
    Lstm,
    /// Keras `GRU(reset_after=...)`.
    Gru {
        reset_after: bool,
    },
}

impl Cell {
    /// Gates per unit.
    fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru { .. } => 3,
        }
    }

    /// Rows of the Keras bias (`[G H]`, or `[2, 3H]` for the GRU with `reset_after`).
    fn bias_rows(self) -> usize {
        match self {
            Cell::Gru { reset_after: true } => 2,
            _ => 1,
        }
    }
}

/// A training workload.
struct Workload {
    name: &'static str,
    cell: Cell,
    batch: usize,
    time: usize,
    input: usize,
    units: &'static [usize],
    lengths: Vec<usize>,
    /// `Masking(0.0)` first (else the view comes from the lengths).
    masking: bool,
    /// `x[:, slice:]` after the LSTMs (mask carried); 0 for none.
    slice: usize,
    loss: Loss,
}

impl Workload {
    fn named(name: &str) -> Option<Workload> {
        let mid = |name, lengths| Workload {
            name,
            cell: Cell::Lstm,
            batch: 64,
            time: 256,
            input: 256,
            units: &[256],
            lengths,
            masking: false,
            slice: 0,
            loss: Loss::MaskedMse,
        };
        Some(match name {
            "mid_fit" => mid("mid_fit", integers(LENGTHS, 64, 32, 256)),
            "mid_full" => mid("mid_full", vec![256; 64]),
            // 65, 67, ..., 191: exactly 64 x 128 valid steps; sequence b gets the (37 b mod 64)-th.
            "mid_pad50" => mid("mid_pad50", (0..64).map(|b| 65 + 2 * (37 * b % 64)).collect()),
            "gru_mid_fit" => Workload {
                cell: Cell::Gru { reset_after: false },
                ..mid("gru_mid_fit", integers(LENGTHS, 64, 32, 256))
            },
            "gru_torch_fit" => Workload {
                cell: Cell::Gru { reset_after: true },
                ..mid("gru_torch_fit", integers(LENGTHS, 64, 32, 256))
            },
            "seed_fit" => Workload {
                name: "seed_fit",
                cell: Cell::Lstm,
                batch: 15,
                time: 362,
                input: 24,
                units: &[128, 64, 1],
                lengths: integers(LENGTHS, 15, 90, 362),
                masking: true,
                slice: 5,
                loss: Loss::MaskedMae,
            },
            _ => return None,
        })
    }

    /// Model, input, targets, and checksums of the generated data.
    fn build(&self) -> Result<Built> {
        let (b, t, f) = (self.batch, self.time, self.input);
        let mut sums = vec![("lengths".to_string(), self.lengths.iter().map(|&l| l as u64).sum())];
        // Inputs uniform in [-1, 1) at valid steps, zeros at the padding.
        let mut x = uniform(INPUTS, b * t * f, -1.0, 1.0);
        for (row, v) in x.chunks_exact_mut(f).enumerate() {
            if row % t >= self.lengths[row / t] {
                v.fill(0.0);
            }
        }
        sums.push(("x".into(), bits_sum(&x)));
        let input = if self.masking { MaskedSeq::dense(x, b, t, f)? } else { MaskedSeq::new(x, f, self.view())? };
        let mut model = Sequential::new();
        if self.masking {
            model = model.masking(0.0, MaskValueMode::Ieee);
        }
        let mut n_in = f;
        for (l, &h) in self.units.iter().enumerate() {
            // Uniform in +-1/sqrt(H), as bench/compare.py's forward comparison.
            let s = 1.0 / (h as f64).sqrt();
            let stream = WEIGHTS + 3 * l as u64;
            let g = self.cell.gates();
            let (k, r, bias) = (
                uniform(stream, n_in * g * h, -s, s),
                uniform(stream + 1, h * g * h, -s, s),
                uniform(stream + 2, self.cell.bias_rows() * g * h, -s, s),
            );
            for (name, v) in [("kernel", &k), ("recurrent", &r), ("bias", &bias)] {
                sums.push((format!("{name}{l}"), bits_sum(v)));
            }
            model = match self.cell {
                Cell::Lstm => {
                    let w = LstmWeights::from_keras(n_in, h, &k, &r, Some(&bias))?;
                    model.lstm(KerasLstm::new(w, KerasLstmOptions::default())?)
                }
                Cell::Gru { reset_after } => {
                    let w = GruWeights::from_keras(n_in, h, &k, &r, Some(&bias), reset_after)?;
                    model.gru(KerasGru::new(w, KerasGruOptions::default().reset_after(reset_after))?)
                }
            };
            n_in = h;
        }
        if self.slice > 0 {
            model = model.time_slice(self.slice, None);
        }
        let (t_out, f_out) = model.output_shape(t, f)?;
        // Targets uniform in [-0.5, 0.5) everywhere (the masked loss never reads the padding).
        let y = uniform(TARGETS, b * t_out * f_out, -0.5, 0.5);
        sums.push(("y".into(), bits_sum(&y)));
        Ok(Built { model, x: input, y, sums })
    }

    /// The view of the input's valid steps (what `Masking(0.0)` finds: no valid step is all zeros).
    fn view(&self) -> SeqView {
        SeqView::from_lengths(&self.lengths, self.time, Padding::Post).expect("lengths within the time axis")
    }

    /// Bytes of the recurrent layers' tapes of one training step (every layer here sees the input's view).
    fn tape_bytes(&self, model: &Sequential) -> usize {
        let view = self.view();
        model
            .layers()
            .iter()
            .filter_map(|l| match l {
                Layer::Recurrent(l) => Some(l.tape_bytes(&view)),
                _ => None,
            })
            .sum()
    }
}

/// A workload's model at its initial weights, its input and targets, and checksums of the generated data
/// (name, sum of the `f32` bit patterns).
struct Built {
    model: Sequential,
    x: MaskedSeq,
    y: Vec<f32>,
    sums: Vec<(String, u64)>,
}

/// Sum of the `f32` bit patterns: an exact checksum numpy can repeat.
fn bits_sum(v: &[f32]) -> u64 {
    v.iter().map(|x| x.to_bits() as u64).sum()
}

/// Adam that also keeps a copy of the gradients of the step.
struct Recording<'a> {
    inner: &'a mut Adam,
    grads: Vec<Vec<f32>>,
}

impl Optimizer for Recording<'_> {
    fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]]) -> Result<()> {
        self.grads = grads.iter().map(|g| g.to_vec()).collect();
        self.inner.step(params, grads)
    }
    fn learning_rate(&self) -> f64 {
        self.inner.learning_rate()
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.inner.set_learning_rate(lr)
    }
    fn iterations(&self) -> u64 {
        self.inner.iterations()
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
}

/// Process CPU time (user + system, every thread) in seconds, from `/proc/self/stat`; `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ, 100 on Linux
}

/// Peak resident memory of the process in bytes (`VmHWM`), Linux only.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

struct Args {
    workload: String,
    threads: usize,
    steps: usize,
    warmup: usize,
    budget: f64,
    adam: String,
    dump: Option<String>,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        workload: String::new(),
        threads: 1,
        steps: 20,
        warmup: 3,
        budget: 3.0,
        adam: "keras".into(),
        dump: None,
    };
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--threads" => a.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--steps" => a.steps = value()?.parse().map_err(|e| format!("--steps: {e}"))?,
            "--warmup" => a.warmup = value()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--budget" => a.budget = value()?.parse().map_err(|e| format!("--budget: {e}"))?,
            "--adam" => a.adam = value()?,
            "--dump-grads" => a.dump = Some(value()?),
            w if !w.starts_with('-') && a.workload.is_empty() => a.workload = w.to_string(),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.workload.is_empty() {
        return Err("usage: train_step mid_fit|seed_fit|mid_full|mid_pad50|gru_mid_fit|gru_torch_fit|padding \
                    [--threads N] [--steps N] \
                    [--warmup N] [--budget S] [--adam keras|pytorch] [--dump-grads PATH]"
            .into());
    }
    if !matches!(a.adam.as_str(), "keras" | "pytorch") {
        return Err(format!("--adam: keras or pytorch, not {}", a.adam));
    }
    Ok(a)
}

fn adam(flavor: &str) -> Adam {
    if flavor == "pytorch" {
        Adam::pytorch()
    } else {
        Adam::keras()
    }
}

/// One workload: check step, warm-up, timed steps; prints the RESULT line.
fn run(a: &Args) -> Result<ExitCode> {
    let Some(w) = Workload::named(&a.workload) else {
        eprintln!(
            "unknown workload {} (mid_fit, seed_fit, mid_full, mid_pad50, gru_mid_fit, gru_torch_fit, padding)",
            a.workload
        );
        return Ok(ExitCode::FAILURE);
    };
    let Built { mut model, x, y, sums } = w.build()?;
    let valid = w.view().total_valid();
    let tape = w.tape_bytes(&model);
    let mut opt = adam(&a.adam);
    let t0 = Instant::now();
    let mut rec = Recording { inner: &mut opt, grads: Vec::new() };
    let first = model.train_step(&x, &y, w.loss, &mut rec, a.threads)?;
    let first_ms = t0.elapsed().as_secs_f64() * 1e3;
    if let Some(path) = &a.dump {
        let bytes: Vec<u8> = rec.grads.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).map_err(|e| masked_rnn::Error::argument(format!("{path}: {e}")))?;
    }
    let shapes: Vec<usize> = rec.grads.iter().map(Vec::len).collect();
    for _ in 0..a.warmup {
        model.train_step(&x, &y, w.loss, &mut opt, a.threads)?;
    }
    let mut times = Vec::new();
    let (c0, w0) = (cpu_seconds(), Instant::now());
    while times.len() < a.steps.max(3) && (times.len() < 3 || times.iter().sum::<f64>() < a.budget * 1e3) {
        let t = Instant::now();
        model.train_step(&x, &y, w.loss, &mut opt, a.threads)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let wall = w0.elapsed().as_secs_f64();
    let util = match (c0, cpu_seconds()) {
        (Some(c0), Some(c1)) => format!("{:.3}", (c1 - c0) / wall.max(1e-9)),
        _ => "null".into(),
    };
    let (med, min) = (median(&times), times.iter().copied().fold(f64::INFINITY, f64::min));
    println!(
        "{} [{}, {}, {}] -> {:?} {:?}, {valid} valid steps of {} ({:.1} %), {} thread(s), Adam ({}): loss {:.6} at the \
         initial weights; step median {med:.2} ms, min {min:.2} ms over {} steps (first step {first_ms:.1} ms); \
         tapes {:.1} MiB",
        w.name,
        w.batch,
        w.time,
        w.input,
        w.cell,
        w.units,
        w.batch * w.time,
        100.0 * valid as f64 / (w.batch * w.time) as f64,
        a.threads,
        a.adam,
        first.value,
        times.len(),
        tape as f64 / (1 << 20) as f64
    );
    let mut json = String::new();
    write!(
        json,
        "{{\"workload\":\"{}\",\"threads\":{},\"adam\":\"{}\",\"median_ms\":{med:.6},\"min_ms\":{min:.6},\
         \"runs\":{},\"loss\":{:.17e},\"loss_count\":{},\"valid_steps\":{valid},\"tape_bytes\":{tape},\
         \"first_step_ms\":{first_ms:.3},\"cpu_utilisation\":{util},\"peak_rss_bytes\":{},\"grad_lens\":{:?},\
         \"times_ms\":[{}],\"checksums\":{{{}}}}}",
        w.name,
        a.threads,
        a.adam,
        times.len(),
        first.value,
        first.count,
        peak_rss().map_or("null".into(), |v| v.to_string()),
        shapes,
        times.iter().map(|t| format!("{t:.4}")).collect::<Vec<_>>().join(","),
        sums.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",")
    )
    .expect("write to a String");
    println!("RESULT {json}");
    Ok(ExitCode::SUCCESS)
}

/// `mid_full` and `mid_pad50` side by side: step time and tape bytes, and their ratios.
fn padding(a: &Args) -> Result<ExitCode> {
    let names = ["mid_full", "mid_pad50"];
    let mut runs = Vec::new();
    for name in names {
        let w = Workload::named(name).expect("known workload");
        let Built { model, x, y, .. } = w.build()?;
        let tape = w.tape_bytes(&model);
        runs.push((w, model, x, y, tape, adam(&a.adam), Vec::<f64>::new()));
    }
    for (w, model, x, y, _, opt, _) in runs.iter_mut() {
        for _ in 0..a.warmup.max(1) {
            model.train_step(x, y, w.loss, opt, a.threads)?;
        }
    }
    for _ in 0..a.steps.max(3) {
        for (w, model, x, y, _, opt, times) in runs.iter_mut() {
            let t = Instant::now();
            model.train_step(x, y, w.loss, opt, a.threads)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    for (w, _, _, _, tape, _, times) in &runs {
        println!(
            "{:<10} {:>6} valid steps  step median {:8.2} ms  min {:8.2} ms  ({} steps)  tape {:7.2} MiB",
            w.name,
            w.view().total_valid(),
            median(times),
            times.iter().copied().fold(f64::INFINITY, f64::min),
            times.len(),
            *tape as f64 / (1 << 20) as f64
        );
    }
    let (full, half) = (&runs[0], &runs[1]);
    let time_ratio = median(&half.6) / median(&full.6);
    let tape_ratio = half.4 as f64 / full.4 as f64;
    println!(
        "50 % padding / unpadded, {} thread(s): step time {time_ratio:.3} (medians), tape bytes {tape_ratio:.3}",
        a.threads
    );
    println!(
        "RESULT {{\"threads\":{},\"time_ratio\":{time_ratio:.4},\"tape_ratio\":{tape_ratio:.4},\
         \"full_median_ms\":{:.3},\"pad50_median_ms\":{:.3},\"full_tape_bytes\":{},\"pad50_tape_bytes\":{}}}",
        a.threads,
        median(&full.6),
        median(&half.6),
        full.4,
        half.4
    );
    Ok(ExitCode::SUCCESS)
}

fn main() -> Result<ExitCode> {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if a.workload == "padding" {
        padding(&a)
    } else {
        run(&a)
    }
}
