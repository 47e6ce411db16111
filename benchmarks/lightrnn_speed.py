"""Model size and training speed: LightRNN against the full-softmax LSTM of the same hidden size.

    python benchmarks/lightrnn_speed.py [--sizes 10000 100000 793471] [--hidden 256] [--batch 32] [--bptt 35]

Both models (2-layer LSTM core) train on random token windows of synthetic vocabularies in one
run of this script: forward, backward and an Adam step, timed after warm-up. Records
``params/embedding``, ``params/total`` and tokens per second, and their ratios.
Writes benchmarks/results/lightrnn_speed.json and .png.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import write_result

from lrnn_lightning.modules import LightRNNHead, LSTMCore, SoftmaxHead
from lrnn_lightning.modules.state import detach_state


def measure(head_cls, V: int, H: int, B: int, T: int, steps: int, make_core=None) -> dict:
    torch.manual_seed(0)
    core = make_core() if make_core is not None else LSTMCore(H, H, 2, 0.2)
    head = head_cls(V, H, H, 0.2)
    params = list(core.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, 1e-3)
    x, y = torch.randint(0, V, (T, B)), torch.randint(0, V, (T, B))
    state, times = None, []
    for i in range(steps + 2):
        t = time.perf_counter()
        nll, state = head(core, x, y, state)
        state = detach_state(state)
        opt.zero_grad()
        nll.mean().backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return {
        "params/embedding": sum(p.numel() for p in head.parameters()),
        "params/total": sum(p.numel() for p in params),
        "tokens_per_sec": B * T / (sum(times) / len(times)),
        "steps_timed": len(times),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 793_471])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bptt", type=int, default=35)
    args = ap.parse_args()
    rows = []
    for V in args.sizes:
        light = measure(LightRNNHead, V, args.hidden, args.batch, args.bptt, steps=5)
        full = measure(SoftmaxHead, V, args.hidden, args.batch, args.bptt, steps=5 if V <= 100_000 else 2)
        row = {
            "V": V, "lightrnn": light, "softmax_lstm": full,
            "embedding_param_ratio": full["params/embedding"] / light["params/embedding"],
            "total_param_ratio": full["params/total"] / light["params/total"],
            "tokens_per_sec_ratio": light["tokens_per_sec"] / full["tokens_per_sec"],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    def plot(plt):
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        v = [r["V"] for r in rows]
        for key, label in (("lightrnn", "LightRNN"), ("softmax_lstm", "full-softmax LSTM")):
            ax[0].loglog(v, [r[key]["params/embedding"] for r in rows], "o-", label=label)
            ax[1].loglog(v, [r[key]["tokens_per_sec"] for r in rows], "o-", label=label)
        ax[0].set(xlabel="vocabulary", ylabel="embedding + softmax parameters", title="size")
        ax[1].set(xlabel="vocabulary", ylabel="training tokens / s (CPU)", title="speed")
        for a in ax:
            a.legend()
        return fig

    write_result("lightrnn_speed", {
        "setting": {"hidden": args.hidden, "layers": 2, "batch": args.batch, "bptt": args.bptt, "optimizer": "Adam"},
        "runs": rows,
    }, plot)

if __name__ == "__main__":
    main()
