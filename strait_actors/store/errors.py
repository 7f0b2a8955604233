"""The store's failures in the project's own terms: nothing outside `store/` catches psycopg errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import PoolTimeout


class StoreError(Exception):
    """A database failure, translated."""


class Unavailable(StoreError):
    """The database is unreachable, restarting or saturated: retry shortly."""


class MissingReference(StoreError):
    """A write refers to a row that does not exist (or was deleted meanwhile): a foreign key failed."""


class Duplicate(StoreError):
    """A unique key is taken."""


class Rejected(StoreError):
    """PostgreSQL refused a value of the statement (out of range, unstorable text, over a limit)."""


class RateLimited(StoreError):
    """Admission refused (engine.md §2.5): a rate limit or a project quota is reached for now."""

    def __init__(self, retry_after: int, message: str = "job rate limit exceeded") -> None:
        super().__init__(message)
        self.retry_after = retry_after


@contextmanager
def translated() -> Iterator[None]:
    """Re-raise the driver's errors as ours (usable around awaits too: it only sees exceptions)."""
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise Unavailable(str(exc)) from exc
    except psycopg.errors.ForeignKeyViolation as exc:
        raise MissingReference(exc.diag.constraint_name or str(exc)) from exc
    except psycopg.errors.UniqueViolation as exc:
        raise Duplicate(exc.diag.constraint_name or str(exc)) from exc
    except (psycopg.errors.DataError, psycopg.errors.ProgramLimitExceeded) as exc:
        raise Rejected(str(exc)) from exc
