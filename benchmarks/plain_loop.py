"""A plain PyTorch training loop over our own modules: the reference of benchmarks/framework_tax.py.

    python benchmarks/plain_loop.py model=lstm data=ptb data.root=/work/shared/data/ptb steps=300 [epochs=1]

No Lightning, no callbacks: the loop of pytorch/examples ``word_language_model`` (contiguous
streams, BPTT windows, hidden state carried and detached, gradient-norm clipping), written by us
over the very objects ``train.py`` builds from the same config (the same core and head modules,
the same ``BPTTWindows`` stream, the same optimizer, the same seed and the same order of random
draws), so that with the same seed it computes what ``train.py`` computes: the same weights after
the same steps, the same validation perplexity.

Arguments are Hydra overrides of ``conf/train.yaml`` plus ``steps=N`` (training windows per
epoch; default: all), ``epochs=N`` (default 1), ``validate=true|false``, ``keep_freed_memory=true``
(glibc's malloc set as ``train.py`` sets it: ``lrnn_lightning.callbacks.HostMemory``) and
``out=<file>`` (the result as JSON, with the wall time, CPU time and page faults at every step end).
"""

from __future__ import annotations

import json
import math
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def compose(overrides: list[str]):
    """``conf/train.yaml`` with ``overrides``, as ``python train.py <overrides>`` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import lrnn_lightning  # noqa: F401 - registers the config resolvers

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return hydra_compose("train", overrides=overrides)


def seed_all(seed: int) -> None:
    """What ``lightning.seed_everything`` seeds: Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Model(nn.Module):
    """Core and head as ``LanguageModel`` holds them (same parameter order for the optimizer)."""

    def __init__(self, core: nn.Module, head: nn.Module):
        super().__init__()
        self.core, self.head = core, head

    def forward(self, inputs, targets, state=None):
        return self.head(self.core, inputs, targets, state)


def build(cfg):
    """``(model, datamodule, optimizer)`` built from ``cfg`` in ``train.py``'s order of random draws."""
    from hydra.utils import instantiate

    seed_all(int(cfg.seed))
    data = instantiate(cfg.data)
    data.prepare_data()
    data.setup("fit")
    core = instantiate(cfg.model.core)  # drawn first, as when the LanguageModel config is instantiated
    head = instantiate(cfg.model.head)(vocab_size=len(data.vocab), input_size=core.input_size,
                                       hidden_size=core.output_size)
    model = Model(core, head)
    realloc = (cfg.get("callbacks") or {}).get("reallocation")
    if hasattr(head, "table") and realloc is not None and realloc.get("initial_table") == "context":
        from lrnn_lightning.allocation.context import context_table

        # the Reallocation callback's table before the first step (numpy draws with its own seed)
        cells = context_table(data.ids["train"], head.vocab_size, head.table.rows, head.table.cols)
        head.table.assign(torch.as_tensor(cells))
    optimizer = instantiate(cfg.model.optimizer)(params=model.parameters())
    return model, data, optimizer


def detach(state):
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach(s) for s in state)


def train_epoch(model: Model, windows, optimizer, steps: int, clip: float | None, times: dict) -> float:
    """One epoch (its first ``steps`` windows) from a fresh state; the mean training loss.
    Appends the wall and CPU time at the end of every step to ``times``."""
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state, total, n = None, torch.zeros((), dtype=torch.float64), min(steps, len(windows))
    for i in range(n):
        inputs, targets = windows[i]
        nll, state = model(inputs, targets, state)
        state = detach(state)
        loss = nll.sum() / targets.numel()  # training windows are never padded
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        total += loss.detach()
        times["wall"].append(time.perf_counter())
        times["cpu"].append(time.process_time())
        times["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
    return float(total) / max(n, 1)


@torch.no_grad()
def evaluate(model: Model, windows) -> float:
    """Mean loss per token over the whole split (perplexity is its ``exp``)."""
    model.eval()
    state, total, count = None, torch.zeros((), dtype=torch.float64), 0
    for i in range(len(windows)):
        inputs, targets = windows[i]
        nll, state = model(inputs, targets, state)
        total += nll.double().sum()
        count += int((targets >= 0).sum())
    return float(total) / max(count, 1)


def run(overrides: list[str], steps: int | None = None, epochs: int = 1, validate: bool = True,
        keep_freed_memory: bool = False) -> dict:
    """Train as ``train.py`` with ``trainer.max_epochs=epochs trainer.limit_train_batches=steps``
    would; ``val_ppl`` is the best epoch's (the checkpoint ``train.py`` reports).
    ``keep_freed_memory``: glibc's malloc set as ``train.py``'s ``HostMemory`` callback sets it."""
    from hydra.utils import instantiate

    if keep_freed_memory:
        from lrnn_lightning.callbacks.memory import keep_freed_memory as keep

        keep()

    cfg = compose(overrides)
    model, data, optimizer = build(cfg)
    scheduler = instantiate(cfg.model.scheduler)(optimizer=optimizer) if cfg.model.get("scheduler") else None
    windows = data.windows["train"]
    steps = len(windows) if steps is None else steps
    times: dict = {"wall": [], "cpu": [], "faults": []}
    out: dict = {"val_ppl_per_epoch": []}
    for _ in range(epochs):
        out["train_loss"] = train_epoch(model, windows, optimizer, steps, cfg.trainer.get("gradient_clip_val"), times)
        if validate:
            val_loss = evaluate(model, data.windows["valid"])
            out["val_ppl_per_epoch"].append(math.exp(val_loss))
            if scheduler is not None:
                scheduler.step(val_loss)
    if validate:
        out["val_ppl"] = min(out["val_ppl_per_epoch"])
    return {**out, **times}


def main() -> None:
    ours = ("steps", "epochs", "out", "validate", "keep_freed_memory")
    args = dict(a.split("=", 1) for a in sys.argv[1:] if a.split("=", 1)[0] in ours)
    overrides = [a for a in sys.argv[1:] if a.split("=", 1)[0] not in args]
    result = run(overrides, int(args["steps"]) if "steps" in args else None, int(args.get("epochs", 1)),
                 args.get("validate", "true") == "true", args.get("keep_freed_memory", "false") == "true")
    text = json.dumps(result)
    if "out" in args:
        Path(args["out"]).write_text(text)
    summary = {k: v for k, v in result.items() if k not in ("wall", "cpu", "faults")}
    wall = result["wall"]
    if len(wall) > 1:
        summary["ms_per_step_after_first"] = 1000 * (wall[-1] - wall[0]) / (len(wall) - 1)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
