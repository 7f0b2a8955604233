-- Runs set aside as 'job' (their job paused, disabled or not HTTP: migration 0005) went back to the
-- claim index in the statement that let their job run again, all of them: behind 1,000,000 such runs
-- that was one UPDATE of a million rows inside the resume's request (past REQUEST_TIMEOUT, and the
-- resume rolled back with it). The request now frees the first of them (in claim order) and leaves
-- a row here; the Reaper frees the rest in bounded batches, one transaction each, and drops the row
-- once a batch finds fewer than it asked for. A durable mailbox: a crash between batches loses
-- nothing, the next Reaper goes on.
CREATE TABLE job_releases (
    job_id     uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
