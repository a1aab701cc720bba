"""analysis.fronts / analysis.summary against a brute-force dominance check (no MLflow)."""
import itertools

import numpy as np
import pandas as pd
import pytest

from analysis.fronts import COST, GAIN, front_order, pareto_mask


def brute(df: pd.DataFrame) -> set:
    """Indices of rows that no other row dominates (>= gain, <= cost, one strict)."""
    rows = [(i, g, c) for i, g, c in zip(df.index, df[GAIN], df[COST])
            if not (np.isnan(g) or np.isnan(c))]
    out = set()
    for i, g, c in rows:
        if not any((g2 >= g and c2 <= c and (g2 > g or c2 < c)) for j, g2, c2 in rows if j != i):
            out.add(i)
    return out


def frame(points, methods=None, status=None) -> pd.DataFrame:
    df = pd.DataFrame(points, columns=[GAIN, COST], dtype=float)
    df["method"] = methods if methods is not None else "smf"
    df["status"] = status if status is not None else "FINISHED"
    return df


def test_random_sets_with_ties_and_duplicates_match_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(400):
        n = int(rng.integers(0, 25))
        # a coarse grid makes ties on one objective and exact duplicates common
        pts = rng.integers(-3, 4, size=(n, 2)).astype(float) / 2
        if n and trial % 5 == 0:
            pts[rng.integers(0, n)] = np.nan  # a trial without objectives is on no front
        df = frame(pts)
        df.index = rng.permutation(np.arange(100, 100 + n))  # a non-default index must survive
        got = set(df.index[pareto_mask(df)])
        assert got == brute(df), pts


def test_hand_cases():
    # exact duplicates: both on the front
    assert list(pareto_mask(frame([[1, 1], [1, 1]]))) == [True, True]
    # duplicate of a dominated point: both dominated
    assert list(pareto_mask(frame([[2, 0], [1, 1], [1, 1]]))) == [True, False, False]
    # same gain, more forgetting: dominated; same forgetting, less gain: dominated
    assert list(pareto_mask(frame([[1, 1], [1, 2], [0, 1]]))) == [True, False, False]
    # a trade-off: both on the front
    assert list(pareto_mask(frame([[1, 1], [2, 3]]))) == [True, True]
    # single trial; empty frame
    assert list(pareto_mask(frame([[-5, 9]]))) == [True]
    assert pareto_mask(frame(np.zeros((0, 2)))).empty


def test_by_method_and_front_order():
    df = frame([[1, 1], [2, 3], [3, 0], [0, 0], [2, 2]], methods=["a", "a", "b", "b", "a"])
    got = pareto_mask(df, by="method")
    for m in ("a", "b"):
        sub = df[df["method"] == m]
        assert set(sub.index[got[sub.index]]) == brute(sub)
    assert list(got) == [True, False, True, False, True]  # (0, 0) loses to (3, 0)
    order = front_order(df[df["method"] == "a"])
    assert list(order.index) == [0, 4]  # cost ascending, so gain ascending too


def test_fronts_table_with_a_method_that_only_failed():
    from analysis.runs import finished
    from analysis.summary import fronts_table

    rng = np.random.default_rng(1)
    pts = rng.integers(0, 4, size=(12, 2)).astype(float)
    methods = ["smf"] * 5 + ["lora"] * 4 + ["full"] * 3
    status = ["FINISHED"] * 9 + ["FAILED"] * 3
    df = frame(pts, methods, status)
    df.loc[9:, [GAIN, COST]] = np.nan  # failed trials log no objectives
    df.loc[4, "status"] = "FAILED"  # a failed smf trial with numbers must still not count
    df["trial_id"] = [f"t{i}" for i in range(len(df))]
    fin = finished(df)
    assert list(fin.index) == [0, 1, 2, 3, 5, 6, 7, 8]
    table = fronts_table(fin)
    want = {("overall", df.loc[i, "trial_id"]) for i in brute(fin)}
    for m in ("smf", "lora"):
        sub = fin[fin["method"] == m]
        want |= {(m, df.loc[i, "trial_id"]) for i in brute(sub)}
    got = list(zip(table["front"], table["trial_id"]))
    assert len(got) == len(set(got)) and set(got) == want
    assert "full" not in set(table["front"])  # only failed: no front, no crash
    assert table.columns[0] == "front"


@pytest.mark.parametrize("n", [1, 2, 3])
def test_all_orderings_of_small_sets(n):
    values = [0.0, 1.0]
    for pts in itertools.product(itertools.product(values, values), repeat=n):
        df = frame(list(pts))
        assert set(df.index[pareto_mask(df)]) == brute(df)
