"""The sweep's janitor and a lost node, on a real two-node local cluster: a Train-like worker group
on the worker node is left RESCHEDULING when the node dies. Ray 2.60's GCS retries it with no
back-off (tens of millions of attempts in minutes, starving a small machine: the CI hang of
tests/test_cluster_sweep.py) and, once it fits on a surviving node, holds its CPU with no actor in it.
The janitor removes it within a sweep or two, even if it never saw it in use."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:            # `cluster` is a checkout package, not part of the wheel
    sys.path.insert(0, str(REPO))


def test_janitor_removes_a_lost_nodes_rescheduling_group():
    from cluster.local import LocalCluster

    with LocalCluster(workers=1, head_cpus=1, worker_cpus=1) as c, c.connect():
        import ray
        from ray.util.placement_group import placement_group, placement_group_table
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from smf_sweep.janitor import PlacementGroupJanitor

        # two one-CPU groups fill the two one-CPU nodes; which lands where is the GCS's choice, so read
        # it back (the test once assumed the first took the head's CPU; when it took w1's, the group
        # called lost sat on the head and never moved: two local full runs failed that way)
        groups = [placement_group([{"CPU": 1}], strategy="PACK") for _ in range(2)]
        assert all(g.wait(60) for g in groups)
        (w1,) = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node_w1" in n["Resources"]]
        table = placement_group_table()
        on_w1 = [table[g.id.hex()]["bundles_to_node_id"][0] == w1 for g in groups]
        assert sorted(on_w1) == [False, True], (table, w1)
        lost, busy = (groups[0], groups[1]) if on_w1[0] else (groups[1], groups[0])

        @ray.remote(num_cpus=1)
        class Worker:
            def node(self) -> str:
                return ray.get_runtime_context().get_node_id()

        a = Worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(busy)).remote()   # a running trial
        b = Worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(lost)).remote()   # on w1
        assert ray.get(b.node.remote(), timeout=60) == w1 != ray.get(a.node.remote(), timeout=60)
        j = PlacementGroupJanitor(grace_s=3600, lost_grace_s=1.0)        # never seen in use: j has not looked yet
        assert c.stop_node("w1") > 0
        # the GCS marks w1 dead after its health checks fail: seconds when idle
        gid, deadline = lost.id.hex(), time.monotonic() + 180
        while placement_group_table()[gid]["state"] != "RESCHEDULING":
            assert time.monotonic() < deadline, (placement_group_table()[gid]["state"], ray.nodes())
            time.sleep(1)
        removed: list[str] = []
        while gid not in removed:
            assert time.monotonic() < deadline, (placement_group_table()[gid], j.state_errors)
            removed += j.sweep_empty(time.monotonic())
            time.sleep(0.5)
        assert placement_group_table()[gid]["state"] == "REMOVED"
        assert placement_group_table()[busy.id.hex()]["state"] == "CREATED"   # a live group stays
        assert ray.get(a.node.remote(), timeout=60)
