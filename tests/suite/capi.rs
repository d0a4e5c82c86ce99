//! The C ABI from C: `tests/c/capi_test.c`, compiled with the system C compiler against the crate's
//! staticlib, checks `mrnn_lstm_keras` and `mrnn_mask_from_value` against the Keras golden fixtures
//! (converted here from JSON to a plain text file the C program can read) and the error contract;
//! `tests/c/onnx_test.c` does the same for `mrnn_lstm_onnx` with the ONNX Runtime fixtures (each layout-0
//! fixture also transposed to layout 1, and the layout-1 ones to layout 0) and two-layer stacks whose
//! expected values come from the Rust reference. Both programs also run every case through the handles
//! (`mrnn_keras_lstm_new` / `_run` / `_free`, `mrnn_onnx_lstm_*`), which must match the one-shot functions
//! bitwise, including several shapes per handle and concurrent runs. `tests/c/train_test.c` and
//! `tests/c/onnx_train_test.c` check the training functions (C_ABI.md section 3) of the Keras LSTM and of
//! the ONNX LSTM against the Rust API bit for bit and the gradient fixtures within 1e-4, and their error
//! contract (stale, foreign and other-kind tapes included); `tests/c/gru_train_test.c` does the same for the
//! GRU and RNN gradients (C_ABI.md section 4) against the Keras gradient fixtures and the ONNX reference
//! backward; `tests/c/embed_test.c` checks the embedding surface (the status codes and
//! `mrnn_status_string`, `const` handles run from several threads at once). Also: the header compiled as C++,
//! optional runs under valgrind (memory errors and leaks: every handle must be freed), and seeded replay of
//! `masked_rnn::capi::fuzz_capi`.
//!
//! Cargo builds the package's staticlib next to the rlib before it runs integration tests, in
//! `target/<profile>/deps/`, the directory holding this test's executable (see [`staticlib`]).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use masked_rnn::fuzzing::same_bits;
use masked_rnn::keras::{KerasGruOptions, KerasRnnOptions};
use masked_rnn::kernel::{self, Backend, CpuLevel};
use masked_rnn::onnx::{
    Direction, Layout, OnnxGru, OnnxGruAttrs, OnnxLstm, OnnxLstmAttrs, OnnxOutputs, OnnxRnn, OnnxRnnAttrs,
};
use masked_rnn::{
    Activation, GruWeights, InitialState, KerasGrads, KerasGru, KerasLstm, KerasLstmOptions, KerasOutputs,
    KerasSimpleRnn, KerasTape, KerasUpstream, LstmWeights, OnnxGrads, OnnxTape, OnnxUpstream, RnnWeights, SeqView,
    Workspace,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::Value;

/// Fixtures the C program must see (every `lstm` and `masking` fixture is converted).
const REQUIRED: [&str; 8] = [
    "post_padding",
    "holes",
    "go_backwards_holes",
    "zero_output_for_mask",
    "initial_states",
    "hard_sigmoid_keras2",
    "masking_zero",
    "masking_nan_features",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory for this test's files.
fn scratch(test: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("masked_rnn_capi_{test}_{}_{nanos}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The staticlib cargo built for this test run: when it builds a package's library for its integration
/// tests, cargo emits every crate type (rlib, cdylib, staticlib) into `target/<profile>/deps/`, next to
/// this test's executable (only `cargo build` copies them up to `target/<profile>/`).
fn staticlib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().expect("test executable lives in target/<profile>/deps");
    let candidates = [deps.join("libmasked_rnn.a"), deps.parent().unwrap_or(deps).join("libmasked_rnn.a")];
    candidates
        .iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("libmasked_rnn.a not found in {candidates:?}: cargo builds it before integration tests")
        })
        .clone()
}

/// Native libraries the Rust standard library needs when linked statically
/// (`rustc --print native-static-libs`).
fn native_libs() -> &'static [&'static str] {
    if cfg!(target_os = "macos") {
        &["-lSystem", "-lc", "-lm"]
    } else {
        &["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl"]
    }
}

fn tool(var: &str, default: &str) -> String {
    std::env::var(var).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| default.to_string())
}

fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

// ------------------------------------------------------------------ fixture conversion

fn f32_of(v: &Value) -> f32 {
    match v {
        Value::Null => f32::NAN,
        Value::Number(n) => n.as_f64().expect("a finite number") as f32,
        Value::String(s) => match s.as_str() {
            "inf" => f32::INFINITY,
            "-inf" => f32::NEG_INFINITY,
            "nan" => f32::NAN,
            _ => panic!("unexpected float string {s:?}"),
        },
        _ => panic!("unexpected float value {v}"),
    }
}

fn usize_of(j: &Value, key: &str) -> usize {
    j[key].as_u64().unwrap_or_else(|| panic!("{key} missing")) as usize
}

fn floats(out: &mut String, j: &Value, key: &str, expected: usize) {
    let a = j[key].as_array().unwrap_or_else(|| panic!("{key} missing"));
    assert_eq!(a.len(), expected, "{key} length");
    write!(out, "{}", a.len()).unwrap();
    for v in a {
        write!(out, " {:08x}", f32_of(v).to_bits()).unwrap();
    }
    out.push('\n');
}

fn mask(out: &mut String, j: &Value, expected: usize) -> bool {
    let a = j["mask"].as_array().expect("mask missing");
    assert_eq!(a.len(), expected, "mask length");
    write!(out, "{}", a.len()).unwrap();
    let mut all = true;
    for v in a {
        let m = v.as_u64().expect("mask is 0/1");
        all &= m != 0;
        write!(out, " {m}").unwrap();
    }
    out.push('\n');
    all
}

/// `(code, alpha, beta)` of a Keras activation name; alpha and beta only matter for hard_sigmoid.
fn activation(name: &str, flavor: &str, recurrent: bool) -> (i32, f32, f32) {
    match name {
        "sigmoid" => (0, f32::NAN, f32::NAN),
        "tanh" => (1, f32::NAN, f32::NAN),
        "relu" => (2, f32::NAN, f32::NAN),
        "linear" => (3, f32::NAN, f32::NAN),
        "elu" => (8, f32::NAN, f32::NAN),
        "softsign" => (9, f32::NAN, f32::NAN),
        "softplus" => (10, f32::NAN, f32::NAN),
        // Keras 2: the ABI's NaN default (0.2, 0.5); the C program also checks the explicit values.
        "hard_sigmoid" if flavor == "keras2" => (7, f32::NAN, f32::NAN),
        "hard_sigmoid" if recurrent => (7, 1.0 / 6.0, 0.5),
        _ => panic!("activation {name:?} ({flavor}) cannot be expressed through MrnnKerasLstmAttrs"),
    }
}

/// Converts every `lstm` and `masking` fixture; returns the text and the names converted.
fn convert_fixtures() -> (String, Vec<String>) {
    let dir = root().join("tests/fixtures/keras");
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let mut out = String::new();
    let mut names = Vec::new();
    for path in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
        let j: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        let name = j["name"].as_str().unwrap().to_string();
        match j["kind"].as_str().unwrap() {
            "lstm" => {
                let (b, t, i, h) =
                    (usize_of(&j, "batch"), usize_of(&j, "time"), usize_of(&j, "input"), usize_of(&j, "hidden"));
                let flavor = j["hard_sigmoid_flavor"].as_str().unwrap_or("keras3");
                let (act, _, _) = activation(j["activation"].as_str().unwrap(), flavor, false);
                let (ract, alpha, beta) = activation(j["recurrent_activation"].as_str().unwrap(), flavor, true);
                let all_valid = j["mask"].as_array().unwrap().iter().all(|m| m.as_u64() != Some(0));
                let has_init = !j["initial_h"].is_null();
                writeln!(
                    out,
                    "lstm {name} {b} {t} {i} {h} {} {} {act} {ract} {:08x} {:08x} {} {}",
                    u8::from(j["go_backwards"].as_bool().unwrap()),
                    u8::from(j["zero_output_for_mask"].as_bool().unwrap()),
                    alpha.to_bits(),
                    beta.to_bits(),
                    // An all-valid mask is passed as NULL, to cover that path against Keras too.
                    u8::from(!all_valid),
                    u8::from(has_init),
                )
                .unwrap();
                floats(&mut out, &j, "x", b * t * i);
                mask(&mut out, &j, b * t);
                floats(&mut out, &j, "kernel", i * 4 * h);
                floats(&mut out, &j, "recurrent_kernel", h * 4 * h);
                floats(&mut out, &j, "bias", 4 * h);
                if has_init {
                    floats(&mut out, &j, "initial_h", b * h);
                    floats(&mut out, &j, "initial_c", b * h);
                }
                floats(&mut out, &j, "y", b * t * h);
                floats(&mut out, &j, "last_output", b * h);
                floats(&mut out, &j, "h_n", b * h);
                floats(&mut out, &j, "c_n", b * h);
            }
            "masking" => {
                let (b, t, f) = (usize_of(&j, "batch"), usize_of(&j, "time"), usize_of(&j, "features"));
                writeln!(out, "masking {name} {b} {t} {f} {:08x}", f32_of(&j["mask_value"]).to_bits()).unwrap();
                floats(&mut out, &j, "x", b * t * f);
                mask(&mut out, &j, b * t);
            }
            _ => continue,
        }
        names.push(name);
    }
    out.push_str("end\n");
    (out, names)
}

/// Compiles `tests/c/<name>.c` into `dir`; returns the executable.
fn compile_c(dir: &Path, name: &str) -> PathBuf {
    let cc = tool("CC", "cc");
    assert!(available(&cc), "no C compiler: {cc:?} (set CC)");
    let exe = dir.join(name);
    let (ok, text) = run(Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(root().join(format!("tests/c/{name}.c")))
        .arg(staticlib())
        .args(native_libs())
        .arg("-o")
        .arg(&exe));
    assert!(ok, "compiling tests/c/{name}.c failed:\n{text}");
    exe
}

/// Compiles the Keras C test into `dir`; returns the executable.
fn compile_c_test(dir: &Path) -> PathBuf {
    compile_c(dir, "capi_test")
}

fn write_cases(dir: &Path) -> PathBuf {
    let (text, names) = convert_fixtures();
    for required in REQUIRED {
        assert!(names.iter().any(|n| n == required), "fixture {required} was not converted");
    }
    let path = dir.join("cases.txt");
    fs::write(&path, text).unwrap();
    path
}

fn check_summary(text: &str) {
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    let ok = last.ends_with(" passed, 0 failed")
        && last.split(' ').next().is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0));
    assert!(ok, "the C test did not close with \"N passed, 0 failed\":\n{text}");
}

#[cfg(unix)]
#[test]
fn c_program_matches_keras_fixtures_and_the_contract() {
    let dir = scratch("c");
    let exe = compile_c_test(&dir);
    let cases = write_cases(&dir);
    let (ok, text) = run(Command::new(&exe).arg(&cases).arg(env!("CARGO_PKG_VERSION")));
    assert!(ok, "the C test failed:\n{text}");
    check_summary(&text);
    println!("{text}");
    let _ = fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn header_compiles_as_cpp() {
    let cxx = tool("CXX", "c++");
    if !available(&cxx) {
        eprintln!("SKIPPED: no C++ compiler ({cxx:?}); the header was not checked as C++");
        return;
    }
    let dir = scratch("cpp");
    let src = dir.join("header.cpp");
    fs::write(
        &src,
        "#include \"masked_rnn.h\"\n\
         static int train(MrnnKerasLstm *k, const MrnnKerasLstmAttrs *a) { MrnnTape *t = nullptr; \
         uint64_t n = 0; int s = mrnn_keras_lstm_run_train(k, a, nullptr, nullptr, nullptr, nullptr, nullptr, \
         nullptr, nullptr, nullptr, &t) + mrnn_keras_lstm_run_backward(k, t, nullptr, nullptr, nullptr, \
         nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr) + mrnn_lstm_keras_backward(a, \
         nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, \
         nullptr, nullptr, nullptr, nullptr, nullptr, nullptr) + mrnn_keras_lstm_set_weights(k, nullptr, \
         nullptr, nullptr) + mrnn_tape_bytes(t, &n); mrnn_tape_free(t); return s; }\n\
         static int train_onnx(MrnnOnnxLstm *l, const MrnnOnnxLstmAttrs *a) { MrnnTape *t = nullptr; \
         int s = mrnn_onnx_lstm_run_train(l, a, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, \
         &t) + mrnn_onnx_lstm_run_backward(l, t, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, \
         nullptr, nullptr, nullptr) + mrnn_lstm_onnx_backward(a, nullptr, nullptr, nullptr, nullptr, nullptr, \
         nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, \
         nullptr, nullptr) + mrnn_onnx_lstm_set_weights(l, nullptr, nullptr, nullptr, nullptr); \
         mrnn_tape_free(t); return s; }\n\
         static int gru() { MrnnOnnxGruAttrs og; MrnnOnnxRnnAttrs orn; MrnnKerasGruAttrs kg; \
         MrnnKerasRnnAttrs kr; MrnnOnnxGru *a = nullptr; MrnnOnnxRnn *b = nullptr; MrnnKerasGru *c = nullptr; \
         MrnnKerasRnn *d = nullptr; int s = mrnn_onnx_gru_attrs_init(&og) + mrnn_onnx_rnn_attrs_init(&orn) + \
         mrnn_keras_gru_attrs_init(&kg) + mrnn_keras_rnn_attrs_init(&kr) + mrnn_gru_onnx(&og, nullptr, \
         nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr) + mrnn_rnn_onnx(&orn, nullptr, \
         nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr) + mrnn_gru_keras(&kg, nullptr, \
         nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr) + mrnn_rnn_keras(&kr, \
         nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr) + \
         mrnn_onnx_gru_new(&og, nullptr, nullptr, nullptr, &a) + mrnn_onnx_rnn_new(&orn, nullptr, nullptr, \
         nullptr, &b) + mrnn_keras_gru_new(&kg, nullptr, nullptr, nullptr, &c) + mrnn_keras_rnn_new(&kr, \
         nullptr, nullptr, nullptr, &d) + mrnn_onnx_gru_run(a, &og, nullptr, nullptr, nullptr, nullptr, \
         nullptr) + mrnn_onnx_rnn_run(b, &orn, nullptr, nullptr, nullptr, nullptr, nullptr) + \
         mrnn_keras_gru_run(c, &kg, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr) + \
         mrnn_keras_rnn_run(d, &kr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr); \
         mrnn_onnx_gru_free(a); mrnn_onnx_rnn_free(b); mrnn_keras_gru_free(c); mrnn_keras_rnn_free(d); \
         return s; }\n\
         static int gru_train(MrnnOnnxGru *a, MrnnOnnxRnn *b, MrnnKerasGru *c, MrnnKerasRnn *d, \
         const MrnnOnnxGruAttrs *og, const MrnnOnnxRnnAttrs *orn, const MrnnKerasGruAttrs *kg, \
         const MrnnKerasRnnAttrs *kr) { MrnnTape *t = nullptr; float *o = nullptr; const float *i = nullptr; \
         int s = mrnn_gru_onnx_backward(og, i, i, i, i, nullptr, i, i, i, o, o, o, o, o) + \
         mrnn_rnn_onnx_backward(orn, i, i, i, i, nullptr, i, i, i, o, o, o, o, o) + \
         mrnn_gru_keras_backward(kg, i, nullptr, i, i, i, i, i, i, i, o, o, o, o, o) + \
         mrnn_rnn_keras_backward(kr, i, nullptr, i, i, i, i, i, i, i, o, o, o, o, o) + \
         mrnn_onnx_gru_run_train(a, og, i, nullptr, i, o, o, &t) + mrnn_onnx_gru_run_backward(a, t, i, i, o, \
         o, o, o, o) + mrnn_onnx_gru_set_weights(a, i, i, i) + mrnn_onnx_rnn_run_train(b, orn, i, nullptr, i, \
         o, o, &t) + mrnn_onnx_rnn_run_backward(b, t, i, i, o, o, o, o, o) + mrnn_onnx_rnn_set_weights(b, i, \
         i, i) + mrnn_keras_gru_run_train(c, kg, i, nullptr, i, o, o, o, &t) + mrnn_keras_gru_run_backward(c, \
         t, i, i, i, o, o, o, o, o) + mrnn_keras_gru_set_weights(c, i, i, i) + mrnn_keras_rnn_run_train(d, \
         kr, i, nullptr, i, o, o, o, &t) + mrnn_keras_rnn_run_backward(d, t, i, i, i, o, o, o, o, o) + \
         mrnn_keras_rnn_set_weights(d, i, i, i); mrnn_tape_free(t); return s; }\n\
         static int status(MrnnStatus s) { const char *t = mrnn_status_string(s); \
         return t == nullptr || s != MRNN_OK; }\n\
         int main() { MrnnKerasLstmAttrs a; MrnnOnnxLstmAttrs o; MrnnKerasLstm *k = nullptr; \
         MrnnOnnxLstm *n = nullptr; mrnn_keras_lstm_free(k); mrnn_onnx_lstm_free(n); \
         return mrnn_keras_lstm_attrs_init(&a) + mrnn_onnx_lstm_attrs_init(&o) + (mrnn_version() == 0) + \
         mrnn_keras_lstm_new(&a, nullptr, nullptr, nullptr, &k) + mrnn_onnx_lstm_new(&o, nullptr, nullptr, \
         nullptr, nullptr, &n) + train(k, &a) + train_onnx(n, &o) + gru() + gru_train(nullptr, nullptr, \
         nullptr, nullptr, nullptr, nullptr, nullptr, nullptr) + status(MRNN_OK); }\n",
    )
    .unwrap();
    let (ok, text) = run(Command::new(&cxx)
        .args(["-fsyntax-only", "-x", "c++", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(&src));
    assert!(ok, "masked_rnn.h does not compile as C++:\n{text}");
    let _ = fs::remove_dir_all(&dir);
}

/// The backend the C programs select: the crate's choice, or under valgrind (whose CPU has no AVX-512) at
/// most AVX2. The backward's sums are ordered by the vector width, so its gradients are bitwise equal only
/// to the Rust API's on the same backend.
fn c_backend(valgrind: bool) -> &'static Backend {
    let chosen = kernel::selected();
    match kernel::backend(CpuLevel::Avx2) {
        Some(avx2) if valgrind && chosen.level > CpuLevel::Avx2 => avx2,
        _ => chosen,
    }
}

/// Runs `exe cases [extra]` under valgrind, when it is installed: reads or writes out of bounds in the
/// library or the test, and memory definitely or indirectly lost at exit (a handle never freed, a leak in
/// `_free`), fail it. Skipped (loudly) if valgrind is missing, `MRNN_SKIP_VALGRIND` is set, or
/// the run does not finish within the time budget, so it can neither hang nor flake.
#[cfg(unix)]
fn under_valgrind(test: &str, build: impl FnOnce(&Path) -> (PathBuf, PathBuf), extra: &[&str]) {
    if std::env::var_os("MRNN_SKIP_VALGRIND").is_some() || !available("valgrind") {
        eprintln!("SKIPPED: valgrind not available (or MRNN_SKIP_VALGRIND set)");
        return;
    }
    let dir = scratch(test);
    let (exe, cases) = build(&dir);
    let log = dir.join("valgrind.log");
    let mut child = Command::new("valgrind")
        .args([
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
        ])
        .arg(&exe)
        .arg(&cases)
        .args(extra)
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(dir.join("valgrind.err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("SKIPPED: the valgrind run took more than 20 s and was stopped");
            let _ = fs::remove_dir_all(&dir);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = format!(
        "{}{}",
        fs::read_to_string(&log).unwrap_or_default(),
        fs::read_to_string(dir.join("valgrind.err")).unwrap_or_default()
    );
    assert!(status.success(), "the C test failed under valgrind ({status}):\n{text}");
    check_summary(&text);
    println!("valgrind: {text}");
    let _ = fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn c_program_under_valgrind() {
    under_valgrind("valgrind", |dir| (compile_c_test(dir), write_cases(dir)), &[env!("CARGO_PKG_VERSION")]);
}

#[cfg(unix)]
#[test]
fn c_onnx_program_under_valgrind() {
    under_valgrind("onnx_valgrind", |dir| (compile_c(dir, "onnx_test"), write_onnx_cases(dir).0), &[]);
}

// ------------------------------------------------------------------ ONNX fixtures

fn f32s_of(j: &Value, key: &str, expected: usize) -> Vec<f32> {
    let a = j[key].as_array().unwrap_or_else(|| panic!("{key} missing"));
    assert_eq!(a.len(), expected, "{key} length");
    a.iter().map(f32_of).collect()
}

/// `Some(values)` for a present array, `None` for null.
fn optional_f32s(j: &Value, key: &str, expected: usize) -> Option<Vec<f32>> {
    (!j[key].is_null()).then(|| f32s_of(j, key, expected))
}

fn write_f32s(out: &mut String, v: &[f32]) {
    write!(out, "{}", v.len()).unwrap();
    for x in v {
        write!(out, " {:08x}", x.to_bits()).unwrap();
    }
    out.push('\n');
}

fn write_i32s(out: &mut String, v: &[i32]) {
    write!(out, "{}", v.len()).unwrap();
    for x in v {
        write!(out, " {x}").unwrap();
    }
    out.push('\n');
}

/// `MRNN_ACT_*` of an ONNX activation name (ONNX Runtime matches names case-insensitively).
fn onnx_activation_code(name: &str) -> i32 {
    const NAMES: [&str; 11] = [
        "sigmoid",
        "tanh",
        "relu",
        "affine",
        "leakyrelu",
        "thresholdedrelu",
        "scaledtanh",
        "hardsigmoid",
        "elu",
        "softsign",
        "softplus",
    ];
    let lower = name.to_ascii_lowercase();
    NAMES.iter().position(|n| *n == lower).unwrap_or_else(|| panic!("unknown ONNX activation {name:?}")) as i32
}

/// `v` of shape `dims`, its axes reordered: output axis k is input axis `perm[k]`.
fn permute(v: &[f32], dims: &[usize], perm: &[usize]) -> Vec<f32> {
    assert_eq!(v.len(), dims.iter().product::<usize>());
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let mut in_strides = vec![1; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        in_strides[k] = in_strides[k + 1] * dims[k + 1];
    }
    let mut out = Vec::with_capacity(v.len());
    let mut idx = vec![0; dims.len()];
    for _ in 0..v.len() {
        out.push(v[idx.iter().zip(perm).map(|(&i, &p)| i * in_strides[p]).sum::<usize>()]);
        for k in (0..idx.len()).rev() {
            idx[k] += 1;
            if idx[k] < out_dims[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

/// The attribute part of an `onnx` / `ograd` case line: `input_forget has_clip CLIP num_activations ACT0..5
/// ALPHA0..5 BETA0..5` (the array entries past the activations given hold the defaults' codes and NaN).
fn onnx_header(input_forget: bool, clip: Option<f32>, acts: &[(i32, f32, f32)]) -> String {
    assert!(acts.len() <= 6);
    let mut codes = [0_i32, 1, 1, 0, 1, 1];
    let (mut a6, mut b6) = ([f32::NAN; 6], [f32::NAN; 6]);
    for (k, &(c, a, b)) in acts.iter().enumerate() {
        (codes[k], a6[k], b6[k]) = (c, a, b);
    }
    let mut header = format!(
        "{} {} {:08x} {}",
        u8::from(input_forget),
        u8::from(clip.is_some()),
        clip.unwrap_or(f32::NAN).to_bits(),
        acts.len()
    );
    for c in codes {
        write!(header, " {c}").unwrap();
    }
    for v in a6.iter().chain(&b6) {
        write!(header, " {:08x}", v.to_bits()).unwrap();
    }
    header
}

/// One `mrnn_lstm_onnx` fixture in memory, in its layout.
#[derive(Clone)]
struct OnnxFixture {
    name: String,
    dims: [usize; 4], // T, B, I, H
    direction: i32,
    layout: i32,
    header: String, // input_forget has_clip CLIP num_activations ACT.. ALPHA.. BETA..
    /// input_forget, clip (`None`: has_clip 0) and the `(code, alpha, beta)` of each activation given, as
    /// in `header`.
    input_forget: bool,
    clip: Option<f32>,
    acts: Vec<(i32, f32, f32)>,
    x: Vec<f32>,
    w: Vec<f32>,
    r: Vec<f32>,
    b: Option<Vec<f32>>,
    lens: Option<Vec<i32>>,
    h0: Option<Vec<f32>>,
    c0: Option<Vec<f32>>,
    p: Option<Vec<f32>>,
    y: Option<Vec<f32>>,
    y_h: Option<Vec<f32>>,
    y_c: Option<Vec<f32>>,
}

impl OnnxFixture {
    fn from_json(j: &Value) -> Self {
        let name = j["name"].as_str().unwrap().to_string();
        let (t, b, i, h) =
            (usize_of(j, "seq_length"), usize_of(j, "batch"), usize_of(j, "input"), usize_of(j, "hidden"));
        let direction = match j["direction"].as_str().unwrap() {
            "forward" => 0,
            "reverse" => 1,
            "bidirectional" => 2,
            other => panic!("{name}: direction {other:?}"),
        };
        let d = if direction == 2 { 2 } else { 1 };
        let layout = j["layout"].as_i64().unwrap() as i32;
        let clip = (!j["clip"].is_null()).then(|| f32_of(&j["clip"]));
        let names = j["activations"].as_array().unwrap();
        let (alpha, beta) = (j["activation_alpha"].as_array().unwrap(), j["activation_beta"].as_array().unwrap());
        assert!(names.len() <= 6 && alpha.len() == names.len() && beta.len() == names.len(), "{name}: activations");
        // null: NaN, the ABI's "default".
        let acts: Vec<(i32, f32, f32)> = (0..names.len())
            .map(|k| (onnx_activation_code(names[k].as_str().unwrap()), f32_of(&alpha[k]), f32_of(&beta[k])))
            .collect();
        let input_forget = j["input_forget"].as_i64().unwrap() == 1;
        let header = onnx_header(input_forget, clip, &acts);
        let lens = (!j["sequence_lens"].is_null()).then(|| {
            let a = j["sequence_lens"].as_array().unwrap();
            assert_eq!(a.len(), b, "{name}: sequence_lens length");
            a.iter().map(|v| v.as_i64().unwrap() as i32).collect()
        });
        OnnxFixture {
            dims: [t, b, i, h],
            direction,
            layout,
            header,
            input_forget,
            clip,
            acts,
            x: f32s_of(j, "x", t * b * i),
            w: f32s_of(j, "w", d * 4 * h * i),
            r: f32s_of(j, "r", d * 4 * h * h),
            b: optional_f32s(j, "b", d * 8 * h),
            lens,
            h0: optional_f32s(j, "initial_h", d * b * h),
            c0: optional_f32s(j, "initial_c", d * b * h),
            p: optional_f32s(j, "p", d * 3 * h),
            y: optional_f32s(j, "y", t * d * b * h),
            y_h: optional_f32s(j, "y_h", d * b * h),
            y_c: optional_f32s(j, "y_c", d * b * h),
            name,
        }
    }

    /// The same case in the other layout: X, the initial states and the expected outputs transposed.
    fn other_layout(&self) -> Self {
        let [t, b, i, h] = self.dims;
        let d = if self.direction == 2 { 2 } else { 1 };
        let to_batch_major = self.layout == 0;
        let (x_dims, state_dims, y_dims, y_perm) = if to_batch_major {
            ([t, b, i], [d, b, h], [t, d, b, h], [2, 0, 1, 3]) // [T,D,B,H] -> [B,T,D,H]
        } else {
            ([b, t, i], [b, d, h], [b, t, d, h], [1, 2, 0, 3]) // [B,T,D,H] -> [T,D,B,H]
        };
        let swap = |v: &Vec<f32>, dims: &[usize; 3]| permute(v, dims, &[1, 0, 2]);
        OnnxFixture {
            name: format!("{}@layout{}", self.name, u8::from(to_batch_major)),
            layout: i32::from(to_batch_major),
            x: swap(&self.x, &x_dims),
            h0: self.h0.as_ref().map(|v| swap(v, &state_dims)),
            c0: self.c0.as_ref().map(|v| swap(v, &state_dims)),
            y: self.y.as_ref().map(|v| permute(v, &y_dims, &y_perm)),
            y_h: self.y_h.as_ref().map(|v| swap(v, &state_dims)),
            y_c: self.y_c.as_ref().map(|v| swap(v, &state_dims)),
            ..self.clone()
        }
    }

    fn write(&self, out: &mut String) {
        let [t, b, i, h] = self.dims;
        write!(out, "onnx {} {t} {b} {i} {h} {} {} {}", self.name, self.direction, self.layout, self.header).unwrap();
        let optional = [&self.b, &self.h0, &self.c0, &self.p, &self.y, &self.y_h, &self.y_c];
        let flags = [
            self.b.is_some(),
            self.lens.is_some(),
            self.h0.is_some(),
            self.c0.is_some(),
            self.p.is_some(),
            self.y.is_some(),
            self.y_h.is_some(),
            self.y_c.is_some(),
        ];
        for f in flags {
            write!(out, " {}", u8::from(f)).unwrap();
        }
        out.push('\n');
        write_f32s(out, &self.x);
        write_f32s(out, &self.w);
        write_f32s(out, &self.r);
        if let Some(v) = optional[0] {
            write_f32s(out, v);
        }
        if let Some(l) = &self.lens {
            write_i32s(out, l);
        }
        for v in optional[1..].iter().copied().flatten() {
            write_f32s(out, v);
        }
    }
}

/// A two-layer network for the C program: layer 2 reads layer 1's `Y` in place. The expected values
/// come from `OnnxLstm::forward_reference`, the plain reference, applied twice.
#[allow(clippy::too_many_arguments)]
fn stack_case(
    out: &mut String,
    name: &str,
    seed: u64,
    layout: Layout,
    [t, b, i, h1, h2]: [usize; 5],
    (dir1, dir2): (Direction, Direction),
    lens: &[i32],
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut values = |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-scale..scale)).collect() };
    let (d1, d2) = (dir1.count(), dir2.count());
    let i2 = d1 * h1;
    let x = values(t * b * i, 1.5);
    let (w1, r1, b1) = (values(d1 * 4 * h1 * i, 0.6), values(d1 * 4 * h1 * h1, 0.6), values(d1 * 8 * h1, 0.4));
    let (w2, r2, b2) = (values(d2 * 4 * h2 * i2, 0.6), values(d2 * 4 * h2 * h2, 0.6), values(d2 * 8 * h2, 0.4));
    let layer1 = OnnxLstm::new(OnnxLstmAttrs::new(h1, dir1).layout(layout), i, &w1, &r1, Some(&b1), None).unwrap();
    let layer2 = OnnxLstm::new(OnnxLstmAttrs::new(h2, dir2).layout(layout), i2, &w2, &r2, Some(&b2), None).unwrap();
    let y1 = layer1.forward_reference(&x, t, b, Some(lens), None, None).unwrap();
    let y2 = layer2.forward_reference(&y1.y, t, b, Some(lens), None, None).unwrap();
    // The reference runs in the backend's rounding mode, so the fast path must match it bitwise. The C
    // program compares within `tol` (0: equal values, so -0.0 would pass for +0.0): check the bits here,
    // on the Rust fast path the C ABI is checked against (bit for bit, by `fuzz_capi`).
    let (f1, _) = layer1.forward_all(&x, t, b, Some(lens), None, None, 2).unwrap();
    let (f2, _) = layer2.forward_all(&f1.y, t, b, Some(lens), None, None, 2).unwrap();
    for (what, got, want) in [
        ("layer 1 Y", &f1.y, &y1.y),
        ("layer 2 Y", &f2.y, &y2.y),
        ("layer 2 Y_h", &f2.y_h, &y2.y_h),
        ("layer 2 Y_c", &f2.y_c, &y2.y_c),
    ] {
        same_bits(&format!("stack {name}: {what}, fast path vs reference"), got, want).unwrap();
    }
    let tol: f32 = 0.0;
    let code = |d: Direction| match d {
        Direction::Forward => 0,
        Direction::Reverse => 1,
        Direction::Bidirectional => 2,
    };
    let l = i32::from(layout == Layout::BatchMajor);
    writeln!(out, "stack {name} {l} {t} {b} {i} {h1} {h2} {} {} {:08x}", code(dir1), code(dir2), tol.to_bits())
        .unwrap();
    for v in [&x, &w1, &r1, &b1, &w2, &r2, &b2] {
        write_f32s(out, v);
    }
    write_i32s(out, lens);
    for v in [&y1.y, &y2.y, &y2.y_h, &y2.y_c] {
        write_f32s(out, v);
    }
}

/// Converts every ONNX fixture (and its other-layout twin) and adds the stacks; returns the file and
/// the number of fixture cases per layout `[layout 0, layout 1]`.
fn write_onnx_cases(dir: &Path) -> (PathBuf, [usize; 2]) {
    let fixtures = root().join("tests/fixtures/onnx");
    let mut paths: Vec<PathBuf> = fs::read_dir(&fixtures)
        .unwrap_or_else(|e| panic!("{}: {e}", fixtures.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut out = String::new();
    let mut per_layout = [0_usize; 2];
    let mut directions = [false; 3];
    for path in &paths {
        let j: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(j["kind"].as_str(), Some("onnx_lstm"), "{}: kind", path.display());
        let f = OnnxFixture::from_json(&j);
        directions[f.direction as usize] = true;
        for case in [f.other_layout(), f] {
            per_layout[case.layout as usize] += 1;
            case.write(&mut out);
        }
    }
    assert!(paths.len() >= 10, "only {} ONNX fixtures in {}", paths.len(), fixtures.display());
    assert!(directions.iter().all(|&d| d), "the ONNX fixtures miss a direction");
    use Direction::{Bidirectional, Forward, Reverse};
    let (seq, batch) = (Layout::SeqMajor, Layout::BatchMajor);
    stack_case(&mut out, "seq_major_forward_reverse", 1, seq, [6, 4, 3, 5, 4], (Forward, Reverse), &[6, 0, 3, 1]);
    stack_case(&mut out, "seq_major_reverse_bidi", 2, seq, [7, 2, 4, 9, 3], (Reverse, Bidirectional), &[7, 4]);
    stack_case(&mut out, "batch_major_bidi_forward", 3, batch, [5, 3, 2, 3, 4], (Bidirectional, Forward), &[5, 2, 0]);
    out.push_str("end\n");
    let path = dir.join("onnx_cases.txt");
    fs::write(&path, out).unwrap();
    (path, per_layout)
}

#[cfg(unix)]
#[test]
fn c_onnx_program_matches_onnx_fixtures_and_the_contract() {
    let dir = scratch("onnx");
    let exe = compile_c(&dir, "onnx_test");
    let (cases, per_layout) = write_onnx_cases(&dir);
    let (ok, text) = run(Command::new(&exe).arg(&cases));
    assert!(ok, "the C test failed:\n{text}");
    check_summary(&text);
    println!("ONNX fixture cases: {} in layout 0, {} in layout 1\n{text}", per_layout[0], per_layout[1]);
    let _ = fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ GRU and RNN cases (section 4)

/// Converts every ONNX GRU / RNN fixture (in its layout and, for layout 0, transposed to layout 1) into an
/// `onnx` line of `gru_test.c`'s cases file; returns the number of cases per kind `[GRU, RNN]`.
fn write_onnx_gru_rnn_cases(out: &mut String) -> [usize; 2] {
    let mut counts = [0; 2];
    for (kind, dir) in [(0_usize, "onnx_gru"), (1, "onnx_rnn")] {
        let gates = if kind == 0 { 3 } else { 1 };
        for path in json_files(&root().join("tests/fixtures").join(dir)) {
            let j: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(j["kind"].as_str(), Some(dir), "{}: kind", path.display());
            let name = j["name"].as_str().unwrap();
            let (t, b, i, h) =
                (usize_of(&j, "seq_length"), usize_of(&j, "batch"), usize_of(&j, "input"), usize_of(&j, "hidden"));
            let direction = match j["direction"].as_str().unwrap() {
                "forward" => 0,
                "reverse" => 1,
                _ => 2,
            };
            let d = if direction == 2 { 2 } else { 1 };
            let layout = j["layout"].as_i64().unwrap() as i32;
            let clip = (!j["clip"].is_null()).then(|| f32_of(&j["clip"]));
            let names = j["activations"].as_array().unwrap();
            let (alpha, beta) = (j["activation_alpha"].as_array().unwrap(), j["activation_beta"].as_array().unwrap());
            let (mut codes, mut a4, mut b4) = ([0_i32; 4], [f32::NAN; 4], [f32::NAN; 4]);
            assert!(names.len() <= 4, "{name}: activations");
            for k in 0..names.len() {
                codes[k] = onnx_activation_code(names[k].as_str().unwrap());
                (a4[k], b4[k]) = (f32_of(&alpha[k]), f32_of(&beta[k]));
            }
            let flag = j["linear_before_reset"].as_i64().unwrap_or(0);
            let lens: Option<Vec<i32>> =
                j["sequence_lens"].as_array().map(|a| a.iter().map(|v| v.as_i64().unwrap() as i32).collect());
            let x = f32s_of(&j, "x", t * b * i);
            let (w, r) = (f32s_of(&j, "w", d * gates * h * i), f32s_of(&j, "r", d * gates * h * h));
            let bias = optional_f32s(&j, "b", d * 2 * gates * h);
            let h0 = optional_f32s(&j, "initial_h", d * b * h);
            let (y, y_h) = (optional_f32s(&j, "y", t * d * b * h), optional_f32s(&j, "y_h", d * b * h));
            let mut layouts = vec![(layout, x.clone(), h0.clone(), y.clone(), y_h.clone())];
            if layout == 0 {
                let swap = |v: &Vec<f32>| permute(v, &[d, b, h], &[1, 0, 2]);
                layouts.push((
                    1,
                    permute(&x, &[t, b, i], &[1, 0, 2]),
                    h0.as_ref().map(swap),
                    y.as_ref().map(|v| permute(v, &[t, d, b, h], &[2, 0, 1, 3])),
                    y_h.as_ref().map(swap),
                ));
            }
            for (layout, x, h0, y, y_h) in layouts {
                write!(
                    out,
                    "onnx {kind} {name}@layout{layout} {t} {b} {i} {h} {direction} {layout} {flag} {} {:08x} {}",
                    u8::from(clip.is_some()),
                    clip.unwrap_or(f32::NAN).to_bits(),
                    names.len()
                )
                .unwrap();
                for c in codes {
                    write!(out, " {c}").unwrap();
                }
                for v in a4.iter().chain(&b4) {
                    write!(out, " {:08x}", v.to_bits()).unwrap();
                }
                for f in [bias.is_some(), lens.is_some(), h0.is_some(), y.is_some(), y_h.is_some()] {
                    write!(out, " {}", u8::from(f)).unwrap();
                }
                out.push('\n');
                for v in [Some(&x), Some(&w), Some(&r), bias.as_ref()].into_iter().flatten() {
                    write_f32s(out, v);
                }
                if let Some(l) = &lens {
                    write_i32s(out, l);
                }
                for v in [&h0, &y, &y_h].into_iter().flatten() {
                    write_f32s(out, v);
                }
                counts[kind] += 1;
            }
        }
    }
    counts
}

/// The `.json` files of `dir`, sorted.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
}

/// Converts every forward Keras GRU / SimpleRNN fixture into a `keras` line of `gru_test.c`'s cases file;
/// returns the number of cases per kind `[GRU, RNN]` and the names of those the attributes structs cannot
/// express (a SimpleRNN or GRU `activation` of Keras 3's hard_sigmoid: the structs give `activation` its
/// Keras 2 parameters, as `MrnnKerasLstmAttrs` does).
fn write_keras_gru_rnn_cases(out: &mut String) -> ([usize; 2], Vec<String>) {
    let (mut counts, mut skipped) = ([0; 2], Vec::new());
    for (kind, dir) in [(0_usize, "keras_gru"), (1, "keras_rnn")] {
        let gates = if kind == 0 { 3 } else { 1 };
        for path in json_files(&root().join("tests/fixtures").join(dir)) {
            let j: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
            if j["kind"].as_str() != Some(dir) {
                continue; // gradients and Bidirectional wrappers: not this ABI
            }
            let name = j["name"].as_str().unwrap().to_string();
            let (b, t, i, h) =
                (usize_of(&j, "batch"), usize_of(&j, "time"), usize_of(&j, "input"), usize_of(&j, "hidden"));
            let flavor = j["hard_sigmoid_flavor"].as_str().unwrap_or("keras3");
            let act_name = j["activation"].as_str().unwrap();
            if act_name == "hard_sigmoid" && flavor != "keras2" {
                skipped.push(name);
                continue;
            }
            let (act, _, _) = activation(act_name, flavor, false);
            let (ract, alpha, beta) = match j["recurrent_activation"].as_str() {
                Some(r) => activation(r, flavor, true),
                None => (0, f32::NAN, f32::NAN),
            };
            let reset_after = j["reset_after"].as_bool().unwrap_or(true);
            let bias_len = if kind == 0 && reset_after { 2 * 3 * h } else { gates * h };
            let bias = optional_f32s(&j, "bias", bias_len);
            let h0 = optional_f32s(&j, "initial_h", b * h);
            let mask: Vec<u8> = j["mask"].as_array().unwrap().iter().map(|m| m.as_u64().unwrap() as u8).collect();
            // An all-valid mask is passed as NULL, to cover that path against Keras too.
            let has_mask = mask.contains(&0);
            writeln!(
                out,
                "keras {kind} {name} {b} {t} {i} {h} {} {} {act} {ract} {:08x} {:08x} {} {} {} {}",
                u8::from(j["go_backwards"].as_bool().unwrap()),
                u8::from(j["zero_output_for_mask"].as_bool().unwrap()),
                alpha.to_bits(),
                beta.to_bits(),
                u8::from(reset_after),
                u8::from(has_mask),
                u8::from(bias.is_some()),
                u8::from(h0.is_some()),
            )
            .unwrap();
            write_f32s(out, &f32s_of(&j, "x", b * t * i));
            if has_mask {
                write!(out, "{}", mask.len()).unwrap();
                for m in &mask {
                    write!(out, " {m}").unwrap();
                }
                out.push('\n');
            }
            write_f32s(out, &f32s_of(&j, "kernel", i * gates * h));
            write_f32s(out, &f32s_of(&j, "recurrent_kernel", h * gates * h));
            for v in [&bias, &h0].into_iter().flatten() {
                write_f32s(out, v);
            }
            for key in ["y", "last_output", "h_n"] {
                write_f32s(out, &f32s_of(&j, key, if key == "y" { b * t * h } else { b * h }));
            }
            counts[kind] += 1;
        }
    }
    (counts, skipped)
}

/// Writes `gru_test.c`'s cases file; returns it and a summary of what it holds.
fn write_gru_cases(dir: &Path) -> (PathBuf, String) {
    let mut out = String::new();
    let onnx = write_onnx_gru_rnn_cases(&mut out);
    let (keras, skipped) = write_keras_gru_rnn_cases(&mut out);
    out.push_str("end\n");
    assert!(onnx[0] >= 50 && onnx[1] >= 40, "ONNX GRU / RNN cases: {onnx:?}");
    assert!(keras[0] >= 15 && keras[1] >= 15, "Keras GRU / SimpleRNN cases: {keras:?}");
    let path = dir.join("gru_cases.txt");
    fs::write(&path, out).unwrap();
    let summary = format!(
        "fixture cases: ONNX GRU {}, ONNX RNN {}, Keras GRU {}, Keras SimpleRNN {}; not expressible (Keras 3 \
         hard_sigmoid as `activation`): {skipped:?}",
        onnx[0], onnx[1], keras[0], keras[1]
    );
    (path, summary)
}

/// Compiles `tests/c/<program>.c`, writes its cases with `write` (which also returns a summary) and runs
/// it: it must succeed and close with "N passed, 0 failed".
#[cfg(unix)]
fn run_c_program(test: &str, program: &str, write: impl FnOnce(&Path) -> (PathBuf, String)) {
    let dir = scratch(test);
    let exe = compile_c(&dir, program);
    let (cases, summary) = write(&dir);
    let (ok, text) = run(Command::new(&exe).arg(&cases));
    assert!(ok, "the C test failed:\n{text}");
    check_summary(&text);
    println!("{summary}\n{text}");
    let _ = fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn c_gru_program_matches_fixtures_and_the_contract() {
    run_c_program("gru", "gru_test", write_gru_cases);
}

#[cfg(unix)]
#[test]
fn c_gru_program_under_valgrind() {
    under_valgrind("gru_valgrind", |dir| (compile_c(dir, "gru_test"), write_gru_cases(dir).0), &[]);
}

/// The cases file of `tests/c/embed_test.c`, which reads none: an empty one, and no summary.
fn no_cases(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("no-cases.txt");
    fs::write(&path, "").unwrap();
    (path, String::new())
}

/// `tests/c/embed_test.c`: the status codes and `mrnn_status_string`; every kind of handle used through
/// `const` pointers and run from 12 threads at once, bitwise as alone.
#[cfg(unix)]
#[test]
fn c_embed_program_checks_the_embedding_surface() {
    run_c_program("embed", "embed_test", no_cases);
}

#[cfg(unix)]
#[test]
fn c_embed_program_under_valgrind() {
    // "quick": one thread per kind of handle, two runs each, so that the run fits valgrind's time budget.
    under_valgrind("embed_valgrind", |dir| (compile_c(dir, "embed_test"), no_cases(dir).0), &["quick"]);
}

#[test]
fn permute_transposes() {
    // [2,3] -> [3,2]
    assert_eq!(permute(&[0., 1., 2., 3., 4., 5.], &[2, 3], &[1, 0]), [0., 3., 1., 4., 2., 5.]);
    // [T=2,D=1,B=2,H=1] -> [B,T,D,H]
    assert_eq!(permute(&[0., 1., 2., 3.], &[2, 1, 2, 1], &[2, 0, 1, 3]), [0., 2., 1., 3.]);
    // and back
    assert_eq!(permute(&[0., 2., 1., 3.], &[2, 2, 1, 1], &[1, 2, 0, 3]), [0., 1., 2., 3.]);
}

#[test]
fn fuzz_capi_3000_seeded_cases() {
    for seed in 0..3000 {
        let mut rng = StdRng::seed_from_u64(seed);
        let len = rng.random_range(0..3000);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if let Err(e) = masked_rnn::capi::fuzz_capi(&data) {
            panic!("fuzz_capi: seed {seed} failed: {e}");
        }
    }
}

// ------------------------------------------------------------------ training (gradients) cases

/// The activation a code of `MrnnKerasLstmAttrs` stands for, written from the header (the "Keras"
/// parameters; HardSigmoid takes `alpha` / `beta`, NaN = 0.2 / 0.5, for `recurrent_activation` only).
fn keras_code_activation(code: i32, alpha: f32, beta: f32) -> Activation {
    let or = |v: f32, d: f32| if v.is_nan() { d } else { v };
    match code {
        0 => Activation::Sigmoid,
        1 => Activation::Tanh,
        2 => Activation::Relu,
        3 => Activation::Affine { alpha: 1.0, beta: 0.0 },
        4 => Activation::LeakyRelu { alpha: 0.01 },
        5 => Activation::ThresholdedRelu { alpha: 1.0 },
        6 => Activation::ScaledTanh { alpha: 1.0, beta: 1.0 },
        7 => Activation::HardSigmoid { alpha: or(alpha, 0.2), beta: or(beta, 0.5) },
        8 => Activation::Elu { alpha: 1.0 },
        9 => Activation::Softsign,
        10 => Activation::Softplus,
        _ => panic!("activation code {code}"),
    }
}

/// One case of `tests/c/train_test.c`: a Keras LSTM problem with upstream gradients, and, from a Keras
/// gradient fixture, Keras' own gradients.
struct GradCase {
    name: String,
    dims: [usize; 4], // B, T, I, H
    /// go_backwards, zero_output_for_mask, activation, recurrent_activation.
    codes: [i32; 4],
    alpha: f32,
    beta: f32,
    x: Vec<f32>,
    mask: Option<Vec<u8>>,
    kernel: Vec<f32>,
    recurrent: Vec<f32>,
    bias: Option<Vec<f32>>,
    h0: Option<Vec<f32>>,
    c0: Option<Vec<f32>>,
    /// dy, d_last_output, d_h_n, d_c_n.
    up: [Option<Vec<f32>>; 4],
    /// Keras' dx, d_kernel, d_recurrent_kernel, d_bias and, with initial states, d_initial_h, d_initial_c.
    keras: Option<Vec<Vec<f32>>>,
}

/// Tolerance of the C ABI's float32 gradients against Keras' float64 ones: `|g - e| <= TOL * max(1, |e|)`.
const KERAS_GRAD_TOL: f32 = 1e-4;

impl GradCase {
    /// The Rust API's forward outputs `[y, last_output, h_n, c_n]` and gradients `[dx, d_kernel,
    /// d_recurrent_kernel, d_bias, d_initial_h, d_initial_c]`, as the C ABI must give them: a missing half of
    /// the initial state is zeros, both missing is none.
    fn rust(&self, backend: &'static Backend) -> ([Vec<f32>; 4], [Vec<f32>; 6]) {
        let [b, t, i, h] = self.dims;
        let [gb, zero, act, ract] = self.codes;
        let options = KerasLstmOptions::default()
            .activation(keras_code_activation(act, f32::NAN, f32::NAN))
            .recurrent_activation(keras_code_activation(ract, self.alpha, self.beta))
            .go_backwards(gb == 1)
            .zero_output_for_mask(zero == 1);
        let weights = LstmWeights::from_keras(i, h, &self.kernel, &self.recurrent, self.bias.as_deref()).unwrap();
        let layer = KerasLstm::with_backend(weights, options, backend).unwrap();
        let view = match &self.mask {
            Some(m) => SeqView::from_mask_bytes(m, b, t).unwrap(),
            None => SeqView::full(b, t),
        };
        let zeros = vec![0.0; b * h];
        let initial = match (&self.h0, &self.c0) {
            (None, None) => None,
            (h0, c0) => Some(InitialState { h: h0.as_deref().unwrap_or(&zeros), c: c0.as_deref().unwrap_or(&zeros) }),
        };
        let mut fwd = [b * t * h, b * h, b * h, b * h].map(|n| vec![f32::NAN; n]);
        let [y, last, h_n, c_n] = &mut fwd;
        let out = KerasOutputs { y: Some(y), last_output: Some(last), h_n: Some(h_n), c_n: Some(c_n) };
        let mut tape = KerasTape::new();
        layer.forward_train(&self.x, &view, initial, out, &mut tape, 1, &mut Workspace::new()).unwrap();
        let mut grads = [b * t * i, i * 4 * h, h * 4 * h, 4 * h, b * h, b * h].map(|n| vec![f32::NAN; n]);
        let [dx, dk, dr, db, dh0, dc0] = &mut grads;
        let up = KerasUpstream {
            dy: self.up[0].as_deref(),
            d_last_output: self.up[1].as_deref(),
            d_h_n: self.up[2].as_deref(),
            d_c_n: self.up[3].as_deref(),
        };
        let out = KerasGrads {
            dx: Some(dx),
            d_kernel: Some(dk),
            d_recurrent_kernel: Some(dr),
            d_bias: Some(db),
            d_initial_h: Some(dh0),
            d_initial_c: Some(dc0),
        };
        layer.backward(&self.x, &view, initial, &tape, up, out, 1).unwrap();
        (fwd, grads)
    }

    fn write(&self, out: &mut String, backend: &'static Backend) {
        let [b, t, i, h] = self.dims;
        let [gb, zero, act, ract] = self.codes;
        let keras = match &self.keras {
            None => 0,
            Some(k) if k.len() == 6 => 2,
            Some(_) => 1,
        };
        write!(
            out,
            "grad {} {b} {t} {i} {h} {gb} {zero} {act} {ract} {:08x} {:08x}",
            self.name,
            self.alpha.to_bits(),
            self.beta.to_bits()
        )
        .unwrap();
        let flags = [self.mask.is_some(), self.bias.is_some(), self.h0.is_some(), self.c0.is_some()]
            .into_iter()
            .chain(self.up.iter().map(Option::is_some));
        for f in flags {
            write!(out, " {}", u8::from(f)).unwrap();
        }
        writeln!(out, " {keras} {:08x}", KERAS_GRAD_TOL.to_bits()).unwrap();
        write_f32s(out, &self.x);
        if let Some(m) = &self.mask {
            write_i32s(out, &m.iter().map(|&v| i32::from(v)).collect::<Vec<_>>());
        }
        write_f32s(out, &self.kernel);
        write_f32s(out, &self.recurrent);
        for v in [&self.bias, &self.h0, &self.c0].into_iter().chain(&self.up).flatten() {
            write_f32s(out, v);
        }
        let (fwd, grads) = self.rust(backend);
        for v in fwd.iter().chain(&grads) {
            write_f32s(out, v);
        }
        for v in self.keras.iter().flatten() {
            write_f32s(out, v);
        }
    }
}

/// The `keras_lstm_grad` fixtures (real Keras gradients) as C cases; checks on the way that the Rust API
/// is within [`KERAS_GRAD_TOL`] of Keras, so that a failure in C is the C ABI's.
fn keras_grad_cases() -> Vec<GradCase> {
    let dir = root().join("tests/fixtures/keras_grad");
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let mut cases = Vec::new();
    for path in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
        let j: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        if j["kind"].as_str() != Some("keras_lstm_grad") {
            continue;
        }
        let name = j["name"].as_str().unwrap().to_string();
        let (b, t, i, h) = (usize_of(&j, "batch"), usize_of(&j, "time"), usize_of(&j, "input"), usize_of(&j, "hidden"));
        let flavor = j["hard_sigmoid_flavor"].as_str().unwrap_or("keras3");
        let (act, _, _) = activation(j["activation"].as_str().unwrap(), flavor, false);
        let (ract, alpha, beta) = activation(j["recurrent_activation"].as_str().unwrap(), flavor, true);
        let mask: Vec<u8> = j["mask"].as_array().unwrap().iter().map(|m| u8::from(m.as_u64() != Some(0))).collect();
        assert_eq!(mask.len(), b * t, "{name}: mask");
        let has_init = !j["initial_h"].is_null();
        let mut keras = vec![
            f32s_of(&j, "dx", b * t * i),
            f32s_of(&j, "d_kernel", i * 4 * h),
            f32s_of(&j, "d_recurrent_kernel", h * 4 * h),
            f32s_of(&j, "d_bias", 4 * h),
        ];
        if has_init {
            keras.push(f32s_of(&j, "d_initial_h", b * h));
            keras.push(f32s_of(&j, "d_initial_c", b * h));
        }
        let case = GradCase {
            dims: [b, t, i, h],
            codes: [
                i32::from(j["go_backwards"].as_bool().unwrap()),
                i32::from(j["zero_output_for_mask"].as_bool().unwrap()),
                act,
                ract,
            ],
            alpha,
            beta,
            x: f32s_of(&j, "x", b * t * i),
            // An all-valid mask is passed as NULL, to cover that path against Keras too.
            mask: mask.contains(&0).then_some(mask),
            kernel: f32s_of(&j, "kernel", i * 4 * h),
            recurrent: f32s_of(&j, "recurrent_kernel", h * 4 * h),
            bias: Some(f32s_of(&j, "bias", 4 * h)),
            h0: optional_f32s(&j, "initial_h", b * h),
            c0: optional_f32s(&j, "initial_c", b * h),
            up: [
                optional_f32s(&j, "dy", b * t * h),
                optional_f32s(&j, "d_last_output", b * h),
                optional_f32s(&j, "d_h_n", b * h),
                optional_f32s(&j, "d_c_n", b * h),
            ],
            keras: Some(keras),
            name,
        };
        let (_, grads) = case.rust(kernel::selected());
        for (k, (got, want)) in grads.iter().zip(case.keras.as_ref().unwrap()).enumerate() {
            for (n, (&g, &e)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - e).abs() <= KERAS_GRAD_TOL * e.abs().max(1.0),
                    "{}: the Rust API's gradient {k} [{n}] = {g}, Keras {e}",
                    case.name
                );
            }
        }
        cases.push(case);
    }
    assert!(cases.len() >= 10, "only {} keras_lstm_grad fixtures in {}", cases.len(), dir.display());
    cases
}

/// Seeded problems over what the fixtures do not reach: every activation code, HardSigmoid parameters,
/// one half of the initial state, no bias, mask bytes other than 0/1, empty batch / sequence / input,
/// H past one vector block, every subset of upstream gradients.
fn generated_grad_cases() -> Vec<GradCase> {
    let mut rng = StdRng::seed_from_u64(0x7a9e);
    let mut cases = Vec::new();
    let shapes: [[usize; 4]; 14] = [
        [3, 5, 2, 4],
        [4, 7, 3, 9],
        [2, 6, 1, 17],
        [5, 4, 4, 3],
        [1, 9, 2, 5],
        [3, 3, 3, 1],
        [0, 4, 2, 3],
        [3, 0, 2, 3],
        [2, 5, 0, 4],
        [4, 6, 2, 6],
        [2, 8, 3, 2],
        [3, 5, 2, 8],
        [6, 3, 2, 4],
        [1, 1, 1, 1],
    ];
    for (n, &[b, t, i, h]) in shapes.iter().enumerate() {
        let mut values =
            |len: usize, scale: f32| -> Vec<f32> { (0..len).map(|_| rng.random_range(-scale..scale)).collect() };
        let x = values(b * t * i, 1.5);
        let kernel = values(i * 4 * h, 0.6);
        let recurrent = values(h * 4 * h, 0.6);
        let bias = values(4 * h, 0.4);
        let h0 = values(b * h, 1.0);
        let c0 = values(b * h, 1.0);
        let up = [values(b * t * h, 1.0), values(b * h, 1.0), values(b * h, 1.0), values(b * h, 1.0)];
        let act = (n % 11) as i32;
        let ract = [0, 7, 9, 7, 0, 10, 1][n % 7];
        let (alpha, beta) = match n % 3 {
            0 => (f32::NAN, f32::NAN),
            1 => (1.0 / 6.0, 0.5),
            _ => (0.25, f32::NAN),
        };
        // Holes, pre-padding, a fully masked sequence, bytes 255 and 7 for valid; or NULL.
        let mask_kind = n % 4;
        let mask = (mask_kind != 3).then(|| {
            (0..b * t)
                .map(|k| {
                    let (s, p) = (k / t.max(1), k % t.max(1));
                    let valid = match mask_kind {
                        0 => !(k * 7 + n).is_multiple_of(3),
                        1 => p + s >= t / 2,
                        _ => s != 0 && p % 4 != 2,
                    };
                    if valid {
                        [1, 255, 7][k % 3]
                    } else {
                        0
                    }
                })
                .collect()
        });
        let init = n % 4; // 0 none, 1 both, 2 h only, 3 c only
        let ups = rng.random_range(0..16_u32);
        let mut up_n = 0;
        let up = up.map(|v| {
            up_n += 1;
            ((ups >> (up_n - 1)) & 1 == 1 || n == 0).then_some(v)
        });
        cases.push(GradCase {
            name: format!("generated_{n}_b{b}_t{t}_i{i}_h{h}"),
            dims: [b, t, i, h],
            codes: [i32::from(n % 2 == 1), i32::from(n % 5 == 2), act, ract],
            alpha,
            beta,
            x,
            mask,
            kernel,
            recurrent,
            bias: (n % 6 != 4).then_some(bias),
            h0: (init == 1 || init == 2).then_some(h0),
            c0: (init == 1 || init == 3).then_some(c0),
            up,
            keras: None,
        });
    }
    cases
}

fn write_train_cases(dir: &Path, valgrind: bool) -> PathBuf {
    let mut out = String::new();
    for case in keras_grad_cases().iter().chain(&generated_grad_cases()) {
        case.write(&mut out, c_backend(valgrind));
    }
    out.push_str("end\n");
    let path = dir.join("train_cases.txt");
    fs::write(&path, out).unwrap();
    path
}

#[cfg(unix)]
#[test]
fn c_train_program_matches_the_rust_api_keras_and_the_contract() {
    let dir = scratch("train");
    let exe = compile_c(&dir, "train_test");
    let cases = write_train_cases(&dir, false);
    let (ok, text) = run(Command::new(&exe).arg(&cases));
    assert!(ok, "the C test failed:\n{text}");
    check_summary(&text);
    println!("{text}");
    let _ = fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn c_train_program_under_valgrind() {
    // "quick": each case once per path, so that the run fits valgrind's time budget.
    under_valgrind("train_valgrind", |dir| (compile_c(dir, "train_test"), write_train_cases(dir, true)), &["quick"]);
}

// ------------------------------------------------------------------ ONNX training (gradients) cases

/// Tolerance of the C ABI's float32 ONNX gradients against the fixtures' float64 ones (an autograd model of
/// the operator proven against ONNX Runtime): `|g - e| <= TOL * max(1, |e|)`, as tests/suite/backward_fixtures.rs.
const ONNX_GRAD_TOL: f32 = 1e-4;

/// One case of `tests/c/onnx_train_test.c`: an ONNX LSTM problem (inputs and weights in an [`OnnxFixture`],
/// whose expected outputs are not used), upstream gradients, and, from an `onnx_lstm_grad` fixture, the
/// fixture's gradients.
#[derive(Clone)]
struct OnnxGradCase {
    f: OnnxFixture,
    /// dy, dy_h, dy_c.
    up: [Option<Vec<f32>>; 3],
    /// The fixture's dx, dw, dr, db, d_initial_h, d_initial_c, dp (each where it has them).
    fixture: [Option<Vec<f32>>; 7],
}

impl OnnxGradCase {
    fn from_json(j: &Value) -> Self {
        let f = OnnxFixture::from_json(j);
        let [t, b, i, h] = f.dims;
        let d = if f.direction == 2 { 2 } else { 1 };
        let up = [
            optional_f32s(j, "dy", t * d * b * h),
            optional_f32s(j, "dy_h", d * b * h),
            optional_f32s(j, "dy_c", d * b * h),
        ];
        let fixture = [
            optional_f32s(j, "dx", t * b * i),
            optional_f32s(j, "dw", d * 4 * h * i),
            optional_f32s(j, "dr", d * 4 * h * h),
            optional_f32s(j, "db", d * 8 * h),
            optional_f32s(j, "d_initial_h", d * b * h),
            optional_f32s(j, "d_initial_c", d * b * h),
            optional_f32s(j, "dp", d * 3 * h),
        ];
        OnnxGradCase { f, up, fixture }
    }

    /// The same case in the other layout: x, the states, the upstream and the fixture's dx and state
    /// gradients transposed.
    fn other_layout(&self) -> Self {
        let [t, b, i, h] = self.f.dims;
        let d = if self.f.direction == 2 { 2 } else { 1 };
        let to_batch_major = self.f.layout == 0;
        let (x_dims, state_dims, y_dims, y_perm) = if to_batch_major {
            ([t, b, i], [d, b, h], [t, d, b, h], [2, 0, 1, 3])
        } else {
            ([b, t, i], [b, d, h], [b, t, d, h], [1, 2, 0, 3])
        };
        let x = |v: &Option<Vec<f32>>| v.as_ref().map(|v| permute(v, &x_dims, &[1, 0, 2]));
        let state = |v: &Option<Vec<f32>>| v.as_ref().map(|v| permute(v, &state_dims, &[1, 0, 2]));
        let y = |v: &Option<Vec<f32>>| v.as_ref().map(|v| permute(v, &y_dims, &y_perm));
        let [fdx, fdw, fdr, fdb, fdh, fdc, fdp] = &self.fixture;
        OnnxGradCase {
            f: self.f.other_layout(),
            up: [y(&self.up[0]), state(&self.up[1]), state(&self.up[2])],
            fixture: [x(fdx), fdw.clone(), fdr.clone(), fdb.clone(), state(fdh), state(fdc), fdp.clone()],
        }
    }

    /// The Rust API's node for the case, written from the header (`+INFINITY` clip: no clipping).
    fn node(&self, backend: &'static Backend) -> OnnxLstm {
        let f = &self.f;
        let direction = [Direction::Forward, Direction::Reverse, Direction::Bidirectional][f.direction as usize];
        let layout = if f.layout == 1 { Layout::BatchMajor } else { Layout::SeqMajor };
        let acts = f.acts.iter().map(|&(c, a, b)| Activation::from_code(c, a, b).unwrap()).collect();
        let attrs = OnnxLstmAttrs::new(f.dims[3], direction)
            .layout(layout)
            .clip(f.clip.filter(|&c| c != f32::INFINITY))
            .input_forget(f.input_forget)
            .activations(acts);
        OnnxLstm::with_backend(attrs, f.dims[2], &f.w, &f.r, f.b.as_deref(), f.p.as_deref(), backend).unwrap()
    }

    /// The Rust API's forward outputs `[y, y_h, y_c]` and gradients `[dx, dw, dr, db, d_initial_h,
    /// d_initial_c, dp]` (`dp` empty without peepholes), as the C ABI must give them.
    fn rust(&self, backend: &'static Backend) -> ([Vec<f32>; 3], [Vec<f32>; 7]) {
        let f = &self.f;
        let [t, b, i, h] = f.dims;
        let d = if f.direction == 2 { 2 } else { 1 };
        let node = self.node(backend);
        let (lens, h0, c0) = (f.lens.as_deref(), f.h0.as_deref(), f.c0.as_deref());
        let (fwd, _) = node.forward_all(&f.x, t, b, lens, h0, c0, 1).unwrap();
        let mut tape = OnnxTape::new();
        let mut ws = Workspace::new();
        node.forward_train(&f.x, t, b, lens, h0, c0, Default::default(), &mut tape, 2, &mut ws).unwrap();
        let np = if f.p.is_some() { d * 3 * h } else { 0 };
        let mut g =
            [t * b * i, d * 4 * h * i, d * 4 * h * h, d * 8 * h, d * b * h, d * b * h, np].map(|n| vec![f32::NAN; n]);
        let [dx, dw, dr, db, dh, dc, dp] = &mut g;
        let up = OnnxUpstream { dy: self.up[0].as_deref(), dy_h: self.up[1].as_deref(), dy_c: self.up[2].as_deref() };
        let grads = OnnxGrads {
            dx: Some(dx),
            dw: Some(dw),
            dr: Some(dr),
            db: Some(db),
            d_initial_h: Some(dh),
            d_initial_c: Some(dc),
            dp: f.p.is_some().then_some(&mut dp[..]),
        };
        node.backward(&f.x, t, b, lens, h0, c0, &tape, up, grads, 1).unwrap();
        ([fwd.y, fwd.y_h, fwd.y_c], g)
    }

    fn write(&self, out: &mut String, backend: &'static Backend) {
        let f = &self.f;
        let [t, b, i, h] = f.dims;
        write!(out, "ograd {} {t} {b} {i} {h} {} {} {}", f.name, f.direction, f.layout, f.header).unwrap();
        let flags = [f.b.is_some(), f.lens.is_some(), f.h0.is_some(), f.c0.is_some(), f.p.is_some()]
            .into_iter()
            .chain(self.up.iter().map(Option::is_some));
        for flag in flags {
            write!(out, " {}", u8::from(flag)).unwrap();
        }
        let fixture_mask: u32 = self.fixture.iter().enumerate().map(|(k, v)| u32::from(v.is_some()) << k).sum();
        writeln!(out, " {fixture_mask} {:08x}", ONNX_GRAD_TOL.to_bits()).unwrap();
        write_f32s(out, &f.x);
        write_f32s(out, &f.w);
        write_f32s(out, &f.r);
        if let Some(v) = &f.b {
            write_f32s(out, v);
        }
        if let Some(l) = &f.lens {
            write_i32s(out, l);
        }
        for v in [&f.h0, &f.c0, &f.p].into_iter().chain(&self.up).flatten() {
            write_f32s(out, v);
        }
        let (fwd, grads) = self.rust(backend);
        // dp only with peepholes.
        for v in fwd.iter().chain(&grads[..6]).chain(f.p.is_some().then_some(&grads[6])) {
            write_f32s(out, v);
        }
        for v in self.fixture.iter().flatten() {
            write_f32s(out, v);
        }
    }
}

/// The `onnx_lstm_grad` fixtures and their other-layout twins; checks on the way that the Rust API is
/// within [`ONNX_GRAD_TOL`] of every fixture, so that a failure in C is the C ABI's.
fn onnx_grad_fixture_cases() -> Vec<OnnxGradCase> {
    let dir = root().join("tests/fixtures/onnx_grad");
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let mut cases = Vec::new();
    for path in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
        let j: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(j["kind"].as_str(), Some("onnx_lstm_grad"), "{}: kind", path.display());
        let case = OnnxGradCase::from_json(&j);
        for case in [case.clone(), case.other_layout()] {
            let (_, grads) = case.rust(kernel::selected());
            for (k, (got, want)) in grads.iter().zip(&case.fixture).enumerate() {
                let Some(want) = want else { continue };
                for (n, (&g, &e)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (g - e).abs() <= ONNX_GRAD_TOL * e.abs().max(1.0),
                        "{}: the Rust API's gradient {k} [{n}] = {g}, fixture {e}",
                        case.f.name
                    );
                }
            }
            cases.push(case);
        }
    }
    assert_eq!(cases.len(), 32, "expected the 16 onnx_lstm_grad fixtures in {}, twice", dir.display());
    let layouts = cases.iter().filter(|c| c.f.name.contains('@')).count();
    assert_eq!(layouts, 16);
    cases
}

/// The sizes of the seeded gradient problems (ONNX `[T,B,I,H]`, Keras `[B,T,I,H]`): small, empty batch,
/// sequence or input, H of 1 and past one vector block.
const GRAD_SHAPES: [[usize; 4]; 16] = [
    [5, 3, 2, 4],
    [7, 4, 3, 9],
    [6, 2, 1, 17],
    [4, 5, 4, 3],
    [9, 1, 2, 5],
    [3, 3, 3, 1],
    [4, 0, 2, 3],
    [0, 3, 2, 3],
    [5, 2, 0, 4],
    [6, 4, 2, 6],
    [8, 2, 3, 2],
    [5, 3, 2, 8],
    [3, 6, 2, 4],
    [1, 1, 1, 1],
    [6, 3, 3, 5],
    [4, 4, 2, 7],
];

/// Seeded problems over what the fixtures do not reach: every activation code with explicit and default
/// parameters, clip (+INFINITY too), input_forget, peepholes or none, lengths 0 and T or NULL, one half of
/// the initial state, no bias, empty batch / sequence / input, H past one vector block, every subset of
/// upstream gradients, both layouts, every direction.
fn generated_onnx_grad_cases() -> Vec<OnnxGradCase> {
    let mut rng = StdRng::seed_from_u64(0x0a11_9e7d);
    let mut cases = Vec::new();
    for (n, &[t, b, i, h]) in GRAD_SHAPES.iter().enumerate() {
        let mut values =
            |len: usize, scale: f32| -> Vec<f32> { (0..len).map(|_| rng.random_range(-scale..scale)).collect() };
        let direction = (n % 3) as i32;
        let layout = ((n / 3) % 2) as i32;
        let d = if direction == 2 { 2 } else { 1 };
        let x = values(t * b * i, 1.5);
        let w = values(d * 4 * h * i, 0.6);
        let r = values(d * 4 * h * h, 0.6);
        let bias = values(d * 8 * h, 0.4);
        let p = values(d * 3 * h, 0.4);
        let h0 = values(d * b * h, 1.0);
        let c0 = values(d * b * h, 1.0);
        let up = [values(t * d * b * h, 1.0), values(d * b * h, 1.0), values(d * b * h, 1.0)];
        // Activations: defaults, or 3 per direction cycling through every code, with parameters given or
        // NaN (the operator's default); bounded choices where an unbounded g or h would blow up.
        let acts: Vec<(i32, f32, f32)> = if n % 4 == 0 {
            Vec::new()
        } else {
            (0..3 * d)
                .map(|k| {
                    let code = ((n * 3 + k) % 11) as i32;
                    let (alpha, beta) = match code {
                        3 => (0.7, 0.1),                         // Affine (ORT default 0, 0)
                        6 => (1.2, 0.8),                         // ScaledTanh (ORT default 0, 0)
                        5 => (0.3, f32::NAN),                    // ThresholdedRelu
                        7 if k % 2 == 0 => (f32::NAN, f32::NAN), // HardSigmoid 0.2, 0.5
                        7 => (0.3, 0.45),
                        4 | 8 => ([f32::NAN, 0.2][k % 2], f32::NAN), // LeakyRelu, Elu
                        _ => (f32::NAN, f32::NAN),
                    };
                    (code, alpha, beta)
                })
                .collect()
        };
        let clip = match n % 5 {
            1 => Some(1.5),
            3 => Some(f32::INFINITY),
            _ => None,
        };
        let lens = (n % 4 != 3).then(|| (0..b).map(|s| [t, 0, t / 2, 1][(s + n) % 4].min(t) as i32).collect());
        let init = n % 4; // 0 none, 1 both, 2 h only, 3 c only
        let ups = rng.random_range(0..8_u32);
        let mut k = 0;
        let up = up.map(|v| {
            k += 1;
            ((ups >> (k - 1)) & 1 == 1 || n == 0).then_some(v)
        });
        let input_forget = n % 5 == 2;
        let f = OnnxFixture {
            name: format!("generated_{n}_t{t}_b{b}_i{i}_h{h}_dir{direction}_layout{layout}"),
            dims: [t, b, i, h],
            direction,
            layout,
            header: onnx_header(input_forget, clip, &acts),
            input_forget,
            clip,
            acts,
            x,
            w,
            r,
            b: (n % 6 != 4).then_some(bias),
            lens,
            h0: (init == 1 || init == 2).then_some(h0),
            c0: (init == 1 || init == 3).then_some(c0),
            p: (n % 3 != 1).then_some(p),
            y: None,
            y_h: None,
            y_c: None,
        };
        cases.push(OnnxGradCase { f, up, fixture: Default::default() });
    }
    let directions: Vec<(i32, i32)> = cases.iter().map(|c| (c.f.direction, c.f.layout)).collect();
    for dir in 0..3 {
        for layout in 0..2 {
            assert!(directions.contains(&(dir, layout)), "no generated case of direction {dir}, layout {layout}");
        }
    }
    cases
}

fn write_onnx_train_cases(dir: &Path, valgrind: bool) -> PathBuf {
    let mut out = String::new();
    for case in onnx_grad_fixture_cases().iter().chain(&generated_onnx_grad_cases()) {
        case.write(&mut out, c_backend(valgrind));
    }
    out.push_str("end\n");
    let path = dir.join("onnx_train_cases.txt");
    fs::write(&path, out).unwrap();
    path
}

#[cfg(unix)]
#[test]
fn c_onnx_train_program_matches_the_rust_api_the_fixtures_and_the_contract() {
    let dir = scratch("onnx_train");
    let exe = compile_c(&dir, "onnx_train_test");
    let cases = write_onnx_train_cases(&dir, false);
    let (ok, text) = run(Command::new(&exe).arg(&cases));
    assert!(ok, "the C test failed:\n{text}");
    check_summary(&text);
    println!("{text}");
    let _ = fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn c_onnx_train_program_under_valgrind() {
    // "quick": each case once per path, so that the run fits valgrind's time budget.
    under_valgrind(
        "onnx_train_valgrind",
        |dir| (compile_c(dir, "onnx_train_test"), write_onnx_train_cases(dir, true)),
        &["quick"],
    );
}

// ------------------------------------------------------------------ GRU / RNN training (gradients) cases

/// Tolerance of the C ABI's float32 GRU / RNN gradients against float64 ones (Keras' fixtures, the ONNX
/// reference backward): `|g - e| <= TOL * max(1, |e|)`, as tests/suite/keras_gru_rnn_grad.rs.
const H_GRAD_TOL: f32 = 1e-4;

/// The attributes of a GRU / RNN training case, by framework.
#[derive(Clone)]
enum HCfg {
    Onnx {
        direction: i32,
        layout: i32,
        linear_before_reset: bool,
        clip: Option<f32>,
        acts: Vec<(i32, f32, f32)>,
    },
    Keras {
        go_backwards: bool,
        zero_output_for_mask: bool,
        act: i32,
        ract: i32,
        alpha: f32,
        beta: f32,
        reset_after: bool,
    },
}

/// One case of `tests/c/gru_train_test.c`: a GRU or RNN problem (ONNX `[T,B,I,H]`, Keras `[B,T,I,H]`),
/// its upstream gradients, and float64 gradients to be within [`H_GRAD_TOL`] of (a Keras gradient
/// fixture's, or the ONNX reference backward's).
struct HGradCase {
    name: String,
    gru: bool,
    cfg: HCfg,
    dims: [usize; 4],
    x: Vec<f32>,
    w: Vec<f32>,
    r: Vec<f32>,
    bias: Option<Vec<f32>>,
    lens: Option<Vec<i32>>,
    mask: Option<Vec<u8>>,
    h0: Option<Vec<f32>>,
    /// ONNX: dy, dy_h; Keras: dy, d_last_output, d_h_n.
    up: Vec<Option<Vec<f32>>>,
    /// dx, dw / d_kernel, dr / d_recurrent_kernel, db / d_bias, d_initial_h (each where known).
    oracle: [Option<Vec<f32>>; 5],
}

impl HGradCase {
    fn onnx(&self) -> bool {
        matches!(self.cfg, HCfg::Onnx { .. })
    }

    /// 0 ONNX GRU, 1 ONNX RNN, 2 Keras GRU, 3 Keras SimpleRNN.
    fn kind(&self) -> usize {
        usize::from(!self.gru) + if self.onnx() { 0 } else { 2 }
    }

    /// `D`, the gate blocks `G`, and the bias rows (ONNX `2` per direction; Keras GRU `reset_after`: 2).
    fn blocks(&self) -> (usize, usize, usize) {
        let g = if self.gru { 3 } else { 1 };
        match &self.cfg {
            HCfg::Onnx { direction, .. } => (if *direction == 2 { 2 } else { 1 }, g, 2),
            HCfg::Keras { reset_after, .. } => (1, g, if self.gru && *reset_after { 2 } else { 1 }),
        }
    }

    /// The element counts of `x`, `w`, `r`, the bias, a state, `y`.
    fn sizes(&self) -> [usize; 6] {
        let (d, g, rows) = self.blocks();
        let [a, b, i, h] = self.dims;
        let (bs, t) = if self.onnx() { (b, a) } else { (a, b) };
        [bs * t * i, d * g * h * i, d * g * h * h, d * rows * g * h, d * bs * h, t * d * bs * h]
    }

    /// The Rust API's forward outputs (ONNX `[Y, Y_h]`, Keras `[y, last_output, h_n]`) and gradients `[dx,
    /// dw, dr, db, d_initial_h]`, on `backend`, as the C ABI must give them.
    fn rust(&self, backend: &'static Backend) -> (Vec<Vec<f32>>, [Vec<f32>; 5]) {
        let [nx, nw, nr, nb, ns, ny] = self.sizes();
        let mut g = [nx, nw, nr, nb, ns].map(|n| vec![f32::NAN; n]);
        let [dx, dw, dr, db, dh] = &mut g;
        let mut tape_k = KerasTape::new();
        let mut tape_o = OnnxTape::new();
        let ws = &mut Workspace::new();
        let (h0, bias) = (self.h0.as_deref(), self.bias.as_deref());
        let up = |k: usize| self.up.get(k).and_then(|v| v.as_deref());
        match &self.cfg {
            HCfg::Onnx { direction, layout, linear_before_reset, clip, acts } => {
                let [t, b, i, h] = self.dims;
                let dir = [Direction::Forward, Direction::Reverse, Direction::Bidirectional][*direction as usize];
                let layout = if *layout == 1 { Layout::BatchMajor } else { Layout::SeqMajor };
                let acts: Vec<Activation> =
                    acts.iter().map(|&(c, a, bb)| Activation::from_code(c, a, bb).unwrap()).collect();
                let clip = clip.filter(|&c| c != f32::INFINITY);
                let lens = self.lens.as_deref();
                let mut fwd = vec![vec![f32::NAN; ny], vec![f32::NAN; ns]];
                let [y, y_h] = &mut fwd[..] else { unreachable!() };
                let out = OnnxOutputs { y: Some(y), y_h: Some(y_h), y_c: None };
                let upstream = OnnxUpstream { dy: up(0), dy_h: up(1), dy_c: None };
                let grads = OnnxGrads {
                    dx: Some(dx),
                    dw: Some(dw),
                    dr: Some(dr),
                    db: Some(db),
                    d_initial_h: Some(dh),
                    d_initial_c: None,
                    dp: None,
                };
                if self.gru {
                    let a = OnnxGruAttrs::new(h, dir)
                        .layout(layout)
                        .clip(clip)
                        .linear_before_reset(*linear_before_reset)
                        .activations(acts);
                    let node = OnnxGru::with_backend(a, i, &self.w, &self.r, bias, backend).unwrap();
                    node.forward_train(&self.x, t, b, lens, h0, out, &mut tape_o, 2, ws).unwrap();
                    node.backward(&self.x, t, b, lens, h0, &tape_o, upstream, grads, 1).unwrap();
                } else {
                    let a = OnnxRnnAttrs::new(h, dir).layout(layout).clip(clip).activations(acts);
                    let node = OnnxRnn::with_backend(a, i, &self.w, &self.r, bias, backend).unwrap();
                    node.forward_train(&self.x, t, b, lens, h0, out, &mut tape_o, 2, ws).unwrap();
                    node.backward(&self.x, t, b, lens, h0, &tape_o, upstream, grads, 1).unwrap();
                }
                (fwd, g)
            }
            HCfg::Keras { go_backwards, zero_output_for_mask, act, ract, alpha, beta, reset_after } => {
                let [b, t, i, h] = self.dims;
                let view = match &self.mask {
                    Some(m) => SeqView::from_mask_bytes(m, b, t).unwrap(),
                    None => SeqView::full(b, t),
                };
                let mut fwd = vec![vec![f32::NAN; ny], vec![f32::NAN; ns], vec![f32::NAN; ns]];
                let [y, last, h_n] = &mut fwd[..] else { unreachable!() };
                let out = KerasOutputs { y: Some(y), last_output: Some(last), h_n: Some(h_n), c_n: None };
                let upstream = KerasUpstream { dy: up(0), d_last_output: up(1), d_h_n: up(2), d_c_n: None };
                let grads = KerasGrads {
                    dx: Some(dx),
                    d_kernel: Some(dw),
                    d_recurrent_kernel: Some(dr),
                    d_bias: Some(db),
                    d_initial_h: Some(dh),
                    d_initial_c: None,
                };
                let activation = keras_code_activation(*act, f32::NAN, f32::NAN);
                if self.gru {
                    let options = KerasGruOptions::default()
                        .activation(activation)
                        .recurrent_activation(keras_code_activation(*ract, *alpha, *beta))
                        .reset_after(*reset_after)
                        .go_backwards(*go_backwards)
                        .zero_output_for_mask(*zero_output_for_mask);
                    let weights = GruWeights::from_keras(i, h, &self.w, &self.r, bias, *reset_after).unwrap();
                    let layer = KerasGru::with_backend(weights, options, backend).unwrap();
                    layer.forward_train(&self.x, &view, h0, out, &mut tape_k, 2, ws).unwrap();
                    layer.backward(&self.x, &view, h0, &tape_k, upstream, grads, 1).unwrap();
                } else {
                    let options = KerasRnnOptions::default()
                        .activation(activation)
                        .go_backwards(*go_backwards)
                        .zero_output_for_mask(*zero_output_for_mask);
                    let weights = RnnWeights::from_keras(i, h, &self.w, &self.r, bias).unwrap();
                    let layer = KerasSimpleRnn::with_backend(weights, options, backend).unwrap();
                    layer.forward_train(&self.x, &view, h0, out, &mut tape_k, 2, ws).unwrap();
                    layer.backward(&self.x, &view, h0, &tape_k, upstream, grads, 1).unwrap();
                }
                (fwd, g)
            }
        }
    }

    /// The Rust API's gradients within [`H_GRAD_TOL`] of the oracle, so that a failure in C is the C ABI's;
    /// returns the worst `|g - e| / max(1, |e|)`.
    fn check_rust_against_oracle(&self) -> f32 {
        let (_, grads) = self.rust(kernel::selected());
        let mut worst = 0.0_f32;
        for (k, (got, want)) in grads.iter().zip(&self.oracle).enumerate() {
            let Some(want) = want else { continue };
            assert_eq!(got.len(), want.len(), "{}: gradient {k} length", self.name);
            for (n, (&g, &e)) in got.iter().zip(want).enumerate() {
                let err = (g - e).abs() / e.abs().max(1.0);
                assert!(err <= H_GRAD_TOL, "{}: the Rust API's gradient {k} [{n}] = {g}, oracle {e}", self.name);
                worst = worst.max(err);
            }
        }
        worst
    }

    fn write(&self, out: &mut String, backend: &'static Backend) {
        let [d0, d1, d2, d3] = self.dims;
        write!(out, "hgrad {} {} {d0} {d1} {d2} {d3}", self.name, self.kind()).unwrap();
        match &self.cfg {
            HCfg::Onnx { direction, layout, linear_before_reset, clip, acts } => {
                write!(out, " {direction} {layout} {}", u8::from(*linear_before_reset)).unwrap();
                write!(out, " {} {:08x} {}", u8::from(clip.is_some()), clip.unwrap_or(f32::NAN).to_bits(), acts.len())
                    .unwrap();
                let mut params = [(1, f32::NAN, f32::NAN); 4];
                params[..acts.len()].copy_from_slice(acts);
                for (c, _, _) in params {
                    write!(out, " {c}").unwrap();
                }
                for v in params.iter().map(|p| p.1).chain(params.iter().map(|p| p.2)) {
                    write!(out, " {:08x}", v.to_bits()).unwrap();
                }
            }
            HCfg::Keras { go_backwards, zero_output_for_mask, act, ract, alpha, beta, reset_after } => {
                let (gb, z, ra) = (u8::from(*go_backwards), u8::from(*zero_output_for_mask), u8::from(*reset_after));
                write!(out, " {gb} {z} {act} {ract} {:08x} {:08x} {ra}", alpha.to_bits(), beta.to_bits()).unwrap();
            }
        }
        let steps = self.lens.is_some() || self.mask.is_some();
        for f in [self.bias.is_some(), steps, self.h0.is_some()] {
            write!(out, " {}", u8::from(f)).unwrap();
        }
        for k in 0..3 {
            write!(out, " {}", u8::from(self.up.get(k).is_some_and(Option::is_some))).unwrap();
        }
        let oracle_mask: u32 = self.oracle.iter().enumerate().map(|(k, v)| u32::from(v.is_some()) << k).sum();
        writeln!(out, " {oracle_mask} {:08x}", H_GRAD_TOL.to_bits()).unwrap();
        for v in [Some(&self.x), Some(&self.w), Some(&self.r), self.bias.as_ref()].into_iter().flatten() {
            write_f32s(out, v);
        }
        if let Some(l) = &self.lens {
            write_i32s(out, l);
        }
        if let Some(m) = &self.mask {
            write!(out, "{}", m.len()).unwrap();
            for v in m {
                write!(out, " {v}").unwrap();
            }
            out.push('\n');
        }
        let (fwd, grads) = self.rust(backend);
        let given = [&self.h0].into_iter().chain(&self.up).flatten();
        for v in given.chain(&fwd).chain(&grads).chain(self.oracle.iter().flatten()) {
            write_f32s(out, v);
        }
    }
}

/// The Keras GRU / SimpleRNN gradient fixtures (Keras 3, float64 `GradientTape`), but those whose
/// `activation` is Keras 3's hard_sigmoid: `MrnnKerasRnnAttrs` / `MrnnKerasGruAttrs` (fixed by the contract)
/// give `activation` its Keras 2 parameters and have no field for others. Returns the cases and the
/// names skipped.
fn keras_h_grad_fixture_cases() -> (Vec<HGradCase>, Vec<String>) {
    let (mut cases, mut skipped) = (Vec::new(), Vec::new());
    for (gru, dir, kind) in [(true, "keras_gru", "keras_gru_grad"), (false, "keras_rnn", "keras_rnn_grad")] {
        let g = if gru { 3 } else { 1 };
        for path in json_files(&root().join("tests/fixtures").join(dir)) {
            let j: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
            if j["kind"].as_str() != Some(kind) {
                continue;
            }
            let name = j["name"].as_str().unwrap().to_string();
            let flavor = j["hard_sigmoid_flavor"].as_str().unwrap_or("keras3");
            let act_name = j["activation"].as_str().unwrap();
            if act_name == "hard_sigmoid" && flavor != "keras2" {
                skipped.push(name);
                continue;
            }
            let (b, t, i, h) =
                (usize_of(&j, "batch"), usize_of(&j, "time"), usize_of(&j, "input"), usize_of(&j, "hidden"));
            let (act, _, _) = activation(act_name, flavor, false);
            let (ract, alpha, beta) = match j["recurrent_activation"].as_str() {
                Some(r) => activation(r, flavor, true),
                None => (0, f32::NAN, f32::NAN),
            };
            let reset_after = j["reset_after"].as_bool().unwrap_or(false);
            let nb = if gru && reset_after { 2 * 3 * h } else { g * h };
            let mask: Vec<u8> = j["mask"].as_array().unwrap().iter().map(|m| m.as_u64().unwrap() as u8).collect();
            cases.push(HGradCase {
                name,
                gru,
                cfg: HCfg::Keras {
                    go_backwards: j["go_backwards"].as_bool().unwrap(),
                    zero_output_for_mask: j["zero_output_for_mask"].as_bool().unwrap(),
                    act,
                    ract,
                    alpha,
                    beta,
                    reset_after,
                },
                dims: [b, t, i, h],
                x: f32s_of(&j, "x", b * t * i),
                w: f32s_of(&j, "kernel", i * g * h),
                r: f32s_of(&j, "recurrent_kernel", h * g * h),
                bias: optional_f32s(&j, "bias", nb),
                lens: None,
                // An all-valid mask is passed as NULL, to cover that path against Keras too.
                mask: mask.contains(&0).then_some(mask),
                h0: optional_f32s(&j, "initial_h", b * h),
                up: vec![
                    optional_f32s(&j, "dy", b * t * h),
                    optional_f32s(&j, "d_last_output", b * h),
                    optional_f32s(&j, "d_h_n", b * h),
                ],
                oracle: [
                    optional_f32s(&j, "dx", b * t * i),
                    optional_f32s(&j, "d_kernel", i * g * h),
                    optional_f32s(&j, "d_recurrent_kernel", h * g * h),
                    optional_f32s(&j, "d_bias", nb),
                    optional_f32s(&j, "d_initial_h", b * h),
                ],
            });
        }
    }
    (cases, skipped)
}

/// Seeded problems over what the Keras fixtures do not reach (the upstream subsets, no bias, no mask, empty
/// batch / sequence / input, H past one vector block, every activation code) and every ONNX GRU / RNN
/// case: directions, layouts, `linear_before_reset`, clip (+INFINITY too), lengths (0, T, NULL), explicit
/// activations; the ONNX ones with the float64 reference backward as oracle.
fn generated_h_grad_cases() -> Vec<HGradCase> {
    let mut rng = StdRng::seed_from_u64(0x9e7_0bac);
    let mut cases = Vec::new();
    for kind in 0..4_usize {
        for (n, &dims) in GRAD_SHAPES.iter().enumerate() {
            let mut values =
                |len: usize, scale: f32| -> Vec<f32> { (0..len).map(|_| rng.random_range(-scale..scale)).collect() };
            let (gru, onnx) = (kind % 2 == 0, kind < 2);
            let cfg = if onnx {
                let direction = ((n + kind) % 3) as i32;
                let d = if direction == 2 { 2 } else { 1 };
                // Bounded activations (the reference's tolerance holds for them), explicit every other case.
                let per = if gru { 2 } else { 1 };
                let choice: [(i32, f32, f32); 5] = [
                    (0, f32::NAN, f32::NAN),
                    (1, f32::NAN, f32::NAN),
                    (9, f32::NAN, f32::NAN),
                    (7, 0.3, 0.45),
                    (6, 1.2, 0.8),
                ];
                let acts = if n % 2 == 0 { Vec::new() } else { (0..per * d).map(|k| choice[(n + k) % 5]).collect() };
                HCfg::Onnx {
                    direction,
                    layout: ((n / 2) % 2) as i32,
                    linear_before_reset: gru && n % 3 != 1,
                    clip: [None, Some(1.5), None, Some(f32::INFINITY)][n % 4],
                    acts,
                }
            } else {
                // Every Keras activation code once; HardSigmoid as recurrent with explicit parameters.
                HCfg::Keras {
                    go_backwards: n % 3 == 1,
                    zero_output_for_mask: n % 4 == 2,
                    act: [1, 0, 2, 3, 9, 10, 8, 6, 1, 4, 5, 1][n % 12],
                    ract: if n % 3 == 0 { 7 } else { 0 },
                    alpha: if n % 6 == 0 { 0.3 } else { f32::NAN },
                    beta: if n % 6 == 0 { 0.45 } else { f32::NAN },
                    reset_after: n % 2 == 0,
                }
            };
            let mut case = HGradCase {
                name: String::new(),
                gru,
                cfg,
                dims,
                x: Vec::new(),
                w: Vec::new(),
                r: Vec::new(),
                bias: None,
                lens: None,
                mask: None,
                h0: None,
                up: Vec::new(),
                oracle: Default::default(),
            };
            let [nx, nw, nr, nb, ns, ny] = case.sizes();
            let (bs, t) = if onnx { (dims[1], dims[0]) } else { (dims[0], dims[1]) };
            case.name = format!("generated_kind{kind}_{n}_{}x{}x{}x{}", dims[0], dims[1], dims[2], dims[3]);
            case.x = values(nx, 1.5);
            case.w = values(nw, 0.6);
            case.r = values(nr, 0.6);
            let bias = values(nb, 0.4);
            case.bias = (n % 5 != 3).then_some(bias);
            let h0 = values(ns, 1.0);
            case.h0 = (n % 3 != 2).then_some(h0);
            if onnx {
                case.lens =
                    (n % 4 != 3).then(|| (0..bs).map(|s| [t, 0, t / 2, 1][(s + n) % 4].min(t) as i32).collect());
            } else if n % 4 != 3 {
                case.mask = Some((0..bs * t).map(|k| u8::from(k % 5 != 2 && (k / t.max(1)) != 1)).collect());
            }
            let ups = (values(1, 4.0)[0] + 4.0) as u32 | (u32::from(n == 0) * 7);
            let up_sizes: &[usize] = if onnx { &[ny, ns] } else { &[ny, ns, ns] };
            case.up =
                up_sizes.iter().enumerate().map(|(k, &len)| ((ups >> k) & 1 == 1).then(|| values(len, 1.0))).collect();
            if let HCfg::Onnx { .. } = case.cfg {
                case.oracle = onnx_reference_grads(&case);
            }
            cases.push(case);
        }
    }
    cases
}

/// The float64 reference backward's gradients of an ONNX case (`OnnxGru::backward_reference`, ...).
fn onnx_reference_grads(c: &HGradCase) -> [Option<Vec<f32>>; 5] {
    let HCfg::Onnx { direction, layout, linear_before_reset, clip, acts } = &c.cfg else { unreachable!() };
    let [t, b, i, h] = c.dims;
    let dir = [Direction::Forward, Direction::Reverse, Direction::Bidirectional][*direction as usize];
    let layout = if *layout == 1 { Layout::BatchMajor } else { Layout::SeqMajor };
    let acts: Vec<Activation> = acts.iter().map(|&(code, a, bb)| Activation::from_code(code, a, bb).unwrap()).collect();
    let clip = clip.filter(|&v| v != f32::INFINITY);
    let up = OnnxUpstream { dy: c.up[0].as_deref(), dy_h: c.up[1].as_deref(), dy_c: None };
    let (lens, h0, bias) = (c.lens.as_deref(), c.h0.as_deref(), c.bias.as_deref());
    let g = if c.gru {
        let a = OnnxGruAttrs::new(h, dir)
            .layout(layout)
            .clip(clip)
            .linear_before_reset(*linear_before_reset)
            .activations(acts);
        OnnxGru::new(a, i, &c.w, &c.r, bias).unwrap().backward_reference(&c.x, t, b, lens, h0, up).unwrap()
    } else {
        let a = OnnxRnnAttrs::new(h, dir).layout(layout).clip(clip).activations(acts);
        OnnxRnn::new(a, i, &c.w, &c.r, bias).unwrap().backward_reference(&c.x, t, b, lens, h0, up).unwrap()
    };
    [Some(g.dx), Some(g.dw), Some(g.dr), Some(g.db), Some(g.d_initial_h)]
}

/// Writes `gru_train_test.c`'s cases file; returns it and a summary (case counts, fixtures skipped, the
/// worst error of the Rust API against the oracles).
fn write_gru_train_cases(dir: &Path, valgrind: bool) -> (PathBuf, String) {
    let (fixtures, skipped) = keras_h_grad_fixture_cases();
    let generated = generated_h_grad_cases();
    let gru = fixtures.iter().filter(|c| c.gru).count();
    assert!(
        gru >= 15 && fixtures.len() - gru >= 15,
        "Keras GRU / SimpleRNN gradient fixtures: {gru}, {}",
        fixtures.len() - gru
    );
    assert_eq!(skipped, ["rnn_grad_hard_sigmoid_keras3"], "fixtures the attributes cannot express");
    let mut worst = [0.0_f32; 2];
    let mut out = String::new();
    for case in fixtures.iter().chain(&generated) {
        let err = case.check_rust_against_oracle();
        let k = usize::from(case.onnx());
        worst[k] = worst[k].max(err);
        case.write(&mut out, c_backend(valgrind));
    }
    out.push_str("end\n");
    let path = dir.join("gru_train_cases.txt");
    fs::write(&path, out).unwrap();
    let summary = format!(
        "Keras gradient fixtures: {} (GRU {gru}), skipped (Keras 3 hard_sigmoid as `activation`): {skipped:?}; \
         generated: {}; worst relative error of the Rust API: Keras fixtures {:.2e}, ONNX reference {:.2e}",
        fixtures.len(),
        generated.len(),
        worst[0],
        worst[1]
    );
    (path, summary)
}

#[cfg(unix)]
#[test]
fn c_gru_train_program_matches_the_rust_api_the_oracles_and_the_contract() {
    run_c_program("gru_train", "gru_train_test", |dir| write_gru_train_cases(dir, false));
}

#[cfg(unix)]
#[test]
fn c_gru_train_program_under_valgrind() {
    // "quick": each case once per path, so that the run fits valgrind's time budget.
    under_valgrind(
        "gru_train_valgrind",
        |dir| (compile_c(dir, "gru_train_test"), write_gru_train_cases(dir, true).0),
        &["quick"],
    );
}
