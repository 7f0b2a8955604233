-- The job's default run TTL, in one place for every statement that sets a run's expiry (trigger,
-- replay, DLQ replay): run_ttl_secs when set and positive, else timeout_secs + 60 (engine.md §2.7).
ALTER TABLE jobs ADD COLUMN effective_run_ttl_secs int
    GENERATED ALWAYS AS (COALESCE(NULLIF(run_ttl_secs, 0), timeout_secs + 60)) STORED;
