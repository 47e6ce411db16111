"""What every benchmark records beside its numbers: the command, the machine, the versions."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def environment() -> dict:
    import numpy
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": gpu,
                    "torch_threads": torch.get_num_threads()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__},
    }


def write_result(name: str, result: dict, plot: Callable | None = None) -> Path:
    """``results/<name>.json`` (with the command and environment) and, given ``plot(plt) -> fig``, a PNG."""
    from lrnn_lightning.atomic import write_text

    script = Path(sys.argv[0]).name
    full = {"command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]), **environment(), **result}
    out = RESULTS / f"{name}.json"
    write_text(out, json.dumps(full, indent=2) + "\n")
    if plot is not None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed (pip install -e '.[bench]'): no plot")
        else:
            fig = plot(plt)
            fig.tight_layout()
            fig.savefig(out.with_suffix(".png"), dpi=100)
    print(json.dumps(full, indent=2))
    return out


def draw(name: str, plot: Callable) -> Path | None:
    """Redraw ``results/<name>.png`` from ``results/<name>.json`` with ``plot(plt, result) -> fig``
    (a script's ``--plot-only`` path: no rerun). Without matplotlib: says so, draws nothing."""
    src = RESULTS / f"{name}.json"
    result = json.loads(src.read_text())
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot")
        return None
    fig = plot(plt, result)
    fig.tight_layout()
    out = src.with_suffix(".png")
    from lrnn_lightning.atomic import atomic_path

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    print(f"plot: {out}")
    return out
