-- A parked run resumes only once the dispatch that parked it has returned. Its endpoint may still be
-- running after its wait-for-event or spawn-await was answered (spawning more awaited children, say),
-- and a resume before it returns would dispatch the run a second time beside it, and make the first
-- call's token stale in the middle of its work (a fast first child resumed its parent before the
-- parent's second spawn). `parked_open_until` is set when a dispatch parks its run: the dispatch's
-- lease expiry, moved on by the dispatcher's lease heartbeat while the call lasts. It is cleared when
-- the dispatcher writes that dispatch's outcome (close_parked_dispatches). A resume that comes while
-- it is open is held in `resume_held` (the key the run will resume with) and done at that close, or by
-- the Reaper's resume_lost_waits once `parked_open_until` has passed (the dispatching worker died).
ALTER TABLE job_runs ADD COLUMN parked_open_until timestamptz, ADD COLUMN resume_held text;
