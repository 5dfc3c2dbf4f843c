//! The lease engine on real Redis, single node and a 3-node Redis Cluster,
//! with the clock controlled by the test: LRU order with cool-down,
//! stickiness, the latest touch replacing the lease's source, lazy expiry reclaim, the hard cap, exhaustion, withdrawal,
//! and no double lease under concurrency.

use dialmark_e2e::env::unique;
use dialmark_e2e::tracker::{cluster_redis, single_redis};
use dialmark_schemas::config::RedisConfig;
use dialmark_schemas::layout::Scripts;
use dialmark_schemas::store::Redis;
use dialmark_tracker::pool::{self, Allocation, LeaseTiming};

const T: u32 = 1_700_000_000;
const TIMING: LeaseTiming = LeaseTiming {
    hold: 100,
    max_hold: 1000,
    cooldown: 10,
    attribution_window: 50,
};

async fn alloc(
    r: &mut Redis,
    s: &Scripts,
    pool: &str,
    now: u32,
    session: &str,
) -> pool::AllocateOutcome {
    pool::allocate(
        r,
        s,
        pool,
        now,
        TIMING,
        &pool::LeaseRequest {
            fields: &[("visitor", "v"), ("utm_source", "google")],
            ..pool::LeaseRequest::session(session)
        },
    )
    .await
    .unwrap()
}

fn leased(o: &pool::AllocateOutcome) -> &str {
    match &o.allocation {
        Allocation::Leased { number, .. } => number,
        other => panic!("expected a new lease, got {other:?}"),
    }
}

async fn lifecycle(redis_cfg: RedisConfig) {
    let mut r = Redis::connect(&redis_cfg).await.unwrap();
    let s = Scripts::default();
    let pool_id = unique("lru");
    let nums = ["+74950000001", "+74950000002", "+74950000003"];
    for n in nums {
        assert!(pool::enroll(&mut r, &s, &pool_id, T, n).await.unwrap());
    }
    assert!(
        !pool::enroll(&mut r, &s, &pool_id, T, nums[0])
            .await
            .unwrap(),
        "enroll is idempotent"
    );

    // Equal rest: lexical order. Every live session gets its own number.
    assert_eq!(leased(&alloc(&mut r, &s, &pool_id, T, "A").await), nums[0]);
    assert_eq!(leased(&alloc(&mut r, &s, &pool_id, T, "B").await), nums[1]);
    assert_eq!(leased(&alloc(&mut r, &s, &pool_id, T, "C").await), nums[2]);
    assert_eq!(
        alloc(&mut r, &s, &pool_id, T, "D").await.allocation,
        Allocation::Exhausted
    );

    // Stickiness: the same session gets the same number, extended.
    assert_eq!(
        alloc(&mut r, &s, &pool_id, T + 10, "A").await.allocation,
        Allocation::Renewed {
            number: nums[0].into(),
            expires_at: T + 110,
            retouched: false
        }
    );
    // The latest touch wins: a newer click replaces the lease's source; an
    // older touch, the same one again, or a visit without a touch of its
    // own (an internal page view) leaves it.
    for (touch, src, retouched, kept) in [
        (Some(T + 8), "bing", true, "bing"),
        (Some(T + 7), "yandex", false, "bing"),
        (Some(T + 8), "vk", false, "bing"),
        (None, "", false, "bing"),
        (Some(T + 9), "vk", true, "vk"),
    ] {
        // Touch times in ms, as the tracker passes them.
        let touch = touch.map(|t| u64::from(t) * 1000);
        let ms = touch.unwrap_or(u64::from(T + 10) * 1000).to_string();
        let o = pool::allocate(
            &mut r,
            &s,
            &pool_id,
            T + 10,
            TIMING,
            &pool::LeaseRequest {
                touch,
                fields: &[("touch_ms", &ms), ("utm_source", src)],
                ..pool::LeaseRequest::session("A")
            },
        )
        .await
        .unwrap();
        assert_eq!(
            o.allocation,
            Allocation::Renewed {
                number: nums[0].into(),
                expires_at: T + 110,
                retouched
            },
            "{touch:?} {src}"
        );
        let on_lease: Option<String> = redis::cmd("HGET")
            .arg(format!(
                "{}lease:{}",
                dialmark_schemas::layout::pool_prefix(&pool_id),
                nums[0]
            ))
            .arg("utm_source")
            .query_async(&mut r)
            .await
            .unwrap();
        assert_eq!(on_lease.as_deref(), Some(kept), "{touch:?} {src}");
    }
    // Keep-alives: C until T+140, B until T+150.
    assert_eq!(
        pool::keepalive(&mut r, &s, &pool_id, T + 40, 100, "C")
            .await
            .unwrap(),
        Some((T + 140, nums[2].to_string()))
    );
    assert_eq!(
        pool::keepalive(&mut r, &s, &pool_id, T + 50, 100, "B")
            .await
            .unwrap(),
        Some((T + 150, nums[1].to_string()))
    );
    assert_eq!(
        pool::keepalive(&mut r, &s, &pool_id, T + 50, 100, "nobody")
            .await
            .unwrap(),
        None
    );

    // A expired at T+110: a keep-alive does not revive it, though it is
    // not reclaimed yet (its attribution window already runs).
    assert_eq!(
        pool::keepalive(&mut r, &s, &pool_id, T + 110, 100, "A")
            .await
            .unwrap(),
        None
    );
    // Reclaimed lazily, then rests for the cool-down (from its end).
    let o = alloc(&mut r, &s, &pool_id, T + 111, "E").await;
    assert_eq!(o.reclaimed, vec![nums[0].to_string()]);
    assert_eq!(o.allocation, Allocation::Exhausted);
    assert_eq!(
        pool::keepalive(&mut r, &s, &pool_id, T + 111, 100, "A")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        leased(&alloc(&mut r, &s, &pool_id, T + 121, "E").await),
        nums[0]
    );

    // C is released before B: least recently used goes first.
    let o = alloc(&mut r, &s, &pool_id, T + 141, "F").await;
    assert_eq!(o.reclaimed, vec![nums[2].to_string()]);
    assert_eq!(o.allocation, Allocation::Exhausted);
    let o = alloc(&mut r, &s, &pool_id, T + 151, "G").await;
    assert_eq!(o.reclaimed, vec![nums[1].to_string()]);
    assert_eq!(leased(&o), nums[2], "C's number rested longer than B's");
    assert_eq!(
        alloc(&mut r, &s, &pool_id, T + 152, "H").await.allocation,
        Allocation::Exhausted
    );
    assert_eq!(
        leased(&alloc(&mut r, &s, &pool_id, T + 161, "H").await),
        nums[1]
    );

    // The ended lease stays readable for attribution.
    let last: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!(
            "{}last:{}",
            dialmark_schemas::layout::pool_prefix(&pool_id),
            nums[1]
        ))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(last.get("session").map(String::as_str), Some("B"));
    assert_eq!(last.get("utm_source").map(String::as_str), Some("google"));
    assert_eq!(
        (
            last.get("released_at").map(String::as_str),
            last.get("prev_released_at").map(String::as_str)
        ),
        (Some((T + 150).to_string().as_str()), Some("0")),
        "the window counts from the lease's end (T+150), not its reclaim (T+151); no lease of the number before"
    );

    // Hard cap: keep-alives cannot hold a number past max_hold.
    let h_start = T + 161;
    for k in 1..=9 {
        assert!(
            pool::keepalive(&mut r, &s, &pool_id, h_start + k * 99, 100, "H")
                .await
                .unwrap()
                .is_some()
        );
    }
    assert_eq!(
        pool::keepalive(&mut r, &s, &pool_id, h_start + 950, 100, "H")
            .await
            .unwrap(),
        Some((h_start + 1000, nums[1].to_string()))
    );
    assert_eq!(
        pool::keepalive(&mut r, &s, &pool_id, h_start + 1000, 100, "H")
            .await
            .unwrap(),
        None
    );

    // Withdrawal (retire): the live lease ends now, the number is gone from the pool.
    assert!(pool::withdraw(&mut r, &s, &pool_id, T + 170, 50, nums[2])
        .await
        .unwrap());
    assert_eq!(
        pool::keepalive(&mut r, &s, &pool_id, T + 171, 100, "G")
            .await
            .unwrap(),
        None
    );
    let st = pool::stats(&mut r, &pool_id).await.unwrap();
    assert_eq!(st.size, 2);
    assert!(st.exhausted >= 4);
    // Even long after, the withdrawn number is never leased again. The two
    // others ended long ago: their cool-down (from their end) is over, so
    // the visit that reclaims them leases one at once, the least recently
    // used first.
    let far = T + 5000;
    let o = alloc(&mut r, &s, &pool_id, far, "X0").await;
    assert_eq!(o.reclaimed.len(), 2, "both remaining leases expired");
    assert_eq!(leased(&o), nums[0]);
    for n in &nums[..2] {
        let kept: bool = redis::cmd("EXISTS")
            .arg(format!(
                "{}last:{n}",
                dialmark_schemas::layout::pool_prefix(&pool_id)
            ))
            .query_async(&mut r)
            .await
            .unwrap();
        assert!(
            !kept,
            "{n}: reclaimed after its window ended: nothing to attribute"
        );
    }
    let mut got = vec![nums[0].to_string()];
    for sess in ["X1", "X2", "X3"] {
        if let Allocation::Leased { number, .. } =
            alloc(&mut r, &s, &pool_id, far, sess).await.allocation
        {
            got.push(number);
        }
    }
    got.sort();
    assert_eq!(got, vec![nums[0].to_string(), nums[1].to_string()]);
}

#[tokio::test]
async fn lifecycle_single_node() {
    lifecycle(single_redis()).await;
}

#[tokio::test]
async fn lifecycle_redis_cluster() {
    lifecycle(cluster_redis()).await;
}

async fn no_double_lease(redis_cfg: RedisConfig) {
    let r = Redis::connect(&redis_cfg).await.unwrap();
    let s = std::sync::Arc::new(Scripts::default());
    let pool_id = unique("conc");
    let size = 5;
    for i in 0..size {
        let mut c = r.clone();
        pool::enroll(&mut c, &s, &pool_id, T, &format!("+7495100000{i}"))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..60 {
        let mut c = r.clone();
        let s = s.clone();
        let pool_id = pool_id.clone();
        tasks.push(tokio::spawn(async move {
            // Each session asks twice, as a page reload would.
            let a = pool::allocate(
                &mut c,
                &s,
                &pool_id,
                T,
                TIMING,
                &pool::LeaseRequest::session(&format!("s{i}")),
            )
            .await
            .unwrap();
            let b = pool::allocate(
                &mut c,
                &s,
                &pool_id,
                T,
                TIMING,
                &pool::LeaseRequest::session(&format!("s{i}")),
            )
            .await
            .unwrap();
            (a.allocation, b.allocation)
        }));
    }
    let mut holders = std::collections::HashMap::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (a, b) = t.await.unwrap();
        if let Allocation::Leased { number, .. } = a {
            assert!(
                matches!(&b, Allocation::Renewed { number: n, .. } if *n == number),
                "session {i} lost its number: {b:?}"
            );
            assert!(
                holders.insert(number.clone(), i).is_none(),
                "{number} leased to two live sessions"
            );
        } else {
            assert_eq!(a, Allocation::Exhausted);
        }
    }
    assert_eq!(holders.len(), size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_visits_never_share_a_number_single() {
    no_double_lease(single_redis()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_visits_never_share_a_number_cluster() {
    no_double_lease(cluster_redis()).await;
}

/// A network (/24, /48) takes at most `network_cap` new leases of a pool
/// per minute; renewals and other networks are not held back, and the
/// share comes back the next minute.
#[tokio::test]
async fn a_network_takes_at_most_its_share_of_new_leases_per_minute() {
    let mut r = Redis::connect(&single_redis()).await.unwrap();
    let s = Scripts::default();
    let pool_id = unique("netcap");
    for i in 0..6 {
        pool::enroll(&mut r, &s, &pool_id, T, &format!("+7495000100{i}"))
            .await
            .unwrap();
    }
    let minute = T - T % 60 + 60;
    let mut ask = async |now: u32, session: &str, network: &str| {
        let req = pool::LeaseRequest {
            network,
            network_cap: 2,
            ..pool::LeaseRequest::session(session)
        };
        pool::allocate(&mut r, &s, &pool_id, now, TIMING, &req)
            .await
            .unwrap()
            .allocation
    };
    let x = "203.0.113.0/24";
    assert!(matches!(
        ask(minute, "a", x).await,
        Allocation::Leased { .. }
    ));
    assert!(matches!(
        ask(minute + 1, "b", x).await,
        Allocation::Leased { .. }
    ));
    assert_eq!(ask(minute + 2, "c", x).await, Allocation::NetworkCapped);
    assert!(
        matches!(ask(minute + 3, "a", x).await, Allocation::Renewed { .. }),
        "a renewal is not a new lease"
    );
    assert!(matches!(
        ask(minute + 4, "d", "198.51.100.0/24").await,
        Allocation::Leased { .. }
    ));
    assert!(matches!(
        ask(minute + 60, "c", x).await,
        Allocation::Leased { .. }
    ));
    let st = pool::stats(&mut r, &pool_id).await.unwrap();
    assert_eq!((st.leased, st.network_capped), (4, 1));
}
