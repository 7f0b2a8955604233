-- Dependencies between jobs (engine.md §2.8): a run of a dependent job waits (`waiting`) until the
-- latest ended run of each job it depends on, with the same key, ended the way the dependency asks.
--
-- A run's key: its idempotency key, else its payload's top-level `dependency_key` (copied into its
-- metadata when it is triggered). A run without either matches the upstream job's latest ended run.
CREATE TABLE job_dependencies (
    id                 uuid PRIMARY KEY,
    job_id             uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    depends_on_job_id  uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    condition          text NOT NULL DEFAULT 'completed' CHECK (condition IN ('completed', 'failed', 'any')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, depends_on_job_id),
    CHECK (job_id <> depends_on_job_id)
);
-- a run that ends looks up the jobs that depend on its own (an empty probe for most jobs)
CREATE INDEX job_dependencies_upstream ON job_dependencies (depends_on_job_id);

-- the trigger path's cue (read with the job row it already has): the job has dependencies
ALTER TABLE jobs ADD COLUMN has_dependencies boolean NOT NULL DEFAULT false;

-- runs waiting on their dependencies (a wait with no event trigger of its own)
ALTER TABLE job_runs ADD COLUMN awaits_dependencies boolean NOT NULL DEFAULT false;
CREATE INDEX job_runs_dependency_waits ON job_runs (job_id, created_at) WHERE status = 'waiting' AND awaits_dependencies;
-- upstream runs found by their payload's dependency key (runs without one are not in it)
CREATE INDEX job_runs_dependency_key ON job_runs (job_id, (metadata ->> 'dependency_key'), created_at DESC)
    WHERE metadata ? 'dependency_key';

-- Is a dependency met for a run with key `dkey`: did the upstream job's latest ended run with that
-- key (or, without a key, its latest ended run) end the way `cond` asks? Each branch reads one
-- index range from its newest entry.
CREATE FUNCTION strait_dependency_met(upstream uuid, cond text, dkey text) RETURNS boolean
LANGUAGE sql STABLE AS $$
SELECT COALESCE((
    SELECT CASE cond WHEN 'any' THEN true
                     WHEN 'completed' THEN l.status = 'completed'
                     ELSE l.status IN ('failed', 'dead_letter', 'timed_out', 'crashed', 'system_failed') END
    FROM (
        (SELECT u.status, u.created_at FROM job_runs u
         WHERE dkey IS NULL AND u.job_id = upstream
           AND u.status IN ('completed', 'failed', 'canceled', 'timed_out', 'crashed', 'system_failed',
                            'dead_letter', 'expired')
         ORDER BY u.created_at DESC LIMIT 1)
        UNION ALL
        (SELECT u.status, u.created_at FROM job_runs u
         WHERE dkey IS NOT NULL AND u.job_id = upstream AND u.idempotency_key = dkey
           AND u.status IN ('completed', 'failed', 'canceled', 'timed_out', 'crashed', 'system_failed',
                            'dead_letter', 'expired'))
        UNION ALL
        (SELECT u.status, u.created_at FROM job_runs u
         WHERE dkey IS NOT NULL AND u.job_id = upstream AND u.metadata ? 'dependency_key'
           AND u.metadata ->> 'dependency_key' = dkey
           AND u.status IN ('completed', 'failed', 'canceled', 'timed_out', 'crashed', 'system_failed',
                            'dead_letter', 'expired')
         ORDER BY u.created_at DESC LIMIT 1)
    ) l
    ORDER BY l.created_at DESC LIMIT 1), false)
$$;
