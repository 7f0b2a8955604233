"""Pure parts: the state machine table, retry delays and classes, settings, run tokens."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import jwt
import pytest

from strait_actors import fsm, retry, tokens
from strait_actors.settings import SettingsError, ensure_secrets, load


def test_fsm_matches_the_contract() -> None:
    assert fsm.can("queued", "executing") and fsm.can("waiting", "queued")
    assert not fsm.can("completed", "queued") and not fsm.can("delayed", "executing")
    for terminal in fsm.TERMINAL - {"dead_letter"}:
        assert fsm.TRANSITIONS.get(terminal) is None
    assert fsm.sources("canceled") == sorted(
        ["delayed", "queued", "dequeued", "executing", "waiting", "replay_staged", "paused"]
    )
    assert "dead_letter" in fsm.sources("queued")


@pytest.mark.parametrize(
    ("strategy", "attempt", "delays", "expected"),
    [
        (None, 1, None, 1.0),
        (None, 4, None, 8.0),
        ("exponential", 20, None, 3600.0),
        ("linear", 3, None, 3.0),
        ("fixed", 5, None, 1.0),
        ("custom", 1, [5, 30], 5.0),
        ("custom", 7, [5, 30], 30.0),
        ("custom", 1, [], 1.0),
    ],
)
def test_base_delays(strategy: str | None, attempt: int, delays: list[int] | None, expected: float) -> None:
    assert retry.base_delay(strategy, attempt, delays) == expected


def test_jitter_stays_within_twenty_percent() -> None:
    rng = random.Random(7)
    seen = [retry.retry_delay("fixed", 1, None, rng) for _ in range(2000)]
    assert min(seen) >= 0.8 and max(seen) <= 1.2
    assert max(seen) - min(seen) > 0.3, "jitter must actually vary"


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (429, "rate_limited", True),
        (401, "auth", False),
        (403, "auth", False),
        (404, "client", False),
        (500, "server", True),
        (503, "server", True),
        (302, "unknown", True),
    ],
)
def test_status_classes(status: int, cls: str, retryable: bool) -> None:
    assert retry.classify_status(status) == cls
    assert retry.is_retryable(cls) is retryable


def test_settings_env_overrides_and_rules() -> None:
    s = load(environ={"PORT": "9001", "LOG_LEVEL": "WARN", "ALLOW_PRIVATE_ENDPOINTS": "yes"})
    assert (s.port, s.allow_private_endpoints) == (9001, True)
    for env, needle in [
        ({"INTERNAL_SECRET": "short"}, "INTERNAL_SECRET"),
        ({"JWT_SIGNING_KEY": "x" * 31}, "JWT_SIGNING_KEY"),
        ({"PORT": "abc"}, "PORT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"WORKER_CONCURRENCY": "-1"}, "WORKER_CONCURRENCY"),
        ({"API_PROCESSES": "-1"}, "API_PROCESSES"),
    ]:
        with pytest.raises(SettingsError, match=needle):
            load(environ=env)
    assert load(environ={}).api_process_count == 1, "one API process unless asked"
    assert load(environ={"API_PROCESSES": "3"}).api_process_count == 3
    assert load(environ={"API_PROCESSES": "0"}).api_process_count == max(1, (os.cpu_count() or 1) // 4)


@pytest.mark.parametrize(
    ("cpus", "all_mode", "worker_mode"),
    [(1, (1, 500), (1, 500)), (2, (1, 1000), (2, 500)), (3, (1, 1500), (3, 500)), (8, (4, 1000), (8, 500))],
)
def test_worker_processes_and_their_calls_follow_the_cpus_and_the_mode(
    monkeypatch: pytest.MonkeyPatch, cpus: int, all_mode: tuple[int, int], worker_mode: tuple[int, int]
) -> None:
    """PROCESSES 0: one worker process per CPU in `worker` mode, one per two in `all` mode; and
    WORKER_CONCURRENCY 0: 500 calls for each CPU a process has to itself, so the host's calls in
    flight are 500 a CPU either way."""
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    s = load(environ={})
    for mode, (count, calls) in (("all", all_mode), ("worker", worker_mode)):
        resolved = s.with_worker_processes(s.worker_processes(mode))
        assert (resolved.processes, resolved.worker_concurrency, resolved.calls_in_flight) == (count, calls, calls)
    more = s.with_worker_processes(2 * cpus)  # --processes beyond the CPUs: never below 500 each
    assert more.worker_concurrency == 500
    given = load(environ={"PROCESSES": "3", "WORKER_CONCURRENCY": "40"})
    assert given.worker_processes("all") == given.worker_processes("worker") == 3
    assert given.with_worker_processes(3).worker_concurrency == 40, "a WORKER_CONCURRENCY given is kept"
    assert s.calls_in_flight == 500, "a tree built from unresolved settings gets one CPU's share"


def test_config_file_and_unknown_keys(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("port = 7000\nworker_concurrency = 42\n")
    s = load(str(good), environ={"PORT": "7001"})
    assert (s.port, s.worker_concurrency) == (7001, 42)
    bad = tmp_path / "bad.toml"
    bad.write_text("prot = 1\n")
    with pytest.raises(SettingsError, match="prot"):
        load(str(bad), environ={})


def test_generated_secrets_are_kept_private_and_stable(tmp_path: Path) -> None:
    s = load(environ={"STRAIT_DATA_DIR": str(tmp_path)})
    first, found = ensure_secrets(s)
    assert found.generated == found.from_data_dir == ["INTERNAL_SECRET", "JWT_SIGNING_KEY"]
    assert len(first.internal_secret) >= 16 and len(first.jwt_signing_key) >= 32
    mode = (tmp_path / "secrets" / "internal_secret").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    second, again = ensure_secrets(s)
    assert (second.internal_secret, second.jwt_signing_key) == (first.internal_secret, first.jwt_signing_key)
    assert (again.generated, again.from_data_dir) == ([], ["INTERNAL_SECRET", "JWT_SIGNING_KEY"])


def test_kept_secrets_must_be_private_and_long_enough(tmp_path: Path) -> None:
    s = load(environ={"STRAIT_DATA_DIR": str(tmp_path)})
    ensure_secrets(s)
    key = tmp_path / "secrets" / "jwt_signing_key"
    key.chmod(0o644)
    with pytest.raises(SettingsError, match=r"JWT_SIGNING_KEY: .* is readable by others"):
        ensure_secrets(s)
    key.chmod(0o600)
    key.write_text("short")
    with pytest.raises(SettingsError, match=r"JWT_SIGNING_KEY: .* fewer than 32 characters"):
        ensure_secrets(s)


def test_the_banner_shows_only_a_secret_generated_now_and_never_the_signing_key(tmp_path: Path) -> None:
    from strait_actors.runtime import Prepared, banner

    s = load(environ={"STRAIT_DATA_DIR": str(tmp_path)})
    first, found = ensure_secrets(s)
    text = banner(Prepared(first, "dsn", None, found), "all", 1)
    assert first.internal_secret in text and first.jwt_signing_key not in text
    again, found = ensure_secrets(s)
    text = banner(Prepared(again, "dsn", None, found), "all", 1)
    assert first.internal_secret not in text and "INTERNAL_SECRET: (not shown)" in text


def test_run_token_claims_and_expiry() -> None:
    key = "k" * 32
    token = tokens.mint_run_token(key, "run-1", 2, "lease-1", expires_at=None, timeout_secs=10, now=1000)
    claims = jwt.decode(token, key, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {
        "iss": "strait:run-token",
        "sub": "run-1",
        "attempt": 2,
        "iat": 1000,
        "exp": 1070,
        "lease_id": "lease-1",
    }
    with pytest.raises(jwt.InvalidTokenError):
        tokens.decode_run_token("z" * 32, token)


def test_a_circuit_opens_after_the_threshold_half_opens_for_one_probe_and_closes_on_success() -> None:
    from strait_actors.breaker import Breakers, key
    from strait_actors.model import Outcome

    def outcome(error_class: str | None) -> Outcome:
        status = "completed" if error_class is None else "queued"
        return Outcome("r", 1, "l", status, None, error_class and "boom", error_class, 0.0, 0)

    b = Breakers(threshold=3, cooldown=10.0)
    url, p = "http://e/", "proj"
    assert not b.record(p, url, outcome("server"), now=0) and not b.record(p, url, outcome("client"), now=0)
    assert b.hold_for(p, url, now=0) == 0  # a 4xx answer reset the count
    assert [b.record(p, url, outcome("connection"), now=1) for _ in range(3)] == [False, False, True]
    assert b.hold_for(p, url, now=5) == 6.0 and b.hold_for(p, url, now=10.9) > 0
    assert b.hold_for("other-project", url, now=5) == 0  # one project's failures hold only its own runs
    assert b.hold_for(p, url, now=11) == 0  # half-open: one probe goes
    assert b.hold_for(p, url, now=11.5) == 1.0  # the others wait while it is out
    assert not b.record(p, url, outcome("transient"), now=12)  # the probe failed: open again
    assert b.hold_for(p, url, now=13) == 9.0
    assert b.hold_for(p, url, now=22) == 0 and not b.record(p, url, outcome(None), now=22)
    assert b.hold_for(p, url, now=22.1) == 0 and key(p, url) not in b.circuits  # closed
    assert Breakers(threshold=0, cooldown=10).record(p, url, outcome("server")) is False  # 0: off


def test_circuit_counts_go_to_the_shared_table_and_its_open_circuits_hold_runs() -> None:
    """What a dispatcher writes with its outcome batch and what it reads back (engine.md §3.4)."""
    import time

    from strait_actors.breaker import Breakers, CircuitDelta, key
    from strait_actors.model import Outcome

    def outcome(error_class: str | None) -> Outcome:
        return Outcome("r", 1, "l", "queued" if error_class else "completed", None, None, error_class, 0.0, 0)

    b = Breakers(threshold=5, cooldown=60.0)
    a, z = ("p", "http://a/"), ("p", "http://z/")
    b.record(*a, outcome("server"))
    b.record(*a, outcome("transient"))  # a timeout's class
    b.record(*a, outcome("connection"))
    b.record(*z, outcome(None))  # a healthy endpoint costs no row
    ka = key(*a)
    assert b.take_deltas() == [CircuitDelta(ka[0], ka[1], 3, False)] and not b.deltas
    b.record(*a, outcome(None))  # a success of an endpoint with a row: the row goes
    assert b.take_deltas() == [CircuitDelta(ka[0], ka[1], 0, True)]
    assert b.hold_for(*z) == 0 and not b.watching
    b.read([(*key(*z), time.time() + 30), (*ka, None)])  # another process opened z's circuit
    assert 29 < b.hold_for(*z) <= 30 and b.hold_for(*a) == 0 and b.hold_for("q", z[1]) == 0
    b.record(*a, outcome(None))
    assert b.take_deltas() == [CircuitDelta(ka[0], ka[1], 0, True)]  # counted elsewhere: reset it
