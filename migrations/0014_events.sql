-- depends: 0013_cache_notify_org_names
-- Events (issue 17): every organization event, numbered per organization in commit order,
-- the organization's webhooks, the outbox of their deliveries, and the record of usage
-- alerts already sent (one per quota, threshold and period).

-- The key webhook signing secrets are derived from (spoke_grpc/webhook_secrets.py): a
-- webhook row keeps only a random salt, so the table alone never yields a secret.
INSERT INTO server_secrets (name, value)
VALUES ('webhook_secret_key',
        decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));

-- The last event number of each organization. Taking the next number locks the row until
-- the transaction ends, so an organization's events commit in the order of their numbers
-- and a reader that has seen number n has seen every event before it.
CREATE TABLE org_event_counters (
    org_id   uuid PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    last_seq bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0)
);

CREATE TABLE events (
    org_id     uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    seq        bigint NOT NULL CHECK (seq > 0),
    id         uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    type       text NOT NULL CHECK (type ~ '^[a-z_]+\.[a-z_]+$'),
    -- The module the event is about, if any: who may watch it follows the module's visibility.
    module_id  uuid,
    data       jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, seq)
);

-- Watchers (EventService.WatchEvents) are woken when their organization has a new event:
-- the notification is sent at commit, so what it announces is visible.
CREATE FUNCTION spoke_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('spoke_events', NEW.org_id::text);
    RETURN NULL;
END;
$$;
CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION spoke_events_notify();

CREATE TABLE webhooks (
    org_id               uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    id                   uuid NOT NULL DEFAULT gen_random_uuid(),
    url                  text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    events               text[] NOT NULL CHECK (cardinality(events) BETWEEN 1 AND 32),
    description          text NOT NULL DEFAULT '' CHECK (length(description) <= 1000),
    secret_salt          bytea NOT NULL CHECK (length(secret_salt) = 32),
    enabled              boolean NOT NULL DEFAULT true,
    disabled_reason      text NOT NULL DEFAULT '' CHECK (length(disabled_reason) <= 1000),
    -- Deliveries that failed for good in a row; reset by a delivered one.
    consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    -- When the server disabled it (NULL when enabled or disabled by an admin), and the
    -- email telling the org's admins: sent, attempts, next attempt.
    disabled_at          timestamptz,
    notice_sent_at       timestamptz,
    notice_attempts      integer NOT NULL DEFAULT 0 CHECK (notice_attempts >= 0),
    notice_next_at       timestamptz NOT NULL DEFAULT now(),
    -- A subscription to one module's versions, possibly another organization's public
    -- module (no foreign key: the source may go away; the webhook then hears nothing).
    source_org_id        uuid,
    source_module_id     uuid,
    created_by           uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, id),
    CHECK ((source_org_id IS NULL) = (source_module_id IS NULL))
);
CREATE INDEX webhooks_list_idx ON webhooks (org_id, created_at, id);
CREATE INDEX webhooks_source_idx ON webhooks (source_org_id, source_module_id)
    WHERE source_module_id IS NOT NULL;

-- One row per event per webhook. The dispatcher claims the oldest pending row of a webhook
-- FOR UPDATE SKIP LOCKED, and only when no older row of that webhook is pending: one event
-- at a time per webhook, in order, by one process.
CREATE TABLE webhook_deliveries (
    org_id          uuid NOT NULL,
    id              uuid NOT NULL DEFAULT gen_random_uuid(),
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    webhook_id      uuid NOT NULL,
    -- The event's organization: the webhook's own, or the source of a subscription.
    event_org_id    uuid NOT NULL,
    event_seq       bigint NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    status_code     integer NOT NULL DEFAULT 0,
    last_error      text NOT NULL DEFAULT '' CHECK (length(last_error) <= 1000),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    first_attempt_at timestamptz,
    last_attempt_at timestamptz,
    finished_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, webhook_id) REFERENCES webhooks (org_id, id) ON DELETE CASCADE,
    FOREIGN KEY (event_org_id, event_seq) REFERENCES events (org_id, seq) ON DELETE CASCADE
);
CREATE INDEX webhook_deliveries_queue_idx
    ON webhook_deliveries (org_id, webhook_id, seq) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_due_idx
    ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_list_idx
    ON webhook_deliveries (org_id, webhook_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_org_id, event_seq);

-- Usage alerts sent: one per organization, quota, threshold (percent) and period (the
-- hour for API requests, the month otherwise), and the email telling the org's admins.
CREATE TABLE quota_alerts (
    org_id     uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    quota      text NOT NULL CHECK (length(quota) BETWEEN 1 AND 200),
    threshold  integer NOT NULL CHECK (threshold BETWEEN 1 AND 1000),
    period     text NOT NULL CHECK (length(period) BETWEEN 1 AND 32),
    used       bigint NOT NULL,
    quota_limit bigint NOT NULL,
    notice_sent_at  timestamptz,
    notice_attempts integer NOT NULL DEFAULT 0 CHECK (notice_attempts >= 0),
    notice_next_at  timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, quota, threshold, period)
);
CREATE INDEX quota_alerts_notice_idx ON quota_alerts (notice_next_at) WHERE notice_sent_at IS NULL;
CREATE INDEX webhooks_notice_idx ON webhooks (notice_next_at)
    WHERE disabled_at IS NOT NULL AND notice_sent_at IS NULL;
