//! SIPp as the carrier and as trunks (Debian `sip-tester`): scenario files
//! live in `tests/fixtures/sipp/`; `CODE`/`REASON` placeholders are filled
//! in per test.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::Proc;

/// A scenario: SIPp's built-in one, or a fixture file with substitutions.
pub enum Scenario {
    Builtin(&'static str),
    File(&'static str, Vec<(&'static str, String)>),
}

impl Scenario {
    fn args(&self, dir: &std::path::Path) -> Vec<String> {
        match self {
            Scenario::Builtin(name) => vec!["-sn".into(), (*name).into()],
            Scenario::File(file, subst) => {
                let src = crate::env::repo_root()
                    .join("tests/fixtures/sipp")
                    .join(file);
                let mut text = std::fs::read_to_string(&src)
                    .unwrap_or_else(|e| panic!("{}: {e}", src.display()));
                for (k, v) in subst {
                    text = text.replace(k, v);
                }
                let path: PathBuf = dir.join(format!("{}-{file}", uuid::Uuid::new_v4().simple()));
                std::fs::write(&path, text).expect("write scenario");
                vec!["-sf".into(), path.display().to_string()]
            }
        }
    }
}

/// A SIPp process answering on a loopback port (a trunk), killed on drop.
pub struct Uas {
    pub port: u16,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Uas {
    pub fn start(port: u16, scenario: Scenario) -> Uas {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("sipp");
        cmd.current_dir(dir.path())
            .args(scenario.args(dir.path()))
            // -aa: answer OPTIONS probes with 200, like a live trunk's SIP stack.
            .args([
                "-i",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-nostdin",
                "-bind_local",
                "-aa",
            ]);
        let mut proc = Proc::spawn(&format!("sipp-uas-{port}"), cmd);
        crate::process::wait_until(
            &format!("SIPp listening on {port}"),
            Duration::from_secs(10),
            || {
                assert!(proc.alive(), "sipp exited:\n{}", proc.output());
                crate::process::udp_bound(port)
            },
        );
        Uas {
            port,
            _proc: proc,
            _dir: dir,
        }
    }
}

/// Result of a carrier run.
pub struct UacRun {
    pub success: bool,
    pub output: String,
}

/// Places `calls` calls to `number` through the router at `router_port`
/// from `local_ip` and waits for SIPp to finish (bounded).
pub fn uac(
    router_port: u16,
    number: &str,
    scenario: Scenario,
    local_ip: &str,
    calls: u32,
    extra: &[&str],
) -> UacRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = crate::process::free_port();
    let mut cmd = Command::new("sipp");
    cmd.current_dir(dir.path())
        .arg(format!("127.0.0.1:{router_port}"))
        .args(scenario.args(dir.path()))
        .args(["-s", number, "-i", local_ip, "-p", &port.to_string()])
        .args([
            "-m",
            &calls.to_string(),
            "-nostdin",
            "-timeout",
            "30s",
            "-timeout_error",
            "-bind_local",
        ])
        .args(extra);
    let mut p = Proc::spawn(&format!("sipp-uac-{port}"), cmd);
    let started = Instant::now();
    while p.alive() && started.elapsed() < Duration::from_secs(40) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = p.terminate(Duration::from_secs(2));
    UacRun {
        success: status.is_some_and(|s| s.success()),
        output: p.output(),
    }
}

impl UacRun {
    /// The "Successful call" total of SIPp's final statistics.
    pub fn successful(&self) -> u64 {
        self.output
            .lines()
            .rev()
            .filter(|l| l.trim_start().starts_with("Successful call"))
            .find_map(|l| l.split('|').nth(2).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }
}
