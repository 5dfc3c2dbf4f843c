//! An operator's hand on a trunk: drain it (no new calls, its dialogs go
//! on), force it up or down whatever its probes say, or set its priority
//! or weight, until told otherwise. Commands arrive by the HTTP API or the
//! `trunk` CLI command (which calls it), take effect at once without a
//! restart, survive config reloads (and, in a router pair, the takeover:
//! `handover`), and are audited in `trunk_events` with the actor. Pure:
//! [`Overrides::apply`] says what changed.

use std::fmt;
use std::str::FromStr;

/// One command, as typed: `drain`, `resume`, `up`, `down`, `auto`,
/// `priority=N`, `weight=N`, `reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// No new calls; calls in progress go on.
    Drain,
    /// Take new calls again.
    Resume,
    /// Up whatever the probes say.
    ForceUp,
    /// Down whatever the probes say.
    ForceDown,
    /// Up or down as the probes say again.
    Auto,
    Priority(u32),
    Weight(u32),
    /// Forget every override: as configured, probed and judged.
    Reset,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown trunk command {0:?}: use drain, resume, up, down, auto, priority=N, weight=N (1..1000) or reset")]
pub struct BadCommand(pub String);

impl FromStr for Command {
    type Err = BadCommand;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadCommand(s.to_string());
        let num = |v: &str, min: u32| {
            v.parse::<u32>()
                .ok()
                .filter(|n| (min..=1000).contains(n))
                .ok_or_else(bad)
        };
        Ok(match s.split_once('=') {
            Some(("priority", v)) => Command::Priority(num(v, 0)?),
            Some(("weight", v)) => Command::Weight(num(v, 1)?),
            Some(_) => return Err(bad()),
            None => match s {
                "drain" => Command::Drain,
                "resume" => Command::Resume,
                "up" => Command::ForceUp,
                "down" => Command::ForceDown,
                "auto" => Command::Auto,
                "reset" => Command::Reset,
                _ => return Err(bad()),
            },
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Drain => f.write_str("drain"),
            Command::Resume => f.write_str("resume"),
            Command::ForceUp => f.write_str("up"),
            Command::ForceDown => f.write_str("down"),
            Command::Auto => f.write_str("auto"),
            Command::Priority(n) => write!(f, "priority={n}"),
            Command::Weight(n) => write!(f, "weight={n}"),
            Command::Reset => f.write_str("reset"),
        }
    }
}

/// A trunk's operator overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Overrides {
    pub drained: bool,
    /// Forced up (`true`) or down (`false`).
    pub forced: Option<bool>,
    pub priority: Option<u32>,
    pub weight: Option<u32>,
    /// Who set the last one.
    pub actor: String,
}

impl Overrides {
    /// Applies `cmd` by `actor`; whether anything changed.
    pub fn apply(&mut self, cmd: Command, actor: &str) -> bool {
        let before = self.clone();
        match cmd {
            Command::Drain => self.drained = true,
            Command::Resume => self.drained = false,
            Command::ForceUp => self.forced = Some(true),
            Command::ForceDown => self.forced = Some(false),
            Command::Auto => self.forced = None,
            Command::Priority(n) => self.priority = Some(n),
            Command::Weight(n) => self.weight = Some(n),
            Command::Reset => *self = Overrides::default(),
        }
        let changed = *self
            != Overrides {
                actor: before.actor.clone(),
                ..before
            };
        if changed && *self != Overrides::default() {
            self.actor = actor.to_string();
        }
        changed
    }

    /// For the status page: what the operator set, or ''.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.drained {
            parts.push("drained".to_string());
        }
        match self.forced {
            Some(true) => parts.push("forced up".into()),
            Some(false) => parts.push("forced down".into()),
            None => {}
        }
        if let Some(p) = self.priority {
            parts.push(format!("priority {p}"));
        }
        if let Some(w) = self.weight {
            parts.push(format!("weight {w}"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("{} by {}", parts.join(", "), self.actor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_print_back() {
        for text in [
            "drain",
            "resume",
            "up",
            "down",
            "auto",
            "priority=0",
            "weight=5",
            "reset",
        ] {
            assert_eq!(text.parse::<Command>().unwrap().to_string(), text);
        }
        for bad in [
            "",
            "drian",
            "weight=0",
            "weight=x",
            "priority=-1",
            "weight=1001",
            "x=1",
        ] {
            let e = bad.parse::<Command>().unwrap_err();
            assert!(
                e.to_string().contains("unknown trunk command"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn overrides_say_what_changed_and_who() {
        let mut o = Overrides::default();
        assert!(o.apply(Command::Drain, "anna"));
        assert!(!o.apply(Command::Drain, "boris"), "already drained");
        assert_eq!(o.describe(), "drained by anna");
        assert!(o.apply(Command::ForceDown, "boris"));
        assert!(o.apply(Command::Weight(7), "boris"));
        assert_eq!(o.describe(), "drained, forced down, weight 7 by boris");
        assert!(o.apply(Command::Reset, "boris"));
        assert_eq!(o, Overrides::default());
        assert_eq!(o.describe(), "");
    }
}
