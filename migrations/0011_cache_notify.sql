-- depends: 0010_compile_jobs
-- Every change to what the servers cache (callers, organizations, memberships, limits, public
-- modules) is announced on the channel spoke_cache when it commits, whoever makes it: a
-- server, the CLI or an operator's SQL. Servers drop the entries named: 'org:<id>' (the org,
-- its members, limits and public modules), 'user:<id>' (a user and their tokens), or all of
-- them ('all', after a TRUNCATE).

CREATE FUNCTION spoke_cache_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind   text := TG_ARGV[0];
    col  text := TG_ARGV[1];
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('spoke_cache', kind || ':' || (to_jsonb(OLD) ->> col));
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('spoke_cache', kind || ':' || (to_jsonb(NEW) ->> col));
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_cache AFTER UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION spoke_cache_notify('user', 'id');
CREATE TRIGGER api_tokens_cache AFTER UPDATE OR DELETE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION spoke_cache_notify('user', 'user_id');
CREATE TRIGGER organizations_cache AFTER UPDATE OR DELETE ON organizations
    FOR EACH ROW EXECUTE FUNCTION spoke_cache_notify('org', 'id');
CREATE TRIGGER organization_members_cache AFTER INSERT OR UPDATE OR DELETE ON organization_members
    FOR EACH ROW EXECUTE FUNCTION spoke_cache_notify('org', 'org_id');
CREATE TRIGGER org_quotas_cache AFTER INSERT OR UPDATE OR DELETE ON org_quotas
    FOR EACH ROW EXECUTE FUNCTION spoke_cache_notify('org', 'org_id');
CREATE TRIGGER modules_cache AFTER INSERT OR DELETE OR UPDATE OF is_public ON modules
    FOR EACH ROW EXECUTE FUNCTION spoke_cache_notify('org', 'org_id');

CREATE FUNCTION spoke_cache_notify_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('spoke_cache', 'all');
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_cache_truncate AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION spoke_cache_notify_all();
CREATE TRIGGER api_tokens_cache_truncate AFTER TRUNCATE ON api_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION spoke_cache_notify_all();
CREATE TRIGGER organizations_cache_truncate AFTER TRUNCATE ON organizations
    FOR EACH STATEMENT EXECUTE FUNCTION spoke_cache_notify_all();
CREATE TRIGGER organization_members_cache_truncate AFTER TRUNCATE ON organization_members
    FOR EACH STATEMENT EXECUTE FUNCTION spoke_cache_notify_all();
CREATE TRIGGER org_quotas_cache_truncate AFTER TRUNCATE ON org_quotas
    FOR EACH STATEMENT EXECUTE FUNCTION spoke_cache_notify_all();
CREATE TRIGGER modules_cache_truncate AFTER TRUNCATE ON modules
    FOR EACH STATEMENT EXECUTE FUNCTION spoke_cache_notify_all();
