-- The job's default run TTL, in one place for every statement that sets a run's expiry (trigger,
-- replay, DLQ replay): run_ttl_secs when set (0 = no TTL, NULL here), else timeout_secs + 60
-- (engine.md §2.7).
ALTER TABLE jobs ADD COLUMN effective_run_ttl_secs int
    GENERATED ALWAYS AS (CASE WHEN run_ttl_secs = 0 THEN NULL ELSE COALESCE(run_ttl_secs, timeout_secs + 60) END) STORED;
