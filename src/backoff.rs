//! How long to wait after a failure before asking again: `Retry-After` when
//! the server sent one, otherwise exponential back-off with jitter, capped
//! at the rate window (a minute) so a recovered server is used again soon.
//! A stored back-off is obeyed only as long as a back-off can last
//! ([`Backoff::pending`]).

use crate::time::MAX_CLOCK_SKEW;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// First wait, doubled per consecutive failure.
pub const BASE: TimeDelta = TimeDelta::seconds(2);
/// Never wait longer than the rate window.
pub const CAP: TimeDelta = TimeDelta::seconds(60);
/// A server's `Retry-After` is obeyed up to this long.
pub const RETRY_AFTER_CAP: TimeDelta = TimeDelta::hours(1);
/// The longest back-off [`Backoff::after_failure`] ever gives: the longer of
/// [`CAP`] and [`RETRY_AFTER_CAP`].
pub const LONGEST: TimeDelta = RETRY_AFTER_CAP;
const _: () =
    assert!(CAP.num_seconds() <= LONGEST.num_seconds() && RETRY_AFTER_CAP.num_seconds() <= LONGEST.num_seconds());

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
            Some(wait) => wait.min(RETRY_AFTER_CAP),
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

    /// Until when this back-off still holds requests back, if it does. A
    /// stored `until` further ahead than any back-off lasts ([`LONGEST`]
    /// plus [`MAX_CLOCK_SKEW`]) was not written by this collector under this
    /// clock: a corrupt record, or a clock far ahead. It is ignored rather
    /// than obeyed, so that it cannot defer a service or an account forever
    /// (capping it at "now plus the longest" would not do: that moves with
    /// every tick). The next failure starts a new back-off.
    pub fn pending(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        (self.until > now && !self.implausible(now)).then_some(self.until)
    }

    /// True when `until` is further ahead than any back-off lasts: see
    /// [`Backoff::pending`].
    pub fn implausible(&self, now: DateTime<Utc>) -> bool {
        self.until > now + LONGEST + MAX_CLOCK_SKEW
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

    #[test]
    fn a_stored_back_off_beyond_the_longest_is_not_obeyed() {
        let now = t("2026-01-01T00:00:00Z");
        // The longest a back-off can be: a Retry-After of a day is capped at an hour.
        let longest = Backoff::after_failure(None, now, Some("86400"), 1);
        assert_eq!(longest.until, now + LONGEST);
        assert_eq!(longest.pending(now), Some(now + LONGEST));
        let skewed = Backoff { until: now + LONGEST + MAX_CLOCK_SKEW, attempts: 1 };
        assert_eq!(skewed.pending(now), Some(skewed.until), "a clock a little ahead is believed");
        for until in [now + LONGEST + MAX_CLOCK_SKEW + TimeDelta::seconds(1), t("2300-01-01T00:00:00Z")] {
            let corrupt = Backoff { until, attempts: 3 };
            assert!(corrupt.implausible(now));
            assert_eq!(corrupt.pending(now), None, "{until}");
            // A failure after it starts anew from now.
            let next = Backoff::after_failure(Some(&corrupt), now, None, 0);
            assert!(next.until - now <= CAP, "{}", next.until);
        }
        let spent = Backoff { until: now, attempts: 1 };
        assert_eq!(spent.pending(now), None);
    }
}
