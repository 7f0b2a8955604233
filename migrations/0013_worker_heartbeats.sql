-- Worker processes' liveness (GET /health/ready with the internal secret): one row per worker
-- process, rewritten on a timer (HEARTBEAT_INTERVAL_SECS) by that process's Beacon with which of
-- its actors are alive. Never written per run. A clean stop deletes its row; a killed process's
-- row goes stale (seen_at older than STALE_THRESHOLD_SECS) and is purged after a day.
CREATE TABLE worker_heartbeats (
    worker_id   text PRIMARY KEY,               -- host:pid, as on the runs it leases (job_runs.worker_id)
    hostname    text NOT NULL,
    pid         int NOT NULL,
    started_at  timestamptz NOT NULL,           -- the process's actor tree started
    seen_at     timestamptz NOT NULL,
    actors      jsonb NOT NULL                  -- {"dispatcher": "alive" | "down", ...}
);
