-- Endpoint circuit breakers shared by every worker process (engine.md §3.4). One row per
-- (project, endpoint) that failed lately: consecutive failures counted by all processes, and while
-- `open_until` is ahead, runs for the endpoint wait in the queue instead of calling it. No row is a
-- closed circuit: a success deletes it, so the table holds only endpoints that are unwell.
CREATE TABLE endpoint_circuits (
    project_id  text NOT NULL,
    url_hash    text NOT NULL,                -- sha256 (hex) of the endpoint URL
    failures    int NOT NULL,                 -- consecutive failed calls (kept while open)
    open_until  timestamptz,                  -- NULL: closed, counting
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, url_hash)
);
