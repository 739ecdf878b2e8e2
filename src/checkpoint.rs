//! What the collector remembers per service between ticks, stored as one JSON
//! value in the host's key-value store and written only after Devo accepted
//! the page it describes.

use crate::error::{CollectorError, ErrorKind, CHECKPOINT_UNREADABLE};
use crate::service::Service;
use serde::{Deserialize, Serialize};

/// Bumped whenever the stored shape changes in a way older code cannot read.
pub const SCHEMA_VERSION: u32 = 1;

/// The key-value bucket every host maps (Spin's default store).
pub const BUCKET: &str = "default";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// 1Password's opaque cursor for the next page.
    pub cursor: String,
    /// `start_time_value` this checkpoint was started from (normalised RFC
    /// 3339, or none when the default look-back was used). A config with a
    /// different value resets the service exactly once.
    pub start_time_value: Option<String>,
    /// Timestamp of the newest event delivered, as 1Password wrote it.
    pub newest_event: Option<String>,
    /// Events delivered since this checkpoint record was created.
    pub total_sent: u64,
    /// When this record was last written (RFC 3339, host clock).
    pub updated_at: String,
}

impl Checkpoint {
    pub fn key(service: Service) -> String {
        format!("checkpoint/{}", service.name())
    }

    pub fn decode(service: Service, bytes: &[u8]) -> Result<Checkpoint, CollectorError> {
        let unreadable = |why: String| {
            CollectorError::new(
                ErrorKind::PrePullError,
                CHECKPOINT_UNREADABLE,
                format!(
                    "the stored checkpoint of {service} cannot be read ({why}); nothing was fetched. \
                     Delete key \"{}\" to start again from start_time_value",
                    Checkpoint::key(service)
                ),
            )
        };
        let cp: Checkpoint =
            serde_json::from_slice(bytes).map_err(|e| unreadable(e.to_string()))?;
        if cp.version > SCHEMA_VERSION {
            return Err(unreadable(format!(
                "written by a newer release, schema version {} > {SCHEMA_VERSION}; upgrade the collector",
                cp.version
            )));
        }
        Ok(cp)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a checkpoint always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage_and_future_versions() {
        let cp = Checkpoint {
            version: SCHEMA_VERSION,
            cursor: "abc".into(),
            start_time_value: None,
            newest_event: Some("2026-01-01T00:00:00Z".into()),
            total_sent: 7,
            updated_at: "2026-01-01T00:00:01Z".into(),
        };
        assert_eq!(
            Checkpoint::decode(Service::Audit, &cp.encode()).unwrap(),
            cp
        );
        let e = Checkpoint::decode(Service::Audit, b"{not json").unwrap_err();
        assert_eq!(e.id, CHECKPOINT_UNREADABLE);
        assert!(e.message.contains("checkpoint/audit"));
        let future = Checkpoint {
            version: SCHEMA_VERSION + 1,
            ..cp
        };
        assert!(Checkpoint::decode(Service::Audit, &future.encode())
            .unwrap_err()
            .message
            .contains("newer release"));
    }
}
