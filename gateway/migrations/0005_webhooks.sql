-- Event log subscribers and retention; customer webhook endpoints and their deliveries.

-- Where each durable log-tailing subscriber has got to (the public `seq` it processed last).
-- A process-wide table, not tenant data: one row per subscriber over the whole log.
CREATE TABLE event_cursors (
    name       text PRIMARY KEY,
    seq        bigint NOT NULL CHECK (seq >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Webhook endpoints exist only from this migration on, so fan-out starts at the current tail.
INSERT INTO event_cursors (name, seq)
VALUES ('webhooks', coalesce((SELECT max(seq) FROM events), 0));

-- The retention low-water mark: every event with seq <= pruned_through has been deleted,
-- every sequenced event above it is kept. A resume point below it gets `event: reset`.
CREATE TABLE event_retention (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_through bigint NOT NULL DEFAULT 0,
    pruned_at      timestamptz
);
INSERT INTO event_retention DEFAULT VALUES;

CREATE TABLE webhook_endpoints (
    id                   uuid PRIMARY KEY,
    tenant_id            uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url                  text NOT NULL CHECK (url ~ '^https?://'),
    description          text NOT NULL DEFAULT '',
    event_types          text[] NOT NULL DEFAULT '{*}',
    secret               text NOT NULL,           -- needed in clear to sign; shown to the customer once
    status               text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    disabled_reason      text,
    consecutive_failures integer NOT NULL DEFAULT 0,
    failing_since        timestamptz,            -- first failed attempt since the last success
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id, created_at);
CREATE INDEX webhook_endpoints_enabled ON webhook_endpoints (tenant_id) WHERE status = 'enabled';

-- One row per (endpoint, event): the unique key makes fan-out exactly-once even when it is
-- retried. The event is copied in (`payload`) so a delivery outlives the event's retention.
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_seq        bigint NOT NULL,
    event_type       text NOT NULL,
    trace_id         text,
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    job_id           bigint,                     -- the queue job that owns the next attempt
    window_started   timestamptz NOT NULL DEFAULT now(),  -- retries stop retry_window after this
    next_attempt_at  timestamptz,
    last_attempt_at  timestamptz,
    last_status_code integer,
    last_response    text,                       -- first bytes of the last response body
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    UNIQUE (endpoint_id, event_seq)
);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (tenant_id, endpoint_id, created_at DESC, id);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (updated_at) WHERE status <> 'pending';
