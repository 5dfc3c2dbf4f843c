//! Answered calls handed over between the nodes of a pair (`[router.ha]`):
//! at the answer a shard stores what routing the call's in-dialog requests
//! and closing its record take (a [`DialogRecord`]) in Redis, under
//! `dm:dialog:{Call-ID}`, expiring after the longest call; at the call's
//! end the record is deleted. A node that gets an in-dialog request for a
//! Call-ID it does not hold reads the record and adopts the call: it
//! forwards the request by the record's tags and addresses, and at the BYE
//! writes the call's final rows (talk time to that BYE). Calls still
//! ringing are listed per node (`dm:ha:{group}:ringing:{node}`, Call-ID →
//! the call's row at its first ring): the node that takes over from a dead
//! one records those as `node_lost`. The trunk state is kept for the pair
//! too: operators' overrides (drain, forced state, priority, weight;
//! `dm:ha:{group}:overrides`), trunks found down (`dm:ha:{group}:down`)
//! and trunks degraded by their call quality (`dm:ha:{group}:degraded`),
//! all taken over at start. Writes go through
//! a queue that a task drains and retries while Redis is away: signalling
//! never waits for Redis, and a full queue drops (counted) rather than
//! blocks.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use dialmark_schemas::rows::{Call as CallRow, CallAttempt, Disposition};
use dialmark_schemas::store::Redis;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::warn;

use crate::dialog::Leg;
use crate::directory::Directory;
use crate::manual::Overrides;

/// Writes waiting for Redis at most; past it new ones are dropped.
const QUEUE: usize = 65_536;

/// What another node needs to carry an answered call to its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DialogRecord {
    /// The call's row as at the answer (`ended` = 0).
    pub row: CallRow,
    /// The answered attempt's row as at the answer (no talk yet).
    pub attempt: CallAttempt,
    /// When the trunk answered and when its INVITE went out, Unix ms.
    pub answered_ms: u64,
    pub started_ms: u64,
    /// The carrier's address; over TCP, where it listens (its Via).
    pub carrier: SocketAddr,
    pub carrier_tcp: bool,
    /// The trunk that answered.
    pub trunk: SocketAddr,
    pub trunk_tcp: bool,
    /// The From tag of the caller and the To tag of the trunk's 2xx.
    pub carrier_tag: String,
    pub trunk_tag: String,
    /// What a BYE to each side takes (target, route set, From/To, CSeq
    /// at the answer), for hanging an adopted call up at
    /// `router.max_call_seconds`. Absent in records of older nodes.
    #[serde(default)]
    pub caller: Option<Leg>,
    #[serde(default)]
    pub callee: Option<Leg>,
}

impl DialogRecord {
    /// The call's rows closed at `now_ms` (a BYE): talk time to it.
    pub fn closed(&self, now_ms: u64) -> (CallRow, CallAttempt) {
        let talk = now_ms
            .saturating_sub(self.answered_ms)
            .min(u64::from(u32::MAX)) as u32;
        let secs = (now_ms / 1000) as u32;
        let mut row = self.row.clone();
        row.ended = secs;
        row.talk_ms = talk;
        row.version = now_ms;
        let mut attempt = self.attempt.clone();
        attempt.ended = secs;
        attempt.talk_ms = talk;
        attempt.duration_ms = now_ms
            .saturating_sub(self.started_ms)
            .min(u64::from(u32::MAX)) as u32;
        attempt.version = now_ms;
        (row, attempt)
    }
}

fn key(call_id: &str) -> String {
    format!("dm:dialog:{call_id}")
}

enum Op {
    Put {
        call_id: String,
        json: String,
    },
    Del {
        call_id: String,
    },
    /// A call rings (`Some`: its row) or rings no more (`None`).
    Ringing {
        call_id: String,
        json: Option<String>,
    },
    /// A trunk's field in one of the pair's trunk hashes (`None`: gone).
    Trunk {
        hash: TrunkHash,
        trunk: String,
        json: Option<String>,
    },
}

/// The pair's hashes of trunk state, a field per trunk.
#[derive(Debug, Clone, Copy)]
enum TrunkHash {
    /// Operators' overrides (none left: no field).
    Overrides,
    /// Found down (back up: no field).
    Down,
    /// Degraded by its call quality (restored: no field).
    Degraded,
}

/// A trunk the pair's active found down: since when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownTrunk {
    pub since_ms: u64,
    pub reason: String,
}

/// A trunk the pair's active degraded by its call quality: since when,
/// and what tripped it (the breaker's metric and limit, for the recovery).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DegradedTrunk {
    pub since_ms: u64,
    pub metric: String,
    pub limit: f64,
    pub reason: String,
}

/// The trunk state a pair's last active left, by trunk name.
#[derive(Debug, Default)]
pub struct SavedTrunks {
    pub overrides: HashMap<String, Overrides>,
    pub down: HashMap<String, DownTrunk>,
    pub degraded: HashMap<String, DegradedTrunk>,
}

/// The hash of the calls ringing at `node` of `group`.
pub fn ringing_key(group: &str, node: &str) -> String {
    format!("dm:ha:{group}:ringing:{node}")
}

/// The hash of the pair's trunk overrides: trunk → its [`Overrides`].
fn overrides_key(group: &str) -> String {
    format!("dm:ha:{group}:overrides")
}

/// The hash of the pair's trunks found down: trunk → its [`DownTrunk`].
fn down_key(group: &str) -> String {
    format!("dm:ha:{group}:down")
}

/// The hash of the pair's degraded trunks: trunk → its [`DegradedTrunk`].
fn degraded_key(group: &str) -> String {
    format!("dm:ha:{group}:degraded")
}

/// The pair's store of answered calls; cheap to clone.
#[derive(Clone)]
pub struct Handover {
    /// Its Redis connection.
    directory: Directory,
    /// This node's hash of ringing calls.
    ringing: String,
    /// The pair's hashes of trunk overrides, trunks down and degraded.
    overrides: String,
    down: String,
    degraded: String,
    tx: mpsc::Sender<Op>,
}

impl Handover {
    /// Starts the writer task for `node` of the pair `group`; dialog
    /// records live `ttl` (the longest call).
    pub fn start(directory: Directory, ttl: Duration, group: &str, node: &str) -> Handover {
        let (tx, rx) = mpsc::channel(QUEUE);
        let h = Handover {
            directory,
            ringing: ringing_key(group, node),
            overrides: overrides_key(group),
            down: down_key(group),
            degraded: degraded_key(group),
            tx,
        };
        tokio::spawn(h.clone().write(rx, ttl.as_secs().max(1)));
        h
    }

    /// Stores an answered call's record (queued).
    pub fn put(&self, call_id: &str, rec: &DialogRecord) {
        match serde_json::to_string(rec) {
            Ok(json) => self.queue(Op::Put {
                call_id: call_id.to_string(),
                json,
            }),
            Err(e) => warn!(cause = %e, "dialog record not encoded"),
        }
    }

    /// Deletes a call's record at its end (queued).
    pub fn del(&self, call_id: &str) {
        self.queue(Op::Del {
            call_id: call_id.to_string(),
        });
    }

    /// A call rings (its row as at the first ring; queued).
    pub fn ring(&self, call_id: &str, row: &CallRow) {
        match serde_json::to_string(row) {
            Ok(json) => self.queue(Op::Ringing {
                call_id: call_id.to_string(),
                json: Some(json),
            }),
            Err(e) => warn!(cause = %e, "ringing call not encoded"),
        }
    }

    /// A call rings no more: answered or ended (queued).
    pub fn unring(&self, call_id: &str) {
        self.queue(Op::Ringing {
            call_id: call_id.to_string(),
            json: None,
        });
    }

    /// An operator changed a trunk's overrides: kept for the pair (queued).
    pub fn trunk_overrides(&self, trunk: &str, o: &Overrides) {
        let set = (*o != Overrides::default()).then_some(o);
        self.trunk_field(TrunkHash::Overrides, trunk, set);
    }

    /// A trunk went down (`Some`) or came back up (queued).
    pub fn trunk_down(&self, trunk: &str, down: Option<DownTrunk>) {
        self.trunk_field(TrunkHash::Down, trunk, down.as_ref());
    }

    /// A trunk was degraded by its quality (`Some`) or restored (queued).
    pub fn trunk_degraded(&self, trunk: &str, degraded: Option<DegradedTrunk>) {
        self.trunk_field(TrunkHash::Degraded, trunk, degraded.as_ref());
    }

    fn trunk_field<T: Serialize>(&self, hash: TrunkHash, trunk: &str, value: Option<&T>) {
        self.queue(Op::Trunk {
            hash,
            trunk: trunk.to_string(),
            json: value.and_then(|v| serde_json::to_string(v).ok()),
        });
    }

    /// The trunk state the pair's last active left: operators' overrides,
    /// trunks found down and trunks degraded (nothing when Redis does not answer: the node
    /// starts as configured, and probes).
    pub async fn saved_trunks(&self) -> SavedTrunks {
        let Some(mut r) = self.conn().await else {
            warn!("trunk state not read (Redis): starting as configured");
            return SavedTrunks::default();
        };
        SavedTrunks {
            overrides: saved(&mut r, &self.overrides).await,
            down: saved(&mut r, &self.down).await,
            degraded: saved(&mut r, &self.degraded).await,
        }
    }

    /// Takes the calls that were ringing at a dead node, `node_lost` at
    /// `died_ms` (when it was last seen alive): their rows, and their list
    /// gone from Redis. The rows' version is that time too: a call the
    /// dead node closed after it keeps its own row.
    pub async fn lost_ringing(&self, group: &str, node: &str, died_ms: u64) -> Vec<CallRow> {
        let Some(mut r) = self.conn().await else {
            warn!(
                node,
                "the dead node's ringing calls could not be read (Redis)"
            );
            return Vec::new();
        };
        let key = ringing_key(group, node);
        let all: HashMap<String, CallRow> = match read_hash(&mut r, &key).await {
            Ok(m) => m,
            Err(e) => {
                warn!(node, cause = %e, "the dead node's ringing calls could not be read");
                return Vec::new();
            }
        };
        if let Err(e) = redis::cmd("DEL").arg(&key).exec_async(&mut r).await {
            warn!(node, cause = %e, "the dead node's ringing list stays");
        }
        all.into_values()
            .map(|mut row| {
                row.disposition = Disposition::NodeLost;
                row.ended = ((died_ms / 1000) as u32).max(row.received);
                row.version = died_ms;
                row
            })
            .collect()
    }

    fn queue(&self, op: Op) {
        let result = match self.tx.try_send(op) {
            Ok(()) => "queued",
            Err(_) => "dropped",
        };
        metrics::counter!("dialmark_dialog_records_total", "result" => result).increment(1);
    }

    /// The record of `call_id`, when another node stored one (`None`
    /// also when Redis does not answer within a second: the request then
    /// gets 481, and its retransmission asks again).
    pub async fn load(&self, call_id: &str) -> Option<DialogRecord> {
        let mut r = self.conn().await?;
        let mut get = redis::cmd("GET");
        get.arg(key(call_id));
        let json = tokio::time::timeout(
            Duration::from_secs(1),
            get.query_async::<Option<String>>(&mut r),
        )
        .await
        .ok()?
        .ok()??;
        serde_json::from_str(&json).ok()
    }

    async fn conn(&self) -> Option<Redis> {
        self.directory.conn().await
    }

    /// Drains the queue in order; a write Redis refuses is retried (with
    /// the ones behind it) after a pause.
    async fn write(self, mut rx: mpsc::Receiver<Op>, ttl_s: u64) {
        let mut backlog: VecDeque<Op> = VecDeque::new();
        loop {
            if backlog.is_empty() {
                match rx.recv().await {
                    Some(op) => backlog.push_back(op),
                    None => return,
                }
            }
            // Bounded: past QUEUE waiting writes, new ones are dropped at
            // the channel (counted), not held in memory.
            while backlog.len() < QUEUE {
                match rx.try_recv() {
                    Ok(op) => backlog.push_back(op),
                    Err(_) => break,
                }
            }
            metrics::gauge!("dialmark_dialog_records_backlog").set(backlog.len() as f64);
            let Some(mut r) = self.conn().await else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            while let Some(op) = backlog.front() {
                let cmd = match op {
                    Op::Put { call_id, json } => {
                        let mut c = redis::cmd("SET");
                        c.arg(key(call_id)).arg(json).arg("EX").arg(ttl_s);
                        c
                    }
                    Op::Del { call_id } => {
                        let mut c = redis::cmd("DEL");
                        c.arg(key(call_id));
                        c
                    }
                    Op::Ringing { call_id, json } => hash_field(&self.ringing, call_id, json),
                    Op::Trunk { hash, trunk, json } => {
                        let key = match hash {
                            TrunkHash::Overrides => &self.overrides,
                            TrunkHash::Down => &self.down,
                            TrunkHash::Degraded => &self.degraded,
                        };
                        hash_field(key, trunk, json)
                    }
                };
                match tokio::time::timeout(Duration::from_secs(2), cmd.exec_async(&mut r)).await {
                    Ok(Ok(())) => {
                        backlog.pop_front();
                    }
                    failed => {
                        let cause = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".into(),
                        };
                        warn!(
                            cause,
                            backlog = backlog.len(),
                            "dialog records not written; retrying"
                        );
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    }
}

/// Sets (`Some`) or deletes (`None`) one field of a hash.
fn hash_field(key: &str, field: &str, value: &Option<String>) -> redis::Cmd {
    let mut c = redis::cmd(if value.is_some() { "HSET" } else { "HDEL" });
    c.arg(key).arg(field);
    if let Some(v) = value {
        c.arg(v);
    }
    c
}

/// One hash of the trunk state, or none when Redis fails (the node then
/// starts as configured).
async fn saved<T: serde::de::DeserializeOwned>(r: &mut Redis, key: &str) -> HashMap<String, T> {
    read_hash(r, key).await.unwrap_or_else(|e| {
        warn!(key, cause = %e, "trunk state not read: starting as configured");
        HashMap::new()
    })
}

/// A hash of JSON values, each decoded (a field that does not decode is
/// left out).
async fn read_hash<T: serde::de::DeserializeOwned>(
    r: &mut Redis,
    key: &str,
) -> redis::RedisResult<HashMap<String, T>> {
    let all: HashMap<String, String> = redis::cmd("HGETALL").arg(key).query_async(r).await?;
    Ok(all
        .into_iter()
        .filter_map(|(field, json)| Some((field, serde_json::from_str(&json).ok()?)))
        .collect())
}
