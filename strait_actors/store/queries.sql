-- Every SQL statement of strait, by name. Parameters are always bound (%(name)s).
-- Every status change goes through the transition seam (store/transitions.py): a statement declares
-- `-- transition NAME: FROM -> TO`, and its {guard}, {unlease}, {after} and {wake} macros are
-- expanded from fsm.TRANSITIONS: the compare-and-set, the lease release, the run event (and every
-- later consequence of a state change) and the NOTIFY, written once for all of them.

-- ===================================================================== migrations

-- name: lock_migrations
-- Serialise start-ups: one process applies the pending migrations, the others wait.
SELECT pg_advisory_lock(%(key)s)

-- name: unlock_migrations
-- Let the next starting process look.
SELECT pg_advisory_unlock(%(key)s)

-- name: create_schema_migrations
-- Which migration files are applied.
CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())

-- name: applied_migrations
-- The files applied so far.
SELECT name FROM schema_migrations

-- name: record_migration
-- One more file applied (in the transaction that applied it).
INSERT INTO schema_migrations (name) VALUES (%(name)s)

-- ===================================================================== queue (worker)

-- name: claim_runs
-- Promote due delayed runs (and due retries, held 'retry' while in backoff), then claim queued runs for
-- this worker under a fresh lease: one round trip. Promoted runs are not visible to this statement's
-- snapshot; they are counted in `promoted`, so the caller claims again at once.
-- Concurrency limits (migration 0005): the runs considered are the held runs of gates that have a
-- slot free again (oldest first), then as many of the next queued ones by the claim index as fit. Their gates are locked in key order
-- (a locked row is read as it is now, not as the snapshot saw it), slots granted in claim order,
-- ranked per key then per job, so one batch never overshoots a limit. A run that gets no slot is
-- held (out of the claim index, until its gate frees one); a run of a paused (itself or its project:
-- migration 0007), disabled or non-HTTP job is held as 'job' (its job's update releases it); a run whose gate does not exist yet is left
-- queued and the gate made: the caller claims again at once (`promoted` counts it).
-- A due run of a job with dependencies waits instead while one is unmet (migration 0012).
-- Its UPDATEs join job_runs as `r.id = ANY(ARRAY[x.id])`: an index probe per run, and a join no hash
-- or merge join can take. The planner's estimates of these CTEs are far off (hundreds of millions of
-- rows), and given `r.id = x.id` it hashed all of job_runs to update a hundred runs (23 s a claim
-- behind a backlog of 2,000,000 runs; bench_e2e --scenario backlog).
-- The poller runs it as one generic plan (queue.CLAIM_OPTIONS), whose row estimates follow job_runs'
-- statistics, not the batch: a LIMIT of a parameter is taken as a tenth of its input. Behind a
-- backlog (or a long history) they reached millions of rows, and every execution sized its hash
-- tables and sorts for them (2.1 ms to claim one run instead of 0.9). `LIMIT 1000`, the most one
-- claim takes (MAX_DEQUEUE_BATCH_SIZE), bounds the pool and what is decided from it: it never cuts.
-- transition claimed: queued -> executing
WITH
-- {promotion: claim_runs_plain has its own section here (store/sql.py derives it from this statement)
-- transition promoted: delayed -> queued waiting
due AS (
    SELECT id, job_id, strait_run_dependency_key(idempotency_key, metadata, triggered_by) AS dkey FROM job_runs
    WHERE status = 'delayed' AND scheduled_at <= now()
    ORDER BY scheduled_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), entering AS (
    SELECT due.id, strait_entry_status(j.has_dependencies, due.job_id, due.dkey) AS to_status
    FROM due JOIN jobs j ON j.id = due.job_id
), promoted AS (
    UPDATE job_runs r SET status = e.to_status, awaits_dependencies = e.to_status = 'waiting'
    FROM entering e WHERE r.id = ANY(ARRAY[e.id]) AND {guard promoted}
    RETURNING r.id, 'delayed'::text AS from_status, r.status AS to_status, r.attempt
){after promoted}{wake promoted}, due_retries AS (
    -- retries in backoff wait out of the claim index (held 'retry'); due ones go back to it
    SELECT id FROM job_runs
    WHERE status = 'queued' AND held = 'retry' AND next_retry_at <= now()
    ORDER BY next_retry_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), retried AS (
    UPDATE job_runs r SET held = NULL FROM due_retries d WHERE r.id = ANY(ARRAY[d.id]) RETURNING r.id
), requeued AS (
    -- runs made claimable here, which this statement's snapshot does not see: claim again at once
    SELECT (SELECT count(*) FROM promoted_wake) + (SELECT count(*) FROM retried) AS n
-- promotion}
), fresh AS (
    SELECT r.id, r.job_id, r.priority, r.created_at, r.resume_event_key, NULL::text AS was_held,
           COALESCE(r.concurrency_key, '') AS ckey,
           j.enabled AND NOT (j.paused OR j.project_paused) AND j.execution_mode = 'http' AS runnable,
           NULLIF(j.max_concurrency, 0) AS job_cap, NULLIF(j.max_concurrency_per_key, 0) AS key_cap
    FROM job_runs r JOIN jobs j ON j.id = r.job_id
    WHERE r.status = 'queued' AND r.held IS NULL
      AND (r.next_retry_at IS NULL OR r.next_retry_at <= now())
      AND (r.expires_at IS NULL OR r.expires_at > now() OR r.attempt > 1 OR r.resume_event_key IS NOT NULL)
    ORDER BY r.priority DESC, r.created_at
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
    -- {gates: claim_runs_plain has its own section here (store/sql.py derives it from this statement)
), ready AS (
    SELECT g.job_id, g.ckey, LEAST(g.cap - g.active, %(limit)s) AS spare FROM run_gates g
    WHERE g.held > 0 AND g.active < g.cap
    LIMIT 64
), released AS (
    SELECT h.id, h.job_id, h.priority, h.created_at, h.resume_event_key, h.held AS was_held,
           COALESCE(h.concurrency_key, '') AS ckey,
           j.enabled AND NOT (j.paused OR j.project_paused) AND j.execution_mode = 'http' AS runnable,
           NULLIF(j.max_concurrency, 0) AS job_cap, NULLIF(j.max_concurrency_per_key, 0) AS key_cap
    FROM ready d CROSS JOIN LATERAL (
        SELECT x.id, x.job_id, x.priority, x.created_at, x.resume_event_key, x.held, x.concurrency_key FROM job_runs x
        WHERE x.job_id = d.job_id AND x.status = 'queued' AND x.held = 'g:' || d.ckey
          AND (x.next_retry_at IS NULL OR x.next_retry_at <= now())
        ORDER BY x.priority DESC, x.created_at
        LIMIT d.spare
        FOR UPDATE SKIP LOCKED) h
    JOIN jobs j ON j.id = h.job_id
    LIMIT %(limit)s
), pool AS (
    -- the released runs first, then as many fresh ones as the claim's limit leaves room for
    SELECT *, job_cap IS NOT NULL AS job_gated, key_cap IS NOT NULL AND ckey <> '' AS key_gated FROM (
        SELECT * FROM (SELECT * FROM released UNION ALL SELECT * FROM fresh LIMIT 1000) u LIMIT %(limit)s) p
), wanted AS (
    SELECT job_id, '' AS ckey, max(job_cap) AS cap FROM pool WHERE runnable AND job_gated GROUP BY job_id
    UNION SELECT job_id, ckey, max(key_cap) FROM pool WHERE runnable AND key_gated GROUP BY job_id, ckey
    UNION SELECT job_id, substr(was_held, 3), NULL FROM pool WHERE was_held IS NOT NULL
), gates AS (
    -- locked in key order by strait_lock_gates (migration 0011: a gate changed since this
    -- statement's snapshot is re-checked there, not by setting up this whole statement again), one
    -- index probe each; their free slots as they are now. No gate wanted: no call.
    SELECT g.job_id, g.ckey, g.spare
    FROM (SELECT array_agg(job_id) AS j, array_agg(ckey) AS k FROM wanted HAVING count(*) > 0) w
    CROSS JOIN LATERAL strait_lock_gates(w.j, w.k) g
), new_gates AS (
    INSERT INTO run_gates (job_id, ckey, cap)
    SELECT w.job_id, w.ckey, w.cap FROM wanted w
    WHERE w.cap IS NOT NULL AND NOT EXISTS (SELECT 1 FROM gates g WHERE g.job_id = w.job_id AND g.ckey = w.ckey)
    -- in key order: two claims making the same gates wait on each other's inserts in one order,
    -- never in a cycle (unordered, racing claimers deadlocked on run_gates' key index)
    ORDER BY w.job_id, w.ckey
    ON CONFLICT DO NOTHING
    RETURNING job_id
), by_key AS (
    -- first the per-key limit: a run is granted if its rank among this batch's runs of its key fits
    -- (only gated runs are ranked: a claim of runs without limits sorts nothing)
    SELECT p.id, p.job_id, p.job_gated,
           CASE WHEN kg.job_id IS NULL THEN 'defer'
                WHEN row_number() OVER (PARTITION BY p.job_id, p.ckey ORDER BY p.priority DESC, p.created_at)
                     <= kg.spare THEN 'ok'
                ELSE 'g:' || p.ckey END AS verdict,
           p.priority, p.created_at
    FROM pool p LEFT JOIN gates kg ON kg.job_id = p.job_id AND kg.ckey = p.ckey
    WHERE p.runnable AND p.key_gated
    LIMIT 1000
), by_job AS (
    -- then the job's limit, among the runs their key allowed
    SELECT x.id,
           CASE WHEN jg.job_id IS NULL THEN 'defer'
                WHEN row_number() OVER (PARTITION BY x.job_id ORDER BY x.priority DESC, x.created_at) <= jg.spare
                THEN 'ok'
                ELSE 'g:' END AS verdict
    FROM (SELECT p.id, p.job_id, p.priority, p.created_at FROM pool p
          LEFT JOIN by_key k ON k.id = p.id
          WHERE p.runnable AND p.job_gated AND (NOT p.key_gated OR k.verdict = 'ok')) x
    LEFT JOIN gates jg ON jg.job_id = x.job_id AND jg.ckey = ''
    LIMIT 1000
), verdicts AS (
    SELECT p.id, p.job_id, p.was_held, p.resume_event_key, p.priority, p.created_at,
           CASE WHEN NOT p.runnable THEN 'job' WHEN k.verdict <> 'ok' THEN k.verdict
                ELSE COALESCE(b.verdict, 'ok') END AS verdict,
           CASE WHEN p.job_gated AND p.key_gated THEN ARRAY['', p.ckey] WHEN p.job_gated THEN ARRAY['']
                WHEN p.key_gated THEN ARRAY[p.ckey] END AS slots
    FROM pool p LEFT JOIN by_key k ON k.id = p.id LEFT JOIN by_job b ON b.id = p.id
), decided AS (
    -- verdict: 'ok' claimed; 'defer' left queued (its gate was just made); 'job' or 'g:<ckey>' held
    SELECT v.id, v.job_id, v.was_held, v.resume_event_key, v.slots, v.verdict FROM verdicts v LIMIT 1000
), held_back AS (
    UPDATE job_runs r SET held = CASE WHEN d.verdict = 'defer' THEN NULL ELSE d.verdict END
    FROM decided d
    WHERE r.id = ANY(ARRAY[d.id]) AND d.verdict <> 'ok'
      AND r.held IS DISTINCT FROM CASE WHEN d.verdict = 'defer' THEN NULL ELSE d.verdict END
    RETURNING r.id
), gate_moves AS (
    -- each gate moved once, by strait_move_gates (migration 0011): slots taken, runs it now holds,
    -- runs it no longer holds. Written nowhere (the function never returns NULL): a row-writing CTE
    -- runs whether or not the statement reads it. No wake: this claim's caller claims again itself.
    INSERT INTO run_gates (job_id, ckey, cap)
    SELECT NULL, NULL, NULL FROM (
        SELECT array_agg(m.job_id) AS j, array_agg(m.ckey) AS k, array_agg(m.taken) AS a,
               array_agg(m.held_in - m.held_out) AS h
        FROM (SELECT job_id, ckey, sum(taken)::int AS taken, sum(held_in)::int AS held_in, sum(held_out)::int AS held_out
          FROM (SELECT d.job_id, s AS ckey, 1 AS taken, 0 AS held_in, 0 AS held_out
                FROM decided d CROSS JOIN LATERAL unnest(d.slots) s WHERE d.verdict = 'ok'
                UNION ALL
                SELECT d.job_id, substr(d.verdict, 3), 0, 1, 0 FROM decided d
                WHERE d.verdict LIKE 'g:%%' AND d.verdict IS DISTINCT FROM d.was_held
                UNION ALL
                SELECT d.job_id, substr(d.was_held, 3), 0, 0, 1 FROM decided d
                WHERE d.was_held IS NOT NULL AND d.verdict IS DISTINCT FROM d.was_held) x
          GROUP BY job_id, ckey) m JOIN gates k ON k.job_id = m.job_id AND k.ckey = m.ckey
        HAVING count(*) > 0) d
    WHERE strait_move_gates(d.j, d.k, d.a, d.h, false) IS NULL
), candidates AS (
    SELECT d.id, d.resume_event_key, d.slots FROM decided d WHERE d.verdict = 'ok'
), settled AS (
    -- `n`: runs held back or left for their new gate (the caller claims again at once); `gated`: the
    -- pool had runs a gate or their job's state decides, so the next claim is this one again, not
    -- claim_runs_plain
    SELECT (SELECT count(*) FROM decided WHERE verdict = 'defer' OR (verdict <> 'ok' AND verdict IS DISTINCT FROM was_held)) AS n,
           EXISTS (SELECT 1 FROM pool WHERE was_held IS NOT NULL OR NOT runnable OR job_gated OR key_gated) AS gated
    -- gates}
), claimed AS (
    UPDATE job_runs r SET status = 'executing',
        started_at = now(), heartbeat_at = now(), finished_at = NULL,
        lease_id = %(lease_id)s, lease_expires_at = now() + make_interval(secs => %(lease_secs)s),
        worker_id = %(worker_id)s, resume_event_key = NULL, held = NULL, slots = c.slots
    FROM candidates c
    WHERE r.id = ANY(ARRAY[c.id]) AND {guard claimed}
    RETURNING r.id, 'queued'::text AS from_status, r.status AS to_status, r.attempt, r.job_id, r.priority, r.created_at,
              r.held, r.slots,
              r.payload::text AS payload, r.lease_id, r.expires_at, r.error AS previous_error,
              r.metadata ->> 'traceparent' AS traceparent, r.metadata ->> 'tracestate' AS tracestate,
              c.resume_event_key, r.job_version
){after claimed}
-- always one row at least: (NULL id, promoted count) when nothing was claimed; `promoted` also counts
-- runs this claim held back or left for their new gate: either way, claim again at once
SELECT c.id::text AS id, c.job_id::text AS job_id, j.project_id, c.attempt, c.payload, c.lease_id::text AS lease_id,
       c.expires_at, c.previous_error,
       -- the settings of the job version the run is pinned to, else the job's own (engine.md §3.1);
       -- the endpoint of the job's environment (ENDPOINT_URL, step 4) before either: migration 0007
       COALESCE(j.endpoint_override, pv.snap ->> 'endpoint_url', j.endpoint_url, '') AS endpoint_url,
       CASE WHEN pv.snap IS NULL THEN j.fallback_endpoint_url ELSE pv.snap ->> 'fallback_endpoint_url' END
           AS fallback_endpoint_url,
       COALESCE((pv.snap ->> 'timeout_secs')::int, j.timeout_secs) AS timeout_secs,
       COALESCE((pv.snap ->> 'max_attempts')::int, j.max_attempts) AS max_attempts,
       CASE WHEN pv.snap IS NULL THEN j.retry_strategy ELSE pv.snap ->> 'retry_strategy' END AS retry_strategy,
       CASE WHEN pv.snap IS NULL THEN j.retry_delays_secs
            WHEN jsonb_typeof(pv.snap -> 'retry_delays_secs') = 'array'
            THEN ARRAY(SELECT x::int FROM jsonb_array_elements_text(pv.snap -> 'retry_delays_secs') x) END
           AS retry_delays_secs,
       COALESCE((pv.snap ->> 'retry_priority_boost')::int, j.retry_priority_boost) AS retry_priority_boost,
       j.signing_secret,
       c.traceparent, c.tracestate, c.priority AS claim_priority, c.created_at AS claim_created_at,
       c.resume_event_key, cp.state AS last_checkpoint, cp.created_at AS checkpoint_at,
       w.n AS promoted, w.gated
FROM (SELECT p.n + s.n AS n, s.gated FROM requeued p, settled s) w
LEFT JOIN (claimed c JOIN jobs j ON j.id = c.job_id
           -- version_policy: a run of an older version reads that version's snapshot when the job pins
           -- it (`pin`; `minor` unless the job's current version is backwards compatible)
           LEFT JOIN LATERAL (SELECT v.snapshot AS snap FROM job_versions v
                              WHERE c.job_version <> j.version
                                AND (j.version_policy = 'pin' OR (j.version_policy = 'minor' AND NOT j.backwards_compatible))
                                AND v.job_id = c.job_id AND v.version = c.job_version) pv ON true
           -- a retried or resumed run is told its newest checkpoint (api.md §5.2, §5.6); others skip the probe
           LEFT JOIN LATERAL (SELECT k.state::text AS state, k.created_at FROM run_checkpoints k
                              WHERE (c.attempt > 1 OR c.resume_event_key IS NOT NULL) AND k.run_id = c.id
                              ORDER BY k.sequence DESC LIMIT 1) cp ON true) ON true

-- name: claim_runs_plain
-- claim_runs without its promotion and its concurrency gates: that statement with its sections
-- `{promotion ... promotion}` and `{gates ... gates}` replaced by these (store/sql.py). It claims the
-- fresh runs that nothing holds back (runnable, no limit on their job or key), leaves the others
-- queued, and only looks whether delayed runs or retries have come due and whether a gate holds runs
-- it could release now. A statement's set-up costs PostgreSQL for every CTE in its plan, run or not:
-- the gates' and the promotion's were 40 % of an idle claim (1.2 ms to claim one run, 0.5 ms to
-- find none). The Poller's Queue runs it while the last claim met no gate; `gated` (a run it left, a
-- gate to release, a run come due) sends the next claim to claim_runs, at once (`promoted` counts it).
-- {promotion
requeued AS (
    -- the earliest delayed run and the earliest retry in backoff, each the first entry of its index
    -- (as an EXISTS of `held = 'retry'` the planner walked all held runs by job_runs_held instead)
    SELECT (((SELECT scheduled_at FROM job_runs WHERE status = 'delayed' ORDER BY scheduled_at LIMIT 1) <= now()
             OR (SELECT next_retry_at FROM job_runs WHERE status = 'queued' AND held = 'retry'
                 ORDER BY next_retry_at LIMIT 1) <= now()) IS TRUE)::int AS n
-- promotion}
-- {gates
), candidates AS (
    SELECT f.id, f.resume_event_key, NULL::text[] AS slots FROM fresh f
    WHERE f.runnable AND f.job_cap IS NULL AND (f.key_cap IS NULL OR f.ckey = '')
), settled AS (
    SELECT x.left_n + x.ready::int AS n, x.left_n > 0 OR x.ready OR (SELECT n > 0 FROM requeued) AS gated FROM (
        SELECT (SELECT count(*) FROM fresh) - (SELECT count(*) FROM candidates) AS left_n,
               EXISTS (SELECT 1 FROM run_gates g WHERE g.held > 0 AND g.active < g.cap) AS ready) x
-- gates}

-- name: record_outcomes
-- Write many dispatch outcomes at once, each fenced on (id, executing, attempt, lease); a run whose
-- fence fails is skipped without touching the others. Retries go back to queued with attempt + 1.
-- The arrays go in binary (%%b), as insert_runs' do.
-- The arrays come in id order, so the runs are written in it (store/queue.py).
-- transition moved: executing -> completed failed timed_out dead_letter queued
WITH v AS (
    SELECT * FROM unnest(%(ids)b::uuid[], %(attempts)b::int[], %(leases)b::uuid[], %(statuses)b::text[],
                         %(results)b::jsonb[], %(errors)b::text[], %(classes)b::text[],
                         %(delays)b::float8[], %(boosts)b::int[])
        AS v(id, attempt, lease_id, to_status, result, error, error_class, delay, boost)
), moved AS (
    UPDATE job_runs r SET status = v.to_status,
        -- a run held back by an open circuit (engine.md §3.4) spent no attempt
        attempt = CASE WHEN v.to_status = 'queued' AND v.error_class IS DISTINCT FROM 'circuit_open'
                       THEN r.attempt + 1 ELSE r.attempt END,
        result = v.result,
        error = v.error,
        error_class = v.error_class,
        started_at = CASE WHEN v.to_status = 'queued' THEN NULL ELSE r.started_at END,
        finished_at = CASE WHEN v.to_status = 'queued' THEN NULL ELSE now() END,
        next_retry_at = CASE WHEN v.to_status = 'queued' THEN now() + make_interval(secs => v.delay) END,
        -- a retry in backoff is set aside from the claim index until it is due (the claim brings it back)
        held = CASE WHEN v.to_status = 'queued' AND v.delay > 0 THEN 'retry' END,
        priority = CASE WHEN v.to_status = 'queued' THEN LEAST(10, r.priority + v.boost) ELSE r.priority END,
        {unlease}
    FROM v
    WHERE r.id = v.id AND r.attempt = v.attempt AND r.lease_id = v.lease_id AND {guard moved}
    RETURNING r.id, 'executing'::text AS from_status, r.status AS to_status, v.attempt, v.error, r.parent_run_id,
              r.job_id, r.slots
){after moved}
SELECT id::text AS id, false AS parked FROM moved
UNION ALL
-- a dropped outcome whose call parked its run (waiting, same lease, park open): the dispatcher then
-- closes the park (close_parked_dispatches). Written runs are filtered out before any probe.
SELECT v.id::text, true FROM v JOIN job_runs r ON r.id = v.id
WHERE NOT v.id = ANY(ARRAY(SELECT id FROM moved))
  AND (r.status = 'waiting') IS TRUE AND r.parked_lease_id = v.lease_id AND r.attempt = v.attempt
  AND r.parked_open_until IS NOT NULL

-- name: close_parked_dispatches
-- The calls that parked their runs have returned (their outcomes were dropped: the runs wait): each
-- park closes, and a resume held while the call went on (migration 0016) is done now, waiting ->
-- queued with the key it was held with. Fenced on (id, waiting, attempt, parked lease); the runs are
-- locked in id order before either write.
-- transition resumed: waiting -> queued
WITH v AS (
    SELECT * FROM unnest(%(ids)b::uuid[], %(attempts)b::int[], %(leases)b::uuid[]) AS v(id, attempt, lease_id)
    ORDER BY id
), cur AS (
    -- decided here, on the row as locked (the latest): the writes below test only `cur`, because a
    -- write's own test of `r` reads the statement's snapshot first, older than a child's end (or a
    -- send) that this lock waited for, and would skip the row without looking at the latest
    SELECT l.* FROM v CROSS JOIN LATERAL (
        SELECT r.id, r.resume_held IS NOT NULL AND r.awaiting_children = 0 AS resume, r.resume_held
        FROM job_runs r
        WHERE r.id = v.id AND (r.status = 'waiting') IS TRUE AND r.attempt = v.attempt
          AND r.parked_lease_id = v.lease_id AND r.parked_open_until IS NOT NULL
        FOR NO KEY UPDATE) l
), closed AS (
    UPDATE job_runs r SET parked_open_until = NULL, resume_held = NULL
    FROM cur WHERE r.id = cur.id AND NOT cur.resume
    RETURNING r.id
), resumed AS (
    UPDATE job_runs r SET status = 'queued', resume_event_key = cur.resume_held, resume_held = NULL,
        parked_lease_id = NULL, parked_open_until = NULL, next_retry_at = NULL, heartbeat_at = NULL
    FROM cur WHERE r.id = cur.id AND cur.resume AND {guard resumed}
    RETURNING r.id, 'waiting'::text AS from_status, r.status AS to_status, r.attempt,
              'resumed once its call returned'::text AS note
){after resumed}{wake resumed}
SELECT (SELECT count(*) FROM closed) AS closed, (SELECT count(*) FROM resumed) AS resumed,
       (SELECT count(*) FROM resumed_wake) AS woke

-- name: record_circuits
-- Shared circuit breakers (engine.md §3.4, migration 0010): each endpoint's failed calls of one
-- outcome batch are added to its consecutive failures (not while it is open and cooling: calls that
-- were out when it opened say nothing new); reaching the threshold opens it for the cool-down, and
-- a failure after the cool-down (the probe's) opens it again. A success closes it (the row goes).
-- Returns the circuits open now among those written.
WITH v AS (
    SELECT * FROM unnest(%(projects)s::text[], %(hashes)s::text[], %(failures)s::int[], %(ok)s::bool[])
        AS v(project_id, url_hash, failures, ok)
), closed AS (
    DELETE FROM endpoint_circuits c USING v
    WHERE v.ok AND c.project_id = v.project_id AND c.url_hash = v.url_hash
), counted AS (
    INSERT INTO endpoint_circuits AS c (project_id, url_hash, failures, open_until)
    SELECT v.project_id, v.url_hash, v.failures,
           CASE WHEN v.failures >= %(threshold)s THEN now() + make_interval(secs => %(cooldown)s) END
    FROM v WHERE NOT v.ok AND v.failures > 0
    ORDER BY v.project_id, v.url_hash
    ON CONFLICT (project_id, url_hash) DO UPDATE SET
        failures = CASE WHEN c.open_until > now() THEN c.failures ELSE c.failures + EXCLUDED.failures END,
        open_until = CASE WHEN c.open_until > now() THEN c.open_until
                          WHEN c.failures + EXCLUDED.failures >= %(threshold)s
                          THEN now() + make_interval(secs => %(cooldown)s)
                          ELSE c.open_until END,
        updated_at = now()
    RETURNING c.project_id, c.url_hash, c.open_until
)
SELECT project_id, url_hash, extract(epoch FROM open_until)::float8 AS open_until FROM counted
WHERE open_until > now()

-- name: read_circuits
-- Every endpoint circuit with failures counted (few: a success deletes its row), for the
-- dispatchers' one-second cache; `open_until` in epoch seconds, NULL while closed.
SELECT project_id, url_hash, extract(epoch FROM open_until)::float8 AS open_until
FROM endpoint_circuits LIMIT 10000

-- name: listen_wake
-- The pollers' wake-up channel: every {wake} of the transition seam NOTIFYs it.
LISTEN strait_queue_wake

-- name: extend_leases
-- Heartbeat the runs this worker is still calling: the lease moves forward, fenced on the lease.
-- The arrays come in id order: the runs are written in it (store/queue.py).
-- A run its call parked (waiting) keeps its park open as long (migration 0016).
UPDATE job_runs r
SET heartbeat_at = CASE WHEN r.lease_id IS NULL THEN r.heartbeat_at ELSE now() END,
    lease_expires_at = CASE WHEN r.lease_id IS NULL THEN NULL ELSE now() + make_interval(secs => %(lease_secs)s) END,
    parked_open_until = CASE WHEN r.lease_id IS NULL THEN now() + make_interval(secs => %(lease_secs)s) END
FROM unnest(%(ids)s::uuid[], %(leases)s::uuid[]) AS v(id, lease_id)
-- IS TRUE: find the runs by id, not by walking the executing index (see transitions._guard)
WHERE r.id = v.id
  AND (r.lease_id = v.lease_id AND (r.status = 'executing') IS TRUE
       OR r.parked_lease_id = v.lease_id AND r.parked_open_until IS NOT NULL AND (r.status = 'waiting') IS TRUE)

-- name: release_runs
-- Give unfinished runs back to the queue at shutdown, same attempt (nothing was decided about them).
-- The arrays come in id order, so the runs are written in it (store/queue.py).
-- transition moved: executing -> queued
WITH moved AS (
    UPDATE job_runs r SET status = 'queued', started_at = NULL, {unlease}
    FROM unnest(%(ids)s::uuid[], %(leases)s::uuid[]) AS v(id, lease_id)
    WHERE r.id = v.id AND r.lease_id = v.lease_id AND {guard moved}
    RETURNING r.id, 'executing'::text AS from_status, r.status AS to_status, r.attempt,
              'worker shutdown'::text AS note, r.job_id, r.slots
){after moved}{wake moved}
SELECT count(*) AS released, (SELECT count(*) FROM moved_wake) AS woke FROM moved

-- ===================================================================== reaper

-- name: reap_lost_leases
-- Runs whose worker stopped heartbeating: retry (attempt + 1, backoff without jitter) or crashed.
-- Clearing the lease fences out any late result from the lost attempt.
-- transition moved: executing -> queued crashed
WITH stale AS (
    SELECT r.id, r.attempt,
           CASE WHEN r.attempt < GREATEST(j.max_attempts, 1) THEN 'queued' ELSE 'crashed' END AS to_status
    FROM job_runs r JOIN jobs j ON j.id = r.job_id
    WHERE r.status = 'executing' AND r.lease_expires_at < now()
    ORDER BY r.lease_expires_at
    LIMIT 1000
    FOR UPDATE OF r SKIP LOCKED
), moved AS (
    UPDATE job_runs r SET status = s.to_status,
        attempt = CASE WHEN s.to_status = 'queued' THEN r.attempt + 1 ELSE r.attempt END,
        next_retry_at = CASE WHEN s.to_status = 'queued'
                             THEN now() + make_interval(secs => LEAST(power(2, s.attempt - 1), 3600)) END,
        held = CASE WHEN s.to_status = 'queued' THEN 'retry' END,
        error = CASE WHEN s.to_status = 'queued' THEN 'heartbeat lost; retry scheduled' ELSE 'heartbeat lost' END,
        error_class = 'transient',
        started_at = CASE WHEN s.to_status = 'queued' THEN NULL ELSE r.started_at END,
        finished_at = CASE WHEN s.to_status = 'queued' THEN NULL ELSE now() END,
        {unlease}
    FROM stale s WHERE r.id = s.id AND {guard moved}
    RETURNING r.id, 'executing'::text AS from_status, r.status AS to_status, s.attempt, r.error,
              'lease lost'::text AS note, r.parent_run_id, r.job_id, r.slots
){after moved}
SELECT to_status AS status, count(*) AS n FROM moved GROUP BY to_status

-- name: expire_runs
-- Runs never started whose TTL passed go to expired (retried runs keep going: engine.md §2.7 ⚠;
-- so do runs resumed from a wait, which started long ago: a wait may outlast any TTL).
-- Reads job_runs_expiry (migration 0017), which holds only the queued runs that can expire: held or
-- not, oldest deadline first. A delayed run past its TTL is past its schedule too, so the claim has
-- promoted it.
-- transition moved: queued -> expired
WITH due AS (
    SELECT id FROM job_runs
    WHERE status = 'queued' AND expires_at <= now() AND attempt = 1 AND resume_event_key IS NULL
    ORDER BY expires_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE job_runs r SET status = 'expired', error = 'run expired', finished_at = now()
    FROM due WHERE r.id = due.id AND {guard moved}
    RETURNING r.id, 'queued'::text AS from_status, r.status AS to_status, r.attempt, r.parent_run_id,
              r.job_id, r.held
){after moved}
SELECT count(*) AS n FROM moved

-- ===================================================================== projects and API keys

-- name: ping
-- Health: the database answers.
SELECT 1

-- name: upsert_project
-- Create a project, or rename it when the same id comes back with the same org (api.md §4.2).
INSERT INTO projects (id, org_id, name) VALUES (%(id)s, %(org_id)s, %(name)s)
ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, updated_at = now()
    WHERE projects.org_id = EXCLUDED.org_id
RETURNING *

-- name: get_project
-- One project by id.
SELECT * FROM projects WHERE id = %(id)s

-- name: list_projects
-- Projects of an org, newest first (a bare array in the API).
SELECT * FROM projects WHERE org_id = %(org_id)s ORDER BY created_at DESC, id LIMIT 1000

-- name: insert_api_key
-- A new API key; only its hash is stored.
INSERT INTO api_keys (id, project_id, org_id, name, key_hash, key_prefix, scopes, environment_id, expires_at)
VALUES (%(id)s, %(project_id)s, %(org_id)s, %(name)s, %(key_hash)s, %(key_prefix)s, %(scopes)s,
        %(environment_id)s, %(expires_at)s)
RETURNING *

-- name: api_key_by_hash
-- Authenticate a presented key by its SHA-256.
SELECT id, project_id, scopes, revoked_at, expires_at FROM api_keys WHERE key_hash = %(key_hash)s

-- name: list_api_keys
-- A project's keys, newest first.
SELECT * FROM api_keys
WHERE project_id = %(project_id)s
  AND (%(after_ts)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_ts)s, COALESCE(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff')))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: revoke_api_key
-- Revoke a key (idempotent: the first revocation time stays).
UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
WHERE id = %(id)s AND (%(project_id)s::text IS NULL OR project_id = %(project_id)s)
RETURNING *

-- ===================================================================== jobs

-- name: insert_job
-- Create a job at version 1.
INSERT INTO jobs (id, project_id, name, slug, description, group_id, cron, timezone, execution_window_cron,
    cron_overlap_policy, payload_schema, result_schema, tags, endpoint_url, fallback_endpoint_url,
    signing_secret, webhook_url, max_attempts, timeout_secs, max_concurrency, max_concurrency_per_key,
    rate_limit_max, rate_limit_window_secs, rate_limit_keys, dedup_window_secs, run_ttl_secs, debounce_window_secs,
    batch_window_secs, batch_max_size, retry_strategy, retry_delays_secs, retry_priority_boost,
    poison_pill_threshold, enabled, environment_id, default_run_metadata, version_id, version_policy,
    execution_mode, queue_name, created_by, updated_by, endpoint_override, project_paused)
VALUES (%(id)s, %(project_id)s, %(name)s, %(slug)s, %(description)s, %(group_id)s, %(cron)s, %(timezone)s,
    %(execution_window_cron)s, %(cron_overlap_policy)s, %(payload_schema)s, %(result_schema)s, %(tags)s,
    %(endpoint_url)s, %(fallback_endpoint_url)s, %(signing_secret)s, %(webhook_url)s, %(max_attempts)s,
    %(timeout_secs)s, %(max_concurrency)s, %(max_concurrency_per_key)s, %(rate_limit_max)s,
    %(rate_limit_window_secs)s, %(rate_limit_keys)s, %(dedup_window_secs)s, %(run_ttl_secs)s, %(debounce_window_secs)s,
    %(batch_window_secs)s, %(batch_max_size)s, %(retry_strategy)s, %(retry_delays_secs)s,
    %(retry_priority_boost)s, %(poison_pill_threshold)s, %(enabled)s, %(environment_id)s,
    %(default_run_metadata)s, %(version_id)s, %(version_policy)s, %(execution_mode)s, %(queue_name)s,
    %(created_by)s, %(created_by)s, %(endpoint_override)s, %(project_paused)s)
RETURNING *

-- name: update_job
-- Write a job's new version, fenced on the version read (optimistic lock: a concurrent edit gets 409).
UPDATE jobs SET name = %(name)s, slug = %(slug)s, description = %(description)s, group_id = %(group_id)s,
    cron = %(cron)s, timezone = %(timezone)s, execution_window_cron = %(execution_window_cron)s,
    cron_overlap_policy = %(cron_overlap_policy)s, payload_schema = %(payload_schema)s,
    result_schema = %(result_schema)s, tags = %(tags)s, endpoint_url = %(endpoint_url)s,
    fallback_endpoint_url = %(fallback_endpoint_url)s, signing_secret = %(signing_secret)s,
    webhook_url = %(webhook_url)s, max_attempts = %(max_attempts)s, timeout_secs = %(timeout_secs)s,
    max_concurrency = %(max_concurrency)s, max_concurrency_per_key = %(max_concurrency_per_key)s,
    rate_limit_max = %(rate_limit_max)s, rate_limit_window_secs = %(rate_limit_window_secs)s,
    rate_limit_keys = %(rate_limit_keys)s, dedup_window_secs = %(dedup_window_secs)s, run_ttl_secs = %(run_ttl_secs)s,
    debounce_window_secs = %(debounce_window_secs)s, batch_window_secs = %(batch_window_secs)s,
    batch_max_size = %(batch_max_size)s, retry_strategy = %(retry_strategy)s,
    retry_delays_secs = %(retry_delays_secs)s, retry_priority_boost = %(retry_priority_boost)s,
    poison_pill_threshold = %(poison_pill_threshold)s, enabled = %(enabled)s,
    environment_id = %(environment_id)s, default_run_metadata = %(default_run_metadata)s,
    version_policy = %(version_policy)s, execution_mode = %(execution_mode)s, queue_name = %(queue_name)s,
    endpoint_override = %(endpoint_override)s, backwards_compatible = %(backwards_compatible)s, updated_by = %(updated_by)s,
    version = version + 1, version_id = %(version_id)s, updated_at = now(),
    -- a changed schedule is armed again from this change (the Scheduler's next pass)
    next_fire_at = CASE WHEN cron IS DISTINCT FROM %(cron)s OR timezone IS DISTINCT FROM %(timezone)s THEN NULL
                        ELSE next_fire_at END
WHERE id = %(id)s AND version = %(version)s
RETURNING *

-- name: set_job_paused
-- Pause or resume a job (api.md §4.3.10): not a new version, its operating state. A paused job
-- takes no triggers and fires no cron ticks; its queued runs are set aside by the next claim.
UPDATE jobs SET paused = %(paused)s,
    paused_at = CASE WHEN %(paused)s THEN COALESCE(paused_at, now()) END,
    pause_reason = CASE WHEN %(paused)s THEN %(reason)s END,
    updated_at = now()
WHERE id = %(id)s
RETURNING *

-- name: sync_job_gates
-- In a job's update: its concurrency gates take the new limits (a removed limit, NULL or 0, becomes 2^31-1, and
-- the next claims release the runs it held), and if the job can run, its runs held as 'job' (paused,
-- disabled, not HTTP: migration 0005) go back to the claim index. Wakes the pollers if either freed runs.
WITH caps AS (
    UPDATE run_gates g
    SET cap = CASE WHEN g.ckey = '' THEN COALESCE(NULLIF(j.max_concurrency, 0), 2147483647)
                   ELSE COALESCE(NULLIF(j.max_concurrency_per_key, 0), 2147483647) END
    FROM jobs j
    WHERE j.id = %(id)s AND g.job_id = j.id
      AND g.cap <> CASE WHEN g.ckey = '' THEN COALESCE(NULLIF(j.max_concurrency, 0), 2147483647)
                        ELSE COALESCE(NULLIF(j.max_concurrency_per_key, 0), 2147483647) END
    RETURNING g.held > 0 AND g.active < g.cap AS ready
), runnable AS (
    SELECT j.id FROM jobs j
    WHERE j.id = %(id)s AND j.enabled AND NOT (j.paused OR j.project_paused) AND j.execution_mode = 'http'
), picked AS (
    -- the first 1000 in claim order (job_runs_held); the Reaper frees the rest (migration 0020)
    SELECT x.id FROM runnable j CROSS JOIN LATERAL (
        SELECT x.id FROM job_runs x WHERE x.job_id = j.id AND x.status = 'queued' AND x.held = 'job'
        ORDER BY x.priority DESC, x.created_at LIMIT 1000) x
), freed AS (
    UPDATE job_runs r SET held = NULL
    WHERE r.id = ANY(ARRAY(SELECT id FROM picked)) AND r.status = 'queued' AND r.held = 'job'
    RETURNING r.id
), left_behind AS (
    INSERT INTO job_releases (job_id)
    SELECT j.id FROM runnable j WHERE (SELECT count(*) FROM picked) >= 1000
    ON CONFLICT DO NOTHING
)
SELECT (SELECT count(*) FROM freed) AS freed,
       (SELECT count(*) FROM (SELECT pg_notify('strait_queue_wake', '')
                              WHERE EXISTS (SELECT 1 FROM freed) OR EXISTS (SELECT 1 FROM caps WHERE ready)) w) AS woke

-- name: insert_job_version
-- Snapshot the outgoing version of a job (written with the update that replaces it).
INSERT INTO job_versions (id, job_id, version, version_id, backwards_compatible, snapshot)
VALUES (%(id)s, %(job_id)s, %(version)s, %(version_id)s, %(backwards_compatible)s, %(snapshot)s)

-- name: get_job
-- One job by id.
SELECT * FROM jobs WHERE id = %(id)s

-- name: list_jobs
-- A project's jobs, newest first; optional exact slug and tag filters.
SELECT * FROM jobs
WHERE project_id = %(project_id)s
  AND (%(slug)s::text IS NULL OR slug = %(slug)s)
  AND (%(tag_key)s::text IS NULL OR (tags ? %(tag_key)s AND (%(tag_value)s::text IS NULL
                                                            OR tags ->> %(tag_key)s = %(tag_value)s)))
  AND (%(after_ts)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_ts)s, COALESCE(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff')))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: job_has_active_runs
-- Delete guard: does the job have a run that is not terminal?
SELECT EXISTS (SELECT 1 FROM job_runs WHERE job_id = %(id)s
               AND NOT status = ANY({terminal}))

-- name: delete_job
-- Remove a job with its versions and finished runs, and those runs' own rows: the per-run tables
-- have no foreign key (none is paid on their insert paths), so the cascade would leave them orphaned.
-- Usage rows stay: they are the project's spend, which its daily budget counts.
WITH runs AS (
    SELECT id FROM job_runs WHERE job_id = %(id)s
), events AS (
    DELETE FROM run_events e USING runs WHERE e.run_id = runs.id
), checkpoints AS (
    DELETE FROM run_checkpoints c USING runs WHERE c.run_id = runs.id
), outputs AS (
    DELETE FROM run_outputs o USING runs WHERE o.run_id = runs.id
), state AS (
    DELETE FROM run_state s USING runs WHERE s.run_id = runs.id
), tool_calls AS (
    DELETE FROM run_tool_calls t USING runs WHERE t.run_id = runs.id
), waits AS (
    DELETE FROM event_triggers t USING runs WHERE t.job_run_id = runs.id
)
DELETE FROM jobs WHERE id = %(id)s

-- name: list_job_versions
-- A job's version snapshots, newest version first.
SELECT * FROM job_versions
WHERE job_id = %(job_id)s AND (%(after_version)s::int IS NULL OR version < %(after_version)s)
ORDER BY version DESC
LIMIT %(limit)s

-- name: get_job_version
-- One snapshot by its ver_ id.
SELECT * FROM job_versions WHERE job_id = %(job_id)s AND version_id = %(version_id)s

-- name: job_project_state
-- A job's write reads its project's pause under a share lock: a project pause committing meanwhile
-- either waits for this job (and then updates it too) or is seen here (migration 0007).
SELECT paused FROM projects WHERE id = %(project_id)s FOR SHARE

-- name: job_environment
-- The environment a job's write binds it to, if it is one of the job's project, under a share lock
-- (its update or delete waits for the job, then sees it); its ENDPOINT_URL is the job's override.
SELECT id, variables ->> 'ENDPOINT_URL' AS endpoint_override FROM environments
WHERE id = %(id)s AND project_id = %(project_id)s
FOR SHARE

-- name: job_group
-- The group a job's write puts it in, if it is one of the job's project, under a share lock (a
-- delete of the group waits for the job, then unbinds it).
SELECT id FROM job_groups WHERE id = %(id)s AND project_id = %(project_id)s FOR SHARE

-- name: release_jobs_runs
-- Resumed jobs (a group's, a project's): their runs held as 'job' go back to the claim index, for
-- those that can run now; wakes the pollers if any did (the set-based sync_job_gates of a resume).
-- At most 1000 runs in all here; if it took that many, every one of these jobs that had held runs is
-- left to the Reaper (migration 0020; one with none left costs it a pass that finds nothing).
WITH runnable AS (
    SELECT j.id FROM jobs j
    WHERE j.id = ANY(%(ids)s::uuid[]) AND j.enabled AND NOT (j.paused OR j.project_paused)
      AND j.execution_mode = 'http'
), picked AS (
    SELECT x.id FROM runnable j CROSS JOIN LATERAL (
        SELECT x.id FROM job_runs x WHERE x.job_id = j.id AND x.status = 'queued' AND x.held = 'job'
        ORDER BY x.priority DESC, x.created_at LIMIT 1000) x
    LIMIT 1000
), freed AS (
    UPDATE job_runs r SET held = NULL
    WHERE r.id = ANY(ARRAY(SELECT id FROM picked)) AND r.status = 'queued' AND r.held = 'job'
    RETURNING r.id
), left_behind AS (
    INSERT INTO job_releases (job_id)
    SELECT j.id FROM runnable j
    WHERE (SELECT count(*) FROM picked) >= 1000
      AND EXISTS (SELECT 1 FROM job_runs x WHERE x.job_id = j.id AND x.status = 'queued' AND x.held = 'job')
    ON CONFLICT DO NOTHING
)
SELECT (SELECT count(*) FROM freed) AS freed,
       (SELECT count(*) FROM (SELECT pg_notify('strait_queue_wake', '') WHERE EXISTS (SELECT 1 FROM freed)) w) AS woke

-- ===================================================================== environments (migration 0007)

-- name: insert_environment
-- A new environment of a project.
INSERT INTO environments (id, project_id, name, slug, description, variables)
VALUES (%(id)s, %(project_id)s, %(name)s, %(slug)s, %(description)s, %(variables)s)
RETURNING *

-- name: get_environment
-- One environment by id.
SELECT * FROM environments WHERE id = %(id)s

-- name: list_environments
-- A project's environments, newest first.
SELECT * FROM environments
WHERE project_id = %(project_id)s
  AND (%(after_ts)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_ts)s, COALESCE(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff')))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: update_environment
-- Write an environment's new fields (the row stays locked until the transaction's end).
UPDATE environments SET name = %(name)s, slug = %(slug)s, description = %(description)s,
    variables = %(variables)s, updated_at = now()
WHERE id = %(id)s
RETURNING *

-- name: sync_environment_jobs
-- In an environment's write: every job bound to it takes its ENDPOINT_URL (or none) as override.
UPDATE jobs j SET endpoint_override = e.variables ->> 'ENDPOINT_URL'
FROM environments e
WHERE e.id = %(id)s AND j.environment_id = e.id::text AND j.project_id = e.project_id
  AND j.endpoint_override IS DISTINCT FROM e.variables ->> 'ENDPOINT_URL'

-- name: lock_environment
-- Delete guard: the environment, locked (a job binding it meanwhile waits, then finds it gone).
SELECT id, project_id FROM environments WHERE id = %(id)s FOR UPDATE

-- name: environment_jobs
-- Delete guard: how many jobs of its project are bound to the environment.
SELECT count(*) AS n FROM jobs WHERE environment_id = %(id)s::text AND project_id = %(project_id)s

-- name: delete_environment
-- Remove an environment (no job is bound to it: environment_jobs said so under its lock).
DELETE FROM environments WHERE id = %(id)s

-- ===================================================================== job groups (migration 0007)

-- name: insert_job_group
-- A new job group of a project.
INSERT INTO job_groups (id, project_id, name, description)
VALUES (%(id)s, %(project_id)s, %(name)s, %(description)s)
RETURNING *

-- name: get_job_group
-- One job group by id.
SELECT * FROM job_groups WHERE id = %(id)s

-- name: list_job_groups
-- A project's job groups, newest first.
SELECT * FROM job_groups
WHERE project_id = %(project_id)s
  AND (%(after_ts)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_ts)s, COALESCE(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff')))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: update_job_group
-- Rename or redescribe a group.
UPDATE job_groups SET name = %(name)s, description = %(description)s, updated_at = now()
WHERE id = %(id)s
RETURNING *

-- name: lock_job_group
-- Delete: the group, locked (a job joining it meanwhile waits, then finds it gone).
SELECT id, project_id FROM job_groups WHERE id = %(id)s FOR UPDATE

-- name: unbind_group_jobs
-- Delete: the group's jobs leave it (group_id NULL), in the transaction that deletes it.
UPDATE jobs SET group_id = NULL WHERE group_id = %(id)s::text AND project_id = %(project_id)s

-- name: delete_job_group
-- Remove a group (its jobs were unbound in this transaction).
DELETE FROM job_groups WHERE id = %(id)s

-- name: list_group_jobs
-- A group's jobs, newest first.
SELECT * FROM jobs
WHERE group_id = %(group_id)s::text AND project_id = %(project_id)s
  AND (%(after_ts)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_ts)s, COALESCE(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff')))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: set_group_paused
-- Pause or resume every job of a group that is not so already, as set_job_paused does one job
-- (a job paused before keeps its paused_at and reason). The jobs changed come back.
UPDATE jobs SET paused = %(paused)s,
    paused_at = CASE WHEN %(paused)s THEN now() END,
    pause_reason = CASE WHEN %(paused)s THEN %(reason)s END,
    updated_at = now()
WHERE group_id = %(id)s::text AND project_id = %(project_id)s AND paused <> %(paused)s
RETURNING id

-- name: group_stats
-- A group's jobs (how many, how many paused) and their runs by status.
SELECT count(*) AS jobs, count(*) FILTER (WHERE j.paused OR j.project_paused) AS paused_jobs,
       COALESCE((SELECT jsonb_object_agg(s.status, s.n) FROM (
           SELECT r.status, count(*) AS n FROM jobs g JOIN job_runs r ON r.job_id = g.id
           WHERE g.group_id = %(id)s::text AND g.project_id = %(project_id)s
           GROUP BY r.status) s), '{}') AS runs
FROM jobs j
WHERE j.group_id = %(id)s::text AND j.project_id = %(project_id)s

-- ===================================================================== project pause (migration 0007)

-- name: set_project_paused
-- Pause or resume a project: its jobs take no triggers, fire no ticks, dispatch nothing while it is.
-- Pausing a paused project keeps its first paused_at.
UPDATE projects SET paused = %(paused)s,
    paused_at = CASE WHEN %(paused)s THEN COALESCE(paused_at, now()) END,
    pause_reason = CASE WHEN %(paused)s THEN %(reason)s END,
    updated_at = now()
WHERE id = %(id)s
RETURNING *

-- name: sync_project_jobs
-- In a project's pause or resume: its jobs carry the project's state (the claim reads it there).
UPDATE jobs SET project_paused = %(paused)s
WHERE project_id = %(id)s AND project_paused <> %(paused)s
RETURNING id

-- ===================================================================== job dependencies (engine.md §2.8)

-- name: lock_jobs_for_dependency
-- Dependency writes of two jobs serialise on both rows (in id order: never a cycle of waits), so
-- two concurrent edges cannot close a cycle that neither saw.
SELECT id, project_id FROM jobs WHERE id = ANY(%(ids)s::uuid[]) ORDER BY id FOR NO KEY UPDATE

-- name: dependency_would_cycle
-- Would job -> depends_on close a cycle: does depends_on already depend on job, at any depth?
WITH RECURSIVE up AS (
    SELECT depends_on_job_id AS id, 1 AS depth FROM job_dependencies WHERE job_id = %(depends_on)s
    UNION
    SELECT d.depends_on_job_id, up.depth + 1 FROM job_dependencies d JOIN up ON d.job_id = up.id
    WHERE up.depth < 100
)
SELECT EXISTS (SELECT 1 FROM up WHERE id = %(job_id)s) OR %(depends_on)s = %(job_id)s AS cycle

-- name: insert_dependency
-- A new edge; the job's cue for the trigger path is set in the same statement.
WITH dep AS (
    INSERT INTO job_dependencies (id, job_id, depends_on_job_id, condition)
    VALUES (%(id)s, %(job_id)s, %(depends_on)s, %(condition)s)
    RETURNING *
), cue AS (
    UPDATE jobs SET has_dependencies = true WHERE id = %(job_id)s AND NOT has_dependencies RETURNING id
)
SELECT dep.*, (SELECT count(*) FROM cue) AS cued FROM dep

-- name: list_dependencies
-- A job's dependencies, oldest first.
SELECT * FROM job_dependencies WHERE job_id = %(job_id)s ORDER BY created_at, id

-- name: delete_dependency
-- Remove an edge; the job's cue follows whether any edge is left.
WITH gone AS (
    DELETE FROM job_dependencies WHERE id = %(id)s AND job_id = %(job_id)s RETURNING id
), cue AS (
    UPDATE jobs SET has_dependencies = EXISTS (
        SELECT 1 FROM job_dependencies d WHERE d.job_id = %(job_id)s AND d.id <> %(id)s)
    WHERE id = %(job_id)s AND EXISTS (SELECT 1 FROM gone) RETURNING id
)
SELECT count(*) AS n, (SELECT count(*) FROM cue) AS cued FROM gone

-- name: dependencies_met
-- For each key (NULL: a run without one), whether every dependency of the job is met now.
SELECT k.n, NOT EXISTS (
    SELECT 1 FROM job_dependencies d
    WHERE d.job_id = %(job_id)s AND NOT strait_dependency_met(d.depends_on_job_id, d.condition, k.key)) AS met
FROM unnest(%(keys)s::text[]) WITH ORDINALITY AS k(key, n)

-- name: mark_dependency_waits
-- The runs just inserted `waiting` for their dependencies (same transaction as their INSERT).
UPDATE job_runs SET awaits_dependencies = true WHERE id = ANY(%(ids)s::uuid[]) AND status = 'waiting'

-- name: dependency_status
-- A run's dependencies as they stand: each upstream job, its condition, and whether it is met.
SELECT d.id, d.depends_on_job_id, d.condition,
       strait_dependency_met(d.depends_on_job_id, d.condition,
                             strait_run_dependency_key(r.idempotency_key, r.metadata, r.triggered_by)) AS met
FROM job_runs r JOIN job_dependencies d ON d.job_id = r.job_id
WHERE r.id = %(id)s
ORDER BY d.created_at, d.id

-- name: release_dependency_waits_of
-- These waiting runs go to the queue if their dependencies are met now: the trigger's second look
-- after its commit (an upstream run that ended while the trigger was writing did not see them).
-- transition released: waiting -> queued
WITH cand AS (
    SELECT r.id FROM job_runs r
    WHERE r.id = ANY(%(ids)s::uuid[]) AND r.status = 'waiting' AND r.awaits_dependencies
      AND NOT EXISTS (
          SELECT 1 FROM job_dependencies d WHERE d.job_id = r.job_id
            AND NOT strait_dependency_met(d.depends_on_job_id, d.condition,
                                          strait_run_dependency_key(r.idempotency_key, r.metadata, r.triggered_by)))
    ORDER BY r.id
    FOR UPDATE SKIP LOCKED
), released AS (
    UPDATE job_runs r SET status = 'queued', awaits_dependencies = false
    FROM cand WHERE r.id = cand.id AND {guard released} AND r.awaits_dependencies
    RETURNING r.id, 'waiting'::text AS from_status, r.status AS to_status, r.attempt
){after released}{wake released}
SELECT count(*) AS n, (SELECT count(*) FROM released_wake) AS woke FROM released

-- name: release_dependency_waits
-- The Reaper's backstop: waiting runs whose dependencies are met (an upstream run's end releases
-- its dependents in its own statement; two upstream runs ending in one statement each see the
-- other still running, and a trigger racing an upstream end is looked at again here): the first
-- `limit` waits of the waits' index are looked at per pass.
-- transition released: waiting -> queued
WITH looked AS (  -- at most `limit` waits are looked at per pass (their index, oldest first per job)
    SELECT r.id FROM job_runs r
    WHERE r.status = 'waiting' AND r.awaits_dependencies
    ORDER BY r.job_id, r.created_at
    LIMIT %(limit)s
), cand AS (
    SELECT r.id FROM job_runs r JOIN looked ON looked.id = r.id
    WHERE r.status = 'waiting' AND r.awaits_dependencies
      AND NOT EXISTS (
          SELECT 1 FROM job_dependencies d WHERE d.job_id = r.job_id
            AND NOT strait_dependency_met(d.depends_on_job_id, d.condition,
                                          strait_run_dependency_key(r.idempotency_key, r.metadata, r.triggered_by)))
    -- no ORDER BY: SKIP LOCKED never waits, and sorts are priced out on these connections, so an
    -- ORDER BY r.id walked the whole primary key of job_runs (20 ms a pass with 20,000 runs)
    FOR UPDATE OF r SKIP LOCKED
), released AS (
    UPDATE job_runs r SET status = 'queued', awaits_dependencies = false
    FROM cand WHERE r.id = cand.id AND {guard released} AND r.awaits_dependencies
    RETURNING r.id, 'waiting'::text AS from_status, r.status AS to_status, r.attempt
){after released}{wake released}
SELECT count(*) AS n, (SELECT count(*) FROM released_wake) AS woke FROM released

-- name: fail_expired_dependency_waits
-- A run whose dependencies were not met before its TTL ran out fails (it never started; a wait
-- that cannot end would otherwise be kept forever). One bounded batch.
-- transition gave_up: waiting -> failed
WITH due AS (
    SELECT id FROM job_runs
    WHERE status = 'waiting' AND awaits_dependencies AND expires_at <= now()
    ORDER BY job_id, created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), gave_up AS (
    UPDATE job_runs r SET status = 'failed', awaits_dependencies = false, finished_at = now(),
        error = 'job dependencies not met before the run expired', error_class = 'dependency'
    FROM due WHERE r.id = due.id AND {guard gave_up}
    RETURNING r.id, 'waiting'::text AS from_status, r.status AS to_status, r.attempt, r.parent_run_id,
              r.job_id, r.error
){after gave_up}
SELECT count(*) AS n FROM gave_up

-- ===================================================================== runs (API)

-- name: insert_runs
-- Enqueue many runs in one statement; an idempotency key already taken skips that row only.
-- One NOTIFY per statement, saying how many runs it queued: one poller takes a few (actors/poller.py).
-- The arrays go in binary (%%b): a text array is escaped element by element (dumping: 20 -> 9 us a run).
-- Whether a project counts its runs for quotas is looked up once per project of the statement, not per
-- run (the function call alone cost 3.7 to 4.5 us a run); MATERIALIZED, or it would be inlined per row.
WITH quota AS MATERIALIZED (
    SELECT p.project_id, strait_quota_counted(p.project_id) AS counted
    FROM (SELECT DISTINCT x.project_id FROM unnest(%(project_id)b::text[]) AS x(project_id)) p
), ins AS (
    INSERT INTO job_runs (id, job_id, project_id, status, priority, payload, payload_hash, tags, metadata,
                          triggered_by, scheduled_at, expires_at, idempotency_key, concurrency_key, batch_id,
                          job_version, job_version_id, created_by, debug_mode, quota_counted)
    SELECT u.id, u.job_id, u.project_id, u.status, u.priority, u.payload, u.payload_hash, u.tags, u.metadata,
           u.triggered_by, u.scheduled_at,
           GREATEST(now(), COALESCE(u.scheduled_at, now())) + make_interval(secs => u.ttl),
           u.idempotency_key, u.concurrency_key, u.batch_id, u.job_version, u.job_version_id, u.created_by,
           u.debug_mode, (SELECT q.counted FROM quota q WHERE q.project_id = u.project_id)
    FROM unnest(%(id)b::uuid[], %(job_id)b::uuid[], %(project_id)b::text[], %(status)b::text[],
                %(priority)b::smallint[], %(payload)b::json[], %(payload_hash)b::text[], %(tags)b::jsonb[],
                %(metadata)b::jsonb[], %(triggered_by)b::text[], %(scheduled_at)b::timestamptz[],
                %(ttl)b::float8[], %(idempotency_key)b::text[], %(concurrency_key)b::text[],
                %(batch_id)b::uuid[], %(job_version)b::int[], %(job_version_id)b::text[],
                %(created_by)b::text[], %(debug_mode)b::bool[])
        AS u(id, job_id, project_id, status, priority, payload, payload_hash, tags, metadata, triggered_by,
             scheduled_at, ttl, idempotency_key, concurrency_key, batch_id, job_version, job_version_id,
             created_by, debug_mode)
    -- {arbiter
    ON CONFLICT (job_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    -- arbiter}
    RETURNING id, status
), wake AS (
    SELECT pg_notify('strait_queue_wake', q.n::text)
    FROM (SELECT count(*) AS n FROM ins WHERE status = 'queued' HAVING count(*) > 0) q
)
SELECT ins.id, ins.status, (SELECT count(*) FROM wake) AS woke FROM ins

-- name: insert_runs_unkeyed
-- insert_runs for a batch in which no run has an idempotency key (none of them can conflict): without
-- ON CONFLICT, which makes every row a speculative insertion of its own (WAL record included): 3 to 5 %
-- of the statement's CPU in bulk, 4 to 11 % of a one-run statement's.
-- {arbiter
-- arbiter}

-- name: run_by_idempotency_key
-- The run holding an idempotency key, with what decides whether the key still applies (24 h).
SELECT id, status, finished_at, (finished_at IS NOT NULL AND finished_at < now() - interval '24 hours') AS stale
FROM job_runs WHERE job_id = %(job_id)s AND idempotency_key = %(key)s

-- name: run_statuses
-- Which of these runs exist, and their status (did an INSERT whose answer was lost commit?).
SELECT id, status FROM job_runs WHERE id = ANY(%(ids)s)

-- name: release_idempotency_key
-- A key whose run ended over 24 h ago (or expired) is free again: move it into the old run's metadata.
UPDATE job_runs
SET metadata = metadata || jsonb_build_object('released_idempotency_key', idempotency_key),
    idempotency_key = NULL
WHERE id = %(id)s AND idempotency_key IS NOT NULL

-- name: lock_job
-- Admission guard for jobs with a dedup window or rate limit: serialises their triggers (NO KEY:
-- the foreign-key checks of other inserts of the job need not wait for it).
SELECT id FROM jobs WHERE id = %(id)s FOR NO KEY UPDATE

-- name: recent_run_with_payload
-- Dedup window: the newest run of the job with the same canonical payload inside the window.
SELECT id, status FROM job_runs
WHERE job_id = %(job_id)s AND payload_hash = %(payload_hash)s
  AND created_at >= now() - make_interval(secs => %(window)s)
ORDER BY created_at DESC
LIMIT 1

-- name: count_recent_runs
-- Job rate limit: runs created inside the window, and when the oldest of them leaves it (seconds).
SELECT count(*) AS n, EXTRACT(EPOCH FROM min(created_at) + make_interval(secs => %(window)s) - now()) AS wait
FROM job_runs WHERE job_id = %(job_id)s AND created_at >= now() - make_interval(secs => %(window)s)

-- name: lock_project_quota
-- Admission guard for projects with a queued or executing quota: serialises their triggers.
SELECT max_queued_runs, max_executing_runs FROM project_quotas
WHERE project_id = %(project_id)s FOR NO KEY UPDATE

-- name: count_active_runs
-- A project's runs waiting to run and running, each count bounded by its quota (at most that many
-- index entries are read; a cap of 0 reads none).
SELECT strait_count_active(%(project_id)s, 'queued', %(queued_cap)s)
       + strait_count_active(%(project_id)s, 'delayed', %(queued_cap)s) AS queued,
       strait_count_active(%(project_id)s, 'executing', %(executing_cap)s)
       + strait_count_active(%(project_id)s, 'dequeued', %(executing_cap)s) AS executing

-- name: lock_rate_key
-- Admission guard for one named rate-limit key of a project (until the transaction ends).
SELECT pg_advisory_xact_lock(hashtextextended(%(project_id)s || chr(31) || %(key)s, 0))

-- name: count_rate_hits
-- A named key's hits inside its window, and when the oldest of them leaves it (seconds).
SELECT COALESCE(sum(n), 0) AS n, EXTRACT(EPOCH FROM min(at) + make_interval(secs => %(window)s) - now()) AS wait
FROM rate_limit_hits
WHERE project_id = %(project_id)s AND key = %(key)s AND at >= now() - make_interval(secs => %(window)s)

-- name: insert_rate_hits
-- The hits of one admitted trigger: `n` runs against each of the job's named keys.
INSERT INTO rate_limit_hits (project_id, key, n)
SELECT %(project_id)s, k, %(n)s FROM unnest(%(keys)s::text[]) AS k

-- name: get_run
-- One run by id.
SELECT * FROM job_runs WHERE id = %(id)s

-- name: list_runs
-- A project's runs, newest first, with the contract's optional filters.
SELECT * FROM job_runs
WHERE project_id = %(project_id)s
  AND (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s))
  AND (%(job_id)s::uuid IS NULL OR job_id = %(job_id)s)
  AND (%(batch_id)s::uuid IS NULL OR batch_id = %(batch_id)s)
  AND (%(triggered_by)s::text IS NULL OR triggered_by = %(triggered_by)s)
  AND (%(execution_mode)s::text IS NULL OR execution_mode = %(execution_mode)s)
  AND (%(error_class)s::text IS NULL OR error_class = %(error_class)s)
  AND (%(tag_key)s::text IS NULL OR (tags ? %(tag_key)s AND (%(tag_value)s::text IS NULL
                                                            OR tags ->> %(tag_key)s = %(tag_value)s)))
  AND (%(meta_key)s::text IS NULL OR (metadata ? %(meta_key)s AND (%(meta_value)s::text IS NULL
                                                            OR metadata ->> %(meta_key)s = %(meta_value)s)))
  AND (%(payload_contains)s::jsonb IS NULL OR payload::jsonb @> %(payload_contains)s)
  AND (%(after_ts)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_ts)s, COALESCE(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff')))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: list_dead_letter
-- The project's dead-letter queue, newest first.
SELECT * FROM job_runs
WHERE project_id = %(project_id)s AND status = 'dead_letter'
  AND (%(after_ts)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_ts)s, COALESCE(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff')))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: cancel_run
-- Cancel a run that is not terminal, and its descendants that are not (api.md §4.4); leases are
-- cleared so a dispatch in flight cannot record a result afterwards. The run itself comes back.
-- transition moved: * -> canceled
WITH RECURSIVE tree AS (
    SELECT %(id)s::uuid AS id, 0 AS depth
    UNION
    SELECT c.id, tree.depth + 1 FROM job_runs c JOIN tree ON c.parent_run_id = tree.id WHERE tree.depth < 20
), cur AS (
    SELECT r.id, r.status AS from_status FROM job_runs r JOIN tree ON tree.id = r.id
    WHERE r.id = %(id)s OR NOT r.status = ANY({terminal})
    ORDER BY r.id  -- as every batch writer of job_runs locks its runs
    FOR UPDATE OF r
), moved AS (
    UPDATE job_runs r SET status = 'canceled', finished_at = now(), error = 'canceled by user', {unlease}
    FROM cur WHERE r.id = cur.id AND {guard moved}
    RETURNING r.*, cur.from_status, r.status AS to_status, %(actor)s::text AS actor
){after moved}
SELECT * FROM moved WHERE id = %(id)s

-- name: replay_run
-- A new run from a finished one: same payload, tags, priority and job version; attempt 1; queued.
-- A run of a job with dependencies waits while one is unmet (migration 0012): its key is its metadata's.
WITH src AS (
    SELECT r.*, j.effective_run_ttl_secs AS ttl,
           strait_entry_status(j.has_dependencies, j.id, r.metadata ->> 'dependency_key') AS entry
    FROM job_runs r JOIN jobs j ON j.id = r.job_id
    WHERE r.id = %(id)s
), ins AS (
    INSERT INTO job_runs (id, job_id, project_id, status, priority, payload, payload_hash, tags, metadata,
                          triggered_by, expires_at, job_version, job_version_id, created_by, replayed_run_id,
                          quota_counted, awaits_dependencies)
    SELECT %(new_id)s, job_id, project_id, entry, priority, payload, payload_hash, tags, metadata, 'manual',
           now() + make_interval(secs => ttl), job_version, job_version_id, %(actor)s, id,
           strait_quota_counted(project_id), entry = 'waiting'
    FROM src
    RETURNING *
), wake AS (
    SELECT pg_notify('strait_queue_wake', '') FROM (SELECT 1 FROM ins WHERE status = 'queued' LIMIT 1) q
)
SELECT ins.*, (SELECT count(*) FROM wake) AS woke FROM ins

-- name: list_run_events
-- A run's events, oldest first, optional level/type filters.
SELECT * FROM run_events
WHERE run_id = %(run_id)s
  AND (%(level)s::text IS NULL OR level = %(level)s)
  AND (%(type)s::text IS NULL OR type = %(type)s)
  -- the cursor is "ts|id" as we hand it out, or the contract's bare timestamp: honour both
  AND (CASE WHEN %(after_id)s::bigint IS NOT NULL THEN id > %(after_id)s
            ELSE %(after_ts)s::timestamptz IS NULL OR created_at > %(after_ts)s END)
ORDER BY id
LIMIT %(limit)s

-- name: dlq_replay
-- Put dead-lettered runs back in the queue in place (by ids, or a project's oldest N): attempt 1,
-- errors and times cleared, a fresh TTL. One statement for one run or five hundred.
-- transition moved: dead_letter -> queued
WITH pick AS (
    SELECT r.id FROM job_runs r
    WHERE r.status = 'dead_letter'
      AND (%(project_id)s::text IS NULL OR r.project_id = %(project_id)s)
      AND (%(ids)s::uuid[] IS NULL OR r.id = ANY(%(ids)s))
    ORDER BY r.created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE job_runs r SET status = 'queued', attempt = 1, error = NULL, error_class = NULL, result = NULL,
        started_at = NULL, finished_at = NULL, heartbeat_at = NULL, next_retry_at = NULL,
        expires_at = now() + make_interval(secs => j.effective_run_ttl_secs)
    FROM pick, jobs j
    WHERE r.id = pick.id AND j.id = r.job_id AND {guard moved}
    RETURNING r.*, 'dead_letter'::text AS from_status, r.status AS to_status, %(actor)s::text AS actor,
              'dlq replay'::text AS note
){after moved}{wake moved}
SELECT moved.*, (SELECT count(*) FROM moved_wake) AS woke FROM moved

-- ===================================================================== debounce and batch windows (migration 0008)
-- A windowed trigger joins the one delayed run of its (job, window key), found by the partial unique
-- index job_runs_window, or makes it: one INSERT … ON CONFLICT … DO UPDATE, no lock across round trips.
-- A conflicting run locked by a claim that promotes it is, once that claim commits, out of the index:
-- PostgreSQL re-checks the conflict after the wait, and the INSERT makes a new run.

-- name: debounce_trigger
-- Debounce: a new delayed run due at the end of the window, or the waiting one takes this trigger's payload
-- (tags, metadata, priority) and moves to now + window, never past created_at + max_delay, never earlier;
-- its expiry moves with it. Returns the run; its id is this trigger's own when the trigger made it.
INSERT INTO job_runs AS r (id, job_id, project_id, status, priority, payload, payload_hash, tags, metadata,
                           triggered_by, scheduled_at, expires_at, concurrency_key, batch_id, job_version,
                           job_version_id, created_by, window_key, quota_counted)
VALUES (%(id)s, %(job_id)s, %(project_id)s, 'delayed', %(priority)s, %(payload)s::json, %(payload_hash)s,
        %(tags)s, %(metadata)s, %(triggered_by)s, %(scheduled_at)s,
        %(scheduled_at)s + make_interval(secs => %(ttl)s), %(concurrency_key)s, %(batch_id)s, %(job_version)s,
        %(job_version_id)s, %(created_by)s, %(window_key)s, strait_quota_counted(%(project_id)s))
ON CONFLICT (job_id, window_key) WHERE status = 'delayed' AND window_key IS NOT NULL DO UPDATE
SET payload = EXCLUDED.payload, payload_hash = EXCLUDED.payload_hash, tags = EXCLUDED.tags,
    metadata = EXCLUDED.metadata, priority = EXCLUDED.priority,
    scheduled_at = GREATEST(r.scheduled_at,
                            LEAST(EXCLUDED.scheduled_at, r.created_at + make_interval(secs => %(max_delay)s))),
    expires_at = GREATEST(r.scheduled_at,
                          LEAST(EXCLUDED.scheduled_at, r.created_at + make_interval(secs => %(max_delay)s)))
                 + (EXCLUDED.expires_at - EXCLUDED.scheduled_at)
WHERE r.status = 'delayed'
RETURNING r.id, r.status

-- name: batch_trigger
-- Batch: a new run holding {"items":[<payload>]} (delayed until the window ends; queued at once when the
-- batch size is 1), or the waiting one appends the payload, if it has room (items and bytes). The payload
-- stays canonical text (items are canonical; the service checks that joining them is canonical) and its
-- hash is that text's SHA-256, as for every payload. No row back: the run is full, flush it and try again.
-- A run queued at once of a job with dependencies waits instead while one is unmet (migration 0012).
WITH entering AS (
    SELECT CASE WHEN %(status)s = 'queued'
                THEN strait_entry_status(j.has_dependencies, j.id,
                                         strait_run_dependency_key(NULL, %(metadata)s, %(triggered_by)s))
                ELSE %(status)s END AS status
    FROM (SELECT 1) one LEFT JOIN jobs j ON j.id = %(job_id)s
), up AS (
    INSERT INTO job_runs AS r (id, job_id, project_id, status, priority, payload, payload_hash, tags, metadata,
                               triggered_by, scheduled_at, expires_at, concurrency_key, batch_id, job_version,
                               job_version_id, created_by, window_key, window_items, quota_counted,
                               awaits_dependencies)
    SELECT %(id)s, %(job_id)s, %(project_id)s, e.status, %(priority)s, %(payload)s::json, %(payload_hash)s,
           %(tags)s, %(metadata)s, %(triggered_by)s, %(scheduled_at)s,
           %(scheduled_at)s + make_interval(secs => %(ttl)s), %(concurrency_key)s, %(batch_id)s, %(job_version)s,
           %(job_version_id)s, %(created_by)s, %(window_key)s, 1, strait_quota_counted(%(project_id)s),
           e.status = 'waiting'
    FROM entering e
    ON CONFLICT (job_id, window_key) WHERE status = 'delayed' AND window_key IS NOT NULL DO UPDATE
    SET payload = (left(r.payload::text, -2) || ',' || %(item)s::text || ']}')::json,
        payload_hash = encode(sha256(convert_to(left(r.payload::text, -2) || ',' || %(item)s::text || ']}', 'UTF8')),
                              'hex'),
        window_items = r.window_items + 1
    WHERE r.status = 'delayed' AND r.window_items < %(max_items)s
      AND octet_length(r.payload::text) + %(item_bytes)s + 1 <= %(max_bytes)s
    RETURNING r.id, r.status, r.window_items
), wake AS (
    SELECT pg_notify('strait_queue_wake', '') FROM (SELECT 1 FROM up WHERE status = 'queued' LIMIT 1) q
)
SELECT up.id, up.status, up.window_items, (SELECT count(*) FROM wake) AS woke FROM up

-- name: flush_batch
-- Queue a batch at once: the waiting batch of (job, window key) that is full (batch_max_size items, or no
-- room for item_bytes more). Locked and re-read first: a batch flushed meanwhile, or a fresh one that
-- has room, is left alone. A batch of a job with dependencies waits while one is unmet (migration 0012).
-- transition flushed: delayed -> queued waiting
WITH filled AS (
    SELECT id, strait_run_dependency_key(idempotency_key, metadata, triggered_by) AS dkey FROM job_runs
    WHERE job_id = %(job_id)s AND window_key = %(window_key)s AND status = 'delayed'
      AND (window_items >= %(max_items)s OR octet_length(payload::text) + %(item_bytes)s + 1 > %(max_bytes)s)
    FOR UPDATE
), entering AS (
    SELECT f.id, strait_entry_status(j.has_dependencies, j.id, f.dkey) AS to_status
    FROM filled f JOIN jobs j ON j.id = %(job_id)s
), flushed AS (
    UPDATE job_runs r SET status = e.to_status, awaits_dependencies = e.to_status = 'waiting'
    FROM entering e WHERE r.id = e.id AND {guard flushed}
    RETURNING r.id, 'delayed'::text AS from_status, r.status AS to_status, r.attempt
){after flushed}{wake flushed}
SELECT flushed.id, flushed.to_status AS status, (SELECT count(*) FROM flushed_wake) AS woke FROM flushed

-- ===================================================================== SDK plane (api.md §4.9)
-- A call carries its run token's (run id, attempt, lease): a write applies only while the run is
-- executing or waiting with that attempt, under that lease (the dispatch's, or the one that parked
-- it). Calls of one kind that arrive together share a statement: `v` holds one row per call with
-- its ordinal `n`, and every call learns its own verdict from the row for its `n`.

-- name: sdk_run
-- One run as an SDK call needs it: what the token is checked against, and what the call reads.
SELECT id, job_id, project_id, status, attempt, COALESCE(lease_id, parked_lease_id) AS token_lease,
       payload::text AS payload, lineage_depth, priority, parent_run_id, metadata, tags
FROM job_runs WHERE id = %(id)s

-- name: sdk_heartbeat
-- Heartbeats: heartbeat_at now, and an executing run's lease moves forward, so a long call stays
-- the run's even when the worker that dispatched it is gone (and a parked run's open park stays
-- open). The arrays go in binary (%%b), as record_outcomes' do: no text escaping of each element.
-- Every batched SDK statement reads and writes job_runs one index probe per call, whatever the
-- planner's statistics say (young ones made it hash all of job_runs for a batch), and joins no two
-- CTEs of the batch with each other (a nested loop over two CTEs of 500 calls reads 250,000 rows):
-- `cur` locks each call's run in id order and decides the call, and everything after reads it.
WITH v AS (
    SELECT * FROM unnest(%(ids)b::uuid[], %(attempts)b::int[], %(leases)b::uuid[])
        WITH ORDINALITY AS v(id, attempt, lease_id, n)
), cur AS (  -- each call's run, locked in id order (as every batch writer of job_runs locks its runs)
    SELECT v.n, v.id, r.status, r.attempt, r.token_lease,
           (r.attempt = v.attempt AND r.token_lease = v.lease_id
            AND r.status = ANY('{executing,waiting}'::text[])) IS TRUE AS ok
    FROM (SELECT * FROM v ORDER BY v.id, v.n) v
    LEFT JOIN LATERAL (SELECT x.status, x.attempt, COALESCE(x.lease_id, x.parked_lease_id) AS token_lease
                       FROM job_runs x WHERE x.id = v.id FOR NO KEY UPDATE) r ON true
), beat AS (
    UPDATE job_runs r SET heartbeat_at = now(),
        lease_expires_at = CASE WHEN r.lease_id IS NULL THEN NULL
                                ELSE GREATEST(r.lease_expires_at, now() + make_interval(secs => %(lease_secs)s)) END,
        -- a call that parked its run and goes on keeps its park open as long (migration 0016)
        parked_open_until = CASE WHEN r.parked_open_until IS NULL THEN NULL
                                 ELSE GREATEST(r.parked_open_until, now() + make_interval(secs => %(lease_secs)s)) END
    WHERE r.id = ANY(ARRAY(SELECT cur.id FROM cur WHERE cur.ok))
)
SELECT n, status, attempt, token_lease, ok AS done FROM cur

-- name: sdk_events
-- Log and progress events of active runs. Event ids are drawn before the insert so that each call
-- gets its own row back. The runs are locked first (in id order, as every batch does): a run's
-- events then commit in the order of their ids, so a stream reading after its cursor never passes
-- one still uncommitted, and an event never lands after the run's terminal change. Arrays in binary
-- (%%b); one index probe per call and no join of two CTEs, as sdk_heartbeat.
WITH v AS (
    SELECT * FROM unnest(%(ids)b::uuid[], %(attempts)b::int[], %(leases)b::uuid[], %(types)b::text[],
                         %(levels)b::text[], %(messages)b::text[], %(datas)b::jsonb[])
        WITH ORDINALITY AS v(id, attempt, lease_id, type, level, message, data, n)
), cur AS (  -- each call's run, locked in id order; a run's calls in the order they came
    SELECT v.*, r.status, r.attempt AS run_attempt, r.token_lease,
           (r.attempt = v.attempt AND r.token_lease = v.lease_id
            AND r.status = ANY('{executing,waiting}'::text[])) IS TRUE AS ok
    FROM (SELECT * FROM v ORDER BY v.id, v.n) v
    LEFT JOIN LATERAL (SELECT x.status, x.attempt, COALESCE(x.lease_id, x.parked_lease_id) AS token_lease
                       FROM job_runs x WHERE x.id = v.id FOR NO KEY UPDATE) r ON true
), drawn AS (
    SELECT cur.*, CASE WHEN cur.ok THEN nextval(pg_get_serial_sequence('run_events', 'id')) END AS event_id
    FROM cur
), ok AS (
    SELECT * FROM drawn WHERE ok
), ins AS (
    INSERT INTO run_events (id, run_id, type, level, message, data) OVERRIDING SYSTEM VALUE
    SELECT event_id, id, type, level, message, data FROM ok ORDER BY event_id
), watched AS (
    {tell_watchers ok}
)
SELECT n, status, run_attempt AS attempt, token_lease, event_id, now() AS created_at, ok AS done FROM drawn

-- name: sdk_finish
-- SDK complete and fail: the run ends with the endpoint's own result or error, fenced on the token.
-- A completion whose job has a result schema waits until the API has validated the result
-- (`checked`): the row comes back with `needs_check` instead. Arrays in binary (%%b); one index
-- probe per call and no join of two CTEs of the batch, as sdk_heartbeat.
-- transition finished: executing waiting -> completed failed
WITH v AS (
    SELECT * FROM unnest(%(ids)b::uuid[], %(attempts)b::int[], %(leases)b::uuid[], %(statuses)b::text[],
                         %(results)b::jsonb[], %(errors)b::text[], %(error_classes)b::text[], %(checked)b::bool[])
        WITH ORDINALITY AS v(id, attempt, lease_id, to_status, result, error, error_class, checked, n)
), cur AS (  -- each call's run, locked in id order, and whether the call may end it now
    SELECT v.n, v.id, v.attempt AS want_attempt, v.lease_id AS want_lease, v.to_status, v.result, v.error,
           v.error_class, r.status, r.attempt, r.token_lease,
           (v.checked OR v.to_status <> 'completed' OR v.result IS NULL OR r.result_schema IS NULL) AS checked
    FROM (SELECT * FROM v ORDER BY v.id, v.n) v
    LEFT JOIN LATERAL (SELECT x.status, x.attempt, COALESCE(x.lease_id, x.parked_lease_id) AS token_lease,
                              (SELECT j.result_schema FROM jobs j WHERE j.id = x.job_id) AS result_schema
                       FROM job_runs x WHERE x.id = v.id FOR UPDATE) r ON true
), finished AS (
    UPDATE job_runs r SET status = c.to_status, result = c.result, error = c.error, error_class = c.error_class,
        finished_at = now(), parked_lease_id = NULL, {unlease}
    FROM cur c
    WHERE r.id = ANY(ARRAY[c.id]) AND c.checked
      AND r.attempt = c.want_attempt AND COALESCE(r.lease_id, r.parked_lease_id) = c.want_lease AND {guard finished}
    RETURNING r.*, c.status AS from_status, r.status AS to_status, c.n AS call
){after finished}
-- the finished run as the API answers it, and what the token is checked against (chk_*)
SELECT f.*, cur.status AS chk_status, cur.attempt AS chk_attempt, cur.token_lease, cur.n,
       NOT cur.checked AS needs_check, f.id IS NOT NULL AS done
FROM cur LEFT JOIN finished f ON f.call = cur.n

-- name: sdk_checkpoint
-- Append a checkpoint with the run's next sequence (a concurrent one taking it: the caller retries).
INSERT INTO run_checkpoints (run_id, sequence, source, state)
SELECT %(run_id)s, COALESCE(max(sequence), 0) + 1, %(source)s, %(state)s
FROM run_checkpoints WHERE run_id = %(run_id)s
ON CONFLICT (run_id, sequence) DO NOTHING
RETURNING *

-- name: sdk_output
-- Upsert one named output; a repeat replaces value and schema and bumps created_at.
INSERT INTO run_outputs (id, run_id, output_key, schema, value)
VALUES (%(id)s, %(run_id)s, %(key)s, %(schema)s, %(value)s)
ON CONFLICT (run_id, output_key) DO UPDATE
    SET schema = EXCLUDED.schema, value = EXCLUDED.value, created_at = now()
RETURNING *

-- name: sdk_set_state
-- Upsert one key of the run's state.
INSERT INTO run_state (run_id, state_key, value) VALUES (%(run_id)s, %(key)s, %(value)s)
ON CONFLICT (run_id, state_key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
RETURNING *

-- name: sdk_list_state
-- The run's state, by key.
SELECT * FROM run_state WHERE run_id = %(run_id)s ORDER BY state_key LIMIT 1000

-- name: sdk_get_state
-- One key of the run's state.
SELECT * FROM run_state WHERE run_id = %(run_id)s AND state_key = %(key)s

-- name: sdk_delete_state
-- Remove one key of the run's state (absent is fine).
DELETE FROM run_state WHERE run_id = %(run_id)s AND state_key = %(key)s

-- name: sdk_usage
-- Record usage; the total cost of the run so far comes back for the per-run budget.
WITH ins AS (
    INSERT INTO run_usage (run_id, project_id, provider, model, prompt_tokens, completion_tokens, total_tokens,
                           cost_microusd)
    VALUES (%(run_id)s, %(project_id)s, %(provider)s, %(model)s, %(prompt_tokens)s, %(completion_tokens)s,
            %(total_tokens)s, %(cost_microusd)s)
    RETURNING *
)
SELECT ins.*, ins.cost_microusd + COALESCE((SELECT sum(cost_microusd) FROM run_usage u WHERE u.run_id = ins.run_id), 0)
       AS run_cost_microusd
FROM ins

-- name: sdk_tool_call
-- Record one tool call.
INSERT INTO run_tool_calls (run_id, tool_name, input, output, duration_ms, status)
VALUES (%(run_id)s, %(tool_name)s, %(input)s, %(output)s, %(duration_ms)s, %(status)s)
RETURNING *

-- name: sdk_annotate
-- Merge annotations into an active run's metadata, fenced on the token.
UPDATE job_runs r SET metadata = r.metadata || %(annotations)s
WHERE r.id = %(id)s AND r.attempt = %(attempt)s AND COALESCE(r.lease_id, r.parked_lease_id) = %(lease_id)s
  AND (r.status = ANY('{executing,waiting}'::text[])) IS TRUE
RETURNING r.*

-- name: list_checkpoints
-- A run's checkpoints, highest sequence first.
SELECT * FROM run_checkpoints
WHERE run_id = %(run_id)s AND (%(before_seq)s::int IS NULL OR sequence < %(before_seq)s)
ORDER BY sequence DESC
LIMIT %(limit)s

-- name: list_outputs
-- A run's outputs, by key.
SELECT * FROM run_outputs
WHERE run_id = %(run_id)s AND (%(after_key)s::text IS NULL OR output_key > %(after_key)s)
ORDER BY output_key
LIMIT %(limit)s

-- name: list_usage
-- A run's usage rows, oldest first.
SELECT * FROM run_usage
WHERE run_id = %(run_id)s
  AND (CASE WHEN %(after_id)s::bigint IS NOT NULL THEN id > %(after_id)s
            ELSE %(after_ts)s::timestamptz IS NULL OR created_at > %(after_ts)s END)
ORDER BY created_at, id
LIMIT %(limit)s

-- name: list_tool_calls
-- A run's tool calls, oldest first.
SELECT * FROM run_tool_calls
WHERE run_id = %(run_id)s
  AND (CASE WHEN %(after_id)s::bigint IS NOT NULL THEN id > %(after_id)s
            ELSE %(after_ts)s::timestamptz IS NULL OR created_at > %(after_ts)s END)
ORDER BY id
LIMIT %(limit)s

-- name: list_children
-- Runs spawned by a run, oldest first.
SELECT * FROM job_runs
WHERE parent_run_id = %(run_id)s
  AND (%(after_ts)s::timestamptz IS NULL
       OR (created_at, id) > (%(after_ts)s, COALESCE(%(after_id)s::uuid, '00000000-0000-0000-0000-000000000000')))
ORDER BY created_at, id
LIMIT %(limit)s

-- ===================================================================== durable waits (engine.md §6)

-- name: sdk_wait_for_event
-- Park an executing run on an event, fenced on the token: executing -> waiting and the trigger row in
-- one statement (a key already used in the project fails the statement, and so the transition).
-- A project's active-wait cap, when it has one, refuses the wait instead (`over_quota`).
-- transition parked: executing -> waiting
WITH cur AS (
    SELECT r.id, r.project_id,
           COALESCE((SELECT q.max_active_event_triggers <= (SELECT count(*) FROM event_triggers t
                                                            WHERE t.project_id = r.project_id AND t.status = 'waiting')
                     FROM project_quotas q WHERE q.project_id = r.project_id), false) AS over_quota
    FROM job_runs r
    WHERE r.id = %(id)s AND r.attempt = %(attempt)s AND r.lease_id = %(lease_id)s
    FOR UPDATE
), parked AS (
    UPDATE job_runs r SET status = 'waiting', parked_lease_id = r.lease_id, heartbeat_at = now(),
        -- the park stays open while its call goes on, until its outcome is written (migration 0016)
        parked_open_until = r.lease_expires_at, resume_held = NULL, {unlease}
    FROM cur WHERE r.id = cur.id AND NOT cur.over_quota AND {guard parked}
    RETURNING r.id, 'executing'::text AS from_status, r.status AS to_status, r.attempt,
              'event ' || %(event_key)s::text AS note, r.job_id, r.slots
){after parked}, waits AS (
    INSERT INTO event_triggers (id, event_key, project_id, source_type, job_run_id, timeout_secs, expires_at,
                                notify_url, trigger_type)
    SELECT %(trigger_id)s, %(event_key)s, cur.project_id, 'job_run', parked.id, %(timeout_secs)s,
           now() + make_interval(secs => %(timeout_secs)s), %(notify_url)s, 'event'
    FROM parked JOIN cur ON cur.id = parked.id
    RETURNING *
)
SELECT waits.*, (SELECT bool_or(over_quota) FROM cur) AS over_quota FROM (SELECT 1) one LEFT JOIN waits ON true

-- name: event_trigger_by_key
-- One event trigger of a project by its key.
SELECT * FROM event_triggers WHERE project_id = %(project_id)s AND event_key = %(event_key)s

-- name: event_triggers_by_key
-- An event key in every project (an internal caller without a project sends by key alone).
SELECT * FROM event_triggers WHERE event_key = %(event_key)s LIMIT 2

-- name: send_events
-- Deliver events, many sends in one statement and one round trip each (each commit with a NOTIFY
-- is serialised by PostgreSQL, so sends one by one would each wait for their own WAL flush): a
-- send names its trigger by (project, key) and the waiter kind its caller may send to (NULL: any);
-- each trigger waiting -> received with its payload, and its waiting run resumed (waiting ->
-- queued, same attempt) with the payload as its newest checkpoint once no other wait of it is
-- open. Each call gets the trigger as it is after (NULLs: no such trigger) and `received`, true
-- for the call that delivered it; a trigger sent twice in one batch is delivered by the first.
-- Arrays in binary (%%b).
-- transition resumed: waiting -> queued
WITH v AS (
    SELECT * FROM unnest(%(projects)b::text[], %(keys)b::text[], %(sources)b::text[], %(payloads)b::jsonb[],
                         %(sent_bys)b::text[], %(checkpoints)b::bool[])
        WITH ORDINALITY AS v(project_id, event_key, source, payload, sent_by, checkpoint, n)
), first AS (
    SELECT DISTINCT ON (project_id, event_key) * FROM v ORDER BY project_id, event_key, n
), t AS (
    SELECT e AS trig, e.id, e.status, e.event_key, e.job_run_id, e.source_type, f.project_id, f.n, f.source,
           f.payload, f.sent_by, f.checkpoint
    FROM event_triggers e JOIN first f ON f.project_id = e.project_id AND f.event_key = e.event_key
    ORDER BY e.id
    FOR UPDATE OF e
), recv AS (
    UPDATE event_triggers e SET status = 'received', response_payload = t.payload, received_at = now(),
        sent_by = t.sent_by, updated_at = now()
    FROM t WHERE e.id = t.id AND t.status = 'waiting' AND (t.source IS NULL OR t.source = t.source_type)
    RETURNING e AS trig, e.id, e.event_key, e.job_run_id, e.source_type, t.n, t.payload, t.checkpoint
), x AS (
    -- each answered run, locked in id order before either write below touches it; `ready`: nothing
    -- else holds it (no other open wait, no awaited child); `open`: the dispatch that parked it is
    -- still calling (migration 0016), so its resume is held until that dispatch returns
    SELECT w.*, l.ready, l.open
    FROM (SELECT DISTINCT ON (job_run_id) * FROM recv WHERE source_type = 'job_run' ORDER BY job_run_id, n) w
    CROSS JOIN LATERAL (
        SELECT r.awaiting_children = 0
                   AND NOT EXISTS (SELECT 1 FROM event_triggers o WHERE o.job_run_id = r.id
                                   AND (o.status = 'waiting') IS TRUE AND NOT o.id = ANY(ARRAY(SELECT id FROM recv)))
                   AS ready,
               r.parked_open_until > now() AS open
        FROM job_runs r WHERE r.id = w.job_run_id AND (r.status = 'waiting') IS TRUE
        FOR NO KEY UPDATE) l
), resumed AS (
    UPDATE job_runs r SET status = 'queued', resume_event_key = x.event_key, parked_lease_id = NULL,
        parked_open_until = NULL, resume_held = NULL, next_retry_at = NULL, heartbeat_at = NULL
    FROM x WHERE r.id = x.job_run_id AND x.ready AND x.open IS NOT TRUE AND {guard resumed}
    RETURNING r.id, 'waiting'::text AS from_status, r.status AS to_status, r.attempt,
              'event ' || x.event_key AS note, x.payload, x.checkpoint
){after resumed}{wake resumed}, held AS (
    UPDATE job_runs r SET resume_held = x.event_key
    FROM x WHERE r.id = x.job_run_id AND x.ready AND x.open
    RETURNING r.id, x.payload, x.checkpoint
), checkpoint AS (
    INSERT INTO run_checkpoints (run_id, sequence, source, state)
    SELECT r.id, COALESCE((SELECT max(c.sequence) FROM run_checkpoints c WHERE c.run_id = r.id), 0) + 1,
           'event_trigger', r.payload
    FROM (SELECT id, payload, checkpoint FROM resumed UNION ALL SELECT id, payload, checkpoint FROM held) r
    WHERE r.checkpoint
)
SELECT v.n, COALESCE(recv.n = v.n, false) AS received, (SELECT count(*) FROM resumed_wake) AS woke,
       (COALESCE(recv.trig, t.trig)).*
FROM v LEFT JOIN t ON t.project_id = v.project_id AND t.event_key = v.event_key LEFT JOIN recv ON recv.id = t.id

-- name: cancel_event
-- Cancel a waiting trigger; a run waiting on it is canceled too, which closes the trigger (the
-- transition's consequence); a trigger whose run is no longer waiting is closed directly.
-- transition moved: waiting -> canceled
WITH t AS (
    SELECT * FROM event_triggers WHERE id = %(id)s FOR UPDATE
), moved AS (
    UPDATE job_runs r SET status = 'canceled', error = 'canceled by user', finished_at = now(),
        parked_lease_id = NULL
    FROM t WHERE r.id = t.job_run_id AND t.status = 'waiting' AND {guard moved}
    RETURNING r.id, 'waiting'::text AS from_status, r.status AS to_status, r.attempt, r.error, r.parent_run_id,
              r.job_id, %(actor)s::text AS actor
){after moved}, direct AS (
    -- an expired trigger is not closed by the run's cancel (the reaper's pass owns those): close it here
    UPDATE event_triggers e SET status = 'canceled', error = 'canceled by user', updated_at = now()
    FROM t WHERE e.id = t.id AND t.status = 'waiting' AND (t.expires_at <= now() OR NOT EXISTS (SELECT 1 FROM moved))
)
SELECT t.status AS was FROM t

-- name: get_event_trigger
-- One event trigger by id.
SELECT * FROM event_triggers WHERE id = %(id)s

-- name: list_event_triggers
-- A project's event triggers, newest first, optional filters.
SELECT * FROM event_triggers
WHERE project_id = %(project_id)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(source_type)s::text IS NULL OR source_type = %(source_type)s)
  AND (%(workflow_run_id)s::uuid IS NULL OR workflow_run_id = %(workflow_run_id)s)
  AND (%(after_ts)s::timestamptz IS NULL
       OR (requested_at, id) < (%(after_ts)s, COALESCE(%(after_id)s::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff')))
ORDER BY requested_at DESC, id DESC
LIMIT %(limit)s

-- name: expire_waits
-- Waits past their timeout: the trigger timed_out, and a run waiting on it timed_out with the same
-- error (engine.md §6). Bounded per pass; a run that resumed or ended meanwhile is left alone.
-- transition moved: waiting -> timed_out
WITH due AS (
    SELECT id FROM event_triggers
    WHERE status = 'waiting' AND expires_at <= now()
    ORDER BY expires_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), ended AS (
    UPDATE event_triggers e SET status = 'timed_out', error = 'event trigger timed out', updated_at = now()
    FROM due WHERE e.id = due.id
    RETURNING e.id, e.job_run_id, e.source_type
), moved AS (
    UPDATE job_runs r SET status = 'timed_out', error = 'event trigger timed out', error_class = 'timeout',
        finished_at = now(), parked_lease_id = NULL
    FROM ended WHERE r.id = ended.job_run_id AND ended.source_type = 'job_run' AND {guard moved}
    RETURNING r.id, 'waiting'::text AS from_status, r.status AS to_status, r.attempt, r.error, r.parent_run_id,
              r.job_id
){after moved}
SELECT (SELECT count(*) FROM ended) AS waits, (SELECT count(*) FROM moved) AS runs

-- name: requeue_stale_dequeued
-- Runs left `dequeued` longer than a lease go back to the queue, same attempt (engine.md §3.3).
-- transition moved: dequeued -> queued
WITH stale AS (
    SELECT id FROM job_runs
    WHERE status = 'dequeued' AND COALESCE(started_at, created_at) < now() - make_interval(secs => %(stale_secs)s)
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE job_runs r SET status = 'queued', started_at = NULL
    FROM stale WHERE r.id = stale.id AND {guard moved}
    RETURNING r.id, 'dequeued'::text AS from_status, r.status AS to_status, r.attempt, 'stale dequeued'::text AS note
){after moved}{wake moved}
SELECT count(*) AS n, (SELECT count(*) FROM moved_wake) AS woke FROM moved

-- name: resume_lost_waits
-- Runs still waiting although what they waited for arrived over 30 s ago and nothing else holds them
-- (no open wait, no awaited child): resumed. A safety net; the paths that answer a wait resume its
-- run in the same statement.
-- transition moved: waiting -> queued
WITH lost AS (
    SELECT DISTINCT r.id FROM event_triggers t JOIN job_runs r ON r.id = t.job_run_id
    WHERE t.status = 'received' AND t.received_at < now() - interval '30 seconds'
      AND t.received_at > now() - interval '1 day' AND r.status = 'waiting' AND r.awaiting_children = 0
      AND NOT EXISTS (SELECT 1 FROM event_triggers o WHERE o.job_run_id = r.id AND (o.status = 'waiting') IS TRUE)
      -- a dispatch still calling closes its own park (close_parked_dispatches); past its lease, its
      -- worker is gone and this pass is the backstop
      AND (r.parked_open_until IS NULL OR r.parked_open_until <= now())
    LIMIT 1000
), moved AS (
    UPDATE job_runs r SET status = 'queued', parked_lease_id = NULL, parked_open_until = NULL, resume_held = NULL,
        resume_event_key = COALESCE(r.resume_held, 'reconciled')
    FROM lost WHERE r.id = lost.id AND {guard moved}
    RETURNING r.id, 'waiting'::text AS from_status, r.status AS to_status, r.attempt, 'wait answered'::text AS note
){after moved}{wake moved}
SELECT count(*) AS n, (SELECT count(*) FROM moved_wake) AS woke FROM moved

-- ===================================================================== spawn and continue (api.md §4.9)

-- name: sdk_spawn
-- A child run of another job (same project or not), enqueued; with `await`, its parent waits for it:
-- an executing parent parks (executing -> waiting), and either way the parent counts one more awaited
-- child and gets the `spawn-await:<child>` trigger the child's end answers. Fenced on the parent's token.
-- transition parked: executing -> waiting
WITH cur AS (
    SELECT r.id, r.status, r.project_id FROM job_runs r
    WHERE r.id = %(parent_id)s AND r.attempt = %(attempt)s AND COALESCE(r.lease_id, r.parked_lease_id) = %(lease_id)s
      AND r.status = ANY('{executing,waiting}'::text[])
    FOR UPDATE
), child AS (
    -- a child of a job with dependencies waits while one is unmet (migration 0012)
    INSERT INTO job_runs (id, job_id, project_id, status, priority, payload, payload_hash, tags, metadata,
                          triggered_by, expires_at, job_version, job_version_id, created_by, parent_run_id,
                          quota_counted, awaits_dependencies)
    SELECT %(child_id)s, j.id, j.project_id, e.status, %(priority)s, %(payload)s, %(payload_hash)s, j.tags,
           j.default_run_metadata, 'spawn', now() + make_interval(secs => j.effective_run_ttl_secs), j.version,
           j.version_id, %(actor)s, cur.id, strait_quota_counted(j.project_id), e.status = 'waiting'
    FROM cur, jobs j
    CROSS JOIN LATERAL (SELECT strait_entry_status(j.has_dependencies, j.id,
                                                   j.default_run_metadata ->> 'dependency_key') AS status) e
    WHERE j.id = %(job_id)s
    RETURNING *
), parked AS (
    UPDATE job_runs r SET status = 'waiting', parked_lease_id = r.lease_id,
        parked_open_until = r.lease_expires_at, resume_held = NULL,
        awaiting_children = r.awaiting_children + 1, {unlease}
    FROM cur WHERE r.id = cur.id AND %(await)s AND cur.status = 'executing' AND {guard parked}
    RETURNING r.id, 'executing'::text AS from_status, r.status AS to_status, r.attempt,
              'awaiting spawned run'::text AS note, r.job_id, r.slots
){after parked}, counted AS (
    -- a resume held for the open dispatch (its awaited children had all ended) waits for this one too
    UPDATE job_runs r SET awaiting_children = r.awaiting_children + 1, resume_held = NULL
    FROM cur WHERE r.id = cur.id AND %(await)s AND cur.status = 'waiting'
), waits AS (
    INSERT INTO event_triggers (id, event_key, project_id, source_type, job_run_id, timeout_secs, expires_at,
                                trigger_type, request_payload)
    SELECT %(trigger_id)s, 'spawn-await:' || child.id, cur.project_id, 'job_run', cur.id, %(timeout_secs)s,
           now() + make_interval(secs => %(timeout_secs)s), 'spawn_await', jsonb_build_object('run_id', child.id)
    FROM child, cur WHERE %(await)s
    RETURNING event_key
), wake AS (
    SELECT pg_notify('strait_queue_wake', '') FROM (SELECT 1 FROM child WHERE status = 'queued' LIMIT 1) q
)
SELECT child.*, (SELECT event_key FROM waits) AS await_event_key, (SELECT count(*) FROM wake) AS woke
FROM child

-- name: sdk_continue
-- Continue-as-new: a new run of the same job (the job's current version), continuing this one, one
-- level deeper, same priority, tags and metadata; the payload given or the parent's. The parent is
-- untouched. Fenced on the token; nothing is created past the depth cap.
WITH cur AS (
    SELECT r.* FROM job_runs r
    WHERE r.id = %(parent_id)s AND r.attempt = %(attempt)s AND COALESCE(r.lease_id, r.parked_lease_id) = %(lease_id)s
      AND r.status = ANY('{executing,waiting}'::text[])
), ins AS (
    -- a run of a job with dependencies waits while one is unmet (migration 0012): its key is its metadata's
    INSERT INTO job_runs (id, job_id, project_id, status, priority, payload, payload_hash, tags, metadata,
                          triggered_by, expires_at, job_version, job_version_id, created_by, continuation_of,
                          lineage_depth, quota_counted, awaits_dependencies)
    SELECT %(new_id)s, cur.job_id, cur.project_id, e.status, cur.priority, COALESCE(%(payload)s::json, cur.payload),
           COALESCE(%(payload_hash)s, cur.payload_hash), cur.tags, cur.metadata, 'job_chain',
           now() + make_interval(secs => j.effective_run_ttl_secs), j.version, j.version_id, %(actor)s, cur.id,
           cur.lineage_depth + 1, strait_quota_counted(cur.project_id), e.status = 'waiting'
    FROM cur JOIN jobs j ON j.id = cur.job_id
    CROSS JOIN LATERAL (SELECT strait_entry_status(j.has_dependencies, j.id, cur.metadata ->> 'dependency_key')
                               AS status) e
    WHERE cur.lineage_depth < %(max_depth)s
    RETURNING *
), wake AS (
    SELECT pg_notify('strait_queue_wake', '') FROM (SELECT 1 FROM ins WHERE status = 'queued' LIMIT 1) q
)
SELECT ins.*, (SELECT count(*) FROM wake) AS woke FROM ins

-- name: run_lineage
-- The continue-as-new chain a run belongs to, root first.
WITH RECURSIVE up AS (
    SELECT id, continuation_of, 0 AS hops FROM job_runs WHERE id = %(id)s
    UNION ALL
    SELECT r.id, r.continuation_of, up.hops + 1 FROM job_runs r JOIN up ON r.id = up.continuation_of
    WHERE up.hops < 100
), root AS (
    SELECT id FROM up ORDER BY hops DESC LIMIT 1
), down AS (
    SELECT r.id, 0 AS depth FROM job_runs r JOIN root ON r.id = root.id
    UNION ALL
    SELECT r.id, down.depth + 1 FROM job_runs r JOIN down ON r.continuation_of = down.id
    WHERE down.depth < 100
)
SELECT r.* FROM down JOIN job_runs r ON r.id = down.id ORDER BY down.depth, r.created_at LIMIT 200

-- ===================================================================== budgets (engine.md §9.1)

-- name: get_project_quota
-- A project's limits (no row: none).
SELECT * FROM project_quotas WHERE project_id = %(project_id)s

-- name: put_project_quota
-- Set a project's limits. The time zone is tried the way project_spend_today uses it: a name
-- PostgreSQL does not know is refused here (Rejected), not at every later trigger.
INSERT INTO project_quotas (project_id, max_daily_cost_microusd, max_cost_per_run_microusd,
                            max_active_event_triggers, max_queued_runs, max_executing_runs, timezone)
SELECT %(project_id)s, %(max_daily_cost_microusd)s, %(max_cost_per_run_microusd)s,
       %(max_active_event_triggers)s, %(max_queued_runs)s, %(max_executing_runs)s, %(timezone)s
WHERE (now() AT TIME ZONE %(timezone)s) IS NOT NULL
ON CONFLICT (project_id) DO UPDATE SET
    max_daily_cost_microusd = EXCLUDED.max_daily_cost_microusd,
    max_cost_per_run_microusd = EXCLUDED.max_cost_per_run_microusd,
    max_active_event_triggers = EXCLUDED.max_active_event_triggers,
    max_queued_runs = EXCLUDED.max_queued_runs,
    max_executing_runs = EXCLUDED.max_executing_runs,
    timezone = EXCLUDED.timezone, updated_at = now()
RETURNING *

-- name: project_spend_today
-- A project's spend since the start of its day (in its time zone), in micro-USD.
SELECT COALESCE(sum(cost_microusd), 0)::bigint AS spent FROM run_usage
WHERE project_id = %(project_id)s
  AND created_at >= (date_trunc('day', now() AT TIME ZONE %(timezone)s) AT TIME ZONE %(timezone)s)

-- name: job_by_slug
-- One job of a project by its slug (SDK spawn names jobs so).
SELECT * FROM jobs WHERE project_id = %(project_id)s AND slug = %(slug)s

-- ===================================================================== cron Scheduler (engine.md §7.1)

-- name: cron_unarmed
-- Jobs with a cron and no next tick yet (new, or cron / time zone changed): the Scheduler arms them.
SELECT id::text AS id, cron, timezone, updated_at FROM jobs
WHERE cron IS NOT NULL AND next_fire_at IS NULL
LIMIT %(limit)s

-- name: cron_arm
-- Give jobs their next tick, unless the job changed since it was read (the next pass reads it again).
UPDATE jobs j SET next_fire_at = v.next_at
FROM unnest(%(ids)s::uuid[], %(next)s::timestamptz[], %(seen)s::timestamptz[]) AS v(id, next_at, seen)
WHERE j.id = v.id AND j.next_fire_at IS NULL AND j.updated_at = v.seen

-- name: drain_transition_tally
-- Run transitions written since the last drain (migration 0014), summed, and gone from the table.
WITH d AS (DELETE FROM run_transition_tally RETURNING from_status, to_status, n)
SELECT from_status, to_status, sum(n)::bigint FROM d GROUP BY 1, 2

-- name: queue_depth
-- Runs by non-terminal status and the dead-letter queue, each from its own partial index, and the
-- age of the oldest claimable queued run (status, n, age): for /metrics, every few seconds.
SELECT 'delayed' AS status, count(*) AS n, NULL::float8 AS age FROM job_runs WHERE status = 'delayed'
UNION ALL
SELECT 'queued', sum(n), NULL FROM (
    SELECT count(*) AS n FROM job_runs WHERE status = 'queued' AND held IS NULL
    UNION ALL SELECT count(*) FROM job_runs WHERE status = 'queued' AND held IS NOT NULL) q
UNION ALL
SELECT 'dequeued', count(*), NULL FROM job_runs WHERE status = 'dequeued'
UNION ALL
SELECT 'executing', count(*), NULL FROM job_runs WHERE status = 'executing'
UNION ALL
SELECT 'waiting', count(*), NULL FROM job_runs WHERE status = 'waiting'
UNION ALL
SELECT status, count(*), NULL FROM job_runs WHERE status IN ('paused', 'replay_staged') GROUP BY status
UNION ALL
SELECT 'dead_letter', count(*), NULL FROM job_runs WHERE status = 'dead_letter'
UNION ALL
SELECT 'oldest', 0, EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM job_runs
WHERE status = 'queued' AND held IS NULL

-- name: cron_due
-- Jobs whose tick is due, oldest tick first. Rows another scheduler is firing are skipped: the
-- schedulers share a burst of ticks instead of racing for the same ones (which tick fires, and
-- that it fires once, is cron_fire's compare-and-set and the fire key's, not this lock's).
SELECT id::text AS id, project_id, cron, timezone, next_fire_at, rate_limit_max, rate_limit_window_secs,
       rate_limit_keys
FROM jobs
WHERE cron IS NOT NULL AND next_fire_at <= %(now)s
ORDER BY next_fire_at
LIMIT %(limit)s
FOR NO KEY UPDATE SKIP LOCKED

-- name: cron_next_due
-- The earliest armed tick (the first entry of the due index): the Scheduler wakes for it on time.
SELECT min(next_fire_at) AS at FROM jobs WHERE cron IS NOT NULL

-- name: cron_fire
-- Fire due ticks. A job's tick is taken by moving its next_fire_at on, compared and set (of many
-- schedulers, one takes it); its run is inserted in the same statement with the tick's fire key as
-- its idempotency key (a key already used makes no second run). A taken tick of a job that is off
-- (disabled, paused) or of a paused project, whose overlap policy is `skip` while a run of it is
-- active, or over its rate limit (its own or a named key's), its project's queued/executing quota or
-- daily cost cap, is skipped and says why. Judged without the trigger path's locks (a tick racing
-- triggers may overshoot a limit by its one run). Cron runs: no payload,
-- priority 0, triggered_by cron, created_by system:cron, a TTL only when the job sets run_ttl_secs.
-- the arrays go in binary (%%b): text arrays are escaped element by element, 60 ms a batch of 1,000
-- `judge`: 0 the tick's rate limits are judged here; with REDIS_URL set, 1 Redis admitted its run, 2
-- Redis refused it (the limits are counted where the API's triggers count theirs).
WITH v AS (
    SELECT * FROM unnest(%(ids)b::uuid[], %(due)b::timestamptz[], %(fire_at)b::timestamptz[],
                         %(next)b::timestamptz[], %(keys)b::text[], %(run_ids)b::uuid[], %(judge)b::int[])
        AS v(id, due, fire_at, next_at, fire_key, run_id, judge)
), taken AS (
    UPDATE jobs j SET next_fire_at = v.next_at
    FROM v WHERE j.id = ANY(%(ids)b::uuid[]) AND j.id = v.id AND j.next_fire_at = v.due
    RETURNING j.id, j.project_id, j.enabled, j.paused, j.project_paused, j.cron_overlap_policy, j.rate_limit_max,
              j.rate_limit_window_secs, j.rate_limit_keys, j.run_ttl_secs, j.tags, j.default_run_metadata,
              j.version, j.version_id, j.has_dependencies,
              v.fire_at, v.fire_key, v.run_id, v.judge
), judged AS (
    SELECT t.*,
        -- a run of a job with dependencies waits while one is unmet (migration 0012)
        strait_entry_status(t.has_dependencies, t.id, t.default_run_metadata ->> 'dependency_key') AS entry,
        CASE
        WHEN NOT t.enabled OR t.paused THEN 'job_off'
        WHEN t.project_paused THEN 'project_paused'
        WHEN t.cron_overlap_policy = 'skip' AND EXISTS (
            SELECT 1 FROM job_runs r
            WHERE r.job_id = t.id AND r.status = ANY('{queued,dequeued,executing,waiting,delayed}'::text[])) THEN 'overlap'
        WHEN t.judge = 2 THEN 'rate_limit'
        WHEN t.judge = 0 AND t.rate_limit_max IS NOT NULL AND (
            SELECT count(*) FROM job_runs r
            WHERE r.job_id = t.id AND r.created_at >= now() - make_interval(secs => COALESCE(t.rate_limit_window_secs, 60))
        ) >= t.rate_limit_max THEN 'rate_limit'
        WHEN t.judge = 0 AND EXISTS (
            SELECT 1 FROM jsonb_array_elements(t.rate_limit_keys) k
            WHERE (SELECT COALESCE(sum(h.n), 0) FROM rate_limit_hits h
                   WHERE h.project_id = t.project_id AND h.key = k ->> 'key'
                     AND h.at >= now() - make_interval(secs => (k ->> 'window_secs')::int)) >= (k ->> 'max')::int
        ) THEN 'rate_limit'
        WHEN (SELECT (q.max_queued_runs IS NOT NULL
                      AND strait_count_active(t.project_id, 'queued', q.max_queued_runs)
                          + strait_count_active(t.project_id, 'delayed', q.max_queued_runs) >= q.max_queued_runs)
                  OR (q.max_executing_runs IS NOT NULL
                      AND strait_count_active(t.project_id, 'executing', q.max_executing_runs)
                          + strait_count_active(t.project_id, 'dequeued', q.max_executing_runs) >= q.max_executing_runs)
              FROM project_quotas q WHERE q.project_id = t.project_id) THEN 'quota'
        WHEN (SELECT q.max_daily_cost_microusd <= (
                  SELECT COALESCE(sum(u.cost_microusd), 0) FROM run_usage u
                  WHERE u.project_id = t.project_id
                    AND u.created_at >= (date_trunc('day', now() AT TIME ZONE q.timezone) AT TIME ZONE q.timezone))
              FROM project_quotas q WHERE q.project_id = t.project_id) THEN 'budget'
        END AS skipped
    FROM taken t
), ins AS (
    INSERT INTO job_runs (id, job_id, project_id, status, priority, payload, payload_hash, tags, metadata,
                          triggered_by, expires_at, idempotency_key, job_version, job_version_id, created_by,
                          quota_counted, awaits_dependencies)
    SELECT j.run_id, j.id, j.project_id, j.entry, 0, '{}', %(empty_hash)s, j.tags, j.default_run_metadata,
           'cron', CASE WHEN j.run_ttl_secs > 0 THEN now() + make_interval(secs => j.run_ttl_secs) END,
           j.fire_key, j.version, j.version_id, 'system:cron', strait_quota_counted(j.project_id),
           j.entry = 'waiting'
    FROM judged j WHERE j.skipped IS NULL
    ON CONFLICT (job_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, job_id, status
), hits AS (  -- a fired run takes its hit from each named key (unreferenced: runs all the same)
    INSERT INTO rate_limit_hits (project_id, key, n)
    SELECT j.project_id, k ->> 'key', 1
    FROM judged j CROSS JOIN LATERAL jsonb_array_elements(j.rate_limit_keys) k
    WHERE j.judge = 0 AND jsonb_typeof(j.rate_limit_keys) = 'array' AND j.rate_limit_keys <> '[]'
      AND j.run_id IN (SELECT id FROM ins)
), wake AS (
    SELECT pg_notify('strait_queue_wake', '') FROM (SELECT 1 FROM ins WHERE status = 'queued' LIMIT 1) w
)
-- the CTEs' row counts are unknown to the planner (it guesses one): a join of `judged` and `ins`
-- plans as a nested loop, 1,000 x 1,000 comparisons a batch; `IN` over `ins` is one hash
SELECT j.id::text AS job_id, j.fire_at, j.fire_key, j.skipped, j.cron_overlap_policy,
       CASE WHEN j.run_id IN (SELECT id FROM ins) THEN j.run_id::text END AS run_id,
       (SELECT count(*) FROM wake) AS woke
FROM judged j

-- name: cron_cancel_overlapped
-- `cancel_running`: a tick's new run is in; every other run of its job that is not terminal, and
-- their descendants, are canceled (leases cleared, so a dispatch in flight records nothing).
-- transition moved: * -> canceled
WITH RECURSIVE v AS (
    SELECT * FROM unnest(%(job_ids)s::uuid[], %(run_ids)s::uuid[]) AS v(job_id, run_id)
), tree AS (
    SELECT r.id, 0 AS depth FROM job_runs r JOIN v ON r.job_id = v.job_id AND r.id <> v.run_id
    WHERE NOT r.status = ANY({terminal})
    UNION
    SELECT c.id, tree.depth + 1 FROM job_runs c JOIN tree ON c.parent_run_id = tree.id WHERE tree.depth < 20
), cur AS (
    -- locked in id order, one probe each (an ORDER BY over job_runs itself walks its whole primary key
    -- on these connections, where sorts are priced out)
    SELECT r.id, r.status AS from_status FROM (SELECT DISTINCT id FROM tree ORDER BY id) t
    CROSS JOIN LATERAL (SELECT r.id, r.status FROM job_runs r
                        WHERE r.id = t.id AND NOT r.status = ANY({terminal}) FOR UPDATE) r
), moved AS (
    UPDATE job_runs r SET status = 'canceled', finished_at = now(), error = 'canceled by cron overlap policy',
        {unlease}
    FROM cur WHERE r.id = cur.id AND {guard moved}
    RETURNING r.*, cur.from_status, r.status AS to_status, 'system:cron'::text AS actor
){after moved}
SELECT count(*) AS n FROM moved

-- name: age_queued_runs
-- Priority ageing (engine.md §2.4): claimable runs queued longer than the threshold gain one
-- priority step, up to 10 (the engine's cap of 1000 would put aged runs above any caller's highest
-- priority; 10 makes them compete with the newest of it, oldest first). One index range per level
-- (priority p, oldest first), so a pass never walks young runs; bounded per level.
WITH aged AS (
    UPDATE job_runs r SET priority = r.priority + 1
    WHERE r.id = ANY(ARRAY(
        SELECT x.id FROM generate_series(0, 9) p CROSS JOIN LATERAL (
            SELECT y.id FROM job_runs y
            WHERE y.status = 'queued' AND y.held IS NULL AND y.priority = p
              AND y.created_at < now() - make_interval(secs => %(after_secs)s)
            ORDER BY y.priority DESC, y.created_at LIMIT 500
            FOR NO KEY UPDATE SKIP LOCKED) x))  -- a run another statement holds: the next pass ages it
      AND r.status = 'queued' AND r.priority < 10
    RETURNING r.id
)
SELECT count(*) AS n FROM aged

-- name: release_resumed_runs
-- The Reaper's share of a resume (migration 0020): the oldest job of job_releases, and up to
-- %(limit)s of its runs held as 'job', in claim order, back to the claim index. The job's row goes
-- once a batch finds fewer than that (at once for a job paused again meanwhile: its next resume
-- writes it again). Never waits: a row or a run another statement holds is skipped (the next pass,
-- or release_held_runs, frees it). `jobs`: whether there was a row to work on.
WITH m AS (
    SELECT job_id FROM job_releases ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT x.id FROM m JOIN jobs j ON j.id = m.job_id
    CROSS JOIN LATERAL (
        SELECT x.id FROM job_runs x WHERE x.job_id = j.id AND x.status = 'queued' AND x.held = 'job'
        ORDER BY x.priority DESC, x.created_at LIMIT %(limit)s
        FOR NO KEY UPDATE SKIP LOCKED) x
    WHERE j.enabled AND NOT (j.paused OR j.project_paused) AND j.execution_mode = 'http'
), freed AS (
    UPDATE job_runs r SET held = NULL
    WHERE r.id = ANY(ARRAY(SELECT id FROM picked)) AND r.status = 'queued' AND r.held = 'job'
    RETURNING r.id
), done AS (
    DELETE FROM job_releases d USING m
    WHERE d.job_id = m.job_id AND (SELECT count(*) FROM picked) < %(limit)s
    RETURNING d.job_id
)
SELECT (SELECT count(*) FROM freed) AS n, (SELECT count(*) FROM m) AS jobs,
       (SELECT count(*) FROM (SELECT pg_notify('strait_queue_wake', '') WHERE EXISTS (SELECT 1 FROM freed)) w) AS woke

-- name: release_held_runs
-- Backstop of sync_job_gates: a claim that read a job as paused just before its resume committed
-- can hold runs after the resume released the others. Runs held as 'job' whose job can run go back
-- to the claim index; bounded. Walks the jobs (one index probe each), so the Reaper runs it seldom.
WITH freed AS (
    UPDATE job_runs r SET held = NULL
    WHERE r.id = ANY(ARRAY(
        SELECT h.id FROM jobs j CROSS JOIN LATERAL (
            SELECT x.id FROM job_runs x WHERE x.job_id = j.id AND x.status = 'queued' AND x.held = 'job' LIMIT 1000
            FOR NO KEY UPDATE SKIP LOCKED) h  -- a run another statement holds: the next pass frees it
        WHERE j.enabled AND NOT (j.paused OR j.project_paused) AND j.execution_mode = 'http'
          -- a resumed job whose runs the Reaper is freeing batch by batch (release_resumed_runs)
          AND NOT EXISTS (SELECT 1 FROM job_releases m WHERE m.job_id = j.id)
        LIMIT 5000))
      AND r.status = 'queued' AND r.held = 'job'
    RETURNING r.id, r.job_id
), more AS (
    -- a job with a whole 1000 of them may have many more: the Reaper's batches take it from here
    INSERT INTO job_releases (job_id)
    SELECT job_id FROM freed GROUP BY job_id HAVING count(*) >= 1000
    ON CONFLICT DO NOTHING
)
SELECT (SELECT count(*) FROM freed) AS n,
       (SELECT count(*) FROM (SELECT pg_notify('strait_queue_wake', '') WHERE EXISTS (SELECT 1 FROM freed)) w) AS woke

-- ===================================================================== retention (engine.md §7.3)

-- name: purge_runs
-- Terminal runs that finished before their status's retention, oldest first, one bounded batch, with
-- their own rows (events, checkpoints, outputs, state, tool calls, waits, stream watchers; usage rows
-- stay: they are the project's spend). dead_letter never. The runs are found in the primary key's
-- time order (ids are UUIDv7; `created_before` is the id of the newest cutoff), so retention needs
-- no index of its own on job_runs. A NULL retention keeps its class.
WITH old AS (
    SELECT id FROM job_runs
    WHERE id < %(created_before)s
      AND ((status = ANY('{completed,failed,canceled,expired}'::text[])
            AND finished_at < now() - make_interval(secs => %(short_secs)s))
        OR (status = ANY('{timed_out,crashed,system_failed}'::text[])
            AND finished_at < now() - make_interval(secs => %(long_secs)s)))
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), events AS (
    DELETE FROM run_events e USING old WHERE e.run_id = old.id
), checkpoints AS (
    DELETE FROM run_checkpoints c USING old WHERE c.run_id = old.id
), outputs AS (
    DELETE FROM run_outputs o USING old WHERE o.run_id = old.id
), state AS (
    DELETE FROM run_state s USING old WHERE s.run_id = old.id
), tool_calls AS (
    DELETE FROM run_tool_calls t USING old WHERE t.run_id = old.id
), waits AS (
    DELETE FROM event_triggers t USING old WHERE t.job_run_id = old.id
), watchers AS (
    DELETE FROM run_watchers w USING old WHERE w.run_id = old.id
), gone AS (
    DELETE FROM job_runs r USING old WHERE r.id = old.id RETURNING r.id
)
SELECT count(*) AS n FROM gone

-- name: purge_event_triggers
-- Event triggers answered, timed out or canceled before the retention, one bounded batch (a waiting
-- one never: it belongs to a live wait). Found in the primary key's time order, as runs are.
WITH old AS (
    SELECT id FROM event_triggers
    WHERE id < %(created_before)s AND status <> 'waiting'
      AND updated_at < now() - make_interval(secs => %(secs)s)
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM event_triggers t USING old WHERE t.id = old.id RETURNING t.id
)
SELECT count(*) AS n FROM gone

-- name: purge_rate_hits
-- Named-key hits no window can still see, one bounded batch.
WITH old AS (
    SELECT ctid FROM rate_limit_hits WHERE at < now() - make_interval(secs => %(secs)s) LIMIT %(limit)s
), gone AS (
    DELETE FROM rate_limit_hits h USING old WHERE h.ctid = old.ctid RETURNING 1
)
SELECT count(*) AS n FROM gone

-- name: purge_circuits
-- Shared circuits (migration 0010) closed and untouched for a week: an endpoint that failed a few
-- times and was never called again (a success deletes its row at once). One bounded batch.
WITH old AS (
    SELECT project_id, url_hash FROM endpoint_circuits
    WHERE updated_at < now() - interval '7 days' AND (open_until IS NULL OR open_until < now())
    LIMIT %(limit)s
), gone AS (
    DELETE FROM endpoint_circuits c USING old
    WHERE c.project_id = old.project_id AND c.url_hash = old.url_hash RETURNING 1
)
SELECT count(*) AS n FROM gone

-- ===================================================================== run streams (SSE, api.md §4.5)

-- name: watch_run
-- This API process streams the run: its changes NOTIFY strait_run_events. Returns the run's newest
-- event id, where a stream without Last-Event-ID starts (nothing after the watch can be missed).
WITH w AS (
    INSERT INTO run_watchers (run_id, watcher, expires_at)
    VALUES (%(run_id)s, %(watcher)s, now() + make_interval(secs => %(ttl)s))
    ON CONFLICT (run_id, watcher) DO UPDATE SET expires_at = EXCLUDED.expires_at
)
SELECT COALESCE((SELECT max(id) FROM run_events WHERE run_id = %(run_id)s), 0) AS last_id

-- name: unwatch_run
-- No stream of this process watches the run any more.
DELETE FROM run_watchers WHERE run_id = %(run_id)s AND watcher = %(watcher)s

-- name: refresh_watches
-- Keep this process's watches alive, and drop those of processes that stopped refreshing theirs.
WITH mine AS (
    UPDATE run_watchers SET expires_at = now() + make_interval(secs => %(ttl)s)
    WHERE watcher = %(watcher)s AND run_id = ANY(%(run_ids)s)
)
DELETE FROM run_watchers WHERE expires_at < now() AND watcher <> %(watcher)s

-- name: run_events_after
-- New events of watched runs, each after its own cursor, oldest first.
SELECT e.* FROM unnest(%(run_ids)s::uuid[], %(after_ids)s::bigint[]) AS c(run_id, after_id)
CROSS JOIN LATERAL (
    SELECT * FROM run_events e WHERE e.run_id = c.run_id AND e.id > c.after_id ORDER BY e.id LIMIT 500
) e
ORDER BY e.id

-- name: listen_run_events
-- The Redis bridge's listener (api/streams.py; without Redis, each API process's ConfigFeed LISTENs).
LISTEN strait_run_events

-- ===================================================================== worker liveness (migration 0013)

-- name: worker_beat
-- One worker process is alive, with the state of each of its actors (its Beacon's tick).
INSERT INTO worker_heartbeats (worker_id, hostname, pid, started_at, seen_at, actors)
VALUES (%(worker_id)s, %(hostname)s, %(pid)s, %(started_at)s, now(), %(actors)s)
ON CONFLICT (worker_id) DO UPDATE
SET started_at = EXCLUDED.started_at, seen_at = EXCLUDED.seen_at, actors = EXCLUDED.actors

-- name: worker_gone
-- A worker process stops cleanly: its row goes with it.
DELETE FROM worker_heartbeats WHERE worker_id = %(worker_id)s

-- name: purge_worker_beats
-- Rows of processes silent for a day (killed, or their host gone): at each Beacon's start.
WITH gone AS (
    DELETE FROM worker_heartbeats WHERE seen_at < now() - interval '1 day' RETURNING 1
)
SELECT count(*) AS n FROM gone

-- name: worker_beats
-- Every worker process's latest beat, newest first; `alive` when seen within the stale threshold.
SELECT worker_id, hostname, pid, started_at, seen_at, actors,
       seen_at > now() - make_interval(secs => %(stale_secs)s) AS alive
FROM worker_heartbeats
ORDER BY seen_at DESC, worker_id
LIMIT %(limit)s

-- ===================================================================== debug bundle (GET /v1/runs/{id}/debug-bundle)

-- name: run_event_triggers
-- The waits a run made (event, sleep, spawn-await), oldest first.
SELECT * FROM event_triggers WHERE job_run_id = %(run_id)s
ORDER BY requested_at, id
LIMIT %(limit)s

-- name: workers_ready
-- How many of these worker processes beat within the stale threshold with every actor alive
-- (a `--mode worker` process's own readiness, on its health port).
SELECT count(*) AS n FROM worker_heartbeats
WHERE worker_id = ANY(%(ids)s)
  AND seen_at > now() - make_interval(secs => %(stale_secs)s)
  AND NOT EXISTS (SELECT 1 FROM jsonb_each_text(actors) a WHERE a.value <> 'alive')
