"""Prometheus metrics (issue 15; engine.md §12 names): one scrape of `strait --mode all` sees every
process's series; a known workload moves the counters by exactly its size; the secret is required."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from strait_actors import metrics
from strait_actors.metrics_sampler import DEPTH_SECS, MetricsSampler, next_count
from strait_actors.store.sql import q
from tests.conftest import SECRET, Endpoint, Server, free_port, start_strait, stop_strait, wait_for


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return samples_of(httpx.get(f"{base}/metrics", headers={"X-Internal-Secret": SECRET}, timeout=10))


def samples_of(r: httpx.Response) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_workload_moves_the_counters_by_exactly_its_size(strait: Server, endpoint: Endpoint) -> None:
    assert httpx.get(f"{strait.base}/metrics").status_code == 401
    wrong = httpx.get(f"{strait.base}/metrics", headers={"Authorization": "Bearer not-the-secret"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"]
    with strait.client("p") as c:
        c.post("/v1/projects", json={"id": "p", "org_id": "o", "name": "Project p"}).raise_for_status()
        body = {"project_id": "p", "name": "m", "slug": "m", "endpoint_url": endpoint.url}
        job = c.post("/v1/jobs", json=body).json()["id"]
        items = [{"payload": {"i": i}} for i in range(100)]
        assert c.post(f"/v1/jobs/{job}/trigger/bulk", json={"items": items}).status_code == 201
        wait_for(
            lambda: len(c.get("/v1/runs", params={"status": "completed", "limit": 100}).json()["data"]) == 100,
            timeout=60,
            what="100 runs completed",
        )

    def counted() -> bool:
        s = scrape(strait.base)
        return (
            value(s, "strait_run_transitions_total", **{"from": "executing", "to": "completed"}) == 100
            and value(s, "strait_run_transitions_total", **{"from": "queued", "to": "executing"}) == 100
            and value(s, "strait_dispatch_duration_seconds_count") == 100
        )

    wait_for(counted, timeout=30, what="the transitions drained and every worker process's dispatches counted")
    s = scrape(strait.base)
    # the runs were dispatched by two worker processes, the trigger answered by the API process: one scrape
    assert value(s, "strait_dispatch_response_status_total", status="200") == 100
    assert value(s, "strait_run_end_to_end_seconds_count") == 100
    assert value(s, "strait_run_duration_seconds_count") == 100
    assert value(s, "strait_queue_claim_batch_size_sum") == 100  # every run claimed once
    assert value(s, "strait_queue_claim_duration_seconds_count") >= 1
    assert value(s, "strait_worker_retry_total") == 0
    assert s[("strait_dispatch_connect_redials_total", ())] == 0  # exported, and the endpoint took every SYN
    trigger = "/v1/jobs/{job_id}/trigger/bulk"
    assert value(s, "strait_http_request_duration_seconds_count", route=trigger, status="201") == 1  # by now flushed
    assert value(s, "strait_db_pool_conns", state="max") >= 1
    # nothing else moved: no run left the queue another way
    moved = {k[1]: v for k, v in s.items() if k[0] == "strait_run_transitions_total"}
    assert sum(moved.values()) == 200, moved

    def depth_sampled() -> bool:
        d = scrape(strait.base)
        return ("strait_queue_depth", (("status", "queued"),)) in d and ("strait_dlq_depth", ()) in d

    wait_for(depth_sampled, timeout=15, what="the queue's depth sampled")
    # the official client's list_metrics: JSON when asked for exactly that
    r = httpx.get(f"{strait.base}/metrics", headers={"X-Internal-Secret": SECRET, "Accept": "application/json"})
    doc = r.json()
    assert doc["content_type"].startswith("text/plain; version=0.0.4")
    assert "strait_run_transitions_total" in doc["text"]
    json.dumps(doc)


def test_a_worker_host_serves_its_processes_metrics_on_its_small_port(dsn: str, tmp_path: Path) -> None:
    port = free_port()
    server = start_strait({"DATABASE_URL": dsn, "WORKER_PORT": str(port), "PORT": str(port)}, tmp_path, mode="worker")
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/metrics").status_code == 401
        # a header that is not UTF-8 is a wrong secret, not a 500
        for odd in ({"X-Internal-Secret": b"\xff\xfe"}, {"Authorization": b"Bearer \xff"}):
            assert httpx.get(f"{base}/metrics", headers=odd).status_code == 401

        def claimed() -> bool:
            return value(scrape(base), "strait_queue_claim_duration_seconds_count") >= 2

        wait_for(claimed, timeout=20, what="both worker processes' claims in one scrape")
    finally:
        stop_strait(server)


def test_a_metrics_file_being_made_or_damaged_leaves_the_scrape_whole(strait: Server, tmp_path: Path) -> None:
    """A process creates its metrics file empty and sizes it a moment later (prometheus_client issue
    1199): a scrape in that moment answered 500 (seen once in the suite). An empty file, or a damaged
    one, is left out of the scrape; every other series is in it."""
    before = scrape(strait.base)
    folder = tmp_path / "data" / "metrics" / str(strait.proc.pid)  # runtime.metrics_dir
    assert folder.is_dir()
    (folder / "counter_999999991.db").write_bytes(b"")
    # 32 bytes used, and a first key said to be 1,000 bytes long: past the end
    damaged = struct.pack("i", 32) + bytes(4) + struct.pack("i", 1000) + bytes(20)
    (folder / "histogram_999999992.db").write_bytes(damaged)
    after = scrape(strait.base)  # 200, or `scrape` fails
    assert set(before) <= set(after)
    assert ("strait_dispatch_connect_redials_total", ()) in after
    assert "histogram_999999992.db left out of the scrape" in strait.logs()
    assert "counter_999999991.db" not in strait.logs(), "an empty file is skipped without a word"


def test_the_depth_count_is_gentle_background_work(dsn: str) -> None:
    """The queue-depth count reads every entry of its indexes (70 ms behind 2,000,000 runs, in three
    processes when the planner goes parallel): its connection plans no parallel query, and the next
    count waits 100 times as long as the last one took when that is longer than DEPTH_SECS."""
    # costs that make a parallel plan the planner's choice even on a small table
    eager = (
        "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_index_scan_size = 0; "
        "SET min_parallel_table_scan_size = 0"
    )

    async def plans() -> tuple[str, str]:
        out = []
        sampler = MetricsSampler(dsn, metrics)
        for conn in (await sampler.connect(), await psycopg.AsyncConnection.connect(dsn, autocommit=True)):
            async with conn:
                for statement in eager.split("; "):
                    await conn.execute(statement)
                cur = await conn.execute("EXPLAIN " + q("queue_depth"))
                out.append("\n".join(str(r[0]) for r in await cur.fetchall()))
        return out[0], out[1]

    sampler_plan, plain_plan = asyncio.run(plans())
    assert "Gather" in plain_plan  # the statement would go parallel on any other connection
    assert "Gather" not in sampler_plan

    assert next_count(100.0, 0.01) == 100.0 + DEPTH_SECS
    assert next_count(100.0, 0.5) == 150.0
