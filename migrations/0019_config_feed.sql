-- What the trigger path keeps in memory (a job, a project's quota row, an API key) NOTIFYs
-- strait_config when it changes, whatever statement changes it: every API process forgets its copy
-- as soon as the notification arrives (store/coherence.py), instead of serving it out a TTL.
-- The payload is "table:key", the key being the column the caches are keyed by (TG_ARGV[0]).
-- A jobs update that writes nothing but next_fire_at (the scheduler, at every tick) is not a
-- change the caches care about, and says nothing.
CREATE OR REPLACE FUNCTION strait_config_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    old_key text;
    new_key text;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        old_key := to_jsonb(OLD) ->> TG_ARGV[0];
        PERFORM pg_notify('strait_config', TG_TABLE_NAME || ':' || old_key);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_key := to_jsonb(NEW) ->> TG_ARGV[0];
        IF new_key IS DISTINCT FROM old_key THEN
            PERFORM pg_notify('strait_config', TG_TABLE_NAME || ':' || new_key);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_config_written AFTER INSERT OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION strait_config_changed('id');
CREATE TRIGGER jobs_config_changed AFTER UPDATE ON jobs
    FOR EACH ROW WHEN ((to_jsonb(OLD) - 'next_fire_at') IS DISTINCT FROM (to_jsonb(NEW) - 'next_fire_at'))
    EXECUTE FUNCTION strait_config_changed('id');

CREATE TRIGGER project_quotas_config_changed AFTER INSERT OR UPDATE OR DELETE ON project_quotas
    FOR EACH ROW EXECUTE FUNCTION strait_config_changed('project_id');

CREATE TRIGGER api_keys_config_changed AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION strait_config_changed('key_hash');
