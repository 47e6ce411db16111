"""Time the default `python train.py` end to end and record its perplexities.

    nice -n 5 python benchmarks/default_run.py [extra overrides ...]
    python benchmarks/default_run.py --plot-only   # redraw the PNG from the JSON
    python benchmarks/default_run.py --name default_run_constant_rate model.scheduler.final_factor=1.0
        # a variant, written to results/<name>.json and .png
    python benchmarks/default_run.py --table        # the README's table, from the JSONs (no run)

Writes benchmarks/results/default_run.json and .png: wall time, the run's own training time
(the sum of its epochs' training phases, from the plain progress lines), CPU seconds, the load
average before and after (the machine may be shared: wall times under load are inflated), peak
memory, val/test perplexity, data/optimal_ppl, val/ppl after every epoch and realloc/row_purity
of the starting table and after every round, the machine and library versions.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, draw, write_result


def plot(plt, result: dict):
    m = result["metrics"]
    optimal = m.get("data/optimal_ppl")
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ppl = result.get("val_ppl_per_epoch") or []
    if optimal and ppl:
        ax[0].plot(range(1, len(ppl) + 1), [p / optimal for p in ppl], "o-", label="val/ppl / optimal")
        ax[0].axhline(1.05, color="gray", ls="--", label="1.05x (the aim)")
        ax[0].set_xlabel("epoch")
        ax[0].set_ylabel("val/ppl / data/optimal_ppl")
        ax[0].legend()
    else:  # an older JSON without the per-epoch curve: the final perplexities
        names = [k for k in ("train/ppl", "val/ppl", "test/ppl") if k in m]
        bars = ax[0].bar(names, [m[k] for k in names])
        ax[0].bar_label(bars, fmt="%.1f")
        if optimal:
            ax[0].axhline(optimal, color="k", ls="--", label=f"optimal {optimal:.1f}")
            ax[0].legend(loc="lower right")
        ax[0].set_ylabel("perplexity")
    purity = result.get("row_purity_per_round") or []
    ax[1].plot(range(len(purity)), purity, "o-")
    ax[1].set_xlabel("reallocation round (0: the starting table)")
    ax[1].set_ylabel("realloc/row_purity")
    ax[1].set_ylim(0, 1.02)
    load = (result.get("load_average_1min_before_after") or [float("nan")])[0]
    fig.suptitle(f"{result['train_command']}: {result['wall_seconds']:.0f} s wall (load {load:.1f}), "
                 f"val/ppl {m['val/ppl']:.1f}, test/ppl {m.get('test/ppl', float('nan')):.1f}, "
                 f"optimum {optimal or float('nan'):.1f}", fontsize=9)
    return fig


EPOCH_END = re.compile(r"^epoch (\d+) (\d+)/(\d+) +100% (\d+)s")
VALIDATION = re.compile(r"^epoch (\d+) validation .*val/ppl=([0-9.e+]+)")
PURITY = re.compile(r"row purity (?:of the starting table|after round \d+): ([0-9.]+)")
ROUND = re.compile(r"reallocation round (\d+) .*moved (\d+) words")


def curves(stdout: str, log: str) -> dict:
    """Per-epoch training seconds and val/ppl from the progress lines; purity and moves from the log."""
    train_s = {int(m[1]): int(m[4]) for m in map(EPOCH_END.match, stdout.splitlines()) if m}
    val = {int(m[1]): float(m[2]) for m in map(VALIDATION.match, stdout.splitlines()) if m}
    purity = [float(m[1]) for m in map(PURITY.search, log.splitlines()) if m]
    moved = [int(m[2]) for m in map(ROUND.search, log.splitlines()) if m]
    return {"train_seconds_per_epoch": [train_s[e] for e in sorted(train_s)],
            "val_ppl_per_epoch": [val[e] for e in sorted(val)],
            "row_purity_per_round": purity, "moved_words_per_round": moved}


TABLE_RUNS = {"default_run": "`lightrnn` (default)",
              "default_run_constant_rate": "the same at a constant rate (`model.scheduler.final_factor=1.0`)"}


def table() -> str:
    """The README's table: one row per run in ``TABLE_RUNS`` whose JSON exists."""
    from common import RESULTS

    out = ["| run | wall time | val/ppl (per epoch) | test/ppl | data/optimal_ppl | val, test ÷ optimal | tokens/s | "
           "params/embedding |", "|---|---|---|---|---|---|---|---|"]
    for name, label in TABLE_RUNS.items():
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        m = r["metrics"]
        minutes, seconds = divmod(round(r["wall_seconds"]), 60)
        curve = [f"{v:.1f}" for v in r["val_ppl_per_epoch"]]
        curve[-1] = f"**{curve[-1]}**"
        out.append(f"| {label} | {minutes} min {seconds} s ({r['train_seconds']} s training) | {', '.join(curve)} | "
                   f"{m['test/ppl']:.1f} | {m['data/optimal_ppl']:.1f} | **{r['val_ppl_over_optimal']:.3f}**, "
                   f"{r['test_ppl_over_optimal']:.3f} | {m['train/tokens_per_sec'] / 1000:.1f} K | "
                   f"{m['params/embedding']:,} |")
    return "\n".join(out)


def main() -> None:
    args = sys.argv[1:]
    if args == ["--table"]:
        print(table())
        return
    name = "default_run"
    if args[:1] == ["--name"]:  # a variant of the default run, kept next to it: --name <json name>
        name, args = args[1], args[2:]
    if args == ["--plot-only"]:
        draw(name, plot)
        return
    overrides = args
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "train.py"), f"paths.root_dir={tmp}", *overrides]
        env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        run = next((Path(tmp) / "logs" / "train" / "runs").iterdir())
        metrics = json.loads((run / "metrics.json").read_text())
        log = (run / "train.log").read_text() if (run / "train.log").exists() else ""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    history = curves(proc.stdout, log)
    optimal = metrics.get("data/optimal_ppl")
    result = {
        "train_command": " ".join(["python train.py", *overrides]),
        "wall_seconds": round(wall, 1),
        "train_seconds": sum(history["train_seconds_per_epoch"]) or None,
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "nice": os.nice(0),
        "load_average_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "val_ppl_over_optimal": metrics["val/ppl"] / optimal if optimal else None,
        "test_ppl_over_optimal": metrics["test/ppl"] / optimal if optimal and "test/ppl" in metrics else None,
        **history,
        "metrics": {k: v for k, v in metrics.items() if not k.startswith("ckpt/")},
    }
    write_result(name, result)
    draw(name, plot)

if __name__ == "__main__":
    main()
