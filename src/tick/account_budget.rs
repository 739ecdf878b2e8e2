//! Account and budget: the first phase of a tick, and the budget spent before
//! every page.
//!
//! Once, before any service: who the token's account is and what it may read
//! (the introspection, cached in the store and asked again when stale), then
//! the account's budget record, which says whether the account backs off
//! after a 429. Then, before each page request (from `page.rs` and after a
//! commit): spend one request of the account's budget; when it is spent,
//! wait for it if it allows a request again soon (within a tenth of the
//! tick's deadline) and the deadline still leaves room for a page, else
//! defer the service.
//! Last, what a 429 from 1Password does (it is recognised in `page.rs`): the
//! account's record gets a back-off that every service of the account waits
//! out, in this tick and in every other instance's.

use super::swap::Decision;
use super::{nanos, Action, Ending, ServiceRun, Step, Tick};
use crate::account::{self, AccountInfo};
use crate::backoff::Backoff;
use crate::budget::{BudgetRecord, Refusal};
use crate::error::CollectorError;
use crate::http::{HttpFailure, HttpResponse};
use crate::report::Outcome;
use crate::time;
use chrono::TimeDelta;

impl Tick {
    // The token's account: the cached introspection, or a new one.

    pub(super) fn load_account(&mut self) -> Action {
        self.step = Step::AwaitAccount;
        Action::Load { key: account::cache_key(&self.config.token) }
    }

    pub(super) fn on_cached_account(&mut self, result: Result<Option<Vec<u8>>, String>) -> Step {
        // An unreadable cache is no cache: introspect.
        let cached: Option<AccountInfo> = result.ok().flatten().and_then(|bytes| serde_json::from_slice(&bytes).ok());
        match cached {
            Some(info) if info.fresh(self.now) => {
                self.account = Some(info);
                Step::LoadGate
            }
            cached => Step::Introspect { cached },
        }
    }

    pub(super) fn introspect(&mut self, cached: Option<AccountInfo>) -> Action {
        self.step = Step::AwaitIntrospect { cached };
        Action::Send { request: account::introspect_request(&self.config) }
    }

    pub(super) fn on_introspection(
        &mut self,
        cached: Option<AccountInfo>,
        result: Result<HttpResponse, HttpFailure>,
    ) -> Step {
        match result.map(|r| account::parse_introspection(&r, self.now)) {
            Ok(Ok(mut info)) => {
                // A token's account does not change: an answer without a
                // usable account uuid keeps the one known, so that the
                // account's budget stays under one key.
                if info.account_uuid.is_none() {
                    info.account_uuid = cached.and_then(|c| c.account_uuid);
                }
                self.account = Some(info.clone());
                Step::StoreAccount(info)
            }
            Ok(Err(e)) if e.id == 401 => {
                // The token itself is refused: no service can be read. Each
                // fails with the error in its record (`Tick::begin`).
                self.refused = Some(e);
                Step::NextService
            }
            Ok(Err(e)) => self.introspection_failed(cached, e),
            Err(failure) => self.introspection_failed(cached, account::introspection_failure(&failure)),
        }
    }

    /// The introspection failed, not because of the token. With an earlier
    /// answer cached (stale, else it would not have been asked again) the
    /// services run with it. With none, the account whose request budget a
    /// page would spend is not known, and the budget is not spent under the
    /// token's own key instead: the account's budget would be split between
    /// that key and its account's from the next good introspection on, and
    /// the two together could spend past 1Password's limit. Every service
    /// fails this tick, and nothing is fetched.
    fn introspection_failed(&mut self, cached: Option<AccountInfo>, mut error: CollectorError) -> Step {
        match cached {
            Some(info) => {
                self.warnings.push(format!(
                    "token introspection failed ({error}); using the answer cached at {}",
                    time::utc(info.fetched_at)
                ));
                self.account = Some(info);
                Step::LoadGate
            }
            None => {
                error.message.push_str(
                    "; with no earlier answer cached, the account whose request budget a page spends is not known, so nothing is fetched until the introspection succeeds",
                );
                self.fail_all(error);
                Step::NextService
            }
        }
    }

    pub(super) fn store_account(&mut self, info: AccountInfo) -> Action {
        self.step = Step::AwaitStoreAccount;
        let value = serde_json::to_vec(&info).expect("account info serialises");
        Action::Store { key: account::cache_key(&self.config.token), value }
    }

    pub(super) fn on_account_stored(&mut self, result: Result<(), String>) -> Step {
        if let Err(e) = result {
            self.warnings.push(format!("could not cache the token introspection ({e})"));
        }
        Step::LoadGate
    }

    // The account's gate: its budget record, read once before any service.

    pub(super) fn load_gate(&mut self) -> Action {
        self.budget_key = BudgetRecord::key(&account::budget_account(self.account.as_ref(), &self.config.token));
        self.step = Step::AwaitGate;
        Action::Load { key: self.budget_key.clone() }
    }

    pub(super) fn on_gate(&mut self, result: Result<Option<Vec<u8>>, String>) -> Step {
        match result {
            Err(detail) => self.fail_all(CollectorError::persistence("get", &detail)),
            Ok(bytes) => {
                let budget = BudgetRecord::decode(bytes.as_deref());
                if let Some(b) = budget.backoff.as_ref().filter(|b| b.implausible(self.now)) {
                    // Not obeyed (`Backoff::pending`): it would stop the account forever.
                    self.warn(format!(
                        "the account's stored budget holds a back-off until {}, further ahead than any back-off lasts ({} minutes); it is ignored (a corrupt record, or a clock far ahead)",
                        time::utc(b.until),
                        crate::backoff::LONGEST.num_minutes()
                    ));
                }
                // Only the account's back-off after a 429 stops every service
                // here; a spent minute or hour is met by each service's own
                // spend, on the record's value at that moment.
                if let Err(refusal @ Refusal::RateLimited { .. }) = budget.check(self.now, self.config.ceilings) {
                    self.defer_all(&refusal);
                }
            }
        }
        Step::NextService
    }

    /// Reports every remaining service with the same error (a refused token,
    /// an unreadable budget).
    fn fail_all(&mut self, error: CollectorError) {
        while let Some(service) = self.queue.pop_front() {
            self.run = Some(ServiceRun::new(service, self.now));
            self.finish(Ending::failed(error.clone()));
        }
    }

    /// Reports every remaining service as deferred (the account backs off).
    fn defer_all(&mut self, refusal: &Refusal) {
        while let Some(service) = self.queue.pop_front() {
            let mut run = ServiceRun::new(service, self.now);
            run.deferred = Some((refusal.until(), refusal.describe()));
            self.run = Some(run);
            self.finish(Ending::of(Outcome::Deferred));
        }
    }

    // Before each page: spend one request of the budget (`Update::SpendBudget`).

    pub(super) fn spend_budget(&mut self, budget: BudgetRecord) -> Decision {
        let now = self.now;
        let deadline = self.started_at + self.config.tick_deadline;
        match budget.spend(now, self.config.ceilings) {
            // Then the page request (`Step::Fetch`); the page's time runs
            // from here to its commit.
            Ok(next) => {
                self.running().page_started = now;
                self.write_budget(next)
            }
            // The window's oldest requests leave it soon, with room for a
            // page after before the deadline: wait for them, then spend
            // anew (on the record as it is then). A tick that is all a
            // firing gets (Spin's cron) would otherwise end here and leave
            // the budget unused until its next firing. Only a short wait
            // (a tenth of the deadline): a tick waiting longer holds its
            // instance and its lease for nothing, where a host that ticks
            // again at `deferred_until` (`host-harness run`) does better.
            Err(Refusal::Exhausted { until, .. })
                if until - now <= max_wait(self.config.tick_deadline)
                    && until + self.running().longest_page < deadline =>
            {
                Decision::Skip(Step::Wait(until))
            }
            Err(refusal) => {
                let run = self.running();
                run.deferred = Some((refusal.until(), refusal.describe()));
                // Nothing more for this service this tick.
                Decision::Skip(Step::release(Ending::of(run.outcome(Outcome::Deferred)), false, false))
            }
        }
    }

    // On a 429 (`Update::AccountBackoff`).

    /// Backs the whole account off: 1Password counts its limit per account,
    /// so any service's next request would be refused too.
    pub(super) fn back_off_account(&mut self, mut budget: BudgetRecord, retry_after: Option<&str>) -> Decision {
        let backoff =
            Backoff::after_failure(budget.backoff.as_ref(), self.now, retry_after, self.entropy ^ nanos(self.now));
        budget.backoff = Some(backoff);
        self.write_budget(budget)
    }

    /// The service's part ends, failed. Its own record gets no back-off: the
    /// account's holds every service back.
    pub(super) fn account_backed_off(error: CollectorError) -> Step {
        Step::release(Ending::failed(error), false, false)
    }
}

/// The longest a tick waits for the budget at once: a tenth of its
/// deadline, at least a second.
fn max_wait(tick_deadline: TimeDelta) -> TimeDelta {
    (tick_deadline / 10).max(TimeDelta::seconds(1))
}
