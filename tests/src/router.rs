//! A router binary under test, configured against the same Redis and
//! ClickHouse database as a test tracker, with SIPp trunks on given ports.

use std::process::Command;
use std::time::Duration;

use dialmark_schemas::config::Config;

use crate::process::{bin, free_port, Proc};

pub struct TestRouter {
    pub proc: Proc,
    pub sip_port: u16,
    pub http_port: u16,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn spawn(config: &std::path::Path, http_port: u16) -> Proc {
    let mut cmd = Command::new(bin("dialmark-router"));
    cmd.arg("--config").arg(config).env("RUST_LOG", "info");
    let mut proc = Proc::spawn("router", cmd);
    let healthy = || {
        ureq::get(&format!("http://127.0.0.1:{http_port}/healthz"))
            .call()
            .is_ok_and(|r| r.status() == 200)
    };
    let start = std::time::Instant::now();
    while !healthy() {
        assert!(proc.alive(), "router exited:\n{}", proc.output());
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "router not ready:\n{}",
            proc.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    proc
}

/// Router settings a test may change.
pub struct RouterOptions<'a> {
    pub trunks: &'a [(&'a str, u16)],
    /// Lines appended to `[router]`.
    pub router: &'a str,
    /// Lines of `[router.probe]`; probing is off unless set.
    pub probe: &'a str,
}

impl TestRouter {
    pub fn start(tracker: &Config, opts: RouterOptions<'_>) -> TestRouter {
        let dir = tempfile::tempdir().expect("tempdir");
        let sip_port = free_port();
        let http_port = free_port();
        let mut trunks = String::new();
        for (i, (name, port)) in opts.trunks.iter().enumerate() {
            trunks.push_str(&format!(
                "[[router.trunks]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\npriority = {i}\n"
            ));
        }
        let probe = if opts.probe.is_empty() {
            "interval_seconds = 0"
        } else {
            opts.probe
        };
        let text = format!(
            "[redis]\nurl = \"{redis}\"\n[clickhouse]\nurl = \"{ch}\"\ndatabase = \"{db}\"\n[sink]\nflush_ms = 200\nspool_dir = \"{spool}\"\n\
             [tracker]\nattribution_window_seconds = {win}\n\
             [router]\nudp = \"127.0.0.1:{sip_port}\"\ntcp = \"127.0.0.1:{sip_port}\"\nhttp = \"127.0.0.1:{http_port}\"\n\
             trusted_sources = [\"127.0.0.1/32\"]\nprovisional_timeout_ms = 1000\noverall_timeout_seconds = 20\n{router}\n\
             [router.probe]\n{probe}\n{trunks}",
            redis = tracker.redis.url,
            ch = tracker.clickhouse.url,
            db = tracker.clickhouse.database,
            win = tracker.tracker.attribution_window_seconds,
            router = opts.router,
            spool = dir.path().join("spool").display(),
        );
        let path = dir.path().join("router.toml");
        std::fs::write(&path, text).expect("write router config");
        let proc = spawn(&path, http_port);
        TestRouter {
            proc,
            sip_port,
            http_port,
            config: path,
            _dir: dir,
        }
    }

    /// The second node of a pair (`[router.ha]` on): this one's config
    /// with its own HTTP port and spool, on the same SIP address. It
    /// answers `/healthz` as a standby until it holds the lease.
    pub fn standby(&self) -> TestRouter {
        let dir = tempfile::tempdir().expect("tempdir");
        let http_port = free_port();
        let text = std::fs::read_to_string(&self.config)
            .expect("router config")
            .replace(
                &format!("http = \"127.0.0.1:{}\"", self.http_port),
                &format!("http = \"127.0.0.1:{http_port}\""),
            )
            .replace(
                &self.spool_dir().display().to_string(),
                &dir.path().join("spool").display().to_string(),
            );
        let path = dir.path().join("router.toml");
        std::fs::write(&path, text).expect("write router config");
        let proc = spawn(&path, http_port);
        TestRouter {
            proc,
            sip_port: self.sip_port,
            http_port,
            config: path,
            _dir: dir,
        }
    }

    /// Starts the router again on the same config (and spool), e.g. after
    /// it was killed.
    pub fn restart(&mut self) {
        self.proc = spawn(&self.config, self.http_port);
    }

    /// Samples of the metric family `name` from `/metrics`: (series with
    /// labels, value).
    pub fn metric(&self, name: &str) -> Vec<(String, f64)> {
        self.try_metric(name).expect("router /metrics")
    }

    /// [`Self::metric`], `None` when `/metrics` does not answer (a node
    /// being killed or taking over).
    pub fn try_metric(&self, name: &str) -> Option<Vec<(String, f64)>> {
        let text = ureq::get(&format!("http://127.0.0.1:{}/metrics", self.http_port))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The router's sink spool directory (`sink.spool_dir`).
    pub fn spool_dir(&self) -> std::path::PathBuf {
        self._dir.path().join("spool")
    }

    /// The config file the router runs with (a test may rewrite it and
    /// send SIGHUP).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the router.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.proc.pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} failed");
    }

    /// `/status.json`: trunks and active calls.
    pub fn status(&self) -> serde_json::Value {
        ureq::get(&format!("http://127.0.0.1:{}/status.json", self.http_port))
            .call()
            .expect("router /status.json")
            .body_mut()
            .read_json()
            .expect("status json")
    }

    /// The state `/status.json` shows for trunk `name` (`up`, `degraded`…;
    /// empty if it is not listed).
    pub fn trunk_state(&self, name: &str) -> String {
        self.status()["trunks"]
            .as_array()
            .and_then(|t| t.iter().find(|x| x["name"] == name))
            .map(|x| x["state"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    }
}
