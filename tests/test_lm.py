import json
import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from conftest import TINY
from lrnn_lightning.modules import LSTMCore, SoftmaxHead
from lrnn_lightning.run import train


def test_fast_dev_run_of_the_lstm_model(make_cfg):
    cfg = make_cfg(["model=lstm", "data.corpus.num_words=300", "data.corpus.train_tokens=5000",
                    "data.corpus.valid_tokens=800", "data.corpus.test_tokens=800", "debug=fdr"])
    metrics = train(cfg)
    assert math.isfinite(metrics["test/ppl"]) and metrics["test/ppl"] > 1
    assert metrics["params/total"] > metrics["params/embedding"] > 0


def test_carried_state_equals_one_long_pass():
    torch.manual_seed(0)
    core = LSTMCore(8, 12, num_layers=2)
    head = SoftmaxHead(vocab_size=20, input_size=8, hidden_size=12)
    x = torch.randint(0, 20, (10, 3))
    y = torch.randint(0, 20, (10, 3))
    full, _ = head(core, x, y)
    a, state = head(core, x[:4], y[:4])
    b, _ = head(core, x[4:], y[4:], state)
    torch.testing.assert_close(torch.cat([a, b]), full)


def test_softmax_head_is_normalized_and_ignores_padding():
    head = SoftmaxHead(vocab_size=30, input_size=6, hidden_size=6)
    core = LSTMCore(6, 6, num_layers=1)
    x = torch.randint(0, 30, (5, 2))
    logp, _ = head.log_probs(core, x)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(5, 2))
    y = torch.randint(0, 30, (5, 2))
    y[3:, 1] = -100
    nll, _ = head(core, x, y)
    assert (nll[3:, 1] == 0).all()
    torch.testing.assert_close(nll[:3], -logp[:3].gather(-1, y[:3, :, None])[..., 0])


def test_tied_weights_need_equal_sizes():
    with pytest.raises(ValueError, match="tie_weights"):
        SoftmaxHead(vocab_size=10, input_size=4, hidden_size=5, tie_weights=True)
    head = SoftmaxHead(vocab_size=10, input_size=4, hidden_size=4, tie_weights=True)
    assert head.decoder.weight is head.embedding.weight


def test_validation_ppl_is_exp_of_token_weighted_loss_over_the_whole_split(make_cfg, tmp_path):
    """val/ppl equals a plain token-by-token evaluation of the same model over the valid split."""
    cfg = make_cfg([*TINY, "trainer.max_epochs=1", "data.eval_batch_size=3", "data.bptt=7", "test=false"])
    metrics = train(cfg)
    from lrnn_lightning.checkpoint import load_language_model

    model, vocab, _ = load_language_model(metrics["ckpt/best"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    ids = torch.from_numpy(np.array(dm.ids["valid"], dtype=np.int64))
    inputs = torch.cat([torch.tensor([vocab.eos_id]), ids[:-1]])
    # three columns as in the data module, each read in one pass (no windows)
    m = math.ceil(len(ids) / 3)
    total = 0.0
    with torch.no_grad():
        for c in range(3):
            x, y = inputs[c * m : (c + 1) * m, None], ids[c * m : (c + 1) * m, None]
            nll, _ = model.head(model.core, x, y)
            total += nll.double().sum().item()
    expected = math.exp(total / len(ids))
    assert metrics["val/ppl"] == pytest.approx(expected, rel=1e-5)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["val/ppl"] == pytest.approx(expected, rel=1e-5)


def test_resume_from_last_ckpt_continues_at_the_right_epoch_with_the_same_state(make_cfg, tmp_path):
    # dropout: the random streams must resume too; every epoch ends with a reallocation round in
    # both runs (by default the final epoch of a run has none, and "first" ends after epoch 1)
    # final_factor=1: a 2-epoch run decays its rate for epoch 1 and a 3-epoch run for epoch 2, so
    # a finished 2-epoch run continued to 3 epochs is not the 3-epoch run (tests/test_schedulers.py)
    common = [*TINY, "model.dropout=0.3", "test=false", "callbacks.reallocation.skip_last_epoch=false",
              "model.scheduler.final_factor=1.0"]
    straight = train(make_cfg([*common, "trainer.max_epochs=3"], run="straight"))
    first = make_cfg([*common, "trainer.max_epochs=2"], run="first")
    train(first)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1  # epochs 0 and 1 done
    resumed = train(make_cfg([*common, "trainer.max_epochs=3", f"ckpt_path={last}"], run="resumed"))
    assert resumed["trainer/epochs"] == straight["trainer/epochs"] == 3
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=0)
    assert resumed["val/ppl"] == pytest.approx(straight["val/ppl"], rel=1e-9)
    assert a["optimizer_states"][0]["param_groups"][0]["lr"] == b["optimizer_states"][0]["param_groups"][0]["lr"]


class RecordLosses:
    """Training-step losses as the LanguageModel returned them (Lightning's ``outputs``)."""

    def __init__(self):
        import lightning as L

        outer = self
        self.losses: list[float] = []

        class _CB(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                outer.losses.append(float(outputs["loss"]))

        self.callback = _CB()


def test_train_loss_is_logged_at_logging_steps_as_the_mean_of_the_steps_since(make_cfg, tmp_path, monkeypatch):
    import csv

    import lrnn_lightning.run as run

    recorder = RecordLosses()
    original = run._instantiate_group
    monkeypatch.setattr(run, "_instantiate_group", lambda group: [*original(group), recorder.callback])
    # 2000 tokens, batch 8, bptt 10: 25 steps an epoch; logging every 4 steps crosses the epoch boundary
    train(make_cfg([*TINY, "logger=csv", "data.corpus.train_tokens=2000", "trainer.log_every_n_steps=4",
                    "test=false"]))
    with open(tmp_path / "run" / "csv" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    losses = recorder.losses
    assert len(losses) == 50
    # one row every 4 steps (Lightning's step index is the step count before the logging step's update)
    assert [int(r["step"]) for r in rows] == list(range(3, 50, 4))
    for k, r in enumerate(rows):
        window = losses[4 * k : 4 * k + 4]
        assert float(r["train/loss"]) == pytest.approx(sum(window) / len(window), rel=1e-6)
        assert float(r["train/tokens_per_sec"]) > 0 and float(r["train/lr"]) > 0


def test_tokens_per_second_leaves_validation_out(monkeypatch):
    from types import SimpleNamespace

    import lrnn_lightning.callbacks.throughput as throughput

    clock = {"now": 0.0}
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: clock["now"])
    logged = []
    module = SimpleNamespace(log=lambda name, value: logged.append((name, value)))
    trainer = SimpleNamespace(world_size=2, sanity_checking=False, loggers=[],
                              _logger_connector=SimpleNamespace(should_update_logs=False))
    batch = (None, torch.zeros(10, 4))  # 40 tokens per process
    cb = throughput.TokensPerSecond()
    cb.on_train_start(trainer, module)
    for t in (1.0, 2.0):  # two steps of one second
        clock["now"] = t
        cb.on_train_batch_start(trainer, module, batch, 0)
        cb.on_train_batch_end(trainer, module, None, batch, 0)
    cb.on_validation_start(trainer, module)
    clock["now"] = 30.0  # validation and a checkpoint save: 28 s
    cb.on_train_batch_start(trainer, module, batch, 2)
    clock["now"] = 31.0
    trainer._logger_connector.should_update_logs = True
    cb.on_train_batch_end(trainer, module, None, batch, 2)
    assert logged == [("train/tokens_per_sec", 80.0)]  # 3 steps x 80 tokens in 3 s
    cb.on_train_epoch_end(trainer, module)
    assert cb.epoch_tokens_per_sec == 80.0
