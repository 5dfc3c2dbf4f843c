-- number_events: a microsecond stamp that orders the events of one number
-- even when several fall in the same second (add, then retire at once).
-- Reports take a number's latest event by argMax(..., (ts, ts_us, event_id)).
ALTER TABLE number_events ADD COLUMN ts_us UInt64 DEFAULT toUInt64(ts) * 1000000;
