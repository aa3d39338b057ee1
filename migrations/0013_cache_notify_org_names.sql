-- depends: 0012_usage_flush_writers
-- Servers remember organizations that do not exist (so that a missing org and one the caller
-- may not see cost the same). Creating or renaming an organization makes a reference name
-- one: it is announced as 'org-names' on spoke_cache, and servers forget every missing org
-- they remember.

CREATE FUNCTION spoke_cache_notify_payload() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('spoke_cache', TG_ARGV[0]);
    RETURN NULL;
END;
$$;

CREATE TRIGGER organizations_names_cache AFTER INSERT OR UPDATE OF id, name ON organizations
    FOR EACH STATEMENT EXECUTE FUNCTION spoke_cache_notify_payload('org-names');
