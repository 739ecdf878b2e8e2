//! Where a service's collection stands: the part of its state record that
//! moves only after Devo accepted a page.

use crate::time;
use serde::{Deserialize, Serialize};

/// How many delivered event uuids are remembered to drop repeats when a page
/// has to be read again from a time instead of a cursor (about two pages).
pub const RECENT_UUIDS: usize = 2000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// 1Password's opaque cursor for the next page. `None` after 1Password
    /// refused the cursor: the next page is read again from `newest_event`,
    /// and `recent_uuids` drops what was already delivered.
    pub cursor: Option<String>,
    /// `start_time_value` this checkpoint was started from (normalised RFC
    /// 3339, or none when the default look-back was used). A config with a
    /// different value resets the service exactly once.
    pub start_time_value: Option<String>,
    /// Timestamp of the newest event delivered, as 1Password wrote it (with
    /// its own offset): reports show it in UTC, [`Checkpoint::newest_event_utc`].
    pub newest_event: Option<String>,
    /// Events delivered since this service's record was created.
    pub total_sent: u64,
    /// Uuids of the most recently delivered events, newest last, at most
    /// [`RECENT_UUIDS`].
    #[serde(default)]
    pub recent_uuids: Vec<String>,
}

impl Checkpoint {
    /// Appends delivered uuids, keeping only the newest [`RECENT_UUIDS`].
    pub fn remember(&mut self, uuids: impl IntoIterator<Item = String>) {
        self.recent_uuids.extend(uuids);
        let excess = self.recent_uuids.len().saturating_sub(RECENT_UUIDS);
        self.recent_uuids.drain(..excess);
    }

    /// The newest delivered event's time as shown to an operator: UTC, as
    /// [`time::utc`] shows it (the stored text if it is not a time).
    pub fn newest_event_utc(&self) -> Option<String> {
        self.newest_event.as_deref().map(time::shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_uuids_stay_bounded_and_newest() {
        let mut cp = Checkpoint::default();
        cp.remember((0..RECENT_UUIDS + 10).map(|i| i.to_string()));
        assert_eq!(cp.recent_uuids.len(), RECENT_UUIDS);
        assert_eq!(cp.recent_uuids[0], "10");
        assert_eq!(cp.recent_uuids.last().unwrap(), &(RECENT_UUIDS + 9).to_string());
    }

    #[test]
    fn the_newest_event_is_stored_as_written_and_shown_in_utc() {
        let mut cp = Checkpoint { newest_event: Some("2026-11-26T14:36:46-07:00".into()), ..Checkpoint::default() };
        assert_eq!(cp.newest_event_utc().as_deref(), Some("2026-11-26T21:36:46Z"));
        assert_eq!(cp.newest_event.as_deref(), Some("2026-11-26T14:36:46-07:00"));
        cp.newest_event = Some("2026-11-27T03:06:46.250+05:30".into());
        assert_eq!(cp.newest_event_utc().as_deref(), Some("2026-11-26T21:36:46Z"));
        cp.newest_event = None;
        assert_eq!(cp.newest_event_utc(), None);
    }
}
