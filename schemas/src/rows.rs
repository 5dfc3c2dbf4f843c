//! Row types of the ClickHouse tables (see `migrations/`), in column order,
//! serialised as RowBinary by the `clickhouse` crate. `DateTime` columns are
//! `u32` Unix seconds; `Enum8` columns are `#[repr(i8)]` enums whose values
//! match the DDL.

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use serde_repr::{Deserialize_repr, Serialize_repr};
use uuid::Uuid;

/// A table and its row type: lets the sink insert any row without naming
/// the table at each call site.
pub trait Table:
    clickhouse::RowOwned + clickhouse::RowWrite + clickhouse::RowRead + Send + Sync
{
    const TABLE: &'static str;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize_repr, Deserialize_repr)]
#[repr(i8)]
pub enum NumberKind {
    None = 0,
    Pool = 1,
    Overflow = 2,
    Static = 3,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct Visit {
    #[serde(with = "clickhouse::serde::uuid")]
    pub visit_id: Uuid,
    pub ts: u32,
    pub site: String,
    pub pool: String,
    pub session_id: String,
    pub visitor_id: String,
    pub number: String,
    pub number_kind: NumberKind,
    pub url: String,
    pub referrer: String,
    pub utm_source: String,
    pub utm_medium: String,
    pub utm_campaign: String,
    pub utm_term: String,
    pub utm_content: String,
    pub gclid: String,
    pub yclid: String,
    pub fbclid: String,
    pub msclkid: String,
    pub ip: String,
    pub country: String,
    pub region: String,
    pub city: String,
    pub user_agent: String,
    pub gbraid: String,
    pub wbraid: String,
    pub ym_uid: String,
    pub channel: String,
    pub touch_ts: u32,
    pub first_touch_ts: u32,
    pub first_channel: String,
    pub first_utm_source: String,
    pub first_utm_medium: String,
    pub first_utm_campaign: String,
    /// Why the visit got the site's own number without a lease:
    /// `crawler`, `webdriver`, `network_rate`; '' otherwise.
    pub no_lease: String,
}

impl Table for Visit {
    const TABLE: &'static str = "visits";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize_repr, Deserialize_repr)]
#[repr(i8)]
pub enum LeaseEvent {
    Lease = 1,
    Reclaim = 2,
    Overflow = 3,
    Release = 4,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct NumberLease {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    pub ts: u32,
    pub site: String,
    pub pool: String,
    pub number: String,
    pub session_id: String,
    pub visitor_id: String,
    pub event: LeaseEvent,
    pub expires_at: u32,
}

impl Table for NumberLease {
    const TABLE: &'static str = "number_leases";
}

/// Status of a number in its lifecycle, as stored in Redis routing records
/// and in `calls.number_status` / `number_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize_repr, Deserialize_repr)]
#[repr(i8)]
pub enum NumberStatus {
    Unknown = 0,
    Active = 1,
    Quarantine = 2,
    Stock = 3,
}

impl NumberStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NumberStatus::Unknown => "unknown",
            NumberStatus::Active => "active",
            NumberStatus::Quarantine => "quarantine",
            NumberStatus::Stock => "stock",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => NumberStatus::Active,
            "quarantine" => NumberStatus::Quarantine,
            "stock" => NumberStatus::Stock,
            "unknown" | "none" => NumberStatus::Unknown,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize_repr, Deserialize_repr)]
#[repr(i8)]
pub enum Disposition {
    Answered = 1,
    Missed = 2,
    Busy = 3,
    Abandoned = 4,
    Failed = 5,
    RejectedQuarantine = 6,
    RejectedStock = 7,
    RejectedUnknown = 8,
    RejectedUntrusted = 9,
    Timeout = 10,
    /// Refused unrouted because the node was over its memory budget or
    /// behind on its queue (503 + Retry-After).
    Overload = 11,
    /// The node died while the call was up; closed at its restart with
    /// what was known.
    NodeLost = 12,
}

impl Disposition {
    /// The name used in ClickHouse (Enum8) and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Answered => "answered",
            Disposition::Missed => "missed",
            Disposition::Busy => "busy",
            Disposition::Abandoned => "abandoned",
            Disposition::Failed => "failed",
            Disposition::RejectedQuarantine => "rejected_quarantine",
            Disposition::RejectedStock => "rejected_stock",
            Disposition::RejectedUnknown => "rejected_unknown",
            Disposition::RejectedUntrusted => "rejected_untrusted",
            Disposition::Timeout => "timeout",
            Disposition::Overload => "overload",
            Disposition::NodeLost => "node_lost",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize_repr, Deserialize_repr)]
#[repr(i8)]
pub enum Attribution {
    #[default]
    None = 0,
    LiveLease = 1,
    RecentLease = 2,
    Static = 3,
    Overflow = 4,
}

/// How sure the call's lease attribution is (`calls.attribution_confidence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize_repr, Deserialize_repr)]
#[repr(i8)]
pub enum Confidence {
    /// No lease: not attributed, or a static or overflow number.
    #[default]
    None = 0,
    /// The number was leased at the call.
    Live = 1,
    /// The lease ended within the window and no other lease of the number did.
    RecentSole = 2,
    /// The lease ended within the window, and so did another lease of the
    /// number: either visitor may be calling.
    RecentContested = 3,
}

impl Confidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::None => "none",
            Confidence::Live => "live",
            Confidence::RecentSole => "recent_sole",
            Confidence::RecentContested => "recent_contested",
        }
    }
}

impl Attribution {
    /// The name used in ClickHouse (Enum8).
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::None => "none",
            Attribution::LiveLease => "live_lease",
            Attribution::RecentLease => "recent_lease",
            Attribution::Static => "static",
            Attribution::Overflow => "overflow",
        }
    }
}

#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct Call {
    #[serde(with = "clickhouse::serde::uuid")]
    pub call_id: Uuid,
    pub sip_call_id: String,
    pub received: u32,
    pub answered: u32,
    pub ended: u32,
    pub ring_ms: u32,
    pub talk_ms: u32,
    pub caller: String,
    pub number: String,
    pub number_status: NumberStatus,
    pub site: String,
    pub pool: String,
    pub disposition: Disposition,
    pub final_code: u16,
    pub attempts: u8,
    pub final_trunk: String,
    pub destination: String,
    pub attribution: Attribution,
    pub session_id: String,
    pub visitor_id: String,
    pub source_label: String,
    pub utm_source: String,
    pub utm_medium: String,
    pub utm_campaign: String,
    pub utm_term: String,
    pub utm_content: String,
    pub gclid: String,
    pub yclid: String,
    pub referrer: String,
    pub landing_url: String,
    pub country: String,
    pub region: String,
    pub city: String,
    /// The writer's clock (ms) when the row was made: of two rows of one
    /// call, the newer wins (an answered call's first row has `ended` = 0).
    #[serde(default)]
    pub version: u64,
    pub gbraid: String,
    pub wbraid: String,
    pub fbclid: String,
    pub msclkid: String,
    pub ym_uid: String,
    pub channel: String,
    pub touch_ts: u32,
    pub first_touch_ts: u32,
    pub first_channel: String,
    pub first_utm_source: String,
    pub first_utm_medium: String,
    pub first_utm_campaign: String,
    pub attribution_confidence: Confidence,
}

impl Table for Call {
    const TABLE: &'static str = "calls";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize_repr, Deserialize_repr)]
#[repr(i8)]
pub enum Outcome {
    Answered = 1,
    Busy = 2,
    NoAnswer = 3,
    Rejected = 4,
    Timeout = 5,
    TransportError = 6,
    Canceled = 7,
    /// The node gave up on the attempt before any provisional reply; one
    /// came later and got the CANCEL then.
    CancelledLate = 8,
    /// The node gave up on the attempt; its trunk answered later and got
    /// ACK and BYE.
    AnsweredLateReleased = 9,
}

#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct CallAttempt {
    #[serde(with = "clickhouse::serde::uuid")]
    pub call_id: Uuid,
    pub attempt: u8,
    pub sip_call_id: String,
    pub trunk: String,
    pub destination: String,
    pub started: u32,
    pub ended: u32,
    pub pdd_ms: u32,
    pub answer_ms: u32,
    pub talk_ms: u32,
    pub final_code: u16,
    pub reason: String,
    pub outcome: Outcome,
    pub failover: u8,
    /// The writer's clock (ms) when the row was made: a rewrite after a
    /// late reply wins over the first row.
    #[serde(default)]
    pub version: u64,
    /// INVITE sent -> the attempt's end, ms.
    #[serde(default)]
    pub duration_ms: u32,
    /// The call's site ('' for a number of no site).
    #[serde(default)]
    pub site: String,
}

impl Table for CallAttempt {
    const TABLE: &'static str = "call_attempts";
}

/// INVITEs from one untrusted source in one minute.
#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct UntrustedSource {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    pub minute: u32,
    pub source: String,
    pub requests: u32,
    /// The `calls` row of the minute's first INVITE from the source.
    #[serde(with = "clickhouse::serde::uuid")]
    pub sample_call_id: Uuid,
    pub last_number: String,
    pub last_caller: String,
}

impl Table for UntrustedSource {
    const TABLE: &'static str = "untrusted_sources";
}

/// One pool's use at one moment (`pool_samples`).
#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolSample {
    pub ts: u32,
    pub pool: String,
    pub site: String,
    pub size: u32,
    pub leased: u32,
    pub free: u32,
}

impl Table for PoolSample {
    const TABLE: &'static str = "pool_samples";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize_repr, Deserialize_repr)]
#[repr(i8)]
pub enum TrunkState {
    Up = 1,
    Down = 2,
    /// Up (its OPTIONS answer) but failing real calls: new calls try the
    /// other trunks of its group first (quality rerouting).
    Degraded = 3,
    /// No new calls, by an operator; its dialogs go on.
    Drained = 4,
}

impl TrunkState {
    /// The name in ClickHouse's enum.
    pub fn as_str(self) -> &'static str {
        match self {
            TrunkState::Up => "up",
            TrunkState::Down => "down",
            TrunkState::Degraded => "degraded",
            TrunkState::Drained => "drained",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize_repr, Deserialize_repr)]
#[repr(i8)]
pub enum TrunkCause {
    Probe = 1,
    Passive = 2,
    Config = 3,
    /// The trunk's NER or PDD over a window (`metric`, `value`, `baseline`).
    Quality = 4,
    /// An operator's command (`actor`).
    Manual = 5,
}

impl TrunkCause {
    /// The name in ClickHouse's enum.
    pub fn as_str(self) -> &'static str {
        match self {
            TrunkCause::Probe => "probe",
            TrunkCause::Passive => "passive",
            TrunkCause::Config => "config",
            TrunkCause::Quality => "quality",
            TrunkCause::Manual => "manual",
        }
    }
}

#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct TrunkEvent {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    pub ts: u32,
    pub trunk: String,
    pub trunk_group: String,
    pub state: TrunkState,
    pub previous: TrunkState,
    pub cause: TrunkCause,
    pub reason: String,
    /// What a quality change was judged on: `ner`, `pdd_p95_ms` ('' else).
    #[serde(default)]
    pub metric: String,
    /// The metric over the window judged.
    #[serde(default)]
    pub value: f64,
    /// What it was compared with: the threshold or the trunk's baseline.
    #[serde(default)]
    pub baseline: f64,
    /// New calls that went to another trunk first while this one was
    /// degraded or drained (on the event that ends that state).
    #[serde(default)]
    pub shifted_calls: u64,
    /// Who: `node`, or the operator named in a manual command.
    #[serde(default)]
    pub actor: String,
}

impl TrunkEvent {
    /// An event by the node itself, without quality numbers.
    pub fn new(
        ts: u32,
        trunk: &str,
        group: &str,
        state: TrunkState,
        previous: TrunkState,
        cause: TrunkCause,
        reason: String,
    ) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            ts,
            trunk: trunk.to_string(),
            trunk_group: group.to_string(),
            state,
            previous,
            cause,
            reason,
            metric: String::new(),
            value: 0.0,
            baseline: 0.0,
            shifted_calls: 0,
            actor: "node".into(),
        }
    }
}

impl Table for TrunkEvent {
    const TABLE: &'static str = "trunk_events";
}

#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct NumberEvent {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    pub ts: u32,
    pub number: String,
    pub site: String,
    pub pool: String,
    /// `Unknown` (0) stands for "none": the number was new.
    pub from_status: NumberStatus,
    pub to_status: NumberStatus,
    pub actor: String,
    pub reason: String,
    /// Microseconds since the epoch: orders events within one second.
    pub ts_us: u64,
}

impl Table for NumberEvent {
    const TABLE: &'static str = "number_events";
}
