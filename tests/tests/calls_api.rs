//! The calls API end to end: real SIPp calls through the router (one with
//! a failover), then read back as a marketer's site token reads them: the
//! call log with filters and cursor pages, one call with both forwarding
//! attempts and the pages viewed before it, the reports as JSON and CSV,
//! the limits of a site token, 400s naming the bad parameter, revocation,
//! the served OpenAPI document, and the live feed of a site's calls.

use std::time::Duration;

use dialmark_e2e::http::{send, Resp};
use dialmark_e2e::process::free_port;
use dialmark_e2e::router::{RouterOptions, TestRouter};
use dialmark_e2e::sipp::{Scenario, Uas};
use dialmark_e2e::world::{attempts, call, calls, reject, world};
use serde_json::{json, Value};

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

async fn get(w: &dialmark_e2e::world::World, path: &str, token: &str) -> Resp {
    send("GET", w.tracker.url(path), bearer(token), None).await
}

/// A read token of `site` named `name`, issued by the admin.
async fn issue(w: &dialmark_e2e::world::World, site: &str, name: &str) -> String {
    let r = send(
        "POST",
        w.tracker.url(&format!("/v1/admin/sites/{site}/tokens")),
        bearer("test-token"),
        Some(json!({ "name": name }).to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["token"].as_str().unwrap().to_string()
}

/// A second site (named `prefix` + the world's site suffix) whose pool is
/// not set up: its token must see none of the world's calls.
async fn other_site(w: &dialmark_e2e::world::World, prefix: &str) -> String {
    let other = format!("{prefix}{}", &w.site[w.site.len().saturating_sub(6)..]);
    let put = send(
        "PUT",
        w.tracker.url(&format!("/v1/admin/sites/{other}")),
        bearer("test-token"),
        Some(json!({"origins": ["https://other.test"], "replace": ["+74950000009"], "default_pool": "none"}).to_string()),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    other
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_token_reads_its_calls_attempts_journey_and_reports() {
    let w = world("callsapi").await;
    let (pa, pb) = (free_port(), free_port());
    let _a = Uas::start(pa, reject(503, "Service Unavailable"));
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("a", pa), ("b", pb)],
            router: "",
            probe: "",
        },
    );
    // Three calls, each failed over from trunk a to b.
    for _ in 0..3 {
        let run = call(
            r.sip_port,
            &w.number,
            Scenario::Builtin("uac"),
            "127.0.0.1",
            &["-d", "200"],
        )
        .await;
        assert!(run.success, "{}\n{}", run.output, r.proc.output());
    }
    calls(&w, &w.number, 3).await;
    // Each table's rows come on their own: the last call's row may be in
    // ClickHouse before its second attempt's.
    attempts(&w, &w.number, 6).await;

    // The admin issues the marketer's token, once per name.
    let tokens = format!("/v1/admin/sites/{}/tokens", w.site);
    let issued = send(
        "POST",
        w.tracker.url(&tokens),
        bearer("test-token"),
        Some(json!({"name": "marketing"}).to_string()),
    )
    .await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    let token = issued.body["token"].as_str().unwrap().to_string();
    let again = send(
        "POST",
        w.tracker.url(&tokens),
        bearer("test-token"),
        Some(json!({"name": "marketing"}).to_string()),
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.body);
    let refused = send(
        "POST",
        w.tracker.url(&tokens),
        bearer(&token),
        Some(json!({"name": "mine"}).to_string()),
    )
    .await;
    assert_eq!(refused.status, 401, "a read token is not the admin");
    let listed = get(&w, &tokens, "test-token").await;
    assert_eq!(listed.body["tokens"][0]["name"], "marketing");
    assert!(
        !listed.body.to_string().contains(&token),
        "tokens are never shown again"
    );

    // The call log, two per page, newest first.
    let page1 = get(
        &w,
        &format!("/v1/calls?number={}&limit=2", w.number),
        &token,
    )
    .await;
    assert_eq!(page1.status, 200, "{}", page1.body);
    let first = page1.body["calls"].as_array().unwrap().clone();
    assert_eq!(first.len(), 2);
    let cursor = page1.body["next_cursor"].as_str().expect("a next page");
    let page2 = get(
        &w,
        &format!("/v1/calls?number={}&limit=2&cursor={cursor}", w.number),
        &token,
    )
    .await;
    assert_eq!(page2.status, 200, "{}", page2.body);
    let second = page2.body["calls"].as_array().unwrap().clone();
    assert_eq!(second.len(), 1, "{}", page2.body);
    assert_eq!(page2.body["next_cursor"], Value::Null, "the last page");
    let ids: Vec<&str> = first
        .iter()
        .chain(&second)
        .map(|c| c["call_id"].as_str().unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "no call twice across pages: {ids:?}");
    let times: Vec<&str> = first
        .iter()
        .chain(&second)
        .map(|c| c["received"].as_str().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|p| p[0] >= p[1]),
        "newest first: {times:?}"
    );
    let c = &first[0];
    assert_eq!(c["site"], w.site.as_str());
    assert_eq!(c["disposition"], "answered");
    assert_eq!(c["attempts"], 2);
    assert_eq!(c["final_trunk"], "b");
    assert_eq!(c["utm_source"], "google");
    assert_eq!(c["utm_campaign"], "spring");
    assert!(c["received"].as_str().unwrap().ends_with('Z'), "{c}");

    // Filters: a disposition and a source no call has.
    let none = get(&w, "/v1/calls?disposition=missed", &token).await;
    assert_eq!(none.body["calls"], json!([]), "{}", none.body);
    let none = get(&w, "/v1/calls?utm_source=bing", &token).await;
    assert_eq!(none.body["calls"], json!([]));
    let google = get(
        &w,
        "/v1/calls?utm_source=google&channel=paid_search",
        &token,
    )
    .await;
    assert_eq!(
        google.body["calls"].as_array().unwrap().len(),
        3,
        "{}",
        google.body
    );

    // One call: both forwarding attempts, the pages before it.
    let id = c["call_id"].as_str().unwrap();
    let one = get(&w, &format!("/v1/calls/{id}"), &token).await;
    assert_eq!(one.status, 200, "{}", one.body);
    let fw = one.body["forwarding"].as_array().unwrap();
    let seen: Vec<(String, u64, String)> = fw
        .iter()
        .map(|a| {
            (
                a["trunk"].as_str().unwrap().to_string(),
                a["final_code"].as_u64().unwrap(),
                a["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("a".to_string(), 503, "rejected".to_string()),
            ("b".to_string(), 200, "answered".to_string())
        ],
        "the failed attempt too"
    );
    let journey = one.body["journey"].as_array().unwrap();
    let sources: Vec<&str> = journey
        .iter()
        .map(|v| v["utm_source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["yandex", "google"], "{}", one.body["journey"]);
    assert_eq!(one.body["first_utm_source"], "yandex", "first touch");
    assert_eq!(one.body["gclid"], "TEST", "last touch");
    assert!(one.body["earlier_calls"].is_array());

    // Reports: JSON and CSV for the site; node-wide ones are the admin's.
    let rep = get(&w, "/v1/reports/campaigns", &token).await;
    assert_eq!(rep.status, 200, "{}", rep.body);
    let row = rep.body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["utm_source"] == "google")
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["calls"], 3, "{}", rep.body);
    assert_eq!(row["answered"], 3, "a count, as the SQL says: {}", rep.body);
    let csv = get(&w, "/v1/reports/campaigns?format=csv", &token).await;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let text = csv.body.as_str().unwrap().to_string();
    assert!(text.starts_with("\"utm_source\",\"utm_medium\""), "{text}");
    assert!(text.contains("\"google\""), "{text}");
    assert_eq!(
        get(&w, "/v1/reports/trunk_quality", &token).await.status,
        403
    );
    assert_eq!(
        get(&w, "/v1/reports/trunk_quality", "test-token")
            .await
            .status,
        200
    );
    assert_eq!(get(&w, "/v1/reports/nope", &token).await.status, 404);

    // Chart data: by trunk, by hour.
    let by_trunk = get(&w, "/v1/stats?by=trunk", &token).await;
    assert_eq!(by_trunk.status, 200, "{}", by_trunk.body);
    assert_eq!(
        by_trunk.body["rows"],
        json!([{"key": "b", "calls": 3, "answered": 3, "missed": 0, "talk_ms": by_trunk.body["rows"][0]["talk_ms"]}]),
        "the answered share by trunk"
    );
    let by_hour = get(&w, "/v1/stats?by=hour", &token).await;
    let hours = by_hour.body["rows"].as_array().unwrap();
    assert_eq!(
        hours
            .iter()
            .map(|r| r["calls"].as_u64().unwrap())
            .sum::<u64>(),
        3,
        "{}",
        by_hour.body
    );

    // The install check: the site's origin and the visit seen from it.
    let inst = get(&w, "/v1/install", &token).await;
    assert_eq!(inst.status, 200, "{}", inst.body);
    assert_eq!(inst.body["site"], w.site.as_str());
    let origin = &inst.body["origins"][0];
    assert_eq!(origin["origin"], "https://shop.test", "{}", inst.body);
    assert_eq!(origin["last_visit"]["visits"], 2, "{}", inst.body);
    assert!(origin["last_visit"]["last_visit"]
        .as_str()
        .unwrap()
        .ends_with('Z'));

    // Bad input is a 400 naming the parameter.
    for (path, field) in [
        ("/v1/calls?limit=0", "limit:"),
        ("/v1/calls?from=yesterday", "from:"),
        ("/v1/calls?disposition=lost", "disposition:"),
        ("/v1/calls?cursor=abc", "cursor:"),
        ("/v1/calls?sort=asc", "sort:"),
        ("/v1/calls?number=12", "number:"),
        ("/v1/calls/not-a-uuid", "id:"),
        ("/v1/reports/campaigns?format=xml", "format:"),
        ("/v1/reports/google_ads_export?min_talk=x", "min_talk:"),
        ("/v1/stats?by=second", "by:"),
        ("/v1/install?site=a&x=1", "x:"),
        ("/v1/stats?by=day&to=tomorrow", "to:"),
    ] {
        let r = get(&w, path, &token).await;
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        let e = r.body["error"].as_str().unwrap_or("");
        assert!(e.starts_with(field), "{path}: {e}");
    }

    // Another site's token sees none of it.
    let other = other_site(&w, "othersite").await;
    let theirs = issue(&w, &other, "marketing").await;
    assert_eq!(
        get(&w, &format!("/v1/calls/{id}"), &theirs).await.status,
        404
    );
    assert_eq!(
        get(&w, &format!("/v1/calls?site={}", w.site), &theirs)
            .await
            .status,
        403
    );
    let theirs_log = get(&w, "/v1/calls", &theirs).await;
    assert_eq!(theirs_log.body["calls"], json!([]));

    // Numbers: the site's pool now and sampled over time.
    let sampled = dialmark_tracker::sample::once(&w.tracker.state, dialmark_schemas::unix_now())
        .await
        .unwrap();
    assert!(sampled >= 1);
    let pools = get(&w, "/v1/pools", &token).await;
    assert_eq!(pools.status, 200, "{}", pools.body);
    let list = pools.body["pools"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{}", pools.body);
    let (pool, size) = (
        list[0]["id"].as_str().unwrap().to_string(),
        list[0]["size"].clone(),
    );
    assert_eq!(size, 1, "one number; the other was retired: {}", pools.body);
    // The lifecycle: stock is the node's (a number added to no pool lands
    // there), quarantine counts this site's retired number only.
    let spare = send(
        "POST",
        w.tracker.url("/v1/admin/numbers"),
        bearer("test-token"),
        Some(json!({ "numbers": [dialmark_e2e::env::unique_number()] }).to_string()),
    )
    .await;
    assert_eq!(spare.status, 200, "{}", spare.body);
    let cycle = get(&w, "/v1/pools", &token).await.body["lifecycle"].clone();
    assert_eq!(cycle["active"], 1, "{cycle}");
    assert_eq!(cycle["quarantine"], 1, "{cycle}");
    assert!(cycle["stock"].as_u64().unwrap() >= 1, "{cycle}");
    let path = format!("/v1/pools/{pool}/samples");
    let mut use_rows = Value::Null;
    for _ in 0..50 {
        use_rows = get(&w, &path, &token).await.body["rows"].clone();
        if use_rows.as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(use_rows[0]["size"], 1, "{use_rows}");
    assert!(
        use_rows[0]["at"].as_str().unwrap().ends_with('Z'),
        "{use_rows}"
    );
    assert_eq!(
        get(&w, &path, &theirs).await.status,
        404,
        "another site's pool"
    );
    assert_eq!(
        get(&w, "/v1/pools", &theirs).await.body["pools"],
        json!([{"id": "none", "missing": true}]),
        "their own pool only (named, not set up)"
    );
    // The admin reads every site.
    let which = get(&w, "/v1/install", "test-token").await;
    assert_eq!(
        which.status, 400,
        "the admin names the site: {}",
        which.body
    );
    let all = get(&w, &format!("/v1/calls?number={}", w.number), "test-token").await;
    assert_eq!(all.body["calls"].as_array().unwrap().len(), 3);

    // Revoked: refused at once.
    let del = send(
        "DELETE",
        w.tracker.url(&format!("{tokens}/marketing")),
        bearer("test-token"),
        None,
    )
    .await;
    assert_eq!(del.status, 200, "{}", del.body);
    assert_eq!(get(&w, "/v1/calls", &token).await.status, 401);
    assert_eq!(get(&w, "/v1/calls", "").await.status, 401);

    // The OpenAPI document lists every route served here.
    let doc = send("GET", w.tracker.url("/v1/openapi.json"), vec![], None).await;
    assert_eq!(doc.status, 200);
    for path in [
        "/v1/calls",
        "/v1/calls/{id}",
        "/v1/calls/live",
        "/v1/reports/{name}",
        "/v1/stats",
        "/v1/pools",
        "/v1/pools/{id}/samples",
        "/v1/install",
        "/v1/admin/sites/{id}/tokens",
        "/v1/admin/sites/{id}/tokens/{name}",
    ] {
        assert!(doc.body["paths"][path].is_object(), "{path} documented");
    }
}

/// Reads `/v1/calls/live` with `token` for up to `secs` seconds or until a
/// `call.completed` event: the `call` events' documents, in order.
fn live_events(url: String, token: String, secs: u64) -> std::thread::JoinHandle<Vec<Value>> {
    use std::io::BufRead;
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(secs)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .get(&url)
            .header("authorization", &format!("Bearer {token}"))
            .call()
            .expect("live feed");
        assert_eq!(resp.status(), 200);
        let reader = std::io::BufReader::new(resp.body_mut().as_reader());
        let (mut event, mut out) = (String::new(), Vec::new());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                if event == "call" {
                    let doc: Value = serde_json::from_str(data).unwrap();
                    let done = doc["event"] == "call.completed";
                    out.push(doc);
                    if done {
                        break;
                    }
                }
            }
        }
        out
    })
}

/// The live feed: a site's token gets its calls' events as they happen
/// (ringing, answered, completed), another site's token gets none.
#[tokio::test(flavor = "multi_thread")]
async fn the_live_feed_carries_a_sites_calls_to_its_own_tokens_only() {
    let w = world("livefeed").await;
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("b", pb)],
            router: "",
            probe: "",
        },
    );
    let other = other_site(&w, "liveother").await;
    let (mine, theirs) = (
        issue(&w, &w.site, "live").await,
        issue(&w, &other, "live").await,
    );
    let url = w.tracker.url("/v1/calls/live");
    let ours = live_events(url.clone(), mine, 15);
    let others = live_events(url, theirs, 6);
    // Both streams listening (the first one subscribes to Redis).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let run = call(
        r.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &["-d", "300"],
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    let ours = tokio::task::spawn_blocking(move || ours.join().unwrap())
        .await
        .unwrap();
    let kinds: Vec<&str> = ours.iter().map(|d| d["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["call.started", "call.answered", "call.completed"],
        "{ours:?}\n{}",
        r.proc.output()
    );
    for d in &ours {
        assert_eq!(d["site"], w.site.as_str());
        assert_eq!(d["number"], w.number.as_str());
        assert_eq!(d["source"]["utm_source"], "google");
        assert_eq!(d["call_id"], ours[0]["call_id"]);
    }
    assert_eq!(ours[2]["disposition"], "answered");
    let others = tokio::task::spawn_blocking(move || others.join().unwrap())
        .await
        .unwrap();
    assert!(others.is_empty(), "another site's token saw {others:?}");
    let live = send("GET", w.tracker.url("/v1/calls/live"), vec![], None).await;
    assert_eq!(live.status, 401, "the feed needs a token");
}
