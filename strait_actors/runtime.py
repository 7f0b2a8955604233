"""The composition root: settings -> database -> API and/or worker processes. Nothing else wires.

A worker process's actor tree is wired in one place, `actors/tree.py`, and only
`run_worker_child` imports it: `--mode api` (and the parent of worker processes) loads no actor code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from strait_actors import __version__, embedded
from strait_actors.aio import new_event_loop
from strait_actors.processes import ProcessSupervisor, worker_child_argv
from strait_actors.settings import Settings, ensure_secrets
from strait_actors.store import db

log = logging.getLogger("strait")


@dataclass
class Prepared:
    """A process ready to serve: complete settings, a migrated database."""

    settings: Settings
    dsn: str
    embedded_pg: Any
    generated: list[str]


def configure_logging(settings: Settings) -> None:
    level = settings.log_level.upper()
    level = "WARNING" if level == "WARN" else level
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if level != "DEBUG":
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
        logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs initdb's whole output at INFO


def prepare(settings: Settings) -> Prepared:
    settings, generated = ensure_secrets(settings)
    server = None
    dsn = settings.database_url
    if not dsn:
        dsn, server = embedded.start_postgres(settings.data_dir)
    elif generated:
        log.warning(
            "secrets %s were generated for data dir %s; processes on other hosts sharing this "
            "database must be given the same values",
            ", ".join(generated),
            settings.data_dir,
        )
    db.migrate(dsn)
    return Prepared(settings, dsn, server, generated)


def banner(p: Prepared, mode: str, processes: int) -> str:
    s = p.settings
    lines = [
        f"strait {__version__} --mode {mode}",
        f"  API:         http://{'127.0.0.1' if s.host in ('0.0.0.0', '') else s.host}:{s.port}"
        if mode != "worker"
        else f"  health:      port {s.worker_port}",
        f"  workers:     {processes} process(es) x {s.worker_concurrency} calls in flight"
        if mode != "api"
        else "  workers:     none in this process",
        f"  database:    {'embedded PostgreSQL in ' + str(s.data_dir / 'pg') if p.embedded_pg else 'DATABASE_URL'}",
        f"  live updates: {'Redis' if s.redis_url else 'PostgreSQL LISTEN/NOTIFY'}",
        f"  data dir:    {s.data_dir}",
    ]
    for name in p.generated:
        lines.append(f"  {name} (kept in {s.data_dir / 'secrets'}): {getattr(s, name.lower())}")
    return "\n".join(lines)


def child_env(p: Prepared) -> dict[str, str]:
    """What a worker process needs to join: the resolved database and the secrets."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=p.dsn,
        INTERNAL_SECRET=p.settings.internal_secret,
        JWT_SIGNING_KEY=p.settings.jwt_signing_key,
        STRAIT_DATA_DIR=str(p.settings.data_dir),
    )
    return env


async def _serve(app: web.Application, host: str, port: int, stop: asyncio.Event) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _stop_event(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run(mode: str, settings: Settings, processes: int | None = None) -> int:
    """`strait --mode all|api|worker`: exit 0 after a clean SIGTERM/SIGINT shutdown."""
    p = prepare(settings)
    count = processes or p.settings.worker_processes
    print(banner(p, mode, count), flush=True)
    workers = None
    if mode in ("all", "worker"):
        workers = ProcessSupervisor(
            count, worker_child_argv(), child_env(p), grace=p.settings.worker_drain_timeout_secs + 15
        )
        workers.start()
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_main(mode, p))
    finally:
        if workers is not None:
            workers.stop()
    return 0


async def _main(mode: str, p: Prepared) -> None:
    stop = _stop_event(asyncio.get_running_loop())
    if mode in ("all", "api"):
        from strait_actors.api.app import create_app

        await _serve(create_app(p.settings, p.dsn), p.settings.host, p.settings.port, stop)
    elif p.settings.worker_port:
        await _serve(_worker_app(p), p.settings.host, p.settings.worker_port, stop)
    else:
        await stop.wait()


def _worker_app(p: Prepared) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__, "mode": "worker"})

    app = web.Application()
    app.router.add_get("/health", health)
    return app


def run_worker_child(settings: Settings) -> int:
    """One worker process (spawned by the process supervisor): its own actor tree."""
    from strait_actors.actors.tree import run_worker  # here, not at the top: the API imports no actor

    return run_worker(settings, settings.database_url)
