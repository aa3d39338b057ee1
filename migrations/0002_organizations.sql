-- depends: 0001_users
-- Organizations, their members and invitations. Every tenant-owned table carries
-- org_id and leads its keys with it, so the schema can be distributed by org_id.
-- Names sort bytewise (COLLATE "C"): list order and page tokens are the same on every server.

CREATE TABLE organizations (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text COLLATE "C" NOT NULL UNIQUE
                 CHECK (name ~ '^[a-z][a-z0-9-]{1,38}[a-z0-9]$' AND name NOT LIKE '%--%'),
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    description  text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    owner_id     uuid NOT NULL REFERENCES users (id),
    quota_tier   text NOT NULL CHECK (quota_tier IN ('small', 'medium', 'large', 'unlimited')),
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    settings     jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(settings) = 'object'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX organizations_owner_idx ON organizations (owner_id);

CREATE TABLE organization_members (
    org_id     uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('admin', 'developer', 'viewer')),
    invited_by uuid REFERENCES users (id) ON DELETE SET NULL,
    joined_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX organization_members_user_idx ON organization_members (user_id, org_id);

CREATE TABLE org_invitations (
    org_id      uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    email       text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    role        text NOT NULL CHECK (role IN ('admin', 'developer', 'viewer')),
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    state       text NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'accepted', 'revoked')),
    invited_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    accepted_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (org_id, id),
    CHECK (expires_at > created_at)
);
CREATE INDEX org_invitations_list_idx ON org_invitations (org_id, created_at DESC, id DESC);
