DROP TABLE email_outbox;
DROP INDEX org_invitations_one_pending_idx;
ALTER TABLE org_invitations DROP COLUMN closed_at, DROP COLUMN revoked_by, DROP COLUMN email_token_hash;
UPDATE org_invitations SET state = 'revoked' WHERE state = 'expired';
ALTER TABLE org_invitations DROP CONSTRAINT org_invitations_state_check;
ALTER TABLE org_invitations ADD CONSTRAINT org_invitations_state_check
    CHECK (state IN ('pending', 'accepted', 'revoked'));
