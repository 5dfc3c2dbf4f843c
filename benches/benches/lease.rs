//! Lease scripts round trip on a real Redis over loopback, through the
//! tracker's own calls (`dialmark_tracker::pool`: EVALSHA of
//! `schemas/lua/*.lua` on one multiplexed connection): a new lease, a
//! renewal by the same session, and a keep-alive. Each is one visit or
//! keep-alive's Redis work, one at a time (latency, not throughput).
//!
//! Needs `DIALMARK_BENCH_REDIS` (`redis://127.0.0.1:PORT/`) pointing at a
//! scratch Redis: it writes pools `bench-lease-*` and leaves them there.
//! Skipped when unset; `benches/micro/run` starts a private Redis for it.
use criterion::{criterion_group, criterion_main, Criterion};
use dialmark_schemas::config::RedisConfig;
use dialmark_schemas::layout::Scripts;
use dialmark_schemas::store::Redis;
use dialmark_tracker::pool::{self, LeaseRequest, LeaseTiming};

/// Numbers per pool: more than the leases alive at once in any bench.
const POOL: u32 = 1_000;

const TIMING: LeaseTiming = LeaseTiming {
    hold: 300,
    max_hold: 14_400,
    cooldown: 0,
    attribution_window: 1_800,
};

/// The lease fields of a visit, in the tracker's order (tracker/src/visit.rs).
const FIELDS: &[(&str, &str)] = &[
    ("visitor", "9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
    ("site", "shop"),
    ("visit_ts", "1800000000"),
    ("country", "RU"),
    ("region", "RU-MOW"),
    ("city", "Moscow"),
    (
        "landing_url",
        "https://shop.test/?utm_source=google&utm_campaign=spring&gclid=Cj0KCQbench1",
    ),
    ("referrer", "https://www.google.com/"),
    ("utm_source", "google"),
    ("utm_medium", "cpc"),
    ("utm_campaign", "spring"),
    ("utm_term", ""),
    ("utm_content", ""),
    ("gclid", "Cj0KCQbench1"),
    ("yclid", ""),
    ("fbclid", ""),
    ("msclkid", ""),
];

fn lease(c: &mut Criterion) {
    let Ok(url) = std::env::var("DIALMARK_BENCH_REDIS") else {
        eprintln!(
            "lease: skipped: DIALMARK_BENCH_REDIS is not set (a scratch Redis URL; benches/micro/run starts one)"
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut redis = rt
        .block_on(Redis::connect(&RedisConfig {
            url,
            ..RedisConfig::default()
        }))
        .expect("DIALMARK_BENCH_REDIS does not answer");
    let scripts = Scripts::default();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    // A fresh pool per bench: the benches must not change each other's state.
    let mut new_pool = |name: &str| {
        let id = format!("bench-lease-{tag}-{name}");
        rt.block_on(async {
            for i in 0..POOL {
                pool::enroll(&mut redis, &scripts, &id, 0, &format!("+7498{i:07}"))
                    .await
                    .expect("enroll");
            }
        });
        id
    };
    let (fresh, renew, keep) = (new_pool("new"), new_pool("renew"), new_pool("keepalive"));
    let mut g = c.benchmark_group("lease");

    // The clock moves one second per call: about `hold` leases stay alive
    // and each call also reclaims the one that just expired (steady state).
    let (mut now, mut n) = (1_800_000_000u32, 0u64);
    g.bench_function("allocate: new session, reclaims an expired lease", |b| {
        b.iter(|| {
            now += 1;
            n += 1;
            let session = format!("s{n}");
            rt.block_on(pool::allocate(
                &mut redis,
                &scripts,
                &fresh,
                now,
                TIMING,
                &LeaseRequest {
                    fields: FIELDS,
                    ..LeaseRequest::session(&session)
                },
            ))
            .expect("allocate")
        })
    });

    let now = 1_800_000_000u32;
    rt.block_on(pool::allocate(
        &mut redis,
        &scripts,
        &renew,
        now,
        TIMING,
        &LeaseRequest {
            fields: FIELDS,
            ..LeaseRequest::session("renewing")
        },
    ))
    .expect("allocate");
    g.bench_function("allocate: same session again (renewal)", |b| {
        b.iter(|| {
            rt.block_on(pool::allocate(
                &mut redis,
                &scripts,
                &renew,
                now,
                TIMING,
                &LeaseRequest {
                    fields: FIELDS,
                    ..LeaseRequest::session("renewing")
                },
            ))
            .expect("allocate")
        })
    });

    rt.block_on(pool::allocate(
        &mut redis,
        &scripts,
        &keep,
        now,
        TIMING,
        &LeaseRequest {
            fields: FIELDS,
            ..LeaseRequest::session("kept")
        },
    ))
    .expect("allocate");
    g.bench_function("keepalive of a live lease", |b| {
        b.iter(|| {
            rt.block_on(pool::keepalive(
                &mut redis,
                &scripts,
                &keep,
                now,
                TIMING.hold,
                "kept",
            ))
            .expect("keepalive")
            .expect("lease alive")
        })
    });
    g.finish();
}

criterion_group!(benches, lease);
criterion_main!(benches);
