-- The durable work queue. Jobs are claimed with FOR UPDATE SKIP LOCKED under a lease;
-- a worker that dies loses its lease and the job is claimed again.

CREATE TABLE jobs (
    id           bigserial PRIMARY KEY,
    queue        text NOT NULL,
    tenant_id    uuid REFERENCES tenants (id) ON DELETE CASCADE,
    payload      jsonb NOT NULL,
    state        text NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'running', 'dead')),
    attempts     integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL CHECK (max_attempts > 0),
    run_at       timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    locked_by    text,
    last_error   text,
    trace_id     text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    dead_at      timestamptz
);
CREATE INDEX jobs_claimable ON jobs (queue, run_at) WHERE state = 'ready';
CREATE INDEX jobs_leased ON jobs (queue, locked_until) WHERE state = 'running';
CREATE INDEX jobs_dead ON jobs (tenant_id, dead_at) WHERE state = 'dead';
