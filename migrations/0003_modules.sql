-- depends: 0002_organizations
-- Schema modules, their immutable versions and the versions' proto files.

CREATE TABLE modules (
    org_id      uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    name        text COLLATE "C" NOT NULL
                CHECK (name ~ '^[a-z][a-z0-9_-]{1,38}[a-z0-9]$' AND name NOT LIKE '%--%'),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    is_public   boolean NOT NULL DEFAULT false,
    created_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, id),
    UNIQUE (org_id, name)
);
CREATE INDEX modules_public_idx ON modules (name, org_id) WHERE is_public;

CREATE TABLE module_versions (
    org_id     uuid NOT NULL,
    module_id  uuid NOT NULL,
    id         uuid NOT NULL DEFAULT gen_random_uuid(),
    version    text NOT NULL CHECK (length(version) BETWEEN 1 AND 128),
    size_bytes bigint NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    created_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, id),
    UNIQUE (org_id, module_id, version),
    FOREIGN KEY (org_id, module_id) REFERENCES modules (org_id, id) ON DELETE CASCADE
);
CREATE INDEX module_versions_list_idx ON module_versions (org_id, module_id, created_at DESC, id DESC);

CREATE TABLE version_files (
    org_id     uuid NOT NULL,
    version_id uuid NOT NULL,
    path       text NOT NULL CHECK (length(path) BETWEEN 1 AND 512 AND path LIKE '%.proto'),
    content    text NOT NULL,
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    PRIMARY KEY (org_id, version_id, path),
    FOREIGN KEY (org_id, version_id) REFERENCES module_versions (org_id, id) ON DELETE CASCADE
);
