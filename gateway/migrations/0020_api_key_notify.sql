-- Every process caches the API keys it has authenticated (gateway/tenants/keycache.py) and
-- drops an entry the moment PostgreSQL says the key changed. A trigger, not the code that
-- revokes: any path -- the CLI, an operator's psql, a tenant deleted with its keys -- notifies,
-- and the NOTIFY is sent by the very commit that makes the change (never lost between the
-- two). Revocations are rare, so the serialised commit a NOTIFY costs (see db.Waker) is
-- nothing here. The payload is the key_id, or '*' for "forget every key".
CREATE FUNCTION trunkline_api_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        PERFORM pg_notify('trunkline_api_keys', OLD.key_id);
    ELSE
        PERFORM pg_notify('trunkline_api_keys', '*');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_changed
    AFTER UPDATE OF key_id, tenant_id, secret_hash, scopes, revoked_at OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION trunkline_api_key_changed();
CREATE TRIGGER api_keys_truncated
    AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION trunkline_api_key_changed();
-- A cached principal carries its tenant's name.
CREATE TRIGGER tenants_changed
    AFTER UPDATE OF id, name OR DELETE OR TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION trunkline_api_key_changed();
