"""The transition seam: the one mechanism by which a run's status changes.

A status-writing statement in `queries.sql` declares each of its transitions in a header line

    -- transition NAME: FROM [FROM ...] -> TO [TO ...]      (FROM may be `*`: every legal source)

and writes the transition as a CTE called NAME, an `UPDATE job_runs r SET status = <expr>, ...`
whose RETURNING names at least `id, from_status, to_status, attempt` (and optionally `error`,
`actor`, `note`). Macros in the statement are expanded here from `fsm.TRANSITIONS`:

- `{guard NAME}`: the compare-and-set, `(r.status = ANY(<sources>)) IS TRUE`, plus a check of a per-row target
  against the declared targets. The statement adds its fence (attempt, lease) beside it.
- `{unlease}`: clears the lease; required when a transition leaves `executing`.
- `{after NAME}`: every consequence of the change, in the same statement: today the
  `state_change` run event; the outbox, workflow callbacks, change feed and parent resume attach
  here and nowhere else. A consequence that needs more of the run than NAME returns joins
  `job_runs` by id: the statement's snapshot holds the columns a transition does not change
  (job, project, parent run, workflow step).
- `{wake NAME}`: a CTE `NAME_wake` that NOTIFYs the pollers when runs became claimable; the final
  SELECT must read it (a SELECT CTE runs only when read).
- `{terminal}`: the terminal statuses as a text[] literal.

Every declared edge must be legal in `fsm.TRANSITIONS`, checked when the queries load, so an
illegal or undeclared status write fails every test run rather than a production run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from strait_actors import fsm

_HEADER = re.compile(r"^-- transition (\w+): ([\w* ]+?) -> ([\w ]+?)\s*$", re.M)
_MACRO = re.compile(r"\{(guard|after|wake) (\w+)\}|\{(unlease|terminal)\}")
_SET_STATUS = re.compile(r"UPDATE job_runs r\s+SET status = ([\w.']+)(?=\s*,|\s+FROM\b)")
_REQUIRED = ("id", "from_status", "to_status", "attempt")
_OPTIONAL = ("error", "actor", "note")
_WARN = sorted((fsm.TERMINAL - {fsm.S.COMPLETED, fsm.S.CANCELED}) | {fsm.S.WAITING})

UNLEASE = "lease_id = NULL, lease_expires_at = NULL, worker_id = NULL"


class TransitionError(ValueError):
    """A statement that would write a status outside the seam or against the state machine."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One declared transition of a statement: the CTE that writes it and its legal edges."""

    name: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    to_expr: str  # what `SET status =` writes: a literal target or a per-row column
    outputs: tuple[str, ...]  # the names the CTE's RETURNING gives

    def edges(self) -> set[tuple[str, str]]:
        return {(f, t) for f in self.sources for t in self.targets}


def _array(statuses: tuple[str, ...] | list[str]) -> str:
    return "'{" + ",".join(sorted(statuses)) + "}'::text[]"


def _statuses(words: str) -> list[str]:
    out = words.split()
    for s in out:
        if s not in fsm.ALL:
            raise TransitionError(f"unknown status {s!r}")
    return out


def _cte(statement: str, name: str) -> str:
    """The text of CTE `name` (from `name AS (` to its matching parenthesis)."""
    m = re.search(rf"\b{name} AS \(", statement)
    if m is None:
        raise TransitionError(f"no CTE named {name!r}")
    depth, i = 1, m.end()
    while depth:
        if i >= len(statement):
            raise TransitionError(f"CTE {name!r} is not closed")
        depth += {"(": 1, ")": -1}.get(statement[i], 0)
        i += 1
    return statement[m.end() : i - 1]


def _split_top(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _output_names(cte: str) -> tuple[str, ...]:
    _, sep, returning = cte.rpartition("RETURNING")
    if not sep:
        raise TransitionError("a transition CTE must end in RETURNING")
    return tuple(re.split(r"\s+AS\s+|\.", item)[-1].strip() for item in _split_top(returning))


def _declare(statement: str, name: str, froms: str, tos: str) -> Transition:
    targets = tuple(_statuses(tos))
    if froms.strip() == "*":
        sources = tuple(sorted({f for t in targets for f in fsm.sources(t)}))
    else:
        sources = tuple(_statuses(froms))
    t = Transition(name, sources, targets, "", ())
    illegal = sorted(e for e in t.edges() if not fsm.can(*e))
    if illegal:
        raise TransitionError(f"transition {name}: not in fsm.TRANSITIONS: {illegal}")
    cte = _cte(statement, name)
    m = _SET_STATUS.search(cte)
    if m is None:
        raise TransitionError(f"transition {name} must be `UPDATE job_runs r SET status = <expr>, ...`")
    to_expr = m.group(1)
    if to_expr.startswith("'") and (len(targets) != 1 or to_expr != f"'{targets[0]}'"):
        raise TransitionError(f"transition {name} writes {to_expr}, not its declared target")
    outputs = _output_names(cte)
    given = set(outputs) | ({"id", "attempt"} if "*" in outputs else set())  # r.*: the run's own columns
    missing = [c for c in _REQUIRED if c not in given]
    if missing:
        raise TransitionError(f"transition {name}: RETURNING lacks {missing}")
    if fsm.S.EXECUTING in sources and "{unlease}" not in cte:
        raise TransitionError(f"transition {name} leaves executing: it must clear the lease with {{unlease}}")
    return Transition(name, sources, targets, to_expr, outputs)


def declared(statement: str) -> list[Transition]:
    """The transitions a statement declares, each checked against the state machine."""
    return [_declare(statement, *m.groups()) for m in _HEADER.finditer(statement)]


def _guard(t: Transition) -> str:
    # IS TRUE (status is NOT NULL: same meaning) stops the planner from reading the guard as the
    # predicate of a partial status index: every transition finds its rows by id, and statistics
    # lagging a busy table would have it walk every executing run for each row instead (27 ms for
    # 50 outcomes among 550 in flight, against 0.4 ms by primary key)
    guard = f"(r.status = ANY({_array(t.sources)})) IS TRUE"
    if not t.to_expr.startswith("'"):
        guard += f" AND {t.to_expr} = ANY({_array(t.targets)})"
    return guard


def _after(t: Transition) -> str:
    """The consequences of a state change, written with it; the one place a new one attaches."""
    extra = [
        f"CASE WHEN {c} IS NULL THEN '{{}}'::jsonb ELSE jsonb_build_object('{c}', {c}) END"
        for c in ("error", "actor")
        if c in t.outputs
    ]
    note = " || COALESCE(' (' || note || ')', '')" if "note" in t.outputs else ""
    data = " || ".join(["jsonb_build_object('from', from_status, 'to', to_status, 'attempt', attempt)", *extra])
    return (
        f", {t.name}_events AS (\n"
        "    INSERT INTO run_events (run_id, type, level, message, data)\n"
        f"    SELECT id, 'state_change',\n"
        f"           CASE WHEN to_status = ANY({_array(_WARN)})"
        f" OR (from_status = 'executing' AND to_status = 'queued') THEN 'warn' ELSE 'info' END,\n"
        f"           from_status || ' -> ' || to_status{note},\n"
        f"           {data}\n"
        f"    FROM {t.name}\n"
        ")"
    )


def _wake(t: Transition) -> str:
    return (
        f", {t.name}_wake AS (\n"
        f"    SELECT pg_notify('strait_queue_wake', '') FROM (SELECT 1 FROM {t.name} "
        f"WHERE to_status = 'queued' LIMIT 1) w\n"
        ")"
    )


def expand(name: str, statement: str) -> str:
    """The statement with its macros expanded; raises TransitionError for anything off the seam."""
    by_name = {t.name: t for t in declared(statement)}

    def one(m: re.Match[str]) -> str:
        macro, target, bare = m.groups()
        if bare == "unlease":
            return UNLEASE
        if bare == "terminal":
            return _array(sorted(fsm.TERMINAL))
        t = by_name.get(target)
        if t is None:
            raise TransitionError(f"{name}: {{{macro} {target}}} names no declared transition")
        return {"guard": _guard, "after": _after, "wake": _wake}[macro](t)

    for t in by_name.values():
        cte = _cte(statement, t.name)
        if f"{{guard {t.name}}}" not in cte:
            raise TransitionError(f"{name}: transition {t.name} has no {{guard {t.name}}}")
        if f"{{after {t.name}}}" not in statement:
            raise TransitionError(f"{name}: transition {t.name} has no {{after {t.name}}}")
        if f"{{wake {t.name}}}" in statement and f"{t.name}_wake" not in statement.replace(f"{{wake {t.name}}}", ""):
            raise TransitionError(f"{name}: {t.name}_wake is never read, so it would never NOTIFY")
    return _MACRO.sub(one, statement)
