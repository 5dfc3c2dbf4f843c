//! Who may call what. The admin token (`tracker.admin_token`) reads and
//! changes everything. A site's read tokens, issued and revoked through
//! the admin API, read that site's calls and reports and nothing else:
//! the token a marketer's browser holds. Tokens are stored in Redis only
//! as a keyed hash (`dm:token:{hash}`), so a Redis dump leaks none.

use axum::http::HeaderMap;
use dialmark_schemas::digest::hmac_sha256_hex;
use dialmark_schemas::layout;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::error::TrackerError;

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reader {
    Admin,
    /// A site's read token.
    Site(String),
}

impl Reader {
    /// The site a read is limited to: a site token's own (asking for
    /// another is refused); for the admin, the one asked for ('' = all).
    pub fn site(&self, asked: &str) -> Result<String, TrackerError> {
        match self {
            Reader::Admin => Ok(asked.to_string()),
            Reader::Site(own) if asked.is_empty() || asked == own => Ok(own.clone()),
            Reader::Site(own) => Err(TrackerError::Forbidden(format!(
                "site: this token reads site {own:?} only"
            ))),
        }
    }
}

/// A read token as stored (and listed): never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    pub site: String,
    pub name: String,
    /// Unix seconds.
    pub created: u32,
}

fn bearer(headers: &HeaderMap) -> Result<&str, TrackerError> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(TrackerError::Unauthorized("missing bearer token"))
}

fn is_admin(state: &AppState, given: &str) -> Result<bool, TrackerError> {
    let expected = state.config.tracker.admin_token.as_bytes();
    if expected.is_empty() {
        return Err(TrackerError::Forbidden(
            "admin API is off (tracker.admin_token is empty)".into(),
        ));
    }
    Ok(bool::from(given.as_bytes().ct_eq(expected)))
}

/// Checks `Authorization: Bearer <tracker.admin_token>`.
pub fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), TrackerError> {
    if is_admin(state, bearer(headers)?)? {
        Ok(())
    } else {
        Err(TrackerError::Unauthorized("wrong bearer token"))
    }
}

/// The admin or a site's read token, from `Authorization: Bearer`.
pub async fn reader(state: &AppState, headers: &HeaderMap) -> Result<Reader, TrackerError> {
    let given = bearer(headers)?;
    // An empty admin token turns the admin off, not the site tokens.
    if is_admin(state, given).unwrap_or(false) {
        return Ok(Reader::Admin);
    }
    let mut r = state.inventory.redis.clone();
    let json: Option<String> = redis::cmd("GET")
        .arg(layout::token_key(&hash(given)))
        .query_async(&mut r)
        .await?;
    let info: TokenInfo = json
        .and_then(|j| serde_json::from_str(&j).ok())
        .ok_or(TrackerError::Unauthorized("unknown or revoked token"))?;
    Ok(Reader::Site(info.site))
}

/// The stored form of a token.
fn hash(token: &str) -> String {
    hmac_sha256_hex(b"dialmark read token", &[token.as_bytes()])
}

/// Issues a read token for `site` named `name` (unique per site); the
/// token is shown once, here.
pub async fn issue(
    state: &AppState,
    site: &str,
    name: &str,
    now: u32,
) -> Result<String, TrackerError> {
    if !layout::is_id(name) {
        return Err(TrackerError::BadRequest(
            "name: letters, digits, '-' and '_' only".into(),
        ));
    }
    state.inventory.site(site).await?;
    let mut r = state.inventory.redis.clone();
    let index = layout::site_tokens_key(site);
    let taken: bool = redis::cmd("HEXISTS")
        .arg(&index)
        .arg(name)
        .query_async(&mut r)
        .await?;
    if taken {
        return Err(TrackerError::Conflict(format!(
            "name: site {site:?} has a token named {name:?}; revoke it first"
        )));
    }
    let token = format!(
        "dmr_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let h = hash(&token);
    let info = TokenInfo {
        site: site.into(),
        name: name.into(),
        created: now,
    };
    let json = serde_json::to_string(&info).map_err(|e| TrackerError::Internal(e.to_string()))?;
    // Two keys that may live on different cluster nodes: the token first,
    // so a token listed in the index always works.
    redis::cmd("SET")
        .arg(layout::token_key(&h))
        .arg(&json)
        .query_async::<()>(&mut r)
        .await?;
    redis::cmd("HSET")
        .arg(&index)
        .arg(name)
        .arg(&h)
        .query_async::<()>(&mut r)
        .await?;
    Ok(token)
}

/// The site's read tokens (names and creation times).
pub async fn list(state: &AppState, site: &str) -> Result<Vec<TokenInfo>, TrackerError> {
    state.inventory.site(site).await?;
    let mut r = state.inventory.redis.clone();
    let index: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(layout::site_tokens_key(site))
        .query_async(&mut r)
        .await?;
    let mut out = Vec::new();
    for h in index.values() {
        let json: Option<String> = redis::cmd("GET")
            .arg(layout::token_key(h))
            .query_async(&mut r)
            .await?;
        if let Some(info) = json.and_then(|j| serde_json::from_str::<TokenInfo>(&j).ok()) {
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Revokes the site's token `name`: it stops working at once.
pub async fn revoke(state: &AppState, site: &str, name: &str) -> Result<(), TrackerError> {
    let mut r = state.inventory.redis.clone();
    let index = layout::site_tokens_key(site);
    let h: Option<String> = redis::cmd("HGET")
        .arg(&index)
        .arg(name)
        .query_async(&mut r)
        .await?;
    let h = h.ok_or_else(|| TrackerError::NotFound(format!("token {name:?} of site {site:?}")))?;
    redis::cmd("DEL")
        .arg(layout::token_key(&h))
        .query_async::<()>(&mut r)
        .await?;
    redis::cmd("HDEL")
        .arg(&index)
        .arg(name)
        .query_async::<()>(&mut r)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_token_reads_its_own_site_only() {
        let site = Reader::Site("shop".into());
        assert_eq!(site.site("").unwrap(), "shop");
        assert_eq!(site.site("shop").unwrap(), "shop");
        assert!(matches!(
            site.site("other"),
            Err(TrackerError::Forbidden(_))
        ));
        assert_eq!(Reader::Admin.site("").unwrap(), "");
        assert_eq!(Reader::Admin.site("other").unwrap(), "other");
    }

    #[test]
    fn tokens_are_stored_hashed() {
        let h = hash("dmr_secret");
        assert_eq!(h.len(), 64);
        assert!(!h.contains("secret"));
        assert_eq!(h, hash("dmr_secret"));
        assert_ne!(h, hash("dmr_secreT"));
    }
}
