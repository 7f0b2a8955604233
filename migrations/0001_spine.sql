-- The spine: projects, API keys, jobs and their versions, runs and their events.
-- Runs live in one table with a status column (engine.md §0 "legacy" model): the claim is
-- one CTE with FOR UPDATE SKIP LOCKED. Only indexes that a query in the code uses exist,
-- because every index on job_runs is paid by every one of a run's transitions.

CREATE TABLE projects (
    id          text PRIMARY KEY,
    org_id      text NOT NULL,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id              uuid PRIMARY KEY,
    project_id      text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    org_id          text,
    name            text NOT NULL,
    key_hash        text NOT NULL UNIQUE,           -- lowercase hex SHA-256 of the full key
    key_prefix      text NOT NULL,
    scopes          text[] NOT NULL,
    environment_id  text,
    expires_at      timestamptz,
    revoked_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_project ON api_keys (project_id, created_at DESC);

CREATE TABLE jobs (
    id                      uuid PRIMARY KEY,
    project_id              text NOT NULL REFERENCES projects(id),
    name                    text NOT NULL,
    slug                    text NOT NULL,
    description             text,
    group_id                text,
    cron                    text,
    timezone                text,
    execution_window_cron   text,
    cron_overlap_policy     text NOT NULL DEFAULT 'allow',
    payload_schema          jsonb,
    result_schema           jsonb,
    tags                    jsonb NOT NULL DEFAULT '{}',
    endpoint_url            text,
    fallback_endpoint_url   text,
    signing_secret          text,                   -- webhook_secret or endpoint_signing_secret; never emitted
    webhook_url             text,
    max_attempts            int NOT NULL DEFAULT 3,
    timeout_secs            int NOT NULL DEFAULT 300,
    max_concurrency         int,
    max_concurrency_per_key int,
    rate_limit_max          int,
    rate_limit_window_secs  int,
    dedup_window_secs       int,
    run_ttl_secs            int,
    debounce_window_secs    int,
    batch_window_secs       int,
    batch_max_size          int,
    retry_strategy          text,
    retry_delays_secs       int[],
    retry_priority_boost    int NOT NULL DEFAULT 1,
    poison_pill_threshold   int,
    enabled                 boolean NOT NULL DEFAULT true,
    paused                  boolean NOT NULL DEFAULT false,
    paused_at               timestamptz,
    pause_reason            text,
    environment_id          text,
    default_run_metadata    jsonb NOT NULL DEFAULT '{}',
    version                 int NOT NULL DEFAULT 1,
    version_id              text NOT NULL,
    version_policy          text NOT NULL DEFAULT 'pin',
    backwards_compatible    boolean NOT NULL DEFAULT false,
    execution_mode          text NOT NULL DEFAULT 'http',
    queue_name              text NOT NULL DEFAULT 'default',
    created_by              text,
    updated_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, slug)
);
CREATE INDEX jobs_project ON jobs (project_id, created_at DESC, id DESC);

CREATE TABLE job_versions (
    id                   uuid PRIMARY KEY,
    job_id               uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    version              int NOT NULL,
    version_id           text NOT NULL,
    backwards_compatible boolean NOT NULL DEFAULT false,
    snapshot             jsonb NOT NULL,            -- the job as it was at this version
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, version)
);

CREATE TABLE job_runs (
    id                    uuid PRIMARY KEY,
    job_id                uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    project_id            text NOT NULL,
    status                text NOT NULL,
    attempt               int NOT NULL DEFAULT 1,
    priority              smallint NOT NULL DEFAULT 0,
    payload               json NOT NULL DEFAULT '{}',   -- json, not jsonb: the canonical bytes are sent verbatim
    payload_hash          text NOT NULL,
    result                jsonb,
    error                 text,
    error_class           text,
    tags                  jsonb NOT NULL DEFAULT '{}',
    metadata              jsonb NOT NULL DEFAULT '{}',
    triggered_by          text NOT NULL DEFAULT 'manual',
    scheduled_at          timestamptz,
    started_at            timestamptz,
    finished_at           timestamptz,
    heartbeat_at          timestamptz,
    next_retry_at         timestamptz,
    expires_at            timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    parent_run_id         uuid,
    continuation_of       uuid,
    lineage_depth         int NOT NULL DEFAULT 0,
    workflow_step_run_id  uuid,
    idempotency_key       text,
    concurrency_key       text,
    batch_id              uuid,
    job_version           int NOT NULL DEFAULT 1,
    job_version_id        text,
    debug_mode            boolean NOT NULL DEFAULT false,
    execution_mode        text NOT NULL DEFAULT 'http',
    queue_name            text NOT NULL DEFAULT 'default',
    created_by            text,
    replayed_run_id       uuid,
    -- the lease of the worker that claimed the run: every outcome write is fenced on it
    lease_id              uuid,
    lease_expires_at      timestamptz,
    worker_id             text
);
-- claim: highest priority, then oldest (engine.md §2.2)
CREATE INDEX job_runs_claim ON job_runs (priority DESC, created_at) WHERE status = 'queued';
-- promotion of due delayed runs, done by the claim statement
CREATE INDEX job_runs_delayed ON job_runs (scheduled_at) WHERE status = 'delayed';
-- reaper: leases of dead workers
CREATE INDEX job_runs_lease ON job_runs (lease_expires_at) WHERE status = 'executing';
-- run lists per project, newest first
CREATE INDEX job_runs_project ON job_runs (project_id, created_at DESC, id DESC);
-- a job's runs: delete guard, dedup window, health, job_id filter
CREATE INDEX job_runs_job ON job_runs (job_id, created_at DESC);
-- DLQ list per project
CREATE INDEX job_runs_dead ON job_runs (project_id, created_at DESC, id DESC) WHERE status = 'dead_letter';
-- run-level idempotency: a conflict answers with the original run (api.md §4.3.6)
CREATE UNIQUE INDEX job_runs_idempotency ON job_runs (job_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- No primary key index: events are only ever read by run, and each run gets two per dispatch.
CREATE TABLE run_events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    run_id      uuid NOT NULL,
    type        text NOT NULL,
    level       text NOT NULL DEFAULT 'info',
    message     text NOT NULL DEFAULT '',
    data        jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX run_events_run ON run_events (run_id, id);
