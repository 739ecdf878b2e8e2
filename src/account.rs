//! Which 1Password account a token belongs to and what it may read.
//!
//! The account keys the shared request budget: v2 introspection's
//! `account_uuid` when available (cached in the store), otherwise a hash of
//! the token — never the token. The token's `features` (from introspection,
//! or from its JWT claims as a fallback) tell which services it can read.

use crate::config::Config;
use crate::error::{CollectorError, ErrorKind, ONEPASSWORD_BAD_BODY, ONEPASSWORD_TOO_LARGE, ONEPASSWORD_UNREACHABLE};
use crate::http::{HttpFailure, HttpRequest, HttpResponse, Method};
use crate::secret::Secret;
use crate::time;
use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long a cached introspection answer is trusted.
pub const INTROSPECTION_TTL: TimeDelta = TimeDelta::hours(1);
/// Warn when the token expires sooner than this.
pub const EXPIRY_WARNING: TimeDelta = TimeDelta::days(14);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountInfo {
    pub account_uuid: Option<String>,
    /// Services the token may read (introspection `features`); `None` when unknown.
    pub features: Option<Vec<String>>,
    pub fetched_at: DateTime<Utc>,
}

impl AccountInfo {
    pub fn fresh(&self, now: DateTime<Utc>) -> bool {
        now - self.fetched_at < INTROSPECTION_TTL && now >= self.fetched_at
    }
}

/// A stable, non-reversible name for a token: hex of its SHA-256, shortened.
pub fn token_fingerprint(token: &Secret) -> String {
    let digest = Sha256::digest(token.expose().as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Store key of the cached introspection answer for this token.
pub fn cache_key(token: &Secret) -> String {
    format!("account/{}", token_fingerprint(token))
}

/// The name the request budget is kept under.
pub fn budget_account(info: Option<&AccountInfo>, token: &Secret) -> String {
    // A cached answer is stored data: checked again.
    match info.and_then(|i| i.account_uuid.as_deref()).filter(|u| plausible_account_uuid(u)) {
        Some(uuid) => uuid.to_string(),
        None => format!("token-{}", token_fingerprint(token)),
    }
}

pub fn introspect_request(config: &Config) -> HttpRequest {
    HttpRequest {
        method: Method::Get,
        scheme: config.base_url.scheme,
        authority: config.base_url.authority.clone(),
        path: config.base_url.path(config.api_version.introspect_path()),
        headers: vec![
            ("authorization".into(), format!("Bearer {}", config.token.expose())),
            ("accept".into(), "application/json".into()),
        ],
        body: Vec::new(),
    }
}

/// The error of an introspection request that got no answer to read.
pub fn introspection_failure(failure: &HttpFailure) -> CollectorError {
    let id = match failure {
        HttpFailure::TooLarge { .. } => ONEPASSWORD_TOO_LARGE,
        _ => ONEPASSWORD_UNREACHABLE,
    };
    CollectorError::new(
        ErrorKind::PullError,
        id,
        format!(
            "1Password's token introspection failed: {}; check base_url, the network and the host's allowed outbound hosts",
            failure.for_setting("base_url")
        ),
    )
}

#[derive(Deserialize)]
struct Introspection {
    #[serde(default)]
    features: Option<Vec<String>>,
    #[serde(default)]
    account_uuid: Option<String>,
}

pub fn parse_introspection(response: &HttpResponse, now: DateTime<Utc>) -> Result<AccountInfo, CollectorError> {
    if response.status != 200 {
        let advice = if response.status == 401 {
            "the token is missing, invalid or revoked; issue a new Events Reporting token"
        } else {
            "the token's scopes could not be checked"
        };
        return Err(CollectorError::new(
            ErrorKind::PullError,
            crate::error::onepassword_status_id(response.status),
            format!("1Password answered the token introspection with HTTP {} ({advice})", response.status),
        )
        .with_http_status(response.status));
    }
    let body: Introspection = serde_json::from_slice(&response.body).map_err(|e| {
        CollectorError::new(
            ErrorKind::PullError,
            ONEPASSWORD_BAD_BODY,
            format!(
                "1Password's token introspection answer is not the expected JSON ({})",
                crate::error::bounded(&e.to_string())
            ),
        )
    })?;
    // The account uuid names a store key (the budget's): one that does not
    // look like an id is not used, and the budget is kept under the token's
    // fingerprint instead.
    let account_uuid = body.account_uuid.filter(|u| plausible_account_uuid(u));
    Ok(AccountInfo { account_uuid, features: body.features, fetched_at: now })
}

/// 1Password's account uuids are 26 letters and digits; anything of up to
/// 64 letters, digits, `-` and `_` is accepted.
fn plausible_account_uuid(uuid: &str) -> bool {
    (1..=64).contains(&uuid.len()) && uuid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The claims of the token's JWT payload that the collector uses. Only the
/// payload is decoded (no signature check: 1Password checks the token; this
/// only reads what the token says about itself).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TokenClaims {
    #[serde(default)]
    pub features: Option<Vec<String>>,
    #[serde(default)]
    pub exp: Option<i64>,
}

pub fn token_claims(token: &Secret) -> Option<TokenClaims> {
    let payload = token.expose().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A warning when the token expires soon (or has expired), from its claims.
pub fn expiry_warning(claims: &TokenClaims, now: DateTime<Utc>) -> Option<String> {
    let exp = DateTime::from_timestamp(claims.exp?, 0)?;
    let when = time::utc(exp);
    if exp <= now {
        Some(format!("the 1Password token expired at {when}; issue a new one"))
    } else if exp - now < EXPIRY_WARNING {
        Some(format!("the 1Password token expires at {when}; issue a new one before then"))
    } else {
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn jwt(claims: &str) -> String {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.c2lnbmF0dXJl", enc(r#"{"alg":"ES256","kid":"x"}"#), enc(claims))
    }

    #[test]
    fn fingerprints_are_stable_short_and_not_the_token() {
        let a = token_fingerprint(&Secret::new("token-a".into()));
        assert_eq!(a.len(), 24);
        assert_eq!(a, token_fingerprint(&Secret::new("token-a".into())));
        assert_ne!(a, token_fingerprint(&Secret::new("token-b".into())));
        assert!(!cache_key(&Secret::new("token-a".into())).contains("token-a"));
        let info = AccountInfo {
            account_uuid: Some("ACCT".into()),
            features: None,
            fetched_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        };
        assert_eq!(budget_account(Some(&info), &Secret::new("t".into())), "ACCT");
        assert!(budget_account(None, &Secret::new("t".into())).starts_with("token-"));
    }

    #[test]
    fn introspection_gives_account_and_features() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let r = HttpResponse {
            status: 200,
            headers: vec![],
            body: br#"{"uuid":"U","issued_at":"2026-01-01T00:00:00Z","features":["auditevents","signinattempts"],"account_uuid":"ACC"}"#.to_vec(),
        };
        let info = parse_introspection(&r, now).unwrap();
        assert_eq!(info.account_uuid.as_deref(), Some("ACC"));
        assert_eq!(info.features.unwrap(), vec!["auditevents", "signinattempts"]);
        let e = parse_introspection(&HttpResponse { status: 401, headers: vec![], body: vec![] }, now).unwrap_err();
        assert_eq!(e.id, 401);
        // An account uuid that is no id does not name the budget's key.
        for odd in ["", "a/b", "../x", "a\0b", &"A".repeat(65)] {
            let body = format!(r#"{{"features":["auditevents"],"account_uuid":{}}}"#, serde_json::json!(odd));
            let info =
                parse_introspection(&HttpResponse { status: 200, headers: vec![], body: body.into() }, now).unwrap();
            assert_eq!(info.account_uuid, None, "{odd:?}");
        }
    }

    #[test]
    fn jwt_claims_give_features_and_expiry_warnings() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let token = Secret::new(jwt(&format!(r#"{{"features":["itemusages"],"exp":{}}}"#, 1_800_000_000 + 86_400)));
        let claims = token_claims(&token).unwrap();
        assert_eq!(claims.features.as_deref(), Some(&["itemusages".to_string()][..]));
        let w = expiry_warning(&claims, now).unwrap();
        assert!(w.contains("expires at") && !w.contains(token.expose()));
        assert!(expiry_warning(&TokenClaims { exp: Some(1_700_000_000), ..Default::default() }, now)
            .unwrap()
            .contains("expired"));
        assert_eq!(expiry_warning(&TokenClaims { exp: Some(1_900_000_000), ..Default::default() }, now), None);
        assert_eq!(token_claims(&Secret::new("opaque".into())), None);
    }
}
