-- Voice calls: one row per call with a monotonic status, one row per try at a provider.
--
-- The status only moves forward (gateway/calls/states.py): queued → dialing → ringing →
-- answered → completed, or a final busy / no_answer / failed / canceled; `scheduled` waits
-- for calling hours, `rejected` was refused by a guardrail. The timestamps of each step are
-- kept so durations are plain arithmetic, and the timeline is the events with subject = id.

CREATE TABLE calls (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    direction           text NOT NULL DEFAULT 'outbound' CHECK (direction IN ('outbound', 'inbound')),
    to_number           text NOT NULL,
    from_number         text,
    purpose             text NOT NULL CHECK (purpose IN ('marketing', 'transactional')),
    status              text NOT NULL CHECK (status IN (
        'scheduled', 'queued', 'dialing', 'ringing', 'answered',
        'completed', 'busy', 'no_answer', 'failed', 'canceled', 'rejected')),
    pool                text NOT NULL,
    provider            text,                 -- current provider (asterisk:<name>, twilio, sandbox)
    provider_call_id    text,                 -- Asterisk ChannelId (= Uniqueid/Linkedid) or CallSid
    attempt_n           integer NOT NULL DEFAULT 0,
    channel             text,                 -- Asterisk channel name of the called party's leg
    ring_timeout        integer NOT NULL CHECK (ring_timeout > 0),
    on_answer           jsonb,                -- {"bridge_to": uri} | {"agent": {...}} | null
    amd                 boolean NOT NULL DEFAULT false,
    on_machine          text NOT NULL DEFAULT 'continue' CHECK (on_machine IN ('continue', 'hangup')),
    amd_result          text,                 -- human | machine | notsure
    amd_detail          text,                 -- e.g. Asterisk AMDCAUSE, Twilio AnsweredBy
    agent               jsonb,                -- the AI-agent leg: session, SIP URI, leg status, channel
    bridged_with        uuid,                 -- the other call of POST /v1/calls/{id}/bridge
    hangup_cause        integer,              -- Q.850 cause (Asterisk Hangup Cause)
    hangup_cause_text   text,
    sip_code            integer,              -- the far end's final SIP answer when known
    error_code          text,
    error_detail        text,
    send_at             timestamptz,
    trace_id            text NOT NULL,
    metadata            jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    dialing_at          timestamptz,
    ringing_at          timestamptz,
    answered_at         timestamptz,
    bridged_at          timestamptz,
    hangup_requested_at timestamptz,
    ended_at            timestamptz
);
CREATE INDEX calls_tenant_created ON calls (tenant_id, created_at DESC);
CREATE INDEX calls_trace ON calls (trace_id);
CREATE INDEX calls_live ON calls (provider, status)
    WHERE status IN ('queued', 'dialing', 'ringing', 'answered');

-- One row per try at a provider, committed before the provider is asked. `attempt_key` is
-- the key we chose: the Asterisk ChannelId (so every AMI event of the call carries it as
-- Uniqueid or Linkedid) or the Twilio idempotency token (also in the signed callback URL).
CREATE TABLE call_attempts (
    call_id          uuid NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    n                integer NOT NULL,
    attempt_key      text NOT NULL UNIQUE,
    provider         text NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    outcome          text CHECK (outcome IN (
        'originated', 'transient_error', 'permanent_error', 'failed_over')),
    error            text,
    latency_ms       double precision,
    provider_call_id text,
    PRIMARY KEY (call_id, n)
);
