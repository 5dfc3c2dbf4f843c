//! A test world for the router's end-to-end tests: a tracker with one
//! site and a leased number (plus a quarantine and an unknown number),
//! the rows a call leaves in ClickHouse, and SIPp carrier calls.

use std::time::Duration;

use clickhouse::Row;
use serde::Deserialize;

use crate::env::unique_number;
use crate::sipp::{self, Scenario};
use crate::tracker::{config, single_redis, TestTracker};

/// A tracker with one site, a pool of one number leased to a visit from
/// google/spring, a quarantine number and an unknown number.
pub struct World {
    pub tracker: TestTracker,
    pub site: String,
    pub number: String,
    pub session: String,
    pub quarantine: String,
    pub unknown: String,
}

pub async fn world(test: &str) -> World {
    let tracker = TestTracker::start(config(test, single_redis(), "").await).await;
    let (site, _, numbers) = crate::tracker::provision(&tracker, 2).await;
    let (number, quarantine) = (numbers[0].clone(), numbers[1].clone());
    tracker
        .state
        .inventory
        .retire(&quarantine, "test", "test", dialmark_schemas::unix_now())
        .await
        .unwrap();
    // The visitor came from a Yandex ad a minute ago, then clicked a
    // Google ad in the same session: the lease (and so the call) carries
    // the latest click, the first one stays the first touch.
    let yandex = serde_json::json!({"utm_source": "yandex", "utm_medium": "cpc", "yclid": "Y1",
        "landing_url": "https://shop.test/?utm_source=yandex&utm_medium=cpc&yclid=Y1", "touch_age": 60});
    let mut body = yandex.clone();
    body["site"] = site.as_str().into();
    body["url"] = yandex["landing_url"].clone();
    body["first_touch"] = yandex.clone();
    let first = tracker.visit(body).await;
    let resp = tracker.visit(serde_json::json!({"site": site, "session_id": first["session_id"],
        "url": "https://shop.test/?utm_source=google&utm_campaign=spring&gclid=TEST",
        "utm_source": "google", "utm_campaign": "spring", "gclid": "TEST", "touch_age": 0, "first_touch": yandex})).await;
    assert_eq!(resp["number"], number.as_str(), "{resp}");
    assert_eq!(resp["session_id"], first["session_id"], "{resp}");
    World {
        number,
        session: resp["session_id"].as_str().unwrap().to_string(),
        quarantine,
        unknown: unique_number(),
        site,
        tracker,
    }
}

#[derive(Row, Deserialize, Debug)]
pub struct AttemptRow {
    pub attempt: u8,
    pub trunk: String,
    pub final_code: u16,
    pub outcome: String,
    pub failover: u8,
    pub talk_ms: u32,
    pub duration_ms: u32,
    pub site: String,
}

#[derive(Row, Deserialize, Debug)]
pub struct CallRow {
    pub disposition: String,
    pub number_status: String,
    pub attempts: u8,
    pub final_trunk: String,
    pub talk_ms: u32,
    pub attribution: String,
    pub session_id: String,
    pub utm_source: String,
    pub utm_campaign: String,
    pub gclid: String,
    pub final_code: u16,
    pub channel: String,
    pub first_utm_source: String,
    pub first_channel: String,
    pub confidence: String,
}

/// Completed `calls` rows of a number (`ended` set: an answered call's
/// in-progress row is not one), once there are `expect` of them.
pub async fn calls(w: &World, number: &str, expect: usize) -> Vec<CallRow> {
    let db = dialmark_schemas::ch::client(&w.tracker.config.clickhouse);
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = db
            .query(
                "SELECT toString(disposition), toString(number_status), attempts, final_trunk, talk_ms, toString(attribution), \
                 session_id, utm_source, utm_campaign, gclid, final_code, channel, first_utm_source, first_channel, toString(attribution_confidence) FROM calls FINAL WHERE number = ? AND ended != 0 ORDER BY received",
            )
            .bind(number)
            .fetch_all()
            .await
            .unwrap();
        if rows.len() >= expect {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows.len(), expect, "calls rows for {number}: {rows:?}");
    rows
}

/// `call_attempts` rows of a number's calls, once there are `expect`.
pub async fn attempts(w: &World, number: &str, expect: usize) -> Vec<AttemptRow> {
    attempts_until(w, number, expect, |_| true).await
}

/// `expect` attempt rows that `done` accepts (a rewritten row arrives
/// after the first one); fails with the last rows seen.
pub async fn attempts_until(
    w: &World,
    number: &str,
    expect: usize,
    done: impl Fn(&[AttemptRow]) -> bool,
) -> Vec<AttemptRow> {
    let db = dialmark_schemas::ch::client(&w.tracker.config.clickhouse);
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = db
            .query(
                "SELECT attempt, trunk, final_code, toString(outcome), failover, talk_ms, duration_ms, site FROM call_attempts FINAL \
                 WHERE call_id IN (SELECT call_id FROM calls WHERE number = ?) ORDER BY started, attempt",
            )
            .bind(number)
            .fetch_all()
            .await
            .unwrap();
        if rows.len() >= expect && done(&rows) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows.len(), expect, "attempt rows for {number}: {rows:?}");
    rows
}

/// One SIPp call, running in the background (e.g. while the router is
/// signalled).
pub fn spawn_call(
    router: u16,
    number: &str,
    scenario: Scenario,
    local_ip: &'static str,
    extra: &'static [&'static str],
) -> tokio::task::JoinHandle<sipp::UacRun> {
    let number = number.to_string();
    tokio::task::spawn_blocking(move || sipp::uac(router, &number, scenario, local_ip, 1, extra))
}

pub async fn call(
    router: u16,
    number: &str,
    scenario: Scenario,
    local_ip: &'static str,
    extra: &'static [&'static str],
) -> sipp::UacRun {
    spawn_call(router, number, scenario, local_ip, extra)
        .await
        .unwrap()
}

/// `calls` SIPp carrier calls to `number` through the router on loopback
/// (`extra`: SIPp options, e.g. `-r` for the rate), off the async threads.
pub async fn place_calls(
    router: u16,
    number: &str,
    scenario: Scenario,
    calls: u32,
    extra: &[&str],
) -> sipp::UacRun {
    let number = number.to_string();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        sipp::uac(router, &number, scenario, "127.0.0.1", calls, &extra)
    })
    .await
    .unwrap()
}

pub fn reject(code: u16, reason: &str) -> Scenario {
    Scenario::File(
        "uas_reject.xml",
        vec![("CODE", code.to_string()), ("REASON", reason.to_string())],
    )
}

pub fn expect(code: u16) -> Scenario {
    Scenario::File("uac_expect.xml", vec![("CODE", code.to_string())])
}

/// Polls `f` every 100 ms until it holds, failing after `secs`.
pub async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    for _ in 0..secs * 10 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}
