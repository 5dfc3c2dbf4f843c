-- How sure a call's lease attribution is: `live` (the number was leased at
-- the call), `recent_sole` (the lease ended within the attribution window,
-- counted from the lease's end, and no other lease of the number did),
-- `recent_contested` (another lease of the number also ended within the
-- window: either visitor may be calling), `none` (no lease: not attributed,
-- a static or an overflow number). Rows written before it: `live` for
-- `live_lease` calls, else `none` (a recent call's contest is not known).
ALTER TABLE calls ADD COLUMN attribution_confidence
    Enum8('none' = 0, 'live' = 1, 'recent_sole' = 2, 'recent_contested' = 3)
    DEFAULT CAST(if(attribution = 'live_lease', 'live', 'none') AS Enum8('none' = 0, 'live' = 1, 'recent_sole' = 2, 'recent_contested' = 3));
