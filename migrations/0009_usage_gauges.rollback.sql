ALTER TABLE org_usage_periods DROP COLUMN storage_bytes, DROP COLUMN versions, DROP COLUMN modules;
