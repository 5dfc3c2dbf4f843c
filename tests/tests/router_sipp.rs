//! The routing node end to end with real SIPp: a SIPp UAC as the carrier,
//! SIPp UASes as trunks A and B, the real router binary, the tracker's
//! Redis records, and the rows in ClickHouse. Covers failover on 503 and on
//! silence, no failover on busy, CANCEL while ringing, quarantine / unknown
//! / untrusted rejections, a probe-down trunk raising the webhook alert
//! and being skipped until it recovers, and the signed call webhooks
//! (the node's and a site's own).

use std::time::Duration;

use clickhouse::Row;
use dialmark_e2e::process::free_port;
use dialmark_e2e::router::{RouterOptions, TestRouter};
use dialmark_e2e::sipp::{Scenario, Uas};
use dialmark_e2e::world::{attempts, call, calls, expect, reject, spawn_call, wait_for, world};
use serde::Deserialize;

#[tokio::test(flavor = "multi_thread")]
async fn trunk_a_503_fails_over_to_b_and_both_attempts_are_recorded() {
    let w = world("r503").await;
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
    let run = call(
        r.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &["-d", "1500"],
    )
    .await;
    assert!(
        run.success,
        "carrier call failed:\n{}\nrouter:\n{}",
        run.output,
        r.proc.output()
    );

    let a = attempts(&w, &w.number, 2).await;
    assert_eq!((a[0].attempt, a[1].attempt), (1, 2));
    assert_eq!(
        (
            a[0].trunk.as_str(),
            a[0].final_code,
            a[0].outcome.as_str(),
            a[0].failover
        ),
        ("a", 503, "rejected", 1)
    );
    assert_eq!(
        (
            a[1].trunk.as_str(),
            a[1].final_code,
            a[1].outcome.as_str(),
            a[1].failover
        ),
        ("b", 200, "answered", 0)
    );
    assert!(
        a[1].talk_ms >= 1_200,
        "talk time from 200 OK to BYE: {}",
        a[1].talk_ms
    );
    let c = calls(&w, &w.number, 1).await;
    let c = &c[0];
    assert_eq!(
        (c.disposition.as_str(), c.attempts, c.final_trunk.as_str()),
        ("answered", 2, "b")
    );
    assert!(c.talk_ms >= 1_200, "{c:?}");
    // Real-time attribution: the visit that held the number.
    assert_eq!(
        (
            c.attribution.as_str(),
            c.session_id.as_str(),
            c.confidence.as_str()
        ),
        ("live_lease", w.session.as_str(), "live")
    );
    assert_eq!(
        (
            c.utm_source.as_str(),
            c.utm_campaign.as_str(),
            c.gclid.as_str()
        ),
        ("google", "spring", "TEST"),
        "the latest ad click in the session"
    );
    assert_eq!(
        (
            c.channel.as_str(),
            c.first_utm_source.as_str(),
            c.first_channel.as_str()
        ),
        ("paid_search", "yandex", "paid_search"),
        "channel and first touch"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn carrier_over_tcp_is_answered_on_its_connection() {
    let w = world("rtcp").await;
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
    // -t t1: one TCP connection to the router; replies must come back on it.
    let run = call(
        r.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &["-t", "t1", "-d", "300"],
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    let c = calls(&w, &w.number, 1).await;
    assert_eq!(
        (c[0].disposition.as_str(), c[0].final_trunk.as_str()),
        ("answered", "b")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_trunk_times_out_and_fails_over() {
    let w = world("rsilent").await;
    let (pa, pb) = (free_port(), free_port());
    // Nothing listens on trunk A's port.
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("a", pa), ("b", pb)],
            router: "",
            probe: "",
        },
    );
    let run = call(
        r.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &["-d", "200"],
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    let a = attempts(&w, &w.number, 2).await;
    assert_eq!(
        (
            a[0].trunk.as_str(),
            a[0].final_code,
            a[0].outcome.as_str(),
            a[0].failover
        ),
        ("a", 408, "timeout", 1)
    );
    assert_eq!(
        (a[1].trunk.as_str(), a[1].outcome.as_str()),
        ("b", "answered")
    );
    // The caller waited on the silent trunk the provisional timer (1000 ms
    // in the test config), not more.
    assert!(
        (1_000..=1_500).contains(&a[0].duration_ms),
        "failed over after {} ms",
        a[0].duration_ms
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_is_not_failed_over() {
    let w = world("rbusy").await;
    let (pa, pb) = (free_port(), free_port());
    let _a = Uas::start(pa, reject(486, "Busy Here"));
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("a", pa), ("b", pb)],
            router: "",
            probe: "",
        },
    );
    let run = call(r.sip_port, &w.number, expect(486), "127.0.0.1", &[]).await;
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    let a = attempts(&w, &w.number, 1).await;
    assert_eq!(
        (
            a[0].trunk.as_str(),
            a[0].final_code,
            a[0].outcome.as_str(),
            a[0].failover
        ),
        ("a", 486, "busy", 0)
    );
    let c = calls(&w, &w.number, 1).await;
    assert_eq!(
        (c[0].disposition.as_str(), c[0].attempts, c[0].final_code),
        ("busy", 1, 486)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_while_ringing_is_propagated_and_recorded() {
    let w = world("rcancel").await;
    let (pa, pb) = (free_port(), free_port());
    let _a = Uas::start(pa, Scenario::File("uas_ring_cancel.xml", vec![]));
    let r = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("a", pa), ("b", pb)],
            router: "",
            probe: "",
        },
    );
    let run = call(
        r.sip_port,
        &w.number,
        Scenario::File("uac_cancel.xml", vec![]),
        "127.0.0.1",
        &[],
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    let a = attempts(&w, &w.number, 1).await;
    assert_eq!(
        (a[0].trunk.as_str(), a[0].outcome.as_str()),
        ("a", "canceled")
    );
    let c = calls(&w, &w.number, 1).await;
    assert_eq!(
        (c[0].disposition.as_str(), c[0].final_code),
        ("abandoned", 487)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn quarantine_unknown_and_untrusted_calls_are_rejected_and_recorded() {
    let w = world("rreject").await;
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

    let run = call(r.sip_port, &w.quarantine, expect(404), "127.0.0.1", &[]).await;
    assert!(
        run.success,
        "quarantine: {}\n{}",
        run.output,
        r.proc.output()
    );
    let c = calls(&w, &w.quarantine, 1).await;
    assert_eq!(
        (
            c[0].disposition.as_str(),
            c[0].number_status.as_str(),
            c[0].attempts
        ),
        ("rejected_quarantine", "quarantine", 0)
    );

    let run = call(r.sip_port, &w.unknown, expect(404), "127.0.0.1", &[]).await;
    assert!(run.success, "unknown: {}", run.output);
    let c = calls(&w, &w.unknown, 1).await;
    assert_eq!(
        (c[0].disposition.as_str(), c[0].number_status.as_str()),
        ("rejected_unknown", "unknown")
    );

    // 127.0.0.3 is not a trusted carrier: 403, recorded, never forwarded.
    let run = call(r.sip_port, &w.number, expect(403), "127.0.0.3", &[]).await;
    assert!(run.success, "untrusted: {}", run.output);
    let c = calls(&w, &w.number, 1).await;
    assert_eq!(
        (c[0].disposition.as_str(), c[0].attempts),
        ("rejected_untrusted", 0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_down_trunk_alerts_and_is_skipped_until_it_recovers() {
    let w = world("rprobe").await;
    let (hook_port, hooks) = dialmark_e2e::webhook::receiver();
    let (pa, pb) = (free_port(), free_port());
    let a = Uas::start(pa, Scenario::File("uas_options.xml", vec![]));
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let router_extra = format!(
        "alert_webhook = \"http://127.0.0.1:{hook_port}/alert\"\nalert_hold_down_seconds = 1"
    );
    let r = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("a", pa), ("b", pb)],
            router: &router_extra,
            probe: "interval_seconds = 1\ntimeout_ms = 400\ndown_after = 2\nup_after = 1",
        },
    );
    let status = |port: u16| -> serde_json::Value {
        ureq::get(&format!("http://127.0.0.1:{port}/status.json"))
            .call()
            .map(|mut r| r.body_mut().read_json().unwrap())
            .unwrap_or_default()
    };
    let a_up = |v: &serde_json::Value| {
        v["trunks"]
            .as_array()
            .and_then(|t| t.iter().find(|x| x["name"] == "a"))
            .map(|x| x["up"] == true)
    };
    let hp = r.http_port;
    wait_for("a up on its probes", 10, || a_up(&status(hp)) == Some(true)).await;

    drop(a); // trunk A's SIP stack dies
    wait_for("trunk a down", 10, || a_up(&status(hp)) == Some(false)).await;
    wait_for("down alert", 10, || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.body.contains("DialmarkTrunkDown") && !b.body.contains("endsAt"))
    })
    .await;
    let alert: serde_json::Value =
        serde_json::from_str(&hooks.lock().unwrap().last().unwrap().body).unwrap();
    assert_eq!(alert[0]["labels"]["trunk"], "a");
    let metrics = ureq::get(&format!("http://127.0.0.1:{hp}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("dialmark_trunk_up{trunk=\"a\"} 0"),
        "{metrics}"
    );
    let page = ureq::get(&format!("http://127.0.0.1:{hp}/status"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(page.contains("data-trunk=\"a\"") && page.contains("DOWN"));

    // A call now goes straight to B: A is skipped, not tried and timed out.
    let run = call(
        r.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &["-d", "200"],
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    let at = attempts(&w, &w.number, 1).await;
    assert_eq!(
        (at[0].trunk.as_str(), at[0].outcome.as_str()),
        ("b", "answered"),
        "{}",
        r.proc.output()
    );

    // A comes back: probes mark it up, the alert resolves.
    let _a2 = Uas::start(pa, Scenario::File("uas_options.xml", vec![]));
    wait_for("trunk a up", 10, || a_up(&status(hp)) == Some(true)).await;
    wait_for("resolved alert", 10, || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.body.contains("endsAt"))
    })
    .await;

    #[derive(Row, Deserialize)]
    struct Ev {
        trunk: String,
        state: String,
        cause: String,
    }
    let db = dialmark_schemas::ch::client(&w.tracker.config.clickhouse);
    let mut evs: Vec<Ev> = Vec::new();
    for _ in 0..50 {
        evs = db
            .query("SELECT trunk, toString(state), toString(cause) FROM trunk_events ORDER BY ts, state DESC")
            .fetch_all()
            .await
            .unwrap();
        if evs.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seq: Vec<(&str, &str, &str)> = evs
        .iter()
        .map(|e| (e.trunk.as_str(), e.state.as_str(), e.cause.as_str()))
        .collect();
    assert_eq!(seq, vec![("a", "down", "probe"), ("a", "up", "probe")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_source_is_banned_and_carriers_keep_working() {
    let w = world("rflood").await;
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
    let port = r.sip_port;
    // 300 OPTIONS as fast as possible from an untrusted address.
    let answered = tokio::task::spawn_blocking(move || {
        let s = std::net::UdpSocket::bind("127.0.0.3:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let me = s.local_addr().unwrap();
        for i in 0..300 {
            let m = format!(
                "OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-f{i}\r\nFrom: <sip:a@x>;tag=f\r\n\
                 To: <sip:x@127.0.0.1>\r\nCall-ID: flood-{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            );
            s.send_to(m.as_bytes(), ("127.0.0.1", port)).unwrap();
        }
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while s.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    })
    .await
    .unwrap();
    assert!(
        (1..=60).contains(&answered),
        "burst answered (403), the rest dropped: {answered} replies"
    );
    let metrics = ureq::get(&format!("http://127.0.0.1:{}/metrics", r.http_port))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(metrics.contains("dialmark_flood_bans_total 1"), "{metrics}");
    // The carrier is not affected.
    let run = call(
        r.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &["-d", "200"],
    )
    .await;
    assert!(run.success, "{}", run.output);
}

/// The signature check a receiver runs: HMAC-SHA256(secret, "t." + body).
fn assert_signed(h: &dialmark_e2e::webhook::Received, secret: &str) {
    use hmac::{Hmac, Mac};
    let sig = h.header("x-dialmark-signature").expect("signed");
    let (t, v1) = sig
        .strip_prefix("t=")
        .and_then(|s| s.split_once(",v1="))
        .expect("t=…,v1=…");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", h.body).as_bytes());
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, want, "signature over t.body with {secret}");
}

fn doc(h: &dialmark_e2e::webhook::Received) -> serde_json::Value {
    serde_json::from_str(&h.body).unwrap()
}

/// The call webhooks: `call.started` while the call rings, then
/// `call.completed` only once the call row is in ClickHouse, signed,
/// retried after the receiver's 503 with the same delivery id, and
/// carrying the call's attribution.
#[tokio::test(flavor = "multi_thread")]
async fn call_webhooks_are_signed_retried_and_completed_after_the_row() {
    use std::sync::{Arc, Mutex};

    const SECRET: &str = "test-secret-0123456789";
    let w = world("rhook").await;
    let ch = w.tracker.config.clickhouse.clone();
    // Per completed delivery: completed calls rows with its call_id when it
    // arrived (the answer's own row, `ended` = 0, comes first).
    let rows_seen = Arc::new(Mutex::new(Vec::new()));
    let seen = rows_seen.clone();
    let (hook_port, hooks) = dialmark_e2e::webhook::receiver_with(move |req| {
        if req.header("x-dialmark-event") != Some("call.completed") {
            return 200;
        }
        let doc: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
        let id = doc["call_id"].as_str().unwrap_or("").to_string();
        let query = format!(
            "SELECT count() FROM {}.calls WHERE call_id = '{}' AND ended != 0",
            ch.database,
            id.replace('\'', "")
        );
        let n = ureq::post(&ch.url)
            .send(query)
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        let mut seen = seen.lock().unwrap();
        seen.push(n.trim().to_string());
        // The first delivery is refused as if the receiver were down.
        if seen.len() == 1 {
            503
        } else {
            200
        }
    });
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let extra = format!(
        "call_webhook = {{ url = \"http://127.0.0.1:{hook_port}/calls\", secret = \"{SECRET}\" }}"
    );
    let r = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("b", pb)],
            router: &extra,
            probe: "",
        },
    );
    let run = call(
        r.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &["-d", "500"],
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    wait_for("three webhook deliveries", 20, || {
        hooks.lock().unwrap().len() >= 3
    })
    .await;
    // Nothing more arrives once one was accepted.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hooks = hooks.lock().unwrap().clone();
    let events: Vec<_> = hooks
        .iter()
        .map(|h| h.header("x-dialmark-event").unwrap_or(""))
        .collect();
    assert_eq!(
        events,
        ["call.started", "call.completed", "call.completed"],
        "ringing, then completed: refused once, accepted once"
    );
    assert_eq!(
        *rows_seen.lock().unwrap(),
        ["1", "1"],
        "the call row was in ClickHouse before each completed delivery"
    );
    assert!(
        hooks[2].at - hooks[1].at >= Duration::from_millis(900),
        "retried after a backoff"
    );
    let started = doc(&hooks[0]);
    let call_id = started["call_id"].as_str().unwrap().to_string();
    assert_eq!(
        hooks[0].header("x-dialmark-delivery"),
        Some(format!("{call_id}.started").as_str())
    );
    assert_eq!(started["event"], "call.started");
    assert_eq!(started["number"], w.number.as_str());
    assert_eq!(started["site"], w.site.as_str());
    assert_eq!(started["trunk"], "b");
    assert_eq!(started["source"]["gclid"], "TEST");
    assert!(started["ringing"].is_string(), "{started}");
    assert!(
        started.get("disposition").is_none() && started.get("talk_ms").is_none(),
        "nothing is known of the end while it rings: {started}"
    );
    assert_signed(&hooks[0], SECRET);
    for h in &hooks[1..] {
        let doc = doc(h);
        assert_eq!(h.header("x-dialmark-delivery"), Some(call_id.as_str()));
        assert_signed(h, SECRET);
        assert_eq!(doc["event"], "call.completed");
        assert_eq!(doc["call_id"], call_id.as_str());
        assert_eq!(doc["number"], w.number.as_str());
        assert_eq!(doc["disposition"], "answered");
        assert_eq!(doc["attribution"], "live_lease");
        assert_eq!(doc["session_id"], w.session.as_str());
        assert_eq!(doc["source"]["utm_source"], "google");
        assert_eq!(doc["source"]["gclid"], "TEST");
        assert_eq!(doc["final_trunk"], "b");
    }
    assert_eq!(hooks[1].body, hooks[2].body, "the same delivery, retried");
}

/// A site's own webhook gets that site's events signed with the site's
/// secret, besides the node's global receiver; while the site's receiver
/// is down, only its own events wait.
#[tokio::test(flavor = "multi_thread")]
async fn a_sites_own_webhook_gets_its_events_and_waits_alone() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const GLOBAL: &str = "global-secret-0123456789";
    const SITE: &str = "site-secret-0123456789";
    let w = world("rsitehook").await;
    let (global_port, global) = dialmark_e2e::webhook::receiver();
    // Down for its first three tries (backoff 1 + 2 + 4 s).
    let tries = Arc::new(AtomicUsize::new(0));
    let t = tries.clone();
    let (site_port, site) = dialmark_e2e::webhook::receiver_with(move |_| {
        if t.fetch_add(1, Ordering::SeqCst) < 3 {
            503
        } else {
            200
        }
    });
    let inv = &w.tracker.state.inventory;
    let mut s = inv.site(&w.site).await.unwrap();
    s.webhook = Some(dialmark_schemas::layout::SiteWebhook {
        url: format!("http://127.0.0.1:{site_port}/site"),
        secret: "short".into(),
    });
    let err = inv.put_site(s.clone()).await.unwrap_err().to_string();
    assert!(err.contains("webhook.secret"), "{err}");
    s.webhook.as_mut().unwrap().secret = SITE.into();
    inv.put_site(s).await.unwrap();

    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let extra = format!(
        "call_webhook = {{ url = \"http://127.0.0.1:{global_port}/calls\", secret = \"{GLOBAL}\" }}"
    );
    let r = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("b", pb)],
            router: &extra,
            probe: "",
        },
    );
    let run = call(
        r.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &["-d", "300"],
    )
    .await;
    assert!(run.success, "{}\n{}", run.output, r.proc.output());
    wait_for("the global receiver's two events", 20, || {
        global.lock().unwrap().len() >= 2
    })
    .await;
    assert!(
        tries.load(Ordering::SeqCst) <= 3,
        "the site's receiver was still refusing when the global one had both"
    );
    wait_for("the site's receiver's two events", 30, || {
        site.lock().unwrap().len() >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let global = global.lock().unwrap().clone();
    let site = site.lock().unwrap().clone();
    assert_eq!(global.len(), 2, "{global:?}");
    assert_eq!(site.len(), 5, "3 refused, then started and completed");
    let events = |hs: &[dialmark_e2e::webhook::Received]| -> Vec<String> {
        hs.iter()
            .map(|h| h.header("x-dialmark-event").unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(events(&global), ["call.started", "call.completed"]);
    assert_eq!(
        events(&site[2..]),
        ["call.started", "call.started", "call.completed"]
    );
    for h in &global {
        assert_signed(h, GLOBAL);
    }
    for h in &site {
        assert_signed(h, SITE);
        assert_eq!(doc(h)["site"], w.site.as_str());
    }
    assert_eq!(
        doc(&site[4])["call_id"],
        doc(&global[1])["call_id"],
        "the same call"
    );
    assert_eq!(site[4].body, global[1].body, "the same document");
    assert_eq!(doc(&site[4])["disposition"], "answered");
    assert_eq!(doc(&site[3])["source"]["utm_source"], "google");
}

/// Names of the trunks `/status.json` lists.
fn trunk_names(r: &TestRouter) -> Vec<String> {
    r.status()["trunks"]
        .as_array()
        .expect("trunks")
        .iter()
        .map(|t| t["name"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_swaps_trunks_without_dropping_calls_and_sigterm_drains() {
    let w = world("reload").await;
    let (pa, pb) = (free_port(), free_port());
    let _a = Uas::start(pa, Scenario::Builtin("uas"));
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("a", pa)],
            router: "",
            probe: "",
        },
    );
    // A 4 s call on trunk a, in progress while the config changes.
    let long = spawn_call(
        r.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &["-d", "4000"],
    );
    // Answered before the reload: its row is in ClickHouse from the answer
    // on (`ended = 0`), long before it ends.
    let db = dialmark_schemas::ch::client(&w.tracker.config.clickhouse);
    let mut answered = 0u64;
    for _ in 0..100 {
        answered = db
            .query("SELECT count() FROM calls WHERE number = ? AND ended = 0 AND toUInt32(answered) > 0")
            .bind(&w.number)
            .fetch_one()
            .await
            .unwrap();
        if answered > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answered, 1, "the call's answer row, before it ends");
    let path = r.config_path().to_path_buf();
    let text = std::fs::read_to_string(&path).unwrap();
    let swapped = text.replace(
        &format!("name = \"a\"\naddress = \"127.0.0.1:{pa}\""),
        &format!("name = \"b\"\naddress = \"127.0.0.1:{pb}\""),
    );
    assert_ne!(swapped, text, "the test's trunk table moved");
    std::fs::write(&path, &swapped).unwrap();
    r.signal("HUP");
    let mut names = Vec::new();
    for _ in 0..40 {
        names = trunk_names(&r);
        if names == ["b"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        names,
        ["b"],
        "trunk table after SIGHUP\n{}",
        r.proc.output()
    );
    let run = call(
        r.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &[],
    )
    .await;
    assert!(run.success, "a new call after the reload\n{}", run.output);
    let run = long.await.unwrap();
    assert!(
        run.success,
        "the call in progress survived the reload (its BYE went through trunk a)\n{}",
        run.output
    );

    // A file that does not load is refused; the running config stays.
    std::fs::write(&path, "[router]\nudp = 5\n").unwrap();
    r.signal("HUP");
    wait_for("the reload refused", 10, || {
        r.proc.output().contains("config reload refused")
    })
    .await;
    assert_eq!(trunk_names(&r), ["b"], "{}", r.proc.output());

    // SIGTERM: the call in progress ends normally, a new one gets 503,
    // every call is recorded, the router exits cleanly.
    let long = spawn_call(
        r.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &["-d", "3000"],
    );
    wait_for("the call in progress answered", 10, || {
        r.status()["active_calls"].as_u64() == Some(1)
    })
    .await;
    r.signal("TERM");
    wait_for("the router draining", 10, || {
        r.proc.output().contains("shutting down: draining calls")
    })
    .await;
    let run = call(r.sip_port, &w.number, expect(503), "127.0.0.1", &[]).await;
    assert!(
        run.success,
        "new calls are refused while draining\n{}",
        run.output
    );
    let run = long.await.unwrap();
    assert!(
        run.success,
        "the call in progress was let finish\n{}\n{}",
        run.output,
        r.proc.output()
    );
    let mut r = r;
    let status = r
        .proc
        .terminate(Duration::from_secs(10))
        .expect("router exits after draining");
    assert!(status.success(), "{}", r.proc.output());
    let rows = calls(&w, &w.number, 4).await;
    let mut seen: Vec<(&str, &str, u16)> = rows
        .iter()
        .map(|c| (c.disposition.as_str(), c.final_trunk.as_str(), c.final_code))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("answered", "a", 200),
            ("answered", "b", 200),
            ("answered", "b", 200),
            ("failed", "", 503)
        ],
        "the refused call is on record too: {rows:?}"
    );
}

/// A receiver that refuses a delivery (4xx) gets it once: it is moved to
/// the dead-letter file and counted, not retried.
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_refused_with_4xx_is_dead_lettered_not_retried() {
    let w = world("rhook4xx").await;
    let (hook_port, hooks) = dialmark_e2e::webhook::receiver_with(|_| 400);
    let pb = free_port();
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let extra = format!(
        "call_webhook = {{ url = \"http://127.0.0.1:{hook_port}/calls\", secret = \"test-secret-0123456789\" }}"
    );
    let r = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("b", pb)],
            router: &extra,
            probe: "",
        },
    );
    let run = call(
        r.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        "127.0.0.1",
        &["-d", "200"],
    )
    .await;
    assert!(run.success, "{}", run.output);
    let dead = r
        .spool_dir()
        .join("router/webhooks/global/dead-letter.jsonl");
    let lines = || {
        std::fs::read_to_string(&dead)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    wait_for("both refused events dead-lettered", 20, || lines() == 2).await;
    let text = std::fs::read_to_string(&dead).unwrap();
    assert!(
        text.contains(&w.session)
            && text.contains("call.started")
            && text.contains("call.completed"),
        "the events are kept: {text}"
    );
    // Past the first retry's backoff (1 s): no second attempt.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(hooks.lock().unwrap().len(), 2, "a 4xx is final");
    let metrics = ureq::get(&format!("http://127.0.0.1:{}/metrics", r.http_port))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("dialmark_call_webhooks_total{")
                && l.contains("destination=\"global\"")
                && l.contains("result=\"refused\"")
                && l.ends_with(" 2")),
        "{metrics}"
    );
}
