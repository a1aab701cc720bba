"""A Tune callback that frees Ray Train worker placement groups nobody uses any more.

Ray 2.60 ties a Train V2 run's placement group to the job and frees it only through the run's
controller (or a cleaner actor). When a node dies with a trial's driver and controller on it, the
group is rescheduled onto the surviving nodes and holds their CPUs for the rest of the sweep: no
later trial can start (seen in tests/test_cluster_sweep.py). Two ways out:
- each worker reports its group's id first; when Tune ends the trial (finished or errored), the
  group is removed if it is still there;
- a trial can die before any report reaches Tune, so every `interval_s` the janitor also looks at
  the created groups: a group once seen holding live actors that then stays empty for `grace_s` is
  an orphan and goes. Groups never seen in use (Tune's staged trial groups, a run whose workers are
  still starting) are left alone. This needs Ray's state API (the dashboard), asked at this driver's
  own cluster's dashboard (with no address it refuses when a machine runs two Ray instances, and
  without a dashboard of its own it would ask another instance's on the default port); without one,
  or after `MAX_STATE_ERRORS` failed sweeps in a row, only the first way works;
- a group whose node died is RESCHEDULING: Ray 2.60's GCS retries it in a loop with no back-off
  while the surviving nodes' resources are taken (tens of millions of attempts, two busy cores'
  worth of GCS and dashboard agent, seen in tests/test_cluster_sweep.py), and once it fits it holds
  them with no actor in it. Its owner is gone or starts afresh (Ray Train makes a new group for every
  worker-group start; Tune requests new resources for a retried trial), so a RESCHEDULING group with
  no live actor goes after `lost_grace_s`, and counts as once used (an orphan if it lands empty)."""
from __future__ import annotations

import os
import time

from ray.tune import Callback

MAX_STATE_ERRORS = 3   # failed state-API sweeps in a row before the janitor stops sweeping (a timeout on a
                       # loaded head is not the end)


class PlacementGroupJanitor(Callback):
    def __init__(self, grace_s: float | None = None, interval_s: float = 15.0, lost_grace_s: float = 5.0):
        self.grace_s = float(os.environ.get("SMF_SWEEP_ORPHAN_PG_S", 120)) if grace_s is None else grace_s
        self.interval_s = interval_s
        self.lost_grace_s = lost_grace_s
        self.groups: dict[str, set[str]] = {}     # trial id -> placement group ids (hex) its workers used
        self.seen_used: set[str] = set()          # group ids once seen holding a live actor
        self.empty_since: dict[str, float] = {}   # group id -> when it was first seen empty after that
        self.last_sweep = 0.0
        self.state_api = True
        self.state_errors: list[str] = []         # the failed sweeps in a row, as "Type: message"

    # -- trials that end ----------------------------------------------------------------------------
    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("placement_group"):
            self.groups.setdefault(trial.trial_id, set()).add(result["placement_group"])

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.release(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.release(trial.trial_id)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """Tune retries the trial (search.trial_retries): the failed attempt's Train run is over (its
        controller lived and died with the driver), so its groups go; the retry reports its own."""
        self.release(trial.trial_id)

    def release(self, trial_id: str) -> list[str]:
        from ray.util.placement_group import placement_group_table

        table = placement_group_table()
        return [g for g in self.groups.pop(trial_id, ()) if _remove(g, table)]

    # -- groups left empty ----------------------------------------------------------------------------
    def on_step_begin(self, iteration, trials, **info):
        now = time.monotonic()
        if not self.state_api or now - self.last_sweep < self.interval_s:
            return
        self.last_sweep = now
        self.sweep_empty(now)

    def sweep_empty(self, now: float) -> list[str]:
        from ray._private.worker import get_dashboard_url
        from ray.util.placement_group import placement_group_table
        from ray.util.state import list_actors

        url = get_dashboard_url()             # this driver's cluster's ("" without a dashboard; never
        if not url:                           # another instance's on the default port)
            self.state_api, self.state_errors = False, ["no dashboard: this cluster runs without one"]
            return []
        try:
            alive = list_actors(address=url if "://" in url else f"http://{url}", filters=[("state", "=", "ALIVE")],
                                detail=True, limit=10_000, raise_on_missing_output=False)
        except Exception as e:                # a timeout on a loaded head, a dashboard that died
            self.state_errors.append(f"{type(e).__name__}: {str(e)[:200]}")
            self.state_api = len(self.state_errors) < MAX_STATE_ERRORS
            return []
        self.state_errors.clear()
        used = {a.placement_group_id for a in alive if a.placement_group_id}
        table, removed = placement_group_table(), []
        lost = {gid for gid, e in table.items() if e.get("state") == "RESCHEDULING"}
        self.seen_used |= used | lost
        for gid, entry in table.items():
            if entry.get("state") not in ("CREATED", "RESCHEDULING") or gid in used or gid not in self.seen_used:
                self.empty_since.pop(gid, None)
                continue
            since = self.empty_since.setdefault(gid, now)
            if now - since >= (self.lost_grace_s if gid in lost else self.grace_s) and _remove(gid, table):
                removed.append(gid)
                self.empty_since.pop(gid, None)
        return removed


def _remove(gid: str, table: dict) -> bool:
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    if table.get(gid, {}).get("state", "REMOVED") == "REMOVED":
        return False
    remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(gid))))
    return True
