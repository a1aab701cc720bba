"""What every probe declares and returns, and the registry that names them.

A probe is a small frozen dataclass registered as "<task>:<variant>":

    probe = PROBES["medmcqa:study"]()              # settings are dataclass fields
    data = probe.load("world:/tmp/w", limit=None)  # None: the protocol's own limit; 0: everything
    result = probe.run(model, tokenizer, data, batch_size=8, progress=True)
    result.value, result.n, result.version, result.extras

Declared by every probe class: `task`, `variant`, `version` (bump it whenever numbers could
change), `metric`, `higher_is_better`, `hub_id`, `default_limit`; optionally `units(data)`, how its
items group into what a sample must draw whole (sample_units).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

from ..registry import Registry

PROBES: Registry = Registry("probe")
TASKS = ("medmcqa", "wikitext", "triviaqa")
VARIANTS = ("study", "harness")


@dataclass(frozen=True)
class ProbeResult:
    task: str                 # "medmcqa" | "wikitext" | "triviaqa"
    variant: str              # "study" | "harness"
    metric: str               # e.g. "acc", "ppl", "word_perplexity"
    value: float              # the number logged as <task>/before|after
    higher_is_better: bool
    n: int                    # questions / lines / documents scored
    version: str              # probe version + the settings that change the number (window, …)
    extras: dict[str, float] = field(default_factory=dict)  # numbers worth logging (token counts, acc_norm, …)
    items: list[Any] = field(default_factory=list, repr=False)  # per-question records; not for MLflow
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.task}:{self.variant}"

    def to_dict(self, *, items: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not items:
            d.pop("items")
        return d


class Probe(Protocol):
    task: str
    variant: str
    version: str
    metric: str
    higher_is_better: bool
    hub_id: str
    default_limit: int | None

    def load(self, source: str = "hub", limit: int | None = None) -> Sequence[Any]: ...

    def run(self, model, tokenizer, data: Sequence[Any], *, batch_size: int = 8,
            progress: bool = False) -> ProbeResult: ...


def sample_units(probe: Probe, data: Sequence[Any]) -> list[list[Any]]:
    """What a sample of `data` draws whole (curves.subset): the probe's own `units(data)` where it
    scores its items as one text (WikiText's line-level variant: its articles, since a line out of its
    article loses the context the whole probe scores it with), else each item alone."""
    units = getattr(probe, "units", None)
    return units(data) if units is not None else [[x] for x in data]


def resolve_limit(limit: int | None, default: int | None) -> int | None:
    """None -> the protocol's default; 0 -> no limit; n > 0 -> n."""
    if limit is None:
        return default
    if limit < 0:
        raise ValueError(f"limit must be >= 0 (0 = everything) or None (the protocol's default), got {limit}")
    return limit or None


@contextlib.contextmanager
def eval_mode(model) -> Iterator[None]:
    """Run in eval mode (no dropout) and give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def pad_id(tokenizer) -> int:
    """Any id works (padded positions are masked and never scored); prefer the tokenizer's pad."""
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if t is not None:
            return t
    return 0
