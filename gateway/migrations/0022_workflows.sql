-- Workflows: a stored sequence of steps (send, wait, branch, webhook) and its runs.
--
-- A run's whole state is its row (DESIGN principle 3): the step it is at, its status, what it
-- waits for and until when (`wake_at`, on the engine's clock), and the outcomes its branches
-- read (`context`). Workers are stateless: a job on the `workflows` queue advances a run; the
-- event-log subscriber (cursor `workflows` in event_cursors) ends waits and starts triggered
-- runs; a timer ends waits whose deadline passed. One row per step taken is its timeline.

CREATE TABLE workflows (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name           text NOT NULL,
    steps          jsonb NOT NULL,      -- validated at the edge (gateway/workflows/schemas.py)
    trigger        jsonb,               -- {"event": "call.completed", ...} or null
    trigger_event  text,                -- trigger->>'event', for the subscriber's lookup
    webhook_secret text NOT NULL,       -- signs the POSTs of webhook steps
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflows_tenant_created ON workflows (tenant_id, created_at DESC, id DESC);
CREATE INDEX workflows_trigger ON workflows (tenant_id, trigger_event)
    WHERE trigger_event IS NOT NULL;

CREATE TABLE workflow_runs (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    workflow_id  uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    status       text NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'waiting', 'completed', 'canceled', 'failed')),
    variables    jsonb NOT NULL DEFAULT '{}',
    trace_id     text NOT NULL,
    step         integer NOT NULL DEFAULT 0,   -- the step running or waiting (or next to run)
    context      jsonb NOT NULL DEFAULT '{}',  -- last send's subject/number/outcome, last outcome
    wait_until   text,                         -- a waiting run: the event it waits for
    wait_subject text,                         -- ... of this message/call id, or reply from this number
    wait_since   timestamptz,                  -- ... arriving after this (database clock)
    wake_at      timestamptz,                  -- ... or until this instant (engine clock)
    trigger_seq  bigint,                       -- the event that started it, if a trigger did
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz,
    UNIQUE (workflow_id, trigger_seq)
);
CREATE INDEX workflow_runs_tenant_created ON workflow_runs (tenant_id, created_at DESC, id DESC);
CREATE INDEX workflow_runs_workflow ON workflow_runs (workflow_id, created_at DESC, id DESC);
CREATE INDEX workflow_runs_wait_subject ON workflow_runs (wait_subject) WHERE status = 'waiting';
CREATE INDEX workflow_runs_wake ON workflow_runs (wake_at) WHERE status = 'waiting';

CREATE TABLE workflow_steps (
    run_id      uuid NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
    step        integer NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('send', 'wait', 'branch', 'webhook')),
    status      text NOT NULL CHECK (status IN ('running', 'waiting', 'done', 'failed')),
    outcome     text,
    detail      jsonb NOT NULL DEFAULT '{}',
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    PRIMARY KEY (run_id, step)
);

-- Workflows exist only from this migration on: the subscriber starts at the current tail.
INSERT INTO event_cursors (name, seq)
VALUES ('workflows', coalesce((SELECT max(seq) FROM events), 0)) ON CONFLICT DO NOTHING;
