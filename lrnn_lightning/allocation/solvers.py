"""Reallocation of words to table cells: a minimum-weight perfect matching between words and cells.

The cost of word ``w`` in cell ``(i, j)`` is ``row_loss[w, i] + col_loss[w, j]`` (the negative
log-likelihoods accumulated over the training data). Three solvers:

- ``exact``: the dense ``V x R*C`` assignment (scipy ``linear_sum_assignment``), small tables only;
- ``sparse``: an exact minimum-weight full matching (scipy ``min_weight_full_bipartite_matching``)
  restricted to each word's ``top_k`` cheapest rows x ``top_k`` cheapest columns plus its current
  cell, so that a perfect matching always exists (the current table is one);
- ``greedy``: words claim their cheapest candidate cells in parallel rounds (the cheapest claim on
  a cell wins), leftovers are matched exactly among the remaining cells.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

log = logging.getLogger(__name__)

EXACT_MAX_WORDS = 6_000
SPARSE_MAX_WORDS = 2_000_000
AUCTION_EPS = 1e-3
GREEDY_EXACT_LEFTOVERS = 2_000
SCIPY_SPARSE_MAX_WORDS = 20_000  # beyond, scipy's LAPJVsp can take minutes under heavy contention


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def lower_bound(row_loss, col_loss) -> float:
    """Every word in its own cheapest cell (ignoring that cells hold one word)."""
    return float(_np(row_loss).min(1).astype(np.float64).sum() + _np(col_loss).min(1).astype(np.float64).sum())


def allocation_cost(row_loss, col_loss, cells) -> float:
    row_loss, col_loss, cells = _np(row_loss), _np(col_loss), _np(cells)
    C = col_loss.shape[1]
    w = np.arange(len(cells))
    return float(row_loss[w, cells // C].astype(np.float64).sum() + col_loss[w, cells % C].astype(np.float64).sum())


def _top_k(loss: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest entries of each row (unordered)."""
    if k >= loss.shape[1]:
        return np.broadcast_to(np.arange(loss.shape[1]), loss.shape).copy()
    # torch.topk: several times faster than np.argpartition here, and multi-threaded
    return torch.from_numpy(np.ascontiguousarray(loss)).topk(k, dim=1, largest=False, sorted=False).indices.numpy()


def _candidates(row_loss: np.ndarray, col_loss: np.ndarray, current: np.ndarray, k: int, chunk: int = 32_768):
    """Each word's top-k rows x top-k cols plus its current cell: ``(cells[V, n], cost[V, n])``.

    Built a chunk of words at a time so that memory stays at the output's size.
    """
    V, C = row_loss.shape[0], col_loss.shape[1]
    kr, kc = min(k, row_loss.shape[1]), min(k, C)
    # int32 cells and float32 costs: at V = 793,471 with k = 8 that is 2 x 206 MB
    cells = np.empty((V, kr * kc + 1), dtype=np.int32)
    cost = np.empty((V, kr * kc + 1), dtype=np.float32)
    for a in range(0, V, chunk):
        rl, cl, cur = row_loss[a : a + chunk], col_loss[a : a + chunk], current[a : a + chunk]
        n = len(rl)
        w = np.arange(n)[:, None]
        rows, cols = _top_k(rl, kr), _top_k(cl, kc)
        cells[a : a + n, :-1] = (rows[:, :, None] * C + cols[:, None, :]).reshape(n, -1)
        cost[a : a + n, :-1] = (rl[w, rows][:, :, None] + cl[w, cols][:, None, :]).reshape(n, -1)
        cells[a : a + n, -1] = cur
        cost[a : a + n, -1] = rl[w[:, 0], cur // C] + cl[w[:, 0], cur % C]
    return cells, cost


def _exact(row_loss, col_loss) -> np.ndarray:
    V, R = row_loss.shape
    C = col_loss.shape[1]
    cost = (row_loss.astype(np.float64)[:, :, None] + col_loss[:, None, :]).reshape(V, R * C)
    words, cells = linear_sum_assignment(cost)
    out = np.empty(V, dtype=np.int64)
    out[words] = cells
    return out


def _sparse(row_loss, col_loss, current, k) -> np.ndarray:
    V, R = row_loss.shape
    C = col_loss.shape[1]
    cells, cost = _candidates(row_loss, col_loss, current, k)
    # the current cell may repeat a candidate: keep each (word, cell) edge once
    order = np.argsort(cells, axis=1, kind="stable")
    cells = np.take_along_axis(cells, order, 1)
    cost = np.take_along_axis(cost, order, 1)
    keep = np.ones(cells.shape, dtype=bool)
    keep[:, 1:] = cells[:, 1:] != cells[:, :-1]
    # a per-word shift keeps the optimum and makes every weight >= 1 (zeros would not be edges)
    cost = cost.astype(np.float64) - cost.min(1, keepdims=True) + 1.0
    counts = keep.sum(1)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    graph = csr_matrix((cost[keep], cells[keep], indptr), shape=(V, R * C))
    rows, cols = min_weight_full_bipartite_matching(graph)
    out = np.empty(V, dtype=np.int64)
    out[rows] = cols
    return out


def _greedy(row_loss, col_loss, current, k) -> np.ndarray:
    V, R = row_loss.shape
    C = col_loss.shape[1]
    cells, cost = _candidates(row_loss, col_loss, current, k)
    order = np.argsort(cost, axis=1, kind="stable")
    cells = np.take_along_axis(cells, order, 1)
    cost = np.take_along_axis(cost, order, 1)
    width = cells.shape[1]
    out = np.full(V, -1, dtype=np.int64)
    taken = np.zeros(R * C, dtype=bool)
    nxt = np.zeros(V, dtype=np.int64)  # each word's next candidate to try
    pending = np.arange(V)
    while True:
        pending = pending[nxt[pending] < width]  # words out of candidates wait for the end
        if not pending.size:
            break
        cand = cells[pending, nxt[pending]]
        blocked = taken[cand]
        if blocked.any():  # move past cells that are gone
            nxt[pending[blocked]] += 1
            continue
        claim = cost[pending, nxt[pending]]
        by = np.lexsort((claim, cand))  # per cell, the cheapest claim first
        first = np.ones(by.size, dtype=bool)
        first[1:] = cand[by][1:] != cand[by][:-1]
        winners = pending[by[first]]
        out[winners] = cand[by[first]]
        taken[out[winners]] = True
        pending = pending[out[pending] < 0]
    left = np.flatnonzero(out < 0)
    if left.size:
        free = np.flatnonzero(~taken)
        if left.size <= GREEDY_EXACT_LEFTOVERS:  # few: match them exactly among the free cells
            sub = row_loss[left][:, free // C].astype(np.float64) + col_loss[left][:, free % C]
            w, c = linear_sum_assignment(sub)
            out[left[w]] = free[c]
        else:  # many (heavy contention): keep the current cell where it is still free, else any free cell
            keep = ~taken[current[left]]
            out[left[keep]] = current[left[keep]]
            taken[out[left[keep]]] = True
            rest = left[~keep]
            out[rest] = np.flatnonzero(~taken)[: rest.size]
    return out


def _auction(cells: np.ndarray, cost: np.ndarray, n_cells: int, eps: float) -> np.ndarray:
    """Bertsekas' forward auction (Jacobi bidding) for a minimum-cost matching of every word to a
    distinct cell over a sparse candidate graph ``cells[V, m]``, ``cost[V, m]``.

    Each unassigned word bids for its best candidate (lowest cost + price), raising that cell's
    price by its margin over its second-best candidate plus ``eps``; each cell goes to its highest
    bidder. Prices start at zero and only rise, so cells nobody wants keep price zero and the
    result is within ``V * eps`` of the optimum of the candidate graph (more cells than words
    rules out epsilon-scaling's price reuse, which could strand expensive empty cells).
    """
    V = cells.shape[0]
    price = np.zeros(n_cells, dtype=np.float32)
    owner = np.full(n_cells, -1, dtype=np.int64)
    assigned = np.full(V, -1, dtype=np.int64)
    todo = np.arange(V)
    first_round = True
    while todo.size:
        c, k = (cells, cost) if first_round else (cells[todo], cost[todo])  # no copies of everything
        first_round = False
        value = k + price[c]  # lower is better
        two = np.argpartition(value, 1, axis=1)[:, :2]
        v2 = np.take_along_axis(value, two, 1)
        first = np.where(v2[:, 0] <= v2[:, 1], two[:, 0], two[:, 1])
        rows = np.arange(todo.size)
        target = c[rows, first]
        bid = price[target] + (v2.max(1) - value[rows, first]) + np.float32(eps)
        order = np.lexsort((-bid, target))  # per cell, the highest bid first
        win = np.ones(order.size, dtype=bool)
        win[1:] = target[order][1:] != target[order][:-1]
        winners, won = todo[order[win]], target[order[win]]
        displaced = owner[won]
        price[won] = bid[order[win]]
        owner[won] = winners
        assigned[winners] = won
        displaced = displaced[displaced >= 0]
        assigned[displaced] = -1
        todo = np.concatenate([todo[order[~win]], displaced])
    return assigned


def reallocate(row_loss, col_loss, current, method: str = "auto", top_k: int | None = None) -> np.ndarray:
    """New cell (``row * C + col``) of every word: a permutation into the ``R*C >= V`` cells.

    ``method``: ``exact``, ``sparse``, ``greedy`` or ``auto`` (exact up to a few thousand words,
    sparse beyond). ``top_k``: candidate rows and columns per word for ``sparse``/``greedy``
    (default 16 up to 100k words, 8 beyond).
    """
    row_loss, col_loss, current = _np(row_loss), _np(col_loss), _np(current).astype(np.int64)
    V, R = row_loss.shape
    if col_loss.shape[0] != V or current.shape != (V,):
        raise ValueError(f"row_loss {row_loss.shape}, col_loss {col_loss.shape} and current {current.shape} disagree")
    C = col_loss.shape[1]
    if R * C < V:
        raise ValueError(f"{R}x{C} table has fewer cells than {V} words")
    if method == "auto":
        method = "exact" if V <= EXACT_MAX_WORDS else "sparse" if V <= SPARSE_MAX_WORDS else "greedy"
    k = top_k or (16 if V <= 100_000 else 8)
    if method == "exact":
        return _exact(row_loss, col_loss)
    if method == "sparse":
        if V <= SCIPY_SPARSE_MAX_WORDS:
            return _sparse(row_loss, col_loss, current, k)
        cells, cost = _candidates(row_loss, col_loss, current, k)
        eps = AUCTION_EPS * float(np.mean(cost.min(1)))  # total within AUCTION_EPS of the optimum
        return _auction(cells, cost, R * C, eps)
    if method == "greedy":
        return _greedy(row_loss, col_loss, current, k)
    raise ValueError(f"unknown reallocation method '{method}': use exact, sparse, greedy or auto")
