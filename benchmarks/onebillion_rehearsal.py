"""A One Billion Word rehearsal on this machine: every phase of a LightRNN run at V ~ 793K, under DDP.

    python benchmarks/onebillion_rehearsal.py [--tokens 50_000_000] [--steps 200] [--workdir DIR]
                                              [--save-statistics DIR]
    python benchmarks/onebillion_rehearsal.py --table     # the README's table, from the JSON

1. corpus: a One-Billion-Word-shaped corpus from the synthetic language (``onebillion_corpus.py``:
   ~793K words seen >= 3 times, Zipf counts, ~50 M training tokens); reused when present;
2. cache: vocabulary and token ids (``LMDataModule.prepare_data``), in a fresh process;
3. run 1 (``hardware=ddp_cpu``, 2 gloo processes, a small 1 x 32 LSTM core under the 891 x 891
   table): the context-clustered start over the whole corpus, then ``--steps/2`` steps with the
   reallocation statistics accumulating, and a mid-epoch checkpoint (``every_n_train_steps``)
   carrying them; the run dies when the next step starts, as a preempted job would;
4. run 2: resumed from that ``last.ckpt`` into the same run directory: the next window of the same
   epoch, the rest of the epoch, one real reallocation round at full V (statistics summed over both
   ranks, solved on rank 0 with the default move penalty), validation. ``--save-statistics DIR``:
   the round's summed statistics are also written there (``round_001.npz``, 11 GB of float64: the
   "real run" case of ``solver_scaling.py --real-dir``).

Each process writes its own events (``ResourceLog``: seconds and peak RSS after every phase); this
script gathers them with the round's metrics into benchmarks/results/onebillion_rehearsal.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, write_result

CACHE_CHILD = r"""
import json, resource, sys, time
from lrnn_lightning.data.datamodule import LMDataModule
from lrnn_lightning.data import TextDirCorpus
t = time.perf_counter()
dm = LMDataModule(corpus=TextDirCorpus(root=sys.argv[1]), cache_dir=sys.argv[2], min_count=3)
dm.prepare_data()
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "vocab_size": len(dm.vocab), "sizes": dm.sizes}))
"""


def run(cmd: list[str], log: Path, env: dict, expect_failure: bool = False) -> dict:
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    out = {"seconds": time.perf_counter() - t, "returncode": proc.returncode, "log": str(log)}
    if expect_failure:
        if "Interrupted: interrupted after global step" not in log.read_text():
            raise SystemExit(f"{cmd[1]} was expected to be interrupted; see {log}")
    elif proc.returncode != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"{cmd[1]} failed ({proc.returncode}); see {log}")
    return out


PHASES = {  # (run, event that ends the phase): what happened since the previous event
    ("run1", "fit_start"): "start, read the cache (fit start)",
    ("run1", "train_start"): "context-clustered start over the whole corpus (rank 0; rank 1 waits)",
    ("run1", "epoch_start"): "statistics allocated (epoch start)",
    ("run1", "checkpoint_save"): "steps + mid-epoch checkpoint with the summed statistics",
    ("run2", "fit_start"): "resume: start, read the cache",
    ("run2", "train_start"): "resume: load the checkpoint (memory-mapped), restore the statistics",
    ("run2", "reallocation_round"): "the other steps and the round (in-place sum onto rank 0, candidates, solve, broadcast)",
    ("run2", "validation_end"): "validation (20 windows)",
}


def table(result: dict) -> str:
    """The README's table and round line, from the JSON."""
    rows = ["| phase | rank 0: seconds / peak RSS in the phase | rank 1 |", "|---|---|---|"]
    runs = {"run1": "run1_until_mid_epoch_checkpoint", "run2": "run2_resumed_round_validation"}
    for (run, event), label in PHASES.items():
        cells = []
        for rank in ("rank0", "rank1"):
            ev = result["phases"][runs[run]]["ranks"][rank]["events"]
            i = next((k for k, e in enumerate(ev) if e["event"] == event), None)
            if i is None:
                cells.append("")
                continue
            dt = ev[i]["seconds"] - (ev[i - 1]["seconds"] if i else 0.0)
            cells.append(f"{dt:.0f} s / {ev[i]['phase_peak_mb'] / 1024:.1f} GB")
        rows.append(f"| {label} | {cells[0]} | {cells[1]} |")
    m = result["metrics"]
    ranks = result["phases"][runs["run2"]]["ranks"]
    same = len({json.dumps({k: v for k, v in e.items() if k.startswith("realloc_") and "seconds" not in k},
                           sort_keys=True)
                for r in ranks.values() for e in r["events"] if e["event"] == "reallocation_round"}) == 1
    rows.append("")
    rows.append(f"The round took {m['realloc/seconds']:.1f} s ({m['realloc/solve_seconds']:.1f} s of it the solver), "
                f"moved {m['realloc/moved_words']:,.0f} words, lowered the cost from {m['realloc/cost_before']:,.0f} "
                f"to {m['realloc/cost_after']:,.0f} nats (every word in its cheapest cell: "
                f"{m['realloc/lower_bound']:,.0f}; certified gap {100 * m['realloc/gap']:.1f}%); both ranks logged "
                f"{'the same' if same else 'different'} round metrics. The statistics took "
                f"{m['realloc/stats_mb']:,.0f} MB per process; val/ppl after the round {m['val/ppl']:.1f}.")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=50_000_000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--workdir", default=str(ROOT / ".cache" / "onebillion_rehearsal"))
    ap.add_argument("--save-statistics", default=None, help="folder for the round's summed statistics")
    ap.add_argument("--table", action="store_true", help="print the README's table from the JSON and exit")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads((ROOT / "benchmarks" / "results" / "onebillion_rehearsal.json").read_text())))
        return
    work = Path(args.workdir)
    corpus, cache, run_dir = work / "corpus", work / "cache", work / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    result: dict = {"tokens": args.tokens, "steps": args.steps, "phases": {}}

    # 1. corpus
    if not (corpus / "train.txt").exists():
        t = time.perf_counter()
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from onebillion_corpus import write_corpus

        info = write_corpus(corpus, args.tokens)
        result["phases"]["corpus"] = {"seconds": time.perf_counter() - t, "reused": False}
        result["corpus"] = {k: v for k, v in info.items() if k != "paths"}
    else:
        result["phases"]["corpus"] = {"reused": True}
    result["corpus_language"] = json.loads((corpus / "language.json").read_text())

    # 2. cache (a fresh process; a second call finds it)
    proc = subprocess.run([sys.executable, "-c", CACHE_CHILD, str(corpus), str(cache)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    result["phases"]["cache"] = json.loads(proc.stdout.strip().splitlines()[-1])

    # 3-4. the two halves of one DDP run, in a fresh run directory (a checkpoint left by an earlier
    # rehearsal would make Lightning write last-v1.ckpt beside it, and run 2 resume the old one)
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(work / "resources", ignore_errors=True)
    half = args.steps // 2
    base = [sys.executable, "train.py", "data=text_dir", f"data.root={corpus}", "data.min_count=3",
            f"paths.cache_dir={cache}", f"paths.root_dir={work}", "model=lightrnn", "model.embedding_size=32",
            "model.hidden_size=32", "model.num_layers=1", "data.batch_size=16", "data.bptt=20",
            "data.eval_batch_size=16", "hardware=ddp_cpu", "trainer.devices=2", "trainer.max_epochs=1",
            f"trainer.limit_train_batches={args.steps}", "trainer.limit_val_batches=20",
            "trainer.num_sanity_val_steps=0", "callbacks.reallocation.skip_last_epoch=false", "test=false",
            "logger=csv", f"callbacks.model_checkpoint.every_n_train_steps={half}", f"hydra.run.dir={run_dir}",
            "+callbacks.resources._target_=lrnn_lightning.callbacks.resources.ResourceLog"]
    # run 1 dies when the step after the mid-epoch checkpoint starts (tests/resume_helpers.InterruptAt:
    # an exception on both ranks, as a killed job: nothing after the checkpoint is written)
    interrupt = ["+callbacks.interrupt._target_=resume_helpers.InterruptAt", f"+callbacks.interrupt.step={half}"]
    env1 = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])}
    for name, extra in (("run1_until_mid_epoch_checkpoint", interrupt),
                        ("run2_resumed_round_validation", [f"ckpt_path={run_dir}/checkpoints/last.ckpt"] + (
                            [f"callbacks.reallocation.save_statistics={args.save_statistics}"]
                            if args.save_statistics else []))):
        res_dir = work / "resources" / name
        first = name.startswith("run1")
        out = run([*base, f"+callbacks.resources.dirpath={res_dir}", *extra], work / f"{name}.log",
                  env1 if first else env, expect_failure=first)
        out["ranks"] = {p.stem: json.loads(p.read_text()) for p in sorted(res_dir.glob("rank*.json"))}
        if name.startswith("run1"):
            ckpt = run_dir / "checkpoints" / "last.ckpt"
            out["checkpoint_mb"] = ckpt.stat().st_size / 2 ** 20
        result["phases"][name] = out
        print(json.dumps({name: {k: v for k, v in out.items() if k != "ranks"}}), flush=True)
    result["metrics"] = json.loads((run_dir / "metrics.json").read_text())
    csv = run_dir / "csv" / "metrics.csv"
    result["csv_rows"] = len(csv.read_text().splitlines()) - 1 if csv.exists() else None

    def plot(plt):
        fig, ax = plt.subplots(figsize=(9, 4))
        offset = 0.0
        for name in ("run1_until_mid_epoch_checkpoint", "run2_resumed_round_validation"):
            for rank, data in result["phases"][name]["ranks"].items():
                ev = data["events"]
                ax.step([offset + e["seconds"] for e in ev], [e["peak_rss_mb"] / 1024 for e in ev], where="post",
                        label=f"{name.split('_')[0]} {rank}")
                for e in ev:
                    if e["event"] in ("train_start", "reallocation_round", "checkpoint_save") and rank == "rank0":
                        ax.annotate(e["event"], (offset + e["seconds"], e["peak_rss_mb"] / 1024), fontsize=7)
            offset += result["phases"][name]["seconds"]
        ax.axhline(8, color="r", ls="--", lw=0.8)
        ax.set(xlabel="seconds", ylabel="peak RSS so far (GB)", title="One Billion Word rehearsal, V~793K, 2 DDP processes")
        ax.legend(fontsize=7)
        return fig

    write_result("onebillion_rehearsal", result, plot)


if __name__ == "__main__":
    main()
