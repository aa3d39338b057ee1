DROP TRIGGER organizations_names_cache ON organizations;
DROP FUNCTION spoke_cache_notify_payload();
