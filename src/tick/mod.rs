//! One tick as a state machine with no I/O: the driver (the component
//! adapter, or a test) asks [`Tick::poll`] what to do, does it, and hands
//! the result back with [`Tick::handle`], together with the current time.
//!
//! # A tick, step by step
//!
//! Each phase has its own file, its functions in the order they run.
//!
//! 1. **Account and budget** (`account_budget.rs`), once, before any service:
//!    find the token's account and scopes (introspection, cached in the
//!    store; a refused token fails every service), then read the account's
//!    budget record: while the account backs off after a 429, every service
//!    is deferred.
//! 2. **One service's page** (`page.rs`), for each enabled service in turn,
//!    starting at a different one each tick: check that the token may read
//!    it, take the service's lease and confirm by a read that the store holds
//!    it (else another instance won the race for it: the service is
//!    deferred, "lease lost"), spend one request of the account's budget
//!    (`account_budget.rs`; a spent budget is waited for when it frees up
//!    soon within the deadline, else it defers the service), ask 1Password
//!    for the page after the checkpoint and read the answer. A failure ends
//!    the service's part with the checkpoint unchanged: a 429 also backs off
//!    the whole account, a refused cursor is forgotten, and where retrying at
//!    once would not help the service backs off; so does a cursor that does
//!    not move (answered with itself, `has_more` and nothing new: error
//!    604). A good page becomes Devo batches, minus the events Devo already
//!    took, and the checkpoint to write once they are delivered.
//! 3. **Delivery** (`delivery.rs`): send the batches to Devo one at a time,
//!    recording which events Devo took after every batch but the last, so
//!    that a repeat of the page after a cut does not resend them (they count
//!    as recorded once the write's read-back shows it). A failed
//!    batch ends the service's part with a back-off and the checkpoint
//!    unchanged.
//! 4. **Commit and release** (`commit.rs`): when every batch was accepted,
//!    write the new checkpoint in the same swap that renews the lease, and
//!    confirm by a read that the store holds it (else another instance took
//!    the service over: lease lost, the page's events unconfirmed); then
//!    the next page (from step 2's budget spend) while there is more and the
//!    tick's deadline leaves room for a page as long as the longest so far
//!    (and `max_pages_per_tick`, when set, allows), or release the lease.
//!    Pages are bounded by time and budget, not by a count: a backlog
//!    drains at the budget's pace, and a caught-up service asks once. The
//!    part is reported, and the next service begins. After the last, the
//!    tick is `Done` with its report.
//!
//! **The lease's heartbeat** (`page.rs`). A lease lasts `lease_ttl_ms`
//! (15 s) past its last write: taking it, each progress write and commit,
//! and, while a lane awaits an answer (a page, a batch, a wait for the
//! budget), a renewal every third of that ([`Tick::next_renewal`], started
//! by [`Tick::poll_lane`] once [`Tick::clock`] says it is due). A renewal
//! that finds another holder, or that the store fails, ends the part at
//! once: the driver drops what the lane awaited ([`Action::Abandon`]),
//! nothing is committed. So a tick killed mid-work holds its services for
//! `lease_ttl_ms` at most.
//!
//! **Lanes.** Driven with [`Tick::poll`] and [`Tick::handle`], a tick works
//! on one service at a time. With [`Tick::with_lanes`] and
//! [`Tick::poll_lane`]/[`Tick::handle_lane`], up to that many services go
//! through steps 2–4 at once, each lane taking the next service when its
//! own is done, so their requests are in flight together (the component
//! waits on all of them through wasi:http's pollables). Each lane spends its
//! own request of the budget and writes its own records; the store actions
//! of one lane are answered before another lane is polled, so a `Watch` is
//! always followed by its own `Swap`. Only a tick driven by lanes renews its
//! leases while it waits (one driven by `poll` answers every request before
//! it polls again).
//!
//! Every write of a stored record (the lease, the budget, progress, the
//! checkpoint, the release) is a compare-and-swap (`swap.rs`): read the
//! record, decide what to write from its current value (the phase files'
//! `Update` functions), write only if it did not change, then read the
//! record back. The store's answer to the swap is only a hint: Spin 3.5's
//! Redis store answers "failed" to swaps that wrote, and could answer ok to
//! one that lost the race. Each value written carries an id unique to the
//! write, so the read-back tells whether it landed, whatever the answer; a
//! write that did not land is decided anew from a fresh read, a bounded
//! number of times. That is one read per write more than a store that could
//! be trusted would need.
//!
//! # Where to look
//!
//! - A 429: `page.rs` `on_page` sees it, `account_budget.rs`
//!   `back_off_account` writes the account's back-off.
//! - The checkpoint is written in one place: `commit.rs` `commit`.
//! - What a failure does to the lease and the back-off: `commit.rs`
//!   `release`; which failures back off: their `Step::release` calls.
//! - Events never sent twice: `page.rs` `prepare` (what to skip),
//!   `delivery.rs` `record_progress` (what Devo took of a cut page).
//! - Store failures and concurrent writers: `swap.rs`.
//! - A swap whose answer is wrong (ok without writing, failed though it
//!   wrote): `swap.rs` `on_confirmed` reads the record back; a lease or a
//!   commit that did not land is `page.rs` `lease_not_taken` and `commit.rs`
//!   `commit_not_written`.
//! - Which key the account's budget is counted under: `account_budget.rs`
//!   `on_introspection` and `load_gate`; how it counts (sliding windows):
//!   `budget.rs`.
//! - How many pages a tick takes: `commit.rs` `committed` (deadline, cap),
//!   `account_budget.rs` `spend_budget` (the budget, and waiting for it).
//! - A cursor that does not move: `page.rs` `prepare` (`nothing_new`).
//! - How long a lease lasts, when it is renewed, and what a failed renewal
//!   does: `page.rs`.

mod account_budget;
mod action;
mod commit;
mod delivery;
mod page;
mod swap;

pub use self::action::{Action, Input};
use crate::account::{self, AccountInfo};
use crate::checkpoint::Checkpoint;
use crate::config::{Config, RETENTION};
use crate::devo::Batch;
use crate::error::CollectorError;
use crate::onepassword::PageStart;
use crate::report::{Outcome, ServiceReport, TickReport};
use crate::service::Service;
use crate::state::ServiceState;
use crate::time;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use std::collections::VecDeque;
// src/tests/tick.rs reads these through `use super::*`.
#[cfg(test)]
use {
    crate::budget::BudgetRecord,
    crate::error::{ErrorKind, LEASE_LOST, SCOPE_MISSING},
    crate::http::HttpRequest,
    crate::state::Lease,
};

pub struct Tick {
    config: Config,
    /// Names this tick as a lease holder, and as the writer of the records
    /// it writes.
    me: String,
    /// Writes made so far: with `me`, each write's unique writer id.
    writes: u64,
    entropy: u64,
    started_at: DateTime<Utc>,
    now: DateTime<Utc>,
    account: Option<AccountInfo>,
    /// 1Password refused the token itself (introspection answered 401):
    /// each service's part ends with this error, recorded in its state so
    /// that `status` shows it, and nothing is fetched.
    refused: Option<CollectorError>,
    budget_key: String,
    /// The active lane's step and service (see `lanes`).
    step: Step,
    queue: VecDeque<Service>,
    run: Option<ServiceRun>,
    /// Lanes: each works on one service at a time, taking the next from
    /// `queue` when it is done, so that with several lanes the services'
    /// requests are in flight together. The active lane's step and run live
    /// in `step` and `run` (the phase files know only those); the others are
    /// parked here, the active lane's slot holding a placeholder.
    lanes: Vec<Lane>,
    active: usize,
    /// True once the account phase is over and the services began: only
    /// then do lanes other than the first take part.
    services_begun: bool,
    reports: Vec<ServiceReport>,
    warnings: Vec<String>,
}

/// A parked lane (see `Tick::lanes`).
struct Lane {
    step: Step,
    run: Option<ServiceRun>,
}

impl Lane {
    fn placeholder() -> Lane {
        Lane { step: Step::LaneDone, run: None }
    }
}

impl Tick {
    /// `entropy` is any random number (lease identity, back-off jitter).
    pub fn new(config: Config, now: DateTime<Utc>, entropy: u64) -> Tick {
        let mut warnings = Vec::new();
        if let Some(claims) = account::token_claims(&config.token) {
            warnings.extend(account::expiry_warning(&claims, now));
        }
        if let Some(start) = config.start_time.filter(|t| *t < now - RETENTION) {
            warnings.push(format!(
                "start_time_value {} is older than the {} days 1Password keeps; collection starts at the oldest available events, from {}",
                time::utc(start),
                RETENTION.num_days(),
                time::utc(page::oldest_available(now))
            ));
        }
        // Start at a different service each tick, so that when the budget
        // only allows some of them, none is starved.
        let mut queue: VecDeque<Service> = config.services.iter().copied().collect();
        queue.rotate_left((entropy % queue.len().max(1) as u64) as usize);
        Tick {
            queue,
            budget_key: String::new(),
            config,
            me: format!("{entropy:016x}"),
            writes: 0,
            entropy,
            started_at: now,
            now,
            account: None,
            refused: None,
            step: Step::LoadAccount,
            run: None,
            lanes: vec![Lane::placeholder()],
            active: 0,
            services_begun: false,
            reports: Vec::new(),
            warnings,
        }
    }

    /// Works on up to `lanes` services at once (at least one): with
    /// [`Tick::poll_lane`] and [`Tick::handle_lane`] the driver has their
    /// requests in flight together. The account phase comes first, on lane
    /// 0 alone. Each service still spends its own request of the budget.
    pub fn with_lanes(mut self, lanes: usize) -> Tick {
        self.lanes.resize_with(lanes.max(1), || Lane { step: Step::NextService, run: None });
        self
    }

    /// The next thing to do, one service at a time. Every action but `Done`
    /// must be answered with [`Tick::handle`] before `poll` is called again.
    pub fn poll(&mut self) -> Action {
        debug_assert_eq!(self.lanes.len(), 1, "a tick with lanes is driven with poll_lane");
        if let Some(action) = self.poll_lane(0) {
            return action;
        }
        match self.done() {
            Some(report) => Action::Done(report),
            None => panic!("Tick::poll called while {} awaits input", self.step.name()),
        }
    }

    /// Feeds the result of the last action, with the time it arrived.
    pub fn handle(&mut self, input: Input, now: DateTime<Utc>) {
        self.handle_lane(0, input, now);
    }

    /// The lanes the driver polls now: one during the account phase, all
    /// of them after it.
    pub fn lanes(&self) -> usize {
        if self.services_begun {
            self.lanes.len()
        } else {
            1
        }
    }

    /// The next thing `lane` has to do; `None` while it awaits the input of
    /// its last action, or has no service left. Never `Done`: see
    /// [`Tick::done`]. A lane's store actions must be answered before
    /// another lane is polled (a `Watch` and its `Swap` follow each other);
    /// its `Send` may be answered at any later time.
    pub fn poll_lane(&mut self, lane: usize) -> Option<Action> {
        self.activate(lane);
        loop {
            match std::mem::replace(&mut self.step, Step::NextService) {
                // 1. Account and budget (account_budget.rs).
                Step::LoadAccount => return Some(self.load_account()),
                Step::Introspect { cached } => return Some(self.introspect(cached)),
                Step::StoreAccount(info) => return Some(self.store_account(info)),
                Step::LoadGate => return Some(self.load_gate()),
                // 2. One service's page (page.rs).
                Step::NextService => {
                    self.services_begun = true;
                    match self.queue.pop_front() {
                        None => {
                            self.step = Step::LaneDone;
                            return None;
                        }
                        Some(service) => self.begin(service),
                    }
                }
                Step::Fetch => return Some(self.fetch()),
                Step::Wait(until) => {
                    self.step = Step::AwaitWake;
                    return Some(Action::Wait { until });
                }
                // 3. Delivery (delivery.rs).
                Step::Deliver => {
                    if let Some(action) = self.deliver() {
                        return Some(action);
                    }
                }
                // 4. The service's part is over (commit.rs).
                Step::Finish(ending) => self.finish(ending),
                // Any write of a stored record (swap.rs).
                Step::Watch(update, attempt) => return Some(self.watch(update, attempt)),
                Step::Swap(update, attempt, value) => return Some(self.swap(update, attempt, value)),
                Step::Confirm(update, attempt, answer) => return Some(self.confirm(update, attempt, answer)),
                // The lease could not be renewed (page.rs): drop what the
                // lane awaits, then end the service's part.
                Step::Abandon(ending) => {
                    self.step = Step::Finish(ending);
                    return Some(Action::Abandon);
                }
                // Awaiting input, or no service left; a lane that awaits an
                // answer renews its lease when it is due (page.rs).
                waiting => {
                    self.step = self.renew_if_due(waiting);
                    if matches!(self.step, Step::Watch(..)) {
                        continue;
                    }
                    return None;
                }
            }
        }
    }

    /// Feeds `lane` the result of its last action, with the time it
    /// arrived.
    pub fn handle_lane(&mut self, lane: usize, input: Input, now: DateTime<Utc>) {
        self.activate(lane);
        self.now = now;
        // An answer over the cap fails like one the component stopped
        // reading: whoever performed the request, the core reads no more.
        let input = match input {
            Input::Response(result) => Input::Response(result.and_then(|r| r.within(self.config.max_response_bytes))),
            other => other,
        };
        let step = std::mem::replace(&mut self.step, Step::NextService);
        let renewing = step.renewing();
        self.step = match (step, input) {
            (Step::AwaitAccount, Input::Loaded(result)) => self.on_cached_account(result),
            (Step::AwaitIntrospect { cached }, Input::Response(result)) => self.on_introspection(cached, result),
            (Step::AwaitStoreAccount, Input::Stored(result)) => self.on_account_stored(result),
            (Step::AwaitGate, Input::Loaded(result)) => self.on_gate(result),
            (Step::AwaitPage, Input::Response(result)) => self.on_page(result),
            (Step::AwaitDevo, Input::Response(result)) => self.on_devo(result),
            (Step::AwaitWake, Input::Woke) => Step::write(Update::SpendBudget),
            (Step::AwaitCurrent(update, attempt), Input::Loaded(result)) => self.on_current(update, attempt, result),
            (Step::AwaitSwap(update, attempt), Input::Swapped(result)) => self.on_swapped(update, attempt, result),
            (Step::AwaitConfirm(update, attempt, answer), Input::Loaded(result)) => {
                self.on_confirmed(update, attempt, answer, result)
            }
            (step, input) => panic!("Tick::handle got {} while {} was expected", input.name(), step.name()),
        };
        if let Some(awaiting) = renewing {
            self.after_renewal(awaiting);
        }
    }

    /// The report, once every lane has run out of services.
    pub fn done(&mut self) -> Option<TickReport> {
        let finished = |step: &Step| matches!(step, Step::LaneDone);
        let all = self.services_begun
            && finished(&self.step)
            && self.lanes.iter().enumerate().all(|(i, l)| i == self.active || finished(&l.step));
        all.then(|| self.report())
    }

    /// Makes `lane` the one `step` and `run` belong to.
    fn activate(&mut self, lane: usize) {
        if lane == self.active {
            return;
        }
        let parked = &mut self.lanes[self.active];
        std::mem::swap(&mut self.step, &mut parked.step);
        std::mem::swap(&mut self.run, &mut parked.run);
        let next = &mut self.lanes[lane];
        std::mem::swap(&mut self.step, &mut next.step);
        std::mem::swap(&mut self.run, &mut next.run);
        self.active = lane;
    }

    /// The service whose part of the tick is under way.
    fn running(&mut self) -> &mut ServiceRun {
        self.run.as_mut().expect("a service is running")
    }

    /// Adds a warning to the report, once (a compare-and-swap may decide
    /// again on the same record).
    fn warn(&mut self, warning: String) {
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }
}

/// Where the tick is: what `poll` does next, or which input `handle` awaits.
enum Step {
    // 1. Account and budget (account_budget.rs).
    LoadAccount,
    AwaitAccount,
    Introspect {
        cached: Option<AccountInfo>,
    },
    AwaitIntrospect {
        cached: Option<AccountInfo>,
    },
    StoreAccount(AccountInfo),
    AwaitStoreAccount,
    LoadGate,
    AwaitGate,
    // 2. One service's page (page.rs).
    NextService,
    /// The budget allows the next page at this time (account_budget.rs).
    Wait(DateTime<Utc>),
    AwaitWake,
    Fetch,
    AwaitPage,
    // 3. Delivery (delivery.rs).
    Deliver,
    AwaitDevo,
    // 4. The service's part is over (commit.rs).
    Finish(Ending),
    /// The lease could not be renewed while the lane awaited an answer
    /// (page.rs): the driver drops it, then the part ends.
    Abandon(Ending),
    /// The lane has no service left.
    LaneDone,
    // A compare-and-swap (swap.rs): the update, and how many tries so far;
    // then the read-back that decides whether the swap wrote, with what the
    // store answered.
    Watch(Update, u32),
    AwaitCurrent(Update, u32),
    Swap(Update, u32, Vec<u8>),
    AwaitSwap(Update, u32),
    Confirm(Update, u32, swap::Answer),
    AwaitConfirm(Update, u32, swap::Answer),
}

impl Step {
    /// A compare-and-swap, from its first try.
    fn write(update: Update) -> Step {
        Step::Watch(update, 0)
    }

    /// End the service's part: release its lease, and record the error (and
    /// a back-off when `backoff`); with `forget_cursor`, drop a refused
    /// cursor.
    fn release(ending: Ending, backoff: bool, forget_cursor: bool) -> Step {
        Step::write(Update::Release { ending, backoff, forget_cursor })
    }
}

/// A compare-and-swap the tick performs. What each writes and what follows
/// it is in the file of its phase; `swap.rs` dispatches.
#[derive(Clone, Debug)]
enum Update {
    /// page.rs: take the service's lease.
    TakeLease,
    /// account_budget.rs: spend one request of the account's budget.
    SpendBudget,
    /// account_budget.rs: 1Password answered 429, every service of the
    /// account waits.
    AccountBackoff { retry_after: Option<String>, error: CollectorError },
    /// delivery.rs: some batches of the page were accepted; remember which.
    Progress,
    /// commit.rs: the page is delivered: move the checkpoint.
    Commit,
    /// commit.rs: end the service's part (see [`Step::release`]).
    Release { ending: Ending, backoff: bool, forget_cursor: bool },
    /// page.rs: renew the lease while the lane awaits this.
    Renew(page::Awaiting),
}

impl Update {
    /// Records a delivery Devo already took: one that is not written will be
    /// sent again.
    fn records_delivery(&self) -> bool {
        matches!(self, Update::Progress | Update::Commit)
    }

    /// The record it writes, as an error message names it.
    fn record(&self) -> &'static str {
        match self {
            Update::SpendBudget | Update::AccountBackoff { .. } => "the account's budget record",
            _ => "the service's state record",
        }
    }
}

/// How a service's part of the tick ended.
#[derive(Clone, Debug)]
struct Ending {
    outcome: Outcome,
    error: Option<CollectorError>,
}

impl Ending {
    fn of(outcome: Outcome) -> Ending {
        Ending { outcome, error: None }
    }

    fn failed(error: CollectorError) -> Ending {
        Ending { outcome: Outcome::Failed, error: Some(error) }
    }
}

/// One service's part of the tick.
struct ServiceRun {
    service: Service,
    started_at: DateTime<Utc>,
    /// The state record as last read or written by us.
    state: ServiceState,
    /// The bytes of this lane's last swap (of the state record or the
    /// budget), to recognise them when the record is read back (swap.rs).
    written: Vec<u8>,
    start: Option<PageStart>,
    fetched: u32,
    sent: u32,
    /// Of `sent`, events whose delivery is recorded in the store (a
    /// progress write or the commit read back).
    confirmed: u32,
    pages: u32,
    /// When the current page began (its budget spent), and the longest a
    /// page of this run took from there to its commit: the room the next
    /// page needs before the tick's deadline.
    page_started: DateTime<Utc>,
    longest_page: TimeDelta,
    bytes_sent: u64,
    has_more: bool,
    /// Uuids of the current page Devo took so far (including an earlier
    /// tick's, from `partial`).
    delivered: Vec<String>,
    /// The checkpoint to commit once the current page is delivered.
    next: Option<Checkpoint>,
    batches: VecDeque<(Batch, Vec<String>)>,
    /// Until when and why this service waits (budget, back-off, lease).
    deferred: Option<(DateTime<Utc>, String)>,
    /// `bytes_sent` already added to the stored statistics.
    bytes_counted: u64,
    /// Events fetched whose time is further ahead than `MAX_CLOCK_SKEW`:
    /// delivered, but not the checkpoint's newest (page.rs `prepare`).
    future_events: u32,
}

impl ServiceRun {
    fn new(service: Service, now: DateTime<Utc>) -> ServiceRun {
        ServiceRun {
            service,
            started_at: now,
            state: ServiceState::new(now),
            written: Vec::new(),
            start: None,
            fetched: 0,
            sent: 0,
            confirmed: 0,
            pages: 0,
            page_started: now,
            longest_page: TimeDelta::zero(),
            bytes_sent: 0,
            bytes_counted: 0,
            has_more: false,
            delivered: Vec::new(),
            next: None,
            batches: VecDeque::new(),
            deferred: None,
            future_events: 0,
        }
    }

    /// How a part that ends without an error went: a page delivered earlier
    /// in the tick still counts, whatever stopped the service after it.
    fn outcome(&self, if_nothing_sent: Outcome) -> Outcome {
        if self.sent > 0 {
            Outcome::Delivered
        } else {
            if_nothing_sent
        }
    }
}

/// A time as stored in a checkpoint (its `start_time_value`): changing this
/// format would reset every service once. What reports show is
/// [`time::utc`].
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn elapsed_ms(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    (to - from).num_milliseconds().max(0) as u64
}

/// Nanoseconds of a time, to vary the back-off jitter.
fn nanos(t: DateTime<Utc>) -> u64 {
    t.timestamp_nanos_opt().unwrap_or_default() as u64
}

// Names for the panic of a driver that breaks the poll/handle protocol.

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Step::AwaitAccount => "a cached account load",
            Step::AwaitIntrospect { .. } => "an introspection response",
            Step::AwaitStoreAccount => "an account store",
            Step::AwaitGate => "a budget load",
            Step::AwaitCurrent(..) => "a compare-and-swap read",
            Step::AwaitSwap(..) => "a swap result",
            Step::AwaitConfirm(..) => "a confirmation read",
            Step::AwaitPage => "a 1Password response",
            Step::AwaitDevo => "a Devo response",
            Step::AwaitWake => "the end of a wait",
            _ => "no input",
        }
    }
}

// The tick's tests sit with the core's other suites in src/tests/; they
// are a child of this module to drive its private steps.
#[cfg(test)]
#[path = "../tests/tick.rs"]
mod tests;
