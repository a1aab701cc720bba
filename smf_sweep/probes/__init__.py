"""Probes: MedMCQA accuracy (the task), WikiText perplexity and TriviaQA accuracy (forgetting).

    from smf_sweep.probes import PROBES, ProbeSpec, run_probes
    results = run_probes(model, tok, [ProbeSpec("medmcqa", source="world:/tmp/w"),
                                      ProbeSpec("wikitext", "harness", source="hub", limit=10)])
    results["medmcqa"].value

One module per task; each registers a `study` (the reproduced paper's protocol, the default) and a
`harness` (lm-evaluation-harness) variant under "<task>:<variant>" in PROBES.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from . import medmcqa, triviaqa, wikitext  # noqa: F401  (fill the registry)
from .base import PROBES, TASKS, VARIANTS, Probe, ProbeResult, sample_units

__all__ = ["PROBES", "TASKS", "VARIANTS", "Probe", "ProbeResult", "ProbeSpec", "make_probe", "run_probes",
           "sample_units"]


@dataclass(frozen=True)
class ProbeSpec:
    task: str                         # medmcqa | wikitext | triviaqa
    variant: str = "study"            # study | harness
    source: str = "hub"               # any source of docs/contracts.md
    limit: int | None = None          # None: the protocol's default; 0: everything
    options: Mapping[str, Any] = field(default_factory=dict)  # probe fields, e.g. {"max_length": 512}
    name: str | None = None           # result key; default the task

    @property
    def key(self) -> str:
        return self.name or self.task


def make_probe(task: str, variant: str = "study", **options) -> Probe:
    return PROBES[f"{task}:{variant}"](**options)


def run_probes(model, tokenizer, specs: Sequence[ProbeSpec | Mapping[str, Any]], *, batch_size: int = 8,
               progress: bool = False) -> dict[str, ProbeResult]:
    """Load each spec's data and run its probe; results keyed by spec name (default: the task)."""
    specs = [s if isinstance(s, ProbeSpec) else ProbeSpec(**s) for s in specs]
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"probe specs share result keys {keys}; give them distinct `name`s")
    out = {}
    for s in specs:
        probe = make_probe(s.task, s.variant, **dict(s.options))
        data = probe.load(s.source, s.limit)
        out[s.key] = probe.run(model, tokenizer, data, batch_size=batch_size, progress=progress)
    return out
