"""Reallocation cost matrices shaped like a trained LightRNN's, for tests and benchmarks.

``zipf_costs``: count-weighted costs ``row_loss[w, i] = n_w * a[w, i]`` with Zipf counts ``n_w``
(from ``top_count`` for the most frequent word down to ``min_count``, as in One Billion Word:
~4e7 down to 3) and per-occurrence losses ``a`` that are class-structured: words fall into R
classes of Zipf-distributed sizes (so popular rows are wanted by far more than C words: contention),
a class prefers a few rows, and column preferences mix a class part and a word part.
``mild_costs``: the same losses with every count 1 (the solver benchmark's earlier costs).
"""

from __future__ import annotations

import numpy as np

from lrnn_lightning.allocation.table import table_shape


def _nll(x: np.ndarray) -> np.ndarray:
    x = x - x.max(1, keepdims=True)
    return -(x - np.log(np.exp(x).sum(1, keepdims=True)))


def zipf_counts(V: int, top_count: float = 4e7, min_count: float = 3.0) -> np.ndarray:
    """``n_w = top_count * (w + 1) ** -s`` with ``s`` such that the last word has ``min_count``."""
    s = np.log(top_count / min_count) / np.log(max(V, 2))
    return np.maximum(np.round(top_count * np.arange(1, V + 1, dtype=np.float64) ** -s), min_count)


def loss_chunks(V: int, seed: int = 0, chunk: int = 20_000, counts: np.ndarray | None = None):
    """Yields ``(start, a[n, R], b[n, C])``: the class-structured per-occurrence losses of words
    ``start..start+n`` (float32), times ``counts`` when given (float64). Memory: one chunk."""
    R, C = table_shape(V)
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, R + 1)
    cls = rng.choice(R, size=V, p=popularity / popularity.sum())
    pref_r = (rng.normal(size=(R, R)) * 3).astype(np.float32)
    pref_c = (rng.normal(size=(R, C)) * 1).astype(np.float32)
    for a in range(0, V, chunk):
        n = min(chunk, V - a)
        row = _nll(pref_r[cls[a:a + n]] + rng.normal(size=(n, R)).astype(np.float32) * 0.5)
        col = _nll(pref_c[cls[a:a + n]] + rng.normal(size=(n, C)).astype(np.float32) * 2)
        if counts is not None:
            row, col = row * counts[a:a + n, None], col * counts[a:a + n, None]
        yield a, row, col


def per_occurrence_losses(V: int, seed: int = 0, chunk: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Float32 ``(a[V, R], b[V, C])`` negative log-softmax losses, class-structured (see module doc)."""
    R, C = table_shape(V)
    row = np.empty((V, R), np.float32)
    col = np.empty((V, C), np.float32)
    for a, r, c in loss_chunks(V, seed, chunk):
        row[a:a + len(r)], col[a:a + len(c)] = r, c
    return row, col


def random_table(V: int, seed: int = 0) -> np.ndarray:
    R, C = table_shape(V)
    return np.random.default_rng(seed + 1).permutation(R * C)[:V]


def zipf_costs(V: int, seed: int = 0, top_count: float = 4e7, min_count: float = 3.0, dtype=np.float32):
    """``(row_loss, col_loss, counts, current)``: count-weighted class-structured costs and a random table."""
    R, C = table_shape(V)
    counts = zipf_counts(V, top_count, min_count)
    row = np.empty((V, R), dtype)
    col = np.empty((V, C), dtype)
    for a, r, c in loss_chunks(V, seed, counts=counts):
        row[a:a + len(r)], col[a:a + len(c)] = r, c
    return row, col, counts, random_table(V, seed)


def mild_costs(V: int, seed: int = 0, dtype=np.float32):
    """``(row_loss, col_loss, counts, current)`` with every count 1."""
    row, col = per_occurrence_losses(V, seed)
    return row.astype(dtype, copy=False), col.astype(dtype, copy=False), np.ones(V), random_table(V, seed)
