-- Guardrails: the suppression list (DNC lists and consumer opt-outs) the chain checks on every
-- outbound action, and the index that answers "is this the first marketing message to X".

CREATE TYPE dnc_source AS ENUM (
    'internal',           -- the tenant's (or operator's) own do-not-contact list: every purpose
    'national_registry',  -- e.g. the US National DNC Registry: marketing only
    'state_registry',     -- state DNC lists: marketing only
    'litigator',          -- known TCPA litigators: every purpose
    'consumer_opt_out'    -- the consumer revoked consent (STOP, or told you): every purpose
);

-- One row per (number, source, scope). tenant_id NULL is a global entry that applies to every
-- tenant; a tenant's rows apply to that tenant only. Expired rows (expires_at <= now) are ignored
-- by the chain and can be purged at leisure. A consumer opt-out received by SMS names the one
-- confirmation message it allows (`confirmation_message_id`, see guardrails/checks.py).
-- (`number` is E.164, normalised by every writer; the CHECK is the cheap form of that rule,
-- since bulk imports write millions of rows. COLLATE "C": digits compare as bytes, which makes
-- every index probe, sort and index insertion cheaper than a locale's rules.)
CREATE TABLE dnc_entries (
    number                  text COLLATE "C" NOT NULL
                            CHECK (left(number, 1) = '+' AND length(number) BETWEEN 8 AND 16),
    tenant_id               uuid REFERENCES tenants (id) ON DELETE CASCADE,
    source                  dnc_source NOT NULL,
    expires_at              timestamptz,
    note                    text,
    origin                  text NOT NULL DEFAULT 'api',
    confirmation_message_id uuid,
    created_at              timestamptz NOT NULL DEFAULT now()
) PARTITION BY LIST (source);
-- Two partitions: what tenants and consumers write one entry at a time, and the bulk lists an
-- operator loads by the million. A large registry import rebuilds its partition and builds the
-- index in one pass (gateway/dnc/importer.py) instead of maintaining it row by row.
CREATE TABLE dnc_entries_managed PARTITION OF dnc_entries
    FOR VALUES IN ('internal', 'consumer_opt_out');
CREATE TABLE dnc_entries_registry PARTITION OF dnc_entries
    FOR VALUES IN ('national_registry', 'state_registry', 'litigator');
-- The lookup index: a check is one probe per partition on `number` (a handful of rows at most).
CREATE UNIQUE INDEX dnc_entries_key ON dnc_entries (number, source, tenant_id) NULLS NOT DISTINCT;

-- Normalise one line of a bulk DNC file to E.164 (NANP by default), or NULL when it is not a
-- phone number. Accepts "+12025550123", "2025550123", "1-202-555-0123", "(202) 555-0123",
-- CSV lines whose first field is the number, and the FTC registry's "202,5550123" pairs.
-- `dnc_normalize` is a single expression, so the planner inlines it: the two common clean forms
-- cost a few string operations per line; only other lines reach the regular expressions.
CREATE FUNCTION dnc_normalize_messy(raw text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN d ~ '^\+1[2-9][0-9]{2}[2-9][0-9]{6}$' THEN d
        WHEN d ~ '^\+1' THEN NULL
        WHEN d ~ '^\+[2-9][0-9]{7,14}$' THEN d
        WHEN d ~ '^1?[2-9][0-9]{2}[2-9][0-9]{6}$' THEN '+1' || right(d, 10)
        ELSE NULL
    END
    FROM (SELECT CASE
        WHEN raw ~ '^\s*"?[0-9]{3}"?\s*,\s*"?[0-9]{7}"?\s*(,.*)?$'
            THEN regexp_replace(split_part(raw, ',', 1) || split_part(raw, ',', 2), '[^0-9]', '', 'g')
        ELSE regexp_replace(split_part(raw, ',', 1), '[\s"().\-]', '', 'g')
    END AS d) AS cleaned
$$;

CREATE FUNCTION dnc_normalize(raw text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN length(raw) = 12 AND left(raw, 2) = '+1' AND ltrim(substr(raw, 3), '0123456789') = ''
             AND substr(raw, 3, 1) >= '2' AND substr(raw, 6, 1) >= '2' THEN raw
        WHEN length(raw) = 10 AND ltrim(raw, '0123456789') = ''
             AND left(raw, 1) >= '2' AND substr(raw, 4, 1) >= '2' THEN '+1' || raw
        ELSE dnc_normalize_messy(raw)
    END
$$;

-- "First marketing message to this number" (content rules: opt-out language required).
CREATE INDEX messages_marketing_to ON messages (tenant_id, to_number)
    WHERE direction = 'outbound' AND purpose = 'marketing';
