"""Training speed of the four model families at the same width: LSTM or SRU core, full softmax or
the LightRNN table (LightSRU = SRU core + table, which no reference implementation offers).

    python benchmarks/lightsru_speed.py [--vocab 10000] [--hidden 256] [--batch 32] [--bptt 35]
    python benchmarks/lightsru_speed.py --plot-only   # redraw the PNG from the JSON

Random token windows, forward + backward + Adam step, timed after warm-up, in one run of this
script (same machine state for all). Writes benchmarks/results/lightsru_speed.json and .png.
"""

from __future__ import annotations

import argparse
import json

from common import draw, write_result
from lightrnn_speed import measure

from lrnn_lightning.modules import LightRNNHead, LSTMCore, SoftmaxHead
from lrnn_lightning.modules.sru import SRU


def plot(plt, result: dict):
    runs = result["runs"]
    cores = list(dict.fromkeys(k.split("+")[0] for k in runs))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for offset, head, colour in ((-0.2, "table", "tab:green"), (0.2, "softmax", "tab:gray")):
        xs = [i + offset for i in range(len(cores))]
        bars = ax.bar(xs, [runs[f"{c}+{head}"]["tokens_per_sec"] for c in cores], 0.4, label=head, color=colour)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax2.bar(xs, [runs[f"{c}+{head}"]["params/total"] / 1e6 for c in cores], 0.4, label=head, color=colour)
    s = result["setting"]
    for a in (ax, ax2):
        a.set_xticks(range(len(cores)), cores)
        a.legend(fontsize=8)
    ax.set_ylabel("training tokens / s")
    ax.set_title(f"V={s['vocab']}, hidden {s['hidden']}, batch {s['batch']}, bptt {s['bptt']} "
                 f"({result['machine']['gpu'] or 'CPU'})", fontsize=9)
    ax2.set_ylabel("parameters (M)")
    ax2.set_title("parameters: table (LightRNN/LightSRU) vs full softmax", fontsize=9)
    return fig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=10_000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from the existing JSON, run nothing")
    args = ap.parse_args()
    if args.plot_only:
        draw("lightsru_speed", plot)
        return
    H, V = args.hidden, args.vocab
    cores = {
        "lstm_2x": lambda: LSTMCore(H, H, 2, 0.2),
        "sru_2x": lambda: SRU(H, H, 2, dropout=0.1, highway_bias=-3.0, rescale=True, backend="torch"),
        "sru_3x": lambda: SRU(H, H, 3, dropout=0.1, highway_bias=-3.0, rescale=True, backend="torch"),
    }
    runs = {}
    for core_name, make_core in cores.items():
        for head_name, head_cls in (("table", LightRNNHead), ("softmax", SoftmaxHead)):
            r = measure(head_cls, V, H, args.batch, args.bptt, steps=args.steps, make_core=make_core)
            runs[f"{core_name}+{head_name}"] = r
            print(core_name, head_name, json.dumps(r), flush=True)
    ratios = {
        "lightsru_2x_vs_lightrnn_2x_tokens_per_sec": runs["sru_2x+table"]["tokens_per_sec"]
        / runs["lstm_2x+table"]["tokens_per_sec"],
        "sru_2x_vs_lstm_2x_softmax_tokens_per_sec": runs["sru_2x+softmax"]["tokens_per_sec"]
        / runs["lstm_2x+softmax"]["tokens_per_sec"],
    }
    write_result("lightsru_speed", {"setting": {"vocab": V, "hidden": H, "batch": args.batch, "bptt": args.bptt},
                                    "runs": runs, "ratios": ratios})
    draw("lightsru_speed", plot)


if __name__ == "__main__":
    main()
