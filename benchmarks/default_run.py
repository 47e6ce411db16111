"""Time the default `python train.py` end to end and record its perplexities.

    python benchmarks/default_run.py [extra overrides ...]
    python benchmarks/default_run.py --plot-only   # redraw the PNG from the JSON

Writes benchmarks/results/default_run.json: wall time, peak memory of the run, val/test
perplexity, data/optimal_ppl, tokens per second, the machine and library versions; and .png.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, draw, write_result


def plot(plt, result: dict):
    m = result["metrics"]
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [k for k in ("train/ppl", "val/ppl", "test/ppl") if k in m]
    bars = ax.bar(names, [m[k] for k in names], color=["tab:gray", "tab:blue", "tab:orange"][: len(names)])
    ax.bar_label(bars, fmt="%.1f")
    if "data/optimal_ppl" in m:
        ax.axhline(m["data/optimal_ppl"], color="k", ls="--", label=f"optimal {m['data/optimal_ppl']:.1f}")
        ax.legend(loc="lower right")
    ax.set_ylabel("perplexity")
    ax.set_title(f"{result['train_command']}: {result['wall_seconds']:.0f} s, peak RSS {result['peak_rss_mb']:.0f} MB, "
                 f"{m.get('train/tokens_per_sec', float('nan')):.0f} tokens/s", fontsize=9)
    return fig


def main() -> None:
    if sys.argv[1:] == ["--plot-only"]:
        draw("default_run", plot)
        return
    overrides = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "train.py"), f"paths.root_dir={tmp}", *overrides]
        env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        run = next((Path(tmp) / "logs" / "train" / "runs").iterdir())
        metrics = json.loads((run / "metrics.json").read_text())
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    write_result("default_run", {
        "train_command": " ".join(["python train.py", *overrides]),
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "metrics": {k: v for k, v in metrics.items() if not k.startswith("ckpt/")},
    })
    draw("default_run", plot)

if __name__ == "__main__":
    main()
