//! How long to wait after a failure before asking again: `Retry-After` when
//! the server sent one, otherwise exponential back-off with jitter, capped
//! at the rate window (a minute) so a recovered server is used again soon.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// First wait, doubled per consecutive failure.
pub const BASE: TimeDelta = TimeDelta::seconds(2);
/// Never wait longer than the rate window.
pub const CAP: TimeDelta = TimeDelta::seconds(60);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub until: DateTime<Utc>,
    /// Consecutive failures that led here.
    pub attempts: u32,
}

impl Backoff {
    /// The back-off after one more failure. `retry_after` is the server's
    /// header value, if any; `entropy` is any varying number (the jitter).
    pub fn after_failure(
        previous: Option<&Backoff>,
        now: DateTime<Utc>,
        retry_after: Option<&str>,
        entropy: u64,
    ) -> Backoff {
        let attempts = previous.map_or(0, |b| b.attempts).saturating_add(1);
        let wait = match retry_after.and_then(|v| parse_retry_after(v, now)) {
            Some(wait) => wait.min(TimeDelta::hours(1)),
            None => {
                let exp = BASE * 2i32.saturating_pow(attempts.saturating_sub(1).min(16));
                let full = exp.min(CAP);
                // "Equal jitter": half fixed, half random, so waits never collapse to zero.
                let half_ms = full.num_milliseconds() / 2;
                let jitter = if half_ms > 0 { (entropy % half_ms as u64) as i64 } else { 0 };
                TimeDelta::milliseconds(half_ms + jitter)
            }
        };
        Backoff { until: now + wait, attempts }
    }
}

/// `Retry-After` is either delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<TimeDelta> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u32>() {
        return Some(TimeDelta::seconds(secs.into()));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc);
    Some((at - now).max(TimeDelta::zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn retry_after_wins_in_seconds_or_as_a_date() {
        let now = t("2026-01-01T00:00:00Z");
        assert_eq!(Backoff::after_failure(None, now, Some("17"), 5).until, t("2026-01-01T00:00:17Z"));
        let b = Backoff::after_failure(None, now, Some("Thu, 01 Jan 2026 00:01:30 GMT"), 5);
        assert_eq!(b.until, t("2026-01-01T00:01:30Z"));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn exponential_with_jitter_and_a_cap() {
        let now = t("2026-01-01T00:00:00Z");
        let mut prev: Option<Backoff> = None;
        let mut waits = vec![];
        for i in 0..10u64 {
            let b = Backoff::after_failure(prev.as_ref(), now, None, i * 7919);
            let wait = (b.until - now).num_milliseconds();
            let full = (BASE * 2i32.pow(b.attempts - 1)).min(CAP).num_milliseconds();
            assert!(wait >= full / 2 && wait < full, "attempt {}: {wait} not in [{}, {full})", b.attempts, full / 2);
            waits.push(wait);
            prev = Some(b);
        }
        assert!(waits[9] <= CAP.num_milliseconds());
        assert_eq!(prev.unwrap().attempts, 10);
        // different entropy, different wait (the point of jitter)
        let a = Backoff::after_failure(None, now, None, 1);
        let b = Backoff::after_failure(None, now, None, 2);
        assert_ne!(a.until, b.until);
    }
}
