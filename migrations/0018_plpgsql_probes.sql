-- Our functions that read a table are PL/pgSQL, not SQL. PostgreSQL inlines a SQL function only when
-- its body is one expression without a sub-SELECT; any other SQL function is planned again by every
-- statement that calls it, and set up and torn down for each row it is called on. The trigger INSERT
-- called strait_quota_counted for each run it wrote: planning its EXISTS was a fifth of
-- PostgreSQL's time in an INSERT of one run. A PL/pgSQL function keeps its plans for the session.
-- The bodies are the same queries, their parameters named by function (a parameter named like a
-- column would be ambiguous in PL/pgSQL).
CREATE OR REPLACE FUNCTION strait_quota_counted(project text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM project_quotas q WHERE q.project_id = strait_quota_counted.project
                   AND (q.max_queued_runs IS NOT NULL OR q.max_executing_runs IS NOT NULL));
END
$$;

CREATE OR REPLACE FUNCTION strait_count_active(project text, state text, cap int) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN (SELECT count(*) FROM (
        SELECT 1 FROM job_runs WHERE project_id = strait_count_active.project
          AND status = strait_count_active.state AND quota_counted
          AND status IN ('queued', 'delayed', 'dequeued', 'executing')
        ORDER BY project_id, status LIMIT strait_count_active.cap) a);
END
$$;

CREATE OR REPLACE FUNCTION strait_dependency_met(upstream uuid, cond text, dkey text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN COALESCE((
        SELECT CASE strait_dependency_met.cond WHEN 'any' THEN true
                    WHEN 'completed' THEN l.status = 'completed'
                    ELSE l.status IN ('failed', 'dead_letter', 'timed_out', 'crashed', 'system_failed') END
        FROM (
            (SELECT u.status, u.created_at FROM job_runs u
             WHERE strait_dependency_met.dkey IS NULL AND u.job_id = strait_dependency_met.upstream
               AND u.status IN ('completed', 'failed', 'canceled', 'timed_out', 'crashed', 'system_failed',
                                'dead_letter', 'expired')
             ORDER BY u.created_at DESC LIMIT 1)
            UNION ALL
            (SELECT u.status, u.created_at FROM job_runs u
             WHERE strait_dependency_met.dkey IS NOT NULL AND u.job_id = strait_dependency_met.upstream
               AND u.idempotency_key = strait_dependency_met.dkey
               AND u.status IN ('completed', 'failed', 'canceled', 'timed_out', 'crashed', 'system_failed',
                                'dead_letter', 'expired'))
            UNION ALL
            (SELECT u.status, u.created_at FROM job_runs u
             WHERE strait_dependency_met.dkey IS NOT NULL AND u.job_id = strait_dependency_met.upstream
               AND u.metadata ? 'dependency_key' AND u.metadata ->> 'dependency_key' = strait_dependency_met.dkey
               AND u.status IN ('completed', 'failed', 'canceled', 'timed_out', 'crashed', 'system_failed',
                                'dead_letter', 'expired')
             ORDER BY u.created_at DESC LIMIT 1)
        ) l
        ORDER BY l.created_at DESC LIMIT 1), false);
END
$$;

CREATE OR REPLACE FUNCTION strait_dependencies_unmet(job uuid, dkey text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (
        SELECT 1 FROM job_dependencies d
        WHERE d.job_id = strait_dependencies_unmet.job
          AND NOT strait_dependency_met(d.depends_on_job_id, d.condition, strait_dependencies_unmet.dkey));
END
$$;
