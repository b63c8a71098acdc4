-- DID health: every call's end from one of a tenant's DIDs, as an outcome per DID (DESIGN
-- principle 3: health is a query over these rows, nothing in memory).
--
-- A row is written in the SAME transaction as the call's final status (gateway/calls/service.py
-- `_ended`, through campaigns/didhealth.py `record`): a call that ended has its row, one only
-- (call_id is unique). `short_call`: answered, with less than 6 s of talk — a sign that people
-- pick up and hang up at once (a number flagged as spam on their phones).

CREATE TABLE did_health_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    did        text NOT NULL,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    call_id    uuid UNIQUE REFERENCES calls (id) ON DELETE SET NULL,
    outcome    text NOT NULL
               CHECK (outcome IN ('answered', 'short_call', 'no_answer', 'busy', 'failed')),
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX did_health_events_did_at ON did_health_events (did, at);
CREATE INDEX did_health_events_tenant_at ON did_health_events (tenant_id, at);

-- Each DID's calls, answer rate and short-call rate over the `win` before now() (the
-- database's clock). Answer rate: (answered + short_call) / calls; short-call rate:
-- short_call / (answered + short_call).
CREATE FUNCTION did_health_over(win interval)
RETURNS TABLE (did text, tenant_id uuid, calls bigint, answered bigint, short_calls bigint,
               no_answer bigint, busy bigint, failed bigint, answer_rate double precision,
               short_call_rate double precision, last_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT e.did, e.tenant_id, count(*),
           count(*) FILTER (WHERE e.outcome IN ('answered', 'short_call')),
           count(*) FILTER (WHERE e.outcome = 'short_call'),
           count(*) FILTER (WHERE e.outcome = 'no_answer'),
           count(*) FILTER (WHERE e.outcome = 'busy'),
           count(*) FILTER (WHERE e.outcome = 'failed'),
           (count(*) FILTER (WHERE e.outcome IN ('answered', 'short_call')))::float8
               / count(*),
           CASE WHEN count(*) FILTER (WHERE e.outcome IN ('answered', 'short_call')) > 0
                THEN (count(*) FILTER (WHERE e.outcome = 'short_call'))::float8
                     / count(*) FILTER (WHERE e.outcome IN ('answered', 'short_call')) END,
           max(e.at)
      FROM did_health_events e
     WHERE e.at > now() - win
     GROUP BY e.did, e.tenant_id
$$;

-- The same over the last day, for an operator's psql.
CREATE VIEW did_health AS SELECT * FROM did_health_over(interval '1 day');

-- A DID at rest: not chosen by local presence until `until` (did.rested / did.restored).
-- One open rest per DID; a restored rest keeps its row (history), restored_at set.
CREATE TABLE did_rests (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    did          text NOT NULL,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    reason       text NOT NULL,
    calls        bigint NOT NULL,
    answer_rate  double precision,
    rested_at    timestamptz NOT NULL DEFAULT now(),
    until        timestamptz NOT NULL,
    restored_at  timestamptz
);
CREATE UNIQUE INDEX did_rests_open ON did_rests (did) WHERE restored_at IS NULL;

-- What the `lookup` reputation provider last said of each DID (gateway/providers/contracts.py
-- ReputationProvider). A flagged DID is rested like one answered too seldom.
CREATE TABLE did_reputation (
    did         text PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    provider    text NOT NULL,
    flags       text[] NOT NULL DEFAULT '{}',
    score       double precision,
    line_type   text,
    raw         jsonb NOT NULL DEFAULT '{}',
    checked_at  timestamptz NOT NULL DEFAULT now()
);
