"""Row selectors: which accessed memory slots of a batch get trained.

    scores = SELECTORS["kl"](counts, background)      # counts (N,) long, background: LayerBackground
    rows = select_rows(scores, t)                      # bool (N,), min(t, #finite) rows

Every selector returns float32 scores (N,) with -inf where counts == 0 (never-accessed slots are
never selected). Scores are computed in float32, as QWEN does.
"""
from __future__ import annotations

import torch

from ..registry import Registry
from .counting import LayerBackground

SELECTORS: Registry = Registry("selector")
EPS = 1e-8  # QWEN's smoothing inside the KL log


def _finish(score: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    return score.masked_fill(counts == 0, float("-inf"))  # also clears 0/0 when Σc = 0


def _need(background: LayerBackground | None, name: str) -> LayerBackground:
    if background is None:
        raise ValueError(f"selector {name!r} needs background statistics")
    return background


@SELECTORS.register("tfidf")
def tfidf(counts: torch.Tensor, background: LayerBackground | None, generator=None) -> torch.Tensor:
    """LIN §4: c/Σc · ln((n+1)/(df+1))."""
    bg = _need(background, "tfidf")
    c = counts.float()
    idf = torch.log((bg.n + 1.0) / (bg.df.to(c.device).float() + 1.0))  # (N,)
    return _finish(c / c.sum() * idf, counts)


@SELECTORS.register("kl")
def kl(counts: torch.Tensor, background: LayerBackground | None, generator=None) -> torch.Tensor:
    """QWEN: p_b = c/Σc, q = (C+1)/Σ(C+1); p_b · ln((p_b+1e-8)/(q+1e-8)), slot i's term of KL(p_b‖q)."""
    bg = _need(background, "kl")
    c = counts.float()
    p = c / c.sum()  # (N,)
    q = bg.total.to(c.device).float() + 1.0
    q = q / q.sum()  # (N,)
    return _finish(p * torch.log((p + EPS) / (q + EPS)), counts)


@SELECTORS.register("tf")
def tf(counts: torch.Tensor, background: LayerBackground | None = None, generator=None) -> torch.Tensor:
    """[ours] control: raw counts (LIN's TF-only ablation)."""
    return _finish(counts.float(), counts)


@SELECTORS.register("random")
def random(counts: torch.Tensor, background: LayerBackground | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """[ours] control: uniform random scores over accessed slots, from `generator` (required)."""
    if generator is None:
        raise ValueError("selector 'random' needs generator= (a seeded torch.Generator; no global RNG)")
    u = torch.rand(counts.shape, generator=generator, device=generator.device)  # (N,) in [0, 1)
    return _finish(u.to(counts.device), counts)


def select_rows(scores: torch.Tensor, t: int) -> torch.Tensor:
    """bool mask (N,) of the min(t, #finite) highest scores.

    Ties are broken by index, lowest first: a stable descending sort keeps equal scores in index
    order. -inf (never accessed) is never selected; NaN is an error.
    """
    if t < 0:
        raise ValueError(f"t must be >= 0, got {t}")
    if scores.device.type == "cpu":
        if torch.isnan(scores).any():
            raise ValueError("NaN in selector scores")
    else:                       # no host sync on an accelerator: the check fails the next sync instead
        torch._assert_async(~torch.isnan(scores).any(), "NaN in selector scores")
    finite = torch.isfinite(scores)                                              # (N,)
    order = torch.sort(scores.masked_fill(~finite, float("-inf")), descending=True, stable=True).indices  # (N,)
    top = order[:t]                                                              # (≤ t,) best first
    # the first t of the order, minus the never-accessed ones among them: min(t, #finite) rows
    return torch.zeros_like(finite).scatter_(0, top, finite[top])
