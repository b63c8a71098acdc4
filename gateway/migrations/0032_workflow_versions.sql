-- Workflows are edited and archived, never changed under a run.
--
-- Every definition a workflow has had is an immutable row of `workflow_versions`; the
-- `workflows` row is the current one (version, name, steps, trigger: what new runs and trigger
-- matches use) plus the workflow's identity (tenant, secret, created_at) and its archive mark.
-- A run records the version it started on and runs it to the end, whatever is edited meanwhile.
--
-- The version rows are written by a trigger on `workflows`, not by the service: an insert is
-- version 1, and an update that bumps `version` records the new one. An update that changes
-- the definition without bumping it is refused, so no writer can change a workflow without
-- leaving its history behind.

CREATE TABLE workflow_versions (
    workflow_id uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    version     integer NOT NULL CHECK (version >= 1),
    name        text NOT NULL,
    steps       jsonb NOT NULL,
    trigger     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, version)
);

CREATE FUNCTION workflow_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'workflow_versions rows are immutable (edit the workflow: a new version)';
END $$;
CREATE TRIGGER workflow_versions_no_update BEFORE UPDATE ON workflow_versions
    FOR EACH ROW EXECUTE FUNCTION workflow_versions_immutable();

ALTER TABLE workflows
    ADD COLUMN version       integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    ADD COLUMN updated_at    timestamptz,
    -- Since when the current trigger holds: a trigger starts runs only for events after it.
    ADD COLUMN trigger_since timestamptz,
    -- Archived (DELETE): no new runs nor trigger matches; it and its runs stay readable.
    ADD COLUMN archived_at   timestamptz;
UPDATE workflows SET updated_at = created_at, trigger_since = created_at;
ALTER TABLE workflows
    ALTER COLUMN updated_at SET DEFAULT now(),
    ALTER COLUMN updated_at SET NOT NULL,
    ALTER COLUMN trigger_since SET DEFAULT now(),
    ALTER COLUMN trigger_since SET NOT NULL;

INSERT INTO workflow_versions (workflow_id, version, name, steps, trigger, created_at)
SELECT id, 1, name, steps, trigger, created_at FROM workflows;

CREATE FUNCTION workflows_record_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.version = OLD.version THEN
        IF (NEW.name, NEW.steps, NEW.trigger) IS DISTINCT FROM (OLD.name, OLD.steps, OLD.trigger)
        THEN
            RAISE EXCEPTION 'a workflow''s definition changes only with a new version';
        END IF;
        RETURN NEW;
    END IF;
    INSERT INTO workflow_versions (workflow_id, version, name, steps, trigger, created_at)
    VALUES (NEW.id, NEW.version, NEW.name, NEW.steps, NEW.trigger, NEW.updated_at);
    RETURN NEW;
END $$;
CREATE TRIGGER workflows_versions AFTER INSERT OR UPDATE ON workflows
    FOR EACH ROW EXECUTE FUNCTION workflows_record_version();

-- A run's version: the steps it takes. Existing runs all ran version 1.
ALTER TABLE workflow_runs ADD COLUMN workflow_version integer NOT NULL DEFAULT 1;
ALTER TABLE workflow_runs ALTER COLUMN workflow_version DROP DEFAULT;
ALTER TABLE workflow_runs ADD CONSTRAINT workflow_runs_version_fk
    FOREIGN KEY (workflow_id, workflow_version) REFERENCES workflow_versions (workflow_id, version);

-- The subscriber looks up live triggers only.
DROP INDEX workflows_trigger;
CREATE INDEX workflows_trigger ON workflows (tenant_id, trigger_event)
    WHERE trigger_event IS NOT NULL AND archived_at IS NULL;
