//! Call webhooks: `call.started` (the call rings) and `call.completed`
//! (its record is final in ClickHouse), POSTed as JSON signed with
//! HMAC-SHA256 to the node's global receiver and to the receiver of the
//! call's own site (`webhook` in the site's config).
//!
//! The calls sink hands acknowledged rows to this module's outbox (a spool
//! of its own, see [`dialmark_schemas::sink::Outbox`]), so a call is
//! announced as completed only once its row is final; shards hand ringing
//! calls over a bounded channel ([`Events`]). The fan-out task turns each
//! into its event document and appends it to the spool of every receiver
//! it goes to (`webhooks/global`, `webhooks/site-ID`), so a receiver that is
//! down holds back only its own events and nothing is lost while it is
//! down or the router restarts. Each receiver's delivery task sends in
//! order, one at a time, retried with exponential backoff until a 2xx; a
//! receiver that refuses for good (a 4xx other than 408/425/429) gets the
//! event moved to its own dead-letter file so later ones still flow.
//! Delivery is at least once: receivers dedupe on `X-Dialmark-Delivery`
//! (the call id for `call.completed`, `ID.started` for `call.started`). A
//! ringing event the channel has no room for is dropped and counted rather
//! than waited on: signalling never waits for a webhook. The fan-out also
//! feeds every event, and `call.answered`, to the live feed ([`Live`]).
//!
//! Signature: `X-Dialmark-Signature: t=UNIX,v1=HEX` where HEX is
//! HMAC-SHA256(secret, "UNIX." + body); receivers recompute it and refuse
//! old timestamps to stop replays.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dialmark_schemas::config::CallWebhookConfig;
use dialmark_schemas::digest::hmac_sha256_hex;
use dialmark_schemas::rows::Call;
use dialmark_schemas::sink::Outbox;
use dialmark_schemas::spool;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::directory::Directory;
use crate::live::Live;
use dialmark_schemas::rfc3339;

/// Ringing calls the fan-out may have queued before new ones are dropped.
const STARTED_QUEUE: usize = 4_096;
/// Wait before the fan-out retries a call whose site it could not read.
const LOOKUP_RETRY: Duration = Duration::from_secs(1);
/// The outbox's progress is persisted after this many calls (and when it
/// runs empty or must wait): a file written and renamed per call was the
/// router's largest cost under load. A crash announces at most this many
/// calls again (receivers dedupe on `X-Dialmark-Delivery`).
const OUTBOX_ACK_EVERY: usize = 256;
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

/// The events: webhooks send `Started` and `Completed`; the live feed
/// ([`crate::live`]) also `Answered` (the call talks now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Started,
    Answered,
    Completed,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Started => "call.started",
            Event::Answered => "call.answered",
            Event::Completed => "call.completed",
        }
    }

    /// `X-Dialmark-Delivery`: what receivers dedupe on.
    fn delivery_id(self, call: &Call) -> String {
        match self {
            Event::Started => format!("{}.started", call.call_id),
            Event::Answered => format!("{}.answered", call.call_id),
            Event::Completed => call.call_id.to_string(),
        }
    }
}

/// The JSON document of an event (documented in README). `call.started`
/// carries what is known while the call rings: who calls which number,
/// the site, the source, the trunk ringing and since when (the row's
/// `ended`, see [`crate::call::Action::Started`]).
pub fn payload(c: &Call, event: Event) -> serde_json::Value {
    let time = |t: u32| (t > 0).then(|| rfc3339(t.into()));
    let first_touch = serde_json::json!({
        "ts": time(c.first_touch_ts),
        "channel": c.first_channel,
        "utm_source": c.first_utm_source,
        "utm_medium": c.first_utm_medium,
        "utm_campaign": c.first_utm_campaign,
    });
    let mut doc = serde_json::json!({
        "event": event.as_str(),
        "call_id": c.call_id.to_string(),
        "sip_call_id": c.sip_call_id,
        "received": time(c.received),
        "caller": c.caller,
        "number": c.number,
        "number_status": c.number_status.as_str(),
        "site": c.site,
        "pool": c.pool,
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
    });
    let more = match event {
        Event::Started => serde_json::json!({
            "ringing": time(c.ended),
            "trunk": c.final_trunk,
            "destination": c.destination,
        }),
        Event::Answered | Event::Completed => serde_json::json!({
            "answered": time(c.answered),
            "ended": time(c.ended),
            "ring_ms": c.ring_ms,
            "talk_ms": c.talk_ms,
            "disposition": c.disposition.as_str(),
            "final_code": c.final_code,
            "attempts": c.attempts,
            "final_trunk": c.final_trunk,
            "destination": c.destination,
        }),
    };
    if let (Some(doc), serde_json::Value::Object(more)) = (doc.as_object_mut(), more) {
        doc.extend(more);
    }
    doc
}

/// One event as spooled for a receiver: the body is signed and sent as is.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    event: String,
    delivery: String,
    call_id: String,
    body: String,
}

impl Envelope {
    fn new(call: &Call, event: Event) -> Self {
        Self {
            event: event.as_str().into(),
            delivery: event.delivery_id(call),
            call_id: call.call_id.to_string(),
            body: payload(call, event).to_string(),
        }
    }
}

/// The shards' side of the webhooks: hands ringing calls to the fan-out
/// without ever waiting.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Call>,
}

impl Events {
    /// The call `row` started ringing.
    pub fn started(&self, row: Call) {
        if self.tx.try_send(row).is_err() {
            metrics::counter!("dialmark_call_webhooks_total", "destination" => "all", "result" => "dropped")
                .increment(1);
        }
    }
}

/// Where one destination's events go.
#[derive(Clone)]
enum Receiver {
    /// `router.call_webhook` (`None`: turned off since the events were
    /// spooled).
    Global(Option<(String, Vec<u8>)>),
    /// A site's `webhook`, read when sending (a new URL or secret applies
    /// to events already queued).
    Site(String, Directory),
}

impl Receiver {
    fn kind(&self) -> &'static str {
        match self {
            Receiver::Global(_) => "global",
            Receiver::Site(..) => "site",
        }
    }

    /// URL and secret now; `Ok(None)`: the receiver is gone.
    async fn target(&self) -> Result<Option<(String, Vec<u8>)>, String> {
        match self {
            Receiver::Global(t) => Ok(t.clone()),
            Receiver::Site(id, dir) => Ok(dir
                .site_webhook(id)
                .await?
                .map(|h| (h.url, h.secret.into_bytes()))),
        }
    }
}

/// The spool directory name of a site's receiver.
fn site_dest(site: &str) -> String {
    format!("site-{site}")
}

/// The webhooks of a running router: the outbox for the calls sink, the
/// ringing-call handle for the shards, and the task that ends (after a
/// last delivery attempt per receiver) once both are dropped.
pub struct Webhooks {
    pub outbox: Outbox,
    pub events: Events,
    pub task: JoinHandle<()>,
}

/// Opens the outbox spool (`spool_dir/router/call_webhook`) and each
/// receiver's spool (`spool_dir/router/webhooks/NAME`, resuming what the
/// last run left), and starts the fan-out.
pub fn start(
    cfg: &CallWebhookConfig,
    directory: Directory,
    live: Live,
    spool_dir: &Path,
    fsync: spool::Fsync,
) -> std::io::Result<Webhooks> {
    let dir = spool_dir.join("router").join("call_webhook");
    let writer = spool::Writer::open(&dir, fsync, Duration::ZERO)?;
    let outbox = spool::Reader::open(&dir)?;
    let (wake_tx, wake) = mpsc::channel(1);
    let (tx, started) = mpsc::channel(STARTED_QUEUE);
    let mut fan = FanOut {
        global: cfg
            .url
            .clone()
            .map(|u| (u, cfg.secret.clone().into_bytes())),
        timeout: Duration::from_millis(cfg.timeout_ms),
        max_backoff: Duration::from_secs(cfg.max_backoff_seconds),
        directory,
        live,
        root: spool_dir.join("router").join("webhooks"),
        fsync,
        outbox,
        wake,
        started,
        dests: HashMap::new(),
    };
    // Receivers with events left by the last run resume now.
    if let Ok(entries) = std::fs::read_dir(&fan.root) {
        for e in entries.flatten() {
            match e.file_name().to_str() {
                Some(name) if name == "global" || name.starts_with("site-") => {
                    fan.dest(name)?;
                }
                _ => {
                    warn!(path = %e.path().display(), "not a webhook receiver's spool; left alone")
                }
            }
        }
    }
    if fan.global.is_some() {
        fan.dest("global")?;
    }
    Ok(Webhooks {
        outbox: Outbox::new(writer, wake_tx),
        events: Events { tx },
        task: tokio::spawn(fan.run()),
    })
}

/// One receiver's spool writer and delivery task.
struct Dest {
    writer: spool::Writer,
    wake: mpsc::Sender<()>,
    task: JoinHandle<()>,
}

struct FanOut {
    global: Option<(String, Vec<u8>)>,
    timeout: Duration,
    max_backoff: Duration,
    directory: Directory,
    live: Live,
    root: PathBuf,
    fsync: spool::Fsync,
    outbox: spool::Reader,
    wake: mpsc::Receiver<()>,
    started: mpsc::Receiver<Call>,
    dests: HashMap<String, Dest>,
}

impl FanOut {
    async fn run(mut self) {
        let (mut outbox_open, mut started_open) = (true, true);
        loop {
            let stuck = !self.drain_outbox().await;
            if !outbox_open && (stuck || !started_open) {
                if stuck {
                    warn!("stopping with completed calls not yet handed to webhooks; they go on the next start");
                }
                break;
            }
            tokio::select! {
                s = self.started.recv(), if started_open => match s {
                    Some(call) => self.ringing(call).await,
                    None => started_open = false,
                },
                w = self.wake.recv(), if outbox_open => {
                    if w.is_none() {
                        outbox_open = false;
                    }
                }
                _ = tokio::time::sleep(LOOKUP_RETRY), if stuck => {}
            }
        }
        let tasks: Vec<JoinHandle<()>> = self.dests.into_values().map(|d| d.task).collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// The receiver `name`'s spool, opened (and its delivery started) on
    /// first use.
    fn dest(&mut self, name: &str) -> std::io::Result<&mut Dest> {
        if !self.dests.contains_key(name) {
            let receiver = if name == "global" {
                Receiver::Global(self.global.clone())
            } else if let Some(site) = name.strip_prefix("site-") {
                Receiver::Site(site.to_string(), self.directory.clone())
            } else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{name}: not a webhook receiver"),
                ));
            };
            let dir = self.root.join(name);
            let writer = spool::Writer::open(&dir, self.fsync, Duration::ZERO)?;
            let reader = spool::Reader::open(&dir)?;
            let (wake, rx) = mpsc::channel(1);
            let task = Delivery {
                name: name.to_string(),
                receiver,
                timeout: self.timeout,
                max_backoff: self.max_backoff,
                dead_letter: dir.join("dead-letter.jsonl"),
                reader,
                rx,
            };
            task.report_backlog();
            let task = tokio::spawn(task.run());
            self.dests
                .insert(name.to_string(), Dest { writer, wake, task });
        }
        Ok(self.dests.get_mut(name).expect("just opened"))
    }

    /// Where a call's events go: the global receiver and the site's.
    /// `Err`: the site's setting cannot be read now.
    async fn receivers(&self, site: &str) -> Result<Vec<String>, String> {
        let mut v = Vec::new();
        if self.global.is_some() {
            v.push("global".to_string());
        }
        if !site.is_empty() && self.directory.site_webhook(site).await?.is_some() {
            v.push(site_dest(site));
        }
        Ok(v)
    }

    fn append(&mut self, to: &[String], env: &Envelope) -> std::io::Result<()> {
        let record = serde_json::to_vec(env).map_err(std::io::Error::other)?;
        for name in to {
            let d = self.dest(name)?;
            d.writer.append(&record)?;
            let _ = d.wake.try_send(());
        }
        Ok(())
    }

    /// Hands every completed call in the outbox to its receivers; false
    /// when one must wait (its site could not be read, or a disk error):
    /// what was handed on is acknowledged, the rest read again later.
    async fn drain_outbox(&mut self) -> bool {
        let (mut done, mut since_ack) = (None, 0);
        let drained = loop {
            let (records, pos) = match self.outbox.read(1) {
                Ok(r) => r,
                Err(e) => {
                    error!(cause = %e, "call webhook outbox read failed");
                    break false;
                }
            };
            let Some(record) = records.first() else {
                break true;
            };
            match serde_json::from_slice::<Call>(record) {
                // An answered call's first row (`ended` = 0) is not a
                // completed call (its final row follows): live feed only.
                Ok(call) if call.ended == 0 => self.live.publish(&payload(&call, Event::Answered)),
                Ok(call) => {
                    let Ok(to) = self.receivers(&call.site).await else {
                        break false;
                    };
                    let env = Envelope::new(&call, Event::Completed);
                    if let Err(e) = self.append(&to, &env) {
                        error!(call_id = %call.call_id, cause = %e, "call webhook spool write failed; retrying");
                        break false;
                    }
                    self.live.publish(&payload(&call, Event::Completed));
                }
                Err(e) => error!(cause = %e, "undecodable call row in the webhook outbox; skipped"),
            }
            done = Some(pos);
            since_ack += 1;
            if since_ack == OUTBOX_ACK_EVERY {
                self.ack_outbox(pos);
                since_ack = 0;
            }
        };
        if let Some(pos) = done {
            self.ack_outbox(pos);
        }
        if !drained {
            self.outbox.rewind();
        }
        drained
    }

    fn ack_outbox(&mut self, pos: spool::Pos) {
        if let Err(e) = self.outbox.ack(pos) {
            error!(cause = %e, "call webhook outbox ack failed; calls may be announced again");
        }
    }

    async fn ringing(&mut self, call: Call) {
        self.live.publish(&payload(&call, Event::Started));
        let to = match self.receivers(&call.site).await {
            Ok(to) => to,
            Err(_) => {
                // Not worth holding the ringing events back for: the
                // completed event follows from the durable outbox.
                metrics::counter!("dialmark_call_webhooks_total", "destination" => "site", "result" => "dropped")
                    .increment(1);
                let mut to = Vec::new();
                if self.global.is_some() {
                    to.push("global".to_string());
                }
                to
            }
        };
        if to.is_empty() {
            return;
        }
        let env = Envelope::new(&call, Event::Started);
        if let Err(e) = self.append(&to, &env) {
            error!(call_id = %call.call_id, cause = %e, "call webhook spool write failed; ringing event lost");
        }
    }
}

/// One receiver's delivery task.
struct Delivery {
    name: String,
    receiver: Receiver,
    timeout: Duration,
    max_backoff: Duration,
    dead_letter: PathBuf,
    reader: spool::Reader,
    rx: mpsc::Receiver<()>,
}

impl Delivery {
    fn report_backlog(&self) {
        metrics::gauge!("dialmark_call_webhook_backlog_bytes", "destination" => self.name.clone())
            .set(self.reader.backlog_bytes() as f64);
    }

    async fn run(mut self) {
        let mut open = true;
        let mut failures = 0u32;
        loop {
            let (records, pos) = match self.reader.read(1) {
                Ok(r) => r,
                Err(e) => {
                    error!(destination = %self.name, cause = %e, "call webhook spool read failed");
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
                // Idle until the fan-out appends (or it ends).
                if self.rx.recv().await.is_none() {
                    open = false;
                }
                continue;
            };
            let verdict = match serde_json::from_slice::<Envelope>(record) {
                Ok(env) => self.deliver(&env, record).await,
                Err(e) => {
                    self.dead(record, &format!("undecodable: {e}"));
                    Verdict::Refused
                }
            };
            match verdict {
                Verdict::Delivered | Verdict::Refused => {
                    failures = 0;
                    if let Err(e) = self.reader.ack(pos) {
                        error!(destination = %self.name, cause = %e, "call webhook ack failed; it may be sent again");
                    }
                    self.report_backlog();
                }
                Verdict::Retry => {
                    self.reader.rewind();
                    failures += 1;
                    if !open
                        || !self
                            .wait(backoff(failures, self.max_backoff), &mut open)
                            .await
                    {
                        warn!(destination = %self.name, "stopping with call webhooks undelivered; they are sent on the next start");
                        break;
                    }
                }
            }
        }
    }

    /// Sleeps `d` unless the fan-out ends first; false when it ended.
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

    async fn deliver(&self, env: &Envelope, record: &[u8]) -> Verdict {
        let call_id = env.call_id.as_str();
        let (url, secret) = match self.receiver.target().await {
            Ok(Some(t)) => t,
            Ok(None) => {
                self.dead(record, "the receiver's webhook was turned off");
                return Verdict::Refused;
            }
            Err(e) => {
                warn!(destination = %self.name, call_id, cause = %e, "call webhook receiver unknown for now; retrying");
                return Verdict::Retry;
            }
        };
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let sig = signature(&secret, unix, env.body.as_bytes());
        let (timeout, body) = (self.timeout, env.body.clone());
        let (event, id) = (env.event.clone(), env.delivery.clone());
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
                .header("x-dialmark-event", &event)
                .header("x-dialmark-delivery", &id)
                .header("x-dialmark-signature", &sig)
                .send(&body)
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let v = verdict(status.as_ref().ok().copied());
        let (destination, event) = (self.name.as_str(), env.event.as_str());
        match (&status, v) {
            (_, Verdict::Delivered) => info!(destination, call_id, event, "call webhook delivered"),
            (Ok(code), Verdict::Refused) => self.dead(record, &format!("receiver answered {code}")),
            (Ok(code), _) => {
                warn!(
                    destination,
                    call_id,
                    event,
                    status = code,
                    "call webhook refused; retrying"
                )
            }
            (Err(e), _) => {
                warn!(destination, call_id, event, cause = %e, "call webhook failed; retrying")
            }
        }
        let result = match v {
            Verdict::Delivered => "delivered",
            Verdict::Retry => "retry",
            Verdict::Refused => "refused",
        };
        metrics::counter!("dialmark_call_webhooks_total", "destination" => self.receiver.kind(), "result" => result)
            .increment(1);
        v
    }

    fn dead(&self, record: &[u8], reason: &str) {
        match spool::append_dead_letter(&self.dead_letter, &[record]) {
            Ok(()) => {
                error!(destination = %self.name, reason, dead_letter = %self.dead_letter.display(), "call webhook moved to the dead-letter file")
            }
            Err(e) => {
                error!(destination = %self.name, reason, cause = %e, "call webhook dead-letter write failed; delivery lost")
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
