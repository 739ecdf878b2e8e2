//! The collector's settings, read from the host's config source (Spin
//! variables, the harness's TOML) through one lookup function, and checked in
//! full before anything is fetched.
//!
//! Keys are flat and lowercase so they double as Spin variable names.

use crate::budget::{Ceilings, DEFAULT_PER_HOUR, DEFAULT_PER_MINUTE};
use crate::endpoint::Endpoint;
use crate::error::{CollectorError, ErrorKind, CONFIG_SOURCE};
use crate::obfuscate::{Mode, Obfuscator};
use crate::secret::Secret;
use crate::service::{ApiVersion, Service};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// Devo takes at most 32 MB per request; batches stay a little below it
/// (the default and the ceiling of `devo_max_batch_bytes`).
pub const MAX_BATCH_BYTES: usize = 32_000_000;

/// The name of every setting the collector reads: the one list the
/// component, the hosts (limits, the tenants loader, `status`) and Spin's
/// manifest checks use.
pub mod key {
    pub const BASE_URL: &str = "base_url";
    pub const TOKEN: &str = "token";
    pub const API_VERSION: &str = "api_version";
    pub const SERVICES: &str = "services";
    pub const START_TIME_VALUE: &str = "start_time_value";
    pub const PAGE_SIZE: &str = "page_size";
    pub const DEVO_URL: &str = "devo_url";
    pub const DEVO_DOMAIN: &str = "devo_domain";
    pub const DEVO_TOKEN: &str = "devo_token";
    pub const DEVO_HOST: &str = "devo_host";
    pub const TAG_AUDIT: &str = "tag_audit";
    pub const TAG_ITEM_USAGE: &str = "tag_item_usage";
    pub const TAG_SIGN_IN_ATTEMPTS: &str = "tag_sign_in_attempts";
    pub const MAX_REQUESTS_PER_MINUTE: &str = "max_requests_per_minute";
    pub const MAX_REQUESTS_PER_HOUR: &str = "max_requests_per_hour";
    pub const MAX_PAGES_PER_TICK: &str = "max_pages_per_tick";
    pub const TICK_DEADLINE_MS: &str = "tick_deadline_ms";
    pub const REQUEST_TIMEOUT_MS: &str = "request_timeout_ms";
    pub const LEASE_TTL_MS: &str = "lease_ttl_ms";
    pub const DEVO_MAX_BATCH_EVENTS: &str = "devo_max_batch_events";
    pub const DEVO_GZIP: &str = "devo_gzip";
    pub const MAX_RESPONSE_BYTES: &str = "max_response_bytes";
    pub const OBFUSCATE_FIELDS: &str = "obfuscate_fields";
    pub const OBFUSCATION_MODE: &str = "obfuscation_mode";
    pub const OBFUSCATION_KEY: &str = "obfuscation_key";
}

/// Every key the collector reads, in the order they are read.
pub const KEYS: &[&str] = &[
    key::BASE_URL,
    key::TOKEN,
    key::API_VERSION,
    key::SERVICES,
    key::START_TIME_VALUE,
    key::PAGE_SIZE,
    key::DEVO_URL,
    key::DEVO_DOMAIN,
    key::DEVO_TOKEN,
    key::DEVO_HOST,
    key::TAG_AUDIT,
    key::TAG_ITEM_USAGE,
    key::TAG_SIGN_IN_ATTEMPTS,
    key::MAX_REQUESTS_PER_MINUTE,
    key::MAX_REQUESTS_PER_HOUR,
    key::MAX_PAGES_PER_TICK,
    key::TICK_DEADLINE_MS,
    key::REQUEST_TIMEOUT_MS,
    key::LEASE_TTL_MS,
    key::DEVO_MAX_BATCH_EVENTS,
    key::DEVO_GZIP,
    key::MAX_RESPONSE_BYTES,
    key::OBFUSCATE_FIELDS,
    key::OBFUSCATION_MODE,
    key::OBFUSCATION_KEY,
];

/// The known key closest to `name` by edit distance (letters added,
/// removed, changed or swapped), when it is close enough to be a slip: at
/// most a third of the longer name's letters away (and at least one).
pub fn closest_key(name: &str) -> Option<&'static str> {
    let name = name.trim().to_ascii_lowercase();
    KEYS.iter()
        .map(|k| (edit_distance(&name, k), *k))
        .filter(|(d, k)| *d <= (name.chars().count().max(k.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The optimal-string-alignment distance between `a` and `b`: the fewest
/// single-character insertions, deletions, substitutions and swaps of two
/// neighbours that turn one into the other.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Refuses keys the collector does not read (a misspelt `page_sise` would
/// otherwise be ignored and its default used), naming each with the known
/// key closest to it. InitVariablesError 2, like any other wrong setting.
pub fn check_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<(), CollectorError> {
    let mut unknown: Vec<&str> = keys.into_iter().filter(|k| !KEYS.contains(k)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    unknown.dedup();
    let named: Vec<String> = unknown.iter().map(|k| unknown_key(k)).collect();
    Err(CollectorError::new(
        ErrorKind::InitVariablesError,
        crate::error::INVALID_SETTING,
        format!("{}; remove or rename it, the collector reads no such setting", named.join("; ")),
    ))
}

/// `setting "page_sise" is unknown (did you mean "page_size"?)`: the text
/// naming an unknown key, as the component and the hosts show it.
pub fn unknown_key(name: &str) -> String {
    let shown = quote(name);
    match closest_key(name) {
        Some(k) => format!("setting {shown} is unknown (did you mean \"{k}\"?)"),
        None => format!("setting {shown} is unknown (the settings are listed in the README's Configuration)"),
    }
}

/// The keys without a default: each must be set.
pub const REQUIRED_KEYS: &[&str] = &[key::BASE_URL, key::TOKEN, key::DEVO_URL, key::DEVO_DOMAIN, key::DEVO_TOKEN];

/// Keys whose values are secrets: never echoed in an error.
pub const SECRET_KEYS: &[&str] = &[key::TOKEN, key::DEVO_TOKEN, key::OBFUSCATION_KEY];

pub const DEFAULT_PAGE_SIZE: u16 = 1000;
/// The largest `max_pages_per_tick` accepted. Without the setting there is
/// no cap: a tick pages while there is more, its deadline leaves room for
/// another page and the account's budget allows one.
pub const MAX_PAGES_PER_TICK: u64 = 1_000_000;
pub const DEFAULT_TICK_DEADLINE_MS: u64 = 30_000;
/// The longest `tick_deadline_ms` accepted.
pub const MAX_TICK_DEADLINE_MS: u64 = 3_600_000;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// The longest `request_timeout_ms` accepted.
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 600_000;
/// How long a service's lease lasts after the tick last renewed it (as
/// Kubernetes' leader election, 15 s): a tick renews it every third of
/// this while it works (`src/tick/page.rs`), so an instance killed
/// mid-tick holds its services this long at most.
pub const DEFAULT_LEASE_TTL_MS: u64 = 15_000;
/// The range `lease_ttl_ms` accepts: renewed every third of it, a lease
/// shorter than 3 s would have the store written every second by every
/// service; one longer than 10 minutes is no failover.
pub const LEASE_TTL_MS_RANGE: (u64, u64) = (3_000, 600_000);
pub const DEFAULT_DEVO_MAX_BATCH_EVENTS: u32 = 1000;
/// The largest answer body read from 1Password or Devo: a 1000-event page
/// is about 1 MiB, so 4 MiB leaves room and still fits the instance's memory.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 4 << 20;
/// The range `max_response_bytes` accepts: below 1 KiB not even an error
/// answer fits; above 256 MiB no instance's memory would hold it.
pub const MAX_RESPONSE_BYTES_RANGE: (u64, u64) = (1024, 256 << 20);
/// 1Password serves no data older than this.
pub const RETENTION: chrono::TimeDelta = chrono::TimeDelta::days(120);
pub const DEFAULT_DEVO_HOST: &str = "onepassword-collector";
/// Without `start_time_value`, a service's first page starts this long
/// before its first tick.
pub const DEFAULT_LOOKBACK: chrono::TimeDelta = chrono::TimeDelta::hours(24);

#[derive(Clone, Debug)]
pub struct Config {
    pub base_url: Endpoint,
    pub token: Secret,
    pub api_version: ApiVersion,
    pub services: Vec<Service>,
    /// Where collection starts; `None` means [`DEFAULT_LOOKBACK`] before the
    /// service's first tick.
    pub start_time: Option<DateTime<Utc>>,
    pub page_size: u16,
    pub devo_url: Endpoint,
    pub devo_domain: String,
    pub devo_token: Secret,
    pub devo_host: String,
    pub tags: BTreeMap<Service, String>,
    /// Upper bound of one Devo request body (Devo's own limit by default).
    pub devo_max_batch_bytes: usize,
    pub devo_max_batch_events: u32,
    pub devo_gzip: bool,
    pub ceilings: Ceilings,
    /// At most this many pages per service per tick; `None` (the default):
    /// no cap but the deadline and the budget.
    pub max_pages_per_tick: Option<u32>,
    /// No new page is started that would not end before this long into the
    /// tick (judged by the longest page of the service so far).
    pub tick_deadline: chrono::TimeDelta,
    /// Connect, first-byte and between-bytes timeout of every request.
    pub request_timeout_ms: u64,
    /// How long a service's lease lasts after its last renewal; the tick
    /// renews it every third of this while it works.
    pub lease_ttl: chrono::TimeDelta,
    /// The largest answer body read; a larger one fails that request
    /// ([`HttpFailure::TooLarge`](crate::http::HttpFailure::TooLarge)).
    pub max_response_bytes: u64,
    pub obfuscator: Option<Obfuscator>,
}

impl Config {
    /// Reads and validates every setting. `lookup` returns `Ok(None)` for an
    /// unset key and `Err(detail)` when the config source itself failed.
    pub fn load(mut lookup: impl FnMut(&str) -> Result<Option<String>, String>) -> Result<Config, CollectorError> {
        let mut get = |key: &str| -> Result<Option<String>, CollectorError> {
            match lookup(key) {
                Ok(None) => Ok(None),
                Ok(Some(v)) => {
                    let v = v.trim();
                    if v.is_empty() {
                        Err(CollectorError::empty(key, hint(key)))
                    } else {
                        Ok(Some(v.to_string()))
                    }
                }
                // The host's complaint is bounded: it may quote the value.
                Err(detail) => Err(CollectorError::new(
                    ErrorKind::ConfigSourceError,
                    CONFIG_SOURCE,
                    format!(
                        "the host could not read setting \"{key}\" ({}); check the host's variables provider",
                        crate::error::bounded(&detail)
                    ),
                )),
            }
        };
        let required = |key: &str, v: Option<String>| v.ok_or_else(|| CollectorError::missing(key, hint(key)));
        // Every missing required key at once, not one per attempt.
        let mut missing = Vec::new();
        for key in REQUIRED_KEYS {
            if get(key)?.is_none() {
                missing.push(*key);
            }
        }
        if missing.len() > 1 {
            let named: Vec<String> = missing.iter().map(|k| format!("\"{k}\" ({})", hint(k))).collect();
            return Err(CollectorError::new(
                ErrorKind::InitVariablesError,
                crate::error::MISSING_SETTING,
                format!("required settings are missing: {}", named.join("; ")),
            ));
        }

        let base_url = endpoint("base_url", required("base_url", get("base_url")?)?)?;
        let token = Secret::new(required("token", get("token")?)?);
        let api_version = match get("api_version")? {
            None => ApiVersion::V2,
            Some(v) => {
                v.parse().map_err(|()| CollectorError::invalid("api_version", "\"v1\" or \"v2\"", &quote(&v)))?
            }
        };
        let services = match get("services")? {
            None => Service::ALL.to_vec(),
            Some(v) => parse_services(&v)?,
        };
        let start_time = get("start_time_value")?.map(|v| parse_time("start_time_value", &v)).transpose()?;
        let page_size = match get("page_size")? {
            None => DEFAULT_PAGE_SIZE,
            Some(v) => v
                .parse::<u16>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| CollectorError::invalid("page_size", "an integer from 1 to 1000", &quote(&v)))?,
        };
        let devo_url = endpoint("devo_url", required("devo_url", get("devo_url")?)?)?;
        let devo_domain = path_segment("devo_domain", required("devo_domain", get("devo_domain")?)?)?;
        let devo_token = required("devo_token", get("devo_token")?)?;
        if !devo_token.chars().all(|c| c.is_ascii_alphanumeric()) {
            // Describe, never echo: this is a secret.
            return Err(CollectorError::invalid(
                "devo_token",
                "a Devo HTTP token (letters and digits only)",
                "a value with other characters",
            ));
        }
        let devo_host = match get("devo_host")? {
            None => DEFAULT_DEVO_HOST.to_string(),
            Some(v) => path_segment("devo_host", v)?,
        };
        let mut tags = BTreeMap::new();
        for svc in Service::ALL {
            let tag = match get(svc.tag_key())? {
                None => svc.default_tag().to_string(),
                Some(v) => tag(svc.tag_key(), v)?,
            };
            tags.insert(svc, tag);
        }
        let ceilings = Ceilings {
            per_minute: number(&mut get, "max_requests_per_minute", 1, 600, DEFAULT_PER_MINUTE.into())? as u32,
            per_hour: number(&mut get, "max_requests_per_hour", 1, 30_000, DEFAULT_PER_HOUR.into())? as u32,
        };
        let max_pages_per_tick = match get("max_pages_per_tick")? {
            None => None,
            Some(v) => {
                Some(v.parse::<u32>().ok().filter(|n| (1..=MAX_PAGES_PER_TICK).contains(&u64::from(*n))).ok_or_else(
                    || {
                        CollectorError::invalid(
                            "max_pages_per_tick",
                            &format!("an integer from 1 to {MAX_PAGES_PER_TICK}"),
                            &quote(&v),
                        )
                    },
                )?)
            }
        };
        let tick_deadline_ms =
            number(&mut get, "tick_deadline_ms", 1_000, MAX_TICK_DEADLINE_MS, DEFAULT_TICK_DEADLINE_MS)?;
        let request_timeout_ms =
            number(&mut get, "request_timeout_ms", 100, MAX_REQUEST_TIMEOUT_MS, DEFAULT_REQUEST_TIMEOUT_MS)?;
        let (min, max) = LEASE_TTL_MS_RANGE;
        let lease_ttl_ms = number(&mut get, "lease_ttl_ms", min, max, DEFAULT_LEASE_TTL_MS)?;
        let devo_max_batch_events =
            number(&mut get, "devo_max_batch_events", 1, 1_000_000, DEFAULT_DEVO_MAX_BATCH_EVENTS.into())? as u32;
        let devo_gzip = match get("devo_gzip")?.as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => return Err(CollectorError::invalid("devo_gzip", "true or false", &quote(other))),
        };
        let (min, max) = MAX_RESPONSE_BYTES_RANGE;
        let max_response_bytes = number(&mut get, "max_response_bytes", min, max, DEFAULT_MAX_RESPONSE_BYTES)?;
        let obfuscator = obfuscator(&mut get)?;
        Ok(Config {
            base_url,
            token,
            api_version,
            services,
            start_time,
            page_size,
            devo_url,
            devo_domain,
            devo_token: Secret::new(devo_token),
            devo_host,
            tags,
            devo_max_batch_bytes: MAX_BATCH_BYTES,
            devo_max_batch_events,
            devo_gzip,
            ceilings,
            max_pages_per_tick,
            tick_deadline: chrono::TimeDelta::milliseconds(tick_deadline_ms as i64),
            request_timeout_ms,
            lease_ttl: chrono::TimeDelta::milliseconds(lease_ttl_ms as i64),
            max_response_bytes,
            obfuscator,
        })
    }

    pub fn tag(&self, service: Service) -> &str {
        &self.tags[&service]
    }
}

/// An integer setting within `min..=max`.
fn number(
    get: &mut impl FnMut(&str) -> Result<Option<String>, CollectorError>,
    key: &str,
    min: u64,
    max: u64,
    default: u64,
) -> Result<u64, CollectorError> {
    match get(key)? {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| CollectorError::invalid(key, &format!("an integer from {min} to {max}"), &quote(&v))),
    }
}

fn obfuscator(
    get: &mut impl FnMut(&str) -> Result<Option<String>, CollectorError>,
) -> Result<Option<Obfuscator>, CollectorError> {
    let mode = match get("obfuscation_mode")?.as_deref() {
        None | Some("hash") => Mode::Hash,
        Some("mask") => Mode::Mask,
        Some(other) => return Err(CollectorError::invalid("obfuscation_mode", "\"hash\" or \"mask\"", &quote(other))),
    };
    let key = get("obfuscation_key")?;
    let Some(fields) = get("obfuscate_fields")? else { return Ok(None) };
    if mode == Mode::Hash && key.is_none() {
        return Err(CollectorError::missing(
            "obfuscation_key",
            "hash mode needs a secret key (any long random string) so hashes cannot be reversed by guessing; or set obfuscation_mode = \"mask\"",
        ));
    }
    Obfuscator::new(&fields, mode, key.as_deref().map(str::as_bytes)).map(Some).map_err(|e| {
        CollectorError::invalid(
            "obfuscate_fields",
            "comma-separated dotted field paths, e.g. target_user.email,client.ip_address",
            &format!("{} ({e})", quote(&fields)),
        )
    })
}

/// What to set, per key, appended to "missing" and "empty" errors.
fn hint(key: &str) -> &'static str {
    match key {
        "base_url" => "set it to your account's events server, e.g. https://events.1password.com",
        "token" => "set it to a 1Password Events Reporting bearer token (from the Events Reporting integration)",
        "devo_url" => "set it to your Devo HTTP endpoint, e.g. https://http-us.devo.io",
        "devo_domain" => "set it to the Devo domain that receives the events",
        "devo_token" => "set it to a Devo HTTP ingestion token scoped to the 1Password tags",
        "start_time_value" => "remove it to start 24 hours back, or give an RFC 3339 time",
        _ => "remove it to use the default, or give a value",
    }
}

/// A given value as an error shows it: quoted, and cut when long.
fn quote(v: &str) -> String {
    crate::error::quoted(v)
}

/// A base URL; a refused one is shown without what may hold a secret
/// (a password in its userinfo, a token in its query or path).
fn endpoint(key: &str, value: String) -> Result<Endpoint, CollectorError> {
    Endpoint::parse(&value).map_err(|expected| {
        let shown = crate::text::redact_url(&value);
        let given = if shown == value {
            quote(&value)
        } else {
            format!("{} (its user, query or fragment not shown)", quote(&shown))
        };
        CollectorError::invalid(key, &expected, &given)
    })
}

fn parse_services(value: &str) -> Result<Vec<Service>, CollectorError> {
    let mut services = Vec::new();
    for name in value.split(',').map(str::trim) {
        let svc: Service = name.parse().map_err(|()| {
            CollectorError::invalid(
                "services",
                "a comma-separated list of audit, item_usage, sign_in_attempts",
                &format!("{} (unknown service {})", quote(value), quote(name)),
            )
        })?;
        if !services.contains(&svc) {
            services.push(svc);
        }
    }
    services.sort();
    Ok(services)
}

pub fn parse_time(key: &str, value: &str) -> Result<DateTime<Utc>, CollectorError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| CollectorError::invalid(key, "an RFC 3339 time such as 2026-01-31T00:00:00Z", &quote(value)))
}

/// Devo domain and host are URL path segments: keep them to characters that
/// need no escaping so the URL Devo sees is the URL we meant.
fn path_segment(key: &str, value: String) -> Result<String, CollectorError> {
    if value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@~".contains(c)) {
        Ok(value)
    } else {
        Err(CollectorError::invalid(key, "a name of letters, digits and - _ . @ ~", &quote(&value)))
    }
}

fn tag(key: &str, value: String) -> Result<String, CollectorError> {
    let ok = value.split('.').count() >= 2
        && value.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        });
    if ok {
        Ok(value)
    } else {
        Err(CollectorError::invalid(
            key,
            "a Devo tag: dot-separated lowercase words, e.g. auth.agilebits.onepassword.audit",
            &quote(&value),
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::error::{EMPTY_SETTING, INVALID_SETTING, MISSING_SETTING};
    use std::collections::HashMap;

    pub fn minimal() -> HashMap<&'static str, String> {
        HashMap::from([
            ("base_url", "https://events.1password.com".to_string()),
            ("token", "op-secret-token".to_string()),
            ("devo_url", "https://http-us.devo.io".to_string()),
            ("devo_domain", "acme".to_string()),
            ("devo_token", "abcdef0123456789abcdef0123456789".to_string()),
        ])
    }

    pub fn load(map: &HashMap<&str, String>) -> Result<Config, CollectorError> {
        Config::load(|k| Ok(map.get(k).cloned()))
    }

    #[test]
    fn defaults_fill_the_optional_keys() {
        let c = load(&minimal()).unwrap();
        assert_eq!(c.api_version, ApiVersion::V2);
        assert_eq!(c.services, Service::ALL.to_vec());
        assert_eq!(c.page_size, 1000);
        assert_eq!(c.start_time, None);
        assert_eq!(c.devo_host, "onepassword-collector");
        assert_eq!(c.tag(Service::ItemUsage), "auth.agilebits.onepassword.itemusage");
        assert_eq!(c.max_response_bytes, 4 << 20);
        assert_eq!(c.max_pages_per_tick, None, "no cap but the deadline and the budget");
        assert_eq!(c.lease_ttl, chrono::TimeDelta::seconds(15), "as Kubernetes' leader election");
        let mut m = minimal();
        m.insert("max_pages_per_tick", "5".into());
        assert_eq!(load(&m).unwrap().max_pages_per_tick, Some(5));
    }

    #[test]
    fn every_required_key_missing_or_empty_is_named() {
        for key in ["base_url", "token", "devo_url", "devo_domain", "devo_token"] {
            let mut m = minimal();
            m.remove(key);
            let e = load(&m).unwrap_err();
            assert_eq!(e.id, MISSING_SETTING, "{key}");
            assert!(e.message.contains(&format!("\"{key}\"")), "{}", e.message);
            m.insert(key, "  ".into());
            let e = load(&m).unwrap_err();
            assert_eq!(e.id, EMPTY_SETTING, "{key}");
            assert!(e.message.contains(key));
        }
    }

    #[test]
    fn every_missing_required_key_is_named_at_once() {
        let mut m = minimal();
        m.remove("devo_domain");
        m.remove("devo_token");
        let e = load(&m).unwrap_err();
        assert_eq!((e.id, e.kind), (MISSING_SETTING, ErrorKind::InitVariablesError));
        assert!(e.message.contains("\"devo_domain\" (") && e.message.contains("\"devo_token\" ("), "{}", e.message);
        let e = Config::load(|_| Ok(None)).unwrap_err();
        for key in REQUIRED_KEYS {
            assert!(e.message.contains(&format!("\"{key}\"")), "{key}: {}", e.message);
        }
    }

    #[test]
    fn malformed_values_say_what_was_given_and_expected() {
        let cases = [
            ("page_size", "abc", "1 to 1000"),
            ("page_size", "0", "1 to 1000"),
            ("page_size", "1001", "1 to 1000"),
            ("services", "audit,logins", "unknown service \"logins\""),
            ("api_version", "v3", "\"v1\" or \"v2\""),
            ("start_time_value", "yesterday", "RFC 3339"),
            ("base_url", "http://events.1password.com", "loopback"),
            ("devo_url", "not a url", "https://"),
            ("devo_domain", "a/b", "letters"),
            ("tag_audit", "Bad Tag", "Devo tag"),
            ("max_requests_per_minute", "601", "1 to 600"),
            ("max_requests_per_hour", "-1", "1 to 30000"),
            ("max_pages_per_tick", "0", "1 to 1000000"),
            ("tick_deadline_ms", "10", "1000 to 3600000"),
            ("request_timeout_ms", "fast", "100 to 600000"),
            ("lease_ttl_ms", "2999", "3000 to 600000"),
            ("lease_ttl_ms", "600001", "3000 to 600000"),
            ("devo_max_batch_events", "0", "1 to 1000000"),
            ("devo_gzip", "yes", "true or false"),
            ("max_response_bytes", "1023", "1024 to 268435456"),
            ("max_response_bytes", "1GiB", "1024 to 268435456"),
            ("obfuscation_mode", "scramble", "\"hash\" or \"mask\""),
        ];
        for (key, value, expected) in cases {
            let mut m = minimal();
            m.insert(key, value.into());
            let e = load(&m).unwrap_err();
            assert_eq!(e.id, INVALID_SETTING, "{key}={value}");
            assert!(e.message.contains(key) && e.message.contains(expected), "{}", e.message);
        }
    }

    #[test]
    fn secrets_are_described_not_echoed() {
        let mut m = minimal();
        m.insert("devo_token", "secret/with/slashes".into());
        let e = load(&m).unwrap_err();
        assert!(!e.message.contains("secret/with"), "{}", e.message);
        let c = load(&minimal()).unwrap();
        assert!(!format!("{c:?}").contains("op-secret-token"));
    }

    #[test]
    fn services_and_times_parse() {
        let mut m = minimal();
        m.insert("services", "sign_in_attempts, audit,audit".into());
        m.insert("start_time_value", "2026-01-01T00:00:00-03:00".into());
        let c = load(&m).unwrap();
        assert_eq!(c.services, vec![Service::Audit, Service::SignInAttempts]);
        assert_eq!(c.start_time.unwrap().to_rfc3339(), "2026-01-01T03:00:00+00:00");
    }

    #[test]
    fn a_refused_url_is_shown_without_userinfo_or_query() {
        for (key, value) in [
            ("base_url", "https://user:pw0rd@events.1password.com/p?token=qs3cret#fr4g"),
            ("devo_url", "https://http-us.devo.io/stream?token=qs3cret"),
            ("devo_url", "http://admin:pw0rd@10.0.0.1/relay"),
        ] {
            let mut m = minimal();
            m.insert(key, value.into());
            let e = load(&m).unwrap_err();
            assert_eq!(e.id, INVALID_SETTING, "{value}");
            for secret in ["pw0rd", "qs3cret", "fr4g", "user:", "admin"] {
                assert!(!e.message.contains(secret), "{secret} shown: {}", e.message);
            }
            assert!(e.message.contains(key) && e.message.contains("not shown"), "{}", e.message);
        }
        let mut m = minimal();
        m.insert("base_url", "https://user:pw0rd@events.1password.com/p?token=x".into());
        assert!(load(&m).unwrap_err().message.contains("\"https://events.1password.com/p\""));
    }

    #[test]
    fn unknown_keys_are_refused_with_the_closest_known_one() {
        assert_eq!(closest_key("page_sise"), Some("page_size"));
        assert_eq!(closest_key("obfuscate_field"), Some("obfuscate_fields"));
        assert_eq!(closest_key("devo_tokn"), Some("devo_token"));
        assert_eq!(closest_key("tokne"), Some("token"));
        assert_eq!(closest_key("Base_URL"), Some("base_url"));
        assert_eq!(closest_key("hostile_mode"), None);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert!(check_keys(KEYS.iter().copied()).is_ok());
        let e = check_keys(["page_size", "page_sise"]).unwrap_err();
        assert_eq!((e.id, e.kind), (INVALID_SETTING, ErrorKind::InitVariablesError));
        assert!(e.message.contains("\"page_sise\" is unknown (did you mean \"page_size\"?)"), "{}", e.message);
        let e = check_keys(["obfuscate_field", "devo_tokn", "zzz"]).unwrap_err();
        for says in ["did you mean \"obfuscate_fields\"", "did you mean \"devo_token\"", "\"zzz\" is unknown"] {
            assert!(e.message.contains(says), "{says}: {}", e.message);
        }
    }

    #[test]
    fn a_failing_config_source_is_its_own_error() {
        let e = Config::load(|_| Err("vault unreachable".into())).unwrap_err();
        assert_eq!(e.id, CONFIG_SOURCE);
        assert!(e.message.contains("base_url") && e.message.contains("vault unreachable"));
        // A host's complaint is bounded and inert, whatever it holds.
        let e = Config::load(|_| Err(format!("\x1b]0;pwned\x07{}", "v".repeat(1 << 20)))).unwrap_err();
        assert!(e.message.chars().count() < 400 && !e.message.chars().any(crate::text::is_unsafe), "{}", e.message);
    }
}
