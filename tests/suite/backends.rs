//! Every instruction-set backend through the same differential properties, forced one by one (whatever
//! `MASKED_RNN_CPU` says), skipping loudly where the CPU lacks it.

use masked_rnn::fuzzing::{self, KerasCase};
use masked_rnn::kernel::{self, CpuLevel};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Backends this CPU has, as `std::is_x86_feature_detected!` sees it: portable always, AVX2 with FMA,
/// AVX-512F. Independent of the crate's own detection, so a backend silently missing fails the tests.
fn expected_levels() -> Vec<CpuLevel> {
    let mut levels = vec![CpuLevel::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            levels.push(CpuLevel::Avx2);
        }
        if std::is_x86_feature_detected!("avx512f") {
            levels.push(CpuLevel::Avx512);
        }
    }
    levels
}

fn seeded(seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let len = rng.random_range(0..6000);
    (0..len).map(|_| rng.random()).collect()
}

#[test]
fn every_backend_equals_the_reference() {
    let mut ran = Vec::new();
    for level in CpuLevel::ALL {
        let Some(backend) = kernel::backend(level) else {
            eprintln!("SKIPPED backend {}: this CPU lacks it", level.name());
            continue;
        };
        assert_eq!(backend.level, level);
        for seed in 0..1_500 {
            let data = seeded(seed);
            fuzzing::skip_equals_masked_on(&data, backend)
                .unwrap_or_else(|e| panic!("{} seed {seed}: {e}", backend.name));
            if seed < 600 {
                fuzzing::onnx_equals_reference_on(&data, backend)
                    .unwrap_or_else(|e| panic!("{} onnx seed {seed}: {e}", backend.name));
            }
        }
        ran.push(level);
    }
    assert_eq!(ran, expected_levels(), "backends tested vs backends this CPU has");
}

fn init(c: &KerasCase) -> Option<masked_rnn::InitialState<'_>> {
    c.initial.as_ref().map(|(h, cc)| masked_rnn::InitialState { h, c: cc })
}

/// A backend that claims fused multiply-adds really rounds differently from the portable one somewhere:
/// the forced instruction set was really used.
#[test]
fn fused_backends_really_fuse() {
    let portable = kernel::backend(CpuLevel::Portable).expect("always there");
    let fused: Vec<_> = kernel::available().into_iter().filter(|b| b.fused_multiply_add).collect();
    // Every x86 SIMD backend fuses; the portable one never does (it matches the reference's rounding).
    let expected = expected_levels().into_iter().filter(|&l| l != CpuLevel::Portable).count();
    assert_eq!(fused.len(), expected, "fused backends {:?}", fused.iter().map(|b| b.name).collect::<Vec<_>>());
    if fused.is_empty() {
        eprintln!("SKIPPED: no fused backend on this CPU (no AVX2+FMA, no AVX-512F): nothing to compare");
        return;
    }
    for backend in fused {
        let differs = (0..200).any(|seed| {
            let data = seeded(seed);
            let (a, b) = (KerasCase::from_bytes_on(&data, backend), KerasCase::from_bytes_on(&data, portable));
            let ya = a.layer.forward_all(&a.x, &a.view, init(&a), 1).unwrap().0.y;
            let yb = b.layer.forward_all(&b.x, &b.view, init(&b), 1).unwrap().0.y;
            ya.iter().zip(&yb).any(|(p, q)| p.to_bits() != q.to_bits() && !(p.is_nan() && q.is_nan()))
        });
        assert!(differs, "{}: never differs from portable; is FMA really used?", backend.name);
    }
}

#[test]
fn level_names_round_trip_and_env_only_lowers() {
    for l in CpuLevel::ALL {
        assert_eq!(CpuLevel::from_name(l.name()), Some(l));
    }
    assert_eq!(CpuLevel::from_name("AVX2 "), Some(CpuLevel::Avx2));
    assert_eq!(CpuLevel::from_name("sse9"), None);
    assert!(kernel::selected().level <= kernel::detected_level());
    if let Some(cap) = std::env::var(kernel::LEVEL_ENV).ok().and_then(|v| CpuLevel::from_name(&v)) {
        assert!(kernel::selected().level <= cap, "{} above the cap {}", kernel::selected().name, cap.name());
    }
}
