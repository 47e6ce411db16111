"""A warm start for the word table: words that follow similar contexts share a row.

The row softmax is easiest to learn when a row is a class of words predicted in the same
contexts (a class-based softmax). Before any training we can estimate that from the corpus: each
word is described by the distribution of the word before it, embedded by a truncated SVD of the
(Hellinger-transformed) predecessor counts, and the words are clustered into R rows of at most C
words by a capacity-constrained k-means seeded with the R most frequent words (so frequent words
start in different rows). Within a row, the i-th most frequent word takes column i. On a
class-Markov language this recovers the classes; on real text it is a cheap Brown-like
clustering. The per-epoch reallocation then refines it from the model's own losses.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds


def context_embedding(tokens: np.ndarray, vocab_size: int, features: int = 2000, dims: int = 100,
                      max_tokens: int = 20_000_000, chunk: int = 5_000_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(E[V, dims], counts[V])``: each word's left-context vector and its frequency.

    Predecessor features are the ``features`` most frequent words plus one bucket for the rest; at most ``max_tokens`` tokens are read, ``chunk`` at a time.
    """
    n = min(len(tokens), max_tokens)
    features = min(features, vocab_size)
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, n, chunk):
        counts += np.bincount(np.asarray(tokens[start:min(n, start + chunk)], dtype=np.int64), minlength=vocab_size)
    # a predecessor feature per frequent word (by count, whatever the id order), one bucket for the rest
    feature = np.full(vocab_size, features, dtype=np.int64)
    feature[np.argsort(-counts, kind="stable")[:features]] = np.arange(features)
    M = sp.csr_matrix((vocab_size, features + 1), dtype=np.float64)
    for start in range(0, n - 1, chunk):
        block = np.asarray(tokens[start:min(n, start + chunk + 1)], dtype=np.int64)
        M = M + sp.csr_matrix((np.ones(len(block) - 1), (block[1:], feature[block[:-1]])), shape=M.shape)
    rows = np.asarray(M.sum(1)).ravel()
    M = sp.diags(1.0 / np.maximum(rows, 1.0)) @ M
    M.data = np.sqrt(M.data)
    k = max(1, min(dims, min(M.shape) - 1))
    rng = np.random.default_rng(seed)
    u, s, _ = svds(M, k=k, v0=rng.standard_normal(min(M.shape)), random_state=seed)
    E = (u * s).astype(np.float32)
    return E, counts


def _nearest(E: np.ndarray, centroids: np.ndarray, m: int, exclude: np.ndarray | None = None,
             chunk: int = 65536) -> np.ndarray:
    """The ``m`` nearest centroids of every row of E, nearest first (``exclude``: rows to skip)."""
    allowed = np.arange(len(centroids)) if exclude is None else np.flatnonzero(~exclude)
    cents = centroids[allowed]
    m = min(m, len(cents))
    c2 = (cents * cents).sum(1)
    out = np.empty((len(E), m), dtype=np.int64)
    for start in range(0, len(E), chunk):
        d = c2[None, :] - 2.0 * (E[start:start + chunk] @ cents.T)
        part = np.argpartition(d, m - 1, axis=1)[:, :m] if m < d.shape[1] else np.tile(np.arange(m), (len(d), 1))
        order = np.take_along_axis(d, part, 1).argsort(1)
        out[start:start + chunk] = allowed[np.take_along_axis(part, order, 1)]
    return out


def _balanced_assign_parallel(E: np.ndarray, centroids: np.ndarray, order: np.ndarray, capacity: int, m: int = 16) -> np.ndarray:
    """Rows of at most ``capacity`` words: every unassigned word proposes to its next-nearest row
    and each row keeps its most frequent proposers while it has room (``order``: most frequent
    first); words left over propose again among the rows that still have room. Vectorized."""
    R, V = len(centroids), len(E)
    left = np.full(R, capacity, dtype=np.int64)
    row = np.full(V, -1, dtype=np.int64)
    priority = np.empty(V, dtype=np.int64)
    priority[order] = np.arange(V)
    todo = order.copy()
    while len(todo):
        cand = _nearest(E[todo], centroids, m, exclude=left == 0)
        for j in range(cand.shape[1]):
            want = cand[:, j]
            by_row = np.lexsort((priority[todo], want))
            words, rows = todo[by_row], want[by_row]
            first = np.searchsorted(rows, rows, side="left")
            accepted = (np.arange(len(rows)) - first) < left[rows]
            row[words[accepted]] = rows[accepted]
            left -= np.bincount(rows[accepted], minlength=R)
            todo, cand = words[~accepted], cand[by_row][~accepted]
            if not len(todo):
                break
    return row


def _balanced_assign_sequential(E: np.ndarray, centroids: np.ndarray, order: np.ndarray, capacity: int, m: int = 16) -> np.ndarray:
    """Words in ``order`` (most frequent first) take, one by one, their nearest row with room left."""
    R = len(centroids)
    cand = _nearest(E, centroids, m)
    left = np.full(R, capacity, dtype=np.int64)
    row = np.full(len(E), -1, dtype=np.int64)
    spill = []
    for w in order:
        for r in cand[w]:
            if left[r] > 0:
                row[w] = r
                left[r] -= 1
                break
        else:
            spill.append(w)
    if spill:  # rare: every candidate full; take the nearest row that still has room
        for w in spill:
            free = np.flatnonzero(left > 0)
            d = ((centroids[free] - E[w]) ** 2).sum(1)
            r = free[int(d.argmin())]
            row[w] = r
            left[r] -= 1
    return row


# past this many words the one-word-at-a-time assignment is slow in Python (37 s at V = 100,000
# against 12.5 s for the proposal rounds, 535 s against 222 s at V = 793,471)
SEQUENTIAL_MAX_WORDS = 50_000


def _balanced_assign(E: np.ndarray, centroids: np.ndarray, order: np.ndarray, capacity: int) -> np.ndarray:
    if len(E) <= SEQUENTIAL_MAX_WORDS:
        return _balanced_assign_sequential(E, centroids, order, capacity)
    return _balanced_assign_parallel(E, centroids, order, capacity)


def context_table(tokens: np.ndarray, vocab_size: int, rows: int, cols: int, iterations: int = 10,
                  seed: int = 0, **embedding_kwargs) -> np.ndarray:
    """Cells ``row * cols + col`` for every word (a permutation into the table): see the module doc."""
    if rows * cols < vocab_size:
        raise ValueError(f"a {rows}x{cols} table has fewer cells than {vocab_size} words")
    E, counts = context_embedding(tokens, vocab_size, seed=seed, **embedding_kwargs)
    order = np.argsort(-counts, kind="stable")
    centroids = E[order[:rows]].copy()
    weight = counts.astype(np.float64) + 1.0
    row = None
    for _ in range(max(1, iterations)):
        row = _balanced_assign(E, centroids, order, cols)
        sums = np.zeros_like(centroids, dtype=np.float64)
        np.add.at(sums, row, E * weight[:, None])
        mass = np.bincount(row, weights=weight, minlength=rows)
        nonempty = mass > 0
        centroids[nonempty] = (sums[nonempty] / mass[nonempty, None]).astype(np.float32)
    # within a row, the more frequent word takes the lower column
    cells = np.empty(vocab_size, dtype=np.int64)
    rank = np.empty(vocab_size, dtype=np.int64)
    by_row = np.lexsort((np.arange(vocab_size), -counts, row))  # by row, then frequency
    first = np.searchsorted(row[by_row], np.arange(rows))
    rank[by_row] = np.arange(vocab_size) - first[row[by_row]]
    cells[:] = row * cols + rank
    return cells
