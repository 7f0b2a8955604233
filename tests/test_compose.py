"""Static checks of docker-compose.yml and the Prometheus/Grafana provisioning it mounts (no Docker
engine here): the services, their health checks, the env names strait reads, the paths that exist.
tests/test_ops.py runs the strait services' health-check commands against real servers."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from strait_actors.settings import Settings, load

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {f.name.upper() for f in dataclasses.fields(Settings)}


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def strait_services(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from this repository (the strait image)."""
    return {name: s for name, s in c["services"].items() if s.get("build") == "."}


def healthcheck_command(service: dict[str, Any]) -> list[str]:
    """A service's health check as argv (the exec form compose runs without a shell)."""
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] == "CMD", test
    return [str(x) for x in test[1:]]


def test_services_and_their_modes() -> None:
    c = compose()
    assert {"postgres", "redis", "api", "worker-1", "worker-2", "prometheus", "grafana"} <= set(c["services"])
    modes = {name: s["command"] for name, s in strait_services(c).items()}
    assert modes == {
        "api": ["--mode", "api"],
        "worker-1": ["--mode", "worker"],
        "worker-2": ["--mode", "worker"],
    }


def test_strait_services_use_only_settings_that_exist() -> None:
    for name, s in strait_services(compose()).items():
        env = s["environment"]
        unknown = set(env) - SETTINGS
        assert not unknown, f"{name}: {sorted(unknown)} are not settings (strait_actors/settings.py)"
        assert {"DATABASE_URL", "REDIS_URL", "INTERNAL_SECRET", "JWT_SIGNING_KEY"} <= set(env), name
        assert re.search(r"@postgres:5432/", env["DATABASE_URL"]) and env["REDIS_URL"].startswith("redis://redis:")
        # the secrets every process must share are required, never defaulted or generated per container
        for secret in ("INTERNAL_SECRET", "JWT_SIGNING_KEY"):
            assert re.fullmatch(rf"\$\{{{secret}:\?[^}}]+\}}", env[secret]), (name, env[secret])
        values = {k.lower(): v for k, v in env.items() if "$" not in str(v)}
        load(environ={k.upper(): str(v) for k, v in values.items()})  # the literal values are valid


def test_every_service_has_a_health_check_and_waits_for_healthy_dependencies() -> None:
    c = compose()
    for name, s in c["services"].items():
        assert s.get("healthcheck", {}).get("test"), f"{name}: no health check"
        for dep, cond in (s.get("depends_on") or {}).items():
            assert dep in c["services"] and cond == {"condition": "service_healthy"}, (name, dep)
    defaults = load(environ={})
    for name, s in strait_services(c).items():
        argv = healthcheck_command(s)
        assert argv[0] == "python", "the image has python, not curl"
        worker = s["command"][-1] == "worker"
        port = s["environment"].get("WORKER_PORT" if worker else "PORT")
        assert int(port or (defaults.worker_port if worker else defaults.port)) == (9091 if worker else 8080)
        assert "/health/ready" in argv[-1] and ("WORKER_PORT" if worker else "'PORT'") in argv[-1], name


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> repository path of a service's bind mounts."""
    out = {}
    for v in service.get("volumes", []):
        src, target = v.split(":")[:2]
        if src.startswith("./"):
            out[target] = ROOT / src
    return out


def test_prometheus_scrapes_the_api_and_each_worker() -> None:
    c = compose()
    prom = c["services"]["prometheus"]
    mounts = _mounts(prom)
    assert all(p.exists() for p in mounts.values()), mounts
    cfg = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    targets = {t: job for job in cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    workers = [n for n, s in strait_services(c).items() if s["command"][-1] == "worker"]
    assert set(targets) == {"api:8080", *(f"{w}:9091" for w in workers)}
    secret_files = {m["target"] for m in prom["configs"]}
    for job in targets.values():
        assert job["metrics_path"] == "/metrics"
        assert job["authorization"]["credentials_file"] in secret_files, "/metrics needs the internal secret"
    assert set(c["configs"]) >= {m["source"] for m in prom["configs"]}


def test_grafana_is_provisioned_from_config() -> None:
    c = compose()
    mounts = _mounts(c["services"]["grafana"])
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == ROOT / "config/grafana/provisioning" and provisioning.is_dir()
    (ds_file,) = (provisioning / "datasources").glob("*.yml")
    (source,) = yaml.safe_load(ds_file.read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (dash_file,) = (provisioning / "dashboards").glob("*.yml")
    (provider,) = yaml.safe_load(dash_file.read_text())["providers"]
    path = provider["options"]["path"]
    assert mounts[path] == ROOT / "config/grafana/dashboards" and mounts[path].is_dir()
