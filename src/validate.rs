//! Validate mode: checks a setup without pulling any event, and returns a
//! readable checklist. Like a tick it is a state machine with no I/O, driven
//! with the same [`Action`]s and [`Input`]s.
//!
//! Checks, in order: the configuration; the key-value store (one read); the
//! 1Password token (introspection: accepted, scopes per enabled service,
//! expiry); Devo (an empty `stream` request: it proves the URL, domain and
//! token without sending an event).

use crate::account;
use crate::config::Config;
use crate::devo;
use crate::error::CollectorError;
use crate::http::HttpFailure;
use crate::state::ServiceState;
use crate::tick::{Action, Input};
use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

pub struct Validation {
    config: Option<Config>,
    now: DateTime<Utc>,
    step: Step,
    checks: Vec<Check>,
}

enum Step {
    Store,
    AwaitStore,
    Introspect,
    AwaitIntrospect,
    Devo,
    AwaitDevo,
    Done,
}

impl Validation {
    /// `config` is the result of loading the configuration: a bad one is the
    /// first (and only) failed check.
    pub fn new(config: Result<Config, CollectorError>, now: DateTime<Utc>) -> Validation {
        let mut checks = Vec::new();
        let (config, step) = match config {
            Ok(c) => {
                checks.push(pass(
                    "configuration",
                    format!(
                        "services {}, API {}, {} → Devo {} (domain {})",
                        c.services.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
                        c.api_version.as_str(),
                        c.base_url,
                        c.devo_url,
                        c.devo_domain
                    ),
                ));
                (Some(c), Step::Store)
            }
            Err(e) => {
                checks.push(fail("configuration", e.to_string()));
                (None, Step::Done)
            }
        };
        Validation { config, now, step, checks }
    }

    /// The next action; `Action::Done` (with an empty tick report) when the
    /// checklist is complete.
    pub fn poll(&mut self) -> Action {
        let Some(config) = self.config.as_ref() else { return Action::Done(Default::default()) };
        let (next, action) = match std::mem::replace(&mut self.step, Step::Done) {
            Step::Store => (Step::AwaitStore, Action::Load { key: ServiceState::key(config.services[0]) }),
            Step::Introspect => (Step::AwaitIntrospect, Action::Send { request: account::introspect_request(config) }),
            Step::Devo => {
                // Uncompressed: an empty gzip stream is not an empty body.
                let probe = Config { devo_gzip: false, ..config.clone() };
                let request = devo::stream_request(&probe, config.services[0], Vec::new());
                (Step::AwaitDevo, Action::Send { request })
            }
            Step::Done => (Step::Done, Action::Done(Default::default())),
            _ => panic!("Validation::poll called while awaiting input"),
        };
        self.step = next;
        action
    }

    pub fn handle(&mut self, input: Input) {
        let config = self.config.as_ref().expect("validation running");
        self.step = match (std::mem::replace(&mut self.step, Step::Done), input) {
            (Step::AwaitStore, Input::Loaded(result)) => {
                self.checks.push(match result {
                    Ok(Some(bytes)) => match ServiceState::decode(config.services[0], &bytes) {
                        Ok(state) => pass(
                            "key-value store",
                            format!(
                                "readable; {} has collected {} events so far",
                                config.services[0],
                                state.checkpoint.map_or(0, |c| c.total_sent)
                            ),
                        ),
                        Err(e) => fail("key-value store", e.to_string()),
                    },
                    Ok(None) => pass("key-value store", "readable; nothing collected yet".into()),
                    Err(e) => fail("key-value store", CollectorError::persistence("get", &e).to_string()),
                });
                Step::Introspect
            }
            (Step::AwaitIntrospect, Input::Response(result)) => {
                self.introspection(result);
                Step::Devo
            }
            (Step::AwaitDevo, Input::Response(result)) => {
                let tag = config.tag(config.services[0]).to_string();
                self.checks.push(match result {
                    Ok(r) if (200..300).contains(&r.status) => pass(
                        "Devo",
                        format!(
                            "{} accepted domain {} and the token (empty request to tag {tag})",
                            config.devo_url, config.devo_domain
                        ),
                    ),
                    Ok(r) => fail(
                        "Devo",
                        devo::for_probe(devo::check_response(config.services[0], &tag, &r).unwrap_err()).to_string(),
                    ),
                    Err(f) => fail("Devo", devo::for_probe(devo::transport_error(config.services[0], &f)).to_string()),
                });
                Step::Done
            }
            (_, _) => panic!("Validation::handle got an input it did not ask for"),
        };
    }

    fn introspection(&mut self, result: Result<crate::http::HttpResponse, HttpFailure>) {
        let config = self.config.as_ref().expect("validation running");
        let claims = account::token_claims(&config.token);
        if let Some(w) = claims.as_ref().and_then(|c| account::expiry_warning(c, self.now)) {
            self.checks.push(warn("1Password token expiry", w));
        }
        // A definite 401: the token is refused, whatever its scopes.
        let mut refused = false;
        let features = match result {
            Err(f) => {
                let f = f.for_setting("base_url");
                self.checks.push(fail("1Password", format!("{} could not be reached: {f}", config.base_url)));
                claims.and_then(|c| c.features)
            }
            Ok(r) => match account::parse_introspection(&r, self.now) {
                Err(e) => {
                    refused = e.id == 401;
                    self.checks.push(fail("1Password", e.to_string()));
                    claims.and_then(|c| c.features)
                }
                Ok(info) => {
                    let account = info.account_uuid.as_deref().map_or(String::new(), |a| format!(", account {a}"));
                    self.checks.push(pass("1Password", format!("{} accepted the token{account}", config.base_url)));
                    info.features.or_else(|| claims.and_then(|c| c.features))
                }
            },
        };
        for service in &config.services {
            let name = format!("scope {service}");
            self.checks.push(match &features {
                None if refused => fail(
                    &name,
                    format!(
                        "not readable: 1Password refused the token (HTTP 401); issue a valid token with \"{}\"",
                        service.feature()
                    ),
                ),
                None => warn(&name, "the token's scopes are unknown; the first tick will tell".into()),
                Some(f) if f.iter().any(|x| x == service.feature()) => {
                    pass(&name, format!("token has \"{}\"", service.feature()))
                }
                Some(_) => fail(
                    &name,
                    format!(
                        "token lacks \"{}\": issue a token with it or remove {service} from services",
                        service.feature()
                    ),
                ),
            });
        }
    }

    pub fn checks(&self) -> &[Check] {
        &self.checks
    }

    pub fn into_checks(self) -> Vec<Check> {
        self.checks
    }
}

fn pass(name: &str, detail: String) -> Check {
    Check { name: name.into(), status: Status::Pass, detail }
}

fn warn(name: &str, detail: String) -> Check {
    Check { name: name.into(), status: Status::Warn, detail }
}

fn fail(name: &str, detail: String) -> Check {
    Check { name: name.into(), status: Status::Fail, detail }
}

/// Runs a validation to its end with a driver function for each action.
pub fn run(mut v: Validation, mut perform: impl FnMut(Action) -> Input) -> Vec<Check> {
    loop {
        match v.poll() {
            Action::Done(_) => return v.into_checks(),
            action => {
                let input = perform(action);
                v.handle(input);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::tests::jwt;
    use crate::config::tests::{load, minimal};
    use crate::http::HttpResponse;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn answer(status: u16, body: &str) -> Result<HttpResponse, HttpFailure> {
        Ok(HttpResponse { status, headers: vec![], body: body.as_bytes().to_vec() })
    }

    fn run_with(
        config: Result<Config, CollectorError>,
        introspect: Result<HttpResponse, HttpFailure>,
        devo: Result<HttpResponse, HttpFailure>,
    ) -> (Vec<Check>, Vec<crate::http::HttpRequest>) {
        let mut sent = Vec::new();
        let (mut i, mut d) = (Some(introspect), Some(devo));
        let checks = run(Validation::new(config, now()), |action| match action {
            Action::Load { .. } => Input::Loaded(Ok(None)),
            Action::Send { request } => {
                let r = if request.path.contains("introspect") { i.take().unwrap() } else { d.take().unwrap() };
                sent.push(request);
                Input::Response(r)
            }
            other => panic!("unexpected {other:?}"),
        });
        (checks, sent)
    }

    #[test]
    fn a_good_setup_passes_every_check_and_sends_no_event() {
        let body = r#"{"features":["auditevents","itemusages","signinattempts"],"account_uuid":"ACC"}"#;
        let (checks, sent) = run_with(load(&minimal()), answer(200, body), answer(200, ""));
        assert!(checks.iter().all(|c| c.status == Status::Pass), "{checks:?}");
        let names: Vec<_> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "configuration",
                "key-value store",
                "1Password",
                "scope audit",
                "scope item_usage",
                "scope sign_in_attempts",
                "Devo"
            ]
        );
        assert!(checks[2].detail.contains("ACC"));
        assert_eq!(sent.len(), 2);
        assert!(sent[1].body.is_empty(), "the Devo probe carries no event");
        assert!(sent.iter().all(|r| !r.path.contains("auditevents")), "no events pulled");
    }

    #[test]
    fn failures_are_named_and_secrets_stay_hidden() {
        let mut m = minimal();
        m.insert("token", jwt(&format!(r#"{{"features":["auditevents"],"exp":{}}}"#, 1_800_000_000 + 3600)));
        let (checks, _) = run_with(load(&m), answer(401, "{}"), answer(401, ""));
        let by = |n: &str| checks.iter().find(|c| c.name == n).unwrap().clone();
        assert_eq!(by("1Password").status, Status::Fail);
        assert_eq!(by("1Password token expiry").status, Status::Warn);
        assert_eq!(by("scope audit").status, Status::Pass, "from the token's own claims");
        assert_eq!(by("scope item_usage").status, Status::Fail);
        assert_eq!(by("Devo").status, Status::Fail);
        assert!(by("Devo").detail.contains("devo_token"));
        let text = format!("{checks:?}");
        assert!(!text.contains("abcdef0123456789"), "Devo token leaked");
        assert!(!text.contains(&m["token"]), "1Password token leaked");
    }

    #[test]
    fn a_refused_token_fails_the_scopes_and_devo_speaks_of_no_page() {
        let (checks, _) = run_with(load(&minimal()), answer(401, "{}"), answer(403, ""));
        for c in checks.iter().filter(|c| c.name.starts_with("scope ")) {
            assert_eq!(c.status, Status::Fail, "{c:?}");
            assert!(c.detail.contains("refused the token (HTTP 401)") && !c.detail.contains("first tick"), "{c:?}");
        }
        let devo = checks.iter().find(|c| c.name == "Devo").unwrap();
        assert!(!devo.detail.contains("next tick") && !devo.detail.contains("checkpoint"), "{devo:?}");
        assert!(devo.detail.contains("devo_token") && devo.detail.contains("no event was sent"), "{devo:?}");
        let (checks, _) = run_with(load(&minimal()), answer(401, "{}"), Err(HttpFailure::Transport("x".into())));
        let devo = checks.iter().find(|c| c.name == "Devo").unwrap();
        assert!(!devo.detail.contains("next tick") && devo.detail.contains("devo_url"), "{devo:?}");
    }

    #[test]
    fn a_devo_token_in_devo_urls_path_is_shown_in_no_check() {
        let mut m = minimal();
        m.insert("devo_url", "https://http-us.devo.io/stream/acme/token!devoUrlS3cret0123".into());
        let body = r#"{"features":["auditevents","itemusages","signinattempts"],"account_uuid":"ACC"}"#;
        for devo in [answer(200, ""), answer(404, ""), Err(HttpFailure::Transport("refused".into()))] {
            let (checks, sent) = run_with(load(&m), answer(200, body), devo);
            assert!(sent[1].path.contains("token!devoUrlS3cret0123"), "the request keeps it");
            let text = serde_json::to_string(&checks).unwrap();
            assert!(!text.contains("devoUrlS3cret0123"), "{text}");
            assert!(text.contains("/stream/acme/token!<redacted>"), "{text}");
        }
    }

    #[test]
    fn the_checklist_shows_times_in_utc() {
        let mut m = minimal();
        m.insert("token", jwt(&format!(r#"{{"features":["auditevents"],"exp":{}}}"#, 1_800_000_000 + 3600)));
        m.insert("start_time_value", "2027-01-15T12:00:00+05:30".into());
        let body = r#"{"features":["auditevents","itemusages","signinattempts"],"account_uuid":"ACC"}"#;
        let (checks, _) = run_with(load(&m), answer(200, body), answer(200, ""));
        let expiry = checks.iter().find(|c| c.name == "1Password token expiry").unwrap();
        assert_eq!(expiry.detail, "the 1Password token expires at 2027-01-15T09:00:00Z; issue a new one before then");
        let text = serde_json::to_string(&checks).unwrap();
        assert!(crate::time::tests::not_utc(&text).is_empty(), "{text}");
    }

    #[test]
    fn a_bad_configuration_is_the_only_check() {
        let mut m = minimal();
        m.remove("base_url");
        let (checks, sent) = run_with(load(&m), answer(200, "{}"), answer(200, ""));
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Fail);
        assert!(checks[0].detail.contains("base_url"));
        assert!(sent.is_empty());
    }
}
