//! Delivery: the third phase of a tick, sending one page's events to Devo.
//!
//! The page's lines are cut into batches within Devo's limits as they are
//! made (`PageBatches`), each with the uuids of its events. The batches go one at a time. After each accepted
//! batch but the last, the service's record notes which events Devo took
//! (and the lease is renewed), so that a page read again after a cut (a
//! stop, a failure) does not send them twice. After the last, the page is
//! committed (`commit.rs`). A batch Devo refuses or does not answer ends the
//! service's part with a back-off and the checkpoint unchanged: a later tick
//! reads the page again.

use super::swap::Decision;
use super::{Action, Ending, Step, Tick, Update};
use crate::config::Config;
use crate::devo::{self, Batch};
use crate::error::{CollectorError, ErrorKind, LEASE_LOST};
use crate::http::{HttpFailure, HttpResponse};
use crate::service::Service;
use crate::state::{Partial, ServiceState};
use std::collections::VecDeque;

/// A page's Devo batches as they are built, each with the uuids of its
/// events.
pub(super) struct PageBatches {
    writer: devo::BatchWriter,
    uuids: Vec<Vec<String>>,
}

impl PageBatches {
    pub(super) fn new(config: &Config) -> PageBatches {
        PageBatches {
            writer: devo::BatchWriter::new(config.devo_max_batch_bytes, config.devo_max_batch_events, config.devo_gzip),
            uuids: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, line: &str, uuid: Option<String>) {
        if self.writer.push(line) {
            self.uuids.push(Vec::new());
        }
        self.uuids.last_mut().expect("a batch was begun").extend(uuid);
    }

    pub(super) fn finish(self) -> VecDeque<(Batch, Vec<String>)> {
        self.writer.finish().into_iter().zip(self.uuids).collect()
    }
}

impl Tick {
    /// Sends the next batch; with none left, commits the page.
    pub(super) fn deliver(&mut self) -> Option<Action> {
        let run = self.run.as_mut().expect("a service is running");
        let Some((batch, _)) = run.batches.front_mut() else {
            self.step = Step::write(Update::Commit);
            return None;
        };
        // A batch is sent at most once per tick (a failure ends the service's
        // part), so its body moves into the request; its count and uuids
        // stay until Devo's answer is recorded.
        let request = devo::batch_request(&self.config, run.service, batch);
        run.bytes_sent += request.body.len() as u64;
        self.step = Step::AwaitDevo;
        Some(Action::Send { request })
    }

    pub(super) fn on_devo(&mut self, result: Result<HttpResponse, HttpFailure>) -> Step {
        let run = self.run.as_mut().expect("a service is running");
        let service = run.service;
        let outcome = match result {
            Err(failure) => Err(devo::transport_error(service, &failure)),
            Ok(response) => devo::check_response(service, self.config.tag(service), &response),
        };
        if let Err(e) = outcome {
            return Step::release(Ending::failed(e), true, false);
        }
        let (batch, uuids) = run.batches.front().expect("a batch was sent");
        run.sent += batch.events;
        run.delivered.extend(uuids.iter().cloned());
        if run.batches.len() > 1 {
            Step::write(Update::Progress)
        } else {
            // The last batch: its delivery is recorded by the commit itself.
            run.batches.pop_front();
            Step::Deliver
        }
    }

    /// `Update::Progress`: which events of this page Devo took so far, and
    /// the lease renewed.
    pub(super) fn record_progress(&mut self, mut state: ServiceState) -> Decision {
        if !state.holds_lease(&self.me) {
            return lease_lost(self.running().service);
        }
        let lease = self.lease();
        let run = self.running();
        state.partial = Some(Partial {
            page: run.start.as_ref().expect("a page was requested").id(),
            delivered: run.delivered.clone(),
        });
        state.lease = Some(lease);
        self.write_state(state)
    }

    /// The record read back holds this progress: the events Devo took so far
    /// are recorded; then the next batch.
    pub(super) fn progress_recorded(&mut self) -> Step {
        let run = self.running();
        run.batches.pop_front();
        run.confirmed = run.sent;
        Step::Deliver
    }
}

/// Progress and the commit are written only under this tick's lease: once
/// another instance took over, the page is theirs to complete.
pub(super) fn lease_lost(service: Service) -> Decision {
    Decision::Skip(Step::Finish(Ending::failed(lease_lost_error(service))))
}

pub(super) fn lease_lost_error(service: Service) -> CollectorError {
    CollectorError::new(
        ErrorKind::PrePullError,
        LEASE_LOST,
        format!(
            "another instance took over {service} while this tick was delivering (this tick's lease lapsed: the instance was paused or starved for longer than lease_ttl_ms, or the instances' clocks disagree; raise lease_ttl_ms if it recurs); this page will be completed by the next tick"
        ),
    )
}
