-- Stripe metering (issue 15): each tenant's Stripe customer, and usage exported as Billing
-- meter events exactly once.
--
-- A cursor over usage_records.id would lose rows: ids are taken at INSERT and transactions
-- commit in any order, so a row with a lower id can become visible after the cursor passed it
-- (the events log has the same problem, see 0002_events.sql). So the cursor is kept per row:
-- `export_batch` is NULL until the exporter puts the row into a batch, in the same
-- transaction that writes the batch's meter events (their identifiers and values, fixed once
-- and for all). The batch is then sent; `sent_at` is set when Stripe has acknowledged every
-- event of it. A crash in between leaves a batch planned but unsent: it is sent again with
-- the same identifiers, and Stripe drops the ones it already has.

ALTER TABLE tenants ADD COLUMN stripe_customer_id text;

CREATE TABLE billing_export_batches (
    id         bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz,                       -- NULL: planned, not yet acknowledged
    records    integer NOT NULL,                  -- usage rows it carries
    events     integer NOT NULL,                  -- meter events they were aggregated into
    attempts   integer NOT NULL DEFAULT 0,        -- sends that failed
    last_error text
);
CREATE INDEX billing_batches_unsent ON billing_export_batches (id) WHERE sent_at IS NULL;

CREATE TABLE billing_meter_events (
    identifier         text PRIMARY KEY,          -- Stripe dedupes on it
    batch_id           bigint NOT NULL REFERENCES billing_export_batches (id),
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    unit               text NOT NULL,             -- usage_records.unit
    event_name         text NOT NULL,
    stripe_customer_id text NOT NULL,
    value              bigint NOT NULL CHECK (value >= 0),
    occurred_at        timestamptz NOT NULL
);
CREATE INDEX billing_meter_events_batch ON billing_meter_events (batch_id);
CREATE INDEX billing_meter_events_tenant ON billing_meter_events (tenant_id, batch_id);

ALTER TABLE usage_records ADD COLUMN export_batch bigint;
CREATE INDEX usage_unexported ON usage_records (id) WHERE export_batch IS NULL;
CREATE INDEX usage_export_batch ON usage_records (export_batch) WHERE export_batch IS NOT NULL;
