-- depends: 0008_versions_dependencies_search
-- Monthly usage records carry the gauges (modules, versions, storage bytes) as last recorded
-- in their month (NULL: nothing changed them that month). A month's record shows the latest
-- gauges recorded up to it: a new month starts from the live values, never from zero.

ALTER TABLE org_usage_periods
    ADD COLUMN modules       bigint CHECK (modules >= 0),
    ADD COLUMN versions      bigint CHECK (versions >= 0),
    ADD COLUMN storage_bytes bigint CHECK (storage_bytes >= 0);
