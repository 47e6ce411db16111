"""The reallocation solvers against scipy's exact assignment on every cost shape they meet.

Shapes (``lrnn_lightning.allocation.costs.shape_chunks``): contested (many words wanting the same
rows and columns), flat (early training), heavy-tailed (count-weighted Zipf), planted (a hidden
table), mild (every count 1). On each: the sparse solver's table is a permutation within 0.5% of
the exact optimum, never dearer than the current table, the same on every call; every certified
bound it reports (the auction's dual, the separable bound) is at or below the exact optimum.
"""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from lrnn_lightning.allocation.costs import SHAPES, random_table, shape_costs
from lrnn_lightning.allocation.solvers import (CandidateBuilder, RoundInterrupted, _smallest, auction, polish,
                                               price_dual_bound, reallocate, separable_bound, solve, transport_prices)

V = 900  # a 30 x 30 table


def exact(row, col, bonus=None, current=None):
    full = (row[:, :, None] + col[:, None, :]).reshape(len(row), -1).copy()
    if bonus is not None:  # the current row, and again the current column, cheaper by the bonus
        C = col.shape[1]
        cells = np.arange(full.shape[1])
        same_r = (cells[None, :] // C) == (current[:, None] // C)
        same_c = (cells[None, :] % C) == (current[:, None] % C)
        full -= bonus[:, None] * (same_r.astype(float) + same_c)
    w, c = linear_sum_assignment(full)
    return float(full[w, c].sum())


def dense_dual(row, col, price):
    """The assignment LP's dual at ``price``, with every word's minimum over every cell."""
    full = (row[:, :, None] + col[:, None, :]).reshape(len(row), -1) + price[None, :]
    return float(full.min(1).sum() - price.sum())


def cost(row, col, cells):
    C = col.shape[1]
    w = np.arange(len(cells))
    return float(row[w, cells // C].sum() + col[w, cells % C].sum())


@pytest.mark.parametrize("shape", SHAPES)
def test_sparse_is_within_half_a_percent_of_the_exact_optimum_and_its_bounds_are_certified(shape):
    row, col = shape_costs(shape, V, seed=3)
    current = random_table(V, 3)
    opt = exact(row, col)
    cells, info = reallocate(row, col, current, "sparse", return_info=True)
    assert np.array_equal(np.sort(cells), np.sort(np.unique(cells))) and len(np.unique(cells)) == V
    assert cells.min() >= 0 and cells.max() < 900
    got = cost(row, col, cells)
    assert got == pytest.approx(info["objective"], rel=1e-9)
    assert got <= opt * 1.005, f"{shape}: {got / opt - 1:.4%} above the optimum"
    assert got <= cost(row, col, current) + 1e-6
    tol = 1e-9 * abs(opt)
    names = ("auction_bound", "price_bound", "separable_bound", "mixed_bound")
    for name in ("dual_bound", *names):
        if name in info:  # the later bounds are computed where the auction's dual leaves a gap
            assert info[name] <= opt + tol, f"{shape}: {name} {info[name]} above the optimum {opt}"
    assert info["dual_bound"] == max(info.get(name, -np.inf) for name in names)
    # every certified bound is valid whatever the gap: check them on every shape, at any prices
    b = CandidateBuilder(V, 30, 30, current, width=16)
    b.add(0, row, col)
    cand = b.finish()
    sep = separable_bound(cand)
    assert sep["bound"] <= opt + tol
    rng = np.random.default_rng(0)
    scale = float(np.abs(row).mean())
    ps = (sep["row_prices"][:, None] + sep["col_prices"][None, :]).reshape(-1)
    for price in (np.zeros(900), rng.exponential(scale, 900), ps, 0.5 * ps + rng.exponential(scale, 900)):
        got_bound = price_dual_bound(cand, price)
        assert got_bound <= opt + tol
        assert got_bound <= dense_dual(row, col, price) + tol  # a lower bound on the dual it stands for
    assert 0 <= info["gap"] == pytest.approx((info["objective"] - info["dual_bound"]) / info["objective"])
    again, info2 = reallocate(row, col, current, "sparse", return_info=True)
    assert np.array_equal(cells, again) and info2["dual_bound"] == info["dual_bound"]


def test_polish_reaches_cells_outside_the_candidate_boxes_where_every_word_wants_the_same_rows():
    """``skewed`` costs (every seen word prefers the same 4 rows and 4 columns) with 2 x 2 boxes:
    the auction alone cannot spread the words over the rows they must take; the polish re-solves
    each row over all its columns and each column over all its rows, and cuts the excess over the
    exact optimum by more than half, at the cost it reports."""
    n = 4096
    row, col = shape_costs("skewed", n, seed=0)
    current = random_table(n, 0)
    opt = exact(row, col)
    kw = dict(top_k=2, return_info=True, profile=False)  # the polish alone (not profile_route)
    plain, info0 = reallocate(row, col, current, "sparse", polish_sweeps=0, **kw)
    cells, info = reallocate(row, col, current, "sparse", polish_sweeps=2, **kw)
    before, after = cost(row, col, plain), cost(row, col, cells)
    assert after == pytest.approx(info["objective"], rel=1e-12)  # the polish's cost is exact, not a bound
    assert before / opt - 1 > 0.2  # the narrow boxes leave the auction far from the optimum ...
    assert after / opt - 1 < 0.5 * (before / opt - 1)  # ... which the polish more than halves
    assert opt * (1 - 1e-9) <= after and info["polish_gain"] > 0 and info["polish_groups"] > 0
    assert info["dual_bound"] <= opt * (1 + 1e-9)
    assert len(np.unique(cells)) == n


@pytest.mark.parametrize("shape", SHAPES)
def test_polish_never_raises_the_cost_and_keeps_words_still_on_ties(shape):
    row, col = shape_costs(shape, V, seed=8)
    current = random_table(V, 8)
    bonus = 0.3 * np.maximum(row.mean(1), 1e-3)
    b = CandidateBuilder(V, 30, 30, current, bonus, width=4)
    b.add(0, row, col)
    cand = b.finish()
    res = auction(cand, k0=2)
    start = np.where(res.cells >= 0, res.cells, -1)
    free = np.setdiff1d(np.arange(900), start[start >= 0])
    start[start < 0] = free[: int((start < 0).sum())]
    pen = lambda cells: cost(row, col, cells) - float((bonus * (((cells // 30) == (current // 30)).astype(float)
                                                                 + ((cells % 30) == (current % 30)))).sum())
    mats = (row, col)
    cells, per_word, info = polish(cand, start, lambda words, side: mats[side][words], sweeps=3)
    assert len(np.unique(cells)) == V
    assert pen(cells) <= pen(start) + 1e-9 * abs(pen(start))
    assert float(per_word.sum()) == pytest.approx(pen(cells), rel=1e-12)
    again = polish(cand, cells, lambda words, side: mats[side][words], sweeps=1)[0]
    moved = again != cells  # a polished table polished again moves only where it is strictly cheaper
    assert pen(again) <= pen(cells) and (not moved.any() or pen(again) < pen(cells))
    with pytest.raises(RoundInterrupted):
        polish(cand, start, lambda words, side: mats[side][words], stop=lambda: True)
    # bounded work: it ends at the first group past the budget, the costs it reports still exact
    # (words left in a slot their stored costs do not hold are read from the statistics)
    if info["polish_work"] > 0:
        cut, cut_per_word, cut_info = polish(cand, start, lambda words, side: mats[side][words], sweeps=3,
                                             work=info["polish_work"] / 3)
        assert cut_info["polish_spent"] and cut_info["polish_work"] <= info["polish_work"] / 3
        assert cut_info["polish_groups"] < info["polish_groups"]
        assert len(np.unique(cut)) == V and pen(cut) <= pen(start) + 1e-9 * abs(pen(start))
        assert float(cut_per_word.sum()) == pytest.approx(pen(cut), rel=1e-12)
        assert not info["polish_spent"]


def test_ties_are_taken_in_index_order_from_the_current_row():
    """Equal costs (a word never seen has cost 0 everywhere) are ranked by index counted from the
    word's current row round the table: the same set on every device, and unseen words look at the
    rows next to their own instead of all wanting rows 0, 1, 2, ..."""
    import torch

    rng = np.random.default_rng(0)
    for trial in range(40):
        m = int(rng.integers(3, 40))
        k = int(rng.integers(1, m + 1))
        x = rng.integers(0, 4, size=(6, m)).astype(np.float64)
        first = rng.integers(0, m, size=6)
        v, i = _smallest(torch.from_numpy(x.copy()), k, torch.from_numpy(first))
        for r in range(6):
            want = sorted(range(m), key=lambda j: (x[r, j], (j - first[r]) % m))[:k]
            assert i[r].tolist() == want
            assert np.allclose(v[r].numpy()[:-1], x[r, want][:-1])
    zero = torch.zeros(3, 50, dtype=torch.float64)
    _, i = _smallest(zero, 4, torch.tensor([10, 48, 0]))
    assert i.tolist() == [[10, 11, 12, 13], [48, 49, 0, 1], [0, 1, 2, 3]]
    sparse = torch.full((1, 50), 5.0, dtype=torch.float64)  # two equal values far from the start
    sparse[0, 20], sparse[0, 10], sparse[0, 45] = -1.0, 0.0, 0.0
    _, i = _smallest(sparse, 2, torch.tensor([11]))
    assert i.tolist() == [[20, 45]]  # 45 comes 34 places after 11, 10 comes 49 places after


@pytest.mark.parametrize("shape", ["contested", "mild"])
def test_the_bounds_hold_with_the_move_penalty(shape):
    row, col = shape_costs(shape, V, seed=4)
    current = random_table(V, 4)
    bonus = 0.5 * np.maximum(row.mean(1), 1e-3)
    opt = exact(row, col, bonus, current)
    cells, info = reallocate(row, col, current, "sparse", bonus=bonus, return_info=True)
    assert info["objective"] <= opt * 1.005 + 1e-9 * abs(opt)
    assert info.get("separable_bound", -np.inf) <= opt + 1e-9 * abs(opt)
    assert info["dual_bound"] <= opt + 1e-9 * abs(opt)


def test_the_separable_bound_equals_the_two_transportation_optima():
    """The bound never exceeds the sum of the two transportation optima (scipy, each row/column
    repeated capacity times) and comes within 2% of it: far above every word in its cheapest
    row and column where the rows are over-wanted."""
    row, col = shape_costs("mild", 400, seed=5)  # 20 x 20
    b = CandidateBuilder(400, 20, 20, random_table(400, 5), width=32)  # every row and column stored
    b.add(0, row, col)
    cand = b.finish()
    got = separable_bound(cand, iters=60)["bound"]

    def transport(a):
        w, c = linear_sum_assignment(np.repeat(a, 20, axis=1))
        return float(np.repeat(a, 20, axis=1)[w, c].sum())

    opt = transport(row) + transport(col)
    trivial = float(row.min(1).sum() + col.min(1).sum())
    assert got <= opt + 1e-9 * opt
    assert got >= opt * (1 - 2e-2), f"separable bound {got} is {1 - got / opt:.3%} below the transportation optima"
    assert got - trivial > 0.5 * (opt - trivial)  # most of what capacity adds to the trivial bound


def test_transport_prices_are_nonnegative_and_price_the_over_wanted_bin():
    """One bin everybody prefers: its price rises until only its capacity still wants it, the
    bound rises with it, and the bins nobody over-wants stay at price 0."""
    rng = np.random.default_rng(0)
    cost = rng.exponential(size=(300, 10)) + 5.0
    cost[:, 0] = rng.exponential(size=300)  # bin 0: everybody's favourite, room for 30
    idx = np.argsort(cost, axis=1)
    cost = np.take_along_axis(cost, idx, 1)
    u, bound = transport_prices(idx, cost, np.full(300, np.inf), 10, 30)
    assert (u >= 0).all() and u[0] > 0
    choice = idx[np.arange(300), (cost + u[idx]).argmin(1)]
    assert (choice == 0).sum() <= 31
    assert bound > float(cost[:, 0].sum()) + 1.0  # above every word in its cheapest bin


def test_greedy_reports_a_certified_bound_too():
    row, col = shape_costs("zipf", V, seed=6)
    current = random_table(V, 6)
    cells, info = reallocate(row, col, current, "greedy", return_info=True)
    assert info["dual_bound"] <= exact(row, col) * (1 + 1e-9)
    assert len(np.unique(cells)) == V


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", ["contested", "zipf", "skewed", "profile"])
def test_statistics_on_the_gpu_give_the_table_they_give_on_the_cpu(shape):
    """The candidates' top-k runs where the statistics live; the table and the bounds must not
    depend on it (float64 throughout, ties broken by index counted from the current row), nor
    does the polish, which reads its row and column groups from the device, nor the profile route
    (``profile``: its passes run on the device, in float32)."""
    import torch

    row, col = shape_costs(shape, 2500, seed=7)
    current = random_table(2500, 7)
    out = []
    for device in ("cpu", "cuda"):
        b = CandidateBuilder(2500, 50, 50, current, width=4)  # narrow boxes: the polish has work to do
        mats = (torch.from_numpy(row).to(device), torch.from_numpy(col).to(device))
        for a in range(0, 2500, 1000):
            b.add(a, mats[0][a:a + 1000], mats[1][a:a + 1000])
        gather = lambda words, side: mats[side][torch.as_tensor(words, device=device)]  # noqa: E731
        out.append(solve(b.finish(), "sparse", gather=gather, polish_sweeps=2))
    (cells_cpu, info_cpu), (cells_gpu, info_gpu) = out
    if shape == "profile":  # the narrow boxes leave a gap the route takes over (checked on the CPU)
        assert info_cpu["profile_table"] and info_gpu["profile_table"]
    assert np.array_equal(cells_cpu, cells_gpu)
    assert info_cpu["objective"] == info_gpu["objective"] and info_cpu["dual_bound"] == info_gpu["dual_bound"]
