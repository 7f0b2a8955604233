"""Settings: embedded defaults (config/default.toml) < `--config` file < environment.

Each key's environment variable is its upper-case name (the contract's names:
DATABASE_URL, INTERNAL_SECRET, PORT, ...). A bad value stops start-up with one
line naming the key and the rule.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

LOG_LEVELS = {"debug", "info", "warn", "warning", "error"}
LOG_FORMATS = {"auto", "json", "text"}
CALLS_PER_CPU = 500  # WORKER_CONCURRENCY 0: calls in flight for each CPU a worker process has to itself


class SettingsError(Exception):
    """A setting that breaks a rule; the message is the one line shown at start-up."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of one strait process (see config/default.toml for meaning)."""

    port: int = 8080
    host: str = "0.0.0.0"
    database_url: str = ""
    redis_url: str = ""
    strait_data_dir: str = "~/.strait"
    log_level: str = "info"
    log_format: str = "auto"
    internal_secret: str = ""
    jwt_signing_key: str = ""
    allow_private_endpoints: bool = False
    endpoint_require_tls: bool = False
    worker_concurrency: int = 0
    max_dequeue_batch_size: int = 100
    processes: int = 0
    poller_interval_ms: int = 1000
    claim_coalesce_ms: int = 40
    heartbeat_interval_secs: float = 5
    stale_threshold_secs: float = 20
    reaper_interval_secs: float = 2
    scheduler_interval_secs: float = 0.5
    run_retention_short_hours: float = 720
    run_retention_long_hours: float = 2160
    event_trigger_retention_hours: float = 720
    retention_interval_secs: float = 60
    retention_batch_size: int = 5000
    priority_ageing_after_secs: float = 300
    circuit_breaker_threshold: int = 5
    circuit_breaker_cooldown_secs: float = 60
    worker_drain_timeout_secs: float = 30
    executor_http_timeout_secs: float = 300
    max_response_bytes: int = 1048576
    max_request_body_size: int = 1048576
    max_bulk_trigger_items: int = 500
    default_job_max_attempts: int = 3
    default_job_timeout_secs: int = 300
    rate_limit_requests: int = 60000
    trigger_rate_limit_requests: int = 1000000
    auth_failure_limit: int = 100
    request_timeout_secs: float = 30
    max_result_size: int = 1048576
    sse_keepalive_interval_secs: float = 15
    sse_max_conn_duration_secs: float = 1800
    db_pool_size: int = 10
    worker_port: int = 9091
    api_processes: int = 1

    @property
    def data_dir(self) -> Path:
        return Path(os.path.expanduser(self.strait_data_dir))

    def worker_processes(self, mode: str) -> int:
        """PROCESSES, or with 0: one per CPU in `worker` mode, one per two CPUs (at least one) in
        `all` mode, where the API and, on the embedded defaults, PostgreSQL use the same CPUs. Each
        process polls on its own, so more of them than the CPUs they get only split the flow into
        smaller claims (2 CPUs, `all`, single triggers: 71 runs a claim with one, 41 with two)."""
        if self.processes > 0:
            return self.processes
        cpus = os.cpu_count() or 1
        return cpus if mode == "worker" else max(1, cpus // 2)

    def with_worker_processes(self, count: int) -> Settings:
        """These settings for a host running `count` worker processes: PROCESSES set to it, and a
        WORKER_CONCURRENCY of 0 resolved to CALLS_PER_CPU for each CPU a process has to itself (at
        least one), so the host's calls in flight do not shrink with the number of processes."""
        calls = self.worker_concurrency or CALLS_PER_CPU * max(1, (os.cpu_count() or 1) // count)
        return self.replace(processes=count, worker_concurrency=calls)

    @property
    def calls_in_flight(self) -> int:
        """A worker process's cap on HTTP calls in flight (WORKER_CONCURRENCY once resolved; a
        worker tree built without `with_worker_processes`, as in tests, gets one CPU's share)."""
        return self.worker_concurrency or CALLS_PER_CPU

    @property
    def api_process_count(self) -> int:
        """API_PROCESSES, or with 0 one per four CPUs (at least one)."""
        return self.api_processes if self.api_processes > 0 else max(1, (os.cpu_count() or 1) // 4)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def default_config_text() -> str:
    """The packaged default.toml (in the wheel), else the source tree's copy."""
    packaged = resources.files("strait_actors").joinpath("_config/default.toml")
    if packaged.is_file():
        return packaged.read_text()
    return (Path(__file__).resolve().parent.parent / "config" / "default.toml").read_text()


def _coerce(name: str, raw: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off", ""}:
            return False
        raise SettingsError(f"{name.upper()}: expected true or false, got {raw!r}")
    if kind in (int, float):
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{name.upper()}: expected a number, got {raw!r}") from None
        if value < 0:
            raise SettingsError(f"{name.upper()}: must not be negative, got {raw!r}")
        return value
    return str(raw)


def load(config_file: str | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Merge defaults, the optional file and the environment; validate the result."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = tomllib.loads(default_config_text())
    if config_file:
        try:
            values.update(tomllib.loads(Path(config_file).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"--config {config_file}: {exc}") from None
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    unknown = set(values) - set(fields)
    if unknown:
        raise SettingsError(f"unknown setting(s) in config: {', '.join(sorted(unknown))}")
    for name in fields:
        if name.upper() in env:
            values[name] = env[name.upper()]
    kinds = {"int": int, "float": float, "bool": bool, "str": str}
    typed = {n: _coerce(n, v, kinds[str(fields[n].type)]) for n, v in values.items()}
    settings = Settings(**typed)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    if s.log_level.lower() not in LOG_LEVELS:
        raise SettingsError(f"LOG_LEVEL: must be one of debug|info|warn|warning|error, got {s.log_level!r}")
    if s.log_format.lower() not in LOG_FORMATS:
        raise SettingsError(f"LOG_FORMAT: must be one of auto|json|text, got {s.log_format!r}")
    if not 0 < s.port < 65536:
        raise SettingsError(f"PORT: must be between 1 and 65535, got {s.port}")
    if s.internal_secret and len(s.internal_secret) < 16:
        raise SettingsError("INTERNAL_SECRET: must be at least 16 characters")
    if s.jwt_signing_key and len(s.jwt_signing_key) < 32:
        raise SettingsError("JWT_SIGNING_KEY: must be at least 32 characters")
    if not 1 <= s.max_dequeue_batch_size <= 1000:
        raise SettingsError("MAX_DEQUEUE_BATCH_SIZE: must be between 1 and 1000")
    if not 0 <= s.claim_coalesce_ms <= 1000:
        raise SettingsError("CLAIM_COALESCE_MS: must be between 0 (off) and 1000")
    if s.stale_threshold_secs <= s.heartbeat_interval_secs:
        raise SettingsError("STALE_THRESHOLD_SECS: must be longer than HEARTBEAT_INTERVAL_SECS")
    for name in ("run_retention_short_hours", "run_retention_long_hours", "event_trigger_retention_hours"):
        if getattr(s, name) < 0:
            raise SettingsError(f"{name.upper()}: must be 0 (keep) or a number of hours")
    if not 1 <= s.retention_batch_size <= 100000:
        raise SettingsError("RETENTION_BATCH_SIZE: must be between 1 and 100000")
    if not 0 < s.scheduler_interval_secs <= 30:
        raise SettingsError("SCHEDULER_INTERVAL_SECS: must be above 0 and at most 30")


@dataclass(frozen=True)
class SecretsFound:
    """Where each secret not given by the settings came from: generated now, or kept from before."""

    generated: list[str]  # names (upper case) generated by this call: the banner may print these
    from_data_dir: list[str]  # every name taken from the data dir, generated now or earlier


_SECRET_RULES = (("internal_secret", 24, 16), ("jwt_signing_key", 48, 32))


def _generate(path: Path, size: int) -> bool:
    """Write a new secret unless one exists; True when this call's value is the one kept."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # write aside and link into place: two processes starting at once agree on one value
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(size))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def _read_secret(path: Path, name: str, min_len: int) -> str:
    mode = path.stat().st_mode
    if mode & 0o077:
        raise SettingsError(f"{name.upper()}: {path} is readable by others (mode {oct(mode & 0o777)}); chmod 600 it")
    value = path.read_text().strip()
    if len(value) < min_len:
        raise SettingsError(f"{name.upper()}: {path} holds fewer than {min_len} characters")
    return value


def ensure_secrets(s: Settings) -> tuple[Settings, SecretsFound]:
    """Fill missing secrets from the data dir, generating them once (mode 0600); a kept file that
    others can read, or that is too short, stops start-up."""
    found = SecretsFound([], [])
    changes: dict[str, str] = {}
    for name, size, min_len in _SECRET_RULES:
        if getattr(s, name):
            continue
        path = s.data_dir / "secrets" / name
        if not path.exists() and _generate(path, size):
            found.generated.append(name.upper())
        changes[name] = _read_secret(path, name, min_len)
        found.from_data_dir.append(name.upper())
    return s.replace(**changes), found
