-- Keyed requests claim (tenant, key) before any work, in a tiny committed transaction, so
-- duplicates in every process see the first try in flight and wait for its answer instead of
-- running the work (pool permit, rate-limit tokens, guardrail chain) again. `owner` fences the
-- claim: only the try that holds it may store the answer. `locked_until` is its lease, renewed
-- while the try works; a try that died leaves a lapsed lease, and a waiter takes the key over.
-- Rows written inside the work's own transaction (owner NULL) never commit unanswered.
ALTER TABLE idempotency_keys
    ADD COLUMN owner        uuid,
    ADD COLUMN locked_until timestamptz;
