"""Compile the SRU kernels ahead of time for a GPU architecture, on any machine (no GPU needed).

Triton ships its own LLVM and ``ptxas``, so every variant the module can launch is compiled here
for sm_80 / sm_90 exactly as the JIT would on that GPU (same signature, same constexprs, same
divisibility specialization), and the results are inspected: registers, spills, shared memory, and
the PTX of the time loop (asynchronous copies of the software pipeline, vector width of the loads).

    python -m triton_kernels.aot --arch 80 90 [--all-configs] [--json out.json] [--jobs 2]

Must run without ``TRITON_INTERPRET`` (the interpreter replaces the kernels by Python functions).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

DTYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}


@dataclass(frozen=True)
class Variant:
    """One launch the module can produce: kernel, dtypes of U and x, constexpr flags, config and
    the integer specializations the JIT applies (arguments equal to 1 become constants)."""

    kernel: str  # "forward" | "backward"
    u_dtype: str
    x_dtype: str
    K: int
    has_pad: bool
    use_tanh: bool
    save_c: bool  # forward only
    block: int
    num_warps: int
    stages: int
    dirs: int = 2  # 1: the JIT turns DIRS into the constant 1
    d_div16: bool = True  # the hidden size is a multiple of 16 (divisibility specialization)
    seq_len_one: bool = False  # L == 1 becomes a constant
    has_c0: bool = True  # False: a zero initial state (the kernels allocate and read no c0, nor its gradient)

    @property
    def name(self) -> str:
        flags = "".join(c for c, on in (("p", self.has_pad), ("t", self.use_tanh), ("s", self.save_c)) if on)
        extra = (f"-dirs{self.dirs}" + ("" if self.d_div16 else "-dodd") + ("-L1" if self.seq_len_one else "")
                 + ("" if self.has_c0 else "-noc0"))
        return (f"{self.kernel}-K{self.K}-{self.u_dtype}-x{self.x_dtype}-{flags or '0'}"
                f"-b{self.block}w{self.num_warps}s{self.stages}{extra}")


def variants(all_configs: bool = False) -> list[Variant]:
    """Every flag x dtype combination of both kernels at the first config; with ``all_configs``
    every autotune config too (at fp32 and bf16, default flags); and the JIT's integer
    specializations (one direction, L = 1, a hidden size that is not a multiple of 16)."""
    from triton_kernels.sru import CONFIGS

    first = CONFIGS[0]
    out = []
    for kernel in ("forward", "backward"):
        for K, u, pad, tanh, save in itertools.product((3, 4), DTYPES, (False, True), (False, True),
                                                       (True, False) if kernel == "forward" else (True,)):
            xs = [u] + (["fp32"] if K == 3 and u != "fp32" else [])
            for x in xs:
                out.append(Variant(kernel, u, x if K == 3 else u, K, pad, tanh, save, *first))
        if all_configs:
            for cfg in CONFIGS[1:]:
                for u in ("fp32", "bf16"):
                    out.append(Variant(kernel, u, u, 3, True, False, True, *cfg))
        for spec in ({"dirs": 1}, {"d_div16": False}, {"seq_len_one": True}, {"has_c0": False}):
            out.append(Variant(kernel, "fp32", "fp32", 3, True, False, True, *first, **spec))
    return out


def _signature(v: Variant) -> tuple[dict, dict]:
    """The argument types and the constexpr values of variant ``v``."""
    u, x = f"*{v.u_dtype}", f"*{v.x_dtype}"
    # parameters, state and dropout mask: the layer's dtype (fp32 under autocast, bf16 U with an fp32 x)
    p = x
    types = {
        "U": u, "X": x, "WC": p, "BIAS": p, "C0": p, "MASK_C": p,
        "MASK_PAD": "*i8" if v.has_pad else p, "scale_x": "fp32", "L": "i32", "B": "i32", "D": "i32",
        "DIRS": "i32", "HAS_MASK_C": "i1",
        # forward
        "H": u, "C_SEQ": "*fp32" if v.save_c else u, "C_LAST": p,
        # backward
        "GRAD_H": u, "GRAD_C_LAST": p, "GRAD_U": u, "GRAD_X": x, "GRAD_C0": p, "GRAD_PARAMS": "*fp32",
    }
    constants = {"K": v.K, "HAS_PAD": v.has_pad, "USE_TANH": v.use_tanh, "HAS_C0": v.has_c0, "BLOCK": v.block,
                 "STAGES": v.stages}
    if v.kernel == "forward":
        constants["SAVE_C"] = v.save_c
    else:
        constants["HAS_GRAD_C"] = v.has_c0  # the carried state: given and its gradient used, or neither
    if v.dirs == 1:
        constants["DIRS"] = 1
    if v.seq_len_one:
        constants["L"] = 1
    return types, constants


def compile_jit(fn, types: dict, constants: dict, arch: int, num_warps: int, num_stages: int,
                divisible: tuple = ("D",)):
    """``fn`` (a ``@triton.jit`` function) compiled for ``sm_<arch>`` as the JIT would on that GPU:
    arguments named in ``constants`` become constexprs, the others take their ``types``; pointers
    (torch allocations are 16-byte aligned) and the integers named in ``divisible`` get the JIT's
    multiple-of-16 specialization. Returns the compiled kernel (``.asm``: ttir ... ptx, cubin)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("triton_kernels.aot cannot run under TRITON_INTERPRET=1: unset it")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constants:
            signature[name] = "constexpr"
            constexprs[(i,)] = constants[name]
            continue
        signature[name] = types[name]
        if types[name].startswith("*") or name in divisible:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def _cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def resource_usage(cubin: bytes) -> dict:
    """Registers, spill (local) bytes and static shared memory of a cubin, read by cuobjdump."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if match is None:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{text}")
    reg, stack, shared, local = map(int, match.groups())
    return {"registers": reg, "stack_bytes": stack, "shared_bytes": shared, "spill_bytes": local}


def ptx_stats(ptx: str) -> dict:
    """What the PTX does with memory: global loads by width, asynchronous copies (the software
    pipeline), global stores."""
    loads = re.findall(r"ld\.global(?:\.\w+)*?(?:\.v(\d))?\.(?:b|u|f|s)(\d+)", ptx)
    by_width: dict[str, int] = {}
    for vec, bits in loads:
        width = int(vec or 1) * int(bits)
        by_width[str(width)] = by_width.get(str(width), 0) + 1
    return {
        "ld_global": len(loads),
        "ld_global_by_bits": by_width,
        "cp_async": len(re.findall(r"cp\.async\.(?:ca|cg)", ptx)),
        "st_global": len(re.findall(r"st\.global", ptx)),
    }


@dataclass
class Result:
    variant: str
    arch: int
    seconds: float
    ok: bool
    error: str = ""
    usage: dict = field(default_factory=dict)
    ptx: dict = field(default_factory=dict)


def compile_variant(v: Variant, arch: int, keep_asm: bool = False):
    """Compile ``v`` for ``sm_<arch>``; returns (Result, asm dict or None)."""
    from triton_kernels import sru

    kernel = sru._sru_forward_kernel if v.kernel == "forward" else sru._sru_backward_kernel
    types, constants = _signature(v)
    start = time.perf_counter()
    try:
        # the autotuner wraps the JIT function
        compiled = compile_jit(kernel.fn, types, constants, arch, v.num_warps, v.stages,
                               divisible=("D",) if v.d_div16 else ())
    except Exception as exc:  # noqa: BLE001 - reported per variant
        return Result(v.name, arch, time.perf_counter() - start, False, f"{type(exc).__name__}: {exc}"[:2000]), None
    result = Result(v.name, arch, time.perf_counter() - start, True, usage=resource_usage(compiled.asm["cubin"]),
                    ptx=ptx_stats(compiled.asm["ptx"]))
    return result, (dict(compiled.asm) if keep_asm else None)


def _work(args):
    v, arch = args
    return asdict(compile_variant(v, arch)[0])


def compile_all(archs=(80, 90), all_configs: bool = False, jobs: int = 1) -> list[dict]:
    tasks = [(v, a) for a in archs for v in variants(all_configs)]
    if jobs <= 1:
        return [_work(t) for t in tasks]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_work, tasks, chunksize=4))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--all-configs", action="store_true")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import triton

    results = compile_all(args.arch, args.all_configs, args.jobs)
    failed = [r for r in results if not r["ok"]]
    worst = max((r for r in results if r["ok"]), key=lambda r: r["usage"]["registers"], default=None)
    summary = {"triton": triton.__version__, "variants": len(results), "failed": len(failed),
               "max_registers": worst["usage"]["registers"] if worst else None,
               "spilling": [r["variant"] for r in results if r["ok"] and r["usage"]["spill_bytes"]]}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "results": results}, indent=1))
    print(json.dumps(summary))
    for r in failed:
        print(f"FAILED {r['variant']} sm_{r['arch']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
