-- The pg_trgm extension stays: other schemas may use it, and it holds no data.
DROP INDEX IF EXISTS modules_public_search_idx;
DROP TABLE version_dependencies;
ALTER TABLE version_files DROP CONSTRAINT version_files_size_check;
ALTER TABLE module_versions
    DROP CONSTRAINT module_versions_version_key_key,
    DROP CONSTRAINT module_versions_semver_check,
    DROP CONSTRAINT module_versions_digest_check,
    DROP COLUMN version_key,
    DROP COLUMN digest,
    DROP COLUMN source_repository,
    DROP COLUMN source_commit_sha,
    DROP COLUMN source_branch;
ALTER TABLE modules DROP COLUMN breaking_change_policy;
