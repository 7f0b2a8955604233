-- Environments, job groups and project-level pause (issue 14).
--
-- An environment is a named set of string variables of one project; a job bound to it
-- (`jobs.environment_id`) is dispatched to its `ENDPOINT_URL` when it has one (engine.md §3.1 step 4).
-- The claim must not join environments on the hot path, so the override is denormalised onto the
-- job: `jobs.endpoint_override`, written by the environment's writes (for every job bound to it,
-- in the same transaction) and by the job's own writes when its environment changes.
--
-- A project's pause is likewise copied onto its jobs (`jobs.project_paused`): every place that
-- treats a paused job as "take no trigger, fire no tick, dispatch nothing" reads
-- `paused OR project_paused` from the job row it already has.
--
-- `jobs.environment_id` and `jobs.group_id` stay text without a foreign key: values stored before
-- this migration name nothing (the API took any string); the API checks new ones against the
-- project's environments and groups, under a share lock on the row it names.

CREATE TABLE environments (
    id          uuid PRIMARY KEY,
    project_id  text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name        text NOT NULL,
    slug        text,
    description text,
    variables   jsonb NOT NULL DEFAULT '{}',     -- string -> string
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);
CREATE INDEX environments_project ON environments (project_id, created_at DESC, id DESC);

CREATE TABLE job_groups (
    id          uuid PRIMARY KEY,
    project_id  text NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name        text NOT NULL,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);
CREATE INDEX job_groups_project ON job_groups (project_id, created_at DESC, id DESC);

ALTER TABLE jobs ADD COLUMN endpoint_override text;
ALTER TABLE jobs ADD COLUMN project_paused boolean NOT NULL DEFAULT false;
-- an environment's write updates its jobs; a group lists, pauses and counts its jobs
CREATE INDEX jobs_environment ON jobs (environment_id) WHERE environment_id IS NOT NULL;
CREATE INDEX jobs_group ON jobs (group_id, created_at DESC, id DESC) WHERE group_id IS NOT NULL;

ALTER TABLE projects ADD COLUMN paused boolean NOT NULL DEFAULT false;
ALTER TABLE projects ADD COLUMN paused_at timestamptz;
ALTER TABLE projects ADD COLUMN pause_reason text;
