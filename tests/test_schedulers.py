"""PlateauWithFinalDecay: ReduceLROnPlateau plus a lower rate for a run's last epochs."""

import csv

import pytest
import torch

from lrnn_lightning.errors import UserError
from lrnn_lightning.lit.schedulers import PlateauWithFinalDecay


def make(lr=0.01, **kwargs):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    return opt, PlateauWithFinalDecay(opt, mode="min", factor=0.5, patience=0, **kwargs)


def rates(opt, sched, losses, first_epoch=0):
    """The rate each epoch trains at, as LanguageModel drives the scheduler: ``epoch_started``
    before the epoch's first step, ``step(val_loss)`` after its validation."""
    seen = []
    for epoch, loss in enumerate(losses, start=first_epoch):
        if hasattr(sched, "epoch_started"):
            sched.epoch_started(epoch)
        seen.append(opt.param_groups[0]["lr"])
        sched.step(loss)
    return seen


def test_the_last_epoch_runs_at_the_final_factor_while_validation_improves():
    opt, sched = make(max_epochs=3, final_factor=0.1)
    assert rates(opt, sched, [5.0, 4.0, 3.0]) == pytest.approx([0.01, 0.01, 0.001])
    assert sched.get_last_lr() == pytest.approx([0.001]) and sched.final_decay_taken


def test_a_plateau_still_halves_and_the_decay_comes_on_top():
    opt, sched = make(max_epochs=4, final_factor=0.1)
    assert rates(opt, sched, [5.0, 5.0, 4.0, 3.0]) == pytest.approx([0.01, 0.01, 0.005, 0.0005])
    opt, sched = make(max_epochs=5, final_epochs=2, final_factor=0.25)
    assert rates(opt, sched, [5.0, 4.0, 3.0, 2.0, 1.0]) == pytest.approx([0.01, 0.01, 0.01, 0.0025, 0.0025])


def test_min_lr_is_a_floor_for_the_decay_too():
    opt, sched = make(max_epochs=2, final_factor=0.1, min_lr=0.004)
    assert rates(opt, sched, [5.0, 4.0]) == pytest.approx([0.01, 0.004])


@pytest.mark.parametrize("kwargs", [dict(max_epochs=None), dict(max_epochs=-1), dict(max_epochs=1),
                                    dict(max_epochs=3, final_epochs=0), dict(max_epochs=3, final_factor=1.0),
                                    dict(max_epochs=3, final_epochs=3)])
def test_without_a_known_last_epoch_it_is_a_plain_plateau_schedule(kwargs):
    opt, sched = make(**kwargs)
    plain_opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.01)
    plain = torch.optim.lr_scheduler.ReduceLROnPlateau(plain_opt, mode="min", factor=0.5, patience=0)
    losses = [5.0, 4.0, 4.0, 3.0, 3.0]
    assert rates(opt, sched, losses) == rates(plain_opt, plain, losses)


def resumed(state, **kwargs):
    opt, sched = make(**kwargs)
    opt.param_groups[0]["lr"] = state["_last_lr"][0]  # the optimizer's own state comes back first
    sched.load_state_dict(state)
    return opt, sched


def test_a_resumed_run_takes_the_decay_as_the_uninterrupted_run_does():
    opt, sched = make(max_epochs=3)
    rates(opt, sched, [5.0])
    state = sched.state_dict()
    assert "max_epochs" not in state and state["last_epoch"] == 1 and not state["final_decay_taken"]
    assert rates(*resumed(state, max_epochs=3), [4.0, 3.0], first_epoch=1) == pytest.approx([0.01, 0.001])
    # resumed with a longer budget before the decay: the decay moves to the new last epoch
    opt, longer = resumed(state, max_epochs=5)
    assert longer.max_epochs == 5
    assert rates(opt, longer, [4.0, 3.0, 2.0, 1.0], first_epoch=1) == pytest.approx([0.01, 0.01, 0.01, 0.001])


def test_a_finished_run_continued_for_more_epochs_decays_once():
    # a 1-epoch run (no decay) continued to 2 epochs: its second epoch is the last, as in a 2-epoch run
    opt, sched = make(max_epochs=1)
    rates(opt, sched, [5.0])
    assert rates(*resumed(sched.state_dict(), max_epochs=2), [4.0], first_epoch=1) == pytest.approx([0.001])
    # a 2-epoch run (decayed for epoch 1) continued to 3: the rate stays low, no second decay
    opt, sched = make(max_epochs=2)
    rates(opt, sched, [5.0, 4.0])
    state = sched.state_dict()
    assert state["final_decay_taken"]
    assert rates(*resumed(state, max_epochs=3), [3.0], first_epoch=2) == pytest.approx([0.001])


@pytest.mark.parametrize("kwargs,said", [(dict(final_factor=0.0), "final_factor"),
                                         (dict(final_factor=2.0), "final_factor"),
                                         (dict(final_epochs=-1), "final_epochs")])
def test_bad_settings_say_which(kwargs, said):
    with pytest.raises(UserError, match=said):
        make(max_epochs=3, **kwargs)


def test_a_training_run_takes_its_last_epoch_at_the_lower_rate(make_cfg, tmp_path):
    """The model configs use it with ``max_epochs: ${trainer.max_epochs}``: a 3-epoch run trains
    its last epoch at final_factor times the rate of the same run without the decay."""
    from lrnn_lightning.run import train

    def lr_per_epoch(run: str, extra: list[str]) -> dict[int, float]:
        train(make_cfg(["experiment=tiny", "trainer.max_epochs=3", "trainer.log_every_n_steps=1", "test=false",
                        *extra], run=run))
        rows = csv.DictReader(open(tmp_path / run / "csv" / "metrics.csv"))
        return {int(r["epoch"]): float(r["train/lr"]) for r in rows if r.get("train/lr")}

    decayed = lr_per_epoch("decayed", [])
    plain = lr_per_epoch("plain", ["model.scheduler.final_factor=1.0"])
    assert set(decayed) == set(plain) == {0, 1, 2}
    assert decayed[0] == plain[0] and decayed[1] == plain[1]
    assert decayed[2] == pytest.approx(0.1 * plain[2])
