-- pool_health: lease pressure per pool and the pool advisor.
-- number_leases events in [{from}, {to}); {site} = '' means every site.
-- numbers_seen: pool numbers with a lease, reclaim or release event.
-- leases: new leases. exhaustion_events: `overflow` events (pool exhausted).
-- peak_concurrent_leases: most leases live at once in [{from}, {to}).
--   A lease lives from its `lease` event to the same number's next event
--   (`reclaim` or `release`; reclaim is lazy, so this can run past the real
--   expiry). A lease with no later event within {to} + 1 day lives until
--   min({to}, lease + 14400 s, the default tracker.max_hold_seconds).
--   Leases from up to 1 day before {from} are included, clipped to the range.
--   Method: per-event running count; the +1/-1 events of all leases are
--   sorted by time (ends before starts in the same second), summed
--   cumulatively (arrayCumSum), and the maximum taken.
-- median_reuse_gap_seconds: exact median of (lease - previous reclaim or
--   release of the same number) over leases in the range; 0 when none.
-- {window}: the demand window in seconds, 3600 (the busy hour) unless the
--   caller asks otherwise (a busy quarter-hour: 900; accelerated-time
--   simulations: 3600 / speed-up). Windows are aligned to the Unix epoch.
-- peak_hour_demand: the most distinct sessions asking for a number they did
--   not hold (a `lease` or `overflow` event) in one {window} of the range.
-- mean_hold_seconds: mean lease life (lease -> reclaim/release) of the
--   leases started in the range that have ended.
-- offered_load_erlangs: A = peak_hour_demand * mean_hold_seconds / {window}.
-- recommended_pool_size: smallest N >= 1 with Erlang B blocking
--   B(N, A) < 1%, computed exactly:
--   B(N, A) = (A^N / N!) / sum(k = 0..N) A^k / k!,
--   in log space scaled by the largest term so nothing overflows; N is
--   searched in 1 .. ceil(A + 6 sqrt(A) + 10) (always enough for 1%).
SELECT
    pool,
    site,
    numbers_seen,
    leases,
    exhaustion_events,
    peak_concurrent_leases,
    median_reuse_gap_seconds,
    peak_hour_demand,
    round(hold, 1) AS mean_hold_seconds,
    round(load, 3) AS offered_load_erlangs,
    toUInt32(if(load <= 0, 1, arrayFirstIndex(b -> b < 0.01, blocking) - 1)) AS recommended_pool_size
FROM
(
    SELECT
        pool,
        site,
        numbers_seen,
        leases,
        exhaustion_events,
        peak_concurrent_leases,
        median_reuse_gap_seconds,
        peak_hour_demand,
        if(closed_leases = 0, 0., hold_sum / closed_leases) AS hold,
        peak_hour_demand * hold / {window} AS load,
        toUInt32(ceil(load + 6 * sqrt(load) + 10)) AS kmax,
        range(kmax + 1) AS ks,
        arrayCumSum(arrayMap(k -> if(k = 0, 0., log(k)), ks)) AS log_fact,
        arrayMap((k, lf) -> k * log(load) - lf, ks, log_fact) AS log_terms,
        floor(load) * log(load) - lgamma(floor(load) + 1) AS log_peak,
        arrayCumSum(arrayMap(x -> exp(x - log_peak), log_terms)) AS cum_terms,
        arrayMap((x, c) -> exp(x - log_peak) / c, log_terms, cum_terms) AS blocking
    FROM
    (
        SELECT
            pool,
            max(hour_site) AS site,
            length(groupUniqArrayArray(nums)) AS numbers_seen,
            sum(hour_leases) AS leases,
            sum(hour_overflows) AS exhaustion_events,
            max(hour_demand) AS peak_hour_demand
        FROM
        (
            SELECT
                pool,
                intDiv(toUInt32(ts), {window}) AS hour,
                max(site) AS hour_site,
                groupUniqArrayIf(number, event != 'overflow') AS nums,
                uniqExactIf(event_id, event = 'lease') AS hour_leases,
                uniqExactIf(event_id, event = 'overflow') AS hour_overflows,
                uniqExactIf(session_id, event IN ('lease', 'overflow')) AS hour_demand
            FROM number_leases
            WHERE ts >= {from} AND ts < {to}
              AND ({site} = '' OR site = {site})
            GROUP BY pool, hour
        )
        GROUP BY pool
    ) AS l
    ANY LEFT JOIN
    (
        SELECT
            pool,
            toUInt32(arrayReduce('max', arrayCumSum(arrayMap(k -> if(k % 2 = 1, 1, -1),
                arraySort(groupArrayArray(keys)))))) AS peak_concurrent_leases,
            toUInt32(quantileExactArray(0.5)(gaps)) AS median_reuse_gap_seconds,
            toUInt64(sumArray(holds)) AS hold_sum,
            toUInt64(sum(length(holds))) AS closed_leases
        FROM
        (
            SELECT
                pool,
                arrayFilter(x -> x.1 > 0, arrayMap((ti, ki, tn) -> if(ki = 1, (ti, tn), (toUInt32(0), toUInt32(0))),
                    t, k, t_next)) AS spans,
                arrayMap(x -> (x.1, if(x.2 > 0, x.2, least(toUInt32({to}), x.1 + 14400))), spans) AS lives,
                arrayFilter(x -> x.1 < toUInt32({to}) AND x.2 > toUInt32({from}) AND x.2 > x.1, lives) AS live_in_range,
                arrayConcat(
                    arrayMap(x -> toUInt64(greatest(x.1, toUInt32({from}))) * 2 + 1, live_in_range),
                    arrayMap(x -> toUInt64(least(x.2, toUInt32({to}))) * 2, live_in_range)) AS keys,
                arrayMap(x -> x.2 - x.1, arrayFilter(x -> x.2 > 0 AND x.1 >= toUInt32({from}) AND x.1 < toUInt32({to}), spans)) AS holds,
                arrayFilter((g, ti, ki, kp) -> ki = 1 AND kp >= 2 AND ti >= toUInt32({from}) AND ti < toUInt32({to}),
                    arrayMap((ti, tp) -> ti - tp, t, t_prev), t, k, k_prev) AS gaps
            FROM
            (
                -- One number's events in time order as parallel arrays: t (time),
                -- k (1 lease, 2 reclaim, 4 release), and the same shifted by one
                -- (lambdas take them as arguments: capturing a whole array inside
                -- a lambda copies it per element).
                SELECT
                    pool,
                    arrayMap(x -> x.1, ev) AS t,
                    arrayMap(x -> x.2, ev) AS k,
                    arrayPushBack(arrayPopFront(t), toUInt32(0)) AS t_next,
                    arrayPushFront(arrayPopBack(t), toUInt32(0)) AS t_prev,
                    arrayPushFront(arrayPopBack(k), toUInt8(0)) AS k_prev
                FROM
                (
                    SELECT
                        pool,
                        number,
                        arraySort(groupUniqArray((toUInt32(ts), toUInt8(event)))) AS ev
                    FROM number_leases
                    WHERE ts >= {from} - 86400 AND ts < {to} + 86400
                      AND ({site} = '' OR site = {site})
                      AND event != 'overflow'
                    GROUP BY pool, number
                )
            )
        )
        GROUP BY pool
    ) AS r USING (pool)
)
ORDER BY pool
