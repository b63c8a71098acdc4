-- Messaging: templates, messages with a monotonic status, provider attempts, usage.

CREATE TABLE message_templates (
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name       text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE messages (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    direction           text NOT NULL CHECK (direction IN ('outbound', 'inbound')),
    channel             text NOT NULL CHECK (channel IN ('sms', 'whatsapp')),
    to_number           text NOT NULL,
    from_number         text,
    body                text NOT NULL,
    template            text,
    purpose             text NOT NULL CHECK (purpose IN ('marketing', 'transactional')),
    status              text NOT NULL CHECK (status IN (
        'scheduled', 'queued', 'sent', 'delivered', 'undelivered', 'failed', 'rejected', 'received')),
    provider            text,
    provider_message_id text,
    encoding            text NOT NULL,
    segments            integer NOT NULL,
    error_code          text,
    error_detail        text,
    send_at             timestamptz,
    trace_id            text NOT NULL,
    metadata            jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_tenant_created ON messages (tenant_id, created_at DESC);
CREATE INDEX messages_trace ON messages (trace_id);
CREATE UNIQUE INDEX messages_provider_ref ON messages (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- One row per try at a provider. `attempt_key` is the per-attempt idempotency key sent to
-- the provider: a job reclaimed after a crash reuses the key of an attempt with no outcome,
-- so a send that may have gone out is never made twice under a new key.
CREATE TABLE message_attempts (
    message_id          uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    n                   integer NOT NULL,
    attempt_key         text NOT NULL UNIQUE,
    provider            text NOT NULL,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    outcome             text CHECK (outcome IN ('accepted', 'transient_error', 'permanent_error')),
    error               text,
    latency_ms          double precision,
    provider_message_id text,
    PRIMARY KEY (message_id, n)
);

CREATE TABLE usage_records (
    id          bigserial PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    subject     text NOT NULL,
    channel     text NOT NULL,
    unit        text NOT NULL,
    quantity    integer NOT NULL CHECK (quantity >= 0),
    provider    text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (subject, unit)
);
CREATE INDEX usage_tenant_time ON usage_records (tenant_id, recorded_at);

-- Receipts that arrive before the dispatch that caused them has committed its provider id
-- (fast providers call back within milliseconds); applied as soon as that commit lands.
CREATE TABLE orphan_receipts (
    id                  bigserial PRIMARY KEY,
    provider            text NOT NULL,
    provider_message_id text NOT NULL,
    status              text NOT NULL,
    error_code          text,
    raw                 jsonb NOT NULL DEFAULT '{}',
    received_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orphan_receipts_ref ON orphan_receipts (provider, provider_message_id);

-- Circuit-breaker transitions per provider (not tenant data: a provider's health is global).
CREATE TABLE provider_health_events (
    id         bigserial PRIMARY KEY,
    provider   text NOT NULL,
    from_state text NOT NULL,
    to_state   text NOT NULL,
    reason     text NOT NULL,
    error_rate double precision,
    calls      integer,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX provider_health_events_provider ON provider_health_events (provider, id);
