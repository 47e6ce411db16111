"""What every benchmark records beside its numbers: the command, the machine, the versions."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
# LRNN_RESULTS_DIR: another folder for the JSON and PNG files (gpu_check.py sends the scripts it runs
# to its own output folder, e.g. a test's temporary one)
RESULTS = Path(os.environ.get("LRNN_RESULTS_DIR") or ROOT / "benchmarks" / "results")


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


def npz_memmap(path) -> dict:
    """The members of an uncompressed ``.npz`` (``ZIP_STORED``, as ``save_statistics`` writes it),
    read without loading: 2-D members as ``RowReader`` (a V x R float64 member at V = 793,471 is
    5.6 GB, read a chunk of rows at a time), the others as read-only memory maps."""
    import struct
    import zipfile

    import numpy as np

    out = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: member {info.filename} is compressed; cannot memory-map it")
            f.seek(info.header_offset)
            head = f.read(30)
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            name = info.filename.removesuffix(".npy")
            if len(shape) == 2 and not fortran:
                out[name] = RowReader(path, f.tell(), dtype, shape)
            else:
                out[name] = np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                                      order="F" if fortran else "C")
    return out


class RowReader:
    """Rows ``a:b`` of a C-order 2-D array stored at ``offset`` of a file, read on demand (plain reads,
    not a memory map: the process's resident memory then counts one chunk, not every page read)."""

    def __init__(self, path, offset: int, dtype, shape):
        import numpy as np

        self.path, self.offset, self.dtype, self.shape = path, offset, np.dtype(dtype), tuple(shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice):
        import numpy as np

        a, b, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("RowReader reads contiguous row ranges only")
        width = self.shape[1] * self.dtype.itemsize
        return np.fromfile(self.path, dtype=self.dtype, count=(b - a) * self.shape[1],
                           offset=self.offset + a * width).reshape(b - a, self.shape[1])
