//! The compare-and-swap every write of a stored record goes through, in any
//! phase: take the lease, spend the budget, back the account off, record
//! progress, commit, release.
//!
//! Read the record (`Watch`), decide from its current value what to write
//! (the phase's function, dispatched by [`Tick::decide`]), write it only if
//! the record did not change meanwhile (`Swap`), else read again. After the
//! write, [`Tick::after_write`] says what follows. Some decisions write
//! nothing and go on at once (`Decision::Skip`): a lease held by another
//! instance, a spent budget.
//!
//! A store may answer ok to a swap that lost the race without writing
//! anything: Spin 3.x's Redis store treats an aborted transaction as a
//! success. So where it matters, the swap's ok is confirmed by reading the
//! record back (`Confirm`, one plain read): after taking a lease and after a
//! commit ([`Update::confirmed_by_read`]). A record that does not hold what
//! the tick wrote means the swap did not happen: the phase's function says
//! what follows (`page.rs` `lease_not_taken`, `commit.rs`
//! `commit_not_written`). A progress write is confirmed by the read that
//! starts the next write of the record, at no extra cost (`delivery.rs`
//! `confirm_recorded`).

use super::{Action, Ending, ServiceRun, Step, Tick, Update};
use crate::budget::BudgetRecord;
use crate::error::CollectorError;
use crate::state::ServiceState;

/// How often a compare-and-swap is retried when others keep changing the value.
const MAX_SWAP_ATTEMPTS: u32 = 20;

/// How often a write that records a delivery is tried again after the store
/// failed: a delivery that is not recorded will be sent again.
const DELIVERY_STORE_RETRIES: u32 = 3;

/// What a compare-and-swap decided after reading the current value.
pub(super) enum Decision {
    Write(Vec<u8>),
    /// Write nothing; go on with this step.
    Skip(Step),
}

impl Tick {
    pub(super) fn watch(&mut self, update: Update, attempt: u32) -> Action {
        let key = match update {
            Update::SpendBudget | Update::AccountBackoff { .. } => self.budget_key.clone(),
            _ => ServiceState::key(self.running().service),
        };
        self.step = Step::AwaitCurrent(update, attempt);
        Action::Watch { key }
    }

    pub(super) fn on_current(&mut self, update: Update, attempt: u32, result: Result<Option<Vec<u8>>, String>) -> Step {
        match result {
            Err(detail) => {
                let mut e = CollectorError::persistence("read", &detail);
                if update.records_delivery() {
                    e.message.push_str(
                        "; Devo already took part of this page, so the next tick sends that part again (a duplicate, not a loss)",
                    );
                }
                store_failed(update, attempt, e)
            }
            Ok(current) => match self.decide(&update, current.as_deref()) {
                Decision::Write(value) => Step::Swap(update, attempt, value),
                Decision::Skip(step) => step,
            },
        }
    }

    /// What to write, given the record's current value: each update's own
    /// function, in the file of its phase.
    fn decide(&mut self, update: &Update, current: Option<&[u8]>) -> Decision {
        match update {
            Update::SpendBudget => return self.spend_budget(BudgetRecord::decode(current)),
            Update::AccountBackoff { retry_after, .. } => {
                return self.back_off_account(BudgetRecord::decode(current), retry_after.as_deref())
            }
            _ => {}
        }
        let run = self.running();
        run.confirm_recorded(current);
        let service = run.service;
        let state = match current.map(|b| ServiceState::decode(service, b)).transpose() {
            // A record that cannot be read (corrupt, or from a newer version)
            // is not overwritten: the service's part fails.
            Err(e) => return Decision::Skip(Step::Finish(Ending::failed(e))),
            Ok(state) => state.unwrap_or_else(|| ServiceState::new(self.now)),
        };
        match update {
            Update::TakeLease => self.take_lease(state),
            Update::Progress => self.record_progress(state),
            Update::Commit => self.commit(state),
            Update::Release { ending, backoff, forget_cursor } => self.release(state, ending, *backoff, *forget_cursor),
            Update::SpendBudget | Update::AccountBackoff { .. } => unreachable!("decided above"),
        }
    }

    pub(super) fn swap(&mut self, update: Update, attempt: u32, value: Vec<u8>) -> Action {
        self.step = Step::AwaitSwap(update, attempt);
        Action::Swap { value }
    }

    pub(super) fn on_swapped(&mut self, update: Update, attempt: u32, result: Result<bool, String>) -> Step {
        match result {
            Err(detail) => {
                let mut e = CollectorError::persistence("compare-and-swap", &detail);
                if let Update::Commit = update {
                    e.message.push_str(
                        "; Devo already took this page, so the next tick sends it again (a duplicate, not a loss)",
                    );
                }
                store_failed(update, attempt, e)
            }
            Ok(true) if update.confirmed_by_read() => Step::Confirm(update, attempt),
            Ok(true) => self.after_write(update),
            Ok(false) => conflict(update, attempt),
        }
    }

    /// Reads back the record a swap answered ok for: a plain read, the
    /// compare-and-swap is over.
    pub(super) fn confirm(&mut self, update: Update, attempt: u32) -> Action {
        let key = ServiceState::key(self.running().service);
        self.step = Step::AwaitConfirm(update, attempt);
        Action::Load { key }
    }

    /// The swap wrote when the record holds what this tick wrote; else it
    /// lost a race, whatever it answered.
    pub(super) fn on_confirmed(
        &mut self,
        update: Update,
        attempt: u32,
        result: Result<Option<Vec<u8>>, String>,
    ) -> Step {
        let run = self.running();
        let service = run.service;
        let current = match result {
            Err(detail) => {
                let mut e = CollectorError::persistence("read", &detail);
                if update.records_delivery() {
                    e.message.push_str(
                        "; the checkpoint after this page could not be confirmed: if it was not written, the next tick sends the page again (a duplicate, not a loss)",
                    );
                    // A few more reads, as for any write that records a delivery.
                    if attempt < DELIVERY_STORE_RETRIES {
                        return Step::Confirm(update, attempt + 1);
                    }
                } else {
                    e.message.push_str("; the lease could not be confirmed, so nothing was fetched");
                }
                return Step::Finish(Ending::failed(e));
            }
            // What this tick wrote: confirmed.
            Ok(Some(bytes)) if bytes == run.written => return self.after_write(update),
            Ok(current) => current,
        };
        let state = match current.map(|b| ServiceState::decode(service, &b)).transpose() {
            Err(e) => return Step::Finish(Ending::failed(e)),
            Ok(state) => state.unwrap_or_else(|| ServiceState::new(self.now)),
        };
        match update {
            Update::TakeLease => self.lease_not_taken(state, attempt),
            Update::Commit => self.commit_not_written(state, attempt),
            _ => unreachable!("only a lease and a commit are confirmed by a read"),
        }
    }

    /// What follows a successful write: each update's own step, in the file
    /// of its phase.
    fn after_write(&mut self, update: Update) -> Step {
        match update {
            Update::TakeLease => Step::write(Update::SpendBudget),
            Update::SpendBudget => Step::Fetch,
            Update::AccountBackoff { error, .. } => Tick::account_backed_off(error),
            Update::Progress => self.progress_recorded(),
            Update::Commit => self.committed(),
            Update::Release { ending, .. } => Step::Finish(ending),
        }
    }
}

/// The swap did not write: someone else wrote first. Read again and decide
/// anew, a bounded number of times.
pub(super) fn conflict(update: Update, attempt: u32) -> Step {
    if attempt + 1 < MAX_SWAP_ATTEMPTS {
        Step::Watch(update, attempt + 1)
    } else {
        Step::Finish(Ending::failed(CollectorError::persistence(
            "compare-and-swap",
            "the value kept changing under concurrent writers",
        )))
    }
}

/// The store failed to read or write: a few more tries for a delivery that
/// is not recorded yet, else the service's part ends with `error`.
fn store_failed(update: Update, attempt: u32, error: CollectorError) -> Step {
    if update.records_delivery() && attempt < DELIVERY_STORE_RETRIES {
        Step::Watch(update, attempt + 1)
    } else {
        Step::Finish(Ending::failed(error))
    }
}

impl ServiceRun {
    /// Writes `state`, and keeps it as the run's view of the record.
    pub(super) fn write_state(&mut self, state: ServiceState) -> Decision {
        let value = state.encode();
        self.state = state;
        self.written.clone_from(&value);
        Decision::Write(value)
    }
}
