"""Sampling from every head (``generate.py``, the dashboard's samples): the words drawn follow the
distribution the head assigns (``log_probs``), and a temperature near 0 takes the most likely choice."""

import pytest
import torch

from lrnn_lightning.modules import AdaptiveSoftmaxHead, LightRNNHead, LSTMCore, SoftmaxHead

V = 10  # LightRNN: a 4 x 4 table, 6 cells empty


SCALE = {"lightrnn": 40.0, "softmax": 40.0, "adaptive": 8.0}


def make(kind: str):
    """A small core and head with an uneven next-word distribution (decoders scaled up)."""
    torch.manual_seed(0)
    core = LSTMCore(6, 8, num_layers=1)
    if kind == "lightrnn":
        head = LightRNNHead(V, 6, 8, seed=3)
        decoders = [head.row_decoder, head.col_decoder]
    elif kind == "softmax":
        head = SoftmaxHead(V, 6, 8)
        decoders = [head.decoder]
    else:
        head = AdaptiveSoftmaxHead(V, 6, 8, cutoffs=[3, 6], div_value=2.0)
        decoders = [m for m in head.adaptive.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for lin in decoders:
            lin.weight.mul_(SCALE[kind])
    return core.eval(), head.eval()


def distribution(core, head, prev: int) -> torch.Tensor:
    """``P(w | prev)`` from ``log_probs``: ``[V]``."""
    logp, _ = head.log_probs(core, torch.tensor([[prev]]))
    return logp[0, 0].double().exp()


@pytest.mark.parametrize("kind", ["lightrnn", "softmax", "adaptive"])
def test_sampled_frequencies_match_the_heads_probabilities(kind):
    core, head = make(kind)
    n = 40_000
    for prev in (0, 7):
        p = distribution(core, head, prev)
        assert p.sum().item() == pytest.approx(1.0, abs=1e-5) and p.max() < 0.9  # uneven, not one word
        words, _ = head.sample(core, torch.full((n,), prev), temperature=1.0,
                               generator=torch.Generator().manual_seed(prev))
        assert words.min() >= 0 and words.max() < V  # never an empty cell of the table
        freq = torch.bincount(words, minlength=V).double() / n
        # within 5 standard deviations of a binomial count, word by word
        tolerance = 5 * (p * (1 - p) / n).sqrt() + 1e-4
        assert ((freq - p).abs() <= tolerance).all(), (kind, prev, freq, p)


@pytest.mark.parametrize("kind", ["softmax", "adaptive"])
def test_a_temperature_near_zero_takes_the_most_likely_word(kind):
    core, head = make(kind)
    with torch.no_grad():
        for lin in [m for m in head.modules() if isinstance(m, torch.nn.Linear)]:
            lin.weight.div_(SCALE[kind])  # a flat distribution: only the temperature can make it one word
    for prev in range(V):
        p = distribution(core, head, prev)
        words, _ = head.sample(core, torch.full((200,), prev), temperature=1e-6,
                               generator=torch.Generator().manual_seed(prev))
        assert words.tolist() == [int(p.argmax())] * 200


def test_a_temperature_near_zero_takes_the_most_likely_row_then_column():
    """LightRNN draws a row, then a column in it: at temperature -> 0 the most likely row (its words'
    total probability), then the most likely word of that row."""
    core, head = make("lightrnn")
    rows = head.table.row(torch.arange(V))
    for prev in range(V):
        p = distribution(core, head, prev)
        row_p = torch.zeros(head.table.rows, dtype=p.dtype).index_add_(0, rows, p)
        best_row = int(row_p.argmax())
        in_row = torch.where(rows == best_row, p, torch.zeros_like(p))
        words, _ = head.sample(core, torch.full((200,), prev), temperature=1e-6,
                               generator=torch.Generator().manual_seed(prev))
        assert words.tolist() == [int(in_row.argmax())] * 200
