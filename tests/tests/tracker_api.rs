//! The tracker's HTTP API on real Redis and ClickHouse: admin auth and
//! provisioning, visits with stickiness and overflow, keep-alive, CORS per
//! site, geo pools from a MaxMind database, clear 4xx on bad input, visit
//! rows in ClickHouse, bots and bare clients that get no number, and the
//! quarantine rules with a controlled clock.

use std::time::Duration;

use clickhouse::Row;
use dialmark_e2e::env::{unique, unique_number};
use dialmark_e2e::http::send;
use dialmark_e2e::tracker::{config, single_redis, TestTracker};
use dialmark_schemas::rows::{Attribution, Call, Disposition, NumberStatus};
use serde::Deserialize;
use serde_json::{json, Value};

fn admin() -> Vec<(&'static str, String)> {
    vec![("authorization", "Bearer test-token".to_string())]
}

/// Creates a site with a default pool of `numbers` and an overflow number.
async fn provision(
    t: &TestTracker,
    site: &str,
    pool: &str,
    numbers: &[&str],
    overflow: &str,
    geo: Value,
) {
    let r = send(
        "PUT",
        t.url(&format!("/v1/admin/sites/{site}")),
        admin(),
        Some(
            json!({"origins": ["https://shop.test"], "replace": ["8 (495) 000-00-00"], "default_pool": pool, "geo_pools": geo})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = send(
        "PUT",
        t.url(&format!("/v1/admin/pools/{pool}")),
        admin(),
        Some(
            json!({"site": site, "overflow_number": overflow, "destinations": ["+74951234567"]})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    if numbers.is_empty() {
        return;
    }
    let r = send(
        "POST",
        t.url("/v1/admin/numbers"),
        admin(),
        Some(json!({"numbers": numbers, "pool": pool}).to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

fn visit_body(site: &str, session: Option<&str>) -> String {
    let mut v = json!({"site": site, "url": "https://shop.test/?utm_source=google&utm_campaign=spring", "referrer": "https://www.google.com/",
        "utm_source": "google", "utm_campaign": "spring", "gclid": "G123"});
    if let Some(s) = session {
        v["session_id"] = json!(s);
    }
    v.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn visits_leases_overflow_keepalive_cors_and_rows() {
    let t = TestTracker::start(config("api", single_redis(), "").await).await;
    let site = unique("site");
    let pool = unique("pool");
    let (n1, n2, overflow) = (unique_number(), unique_number(), unique_number());
    provision(&t, &site, &pool, &[&n1, &n2], &overflow, json!([])).await;

    // A visit from an allowed origin, sent as text/plain like the snippet.
    let origin = vec![
        ("origin", "https://shop.test".to_string()),
        ("content-type", "text/plain".to_string()),
    ];
    let a = send(
        "POST",
        t.url("/v1/visits"),
        origin.clone(),
        Some(visit_body(&site, None)),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://shop.test")
    );
    let number = a.body["number"].as_str().unwrap().to_string();
    assert!([&n1, &n2].contains(&&number));
    assert_eq!(a.body["kind"], "pool");
    assert_eq!(a.body["replace"], json!(["+74950000000"]));
    assert_eq!(a.body["hold_seconds"], 900);
    let display = a.body["display"].as_str().unwrap();
    assert!(
        display.starts_with("+7 (") && display.len() == 18,
        "{display}"
    );
    let session = a.body["session_id"].as_str().unwrap().to_string();

    // The same session gets the same number back.
    let again = send(
        "POST",
        t.url("/v1/visits"),
        origin.clone(),
        Some(visit_body(&site, Some(&session))),
    )
    .await;
    assert_eq!(again.body["number"], number.as_str());

    // A second visitor gets the other number; a third gets the overflow
    // number. Both send only the page's URL: the tracker reads the source
    // from it (the rows below carry it like the snippet's).
    let url_only = json!({"site": site,
        "url": "https://shop.test/?utm_source=google&utm_campaign=spring&gclid=G123"})
    .to_string();
    let b = send(
        "POST",
        t.url("/v1/visits"),
        origin.clone(),
        Some(url_only.clone()),
    )
    .await;
    assert_eq!(b.status, 200);
    assert_ne!(b.body["number"], number.as_str());
    let c = send("POST", t.url("/v1/visits"), origin.clone(), Some(url_only)).await;
    assert_eq!(c.status, 200, "exhaustion is never an error to the browser");
    assert_eq!(c.body["number"], overflow.as_str());
    assert_eq!(c.body["kind"], "overflow");
    let stats = send(
        "GET",
        t.url(&format!("/v1/admin/pools/{pool}")),
        admin(),
        None,
    )
    .await;
    assert_eq!(stats.body["stats"]["leased"], 2);
    assert_eq!(stats.body["stats"]["exhausted"], 1);

    // Keep-alive: known session 200, unknown 410.
    let ka = send(
        "POST",
        t.url(&format!("/v1/visits/{session}/keepalive")),
        origin.clone(),
        Some(json!({"site": site}).to_string()),
    )
    .await;
    assert_eq!(ka.status, 200, "{:?}", ka.body);
    assert_eq!(
        (ka.body["number"].as_str(), ka.body["display"].as_str()),
        (Some(number.as_str()), Some(display)),
        "the keep-alive names the number the session holds"
    );
    let gone = send(
        "POST",
        t.url("/v1/visits/nosuchsession/keepalive"),
        vec![],
        Some(json!({"site": site}).to_string()),
    )
    .await;
    assert_eq!(gone.status, 410);

    // CORS: a foreign origin is refused with a reason.
    let evil = send(
        "POST",
        t.url("/v1/visits"),
        vec![("origin", "https://evil.test".to_string())],
        Some(visit_body(&site, None)),
    )
    .await;
    assert_eq!(evil.status, 403);
    assert!(evil.body["error"].as_str().unwrap().contains("evil.test"));
    // Other errors carry the CORS header (below); this refusal does not.
    assert_eq!(evil.header("access-control-allow-origin"), None);

    // The router's view: routing record written for every pool number.
    let rec = send(
        "GET",
        t.url(&format!("/v1/admin/numbers/{n2}")),
        admin(),
        None,
    )
    .await;
    assert_eq!(rec.body["status"], "active");
    assert_eq!(rec.body["pool"], pool.as_str());
    assert_eq!(rec.body["destinations"], json!(["+74951234567"]));

    // Visits and lease events reach ClickHouse with their sources.
    #[derive(Row, Deserialize)]
    struct V {
        number: String,
        utm_source: String,
        utm_campaign: String,
        gclid: String,
        ip: String,
    }
    let db = dialmark_schemas::ch::client(&t.config.clickhouse);
    let mut rows: Vec<V> = Vec::new();
    for _ in 0..50 {
        rows = db
            .query("SELECT number, utm_source, utm_campaign, gclid, ip FROM visits WHERE site = ? ORDER BY ts")
            .bind(&site)
            .fetch_all()
            .await
            .unwrap();
        if rows.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows.len(), 4, "one row per accepted visit");
    assert!(rows
        .iter()
        .all(|r| r.utm_source == "google" && r.utm_campaign == "spring" && r.gclid == "G123"));
    assert!(
        rows.iter().all(|r| r.ip == "127.0.0.0"),
        "IPs are stored truncated"
    );
    assert!(rows.iter().any(|r| r.number == overflow));
    let leases: u64 = db
        .query("SELECT count() FROM number_leases WHERE pool = ?")
        .bind(&pool)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(leases, 3, "two leases and one overflow event");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_4xx() {
    let t = TestTracker::start(config("bad", single_redis(), "").await).await;
    let site = unique("site");
    let pool = unique("pool");
    let n = unique_number();
    provision(&t, &site, &pool, &[&n], &unique_number(), json!([])).await;

    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/v1/visits", "{not json".into(), 400, "invalid JSON"),
        ("/v1/visits", json!({"url": "x"}).to_string(), 400, "site"),
        (
            "/v1/visits",
            json!({"site": "no such"}).to_string(),
            400,
            "site",
        ),
        (
            "/v1/visits",
            json!({"site": "nosuchsite"}).to_string(),
            404,
            "unknown site",
        ),
        (
            "/v1/visits",
            json!({"site": site, "visitor_id": "<script>"}).to_string(),
            400,
            "visitor_id",
        ),
    ];
    // Sent from a page: a browser shows the page an error only with the
    // CORS header on it.
    let page = || vec![("origin", "https://shop.test".to_string())];
    for (path, body, code, needle) in cases {
        let r = send("POST", t.url(path), page(), Some(body.clone())).await;
        assert_eq!(r.status, code, "{body}: {:?}", r.body);
        let msg = r.body["error"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{body}: {msg}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://shop.test"),
            "{body}"
        );
    }
    let huge = json!({"site": site, "referrer": "r".repeat(10_000)}).to_string();
    let r = send("POST", t.url("/v1/visits"), page(), Some(huge)).await;
    assert_eq!(r.status, 413, "oversized body");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.test")
    );
    let r = send(
        "POST",
        t.url("/v1/visits/nosuchsession/keepalive"),
        page(),
        Some("{not json".into()),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.test")
    );

    // Admin API: no token, wrong token, bad numbers.
    let r = send("GET", t.url("/v1/admin/quarantine"), vec![], None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = send(
        "GET",
        t.url("/v1/admin/quarantine"),
        vec![("authorization", "Bearer wrong".into())],
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = send(
        "POST",
        t.url("/v1/admin/numbers"),
        admin(),
        Some(json!({"numbers": ["12ab"], "pool": pool}).to_string()),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().contains("numbers[0]"));
    let r = send(
        "POST",
        t.url("/v1/admin/numbers"),
        admin(),
        Some(json!({"numbers": [n], "pool": "other-pool"}).to_string()),
    )
    .await;
    assert_eq!(r.status, 404, "unknown pool: {:?}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn geo_pools_follow_the_visitor_region() {
    let extra = format!("geoip_db = \"{}\"\n", dialmark_e2e::env::mmdb().display());
    let t = TestTracker::start(config("geo", single_redis(), &extra).await).await;
    let site = unique("site");
    let main = unique("main");
    let msk = unique("msk");
    let (main_n, msk_n) = (unique_number(), unique_number());
    provision(
        &t,
        &site,
        &main,
        &[&main_n],
        &unique_number(),
        json!([{"pool": msk, "regions": ["RU-MOW"]}]),
    )
    .await;
    let r = send(
        "PUT",
        t.url(&format!("/v1/admin/pools/{msk}")),
        admin(),
        Some(json!({"site": site, "destinations": ["+74951234567"]}).to_string()),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        "POST",
        t.url("/v1/admin/numbers"),
        admin(),
        Some(json!({"numbers": [msk_n], "pool": msk}).to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // 127.0.0.1 is a trusted proxy in the test config: X-Forwarded-For counts.
    let from = |ip: &str| {
        vec![
            ("x-forwarded-for", ip.to_string()),
            ("origin", "https://shop.test".to_string()),
        ]
    };
    let moscow = send(
        "POST",
        t.url("/v1/visits"),
        from("203.0.113.7"),
        Some(visit_body(&site, None)),
    )
    .await;
    assert_eq!(moscow.body["number"], msk_n.as_str(), "{:?}", moscow.body);
    let spb = send(
        "POST",
        t.url("/v1/visits"),
        from("198.51.100.7"),
        Some(visit_body(&site, None)),
    )
    .await;
    assert_eq!(spb.body["number"], main_n.as_str(), "{:?}", spb.body);

    #[derive(Row, Deserialize)]
    struct G {
        region: String,
        city: String,
        ip: String,
    }
    let db = dialmark_schemas::ch::client(&t.config.clickhouse);
    let mut rows: Vec<G> = Vec::new();
    for _ in 0..50 {
        rows = db
            .query("SELECT region, city, ip FROM visits WHERE site = ? ORDER BY region")
            .bind(&site)
            .fetch_all()
            .await
            .unwrap();
        if rows.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0].region.as_str(),
            rows[0].city.as_str(),
            rows[0].ip.as_str()
        ),
        ("RU-MOW", "Moscow", "203.0.113.0")
    );
    assert_eq!(rows[1].region, "RU-SPE");
}

fn call(number: &str, received: u32) -> Call {
    Call {
        call_id: uuid::Uuid::new_v4(),
        sip_call_id: uuid::Uuid::new_v4().to_string(),
        received,
        answered: 0,
        ended: received,
        ring_ms: 0,
        talk_ms: 0,
        caller: "+79161234567".into(),
        number: number.into(),
        number_status: NumberStatus::Quarantine,
        site: String::new(),
        pool: String::new(),
        disposition: Disposition::RejectedQuarantine,
        final_code: 404,
        attempts: 0,
        final_trunk: String::new(),
        destination: String::new(),
        attribution: Attribution::None,
        session_id: String::new(),
        visitor_id: String::new(),
        source_label: String::new(),
        utm_source: String::new(),
        utm_medium: String::new(),
        utm_campaign: String::new(),
        utm_term: String::new(),
        utm_content: String::new(),
        gclid: String::new(),
        yclid: String::new(),
        referrer: String::new(),
        landing_url: String::new(),
        country: String::new(),
        region: String::new(),
        city: String::new(),
        version: u64::from(received) * 1000,
        gbraid: String::new(),
        wbraid: String::new(),
        fbclid: String::new(),
        msclkid: String::new(),
        ym_uid: String::new(),
        channel: String::new(),
        touch_ts: 0,
        first_touch_ts: 0,
        first_channel: String::new(),
        first_utm_source: String::new(),
        first_utm_medium: String::new(),
        first_utm_campaign: String::new(),
        attribution_confidence: Default::default(),
    }
}

/// The default rule: 90 days in quarantine and fewer than 3 calls received
/// *while in quarantine* in the trailing 90 days, from trusted carriers.
#[tokio::test(flavor = "multi_thread")]
async fn quarantine_release_needs_90_days_and_under_3_calls_while_in_quarantine() {
    let t = TestTracker::start(config("quarantine", single_redis(), "").await).await;
    let inv = &t.state.inventory;
    let site = unique("site");
    let pool = unique("pool");
    provision(&t, &site, &pool, &[], &unique_number(), json!([])).await;
    const DAY: u32 = 86_400;
    let now = dialmark_schemas::unix_now();
    let nums: Vec<String> = (0..4).map(|_| unique_number()).collect();
    let quiet = nums[0].as_str(); // 100 days, no calls → released
    let busy = nums[1].as_str(); // 100 days, 3 calls in quarantine → kept
    let untrusted = nums[2].as_str(); // 100 days, 3 INVITEs from an untrusted source → released
    let young = nums[3].as_str(); // 40 days, 1 call in quarantine, 2 from before → kept (age)
    inv.add_numbers(
        dialmark_tracker::inventory::AddNumbers {
            numbers: nums.clone(),
            pool: Some(pool.clone()),
            ..Default::default()
        },
        "test",
        now - 300 * DAY,
    )
    .await
    .unwrap();
    for n in [quiet, busy, untrusted] {
        inv.retire(n, "test", "test", now - 100 * DAY)
            .await
            .unwrap();
    }
    inv.retire(young, "test", "test", now - 40 * DAY)
        .await
        .unwrap();
    // Retiring again changes nothing (no second event, same record).
    let again = inv.retire(young, "again", "test", now).await.unwrap();
    assert_eq!(again.status_since, now - 40 * DAY);
    // Retired numbers stop being leased at once.
    let v = send(
        "POST",
        t.url("/v1/visits"),
        vec![("origin", "https://shop.test".to_string())],
        Some(visit_body(&site, None)),
    )
    .await;
    assert_eq!(v.body["kind"], "overflow", "{:?}", v.body);

    let db = dialmark_schemas::ch::client(&t.config.clickhouse);
    let mut ins = db.insert::<Call>("calls").await.unwrap();
    for d in [1, 10, 30] {
        ins.write(&call(busy, now - d * DAY)).await.unwrap();
        let mut c = call(untrusted, now - d * DAY);
        c.disposition = Disposition::RejectedUntrusted;
        ins.write(&c).await.unwrap();
    }
    ins.write(&call(young, now - 5 * DAY)).await.unwrap();
    for d in [50, 60] {
        // While it was still in use: answered, active.
        let mut c = call(young, now - d * DAY);
        c.number_status = NumberStatus::Active;
        c.disposition = Disposition::Answered;
        ins.write(&c).await.unwrap();
    }
    ins.end().await.unwrap();

    let list = send("GET", t.url("/v1/admin/quarantine"), admin(), None).await;
    let list = list.body.as_array().unwrap().clone();
    let entry = |n: &str| list.iter().find(|e| e["number"] == n).cloned().unwrap();
    assert_eq!(entry(busy)["calls_90d"], 3);
    assert_eq!(
        entry(untrusted)["calls_90d"],
        0,
        "untrusted INVITEs do not count"
    );
    assert_eq!(
        entry(young)["calls_90d"],
        1,
        "calls from before the quarantine do not count"
    );
    assert_eq!(entry(young)["days"], 40);
    assert_eq!(entry(young)["release_after"], now + 50 * DAY);

    // A dry run says what would go, and changes nothing.
    let mine = |e: &&dialmark_tracker::inventory::QuarantineEntry| nums.contains(&e.number);
    let mine_sorted = |list: &[dialmark_tracker::inventory::QuarantineEntry]| {
        let mut v: Vec<String> = list.iter().filter(mine).map(|e| e.number.clone()).collect();
        v.sort();
        v
    };
    let mut want = vec![quiet.to_string(), untrusted.to_string()];
    want.sort();
    let dry = send(
        "POST",
        t.url("/v1/admin/quarantine/release?dry_run=true"),
        admin(),
        None,
    )
    .await;
    assert_eq!(dry.body["dry_run"], true, "{:?}", dry.body);
    let dry: Vec<dialmark_tracker::inventory::QuarantineEntry> = dry.body["released"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| dialmark_tracker::inventory::QuarantineEntry {
            number: e["number"].as_str().unwrap().into(),
            since: 0,
            days: 0,
            calls_90d: 0,
            eligible: true,
            release_after: 0,
        })
        .collect();
    assert_eq!(mine_sorted(&dry), want);
    assert_eq!(
        inv.route(quiet).await.unwrap().unwrap().status.as_str(),
        "quarantine"
    );
    let bad = send(
        "POST",
        t.url("/v1/admin/quarantine/release?dry_run=maybe"),
        admin(),
        None,
    )
    .await;
    assert_eq!(bad.status, 400, "{:?}", bad.body);
    assert!(
        bad.body["error"].as_str().unwrap().contains("dry_run"),
        "{:?}",
        bad.body
    );

    let released = inv.release_quarantine("test", now, false).await.unwrap();
    // Quarantine is global; look only at this test's numbers.
    assert_eq!(mine_sorted(&released), want);
    for (n, status) in [
        (quiet, "stock"),
        (untrusted, "stock"),
        (busy, "quarantine"),
        (young, "quarantine"),
    ] {
        assert_eq!(
            inv.route(n).await.unwrap().unwrap().status.as_str(),
            status,
            "{n}"
        );
    }
    // Fifty more days: the young one is old enough.
    let later = inv
        .release_quarantine("test", now + 50 * DAY, false)
        .await
        .unwrap();
    assert_eq!(mine_sorted(&later), vec![young.to_string()]);

    // Every transition is a number_events row: 4 added, 4 retired, 3 released.
    let mut events = 0u64;
    for _ in 0..50 {
        events = db
            .query("SELECT count() FROM number_events WHERE has(?, number)")
            .bind(&nums)
            .fetch_one()
            .await
            .unwrap();
        if events >= 11 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(events, 11);
    // Quarantined numbers cannot be re-added behind the rule's back.
    let r = send(
        "POST",
        t.url("/v1/admin/numbers"),
        admin(),
        Some(json!({"numbers": [busy], "pool": pool}).to_string()),
    )
    .await;
    assert_eq!(r.status, 409);
}

/// The tracker's own timer returns eligible numbers to stock; in a dry run
/// it only reports them. On a Redis database of its own: the timer works
/// over the whole quarantine set.
#[tokio::test(flavor = "multi_thread")]
async fn quarantine_release_runs_on_the_trackers_timer() {
    let redis = dialmark_schemas::config::RedisConfig {
        url: format!(
            "{}/11",
            dialmark_e2e::env::redis_url().trim_end_matches('/')
        ),
        ..Default::default()
    };
    let t = TestTracker::start(config("qtimer", redis, "").await).await;
    let inv = &t.state.inventory;
    let (site, pool) = (unique("site"), unique("pool"));
    provision(&t, &site, &pool, &[], &unique_number(), json!([])).await;
    const DAY: u32 = 86_400;
    let now = dialmark_schemas::unix_now();
    let n = unique_number();
    inv.add_numbers(
        dialmark_tracker::inventory::AddNumbers {
            numbers: vec![n.clone()],
            pool: Some(pool.clone()),
            ..Default::default()
        },
        "test",
        now - 200 * DAY,
    )
    .await
    .unwrap();
    inv.retire(&n, "test", "test", now - 95 * DAY)
        .await
        .unwrap();
    let status = || async { inv.route(&n).await.unwrap().unwrap().status.as_str() };
    let every = Duration::from_secs(1);

    let dry = tokio::spawn(dialmark_tracker::release::run(inv.clone(), every, true));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    dry.abort();
    assert_eq!(status().await, "quarantine", "a dry run releases nothing");

    let timer = tokio::spawn(dialmark_tracker::release::run(inv.clone(), every, false));
    let mut got = "";
    for _ in 0..50 {
        got = status().await;
        if got == "stock" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    timer.abort();
    assert_eq!(got, "stock", "released by the timer within its interval");
}

/// The overflow number takes the lifecycle checks of a pool number: not a
/// quarantined number, not one active elsewhere; a replaced or retired
/// overflow number rests in quarantine and the pool stops handing it out.
#[tokio::test(flavor = "multi_thread")]
async fn overflow_numbers_follow_the_number_lifecycle() {
    let t = TestTracker::start(config("overflow", single_redis(), "").await).await;
    let inv = &t.state.inventory;
    let (site, pool) = (unique("site"), unique("pool"));
    let (n1, o1, o2, elsewhere) = (
        unique_number(),
        unique_number(),
        unique_number(),
        unique_number(),
    );
    provision(&t, &site, &pool, &[&n1], &o1, json!([])).await;
    let other = unique("pool");
    provision(
        &t,
        &unique("site"),
        &other,
        &[&elsewhere],
        &unique_number(),
        json!([]),
    )
    .await;
    let put = |overflow: &str| {
        send(
            "PUT",
            t.url(&format!("/v1/admin/pools/{pool}")),
            admin(),
            Some(
                json!({"site": site, "overflow_number": overflow, "destinations": ["+74951234567"]})
                    .to_string(),
            ),
        )
    };
    let r = put(&elsewhere).await;
    assert_eq!(r.status, 409, "active in another pool: {:?}", r.body);
    let quarantined = unique_number();
    inv.add_numbers(
        dialmark_tracker::inventory::AddNumbers {
            numbers: vec![quarantined.clone()],
            pool: Some(other.clone()),
            ..Default::default()
        },
        "test",
        dialmark_schemas::unix_now(),
    )
    .await
    .unwrap();
    inv.retire(&quarantined, "test", "test", dialmark_schemas::unix_now())
        .await
        .unwrap();
    let r = put(&quarantined).await;
    assert_eq!(r.status, 409, "in quarantine: {:?}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("quarantine"));

    // Replacing o1 by o2: o1 rests in quarantine.
    let r = put(&o2).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        inv.route(&o1).await.unwrap().unwrap().status.as_str(),
        "quarantine"
    );
    // Exhausted: the visitor is shown o2.
    let page = || vec![("origin", "https://shop.test".to_string())];
    let a = send(
        "POST",
        t.url("/v1/visits"),
        page(),
        Some(visit_body(&site, None)),
    )
    .await;
    assert_eq!(a.body["kind"], "pool");
    let b = send(
        "POST",
        t.url("/v1/visits"),
        page(),
        Some(visit_body(&site, None)),
    )
    .await;
    assert_eq!(
        (b.body["kind"].as_str(), b.body["number"].as_str()),
        (Some("overflow"), Some(o2.as_str()))
    );
    // Retiring o2: the pool hands out no overflow number any more.
    inv.retire(&o2, "test", "test", dialmark_schemas::unix_now())
        .await
        .unwrap();
    assert_eq!(inv.pool(&pool).await.unwrap().overflow_number, None);
    let c = send(
        "POST",
        t.url("/v1/visits"),
        page(),
        Some(visit_body(&site, None)),
    )
    .await;
    assert_eq!(
        (c.body["kind"].as_str(), c.body["number"].as_str()),
        (Some("static"), Some("+74950000000")),
        "{:?}",
        c.body
    );
}

/// `admin apply` (the inventory file of ops/up and the benches): a site, a
/// pool with a number range and an overflow number, a static number. Every
/// number's `number_events` row names `apply` as the actor, and a second
/// apply changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn apply_provisions_an_inventory_file_once() {
    let t = TestTracker::start(config("apply", single_redis(), "").await).await;
    let inv = &t.state.inventory;
    let (site, pool) = (unique("site"), unique("pool"));
    let (overflow, start, fixed) = (unique_number(), unique_number(), unique_number());
    let base: u64 = start[1..].parse().unwrap();
    let range: Vec<String> = (0..3).map(|i| format!("+{}", base + i)).collect();
    let file = json!({
        "sites": [{"id": site, "origins": ["https://shop.example"], "replace": ["+74950000000"],
                   "default_pool": pool}],
        "pools": [{"id": pool, "site": site, "overflow_number": overflow,
                   "destinations": ["+74951234567"], "range_start": start, "count": 3}],
        "static_numbers": [{"numbers": [fixed], "site": site, "source_label": "billboard",
                            "destinations": ["+74951234567"]}],
    });
    let file = &file;
    let apply = |now| async move {
        dialmark_tracker::admin::apply(inv, serde_json::from_value(file.clone()).unwrap(), now)
            .await
            .unwrap()
    };
    let now = dialmark_schemas::unix_now();
    assert_eq!(
        apply(now).await,
        format!("site {site}; pool {pool} (3 numbers); static {fixed}")
    );
    let saved = inv.pool(&pool).await.expect("the pool is saved");
    assert_eq!(saved.overflow_number.as_deref(), Some(overflow.as_str()));

    let mut numbers = range;
    numbers.extend([overflow.clone(), fixed.clone()]);
    #[derive(Row, Deserialize)]
    struct ByActor {
        actor: String,
        n: u64,
    }
    let db = dialmark_schemas::ch::client(&t.config.clickhouse);
    let by_actor = || async {
        db.query(
            "SELECT actor, count() AS n FROM number_events WHERE has(?, number) GROUP BY actor",
        )
        .bind(&numbers)
        .fetch_all::<ByActor>()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.actor, r.n))
        .collect::<Vec<_>>()
    };
    let want = vec![("apply".to_string(), 5u64)];
    let mut got = Vec::new();
    for _ in 0..50 {
        got = by_actor().await;
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        got, want,
        "3 range numbers, the overflow number and the static one"
    );

    // Applying the same file again adds nothing and records nothing.
    apply(now + 60).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(by_actor().await, want);

    // A number retired since (as on the demo after real use): the file
    // still applies, the number is reported and stays in quarantine.
    let retired = numbers[0].clone();
    inv.retire(&retired, "test", "test", now + 120)
        .await
        .unwrap();
    let summary = apply(now + 180).await;
    assert!(
        summary.starts_with(&format!("site {site}; pool {pool} (2 numbers); static {fixed}; skipped 1: {retired} is in quarantine")),
        "{summary}"
    );
    let rec = inv.route(&retired).await.unwrap().expect("a route record");
    assert_eq!(rec.status, dialmark_schemas::rows::NumberStatus::Quarantine);
}

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// A visit from a page of shop.test, from `ip` (X-Forwarded-For: 127.0.0.1
/// is a trusted proxy in the test config) with `user_agent`.
fn from_page(ip: &str, user_agent: &str) -> Vec<(&'static str, String)> {
    vec![
        ("origin", "https://shop.test".to_string()),
        ("x-forwarded-for", ip.to_string()),
        ("user-agent", user_agent.to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn bots_and_bare_clients_do_not_burn_numbers() {
    let t = TestTracker::start(
        config(
            "bots",
            single_redis(),
            "leases_per_network_per_minute = 5\n",
        )
        .await,
    )
    .await;
    let (site, pool) = (unique("site"), unique("pool"));
    let numbers: Vec<String> = (0..50).map(|_| unique_number()).collect();
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    provision(&t, &site, &pool, &refs, &unique_number(), json!([])).await;
    let body = || Some(visit_body(&site, None));

    // 60 crawler hits that run the page's script (each from its own network).
    let crawlers = [
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
        "python-requests/2.31.0",
    ];
    for i in 0..60 {
        let ip = format!("100.64.{i}.1");
        let r = send(
            "POST",
            t.url("/v1/visits"),
            from_page(&ip, crawlers[i % crawlers.len()]),
            body(),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(
            (r.body["kind"].as_str(), r.body["number"].as_str()),
            (Some("static"), Some("+74950000000")),
            "crawler {i}"
        );
    }
    // 60 bare curls: no Origin, refused with the reason.
    for i in 0..60 {
        let r = send(
            "POST",
            t.url("/v1/visits"),
            vec![
                ("x-forwarded-for", format!("100.65.{i}.1")),
                ("user-agent", BROWSER.into()),
            ],
            body(),
        )
        .await;
        assert_eq!(r.status, 403, "{:?}", r.body);
        assert!(
            r.body["error"]
                .as_str()
                .unwrap()
                .contains("Origin header is required"),
            "{:?}",
            r.body
        );
    }
    // A page under browser automation (the snippet sends navigator.webdriver).
    let mut automated: Value = serde_json::from_str(&visit_body(&site, None)).unwrap();
    automated["webdriver"] = json!(true);
    let r = send(
        "POST",
        t.url("/v1/visits"),
        from_page("100.66.0.1", BROWSER),
        Some(automated.to_string()),
    )
    .await;
    assert_eq!(r.body["kind"], "static", "{:?}", r.body);

    // Real visitors, each from its own network: every one gets its own pool number.
    let mut got = std::collections::HashSet::new();
    for i in 0..50 {
        let r = send(
            "POST",
            t.url("/v1/visits"),
            from_page(&format!("100.70.{i}.9"), BROWSER),
            body(),
        )
        .await;
        assert_eq!(r.body["kind"], "pool", "visitor {i}: {:?}", r.body);
        got.insert(r.body["number"].as_str().unwrap().to_string());
    }
    assert_eq!(got.len(), 50, "50 visitors, 50 numbers");

    // One network takes at most 5 new leases a minute: the 6th visitor from
    // it gets the site's number; a renewal and another network do not wait.
    let (site2, pool2) = (unique("site"), unique("pool"));
    let numbers2: Vec<String> = (0..10).map(|_| unique_number()).collect();
    let refs2: Vec<&str> = numbers2.iter().map(String::as_str).collect();
    provision(&t, &site2, &pool2, &refs2, &unique_number(), json!([])).await;
    let mut first_session = String::new();
    for i in 0..6 {
        let r = send(
            "POST",
            t.url("/v1/visits"),
            from_page(&format!("198.51.100.{}", 10 + i), BROWSER),
            Some(visit_body(&site2, None)),
        )
        .await;
        let want = if i < 5 { "pool" } else { "static" };
        assert_eq!(r.body["kind"], want, "visitor {i} of one /24: {:?}", r.body);
        if i == 0 {
            first_session = r.body["session_id"].as_str().unwrap().to_string();
        }
    }
    let r = send(
        "POST",
        t.url("/v1/visits"),
        from_page("198.51.100.10", BROWSER),
        Some(visit_body(&site2, Some(&first_session))),
    )
    .await;
    assert_eq!(
        r.body["kind"], "pool",
        "a renewal is not a new lease: {:?}",
        r.body
    );
    let r = send(
        "POST",
        t.url("/v1/visits"),
        from_page("192.0.2.1", BROWSER),
        Some(visit_body(&site2, None)),
    )
    .await;
    assert_eq!(r.body["kind"], "pool", "another network: {:?}", r.body);
    let stats = send(
        "GET",
        t.url(&format!("/v1/admin/pools/{pool2}")),
        admin(),
        None,
    )
    .await;
    assert_eq!(stats.body["stats"]["network_capped"], 1, "{:?}", stats.body);

    // Every refusal is on record with its reason; bare curls leave no row.
    #[derive(Row, Deserialize, Debug, PartialEq)]
    struct N {
        no_lease: String,
        n: u64,
    }
    let db = dialmark_schemas::ch::client(&t.config.clickhouse);
    let want = vec![
        N {
            no_lease: String::new(),
            n: 57,
        },
        N {
            no_lease: "crawler".into(),
            n: 60,
        },
        N {
            no_lease: "network_rate".into(),
            n: 1,
        },
        N {
            no_lease: "webdriver".into(),
            n: 1,
        },
    ];
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = db
            .query("SELECT no_lease, count() AS n FROM visits WHERE site IN (?, ?) GROUP BY no_lease ORDER BY no_lease")
            .bind(&site)
            .bind(&site2)
            .fetch_all::<N>()
            .await
            .unwrap();
        if rows == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows, want);
}

/// A page that shows a number its session no longer holds (another tab of
/// the session got a new one after a lease loss) learns the held number
/// from its keep-alive; the keep-alive extends the shown number's pool.
#[tokio::test(flavor = "multi_thread")]
async fn keepalive_answers_with_the_number_the_session_holds() {
    let t = TestTracker::start(config("kanum", single_redis(), "").await).await;
    let (site, pool) = (unique("site"), unique("pool"));
    let (n1, n2) = (unique_number(), unique_number());
    provision(&t, &site, &pool, &[&n1, &n2], &unique_number(), json!([])).await;
    let page = || {
        vec![
            ("origin", "https://shop.test".to_string()),
            ("user-agent", BROWSER.to_string()),
        ]
    };
    let a = send(
        "POST",
        t.url("/v1/visits"),
        page(),
        Some(visit_body(&site, None)),
    )
    .await;
    let (session, first) = (
        a.body["session_id"].as_str().unwrap().to_string(),
        a.body["number"].as_str().unwrap().to_string(),
    );
    // Tab 1 loses the lease (the number is retired); tab 2 asks again with
    // the same session and gets the other number.
    t.state
        .inventory
        .retire(&first, "test", "test", dialmark_schemas::unix_now())
        .await
        .unwrap();
    let b = send(
        "POST",
        t.url("/v1/visits"),
        page(),
        Some(visit_body(&site, Some(&session))),
    )
    .await;
    let second = b.body["number"].as_str().unwrap().to_string();
    assert_ne!(second, first, "{:?}", b.body);
    // Tab 1 still shows the first number: its keep-alive names the second.
    let ka = send(
        "POST",
        t.url(&format!("/v1/visits/{session}/keepalive")),
        page(),
        Some(json!({"site": site, "number": first}).to_string()),
    )
    .await;
    assert_eq!(ka.status, 200, "{:?}", ka.body);
    assert_eq!(ka.body["number"], second.as_str(), "{:?}", ka.body);
    assert!(ka.body["display"].as_str().unwrap().starts_with("+7 ("));
}

/// A site with two tracked numbers (sales, service): each line leases from
/// its own pool and swaps only its own number; a line whose pool is
/// exhausted without an overflow number keeps the site's number while the
/// other line still tracks; keep-alives hold every line's lease.
#[tokio::test(flavor = "multi_thread")]
async fn several_lines_lease_one_number_each_and_fall_back_alone() {
    let t = TestTracker::start(config("lines", single_redis(), "").await).await;
    let (site, sales, service) = (unique("site"), unique("pool"), unique("pool"));
    let (s1, sv1, overflow) = (unique_number(), unique_number(), unique_number());
    provision(&t, &site, &sales, &[&s1], &overflow, json!([])).await;
    let put_site = |lines: Value| {
        send(
            "PUT",
            t.url(&format!("/v1/admin/sites/{site}")),
            admin(),
            Some(
                json!({"origins": ["https://shop.test"], "replace": ["8 (495) 000-00-00"],
                       "default_pool": sales, "lines": lines})
                .to_string(),
            ),
        )
    };
    // A line may not swap another line's number, nor share its pool.
    let r = put_site(
        json!([{"name": "service", "replace": ["+74950000000"], "default_pool": service}]),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("lines[0].replace"),
        "{:?}",
        r.body
    );
    let r = put_site(
        json!([{"name": "service", "replace": ["8 800 555-00-00"], "default_pool": sales}]),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let r = put_site(
        json!([{"name": "main", "replace": ["8 800 555-00-00"], "default_pool": service}]),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let r = put_site(
        json!([{"name": "service", "replace": ["8 800 555-00-00"], "default_pool": service}]),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = send(
        "PUT",
        t.url(&format!("/v1/admin/pools/{service}")),
        admin(),
        Some(json!({"site": site, "destinations": ["+74951234567"]}).to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = send(
        "POST",
        t.url("/v1/admin/numbers"),
        admin(),
        Some(json!({"numbers": [sv1], "pool": service}).to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let page = || {
        vec![
            ("origin", "https://shop.test".to_string()),
            ("user-agent", BROWSER.to_string()),
        ]
    };
    let lines = |v: &Value| -> Vec<(String, String, Value, String)> {
        v["numbers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["line"].as_str().unwrap().to_string(),
                    l["number"].as_str().unwrap().to_string(),
                    l["replace"].clone(),
                    l["kind"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let a = send(
        "POST",
        t.url("/v1/visits"),
        page(),
        Some(visit_body(&site, None)),
    )
    .await;
    assert_eq!(
        lines(&a.body),
        vec![
            (
                "main".into(),
                s1.clone(),
                json!(["+74950000000"]),
                "pool".into()
            ),
            (
                "service".into(),
                sv1.clone(),
                json!(["+78005550000"]),
                "pool".into()
            ),
        ]
    );
    assert_eq!(
        a.body["number"],
        s1.as_str(),
        "the main line on top, as before"
    );
    // A second visitor: sales hands out its overflow number; service has
    // none and keeps the site's 8-800 number (nothing to swap).
    let b = send(
        "POST",
        t.url("/v1/visits"),
        page(),
        Some(visit_body(&site, None)),
    )
    .await;
    assert_eq!(
        lines(&b.body),
        vec![
            (
                "main".into(),
                overflow.clone(),
                json!(["+74950000000"]),
                "overflow".into()
            ),
            (
                "service".into(),
                "+78005550000".into(),
                json!([]),
                "static".into()
            ),
        ]
    );
    // The first visitor's keep-alive holds both leases.
    let session = a.body["session_id"].as_str().unwrap();
    let ka = send(
        "POST",
        t.url(&format!("/v1/visits/{session}/keepalive")),
        page(),
        Some(json!({"site": site, "number": s1}).to_string()),
    )
    .await;
    assert_eq!(ka.status, 200, "{:?}", ka.body);
    let held: Vec<(&str, &str)> = ka.body["numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["line"].as_str().unwrap(), l["number"].as_str().unwrap()))
        .collect();
    assert_eq!(held, vec![("main", s1.as_str()), ("service", sv1.as_str())]);
}
