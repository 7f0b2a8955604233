"""The tree reads like the architecture: `--mode api` and the process supervisor import no actor code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def loaded_after_import(*modules: str) -> list[str]:
    """The `strait_actors` modules a fresh interpreter holds after importing `modules`."""
    code = (
        "import importlib, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(m for m in sys.modules if m.split('.')[0] == 'strait_actors'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def actor_modules(loaded: list[str]) -> list[str]:
    return [m for m in loaded if m == "strait_actors.actors" or m.startswith("strait_actors.actors.")]


def test_api_cli_and_process_supervisor_import_no_actor_code() -> None:
    entry = ["strait_actors.runtime", "strait_actors.api.app", "strait_actors.processes", "strait_actors.cli"]
    loaded = loaded_after_import(*entry)
    assert set(entry) <= set(loaded)
    assert actor_modules(loaded) == []


def test_the_worker_tree_is_what_loads_the_actors() -> None:
    """The check above can fail: the tree module does bring every actor in."""
    loaded = actor_modules(loaded_after_import("strait_actors.actors.tree"))
    for role in ("supervisor", "clock", "dispatcher", "poller", "reaper", "loop"):
        assert f"strait_actors.actors.{role}" in loaded
