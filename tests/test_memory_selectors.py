"""Selectors against hand-computed values; select_rows ties, unaccessed slots, t > #accessed."""
import math

import pytest
import torch

from smf_sweep.memory import SELECTORS, LayerBackground, select_rows
from smf_sweep.registry import UnknownName

INF = float("-inf")
COUNTS = torch.tensor([3, 1, 0, 2, 2, 0])  # Σc = 8; slots 2 and 5 not accessed
BG = LayerBackground(df=torch.tensor([0, 4, 2, 4, 1, 9]), total=torch.tensor([0, 10, 5, 30, 2, 50]), n=9)


def test_registry_names():
    assert SELECTORS.names() == ["kl", "random", "tf", "tfidf"]
    with pytest.raises(UnknownName):
        SELECTORS["tf-idf"]


def test_tfidf_by_hand():
    s = SELECTORS["tfidf"](COUNTS, BG)
    # c/Σc · ln((n+1)/(df+1)), n = 9
    expected = [3 / 8 * math.log(10 / 1), 1 / 8 * math.log(10 / 5), INF,
                2 / 8 * math.log(10 / 5), 2 / 8 * math.log(10 / 2), INF]
    assert s.dtype == torch.float32
    torch.testing.assert_close(s, torch.tensor(expected))
    assert select_rows(s, 3).nonzero().flatten().tolist() == [0, 3, 4]  # scores 0.86, 0.40, 0.17


def test_kl_by_hand():
    s = SELECTORS["kl"](COUNTS, BG)
    q = [(c + 1) / 103 for c in [0, 10, 5, 30, 2, 50]]  # Σ(C+1) = 103
    p = [3 / 8, 1 / 8, 0, 2 / 8, 2 / 8, 0]
    expected = [pi * math.log((pi + 1e-8) / (qi + 1e-8)) if pi else INF for pi, qi in zip(p, q)]
    torch.testing.assert_close(s, torch.tensor(expected))
    # slot 3 is frequent in the background (q=31/103 > p=1/4): negative term, ranked last
    assert s[3] < 0 < s[1] < s[4] < s[0]
    assert select_rows(s, 2).nonzero().flatten().tolist() == [0, 4]


def test_tf_and_ties_lowest_index_wins():
    s = SELECTORS["tf"](COUNTS, None)
    assert s.tolist() == [3.0, 1.0, INF, 2.0, 2.0, INF]
    assert select_rows(s, 2).nonzero().flatten().tolist() == [0, 3]  # 3 and 4 tie at 2: 3 wins
    tie = torch.tensor([1.0, 5.0, 5.0, 5.0, INF, 5.0])
    assert select_rows(tie, 2).nonzero().flatten().tolist() == [1, 2]
    assert select_rows(tie, 4).nonzero().flatten().tolist() == [1, 2, 3, 5]
    many = torch.randint(0, 3, (100_000,), generator=torch.Generator().manual_seed(0)).float()  # many ties
    top = select_rows(many, 1000).nonzero().flatten()
    assert torch.equal(top, (many == 2).nonzero().flatten()[:1000])  # the 1000 lowest indices scoring 2
    # tfidf tie: equal counts and equal df give equal scores
    s = SELECTORS["tfidf"](torch.tensor([0, 2, 2, 2]), LayerBackground(torch.tensor([0, 1, 1, 1]), torch.zeros(4), 3))
    assert select_rows(s, 1).nonzero().flatten().tolist() == [1]


def test_unaccessed_never_selected_and_t_larger_than_accessed():
    for name in ["tfidf", "kl", "tf"]:
        s = SELECTORS[name](COUNTS, BG)
        assert torch.isinf(s[[2, 5]]).all() and torch.isfinite(s[[0, 1, 3, 4]]).all()
        assert select_rows(s, 100).nonzero().flatten().tolist() == [0, 1, 3, 4]  # min(t, #accessed)
    # tfidf score 0 (slot touched by every background batch) is finite, so still selectable
    s = SELECTORS["tfidf"](torch.tensor([1, 1]), LayerBackground(torch.tensor([5, 0]), torch.zeros(2), 5))
    assert s[0] == 0 and select_rows(s, 5).tolist() == [True, True]
    zero = torch.zeros(6, dtype=torch.long)
    for name in ["tfidf", "kl", "tf"]:
        assert not select_rows(SELECTORS[name](zero, BG), 3).any()
    assert not select_rows(SELECTORS["tf"](COUNTS), 0).any()


def test_random_uses_only_the_passed_generator():
    state = torch.random.get_rng_state()
    a = SELECTORS["random"](COUNTS, None, generator=torch.Generator().manual_seed(1))
    b = SELECTORS["random"](COUNTS, None, generator=torch.Generator().manual_seed(1))
    c = SELECTORS["random"](COUNTS, None, generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isinf(a[[2, 5]]).all() and ((a[[0, 1, 3, 4]] >= 0) & (a[[0, 1, 3, 4]] < 1)).all()
    rows = select_rows(a, 2)
    assert rows.sum() == 2 and not rows[[2, 5]].any()
    with pytest.raises(ValueError, match="generator"):
        SELECTORS["random"](COUNTS, None)


def test_background_selectors_need_background_and_nan_is_an_error():
    for name in ["tfidf", "kl"]:
        with pytest.raises(ValueError, match="background"):
            SELECTORS[name](COUNTS, None)
    with pytest.raises(ValueError, match="NaN"):
        select_rows(torch.tensor([1.0, float("nan")]), 1)
