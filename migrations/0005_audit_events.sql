-- depends: 0002_organizations
-- Audit trail of mutating calls. No foreign keys: events outlive the users and
-- organizations they name.

CREATE TABLE audit_events (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    org_id     uuid,
    actor_id   uuid,
    method     text NOT NULL,
    target     text NOT NULL DEFAULT '',
    outcome    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id)
);
CREATE INDEX audit_events_org_idx ON audit_events (org_id, created_at DESC) WHERE org_id IS NOT NULL;
CREATE INDEX audit_events_actor_idx ON audit_events (actor_id, created_at DESC);
