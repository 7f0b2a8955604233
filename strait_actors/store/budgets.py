"""Cost budgets (engine.md §9.1): usage rows in micro-USD, a daily cap per project, a cap per run.

The trigger path asks `check_daily` for every trigger, so what a project allows is kept until it
changes (`coherence`) and what it spent today for a second: a spend this process records is added
to its copy at once.
"""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from strait_actors.store.coherence import Cache, ConfigFeed
from strait_actors.store.sql import Row, fetch_one

TTL = 1.0


class OverBudget(Exception):
    """The project spent its daily budget."""

    def __init__(self, spent: int, cap: int) -> None:
        super().__init__(f"project daily cost budget exceeded ({spent} of {cap} micro-USD spent today)")
        self.spent = spent
        self.cap = cap


class Budgets:
    """Quota rows per project, kept until they change (`coherence`), else for a second; today's
    spend per project, for a second."""

    def __init__(self, pool: AsyncConnectionPool, feed: ConfigFeed | None = None) -> None:
        self.pool = pool
        self._quotas: Cache[str, Row | None] = Cache(feed, "project_quotas", TTL, str)
        self._spent: Cache[str, int] = Cache(None, "spend", TTL, str)  # not configuration: a TTL only

    async def quota(self, project_id: str) -> Row | None:
        return await self._quotas.get(project_id, lambda: self.get(project_id))

    async def check_daily(self, project_id: str) -> None:
        """Raises OverBudget when the project's spend today reached its daily cap."""
        quota = await self.quota(project_id)
        if quota is None or quota["max_daily_cost_microusd"] is None:
            return
        cap = int(quota["max_daily_cost_microusd"])
        spent = await self._spent.get(project_id, lambda: self._spend_today(project_id, quota["timezone"]))
        if spent >= cap:
            raise OverBudget(spent, cap)

    async def _spend_today(self, project_id: str, timezone: str) -> int:
        row = await fetch_one(self.pool, "project_spend_today", {"project_id": project_id, "timezone": timezone})
        return int(row["spent"]) if row else 0

    def spent(self, project_id: str, cost: int) -> None:
        """A spend recorded by this process counts at once (others see it within TTL)."""
        self._spent.put(project_id, lambda total: total + cost)

    async def put(self, project_id: str, values: dict[str, Any]) -> Row:
        row = await fetch_one(self.pool, "put_project_quota", {"project_id": project_id, **values})
        assert row is not None
        self._quotas.forget(project_id)
        self._spent.forget(project_id)
        return row

    async def get(self, project_id: str) -> Row | None:
        return await fetch_one(self.pool, "get_project_quota", {"project_id": project_id})
