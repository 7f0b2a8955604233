-- Debounce and batch windows (README "Debounce and batch windows"; engine.md §2.1 steps 8-9).
--
-- A trigger of a job with a window does not make a run of its own: it joins the one `delayed` run of
-- its (job, window key), or makes it. This partial unique index is how a trigger finds that run, in
-- the trigger's one statement (INSERT … ON CONFLICT … DO UPDATE), with no lock held between round
-- trips. The claim that promotes the run (delayed → queued) takes it out of the index, so a trigger
-- that loses that race makes a new run instead of joining one that is on its way to the endpoint.
ALTER TABLE job_runs ADD COLUMN window_key text;    -- 'debounce:<key>' or 'batch:<key>' ('' = the job-wide key)
ALTER TABLE job_runs ADD COLUMN window_items int;   -- a batch: how many payloads it holds

CREATE UNIQUE INDEX job_runs_window ON job_runs (job_id, window_key) WHERE status = 'delayed' AND window_key IS NOT NULL;
