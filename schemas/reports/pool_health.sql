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
-- {window}: the demand window in seconds, 900 (the busy quarter-hour)
--   unless the caller asks otherwise (3600: the busy hour; accelerated-time
--   simulations: 900 / speed-up). Windows are aligned to the Unix epoch.
-- {cooldown}: tracker.cooldown_seconds (a number rests that long after its
--   lease before it can be leased again).
-- peak_window_demand: the most distinct sessions asking for a number they
--   did not hold (a `lease` or `overflow` event) in one {window}.
-- mean_hold_seconds: mean lease life (lease -> reclaim/release) of the
--   leases started in the range that have ended.
-- offered_load_erlangs: A = peak_window_demand / {window} * (hold + {cooldown}):
--   a number is out of the pool for its lease and its cool-down.
-- calls_on_pool: calls in the range to the pool's numbers or its overflow
--   number (attribution live_lease, recent_lease or overflow).
-- late_calls: those of them that came after their number's lease ended
--   (attribution recent_lease); delay d = call - the number's last
--   reclaim/release before it.
-- recommended_pool_size: smallest N >= 1 whose predicted attribution loss
--   L(N) = B(N, A) + M(N) is under 0.5 %, where
--   B(N, A) = (A^N / N!) / sum(k = 0..N) A^k / k!  (Erlang B: the share of
--     sessions that find the pool exhausted and get the overflow number),
--     computed exactly in log space scaled by the largest term,
--   M(N) = (late calls with d > q(N)) / calls_on_pool: late calls whose
--     number was probably leased to someone else before they came, with
--     q(N) = {cooldown} + max(0, N - A) / lambda the quiet time after a lease
--     (cool-down, then the wait behind the N - A idle numbers that are
--     leased first, least recently used first, at lambda = demand / {window}).
--   A late call with delay d is safe from size ceil(A + (d - {cooldown}) * lambda)
--   on (0 when d <= {cooldown}); M(N) counts those not yet safe at N.
--   N is searched in 1 .. max(ceil(A + 6 sqrt(A) + 10), largest safe size).
-- predicted_loss_percent: 100 * L(recommended_pool_size).
SELECT
    pool,
    site,
    numbers_seen,
    leases,
    exhaustion_events,
    peak_concurrent_leases,
    median_reuse_gap_seconds,
    peak_window_demand,
    round(hold, 1) AS mean_hold_seconds,
    round(load, 3) AS offered_load_erlangs,
    calls_on_pool,
    late_calls,
    toUInt32(if(load <= 0, 1, greatest(1, arrayFirstIndex(x -> x < 0.005, loss) - 1))) AS recommended_pool_size,
    round(100 * if(load <= 0, 0., loss[recommended_pool_size + 1]), 3) AS predicted_loss_percent
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
        peak_window_demand,
        if(closed_leases = 0, 0., hold_sum / closed_leases) AS hold,
        peak_window_demand / {window} AS lambda,
        lambda * (hold + {cooldown}) AS load,
        calls_on_pool,
        toUInt64(length(late_delays)) AS late_calls,
        arrayMap(d -> toUInt32(if(d <= {cooldown}, 0, ceil(load + (d - {cooldown}) * lambda))), late_delays) AS safe_from,
        toUInt32(greatest(ceil(load + 6 * sqrt(load) + 10), arrayReduce('max', arrayPushBack(safe_from, toUInt32(0))))) AS kmax,
        range(kmax + 1) AS ks,
        arrayCumSum(arrayMap(k -> if(k = 0, 0., log(k)), ks)) AS log_fact,
        arrayMap((k, lf) -> k * log(load) - lf, ks, log_fact) AS log_terms,
        floor(load) * log(load) - lgamma(floor(load) + 1) AS log_peak,
        arrayCumSum(arrayMap(x -> exp(x - log_peak), log_terms)) AS cum_terms,
        arrayMap((x, c) -> exp(x - log_peak) / c, log_terms, cum_terms) AS blocking,
        arrayCumSum(arrayMap(k -> countEqual(safe_from, k), ks)) AS safe_cum,
        arrayMap((b, s) -> b + if(calls_on_pool = 0, 0., (late_calls - s) / calls_on_pool), blocking, safe_cum) AS loss
    FROM
    (
    -- ClickHouse 18.16 takes one JOIN per SELECT: lease figures first.
    SELECT *
    FROM
    (
        SELECT
            pool,
            max(hour_site) AS site,
            length(groupUniqArrayArray(nums)) AS numbers_seen,
            sum(hour_leases) AS leases,
            sum(hour_overflows) AS exhaustion_events,
            max(hour_demand) AS peak_window_demand
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
    ) AS lr
    ANY LEFT JOIN
    (
        -- Calls to the pool's numbers; late ones with their delay after the
        -- number's last lease end (reclaim/release) before the call.
        SELECT
            pool,
            toUInt64(count()) AS calls_on_pool,
            groupArrayIf(toUInt32(rcv - arrayReduce('max', ended)), attribution = 'recent_lease' AND length(ended) > 0) AS late_delays
        FROM
        (
            SELECT pool, rcv, attribution, arrayFilter(e -> e <= rcv, ends) AS ended
            FROM
            (
                SELECT pool, number, toUInt32(received) AS rcv, attribution
                FROM calls FINAL
                WHERE received >= {from} AND received < {to}
                  AND ({site} = '' OR site = {site})
                  AND pool != ''
                  AND disposition != 'rejected_untrusted'
                  AND attribution IN ('live_lease', 'recent_lease', 'overflow')
            ) AS c
            ANY LEFT JOIN
            (
                SELECT pool, number, groupArray(toUInt32(ts)) AS ends
                FROM number_leases
                WHERE ts >= {from} - 86400 AND ts < {to}
                  AND ({site} = '' OR site = {site})
                  AND event IN ('reclaim', 'release')
                GROUP BY pool, number
            ) AS e USING (pool, number)
        )
        GROUP BY pool
    ) AS lc USING (pool)
)
ORDER BY pool
