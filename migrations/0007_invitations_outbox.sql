-- depends: 0006_server_secrets
-- Invitations, completed: an expired state, who accepted or revoked them and when, a second
-- token hash for the emailed copy of the token (so the email can be sent, and resent after
-- a failure, without storing any token), one pending invitation per org and email, and the
-- outbox the mail sender works through.

ALTER TABLE org_invitations DROP CONSTRAINT org_invitations_state_check;
ALTER TABLE org_invitations ADD CONSTRAINT org_invitations_state_check
    CHECK (state IN ('pending', 'accepted', 'revoked', 'expired'));
ALTER TABLE org_invitations
    ADD COLUMN email_token_hash bytea UNIQUE CHECK (length(email_token_hash) = 32),
    ADD COLUMN revoked_by uuid REFERENCES users (id) ON DELETE SET NULL,
    ADD COLUMN closed_at timestamptz;
CREATE UNIQUE INDEX org_invitations_one_pending_idx
    ON org_invitations (org_id, lower(email)) WHERE state = 'pending';

-- One row per email to send. The sender claims due rows with FOR UPDATE SKIP LOCKED, so each
-- is sent by one process; a failure keeps the row and pushes next_attempt_at back.
CREATE TABLE email_outbox (
    org_id          uuid NOT NULL,
    id              uuid NOT NULL DEFAULT gen_random_uuid(),
    invitation_id   uuid NOT NULL,
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    last_error      text NOT NULL DEFAULT '' CHECK (length(last_error) <= 1000),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, invitation_id) REFERENCES org_invitations (org_id, id) ON DELETE CASCADE
);
CREATE INDEX email_outbox_due_idx ON email_outbox (next_attempt_at) WHERE sent_at IS NULL;
