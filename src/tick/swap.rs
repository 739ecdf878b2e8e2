//! The compare-and-swap every write of a stored record goes through, in any
//! phase: take the lease, spend the budget, back the account off, record
//! progress, commit, release, renew the lease (`page.rs`, the lease's heartbeat).
//!
//! Read the record (`Watch`), decide from its current value what to write
//! (the phase's function, dispatched by [`Tick::decide`]), write it only if
//! the record did not change meanwhile (`Swap`), then read it back
//! (`Confirm`, one plain read) to see whether the write landed. After a
//! write that landed, [`Tick::after_write`] says what follows; after one
//! that did not, read again and decide anew, a bounded number of times.
//! Some decisions write nothing and go on at once (`Decision::Skip`): a
//! lease held by another instance, a spent budget.
//!
//! **A swap's answer is a hint, on every host.** Spin 3.5's Redis store
//! answers "failed" to every swap, also to one that wrote (after the
//! transaction it sends `UNWATCH <key>`, which Redis refuses, and returns
//! that error as a failed swap); a transaction that aborted because another
//! writer won would come back as ok. So whatever the store answered — ok,
//! failed, or an error — the tick reads the record back. Every value it
//! writes carries an id unique to that write (`ServiceState::writer`,
//! `BudgetRecord::writer`: the tick's lease id and the write's number), so
//! the record holds exactly what this write wrote only if it landed. A
//! failed swap that wrote is taken as written; an ok that did not, as lost.
//! What a write that did not land means is the phase's (`page.rs`
//! `lease_not_taken`, `commit.rs` `commit_not_written`); for the others it
//! is a lost race, tried again. A store whose writes never land fails the
//! service's part with error 200 after [`MAX_SWAP_ATTEMPTS`], naming the
//! store's last answer.
//!
//! A write that landed and was overwritten by another instance before the
//! read-back counts as not landed: the lease and the checkpoint cannot be
//! overwritten that way while this tick's lease is in force; a spend of the
//! budget is then counted twice (one request too many counted, never one
//! too few).

use super::{Action, Ending, ServiceRun, Step, Tick, Update};
use crate::budget::BudgetRecord;
use crate::error::CollectorError;
use crate::state::ServiceState;

/// How often a compare-and-swap is tried when its writes do not land
/// (others keep changing the value, or the store does not write).
pub(super) const MAX_SWAP_ATTEMPTS: u32 = 20;

/// How often a write that records a delivery is tried again after the store
/// failed: a delivery that is not recorded will be sent again.
const DELIVERY_STORE_RETRIES: u32 = 3;

/// What a compare-and-swap decided after reading the current value.
pub(super) enum Decision {
    Write(Vec<u8>),
    /// Write nothing; go on with this step.
    Skip(Step),
}

/// What the store answered to a swap: only a hint of whether it wrote (the
/// read-back decides), kept to name it when the writes never land.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// "Written".
    Ok,
    /// "Not written: the value changed since it was read".
    Changed,
    /// A store error.
    Error(String),
}

impl Answer {
    fn of(result: Result<bool, String>) -> Answer {
        match result {
            Ok(true) => Answer::Ok,
            Ok(false) => Answer::Changed,
            Err(detail) => Answer::Error(detail),
        }
    }

    /// The answer as an error message quotes it.
    pub(super) fn describe(&self) -> String {
        match self {
            Answer::Ok => "ok".into(),
            Answer::Changed => "\"the value changed\" (compare-and-swap failed)".into(),
            Answer::Error(detail) => format!("the error \"{}\"", crate::error::bounded(detail)),
        }
    }
}

impl Tick {
    pub(super) fn watch(&mut self, update: Update, attempt: u32) -> Action {
        let key = self.key_of(&update);
        self.step = Step::AwaitCurrent(update, attempt);
        Action::Watch { key }
    }

    /// The record an update writes: the account's budget, or the service's
    /// state.
    fn key_of(&mut self, update: &Update) -> String {
        match update {
            Update::SpendBudget | Update::AccountBackoff { .. } => self.budget_key.clone(),
            _ => ServiceState::key(self.running().service),
        }
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
                let retry_after = retry_after.clone();
                return self.back_off_account(BudgetRecord::decode(current), retry_after.as_deref());
            }
            _ => {}
        }
        let service = self.running().service;
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
            Update::Renew(awaiting) => self.renew(state, *awaiting),
            Update::SpendBudget | Update::AccountBackoff { .. } => unreachable!("decided above"),
        }
    }

    pub(super) fn swap(&mut self, update: Update, attempt: u32, value: Vec<u8>) -> Action {
        self.step = Step::AwaitSwap(update, attempt);
        Action::Swap { value }
    }

    /// Whatever the store answered, the record is read back.
    pub(super) fn on_swapped(&mut self, update: Update, attempt: u32, result: Result<bool, String>) -> Step {
        Step::Confirm(update, attempt, Answer::of(result))
    }

    /// Reads back the record a swap wrote, or did not: a plain read, the
    /// compare-and-swap is over.
    pub(super) fn confirm(&mut self, update: Update, attempt: u32, answer: Answer) -> Action {
        let key = self.key_of(&update);
        self.step = Step::AwaitConfirm(update, attempt, answer);
        Action::Load { key }
    }

    /// The swap wrote when the record holds what this tick wrote (its
    /// writer id is unique to the write); else it did not, whatever the
    /// store answered.
    pub(super) fn on_confirmed(
        &mut self,
        update: Update,
        attempt: u32,
        answer: Answer,
        result: Result<Option<Vec<u8>>, String>,
    ) -> Step {
        let current = match result {
            Err(detail) => return self.unconfirmed(update, attempt, answer, &detail),
            Ok(current) => current,
        };
        if current.as_deref() == Some(self.running().written.as_slice()) {
            return self.after_write(update);
        }
        match update {
            Update::TakeLease | Update::Commit => {
                let service = self.running().service;
                let state = match current.map(|b| ServiceState::decode(service, &b)).transpose() {
                    Err(e) => return Step::Finish(Ending::failed(e)),
                    Ok(state) => state.unwrap_or_else(|| ServiceState::new(self.now)),
                };
                if let Update::TakeLease = update {
                    self.lease_not_taken(state, attempt, answer)
                } else {
                    self.commit_not_written(state, attempt, answer)
                }
            }
            update => not_landed(update, attempt, answer),
        }
    }

    /// The record could not be read back: whether the swap wrote is not
    /// known.
    fn unconfirmed(&mut self, update: Update, attempt: u32, answer: Answer, detail: &str) -> Step {
        if let Answer::Error(swap_detail) = &answer {
            // The store failed the swap and the read: its error is the swap's.
            return store_failed(update.clone(), attempt, swap_error(&update, swap_detail));
        }
        let mut e = CollectorError::persistence("read", detail);
        let what = match &update {
            Update::Progress | Update::Commit => {
                // A few more reads, as for any write that records a delivery.
                if attempt < DELIVERY_STORE_RETRIES {
                    return Step::Confirm(update, attempt + 1, answer);
                }
                "; whether this page's delivery was recorded could not be confirmed: if it was not, the next tick sends the page again (a duplicate, not a loss)"
            }
            Update::TakeLease => "; the lease could not be confirmed, so nothing was fetched",
            Update::SpendBudget => "; the request's spend of the budget could not be confirmed, so nothing was fetched",
            Update::Release { .. } => {
                "; the release of the lease could not be confirmed (a lease left behind expires by itself)"
            }
            Update::Renew(_) => "; the renewal of the lease could not be confirmed",
            // The service's part ends with the 429 either way; whether the
            // other instances wait for the account too is what is not known.
            Update::AccountBackoff { error, .. } => return Tick::account_backed_off(error.clone()),
        };
        e.message.push_str(what);
        Step::Finish(Ending::failed(e))
    }

    /// What follows a write that landed: each update's own step, in the
    /// file of its phase.
    fn after_write(&mut self, update: Update) -> Step {
        match update {
            Update::TakeLease => Step::write(Update::SpendBudget),
            Update::SpendBudget => Step::Fetch,
            Update::AccountBackoff { error, .. } => Tick::account_backed_off(error),
            Update::Progress => self.progress_recorded(),
            Update::Commit => self.committed(),
            Update::Release { ending, .. } => Step::Finish(ending),
            Update::Renew(awaiting) => Tick::renewed(awaiting),
        }
    }

    /// A number unique to each write of this tick: with the tick's id, the
    /// `writer` of the record it writes.
    fn next_writer(&mut self) -> String {
        self.writes += 1;
        format!("{}-{}", self.me, self.writes)
    }

    /// Writes `state` (with a writer id of its own), and keeps it as the
    /// run's view of the record.
    pub(super) fn write_state(&mut self, mut state: ServiceState) -> Decision {
        state.writer = Some(self.next_writer());
        let value = state.encode();
        let run = self.running();
        run.state = state;
        run.wrote(value)
    }

    /// Writes the account's budget record, with a writer id of its own.
    pub(super) fn write_budget(&mut self, mut budget: BudgetRecord) -> Decision {
        budget.writer = Some(self.next_writer());
        let value = budget.encode();
        self.running().wrote(value)
    }
}

/// The swap did not write: someone else wrote first, or the store did not
/// write whatever it answered. Read again and decide anew, a bounded number
/// of times; a store error ends the service's part as any store failure.
pub(super) fn not_landed(update: Update, attempt: u32, answer: Answer) -> Step {
    match &answer {
        Answer::Error(detail) => {
            let e = swap_error(&update, detail);
            store_failed(update, attempt, e)
        }
        _ if attempt + 1 < MAX_SWAP_ATTEMPTS => Step::Watch(update, attempt + 1),
        _ => Step::Finish(Ending::failed(CollectorError::persistence(
            "compare-and-swap",
            &format!(
                "none of {MAX_SWAP_ATTEMPTS} writes of {} landed: each time the record read back held another value (other writers kept changing it, or the store does not write); the store's last answer was {}",
                update.record(),
                answer.describe()
            ),
        ))),
    }
}

/// The error of a swap the store failed and did not write.
fn swap_error(update: &Update, detail: &str) -> CollectorError {
    let mut e = CollectorError::persistence("compare-and-swap", detail);
    if let Update::Commit = update {
        e.message.push_str("; Devo already took this page, so the next tick sends it again (a duplicate, not a loss)");
    }
    e
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
    /// Keeps the bytes of the swap about to be made, to recognise them
    /// when the record is read back.
    fn wrote(&mut self, value: Vec<u8>) -> Decision {
        self.written.clone_from(&value);
        Decision::Write(value)
    }
}
