DROP TABLE quota_alerts;
DROP TABLE webhook_deliveries;
DROP TABLE webhooks;
DROP TABLE events;
DROP FUNCTION spoke_events_notify();
DROP TABLE org_event_counters;
DELETE FROM server_secrets WHERE name = 'webhook_secret_key';
