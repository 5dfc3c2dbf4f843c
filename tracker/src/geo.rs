//! Where a visitor is: the client IP (from the socket, or from
//! `X-Forwarded-For` only when the peer is a trusted proxy), its place from
//! a MaxMind City database, and the form of the IP we store
//! (`tracker.ip_storage`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use axum::http::HeaderMap;
use dialmark_schemas::config::IpStorage;
use dialmark_schemas::digest::hmac_sha256_hex;
use ipnet::IpNet;
use maxminddb::{geoip2, Reader};

use crate::error::TrackerError;

/// A visitor's place; empty strings when unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    /// ISO 3166-1 alpha-2 (`RU`).
    pub country: String,
    /// ISO 3166-2 (`RU-MOW`).
    pub region: String,
    /// English city name.
    pub city: String,
}

/// The geo database, if configured.
pub struct Geo {
    reader: Option<Reader<Vec<u8>>>,
}

impl Geo {
    pub fn open(path: Option<&Path>) -> Result<Self, TrackerError> {
        let reader = match path {
            None => None,
            Some(p) => Some(Reader::open_readfile(p).map_err(|e| {
                TrackerError::Internal(format!("tracker.geoip_db {}: {e}", p.display()))
            })?),
        };
        Ok(Self { reader })
    }

    pub fn lookup(&self, ip: IpAddr) -> Place {
        let Some(reader) = &self.reader else {
            return Place::default();
        };
        let Ok(found) = reader.lookup(ip) else {
            return Place::default();
        };
        let Ok(Some(city)) = found.decode::<geoip2::City>() else {
            return Place::default();
        };
        let country = city.country.iso_code.unwrap_or_default().to_string();
        let region = city
            .subdivisions
            .first()
            .and_then(|s| s.iso_code)
            .map(|s| format!("{country}-{s}"))
            .unwrap_or_default();
        Place {
            country,
            region,
            city: city.city.names.english.unwrap_or_default().to_string(),
        }
    }
}

/// The visitor's IP: the socket peer, unless the peer is a trusted proxy;
/// then the right-most `X-Forwarded-For` address that is not a trusted proxy.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut ip = peer.ip();
    if !is_trusted(&ip) {
        return ip;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for hop in hops.into_iter().rev() {
        ip = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    ip
}

/// The stored form of a visitor IP under `mode`.
pub fn stored_ip(ip: IpAddr, mode: IpStorage, key: &str) -> String {
    match mode {
        IpStorage::Truncated => truncate(ip),
        IpStorage::Full => ip.to_string(),
        IpStorage::None => String::new(),
        IpStorage::Hashed => {
            let hex = hmac_sha256_hex(key.as_bytes(), &[ip.to_string().as_bytes()]);
            format!("h:{}", &hex[..32])
        }
    }
}

/// IPv4 /24, IPv6 /48.
fn truncate(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Ipv4Addr::new(o[0], o[1], o[2], 0).to_string()
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "10.0.0.1:1234".parse().unwrap();
        let direct: SocketAddr = "198.51.100.7:1234".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(direct, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(proxy, &HeaderMap::new(), &trusted),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn stored_ip_modes() {
        let (v4, v6) = (
            "203.0.113.77".parse().unwrap(),
            "2001:db8:1:2::5".parse().unwrap(),
        );
        assert_eq!(stored_ip(v4, IpStorage::Truncated, ""), "203.0.113.0");
        assert_eq!(stored_ip(v6, IpStorage::Truncated, ""), "2001:db8:1::");
        assert_eq!(stored_ip(v4, IpStorage::Full, ""), "203.0.113.77");
        assert_eq!(stored_ip(v4, IpStorage::None, ""), "");
        let key = "0123456789abcdef";
        let h = stored_ip(v4, IpStorage::Hashed, key);
        // python3: hmac.new(key, b"203.0.113.77", hashlib.sha256).hexdigest()[:32]
        assert_eq!(h, "h:c84c04c05495024db1a7812233f2db09");
        assert_ne!(h, stored_ip(v4, IpStorage::Hashed, "another-key-0123"));
    }

    #[test]
    fn no_database_means_no_place() {
        assert_eq!(
            Geo::open(None)
                .unwrap()
                .lookup("203.0.113.1".parse().unwrap()),
            Place::default()
        );
    }
}
