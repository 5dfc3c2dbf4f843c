-- trunk_quality: forwarding attempts per trunk and UTC hour of `started`,
-- from the trunk_hourly rollup (migration 0002). Whole hours: an hour is
-- listed when it overlaps [{from}, {to}). {site} is not used (trunks are
-- shared by every site).
-- attempts: forwarding attempts (INVITEs sent to the trunk).
-- asr: answered / attempts (ITU-T E.411 answer-seizure ratio; RFC 6076 SER
--   without the 3xx correction: the router never follows redirects).
-- ner: effective / attempts (E.411 network effectiveness ratio; close to
--   RFC 6076 SEER): answered, busy, no answer (also 408/487 after
--   ringing: pdd_ms > 0) and 480, 486, 600, 603 are outcomes decided by the
--   called user, not failures of the trunk.
-- isa: ineffective / attempts (RFC 6076 ineffective session attempts):
--   408 that never rang (no reply, or 100 Trying then silence), 500, 503,
--   504, transport errors.
-- pdd_median_ms, pdd_p95_ms: post-dial delay (INVITE -> first 18x, or the
--   200 without one: RFC 6076 SRD) of the attempts that rang (pdd_ms > 0);
--   exact quantiles (element at floor(level * n) of the sorted values).
-- acd_seconds: mean talk time of the answered attempts.
SELECT
    trunk,
    toString(h, 'UTC') AS hour,
    n_attempts AS attempts,
    n_answered AS answered,
    round(n_answered / n_attempts, 4) AS asr,
    n_effective AS effective,
    round(n_effective / n_attempts, 4) AS ner,
    n_ineffective AS ineffective,
    round(n_ineffective / n_attempts, 4) AS isa,
    n_provisional AS with_provisional,
    if(n_provisional = 0, 0, pdd[1]) AS pdd_median_ms,
    if(n_provisional = 0, 0, pdd[2]) AS pdd_p95_ms,
    if(n_answered = 0, 0., round(talk / 1000, 1)) AS acd_seconds
FROM
(
    SELECT
        trunk,
        hour AS h,
        uniqExactMerge(attempts) AS n_attempts,
        uniqExactIfMerge(answered) AS n_answered,
        uniqExactIfMerge(effective) AS n_effective,
        uniqExactIfMerge(ineffective) AS n_ineffective,
        uniqExactIfMerge(with_provisional) AS n_provisional,
        quantilesExactIfMerge(0.5, 0.95)(pdd_quantiles) AS pdd,
        avgIfMerge(talk_avg) AS talk
    FROM trunk_hourly
    WHERE hour > {from} - 3600 AND hour < {to}
    GROUP BY trunk, hour
)
WHERE n_attempts > 0
ORDER BY trunk, h
