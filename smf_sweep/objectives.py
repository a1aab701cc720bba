"""The sweep's objectives in one place: their names and directions, what forgetting means (its
definition, weights and clamp), the constraints, the hypervolume's reference point, the cost
metrics, the probes' tasks and directions, and the MLflow names they are logged under.

    obj = Objectives.from_spec(spec)              # spec.objectives, .forgetting, .constraints, .hypervolume
    obj.names, obj.modes                          # ("medmcqa_gain_pp", "forgetting"), ("max", "min")
    obj.scores({"medmcqa": 12.0, "triviaqa": -2.0, "wikitext": 3.0})
        # {medmcqa_gain_pp: 12.0, forgetting: 2.5, triviaqa_drop_pp: 2.0, wikitext_nats: 0.0296}
    obj.feasible(metrics), obj.hypervolume(rows)  # the constraints; the front's hypervolume
    Objectives.from_dict(json.loads(tag))         # what the sweep logged (parent run tag, sweep.json)

Forgetting (spec `forgetting.definition`; docs/contracts.md): each forgetting probe's *damage* is its
accuracy drop in pp or its perplexity increase in % of base (clamped at 0 with `clamp: true`, so a
gain on one probe cannot cancel damage on another). `mean`: their weighted mean (the default, the
study's); `worst`: the largest weighted damage (weights relative to the largest); `nats`: no single
number: the `forgetting` objective becomes one objective per forgetting probe in its own unit —
`<task>_nats` (Δ cross-entropy, nats per token = ln(ppl_after/ppl_before)) for a perplexity probe,
`<task>_drop_pp` for an accuracy probe (these component metrics are logged under every definition).

Everything that ranks trials reads an `Objectives`: the trial's outcome (trial.outcome), Optuna's
objectives and constraints (tune.make_searcher), the printed front and the confirm stage
(tune.summarize/confirm), the hypervolume logged per finished trial (tracking), and analysis
(fronts.csv, table.md, plots), which reads it back from the sweep's MLflow parent run (tag
`smf_sweep.objectives`) or sweep.json. Standard library only: analysis imports it without torch.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

# ---- names (docs/contracts.md, "Probe results and MLflow names") --------------------------------
TASK = "medmcqa"                          # the finetuning task; its gain is an objective
GAIN = "medmcqa_gain_pp"                  # = medmcqa/delta, points
FORGETTING = "forgetting"                 # the forgetting probes' damage, as `definition` combines it
MODES = ("max", "min")
DEFINITIONS = ("mean", "worst", "nats")   # forgetting's definitions (module docstring)
DEFAULT_BUDGET = 1.0                      # damage budget (pp, % of base) behind the default hypervolume reference

# cost of a trial (tune.sweep_trial), logged with its final metrics
COST_S = "cost/device_s"                  # wall seconds of its Ray Train run × workers × (GPUs or CPUs) per worker
COST_TOKENS = "cost/tokens"               # tokens trained on (the loop's train/tokens)
COST_MEMORY = "cost/peak_memory_bytes"    # peak device memory of rank 0 while training, curve points and probes left out (CUDA only; the loop's train/peak_memory_bytes)
COSTS = (COST_S, COST_TOKENS, COST_MEMORY)
VIOLATION = "constraint_violation"        # a trial's summed constraint violation (0 = feasible); logged with constraints

# the sweep's progress: parent-run step metrics, one point per ended search trial (tracking.MLflowTrialLogger)
HYPERVOLUME = "hypervolume"               # step = search trials ended (finished or failed)
HYPERVOLUME_BY_COMPUTE = "hypervolume_by_compute"   # step = cumulative device-seconds, rounded
COMPUTE = "compute_s"                     # cumulative device-seconds; step = search trials ended
FRONT_SIZE = "front_size"                 # feasible non-dominated trials; step = search trials ended

# MLflow tags
ROLE_TAG, ROLE_SWEEP, ROLE_TRIAL = "smf_sweep.role", "sweep", "trial"
OBJECTIVES_TAG = "smf_sweep.objectives"   # parent run: Objectives.to_json()
DEFAULT_POINT_TAG = "smf_sweep.default_point"
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"          # a run's description in the MLflow UI
FAILURE_TAG = "failure_reason"
STAGE_TAG = "stage"                       # search | confirm
STOPPED_AT_RUNG = "stopped_at_rung"       # tag of a trial scheduler.MOASHA stopped: the rung's budget (steps)
STOPPED_AT_STEP = "stopped_at_step"       # … and the step of the curve point it judged
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"   # custom_model_development: the UI opens on runs, not GenAI
EXPERIMENT_PREFIX = "smf_sweep/"          # experiment name = smf_sweep/<sweep name>

LABELS = {"medmcqa": "MedMCQA", "triviaqa": "TriviaQA", "wikitext": "WikiText"}


def before(task: str) -> str:
    return f"{task}/before"


def after(task: str) -> str:
    return f"{task}/after"


def delta(task: str) -> str:
    return f"{task}/delta"


def probe_delta(before_value, after_value, higher_is_better: bool):
    """A probe's change: accuracies (higher is better) in points, 100·(after − before); perplexities
    in % of base, 100·(after/before − 1). Works on floats and pandas Series."""
    if higher_is_better:
        return 100.0 * (after_value - before_value)
    return 100.0 * (after_value / before_value - 1.0)


def retrofit(task: str) -> str:
    return f"retrofit/{task}"


def base(task: str) -> str:
    """The parent run's metric of the base model's probe."""
    return f"base/{task}"


def drop_pp(task: str) -> str:
    """An accuracy probe's damage in its own unit: −delta, points."""
    return f"{task}_drop_pp"


def nats(task: str) -> str:
    """A perplexity probe's damage in its own unit: ln(ppl_after/ppl_before), nats per token."""
    return f"{task}_nats"


def task_label(task: str) -> str:
    return LABELS.get(task, task)


def device_seconds(seconds: float, workers: int, gpus_per_worker: float, cpus_per_worker: float) -> float:
    """A trial's compute: wall seconds × workers × the device each worker holds (its GPUs, or its
    CPUs when it has none) — a 0.5-GPU trial costs half a GPU-second per second."""
    return float(seconds) * workers * (gpus_per_worker if gpus_per_worker > 0 else cpus_per_worker)


# ---- constraints -------------------------------------------------------------------------------
_BOUND = re.compile(r"^\s*(>=|<=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Constraint:
    """`metric >= bound` or `metric <= bound` (spec: `constraints: {triviaqa/delta: ">= -1"}`)."""
    metric: str
    op: str
    bound: float

    def __post_init__(self):
        if self.op not in (">=", "<="):
            raise ValueError(f"constraints.{self.metric}: the operator must be >= or <=, got {self.op!r}")
        object.__setattr__(self, "bound", float(self.bound))
        if not math.isfinite(self.bound):
            raise ValueError(f"constraints.{self.metric}: the bound must be a finite number, got {self.bound}")

    @classmethod
    def parse(cls, metric: str, text: Any) -> "Constraint":
        """`(metric, ">= -1")` → Constraint."""
        m = _BOUND.match(text) if isinstance(text, str) else None
        if not m:
            raise ValueError(f"constraints.{metric}: expected \">= NUMBER\" or \"<= NUMBER\" (quoted in YAML), "
                             f"got {text!r}")
        return cls(str(metric), m.group(1), float(m.group(2)))

    @classmethod
    def parse_text(cls, text: str) -> "Constraint":
        """`"triviaqa/delta>=-1"` (a command line's form) → Constraint."""
        m = re.match(r"^\s*([^<>=\s]+)\s*((?:>=|<=).*)$", text)
        if not m:
            raise ValueError(f"a constraint is METRIC>=NUMBER or METRIC<=NUMBER, got {text!r}")
        return cls.parse(m.group(1), m.group(2))

    def violation(self, value):
        """Optuna's convention: <= 0 when the constraint holds, else by how much it is violated.
        Works on floats and pandas Series (NaN stays NaN: never feasible)."""
        return self.bound - value if self.op == ">=" else value - self.bound

    def text(self) -> str:
        return f"{self.op} {self.bound:g}"

    def __str__(self) -> str:
        return f"{self.metric} {self.text()}"


# ---- hypervolume ---------------------------------------------------------------------------------
def hypervolume(points: Iterable[Sequence[float]], reference: Sequence[float]) -> float:
    """The exact hypervolume of `points` (every objective minimised) against `reference`: the
    volume of the union of the boxes [p, reference]. Points not strictly better than the reference
    in every objective add nothing. 1-D: a difference; 2-D: a sweep over x; more: slices along the
    last objective (HSO), each slice a hypervolume one dimension lower — exact, fine for the few
    objectives and hundreds of trials of a sweep."""
    ref = tuple(float(r) for r in reference)
    pts = [tuple(float(x) for x in p) for p in points]
    pts = [p for p in pts if len(p) == len(ref) and all(x < r for x, r in zip(p, ref))]
    return _hv(_nondominated_min(pts), ref)


def _nondominated_min(pts: list[tuple]) -> list[tuple]:
    out = []
    for p in sorted(set(pts)):          # lexicographic: a dominating point sorts before those it dominates
        if not any(all(a <= b for a, b in zip(q, p)) for q in out):
            out.append(p)
    return out


def _hv(pts: list[tuple], ref: tuple) -> float:
    if not pts:
        return 0.0
    d = len(ref)
    if d == 1:
        return ref[0] - min(p[0] for p in pts)
    if d == 2:
        area, y_min = 0.0, ref[1]
        for x, y in sorted(pts):                         # x ascending
            if y < y_min:
                area += (ref[0] - x) * (y_min - y)
                y_min = y
        return area
    pts = sorted(pts, key=lambda p: p[-1])
    vol = 0.0
    for i, p in enumerate(pts):
        top = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if top > p[-1]:
            vol += (top - p[-1]) * _hv(_nondominated_min([q[:-1] for q in pts[:i + 1]]), ref[:-1])
    return vol


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
    """Objective names and modes (Optuna's order), forgetting's weights, definition and clamp, the
    constraints, the hypervolume's reference point (one value per objective; None: no default, as
    for a cost) and every probe's direction.

    Under `definition="nats"` a `forgetting` among `names` is replaced by the forgetting probes'
    component objectives (perplexity probes in nats first, then accuracy probes' drops; each in
    forgetting's mode). The defaults are the contracts' (and the spec's) defaults: they describe
    sweeps logged before the objectives were recorded with the run; tests/test_objectives.py keeps
    them equal to Spec's."""
    names: tuple[str, ...] = (GAIN, FORGETTING)
    modes: tuple[str, ...] = ("max", "min")
    forgetting: tuple[tuple[str, float], ...] = (("triviaqa", 1.0), ("wikitext", 1.0))   # weights
    probes: tuple[tuple[str, Probe], ...] = _DEFAULT_PROBES
    task: str = TASK
    definition: str = "mean"
    clamp: bool = False
    constraints: tuple[Constraint, ...] = ()
    reference: tuple[tuple[str, float | None], ...] = ()     # completed for every objective
    _probe: dict = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "forgetting", tuple((str(t), float(w)) for t, w in self.forgetting))
        object.__setattr__(self, "probes", tuple((str(t), p) for t, p in self.probes))
        object.__setattr__(self, "_probe", dict(self.probes))
        object.__setattr__(self, "clamp", bool(self.clamp))
        object.__setattr__(self, "constraints", tuple(self.constraints))
        names, modes = tuple(self.names), tuple(self.modes)
        if self.definition == "nats" and FORGETTING in names and len(names) == len(modes) \
                and self.task in self._probe and all(t in self._probe for t, _ in self.forgetting):
            i = names.index(FORGETTING)
            comps = self.components_of_forgetting()
            names = names[:i] + comps + names[i + 1:]
            modes = modes[:i] + (modes[i],) * len(comps) + modes[i + 1:]
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "modes", modes)
        self._check()
        given = dict(self.reference)
        unknown = [k for k in given if k not in self.names]
        if unknown:
            raise ValueError(f"hypervolume.reference.{unknown[0]}: not an objective; the objectives: {', '.join(self.names)}")
        ref = []
        for n in self.names:
            v = given[n] if n in given else self.default_reference(n)
            if v is not None and not math.isfinite(float(v)):
                raise ValueError(f"hypervolume.reference.{n}: must be a finite number, got {v}")
            ref.append((n, None if v is None else float(v)))
        object.__setattr__(self, "reference", tuple(ref))

    def _check(self) -> None:
        if self.definition not in DEFINITIONS:
            raise ValueError(f"forgetting.definition must be one of {', '.join(DEFINITIONS)}, got {self.definition!r}")
        if not self.names or len(self.names) != len(self.modes):
            raise ValueError(f"objectives: {len(self.names)} names and {len(self.modes)} modes")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"objectives: a name twice in {list(self.names)}")
        if self.task not in self._probe:
            raise ValueError(f"the task probe {self.task!r} is not among the probes {self.tasks}")
        for t, w in self.forgetting:
            if t not in self._probe or t == self.task:
                raise ValueError(f"forgetting.{t}: not a forgetting probe ({', '.join(self.forgetting_probes())})")
            if not (w >= 0 and math.isfinite(w)):
                raise ValueError(f"forgetting.{t}: weight must be >= 0, got {w}")
        if not self.forgetting or sum(w for _, w in self.forgetting) <= 0:
            raise ValueError("forgetting needs at least one probe with a positive weight")
        for n, m in zip(self.names, self.modes):
            if m not in MODES:
                raise ValueError(f"objective {n}: mode must be max or min, got {m!r}")
            if n not in self.allowed():
                raise ValueError(f"unknown objective {n!r}; allowed: {', '.join(sorted(self.allowed()))}")
        for c in self.constraints:
            if c.metric not in self.known():
                raise ValueError(f"constraints.{c.metric}: not a metric of a trial; known: {', '.join(sorted(self.known()))}")

    # ---- construction and serialisation ----
    @classmethod
    def from_spec(cls, spec, base_probes: Mapping[str, Any] | None = None) -> "Objectives":
        """From a Spec or its dict (Spec.to_dict()). Probe directions: the base probes' recorded
        `<task>.hib` where given (what produced the numbers), else what the probe class declares.
        `forgetting` in either form (flat weights = definition mean; or {definition, weights,
        clamp}); `constraints` {metric: ">= b"}; `hypervolume` {budget, reference}."""
        d = spec if isinstance(spec, Mapping) else spec.to_dict()
        objs = [o if isinstance(o, Mapping) else {"name": o.name, "mode": o.mode} for o in d["objectives"]]
        probes = []
        for t, p in d["probes"].items():
            variant = (p if isinstance(p, Mapping) else vars(p)).get("variant", "study")
            declared = _declared(t, variant)
            hib = (base_probes or {}).get(f"{t}.hib", declared.higher_is_better)
            probes.append((t, Probe(bool(hib), declared.metric)))
        definition, weights, clamp = forgetting_form(d.get("forgetting", dict(cls.forgetting)))
        hv = d.get("hypervolume") or {}
        obj = cls(names=tuple(o["name"] for o in objs), modes=tuple(o["mode"] for o in objs),
                  forgetting=tuple(weights.items()), probes=tuple(probes), definition=definition, clamp=clamp,
                  constraints=tuple(Constraint.parse(k, v) for k, v in (d.get("constraints") or {}).items()))
        budget = float(hv.get("budget", DEFAULT_BUDGET))
        given = dict(hv.get("reference") or {})
        if budget != DEFAULT_BUDGET or given:
            obj = dataclasses.replace(obj, reference=tuple(
                (n, given[n] if n in given else obj.default_reference(n, budget)) for n in obj.names)
                + tuple((k, v) for k, v in given.items() if k not in obj.names))      # refused by __post_init__
        return obj

    def to_dict(self) -> dict:
        return {"objectives": [{"name": n, "mode": m} for n, m in zip(self.names, self.modes)],
                "forgetting": dict(self.forgetting), "definition": self.definition, "clamp": self.clamp,
                "constraints": {c.metric: c.text() for c in self.constraints},
                "reference": dict(self.reference),
                "probes": {t: {"higher_is_better": p.higher_is_better, "metric": p.metric} for t, p in self.probes},
                "task": self.task, "gain": GAIN}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Objectives":
        """What to_dict wrote; records from before definitions, constraints and references existed
        read as the mean, no constraints, the default reference."""
        return cls(names=tuple(o["name"] for o in d["objectives"]), modes=tuple(o["mode"] for o in d["objectives"]),
                   forgetting=tuple(d["forgetting"].items()),
                   probes=tuple((t, Probe(bool(p["higher_is_better"]), p.get("metric", ""))) for t, p in d["probes"].items()),
                   task=d.get("task", TASK), definition=d.get("definition", "mean"), clamp=d.get("clamp", False),
                   constraints=tuple(Constraint.parse(k, v) for k, v in (d.get("constraints") or {}).items()),
                   reference=tuple((d.get("reference") or {}).items()))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> "Objectives":
        return cls.from_dict(json.loads(text))

    def with_objective(self, name: str, mode: str | None = None, reference: float | None = None) -> "Objectives":
        """These objectives and one more (e.g. analysis's --cost: cost/device_s, min)."""
        if name in self.names:
            return self
        return dataclasses.replace(self, names=self.names + (name,), modes=self.modes + (mode or self.mode(name),),
                                   reference=self.reference + ((name, reference),))

    def with_constraints(self, extra: Iterable[Constraint]) -> "Objectives":
        return dataclasses.replace(self, constraints=self.constraints + tuple(extra))

    # ---- what the names mean ----
    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t, _ in self.probes)

    def forgetting_probes(self) -> tuple[str, ...]:
        return tuple(t for t in self.tasks if t != self.task)

    def weighted(self) -> tuple[tuple[str, float], ...]:
        """The forgetting probes that count (weight > 0), with their weights."""
        return tuple((t, w) for t, w in self.forgetting if w > 0)

    @property
    def scalar(self) -> bool:
        """Whether forgetting is one number (mean, worst) rather than one objective per probe (nats)."""
        return self.definition != "nats"

    def component(self, task: str) -> str:
        """A forgetting probe's damage in its own unit: `<task>_nats` (perplexity) or `<task>_drop_pp`."""
        return drop_pp(task) if self.higher_is_better(task) else nats(task)

    def components_of_forgetting(self) -> tuple[str, ...]:
        """nats's objectives in place of `forgetting`: perplexity probes (nats) first, then accuracy probes."""
        ts = [t for t, _ in self.weighted()]
        return tuple(self.component(t) for t in ts if not self.higher_is_better(t)) + \
            tuple(self.component(t) for t in ts if self.higher_is_better(t))

    def forgetting_metrics(self) -> tuple[str, ...]:
        """What the forgetting budget bounds: `forgetting` (mean, worst), else each component (nats)."""
        return (FORGETTING,) if self.scalar else self.components_of_forgetting()

    def allowed(self) -> set[str]:
        """Names an objective may have (the spec checks the same set; `forgetting` under nats expands)."""
        return ({GAIN} | ({FORGETTING} if self.scalar else set()) | {delta(t) for t in self.tasks}
                | {self.component(t) for t in self.forgetting_probes()} | set(COSTS))

    def known(self) -> set[str]:
        """Every final metric a constraint may bound: what an objective may be."""
        return self.allowed()

    def higher_is_better(self, task: str) -> bool:
        return self._probe[task].higher_is_better

    def weight(self, task: str) -> float:
        return dict(self.forgetting).get(task, 0.0)

    def mode(self, name: str) -> str:
        """The direction of a metric: an objective's mode, else the metric's natural one (gain and
        a higher-is-better probe's delta: max; forgetting, its components, costs and a
        lower-is-better probe's delta: min)."""
        if name in self.names:
            return self.modes[self.names.index(name)]
        if name == FORGETTING or name in COSTS or name == VIOLATION or _component_task(name):
            return "min"
        if name.endswith("/delta") and name[:-len("/delta")] in self._probe:
            return "max" if self.higher_is_better(name[:-len("/delta")]) else "min"
        return "max"

    @property
    def senses(self) -> dict[str, str]:
        """{objective name: mode}, in Optuna's order."""
        return dict(zip(self.names, self.modes))

    def metrics(self) -> list[str]:
        """Objectives first, then gain, forgetting (or its components under nats) and each
        forgetting probe's delta (no repeats)."""
        out = list(self.names)
        for n in [GAIN, *self.forgetting_metrics(), *(delta(t) for t, _ in self.forgetting)]:
            if n not in out:
                out.append(n)
        return out

    def recorded(self) -> list[str]:
        """metrics(), then what the constraints read and the costs: a trial's numbers that matter."""
        return list(dict.fromkeys(self.metrics() + [c.metric for c in self.constraints] + list(COSTS)))

    # ---- the numbers ----
    def delta(self, task: str, before_value, after_value):
        """The probe's change in its direction (probe_delta)."""
        return probe_delta(before_value, after_value, self.higher_is_better(task))

    def damage(self, task: str, delta_value):
        """A probe's delta turned into damage (positive = forgot): −Δ for accuracies, +Δ for perplexity."""
        return -delta_value if self.higher_is_better(task) else delta_value

    def component_value(self, task: str, delta_value):
        """The damage in the probe's own unit: the drop in pp, or ln(ppl_after/ppl_before) =
        ln(1 + Δ%/100) in nats per token (never clamped)."""
        if self.higher_is_better(task):
            return -delta_value
        return _ln(1.0 + delta_value / 100.0)

    def forgetting_of(self, deltas: Mapping[str, Any]):
        """Forgetting by its definition (deltas: {task: delta}; floats or pandas Series): `mean` the
        weighted mean of the weighted probes' damage, `worst` the largest of (w/w_max)·damage;
        with clamp, each damage is max(0, damage) first. No single value under nats (ValueError)."""
        if not self.scalar:
            raise ValueError("forgetting has no single value under definition nats: its components are the objectives")
        probes = self.weighted()
        dmg = [(w, self.damage(t, deltas[t])) for t, w in probes]
        if self.clamp:
            dmg = [(w, _clamp0(x)) for w, x in dmg]
        if self.definition == "mean":
            return sum(w * x for w, x in dmg) / sum(w for w, _ in dmg)
        top = max(w for w, _ in dmg)
        out = None
        for w, x in dmg:
            v = (w / top) * x
            out = v if out is None else _max2(out, v)
        return out

    def scores(self, deltas: Mapping[str, Any]) -> dict:
        """{gain, forgetting (unless nats), each forgetting probe's component}, from {task: delta}
        (the objectives are among these and the deltas)."""
        out = {GAIN: deltas[self.task]}
        if self.scalar:
            out[FORGETTING] = self.forgetting_of(deltas)
        for t in self.forgetting_probes():
            if t in deltas:
                out[self.component(t)] = self.component_value(t, deltas[t])
        return out

    def values(self, metrics: Mapping[str, Any]) -> tuple | None:
        """The objective values of a trial's metrics, in order; None unless all are finite numbers."""
        vals = tuple(metrics.get(n) for n in self.names)
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals)
        return vals if ok else None

    def rank_key(self, metrics: Mapping[str, Any]) -> tuple:
        """Sort key, best first: the first objective in its direction, ties by the next ones."""
        return tuple(-float(metrics[n]) if m == "max" else float(metrics[n]) for n, m in zip(self.names, self.modes))

    # ---- constraints and budget ----
    def violations(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """{constraint key: value} in Optuna's convention (<= 0 holds); a missing or non-finite
        metric violates by +inf. For Optuna (Trial.set_constraint)."""
        out = {}
        for c in self.constraints:
            v = metrics.get(c.metric)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            out[str(c).replace(" ", "")] = float(c.violation(v)) if ok else math.inf
        return out

    def violation(self, metrics: Mapping[str, Any]) -> float:
        """The summed violation of a trial's metrics (0 = feasible)."""
        return sum(max(0.0, v) for v in self.violations(metrics).values())

    def feasible(self, metrics):
        """Whether every constraint holds: a bool for a dict of metrics, a boolean Series for a
        DataFrame (a missing or NaN metric is not feasible); True when there are no constraints."""
        out = True
        for c in self.constraints:
            v = metrics.get(c.metric) if hasattr(metrics, "get") else None
            if v is None or isinstance(v, bool) or (isinstance(v, str)):
                v = math.nan
            ok = c.violation(v) <= 0
            ok = ok if hasattr(ok, "index") else bool(ok)          # a Series stays one; numpy bools become bool
            out = ok if out is True else (out & ok)
        return out

    def budget_for(self, name: str, budget: float = DEFAULT_BUDGET) -> float | None:
        """A damage budget (pp of accuracy, % of perplexity) in a metric's unit: forgetting and a
        drop: budget; a nats component: ln(1 + budget/100); a forgetting probe's delta: −budget (pp)
        or +budget (%); the gain and the task's delta: 0; a cost: None."""
        t = _component_task(name)
        if name == FORGETTING or (t and name == drop_pp(t)):
            return float(budget)
        if t and name == nats(t):
            return math.log1p(budget / 100.0)
        if name == GAIN:
            return 0.0
        if name.endswith("/delta") and name[:-len("/delta")] in self._probe:
            task = name[:-len("/delta")]
            if task == self.task:
                return 0.0
            return -float(budget) if self.higher_is_better(task) else float(budget)
        return None

    def within_budget(self, metrics, budget: float):
        """Forgetting within the budget: forgetting <= budget (mean, worst), every component within
        its unit's budget (nats). A bool for a dict, a boolean Series for a DataFrame."""
        out = True
        for n in self.forgetting_metrics():
            v = metrics.get(n) if hasattr(metrics, "get") else None
            ok = (math.nan if v is None else v) <= self.budget_for(n, budget)
            ok = ok if hasattr(ok, "index") else bool(ok)
            out = ok if out is True else (out & ok)
        return out

    def default_reference(self, name: str, budget: float = DEFAULT_BUDGET) -> float | None:
        """The hypervolume's reference value of an objective: zero gain and the damage budget
        (budget_for); None for a cost (the spec must name one)."""
        return self.budget_for(name, budget)

    # ---- the front's hypervolume ----
    def hypervolume(self, rows: Iterable[Mapping[str, Any]]) -> float | None:
        """The hypervolume of the feasible trials among `rows` (metrics dicts) against the
        reference, in the objectives' units (e.g. pp × pp); None when an objective has no reference."""
        ref = dict(self.reference)
        if any(ref[n] is None for n in self.names):
            return None
        sign = [-1.0 if m == "max" else 1.0 for m in self.modes]          # minimise everything
        pts = [tuple(s * v for s, v in zip(sign, vals)) for r in rows
               if (vals := self.values(r)) is not None and self.feasible(r) is True]
        return hypervolume(pts, tuple(s * ref[n] for s, n in zip(sign, self.names)))

    def front_size(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Feasible trials no other feasible trial dominates (duplicates all count)."""
        sign = [-1.0 if m == "max" else 1.0 for m in self.modes]
        pts = [tuple(s * v for s, v in zip(sign, vals)) for r in rows
               if (vals := self.values(r)) is not None and self.feasible(r) is True]
        return sum(not any(all(a <= b for a, b in zip(q, p)) and q != p for q in pts) for p in pts)

    def progress(self, rows: Sequence[Mapping[str, Any]]) -> list[dict]:
        """The sweep's progress over its ended trials in order (failed ones too: they cost compute):
        [{trials, compute_s, hypervolume, front_size}] after each — what tracking logs per trial."""
        out, seen, compute = [], [], 0.0
        for i, r in enumerate(rows, start=1):
            c = r.get(COST_S)
            compute += float(c) if isinstance(c, (int, float)) and math.isfinite(c) else 0.0
            seen.append(r)
            out.append({"trials": i, COMPUTE: compute, HYPERVOLUME: self.hypervolume(seen),
                        FRONT_SIZE: self.front_size(seen)})
        return out

    # ---- words ----
    def short(self, name: str) -> str:
        """'gain', 'forgetting', 'TriviaQA Δ', 'WikiText nats', 'TriviaQA drop', 'device-s'."""
        t = _component_task(name)
        if name == GAIN:
            return "gain"
        if name == FORGETTING:
            return "forgetting"
        if t:
            return f"{task_label(t)} {'nats' if name == nats(t) else 'drop'}"
        if name.endswith("/delta"):
            return f"{task_label(name[:-len('/delta')])} Δ"
        return {COST_S: "device-s", COST_TOKENS: "tokens", COST_MEMORY: "peak memory"}.get(name, name)

    def unit(self, task: str) -> str:
        return "pp" if self.higher_is_better(task) else "% of base"

    def label(self, name: str) -> str:
        """An axis or column label with its unit; forgetting spells out its definition."""
        t = _component_task(name)
        if name == GAIN:
            return f"{task_label(self.task)} gain (pp)"
        if name == FORGETTING:
            return f"forgetting ({self.forgetting_definition()})"
        if t:
            return (f"{task_label(t)} Δ cross-entropy (nats/token)" if name == nats(t)
                    else f"{task_label(t)} drop (pp)")
        if name.endswith("/delta"):
            task = name[:-len("/delta")]
            what = "perplexity Δ" if not self.higher_is_better(task) else "Δ"
            return f"{task_label(task)} {what} ({self.unit(task)})"
        return {COST_S: "device-seconds (wall s × workers × GPUs|CPUs)", COST_TOKENS: "tokens trained on",
                COST_MEMORY: "peak device memory (bytes)"}.get(name, name)

    def arrow(self, name: str) -> str:
        return "↑" if self.mode(name) == "max" else "↓"

    def forgetting_definition(self) -> str:
        if not self.scalar:
            parts = [self.label(c) for c in self.components_of_forgetting()]
            return "one objective per probe: " + ", ".join(parts)
        parts = [(w, f"{task_label(t)} {'drop in pp' if self.higher_is_better(t) else 'increase in %'}")
                 for t, w in self.weighted()]
        tail = ", each clamped at 0" if self.clamp else ""
        if len(parts) == 1:
            return parts[0][1] + tail
        word = "mean" if self.definition == "mean" else "worst"
        if len({w for w, _ in parts}) == 1:
            return f"{word} of " + " and ".join(p for _, p in parts) + tail
        if self.definition == "worst":
            top = max(w for w, _ in parts)
            return "worst of " + ", ".join(f"{w / top:.3g}·{p}" for w, p in parts) + tail
        total = sum(w for w, _ in parts)
        return " + ".join(f"{w / total:.3g}·{p}" for w, p in parts) + tail

    def describe(self) -> str:
        """One line: 'medmcqa_gain_pp ↑ (maximise), forgetting ↓ (minimise; mean of TriviaQA drop in
        pp and ...)', then the constraints."""
        out = []
        for n, m in zip(self.names, self.modes):
            extra = f"; {self.forgetting_definition()}" if n == FORGETTING else ""
            out.append(f"{n} {'↑' if m == 'max' else '↓'} ({'maximise' if m == 'max' else 'minimise'}{extra})")
        text = ", ".join(out)
        if self.constraints:
            text += "; subject to " + ", ".join(str(c) for c in self.constraints)
        return text


def forgetting_form(f: Any) -> tuple[str, dict, bool]:
    """(definition, weights, clamp) of a spec's `forgetting`: {definition, weights, clamp}, or the
    flat weights {triviaqa: 1.0, wikitext: 1.0} (= definition mean, no clamp)."""
    if isinstance(f, Mapping) and ("weights" in f or "definition" in f or "clamp" in f):
        return str(f.get("definition", "mean")), dict(f.get("weights", dict(Objectives.forgetting))), bool(f.get("clamp", False))
    if not isinstance(f, Mapping):          # a Spec's Forgetting
        return f.definition, dict(f.weights), bool(f.clamp)
    return "mean", dict(f), False


def _component_task(name: str) -> str | None:
    for suffix in ("_drop_pp", "_nats"):
        if name.endswith(suffix) and "/" not in name:
            return name[:-len(suffix)]
    return None


def _ln(x):
    """ln on a float (NaN for x <= 0) or on a pandas Series (numpy's)."""
    if isinstance(x, (int, float)):
        return math.log(x) if x > 0 else math.nan
    import numpy as np

    return np.log(x.where(x > 0)) if hasattr(x, "where") else np.log(x)


def _clamp0(x):
    if isinstance(x, (int, float)):
        return max(0.0, x) if x == x else x
    return x.clip(lower=0)


def _max2(a, b):
    """The larger; NaN if either is (floats or pandas Series)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.nan if a != a or b != b else max(a, b)
    import numpy as np

    return np.maximum(a, b)


def _declared(task: str, variant: str) -> Probe:
    """What the probe class registered as `<task>:<variant>` declares."""
    from .probes import PROBES

    cls = PROBES[f"{task}:{variant}"]
    return Probe(bool(cls.higher_is_better), str(cls.metric))


def margins(names: Sequence[str], epsilon: Mapping[str, float] | None) -> tuple[float, ...] | None:
    """Early stopping's noise margins (scheduler.py): {objective: margin} → a margin per objective in
    `names`' order (0 where not given); None when `epsilon` is empty (MO-ASHA exactly). Unknown names
    and negative or non-finite margins raise."""
    if not epsilon:
        return None
    unknown = sorted(set(epsilon) - set(names))
    if unknown:
        raise ValueError(f"early_stopping.epsilon: {', '.join(unknown)} is not an objective ({', '.join(names)})")
    bad = {n: v for n, v in epsilon.items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or not (math.isfinite(v) and v >= 0)}
    if bad:
        raise ValueError(f"early_stopping.epsilon: margins must be finite numbers >= 0, got {bad}")
    return tuple(float(epsilon.get(n, 0.0)) for n in names)
