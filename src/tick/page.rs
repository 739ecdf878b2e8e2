//! One service's page: the second phase of a tick, run for each service in
//! turn and again for each further page.
//!
//! Take up the service: check the token may read it, take its lease (another
//! instance's lease or the service's own back-off defers it) and confirm by a
//! read that the store holds it, whatever the store answered (swap.rs): when
//! another instance's lease is there instead, it won the race and the
//! service is deferred, "lease lost". After the budget is spent
//! (`account_budget.rs`), ask 1Password for the page after the checkpoint
//! and read the answer. A failure ends the service's part with the
//! checkpoint unchanged; a good page becomes the lines to deliver, minus the
//! events Devo already took, and the checkpoint to commit once they are
//! delivered (`delivery.rs`, `commit.rs`).
//!
//! **The lease's heartbeat** (at the end of this file): a tick renews each
//! service's lease while it works, so that an instance that dies mid-tick
//! holds its services for `lease_ttl_ms` at most (15 s by default), not for
//! a whole tick.
//!
//! A lease lasts [`Config::lease_ttl`](crate::config::Config::lease_ttl)
//! past the write that last renewed it: taking it, each progress write, each
//! commit (above, `delivery.rs`, `commit.rs`), and the renewals here.
//! While a lane awaits an answer — a 1Password page, a Devo batch, the end
//! of a wait for the budget — its lease is renewed a third of the TTL after
//! the last renewal ([`Tick::next_renewal`] says when; the driver adds it to
//! what it waits on, tells the tick the time with [`Tick::clock`] and polls
//! the lanes). A renewal is a compare-and-swap like any other write
//! (`swap.rs`): read the record, write it with the lease's new expiry only
//! if it still holds this tick's lease, read it back. When it landed, the
//! lane goes back to awaiting its answer.
//!
//! A renewal that finds another instance's lease (or none: this tick's
//! lapsed and another took and released it) or that the store fails
//! ends the service's part at once, well before the lease could lapse: the
//! driver drops the request in flight ([`Action::Abandon`](super::Action::Abandon)),
//! nothing is committed, and the part is reported failed with error 202
//! (lease lost) or 200 (store). The checkpoint had not moved, so the page is
//! read again by whoever holds the lease next; a batch Devo took just before
//! may reach it twice.

use super::delivery::PageBatches;
use super::swap::{self, Answer, Decision};
use super::{rfc3339, Action, Ending, ServiceRun, Step, Tick, Update};
use crate::account;
use crate::checkpoint::Checkpoint;
use crate::config::{Config, DEFAULT_LOOKBACK, RETENTION};
use crate::error::{
    CollectorError, ErrorKind, LEASE_LOST, ONEPASSWORD_BAD_BODY, ONEPASSWORD_STUCK_CURSOR, SCOPE_MISSING,
};
use crate::http::{HttpFailure, HttpResponse};
use crate::json;
use crate::onepassword::{self, EventMeta, Page, PageStart};
use crate::report::Outcome;
use crate::service::Service;
use crate::state::{Lease, ServiceState};
use crate::time::{self, MAX_CLOCK_SKEW};
use chrono::{DateTime, TimeDelta, Utc};
use std::borrow::Cow;
use std::collections::HashSet;

impl Tick {
    // Take up the service.

    /// Checks the token's scope, then takes the service's lease.
    pub(super) fn begin(&mut self, service: Service) {
        self.run = Some(ServiceRun::new(service, self.now));
        if let Some(e) = self.refused.clone() {
            // Recorded, not fetched: the token is refused (no back-off:
            // a new token works from the next tick on).
            self.step = Step::release(Ending::failed(e), false, false);
            return;
        }
        // The introspection's answer, else the token's own claims; with
        // neither, the service is tried and 1Password's answer tells.
        if let Some(features) =
            self.account.as_ref().and_then(|a| a.features.as_ref()).or(self.claimed_features().as_ref())
        {
            if !features.iter().any(|f| f == service.feature()) {
                let e = CollectorError::new(
                    ErrorKind::TokenScopeError,
                    SCOPE_MISSING,
                    format!(
                        "the 1Password token is not scoped to read {service} (its features: {}); issue a token with \"{}\" or remove {service} from services",
                        if features.is_empty() { "none".to_string() } else { features.join(", ") },
                        service.feature()
                    ),
                );
                self.step = Step::Finish(Ending::failed(e));
                return;
            }
        }
        self.step = Step::write(Update::TakeLease);
    }

    fn claimed_features(&self) -> Option<Vec<String>> {
        account::token_claims(&self.config.token).and_then(|c| c.features)
    }

    /// `Update::TakeLease`: the lease, unless another instance holds one or
    /// the service backs off after failures. Then the budget is spent.
    ///
    /// A lease or back-off further ahead than any lasts (a corrupt record, a
    /// clock far ahead) is not obeyed, and said so in a warning: it would
    /// defer the service forever.
    pub(super) fn take_lease(&mut self, mut state: ServiceState) -> Decision {
        let now = self.now;
        let lease = self.lease();
        self.warn_implausible(&state);
        let run = self.running();
        if state.leased_to_other(&lease.holder, now) {
            let until = state.lease.as_ref().map_or(now, |l| l.expires);
            run.deferred = Some((until, "another instance is collecting this service".into()));
            return Decision::Skip(Step::Finish(Ending::of(Outcome::Deferred)));
        }
        if let Some(b) = state.backoff.as_ref() {
            if let Some(until) = b.pending(now) {
                let reason = format!("{}{} consecutive failure(s)", crate::report::FAILURE_BACKOFF_REASON, b.attempts);
                run.deferred = Some((until, reason));
                run.state = state;
                return Decision::Skip(Step::Finish(Ending::of(Outcome::Deferred)));
            }
            if b.implausible(now) {
                state.backoff = None;
            }
        }
        // Pinned at the first lease, so a retried first page is the same page
        // (pinned again if the stored one is in the future: nothing is there).
        if state.initial_start.is_none_or(|t| t > now + MAX_CLOCK_SKEW) {
            state.initial_start = Some(now - DEFAULT_LOOKBACK);
        }
        state.lease = Some(lease);
        self.write_state(state)
    }

    /// The record read back after the lease's swap does not hold this
    /// tick's lease, whatever the store answered: the swap lost a race or
    /// the store did not write. When another instance's lease is there, it
    /// won that race and collects the service: deferred until its lease
    /// expires, nothing fetched. Else the record changed some other way (a
    /// release): the lease is tried again.
    pub(super) fn lease_not_taken(&mut self, state: ServiceState, attempt: u32, answer: Answer) -> Step {
        if !state.leased_to_other(&self.me, self.now) {
            return swap::not_landed(Update::TakeLease, attempt, answer);
        }
        let until = state.lease.as_ref().map_or(self.now, |l| l.expires);
        let reason = format!(
            "lease lost: another instance took this service's lease at the same moment and is collecting it (the store answered {} to this tick's lease, which it did not write)",
            answer.describe()
        );
        let run = self.running();
        run.deferred = Some((until, reason));
        run.state = state;
        Step::Finish(Ending::of(Outcome::Deferred))
    }

    /// Warns of a lease of another instance or a back-off in the service's
    /// record that is further ahead than any lasts, and so is not obeyed.
    fn warn_implausible(&mut self, state: &ServiceState) {
        let now = self.now;
        let service = self.running().service;
        if let Some(l) = state.lease.as_ref().filter(|l| l.holder != self.me && l.implausible(now)) {
            self.warn(format!(
                "the stored state of {service} holds a lease of another instance until {}, further ahead than any instance takes one ({} minutes); it is taken as expired (a corrupt record, or a clock far ahead)",
                time::utc(l.expires),
                Lease::longest().num_minutes()
            ));
        }
        if let Some(b) = state.backoff.as_ref().filter(|b| b.implausible(now)) {
            self.warn(format!(
                "the stored state of {service} holds a back-off until {}, further ahead than any back-off lasts ({} minutes); it is ignored (a corrupt record, or a clock far ahead)",
                time::utc(b.until),
                crate::backoff::LONGEST.num_minutes()
            ));
        }
    }

    /// The lease this tick takes, and renews with every progress and commit
    /// and while it awaits an answer (the lease's heartbeat, below): good for `lease_ttl_ms`
    /// from now.
    pub(super) fn lease(&self) -> Lease {
        Lease { holder: self.me.clone(), expires: self.now + self.config.lease_ttl }
    }

    // Ask 1Password (once the budget is spent).

    pub(super) fn fetch(&mut self) -> Action {
        let run = self.run.as_mut().expect("a service is running");
        let start = page_start(&self.config, &run.state, self.now);
        let request = onepassword::page_request(&self.config, run.service, &start);
        run.start = Some(start);
        self.step = Step::AwaitPage;
        Action::Send { request }
    }

    /// What 1Password's answer means: a failure ends the service's part with
    /// the checkpoint unchanged; a page goes on to delivery.
    pub(super) fn on_page(&mut self, result: Result<HttpResponse, HttpFailure>) -> Step {
        let run = self.running();
        let service = run.service;
        let response = match result {
            Ok(r) => r,
            Err(failure) => {
                let e = onepassword::transport_error(service, &failure);
                return Step::release(Ending::failed(e), true, false);
            }
        };
        match onepassword::parse_page(service, &response) {
            Ok(page) => self.prepare(page),
            // Too many requests for the account: back it off as a whole
            // (account_budget.rs).
            Err(e) if response.status == 429 => {
                let retry_after = response.header("retry-after").map(str::to_owned);
                Step::write(Update::AccountBackoff { retry_after, error: e })
            }
            // A refused cursor would be refused again: drop it and read again
            // from a time.
            Err(mut e) if response.status == 400 && matches!(run.start, Some(PageStart::Cursor(_))) => {
                e.message.push_str(
                    "; the stored cursor is dropped and the next tick reads again from the newest delivered event, skipping events already delivered",
                );
                Step::release(Ending::failed(e), false, true)
            }
            Err(e) => {
                // Back off where asking again at once would not help: a server
                // error, a body that is not a page.
                let retry_soon = response.status >= 500 || response.status == 200;
                Step::release(Ending::failed(e), retry_soon, false)
            }
        }
    }

    /// Turns a page into what delivery needs: the events to send, cut into
    /// batches, and the checkpoint to commit once Devo took them all.
    fn prepare(&mut self, page: Page<'_>) -> Step {
        let now = self.now;
        let config = &self.config;
        let run = self.run.as_mut().expect("a service is running");
        let service = run.service;
        run.pages += 1;
        run.fetched += page.items.len() as u32;
        run.has_more = page.has_more;
        let start = run.start.clone().expect("a page was requested");
        if page.has_more
            && matches!(&start, PageStart::Cursor(c) if *c == page.cursor)
            && nothing_new(&page, &run.state)
        {
            // Asking again would get the same answer, page after page until
            // the deadline. Read again from the newest delivered event after
            // a back-off: a cursor that does not move is no better than a
            // refused one.
            let e = CollectorError::new(
                ErrorKind::PullError,
                ONEPASSWORD_STUCK_CURSOR,
                format!(
                    "1Password answered {service}'s cursor with the same cursor, has_more and no new event ({} already delivered); the cursor does not move, so {service} backs off and reads again from the newest delivered event, skipping events already delivered",
                    page.items.len()
                ),
            );
            return Step::release(Ending::failed(e), true, true);
        }
        // Events this page may repeat: the part of it delivered before a cut,
        // and, when re-reading from a time after a refused cursor, the
        // events delivered last.
        let mut skip: HashSet<&str> = HashSet::new();
        // Whatever page this is, an event Devo already took is never sent
        // again (the page may differ from the cut one: a refused cursor, a
        // changed start).
        if let Some(p) = run.state.partial.as_ref() {
            skip.extend(p.delivered.iter().map(String::as_str));
            run.delivered = p.delivered.clone();
        } else {
            run.delivered.clear();
        }
        // Delivered by the cut attempt but not yet in the checkpoint's count.
        let delivered_before = run.delivered.len() as u64;
        let previous = run.state.checkpoint.as_ref();
        let rereading = matches!(start, PageStart::From(_))
            && previous.is_some_and(|cp| cp.cursor.is_none() && cp.start_time_value == start_value(config));
        if rereading {
            skip.extend(previous.into_iter().flat_map(|cp| cp.recent_uuids.iter().map(String::as_str)));
        }
        // Each event goes straight into its batch: the page is not held as
        // lines besides the response body and the batches.
        let mut batches = PageBatches::new(config);
        let mut lines = 0u64;
        let mut page_uuids = Vec::with_capacity(page.items.len());
        let mut newest: Option<(DateTime<Utc>, String)> = None;
        for item in &page.items {
            let (meta, multiline) = EventMeta::read(item);
            if let Some((t, raw)) = meta.time() {
                if t > now + MAX_CLOCK_SKEW {
                    // Delivered as it is, but not the checkpoint's newest
                    // event: a page read again from it would be empty until
                    // that time (finish() warns).
                    run.future_events += 1;
                } else if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                    newest = Some((t, raw));
                }
            }
            if let Some(uuid) = &meta.uuid {
                page_uuids.push(uuid.clone());
                if skip.contains(uuid.as_str()) {
                    continue;
                }
            }
            let line = if multiline { Cow::Owned(json::compact(item.get())) } else { Cow::Borrowed(item.get()) };
            // Obfuscation borrows the line it returns unchanged (no field
            // of the rule in this event): only a changed line is a new String.
            let changed = match &config.obfuscator {
                None => None,
                Some(o) => match o.apply(&line) {
                    Ok(Cow::Owned(obfuscated)) => Some(obfuscated),
                    Ok(Cow::Borrowed(_)) => None,
                    Err(e) => {
                        // Sending the clear value would break the user's rule: hold the page.
                        let e = CollectorError::new(
                            ErrorKind::PullError,
                            ONEPASSWORD_BAD_BODY,
                            format!("an event of {service} could not be obfuscated ({e}); the page is held back and retried"),
                        );
                        return Step::release(Ending::failed(e), true, false);
                    }
                },
            };
            let line = changed.map_or(line, Cow::Owned);
            batches.push(&line, meta.uuid);
            lines += 1;
        }
        let new_events = lines + delivered_before;
        run.next = Some(next_checkpoint(config, previous, newest, &page.cursor, page_uuids, new_events, now));
        run.batches = batches.finish();
        Step::Deliver
    }
}

/// True when every event of the page was delivered already (by uuid: in
/// the checkpoint's recent uuids, or the part of a cut page Devo took), or
/// there is none. Asked only of a page whose cursor did not move.
fn nothing_new(page: &Page<'_>, state: &ServiceState) -> bool {
    let recent = state.checkpoint.iter().flat_map(|cp| cp.recent_uuids.iter());
    let partial = state.partial.iter().flat_map(|p| p.delivered.iter());
    let known: HashSet<&str> = recent.chain(partial).map(String::as_str).collect();
    page.items.iter().all(|item| EventMeta::read(item).0.uuid.is_some_and(|u| known.contains(u.as_str())))
}

/// The configured start as stored in a checkpoint, to notice when it changes.
fn start_value(config: &Config) -> Option<String> {
    config.start_time.map(rfc3339)
}

/// The oldest start a page may ask for: 1Password serves nothing older, and
/// asking for it is an error there.
pub(super) fn oldest_available(now: DateTime<Utc>) -> DateTime<Utc> {
    now - RETENTION + TimeDelta::minutes(5)
}

/// Continue from the stored cursor, unless there is none or the configured
/// `start_time_value` changed since it was stored (Devo's way of asking for a
/// re-ingest): then a reset cursor from the configured start. After a
/// refused cursor, read again from the newest delivered event, unless that
/// is further ahead than [`MAX_CLOCK_SKEW`] (a record from before events were
/// checked, or a corrupt one): a page from there would be empty until then,
/// so the configured start is read again instead (repeats within the last
/// uuids are skipped; older ones are sent again: a duplicate, not a loss).
fn page_start(config: &Config, state: &ServiceState, now: DateTime<Utc>) -> PageStart {
    let configured = || {
        let start = config.start_time.or(state.initial_start).unwrap_or(now - DEFAULT_LOOKBACK);
        PageStart::From(start.max(oldest_available(now)))
    };
    match &state.checkpoint {
        Some(cp) if cp.start_time_value == start_value(config) => match (&cp.cursor, &cp.newest_event) {
            (Some(cursor), _) => PageStart::Cursor(cursor.clone()),
            (None, Some(newest)) => match DateTime::parse_from_rfc3339(newest) {
                Ok(t) if t.with_timezone(&Utc) <= now + MAX_CLOCK_SKEW => PageStart::From(t.with_timezone(&Utc)),
                _ => configured(),
            },
            (None, None) => configured(),
        },
        _ => configured(),
    }
}

/// The checkpoint after this page: its cursor, the newest event seen so far,
/// the count and the uuids delivered. A changed configured start begins anew.
/// `newest_in_page` is never further ahead of `now` than [`MAX_CLOCK_SKEW`]
/// (`prepare` leaves such events out); a stored newest event that is gives
/// way to it.
fn next_checkpoint(
    config: &Config,
    previous: Option<&Checkpoint>,
    newest_in_page: Option<(DateTime<Utc>, String)>,
    cursor: &str,
    page_uuids: Vec<String>,
    new_events: u64,
    now: DateTime<Utc>,
) -> Checkpoint {
    let reset = previous.is_some_and(|p| p.start_time_value != start_value(config));
    let previous_newest = previous.filter(|_| !reset).and_then(|p| p.newest_event.clone());
    let newest_event = match (newest_in_page, previous_newest) {
        (Some((t, raw)), Some(old)) => {
            let old_t = DateTime::parse_from_rfc3339(&old).ok().map(|o| o.with_timezone(&Utc));
            if old_t.is_some_and(|o| o > t && o <= now + MAX_CLOCK_SKEW) {
                Some(old)
            } else {
                Some(raw)
            }
        }
        (Some((_, raw)), None) => Some(raw),
        (None, old) => old,
    };
    let mut next = Checkpoint {
        cursor: Some(cursor.to_string()),
        start_time_value: start_value(config),
        newest_event,
        // Saturating: the stored count is outside input too.
        total_sent: previous.map_or(0, |p| p.total_sent).saturating_add(new_events),
        recent_uuids: previous.filter(|_| !reset).map(|p| p.recent_uuids.clone()).unwrap_or_default(),
    };
    next.remember(page_uuids);
    next
}

// The lease's heartbeat (`Update::Renew`).

/// What a lane awaits while its lease is renewed, to go back to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Awaiting {
    Page,
    Devo,
    Wake,
}

impl Awaiting {
    fn of(step: &Step) -> Option<Awaiting> {
        match step {
            Step::AwaitPage => Some(Awaiting::Page),
            Step::AwaitDevo => Some(Awaiting::Devo),
            Step::AwaitWake => Some(Awaiting::Wake),
            _ => None,
        }
    }

    fn step(self) -> Step {
        match self {
            Awaiting::Page => Step::AwaitPage,
            Awaiting::Devo => Step::AwaitDevo,
            Awaiting::Wake => Step::AwaitWake,
        }
    }
}

impl Step {
    /// While a renewal's compare-and-swap awaits the store: what the lane
    /// awaits besides.
    pub(super) fn renewing(&self) -> Option<Awaiting> {
        match self {
            Step::AwaitCurrent(Update::Renew(a), _)
            | Step::AwaitSwap(Update::Renew(a), _)
            | Step::AwaitConfirm(Update::Renew(a), ..) => Some(*a),
            _ => None,
        }
    }
}

impl Tick {
    /// Tells the tick the time, for a driver that waited without an answer
    /// to hand in (a renewal came due): the next [`Tick::poll_lane`] of a
    /// lane whose renewal is due by then starts it.
    pub fn clock(&mut self, now: DateTime<Utc>) {
        self.now = self.now.max(now);
    }

    /// When the next lease renewal is due, by the clock `now` is read from:
    /// the earliest of the lanes that await an answer (a request or a wait)
    /// for a service whose lease they hold. The driver waits no longer than
    /// this before it calls [`Tick::clock`] and polls the lanes again, even
    /// while their answers are still to come.
    pub fn next_renewal(&self) -> Option<DateTime<Utc>> {
        let active = std::iter::once((&self.step, self.run.as_ref()));
        let parked =
            self.lanes.iter().enumerate().filter(|(i, _)| *i != self.active).map(|(_, l)| (&l.step, l.run.as_ref()));
        active.chain(parked).filter_map(|(step, run)| self.renewal_due(step, run?)).min()
    }

    /// A third of the lease's life after it was last renewed.
    pub(super) fn renew_every(&self) -> TimeDelta {
        self.config.lease_ttl / 3
    }

    fn renewal_due(&self, step: &Step, run: &ServiceRun) -> Option<DateTime<Utc>> {
        Awaiting::of(step)?;
        let lease = run.state.lease.as_ref().filter(|l| l.holder == self.me)?;
        Some(lease.expires - self.config.lease_ttl + self.renew_every())
    }

    /// The active lane's step, or its renewal when one is due.
    pub(super) fn renew_if_due(&mut self, step: Step) -> Step {
        let due = self.run.as_ref().and_then(|run| self.renewal_due(&step, run));
        match (due, Awaiting::of(&step)) {
            (Some(due), Some(awaiting)) if due <= self.now => Step::write(Update::Renew(awaiting)),
            _ => step,
        }
    }

    /// `Update::Renew`: the lease, good for another TTL from now, if the
    /// record still holds this tick's.
    pub(super) fn renew(&mut self, mut state: ServiceState, awaiting: Awaiting) -> Decision {
        if !state.holds_lease(&self.me) {
            let service = self.running().service;
            let holder = if state.lease.is_some() { "another instance's lease" } else { "no lease" };
            let e = CollectorError::new(
                ErrorKind::PrePullError,
                LEASE_LOST,
                format!(
                    "{service}'s lease was lost: renewing it, this tick found {holder} in the record (this tick's had lapsed: the instance was paused or starved for longer than lease_ttl_ms, or the instances' clocks disagree). This tick stopped working on {service}: its request in flight was dropped and nothing was committed; whoever holds the lease reads the page again. If it recurs, raise lease_ttl_ms or check the instances' clocks"
                ),
            );
            return Decision::Skip(self.abandon(awaiting, Ending::failed(e)));
        }
        let lease = self.lease();
        state.lease = Some(lease);
        self.write_state(state)
    }

    /// After each answer of the store to a renewal: a renewal that ended
    /// the part (a store failure, an unreadable record, writes that never
    /// landed) drops what the lane awaits first, and says so.
    pub(super) fn after_renewal(&mut self, awaiting: Awaiting) {
        let step = std::mem::replace(&mut self.step, Step::NextService);
        self.step = match step {
            Step::Finish(mut ending) => {
                if let Some(e) = ending.error.as_mut() {
                    let service = self.running().service;
                    e.message.push_str(&format!(
                        "; {service}'s lease could not be renewed, so this tick stopped working on {service} before the lease could lapse (its request in flight was dropped, nothing was committed); the page is read again by the next tick that holds the lease. Check the store"
                    ));
                }
                self.abandon(awaiting, ending)
            }
            step => step,
        };
    }

    /// Ends the part while the lane awaits `awaiting`, which the driver
    /// drops. A Devo batch in flight may have been taken: its events count
    /// as sent and unconfirmed (the next holder of the lease sends them
    /// again).
    fn abandon(&mut self, awaiting: Awaiting, ending: Ending) -> Step {
        if awaiting == Awaiting::Devo {
            let run = self.running();
            if let Some((batch, _)) = run.batches.front() {
                run.sent += batch.events;
            }
        }
        Step::Abandon(ending)
    }

    /// What follows a renewal that landed: the lane awaits its answer again.
    pub(super) fn renewed(awaiting: Awaiting) -> Step {
        awaiting.step()
    }
}
