-- Email, the fourth channel: messages carry a subject and an HTML part (the text part is
-- `body`), two more outcomes (bounced, complained), and each tenant has an email suppression
-- list that the guardrail chain checks as it checks DNC for numbers.

ALTER TABLE messages DROP CONSTRAINT messages_channel_check;
ALTER TABLE messages ADD CONSTRAINT messages_channel_check
    CHECK (channel IN ('sms', 'whatsapp', 'email'));
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check CHECK (status IN (
    'scheduled', 'queued', 'dead_lettered', 'sent', 'delivered', 'undelivered', 'failed',
    'rejected', 'received', 'bounced', 'complained'));
ALTER TABLE messages ADD COLUMN subject text;
ALTER TABLE messages ADD COLUMN html text;

-- Templates with email parts: `body` is the text part (or the SMS body), `subject` and
-- `html` are used by email only.
ALTER TABLE message_templates ADD COLUMN subject text;
ALTER TABLE message_templates ADD COLUMN html text;

-- One row per (tenant, address, reason). `address` is normalised by every writer
-- (email-validator: the domain lower-cased and IDNA-encoded, the local part as given).
-- bounce and complaint suppress every email to the address; unsubscribe suppresses marketing.
CREATE TABLE email_suppressions (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    address     text NOT NULL CHECK (position('@' IN address) > 1),
    reason      text NOT NULL CHECK (reason IN ('bounce', 'complaint', 'unsubscribe', 'manual')),
    message_id  uuid,           -- the message whose bounce, complaint or link put it here
    detail      text,
    origin      text NOT NULL,  -- what wrote it: sandbox, smtp:dsn, webhook:<provider>, link, api
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, address, reason)
);
CREATE INDEX email_suppressions_newest ON email_suppressions (tenant_id, created_at DESC);

-- The key the unsubscribe links are signed with, shared by every process: written once by
-- whichever process needs it first (or taken from config: email.unsubscribe_secret).
CREATE TABLE email_signing_keys (
    name       text PRIMARY KEY,
    secret     bytea NOT NULL CHECK (length(secret) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
