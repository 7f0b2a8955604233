-- Run transitions for Prometheus (`strait_run_transitions_total{from,to}`): the transition seam adds
-- one row per (from, to) a statement wrote, in that statement, so the count is exact whichever
-- process wrote it and only what committed counts; the processes that serve /metrics drain it
-- (DELETE ... RETURNING: disjoint rows each, so their counters add up). Unlogged, no index: rows
-- live a second; after a crash of PostgreSQL the undrained ones are lost, as counters may be.
CREATE UNLOGGED TABLE run_transition_tally (
    from_status text NOT NULL,
    to_status   text NOT NULL,
    n           bigint NOT NULL
);

-- The queue's depth by status (metrics_sampler, every 10 s) reads one partial index per status; these
-- statuses had none (rows enter them rarely: an entry costs nothing on the claim/outcome path).
CREATE INDEX job_runs_waiting ON job_runs (job_id) WHERE status = 'waiting';
CREATE INDEX job_runs_parked ON job_runs (status) WHERE status IN ('paused', 'replay_staged');
