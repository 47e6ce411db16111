"""Forward+backward time of one SRU layer against the reference package and the LSTM, and the host
time each call costs.

    python benchmarks/sru_speed.py [--shapes 32,32,256 128,32,512 256,64,1024] [--repeats N]
                                   [--dtypes fp32 bf16] [--quick]

Implementations timed on the device at hand (same shapes, one layer, input size = hidden):
  ours_triton   lrnn_lightning SRU, Triton kernels           (CUDA only)
  ours_torch    lrnn_lightning SRU, PyTorch path             (CPU and CUDA)
  sru_package   sru 2.6.0: its CUDA kernel on a GPU (or the text of its build error: it does not build
                with torch 2.11+), its CPU training path (a per-step loop) on CPU
  lstm          torch.nn.LSTM (cuDNN on a GPU)
On a GPU, in fp32 and bf16 (``--dtypes``), timed with ``triton.testing.do_bench`` (CUDA events, the
L2 cache flushed before every repetition, so small shapes are not served from the 50 MB L2), it also
measures the recurrence kernels alone: bytes they must move / time, for the forward without
gradient (read U and x, write h), the training forward (also write the fp32 states) and the backward,
against the device's copy bandwidth (a 1 GiB device-to-device copy, read + write bytes).

Host time per call (``host_us``): what one forward+backward costs the CPU thread that issues it.
On a GPU, the stream is first held by a sleep kernel, so the calls only queue their launches and
the wall time of N calls / N is the host's alone (no synchronization inside, none waited for).
On a CPU (no GPU to launch on), the Triton path runs with its kernel launches replaced by no-ops
(TRITON_INTERPRET=1 so that the kernels module loads), at a tiny shape: our Python, the tensor ops
and autograd, without Triton's own launcher. ``aten_ops`` counts the tensor ops a call dispatches
(the same on any device). ``--quick``: one tiny shape, few repeats, written to
``sru_speed_<cpu|gpu>_quick.json`` (a smoke run; the full run writes ``sru_speed_<cpu|gpu>.json``).
Never times inside tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

if not torch.cuda.is_available():
    # on CPU the Triton path's host time is measured with its launches replaced (see host_overhead_cpu);
    # the kernels module must load for that, which it does interpreted
    os.environ.setdefault("TRITON_INTERPRET", "1")

from common import write_result  # noqa: E402

from lrnn_lightning.modules.sru import SRU  # noqa: E402

def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device: str, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds: CUDA events with the L2 flushed on a GPU, host clocks on CPU."""
    if device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=max(100, repeats * 2), return_mode="median"))
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
        return None, f"import failed: {type(e).__name__}: {e}"[:1000]
    return sru.SRU(d, d, num_layers=1).to(device), None


def copy_bandwidth(repeats: int) -> float:
    """GB/s of a 1 GiB device-to-device copy, counting the bytes read and written."""
    big = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(big)
    ms = time_fn(lambda: dst.copy_(big), "cuda", repeats)
    return 2 * big.numel() / (ms / 1e3) / 1e9


def recurrence_bandwidth(L: int, B: int, d: int, dtype: torch.dtype, copy_gbs: float, repeats: int) -> dict:
    """The recurrence kernels alone (planar U, as the module calls them): bytes each must move / time."""
    from triton_kernels.sru import sru_recurrence_triton

    e = torch.tensor([], dtype=dtype).element_size()
    U = torch.randn(L, B, 3, d, device="cuda", dtype=dtype, requires_grad=True)
    x = torch.randn(L, B, d, device="cuda", dtype=dtype, requires_grad=True)
    wc = torch.randn(2 * d, device="cuda", requires_grad=True)
    bias = torch.zeros(2 * d, device="cuda", requires_grad=True)
    c0 = torch.zeros(B, d, device="cuda")
    n = L * B * d

    def call():
        return sru_recurrence_triton(U, x, wc, bias, c0, d, planar=True)

    def inference():
        with torch.no_grad():
            call()

    h, c = call()
    grad_h = torch.randn_like(h)

    def backward():
        torch.autograd.grad(h, [U, x, wc, bias], grad_h, retain_graph=True)

    out = {}
    # bytes that must move: inference reads U, x and writes h; training also writes the fp32 states;
    # the backward reads U, x, the states and dh, and writes dU and dx
    for name, fn, moved in (("inference", inference, n * e * 5), ("forward", call, n * (e * 5 + 4)),
                            ("backward", backward, n * (e * 5 + 4 + e * 4))):
        ms = time_fn(fn, "cuda", repeats)
        gbs = moved / (ms / 1e3) / 1e9
        out[name] = {"ms": round(ms, 4), "GBps": round(gbs, 1), "fraction_of_copy": round(gbs / copy_gbs, 3)}
    return out


class _CountOps:
    """The aten ops a call dispatches (below autograd), counted by a dispatch mode."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counter.n += 1
                return func(*args, **(kwargs or {}))

        self.n = 0
        self.mode = Mode()

    def __call__(self, fn) -> int:
        self.n = 0
        with self.mode:
            fn()
        return self.n


def host_time_us(fn, device: str, calls: int = 20, rounds: int = 5) -> float:
    """Median host microseconds per call of ``fn``. On CUDA the stream is held by a sleep kernel
    while the calls are issued, so the host never waits for the GPU: the time is the host's alone."""
    for _ in range(5):
        fn()
    sync(device)
    times = []
    for _ in range(rounds):
        if device == "cuda":
            torch.cuda._sleep(int(2e8))  # ~0.1 s of GPU clock: longer than the calls take to issue
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
        sync(device)
    return statistics.median(times)


def recurrence_call(L: int, B: int, d: int, device: str, dtype: torch.dtype):
    """One training call of the recurrence alone (planar U, as the module calls it): forward + backward."""
    from triton_kernels.sru import sru_recurrence_triton

    U = torch.randn(L, B, 3, d, device=device, dtype=dtype, requires_grad=True)
    x = torch.randn(L, B, d, device=device, dtype=dtype, requires_grad=True)
    wc = torch.randn(2 * d, device=device, requires_grad=True)
    bias = torch.zeros(2 * d, device=device, requires_grad=True)
    grad_h = torch.randn(L, B, d, device=device, dtype=dtype)

    def call():
        h, _ = sru_recurrence_triton(U, x, wc, bias, None, d, planar=True)
        torch.autograd.grad(h, [U, x, wc, bias], grad_h)
    return call


def host_costs(L: int, B: int, d: int, device: str, dtype: torch.dtype, impls: dict) -> tuple[dict, dict]:
    """Host microseconds and aten ops per forward+backward call: the Triton layer, the recurrence
    alone, and the other implementations for comparison."""
    calls = {}
    if "ours_triton" in impls:
        calls["layer_triton"] = fwd_bwd(impls["ours_triton"], torch.randn(L, B, d, device=device, dtype=dtype,
                                                                           requires_grad=True))
        calls["recurrence_triton"] = recurrence_call(L, B, d, device, dtype)
    for name in ("ours_torch", "lstm"):
        calls[name] = fwd_bwd(impls[name], torch.randn(L, B, d, device=device, dtype=dtype, requires_grad=True))
    count = _CountOps()
    us, ops = {}, {}
    for name, fn in calls.items():
        try:
            us[name] = round(host_time_us(fn, device), 1)
            ops[name] = count(fn)
        except Exception as e:  # noqa: BLE001 - report, do not fail the other measurements
            us[name] = f"{type(e).__name__}: {e}"[:300]
    if "layer_triton" in calls:
        # the same layer with every launch through triton.autotune and the JIT (no direct launch)
        import triton_kernels.sru as kernels

        kernels.DIRECT_LAUNCH = False
        try:
            us["layer_triton_autotuner_launch"] = round(host_time_us(calls["layer_triton"], device), 1)
        finally:
            kernels.DIRECT_LAUNCH = True
    return us, ops


class _NoLaunch:
    """Stands for an autotuned kernel: ``kernel[grid](*args)`` returns at once."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def host_overhead_cpu(L: int = 4, B: int = 2, d: int = 32) -> dict:
    """The Triton path's host cost without a GPU: the kernel launches replaced by no-ops, a tiny shape
    (compute negligible), one thread. Our Python, the tensor ops and autograd; not Triton's launcher."""
    import triton_kernels.sru as kernels

    saved = kernels._FORWARD.kernel, kernels._BACKWARD.kernel
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kernels._FORWARD.kernel = kernels._BACKWARD.kernel = _NoLaunch()
        layer = SRU(d, d, num_layers=1, backend="triton")
        calls = {"layer_triton": fwd_bwd(layer, torch.randn(L, B, d, requires_grad=True)),
                 "recurrence_triton": recurrence_call(L, B, d, "cpu", torch.float32)}
        count = _CountOps()
        out = {"shape": [L, B, d], "launches": "replaced by no-ops", "us_per_call": {}, "aten_ops": {}}
        for name, fn in calls.items():
            out["us_per_call"][name] = round(host_time_us(fn, "cpu", calls=200, rounds=7), 1)
            out["aten_ops"][name] = count(fn)
        return out
    finally:
        kernels._FORWARD.kernel, kernels._BACKWARD.kernel = saved
        torch.set_num_threads(threads)


def device_facts() -> dict:
    import subprocess

    facts = {"name": torch.cuda.get_device_name(), "torch_cuda": torch.version.cuda}
    try:
        facts["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                         capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        facts["driver"] = None
    return facts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=None, help="L,B,d ... (default 32,32,256 128,32,512 256,64,1024)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--dtypes", nargs="+", default=None, help="fp32 bf16 (GPU default: both; CPU: fp32)")
    ap.add_argument("--quick", action="store_true", help="one tiny shape, few repeats: a smoke run")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = args.shapes or (["16,4,64"] if args.quick else ["32,32,256", "128,32,512", "256,64,1024"])
    repeats = args.repeats or (3 if args.quick else 50 if device == "cuda" else 5)
    dtypes = args.dtypes or (["fp32", "bf16"] if device == "cuda" else ["fp32"])
    copy_gbs = copy_bandwidth(repeats) if device == "cuda" else None
    results = []
    for shape, dtype_name in [(s, t) for t in dtypes for s in shapes]:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        L, B, d = (int(v) for v in shape.split(","))
        torch.manual_seed(0)
        x = torch.randn(L, B, d, device=device, requires_grad=True, dtype=dtype)
        row = {"L": L, "B": B, "d": d, "dtype": dtype_name, "ms": {}}
        impls = {}
        if device == "cuda":
            impls["ours_triton"] = SRU(d, d, num_layers=1, backend="triton").to(device)
        impls["ours_torch"] = SRU(d, d, num_layers=1, backend="torch").to(device)
        ref, why = reference_sru(d, device)
        if ref is not None:
            impls["sru_package"] = ref.to(dtype)
        else:
            row["sru_package_error"] = why
        impls["lstm"] = torch.nn.LSTM(d, d, num_layers=1).to(device)
        for name, module in impls.items():
            module.to(dtype)
            try:
                row["ms"][name] = round(time_fn(fwd_bwd(module, x), device, repeats), 3)
            except Exception as e:  # noqa: BLE001 - e.g. the sru package's CUDA kernel failing to build
                row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:1000]
                continue
            print(shape, dtype_name, name, row["ms"][name], "ms", flush=True)
        if "ours_triton" in impls:
            assert impls["ours_triton"].layers[0].last_backend == "triton"
        ours = row["ms"].get("ours_triton", row["ms"].get("ours_torch"))
        if ours and "lstm" in row["ms"]:
            row["speedup_vs_lstm"] = round(row["ms"]["lstm"] / ours, 2)
        if ours and "sru_package" in row["ms"]:
            row["speedup_vs_sru_package"] = round(row["ms"]["sru_package"] / ours, 2)
        if device == "cuda":
            row["recurrence"] = recurrence_bandwidth(L, B, d, dtype, copy_gbs, repeats)
            row["host_us"], row["aten_ops"] = host_costs(L, B, d, device, dtype, impls)
            print(shape, dtype_name, row["recurrence"], "host us:", row["host_us"], flush=True)
        results.append(row)
    host_cpu = host_overhead_cpu() if device == "cpu" else None
    if host_cpu:
        print("host overhead (CPU, launches replaced):", host_cpu, flush=True)

    def plot(plt):
        fig, ax = plt.subplots(figsize=(7, 4))
        names = list(results[0]["ms"])
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            ax.bar([j + i * width for j in range(len(results))], [r["ms"].get(name, 0) for r in results], width,
                   label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(results))])
        ax.set_xticklabels([f"L={r['L']} B={r['B']}\nd={r['d']} {r['dtype']}" for r in results], fontsize=8)
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
    name = f"sru_speed_{'gpu' if device == 'cuda' else 'cpu'}" + ("_quick" if args.quick else "")
    write_result(name,
                 {"device": device_facts() if device == "cuda" else "cpu", "repeats": repeats,
                  "timing": "triton.testing.do_bench, L2 flushed, median" if device == "cuda" else "host clock, median",
                  "host_timing": ("stream held by a sleep kernel, wall time of 20 calls / 20, median of 5"
                                  if device == "cuda" else None),
                  "copy_GBps": round(copy_gbs, 1) if copy_gbs else None, "host_overhead_cpu": host_cpu,
                  "extra_versions": versions, "results": results}, plot)


if __name__ == "__main__":
    sys.exit(main())
