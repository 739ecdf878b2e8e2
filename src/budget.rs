//! The request budget of one 1Password account, shared by every service,
//! tenant and replica that collects from it, and the account-wide back-off
//! after a 429.
//!
//! 1Password allows 600 requests a minute and 30,000 an hour per account,
//! across all tokens. The budget is one record in the key-value store,
//! updated with compare-and-swap, so two ticks can never both spend the
//! last request.
//!
//! **Sliding windows.** The budget holds for *any* 60 seconds and *any*
//! 3,600 seconds, not per clock minute and hour: counted per clock minute,
//! a budget of 500 lets 500 requests land in the last second of one minute
//! and 500 more in the first of the next, 1,000 within two seconds. The
//! record keeps how many requests were spent in each second of the last
//! minute and in each minute of the last hour. A spend at time `t` counts
//! every bucket that overlaps the 60 (3,600) seconds before `t`: 61 of them,
//! the oldest maybe only partly inside. That overcounts a little (the budget
//! holds over 61 seconds and 61 minutes), never undercounts: whatever 60
//! seconds one looks at, the last spend in them saw every earlier spend in
//! them, and was allowed only while they numbered fewer than the ceiling.
//! The record stays small whatever the rate: at most 61 + 61 counters.

use crate::backoff::Backoff;
use crate::time::{self, MAX_CLOCK_SKEW};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const DEFAULT_PER_MINUTE: u32 = 500;
pub const DEFAULT_PER_HOUR: u32 = 25_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ceilings {
    pub per_minute: u32,
    pub per_hour: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetRecord {
    /// Requests spent in the clock minute `minute` (minutes since the Unix
    /// epoch) and the clock hour `hour` of the latest spend: not what the
    /// budget is checked against (`seconds` and `minutes` are), but what an
    /// operator reads, and what a collector of an earlier version sharing
    /// the store counts with.
    #[serde(default)]
    pub minute: i64,
    #[serde(default)]
    pub minute_count: u32,
    #[serde(default)]
    pub hour: i64,
    #[serde(default)]
    pub hour_count: u32,
    /// Requests spent per second of the last minute: (seconds since the
    /// epoch, count), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seconds: Vec<(i64, u32)>,
    /// Requests spent per minute of the last hour: (minutes since the
    /// epoch, count), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub minutes: Vec<(i64, u32)>,
    /// Set by a 429: no request for this account before its time.
    pub backoff: Option<Backoff>,
    /// Who wrote this version of the record, unique to each write (as
    /// [`crate::state::ServiceState::writer`]): two instances that spend the
    /// same request at once would otherwise write the same bytes, and a
    /// read-back could not tell whose write landed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
}

/// Why a request may not be made now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 1Password answered 429 recently; wait until then.
    RateLimited { until: DateTime<Utc> },
    /// Our own ceiling for the last minute or hour is spent.
    Exhausted { until: DateTime<Utc>, window: &'static str },
}

impl Refusal {
    pub fn until(&self) -> DateTime<Utc> {
        match self {
            Refusal::RateLimited { until } | Refusal::Exhausted { until, .. } => *until,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Refusal::RateLimited { until } => {
                format!("1Password rate-limited this account; no requests before {}", time::utc(*until))
            }
            Refusal::Exhausted { until, window } => {
                format!("the account's request budget for the last {window} is spent; more from {}", time::utc(*until))
            }
        }
    }
}

/// One of the two sliding windows: its buckets' width and how many of them
/// the window spans.
#[derive(Clone, Copy)]
struct Window {
    name: &'static str,
    /// Seconds per bucket.
    width: i64,
    /// Buckets before the current one that still overlap the window.
    span: i64,
}

const MINUTE: Window = Window { name: "minute", width: 1, span: 60 };
const HOUR: Window = Window { name: "hour", width: 60, span: 60 };

impl Window {
    fn bucket(self, now: DateTime<Utc>) -> i64 {
        now.timestamp().div_euclid(self.width)
    }

    /// The buckets a spend at `now` counts: the window's, and those ahead
    /// of this clock by up to [`MAX_CLOCK_SKEW`] (another instance's clock
    /// may be ahead). A bucket further ahead is a corrupt record or a clock
    /// far off, and is not obeyed: it could stop the account for as long.
    fn counts(self, bucket: i64, now: i64) -> bool {
        let ahead = MAX_CLOCK_SKEW.num_seconds().div_euclid(self.width);
        bucket >= now - self.span && bucket <= now + ahead
    }

    /// Requests spent within the window at `now`.
    fn spent(self, buckets: &[(i64, u32)], now: DateTime<Utc>) -> u64 {
        let b = self.bucket(now);
        buckets.iter().filter(|(t, _)| self.counts(*t, b)).map(|(_, n)| u64::from(*n)).sum()
    }

    /// `Err` with when the next request fits, if `ceiling` requests or more
    /// were spent within the window.
    fn check(self, buckets: &[(i64, u32)], now: DateTime<Utc>, ceiling: u32) -> Result<(), Refusal> {
        let mut over = self.spent(buckets, now).saturating_add(1).saturating_sub(u64::from(ceiling));
        if over == 0 {
            return Ok(());
        }
        // The oldest buckets leave the window first: the request fits once
        // enough of them have.
        let b = self.bucket(now);
        let mut counted: Vec<(i64, u32)> = buckets.iter().copied().filter(|(t, _)| self.counts(*t, b)).collect();
        counted.sort_unstable();
        let mut leaves = b + 1;
        for (t, n) in counted {
            leaves = t + self.span + 1;
            over = over.saturating_sub(u64::from(n));
            if over == 0 {
                break;
            }
        }
        let until = DateTime::from_timestamp(leaves.saturating_mul(self.width), 0).unwrap_or_default().max(now);
        Err(Refusal::Exhausted { until, window: self.name })
    }

    /// The buckets after one more request at `now`: those no longer in the
    /// window (or implausibly far ahead) dropped, oldest first.
    fn spend(self, buckets: &[(i64, u32)], now: DateTime<Utc>) -> Vec<(i64, u32)> {
        let b = self.bucket(now);
        let mut kept: Vec<(i64, u32)> = buckets.iter().copied().filter(|(t, _)| self.counts(*t, b)).collect();
        match kept.iter_mut().find(|(t, _)| *t == b) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => kept.push((b, 1)),
        }
        kept.sort_unstable();
        // Merged duplicates: a record is outside input.
        kept.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                earlier.1 = earlier.1.saturating_add(later.1);
            }
            same
        });
        kept
    }
}

impl BudgetRecord {
    pub fn key(account: &str) -> String {
        format!("budget/{account}")
    }

    pub fn decode(bytes: Option<&[u8]>) -> BudgetRecord {
        // A budget that cannot be read is treated as fresh: the worst case is
        // one window with a few more requests, still under 1Password's limit
        // thanks to the headroom of the defaults.
        let mut record: BudgetRecord = bytes.and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
        if record.seconds.is_empty() && record.minutes.is_empty() {
            record.seed_from_clock_windows();
        }
        record
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("budget serialises")
    }

    /// A record of an earlier version counted clock minutes and hours only:
    /// their requests count as spent at the last second of their minute,
    /// and in the minute of the latest spend (`minute`, when it lies in
    /// their hour), so they stay in the sliding windows at least as long as
    /// they were in the clock windows.
    fn seed_from_clock_windows(&mut self) {
        if self.minute_count > 0 {
            self.seconds.push((self.minute.saturating_mul(60).saturating_add(59), self.minute_count));
        }
        if self.hour_count > 0 {
            let first = self.hour.saturating_mul(60);
            let latest = self.minute.clamp(first, first.saturating_add(59));
            self.minutes.push((latest, self.hour_count));
        }
    }

    /// Requests spent in the 60 seconds before `now` (counted by whole
    /// seconds, so the oldest second may lie partly before).
    pub fn spent_last_minute(&self, now: DateTime<Utc>) -> u64 {
        MINUTE.spent(&self.seconds, now)
    }

    /// Requests spent in the hour before `now` (by whole minutes).
    pub fn spent_last_hour(&self, now: DateTime<Utc>) -> u64 {
        HOUR.spent(&self.minutes, now)
    }

    /// Whether a request may be made now, without spending.
    pub fn check(&self, now: DateTime<Utc>, ceilings: Ceilings) -> Result<(), Refusal> {
        // A back-off further ahead than any lasts is not obeyed (a corrupt
        // or skewed record): see `Backoff::pending`.
        if let Some(until) = self.backoff.as_ref().and_then(|b| b.pending(now)) {
            return Err(Refusal::RateLimited { until });
        }
        MINUTE.check(&self.seconds, now, ceilings.per_minute)?;
        HOUR.check(&self.minutes, now, ceilings.per_hour)
    }

    /// Spends one request, or says why not.
    pub fn spend(&self, now: DateTime<Utc>, ceilings: Ceilings) -> Result<BudgetRecord, Refusal> {
        self.check(now, ceilings)?;
        let mut next = self.clone();
        next.seconds = MINUTE.spend(&self.seconds, now);
        next.minutes = HOUR.spend(&self.minutes, now);
        let minute = now.timestamp().div_euclid(60);
        let hour = minute.div_euclid(60);
        if next.minute != minute {
            next.minute = minute;
            next.minute_count = 0;
        }
        if next.hour != hour {
            next.hour = hour;
            next.hour_count = 0;
        }
        next.minute_count = next.minute_count.saturating_add(1);
        next.hour_count = next.hour_count.saturating_add(1);
        if next.backoff.as_ref().is_some_and(|b| b.pending(now).is_none()) {
            // A spent back-off has done its job (and one that is not obeyed
            // has none to do); the next 429 starts a new one.
            next.backoff = None;
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const C: Ceilings = Ceilings { per_minute: 3, per_hour: 5 };

    #[test]
    fn the_minute_ceiling_refuses_until_the_oldest_spend_is_a_minute_old() {
        let mut b = BudgetRecord::default();
        for _ in 0..3 {
            b = b.spend(t("2026-01-01T00:00:10Z"), C).unwrap();
        }
        // Not at the next clock minute: 60 seconds after the spends' second.
        let r = b.spend(t("2026-01-01T00:01:00Z"), C).unwrap_err();
        assert_eq!(r, Refusal::Exhausted { until: t("2026-01-01T00:01:11Z"), window: "minute" });
        let r = b.spend(t("2026-01-01T00:01:10.900Z"), C).unwrap_err();
        assert_eq!(r.until(), t("2026-01-01T00:01:11Z"));
        b = b.spend(t("2026-01-01T00:01:11Z"), C).unwrap();
        assert_eq!((b.minute_count, b.hour_count), (1, 4));
        assert_eq!(
            (b.spent_last_minute(t("2026-01-01T00:01:11Z")), b.spent_last_hour(t("2026-01-01T00:01:11Z"))),
            (1, 4)
        );
        b = b.spend(t("2026-01-01T00:01:12Z"), C).unwrap();
        // The hour: five spent in minutes 0 and 1, refused until minute 0
        // is an hour old.
        let r = b.spend(t("2026-01-01T00:05:00Z"), C).unwrap_err();
        assert_eq!(r, Refusal::Exhausted { until: t("2026-01-01T01:01:00Z"), window: "hour" });
        let r = b.spend(t("2026-01-01T01:00:30Z"), C).unwrap_err();
        assert_eq!(r.until(), t("2026-01-01T01:01:00Z"));
        b = b.spend(t("2026-01-01T01:01:00Z"), C).unwrap();
        // Two of minute 1 are left, and this one.
        assert_eq!(b.spent_last_hour(t("2026-01-01T01:01:00Z")), 3);
        assert!(b.seconds.len() <= 61 && b.minutes.len() <= 61);
    }

    /// Drives the budget at its fastest (a spend whenever it allows one,
    /// 10 ms apart at most) for `span`, from `start`, and returns the spend
    /// times.
    fn spend_flat_out(ceilings: Ceilings, start: DateTime<Utc>, span: TimeDelta) -> Vec<DateTime<Utc>> {
        let mut b = BudgetRecord::default();
        let mut now = start;
        let mut spent = Vec::new();
        while now < start + span {
            match b.spend(now, ceilings) {
                Ok(next) => {
                    b = BudgetRecord::decode(Some(&next.encode()));
                    spent.push(now);
                    now += TimeDelta::milliseconds(10);
                }
                Err(r) => {
                    assert!(r.until() > now, "a refusal names a later time: {r:?} at {now}");
                    now = r.until();
                }
            }
            assert!(b.seconds.len() <= 61 + 300 && b.minutes.len() <= 61 + 5, "bounded record");
        }
        spent
    }

    /// The most spends within any `window` (closed at both ends: spends
    /// exactly `window` apart count together, which only makes it
    /// stricter).
    fn most_within(spent: &[DateTime<Utc>], window: TimeDelta) -> usize {
        let mut most = 0;
        let mut first = 0;
        for (last, t) in spent.iter().enumerate() {
            while *t - spent[first] > window {
                first += 1;
            }
            most = most.max(last - first + 1);
        }
        most
    }

    #[test]
    fn the_budget_holds_in_every_60_and_every_3600_seconds_across_minute_and_hour_boundaries() {
        let defaults = Ceilings { per_minute: DEFAULT_PER_MINUTE, per_hour: DEFAULT_PER_HOUR };
        // Starting just before a minute and an hour boundary, as a clock
        // window budget would double up there.
        let start = t("2026-01-01T00:59:59.500Z");
        let spent = spend_flat_out(defaults, start, TimeDelta::hours(3));
        assert_eq!(most_within(&spent, TimeDelta::seconds(60)), 500);
        assert_eq!(most_within(&spent, TimeDelta::seconds(3600)), 25_000);
        // And it is used: within a minute's bucket of the ideal pace.
        let first_hour = spent.iter().filter(|s| **s < start + TimeDelta::seconds(3600)).count();
        assert!(first_hour >= 24_500, "{first_hour}");
        let total = spent.len();
        assert!(total >= 3 * 24_500, "{total} in three hours");
        // The ceiling is reached straight away, and the next 500 wait for
        // the first to be (a little over) a minute old.
        assert_eq!(spent[499] - spent[0], TimeDelta::milliseconds(4990));
        let wait = spent[500] - spent[0];
        assert!(wait > TimeDelta::seconds(60) && wait <= TimeDelta::seconds(61), "{wait}");

        // Small ceilings, every boundary of minutes and hours crossed many times.
        let small = Ceilings { per_minute: 7, per_hour: 40 };
        for offset_ms in [0, 1, 499, 999, 59_999] {
            let start = t("2026-01-01T23:59:00Z") + TimeDelta::milliseconds(offset_ms);
            let spent = spend_flat_out(small, start, TimeDelta::hours(5));
            assert_eq!(most_within(&spent, TimeDelta::seconds(60)), 7, "{offset_ms}");
            assert_eq!(most_within(&spent, TimeDelta::seconds(3600)), 40, "{offset_ms}");
            assert!(spent.len() >= 5 * 39, "{}", spent.len());
        }
    }

    #[test]
    fn two_clocks_spending_into_one_record_still_hold_the_window() {
        // Two instances whose clocks are 30 s apart take turns.
        let c = Ceilings { per_minute: 10, per_hour: 1000 };
        let mut b = BudgetRecord::default();
        let mut real = t("2026-01-01T00:00:00Z");
        let mut spent = Vec::new();
        for i in 0..10_000 {
            let skew = if i % 2 == 0 { TimeDelta::zero() } else { TimeDelta::seconds(30) };
            if let Ok(next) = b.spend(real + skew, c) {
                b = next;
                spent.push(real);
            }
            real += TimeDelta::milliseconds(250);
        }
        // Counted on either clock, never more than the ceiling in a window
        // of the real clock widened by the skew.
        assert!(most_within(&spent, TimeDelta::seconds(30)) <= 10);
        assert!(!spent.is_empty());
    }

    #[test]
    fn a_record_of_the_clock_window_version_keeps_its_spends() {
        // 500 spent in minute 29540880 (2026-03-02T12:00), read at 12:00:30.
        let old = br#"{"minute":29540880,"minute_count":500,"hour":492348,"hour_count":900,"backoff":null}"#;
        let b = BudgetRecord::decode(Some(old));
        let now = t("2026-03-02T12:00:30Z");
        let defaults = Ceilings { per_minute: 500, per_hour: 25_000 };
        // Counted as spent at 12:00:59: nothing more until 12:02:00.
        assert_eq!(b.check(now, defaults).unwrap_err().until(), t("2026-03-02T12:02:00Z"));
        assert_eq!(b.spent_last_hour(now), 900);
        let next = b.spend(t("2026-03-02T12:02:00Z"), defaults).unwrap();
        // Written with both: an earlier version reading it counts its clock windows.
        let json: serde_json::Value = serde_json::from_slice(&next.encode()).unwrap();
        assert_eq!((json["minute_count"].as_u64(), json["hour_count"].as_u64()), (Some(1), Some(901)));
        assert!(json["seconds"].is_array() && json["minutes"].is_array());
    }

    #[test]
    fn spends_far_ahead_of_the_clock_are_not_obeyed_and_junk_counts_cannot_overflow() {
        let now = t("2026-01-01T00:00:00Z");
        let far = now.timestamp() + 3600;
        let b = BudgetRecord { seconds: vec![(far, u32::MAX), (far, u32::MAX)], ..Default::default() };
        assert_eq!(b.check(now, C), Ok(()));
        let next = b.spend(now, C).unwrap();
        assert_eq!(next.seconds, vec![(now.timestamp(), 1)]);
        // Within the skew, they count (another clock may be ahead), without overflow.
        let near = now.timestamp() + 60;
        let b = BudgetRecord { seconds: vec![(near, u32::MAX), (near, u32::MAX)], ..Default::default() };
        let r = b.check(now, C).unwrap_err();
        assert_eq!(r.until(), DateTime::from_timestamp(near + 61, 0).unwrap());
    }

    #[test]
    fn a_backoff_refuses_until_it_ends() {
        let b = BudgetRecord {
            backoff: Some(Backoff { until: t("2026-01-01T00:00:30Z"), attempts: 1 }),
            ..Default::default()
        };
        assert!(matches!(b.spend(t("2026-01-01T00:00:29Z"), C), Err(Refusal::RateLimited { .. })));
        let next = b.spend(t("2026-01-01T00:00:30Z"), C).unwrap();
        assert_eq!(next.backoff, None);
        assert_eq!(BudgetRecord::decode(Some(&next.encode())), next);
        assert_eq!(BudgetRecord::decode(Some(b"junk")), BudgetRecord::default());
    }

    #[test]
    fn a_stored_backoff_beyond_the_longest_does_not_stop_the_account() {
        let now = t("2026-01-01T00:00:00Z");
        let corrupt = BudgetRecord {
            backoff: Some(Backoff { until: t("2300-01-01T00:00:00Z"), attempts: 1 }),
            ..Default::default()
        };
        assert_eq!(corrupt.check(now, C), Ok(()));
        let next = corrupt.spend(now, C).unwrap();
        assert_eq!(next.backoff, None, "spending clears it");
        // One as long as a Retry-After may make it is obeyed.
        let longest = BudgetRecord {
            backoff: Some(Backoff { until: now + crate::backoff::LONGEST, attempts: 1 }),
            ..Default::default()
        };
        assert_eq!(longest.check(now, C), Err(Refusal::RateLimited { until: now + crate::backoff::LONGEST }));
    }
}
