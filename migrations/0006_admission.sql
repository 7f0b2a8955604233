-- Admission at trigger time (engine.md §2.5): project quotas on queued and executing runs, and
-- named rate-limit keys that several jobs of a project share.
--
-- A quota is checked by counting the project's runs in those statuses, bounded by the quota, in an
-- index of the runs of projects that have such a quota (`quota_counted`, set when a run is created,
-- by every INSERT into job_runs, from `strait_quota_counted`): the count costs at most `max` index
-- entries however large the table, and a project without these quotas adds no index entry per run.
ALTER TABLE project_quotas ADD COLUMN max_queued_runs int;
ALTER TABLE project_quotas ADD COLUMN max_executing_runs int;
ALTER TABLE job_runs ADD COLUMN quota_counted boolean;
CREATE INDEX job_runs_active ON job_runs (project_id, status)
    WHERE quota_counted AND status IN ('queued', 'delayed', 'dequeued', 'executing');

-- Does the project count its queued or executing runs (an inlined probe of a small table)?
CREATE FUNCTION strait_quota_counted(project text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT EXISTS (SELECT 1 FROM project_quotas q WHERE q.project_id = project
                   AND (q.max_queued_runs IS NOT NULL OR q.max_executing_runs IS NOT NULL))
$$;

-- How many of a project's counted runs are in one of those statuses, reading at most `cap` entries
-- of that index (ordered by it, so the planner does not prefer a table scan that stops early).
CREATE FUNCTION strait_count_active(project text, state text, cap int) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT count(*) FROM (
        SELECT 1 FROM job_runs WHERE project_id = project AND status = state AND quota_counted
          AND status IN ('queued', 'delayed', 'dequeued', 'executing')
        ORDER BY project_id, status LIMIT cap) a
$$;

-- [{"key": "<name>", "max": n, "window_secs": w}, …]: a run of the job takes one hit from each
-- named key; every job of the project naming the key counts against the same hits.
ALTER TABLE jobs ADD COLUMN rate_limit_keys jsonb NOT NULL DEFAULT '[]';

-- Hits of named keys when they are counted in PostgreSQL (no REDIS_URL): one row per admitted
-- trigger, `n` runs; a key's admissions are serialised by a transaction advisory lock on it.
-- Rows older than the longest window allowed (30 days) are deleted by the retention pass.
CREATE TABLE rate_limit_hits (
    project_id  text NOT NULL,
    key         text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    n           int NOT NULL
);
CREATE INDEX rate_limit_hits_key ON rate_limit_hits (project_id, key, at);
CREATE INDEX rate_limit_hits_at ON rate_limit_hits (at);
