"""Reallocation of words to table cells: a minimum-weight perfect matching between words and cells.

The cost of word ``w`` in cell ``(i, j)`` is ``row_loss[w, i] + col_loss[w, j]`` (negative
log-likelihoods summed over the word's occurrences: count-weighted, so on a real corpus they span
10^1 to 10^9 nats from the rarest to the most frequent word). Solvers:

- ``exact``: the dense ``V x R*C`` assignment (scipy ``linear_sum_assignment``), small tables only;
- ``sparse``: a forward auction (Bertsekas) in float64 over each word's candidate cells, its
  ``k`` cheapest rows x ``k`` cheapest columns plus its current cell. Each word bids with its own
  epsilon, ``tolerance`` times its own cheapest cost, so frequent and rare words both converge in
  a few price rises and the result is within ``tolerance`` x the lower bound of the optimum of the
  candidate graph. A word's second-best value also counts a bound on every cell outside its
  candidates; a word for which an outside cell could be better gets a wider box (2k, 4k, ... up
  to ``max_width``), so at the end the epsilon conditions hold against the WHOLE table and the
  dual (``info["dual_bound"]``) certifies how far the result can be from the true optimum;
- ``greedy``: words claim their cheapest candidate cells in parallel rounds (the cheapest claim on a
  cell wins), leftovers are matched exactly among the remaining cells.

After ``sparse``, where the certified gap is still wide: ``profile_route`` (early in training every
word's costs follow one profile; prices on the cells of lowest profile score certify a bound and
seed a second auction) and ``polish`` (exact row / column re-solves on the full statistics).

All methods are deterministic, terminate (the auction has a bound on its rounds, after which the
words still bidding take their current cell or a free one) and never return a table that costs more
than the current one (then the current table is returned). Inputs never need to be held whole:
``CandidateBuilder`` takes the statistics a chunk of words at a time (from any device) and keeps
only each word's few cheapest rows and columns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

log = logging.getLogger(__name__)

class RoundInterrupted(Exception):
    """A stop request (SIGTERM, SIGUSR1, Ctrl-C) arrived during a reallocation round: no table."""


def poll(stop: Callable[[], bool] | None) -> None:
    """Raise ``RoundInterrupted`` when ``stop()`` says so (the solvers call this every round)."""
    if stop is not None and stop():
        raise RoundInterrupted("the reallocation round was interrupted by a stop request; no table was made")


EXACT_MAX_WORDS = 6_000
# the separable bound is computed when the auction's certified gap is above this, and stops once the
# gap is below the target
SEPARABLE_FROM_GAP = 5e-3
SEPARABLE_TARGET_GAP = 1e-3
# weights of the auction's prices in the mixed dual (the rest: the separable prices)
MIX_WEIGHTS = (0.5, 0.25, 0.75, 0.1)
GREEDY_EXACT_LEFTOVERS = 2_000
CHUNK_WORDS = 16_384


def default_top_k(vocab_size: int) -> int:
    """The first candidate box: 16 x 16 up to 50,000 words, 8 x 8 beyond (measured at V=136,912 on
    count-weighted Zipf costs: 16 ends 0.24% cheaper but takes 2.7x as long)."""
    return 16 if vocab_size <= 50_000 else 8


def default_tolerance(vocab_size: int) -> float:
    """1e-3 up to 50,000 words, 1e-2 beyond (measured at V=136,912 on count-weighted Zipf costs:
    1e-2 ends 0.006% cheaper than 1e-3 and takes 30% less time; the widest cases are bid-bound)."""
    return 1e-3 if vocab_size <= 50_000 else 1e-2


def candidate_width(vocab_size: int, top_k: int | None = None) -> int:
    """Rows and columns stored per word: room for one widening of the first box."""
    return 2 * (top_k or default_top_k(vocab_size))


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def lower_bound(row_loss, col_loss) -> float:
    """Every word in its own cheapest cell (ignoring that cells hold one word)."""
    return float(_np(row_loss).astype(np.float64).min(1).sum() + _np(col_loss).astype(np.float64).min(1).sum())


def allocation_cost(row_loss, col_loss, cells) -> float:
    row_loss, col_loss, cells = _np(row_loss), _np(col_loss), _np(cells)
    C = col_loss.shape[1]
    w = np.arange(len(cells))
    return float(row_loss[w, cells // C].astype(np.float64).sum() + col_loss[w, cells % C].astype(np.float64).sum())


# ---- candidates ----------------------------------------------------------------------------------
@dataclass
class Candidates:
    """Each word's ``K + 1`` cheapest rows and columns (sorted, move bonus applied) and its current cell.

    Costs are penalized: the word's current row and current column are cheaper by ``bonus[w]``.
    ``plain_*`` are the model's own costs (no bonus), for reporting.
    """

    rows: int
    cols: int
    current: np.ndarray          # int64 [V]
    bonus: np.ndarray            # float64 [V]
    row_idx: np.ndarray          # int32 [V, K+1]
    row_cost: np.ndarray         # float64 [V, K+1]
    col_idx: np.ndarray
    col_cost: np.ndarray
    cur_cost: np.ndarray         # float64 [V]: penalized cost of the current cell
    plain_cur: np.ndarray        # float64 [V]: the model's cost of the current cell
    plain_min: np.ndarray        # float64 [V]: the model's cost of the word's cheapest cell
    row_max: np.ndarray          # float64 [V]: the word's most expensive row (an upper bound)
    col_max: np.ndarray
    dense: tuple | None = None   # (row, col) float64 penalized, kept for small problems (exact)
    # (row_sum[R], col_sum[C], total[V]): the plain costs summed over words, and over each word's rows
    # and columns: the profile every word's costs share early in training (``profile_route``)
    profile: tuple | None = None

    @property
    def vocab_size(self) -> int:
        return len(self.current)

    @property
    def width(self) -> int:
        """The widest box a word can get: the stored rows/columns less the one kept for the bound
        on the cells outside the box (all of them where the table is that narrow)."""
        kr = self.row_idx.shape[1] - (self.row_idx.shape[1] < self.rows or self.row_idx.shape[1] > 1)
        kc = self.col_idx.shape[1] - (self.col_idx.shape[1] < self.cols or self.col_idx.shape[1] > 1)
        kr = self.rows if self.row_idx.shape[1] == self.rows else kr
        kc = self.cols if self.col_idx.shape[1] == self.cols else kc
        return max(1, min(kr, kc))

    def plain_cost(self, cells: np.ndarray, penalized: np.ndarray) -> np.ndarray:
        """The model's cost of ``cells`` given their penalized cost (adds the bonus back)."""
        C = self.cols
        same_r = (cells // C) == (self.current // C)
        same_c = (cells % C) == (self.current % C)
        return penalized + self.bonus * (same_r.astype(np.float64) + same_c)


class CandidateBuilder:
    """Streams the statistics a chunk of words at a time into ``Candidates``.

    ``add(start, row_chunk, col_chunk)`` with ``[n, R]`` / ``[n, C]`` costs of words
    ``start .. start+n`` (numpy or torch, any device: the top-k runs where the chunk lives);
    ``finish()`` once every word was added. ``keep_dense``: also keep the full penalized matrices
    (for the exact solver on small problems).
    """

    def __init__(self, vocab_size: int, rows: int, cols: int, current, bonus=None, width: int = 32,
                 keep_dense: bool = False):
        V = vocab_size
        self.V, self.R, self.C = V, rows, cols
        self.current = _np(current).astype(np.int64)
        if self.current.shape != (V,):
            raise ValueError(f"current has shape {self.current.shape}, expected ({V},)")
        self.bonus = np.zeros(V) if bonus is None else _np(bonus).astype(np.float64)
        self.kr, self.kc = min(width + 1, rows), min(width + 1, cols)
        self.row_idx = np.empty((V, self.kr), np.int32)
        self.row_cost = np.empty((V, self.kr), np.float64)
        self.col_idx = np.empty((V, self.kc), np.int32)
        self.col_cost = np.empty((V, self.kc), np.float64)
        self.cur_cost = np.empty(V)
        self.plain_cur = np.empty(V)
        self.plain_min = np.empty(V)
        self.row_max = np.empty(V)
        self.col_max = np.empty(V)
        self.seen = np.zeros(V, dtype=bool)
        self.dense = (np.empty((V, rows)), np.empty((V, cols))) if keep_dense else None
        self.row_sum, self.col_sum, self.total = np.zeros(rows), np.zeros(cols), np.zeros(V)

    def add(self, start: int, row_chunk, col_chunk, owned: bool = False) -> None:
        """``owned``: the chunks are the caller's to spend (the move bonus is then subtracted in place)."""
        r = torch.as_tensor(row_chunk).to(torch.float64)
        c = torch.as_tensor(col_chunk).to(torch.float64)
        n = r.shape[0]
        stop = start + n
        if r.shape != (n, self.R) or c.shape != (n, self.C) or stop > self.V:
            raise ValueError(f"chunk of words {start}..{stop}: shapes {tuple(r.shape)}, {tuple(c.shape)}")
        cur = torch.as_tensor(self.current[start:stop], device=r.device)
        cr, cc = cur // self.C, cur % self.C
        ar = torch.arange(n, device=r.device)
        plain_cur = r[ar, cr] + c[ar, cc]
        plain_min = r.min(1).values + c.min(1).values
        self.row_sum += r.sum(0).cpu().numpy()
        self.col_sum += c.sum(0).cpu().numpy()
        self.total[start:stop] = (r.sum(1) + c.sum(1)).cpu().numpy()
        bonus = torch.as_tensor(self.bonus[start:stop], device=r.device)
        if bool((self.bonus[start:stop] != 0).any()):
            if not owned and r.data_ptr() == torch.as_tensor(row_chunk).data_ptr():
                r = r.clone()
            if not owned and c.data_ptr() == torch.as_tensor(col_chunk).data_ptr():
                c = c.clone()
            r[ar, cr] -= bonus
            c[ar, cc] -= bonus
        rv, ri = _smallest(r, self.kr, cr)
        cv, ci = _smallest(c, self.kc, cc)
        self.row_cost[start:stop], self.row_idx[start:stop] = rv.cpu().numpy(), ri.cpu().numpy()
        self.col_cost[start:stop], self.col_idx[start:stop] = cv.cpu().numpy(), ci.cpu().numpy()
        self.cur_cost[start:stop] = (r[ar, cr] + c[ar, cc]).cpu().numpy()
        self.plain_cur[start:stop] = plain_cur.cpu().numpy()
        self.plain_min[start:stop] = plain_min.cpu().numpy()
        self.row_max[start:stop] = r.max(1).values.cpu().numpy()
        self.col_max[start:stop] = c.max(1).values.cpu().numpy()
        if self.dense is not None:
            self.dense[0][start:stop], self.dense[1][start:stop] = r.cpu().numpy(), c.cpu().numpy()
        self.seen[start:stop] = True

    def finish(self) -> Candidates:
        if not self.seen.all():
            raise ValueError(f"{int((~self.seen).sum())} words were never added to the candidate builder")
        return Candidates(self.R, self.C, self.current, self.bonus, self.row_idx, self.row_cost, self.col_idx,
                          self.col_cost, self.cur_cost, self.plain_cur, self.plain_min, self.row_max, self.col_max,
                          self.dense, (self.row_sum, self.col_sum, self.total))


def _smallest(x: torch.Tensor, k: int, first: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest entries of each row, ascending, as float64 values of ``x``, equal values in
    the order of their index counted from ``first`` (per row; 0 by default) round the row: a word
    with equal costs everywhere (a word absent from the epoch's statistics) gets the rows next to its
    current row, not the table's first rows, so such words do not all compete for the same cells.
    The search runs in float32 (half the memory traffic; torch.topk on float64 is the slower part of
    a round at V=793,471); rows where values equal to the k-th in float32 straddle the cut are
    resolved exactly by that order (the same set on every device), near-ties inside the set by the
    float64 values; the last value (the bound on every row left out) is lowered by 1e-6 relative to
    stay a bound."""
    n, m = x.shape
    ar = torch.arange(m, device=x.device)
    start = torch.zeros(n, dtype=torch.long, device=x.device) if first is None else first.to(x.device, torch.long)
    if k >= m:
        rot = (start[:, None] + ar) % m
        v, p = torch.sort(x.gather(1, rot), dim=1, stable=True)
        return v, rot.gather(1, p)
    xf = x.float()
    # one more than asked: the rows whose k-th and (k+1)-th values are equal have ties across the cut
    top, i = torch.topk(xf, k + 1, dim=1, largest=False, sorted=False)
    top, order = torch.sort(top, dim=1)
    i = i.gather(1, order[:, :k])
    cut = top[:, k - 1:k]
    straddle = torch.nonzero(top[:, k] == top[:, k - 1]).squeeze(1)
    if straddle.numel():  # equal values across the cut: take the first ones from ``first`` on
        i[straddle] = _resolve_ties(xf[straddle], i[straddle], top[straddle, :k], cut[straddle], start[straddle])
    # order: float64 value, then index counted from ``first`` (identical on every device)
    pos = (i - start[:, None]) % m
    pos, order = torch.sort(pos, dim=1)
    i = i.gather(1, order)
    v = x.gather(1, i)
    v, order = torch.sort(v, dim=1, stable=True)
    i = i.gather(1, order)
    v[:, -1] -= 1e-6 * v[:, -1].abs()
    return v, i


def _resolve_ties(xs: torch.Tensor, i: torch.Tensor, top: torch.Tensor, cut: torch.Tensor,
                  start: torch.Tensor) -> torch.Tensor:
    """The ``k`` smallest of rows ``xs`` whose k-th value ``cut`` has equals beyond the cut: the values
    below the cut (``i``, sorted by value ``top``: they come first), then the equal ones in the order
    of their index counted from ``start`` round the row. Most such rows are a word never seen (every
    cost equal but its current row's): the first equals sit right after ``start``, so a window of
    a few ``k`` is read first; rows with too few equals in it read their whole row."""
    n, m = xs.shape
    k = i.shape[1]
    below = (top < cut).sum(1, keepdim=True)
    need = k - below
    width = min(m, 4 * k + 4)
    ahead = torch.arange(width, device=xs.device)
    pos = (start[:, None] + ahead) % m
    equal = xs.gather(1, pos) == cut
    found = equal.sum(1, keepdim=True)
    # the first k equal positions of the window, in window order (the others last)
    order = torch.topk(torch.where(equal, ahead, width), k, dim=1, largest=False, sorted=True).indices
    ties = pos.gather(1, order)
    col = torch.arange(k, device=xs.device)[None, :]
    out = torch.where(col < below, i, ties.gather(1, (col - below).clamp_min(0)))
    short = torch.nonzero(found.squeeze(1) < need.squeeze(1)).squeeze(1)
    if short.numel():  # too few equals near ``start``: the whole row, keyed below / equal by index / above
        xr, cr = xs[short], cut[short]
        whole = torch.arange(m, device=xs.device, dtype=torch.int32)[None, :] - start[short, None].to(torch.int32)
        whole += m * (whole < 0)
        key = torch.where(xr < cr, -1, torch.where(xr == cr, whole, m))
        out[short] = torch.topk(key, k, dim=1, largest=False, sorted=False).indices
    return out


def build_candidates(row_loss, col_loss, current, bonus=None, width: int = 32, keep_dense: bool = False,
                     chunk: int = CHUNK_WORDS) -> Candidates:
    V, R = row_loss.shape
    C = col_loss.shape[1]
    b = CandidateBuilder(V, R, C, current, bonus, width, keep_dense)
    for a in range(0, V, chunk):
        b.add(a, row_loss[a:a + chunk], col_loss[a:a + chunk])
    return b.finish()


# ---- boxes of candidate cells --------------------------------------------------------------------
def _box(cand: Candidates, words: np.ndarray, k: int):
    """``(cells[n, k*k+1], cost[n, k*k+1], outside[n])`` for ``words`` at box width ``k``: the top-k
    rows x top-k columns, then the current cell (cost +inf where it is already in the box); outside:
    a lower bound on the cost of every cell not in the box (inf when the box is the whole table)."""
    C = cand.cols
    kr, kc = min(k, cand.row_idx.shape[1]), min(k, cand.col_idx.shape[1])
    ri, rc = cand.row_idx[words, :kr].astype(np.int64), cand.row_cost[words, :kr]
    ci, cc = cand.col_idx[words, :kc].astype(np.int64), cand.col_cost[words, :kc]
    n = len(words)
    cells = np.empty((n, kr * kc + 1), np.int64)
    cost = np.empty((n, kr * kc + 1), np.float64)
    cells[:, :-1] = (ri[:, :, None] * C + ci[:, None, :]).reshape(n, -1)
    cost[:, :-1] = (rc[:, :, None] + cc[:, None, :]).reshape(n, -1)
    cur = cand.current[words]
    cells[:, -1] = cur
    inside = (ri == (cur // C)[:, None]).any(1) & (ci == (cur % C)[:, None]).any(1)
    cost[:, -1] = np.where(inside, np.inf, cand.cur_cost[words])
    out = np.full(n, np.inf)
    if kr < cand.rows:
        nxt = cand.row_cost[words, kr] if kr < cand.row_idx.shape[1] else cand.row_cost[words, -1]
        out = np.minimum(out, nxt + cc[:, 0])
    if kc < cand.cols:
        nxt = cand.col_cost[words, kc] if kc < cand.col_idx.shape[1] else cand.col_cost[words, -1]
        out = np.minimum(out, rc[:, 0] + nxt)
    return cells, cost, out


@dataclass
class _Group:
    k: int
    words: np.ndarray
    cells: np.ndarray
    cost: np.ndarray
    outside: np.ndarray
    size: int = 0


def _best_two(g: _Group, at: np.ndarray, price: np.ndarray, chunk: int = 1 << 16):
    """``(j, v1, v2)``: for the group's words at rows ``at``, the position of the cheapest candidate
    after the prices, its value and the second cheapest value; a chunk of words at a time (the first
    round's bids over every word at once took 1.2 GB at V = 793,471)."""
    n = len(at)
    j, v1, v2 = np.empty(n, np.int64), np.empty(n), np.empty(n)
    for a in range(0, n, chunk):
        sl = at[a:a + chunk]
        value = g.cost[sl] + price[g.cells[sl]]
        jj = value.argmin(1)
        rows = np.arange(len(sl))
        j[a:a + chunk], v1[a:a + chunk] = jj, value[rows, jj]
        value[rows, jj] = np.inf
        v2[a:a + chunk] = value.min(1)
    return j, v1, v2


@dataclass
class AuctionResult:
    cells: np.ndarray
    price: np.ndarray
    width: np.ndarray
    rounds: int
    bids: int
    converged: bool
    widened: int
    info: dict = field(default_factory=dict)


def auction(cand: Candidates, k0: int = 8, tolerance: float = 1e-3,
            max_rounds: int = 20_000, max_bids_per_word: int = 400, tail: float = 5e-3,
            widen_budget: float = 2.0, tail_bids_per_word: int = 20, grow: float = 2.0,
            stop: Callable[[], bool] | None = None, lists: tuple | None = None,
            price0: np.ndarray | None = None) -> AuctionResult:
    """Forward auction (Jacobi bidding, float64 prices from zero) over widening candidate boxes.

    Word ``w`` bids with ``eps_w = tolerance * max(plain_min[w], floor)``: its own scale, so frequent and
    rare words alike settle in a few price rises. Every bid raises the price of the word's best cell
    to where its value equals the word's second-best value (counting the bound on the cells outside
    its box) plus ``eps_w``. A word whose outside bound is below its best value by more than
    ``eps_w`` gets a wider box before it bids (up to ``cand.width``). Prices start at zero and only
    rise, so empty cells keep price zero (more cells than words needs nothing more). No
    epsilon-scaling: with per-word epsilons, prices raised by frequent words' large epsilons left
    rare words climbing them in tiny steps (measured: no convergence at V=1,024).
    Work is bounded by ``max_rounds`` rounds and ``max_bids_per_word * V`` bids;
    past that, ``converged`` is False and the words still bidding have ``cells == -1``. The last
    few bidders of an auction walk long chains of displacements, one round per link, for little
    gain: once at most ``tail * V`` words are still bidding and the round count passed
    ``50 + sqrt(V)``, the last bidders go one at a time (a displacement chain then costs one bid
    per link, not one round), for at most ``tail_bids_per_word`` bids each (plus 20,000); whoever is
    still bidding after that is completed by ``solve`` with an exact assignment among the free
    cells (the dual bound stays certified).

    ``lists``: ``(cells[V, K], cost[V, K])``, every word's candidate cells given explicitly (cost
    ``+inf`` for a slot to skip) instead of boxes; no box widens then. ``price0``: the starting prices
    (zero by default; an auction may start from any prices >= 0).
    """
    V, n_cells = cand.vocab_size, cand.rows * cand.cols
    scale = np.maximum(cand.plain_min, 0.0)
    floor = max(float(scale.mean()) * 1e-3, 1e-9)
    scale = np.maximum(scale, floor)
    price = np.zeros(n_cells) if price0 is None else np.array(price0, dtype=np.float64)
    owner = np.full(n_cells, -1, np.int64)
    assigned = np.full(V, -1, np.int64)
    width = np.full(V, min(k0, cand.width), np.int64)
    widths = [min(k0, cand.width)]
    while widths[-1] < cand.width:
        widths.append(min(max(int(round(grow * widths[-1])), widths[-1] + 1), cand.width))
    groups: dict[int, _Group] = {}
    pos = np.zeros(V, np.int64)  # a word's row in its group
    counters = {"rounds": 0, "bids": 0, "widened": 0, "entries": 0}
    max_bids = max_bids_per_word * V

    def add_to_group(k: int, words: np.ndarray) -> None:
        # a box is k x k stored rows x columns plus the current cell
        size = min(k, cand.row_idx.shape[1]) * min(k, cand.col_idx.shape[1]) + 1
        g = groups.get(k)
        if g is None:
            cap = max(len(words), 1024)
            # int32 cells and float32 costs (prices stay float64): 8 bytes a candidate
            groups[k] = g = _Group(k, np.empty(cap, np.int64), np.empty((cap, size), np.int32),
                                   np.empty((cap, size), np.float32), np.empty(cap), 0)
        base, n = g.size, len(words)
        if base + n > len(g.words):  # grow the buffers geometrically: no copy per widening
            cap = max(2 * len(g.words), base + n)
            for name in ("words", "cells", "cost", "outside"):
                old = getattr(g, name)
                new = np.empty((cap, *old.shape[1:]), old.dtype)
                new[:base] = old[:base]
                setattr(g, name, new)
        g.words[base:base + n] = words
        for a in range(0, n, CHUNK_WORDS):  # the int64 / float64 boxes a chunk at a time (V x 65 x 16
            # bytes at once was 0.8 GB at V = 793,471: the round's peak)
            at = slice(base + a, base + min(n, a + CHUNK_WORDS))
            g.cells[at], g.cost[at], g.outside[at] = _box(cand, words[a:a + CHUNK_WORDS], k)
        g.size = base + n
        pos[words] = base + np.arange(n)
        width[words] = k
        counters["entries"] += n * size

    few, patience = int(tail * V), 50 + int(np.sqrt(V))
    # wider boxes cost memory (a word at width 32 holds 1,025 candidates): at most this many in all
    max_entries = max(int(widen_budget * V * (widths[0] ** 2 + 1)), 1 << 22)

    top = np.full(n_cells, -np.inf)  # per-round scratch: highest bid and lowest top bidder per cell
    low = np.full(n_cells, V, np.int64)

    def run(eps: np.ndarray, todo: np.ndarray) -> np.ndarray:
        while todo.size and counters["rounds"] < max_rounds and counters["bids"] < max_bids:
            if todo.size <= few and counters["rounds"] >= patience:
                break
            poll(stop)
            counters["rounds"] += 1
            bw, bc, bv, regrown = [], [], [], []
            kind = width[todo]  # fixed for the round: a word widened now bids next round
            for k in list(groups):
                g = groups[k]
                mine = todo[kind == k]
                if not mine.size:
                    continue
                at = pos[mine]
                # the second best in the box (the outside bound has no price in it: as a second best
                # it would cut every rise to eps once the box's prices are up)
                j, v1, v2 = _best_two(g, at, price)
                grow = (g.outside[at] < v1 - eps[mine]) & (k < widths[-1])
                if grow.any() and counters["entries"] >= max_entries:
                    grow[:] = False  # the memory for wider boxes is spent: bid within the box
                if grow.any():
                    add_to_group(widths[widths.index(k) + 1], mine[grow])
                    regrown.append(mine[grow])
                    counters["widened"] += int(grow.sum())
                    keep = ~grow
                    mine, j, v1, v2, at = mine[keep], j[keep], v1[keep], v2[keep], at[keep]
                target = g.cells[at, j]
                rise = np.where(np.isfinite(v2), v2 - v1, 0.0)  # a single candidate: raise by eps
                bw.append(mine)
                bc.append(target)
                bv.append(price[target] + rise + eps[mine])
            # words that widened this round bid next round with their wider box
            if not bw:
                todo = np.sort(np.concatenate(regrown))
                continue
            words, target, bid = np.concatenate(bw), np.concatenate(bc), np.concatenate(bv)
            counters["bids"] += len(words)
            # per cell: the highest bid, then the lowest word (scatter max/min: no sort of the bids)
            np.maximum.at(top, target, bid)
            at_top = bid == top[target]
            np.minimum.at(low, target[at_top], words[at_top])
            win = np.flatnonzero(at_top & (low[target] == words))
            top[target], low[target] = -np.inf, V  # clean for the next round
            won, winners = target[win], words[win]
            displaced = owner[won]
            displaced = displaced[displaced >= 0]
            assigned[displaced] = -1
            price[won] = bid[win]
            owner[won] = winners
            assigned[winners] = won
            lost = np.ones(len(words), bool)
            lost[win] = False
            todo = np.sort(np.concatenate([words[lost], displaced, *regrown]))
        return todo

    def sequential(eps: np.ndarray, todo: np.ndarray, budget: int) -> np.ndarray:
        """The last bidders one at a time (Gauss-Seidel): a displacement chain costs one bid per
        link instead of one Jacobi round per link."""
        queue = list(todo[::-1])
        while queue and budget > 0:
            budget -= 1
            if budget % 4096 == 0:
                poll(stop)
            w = queue.pop()
            k = int(width[w])
            g = groups[k]
            at = pos[w]
            value = g.cost[at] + price[g.cells[at]]
            j = int(value.argmin())
            v1 = value[j]
            if g.outside[at] < v1 - eps[w] and k < widths[-1] and counters["entries"] < max_entries:
                add_to_group(widths[widths.index(k) + 1], np.array([w]))
                counters["widened"] += 1
                queue.append(w)
                continue
            value[j] = np.inf
            v2 = value.min()
            c = int(g.cells[at, j])
            price[c] += (v2 - v1 if np.isfinite(v2) else 0.0) + eps[w]
            counters["bids"] += 1
            prev = owner[c]
            owner[c], assigned[w] = w, c
            if prev >= 0:
                assigned[prev] = -1
                queue.append(prev)
        return np.sort(np.asarray(queue, dtype=np.int64))

    if lists is None:
        add_to_group(widths[0], np.arange(V))
    else:
        cells, cost = lists
        k = cells.shape[1]
        widths[:] = [k]
        groups[k] = _Group(k, np.arange(V), np.ascontiguousarray(cells, dtype=np.int32),
                           np.ascontiguousarray(cost, dtype=np.float32), np.full(V, np.inf), V)
        pos[:] = np.arange(V)
        width[:] = k
    eps = tolerance * scale
    todo = run(eps, np.arange(V))
    if todo.size:  # the tail: one bidder at a time, within a bounded number of bids
        todo = sequential(eps, todo, budget=tail_bids_per_word * max(todo.size, 1) + 20_000)
    result = AuctionResult(assigned, price, width, counters["rounds"], counters["bids"], not todo.size,
                           counters["widened"])
    result.info["left_to_complete"] = int(todo.size)
    return result


# ---- the separable bound: two transportation problems -------------------------------------------
class Transport:
    """Prices ``u[n_bins] >= 0`` for "each word takes one bin, a bin holds at most ``capacity``
    words", from each word's candidate bins ``idx[V, K]`` (costs ``cost``, ascending) and a bound
    ``rest`` on the others. ``step()`` evaluates the certified bound
    ``sum_w min(min_k(cost + u[idx]), rest) - capacity * sum(u)`` at the current prices (the best
    seen is ``best``, at prices ``best_u``), then puts every word in its cheapest bin and raises the
    price of every bin over capacity by the least that sends all but ``capacity`` of its words
    elsewhere (the (capacity+1)-th largest margin to their second choice, a little more for ties).
    Returns False once no bin is over capacity (the prices then stay)."""

    def __init__(self, idx: np.ndarray, cost: np.ndarray, rest: np.ndarray, n_bins: int, capacity: int):
        self.idx, self.cost, self.rest, self.n_bins, self.capacity = idx, cost, rest, n_bins, capacity
        self.u = np.zeros(n_bins)
        self.best_u, self.best = self.u.copy(), -np.inf
        scale = float(np.abs(cost[:, 0]).mean()) if len(cost) else 1.0
        self.tiny = 1e-9 * max(scale, 1e-12)
        self.rows = np.arange(len(cost))
        self.done = False

    def step(self) -> bool:
        if self.done:
            return False
        idx, u, cap = self.idx, self.u, self.capacity
        val = self.cost + u[idx]
        j = val.argmin(1)
        v1 = val[self.rows, j]
        bound = float(np.minimum(v1, self.rest).sum()) - cap * float(u.sum())
        if bound > self.best:
            self.best, self.best_u = bound, u.copy()
        b = idx[self.rows, j]
        demand = np.bincount(b, minlength=self.n_bins)
        over = demand > cap
        if not over.any():
            self.done = True
            return False
        words = np.flatnonzero(over[b])
        vw = val[words]
        vw[np.arange(len(words)), j[words]] = np.inf
        second = vw.min(1) if idx.shape[1] > 1 else np.full(len(words), np.inf)
        margin = np.maximum(np.minimum(second, self.rest[words]) - v1[words], 0.0)
        # per bin over capacity, the (capacity+1)-th largest margin of its demanders sets the rise
        bw = b[words].astype(np.int32)
        order = np.argsort(bw, kind="stable")
        bw, margin = bw[order], margin[order]
        bins = np.flatnonzero(over)
        starts = np.searchsorted(bw, bins)
        stops = np.searchsorted(bw, bins, side="right")
        rise = np.zeros(self.n_bins)
        for i, a, z in zip(bins.tolist(), starts.tolist(), stops.tolist()):
            k = z - a - cap - 1  # ascending position of the (capacity+1)-th largest
            r = float(np.partition(margin[a:z], k)[k])
            rise[i] = r if np.isfinite(r) else 0.0
        self.u = u + np.where(over, rise + self.tiny + 1e-12 * np.abs(rise), 0.0)
        return True


def transport_prices(idx, cost, rest, n_bins: int, capacity: int, iters: int = 60,
                     stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, float]:
    """``(prices, bound)`` after at most ``iters`` steps of ``Transport`` (the best bound seen)."""
    t = Transport(np.asarray(idx), np.asarray(cost, dtype=np.float64), np.asarray(rest, dtype=np.float64), n_bins,
                  capacity)
    for _ in range(iters):
        poll(stop)
        if not t.step():
            break
    return t.best_u, t.best


def separable_bound(cand: Candidates, iters: int = 60, stop: Callable[[], bool] | None = None,
                    target: float = np.inf, patience: int = 4, min_gain: float = 1e-4) -> dict:
    """A certified lower bound from the separability of the cost, ``a[w, i] + b[w, j]``.

    Dropping "one word per cell" but keeping each row's capacity ``C`` and each column's capacity
    ``R`` splits the problem into two transportation problems (words x rows, words x columns); for
    any prices ``u, v >= 0``, ``sum_w [min_i(a + u) + min_j(b + v)] - C sum(u) - R sum(v)`` is a lower
    bound on the optimum, computed here from each word's stored rows/columns and the bound on the
    rest (``Transport``). Both problems step together, at most ``iters`` times; they stop early
    once the bound reaches ``target`` or gained less than ``min_gain`` (relative) over ``patience``
    steps. Returns ``{"bound", "row_prices", "col_prices", "steps"}``."""
    ts = []
    for idx, cost, n_bins, cap in ((cand.row_idx, cand.row_cost, cand.rows, cand.cols),
                                   (cand.col_idx, cand.col_cost, cand.cols, cand.rows)):
        idx_t = np.ascontiguousarray(idx, dtype=np.int64)
        cost_t = np.ascontiguousarray(cost, dtype=np.float64)
        if idx_t.shape[1] < n_bins:  # the last stored value bounds every row/column not stored
            rest = cost_t[:, -1].copy()
            idx_t, cost_t = np.ascontiguousarray(idx_t[:, :-1]), np.ascontiguousarray(cost_t[:, :-1])
        else:
            rest = np.full(idx_t.shape[0], np.inf)
        ts.append(Transport(idx_t, cost_t, rest, n_bins, cap))
    history, steps = [], 0
    for steps in range(1, iters + 1):
        poll(stop)
        moving = [t.step() for t in ts]
        history.append(ts[0].best + ts[1].best)
        if not any(moving) or history[-1] >= target:
            break
        if len(history) > patience and history[-1] - history[-1 - patience] <= min_gain * abs(history[-1]):
            break
    return {"bound": ts[0].best + ts[1].best, "row_prices": ts[0].best_u, "col_prices": ts[1].best_u,
            "steps": steps}


def price_dual_bound(cand: Candidates, price: np.ndarray, stop: Callable[[], bool] | None = None,
                     chunk: int = 4096) -> float:
    """The assignment LP's dual at cell prices ``price >= 0``, ``sum_w min_cells(cost + price) -
    sum_cells price``, a certified lower bound on the optimum, with each word's minimum taken
    exactly over all its stored rows x stored columns (and its current cell) and bounded below on
    the other cells through the prices' separable part: ``u_i = min_j price[i, j]``, ``v_j =
    min_i (price[i, j] - u_i)``, so a cell whose row (column) is not stored costs at least that
    row's bound plus ``min(u)`` plus the word's cheapest ``b + v`` (and symmetrically). Tighter than
    ``dual_bound`` where the auction's boxes are narrow: there a cell outside the box is bounded
    with price 0."""
    R, C = cand.rows, cand.cols
    p = np.asarray(price, dtype=np.float64).reshape(R, C)
    u = p.min(1)
    v = (p - u[:, None]).min(0)
    pt = torch.from_numpy(p.reshape(-1))
    ut, vt = torch.from_numpy(u), torch.from_numpy(v)
    u_min, v_min = float(u.min()), float(v.min())
    full_r, full_c = cand.row_idx.shape[1] >= R, cand.col_idx.shape[1] >= C
    kr = cand.row_idx.shape[1] - (0 if full_r else 1)  # the last stored value bounds the rest
    kc = cand.col_idx.shape[1] - (0 if full_c else 1)
    total = -float(p.sum())
    V = cand.vocab_size
    for a in range(0, V, chunk):
        poll(stop)
        w = slice(a, min(V, a + chunk))
        ri = torch.from_numpy(cand.row_idx[w, :kr].astype(np.int64))
        ci = torch.from_numpy(cand.col_idx[w, :kc].astype(np.int64))
        rc = torch.from_numpy(cand.row_cost[w, :kr])
        cc = torch.from_numpy(cand.col_cost[w, :kc])
        cells = ri[:, :, None] * C + ci[:, None, :]
        inner = (rc[:, :, None] + cc[:, None, :] + pt[cells]).flatten(1).min(1).values
        a_all = (rc + ut[ri]).min(1).values
        b_all = (cc + vt[ci]).min(1).values
        # a row (column) not stored costs at least its bound plus the smallest row (column) price
        out_r = torch.from_numpy(cand.row_cost[w, -1]) + u_min if not full_r else None
        out_c = torch.from_numpy(cand.col_cost[w, -1]) + v_min if not full_c else None
        a_all = a_all if out_r is None else torch.minimum(a_all, out_r)
        b_all = b_all if out_c is None else torch.minimum(b_all, out_c)
        best = inner
        if out_r is not None:
            best = torch.minimum(best, out_r + b_all)
        if out_c is not None:
            best = torch.minimum(best, a_all + out_c)
        cur = torch.from_numpy(cand.current[w])
        best = torch.minimum(best, torch.from_numpy(cand.cur_cost[w]) + pt[cur])
        total += float(best.sum())
    return total


def dual_bound(cand: Candidates, price: np.ndarray, width: np.ndarray) -> float:
    """A certified lower bound on the optimum over the WHOLE table (penalized costs), the better
    of two dual solutions: the auction's prices, ``sum_w min_cells(cost + price) - sum_cells price``
    (each word's minimum over its box and the bound on the cells outside it: prices are >= 0, so an
    outside cell costs at least that), and zero prices, ``sum_w min_cells cost`` (every word in its
    cheapest cell)."""
    total = -float(price.sum())
    for k in np.unique(width):
        words = np.flatnonzero(width == k)
        for a in range(0, len(words), CHUNK_WORDS):
            w = words[a:a + CHUNK_WORDS]
            cells, cost, out = _box(cand, w, int(k))
            u = np.minimum((cost + price[cells]).min(1), out)
            total += float(u.sum())
    zero = float(np.minimum(cand.row_cost[:, 0] + cand.col_cost[:, 0], cand.cur_cost).sum())
    return max(total, zero)


def _complete(cand: Candidates, cells: np.ndarray, exact_max: int = 5_000) -> np.ndarray:
    """Give every word without a cell one of the free cells. Up to ``exact_max`` such words: an
    exact assignment between them and the free cells (costs from the stored rows and columns, an
    upper bound where a row or column is not stored); beyond: its current cell when free, else the
    cheapest free cell of its box, else any free cell."""
    left = np.flatnonzero(cells < 0)
    if not left.size:
        return cells
    taken = np.zeros(cand.rows * cand.cols, bool)
    taken[cells[cells >= 0]] = True
    free = np.flatnonzero(~taken)
    if left.size <= exact_max and left.size * free.size <= 50_000_000:
        cost = np.empty((left.size, free.size))
        fr, fc = free // cand.cols, free % cand.cols
        for i, w in enumerate(left):
            rc = np.full(cand.rows, cand.row_max[w])
            rc[cand.row_idx[w]] = cand.row_cost[w]
            cc = np.full(cand.cols, cand.col_max[w])
            cc[cand.col_idx[w]] = cand.col_cost[w]
            cost[i] = rc[fr] + cc[fc]
            cost[i, free == cand.current[w]] = cand.cur_cost[w]
        w, c = linear_sum_assignment(cost)
        cells[left[w]] = free[c]
        return cells
    for w in left:
        cur = cand.current[w]
        if not taken[cur]:
            cells[w] = cur
            taken[cur] = True
    left = np.flatnonzero(cells < 0)
    if left.size:
        box, cost, _ = _box(cand, left, min(8, cand.width))
        for i, w in enumerate(left):
            for j in np.argsort(cost[i], kind="stable"):
                if np.isfinite(cost[i, j]) and not taken[box[i, j]]:
                    cells[w] = box[i, j]
                    taken[box[i, j]] = True
                    break
        left = np.flatnonzero(cells < 0)
        free = np.flatnonzero(~taken)
        cells[left] = free[: left.size]
    return cells


def _stored(idx: np.ndarray, cost: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """Each word's stored cost of its ``slot`` (row or column) in ``idx`` / ``cost``; NaN where the
    slot is not among the stored ones."""
    out = np.empty(len(slot))
    for a in range(0, len(slot), CHUNK_WORDS):
        w = slice(a, min(a + CHUNK_WORDS, len(slot)))
        hit = idx[w] == slot[w, None]
        out[w] = np.where(hit.any(1), np.where(hit, cost[w], 0.0).sum(1), np.nan)
    return out


def _penalized_cost(cand: Candidates, cells: np.ndarray) -> np.ndarray:
    """Per-word penalized cost of ``cells``: looked up in the stored rows/columns where possible.

    A row or column outside a word's stored ``K+1`` cheapest (only the fallback completion can pick
    one) is charged the word's most expensive row or column: an upper bound, so that the check
    "no worse than the current table" stays safe."""
    C = cand.cols
    rc = _stored(cand.row_idx, cand.row_cost, cells // C)
    cc = _stored(cand.col_idx, cand.col_cost, cells % C)
    rc = np.where(np.isnan(rc), cand.row_max, rc)
    cc = np.where(np.isnan(cc), cand.col_max, cc)
    return np.where(cells == cand.current, cand.cur_cost, rc + cc)


def _exact_dense(cand: Candidates) -> np.ndarray:
    row, col = cand.dense
    V, R = row.shape
    C = col.shape[1]
    cost = (row[:, :, None] + col[:, None, :]).reshape(V, R * C)
    words, cells = linear_sum_assignment(cost)
    out = np.empty(V, dtype=np.int64)
    out[words] = cells
    return out


def _greedy(cand: Candidates, k: int) -> np.ndarray:
    V = cand.vocab_size
    cells = np.full(V, -1, np.int64)
    taken = np.zeros(cand.rows * cand.cols, bool)
    box = cost = None
    for a in range(0, V, CHUNK_WORDS):
        b, c, _ = _box(cand, np.arange(a, min(V, a + CHUNK_WORDS)), k)
        box = b if box is None else np.concatenate([box, b])
        cost = c if cost is None else np.concatenate([cost, c])
    order = np.argsort(cost, axis=1, kind="stable")
    box = np.take_along_axis(box, order, 1)
    cost = np.take_along_axis(cost, order, 1)
    width = box.shape[1]
    nxt = np.zeros(V, np.int64)
    pending = np.arange(V)
    while True:
        pending = pending[nxt[pending] < width]
        pending = pending[np.isfinite(cost[pending, np.minimum(nxt[pending], width - 1)])]
        if not pending.size:
            break
        cand_cell = box[pending, nxt[pending]]
        blocked = taken[cand_cell]
        if blocked.any():
            nxt[pending[blocked]] += 1
            continue
        claim = cost[pending, nxt[pending]]
        by = np.lexsort((pending, claim, cand_cell))
        first = np.ones(by.size, dtype=bool)
        first[1:] = cand_cell[by][1:] != cand_cell[by][:-1]
        winners = pending[by[first]]
        cells[winners] = cand_cell[by[first]]
        taken[cells[winners]] = True
        pending = pending[cells[pending] < 0]
    left = np.flatnonzero(cells < 0)
    if left.size and left.size <= GREEDY_EXACT_LEFTOVERS and cand.dense is not None:
        free = np.flatnonzero(~taken)
        row, col = cand.dense
        sub = row[left][:, free // cand.cols] + col[left][:, free % cand.cols]
        w, c = linear_sum_assignment(sub)
        cells[left[w]] = free[c]
    return _complete(cand, cells)


# the polish runs on every table up to this many words; beyond, only where the certified gap after the
# auction is above POLISH_FROM_GAP: its group assignments grow as the cube of a group (891 words at
# V = 793,471: 39 s for one sweep on count-weighted Zipf costs, which the auction leaves 3.5% from
# its bound; on the One Billion Word rehearsal's statistics, 15.9%, a sweep takes 1.4 s)
POLISH_ALWAYS_UP_TO = 200_000
POLISH_FROM_GAP = 0.05


# beyond POLISH_ALWAYS_UP_TO words the polish's assignments are bounded to this much work (``polish``'s
# units, about n * n * slots per group of n moving words; 2.4e10 took 5.5 s on the One Billion Word
# rehearsal's statistics): where many words move (a first epoch that saw more words) a sweep over
# 891-word groups could take minutes
POLISH_WORK = 5e10


def polish_work(vocab_size: int) -> float:
    """The polish's work bound for a table of ``vocab_size`` words (none up to POLISH_ALWAYS_UP_TO)."""
    return POLISH_WORK if vocab_size > POLISH_ALWAYS_UP_TO else np.inf

# sweeps of ``polish`` (a sweep stops it early when it gains under 1e-5 relative; at V = 136,912 on
# count-weighted Zipf costs the second sweep gains a tenth of the first)
POLISH_SWEEPS = 2


def polish(cand: Candidates, cells: np.ndarray, gather: Callable, sweeps: int = 1,
           stop: Callable[[], bool] | None = None, min_gain: float = 1e-5,
           work: float = np.inf) -> tuple[np.ndarray, np.ndarray, dict]:
    """Alternating exact re-solves on the full statistics: with every word's row fixed, the words of
    each row take that row's columns by an exact assignment (scipy's ``linear_sum_assignment``) on
    their costs of EVERY column; then, with every column fixed, the rows within each column; and so
    on for ``sweeps`` sweeps (fewer when a sweep gains less than ``min_gain`` relative). The
    candidate boxes see each word's few cheapest rows x columns; where many words want the same rows
    and columns (a model early in training predicts the same few for every word) the optimum puts
    most of them far outside their boxes, and this is what reaches there.

    ``gather(words, side)``: the plain costs of ``words`` for every row (``side`` 0, ``[n, R]``) or
    column (1, ``[n, C]``), float64, numpy or torch on any device. Only the words not in their
    cheapest slot move, and the words sitting in one of those words' cheapest slots (among their
    own slots and the group's free ones; on the One Billion Word rehearsal's statistics two sweeps
    took 2.5 s and reached 0.04% from moving every word of every group, which took 39.6 s); a
    group whose words all sit in their cheapest slot is skipped; a group's slots change only when
    its assignment is strictly cheaper, so the cost never rises and ties keep words still. Returns
    ``(cells, penalized cost per word, info)``; the costs are exact (from the full statistics, not
    the stored candidates): a word no group re-solved is read from them. ``work`` bounds the
    assignments' work (``info["polish_work"]``, about ``n * n * slots`` for a group of ``n`` moving
    words): the first group that would pass it ends the polish there (``info["polish_spent"]``)."""
    if sweeps < 1:
        raise ValueError(f"polish needs at least one sweep, got {sweeps}")
    R, C = cand.rows, cand.cols
    V = len(cells)
    cells = cells.copy()
    cur_slot = (cand.current // C, cand.current % C)
    best = (cand.row_idx[:, 0].astype(np.int64), cand.col_idx[:, 0].astype(np.int64))
    # each side's penalized cost per word, exact: from the stored candidates where the slot is stored
    # (NaN elsewhere, and for the last stored value where not all are stored: it is lowered, a bound)
    part = []
    for side, (idx, cost) in enumerate(((cand.row_idx, cand.row_cost), (cand.col_idx, cand.col_cost))):
        exact = idx.shape[1] if idx.shape[1] >= (R if side == 0 else C) else idx.shape[1] - 1
        part.append(_stored(idx[:, :exact], cost[:, :exact], cells // C if side == 0 else cells % C))
    info = {"polish_gain": 0.0, "polish_groups": 0, "polish_words": 0, "polish_sweeps": 0, "polish_work": 0.0}

    def solve_group(side: int, g: int, words: np.ndarray, happy: np.ndarray) -> float:
        """Re-solve the words of group ``g`` that are not ``happy``, over their slots and the free ones."""
        n_slots = C if side == 1 else R
        slot_all = cells[words] % C if side == 1 else cells[words] // C
        move = words[~happy]
        free = np.ones(n_slots, bool)
        free[slot_all] = False
        avail = np.concatenate([slot_all[~happy], np.flatnonzero(free)])
        cost = np.array(_np(gather(move, side)), dtype=np.float64)
        n = len(move)
        rows = np.arange(n)
        cost[rows, cur_slot[side][move]] -= cand.bonus[move]
        old = cost[rows, slot_all[~happy]]
        sub = cost[:, avail]
        r, c = linear_sum_assignment(sub)
        new_slot = np.empty(n, np.int64)
        new_slot[r] = avail[c]
        new = cost[rows, new_slot]
        info["polish_groups"] += 1
        info["polish_words"] += n
        if new.sum() < old.sum() - 1e-12 * abs(old.sum()):
            cells[move] = new_slot * C + g if side == 0 else g * C + new_slot
            part[side][move] = new
            return float(old.sum() - new.sum())
        part[side][move] = old
        return 0.0

    spent = False
    for sweep in range(sweeps):
        gain = 0.0
        for side in (1, 0):
            if spent:
                break
            poll(stop)
            key = cells // C if side == 1 else cells % C  # the fixed coordinate: groups
            slot = cells % C if side == 1 else cells // C
            unhappy = (slot != best[side]) | np.isnan(part[side])
            order = np.argsort(key, kind="stable")
            bounds = np.searchsorted(key[order], np.arange((R if side == 1 else C) + 1))
            for g in np.unique(key[unhappy]).tolist():
                poll(stop)
                words = order[bounds[g]:bounds[g + 1]]
                happy = ~unhappy[words]
                # a word in its cheapest slot moves too where that slot is another word's cheapest
                wanted = np.zeros(R if side == 0 else C, bool)
                wanted[best[side][words[~happy]]] = True
                happy &= ~wanted[slot[words]]
                n = int((~happy).sum())
                # scipy's assignment of n words to n + (free slots) slots: about n * n * slots operations
                units = float(n) * n * (n + (R if side == 0 else C) - len(words))
                if info["polish_work"] + units > work:
                    spent = True  # the work is bounded: the groups left keep their words where they are
                    break
                info["polish_work"] += units
                gain += solve_group(side, g, words, happy)
        info["polish_sweeps"] = sweep + 1
        info["polish_gain"] += gain
        total = float(np.nansum(part[0]) + np.nansum(part[1]))
        if spent or gain <= min_gain * abs(total):
            break
    info["polish_spent"] = spent
    for side in (0, 1):  # a word no group re-solved, in a slot its stored costs do not hold: read it
        left = np.flatnonzero(np.isnan(part[side]))
        for a in range(0, len(left), CHUNK_WORDS):
            w = left[a:a + CHUNK_WORDS]
            here = cells[w] // C if side == 0 else cells[w] % C
            got = np.array(_np(gather(w, side)), dtype=np.float64)[np.arange(len(w)), here]
            part[side][w] = got - cand.bonus[w] * (here == cur_slot[side][w])
    return cells, part[0] + part[1], info


# ---- profile prices: early in training every word's costs follow one shared profile ---------------
# The profile route runs where the certified gap after the auction (before any polish) is above this.
PROFILE_FROM_GAP = 0.05
# word x priced-cell sums one pass of the profile bound may take (35,395 words x 35,395 cells on
# the One Billion Word rehearsal's statistics: about 4 s on 2 cores); fewer priced cells beyond
PROFILE_BUDGET = 1_500_000_000
# the share of the profile's own dual the starting prices take (on the One Billion Word rehearsal's
# statistics the bound is flat between 0.5 and 0.6 and falls on both sides: 0.3 -> 804K, 0.55 -> 810K,
# 0.9 -> 803K nats)
PROFILE_WEIGHT = 0.6
PROFILE_LIST = 64   # cells per word from the priced ones, cheapest first after the prices
PROFILE_BOX = 8     # and its own cheapest rows x columns
# the route polishes its table for at most this many sweeps (on the One Billion Word rehearsal's
# statistics the first sweep gains 17.8K nats in 2.6 s, the second 0.9K more in 2.6 s)
PROFILE_POLISH_SWEEPS = 1
# the second pass's prices: this share of the route's auction's prices, the rest the profile's (on the
# One Billion Word rehearsal's statistics: 0 -> 810.1K, 0.25 -> 814.7K, 0.5 -> 809.7K nats)
PROFILE_MIX = 0.25


@dataclass
class ProfilePrices:
    """Prices on the ``K`` cells of lowest profile score ``s[i, j] = l[i] + m[j]``: ``cells[K]`` in
    rising score, ``price[K]``; each row's priced cells are the first ``prefix[i]`` of ``col_order``
    (the columns by rising ``m``), so every cell left out costs its plain cost."""

    cells: np.ndarray
    price: np.ndarray
    col_order: np.ndarray
    prefix: np.ndarray

    def by_row(self, price: np.ndarray, cols: int) -> np.ndarray:
        """``price[K]`` laid out as ``[R, max(prefix)]``: row ``i``'s priced cells in ``col_order``."""
        rank = np.empty(cols, np.int64)
        rank[self.col_order] = np.arange(cols)
        out = np.zeros((len(self.prefix), max(int(self.prefix.max(initial=0)), 1)))
        out[self.cells // cols, rank[self.cells % cols]] = price
        return out


def profile_prices(cand: Candidates, max_cells: int, weight: float = PROFILE_WEIGHT) -> ProfilePrices | None:
    """The assignment's exact dual where every word's cost is a multiple of one profile, scaled.

    With ``cost(w, (i, j)) = n_w * s[i, j]`` the optimum gives the ``k``-th largest ``n`` the cell of
    ``k``-th lowest score, and the prices ``p_k = sum_{m >= k} n_m (s_{m+1} - s_m)`` make it exact.
    Here ``n_w`` is the word's summed cost (its row and column costs added) and ``s`` the summed costs
    of every word per row plus per column over their total: the best rank-one fit in that sense.
    Only the ``max_cells`` cells of lowest score get a price (the others 0, still a valid dual);
    ``weight`` scales them (the words' own deviations from the profile make the full price too
    high). None when no word has a cost."""
    # rounded to float32: sums taken on another device, in another order, differ in the last bits of a
    # float64, and the prices (so the route's table) must not
    row_sum, col_sum, total = (np.asarray(x, np.float32).astype(np.float64) for x in cand.profile)
    R, C = cand.rows, cand.cols
    n = np.maximum(total, 0.0)
    N = float(n.sum())
    K = min(int(max_cells), int((n > 0).sum()), R * C - 1)
    if N <= 0 or K < 1:
        return None
    m = col_sum / N
    col_order = np.argsort(m, kind="stable")
    rank = np.empty(C, np.int64)
    rank[col_order] = np.arange(C)
    score = ((row_sum / N)[:, None] + m[None, :]).reshape(-1)
    # by score, then by the column's rank: each row's priced cells are a prefix of ``col_order``
    order = np.lexsort((np.tile(rank, R), score))[:K + 1]
    steps = np.diff(score[order])
    scale = -np.sort(-n)[:K]
    price = weight * np.cumsum((scale * steps)[::-1])[::-1]
    cells = order[:K]
    return ProfilePrices(cells, price, col_order, np.bincount(cells // C, minlength=R))


def _profile_pass(cand: Candidates, gather: Callable, words: np.ndarray, pp: ProfilePrices, price: np.ndarray,
                  keep: int = 0, stop: Callable[[], bool] | None = None, budget: int = 1 << 23):
    """One pass over ``words``' full statistics with cell prices ``price[K]`` on ``pp.cells`` (0
    elsewhere): each word's minimum over EVERY cell of penalized cost plus price, lowered by the
    float32 rounding it could carry (a certified part of the dual); with ``keep``, also its ``keep``
    cheapest priced cells after the prices, and their exact penalized costs. The priced cells are
    summed a row at a time from contiguous column ranges; the others through each word's suffix
    minima of its columns in ``col_order`` (row ``i``'s unpriced columns are those from ``prefix[i]``)."""
    R, C = cand.rows, cand.cols
    by_row = pp.by_row(price, C)
    rows = np.flatnonzero(pp.prefix)
    K = int(pp.prefix.sum())
    # the priced cells in the order the pass lays them out: row by row, each in ``col_order``
    layout = np.concatenate([i * C + pp.col_order[:pp.prefix[i]] for i in rows]) if K else np.zeros(0, np.int64)
    low = np.empty(len(words))
    kept = (np.empty((len(words), keep), np.int64), np.empty((len(words), keep))) if keep else None
    chunk = max(16, min(4096, (budget if keep else 4 * budget) // max(K, 1)))  # no buffer without keep
    price_max = float(price.max(initial=0.0))
    for a in range(0, len(words), chunk):
        poll(stop)
        w = words[a:a + chunk]
        rt = torch.as_tensor(gather(w, 0)).to(torch.float64)
        ct = torch.as_tensor(gather(w, 1)).to(torch.float64)
        dev = rt.device
        n = len(w)
        ar = torch.arange(n, device=dev)
        cur = torch.as_tensor(cand.current[w], device=dev)
        bonus = torch.as_tensor(cand.bonus[w], device=dev)
        rt[ar, cur // C] -= bonus
        ct[ar, cur % C] -= bonus
        rf = rt.float()
        cs = ct[:, torch.as_tensor(pp.col_order, device=dev)].float()
        suffix = torch.flip(torch.cummin(torch.flip(cs, [1]), 1).values, [1])
        suffix = torch.cat([suffix, torch.full((n, 1), float("inf"), device=dev)], 1)
        best = (rf + suffix[:, torch.as_tensor(pp.prefix, device=dev)]).amin(1)
        if K:
            pr = torch.as_tensor(by_row, dtype=torch.float32, device=dev)
            # with ``keep`` every priced cell's value is laid out for the top-k; without, a row's term
            # is the same for all its cells: the minimum over the row's prices first, one row at a time
            buf = torch.empty((n, K if keep else int(pp.prefix.max())), dtype=torch.float32, device=dev)
            at = 0
            for i in rows.tolist():
                L = int(pp.prefix[i])
                part = buf[:, at:at + L]
                torch.add(cs[:, :L], pr[i, :L], out=part)
                if keep:
                    part += rf[:, i:i + 1]
                    at += L
                else:
                    best = torch.minimum(best, part.amin(1) + rf[:, i])
            if keep:
                best = torch.minimum(best, buf.amin(1))
                k = min(keep, K)
                idx = torch.topk(buf, k, dim=1, largest=False, sorted=True).indices.cpu().numpy()
                cells = layout[idx]
                ri = torch.as_tensor(cells // C, device=dev)
                ci = torch.as_tensor(cells % C, device=dev)
                exact = (rt.gather(1, ri) + ct.gather(1, ci)).cpu().numpy()
                kept[0][a:a + n, :k], kept[1][a:a + n, :k] = cells, exact
                if k < keep:
                    kept[0][a:a + n, k:], kept[1][a:a + n, k:] = cells[:, :1], np.inf
        # float32 rounding: at most a few units in the last place of the three terms at the minimum;
        # with costs >= 0 before the bonus (and prices >= 0) each term is at most the minimum plus
        # twice the bonus
        best = best.double()
        if bool(((rt.amin(1) + bonus >= 0) & (ct.amin(1) + bonus >= 0)).all()):
            size = 3 * best.abs() + 6 * bonus
        else:
            size = rt.abs().amax(1) + ct.abs().amax(1) + price_max
        low[a:a + n] = (best - 4 * 2.0 ** -24 * size).cpu().numpy()
    return low, kept


def _subset(cand: Candidates, words: np.ndarray) -> Candidates:
    """The candidates of ``words`` only (the same table): a problem of those words alone."""
    pick = ("current", "bonus", "row_idx", "row_cost", "col_idx", "col_cost", "cur_cost", "plain_cur", "plain_min",
            "row_max", "col_max")
    return Candidates(cand.rows, cand.cols, *(getattr(cand, f)[words] for f in pick))


def profile_route(cand: Candidates, gather: Callable, tolerance: float | None, sweeps: int,
                  stop: Callable[[], bool] | None = None, budget: int = PROFILE_BUDGET,
                  weight: float = PROFILE_WEIGHT, keep: int = PROFILE_LIST, box: int = PROFILE_BOX,
                  floor: float = -np.inf):
    """A table and a certified bound where the words' costs share one profile, as early in training
    (a model that predicts nearly the same rows and columns whatever the word): there the optimum
    spreads the words with any cost over the cells of lowest profile score, far outside their own
    cheapest rows x columns, and a dual needs prices on every such cell.

    1. ``profile_prices``: the profile's exact dual on the cells of lowest score, as many as the
       words with a cost (fewer where ``budget`` words x cells would be passed).
    2. One pass over those words' full statistics (``gather``): the dual at those prices (a certified
       bound) and each word's ``keep`` cheapest priced cells after the prices.
    3. An auction of those words alone over those cells, their own ``box`` x ``box`` cheapest cells
       and their current cell, from the profile's prices; words without any cost keep their cells
       where they are free and take a free one otherwise; ``polish`` for ``sweeps`` sweeps (at most
       ``PROFILE_POLISH_SWEEPS``).
    4. A second pass (minima only): the dual at ``PROFILE_MIX`` of the auction's prices on the
       priced cells plus the rest of the profile's.
    The pass is cheap next to the rest: where its bound is not above ``floor`` (the bound already
    certified) the costs do not follow one profile, and the route stops there with no table.
    Returns ``(cells, penalized cost per word, bound, info)`` (cells and costs None when it stopped
    after the pass), or None where no word has a cost or the budget allows too few priced cells."""
    t0 = time.perf_counter()
    R, C = cand.rows, cand.cols
    active = np.flatnonzero(np.asarray(cand.profile[2], np.float32) > 0)  # as ``profile_prices`` counts them
    if not active.size:
        return None
    pp = profile_prices(cand, budget // active.size, weight)
    if pp is None or len(pp.cells) < min(active.size, 4 * R):
        return None
    info: dict = {"profile_words": int(active.size), "profile_cells": int(len(pp.cells))}
    low, (lc, lv) = _profile_pass(cand, gather, active, pp, pp.price, keep, stop)
    idle = np.ones(cand.vocab_size, bool)
    idle[active] = False
    # a word without any cost: its cheapest cell (the prices only add)
    rest = float(np.minimum(cand.row_cost[idle, 0] + cand.col_cost[idle, 0], cand.cur_cost[idle]).sum())
    bound = float(low.sum()) + rest - float(pp.price.sum())
    info["profile_bound"] = bound
    if bound <= floor:  # the costs do not follow one profile closely enough to beat the bound we have
        info["profile_seconds"] = time.perf_counter() - t0
        return None, None, bound, info
    sub = _subset(cand, active)
    bc, bv, _ = _box(sub, np.arange(active.size), min(box, sub.width))
    cells = np.concatenate([lc, bc], 1)
    cost = np.concatenate([lv, bv], 1)
    order = np.argsort(cells, axis=1, kind="stable")
    cells, cost = np.take_along_axis(cells, order, 1), np.take_along_axis(cost, order, 1)
    cost[:, 1:][cells[:, 1:] == cells[:, :-1]] = np.inf  # a cell listed twice bids once
    price0 = np.zeros(R * C)
    price0[pp.cells] = pp.price
    poll(stop)
    res = auction(sub, tolerance=tolerance or default_tolerance(active.size), lists=(cells, cost), price0=price0,
                  stop=stop)
    info.update({"profile_rounds": res.rounds, "profile_bids": res.bids, "profile_converged": res.converged})
    table = cand.current.copy()
    table[active] = _complete(sub, res.cells.copy())
    taken = np.zeros(R * C, bool)
    taken[table[active]] = True
    moved = np.flatnonzero(idle & taken[cand.current])  # their cell went to a word with a cost
    table[moved] = -1
    table = _complete(cand, table)
    poll(stop)
    if sweeps > 0:
        table, pen, more = polish(cand, table, gather, min(sweeps, PROFILE_POLISH_SWEEPS), stop,
                                  work=polish_work(cand.vocab_size))
        info.update(profile_polish_gain=more["polish_gain"], profile_polish_work=more["polish_work"])
    else:
        pen = _penalized_cost(cand, table)
    # the dual is concave: between the profile's prices and the auction's a point can beat both
    mixed = PROFILE_MIX * res.price[pp.cells] + (1.0 - PROFILE_MIX) * pp.price
    low2, _ = _profile_pass(cand, gather, active, pp, mixed, 0, stop)
    info["profile_mixed_bound"] = float(low2.sum()) + rest - float(mixed.sum())
    bound = max(bound, info["profile_mixed_bound"])
    info["profile_seconds"] = time.perf_counter() - t0
    return table, pen, bound, info


def _tighten(cand: Candidates, info: dict, objective: float, dual: float, auction_price: np.ndarray | None,
             stop: Callable[[], bool] | None) -> float:
    """More certified bounds where the first leaves a gap, each stopping once the gap is below
    ``SEPARABLE_TARGET_GAP``: the auction's prices with the exact minimum over the stored rows x
    columns (``price_dual_bound``), the separable bound, and the LP dual along the segment between
    the auction's prices and the separable prices ``u_i + v_j`` (the dual is concave: points of
    the segment can beat both ends; on PTB statistics the gap went 13.4% -> 1.2%). Returns the best."""
    t0 = time.perf_counter()
    target = objective - SEPARABLE_TARGET_GAP * abs(objective)
    if auction_price is not None:
        info["price_bound"] = price_dual_bound(cand, auction_price, stop)
        dual = max(dual, info["price_bound"])
    if dual < target:
        sep = separable_bound(cand, stop=stop, target=target)
        info.update({"separable_bound": sep["bound"], "separable_steps": sep["steps"]})
        dual = max(dual, sep["bound"])
        if auction_price is not None and dual < target:
            ps = (sep["row_prices"][:, None] + sep["col_prices"][None, :]).reshape(-1)
            best, best_lam = -np.inf, None
            for lam in MIX_WEIGHTS:
                d = price_dual_bound(cand, lam * auction_price + (1.0 - lam) * ps, stop)
                if d > best:
                    best, best_lam = d, lam
                if best >= target:
                    break
            info.update({"mixed_bound": best, "mixed_weight": best_lam})
            dual = max(dual, best)
    info["bound_seconds"] = time.perf_counter() - t0
    return dual


def solve(cand: Candidates, method: str = "auto", top_k: int | None = None, tolerance: float | None = None,
          max_rounds: int = 20_000, stop: Callable[[], bool] | None = None, gather: Callable | None = None,
          polish_sweeps: int = POLISH_SWEEPS, profile: bool = True) -> tuple[np.ndarray, dict]:
    """``(cells[V], info)`` for candidates ``cand``: see the module doc for the methods.

    ``info``: ``objective`` (penalized cost of the result), ``objective_current`` (of the current
    table), ``cost_after`` / ``cost_before`` / ``lower_bound`` (the model's own costs: the result,
    the current table, every word in its cheapest cell), ``dual_bound`` (a certified lower bound on
    the penalized optimum over the whole table: the best of the auction's dual ``auction_bound``,
    and where that leaves a gap, ``price_bound``, ``separable_bound`` and ``mixed_bound``: see
    ``_tighten``), ``gap``
    (``objective - dual_bound`` over ``|objective|``), and the solver's counters. ``gather``: the full
    statistics (see ``polish``), which then improves the table for ``polish_sweeps`` sweeps;
    ``profile``: where the gap is still above ``PROFILE_FROM_GAP``, try ``profile_route`` too.
    """
    t0 = time.perf_counter()
    V = cand.vocab_size
    if method == "auto":
        method = "exact" if V <= EXACT_MAX_WORDS and cand.dense is not None else "sparse"
    info: dict = {"method": method}
    dual = float("nan")
    auction_price = None
    if method == "exact":
        if cand.dense is None:
            raise ValueError("method 'exact' needs the dense costs: build the candidates with keep_dense=True")
        cells = _exact_dense(cand)
        dual = None  # exact: the objective itself
    elif method == "sparse":
        k0 = top_k or default_top_k(V)
        tolerance = tolerance or default_tolerance(V)
        # past 50,000 words a wider box grows by half (8 -> 12 -> 16): widened words' bids dominate
        res = auction(cand, k0=min(k0, cand.width), tolerance=tolerance, max_rounds=max_rounds,
                      grow=2.0 if V <= 50_000 else 1.5, stop=stop)
        poll(stop)
        info["auction_bound"] = dual = dual_bound(cand, res.price, res.width)
        auction_price = res.price
        cells = _complete(cand, res.cells.copy())
        info.update({"rounds": res.rounds, "bids": res.bids, "converged": res.converged, "widened": res.widened,
                     "max_width": int(res.width.max()), **res.info})
    elif method == "greedy":
        cells = _greedy(cand, min(top_k or 8, cand.width))
        dual = info["trivial_bound"] = float(np.minimum(cand.row_cost[:, 0] + cand.col_cost[:, 0],
                                                         cand.cur_cost).sum())  # every word in its cheapest cell
    else:
        raise ValueError(f"unknown reallocation method '{method}': use exact, sparse, greedy or auto")
    if cand.dense is not None:
        row, col = cand.dense
        w = np.arange(V)
        pen = row[w, cells // cand.cols] + col[w, cells % cand.cols]
    else:
        pen = _penalized_cost(cand, cells)
    objective, current = float(pen.sum()), float(cand.cur_cost.sum())
    if objective > current:  # never worse than the table we have
        log.warning("reallocation (%s) found no table cheaper than the current one (%.6g > %.6g): keeping it",
                    method, objective, current)
        cells, pen, objective = cand.current.copy(), cand.cur_cost.copy(), current
        info["kept_current"] = True
    if dual is None:
        dual = objective
    elif (objective - dual) > SEPARABLE_FROM_GAP * abs(objective):
        dual = _tighten(cand, info, objective, dual, auction_price, stop)
    routed = False
    if (profile and gather is not None and method == "sparse" and cand.profile is not None and np.isfinite(dual)
            and (objective - dual) > PROFILE_FROM_GAP * abs(objective)):
        # the auction's boxes leave a wide gap: perhaps the costs follow one profile (profile_route); its
        # table comes polished, and replaces the auction's when cheaper (whose polish is then skipped)
        out = profile_route(cand, gather, None, polish_sweeps, stop, floor=dual)
        if out is not None:
            other, other_pen, bound, more = out
            info.update(more)
            dual = max(dual, bound)
            if other is not None and float(other_pen.sum()) < objective:
                cells, pen, objective = other, other_pen, float(other_pen.sum())
                info["profile_table"] = routed = True
    wanted = V <= POLISH_ALWAYS_UP_TO or (objective - dual) > POLISH_FROM_GAP * abs(objective)
    if gather is not None and polish_sweeps > 0 and method != "exact" and wanted and not routed:
        poll(stop)
        tp = time.perf_counter()
        cells, pen, more = polish(cand, cells, gather, polish_sweeps, stop,
                                  work=polish_work(V))
        objective = float(pen.sum())
        info.update(more, polish_seconds=time.perf_counter() - tp)
    plain = cand.plain_cost(cells, pen)
    info.update({
        "objective": objective, "objective_current": current, "dual_bound": dual,
        "gap": (objective - dual) / max(abs(objective), 1e-300) if np.isfinite(dual) else float("nan"),
        "cost_after": float(plain.sum()), "cost_before": float(cand.plain_cur.sum()),
        "lower_bound": float(cand.plain_min.sum()), "seconds": time.perf_counter() - t0,
    })
    return cells, info


def reallocate(row_loss, col_loss, current, method: str = "auto", top_k: int | None = None,
               bonus=None, return_info: bool = False, tolerance: float | None = None,
               stop: Callable[[], bool] | None = None, polish_sweeps: int = POLISH_SWEEPS, profile: bool = True):
    """New cell (``row * C + col``) of every word: a permutation into the ``R*C >= V`` cells.

    ``method``: ``exact``, ``sparse``, ``greedy`` or ``auto`` (exact up to a few thousand words,
    sparse beyond). ``top_k``: the first candidate box is ``top_k`` rows x ``top_k`` columns (default
    16 up to 50k words, 8 beyond); ``sparse`` widens it to ``2 * top_k`` where needed. ``bonus[V]``: subtracted from
    each word's cost of its current row and again of its current column (the move penalty).
    ``return_info``: also return the dict of ``solve``. ``stop``: polled every auction round; when
    it returns True the round ends with ``RoundInterrupted`` and no table. ``polish_sweeps``: sweeps of
    exact row / column re-solves on the full costs after the auction (``polish``; 0: none).
    ``profile``: allow ``profile_route`` where the auction leaves a wide gap.
    """
    row_loss, col_loss = _np(row_loss), _np(col_loss)
    V, R = row_loss.shape
    current = _np(current).astype(np.int64)
    if col_loss.shape[0] != V or current.shape != (V,):
        raise ValueError(f"row_loss {row_loss.shape}, col_loss {col_loss.shape} and current {current.shape} disagree")
    C = col_loss.shape[1]
    if R * C < V:
        raise ValueError(f"{R}x{C} table has fewer cells than {V} words")
    if current.min(initial=0) < 0 or current.max(initial=0) >= R * C or len(np.unique(current)) != V:
        raise ValueError("current must give every word a distinct cell of the table")
    if method not in ("auto", "exact", "sparse", "greedy"):
        raise ValueError(f"unknown reallocation method '{method}': use exact, sparse, greedy or auto")
    dense = method == "exact" or (method == "auto" and V <= EXACT_MAX_WORDS) or (
        method == "greedy" and V <= 4 * GREEDY_EXACT_LEFTOVERS)
    cand = build_candidates(row_loss, col_loss, current, bonus, width=candidate_width(V, top_k), keep_dense=dense)
    mats = (row_loss, col_loss)
    cells, info = solve(cand, method, top_k, tolerance, stop=stop, gather=lambda words, side: mats[side][words],
                        polish_sweeps=polish_sweeps, profile=profile)
    return (cells, info) if return_info else cells
