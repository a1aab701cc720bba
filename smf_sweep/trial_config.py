"""What one trial's workers receive: a typed, frozen `WorkerConfig`, built from the spec by
`trial.worker_config(spec, arm, params, seed)` and pickled by Ray into each Ray Train worker
(`worker.train_worker`). The worker never sees the spec.

    cfg = worker_config(spec, "lora", {"lr": 1e-4}, seed=0)     # smf_sweep.trial
    train_worker(cfg)                                           # smf_sweep.worker
    WorkerConfig.from_dict({"model": ..., "method": "lora", "train": {...}, ...})   # plain data (tests, benches)

Every field's type is checked at construction; a wrong one is a TypeError naming the field.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from .curves import CurveConfig
from .methods import METHODS
from .probes import ProbeSpec
from .stage import TrainConfig


@dataclass(frozen=True)
class Sources:
    """The trial's data sources (any source of docs/contracts.md, Data sources)."""
    task: str                         # MedMCQA: its train split trains (the probes name their own sources)
    retrofit: str                     # OASST1: SMF's retrofit and background statistics


@dataclass(frozen=True)
class WorkerConfig:
    model: str                        # hub id or a save_pretrained directory
    method: str                       # the registered method (METHODS): smf, lora, full
    method_cfg: Any                   # that method's typed Config (METHODS[method].Config)
    train: TrainConfig                # the trial's training stage (precision: the sweep's regime)
    seed: int                         # data order, initialisation, the retrofit's cache key
    data: Sources
    arm: str | None = None            # the spec's arm that runs `method` (None: the method's name)
    probes: tuple[ProbeSpec, ...] = ()   # after-training probes on rank 0 (none: training only)
    probe_batch_size: int = 16
    curves: CurveConfig = CurveConfig()   # learning–forgetting curves (every 0: none)
    objectives: str = ""              # objectives.Objectives JSON: the curves' gain and forgetting
    cache_dir: Path | None = None     # caches shared by the sweep's trials (tokens, retrofits, statistics)
    threads: int | None = None        # torch threads per worker (None: torch's default)
    device: str = "cpu"               # in-process runs only; under Ray Train the worker's own device
    progress: bool = False            # a progress bar over training steps

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            v = getattr(self, f.name)
            if not _is(v, hints[f.name]):
                raise TypeError(f"WorkerConfig.{f.name}: expected {_name(hints[f.name])}, got {type(v).__name__} {v!r}")
        if self.method not in METHODS:
            raise ValueError(f"WorkerConfig.method: unknown method {self.method!r}; known: {', '.join(METHODS.names())}")
        want = METHODS[self.method].Config
        if not isinstance(self.method_cfg, want):
            raise TypeError(f"WorkerConfig.method_cfg: expected {want.__name__} (method {self.method}), "
                            f"got {type(self.method_cfg).__name__}")
        if self.curves.on and not (self.probes and self.objectives):
            raise ValueError("WorkerConfig.curves: curves need the probes and the objectives (JSON)")
        if self.probe_batch_size < 1:
            raise ValueError(f"WorkerConfig.probe_batch_size: must be >= 1, got {self.probe_batch_size}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WorkerConfig":
        """From plain data: `train`, `method_cfg`, `data` and `probes` as mappings of their fields
        (unknown keys are errors naming the key)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TypeError(f"WorkerConfig: unknown key(s) {unknown}; allowed: {', '.join(sorted(known))}")
        d = dict(d)
        method = d.get("method")
        if isinstance(d.get("train"), Mapping):
            d["train"] = TrainConfig(**d["train"])
        if isinstance(d.get("method_cfg", {}), Mapping) and method in METHODS:
            d["method_cfg"] = METHODS[method].Config(**d.get("method_cfg", {}))
        if isinstance(d.get("data"), Mapping):
            d["data"] = Sources(**d["data"])
        if isinstance(d.get("probes"), (list, tuple)):
            d["probes"] = tuple(p if isinstance(p, ProbeSpec) else ProbeSpec(**p) for p in d["probes"])
        if isinstance(d.get("curves"), Mapping):
            d["curves"] = CurveConfig(**d["curves"])
        if isinstance(d.get("cache_dir"), str):
            d["cache_dir"] = Path(d["cache_dir"])
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain data (JSON-able but for Path): what from_dict reads back."""
        return dataclasses.asdict(self)


# Hand-written: the annotations here are a closed set (classes, X | None, tuple[X, ...]); pydantic is
# only a transitive dependency (via ray) and would coerce values and rebuild the dataclasses inside.
def _is(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is tuple:
        return isinstance(value, tuple) and all(_is(v, args[0]) for v in value)
    if tp in (int, float):              # a bool is not a number here
        return isinstance(value, tp) and not isinstance(value, bool)
    return isinstance(value, tp)


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")

