//! Attribution simulation: how often a call is linked to the visit that
//! really made it, against pool size, with the pool advisor's size among
//! the sizes tried.
//!
//! A seeded generator makes visitors (Poisson arrivals per simulated hour,
//! exponential session lengths, a call probability, calls during the visit
//! or after it with an exponential delay). They drive the real tracker
//! (HTTP visits and keep-alives, Redis leases) and the real router (a SIP
//! INVITE per call, from a trusted carrier address, to the number the
//! visitor was shown; the trunk is a SIPp that answers busy) at accelerated
//! time: every duration, the tracker's hold, cool-down and attribution
//! window included, is divided by `--speed`. The first phase, with a
//! generous pool, is observed by the `pool_health` report (demand window
//! = one simulated quarter-hour); its recommended size N is then tried at
//! `--fractions` of N, each phase with a fresh pool and the same visitors.
//! Visitors behave as on real sites: several page views per visit (each a
//! `/v1/visits` of the same session), a second tab keeping the session alive
//! too, a second ad click mid-session (a new campaign: the call must carry
//! the newest click), call delays after the visit from a heavy-tailed
//! (Pareto) distribution, returning visitors (a new session an hour or so
//! later, carrying the click the snippet kept; their calls come then), and
//! crawler traffic that runs the page's script (a search-bot user agent: it
//! must get no pool number).
//! Accuracy = calls whose `calls.session_id` is the caller's own session
//! *and* whose `utm_campaign` is the caller's latest click at the call /
//! calls placed (a call with no row counts as wrong too).
//!
//! Needs the services of `ops/test` (`DIALMARK_TEST_REDIS`,
//! `DIALMARK_TEST_CLICKHOUSE`, `DIALMARK_BIN_DIR`); `benches/attribution/run`
//! starts them and writes the results into `benches/README.md`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use dialmark_e2e::process::free_port;
use dialmark_e2e::router::{RouterOptions, TestRouter};
use dialmark_e2e::sipp::{Scenario, Uas};
use dialmark_e2e::tracker::{config, provision, single_redis, TestTracker};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(about = "Attribution accuracy against pool size (real tracker + router)")]
struct Args {
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Simulated seconds per real second; 3600 / speed must be whole.
    #[arg(long, default_value_t = 90)]
    speed: u32,
    /// Visitors per simulated hour, one value per simulated hour.
    #[arg(long, value_delimiter = ',', default_values_t = vec![600.0, 1000.0])]
    visitors_per_hour: Vec<f64>,
    /// Share of visitors who call.
    #[arg(long, default_value_t = 0.3)]
    call_probability: f64,
    /// Mean time a visitor's page stays open (simulated seconds).
    #[arg(long, default_value_t = 240.0)]
    mean_session_seconds: f64,
    /// Share of calls made while the page is open; the others follow it.
    #[arg(long, default_value_t = 0.6)]
    call_during_session: f64,
    /// Mean delay of a call after the page closed (simulated seconds), a
    /// Pareto distribution with shape 1.5 (heavy-tailed: some call back
    /// hours later).
    #[arg(long, default_value_t = 300.0)]
    mean_call_delay_seconds: f64,
    /// Mean page views per visit (1 + geometric).
    #[arg(long, default_value_t = 3.0)]
    mean_page_views: f64,
    /// Share of visitors with a second tab open on the site.
    #[arg(long, default_value_t = 0.2)]
    second_tab: f64,
    /// Share of visitors who click a second ad mid-visit.
    #[arg(long, default_value_t = 0.1)]
    second_click: f64,
    /// Share of the traffic that is crawlers running the page's script.
    #[arg(long, default_value_t = 0.2)]
    bots: f64,
    /// Share of visitors who come back (a new session, mean 1 simulated
    /// hour after the first one ended); a returning caller calls then.
    #[arg(long, default_value_t = 0.1)]
    returning: f64,
    /// Pool size of the observed first phase.
    #[arg(long, default_value_t = 800)]
    observe_pool: usize,
    /// Pool sizes tried, as fractions of the advisor's recommendation.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.5, 0.75, 1.0, 1.25])]
    fractions: Vec<f64>,
    /// Writes the results as a Markdown section here.
    #[arg(long)]
    markdown: Option<std::path::PathBuf>,
}

/// One generated visitor; times in simulated seconds from the phase start.
#[derive(Debug, Clone, Default)]
struct Visitor {
    start: f64,
    session: f64,
    call_at: Option<f64>,
    /// Later page views of the visit.
    views: Vec<f64>,
    /// When a second ad click lands (a page view with a new campaign).
    second_click: Option<f64>,
    tabs: u8,
    bot: bool,
    /// The return visit: its start and length.
    returns: Option<(f64, f64)>,
}

impl Visitor {
    /// The campaign of the visitor's latest click at `t`.
    fn campaign_at(&self, i: usize, t: f64) -> String {
        match self.second_click {
            Some(c) if t >= c => format!("v{i}b"),
            _ => format!("v{i}"),
        }
    }
}

fn exp(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

/// Pareto with shape 1.5 and the given mean (scale = mean / 3).
fn pareto(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    (mean / 3.0) / (1.0 - rng.random::<f64>()).powf(1.0 / 1.5)
}

/// The seeded visitor stream (the same for every phase).
fn generate(a: &Args) -> Vec<Visitor> {
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let mut out = Vec::new();
    for (h, rate) in a.visitors_per_hour.iter().enumerate() {
        let end = (h as f64 + 1.0) * 3600.0;
        let mut t = h as f64 * 3600.0;
        loop {
            t += exp(&mut rng, 3600.0 / rate);
            if t >= end {
                break;
            }
            if rng.random::<f64>() < a.bots {
                out.push(Visitor {
                    start: t,
                    session: 1.0,
                    bot: true,
                    ..Visitor::default()
                });
                continue;
            }
            let session = exp(&mut rng, a.mean_session_seconds).clamp(10.0, 3600.0);
            let call_at = (rng.random::<f64>() < a.call_probability).then(|| {
                if rng.random::<f64>() < a.call_during_session {
                    t + rng.random::<f64>() * session
                } else {
                    t + session + pareto(&mut rng, a.mean_call_delay_seconds)
                }
            });
            let extra = (exp(&mut rng, (a.mean_page_views - 1.0).max(0.01))).round() as usize;
            let mut views: Vec<f64> = (0..extra.min(20))
                .map(|_| t + rng.random::<f64>() * session)
                .collect();
            views.sort_by(f64::total_cmp);
            let second_click =
                (rng.random::<f64>() < a.second_click).then(|| t + rng.random::<f64>() * session);
            let tabs = if rng.random::<f64>() < a.second_tab {
                2
            } else {
                1
            };
            let returns = (rng.random::<f64>() < a.returning).then(|| {
                let back = t + session + exp(&mut rng, 3600.0);
                (
                    back,
                    exp(&mut rng, a.mean_session_seconds).clamp(10.0, 3600.0),
                )
            });
            // A returning caller calls during the return visit.
            let call_at = match (call_at, returns) {
                (Some(_), Some((back, len))) => Some(back + rng.random::<f64>() * len),
                (c, _) => c,
            };
            out.push(Visitor {
                start: t,
                session,
                call_at,
                views,
                second_click,
                tabs,
                bot: false,
                returns,
            });
        }
    }
    out
}

/// A minimal SIP UAC over one UDP socket: INVITE (retransmitted until a
/// reply), ACK of the final reply. Enough for calls the trunk refuses.
struct Uac {
    sock: Arc<UdpSocket>,
    router: SocketAddr,
    pending: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<String>>>>,
}

impl Uac {
    async fn new(router: SocketAddr) -> anyhow::Result<Arc<Uac>> {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let pending: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<String>>>> = Arc::default();
        let (s, p) = (sock.clone(), pending.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, _)) = s.recv_from(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                if let Some(id) = header(&text, &["call-id", "i"]) {
                    if let Some(tx) = p.lock().expect("uac").get(id) {
                        let _ = tx.send(text.clone());
                    }
                }
            }
        });
        Ok(Arc::new(Uac {
            sock,
            router,
            pending,
        }))
    }

    /// Places a call; returns the final status (None: no final reply).
    async fn call(&self, number: &str, caller: &str, id: &str) -> Option<u16> {
        let local = self.sock.local_addr().ok()?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.pending.lock().expect("uac").insert(id.to_string(), tx);
        let uri = format!("sip:{number}@{}", self.router);
        let common = format!(
            "Via: SIP/2.0/UDP {local};branch=z9hG4bK{id}\r\nMax-Forwards: 70\r\n\
             From: <sip:{caller}@{local}>;tag=f{id}\r\nCall-ID: {id}\r\n"
        );
        let invite = format!(
            "INVITE {uri} SIP/2.0\r\n{common}To: <{uri}>\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:{caller}@{local}>\r\nContent-Length: 0\r\n\r\n"
        );
        let mut wait = Duration::from_millis(500);
        let mut provisional = false;
        let deadline = Instant::now() + Duration::from_secs(40);
        let _ = self.sock.send_to(invite.as_bytes(), self.router).await;
        let result = loop {
            if Instant::now() > deadline {
                break None;
            }
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(reply)) => {
                    let code: u16 = reply
                        .split(' ')
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    if code < 200 {
                        provisional = true;
                        continue;
                    }
                    let to = header(&reply, &["to", "t"]).unwrap_or("").to_string();
                    let ack = format!(
                        "ACK {uri} SIP/2.0\r\n{common}To: {to}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
                    );
                    let _ = self.sock.send_to(ack.as_bytes(), self.router).await;
                    break Some(code);
                }
                Ok(None) => break None,
                Err(_) if !provisional => {
                    let _ = self.sock.send_to(invite.as_bytes(), self.router).await;
                    wait = (wait * 2).min(Duration::from_secs(4));
                }
                Err(_) => {}
            }
        };
        self.pending.lock().expect("uac").remove(id);
        result
    }
}

/// The value of the first header named one of `names` (lower-case).
fn header<'a>(msg: &'a str, names: &[&str]) -> Option<&'a str> {
    msg.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        names
            .contains(&k.trim().to_ascii_lowercase().as_str())
            .then(|| v.trim())
    })
}

/// What happened to one visitor in a phase.
#[derive(Debug, Default, Clone)]
struct Outcome {
    session: String,
    kind: String,
    caller: String,
    call_code: Option<u16>,
    /// The campaign of the latest click when the call was placed.
    campaign: String,
    bot: bool,
}

struct World {
    args: Args,
    tracker: TestTracker,
    uac: Arc<Uac>,
    visitors: Vec<Visitor>,
    _router: TestRouter,
    _trunk: Uas,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct CallRow {
    caller: String,
    session_id: String,
    utm_campaign: String,
    confidence: String,
}

#[derive(Debug, Clone)]
struct PhaseResult {
    label: String,
    pool_size: usize,
    visits: usize,
    without_pool_number: usize,
    calls: usize,
    right: usize,
    wrong_touch: usize,
    wrong_visit: usize,
    contested: usize,
    bots: usize,
    bot_burned: usize,
    unattributed: usize,
    missing_rows: usize,
    site: String,
    from: u32,
    to: u32,
}

impl PhaseResult {
    fn accuracy(&self) -> f64 {
        if self.calls == 0 {
            return 0.0;
        }
        self.right as f64 * 100.0 / self.calls as f64
    }
}

/// Keep-alives of one open tab: the first after `first` seconds, then
/// every `every` seconds until `end`.
async fn keep_alive(url: String, body: serde_json::Value, first: f64, every: f64, end: Instant) {
    let mut next = Instant::now() + Duration::from_secs_f64(first);
    while next < end {
        tokio::time::sleep_until(next).await;
        let (url, body) = (url.clone(), body.clone());
        let _ = tokio::task::spawn_blocking(move || post(&url, body)).await;
        next += Duration::from_secs_f64(every);
    }
}

/// A search crawler that runs the page's script.
const BOT_AGENT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

/// A POST from a page of the site; `agent` replaces the HTTP client's own
/// user agent.
fn post_as(
    url: &str,
    body: serde_json::Value,
    agent: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let mut req = ureq::post(url).header("origin", dialmark_e2e::tracker::ORIGIN);
    if let Some(a) = agent {
        req = req.header("user-agent", a);
    }
    Ok(req.send(body.to_string())?.body_mut().read_json()?)
}

fn post(url: &str, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    post_as(url, body, None)
}

async fn phase(
    w: &World,
    idx: usize,
    label: &str,
    pool_size: usize,
) -> anyhow::Result<PhaseResult> {
    let (site, _pool, _numbers) = provision(&w.tracker, pool_size).await;
    let speed = f64::from(w.args.speed);
    // Start on a demand-window boundary (simulated hours are then whole
    // windows of the report, as real hours are).
    let window = f64::from(3600 / w.args.speed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let start = ((now / window).floor() + 1.0) * window;
    let t0 = Instant::now() + Duration::from_secs_f64(start - now);
    let from = start as u32;
    let real = move |sim: f64| t0 + Duration::from_secs_f64(sim / speed);
    let outcomes: Arc<Mutex<Vec<Outcome>>> =
        Arc::new(Mutex::new(vec![Outcome::default(); w.visitors.len()]));
    let mut tasks = Vec::new();
    for (i, v) in w.visitors.iter().cloned().enumerate() {
        let (site, outcomes, uac) = (site.clone(), outcomes.clone(), w.uac.clone());
        let visits = w.tracker.url("/v1/visits");
        let base = w.tracker.url("/v1/visits/");
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(real(v.start)).await;
            let landing =
                |c: &str| format!("https://shop.test/landing?utm_source=sim&utm_campaign={c}");
            // The snippet's body: the latest click, its age (real seconds).
            let touch = |campaign: &str, clicked: f64, now: f64, session: Option<&str>| {
                let mut b = serde_json::json!({
                    "site": site,
                    "url": landing(campaign),
                    "landing_url": landing(campaign),
                    "utm_source": "sim",
                    "utm_campaign": campaign,
                    // Seconds with milliseconds, as the snippet sends them.
                    "touch_age": (((now - clicked) / speed).max(0.0) * 1000.0).round() / 1000.0,
                });
                if let Some(s) = session {
                    b["session_id"] = s.into();
                }
                b
            };
            if v.bot {
                let body = touch(&format!("v{i}"), v.start, v.start, None);
                let url = visits.clone();
                let resp =
                    tokio::task::spawn_blocking(move || post_as(&url, body, Some(BOT_AGENT))).await;
                let mut o = outcomes.lock().expect("outcomes");
                o[i].bot = true;
                if let Ok(Ok(r)) = resp {
                    o[i].kind = r["kind"].as_str().unwrap_or("").to_string();
                }
                return;
            }
            let body = touch(&format!("v{i}"), v.start, v.start, None);
            let url = visits.clone();
            let resp = tokio::task::spawn_blocking(move || post(&url, body)).await;
            let Ok(Ok(resp)) = resp else {
                return;
            };
            let session = resp["session_id"].as_str().unwrap_or("").to_string();
            let number = resp["number"].as_str().unwrap_or("").to_string();
            let kind = resp["kind"].as_str().unwrap_or("").to_string();
            let every = resp["keepalive_seconds"].as_f64().unwrap_or(1.0).max(0.2);
            let caller = format!("79{}{i:08}", idx % 10);
            {
                let mut o = outcomes.lock().expect("outcomes");
                o[i].session = session.clone();
                o[i].kind = kind;
                o[i].caller = format!("+{caller}");
            }
            // Page views (the second click among them) while the page is
            // open: each sends the latest click, as the snippet does.
            let views = {
                let (v, session, visits) = (v.clone(), session.clone(), visits.clone());
                let mut times: Vec<f64> = v.views.clone();
                times.extend(v.second_click);
                times.sort_by(f64::total_cmp);
                async move {
                    for t in times {
                        tokio::time::sleep_until(real(t)).await;
                        let clicked = match v.second_click {
                            Some(c) if t >= c => c,
                            _ => v.start,
                        };
                        let body = touch(&v.campaign_at(i, t), clicked, t, Some(&session));
                        let url = visits.clone();
                        let _ = tokio::task::spawn_blocking(move || post(&url, body)).await;
                    }
                }
            };
            // Keep-alives of each open tab while the page is open.
            let end = real(v.start + v.session);
            let keepalive = |tab: u8| {
                let url = format!("{base}{session}/keepalive");
                let body = serde_json::json!({ "site": site, "number": number });
                // A second tab's first keep-alive is a little later.
                let first = every * (1.0 + f64::from(tab) / 3.0);
                async move {
                    if tab < v.tabs {
                        keep_alive(url, body, first, every, end).await;
                    }
                }
            };
            let call_now = v.returns.is_none();
            let call = async {
                if let (Some(at), true) = (v.call_at, call_now) {
                    tokio::time::sleep_until(real(at)).await;
                    let id = format!("sim{idx}-{i}-{}", uuid::Uuid::new_v4().simple());
                    let digits = number.trim_start_matches('+').to_string();
                    outcomes.lock().expect("outcomes")[i].campaign = v.campaign_at(i, at);
                    let code = uac.call(&digits, &caller, &id).await;
                    outcomes.lock().expect("outcomes")[i].call_code = Some(code.unwrap_or(0));
                }
            };
            tokio::join!(views, keepalive(0), keepalive(1), call);
            // The return visit: a new session (the old one is long gone)
            // with the click the snippet kept; the call comes during it.
            let Some((back, len)) = v.returns else {
                return;
            };
            tokio::time::sleep_until(real(back)).await;
            let last_click = v.second_click.unwrap_or(v.start);
            let body = touch(&v.campaign_at(i, back), last_click, back, None);
            let url = visits.clone();
            let Ok(Ok(resp)) = tokio::task::spawn_blocking(move || post(&url, body)).await else {
                return;
            };
            let session = resp["session_id"].as_str().unwrap_or("").to_string();
            let number = resp["number"].as_str().unwrap_or("").to_string();
            outcomes.lock().expect("outcomes")[i].session = session.clone();
            let end = real(back + len);
            let keepalive = keep_alive(
                format!("{base}{session}/keepalive"),
                serde_json::json!({ "site": site, "number": number }),
                every,
                every,
                end,
            );
            let call = async {
                if let Some(at) = v.call_at {
                    tokio::time::sleep_until(real(at)).await;
                    let id = format!("sim{idx}-{i}-r{}", uuid::Uuid::new_v4().simple());
                    let digits = number.trim_start_matches('+').to_string();
                    outcomes.lock().expect("outcomes")[i].campaign = v.campaign_at(i, at);
                    let code = uac.call(&digits, &caller, &id).await;
                    outcomes.lock().expect("outcomes")[i].call_code = Some(code.unwrap_or(0));
                }
            };
            tokio::join!(keepalive, call);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let outcomes = outcomes.lock().expect("outcomes").clone();
    let placed: Vec<&Outcome> = outcomes.iter().filter(|o| o.call_code.is_some()).collect();
    // The router writes a call row when the call ends; wait for all of them.
    let db = dialmark_schemas::ch::client(&w.tracker.config.clickhouse);
    let prefix = format!("+79{}%", idx % 10);
    let mut rows: Vec<CallRow> = Vec::new();
    for _ in 0..300 {
        rows = db
            .query(
                "SELECT caller, session_id, utm_campaign, toString(attribution_confidence) FROM calls FINAL \
                 WHERE caller LIKE ? AND received >= ?",
            )
            .bind(&prefix)
            .bind(from)
            .fetch_all()
            .await?;
        if rows.len() >= placed.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let by_caller: HashMap<&str, &CallRow> = rows.iter().map(|r| (r.caller.as_str(), r)).collect();
    let mut r = PhaseResult {
        label: label.to_string(),
        pool_size,
        visits: outcomes.iter().filter(|o| !o.session.is_empty()).count(),
        without_pool_number: outcomes
            .iter()
            .filter(|o| !o.session.is_empty() && o.kind != "pool")
            .count(),
        calls: placed.len(),
        right: 0,
        wrong_touch: 0,
        wrong_visit: 0,
        contested: rows
            .iter()
            .filter(|r| r.confidence == "recent_contested")
            .count(),
        bots: outcomes.iter().filter(|o| o.bot).count(),
        bot_burned: outcomes
            .iter()
            .filter(|o| o.bot && o.kind == "pool")
            .count(),
        unattributed: 0,
        missing_rows: 0,
        site,
        from,
        to: dialmark_schemas::unix_now() + 1,
    };
    for o in placed {
        match by_caller.get(o.caller.as_str()) {
            None => r.missing_rows += 1,
            Some(c) if c.session_id == o.session && c.utm_campaign == o.campaign => r.right += 1,
            Some(c) if c.session_id == o.session => r.wrong_touch += 1,
            Some(c) if c.session_id.is_empty() => r.unattributed += 1,
            Some(_) => r.wrong_visit += 1,
        }
    }
    eprintln!("{label}: {r:?} accuracy {:.2}%", r.accuracy());
    Ok(r)
}

/// The advisor's view of an observed phase (one row of `pool_health`).
async fn advise(w: &World, p: &PhaseResult) -> anyhow::Result<serde_json::Value> {
    let date = |t: u32| {
        dialmark_schemas::rfc3339(u64::from(t))
            .trim_end_matches('Z')
            .to_string()
    };
    let mut params = dialmark_schemas::reports::Params::new(&date(p.from), &date(p.to), &p.site);
    // The busy quarter-hour and the tracker's cool-down, in accelerated time.
    params.window_seconds = 900 / w.args.speed;
    params.cooldown_seconds = w.tracker.config.tracker.cooldown_seconds;
    let mut out = Vec::new();
    dialmark_tracker::report::run(&w.tracker.config, "pool_health", &params, "json", &mut out)
        .await?;
    let text = String::from_utf8(out)?;
    let row = text
        .lines()
        .next()
        .context("pool_health returned no row for the observed phase")?;
    Ok(serde_json::from_str(row)?)
}

fn markdown(
    a: &Args,
    advice: &serde_json::Value,
    n: usize,
    cooldown: u32,
    rows: &[PhaseResult],
) -> String {
    let speed = f64::from(a.speed);
    let mut s = String::new();
    s.push_str(&format!(
        "Seed {}, {} simulated hour(s) at {:?} visitors/hour ({}% of them crawlers running the \
         script), call probability {}, mean page time {} s with {} page views a visit on average, \
         {}% with a second tab, {}% clicking a second ad mid-visit, {}% coming back about an hour \
         later (their calls come then), {}% of the other calls during the visit \
         and the rest after a Pareto (shape 1.5) delay of mean {} s; time ×{} (tracker hold {} s, \
         attribution window {} s simulated).\n\n",
        a.seed,
        a.visitors_per_hour.len(),
        a.visitors_per_hour,
        a.bots * 100.0,
        a.call_probability,
        a.mean_session_seconds,
        a.mean_page_views,
        a.second_tab * 100.0,
        a.second_click * 100.0,
        a.returning * 100.0,
        a.call_during_session * 100.0,
        a.mean_call_delay_seconds,
        a.speed,
        900,
        1800,
    ));
    let hold = advice["mean_hold_seconds"].as_f64().unwrap_or(0.0);
    s.push_str(&format!(
        "Pool advisor on the observed phase (`pool_health`, demand window = one simulated \
         quarter-hour, cool-down {} s simulated): peak demand {} sessions/quarter-hour, mean hold \
         {:.0} s simulated, offered load {} erlangs, {} of {} calls after their lease ended \
         → **recommended pool size {n}** (predicted attribution loss {} %).\n\n",
        f64::from(cooldown) * speed,
        advice["peak_window_demand"],
        hold * speed,
        advice["offered_load_erlangs"],
        advice["late_calls"],
        advice["calls_on_pool"],
        advice["predicted_loss_percent"],
    ));
    s.push_str("| phase | pool size | visits | visits without a pool number | crawler visits | numbers burned by crawlers | calls | right visit and touch | right visit, older touch | another visit | none | no call row | contested | accuracy |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} % |\n",
            r.label,
            r.pool_size,
            r.visits,
            r.without_pool_number,
            r.bots,
            r.bot_burned,
            r.calls,
            r.right,
            r.wrong_touch,
            r.wrong_visit,
            r.unattributed,
            r.missing_rows,
            r.contested,
            r.accuracy()
        ));
    }
    s
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.speed == 0 || 3600 % args.speed != 0 || 900 % args.speed != 0 {
        bail!("--speed must divide 900 (the tracker's hold) and 3600");
    }
    let speed = args.speed;
    let extra = format!(
        "hold_seconds = {}\nmax_hold_seconds = {}\ncooldown_seconds = {}\nattribution_window_seconds = {}\n\
         leases_per_network_per_minute = 0\n",
        900 / speed,
        (4 * 3600 / speed).max(900 / speed),
        (60 / speed).max(1),
        (1800 / speed).max(1),
    );
    let tracker = TestTracker::start(config("attrsim", single_redis(), &extra).await).await;
    let trunk_port = free_port();
    let trunk = Uas::start(
        trunk_port,
        Scenario::File(
            "uas_reject.xml",
            vec![("CODE", "486".into()), ("REASON", "Busy Here".into())],
        ),
    );
    let router = TestRouter::start(
        &tracker.config,
        RouterOptions {
            trunks: &[("busy", trunk_port)],
            router: "",
            probe: "",
        },
    );
    let uac = Uac::new(format!("127.0.0.1:{}", router.sip_port).parse()?).await?;
    let visitors = generate(&args);
    eprintln!(
        "{} visitors, {} calls",
        visitors.len(),
        visitors.iter().filter(|v| v.call_at.is_some()).count()
    );
    let w = World {
        args: args.clone(),
        tracker,
        uac,
        visitors,
        _router: router,
        _trunk: trunk,
    };
    let observed = phase(&w, 0, "observed", args.observe_pool).await?;
    let advice = advise(&w, &observed).await?;
    let n = advice["recommended_pool_size"]
        .as_u64()
        .context("recommended_pool_size")? as usize;
    eprintln!("advisor: {advice}");
    let mut rows = vec![observed];
    for (i, f) in args.fractions.iter().enumerate() {
        let size = ((n as f64) * f).round().max(1.0) as usize;
        let label = if (*f - 1.0).abs() < 1e-9 {
            "advisor's size".to_string()
        } else {
            format!("{f} × advisor")
        };
        rows.push(phase(&w, i + 1, &label, size).await?);
    }
    let md = markdown(
        &args,
        &advice,
        n,
        w.tracker.config.tracker.cooldown_seconds,
        &rows,
    );
    println!("{md}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(at_n) = rows
        .iter()
        .find(|r| r.pool_size == n && r.label == "advisor's size")
    {
        if at_n.accuracy() < 99.0 {
            bail!(
                "the advisor's pool size {n} reached {:.2} % attribution accuracy (< 99 %)",
                at_n.accuracy()
            );
        }
    }
    Ok(())
}
