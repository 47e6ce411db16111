"""model=adaptive: LSTM core + adaptive softmax over the frequency-sorted vocabulary."""

import math

import pytest
import torch

from conftest import TINY, run_script
from lrnn_lightning.errors import UserError
from lrnn_lightning.modules import AdaptiveSoftmaxHead, LSTMCore
from lrnn_lightning.modules.adaptive import check_cutoffs, default_cutoffs
from lrnn_lightning.run import evaluate, generate, train


def make(V=60, cutoffs=(10, 30), H=16, **kw):
    torch.manual_seed(0)
    return LSTMCore(H, H, num_layers=1), AdaptiveSoftmaxHead(V, H, H, cutoffs=list(cutoffs), **kw)


def test_log_probs_are_a_distribution_over_the_vocabulary_and_match_the_training_loss():
    core, head = make(div_value=2.0, head_bias=True)
    x = torch.randint(0, 60, (6, 3))
    logp, _ = head.log_probs(core, x)
    assert logp.shape == (6, 3, 60)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(6, 3))
    # every cluster is reached: targets in the head, the middle and the last cluster, and padding
    y = torch.tensor([[0, 12, 59], [5, 29, 30], [9, 10, 45], [1, 20, 31], [2, 3, 58], [4, 11, 40]])
    y[4:, 2] = -100
    nll, _ = head(core, x, y)
    assert (nll[4:, 2] == 0).all()
    expected = -logp.gather(-1, y.clamp_min(0)[..., None])[..., 0]
    torch.testing.assert_close(nll[:4], expected[:4])
    torch.testing.assert_close(nll[4:, :2], expected[4:, :2])


def test_carried_state_equals_one_long_pass():
    core, head = make()
    x, y = torch.randint(0, 60, (10, 2)), torch.randint(0, 60, (10, 2))
    full, _ = head(core, x, y)
    a, state = head(core, x[:4], y[:4])
    b, _ = head(core, x[4:], y[4:], state)
    torch.testing.assert_close(torch.cat([a, b]), full)


def test_training_steps_reduce_the_loss():
    core, head = make(V=40, cutoffs=(5, 20), H=16)
    params = [*core.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=0.02)
    x = torch.randint(0, 40, (12, 4))
    y = torch.roll(x, -1, 0)  # a deterministic successor: learnable
    losses = []
    for _ in range(30):
        nll, _ = head(core, x, y)
        loss = nll.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.5  # nats (measured 4.6 -> 2.7)
    # every part of the adaptive softmax was trained
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.adaptive.parameters())


def test_sampling_draws_every_cluster_and_follows_the_temperature():
    core, head = make()
    prev = torch.zeros(4000, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    words, state = head.sample(core, prev, None, temperature=1.0, generator=gen)
    assert words.shape == (4000,) and 0 <= words.min() and words.max() < 60
    assert ((words < 10).any() and ((words >= 10) & (words < 30)).any() and (words >= 30).any())
    cold, _ = head.sample(core, prev, None, temperature=1e-4, generator=gen)
    logp, _ = head.log_probs(core, prev[:1, None])
    assert (cold == logp[0, 0].argmax()).float().mean() > 0.9  # near-greedy


def test_cutoffs_default_scales_with_the_vocabulary_and_bad_cutoffs_say_what_to_do():
    assert default_cutoffs(10_000) == [500, 2000]
    assert default_cutoffs(50_000) == [2500, 10_000]
    assert default_cutoffs(50) == [2, 10] and default_cutoffs(3) == [1]
    assert check_cutoffs("auto", 200) == check_cutoffs(None, 200) == [10, 40]
    assert check_cutoffs([5, 20], 21) == [5, 20]
    for bad, needle in (([20, 5], "strictly increasing"), ([5, 5], "strictly increasing"), ([5, 60], "between 1 and 59"),
                        ([0, 10], "between 1 and 59"), ([], "empty"), ("many", "list of integers"),
                        ([2.5, 10], "list of integers"), (7, "list of integers")):
        with pytest.raises(UserError, match=needle) as e:
            check_cutoffs(bad, 60)
        assert "model.cutoffs=[3,12]" in str(e.value)  # and how to fix it
    with pytest.raises(UserError, match="div_value"):
        AdaptiveSoftmaxHead(60, 8, 8, div_value=0)
    with pytest.raises(UserError, match="0 dimensions"):  # 8 // 4**2
        AdaptiveSoftmaxHead(60, 8, 8, cutoffs=[10, 30], div_value=4.0)


def test_train_eval_and_generate_with_model_adaptive(make_cfg, tmp_path):
    metrics = train(make_cfg([*TINY, "model=adaptive", "trainer.max_epochs=2"]))
    V = metrics["data/vocab_size"]  # 200 words + <unk>, <eos>: cutoffs auto = [10, 40]
    assert V == 202 and math.isfinite(metrics["test/ppl"]) and 1 < metrics["test/ppl"] < V
    assert metrics["train/loss"] < math.log(V)
    emb = hidden = 16
    # the head (10 words + 2 clusters) and two tail clusters through projections of 16/4 and 16/16
    adaptive = hidden * (10 + 2) + (hidden * 4 + 4 * 30) + (hidden * 1 + 1 * (V - 40))
    assert metrics["params/embedding"] == V * emb + adaptive
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert "head.adaptive.head.weight" in saved["state_dict"]

    evaluated = evaluate(make_cfg([f"ckpt_path={metrics['ckpt/best']}"], config="eval", run="eval"))
    assert evaluated["test/ppl"] == pytest.approx(metrics["test/ppl"], rel=1e-6)
    text = generate(make_cfg([f"ckpt_path={ckpt}", "num_words=30", "prompt=ba"], config="generate", run="gen"))
    words = text.split()
    vocab = set(torch.load(ckpt, weights_only=False)["lrnn"]["vocab"])
    assert words[0] == "ba" and len(words) >= 20 and set(words) <= vocab


def test_train_resumes_an_adaptive_run_exactly(make_cfg, tmp_path):
    common = [*TINY, "model=adaptive", "test=false", "model.dropout=0.2"]
    straight = train(make_cfg([*common, "trainer.max_epochs=2"], run="straight"))
    train(make_cfg([*common, "trainer.max_epochs=1"], run="first"))
    resumed = train(make_cfg([*common, "trainer.max_epochs=2",
                              f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"], run="resumed"))
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val/ppl"] == straight["val/ppl"]


@pytest.mark.slow
def test_the_command_line_composes_model_adaptive_and_rejects_bad_cutoffs(tmp_path):
    proc = run_script("train.py", "model=adaptive", "experiment=tiny", "logger=none", "trainer.max_epochs=1",
                      "model.cutoffs=[20,50]", f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/ppl" in proc.stdout
    proc = run_script("train.py", "model=adaptive", "experiment=tiny", "logger=none", "model.cutoffs=[50,20]",
                      f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.cutoffs must be strictly increasing" in proc.stderr
