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
