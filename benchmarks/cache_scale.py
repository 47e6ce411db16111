"""Build the token cache of a One-Billion-Word-shaped corpus and measure speed and peak memory.

    python benchmarks/cache_scale.py [--tokens 100_000_000 30_000_000 10_000_000] [--workdir DIR]

For each size: writes a corpus in the One Billion Word layout (training shards + heldout files,
Zipf-distributed words over a 2M-type lexicon, sentences of ~25 words), then, each in a fresh
process, (1) builds the cache from scratch (vocabulary counted in one pass with min_count=3, ids
appended to a .npy) and (2) loads it again. Records wall time, tokens per second and the peak
resident memory of each process. Writes benchmarks/results/cache_scale.json and .png.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import write_result
LAYOUT_TRAIN = "training-monolingual.tokenized.shuffled/news.en-{:05d}-of-00100"
LAYOUT_HELDOUT = "heldout-monolingual.tokenized.shuffled/news.en.heldout-{:05d}-of-00050"


def write_corpus(root: Path, tokens: int, shards: int = 20, types: int = 2_000_000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    names = np.array([f"w{i}" for i in range(types)], dtype=object)

    def text(n: int) -> str:
        ids = np.minimum(rng.zipf(1.15, n), types) - 1
        cuts = np.cumsum(rng.integers(10, 40, n // 10 + 1))
        cuts = cuts[cuts < n]
        return "\n".join(" ".join(s) for s in np.split(names[ids], cuts)) + "\n"

    per_shard = tokens // shards
    for i in range(shards):
        path = root / LAYOUT_TRAIN.format(i + 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            for start in range(0, per_shard, 1_000_000):
                f.write(text(min(1_000_000, per_shard - start)))
    for i in (0, 1):
        path = root / LAYOUT_HELDOUT.format(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text(150_000))


CHILD = """
import json, sys, time
from lrnn_lightning.data import LMDataModule, RegistryCorpus
t = time.perf_counter()
dm = LMDataModule(RegistryCorpus("one_billion_word", sys.argv[1]), cache_dir=sys.argv[2])
dm.prepare_data()
print(json.dumps({"seconds": time.perf_counter() - t, "sizes": dm.sizes, "vocab": len(dm.vocab)}))
"""


def run_child(corpus: Path, cache: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-c", CHILD, str(corpus), str(cache)], capture_output=True, text=True, check=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # ru_maxrss of children is the max over all children so far: measure sizes in increasing order
    out["peak_rss_mb"] = round(max(peak, before) / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[10_000_000, 30_000_000, 100_000_000])
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cache-scale-"))
    rows = []
    for n in sorted(args.tokens):
        corpus, cache = work / f"corpus-{n}", work / f"cache-{n}"
        t = time.perf_counter()
        write_corpus(corpus, n)
        gen = time.perf_counter() - t
        size = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file())
        build = run_child(corpus, cache)
        reuse = run_child(corpus, cache)
        total = sum(build["sizes"].values())
        row = {
            "tokens_total": total,
            "text_bytes": size,
            "vocab_size": build["vocab"],
            "build_seconds": round(build["seconds"], 2),
            "build_tokens_per_sec": round(total / build["seconds"]),
            "build_peak_rss_mb": build["peak_rss_mb"],
            "reuse_seconds": round(reuse["seconds"], 3),
            "generate_seconds": round(gen, 1),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        shutil.rmtree(corpus)
        shutil.rmtree(cache)
    def plot(plt):
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        x = [r["tokens_total"] / 1e6 for r in rows]
        ax[0].plot(x, [r["build_peak_rss_mb"] for r in rows], "o-")
        ax[0].axhline(4096, color="r", ls="--", label="4 GB bound")
        ax[0].set(xlabel="tokens (M)", ylabel="peak RSS while building (MB)", title="memory")
        ax[0].legend()
        ax[1].plot(x, [r["build_tokens_per_sec"] / 1e6 for r in rows], "o-")
        ax[1].set(xlabel="tokens (M)", ylabel="M tokens / s", title="build speed", ylim=(0, None))
        return fig

    write_result("cache_scale", {
        "note": "peak_rss_mb is the largest resident set of the building process (max over runs so far); "
        "min_count=3 as for One Billion Word; memory grows with the vocabulary, not with the token count",
        "runs": rows,
    }, plot)

if __name__ == "__main__":
    main()
