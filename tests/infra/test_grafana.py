"""The Grafana dashboard under infra/: valid JSON Grafana imports (panels with targets on a
Prometheus datasource variable), every query names only metrics ``GET /metrics`` exposes and
only labels they carry, every exposed metric is charted, and requests, run times and batch sizes
are charted per endpoint, filtered by the ``app`` and ``endpoint`` variables."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from klieg_platform.gateway.metrics import LABELS, NAMES

DASHBOARD = Path(__file__).parents[2] / "infra" / "grafana" / "klieg-fleet.json"
_METRIC = re.compile(r"\bklieg_[a-z_]+\b")
_SUFFIXES = ("_bucket", "_sum", "_count")
_GROUPED = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHED = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)\s*\"")


def _load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in NAMES:
            return name[: -len(suffix)]
    return name


def test_the_dashboard_is_importable() -> None:
    dash = _load()
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "two panels share an id"
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] >= 0 and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])


def test_every_query_names_exposed_metrics_and_every_metric_is_charted() -> None:
    used = {
        _family(name)
        for panel in _load()["panels"]
        for target in panel["targets"]
        for name in _METRIC.findall(target["expr"])
    }
    assert used <= set(NAMES), f"queries of metrics that do not exist: {used - set(NAMES)}"
    assert set(NAMES) <= used, f"metrics no panel charts: {set(NAMES) - used}"


def test_brackets_balance_in_every_query() -> None:
    for panel in _load()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for open_, close in ("()", "[]", "{}"):
                assert expr.count(open_) == expr.count(close), (panel["title"], expr)


def _exprs() -> list[str]:
    return [t["expr"] for panel in _load()["panels"] for t in panel["targets"]]


def test_every_query_groups_and_filters_by_labels_its_metrics_carry() -> None:
    for expr in _exprs():
        families = {_family(name) for name in _METRIC.findall(expr)}
        carried = {"le"} | {label for f in families for label in LABELS[f]}
        grouped = {x.strip() for g in _GROUPED.findall(expr) for x in g.split(",") if x.strip()}
        matched = set(_MATCHED.findall(expr))
        assert grouped | matched <= carried, (expr, (grouped | matched) - carried)


def test_requests_run_times_and_batches_are_charted_per_endpoint() -> None:
    variables = {v["name"]: v for v in _load()["templating"]["list"]}
    for name in ("app", "endpoint"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"]["uid"] == "${datasource}"
        assert f", {name})" in var["definition"] and var["includeAll"], var
    assert '{app=~"$app"}' in variables["endpoint"]["definition"]  # the chosen apps' endpoints
    for family in ("klieg_requests_total", "klieg_request_run_seconds", "klieg_batch_size"):
        assert "endpoint" in LABELS[family]
        per_endpoint = [
            e for e in _exprs()
            if family in {_family(n) for n in _METRIC.findall(e)}
            and any("endpoint" in g for g in _GROUPED.findall(e))
        ]  # fmt: skip
        assert per_endpoint, f"no panel charts {family} by endpoint"
        assert all('endpoint=~"$endpoint"' in e for e in per_endpoint), per_endpoint
