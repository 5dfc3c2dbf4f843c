-- INVITEs from sources that are not trusted carriers, counted per source
-- and minute by the router (one row per source, minute and router flush;
-- sum `requests`). The first INVITE of a source in each minute is also a
-- `calls` row (`rejected_untrusted`, its call_id in `sample_call_id`): a
-- flood costs a counter, not a row and a webhook per packet. `source` is
-- the IP address; '*' counts the sources past the router's per-minute cap.
CREATE TABLE IF NOT EXISTS untrusted_sources (
    event_id UUID,
    minute DateTime,
    source String,
    requests UInt32,
    sample_call_id UUID,
    last_number String,
    last_caller String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, source, event_id);
