-- Every process caches which DID a tenant sends from (gateway/pipeline/didcache.py) and drops
-- a tenant's answers the moment PostgreSQL says one of its DIDs changed. A trigger, not the
-- code that changes them: any path -- an import, an operator's psql, a tenant deleted with its
-- numbers -- notifies, and the NOTIFY is sent by the very commit that makes the change. Only
-- the columns routing reads count (a DID's IVR flow is not one). DIDs change rarely, so the
-- serialised commit a NOTIFY costs (see db.Waker) is nothing here. The payload is the tenant's
-- id (identical payloads of one transaction are sent once), or '*' for "forget every tenant".
CREATE FUNCTION trunkline_did_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('trunkline_dids', '*');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('trunkline_dids', OLD.tenant_id::text);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('trunkline_dids', NEW.tenant_id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER dids_changed
    AFTER INSERT OR UPDATE OF number, tenant_id, provider, capabilities OR DELETE ON dids
    FOR EACH ROW EXECUTE FUNCTION trunkline_did_changed();
CREATE TRIGGER dids_truncated
    AFTER TRUNCATE ON dids
    FOR EACH STATEMENT EXECUTE FUNCTION trunkline_did_changed();
