"""The `strait` CLI client against a real `strait --mode all`: the end-to-end flow as subprocesses
(login, a job from YAML, trigger --wait, watch, cancel, replay, the DLQ, stats, health), JSON
output that is the server's, and every bad input answered with one line and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from strait_actors import cli
from strait_actors.client import commands
from tests.client_helpers import Gate
from tests.conftest import SECRET, Endpoint, Server, free_port, wait_for

TERMINAL = {"completed", "failed", "timed_out", "crashed", "system_failed", "canceled", "expired", "dead_letter"}


def clean_env(config: Path) -> dict[str, str]:
    """The test's environment without any STRAIT_* variable, with the config file in tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRAIT_") and k != "INTERNAL_SECRET"}
    env["STRAIT_CONFIG"] = str(config)
    return env


class Cli:
    """`python -m strait_actors.cli …` as a subprocess in a clean environment; `.here(…)` is the
    same command through `main()` in this process (no interpreter start: most checks use it)."""

    def __init__(self, config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self.env = clean_env(config)
        self.capsys = capsys
        for name in [n for n in os.environ if n not in self.env]:  # STRAIT_* and INTERNAL_SECRET
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("STRAIT_CONFIG", str(config))

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "strait_actors.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def here(self, *args: str) -> subprocess.CompletedProcess[str]:
        self.capsys.readouterr()
        code = cli.main(list(args))
        out, err = self.capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    def ok(self, *args: str, here: bool = True) -> str:
        done = self.here(*args) if here else self(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def json(self, *args: str, here: bool = True) -> Any:
        return json.loads(self.ok(*args, "-o", "json", here=here))

    def popen(self, *args: str) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "strait_actors.cli", *args]
        return subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_line_error(done: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """A bad input's answer: the exit code, nothing on stdout, one `strait: …` line on stderr."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("strait: "), done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def behave_by_mode(server: Server, gates: dict[str, Gate]) -> Any:
    """The endpoint's answer per payload mode: ok, a 500, an SDK fail, or held on a gate."""

    async def behave(seen: dict[str, Any]) -> Any:
        payload = json.loads(seen["body"] or b"{}")
        mode = payload.get("mode", "ok") if isinstance(payload, dict) else "ok"
        if mode == "http500":
            return web.json_response({"no": True}, status=500)
        if mode == "fail":
            run_id, token = seen["headers"]["X-Run-ID"], seen["headers"]["X-Run-Token"]
            async with httpx.AsyncClient(base_url=server.base, timeout=10) as rc:
                r = await rc.post(
                    f"/sdk/v1/runs/{run_id}/fail", json={"error": "nope"}, headers={"Authorization": f"Bearer {token}"}
                )
                assert r.status_code == 200, r.text
            return {"ignored": True}
        if mode in gates:
            await gates[mode].wait()
        return {"echo": payload}

    return behave


def newest_run(admin: httpx.Client) -> Any:
    """What the server says of the newest run (in an assertion's message)."""
    run = admin.get("/v1/runs", params={"limit": 1}).json()["data"][0]
    return {k: run.get(k) for k in ("id", "status", "attempt", "error", "finished_at")}


def read_lines(proc: subprocess.Popen[str], into: list[str]) -> threading.Thread:
    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            into.append(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def test_end_to_end_flow_through_the_cli(
    request: pytest.FixtureRequest,
    strait: Server,
    endpoint: Endpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The flow as a user runs it, each step a `strait` process; the checks of what lists and
    gets print run in process (the same main())."""
    gates = {"hold": Gate(), "hold2": Gate()}
    endpoint.behave = behave_by_mode(strait, gates)
    config = tmp_path / "home" / "strait" / "config.toml"
    run = Cli(config, monkeypatch, capsys)
    admin = strait.client("p1")
    request.addfinalizer(admin.close)  # closed however the test ends
    as_admin = ("--url", strait.base, "--api-key", SECRET)

    # bootstrap with the internal secret given as flags, then log in with the new key
    assert run.json("projects", "create", "p1", "--org", "o1", "--name", "P1", *as_admin)["id"] == "p1"
    key = run.json("keys", "create", "--name", "ci", "--project", "p1", *as_admin)["key"]
    assert key.startswith("strait_")
    login = run.ok("login", "--url", strait.base, "--api-key", key, "--project", "p1", here=False)
    assert "logged in" in login
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert key in config.read_text()
    # from here on the config file alone says where and who (the environment has no STRAIT_*)

    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        f"name: Echo\nslug: echo\nendpoint_url: {endpoint.url}\nmax_attempts: 1\ntimeout_secs: 10\ntags:\n  team: ops\n"
    )
    job = run.json("jobs", "create", "-f", str(job_file), here=False)
    assert (job["project_id"], job["slug"], job["max_attempts"], job["tags"]) == ("p1", "echo", 1, {"team": "ops"})
    assert run.json("jobs", "get", job["id"]) == admin.get(f"/v1/jobs/{job['id']}").json()
    listed = run.json("jobs", "list")
    assert [j["id"] for j in listed["data"]] == [job["id"]] and listed["has_more"] is False
    assert "echo" in run.ok("jobs", "list")  # the table

    # trigger --wait: 0 when the run completes, non-zero when it dead-letters
    done = run("jobs", "trigger", job["id"], "--payload", '{"x": 1}', "--wait", "--timeout", "40")
    assert done.returncode == 0, (done.stderr, newest_run(admin), len(endpoint.requests))
    assert "completed" in done.stdout
    assert json.loads(endpoint.requests[-1]["body"]) == {"x": 1}
    done = run(
        "jobs", "trigger", job["id"], "--payload", '{"mode": "http500"}', "--wait", "--timeout", "40", "-o", "json"
    )
    assert done.returncode == 1 and done.stdout, (done.stderr, newest_run(admin), len(endpoint.requests))
    dead = json.loads(done.stdout)
    assert (dead["status"], dead["error"]) == ("dead_letter", "endpoint returned 500")

    # the dead-letter queue: listed, replayed (same id, attempt 1), dead again
    assert [r["id"] for r in run.json("dlq", "list")["data"]] == [dead["id"]]
    replayed = run.json("dlq", "replay", dead["id"], here=False)
    assert (replayed["id"], replayed["status"], replayed["attempt"]) == (dead["id"], "queued", 1)
    wait_for(lambda: admin.get(f"/v1/runs/{dead['id']}").json()["status"] == "dead_letter", what="dead again")

    # watch: live lines while the run moves, the exit code of its end
    held = run.json("jobs", "trigger", job["id"], "--payload", '{"mode": "hold"}')["id"]
    wait_for(lambda: gates["hold"].bound, what="the held run executing")
    lines: list[str] = []
    with run.popen("runs", "watch", held) as watcher:
        pump = read_lines(watcher, lines)
        wait_for(lambda: any("-> executing" in line for line in lines), what="watch shows executing")
        assert watcher.poll() is None, "watch ended before the run did"
        gates["hold"].open()
        assert watcher.wait(40) == 0, watcher.stderr.read() if watcher.stderr else ""
        pump.join(5)
    assert any("executing -> completed" in line for line in lines), lines
    assert any(f"run {held} completed" in line for line in lines), lines
    frames = [json.loads(x) for x in run.ok("runs", "watch", held, "-o", "json").splitlines()]
    assert frames[-1]["type"] == "status_change" and frames[-1]["to"] == "completed"
    assert all(f["run_id"] == held for f in frames)

    # cancel a run in flight; replay a failed one
    held2 = run.json("jobs", "trigger", job["id"], "--payload", '{"mode": "hold2"}')["id"]
    wait_for(lambda: gates["hold2"].bound, what="the second held run executing")
    canceled = run.json("runs", "cancel", held2, here=False)
    assert (canceled["id"], canceled["status"]) == (held2, "canceled")
    gates["hold2"].open()
    done = run("jobs", "trigger", job["id"], "--payload", '{"mode": "fail"}', "--wait", "--timeout", "40", "-o", "json")
    failed = json.loads(done.stdout)
    assert (done.returncode, failed["status"], failed["error"]) == (1, "failed", "nope")
    again = run.json("runs", "replay", failed["id"], here=False)
    assert again["id"] != failed["id"] and again["status"] == "queued" and again["payload"] == {"mode": "fail"}

    # lists agree with the server; stats count what the lists hold
    wait_for(lambda: admin.get(f"/v1/runs/{again['id']}").json()["status"] in TERMINAL, what="replayed run ends")
    runs = run.json("runs", "list", "--limit", "100")
    assert runs == admin.get("/v1/runs", params={"limit": 100}).json()
    by_status: dict[str, int] = {}
    for r in runs["data"]:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    stats = run.json("stats")
    assert {k: v for k, v in stats["runs_by_status"].items() if v} == by_status
    assert by_status == {"completed": 2, "dead_letter": 1, "canceled": 1, "failed": 2}
    assert (stats["jobs"], stats["waiting_event_triggers"], stats["at_least"]) == (1, 0, [])
    table = run.ok("stats")
    assert "dead_letter" in table and "jobs: 1" in table
    assert run.json("events", "list") == {"data": [], "has_more": False}

    # the server's refusals: its envelope's message, on one line (the config file still in use)
    one_line_error(run("jobs", "get", "no-such-job"), 3, "error 404: job not found")
    one_line_error(run.here("runs", "get", "nope"), 3, "error 404: run not found")
    one_line_error(run.here("runs", "cancel", held2), 3, "error 400: run already in terminal state")
    one_line_error(run.here("dlq", "replay", held), 3, "error 409: run is not in dead_letter status")
    one_line_error(run.here("projects", "list", "--org", "o1"), 3, "error 403")
    one_line_error(run.here("runs", "list", "--api-key", "strait_" + "0" * 64), 3, "error 401: invalid api key")
    partial = tmp_path / "partial.yaml"
    partial.write_text("name: x\n")
    one_line_error(run.here("jobs", "create", "-f", str(partial)), 3, "error 422", "slug: failed on 'required'")
    # login with a wrong credential keeps the file as it was
    before = config.read_text()
    one_line_error(run.here("login", "--url", strait.base, "--api-key", "strait_" + "1" * 64), 3, "refused")
    assert config.read_text() == before

    # health: 0 when ready, 1 when nothing answers
    assert run.json("health", "--url", strait.base, here=False) == {"status": "ready"}
    one_line_error(run.here("health", "--url", f"http://127.0.0.1:{free_port()}"), 1, "not ready", "cannot reach")


def test_bad_input_gets_one_line_and_a_non_zero_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Input the CLI refuses before any answer from a server (the server's refusals are checked in
    the flow above). A few cases as processes (no traceback can hide there), the rest in process."""
    run = Cli(tmp_path / "cfg" / "config.toml", monkeypatch, capsys)
    dead_url = f"http://127.0.0.1:{free_port()}"
    auth = ("--url", dead_url, "--api-key", "k")

    one_line_error(run("jobs", "list"), 2, "no server", "strait login")
    one_line_error(run("jobs", "list", *auth), 3, "cannot reach", "refused")
    one_line_error(run("jobs", "list", "--bogus"), 2, "unrecognized arguments: --bogus")

    one_line_error(run.here("jobs", "list"), 2, "no server", "strait login")
    one_line_error(run.here("jobs", "list", "--url", dead_url), 2, "no credentials")
    one_line_error(run.here("jobs", "list", *auth), 3, "cannot reach")
    one_line_error(run.here("jobs", "lst"), 2, "invalid choice: 'lst'")
    one_line_error(run.here("jbos", "list"), 2, "unknown command 'jbos'")
    one_line_error(run.here("runs", "list", "--status", "nope", *auth), 2, "invalid choice: 'nope'")
    one_line_error(run.here("jobs", "trigger", "x", "--payload", "{nope", *auth), 2, "--payload is not valid JSON")
    one_line_error(run.here("jobs", "trigger", "x", "--timeout", "5", *auth), 2, "--timeout needs --wait")
    one_line_error(run.here("dlq", "replay", *auth), 2, "one of the arguments id --all is required")
    one_line_error(run.here("jobs", "list", "--url", "localhost:8080", "--api-key", "k"), 2, "server URL")
    # bad files: a job file, the config file
    partial = tmp_path / "partial.yaml"
    partial.write_text("name: x\n")
    one_line_error(run.here("jobs", "create", "-f", str(partial), *auth), 2, "no project")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: [unclosed\n")
    one_line_error(run.here("jobs", "create", "-f", str(bad_yaml), *auth), 2, "not valid YAML")
    one_line_error(run.here("jobs", "create", "-f", str(tmp_path / "missing.yaml"), *auth), 2, "cannot read")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    one_line_error(run.here("jobs", "create", "-f", str(listing), *auth), 2, "must hold one job")
    config = tmp_path / "cfg" / "config.toml"
    config.parent.mkdir()
    config.write_text("url = 'http://x\n")
    one_line_error(run.here("jobs", "list"), 2, "not valid TOML")


def test_credentials_come_from_flag_then_environment_then_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In process: each source names a different dead port, so the error says which one was used."""
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    config = tmp_path / "config.toml"
    Cli(config, monkeypatch, capsys)  # the environment: no STRAIT_* but STRAIT_CONFIG
    # login --no-verify writes the file without asking anyone
    assert cli.main(["login", "--url", f"http://127.0.0.1:{file_port}", "--api-key", "k1", "--no-verify"]) == 0
    assert stat.S_IMODE(config.stat().st_mode) == 0o600

    def used() -> str:
        assert cli.main(["jobs", "list", *flag]) == 3
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        return err

    flag: list[str] = []
    assert f"127.0.0.1:{file_port}" in used()
    monkeypatch.setenv("STRAIT_BASE_URL", f"http://127.0.0.1:{env_port}")
    assert f"127.0.0.1:{env_port}" in used()
    flag = ["--url", f"http://127.0.0.1:{flag_port}"]
    assert f"127.0.0.1:{flag_port}" in used()


def test_the_router_knows_every_client_command() -> None:
    """cli.py routes by name without importing the client: its list must be the parser's."""
    sub = next(a for a in commands.build()._actions if isinstance(a, argparse._SubParsersAction))
    assert tuple(sub.choices) == cli.CLIENT_COMMANDS
    assert cli.command_word(["--url", "jobs", "runs", "list"]) == "runs"
    assert cli.command_word(["--mode", "all", "--processes", "2"]) is None
    assert cli.command_word(["--api-processes", "2", "migrate"]) == "migrate"
    assert cli.command_word(["--config", "x.toml", "migrate"]) == "migrate"
