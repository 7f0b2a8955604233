-- The SDK plane (api.md §4.9) and durable waits (engine.md §6): what a run's own code writes while it
-- executes (checkpoints, outputs, state, usage, tool calls), the event triggers runs wait on, and the
-- per-project budgets (engine.md §9.1). Nothing here is read by the claim or written per dispatch.

-- Per-run rows have no foreign key to job_runs (as run_events): none is paid on their insert path;
-- deleting a job deletes them with its runs (queries.sql delete_job).

CREATE TABLE run_checkpoints (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    run_id      uuid NOT NULL,
    sequence    int NOT NULL,                        -- per run, from 1
    source      text NOT NULL DEFAULT 'sdk',         -- sdk | event_trigger
    state       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, sequence)
);

CREATE TABLE run_outputs (
    id          uuid NOT NULL,
    run_id      uuid NOT NULL,
    output_key  text NOT NULL,
    schema      jsonb,
    value       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, output_key)
);

CREATE TABLE run_state (
    run_id      uuid NOT NULL,
    state_key   text NOT NULL,
    value       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, state_key)
);

CREATE TABLE run_usage (
    id                 bigint GENERATED ALWAYS AS IDENTITY,
    run_id             uuid NOT NULL,
    project_id         text NOT NULL,               -- the daily budget sums a project's day
    provider           text NOT NULL,
    model              text NOT NULL,
    prompt_tokens      bigint NOT NULL DEFAULT 0,
    completion_tokens  bigint NOT NULL DEFAULT 0,
    total_tokens       bigint NOT NULL DEFAULT 0,
    cost_microusd      bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX run_usage_run ON run_usage (run_id, created_at, id);
CREATE INDEX run_usage_project_day ON run_usage (project_id, created_at);

CREATE TABLE run_tool_calls (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    run_id       uuid NOT NULL,
    tool_name    text NOT NULL,
    input        jsonb,
    output       jsonb,
    duration_ms  bigint,
    status       text NOT NULL DEFAULT 'success',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX run_tool_calls_run ON run_tool_calls (run_id, id);

-- Children and continuations of a run (GET /v1/runs/{id}/children, lineage, spawn-await resume).
CREATE INDEX job_runs_parent ON job_runs (parent_run_id, created_at, id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX job_runs_continuation ON job_runs (continuation_of) WHERE continuation_of IS NOT NULL;

-- A run resumed from a wait is dispatched again with the same attempt; this says which event resumed
-- it (X-Resume-Event-Key), and makes the claim look up its newest checkpoint (X-Last-Checkpoint).
ALTER TABLE job_runs ADD COLUMN resume_event_key text;
-- The children a parent parked by spawn-with-await still waits for: each child's end decrements
-- it in the child's own transition, and the one that reaches 0 resumes the parent (a row update
-- serialises concurrent children, where counting them from a snapshot would not).
ALTER TABLE job_runs ADD COLUMN awaiting_children int NOT NULL DEFAULT 0;
-- The lease of the dispatch that parked a waiting run: its run token stays good while it waits.
ALTER TABLE job_runs ADD COLUMN parked_lease_id uuid;

-- Durable waits: one row per wait, never a timer in memory (engine.md §6).
CREATE TABLE event_triggers (
    id                    uuid PRIMARY KEY,
    event_key             text NOT NULL,
    project_id            text NOT NULL,
    environment_id        text,
    source_type           text NOT NULL,            -- job_run | workflow_step
    workflow_run_id       uuid,
    workflow_step_run_id  uuid,
    job_run_id            uuid,
    status                text NOT NULL DEFAULT 'waiting',   -- waiting | received | timed_out | canceled
    request_payload       jsonb,
    response_payload      jsonb,
    timeout_secs          int NOT NULL,
    requested_at          timestamptz NOT NULL DEFAULT now(),
    received_at           timestamptz,
    expires_at            timestamptz NOT NULL,
    error                 text,
    notify_url            text,
    notify_status         text NOT NULL DEFAULT '',
    trigger_type          text NOT NULL DEFAULT 'event',     -- event | sleep | spawn_await
    sent_by               text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, event_key)                  -- for the row's whole life (engine.md §6)
);
CREATE INDEX event_triggers_due ON event_triggers (expires_at) WHERE status = 'waiting';
CREATE INDEX event_triggers_run ON event_triggers (job_run_id) WHERE job_run_id IS NOT NULL;
CREATE INDEX event_triggers_project ON event_triggers (project_id, requested_at DESC, id DESC);
-- the reaper's safety net: recently answered waits whose run is still waiting
CREATE INDEX event_triggers_received ON event_triggers (received_at) WHERE status = 'received';
-- the reaper's stale-dequeued pass (no writer uses `dequeued` today: the index stays empty and costs nothing)
CREATE INDEX job_runs_dequeued ON job_runs (started_at) WHERE status = 'dequeued';

-- Per-project limits (engine.md §9.1, §2.5); a project without a row has none.
CREATE TABLE project_quotas (
    project_id                 text PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    max_daily_cost_microusd    bigint,
    max_cost_per_run_microusd  bigint,
    max_active_event_triggers  int,
    timezone                   text NOT NULL DEFAULT 'UTC',
    updated_at                 timestamptz NOT NULL DEFAULT now()
);

-- Runs an SSE client is watching, by API process: a transition of a watched run (and an SDK event of
-- it) NOTIFYs `strait_run_events`, the one channel each API process listens on. Unlogged: after a
-- crash the watches are simply gone (their streams are too); expired rows are a dead process's.
CREATE UNLOGGED TABLE run_watchers (
    run_id      uuid NOT NULL,
    watcher     text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (run_id, watcher)
);
