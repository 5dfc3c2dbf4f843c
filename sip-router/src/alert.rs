//! The alert webhook: a trunk going down (or degraded by its call
//! quality) is POSTed as an Alertmanager-compatible JSON array
//! (`startsAt`), its recovery as the same alert with `endsAt`, retried with
//! backoff, off the routing loop. Flapping is held down: a recovery is sent
//! only after the trunk stayed well for the hold-down time, and a trunk
//! that fails again within it sends nothing new (its alert is still
//! firing).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

/// Attempts per notification.
const TRIES: u32 = 4;

/// Per-trunk flapping state: pure, driven by [`Alerter`].
#[derive(Debug, Default)]
pub struct HoldDown {
    /// trunk → (changes seen, a down alert is firing)
    trunks: HashMap<String, (u64, bool)>,
}

/// What to send for a state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    SendDown,
    /// Send the recovery if nothing changed until the hold-down ends;
    /// the value identifies this change.
    ResolveLater(u64),
    Nothing,
}

impl HoldDown {
    pub fn changed(&mut self, trunk: &str, up: bool) -> Notice {
        let e = self.trunks.entry(trunk.to_string()).or_default();
        e.0 += 1;
        match (up, e.1) {
            (false, false) => {
                e.1 = true;
                Notice::SendDown
            }
            (false, true) => Notice::Nothing, // flapped back down: still firing
            (true, true) => Notice::ResolveLater(e.0),
            (true, false) => Notice::Nothing,
        }
    }

    /// A down alert another node sent is firing for `trunk` (a pair's
    /// takeover): no new one, and its recovery is sent as usual.
    pub fn assume_firing(&mut self, trunk: &str) {
        self.trunks.entry(trunk.to_string()).or_default().1 = true;
    }

    /// The hold-down of change `id` ended: send the recovery?
    pub fn settle(&mut self, trunk: &str, id: u64) -> bool {
        match self.trunks.get_mut(trunk) {
            Some(e) if e.0 == id && e.1 => {
                e.1 = false;
                true
            }
            _ => false,
        }
    }
}

/// The alerts the node raises about a trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alert {
    /// Probes or calls found it dead: calls skip it.
    Down,
    /// It answers OPTIONS but fails real calls: calls try others first.
    Degraded,
}

impl Alert {
    fn name(self) -> &'static str {
        match self {
            Alert::Down => "DialmarkTrunkDown",
            Alert::Degraded => "DialmarkTrunkDegraded",
        }
    }

    fn severity(self) -> &'static str {
        match self {
            Alert::Down => "critical",
            Alert::Degraded => "warning",
        }
    }

    fn summary(self, trunk: &str, firing: bool) -> String {
        match (self, firing) {
            (Alert::Down, true) => format!("trunk {trunk} is down"),
            (Alert::Down, false) => format!("trunk {trunk} is up again"),
            (Alert::Degraded, true) => {
                format!("trunk {trunk} is failing calls: new calls go to other trunks first")
            }
            (Alert::Degraded, false) => format!("trunk {trunk} carries calls well again"),
        }
    }
}

#[derive(Clone)]
pub struct Alerter {
    url: Option<String>,
    hold_down: Duration,
    state: Arc<Mutex<HoldDown>>,
}

impl Alerter {
    pub fn new(url: Option<String>, hold_down: Duration) -> Self {
        Self {
            url,
            hold_down,
            state: Arc::default(),
        }
    }

    /// The Alertmanager payload for a trunk's alert firing or resolved.
    pub fn payload(
        alert: Alert,
        trunk: &str,
        group: &str,
        firing: bool,
        reason: &str,
        now: &str,
    ) -> serde_json::Value {
        let mut a = serde_json::json!({
            "labels": {
                "alertname": alert.name(),
                "severity": alert.severity(),
                "trunk": trunk,
                "trunk_group": group,
                "service": "dialmark-router",
            },
            "annotations": {
                "summary": alert.summary(trunk, firing),
                "description": reason,
            },
            "startsAt": now,
        });
        if !firing {
            a["endsAt"] = serde_json::Value::String(now.to_string());
        }
        serde_json::json!([a])
    }

    /// Notifies that `alert` fires or is resolved for a trunk (in the
    /// background, held down when flapping).
    pub fn trunk_changed(
        &self,
        alert: Alert,
        trunk: &str,
        group: &str,
        firing: bool,
        reason: &str,
    ) {
        let Some(url) = self.url.clone() else { return };
        let key = format!("{trunk}/{}", alert.name());
        let notice = self
            .state
            .lock()
            .expect("alert state")
            .changed(&key, !firing);
        let (trunk, group, reason) = (trunk.to_string(), group.to_string(), reason.to_string());
        match notice {
            Notice::Nothing => {}
            Notice::SendDown => Self::post(
                url,
                Self::payload(alert, &trunk, &group, true, &reason, &rfc3339_now()).to_string(),
                trunk,
            ),
            Notice::ResolveLater(id) => {
                let (state, hold) = (self.state.clone(), self.hold_down);
                tokio::spawn(async move {
                    tokio::time::sleep(hold).await;
                    if state.lock().expect("alert state").settle(&key, id) {
                        let body =
                            Self::payload(alert, &trunk, &group, false, &reason, &rfc3339_now())
                                .to_string();
                        Self::post(url, body, trunk);
                    }
                });
            }
        }
    }

    /// See [`HoldDown::assume_firing`].
    pub fn assume_firing(&self, alert: Alert, trunk: &str) {
        self.state
            .lock()
            .expect("alert state")
            .assume_firing(&format!("{trunk}/{}", alert.name()));
    }

    fn post(url: String, body: String, trunk: String) {
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .http_status_as_error(false)
                .build()
                .into();
            let mut backoff = Duration::from_millis(500);
            for attempt in 1..=TRIES {
                match agent
                    .post(&url)
                    .header("content-type", "application/json")
                    .send(&body)
                {
                    Ok(r) if r.status().is_success() => {
                        info!(trunk.name = %trunk, "alert webhook delivered");
                        metrics::counter!("dialmark_alerts_sent_total").increment(1);
                        return;
                    }
                    Ok(r) => {
                        warn!(trunk.name = %trunk, status = r.status().as_u16(), attempt, "alert webhook refused")
                    }
                    Err(e) => {
                        warn!(trunk.name = %trunk, cause = %e, attempt, "alert webhook failed")
                    }
                }
                std::thread::sleep(backoff);
                backoff *= 2;
            }
            metrics::counter!("dialmark_alerts_failed_total").increment(1);
            tracing::error!(trunk.name = %trunk, "alert webhook gave up");
        });
    }
}

/// Current UTC time as RFC 3339 (`2026-11-23T10:00:00Z`).
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    dialmark_schemas::rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flapping_is_held_down() {
        let mut h = HoldDown::default();
        assert_eq!(h.changed("a", false), Notice::SendDown);
        let Notice::ResolveLater(first) = h.changed("a", true) else {
            panic!()
        };
        // Down again before the hold-down ended: nothing new, still firing.
        assert_eq!(h.changed("a", false), Notice::Nothing);
        assert!(!h.settle("a", first), "the first recovery is void");
        let Notice::ResolveLater(second) = h.changed("a", true) else {
            panic!()
        };
        assert!(h.settle("a", second), "stayed up: resolved once");
        assert!(!h.settle("a", second));
        assert_eq!(
            h.changed("a", false),
            Notice::SendDown,
            "a later outage fires again"
        );
        assert_eq!(
            h.changed("b", true),
            Notice::Nothing,
            "up without a firing alert"
        );
    }

    #[test]
    fn payload_shape() {
        let down = Alerter::payload(Alert::Down, "a", "default", true, "3 failures", "t");
        assert_eq!(down[0]["labels"]["alertname"], "DialmarkTrunkDown");
        assert_eq!(down[0]["labels"]["trunk"], "a");
        assert!(down[0].get("endsAt").is_none());
        let up = Alerter::payload(Alert::Down, "a", "default", false, "ok", "t");
        assert_eq!(up[0]["endsAt"], "t");
        let bad = Alerter::payload(Alert::Degraded, "a", "default", true, "NER 40 %", "t");
        assert_eq!(bad[0]["labels"]["alertname"], "DialmarkTrunkDegraded");
        assert_eq!(bad[0]["labels"]["severity"], "warning");
        assert_eq!(bad[0]["annotations"]["description"], "NER 40 %");
    }

    #[test]
    fn a_taken_over_alert_is_not_sent_again_and_resolves() {
        let mut h = HoldDown::default();
        h.assume_firing("a/TrunkDown");
        assert_eq!(h.changed("a/TrunkDown", false), Notice::Nothing);
        assert!(matches!(
            h.changed("a/TrunkDown", true),
            Notice::ResolveLater(_)
        ));
    }
}
