"""The wheel is whole: installed into a fresh venv, `strait --mode all` starts outside the source tree
on its embedded defaults (embedded PostgreSQL, generated secrets) and runs a job."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx

from tests.conftest import Endpoint, start_strait, stop_strait, wait_for

ROOT = Path(__file__).resolve().parents[1]


def _venv_with_wheel(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True,
    )
    wheel = next(dist.glob("strait_actors-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # the dependencies come from this environment (a .pth), the package itself only from the wheel
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    return venv


def test_wheel_starts_on_embedded_defaults(tmp_path: Path, endpoint: Endpoint) -> None:
    venv = _venv_with_wheel(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import strait_actors; print(strait_actors.__file__)"],
        cwd=outside,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(venv) in where, f"strait_actors imported from {where}, not the wheel"
    data = tmp_path / "data"
    server = start_strait(
        {"INTERNAL_SECRET": "", "JWT_SIGNING_KEY": "", "STRAIT_DATA_DIR": str(data)},
        tmp_path,
        processes=1,
        cwd=outside,
        argv=[str(venv / "bin/strait")],
    )
    try:
        secret = (data / "secrets" / "internal_secret").read_text().strip()
        assert secret in server.logs(), "a generated secret is shown in the banner"
        assert (data / "pg" / "PG_VERSION").exists(), "embedded PostgreSQL in the data dir"
        h = {"Authorization": f"Bearer {secret}", "X-Project-Id": "p"}
        with httpx.Client(base_url=server.base, headers=h, timeout=30) as c:
            assert c.post("/v1/projects", json={"id": "p", "org_id": "o", "name": "Proj"}).status_code == 201
            job = c.post(
                "/v1/jobs", json={"project_id": "p", "name": "J", "slug": "j", "endpoint_url": endpoint.url}
            ).json()
            run = c.post(f"/v1/jobs/{job['id']}/trigger", json={"payload": {"hello": "world"}}).json()
            wait_for(lambda: c.get(f"/v1/runs/{run['id']}").json()["status"] == "completed", what="completed")
        # the same program is the client: its health check answers from the installed wheel
        health = subprocess.run(
            [str(venv / "bin/strait"), "health", "--url", server.base], cwd=outside, capture_output=True, text=True
        )
        assert health.returncode == 0 and "ready" in health.stdout, health.stderr
    finally:
        assert stop_strait(server) == 0
    assert endpoint.requests[0]["body"] == b'{"hello":"world"}'


# A process that starts the embedded server (as `strait` does), says so, and stays for argv[2] seconds.
_HOLDER = (
    "import sys, time; from pathlib import Path; from strait_actors import embedded; "
    "embedded.start_postgres(Path(sys.argv[1])); print('up', flush=True); time.sleep(float(sys.argv[2]))"
)


def test_the_embedded_server_stops_with_the_last_run_even_after_one_was_killed(tmp_path: Path) -> None:
    """pgserver counts the processes holding its server and stops it when the last one exits. A
    holder killed outright (SIGKILL, a closed terminal) stays counted: the server then outlived every
    later run. The next start forgets it, so the server stops with that run."""
    pgdata = tmp_path / "pg"
    killed = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path), "120"], stdout=subprocess.PIPE, cwd=ROOT)
    assert killed.stdout is not None and killed.stdout.readline().strip() == b"up"
    killed.kill()
    killed.wait()
    killed.stdout.close()
    assert json.loads((pgdata / ".handle_pids.json").read_text()) == [killed.pid]
    assert (pgdata / "postmaster.pid").exists(), "the killed holder left the server running"
    last = subprocess.run(
        [sys.executable, "-c", _HOLDER, str(tmp_path), "0"], capture_output=True, timeout=120, cwd=ROOT
    )
    assert last.returncode == 0, last.stderr.decode()[-2000:]
    assert json.loads((pgdata / ".handle_pids.json").read_text()) == []
    wait_for(lambda: not (pgdata / "postmaster.pid").exists(), timeout=30, what="the server stopped with the last run")
