//! Runs one Keras LSTM layer repeatedly, for profilers: `cargo run --release --example profile_layer -- B T I H [pad%] [threads] [iters]`.
use masked_rnn::{KerasLstm, KerasLstmOptions, KerasOutputs, LstmWeights, Padding, SeqView};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|v| v.parse().expect("number")).collect();
    let get = |i: usize, d: usize| a.get(i).copied().unwrap_or(d);
    let (b, t, i, h, pad, threads, iters) =
        (get(0, 64), get(1, 256), get(2, 256), get(3, 256), get(4, 0), get(5, 1), get(6, 10));
    let mut rng = StdRng::seed_from_u64(1);
    let s = 1.0 / (h as f32).sqrt();
    let mut w = |n: usize| (0..n).map(|_| rng.random_range(-s..s)).collect::<Vec<f32>>();
    let weights = LstmWeights::from_keras(i, h, &w(i * 4 * h), &w(h * 4 * h), Some(&w(4 * h))).unwrap();
    let layer = KerasLstm::new(weights, KerasLstmOptions::default()).unwrap();
    let x = w(b * t * i);
    let mean = t * (100 - pad) / 100;
    let lens: Vec<usize> = (0..b)
        .map(|k| {
            (mean as i64 + (k as i64 % 9 - 4) * (t as i64 - mean as i64).min(mean as i64) / 8).clamp(0, t as i64)
                as usize
        })
        .collect();
    let view = SeqView::from_lengths(&lens, t, Padding::Post).unwrap();
    let mut y = vec![0.0; b * t * h];
    let flops = 2.0 * 4.0 * h as f64 * (i + h) as f64 * view.total_valid() as f64;
    // MRNN_GAP_MS: idle time between calls (a server between requests); reports the median too.
    let gap: u64 = std::env::var("MRNN_GAP_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut best = f64::MAX;
    let mut times: Vec<f64> = Vec::with_capacity(iters);
    for _ in 0..iters {
        std::thread::sleep(std::time::Duration::from_millis(gap));
        let st = Instant::now();
        layer.forward(&x, &view, None, KerasOutputs { y: Some(&mut y), ..Default::default() }, threads).unwrap();
        let e = st.elapsed().as_secs_f64();
        times.push(e);
        best = best.min(e);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{} B{b} T{t} I{i} H{h} pad{pad}% threads {threads}: best {:.2} ms ({:.1} GFLOP/s), median {:.2} ms, max {:.2} ms",
        layer.backend().name,
        best * 1e3,
        flops / best / 1e9,
        times[times.len() / 2] * 1e3,
        times[times.len() - 1] * 1e3
    );
}
