//! The report SQL of `schemas/reports/`, embedded, and the one way to fill
//! its placeholders: `{from}` / `{to}` become `toDateTime('…')` from a
//! strictly checked date, `{site}`, `{conversion}` and `{call_url}` become
//! escaped string literals, `{window}`, `{cooldown}` and `{min_talk}`
//! checked integers. Values never reach the SQL any other way.

use thiserror::Error;

/// Every report: name and SQL text.
pub const REPORTS: &[(&str, &str)] = &[
    ("campaigns", include_str!("../reports/campaigns.sql")),
    ("missed_calls", include_str!("../reports/missed_calls.sql")),
    ("conversion", include_str!("../reports/conversion.sql")),
    ("pool_health", include_str!("../reports/pool_health.sql")),
    (
        "trunk_quality",
        include_str!("../reports/trunk_quality.sql"),
    ),
    ("quarantine", include_str!("../reports/quarantine.sql")),
    (
        "lost_call_audit",
        include_str!("../reports/lost_call_audit.sql"),
    ),
    (
        "google_ads_export",
        include_str!("../reports/google_ads_export.sql"),
    ),
    (
        "yandex_export",
        include_str!("../reports/yandex_export.sql"),
    ),
];

/// Whether a report's SQL can be limited to one site (it filters on
/// `{site}` outside its comments); the others cover the whole node.
pub fn per_site(sql: &str) -> bool {
    sql.lines()
        .filter_map(|l| l.split("--").next())
        .any(|l| l.contains("{site}"))
}

/// How the reports limit themselves to `{site}` ('' = every site). Filled
/// as what it means (`1`, or `site = '…'`): ClickHouse 18.16 does not use
/// the tables' `(site, …)` primary key through the constant OR, and a
/// report for one site then reads every site's rows.
pub const SITE_FILTER: &str = "({site} = '' OR site = {site})";

/// Conversion name used by `google_ads_export` when none is given.
pub const DEFAULT_CONVERSION: &str = "dialmark call";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("unknown report {0:?}; known: {1}")]
    Unknown(String, String),
    #[error("{field}: {value:?} is not a date (YYYY-MM-DD or YYYY-MM-DD hh:mm:ss, UTC)")]
    BadDate { field: &'static str, value: String },
    #[error("window: {0} seconds is out of range (1 to 86400)")]
    BadWindow(u32),
    #[error("cooldown: {0} seconds is out of range (0 to 86400)")]
    BadCooldown(u32),
    #[error("min-talk: {0} seconds is out of range (0 to 86400)")]
    BadMinTalk(u32),
    #[error("call-url: {0:?} is not an http:// or https:// URL prefix")]
    BadCallUrl(String),
}

/// Parameters of a report run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Start (inclusive), UTC.
    pub from: String,
    /// End (exclusive), UTC.
    pub to: String,
    /// Site id; empty means every site.
    pub site: String,
    pub conversion: String,
    /// Demand window of `pool_health` in seconds (900: the busy quarter-hour).
    pub window_seconds: u32,
    /// `tracker.cooldown_seconds`, for `pool_health`'s advisor.
    pub cooldown_seconds: u32,
    /// `google_ads_export`: calls talked at least this long count as the
    /// conversion (each conversion action has its own threshold).
    pub min_talk_seconds: u32,
    /// `yandex_export`: CallTrackerURL is this prefix + the call id (a link
    /// to the call in the marketers' app); empty leaves it empty.
    pub call_url: String,
}

impl Params {
    /// `[from, to)` for `site`, with the default conversion and window.
    pub fn new(from: &str, to: &str, site: &str) -> Self {
        Self {
            from: from.into(),
            to: to.into(),
            site: site.into(),
            conversion: String::new(),
            window_seconds: DEFAULT_WINDOW_SECONDS,
            cooldown_seconds: DEFAULT_COOLDOWN_SECONDS,
            min_talk_seconds: 0,
            call_url: String::new(),
        }
    }
}

/// `pool_health`'s demand window unless asked otherwise: the busy
/// quarter-hour (demand within an hour is not flat; sizing on the hour's
/// mean under-sizes the pool for its busiest minutes).
pub const DEFAULT_WINDOW_SECONDS: u32 = 900;

/// `tracker.cooldown_seconds`'s default, for runs without a tracker config.
pub const DEFAULT_COOLDOWN_SECONDS: u32 = 60;

/// A SQL string literal: `'…'` with `\` and `'` escaped.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `toDateTime('YYYY-MM-DD hh:mm:ss', 'UTC')` from a checked date or date-time.
pub fn datetime(field: &'static str, v: &str) -> Result<String, ReportError> {
    let bad = || ReportError::BadDate {
        field,
        value: v.to_string(),
    };
    let full = if v.len() == 10 {
        format!("{v} 00:00:00")
    } else {
        v.to_string()
    };
    let b = full.as_bytes();
    if b.len() != 19 {
        return Err(bad());
    }
    for (i, c) in b.iter().enumerate() {
        let ok = match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ' || *c == b'T',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        };
        if !ok {
            return Err(bad());
        }
    }
    let num = |r: std::ops::Range<usize>| full[r].parse::<u32>().unwrap_or(99);
    if !(1..=12).contains(&num(5..7))
        || !(1..=31).contains(&num(8..10))
        || num(11..13) > 23
        || num(14..16) > 59
        || num(17..19) > 59
    {
        return Err(bad());
    }
    Ok(format!("toDateTime('{}', 'UTC')", full.replace('T', " ")))
}

/// The SQL of report `name` with its placeholders filled.
pub fn render(name: &str, p: &Params) -> Result<String, ReportError> {
    let sql = REPORTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| {
            ReportError::Unknown(
                name.to_string(),
                REPORTS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })?;
    if !(1..=86_400).contains(&p.window_seconds) {
        return Err(ReportError::BadWindow(p.window_seconds));
    }
    if p.cooldown_seconds > 86_400 {
        return Err(ReportError::BadCooldown(p.cooldown_seconds));
    }
    if p.min_talk_seconds > 86_400 {
        return Err(ReportError::BadMinTalk(p.min_talk_seconds));
    }
    if !(p.call_url.is_empty()
        || ((p.call_url.starts_with("http://") || p.call_url.starts_with("https://"))
            && !p
                .call_url
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())))
    {
        return Err(ReportError::BadCallUrl(p.call_url.clone()));
    }
    let conversion = if p.conversion.is_empty() {
        DEFAULT_CONVERSION
    } else {
        &p.conversion
    };
    let site_filter = if p.site.is_empty() {
        "1".to_string()
    } else {
        format!("site = {}", quote(&p.site))
    };
    Ok(sql
        .replace(SITE_FILTER, &site_filter)
        .replace("{from}", &datetime("from", &p.from)?)
        .replace("{to}", &datetime("to", &p.to)?)
        .replace("{site}", &quote(&p.site))
        .replace("{conversion}", &quote(conversion))
        .replace("{window}", &p.window_seconds.to_string())
        .replace("{cooldown}", &p.cooldown_seconds.to_string())
        .replace("{min_talk}", &p.min_talk_seconds.to_string())
        .replace("{call_url}", &quote(&p.call_url)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_report_file_is_listed() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/reports");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .map(|n| n.trim_end_matches(".sql").to_string())
            .collect();
        files.sort();
        let mut listed: Vec<String> = REPORTS.iter().map(|(n, _)| n.to_string()).collect();
        listed.sort();
        assert_eq!(files, listed);
    }

    #[test]
    fn the_site_filter_is_filled_as_what_it_means() {
        let mut p = Params::new("2026-11-01", "2026-12-01", "sh'op");
        let one = render("campaigns", &p).unwrap();
        assert!(one.contains("site = 'sh\\'op'"), "{one}");
        assert!(!one.contains("OR site ="), "{one}");
        p.site = String::new();
        let all = render("campaigns", &p).unwrap();
        assert!(
            !all.contains("site = ''") && !all.contains("OR site ="),
            "{all}"
        );
        for (name, sql) in REPORTS {
            let code: String = sql
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            assert_eq!(
                code.matches("{site}").count(),
                2 * code.matches(SITE_FILTER).count(),
                "{name}: every {{site}} in the SQL is in the site filter"
            );
        }
    }

    #[test]
    fn only_trunk_quality_covers_the_whole_node() {
        let node_wide: Vec<&str> = REPORTS
            .iter()
            .filter(|(_, sql)| !per_site(sql))
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(node_wide, ["trunk_quality"]);
    }

    #[test]
    fn placeholders_are_filled_safely() {
        let mut p = Params::new("2026-11-01", "2026-11-23 12:00:00", "x' OR 1=1 --\\");
        for (name, _) in REPORTS {
            let sql = render(name, &p).unwrap();
            assert!(
                !sql.contains("{from}")
                    && !sql.contains("{to}")
                    && !sql.contains("{site}")
                    && !sql.contains("{conversion}")
                    && !sql.contains("{window}")
                    && !sql.contains("{cooldown}")
                    && !sql.contains("{min_talk}")
                    && !sql.contains("{call_url}"),
                "{name}"
            );
        }
        assert_eq!(quote("x' OR 1=1 --\\"), "'x\\' OR 1=1 --\\\\'");
        assert_eq!(
            datetime("from", "2026-11-01").unwrap(),
            "toDateTime('2026-11-01 00:00:00', 'UTC')"
        );
        for bad in [
            "2026-13-01",
            "yesterday",
            "2026-11-01'); DROP",
            "2026-11-01 25:00:00",
            "",
        ] {
            assert!(datetime("from", bad).is_err(), "{bad}");
        }
        assert!(matches!(render("nope", &p), Err(ReportError::Unknown(..))));
        p.window_seconds = 0;
        assert_eq!(render("pool_health", &p), Err(ReportError::BadWindow(0)));
        p.window_seconds = 900;
        p.cooldown_seconds = 86_401;
        assert_eq!(
            render("pool_health", &p),
            Err(ReportError::BadCooldown(86_401))
        );
        p.cooldown_seconds = 60;
        p.min_talk_seconds = 86_401;
        assert_eq!(
            render("google_ads_export", &p),
            Err(ReportError::BadMinTalk(86_401))
        );
        p.min_talk_seconds = 30;
        assert!(render("google_ads_export", &p)
            .unwrap()
            .contains(">= 30 * 1000"));
        for bad in ["ftp://x/", "https://a b/", "javascript:alert(1)"] {
            p.call_url = bad.into();
            assert!(
                matches!(render("yandex_export", &p), Err(ReportError::BadCallUrl(_))),
                "{bad}"
            );
        }
        p.call_url = "https://app.example/calls/".into();
        assert!(render("yandex_export", &p)
            .unwrap()
            .contains("'https://app.example/calls/'"));
    }
}
