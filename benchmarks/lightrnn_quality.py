"""Quality of LightRNN: reallocation against a frozen random table, and against the softmax LSTM.

    python benchmarks/lightrnn_quality.py synthetic   # default synthetic language, default run length
    python benchmarks/lightrnn_quality.py ptb [--ptb ../shared/data/ptb] [--epochs 2]
    python benchmarks/lightrnn_quality.py lightsru_synthetic | lightsru_ptb   # LightSRU vs LightRNN
    python benchmarks/lightrnn_quality.py start_purity   # realloc/row_purity of the starting tables, no training
    ... [--only NAME ...]   # rerun some configurations, keep the others from the existing JSON
    ... --plot-only         # redraw lightrnn_quality_<name>.png from the JSON, run nothing
    python benchmarks/lightrnn_quality.py --table NAME   # the README's table from the JSON, run nothing

Each configuration is one real ``python train.py`` run (same seed, same epochs); the script
collects their metrics.json into benchmarks/results/lightrnn_quality_<name>.json (and .png).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, draw, write_result


def run(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "train.py"), "logger=csv", f"paths.root_dir={tmp}",
               f"paths.cache_dir={ROOT / '.cache'}", *overrides]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            return {"overrides": overrides, "error": proc.stderr[-2000:]}
        run_dir = next((Path(tmp) / "logs" / "train" / "runs").iterdir())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        log = (run_dir / "train.log").read_text()
    moved = [int(l.split("moved ")[1].split(" ")[0]) for l in log.splitlines() if "reallocation round" in l]
    purity = [float(l.rsplit(": ", 1)[1]) for l in log.splitlines() if "row purity" in l]
    return {"overrides": overrides, "wall_seconds": round(wall, 1), "moved_words_per_round": moved,
            "row_purity_per_round": purity,
            "metrics": {k: v for k, v in metrics.items() if not k.startswith("ckpt/")}}


PAPER = ["callbacks.reallocation.initial_table=model", "callbacks.reallocation.move_penalty=0"]
FROZEN_RANDOM = ["callbacks.reallocation.initial_table=model", "callbacks.reallocation.max_rounds=0"]


def configurations(which: str, ptb: str, epochs: int) -> dict[str, list[str]]:
    # PTB: the same 2-layer 256-unit core for every model, the same epochs
    common = ["data=ptb", f"data.root={ptb}", f"trainer.max_epochs={epochs}", "model.num_layers=2",
              "model.hidden_size=256", "model.embedding_size=256"]
    if which == "synthetic":
        return {
            "lightrnn": ["model=lightrnn"],
            # the start before the class-bigram refinement: k-means on left contexts only
            "lightrnn_kmeans_start": ["model=lightrnn", "callbacks.reallocation.context_refine=0"],
            # the reference point: every true class in a row of its own from the start
            "lightrnn_true_classes": ["model=lightrnn", "callbacks.reallocation.initial_table=classes"],
            "lightrnn_paper_random_start": ["model=lightrnn", *PAPER],
            "lightrnn_frozen_random_table": ["model=lightrnn", *FROZEN_RANDOM],
        }
    if which == "ptb":
        # LightRNN's lr on PTB, chosen on validation from 0.002/0.003/0.005/0.01/0.02 (199-326 at the
        # others); the LSTM keeps its default 0.003 (0.005 gave 180.8 against 173.9)
        light = ["model=lightrnn", *common, "model.optimizer.lr=0.003"]
        return {
            "lightrnn": light,
            "lightrnn_paper_random_start": [*light, *PAPER],
            "lightrnn_frozen_random_table": [*light, *FROZEN_RANDOM],
            "softmax_lstm": ["model=lstm", *common],
        }
    if which == "lightsru_synthetic":
        return {"lightsru": ["model=lightsru"], "lightrnn": ["model=lightrnn"]}
    if which == "lightsru_ptb":
        return {"lightsru": ["model=lightsru", *common], "lightrnn": ["model=lightrnn", *common]}
    raise ValueError(which)


def start_purity() -> None:
    """``realloc/row_purity`` and seconds of each starting table on the default synthetic language."""
    import numpy as np
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from lrnn_lightning.allocation import row_purity, table_shape
    from lrnn_lightning.allocation.context import context_table

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=[f"paths.root_dir={ROOT}", f"paths.cache_dir={ROOT / '.cache'}"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    ids = np.asarray(dm.ids["train"])
    V = len(dm.vocab)
    R, C = table_shape(V)
    counts = np.bincount(ids, minlength=V)
    classes = dm.corpus.word_classes(dm.vocab.words)
    tables = {"random": lambda: np.random.default_rng(cfg.seed).permutation(R * C)[:V]}
    for n in (0, 1, 3, 10, 20):
        tables[f"context_refine_{n}"] = lambda n=n: context_table(ids, V, R, C, refine=n)
    results = {}
    for name, make in tables.items():
        t = time.perf_counter()
        cells = make()
        results[name] = {"seconds": round(time.perf_counter() - t, 2), "row_purity": row_purity(cells // C, classes, counts)}
        print(name, results[name], flush=True)
    write_result("lightrnn_start_purity", {"vocab_size": V, "table": [R, C], "tables": results})


def plot(plt, result: dict):
    runs = {name: r for name, r in result["runs"].items() if "metrics" in r}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    names = list(runs)
    x = range(len(names))
    for offset, key, colour in ((-0.2, "val/ppl", "tab:blue"), (0.2, "test/ppl", "tab:orange")):
        bars = ax.bar([i + offset for i in x], [runs[n]["metrics"].get(key, float("nan")) for n in names], 0.4,
                      label=key, color=colour)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    optimal = next((r["metrics"]["data/optimal_ppl"] for r in runs.values() if "data/optimal_ppl" in r["metrics"]),
                   None)
    if optimal:
        ax.axhline(optimal, color="k", ls="--", label=f"optimal {optimal:.1f}")
    ax.set_xticks(list(x), [n.replace("_", "\n", 1) for n in names], fontsize=8)
    ax.set_ylabel("perplexity")
    ax.set_title(result["command"].removeprefix("python benchmarks/"), fontsize=9)
    ax.legend(fontsize=8)
    moving = [n for n in names if runs[n].get("moved_words_per_round")]
    width = 0.8 / max(len(moving), 1)
    for j, n in enumerate(moving):
        moved = runs[n]["moved_words_per_round"]
        xs = [r + 1 - 0.4 + width * (j + 0.5) for r in range(len(moved))]
        bars = ax2.bar(xs, moved, width, label=n, color=f"C{j + 2}")
        ax2.bar_label(bars, fontsize=7)
    rounds = max((len(runs[n]["moved_words_per_round"]) for n in moving), default=0)
    ax2.set_xticks(range(1, rounds + 1))
    ax2.set_xlabel("reallocation round")
    ax2.set_ylabel("words moved")
    ax2.set_yscale("log")
    ax2.set_title("words moved per round (frozen table: none)", fontsize=9)
    if moving:
        ax2.legend(fontsize=8)
    return fig


LABELS = {
    "lightrnn": "LightRNN, context start, move penalty",
    "lightrnn_kmeans_start": "LightRNN, k-means-only context start (`context_refine=0`)",
    "lightrnn_true_classes": "LightRNN, true classes as rows (`initial_table=classes`)",
    "lightrnn_paper_random_start": "LightRNN, the paper's procedure (random start, plain matching)",
    "lightrnn_frozen_random_table": "LightRNN, frozen random table",
    "softmax_lstm": "full-softmax LSTM",
    "lightsru": "LightSRU (SRU core under the table)",
}
PURITY_LABELS = {
    "random": "random (the paper)",
    "context_refine_0": "context, k-means only (`context_refine=0`)",
    "context_refine_1": "context + 1 refinement iteration",
    "context_refine_3": "context + 3 refinement iterations",
    "context_refine_10": "context + 10 (`context_refine=10`, the default)",
    "context_refine_20": "context + 20",
}


def table(which: str) -> str:
    """The README's table of ``lightrnn_quality_<which>.json`` (``start_purity``: of the starting tables)."""
    if which == "start_purity":
        result = json.loads((RESULTS / "lightrnn_start_purity.json").read_text())
        out = ["| starting table | row purity | seconds |", "|---|---|---|"]
        for name, r in result["tables"].items():
            out.append(f"| {PURITY_LABELS.get(name, name)} | {r['row_purity']:.3f} | {r['seconds']:.1f} |")
        return "\n".join(out)
    result = json.loads((RESULTS / f"lightrnn_quality_{which}.json").read_text())
    runs = {name: r for name, r in result["runs"].items() if "metrics" in r}
    softmax = runs.get("softmax_lstm", {}).get("metrics", {}).get("params/embedding")
    out = ["| model | val/ppl | test/ppl | words moved per round | params/embedding |", "|---|---|---|---|---|"]
    for name, r in runs.items():
        m = r["metrics"]
        emb = f"{m['params/embedding']:,}"
        if softmax and name == "softmax_lstm":
            smallest = min(x["metrics"]["params/embedding"] for x in runs.values())
            emb += f" ({softmax / smallest:.0f}x)"
        moved = ", ".join(f"{n:,}" for n in r.get("moved_words_per_round", [])) or "none"
        if name == "softmax_lstm":
            moved = ""
        out.append(f"| {LABELS.get(name, name)} | {m['val/ppl']:.1f} | {m['test/ppl']:.1f} | {moved} | {emb} |")
    return "\n".join(out)


def main() -> None:
    if sys.argv[1:] == ["start_purity"]:
        return start_purity()
    if sys.argv[1:2] == ["--table"] and len(sys.argv) == 3:
        print(table(sys.argv[2]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=["synthetic", "ptb", "lightsru_synthetic", "lightsru_ptb"])
    ap.add_argument("--ptb", default=str(ROOT.parent / "shared" / "data" / "ptb"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None,
                    help="run only these configurations; the others are kept from the existing JSON")
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from the existing JSON, run nothing")
    args = ap.parse_args()
    if args.plot_only:
        draw(f"lightrnn_quality_{args.which}", plot)
        return
    configs = configurations(args.which, args.ptb, args.epochs)
    out = RESULTS / f"lightrnn_quality_{args.which}.json"
    previous = json.loads(out.read_text()).get("runs", {}) if args.only and out.exists() else {}
    results = {}
    for name, overrides in configs.items():
        if args.only is not None and name not in args.only and name in previous:
            results[name] = previous[name]
            continue
        results[name] = run(overrides)
        print(name, json.dumps(results[name]), flush=True)
    write_result(f"lightrnn_quality_{args.which}", {"omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                                                     "runs": results})
    draw(f"lightrnn_quality_{args.which}", plot)


if __name__ == "__main__":
    main()
