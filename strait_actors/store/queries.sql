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
-- Promote due delayed runs, then claim queued runs for this worker under a fresh lease: one round trip.
-- Promoted runs are not visible to this statement's snapshot; their wake makes the next claim immediate.
-- transition promoted: delayed -> queued
-- transition claimed: queued -> executing
WITH due AS (
    SELECT id FROM job_runs
    WHERE status = 'delayed' AND scheduled_at <= now()
    ORDER BY scheduled_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), promoted AS (
    UPDATE job_runs r SET status = 'queued'
    FROM due WHERE r.id = due.id AND {guard promoted}
    RETURNING r.id, 'delayed'::text AS from_status, r.status AS to_status, r.attempt
){after promoted}{wake promoted}, candidates AS (
    SELECT r.id
    FROM job_runs r JOIN jobs j ON j.id = r.job_id
    WHERE r.status = 'queued'
      AND (r.next_retry_at IS NULL OR r.next_retry_at <= now())
      AND (r.expires_at IS NULL OR r.expires_at > now() OR r.attempt > 1)
      AND j.enabled AND NOT j.paused
      AND j.execution_mode = 'http'  -- worker-mode jobs wait for the worker plane (not built yet)
    ORDER BY r.priority DESC, r.created_at
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
), claimed AS (
    UPDATE job_runs r SET status = 'executing',
        started_at = now(), heartbeat_at = now(), finished_at = NULL,
        lease_id = %(lease_id)s, lease_expires_at = now() + make_interval(secs => %(lease_secs)s),
        worker_id = %(worker_id)s
    FROM candidates c
    WHERE r.id = c.id AND {guard claimed}
    RETURNING r.id, 'queued'::text AS from_status, r.status AS to_status, r.attempt, r.job_id, r.priority, r.created_at,
              r.payload::text AS payload, r.lease_id, r.expires_at, r.error AS previous_error,
              r.metadata ->> 'traceparent' AS traceparent, r.metadata ->> 'tracestate' AS tracestate
){after claimed}
-- always one row at least: (NULL id, promoted count) when nothing was claimed
SELECT c.id::text AS id, c.job_id::text AS job_id, c.attempt, c.payload, c.lease_id::text AS lease_id,
       c.expires_at, c.previous_error, COALESCE(j.endpoint_url, '') AS endpoint_url, j.timeout_secs,
       j.max_attempts, j.retry_strategy, j.retry_delays_secs, j.retry_priority_boost, j.signing_secret,
       c.traceparent, c.tracestate, c.priority AS claim_priority, c.created_at AS claim_created_at,
       w.n AS promoted
FROM (SELECT count(*) AS n FROM promoted_wake) w
LEFT JOIN (claimed c JOIN jobs j ON j.id = c.job_id) ON true

-- name: record_outcomes
-- Write many dispatch outcomes at once, each fenced on (id, executing, attempt, lease); a run whose
-- fence fails is skipped without touching the others. Retries go back to queued with attempt + 1.
-- transition moved: executing -> completed failed timed_out dead_letter queued
WITH v AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(leases)s::uuid[], %(statuses)s::text[],
                         %(results)s::jsonb[], %(errors)s::text[], %(classes)s::text[],
                         %(delays)s::float8[], %(boosts)s::int[])
        AS v(id, attempt, lease_id, to_status, result, error, error_class, delay, boost)
), moved AS (
    UPDATE job_runs r SET status = v.to_status,
        attempt = CASE WHEN v.to_status = 'queued' THEN r.attempt + 1 ELSE r.attempt END,
        result = v.result,
        error = v.error,
        error_class = v.error_class,
        started_at = CASE WHEN v.to_status = 'queued' THEN NULL ELSE r.started_at END,
        finished_at = CASE WHEN v.to_status = 'queued' THEN NULL ELSE now() END,
        next_retry_at = CASE WHEN v.to_status = 'queued' THEN now() + make_interval(secs => v.delay) END,
        priority = CASE WHEN v.to_status = 'queued' THEN LEAST(10, r.priority + v.boost) ELSE r.priority END,
        {unlease}
    FROM v
    WHERE r.id = v.id AND r.attempt = v.attempt AND r.lease_id = v.lease_id AND {guard moved}
    RETURNING r.id, 'executing'::text AS from_status, r.status AS to_status, v.attempt, v.error
){after moved}
SELECT id::text AS id FROM moved

-- name: listen_wake
-- The pollers' wake-up channel: every {wake} of the transition seam NOTIFYs it.
LISTEN strait_queue_wake

-- name: extend_leases
-- Heartbeat the runs this worker is still calling: the lease moves forward, fenced on the lease.
UPDATE job_runs r
SET heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => %(lease_secs)s)
FROM unnest(%(ids)s::uuid[], %(leases)s::uuid[]) AS v(id, lease_id)
-- IS TRUE: find the runs by id, not by walking the executing index (see transitions._guard)
WHERE r.id = v.id AND r.lease_id = v.lease_id AND (r.status = 'executing') IS TRUE

-- name: release_runs
-- Give unfinished runs back to the queue at shutdown, same attempt (nothing was decided about them).
-- transition moved: executing -> queued
WITH moved AS (
    UPDATE job_runs r SET status = 'queued', started_at = NULL, {unlease}
    FROM unnest(%(ids)s::uuid[], %(leases)s::uuid[]) AS v(id, lease_id)
    WHERE r.id = v.id AND r.lease_id = v.lease_id AND {guard moved}
    RETURNING r.id, 'executing'::text AS from_status, r.status AS to_status, r.attempt,
              'worker shutdown'::text AS note
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
        error = CASE WHEN s.to_status = 'queued' THEN 'heartbeat lost; retry scheduled' ELSE 'heartbeat lost' END,
        error_class = 'transient',
        started_at = CASE WHEN s.to_status = 'queued' THEN NULL ELSE r.started_at END,
        finished_at = CASE WHEN s.to_status = 'queued' THEN NULL ELSE now() END,
        {unlease}
    FROM stale s WHERE r.id = s.id AND {guard moved}
    RETURNING r.id, 'executing'::text AS from_status, r.status AS to_status, s.attempt, r.error,
              'lease lost'::text AS note
){after moved}
SELECT to_status AS status, count(*) AS n FROM moved GROUP BY to_status

-- name: expire_runs
-- Runs never started whose TTL passed go to expired (retried runs keep going: engine.md §2.7 ⚠).
-- Scans the claim index (queued runs only): a delayed run past its TTL is past its schedule too, so
-- the claim has promoted it; no index of its own, which every run would pay for.
-- transition moved: queued -> expired
WITH due AS (
    SELECT id FROM job_runs
    WHERE status = 'queued' AND expires_at <= now() AND attempt = 1
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE job_runs r SET status = 'expired', error = 'run expired', finished_at = now()
    FROM due WHERE r.id = due.id AND {guard moved}
    RETURNING r.id, 'queued'::text AS from_status, r.status AS to_status, r.attempt
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
    rate_limit_max, rate_limit_window_secs, dedup_window_secs, run_ttl_secs, debounce_window_secs,
    batch_window_secs, batch_max_size, retry_strategy, retry_delays_secs, retry_priority_boost,
    poison_pill_threshold, enabled, environment_id, default_run_metadata, version_id, version_policy,
    execution_mode, queue_name, created_by, updated_by)
VALUES (%(id)s, %(project_id)s, %(name)s, %(slug)s, %(description)s, %(group_id)s, %(cron)s, %(timezone)s,
    %(execution_window_cron)s, %(cron_overlap_policy)s, %(payload_schema)s, %(result_schema)s, %(tags)s,
    %(endpoint_url)s, %(fallback_endpoint_url)s, %(signing_secret)s, %(webhook_url)s, %(max_attempts)s,
    %(timeout_secs)s, %(max_concurrency)s, %(max_concurrency_per_key)s, %(rate_limit_max)s,
    %(rate_limit_window_secs)s, %(dedup_window_secs)s, %(run_ttl_secs)s, %(debounce_window_secs)s,
    %(batch_window_secs)s, %(batch_max_size)s, %(retry_strategy)s, %(retry_delays_secs)s,
    %(retry_priority_boost)s, %(poison_pill_threshold)s, %(enabled)s, %(environment_id)s,
    %(default_run_metadata)s, %(version_id)s, %(version_policy)s, %(execution_mode)s, %(queue_name)s,
    %(created_by)s, %(created_by)s)
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
    dedup_window_secs = %(dedup_window_secs)s, run_ttl_secs = %(run_ttl_secs)s,
    debounce_window_secs = %(debounce_window_secs)s, batch_window_secs = %(batch_window_secs)s,
    batch_max_size = %(batch_max_size)s, retry_strategy = %(retry_strategy)s,
    retry_delays_secs = %(retry_delays_secs)s, retry_priority_boost = %(retry_priority_boost)s,
    poison_pill_threshold = %(poison_pill_threshold)s, enabled = %(enabled)s,
    environment_id = %(environment_id)s, default_run_metadata = %(default_run_metadata)s,
    version_policy = %(version_policy)s, execution_mode = %(execution_mode)s, queue_name = %(queue_name)s,
    backwards_compatible = %(backwards_compatible)s, updated_by = %(updated_by)s,
    version = version + 1, version_id = %(version_id)s, updated_at = now()
WHERE id = %(id)s AND version = %(version)s
RETURNING *

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
-- Remove a job with its versions and finished runs, and those runs' events: run_events has no
-- foreign key (none is paid on its hot insert path), so the cascade would leave them orphaned.
WITH events AS (
    DELETE FROM run_events e USING job_runs r WHERE e.run_id = r.id AND r.job_id = %(id)s
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

-- ===================================================================== runs (API)

-- name: insert_runs
-- Enqueue many runs in one statement; an idempotency key already taken skips that row only.
-- One NOTIFY per statement (PostgreSQL also folds duplicates within a transaction).
WITH ins AS (
    INSERT INTO job_runs (id, job_id, project_id, status, priority, payload, payload_hash, tags, metadata,
                          triggered_by, scheduled_at, expires_at, idempotency_key, concurrency_key, batch_id,
                          job_version, job_version_id, created_by, debug_mode)
    SELECT u.id, u.job_id, u.project_id, u.status, u.priority, u.payload, u.payload_hash, u.tags, u.metadata,
           u.triggered_by, u.scheduled_at,
           GREATEST(now(), COALESCE(u.scheduled_at, now())) + make_interval(secs => u.ttl),
           u.idempotency_key, u.concurrency_key, u.batch_id, u.job_version, u.job_version_id, u.created_by,
           u.debug_mode
    FROM unnest(%(id)s::uuid[], %(job_id)s::uuid[], %(project_id)s::text[], %(status)s::text[],
                %(priority)s::smallint[], %(payload)s::json[], %(payload_hash)s::text[], %(tags)s::jsonb[],
                %(metadata)s::jsonb[], %(triggered_by)s::text[], %(scheduled_at)s::timestamptz[],
                %(ttl)s::float8[], %(idempotency_key)s::text[], %(concurrency_key)s::text[],
                %(batch_id)s::uuid[], %(job_version)s::int[], %(job_version_id)s::text[],
                %(created_by)s::text[], %(debug_mode)s::bool[])
        AS u(id, job_id, project_id, status, priority, payload, payload_hash, tags, metadata, triggered_by,
             scheduled_at, ttl, idempotency_key, concurrency_key, batch_id, job_version, job_version_id,
             created_by, debug_mode)
    ON CONFLICT (job_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, status
), wake AS (
    SELECT pg_notify('strait_queue_wake', '') FROM (SELECT 1 FROM ins WHERE status = 'queued' LIMIT 1) q
)
SELECT ins.id, ins.status, (SELECT count(*) FROM wake) AS woke FROM ins

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
-- Job rate limit: runs created inside the window.
SELECT count(*) AS n FROM job_runs WHERE job_id = %(job_id)s AND created_at >= now() - make_interval(secs => %(window)s)

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
-- Cancel a run that is not terminal; its lease is cleared so a dispatch in flight cannot record a
-- result afterwards.
-- transition moved: * -> canceled
WITH cur AS (
    SELECT id, status AS from_status FROM job_runs WHERE id = %(id)s FOR UPDATE
), moved AS (
    UPDATE job_runs r SET status = 'canceled', finished_at = now(), error = 'canceled by user', {unlease}
    FROM cur WHERE r.id = cur.id AND {guard moved}
    RETURNING r.*, cur.from_status, r.status AS to_status, %(actor)s::text AS actor
){after moved}
SELECT * FROM moved

-- name: replay_run
-- A new run from a finished one: same payload, tags, priority and job version; attempt 1; queued.
WITH src AS (
    SELECT r.*, j.effective_run_ttl_secs AS ttl FROM job_runs r JOIN jobs j ON j.id = r.job_id
    WHERE r.id = %(id)s
), ins AS (
    INSERT INTO job_runs (id, job_id, project_id, status, priority, payload, payload_hash, tags, metadata,
                          triggered_by, expires_at, job_version, job_version_id, created_by, replayed_run_id)
    SELECT %(new_id)s, job_id, project_id, 'queued', priority, payload, payload_hash, tags, metadata, 'manual',
           now() + make_interval(secs => ttl), job_version, job_version_id, %(actor)s, id
    FROM src
    RETURNING *
), wake AS (
    SELECT pg_notify('strait_queue_wake', '') FROM (SELECT 1 FROM ins LIMIT 1) q
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
