//! The alert webhook: each trunk state change is POSTed as an
//! Alertmanager-compatible JSON array (`startsAt` for a trunk going down,
//! `endsAt` when it comes back), retried with backoff, off the routing loop.

use std::time::Duration;

use tracing::{info, warn};

/// Attempts per notification.
const TRIES: u32 = 4;

#[derive(Clone)]
pub struct Alerter {
    url: Option<String>,
}

impl Alerter {
    pub fn new(url: Option<String>) -> Self {
        Self { url }
    }

    /// The Alertmanager payload for a trunk state change.
    pub fn payload(
        trunk: &str,
        group: &str,
        up: bool,
        reason: &str,
        now: &str,
    ) -> serde_json::Value {
        let mut alert = serde_json::json!({
            "labels": {
                "alertname": "DialmarkTrunkDown",
                "severity": "critical",
                "trunk": trunk,
                "trunk_group": group,
                "service": "dialmark-router",
            },
            "annotations": {
                "summary": format!("trunk {trunk} is {}", if up { "up again" } else { "down" }),
                "description": reason,
            },
            "startsAt": now,
        });
        if up {
            alert["endsAt"] = serde_json::Value::String(now.to_string());
        }
        serde_json::json!([alert])
    }

    /// Sends the notification in the background.
    pub fn trunk_changed(&self, trunk: &str, group: &str, up: bool, reason: &str) {
        let Some(url) = self.url.clone() else { return };
        let body = Self::payload(trunk, group, up, reason, &rfc3339_now()).to_string();
        let trunk = trunk.to_string();
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
    rfc3339(secs)
}

/// Unix seconds as RFC 3339 UTC (civil-from-days, Howard Hinnant).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn payload_shape() {
        let down = Alerter::payload("a", "default", false, "3 failures", "t");
        assert_eq!(down[0]["labels"]["alertname"], "DialmarkTrunkDown");
        assert_eq!(down[0]["labels"]["trunk"], "a");
        assert!(down[0].get("endsAt").is_none());
        let up = Alerter::payload("a", "default", true, "ok", "t");
        assert_eq!(up[0]["endsAt"], "t");
    }
}
