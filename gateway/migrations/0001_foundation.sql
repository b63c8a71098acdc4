-- Tenants, API keys, idempotency records and DIDs: what every later feature stands on.

CREATE TABLE tenants (
    id         uuid PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Keys look like tk_<key_id>_<secret>; only sha256(secret) is stored.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key_id      text NOT NULL UNIQUE,
    secret_hash bytea NOT NULL,
    name        text NOT NULL DEFAULT '',
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- Stripe-style idempotency: the first response to (tenant, key) is replayed.
CREATE TABLE idempotency_keys (
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key             text NOT NULL,
    method          text NOT NULL,
    path            text NOT NULL,
    request_hash    bytea NOT NULL,
    response_status integer,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Phone numbers we own: which tenant, which provider carries them, what they can do.
CREATE TABLE dids (
    number       text PRIMARY KEY CHECK (number ~ '^\+[1-9][0-9]{6,14}$'),
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    provider     text NOT NULL,
    capabilities text[] NOT NULL DEFAULT '{}'
        CHECK (capabilities <@ ARRAY['sms', 'mms', 'voice', 'whatsapp']),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dids_tenant ON dids (tenant_id);
