//! Criterion benches of the mask-aware fast path. Run with `cargo bench --bench lstm`.
//!
//! Groups:
//! - `padding_sweep`: one Keras LSTM layer, B=64, T=256, I=64, H=128, 1 thread, with 0, 25, 50 and 75 %
//!   end-padding (varied lengths whose total is exactly `(1 - ratio) * B * T`). Padded steps are never
//!   computed, so the time should fall with the padding: `pad50` should take at most ~0.6 of `pad0`.
//! - `seed_model`: the seed stack `Masking(0.) -> LSTM(128) -> LSTM(64) -> LSTM(1) -> x[:, 5:]` on
//!   `[100, 362, 24]` with lengths uniform in 90..=362, on 1 thread and on all cores.
//! - `layer_sizes`: one layer, every step valid, for a few `(B, T, I, H)`, 1 thread.
//! - `kernels/<backend>/...`: the kernels alone on every backend this CPU has: the input-projection GEMM
//!   (`project_*`), one recurrent step with its fused cell epilogue (`step_*`), and the vectorised
//!   activations (`sigmoid`, `tanh`, elements per second).
//! - `fma_peak/<isa>`: a register-only FMA loop, the machine's peak to compare the kernels with.
//! - `workloads/<backend>/<name>/t<threads>`: the comparison harness's workloads (`bench/compare.py`)
//!   on the selected backend (lower it with `MASKED_RNN_CPU`), 1 and 2 threads, with a reused workspace.
//! - `backward/{all_valid,pad50}`: the backward of one Keras LSTM layer (`KerasLstm::backward` from a tape
//!   filled beforehand, upstream `dy` on every output, gradients of `x`, the kernel, the recurrent kernel
//!   and the bias), B=64, T=256, I=256, H=256, 1 thread, every step valid and with exactly 50 % padding.
//! - `cells/<cell>/t<threads>`: the ONNX operators of every cell (LSTM, GRU with the reset gate before the
//!   matmul (ONNX's default, two phases per step) and after it, simple RNN) forward on `gru_mid` of issue
//!   #9: `[T=256, B=64, I=256]`, lengths uniform in 32..=256, H = 256, 1 and 2 threads. A valid step
//!   costs `2 * G H * (I + H)` FLOPs for `G` gates (4, 3, 3, 1).
//! - `cells_train/<cell>/t<threads>`: one training pass of the GRU (both placements) and RNN operators on
//!   the same data: `forward_train`, then `backward` with `dX`, `dW`, `dR`, `dB` (upstream on every output);
//!   three times the forward's FLOPs.
//! - `train_step/mid_fit/t<threads>`: one training step of `examples/train_step.rs`' `mid_fit` (same data
//!   and weights): `Sequential::train_step` = training forward + masked MSE + backward + Adam (Keras
//!   flavour) + repacking, `[64, 256, 256]`, lengths uniform in 32..=256, LSTM(256), 1 and 2 threads.
//!
//! - `packing/<framework>_<cell>/t<threads>[/recycled]`: a layer built from each framework's weight layout
//!   (ONNX, PyTorch, Keras; LSTM, GRU, RNN), `H = I = 1024`, 1 thread and all cores: the conversion and
//!   packing a C one-shot call does on every call, in bytes of the framework's weights per second; into
//!   fresh memory, and (`recycled`) into the memory of the previous call, as repeated one-shot calls on
//!   one thread do.
//!
//! FLOPs. A valid step of a layer with input size I and hidden size H costs
//! `2 * 4H * (I + H)` floating-point operations in its two products `x·W` and `h·R` (the elementwise
//! cell update, O(H), is ignored). Every benchmark declares `Throughput::Elements(flops per iteration)`,
//! counting valid steps only, so the `thrpt` criterion prints in "elem/s" reads directly as FLOP/s
//! (e.g. `12.3 Gelem/s` = 12.3 GFLOP/s). Each benchmark also prints its FLOPs per iteration to stderr
//! before measuring, so `GFLOP/s = flops / time` can be checked by hand.
//!
//! The backward of a valid step has four such products: `dZ·Rᵀ` (the recurrence, `2 * 4H * H`), `Xᵀ·dZ`
//! and `H_prevᵀ·dZ` (the weight gradients, `2 * 4H * I` and `2 * 4H * H`) and `dZ·Wᵀ` (`dx`, `2 * 4H * I`):
//! `2 * 4H * (2I + 2H)`, twice the forward's; without `dx` (the first layer of a stack, as in `mid_fit`)
//! `2 * 4H * (I + 2H)`. The `backward` and `train_step` groups count these GEMM FLOPs only, so their
//! throughput, set against `fma_peak` of the same run, is a lower bound of the GEMMs' efficiency (the
//! elementwise cell backward, the transposes and the Adam update take time but count nothing).

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use masked_rnn::kernel::{self, microbench::KernelBench};
use masked_rnn::onnx::{Direction, OnnxGru, OnnxGruAttrs, OnnxLstm, OnnxLstmAttrs, OnnxOutputs, OnnxRnn, OnnxRnnAttrs};
use masked_rnn::{
    Activation, Adam, KerasGrads, KerasLstm, KerasLstmOptions, KerasOutputs, KerasTape, KerasUpstream, Loss,
    LstmWeights, MaskValueMode, MaskedSeq, OnnxGrads, OnnxTape, OnnxUpstream, Padding, Schedule, SeqView, Sequential,
    TorchLstm, TorchParams, Workspace,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// FLOPs of one valid step of a layer (see the header).
fn step_flops(input: usize, hidden: usize) -> u64 {
    (2 * 4 * hidden * (input + hidden)) as u64
}

/// A Keras LSTM layer with weights uniform in `±1/sqrt(H)` and Keras' bias (forget gate 1, others 0).
fn layer(rng: &mut StdRng, input: usize, hidden: usize) -> KerasLstm {
    let scale = 1.0 / (hidden as f32).sqrt();
    let mut uniform = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-scale..scale)).collect() };
    let kernel = uniform(input * 4 * hidden);
    let recurrent = uniform(hidden * 4 * hidden);
    let bias: Vec<f32> = (0..4 * hidden).map(|j| if j / hidden == 1 { 1.0 } else { 0.0 }).collect();
    let weights = LstmWeights::from_keras(input, hidden, &kernel, &recurrent, Some(&bias)).expect("weights");
    KerasLstm::new(weights, KerasLstmOptions::default()).expect("layer")
}

/// `[B, T, I]`: uniform values in `[-1, 1)` at the valid steps, zeros at the padding.
fn padded_input(rng: &mut StdRng, lengths: &[usize], time: usize, input: usize) -> Vec<f32> {
    let mut x = vec![0.0; lengths.len() * time * input];
    for (seq, &len) in x.chunks_exact_mut(time * input).zip(lengths) {
        seq[..len * input].iter_mut().for_each(|v| *v = rng.random_range(-1.0..1.0));
    }
    x
}

/// `batch` lengths in `1..=time`, varied around their mean, summing to exactly `total`.
fn lengths_with_total(rng: &mut StdRng, batch: usize, time: usize, total: usize) -> Vec<usize> {
    assert!(batch <= total && total <= batch * time);
    let mean = total / batch;
    // As wide a spread around the mean as the bounds 1 and `time` allow.
    let spread = (mean - 1).min(time - mean);
    let mut lens: Vec<usize> = (0..batch).map(|_| rng.random_range(mean - spread..=mean + spread)).collect();
    // Nudge random sequences by one step until the total is exact.
    let mut sum: usize = lens.iter().sum();
    while sum != total {
        let b = rng.random_range(0..batch);
        if sum < total && lens[b] < time {
            lens[b] += 1;
            sum += 1;
        } else if sum > total && lens[b] > 1 {
            lens[b] -= 1;
            sum -= 1;
        }
    }
    lens
}

type Group<'a> = BenchmarkGroup<'a, WallTime>;

/// Benchmarks one layer on `x` over `view`, 1 thread, with FLOP throughput.
fn bench_layer(group: &mut Group<'_>, name: &str, id: &str, lstm: &KerasLstm, x: &[f32], view: &SeqView) {
    let (input, hidden) = (lstm.weights().input_size(), lstm.units());
    let valid = view.total_valid();
    let flops = valid as u64 * step_flops(input, hidden);
    eprintln!(
        "{name}/{id}: B={} T={} I={input} H={hidden}, {valid} valid steps of {}, {:.3} GFLOP per iteration",
        view.batch(),
        view.time(),
        view.batch() * view.time(),
        flops as f64 * 1e-9
    );
    let mut y = vec![0.0; view.batch() * view.time() * hidden];
    group.throughput(Throughput::Elements(flops));
    group.bench_function(id, |bench| {
        bench.iter(|| {
            let out = KerasOutputs { y: Some(&mut y), ..Default::default() };
            black_box(lstm.forward(black_box(x), view, None, out, 1).expect("forward"))
        })
    });
}

/// A group with the common settings: flat sampling (iterations take milliseconds to a second), 1 s of
/// warm-up, 4 s of measurement.
fn group<'a>(c: &'a mut Criterion, name: &str, samples: usize) -> Group<'a> {
    let mut g = c.benchmark_group(name);
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(samples)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g
}

fn padding_sweep(c: &mut Criterion) {
    let (b, t, i, h) = (64, 256, 64, 128);
    let mut rng = StdRng::seed_from_u64(1);
    let lstm = layer(&mut rng, i, h);
    let mut g = group(c, "padding_sweep", 20);
    for pad in [0, 25, 50, 75] {
        let total = b * t * (100 - pad) / 100;
        let lengths = lengths_with_total(&mut rng, b, t, total);
        let x = padded_input(&mut rng, &lengths, t, i);
        let view = SeqView::from_lengths(&lengths, t, Padding::Post).expect("view");
        bench_layer(&mut g, "padding_sweep", &format!("pad{pad}"), &lstm, &x, &view);
    }
    g.finish();
}

fn seed_model(c: &mut Criterion) {
    let (b, t, f, n) = (100, 362, 24, 5);
    let mut rng = StdRng::seed_from_u64(2);
    let lengths: Vec<usize> = (0..b).map(|_| rng.random_range(90..=t)).collect();
    let x = padded_input(&mut rng, &lengths, t, f);
    let mut model = Sequential::new().masking(0.0, MaskValueMode::Ieee);
    let mut input_size = f;
    let mut flops = 0;
    let valid: usize = lengths.iter().sum();
    for units in [128, 64, 1] {
        model = model.lstm(layer(&mut rng, input_size, units));
        flops += valid as u64 * step_flops(input_size, units);
        input_size = units;
    }
    let model = model.time_slice(n, None);
    let input = MaskedSeq::dense(x, b, t, f).expect("input");

    let mut g = group(c, "seed_model", 10);
    g.throughput(Throughput::Elements(flops));
    for (id, threads) in [("threads1", 1), ("all_cores", 0)] {
        eprintln!(
            "seed_model/{id}: [{b}, {t}, {f}], LSTM 128 -> 64 -> 1, {valid} valid steps of {}, {:.3} GFLOP per iteration",
            b * t,
            flops as f64 * 1e-9
        );
        g.bench_function(id, |bench| {
            bench.iter(|| black_box(model.forward(black_box(&input), threads).expect("forward")))
        });
    }
    g.finish();
}

fn layer_sizes(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let mut g = group(c, "layer_sizes", 20);
    for (b, t, i, h) in [(32, 128, 32, 32), (32, 128, 64, 64), (32, 128, 128, 128), (16, 128, 256, 256)] {
        let lstm = layer(&mut rng, i, h);
        let lengths = vec![t; b];
        let x = padded_input(&mut rng, &lengths, t, i);
        let view = SeqView::full(b, t);
        bench_layer(&mut g, "layer_sizes", &format!("b{b}_t{t}_i{i}_h{h}"), &lstm, &x, &view);
    }
    g.finish();
}

fn kernels(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(4);
    let mut g = group(c, "kernels", 20);
    g.measurement_time(Duration::from_secs(2));
    for backend in kernel::available() {
        for (b, i, h) in [(64, 256, 256), (6, 256, 256), (1, 512, 512)] {
            let weights = layer(&mut rng, i, h).weights().clone();
            let mut kb = KernelBench::new(backend, &weights, b).expect("bench");
            g.throughput(Throughput::Elements(kb.projection_flops() as u64));
            g.bench_function(format!("{}/project_b{b}_i{i}_h{h}", backend.name), |bench| bench.iter(|| kb.project()));
            kb.project();
            g.throughput(Throughput::Elements(kb.step_flops() as u64));
            g.bench_function(format!("{}/step_b{b}_h{h}", backend.name), |bench| {
                bench.iter(|| {
                    kb.step();
                    black_box(kb.output()[0])
                })
            });
        }
        let mut xs: Vec<f32> = (0..65_536).map(|k| (k as f32 - 32_768.0) / 4096.0).collect();
        g.throughput(Throughput::Elements(xs.len() as u64));
        for (name, a) in [("sigmoid", Activation::Sigmoid), ("tanh", Activation::Tanh)] {
            g.bench_function(format!("{}/{name}", backend.name), |bench| {
                bench.iter(|| {
                    // Re-activate the same inputs: copy a fresh ramp in each time.
                    let mut v = xs.clone();
                    backend.activate(a, &mut v);
                    black_box(v[0])
                })
            });
        }
        xs.clear();
    }
    g.finish();
}

/// Independent FMA chains in registers: the machine's peak (16 chains hide the FMA latency).
#[cfg(target_arch = "x86_64")]
fn fma_peak(c: &mut Criterion) {
    use std::arch::x86_64::*;
    const ITERS: usize = 100_000;
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512() -> f32 {
        let mut a = [_mm512_set1_ps(0.0); 16];
        let (x, y) = (_mm512_set1_ps(black_box(0.999_999)), _mm512_set1_ps(black_box(1e-7)));
        for _ in 0..ITERS {
            for v in a.iter_mut() {
                *v = _mm512_fmadd_ps(*v, x, y);
            }
        }
        _mm512_reduce_add_ps(a.iter().fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v)))
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2() -> f32 {
        let mut a = [_mm256_set1_ps(0.0); 12];
        let (x, y) = (_mm256_set1_ps(black_box(0.999_999)), _mm256_set1_ps(black_box(1e-7)));
        for _ in 0..ITERS {
            for v in a.iter_mut() {
                *v = _mm256_fmadd_ps(*v, x, y);
            }
        }
        let mut out = [0.0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), a.iter().fold(_mm256_setzero_ps(), |s, v| _mm256_add_ps(s, *v)));
        out.iter().sum()
    }
    let mut g = group(c, "fma_peak", 20);
    g.measurement_time(Duration::from_secs(2));
    if is_x86_feature_detected!("avx512f") {
        g.throughput(Throughput::Elements((ITERS * 16 * 16 * 2) as u64));
        // SAFETY: AVX-512F detected.
        g.bench_function("avx512", |bench| bench.iter(|| black_box(unsafe { avx512() })));
    } else {
        eprintln!("fma_peak/avx512 SKIPPED: the CPU lacks AVX-512F");
    }
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        g.throughput(Throughput::Elements((ITERS * 12 * 8 * 2) as u64));
        // SAFETY: AVX2 and FMA detected.
        g.bench_function("avx2", |bench| bench.iter(|| black_box(unsafe { avx2() })));
    } else {
        eprintln!("fma_peak/avx2 SKIPPED: the CPU lacks AVX2/FMA");
    }
    g.finish();
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak(_: &mut Criterion) {
    eprintln!("fma_peak SKIPPED: x86-64 only");
}

/// The comparison harness's workloads (bench/compare.py) on the selected backend.
fn workloads(c: &mut Criterion) {
    let backend = kernel::selected().name;
    let mut rng = StdRng::seed_from_u64(5);
    let mut g = group(c, "workloads", 10);
    for (name, b, t, i, h, lo) in
        [("mid", 64, 256, 256, 256, 32), ("mid_full", 64, 256, 256, 256, 256), ("latency", 1, 128, 512, 512, 128)]
    {
        let lstm = layer(&mut rng, i, h);
        let lengths: Vec<usize> = (0..b).map(|_| rng.random_range(lo..=t)).collect();
        let x = padded_input(&mut rng, &lengths, t, i);
        let view = SeqView::from_lengths(&lengths, t, Padding::Post).expect("view");
        g.throughput(Throughput::Elements(view.total_valid() as u64 * step_flops(i, h)));
        let mut y = vec![0.0; b * t * h];
        let mut ws = Workspace::new();
        for threads in [1, 2] {
            g.bench_function(format!("{backend}/{name}/t{threads}"), |bench| {
                bench.iter(|| {
                    let out = KerasOutputs { y: Some(&mut y), ..Default::default() };
                    black_box(lstm.forward_in(&x, &view, None, out, threads, &mut ws).expect("forward"))
                })
            });
        }
    }
    g.finish();
}

/// GEMM FLOPs of the backward of one valid step (see the header); `dx`: whether `dZ·Wᵀ` is computed.
fn backward_step_flops(input: usize, hidden: usize, dx: bool) -> u64 {
    (2 * 4 * hidden * (if dx { 2 * input } else { input } + 2 * hidden)) as u64
}

/// The backward of one layer from a tape filled beforehand, 1 thread.
fn backward(c: &mut Criterion) {
    let (b, t, i, h) = (64, 256, 256, 256);
    let mut rng = StdRng::seed_from_u64(6);
    let lstm = layer(&mut rng, i, h);
    let mut g = group(c, "backward", 10);
    g.measurement_time(Duration::from_secs(20));
    for (id, total) in [("all_valid", b * t), ("pad50", b * t / 2)] {
        let lengths = lengths_with_total(&mut rng, b, t, total);
        let x = padded_input(&mut rng, &lengths, t, i);
        let view = SeqView::from_lengths(&lengths, t, Padding::Post).expect("view");
        let dy: Vec<f32> = (0..b * t * h).map(|_| rng.random_range(-1e-3..1e-3)).collect();
        let flops = view.total_valid() as u64 * backward_step_flops(i, h, true);
        eprintln!(
            "backward/{id}: B={b} T={t} I={i} H={h}, {} valid steps of {}, tape {:.1} MiB, {:.3} GFLOP (GEMMs) per iteration",
            view.total_valid(),
            b * t,
            lstm.tape_bytes(&view) as f64 / (1 << 20) as f64,
            flops as f64 * 1e-9
        );
        g.throughput(Throughput::Elements(flops));
        bench_backward(&mut g, id, &lstm, &x, &view, &dy, 1);
    }
    g.finish();
}

/// Benchmarks `lstm`'s backward on `threads` threads (`dx` and the parameter gradients, from `dy`) through
/// a tape its training forward filled beforehand.
fn bench_backward(
    g: &mut Group<'_>,
    id: &str,
    lstm: &KerasLstm,
    x: &[f32],
    view: &SeqView,
    dy: &[f32],
    threads: usize,
) {
    let (b, t, i, h) = (view.batch(), view.time(), lstm.weights().input_size(), lstm.units());
    let (mut y, mut tape, mut ws) = (vec![0.0; b * t * h], KerasTape::new(), Workspace::new());
    let out = KerasOutputs { y: Some(&mut y), ..Default::default() };
    lstm.forward_train(x, view, None, out, &mut tape, threads, &mut ws).expect("forward_train");
    let (mut dx, mut dk, mut dr, mut db) =
        (vec![0.0; b * t * i], vec![0.0; i * 4 * h], vec![0.0; h * 4 * h], vec![0.0; 4 * h]);
    g.bench_function(id, |bench| {
        bench.iter(|| {
            let grads = KerasGrads {
                dx: Some(&mut dx),
                d_kernel: Some(&mut dk),
                d_recurrent_kernel: Some(&mut dr),
                d_bias: Some(&mut db),
                ..Default::default()
            };
            let up = KerasUpstream { dy: Some(dy), ..Default::default() };
            black_box(lstm.backward(x, view, None, &tape, up, grads, threads).expect("backward"))
        })
    });
}

/// The backward of a small batch of a large layer (2 sequences of 128 steps, I = H = 512) on 2 threads,
/// by batch chunks (a thread per sequence) and by gate columns (both threads on every step, a barrier
/// after each): what the backward's column split is for.
fn backward_schedules(c: &mut Criterion) {
    let (b, t, i, h) = (2, 128, 512, 512);
    let mut rng = StdRng::seed_from_u64(8);
    let base = layer(&mut rng, i, h);
    let mut g = group(c, "backward_schedules", 10);
    g.measurement_time(Duration::from_secs(10));
    let lengths = [t, t - 20];
    let x = padded_input(&mut rng, &lengths, t, i);
    let view = SeqView::from_lengths(&lengths, t, Padding::Post).expect("view");
    let dy: Vec<f32> = (0..b * t * h).map(|_| rng.random_range(-1e-3..1e-3)).collect();
    g.throughput(Throughput::Elements(view.total_valid() as u64 * backward_step_flops(i, h, true)));
    for (id, schedule) in [("batch_chunks", Schedule::BatchChunks), ("gate_columns", Schedule::GateColumns)] {
        let lstm = base.clone().with_schedule(schedule);
        bench_backward(&mut g, &format!("b2_h512/t2/{id}"), &lstm, &x, &view, &dy, 2);
    }
    g.finish();
}

/// The backward's GEMMs on their own, on mid_fit's shapes (I = H = 256, 8,725 valid rows; 64 rows per
/// `dZ·Rᵀ` step), per backend, 1 thread: the weight gradient `Xᵀ·dZ` (with the bias sums), `dZ·Wᵀ` (dx)
/// and `dZ·Rᵀ` (the recurrence's GEMM, without the fused cell backward). Compare with `fma_peak`.
fn backward_gemms(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(7);
    let (i, h) = (256, 256);
    let w = layer(&mut rng, i, h).weights().clone();
    let mut g = group(c, "backward_gemms", 10);
    g.measurement_time(Duration::from_secs(4));
    for backend in kernel::available() {
        let mut big = KernelBench::new(backend, &w, 8725).expect("bench");
        g.throughput(Throughput::Elements(big.backward_gemm_flops(false) as u64));
        g.bench_function(format!("{}/weight_grad", backend.name), |bench| {
            bench.iter(|| {
                big.weight_grad();
                black_box(big.grad()[0])
            })
        });
        g.bench_function(format!("{}/dx", backend.name), |bench| {
            bench.iter(|| {
                big.backward_gemm(false).expect("dx");
                black_box(big.grad()[0])
            })
        });
        let mut step = KernelBench::new(backend, &w, 64).expect("bench");
        g.throughput(Throughput::Elements(step.backward_gemm_flops(true) as u64));
        g.bench_function(format!("{}/dh_step_b64", backend.name), |bench| {
            bench.iter(|| {
                step.backward_gemm(true).expect("dh");
                black_box(step.grad()[0])
            })
        });
    }
    g.finish();
}

/// `examples/train_step.rs`' generator (a counter-based SplitMix64; `bench/compare_train.py` repeats it):
/// `n` values of stream `stream` uniform in `[lo, hi)`.
fn shared_uniform(stream: u64, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n as u64).map(|k| (lo + (hi - lo) * ((shared_draw(stream, k) >> 40) as f64 / 16_777_216.0)) as f32).collect()
}

fn shared_draw(stream: u64, k: u64) -> u64 {
    let mut z = 20240607u64
        .wrapping_add(stream.wrapping_mul(0xd1b5_4a32_d192_ed03))
        .wrapping_add(k.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `mid_fit`'s training step, as `examples/train_step.rs mid_fit` runs it.
fn train_step(c: &mut Criterion) {
    let (b, t, i, h) = (64, 256, 256, 256);
    let lengths: Vec<usize> = (0..b as u64).map(|k| 32 + (shared_draw(1, k) % 225) as usize).collect();
    let mut x = shared_uniform(2, b * t * i, -1.0, 1.0);
    for (row, v) in x.chunks_exact_mut(i).enumerate() {
        if row % t >= lengths[row / t] {
            v.fill(0.0);
        }
    }
    let view = SeqView::from_lengths(&lengths, t, Padding::Post).expect("view");
    let valid = view.total_valid() as u64;
    let x = MaskedSeq::new(x, i, view).expect("input");
    let s = 1.0 / (h as f64).sqrt();
    let weights = LstmWeights::from_keras(
        i,
        h,
        &shared_uniform(10, i * 4 * h, -s, s),
        &shared_uniform(11, h * 4 * h, -s, s),
        Some(&shared_uniform(12, 4 * h, -s, s)),
    )
    .expect("weights");
    let y = shared_uniform(3, b * t * h, -0.5, 0.5);
    let flops = valid * (step_flops(i, h) + backward_step_flops(i, h, false));
    let mut g = group(c, "train_step", 10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(flops));
    for threads in [1, 2] {
        eprintln!(
            "train_step/mid_fit/t{threads}: [{b}, {t}, {i}] -> LSTM({h}), {valid} valid steps of {}, masked MSE, \
             Adam; {:.3} GFLOP (GEMMs: forward + backward without dx) per iteration",
            b * t,
            flops as f64 * 1e-9
        );
        let mut model =
            Sequential::new().lstm(KerasLstm::new(weights.clone(), KerasLstmOptions::default()).expect("layer"));
        let mut adam = Adam::keras();
        g.bench_function(format!("mid_fit/t{threads}"), |bench| {
            bench.iter(|| black_box(model.train_step(&x, &y, Loss::MaskedMse, &mut adam, threads).expect("train_step")))
        });
    }
    g.finish();
}

/// Weight conversion and packing: a layer built from each framework's layout (ONNX `W [G H, I]`,
/// PyTorch `weight_ih [G H, I]` (a one-layer `TorchLstm`): transposed and gate-reordered; Keras
/// `kernel [I, G H]`: packed as it is), every cell, `H = I = 1024`, 1 thread and all cores, as a C
/// one-shot call does on every call.
/// Throughput in bytes of the framework's weights (`W`, `R` and the biases) per second.
fn packing(c: &mut Criterion) {
    let (i, h) = (1024usize, 1024usize);
    let mut rng = StdRng::seed_from_u64(11);
    let mut w = |n: usize| (0..n).map(|_| rng.random_range(-0.03f32..0.03)).collect::<Vec<f32>>();
    let (w4, r4, b4) = (w(4 * h * i), w(4 * h * h), w(8 * h));
    let (w3, r3, b3) = (w(3 * h * i), w(3 * h * h), w(6 * h));
    let (w1, r1, b1) = (w(h * i), w(h * h), w(2 * h));
    let bytes = |g: usize| (4 * g * h * (i + h + 2)) as u64;
    let mut g = group(c, "packing", 20);
    for threads in [1, 0] {
        let t = if threads == 0 { "all".to_string() } else { threads.to_string() };
        let mut run = |name: &str, gates: usize, f: &dyn Fn()| {
            g.throughput(Throughput::Bytes(bytes(gates)));
            g.bench_function(format!("{name}/t{t}"), |bench| {
                bench.iter(|| kernel::microbench::with_pack_threads(threads, f))
            });
            // As a one-shot C call repeated on one thread packs: into the previous call's memory.
            g.bench_function(format!("{name}/t{t}/recycled"), |bench| {
                bench.iter(|| {
                    kernel::microbench::with_recycled_panels(|| kernel::microbench::with_pack_threads(threads, f))
                })
            });
        };
        run("onnx_lstm", 4, &|| {
            let a = OnnxLstmAttrs::new(h, Direction::Forward);
            black_box(OnnxLstm::new(a, i, &w4, &r4, Some(&b4), None).unwrap());
        });
        run("onnx_gru", 3, &|| {
            let a = OnnxGruAttrs::new(h, Direction::Forward);
            black_box(OnnxGru::new(a, i, &w3, &r3, Some(&b3)).unwrap());
        });
        run("onnx_rnn", 1, &|| {
            let a = OnnxRnnAttrs::new(h, Direction::Forward);
            black_box(OnnxRnn::new(a, i, &w1, &r1, Some(&b1)).unwrap());
        });
        run("pytorch_lstm", 4, &|| {
            let p = TorchParams {
                weight_ih: &w4,
                weight_hh: &r4,
                bias_ih: Some(&b4[..4 * h]),
                bias_hh: Some(&b4[4 * h..]),
            };
            black_box(TorchLstm::new(i, h, 1, false, &[p]).unwrap());
        });
        run("keras_lstm", 4, &|| {
            let o = KerasLstmOptions::default();
            black_box(KerasLstm::from_slices(i, h, &w4, &r4, Some(&b4[..4 * h]), o).unwrap());
        });
    }
    g.finish();
}

/// seed_fit's first layer at the batch sizes its recurrence runs (15 sequences, on average ~10 still
/// active): one forward step (GEMM and fused cell update) and one backward `dZ·Rᵀ` GEMM, `H = 128`.
fn small_batch_steps(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(8);
    let w = layer(&mut rng, 128, 128).weights().clone();
    let mut g = group(c, "small_batch_steps", 20);
    g.measurement_time(Duration::from_secs(2));
    for backend in kernel::available() {
        for b in [4, 10, 15] {
            let mut kb = KernelBench::new(backend, &w, b).expect("bench");
            kb.project();
            g.throughput(Throughput::Elements(kb.step_flops() as u64));
            g.bench_function(format!("{}/step_b{b}_h128", backend.name), |bench| {
                bench.iter(|| {
                    kb.step();
                    black_box(kb.output()[0])
                })
            });
            g.bench_function(format!("{}/dh_b{b}_h128", backend.name), |bench| {
                bench.iter(|| {
                    kb.backward_gemm(true).expect("dh");
                    black_box(kb.grad()[0])
                })
            });
        }
    }
    g.finish();
}

/// The ONNX operators of every cell on `gru_mid` (see the header).
fn cells(c: &mut Criterion) {
    let (t, b, i, h) = (256, 64, 256, 256);
    let mut rng = StdRng::seed_from_u64(9);
    let lens: Vec<i32> = (0..b).map(|_| rng.random_range(32..=t as i32)).collect();
    let valid: u64 = lens.iter().map(|&l| l as u64).sum();
    let x: Vec<f32> = (0..t * b * i).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut weights = |g: usize| -> [Vec<f32>; 3] {
        let s = 1.0 / (h as f32).sqrt();
        [g * h * i, g * h * h, 2 * g * h].map(|n| (0..n).map(|_| rng.random_range(-s..s)).collect())
    };
    type Forward = Box<dyn Fn(&mut [f32], &mut Workspace, usize)>;
    let mut runs: Vec<(&str, usize, Forward)> = Vec::new();
    let [w, r, bias] = weights(4);
    let lstm = OnnxLstm::new(OnnxLstmAttrs::new(h, Direction::Forward), i, &w, &r, Some(&bias), None).expect("lstm");
    let (x1, l1) = (x.clone(), lens.clone());
    runs.push((
        "lstm",
        4,
        Box::new(move |y, ws, threads| {
            let out = OnnxOutputs { y: Some(y), ..Default::default() };
            black_box(lstm.forward_in(&x1, t, b, Some(&l1), None, None, out, threads, ws).expect("forward"));
        }),
    ));
    for (name, lbr) in [("gru_reset_before", false), ("gru_reset_after", true)] {
        let [w, r, bias] = weights(3);
        let attrs = OnnxGruAttrs::new(h, Direction::Forward).linear_before_reset(lbr);
        let gru = OnnxGru::new(attrs, i, &w, &r, Some(&bias)).expect("gru");
        let (x1, l1) = (x.clone(), lens.clone());
        runs.push((
            name,
            3,
            Box::new(move |y, ws, threads| {
                let out = OnnxOutputs { y: Some(y), ..Default::default() };
                black_box(gru.forward_in(&x1, t, b, Some(&l1), None, out, threads, ws).expect("forward"));
            }),
        ));
    }
    let [w, r, bias] = weights(1);
    let rnn = OnnxRnn::new(OnnxRnnAttrs::new(h, Direction::Forward), i, &w, &r, Some(&bias)).expect("rnn");
    runs.push((
        "rnn",
        1,
        Box::new(move |y, ws, threads| {
            let out = OnnxOutputs { y: Some(y), ..Default::default() };
            black_box(rnn.forward_in(&x, t, b, Some(&lens), None, out, threads, ws).expect("forward"));
        }),
    ));
    let mut g = group(c, "cells", 10);
    let mut y = vec![0.0; t * b * h];
    for (name, gates, run) in &runs {
        g.throughput(Throughput::Elements(valid * 2 * (*gates * h * (i + h)) as u64));
        let mut ws = Workspace::new();
        for threads in [1, 2] {
            g.bench_function(format!("{name}/t{threads}"), |bench| bench.iter(|| run(&mut y, &mut ws, threads)));
        }
    }
    g.finish();
}

/// The gradient buffers `[dx, dw, dr, db]` as an operator's gradient outputs.
fn grads(g: &mut [Vec<f32>; 4]) -> OnnxGrads<'_> {
    let [dx, dw, dr, db] = g;
    OnnxGrads { dx: Some(dx), dw: Some(dw), dr: Some(dr), db: Some(db), ..Default::default() }
}

/// `cells_train/<cell>/t<threads>`: one training pass (forward_train, then the backward with dX, dW, dR and
/// dB, upstream on every output) of each ONNX operator on the `cells` data.
fn cells_train(c: &mut Criterion) {
    let (t, b, i, h) = (256, 64, 256, 256);
    let mut rng = StdRng::seed_from_u64(9);
    let lens: Vec<i32> = (0..b).map(|_| rng.random_range(32..=t as i32)).collect();
    let valid: u64 = lens.iter().map(|&l| l as u64).sum();
    let x: Vec<f32> = (0..t * b * i).map(|_| rng.random_range(-1.0..1.0)).collect();
    let dy: Vec<f32> = (0..t * b * h).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut weights = |g: usize| -> [Vec<f32>; 3] {
        let s = 1.0 / (h as f32).sqrt();
        [g * h * i, g * h * h, 2 * g * h].map(|n| (0..n).map(|_| rng.random_range(-s..s)).collect())
    };
    /// A training pass into the gradient buffers `[dx, dw, dr, db]`.
    type Train = Box<dyn Fn(&mut OnnxTape, &mut Workspace, &mut [Vec<f32>; 4], usize)>;
    let mut runs: Vec<(&str, usize, Train)> = Vec::new();
    for (name, lbr) in [("gru_reset_before", false), ("gru_reset_after", true)] {
        let [w, r, bias] = weights(3);
        let attrs = OnnxGruAttrs::new(h, Direction::Forward).linear_before_reset(lbr);
        let gru = OnnxGru::new(attrs, i, &w, &r, Some(&bias)).expect("gru");
        let (x1, l1, d1) = (x.clone(), lens.clone(), dy.clone());
        runs.push((
            name,
            3,
            Box::new(move |tape, ws, g, threads| {
                let out = OnnxOutputs::default();
                gru.forward_train(&x1, t, b, Some(&l1), None, out, tape, threads, ws).expect("forward");
                let up = OnnxUpstream { dy: Some(&d1), ..Default::default() };
                black_box(gru.backward(&x1, t, b, Some(&l1), None, tape, up, grads(g), threads).expect("backward"));
            }),
        ));
    }
    let [w, r, bias] = weights(1);
    let rnn = OnnxRnn::new(OnnxRnnAttrs::new(h, Direction::Forward), i, &w, &r, Some(&bias)).expect("rnn");
    runs.push((
        "rnn",
        1,
        Box::new(move |tape, ws, g, threads| {
            let out = OnnxOutputs::default();
            rnn.forward_train(&x, t, b, Some(&lens), None, out, tape, threads, ws).expect("forward");
            let up = OnnxUpstream { dy: Some(&dy), ..Default::default() };
            black_box(rnn.backward(&x, t, b, Some(&lens), None, tape, up, grads(g), threads).expect("backward"));
        }),
    ));
    let mut g = group(c, "cells_train", 10);
    for (name, gates, run) in &runs {
        // Forward and backward GEMMs: three times the forward's.
        g.throughput(Throughput::Elements(valid * 6 * (*gates * h * (i + h)) as u64));
        let (mut tape, mut ws) = (OnnxTape::new(), Workspace::new());
        let mut bufs = [t * b * i, gates * h * i, gates * h * h, 2 * gates * h].map(|n| vec![0.0f32; n]);
        for threads in [1, 2] {
            g.bench_function(format!("{name}/t{threads}"), |bench| {
                bench.iter(|| run(&mut tape, &mut ws, &mut bufs, threads))
            });
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    packing,
    cells,
    cells_train,
    padding_sweep,
    seed_model,
    layer_sizes,
    kernels,
    fma_peak,
    workloads,
    backward,
    backward_schedules,
    backward_gemms,
    small_batch_steps,
    train_step
);
criterion_main!(benches);
