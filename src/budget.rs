//! The request budget of one 1Password account, shared by every service,
//! tenant and replica that collects from it, and the account-wide back-off
//! after a 429.
//!
//! 1Password allows 600 requests a minute and 30,000 an hour per account,
//! across all tokens. The budget is one record in the key-value store,
//! updated with compare-and-swap, so two ticks can never both spend the
//! last request. Windows are fixed clock minutes and hours, the same
//! windows the limit is counted in.

use crate::backoff::Backoff;
use crate::time;
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
    /// Minutes since the Unix epoch of the window `minute_count` counts.
    pub minute: i64,
    pub minute_count: u32,
    pub hour: i64,
    pub hour_count: u32,
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
    /// Our own ceiling for this minute or hour is spent.
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
                format!("the account's request budget for this {window} is spent; more from {}", time::utc(*until))
            }
        }
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
        bytes.and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("budget serialises")
    }

    /// Whether a request may be made now, without spending.
    pub fn check(&self, now: DateTime<Utc>, ceilings: Ceilings) -> Result<(), Refusal> {
        // A back-off further ahead than any lasts is not obeyed (a corrupt
        // or skewed record): see `Backoff::pending`.
        if let Some(until) = self.backoff.as_ref().and_then(|b| b.pending(now)) {
            return Err(Refusal::RateLimited { until });
        }
        let (minute, hour) = windows(now);
        if self.minute == minute && self.minute_count >= ceilings.per_minute {
            return Err(Refusal::Exhausted { until: from_minutes(minute + 1), window: "minute" });
        }
        if self.hour == hour && self.hour_count >= ceilings.per_hour {
            return Err(Refusal::Exhausted { until: from_minutes((hour + 1) * 60), window: "hour" });
        }
        Ok(())
    }

    /// Spends one request, or says why not.
    pub fn spend(&self, now: DateTime<Utc>, ceilings: Ceilings) -> Result<BudgetRecord, Refusal> {
        self.check(now, ceilings)?;
        let (minute, hour) = windows(now);
        let mut next = self.clone();
        if next.minute != minute {
            next.minute = minute;
            next.minute_count = 0;
        }
        if next.hour != hour {
            next.hour = hour;
            next.hour_count = 0;
        }
        next.minute_count += 1;
        next.hour_count += 1;
        if next.backoff.as_ref().is_some_and(|b| b.pending(now).is_none()) {
            // Keep the attempt count until a request succeeds? A spent
            // back-off has done its job (and one that is not obeyed has
            // none to do); the next 429 starts a new one.
            next.backoff = None;
        }
        Ok(next)
    }
}

fn windows(now: DateTime<Utc>) -> (i64, i64) {
    let minute = now.timestamp().div_euclid(60);
    (minute, minute.div_euclid(60))
}

fn from_minutes(minute: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(minute * 60, 0).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const C: Ceilings = Ceilings { per_minute: 3, per_hour: 5 };

    #[test]
    fn the_minute_ceiling_refuses_until_the_next_minute() {
        let mut b = BudgetRecord::default();
        for _ in 0..3 {
            b = b.spend(t("2026-01-01T00:00:10Z"), C).unwrap();
        }
        let r = b.spend(t("2026-01-01T00:00:59Z"), C).unwrap_err();
        assert_eq!(r, Refusal::Exhausted { until: t("2026-01-01T00:01:00Z"), window: "minute" });
        b = b.spend(t("2026-01-01T00:01:00Z"), C).unwrap();
        assert_eq!((b.minute_count, b.hour_count), (1, 4));
        b = b.spend(t("2026-01-01T00:01:01Z"), C).unwrap();
        let r = b.spend(t("2026-01-01T00:02:00Z"), C).unwrap_err();
        assert_eq!(r, Refusal::Exhausted { until: t("2026-01-01T01:00:00Z"), window: "hour" });
        assert!(b.spend(t("2026-01-01T01:00:00Z"), C).is_ok());
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
