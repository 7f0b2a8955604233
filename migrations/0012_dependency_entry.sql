-- Job dependencies (migration 0009) gate every new run of a dependent job on its way into the queue,
-- whichever path makes it: a trigger, a delayed run (a delayed trigger, an execution window, a
-- debounce or batch window) when it comes due or is flushed, a cron tick, a spawn, a continuation,
-- a replay. A run whose dependencies are unmet then waits (`waiting`, awaits_dependencies) and is
-- released as a triggered one is. Retries and resumes of a run that already started are not gated.

-- The key a run matches upstream runs by: its idempotency key, else its payload's `dependency_key`
-- (in its metadata); a cron run's idempotency key is its tick's fire key, internal to the
-- Scheduler, so a cron run matches by its job's default metadata only.
CREATE FUNCTION strait_run_dependency_key(ikey text, meta jsonb, by text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT CASE WHEN by = 'cron' THEN meta ->> 'dependency_key' ELSE COALESCE(ikey, meta ->> 'dependency_key') END
$$;

-- Must a new run of job `job` with key `dkey` wait: is a dependency of the job unmet now?
CREATE FUNCTION strait_dependencies_unmet(job uuid, dkey text) RETURNS boolean
LANGUAGE sql STABLE AS $$
SELECT EXISTS (
    SELECT 1 FROM job_dependencies d
    WHERE d.job_id = job AND NOT strait_dependency_met(d.depends_on_job_id, d.condition, dkey))
$$;
