//! The sans-IO vocabulary between a tick and its driver: what the tick
//! asks for ([`Action`]) and what the driver answers ([`Input`]). The
//! component performs actions with `wasi:keyvalue`, `wasi:http` and
//! `wasi:clocks`; tests answer them from a simulated world.

use crate::http::{HttpFailure, HttpRequest, HttpResponse};
use crate::report::TickReport;
use chrono::{DateTime, Utc};

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
    /// Wait until `until` (by the clock `now` is read from), then answer
    /// with [`Input::Woke`]: the account's budget allows this lane's next
    /// page then, and the tick's deadline leaves room for it. Like a
    /// `Send`, other lanes may go on meanwhile.
    Wait { until: DateTime<Utc> },
    /// Drop this lane's request in flight (or its wait) without answering
    /// it: the lane could not renew its service's lease, and stopped working
    /// on the service before the lease could lapse. Needs no answer: poll
    /// the lane again.
    Abandon,
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
    /// The wait of an [`Action::Wait`] is over.
    Woke,
}

impl Input {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Input::Loaded(_) => "a load result",
            Input::Stored(_) => "a store result",
            Input::Swapped(_) => "a swap result",
            Input::Response(_) => "an HTTP response",
            Input::Woke => "the end of a wait",
        }
    }
}
