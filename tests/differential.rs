//! Seeded replay of the fuzz properties: the fast path against the reference on thousands of random cases.

use masked_rnn::fuzzing;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn replay(name: &str, cases: u64, f: fn(&[u8]) -> Result<(), String>) {
    for seed in 0..cases {
        let mut rng = StdRng::seed_from_u64(seed);
        let len = rng.random_range(0..6000);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if let Err(e) = f(&data) {
            panic!("{name}: seed {seed} failed: {e}");
        }
    }
}

#[test]
fn skip_equals_masked_10k_seeded_cases() {
    replay("skip_equals_masked", 10_000, fuzzing::skip_equals_masked);
}

#[test]
fn seq_view_seeded_cases() {
    replay("seq_view", 20_000, fuzzing::seq_view);
}

/// Every edge hidden size against every edge length pattern, both directions and output modes.
#[test]
fn edge_sizes_and_lengths() {
    use masked_rnn::{InitialState, KerasLstm, KerasLstmOptions, LstmWeights, Padding, SeqView};
    let (b, t, i) = (6, 9, 4);
    let lengths = [0, 1, t, 5, t, 3];
    let mut holes = vec![false; b * t];
    for (k, m) in holes.iter_mut().enumerate() {
        *m = (k * 7 + k / t) % 3 != 0;
    }
    let views = [
        SeqView::from_lengths(&lengths, t, Padding::Post).unwrap(),
        SeqView::from_lengths(&lengths, t, Padding::Pre).unwrap(),
        SeqView::from_mask(&holes, b, t).unwrap(),
        SeqView::from_mask(&vec![false; b * t], b, t).unwrap(),
        SeqView::full(b, t),
    ];
    let mut rng = StdRng::seed_from_u64(7);
    for h in [1, 7, 8, 9, 15, 16, 17, 33] {
        let mut w = |n: usize| (0..n).map(|_| rng.random_range(-0.6f32..0.6)).collect::<Vec<_>>();
        let weights = LstmWeights::from_keras(i, h, &w(i * 4 * h), &w(h * 4 * h), Some(&w(4 * h))).unwrap();
        let x = w(b * t * i);
        let (h0, c0) = (w(b * h), w(b * h));
        for view in &views {
            for go_backwards in [false, true] {
                for zero_output in [false, true] {
                    for init in [None, Some(InitialState { h: &h0, c: &c0 })] {
                        let opts =
                            KerasLstmOptions::default().go_backwards(go_backwards).zero_output_for_mask(zero_output);
                        let layer = KerasLstm::new(weights.clone(), opts).unwrap();
                        let tol = fuzzing::FAST_VS_REFERENCE_TOL;
                        let expected = layer.forward_reference(&x, view, init).unwrap();
                        for threads in [1, 2] {
                            let (got, stats) = layer.forward_all(&x, view, init, threads).unwrap();
                            assert_eq!(stats.steps_computed, view.total_valid());
                            let what = format!("H={h} backwards={go_backwards} zero={zero_output} threads={threads}");
                            fuzzing::close(&format!("{what} y"), &got.y, &expected.y, tol).unwrap();
                            fuzzing::close(&format!("{what} last"), &got.last_output, &expected.last_output, tol)
                                .unwrap();
                            fuzzing::close(&format!("{what} h_n"), &got.h_n, &expected.h_n, tol).unwrap();
                            fuzzing::close(&format!("{what} c_n"), &got.c_n, &expected.c_n, tol).unwrap();
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn onnx_equals_reference_seeded_cases() {
    replay("onnx_equals_reference", 5_000, fuzzing::onnx_equals_reference);
}

#[test]
fn bidirectional_equals_reference_seeded_cases() {
    replay("bidirectional_equals_reference", 3_000, fuzzing::bidirectional_equals_reference);
}

#[test]
fn torch_equals_reference_seeded_cases() {
    replay("torch_equals_reference", 3_000, fuzzing::torch_equals_reference);
}
