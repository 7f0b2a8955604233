"""Operations (issue 15): structured logs with no secret in them, readiness with components (the
API's and a worker process's), and a run's debug bundle. Real servers, real PostgreSQL and Redis."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from aiohttp import web

from strait_actors import logs
from strait_actors.runtime import Prepared, child_env
from strait_actors.settings import SecretsFound, SettingsError, load
from strait_actors.store import db
from tests.client_helpers import TERMINAL
from tests.conftest import SECRET, Endpoint, Server, free_port, start_strait, stop_strait, wait_for
from tests.test_compose import compose, healthcheck_command
from tests.test_packaging import _instructions
from tests.test_processes import worker_pids

ACTORS = {"dispatcher", "poller", "reaper", "scheduler", "beacon"}


# ---- log lines (no server) ----------------------------------------------------------------------


def _record(msg: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("strait.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    for k, v in extra.items():
        setattr(record, k, v)
    return record


def test_json_lines_carry_the_run_context_and_one_line_tracebacks() -> None:
    fmt = logs.JsonFormatter(logs.Scrubber())
    fields = logs.run_fields("r-1", "j-1", 2) | {"request_id": "req-9", "stray": "not emitted"}
    out = json.loads(fmt.format(_record("run %s failed", "r-1", exc=True, **fields)))
    assert out["level"] == "WARNING" and out["logger"] == "strait.test" and out["message"] == "run r-1 failed"
    assert out["timestamp"].endswith("Z") and out["pid"] == os.getpid()
    assert (out["run_id"], out["job_id"], out["attempt"], out["request_id"]) == ("r-1", "j-1", 2, "req-9")
    assert "stray" not in out
    assert out["exception"].startswith("Traceback (most recent call last)") and "ValueError: boom" in out["exception"]
    assert "\n" not in fmt.format(_record("a\nb", exc=True))
    plain = json.loads(fmt.format(_record("no context")))
    assert not {"run_id", "job_id", "attempt", "exception"} & set(plain)
    text = logs.TextFormatter(logs.Scrubber()).format(_record("run failed", **logs.run_fields("r-1", None, 3)))
    assert text.endswith(" WARNING strait.test: run failed [run_id=r-1 attempt=3]"), text


def test_secrets_and_secret_shapes_are_scrubbed_from_every_line() -> None:
    scrub = logs.Scrubber(["internal-secret-value-1234", ""])
    key = "strait_" + "ab12" * 16
    token = "eyJhbGciOiJIUzI1NiJ9.eyJydW4iOiJ4In0.c2lnbmF0dXJl"
    for fmt in (logs.JsonFormatter(scrub), logs.TextFormatter(scrub)):
        line = fmt.format(_record("got %s and %s and %s", "internal-secret-value-1234", key, token))
        assert "internal-secret-value-1234" not in line and key not in line and token not in line, line
        assert line.count(logs.REDACTED) == 3
        # in a traceback too
        try:
            raise RuntimeError(f"bad key {key}")
        except RuntimeError:
            rec = _record("failed")
            rec.exc_info = sys.exc_info()
        assert key not in fmt.format(rec)


def test_log_format_auto_follows_the_terminal_and_bad_values_are_refused() -> None:
    main, other = os.openpty()
    with os.fdopen(other, "w") as tty, os.fdopen(main, "rb"):
        assert logs.resolve_format("auto", tty) == "text"
        assert logs.resolve_format("JSON", tty) == "json"
    assert logs.resolve_format("auto", io.StringIO()) == "json"
    assert logs.resolve_format("text", io.StringIO()) == "text"
    assert load(environ={"LOG_FORMAT": "Text"}).log_format == "Text"
    with pytest.raises(SettingsError, match=r"^LOG_FORMAT: must be one of auto\|json\|text, got 'xml'$"):
        load(environ={"LOG_FORMAT": "xml"})


def test_worker_processes_get_every_setting_the_parent_resolved(tmp_path: Path) -> None:
    """A `--config` file's settings reach the worker processes (they are started without it), and
    `auto` is resolved once, by the parent, whose stderr they share."""
    cfg = tmp_path / "strait.toml"
    cfg.write_text('log_format = "auto"\nworker_concurrency = 7\nallow_private_endpoints = true\n')
    s = load(str(cfg), environ={"INTERNAL_SECRET": SECRET, "JWT_SIGNING_KEY": "k" * 32})
    env = child_env(Prepared(s, "postgresql://db", None, SecretsFound([], [])))
    assert env["WORKER_CONCURRENCY"] == "7" and env["ALLOW_PRIVATE_ENDPOINTS"] == "true"
    assert env["LOG_FORMAT"] == logs.resolve_format("auto") and env["DATABASE_URL"] == "postgresql://db"
    assert load(environ=env).worker_concurrency == 7


# ---- a server's log: JSON lines, and none of its secrets ----------------------------------------


def test_server_logs_are_json_lines_without_any_secret(dsn: str, tmp_path: Path, endpoint: Endpoint) -> None:
    internal, jwt_key = "ops-internal-" + secrets.token_hex(12), "ops-jwt-" + secrets.token_hex(20)
    signing = "ops-signing-" + secrets.token_hex(12)
    env = {"DATABASE_URL": dsn, "INTERNAL_SECRET": internal, "JWT_SIGNING_KEY": jwt_key, "LOG_LEVEL": "debug"}
    server = start_strait(env, tmp_path, processes=1)
    tokens: list[str] = []

    async def behave(seen: dict[str, Any]) -> Any:
        token = seen["headers"]["X-Run-Token"]
        tokens.append(token)
        run = seen["headers"]["X-Run-ID"]
        async with httpx.AsyncClient(base_url=server.base, headers={"Authorization": f"Bearer {token}"}) as sdk:
            await sdk.post(f"/sdk/v1/runs/{run}/log", json={"level": "warn", "message": "from the endpoint"})
        if json.loads(seen["body"]).get("fail"):
            return web.json_response({"error": "endpoint failure"}, status=500)
        return {"ok": True}

    endpoint.behave = behave
    try:
        admin = httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {internal}"}, timeout=30)
        assert admin.post("/v1/projects", json={"id": "p1", "org_id": "o", "name": "P1"}).status_code == 201
        key = admin.post("/v1/api-keys", json={"project_id": "p1", "name": "k", "scopes": ["*"]}).json()["key"]
        c = httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        job = {"project_id": "p1", "name": "J", "slug": "j", "endpoint_url": endpoint.url, "max_attempts": 2}
        r = c.post("/v1/jobs", json=job | {"endpoint_signing_secret": signing})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        runs = [c.post(f"/v1/jobs/{job_id}/trigger", json={"payload": {"fail": f}}).json()["id"] for f in (0, 1)]
        # failures of the caller's own: wrong secrets and keys, bad bodies, a wrong run token
        wrong = key[:-1] + ("1" if key.endswith("0") else "0")  # a key that ends in 0 already would pass
        assert httpx.get(f"{server.base}/v1/runs", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
        assert httpx.get(f"{server.base}/v1/runs", headers={"X-Internal-Secret": internal + "x"}).status_code == 401
        assert c.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
        bad = c.post("/v1/jobs", json=job | {"slug": "k", "endpoint_signing_secret": 5})
        assert bad.status_code in (400, 422), bad.text

        def ended() -> bool:
            return all(c.get(f"/v1/runs/{r}").json()["status"] in TERMINAL for r in runs)

        wait_for(ended, timeout=60, what="both runs ended")
        done, failed = (c.get(f"/v1/runs/{r}").json() for r in runs)
        assert (
            done["status"] == "completed" and failed["status"] in ("failed", "dead_letter") and failed["attempt"] == 2
        )
        forged = tokens[0][:-4] + "AAAA"
        assert (
            httpx.post(
                f"{server.base}/sdk/v1/runs/{runs[0]}/heartbeat", headers={"Authorization": f"Bearer {forged}"}
            ).status_code
            == 401
        )
        admin.close()
        c.close()
    finally:
        assert stop_strait(server) == 0
    text = server.logs()
    for secret in (internal, jwt_key, signing, key, *tokens):
        assert secret not in text, "a secret is in the server log"
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
        else:  # only the start-up banner is not a log record
            assert line.startswith(("strait ", "  ")) or not line.strip(), line
    assert records and all({"timestamp", "level", "logger", "message", "pid"} <= set(r) for r in records)
    children = [r for r in records if r["logger"] == "strait_actors.actors.beacon" and r["pid"] != server.proc.pid]
    assert children, "the worker process logs JSON lines as well"
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], records


# ---- readiness ----------------------------------------------------------------------------------


def health_checks(api: Server, worker: Server, only: tuple[str, ...] = ()) -> dict[str, int]:
    """Exit codes of the container health checks run here as written: the Dockerfile's (a shell
    command) and docker-compose.yml's (exec form), each pointed at these servers' ports."""
    c, api_port, worker_port = compose(), api.env["PORT"], worker.env["PORT"]
    dockerfile = next(rest for word, rest in _instructions() if word == "HEALTHCHECK").split(" CMD ", 1)[1]
    runs = {
        "Dockerfile": (["sh", "-c", dockerfile], {"PORT": api_port}),
        "api": (healthcheck_command(c["services"]["api"]), {"PORT": api_port}),
        "worker-1": (healthcheck_command(c["services"]["worker-1"]), {"WORKER_PORT": worker_port}),
    }
    return {
        name: subprocess.run(argv, env={**os.environ, **env}, capture_output=True, timeout=30).returncode
        for name, (argv, env) in runs.items()
        if not only or name in only
    }


def _ready(server: Server, secret: str | None = SECRET) -> httpx.Response:
    headers = {"X-Internal-Secret": secret} if secret else {}
    return httpx.get(f"{server.base}/health/ready", headers=headers, timeout=10)


def test_readiness_reports_components_and_each_worker_process(dsn: str, tmp_path: Path, redis_url: str) -> None:
    """An API process and a worker process (two worker processes under it) on one database, as in
    docker-compose: the API's report lists the worker processes with their actors; the worker's own
    port is ready when both of its processes beat; a frozen one reads as stale until it beats again;
    missing migrations make the API unready."""
    port = free_port()
    with ThreadPoolExecutor(2) as pool:  # both start at once
        api_started = pool.submit(start_strait, {"DATABASE_URL": dsn, "REDIS_URL": redis_url}, tmp_path, mode="api")
        worker_env = {"DATABASE_URL": dsn, "PORT": str(port), "WORKER_PORT": str(port)}
        worker = pool.submit(start_strait, worker_env, tmp_path, mode="worker").result()
        api = api_started.result()
    try:
        assert _ready(api, None).json() == {"status": "ready"}
        assert _ready(api, "wrong-secret-0123456789").json() == {"status": "ready"}
        pids = wait_for(lambda: len(p := worker_pids(worker)) == 2 and p, what="two worker processes")

        def report() -> dict[str, Any]:
            r = _ready(api)
            assert r.status_code == 200, r.text
            return dict(r.json())

        def all_alive(expected: set[int]) -> dict[str, Any] | None:
            body = report()
            live = {p["pid"] for p in body["components"]["workers"]["processes"] if p["alive"]}
            return body if live == expected and body["components"]["workers"]["status"] == "ok" else None

        body = wait_for(lambda: all_alive(set(pids)), what="both worker processes alive")
        comp = body["components"]
        assert body["status"] == "ready" and comp["database"] == {"status": "ok"} and comp["redis"] == {"status": "ok"}
        n = len(db.migration_files())
        assert comp["migrations"] == {"status": "current", "applied": n, "packaged": n}
        for proc in comp["workers"]["processes"]:
            assert proc["actors"] == dict.fromkeys(ACTORS, "alive") and proc["worker_id"].endswith(f":{proc['pid']}")
        mine = wait_for(lambda: (r := _ready(worker)).status_code == 200 and r.json(), what="the worker port ready")
        assert mine == {"status": "ready", "processes": 2, "ready": 2}
        assert health_checks(api, worker) == {"Dockerfile": 0, "api": 0, "worker-1": 0}

        os.kill(pids[0], signal.SIGSTOP)  # frozen: its row stops being written, and goes stale
        try:

            def stale() -> bool:
                procs = {p["pid"]: p["alive"] for p in report()["components"]["workers"]["processes"]}
                return procs.get(pids[0]) is False

            wait_for(stale, what="the frozen process read as not alive")
            assert _ready(worker).json() == {"status": "not_ready", "processes": 2, "ready": 1}
            assert health_checks(api, worker, only=("worker-1",))["worker-1"] != 0
        finally:
            os.kill(pids[0], signal.SIGCONT)
        wait_for(lambda: all_alive(set(pids)), what="the process alive again")
        wait_for(lambda: _ready(worker).status_code == 200, what="the worker port ready again")

        with psycopg.connect(dsn, autocommit=True) as conn:
            last = db.migration_files()[-1].name
            conn.execute("DELETE FROM schema_migrations WHERE name = %s", (last,))
            try:
                r = _ready(api, None)
                assert (r.status_code, r.json()) == (503, {"status": "not_ready"})
                r = _ready(api)
                assert r.status_code == 503 and r.json()["status"] == "not_ready"
                assert r.json()["components"]["migrations"] == {
                    "status": "pending",
                    "applied": n - 1,
                    "packaged": n,
                    "pending": [last],
                }
                assert health_checks(api, worker) == {"Dockerfile": 1, "api": 1, "worker-1": 0}
            finally:
                conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (last,))
        assert _ready(api, None).status_code == 200
    finally:
        assert stop_strait(worker) == 0
        assert stop_strait(api) == 0
    with psycopg.connect(dsn) as conn:  # a clean stop takes its rows away
        assert conn.execute("SELECT worker_id FROM worker_heartbeats").fetchall() == []


# ---- the debug bundle ---------------------------------------------------------------------------


def test_debug_bundle_holds_a_runs_whole_story(dsn: str, tmp_path: Path, endpoint: Endpoint) -> None:
    """A run that wrote a checkpoint, an output, usage and a log, failed its first attempt and
    completed its second, of a job changed since it was enqueued: all of it in one JSON, the job
    version as enqueued, no signing secret; the lists bounded; another project's run a 404."""
    server = start_strait({"DATABASE_URL": dsn}, tmp_path, processes=1)
    signing = "bundle-signing-" + secrets.token_hex(8)

    async def behave(seen: dict[str, Any]) -> Any:
        run, token = seen["headers"]["X-Run-ID"], seen["headers"]["X-Run-Token"]
        if seen["headers"]["X-Attempt"] != "1":
            return {"done": True}
        async with httpx.AsyncClient(base_url=f"{server.base}/sdk/v1/runs/{run}", timeout=10) as sdk:
            sdk.headers["Authorization"] = f"Bearer {token}"
            for call, body in (
                ("checkpoint", {"state": {"step": 1}}),
                ("output", {"key": "summary", "value": {"n": 3}}),
                ("usage", {"provider": "acme", "model": "m1", "prompt_tokens": 5, "completion_tokens": 2}),
                ("log", {"level": "info", "message": "first try"}),
            ):
                r = await sdk.post(f"/{call}", json=body)
                assert r.status_code in (200, 201), (call, r.text)
        return web.json_response({"error": "try again"}, status=503)

    endpoint.behave = behave
    try:
        with server.client() as admin:
            for p in ("p1", "p2"):
                assert admin.post("/v1/projects", json={"id": p, "org_id": "o", "name": p.upper()}).status_code == 201
            other = admin.post("/v1/api-keys", json={"project_id": "p2", "name": "k", "scopes": ["*"]}).json()["key"]
        with server.client("p1") as c:
            job = {"project_id": "p1", "name": "Before", "slug": "b", "endpoint_url": endpoint.url, "max_attempts": 2}
            created = c.post("/v1/jobs", json=job | {"webhook_secret": signing}).json()
            job_id = created["id"]
            run = c.post(f"/v1/jobs/{job_id}/trigger", json={"payload": {"x": 1}}).json()
            assert c.patch(f"/v1/jobs/{job_id}", json={"name": "After"}).status_code == 200
            wait_for(lambda: c.get(f"/v1/runs/{run['id']}").json()["status"] == "completed", what="the run completed")
            r = c.get(f"/v1/runs/{run['id']}/debug-bundle")
            assert r.status_code == 200, r.text
            b = r.json()
            assert signing not in r.text
            assert b["run"]["id"] == run["id"] and b["run"]["status"] == "completed" and b["run"]["attempt"] == 2
            assert b["job"]["name"] == "After" and b["job"]["version"] == 2
            assert b["job_version"]["source"] == "snapshot" and b["job_version"]["version"] == 1
            assert (
                b["job_version"]["version_id"] == created["version_id"] and b["job_version"]["job"]["name"] == "Before"
            )
            assert [a["attempt"] for a in b["attempts"]] == [1, 2]
            assert b["attempts"][-1]["status"] == "completed" and "started_at" in b["attempts"][-1]
            changes = [t for a in b["attempts"] for t in a["transitions"]]
            assert changes[-1]["to"] == "completed" and {"executing", "completed"} <= {t["to"] for t in changes}
            assert "first try" in [e["message"] for e in b["events"] if e["type"] == "log"]
            assert [cp["state"] for cp in b["checkpoints"]] == [{"step": 1}]
            assert [(o["output_key"], o["value"]) for o in b["outputs"]] == [("summary", {"n": 3})]
            assert [(u["provider"], u["total_tokens"]) for u in b["usage"]] == [("acme", 7)]
            assert b["tool_calls"] == [] and b["waits"] == []
            assert b["limits"] == {"per_list": 500} and b["truncated"] == []

            with psycopg.connect(dsn, autocommit=True) as conn:  # more events than a bundle holds
                conn.execute(
                    "INSERT INTO run_events (run_id, type, message) SELECT %s, 'log', 'filler ' || i "
                    "FROM generate_series(1, 600) i",
                    (run["id"],),
                )
            b = c.get(f"/v1/runs/{run['id']}/debug-bundle").json()
            assert len(b["events"]) == 500 and b["truncated"] == ["events"]
            assert [a["attempt"] for a in b["attempts"]] == [1, 2]  # state changes are listed on their own

            stranger = httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {other}"})
            with stranger:
                for path, client in (
                    (f"/v1/runs/{uuid.uuid4()}/debug-bundle", c),
                    ("/v1/runs/not-a-run/debug-bundle", c),
                    (f"/v1/runs/{run['id']}/debug-bundle", stranger),  # another project's key
                ):
                    r = client.get(path)
                    assert r.status_code == 404 and r.json()["error"]["message"] == "run not found", (path, r.text)
        assert httpx.get(f"{server.base}/v1/runs/{run['id']}/debug-bundle").status_code == 401
    finally:
        assert stop_strait(server) == 0
