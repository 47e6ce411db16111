"""Framework tax: `python train.py` against a plain PyTorch loop over the same modules.

    python benchmarks/framework_tax.py --data-root /work/shared/data/ptb [--models lstm lightrnn]
        [--steps 300] [--warmup 50] [--repeats 3] [--threads N] [--full-epochs 0]

For each model, the two arms run alternately, ``--repeats`` times each, in fresh processes:

- ``ours``: ``python train.py model=<m> data=ptb ... trainer.max_epochs=1
  trainer.limit_train_batches=<steps>`` with every default callback (checkpoint, throughput,
  progress bar, reallocation, model summary) and the CSV logger, plus a callback that records the
  time at each training batch end;
- ``plain``: ``benchmarks/plain_loop.py`` over the same config (same modules, data stream,
  optimizer, seed);
- ``plain_keep_freed_memory``: the same plain loop with glibc's malloc set as ``train.py``'s
  ``HostMemory`` callback sets it (what is left of the tax once the allocator is alike).

Tokens per second are taken over the steps after ``--warmup`` (steady state: no start-up, no
validation, no checkpoint), wall clock and the process's CPU time; the ratio is ours / plain of
the medians. The first repeat of each arm also validates on the whole valid split: with the same
seed both arms must give the same validation perplexity. The setting is the pytorch/examples
``word_language_model`` one: 2x200 LSTM (LightRNN: the same core), dropout 0.2, SGD lr 20,
clip 0.25, batch 20 x 35. ``--full-epochs N`` adds one run of each arm over N whole epochs (the
perplexity check at full quality; slow).

Writes benchmarks/results/framework_tax.json and .png (``framework_tax_threads<N>`` with ``--threads``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
from common import ROOT, write_result

SETTING = ["model.embedding_size=200", "model.hidden_size=200", "model.num_layers=2", "model.dropout=0.2",
           "model.optimizer._target_=torch.optim.SGD", "model.optimizer.lr=20", "trainer.gradient_clip_val=0.25",
           "data.batch_size=20", "data.bptt=35", "data.eval_batch_size=10"]


class StepTimer(L.Callback):
    """Wall time, CPU time and page faults at every training batch end, written as JSON when training ends."""

    def __init__(self, path: str):
        self.path, self.times = path, {"wall": [], "cpu": [], "faults": []}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times["wall"].append(time.perf_counter())
        self.times["cpu"].append(time.process_time())
        self.times["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.path).write_text(json.dumps(self.times))


def rates(wall: list[float], cpu: list[float], faults: list[int], warmup: int, tokens_per_step: int) -> dict:
    """Tokens per second between the end of step ``warmup`` and the end of the last step."""
    steps = len(wall) - warmup
    step_ms = sorted(1000 * (b - a) for a, b in zip(wall[warmup - 1:], wall[warmup:]))
    return {"timed_steps": steps, "page_faults_per_step": (faults[-1] - faults[warmup - 1]) / steps,
            # robust to another process's bursts on a shared machine (and blind to our periodic work)
            "median_step_ms": step_ms[len(step_ms) // 2], "load_average_1min": os.getloadavg()[0],
            "ms_per_step": 1000 * (wall[-1] - wall[warmup - 1]) / steps,
            "tokens_per_sec": tokens_per_step * steps / (wall[-1] - wall[warmup - 1]),
            "cpu_ms_per_step": 1000 * (cpu[-1] - cpu[warmup - 1]) / steps,
            "tokens_per_cpu_sec": tokens_per_step * steps / (cpu[-1] - cpu[warmup - 1])}


def overrides(model: str, data_root: str, work: Path) -> list[str]:
    return [f"model={model}", "data=ptb", f"data.root={data_root}", f"paths.root_dir={work}", *SETTING]


def env(threads: int | None) -> dict:
    e = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
         "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    if threads:
        e["OMP_NUM_THREADS"] = str(threads)
    return e


def run_ours(model: str, args, work: Path, steps: int | None, epochs: int, validate: bool) -> dict:
    run_dir = work / f"ours_{model}_{time.monotonic_ns()}"
    times = run_dir.with_suffix(".times.json")
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides(model, args.data_root, work),
           "logger=csv", "test=false", f"trainer.max_epochs={epochs}", f"hydra.run.dir={run_dir}",
           "+callbacks.step_timer._target_=framework_tax.StepTimer", f"+callbacks.step_timer.path={times}"]
    if steps is not None:
        cmd.append(f"trainer.limit_train_batches={steps}")
    if not validate:
        cmd += ["trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"]  # one window: no perplexity
    proc = subprocess.run(cmd, cwd=work, env=env(args.threads), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"ours failed:\n{proc.stderr[-4000:]}")
    t = json.loads(times.read_text())
    out = rates(t["wall"], t["cpu"], t["faults"], args.warmup, 20 * 35)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if validate:
        out["val_ppl"] = metrics["val/ppl"]
    out["train_loss"] = metrics.get("train/loss")
    return out


def run_plain(model: str, args, work: Path, steps: int | None, epochs: int, validate: bool,
              keep_freed_memory: bool = False) -> dict:
    result = work / f"plain_{model}_{time.monotonic_ns()}.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "plain_loop.py"), *overrides(model, args.data_root, work),
           f"epochs={epochs}", f"out={result}", f"validate={str(validate).lower()}",
           f"keep_freed_memory={str(keep_freed_memory).lower()}"]
    if steps is not None:
        cmd.append(f"steps={steps}")
    proc = subprocess.run(cmd, cwd=work, env=env(args.threads), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"plain failed:\n{proc.stderr[-4000:]}")
    r = json.loads(result.read_text())
    out = rates(r["wall"], r["cpu"], r["faults"], args.warmup, 20 * 35)
    if validate:
        out["val_ppl"] = r["val_ppl"]
    out["train_loss"] = r["train_loss"]
    return out


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True, help="folder with ptb.{train,valid,test}.txt")
    ap.add_argument("--models", nargs="+", default=["lstm", "lightrnn"])
    ap.add_argument("--steps", type=int, default=300, help="training windows per run")
    ap.add_argument("--warmup", type=int, default=50, help="steps left out of the timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of both arms (default: torch's)")
    ap.add_argument("--full-epochs", type=int, default=0, help="also train each arm this many whole epochs")
    ap.add_argument("--no-malloc-arm", dest="malloc_arm", action="store_false",
                    help="leave out the third arm: the plain loop with train.py's allocator setting")
    args = ap.parse_args()
    if args.warmup < 1 or args.steps <= args.warmup:
        sys.exit("need 1 <= --warmup < --steps")
    result: dict = {"setting": SETTING, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
                    "threads": args.threads, "load_average_start": os.getloadavg(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for model in args.models:
            arms = {"ours": run_ours, "plain": run_plain,
                    "plain_keep_freed_memory": functools.partial(run_plain, keep_freed_memory=True)}
            if not args.malloc_arm:
                del arms["plain_keep_freed_memory"]
            runs: dict[str, list[dict]] = {arm: [] for arm in arms}
            for i in range(args.repeats):
                # rotate which arm goes first, so a drift in the machine's load hits all alike
                order = list(arms)[i % len(arms):] + list(arms)[:i % len(arms)]
                for arm in order:
                    r = arms[arm](model, args, work, args.steps, 1, validate=(i == 0))
                    runs[arm].append(r)
                    print(f"{model} {arm} #{i}: {json.dumps(r)}", flush=True)
            row = {arm: {"runs": rs, "median_tokens_per_sec": median(rs, "tokens_per_sec"),
                         "median_ms_per_step": median(rs, "ms_per_step"),
                         "median_tokens_per_cpu_sec": median(rs, "tokens_per_cpu_sec"),
                         "median_page_faults_per_step": median(rs, "page_faults_per_step"),
                         "val_ppl": rs[0].get("val_ppl")} for arm, rs in runs.items()}
            row["ratio_tokens_per_sec"] = row["ours"]["median_tokens_per_sec"] / row["plain"]["median_tokens_per_sec"]
            row["ratio_tokens_per_cpu_sec"] = (row["ours"]["median_tokens_per_cpu_sec"]
                                               / row["plain"]["median_tokens_per_cpu_sec"])
            row["ratio_median_step"] = median(runs["plain"], "median_step_ms") / median(runs["ours"], "median_step_ms")
            if "plain_keep_freed_memory" in row:
                same = row["plain_keep_freed_memory"]
                row["ratio_to_plain_keep_freed_memory"] = {
                    "tokens_per_sec": row["ours"]["median_tokens_per_sec"] / same["median_tokens_per_sec"],
                    "tokens_per_cpu_sec": row["ours"]["median_tokens_per_cpu_sec"] / same["median_tokens_per_cpu_sec"]}
            if args.full_epochs:
                row["full"] = {arm: fn(model, args, work, None, args.full_epochs, validate=True)
                               for arm, fn in (("ours", run_ours), ("plain", run_plain))}
            result["models"][model] = row
            print(f"{model}: ours/plain tokens/s {row['ratio_tokens_per_sec']:.3f} (wall), "
                  f"{row['ratio_tokens_per_cpu_sec']:.3f} (CPU time), {row['ratio_median_step']:.3f} (median steps); val/ppl ours {row['ours']['val_ppl']:.3f} "
                  f"plain {row['plain']['val_ppl']:.3f}; against the plain loop with the same allocator setting: "
                  f"{row.get('ratio_to_plain_keep_freed_memory')}", flush=True)
    result["load_average_end"] = os.getloadavg()
    name = "framework_tax" if args.threads is None else f"framework_tax_threads{args.threads}"
    write_result(name, result, plot=lambda plt: plot(plt, result))


def plot(plt, result: dict):
    models = list(result["models"])
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for k, (key, label) in enumerate((("tokens_per_sec", "tokens/s (wall)"), ("tokens_per_cpu_sec", "tokens / CPU s"))):
        arms = [a for a in ("ours", "plain", "plain_keep_freed_memory") if a in result["models"][models[0]]]
        width = 0.8 / len(arms)
        for j, arm in enumerate(arms):
            xs = [i + (j - (len(arms) - 1) / 2) * width for i in range(len(models))]
            ys = [result["models"][m][arm][f"median_{key}"] for m in models]
            ax[k].bar(xs, ys, width=width, label=arm)
            for m, x in zip(models, xs):
                ax[k].scatter([x] * len(result["models"][m][arm]["runs"]),
                              [r[key] for r in result["models"][m][arm]["runs"]], color="k", s=8, zorder=3)
        ax[k].set_xticks(range(len(models)), [f"{m}\nratio {result['models'][m]['ratio_' + key]:.3f}"
                                              for m in models])
        ax[k].set_ylabel(label)
        ax[k].legend()
    fig.suptitle("train.py (ours) vs a plain PyTorch loop, PTB 2x200, batch 20x35 (medians, dots: runs)")
    return fig


if __name__ == "__main__":
    main()
