-- Dashboard sessions: an API key exchanged for a short-lived cookie (EventSource cannot send
-- an Authorization header). Only the SHA-256 of the random token is stored; the session is
-- bound to the key (revoking the key ends it: authentication joins api_keys), its tenant and
-- the key's scopes at the exchange. Expiry is read against the database's now().
CREATE TABLE dashboard_sessions (
    token_hash  bytea PRIMARY KEY,
    key_id      text NOT NULL REFERENCES api_keys (key_id) ON DELETE CASCADE,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_key ON dashboard_sessions (key_id);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);
