-- The event log (outbox). Writers insert in the same transaction as the state change;
-- `seq` is assigned later by the single sequencer, in commit order, so a client that
-- resumes after seq N can never miss an event that committed late with a lower row id.

CREATE TABLE events (
    id         bigserial PRIMARY KEY,          -- insertion order (commits may be out of order)
    seq        bigint UNIQUE,                  -- public event id: gap-free resume order
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    type       text NOT NULL CHECK (type ~ '^[a-z_]+(\.[a-z_]+)+$'),
    subject    text NOT NULL,                  -- the message/call/... id it is about
    trace_id   text,
    data       jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_unsequenced ON events (id) WHERE seq IS NULL;
CREATE INDEX events_tenant_seq ON events (tenant_id, seq) WHERE seq IS NOT NULL;
CREATE INDEX events_subject ON events (subject, id);
CREATE INDEX events_trace ON events (trace_id, id) WHERE trace_id IS NOT NULL;
CREATE INDEX events_created ON events (created_at);

CREATE SEQUENCE event_seq AS bigint;
