"""``solvers.profile_route``: prices on the cells of lowest shared-profile score, where every word's
costs follow one profile (early in training, as on the One Billion Word rehearsal's statistics).

Checked against scipy's exact assignment and brute-force minima over every cell: the profile's
prices are the exact dual on rank-one costs; every per-word minimum the pass reports is at or
below the true one, on every shape and with the move bonus; the bound never exceeds the optimum;
the route's table is a permutation, never dearer than the solver's without it, and deterministic;
a stop request interrupts it; it gives up after the pass where the costs follow no profile.
"""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from lrnn_lightning.allocation.costs import random_table, shape_costs
from lrnn_lightning.allocation.solvers import (RoundInterrupted, _profile_pass, build_candidates, profile_prices,
                                               profile_route, reallocate)


def dense(row, col, bonus=None, current=None):
    """Every word's penalized cost of every cell, ``[V, R*C]``."""
    full = (row[:, :, None] + col[:, None, :]).reshape(len(row), -1).copy()
    if bonus is not None:
        C = col.shape[1]
        cells = np.arange(full.shape[1])
        same_r = (cells[None, :] // C) == (current[:, None] // C)
        same_c = (cells[None, :] % C) == (current[:, None] % C)
        full -= bonus[:, None] * (same_r.astype(float) + same_c)
    return full


def optimum(full):
    w, c = linear_sum_assignment(full)
    return float(full[w, c].sum())


def gather_of(row, col):
    mats = (row, col)
    return lambda words, side: mats[side][words]


def rank_one(V, R, C, seed):
    """``cost(w, (i, j)) = n_w (l_i + m_j)``, a quarter of the words with no cost at all."""
    rng = np.random.default_rng(seed)
    n = np.floor(rng.pareto(1.2, V) * 3 + 1)
    n[rng.random(V) < 0.25] = 0
    l, m = rng.uniform(2, 9, R), rng.uniform(2, 12, C)
    return n[:, None] * l[None, :], n[:, None] * m[None, :]


def test_profile_prices_are_nonnegative_falling_and_each_rows_priced_cells_a_prefix_of_the_column_order():
    row, col = shape_costs("profile", 900, seed=2)
    cand = build_candidates(row, col, random_table(900, 2), width=8)
    pp = profile_prices(cand, 10_000)
    assert len(pp.cells) == int((cand.profile[2] > 0).sum())  # one priced cell per word with a cost
    assert (pp.price >= 0).all() and (np.diff(pp.price) <= 1e-9).all()
    C = cand.cols
    for i in range(cand.rows):
        assert set(pp.cells[pp.cells // C == i] % C) == set(pp.col_order[:pp.prefix[i]].tolist())
    small = profile_prices(cand, 50)  # the budget caps the priced cells, cheapest scores first
    assert len(small.cells) == 50 and (small.cells == pp.cells[:50]).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_on_rank_one_costs_the_profile_prices_are_the_exact_dual(seed):
    R = C = 20
    V = R * C - 17
    row, col = rank_one(V, R, C, seed)
    cand = build_candidates(row, col, np.random.default_rng(seed).permutation(R * C)[:V], width=8)
    pp = profile_prices(cand, V, weight=1.0)
    active = np.flatnonzero(cand.profile[2] > 0)
    low, _ = _profile_pass(cand, gather_of(row, col), active, pp, pp.price)
    bound = float(low.sum()) - float(pp.price.sum())  # the words with no cost cost 0 everywhere
    opt = optimum(dense(row, col))
    assert bound <= opt * (1 + 1e-9)
    assert bound == pytest.approx(opt, rel=1e-5)
    # a weaker weight is still a certified bound, but below the optimum
    pp_half = profile_prices(cand, V, weight=0.5)
    low_half, _ = _profile_pass(cand, gather_of(row, col), active, pp_half, pp_half.price)
    assert float(low_half.sum()) - float(pp_half.price.sum()) < opt * (1 - 1e-4)


@pytest.mark.parametrize("shape", ["profile", "skewed", "mild", "zipf", "contested"])
def test_the_pass_never_reports_a_minimum_above_the_true_one_and_its_kept_cells_are_the_cheapest(shape):
    V = 900
    row, col = shape_costs(shape, V, seed=5)
    current = random_table(V, 5)
    bonus = np.random.default_rng(5).uniform(0, 2, V) * (row.sum(1) > 0)
    cand = build_candidates(row, col, current, bonus, width=8)
    pp = profile_prices(cand, 400)
    active = np.flatnonzero(cand.profile[2] > 0)
    price = np.zeros(cand.rows * cand.cols)
    price[pp.cells] = pp.price
    full = dense(row, col, bonus, current)[active] + price[None, :]
    low, (cells, costs) = _profile_pass(cand, gather_of(row, col), active, pp, pp.price, keep=6, budget=5_000)
    truth = full.min(1)
    assert (low <= truth + 1e-9 * np.abs(truth)).all()
    assert np.allclose(low, truth, rtol=1e-5, atol=1e-3)  # and not far below
    # the kept cells: the 6 cheapest priced cells after the prices, with their exact penalized costs
    priced = full[:, pp.cells]
    sixth = np.sort(priced, axis=1)[:, 5]
    w = np.arange(len(active))[:, None]
    assert np.allclose(costs, full[w, cells] - price[cells], rtol=1e-12)
    assert (full[w, cells] <= sixth[:, None] * (1 + 1e-5) + 1e-3).all()
    assert np.isin(cells, pp.cells).all()
    idle = np.setdiff1d(np.arange(V), active)
    bound = float(low.sum()) - float(pp.price.sum()) + float(dense(row, col, bonus, current)[idle].min(1).sum())
    assert bound <= optimum(dense(row, col, bonus, current)) * (1 + 1e-9)


def profile_problem(V=2500, seed=3):
    row, col = shape_costs("profile", V, seed=seed)
    current = random_table(V, seed)
    bonus = np.maximum(row.sum(1) / (4 * row.shape[1]), 1e-3)  # about a nat per occurrence, as the callback
    return row, col, current, bonus


def test_solve_takes_the_route_where_narrow_boxes_leave_a_wide_gap_and_ends_closer_to_the_optimum():
    row, col, current, bonus = profile_problem()
    full = dense(row, col, bonus, current)
    opt = optimum(full)
    kw = dict(top_k=2, bonus=bonus, return_info=True)
    without, info0 = reallocate(row, col, current, "sparse", profile=False, **kw)
    cells, info = reallocate(row, col, current, "sparse", **kw)
    w = np.arange(len(cells))
    assert len(np.unique(cells)) == len(cells)
    assert info["objective"] == pytest.approx(float(full[w, cells].sum()), rel=1e-9)  # the cost it reports is exact
    assert info["profile_table"] and info["profile_bound"] > info0["dual_bound"]
    assert opt * (1 - 1e-9) <= info["objective"] <= info0["objective"]
    assert info["dual_bound"] <= opt * (1 + 1e-9)
    assert info["objective"] <= opt * 1.005 < opt * 1.02 < info0["objective"]  # 0.37% above it, from 3.7%
    assert info["gap"] < 0.3 * info0["gap"]  # certified: 2.3%, from 10.0%
    again = reallocate(row, col, current, "sparse", **kw)[0]
    assert (again == cells).all()  # deterministic


def test_the_route_stops_after_the_pass_where_its_bound_does_not_beat_the_one_we_have():
    row, col, current, bonus = profile_problem(900, 4)
    cand = build_candidates(row, col, current, bonus, width=8)
    out = profile_route(cand, gather_of(row, col), None, 2, floor=np.inf)
    cells, pen, bound, info = out
    assert cells is None and pen is None and np.isfinite(bound) and "profile_rounds" not in info
    # no word with any cost: nothing to route
    zero = np.zeros_like(row)
    assert profile_route(build_candidates(zero, zero, current, width=8), gather_of(zero, zero), None, 2) is None


def test_a_stop_request_interrupts_the_route():
    row, col, current, bonus = profile_problem(900, 4)
    cand = build_candidates(row, col, current, bonus, width=8)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(RoundInterrupted):
        profile_route(cand, gather_of(row, col), None, 2, stop=stop)
