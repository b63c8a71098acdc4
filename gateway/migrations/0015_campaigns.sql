-- Outbound campaigns: the campaign, its prospects, and one row per attempt at a prospect.
--
-- Progress is SQL over `campaign_prospects` (DESIGN principle 3): nothing about a campaign
-- lives in a worker's memory. A prospect is claimed with FOR UPDATE SKIP LOCKED (status
-- 'dialing', attempts + 1); its attempt row is written in the SAME transaction as the call or
-- message it made (gateway/pipeline/calls/accept.py `attach`), so "a prospect in 'dialing'
-- with no attempt row for its current n" means exactly "claimed, nothing sent yet" — the
-- dialer re-sends it under the same deterministic Idempotency-Key, which cannot dial twice.

CREATE TABLE campaigns (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text NOT NULL,
    channel       text NOT NULL CHECK (channel IN ('voice', 'sms')),
    purpose       text NOT NULL CHECK (purpose IN ('marketing', 'transactional')),
    status        text NOT NULL DEFAULT 'draft'
                  CHECK (status IN ('draft', 'running', 'paused', 'completed', 'canceled')),
    config        jsonb NOT NULL,        -- validated at the edge (gateway/campaigns/schemas.py)
    -- Pacing to `cps`: a token bucket kept on the row, moved only under the row's lock.
    pace_tokens   double precision NOT NULL DEFAULT 1,
    pace_at       timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    ended_at      timestamptz
);
CREATE INDEX campaigns_tenant_created ON campaigns (tenant_id, created_at DESC, id DESC);
CREATE INDEX campaigns_running ON campaigns (id) WHERE status = 'running';

CREATE TABLE campaign_prospects (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id     uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    number          text COLLATE "C" NOT NULL,
    variables       jsonb NOT NULL DEFAULT '{}',
    state           text,                  -- the address state (two letters), when given
    zip             text,
    zones           text[] NOT NULL DEFAULT '{}',  -- IANA zones of the number (window check)
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN (
        'pending', 'dialing', 'answered', 'busy', 'no_answer', 'machine', 'failed', 'delivered',
        'retry_scheduled', 'done', 'abandoned', 'max_attempts', 'suppressed', 'canceled')),
    reason          text,                  -- why it is where it is (last outcome, DNC source…)
    attempts        integer NOT NULL DEFAULT 0,  -- n of the latest attempt (claimed)
    next_attempt_at timestamptz NOT NULL DEFAULT '-infinity',
    claimed_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (campaign_id, number)
);
-- What the dialer claims: due prospects in due order.
CREATE INDEX campaign_prospects_due ON campaign_prospects (campaign_id, next_attempt_at, id)
    WHERE status IN ('pending', 'retry_scheduled');
CREATE INDEX campaign_prospects_dialing ON campaign_prospects (campaign_id, claimed_at)
    WHERE status = 'dialing';
CREATE INDEX campaign_prospects_status ON campaign_prospects (campaign_id, status, id);

CREATE TABLE campaign_attempts (
    prospect_id  bigint NOT NULL REFERENCES campaign_prospects (id) ON DELETE CASCADE,
    n            integer NOT NULL CHECK (n >= 1),
    campaign_id  uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    call_id      uuid UNIQUE REFERENCES calls (id),
    message_id   uuid UNIQUE REFERENCES messages (id),
    outcome      text CHECK (outcome IN (
        'answered', 'busy', 'no_answer', 'machine', 'failed', 'refused', 'suppressed', 'canceled',
        'delivered')),                     -- delivered: an sms campaign's text
    detail       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz,
    PRIMARY KEY (prospect_id, n),
    CHECK ((call_id IS NULL) <> (message_id IS NULL))
);
CREATE INDEX campaign_attempts_open ON campaign_attempts (campaign_id) WHERE outcome IS NULL;

-- Is `at` inside the campaign window (`w`: {"days": [isodow…], "start": "HH:MM", "end":
-- "HH:MM", "timezone": zone for numbers whose zone is unknown}) in EVERY zone of the number?
-- `at` comes from the caller's clock (the guardrail chain's, so tests can pin it).
CREATE FUNCTION campaign_window_open(w jsonb, zones text[], at timestamptz) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT NOT EXISTS (
        SELECT 1
          FROM unnest(CASE WHEN cardinality(zones) > 0 THEN zones
                           ELSE ARRAY[w ->> 'timezone'] END) AS z(zone),
               LATERAL (SELECT at AT TIME ZONE z.zone AS local) l
         WHERE NOT (
               extract(isodow FROM l.local)::int IN (
                   SELECT d::int FROM jsonb_array_elements_text(w -> 'days') AS d)
           AND l.local::time >= (w ->> 'start')::time
           AND l.local::time < (w ->> 'end')::time))
$$;
