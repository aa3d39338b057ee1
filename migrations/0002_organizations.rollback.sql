DROP TABLE org_invitations;
DROP TABLE organization_members;
DROP TABLE organizations;
