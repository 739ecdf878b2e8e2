//! How a time is shown to an operator: in tick reports (`checkpoint`,
//! `deferred_until`, `started_at`), log lines, warnings, validate checks and
//! error messages. Always UTC, RFC 3339 with a `Z` and whole seconds, e.g.
//! `2026-11-27T16:21:25Z`, whatever offset the time came with.
//!
//! Only what is shown: the raw events go to Devo exactly as 1Password wrote
//! them, offsets included, and stored identities (the checkpoint's
//! `start_time_value`, a page's start) keep their own formats.
//!
//! Also how far ahead of this host's clock a time read from outside is
//! believed: [`MAX_CLOCK_SKEW`].

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

/// How far ahead of this host's clock a time read from outside may be and
/// still be believed: an event's `timestamp`, a stored lease's expiry, a
/// stored back-off's end. Clocks of hosts and of 1Password differ by
/// seconds, rarely by more, so an event a little "in the future" is normal
/// and counts. A time further ahead is a bad timestamp, a corrupt record or
/// a clock far off; trusting it would stall a service until then (a
/// checkpoint read again from the future, a lease or back-off that never
/// ends), so it is ignored and reported instead. Minutes, not hours: a
/// stall this long is the most a bad time can cost.
pub const MAX_CLOCK_SKEW: TimeDelta = TimeDelta::minutes(5);

/// A time as shown to an operator: `2026-11-27T16:21:25Z` (fractions of a
/// second are cut).
pub fn utc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An RFC 3339 text with any offset (an event's `timestamp`), shown in UTC
/// as [`utc`] does; `None` when it is not an RFC 3339 time.
pub fn utc_text(text: &str) -> Option<String> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| utc(t.with_timezone(&Utc)))
}

/// [`utc_text`], or the text as it is when it is not a time: what a report
/// shows of a stored time text.
pub fn shown(text: &str) -> String {
    utc_text(text).unwrap_or_else(|| text.to_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every RFC 3339-shaped time in `text` that is not shown as [`utc`]
    /// shows it (an offset, a fraction of a second), for tests to assert
    /// there are none.
    pub fn not_utc(text: &str) -> Vec<String> {
        const SHAPE: &[u8] = b"dddd-dd-ddTdd:dd:dd";
        let b = text.as_bytes();
        let mut bad = Vec::new();
        let mut i = 0;
        while i + SHAPE.len() <= b.len() {
            let fits = SHAPE.iter().zip(&b[i..]).all(|(s, c)| if *s == b'd' { c.is_ascii_digit() } else { s == c });
            if !fits {
                i += 1;
                continue;
            }
            let end = i + SHAPE.len();
            if b.get(end) != Some(&b'Z') {
                // Show the time with what follows it (a fraction, an offset).
                let tail = b[end..].iter().take_while(|c| c.is_ascii_digit() || b".:+-".contains(c)).count();
                bad.push(String::from_utf8_lossy(&b[i..end + tail]).into_owned());
            }
            i = end;
        }
        bad
    }

    #[test]
    fn times_are_shown_in_utc_with_whole_seconds() {
        let t = DateTime::parse_from_rfc3339("2026-11-26T14:36:46.789-07:00").unwrap().with_timezone(&Utc);
        assert_eq!(utc(t), "2026-11-26T21:36:46Z");
        assert_eq!(utc_text("2026-11-26T14:36:46-07:00").as_deref(), Some("2026-11-26T21:36:46Z"));
        assert_eq!(utc_text("2026-11-27T03:06:46+05:30").as_deref(), Some("2026-11-26T21:36:46Z"));
        assert_eq!(utc_text("2026-11-26T21:36:46.5Z").as_deref(), Some("2026-11-26T21:36:46Z"));
        assert_eq!(utc_text("2026-11-26T21:36:46+00:00").as_deref(), Some("2026-11-26T21:36:46Z"));
        assert_eq!(utc_text("2026-11-26T21:36:46Z").as_deref(), Some("2026-11-26T21:36:46Z"));
        assert_eq!(utc_text("yesterday"), None);
        assert_eq!(shown("2026-11-26T14:36:46-07:00"), "2026-11-26T21:36:46Z");
        assert_eq!(shown("yesterday"), "yesterday");
    }

    #[test]
    fn the_test_scanner_finds_every_time_not_shown_in_utc() {
        let text = r#"{"a":"2026-11-26T21:36:46Z","b":"2026-11-26T14:36:46-07:00","c":"x 2026-11-27T03:06:46+05:30 y","d":"2026-11-26T21:36:46.5Z","e":"2026-11-26T21:36:46+00:00"}"#;
        assert_eq!(
            not_utc(text),
            [
                "2026-11-26T14:36:46-07:00",
                "2026-11-27T03:06:46+05:30",
                "2026-11-26T21:36:46.5",
                "2026-11-26T21:36:46+00:00"
            ]
        );
        assert!(not_utc("started 2026-11-26T21:36:46Z, until 2026-11-26T21:37:00Z").is_empty());
    }
}
