-- What the trigger path keeps in memory (a job, a project's quota row, an API key) NOTIFYs
-- strait_config when it changes, whatever statement changes it: every API process forgets its copy
-- as soon as the notification arrives (store/coherence.py), instead of serving it out a TTL.
-- The payload is "table:key", the key being the column the caches are keyed by (TG_ARGV[0]).
-- A jobs update that writes nothing but next_fire_at (the scheduler, at every tick) is not a
-- change the caches care about, and says nothing (below).
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
-- Updates: every column but next_fire_at, named (UPDATE OF), so the scheduler's ticks do not even
-- call the trigger (a WHEN comparing the rows cost 27 µs a row). A migration that adds a column to
-- jobs runs this block again (tests/test_config_feed.py checks that every column is named).
DO $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS jobs_config_changed ON jobs; '
                   'CREATE TRIGGER jobs_config_changed AFTER UPDATE OF %s ON jobs '
                   'FOR EACH ROW EXECUTE FUNCTION strait_config_changed(''id'')',
                   (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
                    WHERE attrelid = 'jobs'::regclass AND attnum > 0 AND NOT attisdropped
                      AND attname <> 'next_fire_at'));
END
$$;

CREATE TRIGGER project_quotas_config_changed AFTER INSERT OR UPDATE OR DELETE ON project_quotas
    FOR EACH ROW EXECUTE FUNCTION strait_config_changed('project_id');

CREATE TRIGGER api_keys_config_changed AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION strait_config_changed('key_hash');
