//! The C ABI from C: `tests/c/capi_test.c`, compiled with the system C compiler against the crate's
//! staticlib, checks `mrnn_lstm_keras` and `mrnn_mask_from_value` against the Keras golden fixtures
//! (converted here from JSON to a plain text file the C program can read) and the error contract.
//! Also: the header compiled as C++, an optional run under valgrind, and seeded replay of
//! `masked_rnn::capi::fuzz_capi`.
//!
//! Cargo builds the package's staticlib next to the rlib before it runs integration tests, in
//! `target/<profile>/deps/`, the directory holding this test's executable (see [`staticlib`]).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Compiles the C test into `dir`; returns the executable.
fn compile_c_test(dir: &Path) -> PathBuf {
    let cc = tool("CC", "cc");
    assert!(available(&cc), "no C compiler: {cc:?} (set CC)");
    let exe = dir.join("capi_test");
    let (ok, text) = run(Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(root().join("tests/c/capi_test.c"))
        .arg(staticlib())
        .args(native_libs())
        .arg("-o")
        .arg(&exe));
    assert!(ok, "compiling tests/c/capi_test.c failed:\n{text}");
    exe
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
         int main() { MrnnKerasLstmAttrs a; return mrnn_keras_lstm_attrs_init(&a) + (mrnn_version() == 0); }\n",
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

/// The C test under valgrind, when it is installed: reads or writes out of bounds in the library or the
/// test fail it. Skipped (loudly) if valgrind is missing, `MRNN_SKIP_VALGRIND` is set, or the run does
/// not finish within the time budget, so it can neither hang nor flake.
#[cfg(unix)]
#[test]
fn c_program_under_valgrind() {
    if std::env::var_os("MRNN_SKIP_VALGRIND").is_some() || !available("valgrind") {
        eprintln!("SKIPPED: valgrind not available (or MRNN_SKIP_VALGRIND set)");
        return;
    }
    let dir = scratch("valgrind");
    let exe = compile_c_test(&dir);
    let cases = write_cases(&dir);
    let log = dir.join("valgrind.log");
    let mut child = Command::new("valgrind")
        .args(["--quiet", "--error-exitcode=99", "--leak-check=no"])
        .arg(&exe)
        .arg(&cases)
        .arg(env!("CARGO_PKG_VERSION"))
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
