//! What a tick did, per service: returned to the host (WIT `tick-report`)
//! and printed by the harness as JSON.

use crate::error::CollectorError;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Events reached Devo and the checkpoint advanced.
    Delivered,
    /// Nothing new; at most the cursor moved.
    Idle,
    /// A step failed; the checkpoint did not move past undelivered events.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceReport {
    pub service: String,
    pub outcome: Outcome,
    pub fetched: u32,
    pub sent: u32,
    pub has_more: bool,
    /// Timestamp of the newest event delivered so far, as 1Password wrote it.
    pub checkpoint: Option<String>,
    pub total_sent: u64,
    pub elapsed_ms: u64,
    pub error: Option<CollectorError>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TickReport {
    pub started_at: String,
    pub elapsed_ms: u64,
    pub services: Vec<ServiceReport>,
}

impl TickReport {
    /// True when every service finished without error.
    pub fn ok(&self) -> bool {
        self.services.iter().all(|s| s.error.is_none())
    }
}
