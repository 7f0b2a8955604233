-- Concurrency gates (migration 0005) are locked and moved by functions. A statement that locks or
-- updates a row a concurrent transaction changed after the statement's snapshot re-checks it
-- (EvalPlanQual), and PostgreSQL sets up every sub-plan of the whole statement again for that: in
-- the claim and the outcome writes, dozens of CTEs. A gate row is changed by every claim and every
-- outcome of its job, so under load nearly every such statement paid it (30 % of PostgreSQL's CPU
-- in the capped limits scenario, by perf). The statements of a VOLATILE function each take a fresh
-- snapshot: the re-check, when there is one, is of a one-line query, and the update after the lock
-- sees the row as it is. Their few statements are planned once per session (generic plans: with
-- array arguments PostgreSQL otherwise plans them again at every call, 40 % of their cost).

-- Lock the gates (job, key) in key order (as every writer of gates does, so none waits on another
-- in a cycle); their free slots as they are now. Gates that do not exist are not returned.
CREATE FUNCTION strait_lock_gates(p_jobs uuid[], p_keys text[])
RETURNS TABLE (job_id uuid, ckey text, spare int) LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT g.job_id, g.ckey, g.cap - g.active
    FROM (SELECT DISTINCT u.j, u.k FROM unnest(p_jobs, p_keys) AS u(j, k) ORDER BY u.j, u.k) w
    CROSS JOIN LATERAL (SELECT x.job_id, x.ckey, x.cap, x.active FROM run_gates x
                        WHERE x.job_id = w.j AND x.ckey = w.k FOR UPDATE) g;
END $$;

-- Move gates by signed steps of active slots and held runs (never below zero), locking them first
-- in key order (a claim's own gates are already its transaction's). Whether a gate is left with a
-- free slot and held runs, never NULL; with `p_wake`, that wakes the pollers (the next claim takes
-- them; a claim moving its own gates claims again itself).
CREATE FUNCTION strait_move_gates(p_jobs uuid[], p_keys text[], p_active int[], p_held int[], p_wake boolean)
RETURNS boolean LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    ready boolean;
BEGIN
    PERFORM 1 FROM strait_lock_gates(p_jobs, p_keys);
    WITH d AS (
        SELECT u.j, u.k, sum(u.a)::int AS a, sum(u.h)::int AS h
        FROM unnest(p_jobs, p_keys, p_active, p_held) AS u(j, k, a, h) GROUP BY u.j, u.k
    ), moved AS (
        UPDATE run_gates g SET active = GREATEST(g.active + d.a, 0), held = GREATEST(g.held + d.h, 0)
        FROM d WHERE g.job_id = d.j AND g.ckey = d.k
        RETURNING g.held > 0 AND g.active < g.cap AS r
    )
    SELECT COALESCE(bool_or(moved.r), false) INTO ready FROM moved;
    IF ready AND p_wake THEN
        PERFORM pg_notify('strait_queue_wake', '');
    END IF;
    RETURN ready;
END $$;
