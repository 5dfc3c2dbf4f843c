//! NOC routing over real SIPp trunks: a trunk that refuses real calls
//! while nothing else is wrong with it is degraded by its NER (new calls go
//! to the next trunk first, a probing share still tries it), restored once
//! its share answers again, and each change is a `trunk_events` row with
//! the numbers and an alert; an operator drains and resumes a trunk by the
//! HTTP API and the CLI, audited with their name.

use std::time::Duration;

use dialmark_e2e::process::{bin, free_port};
use dialmark_e2e::router::{RouterOptions, TestRouter};
use dialmark_e2e::sipp::{self, Scenario, Uas};
use dialmark_e2e::world::{place_calls, reject, wait_for, world, World};

#[derive(clickhouse::Row, serde::Deserialize, Debug)]
struct Event {
    trunk: String,
    state: String,
    previous: String,
    cause: String,
    metric: String,
    value: f64,
    baseline: f64,
    shifted_calls: u64,
    actor: String,
    reason: String,
}

async fn events(w: &World) -> Vec<Event> {
    dialmark_schemas::ch::client(&w.tracker.config.clickhouse)
        .query(
            "SELECT trunk, toString(state), toString(previous), toString(cause), metric, value, \
             baseline, shifted_calls, actor, reason FROM trunk_events FINAL ORDER BY ts, event_id",
        )
        .fetch_all()
        .await
        .unwrap()
}

/// Waits for a trunk event matching `f`.
async fn event_where(w: &World, what: &str, f: impl Fn(&Event) -> bool) -> Event {
    for _ in 0..150 {
        if let Some(e) = events(w).await.into_iter().find(&f) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no trunk event: {what}; have {:#?}", events(w).await);
}

/// Attempts on `trunk` of the number's finished calls, and those calls.
async fn attempts_on(w: &World, trunk: &str) -> (u64, u64) {
    dialmark_schemas::ch::client(&w.tracker.config.clickhouse)
        .query(
            "SELECT countIf(trunk = ?), uniqExact(call_id) FROM call_attempts FINAL \
             WHERE call_id IN (SELECT call_id FROM calls WHERE number = ? AND ended != 0)",
        )
        .bind(trunk)
        .bind(&w.number)
        .fetch_one()
        .await
        .unwrap()
}

async fn place(r: &TestRouter, w: &World, calls: u32, rate: &str) -> sipp::UacRun {
    let run = place_calls(
        r.sip_port,
        &w.number,
        Scenario::Builtin("uac"),
        calls,
        &["-r", rate],
    )
    .await;
    assert!(
        run.success,
        "every call is answered (by b if not by a): {}",
        run.output
    );
    run
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trunk_failing_calls_is_rerouted_by_its_ner_and_restored() {
    let w = world("qner").await;
    let (hook_port, hooks) = dialmark_e2e::webhook::receiver();
    let (pa, pb) = (free_port(), free_port());
    let a = Uas::start(pa, reject(503, "Service Unavailable"));
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let router = format!(
        "alert_webhook = \"http://127.0.0.1:{hook_port}/alert\"\nalert_hold_down_seconds = 1\n\
         [router.quality]\nwindow_seconds = 10\nmin_attempts = 10\nrecovery_seconds = 10\nprobe_percent = 20"
    );
    let r = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("a", pa), ("b", pb)],
            router: &router,
            probe: "",
        },
    );

    // a answers every call with 503: b carries them, a's NER is 0.
    place(&r, &w, 20, "10").await;
    let down = event_where(&w, "a degraded", |e| {
        e.trunk == "a" && e.state == "degraded"
    })
    .await;
    assert_eq!(
        (
            down.previous.as_str(),
            down.cause.as_str(),
            down.metric.as_str()
        ),
        ("up", "quality", "ner")
    );
    assert!(down.value < 0.1 && down.baseline == 0.7, "{down:?}");
    assert!(down.reason.contains("under the 70 % floor"), "{down:?}");
    assert_eq!(r.trunk_state("a"), "degraded");
    // The status page lists the event and draws a's last hour: its NER
    // sparkline ends at 0 %.
    let status = r.status();
    let listed = status["recent_trunk_events"].to_string();
    assert!(
        listed.contains("a: up → degraded (quality) NER"),
        "{listed}"
    );
    let shown = status["trunks"]
        .as_array()
        .and_then(|t| t.iter().find(|x| x["name"] == "a"))
        .cloned()
        .unwrap_or_default();
    let hist = shown["history"].as_array().cloned().unwrap_or_default();
    assert_eq!(hist.len(), 60, "{shown}");
    let attempts: u64 = hist.iter().filter_map(|p| p["attempts"].as_u64()).sum();
    assert!(
        attempts >= 10,
        "the hour holds the attempts judged: {shown}"
    );
    let svg = shown["history_svg"].as_str().unwrap_or_default();
    assert!(
        svg.contains("data-metric=\"ner\"") && svg.contains("NER 0%"),
        "{svg}"
    );
    assert!(
        r.metric("dialmark_trunk_degraded{trunk=\"a\"}")
            .iter()
            .any(|(_, v)| *v == 1.0),
        "degraded gauge"
    );
    wait_for("degraded alert", 10, || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.body.contains("DialmarkTrunkDegraded") && !b.body.contains("endsAt"))
    })
    .await;

    // Degraded: b goes first; a keeps one call in five.
    let (before, calls_before) = attempts_on(&w, "a").await;
    place(&r, &w, 40, "10").await;
    let mut after = (0, 0);
    for _ in 0..50 {
        after = attempts_on(&w, "a").await;
        if after.1 >= calls_before + 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let probed = after.0 - before;
    assert!(
        (4..=12).contains(&probed),
        "{probed} of 40 calls tried a first (probe share 20 %)"
    );

    // a answers again: its probing share looks good for the recovery window.
    drop(a);
    let _a2 = Uas::start(pa, Scenario::Builtin("uas"));
    let mut up = None;
    for _ in 0..8 {
        place(&r, &w, 20, "5").await;
        if let Some(e) = events(&w)
            .await
            .into_iter()
            .find(|e| e.trunk == "a" && e.previous == "degraded")
        {
            up = Some(e);
            break;
        }
    }
    let up = up.expect("a restored after its calls were answered again");
    assert_eq!((up.state.as_str(), up.cause.as_str()), ("up", "quality"));
    assert!(up.reason.starts_with("recovered"), "{up:?}");
    assert!(
        up.shifted_calls >= 28,
        "the calls that went to b first are counted: {up:?}"
    );
    wait_for("a up on /status", 10, || r.trunk_state("a") == "up").await;
    wait_for("recovery alert", 10, || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.body.contains("DialmarkTrunkDegraded") && b.body.contains("endsAt"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_drains_and_resumes_a_trunk_on_record() {
    let w = world("qdrain").await;
    let (pa, pb) = (free_port(), free_port());
    let _a = Uas::start(pa, Scenario::Builtin("uas"));
    let _b = Uas::start(pb, Scenario::Builtin("uas"));
    let r = TestRouter::start(
        &w.tracker.config,
        RouterOptions {
            trunks: &[("a", pa), ("b", pb)],
            router: "",
            probe: "",
        },
    );
    let post = |path: &str| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .post(&format!("http://127.0.0.1:{}{path}", r.http_port))
            .send_empty()
            .unwrap();
        (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap(),
        )
    };
    // Bad commands are refused with the reason.
    let (code, text) = post("/trunks/zz/drain?actor=anna");
    assert_eq!((code, text.trim()), (404, "no trunk named \"zz\""));
    let (code, text) = post("/trunks/a/explode?actor=anna");
    assert_eq!(code, 400);
    assert!(text.contains("unknown trunk command"), "{text}");
    let (code, text) = post("/trunks/a/drain");
    assert_eq!(code, 400);
    assert!(text.contains("actor"), "{text}");

    let (code, text) = post("/trunks/a/drain?actor=anna");
    assert_eq!((code, text.trim()), (200, "a: drained (drained by anna)"));
    assert_eq!(r.trunk_state("a"), "drained");
    place(&r, &w, 10, "10").await;
    let mut seen = (0, 0);
    for _ in 0..50 {
        seen = attempts_on(&w, "a").await;
        if seen.1 >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seen, (0, 10), "a drained trunk gets no new call");

    // The CLI, as a NOC engineer types it on the node.
    let out = std::process::Command::new(bin("dialmark-router"))
        .args(["--config"])
        .arg(r.config_path())
        .args(["trunk", "a", "resume", "--actor", "boris"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "a: up");
    let bad = std::process::Command::new(bin("dialmark-router"))
        .args(["--config"])
        .arg(r.config_path())
        .args(["trunk", "a", "weight=0", "--actor", "boris"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("400"),
        "{bad:?}"
    );
    assert_eq!(r.trunk_state("a"), "up");

    let drained = event_where(&w, "drain", |e| e.state == "drained").await;
    assert_eq!(
        (
            drained.trunk.as_str(),
            drained.previous.as_str(),
            drained.cause.as_str(),
            drained.actor.as_str()
        ),
        ("a", "up", "manual", "anna")
    );
    let resumed = event_where(&w, "resume", |e| e.previous == "drained").await;
    assert_eq!(
        (
            resumed.state.as_str(),
            resumed.actor.as_str(),
            resumed.shifted_calls
        ),
        ("up", "boris", 10)
    );
}
