"""LightRNN: a proper distribution over the vocabulary, the word table, the solvers, the callback."""

import copy
import math
import re

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import lrnn_lightning.allocation.solvers as solvers
from conftest import TINY, run_script
from lrnn_lightning.allocation import WordTable, allocation_cost, lower_bound, reallocate, table_shape
from lrnn_lightning.modules import LightRNNHead, LSTMCore
from lrnn_lightning.run import train

METHODS = ["exact", "sparse", "greedy"]


def make(V, seed=0):
    torch.manual_seed(seed)
    return LSTMCore(6, 8, num_layers=2), LightRNNHead(V, 6, 8, seed=seed)


# ---- the model -------------------------------------------------------------------------------------
@pytest.mark.parametrize("V", [9, 10, 23, 50])  # 9: a full 3x3 table; the others leave cells empty
def test_probabilities_of_all_words_sum_to_one(V):
    core, head = make(V)
    assert head.table.rows * head.table.cols >= V
    x = torch.randint(0, V, (5, 3))
    logp, _ = head.log_probs(core, x)
    torch.testing.assert_close(logp.double().exp().sum(-1), torch.ones(5, 3, dtype=torch.float64), atol=1e-5, rtol=0)


def test_training_loss_is_the_negative_log_probability_of_the_target():
    core, head = make(23)
    x = torch.randint(0, 23, (6, 2))
    y = torch.cat([x[1:], torch.randint(0, 23, (1, 2))])  # a stream: the next input is the target
    nll, _ = head(core, x, y)
    logp, _ = head.log_probs(core, x)
    torch.testing.assert_close(nll, -logp.gather(-1, y[..., None])[..., 0], atol=1e-5, rtol=1e-5)


def test_carried_state_equals_one_long_pass():
    core, head = make(30)
    x = torch.randint(0, 30, (9, 2))
    y = torch.cat([x[1:], torch.randint(0, 30, (1, 2))])
    full, _ = head(core, x, y)
    a, s = head(core, x[:4], y[:4])
    b, _ = head(core, x[4:], y[4:], s)
    torch.testing.assert_close(torch.cat([a, b]), full)


def test_the_column_step_reads_the_true_row_not_the_predicted_one():
    """Changing only the row vector of the target's row changes the column loss of that target."""
    core, head = make(16)
    x, y = torch.tensor([[3]]), torch.tensor([[5]])
    before, _ = head(core, x, y)
    with torch.no_grad():
        head.row_embedding.weight[head.table.row(torch.tensor(5))] += 1.0
    after, _ = head(core, x, y)
    assert not torch.allclose(before, after)


def test_reallocation_changes_no_parameter_only_the_mapping():
    core, head = make(30)
    params = {k: v.clone() for k, v in head.state_dict().items() if k != "table.cell"}
    new = torch.randperm(head.table.rows * head.table.cols)[:30]
    moved = head.table.assign(new)
    assert moved == int((new != torch.as_tensor(make(30)[1].table.cell)).sum())
    for k, v in head.state_dict().items():
        if k != "table.cell":
            torch.testing.assert_close(v, params[k])
    # the masks of empty cells and rows follow the move: exactly the new cells are occupied
    expected = torch.zeros(head.table.rows * head.table.cols, dtype=torch.bool)
    expected[new] = True
    assert torch.equal(head.table.occupied.flatten(), expected)
    assert head.table.word_at()[new].tolist() == list(range(30))


def test_a_moved_word_is_scored_as_the_word_that_sat_in_its_new_cell():
    """Moving words only relabels cells: after a move, word w is what the word that sat in w's new
    cell was before it (a full 6 x 6 table, so every cell holds a word before and after)."""
    V = 36
    core, head = make(V)
    before = copy.deepcopy(head)
    new = torch.randperm(V, generator=torch.Generator().manual_seed(1))
    assert head.table.assign(new) > 30
    relabel = before.table.word_at()[new]  # w -> the word that sat in w's new cell
    x = torch.randint(0, V, (7, 3))
    y = torch.randint(0, V, (7, 3))
    torch.testing.assert_close(head(core, x, y)[0], before(core, relabel[x], relabel[y])[0])
    torch.testing.assert_close(head.log_probs(core, x)[0], before.log_probs(core, relabel[x])[0][..., relabel])


def test_table_init_and_bad_assignments():
    t = WordTable(10)
    assert (t.rows, t.cols) == (4, 4) and t.cell.unique().numel() == 10
    assert torch.equal(WordTable(10, seed=3).cell, WordTable(10, seed=3).cell)
    f = WordTable(10, init="frequency")
    assert f.row(torch.arange(4)).tolist() == [0, 1, 2, 3]  # the 4 most frequent words in 4 rows
    with pytest.raises(ValueError, match="distinct"):
        t.assign(torch.zeros(10, dtype=torch.long))
    assert table_shape(10_000) == (100, 100) and table_shape(793_471) == (891, 891)


# ---- the solvers -----------------------------------------------------------------------------------
def planted(V, seed=0):
    """Costs with a unique zero-cost allocation, everything else >= 1."""
    R, C = table_shape(V)
    rng = np.random.default_rng(seed)
    best = rng.permutation(R * C)[:V]
    row = 1 + rng.random((V, R)).astype(np.float32)
    col = 1 + rng.random((V, C)).astype(np.float32)
    row[np.arange(V), best // C] = 0
    col[np.arange(V), best % C] = 0
    return row, col, best, rng.permutation(R * C)[:V]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("V", [7, 50, 300])
def test_every_method_finds_a_planted_optimum(method, V):
    row, col, best, current = planted(V)
    new = reallocate(row, col, current, method)
    np.testing.assert_array_equal(new, best)
    assert allocation_cost(row, col, new) == lower_bound(row, col) == 0


@pytest.mark.parametrize("method", METHODS + ["auto"])
@pytest.mark.parametrize("V,seed", [(5, 0), (17, 1), (64, 2), (250, 3)])
def test_reallocate_always_returns_a_permutation(method, V, seed):
    R, C = table_shape(V)
    rng = np.random.default_rng(seed)
    row, col = rng.random((V, R)), rng.random((V, C))
    row[:, 0] = col[:, 0] = -1  # everyone wants cell 0: heavy contention
    new = reallocate(row, col, rng.permutation(R * C)[:V], method, top_k=2)
    assert new.shape == (V,) and len(set(new.tolist())) == V and new.min() >= 0 and new.max() < R * C


def test_exact_matches_scipy():
    V = 60
    R, C = table_shape(V)
    rng = np.random.default_rng(5)
    row, col = rng.random((V, R)), rng.random((V, C))
    dense = (row[:, :, None] + col[:, None, :]).reshape(V, R * C)
    w, c = linear_sum_assignment(dense)
    optimum = dense[w, c].sum()
    current = rng.permutation(R * C)[:V]
    assert allocation_cost(row, col, reallocate(row, col, current, "exact")) == pytest.approx(optimum)
    greedy = allocation_cost(row, col, reallocate(row, col, current, "greedy", top_k=R))
    assert optimum <= greedy and lower_bound(row, col) <= optimum


# ---- in training -----------------------------------------------------------------------------------
LIGHT = [*TINY, "model=lightrnn", "model.embedding_size=16", "model.hidden_size=16"]


def test_fast_dev_run_of_lightrnn(make_cfg):
    metrics = train(make_cfg([*LIGHT, "debug=fdr", "callbacks.reallocation.skip_last_epoch=false"]))
    assert metrics["test/ppl"] > 1 and metrics["realloc/round"] == 1


def test_checkpoint_keeps_the_reallocated_table(make_cfg, tmp_path):
    from lrnn_lightning.checkpoint import load_language_model

    metrics = train(make_cfg([*LIGHT, "trainer.max_epochs=2", "callbacks.reallocation.skip_last_epoch=false"]))
    assert metrics["realloc/round"] == 2 and metrics["realloc/moved_words"] > 0
    assert metrics["realloc/lower_bound"] <= metrics["realloc/cost_after"] <= metrics["realloc/cost_before"]
    last, _, _ = load_language_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    initial = WordTable(last.vocab_size, seed=1234).cell  # the seed of the run
    assert not torch.equal(last.head.table.cell, initial)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert any("Reallocation" in k and v["rounds"] == 2 for k, v in ckpt["callbacks"].items())


@pytest.mark.slow
def test_ddp_two_processes_end_with_the_same_table(tmp_path):
    proc = run_script("train.py", *LIGHT, "logger=none", "hardware=ddp_cpu", "trainer.max_epochs=2",
                      "callbacks.reallocation.skip_last_epoch=false",
                      f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*.log"))
    tables = re.findall(r"reallocation round (\d+) \(rank (\d)\).*table (\w+)", text)
    by_round = {}
    for rnd, rank, fp in tables:
        by_round.setdefault(rnd, {})[rank] = fp
    assert set(by_round) == {"1", "2"}
    for fps in by_round.values():
        assert set(fps) == {"0", "1"} and fps["0"] == fps["1"]


def test_greedy_with_many_leftovers_still_returns_a_permutation(monkeypatch):
    monkeypatch.setattr(solvers, "GREEDY_EXACT_LEFTOVERS", 0)
    V = 300
    R, C = table_shape(V)
    rng = np.random.default_rng(0)
    row, col = rng.random((V, R)), rng.random((V, C))
    row[:, 0] = col[:, 0] = -1
    new = reallocate(row, col, rng.permutation(R * C)[:V], "greedy", top_k=2)
    assert len(set(new.tolist())) == V and new.max() < R * C


def test_no_round_after_the_final_epoch_by_default(make_cfg):
    metrics = train(make_cfg([*LIGHT, "trainer.max_epochs=3"]))
    assert metrics["realloc/round"] == 2


def test_a_round_resets_the_plateau_scheduler_and_keeps_the_final_decay():
    """The scheduler every model config builds (``PlateauWithFinalDecay``): a round forgets the
    plateau's bad epochs, but not the final-epoch decay already taken."""
    from types import SimpleNamespace

    from lrnn_lightning.callbacks import Reallocation
    from lrnn_lightning.lit.schedulers import PlateauWithFinalDecay

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    plateau = PlateauWithFinalDecay(opt, max_epochs=4, final_epochs=1, final_factor=0.1, mode="min",
                                    factor=0.5, patience=1)
    plateau.step(1.0)
    plateau.step(2.0)  # one bad epoch: the next one would halve the learning rate
    assert plateau.num_bad_epochs == 1
    plateau.epoch_started(3)  # the last epoch starts at a tenth of the rate
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    Reallocation._reset_plateau(SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=plateau)]))
    plateau.step(3.0)  # the jump after a reallocation is the new reference, not a second bad epoch
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1) and plateau.best == 3.0
    assert plateau.final_decay_taken
    plateau.epoch_started(3)  # a second call (e.g. after a resume) takes no second decay
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_context_table_recovers_the_classes_of_a_class_language(monkeypatch, parallel):
    """Both capacity-constrained assignments: one word at a time (small V) and proposal rounds."""
    from collections import Counter

    import lrnn_lightning.allocation.context as context
    from lrnn_lightning.allocation.context import context_table

    if parallel:
        monkeypatch.setattr(context, "SEQUENTIAL_MAX_WORDS", 0)
    from lrnn_lightning.data.synthetic import ClassMarkovLanguage, LanguageSpec

    lang = ClassMarkovLanguage(LanguageSpec(num_words=100, num_classes=10, successors=3, seed=3))
    tokens = np.concatenate(lang.sample(60_000, seed=1))
    V = int(tokens.max()) + 1  # the words and the sentence end
    R, C = table_shape(V)
    cells = context_table(tokens, V, R, C)
    assert sorted(cells.tolist()) == sorted(set(cells.tolist())) and cells.max() < R * C
    rows = cells // C
    counts = np.bincount(tokens, minlength=V)
    word_class = np.append(lang.word_class, -1)[:V]
    # token-weighted share of words that sit in a row with their class's majority
    majority = {r: Counter(word_class[rows == r]).most_common(1)[0][0] for r in set(rows.tolist())}
    agree = counts[[w for w in range(V) if word_class[w] == majority[rows[w]]]].sum() / counts.sum()
    random_rows = np.random.default_rng(0).permutation(R * C)[:V] // C
    majority_r = {r: Counter(word_class[random_rows == r]).most_common(1)[0][0] for r in set(random_rows.tolist())}
    agree_random = counts[[w for w in range(V) if word_class[w] == majority_r[random_rows[w]]]].sum() / counts.sum()
    assert agree > 0.9 > 0.5 > agree_random


def class_agreement(rows: np.ndarray, word_class: np.ndarray, counts: np.ndarray) -> float:
    """Token-weighted share of the classed words that sit in a row whose most common class is theirs."""
    from collections import Counter

    keep = word_class >= 0
    majority = {r: Counter(word_class[(rows == r) & keep].tolist()).most_common(1)[0][0]
                for r in set(rows[keep].tolist())}
    agree = [w for w in np.flatnonzero(keep) if word_class[w] == majority[rows[w]]]
    return counts[agree].sum() / counts[keep].sum()


def test_context_initial_table_replaces_the_random_one_once(make_cfg, tmp_path):
    """Checked against what the table should be, not against the function that made it: the rows
    gather the language's classes, and within a row the more frequent word takes the lower column."""
    from hydra.utils import instantiate

    from lrnn_lightning.checkpoint import load_language_model

    cfg = make_cfg([*LIGHT, "trainer.max_epochs=1", "callbacks.reallocation.initial_table=context"])
    train(cfg)  # one epoch, no round after the last one: the table at the end is the starting table
    last, vocab, _ = load_language_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    ids = np.load(next((tmp_path / ".cache").rglob("train.npy")), mmap_mode="r")
    table = last.head.table
    V, C = table.vocab_size, table.cols
    cells = table.cell.numpy()
    counts = np.bincount(ids, minlength=V)
    word_class = instantiate(cfg.data.corpus).word_classes(vocab.words)
    assert not torch.equal(table.cell, WordTable(V, seed=cfg.seed).cell)  # not the model's random table
    random_rows = WordTable(V, seed=cfg.seed).cell.numpy() // C
    assert class_agreement(cells // C, word_class, counts) > 0.8 > 0.5 > class_agreement(random_rows, word_class, counts)
    for r in np.unique(cells // C):
        words = np.flatnonzero(cells // C == r)
        by_col = words[np.argsort(cells[words] % C)]
        assert (cells[by_col] % C).tolist() == list(range(len(words)))  # the row's first columns
        assert (np.diff(counts[by_col]) <= 0).all()  # the most frequent first
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert any("Reallocation" in k and v["initialized"] for k, v in ckpt["callbacks"].items())


def test_move_penalty_keeps_words_whose_gain_is_smaller(make_cfg):
    base = [*LIGHT, "trainer.max_epochs=1", "callbacks.reallocation.skip_last_epoch=false"]
    free = train(make_cfg([*base, "callbacks.reallocation.move_penalty=0"], run="free"))
    pinned = train(make_cfg([*base, "callbacks.reallocation.move_penalty=1e6"], run="pinned"))
    assert free["realloc/moved_words"] > 0
    assert pinned["realloc/moved_words"] == 0
    # the reported costs stay the model's losses, without the penalty
    assert pinned["realloc/cost_after"] == pytest.approx(pinned["realloc/cost_before"])
    assert pinned["realloc/lower_bound"] <= pinned["realloc/cost_before"]


def lightrnn_parameters(V: int, E: int, H: int, layers: int) -> int:
    """LSTM layers (4 gates: input and recurrent weights, two biases) + the table's row and column
    embeddings and decoders (weights and biases)."""
    R = C = math.isqrt(V - 1) + 1
    lstm = sum(4 * H * ((E if layer == 0 else H) + H) + 8 * H for layer in range(layers))
    return lstm + (R + C) * E + (R + C) * (H + 1)


@pytest.mark.parametrize("experiment,vocab,E,H,paper", [("lightrnn_one_billion_word", 793_471, 1500, 1500, 41e6),
                                                        ("lightrnn_aclw_french", 136_912, 1000, 1000, 17e6)])
def test_paper_experiments_have_the_papers_sizes(experiment, vocab, E, H, paper):
    """One Billion Word: 41M parameters; ACLW-French: 17M (Li et al. 2016): 2 LSTM layers of 1500
    (1000) under an 891 x 891 (371 x 371) table."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from conftest import CONF

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    core = instantiate(cfg.model.core)
    head = instantiate(cfg.model.head)(vocab_size=vocab, input_size=core.input_size, hidden_size=core.output_size)
    total = sum(p.numel() for m in (core, head) for p in m.parameters())
    assert total == lightrnn_parameters(vocab, E, H, layers=2)
    assert abs(total / paper - 1) < 0.03  # the paper rounds to millions: 41.37 M, 17.50 M


def test_row_purity_is_logged_at_the_start_and_after_every_round(make_cfg, tmp_path):
    import csv

    base = [*(o for o in LIGHT if o != "logger=none"), "trainer.max_epochs=2", "callbacks.reallocation.skip_last_epoch=false"]
    metrics = train(make_cfg(base))
    rows = list(csv.DictReader(open(next((tmp_path / "run").rglob("metrics.csv")))))
    logged = [(int(r["step"]), float(r["realloc/row_purity"])) for r in rows if r.get("realloc/row_purity")]
    rounds = [int(r["step"]) for r in rows if r.get("realloc/round")]
    assert len(rounds) == 2 and [s for s, _ in logged] == [0, *rounds]  # the start, then each round
    assert all(0.0 <= p <= 1.0 for _, p in logged)
    assert metrics["realloc/row_purity"] == pytest.approx(logged[-1][1])
    # the true classes in rows of their own (10 words a class, 11 a row): purity 1 from the start
    oracle = train(make_cfg([*LIGHT, "trainer.max_epochs=1", "callbacks.reallocation.initial_table=classes",
                             "data.corpus.num_words=100",
                             "callbacks.reallocation.max_rounds=0"], run="oracle"))
    assert oracle["realloc/row_purity"] == 1.0
    # a frozen random table of the 10-class language is far from it
    frozen = train(make_cfg([*LIGHT, "trainer.max_epochs=1", "callbacks.reallocation.initial_table=model",
                             "callbacks.reallocation.max_rounds=0"], run="frozen"))
    assert frozen["realloc/row_purity"] < 0.4
