"""Embedded services for the zero-setup start: PostgreSQL from the `pgserver` wheel."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


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

    server = pgserver.get_server(data_dir / "pg", cleanup_mode="stop")  # type: ignore[attr-defined]
    return server.get_uri(), server
