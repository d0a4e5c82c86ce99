//! Reading the float64 gradient fixtures (tests/fixtures/*_grad, written by tools/fixtures/*_grad_golden.py)
//! and comparing float64 tensors.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Every fixture file of `kind` in `tests/fixtures/<dir>`, sorted by name. Panics if the folder is
/// missing or holds no fixture of that kind: a comparison loop must never run zero times.
pub fn grad_fixtures(dir: &str, kind: &str) -> Vec<(String, Value)> {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir);
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_stem().expect("name").to_string_lossy().into_owned(), v)
        })
        .filter(|(_, v)| v["kind"] == kind)
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no {kind} fixtures in {}", dir.display());
    out
}

/// A float64 fixture number (`null` is NaN, `"inf"` / `"-inf"` infinities).
pub fn f64_of(v: &Value) -> f64 {
    match v {
        Value::Null => f64::NAN,
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        v => v.as_f64().expect("number"),
    }
}

/// A flat float64 list.
pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap_or_else(|| panic!("expected an array, got {v}")).iter().map(f64_of).collect()
}

/// A flat float64 list, or `None` for `null`.
pub fn opt_f64s(v: &Value) -> Option<Vec<f64>> {
    (!v.is_null()).then(|| f64s(v))
}

/// The worst relative disagreement seen (relative to `max(1, |expected|)`) and how many values were compared.
#[derive(Clone, Debug, Default)]
pub struct Agreement {
    /// Largest `|got - want| / max(1, |want|)`.
    pub worst: f64,
    /// Where it was.
    pub worst_at: String,
    /// Number of values compared.
    pub values: usize,
}

impl Agreement {
    /// Compares `got` with `want` element by element; panics beyond `tol`.
    pub fn check(&mut self, what: &str, got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        assert!(!want.is_empty(), "{what}: nothing to compare");
        for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g - w).abs() / w.abs().max(1.0);
            assert!(err <= tol, "{what}[{k}]: got {g}, fixture {w} (tolerance {tol})");
            if err > self.worst {
                self.worst = err;
                self.worst_at = format!("{what}[{k}]");
            }
        }
        self.values += got.len();
    }
}

/// `[a, b, c] -> [b, a, c]`.
pub fn swap_axes(v: &[f64], a: usize, b: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for i in 0..a {
        for j in 0..b {
            out[(j * a + i) * c..(j * a + i + 1) * c].copy_from_slice(&v[(i * b + j) * c..(i * b + j + 1) * c]);
        }
    }
    out
}
