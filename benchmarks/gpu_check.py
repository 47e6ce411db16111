"""One command that checks a GPU machine: tests, kernels, training throughput, the reallocation round.

    python benchmarks/gpu_check.py [--quick]          # one CUDA GPU: <= 6 min (--quick: < 2 min)
    python benchmarks/gpu_check.py --device cpu       # the same code at tiny shapes on the CPU (smoke run)
    python benchmarks/gpu_check.py --table            # the README's GPU table, from gpu_check.json

Sections, in this order (the throughput first, so that a slow section cannot starve the README's
table), each recorded with its status (ok / failed / skipped), seconds, command and error; a section
that fails is recorded and the next one runs, and the JSON is rewritten after every section:

- ``throughput``: training tokens/s at the One Billion Word shape (2 x 1500 core, V = 793,471 words of
  the synthetic language with Zipf exponent 1.1, batch 128 x 20, bf16 autocast, Adam, clip 0.25) for
  ``lightrnn``, ``lightsru``, ``adaptive`` (cutoffs 2K/10K/50K/200K) and ``lstm`` (full softmax), each
  (a) through a plain PyTorch loop over the very modules, optimizer and CPU token windows
  (``BPTTWindows``) that ``train.py`` builds from the same config (pinned, non-blocking copies to the
  GPU), timed between two synchronisations after a warm-up, and (b) through ``train.py`` itself (a
  subprocess, ``hardware=gpu``): ``train/tokens_per_sec`` as logged every ``warmup`` steps, the first
  window left out. ``throughput.<model>.plain_loop`` / ``.train_py`` (tokens/s) and their ratio; the
  full run also times ``train.py model.compile=true`` for ``--compile-models``; ``--quick`` runs
  ``train.py`` for ``lightrnn`` only;
- ``cuda_tests``: ``pytest -m cuda`` (``--quick``: the host-sync test only);
- ``realloc_round``: the reallocation round on count-weighted Zipf costs at V = 793,471 (``--quick``:
  V = 136,912), statistics on the GPU, solver on the host (``solver_scaling.py``'s case runner);
- ``sru_speed``: ``benchmarks/sru_speed.py [--quick]`` (its own JSON beside this one);
- ``default_run``: ``benchmarks/default_run.py --name default_run_gpu logger=csv`` (not in ``--quick``).

The 6-minute budget is an estimate (the script has not run on a GPU yet): a section that would
start after ``--budget`` seconds is skipped and recorded so; rerun it alone with ``--sections NAME``
and ``--out`` elsewhere.

Writes benchmarks/results/gpu_check.json (device name, driver, versions, commands, per-section
status and seconds, ``throughput``) and .png; ``--out`` puts the JSON (and the other scripts' files)
elsewhere. ``--device cpu`` runs every section that needs no GPU at tiny shapes (the tests run it
into a temporary folder); its numbers are no GPU numbers and never go into the README's table.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("lightrnn", "lightsru", "adaptive", "lstm")
# in this order: the throughput (the README's table) first, so that a slow section cannot starve it
SECTIONS = ("throughput", "cuda_tests", "realloc_round", "sru_speed", "default_run")
NOT_MEASURED = "not measured yet"

# One Billion Word's shape on the synthetic language: 793,469 words + <eos> + <unk> = 793,471
OBW_DATA = ["data=synthetic", "data.corpus.num_words=793469", "data.corpus.zipf_exponent=1.1",
            "data.corpus.train_tokens=1000000", "data.corpus.valid_tokens=20000", "data.corpus.test_tokens=20000",
            "data.batch_size=128", "data.bptt=20", "data.eval_batch_size=128"]
OBW_MODEL = ["model.embedding_size=1500", "model.hidden_size=1500", "model.num_layers=2"]
TINY_DATA = ["data=synthetic", "data.corpus.num_words=2000", "data.corpus.num_classes=20",
             "data.corpus.zipf_exponent=1.1", "data.corpus.train_tokens=30000", "data.corpus.valid_tokens=2000",
             "data.corpus.test_tokens=2000", "data.batch_size=8", "data.bptt=10", "data.eval_batch_size=8"]
TINY_MODEL = ["model.embedding_size=32", "model.hidden_size=32", "model.num_layers=1"]
PER_MODEL = {"adaptive": {"cuda": ["model.cutoffs=[2000,10000,50000,200000]"], "cpu": []}}
# the context clustering before the first step is start-up, not throughput: both arms keep the head's table
COMMON = ["callbacks.reallocation.initial_table=model", "trainer.gradient_clip_val=0.25"]


# ---- the plan ---------------------------------------------------------------------------------------
def plan(device: str, quick: bool) -> dict:
    """Shapes, steps and per-section time limits for the device and mode."""
    if device == "cpu":
        return {"data": TINY_DATA, "model": TINY_MODEL, "hardware": "hardware=cpu", "bf16": False,
                "warmup": 5, "steps": {m: 10 for m in MODELS}, "realloc_V": 4096, "train_py_models": MODELS}
    steps = ({"lightrnn": 50, "lightsru": 50, "adaptive": 30, "lstm": 10} if quick
             else {"lightrnn": 200, "lightsru": 200, "adaptive": 100, "lstm": 30})
    return {"data": OBW_DATA, "model": OBW_MODEL, "hardware": "hardware=gpu", "bf16": True,
            "warmup": 10, "steps": steps, "realloc_V": 136912 if quick else 793471,
            # a train.py process at this shape takes ~20 s to start: --quick starts one
            "train_py_models": ("lightrnn",) if quick else MODELS}


def overrides(model: str, p: dict, device: str) -> list[str]:
    return [f"model={model}", *p["data"], *p["model"], *PER_MODEL.get(model, {}).get(device, []), *COMMON]


# ---- what the machine is --------------------------------------------------------------------------------
def machine(device: str) -> dict:
    import lightning
    import numpy
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
                "numpy": numpy.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    for name in ("triton", "scipy", "hydra-core", "omegaconf", "antlr4-python3-runtime", "wandb"):
        try:  # the installed version, without importing the package into this process
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    out = {"kind": device, "cpus": os.cpu_count(), "platform": platform.platform()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update({"name": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
                    "memory_gb": round(props.total_memory / 2 ** 30, 1), "count": torch.cuda.device_count()})
        try:
            out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            out["driver"] = None
    else:
        out.update({"name": platform.processor() or platform.machine(), "driver": None})
    return {"device": out, "versions": versions}


# ---- running things -------------------------------------------------------------------------------------
def env(results_dir: Path, device: str) -> dict:
    e = {**os.environ, "PYTHONUNBUFFERED": "1", "LRNN_RESULTS_DIR": str(results_dir),
         "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH"))
                                       if p)}
    e.setdefault("WANDB_MODE", "offline")
    if device == "cuda":
        e.pop("TRITON_INTERPRET", None)  # the kernels compiled, not interpreted
    return e


def run(cmd: list[str], timeout: float, environ: dict, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=environ, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=max(1.0, timeout))
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-3000:]}")
    return proc


def shown(cmd: list[str]) -> str:
    """A command as a user types it (paths under the repository relative to it)."""
    parts = ["python" if c == sys.executable else c for c in cmd]
    return " ".join(str(Path(c).relative_to(ROOT)) if c.startswith(str(ROOT) + os.sep) else c for c in parts)


# ---- sections --------------------------------------------------------------------------------------------
def cuda_tests(ctx: dict) -> dict:
    if ctx["device"] != "cuda":
        raise Skip("needs CUDA")
    targets = ["tests/test_cuda_sync.py"] if ctx["quick"] else ["tests"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *targets]
    ctx["section"]["command"] = shown(cmd)
    proc = subprocess.run(cmd, cwd=ROOT, env=ctx["env"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=ctx["remaining"]())
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", proc.stdout)}
    out = {"counts": counts, "tail": proc.stdout[-1500:]}
    if proc.returncode != 0:
        raise Failed(f"pytest exit {proc.returncode}: {counts}", out)
    return out


def sru_speed(ctx: dict) -> dict:
    if ctx["device"] != "cuda":
        raise Skip("needs CUDA (the CPU run is benchmarks/sru_speed.py itself)")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sru_speed.py"), *(["--quick"] if ctx["quick"] else [])]
    ctx["section"]["command"] = shown(cmd)
    run(cmd, ctx["remaining"](), ctx["env"])
    name = "sru_speed_gpu_quick.json" if ctx["quick"] else "sru_speed_gpu.json"
    return {"result": str(ctx["results_dir"] / name)}


def throughput(ctx: dict) -> dict:
    """Both arms for every model; a failing arm is recorded in its place and the others go on."""
    p, device, out = ctx["plan"], ctx["device"], ctx["result"].setdefault("throughput", {})
    failures = []
    for model in ctx["models"]:
        row = out.setdefault(model, {})
        steps = p["steps"][model]
        arms = [("plain_loop", lambda: plain_loop(model, ctx, steps))]
        if model in p["train_py_models"]:
            arms.append(("train_py", lambda: train_py(model, ctx, steps)))
        if model in ctx["compile_models"]:
            arms.append(("train_py_compiled", lambda: train_py(model, ctx, steps, ["model.compile=true"])))
        for arm, fn in arms:
            if ctx["remaining"]() < 5:
                row[f"{arm}_error"] = "skipped: time budget spent"
                failures.append(f"{model}/{arm}")
                continue
            try:
                detail = fn()
                row[arm] = detail["tokens_per_sec"]
                row[f"{arm}_detail"] = detail
            except Exception as e:  # noqa: BLE001 - recorded; the other arms and models go on
                row[f"{arm}_error"] = f"{type(e).__name__}: {e}"[-2000:]
                failures.append(f"{model}/{arm}")
            free_device_memory()  # train.py's process must not share the GPU with the plain loop's model
            if row.get("plain_loop") and row.get("train_py"):
                row["train_py_over_plain_loop"] = row["train_py"] / row["plain_loop"]
            print(f"throughput {model} {arm}: {row.get(arm, row.get(f'{arm}_error'))}", flush=True)
            ctx["save"]()
    if failures:
        raise Failed(f"failed arms: {', '.join(failures)}", {})
    return {"models": list(ctx["models"])}


def plain_loop(model: str, ctx: dict, steps: int) -> dict:
    """The training step of ``benchmarks/plain_loop.py`` on the device: same modules, optimizer, clipping
    and CPU windows as ``train.py``; pinned non-blocking copies; bf16 autocast on the GPU."""
    import torch
    from plain_loop import build, compose, detach

    p, device = ctx["plan"], torch.device(ctx["device"])
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as hardware=gpu sets it
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cfg = compose([*overrides(model, p, ctx["device"]), f"paths.root_dir={ctx['work']}"])
    net, data, optimizer = build(cfg)
    net.to(device).train()
    params = [q for group in optimizer.param_groups for q in group["params"]]
    clip = cfg.trainer.get("gradient_clip_val")
    windows = data.windows["train"]
    warmup = p["warmup"]
    if len(windows) < warmup + steps:
        raise RuntimeError(f"{len(windows)} training windows, need {warmup + steps}")
    state, tokens, t0 = None, 0, None
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        inputs, targets = windows[i]
        if device.type == "cuda":
            inputs = inputs.pin_memory().to(device, non_blocking=True)
            targets = targets.pin_memory().to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=p["bf16"]):
            nll, state = net(inputs, targets, state)
            loss = nll.float().sum() / targets.numel()
        state = detach(state)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        if i >= warmup:
            tokens += targets.numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out = {"tokens_per_sec": tokens / seconds, "steps": steps, "warmup": warmup, "seconds": seconds,
           "ms_per_step": 1000 * seconds / steps, "loss": float(loss), "vocab_size": len(data.vocab)}
    if device.type == "cuda":
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return out  # the caller frees the GPU memory once this frame (model, optimizer state) is gone


def free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_py(model: str, ctx: dict, steps: int, extra: tuple | list = ()) -> dict:
    """``train.py`` for ``warmup + steps`` windows; tokens/s as its TokensPerSecond callback logs them
    every ``warmup`` steps (the first window, with the first step's start-up, left out)."""
    p = ctx["plan"]
    warmup = p["warmup"]
    run_dir = ctx["work"] / f"train_{model}{'_'.join([''] + [e.split('=')[0] for e in extra])}"
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides(model, p, ctx["device"]), p["hardware"], *extra,
           "logger=csv", "test=false", "trainer.max_epochs=1", f"trainer.limit_train_batches={warmup + steps}",
           "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", f"trainer.log_every_n_steps={warmup}",
           "trainer.enable_model_summary=false", f"paths.root_dir={ctx['work']}", f"hydra.run.dir={run_dir}",
           # no checkpoint (lstm's would be 29 GB of weights and Adam state), no table picture, no sample
           "~callbacks.model_checkpoint", "trainer.enable_checkpointing=false", "callbacks.dashboard.pictures=false",
           "callbacks.dashboard.sample_words=0"]
    ctx["section"].setdefault("commands", []).append(shown(cmd))
    shutil.rmtree(run_dir, ignore_errors=True)  # the CSV logger would continue an earlier run's metrics.csv
    run(cmd, ctx["remaining"](), ctx["env"], cwd=ctx["work"])
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        logged = [(int(r["step"]), float(r["train/tokens_per_sec"])) for r in csv.DictReader(f)
                  if r.get("train/tokens_per_sec")]
    rates = [v for step, v in sorted(logged)[1:]]  # each value covers `warmup` equal steps
    if not rates:
        raise RuntimeError(f"no train/tokens_per_sec after the first window in {run_dir}/csv/metrics.csv")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"tokens_per_sec": len(rates) / sum(1 / r for r in rates),  # tokens over seconds of those windows
            "logged": [v for _, v in sorted(logged)], "steps": steps, "warmup": warmup,
            "epoch_tokens_per_sec": metrics.get("train/tokens_per_sec"), "train_loss": metrics.get("train/loss"),
            "params_total": metrics.get("params/total")}


def realloc_round(ctx: dict) -> dict:
    """``solver_scaling.py``'s case runner (its own process) on count-weighted Zipf costs, statistics on
    the device: the top-k candidates built there, the matching solved on the host."""
    from solver_scaling import CHILD

    V = ctx["plan"]["realloc_V"]
    spec = {"name": f"zipf-{V}", "kind": "zipf", "V": V, "method": "sparse", "mode": "streamed",
            "device": ctx["device"], "exact": False}
    cmd = [sys.executable, "-c", "<solver_scaling.CHILD>", json.dumps(spec)]
    ctx["section"]["command"] = shown(cmd).replace("<solver_scaling.CHILD>", "$(solver_scaling.CHILD)")
    proc = run([*cmd[:2], CHILD, cmd[3]], ctx["remaining"](), ctx["env"])
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: row[k] for k in ("V", "device", "round_seconds", "candidate_seconds", "solve_seconds", "total_seconds",
                                "gap", "peak_rss_mb") if k in row}


def default_run(ctx: dict) -> dict:
    if ctx["quick"]:
        raise Skip("not in --quick")
    if ctx["device"] == "cuda":
        name, extra = "default_run_gpu", ["logger=csv"]
    else:  # the CPU smoke run: a seconds-long job through the same script
        name, extra = "gpu_check_default_run_cpu", ["experiment=tiny", "logger=csv", "trainer.max_epochs=1"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "default_run.py"), "--name", name, *extra]
    ctx["section"]["command"] = shown(cmd)
    run(cmd, ctx["remaining"](), ctx["env"])
    result = json.loads((ctx["results_dir"] / f"{name}.json").read_text())
    return {"result": str(ctx["results_dir"] / f"{name}.json"), "wall_seconds": result["wall_seconds"],
            "val_ppl_over_optimal": result.get("val_ppl_over_optimal"),
            "test_ppl_over_optimal": result.get("test_ppl_over_optimal")}


class Skip(Exception):
    pass


class Failed(Exception):
    def __init__(self, message: str, detail: dict):
        super().__init__(message)
        self.detail = detail


# ---- the README table -------------------------------------------------------------------------------------
def table(result: dict | None) -> str:
    """The README's GPU table; "not measured yet" wherever no GPU measurement exists (a CPU smoke
    run's numbers never appear)."""
    measured = result is not None and result.get("device", {}).get("kind") == "cuda"
    tp = (result or {}).get("throughput", {}) if measured else {}

    def num(value) -> str:
        return f"{value:,.0f}" if isinstance(value, (int, float)) else NOT_MEASURED

    rows = ["| model (2 x 1500 core, V = 793,471, batch 128 x 20, bf16) | plain loop tokens/s | train.py tokens/s "
            "| train.py / plain loop | train.py, model.compile=true |", "|---|---|---|---|---|"]
    for model in MODELS:
        r = tp.get(model, {})
        ratio = f"{r['train_py_over_plain_loop']:.2f}" if r.get("train_py_over_plain_loop") else NOT_MEASURED
        rows.append(f"| `{model}` | {num(r.get('plain_loop'))} | {num(r.get('train_py'))} | {ratio} | "
                    f"{num(r.get('train_py_compiled'))} |")
    if measured:
        d, v = result["device"], result["versions"]
        secs = result.get("sections", {})
        rnd = secs.get("realloc_round", {})
        lines = [f"Measured on {d.get('name')} (driver {d.get('driver')}), torch {v.get('torch')}, Triton "
                 f"{v.get('triton')}, Lightning {v.get('lightning')}, {result.get('date', '?')[:10]}"
                 f"{' (--quick)' if result.get('quick') else ''}."]
        if rnd.get("status") == "ok":
            lines.append(f"Reallocation round at V = {rnd['V']:,} (statistics on the GPU): "
                         f"{rnd['round_seconds']:.1f} s, certified gap {100 * rnd['gap']:.1f}%.")
        tests = secs.get("cuda_tests", {}).get("counts")
        if tests:
            lines.append("CUDA tests: " + ", ".join(f"{n} {k}" for k, n in tests.items()) + ".")
        return "\n".join(rows) + "\n\n" + "\n".join(lines)
    return "\n".join(rows)


# ---- the PNG ------------------------------------------------------------------------------------------
def plot(plt, result: dict):
    tp = result.get("throughput", {})
    models = [m for m in MODELS if m in tp]
    arms = [a for a in ("plain_loop", "train_py", "train_py_compiled") if any(a in tp[m] for m in models)]
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(len(arms), 1)
    for j, arm in enumerate(arms):
        xs = [i + (j - (len(arms) - 1) / 2) * width for i in range(len(models))]
        ax[0].bar(xs, [tp[m].get(arm, 0) for m in models], width=width, label=arm)
    ax[0].set_xticks(range(len(models)), models)
    ax[0].set_yscale("log")
    ax[0].set_ylabel("training tokens/s")
    ax[0].legend(fontsize=8)
    secs = result.get("sections", {})
    names = list(secs)
    colors = {"ok": "tab:green", "failed": "tab:red", "skipped": "tab:gray"}
    ax[1].barh(names, [secs[n].get("seconds", 0) for n in names], color=[colors.get(secs[n]["status"]) for n in names])
    ax[1].set_xlabel("seconds (green ok, red failed, grey skipped)")
    d = result["device"]
    fig.suptitle(f"gpu_check on {d.get('name')} ({d['kind']}){' --quick' if result.get('quick') else ''}", fontsize=10)
    return fig


# ---- main ---------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, the host-sync test only, a smaller round, "
                    "no default run: under 2 minutes")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None,
                    help="cuda (default where there is one) or cpu: every section that needs no GPU, tiny shapes")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--compile-models", nargs="*", choices=MODELS, default=None,
                    help="also time train.py model.compile=true for these (default: lightrnn on the GPU, not "
                         "with --quick)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds; sections that would start later are skipped (default 360, --quick 120)")
    ap.add_argument("--out", type=Path, default=None, help="the JSON (default benchmarks/results/gpu_check.json; "
                    "--device cpu: gpu_check_cpu.json); the other scripts' files go beside it")
    ap.add_argument("--table", action="store_true", help="print the README's GPU table from the JSON and exit")
    args = ap.parse_args()
    if args.table:
        path = args.out or RESULTS / "gpu_check.json"
        print(table(json.loads(path.read_text()) if path.exists() else None))
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        sys.exit("no CUDA device here: `--device cpu` runs the same code at tiny shapes (a smoke run)")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    out = args.out or RESULTS / ("gpu_check.json" if device == "cuda" else "gpu_check_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    # run directories and the data cache (reused between runs): out of the results folder
    work = ROOT / ".cache" / "gpu_check" if args.out is None else out.parent / f".{out.stem}_work"
    work.mkdir(parents=True, exist_ok=True)
    budget = args.budget or (120.0 if args.quick else 360.0)
    start = time.perf_counter()
    compile_models = (args.compile_models if args.compile_models is not None
                      else [] if args.quick or device == "cpu" else ["lightrnn"])
    result = {"command": " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
              **machine(device), "load_average_start": os.getloadavg(), "budget_seconds": budget,
              "shape": {"data": plan(device, args.quick)["data"], "model": plan(device, args.quick)["model"],
                        "per_model": {m: v[device] for m, v in PER_MODEL.items()}, "common": COMMON,
                        "precision": "bf16-mixed" if device == "cuda" else "32-true"},
              "sections": {}}

    def save() -> None:
        from lrnn_lightning.atomic import write_text

        result["seconds"] = time.perf_counter() - start
        write_text(out, json.dumps(result, indent=2) + "\n")

    ctx = {"device": device, "quick": args.quick, "plan": plan(device, args.quick), "models": args.models,
           "compile_models": [m for m in compile_models if m in args.models], "result": result, "save": save,
           "work": work, "results_dir": out.parent, "env": env(out.parent, device),
           "remaining": lambda: budget - (time.perf_counter() - start)}
    sections = {"cuda_tests": cuda_tests, "sru_speed": sru_speed, "throughput": throughput,
                "realloc_round": realloc_round, "default_run": default_run}
    for name in SECTIONS:
        if name not in args.sections:
            continue
        record = result["sections"][name] = {"status": "running"}
        ctx["section"] = record
        t0 = time.perf_counter()
        try:
            if ctx["remaining"]() < 5:
                raise Skip("time budget spent")
            record.update(sections[name](ctx) or {})
            record["status"] = "ok"
        except Skip as e:
            record.update(status="skipped", reason=str(e))
        except Failed as e:
            record.update(status="failed", error=str(e), **e.detail)
        except Exception as e:  # noqa: BLE001 - recorded; the next section runs
            record.update(status="failed", error=f"{type(e).__name__}: {e}"[-3000:])
        record["seconds"] = time.perf_counter() - t0
        print(f"{name}: {record['status']} in {record['seconds']:.0f} s {record.get('error') or record.get('reason') or ''}",
              flush=True)
        save()
    result["load_average_end"] = os.getloadavg()
    save()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
    else:
        fig = plot(plt, result)
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=100)
        plt.close(fig)
    print(table(result) if device == "cuda" else json.dumps(result.get("throughput", {}), indent=1))
    failed = [n for n, s in result["sections"].items() if s["status"] == "failed"]
    if failed:
        sys.exit(f"failed sections: {', '.join(failed)} (see {out})")


if __name__ == "__main__":
    main()
