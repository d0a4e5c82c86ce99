#!/usr/bin/env python3
"""Time masked-rnn against ONNX Runtime, PyTorch and Keras/TensorFlow on masked LSTM forward passes.

Every framework gets the same zero-padded input, the same lengths and the same weights. Each
(framework, workload, threads) combination runs in its own subprocess so that thread settings are
applied before the framework initialises and thread pools never mix. See bench/README.md.

    /opt/mrnn-venv/bin/python bench/compare.py                 # everything: ~15 minutes on 2 cores
    python3 bench/compare.py --quick --workloads latency --no-sweep   # smoke test

Only numpy is required; a framework that is not installed is skipped with a message.
"""

import argparse
import ctypes
import datetime
import importlib.metadata
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
except ImportError:  # the one hard requirement
    sys.stderr.write("compare.py needs numpy (pip install numpy); the frameworks themselves are optional.\n")
    sys.exit(2)

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
CRATE_DIR = os.path.dirname(BENCH_DIR)
SEED = 20240607

# name: batch, time, input, hidden sizes of the stacked layers, (min length, max length)
WORKLOADS = {
    "seed": dict(B=100, T=362, I=24, H=[128, 64, 1], lens=(90, 362)),
    "mid": dict(B=64, T=256, I=256, H=[256], lens=(32, 256)),
    "mid_full": dict(B=64, T=256, I=256, H=[256], lens=(256, 256)),
    "latency": dict(B=1, T=128, I=512, H=[512], lens=(128, 128)),
}
SWEEP_SHAPE = dict(B=64, T=256, I=256, H=[256])
SWEEP_RATIOS = [0.0, 0.25, 0.5, 0.75]

FRAMEWORKS = ["masked-rnn", "onnxruntime", "torch-packed", "torch-padded", "keras"]
LABELS = {
    "masked-rnn": "masked-rnn",
    "onnxruntime": "ONNX Runtime",
    "torch-packed": "torch packed",
    "torch-padded": "torch padded",
    "keras": "Keras/TF",
}
# python modules each framework's runner imports
REQUIRES = {
    "masked-rnn": [],
    "onnxruntime": ["onnxruntime", "onnx"],
    "torch-packed": ["torch"],
    "torch-padded": ["torch"],
    "keras": ["tensorflow", "keras"],
}
DISTRIBUTIONS = ["numpy", "onnxruntime", "onnx", "torch", "tensorflow", "tensorflow-cpu", "keras", "matplotlib"]


# ----------------------------------------------------------------------------------------------
# Data: inputs, lengths, weights (Keras layout), references


def sweep_lengths(B, T, ratio, rng):
    """B lengths in 1..=T summing to exactly round((1 - ratio) * B * T), spread around the mean."""
    total = int(round((1.0 - ratio) * B * T))
    mean = total / B
    spread = min(T - mean, mean - 1.0, 0.5 * mean)
    lens = np.rint(np.linspace(mean - spread, mean + spread, B)).astype(np.int64)
    lens = np.clip(lens, 1, T)
    i = 0
    while lens.sum() != total:  # nudge one step at a time, staying within 1..=T
        j = i % B
        if lens.sum() < total and lens[j] < T:
            lens[j] += 1
        elif lens.sum() > total and lens[j] > 1:
            lens[j] -= 1
        i += 1
    rng.shuffle(lens)
    return lens.astype(np.int32)


def make_data(B, T, I, H, lens=None, lo=None, hi=None, seed=SEED):
    """x [B,T,I] float32 zero-padded at the end, lengths [B] int32, mask [B,T] uint8, Keras weights."""
    rng = np.random.default_rng(seed)
    if lens is None:
        lens = rng.integers(lo, hi + 1, size=B).astype(np.int32)
    mask = (np.arange(T)[None, :] < lens[:, None]).astype(np.uint8)
    x = rng.uniform(-1.0, 1.0, size=(B, T, I)).astype(np.float32)
    x *= mask[:, :, None]
    layers = []
    n_in = I
    for h in H:
        s = 1.0 / math.sqrt(h)
        kernel = rng.uniform(-s, s, size=(n_in, 4 * h)).astype(np.float32)
        recurrent = rng.uniform(-s, s, size=(h, 4 * h)).astype(np.float32)
        bias = rng.uniform(-s, s, size=(4 * h,)).astype(np.float32)
        layers.append((kernel, recurrent, bias))
        n_in = h
    return dict(x=np.ascontiguousarray(x), lengths=lens, mask=mask, layers=layers)


def numpy_reference(data):
    """Keras LSTM stack in float64, padded steps carried over (only valid steps are ever compared)."""
    h_seq = data["x"].astype(np.float64)
    mask = data["mask"].astype(bool)
    B, T, _ = h_seq.shape
    for kernel, recurrent, bias in data["layers"]:
        k, r, b = kernel.astype(np.float64), recurrent.astype(np.float64), bias.astype(np.float64)
        H = r.shape[0]
        xk = h_seq @ k + b  # [B,T,4H]
        h = np.zeros((B, H))
        c = np.zeros((B, H))
        out = np.zeros((B, T, H))
        for t in range(T):
            z = xk[:, t] + h @ r
            i = 1.0 / (1.0 + np.exp(-z[:, :H]))
            f = 1.0 / (1.0 + np.exp(-z[:, H:2 * H]))
            g = np.tanh(z[:, 2 * H:3 * H])
            o = 1.0 / (1.0 + np.exp(-z[:, 3 * H:]))
            c_new = f * c + i * g
            h_new = o * np.tanh(c_new)
            m = mask[:, t][:, None]
            c = np.where(m, c_new, c)
            h = np.where(m, h_new, h)
            out[:, t] = h
        h_seq = out
    return h_seq.astype(np.float32)


def valid_max_abs_diff(y, ref, mask):
    y = np.asarray(y, dtype=np.float32).reshape(ref.shape)
    if not mask.any():
        return 0.0
    d = np.abs(y.astype(np.float64) - ref.astype(np.float64))[mask.astype(bool)]
    return float(np.nanmax(d)) if not np.isnan(d).any() else float("nan")


def save_data(path, data, refs):
    arrays = dict(x=data["x"], lengths=data["lengths"], mask=data["mask"])
    for n, (k, r, b) in enumerate(data["layers"]):
        arrays["k%d" % n], arrays["r%d" % n], arrays["b%d" % n] = k, r, b
    for name, y in refs.items():
        arrays["ref_" + name] = y
    np.savez(path, **arrays)


def load_data(path):
    z = np.load(path)
    layers = []
    n = 0
    while "k%d" % n in z:
        layers.append((z["k%d" % n], z["r%d" % n], z["b%d" % n]))
        n += 1
    refs = {k[4:]: z[k] for k in z.files if k.startswith("ref_")}
    return dict(x=z["x"], lengths=z["lengths"], mask=z["mask"], layers=layers), refs


# ----------------------------------------------------------------------------------------------
# masked-rnn through its C ABI


class MrnnKerasLstmAttrs(ctypes.Structure):
    _fields_ = [
        ("batch_size", ctypes.c_int64),
        ("seq_length", ctypes.c_int64),
        ("input_size", ctypes.c_int64),
        ("hidden_size", ctypes.c_int64),
        ("go_backwards", ctypes.c_int32),
        ("zero_output_for_mask", ctypes.c_int32),
        ("activation", ctypes.c_int32),
        ("recurrent_activation", ctypes.c_int32),
        ("recurrent_alpha", ctypes.c_float),
        ("recurrent_beta", ctypes.c_float),
        ("num_threads", ctypes.c_int32),
    ]


def default_lib_path():
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(CRATE_DIR, "target")
    return os.path.join(target, "release", "libmasked_rnn.so")


def build_lib(lib_path, no_build):
    """cargo build --release unless told not to; returns the library path or None (with a message)."""
    if not no_build:
        cargo = shutil.which("cargo")
        if cargo is None:
            print("masked-rnn: cargo not found, not building", flush=True)
        else:
            print("masked-rnn: cargo build --release ...", flush=True)
            r = subprocess.run([cargo, "build", "--release", "--lib"], cwd=CRATE_DIR,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if r.returncode != 0:
                print("masked-rnn: cargo build failed:\n" + r.stdout[-3000:], flush=True)
                if os.path.exists(lib_path):
                    print("masked-rnn: using the existing %s" % lib_path, flush=True)
    if not os.path.exists(lib_path):
        print("masked-rnn: %s not found; skipping masked-rnn" % lib_path, flush=True)
        return None
    return lib_path


def load_lib(path):
    lib = ctypes.CDLL(path)
    lib.mrnn_version.restype = ctypes.c_char_p
    lib.mrnn_last_error.restype = ctypes.c_char_p
    lib.mrnn_keras_lstm_attrs_init.argtypes = [ctypes.POINTER(MrnnKerasLstmAttrs)]
    lib.mrnn_keras_lstm_attrs_init.restype = ctypes.c_int32
    lib.mrnn_lstm_keras.argtypes = [ctypes.POINTER(MrnnKerasLstmAttrs)] + [ctypes.c_void_p] * 11
    lib.mrnn_lstm_keras.restype = ctypes.c_int32
    # Handles: weights packed once by _new, then _run per forward pass, _free at the end.
    lib.mrnn_keras_lstm_new.argtypes = [ctypes.POINTER(MrnnKerasLstmAttrs)] + [ctypes.c_void_p] * 3 + [
        ctypes.POINTER(ctypes.c_void_p)]
    lib.mrnn_keras_lstm_new.restype = ctypes.c_int32
    lib.mrnn_keras_lstm_run.argtypes = [ctypes.c_void_p, ctypes.POINTER(MrnnKerasLstmAttrs)] + [ctypes.c_void_p] * 8
    lib.mrnn_keras_lstm_run.restype = ctypes.c_int32
    lib.mrnn_keras_lstm_free.argtypes = [ctypes.c_void_p]
    lib.mrnn_keras_lstm_free.restype = None
    return lib


def check_status(lib, status, what):
    if status != 0:
        msg = lib.mrnn_last_error().decode("utf-8", "replace")
        raise RuntimeError("%s failed with status %d: %s" % (what, status, msg))


def prepare_masked_rnn(data, threads, lib_path):
    """One handle per layer (mrnn_keras_lstm_new: weights checked and packed once, here, outside the timed
    region, as ONNX Runtime packs its weights when the session is created); fn() runs them in turn."""
    lib = load_lib(lib_path)
    x, mask = data["x"], np.ascontiguousarray(data["mask"])
    B, T, I = x.shape
    calls = []  # (attrs, handle, x, weights, y): y of a layer is x of the next
    cur = x

    def free_all():
        while calls:
            lib.mrnn_keras_lstm_free(calls.pop()[1])

    try:
        for kernel, recurrent, bias in data["layers"]:
            H = recurrent.shape[0]
            attrs = MrnnKerasLstmAttrs()
            check_status(lib, lib.mrnn_keras_lstm_attrs_init(ctypes.byref(attrs)), "mrnn_keras_lstm_attrs_init")
            attrs.batch_size, attrs.seq_length, attrs.input_size, attrs.hidden_size = B, T, cur.shape[2], H
            attrs.num_threads = threads
            w = [np.ascontiguousarray(a, dtype=np.float32) for a in (kernel, recurrent, bias)]
            handle = ctypes.c_void_p()
            check_status(lib, lib.mrnn_keras_lstm_new(ctypes.byref(attrs), w[0].ctypes.data, w[1].ctypes.data,
                                                      w[2].ctypes.data, ctypes.byref(handle)), "mrnn_keras_lstm_new")
            y = np.zeros((B, T, H), dtype=np.float32)
            calls.append((attrs, handle, cur, w, y))
            cur = y
    except Exception:
        free_all()
        raise
    mask_p = mask.ctypes.data
    plan = [(h, ctypes.byref(a), xi.ctypes.data, y.ctypes.data) for a, h, xi, _w, y in calls]
    keep = (calls, mask)  # keep the buffers alive while fn is
    fn_run = lib.mrnn_keras_lstm_run

    def fn():
        for h, a, xp, yp in plan:
            st = fn_run(h, a, xp, mask_p, None, None, yp, None, None, None)
            if st != 0:
                check_status(lib, st, "mrnn_keras_lstm_run")
        return keep[0][-1][4]

    fn.close = free_all  # the worker frees the handles after the timed runs
    info = dict(version=lib.mrnn_version().decode(),
                call="mrnn_keras_lstm_run via ctypes (handles from mrnn_keras_lstm_new, created before timing), "
                     "num_threads=%d" % threads)
    return fn, (lambda out: out), info


def masked_rnn_reference(data, lib_path):
    fn, to_np, _ = prepare_masked_rnn(data, 1, lib_path)
    try:
        return np.array(to_np(fn()))
    finally:
        fn.close()


# ----------------------------------------------------------------------------------------------
# Peers. Each prepare_* returns (fn, to_numpy, info); fn() is the timed forward pass.


def keras_to_onnx_gates(a, H):
    """Split the last axis into Keras gate blocks i,f,c,o and reorder them to ONNX i,o,f,c."""
    i, f, c, o = (a[..., n * H:(n + 1) * H] for n in range(4))
    return np.concatenate([i, o, f, c], axis=-1)


def prepare_onnxruntime(data, threads, _lib):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    x, lengths = data["x"], data["lengths"]
    B, T, I = x.shape
    nodes, inits = [], []
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
    cur = "X"
    for n, (kernel, recurrent, bias) in enumerate(data["layers"]):
        H = recurrent.shape[0]
        W = keras_to_onnx_gates(kernel, H).T[None]  # [1,4H,I]
        R = keras_to_onnx_gates(recurrent, H).T[None]  # [1,4H,H]
        Bv = np.concatenate([keras_to_onnx_gates(bias, H), np.zeros(4 * H, np.float32)])[None]  # [1,8H]
        for name, arr in (("W%d" % n, W), ("R%d" % n, R), ("B%d" % n, Bv)):
            inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        y = "Y%d" % n
        nodes.append(helper.make_node("LSTM", [cur, "W%d" % n, "R%d" % n, "B%d" % n, "sequence_lens"], [y],
                                      hidden_size=H, layout=0, name="lstm%d" % n))
        if n + 1 < len(data["layers"]):
            nodes.append(helper.make_node("Squeeze", [y, "axis1"], ["S%d" % n], name="squeeze%d" % n))
            cur = "S%d" % n
    H_last = data["layers"][-1][1].shape[0]
    graph = helper.make_graph(
        nodes, "masked_lstm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I]),
         helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [T, 1, B, H_last])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {"X": np.ascontiguousarray(x.transpose(1, 0, 2)), "sequence_lens": lengths.astype(np.int32)}

    def fn():
        return sess.run(None, feeds)[0]

    def to_np(out):  # [T,1,B,H] -> [B,T,H]
        return out[:, 0].transpose(1, 0, 2)

    info = dict(version=ort.__version__, call="InferenceSession.run, opset 17 LSTM layout 0 with sequence_lens, "
                "intra_op=%d inter_op=1 sequential" % threads)
    return fn, to_np, info


def _torch_modules(data):
    import torch

    mods = []
    n_in = data["x"].shape[2]
    for kernel, recurrent, bias in data["layers"]:
        H = recurrent.shape[0]
        m = torch.nn.LSTM(n_in, H, batch_first=True)
        with torch.no_grad():  # Keras i,f,c,o is PyTorch i,f,g,o: only transpose
            m.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(kernel.T)))
            m.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(recurrent.T)))
            m.bias_ih_l0.copy_(torch.from_numpy(bias))
            m.bias_hh_l0.zero_()
        m.eval()
        mods.append(m)
        n_in = H
    return mods


def _torch_threads(threads):
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def prepare_torch_packed(data, threads, _lib):
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    _torch_threads(threads)
    mods = _torch_modules(data)
    xt = torch.from_numpy(data["x"])
    lens = torch.from_numpy(data["lengths"].astype(np.int64))
    T = xt.shape[1]

    def fn():
        with torch.inference_mode():
            p = pack_padded_sequence(xt, lens, batch_first=True, enforce_sorted=False)
            for m in mods:
                p, _ = m(p)
            y, _ = pad_packed_sequence(p, batch_first=True, total_length=T)
        return y

    info = dict(version=torch.__version__, call="pack_padded_sequence(enforce_sorted=False) -> LSTM x%d -> "
                "pad_packed_sequence, inference_mode, set_num_threads(%d)" % (len(mods), threads))
    return fn, (lambda out: out.numpy()), info


def prepare_torch_padded(data, threads, _lib):
    import torch

    _torch_threads(threads)
    mods = _torch_modules(data)
    xt = torch.from_numpy(data["x"])

    def fn():
        with torch.inference_mode():
            h = xt
            for m in mods:
                h, _ = m(h)
        return h

    info = dict(version=torch.__version__, call="LSTM x%d on the padded tensor, inference_mode, set_num_threads(%d)"
                % (len(mods), threads))
    return fn, (lambda out: out.numpy()), info


def prepare_keras(data, threads, _lib, quick=False, keras_mode="auto"):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    x = data["x"]
    B, T, I = x.shape
    inp = keras.Input(shape=(T, I), batch_size=B)
    h = keras.layers.Masking(mask_value=0.0)(inp)
    lstms = []
    for _kernel, recurrent, _bias in data["layers"]:
        layer = keras.layers.LSTM(recurrent.shape[0], return_sequences=True)
        h = layer(h)
        lstms.append(layer)
    model = keras.Model(inp, h)
    for layer, (kernel, recurrent, bias) in zip(lstms, data["layers"]):
        layer.set_weights([kernel, recurrent, bias])
    xt = tf.constant(x)

    candidates = {
        "eager": lambda: model(xt, training=False),
        "tf.function": tf.function(lambda v: model(v, training=False), reduce_retracing=True),
        "tf.function(jit_compile=True)": tf.function(lambda v: model(v, training=False), jit_compile=True),
    }
    calls = {
        "eager": candidates["eager"],
        "tf.function": lambda: candidates["tf.function"](xt),
        "tf.function(jit_compile=True)": lambda: candidates["tf.function(jit_compile=True)"](xt),
    }
    trials = {}
    if keras_mode == "auto":
        for name, call in calls.items():  # pick the fastest mode: a trace / warm-up call, then best of 2
            try:
                call()
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
    fn = calls[mode]
    info = dict(version="keras %s, tensorflow %s" % (keras.__version__, tf.__version__),
                call="Model(Masking(0.0) -> LSTM x%d), %s, intra_op=%d inter_op=1" % (len(lstms), mode, threads),
                keras_mode=mode, keras_mode_trials_ms=trials)
    return fn, (lambda out: np.asarray(out)), info


PREPARE = {
    "masked-rnn": prepare_masked_rnn,
    "onnxruntime": prepare_onnxruntime,
    "torch-packed": prepare_torch_packed,
    "torch-padded": prepare_torch_padded,
    "keras": prepare_keras,
}


# ----------------------------------------------------------------------------------------------
# Worker: one (framework, workload, threads) per process


def time_fn(fn, warmup, budget_s, max_runs, min_runs):
    for _ in range(warmup):
        fn()
    times = []
    c0, w0 = os.times(), time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or sum(times) < budget_s * 1e3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    c1, w1 = os.times(), time.perf_counter()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return times, cpu / max(w1 - w0, 1e-9)


def worker(spec):
    fw, threads, quick = spec["framework"], spec["threads"], spec["quick"]
    data, refs = load_data(spec["data"])
    result = dict(framework=fw, threads=threads)
    try:
        kwargs = dict(quick=quick, keras_mode=spec.get("keras_mode", "auto")) if fw == "keras" else {}
        t0 = time.perf_counter()
        fn, to_np, info = PREPARE[fw](data, threads, spec.get("lib"), **kwargs)
        result.update(info)
        y = to_np(fn())  # the correctness check, once, outside the timed region
        result["setup_s"] = time.perf_counter() - t0
        for name, ref in refs.items():
            result["max_abs_diff_vs_" + name] = valid_max_abs_diff(y, ref, data["mask"])
        budget = spec["budget_s"]
        if quick:
            warmup, max_runs, min_runs = 1, 5, 2
        else:
            warmup, max_runs, min_runs = 3, 20, 3
            if fw == "keras":  # slow; also every call already ran during the mode choice
                warmup, max_runs = 1, 10
        times, util = time_fn(fn, warmup, budget, max_runs, min_runs)
        result.update(median_ms=float(np.median(times)), min_ms=float(min(times)), runs=len(times),
                      times_ms=[round(t, 4) for t in times], cpu_utilisation=round(util, 3))
        if hasattr(fn, "close"):  # e.g. masked-rnn's handles, freed outside the timed region
            fn.close()
    except Exception as e:  # noqa: BLE001 - reported to the parent, never a crash
        import traceback

        result["error"] = "%s: %s" % (type(e).__name__, e)
        result["traceback"] = traceback.format_exc()[-4000:]
    with open(spec["out"], "w") as f:
        json.dump(result, f)


def _cpu_jiffies():
    """(total, idle) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(n) for n in f.readline().split()[1:]]
    return sum(v), v[3] + (v[4] if len(v) > 4 else 0)


def busy_cores(interval=0.5):
    """Cores kept busy by anything on the machine over `interval` seconds (from /proc/stat), or None."""
    try:
        t0, i0 = _cpu_jiffies()
        time.sleep(interval)
        t1, i1 = _cpu_jiffies()
    except (OSError, ValueError):
        return None
    return (os.cpu_count() or 1) * (1.0 - (i1 - i0) / max(t1 - t0, 1))


def wait_idle(max_wait_s, threshold=0.25):
    """Waits until the machine is (nearly) idle, at most max_wait_s; returns the last busy-cores reading."""
    deadline = time.time() + max_wait_s
    busy = busy_cores()
    warned = False
    while busy is not None and busy > threshold and time.time() < deadline:
        if not warned:
            print("  (machine busy: %.2f cores used by other processes; waiting up to %d s)" % (busy, max_wait_s),
                  flush=True)
            warned = True
        time.sleep(2.0)
        busy = busy_cores()
    return busy


class ForeignCpu:
    """Cores used by processes other than our children while a worker ran: /proc/stat busy time minus the
    children's CPU time, over wall time. Large values mean the cell was measured on a busy machine."""

    def __enter__(self):
        import resource

        self._res = resource
        try:
            self.j0 = _cpu_jiffies()
        except (OSError, ValueError):
            self.j0 = None
        self.c0 = self._children()
        self.w0 = time.perf_counter()
        return self

    def _children(self):
        r = self._res.getrusage(self._res.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.w0
        self.cores = None
        if self.j0 is None:
            return False
        t1, i1 = _cpu_jiffies()
        busy_s = ((t1 - self.j0[0]) - (i1 - self.j0[1])) / float(os.sysconf("SC_CLK_TCK"))
        self.cores = max(0.0, (busy_s - (self._children() - self.c0)) / max(wall, 1e-9))
        return False


def run_worker(spec, timeout_s):
    """Runs one worker subprocess; returns its result dict (with 'error' on failure)."""
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
        return dict(framework=spec["framework"], threads=spec["threads"], error="timed out after %d s" % timeout_s)
    if os.path.exists(spec["out"]):
        with open(spec["out"]) as f:
            res = json.load(f)
    else:
        res = dict(framework=spec["framework"], threads=spec["threads"],
                   error="worker died (exit %d): %s" % (r.returncode, out[-1500:]))
    return res


# ----------------------------------------------------------------------------------------------
# Reporting


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or "unknown", []
    name = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), "unknown")
    flags = next((l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags")), [])
    return name, [f for f in ("avx2", "fma", "avx512f") if f in flags]


def versions(lib_version):
    v = {"python": platform.python_version(), "masked-rnn": lib_version}
    for d in DISTRIBUTIONS:
        try:
            v[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            pass
    return v


def git_head():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=CRATE_DIR, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "Cargo.toml"], cwd=CRATE_DIR,
                               capture_output=True, text=True).stdout.strip()
        return head + (" (src modified)" if dirty else "")
    except OSError:
        return "unknown"


def fmt_ms(r):
    if r is None:
        return "-"
    if "error" in r:
        return "error"
    m, lo = r["median_ms"], r["min_ms"]
    p = 2 if m < 10 else (1 if m < 1000 else 0)
    disturbed = (r.get("foreign_cores") or 0.0) > r.get("max_foreign", float("inf"))
    return "%.*f (%.*f)%s" % (p, m, p, lo, " †" if disturbed else "")


def best_peer(row, peers):
    ok = [(row[p]["median_ms"], p) for p in peers if p in row and "error" not in row[p]]
    return min(ok) if ok else None


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def markdown(report):
    meta = report["meta"]
    fws = report["frameworks"]
    peers = [f for f in fws if f != "masked-rnn"]
    out = ["# masked-rnn vs peer frameworks: masked LSTM forward pass", ""]
    out.append("CPU: %s (%d cores, %s); %s; command: `%s`%s" % (
        meta["cpu_model"], meta["nproc"], "/".join(meta["cpu_simd"]) or "no AVX2", meta["date"], meta["command"],
        " — QUICK MODE, not for quoting" if meta["quick"] else ""))
    out.append("")
    out.append("Versions: " + ", ".join("%s %s" % (k, v) for k, v in meta["versions"].items()))
    out.append("")
    out.append("Cells: median (min) ms of the forward pass on prepared inputs; speedup = best peer median / "
               "masked-rnn median. Each cell ran in its own process. Keras/TF mode per cell in compare.json.")
    out.append("")
    out.append("| workload | B x T x I -> H | valid steps |")
    out.append("|---|---|---|")
    for w in report["workload_order"]:
        d = report["workloads"][w]
        out.append("| %s | %d x %d x %d -> %s | %.1f %% (lengths %d..%d) |" % (
            w, d["B"], d["T"], d["I"], "->".join(map(str, d["H"])), 100 * d["valid_fraction"], d["len_min"],
            d["len_max"]))
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
            cells = [w] + [fmt_ms(row.get(f)) for f in fws]
            bp = best_peer(row, peers)
            m = row.get("masked-rnn")
            cells.append("%s %s" % (LABELS[bp[1]], fmt_ms(row[bp[1]]).split(" ")[0]) if bp else "-")
            if bp and m and "error" not in m:
                s = bp[0] / m["median_ms"]
                speedups.append(s)
                cells.append("**%.2fx**" % s)
            else:
                cells.append("-")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    report["geomean_speedup"] = geomean(speedups) if speedups else None
    if speedups:
        out.append("Geometric mean of the speedup vs the best peer over all %d (workload, threads) pairs: **%.2fx**"
                   % (len(speedups), report["geomean_speedup"]))
        out.append("")
    out.append("## Correctness (max abs diff vs masked-rnn on valid steps, all cells)")
    out.append("")
    out.append("| framework | max abs diff vs masked-rnn | vs numpy float64 |")
    out.append("|---|---|---|")
    for f in fws:
        rs = [r for r in report["results"] + report["sweep"] if r["framework"] == f and "error" not in r]
        a = [r["max_abs_diff_vs_masked_rnn"] for r in rs if "max_abs_diff_vs_masked_rnn" in r]
        b = [r["max_abs_diff_vs_numpy_f64"] for r in rs if "max_abs_diff_vs_numpy_f64" in r]
        out.append("| %s | %s | %s |" % (LABELS[f], "%.2e" % max(a) if a else "-", "%.2e" % max(b) if b else "-"))
    out.append("")
    keras_modes = sorted({r.get("keras_mode") for r in report["results"] + report["sweep"]
                          if r["framework"] == "keras" and r.get("keras_mode")})
    if keras_modes:
        out.append("Keras/TF timed as: %s (the fastest of eager `model(x, training=False)`, `tf.function` and "
                   "`tf.function(jit_compile=True)`, chosen per cell)." % ", ".join(keras_modes))
        out.append("")
    disturbed = [r for r in report["results"] + report["sweep"]
                 if (r.get("foreign_cores") or 0.0) > r.get("max_foreign", float("inf"))]
    if disturbed:
        out.append("† measured while other processes used more than %.2f cores on average, after %d retries "
                   "(`foreign_cores` in compare.json): %d cells." % (disturbed[0]["max_foreign"],
                                                                     disturbed[0]["attempt"] - 1, len(disturbed)))
    else:
        out.append("No cell was disturbed by other processes (each used < %.2f foreign cores on average; "
                   "`foreign_cores` in compare.json)." % meta.get("max_foreign", 0.3))
    out.append("")
    errors = [r for r in report["results"] + report["sweep"] if "error" in r]
    if errors:
        out.append("## Errors")
        out.append("")
        for r in errors:
            out.append("- %s %s %d threads: %s" % (r["framework"], r.get("workload", r.get("padding_ratio")),
                                                   r["threads"], r["error"].splitlines()[0][:300]))
        out.append("")
    if report["sweep"]:
        s = SWEEP_SHAPE
        out.append("## Padding sweep: %d x %d x %d -> %d, median (min) ms" % (s["B"], s["T"], s["I"], s["H"][0]))
        out.append("")
        for th in sorted({r["threads"] for r in report["sweep"]}):
            out.append("%d thread%s:" % (th, "" if th == 1 else "s"))
            out.append("")
            head = ["padding"] + [LABELS[f] for f in fws] + ["speedup vs best peer"]
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "---|" * len(head))
            for ratio in SWEEP_RATIOS:
                row = {r["framework"]: r for r in report["sweep"] if r["padding_ratio"] == ratio and r["threads"] == th}
                cells = ["%d %%" % round(100 * ratio)] + [fmt_ms(row.get(f)) for f in fws]
                bp, m = best_peer(row, peers), row.get("masked-rnn")
                cells.append("%.2fx" % (bp[0] / m["median_ms"]) if bp and m and "error" not in m else "-")
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
        out.append("![padding sweep](padding_sweep.png)")
        out.append("")
    return "\n".join(out)


def plot_sweep(report, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no padding_sweep.png (pip install matplotlib)", flush=True)
        return False
    threads = sorted({r["threads"] for r in report["sweep"]})
    fig, axes = plt.subplots(1, len(threads), figsize=(6.2 * len(threads), 4.8), squeeze=False)
    styles = {"masked-rnn": ("C3", "o", 2.6), "onnxruntime": ("C0", "s", 1.6), "torch-packed": ("C2", "^", 1.6),
              "torch-padded": ("C2", "v", 1.6), "keras": ("C1", "D", 1.6)}
    for ax, th in zip(axes[0], threads):
        for f in report["frameworks"]:
            pts = sorted((r["padding_ratio"], r["median_ms"]) for r in report["sweep"]
                         if r["framework"] == f and r["threads"] == th and "error" not in r)
            if not pts:
                continue
            color, marker, lw = styles[f]
            ax.plot([100 * p for p, _ in pts], [t for _, t in pts], marker=marker, color=color, linewidth=lw,
                    linestyle="--" if f == "torch-padded" else "-", label=LABELS[f])
        ax.set_xlabel("padding ratio (% of the B x T steps that are padding)")
        ax.set_ylabel("forward time, median (ms)")
        ax.set_title("%d thread%s" % (th, "" if th == 1 else "s"))
        ax.set_xticks([100 * r for r in SWEEP_RATIOS])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    s = SWEEP_SHAPE
    meta = report["meta"]
    fig.suptitle("LSTM %dx%dx%d->%d, time vs padding - %s (%d cores), %s thread%s" % (
        s["B"], s["T"], s["I"], s["H"][0], meta["cpu_model"], meta["nproc"], " and ".join(map(str, threads)),
        "" if threads == [1] else "s"))
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
    p.add_argument("--no-sweep", action="store_true", help="skip the padding sweep")
    p.add_argument("--sweep-threads", default=None, help="thread counts of the sweep (default: --threads)")
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timed runs per cell (default 3; max 20 runs)")
    p.add_argument("--keras-mode", default="auto", choices=["auto", "eager", "function", "xla"],
                   help="how Keras is called; auto = the fastest of the three, chosen per cell")
    p.add_argument("--lib", default=None, help="path to libmasked_rnn.so (default: target/release of the crate)")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build --release")
    p.add_argument("--out-dir", default=None, help="where results go (default bench/results)")
    p.add_argument("--timeout", type=int, default=600, help="seconds before a worker is killed (default 600)")
    p.add_argument("--wait-idle", type=int, default=120, help="before each cell, wait up to this many seconds "
                   "for other processes to leave the CPUs idle (0: don't wait; default 120)")
    p.add_argument("--max-foreign", type=float, default=0.3, help="a cell during which other processes used "
                   "more than this many cores on average is measured again (default 0.3)")
    p.add_argument("--retries", type=int, default=3, help="how many times a disturbed cell is measured again")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the temporary folder is removed
    if args.worker:
        with open(args.worker) as f:
            worker(json.load(f))
        return 0

    workloads = [w for w in args.workloads.split(",") if w]
    frameworks = [f for f in args.frameworks.split(",") if f]
    threads = [int(t) for t in args.threads.split(",") if t]
    sweep_threads = [int(t) for t in (args.sweep_threads or args.threads).split(",") if t]
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit("unknown workload %r (known: %s)" % (w, ", ".join(WORKLOADS)))
    for f in frameworks:
        if f not in FRAMEWORKS:
            sys.exit("unknown framework %r (known: %s)" % (f, ", ".join(FRAMEWORKS)))
    out_dir = os.path.normpath(args.out_dir or os.path.join(BENCH_DIR, "results", "quick" if args.quick else ""))
    os.makedirs(out_dir, exist_ok=True)

    lib_path, lib_version = None, None
    # built even when masked-rnn is not timed: its output is the reference of the correctness check
    lib_path = build_lib(os.path.abspath(args.lib) if args.lib else default_lib_path(), args.no_build)
    if lib_path:
        lib_version = load_lib(lib_path).mrnn_version().decode()
    active = []
    for f in frameworks:
        if f == "masked-rnn" and not lib_path:
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

    cpu, simd = cpu_model()
    meta = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                command=" ".join([sys.executable] + sys.argv),
                cpu_model=cpu, cpu_simd=simd, nproc=os.cpu_count(), machine=platform.machine(),
                os=platform.platform(), versions=versions(lib_version), crate_git=git_head(), lib=lib_path,
                quick=args.quick, budget_s=args.budget, max_foreign=args.max_foreign, seed=SEED, loadavg_before=os.getloadavg())
    print("CPU %s (%d cores), load %.2f; frameworks: %s" % (cpu, os.cpu_count(), os.getloadavg()[0],
                                                             ", ".join(active)), flush=True)
    report = dict(meta=meta, frameworks=active, threads=threads, workload_order=workloads, workloads={},
                  results=[], sweep=[])
    budget = min(args.budget, 0.5) if args.quick else args.budget
    t_start = time.time()
    tmp = tempfile.mkdtemp(prefix="mrnn-bench-")

    def run_cells(tag, data, extra, thread_list, sink):
        refs = {"numpy_f64": numpy_reference(data)}
        if lib_path:
            refs["masked_rnn"] = masked_rnn_reference(data, lib_path)
        path = os.path.join(tmp, tag + ".npz")
        save_data(path, data, refs)
        for th in thread_list:
            for f in active:
                spec = dict(framework=f, threads=th, quick=args.quick, data=path, lib=lib_path,
                            out=os.path.join(tmp, "%s-%s-%d.json" % (tag, f, th)), budget_s=budget,
                            keras_mode=args.keras_mode)
                for attempt in range(1, args.retries + 2):
                    busy = wait_idle(args.wait_idle) if args.wait_idle > 0 else busy_cores()
                    with ForeignCpu() as foreign:
                        res = run_worker(spec, args.timeout)
                    res.update(extra, busy_cores_before=None if busy is None else round(busy, 2),
                               foreign_cores=None if foreign.cores is None else round(foreign.cores, 2),
                               attempt=attempt, max_foreign=args.max_foreign)
                    if foreign.cores is None or foreign.cores <= args.max_foreign or attempt > args.retries:
                        break
                    print("  %-10s %d thr  %-13s other processes used %.2f cores meanwhile: measuring again"
                          % (tag, th, f, foreign.cores), flush=True)
                sink.append(res)
                if "error" in res:
                    print("  %-10s %d thr  %-13s ERROR %s" % (tag, th, f, res["error"].splitlines()[0][:300]),
                          flush=True)
                else:
                    print("  %-10s %d thr  %-13s median %9.3f ms  min %9.3f ms  runs %2d  cpu %.2f  diff %.1e%s"
                          % (tag, th, f, res["median_ms"], res["min_ms"], res["runs"], res["cpu_utilisation"],
                             res.get("max_abs_diff_vs_masked_rnn", res.get("max_abs_diff_vs_numpy_f64")),
                             "  others %.2f" % res["foreign_cores"] if res.get("foreign_cores") is not None else "")
                          + ("  [%s]" % res["keras_mode"] if "keras_mode" in res else ""), flush=True)

    try:
        for w in workloads:
            spec = WORKLOADS[w]
            data = make_data(spec["B"], spec["T"], spec["I"], spec["H"], lo=spec["lens"][0], hi=spec["lens"][1])
            lens = data["lengths"]
            report["workloads"][w] = dict(B=spec["B"], T=spec["T"], I=spec["I"], H=spec["H"],
                                          lengths_range=list(spec["lens"]), len_min=int(lens.min()),
                                          len_max=int(lens.max()),
                                          valid_fraction=float(lens.sum()) / (spec["B"] * spec["T"]))
            run_cells(w, data, dict(workload=w), threads, report["results"])
        if not args.no_sweep:
            s = SWEEP_SHAPE
            report["sweep_shape"] = s
            for ratio in SWEEP_RATIOS:
                lens = sweep_lengths(s["B"], s["T"], ratio, np.random.default_rng(SEED + 1))
                data = make_data(s["B"], s["T"], s["I"], s["H"], lens=lens)
                tag = "pad%02d" % round(100 * ratio)
                run_cells(tag, data, dict(padding_ratio=ratio, len_min=int(lens.min()), len_max=int(lens.max()),
                                          valid_steps=int(lens.sum())), sweep_threads, report["sweep"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    meta["loadavg_after"] = os.getloadavg()
    meta["wall_s"] = round(time.time() - t_start, 1)
    md = markdown(report)  # also fills report["geomean_speedup"]
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write(md + "\n")
    wrote = ["compare.json", "compare.md"]
    if report["sweep"] and plot_sweep(report, os.path.join(out_dir, "padding_sweep.png")):
        wrote.append("padding_sweep.png")
    print("\n" + md)
    print("wrote %s in %s (%.0f s)" % (", ".join(wrote), out_dir, meta["wall_s"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
