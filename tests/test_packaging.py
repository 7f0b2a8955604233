"""Static checks of what ships: the Dockerfile (no Docker engine here) and the sdist/wheel contents."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from strait_actors.settings import load

ROOT = Path(__file__).resolve().parents[1]


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_copies_what_exists_and_runs_strait() -> None:
    steps = _instructions()
    known = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "VOLUME", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"}
    assert {w for w, _ in steps} <= known
    assert steps[0][0] == "FROM"
    py = re.search(r"python:(\d+\.\d+)", steps[0][1])
    assert py, "a python base image"
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert tuple(map(int, py.group(1).split("."))) >= tuple(map(int, required.lstrip(">=").split(".")))
    for word, rest in steps:
        if word == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    assert ("ENTRYPOINT", '["strait"]') in steps
    assert ("CMD", '["--mode", "all"]') in steps
    user = [rest for word, rest in steps if word == "USER"]
    assert user and user[-1] != "root", "the embedded PostgreSQL refuses to run as root"
    exposed = [rest for word, rest in steps if word == "EXPOSE"]
    assert exposed == [str(load(environ={}).port)]
    health = next(rest for word, rest in steps if word == "HEALTHCHECK")
    assert "/health" in health


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored


def test_wheel_config_ships_migrations_and_defaults() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    forced = cfg["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert forced == {
        "migrations": "strait_actors/_migrations",
        "config/default.toml": "strait_actors/_config/default.toml",
    }
    assert list((ROOT / "migrations").glob("*.sql"))
    assert cfg["project"]["scripts"]["strait"] == "strait_actors.cli:main"
