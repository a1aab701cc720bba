"""The sweep spec: typed, validated before Ray starts. defaults ← YAML ← `--set key=value`.

    spec = load_spec("search_spaces/smoke.yaml", overrides=["search.trials=4"])

Every error is a SpecError naming the file, the key path and what is allowed, e.g.
    search_spaces/x.yaml: methods.smf.search.top_t: low (512) must be < high (8)
A parameter of a method's `fixed` / `search` / `points` is either a field of the method's config
(methods/<name>.py) or of the training config (train_loop.TrainConfig), e.g. `lr`, `epochs`."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import re

import yaml

from .choices import check_choices, choices, one_of
from .hub import is_hub_id
from .curves import CurveConfig
from .methods import METHODS
from .probes import TASKS, VARIANTS
from .rungs import off_ladder
from .train_loop import TrainConfig
from .yamlio import load_yaml


class SpecError(ValueError):
    """A bad spec: the message says which file, which key and what is allowed."""


PARAM_TYPES = ("choice", "uniform", "loguniform", "int", "logint")


@dataclass
class Param:
    """One searched parameter: `{choice: [a, b]}`, `{loguniform: [lo, hi]}`, `{uniform: …}`,
    `{int: [lo, hi]}`, `{logint: [lo, hi]}`."""
    type: str
    values: list = field(default_factory=list)    # choice
    low: float | None = None
    high: float | None = None

    def candidates(self) -> list:
        return list(self.values) if self.type == "choice" else [self.low, self.high]


@dataclass
class Resources:
    workers: int = 1                 # Ray Train workers of one trial (data parallel)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0     # fractions pack one-worker trials on a GPU (SMF, LoRA)


@dataclass
class MethodSpec:
    """One arm of the sweep. Its key names it (in Optuna, MLflow and the plots); `method` is the
    registered method it runs — two arms of one method differ in `fixed` (e.g. the study's SMF
    recipe against ours)."""
    method: str | None = None                                   # registered method; None = the arm's key
    fixed: dict[str, Any] = field(default_factory=dict)        # method/train fields held constant
    search: dict[str, Param] = field(default_factory=dict)     # searched fields
    points: list[dict[str, Any]] = field(default_factory=list)  # configs evaluated first (the study's)
    resources: Resources = field(default_factory=Resources)


@dataclass
class ProbeCfg:
    variant: str = "study"            # study (QWEN protocol) or harness (lm-evaluation-harness)
    source: str | None = None         # default: the spec's data.task / data.probes source
    limit: int | None = None          # None: the protocol's default (1000); 0: everything
    options: dict[str, Any] = field(default_factory=dict)   # probe fields, e.g. max_length


@dataclass
class Objective:
    name: str
    mode: Literal["max", "min"]

    def __post_init__(self):
        check_choices(self, "objective.")


@dataclass
class Forgetting:
    """What forgetting means (objectives.py): each forgetting probe's damage (accuracy drop in pp,
    perplexity increase in %), combined by `definition` — `mean` (weighted mean), `worst` (largest
    weighted damage) or `nats` (no single number: one objective per probe, WikiText as Δ
    cross-entropy in nats/token, TriviaQA as its drop in pp). `clamp`: damage below 0 counts as 0.
    The flat form `forgetting: {triviaqa: 1.0, wikitext: 1.0}` is `mean` with those weights."""
    definition: Literal["mean", "worst", "nats"] = "mean"
    weights: dict[str, float] = field(default_factory=lambda: {"triviaqa": 1.0, "wikitext": 1.0})
    clamp: bool = False

    def __post_init__(self):
        check_choices(self, "forgetting.")

    def legacy(self) -> bool:
        """Whether the flat form says it all (mean, no clamp): to_dict writes that form, so the spec
        hashes of sweeps started before definitions existed do not change."""
        return self.definition == "mean" and not self.clamp


FORGETTING_OPTIONS = ("definition", "weights", "clamp")


def _forgetting(value, where: str):
    """The spec's `forgetting` in its full form: flat weights become {weights: …}; probe keys beside
    `definition`/`clamp` (e.g. `--set forgetting.definition=worst` on a flat spec) are weights."""
    if not isinstance(value, dict):
        return value                                     # _convert reports the type
    weights = {k: v for k, v in value.items() if k not in FORGETTING_OPTIONS}
    opts = {k: v for k, v in value.items() if k in FORGETTING_OPTIONS}
    if weights and "weights" in opts:
        raise _err(where, f"weights go under forgetting.weights; unknown key(s) {sorted(weights)} beside it "
                          f"(allowed: {', '.join(FORGETTING_OPTIONS)})")
    return {**opts, "weights": weights} if weights else opts


@dataclass
class Hypervolume:
    """The hypervolume's reference point (logged per finished trial, plotted by analysis): an
    objective's value there; default: zero gain (0 for the task's delta) and each damage at
    `budget` (pp drop, % perplexity increase, ln(1 + budget/100) nats; ±budget for a forgetting
    probe's delta). A cost objective has no default."""
    budget: float = 1.0
    reference: dict[str, float] = field(default_factory=dict)


@dataclass
class EarlyStopping:
    """Multi-objective early stopping (scheduler.MOASHA): at rungs of grace·η^k optimizer steps a
    trial continues while it ranks in the top 1/η of the trials the rung has seen (non-dominated
    sorting of the curve's objectives, ties in a front by crowding distance or ε-net); the rest stop. Needs
    the learning–forgetting curves (curves.every > 0) and grace >= curves.every. A method in
    `grace_per_method` is first judged at its own rung (one of the ladder's), later than grace."""
    grace: int = 8                     # the first rung, in optimizer steps (no trial stops before it)
    eta: float = 3.0                   # rungs grow ×η; a rung keeps its best max(1, ⌊n/η⌋) of n (n < η: all)
    tie_break: Literal["crowding", "eps_net"] = "crowding"   # inside the cut-off front: larger crowding distance
                                       # first (NSGA-II's), or eps_net: MO-ASHA's own ε-net order (scheduler.py)
    epsilon: dict[str, float] = field(default_factory=dict)   # {objective: margin}: dominance beyond the
                                       # curve points' noise, and a trial on that first front continues
                                       # (scheduler.py; a deviation from MO-ASHA, off when empty)
    per_method: bool = False           # judge a trial only against its own method's trials at the rung (a
                                       # slow starter such as SMF keeps its best third; a deviation, off)
    grace_per_method: dict[str, int] = field(default_factory=dict)   # {method: its first rung, steps}: a method
                                       # that starts slow (SMF on the world) is first judged later; one of the
                                       # rungs grace·η^k, so its trials meet the others' there (a deviation, off)
    optuna: Literal["pruned", "complete", "fail"] = "pruned"   # what Optuna is told of a stopped trial:
                                       # pruned (TPE ranks it below every complete trial; on no front),
                                       # complete (its values at the rung: TPE and best_trials see them), fail (ignored)

    def __post_init__(self):
        check_choices(self, "search.early_stopping.")
        if isinstance(self.grace, bool) or not isinstance(self.grace, int) or self.grace < 1:
            raise ValueError(f"grace: an integer >= 1 (optimizer steps), got {self.grace!r}")
        if not (self.eta > 1 and math.isfinite(self.eta)):
            raise ValueError(f"eta: must be a number > 1, got {self.eta!r}")
        if not isinstance(self.epsilon, dict):
            raise ValueError(f"epsilon: a mapping {{objective: margin}}, got {self.epsilon!r}")
        if not isinstance(self.grace_per_method, dict) or any(
                isinstance(v, bool) or not isinstance(v, int) for v in self.grace_per_method.values()):
            raise ValueError(f"grace_per_method: a mapping {{method: optimizer steps}}, got {self.grace_per_method!r}")


@dataclass
class Search:
    trials: int = 6                    # Optuna trials (after the points)
    concurrency: int = 2               # trials at once
    seed: int = 0                      # sampler seed
    sampler: Literal["tpe", "random", "nsga2"] = "tpe"   # tpe: Optuna 5's multi-objective default
    max_failures: int = 1              # Ray Train retries of a crashed worker group per trial
    trial_retries: int = 0             # Tune restarts of a failed trial; it resumes from its Train checkpoint (clusters: 1)
    driver_resource: str | None = None   # drivers need 0.001 of it; only non-preemptible nodes declare it (clusters: smf_driver)
    early_stopping: EarlyStopping | None = None   # MO-ASHA over the curves (scheduler.py); null: every trial runs to its end

    def __post_init__(self):
        check_choices(self, "search.")


@dataclass
class Confirm:
    top: int = 0                       # re-run this many Pareto-optimal configs (0 = no confirm stage)
    seeds: list[int] = field(default_factory=lambda: [1, 2])
    points: bool = False               # also re-run every study point (methods' `points`) with these seeds


@dataclass
class Data:
    task: str = "openlifescienceai/medmcqa"     # MedMCQA source (train split trains, validation probes)
    retrofit: str = "OpenAssistant/oasst1"      # OASST1 source (SMF retrofit + background statistics)
    triviaqa: str = "mandarjoshi/trivia_qa"
    wikitext: str = "Salesforce/wikitext"


@dataclass
class Spec:
    name: str
    model: str = "Qwen/Qwen2.5-0.5B-Instruct"   # hub id, local dir, or "world:" (the embedded world's model)
    world: dict[str, Any] | None = None         # WorldConfig fields when "world:" sources are used
    data: Data = field(default_factory=Data)
    probes: dict[str, ProbeCfg] = field(default_factory=lambda: {t: ProbeCfg() for t in TASKS})
    probe_batch_size: int = 16
    objectives: list[Objective] = field(default_factory=lambda: [Objective("medmcqa_gain_pp", "max"),
                                                                 Objective("forgetting", "min")])
    forgetting: Forgetting = field(default_factory=Forgetting)
    constraints: dict[str, Any] = field(default_factory=dict)   # {metric: ">= b" | "<= b"}: Optuna's feasibility
    hypervolume: Hypervolume = field(default_factory=Hypervolume)
    train: dict[str, Any] = field(default_factory=dict)      # TrainConfig fields shared by every method
    methods: dict[str, MethodSpec] = field(default_factory=dict)
    search: Search = field(default_factory=Search)
    seeds: list[int] = field(default_factory=lambda: [0])
    confirm: Confirm = field(default_factory=Confirm)
    storage: str = "runs"                        # sweep dir = storage/name; made absolute (from the cwd) when parsed
    tracking_uri: str | None = None              # None: sqlite:///<sweep dir>/mlflow.db
    threads_per_worker: int | None = None        # torch threads in each worker (None: torch's default)
    curves: CurveConfig = field(default_factory=CurveConfig)   # learning–forgetting curves (curves.py; every 0: off)
    source_file: str = ""                        # set by load_spec

    # ---- derived ----
    def sweep_dir(self) -> Path:
        return Path(self.storage) / self.name

    def algorithm(self, arm: str) -> str:
        """The registered method (smf, lora, full) that arm `arm` runs."""
        return self.methods[arm].method or arm

    def spec_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        """Every key but source_file. Keys added after sweeps had started are left out at their
        defaults (forgetting in its flat form when it is the mean without clamp, no constraints, the
        default hypervolume), so those sweeps keep their spec hash and frozen spec."""
        d = dataclasses.asdict(self)
        d.pop("source_file")
        if self.forgetting.legacy():
            d["forgetting"] = dict(self.forgetting.weights)
        if not self.constraints:
            d.pop("constraints")
        if self.hypervolume == Hypervolume():
            d.pop("hypervolume")
        if self.curves.subset == "first" or not self.curves.on:    # `first` was the only subset before
            d["curves"].pop("subset")                                 # `subset` existed: those sweeps keep their hash
        if dataclasses.replace(self.curves, subset=CurveConfig.subset) == CurveConfig():
            d.pop("curves")
        if not self.confirm.points:
            d["confirm"].pop("points")
        if self.search.early_stopping is None:
            d["search"].pop("early_stopping")
        else:
            for key, off in (("epsilon", {}), ("per_method", False), ("grace_per_method", {})):   # added later: old hashes hold
                if d["search"]["early_stopping"][key] == off:
                    d["search"]["early_stopping"].pop(key)
        return d


# ---- parsing --------------------------------------------------------------------------------------
def _err(where: str, msg: str) -> SpecError:
    return SpecError(f"{where}: {msg}")


def _convert(tp, value, where: str):
    """Convert plain YAML data to the annotated type, strictly (unknown keys are errors)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if choices(tp) is not None:                       # Literal[...]: the field's allowed values
        if value not in choices(tp):
            raise _err(where, f"must be {one_of(choices(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        if tp is Param:
            return _param(value, where)
        if tp is Forgetting:
            value = _forgetting(value, where)
        if not isinstance(value, dict):
            raise _err(where, f"expected a mapping, got {type(value).__name__}")
        known = {f.name: f for f in fields(tp) if f.init}
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise _err(where, f"unknown key(s) {unknown}; allowed: {', '.join(sorted(known))}")
        hints = typing.get_type_hints(tp)
        kw = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in value.items()}
        try:
            return tp(**kw)
        except (TypeError, ValueError) as e:
            raise _err(where, str(e)) from None
    if origin is dict:
        if not isinstance(value, dict):
            raise _err(where, f"expected a mapping, got {type(value).__name__}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise _err(where, f"expected a list, got {type(value).__name__}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _err(where, f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _err(where, f"expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _err(where, f"expected a string, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _err(where, f"expected true/false, got {value!r}")
        return value
    return value


def _param(value, where: str) -> Param:
    if not isinstance(value, dict) or len(value) != 1:
        raise _err(where, f"a search parameter is one of {{{': …}, {'.join(PARAM_TYPES)}: …}}, got {value!r}")
    (kind, arg), = value.items()
    if kind not in PARAM_TYPES:
        raise _err(where, f"unknown parameter type {kind!r}; allowed: {', '.join(PARAM_TYPES)}")
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise _err(where, "choice needs a non-empty list of values")
        return Param("choice", values=list(arg))
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                             for x in arg)):
        raise _err(where, f"{kind} needs [low, high], got {arg!r}")
    low, high = arg
    if not low < high:
        raise _err(where, f"low ({low}) must be < high ({high})")
    if kind in ("loguniform", "logint") and low <= 0:
        raise _err(where, f"{kind} needs low > 0, got {low}")
    if kind in ("int", "logint") and not (float(low).is_integer() and float(high).is_integer()):
        raise _err(where, f"{kind} needs integer bounds, got {arg!r}")
    return Param(kind, low=low, high=high)


def parse_assignment(text: str, flag: str) -> tuple[str, Any]:
    """`key=value` of a command-line flag (--set, --param) → (key, value), the value read as YAML
    (load_yaml: 1e-4 is a float, [8, 16] a list, true a bool). Errors are SpecErrors naming the flag."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise SpecError(f"{flag} {text!r}: expected key=value")
    try:
        return key, load_yaml(raw)
    except yaml.YAMLError as e:
        raise SpecError(f"{flag} {text}: the value is not valid YAML: {' '.join(str(e).split())}") from None


def _set(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise SpecError(f"--set {dotted}: {k} is not a mapping")
    cur[keys[-1]] = value


def load_spec(path: str | Path, overrides: list[str] = ()) -> Spec:
    path = Path(path)
    try:
        raw = load_yaml(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a mapping of keys, got {type(raw).__name__}")
    for o in overrides:
        _set(raw, *parse_assignment(o, "--set"))
    return parse_spec(raw, str(path))


def parse_spec(raw: dict, source: str = "<spec>") -> Spec:
    try:
        if "name" not in raw:
            raise _err("", "missing key 'name'")
        spec = _convert(Spec, raw, "")
        spec.source_file = source
        # absolute now, where the spec is read: trials run in their own working directories (and
        # `ray job submit` jobs in a temp copy of the working dir)
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", str(spec.storage)):
            raise _err("storage", f"{spec.storage!r} is a URI; the sweep directory holds SQLite files (Optuna's "
                       "study, MLflow's default store) and the rungs, so it must be a filesystem path that every "
                       "node sees (NFS, or the bucket mounted, e.g. with s3fs or gcsfuse)")
        spec.storage = str(Path(spec.storage).expanduser().resolve())
        validate(spec)
        spec.train["precision"] = sweep_precision(spec)
    except SpecError as e:
        msg = str(e)
        msg = msg[2:] if msg.startswith(": ") else msg
        raise SpecError(f"{source}: {msg}") from None
    return spec


def sweep_precision(spec: Spec) -> str:
    """The one precision regime of a sweep (smf_sweep/precision.py): `auto` resolves here, once, to
    bf16 when any method trains on GPUs, else fp32 — so base probes, training and after-probes agree.
    A method cannot set its own (validate refuses it)."""
    p = spec.train.get("precision", "auto")
    if p != "auto":
        return p
    return "bf16" if any(ms.resources.gpus_per_worker > 0 for ms in spec.methods.values()) else "fp32"


def method_fields(name: str) -> tuple[set[str], set[str]]:
    return {f.name for f in fields(METHODS[name].Config)}, {f.name for f in fields(TrainConfig)}


def split_params(method: str, params: dict[str, Any]) -> tuple[dict, dict]:
    """{field: value} → (method config fields, train fields)."""
    mf, tf = method_fields(method)
    return {k: v for k, v in params.items() if k in mf}, {k: v for k, v in params.items() if k in tf}


def build_configs(spec: Spec, arm: str, params: dict[str, Any]):
    """The method config and TrainConfig of one trial of `arm`: spec.train ← the arm's fixed ← params."""
    algo = spec.algorithm(arm)
    m, t = split_params(algo, {**spec.methods[arm].fixed, **params})
    tcfg = TrainConfig(**{**spec.train, **t})
    return METHODS[algo].Config(**m), tcfg


def validate(spec: Spec) -> None:
    if not spec.name or "/" in spec.name or spec.name.startswith("."):
        raise _err("name", f"must be a plain directory name, got {spec.name!r}")
    try:
        TrainConfig(**spec.train)
    except (TypeError, ValueError) as e:
        raise _err("train", _clean(e)) from None
    if not spec.methods:
        raise _err("methods", f"at least one method is needed; known: {', '.join(METHODS.names())}")
    for name, ms in spec.methods.items():
        where = f"methods.{name}"
        if spec.algorithm(name) not in METHODS:
            key = f"{where}.method" if ms.method else where
            raise _err(key, f"unknown method {spec.algorithm(name)!r}; known: {', '.join(METHODS.names())}"
                            + ("" if ms.method else " (an arm of another name says which: method: smf)"))
        if "." in name:
            raise _err(where, "an arm's name cannot contain '.' (it prefixes its parameters: <arm>.lr)")
        mf, tf = method_fields(spec.algorithm(name))
        clash = mf & tf
        assert not clash, f"method {name} config fields clash with TrainConfig: {clash}"
        allowed = sorted(mf | tf)
        for section, keys in (("fixed", ms.fixed), ("search", ms.search)):
            for k in keys:
                if k == "precision":
                    raise _err(f"{where}.{section}.{k}", "the precision regime is the sweep's (train.precision): "
                                                         "base probes and every trial share it")
                if k not in mf | tf:
                    raise _err(f"{where}.{section}.{k}", f"not a field of {name}'s config or of train; "
                                                         f"allowed: {', '.join(allowed)}")
        _try(spec, name, {}, f"{where}.fixed")
        for k, p in ms.search.items():
            for v in p.candidates():
                if p.type in ("int", "logint"):
                    v = int(v)
                _try(spec, name, {k: v}, f"{where}.search.{k}")
        for i, pt in enumerate(ms.points):
            for k in pt:
                if k not in ms.search:
                    raise _err(f"{where}.points[{i}].{k}", f"a point sets searched parameters only; "
                                                           f"searched: {', '.join(sorted(ms.search)) or 'none'}")
            _try(spec, name, pt, f"{where}.points[{i}]")
        r = ms.resources
        if r.workers < 1 or r.cpus_per_worker < 0 or r.gpus_per_worker < 0:
            raise _err(f"{where}.resources", "workers must be >= 1 and cpus/gpus per worker >= 0")
        if r.gpus_per_worker > 1 and not float(r.gpus_per_worker).is_integer():
            raise _err(f"{where}.resources.gpus_per_worker", "above 1 it must be a whole number")
        if r.workers > 1 and 0 < r.gpus_per_worker < 1:
            raise _err(f"{where}.resources", f"{r.workers} workers with {r.gpus_per_worker:g} GPU each: Ray may put two "
                       "ranks on one GPU, which NCCL refuses (duplicate GPU); give multi-worker arms whole GPUs")
    for task, p in spec.probes.items():
        if task not in TASKS:
            raise _err(f"probes.{task}", f"unknown probe {task!r}; known: {', '.join(TASKS)}")
        if p.variant not in VARIANTS:
            raise _err(f"probes.{task}.variant", f"unknown variant {p.variant!r}; allowed: {', '.join(VARIANTS)}")
        if p.limit is not None and p.limit < 0:
            raise _err(f"probes.{task}.limit", "must be >= 0 (0 = everything) or null (the protocol's default)")
    if "medmcqa" not in spec.probes:
        raise _err("probes", "the task probe 'medmcqa' is required (its gain is an objective)")
    weights = spec.forgetting.weights
    for t, w in weights.items():
        if t not in spec.probes or t == "medmcqa":
            raise _err(f"forgetting.weights.{t}", f"forgetting weighs forgetting probes of this spec: "
                                                  f"{', '.join(x for x in spec.probes if x != 'medmcqa')}")
        if not (w >= 0 and math.isfinite(w)):
            raise _err(f"forgetting.weights.{t}", f"weight must be >= 0, got {w}")
    if not weights or sum(weights.values()) <= 0:
        raise _err("forgetting.weights", "needs at least one probe with a positive weight")
    from . import objectives as O

    names = ({O.GAIN, O.FORGETTING} | {O.delta(t) for t in spec.probes} | set(O.COSTS)
             | {f(t) for t in spec.probes if t != "medmcqa" for f in (O.drop_pp, O.nats)})
    if not spec.objectives:
        raise _err("objectives", "at least one objective is needed")
    for i, o in enumerate(spec.objectives):
        if o.name not in names:
            raise _err(f"objectives[{i}].name", f"unknown objective {o.name!r}; allowed: {', '.join(sorted(names))}")
    hv = spec.hypervolume
    if not (hv.budget >= 0 and math.isfinite(hv.budget)):
        raise _err("hypervolume.budget", f"must be a number >= 0, got {hv.budget}")
    try:                                  # the objectives as the sweep will use them (nats expands forgetting)
        obj = O.Objectives.from_spec(spec)
    except ValueError as e:
        raise _err("", str(e)) from None
    missing = [n for n, r in obj.reference if r is None]
    if missing:
        raise _err(f"hypervolume.reference.{missing[0]}", "this objective has no default reference point (a cost): "
                                                        "give the value beyond which a trial adds no hypervolume")
    s = spec.search
    if s.trials < 0 or s.concurrency < 1 or s.max_failures < 0 or s.trial_retries < 0:
        raise _err("search", "trials must be >= 0, concurrency >= 1, max_failures >= 0, trial_retries >= 0")
    es = s.early_stopping
    if es is not None:
        if not spec.curves.on:
            raise _err("search.early_stopping", "needs the learning–forgetting curves (curves.every > 0): its rungs "
                                                "judge the curve's points; set curves.every, e.g. to the grace")
        if es.grace < spec.curves.every:
            raise _err("search.early_stopping.grace", f"must be >= curves.every ({spec.curves.every}): the first rung "
                                                      f"needs a curve point at or after it, got {es.grace}")
        costs = [n for n in obj.names if n in O.COSTS]
        if costs:
            raise _err("search.early_stopping", f"the curve's points have no cost, an objective here ({', '.join(costs)})")
        try:
            O.margins(obj.names, es.epsilon)
        except ValueError as e:
            raise _err("search.early_stopping.epsilon", str(e).split(": ", 1)[1]) from None
        for method, first in es.grace_per_method.items():
            where = f"search.early_stopping.grace_per_method.{method}"
            if method not in spec.methods:
                raise _err(where, f"not a method of this spec ({', '.join(spec.methods)})")
            ladder = off_ladder(es.grace, es.eta, first)
            if ladder is not None:
                raise _err(where, f"must be one of the rungs grace·η^k ({', '.join(map(str, ladder))}, …), so this "
                                  f"method's trials meet the others' at its rungs; got {first}")
    if s.driver_resource is not None and (not re.fullmatch(r"[A-Za-z_][\w.-]*", s.driver_resource)
                                          or s.driver_resource in ("CPU", "GPU", "memory", "object_store_memory")):
        raise _err("search.driver_resource", f"a custom Ray resource name (e.g. smf_driver) or null, got {s.driver_resource!r}")
    if not spec.seeds:
        raise _err("seeds", "at least one seed")
    if spec.probe_batch_size < 1:
        raise _err("probe_batch_size", "must be >= 1")
    _check_sources(spec)


def _clean(e: Exception) -> str:
    return str(e).removeprefix("train: ")


def _try(spec: Spec, method: str, params: dict, where: str) -> None:
    try:
        _, tcfg = build_configs(spec, method, params)
        tcfg.accumulation(spec.methods[method].resources.workers)   # effective batch over this method's workers
    except (TypeError, ValueError) as e:
        raise _err(where, _clean(e)) from None


def _check_sources(spec: Spec) -> None:
    """Local paths must exist now (hub ids and world: are checked where they are opened)."""
    srcs = {f"data.{f.name}": getattr(spec.data, f.name) for f in fields(Data)}
    srcs.update({f"probes.{t}.source": p.source for t, p in spec.probes.items() if p.source})
    for where, src in srcs.items():
        if src.startswith("world:") or is_hub_id(src):
            continue
        if not Path(src).expanduser().exists():
            raise _err(where, f"no such file or directory: {src}")
    if any(s.startswith("world:") for s in list(srcs.values()) + [spec.model]) and spec.world is not None:
        from .world import WorldConfig
        try:
            WorldConfig(**spec.world)
        except TypeError as e:
            raise _err("world", _clean(e)) from None


def resolve_world(spec: Spec, progress: bool = True) -> Spec:
    """Build (or reuse) the embedded world when the spec names `world:` sources, and replace them
    with `world:<dir>` (the model with `<dir>/model`). Returns a new Spec."""
    vals = [spec.model, *(getattr(spec.data, f.name) for f in fields(Data)),
            *(p.source or "" for p in spec.probes.values())]
    if not any(v == "world:" or v.startswith("world:") and not v[6:] for v in vals):
        return spec
    from .world import WorldConfig, build_world

    wdir = build_world(WorldConfig(**(spec.world or {})), progress=progress)
    sub = lambda v: f"world:{wdir}" if v == "world:" else v  # noqa: E731
    data = Data(**{f.name: sub(getattr(spec.data, f.name)) for f in fields(Data)})
    probes = {t: dataclasses.replace(p, source=sub(p.source) if p.source else None) for t, p in spec.probes.items()}
    model = str(wdir / "model") if spec.model == "world:" else spec.model
    return dataclasses.replace(spec, model=model, data=data, probes=probes)


def resolve_world_dry(spec: Spec) -> Spec:
    """What `resolve_world(spec)` returns, without building the world: its directory is the world's
    cache path (world.default_world_dir of the spec's WorldConfig). For comparing a spec with a
    sweep's frozen spec.json before anything is built (preflight.check_sweep_dir)."""
    vals = [spec.model, *(getattr(spec.data, f.name) for f in fields(Data)),
            *(p.source or "" for p in spec.probes.values())]
    if not any(v == "world:" or v.startswith("world:") and not v[6:] for v in vals):
        return spec
    from .world import WorldConfig, default_world_dir

    wdir = default_world_dir(WorldConfig(**(spec.world or {})))
    sub = lambda v: f"world:{wdir}" if v == "world:" else v  # noqa: E731
    data = Data(**{f.name: sub(getattr(spec.data, f.name)) for f in fields(Data)})
    probes = {t: dataclasses.replace(p, source=sub(p.source) if p.source else None) for t, p in spec.probes.items()}
    model = str(wdir / "model") if spec.model == "world:" else spec.model
    return dataclasses.replace(spec, model=model, data=data, probes=probes)
