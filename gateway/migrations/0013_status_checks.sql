-- The receipt reconciler (gateway/pipeline/receipts.py): a status callback we could not store
-- (our database was down, we answered 503, the provider does not retry) leaves a message at
-- 'queued'/'sent' or a call short of its end. The reconciler asks the provider for those past
-- an age; `status_checked_at` is when it last claimed one, so each is asked at most once per
-- age however many workers run it, and a long answered call is not polled every round.
ALTER TABLE messages ADD COLUMN status_checked_at timestamptz;
ALTER TABLE calls ADD COLUMN status_checked_at timestamptz;

CREATE INDEX messages_unsettled ON messages (updated_at)
    WHERE status IN ('queued', 'sent') AND provider_message_id IS NOT NULL;
CREATE INDEX calls_unsettled ON calls (updated_at)
    WHERE status IN ('dialing', 'ringing', 'answered') AND provider_call_id IS NOT NULL;
