-- How long an attempt lasted, in milliseconds (INVITE sent -> its end:
-- answered call hung up, final reply, or the node giving up): the wait a
-- caller spent on a trunk, finer than `ended - started` in whole seconds.
-- Rows written before it get that coarse difference.
ALTER TABLE call_attempts ADD COLUMN duration_ms UInt32 DEFAULT toUInt32(ended - started) * 1000;
