-- depends: 0007_invitations_outbox
-- Modules and versions, completed: each module's breaking-change policy; semantic versions,
-- unique per module whatever the spelling (`v1.2.3` = `1.2.3` = `1.2.3+build`), with their
-- content digest and source; the dependency edges between versions; and an index for the
-- public module search.

ALTER TABLE modules
    ADD COLUMN breaking_change_policy text NOT NULL DEFAULT 'allow'
        CHECK (breaking_change_policy IN ('allow', 'reject'));

-- version_key is the version without its leading 'v' and build metadata: semver precedence
-- ignores both, so two versions with one key are one version. The UNIQUE constraint decides
-- concurrent pushes of one version.
ALTER TABLE module_versions
    ADD CONSTRAINT module_versions_semver_check CHECK (version ~ (
        '^v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)'
        '(-(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\.(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?'
        '(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$')),
    ADD COLUMN version_key text COLLATE "C"
        GENERATED ALWAYS AS (regexp_replace(version, '^v|\+.*$', '', 'g')) STORED,
    ADD COLUMN digest text,
    ADD COLUMN source_repository text NOT NULL DEFAULT ''
        CHECK (length(source_repository) <= 500),
    ADD COLUMN source_commit_sha text NOT NULL DEFAULT ''
        CHECK (source_commit_sha ~ '^([0-9a-f]{7,64})?$'),
    ADD COLUMN source_branch text NOT NULL DEFAULT '' CHECK (length(source_branch) <= 255),
    ADD CONSTRAINT module_versions_version_key_key UNIQUE (org_id, module_id, version_key);

-- The digest of versions stored before this migration (the encoding of Version.digest: per
-- file sorted by path bytes, 8-byte big-endian lengths before the path and content bytes).
UPDATE module_versions v SET digest = encode(sha256(coalesce((
    SELECT string_agg(
        int8send(octet_length(f.path)) || convert_to(f.path, 'UTF8')
            || int8send(octet_length(f.content)) || convert_to(f.content, 'UTF8'),
        ''::bytea ORDER BY convert_to(f.path, 'UTF8'))
    FROM version_files f WHERE f.org_id = v.org_id AND f.version_id = v.id), ''::bytea)), 'hex');
ALTER TABLE module_versions
    ALTER COLUMN digest SET NOT NULL,
    ADD CONSTRAINT module_versions_digest_check CHECK (digest ~ '^[0-9a-f]{64}$');

ALTER TABLE version_files
    ADD CONSTRAINT version_files_size_check CHECK (size_bytes BETWEEN 1 AND 1048576);

-- Direct dependencies: dependent version (this org's) → dependency version (this org's, or a
-- public module's of another org). There is deliberately no foreign key to the dependency: it
-- may live in another organization (so on another node once the schema is distributed by
-- org_id), and deleting a module with `force`, or its organization, must leave the dependents
-- naming what they were built against. Names are kept for that (org and module names are
-- immutable). Cycles cannot arise: a version can only depend on versions that already exist.
CREATE TABLE version_dependencies (
    org_id          uuid NOT NULL,
    version_id      uuid NOT NULL,
    position        integer NOT NULL CHECK (position >= 0),
    dep_org_id      uuid NOT NULL,
    dep_module_id   uuid NOT NULL,
    dep_version_id  uuid NOT NULL,
    dep_org_name    text COLLATE "C" NOT NULL,
    dep_module_name text COLLATE "C" NOT NULL,
    dep_version     text NOT NULL,
    PRIMARY KEY (org_id, version_id, dep_version_id),
    UNIQUE (org_id, version_id, position),
    FOREIGN KEY (org_id, version_id) REFERENCES module_versions (org_id, id) ON DELETE CASCADE,
    CHECK (dep_version_id <> version_id)
);
-- Who depends on a module's versions (deleting a module checks it).
CREATE INDEX version_dependencies_dependency_idx
    ON version_dependencies (dep_org_id, dep_module_id, dep_version_id);

-- Public search (ListPublicModules): a case-insensitive substring match on name and
-- description. With pg_trgm, a trigram GIN index serves it; where the server does not ship
-- pg_trgm (the embedded PostgreSQL) or the migrating role may not create it, the search runs
-- the same query over modules_public_idx (public modules in name order) instead.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
        CREATE INDEX modules_public_search_idx ON modules
            USING gin (name gin_trgm_ops, description gin_trgm_ops) WHERE is_public;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'pg_trgm not created (%); public search runs without a trigram index', SQLERRM;
END
$$;
