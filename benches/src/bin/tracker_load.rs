//! Tracker load generator: `POST /v1/visits`, optionally followed by
//! `--keepalives` × `POST /v1/visits/{session}/keepalive` per visit, against
//! a running tracker, with the bodies and headers the snippet sends (JSON as
//! `text/plain`, the site's `Origin`, a browser User-Agent).
//!
//! Requests go over `--connections` keep-alive HTTP/1.1 connections, one
//! request in flight per connection, written and read by hand: a general
//! HTTP client would cost the two-core box CPU the tracker needs. Modes:
//! - closed loop (no `--rate`): each connection sends its next request as
//!   soon as the answer to the previous one is read: the maximum rate;
//! - open loop (`--rate R` visits/s): visit `i` is due at `i / R`, on
//!   connection `i % connections`; its latency counts from when it was due,
//!   not from when it was sent, so a server stall is not hidden by the
//!   client waiting for it (no coordinated omission). A plain thread sleeps
//!   to each due time and hands the visit to its connection: tokio's timer
//!   ticks in whole milliseconds, which alone made visits up to 1 ms late.
//!
//! Requests finished (closed) or due (open) in the first `--warmup` seconds
//! are not counted. `--latencies FILE` also writes each counted visit as a
//! line `START_US LATENCY_US` (start: when it was due or sent, from the
//! run's start), to pool several runs or see when slow visits happened.
//! Prints one JSON object: counts, rates, latency
//! percentiles per request kind, status codes and the number kinds handed
//! out (anything but `pool` means the pool ran out or Redis failed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(about = "Load generator for the tracker's snippet API")]
struct Args {
    /// Tracker HTTP address.
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    site: String,
    /// `Origin` header: one of the site's allowed origins.
    #[arg(long)]
    origin: String,
    /// Keep-alives sent after each visit (on the visit's session).
    #[arg(long, default_value_t = 0)]
    keepalives: u32,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Visits per second (open loop); closed loop when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Write every counted visit's start and latency here.
    #[arg(long)]
    latencies: Option<std::path::PathBuf>,
}

/// What one connection measured.
#[derive(Default)]
struct Tally {
    visit_us: Vec<u32>,
    /// When each counted visit started (due or sent), µs from the run's start.
    start_us: Vec<u32>,
    /// Open loop: how late each visit was sent (the client's own timer
    /// resolution and any backlog on its connection).
    late_us: Vec<u32>,
    keepalive_us: Vec<u32>,
    status: BTreeMap<u16, u64>,
    kinds: BTreeMap<String, u64>,
    io_errors: u64,
    /// Visits answered 200 in the whole run, warm-up and tail included
    /// (to check against the rows the tracker recorded).
    all_ok_visits: u64,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.visit_us.extend(o.visit_us);
        self.start_us.extend(o.start_us);
        self.late_us.extend(o.late_us);
        self.keepalive_us.extend(o.keepalive_us);
        for (k, v) in o.status {
            *self.status.entry(k).or_default() += v;
        }
        for (k, v) in o.kinds {
            *self.kinds.entry(k).or_default() += v;
        }
        self.io_errors += o.io_errors;
        self.all_ok_visits += o.all_ok_visits;
    }
}

/// One keep-alive HTTP/1.1 connection; requests strictly one after another.
struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    /// Sends `req` and returns the status and body of the answer. Reconnects
    /// when the tracker closed the connection.
    async fn call(&mut self, req: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let result = self.exchange(req).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(&mut self, req: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let s = self.stream.as_mut().expect("connected above");
        s.write_all(req).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if read_more(s, &mut self.buf).await? == 0 {
                bail!("connection closed before the response head");
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("response head")?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("status line")?;
        // axum answers with Content-Length (whole JSON bodies), never chunked.
        let len: usize = head
            .split("\r\n")
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .context("no Content-Length")?;
        while self.buf.len() < head_end + len {
            if read_more(s, &mut self.buf).await? == 0 {
                bail!("connection closed in the body");
            }
        }
        Ok((status, self.buf[head_end..head_end + len].to_vec()))
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = s.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The requests of one visitor, as the snippet sends them.
struct Requests {
    host: String,
    site: String,
    origin: String,
    /// Keep-alives after each visit.
    keepalives: u32,
}

const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

impl Requests {
    fn post(&self, path: &str, body: &str) -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nOrigin: {}\r\nUser-Agent: {USER_AGENT}\r\n\
             Content-Type: text/plain;charset=UTF-8\r\nAccept: */*\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            self.origin,
            body.len()
        )
        .into_bytes()
    }

    /// A first visit from an ad click: current and first touch are the same.
    fn visit(&self, n: u64) -> Vec<u8> {
        let url = format!(
            "{}/catalog/item-{}?utm_source=google&utm_medium=cpc&utm_campaign=spring&gclid=Cj0KCQbench{n}",
            self.origin,
            n % 500
        );
        let touch = serde_json::json!({
            "landing_url": url,
            "referrer": "https://www.google.com/",
            "utm_source": "google",
            "utm_medium": "cpc",
            "utm_campaign": "spring",
            "gclid": format!("Cj0KCQbench{n}"),
        });
        let mut body = touch.clone();
        let o = body.as_object_mut().expect("object");
        o.insert("site".into(), self.site.clone().into());
        o.insert(
            "visitor_id".into(),
            format!("{:032x}", rand::random::<u128>()).into(),
        );
        o.insert("url".into(), url.into());
        o.insert("first_touch".into(), touch);
        self.post("/v1/visits", &body.to_string())
    }

    fn keepalive(&self, session: &str) -> Vec<u8> {
        self.post(
            &format!("/v1/visits/{session}/keepalive"),
            &serde_json::json!({ "site": self.site }).to_string(),
        )
    }
}

#[derive(serde::Deserialize)]
struct VisitAnswer {
    session_id: String,
    kind: String,
}

/// Runs one visitor (visit + keep-alives) on `conn`; `due` is when the
/// visit was due (its latency starts there), `t0` the run's start. Returns
/// false on an I/O error.
async fn visitor(
    conn: &mut Conn,
    reqs: &Requests,
    n: u64,
    due: Instant,
    t0: Instant,
    counted: impl Fn(Instant) -> bool,
    t: &mut Tally,
) -> bool {
    let sent = Instant::now();
    let answer = match conn.call(&reqs.visit(n)).await {
        Ok(a) => a,
        Err(_) => {
            t.io_errors += 1;
            return false;
        }
    };
    let done = Instant::now();
    if answer.0 == 200 {
        t.all_ok_visits += 1;
    }
    let count = counted(done);
    if count {
        t.visit_us.push(micros(done - due));
        t.start_us.push(micros(due - t0));
        t.late_us.push(micros(sent - due));
        *t.status.entry(answer.0).or_default() += 1;
    }
    let Ok(v) = serde_json::from_slice::<VisitAnswer>(&answer.1) else {
        return true;
    };
    if count {
        *t.kinds.entry(v.kind).or_default() += 1;
    }
    for _ in 0..reqs.keepalives {
        let sent = Instant::now();
        match conn.call(&reqs.keepalive(&v.session_id)).await {
            Ok((status, _)) => {
                let done = Instant::now();
                if counted(done) {
                    t.keepalive_us.push(micros(done - sent));
                    *t.status.entry(status).or_default() += 1;
                }
            }
            Err(_) => {
                t.io_errors += 1;
                return false;
            }
        }
    }
    true
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

/// A visit's number and when it is due (open loop).
type Due = (u64, Instant);

/// Open loop: sleeps to each visit's due time and hands it to its
/// connection. The kernel's high-resolution timers wake this thread tens of
/// microseconds late; tokio's timer would be up to a millisecond late.
fn pace(rate: f64, t0: Instant, until: Instant, conns: Vec<mpsc::UnboundedSender<Due>>) {
    let (t0, until) = (t0.into_std(), until.into_std());
    for i in 0u64.. {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        if due >= until {
            break;
        }
        let now = std::time::Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let conn = &conns[(i % conns.len() as u64) as usize];
        if conn.send((i, Instant::from_std(due))).is_err() {
            break;
        }
    }
}

async fn connection(
    a: Args,
    reqs: std::sync::Arc<Requests>,
    idx: usize,
    t0: Instant,
    mut paced: Option<mpsc::UnboundedReceiver<Due>>,
) -> Tally {
    let mut conn = Conn {
        addr: a.addr,
        stream: None,
        buf: Vec::with_capacity(4096),
    };
    let mut t = Tally::default();
    let from = t0 + Duration::from_secs_f64(a.warmup);
    let until = from + Duration::from_secs_f64(a.seconds);
    let c = a.connections as u64;
    let mut i = idx as u64;
    loop {
        match &mut paced {
            None => {
                if Instant::now() >= until {
                    break;
                }
                let counted = |done: Instant| done >= from && done < until;
                if !visitor(&mut conn, &reqs, i, Instant::now(), t0, counted, &mut t).await {
                    // A refused connection would otherwise spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Some(rx) => {
                // The pacer ends at the window's end; hopelessly behind
                // (the tracker is overloaded): stop instead of draining a
                // backlog forever.
                let Some((n, due)) = rx.recv().await else {
                    break;
                };
                if Instant::now() >= until + Duration::from_secs(10) {
                    break;
                }
                let counted = |_: Instant| due >= from;
                visitor(&mut conn, &reqs, n, due, t0, counted, &mut t).await;
            }
        }
        i += c;
    }
    t
}

/// Percentiles in milliseconds.
fn summary(us: &mut [u32]) -> serde_json::Value {
    us.sort_unstable();
    let q = |p: f64| -> f64 {
        if us.is_empty() {
            return 0.0;
        }
        let i = ((p * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1;
        f64::from(us[i]) / 1000.0
    };
    let mean = if us.is_empty() {
        0.0
    } else {
        us.iter().map(|&x| f64::from(x)).sum::<f64>() / us.len() as f64 / 1000.0
    };
    serde_json::json!({
        "n": us.len(), "mean": mean, "p50": q(0.5), "p90": q(0.9),
        "p99": q(0.99), "p999": q(0.999), "max": q(1.0),
    })
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // One thread: the generator must leave the second core to the tracker
    // and Redis; a single thread drives tens of thousands of requests/s.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reqs = std::sync::Arc::new(Requests {
        host: a.addr.to_string(),
        site: a.site.clone(),
        origin: a.origin.clone(),
        keepalives: a.keepalives,
    });
    let mut total = Tally::default();
    rt.block_on(async {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs_f64(a.warmup + a.seconds);
        let mut senders = Vec::new();
        let tasks: Vec<_> = (0..a.connections)
            .map(|i| {
                let paced = a.rate.map(|_| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    senders.push(tx);
                    rx
                });
                tokio::spawn(connection(a.clone(), reqs.clone(), i, t0, paced))
            })
            .collect();
        if let Some(rate) = a.rate {
            std::thread::spawn(move || pace(rate, t0, until, senders));
        }
        for task in tasks {
            total.merge(task.await?);
        }
        anyhow::Ok(())
    })?;
    if let Some(path) = &a.latencies {
        let mut lines = String::with_capacity(total.visit_us.len() * 16);
        for (start, lat) in total.start_us.iter().zip(&total.visit_us) {
            lines.push_str(&format!("{start} {lat}\n"));
        }
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    let visits = total.visit_us.len();
    let keepalives = total.keepalive_us.len();
    let out = serde_json::json!({
        "mode": if a.rate.is_some() { "open" } else { "closed" },
        "connections": a.connections,
        "keepalives_per_visit": a.keepalives,
        "target_rate": a.rate,
        "seconds": a.seconds,
        "visits": visits,
        "keepalives": keepalives,
        "visit_rate": visits as f64 / a.seconds,
        "request_rate": (visits + keepalives) as f64 / a.seconds,
        "visit_ms": summary(&mut total.visit_us),
        "keepalive_ms": summary(&mut total.keepalive_us),
        "send_late_ms": summary(&mut total.late_us),
        "status": total.status,
        "kinds": total.kinds,
        "io_errors": total.io_errors,
        "all_ok_visits": total.all_ok_visits,
    });
    println!("{out}");
    Ok(())
}
