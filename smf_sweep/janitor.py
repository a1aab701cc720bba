"""A Tune callback that removes a trial's Ray Train worker placement group once the trial has ended.

Ray 2.60 ties a Train V2 run's placement group to the job and frees it only through the run's
controller (or a cleaner actor). When a node dies with a trial's driver and controller on it, the
group is rescheduled onto the surviving nodes and holds their CPUs for the rest of the sweep: no
later trial can start (seen in tests/test_cluster_sweep.py). Each worker reports its group's id in
its first report; once Tune has ended the trial, finished or errored, nothing may still use it."""
from __future__ import annotations

from ray.tune import Callback


class PlacementGroupJanitor(Callback):
    def __init__(self):
        self.groups: dict[str, set[str]] = {}    # trial id -> placement group ids (hex) its workers used

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("placement_group"):
            self.groups.setdefault(trial.trial_id, set()).add(result["placement_group"])

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.release(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.release(trial.trial_id)

    def release(self, trial_id: str) -> list[str]:
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

        table, removed = placement_group_table(), []
        for hex_id in self.groups.pop(trial_id, ()):
            if table.get(hex_id, {}).get("state", "REMOVED") != "REMOVED":
                remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(hex_id))))
                removed.append(hex_id)
        return removed
