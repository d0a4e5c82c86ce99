//! Times `Schedule::BatchChunks` against `Schedule::GateColumns` over batch and hidden sizes, and shows
//! which one `Schedule::Auto` picks: the check (and the data to re-tune) of the automatic choice on a
//! machine. `cargo run --release --example schedule_sweep -- [threads] [time]` (defaults: all cores, 64).
use masked_rnn::{KerasLstm, KerasLstmOptions, KerasOutputs, LstmWeights, Padding, Schedule, SeqView, Workspace};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::time::Instant;

fn best_ms(layer: &KerasLstm, x: &[f32], view: &SeqView, y: &mut [f32], threads: usize, ws: &mut Workspace) -> f64 {
    let run = |y: &mut [f32], ws: &mut Workspace| {
        let out = KerasOutputs { y: Some(y), ..Default::default() };
        layer.forward_in(x, view, None, out, threads, ws).expect("forward");
    };
    run(y, ws); // warm: pool, workspace, caches
    let start = Instant::now();
    let mut best = f64::MAX;
    let mut n = 0;
    while n < 5 || (n < 200 && start.elapsed().as_secs_f64() < 0.3) {
        let t = Instant::now();
        run(y, ws);
        best = best.min(t.elapsed().as_secs_f64());
        n += 1;
    }
    best * 1e3
}

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|v| v.parse().expect("a number")).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (threads, time) = (a.first().copied().unwrap_or(cores), a.get(1).copied().unwrap_or(64));
    println!("{threads} threads, T = {time}, I = H, all steps valid; best of up to 200 runs, ms");
    println!("{:>5} {:>5} {:>12} {:>12} {:>8}  {:<8} {:>10}", "B", "H", "batch", "columns", "ratio", "auto", "auto ms");
    let mut rng = StdRng::seed_from_u64(7);
    let (mut agree, mut total, mut lost) = (0, 0, 0.0f64);
    for h in [64, 128, 192, 256, 384, 512, 1024] {
        let s = 1.0 / (h as f32).sqrt();
        let mut w = |n: usize| (0..n).map(|_| rng.random_range(-s..s)).collect::<Vec<f32>>();
        let weights = LstmWeights::from_keras(h, h, &w(h * 4 * h), &w(h * 4 * h), Some(&w(4 * h))).expect("weights");
        let base = KerasLstm::new(weights, KerasLstmOptions::default()).expect("layer");
        for b in [1, 2, 3, 4, 6, 8, 16, 64] {
            let x = w(b * time * h);
            let view = SeqView::from_lengths(&vec![time; b], time, Padding::Post).expect("view");
            let mut y = vec![0.0; b * time * h];
            let mut ws = Workspace::new();
            let ms = |sch: Schedule, y: &mut [f32], ws: &mut Workspace| {
                best_ms(&base.clone().with_schedule(sch), &x, &view, y, threads, ws)
            };
            let chunks = ms(Schedule::BatchChunks, &mut y, &mut ws);
            let columns = ms(Schedule::GateColumns, &mut y, &mut ws);
            let auto = ms(Schedule::Auto, &mut y, &mut ws);
            // Auto's pick is whichever explicit schedule it timed like (within 3 %).
            let pick = if (auto - chunks).abs() <= (auto - columns).abs() { "batch" } else { "columns" };
            let faster = if chunks <= columns { "batch" } else { "columns" };
            let close = (chunks / columns - 1.0).abs() < 0.03;
            total += 1;
            if pick == faster || close {
                agree += 1;
            }
            lost = lost.max(auto / chunks.min(columns));
            println!(
                "{b:>5} {h:>5} {chunks:>12.3} {columns:>12.3} {:>8.2}  {pick:<8} {auto:>10.3}{}",
                chunks / columns,
                if pick == faster || close { "" } else { "  <- slower pick" }
            );
        }
    }
    println!("auto picked the faster schedule (or one within 3 %) in {agree} of {total} shapes; worst auto / best = {lost:.2}");
}
