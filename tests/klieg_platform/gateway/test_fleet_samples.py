"""Fleet samples: running totals per owner and for the fleet, and what each caller sees."""

from __future__ import annotations

from klieg_platform.broker import Depth
from klieg_platform.broker.stats import (
    BATCH_LABELS,
    COLD_LABELS,
    REQUEST_LABELS,
    Histogram,
    Snapshot,
)
from klieg_platform.gateway.fleet import sample, samples_for
from klieg_platform.registry_tables import Tenant


def _snapshot() -> Snapshot:
    run = Histogram((1.0,), REQUEST_LABELS,
                    {("p", "t", "ann/a", "/"): [2, 0], ("p", "t", "ann/a", "/x"): [0, 1],
                     ("p", "t", "bob/b", "/"): [1, 0]},
                    {("p", "t", "ann/a", "/"): 1.5, ("p", "t", "ann/a", "/x"): 3.0,
                     ("p", "t", "bob/b", "/"): 0.5})  # fmt: skip
    cold = Histogram((1.0,), COLD_LABELS, {("p", "ann/a"): [0, 2]}, {("p", "ann/a"): 9.0})
    empty = Histogram((1.0,), BATCH_LABELS)
    return Snapshot(requests={}, queue_s=empty, run_s=run, cold_s=cold, batch=empty, slo={})


def test_a_sample_totals_per_owner_and_for_the_fleet() -> None:
    workers = [{"runners": [{"app": "ann/a", "state": "busy"}, {"app": "bob/b", "state": "idle"},
                            {"app": "ann/a", "state": "starting"}]}]  # fmt: skip
    depths = [Depth("p", "t", 3, 1.0), Depth("p", "u", 2, 0.5)]
    s = sample(_snapshot(), workers, depths, 100.0)
    assert s["queued"] == 5 and s["at"] == 100.0
    assert s["owners"]["ann"] == {"done": 3, "run_s": 4.5, "cold": 2, "busy": 2}
    assert s["owners"]["bob"] == {"done": 1, "run_s": 0.5}
    assert s["fleet"] == {"done": 4, "run_s": 5.0, "cold": 2, "busy": 2}


def test_each_caller_sees_its_own_figures_and_the_admin_the_fleet() -> None:
    s = sample(_snapshot(), [], [Depth("p", "t", 3, 1.0)], 100.0)
    ann = Tenant(id="1", name="ann", tier="free", created_at=0)
    carl = Tenant(id="2", name="carl", tier="free", created_at=0)
    root = Tenant(id="3", name="root", tier="free", created_at=0, admin=True)
    assert samples_for(ann, [s]) == [{"at": 100.0, "done": 3, "run_s": 4.5, "cold": 2}]
    assert samples_for(carl, [s]) == [{"at": 100.0}]
    assert samples_for(root, [s]) == [{"at": 100.0, "queued": 3, **s["fleet"]}]
