//! Everything the collector keeps per service between ticks, as one JSON
//! record in the key-value store (`service/<name>`), always updated with
//! compare-and-swap: the checkpoint, the lease that keeps two ticks from
//! collecting the same service at once, the back-off after failures, and the
//! delivery statistics. Its size is bounded whatever was collected.

use crate::backoff::Backoff;
use crate::checkpoint::Checkpoint;
use crate::error::{CollectorError, ErrorKind, CHECKPOINT_UNREADABLE};
use crate::service::Service;
use chrono::{DateTime, Utc};
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
}

/// Who is collecting this service right now, and until when at most.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub expires: DateTime<Utc>,
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
        let state: ServiceState = serde_json::from_slice(bytes).map_err(|e| unreadable(e.to_string()))?;
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

    /// True when someone else holds an unexpired lease.
    pub fn leased_to_other(&self, me: &str, now: DateTime<Utc>) -> bool {
        self.lease.as_ref().is_some_and(|l| l.holder != me && l.expires > now)
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
    }

    #[test]
    fn stored_times_are_utc() {
        let mut s = ServiceState::new(t("2026-01-01T05:30:00+05:30"));
        s.stats.last_success_at = Some(t("2025-12-31T17:00:00-07:00"));
        s.stats.last_error = Some(StoredError { id: 503, message: "x".into(), at: t("2026-01-01T05:31:00.5+05:30") });
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
}
