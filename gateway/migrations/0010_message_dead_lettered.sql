-- A message whose dispatch job spent its retry budget is `dead_lettered` (it used to stay
-- `queued` with error_code retries_exhausted, which read as "still on its way"). Not final:
-- a late receipt still moves it forward, and a dead-letter replay puts it back to `queued`.
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check CHECK (status IN (
    'scheduled', 'queued', 'dead_lettered', 'sent', 'delivered', 'undelivered', 'failed',
    'rejected', 'received'));
