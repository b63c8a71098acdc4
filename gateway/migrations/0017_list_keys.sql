-- Keyset pagination for the list endpoints (gateway/http/pagination.py): each list is ordered
-- by a unique key, and each gets an index in that order so a page is one index range scan
-- however deep the client has paged.

-- GET /v1/messages and /v1/calls: newest first on (created_at, id), per tenant. These replace
-- the (tenant_id, created_at) indexes, which they cover.
CREATE INDEX messages_tenant_created_id ON messages (tenant_id, created_at DESC, id DESC);
DROP INDEX messages_tenant_created;
CREATE INDEX calls_tenant_created_id ON calls (tenant_id, created_at DESC, id DESC);
DROP INDEX calls_tenant_created;

-- GET /v1/dnc: a tenant's own entries, newest first. Partial: the global registries (millions
-- of rows with no tenant) stay out of it, so it is small; an import that rebuilds the registry
-- partition gets it built by ATTACH PARTITION.
CREATE INDEX dnc_entries_tenant_created
    ON dnc_entries (tenant_id, created_at DESC, number DESC, source DESC)
    WHERE tenant_id IS NOT NULL;

-- GET /v1/keys: a tenant's keys, newest first.
CREATE INDEX api_keys_tenant_created ON api_keys (tenant_id, created_at DESC, key_id);
DROP INDEX api_keys_tenant;

-- GET /v1/dead-letters: a tenant's dead jobs by id, newest first (the id, not dead_at: a job
-- replayed and dead again would otherwise move between pages while a client reads them).
CREATE INDEX jobs_dead_id ON jobs (tenant_id, id DESC) WHERE state = 'dead';
DROP INDEX jobs_dead;
