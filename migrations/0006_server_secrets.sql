-- depends: 0005_audit_events
-- Secrets every replica shares, made once per database. The page-token key is 32 bytes from
-- two gen_random_uuid() values (PostgreSQL's strong random source; no extension needed).

CREATE TABLE server_secrets (
    name  text PRIMARY KEY,
    value bytea NOT NULL CHECK (length(value) >= 16)
);

INSERT INTO server_secrets (name, value)
VALUES ('page_token_key',
        decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
