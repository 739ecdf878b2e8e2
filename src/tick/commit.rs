//! Commit and release: the last phase of a service's part of the tick, and
//! the tick's report.
//!
//! When Devo accepted every batch of a page, the new checkpoint is written,
//! in the same swap that renews the lease: this is the only place the
//! checkpoint moves. Whatever the store answers, the record is read back (a
//! swap's answer is only a hint, swap.rs): a checkpoint that is not there is
//! not counted, and the page's events are reported unconfirmed. Then the
//! next page (back to the budget spend in `account_budget.rs`) while there
//! is more and the tick's deadline leaves room for a page as long as the
//! longest so far (and `max_pages_per_tick`, when set, allows); else the
//! lease is released. Most other ends of a part that holds the lease (a spent budget,
//! a failed request) release it too, recording the error and, where asked, a
//! back-off or a forgotten cursor; where the store itself fails, the lease is
//! left to expire. Last, the service is reported; after the last service,
//! the tick.

use super::delivery::{lease_lost, lease_lost_error};
use super::swap::{self, Answer, Decision};
use super::{elapsed_ms, nanos, Ending, Step, Tick, Update};
use crate::backoff::Backoff;
use crate::report::{Outcome, ServiceReport, TickReport};
use crate::service::Service;
use crate::state::{ServiceState, StoredError};
use crate::time::{self, MAX_CLOCK_SKEW};
use chrono::{DateTime, Utc};

impl Tick {
    // The page is delivered (`Update::Commit`).

    /// Moves the checkpoint past the page, forgets the page's partial
    /// progress and any back-off, counts the page, and renews the lease —
    /// or, when 1Password said nothing more is waiting, releases it in the
    /// same write: the service's part ends here either way (`committed`),
    /// and a separate release would cost an idle service a second swap and
    /// its read-back every tick.
    pub(super) fn commit(&mut self, mut state: ServiceState) -> Decision {
        if !state.holds_lease(&self.me) {
            return lease_lost(self.running().service);
        }
        let now = self.now;
        let lease = self.lease();
        let run = self.running();
        state.checkpoint = run.next.clone();
        state.partial = None;
        state.backoff = None;
        state.stats.last_success_at = Some(now);
        // Saturating: the stored statistics are outside input too.
        state.stats.pages = state.stats.pages.saturating_add(1);
        state.stats.bytes_sent = state.stats.bytes_sent.saturating_add(run.bytes_sent - run.bytes_counted);
        state.lease = run.has_more.then_some(lease);
        self.write_state(state)
    }

    /// The record read back after the commit's swap does not hold what it
    /// wrote, whatever the store answered: the swap lost a race or the store
    /// did not write. Only another
    /// instance, after this tick's lease expired, writes the record while
    /// this tick works: it took the service over, and since the checkpoint
    /// did not move it sends the page again (this tick reports its events as
    /// unconfirmed). If the record still holds this tick's lease, the commit
    /// is tried again.
    ///
    /// A commit that released the lease (nothing more waiting) leaves a
    /// moment between its swap and the read-back in which another instance
    /// may take the free service: a record under another's lease that holds
    /// the checkpoint this commit wrote descends from it — the checkpoint
    /// moves only by a commit past this very page — so the commit counts as
    /// written.
    pub(super) fn commit_not_written(&mut self, state: ServiceState, attempt: u32, answer: Answer) -> Step {
        if state.holds_lease(&self.me) {
            return swap::not_landed(Update::Commit, attempt, answer);
        }
        let run = self.running();
        if !run.has_more && state.checkpoint == run.next {
            return self.committed();
        }
        // The report shows the stored checkpoint, not the one that was not written.
        run.state = state;
        Step::Finish(Ending::failed(lease_lost_error(run.service)))
    }

    /// The next page, or the end of the service's part: the next while
    /// there is more, the deadline leaves room for one more page as long as
    /// the longest so far, and `max_pages_per_tick` (if set) allows. The
    /// budget is asked next (`account_budget.rs`).
    pub(super) fn committed(&mut self) -> Step {
        let now = self.now;
        let deadline = self.started_at + self.config.tick_deadline;
        let cap = self.config.max_pages_per_tick;
        let run = self.running();
        run.confirmed = run.sent;
        run.bytes_counted = run.bytes_sent;
        run.longest_page = run.longest_page.max(now - run.page_started);
        let room = now + run.longest_page < deadline;
        if !run.has_more {
            // The commit released the lease.
            Step::Finish(Ending::of(run.outcome(Outcome::Idle)))
        } else if room && cap.is_none_or(|c| run.pages < c) {
            Step::write(Update::SpendBudget)
        } else {
            Step::release(Ending::of(run.outcome(Outcome::Idle)), false, false)
        }
    }

    // The end of the service's part (`Update::Release`).

    /// Releases the lease and records how the part ended.
    pub(super) fn release(
        &mut self,
        mut state: ServiceState,
        ending: &Ending,
        backoff: bool,
        forget_cursor: bool,
    ) -> Decision {
        let now = self.now;
        if state.leased_to_other(&self.me, now) {
            // Someone else holds it now: leave their record alone.
            return Decision::Skip(Step::Finish(ending.clone()));
        }
        let entropy = self.entropy ^ nanos(now);
        state.lease = None;
        if let Some(e) = &ending.error {
            // Bounded again: a message may have grown after it was made.
            let message = crate::text::clean(&e.message, crate::text::MAX_MESSAGE_CHARS);
            state.stats.last_error = Some(StoredError { id: e.id, message, at: now, http_status: e.http_status });
        }
        if backoff {
            state.backoff = Some(Backoff::after_failure(state.backoff.as_ref(), now, None, entropy));
        }
        if forget_cursor {
            // The checkpoint keeps its newest event and recent uuids: the next
            // page is read from that time, without repeats.
            if let Some(cp) = state.checkpoint.as_mut() {
                cp.cursor = None;
            }
        }
        self.write_state(state)
    }

    /// Reports the service's part; then the next service.
    pub(super) fn finish(&mut self, ending: Ending) {
        let run = self.run.take().expect("a service is running");
        if run.future_events > 0 {
            // Counted, never quoted: the events are the tenant's data.
            self.warn(format!(
                "{} event(s) of {} are dated more than {} minutes after this host's clock ({}); they were delivered as they are, but the checkpoint does not take them as its newest event. Check this host's clock, or 1Password's timestamps",
                run.future_events,
                run.service,
                MAX_CLOCK_SKEW.num_minutes(),
                time::utc(self.now)
            ));
        }
        let checkpoint = run.state.checkpoint.as_ref();
        let lag_seconds = checkpoint
            .and_then(|c| c.newest_event.as_deref())
            .and_then(|n| DateTime::parse_from_rfc3339(n).ok())
            .map(|n| (self.now - n.with_timezone(&Utc)).num_seconds().max(0) as u64);
        // A service that delivered and then met a spent budget says until
        // when it waits, too.
        let (deferred_until, deferred_reason) = match (&run.deferred, ending.outcome) {
            (Some((until, reason)), Outcome::Deferred | Outcome::Delivered) => {
                (Some(time::utc(*until)), Some(reason.clone()))
            }
            _ => (None, None),
        };
        self.reports.push(ServiceReport {
            service: run.service.name().to_string(),
            outcome: ending.outcome,
            fetched: run.fetched,
            sent: run.sent,
            unconfirmed: run.sent - run.confirmed,
            pages: run.pages,
            bytes_sent: run.bytes_sent,
            has_more: run.has_more,
            // In UTC; the stored checkpoint keeps the event's own text.
            checkpoint: checkpoint.and_then(|c| c.newest_event_utc()),
            total_sent: checkpoint.map_or(0, |c| c.total_sent),
            lag_seconds,
            elapsed_ms: elapsed_ms(run.started_at, self.now),
            deferred_until,
            deferred_reason,
            error: ending.error,
        });
        self.step = Step::NextService;
    }

    /// The tick's report, once every service has one.
    pub(super) fn report(&self) -> TickReport {
        let mut services = self.reports.clone();
        services.sort_by_key(|s| s.service.parse::<Service>().ok());
        TickReport {
            started_at: time::utc(self.started_at),
            elapsed_ms: elapsed_ms(self.started_at, self.now),
            services,
            warnings: self.warnings.clone(),
        }
    }
}
