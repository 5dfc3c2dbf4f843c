-- Quality rerouting and manual trunk control: a trunk can be `degraded`
-- (up, but failing real calls: new calls try its group's other trunks
-- first) or `drained` (no new calls, by an operator). Quality events carry
-- the metric judged, its value and what it was compared with; the event
-- ending a degraded or drained period counts the calls shifted; manual
-- events name the operator. Enum8 values are only added, so old rows read
-- the same.
ALTER TABLE trunk_events
    MODIFY COLUMN state Enum8('up' = 1, 'down' = 2, 'degraded' = 3, 'drained' = 4);

ALTER TABLE trunk_events
    MODIFY COLUMN previous Enum8('up' = 1, 'down' = 2, 'degraded' = 3, 'drained' = 4);

ALTER TABLE trunk_events
    MODIFY COLUMN cause Enum8('probe' = 1, 'passive' = 2, 'config' = 3, 'quality' = 4, 'manual' = 5);

ALTER TABLE trunk_events ADD COLUMN metric String DEFAULT '';

ALTER TABLE trunk_events ADD COLUMN value Float64 DEFAULT 0;

ALTER TABLE trunk_events ADD COLUMN baseline Float64 DEFAULT 0;

ALTER TABLE trunk_events ADD COLUMN shifted_calls UInt64 DEFAULT 0;

ALTER TABLE trunk_events ADD COLUMN actor String DEFAULT 'node';
