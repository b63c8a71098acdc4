-- IVR calls in progress on a trunk, each holding a permit of its pool (issue 12).
--
-- Redis holds nothing PostgreSQL cannot rebuild (DESIGN principle 10): an inbound Asterisk
-- call holds an `ivr` pool permit whose holder is the channel's Uniqueid. After Redis restarts
-- empty, the pools are rebuilt from the truth before anything new is admitted — the calls
-- table for outbound calls, this table for IVR calls. A row is written with the session's
-- start (ivr.started) and deleted with its summary (ivr.ended), in those transactions.
CREATE TABLE ivr_live (
    holder     text PRIMARY KEY,        -- the pool permit's holder: the channel's Uniqueid
    session_id uuid NOT NULL UNIQUE,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    pool       text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);
