//! Errors the collector reports, each with a stable numeric id.
//!
//! The ids follow Devo's own 1Password collector where it has one
//! (InitVariablesError 1-3, PrePullError 200, 1Password's 4xx and 5xx
//! statuses as themselves) so a Devo user's runbooks keep working; the rest
//! are ours and are listed in the README. An upstream status is also kept in
//! its own field, [`CollectorError::http_status`]: a server may answer any
//! three-digit status, and one outside 400-599 (say 900) must not pass for
//! one of our ids ([`onepassword_status_id`]). Messages name what is wrong
//! and what to do, never carry a secret, and are one bounded line of inert
//! text ([`crate::text::clean`]) whatever outside input they repeat.

use serde::Serialize;
use std::fmt;

/// A required setting is missing.
pub const MISSING_SETTING: u32 = 1;
/// A setting has the wrong type or shape.
pub const INVALID_SETTING: u32 = 2;
/// A setting is an empty string.
pub const EMPTY_SETTING: u32 = 3;
/// The host's config source could not be read at all.
pub const CONFIG_SOURCE: u32 = 4;
/// The key-value store (persistence) could not be opened, read or written.
pub const PERSISTENCE: u32 = 200;
/// A stored checkpoint exists but cannot be decoded.
pub const CHECKPOINT_UNREADABLE: u32 = 201;
/// Another instance took this service's lease while this tick was working.
pub const LEASE_LOST: u32 = 202;
/// The token is not scoped for the service (from introspection or its claims).
pub const SCOPE_MISSING: u32 = 610;
/// 1Password could not be reached (connection, DNS, timeout, refused by host).
pub const ONEPASSWORD_UNREACHABLE: u32 = 600;
/// 1Password answered 200 with a body that is not a valid events page.
pub const ONEPASSWORD_BAD_BODY: u32 = 601;
/// 1Password answered a status outside 400-599 that is not the 200 asked
/// for (the status itself is in `http_status`).
pub const ONEPASSWORD_UNEXPECTED_STATUS: u32 = 602;
/// 1Password's answer is larger than `max_response_bytes`.
pub const ONEPASSWORD_TOO_LARGE: u32 = 603;
/// 1Password answered the stored cursor with the same cursor, `has_more`
/// and nothing new: a cursor that does not move.
pub const ONEPASSWORD_STUCK_CURSOR: u32 = 604;
/// Devo answered with a non-2xx status.
pub const DEVO_REJECTED: u32 = 700;
/// Devo could not be reached.
pub const DEVO_UNREACHABLE: u32 = 701;
/// Devo's answer is larger than `max_response_bytes`.
pub const DEVO_TOO_LARGE: u32 = 702;

/// The host stopped the tick (a limit, a trap, the wall deadline). Reported
/// by hosts, never by the collector itself.
pub const HOST_FAILURE: u32 = 900;
/// A component reported one of the host's ids (900 and up) about itself:
/// hosts show such an error under this id, naming the id it claimed, so
/// that only the host's own stops read as [`HOST_FAILURE`].
pub const CLAIMED_HOST_ID: u32 = 901;

/// Every error id with what an operator does about it: the one table the
/// core, the hosts and the command line read (the README's Errors table
/// says the same in more words). An entry may cover a range.
pub const REMEDIES: &[(std::ops::RangeInclusive<u32>, &str)] = &[
    (MISSING_SETTING..=MISSING_SETTING, "set the key named in the message"),
    (INVALID_SETTING..=INVALID_SETTING, "fix the value named in the message, or rename or remove the unknown key"),
    (EMPTY_SETTING..=EMPTY_SETTING, "give the key a value or remove it"),
    (CONFIG_SOURCE..=CONFIG_SOURCE, "check the host's variables"),
    (PERSISTENCE..=PERSISTENCE, "check the key-value store named in the message"),
    (CHECKPOINT_UNREADABLE..=CHECKPOINT_UNREADABLE, "delete the key named in the message to restart that service"),
    (LEASE_LOST..=LEASE_LOST, "nothing to do; raise tick_deadline_ms or request_timeout_ms if ticks are that slow"),
    (401..=401, "issue a 1Password token with the feature named in the message"),
    (429..=429, "nothing to do: the account backs off; lower max_requests_per_minute if it recurs"),
    (400..=599, "retried next tick; check 1Password's status if it persists"),
    (ONEPASSWORD_UNREACHABLE..=ONEPASSWORD_UNREACHABLE, "check base_url and the allowed outbound hosts"),
    (ONEPASSWORD_BAD_BODY..=ONEPASSWORD_BAD_BODY, "check that base_url is the 1Password Events API, not a proxy"),
    (
        ONEPASSWORD_UNEXPECTED_STATUS..=ONEPASSWORD_UNEXPECTED_STATUS,
        "check that base_url is the 1Password Events API, not a proxy; retried next tick",
    ),
    (ONEPASSWORD_TOO_LARGE..=ONEPASSWORD_TOO_LARGE, "lower page_size or raise max_response_bytes; retried next tick"),
    (SCOPE_MISSING..=SCOPE_MISSING, "issue a token with the named feature, or remove the service from services"),
    (DEVO_REJECTED..=DEVO_REJECTED, "check devo_domain and devo_token; the page is sent again next tick"),
    (DEVO_UNREACHABLE..=DEVO_UNREACHABLE, "check devo_url and the allowed outbound hosts"),
    (DEVO_TOO_LARGE..=DEVO_TOO_LARGE, "check devo_url (Devo's answers are small) or raise max_response_bytes"),
    (HOST_FAILURE..=HOST_FAILURE, "raise the limit named in the message, or see the message"),
    (CLAIMED_HOST_ID..=CLAIMED_HOST_ID, "the component claimed a host's id: see the message, and check the component"),
];

/// What to do about error `id` ([`REMEDIES`]; the first entry that covers it).
pub fn remedy(id: u32) -> &'static str {
    REMEDIES.iter().find(|(ids, _)| ids.contains(&id)).map_or("see the message", |(_, remedy)| remedy)
}

/// The id of an error for a 1Password answer with this (non-200) status:
/// the status itself for 400-599, as Devo's collector reports them, and
/// [`ONEPASSWORD_UNEXPECTED_STATUS`] for anything else, so that no status a
/// server makes up collides with an id of ours (600, 700, the host's 900).
pub fn onepassword_status_id(status: u16) -> u32 {
    if (400..=599).contains(&status) {
        u32::from(status)
    } else {
        ONEPASSWORD_UNEXPECTED_STATUS
    }
}

/// The most characters of outside input an error message repeats, at its
/// start and its end ([`bounded`], [`quoted`]): enough to recognise a value
/// or a parser's complaint, never a megabyte body in a log line.
pub const EXCERPT_CHARS: usize = 60;

/// `text` as it is when short; else its start and its end around an
/// ellipsis. For text that may repeat outside input, such as a parser's
/// complaint (serde quotes the string it did not expect, whatever its size).
pub fn bounded(text: &str) -> String {
    if text.char_indices().nth(3 * EXCERPT_CHARS).is_none() {
        return text.to_owned();
    }
    // Found from either end, without walking a megabyte in between.
    let head_end = text.char_indices().nth(EXCERPT_CHARS).map_or(text.len(), |(i, _)| i);
    let tail_start = text.char_indices().rev().nth(EXCERPT_CHARS - 1).map_or(0, |(i, _)| i);
    format!("{}…{}", &text[..head_end], &text[tail_start..])
}

/// A value as an error message shows it: quoted and escaped, and when long
/// (once escaped), the start of it and its length.
pub fn quoted(value: &str) -> String {
    let count = value.chars().count();
    if count <= 2 * EXCERPT_CHARS {
        let quoted = format!("{value:?}");
        if quoted.chars().count() <= 2 * EXCERPT_CHARS + 2 {
            return quoted;
        }
    }
    let mut head = String::new();
    for c in value.chars() {
        let escaped = c.escape_debug().to_string();
        if head.chars().count() + escaped.chars().count() > EXCERPT_CHARS {
            break;
        }
        head.push_str(&escaped);
    }
    format!("\"{head}\"… ({count} characters)")
}

/// The error families, named as Devo's collector names them where it can.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ErrorKind {
    InitVariablesError,
    ConfigSourceError,
    PrePullError,
    /// 1Password could not be read: an unexpected status (id = a 4xx/5xx
    /// status, else 602), no answer, or an answer that is not a page.
    PullError,
    DeliveryError,
    /// The token may not read a service.
    TokenScopeError,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InitVariablesError => "InitVariablesError",
            ErrorKind::ConfigSourceError => "ConfigSourceError",
            ErrorKind::PrePullError => "PrePullError",
            ErrorKind::PullError => "PullError",
            ErrorKind::DeliveryError => "DeliveryError",
            ErrorKind::TokenScopeError => "TokenScopeError",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct CollectorError {
    pub id: u32,
    pub kind: ErrorKind,
    pub message: String,
    /// The HTTP status 1Password or Devo answered, when the error is about
    /// one: kept apart from `id`, which is ours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
}

impl fmt::Display for CollectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind.as_str(), self.id, self.message)
    }
}

impl CollectorError {
    /// The message is cleaned and bounded here, once for every error: it
    /// may repeat outside input (an upstream body, a host's complaint).
    pub fn new(kind: ErrorKind, id: u32, message: impl Into<String>) -> Self {
        let message = crate::text::clean(&message.into(), crate::text::MAX_MESSAGE_CHARS);
        CollectorError { id, kind, message, http_status: None }
    }

    /// The error with the upstream status it is about.
    pub fn with_http_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }

    pub fn missing(key: &str, hint: &str) -> Self {
        Self::new(
            ErrorKind::InitVariablesError,
            MISSING_SETTING,
            format!("required setting \"{key}\" is missing: {hint}"),
        )
    }

    pub fn empty(key: &str, hint: &str) -> Self {
        Self::new(ErrorKind::InitVariablesError, EMPTY_SETTING, format!("setting \"{key}\" is an empty string: {hint}"))
    }

    /// `given` must never be a secret's value: callers describe secrets instead.
    pub fn invalid(key: &str, expected: &str, given: &str) -> Self {
        Self::new(
            ErrorKind::InitVariablesError,
            INVALID_SETTING,
            format!("setting \"{key}\" must be a valid instance of {expected}, not {given}"),
        )
    }

    /// The inverse of [`ErrorKind::as_str`], for hosts that receive the name.
    pub fn kind_from_str(name: &str) -> Option<ErrorKind> {
        [
            ErrorKind::InitVariablesError,
            ErrorKind::ConfigSourceError,
            ErrorKind::PrePullError,
            ErrorKind::PullError,
            ErrorKind::DeliveryError,
            ErrorKind::TokenScopeError,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }

    pub fn persistence(action: &str, detail: &str) -> Self {
        Self::new(
            ErrorKind::PrePullError,
            PERSISTENCE,
            format!(
                "persistence could not be accessed ({action}: {detail}); nothing was sent for this \
                 service and its checkpoint is unchanged. Check the host's key-value store \
                 (the component needs the \"default\" store) and retry"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_family_id_and_message() {
        let e = CollectorError::missing("token", "set it");
        assert_eq!(e.to_string(), "InitVariablesError 1: required setting \"token\" is missing: set it");
        let e = CollectorError::invalid("page_size", "an integer from 1 to 1000", "\"abc\"");
        assert_eq!(e.id, INVALID_SETTING);
        assert!(e.message.contains("page_size") && e.message.contains("\"abc\""));
    }

    #[test]
    fn outside_input_in_messages_is_bounded() {
        assert_eq!(quoted("a\"b"), r#""a\"b""#);
        assert_eq!(bounded("short"), "short");
        let long =
            format!("invalid type: string \"{}\", expected a boolean at line 1 column 1000030", "x".repeat(1 << 20));
        let b = bounded(&long);
        assert!(b.chars().count() <= 2 * EXCERPT_CHARS + 1, "{b}");
        assert!(b.starts_with("invalid type: string \"xx") && b.ends_with("at line 1 column 1000030"), "{b}");
        let q = quoted(&"é".repeat(1 << 20));
        assert!(q.ends_with(&format!("… ({} characters)", 1 << 20)) && q.chars().count() < 100, "{q}");
        // Escapes count: 100 backslashes show as at most 60 characters.
        let q = quoted(&"\\".repeat(100));
        assert_eq!(q, format!("\"{}\"… (100 characters)", "\\".repeat(60)));
    }

    #[test]
    fn messages_are_one_bounded_line_of_inert_text() {
        let body = format!("\x1b[2J\x1b]0;pwned\x07\n{}", "y".repeat(1 << 20));
        let e = CollectorError::new(ErrorKind::PullError, 503, format!("1Password said {body}"));
        assert!(e.message.chars().count() <= crate::text::MAX_MESSAGE_CHARS + 1, "{}", e.message.len());
        assert!(!e.message.chars().any(crate::text::is_unsafe) && !e.message.contains('\n'), "{}", e.message);
        assert!(e.message.starts_with("1Password said \\u{1b}[2J"), "{}", e.message);
    }

    #[test]
    fn only_4xx_and_5xx_statuses_serve_as_ids() {
        assert_eq!(onepassword_status_id(401), 401);
        assert_eq!(onepassword_status_id(599), 599);
        for status in [100, 204, 302, 600, 602, 700, 701, 900, 999] {
            assert_eq!(onepassword_status_id(status), ONEPASSWORD_UNEXPECTED_STATUS, "{status}");
        }
        let e = CollectorError::new(ErrorKind::PullError, 602, "x").with_http_status(900);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!((json["id"].as_u64(), json["http_status"].as_u64()), (Some(602), Some(900)));
        let plain = serde_json::to_value(CollectorError::missing("token", "set it")).unwrap();
        assert!(plain.get("http_status").is_none(), "{plain}");
    }
}
