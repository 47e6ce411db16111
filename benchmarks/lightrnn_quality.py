"""Quality of LightRNN: reallocation against a frozen random table, and against the softmax LSTM.

    python benchmarks/lightrnn_quality.py synthetic   # default synthetic language, default run length
    python benchmarks/lightrnn_quality.py ptb [--ptb ../shared/data/ptb] [--epochs 2]

Each configuration is one real ``python train.py`` run (same seed, same epochs); the script
collects their metrics.json into benchmarks/results/lightrnn_quality_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, write_result


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
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    if args.which == "synthetic":
        configs = {
            "lightrnn_reallocation": ["model=lightrnn"],
            "lightrnn_frozen_random_table": ["model=lightrnn", "callbacks.reallocation.max_rounds=0"],
        }
    else:
        # the same core for both: 2-layer LSTM-256
        common = ["data=ptb", f"data.root={args.ptb}", f"trainer.max_epochs={args.epochs}", "model.num_layers=2",
                  "model.hidden_size=256", "model.embedding_size=256"]
        configs = {
            "lightrnn": ["model=lightrnn", *common],
            "softmax_lstm": ["model=lstm", *common],
        }
    results = {}
    for name, overrides in configs.items():
        results[name] = run(overrides)
        print(name, json.dumps(results[name]), flush=True)
    write_result(f"lightrnn_quality_{args.which}", {"omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                                                     "runs": results})

if __name__ == "__main__":
    main()
