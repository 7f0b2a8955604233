"""The Grafana dashboard and the Prometheus alert rules in config/ use exactly the names strait exports:
every metric an expression names is in a live scrape after a workload (successes, failures, retries)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SECRET, Endpoint, Server, wait_for

CONFIG = Path(__file__).resolve().parents[1] / "config"
BUILTIN = {"up"}  # Prometheus's own series


def _names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers before a selector, a range or an operator,
    not functions, label names or keywords."""
    words = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b\s*(?![\s(]*\()", expr))
    return {w for w in words if w.startswith("strait_") or w in BUILTIN}


def expressions() -> list[str]:
    rules = yaml.safe_load((CONFIG / "prometheus" / "alerts.yml").read_text())
    out = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dash = json.loads((CONFIG / "grafana" / "dashboards" / "strait.json").read_text())
    out += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    return out


def test_every_expression_parses_to_names() -> None:
    exprs = expressions()
    assert len(exprs) >= 20
    for expr in exprs:
        assert _names(expr), expr
    assert _names('sum(rate(strait_a_total{x="y"}[5m])) / clamp_min(sum(strait_b), 1)') == {
        "strait_a_total",
        "strait_b",
    }


def test_the_dashboard_and_alerts_name_only_exported_series(strait: Server, endpoint: Endpoint) -> None:
    def behave(seen: dict[str, Any]) -> Any:
        if b"fail" in seen["body"]:
            return web.json_response({"no": True}, status=500)
        return None

    endpoint.behave = behave
    with strait.client("p") as c:
        c.post("/v1/projects", json={"id": "p", "org_id": "o", "name": "Project p"}).raise_for_status()
        body = {"project_id": "p", "name": "d", "slug": "d", "endpoint_url": endpoint.url, "max_attempts": 2}
        job = c.post("/v1/jobs", json=body).json()["id"]
        items = [{"payload": {"ok": i}} for i in range(5)] + [{"payload": {"fail": 1}}]
        assert c.post(f"/v1/jobs/{job}/trigger/bulk", json={"items": items}).status_code == 201

    def scraped() -> set[str]:
        r = httpx.get(f"{strait.base}/metrics", headers={"X-Internal-Secret": SECRET}, timeout=10)
        assert r.status_code == 200
        names = set()
        for family in text_string_to_metric_families(r.text):
            names |= {s.name for s in family.samples}
        return names

    wanted = set().union(*(_names(e) for e in expressions())) - BUILTIN
    # series with labels appear once a value exists (transitions, answers) or are made at start (restarts, error
    # classes); the queue's gauges once the sampler ran
    wait_for(lambda: not (wanted - scraped()), timeout=40, what=f"every series named: {sorted(wanted - scraped())}")
