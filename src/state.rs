//! Everything the collector keeps per service between ticks, as one JSON
//! record in the key-value store (`service/<name>`), always updated with
//! compare-and-swap: the checkpoint, the lease that keeps two ticks from
//! collecting the same service at once, the back-off after failures, and the
//! delivery statistics. Its size is bounded whatever was collected.

use crate::backoff::Backoff;
use crate::checkpoint::Checkpoint;
use crate::config::{LEASE_TTL_MS_RANGE, MAX_REQUEST_TIMEOUT_MS, MAX_TICK_DEADLINE_MS};
use crate::error::{self, CollectorError, ErrorKind, CHECKPOINT_UNREADABLE};
use crate::service::Service;
use crate::time::MAX_CLOCK_SKEW;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// Bumped whenever the stored shape changes in a way older code cannot read.
pub const SCHEMA_VERSION: u32 = 1;

/// The key-value bucket every host maps (Spin's default store).
pub const BUCKET: &str = "default";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    pub version: u32,
    /// Absent until the first page was delivered (or the first cursor kept).
    pub checkpoint: Option<Checkpoint>,
    /// Events of a page whose delivery was cut short after some batches were
    /// accepted: when the same page is read again, these are not resent.
    pub partial: Option<Partial>,
    pub lease: Option<Lease>,
    pub backoff: Option<Backoff>,
    /// Where the first page starts when no `start_time_value` is set (24 h
    /// before the first tick), pinned so a retried first page is the same page.
    #[serde(default)]
    pub initial_start: Option<DateTime<Utc>>,
    pub stats: Stats,
    /// Who wrote this version of the record: the writing tick's id and the
    /// number of its write, unique to each write. A store's answer to a
    /// compare-and-swap is only a hint (Spin's Redis store reports failure
    /// for swaps that wrote, and success for some that did not): the tick
    /// reads the record back and knows its write landed when it finds this
    /// id there. Absent in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
}

/// Who is collecting this service right now, and until when at most: the
/// tick renews it while it works ([`Config::lease_ttl`](crate::config::Config::lease_ttl)
/// past each renewal), so a lease left behind by an instance that died
/// lapses soon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub expires: DateTime<Utc>,
}

impl Lease {
    /// The longest lease any instance may have written: the longest
    /// `lease_ttl_ms` a config accepts, or a lease of a release before
    /// renewals, which lasted `tick_deadline_ms + 4 × request_timeout_ms`
    /// (150 s with the defaults, up to 100 minutes). Not this instance's
    /// own: replicas of one collector may run different releases or settings
    /// (while a change rolls out), and the longer lease of another is real.
    pub fn longest() -> TimeDelta {
        let renewed = TimeDelta::milliseconds(LEASE_TTL_MS_RANGE.1 as i64);
        let before_renewals = TimeDelta::milliseconds(MAX_TICK_DEADLINE_MS as i64)
            + TimeDelta::milliseconds(4 * MAX_REQUEST_TIMEOUT_MS as i64);
        renewed.max(before_renewals)
    }

    /// True when the lease expires further ahead than any instance takes one
    /// ([`Lease::longest`] plus [`MAX_CLOCK_SKEW`]): it was not written by a
    /// collector whose clock agrees with this one's (a corrupt record, or a
    /// clock far ahead), and it is treated as expired, so that it cannot
    /// defer the service forever. (Capping it at "now plus the longest"
    /// would not do: that moves with every tick.)
    pub fn implausible(&self, now: DateTime<Utc>) -> bool {
        self.expires > now + Lease::longest() + MAX_CLOCK_SKEW
    }

    /// True while the lease keeps others from collecting the service.
    pub fn in_force(&self, now: DateTime<Utc>) -> bool {
        self.expires > now && !self.implausible(now)
    }
}

/// Progress inside one page: which of its events Devo already took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// The page request's start (`cursor:<c>` or `time:<rfc3339>`).
    pub page: String,
    pub delivered: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub created_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<StoredError>,
    pub bytes_sent: u64,
    pub pages: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredError {
    pub id: u32,
    pub message: String,
    pub at: DateTime<Utc>,
    /// The upstream HTTP status the error was about, if any (absent in
    /// records written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
}

impl ServiceState {
    pub fn key(service: Service) -> String {
        format!("service/{}", service.name())
    }

    pub fn new(now: DateTime<Utc>) -> ServiceState {
        ServiceState {
            version: SCHEMA_VERSION,
            checkpoint: None,
            partial: None,
            lease: None,
            backoff: None,
            initial_start: None,
            stats: Stats { created_at: Some(now), ..Stats::default() },
            writer: None,
        }
    }

    pub fn decode(service: Service, bytes: &[u8]) -> Result<ServiceState, CollectorError> {
        let unreadable = |why: String| {
            CollectorError::new(
                ErrorKind::PrePullError,
                CHECKPOINT_UNREADABLE,
                format!(
                    "the stored state of {service} cannot be read ({why}); nothing was fetched. \
                     Delete key \"{}\" to start again from start_time_value",
                    ServiceState::key(service)
                ),
            )
        };
        // serde's complaint may quote what it read: bounded, not a megabyte.
        let state: ServiceState =
            serde_json::from_slice(bytes).map_err(|e| unreadable(error::bounded(&e.to_string())))?;
        if state.version > SCHEMA_VERSION {
            return Err(unreadable(format!(
                "written by a newer release, schema version {} > {SCHEMA_VERSION}; upgrade the collector",
                state.version
            )));
        }
        Ok(state)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a service state always serialises")
    }

    /// True when someone else holds a lease in force ([`Lease::in_force`]:
    /// unexpired, and not further ahead than any lease lasts).
    pub fn leased_to_other(&self, me: &str, now: DateTime<Utc>) -> bool {
        self.lease.as_ref().is_some_and(|l| l.holder != me && l.in_force(now))
    }

    pub fn holds_lease(&self, me: &str) -> bool {
        self.lease.as_ref().is_some_and(|l| l.holder == me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn round_trips_and_rejects_garbage_and_future_versions() {
        let mut s = ServiceState::new(t("2026-01-01T00:00:00Z"));
        s.checkpoint = Some(Checkpoint { cursor: Some("abc".into()), total_sent: 7, ..Checkpoint::default() });
        s.lease = Some(Lease { holder: "me".into(), expires: t("2026-01-01T00:01:00Z") });
        assert_eq!(ServiceState::decode(Service::Audit, &s.encode()).unwrap(), s);
        let e = ServiceState::decode(Service::Audit, b"{not json").unwrap_err();
        assert_eq!(e.id, CHECKPOINT_UNREADABLE);
        assert!(e.message.contains("service/audit"));
        let future = ServiceState { version: SCHEMA_VERSION + 1, ..s.clone() };
        assert!(ServiceState::decode(Service::Audit, &future.encode()).unwrap_err().message.contains("newer release"));
        // serde quotes a string of the wrong type: not a megabyte of it.
        let huge = format!(r#"{{"version":"{}"}}"#, "x".repeat(1 << 20));
        let e = ServiceState::decode(Service::Audit, huge.as_bytes()).unwrap_err();
        assert!(e.message.len() < 1000 && e.message.contains("service/audit"), "{}", e.message);
    }

    #[test]
    fn stored_times_are_utc() {
        let mut s = ServiceState::new(t("2026-01-01T05:30:00+05:30"));
        s.stats.last_success_at = Some(t("2025-12-31T17:00:00-07:00"));
        s.stats.last_error = Some(StoredError {
            id: 503,
            message: "x".into(),
            at: t("2026-01-01T05:31:00.5+05:30"),
            http_status: Some(503),
        });
        let text = String::from_utf8(s.encode()).unwrap();
        for stored in [r#""created_at":"2026-01-01T00:00:00Z""#, r#""last_success_at":"2026-01-01T00:00:00Z""#] {
            assert!(text.contains(stored), "{stored} not in {text}");
        }
        assert!(text.contains(r#""at":"2026-01-01T00:01:00.500Z""#), "{text}");
        assert_eq!(ServiceState::decode(Service::Audit, &s.encode()).unwrap(), s);
    }

    #[test]
    fn leases_expire_and_belong_to_their_holder() {
        let mut s = ServiceState::new(t("2026-01-01T00:00:00Z"));
        s.lease = Some(Lease { holder: "a".into(), expires: t("2026-01-01T00:01:00Z") });
        assert!(s.leased_to_other("b", t("2026-01-01T00:00:59Z")));
        assert!(!s.leased_to_other("b", t("2026-01-01T00:01:00Z")));
        assert!(!s.leased_to_other("a", t("2026-01-01T00:00:10Z")));
        assert!(s.holds_lease("a") && !s.holds_lease("b"));
    }

    #[test]
    fn a_lease_beyond_the_longest_any_instance_takes_is_taken_as_expired() {
        let now = t("2026-01-01T00:00:00Z");
        // The longest lease: one of a release before renewals, with a
        // deadline of an hour and timeouts of ten minutes (longer than the
        // longest lease_ttl_ms, 10 minutes).
        assert_eq!(Lease::longest(), TimeDelta::minutes(100));
        let mut s = ServiceState::new(now);
        for expires in [now + Lease::longest(), now + Lease::longest() + MAX_CLOCK_SKEW] {
            s.lease = Some(Lease { holder: "a".into(), expires });
            assert!(s.leased_to_other("b", now), "{expires}");
        }
        for expires in [now + Lease::longest() + MAX_CLOCK_SKEW + TimeDelta::seconds(1), t("2300-01-01T00:00:00Z")] {
            s.lease = Some(Lease { holder: "a".into(), expires });
            assert!(s.lease.as_ref().unwrap().implausible(now));
            assert!(!s.leased_to_other("b", now), "{expires}");
        }
    }
}
