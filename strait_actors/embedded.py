"""Embedded services for the zero-setup start: PostgreSQL from the `pgserver` wheel."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from strait_actors.processes import pid_alive


def _quiet_runtime_dir(data_dir: Path) -> None:
    # pgserver asks platformdirs for a runtime dir at import; give it one so that root without
    # XDG_RUNTIME_DIR gets no RuntimeDirWarning and no shared /tmp path
    if not os.environ.get("XDG_RUNTIME_DIR"):
        run = data_dir / "run"
        run.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(run)


def start_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start (or join) the embedded PostgreSQL in `data_dir/pg`; returns (dsn, server handle).

    The server stops when the last process holding a handle exits.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    _quiet_runtime_dir(data_dir)
    import pgserver  # heavy import, only when embedded PostgreSQL is used

    _forget_dead_holders(data_dir / "pg")
    server = pgserver.get_server(data_dir / "pg", cleanup_mode="stop")  # type: ignore[attr-defined]
    return server.get_uri(), server


def _forget_dead_holders(pgdata: Path) -> None:
    """pgserver stops its server when the last process holding a handle exits, and counts the
    holders by pid in `.handle_pids.json`. A holder that never ran its exit handlers (SIGKILL, a
    closed terminal's SIGHUP) stays listed for good, and the server then outlives every later run.
    Holders that are no longer alive are dropped here, under pgserver's own lock."""
    from pgserver.postgres_server import PostgresServer
    from pgserver.utils import DiskList

    with PostgresServer._lock:
        holders = DiskList(pgdata / ".handle_pids.json")
        pids = holders.get()
        alive = [p for p in pids if isinstance(p, int) and pid_alive(p)]
        if alive != pids:
            holders.put(alive)
