"""Faults under load, judged by the database and the endpoint's record of deliveries.

Each test starts a PostgreSQL of its own (never the session's, which other tests share) and breaks
it, or an API process, or Redis, while triggers keep coming. The scenarios live in
tests/chaos_scenarios.py; scripts/chaos.py runs the same ones at a larger scale. A worker killed -9
is tests/test_processes.py's `test_with_the_default_lease_a_killed_workers_runs_are_done_within_30_s`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import chaos_scenarios as scenarios
from tests.chaos_rig import Ledger, PrivatePostgres, PrivateRedis
from tests.conftest import Endpoint


@pytest.fixture
def private_pg(tmp_path: Path) -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres(tmp_path / "private-pg")
    yield pg
    pg.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path / "private-redis")
    yield redis
    redis.close()


def _holds(ledger: Ledger) -> None:
    print(ledger.render())  # shown with -s, and in the report of a failure
    assert not ledger.problems, ledger.render()


def test_api_killed_mid_triggers_makes_one_run_per_key(
    private_pg: PrivatePostgres, endpoint: Endpoint, tmp_path: Path
) -> None:
    """2,000 keyed triggers, the API process killed -9 half-way and restarted, every failed request
    retried until a 2xx: one run per key, each completed and delivered once."""
    _holds(scenarios.api_kill(private_pg, endpoint, tmp_path, runs=2000, kills=1))


@pytest.mark.timeout(240)
def test_postgres_restart_under_load_loses_and_doubles_nothing(
    private_pg: PrivatePostgres, endpoint: Endpoint, tmp_path: Path
) -> None:
    """1,000 runs in flight and triggers still coming when PostgreSQL stops (fast) for 3 s: only 503s
    with Retry-After while it is down, every acknowledged run completes once, throughput is back
    within 10 s of its return."""
    _holds(scenarios.pg_restart(private_pg, endpoint, tmp_path, in_flight=1000, outage=3.0, between=10.0))


@pytest.mark.timeout(240)
def test_postgres_frozen_15_s_hangs_nothing(private_pg: PrivatePostgres, endpoint: Endpoint, tmp_path: Path) -> None:
    """Every PostgreSQL process stopped (SIGSTOP) for 15 s: /health answers within ~1 s throughout,
    every API request ends within REQUEST_TIMEOUT (5 s here) but a trigger whose INSERT was in
    flight (answered with the commit's decision after the thaw), and after SIGCONT every run
    completes."""
    _holds(scenarios.pg_freeze(private_pg, endpoint, tmp_path, freeze=15.0, request_timeout=5.0))


@pytest.mark.timeout(240)
def test_redis_down_30_s_the_limiter_fails_open(
    private_pg: PrivatePostgres, private_redis: PrivateRedis, endpoint: Endpoint, tmp_path: Path
) -> None:
    """Redis down for 30 s: triggers keep being acknowledged and completed, the rate limiter lets a
    caller over its limit through while Redis is down and refuses it again once Redis is back."""
    _holds(scenarios.redis_outage(private_pg, private_redis, endpoint, tmp_path, outage=30.0))
