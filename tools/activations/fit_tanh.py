"""Fits the rational tanh of src/math.rs and checks it, and the sigmoid derived from it, exhaustively.

    tanh(x)    ~= clamp(a * P(a^2) / Q(a^2), -1, 1),               a = clamp(x, -9.5, 9.5)
    sigmoid(x) ~= 1/2 + clamp(b * P'(b^2) / Q'(b^2), -1/2, 1/2),   b = clamp(x, -19, 19)

P has degree 5 and Q degree 3 in a^2 (Q(0) = 1), fitted on [0, 9] where tanh reaches 1 - 2^-25; the
rational exceeds 1 from 9.2 on, so the output clamp makes tanh exactly +-1 for |x| >= 9.5 (and keeps the
minimax ripple near 1 from overshooting it). P'(s) = P(s/4)/4 and Q'(s) = Q(s/4): scaling by powers of two
is exact, so sigmoid(x) is exactly 1/2 + tanh-approximation(x/2)/2 without the two extra multiplications.

Steps: (1) minimax relative error of P/Q against tanh(x)/x on [0, 9] by bisection on the error bound, each
bound a linear feasibility problem (scipy's HiGHS); (2) coefficients rounded to float32 and nudged one ulp
at a time while that lowers the largest error of the float32 evaluation on a sample grid; (3) the float32
evaluation (numpy float32: separate roundings, exactly the operation order of src/math.rs) is compared with
the float64 functions at EVERY float32 in [0, 19] (tanh is odd) and in [-38, 38] (sigmoid). Prints the
Rust constants and the maximum errors that src/math.rs states.

Requirements: numpy, scipy, mpmath (tools/activations/requirements.txt). Takes a few minutes.
Usage: python tools/activations/fit_tanh.py [--quick]   (--quick: check every 97th float only)
"""

import sys

import mpmath as mp
import numpy as np
from scipy.optimize import linprog

CLAMP = 9.0  # fit interval [0, CLAMP]
INPUT_CLAMP = 9.5  # where the input is clamped (the rational is above 1 there)
DEG_P, DEG_Q = 5, 3
f32 = np.float32
mp.mp.dps = 30


def minimax(m, n, c, samples=2500):
    """Coefficients (float64) of P (degree m) and Q (degree n, Q(0) = 1) minimising max |P/Q - f| / f,
    f(s) = tanh(sqrt s)/sqrt s on s in [0, c^2]."""
    xs = np.unique(np.concatenate([np.linspace(1e-4, c, samples),
                                   c * (1 - np.cos(np.linspace(0, np.pi / 2, samples)))[1:]]))
    f = np.array([float(mp.tanh(mp.mpf(float(x))) / mp.mpf(float(x))) for x in xs])
    scale = c * c
    t = xs ** 2 / scale  # variable scaled to [0, 1] for conditioning
    pm = np.vstack([t ** k for k in range(m + 1)]).T
    qm = np.vstack([t ** k for k in range(1, n + 1)]).T

    def feasible(e):
        # |P - f Q| <= e f Q with Q = 1 + qm . v, linear in the unknowns for a fixed e
        a = np.vstack([np.hstack([pm, -(f * (1 + e))[:, None] * qm]),
                       np.hstack([-pm, (f * (1 - e))[:, None] * qm])])
        b = np.concatenate([f * (1 + e), -f * (1 - e)])
        r = linprog(np.zeros(m + 1 + n), A_ub=a, b_ub=b, bounds=[(None, None)] * (m + 1 + n), method="highs")
        return r.x if r.status == 0 else None

    lo, hi, best = 0.0, 1e-1, None
    for _ in range(45):
        mid = (lo + hi) / 2
        sol = feasible(mid)
        if sol is None:
            lo = mid
        else:
            hi, best = mid, sol
    p = best[:m + 1] / scale ** np.arange(m + 1)
    q = np.concatenate([[1.0], best[m + 1:] / scale ** np.arange(1, n + 1)])
    return p, q, hi


def horner(coef, z):
    acc = coef[-1]
    for c in coef[-2::-1]:
        acc = acc * z + c  # float32 * float32 then + : two roundings, as in src/math.rs
    return acc


def clamp(v, lo, hi):
    # select-based, as src/math.rs: NaN passes through
    v = np.where(v < f32(lo), f32(lo), v)
    return np.where(v > f32(hi), f32(hi), v)


def tanh32(p, q, x, input_clamp=INPUT_CLAMP, out=1.0):
    a = clamp(x, -input_clamp, input_clamp)
    z = a * a
    return clamp((a * horner(p, z)) / horner(q, z), -out, out)


def sigmoid32(ps, qs, x):
    return tanh32(ps, qs, x, 2 * INPUT_CLAMP, 0.5) + f32(0.5)


def ulp_error(y, t):
    ulp = np.spacing(np.abs(t).astype(np.float32)).astype(np.float64)
    return np.abs(y.astype(np.float64) - t) / ulp


def refine(p, q):
    """Nudges each float32 coefficient by a few ulp while that lowers the largest ulp error on a grid."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(0, INPUT_CLAMP, 400_001, dtype=f32),
                        rng.uniform(0, INPUT_CLAMP, 200_000).astype(f32),
                        f32(2.0) ** -np.arange(1, 40, 0.25).astype(f32)])
    t = np.tanh(x.astype(np.float64))

    def score(p, q):
        return ulp_error(tanh32(p, q, x), t).max()

    best = score(p, q)
    improved = True
    while improved:
        improved = False
        for which, i in [("p", i) for i in range(len(p))] + [("q", i) for i in range(1, len(q))]:
            for d in [1, -1, 2, -2, 3, -3, 5, -5, 8, -8, 13, -13]:
                cand = (p if which == "p" else q).copy()
                for _ in range(abs(d)):
                    cand[i] = np.nextafter(cand[i], f32(np.inf) if d > 0 else f32(-np.inf))
                s = score(cand, q) if which == "p" else score(p, cand)
                if s < best - 1e-9:
                    best, improved = s, True
                    if which == "p":
                        p = cand
                    else:
                        q = cand
    return p, q, best


def all_floats(lo, hi, stride):
    """Every float32 in [lo, hi] (lo >= 0), in chunks; every `stride`-th one when stride > 1."""
    a, b = np.float32(lo).view(np.uint32), np.float32(hi).view(np.uint32)
    step = 1 << 24
    for start in range(int(a), int(b) + 1, step):
        bits = np.arange(start, min(start + step, int(b) + 1), stride, dtype=np.uint32)
        yield bits.view(np.float32)


def check(p, q, ps, qs, stride):
    worst = {"tanh_ulp": (0.0, 0.0), "tanh_abs": (0.0, 0.0), "sigmoid_abs": (0.0, 0.0),
             "sigmoid_ulp_above_half": (0.0, 0.0)}

    def keep(name, err, x):
        i = int(np.argmax(err))
        if err[i] > worst[name][0]:
            worst[name] = (float(err[i]), float(x[i]))

    for x in all_floats(0.0, 2 * INPUT_CLAMP, stride):
        t = np.tanh(x.astype(np.float64))
        y = tanh32(p, q, x)
        keep("tanh_ulp", ulp_error(y, t), x)
        keep("tanh_abs", np.abs(y.astype(np.float64) - t), x)
    for sign in (1.0, -1.0):
        for x in all_floats(0.0, 4 * INPUT_CLAMP, stride):
            x = (x * f32(sign)).astype(f32)
            t = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
            y = sigmoid32(ps, qs, x)
            keep("sigmoid_abs", np.abs(y.astype(np.float64) - t), x)
            if sign > 0:
                keep("sigmoid_ulp_above_half", ulp_error(y, t), x)
    # beyond the clamps and the special values
    for v in [CLAMP, INPUT_CLAMP, 1e30, np.inf]:
        print("tanh(%g) = %r, sigmoid(%g) = %r, sigmoid(-%g) = %r" % (
            v, float(tanh32(p, q, np.array([v], f32))[0]), v, float(sigmoid32(ps, qs, np.array([v], f32))[0]),
            v, float(sigmoid32(ps, qs, np.array([-v], f32))[0])))
    return worst


def rust_array(name, doc, vals):
    body = ", ".join(str(f32(v)) for v in vals)  # shortest digits that read back as the same float32
    return "/// %s\npub(crate) const %s: [f32; %d] = [%s];" % (doc, name, len(vals), body)


def main():
    quick = "--quick" in sys.argv
    p64, q64, e = minimax(DEG_P, DEG_Q, CLAMP)
    print("minimax relative error (float64 coefficients): %.3g" % e)
    p, q, grid = refine(f32(p64), f32(q64))
    print("float32 evaluation, largest error on the refinement grid: %.2f ulp" % grid)
    ps = (p / f32(4.0) ** np.arange(1, len(p) + 1, dtype=f32)).astype(f32)  # exact: powers of two
    qs = (q / f32(4.0) ** np.arange(len(q), dtype=f32)).astype(f32)
    worst = check(p, q, ps, qs, 97 if quick else 1)
    print("checked %s float32 inputs:" % ("every 97th" if quick else "all"))
    for k, (err, x) in worst.items():
        print("  %-24s %.3g at x = %r" % (k, err, x))
    print()
    print(rust_array("TANH_P", "Numerator of the rational tanh, in powers of `x²`.", p))
    print(rust_array("TANH_Q", "Denominator of the rational tanh, in powers of `x²`.", q))
    print(rust_array("SIGMOID_P", "`TANH_P` scaled for `sigmoid(x) - 1/2` (exact powers of two).", ps))
    print(rust_array("SIGMOID_Q", "`TANH_Q` scaled for `sigmoid(x) - 1/2` (exact powers of two).", qs))


if __name__ == "__main__":
    main()
