-- Concurrency limits at claim time (engine.md §2.2), without rescanning the runs they hold back.
--
-- A gate counts the runs holding one of its slots: one per job with `max_concurrency` (ckey ''),
-- one per (job, concurrency key) with `max_concurrency_per_key`. The claim locks the gates of the
-- runs it considers (in key order, so claims and outcomes never deadlock), grants what `cap - active`
-- allows and records the slots on each claimed run (`slots`, the gates' keys); a run leaving
-- `executing` gives them back in the same statement (the transition seam's {after}).
--
-- A queued run that may not be claimed is moved out of the claim's index instead of being walked
-- past by every claim: `held` says why ('g:<ckey>' a full gate; 'job' its job is paused, disabled
-- or not an HTTP job; 'retry' a retry in its backoff, until `next_retry_at`). A gate also counts
-- the runs it holds; a gate with a free slot and held runs is in `run_gates_ready`, where the next
-- claim finds them (the outcome that freed the slot wakes it).
ALTER TABLE job_runs ADD COLUMN held text;
ALTER TABLE job_runs ADD COLUMN slots text[];

DROP INDEX job_runs_claim;
CREATE INDEX job_runs_claim ON job_runs (priority DESC, created_at) WHERE status = 'queued' AND held IS NULL;
CREATE INDEX job_runs_held ON job_runs (job_id, held, priority DESC, created_at) WHERE status = 'queued' AND held IS NOT NULL;
CREATE INDEX job_runs_retry ON job_runs (next_retry_at) WHERE status = 'queued' AND held = 'retry';
-- runs queued before this migration with a retry still in backoff stay in the claim index (it skips
-- them until due, as before); new ones are set aside

CREATE TABLE run_gates (
    job_id  uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    ckey    text NOT NULL,               -- '' the job's own limit, else a concurrency key
    cap     int NOT NULL,                -- the limit (2147483647 once the job has none)
    active  int NOT NULL DEFAULT 0,      -- runs holding a slot (executing)
    held    int NOT NULL DEFAULT 0,      -- queued runs this gate holds back
    PRIMARY KEY (job_id, ckey)
);
CREATE INDEX run_gates_ready ON run_gates (job_id, ckey) WHERE held > 0 AND active < cap;
