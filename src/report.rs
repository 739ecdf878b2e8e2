//! What a tick did, per service: returned to the host (WIT `tick-report`)
//! and printed by the harness as JSON. Every time in it is UTC, as
//! [`time::utc`] shows it (`2026-11-27T16:21:25Z`).

use crate::error::CollectorError;
use crate::time;
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
    /// Not attempted this tick, by design: the request budget is spent,
    /// 1Password asked us to back off, or another instance holds the
    /// service's lease (or took it at the same moment: "lease lost").
    /// `deferred_until` says when it can go on.
    Deferred,
}

/// How a service deferred because it backs off after its own failures
/// begins its `deferred_reason` (a spent budget or another instance's
/// lease is worded otherwise): such a tick is still failing.
pub const FAILURE_BACKOFF_REASON: &str = "backing off after ";

impl Outcome {
    /// The outcome's name as reports, logs, tables and metric labels spell it
    /// (the same as its JSON form).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Idle => "idle",
            Outcome::Failed => "failed",
            Outcome::Deferred => "deferred",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceReport {
    pub service: String,
    pub outcome: Outcome,
    pub fetched: u32,
    pub sent: u32,
    /// Of `sent`, events whose delivery could not be recorded (the state
    /// write after Devo's answer failed, or a read did not show it, or another
    /// instance took the service over): the next tick sends them again.
    pub unconfirmed: u32,
    /// Pages fetched in this tick.
    pub pages: u32,
    /// Bytes sent to Devo in this tick (after compression).
    pub bytes_sent: u64,
    pub has_more: bool,
    /// Time of the newest event delivered so far, in UTC (the event itself
    /// keeps the offset 1Password wrote).
    pub checkpoint: Option<String>,
    pub total_sent: u64,
    /// Seconds between the tick and the newest delivered event: how far
    /// behind the service is.
    pub lag_seconds: Option<u64>,
    pub elapsed_ms: u64,
    /// Why and until when (UTC) a deferred service waits.
    pub deferred_until: Option<String>,
    pub deferred_reason: Option<String>,
    pub error: Option<CollectorError>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TickReport {
    /// UTC.
    pub started_at: String,
    pub elapsed_ms: u64,
    pub services: Vec<ServiceReport>,
    /// Things to fix before they become errors (token expiring, start time
    /// clamped to 1Password's retention, ...).
    pub warnings: Vec<String>,
}

impl ServiceReport {
    /// A report of `service` with nothing counted and no time, error or
    /// deferral: where a builder (a test, a host's conversion) sets only
    /// what it needs.
    pub fn new(service: &str, outcome: Outcome) -> ServiceReport {
        ServiceReport {
            service: service.into(),
            outcome,
            fetched: 0,
            sent: 0,
            unconfirmed: 0,
            pages: 0,
            bytes_sent: 0,
            has_more: false,
            checkpoint: None,
            total_sent: 0,
            lag_seconds: None,
            elapsed_ms: 0,
            deferred_until: None,
            deferred_reason: None,
            error: None,
        }
    }

    /// One log line with Devo's sender statistics and more (the Spin log,
    /// the harness's `run`). Never carries a secret: reports have none. Its
    /// times are UTC, whoever built the report.
    pub fn log_line(&self) -> String {
        let s = self;
        let mut line = format!(
            "service={} outcome={:?} fetched={} sent={} pages={} bytes_sent={} total_sent={} checkpoint={} lag_s={} has_more={} elapsed_ms={}",
            s.service,
            s.outcome,
            s.fetched,
            s.sent,
            s.pages,
            s.bytes_sent,
            s.total_sent,
            s.checkpoint.as_deref().map_or("-".to_string(), time::shown),
            s.lag_seconds.map_or("-".to_string(), |l| l.to_string()),
            s.has_more,
            s.elapsed_ms
        );
        if let (Some(until), Some(reason)) = (&s.deferred_until, &s.deferred_reason) {
            line.push_str(&format!(" deferred_until={} reason=\"{reason}\"", time::shown(until)));
        }
        if s.unconfirmed > 0 {
            line.push_str(&format!(" unconfirmed={}", s.unconfirmed));
        }
        if let Some(e) = &s.error {
            line.push_str(&format!(" error=\"{e}\""));
            if let Some(status) = e.http_status {
                line.push_str(&format!(" http_status={status}"));
            }
        }
        line
    }
}

impl TickReport {
    /// True when every service finished without error.
    pub fn ok(&self) -> bool {
        self.services.iter().all(|s| s.error.is_none())
    }
}

/// Writes `text` and its newline in one write (a log line). Spin makes a
/// log record of each write to stderr: `eprintln!` writes the text and the
/// newline separately, which gave two records per line, the second empty.
/// (A line longer than a stream's single write, 4 KiB in wasi:cli, is still
/// cut by the host.)
pub fn write_line(out: &mut impl std::io::Write, text: &str) -> std::io::Result<()> {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    out.write_all(line.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the writes it is given, as Spin counts log records.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl std::io::Write for Writes {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.push(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_log_line_is_one_write_with_its_newline() {
        let mut out = Writes::default();
        write_line(&mut out, "service=audit outcome=Idle").unwrap();
        write_line(&mut out, "warning: x").unwrap();
        assert_eq!(out.0, [b"service=audit outcome=Idle\n".to_vec(), b"warning: x\n".to_vec()]);
        // What eprintln! does with a line made at run time: the text, then
        // the newline.
        let (mut split, text) = (Writes::default(), String::from("service=audit"));
        std::io::Write::write_fmt(&mut split, format_args!("{text}\n")).unwrap();
        assert_eq!(split.0, [b"service=audit".to_vec(), b"\n".to_vec()], "the reason for write_line");
    }

    #[test]
    fn log_lines_carry_the_sender_statistics() {
        let s = ServiceReport {
            service: "audit".into(),
            outcome: Outcome::Deferred,
            fetched: 10,
            sent: 9,
            unconfirmed: 2,
            pages: 1,
            bytes_sent: 512,
            has_more: true,
            checkpoint: Some("2026-01-01T00:00:00Z".into()),
            total_sent: 99,
            lag_seconds: Some(61),
            elapsed_ms: 40,
            deferred_until: Some("2026-01-01T00:01:00Z".into()),
            deferred_reason: Some("budget".into()),
            error: None,
        };
        let line = s.log_line();
        for part in [
            "service=audit",
            "outcome=Deferred",
            "sent=9",
            "total_sent=99",
            "bytes_sent=512",
            "checkpoint=2026-01-01T00:00:00Z",
            "lag_s=61",
            "elapsed_ms=40",
            "deferred_until=2026-01-01T00:01:00Z",
            "unconfirmed=2",
        ] {
            assert!(line.contains(part), "{part} missing: {line}");
        }
    }

    #[test]
    fn log_lines_show_times_in_utc_whatever_the_report_holds() {
        let s = ServiceReport {
            service: "audit".into(),
            outcome: Outcome::Delivered,
            fetched: 1,
            sent: 1,
            unconfirmed: 0,
            pages: 1,
            bytes_sent: 10,
            has_more: true,
            checkpoint: Some("2026-11-26T14:36:46-07:00".into()),
            total_sent: 1,
            lag_seconds: Some(1),
            elapsed_ms: 1,
            deferred_until: Some("2026-11-27T03:07:00+05:30".into()),
            deferred_reason: Some("budget".into()),
            error: None,
        };
        let line = s.log_line();
        assert!(line.contains("checkpoint=2026-11-26T21:36:46Z"), "{line}");
        assert!(line.contains("deferred_until=2026-11-26T21:37:00Z"), "{line}");
        assert!(time::tests::not_utc(&line).is_empty(), "{line}");
    }
}
