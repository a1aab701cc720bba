"""The sweep's objectives in one place: their names and directions, forgetting's definition and
weights, the probes' tasks and directions, and the MLflow names they are logged under.

    obj = Objectives.from_spec(spec)              # spec.objectives, spec.forgetting, the probes' directions
    obj.names, obj.modes                          # ("medmcqa_gain_pp", "forgetting"), ("max", "min")
    obj.scores({"medmcqa": 12.0, "triviaqa": -2.0, "wikitext": 3.0})   # {medmcqa_gain_pp: 12.0, forgetting: 2.5}
    Objectives.from_dict(json.loads(tag))         # what the sweep logged (parent run tag, sweep.json)

Everything that ranks trials reads an `Objectives`: the trial's outcome (trial.outcome), Optuna's
directions (tune.make_searcher reads the same spec fields), the printed front and the confirm stage
(tune.summarize/confirm), and analysis (fronts.csv, table.md, plots), which reads it back from the
sweep's MLflow parent run (tag `smf_sweep.objectives`) or sweep.json. Standard library only: analysis
imports it without torch.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

# ---- names (docs/contracts.md, "Probe results and MLflow names") --------------------------------
TASK = "medmcqa"                          # the finetuning task; its gain is an objective
GAIN = "medmcqa_gain_pp"                  # = medmcqa/delta, points
FORGETTING = "forgetting"                 # weighted mean of the forgetting probes' damage
MODES = ("max", "min")

# MLflow tags
ROLE_TAG, ROLE_SWEEP, ROLE_TRIAL = "smf_sweep.role", "sweep", "trial"
OBJECTIVES_TAG = "smf_sweep.objectives"   # parent run: Objectives.to_json()
DEFAULT_POINT_TAG = "smf_sweep.default_point"
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"          # a run's description in the MLflow UI
FAILURE_TAG = "failure_reason"
STAGE_TAG = "stage"                       # search | confirm
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"   # custom_model_development: the UI opens on runs, not GenAI
EXPERIMENT_PREFIX = "smf_sweep/"          # experiment name = smf_sweep/<sweep name>

LABELS = {"medmcqa": "MedMCQA", "triviaqa": "TriviaQA", "wikitext": "WikiText"}


def before(task: str) -> str:
    return f"{task}/before"


def after(task: str) -> str:
    return f"{task}/after"


def delta(task: str) -> str:
    return f"{task}/delta"


def retrofit(task: str) -> str:
    return f"retrofit/{task}"


def base(task: str) -> str:
    """The parent run's metric of the base model's probe."""
    return f"base/{task}"


def task_label(task: str) -> str:
    return LABELS.get(task, task)


# ---- the objectives ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """What analysis needs of a probe: its direction and metric (declared by the probe class)."""
    higher_is_better: bool
    metric: str = ""                      # acc, ppl, word_perplexity, ...


_DEFAULT_PROBES = (("medmcqa", Probe(True, "acc")), ("wikitext", Probe(False, "ppl")),
                   ("triviaqa", Probe(True, "acc")))


@dataclass(frozen=True)
class Objectives:
    """Objective names and modes (Optuna's order), forgetting's weights, every probe's direction.

    The defaults are the contracts' (and the spec's) defaults: they describe sweeps logged before
    the objectives were recorded with the run; tests/test_objectives.py keeps them equal to Spec's."""
    names: tuple[str, ...] = (GAIN, FORGETTING)
    modes: tuple[str, ...] = ("max", "min")
    forgetting: tuple[tuple[str, float], ...] = (("triviaqa", 1.0), ("wikitext", 1.0))
    probes: tuple[tuple[str, Probe], ...] = _DEFAULT_PROBES
    task: str = TASK
    _probe: dict = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "modes", tuple(self.modes))
        object.__setattr__(self, "forgetting", tuple((str(t), float(w)) for t, w in self.forgetting))
        object.__setattr__(self, "probes", tuple((str(t), p) for t, p in self.probes))
        object.__setattr__(self, "_probe", dict(self.probes))
        self._check()

    def _check(self) -> None:
        if not self.names or len(self.names) != len(self.modes):
            raise ValueError(f"objectives: {len(self.names)} names and {len(self.modes)} modes")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"objectives: a name twice in {list(self.names)}")
        for n, m in zip(self.names, self.modes):
            if m not in MODES:
                raise ValueError(f"objective {n}: mode must be max or min, got {m!r}")
            if n not in self.allowed():
                raise ValueError(f"unknown objective {n!r}; allowed: {', '.join(sorted(self.allowed()))}")
        if self.task not in self._probe:
            raise ValueError(f"the task probe {self.task!r} is not among the probes {self.tasks}")
        for t, w in self.forgetting:
            if t not in self._probe or t == self.task:
                raise ValueError(f"forgetting.{t}: not a forgetting probe ({', '.join(self.forgetting_probes())})")
            if not (w >= 0 and math.isfinite(w)):
                raise ValueError(f"forgetting.{t}: weight must be >= 0, got {w}")
        if not self.forgetting or sum(w for _, w in self.forgetting) <= 0:
            raise ValueError("forgetting needs at least one probe with a positive weight")

    # ---- construction and serialisation ----
    @classmethod
    def from_spec(cls, spec, base_probes: Mapping[str, Any] | None = None) -> "Objectives":
        """From a Spec or its dict (Spec.to_dict()). Probe directions: the base probes' recorded
        `<task>.hib` where given (what produced the numbers), else what the probe class declares."""
        d = spec if isinstance(spec, Mapping) else spec.to_dict()
        objs = [o if isinstance(o, Mapping) else {"name": o.name, "mode": o.mode} for o in d["objectives"]]
        probes = []
        for t, p in d["probes"].items():
            variant = (p if isinstance(p, Mapping) else vars(p)).get("variant", "study")
            declared = _declared(t, variant)
            hib = (base_probes or {}).get(f"{t}.hib", declared.higher_is_better)
            probes.append((t, Probe(bool(hib), declared.metric)))
        return cls(names=tuple(o["name"] for o in objs), modes=tuple(o["mode"] for o in objs),
                   forgetting=tuple(d["forgetting"].items()), probes=tuple(probes))

    def to_dict(self) -> dict:
        return {"objectives": [{"name": n, "mode": m} for n, m in zip(self.names, self.modes)],
                "forgetting": dict(self.forgetting),
                "probes": {t: {"higher_is_better": p.higher_is_better, "metric": p.metric} for t, p in self.probes},
                "task": self.task, "gain": GAIN}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Objectives":
        return cls(names=tuple(o["name"] for o in d["objectives"]), modes=tuple(o["mode"] for o in d["objectives"]),
                   forgetting=tuple(d["forgetting"].items()),
                   probes=tuple((t, Probe(bool(p["higher_is_better"]), p.get("metric", ""))) for t, p in d["probes"].items()),
                   task=d.get("task", TASK))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> "Objectives":
        return cls.from_dict(json.loads(text))

    # ---- what the names mean ----
    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t, _ in self.probes)

    def forgetting_probes(self) -> tuple[str, ...]:
        return tuple(t for t in self.tasks if t != self.task)

    def allowed(self) -> set[str]:
        """Names an objective may have (the spec checks the same set)."""
        return {GAIN, FORGETTING} | {delta(t) for t in self.tasks}

    def higher_is_better(self, task: str) -> bool:
        return self._probe[task].higher_is_better

    def weight(self, task: str) -> float:
        return dict(self.forgetting).get(task, 0.0)

    def mode(self, name: str) -> str:
        """The direction of a metric: an objective's mode, else the metric's natural one (gain and
        a higher-is-better probe's delta: max; forgetting and a lower-is-better probe's delta: min)."""
        if name in self.names:
            return self.modes[self.names.index(name)]
        if name == FORGETTING:
            return "min"
        if name.endswith("/delta") and name[:-len("/delta")] in self._probe:
            return "max" if self.higher_is_better(name[:-len("/delta")]) else "min"
        return "max"

    @property
    def senses(self) -> dict[str, str]:
        """{objective name: mode}, in Optuna's order."""
        return dict(zip(self.names, self.modes))

    def metrics(self) -> list[str]:
        """Objectives first, then gain, forgetting and each forgetting probe's delta (no repeats)."""
        out = list(self.names)
        for n in [GAIN, FORGETTING, *(delta(t) for t, _ in self.forgetting)]:
            if n not in out:
                out.append(n)
        return out

    # ---- the numbers ----
    def delta(self, task: str, before_value, after_value):
        """Accuracies (higher is better): points, 100·(after − before). Perplexities: % of base,
        100·(after/before − 1). Works on floats and pandas Series."""
        if self.higher_is_better(task):
            return 100.0 * (after_value - before_value)
        return 100.0 * (after_value / before_value - 1.0)

    def damage(self, task: str, delta_value):
        """A probe's delta turned into damage (positive = forgot): −Δ for accuracies, +Δ for perplexity."""
        return -delta_value if self.higher_is_better(task) else delta_value

    def forgetting_of(self, deltas: Mapping[str, Any]):
        """The weighted mean of the forgetting probes' damage (deltas: {task: delta})."""
        total = sum(w for _, w in self.forgetting)
        return sum(w * self.damage(t, deltas[t]) for t, w in self.forgetting) / total

    def scores(self, deltas: Mapping[str, Any]) -> dict:
        """{gain, forgetting}, from {task: delta} (the objectives are among these and the deltas)."""
        return {GAIN: deltas[self.task], FORGETTING: self.forgetting_of(deltas)}

    def values(self, metrics: Mapping[str, Any]) -> tuple | None:
        """The objective values of a trial's metrics, in order; None unless all are finite numbers."""
        vals = tuple(metrics.get(n) for n in self.names)
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals)
        return vals if ok else None

    def rank_key(self, metrics: Mapping[str, Any]) -> tuple:
        """Sort key, best first: the first objective in its direction, ties by the next ones."""
        return tuple(-float(metrics[n]) if m == "max" else float(metrics[n]) for n, m in zip(self.names, self.modes))

    # ---- words ----
    def short(self, name: str) -> str:
        """'gain', 'forgetting', 'TriviaQA Δ'."""
        if name == GAIN:
            return "gain"
        if name == FORGETTING:
            return "forgetting"
        if name.endswith("/delta"):
            return f"{task_label(name[:-len('/delta')])} Δ"
        return name

    def unit(self, task: str) -> str:
        return "pp" if self.higher_is_better(task) else "% of base"

    def label(self, name: str) -> str:
        """An axis or column label with its unit; forgetting spells out its weights."""
        if name == GAIN:
            return f"{task_label(self.task)} gain (pp)"
        if name == FORGETTING:
            return f"forgetting ({self.forgetting_definition()})"
        if name.endswith("/delta"):
            t = name[:-len("/delta")]
            what = "perplexity Δ" if not self.higher_is_better(t) else "Δ"
            return f"{task_label(t)} {what} ({self.unit(t)})"
        return name

    def arrow(self, name: str) -> str:
        return "↑" if self.mode(name) == "max" else "↓"

    def forgetting_definition(self) -> str:
        parts = [(w, f"{task_label(t)} {'drop in pp' if self.higher_is_better(t) else 'increase in %'}")
                 for t, w in self.forgetting if w > 0]
        if len(parts) == 1:
            return parts[0][1]
        if len({w for w, _ in parts}) == 1:
            return "mean of " + " and ".join(p for _, p in parts)
        total = sum(w for w, _ in parts)
        return " + ".join(f"{w / total:.3g}·{p}" for w, p in parts)

    def describe(self) -> str:
        """One line: 'medmcqa_gain_pp ↑ (max), forgetting ↓ (min; mean of TriviaQA drop in pp and ...)'."""
        out = []
        for n, m in zip(self.names, self.modes):
            extra = f"; {self.forgetting_definition()}" if n == FORGETTING else ""
            out.append(f"{n} {'↑' if m == 'max' else '↓'} ({'maximise' if m == 'max' else 'minimise'}{extra})")
        return ", ".join(out)


def _declared(task: str, variant: str) -> Probe:
    """What the probe class registered as `<task>:<variant>` declares."""
    from .probes import PROBES

    cls = PROBES[f"{task}:{variant}"]
    return Probe(bool(cls.higher_is_better), str(cls.metric))
