//! Runs one ONNX LSTM or GRU layer (time-major, lengths spread evenly over T/2..T as in the shape grid) repeatedly,
//! for profilers: `cargo run --release --example profile_onnx -- lstm|gru B T H [threads] [iters]`.
//! The GRU uses `linear_before_reset = 1` as `bench/grid.py` does; input size = hidden size.
use masked_rnn::onnx::{Direction, OnnxGru, OnnxGruAttrs, OnnxLstm, OnnxLstmAttrs, OnnxOutputs};
use masked_rnn::Workspace;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::time::Instant;

/// One forward pass into `Y`.
type Run<'a> = Box<dyn FnMut(&mut [f32]) -> masked_rnn::Result<()> + 'a>;

fn main() -> masked_rnn::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cell = args.first().map(String::as_str).unwrap_or("lstm");
    let n: Vec<usize> = args.iter().skip(1).map(|v| v.parse().expect("number")).collect();
    let get = |i: usize, d: usize| n.get(i).copied().unwrap_or(d);
    let (b, t, h, threads, iters) = (get(0, 16), get(1, 50), get(2, 1024), get(3, 1), get(4, 10));
    let gates = match cell {
        "lstm" => 4,
        "gru" => 3,
        _ => panic!("cell must be lstm or gru"),
    };
    let mut rng = StdRng::seed_from_u64(1);
    let s = 1.0 / (h as f32).sqrt();
    let mut w = |n: usize| (0..n).map(|_| rng.random_range(-s..s)).collect::<Vec<f32>>();
    let (wx, wr, bias, x) = (w(gates * h * h), w(gates * h * h), w(2 * gates * h), w(t * b * h));
    let lens: Vec<i32> = (0..b).map(|k| (t - t / 2 * k / b.max(1)) as i32).collect();
    let valid: usize = lens.iter().map(|&l| l as usize).sum();
    let mut y = vec![0.0; t * b * h];
    let ws = &mut Workspace::new();
    let mut run: Run<'_> = if gates == 4 {
        let layer = OnnxLstm::new(OnnxLstmAttrs::new(h, Direction::Forward), h, &wx, &wr, Some(&bias), None)?;
        println!("{}", layer.backend().name);
        Box::new(move |y| {
            let out = OnnxOutputs { y: Some(y), ..Default::default() };
            layer.forward_in(&x, t, b, Some(&lens), None, None, out, threads, ws).map(drop)
        })
    } else {
        let mut attrs = OnnxGruAttrs::new(h, Direction::Forward);
        attrs.linear_before_reset = true;
        let layer = OnnxGru::new(attrs, h, &wx, &wr, Some(&bias))?;
        println!("{}", layer.backend().name);
        Box::new(move |y| {
            let out = OnnxOutputs { y: Some(y), ..Default::default() };
            layer.forward_in(&x, t, b, Some(&lens), None, out, threads, ws).map(drop)
        })
    };
    let flops = 2.0 * (gates * h) as f64 * (2 * h) as f64 * valid as f64;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let st = Instant::now();
        run(&mut y)?;
        times.push(st.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let (best, median) = (times[0], times[times.len() / 2]);
    println!(
        "{cell} B{b} T{t} H{h} threads {threads}: best {:.2} ms ({:.1} GFLOP/s), median {:.2} ms ({:.1} GFLOP/s)",
        best * 1e3,
        flops / best / 1e9,
        median * 1e3,
        flops / median / 1e9
    );
    Ok(())
}
