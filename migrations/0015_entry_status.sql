-- The dependency gate (migration 0012) in one place: the status a new run of job `job` with key `dkey`
-- enters the queue in, 'waiting' while a dependency of the job is unmet, else 'queued'. `has_deps` is
-- the job's `has_dependencies` (NULL, a job not found, is false): a job without dependencies never
-- reads them. A single-expression SQL function, so PostgreSQL inlines it into the calling statement
-- (the claim's promotion is the hot path): the plan holds the CASE, its AND short-circuits, and
-- strait_dependencies_unmet is called only for a job that has dependencies. Inlining needs it to stay
-- so: no STRICT (it would change what a NULL gives), no SET, no sub-SELECT, each argument used once.
CREATE FUNCTION strait_entry_status(has_deps boolean, job uuid, dkey text) RETURNS text
LANGUAGE sql STABLE AS $$
SELECT CASE WHEN has_deps AND strait_dependencies_unmet(job, dkey) THEN 'waiting' ELSE 'queued' END
$$;
