"""Multi-objective early stopping: MO-ASHA (Schmucker et al. 2021) as a Ray Tune scheduler.

    search:
      early_stopping: {grace: 8, eta: 3}    # spec (tune.make_scheduler); needs curves.every > 0, grace >= it

A trial's learning–forgetting curve (curves.py) reports `curve/step` (optimizer step) and
`curve/<name>` for every objective. The scheduler judges trials at *rungs*, budgets in optimizer
steps that grow geometrically: grace, grace·η, grace·η², … (rounded up), only those below the
trial's total steps (a rung at its last step would judge a trial that is finishing anyway). Every
method runs the same optimizer steps whatever a step costs it, so a rung is an equal budget.

The rule, on each curve point as it arrives (asynchronous, like ASHA: decide with what the rung has
seen so far, never wait for a rung to fill):
1. The point counts for the highest rung its step has reached above the trial's last judged rung
   (rungs it jumped past, as Ray's ASHA does, are skipped). Step 0 is never a rung (grace >= 1).
2. Its objective vector (each objective in its direction: Objectives.senses) is recorded at that
   rung. With n trials recorded there (this one included): n < η → CONTINUE. Else the rung keeps its
   best k = max(1, ⌊n/η⌋): rank all n by non-dominated sorting (front 0 = non-dominated, front 1 =
   non-dominated once front 0 is removed, …), and inside a front by a tie-break (`tie_break`):
   **crowding** (the default) — NSGA-II's crowding distance (per objective, the normalised gap between
   a point's neighbours in that front; a front's extremes, and every point of a front of one or two,
   have +inf; larger first) — or **eps_net** — the ε-net order of MO-ASHA's own implementation (Syne
   Tune's NonDominatedPriority, after Salinas et al. 2021; Clarkson 2005's greedy net): the front's
   best point in the first objective, then each time the point farthest (Euclidean, in the
   objectives' units) from those already chosen. Identical points share a value under either. The
   trial CONTINUEs when fewer than k trials rank strictly before it (a better front, or the same front
   and strictly ahead in the tie-break: a tie continues, as ASHA's `reward < cutoff` stops only the
   strictly worse); else STOP. Syne Tune's MOASHA (0.16) reads its priority function's output, an
   order of indices, as each trial's priority, so it judges the index of the last-ordered trial, not
   the new one (a trial dominating every other at its rung can stop: docs/pitfalls.md); here each
   trial's rank is its own.

Noise (a named deviation, off by default): curve points are scored on small item subsets (64
MedMCQA questions: one question is 1.6 pp, a binomial standard error about 6 pp), so early rungs
rank noise. With `epsilon` ({objective: margin}, in the objective's units), a point dominates another
only when it is no worse in every objective and better by more than the margin in one (a strict
partial order, so the fronts stay well defined), and a trial on the rung's first front under that
relation always continues: only trials dominated beyond the noise can stop, and of those only the
ones outside the best max(1, ⌊n/η⌋).
Per method (`per_method`, a named deviation, off by default): a trial is judged only against the
trials of its own method at the rung (the rung's cut-off, ⌊n/η⌋ and the fronts, over those), so a
method that starts slow (SMF's first steps) keeps its best third instead of losing to full FT's early
gains; the study's comparison needs every method's front, not only the overall one.
Per-method grace (`grace_per_method`, {method: steps}, a named deviation, off by default): a method's
trials are first judged at that rung instead of at `grace`: on the world, SMF trials at high and low
learning rates trailed the others at step 40 of 222 and ended on SMF's own front (README, issue 16;
{smf: 120} kept them). The value must be one of the
rungs grace·η^k, so that the method's trials meet the other methods' at every rung they reach.
Constraints do not enter a rung decision. Ray does not checkpoint schedulers (a restored Tuner
unpickles the scheduler it was built with, before any trial), so the rungs are kept in a file of their
own (`state`: tune.run_sweep keeps `rungs.json` in the sweep directory), rewritten at every
record and read back before a resumed driver's first decision: a resumed sweep judges its trials
against every point recorded before the crash, as the uninterrupted one would have. A trial the
killed driver was running that Tune's experiment state does not hold comes back under a new trial id
(tune.SafeOptunaSearch.restore re-queues its parameters): at the first decision after the restore,
entries of trials that neither ended nor were restored by Tune move to the file's `orphaned` record
(kept, not counted), so that configuration is not counted twice at the rungs it had reached.

What a STOP leaves: Tune ends the trial TERMINATED (not ERROR), so the searcher and the callbacks hear
of it through on_trial_complete. Before they do, `on_trial_complete` here writes the stop into the
trial's last result: `early_stopped` 1, `stopped_at_rung` (the rung's budget, steps),
`stopped_at_step` (the point's step), the point's objectives and the other curve scores under the
trial's own metric names (`medmcqa_gain_pp`, `forgetting`, `<task>/delta`, …), `constraint_violation`
with constraints, and its cost so far (`cost/device_s` from Tune's `time_total_s`, `cost/tokens` from
the last `train/tokens` seen). tune.SafeOptunaSearch tells Optuna (PRUNED by default:
search.early_stopping.optuna), tracking.MLflowTrialLogger ends its run KILLED with tag
`stopped_at_rung`, janitor.PlacementGroupJanitor frees its Train run's placement group."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from . import objectives as O
from .rungs import TIE_BREAKS, budgets, off_ladder

STEP = "curve/step"                # the curve point's optimizer step (curves.Curve)
CURVE = "curve/"                   # curves.PREFIX: a point's metrics are curve/<name>
EARLY_STOPPED = "early_stopped"    # 1 in the last result of a trial this scheduler stopped
STOPPED_AT_RUNG = O.STOPPED_AT_RUNG   # the rung's budget in optimizer steps (also the MLflow tag)
STOPPED_AT_STEP = O.STOPPED_AT_STEP   # the step of the point that was judged (>= the rung's budget)


# ---- the rule -------------------------------------------------------------------------------------
def dominates(a: Sequence[float], b: Sequence[float], eps: Sequence[float] | None = None) -> bool:
    """a dominates b (every objective minimised): no worse anywhere, better somewhere; with `eps`
    (a margin per objective, >= 0), better by more than its margin somewhere."""
    eps = eps or (0.0,) * len(a)
    return all(x <= y for x, y in zip(a, b)) and any(x < y - e for x, y, e in zip(a, b, eps))


def fronts(points: Sequence[Sequence[float]], eps: Sequence[float] | None = None) -> list[int]:
    """Non-dominated sorting: each point's front (0 = non-dominated), every objective minimised;
    `eps`: dominance beyond those margins (dominates)."""
    rank, left, r = [0] * len(points), set(range(len(points))), 0
    while left:
        front = {i for i in left if not any(dominates(points[j], points[i], eps) for j in left if j != i)}
        for i in front:
            rank[i] = r
        left -= front
        r += 1
    return rank


def crowding(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II's crowding distance of each point within `points` (one front): the sum over
    objectives of the gap between its neighbours, normalised by the front's range in that
    objective; the extremes of an objective whose range is not zero get +inf. Computed on the
    distinct points (identical points share a value); a front of one or two distinct points: +inf."""
    uniq = sorted(set(map(tuple, points)))
    if len(uniq) <= 2:
        return [math.inf] * len(points)
    dist = dict.fromkeys(uniq, 0.0)
    for m in range(len(uniq[0])):
        s = sorted(uniq, key=lambda p: p[m])
        lo, hi = s[0][m], s[-1][m]
        if hi == lo:
            continue
        dist[s[0]] = dist[s[-1]] = math.inf
        for i in range(1, len(s) - 1):
            dist[s[i]] += (s[i + 1][m] - s[i - 1][m]) / (hi - lo)
    return [dist[tuple(p)] for p in points]


def eps_net(points: Sequence[Sequence[float]]) -> list[int]:
    """Each point's place in the ε-net order of `points` (one front, every objective minimised; 0
    first): the smallest first objective, then repeatedly the point whose distance (Euclidean, in
    the objectives' units) to the nearest one already chosen is largest; ties: the earlier point.
    Computed on the distinct points (identical points share a place), as MO-ASHA's implementation
    orders a front (Syne Tune's compute_epsilon_net with dim 0)."""
    uniq = list(dict.fromkeys(map(tuple, points)))
    left = sorted(range(len(uniq)), key=lambda i: (uniq[i][0], i))
    order = [left.pop(0)]
    while left:
        far = max(left, key=lambda i: (min(math.dist(uniq[i], uniq[j]) for j in order), -i))
        order.append(far)
        left.remove(far)
    place = {uniq[i]: k for k, i in enumerate(order)}
    return [place[tuple(p)] for p in points]


def priorities(points: Sequence[Sequence[float]], eps: Sequence[float] | None = None,
               tie_break: str = "crowding") -> list[tuple[int, float]]:
    """(front, the tie-break's key within the front) of each point: smaller is better. crowding:
    −crowding distance; eps_net: the place in the front's ε-net order."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break: one of {', '.join(TIE_BREAKS)}, got {tie_break!r}")
    rank = fronts(points, eps)
    out = [(0, 0.0)] * len(points)
    for r in set(rank):
        idx = [i for i in range(len(points)) if rank[i] == r]
        front = [points[i] for i in idx]
        keys = [-d for d in crowding(front)] if tie_break == "crowding" else [float(k) for k in eps_net(front)]
        for i, key in zip(idx, keys):
            out[i] = (r, key)
    return out


def survives(entries: Mapping[str, Sequence[float]], trial: str, eta: float,
             eps: Sequence[float] | None = None, groups: Mapping[str, str] | None = None,
             tie_break: str = "crowding") -> bool:
    """Whether `trial`, recorded at a rung with `entries` ({trial: objectives, minimised}, itself
    included), continues: fewer than η entries, or fewer than max(1, ⌊n/η⌋) entries rank strictly
    before it (priorities: front, then the tie-break). With `eps` (margins per objective), the
    fronts are dominance beyond the margins and a trial on the first front always continues. With
    `groups` ({trial: method}), only the entries of the trial's own group count."""
    if groups is not None:
        entries = {t: v for t, v in entries.items() if groups.get(t) == groups.get(trial)}
    n = len(entries)
    if n < eta:
        return True
    keep = max(1, math.floor(n / eta + 1e-9))
    ids = list(entries)
    prio = dict(zip(ids, priorities([tuple(entries[i]) for i in ids], eps, tie_break)))
    if eps is not None and prio[trial][0] == 0:
        return True
    return sum(prio[i] < prio[trial] for i in ids if i != trial) < keep


# ---- the Tune scheduler ------------------------------------------------------------------------------
class MOASHA(FIFOScheduler):
    """Ray Tune scheduler: MO-ASHA over the spec's objectives (module docstring). Trials start in
    submission order (FIFOScheduler); `on_trial_result` returns STOP or CONTINUE.

    `total_steps(config)` is a trial's planned optimizer steps (tune.PlannedSteps; rungs stay below
    it; None or an error: no cap but the point's step), `cost(config, seconds, tokens)` its cost
    metrics at a stop (tune.TrialCost). Picklable (the Tuner saves it with its config)."""

    _supports_buffered_results = False      # decide on every curve point, never on a batch of them

    def __init__(self, objectives: "O.Objectives", *, grace: int, eta: float = 3, tie_break: str = "crowding",
                 epsilon: Mapping[str, float] | None = None, per_method: bool = False,
                 grace_per_method: Mapping[str, int] | None = None,
                 total_steps: Callable[[dict], int | None] | None = None,
                 cost: Callable[[dict, float, float | None], dict] | None = None,
                 state: str | Path | None = None):
        if not (isinstance(grace, int) and grace >= 1):
            raise ValueError(f"early_stopping.grace: an integer >= 1 (optimizer steps), got {grace!r}")
        if not eta > 1:
            raise ValueError(f"early_stopping.eta: must be > 1, got {eta!r}")
        if tie_break not in TIE_BREAKS:
            raise ValueError(f"early_stopping.tie_break: one of {', '.join(TIE_BREAKS)}, got {tie_break!r}")
        costs = [n for n in objectives.names if n in O.COSTS]
        if costs:
            raise ValueError(f"early stopping judges the curve's points, which have no {', '.join(costs)}")
        self.eps = O.margins(objectives.names, epsilon)
        self.per_method = bool(per_method)
        self.first = dict(grace_per_method or {})     # method -> its first rung (steps); others: grace
        for method, first in self.first.items():
            ladder = off_ladder(grace, eta, first)
            if ladder is not None:
                raise ValueError(f"early_stopping.grace_per_method.{method}: one of the rungs grace·η^k "
                                 f"({', '.join(map(str, ladder))}, …), got {first!r}")
        super().__init__()
        self.obj, self.grace, self.eta, self.tie_break = objectives, grace, float(eta), tie_break
        self.total_steps, self.cost = total_steps, cost
        self.sign = [-1.0 if m == "max" else 1.0 for m in objectives.modes]     # minimise everything
        self.rungs: dict[int, dict[str, tuple]] = {}   # budget -> {trial id: objectives, minimised}
        self.judged: dict[str, int] = {}               # trial id -> its highest judged rung
        self.totals: dict[str, int | None] = {}        # trial id -> planned optimizer steps
        self.tokens: dict[str, float] = {}             # trial id -> the last train/tokens seen
        self.stops: dict[str, dict] = {}               # trial id -> what its last result gets (on_trial_complete)
        self.method: dict[str, str] = {}               # trial id -> its method (per_method; kept with the rungs)
        self.state = None if state is None else str(state)   # the rungs' file (rungs, judged, method, …)
        self.restored = self.state is None             # read back once, before the first decision
        self.ended: set[str] = set()                   # trial ids that ended (kept with the rungs)
        self.orphaned: dict[str, dict[str, list]] = {}   # budget -> {trial id: objectives}: not counted
        self.added: set[str] | None = None             # trial ids Tune added since a restore; None: no check due

    def set_search_properties(self, metric, mode, **spec) -> bool:
        """The objectives are the spec's (the searcher's too); a metric/mode from TuneConfig would be
        a second source that could disagree, so Tune refuses it (False)."""
        return not (metric or mode)

    # -- a trial's rungs -------------------------------------------------------------------------------
    def _total(self, trial) -> int | None:
        if trial.trial_id not in self.totals:
            total = None
            if self.total_steps is not None:
                try:
                    total = self.total_steps(trial.config)
                except Exception as e:  # noqa: BLE001 — no cap is safe: a rung then only sits at a step reached
                    print(f"warning: early stopping: trial {trial.trial_id}'s total steps are unknown "
                          f"({type(e).__name__}: {e}); its rungs are not capped", file=sys.stderr)
            self.totals[trial.trial_id] = total
        return self.totals[trial.trial_id]

    def rung_for(self, trial_id: str, step: int, total: int | None, first: int | None = None) -> int | None:
        """The rung a point at `step` counts for: the highest budget reached, below the total steps,
        at or above the trial's first rung (`first`, default grace) and above its last judged rung;
        None when there is none."""
        limit = step if total is None else min(step, total - 1)
        floor = max(self.judged.get(trial_id, 0) + 1, first or 0)
        above = [b for b in budgets(self.grace, self.eta, limit) if b >= floor]
        return above[-1] if above else None

    def vector(self, result: Mapping) -> tuple | None:
        """The point's objectives, minimised; None unless each `curve/<name>` is a finite number."""
        vals = self.obj.values({n: result.get(CURVE + n) for n in self.obj.names})
        return None if vals is None else tuple(s * float(v) for s, v in zip(self.sign, vals))

    # -- the rungs' file ------------------------------------------------------------------------------
    def restore_rungs(self) -> None:
        """Once: the rungs, judged rungs and methods a previous driver of this sweep recorded in
        `state` (none when the file does not exist: a fresh sweep)."""
        if self.restored:
            return
        self.restored = True
        path = Path(self.state)
        if not path.exists():
            return
        d = json.loads(path.read_text())
        self.rungs = {int(b): {t: tuple(v) for t, v in e.items()} for b, e in d["rungs"].items()}
        self.judged = {t: int(b) for t, b in d["judged"].items()}
        self.method = {t: str(m) for t, m in d["method"].items()}
        self.ended = set(d.get("ended", ()))
        self.orphaned = d.get("orphaned", {})
        self.added = set()
        print(f"early stopping: {sum(map(len, self.rungs.values()))} rung entries of {len(self.judged)} trials "
              f"read back from {path}", file=sys.stderr)

    def save_rungs(self) -> None:
        """Write the rungs to `state` (a whole new file, then renamed over the old one)."""
        if self.state is None:
            return
        d = {"rungs": {str(b): {t: list(v) for t, v in e.items()} for b, e in sorted(self.rungs.items())},
             "judged": self.judged, "method": self.method, "ended": sorted(self.ended), "orphaned": self.orphaned}
        tmp = Path(f"{self.state}.tmp")
        tmp.write_text(json.dumps(d))
        os.replace(tmp, self.state)

    def drop_orphans(self) -> None:
        """Once, at the first decision after a restore (Tune has added every trial it restored by
        then): rung entries of trials that did not end and that Tune did not restore belong to a trial
        re-queued under a new id; they move to `orphaned`."""
        if self.added is None:
            return
        lost = set(self.judged) - self.added - self.ended
        self.added = None
        if not lost:
            return
        for budget, entries in self.rungs.items():
            for tid in lost & set(entries):
                self.orphaned.setdefault(str(budget), {})[tid] = list(entries.pop(tid))
        for tid in lost:
            self.judged.pop(tid, None)
            self.method.pop(tid, None)
        self.save_rungs()
        print(f"early stopping: {len(lost)} trial(s) of the previous driver neither ended nor were restored by "
              f"Tune ({', '.join(sorted(lost))}: re-queued under new ids); their rung entries are kept in "
              f"{self.state} as `orphaned`, not counted", file=sys.stderr)

    # -- Tune's calls ------------------------------------------------------------------------------------
    def on_trial_add(self, tune_controller, trial):
        self.restore_rungs()
        if self.added is not None:
            self.added.add(trial.trial_id)
        self._total(trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self.restore_rungs()
        self.drop_orphans()
        tid = trial.trial_id
        tokens = result.get("train/tokens")
        if isinstance(tokens, (int, float)) and not isinstance(tokens, bool):
            self.tokens[tid] = float(tokens)
        step, vec = result.get(STEP), self.vector(result)
        if vec is None or not isinstance(step, (int, float)) or isinstance(step, bool):
            return TrialScheduler.CONTINUE
        method = str(trial.config.get("method", ""))
        rung = self.rung_for(tid, int(step), self._total(trial), self.first.get(method))
        if rung is None:
            return TrialScheduler.CONTINUE
        entries = self.rungs.setdefault(rung, {})
        entries[tid] = vec
        self.judged[tid] = rung
        self.method[tid] = method
        self.save_rungs()
        if survives(entries, tid, self.eta, self.eps, self.method if self.per_method else None, self.tie_break):
            return TrialScheduler.CONTINUE
        self.stops[tid] = self._record(trial, rung, int(step), result)
        return TrialScheduler.STOP

    def _record(self, trial, rung: int, step: int, result: Mapping) -> dict:
        """What the stopped trial's last result gets: the marks, the point's metrics under the
        trial's own names, and its cost so far."""
        rec = {EARLY_STOPPED: 1, STOPPED_AT_RUNG: rung, STOPPED_AT_STEP: step}
        for name in self.obj.recorded():
            v = result.get(CURVE + name)
            if name not in O.COSTS and isinstance(v, (int, float)) and not isinstance(v, bool):
                rec[name] = float(v)
        if self.obj.constraints:
            rec[O.VIOLATION] = self.obj.violation(rec)
        seconds = result.get("time_total_s")
        if self.cost is not None and isinstance(seconds, (int, float)):
            rec.update(self.cost(trial.config, float(seconds), self.tokens.get(trial.trial_id)))
        return rec

    def on_trial_complete(self, tune_controller, trial, result: dict):
        """Tune's stop_trial calls this before the searcher's and the callbacks' on_trial_complete,
        which read `trial.last_result`: a stopped trial's record goes into it here. A finished
        trial's real steps are checked against the planned ones the rungs were capped by."""
        tid = trial.trial_id
        rec = self.stops.pop(tid, None)
        if rec is not None:
            trial.last_result.update(rec)
        else:
            planned, real = self.totals.get(tid), (result or {}).get("train_steps")
            if planned is not None and isinstance(real, int) and real != planned:
                print(f"warning: early stopping: trial {tid} trained {real} steps, its rungs were capped at the "
                      f"planned {planned} (tune.PlannedSteps disagrees with the worker)", file=sys.stderr)
        self._forget(tid)

    def on_trial_error(self, tune_controller, trial):
        self.stops.pop(trial.trial_id, None)
        self._forget(trial.trial_id)

    def on_trial_remove(self, tune_controller, trial):
        self.stops.pop(trial.trial_id, None)
        self._forget(trial.trial_id)

    def _forget(self, tid: str) -> None:
        """A trial that ended keeps its rung entries (the rungs' history), nothing else."""
        self.totals.pop(tid, None)
        self.tokens.pop(tid, None)
        if tid in self.judged and tid not in self.ended:
            self.ended.add(tid)
            self.save_rungs()

    def debug_string(self) -> str:
        rungs = ", ".join(f"{b}: {len(e)}" for b, e in sorted(self.rungs.items())) or "none yet"
        noise = "" if self.eps is None else ", ε " + "/".join(f"{e:g}" for e in self.eps)
        noise += ", per method" if self.per_method else ""
        noise += "".join(f", {m} from {b}" for m, b in sorted(self.first.items()))
        return f"MO-ASHA (grace {self.grace}, η {self.eta:g}, {self.tie_break}{noise}): trials per rung {rungs}"
