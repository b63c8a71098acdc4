-- IVR: uploaded flows (versioned, immutable) and one summary row per finished session.
--
-- A live session lives in Redis with a TTL (ivr/sessions.py): it is short-lived and any worker
-- may carry it on. When it ends, what happened is summarised here and in the event log.

CREATE TABLE ivr_flows (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name           text NOT NULL,
    version        integer NOT NULL CHECK (version >= 1),
    document       jsonb NOT NULL,      -- validated at the edge (ivr/flow.py)
    -- Signs the flow's webhook requests (Trunkline-Signature); the same for every version.
    signing_secret text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name, version)
);
CREATE INDEX ivr_flows_latest ON ivr_flows (tenant_id, name, version DESC);

-- A version is immutable: a call keeps the version it started with, so the document it runs
-- must never change under it. A new upload of the same name is a new row (version + 1).
CREATE FUNCTION ivr_flows_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ivr_flows rows are immutable (upload a new version)';
END $$;
CREATE TRIGGER ivr_flows_no_update BEFORE UPDATE ON ivr_flows
    FOR EACH ROW EXECUTE FUNCTION ivr_flows_immutable();

CREATE TABLE ivr_sessions (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    flow_id      uuid NOT NULL REFERENCES ivr_flows (id),
    flow_name    text NOT NULL,
    flow_version integer NOT NULL,
    transport    text NOT NULL,         -- simulate | sandbox | asterisk | twilio
    caller       text NOT NULL,
    called       text,
    started_at   timestamptz NOT NULL,
    ended_at     timestamptz NOT NULL,
    end_reason   text NOT NULL,
    last_node    text,
    steps        integer NOT NULL,
    variables    jsonb NOT NULL DEFAULT '{}',
    recordings   jsonb NOT NULL DEFAULT '[]',
    transcript   jsonb NOT NULL DEFAULT '[]'
);
CREATE INDEX ivr_sessions_tenant_started ON ivr_sessions (tenant_id, started_at DESC, id DESC);

-- The flow an inbound call to a DID runs (PUT /v1/dids/{number} {"ivr_flow": name}): by name,
-- so a new upload takes effect for the next call; a call keeps the version it started with.
ALTER TABLE dids ADD COLUMN ivr_flow text;
