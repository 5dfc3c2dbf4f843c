//! Visits that must not burn a number: crawlers and other automated
//! clients (by user agent or the snippet's `navigator.webdriver` flag) and
//! clients past the per-network lease rate. They get the site's own number
//! without a lease; each refusal is counted by reason.

use std::net::IpAddr;

/// Why a visit got the site's own number instead of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLease {
    /// A crawler, link previewer or HTTP library by its user agent.
    Crawler,
    /// The page runs under browser automation (`navigator.webdriver`).
    Webdriver,
    /// The client's network (/24, /48) took its share of new leases this
    /// minute (`tracker.leases_per_network_per_minute`).
    NetworkRate,
}

impl NoLease {
    pub fn as_str(self) -> &'static str {
        match self {
            NoLease::Crawler => "crawler",
            NoLease::Webdriver => "webdriver",
            NoLease::NetworkRate => "network_rate",
        }
    }
}

/// Lowercase fragments of crawler, previewer, headless-browser and HTTP
/// library user agents. Names, not the bare word "bot": phones and
/// browsers carry it too (Cubot).
const AUTOMATED: &[&str] = &[
    "googlebot",
    "adsbot-google",
    "mediapartners-google",
    "google-inspectiontool",
    "storebot-google",
    "bingbot",
    "bingpreview",
    "yandexbot",
    "yandex.com/bots",
    "baiduspider",
    "duckduckbot",
    "applebot",
    "ahrefsbot",
    "semrushbot",
    "mj12bot",
    "petalbot",
    "bytespider",
    "gptbot",
    "claudebot",
    "ccbot",
    "facebookexternalhit",
    "facebookcatalog",
    "twitterbot",
    "telegrambot",
    "whatsapp",
    "slackbot",
    "discordbot",
    "linkedinbot",
    "vkshare",
    "mail.ru_bot",
    "chrome-lighthouse",
    "headlesschrome",
    "phantomjs",
    "puppeteer",
    "crawler",
    "spider",
    "+http",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "httpx",
    "go-http-client",
    "java/",
    "okhttp",
    "axios/",
    "node-fetch",
    "undici",
    "libwww-perl",
    "scrapy",
    "apache-httpclient",
];

/// Whether a user agent is an automated client; an empty one is.
pub fn automated_agent(ua: &str) -> bool {
    let ua = ua.trim().to_ascii_lowercase();
    ua.is_empty() || AUTOMATED.iter().any(|t| ua.contains(t))
}

/// The client's network for the lease rate: IPv4 /24, IPv6 /48 (what one
/// household, office or small carrier NAT holds).
pub fn network_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crawlers_and_libraries_are_automated_browsers_are_not() {
        for ua in [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "TelegramBot (like TwitterBot)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
            "curl/7.88.1",
            "python-requests/2.31.0",
            "Go-http-client/1.1",
            "",
            "  ",
        ] {
            assert!(automated_agent(ua), "{ua:?}");
        }
        for ua in [
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Linux; Android 12; CUBOT KINGKONG 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 YaBrowser/24.1.0.0 Safari/537.36",
        ] {
            assert!(!automated_agent(ua), "{ua:?}");
        }
    }

    #[test]
    fn networks() {
        assert_eq!(
            network_key("203.0.113.77".parse().unwrap()),
            "203.0.113.0/24"
        );
        assert_eq!(
            network_key("2001:db8:abcd:12::1".parse().unwrap()),
            "2001:db8:abcd::/48"
        );
    }
}
