//! Label sets and label values. Every value a label can take is either from
//! a small fixed set (outcomes, deferral reasons, reload results), a number
//! (error ids), or a name from the operator's config or the component's
//! report (tenant, service) passed through [`tenant_label`] /
//! [`service_label`], which bound length and characters. Free text (error
//! messages, deferral reasons as written) never becomes a label: a message may
//! quote a URL or a value, and a label is kept forever by Prometheus.

use onepassword_collector::error::{
    CLAIMED_HOST_ID, CONFIG_SOURCE, EMPTY_SETTING, HOST_FAILURE, INVALID_SETTING, MISSING_SETTING, PERSISTENCE,
    REMEDIES,
};
use prometheus_client::encoding::EncodeLabelSet;
use sha2::{Digest, Sha256};

/// The `service` label of a failure that ended the whole tick (no service
/// ran: config error, host failure), not one service.
pub const TICK_SERVICE: &str = "_tick";

/// Longest tenant label; longer names are cut and given a hash suffix.
const MAX_TENANT_LABEL: usize = 64;
/// Longest service label (the collector's own are under 20 characters).
const MAX_SERVICE_LABEL: usize = 32;

/// A label set that belongs to one tenant, so it can be dropped with it.
pub(super) trait OfTenant {
    fn tenant(&self) -> &str;
}

macro_rules! tenant_label_sets {
    ($($(#[$doc:meta])* $name:ident { $($field:ident),* })*) => {$(
        $(#[$doc])*
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        pub(super) struct $name {
            pub tenant: String,
            $(pub $field: String,)*
        }

        impl OfTenant for $name {
            fn tenant(&self) -> &str {
                &self.tenant
            }
        }
    )*};
}

tenant_label_sets! {
    /// `{tenant}`
    TenantLabels {}
    /// `{tenant, service}`
    ServiceLabels { service }
    /// `{tenant, outcome}`
    TickOutcomeLabels { outcome }
    /// `{tenant, service, outcome}`
    ServiceOutcomeLabels { service, outcome }
    /// `{tenant, service, error_id}`
    FailureLabels { service, error_id }
    /// `{tenant, service, reason}`
    DeferralLabels { service, reason }
}

/// `{result}` of a config reload: `ok` or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResultLabels {
    pub result: String,
}

/// `{version}` of `build_info`: the harness's crate version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct BuildLabels {
    pub version: String,
}

/// The error ids a whole tick fails with (`service="_tick"`): a setting
/// (1-4), the store (200), the host (900, 901).
pub(super) const TICK_ERROR_IDS: [u32; 7] =
    [MISSING_SETTING, INVALID_SETTING, EMPTY_SETTING, CONFIG_SOURCE, PERSISTENCE, HOST_FAILURE, CLAIMED_HOST_ID];

/// The error ids a service fails with that have an entry of their own in
/// the error table ([`REMEDIES`]): the store's, 1Password's 401 and 429 and
/// its 6xx, Devo's 7xx. With [`TICK_ERROR_IDS`], the `error_id`s
/// `failures_total` starts at zero for each tenant; any other id (another
/// HTTP status) gets its series with its first failure.
pub(super) fn service_error_ids() -> impl Iterator<Item = u32> {
    const TICK_ONLY: [u32; 6] =
        [MISSING_SETTING, INVALID_SETTING, EMPTY_SETTING, CONFIG_SOURCE, HOST_FAILURE, CLAIMED_HOST_ID];
    REMEDIES
        .iter()
        .filter(|(ids, _)| ids.start() == ids.end())
        .map(|(ids, _)| *ids.start())
        .filter(|id| !TICK_ONLY.contains(id))
}

/// The `tenant` label of a tenant name: ASCII letters, digits and `_.-:`
/// kept, anything else replaced by `_`, at most 64 characters. A name that had
/// to be changed gets `~` and 8 hex digits of its SHA-256, so two names never
/// share a label.
pub fn tenant_label(name: &str) -> String {
    bounded(name, MAX_TENANT_LABEL)
}

/// The `service` label of a service name, bounded as [`tenant_label`].
pub fn service_label(name: &str) -> String {
    bounded(name, MAX_SERVICE_LABEL)
}

fn bounded(name: &str, max: usize) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':') { c } else { '_' })
        .collect();
    if clean == name && !name.is_empty() && name.len() <= max {
        return clean;
    }
    let digest = Sha256::digest(name.as_bytes());
    let suffix: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let keep = max - suffix.len() - 1;
    let head: String = clean.chars().take(keep).collect();
    format!("{head}~{suffix}")
}

/// Why a service was deferred, as a fixed label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeferralReason {
    /// The account's request budget for this minute or hour is spent.
    Budget,
    /// 1Password answered 429 recently; the account waits.
    RateLimited,
    /// The service backs off after failures of its own.
    Backoff,
    /// Another instance holds the service's lease.
    LeaseHeld,
    /// Another instance took the lease at the same moment.
    LeaseLost,
    /// Anything else (a reason this version does not know).
    Other,
}

impl DeferralReason {
    /// Every value, in the order the labels are documented.
    pub const ALL: [DeferralReason; 6] = [
        DeferralReason::Budget,
        DeferralReason::RateLimited,
        DeferralReason::Backoff,
        DeferralReason::LeaseHeld,
        DeferralReason::LeaseLost,
        DeferralReason::Other,
    ];

    /// Classifies the collector's `deferred_reason` text (see
    /// `src/budget.rs` and `src/tick/page.rs` for the texts).
    pub fn from_text(text: Option<&str>) -> DeferralReason {
        let Some(text) = text else { return DeferralReason::Other };
        let t = text.to_ascii_lowercase();
        if t.contains("lease lost") {
            DeferralReason::LeaseLost
        } else if t.contains("rate-limit") || t.contains("rate limit") || t.contains("429") {
            DeferralReason::RateLimited
        } else if t.contains("budget") {
            DeferralReason::Budget
        } else if t.contains("backing off") || t.contains("back off") || t.contains("backoff") {
            DeferralReason::Backoff
        } else if t.contains("another instance") || t.contains("lease") {
            DeferralReason::LeaseHeld
        } else {
            DeferralReason::Other
        }
    }

    /// The `reason` label value: fixed, so a guest's text never becomes a
    /// metric series.
    pub fn as_str(self) -> &'static str {
        match self {
            DeferralReason::Budget => "budget",
            DeferralReason::RateLimited => "rate_limited",
            DeferralReason::Backoff => "backoff",
            DeferralReason::LeaseHeld => "lease_held",
            DeferralReason::LeaseLost => "lease_lost",
            DeferralReason::Other => "other",
        }
    }
}

/// True for the error ids that mean a request reached (or tried to reach)
/// 1Password: its HTTP statuses (400–599), unreachable (600), bad body (601).
pub fn is_onepassword_error(id: u32) -> bool {
    (400..=601).contains(&id)
}
