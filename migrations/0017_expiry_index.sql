-- The Reaper's expiry sweep (expire_runs, every REAPER_INTERVAL_SECS) read every queued run to find
-- the ones past their TTL: expires_at is in no index, so it walked the claim index and the held
-- index with a heap fetch per run, about 540 ms of PostgreSQL's CPU per sweep behind 2,000,000
-- queued runs (a quarter of a core at one sweep every 2 s, whether any run had a TTL or not). Only
-- runs that can expire enter this index: queued, with a TTL, never started and not resumed from a
-- wait (engine.md §2.7). Every other run pays its predicate's check and nothing more.
CREATE INDEX job_runs_expiry ON job_runs (expires_at)
    WHERE status = 'queued' AND expires_at IS NOT NULL AND attempt = 1 AND resume_event_key IS NULL;
