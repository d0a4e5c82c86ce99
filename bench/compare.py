#!/usr/bin/env python3
"""Time masked-rnn against ONNX Runtime, PyTorch and Keras/TensorFlow on masked LSTM and GRU forward passes.

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

# name: batch, time, input, hidden sizes of the stacked layers, (min length, max length); GRU workloads also
# say where the reset gate goes: reset_after=True is Keras' default, PyTorch's only GRU and ONNX
# linear_before_reset = 1; reset_after=False is the ONNX default linear_before_reset = 0.
WORKLOADS = {
    "seed": dict(B=100, T=362, I=24, H=[128, 64, 1], lens=(90, 362)),
    "mid": dict(B=64, T=256, I=256, H=[256], lens=(32, 256)),
    "mid_full": dict(B=64, T=256, I=256, H=[256], lens=(256, 256)),
    "latency": dict(B=1, T=128, I=512, H=[512], lens=(128, 128)),
    "gru_mid": dict(B=64, T=256, I=256, H=[256], lens=(32, 256), cell="gru", reset_after=False),
    "gru_torch": dict(B=64, T=256, I=256, H=[256], lens=(32, 256), cell="gru", reset_after=True),
    "gru_stream": dict(B=1, T=200, I=80, H=[256], lens=(200, 200), cell="gru", reset_after=True),
}
CELLS = ["lstm", "gru"]
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


def cell_variant(cell, reset_after):
    """What a workload's cell is, for the tables."""
    if cell == "lstm":
        return "LSTM"
    return "GRU, reset %s (ONNX linear_before_reset=%d, Keras reset_after=%s)" % (
        "after" if reset_after else "before", int(reset_after), reset_after)


def make_data(B, T, I, H, lens=None, lo=None, hi=None, seed=SEED, cell="lstm", reset_after=False):
    """x [B,T,I] float32 zero-padded at the end, lengths [B] int32, mask [B,T] uint8, Keras weights: LSTM
    kernel [I,4H] i,f,c,o and bias [4H]; GRU kernel [I,3H] z,r,h and bias [2,3H] (input row, recurrent row)
    with reset_after, else [3H]. The draws come in the same order for both cells: same shapes and seed give
    the same lengths and inputs."""
    assert cell in CELLS, cell
    gates = 4 if cell == "lstm" else 3
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
        kernel = rng.uniform(-s, s, size=(n_in, gates * h)).astype(np.float32)
        recurrent = rng.uniform(-s, s, size=(h, gates * h)).astype(np.float32)
        bias_shape = (2, 3 * h) if cell == "gru" and reset_after else (gates * h,)
        bias = rng.uniform(-s, s, size=bias_shape).astype(np.float32)
        layers.append((kernel, recurrent, bias))
        n_in = h
    return dict(x=np.ascontiguousarray(x), lengths=lens, mask=mask, layers=layers, cell=cell,
                reset_after=bool(reset_after and cell == "gru"))


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _lstm_step_f64(xk_t, state, r, _rb):
    """One Keras LSTM step: xk_t = x.kernel + bias, gates i,f,c,o; returns the new (h, c)."""
    h, c = state
    H = r.shape[0]
    z = xk_t + h @ r
    i, f, g, o = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sigmoid(z[:, 3 * H:])
    c_new = f * c + i * g
    return o * np.tanh(c_new), c_new


def _gru_step_f64(xk_t, state, r, rb):
    """One Keras GRU step: xk_t = x.kernel + input bias, gates z,r,h. rb is the recurrent bias row
    (reset_after: h~ = tanh(x.Wh + bh + r * (h.Uh + rbh))) or None (reset before: h~ = tanh(x.Wh + bh +
    (r * h).Uh)). Returns (h',) with h' = z * h + (1 - z) * h~ (ONNX, PyTorch: (1 - z) * h~ + z * h)."""
    (h,) = state
    H = r.shape[0]
    if rb is not None:
        hr = h @ r + rb
        z = sigmoid(xk_t[:, :H] + hr[:, :H])
        rr = sigmoid(xk_t[:, H:2 * H] + hr[:, H:2 * H])
        cand = np.tanh(xk_t[:, 2 * H:] + rr * hr[:, 2 * H:])
    else:
        z = sigmoid(xk_t[:, :H] + h @ r[:, :H])
        rr = sigmoid(xk_t[:, H:2 * H] + h @ r[:, H:2 * H])
        cand = np.tanh(xk_t[:, 2 * H:] + (rr * h) @ r[:, 2 * H:])
    return (z * h + (1.0 - z) * cand,)


def numpy_reference(data):
    """The Keras LSTM or GRU stack in float64, written from the equations (not from any framework), padded
    steps carried over (only valid steps are ever compared)."""
    h_seq = data["x"].astype(np.float64)
    mask = data["mask"].astype(bool)
    B, T, _ = h_seq.shape
    lstm = data["cell"] == "lstm"
    step = _lstm_step_f64 if lstm else _gru_step_f64
    for kernel, recurrent, bias in data["layers"]:
        k, r, b = kernel.astype(np.float64), recurrent.astype(np.float64), bias.astype(np.float64)
        H = r.shape[0]
        b_in, b_rec = (b[0], b[1]) if b.ndim == 2 else (b, None)
        xk = h_seq @ k + b_in  # [B,T,gates*H]
        state = tuple(np.zeros((B, H)) for _ in range(2 if lstm else 1))
        out = np.zeros((B, T, H))
        for t in range(T):
            new = step(xk[:, t], state, r, b_rec)
            m = mask[:, t][:, None]
            state = tuple(np.where(m, n, o) for n, o in zip(new, state))
            out[:, t] = state[0]
        h_seq = out
    return h_seq.astype(np.float32)


def valid_max_abs_diff(y, ref, mask):
    y = np.asarray(y, dtype=np.float32).reshape(ref.shape)
    if not mask.any():
        return 0.0
    d = np.abs(y.astype(np.float64) - ref.astype(np.float64))[mask.astype(bool)]
    return float(np.nanmax(d)) if not np.isnan(d).any() else float("nan")


def save_data(path, data, refs):
    arrays = dict(x=data["x"], lengths=data["lengths"], mask=data["mask"], cell=np.array(data["cell"]),
                  reset_after=np.array(int(data["reset_after"])))
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
    return dict(x=z["x"], lengths=z["lengths"], mask=z["mask"], layers=layers, cell=str(z["cell"]),
                reset_after=bool(z["reset_after"])), refs


# ----------------------------------------------------------------------------------------------
# masked-rnn through its C ABI


# The fields MrnnKerasLstmAttrs and MrnnKerasGruAttrs (include/masked_rnn.h) begin with.
_KERAS_ATTRS_HEAD = [
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
]


class MrnnKerasLstmAttrs(ctypes.Structure):
    _fields_ = _KERAS_ATTRS_HEAD + [("num_threads", ctypes.c_int32)]


class MrnnKerasGruAttrs(ctypes.Structure):
    _fields_ = _KERAS_ATTRS_HEAD + [("reset_after", ctypes.c_int32), ("num_threads", ctypes.c_int32)]


# The Keras-style handle functions of each cell: attrs struct, and the NULL state pointers of _run between
# the mask and y (LSTM initial_h, initial_c; GRU initial_h) and after y (last_output, h_n[, c_n]).
MRNN_CELL = {
    "lstm": dict(attrs=MrnnKerasLstmAttrs, prefix="mrnn_keras_lstm", n_init=2, n_after=3),
    "gru": dict(attrs=MrnnKerasGruAttrs, prefix="mrnn_keras_gru", n_init=1, n_after=2),
}


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
    lib.mrnn_lstm_keras.argtypes = [ctypes.POINTER(MrnnKerasLstmAttrs)] + [ctypes.c_void_p] * 11
    lib.mrnn_lstm_keras.restype = ctypes.c_int32
    # Handles: weights packed once by _new, then _run per forward pass, _free at the end.
    for c in MRNN_CELL.values():
        if not hasattr(lib, c["prefix"] + "_new"):  # an older build without this cell
            continue
        attrs_p = ctypes.POINTER(c["attrs"])
        for suffix, args, res in (
                ("_attrs_init", [attrs_p], ctypes.c_int32),
                ("_new", [attrs_p] + [ctypes.c_void_p] * 3 + [ctypes.POINTER(ctypes.c_void_p)], ctypes.c_int32),
                ("_run", [ctypes.c_void_p, attrs_p] + [ctypes.c_void_p] * (3 + c["n_init"] + c["n_after"]),
                 ctypes.c_int32),
                ("_free", [ctypes.c_void_p], None)):
            f = getattr(lib, c["prefix"] + suffix)
            f.argtypes, f.restype = args, res
    return lib


def check_status(lib, status, what):
    if status != 0:
        msg = lib.mrnn_last_error().decode("utf-8", "replace")
        raise RuntimeError("%s failed with status %d: %s" % (what, status, msg))


def prepare_masked_rnn(data, threads, lib_path):
    """One handle per layer (mrnn_keras_lstm_new / mrnn_keras_gru_new: weights checked and packed once, here,
    outside the timed region, as ONNX Runtime packs its weights when the session is created); fn() runs them
    in turn."""
    lib = load_lib(lib_path)
    cell = MRNN_CELL[data["cell"]]
    pre = cell["prefix"]
    if not hasattr(lib, pre + "_new"):
        raise RuntimeError("%s has no %s_new (a build older than the %s handles)" % (lib_path, pre, data["cell"]))
    x, mask = data["x"], np.ascontiguousarray(data["mask"])
    B, T, I = x.shape
    calls = []  # (attrs, handle, x, weights, y): y of a layer is x of the next
    cur = x

    def free_all():
        while calls:
            getattr(lib, pre + "_free")(calls.pop()[1])

    try:
        for kernel, recurrent, bias in data["layers"]:
            H = recurrent.shape[0]
            attrs = cell["attrs"]()
            check_status(lib, getattr(lib, pre + "_attrs_init")(ctypes.byref(attrs)), pre + "_attrs_init")
            attrs.batch_size, attrs.seq_length, attrs.input_size, attrs.hidden_size = B, T, cur.shape[2], H
            attrs.num_threads = threads
            if data["cell"] == "gru":
                attrs.reset_after = int(data["reset_after"])
            w = [np.ascontiguousarray(a, dtype=np.float32) for a in (kernel, recurrent, bias)]
            handle = ctypes.c_void_p()
            check_status(lib, getattr(lib, pre + "_new")(ctypes.byref(attrs), w[0].ctypes.data, w[1].ctypes.data,
                                                         w[2].ctypes.data, ctypes.byref(handle)), pre + "_new")
            y = np.zeros((B, T, H), dtype=np.float32)
            calls.append((attrs, handle, cur, w, y))
            cur = y
    except Exception:
        free_all()
        raise
    mask_p = mask.ctypes.data
    init, after = (None,) * cell["n_init"], (None,) * cell["n_after"]  # no initial states, y only
    plan = [(h, ctypes.byref(a), xi.ctypes.data, y.ctypes.data) for a, h, xi, _w, y in calls]
    keep = (calls, mask)  # keep the buffers alive while fn is
    fn_run = getattr(lib, pre + "_run")

    def fn():
        for h, a, xp, yp in plan:
            st = fn_run(h, a, xp, mask_p, *init, yp, *after)
            if st != 0:
                check_status(lib, st, pre + "_run")
        return keep[0][-1][4]

    fn.close = free_all  # the worker frees the handles after the timed runs
    info = dict(version=lib.mrnn_version().decode(),
                call="%s_run via ctypes (handles from %s_new, created before timing), num_threads=%d%s"
                     % (pre, pre, threads,
                        ", reset_after=%d" % data["reset_after"] if data["cell"] == "gru" else ""))
    return fn, (lambda out: out), info


def masked_rnn_reference(data, lib_path):
    fn, to_np, _ = prepare_masked_rnn(data, 1, lib_path)
    try:
        return np.array(to_np(fn()))
    finally:
        fn.close()


# ----------------------------------------------------------------------------------------------
# Peers. Each prepare_* returns (fn, to_numpy, info); fn() is the timed forward pass.


def reorder_gates(a, H, order):
    """Split the last axis into gate blocks of H and put them in `order` (indices of the blocks)."""
    return np.concatenate([a[..., n * H:(n + 1) * H] for n in order], axis=-1)


def keras_to_onnx_gates(a, H):
    """LSTM: Keras gate blocks i,f,c,o to ONNX i,o,f,c."""
    return reorder_gates(a, H, (0, 3, 1, 2))


def keras_to_torch_gru_gates(a, H):
    """GRU: Keras gate blocks z,r,h to PyTorch r,z,n (ONNX's z,r,h is Keras' order)."""
    return reorder_gates(a, H, (1, 0, 2))


def onnx_weights(cell, kernel, recurrent, bias):
    """W [1,G*H,I], R [1,G*H,H], B [1,2*G*H] = (Wb, Rb) of an ONNX LSTM (G = 4) or GRU (G = 3) node from Keras
    weights. GRU: the gates keep their order; reset_after's bias rows are Wb and Rb, reset-before's single
    bias row is Wb (with Rb = 0: linear_before_reset = 0 adds Rbh outside the reset, so the sum is all that
    matters)."""
    H = recurrent.shape[0]
    if cell == "lstm":
        conv = lambda a: keras_to_onnx_gates(a, H)  # noqa: E731
        b = np.concatenate([conv(bias), np.zeros(4 * H, np.float32)])
    else:
        conv = lambda a: a  # noqa: E731
        b = bias.reshape(-1) if bias.ndim == 2 else np.concatenate([bias, np.zeros(3 * H, np.float32)])
    return conv(kernel).T[None], conv(recurrent).T[None], b[None]


def onnx_model(data, weights_as_inputs=False, with_y_h=False):
    """The ONNX model of the workload's stacked LSTM or GRU nodes (opset 17, layout 0, sequence_lens) and
    the feeds of its weights: as initializers (ONNX Runtime packs them once, when the session is created;
    no feeds) or, weights_as_inputs, as graph inputs W0, R0, B0, ... fed at each run. Outputs: Y of the last
    node [T,1,B,H], and its Y_h [1,B,H] with with_y_h."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x, cell = data["x"], data["cell"]
    B, T, I = x.shape
    op = cell.upper()
    extra = dict(linear_before_reset=int(data["reset_after"])) if cell == "gru" else {}
    nodes, inits, weight_inputs, weight_feeds = [], [], [], {}
    if len(data["layers"]) > 1:  # the Squeeze between stacked layers
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
    cur = "X"
    for n, (kernel, recurrent, bias) in enumerate(data["layers"]):
        H = recurrent.shape[0]
        for name, arr in zip(("W%d" % n, "R%d" % n, "B%d" % n), onnx_weights(cell, kernel, recurrent, bias)):
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            if weights_as_inputs:
                weight_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arr.shape)))
                weight_feeds[name] = arr
            else:
                inits.append(numpy_helper.from_array(arr, name))
        y = "Y%d" % n
        last = n + 1 == len(data["layers"])
        outs = [y, "Y_h"] if last and with_y_h else [y]
        nodes.append(helper.make_node(op, [cur, "W%d" % n, "R%d" % n, "B%d" % n, "sequence_lens"], outs,
                                      hidden_size=H, layout=0, name="%s%d" % (cell, n), **extra))
        if not last:
            nodes.append(helper.make_node("Squeeze", [y, "axis1"], ["S%d" % n], name="squeeze%d" % n))
            cur = "S%d" % n
    H_last = data["layers"][-1][1].shape[0]
    outputs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, [T, 1, B, H_last])]
    if with_y_h:
        outputs.append(helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, B, H_last]))
    graph = helper.make_graph(
        nodes, "masked_" + cell,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I]),
         helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B])] + weight_inputs,
        outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, weight_feeds


def prepare_onnxruntime(data, threads, _lib, weights_as_inputs=False, with_y_h=False):
    """fn() runs the session and returns its output list (Y, then Y_h with with_y_h); to_np gives Y as
    [B,T,H]. weights_as_inputs: see onnx_model."""
    import onnxruntime as ort

    x, lengths, cell = data["x"], data["lengths"], data["cell"]
    model, weight_feeds = onnx_model(data, weights_as_inputs, with_y_h)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {"X": np.ascontiguousarray(x.transpose(1, 0, 2)), "sequence_lens": lengths.astype(np.int32)}
    feeds.update(weight_feeds)

    def fn():
        return sess.run(None, feeds)

    def to_np(out):  # Y [T,1,B,H] -> [B,T,H]
        return out[0][:, 0].transpose(1, 0, 2)

    extra = dict(linear_before_reset=int(data["reset_after"])) if cell == "gru" else {}
    info = dict(version=ort.__version__, call="InferenceSession.run, opset 17 %s layout 0 with sequence_lens%s%s, "
                "intra_op=%d inter_op=1 sequential" % (cell.upper(), "".join(", %s=%d" % kv for kv in extra.items()),
                                                       ", W R B as graph inputs" if weights_as_inputs else "",
                                                       threads))
    return fn, to_np, info


def torch_unsupported(data):
    """Why PyTorch cannot compute this workload, or None."""
    if data["cell"] == "gru" and not data["reset_after"]:
        return ("PyTorch's nn.GRU always applies the reset gate after the recurrent matmul (reset_after / ONNX "
                "linear_before_reset = 1); it has no reset-before GRU")
    return None


def torch_weights(cell, kernel, recurrent, bias):
    """weight_ih, weight_hh, bias_ih, bias_hh of a PyTorch LSTM or GRU from Keras weights. LSTM: Keras i,f,c,o
    is PyTorch i,f,g,o (only transpose; bias_hh = 0). GRU (reset_after only): z,r,h to r,z,n, bias rows
    input / recurrent."""
    if cell == "lstm":
        return kernel.T, recurrent.T, bias, np.zeros_like(bias)
    H = recurrent.shape[0]
    conv = lambda a: keras_to_torch_gru_gates(a, H)  # noqa: E731
    return conv(kernel).T, conv(recurrent).T, conv(bias[0]), conv(bias[1])


def _torch_modules(data):
    import torch

    why = torch_unsupported(data)
    if why:
        raise RuntimeError(why)
    mods = []
    n_in = data["x"].shape[2]
    cls = torch.nn.LSTM if data["cell"] == "lstm" else torch.nn.GRU
    for kernel, recurrent, bias in data["layers"]:
        H = recurrent.shape[0]
        m = cls(n_in, H, batch_first=True)
        with torch.no_grad():
            for param, arr in zip((m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0),
                                  torch_weights(data["cell"], kernel, recurrent, bias)):
                param.copy_(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)))
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

    info = dict(version=torch.__version__, call="pack_padded_sequence(enforce_sorted=False) -> %s x%d -> "
                "pad_packed_sequence, inference_mode, set_num_threads(%d)"
                % (data["cell"].upper(), len(mods), threads))
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

    info = dict(version=torch.__version__, call="%s x%d on the padded tensor, inference_mode, set_num_threads(%d)"
                % (data["cell"].upper(), len(mods), threads))
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
    rnns = []
    for _kernel, recurrent, _bias in data["layers"]:
        if data["cell"] == "lstm":
            layer = keras.layers.LSTM(recurrent.shape[0], return_sequences=True)
        else:
            layer = keras.layers.GRU(recurrent.shape[0], return_sequences=True, reset_after=data["reset_after"])
        h = layer(h)
        rnns.append(layer)
    model = keras.Model(inp, h)
    for layer, (kernel, recurrent, bias) in zip(rnns, data["layers"]):
        layer.set_weights([kernel, recurrent, bias])  # Keras layout: no conversion
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
                call="Model(Masking(0.0) -> %s x%d), %s, intra_op=%d inter_op=1"
                     % (data["cell"].upper() + ("(reset_after=%s)" % data["reset_after"] if data["cell"] == "gru"
                                                else ""), len(rnns), mode, threads),
                keras_mode=mode, keras_mode_trials_ms=trials)
    return fn, (lambda out: np.asarray(out)), info


# frameworks that cannot compute some workloads: a function of the data giving the reason, or None
UNSUPPORTED = {
    "torch-packed": torch_unsupported,
    "torch-padded": torch_unsupported,
}

PREPARE = {
    "masked-rnn": prepare_masked_rnn,
    "onnxruntime": prepare_onnxruntime,
    "torch-packed": prepare_torch_packed,
    "torch-padded": prepare_torch_padded,
    "keras": prepare_keras,
}


# ----------------------------------------------------------------------------------------------
# Worker: one (framework, workload, threads) per process


# Seconds of warm-up calls of a full run, at least (and at least 3 calls).
WARMUP_S = 0.3


def time_fn(fn, warmup, budget_s, max_runs, min_runs, warmup_s=0.0):
    """`warmup` calls, continued until `warmup_s` seconds have passed, then the timed calls."""
    n, t_w = 0, time.perf_counter()
    while n < warmup or time.perf_counter() - t_w < warmup_s:
        fn()
        n += 1
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
            warmup, max_runs, min_runs, warmup_s = 1, 5, 2, 0.0
        else:
            # At least WARMUP_S of calls: thread pools that spin between steps (masked-rnn's gate-column
            # split, ONNX Runtime's) run their first tens of milliseconds slower (see bench/README.md).
            warmup, max_runs, min_runs, warmup_s = 3, 20, 3, WARMUP_S
            if fw == "keras":  # slow; also every call already ran during the mode choice
                warmup, max_runs = 1, 10
        times, util = time_fn(fn, warmup, budget, max_runs, min_runs, warmup_s)
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


def worker_env(threads):
    """The environment of a worker process: thread pools sized before any framework starts."""
    env = dict(os.environ)
    n = str(threads)
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, TF_CPP_MIN_LOG_LEVEL="2",
               KERAS_BACKEND="tensorflow", PYTHONWARNINGS="ignore")
    return env


def run_worker(spec, timeout_s):
    """Runs one worker subprocess; returns its result dict (with 'error' on failure)."""
    env = worker_env(spec["threads"])
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
    if "skipped" in r:
        return "n/a"
    m, lo = r["median_ms"], r["min_ms"]
    p = 2 if m < 10 else (1 if m < 1000 else 0)
    disturbed = (r.get("foreign_cores") or 0.0) > r.get("max_foreign", float("inf"))
    return "%.*f (%.*f)%s" % (p, m, p, lo, " †" if disturbed else "")


def best_peer(row, peers):
    ok = [(row[p]["median_ms"], p) for p in peers if p in row and "median_ms" in row[p]]
    return min(ok) if ok else None


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def markdown(report):
    meta = report["meta"]
    fws = report["frameworks"]
    peers = [f for f in fws if f != "masked-rnn"]
    out = ["# masked-rnn vs peer frameworks: masked LSTM and GRU forward passes", ""]
    out.append("CPU: %s (%d cores, %s); %s; command: `%s`%s" % (
        meta["cpu_model"], meta["nproc"], "/".join(meta["cpu_simd"]) or "no AVX2", meta["date"], meta["command"],
        " — QUICK MODE, not for quoting" if meta["quick"] else ""))
    out.append("")
    out.append("Versions: " + ", ".join("%s %s" % (k, v) for k, v in meta["versions"].items()))
    out.append("")
    out.append("Cells: median (min) ms of the forward pass on prepared inputs; speedup = best peer median / "
               "masked-rnn median. Each cell ran in its own process. Keras/TF mode per cell in compare.json.")
    out.append("")
    out.append("| workload | cell | B x T x I -> H | valid steps |")
    out.append("|---|---|---|---|")
    for w in report["workload_order"]:
        d = report["workloads"][w]
        out.append("| %s | %s | %d x %d x %d -> %s | %.1f %% (lengths %d..%d) |" % (
            w, cell_variant(d.get("cell", "lstm"), d.get("reset_after")), d["B"], d["T"], d["I"],
            "->".join(map(str, d["H"])), 100 * d["valid_fraction"], d["len_min"], d["len_max"]))
    out.append("")
    speedups = {}  # cell -> speedups of its (workload, threads) pairs
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
                speedups.setdefault(report["workloads"][w].get("cell", "lstm"), []).append(s)
                cells.append("**%.2fx**" % s)
            else:
                cells.append("-")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    skipped = {}  # reason -> [(framework, workload)]
    for r in report["results"]:
        if "skipped" in r and (r["framework"], r["workload"]) not in skipped.get(r["skipped"], []):
            skipped.setdefault(r["skipped"], []).append((r["framework"], r["workload"]))
    for why, cells in skipped.items():
        out.append("n/a: %s not timed: %s." % (", ".join("%s on %s" % (LABELS[f], w) for f, w in cells), why))
        out.append("")
    # the LSTM and GRU workloads are summarised separately (the GRU's target is its own)
    all_speedups = [x for xs in speedups.values() for x in xs]
    report["geomean_speedup"] = geomean(all_speedups) if all_speedups else None
    report["geomean_speedup_by_cell"] = {c: geomean(xs) for c, xs in speedups.items()}
    for c in CELLS:
        if c in speedups:
            out.append("Geometric mean of the speedup vs the best peer over the %d %s (workload, threads) pairs: "
                       "**%.2fx**" % (len(speedups[c]), c.upper(), report["geomean_speedup_by_cell"][c]))
            out.append("")
    out.append("## Correctness (max abs diff vs masked-rnn on valid steps, all cells)")
    out.append("")
    out.append("| framework | cell | max abs diff vs masked-rnn | vs numpy float64 |")
    out.append("|---|---|---|---|")
    for f in fws:
        for c in CELLS:
            rs = [r for r in report["results"] + report["sweep"] if r["framework"] == f and "error" not in r
                  and report["workloads"].get(r.get("workload"), {}).get("cell", "lstm") == c]
            a = [r["max_abs_diff_vs_masked_rnn"] for r in rs if "max_abs_diff_vs_masked_rnn" in r]
            b = [r["max_abs_diff_vs_numpy_f64"] for r in rs if "max_abs_diff_vs_numpy_f64" in r]
            if a or b:
                out.append("| %s | %s | %s | %s |" % (LABELS[f], c.upper(), "%.2e" % max(a) if a else "-",
                                                      "%.2e" % max(b) if b else "-"))
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
    add_idle_options(p)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def add_idle_options(p, wait_idle=120, retries=3, what="a cell during which"):
    """--wait-idle, --max-foreign, --retries: the idle guard and the re-measuring of disturbed cells."""
    p.add_argument("--wait-idle", type=int, default=wait_idle, help="before each cell, wait up to this many seconds "
                   "for other processes to leave the CPUs idle (0: don't wait; default %d)" % wait_idle)
    p.add_argument("--max-foreign", type=float, default=0.3, help="%s other processes used more than this many "
                   "cores on average is measured again (default 0.3)" % what)
    p.add_argument("--retries", type=int, default=retries, help="how many times a disturbed %s is measured again"
                   % what.split()[1])


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
                why = UNSUPPORTED[f](data) if f in UNSUPPORTED else None
                if why:  # not timed, said in the tables
                    sink.append(dict(extra, framework=f, threads=th, skipped=why))
                    print("  %-10s %d thr  %-13s skipped: %s" % (tag, th, f, why), flush=True)
                    continue
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
            cell, reset_after = spec.get("cell", "lstm"), spec.get("reset_after", False)
            data = make_data(spec["B"], spec["T"], spec["I"], spec["H"], lo=spec["lens"][0], hi=spec["lens"][1],
                             cell=cell, reset_after=reset_after)
            lens = data["lengths"]
            report["workloads"][w] = dict(B=spec["B"], T=spec["T"], I=spec["I"], H=spec["H"], cell=cell,
                                          reset_after=reset_after if cell == "gru" else None,
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
