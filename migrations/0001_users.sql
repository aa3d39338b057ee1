-- Users and their API tokens. Users are global (not tenant-owned).

CREATE TABLE users (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email        text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    display_name text NOT NULL DEFAULT '' CHECK (length(display_name) <= 200),
    is_admin     boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- Only the SHA-256 of a token is stored; `prefix` helps a person recognise it.
CREATE TABLE api_tokens (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    prefix      text NOT NULL,
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_tokens_user_idx ON api_tokens (user_id, created_at DESC, id DESC)
    WHERE revoked_at IS NULL;
