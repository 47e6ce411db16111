"""A reallocation round stops at a stop request and the resumed run redoes it exactly."""

import os

import numpy as np
import pytest
import torch

from conftest import ROOT
from lrnn_lightning.allocation.costs import random_table, shape_costs
from lrnn_lightning.allocation.solvers import RoundInterrupted, reallocate
from lrnn_lightning.callbacks.reallocation import Reallocation
from lrnn_lightning.run import train

SMALL = ["experiment=tiny", "data.corpus.train_tokens=2000", "data.corpus.valid_tokens=600",
         "data.corpus.test_tokens=600", "model=lightrnn", "logger=none", "test=false",
         "callbacks.reallocation.skip_last_epoch=false"]


class Countdown:
    """``stop()`` turns True at its ``n``-th call: a stop request arriving mid-solve."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.n


@pytest.mark.parametrize("after", [1, 3])
def test_a_stop_request_mid_solve_raises_and_returns_no_table(after):
    row, col = shape_costs("contested", 900, seed=1)
    current = random_table(900, 1)
    stop = Countdown(after)
    with pytest.raises(RoundInterrupted):
        reallocate(row, col, current, "sparse", stop=stop)
    assert stop.calls == after  # it stopped at the first poll that said so
    # without a request the same call completes (and polls more often than that)
    polls = Countdown(10 ** 9)
    new = reallocate(row, col, current, "sparse", stop=polls)
    assert len(np.unique(new)) == 900 and polls.calls > after


def test_sigterm_during_a_round_stops_it_and_the_resumed_run_makes_the_same_table(make_cfg, tmp_path, monkeypatch,
                                                                                 caplog):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    common = [*SMALL, "callbacks.model_checkpoint.every_n_train_steps=5"]  # 25 windows an epoch
    straight = train(make_cfg(common, run="straight"))
    ref = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    assert straight["realloc/round"] == 2

    hooks = ["+callbacks.sigterm._target_=round_helpers.SigtermBeforeRound", "+callbacks.sigterm.epoch=0"]
    with pytest.raises(SystemExit):
        train(make_cfg([*common, *hooks], run="run"))
    assert "reallocation round 1 interrupted by a stop request" in caplog.text
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 20  # the newest save; nothing was written at the interruption
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("Reallocation"))
    assert state["rounds"] == 0 and Reallocation.KEY in saved  # the partial statistics of 20 windows
    assert not torch.equal(saved["state_dict"]["head.table.cell"], ref["state_dict"]["head.table.cell"])

    resumed = train(make_cfg([*common, "ckpt_path=last"], run="run"))
    got = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert torch.equal(ref["state_dict"]["head.table.cell"], got["state_dict"]["head.table.cell"])
    assert got["global_step"] == ref["global_step"] and got["epoch"] == ref["epoch"]
    differ = [k for k in ref["state_dict"] if not torch.equal(ref["state_dict"][k], got["state_dict"][k])]
    assert not differ, f"weights differ after the redone round: {differ}"
    keys = [k for k in straight if k.startswith(("val/", "realloc/")) and not k.endswith("seconds")]
    assert {k: resumed.get(k) for k in keys} == {k: straight[k] for k in keys}


@pytest.mark.slow
def test_sigterm_to_both_ranks_during_a_ddp_round_and_the_resumed_run_makes_the_same_table(tmp_path):
    """Two DDP processes, SIGTERM to each as the last batch of epoch 0 starts (SLURM signals every
    task): rank 0 stops the round (the sparse solver and its polish, on the statistics summed over
    both ranks), rank 1 learns it from the broadcast, both end as a SIGTERM ends a run, with no new
    table; ``ckpt_path=last`` redoes the windows after the newest step save and the round, and ends
    with the weights and table of the uninterrupted DDP run."""
    import json

    from test_stops import _ranks, final_metrics, load

    ddp = [*SMALL, "hardware=ddp_cpu", "trainer.devices=2", "trainer.num_sanity_val_steps=0",
           "callbacks.model_checkpoint.every_n_train_steps=4", "callbacks.reallocation.method=sparse",
           "callbacks.reallocation.top_k=2"]
    plan = [{"run": "straight", "overrides": ddp},
            {"run": "run", "overrides": [*ddp, "+callbacks.sigterm._target_=round_helpers.SigtermBeforeRound",
                                         "+callbacks.sigterm.epoch=0"]},
            {"run": "run", "overrides": [*ddp, "ckpt_path=last"]}]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    report = tmp_path / "report.json"
    codes = _ranks(tmp_path, plan, report, bin_dir)
    logs = "".join((tmp_path / f"report_rank{r}.log").read_text()[-3000:] for r in (0, 1))
    assert codes == [0, 0], logs
    straight, stopped, resumed = json.loads(report.read_text())
    assert straight["ended"] is None and stopped["ended"] in ("SIGTERMException", "SystemExit"), logs
    assert "reallocation round 1 interrupted by a stop request" in logs
    ref, got = (load(tmp_path / run / "checkpoints" / "last.ckpt") for run in ("straight", "run"))
    assert (got["global_step"], got["epoch"]) == (ref["global_step"], ref["epoch"])
    for key in ref["state_dict"]:
        assert torch.equal(ref["state_dict"][key], got["state_dict"][key]), f"{key} differs"
    assert straight["metrics"]["realloc/round"] == 2 and "realloc/polish_gain" in straight["metrics"]
    assert final_metrics(resumed["metrics"]) == final_metrics(straight["metrics"])
