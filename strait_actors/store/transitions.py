"""The transition seam: the one mechanism by which a run's status changes.

A status-writing statement in `queries.sql` declares each of its transitions in a header line

    -- transition NAME: FROM [FROM ...] -> TO [TO ...]      (FROM may be `*`: every legal source)

and writes the transition as a CTE called NAME, an `UPDATE job_runs r SET status = <expr>, ...`
whose RETURNING names at least `id, from_status, to_status, attempt` (and optionally `error`,
`actor`, `note`). Macros in the statement are expanded here from `fsm.TRANSITIONS`:

- `{guard NAME}`: the compare-and-set, `(r.status = ANY(<sources>)) IS TRUE`, plus a check of a per-row target
  against the declared targets. The statement adds its fence (attempt, lease) beside it.
- `{unlease}`: clears the lease; required when a transition leaves `executing`.
- `{after NAME}`: every consequence of the change, in the same statement: the `state_change` run
  event; a run leaving `waiting` other than by resuming closes its open waits (engine.md §6); a
  run that ends answers its parent's spawn-await, and the last awaited child resumes the parent
  (a counter on the parent row, so concurrent children serialise on it: counting siblings from a
  snapshot would let two last children each see the other still running). The outbox, workflow
  callbacks and change feed attach here and nowhere else. A transition into a terminal status
  returns `parent_run_id`, so runs without a parent cost the spawn-await part nothing, and `job_id`:
  it releases the waiting runs of jobs that depend on its job (engine.md §2.8). A run
  leaving `executing` gives back its concurrency slots (it returns `job_id, slots`) and a queued
  run leaving the queue while a full gate held it back leaves that gate's count (`job_id, held`);
  a gate with a slot free and runs held wakes the pollers. Every transition written (the seam's own
  resumes and releases too) adds to `run_transition_tally`, for /metrics (migration 0014).
- `{wake NAME}`: a CTE `NAME_wake` that NOTIFYs the pollers when runs became claimable; the final
  SELECT must read it (a SELECT CTE runs only when read).
- `{terminal}`: the terminal statuses as a text[] literal.
- `{tell_watchers CTE}`: (for statements that write run events outside a transition) NOTIFY the
  API processes streaming the runs of CTE (its `id` column), as every transition does.

Every declared edge must be legal in `fsm.TRANSITIONS`, checked when the queries load, so an
illegal or undeclared status write fails every test run rather than a production run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from strait_actors import fsm

_HEADER = re.compile(r"^-- transition (\w+): ([\w* ]+?) -> ([\w ]+?)\s*$", re.M)
_MACRO = re.compile(r"\{(guard|after|wake|tell_watchers) (\w+)\}|\{(unlease|terminal)\}")
_CLEARS_HELD = re.compile(r"\bheld = NULL\b")
_SET_STATUS = re.compile(r"UPDATE job_runs r\s+SET status = ([\w.']+)(?=\s*,|\s+FROM\b)")
_REQUIRED = ("id", "from_status", "to_status", "attempt")
_TERMINAL_REQUIRED = ("parent_run_id", "job_id")  # and when a target is terminal
_GATE_REQUIRED = {"executing": ("job_id", "slots"), "queued": ("job_id", "held")}  # by source: the gates' counts
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
    clears_held: bool = False  # it sets `held = NULL`: its RETURNING reads no run as held (the claim)

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
    required = _REQUIRED + (_TERMINAL_REQUIRED if any(fsm.is_terminal(x) for x in targets) else ())
    required += tuple(c for s, cols in _GATE_REQUIRED.items() if s in sources for c in cols if c not in required)
    missing = [c for c in required if c not in given and "*" not in outputs]
    if missing:
        raise TransitionError(f"transition {name}: RETURNING lacks {missing}")
    if fsm.S.EXECUTING in sources and "{unlease}" not in cte:
        raise TransitionError(f"transition {name} leaves executing: it must clear the lease with {{unlease}}")
    assignments = re.split(r"\bFROM\b|\bWHERE\b|\bRETURNING\b", cte[m.start() :], maxsplit=1)[0]
    return Transition(name, sources, targets, to_expr, outputs, bool(_CLEARS_HELD.search(assignments)))


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
        if c in t.outputs or (c == "error" and "*" in t.outputs)  # r.*: the run's own error column
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
        + (_close_waits(t) if fsm.S.WAITING in t.sources else "")
        + (_answer_parents(t) + _release_dependents(t) if any(fsm.is_terminal(x) for x in t.targets) else "")
        + _gates(t)
        + f", {t.name}_watched AS (\n    {tell_watchers(t.name)}\n)"
        + _tally(t.name, "from_status", "to_status")
    )


def _tally(cte: str, from_expr: str, to_expr: str, where: str = "") -> str:
    """The transitions of `cte` counted for /metrics (migration 0014): a row per (from, to), in the
    statement that writes them; none when it wrote none."""
    return (
        f", {cte}_tally AS (\n"
        "    INSERT INTO run_transition_tally (from_status, to_status, n)\n"
        f"    SELECT {from_expr}, {to_expr}, count(*) FROM {cte}{where} GROUP BY 1, 2\n"
        ")"
    )


def tell_watchers(cte: str, alias: str = "m") -> str:
    """NOTIFY the API processes streaming these runs (`run_watchers`): a row update's RETURNING, so
    it runs whether or not the statement reads it. While no stream watches any run (the table is
    empty), one look at the table decides it for the whole statement (a one-time filter) instead of
    a probe per run of every claim and outcome write."""
    return (
        f"UPDATE run_watchers w SET expires_at = w.expires_at FROM {cte} {alias} WHERE w.run_id = {alias}.id\n"
        "      AND EXISTS (SELECT 1 FROM run_watchers)\n"
        f"    RETURNING pg_notify('strait_run_events', {alias}.id::text)"
    )


def _close_waits(t: Transition) -> str:
    """A run that leaves `waiting` other than by resuming no longer waits: its open waits close.
    Expired ones are left to the reaper's expiry pass, which times them out in its own statement
    (a row is updated at most once per statement). The rows are found by index from each run (an
    array of ids), whatever the planner thinks of a join with a CTE it has no statistics for.
    `(status = 'waiting') IS TRUE`, here and in `_answer_parents`: not the predicate of the partial
    index event_triggers_due, which a planner short of statistics would walk whole (every waiting
    trigger, a heap read each) instead of probing by id or run."""
    has_error = "error" in t.outputs or "*" in t.outputs  # r.*: the run's own error column
    error = "COALESCE(m.error, 'run ended: ' || m.to_status)" if has_error else "'run ended: ' || m.to_status"
    return (
        f", {t.name}_waits AS (\n"
        "    UPDATE event_triggers e SET status = 'canceled', updated_at = now(),\n"
        f"        error = (SELECT {error} FROM {t.name} m WHERE m.id = e.job_run_id LIMIT 1)\n"
        "    WHERE e.id = ANY(ARRAY(\n"
        f"        SELECT w.id FROM {t.name} m CROSS JOIN LATERAL (\n"
        "            SELECT o.id FROM event_triggers o\n"
        "            WHERE o.job_run_id = m.id AND (o.status = 'waiting') IS TRUE AND o.expires_at > now()\n"
        "            LIMIT 1000) w\n"
        "        WHERE m.from_status = 'waiting' AND m.to_status <> 'queued'))\n"
        "      AND (e.status = 'waiting') IS TRUE\n"
        ")"
    )


def _answer_parents(t: Transition) -> str:
    """A run that ends answers its parent's spawn-await; the parent's last awaited child resumes it
    (waiting -> queued, same attempt), with its event and the pollers' wake, in this statement.
    Rows are found by index (arrays of ids): runs without a parent cost a filter on this CTE only."""
    # the parent's last awaited child ended and no open wait for an event holds it: it resumes, or its
    # resume is held while the call that parked it is still open
    last = "p.awaiting_children <= c.n AND c.free"
    resume, hold = f"{last} AND p.parked_open_until > now() IS NOT TRUE", f"{last} AND p.parked_open_until > now()"
    return (
        f", {t.name}_awaited AS (\n"
        "    UPDATE event_triggers e SET status = 'received', received_at = now(), updated_at = now(),\n"
        "        response_payload = (SELECT jsonb_build_object('run_id', m.id, 'status', m.to_status)\n"
        f"                            FROM {t.name} m WHERE 'spawn-await:' || m.id = e.event_key LIMIT 1)\n"
        "    WHERE e.id = ANY(ARRAY(\n"
        f"        SELECT w.id FROM {t.name} m CROSS JOIN LATERAL (\n"
        "            SELECT o.id FROM event_triggers o WHERE o.job_run_id = m.parent_run_id\n"
        "              AND o.event_key = 'spawn-await:' || m.id AND (o.status = 'waiting') IS TRUE LIMIT 1) w\n"
        f"        WHERE m.parent_run_id IS NOT NULL AND m.to_status = ANY({_array(sorted(fsm.TERMINAL))})\n"
        # a parent changed by this same statement (a cancel of a whole tree) is that change's alone:
        # PostgreSQL applies only one of two updates of a row in one statement
        f"          AND NOT EXISTS (SELECT 1 FROM {t.name} x WHERE x.id = m.parent_run_id)))\n"
        "      AND (e.status = 'waiting') IS TRUE\n"
        "    RETURNING e.job_run_id AS parent_id\n"
        f"), {t.name}_parents AS (\n"
        # every child that ends counts down its parent; the last one resumes the parent once nothing
        # else holds it (no open wait for an event: its send resumes it then), or holds the resume while
        # the call that parked the parent goes on (migration 0016: that call's return resumes it)
        "    UPDATE job_runs p SET awaiting_children = GREATEST(p.awaiting_children - c.n, 0),\n"
        f"        status = CASE WHEN {resume} THEN 'queued' ELSE p.status END,\n"
        f"        parked_lease_id = CASE WHEN {resume} THEN NULL ELSE p.parked_lease_id END,\n"
        f"        resume_event_key = CASE WHEN {resume} THEN 'spawn-await' ELSE p.resume_event_key END,\n"
        f"        resume_held = CASE WHEN {hold} THEN 'spawn-await' ELSE p.resume_held END,\n"
        f"        parked_open_until = CASE WHEN {resume} THEN NULL ELSE p.parked_open_until END\n"
        "    FROM (SELECT a.parent_id, a.n, NOT EXISTS (\n"
        "              SELECT 1 FROM event_triggers o WHERE o.job_run_id = a.parent_id\n"
        "                AND (o.status = 'waiting') IS TRUE AND o.event_key NOT LIKE 'spawn-await:%%') AS free\n"
        f"          FROM (SELECT parent_id, count(*) AS n FROM {t.name}_awaited GROUP BY parent_id) a) c\n"
        f"    WHERE p.id = ANY(ARRAY(SELECT parent_id FROM {t.name}_awaited)) AND p.id = c.parent_id\n"
        "      AND (p.status = 'waiting') IS TRUE\n"
        "    RETURNING p.id, p.status AS to_status, p.attempt\n"
        f"), {t.name}_parents_resumed AS (\n"
        "    INSERT INTO run_events (run_id, type, level, message, data)\n"
        "    SELECT p.id, 'state_change', 'info', 'waiting -> queued (awaited runs ended)',\n"
        "           jsonb_build_object('from', 'waiting', 'to', 'queued', 'attempt', p.attempt)\n"
        f"    FROM {t.name}_parents p\n"
        "    CROSS JOIN LATERAL (SELECT pg_notify('strait_queue_wake', '') WHERE p.to_status = 'queued') w\n"
        "    WHERE p.to_status = 'queued'\n"
        ")" + _tally(f"{t.name}_parents", "'waiting'", "to_status", " WHERE to_status = 'queued'")
    )


_FAILED: list[str] = sorted({fsm.S.FAILED, fsm.S.DEAD_LETTER, fsm.S.TIMED_OUT, fsm.S.CRASHED, fsm.S.SYSTEM_FAILED})


def _release_dependents(t: Transition) -> str:
    """Job dependencies (engine.md §2.8, migration 0009): a run that ends releases the waiting runs
    of the jobs that depend on its job and share its key (or have none), when it ended the way the
    dependency asks and every other dependency of theirs is met (`strait_dependency_met`), in this
    statement: waiting -> queued with its event and the pollers' wake. A run whose job nothing
    depends on costs one probe of `job_dependencies` by its job. (Two upstream runs ending in one
    statement each see the other still running: the Reaper's backstop releases such runs.)"""
    return (
        f", {t.name}_dependents AS (\n"
        "    UPDATE job_runs d SET status = 'queued', awaits_dependencies = false\n"
        "    WHERE d.id = ANY(ARRAY(\n"
        # the ended runs whose job something depends on, first (OFFSET 0 keeps the join: a planner
        # that flattened it looked each run up in job_runs for its keys before it probed
        # job_dependencies; it also keeps outer conditions out, so the end-state test is in here)
        "        SELECT w.id FROM (\n"
        "            SELECT m.id, m.job_id, m.to_status, dep.job_id AS dep_job_id, dep.condition\n"
        f"            FROM {t.name} m JOIN job_dependencies dep ON dep.depends_on_job_id = m.job_id\n"
        f"            WHERE m.to_status = ANY({_array(sorted(fsm.TERMINAL))}) OFFSET 0) m\n"
        "        CROSS JOIN LATERAL (SELECT e.idempotency_key AS ikey, e.metadata ->> 'dependency_key' AS dkey\n"
        "                            FROM job_runs e WHERE e.id = m.id) k\n"
        "        CROSS JOIN LATERAL (\n"
        "            SELECT o.id, strait_run_dependency_key(o.idempotency_key, o.metadata, o.triggered_by) AS key\n"
        "            FROM job_runs o WHERE o.job_id = m.dep_job_id AND o.status = 'waiting' AND o.awaits_dependencies\n"
        "            ORDER BY o.created_at LIMIT 1000) w\n"
        "        WHERE (w.key IS NULL OR w.key = k.ikey OR w.key = k.dkey)\n"
        "          AND CASE m.condition WHEN 'any' THEN true WHEN 'completed' THEN m.to_status = 'completed'\n"
        f"                   ELSE m.to_status = ANY({_array(_FAILED)}) END\n"
        "          AND NOT EXISTS (SELECT 1 FROM job_dependencies o2 WHERE o2.job_id = m.dep_job_id\n"
        "                            AND o2.depends_on_job_id <> m.job_id\n"
        "                            AND NOT strait_dependency_met(o2.depends_on_job_id, o2.condition, w.key))\n"
        f"          AND NOT EXISTS (SELECT 1 FROM {t.name} x WHERE x.id = w.id)))\n"
        "      AND (d.status = 'waiting') IS TRUE AND d.awaits_dependencies\n"
        "    RETURNING d.id, d.attempt\n"
        f"), {t.name}_dependents_released AS (\n"
        "    INSERT INTO run_events (run_id, type, level, message, data)\n"
        "    SELECT p.id, 'state_change', 'info', 'waiting -> queued (dependencies met)',\n"
        "           jsonb_build_object('from', 'waiting', 'to', 'queued', 'attempt', p.attempt)\n"
        f"    FROM {t.name}_dependents p CROSS JOIN LATERAL (SELECT pg_notify('strait_queue_wake', '')) w\n"
        ")" + _tally(f"{t.name}_dependents", "'waiting'", "'queued'")
    )


def _gates(t: Transition) -> str:
    """Concurrency gates (migration 0005): a run leaving `executing` frees its slots, a held queued run
    leaving the queue leaves its gate's held count, in strait_move_gates (migration 0011: a conflict
    on a gate row re-checks a one-line query there, not this whole statement). Gate rows are locked
    in key order, as the claim locks them, so a claim and a transition never wait on each other in a
    cycle. A gate left with a free slot and held runs wakes the pollers: the next claim takes them.
    Runs without slots and not held (every run of a job without limits) cost a filter on this CTE
    only. A transition that clears `held` itself (the claim: its own CTEs count the holds it ends)
    returns every run as not held: it gets no part for them, and from `queued` alone none at all
    (a statement's set-up costs PostgreSQL for each CTE in its plan, run or not)."""
    parts = []
    if fsm.S.EXECUTING in t.sources:
        parts.append(
            f"SELECT m.job_id, k AS ckey, 1 AS act, 0 AS hld FROM {t.name} m CROSS JOIN LATERAL unnest(m.slots) k\n"
            "        WHERE m.from_status = 'executing' AND m.slots IS NOT NULL"
        )
    if fsm.S.QUEUED in t.sources and not t.clears_held:  # else its RETURNING says no run was held
        parts.append(
            f"SELECT m.job_id, substr(m.held, 3) AS ckey, 0 AS act, 1 AS hld FROM {t.name} m\n"
            "        WHERE m.from_status = 'queued' AND m.held LIKE 'g:%%'"
        )
    if not parts:  # no slot freed, no hold left: no part at all
        return ""
    union = "\n        UNION ALL ".join(parts)
    return (
        f", {t.name}_gate_delta AS (  -- a row per slot or hold; strait_move_gates sums them per gate\n"
        f"    {union}\n"
        f"), {t.name}_gates AS (\n"
        "    -- written nowhere (the function never returns NULL): a row-writing CTE runs whether or\n"
        "    -- not the statement reads it; the gates move in strait_move_gates (migration 0011)\n"
        "    INSERT INTO run_gates (job_id, ckey, cap)\n"
        "    SELECT NULL, NULL, NULL FROM (\n"
        "        SELECT array_agg(job_id) AS j, array_agg(ckey) AS k, array_agg(-act) AS a, array_agg(-hld) AS h\n"
        f"        FROM {t.name}_gate_delta HAVING count(*) > 0) d\n"
        "    WHERE strait_move_gates(d.j, d.k, d.a, d.h, true) IS NULL\n"
        ")"
    )


assert fsm.can(fsm.S.WAITING, fsm.S.QUEUED)  # the parent resume above writes this edge


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
        if macro == "tell_watchers":
            return tell_watchers(target, "x")
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
