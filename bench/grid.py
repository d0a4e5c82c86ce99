#!/usr/bin/env python3
"""The shape grid of issue #10: one masked LSTM or GRU layer, forward, ONNX conventions, over batch, hidden
size and threads, masked-rnn (handle and one-shot) against ONNX Runtime and PyTorch.

Every cell (cell type, B, H = I, T = 50, lengths, threads) times its contenders back to back: the masked-rnn
handle and one-shot functions, ONNX Runtime with the weights as initializers and as graph inputs, PyTorch
packed and padded. Each framework family runs in a persistent worker process per thread count that serves
every cell over a pipe. See bench/README.md, section "Shape grid".

    /opt/mrnn-venv/bin/python bench/grid.py                          # the full grid (see README for its length)
    /opt/mrnn-venv/bin/python bench/grid.py --no-build --batches 1,16 --hidden 64,256 --budget 0.5
    /opt/mrnn-venv/bin/python bench/grid.py --plot-only              # redraw grid.md and the PNGs from grid.json
"""

import argparse
import ctypes
import datetime
import gc
import importlib.util
import json
import math
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import compare as fwd  # noqa: E402  (data, weight conversions, ctypes binding, peers, timing, idle guard)

np = fwd.np

CELLS = ["lstm", "gru"]
BATCHES = [1, 4, 16, 64, 256]
HIDDEN = [64, 256, 1024, 2048]
THREADS = [1, 2]
T = 50
LENGTHS = {"uniform": (25, 50), "full": (50, 50)}
TOL = 1e-4  # a contender further than this from masked-rnn on a valid step is flagged

# contender: (label, worker family, prepare function name in this file or compare.py, kwargs)
CONTENDERS = ["masked-rnn", "masked-rnn-oneshot", "ort", "ort-inputs", "torch-packed", "torch-padded"]
LABELS = {
    "masked-rnn": "masked-rnn",
    "masked-rnn-oneshot": "masked-rnn one-shot",
    "ort": "ort",
    "ort-inputs": "ort graph inputs",
    "torch-packed": "torch packed",
    "torch-padded": "torch padded",
}
FAMILY = {"masked-rnn": "mrnn", "masked-rnn-oneshot": "mrnn", "ort": "ort", "ort-inputs": "ort",
          "torch-packed": "torch", "torch-padded": "torch"}
REQUIRES = {"mrnn": [], "ort": ["onnxruntime", "onnx"], "torch": ["torch"]}
PEERS = ["ort", "ort-inputs", "torch-packed", "torch-padded"]  # what the handle is compared with

# Timing: the check call, then warm-up calls until WARMUP_S has passed (at least one more unless the check
# call alone lasted that long), then timed calls until the budget (at least MIN_RUNS, at most MAX_RUNS).
MIN_RUNS, MAX_RUNS = 3, 500
MARK = "@@GRID "  # prefix of a worker's reply lines (anything else on its stdout is a framework's chatter)


# ----------------------------------------------------------------------------------------------
# masked-rnn's ONNX functions through the C ABI


def _onnx_attrs_fields(flags, n_act):
    """MrnnOnnxLstmAttrs / MrnnOnnxGruAttrs (include/masked_rnn.h): sizes, int32 flags, clip, activations."""
    return ([(n, ctypes.c_int64) for n in ("seq_length", "batch_size", "input_size", "hidden_size")]
            + [(n, ctypes.c_int32) for n in flags]
            + [("clip", ctypes.c_float), ("num_activations", ctypes.c_int32),
               ("activations", ctypes.c_int32 * n_act), ("activation_alpha", ctypes.c_float * n_act),
               ("activation_beta", ctypes.c_float * n_act), ("num_threads", ctypes.c_int32)])


class MrnnOnnxLstmAttrs(ctypes.Structure):
    _fields_ = _onnx_attrs_fields(("direction", "layout", "input_forget", "has_clip"), 6)


class MrnnOnnxGruAttrs(ctypes.Structure):
    _fields_ = _onnx_attrs_fields(("direction", "layout", "linear_before_reset", "has_clip"), 4)


# n_p: the LSTM's peephole pointer after b (one-shot and _new); n_init: initial states; n_after: outputs
# after y, y_h (the LSTM's y_c).
ONNX_CELL = {
    "lstm": dict(attrs=MrnnOnnxLstmAttrs, one_shot="mrnn_lstm_onnx", prefix="mrnn_onnx_lstm", n_p=1, n_init=2,
                 n_after=1),
    "gru": dict(attrs=MrnnOnnxGruAttrs, one_shot="mrnn_gru_onnx", prefix="mrnn_onnx_gru", n_p=0, n_init=1,
                n_after=0),
}


def bind_onnx(lib, cell):
    c = ONNX_CELL[cell]
    attrs_p = ctypes.POINTER(c["attrs"])
    vp = ctypes.c_void_p
    for name, args, res in (
            (c["one_shot"], [attrs_p] + [vp] * (5 + c["n_init"] + c["n_p"] + 2 + c["n_after"]), ctypes.c_int32),
            (c["prefix"] + "_attrs_init", [attrs_p], ctypes.c_int32),
            (c["prefix"] + "_new", [attrs_p] + [vp] * (3 + c["n_p"]) + [ctypes.POINTER(vp)], ctypes.c_int32),
            (c["prefix"] + "_run", [vp, attrs_p] + [vp] * (2 + c["n_init"] + 2 + c["n_after"]), ctypes.c_int32),
            (c["prefix"] + "_free", [vp], None)):
        f = getattr(lib, name)
        f.argtypes, f.restype = args, res
    return c


def prepare_mrnn_onnx(data, threads, lib_path, one_shot=False):
    """The ONNX node on masked-rnn, layout 0 (X [T,B,I], as ONNX Runtime gets it), Y and Y_h written.
    Handle: mrnn_onnx_*_new here (weights converted and packed once, untimed), fn() = mrnn_onnx_*_run.
    one_shot: fn() = mrnn_lstm_onnx / mrnn_gru_onnx with the raw W, R, B (converted and packed in every call)."""
    lib = fwd.load_lib(lib_path)
    cell = data["cell"]
    c = bind_onnx(lib, cell)
    x = np.ascontiguousarray(data["x"].transpose(1, 0, 2))
    Tn, B, I = x.shape
    kernel, recurrent, bias = data["layers"][0]
    H = recurrent.shape[0]
    w, r, b = (np.ascontiguousarray(a, dtype=np.float32) for a in fwd.onnx_weights(cell, kernel, recurrent, bias))
    lens = np.ascontiguousarray(data["lengths"], dtype=np.int32)
    attrs = c["attrs"]()
    fwd.check_status(lib, getattr(lib, c["prefix"] + "_attrs_init")(ctypes.byref(attrs)), c["prefix"] + "_attrs_init")
    attrs.seq_length, attrs.batch_size, attrs.input_size, attrs.hidden_size = Tn, B, I, H
    attrs.num_threads = threads
    if cell == "gru":
        attrs.linear_before_reset = int(data["reset_after"])
    y = np.zeros((Tn, 1, B, H), dtype=np.float32)
    y_h = np.zeros((1, B, H), dtype=np.float32)
    init, p, after = (None,) * c["n_init"], (None,) * c["n_p"], (None,) * c["n_after"]
    a = ctypes.byref(attrs)
    if one_shot:
        f, what = getattr(lib, c["one_shot"]), c["one_shot"]
        args = (a, x.ctypes.data, w.ctypes.data, r.ctypes.data, b.ctypes.data, lens.ctypes.data, *init, *p,
                y.ctypes.data, y_h.ctypes.data, *after)
        close = None
    else:
        handle = ctypes.c_void_p()
        fwd.check_status(lib, getattr(lib, c["prefix"] + "_new")(a, w.ctypes.data, r.ctypes.data, b.ctypes.data,
                                                                  *p, ctypes.byref(handle)), c["prefix"] + "_new")
        f, what = getattr(lib, c["prefix"] + "_run"), c["prefix"] + "_run"
        args = (handle, a, x.ctypes.data, lens.ctypes.data, *init, y.ctypes.data, y_h.ctypes.data, *after)
        close = lambda: getattr(lib, c["prefix"] + "_free")(handle)  # noqa: E731

    def fn():
        st = f(*args)
        if st != 0:
            fwd.check_status(lib, st, what)
        return y, y_h

    fn.keep = (x, w, r, b, lens, attrs)  # the buffers behind args, alive as long as fn
    if close:
        fn.close = close
    info = dict(version=lib.mrnn_version().decode(),
                call="%s via ctypes%s, layout 0, num_threads=%d%s" % (
                    what, "" if one_shot else " (handle from %s_new, created before timing)" % c["prefix"], threads,
                    ", linear_before_reset=%d" % data["reset_after"] if cell == "gru" else ""))
    return fn, (lambda out: (out[0][:, 0].transpose(1, 0, 2), out[1][0])), info


def prepare_contender(name, data, threads, lib_path):
    """(fn, to_np, info) of a contender; to_np(fn()) = (Y [B,T,H], Y_h [B,H] or None)."""
    if name in ("masked-rnn", "masked-rnn-oneshot"):
        return prepare_mrnn_onnx(data, threads, lib_path, one_shot=name == "masked-rnn-oneshot")
    if name in ("ort", "ort-inputs"):
        fn, to_np, info = fwd.prepare_onnxruntime(data, threads, None, weights_as_inputs=name == "ort-inputs",
                                                  with_y_h=True)
        return fn, (lambda out: (to_np(out), out[1][0])), info
    prepare = fwd.prepare_torch_packed if name == "torch-packed" else fwd.prepare_torch_padded
    fn, to_np, info = prepare(data, threads, None)
    return fn, (lambda out: (to_np(out), None)), info


# ----------------------------------------------------------------------------------------------
# Worker: one per (framework family, thread count), serving many cells over a pipe


def grid_data(cell, B, H, lengths):
    lo, hi = LENGTHS[lengths]
    return fwd.make_data(B, T, H, [H], lo=lo, hi=hi, cell=cell, reset_after=cell == "gru")


def measure(req, data, ref, lib_path):
    """One contender on one cell: prepare, the check call, warm-up, timed calls."""
    name, threads = req["contender"], req["threads"]
    res = dict(contender=name, threads=threads)
    fn = None
    try:
        t0 = time.perf_counter()
        fn, to_np, info = prepare_contender(name, data, threads, lib_path)
        res.update(info, setup_s=round(time.perf_counter() - t0, 4))
        t1 = time.perf_counter()
        y, y_h = to_np(fn())  # the check call, untimed
        first_s = time.perf_counter() - t1
        res["first_call_ms"] = round(first_s * 1e3, 4)
        mask = data["mask"].astype(bool)
        res["padded_steps_zero"] = bool(not np.asarray(y)[~mask].any())
        if ref is None and name == "masked-rnn":  # the reference of every other contender of the cell
            ref = dict(y=np.array(y), y_h=np.array(y_h))
            np.savez(req["ref"], **ref)
            if data["x"].shape[0] * data["x"].shape[2] ** 2 <= 16 * 256 * 256:  # small: float64 numpy too
                res["max_abs_diff_vs_numpy_f64"] = fwd.valid_max_abs_diff(y, fwd.numpy_reference(data), mask)
        if ref is not None:
            res["max_abs_diff_y"] = fwd.valid_max_abs_diff(y, ref["y"], mask)
            if y_h is not None:
                res["max_abs_diff_y_h"] = float(np.abs(np.asarray(y_h, np.float64) - ref["y_h"]).max())
            res["max_abs_diff"] = max(res.get("max_abs_diff_y", 0.0), res.get("max_abs_diff_y_h", 0.0))
        del y, y_h
        warm = 0 if first_s >= fwd.WARMUP_S else 1
        j0, c0 = fwd._cpu_jiffies(), os.times()
        w0 = time.perf_counter()
        times, util = fwd.time_fn(fn, warm, req["budget_s"], MAX_RUNS, MIN_RUNS, max(0.0, fwd.WARMUP_S - first_s))
        wall = time.perf_counter() - w0
        j1, c1 = fwd._cpu_jiffies(), os.times()
        busy_s = ((j1[0] - j0[0]) - (j1[1] - j0[1])) / float(os.sysconf("SC_CLK_TCK"))
        own_s = (c1.user - c0.user) + (c1.system - c0.system)
        res.update(median_ms=float(np.median(times)), min_ms=float(min(times)), runs=len(times),
                   times_ms=[round(t, 4) for t in times], cpu_utilisation=round(util, 3),
                   foreign_cores=round(max(0.0, busy_s - own_s) / max(wall, 1e-9), 3))
    except Exception as e:  # noqa: BLE001 - reported to the parent, never a crash
        import traceback

        res["error"] = "%s: %s" % (type(e).__name__, e)
        res["traceback"] = traceback.format_exc()[-4000:]
    finally:
        if fn is not None and hasattr(fn, "close"):
            fn.close()
    return res


def serve(lib_path):
    """Reads JSON requests from stdin, one a line; writes each reply as a line MARK + JSON."""
    cache = {}  # the current cell's data and reference, dropped on request

    def reply(obj):
        sys.stdout.write(MARK + json.dumps(obj) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "drop":
            cache.clear()
            gc.collect()
            reply(dict(ok=True))
            continue
        key = (req["cell"], req["B"], req["H"], req["lengths"])
        if cache.get("key") != key:
            cache.clear()
            gc.collect()
            cache.update(key=key, data=grid_data(*key))
        if cache.get("ref") is None and os.path.exists(req["ref"]):
            z = np.load(req["ref"])
            cache["ref"] = dict(y=z["y"], y_h=z["y_h"])
        res = measure(req, cache["data"], cache.get("ref"), lib_path)
        gc.collect()
        reply(res)
    return 0


class Worker:
    """A persistent worker process for one framework family and thread count."""

    def __init__(self, family, threads, lib_path, log_path):
        self.family, self.threads = family, threads
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", "--lib", lib_path or ""],
            env=fwd.worker_env(threads), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            bufsize=1)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.lines.put(json.loads(line[len(MARK):]))
        self.lines.put(None)  # the process ended

    def ask(self, req, timeout_s):
        """The reply to req, or a dict with 'error' (the worker is then stopped)."""
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            res = self.lines.get(timeout=timeout_s)
        except (BrokenPipeError, OSError) as e:
            res = None
            why = "worker pipe closed: %s" % e
        except queue.Empty:
            res = None
            why = "timed out after %d s" % timeout_s
        else:
            why = "worker died (exit %s); see %s" % (self.proc.poll(), self.log.name)
        if res is None:
            self.stop()
            return dict(error=why)
        return res

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


# ----------------------------------------------------------------------------------------------
# Ratios, tables, plots


def cell_rows(report):
    """{(cell, B, H, threads): {contender: result}}"""
    rows = {}
    for r in report["results"]:
        rows.setdefault((r["cell"], r["B"], r["H"], r["threads"]), {})[r["contender"]] = r
    return rows


def _median(row, name):
    r = row.get(name)
    return r["median_ms"] if r and "median_ms" in r else None


def ratio_handle(row):
    """(speedup of the masked-rnn handle over the best peer, that peer) or None."""
    m = _median(row, "masked-rnn")
    peers = [(_median(row, p), p) for p in PEERS if _median(row, p) is not None]
    if m is None or not peers:
        return None
    best = min(peers)
    return best[0] / m, best[1]


def ratio_oneshot(row):
    """(speedup of the one-shot call over ONNX Runtime with graph-input weights, "ort-inputs") or None."""
    m, o = _median(row, "masked-rnn-oneshot"), _median(row, "ort-inputs")
    return (o / m, "ort-inputs") if m is not None and o is not None else None


def ratio_packing(row):
    """(one-shot time / handle time: what packing the weights in every call costs, None) or None."""
    m, o = _median(row, "masked-rnn"), _median(row, "masked-rnn-oneshot")
    return (o / m, None) if m is not None and o is not None else None


# The entries each ratio family compares (the handle's peer is the one its ratio names).
USED = {
    "handle": lambda peer: ["masked-rnn", peer],
    "oneshot": lambda _peer: ["masked-rnn-oneshot", "ort-inputs"],
    "packing": lambda _peer: ["masked-rnn", "masked-rnn-oneshot"],
}


def disturbed(row, names, max_foreign):
    """Whether any of the entries `names` of a cell was measured while other processes used more than
    `max_foreign` cores (after its retries)."""
    return any((row.get(n) or {}).get("foreign_cores", 0) > max_foreign for n in names)


# family: (function, title, higher is better)
RATIOS = {
    "handle": (ratio_handle, "speedup of the masked-rnn handle over the best peer", True),
    "oneshot": (ratio_oneshot, "speedup of masked-rnn one-shot over ONNX Runtime with W, R, B as graph inputs", True),
    "packing": (ratio_packing, "masked-rnn one-shot time / handle time (the cost of packing in every call)", False),
}
SHORT = {"ort": "ort", "ort-inputs": "ort in", "torch-packed": "packed", "torch-padded": "padded"}


def summary(report, family):
    """(geomean, worst value, worst cell key, count) of a ratio family, or None."""
    fn, _title, higher = RATIOS[family]
    vals = [(v[0], k) for k, row in cell_rows(report).items() for v in [fn(row)] if v]
    if not vals:
        return None
    worst = min(vals) if higher else max(vals)
    return fwd.geomean([v for v, _ in vals]), worst[0], worst[1], len(vals)


def key_str(k):
    return "%s B=%d H=%d %dt" % (k[0].upper(), k[1], k[2], k[3])


def markdown(report):
    meta = report["meta"]
    rows = cell_rows(report)
    out = ["# masked-rnn shape grid: one masked %s layer, forward, ONNX conventions" % "/".join(
        c.upper() for c in report["cells"]), ""]
    out.append("CPU: %s (%d cores, %s); %s; lengths %s (%d..%d of T = %d); budget %.2g s per contender and cell; "
               "command: `%s`" % (meta["cpu_model"], meta["nproc"], "/".join(meta["cpu_simd"]) or "no AVX2",
                                  meta["date"], report["lengths"], *LENGTHS[report["lengths"]], T, meta["budget_s"],
                                  meta["command"]))
    out.append("")
    out.append("Versions: " + ", ".join("%s %s" % (k, v) for k, v in meta["versions"].items()))
    out.append("")
    # Cells whose results were replaced by a later run of the same contenders (recorded in grid.json).
    for c in report.get("remeasured_cells", []):
        out.append("Re-measured alone (`%s`, %s): %s B=%d H=%d %dt, every contender; see `remeasured` in its "
                   "entries." % (c["command"], c["date"], c["cell"].upper(), c["B"], c["H"], c["threads"]))
        out.append("")
    peers = ", ".join("`%s` = %s" % (SHORT[p], LABELS[p]) for p in PEERS)
    for family, (fn, title, higher) in RATIOS.items():
        flagged = False
        out.append("## %s" % title[0].upper() + title[1:])
        out.append("")
        if family == "handle":
            out.append("Best peer in parentheses: %s." % peers)
            out.append("")
        for cell in report["cells"]:
            for th in report["threads"]:
                out.append("%s, %d thread%s (rows B, columns H = I):" % (cell.upper(), th, "" if th == 1 else "s"))
                out.append("")
                out.append("| B \\ H | " + " | ".join(str(h) for h in report["hidden"]) + " |")
                out.append("|---|" + "---|" * len(report["hidden"]))
                for B in report["batches"]:
                    cells = []
                    for H in report["hidden"]:
                        row = rows.get((cell, B, H, th), {})
                        v = fn(row)
                        flag = " †" if v and disturbed(row, USED[family](v[1]), meta["max_foreign"]) else ""
                        flagged = flagged or bool(flag)
                        cells.append("-" if v is None else "%.2fx%s%s" % (v[0], " (%s)" % SHORT[v[1]]
                                                                            if family == "handle" else "", flag))
                    out.append("| %d | %s |" % (B, " | ".join(cells)))
                out.append("")
        if flagged:
            out.append("† a time in this ratio was measured while other processes used more than %.2f cores "
                       "(see the medians below)." % meta["max_foreign"])
            out.append("")
        s = summary(report, family)
        if s:
            out.append("Geometric mean over the %d cells: **%.2fx**; %s: %.2fx (%s)." % (
                s[3], s[0], "lowest" if higher else "highest", s[1], key_str(s[2])))
            out.append("")
    out.append("## Medians (ms)")
    out.append("")
    contenders = report["contenders"]
    out.append("| cell | B | H | threads | busy cores before | " + " | ".join(LABELS[c] for c in contenders) + " |")
    out.append("|---|---|---|---|---|" + "---|" * len(contenders))
    for k in sorted(rows, key=lambda k: (report["cells"].index(k[0]), k[3], k[2], k[1])):
        row = rows[k]
        busy = next((r.get("busy_cores_before") for r in row.values() if r.get("busy_cores_before") is not None), None)
        cells = []
        for c in contenders:
            r = row.get(c)
            if r is None:
                cells.append("-")
            elif "error" in r:
                cells.append("error")
            else:
                p = 3 if r["median_ms"] < 1 else (2 if r["median_ms"] < 100 else 0)
                flag = " †" if (r.get("foreign_cores") or 0) > report["meta"]["max_foreign"] else ""
                cells.append("%.*f%s" % (p, r["median_ms"], flag))
        out.append("| %s | %d | %d | %d | %s | %s |" % (k[0].upper(), k[1], k[2], k[3],
                                                        "-" if busy is None else "%.2f" % busy, " | ".join(cells)))
    out.append("")
    out.append("† other processes used more than %.2f cores on average during the timed calls "
               "(`foreign_cores` in grid.json)." % report["meta"]["max_foreign"])
    out.append("")
    out.append("## Agreement with masked-rnn (max abs diff on valid steps of Y, and Y_h where given)")
    out.append("")
    out.append("| contender | max abs diff | cells above %g | Y +0.0 at padded steps |" % TOL)
    out.append("|---|---|---|---|")
    for c in contenders:
        ds = [r["max_abs_diff"] for r in report["results"] if r["contender"] == c and "max_abs_diff" in r]
        bad = [r for r in report["results"] if r["contender"] == c and not r.get("max_abs_diff", 0) <= TOL]
        bad = [r for r in bad if "error" not in r]
        zero = [r["padded_steps_zero"] for r in report["results"] if r["contender"] == c and "padded_steps_zero" in r]
        out.append("| %s | %s | %s | %s |" % (LABELS[c], "%.2e" % max(ds) if ds else "-",
                                              ", ".join(key_str((r["cell"], r["B"], r["H"], r["threads"]))
                                                        for r in bad) or "none",
                                              "-" if not zero else "always" if all(zero) else
                                              "in %d of %d cells" % (sum(zero), len(zero))))
    f64 = [r["max_abs_diff_vs_numpy_f64"] for r in report["results"] if "max_abs_diff_vs_numpy_f64" in r]
    if f64:
        out.append("")
        out.append("masked-rnn against a float64 numpy reference on the small cells (B x H x H <= 16 x 256 x 256): "
                   "max abs diff %.2e." % max(f64))
    errors = [r for r in report["results"] if "error" in r]
    if errors:
        out.append("")
        out.append("## Errors")
        out.append("")
        for r in errors:
            out.append("- %s %s: %s" % (LABELS[r["contender"]], key_str((r["cell"], r["B"], r["H"], r["threads"])),
                                        r["error"].splitlines()[0][:300]))
    out.append("")
    return "\n".join(out)


def plot(report, family, path):
    """Heat maps of a ratio family: rows LSTM / GRU, columns thread counts; in each, rows B and columns H,
    a log colour scale centred on 1 (red: masked-rnn slower, blue: faster)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.colors as mcolors
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no %s" % os.path.basename(path), flush=True)
        return False
    fn, title, higher = RATIOS[family]
    rows = cell_rows(report)
    cells, threads, batches, hidden = report["cells"], report["threads"], report["batches"], report["hidden"]
    grids = {}
    for cell in cells:
        for th in threads:
            g = np.full((len(batches), len(hidden)), np.nan)
            labels = [[""] * len(hidden) for _ in batches]
            for i, B in enumerate(batches):
                for j, H in enumerate(hidden):
                    v = fn(rows.get((cell, B, H, th), {}))
                    if v:
                        # the colour says how good it is for masked-rnn: a cost ratio is inverted
                        g[i, j] = v[0] if higher else 1.0 / v[0]
                        labels[i][j] = "%.2fx" % v[0] + ("\n%s" % SHORT[v[1]] if v[1] in SHORT and family == "handle"
                                                         else "")
            grids[cell, th] = g, labels
    finite = np.concatenate([g[np.isfinite(g)] for g, _ in grids.values()] + [np.array([1.0])])
    span = max(2.0, math.exp(float(np.max(np.abs(np.log(finite))))))  # symmetric about 1, at least 1/2..2
    norm = mcolors.LogNorm(vmin=1.0 / span, vmax=span)
    cmap = matplotlib.colormaps["RdBu"].copy()
    cmap.set_bad("#dddddd")
    fig, axes = plt.subplots(len(cells), len(threads), figsize=(1.35 * len(hidden) * len(threads) + 1.8,
                                                                0.75 * len(batches) * len(cells) + 1.6),
                             squeeze=False, layout="constrained")
    im = None
    for a, cell in enumerate(cells):
        for b, th in enumerate(threads):
            ax = axes[a][b]
            g, labels = grids[cell, th]
            im = ax.imshow(np.ma.masked_invalid(g), cmap=cmap, norm=norm, aspect="auto")
            for i in range(len(batches)):
                for j in range(len(hidden)):
                    if labels[i][j]:
                        dark = abs(math.log(g[i, j])) > 0.55 * math.log(span)
                        ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=8,
                                color="white" if dark else "black")
            ax.set_xticks(range(len(hidden)), [str(h) for h in hidden])
            ax.set_yticks(range(len(batches)), [str(B) for B in batches])
            ax.set_xlabel("H = I")
            ax.set_ylabel("batch B")
            ax.set_title("%s, %d thread%s" % (cell.upper(), th, "" if th == 1 else "s"))
    cb = fig.colorbar(im, ax=axes, shrink=0.8)
    ticks = [2.0 ** k for k in range(-8, 9) if 1.0 / span <= 2.0 ** k <= span]
    cb.set_ticks(ticks, labels=["%gx" % t for t in ticks])
    cb.minorticks_off()
    cb.set_label("masked-rnn better →" if higher else "handle / one-shot (one-shot cost inverted) →")
    meta = report["meta"]
    fig.suptitle("%s\nT = %d, lengths %s, %s (%d cores)" % (title, T, report["lengths"], meta["cpu_model"],
                                                            meta["nproc"]), fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def one_line_summary(report):
    parts = []
    for family, name in (("handle", "handle vs best peer"), ("oneshot", "one-shot vs ort graph inputs"),
                         ("packing", "one-shot/handle")):
        s = summary(report, family)
        if s:
            parts.append("%s geomean %.2fx %s %.2fx (%s)" % (name, s[0], "min" if RATIOS[family][2] else "max",
                                                             s[1], key_str(s[2])))
    return "; ".join(parts) or "no ratios"


def write_outputs(report, out_dir):
    with open(os.path.join(out_dir, "grid.md"), "w") as f:
        f.write(markdown(report))
    wrote = ["grid.md"]
    for family, name in (("handle", "grid.png"), ("oneshot", "grid_oneshot.png")):
        if summary(report, family) and plot(report, family, os.path.join(out_dir, name)):
            wrote.append(name)
    return wrote


# ----------------------------------------------------------------------------------------------
# Main


def int_list(s):
    return [int(v) for v in s.split(",") if v]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", default=",".join(CELLS), help="comma list of lstm,gru")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes (default 1,4,16,64,256)")
    p.add_argument("--hidden", default=",".join(map(str, HIDDEN)), help="hidden = input sizes (default 64,256,1024,2048)")
    p.add_argument("--threads", default=",".join(map(str, THREADS)), help="thread counts (default 1,2)")
    p.add_argument("--lengths", default="uniform", choices=list(LENGTHS),
                   help="uniform: lengths drawn in 25..50 (seeded); full: all 50")
    p.add_argument("--frameworks", default=",".join(CONTENDERS),
                   help="comma list of %s (masked-rnn, the reference, always runs)" % ",".join(CONTENDERS))
    p.add_argument("--budget", type=float, default=1.0,
                   help="seconds of timed calls per contender per cell (default 1; at least %d calls)" % MIN_RUNS)
    p.add_argument("--lib", default=None, help="path to libmasked_rnn.so (default: target/release of the crate)")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build --release")
    p.add_argument("--out-dir", default=os.path.join(BENCH_DIR, "results", "grid"),
                   help="where results go (default bench/results/grid)")
    p.add_argument("--plot-only", action="store_true", help="redraw grid.md and the PNGs from OUT_DIR/grid.json")
    p.add_argument("--timeout", type=int, default=1800, help="seconds one measurement may take (default 1800)")
    fwd.add_idle_options(p, wait_idle=60, retries=2, what="a contender during whose timed calls")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    if args.serve:
        return serve(args.lib or None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the workers and the temporary folder go
    out_dir = os.path.normpath(args.out_dir)
    json_path = os.path.join(out_dir, "grid.json")
    if args.plot_only:
        with open(json_path) as f:
            report = json.load(f)
        wrote = write_outputs(report, out_dir)
        print("wrote %s in %s\n%s" % (", ".join(wrote), out_dir, one_line_summary(report)))
        return 0

    cells, batches, hidden, threads = args.cells.split(","), int_list(args.batches), int_list(args.hidden), \
        int_list(args.threads)
    for c in cells:
        if c not in CELLS:
            sys.exit("unknown cell %r (known: %s)" % (c, ", ".join(CELLS)))
    wanted = [c for c in args.frameworks.split(",") if c]
    for c in wanted:
        if c not in CONTENDERS:
            sys.exit("unknown contender %r (known: %s)" % (c, ", ".join(CONTENDERS)))
    lib_path = fwd.build_lib(os.path.abspath(args.lib) if args.lib else fwd.default_lib_path(), args.no_build)
    if not lib_path:
        sys.exit("masked-rnn is the reference of every cell: no library, no grid")
    contenders = []
    for c in CONTENDERS:  # in this order: the handle first, it writes the cell's reference
        if c != "masked-rnn" and c not in wanted:
            continue
        missing = [m for m in REQUIRES[FAMILY[c]] if importlib.util.find_spec(m) is None]
        if missing:
            print("skipping %s: python module(s) %s not installed in %s" % (c, ", ".join(missing), sys.executable))
            continue
        contenders.append(c)
    os.makedirs(out_dir, exist_ok=True)

    cpu, simd = fwd.cpu_model()
    meta = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                command=" ".join([os.path.basename(sys.executable)] + [os.path.relpath(__file__, fwd.CRATE_DIR)]
                                 + argv),
                cpu_model=cpu, cpu_simd=simd, nproc=os.cpu_count(), machine=platform.machine(), os=platform.platform(),
                versions=fwd.versions(fwd.load_lib(lib_path).mrnn_version().decode()), crate_git=fwd.git_head(),
                lib=lib_path, budget_s=args.budget, max_foreign=args.max_foreign, seed=fwd.SEED, T=T,
                loadavg_before=os.getloadavg())
    report = dict(meta=meta, cells=cells, batches=batches, hidden=hidden, threads=threads, lengths=args.lengths,
                  contenders=contenders, results=[])
    print("CPU %s (%d cores), load %.2f; contenders: %s" % (cpu, os.cpu_count(), os.getloadavg()[0],
                                                             ", ".join(contenders)), flush=True)
    tmp = tempfile.mkdtemp(prefix="mrnn-grid-")
    workers = {}
    t_start = time.time()

    def worker(family, th):
        w = workers.get((family, th))
        if w is None or not w.alive():
            w = workers[family, th] = Worker(family, th, lib_path, os.path.join(tmp, "%s-%d.log" % (family, th)))
        return w

    try:
        for cell in cells:
            for H in hidden:
                for B in batches:
                    ref = os.path.join(tmp, "ref-%s-%d-%d.npz" % (cell, B, H))
                    for th in threads:
                        busy = fwd.wait_idle(args.wait_idle) if args.wait_idle > 0 else fwd.busy_cores()
                        for c in contenders:
                            req = dict(op="measure", cell=cell, B=B, H=H, lengths=args.lengths, threads=th,
                                       contender=c, budget_s=args.budget, ref=ref)
                            w0 = time.time()
                            for attempt in range(1, args.retries + 2):
                                res = worker(FAMILY[c], th).ask(req, args.timeout)
                                if (res.get("foreign_cores") or 0.0) <= args.max_foreign or attempt > args.retries:
                                    break
                                print("  other processes used %.2f cores meanwhile: measuring again"
                                      % res["foreign_cores"], flush=True)
                                fwd.wait_idle(args.wait_idle)
                            res.update(cell=cell, B=B, H=H, I=H, T=T, lengths=args.lengths, threads=th, contender=c,
                                       busy_cores_before=None if busy is None else round(busy, 2), attempt=attempt,
                                       wall_s=round(time.time() - w0, 2))
                            report["results"].append(res)
                            tag = "%-4s B %3d H %4d %dt %-19s" % (cell, B, H, th, LABELS[c])
                            if "error" in res:
                                print("  %s ERROR %s" % (tag, res["error"].splitlines()[0][:300]), flush=True)
                            else:
                                d = res.get("max_abs_diff")
                                print("  %s median %10.3f ms  min %10.3f  runs %3d  cpu %.2f  diff %s%s" % (
                                    tag, res["median_ms"], res["min_ms"], res["runs"], res["cpu_utilisation"],
                                    "-" if d is None else "%.1e" % d,
                                    "  DISAGREES" if d is not None and not d <= TOL else ""), flush=True)
                    for w in workers.values():  # free the cell's data in every worker
                        if w.alive():
                            w.ask(dict(op="drop"), 60)
                    if os.path.exists(ref):
                        os.remove(ref)
                    meta["wall_s"] = round(time.time() - t_start, 1)
                    with open(json_path, "w") as f:  # after every cell: an interrupted run keeps what it measured
                        json.dump(report, f, indent=1)
    finally:
        for w in workers.values():
            w.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    meta["loadavg_after"] = os.getloadavg()
    meta["wall_s"] = round(time.time() - t_start, 1)
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)
    wrote = ["grid.json"] + write_outputs(report, out_dir)
    print("wrote %s in %s (%.0f s)" % (", ".join(wrote), out_dir, meta["wall_s"]))
    print(one_line_summary(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
