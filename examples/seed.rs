//! The seed model: the Keras stack whose loss silently counted padding, rebuilt with masked-rnn.
//!
//! ```text
//! Masking(0.) -> LSTM(128, return_sequences) -> LSTM(64, rs) -> LSTM(1, rs) -> Lambda(x[:, 5:])
//! ```
//! on `x [100, 362, 24]`, end-padded with zeros, against targets `[100, 357, 1]`. In Keras the `Lambda`
//! dropped the mask, so the loss averaged over padding too. Here the time slice carries the mask, the loss
//! counts valid steps only, and the LSTMs never compute a padded step.
//!
//! The example prints, in order:
//! 1. the data: how much of the batch is padding;
//! 2. the loss Keras printed (mask dropped) against the masked loss, checked by a plain loop;
//! 3. NaN padding: Keras' `Masking(0.)` turns it into a NaN loss; NaN-aware masking recovers the exact loss;
//! 4. timing: the fast path against the reference, which computes every step as Keras does;
//! 5. training (Keras' `fit`: Adam, MAE, batch 15) with the mask carried, with it dropped (the seed's bug)
//!    and on NaN padding, each measured on the valid steps of held-out sequences, and the step time.
//!
//! Run with `cargo run --release --example seed`. It exits with a nonzero status if a check fails.

use std::fmt::Display;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use masked_rnn::{
    kernel, masked_mae, unmasked_mae, Adam, FitOptions, KerasLstm, KerasLstmOptions, Loss, LstmWeights, MaskValueMode,
    MaskedSeq, Result, Sequential,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Batch, padded time steps, features.
const B: usize = 100;
const T: usize = 362;
const F: usize = 24;
/// Sequence lengths are uniform in `MIN_LEN..=T`.
const MIN_LEN: usize = 90;
/// The `Lambda` keeps steps `N..`.
const N: usize = 5;
/// Units of the three LSTM layers.
const UNITS: [usize; 3] = [128, 64, 1];
/// Fast-path timings report the best of this many runs.
const FAST_RUNS: usize = 10;
/// Above this (estimated) reference time, the reference comparison uses the first `SUBSET` sequences.
const REFERENCE_BUDGET: Duration = Duration::from_secs(20);
const SUBSET: usize = 10;

fn main() -> Result<ExitCode> {
    let mut rng = StdRng::seed_from_u64(2024);
    let mut ok = true;

    // ---- The data -------------------------------------------------------------------------------------
    // Lengths uniform in MIN_LEN..=T; valid steps uniform in [-1, 1), padding at the end.
    let lengths: Vec<usize> = (0..B).map(|_| rng.random_range(MIN_LEN..=T)).collect();
    let x_zero = padded_batch(&mut rng, &lengths, 0.0);
    // The same values, padded with NaN instead of zeros.
    let x_nan: Vec<f32> = x_zero
        .chunks_exact(F)
        .enumerate()
        .flat_map(|(row, v)| if row % T < lengths[row / T] { v.to_vec() } else { vec![f32::NAN; F] })
        .collect();
    // Targets for x[:, N:], padded like the inputs: random at valid steps, 0.0 past each length.
    let targets: Vec<f32> = (0..B * (T - N))
        .map(|k| if N + k % (T - N) < lengths[k / (T - N)] { rng.random_range(-1.0..1.0) } else { 0.0 })
        .collect();

    // ---- The model ------------------------------------------------------------------------------------
    let lstms = keras_lstms(&mut rng)?;
    let model = stack(0.0, MaskValueMode::Ieee, &lstms);

    let backend = kernel::selected();
    let fma = if backend.fused_multiply_add { "fused multiply-add" } else { "no FMA" };
    println!("masked-rnn seed model: Masking(0.0) -> LSTM(128) -> LSTM(64) -> LSTM(1) -> x[:, {N}:]");
    println!("backend: {} ({fma}), {} threads", backend.name, rayon::current_num_threads());

    // The raw tensor, as Keras receives it: the Masking layer derives the mask from the values.
    let input = MaskedSeq::dense(x_zero.clone(), B, T, F)?;
    let (out, stats) = model.forward(&input, 0)?;

    // ---- 1. Data --------------------------------------------------------------------------------------
    let valid: usize = lengths.iter().sum();
    let all = B * T;
    let mean = valid as f64 / B as f64;
    let (lo, hi) = (lengths.iter().min().unwrap_or(&0), lengths.iter().max().unwrap_or(&0));
    let (sliced_valid, sliced_all) = (out.view().total_valid(), out.batch() * out.time());
    println!("\n1. Data");
    row("x [batch, time, features]", format!("{B} x {T} x {F}"), "end-padded with 0.0");
    row("sequence lengths", format!("{lo} ..= {hi}"), format!("uniform in {MIN_LEN}..={T}, mean {mean:.1}"));
    row("valid steps", thousands(valid), format!("of {} ({:.1} % padding)", thousands(all), percent(all - valid, all)));
    row(
        format!("valid steps after x[:, {N}:]"),
        thousands(sliced_valid),
        format!("of {} ({:.1} % padding)", thousands(sliced_all), percent(sliced_all - sliced_valid, sliced_all)),
    );

    // ---- 2. Loss --------------------------------------------------------------------------------------
    // Keras' Lambda without `mask=` passes every step on as valid: that is `drop_mask`.
    let keras = unmasked_mae(&out.drop_mask(), &targets)?;
    let masked = masked_mae(&out, &targets)?;
    // The masked MAE again, by hand: a plain loop over the output's mask.
    let by_hand = {
        let (mask, y, f) = (out.view().to_mask(), out.to_vec(), out.features());
        let (mut sum, mut count) = (0.0f64, 0usize);
        for (step, _) in mask.iter().enumerate().filter(|(_, &valid)| valid) {
            let per_feature = (0..f).map(|j| (y[step * f + j] as f64 - targets[step * f + j] as f64).abs());
            sum += per_feature.sum::<f64>() / f as f64;
            count += 1;
        }
        sum / count as f64
    };
    let diff = (masked.value - by_hand).abs();
    // What the padded steps alone contribute to Keras' number.
    let padding_only =
        (keras.value * keras.count as f64 - masked.value * masked.count as f64) / (keras.count - masked.count) as f64;
    println!("\n2. Loss: MAE against targets [{B}, {}, 1] (random, zero-padded)", T - N);
    row(
        "Keras, mask dropped by Lambda",
        format!("{:.6}", keras.value),
        format!("over all {} steps", thousands(keras.count)),
    );
    row(
        "masked-rnn, mask carried",
        format!("{:.6}", masked.value),
        format!("over the {} valid steps", thousands(masked.count)),
    );
    row("masked MAE by a plain loop", format!("{by_hand:.6}"), format!("|difference| {diff:.1e}"));
    row("(padded steps alone)", format!("{padding_only:.6}"), "repeated last outputs vs zero padding");
    if diff > 1e-9 * by_hand.abs() {
        println!("   FAILED: the library's masked loss differs from the plain loop");
        ok = false;
    }

    // ---- 3. NaN padding -------------------------------------------------------------------------------
    let nan_input = MaskedSeq::dense(x_nan.clone(), B, T, F)?;
    let (nan_out, _) = model.forward(&nan_input, 0)?;
    let nan_loss = masked_mae(&nan_out, &targets)?;
    let nan_outputs = nan_out.to_vec().iter().filter(|v| v.is_nan()).count();
    let nan_model = stack(f32::NAN, MaskValueMode::NanAware, &lstms);
    let (aware_out, _) = nan_model.forward(&nan_input, 0)?;
    let aware = masked_mae(&aware_out, &targets)?;
    let bitwise = aware.value.to_bits() == masked.value.to_bits();
    println!("\n3. NaN padding: the same x, padded with NaN");
    row(
        "Masking(0.0), IEEE",
        format!("{:.6}", nan_loss.value),
        format!("{} of {} outputs are NaN", thousands(nan_outputs), thousands(nan_out.to_vec().len())),
    );
    row("", "", "(NaN != 0.0: NaN rows count as valid and feed NaN to the LSTM)");
    row(
        "Masking(NaN), NaN-aware",
        format!("{:.6}", aware.value),
        format!("over {} valid steps", thousands(aware.count)),
    );
    row(
        "zero padding, masked (section 2)",
        format!("{:.6}", masked.value),
        format!("bitwise equal: {}", yes_no(bitwise)),
    );
    if !bitwise {
        println!("   FAILED: NaN-aware masking should reproduce the zero-padded loss exactly");
        ok = false;
    }

    // ---- 4. Time --------------------------------------------------------------------------------------
    let (fast_all, _) = best_of(FAST_RUNS, || model.forward(&input, 0))?;
    let (fast_one, _) = best_of(FAST_RUNS, || model.forward(&input, 1))?;

    // The reference computes every step. Time it on the first SUBSET sequences, and on the whole batch
    // only if that is expected to fit the budget.
    let sub_input = MaskedSeq::dense(x_zero[..SUBSET * T * F].to_vec(), SUBSET, T, F)?;
    let (ref_sub_time, ref_sub) = timed(|| model.forward_reference(&sub_input))?;
    let estimate = ref_sub_time.mul_f64(B as f64 / SUBSET as f64);
    let (rows, ref_time, reference, fast_time, fast, fast_stats) = if estimate <= REFERENCE_BUDGET {
        let (t, r) = timed(|| model.forward_reference(&input))?;
        (B, t, r, fast_one, out.clone(), stats)
    } else {
        let (t, (o, s)) = best_of(FAST_RUNS, || model.forward(&sub_input, 1))?;
        (SUBSET, ref_sub_time, ref_sub, t, o, s)
    };
    let max_diff = max_abs_diff(&fast.to_vec(), &reference.to_vec());
    let all_steps = UNITS.len() * B * T;
    println!("\n4. Time: fast path (best of {FAST_RUNS} runs) vs reference (one run, every step computed)");
    row("fast path, all cores", format!("{:.1} ms", ms(fast_all)), format!("{B} sequences"));
    row("fast path, 1 thread", format!("{:.1} ms", ms(fast_one)), format!("{B} sequences"));
    if rows < B {
        row(format!("fast path, 1 thread, first {rows}"), format!("{:.1} ms", ms(fast_time)), "");
        row(
            "",
            "",
            format!(
                "(reference estimated at {:.0} s for all {B}: compared on the first {rows})",
                estimate.as_secs_f64()
            ),
        );
    }
    row("reference, 1 thread", format!("{:.1} ms", ms(ref_time)), format!("{rows} sequences"));
    row(
        "speedup, fast vs reference",
        format!("{:.1} x", ref_time.as_secs_f64() / fast_time.as_secs_f64()),
        "1 thread each",
    );
    row("speedup, all cores vs 1 thread", format!("{:.2} x", fast_one.as_secs_f64() / fast_all.as_secs_f64()), "");
    row(
        "cell steps computed, fast path",
        thousands(stats.steps_computed),
        format!("{} layers, {B} sequences", UNITS.len()),
    );
    row("valid cell steps", thousands(UNITS.len() * valid), "");
    row("all cell steps (the reference)", thousands(all_steps), "");
    row(
        "fast vs reference, max |diff|",
        format!("{max_diff:e}"),
        format!("over {rows} x {} x {} outputs", fast.time(), fast.features()),
    );
    // The reference runs in the backend's rounding mode: the fast path must match it bit for bit.
    let tolerance = 0.0;
    let sub_valid: usize = lengths[..rows].iter().sum();
    if stats.steps_computed != UNITS.len() * valid || fast_stats.steps_computed != UNITS.len() * sub_valid {
        println!("   FAILED: the fast path computed padded steps");
        ok = false;
    }
    // max_abs_diff propagates NaN, which must fail too.
    if max_diff.is_nan() || max_diff > tolerance {
        println!("   FAILED: the fast path differs from the reference by more than {tolerance:e}");
        ok = false;
    }

    ok &= train(&mut rng, &lengths, &x_zero, &x_nan, &lstms)?;

    println!("\n{}", if ok { "all checks passed" } else { "SOME CHECKS FAILED" });
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Section 5: trains the seed model three ways from the same weights on a learnable task and measures
/// each on the valid steps of held-out sequences. The target at step `t` is `0.8 x[t, 0] - 0.5 x[t - 1, 1]`
/// (zero at padded steps, as the seed's padded targets were). Returns whether the checks passed.
fn train(rng: &mut StdRng, lengths: &[usize], x_zero: &[f32], x_nan: &[f32], lstms: &[KerasLstm]) -> Result<bool> {
    const TRAIN: usize = 60;
    const HELD_OUT: usize = 20;
    const EPOCHS: usize = 3;
    let _ = rng;
    let target = |x: &[f32], b: usize, t: usize| -> f32 {
        if t >= lengths[b] {
            return 0.0;
        }
        let at = |tt: usize, f: usize| x[(b * T + tt) * F + f];
        0.8 * at(t, 0) - if t > 0 { 0.5 * at(t - 1, 1) } else { 0.0 }
    };
    let targets: Vec<f32> =
        (0..B).flat_map(|b| (N..T).map(move |t| (b, t))).map(|(b, t)| target(x_zero, b, t)).collect();
    let rows = |x: &[f32], lo: usize, hi: usize| MaskedSeq::dense(x[lo * T * F..hi * T * F].to_vec(), hi - lo, T, F);
    let ys = |lo: usize, hi: usize| &targets[lo * (T - N)..hi * (T - N)];
    let held = (rows(x_zero, TRAIN, TRAIN + HELD_OUT)?, ys(TRAIN, TRAIN + HELD_OUT));
    println!(
        "\n5. Training: Adam (lr 1e-2), MAE, batch 15, {EPOCHS} epochs on {TRAIN} sequences, same initial weights"
    );
    println!("   target at step t: 0.8 x[t, 0] - 0.5 x[t-1, 1]; measured: masked MAE on {HELD_OUT} held-out sequences");
    let correct = stack(0.0, MaskValueMode::Ieee, lstms);
    let before = correct.evaluate(&held.0, held.1, 15, Loss::MaskedMae, 0)?;
    row("before training", format!("{before:.6}"), "held-out valid steps");
    let mut results = Vec::new();
    for (label, mut model, x, loss) in [
        ("mask carried", stack(0.0, MaskValueMode::Ieee, lstms), x_zero, Loss::MaskedMae),
        ("mask dropped (the seed's bug)", stack(0.0, MaskValueMode::Ieee, lstms).drop_mask(), x_zero, Loss::MaskedMae),
        ("NaN padding, NaN-aware mask", stack(f32::NAN, MaskValueMode::NanAware, lstms), x_nan, Loss::MaskedMae),
    ] {
        let mut adam = Adam::keras().with_lr(1e-2);
        let train_x = rows(x, 0, TRAIN)?;
        let (time, history) = timed(|| {
            model.fit(&train_x, ys(0, TRAIN), FitOptions::new(loss, &mut adam).epochs(EPOCHS).batch_size(15))
        })?;
        // Measure what each learned the same way: the correct (masked) model with the trained weights.
        let mut probe = stack(0.0, MaskValueMode::Ieee, lstms);
        probe.set_weights(&model.weights())?;
        let after = probe.evaluate(&held.0, held.1, 15, Loss::MaskedMae, 0)?;
        let steps = EPOCHS * TRAIN.div_ceil(15);
        let last = history.loss.last().copied().unwrap_or(f64::NAN);
        row(
            label,
            format!("{after:.6}"),
            format!("(fit reported {last:.4}; {:.0} ms per step)", ms(time) / steps as f64),
        );
        results.push(after);
    }
    let ok = results.iter().all(|v| v.is_finite()) && results[0] < before && results[0] == results[2];
    if results[0] != results[2] {
        println!("   FAILED: NaN padding with a NaN-aware mask must train exactly as zero padding");
    }
    if results[0].partial_cmp(&before) != Some(std::cmp::Ordering::Less) {
        println!("   FAILED: the masked model did not improve on held-out data");
    }
    Ok(ok)
}

/// `[B, T, F]` with `lengths[b]` valid steps of uniform values in `[-1, 1)`, then `pad`.
fn padded_batch(rng: &mut StdRng, lengths: &[usize], pad: f32) -> Vec<f32> {
    let mut x = vec![pad; lengths.len() * T * F];
    for (seq, &len) in x.chunks_exact_mut(T * F).zip(lengths) {
        seq[..len * F].iter_mut().for_each(|v| *v = rng.random_range(-1.0..1.0));
    }
    x
}

/// The three LSTM layers with Keras-like weights: uniform in `±1/sqrt(H)`, bias zero except the forget
/// gate's, which is 1 (Keras' `unit_forget_bias`).
fn keras_lstms(rng: &mut StdRng) -> Result<Vec<KerasLstm>> {
    let mut input = F;
    let mut layers = Vec::new();
    for h in UNITS {
        let scale = 1.0 / (h as f32).sqrt();
        let mut uniform = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-scale..scale)).collect() };
        let kernel = uniform(input * 4 * h);
        let recurrent = uniform(h * 4 * h);
        let bias: Vec<f32> = (0..4 * h).map(|j| if j / h == 1 { 1.0 } else { 0.0 }).collect();
        let weights = LstmWeights::from_keras(input, h, &kernel, &recurrent, Some(&bias))?;
        layers.push(KerasLstm::new(weights, KerasLstmOptions::default())?);
        input = h;
    }
    Ok(layers)
}

/// `Masking(mask_value) -> LSTMs -> x[:, N:]`, the time slice carrying the mask.
fn stack(mask_value: f32, mode: MaskValueMode, lstms: &[KerasLstm]) -> Sequential {
    let model = lstms.iter().fold(Sequential::new().masking(mask_value, mode), |m, l| m.lstm(l.clone()));
    model.time_slice(N, None)
}

/// Runs `f` once and returns its wall time and result.
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    let start = Instant::now();
    let r = f()?;
    Ok((start.elapsed(), r))
}

/// The best wall time of `runs` runs of `f`, and the last result.
fn best_of<T>(runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<(Duration, T)> {
    let (mut best, mut last) = timed(&mut f)?;
    for _ in 1..runs {
        let (t, r) = timed(&mut f)?;
        best = best.min(t);
        last = r;
    }
    Ok((best, last))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    // A NaN difference must not hide: f32::max would ignore it.
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, |m, d| if d.is_nan() || d > m { d } else { m })
}

/// One aligned line: label, value (right-aligned), note.
fn row(label: impl Display, value: impl Display, note: impl Display) {
    let line = format!("   {label:<34}{value:>14}   {note}");
    println!("{}", line.trim_end());
}

fn percent(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `36200` as `36,200`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
