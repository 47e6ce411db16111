"""Forward+backward time of one SRU layer against the reference package and the LSTM.

    python benchmarks/sru_speed.py [--shapes 32,32,256 128,32,512 256,64,1024] [--repeats N]

Implementations timed on the device at hand (same shapes, fp32, one layer, input size = hidden):
  ours_triton   lrnn_lightning SRU, Triton kernels           (CUDA only)
  ours_torch    lrnn_lightning SRU, PyTorch path             (CPU and CUDA)
  sru_package   sru 2.6.0: its CUDA kernel on a GPU, its CPU training path (a per-step loop) on CPU
  lstm          torch.nn.LSTM (cuDNN on a GPU)
On a GPU it also measures the recurrence kernel's achieved memory bandwidth (bytes it must move /
time) against the device's copy bandwidth (a large device-to-device copy).
Writes benchmarks/results/sru_speed_<cpu|gpu>.json and .png. Never times inside tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from common import write_result

from lrnn_lightning.modules.sru import SRU


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device: str, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def fwd_bwd(module, x: torch.Tensor):
    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        out = module(x)
        out[0].sum().backward()
    return step


def reference_sru(d: int, device: str):
    try:
        import sru  # compiles its extensions at import
    except Exception as e:  # noqa: BLE001 - report, do not fail the other measurements
        return None, f"import failed: {e!r}"[:300]
    return sru.SRU(d, d, num_layers=1).to(device), None


def recurrence_bandwidth(L: int, B: int, d: int, repeats: int) -> dict:
    """The forward recurrence alone (training mode: it also writes c), bytes it must move / time."""
    from triton_kernels.sru import sru_recurrence_triton

    U = torch.randn(L, B, 3 * d, device="cuda", requires_grad=True)
    x = torch.randn(L, B, d, device="cuda")
    wc, bias = torch.randn(2 * d, device="cuda"), torch.zeros(2 * d, device="cuda")
    c0 = torch.zeros(B, d, device="cuda")
    ms = time_fn(lambda: sru_recurrence_triton(U, x, wc, bias, c0, d), "cuda", repeats)
    n = L * B * d
    moved = n * 4 * (3 + 1 + 1 + 1)  # read U (3) and x, write h and c
    big = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(big)
    copy_ms = time_fn(lambda: dst.copy_(big), "cuda", repeats)
    copy_gbs = 2 * big.numel() / (copy_ms / 1e3) / 1e9
    gbs = moved / (ms / 1e3) / 1e9
    return {"kernel_ms": round(ms, 4), "kernel_GBps": round(gbs, 1), "copy_GBps": round(copy_gbs, 1),
            "fraction_of_copy": round(gbs / copy_gbs, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["32,32,256", "128,32,512", "256,64,1024"])
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    repeats = args.repeats or (50 if device == "cuda" else 5)
    results = []
    for shape in args.shapes:
        L, B, d = (int(v) for v in shape.split(","))
        torch.manual_seed(0)
        x = torch.randn(L, B, d, device=device, requires_grad=True)
        row = {"L": L, "B": B, "d": d, "ms": {}}
        impls = {}
        if device == "cuda":
            impls["ours_triton"] = SRU(d, d, num_layers=1, backend="triton").to(device)
        impls["ours_torch"] = SRU(d, d, num_layers=1, backend="torch").to(device)
        ref, why = reference_sru(d, device)
        if ref is not None:
            impls["sru_package"] = ref
        else:
            row["sru_package_error"] = why
        impls["lstm"] = torch.nn.LSTM(d, d, num_layers=1).to(device)
        for name, module in impls.items():
            try:
                row["ms"][name] = round(time_fn(fwd_bwd(module, x), device, repeats), 3)
            except Exception as e:  # noqa: BLE001 - e.g. the sru package's CUDA kernel failing to build
                row[f"{name}_error"] = repr(e)[:300]
                continue
            print(shape, name, row["ms"][name], "ms", flush=True)
        ours = row["ms"].get("ours_triton", row["ms"]["ours_torch"])
        row["speedup_vs_lstm"] = round(row["ms"]["lstm"] / ours, 2)
        if "sru_package" in row["ms"]:
            row["speedup_vs_sru_package"] = round(row["ms"]["sru_package"] / ours, 2)
        if device == "cuda":
            row["recurrence"] = recurrence_bandwidth(L, B, d, repeats)
        results.append(row)

    def plot(plt):
        fig, ax = plt.subplots(figsize=(7, 4))
        names = list(results[0]["ms"])
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            ax.bar([j + i * width for j in range(len(results))], [r["ms"].get(name, 0) for r in results], width,
                   label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(results))])
        ax.set_xticklabels([f"L={r['L']} B={r['B']} d={r['d']}" for r in results])
        ax.set_yscale("log")
        ax.set_ylabel("forward+backward, ms (log)")
        ax.set_title(f"one SRU layer vs LSTM on {device}")
        ax.legend()
        return fig

    versions = {}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        versions["sru"] = version("sru")
    except Exception:  # noqa: BLE001
        pass
    write_result(f"sru_speed_{'gpu' if device == 'cuda' else 'cpu'}",
                 {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "repeats": repeats,
                  "extra_versions": versions, "results": results}, plot)


if __name__ == "__main__":
    sys.exit(main())
