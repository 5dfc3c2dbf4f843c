//! What brought a visitor: the channel of a touch (its utm tags, click ids
//! and referrer) by the rules documented in `schemas/README.md`
//! ("Channels"), the referrers that never count as a source (the site's
//! own hosts, payment gateways, sign-in pages), and a touch's age.
//!
//! The tracker stamps the channel on the visit and on the lease; the router
//! copies the lease's onto the call. Pure functions: no I/O, no clock.

use serde::Deserialize;

/// Longest stored string field; longer ones (huge URLs) are cut, not refused.
pub const MAX_FIELD: usize = 2048;

/// One touch as the snippet sends it: the page it landed on, the referrer,
/// utm tags and click ids. A visit carries its current touch (flattened
/// into the body) and the visitor's first touch (`first_touch`).
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct Touch {
    pub landing_url: String,
    pub referrer: String,
    pub utm_source: String,
    pub utm_medium: String,
    pub utm_campaign: String,
    pub utm_term: String,
    pub utm_content: String,
    pub gclid: String,
    pub gbraid: String,
    pub wbraid: String,
    pub yclid: String,
    pub fbclid: String,
    pub msclkid: String,
    /// Seconds since the touch by the client's clock (milliseconds as
    /// decimals); absent: now.
    pub touch_age: Option<f64>,
}

impl Touch {
    /// The utm tags and click ids, by name.
    pub fn tags(&self) -> [(&'static str, &str); 11] {
        [
            ("utm_source", &self.utm_source),
            ("utm_medium", &self.utm_medium),
            ("utm_campaign", &self.utm_campaign),
            ("utm_term", &self.utm_term),
            ("utm_content", &self.utm_content),
            ("gclid", &self.gclid),
            ("gbraid", &self.gbraid),
            ("wbraid", &self.wbraid),
            ("yclid", &self.yclid),
            ("fbclid", &self.fbclid),
            ("msclkid", &self.msclkid),
        ]
    }

    fn tag_mut(&mut self, name: &str) -> Option<&mut String> {
        Some(match name {
            "utm_source" => &mut self.utm_source,
            "utm_medium" => &mut self.utm_medium,
            "utm_campaign" => &mut self.utm_campaign,
            "utm_term" => &mut self.utm_term,
            "utm_content" => &mut self.utm_content,
            "gclid" => &mut self.gclid,
            "gbraid" => &mut self.gbraid,
            "wbraid" => &mut self.wbraid,
            "yclid" => &mut self.yclid,
            "fbclid" => &mut self.fbclid,
            "msclkid" => &mut self.msclkid,
            _ => return None,
        })
    }

    /// A touch the client sent as a nested object (`first_touch`,
    /// `previous_touch`), fields cut; `None` when absent or malformed
    /// (never an error: the visit still gets its number).
    pub fn from_value(v: Option<serde_json::Value>) -> Option<Touch> {
        let mut t: Touch = serde_json::from_value(v?).ok()?;
        t.cut_long_fields();
        Some(t)
    }

    pub fn is_tagged(&self) -> bool {
        self.tags().iter().any(|(_, v)| !v.is_empty())
    }

    /// The snippet sends the tags it read from the page; a client that
    /// sends only the URL (a server-side integration, a hand-written
    /// beacon) gets them read from `url` here. Only when it sent none: a
    /// client's own values are never mixed with the URL's.
    pub fn tags_from_url(&mut self, url: &str) {
        if self.is_tagged() {
            return;
        }
        let Some((_, query)) = url.split_once('?') else {
            return;
        };
        let query = query.split('#').next().unwrap_or_default().to_string();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            // A tag given twice: the first one counts.
            if let Some(slot) = self.tag_mut(&k).filter(|s| s.is_empty()) {
                *slot = v.into_owned();
            }
        }
    }

    /// A touch older than the maximum age no longer counts: the visit is
    /// direct from here on.
    pub fn forget(&mut self) {
        *self = Touch::default();
    }

    /// Cuts over-long fields: a visit with a huge URL still gets a number.
    pub fn cut_long_fields(&mut self) {
        cut(&mut self.landing_url);
        cut(&mut self.referrer);
        for name in self.tags().map(|(k, _)| k) {
            if let Some(v) = self.tag_mut(name) {
                cut(v);
            }
        }
    }

    /// The channel, with the referrer counted only when the site does not
    /// ignore it (`ignored` gets the referrer's host).
    pub fn channel(&self, ignored: impl Fn(&str) -> bool) -> Channel {
        let host = host_of(&self.referrer);
        channel(&Signals {
            utm_source: &self.utm_source,
            utm_medium: &self.utm_medium,
            referrer_host: if ignored(&host) { "" } else { &host },
            paid_click: [
                &self.gclid,
                &self.gbraid,
                &self.wbraid,
                &self.yclid,
                &self.msclkid,
            ]
            .iter()
            .any(|v| !v.is_empty()),
            fbclid: !self.fbclid.is_empty(),
        })
    }
}

pub fn cut(s: &mut String) {
    if s.len() > MAX_FIELD {
        let mut end = MAX_FIELD;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// A marketing channel. Stored as its [`Channel::as_str`] name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    PaidSearch,
    OrganicSearch,
    PaidSocial,
    Social,
    Email,
    Referral,
    Direct,
    Offline,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::PaidSearch => "paid_search",
            Channel::OrganicSearch => "organic_search",
            Channel::PaidSocial => "paid_social",
            Channel::Social => "social",
            Channel::Email => "email",
            Channel::Referral => "referral",
            Channel::Direct => "direct",
            Channel::Offline => "offline",
        }
    }
}

/// The source fields of one touch that decide its channel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Signals<'a> {
    pub utm_source: &'a str,
    pub utm_medium: &'a str,
    /// Host of the referrer, already cleared when it is ignored.
    pub referrer_host: &'a str,
    /// Any paid-search click id: gclid, gbraid, wbraid, yclid, msclkid.
    pub paid_click: bool,
    /// Facebook's fbclid: on organic shares as well as on ads.
    pub fbclid: bool,
}

/// Brands whose search pages send organic traffic, matched as a label of
/// the referrer host (`www.google.co.uk`) or a `utm_source` value.
const SEARCH_BRANDS: &[&str] = &[
    "google",
    "yandex",
    "bing",
    "duckduckgo",
    "yahoo",
    "baidu",
    "ecosia",
    "rambler",
];
/// Search hosts whose brand is not a label of their own.
const SEARCH_HOSTS: &[&str] = &["ya.ru", "go.mail.ru", "search.mail.ru", "search.brave.com"];
const SOCIAL_BRANDS: &[&str] = &[
    "facebook",
    "instagram",
    "vkontakte",
    "odnoklassniki",
    "telegram",
    "twitter",
    "linkedin",
    "youtube",
    "tiktok",
    "pinterest",
    "reddit",
    "whatsapp",
];
const SOCIAL_HOSTS: &[&str] = &[
    "vk.com", "vk.ru", "ok.ru", "t.me", "t.co", "x.com", "fb.com", "dzen.ru",
];
/// `utm_source` values of social networks besides the brands.
const SOCIAL_SOURCES: &[&str] = &["vk", "ok", "fb", "ig", "tg", "x", "dzen"];
/// `utm_source` values of search engines besides the brands.
const SEARCH_SOURCES: &[&str] = &["mail.ru", "mailru", "ya"];
/// Webmail hosts: a click in a mail is email, not search or referral.
const MAIL_HOSTS: &[&str] = &[
    "mail.google.com",
    "mail.yandex.ru",
    "mail.yandex.com",
    "e.mail.ru",
    "outlook.live.com",
    "outlook.office.com",
    "mail.yahoo.com",
];

const PAID_SOCIAL_MEDIUMS: &[&str] = &[
    "paid_social",
    "paidsocial",
    "paid-social",
    "social_paid",
    "social-paid",
    "socialpaid",
];
/// Paid mediums; display and banner ads count as paid search (the channel
/// list has no display channel) unless their source is a social network.
const PAID_MEDIUMS: &[&str] = &[
    "cpc",
    "ppc",
    "paid",
    "paidsearch",
    "paid_search",
    "paid-search",
    "cpm",
    "cpv",
    "cpa",
    "display",
    "banner",
    "retargeting",
];
const SOCIAL_MEDIUMS: &[&str] = &[
    "social",
    "social-network",
    "social_network",
    "social-media",
    "social_media",
    "sm",
    "smm",
];
const EMAIL_MEDIUMS: &[&str] = &["email", "e-mail", "e_mail", "newsletter", "mailing"];
const OFFLINE_MEDIUMS: &[&str] = &[
    "offline",
    "print",
    "qr",
    "tv",
    "radio",
    "outdoor",
    "billboard",
    "flyer",
];

/// Referrers that are never a source: payment gateways and sign-in pages
/// send the visitor back to the site mid-purchase (matched as the host or
/// a parent domain of it). A site adds its own in `ignore_referrers`.
pub const IGNORED_REFERRERS: &[&str] = &[
    "paypal.com",
    "stripe.com",
    "yoomoney.ru",
    "money.yandex.ru",
    "pay.yandex.ru",
    "securepayments.sberbank.ru",
    "3dsec.sberbank.ru",
    "payment.tinkoff.ru",
    "securepay.tinkoff.ru",
    "cloudpayments.ru",
    "accounts.google.com",
    "oauth.vk.com",
    "id.vk.com",
    "passport.yandex.ru",
    "oauth.yandex.ru",
    "appleid.apple.com",
    "login.microsoftonline.com",
    "login.live.com",
];

fn in_list(v: &str, list: &[&str]) -> bool {
    list.iter().any(|x| v.eq_ignore_ascii_case(x))
}

/// `host` is `domain` or a subdomain of it.
fn under(host: &str, domain: &str) -> bool {
    host.eq_ignore_ascii_case(domain)
        || (host.len() > domain.len()
            && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
            && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain))
}

/// A brand as any label but the last (`google` in `www.google.co.uk`).
fn has_brand(host: &str, brands: &[&str]) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    labels.len() > 1
        && labels[..labels.len() - 1]
            .iter()
            .any(|l| in_list(l, brands))
}

fn is_search_host(h: &str) -> bool {
    has_brand(h, SEARCH_BRANDS) || SEARCH_HOSTS.iter().any(|d| under(h, d))
}

fn is_social_host(h: &str) -> bool {
    has_brand(h, SOCIAL_BRANDS) || SOCIAL_HOSTS.iter().any(|d| under(h, d))
}

fn is_social_source(s: &str) -> bool {
    in_list(s, SOCIAL_BRANDS) || in_list(s, SOCIAL_SOURCES) || is_social_host(s)
}

fn is_search_source(s: &str) -> bool {
    in_list(s, SEARCH_BRANDS) || in_list(s, SEARCH_SOURCES) || is_search_host(s)
}

/// The channel of a touch. The first matching rule wins:
/// 1. `utm_medium` email-like → email; offline-like (print, qr, tv…) → offline;
/// 2. a paid click id (gclid, gbraid, wbraid, yclid, msclkid) → paid_search;
/// 3. a paid-social medium → paid_social; a paid medium (cpc, cpm…) →
///    paid_social when the source is a social network, else paid_search;
/// 4. a social medium → social; `organic` → organic_search; `referral` → referral;
/// 5. other tags: by `utm_source` (social → social, search engine →
///    organic_search, else referral);
/// 6. fbclid alone → social;
/// 7. no tags: by referrer host (webmail → email, search engine →
///    organic_search, social → social, any other → referral);
/// 8. nothing → direct.
pub fn channel(s: &Signals) -> Channel {
    let medium = s.utm_medium.trim();
    let source = s.utm_source.trim();
    if in_list(medium, EMAIL_MEDIUMS) {
        return Channel::Email;
    }
    if in_list(medium, OFFLINE_MEDIUMS) {
        return Channel::Offline;
    }
    if s.paid_click {
        return Channel::PaidSearch;
    }
    if in_list(medium, PAID_SOCIAL_MEDIUMS) {
        return Channel::PaidSocial;
    }
    if in_list(medium, PAID_MEDIUMS) {
        return if is_social_source(source) {
            Channel::PaidSocial
        } else {
            Channel::PaidSearch
        };
    }
    if in_list(medium, SOCIAL_MEDIUMS) {
        return Channel::Social;
    }
    if medium.eq_ignore_ascii_case("organic") {
        return Channel::OrganicSearch;
    }
    if medium.eq_ignore_ascii_case("referral") {
        return Channel::Referral;
    }
    if !source.is_empty() || !medium.is_empty() {
        return if is_social_source(source) {
            Channel::Social
        } else if is_search_source(source) {
            Channel::OrganicSearch
        } else {
            Channel::Referral
        };
    }
    if s.fbclid {
        return Channel::Social;
    }
    let h = s.referrer_host;
    if h.is_empty() {
        Channel::Direct
    } else if MAIL_HOSTS.iter().any(|d| under(h, d)) {
        Channel::Email
    } else if is_search_host(h) {
        Channel::OrganicSearch
    } else if is_social_host(h) {
        Channel::Social
    } else {
        Channel::Referral
    }
}

/// The host of a URL (`https://www.google.com/search?q=` → `www.google.com`),
/// lowercased; empty when it has none.
pub fn host_of(url: &str) -> String {
    let rest = match url.split_once("://") {
        Some((_, r)) => r,
        None => return String::new(),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        hostport.split(':').next().unwrap_or_default()
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a referrer host is never a source for a site whose own hosts
/// are `own` (from its origins) and whose extra ignore-list is `extra`.
pub fn ignored_referrer(host: &str, own: &[String], extra: &[String]) -> bool {
    own.iter()
        .chain(extra)
        .any(|d| under(host, d.trim_start_matches("*.")))
        || IGNORED_REFERRERS.iter().any(|d| under(host, d))
}

/// When a touch happened, in Unix milliseconds, from its age in seconds as
/// the client saw it (no clock skew: the age is a difference of the
/// client's own clock; milliseconds order two clicks of one second).
/// `None` when it is older than `max_age` seconds: it no longer counts.
pub fn touch_time(now_ms: u64, age: f64, max_age: u32) -> Option<u64> {
    let age = if age.is_finite() { age.max(0.0) } else { 0.0 };
    (age <= f64::from(max_age)).then(|| now_ms.saturating_sub((age * 1000.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(source: &str, medium: &str, referrer: &str) -> &'static str {
        channel(&Signals {
            utm_source: source,
            utm_medium: medium,
            referrer_host: &host_of(referrer),
            ..Signals::default()
        })
        .as_str()
    }

    #[test]
    fn channels_by_tags() {
        assert_eq!(ch("google", "cpc", ""), "paid_search");
        assert_eq!(ch("yandex", "cpc", "https://yandex.ru/"), "paid_search");
        assert_eq!(ch("vk", "cpc", ""), "paid_social");
        assert_eq!(ch("facebook", "cpm", ""), "paid_social");
        assert_eq!(ch("anything", "paid_social", ""), "paid_social");
        assert_eq!(ch("telegram", "social", ""), "social");
        assert_eq!(ch("ok", "", ""), "social");
        assert_eq!(ch("google", "organic", ""), "organic_search");
        assert_eq!(ch("mailru", "", ""), "organic_search");
        assert_eq!(
            ch("newsletter", "Email", "https://mail.google.com/"),
            "email"
        );
        assert_eq!(ch("metro", "print", ""), "offline");
        assert_eq!(ch("partner", "referral", ""), "referral");
        assert_eq!(
            ch("partner", "", "https://www.google.com/"),
            "referral",
            "tags win over the referrer"
        );
        let paid = |clk: bool, fb: bool| {
            channel(&Signals {
                paid_click: clk,
                fbclid: fb,
                ..Signals::default()
            })
            .as_str()
        };
        assert_eq!(paid(true, false), "paid_search");
        assert_eq!(paid(false, true), "social");
        assert_eq!(paid(false, false), "direct");
    }

    #[test]
    fn channels_by_referrer() {
        for (r, want) in [
            ("https://www.google.co.uk/search?q=a", "organic_search"),
            ("https://yandex.ru/search/?text=a", "organic_search"),
            ("https://ya.ru/", "organic_search"),
            ("https://www.bing.com/", "organic_search"),
            ("https://duckduckgo.com/", "organic_search"),
            ("https://go.mail.ru/search?q=a", "organic_search"),
            ("https://e.mail.ru/inbox", "email"),
            ("https://mail.yandex.ru/", "email"),
            ("https://vk.com/wall1", "social"),
            ("https://m.vk.com/", "social"),
            ("https://ok.ru/", "social"),
            ("https://t.me/channel", "social"),
            ("https://l.facebook.com/l.php?u=x", "social"),
            ("https://www.instagram.com/", "social"),
            ("https://blog.example.org/post", "referral"),
            ("", "direct"),
        ] {
            assert_eq!(ch("", "", r), want, "{r}");
        }
    }

    #[test]
    fn hosts_and_ignore_lists() {
        assert_eq!(
            host_of("https://User@Shop.Example:8443/p?q#f"),
            "shop.example"
        );
        assert_eq!(host_of("http://[::1]:80/"), "::1");
        assert_eq!(
            host_of("android-app://com.google.android.gm/"),
            "com.google.android.gm"
        );
        assert_eq!(host_of("not a url"), "");
        let own = vec!["shop.example".to_string()];
        let extra = vec!["*.partner-pay.example".to_string()];
        assert!(ignored_referrer("shop.example", &own, &extra));
        assert!(ignored_referrer("www.shop.example", &own, &extra));
        assert!(ignored_referrer("a.partner-pay.example", &own, &extra));
        assert!(ignored_referrer("www.paypal.com", &own, &extra));
        assert!(ignored_referrer("checkout.stripe.com", &own, &extra));
        assert!(!ignored_referrer("notshop.example", &own, &extra));
        assert!(!ignored_referrer("www.google.com", &own, &extra));
    }

    #[test]
    fn touches_expire() {
        assert_eq!(touch_time(1_000_000, 0.0, 90), Some(1_000_000));
        assert_eq!(touch_time(1_000_000, 90.0, 90), Some(910_000));
        assert_eq!(touch_time(1_000_000, 0.25, 90), Some(999_750));
        assert_eq!(touch_time(1_000_000, 90.5, 90), None);
        assert_eq!(touch_time(10_000, 50.0, 90), Some(0));
        assert_eq!(touch_time(10_000, -3.0, 90), Some(10_000));
        assert_eq!(touch_time(10_000, f64::NAN, 90), Some(10_000));
    }
}
