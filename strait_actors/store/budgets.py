"""Cost budgets (engine.md §9.1): usage rows in micro-USD, a daily cap per project, a cap per run.

The trigger path asks `check_daily` for every trigger, so both what a project allows and what it
spent today are kept for a second: a project without a quota row costs one lookup a second, and a
spend this process records is added to its copy at once.
"""

from __future__ import annotations

import time
from typing import Any

from psycopg_pool import AsyncConnectionPool

from strait_actors.store.sql import Row, fetch_one

TTL = 1.0


class OverBudget(Exception):
    """The project spent its daily budget."""

    def __init__(self, spent: int, cap: int) -> None:
        super().__init__(f"project daily cost budget exceeded ({spent} of {cap} micro-USD spent today)")
        self.spent = spent
        self.cap = cap


class Budgets:
    """Quota rows and today's spend per project, for a second at a time."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self._quotas: dict[str, tuple[float, Row | None]] = {}
        self._spent: dict[str, tuple[float, int]] = {}

    async def quota(self, project_id: str) -> Row | None:
        now = time.monotonic()
        hit = self._quotas.get(project_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        row = await fetch_one(self.pool, "get_project_quota", {"project_id": project_id})
        if len(self._quotas) > 10000:
            self._quotas.clear()
        self._quotas[project_id] = (now + TTL, row)
        return row

    async def check_daily(self, project_id: str) -> None:
        """Raises OverBudget when the project's spend today reached its daily cap."""
        quota = await self.quota(project_id)
        if quota is None or quota["max_daily_cost_microusd"] is None:
            return
        cap = int(quota["max_daily_cost_microusd"])
        now = time.monotonic()
        hit = self._spent.get(project_id)
        if hit is None or hit[0] <= now:
            row = await fetch_one(
                self.pool, "project_spend_today", {"project_id": project_id, "timezone": quota["timezone"]}
            )
            if len(self._spent) > 10000:
                self._spent.clear()
            hit = (now + TTL, int(row["spent"]) if row else 0)
            self._spent[project_id] = hit
        if hit[1] >= cap:
            raise OverBudget(hit[1], cap)

    def spent(self, project_id: str, cost: int) -> None:
        """A spend recorded by this process counts at once (others see it within TTL)."""
        hit = self._spent.get(project_id)
        if hit is not None:
            self._spent[project_id] = (hit[0], hit[1] + cost)

    async def put(self, project_id: str, values: dict[str, Any]) -> Row:
        row = await fetch_one(self.pool, "put_project_quota", {"project_id": project_id, **values})
        assert row is not None
        self._quotas.pop(project_id, None)
        self._spent.pop(project_id, None)
        return row

    async def get(self, project_id: str) -> Row | None:
        return await fetch_one(self.pool, "get_project_quota", {"project_id": project_id})
