-- Voice limits: the cap on an answered call's length, per call.
--
-- A call's max_duration is fixed when it is accepted (the request's value, never above
-- calls.max_duration), so changing the setting later does not move the deadline of calls
-- already placed. NULL (calls placed before this migration) means "the current setting".
-- The deadline itself is a call_control job (op max_duration, run_at = answered_at +
-- max_duration) committed with the answer, so it survives any worker restart.

ALTER TABLE calls ADD COLUMN max_duration integer CHECK (max_duration > 0);
