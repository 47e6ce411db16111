"""The reallocation callback's keys in training: every_n_epochs, max_rounds, min_moved_fraction,
save_statistics, and the head's table_init=frequency_rows."""

import csv
import json

import numpy as np
import pytest
import torch

from conftest import TINY
from lrnn_lightning.allocation import WordTable, table_shape
from lrnn_lightning.modules import LightRNNHead
from lrnn_lightning.run import train

# 5 training batches of 8 x 10 tokens an epoch, one validation batch
LIGHT = [*TINY, "logger=csv", "model=lightrnn", "model.embedding_size=16", "model.hidden_size=16",
         "trainer.limit_train_batches=5", "trainer.limit_val_batches=1", "test=false",
         "callbacks.reallocation.skip_last_epoch=false"]
STEPS, TARGETS = 5, 5 * 8 * 10


def rounds_logged(run) -> list[tuple[int, dict]]:
    """``(step, row)`` of every reallocation round in the run's metrics.csv."""
    rows = csv.DictReader(open(next(run.rglob("metrics.csv"))))
    return [(int(r["step"]), r) for r in rows if r.get("realloc/round")]


def test_every_n_epochs_rounds_and_their_saved_statistics(make_cfg, tmp_path):
    """every_n_epochs=2 over 4 epochs: rounds after epochs 2 and 4 only, each from its own epoch's
    statistics, saved by save_statistics as round_NNN.npz."""
    from lrnn_lightning.checkpoint import load_language_model

    saved = tmp_path / "stats"
    metrics = train(make_cfg([*LIGHT, "trainer.max_epochs=4", "callbacks.reallocation.every_n_epochs=2",
                              "callbacks.reallocation.move_penalty=0", f"callbacks.reallocation.save_statistics={saved}"]))
    logged = rounds_logged(tmp_path / "run")
    assert [(step, float(r["realloc/round"])) for step, r in logged] == [(2 * STEPS, 1.0), (4 * STEPS, 2.0)]
    assert metrics["realloc/round"] == 2
    assert sorted(p.name for p in saved.iterdir()) == ["round_001.npz", "round_002.npz"]  # no temporary left
    first, second = (np.load(saved / f"round_{i:03d}.npz") for i in (1, 2))
    final, vocab, _ = load_language_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    V = len(vocab)
    R, C = table_shape(V)
    for stats in (first, second):
        assert stats["row_loss"].shape == (V, R) and stats["col_loss"].shape == (V, C)
        # one epoch's targets (the epochs between rounds add nothing), every one counted once
        assert stats["counts"].sum() == TARGETS
        unseen = stats["counts"] == 0
        assert (stats["row_loss"][unseen] == 0).all() and (stats["col_loss"][unseen] == 0).all()
        # a word's summed loss over all R rows: each occurrence costs between 0 and 64 nats a cell
        seen = ~unseen
        assert (stats["row_loss"][seen] > 0).all() and (stats["row_loss"][seen] <= 64 * stats["counts"][seen, None]).all()
        assert float(stats["move_penalty"]) == 0.0
    # each file's table is the one its round started from: they differ by round 1's moves, and the
    # final table differs from round 2's start by round 2's moves
    moved = [float(r["realloc/moved_words"]) for _, r in logged]
    assert (first["current"] != second["current"]).sum() == moved[0] > 0
    assert (final.head.table.cell.numpy() != second["current"]).sum() == moved[1]


def test_max_rounds_stops_the_rounds(make_cfg, tmp_path):
    metrics = train(make_cfg([*LIGHT, "trainer.max_epochs=3", "callbacks.reallocation.max_rounds=1",
                              "callbacks.reallocation.move_penalty=0"]))
    assert [step for step, _ in rounds_logged(tmp_path / "run")] == [STEPS]
    assert metrics["realloc/round"] == 1


def test_min_moved_fraction_stops_after_a_round_that_moves_fewer_words(make_cfg, tmp_path):
    """A round that moves fewer than min_moved_fraction x V words is the last one (here: round 1
    moves every word of the context start, round 2 fewer than 95%), and the checkpoint says so."""
    metrics = train(make_cfg([*LIGHT, "trainer.max_epochs=3", "callbacks.reallocation.min_moved_fraction=0.95",
                              "callbacks.reallocation.move_penalty=0"]))
    V = metrics["data/vocab_size"]
    logged = rounds_logged(tmp_path / "run")
    moved = [float(r["realloc/moved_words"]) for _, r in logged]
    assert [step for step, _ in logged] == [STEPS, 2 * STEPS]  # no round after the third epoch
    assert moved[0] >= 0.95 * V > moved[1] > 0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert any("Reallocation" in k and v["stopped"] and v["rounds"] == 2 for k, v in ckpt["callbacks"].items())


def test_frequency_rows_fill_the_rows_in_order_of_frequency():
    """Frequency binning: ids are frequency ranks, so word i sits in row i // C, column i % C."""
    table = WordTable(10, init="frequency_rows")
    assert (table.rows, table.cols) == (4, 4)
    assert table.row(torch.arange(10)).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert table.col(torch.arange(10)).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    head = LightRNNHead(10, 4, 4, table_init="frequency_rows")
    assert head.table.occupied.sum(1).tolist() == [4, 4, 2, 0]  # the last row empty, masked out
    with pytest.raises(ValueError, match="unknown table init 'frequency-rows': use 'random', 'frequency' or "
                                         "'frequency_rows'"):
        WordTable(10, init="frequency-rows")


def test_frequency_rows_from_the_config_is_the_table_a_frozen_run_keeps(make_cfg, tmp_path):
    from lrnn_lightning.checkpoint import load_language_model

    train(make_cfg([*LIGHT, "trainer.max_epochs=1", "model.head.table_init=frequency_rows",
                    "callbacks.reallocation.initial_table=model", "callbacks.reallocation.max_rounds=0"]))
    model, vocab, meta = load_language_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert torch.equal(model.head.table.cell, torch.arange(len(vocab)))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()).get("realloc/round", 0) == 0



def test_the_profile_route_key_turns_the_route_on_and_off():
    """``callbacks.reallocation.profile_route``: a round on statistics where every word's losses
    follow the model's marginals (Zipf over rows and columns, plus noise; a short epoch: most words
    unseen), with 2 x 2 boxes, which leave the auction a wide gap. With the route (the default) its
    table is taken (``realloc/profile_route`` 1), no dearer, with a narrower certified gap; off, the
    round is the auction's and its polish."""
    from lrnn_lightning.callbacks import Reallocation

    V = 2500
    head = LightRNNHead(V, 8, 8)
    R, C = head.table.rows, head.table.cols

    def epoch():  # the round frees its statistics: the same epoch again for each setting
        g = torch.Generator().manual_seed(0)
        p = 1.0 / torch.arange(1, V + 1, dtype=torch.float64) ** 1.1
        targets = torch.multinomial(p, 600, replacement=True, generator=g)
        head.stats.configure(np.bincount(targets.numpy(), minlength=V))
        head.stats.start("cpu")
        marg_r = torch.log_softmax(-torch.log(torch.arange(1, R + 1.0))[torch.randperm(R, generator=g)], 0)
        marg_c = torch.log_softmax(-torch.log(torch.arange(1, C + 1.0))[torch.randperm(C, generator=g)], 0)
        row = torch.log_softmax(marg_r + 0.8 * torch.randn(600, R, generator=g), 1)
        head.stats.add(targets, row, torch.log_softmax(marg_c + 0.8 * torch.randn(600, C, generator=g), 1))

    out = {}
    for on in (True, False):
        epoch()
        cb = Reallocation(method="sparse", top_k=2, move_penalty=1.0, profile_route=on)
        out[on] = cb._solve(None, head, None)[1]
    assert out[True]["realloc/cost_before"] == out[False]["realloc/cost_before"]  # the same statistics
    assert out[True]["realloc/profile_route"] == 1.0 and out[False]["realloc/profile_route"] == 0.0
    assert out[True]["realloc/objective"] <= out[False]["realloc/objective"]
    assert out[True]["realloc/gap"] < out[False]["realloc/gap"]
    assert out[True]["realloc/dual_bound"] <= out[True]["realloc/objective"]
