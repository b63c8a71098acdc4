-- The recipient's US state, when the caller knows it (e.g. from the address): the guardrails
-- apply that state's calling-hour rules and frequency caps too, at accept and at dispatch.
-- USPS codes, validated by the API (gateway/core/usstates.py); NULL: not given.
ALTER TABLE messages ADD COLUMN recipient_state text CHECK (recipient_state ~ '^[A-Z]{2}$');
ALTER TABLE calls ADD COLUMN recipient_state text CHECK (recipient_state ~ '^[A-Z]{2}$');
