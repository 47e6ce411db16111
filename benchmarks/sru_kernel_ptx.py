"""What the compiled SRU kernels do per time step, before and after the rewrite, read from PTX.

No GPU needed: both versions are compiled for sm_80 and sm_90 with Triton's own toolchain
(``triton_kernels.aot``) and the PTX of the time loop (the back edge with the most instructions) is
counted: global loads and their width, asynchronous copies (the software pipeline), shared-memory
reads, stores, and how many steps ahead the loads are issued. "before" is the kernel of commit
96bb0a0 (one program = BLOCK lanes of a flattened (batch, direction, unit) index, interleaved U);
"after" is the working tree's.

    python benchmarks/sru_kernel_ptx.py   ->  benchmarks/results/sru_kernel_ptx.json / .png
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

from benchmarks.common import write_result  # noqa: E402

BEFORE = "96bb0a0"


def _old_module():
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:triton_kernels/sru.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "sru_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sru_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(fn, types: dict, constants: dict, arch: int, num_warps: int, num_stages: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constants:
            signature[name], constexprs[(i,)] = "constexpr", constants[name]
        else:
            signature[name] = types[name]
            if types[name].startswith("*") or name == "D":
                attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages}).asm


def loop_stats(ptx: str) -> dict:
    """Counts inside the time loop and how many steps of loads are issued before it starts."""
    lines = [line.strip() for line in ptx.splitlines()]
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\$L__BB\d+_\d+):", line))}
    loops = []
    for i, line in enumerate(lines):
        match = re.search(r"bra(?:\.uni)?\s+(\$L__BB\d+_\d+);", line)
        if match and match.group(1) in labels and labels[match.group(1)] < i:
            loops.append((labels[match.group(1)], i))
    start, end = max(loops, key=lambda se: se[1] - se[0])
    body = [line for line in lines[start:end + 1] if line.endswith(";") and not line.startswith(".")]

    def count(pattern, where):
        return sum(1 for line in where if re.search(pattern, line))

    loads = [re.search(r"ld\.global(?:\.\w+)*?(?:\.v(\d))?\.(?:b|u|f|s)(\d+)", line) for line in body]
    load_bits = sorted({int(m.group(1) or 1) * int(m.group(2)) for m in loads if m})
    async_in_loop = count(r"cp\.async\.c[ag]\.", body)
    async_bytes = sorted({int(m.group(1), 16) for line in body
                          if (m := re.search(r"cp\.async\.c[ag]\.shared\.global.*?,\s*(0x[0-9a-f]+)", line))})
    prologue = [line for line in lines[:start] if line.endswith(";")]
    async_before = count(r"cp\.async\.c[ag]\.", prologue)
    return {
        "instructions": len(body),
        "ld_global": sum(1 for m in loads if m),
        "ld_global_bits": load_bits,
        "cp_async": async_in_loop,
        "cp_async_bytes": async_bytes,
        "ld_shared": count(r"ld\.shared", body),
        "st_global": count(r"st\.global", body),
        "ex2": count(r"ex2\.approx", body),
        "div_or_rcp": count(r"(div|rcp)\.", body),
        # loads of later steps already issued when a step computes (0: every step waits a round trip)
        "steps_prefetched": round(async_before / async_in_loop) if async_in_loop else 0,
    }


def main() -> None:
    import triton

    from triton_kernels import aot
    from triton_kernels import sru as after

    before = _old_module()
    rows = []
    cases = [("forward", "fp32"), ("backward", "fp32"), ("forward", "bf16"), ("backward", "bf16")]
    for arch in (80, 90):
        for kernel, dtype in cases:
            # before: flattened lanes, interleaved U, D constexpr (here 256), BLOCK 128 / 4 warps
            fn = (before._sru_forward_kernel if kernel == "forward" else before._sru_backward_kernel).fn
            u = f"*{dtype}"
            types = {"U": u, "X": u, "WC": "*fp32", "BIAS": "*fp32", "C0": "*fp32", "MASK_C": "*fp32",
                     "MASK_PAD": "*fp32", "H": u, "C_SEQ": "*fp32", "C_LAST": "*fp32", "GRAD_H": u,
                     "GRAD_C_LAST": "*fp32", "GRAD_U": u, "GRAD_X": u, "GRAD_C0": "*fp32", "GRAD_PARAMS": "*fp32",
                     "scale_x": "fp32", "L": "i32", "B": "i32", "N": "i32"}
            constants = {"DIRS": 1, "D": 256, "K": 3, "HAS_MASK_C": False, "HAS_PAD": False, "USE_TANH": False,
                         "BLOCK": 128}
            if kernel == "forward":
                constants["SAVE_C"] = True
            asm = _compile(fn, types, constants, arch, 4, 3)
            old = {**loop_stats(asm["ptx"]), **aot.resource_usage(asm["cubin"])}
            # after: the default variant at each autotune config
            for block, warps, stages in after.CONFIGS:
                variant = aot.Variant(kernel, dtype, dtype, 3, False, False, True, block, warps, stages)
                result, asm = aot.compile_variant(variant, arch, keep_asm=True)
                assert result.ok, result.error
                rows.append({"arch": arch, "kernel": kernel, "dtype": dtype, "config": [block, warps, stages],
                             "lanes_per_thread": {"before": 1, "after": block // (32 * warps)},
                             "before": old, "after": {**loop_stats(asm["ptx"]), **result.usage}})
            print(arch, kernel, dtype, "before", old, "\n   after", rows[-1]["after"], flush=True)
    write_result("sru_kernel_ptx", {"triton": triton.__version__, "before_commit": BEFORE, "rows": rows},
                 plot=lambda plt: plot(plt, rows))


def plot(plt, rows: list) -> object:
    rows = [r for r in rows if r["arch"] == 90]
    labels = [f"{r['kernel'][:3]} {r['dtype']}\n{r['config'][0]}/{r['config'][1]}w/{r['config'][2]}st" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    x = range(len(rows))
    axes[0].bar([i - 0.2 for i in x], [r["before"]["ld_global"] for r in rows], 0.4, label="before: ld.global in loop")
    axes[0].bar([i + 0.2 for i in x], [r["after"]["ld_global"] + r["after"]["cp_async"] for r in rows], 0.4,
                label="after: ld.global + cp.async in loop")
    axes[0].set_title("global load instructions per step (sm_90, per thread)")
    axes[1].bar([i - 0.2 for i in x], [r["before"]["steps_prefetched"] for r in rows], 0.4, label="before")
    axes[1].bar([i + 0.2 for i in x], [r["after"]["steps_prefetched"] for r in rows], 0.4, label="after")
    axes[1].set_title("steps of loads in flight while a step computes")
    for ax in axes:
        ax.set_xticks(list(x), labels, rotation=90, fontsize=7)
        ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    main()
