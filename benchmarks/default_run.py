"""Time the default `python train.py` end to end and record its perplexities.

    python benchmarks/default_run.py [extra overrides ...]

Writes benchmarks/results/default_run.json: wall time, peak memory of the run, val/test
perplexity, data/optimal_ppl, tokens per second, the machine and library versions.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def versions() -> dict:
    import hydra
    import lightning
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
            "hydra": hydra.__version__}


def main() -> None:
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
    result = {
        "command": " ".join(["python train.py", *overrides]),
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": None},
        "versions": versions(),
        "metrics": {k: v for k, v in metrics.items() if not k.startswith("ckpt/")},
    }
    out = ROOT / "benchmarks" / "results" / "default_run.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
