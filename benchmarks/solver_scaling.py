"""Reallocation solvers on the costs they meet: time, peak memory, distance from the optimum.

    python benchmarks/solver_scaling.py [--only NAME ...] [--timeout 900] [--device cuda]
    python benchmarks/solver_scaling.py --table     # the README's table, from the JSON

Cost kinds (``lrnn_lightning.allocation.costs``):

- ``mild``: per-occurrence class-structured losses, every count 1 (the earlier benchmark's costs);
- ``zipf``: the same losses times Zipf counts from 4e7 down to 3 (One Billion Word's span), with
  Zipf-sized classes, so popular rows are wanted by far more words than they hold;
- ``contested`` / ``flat`` / ``planted`` (``costs.shape_chunks``): several hundred classes whose
  words all want the same 2 rows and 2 columns (Zipf counts); early training (every loss within
  0.05 nats of log R); a hidden table 1.5 nats cheaper per occurrence;
- ``profile``: the same short epoch, every seen word's costs following the model's marginals over
  the rows and columns (one smooth profile), which ``solvers.profile_route`` is for;
- ``skewed``: a short first epoch, shaped like the One Billion Word rehearsal's statistics: most
  words unseen, every seen word wanting the same 4 rows and 4 columns;
- ``ptb`` / ``wikitext2``: the summed statistics of a real LightRNN epoch (``train.py
  experiment=lightrnn_ptb ... callbacks.reallocation.save_statistics=DIR``, see ``--real-dir``), with
  the run's move penalty applied as the callback applies it.

Each case runs in its own process: the costs are streamed a chunk of words at a time into the
solver's candidate builder, as the reallocation callback streams its statistics (``streamed``), or
first held whole as float32 V x R and V x C matrices and given to ``reallocate`` (``materialized``);
the peak resident memory of the process is recorded either way. The polish (``solvers.polish``)
then reads the full costs a row or column group at a time: streamed synthetic costs are kept as
float32 matrices on the statistics' device (as large as the round's int32 statistics), real ones
are read from the saved file. ``--no-polish`` runs without it. ``sparse`` is compared with
scipy's exact dense assignment where that fits (V <= 10,000), and always with its certified dual
bound and the lower bound. Writes benchmarks/results/solver_scaling.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import ROOT, write_result

CHILD = r"""
import json, resource, sys, time
import numpy as np
import torch
from lrnn_lightning.allocation.costs import loss_chunks, random_table, shape_chunks, zipf_counts
from lrnn_lightning.allocation.solvers import CHUNK_WORDS, POLISH_SWEEPS, CandidateBuilder, allocation_cost, candidate_width, reallocate, solve
from lrnn_lightning.allocation.table import table_shape

spec = json.loads(sys.argv[1])
kind, V, method, mode = spec["kind"], spec.get("V"), spec["method"], spec["mode"]
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {**spec}
if kind in ("mild", "zipf"):
    R, C = table_shape(V)
    counts = zipf_counts(V) if kind == "zipf" else np.ones(V)
    current, bonus = random_table(V, 0), None
    chunks = lambda: loss_chunks(V, 0, counts=counts if kind == "zipf" else None)
elif kind in ("contested", "flat", "planted", "skewed", "profile"):
    R, C = table_shape(V)
    current, bonus = random_table(V, 0), None
    chunks = lambda: shape_chunks(kind, V, 0, chunk=CHUNK_WORDS)
else:
    from common import npz_memmap
    z = npz_memmap(spec["path"])  # uncompressed members memory-mapped: 11 GB at V = 793,471
    row_all, col_all = z["row_loss"], z["col_loss"]
    V, R = row_all.shape
    C = col_all.shape[1]
    current, counts = z["current"], z["counts"]
    penalty = float(z["move_penalty"])
    bonus = penalty * np.maximum(counts.astype(np.float64), 1e-3) if penalty > 0 else None
    chunks = lambda: ((a, row_all[a:a + CHUNK_WORDS], col_all[a:a + CHUNK_WORDS]) for a in range(0, V, CHUNK_WORDS))
    out["V"] = V
out["rss_start_mb"] = rss()
dense = spec.get("exact", False)
t0 = time.perf_counter()
if mode == "streamed":
    b = CandidateBuilder(V, R, C, current, bonus, width=candidate_width(V), keep_dense=dense)
    build = 0.0
    device = torch.device(spec.get("device", "cpu"))
    polish = spec.get("polish", True)
    if polish and kind != "real":
        # the full costs stay where the statistics would (float32 here: 5.6 GB at V = 793,471; the
        # round's int32 statistics take as much), for the polish to read a row or column group at a time
        keep = (torch.empty((V, R), dtype=torch.float32, device=device),
                torch.empty((V, C), dtype=torch.float32, device=device))
    for a, r, c in chunks():
        # the statistics' device: on "cuda" the chunk is there before the clock starts, as in training
        r, c = torch.as_tensor(r).to(device), torch.as_tensor(c).to(device)
        if polish and kind != "real":
            keep[0][a:a + len(r)], keep[1][a:a + len(c)] = r, c
            r, c = keep[0][a:a + len(r)].double(), keep[1][a:a + len(c)].double()  # what the polish reads
        if device.type == "cuda":
            torch.cuda.synchronize()
        tb = time.perf_counter()
        b.add(a, r, c)
        build += time.perf_counter() - tb
    cand = b.finish()
    out["prepare_seconds"] = time.perf_counter() - t0  # generating the costs included
    out["candidate_seconds"] = build  # the top-k of each chunk: what a round spends on its statistics
    out["rss_inputs_mb"] = rss()
    gather = None
    if polish and kind == "real":
        mm = [np.memmap(x.path, dtype=x.dtype, mode="r", offset=x.offset, shape=x.shape) for x in (row_all, col_all)]
        gather = lambda words, side: torch.from_numpy(np.asarray(mm[side][words])).to(device)
    elif polish:
        gather = lambda words, side: keep[side][torch.as_tensor(words, device=device)].double()
    t1 = time.perf_counter()
    cells, info = solve(cand, method, gather=gather, polish_sweeps=POLISH_SWEEPS if polish else 0)
    out["solve_seconds"] = time.perf_counter() - t1
    out["round_seconds"] = build + out["solve_seconds"]  # what a round spends after its statistics are summed
else:
    row = np.empty((V, R), np.float32); col = np.empty((V, C), np.float32)
    for a, r, c in chunks():
        row[a:a + len(r)], col[a:a + len(c)] = r, c
    out["prepare_seconds"] = time.perf_counter() - t0
    out["rss_inputs_mb"] = rss()
    t1 = time.perf_counter()
    cells, info = reallocate(row, col, current, method, bonus=bonus, return_info=True)
    out["solve_seconds"] = time.perf_counter() - t1
out["total_seconds"] = time.perf_counter() - t0
out["peak_rss_mb"] = rss()
assert len(np.unique(cells)) == V
out.update({k: v for k, v in info.items() if isinstance(v, (int, float, bool, str)) and k != "seconds"})
if dense:
    from scipy.optimize import linear_sum_assignment
    rr, cc = cand.dense
    full = (rr[:, :, None] + cc[:, None, :]).reshape(V, -1)
    w, c = linear_sum_assignment(full)
    out["exact_objective"] = float(full[w, c].sum())
    out["over_exact"] = info["objective"] / out["exact_objective"] - 1
print(json.dumps(out))
"""

CASES = [
    {"name": "mild-4096", "kind": "mild", "V": 4096, "exact": True},
    {"name": "zipf-4096", "kind": "zipf", "V": 4096, "exact": True},
    {"name": "zipf-30000", "kind": "zipf", "V": 30000},
    {"name": "mild-136912", "kind": "mild", "V": 136912},
    {"name": "zipf-136912", "kind": "zipf", "V": 136912},
    {"name": "zipf-793471", "kind": "zipf", "V": 793471},
    {"name": "zipf-793471-materialized", "kind": "zipf", "V": 793471, "mode": "materialized"},
    {"name": "contested-4096", "kind": "contested", "V": 4096, "exact": True},
    {"name": "flat-4096", "kind": "flat", "V": 4096, "exact": True},
    {"name": "planted-4096", "kind": "planted", "V": 4096, "exact": True},
    {"name": "contested-136912", "kind": "contested", "V": 136912},
    {"name": "contested-793471", "kind": "contested", "V": 793471},
    {"name": "flat-793471", "kind": "flat", "V": 793471},
    {"name": "planted-793471", "kind": "planted", "V": 793471},
    {"name": "skewed-4096", "kind": "skewed", "V": 4096, "exact": True},
    {"name": "skewed-793471", "kind": "skewed", "V": 793471},
    {"name": "profile-4096", "kind": "profile", "V": 4096, "exact": True},
    {"name": "profile-793471", "kind": "profile", "V": 793471},
    {"name": "ptb", "kind": "real", "file": "ptb/round_001.npz", "exact": True},
    {"name": "wikitext2", "kind": "real", "file": "wikitext2/round_001.npz"},
    {"name": "onebillion", "kind": "real", "file": "onebillion/round_001.npz"},
]


LABELS = {
    "mild": "mild (class-structured, every count 1)", "zipf": "count-weighted Zipf (counts 4e7 .. 3)",
    "contested": "contested (hundreds of classes wanting the same 2 rows and 2 columns, Zipf counts)",
    "flat": "flat (early training: every loss within 0.05 nats of log R)",
    "planted": "planted (a hidden table 1.5 nats cheaper per occurrence)",
    "skewed": "skewed (a short first epoch: most words unseen, every seen word wants the same 4 rows and 4 columns)",
    "profile": "profile (a short first epoch: most words unseen, every seen word follows the model's marginals)",
}
REAL = {"ptb": "real: PTB epoch statistics, move penalty 1", "wikitext2": "real: WikiText-2 epoch statistics, move penalty 1",
        "onebillion": "real: One Billion Word rehearsal statistics (2 DDP ranks, 200 steps), move penalty 1"}


def greedy_ratio(g: dict | None, r: dict) -> str:
    """How much dearer greedy's table is than sparse's (the objectives: penalized costs)."""
    if not g:
        return ""
    return f"{100 * (g['objective'] / r['objective'] - 1):+.2f}%"


def table(runs: list[dict]) -> str:
    """The README's solver table: one row per streamed ``sparse`` case, ``greedy`` beside it."""
    greedy = {r["name"]: r for r in runs if r.get("method") == "greedy" and "objective" in r}
    rows = ["| costs | V | round seconds (top-k + solve) | peak RSS | certified gap | above the exact optimum "
            "| the polish cut the cost by | `greedy`'s table, dearer by |", "|---|---|---|---|---|---|---|---|"]
    done = [r for r in runs if r.get("method") == "sparse" and r.get("mode") == "streamed" and "objective" in r]
    for r in sorted(done, key=lambda r: (r["V"], r["name"])):
        label = REAL.get(r["name"]) or LABELS.get(r["kind"], r["kind"])
        over = f"{100 * r['over_exact']:.4f}%" if r.get("over_exact") is not None else ""
        g = greedy.get(r["name"])
        cut = f"{100 * r['polish_gain'] / (r['objective'] + r['polish_gain']):.2f}%" if "polish_gain" in r else "(none)"
        if r.get("profile_table"):  # the profile route's table (polished on its own), not the auction's
            gain = r.get("profile_polish_gain", 0.0)
            cut = f"{100 * gain / (r['objective'] + gain):.2f}% (profile route)"
        rows.append(f"| {label} | {r['V']:,} | {r['round_seconds']:.1f} ({r['candidate_seconds']:.1f} + "
                    f"{r['solve_seconds']:.1f}) | {r['peak_rss_mb'] / 1024:.2f} GB | {100 * r['gap']:.2f}% | {over} | "
                    f"{cut} | {greedy_ratio(g, r)} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    ap.add_argument("--methods", nargs="*", default=["sparse", "greedy"])
    ap.add_argument("--real-dir", default=str(ROOT / ".cache" / "realstats"))
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--device", default="cpu", help="where the statistics live (cpu or cuda)")
    ap.add_argument("--table", action="store_true", help="print the README's table from the JSON and exit")
    ap.add_argument("--no-polish", action="store_true", help="the auction's table, without the polish")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads((ROOT / "benchmarks" / "results" / "solver_scaling.json").read_text())["runs"]))
        return
    out_path = ROOT / "benchmarks" / "results" / "solver_scaling.json"
    runs = []
    if args.only and out_path.exists():  # keep the other cases' earlier results
        runs = [r for r in json.loads(out_path.read_text()).get("runs", []) if r.get("name") not in args.only]
    for case in CASES:
        if args.only and case["name"] not in args.only:
            continue
        for method in args.methods:
            if method == "greedy" and (case.get("mode") == "materialized" or case.get("V", 0) > 200_000):
                continue
            spec = {**case, "method": method, "mode": case.get("mode", "streamed"), "device": args.device,
                    "polish": not args.no_polish}
            if case["kind"] == "real":
                path = Path(args.real_dir) / case["file"]
                if not path.exists():
                    print(f"skip {case['name']}: no {path}", flush=True)
                    break
                spec["path"] = str(path)
            spec["exact"] = bool(case.get("exact")) and method == "sparse"
            try:
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"),
                                                                     os.environ.get("PYTHONPATH", "")])}
                proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True,
                                      text=True, timeout=args.timeout, cwd=ROOT, env=env)
                row = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else \
                    {**spec, "error": proc.stderr[-800:]}
            except subprocess.TimeoutExpired:
                row = {**spec, "error": f"timeout after {args.timeout} s"}
            row.pop("path", None)
            print(json.dumps(row), flush=True)
            runs.append(row)
            partial = out_path.with_name("solver_scaling.partial.json")  # partial results as they come
            partial.write_text(json.dumps({"runs": runs}, indent=1))

    def plot(plt):
        fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
        for kind, marker in (("mild", "s"), ("zipf", "o"), ("contested", "x"), ("flat", "d"), ("planted", "v"),
                             ("skewed", "<"), ("profile", ">"), ("real", "^")):
            rs = sorted((r for r in runs if r.get("kind") == kind and r.get("method") == "sparse"
                         and r.get("mode") == "streamed" and "total_seconds" in r), key=lambda r: r["V"])
            if not rs:
                continue
            v = [r["V"] for r in rs]
            ax[0].loglog(v, [r["candidate_seconds"] + r["solve_seconds"] for r in rs], marker + "-", label=f"sparse, {kind}")
            ax[1].semilogx(v, [r["peak_rss_mb"] / 1024 for r in rs], marker + "-", label=f"sparse, {kind}")
            ax[2].semilogx(v, [100 * r["gap"] for r in rs], marker + "-", label=f"certified gap, {kind}")
            ex = [r for r in rs if "over_exact" in r]
            if ex:
                ax[2].semilogx([r["V"] for r in ex], [100 * r["over_exact"] for r in ex], marker, mfc="none",
                               ms=10, label=f"over exact optimum, {kind}")
        for x, lim in ((0, 60), (1, 8)):
            ax[x].axhline(lim, color="r", ls="--", lw=0.8)
        ax[0].axvline(136912, color="gray", ls=":", lw=0.8)
        ax[0].set(xlabel="words V", ylabel="seconds (candidate top-k + solve)", title="time, 2-core CPU")
        ax[1].set(xlabel="words V", ylabel="peak RSS (GB)", title="memory (statistics streamed)")
        ax[2].set(xlabel="words V", ylabel="%", title="distance from the optimum")
        for a in ax:
            a.legend(fontsize=7)
        return fig

    write_result("solver_scaling", {"runs": runs}, plot)
    out_path.with_name("solver_scaling.partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
