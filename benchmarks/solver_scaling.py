"""Reallocation solvers from 10^3 to 793,471 words: time, peak memory, cost over the lower bound.

    python benchmarks/solver_scaling.py [--sizes 1000 10000 100000 793471] [--timeout 1200]

Costs are synthetic-class costs shaped like a trained LightRNN's: words fall into R classes; a
class prefers a few rows (its words' contexts look alike), while column preferences mix a class
part and a word part. Each (V, method) runs in its own process (peak RSS measured there, the
V x R and V x C float32 inputs included). Writes benchmarks/results/solver_scaling.json and .png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import write_result

CHILD = r"""
import json, resource, sys, time
import numpy as np
from lrnn_lightning.allocation import allocation_cost, lower_bound, reallocate, table_shape

V, method, seed = int(sys.argv[1]), sys.argv[2], 0
R, C = table_shape(V)
rng = np.random.default_rng(seed)
cls = rng.integers(0, R, V)
pref_r = (rng.normal(size=(R, R)) * 3).astype(np.float32)
pref_c = (rng.normal(size=(R, C)) * 1).astype(np.float32)
row = np.empty((V, R), np.float32)
col = np.empty((V, C), np.float32)

def nll(x):
    x = x - x.max(1, keepdims=True)
    return -(x - np.log(np.exp(x).sum(1, keepdims=True)))

for a in range(0, V, 20000):
    n = min(20000, V - a)
    row[a:a + n] = nll(pref_r[cls[a:a + n]] + rng.normal(size=(n, R)).astype(np.float32) * 0.5)
    col[a:a + n] = nll(pref_c[cls[a:a + n]] + rng.normal(size=(n, C)).astype(np.float32) * 2)
current = rng.permutation(R * C)[:V]
inputs_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
new = reallocate(row, col, current, method)
seconds = time.perf_counter() - t
assert len(np.unique(new)) == V
lb = lower_bound(row, col)
print(json.dumps({
    "V": V, "method": method, "seconds": seconds,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_solve_mb": inputs_mb,
    "cost": allocation_cost(row, col, new), "cost_before": allocation_cost(row, col, current), "lower_bound": lb,
}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000, 100000, 793471])
    ap.add_argument("--timeout", type=int, default=1200)
    args = ap.parse_args()
    runs = []
    for V in args.sizes:
        methods = (["exact"] if V <= 10000 else []) + ["sparse", "greedy"]
        for method in methods:
            try:
                proc = subprocess.run([sys.executable, "-c", CHILD, str(V), method], capture_output=True, text=True,
                                      timeout=args.timeout)
                if proc.returncode != 0:
                    row = {"V": V, "method": method, "error": proc.stderr[-500:]}
                else:
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                    row["cost_over_lower_bound"] = row["cost"] / row["lower_bound"] - 1
            except subprocess.TimeoutExpired:
                row = {"V": V, "method": method, "error": f"timeout after {args.timeout} s"}
            print(json.dumps(row), flush=True)
            runs.append(row)
    exact = {r["V"]: r["cost"] for r in runs if r["method"] == "exact" and "cost" in r}
    for r in runs:
        if r["V"] in exact and "cost" in r:
            r["cost_over_exact"] = r["cost"] / exact[r["V"]] - 1
    def plot(plt):
        fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
        for method in ("exact", "sparse", "greedy"):
            rs = [r for r in runs if r["method"] == method and "seconds" in r]
            v = [r["V"] for r in rs]
            ax[0].loglog(v, [r["seconds"] for r in rs], "o-", label=method)
            ax[1].loglog(v, [r["peak_rss_mb"] / 1024 for r in rs], "o-", label=method)
            ax[2].semilogx(v, [100 * r["cost_over_lower_bound"] for r in rs], "o-", label=method)
        ax[0].axhline(60, color="r", ls="--", lw=0.8)
        ax[1].axhline(8, color="r", ls="--", lw=0.8)
        ax[0].set(xlabel="words V", ylabel="seconds", title="solve time")
        ax[1].set(xlabel="words V", ylabel="peak RSS (GB, inputs included)", title="memory")
        ax[2].set(xlabel="words V", ylabel="% over lower bound", title="cost")
        for a in ax:
            a.legend()
        return fig

    write_result("solver_scaling", {
        "costs": "synthetic-class: R classes, row preference N(0,3) per class + N(0,0.5) per word; "
                 "column preference N(0,1) per class + N(0,2) per word; costs are negative log-softmax",
        "runs": runs,
    }, plot)

if __name__ == "__main__":
    main()
