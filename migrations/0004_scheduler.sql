-- The cron Scheduler (engine.md §7.1): each job with a cron carries its next tick. A scheduler
-- fires a due tick by moving `next_fire_at` on (compare-and-set, so one scheduler of many wins
-- it) in the statement that inserts the tick's run, whose idempotency key is the tick's fire key.
-- NULL: not armed yet (a new job, or a changed cron or time zone); a scheduler arms it.
ALTER TABLE jobs ADD COLUMN next_fire_at timestamptz;
CREATE INDEX jobs_cron_due ON jobs (next_fire_at) WHERE cron IS NOT NULL;
