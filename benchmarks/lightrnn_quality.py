"""Quality of LightRNN: reallocation against a frozen random table, and against the softmax LSTM.

    python benchmarks/lightrnn_quality.py synthetic   # default synthetic language, default run length
    python benchmarks/lightrnn_quality.py ptb [--ptb ../shared/data/ptb] [--epochs 3]

Each configuration is one real ``python train.py`` run (same seed, same epochs); the script
collects their metrics.json into benchmarks/results/lightrnn_quality_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "train.py"), "logger=csv", f"paths.root_dir={tmp}",
               f"paths.cache_dir={ROOT / '.cache'}", *overrides]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            return {"overrides": overrides, "error": proc.stderr[-2000:]}
        run_dir = next((Path(tmp) / "logs" / "train" / "runs").iterdir())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        log = (run_dir / "train.log").read_text()
    moved = [int(l.split("moved ")[1].split(" ")[0]) for l in log.splitlines() if "reallocation round" in l]
    return {"overrides": overrides, "wall_seconds": round(wall, 1), "moved_words_per_round": moved,
            "metrics": {k: v for k, v in metrics.items() if not k.startswith("ckpt/")}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=["synthetic", "ptb"])
    ap.add_argument("--ptb", default=str(ROOT.parent / "shared" / "data" / "ptb"))
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    if args.which == "synthetic":
        configs = {
            "lightrnn_reallocation": ["model=lightrnn"],
            "lightrnn_frozen_random_table": ["model=lightrnn", "callbacks.reallocation.max_rounds=0"],
        }
    else:
        common = ["data=ptb", f"data.root={args.ptb}", f"trainer.max_epochs={args.epochs}"]
        configs = {
            "lightrnn": ["model=lightrnn", *common],
            "softmax_lstm": ["model=lstm", *common],
        }
    results = {}
    for name, overrides in configs.items():
        results[name] = run(overrides)
        print(name, json.dumps(results[name]), flush=True)
    out = {
        "command": "python benchmarks/lightrnn_quality.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": None,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "runs": results,
    }
    path = ROOT / "benchmarks" / "results" / f"lightrnn_quality_{args.which}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
