#!/usr/bin/env python3
"""Time one masked LSTM or GRU training step of masked-rnn against PyTorch and Keras/TensorFlow.

A training step is the forward pass (with whatever the framework keeps for the backward), the loss over
the valid steps, the backward and an Adam update. Every framework gets the same zero-padded batch, the
same lengths, targets and initial weights (a counter-based generator shared with
examples/train_step.rs, checked by checksums), and each (framework, workload, threads) cell runs in its
own process. The gradients of the first step, at the initial weights, are checked against each other
and against a float64 PyTorch reference. See bench/README.md.

    /opt/mrnn-venv/bin/python bench/compare_train.py                 # everything
    python3 bench/compare_train.py --quick --workloads seed_fit      # smoke test

Only numpy is required; a framework that is not installed is skipped with a message.
"""

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

try:
    import numpy as np
except ImportError:
    sys.stderr.write("compare_train.py needs numpy (pip install numpy); the frameworks themselves are optional.\n")
    sys.exit(2)

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
CRATE_DIR = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)
import compare as fwd  # noqa: E402  (the forward harness: idle guard, CPU readings, versions, formatting)

SEED = 20240607  # examples/train_step.rs: SEED

# name: batch, time, input, stacked hidden sizes, (min length, max length), Masking layer first,
# time slice x[:, slice:] after the recurrent layers (mask carried), loss; cell "lstm" unless given, the
# GRU with Keras' reset_after (False: the ONNX default placement of the reset gate, which PyTorch does not
# compute, so its runners skip that workload)
WORKLOADS = {
    "seed_fit": dict(B=15, T=362, I=24, H=[128, 64, 1], lens=(90, 362), masking=True, slice=5, loss="mae"),
    "mid_fit": dict(B=64, T=256, I=256, H=[256], lens=(32, 256), masking=False, slice=0, loss="mse"),
    "gru_mid_fit": dict(B=64, T=256, I=256, H=[256], lens=(32, 256), masking=False, slice=0, loss="mse", cell="gru",
                        reset_after=False),
    "gru_torch_fit": dict(B=64, T=256, I=256, H=[256], lens=(32, 256), masking=False, slice=0, loss="mse",
                          cell="gru", reset_after=True),
}


def cell_of(w):
    """(cell, reset_after) of a workload."""
    return w.get("cell", "lstm"), bool(w.get("reset_after", False))


def torch_computes(w):
    """PyTorch's GRU places the reset gate after the recurrent matmul (Keras reset_after=True) only."""
    cell, reset_after = cell_of(w)
    return cell == "lstm" or reset_after


def keras_to_torch_gru(m, h):
    """GRU gate blocks along the last axis: Keras z, r, h <-> PyTorch r, z, n (the same swap both ways)."""
    return np.concatenate([m[..., h:2 * h], m[..., :h], m[..., 2 * h:]], axis=-1)

FRAMEWORKS = ["masked-rnn", "torch-padded", "torch-packed", "keras"]
LABELS = {"masked-rnn": "masked-rnn", "torch-padded": "torch padded", "torch-packed": "torch packed",
          "keras": "Keras/TF", "torch-f64": "torch packed float64"}
REQUIRES = {"masked-rnn": [], "torch-padded": ["torch"], "torch-packed": ["torch"], "keras": ["tensorflow", "keras"]}
GRAD_TOL = 1e-3  # max |g - g_ref| / max |g_ref| per tensor
LOSS_TOL = 1e-5  # relative


# ----------------------------------------------------------------------------------------------
# Data: the generator of examples/train_step.rs, repeated in numpy


def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _draw(stream, n):
    """Draws 0..n of a stream: mix(SEED + stream * C1 + (k + 1) * C2), all mod 2^64."""
    base = (SEED + stream * 0xD1B54A32D192ED03) % 2 ** 64
    k = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _mix(np.uint64(base) + k * np.uint64(0x9E3779B97F4A7C15))


def gen_uniform(stream, shape, lo, hi):
    """Uniform in [lo, hi): lo + (hi - lo) * u in float64 (u = top 24 bits / 2^24), rounded to float32."""
    n = int(np.prod(shape))
    u = (_draw(stream, n) >> np.uint64(40)).astype(np.float64) / 16777216.0
    return (lo + (hi - lo) * u).astype(np.float32).reshape(shape)


def gen_integers(stream, n, lo, hi):
    return (lo + (_draw(stream, n) % np.uint64(hi - lo + 1)).astype(np.int64)).astype(np.int64)


def bits_sum(a):
    return int(np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64).sum())


def make_data(w):
    """x [B,T,I] (zeros at the padding), lengths, mask, targets of the output, weights in Keras layout."""
    B, T, I = w["B"], w["T"], w["I"]
    lens = gen_integers(1, B, *w["lens"])
    mask = np.arange(T)[None, :] < lens[:, None]
    x = gen_uniform(2, (B, T, I), -1.0, 1.0)
    x[~mask] = 0.0
    layers, n_in = [], I
    sums = {"lengths": int(lens.sum()), "x": bits_sum(x)}
    cell, reset_after = cell_of(w)
    g = 4 if cell == "lstm" else 3
    for l, h in enumerate(w["H"]):
        s = 1.0 / math.sqrt(h)
        st = 10 + 3 * l
        bias_shape = (2, 3 * h) if reset_after else (g * h,)
        k, r, b = (gen_uniform(st, (n_in, g * h), -s, s), gen_uniform(st + 1, (h, g * h), -s, s),
                   gen_uniform(st + 2, bias_shape, -s, s))
        sums.update({"kernel%d" % l: bits_sum(k), "recurrent%d" % l: bits_sum(r), "bias%d" % l: bits_sum(b)})
        layers.append((k, r, b))
        n_in = h
    y = gen_uniform(3, (B, T - w["slice"], w["H"][-1]), -0.5, 0.5)
    sums["y"] = bits_sum(y)
    assert np.all(np.any(x != 0.0, axis=-1) == mask), "a valid step is all zeros: Masking(0.0) would mask it"
    return dict(x=x, lengths=lens, mask=mask, y=y, layers=layers, checksums=sums, slice=w["slice"], loss=w["loss"],
                masking=w["masking"], cell=cell, reset_after=reset_after)


def save_data(path, d):
    arrays = dict(x=d["x"], lengths=d["lengths"], mask=d["mask"], y=d["y"])
    for n, (k, r, b) in enumerate(d["layers"]):
        arrays["k%d" % n], arrays["r%d" % n], arrays["b%d" % n] = k, r, b
    np.savez(path, **arrays)


def load_data(path, meta):
    z = np.load(path)
    layers, n = [], 0
    while "k%d" % n in z:
        layers.append((z["k%d" % n], z["r%d" % n], z["b%d" % n]))
        n += 1
    return dict(x=z["x"], lengths=z["lengths"], mask=z["mask"], y=z["y"], layers=layers, **meta)


# ----------------------------------------------------------------------------------------------
# Runners. Each prepare_* returns (step, info, loss0, grads0): step() is one timed training step; loss0
# and grads0 (Keras layout, per layer kernel [I,4H], recurrent [H,4H], bias [4H]) are those of the first
# step at the initial weights.


def example_path():
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(CRATE_DIR, "target")
    return os.path.join(target, "release", "examples", "train_step")


def build_example(no_build):
    if not no_build:
        cargo = shutil.which("cargo")
        if cargo is None:
            print("masked-rnn: cargo not found, not building", flush=True)
        else:
            print("masked-rnn: cargo build --release --example train_step ...", flush=True)
            r = subprocess.run([cargo, "build", "--release", "--example", "train_step"], cwd=CRATE_DIR,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if r.returncode != 0:
                print("masked-rnn: cargo build failed:\n" + r.stdout[-3000:], flush=True)
    path = example_path()
    if not os.path.exists(path):
        print("masked-rnn: %s not found; skipping masked-rnn" % path, flush=True)
        return None
    return path


def run_masked_rnn(spec, data):
    """The example binary does the whole cell (check step, warm-up, timed steps) in its own process."""
    grads_path = spec["out"] + ".grads.bin"
    quick = spec["quick"]
    cmd = [spec["exe"], spec["workload"], "--threads", str(spec["threads"]), "--budget", str(spec["budget_s"]),
           "--steps", "5" if quick else "20", "--warmup", "1" if quick else "3", "--dump-grads", grads_path]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        raise RuntimeError("train_step exited with %d: %s" % (r.returncode, r.stdout[-2000:]))
    res = json.loads(lines[-1][len("RESULT "):])
    if res["checksums"] != data["checksums"]:
        raise RuntimeError("the example generated other data: %s vs %s" % (res["checksums"], data["checksums"]))
    flat = np.fromfile(grads_path, dtype="<f4")
    grads, o = [], 0
    for tensors in data["layers"]:  # Keras layout: the weights' own shapes
        for shape in (t.shape for t in tensors):
            n = int(np.prod(shape))
            grads.append(flat[o:o + n].reshape(shape))
            o += n
    if o != flat.size:
        raise RuntimeError("gradient dump holds %d floats, expected %d" % (flat.size, o))
    out = dict(median_ms=res["median_ms"], min_ms=res["min_ms"], runs=res["runs"], times_ms=res["times_ms"],
               cpu_utilisation=res["cpu_utilisation"], tape_bytes=res["tape_bytes"],
               peak_rss_bytes=res["peak_rss_bytes"], first_step_ms=res["first_step_ms"],
               call=" ".join(["examples/train_step"] + cmd[1:-2]) + " (Sequential::train_step, Adam::keras)")
    return out, res["loss"], grads


def _torch_setup(data, threads, dtype):
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    mods, n_in = [], data["x"].shape[2]
    gru = data["cell"] == "gru"
    if gru and not data["reset_after"]:
        raise RuntimeError("PyTorch's GRU computes reset_after=True only")
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    for kernel, recurrent, bias in data["layers"]:
        H = recurrent.shape[0]
        with torch.no_grad():
            if gru:  # Keras z, r, h -> PyTorch r, z, n; bias [2, 3H]: input row, recurrent row
                m = torch.nn.GRU(n_in, H, batch_first=True)
                m.weight_ih_l0.copy_(t(keras_to_torch_gru(kernel, H).T))
                m.weight_hh_l0.copy_(t(keras_to_torch_gru(recurrent, H).T))
                m.bias_ih_l0.copy_(t(keras_to_torch_gru(bias[0], H)))
                m.bias_hh_l0.copy_(t(keras_to_torch_gru(bias[1], H)))
            else:  # Keras i,f,c,o is PyTorch i,f,g,o: only transpose
                m = torch.nn.LSTM(n_in, H, batch_first=True)
                m.weight_ih_l0.copy_(t(kernel.T))
                m.weight_hh_l0.copy_(t(recurrent.T))
                m.bias_ih_l0.copy_(t(bias))
                m.bias_hh_l0.zero_()
        mods.append(m.to(dtype).train())
        n_in = H
    return mods


def prepare_torch(data, threads, packed, dtype_name="float32"):
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    dtype = getattr(torch, dtype_name)
    mods = _torch_setup(data, threads, dtype)
    params = [p for m in mods for p in m.parameters()]
    opt = torch.optim.Adam(params)  # lr 1e-3, betas (0.9, 0.999), eps 1e-8
    x = torch.from_numpy(data["x"]).to(dtype)
    lens = torch.from_numpy(data["lengths"].astype(np.int64))
    S = data["slice"]
    y = torch.from_numpy(data["y"]).to(dtype)
    m = torch.from_numpy(data["mask"][:, S:].astype(np.float64)).to(dtype)
    count = float(data["mask"][:, S:].sum())
    T = x.shape[1]
    mae = data["loss"] == "mae"

    def forward():
        if packed:
            p = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
            for mod in mods:
                p, _ = mod(p)
            h, _ = pad_packed_sequence(p, batch_first=True, total_length=T)
        else:
            h = x
            for mod in mods:
                h, _ = mod(h)
        d = h[:, S:] - y
        per_step = (d.abs() if mae else d * d).mean(dim=-1)  # [B, T'], as Keras: mean over features
        return (per_step * m).sum() / count  # sum over valid steps / their number

    def step():
        opt.zero_grad(set_to_none=True)
        loss = forward()
        loss.backward()
        opt.step()
        return loss

    # First step at the initial weights: loss and gradients, before the update.
    opt.zero_grad(set_to_none=True)
    loss = forward()
    loss.backward()
    grads = []
    g64 = lambda p: p.grad.double().numpy().copy()  # noqa: E731
    for mod in mods:
        if data["cell"] == "gru":  # back to Keras' layout and gate order
            H = mod.hidden_size
            grads += [keras_to_torch_gru(g64(mod.weight_ih_l0).T, H), keras_to_torch_gru(g64(mod.weight_hh_l0).T, H),
                      np.stack([keras_to_torch_gru(g64(mod.bias_ih_l0), H), keras_to_torch_gru(g64(mod.bias_hh_l0), H)])]
        else:
            grads += [g64(mod.weight_ih_l0).T, g64(mod.weight_hh_l0).T, g64(mod.bias_ih_l0)]
    loss0 = float(loss.item())
    opt.step()
    name = data["cell"].upper()
    how = ("pack_padded_sequence(enforce_sorted=False) -> %s x%d -> pad_packed_sequence" % (name, len(mods))
           if packed else "%s x%d on the padded tensor (padded steps computed)" % (name, len(mods)))
    info = dict(version=torch.__version__, call="%s, masked %s, backward, torch.optim.Adam; set_num_threads(%d)"
                % (how, data["loss"].upper(), threads))
    return step, info, loss0, grads


def prepare_keras(data, threads, quick=False, keras_mode="auto"):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    x, y = data["x"], data["y"]
    B, T, I = x.shape
    S = data["slice"]
    inp = keras.Input(shape=(T, I), batch_size=B)
    h = keras.layers.Masking(mask_value=0.0)(inp)
    lstms = []
    for _k, recurrent, _b in data["layers"]:
        if data["cell"] == "gru":
            layer = keras.layers.GRU(recurrent.shape[0], return_sequences=True, reset_after=data["reset_after"])
        else:
            layer = keras.layers.LSTM(recurrent.shape[0], return_sequences=True)
        h = layer(h)
        lstms.append(layer)
    if S:
        h = keras.layers.Lambda(lambda t: t[:, S:, :], mask=lambda inputs, mask: mask[:, S:])(h)
    model = keras.Model(inp, h)

    def reset_weights():
        for layer, (kernel, recurrent, bias) in zip(lstms, data["layers"]):
            layer.set_weights([kernel, recurrent, bias])

    xt, yt = tf.constant(x), tf.constant(y)
    modes = {"eager": dict(run_eagerly=True), "tf.function": dict(jit_compile=False),
             "tf.function(jit_compile=True)": dict(jit_compile=True)}

    def compile_as(mode):
        reset_weights()
        model.compile(optimizer=keras.optimizers.Adam(), loss=data["loss"], **modes[mode])

    # Gradients at the initial weights, through the compiled loss (the mask reaches it: Keras 3 averages
    # over valid steps), as train_step computes them.
    compile_as("tf.function")
    with tf.GradientTape() as tape:
        y_pred = model(xt, training=True)
        loss = model.compute_loss(x=xt, y=yt, y_pred=y_pred, training=True)
    grads = [np.asarray(g, dtype=np.float64) for g in tape.gradient(loss, model.trainable_weights)]
    loss0 = float(loss)

    def call():
        return model.train_on_batch(xt, yt)

    trials, first_losses = {}, {}
    if keras_mode == "auto":
        for name in modes:  # the fastest: a tracing call at the initial weights, then the best of 2
            try:
                compile_as(name)
                first_losses[name] = float(call())
                ts = []
                for _ in range(1 if quick else 2):
                    t0 = time.perf_counter()
                    call()
                    ts.append((time.perf_counter() - t0) * 1e3)
                trials[name] = min(ts)
            except Exception as e:  # noqa: BLE001 - a mode that fails is just not chosen
                trials[name] = "failed: %s" % str(e).splitlines()[0][:200]
        ok = {k: v for k, v in trials.items() if isinstance(v, float)}
        mode = min(ok, key=ok.get)
    else:
        mode = {"eager": "eager", "function": "tf.function", "xla": "tf.function(jit_compile=True)"}[keras_mode]
    compile_as(mode)
    first_losses[mode] = float(call())  # trace again: the model was recompiled
    info = dict(version="keras %s, tensorflow %s" % (keras.__version__, tf.__version__),
                call="Model(Masking(0.0) -> %s x%d%s).train_on_batch, loss %r, Adam(); %s, intra_op=%d inter_op=1"
                % ("GRU(reset_after=%s)" % data["reset_after"] if data["cell"] == "gru" else "LSTM", len(lstms), " -> Lambda(x[:, %d:], mask=mask[:, %d:])" % (S, S) if S else "", data["loss"], mode,
                   threads),
                keras_mode=mode, keras_mode_trials_ms=trials, keras_first_step_loss=first_losses)
    return call, info, loss0, grads


# ----------------------------------------------------------------------------------------------
# Worker: one (framework, workload, threads) per process


def worker(spec):
    fw, threads, quick = spec["framework"], spec["threads"], spec["quick"]
    data = load_data(spec["data"], spec["meta"])
    result = dict(framework=fw, threads=threads, workload=spec["workload"])
    try:
        if fw == "masked-rnn":
            res, loss0, grads = run_masked_rnn(spec, data)
            result.update(res)
        else:
            t0 = time.perf_counter()
            if fw == "keras":
                step, info, loss0, grads = prepare_keras(data, threads, quick, spec.get("keras_mode", "auto"))
            else:
                step, info, loss0, grads = prepare_torch(data, threads, packed=fw != "torch-padded",
                                                         dtype_name="float64" if fw == "torch-f64" else "float32")
            result.update(info)
            result["setup_s"] = time.perf_counter() - t0
            if fw != "torch-f64":
                if quick:
                    warmup, max_runs, min_runs = 1, 5, 2
                else:
                    warmup, max_runs, min_runs = 3, 20, 3
                    if fw == "keras":  # slow; the mode choice already ran it
                        warmup, max_runs = 1, 10
                times, util = fwd.time_fn(step, warmup, spec["budget_s"], max_runs, min_runs)
                result.update(median_ms=float(np.median(times)), min_ms=float(min(times)), runs=len(times),
                              times_ms=[round(t, 4) for t in times], cpu_utilisation=round(util, 3))
        result["loss"] = loss0
        grads_path = spec["out"] + ".grads.npz"
        np.savez(grads_path, *[np.asarray(g) for g in grads])
        result["grads_file"] = grads_path
    except Exception as e:  # noqa: BLE001 - reported to the parent, never a crash
        import traceback

        result["error"] = "%s: %s" % (type(e).__name__, e)
        result["traceback"] = traceback.format_exc()[-4000:]
    with open(spec["out"], "w") as f:
        json.dump(result, f)


def run_worker(spec, timeout_s):
    env = dict(os.environ)
    n = str(spec["threads"])
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, TF_CPP_MIN_LOG_LEVEL="2",
               KERAS_BACKEND="tensorflow", PYTHONWARNINGS="ignore")
    spec_path = spec["out"] + ".spec.json"
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    try:
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec_path], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
        out = r.stdout
    except subprocess.TimeoutExpired:
        return dict(framework=spec["framework"], threads=spec["threads"], workload=spec["workload"],
                    error="timed out after %d s" % timeout_s)
    if os.path.exists(spec["out"]):
        with open(spec["out"]) as f:
            return json.load(f)
    return dict(framework=spec["framework"], threads=spec["threads"], workload=spec["workload"],
                error="worker died (exit %d): %s" % (r.returncode, out[-1500:]))


# ----------------------------------------------------------------------------------------------
# Gradient agreement


def grad_diffs(grads, ref):
    """Per tensor max |g - ref| / max |ref|."""
    out = []
    for g, r in zip(grads, ref):
        g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
        if g.shape != r.shape:
            return None
        out.append(float(np.max(np.abs(g - r)) / max(float(np.max(np.abs(r))), 1e-30)))
    return out


def tensor_names(w):
    names = []
    for l in range(len(w["H"])):
        names += ["kernel%d" % l, "recurrent_kernel%d" % l, "bias%d" % l]
    return names


def check_gradients(report, refs):
    """Fills each result's gradient and loss agreement with masked-rnn (1 thread) and float64 PyTorch."""
    loaded = {}

    def grads_of(r):
        p = r.get("grads_file")
        if not p or not os.path.exists(p):
            return None
        if p not in loaded:
            z = np.load(p)
            loaded[p] = [z["arr_%d" % i] for i in range(len(z.files))]
        return loaded[p]

    for r in report["results"]:
        if "error" in r:
            continue
        g = grads_of(r)
        names = tensor_names(WORKLOADS[r["workload"]])
        for tag, ref in (("masked_rnn", refs.get((r["workload"], "masked-rnn"))),
                         ("f64", refs.get((r["workload"], "torch-f64")))):
            if ref is None or "error" in ref or g is None or ref is r:
                continue
            rg = grads_of(ref)
            d = grad_diffs(g, rg) if rg is not None else None
            if d is None:
                continue
            r["grad_rel_vs_" + tag] = dict(zip(names, d))
            r["grad_rel_max_vs_" + tag] = max(d)
            r["loss_rel_vs_" + tag] = abs(r["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-30)


# ----------------------------------------------------------------------------------------------
# Reporting


def fmt_ms(r):
    return fwd.fmt_ms(r)


def markdown(report):
    meta = report["meta"]
    fws = report["frameworks"]
    peers = [f for f in fws if f != "masked-rnn"]
    out = ["# masked-rnn vs peer frameworks: one masked LSTM or GRU training step", ""]
    out.append("<!-- README section: paste from here to the end marker into the top-level README. -->")
    out.append("")
    out.append("### Training step")
    out.append("")
    out.append("One training step (forward keeping what the backward needs, loss over the valid steps, backward "
               "through time, Adam update) of `seed_fit` (batch 15 of 362 x 24 steps, lengths 90..362, "
               "`Masking -> LSTM 128 -> 64 -> 1 -> x[:, 5:]` with the mask carried, masked MAE) and `mid_fit` "
               "(batch 64 of 256 x 256, lengths 32..256, LSTM(256), masked MSE), and the same shape with GRU(256): "
               "`gru_mid_fit` (Keras `reset_after=False`, the ONNX default placement of the reset gate, which "
               "PyTorch does not compute) and `gru_torch_fit` (`reset_after=True`, PyTorch's GRU); median ms per "
               "step on %s "
               "(%d cores), measured with `bench/compare_train.py`; every framework trains the same weights on "
               "the same batch, and its first-step gradients agree with masked-rnn's and with a float64 PyTorch "
               "reference (relative differences below)." % (meta["cpu_model"], meta["nproc"]))
    out.append("")
    for th in report["threads"]:
        out.append("| %d thread%s | %s | best peer / masked-rnn |" % (th, "" if th == 1 else "s",
                                                                      " | ".join(LABELS[f] for f in fws)))
        out.append("|" + "---|" * (len(fws) + 2))
        for w in report["workload_order"]:
            row = {r["framework"]: r for r in report["results"] if r["workload"] == w and r["threads"] == th}
            m = row.get("masked-rnn")
            cells = [w] + [fmt_ms(row.get(f)).split(" (")[0] + ("" if f == "masked-rnn" else ratio(row.get(f), m))
                           for f in fws]
            bp = fwd.best_peer(row, peers)
            cells.append("**%.2fx** (%s)" % (bp[0] / m["median_ms"], LABELS[bp[1]])
                         if bp and m and "error" not in m else "-")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out.append("Peer cells: median ms (peer median / masked-rnn median). Full table, gradient agreement and "
               "method: `bench/results/compare_train.md`.")
    out.append("")
    out.append("<!-- end of the README section -->")
    out.append("")
    out.append("CPU: %s (%d cores, %s); %s; command: `%s`%s" % (
        meta["cpu_model"], meta["nproc"], "/".join(meta["cpu_simd"]) or "no AVX2", meta["date"], meta["command"],
        " — QUICK MODE, not for quoting" if meta["quick"] else ""))
    out.append("")
    out.append("Versions: " + ", ".join("%s %s" % (k, v) for k, v in meta["versions"].items()))
    out.append("")
    out.append("| workload | cell | B x T x I -> H | valid steps | loss |")
    out.append("|---|---|---|---|---|")
    for w in report["workload_order"]:
        d = report["workloads"][w]
        cell = d.get("cell", "lstm").upper() + (" reset_after=%s" % d["reset_after"] if d.get("cell") == "gru" else "")
        out.append("| %s | %s | %d x %d x %d -> %s%s | %.1f %% (lengths %d..%d) | masked %s |" % (
            w, cell, d["B"], d["T"], d["I"], " -> ".join(map(str, d["H"])),
            " -> x[:, %d:]" % d["slice"] if d["slice"] else "", 100 * d["valid_fraction"], d["len_min"],
            d["len_max"], d["loss"].upper()))
    out.append("")
    out.append("Cells: median (min) ms of one training step; each cell ran in its own process. Ratio = peer "
               "median / masked-rnn median (> 1: masked-rnn is faster).")
    out.append("")
    speedups = []
    for th in report["threads"]:
        out.append("## %d thread%s" % (th, "" if th == 1 else "s"))
        out.append("")
        head = ["workload"] + [LABELS[f] for f in fws] + ["best peer", "speedup vs best peer"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for w in report["workload_order"]:
            row = {r["framework"]: r for r in report["results"] if r["workload"] == w and r["threads"] == th}
            m = row.get("masked-rnn")
            cells = [w] + [fmt_ms(row.get(f)) + ("" if f == "masked-rnn" else ratio(row.get(f), m)) for f in fws]
            bp = fwd.best_peer(row, peers)
            cells.append("%s %s" % (LABELS[bp[1]], fmt_ms(row[bp[1]]).split(" ")[0]) if bp else "-")
            if bp and m and "error" not in m:
                s = bp[0] / m["median_ms"]
                speedups.append(s)
                cells.append("**%.2fx**" % s)
            else:
                cells.append("-")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    report["geomean_speedup"] = fwd.geomean(speedups) if speedups else None
    if speedups:
        out.append("Geometric mean of the speedup vs the best peer over all %d (workload, threads) pairs: **%.2fx**"
                   % (len(speedups), report["geomean_speedup"]))
        out.append("")
    out.append("## Gradient agreement (first step, initial weights)")
    out.append("")
    out.append("Per tensor max |g - g_ref| / max |g_ref|, worst tensor (and the first layer's kernel); loss: "
               "relative difference. References: masked-rnn on 1 thread, and PyTorch packed in float64 "
               "(same float32 data). Tolerance %.0e." % GRAD_TOL)
    out.append("")
    out.append("| workload | framework | threads | grad vs masked-rnn: worst (kernel0) | grad vs float64: worst "
               "(kernel0) | loss vs masked-rnn | loss vs float64 |")
    out.append("|---|---|---|---|---|---|---|")
    worst = 0.0
    for w in report["workload_order"]:
        for r in sorted((r for r in report["results"] + report["references"] if r["workload"] == w
                         and "error" not in r), key=lambda r: (FRAMEWORKS.index(r["framework"])
                                                                 if r["framework"] in FRAMEWORKS else 9, r["threads"])):
            a, b = r.get("grad_rel_vs_masked_rnn"), r.get("grad_rel_vs_f64")
            for v in (r.get("grad_rel_max_vs_masked_rnn"), r.get("grad_rel_max_vs_f64")):
                if v is not None:
                    worst = max(worst, v)
            out.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                w, LABELS[r["framework"]], r["threads"] if r["framework"] != "torch-f64" else "-",
                "%.1e (%.1e)" % (max(a.values()), a["kernel0"]) if a else
                ("reference" if r["framework"] == "masked-rnn" and r["threads"] == 1 else "-"),
                "%.1e (%.1e)" % (max(b.values()), b["kernel0"]) if b else
                ("reference" if r["framework"] == "torch-f64" else "-"),
                "%.1e" % r["loss_rel_vs_masked_rnn"] if "loss_rel_vs_masked_rnn" in r else "-",
                "%.1e" % r["loss_rel_vs_f64"] if "loss_rel_vs_f64" in r else "-"))
    out.append("")
    out.append("Worst relative gradient difference over all cells: %.1e (%s the %.0e tolerance)."
               % (worst, "within" if worst <= GRAD_TOL else "**ABOVE**", GRAD_TOL))
    out.append("")
    keras_modes = sorted({r.get("keras_mode") for r in report["results"] if r.get("keras_mode")})
    if keras_modes:
        out.append("Keras/TF timed as: %s (the fastest of `compile(run_eagerly=True)`, `compile(jit_compile=False)` "
                   "(tf.function) and `compile(jit_compile=True)` (XLA) for `train_on_batch`, chosen per cell; "
                   "trial times in compare_train.json)." % ", ".join(keras_modes))
        out.append("")
    mr = [r for r in report["results"] if r["framework"] == "masked-rnn" and "error" not in r]
    if mr:
        out.append("masked-rnn tapes (valid steps only): %s." % ", ".join(
            "%s %.1f MiB" % (w, next(r["tape_bytes"] for r in mr if r["workload"] == w) / 2 ** 20)
            for w in report["workload_order"] if any(r["workload"] == w for r in mr)))
        out.append("")
    disturbed = [r for r in report["results"] if (r.get("foreign_cores") or 0.0) > r.get("max_foreign", float("inf"))]
    if disturbed:
        out.append("† measured while other processes used more than %.2f cores on average, after %d retries "
                   "(`foreign_cores` in compare_train.json): %d cells." % (
                       disturbed[0]["max_foreign"], disturbed[0]["attempt"] - 1, len(disturbed)))
    else:
        out.append("No cell was disturbed by other processes (each used < %.2f foreign cores on average; "
                   "`foreign_cores` in compare_train.json)." % meta.get("max_foreign", 0.3))
    out.append("")
    errors = [r for r in report["results"] + report["references"] if "error" in r]
    if errors:
        out.append("## Errors")
        out.append("")
        for r in errors:
            out.append("- %s %s %d threads: %s" % (r["framework"], r["workload"], r["threads"],
                                                   r["error"].splitlines()[0][:300]))
        out.append("")
    out.append("![training step times](compare_train.png)")
    out.append("")
    return "\n".join(out)


def ratio(r, m):
    if not r or "error" in r or not m or "error" in m:
        return ""
    return " — %.2fx" % (r["median_ms"] / m["median_ms"])


def plot(report, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no compare_train.png (pip install matplotlib)", flush=True)
        return False
    wls = report["workload_order"]
    fws = report["frameworks"]
    threads = report["threads"]
    colors = {"masked-rnn": "C3", "torch-padded": "C2", "torch-packed": "C9", "keras": "C1"}
    fig, axes = plt.subplots(1, len(wls), figsize=(6.0 * len(wls), 4.6), squeeze=False)
    width = 0.8 / max(len(fws), 1)
    for ax, w in zip(axes[0], wls):
        for j, f in enumerate(fws):
            xs, ys, lo = [], [], []
            for i, th in enumerate(threads):
                r = next((r for r in report["results"] if r["workload"] == w and r["framework"] == f
                          and r["threads"] == th and "error" not in r), None)
                if r:
                    xs.append(i + (j - (len(fws) - 1) / 2) * width)
                    ys.append(r["median_ms"])
                    lo.append(r["median_ms"] - r["min_ms"])
            bars = ax.bar(xs, ys, width, color=colors.get(f), label=LABELS[f],
                          hatch="//" if f == "torch-padded" else None, edgecolor="white")
            for b, v in zip(bars, ys):
                ax.annotate("%.0f" % v if v >= 10 else "%.1f" % v, (b.get_x() + b.get_width() / 2, v),
                            ha="center", va="bottom", fontsize=7)
        d = report["workloads"][w]
        ax.set_title("%s: %d x %d x %d -> %s, %.0f %% valid" % (w, d["B"], d["T"], d["I"],
                                                                "->".join(map(str, d["H"])),
                                                                100 * d["valid_fraction"]))
        ax.set_xticks(range(len(threads)))
        ax.set_xticklabels(["%d thread%s" % (t, "" if t == 1 else "s") for t in threads])
        ax.set_ylabel("training step, median (ms)")
        ax.set_yscale("log")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    meta = report["meta"]
    fig.suptitle("One masked LSTM training step (forward + loss + backward + Adam) - %s (%d cores)"
                 % (meta["cpu_model"], meta["nproc"]))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------
# Main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of %s" % ",".join(WORKLOADS))
    p.add_argument("--threads", default="1,2", help="comma list of thread counts (default 1,2)")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma list of %s" % ",".join(FRAMEWORKS))
    p.add_argument("--quick", action="store_true", help="few repetitions, for smoke tests (results go to "
                   "OUT_DIR/quick unless --out-dir is given)")
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timed steps per cell (default 3; max 20)")
    p.add_argument("--keras-mode", default="auto", choices=["auto", "eager", "function", "xla"],
                   help="how Keras is called; auto = the fastest of the three, chosen per cell")
    p.add_argument("--no-reference", action="store_true", help="skip the float64 PyTorch gradient reference")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build --release --example train_step")
    p.add_argument("--out-dir", default=None, help="where results go (default bench/results)")
    p.add_argument("--timeout", type=int, default=1200, help="seconds before a worker is killed (default 1200)")
    p.add_argument("--wait-idle", type=int, default=120, help="before each cell, wait up to this many seconds "
                   "for other processes to leave the CPUs idle (0: don't wait; default 120)")
    p.add_argument("--max-foreign", type=float, default=0.3, help="a cell during which other processes used "
                   "more than this many cores on average is measured again (default 0.3)")
    p.add_argument("--retries", type=int, default=3, help="how many times a disturbed cell is measured again")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.worker:
        with open(args.worker) as f:
            worker(json.load(f))
        return 0

    workloads = [w for w in args.workloads.split(",") if w]
    frameworks = [f for f in args.frameworks.split(",") if f]
    threads = [int(t) for t in args.threads.split(",") if t]
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit("unknown workload %r (known: %s)" % (w, ", ".join(WORKLOADS)))
    for f in frameworks:
        if f not in FRAMEWORKS:
            sys.exit("unknown framework %r (known: %s)" % (f, ", ".join(FRAMEWORKS)))
    out_dir = os.path.normpath(args.out_dir or os.path.join(BENCH_DIR, "results", "quick" if args.quick else ""))
    os.makedirs(out_dir, exist_ok=True)

    exe = build_example(args.no_build) if "masked-rnn" in frameworks else None
    active = []
    for f in frameworks:
        if f == "masked-rnn" and not exe:
            continue
        missing = [m for m in REQUIRES[f] if importlib.util.find_spec(m) is None]
        if missing:
            print("skipping %s: python module(s) %s not installed in %s (see bench/README.md)"
                  % (f, ", ".join(missing), sys.executable), flush=True)
            continue
        active.append(f)
    if not active:
        print("nothing to run", flush=True)
        return 1
    reference = not args.no_reference and importlib.util.find_spec("torch") is not None

    cpu, simd = fwd.cpu_model()
    meta = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                command=" ".join([sys.executable] + sys.argv),
                cpu_model=cpu, cpu_simd=simd, nproc=os.cpu_count(), machine=platform.machine(),
                os=platform.platform(), versions=fwd.versions(None), crate_git=fwd.git_head(), example=exe,
                quick=args.quick, budget_s=args.budget, max_foreign=args.max_foreign, seed=SEED,
                loadavg_before=os.getloadavg())
    meta["versions"].pop("masked-rnn", None)
    print("CPU %s (%d cores), load %.2f; frameworks: %s" % (cpu, os.cpu_count(), os.getloadavg()[0],
                                                             ", ".join(active)), flush=True)
    report = dict(meta=meta, frameworks=active, threads=threads, workload_order=workloads, workloads={},
                  results=[], references=[])
    budget = min(args.budget, 0.5) if args.quick else args.budget
    t_start = time.time()
    tmp = tempfile.mkdtemp(prefix="mrnn-train-bench-")
    refs = {}
    try:
        for w in workloads:
            spec_w = WORKLOADS[w]
            data = make_data(spec_w)
            lens = data["lengths"]
            report["workloads"][w] = dict(B=spec_w["B"], T=spec_w["T"], I=spec_w["I"], H=spec_w["H"],
                                          cell=data["cell"], reset_after=data["reset_after"],
                                          lengths_range=list(spec_w["lens"]), len_min=int(lens.min()),
                                          len_max=int(lens.max()), slice=spec_w["slice"], loss=spec_w["loss"],
                                          masking=spec_w["masking"],
                                          valid_fraction=float(lens.sum()) / (spec_w["B"] * spec_w["T"]),
                                          loss_steps=int(data["mask"][:, spec_w["slice"]:].sum()))
            path = os.path.join(tmp, w + ".npz")
            save_data(path, data)
            dmeta = dict(checksums=data["checksums"], slice=data["slice"], loss=data["loss"], masking=data["masking"],
                         cell=data["cell"], reset_after=data["reset_after"])
            base = dict(workload=w, quick=args.quick, data=path, meta=dmeta, exe=exe, budget_s=budget,
                        keras_mode=args.keras_mode)
            if reference and torch_computes(spec_w):
                spec = dict(base, framework="torch-f64", threads=1, out=os.path.join(tmp, "%s-torch-f64.json" % w))
                res = run_worker(spec, args.timeout)
                report["references"].append(res)
                refs[(w, "torch-f64")] = res
                print("  %-9s reference     %s" % (w, "loss %.8f" % res["loss"] if "error" not in res
                                                   else "ERROR " + res["error"][:300]), flush=True)
            for th in threads:
                for f in active:
                    if f.startswith("torch") and not torch_computes(spec_w):
                        continue  # not this cell: the cell reads "-"
                    spec = dict(base, framework=f, threads=th, out=os.path.join(tmp, "%s-%s-%d.json" % (w, f, th)))
                    for attempt in range(1, args.retries + 2):
                        busy = fwd.wait_idle(args.wait_idle) if args.wait_idle > 0 else fwd.busy_cores()
                        with fwd.ForeignCpu() as foreign:
                            res = run_worker(spec, args.timeout)
                        res.update(busy_cores_before=None if busy is None else round(busy, 2),
                                   foreign_cores=None if foreign.cores is None else round(foreign.cores, 2),
                                   attempt=attempt, max_foreign=args.max_foreign)
                        if foreign.cores is None or foreign.cores <= args.max_foreign or attempt > args.retries:
                            break
                        print("  %-9s %d thr  %-13s other processes used %.2f cores meanwhile: measuring again"
                              % (w, th, f, foreign.cores), flush=True)
                    report["results"].append(res)
                    if f == "masked-rnn" and th == 1:
                        refs[(w, "masked-rnn")] = res
                    if "error" in res:
                        print("  %-9s %d thr  %-13s ERROR %s" % (w, th, f, res["error"].splitlines()[0][:300]),
                              flush=True)
                    else:
                        print("  %-9s %d thr  %-13s median %9.2f ms  min %9.2f ms  runs %2d  cpu %.2f  loss %.7f%s%s"
                              % (w, th, f, res["median_ms"], res["min_ms"], res["runs"],
                                 res["cpu_utilisation"] or 0.0, res["loss"],
                                 "  others %.2f" % res["foreign_cores"] if res.get("foreign_cores") is not None else "",
                                 "  [%s]" % res["keras_mode"] if "keras_mode" in res else ""), flush=True)
        check_gradients(report, refs)
        check_gradients(dict(results=report["references"]), refs)
        for r in report["results"]:
            if "grad_rel_max_vs_masked_rnn" in r or "grad_rel_max_vs_f64" in r:
                print("  %-9s %d thr  %-13s grad rel diff vs masked-rnn %s, vs float64 %s" % (
                    r["workload"], r["threads"], r["framework"],
                    "%.1e" % r["grad_rel_max_vs_masked_rnn"] if "grad_rel_max_vs_masked_rnn" in r else "-",
                    "%.1e" % r["grad_rel_max_vs_f64"] if "grad_rel_max_vs_f64" in r else "-"), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in report["results"] + report["references"]:
        r.pop("grads_file", None)

    meta["loadavg_after"] = os.getloadavg()
    meta["wall_s"] = round(time.time() - t_start, 1)
    md = markdown(report)
    with open(os.path.join(out_dir, "compare_train.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "compare_train.md"), "w") as f:
        f.write(md + "\n")
    wrote = ["compare_train.json", "compare_train.md"]
    if report["results"] and plot(report, os.path.join(out_dir, "compare_train.png")):
        wrote.append("compare_train.png")
    print("\n" + md)
    print("wrote %s in %s (%.0f s)" % (", ".join(wrote), out_dir, meta["wall_s"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
