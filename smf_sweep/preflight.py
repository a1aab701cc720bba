"""Before Ray starts: the spec against its model's config, and the sweep directory against its spec.

    warnings = preflight(spec)                      # every arm: fixed, points, the search ranges' corners
    warnings = preflight(spec, arm="smf", params=p) # one trial (python -m smf_sweep.trial)
    check_sweep_dir(spec)                           # a sweep directory belongs to one spec

**The model's config, no weights.** `transformers.AutoConfig` of a local directory or a hub id (the
hub's cache first; the network only when the hub answers within seconds), or, for `model: "world:"`,
the embedded world's model built on the meta device from its WorldConfig (so no world is built to
check a spec). From it: the decoder layers (`model.model.layers`, where SMF inserts memory), the
positions (`max_position_embeddings`) and the module names (a meta-device model of the
architecture: what LoRA's `target_modules` must match, as peft matches them: the name or its last
dotted parts). When the config cannot be read (a hub id without internet) the checks that need it
are skipped with a warning; the others still run.

**What is checked**, for every arm, with its fixed settings, each point, and every combination of
its searched choices and integer ranges' ends (float ranges do not interact with these limits and are
checked one at a time by spec.validate): SMF `layers` inside the model's depth, `top_t` at most the
slots per layer (n_keys²), the memory's own rules (MemoryConfig: k ≤ n_keys, even d_k — the query
splits into two halves; the layer needs nothing of the model's hidden size, its query is
Linear(d, heads·d_k)), `max_len` (and SMF's `retrofit.max_len` when it retrofits) at most the
model's positions, LoRA `target_modules` each matching a module. A range whose worst case fails is an
error, not clamped: the user narrows it.

**A sweep directory belongs to one spec.** run_sweep freezes the (world-resolved) spec into
<sweep dir>/spec.json; another spec submitted into the same directory is refused, naming the dotted
keys that differ (old → new). No key may differ: the spec's hash (Spec.spec_hash, over every key)
names the Optuna study and finds the MLflow parent run, and trials carry it as a tag, so a resumed
sweep with any other key would start a second study and parent run in the same experiment (and the
restored Tune experiment would keep its original search settings anyway). Only the spec file's path
(`source`) may change. A directory moved or copied elsewhere (only `storage` differs) is told so:
it resumes only where it started (moved_message). Errors are SpecErrors (exit code 2)."""
from __future__ import annotations

import itertools
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from .hub import is_hub_id
from .spec import Spec, SpecError, build_configs

MAX_COMBINATIONS = 20000     # per arm; beyond, the rest is not checked (a warning says so)


class PreflightError(SpecError):
    """The spec cannot run on its model: every problem, one per line."""


class SweepDirError(SpecError):
    """The sweep directory holds another spec."""


@dataclass(frozen=True)
class ModelLimits:
    model: str                              # what was read, for messages
    layers: int | None                      # decoder layers (model.model.layers / num_hidden_layers)
    positions: int | None                   # max_position_embeddings
    modules: frozenset[str] | None = None   # every module name of the architecture (None: unknown)
    has_layers: bool | None = None          # model.model.layers exists (SMF inserts memory there)


# ---- the model's config --------------------------------------------------------------------------
def model_limits(model: str, world: dict | None = None) -> tuple[ModelLimits | None, list[str]]:
    """The limits of `model` (a hub id, a local directory or "world:"), from its config only, and
    warnings. None (with a warning) when the config cannot be had here; PreflightError when a local
    model directory is missing or has no readable config."""
    if model == "world:":
        from .world import WorldConfig, default_world_dir

        cfg = WorldConfig(**(world or {}))
        built = default_world_dir(cfg) / "model"
        if (built / "config.json").is_file():
            return model_limits(str(built))
        return _world_limits(cfg)
    path = Path(model).expanduser()
    if not is_hub_id(model):                      # the project's one hub-id rule (hub.py)
        if not (path / "config.json").is_file():
            raise PreflightError(f"model: {model}: " + ("no config.json in this directory" if path.is_dir()
                                                         else "no such directory"))
        from transformers import AutoConfig
        try:
            config = AutoConfig.from_pretrained(str(path))
        except Exception as e:  # noqa: BLE001 — any unreadable config is the spec's problem
            raise PreflightError(f"model: {model}: its config.json cannot be read ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
        return _limits(config, str(path / "config.json"))
    return _hub_limits(model)


def _hub_limits(model: str) -> tuple[ModelLimits | None, list[str]]:
    from transformers import AutoConfig

    skip = f"the model's config could not be read, so the checks against the model ({model}) were skipped"
    try:
        return _limits(AutoConfig.from_pretrained(model, local_files_only=True), f"{model} (hub cache)")
    except Exception:  # noqa: BLE001 — not cached here
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return None, [f"{skip}: not in the hub cache and HF_HUB_OFFLINE is set"]
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if not _reachable(endpoint):
        return None, [f"{skip}: not in the hub cache and {endpoint} cannot be reached from here"]
    try:
        config = AutoConfig.from_pretrained(model)
    except Exception as e:  # noqa: BLE001 — the hub is up but says no (private, gated, a typo …)
        first = str(e).splitlines()[0] if str(e) else ""
        return None, [f"{skip}: {type(e).__name__}: {first}"]
    return _limits(config, f"{model} (hub)")


def _reachable(url: str, timeout: float = 3.0) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "", u.port or (443 if u.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def _limits(config, source: str, model=None) -> tuple[ModelLimits, list[str]]:
    warnings = []
    layers = getattr(config, "num_hidden_layers", None)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    modules, has_layers = None, None
    try:
        model = model if model is not None else _meta_model(config)
        modules = frozenset(n for n, _ in model.named_modules())
        dec = getattr(getattr(model, "model", None), "layers", None)
        has_layers = dec is not None
        layers = len(dec) if dec is not None else layers
    except Exception as e:  # noqa: BLE001 — e.g. an architecture that needs remote code
        warnings.append(f"{source}: the architecture could not be built on the meta device ({type(e).__name__}), "
                        "so LoRA target_modules and SMF's insertion point were not checked")
    return ModelLimits(source, layers, positions, modules, has_layers), warnings


def _meta_model(config):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _world_limits(cfg) -> tuple[ModelLimits, list[str]]:
    """The embedded world's model as its builder makes it, on the meta device (nothing is built)."""
    import torch

    from .world.pretrain import build_model

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(cfg, cfg.vocab_size)
    return _limits(model.config, "the embedded world's model (world: not built yet; its WorldConfig)", model)


# ---- the checks ----------------------------------------------------------------------------------
@dataclass
class _Case:
    params: dict                  # as build_configs takes them (over the arm's fixed settings)
    origin: dict[str, tuple[str, str]]   # key set by a point/the search -> (where, note), e.g.
                                         # ("methods.smf.search.top_t", "the high end of logint [16, 512]")


def preflight(spec: Spec, *, arm: str | None = None, params: dict | None = None,
              limits: tuple[ModelLimits | None, list[str]] | None = None) -> list[str]:
    """Check every arm of `spec` (or one trial: `arm` with `params`) against the model's config.
    Raises PreflightError naming the file, arm, key, value and the model's limit of every problem;
    returns warnings (checks that could not be made)."""
    try:
        lim, warnings = limits if limits is not None else model_limits(spec.model, spec.world)
    except PreflightError as e:
        raise PreflightError(f"{spec.source_file}: {e}") from None
    warnings = list(warnings)
    problems: list[str] = []
    arms = [arm] if arm is not None else list(spec.methods)
    for a in arms:
        cases = [_Case(dict(params), {k: (f"methods.{a}: the trial's {k}", "") for k in params})] \
            if params is not None else None
        problems += _check_arm(spec, a, lim, warnings, cases)
    if problems:
        uniq = list(dict.fromkeys(problems))
        raise PreflightError(f"{spec.source_file}: " + f"\n{spec.source_file}: ".join(uniq))
    return warnings


def _check_arm(spec: Spec, arm: str, lim: ModelLimits | None, warnings: list[str],
               cases: list[_Case] | None) -> list[str]:
    problems = []
    for case in (cases if cases is not None else _cases(spec, arm, warnings)):
        try:
            mcfg, tcfg = build_configs(spec, arm, case.params)
        except (TypeError, ValueError) as e:
            keys = [k for k in case.origin if k in str(e)] or list(case.origin)
            combo = "{" + ", ".join(f"{k}: {_show(case.params[k])}" for k in keys) + "}"
            where = f"methods.{arm}.search" if all(case.origin[k][0].startswith(f"methods.{arm}.search.") for k in keys) \
                else ", ".join(case.origin[k][0] for k in keys)
            problems.append(f"{where}: {combo}: this combination of arm {arm}'s settings fails: "
                            f"{str(e).removeprefix('train: ')}; narrow the ranges so that every combination is valid")
            continue
        problems += _check_case(spec, arm, case, mcfg, tcfg, lim)
    return problems


def _cases(spec: Spec, arm: str, warnings: list[str]) -> Iterator[_Case]:
    """The configurations the arm's trials can run: each point (with every combination of the
    searched keys it leaves open) and every combination of its searched choices and integer ranges'
    ends; its fixed settings alone when nothing is searched."""
    ms = spec.methods[arm]
    keys = [k for k, p in ms.search.items() if p.type not in ("uniform", "loguniform")]
    values = {k: [int(v) if ms.search[k].type in ("int", "logint") else v for v in ms.search[k].candidates()]
              for k in keys}
    origin = {k: f"methods.{arm}.search.{k}" for k in keys}
    n = 0
    for i, pt in [(None, {})] + list(enumerate(ms.points)):
        if i is None and ms.points and not ms.search:
            continue                                   # only the points run
        open_keys = [k for k in keys if k not in pt]
        for combo in itertools.product(*(values[k] for k in open_keys)):
            n += 1
            if n > MAX_COMBINATIONS:
                warnings.append(f"methods.{arm}: only the first {MAX_COMBINATIONS} combinations of its points and "
                                "searched ranges were checked")
                return
            yield _Case({**pt, **dict(zip(open_keys, combo))},
                        {**{k: (origin[k], _end(ms.search[k], v)) for k, v in zip(open_keys, combo)},
                         **{k: (f"methods.{arm}.points[{i}].{k}", "") for k in pt}})


def _check_case(spec: Spec, arm: str, case: _Case, mcfg, tcfg, lim: ModelLimits | None) -> list[str]:
    algo = spec.algorithm(arm)
    ms = spec.methods[arm]

    def where(key: str) -> tuple[str, str]:
        if key in case.origin:
            return case.origin[key]
        if key in ms.fixed:
            return f"methods.{arm}.fixed.{key}", ""
        if key in spec.train and not hasattr(mcfg, key):
            return f"train.{key}", ""
        return f"methods.{arm}: {key}", f"the {algo if hasattr(mcfg, key) else 'train'} default"

    def at(key: str, v) -> str:          # the problem's key and value: "methods.smf.search.top_t: 512 (the high end …)"
        path, note = where(key)
        return f"{path}: {_show(v)}" + (f" ({note})" if note else "")

    def ref(key: str, v) -> str:         # another key it depends on: "16 (methods.smf.search.n_keys, one of …)"
        path, note = where(key)
        return f"{_show(v)} ({path}" + (f", {note})" if note else ")")

    out = []
    if hasattr(mcfg, "memory") and hasattr(mcfg, "top_t"):          # SMF: product-key memory
        mem = mcfg.memory()
        if mcfg.top_t > mem.n_slots:
            searched = any(".search." in where(k)[0] for k in ("top_t", "n_keys"))
            out.append(f"{at('top_t', mcfg.top_t)}: above the {mem.n_slots} slots per layer of arm {arm}'s memory "
                       f"(n_keys² with n_keys {ref('n_keys', mem.n_keys)})"
                       + ("; narrow the searched ranges so that every combination fits" if searched else ""))
        if lim is not None and lim.has_layers is False:
            out.append(f"methods.{arm}: SMF inserts memory into model.model.layers, which {lim.model} does not have")
        elif lim is not None and lim.layers is not None:
            bad = [i for i in mem.layers if i >= lim.layers]
            if bad:
                out.append(f"{at('layers', mem.layers)}: layer{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} "
                           f"of arm {arm} beyond the model's {lim.layers} decoder layers (0–{lim.layers - 1}; {lim.model})")
        rlen = getattr(getattr(mcfg, "retrofit", None), "max_len", None)      # the dense retrofit's TrainConfig
        if lim is not None and lim.positions and getattr(mcfg, "needs_retrofit", False) and (rlen or 0) > lim.positions:
            rt = ms.fixed.get("retrofit") if isinstance(ms.fixed.get("retrofit"), dict) else {}
            path = f"methods.{arm}.fixed.retrofit.max_len: {rlen}" if "max_len" in rt else \
                f"methods.{arm}: retrofit.max_len: {rlen} (the {algo} default)"
            out.append(f"{path}: arm {arm}'s retrofit sequences exceed the model's {lim.positions} positions "
                       f"(max_position_embeddings; {lim.model})")
    if hasattr(mcfg, "target_modules") and lim is not None and lim.modules is not None:   # LoRA
        missing = [t for t in mcfg.target_modules if not any(n == t or n.endswith("." + t) for n in lim.modules)]
        if missing:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in lim.modules if n and not n.rsplit(".", 1)[-1].isdigit()})
            out.append(f"{at('target_modules', list(mcfg.target_modules))}: {', '.join(missing)} of arm {arm} "
                       f"match{'es' if len(missing) == 1 else ''} no module of the model ({lim.model}; its module "
                       f"names end in: {', '.join(leaves[:30])})")
    if lim is not None and lim.positions and tcfg.max_len > lim.positions:
        out.append(f"{at('max_len', tcfg.max_len)}: arm {arm}'s training sequences exceed the model's "
                   f"{lim.positions} positions (max_position_embeddings; {lim.model})")
    return out


def _end(p, v) -> str:
    if p.type == "choice":
        return f"one of {_range(p)}"
    return f"the {'low' if v == int(p.low) else 'high'} end of {_range(p)}"


def _range(p) -> str:
    return f"choice {_show(p.values)}" if p.type == "choice" else f"{p.type} [{_show(p.low)}, {_show(p.high)}]"


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        v = list(v)
    s = json.dumps(v, default=str)
    return s if len(s) <= 80 else s[:77] + "..."


# ---- a sweep directory belongs to one spec ---------------------------------------------------------
FROZEN = "spec.json"
MAY_DIFFER = ("source",)         # the spec file's path: the same spec may be submitted from elsewhere


def write_frozen_spec(spec: Spec) -> Path:
    """<sweep dir>/spec.json: the (world-resolved) spec a sweep runs, and the file's path (`source`).
    run_sweep writes it; check_sweep_dir compares later submissions with it."""
    frozen = spec.sweep_dir() / FROZEN
    frozen.write_text(json.dumps({"source": spec.source_file, **spec.to_dict()}, indent=1, default=str))
    return frozen


def check_sweep_dir(spec: Spec) -> None:
    """Refuse to run `spec` into a sweep directory that another spec started (its spec.json),
    naming the keys that differ; nothing when the directory has no frozen spec yet."""
    from .spec import resolve_world_dry

    frozen = spec.sweep_dir() / FROZEN
    if not frozen.is_file():
        return
    try:
        old = json.loads(frozen.read_text())
    except (OSError, ValueError) as e:
        raise SweepDirError(f"{spec.source_file}: {frozen} cannot be read ({e}); a sweep directory holds the spec "
                            "it was started with: move it away only if that sweep is to be abandoned") from None
    new = json.loads(json.dumps(resolve_world_dry(spec).to_dict(), default=str))
    diffs = spec_diff(old, new)
    if not diffs:
        return
    if [k for k, _, _ in diffs] == ["storage"]:
        raise SweepDirError(moved_message(spec, Path(str(old["storage"])) / spec.name))
    shown = [f"  {k}: {o} → {n}" for k, o, n in diffs[:25]]
    if len(diffs) > 25:
        shown.append(f"  … and {len(diffs) - 25} more")
    raise SweepDirError(
        f"{spec.source_file}: the sweep directory {spec.sweep_dir()} belongs to another spec (its {FROZEN}); "
        f"{len(diffs)} key{'s differ' if len(diffs) > 1 else ' differs'} (there → here):\n" + "\n".join(shown) +
        "\nA sweep directory holds one spec: its Optuna study, MLflow parent run and trials are named after it "
        "(spec_hash), so another spec would mix its trials into that sweep. Run this spec elsewhere "
        "(--storage OTHER_DIR, or a new name: --set name=NEW_NAME), or resume that sweep with the spec it was "
        "started with.")


def moved_message(spec: Spec, started: Path) -> str:
    """Why a sweep directory moved or copied from `started` is not resumed where it is now: Ray's
    Tuner.restore unpickles the searcher, scheduler and callbacks from tuner.pkl, each holding the
    absolute path it was given (optuna.db, rungs.json, the default mlflow.db), so a resumed driver
    would read and write the files at `started`."""
    here = spec.sweep_dir()
    return (f"{spec.source_file}: the sweep directory {here} was started at {started} (its {FROZEN}: storage) and "
            f"has been moved or copied here. It resumes only at {started}: Ray restores the sweep's Optuna searcher, "
            f"its early-stopping rungs and its MLflow logger as pickled, with the absolute paths of optuna.db, "
            f"rungs.json and mlflow.db there, so resumed trials would be recorded in {started}"
            f"{' (which exists: another copy)' if started.exists() else ''}, not here. Move it back, or link the "
            f"old path to it (ln -s {here} {started}) and submit with --storage {started.parent}. Analysis reads it "
            f"where it is (python -m analysis.pareto {here}); to start this spec afresh here, use another name "
            f"(--set name=NEW_NAME).")


def spec_diff(old: dict, new: dict) -> list[tuple[str, str, str]]:
    """[(dotted key, old value, new value)] of two spec dicts, in key order; "(absent)" for a missing
    key; MAY_DIFFER ignored."""
    a, b = _flat(old), _flat(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if k.split(".", 1)[0].split("[", 1)[0] in MAY_DIFFER:
            continue
        if a.get(k, _ABSENT) != b.get(k, _ABSENT):
            out.append((k, _show_or_absent(a.get(k, _ABSENT)), _show_or_absent(b.get(k, _ABSENT))))
    return out


_ABSENT = object()


def _show_or_absent(v) -> str:
    return "(absent)" if v is _ABSENT else _show(v)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """Dicts by dotted keys (an empty one adds nothing), lists of dicts by [i]; other values as leaves."""
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        out = {}
        for i, v in enumerate(d):
            out.update(_flat(v, f"{prefix}[{i}]"))
        return out
    return {prefix: d}
