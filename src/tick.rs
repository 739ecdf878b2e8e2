//! One tick as a state machine with no I/O: the driver (the component
//! adapter, or a test) asks [`Tick::poll`] what to do, does it, and hands
//! the result back with [`Tick::handle`], together with the current time.
//!
//! A tick first learns the token's account and scopes (introspection,
//! cached) and whether the account is backing off after a 429. Then, per
//! enabled service: take the service's lease (compare-and-swap on its state
//! record), spend one request of the account's budget, fetch a page, send it
//! to Devo in batches (recording progress between batches so a repeat does
//! not resend them), and only when every batch was accepted write the new
//! checkpoint — in the same swap that renews or releases the lease. Up to
//! `max_pages_per_tick` pages while the tick deadline allows. A failure ends
//! that service's part with its checkpoint unchanged (and a back-off where
//! retrying at once would not help); the next service carries on.

use crate::account::{self, AccountInfo};
use crate::backoff::Backoff;
use crate::budget::{BudgetRecord, Refusal};
use crate::checkpoint::Checkpoint;
use crate::config::{Config, DEFAULT_LOOKBACK, RETENTION};
use crate::devo::{self, Batch};
use crate::error::{CollectorError, ErrorKind, LEASE_LOST, SCOPE_MISSING};
use crate::http::{HttpFailure, HttpRequest, HttpResponse};
use crate::onepassword::{self, EventMeta, PageStart};
use crate::report::{Outcome, ServiceReport, TickReport};
use crate::service::Service;
use crate::state::{Lease, Partial, ServiceState, StoredError};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use std::collections::{HashSet, VecDeque};

/// What the driver must do next.
#[derive(Debug)]
pub enum Action {
    /// Read `key` from the key-value bucket; answer with [`Input::Loaded`].
    Load { key: String },
    /// Write `value` under `key`; answer with [`Input::Stored`].
    Store { key: String, value: Vec<u8> },
    /// Start a compare-and-swap on `key` and read its current value;
    /// answer with [`Input::Loaded`].
    Watch { key: String },
    /// Write `value` to the key of the last `Watch`, only if it still holds
    /// what was read; answer with [`Input::Swapped`].
    Swap { value: Vec<u8> },
    /// Perform the request; answer with [`Input::Response`].
    Send { request: HttpRequest },
    /// The tick is over.
    Done(TickReport),
}

/// The result of the last [`Action`]. Store errors are the host's
/// description of the failure and must not contain secrets.
#[derive(Debug)]
pub enum Input {
    Loaded(Result<Option<Vec<u8>>, String>),
    Stored(Result<(), String>),
    /// `Ok(false)`: the value changed since the `Watch`; nothing was written.
    Swapped(Result<bool, String>),
    Response(Result<HttpResponse, HttpFailure>),
}

/// How often a compare-and-swap is retried when others keep changing the value.
const MAX_SWAP_ATTEMPTS: u32 = 20;

pub struct Tick {
    config: Config,
    /// Names this tick as a lease holder.
    me: String,
    entropy: u64,
    started_at: DateTime<Utc>,
    now: DateTime<Utc>,
    account: Option<AccountInfo>,
    budget_key: String,
    step: Step,
    queue: VecDeque<Service>,
    run: Option<ServiceRun>,
    reports: Vec<ServiceReport>,
    warnings: Vec<String>,
}

/// One service's part of the tick.
struct ServiceRun {
    service: Service,
    started_at: DateTime<Utc>,
    /// The state record as last read or written by us.
    state: ServiceState,
    start: Option<PageStart>,
    fetched: u32,
    sent: u32,
    /// Of `sent`, events whose delivery is recorded in the store.
    confirmed: u32,
    pages: u32,
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
}

/// A compare-and-swap the tick performs, and what follows it.
#[derive(Clone, Debug)]
enum Update {
    TakeLease,
    SpendBudget,
    /// 1Password answered 429: every service of the account waits.
    AccountBackoff {
        retry_after: Option<String>,
        error: CollectorError,
    },
    /// Some batches of the page were accepted; remember which.
    Progress,
    /// The page is delivered: move the checkpoint.
    Commit,
    /// End the service's part: release the lease, record the error (and a
    /// back-off when `backoff`), optionally forget a refused cursor.
    Release {
        ending: Ending,
        backoff: bool,
        forget_cursor: bool,
    },
}

#[derive(Clone, Debug)]
struct Ending {
    outcome: Outcome,
    error: Option<CollectorError>,
}

enum Step {
    LoadAccount,
    AwaitAccount,
    Introspect { cached: Option<AccountInfo> },
    AwaitIntrospect { cached: Option<AccountInfo> },
    StoreAccount(AccountInfo),
    AwaitStoreAccount,
    LoadGate,
    AwaitGate,
    NextService,
    Watch(Update, u32),
    AwaitCurrent(Update, u32),
    Swap(Update, u32, Vec<u8>),
    AwaitSwap(Update, u32),
    Fetch,
    AwaitPage,
    Deliver,
    AwaitDevo,
    Finish(Ending),
}

/// What a compare-and-swap decided after reading the current value.
enum Decision {
    Write(Vec<u8>),
    Skip(Step),
}

impl Tick {
    /// `entropy` is any random number (lease identity, back-off jitter).
    pub fn new(config: Config, now: DateTime<Utc>, entropy: u64) -> Tick {
        let mut warnings = Vec::new();
        if let Some(claims) = account::token_claims(&config.token) {
            warnings.extend(account::expiry_warning(&claims, now));
        }
        if config.start_time.is_some_and(|t| t < now - RETENTION) {
            warnings.push(format!(
                "start_time_value is older than the {} days 1Password keeps; collection starts at the oldest available events",
                RETENTION.num_days()
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
            entropy,
            started_at: now,
            now,
            account: None,
            step: Step::LoadAccount,
            run: None,
            reports: Vec::new(),
            warnings,
        }
    }

    /// The next thing to do. Every action but `Done` must be answered with
    /// [`Tick::handle`] before `poll` is called again.
    pub fn poll(&mut self) -> Action {
        loop {
            match std::mem::replace(&mut self.step, Step::NextService) {
                Step::LoadAccount => {
                    self.step = Step::AwaitAccount;
                    return Action::Load { key: account::cache_key(&self.config.token) };
                }
                Step::Introspect { cached } => {
                    self.step = Step::AwaitIntrospect { cached };
                    return Action::Send { request: account::introspect_request(&self.config) };
                }
                Step::StoreAccount(info) => {
                    self.step = Step::AwaitStoreAccount;
                    let value = serde_json::to_vec(&info).expect("account info serialises");
                    return Action::Store { key: account::cache_key(&self.config.token), value };
                }
                Step::LoadGate => {
                    self.budget_key =
                        BudgetRecord::key(&account::budget_account(self.account.as_ref(), &self.config.token));
                    self.step = Step::AwaitGate;
                    return Action::Load { key: self.budget_key.clone() };
                }
                Step::NextService => match self.queue.pop_front() {
                    None => return Action::Done(self.report()),
                    Some(service) => self.begin(service),
                },
                Step::Watch(update, attempt) => {
                    let key = self.update_key(&update);
                    self.step = Step::AwaitCurrent(update, attempt);
                    return Action::Watch { key };
                }
                Step::Swap(update, attempt, value) => {
                    self.step = Step::AwaitSwap(update, attempt);
                    return Action::Swap { value };
                }
                Step::Fetch => {
                    let run = self.run.as_mut().expect("a service is running");
                    let start = page_start(&self.config, &run.state, self.now);
                    let request = onepassword::page_request(&self.config, run.service, &start);
                    run.start = Some(start);
                    self.step = Step::AwaitPage;
                    return Action::Send { request };
                }
                Step::Deliver => {
                    let run = self.run.as_mut().expect("a service is running");
                    match run.batches.front_mut() {
                        Some((batch, _)) => {
                            // A batch is sent at most once per tick (a failure
                            // ends the service's part), so its body moves into
                            // the request; its count and uuids stay until
                            // Devo's answer is recorded.
                            let body = std::mem::take(&mut batch.body);
                            let request = devo::stream_request(&self.config, run.service, body);
                            run.bytes_sent += request.body.len() as u64;
                            self.step = Step::AwaitDevo;
                            return Action::Send { request };
                        }
                        None => self.step = Step::Watch(Update::Commit, 0),
                    }
                }
                Step::Finish(ending) => self.finish(ending),
                awaiting => panic!("Tick::poll called while {} awaits input", awaiting.name()),
            }
        }
    }

    /// Feeds the result of the last action, with the time it arrived.
    pub fn handle(&mut self, input: Input, now: DateTime<Utc>) {
        self.now = now;
        let step = std::mem::replace(&mut self.step, Step::NextService);
        self.step = match (step, input) {
            (Step::AwaitAccount, Input::Loaded(result)) => {
                let cached: Option<AccountInfo> =
                    result.ok().flatten().and_then(|bytes| serde_json::from_slice(&bytes).ok());
                match cached {
                    Some(info) if info.fresh(now) => {
                        self.account = Some(info);
                        Step::LoadGate
                    }
                    cached => Step::Introspect { cached },
                }
            }
            (Step::AwaitIntrospect { cached }, Input::Response(result)) => {
                match result.map(|r| account::parse_introspection(&r, now)) {
                    Ok(Ok(info)) => {
                        self.account = Some(info.clone());
                        Step::StoreAccount(info)
                    }
                    Ok(Err(e)) if e.id == 401 => {
                        // The token itself is refused: no service can be read.
                        self.fail_all(e);
                        Step::NextService
                    }
                    other => {
                        let why = match other {
                            Ok(Err(e)) => e.to_string(),
                            Err(failure) => failure.to_string(),
                            Ok(Ok(_)) => unreachable!(),
                        };
                        self.warnings.push(format!("token introspection failed ({why}); using what is known"));
                        self.account = cached;
                        Step::LoadGate
                    }
                }
            }
            (Step::AwaitStoreAccount, Input::Stored(result)) => {
                if let Err(e) = result {
                    self.warnings.push(format!("could not cache the token introspection ({e})"));
                }
                Step::LoadGate
            }
            (Step::AwaitGate, Input::Loaded(result)) => {
                match result {
                    Err(detail) => self.fail_all(CollectorError::persistence("get", &detail)),
                    Ok(bytes) => {
                        let budget = BudgetRecord::decode(bytes.as_deref());
                        if let Err(refusal @ Refusal::RateLimited { .. }) = budget.check(now, self.config.ceilings) {
                            self.defer_all(&refusal);
                        }
                    }
                }
                Step::NextService
            }
            (Step::AwaitCurrent(update, attempt), Input::Loaded(result)) => match result {
                Err(_) if matches!(update, Update::Commit | Update::Progress) && attempt < 3 => {
                    Step::Watch(update, attempt + 1)
                }
                Err(detail) => {
                    let mut e = CollectorError::persistence("read", &detail);
                    if matches!(update, Update::Commit | Update::Progress) {
                        e.message.push_str(
                            "; Devo already took part of this page, so the next tick sends that part again (a duplicate, not a loss)",
                        );
                    }
                    Step::Finish(failed(e))
                }
                Ok(current) => match self.decide(&update, current.as_deref()) {
                    Decision::Write(value) => Step::Swap(update, attempt, value),
                    Decision::Skip(step) => step,
                },
            },
            (Step::AwaitSwap(update, attempt), Input::Swapped(result)) => match result {
                // A delivery that is not recorded will be sent again: worth
                // a few more tries of a store that failed once.
                Err(_) if matches!(update, Update::Commit | Update::Progress) && attempt < 3 => {
                    Step::Watch(update, attempt + 1)
                }
                Err(detail) => {
                    let mut e = CollectorError::persistence("compare-and-swap", &detail);
                    if matches!(update, Update::Commit) {
                        e.message.push_str(
                            "; Devo already took this page, so the next tick sends it again (a duplicate, not a loss)",
                        );
                    }
                    Step::Finish(failed(e))
                }
                Ok(true) => self.after_write(update),
                Ok(false) if attempt + 1 < MAX_SWAP_ATTEMPTS => Step::Watch(update, attempt + 1),
                Ok(false) => Step::Finish(failed(CollectorError::persistence(
                    "compare-and-swap",
                    "the value kept changing under concurrent writers",
                ))),
            },
            (Step::AwaitPage, Input::Response(result)) => self.on_page(result),
            (Step::AwaitDevo, Input::Response(result)) => self.on_devo(result),
            (step, input) => panic!("Tick::handle got {} while {} was expected", input.name(), step.name()),
        };
    }

    fn begin(&mut self, service: Service) {
        if let Some(features) =
            self.account.as_ref().and_then(|a| a.features.as_ref()).or(self.claimed_features().as_ref())
        {
            if !features.iter().any(|f| f == service.feature()) {
                self.run = Some(ServiceRun::new(service, self.now));
                let e = CollectorError::new(
                    ErrorKind::TokenScopeError,
                    SCOPE_MISSING,
                    format!(
                        "the 1Password token is not scoped to read {service} (its features: {}); issue a token with \"{}\" or remove {service} from services",
                        if features.is_empty() { "none".to_string() } else { features.join(", ") },
                        service.feature()
                    ),
                );
                self.step = Step::Finish(failed(e));
                return;
            }
        }
        self.run = Some(ServiceRun::new(service, self.now));
        self.step = Step::Watch(Update::TakeLease, 0);
    }

    fn claimed_features(&self) -> Option<Vec<String>> {
        account::token_claims(&self.config.token).and_then(|c| c.features)
    }

    fn update_key(&self, update: &Update) -> String {
        match update {
            Update::SpendBudget | Update::AccountBackoff { .. } => self.budget_key.clone(),
            _ => ServiceState::key(self.run.as_ref().expect("a service is running").service),
        }
    }

    fn lease(&self) -> Lease {
        let ttl = self.config.tick_deadline + TimeDelta::milliseconds(4 * self.config.request_timeout_ms as i64);
        Lease { holder: self.me.clone(), expires: self.now + ttl }
    }

    /// Reads the current value of a compare-and-swap and decides the write.
    fn decide(&mut self, update: &Update, current: Option<&[u8]>) -> Decision {
        let now = self.now;
        if let Update::SpendBudget | Update::AccountBackoff { .. } = update {
            let budget = BudgetRecord::decode(current);
            return match update {
                Update::SpendBudget => match budget.spend(now, self.config.ceilings) {
                    Ok(next) => Decision::Write(next.encode()),
                    Err(refusal) => {
                        let run = self.run.as_mut().expect("a service is running");
                        run.deferred = Some((refusal.until(), refusal.describe()));
                        // Nothing more this tick; a page delivered earlier in
                        // the tick still counts.
                        let outcome = if run.sent > 0 { Outcome::Delivered } else { Outcome::Deferred };
                        Decision::Skip(Step::Watch(
                            Update::Release {
                                ending: Ending { outcome, error: None },
                                backoff: false,
                                forget_cursor: false,
                            },
                            0,
                        ))
                    }
                },
                Update::AccountBackoff { retry_after, .. } => {
                    let mut next = budget;
                    let backoff = Backoff::after_failure(
                        next.backoff.as_ref(),
                        now,
                        retry_after.as_deref(),
                        self.entropy ^ nanos(now),
                    );
                    next.backoff = Some(backoff);
                    Decision::Write(next.encode())
                }
                _ => unreachable!(),
            };
        }
        let lease = self.lease();
        let entropy = self.entropy ^ nanos(now);
        let me = self.me.clone();
        let run = self.run.as_mut().expect("a service is running");
        let service = run.service;
        let mut state = match current.map(|b| ServiceState::decode(service, b)).transpose() {
            Err(e) => return Decision::Skip(Step::Finish(failed(e))),
            Ok(state) => state.unwrap_or_else(|| ServiceState::new(now)),
        };
        match update {
            Update::TakeLease => {
                if state.leased_to_other(&me, now) {
                    let until = state.lease.as_ref().map_or(now, |l| l.expires);
                    run.deferred = Some((until, "another instance is collecting this service".into()));
                    return Decision::Skip(Step::Finish(Ending { outcome: Outcome::Deferred, error: None }));
                }
                if let Some(b) = state.backoff.as_ref().filter(|b| b.until > now) {
                    let reason = format!("backing off after {} consecutive failure(s)", b.attempts);
                    run.deferred = Some((b.until, reason));
                    run.state = state;
                    return Decision::Skip(Step::Finish(Ending { outcome: Outcome::Deferred, error: None }));
                }
                if state.initial_start.is_none() {
                    state.initial_start = Some(now - DEFAULT_LOOKBACK);
                }
                state.lease = Some(lease);
            }
            Update::Progress | Update::Commit => {
                if !state.holds_lease(&me) {
                    return Decision::Skip(Step::Finish(failed(CollectorError::new(
                        ErrorKind::PrePullError,
                        LEASE_LOST,
                        format!(
                            "another instance took over {service} while this tick was delivering (its lease expired: raise tick_deadline_ms or request_timeout_ms if ticks are slow); this page will be completed by the next tick"
                        ),
                    ))));
                }
                if let Update::Progress = update {
                    state.partial = Some(Partial {
                        page: run.start.as_ref().expect("a page was requested").id(),
                        delivered: run.delivered.clone(),
                    });
                    state.lease = Some(lease);
                } else {
                    state.checkpoint = run.next.clone();
                    state.partial = None;
                    state.backoff = None;
                    state.stats.last_success_at = Some(now);
                    state.stats.pages += 1;
                    state.stats.bytes_sent += run.bytes_sent - run.bytes_counted;
                    state.lease = Some(lease);
                }
            }
            Update::Release { ending, backoff, forget_cursor } => {
                if state.leased_to_other(&me, now) {
                    // Someone else holds it now: leave their record alone.
                    return Decision::Skip(Step::Finish(ending.clone()));
                }
                state.lease = None;
                if let Some(e) = &ending.error {
                    state.stats.last_error = Some(StoredError { id: e.id, message: e.message.clone(), at: now });
                }
                if *backoff {
                    state.backoff = Some(Backoff::after_failure(state.backoff.as_ref(), now, None, entropy));
                }
                if *forget_cursor {
                    if let Some(cp) = state.checkpoint.as_mut() {
                        cp.cursor = None;
                    }
                }
            }
            Update::SpendBudget | Update::AccountBackoff { .. } => unreachable!(),
        }
        run.state = state.clone();
        Decision::Write(state.encode())
    }

    /// What follows a successful write.
    fn after_write(&mut self, update: Update) -> Step {
        let deadline_passed = self.now - self.started_at >= self.config.tick_deadline;
        let max_pages = self.config.max_pages_per_tick;
        let run = self.run.as_mut().expect("a service is running");
        match update {
            Update::TakeLease => Step::Watch(Update::SpendBudget, 0),
            Update::SpendBudget => Step::Fetch,
            Update::AccountBackoff { error, .. } => {
                Step::Watch(Update::Release { ending: failed(error), backoff: false, forget_cursor: false }, 0)
            }
            Update::Progress => {
                run.batches.pop_front();
                run.confirmed = run.sent;
                Step::Deliver
            }
            Update::Commit => {
                run.confirmed = run.sent;
                run.bytes_counted = run.bytes_sent;
                if run.has_more && run.pages < max_pages && !deadline_passed {
                    Step::Watch(Update::SpendBudget, 0)
                } else {
                    let outcome = if run.sent > 0 { Outcome::Delivered } else { Outcome::Idle };
                    Step::Watch(
                        Update::Release {
                            ending: Ending { outcome, error: None },
                            backoff: false,
                            forget_cursor: false,
                        },
                        0,
                    )
                }
            }
            Update::Release { ending, .. } => Step::Finish(ending),
        }
    }

    fn on_page(&mut self, result: Result<HttpResponse, HttpFailure>) -> Step {
        let config = &self.config;

        let run = self.run.as_mut().expect("a service is running");
        let service = run.service;
        let release = |error: CollectorError, backoff: bool, forget_cursor: bool| {
            Step::Watch(Update::Release { ending: failed(error), backoff, forget_cursor }, 0)
        };
        let response = match result {
            Err(failure) => return release(onepassword::transport_error(service, &failure), true, false),
            Ok(r) => r,
        };
        let page = match onepassword::parse_page(service, &response) {
            Ok(page) => page,
            Err(e) if response.status == 429 => {
                let retry_after = response.header("retry-after").map(str::to_owned);
                return Step::Watch(Update::AccountBackoff { retry_after, error: e }, 0);
            }
            Err(mut e) if response.status == 400 && matches!(run.start, Some(PageStart::Cursor(_))) => {
                e.message.push_str(
                    "; the stored cursor is dropped and the next tick reads again from the newest delivered event, skipping events already delivered",
                );
                return release(e, false, true);
            }
            Err(e) => {
                let retry_soon = response.status >= 500 || response.status == 200;
                return release(e, retry_soon, false);
            }
        };
        run.pages += 1;
        run.fetched += page.items.len() as u32;
        run.has_more = page.has_more;
        let start = run.start.clone().expect("a page was requested");
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
        let mut lines: Vec<(String, Option<String>)> = Vec::with_capacity(page.items.len());
        let mut page_uuids = Vec::with_capacity(page.items.len());
        let mut newest: Option<(DateTime<Utc>, String)> = None;
        for item in &page.items {
            let meta = EventMeta::of(item);
            if let Some((t, raw)) = meta.time() {
                if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                    newest = Some((t, raw));
                }
            }
            if let Some(uuid) = &meta.uuid {
                page_uuids.push(uuid.clone());
                if skip.contains(uuid.as_str()) {
                    continue;
                }
            }
            let line = devo::event_line(item.get());
            let line = match &config.obfuscator {
                None => line.into_owned(),
                Some(o) => match o.apply(&line) {
                    Ok(obfuscated) => obfuscated.into_owned(),
                    Err(e) => {
                        // Sending the clear value would break the user's rule: hold the page.
                        let e = CollectorError::new(
                            ErrorKind::PullError,
                            crate::error::ONEPASSWORD_BAD_BODY,
                            format!("an event of {service} could not be obfuscated ({e}); the page is held back and retried"),
                        );
                        return release(e, true, false);
                    }
                },
            };
            lines.push((line, meta.uuid));
        }
        let new_events = lines.len() as u64 + delivered_before;
        run.next = Some(next_checkpoint(config, previous, newest, &page.cursor, page_uuids, new_events));
        run.batches = batch_with_uuids(&lines, config);
        Step::Deliver
    }

    fn on_devo(&mut self, result: Result<HttpResponse, HttpFailure>) -> Step {
        let run = self.run.as_mut().expect("a service is running");
        let service = run.service;
        let outcome = match result {
            Err(failure) => Err(devo::transport_error(service, &failure)),
            Ok(response) => devo::check_response(service, self.config.tag(service), &response),
        };
        if let Err(e) = outcome {
            return Step::Watch(Update::Release { ending: failed(e), backoff: true, forget_cursor: false }, 0);
        }
        let (batch, uuids) = run.batches.front().expect("a batch was sent");
        run.sent += batch.events;
        run.delivered.extend(uuids.iter().cloned());
        if run.batches.len() > 1 {
            Step::Watch(Update::Progress, 0)
        } else {
            run.batches.pop_front();
            Step::Deliver
        }
    }

    fn finish(&mut self, ending: Ending) {
        let run = self.run.take().expect("a service is running");
        let checkpoint = run.state.checkpoint.as_ref();
        let newest = checkpoint.and_then(|c| c.newest_event.clone());
        let lag_seconds = newest
            .as_deref()
            .and_then(|n| DateTime::parse_from_rfc3339(n).ok())
            .map(|n| (self.now - n.with_timezone(&Utc)).num_seconds().max(0) as u64);
        let (deferred_until, deferred_reason) = match (&run.deferred, ending.outcome) {
            (Some((until, reason)), Outcome::Deferred | Outcome::Delivered) => {
                (Some(rfc3339(*until)), Some(reason.clone()))
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
            checkpoint: newest,
            total_sent: checkpoint.map_or(0, |c| c.total_sent),
            lag_seconds,
            elapsed_ms: elapsed_ms(run.started_at, self.now),
            deferred_until,
            deferred_reason,
            error: ending.error,
        });
        self.step = Step::NextService;
    }

    /// Reports every remaining service with the same error (a refused token).
    fn fail_all(&mut self, error: CollectorError) {
        while let Some(service) = self.queue.pop_front() {
            self.run = Some(ServiceRun::new(service, self.now));
            self.finish(failed(error.clone()));
        }
    }

    /// Reports every remaining service as deferred (the account backs off).
    fn defer_all(&mut self, refusal: &Refusal) {
        while let Some(service) = self.queue.pop_front() {
            let mut run = ServiceRun::new(service, self.now);
            run.deferred = Some((refusal.until(), refusal.describe()));
            self.run = Some(run);
            self.finish(Ending { outcome: Outcome::Deferred, error: None });
        }
    }

    fn report(&self) -> TickReport {
        let mut services = self.reports.clone();
        services.sort_by_key(|s| s.service.parse::<Service>().ok());
        TickReport {
            started_at: rfc3339(self.started_at),
            elapsed_ms: elapsed_ms(self.started_at, self.now),
            services,
            warnings: self.warnings.clone(),
        }
    }
}

impl ServiceRun {
    fn new(service: Service, now: DateTime<Utc>) -> ServiceRun {
        ServiceRun {
            service,
            started_at: now,
            state: ServiceState::new(now),
            start: None,
            fetched: 0,
            sent: 0,
            confirmed: 0,
            pages: 0,
            bytes_sent: 0,
            bytes_counted: 0,
            has_more: false,
            delivered: Vec::new(),
            next: None,
            batches: VecDeque::new(),
            deferred: None,
        }
    }
}

fn failed(error: CollectorError) -> Ending {
    Ending { outcome: Outcome::Failed, error: Some(error) }
}

/// The configured start as stored in a checkpoint, to notice when it changes.
fn start_value(config: &Config) -> Option<String> {
    config.start_time.map(rfc3339)
}

/// Continue from the stored cursor, unless there is none or the configured
/// `start_time_value` changed since it was stored (Devo's way of asking for a
/// re-ingest): then a reset cursor from the configured start. After a
/// refused cursor, read again from the newest delivered event.
fn page_start(config: &Config, state: &ServiceState, now: DateTime<Utc>) -> PageStart {
    let configured = || {
        let start = config.start_time.or(state.initial_start).unwrap_or(now - DEFAULT_LOOKBACK);
        // 1Password serves nothing older; asking for it is an error there.
        PageStart::From(start.max(now - RETENTION + TimeDelta::minutes(5)))
    };
    match &state.checkpoint {
        Some(cp) if cp.start_time_value == start_value(config) => match (&cp.cursor, &cp.newest_event) {
            (Some(cursor), _) => PageStart::Cursor(cursor.clone()),
            (None, Some(newest)) => match DateTime::parse_from_rfc3339(newest) {
                Ok(t) => PageStart::From(t.with_timezone(&Utc)),
                Err(_) => configured(),
            },
            (None, None) => configured(),
        },
        _ => configured(),
    }
}

fn next_checkpoint(
    config: &Config,
    previous: Option<&Checkpoint>,
    newest_in_page: Option<(DateTime<Utc>, String)>,
    cursor: &str,
    page_uuids: Vec<String>,
    new_events: u64,
) -> Checkpoint {
    let reset = previous.is_some_and(|p| p.start_time_value != start_value(config));
    let previous_newest = previous.filter(|_| !reset).and_then(|p| p.newest_event.clone());
    let newest_event = match (newest_in_page, previous_newest) {
        (Some((t, raw)), Some(old)) => {
            let old_t = DateTime::parse_from_rfc3339(&old).ok().map(|o| o.with_timezone(&Utc));
            if old_t.is_some_and(|o| o > t) {
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
        total_sent: previous.map_or(0, |p| p.total_sent) + new_events,
        recent_uuids: previous.filter(|_| !reset).map(|p| p.recent_uuids.clone()).unwrap_or_default(),
    };
    next.remember(page_uuids);
    next
}

/// Devo batches, each with the uuids of the events it holds.
fn batch_with_uuids(lines: &[(String, Option<String>)], config: &Config) -> VecDeque<(Batch, Vec<String>)> {
    let batches =
        devo::batches(lines.iter().map(|(l, _)| l.as_str()), config.devo_max_batch_bytes, config.devo_max_batch_events);
    let mut uuids = lines.iter().map(|(_, u)| u.clone());
    batches
        .into_iter()
        .map(|b| {
            let ids = uuids.by_ref().take(b.events as usize).flatten().collect();
            (b, ids)
        })
        .collect()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn elapsed_ms(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    (to - from).num_milliseconds().max(0) as u64
}

fn nanos(t: DateTime<Utc>) -> u64 {
    t.timestamp_nanos_opt().unwrap_or_default() as u64
}

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Step::AwaitAccount => "a cached account load",
            Step::AwaitIntrospect { .. } => "an introspection response",
            Step::AwaitStoreAccount => "an account store",
            Step::AwaitGate => "a budget load",
            Step::AwaitCurrent(..) => "a compare-and-swap read",
            Step::AwaitSwap(..) => "a swap result",
            Step::AwaitPage => "a 1Password response",
            Step::AwaitDevo => "a Devo response",
            _ => "no input",
        }
    }
}

impl Input {
    fn name(&self) -> &'static str {
        match self {
            Input::Loaded(_) => "a load result",
            Input::Stored(_) => "a store result",
            Input::Swapped(_) => "a swap result",
            Input::Response(_) => "an HTTP response",
        }
    }
}

#[cfg(test)]
#[path = "tick_tests.rs"]
mod tests;
