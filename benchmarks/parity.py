"""LightRNN against the full softmax and the adaptive softmax at matched budgets (PTB, WikiText-2).

    python benchmarks/parity.py --ptb ../shared/data/ptb --wikitext2 ../shared/data/wikitext-2
    python benchmarks/parity.py ... --stages select ptb      # only some stages (the others kept from the JSON)
    python benchmarks/parity.py --plot-only                  # redraw parity_*.png from the JSON

Three stages, every run a real ``python train.py`` with the same 2 x 256 LSTM core (embedding 256,
dropout 0.2, batch 20 x 35, Adam with ReduceLROnPlateau on val/loss and no final-epoch decay, seed 1)
for ``lightrnn``, ``lstm`` (full softmax) and ``adaptive``:

1. ``select``: each model's learning rate, chosen on PTB *validation* perplexity after
   ``--select-epochs`` epochs from ``--lrs`` (never on test)  -> results/parity_lr.json
2. ``ptb``: each model at its chosen lr for ``--epochs`` epochs, val/ppl after every epoch against
   the run's wall time                                          -> results/parity_ptb.json
3. ``wikitext2``: each model at its PTB-chosen lr for the same wall-clock budget (``--minutes``,
   ``trainer.max_time``), validated every ``--val-every`` training batches (whole validation set);
   the budget counts everything a user waits for (data, validation, checkpoints)
                                                                -> results/parity_wikitext2.json

Runs go ``--jobs`` at a time, each with one torch thread (``OMP_NUM_THREADS=1``), so two runs on a
2-core machine do not share a core; a stage starts a model as soon as its lr is chosen. Wall times
are stamped by this script as the run prints each validation line (seconds since the run started).
Results are written after every finished run, so an interrupted benchmark keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from omegaconf import OmegaConf

from common import RESULTS, ROOT, draw, write_result

MODELS = ("lightrnn", "lstm", "adaptive")
# the recorded runs predate the final-epoch decay of the model configs' scheduler: they ran
# ReduceLROnPlateau alone, which final_factor=1.0 gives (the same for every model)
CORE = ["model.scheduler.final_factor=1.0",
        "model.num_layers=2", "model.hidden_size=256", "model.embedding_size=256", "model.dropout=0.2",
        "data.batch_size=20", "data.bptt=35", "seed=1", "logger=csv", "callbacks.dashboard.pictures=false"]
VALIDATION = re.compile(r"^epoch (\d+) validation .*val/ppl=([0-9.e+]+)")
EPOCH_END = re.compile(r"^epoch (\d+) (\d+)/(\d+) +100% (\d+)s")


def run(name: str, overrides: list[str]) -> dict:
    """One ``train.py`` run; stdout is read as it comes so each validation gets its wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "train.py"), f"paths.root_dir={tmp}",
               f"paths.cache_dir={ROOT / '.cache'}", *CORE, *overrides]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        curve, train_s, tail = [], {}, []
        for line in proc.stdout:
            now = time.perf_counter() - t0
            tail = (tail + [line])[-40:]
            if m := VALIDATION.match(line):
                curve.append({"seconds": round(now, 1), "epoch": int(m[1]), "val_ppl": float(m[2])})
            elif m := EPOCH_END.match(line):
                train_s[int(m[1])] = int(m[4])
        proc.wait()
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"name": name, "overrides": overrides, "error": "".join(tail)[-3000:]}
        run_dir = next((Path(tmp) / "logs" / "train" / "runs").iterdir())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        optimization = {k: OmegaConf.to_container(config.model[k], resolve=True) for k in ("optimizer", "scheduler")}
    print(f"[{name}] done in {wall:.0f} s: val/ppl {metrics.get('val/ppl')}", flush=True)
    return {"name": name, "overrides": overrides, "wall_seconds": round(wall, 1), "val_curve": curve,
            "train_seconds_per_epoch": [train_s[e] for e in sorted(train_s)],
            **optimization,
            "metrics": {k: v for k, v in metrics.items() if not k.startswith("ckpt/")}}


class Results:
    """The three JSON files, rewritten after every finished run."""

    def __init__(self, args):
        self.lock = threading.Lock()
        self.args = args
        self.data = {}
        for stage in ("lr", "ptb", "wikitext2"):
            path = RESULTS / f"parity_{stage}.json"
            old = json.loads(path.read_text()) if path.exists() else {}
            self.data[stage] = {"runs": old.get("runs", {})}

    def put(self, stage: str, key: str, result: dict, **extra) -> None:
        with self.lock:
            self.data[stage]["runs"][key] = result
            self.data[stage].update(extra)
            write_result(f"parity_{stage}", {**self.data[stage], "core": CORE,
                                             "load_average_now": [round(x, 2) for x in os.getloadavg()]},
                         plot=lambda plt, s=stage: PLOTS[s](plt, self.data[s]))


def best_lr(runs: dict, model: str) -> float | None:
    tried = [(r["metrics"]["val/ppl"], r["lr"]) for r in runs.values()
             if r.get("model") == model and "metrics" in r and "val/ppl" in r["metrics"]]
    return min(tried)[1] if tried else None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ptb", default=str(ROOT.parent / "shared" / "data" / "ptb"))
    p.add_argument("--wikitext2", default=str(ROOT.parent / "shared" / "data" / "wikitext-2"))
    p.add_argument("--models", nargs="+", default=["lstm", "lightrnn", "adaptive"],
                   help="the first one's runs are started first (the longest)")
    p.add_argument("--lrs", nargs="+", type=float, default=[0.001, 0.003, 0.01])
    p.add_argument("--select-epochs", type=int, default=1)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--minutes", type=float, default=12)
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--stages", nargs="+", default=["select", "ptb", "wikitext2"])
    p.add_argument("--rerun", action="store_true", help="run again what the JSON already holds")
    p.add_argument("--extra", nargs="*", default=[], help="overrides added to every run (e.g. a quick check)")
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--table", nargs="?", const="all", choices=["all", "ptb", "wikitext2"],
                   help="print the README's tables (or the one of a stage) from the JSON, run nothing")
    args = p.parse_args()
    if args.table:
        print(tables(("ptb", "wikitext2") if args.table == "all" else (args.table,)))
        return
    if args.plot_only:
        for stage in ("lr", "ptb", "wikitext2"):
            if (RESULTS / f"parity_{stage}.json").exists():
                draw(f"parity_{stage}", PLOTS[stage])
        return
    results = Results(args)
    ptb = ["data=ptb", f"data.root={args.ptb}"]
    done = {(stage, key) for stage in results.data for key, r in results.data[stage]["runs"].items()
            if "error" not in r and not args.rerun}
    select, long, wiki = {}, {}, {}  # (stage, key, record, overrides) per model; a job waits on its model's lr
    for model in args.models:
        select[model] = [("lr", f"{model}_lr{lr:g}", {"model": model, "lr": lr},
                          [f"model={model}", *ptb, f"trainer.max_epochs={args.select_epochs}",
                           f"model.optimizer.lr={lr}"]) for lr in args.lrs] if "select" in args.stages else []
        long[model] = [("ptb", model, {"model": model}, [f"model={model}", *ptb, f"trainer.max_epochs={args.epochs}"])] \
            if "ptb" in args.stages else []
        budget = int(args.minutes * 60)
        wiki[model] = [("wikitext2", model, {"model": model},
                        [f"model={model}", "data=wikitext2", f"data.root={args.wikitext2}", "trainer.max_epochs=1000",
                         f"trainer.max_time='00:{budget // 3600:02d}:{budget // 60 % 60:02d}:{budget % 60:02d}'",
                         f"trainer.val_check_interval={args.val_every}",
                         "trainer.check_val_every_n_epoch=null"])] if "wikitext2" in args.stages else []
    # packing on few cores: the first model's selection and its PTB run go first (the full softmax's is
    # the longest run), then the others' selection, the equal-time WikiText-2 runs, the remaining PTB runs
    first, rest = args.models[0], args.models[1:]
    order = [*select[first], *long[first], *(j for m in rest for j in select[m]), *(j for m in args.models for j in wiki[m]),
             *(j for m in rest for j in long[m])]
    jobs = [j for j in order if (j[0], j[1]) not in done]
    for j in order:
        if (j[0], j[1]) in done:
            print(f"[{j[0]}:{j[1]}] kept from the existing JSON (--rerun runs it again)", flush=True)
    pending_lr = {m: sum(1 for j in jobs if j[0] == "lr" and j[2]["model"] == m) for m in args.models}
    cond = threading.Condition()

    def take():
        with cond:
            while True:
                ready = [j for j in jobs if j[0] == "lr" or pending_lr.get(j[2]["model"], 0) == 0]
                if ready:
                    jobs.remove(ready[0])
                    return ready[0]
                if not jobs:
                    return None
                cond.wait()

    def worker():
        while (job := take()) is not None:
            stage, key, record, overrides = job
            if stage != "lr":
                lr = best_lr(results.data["lr"]["runs"], record["model"])
                if lr is None:
                    print(f"[{key}] no learning rate chosen for {record['model']}: skipped", flush=True)
                    continue
                overrides = [*overrides, f"model.optimizer.lr={lr}"]
                record = {**record, "lr": lr}
            print(f"[{stage}:{key}] start: {' '.join(overrides)}", flush=True)
            out = {**record, **run(key, [*overrides, *args.extra])}
            extra = {"budget_seconds": int(args.minutes * 60), "val_every_batches": args.val_every} \
                if stage == "wikitext2" else {}
            results.put(stage, key, out, **extra)
            with cond:
                if stage == "lr":
                    pending_lr[record["model"]] -= 1
                cond.notify_all()

    threads = [threading.Thread(target=worker) for _ in range(args.jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def best_within(curve: list[dict], seconds: float) -> tuple[float, int]:
    """The best val/ppl among the validations that ended within ``seconds``, and how many there were."""
    inside = [c["val_ppl"] for c in curve if c["seconds"] <= seconds]
    return (min(inside) if inside else float("nan")), len(inside)


def tables(stages=("ptb", "wikitext2")) -> str:
    """Markdown tables (the README's) from results/parity_*.json; one title line each when there are several."""
    def load(stage):
        path = RESULTS / f"parity_{stage}.json"
        return json.loads(path.read_text()) if path.exists() else {"runs": {}}

    lr_runs, out = load("lr")["runs"], []
    nan = float("nan")
    for stage in stages:
        result = load(stage)
        runs, budget = result["runs"], result.get("budget_seconds")
        base = runs.get("lstm", {})
        if len(stages) > 1:
            out.append(f"\n{stage}" + (f" (budget {budget / 60:g} min)" if budget else "") + "\n")
        if budget:
            out.append("| model | lr | best val/ppl of the validations ended within the budget (count) | ÷ lstm | "
                       "val/ppl, test/ppl of the best checkpoint at the end | params/embedding | ÷ | train tokens/s |")
            out.append("|---|---|---|---|---|---|---|---|")
        else:
            out.append("| model | lr (PTB val/ppl after 1 epoch at each lr) | best val/ppl (epoch) | ÷ lstm | test/ppl | "
                       "params/embedding | ÷ | train tokens/s | wall |")
            out.append("|---|---|---|---|---|---|---|---|---|")
        for model in MODELS:
            r = runs.get(model)
            if not r or "metrics" not in r:
                continue
            m, bm = r["metrics"], base.get("metrics", {})
            emb = bm.get("params/embedding", nan) / m["params/embedding"]
            if budget:
                mine, n = best_within(r["val_curve"], budget)
                theirs = best_within(base.get("val_curve", []), budget)[0]
                out.append(f"| `{model}` | {r['lr']:g} | **{mine:.1f}** ({n}) | {mine / theirs:.3f} | "
                           f"{m['val/ppl']:.1f}, {m.get('test/ppl', nan):.1f} | {m['params/embedding']:,} | {emb:.1f}x | "
                           f"{m.get('train/tokens_per_sec', 0):,.0f} |")
                continue
            tried = ", ".join(f"{x['lr']:g}: {x['metrics']['val/ppl']:.1f}" for x in
                              sorted(lr_runs.values(), key=lambda x: x["lr"]) if x.get("model") == model and "metrics" in x)
            curve = [c["val_ppl"] for c in r["val_curve"]]
            epoch = curve.index(min(curve)) + 1 if curve else None
            ratio = m["val/ppl"] / bm["val/ppl"] if bm else nan
            out.append(f"| `{model}` | **{r['lr']:g}** ({tried}) | **{m['val/ppl']:.1f}** ({epoch}) | {ratio:.3f} | "
                       f"{m.get('test/ppl', nan):.1f} | {m['params/embedding']:,} | {emb:.1f}x | "
                       f"{m.get('train/tokens_per_sec', 0):,.0f} | {r['wall_seconds'] / 60:.1f} min |")
    return "\n".join(out)


COLORS = {"lightrnn": "tab:red", "lstm": "tab:blue", "adaptive": "tab:green"}


def plot_lr(plt, result):
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in MODELS:
        pts = sorted((r["lr"], r["metrics"]["val/ppl"]) for r in result["runs"].values()
                     if r.get("model") == model and "metrics" in r)
        if pts:
            ax.plot(*zip(*pts), "o-", color=COLORS[model], label=model)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Adam learning rate")
    ax.set_ylabel("PTB val/ppl after the selection epochs")
    ax.legend()
    return fig


def plot_curves(title):
    def plot(plt, result):
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        for key, r in result["runs"].items():
            curve = r.get("val_curve") or []
            if not curve:
                continue
            label = f"{key} (lr {r.get('lr')}, emb {r['metrics'].get('params/embedding', 0) / 1e6:.2f}M)"
            ax[0].plot(range(1, len(curve) + 1), [c["val_ppl"] for c in curve], "o-",
                       color=COLORS.get(key), label=label)
            ax[1].plot([c["seconds"] / 60 for c in curve], [c["val_ppl"] for c in curve], "o-",
                       color=COLORS.get(key), label=key)
        ax[0].set_xlabel("validation #" if "budget_seconds" in result else "epoch")
        ax[1].set_xlabel("wall time (min)")
        if result.get("budget_seconds"):
            ax[1].axvline(result["budget_seconds"] / 60, color="gray", linestyle="--", label="budget")
        for a in ax:
            a.set_ylabel("val/ppl")
            a.set_yscale("log")
            a.legend(fontsize=8)
        fig.suptitle(title)
        return fig
    return plot


PLOTS = {"lr": plot_lr, "ptb": plot_curves("PTB, 2x256 LSTM core"),
         "wikitext2": plot_curves("WikiText-2, equal wall time")}

if __name__ == "__main__":
    main()
