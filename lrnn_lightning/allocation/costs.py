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


# ---- cost shapes for the solver benchmarks and tests ---------------------------------------------
SHAPES = ("zipf", "contested", "flat", "planted", "mild", "skewed", "profile")


def shape_chunks(shape: str, V: int, seed: int = 0, chunk: int = 20_000, top_count: float = 4e7,
                 min_count: float = 3.0):
    """Yields ``(start, row[n, R], col[n, C])`` float64 count-weighted costs of words ``start..start+n``
    for a cost ``shape``; memory: one chunk (the benchmarks stream V = 793,471 this way).

    - ``zipf``: ``loss_chunks`` times Zipf counts (class-structured, popular rows over-wanted);
    - ``contested``: several hundred classes (Zipf sizes) whose words all prefer the same 2 rows
      and the same 2 columns of their class, sharply (a few nats), so the favourite cells are
      wanted by far more words than they hold, with Zipf counts;
    - ``flat``: early training: every per-occurrence loss within 0.05 nats of ``log R``;
    - ``planted``: a hidden table; each word's planted row and column cost 1.5 nats less than the
      rest (noise 0.5): the optimum is (close to) the planted table;
    - ``mild``: ``loss_chunks`` with every count 1;
    - ``skewed``: a short first epoch (the One Billion Word rehearsal's statistics look like this):
      the tokens of V / 6 Zipf (exponent 1.1) draws, so most words are never seen (cost 0
      everywhere), and a model that has learned little more than its marginals: EVERY word prefers
      the same 4 rows and 4 columns (by 3 to 1.5 nats), with 0.5 nats of per-word noise. Each of
      those rows and columns holds one word in ``R``: nearly every seen word ends far outside its
      cheapest few rows and columns.
    - ``profile``: the same short epoch, from a model that predicts its marginals: every row costs
      ``-log p`` per occurrence with ``p`` Zipf over the rows (exponent 1, rows in random order;
      columns alike), plus per-occurrence noise (0.8 nats, summed: ``sqrt(count)`` times that). The
      seen words share one smooth profile over every row and column, as on the One Billion Word
      rehearsal's statistics (``solvers.profile_route``).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown cost shape '{shape}': use one of {', '.join(SHAPES)}")
    R, C = table_shape(V)
    if shape in ("zipf", "mild"):
        counts = zipf_counts(V, top_count, min_count) if shape == "zipf" else None
        for a, r, c in loss_chunks(V, seed, chunk, counts=counts):
            yield a, np.asarray(r, np.float64), np.asarray(c, np.float64)
        return
    rng = np.random.default_rng(seed + 17)
    counts = zipf_counts(V, top_count, min_count)
    if shape == "contested":
        n_cls = min(max(V // 1500, 8), 600)
        size = 1.0 / np.arange(1, n_cls + 1)
        cls = rng.choice(n_cls, size=V, p=size / size.sum())
        fav_r = rng.integers(0, R, size=(n_cls, 2))
        fav_c = rng.integers(0, C, size=(n_cls, 2))
    elif shape == "planted":
        planted = rng.permutation(R * C)[:V]
    elif shape == "skewed":
        fav_r, fav_c = rng.choice(R, 4, replace=False), rng.choice(C, 4, replace=False)
        p = np.arange(1, V + 1, dtype=np.float64) ** -1.1
        counts = rng.multinomial(max(V // 6, 1), p / p.sum()).astype(np.float64)
    elif shape == "profile":
        p = np.arange(1, V + 1, dtype=np.float64) ** -1.1
        counts = rng.multinomial(max(V // 6, 1), p / p.sum()).astype(np.float64)
        marg_r, marg_c = 1.0 / np.arange(1, R + 1), 1.0 / np.arange(1, C + 1)
        prof_r = -np.log(marg_r / marg_r.sum())[rng.permutation(R)]
        prof_c = -np.log(marg_c / marg_c.sum())[rng.permutation(C)]
    for a in range(0, V, chunk):
        n = min(chunk, V - a)
        if shape == "flat":
            row = np.log(R) + rng.uniform(-0.05, 0.05, size=(n, R))
            col = np.log(C) + rng.uniform(-0.05, 0.05, size=(n, C))
        elif shape == "contested":
            k = cls[a:a + n]
            row = np.log(R) + 0.3 * rng.normal(size=(n, R))
            col = np.log(C) + 0.3 * rng.normal(size=(n, C))
            i = np.arange(n)[:, None]
            row[i, fav_r[k]] -= np.array([4.0, 3.0])
            col[i, fav_c[k]] -= np.array([4.0, 3.0])
        elif shape == "skewed":
            row = np.log(R) + 0.5 * rng.normal(size=(n, R))
            col = np.log(C) + 0.5 * rng.normal(size=(n, C))
            row[:, fav_r] -= np.array([3.0, 2.5, 2.0, 1.5])
            col[:, fav_c] -= np.array([3.0, 2.5, 2.0, 1.5])
        elif shape == "profile":
            w = counts[a:a + n, None]
            row = w * prof_r + 0.8 * np.sqrt(w) * rng.normal(size=(n, R))
            col = w * prof_c + 0.8 * np.sqrt(w) * rng.normal(size=(n, C))
            yield a, np.maximum(row, 0.0), np.maximum(col, 0.0)
            continue
        else:  # planted
            row = np.log(R) + 0.5 * rng.normal(size=(n, R))
            col = np.log(C) + 0.5 * rng.normal(size=(n, C))
            i = np.arange(n)
            row[i, planted[a:a + n] // C] -= 1.5
            col[i, planted[a:a + n] % C] -= 1.5
        w = counts[a:a + n, None]
        yield a, np.maximum(row, 0.0) * w, np.maximum(col, 0.0) * w


def shape_costs(shape: str, V: int, seed: int = 0, **kw) -> tuple[np.ndarray, np.ndarray]:
    """The whole ``(row[V, R], col[V, C])`` float64 costs of ``shape_chunks`` (small V: tests)."""
    R, C = table_shape(V)
    row, col = np.empty((V, R)), np.empty((V, C))
    for a, r, c in shape_chunks(shape, V, seed, **kw):
        row[a:a + len(r)], col[a:a + len(c)] = r, c
    return row, col
