//! Service start-up: both binaries refuse a bad config naming the field,
//! start against the real Redis and ClickHouse, migrate, answer health
//! checks, and stop cleanly on SIGTERM.

use std::process::Command;
use std::time::Duration;

use dialmark_e2e::process::{bin, wait_until, Proc};
use dialmark_e2e::stack::StackConfig;

fn healthy(port: u16) -> bool {
    ureq::get(&format!("http://127.0.0.1:{port}/healthz"))
        .call()
        .is_ok_and(|r| r.status() == 200)
}

#[test]
fn bad_config_fails_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[router]\nreject_code = 500\n").unwrap();
    for b in ["dialmark-tracker", "dialmark-router"] {
        let out = Command::new(bin(b))
            .arg("--config")
            .arg(&path)
            .arg("check-config")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{b} accepted a bad config");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("router.reject_code"), "{b}: {err}");
    }
    std::fs::write(&path, "[tracker]\nlisten = 5\n").unwrap();
    let out = Command::new(bin("dialmark-tracker"))
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));
}

#[test]
fn example_config_passes_check() {
    let example = dialmark_e2e::env::repo_root().join("ops/dialmark.example.toml");
    for b in ["dialmark-tracker", "dialmark-router"] {
        let out = Command::new(bin(b))
            .arg("--config")
            .arg(&example)
            .arg("check-config")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{b}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn services_start_migrate_and_stop() {
    let stack = StackConfig::new("startup");
    let dir = tempfile::tempdir().unwrap();
    let cfg = stack.write(dir.path());

    let mut tracker = {
        let mut c = Command::new(bin("dialmark-tracker"));
        c.arg("--config").arg(&cfg).arg("serve");
        Proc::spawn("tracker", c)
    };
    let port = stack.tracker_port;
    tokio::task::spawn_blocking(move || {
        wait_until("tracker /healthz", Duration::from_secs(20), || {
            healthy(port)
        })
    })
    .await
    .unwrap_or_else(|_| panic!("tracker did not start:\n{}", tracker.output()));

    let mut router = {
        let mut c = Command::new(bin("dialmark-router"));
        c.arg("--config").arg(&cfg);
        Proc::spawn("router", c)
    };
    let port = stack.router_http_port;
    tokio::task::spawn_blocking(move || {
        wait_until("router /healthz", Duration::from_secs(20), || healthy(port))
    })
    .await
    .unwrap_or_else(|_| panic!("router did not start:\n{}", router.output()));

    let db = dialmark_schemas::ch::client(&stack.clickhouse);
    let versions: u64 = db
        .query("SELECT count() FROM (SELECT DISTINCT version FROM schema_migrations)")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        versions as usize,
        dialmark_schemas::migrate::MIGRATIONS.len()
    );

    for p in [&mut tracker, &mut router] {
        let st = p
            .terminate(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{} ignored SIGTERM", p.name));
        assert!(st.success(), "{} exited with {st}: {}", p.name, p.output());
    }
    dialmark_schemas::ch::server_client(&stack.clickhouse)
        .query(&format!("DROP DATABASE {}", stack.clickhouse.database))
        .execute()
        .await
        .unwrap();
}

/// `ops/up` after real use (issue #24): its steps (migrate, `admin apply`
/// of the demo inventory) run again after a demo number was retired. The
/// second apply goes on, reports the number, and leaves it in quarantine.
#[tokio::test(flavor = "multi_thread")]
async fn the_demo_inventory_applies_again_after_a_number_is_retired() {
    let mut stack = StackConfig::new("reapply");
    // The demo's fixed numbers, in a Redis database no other test uses.
    stack.redis_url = match stack.redis_url.rsplit_once('/') {
        Some((head, db)) if db.chars().all(|c| c.is_ascii_digit()) => format!("{head}/9"),
        _ => format!("{}/9", stack.redis_url),
    };
    let mut con = redis::Client::open(stack.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = stack.write(dir.path());
    let demo = dialmark_e2e::env::repo_root().join("ops/demo-inventory.toml");
    let tracker = |args: &[&str]| {
        let out = Command::new(bin("dialmark-tracker"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?} failed: {text}");
        text
    };
    let demo = demo.to_str().unwrap();
    for round in 0..2 {
        tracker(&["migrate"]);
        let applied = tracker(&["admin", "apply", demo]);
        assert!(
            !applied.contains("skipped"),
            "round {round}: nothing to skip yet: {applied}"
        );
    }
    tracker(&["admin", "retire", "+74950000020"]);
    tracker(&["migrate"]);
    let applied = tracker(&["admin", "apply", demo]);
    assert!(
        applied.contains("skipped 1: +74950000020 is in quarantine"),
        "{applied}"
    );
    let shown = tracker(&["admin", "show", "+74950000020"]);
    assert!(shown.contains("\"quarantine\""), "{shown}");
    dialmark_schemas::ch::server_client(&stack.clickhouse)
        .query(&format!("DROP DATABASE {}", stack.clickhouse.database))
        .execute()
        .await
        .unwrap();
}
