"""Learning–forgetting curves: cheap probes at evaluation points during a trial's training.

Every `curves.every` optimizer steps (and before the first step, and after the last) the trial's
model is probed on a fixed subset of each probe's data (`curves.limit` items, the same in every trial
and method: by default a seeded random sample of the items the end-point probe scores, in their
order, drawn by whole articles where a probe scores its items as one text (WikiText's lines); `subset:
first`, the first `limit` items, as sweeps before it did) and its drift from the base model is
measured on a fixed batch of general text:

    kl_general = mean over positions of KL(base ‖ model) of the next-token distributions, in nats per
                 token, on `kl_texts` windows of `kl_len` tokens cut from WikiText's validation split
                 (the probe's own split is test: the drift batch never overlaps the probe's text), each
                 starting at a sampled article (`subset: sample`) or consecutive from its head (`first`).

A cheap, low-noise drift signal that predicts forgetting (Shenfeld et al. 2025, "RL's Razor"). The
subset values become the sweep's numbers through the same Objectives as the trial's end point,
against the base model on the same subset, so every evaluation point is a candidate on a
checkpoint-level front. Logged as MLflow step metrics `curve/<name>` (step = optimizer step;
0 = after the method's own stages, before the first step):

    curve/<task>                  the subset probe's value (accuracy, perplexity)
    curve/<task>/delta            against the base model on the same subset (objectives.delta)
    curve/medmcqa_gain_pp, curve/forgetting (not under nats), curve/<probe>_drop_pp | _nats
    curve/kl_general, curve/seconds

Evaluation is collective (ZeRO-3's consolidated view): every rank calls `Curve.__call__`, rank 0
probes and returns the metrics, the others only the step (every rank then reports at that step).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .objectives import Objectives, delta
from .precision import autocast
from .probes import Probe, ProbeSpec, make_probe, sample_units

PREFIX = "curve/"
KL = "kl_general"
SUBSETS = ("sample", "first")
SAMPLE_SEED = 0            # the sample's seed: one subset for every trial, method and sweep of the same data


@dataclass(frozen=True)
class CurveConfig:
    every: int = 0             # optimizer steps between evaluation points; 0 = no curves (end points only)
    limit: int = 128           # items per probe in the fixed subset (questions, WikiText lines or pages)
    kl_texts: int = 8          # windows of general text for the KL drift (0 = no KL)
    kl_len: int = 128          # tokens per window
    subset: str = "sample"     # sample: a fixed random sample of the probe's items | first: its first `limit`
                               # (and the KL batch: windows from sampled articles | the validation split's head)
    # (a data set in a meaningful order is not a sample of itself at its head: the world's TriviaQA and
    # WikiText list countries first, so their first 64 items were countries only and the curves read
    # about twice the forgetting the end points did; WikiText's test split starts with one article. And
    # lines drawn one by one lose their article's context: the sample draws WikiText by article)

    def __post_init__(self):
        for name, least in (("every", 0), ("limit", 1), ("kl_texts", 0), ("kl_len", 2)):
            if getattr(self, name) < least:
                raise ValueError(f"curves.{name}: must be >= {least}, got {getattr(self, name)}")
        if self.subset not in SUBSETS:
            raise ValueError(f"curves.subset: one of {', '.join(SUBSETS)}, got {self.subset!r}")

    @property
    def on(self) -> bool:
        return self.every > 0

    def due(self, step: int, total: int) -> bool:
        """An evaluation point: step 0, every `every` steps, and the last step."""
        return self.on and (step % self.every == 0 or step == total)


def subset(units: Sequence[Sequence], k: int, how: str = "sample", seed: int = SAMPLE_SEED) -> list:
    """`k` of a probe's items, given as its `units` (probes.sample_units: one item each, or WikiText's
    lines by article), in their order: the first k items, or whole units drawn in a seeded random
    order until they hold at least k items. All items when there are no more than k."""
    if how not in SUBSETS:
        raise ValueError(f"curves.subset: one of {', '.join(SUBSETS)}, got {how!r}")
    items = [x for u in units for x in u]
    if how == "first" or k >= len(items):
        return items[:k]
    chosen, n = [], 0
    for i in random.Random(seed).sample(range(len(units)), len(units)):
        if n >= k:
            break
        chosen.append(i)
        n += len(units[i])
    return [x for i in sorted(chosen) for x in units[i]]


def subset_data(probes: Sequence[ProbeSpec], limit: int, how: str = "sample") -> list[tuple[str, Probe, list]]:
    """(result key, probe, items) of each probe on its curve subset: `limit` of the items its
    end-point run scores (the spec's own limit), `subset(…, how)`."""
    out = []
    for p in probes:
        probe = make_probe(p.task, p.variant, **dict(p.options))
        items = (probe.load(p.source, limit) if how == "first"
                 else subset(sample_units(probe, probe.load(p.source, p.limit)), limit, how))
        out.append((p.key, probe, items))
    return out


def general_windows(tokenizer, wikitext: ProbeSpec, n: int, length: int, how: str = "sample") -> torch.Tensor:
    """(n, length) token ids of WikiText's validation split, its lines (or pages) joined as the probe
    joins them, from the probe spec's source and variant. `first`: consecutive windows from the split's
    head (its first article or two: on the hub one article, in the world the first countries). `sample`:
    each window starts at an article drawn in a seeded random order (curves.SAMPLE_SEED) and runs on
    into the articles after it, no two windows sharing an article; in the split's order."""
    probe = make_probe("wikitext", wikitext.variant, **{**dict(wikitext.options), "split": "validation"})
    if how == "sample":
        return _sampled_windows(tokenizer, probe, wikitext.source, n, length)
    texts, ids, lim = [], [], 64
    while len(ids) < n * length:
        texts = probe.load(wikitext.source, lim)
        ids = _ids(tokenizer, texts)
        if len(texts) < lim:
            break
        lim *= 4
    if len(ids) < n * length:
        raise ValueError(f"curves: WikiText validation ({wikitext.source}) has {len(ids)} tokens; the KL batch needs "
                         f"kl_texts × kl_len = {n} × {length}")
    return torch.tensor(ids[: n * length]).view(n, length)


def _ids(tokenizer, texts: Sequence[str]) -> list[int]:
    return tokenizer("\n\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"]


def _sampled_windows(tokenizer, probe: Probe, source: str, n: int, length: int) -> torch.Tensor:
    units = sample_units(probe, probe.load(source, 0))             # articles (or pages), each a list of texts
    taken: dict[int, list[int]] = {}                                # first article -> the window's ids
    used: set[int] = set()
    for i in random.Random(SAMPLE_SEED).sample(range(len(units)), len(units)):
        if len(taken) == n:
            break
        if i in used:
            continue
        j, ids = i, []
        while len(ids) < length and j < len(units) and j not in used:   # run on into the next articles
            j += 1
            ids = _ids(tokenizer, [x for u in units[i:j] for x in u])
        if len(ids) >= length:
            taken[i] = ids[:length]
            used.update(range(i, j))
    if len(taken) < n:
        raise ValueError(f"curves: WikiText validation ({source}) holds {len(taken)} windows of {length} tokens that "
                         f"start at distinct articles; the KL batch needs kl_texts = {n}")
    return torch.tensor([taken[i] for i in sorted(taken)])         # (n, length)


@torch.no_grad()
def log_probs(model: nn.Module, ids: torch.Tensor, precision: str) -> torch.Tensor:
    """(n, length, V) float32 next-token log-probabilities on CPU, one window at a time."""
    dev = next(model.parameters()).device
    out = []
    for row in ids:                                              # (length,)
        with autocast(dev, precision):
            logits = model(input_ids=row[None].to(dev)).logits   # (1, length, V)
        out.append(torch.log_softmax(logits.float(), dim=-1)[0].cpu())
    return torch.stack(out)


@torch.no_grad()
def kl_from(base_logp: torch.Tensor, model: nn.Module, ids: torch.Tensor, precision: str) -> float:
    """Mean over the (n × length) positions of KL(base ‖ model) = Σ_v p0 (log p0 − log p), nats/token."""
    dev = next(model.parameters()).device
    total = 0.0
    for row, lp0 in zip(ids, base_logp):                          # (length,), (length, V)
        with autocast(dev, precision):
            logits = model(input_ids=row[None].to(dev)).logits    # (1, length, V)
        lp = torch.log_softmax(logits.float(), dim=-1)[0].cpu()   # (length, V)
        total += (lp0.exp() * (lp0 - lp)).sum().item()
    return total / ids.numel()


class Curve:
    """A trial's evaluation points. Built on the base model (`Curve.reference`) before the method's
    stages change it; then called on the model as it trains (Setup.view)."""

    def __init__(self, cfg: CurveConfig, probes: Sequence[ProbeSpec], objectives: Objectives, tokenizer, *,
                 batch_size: int, precision: str, rank: int = 0):
        self.cfg, self.obj, self.tok = cfg, objectives, tokenizer
        self.specs = list(probes)
        self.data: list[tuple[str, Probe, list]] = []      # (key, probe, subset items), loaded once (rank 0)
        self.batch_size, self.precision, self.rank = batch_size, precision, rank
        self.base: dict[str, float] = {}
        self.ids: torch.Tensor | None = None
        self.base_logp: torch.Tensor | None = None

    def reference(self, model: nn.Module) -> None:
        """The base model's subset values and next-token distributions on the general batch (rank 0)."""
        if self.rank != 0:
            return
        self.data = subset_data(self.specs, self.cfg.limit, self.cfg.subset)
        self.base = self._values(model)
        wiki = next((p for p in self.specs if p.task == "wikitext"), None)
        if self.cfg.kl_texts and wiki is not None:
            self.ids = general_windows(self.tok, wiki, self.cfg.kl_texts, self.cfg.kl_len,
                                       self.cfg.subset)                                # (n, kl_len)
            self.base_logp = log_probs(model, self.ids, self.precision)                    # (n, kl_len, V)

    def _values(self, model: nn.Module) -> dict[str, float]:
        dev = next(model.parameters()).device
        with autocast(dev, self.precision):
            return {k: probe.run(model, self.tok, items, batch_size=self.batch_size).value
                    for k, probe, items in self.data}

    def evaluator(self, view: Callable[[], nn.Module]) -> Callable[[int, int], dict]:
        """For train_loop.run_stage: the point's metrics at an evaluation step, else {}."""
        return lambda step, total: self(view, step) if self.cfg.due(step, total) else {}

    def __call__(self, view: Callable[[], nn.Module], step: int) -> dict:
        """The evaluation point at `step` (every rank calls it; rank 0 returns the metrics)."""
        t0 = time.perf_counter()
        model = view()                      # collective under ZeRO-3
        if self.rank != 0:
            return {f"{PREFIX}step": step}  # every rank reports at an evaluation point (Ray Train's report is collective)
        was = model.training
        model.eval()
        try:
            values = self._values(model)
            kl = kl_from(self.base_logp, model, self.ids, self.precision) if self.ids is not None else None
        finally:
            model.train(was)
        out = {f"{PREFIX}step": step}
        deltas = {}
        for task, v in values.items():
            out[f"{PREFIX}{task}"] = v
            deltas[task] = self.obj.delta(task, self.base[task], v)
            out[f"{PREFIX}{delta(task)}"] = deltas[task]
        if self.obj.task in deltas and all(t in deltas for t, _ in self.obj.weighted()):
            out.update({f"{PREFIX}{k}": v for k, v in self.obj.scores(deltas).items()})
        if kl is not None:
            out[f"{PREFIX}{KL}"] = kl
        out[f"{PREFIX}seconds"] = time.perf_counter() - t0
        return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}
