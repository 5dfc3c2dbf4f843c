//! The completed-call webhook: every call record, once ClickHouse holds
//! it, is POSTed to the client's receiver as JSON signed with HMAC-SHA256.
//!
//! The `calls` sink hands acknowledged rows to this module's outbox (a
//! spool of its own, see [`dialmark_schemas::sink::Outbox`]), so a call is
//! announced only after its row is final, and nothing is lost while the
//! receiver is down or the router restarts: deliveries go in order, one at
//! a time, retried with exponential backoff until the receiver answers 2xx.
//! A receiver that refuses a delivery for good (a 4xx other than 408/425/
//! 429) gets it moved to a dead-letter file so later calls still flow.
//! Delivery is at least once: receivers dedupe on `X-Dialmark-Delivery`.
//!
//! Signature: `X-Dialmark-Signature: t=UNIX,v1=HEX` where HEX is
//! HMAC-SHA256(secret, "UNIX." + body); receivers recompute it and refuse
//! old timestamps to stop replays.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dialmark_schemas::config::CallWebhookConfig;
use dialmark_schemas::digest::hmac_sha256_hex;
use dialmark_schemas::rows::Call;
use dialmark_schemas::sink::Outbox;
use dialmark_schemas::spool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::alert::rfc3339;

/// What a receiver's answer means for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again later (transport error, timeout, 5xx, 408/425/429).
    Retry,
    /// Refused for good: dead-letter it.
    Refused,
}

/// `status` is `None` when no HTTP answer arrived.
pub fn verdict(status: Option<u16>) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Delivered,
        Some(408 | 425 | 429) | None => Verdict::Retry,
        Some(400..=499) => Verdict::Refused,
        Some(_) => Verdict::Retry,
    }
}

/// Wait before retry number `failures` (1, 2, …): 1 s doubling, capped.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(20)).min(max)
}

/// `t=UNIX,v1=HEX` for `body` sent at `unix`.
pub fn signature(secret: &[u8], unix: u64, body: &[u8]) -> String {
    let hex = hmac_sha256_hex(secret, &[unix.to_string().as_bytes(), b".", body]);
    format!("t={unix},v1={hex}")
}

/// The JSON document of a completed call (documented in README).
pub fn payload(c: &Call) -> serde_json::Value {
    let time = |t: u32| (t > 0).then(|| rfc3339(t.into()));
    let first_touch = serde_json::json!({
        "ts": time(c.first_touch_ts),
        "channel": c.first_channel,
        "utm_source": c.first_utm_source,
        "utm_medium": c.first_utm_medium,
        "utm_campaign": c.first_utm_campaign,
    });
    serde_json::json!({
        "event": "call.completed",
        "call_id": c.call_id.to_string(),
        "sip_call_id": c.sip_call_id,
        "received": time(c.received),
        "answered": time(c.answered),
        "ended": time(c.ended),
        "ring_ms": c.ring_ms,
        "talk_ms": c.talk_ms,
        "caller": c.caller,
        "number": c.number,
        "number_status": c.number_status.as_str(),
        "site": c.site,
        "pool": c.pool,
        "disposition": c.disposition.as_str(),
        "final_code": c.final_code,
        "attempts": c.attempts,
        "final_trunk": c.final_trunk,
        "destination": c.destination,
        "attribution": c.attribution.as_str(),
        "attribution_confidence": c.attribution_confidence.as_str(),
        "session_id": c.session_id,
        "visitor_id": c.visitor_id,
        "source": {
            "channel": c.channel,
            "label": c.source_label,
            "utm_source": c.utm_source,
            "utm_medium": c.utm_medium,
            "utm_campaign": c.utm_campaign,
            "utm_term": c.utm_term,
            "utm_content": c.utm_content,
            "gclid": c.gclid,
            "yclid": c.yclid,
            "gbraid": c.gbraid,
            "wbraid": c.wbraid,
            "fbclid": c.fbclid,
            "msclkid": c.msclkid,
            "ym_uid": c.ym_uid,
            "touch_ts": time(c.touch_ts),
            "referrer": c.referrer,
            "landing_url": c.landing_url,
            "first_touch": first_touch,
        },
        "geo": { "country": c.country, "region": c.region, "city": c.city },
    })
}

/// Opens the outbox spool under `spool_dir/router/call_webhook` and starts
/// its delivery task. The task ends after the outbox (handed to the calls
/// sink) is dropped and a last delivery attempt was made.
pub fn start(
    cfg: &CallWebhookConfig,
    spool_dir: &Path,
    fsync: spool::Fsync,
) -> std::io::Result<Option<(Outbox, JoinHandle<()>)>> {
    let Some(url) = cfg.url.clone() else {
        return Ok(None);
    };
    let dir = spool_dir.join("router").join("call_webhook");
    let writer = spool::Writer::open(&dir, fsync, Duration::ZERO)?;
    let reader = spool::Reader::open(&dir)?;
    let (wake, rx) = mpsc::channel(1);
    let task = Delivery {
        url,
        secret: cfg.secret.clone().into_bytes(),
        timeout: Duration::from_millis(cfg.timeout_ms),
        max_backoff: Duration::from_secs(cfg.max_backoff_seconds),
        dead_letter: dir.join("dead-letter.jsonl"),
        reader,
        rx,
    };
    metrics::gauge!("dialmark_call_webhook_backlog_bytes").set(task.reader.backlog_bytes() as f64);
    Ok(Some((Outbox::new(writer, wake), tokio::spawn(task.run()))))
}

struct Delivery {
    url: String,
    secret: Vec<u8>,
    timeout: Duration,
    max_backoff: Duration,
    dead_letter: PathBuf,
    reader: spool::Reader,
    rx: mpsc::Receiver<()>,
}

impl Delivery {
    async fn run(mut self) {
        let mut open = true;
        let mut failures = 0u32;
        loop {
            let (records, pos) = match self.reader.read(1) {
                Ok(r) => r,
                Err(e) => {
                    error!(cause = %e, "call webhook spool read failed");
                    if !self.wait(Duration::from_secs(1), &mut open).await {
                        break;
                    }
                    continue;
                }
            };
            let Some(record) = records.first() else {
                if !open {
                    break;
                }
                // Idle until the sink appends (or it ends).
                if self.rx.recv().await.is_none() {
                    open = false;
                }
                continue;
            };
            let verdict = match serde_json::from_slice::<Call>(record) {
                // An answered call's first row (`ended` = 0) is not a
                // completed call: its final row follows.
                Ok(call) if call.ended == 0 => Verdict::Delivered,
                Ok(call) => self.deliver(&call).await,
                Err(e) => {
                    self.dead(record, &format!("undecodable: {e}"));
                    Verdict::Refused
                }
            };
            match verdict {
                Verdict::Delivered | Verdict::Refused => {
                    failures = 0;
                    if let Err(e) = self.reader.ack(pos) {
                        error!(cause = %e, "call webhook ack failed; it may be sent again");
                    }
                    metrics::gauge!("dialmark_call_webhook_backlog_bytes")
                        .set(self.reader.backlog_bytes() as f64);
                }
                Verdict::Retry => {
                    self.reader.rewind();
                    failures += 1;
                    if !open
                        || !self
                            .wait(backoff(failures, self.max_backoff), &mut open)
                            .await
                    {
                        warn!("stopping with call webhooks undelivered; they are sent on the next start");
                        break;
                    }
                }
            }
        }
    }

    /// Sleeps `d` unless the outbox closes first; false when it closed.
    async fn wait(&mut self, d: Duration, open: &mut bool) -> bool {
        let until = tokio::time::Instant::now() + d;
        while *open {
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Err(_) => return true,
                Ok(Some(())) => {}
                Ok(None) => *open = false,
            }
        }
        false
    }

    async fn deliver(&self, call: &Call) -> Verdict {
        let body = payload(call).to_string();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let sig = signature(&self.secret, unix, body.as_bytes());
        let (url, timeout, id) = (self.url.clone(), self.timeout, call.call_id.to_string());
        let status = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .http_status_as_error(false)
                .max_redirects(0)
                .build()
                .into();
            agent
                .post(&url)
                .header("content-type", "application/json")
                .header("x-dialmark-event", "call.completed")
                .header("x-dialmark-delivery", &id)
                .header("x-dialmark-signature", &sig)
                .send(&body)
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let v = verdict(status.as_ref().ok().copied());
        let call_id = call.call_id.to_string();
        let call_id = call_id.as_str();
        match (&status, v) {
            (_, Verdict::Delivered) => {
                info!(call_id, "call webhook delivered");
            }
            (Ok(code), Verdict::Refused) => {
                self.dead(
                    &serde_json::to_vec(call).unwrap_or_default(),
                    &format!("receiver answered {code}"),
                );
            }
            (Ok(code), _) => warn!(call_id, status = code, "call webhook refused; retrying"),
            (Err(e), _) => warn!(call_id, cause = %e, "call webhook failed; retrying"),
        }
        let result = match v {
            Verdict::Delivered => "delivered",
            Verdict::Retry => "retry",
            Verdict::Refused => "refused",
        };
        metrics::counter!("dialmark_call_webhooks_total", "result" => result).increment(1);
        v
    }

    fn dead(&self, record: &[u8], reason: &str) {
        match spool::append_dead_letter(&self.dead_letter, &[record]) {
            Ok(()) => {
                error!(reason, dead_letter = %self.dead_letter.display(), "call webhook moved to the dead-letter file")
            }
            Err(e) => {
                error!(reason, cause = %e, "call webhook dead-letter write failed; delivery lost")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(verdict(Some(200)), Verdict::Delivered);
        assert_eq!(verdict(Some(204)), Verdict::Delivered);
        assert_eq!(verdict(None), Verdict::Retry);
        assert_eq!(verdict(Some(503)), Verdict::Retry);
        assert_eq!(verdict(Some(429)), Verdict::Retry);
        assert_eq!(verdict(Some(408)), Verdict::Retry);
        assert_eq!(verdict(Some(400)), Verdict::Refused);
        assert_eq!(verdict(Some(410)), Verdict::Refused);
        assert_eq!(
            verdict(Some(301)),
            Verdict::Retry,
            "redirects are not followed"
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let max = Duration::from_secs(300);
        let waits: Vec<u64> = (1..=10).map(|f| backoff(f, max).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(backoff(u32::MAX, max), max);
    }

    #[test]
    fn signature_matches_a_reference_hmac() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"0123456789abcdef",
        //   b"1795000000.{\"a\":1}", hashlib.sha256).hexdigest())'
        assert_eq!(
            signature(b"0123456789abcdef", 1_795_000_000, br#"{"a":1}"#),
            "t=1795000000,v1=cc265a2e718683fd617b6fdc65ca0fc0337f32c303412aae789c1fa3d7509f37"
        );
    }
}
