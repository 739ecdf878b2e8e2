//! Which environment variables a tenant's `${NAME}` may read, and keeping
//! their values out of what the tenant's ticks report.
//!
//! The harness process holds every tenant's secrets in its environment, so
//! a tenant's table must not be able to name another's: a tenant reads only
//! the variables under its own prefix — its name in capitals with `-` as
//! `_`, then `_` (tenant `acme-eu` reads `ACME_EU_*`) — and those the
//! operator shares with every tenant (`[host] shared_variables`). Two
//! tenants whose prefixes are equal or nest (`acme` and `acme_eu`: `ACME_`
//! starts `ACME_EU_`) are refused, as is a shared name under a tenant's
//! prefix (it would hand that tenant's variable to all).
//!
//! A value read from the environment is never quoted back: the component
//! quotes a bad value in its error (`page_size … not "…"`) without knowing
//! where it came from, so [`Provenance::hide`] replaces it by the variable's
//! name in everything the tenant's tick or validate reports.

use crate::host_settings::{environment_reference, HostSettings};
use anyhow::bail;
use onepassword_collector::error::CollectorError;
use onepassword_collector::report::TickReport;
use onepassword_collector::validate::Check;

/// Values at least this long are hidden wherever they appear, not only
/// where quoted: shorter ones ("100", "v2") would hide ordinary words and
/// numbers, and a short value is no secret.
const HIDDEN_ANYWHERE_CHARS: usize = 8;

/// The prefix of the environment variables tenant `name` may read.
pub fn prefix(name: &str) -> String {
    let mut prefix: String = name.chars().map(|c| if c == '-' { '_' } else { c.to_ascii_uppercase() }).collect();
    prefix.push('_');
    prefix
}

/// Refuses tenants whose prefixes are equal or nest, and shared variables
/// that fall under a tenant's prefix. Sorted, a prefix that starts another
/// sits right before it (every name between them starts with it too), so
/// neighbours are all that need comparing.
pub(crate) fn check_prefixes<'a>(names: impl Iterator<Item = &'a str>, host: &HostSettings) -> anyhow::Result<()> {
    let mut prefixes: Vec<(String, &str)> = names.map(|n| (prefix(n), n)).collect();
    prefixes.sort();
    for pair in prefixes.windows(2) {
        let ((a, a_name), (b, b_name)) = (&pair[0], &pair[1]);
        if b.starts_with(a.as_str()) {
            bail!(
                "tenants {a_name} and {b_name} read environment variables under {a} and {b}, so {a_name} could read \
                 {b_name}'s secrets: rename one (a tenant reads the variables that start with its name in capitals, \
                 '-' as '_', then '_')"
            );
        }
    }
    for shared in &host.shared_variables {
        if let Some((p, name)) = prefixes.iter().find(|(p, _)| shared.starts_with(p.as_str())) {
            bail!(
                "[host] shared_variables lists {shared}, which is tenant {name}'s (it starts with {p}): share a \
                 variable under a name of no tenant's"
            );
        }
    }
    Ok(())
}

/// The environment variable a tenant's value `text` names, checked against
/// what the tenant may read; `what` names the setting in the error.
pub(crate) fn granted<'t>(
    tenant: &str,
    text: &'t str,
    host: &HostSettings,
    what: &dyn Fn() -> String,
) -> anyhow::Result<Option<&'t str>> {
    let Some(name) = environment_reference(text) else { return Ok(None) };
    let own = prefix(tenant);
    if !(name.starts_with(&own) && name.len() > own.len()) && !host.shared_variables.contains(name) {
        bail!(
            "{} names ${{{name}}}, which tenant {tenant} may not read: a tenant reads only environment variables \
             that start with {own} (its name in capitals, '-' as '_') and those [host] shared_variables lists",
            what()
        );
    }
    Ok(Some(name))
}

/// Which of a tenant's variables came from the environment, and from which
/// variable: the values to keep out of its reports.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// (what the component may quote, the `${NAME}` shown instead), longest
    /// first so that a value holding another is replaced whole.
    hidden: Vec<(String, String)>,
}

impl Provenance {
    /// Records that `value` was read from environment variable `name`.
    pub(crate) fn add(&mut self, name: &str, value: &str) {
        let value = value.trim();
        if value.is_empty() {
            return;
        }
        let shown = format!("the value of ${{{name}}}");
        let quoted = onepassword_collector::error::quoted(value);
        let url = onepassword_collector::error::quoted(&onepassword_collector::text::redact_url(value));
        if url != quoted {
            self.hidden.push((url, shown.clone()));
        }
        self.hidden.push((quoted, shown));
        if value.chars().count() >= HIDDEN_ANYWHERE_CHARS {
            self.hidden.push((value.to_string(), format!("${{{name}}}")));
        }
        self.hidden.sort_by(|a, b| b.0.len().cmp(&a.0.len()));
    }

    /// True when no value came from the environment.
    pub fn is_empty(&self) -> bool {
        self.hidden.is_empty()
    }

    /// `text` with every value from the environment replaced by its name.
    pub fn hide(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (value, shown) in &self.hidden {
            if text.contains(value.as_str()) {
                text = text.replace(value.as_str(), shown);
            }
        }
        text
    }

    /// A tick's result with [`Provenance::hide`] applied to every message.
    pub fn hide_in_tick(&self, result: Result<TickReport, CollectorError>) -> Result<TickReport, CollectorError> {
        if self.is_empty() {
            return result;
        }
        match result {
            Err(mut e) => {
                e.message = self.hide(&e.message);
                Err(e)
            }
            Ok(mut report) => {
                for error in report.services.iter_mut().filter_map(|s| s.error.as_mut()) {
                    error.message = self.hide(&error.message);
                }
                for warning in &mut report.warnings {
                    *warning = self.hide(warning);
                }
                Ok(report)
            }
        }
    }

    /// Validate's checks with [`Provenance::hide`] applied to every detail.
    pub fn hide_in_checks(&self, mut checks: Vec<Check>) -> Vec<Check> {
        for check in &mut checks {
            check.detail = self.hide(&check.detail);
        }
        checks
    }
}

/// Shows how many values are hidden, never one of them.
impl std::fmt::Debug for Provenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Provenance({} patterns hidden)", self.hidden.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_prefix_is_its_name_in_capitals() {
        assert_eq!(prefix("acme"), "ACME_");
        assert_eq!(prefix("acme-eu_2"), "ACME_EU_2_");
    }

    #[test]
    fn nesting_or_equal_prefixes_are_refused() {
        let host = HostSettings::default();
        for (a, b) in [("acme", "acme_eu"), ("acme-eu", "acme_eu"), ("Acme", "acme"), ("a", "a_b_c")] {
            let e = check_prefixes([a, "zeta", b].into_iter(), &host).unwrap_err();
            assert!(format!("{e:#}").contains("could read"), "{a} {b}: {e:#}");
        }
        assert!(check_prefixes(["acme", "acmeeu", "acm", "beta"].into_iter(), &host).is_ok());
        let mut host = HostSettings::default();
        host.shared_variables.insert("ACME_DEVO_TOKEN".into());
        let e = check_prefixes(["acme"].into_iter(), &host).unwrap_err();
        assert!(format!("{e:#}").contains("tenant acme's"), "{e:#}");
    }

    #[test]
    fn a_tenant_reads_its_own_and_the_shared_variables_only() {
        let mut host = HostSettings::default();
        host.shared_variables.insert("DEVO_TOKEN".into());
        let what = || "tenant acme: variable token".to_string();
        assert_eq!(granted("acme", "${ACME_TOKEN}", &host, &what).unwrap(), Some("ACME_TOKEN"));
        assert_eq!(granted("acme", "${DEVO_TOKEN}", &host, &what).unwrap(), Some("DEVO_TOKEN"));
        assert_eq!(granted("acme", "plain", &host, &what).unwrap(), None);
        for other in ["${GLOBEX_TOKEN}", "${ACME_}", "${ACMETOKEN}", "${REDIS_URL}", "${acme_token}", "${PATH}"] {
            let e = granted("acme", other, &host, &what).unwrap_err();
            let text = format!("{e:#}");
            assert!(text.contains("which tenant acme may not read") && text.contains("ACME_"), "{other}: {text}");
        }
    }

    #[test]
    fn values_from_the_environment_are_replaced_by_their_names() {
        let mut p = Provenance::default();
        let token = "devo-secret-token-0123456789-abcdefghijklmnopqrstuvwxyz";
        p.add("ACME_DEVO_TOKEN", token);
        p.add("ACME_PAGE", "100");
        let quoted = onepassword_collector::error::quoted(token);
        let message = format!("page_size must be an integer from 1 to 1000, not {quoted}; raw {token}; fetched 100");
        let hidden = p.hide(&message);
        assert!(!hidden.contains("devo-secret"), "{hidden}");
        assert!(hidden.contains("not the value of ${ACME_DEVO_TOKEN}"), "{hidden}");
        assert!(hidden.contains("raw ${ACME_DEVO_TOKEN}"), "{hidden}");
        // a short value is hidden only where quoted
        assert!(hidden.ends_with("fetched 100"), "{hidden}");
        assert_eq!(p.hide("page_size: not \"100\""), "page_size: not the value of ${ACME_PAGE}");
    }
}
